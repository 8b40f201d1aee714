//! An existing TAP interface opened through `/dev/net/tun` (IFF_TAP | IFF_NO_PI, non-blocking).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::fd::FrameFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

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

pub fn open(name: &str) -> Result<FrameFd, String> {
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
    Ok(FrameFd::new(OwnedFd::from(file), "the TAP device"))
}
