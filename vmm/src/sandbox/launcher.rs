//! The launcher thread starts every sandboxed thread. Seccomp filters are inherited and can only
//! be narrowed, so a thread must be created by one whose filter allows at least what the new
//! thread needs: the launcher's filter allows what any kind allows plus thread creation, and
//! each new thread narrows it to its own list before it runs anything else. A thread whose own
//! list has no `clone` (a vCPU starting queue workers at DRIVER_OK, the vsock listener per
//! connection) asks the launcher over a channel.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

use xhyve_contract::signals::TermSignals;

use super::{enter, lock_down, ThreadKind};

/// Starts one thread on the launcher (it captures the new thread's body and where to answer).
type Job = Box<dyn FnOnce() + Send>;

pub(super) struct Launcher {
    jobs: mpsc::Sender<Job>,
}

impl Launcher {
    /// Starts the launcher, which gives up its privileges and installs its filter first.
    pub(super) fn start() -> Result<Launcher, String> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::channel();
        std::thread::Builder::new()
            .name("launcher".into())
            .spawn(move || {
                // New threads inherit this thread's signal mask: only the main thread may take
                // the termination signals (they become ACPI power-button presses there).
                let _ = TermSignals::block();
                let locked = lock_down(ThreadKind::Launcher);
                let ok = locked.is_ok();
                let _ = ready.send(locked);
                if ok {
                    for job in queue {
                        job();
                    }
                }
            })
            .map_err(|e| format!("cannot start the thread launcher: {e}"))?;
        started.recv().map_err(|_| "the thread launcher died at start".to_string())??;
        Ok(Launcher { jobs })
    }

    pub(super) fn spawn<T: Send + 'static>(
        &self,
        kind: ThreadKind,
        name: String,
        body: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<JoinHandle<T>> {
        let gone = || io::Error::other("the thread launcher is gone");
        let (reply, answer) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(start_one(kind, name, body));
        });
        self.jobs.send(job).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

/// Starts one thread and returns once its filter is in place (or it failed to get one, in which
/// case its body never runs).
fn start_one<T: Send + 'static>(
    kind: ThreadKind,
    name: String,
    body: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    let (ready, entered) = mpsc::channel();
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let r = enter(kind);
        let failed = r.is_err();
        let _ = ready.send(r);
        if failed {
            // No T to return and the error is already on its way: end the thread quietly
            // (resume_unwind runs no panic hook, so nothing is printed).
            std::panic::resume_unwind(Box::new("no seccomp filter"));
        }
        body()
    })?;
    match entered.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(io::Error::other(e)),
        Err(_) => Err(io::Error::other("a new thread died before its filter was in place")),
    }
}
