//! The contract between `xhyve` (the VMM) and `xhyve-provider` (its supervisor): rules both must
//! apply identically (the MAC a UUID pins, the user-mode network's addressing), the
//! machine-readable answer of `xhyve --features`, and the few low-level helpers both processes
//! need. Depends on nothing of either crate.

pub mod features;
pub mod hex;
pub mod mac;
pub mod random;
pub mod signals;
pub mod unix_path;
pub mod user_net;
