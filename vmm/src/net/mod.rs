//! Host-side backends of `virtio-net`: a frame source/sink the device's queue workers poll.
//!
//! - `slirp.rs`: rootless user-mode networking (`-s SLOT,virtio-net,user[,hostfwd=...]`) through
//!   libslirp, in a thread of the VMM.
//! - `passt.rs`: the same through Debian's `passt`, one process per VM
//!   (`-s SLOT,virtio-net,passt[,hostfwd=...]`); `user.rs` holds what both share.
//! - `socket.rs`: a port of an Ethernet switch on a unix socket (`-s SLOT,virtio-net,socket=PATH`).
//! - `tap.rs`: an existing TAP interface (`-s SLOT,virtio-tap,TAPNAME`, xhyve's name).
//!
//! TAPs, switch ports and the slirp thread all carry one frame per read and write (`fd.rs`).
//! Frames are plain Ethernet frames (no virtio-net header, no FCS).

pub mod fd;
pub mod passt;
pub mod slirp;
pub mod socket;
pub mod tap;
pub mod user;

use std::io;
use std::os::fd::RawFd;

/// Largest frame a backend hands over (a 64 KiB TAP read; passt's length field).
pub const MAX_FRAME: usize = 65536;

pub trait Backend: Send + Sync {
    /// Readable when `recv` may have a frame.
    fn fd(&self) -> RawFd;
    /// The next frame from the host into `buf` (resized to it); Ok(false) when none is ready.
    /// Only the RX worker calls it. An error means the backend is gone for good.
    fn recv(&self, buf: &mut Vec<u8>) -> io::Result<bool>;
    /// Sends one frame (only the TX worker calls it). An error drops that frame.
    fn send(&self, frame: &[u8]) -> io::Result<()>;
}

/// Waits up to `ms` for `fd` to be writable.
pub(crate) fn wait_writable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}
