//! Giving up what set-up needed: capabilities (per thread in Linux, so each thread that was
//! created before the drop gives up its own), the right to gain privileges through exec, and
//! descriptors the VMM inherited and never uses.

use std::os::fd::RawFd;

use caps::{CapSet, Capability};

/// No exec may grant privileges again (required for an unprivileged seccomp filter), and every
/// capability of the calling thread is gone: the bounding set first while CAP_SETPCAP allows it
/// (an unprivileged user has nothing there to give up), then the ambient, inheritable,
/// effective and permitted sets.
pub fn drop_for_this_thread() -> Result<(), String> {
    // SAFETY: a prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error()));
    }
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        caps::clear(None, CapSet::Bounding).map_err(|e| format!("dropping capabilities (Bounding): {e}"))?;
    }
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(|e| format!("dropping capabilities ({set:?}): {e}"))?;
    }
    Ok(())
}

/// The descriptors above stderr open now (at start: those inherited from whoever ran us), each
/// marked close-on-exec at once: a program the VMM runs during set-up (passt) gets none of them.
pub fn inherited_fds() -> Vec<RawFd> {
    let listed: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect(),
        Err(_) => return Vec::new(),
    };
    // The directory's own descriptor was in the listing and is closed now (EBADF: left out).
    // SAFETY: FD_CLOEXEC is the only descriptor flag; setting it changes nothing else.
    listed.into_iter().filter(|&fd| unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0).collect()
}

/// Closes inherited descriptors once set-up has opened what it needs (a path like /dev/fd/N in
/// the configuration was reopened as a descriptor of our own by then).
pub fn close_inherited(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: these descriptors were open before the VMM opened anything, so none of its own
        // objects owns them.
        unsafe { libc::close(fd) };
    }
}
