//! vCPU threads: run the vCPU, route its exits to devices, report how the VM ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use crate::bus::Bus;
use crate::exit::{ExitLatch, ExitReason};
use crate::hypervisor::{Vcpu, VcpuExit};
use crate::pause::PauseGate;
use crate::profile::Profiler;
use crate::pvm::Pvm;
use crate::sandbox::{self, ThreadKind};

/// Signal used to knock a vCPU out of `run` (its handler does nothing; the EINTR is the point).
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the no-op kick handler (without SA_RESTART, so KVM_RUN returns EINTR).
pub fn install_kick_handler() {
    // SAFETY: installs an async-signal-safe no-op handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
    }
}

/// What all vCPU threads share.
pub struct Shared {
    pub mem: GuestMemoryMmap,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitLatch>,
    pub pvm: Option<Arc<Pvm>>,
    pub pause: PauseGate,
    /// One flag per vCPU: halted with interrupts off (only a reset could wake it).
    pub halted: Vec<AtomicBool>,
    pub unclaimed_io: AtomicU64,
    pub ignored_msrs: AtomicU64,
    pub verbose: bool,
    /// XHYVE_PROFILE's sampler, fed at every kick.
    pub profiler: Option<Arc<Profiler>>,
}

impl Shared {
    /// Counts an access no device claimed.
    fn claimed(&self, claimed: bool) {
        if !claimed {
            self.unclaimed_io.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the vCPU's thread (never joined: the process exits when the VM ends) and returns its
/// pthread id for kicks.
pub fn spawn(mut vcpu: Box<dyn Vcpu>, shared: Arc<Shared>) -> std::io::Result<libc::pthread_t> {
    let (tx, rx) = std::sync::mpsc::channel();
    sandbox::spawn(ThreadKind::Vcpu, format!("vcpu{}", vcpu.id()), move || {
        // SAFETY: pthread_self has no preconditions.
        let _ = tx.send(unsafe { libc::pthread_self() });
        if let Err(reason) = run_loop(vcpu.as_mut(), &shared) {
            shared.exit.request(reason);
        }
    })?;
    rx.recv().map_err(|_| std::io::Error::other("vCPU thread died at start"))
}

/// Runs until the VM has an exit reason; returns the reason this vCPU found, if any.
fn run_loop(vcpu: &mut dyn Vcpu, shared: &Shared) -> Result<(), ExitReason> {
    let id = usize::from(vcpu.id());
    let fail = |what: String| ExitReason::Error(format!("vcpu{id}: {what}"));
    while !shared.exit.is_set() {
        if shared.pause.requested() {
            vcpu.set_immediate_exit(true);
        }
        let exit = vcpu.run().map_err(|e| fail(e.to_string()))?;
        match exit {
            // Unclaimed port I/O and MMIO: reads float high, writes are dropped, as on an empty bus.
            VcpuExit::IoIn(port, data) => shared.claimed(shared.pio.read(port.into(), data)),
            VcpuExit::IoOut(port, data) => shared.claimed(shared.pio.write(port.into(), data)),
            VcpuExit::MmioRead(addr, data) => shared.claimed(shared.mmio.read(addr, data)),
            VcpuExit::MmioWrite(addr, data) => shared.claimed(shared.mmio.write(addr, data)),
            VcpuExit::Hlt => return Err(ExitReason::Halt),
            VcpuExit::Shutdown => return Err(ExitReason::TripleFault),
            VcpuExit::SystemReset => return Err(ExitReason::Reboot),
            VcpuExit::SystemPowerOff => return Err(ExitReason::PowerOff),
            VcpuExit::EmulationFailure { insn } => match &shared.pvm {
                Some(pvm) => pvm.handle_emulation_failure(&*vcpu, &shared.mem, &insn).map_err(fail)?,
                None => return Err(fail(format!("the host could not emulate instruction {insn:02x?}"))),
            },
            VcpuExit::IgnoredMsr { index, write } => {
                shared.ignored_msrs.fetch_add(1, Ordering::Relaxed);
                if shared.verbose {
                    let what = if write { "write to" } else { "read of" };
                    crate::logger::log(format!("vcpu{id}: ignored {what} unknown MSR {index:#x}"));
                }
            }
            // Any `Interrupted` exit has the last exit's I/O completed: a state that can be saved.
            VcpuExit::Interrupted if shared.pause.requested() => shared.pause.park(vcpu).map_err(fail)?,
            VcpuExit::Interrupted => {
                if let Some(p) = &shared.profiler {
                    p.sample(vcpu);
                }
                check_halted(vcpu, shared, id).map_err(fail)?
            }
            VcpuExit::Unhandled(what) => return Err(fail(what)),
        }
        if let Some(pvm) = &shared.pvm {
            pvm.after_exit(&*vcpu, &shared.mem);
        }
    }
    Ok(())
}

/// After a kick: if every vCPU is halted for good, the guest has halted (bhyve's status 2).
fn check_halted(vcpu: &dyn Vcpu, shared: &Shared, id: usize) -> Result<(), String> {
    let halted = vcpu.halted_for_good().map_err(|e| e.to_string())?;
    shared.halted[id].store(halted, Ordering::SeqCst);
    if halted && shared.halted.iter().all(|h| h.load(Ordering::SeqCst)) {
        shared.exit.request(ExitReason::Halt);
    }
    Ok(())
}

/// Knocks every vCPU thread out of `run` (threads as `spawn` returned them).
pub fn kick(threads: &[libc::pthread_t]) {
    for t in threads {
        // SAFETY: the vCPU threads live as long as the process (never joined early).
        unsafe { libc::pthread_kill(*t, kick_signal()) };
    }
}

/// Kicks every vCPU once a second so halted ones get noticed.
pub fn spawn_halt_watch(threads: Vec<libc::pthread_t>, exit: Arc<ExitLatch>) -> std::io::Result<()> {
    sandbox::spawn(ThreadKind::HaltWatch, "halt-watch".into(), move || {
        while exit.wait_timeout(Duration::from_secs(1)).is_none() {
            kick(&threads);
        }
    })
    .map(drop)
}
