//! The termination signals (SIGTERM, SIGINT, SIGHUP) both processes take in one thread of their
//! choosing: blocked in the calling thread (and so in every thread spawned after), then waited for.

/// A blocked set of the termination signals.
pub struct TermSignals(libc::sigset_t);

impl TermSignals {
    /// Blocks the signals in the calling thread; threads spawned afterwards inherit the mask.
    pub fn block() -> TermSignals {
        // SAFETY: sigset manipulation on a local set, then the calling thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            TermSignals(set)
        }
    }

    /// One pending signal, without waiting.
    pub fn poll(&self) -> Option<&'static str> {
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: takes (without blocking) one of the signals blocked in `self.0`.
        name(unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &zero) })
    }

    /// Waits for the next signal.
    pub fn wait(&self) -> &'static str {
        loop {
            let mut sig = 0;
            // SAFETY: waits for one of the signals blocked in `self.0`.
            if unsafe { libc::sigwait(&self.0, &mut sig) } == 0 {
                if let Some(n) = name(sig) {
                    return n;
                }
            }
        }
    }
}

fn name(sig: libc::c_int) -> Option<&'static str> {
    match sig {
        libc::SIGTERM => Some("SIGTERM"),
        libc::SIGINT => Some("SIGINT"),
        libc::SIGHUP => Some("SIGHUP"),
        _ => None,
    }
}
