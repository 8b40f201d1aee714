//! A descriptor that carries one Ethernet frame per read and per write: a TAP device, or a
//! `SOCK_SEQPACKET` unix socket (to a switch, or to the slirp thread). Non-blocking.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{Backend, MAX_FRAME};

pub struct FrameFd {
    fd: OwnedFd,
    /// What the other end is, for the error when it goes ("the switch closed the connection").
    peer: &'static str,
}

impl FrameFd {
    /// `fd` must be non-blocking.
    pub fn new(fd: OwnedFd, peer: &'static str) -> FrameFd {
        FrameFd { fd, peer }
    }
}

impl Backend for FrameFd {
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn recv(&self, buf: &mut Vec<u8>) -> io::Result<bool> {
        buf.resize(MAX_FRAME, 0);
        loop {
            // SAFETY: reads at most buf.len() bytes into buf.
            let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(false),
                    _ => return Err(e),
                }
            }
            // A TAP never reads 0 bytes; a socket does once its peer closed (no frame is empty).
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} closed the connection", self.peer),
                ));
            }
            buf.truncate(n as usize);
            return Ok(true);
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: writes frame.len() bytes from frame.
            let n = unsafe { libc::write(self.fd(), frame.as_ptr().cast(), frame.len()) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            super::wait_writable(self.fd(), 100);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// A connected pair of non-blocking `SOCK_SEQPACKET` unix sockets: frames keep their bounds.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, which we then own.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_their_bounds_and_eof_is_an_error() {
        let (a, b) = seqpacket_pair().unwrap();
        let (a, b) = (FrameFd::new(a, "a"), FrameFd::new(b, "the peer"));
        let mut buf = Vec::new();
        assert!(!b.recv(&mut buf).unwrap());
        a.send(&[1, 2, 3]).unwrap();
        a.send(&vec![7; 9000]).unwrap();
        assert!(b.recv(&mut buf).unwrap());
        assert_eq!(buf, [1, 2, 3]);
        assert!(b.recv(&mut buf).unwrap());
        assert_eq!(buf, vec![7; 9000]);
        drop(a);
        let e = b.recv(&mut buf).unwrap_err();
        assert_eq!(e.to_string(), "the peer closed the connection");
    }

    #[test]
    fn a_full_peer_drops_the_frame_instead_of_blocking() {
        let (a, _b) = seqpacket_pair().unwrap();
        let a = FrameFd::new(a, "a");
        let frame = vec![0u8; 1514];
        let dropped = (0..100_000).find_map(|_| a.send(&frame).err()).expect("the queue never filled");
        assert_eq!(dropped.kind(), io::ErrorKind::WouldBlock);
    }
}
