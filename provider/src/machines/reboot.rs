//! Guest reboots. xhyve exits 0 when its guest resets (bhyve's convention); the supervisor then
//! starts xhyve again with the same command line (same disks, MAC address and SSH port), so a
//! guest that reboots comes back by itself, as on any hypervisor. A guest that keeps rebooting
//! is not restarted forever: at most `max` reboots within `window`, else the machine ends
//! aborted with the reason.

use std::time::Duration;

/// How many reboots the supervisor follows, from `XHYVE_MAX_REBOOTS` and `XHYVE_REBOOT_WINDOW`
/// (seconds) of the daemon's environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebootLimit {
    /// Reboots restarted within `window`; 0 restarts none (a reboot stops the machine).
    pub max: u32,
    pub window: Duration,
}

impl Default for RebootLimit {
    /// A provisioning run reboots a guest a few times; a loop on a fast host reboots every few
    /// seconds and on a nested one every half minute: either reaches 10 within 10 minutes.
    fn default() -> RebootLimit {
        RebootLimit { max: 10, window: Duration::from_secs(600) }
    }
}

/// Why the supervisor does not restart a rebooted guest.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max` is 0: reboots stop the machine.
    Disabled,
    /// One reboot too many within the window: the text says how many.
    Loop(String),
}

impl RebootLimit {
    pub fn from_env() -> Result<RebootLimit, String> {
        let mut l = RebootLimit::default();
        if let Ok(v) = std::env::var("XHYVE_MAX_REBOOTS") {
            l.max = v.trim().parse().map_err(|_| format!("XHYVE_MAX_REBOOTS={v:?} is not a number of reboots"))?;
        }
        if let Ok(v) = std::env::var("XHYVE_REBOOT_WINDOW") {
            l.window = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=86400 * 365).contains(s))
                .map(Duration::from_secs)
                .ok_or(format!("XHYVE_REBOOT_WINDOW={v:?} is not a number of seconds (1 or more)"))?;
        }
        Ok(l)
    }

    /// A reboot at `now` (Unix seconds): recorded in `recent` (the times of the reboots before,
    /// those older than the window dropped) when it may be restarted.
    pub fn admit(&self, recent: &mut Vec<u64>, now: u64) -> Result<(), Refused> {
        if self.max == 0 {
            return Err(Refused::Disabled);
        }
        let window = self.window.as_secs();
        recent.retain(|&t| t <= now && now - t < window);
        if recent.len() >= self.max as usize {
            return Err(Refused::Loop(format!(
                "the guest rebooted {} times within {window} s (XHYVE_MAX_REBOOTS={}, XHYVE_REBOOT_WINDOW={window}): a reboot loop",
                recent.len() + 1,
                self.max
            )));
        }
        recent.push(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_reboots_within_the_window() {
        let l = RebootLimit { max: 2, window: Duration::from_secs(60) };
        let mut recent = Vec::new();
        assert_eq!(l.admit(&mut recent, 1000), Ok(()));
        assert_eq!(l.admit(&mut recent, 1010), Ok(()));
        let Err(Refused::Loop(why)) = l.admit(&mut recent, 1020) else { panic!("a third reboot in 60 s") };
        assert!(why.starts_with("the guest rebooted 3 times within 60 s"), "{why}");
        assert_eq!(recent, vec![1000, 1010], "a refused reboot is not recorded");
        // Once the first has left the window, one more is allowed.
        assert_eq!(l.admit(&mut recent, 1060), Ok(()));
        assert_eq!(recent, vec![1010, 1060]);
        // A clock that went back does not keep old reboots in the window forever.
        assert_eq!(l.admit(&mut recent, 500), Ok(()));
        assert_eq!(recent, vec![500]);
    }

    #[test]
    fn zero_disables() {
        let l = RebootLimit { max: 0, window: Duration::from_secs(60) };
        assert_eq!(l.admit(&mut Vec::new(), 1), Err(Refused::Disabled));
    }
}
