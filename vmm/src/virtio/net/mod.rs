//! `virtio-net` (virtio type 1): one RX and one TX queue, a MAC from the VM's UUID, the link
//! always up, no offloads (every frame is complete and checksummed; the 12-byte virtio-net header
//! is all zeros on RX and ignored on TX). Backends in `crate::net`:
//!
//! - `-s SLOT,virtio-net,user[,hostfwd=tcp:ADDR:HOSTPORT-:GUESTPORT]...[,mac=MAC]`: user-mode
//!   networking through libslirp (guest 10.0.2.15/24 by DHCP, gateway 10.0.2.2, DNS 10.0.2.3);
//!   `passt` instead of `user`: the same through Debian's `passt`.
//! - `-s SLOT,virtio-net,socket=PATH[,mac=MAC]`: a port of the switch listening on PATH.
//! - `-s SLOT,virtio-tap,TAPNAME[,mac=MAC]`: an existing TAP interface.
//!
//! With `-U` the MAC of the VM's Nth network device (slot order, from 0) is
//! `xhyve_contract::mac::nic_mac(UUID, N)`; without, a random one (locally administered) per
//! run; `mac=` overrides both.
//!
//! RX wake-ups: a poller thread waits for the backend's fd while the RX worker is "armed" and
//! then kicks the RX queue (`set_queue_kicks`); the worker re-arms it once it has taken every
//! frame. When the guest has no buffers the frame waits (`pending`), the poller stays disarmed and
//! the guest's next notification resumes the worker. Guest data is untrusted: a TX chain that is too long, too short
//! or outside guest memory is dropped; an RX chain too small for the frame gets the frame dropped
//! (used length 0); a broken ring sets DEVICE_NEEDS_RESET.

mod device;
mod frame;
mod poller;

pub use device::Net;
