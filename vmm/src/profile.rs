//! Where guest time goes: with `XHYVE_PROFILE=FILE`, a thread knocks the vCPUs out of the guest
//! every PERIOD and each writes one line to FILE: milliseconds since start, vCPU, RIP.
//! `tests/tools/kernel_profile.py` maps the RIPs to the guest kernel's symbols (user mode, below
//! the kernel half, counts as one bucket). On a nested `kvm_pvm` host every guest kernel
//! instruction is emulated, so the kernel functions that hold the most samples are what a box
//! kernel or its command line can save.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::exit::ExitLatch;
use crate::hypervisor::Vcpu;
use crate::sandbox::{self, ThreadKind};

/// How often the vCPUs are sampled.
const PERIOD: Duration = Duration::from_millis(10);

pub struct Profiler {
    out: Mutex<File>,
    started: Instant,
}

impl Profiler {
    /// A profiler writing to the file `XHYVE_PROFILE` names, if set.
    pub fn from_env() -> Result<Option<Arc<Profiler>>, String> {
        let Some(path) = std::env::var_os("XHYVE_PROFILE") else { return Ok(None) };
        let f = File::create(&path).map_err(|e| format!("XHYVE_PROFILE {}: {e}", path.to_string_lossy()))?;
        Ok(Some(Arc::new(Profiler { out: Mutex::new(f), started: Instant::now() })))
    }

    /// One sample of `vcpu`, knocked out of the guest.
    pub fn sample(&self, vcpu: &dyn Vcpu) {
        let Ok(regs) = vcpu.regs() else { return };
        let ms = self.started.elapsed().as_millis();
        if let Ok(mut f) = self.out.lock() {
            // A lost line costs one sample: the profile is a statistic.
            let _ = writeln!(f, "{ms} {} {:#x}", vcpu.id(), regs.rip);
        }
    }

    /// Knocks every vCPU thread (`kick`) every PERIOD until the VM exits.
    pub fn spawn_sampler(
        threads: Vec<libc::pthread_t>,
        exit: Arc<ExitLatch>,
        kick: fn(&[libc::pthread_t]),
    ) -> std::io::Result<()> {
        sandbox::spawn(ThreadKind::Profile, "profile".into(), move || {
            while exit.wait_timeout(PERIOD).is_none() {
                kick(&threads);
            }
        })
        .map(drop)
    }
}
