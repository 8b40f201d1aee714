//! How a VM run ends, and bhyve's exit status for each ending.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    Reboot,
    PowerOff,
    Halt,
    TripleFault,
    Error(String),
    /// `quit` on the control socket: the guest was not told (it is saved, or given up).
    Quit,
    /// The guest kernel reported a panic through pvpanic (`devices::pvpanic`).
    GuestPanic,
}

impl ExitReason {
    /// bhyve's exit status: 0 rebooted, 1 powered off, 2 halted, 3 triple fault, 4 error; and
    /// ours: 5 quit through the control socket, 6 guest kernel panic (pvpanic).
    pub fn status(&self) -> i32 {
        match self {
            ExitReason::Reboot => 0,
            ExitReason::PowerOff => 1,
            ExitReason::Halt => 2,
            ExitReason::TripleFault => 3,
            ExitReason::Error(_) => 4,
            ExitReason::Quit => 5,
            ExitReason::GuestPanic => 6,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Reboot => write!(f, "guest rebooted"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Halt => write!(f, "guest halted"),
            ExitReason::TripleFault => write!(f, "guest triple fault"),
            ExitReason::Error(e) => write!(f, "error: {e}"),
            ExitReason::Quit => write!(f, "quit through the control socket"),
            ExitReason::GuestPanic => write!(f, "guest kernel panicked (pvpanic)"),
        }
    }
}

/// The first ending reported by any thread wins; the main thread waits for it.
#[derive(Default)]
pub struct ExitLatch {
    reason: Mutex<Option<ExitReason>>,
    cond: Condvar,
}

impl ExitLatch {
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap();
        if r.is_none() {
            *r = Some(reason);
            self.cond.notify_all();
        }
    }

    pub fn is_set(&self) -> bool {
        self.reason.lock().unwrap().is_some()
    }

    /// Waits up to `timeout` for an ending.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        let r = self.reason.lock().unwrap();
        let (r, _) = self.cond.wait_timeout_while(r, timeout, |r| r.is_none()).unwrap();
        r.clone()
    }
}
