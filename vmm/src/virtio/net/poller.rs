//! RX wake-ups: a thread waits for the backend's fd while the RX worker is "armed" and then
//! kicks the RX queue; the worker re-arms it once it has taken every frame.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// Shared by the RX worker and the poller thread.
pub(super) struct RxWake {
    /// The poller waits for the backend's fd only while armed.
    pub(super) armed: AtomicBool,
    /// Written when `armed` is set, so the poller includes the backend's fd again.
    pub(super) arm: EventFd,
    /// The RX queue's kick (from the transport).
    pub(super) kick: Mutex<Option<Arc<EventFd>>>,
}

impl RxWake {
    pub(super) fn run(&self, backend_fd: RawFd) {
        loop {
            let armed = self.armed.load(Ordering::SeqCst);
            let mut p = [
                libc::pollfd { fd: self.arm.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: backend_fd, events: libc::POLLIN, revents: 0 },
            ];
            let n = if armed { 2 } else { 1 };
            // SAFETY: `p` holds `n` valid pollfds for the call's duration.
            let r = unsafe { libc::poll(p.as_mut_ptr(), n, -1) };
            if r < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if p[0].revents != 0 {
                let _ = self.arm.read();
            }
            if armed && p[1].revents != 0 && self.armed.swap(false, Ordering::SeqCst) {
                if let Some(k) = &*self.kick.lock().unwrap() {
                    let _ = k.write(1);
                }
            }
        }
    }
}
