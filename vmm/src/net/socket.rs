//! `-s SLOT,virtio-net,socket=PATH`: the NIC is a port of an Ethernet switch that listens on the
//! unix socket PATH: any program that speaks the protocol below, e.g. a rootless switch that
//! joins several VMs into one network (QEMU's `-netdev stream` idea, with frame boundaries kept).
//!
//! Protocol: a `SOCK_SEQPACKET` connection; every message in either direction is one Ethernet
//! frame (destination MAC first, no FCS, at most 65535 bytes). Nothing else: no handshake, the
//! switch learns the port's MAC from its frames. Either side may drop frames when the other is
//! not reading (a congested link); a closed connection ends the link for the rest of the run.
//! Anyone who may connect to PATH is on that network: its directory's permissions decide.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use xhyve_contract::unix_path::with_short_path;

use super::fd::FrameFd;

/// PATH names an existing unix socket (a path longer than `sockaddr_un` holds is reached through
/// its directory: `xhyve_contract::unix_path`).
pub fn check_path(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let p = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(format!("socket={p}: not a unix socket")),
        Err(e) => Err(format!("socket={p}: {e} (is the switch running?)")),
    }
}

pub fn connect(path: &Path) -> Result<FrameFd, String> {
    use std::os::unix::ffi::OsStrExt;
    check_path(path)?;
    let err = |what: &str, e: io::Error| format!("socket={}: {what}: {e}", path.display());
    // SAFETY: a new socket, owned at once.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket", io::Error::last_os_error()));
    }
    // SAFETY: `fd` is new and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    use std::os::fd::AsRawFd;
    let connect = |short: &Path| {
        // SAFETY: an all-zero sockaddr_un is valid; the path (made to fit, NUL after it) is copied in.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(short.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        // SAFETY: connects our socket to the address built above.
        unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        }
    };
    let r = with_short_path(path, connect).map_err(|e| err("path", e))?;
    if r < 0 {
        return Err(err("connect", io::Error::last_os_error()));
    }
    // Connected in blocking mode (a unix connect either succeeds or fails at once); frames
    // then go non-blocking, as the device's workers expect.
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
        return Err(err("O_NONBLOCK", io::Error::last_os_error()));
    }
    Ok(FrameFd::new(fd, "the switch"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Backend;

    fn listener(path: &Path) -> OwnedFd {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: socket, bind and listen on a new descriptor with a zeroed, filled sockaddr_un.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
                *d = *s as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            assert_eq!(libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len), 0);
            assert_eq!(libc::listen(fd, 4), 0);
            OwnedFd::from_raw_fd(fd)
        }
    }

    #[test]
    fn connects_and_carries_frames() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("xhyve-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("switch.sock");
        let _ = std::fs::remove_file(&path);
        assert!(check_path(&path).unwrap_err().contains("is the switch running?"));
        std::fs::write(dir.join("file"), b"").unwrap();
        assert!(check_path(&dir.join("file")).unwrap_err().contains("not a unix socket"));
        let l = listener(&path);
        let port = connect(&path).unwrap();
        // SAFETY: accepts one connection on our listener.
        let peer = unsafe { libc::accept(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
        assert!(peer >= 0);
        // SAFETY: the accepted descriptor is ours.
        let peer = FrameFd::new(unsafe { OwnedFd::from_raw_fd(peer) }, "port");
        port.send(&[0xff; 60]).unwrap();
        let mut buf = Vec::new();
        assert!(peer.recv(&mut buf).unwrap());
        assert_eq!(buf, vec![0xff; 60]);
        drop(peer);
        assert!(port.recv(&mut buf).unwrap_err().to_string().contains("the switch closed"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
