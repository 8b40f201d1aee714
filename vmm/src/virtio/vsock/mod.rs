//! `virtio-vsock,cid=N,socket=PATH`: a virtio socket device (type 19) whose host side is unix
//! sockets, as Firecracker does it:
//!
//! - the guest connects to host (CID 2) port P: the VMM connects to the unix socket `PATH_P`;
//! - a host program connects to `PATH` and writes `CONNECT P\n`: the VMM opens a connection to
//!   guest port P and, once the guest accepts, answers `OK <hostport>\n`; then bytes flow.
//!
//! Stream sockets only (no SEQPACKET). Credit accounting as the spec says: the VMM never sends
//! the guest more than its advertised `buf_alloc - (tx_cnt - fwd_cnt)`; bytes from the guest are
//! written to the host socket at once, so the VMM's own `fwd_cnt` follows what it received and a
//! CREDIT_UPDATE goes out after each quarter of `BUF_ALLOC` (and on CREDIT_REQUEST).
//!
//! Threads: the transmit queue's worker handles guest packets (connects, writes to host sockets);
//! the receive queue's worker builds packets for the guest from a control queue and the
//! connections' pending bytes; one thread accepts on `PATH`, one per connection reads its host
//! socket into a bounded buffer and kicks the receive queue. The event queue is never used.
//! Malformed packets from the guest are dropped (or answered with RST when they name a
//! connection); nothing a guest writes can panic the VMM.

mod connections;
mod device;
mod packet;

pub use device::Vsock;
