//! `virtio-console[,stdio|autopty|log=PATH|socket=PATH]`: one console port (virtio type 3, no
//! multiport), `hvc0` in the guest.
//!
//! Output (transmitq) goes to the target; input (receiveq) comes from stdio, the pty, or the
//! client of a unix socket the VMM listens on (one client at a time: the next is accepted when
//! the current one hangs up; output with no client connected is dropped). Input waits in a
//! bounded buffer until the guest posts receive buffers; a reader thread fills it and kicks the
//! receive queue's worker.
//!
//! Input is handed to the guest as soon as it posts receive buffers. Linux (6.1) posts them
//! before it registers the port and drops data that completes in that window, so input sent
//! while the guest's driver is still probing can be lost (as with other VMMs' consoles).

mod device;
mod input;

pub use device::Console;
