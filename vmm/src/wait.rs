//! Blocking waits on eventfds, for device threads.

use std::os::fd::AsRawFd;

use vmm_sys_util::eventfd::EventFd;

/// Blocks until one of `fds` is readable; its index (None on error). When several are, the last
/// one wins: callers put their stop fd last.
pub fn readable(fds: &[&EventFd]) -> Option<usize> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|f| libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: `p` is a valid array of pollfd for the call's duration.
        let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        return (0..p.len()).rev().find(|&i| p[i].revents != 0);
    }
}
