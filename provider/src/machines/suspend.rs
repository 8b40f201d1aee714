//! `machine.suspend` and `machine.resume`: a running machine's whole VM (vCPUs, devices, RAM) is
//! saved into its directory as `saved.snap` through xhyve's control socket and its xhyve ends
//! (state saved); `machine.resume`, or `machine.start`, runs xhyve from that state instead of
//! booting. `machine.stop` of a saved machine drops the state.

use super::control::Control;
use super::record::{MachineRecord, State, SAVED_STATE};
use super::{argv, lock, wrong_state, Machines};
use crate::error::{code, Error, Result};
use crate::logger::log;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long one control command may take: `save` writes the guest's RAM.
pub(super) const CONTROL_TIMEOUT: Duration = Duration::from_secs(600);

fn vmm_err(m: impl Into<String>) -> Error {
    Error::new(code::VMM_FAILED, m)
}

impl Machines {
    pub fn suspend(self: &Arc<Self>, id: &str) -> Result<Value> {
        let dir = self.existing(id)?;
        let slot = self.slot(id);
        let _op = lock(&slot.op);
        let rec = MachineRecord::load(&dir)?;
        let proc = match (rec.state, &rec.process) {
            (State::Saved, _) => return Ok(rec.state_value()),
            (State::Running, Some(p)) => p.clone(),
            (s, _) => {
                return Err(wrong_state(
                    format!("machine {id} ({}) is {}: only a running machine can be suspended", rec.name, s.as_str()),
                    s,
                ))
            }
        };
        let mut ctl = self.control(id, &dir, &proc.argv)?;
        // Paused first, so that the guest neither runs nor writes its disks after the save.
        ctl.ask("pause").map_err(vmm_err)?;
        let state = dir.join(SAVED_STATE);
        let saved = ctl.ask(&format!("save {}", state.display())).and_then(|detail| {
            self.mark_suspend_requested(id, proc.pid).map_err(|e| e.message)?;
            Ok(detail)
        });
        let detail = match saved {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_file(&state);
                let _ = ctl.ask("resume");
                return Err(vmm_err(format!("machine {id}: saving its state failed, it runs on: {e}")));
            }
        };
        log(&format!("machine {id}: state saved to {} ({detail})", state.display()));
        // The state is safe: however xhyve ends now, the machine is saved.
        let _ = ctl.ask("quit");
        let rec = match self.wait_not_running(id, Duration::from_secs(30))? {
            Some(r) => r,
            None => self.kill_and_wait(id, &proc)?,
        };
        Ok(rec.state_value())
    }

    pub fn resume(self: &Arc<Self>, id: &str) -> Result<Value> {
        let dir = self.existing(id)?;
        let slot = self.slot(id);
        let _op = lock(&slot.op);
        self.roll_forward(id, &dir)?;
        let rec = MachineRecord::load(&dir)?;
        match rec.state {
            State::Saved => self.resume_saved(id, &dir, &rec),
            State::Running => Ok(rec.state_value()),
            s => Err(wrong_state(
                format!("machine {id} ({}) is {}, not suspended: machine.start boots it", rec.name, s.as_str()),
                s,
            )),
        }
    }

    /// Runs xhyve from the saved state, then drops the file (the new xhyve maps its RAM
    /// privately, so its pages stay readable to it). The caller holds the `op` lock.
    pub(super) fn resume_saved(self: &Arc<Self>, id: &str, dir: &Path, rec: &MachineRecord) -> Result<Value> {
        let state = dir.join(SAVED_STATE);
        if !state.is_file() {
            return Err(Error::new(
                code::BAD_SAVED_STATE,
                format!("machine {id} is saved but its state {} is missing: machine.stop makes it stopped, then machine.start boots it", state.display()),
            )
            .with_data(serde_json::json!({"state": State::Saved.as_str()})));
        }
        let v = self.launch(id, dir, rec, Some(&state))?;
        if rec.fast_start {
            self.refresh_identity(id, dir, rec);
        }
        if let Err(e) = fs::remove_file(&state) {
            log(&format!("machine {id}: removing {}: {e}", state.display()));
        }
        Ok(v)
    }

    /// `machine.stop` of a saved machine: its state goes, the machine is stopped.
    pub(super) fn drop_saved_state(&self, id: &str, dir: &Path) -> Result<Value> {
        let slot = self.slot(id);
        let _g = lock(&slot.rec);
        let mut rec = MachineRecord::load(dir)?;
        let state = dir.join(SAVED_STATE);
        match fs::remove_file(&state) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::internal(format!("removing {}: {e}", state.display()))),
        }
        rec.state = State::Stopped;
        rec.exit_reason = Some("saved state dropped by machine.stop".into());
        rec.save(dir)?;
        log(&format!("machine {id}: saved state dropped"));
        Ok(rec.state_value())
    }

    /// The control socket of the running xhyve whose command line is `argv`.
    pub(super) fn control(&self, id: &str, dir: &Path, argv: &[String]) -> Result<Control> {
        if !argv::has_control(argv) {
            return Err(vmm_err(format!(
                "machine {id}'s xhyve runs without a control socket (an xhyve without snapshots started it): stop it and start it with a newer xhyve"
            )));
        }
        Control::connect(dir, CONTROL_TIMEOUT)
            .map_err(|e| vmm_err(format!("machine {id}: cannot reach xhyve's control socket: {e}")))
    }

    /// Marks the coming end of xhyve `pid` as a suspend.
    fn mark_suspend_requested(&self, id: &str, pid: i32) -> Result<()> {
        let slot = self.slot(id);
        let _g = lock(&slot.rec);
        let dir = self.dir(id);
        let mut rec = MachineRecord::load(&dir)?;
        if rec.state != State::Running || rec.process.as_ref().map(|p| p.pid) != Some(pid) {
            return Err(Error::internal(format!("machine {id}: its xhyve ended during the save")));
        }
        rec.suspend_requested = true;
        rec.save(&dir)
    }
}
