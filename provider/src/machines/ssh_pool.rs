//! Logged-in SSH sessions kept between `machine.wait_ssh` and `machine.exec` calls, one per
//! machine. On a nested host a login costs a guest tens of seconds (sshd's re-exec, PAM, a
//! logind session) while a command on an open session costs one process: so `exec` reuses the
//! session of the last login to the same xhyve process, and logs in again only when there is
//! none or it no longer answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use super::process::Proc;

/// Which guest a session reaches: its address and the xhyve process (when the machine's record
/// names one), so a restarted or rebooted machine never gets a session of its previous run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub process: Option<Proc>,
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

    /// Keeps `conn` for machine `id` (replacing an older one) if `current(id, target)` says it
    /// still reaches the running machine (an `exec` may end after its machine stopped); of the
    /// other kept sessions, those that no longer do are closed.
    pub fn put(&self, id: &str, target: Target, conn: C, current: impl Fn(&str, &Target) -> bool) {
        let mut m = self.lock();
        m.retain(|k, (t, _)| k != id && current(k, t));
        if current(id, &target) {
            m.insert(id.to_string(), (target, conn));
        }
    }

    /// Closes machine `id`'s kept session, if any: its VMM ended, or it is destroyed. Without
    /// this a stopped machine's session (a socket) stayed until the next `put` of any machine.
    pub fn forget(&self, id: &str) {
        let gone = self.lock().remove(id);
        drop(gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn target(pid: i32) -> Target {
        Target { addr: SocketAddr::from(([127, 0, 0, 1], 22)), process: Some(Proc { pid, start: 1 }) }
    }

    /// Sessions are `Arc`s here: the strong count says whether the pool still holds one.
    #[test]
    fn sessions_of_ended_machines_are_closed() {
        let pool: Pool<Arc<()>> = Pool::default();
        let (a, b) = (Arc::new(()), Arc::new(()));
        pool.put("a", target(1), a.clone(), |_, _| true);
        pool.put("b", target(2), b.clone(), |_, _| true);
        assert_eq!((Arc::strong_count(&a), Arc::strong_count(&b)), (2, 2));
        // a's VMM ended: forget closes its session at once, b's stays.
        pool.forget("a");
        assert_eq!((Arc::strong_count(&a), Arc::strong_count(&b)), (1, 2));
        pool.forget("a");
        // An exec that ends after its machine stopped does not keep the session.
        pool.put("a", target(1), a.clone(), |id, _| id != "a");
        assert_eq!(Arc::strong_count(&a), 1);
        // A session taken for another run of the machine is dropped, not handed out.
        assert!(pool.take("b", &target(3)).is_none());
        assert_eq!(Arc::strong_count(&b), 1);
    }
}
