//! A machine's life once created: `machine.start` (the command line, the runner, the TAP device),
//! the supervisor thread that records how the VMM ended, `state`, `stop`, `destroy`, and the
//! daemon's recovery of the machines that ran while it was away.

use super::control::Control;
use super::params::{parse_forwarded_ports, DestroyParams, StartParams, StopParams};
use super::process::{self, ExitRecord};
use super::reboot::Refused;
use super::record::{MachineRecord, NetworkMode, Process, State, SAVED_STATE};
use super::{argv, console, fast_start, invalid_field, lock, wrong_state, Machines};
use crate::boxes::Reporter;
use crate::error::{code, Error, Result};
use crate::logger::log;
use crate::nic;
use crate::state;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default seconds `machine.stop` waits for the guest to power off before SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: f64 = 60.0;

impl Machines {
    /// Cheap: reads machine.json, spawns nothing.
    pub fn state(&self, id: &str) -> Result<Value> {
        let dir = self.existing(id)?;
        Ok(MachineRecord::load(&dir)?.state_value())
    }

    /// `report`: the fast start's progress (`fast_start.rs`).
    pub fn start(self: &Arc<Self>, p: StartParams, report: &Reporter) -> Result<Value> {
        let id = p.id.as_str();
        let ports = match &p.forwarded_ports {
            Some(v) => Some(parse_forwarded_ports(v).map_err(|e| invalid_field("forwarded_ports", e))?),
            None => None,
        };
        let dir = self.existing(id)?;
        let slot = self.slot(id);
        let _op = lock(&slot.op);
        let dir = if dir.is_dir() { dir } else { self.existing(id)? };
        self.roll_forward(id, &dir)?;
        let mut rec = MachineRecord::load(&dir)?;
        // New forwarded ports take effect with this start (a running machine keeps its own).
        if let Some(ports) = ports.filter(|p| rec.state != State::Running && *p != rec.network.forwarded_ports) {
            let _g = lock(&slot.rec);
            rec = MachineRecord::load(&dir)?;
            rec.network.forwarded_ports = ports;
            rec.save(&dir)?;
            log(&format!("machine {id}: forwarded ports now {}", json!(rec.network.forwarded_ports)));
        }
        match rec.state {
            State::Running => Ok(rec.state_value()),
            State::NotCreated => Err(wrong_state(
                format!("machine {id} was not fully created (its creation was interrupted): destroy it"),
                rec.state,
            )),
            State::Saved => self.resume_saved(id, &dir, &rec),
            State::Stopped | State::Aborted => self.boot(id, &dir, &rec, report),
        }
    }

    /// Runs xhyve for `rec`, booting it or, with `restore`, carrying on from that saved state,
    /// and supervises it; the caller holds the machine's `op` lock. A restore counts once xhyve
    /// answers on its control socket: until then the record is left as it was, so a state xhyve
    /// refuses (damaged, of another machine) leaves the machine saved.
    pub(super) fn launch(
        self: &Arc<Self>,
        id: &str,
        dir: &Path,
        rec: &MachineRecord,
        restore: Option<&Path>,
    ) -> Result<Value> {
        let slot = self.slot(id);
        let vmm_err = |m: String| Error::new(code::VMM_FAILED, m);
        let xhyve = process::find_xhyve().map_err(vmm_err)?;
        let feat = process::features(&xhyve).map_err(vmm_err)?;
        if restore.is_some() && !feat.snapshots {
            return Err(vmm_err(format!(
                "{} cannot restore a saved state (its --features has no snapshots): use a newer xhyve, or machine.stop to drop the state",
                xhyve.display()
            )));
        }
        for f in rec.kernel.iter().chain(&rec.initrd).chain(&rec.efi_vars) {
            if !Path::new(f).is_file() {
                return Err(vmm_err(format!("{f} is missing (was the box changed?)")));
            }
        }
        let console = dir.join(console::LOG);
        let taken: std::collections::HashSet<u16> =
            self.records().into_iter().filter(|(_, r)| r.id != rec.id).filter_map(|(_, r)| r.ssh_port).collect();
        let argv::Launch { argv, notes, ssh_port, taps } = argv::launch(
            &xhyve,
            &feat,
            rec,
            &console,
            &taken,
            argv::Nets { shared: &self.net, named: &self.networks },
            restore,
        )?;
        // A fresh console log per boot (the previous one is kept as console.log.1); a resumed
        // guest carries on in its log.
        if console.exists() && restore.is_none() {
            let _ = fs::rename(&console, dir.join("console.log.1"));
        }
        let _ = fs::remove_file(dir.join(process::EXIT_FILE));
        let header = match restore {
            Some(s) => format!("resume from {}: {}", s.display(), argv.join(" ")),
            None => format!("start: {}", argv.join(" ")),
        };
        let (mut child, proc) = run_vmm(dir, &argv, &header, &notes).map_err(vmm_err)?;
        if let Some(state) = restore {
            if let Err(why) = wait_restored(dir, &mut child, &proc) {
                let _ = fs::remove_file(dir.join(process::EXIT_FILE));
                return Err(Error::new(
                    code::BAD_SAVED_STATE,
                    format!(
                        "machine {id} cannot resume from {}: {why}; it stays saved (machine.stop drops the saved state, then machine.start boots it afresh)",
                        state.display()
                    ),
                )
                .with_data(json!({"state": State::Saved.as_str()})));
            }
        }
        let pid = proc.pid;
        let rec = {
            let _g = lock(&slot.rec);
            let mut rec = MachineRecord::load(dir)?;
            rec.state = State::Running;
            rec.process = Some(proc.clone());
            rec.exit_status = None;
            rec.exit_signal = None;
            rec.exit_reason = None;
            rec.stop_requested = false;
            rec.suspend_requested = false;
            rec.fresh = false;
            rec.reboots = 0;
            rec.recent_reboots.clear();
            if ssh_port.is_some() {
                rec.ssh_port = ssh_port;
            }
            rec.save(dir)?;
            rec
        };
        for t in taps {
            t.keep();
        }
        for n in notes {
            log(&format!("machine {id}: {n}"));
        }
        match restore {
            Some(s) => log(&format!("machine {id}: xhyve resumed from {} (pid {pid})", s.display())),
            None => log(&format!("machine {id}: xhyve started (pid {pid})")),
        }
        self.supervise(id.to_string(), Some(child), proc);
        Ok(rec.state_value())
    }

    /// Watches a running VMM until it ends, then records how. `child` is the runner when this
    /// daemon started it; after a daemon restart the runner is watched through a pidfd.
    fn supervise(self: &Arc<Self>, id: String, child: Option<Child>, p: Process) {
        let me = self.clone();
        let pid = p.pid;
        let r = std::thread::Builder::new().name(format!("vmm-{id}")).spawn(move || {
            match child {
                Some(mut c) => {
                    let _ = c.wait();
                }
                None => process::wait_exit(p.runner_pid, p.runner_start_time),
            }
            // The runner may have been killed while the VMM runs on: wait for the VMM too.
            process::wait_exit(p.pid, p.start_time);
            me.finalize(&id, &p);
        });
        if let Err(e) = r {
            log(&format!("xhyve pid {pid}: cannot start its supervisor: {e}"));
        }
    }

    /// Records the end of the VMM `p` of machine `id` (from the runner's exit.json); a guest
    /// that rebooted is started again instead.
    fn finalize(self: &Arc<Self>, id: &str, p: &Process) {
        let slot = self.slot(id);
        let _g = lock(&slot.rec);
        let dir = self.dir(id);
        let Ok(mut rec) = MachineRecord::load(&dir) else {
            slot.cv.notify_all();
            return;
        };
        if rec.state != State::Running || rec.process.as_ref().map(|q| q.pid) != Some(p.pid) {
            slot.cv.notify_all();
            return;
        }
        // Its SSH session reached the xhyve that ended: closed now, not kept until another login.
        self.ssh_pool.forget(id);
        let exit = process::read_exit(&dir).filter(|e| e.pid == p.pid);
        let mut refused = None;
        if exit.as_ref().is_some_and(|e| e.status == Some(0)) && !rec.stop_requested && !rec.suspend_requested {
            match self.restart_after_reboot(id, &dir, &mut rec, p) {
                Ok(()) => {
                    slot.cv.notify_all();
                    return;
                }
                Err(r) => refused = Some(r),
            }
        }
        // Before the record says "not running": a start that follows makes a new TAP device.
        self.net.remove_tap(id, rec.network.nics.len());
        classify(&mut rec, exit.as_ref(), &dir);
        if let Some((state, why)) = refused {
            rec.state = state;
            rec.exit_reason = Some(why);
        }
        rec.process = None;
        if let Err(e) = rec.save(&dir) {
            log(&format!("machine {id}: {e}"));
        }
        log(&format!("machine {id}: {} ({})", rec.state.as_str(), rec.exit_reason.as_deref().unwrap_or("")));
        slot.cv.notify_all();
    }

    /// The guest of `p` rebooted: runs xhyve again with the same command line (its SSH port,
    /// MAC address, disks and, in network shared, TAP device are the machine's own) and
    /// supervises it; the state stays running. Called with the record's lock held, so a
    /// `machine.stop` that comes meanwhile sees the new process. Err: the state and reason to
    /// record instead.
    fn restart_after_reboot(
        self: &Arc<Self>,
        id: &str,
        dir: &Path,
        rec: &mut MachineRecord,
        p: &Process,
    ) -> std::result::Result<(), (State, String)> {
        const REBOOTED: &str = "guest rebooted (exit status 0)";
        self.reboot_limit.admit(&mut rec.recent_reboots, state::now()).map_err(|r| match r {
            Refused::Disabled => (State::Stopped, format!("{REBOOTED}; not restarted: XHYVE_MAX_REBOOTS=0")),
            Refused::Loop(why) => (State::Aborted, format!("{REBOOTED}; not restarted: {why}")),
        })?;
        let n = rec.reboots + 1;
        // A guest resumed from a saved state boots afresh when it reboots.
        let argv = argv::without_restore(&p.argv);
        let (mut child, proc) = run_vmm(dir, &argv, &format!("guest reboot {n}: restarting xhyve"), &[])
            .map_err(|e| (State::Aborted, format!("{REBOOTED}; restarting xhyve failed: {e}")))?;
        rec.process = Some(proc.clone());
        rec.reboots = n;
        if let Err(e) = rec.save(dir) {
            // Unrecorded, the new xhyve could not be stopped: it goes.
            process::kill(proc.pid, proc.start_time, libc::SIGKILL);
            let _ = child.wait();
            rec.process = Some(p.clone());
            return Err((State::Aborted, format!("{REBOOTED}; restarting it failed: {}", e.message)));
        }
        log(&format!("machine {id}: guest reboot {n}: xhyve restarted (pid {})", proc.pid));
        // The guest boots again to its quiet point, where it waits for its identity.
        if fast_start::has_channel(&argv) {
            self.identity_at_quiet_point(id, dir, None);
        }
        self.supervise(id.to_string(), Some(child), proc);
        Ok(())
    }

    /// Waits (up to `timeout`) until the machine is no longer running; None on timeout.
    pub(super) fn wait_not_running(&self, id: &str, timeout: Duration) -> Result<Option<MachineRecord>> {
        let slot = self.slot(id);
        let dir = self.dir(id);
        let deadline = Instant::now() + timeout;
        let mut g = lock(&slot.rec);
        loop {
            let rec = MachineRecord::load(&dir)?;
            if rec.state != State::Running {
                return Ok(Some(rec));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).min(Duration::from_millis(500));
            g = slot.cv.wait_timeout(g, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Marks the machine's coming end as a stop (the supervisor no longer restarts a guest that
    /// reboots) and returns its VMM as it is now (a reboot may have replaced the one read
    /// before); None when it does not run.
    pub(super) fn mark_stop_requested(&self, id: &str) -> Result<Option<Process>> {
        let slot = self.slot(id);
        let _g = lock(&slot.rec);
        let dir = self.dir(id);
        let mut rec = MachineRecord::load(&dir)?;
        if rec.state != State::Running {
            return Ok(None);
        }
        if !rec.stop_requested {
            rec.stop_requested = true;
            rec.save(&dir)?;
        }
        Ok(rec.process)
    }

    /// SIGKILL and wait for the supervisor to record the end.
    pub(super) fn kill_and_wait(&self, id: &str, p: &Process) -> Result<MachineRecord> {
        process::kill(p.pid, p.start_time, libc::SIGKILL);
        match self.wait_not_running(id, Duration::from_secs(30))? {
            Some(r) => Ok(r),
            None => {
                Err(Error::internal(format!("xhyve (pid {}) of machine {id} did not end 30 s after SIGKILL", p.pid)))
            }
        }
    }

    pub fn stop(self: &Arc<Self>, p: StopParams) -> Result<Value> {
        let timeout = p.timeout.unwrap_or(DEFAULT_STOP_TIMEOUT);
        if !(0.0..=86400.0).contains(&timeout) {
            return Err(invalid_field("timeout", "seconds from 0 to 86400"));
        }
        let dir = self.existing(&p.id)?;
        let slot = self.slot(&p.id);
        let _op = lock(&slot.op);
        if MachineRecord::load(&dir)?.state == State::Saved {
            return self.drop_saved_state(&p.id, &dir);
        }
        let Some(proc) = self.mark_stop_requested(&p.id)? else {
            return Ok(MachineRecord::load(&dir)?.state_value());
        };
        if !p.force {
            // With -A, SIGTERM presses the ACPI power button.
            process::kill(proc.pid, proc.start_time, libc::SIGTERM);
            if let Some(r) = self.wait_not_running(&p.id, Duration::from_secs_f64(timeout))? {
                return Ok(r.state_value());
            }
            log(&format!("machine {}: no power-off within {timeout} s: SIGKILL", p.id));
        }
        Ok(self.kill_and_wait(&p.id, &proc)?.state_value())
    }

    pub fn destroy(self: &Arc<Self>, p: DestroyParams) -> Result<Value> {
        let dir = self.existing(&p.id)?;
        let slot = self.slot(&p.id);
        let _op = lock(&slot.op);
        if !dir.is_dir() {
            return Err(self.existing(&p.id).err().unwrap_or_else(|| Error::not_found("gone")));
        }
        let loaded = MachineRecord::load(&dir).ok();
        let shared_mac =
            loaded.as_ref().filter(|r| r.network.mode == NetworkMode::Shared).and_then(|r| nic::mac_of_uuid(&r.uuid));
        let private = loaded
            .map(|r| {
                r.network
                    .nics
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| {
                        Some((n.network.clone(), nic::nic_mac_of_uuid(&r.uuid, u8::try_from(i + 1).ok()?)?))
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        // A directory without a readable record (a creation cut short) can always go.
        if let Ok(rec) = MachineRecord::load(&dir) {
            if rec.state == State::Running {
                if !p.force {
                    return Err(wrong_state(
                        format!(
                            "machine {} ({}) is running: stop it first, or pass force to kill it",
                            rec.id, rec.name
                        ),
                        rec.state,
                    ));
                }
                if let Some(proc) = self.mark_stop_requested(&p.id)? {
                    self.kill_and_wait(&p.id, &proc)?;
                }
            }
        }
        {
            let _g = lock(&slot.rec);
            self.remove_dir(&dir);
        }
        self.net.remove_tap(&p.id, private.len());
        if let Some(mac) = shared_mac {
            self.net.forget(&mac);
        }
        for (network, mac) in private {
            self.networks.forget(&network, &mac);
        }
        self.ssh_pool.forget(&p.id);
        lock(&self.slots).remove(&p.id);
        log(&format!("machine {} destroyed", p.id));
        Ok(json!({"id": p.id, "state": "not_created"}))
    }

    /// At daemon start: adopt the VMMs still running (pid and start time match), record the end
    /// of those that ended while no daemon watched.
    pub fn recover(self: &Arc<Self>) {
        for (dir, rec) in self.records() {
            let (State::Running, Some(p)) = (rec.state, rec.process.clone()) else {
                continue;
            };
            let id = rec.id.clone();
            if dir.file_name().map(|n| n.to_string_lossy() != id.as_str()).unwrap_or(true) {
                continue;
            }
            if process::alive(p.runner_pid, p.runner_start_time) || process::alive(p.pid, p.start_time) {
                log(&format!("machine {id}: xhyve (pid {}) still runs: supervising it again", p.pid));
                self.supervise(id, None, p);
            } else {
                self.finalize(&id, &p);
            }
        }
        // Then the shared network: its TAP devices of machines that no longer run go, its
        // bridge and DHCP server come back while a shared machine runs.
        let records = self.records();
        for (_, r) in records.iter().filter(|(_, r)| r.state != State::Running) {
            self.net.remove_tap(&r.id, r.network.nics.len());
        }
        if records.iter().any(|(_, r)| r.state == State::Running && r.network.mode == NetworkMode::Shared) {
            self.net.resume();
        }
    }
}

/// Starts the runner of `argv` (process::spawn_runner) after a header line in vmm.log (and the
/// notes); returns the runner and the record of the VMM it runs.
fn run_vmm(
    dir: &Path,
    argv: &[String],
    header: &str,
    notes: &[String],
) -> std::result::Result<(Child, Process), String> {
    use std::io::Write;
    let path = dir.join("vmm.log");
    let vmm_log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut l = &vmm_log;
    let _ = writeln!(l, "--- {} {header}", state::now());
    for n in notes {
        let _ = writeln!(l, "note: {n}");
    }
    let (child, pid, start_time) = process::spawn_runner(dir, argv, vmm_log)?;
    let runner_pid = child.id() as i32;
    let proc = Process {
        pid,
        start_time,
        runner_pid,
        runner_start_time: process::start_time(runner_pid).unwrap_or(0),
        started_at: state::now(),
        argv: argv.to_vec(),
    };
    Ok((child, proc))
}

/// How long a restoring xhyve may take to answer on its control socket.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until the xhyve of `p` (run by the runner `child`) answers on its control socket, which
/// it serves once the restore is done. Err: why it did not (xhyve's last words when it ended);
/// an xhyve that never answers is killed.
fn wait_restored(dir: &Path, child: &mut Child, p: &Process) -> std::result::Result<(), String> {
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(last_vmm_line(dir).unwrap_or_else(|| "xhyve ended".into()));
        }
        if Control::connect(dir, Duration::from_secs(10))
            .and_then(|mut c| c.ask("status").map_err(std::io::Error::other))
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            process::kill(p.pid, p.start_time, libc::SIGKILL);
            let _ = child.wait();
            return Err(format!("xhyve did not answer on its control socket within {} s", RESTORE_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last line xhyve wrote to vmm.log (its error message when it failed).
fn last_vmm_line(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join("vmm.log")).ok()?;
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("xhyve-provider run-vmm:") && !l.starts_with("--- "))
        .map(str::to_string)
}

/// How many of the console's last lines a panicked machine's reason quotes.
const PANIC_LINES: usize = 15;

/// Sets state, exit status/signal and reason from how the VMM ended.
fn classify(rec: &mut MachineRecord, exit: Option<&ExitRecord>, dir: &Path) {
    let stop = rec.stop_requested;
    if std::mem::take(&mut rec.suspend_requested) && dir.join(SAVED_STATE).is_file() {
        rec.state = State::Saved;
        rec.exit_status = exit.and_then(|e| e.status);
        rec.exit_signal = exit.and_then(|e| e.signal);
        rec.exit_reason = Some(format!("suspended by machine.suspend (its state is in {SAVED_STATE})"));
        rec.stop_requested = false;
        return;
    }
    let (state, reason) = match exit {
        Some(ExitRecord { status: Some(s), .. }) => match s {
            0 if stop => (State::Stopped, "stopped by machine.stop (the guest rebooted; exit status 0)".to_string()),
            0 => (State::Stopped, "guest rebooted (exit status 0)".into()),
            1 if stop => (State::Stopped, "powered off by machine.stop (ACPI power button; exit status 1)".into()),
            1 => (State::Stopped, "guest powered off (exit status 1)".into()),
            2 => (State::Stopped, "guest halted (exit status 2)".into()),
            3 => (State::Aborted, "triple fault (exit status 3)".into()),
            4 => (
                State::Aborted,
                match last_vmm_line(dir) {
                    Some(l) => format!("xhyve failed (exit status 4): {l}"),
                    None => "xhyve failed (exit status 4)".into(),
                },
            ),
            6 => (
                State::Aborted,
                match console::tail(dir, PANIC_LINES) {
                    Some(l) => format!("the guest kernel panicked (exit status 6); its console ended with:\n{l}"),
                    None => "the guest kernel panicked (exit status 6)".into(),
                },
            ),
            n => (State::Aborted, format!("xhyve exited with status {n}")),
        },
        Some(ExitRecord { signal: Some(sig), .. }) if stop => {
            (State::Stopped, format!("forced off by machine.stop (signal {sig}, {})", process::signal_name(*sig)))
        }
        Some(ExitRecord { signal: Some(sig), .. }) => {
            (State::Aborted, format!("killed by signal {sig} ({})", process::signal_name(*sig)))
        }
        _ if stop => (State::Stopped, "stopped by machine.stop (exit status unknown: its runner was gone)".into()),
        _ => (State::Aborted, "xhyve ended and its exit status is unknown (its runner was killed)".into()),
    };
    rec.state = state;
    rec.exit_status = exit.and_then(|e| e.status);
    rec.exit_signal = exit.and_then(|e| e.signal);
    rec.exit_reason = Some(reason);
    rec.stop_requested = false;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::record::tests::rec;

    #[test]
    fn exit_classification() {
        let dir = Path::new("/nonexistent");
        let e = |status, signal| ExitRecord { pid: 1, status, signal, exited_at: 0 };
        let mut r = rec();
        classify(&mut r, Some(&e(Some(1), None)), dir);
        assert_eq!((r.state, r.exit_status), (State::Stopped, Some(1)));
        let mut r = rec();
        classify(&mut r, Some(&e(None, Some(9))), dir);
        assert_eq!(r.state, State::Aborted);
        assert!(r.exit_reason.unwrap().starts_with("killed by signal 9"));
        let mut r = rec();
        r.stop_requested = true;
        classify(&mut r, Some(&e(None, Some(9))), dir);
        assert_eq!(r.state, State::Stopped);
        assert!(!r.stop_requested);
        let mut r = rec();
        classify(&mut r, Some(&e(Some(3), None)), dir);
        assert_eq!(r.state, State::Aborted);
        let mut r = rec();
        classify(&mut r, None, dir);
        assert_eq!(r.state, State::Aborted);
    }

    #[test]
    fn a_panicked_guest_is_aborted_with_its_last_console_lines() {
        let dir = std::env::temp_dir().join(format!("xhyve-panic-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let early: String = (0..30).map(|i| format!("boot line {i}\n")).collect();
        fs::write(dir.join("console.log"), early + "\nKernel panic - not syncing: Attempted to kill init!\n").unwrap();
        let mut r = rec();
        classify(&mut r, Some(&ExitRecord { pid: 1, status: Some(6), signal: None, exited_at: 0 }), &dir);
        let reason = r.exit_reason.unwrap();
        assert_eq!(r.state, State::Aborted);
        assert!(reason.starts_with("the guest kernel panicked (exit status 6); its console ended with:\n"), "{reason}");
        assert!(reason.ends_with("boot line 29\nKernel panic - not syncing: Attempted to kill init!"), "{reason}");
        assert_eq!(reason.lines().count(), 1 + PANIC_LINES);
        fs::remove_dir_all(&dir).unwrap();
    }
}
