//! Logged-in SSH sessions kept between `machine.wait_ssh` and `machine.exec` calls, one per
//! machine. On a nested host a login costs a guest tens of seconds (sshd's re-exec, PAM, a
//! logind session) while a command on an open session costs one process: so `exec` reuses the
//! session of the last login to the same xhyve process, and logs in again only when there is
//! none or it no longer answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Which guest a session reaches: its address and the xhyve process (pid and start time), so a
/// restarted or rebooted machine never gets a session of its previous run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub process: (i32, u64),
}

/// The kept sessions (`C`: ssh.rs's `Conn`) by machine id.
pub struct Pool<C>(Mutex<HashMap<String, (Target, C)>>);

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Pool(Mutex::default())
    }
}

impl<C> Pool<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Target, C)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kept session of machine `id` if it reaches `target`; the caller has it to itself
    /// until it gives it back with `put`. A session for another target is dropped.
    pub fn take(&self, id: &str, target: &Target) -> Option<C> {
        let (t, c) = self.lock().remove(id)?;
        (t == *target).then_some(c)
    }

    /// Keeps `conn` for machine `id` (replacing an older one). `current(id, target)` says which
    /// other kept sessions still reach a running machine; the rest are closed.
    pub fn put(&self, id: &str, target: Target, conn: C, current: impl Fn(&str, &Target) -> bool) {
        let mut m = self.lock();
        m.retain(|k, (t, _)| k != id && current(k, t));
        m.insert(id.to_string(), (target, conn));
    }
}
