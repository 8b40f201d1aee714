//! An existing TAP interface opened through `/dev/net/tun` (IFF_TAP | IFF_NO_PI, non-blocking).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{Backend, MAX_FRAME};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

pub struct Tap {
    file: File,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A usable TAP name: what the kernel accepts, and the interface must exist already (as xhyve,
/// the VMM attaches to a TAP the administrator made; it never creates one).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ',', ' ']) || name == "." || name == ".." {
        return Err(format!("'{name}' is not a network interface name"));
    }
    let sys = std::path::Path::new("/sys/class/net").join(name);
    if !sys.exists() {
        return Err(format!("TAP device {name} does not exist (create it with `ip tuntap add {name} mode tap`)"));
    }
    if !sys.join("tun_flags").exists() {
        return Err(format!("{name} is not a TAP device"));
    }
    Ok(())
}

impl Tap {
    pub fn open(name: &str) -> Result<Tap, String> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| format!("/dev/net/tun: {e}"))?;
        let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes), which `req` is.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if r < 0 {
            return Err(format!("TAP device {name}: {}", io::Error::last_os_error()));
        }
        Ok(Tap { file })
    }
}

impl Backend for Tap {
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
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
