//! Stopping every vCPU at a point where its state can be saved, and starting them again.
//!
//! The controller raises the request and kicks the vCPU threads until each has parked. A vCPU
//! parks only on an `Interrupted` exit taken with immediate exit on, that is with the previous
//! exit's I/O completed and no guest instruction run since; it saves its own state (KVM's state
//! ioctls belong on the vCPU's thread) and its TSC, and waits. On resume it writes its TSC back,
//! so the guest's clock does not see the pause: a Linux guest on the TSC clocksource cannot take
//! a jump of more than a few minutes (see `snapshot`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::hypervisor::{Vcpu, VcpuState};

const MSR_IA32_TSC: u32 = 0x10;

/// How often the controller kicks vCPUs that have not parked yet (a kick can land just before
/// a vCPU enters `run`, where it is lost).
const KICK_PERIOD: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Parked {
    /// Per vCPU: its state once parked (an error text if it could not be saved).
    states: Vec<Option<Result<VcpuState, String>>>,
    /// Bumped by every resume, so a vCPU wakes from its own pause only.
    epoch: u64,
}

pub struct PauseGate {
    requested: AtomicBool,
    parked: Mutex<Parked>,
    cond: Condvar,
}

impl PauseGate {
    pub fn new(vcpus: usize) -> Self {
        let parked = Parked { states: (0..vcpus).map(|_| None).collect(), epoch: 0 };
        PauseGate { requested: AtomicBool::new(false), parked: Mutex::new(parked), cond: Condvar::new() }
    }

    /// Cheap check for the vCPU loop.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Stops every vCPU; `kick` knocks them out of `run`, `gone` says the VM is ending (a vCPU
    /// that has left its loop never parks). Returns once all are parked.
    pub fn pause(&self, kick: impl Fn(), gone: impl Fn() -> bool) -> Result<(), String> {
        self.requested.store(true, Ordering::Release);
        let mut p = self.parked.lock().unwrap();
        while p.states.iter().any(Option::is_none) {
            if gone() {
                drop(p);
                self.resume();
                return Err("the VM is shutting down".into());
            }
            kick();
            p = self.cond.wait_timeout(p, KICK_PERIOD).unwrap().0;
        }
        Ok(())
    }

    /// The parked vCPUs' states (in vCPU order); only between `pause` and `resume`.
    pub fn states(&self) -> Result<Vec<VcpuState>, String> {
        let p = self.parked.lock().unwrap();
        let mut out = Vec::with_capacity(p.states.len());
        for (id, slot) in p.states.iter().enumerate() {
            match slot {
                Some(Ok(s)) => out.push(s.clone()),
                Some(Err(e)) => return Err(format!("vcpu{id}: {e}")),
                None => return Err(format!("vcpu{id}: not paused")),
            }
        }
        Ok(out)
    }

    /// True between a completed `pause` and the next `resume`.
    pub fn is_paused(&self) -> bool {
        self.requested() && self.parked.lock().unwrap().states.iter().all(Option::is_some)
    }

    pub fn resume(&self) {
        let mut p = self.parked.lock().unwrap();
        self.requested.store(false, Ordering::Release);
        p.states.iter_mut().for_each(|s| *s = None);
        p.epoch += 1;
        self.cond.notify_all();
    }

    /// Called by a vCPU thread on an `Interrupted` exit while a pause is requested: saves the
    /// state, waits for `resume`, puts the TSC back and returns.
    pub fn park(&self, vcpu: &mut dyn Vcpu) -> Result<(), String> {
        let id = usize::from(vcpu.id());
        let tsc = vcpu.msr(MSR_IA32_TSC).map_err(|e| e.to_string())?;
        let state = vcpu.save_state().map_err(|e| e.to_string());
        let mut p = self.parked.lock().unwrap();
        let epoch = p.epoch;
        p.states[id] = Some(state);
        self.cond.notify_all();
        while p.epoch == epoch {
            p = self.cond.wait(p).unwrap();
        }
        drop(p);
        vcpu.set_immediate_exit(false);
        vcpu.set_msr(MSR_IA32_TSC, tsc).map_err(|e| e.to_string())
    }
}
