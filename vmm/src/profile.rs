//! Where guest time goes: with `XHYVE_PROFILE=FILE`, a thread knocks the vCPUs out of the guest
//! every PERIOD and each writes one line to FILE: milliseconds since start, vCPU, RIP.
//! `tests/tools/kernel_profile.py` maps the RIPs to the guest kernel's symbols (user mode, below
//! the kernel half, counts as one bucket). On a nested `kvm_pvm` host every guest kernel
//! instruction is emulated, so the kernel functions that hold the most samples are what a box
//! kernel or its command line can save. A firmware machine's lines say more (`SampleDetail`,
//! `firmware::profile`): RIP is linear there, as real-mode firmware needs.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::exit::ExitLatch;
use crate::hypervisor::{Vcpu, RSP};
use crate::sandbox::{self, ThreadKind};

/// How often the vCPUs are sampled.
const PERIOD: Duration = Duration::from_millis(10);

/// More fields for a sample's line, from the linear RIP and stack pointer.
pub trait SampleDetail: Send + Sync {
    fn detail(&self, rip: u64, sp: u64) -> String;
}

pub struct Profiler {
    out: Mutex<File>,
    started: Instant,
    detail: Option<Box<dyn SampleDetail>>,
}

impl Profiler {
    /// A profiler writing to the file `XHYVE_PROFILE` names, if set, adding `detail` to each line.
    pub fn from_env(detail: Option<Box<dyn SampleDetail>>) -> Result<Option<Arc<Profiler>>, String> {
        let Some(path) = std::env::var_os("XHYVE_PROFILE") else { return Ok(None) };
        let f = File::create(&path).map_err(|e| format!("XHYVE_PROFILE {}: {e}", path.to_string_lossy()))?;
        Ok(Some(Arc::new(Profiler { out: Mutex::new(f), started: Instant::now(), detail })))
    }

    /// One sample of `vcpu`, knocked out of the guest.
    pub fn sample(&self, vcpu: &dyn Vcpu) {
        let Ok(regs) = vcpu.regs() else { return };
        let ms = self.started.elapsed().as_millis();
        let mut line = format!("{ms} {}", vcpu.id());
        match (&self.detail, vcpu.sregs()) {
            (Some(d), Ok(sregs)) => {
                let rip = sregs.cs.base.wrapping_add(regs.rip);
                let sp = sregs.ss.base.wrapping_add(regs.gpr[RSP]);
                line += &format!(" {rip:#x} {}", d.detail(rip, sp));
            }
            _ => line += &format!(" {:#x}", regs.rip),
        }
        if let Ok(mut f) = self.out.lock() {
            // A lost line costs one sample: the profile is a statistic.
            let _ = writeln!(f, "{line}");
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
