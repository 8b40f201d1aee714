//! Work-arounds for a `/dev/kvm` provided by `kvm_pvm` (nested "pagetable-based virtual
//! machine"): there every guest CPL0 instruction goes through the host's x86 emulator, which
//! gives up on some instructions, and SYSCALL from guest CPL3 is broken. On a normal KVM host none
//! of this is used (the VMM creates a [`Pvm`] only when [`Pvm::detect`] says so).
//!
//! - `cpuid.rs`: CPUID bits to clear through `KVM_SET_CPUID2` (cx16).
//! - `cmdline.rs`: kernel parameters hiding what CPUID cannot, and speeding up the emulated boot.
//! - `guest_mem.rs`: guest page-table walk (linear -> guest physical) with permission checks.
//! - `fixup.rs`: performs the instructions the emulator rejects (decoded with iced-x86).
//! - `syscall.rs`: SYSCALL completed through an int3 patched into the guest's #PF handler.
//!
//! Measured on this platform (2026-11, Linux 6.1 guests):
//! - A guest `vmcall` never completes: the vCPU re-executes it forever inside the host. The
//!   kernel's users of it (kvmclock-based `ptp_kvm`, PV unhalt/IPI/yield) are hidden via CPUID.
//! - lzcnt/tzcnt are not rejected: the emulator ignores the F3 prefix and runs bsr/bsf, as a CPU
//!   without ABM/BMI1 would; CPUID says so for lzcnt and `clearcpuid` hides BMI1.
//! - `initcall_blacklist` needs CONFIG_KALLSYMS in the guest; kernels without it ignore it.
//! - Open host defect: now and then a guest user process reads a wrong value from its TLS
//!   block and dies (busybox `mov %fs:-0x80,%r8` then `mov 0x8(%r8),%rax`: #GP on a
//!   non-canonical r8; `init` reading 0 at `%fs:-0x90` at boot, which panics the guest). Seen
//!   about once per few hundred short-lived processes, more under network load. Ruled out with
//!   the guest probes in `vmm/benches/pvm-probes/`: 40,000 SYSCALLs through the #PF path and
//!   preemption between three processes left r8-r10, r12-r15 and xmm0-15 intact and `%fs:0`
//!   equal to the FS base (also under a TCP stream through virtio-net), so neither the SYSCALL
//!   completion nor FPU/segment switching corrupts registers; 100 rounds of anonymous zero-page
//!   and fork copy-on-write pages read back right. Both crashes read the TLS block right after
//!   exec, which static glibc copies from the binary's file-backed `.tdata`: the suspect left is
//!   the host's shadow MMU (`kvm.flush_on_reuse=N`, `eager_zap_unsync_children=N` here,
//!   read-only) serving a stale translation for a page of a new process. The test suite reruns
//!   once a test whose guest shows such a crash (`tests/conftest.py`).
//! - UEFI firmware (OVMF) needs fwait, ldmxcsr/stmxcsr and x87 instructions (its FPU set-up; OpenSSL
//!   in TlsDxe computes with x87; `host_exec.rs` runs those and SSE on the host CPU), and runs at
//!   about 2 million instructions a second here: see `firmware` for what that costs.
//! - The tiny box (vmlinux, 1 vCPU, 256 MiB) reaches /init in about 90 s with these fix-ups:
//!   about 300 SYSCALLs through the #PF path, a few fwait and one int3 (`-v` prints the counts).
//!
//! The run loop calls [`Pvm::handle_emulation_failure`] on every `VcpuExit::EmulationFailure`
//! and [`Pvm::after_exit`] after every exit.

mod cmdline;
mod cpuid;
pub(crate) mod fixup;
mod guest_mem;
mod host_exec;
#[cfg(test)]
mod kvm_test;
mod syscall;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use crate::hypervisor::{CpuidEntry, Vcpu};
use fixup::{CpuExtra, CpuState, Exception, Outcome, MSR_LSTAR};
use syscall::{Handler, PfEntry};

/// One counter per kind of fix-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int3,
    Ud2,
    Fwait,
    Fence,
    ClacStac,
    Ldmxcsr,
    Stmxcsr,
    /// x87 instructions (UEFI firmware's FPU set-up and floating point), run on the host CPU.
    X87,
    /// SSE and MMX instructions (boot loaders), run on the host CPU.
    Sse,
    Popcnt,
    Lzcnt,
    Tzcnt,
    Cmpxchg16b,
    Cmpxchg8b,
    Rdrand,
    Rdseed,
    Sysret,
    /// The code at RIP differed from what the emulator fetched: re-run.
    CodeChangedRetry,
    SyscallViaPf,
    PfPassthrough,
    /// A #PF or #GP the fixed-up instruction raised, injected into the guest.
    FaultInjected,
    /// The guest rewrote our int3 in its #PF handler and we put it back.
    PfRepatch,
}

const KINDS: usize = Kind::PfRepatch as usize + 1;

const NAMES: [&str; KINDS] = [
    "int3",
    "ud2",
    "fwait",
    "fence",
    "clac/stac",
    "ldmxcsr",
    "stmxcsr",
    "x87",
    "sse",
    "popcnt",
    "lzcnt",
    "tzcnt",
    "cmpxchg16b",
    "cmpxchg8b",
    "rdrand",
    "rdseed",
    "sysret",
    "code-changed-retry",
    "syscall-via-#PF",
    "pf-passthrough",
    "fault-injected",
    "pf-repatch",
];

/// How often `after_exit` looks at the guest before / after the #PF handler is patched.
const PATCH_POLL_NS: u64 = 2_000_000;
const VERIFY_POLL_NS: u64 = 100_000_000;

/// The #PF patch, once made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
enum PatchState {
    #[default]
    Pending,
    Patched {
        va: u64,
        gpa: u64,
    },
    /// The handler does not start with a NOP: SYSCALL from user mode will not work.
    Refused,
}

pub struct Pvm {
    counters: [AtomicU64; KINDS],
    verbose: AtomicU8,
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last look at the guest in `after_exit`.
    last_poll: AtomicU64,
    /// Fast paths without the lock: the patched handler's address (0: none) and NOP length.
    pf_va: AtomicU64,
    pf_nop_len: AtomicU8,
    patch_final: AtomicBool,
    patch: Mutex<PatchState>,
    /// Per vCPU id: RIP of the last code-changed retry and how many in a row there.
    retry_rip: [AtomicU64; 256],
    retry_streak: [AtomicU64; 256],
    /// Guest RAM with the firmware images, when firmware runs from outside RAM: what fix-ups
    /// fetch and read through instead of RAM alone.
    view: OnceLock<GuestMemoryMmap>,
}

/// What a snapshot keeps of the PVM layer: the #PF patch. Its int3 lives in guest RAM, so a
/// restored VMM that did not know about it would find a handler that starts with int3, not a NOP,
/// and leave SYSCALL broken. The counters start again from zero.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvmState {
    patch: PatchState,
    nop_len: u8,
}

/// Consecutive code-changed retries at one RIP before giving up (the code should settle within
/// one text_poke_bp; endless retries mean our view of the code differs from the emulator's).
const MAX_RETRY_STREAK: u64 = 100_000;

impl Default for Pvm {
    fn default() -> Self {
        Self::new()
    }
}

impl Pvm {
    /// True when /dev/kvm is provided by kvm_pvm. Cheap.
    pub fn detect() -> bool {
        std::path::Path::new("/sys/module/kvm_pvm").exists()
    }

    /// Whether the work-arounds apply: detected, or forced with XHYVE_PVM=on|off.
    pub fn wanted() -> bool {
        match std::env::var("XHYVE_PVM").as_deref() {
            Ok("on") | Ok("1") => true,
            Ok("off") | Ok("0") => false,
            _ => Pvm::detect(),
        }
    }

    /// The kernel parameters every Linux guest needs here, with the vCPUs' TSC rate (`tsc_khz`,
    /// when known): what a firmware-booted guest's own boot entry has to carry. Without the rate
    /// the kernel calibrates its TSC against the PIT, which hangs here (measured: a kernel booted
    /// through OVMF stopped for good in its IO-APIC timer check).
    pub fn guest_kernel_params(tsc_khz: Option<u32>) -> Vec<String> {
        cmdline::additions("", tsc_khz)
    }

    pub fn new() -> Pvm {
        Pvm {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            verbose: AtomicU8::new(0),
            epoch: Instant::now(),
            last_poll: AtomicU64::new(0),
            pf_va: AtomicU64::new(0),
            pf_nop_len: AtomicU8::new(0),
            patch_final: AtomicBool::new(false),
            patch: Mutex::new(PatchState::Pending),
            retry_rip: std::array::from_fn(|_| AtomicU64::new(0)),
            retry_streak: std::array::from_fn(|_| AtomicU64::new(0)),
            view: OnceLock::new(),
        }
    }

    /// Makes the page the host-run x87/SSE instructions are written to (`host_exec.rs`), during
    /// set-up: the sandbox lets no thread map executable memory once the guest runs.
    pub fn prepare_host_exec(&self) -> Result<(), String> {
        host_exec::stub_page().map(drop)
    }

    /// Fix-ups see `mem` (RAM and firmware images) instead of the RAM the run loop passes.
    pub fn set_memory_view(&self, mem: GuestMemoryMmap) {
        let _ = self.view.set(mem);
    }

    /// 0: quiet; 1: log the first 3 fix-ups of each kind and the #PF patch; 2: log every one.
    pub fn set_verbose(&self, level: u8) {
        self.verbose.store(level, Ordering::Relaxed);
    }

    fn count(&self, kind: Kind, vcpu: u8, rip: u64) {
        let n = self.counters[kind as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let v = self.verbose.load(Ordering::Relaxed);
        if v >= 2 || (v == 1 && n <= 3) {
            eprintln!("xhyve: pvm: vcpu{vcpu} {} (#{n}) at rip {rip:#x}", NAMES[kind as usize]);
        }
    }

    /// The value of one counter.
    #[cfg(test)]
    pub fn counter(&self, kind: Kind) -> u64 {
        self.counters[kind as usize].load(Ordering::Relaxed)
    }

    /// Clears CPUID bits the host emulator can't run and that KVM_SET_CPUID2 can mask here.
    pub fn adjust_cpuid(&self, entries: &mut [CpuidEntry]) {
        cpuid::adjust(entries);
    }

    /// Kernel parameters the platform needs that the user has not set (by key); append them to
    /// the command line, before any `--`.
    pub fn cmdline_additions(&self, user_cmdline: &str, tsc_khz: Option<u32>) -> Vec<String> {
        cmdline::additions(user_cmdline, tsc_khz)
    }

    /// After every exit: once LSTAR is set and the IDT is in high memory, patch the guest #PF
    /// handler's leading NOP to int3 (once per VM); afterwards, now and then, check that the
    /// guest has not rewritten it. Cheap: at most one look per few milliseconds.
    pub fn after_exit(&self, vcpu: &dyn Vcpu, mem: &GuestMemoryMmap) {
        if self.patch_final.load(Ordering::Relaxed) {
            return;
        }
        let mem = self.view.get().unwrap_or(mem);
        let now = self.epoch.elapsed().as_nanos() as u64;
        let last = self.last_poll.load(Ordering::Relaxed);
        let period = if self.pf_va.load(Ordering::Relaxed) != 0 { VERIFY_POLL_NS } else { PATCH_POLL_NS };
        if now.saturating_sub(last) < period
            || self.last_poll.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let Ok(mut state) = self.patch.lock() else {
            return;
        };
        match &*state {
            PatchState::Refused => self.patch_final.store(true, Ordering::Relaxed),
            PatchState::Patched { va, gpa, .. } => {
                let (va, gpa) = (*va, *gpa);
                if syscall::byte_at(mem, gpa) == Some(syscall::INT3) {
                    return;
                }
                // The guest rewrote the entry (alternatives, live patching): patch again if it is
                // still a NOP there.
                let Ok(sregs) = vcpu.sregs() else { return };
                match syscall::find_pf_handler(mem, &sregs) {
                    Handler::Nop { va: v, gpa: g, nop_len } if v == va && g == gpa => {
                        self.pf_nop_len.store(nop_len as u8, Ordering::Relaxed);
                        *state = PatchState::Patched { va, gpa };
                        if syscall::patch(mem, gpa) {
                            self.count(Kind::PfRepatch, vcpu.id(), va);
                        }
                    }
                    Handler::NotYet => {}
                    other => {
                        eprintln!("xhyve: pvm: #PF handler changed ({other:?}): SYSCALL via #PF disabled");
                        self.pf_va.store(0, Ordering::Relaxed);
                        *state = PatchState::Refused;
                    }
                }
            }
            PatchState::Pending => {
                let Ok(sregs) = vcpu.sregs() else { return };
                if sregs.idt.base < 0xffff_8000_0000_0000 {
                    return;
                }
                if !matches!(vcpu.msr(MSR_LSTAR), Ok(l) if l != 0) {
                    return;
                }
                match syscall::find_pf_handler(mem, &sregs) {
                    Handler::NotYet => {}
                    Handler::Other { va, bytes } => {
                        eprintln!(
                            "xhyve: pvm: #PF handler {va:#x} starts with {bytes:02x?}, not a NOP: not patching \
                             (SYSCALL from guest user mode will fail)"
                        );
                        *state = PatchState::Refused;
                    }
                    Handler::Nop { va, gpa, nop_len } => {
                        if !syscall::patch(mem, gpa) {
                            return;
                        }
                        self.pf_nop_len.store(nop_len as u8, Ordering::Relaxed);
                        self.pf_va.store(va, Ordering::Release);
                        *state = PatchState::Patched { va, gpa };
                        if self.verbose.load(Ordering::Relaxed) > 0 {
                            eprintln!("xhyve: pvm: patched #PF handler {va:#x} (nop{nop_len} -> int3) for SYSCALL");
                        }
                    }
                }
            }
        }
    }

    /// Handles `VcpuExit::EmulationFailure`: performs the instruction at RIP (or completes a
    /// SYSCALL at the patched #PF entry) and updates the vCPU. Err when the vCPU cannot go on.
    pub fn handle_emulation_failure(&self, vcpu: &dyn Vcpu, mem: &GuestMemoryMmap, insn: &[u8]) -> Result<(), String> {
        let mem = self.view.get().unwrap_or(mem);
        let regs = vcpu.regs().map_err(|e| e.to_string())?;
        let sregs = vcpu.sregs().map_err(|e| e.to_string())?;
        let mut extra = VcpuExtra { vcpu, mxcsr: None };
        let mut cpu = CpuState { regs, sregs, sregs_dirty: false, extra: &mut extra };
        let rip = regs.rip;
        let id = vcpu.id();

        let pf_va = self.pf_va.load(Ordering::Acquire);
        if pf_va != 0 && fixup::linear_rip(&sregs, rip) == pf_va && insn.first().is_none_or(|&b| b == syscall::INT3) {
            let at_rip = guest_mem::GuestView::new(mem, &sregs, regs.rflags).read_code(pf_va, 1);
            if at_rip.first() == Some(&syscall::INT3) {
                let nop_len = usize::from(self.pf_nop_len.load(Ordering::Relaxed));
                let kind = match syscall::pf_entry(&mut cpu, mem, nop_len)? {
                    PfEntry::Syscall => Kind::SyscallViaPf,
                    PfEntry::Passthrough => Kind::PfPassthrough,
                };
                vcpu.set_regs(&cpu.regs).map_err(|e| e.to_string())?;
                self.count(kind, id, rip);
                return Ok(());
            }
        }

        match fixup::emulate(&mut cpu, mem, insn)? {
            Outcome::Retry => {
                self.count(Kind::CodeChangedRetry, id, rip);
                let i = usize::from(id);
                let streak = if self.retry_rip[i].swap(rip, Ordering::Relaxed) == rip {
                    self.retry_streak[i].fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    self.retry_streak[i].store(1, Ordering::Relaxed);
                    1
                };
                if streak >= MAX_RETRY_STREAK {
                    let code = guest_mem::GuestView::new(mem, &sregs, regs.rflags)
                        .read_code(fixup::linear_rip(&sregs, rip), 15);
                    return Err(format!(
                        "rip {rip:#x}: the host emulator fetched {insn:02x?} but guest memory holds \
                         {code:02x?}, {streak} times in a row"
                    ));
                }
                Ok(())
            }
            Outcome::Done { kind, exception } => {
                let i = usize::from(id);
                if self.retry_streak[i].load(Ordering::Relaxed) != 0 {
                    self.retry_streak[i].store(0, Ordering::Relaxed);
                }
                vcpu.set_regs(&cpu.regs).map_err(|e| e.to_string())?;
                if cpu.sregs_dirty {
                    vcpu.set_sregs(&cpu.sregs).map_err(|e| e.to_string())?;
                }
                if let Some(Exception { vector, error_code }) = exception {
                    vcpu.inject_exception(vector, error_code).map_err(|e| e.to_string())?;
                }
                self.count(kind, id, rip);
                Ok(())
            }
        }
    }

    pub fn save_state(&self) -> PvmState {
        PvmState { patch: self.patch.lock().unwrap().clone(), nop_len: self.pf_nop_len.load(Ordering::Relaxed) }
    }

    /// Takes over a saved state; before any vCPU runs.
    pub fn restore_state(&self, s: &PvmState) {
        let mut patch = self.patch.lock().unwrap();
        *patch = s.patch.clone();
        self.pf_nop_len.store(s.nop_len, Ordering::Relaxed);
        let va = match s.patch {
            PatchState::Patched { va, .. } => va,
            _ => 0,
        };
        self.pf_va.store(va, Ordering::Release);
        self.patch_final.store(s.patch == PatchState::Refused, Ordering::Relaxed);
    }

    /// "fixups: int3=3 cmpxchg16b=10 ... syscall-via-#PF=153": every non-zero counter.
    pub fn report(&self) -> String {
        let parts: Vec<String> = NAMES
            .iter()
            .zip(&self.counters)
            .filter_map(|(name, c)| {
                let v = c.load(Ordering::Relaxed);
                (v != 0).then(|| format!("{name}={v}"))
            })
            .collect();
        if parts.is_empty() {
            "fixups: none".into()
        } else {
            format!("fixups: {}", parts.join(" "))
        }
    }
}

/// The lazily read vCPU state a fix-up may need.
struct VcpuExtra<'a> {
    vcpu: &'a dyn Vcpu,
    mxcsr: Option<u32>,
}

impl CpuExtra for VcpuExtra<'_> {
    fn mxcsr(&mut self) -> Result<u32, String> {
        if let Some(v) = self.mxcsr {
            return Ok(v);
        }
        let v = self.vcpu.mxcsr().map_err(|e| e.to_string())?;
        self.mxcsr = Some(v);
        Ok(v)
    }

    fn set_mxcsr(&mut self, value: u32) -> Result<(), String> {
        self.vcpu.set_mxcsr(value).map_err(|e| e.to_string())?;
        self.mxcsr = Some(value);
        Ok(())
    }

    fn fxsave(&mut self) -> Result<[u8; 512], String> {
        self.vcpu.fxsave().map_err(|e| e.to_string())
    }

    fn set_fxsave(&mut self, image: &[u8; 512]) -> Result<(), String> {
        self.vcpu.set_fxsave(image).map_err(|e| e.to_string())
    }

    fn msr(&mut self, index: u32) -> Result<u64, String> {
        self.vcpu.msr(index).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shareable_between_vcpu_threads() {
        fn check<T: Send + Sync>() {}
        check::<Pvm>();
    }

    #[test]
    fn patch_state_survives_a_snapshot() {
        let p = Pvm::new();
        *p.patch.lock().unwrap() = PatchState::Patched { va: 0xffff_ffff_8100_0000, gpa: 0x100_0000 };
        p.pf_nop_len.store(5, Ordering::Relaxed);
        let saved: PvmState = serde_json::from_str(&serde_json::to_string(&p.save_state()).unwrap()).unwrap();
        let q = Pvm::new();
        q.restore_state(&saved);
        assert_eq!(q.pf_va.load(Ordering::Relaxed), 0xffff_ffff_8100_0000);
        assert_eq!(q.pf_nop_len.load(Ordering::Relaxed), 5);
        assert_eq!(q.save_state(), saved);
        q.restore_state(&PvmState { patch: PatchState::Refused, nop_len: 0 });
        assert!(q.patch_final.load(Ordering::Relaxed));
        assert_eq!(q.pf_va.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn report_lists_non_zero_counters() {
        let p = Pvm::new();
        assert_eq!(p.report(), "fixups: none");
        p.count(Kind::Int3, 0, 0);
        p.count(Kind::Int3, 0, 0);
        p.count(Kind::SyscallViaPf, 0, 0);
        assert_eq!(p.report(), "fixups: int3=2 syscall-via-#PF=1");
        assert_eq!(NAMES[Kind::PfRepatch as usize], "pf-repatch");
    }
}
