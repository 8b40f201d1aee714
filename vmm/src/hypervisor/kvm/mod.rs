//! The KVM backend of the hypervisor traits (kvm-ioctls).

pub mod state;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_pit_config, kvm_regs, kvm_segment, kvm_sregs,
    kvm_userspace_memory_region, CpuId, Msrs, KVM_INTERNAL_ERROR_EMULATION, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY,
    KVM_MP_STATE_HALTED, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuExit as KvmExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::{
    CpuidEntry, DescriptorTable, Error, IrqRoute, Regs, Result, Segment, SpecialRegs, StatsReader, Vcpu, VcpuExit,
    VcpuState, Vm, VmState,
};

/// One CPUID leaf as `$ty` from `$e`: `CpuidEntry` and KVM's `kvm_cpuid_entry2` share these
/// fields (KVM's adds padding, given by `$rest`).
macro_rules! cpuid_entry {
    ($ty:ident, $e:expr $(, ..$rest:expr)?) => {
        $ty {
            function: $e.function,
            index: $e.index,
            flags: $e.flags,
            eax: $e.eax,
            ebx: $e.ebx,
            ecx: $e.ecx,
            edx: $e.edx,
            $(..$rest)?
        }
    };
}

fn err(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |e| Error { op: op.into(), errno: e.errno() }
}

/// Opens `/dev/kvm` and creates a VM with the in-kernel PIC, IOAPIC, LAPICs and PIT. `/dev/kvm`
/// itself is closed again: what the VM needs from it (the supported CPUID) is read now, so a
/// running VMM holds no handle that could create another VM.
pub fn create_vm() -> Result<KvmVm> {
    let kvm = Kvm::new().map_err(err("open /dev/kvm"))?;
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(err("KVM_GET_SUPPORTED_CPUID"))?;
    let supported_cpuid = cpuid.as_slice().iter().map(|e| cpuid_entry!(CpuidEntry, e)).collect();
    let fd = kvm.create_vm().map_err(err("KVM_CREATE_VM"))?;
    // Real-mode support pages (needed on Intel; harmless elsewhere), kept out of guest RAM and
    // below where firmware images go (the top 16 MiB), where QEMU puts them.
    fd.set_tss_address(0xfeff_d000).map_err(err("KVM_SET_TSS_ADDR"))?;
    fd.set_identity_map_address(0xfeff_c000).map_err(err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    fd.create_irq_chip().map_err(err("KVM_CREATE_IRQCHIP"))?;
    fd.create_pit2(kvm_pit_config::default()).map_err(err("KVM_CREATE_PIT2"))?;
    let stats = get_stats_fd(fd.as_raw_fd());
    let msrs_to_save = state::msrs_to_save(&kvm)?.into();
    Ok(KvmVm { fd, stats, supported_cpuid, msrs_to_save })
}

pub fn max_vcpus() -> Result<usize> {
    Ok(Kvm::new().map_err(err("open /dev/kvm"))?.get_max_vcpus())
}

/// The TSC rate a vCPU of this host runs at: KVM answers it per vCPU, so one is made and dropped.
pub fn tsc_khz() -> Result<u32> {
    let vm = Kvm::new().map_err(err("open /dev/kvm"))?.create_vm().map_err(err("KVM_CREATE_VM"))?;
    let vcpu = vm.create_vcpu(0).map_err(err("KVM_CREATE_VCPU"))?;
    vcpu.get_tsc_khz().map_err(err("KVM_GET_TSC_KHZ"))
}

pub struct KvmVm {
    fd: VmFd,
    stats: Option<OwnedFd>,
    supported_cpuid: Vec<CpuidEntry>,
    /// What a vCPU's saved state holds of its MSRs.
    msrs_to_save: Arc<[u32]>,
}

impl KvmVm {
    /// # Safety
    /// The host range must stay mapped for the VM's lifetime (unless `size` is 0).
    unsafe fn set_region(&self, slot: u32, gpa: u64, size: u64, host_addr: u64, flags: u32) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_addr,
            flags,
        };
        // SAFETY: the caller guarantees the host range.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(err("KVM_SET_USER_MEMORY_REGION"))
    }
}

impl Vm for KvmVm {
    unsafe fn map_memory(&self, slot: u32, gpa: u64, size: u64, host_addr: u64) -> Result<()> {
        // SAFETY: the caller guarantees the host range outlives the VM.
        unsafe { self.set_region(slot, gpa, size, host_addr, 0) }
    }

    unsafe fn map_readonly_memory(&self, slot: u32, gpa: u64, size: u64, host_addr: u64) -> Result<()> {
        // SAFETY: as for map_memory.
        unsafe { self.set_region(slot, gpa, size, host_addr, KVM_MEM_READONLY) }
    }

    fn unmap_memory(&self, slot: u32) -> Result<()> {
        // SAFETY: a zero-sized region deletes the slot; no host memory is handed over.
        unsafe { self.set_region(slot, 0, 0, 0, 0) }
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>> {
        let fd = self.fd.create_vcpu(u64::from(id)).map_err(err("KVM_CREATE_VCPU"))?;
        // Opened now: reading a stats fd later never takes the vCPU mutex held inside KVM_RUN.
        let stats = get_stats_fd(fd.as_raw_fd());
        Ok(Box::new(KvmVcpu { id, fd, stats, msrs_to_save: self.msrs_to_save.clone() }))
    }

    fn set_irq_line(&self, irq: u32, level: bool) -> Result<()> {
        self.fd.set_irq_line(irq, level).map_err(err("KVM_IRQ_LINE"))
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd.register_irqfd(fd, gsi).map_err(err("KVM_IRQFD"))
    }

    fn register_irqfd_with_resample(&self, fd: &EventFd, resample: &EventFd, gsi: u32) -> Result<()> {
        self.fd.register_irqfd_with_resample(fd, resample, gsi).map_err(err("KVM_IRQFD(KVM_IRQFD_FLAG_RESAMPLE)"))
    }

    fn set_gsi_routing(&self, routes: &[IrqRoute]) -> Result<()> {
        let mut table = kvm_bindings::KvmIrqRouting::new(0)
            .map_err(|_| Error { op: "KVM_SET_GSI_ROUTING".into(), errno: libc::ENOMEM })?;
        for r in routes {
            let mut e = kvm_bindings::kvm_irq_routing_entry::default();
            match *r {
                IrqRoute::Irqchip { gsi, chip, pin } => {
                    e.gsi = gsi;
                    e.type_ = kvm_bindings::KVM_IRQ_ROUTING_IRQCHIP;
                    e.u.irqchip = kvm_bindings::kvm_irq_routing_irqchip { irqchip: chip, pin };
                }
                IrqRoute::Msi { gsi, address, data } => {
                    e.gsi = gsi;
                    e.type_ = kvm_bindings::KVM_IRQ_ROUTING_MSI;
                    e.u.msi.address_lo = address as u32;
                    e.u.msi.address_hi = (address >> 32) as u32;
                    e.u.msi.data = data;
                }
            }
            table.push(e).map_err(|_| Error { op: "KVM_SET_GSI_ROUTING".into(), errno: libc::E2BIG })?;
        }
        self.fd.set_gsi_routing(&table).map_err(err("KVM_SET_GSI_ROUTING"))
    }

    fn register_ioevent(&self, fd: &EventFd, addr: u64) -> Result<()> {
        self.fd.register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch).map_err(err("KVM_IOEVENTFD"))
    }

    fn unregister_ioevent(&self, fd: &EventFd, addr: u64) -> Result<()> {
        self.fd.unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch).map_err(err("KVM_IOEVENTFD(deassign)"))
    }

    fn ignore_unknown_msrs(&self) -> Result<()> {
        let mut cap =
            kvm_bindings::kvm_enable_cap { cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR, ..Default::default() };
        cap.args[0] = u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_UNKNOWN);
        self.fd.enable_cap(&cap).map_err(err("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))
    }

    fn set_apic_bus_cycle_ns(&self, ns: u32) -> Result<()> {
        let mut cap =
            kvm_bindings::kvm_enable_cap { cap: kvm_bindings::KVM_CAP_X86_APIC_BUS_CYCLES_NS, ..Default::default() };
        cap.args[0] = u64::from(ns);
        self.fd.enable_cap(&cap).map_err(err("KVM_ENABLE_CAP(X86_APIC_BUS_CYCLES_NS)"))
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        Ok(self.supported_cpuid.clone())
    }

    fn stats(&self) -> Vec<(String, u64)> {
        self.stats.as_ref().map(read_stats).unwrap_or_default()
    }

    fn save_state(&self) -> Result<VmState> {
        Ok(VmState::Kvm(Box::new(state::save_vm(&self.fd)?)))
    }

    fn restore_state(&self, s: &VmState) -> Result<()> {
        let VmState::Kvm(s) = s;
        state::restore_vm(&self.fd, s)
    }
}

pub struct KvmVcpu {
    id: u8,
    fd: VcpuFd,
    stats: Option<OwnedFd>,
    msrs_to_save: Arc<[u32]>,
}

impl Vcpu for KvmVcpu {
    fn id(&self) -> u8 {
        self.id
    }

    fn run(&mut self) -> Result<VcpuExit<'_>> {
        let run_area: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return Ok(VcpuExit::Interrupted),
            Err(e) => return Err(Error { op: "KVM_RUN".into(), errno: e.errno() }),
        };
        Ok(match exit {
            KvmExit::IoIn(port, data) => VcpuExit::IoIn(port, data),
            KvmExit::IoOut(port, data) => VcpuExit::IoOut(port, data),
            KvmExit::MmioRead(addr, data) => VcpuExit::MmioRead(addr, data),
            KvmExit::MmioWrite(addr, data) => VcpuExit::MmioWrite(addr, data),
            KvmExit::Hlt => VcpuExit::Hlt,
            KvmExit::Shutdown => VcpuExit::Shutdown,
            KvmExit::Intr => VcpuExit::Interrupted,
            KvmExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => VcpuExit::SystemReset,
            KvmExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => VcpuExit::SystemPowerOff,
            // SAFETY: the run area is mapped for the vCPU's lifetime; KVM is not running it now.
            KvmExit::InternalError => internal_error(unsafe { &*run_area }),
            KvmExit::X86Rdmsr(m) => {
                *m.error = 0;
                *m.data = 0;
                VcpuExit::IgnoredMsr { index: m.index, write: false }
            }
            KvmExit::X86Wrmsr(m) => {
                *m.error = 0;
                VcpuExit::IgnoredMsr { index: m.index, write: true }
            }
            KvmExit::FailEntry(reason, cpu) => {
                VcpuExit::Unhandled(format!("entry failed: hardware reason {reason:#x} on cpu {cpu}"))
            }
            other => VcpuExit::Unhandled(format!("{other:?}")),
        })
    }

    fn regs(&self) -> Result<Regs> {
        let r = self.fd.get_regs().map_err(err("KVM_GET_REGS"))?;
        Ok(Regs {
            gpr: [
                r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
                r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
        })
    }

    fn set_regs(&self, regs: &Regs) -> Result<()> {
        let g = &regs.gpr;
        let r = kvm_regs {
            rax: g[0],
            rcx: g[1],
            rdx: g[2],
            rbx: g[3],
            rsp: g[4],
            rbp: g[5],
            rsi: g[6],
            rdi: g[7],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: regs.rip,
            rflags: regs.rflags,
        };
        self.fd.set_regs(&r).map_err(err("KVM_SET_REGS"))
    }

    fn sregs(&self) -> Result<SpecialRegs> {
        let s = self.fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
        Ok(SpecialRegs {
            cs: seg_from(&s.cs),
            ds: seg_from(&s.ds),
            es: seg_from(&s.es),
            fs: seg_from(&s.fs),
            gs: seg_from(&s.gs),
            ss: seg_from(&s.ss),
            tr: seg_from(&s.tr),
            ldt: seg_from(&s.ldt),
            gdt: DescriptorTable { base: s.gdt.base, limit: s.gdt.limit },
            idt: DescriptorTable { base: s.idt.base, limit: s.idt.limit },
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
        })
    }

    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()> {
        // Start from the current state so pending-interrupt bits are kept.
        let mut s: kvm_sregs = self.fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
        s.cs = seg_to(&sregs.cs);
        s.ds = seg_to(&sregs.ds);
        s.es = seg_to(&sregs.es);
        s.fs = seg_to(&sregs.fs);
        s.gs = seg_to(&sregs.gs);
        s.ss = seg_to(&sregs.ss);
        s.tr = seg_to(&sregs.tr);
        s.ldt = seg_to(&sregs.ldt);
        s.gdt = kvm_dtable { base: sregs.gdt.base, limit: sregs.gdt.limit, ..Default::default() };
        s.idt = kvm_dtable { base: sregs.idt.base, limit: sregs.idt.limit, ..Default::default() };
        s.cr0 = sregs.cr0;
        s.cr2 = sregs.cr2;
        s.cr3 = sregs.cr3;
        s.cr4 = sregs.cr4;
        s.cr8 = sregs.cr8;
        s.efer = sregs.efer;
        s.apic_base = sregs.apic_base;
        self.fd.set_sregs(&s).map_err(err("KVM_SET_SREGS"))
    }

    fn msr(&self, index: u32) -> Result<u64> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry { index, ..Default::default() }])
            .map_err(|_| Error { op: "KVM_GET_MSRS".into(), errno: libc::EINVAL })?;
        match self.fd.get_msrs(&mut msrs).map_err(err("KVM_GET_MSRS"))? {
            1 => Ok(msrs.as_slice()[0].data),
            _ => Err(Error { op: "KVM_GET_MSRS".into(), errno: libc::ENOENT }),
        }
    }

    fn set_msr(&self, index: u32, data: u64) -> Result<()> {
        let msrs = Msrs::from_entries(&[kvm_msr_entry { index, data, ..Default::default() }])
            .map_err(|_| Error { op: "KVM_SET_MSRS".into(), errno: libc::EINVAL })?;
        match self.fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))? {
            1 => Ok(()),
            _ => Err(Error { op: format!("KVM_SET_MSRS {index:#x}").into(), errno: libc::EINVAL }),
        }
    }

    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()> {
        let list: Vec<kvm_cpuid_entry2> =
            entries.iter().map(|e| cpuid_entry!(kvm_cpuid_entry2, e, ..Default::default())).collect();
        let cpuid =
            CpuId::from_entries(&list).map_err(|_| Error { op: "KVM_SET_CPUID2".into(), errno: libc::E2BIG })?;
        self.fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))
    }

    fn init_fpu(&self) -> Result<()> {
        let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
        self.fd.set_fpu(&fpu).map_err(err("KVM_SET_FPU"))
    }

    fn init_lapic_lints(&self) -> Result<()> {
        const LVT_LINT0: usize = 0x350;
        const LVT_LINT1: usize = 0x360;
        const MODE_EXTINT: u32 = 7;
        const MODE_NMI: u32 = 4;
        let mut lapic = self.fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        for (reg, mode) in [(LVT_LINT0, MODE_EXTINT), (LVT_LINT1, MODE_NMI)] {
            let bytes: &mut [u8] =
                // SAFETY: kvm_lapic_state.regs is a plain 1 KiB byte array (i8); viewed as u8.
                unsafe { std::slice::from_raw_parts_mut(lapic.regs.as_mut_ptr().cast(), lapic.regs.len()) };
            let mut v = u32::from_le_bytes(bytes[reg..reg + 4].try_into().unwrap());
            v = (v & !0x700) | (mode << 8);
            bytes[reg..reg + 4].copy_from_slice(&v.to_le_bytes());
        }
        self.fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))
    }

    fn mxcsr(&self) -> Result<u32> {
        // MXCSR lives at byte 24 of the legacy XSAVE area.
        let x = self.fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?;
        Ok(x.region[6])
    }

    fn set_mxcsr(&self, value: u32) -> Result<()> {
        let mut x = self.fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?;
        x.region[6] = value;
        // XSTATE_BV (byte 512) bit 1: the SSE state is present, or KVM ignores it.
        x.region[128] |= 2;
        // SAFETY: the region came from KVM_GET_XSAVE on this vCPU and keeps its size.
        unsafe { self.fd.set_xsave(&x) }.map_err(err("KVM_SET_XSAVE"))
    }

    fn fxsave(&self) -> Result<[u8; 512]> {
        // The XSAVE area starts with the legacy (FXSAVE) region; XSTATE_BV (byte 512) says which
        // components hold values rather than their init state.
        let x = self.fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?;
        let mut image = [0u8; 512];
        for (i, w) in x.region[..128].iter().enumerate() {
            image[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        if x.region[128] & 1 == 0 {
            // x87 init: FCW 0x37f, everything else (status, tags, pointers, registers) zero.
            image[..24].fill(0);
            image[..2].copy_from_slice(&0x37fu16.to_le_bytes());
            image[32..160].fill(0);
        }
        if x.region[128] & 2 == 0 {
            image[160..416].fill(0);
        }
        Ok(image)
    }

    fn set_fxsave(&self, image: &[u8; 512]) -> Result<()> {
        let mut x = self.fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?;
        for (i, w) in x.region[..128].iter_mut().enumerate() {
            *w = u32::from_le_bytes(image[i * 4..i * 4 + 4].try_into().unwrap());
        }
        // XSTATE_BV bits 0 and 1: the x87 and SSE state are present, or KVM ignores them.
        x.region[128] |= 3;
        // SAFETY: the region came from KVM_GET_XSAVE on this vCPU and keeps its size.
        unsafe { self.fd.set_xsave(&x) }.map_err(err("KVM_SET_XSAVE"))
    }

    fn inject_exception(&self, vector: u8, error_code: Option<u32>) -> Result<()> {
        let mut ev = self.fd.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?;
        ev.exception.injected = 1;
        ev.exception.nr = vector;
        ev.exception.has_error_code = u8::from(error_code.is_some());
        ev.exception.error_code = error_code.unwrap_or(0);
        ev.flags = 0;
        self.fd.set_vcpu_events(&ev).map_err(err("KVM_SET_VCPU_EVENTS"))
    }

    fn halted_for_good(&self) -> Result<bool> {
        const IF: u64 = 1 << 9;
        let mp = self.fd.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?;
        Ok(mp.mp_state == KVM_MP_STATE_HALTED && self.regs()?.rflags & IF == 0)
    }

    fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok()
    }

    fn stats_reader(&self) -> StatsReader {
        let fd = self.stats.as_ref().and_then(|f| f.try_clone().ok());
        Box::new(move || fd.as_ref().map(read_stats).unwrap_or_default())
    }

    fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    fn save_state(&self) -> Result<VcpuState> {
        Ok(VcpuState::Kvm(Box::new(state::save_vcpu(&self.fd, &self.msrs_to_save)?)))
    }

    fn restore_state(&self, s: &VcpuState) -> Result<()> {
        let VcpuState::Kvm(s) = s;
        state::restore_vcpu(&self.fd, s)
    }
}

/// Turns KVM_EXIT_INTERNAL_ERROR into an exit the VMM can act on.
fn internal_error(run: &kvm_bindings::kvm_run) -> VcpuExit<'static> {
    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let ndata = (internal.ndata as usize).min(internal.data.len());
    let data = &internal.data[..ndata];
    if internal.suberror != KVM_INTERNAL_ERROR_EMULATION {
        return VcpuExit::Unhandled(format!("internal error, suberror {} data {:x?}", internal.suberror, data));
    }
    // data[0] flags (bit 0: instruction bytes valid), data[1..]: length byte, then the bytes.
    let mut insn = Vec::new();
    if ndata >= 3 && data[0] & 1 != 0 {
        let bytes: Vec<u8> = data[1..].iter().flat_map(|w| w.to_le_bytes()).collect();
        let len = usize::from(bytes[0]).min(15).min(bytes.len() - 1);
        insn.extend_from_slice(&bytes[1..=len]);
    }
    VcpuExit::EmulationFailure { insn }
}

fn seg_from(s: &kvm_segment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present != 0,
        dpl: s.dpl,
        db: s.db != 0,
        s: s.s != 0,
        l: s.l != 0,
        g: s.g != 0,
        avl: s.avl != 0,
        unusable: s.unusable != 0,
    }
}

fn seg_to(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present.into(),
        dpl: s.dpl,
        db: s.db.into(),
        s: s.s.into(),
        l: s.l.into(),
        g: s.g.into(),
        avl: s.avl.into(),
        unusable: s.unusable.into(),
        padding: 0,
    }
}

// KVM_GET_STATS_FD = _IO(KVMIO, 0xce): binary statistics (kvm-ioctls has no wrapper).
vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

fn get_stats_fd(fd: i32) -> Option<OwnedFd> {
    // SAFETY: a plain ioctl on a KVM fd we own; a non-negative result is a new fd we take over.
    let r = unsafe { libc::ioctl(fd, KVM_GET_STATS_FD() as _) };
    // SAFETY: `r` is a fresh descriptor returned by the kernel.
    (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r) })
}

/// Reads every non-zero cumulative/instant counter of a KVM binary stats fd.
fn read_stats(fd: &OwnedFd) -> Vec<(String, u64)> {
    use std::os::unix::fs::FileExt;
    let Ok(dup) = fd.try_clone() else { return Vec::new() };
    let file = std::fs::File::from(dup);
    let mut hdr = [0u8; 24];
    if file.read_exact_at(&mut hdr, 0).is_err() {
        return Vec::new();
    }
    let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let (name_size, num_desc, desc_off, data_off) =
        (word(&hdr, 4) as usize, word(&hdr, 8) as usize, word(&hdr, 16) as u64, word(&hdr, 20) as u64);
    let desc_size = 16 + name_size;
    let mut descs = vec![0u8; desc_size * num_desc];
    if file.read_exact_at(&mut descs, desc_off).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for d in descs.chunks(desc_size) {
        let (flags, size, offset) = (word(d, 0), u16::from_le_bytes([d[6], d[7]]), word(d, 8));
        const TYPE_MASK: u32 = 0xf;
        const TYPE_PEAK: u32 = 2;
        if size < 1 || flags & TYPE_MASK == TYPE_PEAK {
            continue;
        }
        let mut v = [0u8; 8];
        if file.read_exact_at(&mut v, data_off + u64::from(offset)).is_ok() {
            let v = u64::from_le_bytes(v);
            let name = String::from_utf8_lossy(&d[16..]).trim_end_matches('\0').to_string();
            if v != 0 {
                out.push((name, v));
            }
        }
    }
    out
}

// The ioctls a running VM makes (numbers as kvm-ioctls defines them, which keeps them private):
// `crate::sandbox` allows these and no other KVM ioctl once set-up is over.
vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, kvm_bindings::KVMIO, 0x81, kvm_regs);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_REGS, kvm_bindings::KVMIO, 0x82, kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, kvm_bindings::KVMIO, 0x83, kvm_sregs);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_SREGS, kvm_bindings::KVMIO, 0x84, kvm_sregs);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, kvm_bindings::KVMIO, 0x88, kvm_bindings::kvm_msrs);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_MSRS, kvm_bindings::KVMIO, 0x89, kvm_bindings::kvm_msrs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, kvm_bindings::KVMIO, 0x98, kvm_bindings::kvm_mp_state);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, kvm_bindings::KVMIO, 0x9f, kvm_bindings::kvm_vcpu_events);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, kvm_bindings::KVMIO, 0xa0, kvm_bindings::kvm_vcpu_events);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE, kvm_bindings::KVMIO, 0xa4, kvm_bindings::kvm_xsave);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_XSAVE, kvm_bindings::KVMIO, 0xa5, kvm_bindings::kvm_xsave);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_LAPIC, kvm_bindings::KVMIO, 0x8e, kvm_bindings::kvm_lapic_state);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_DEBUGREGS, kvm_bindings::KVMIO, 0xa1, kvm_bindings::kvm_debugregs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, kvm_bindings::KVMIO, 0xa6, kvm_bindings::kvm_xcrs);
vmm_sys_util::ioctl_io_nr!(KVM_GET_TSC_KHZ, kvm_bindings::KVMIO, 0xa3);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_IRQCHIP, kvm_bindings::KVMIO, 0x62, kvm_bindings::kvm_irqchip);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_CLOCK, kvm_bindings::KVMIO, 0x7c, kvm_bindings::kvm_clock_data);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_PIT2, kvm_bindings::KVMIO, 0x9f, kvm_bindings::kvm_pit_state2);
vmm_sys_util::ioctl_iow_nr!(KVM_IRQ_LINE, kvm_bindings::KVMIO, 0x61, kvm_bindings::kvm_irq_level);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_GSI_ROUTING, kvm_bindings::KVMIO, 0x6a, kvm_bindings::kvm_irq_routing);
vmm_sys_util::ioctl_iow_nr!(KVM_IRQFD, kvm_bindings::KVMIO, 0x76, kvm_bindings::kvm_irqfd);
vmm_sys_util::ioctl_iow_nr!(KVM_IOEVENTFD, kvm_bindings::KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);
vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    kvm_bindings::KVMIO,
    0x46,
    kvm_bindings::kvm_userspace_memory_region
);

/// What a vCPU's `Vcpu` methods ask of its fd while the guest runs: running it, the register,
/// event and state access of the PVM fix-ups and the halt check, and a snapshot's reads.
pub fn vcpu_ioctls() -> Vec<u64> {
    [
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_SET_REGS(),
        KVM_GET_SREGS(),
        KVM_SET_SREGS(),
        KVM_GET_MSRS(),
        KVM_GET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_SET_VCPU_EVENTS(),
        KVM_GET_XSAVE(),
        KVM_SET_XSAVE(),
        // A paused vCPU's state for a snapshot, read by its own thread, and its TSC put back at
        // resume.
        KVM_SET_MSRS(),
        KVM_GET_LAPIC(),
        KVM_GET_DEBUGREGS(),
        KVM_GET_XCRS(),
        KVM_GET_TSC_KHZ(),
    ]
    .to_vec()
}

/// What the `Vm` methods that devices call while the guest runs ask of the VM fd: interrupt
/// lines, MSI routes, irqfds and ioeventfds (moved when the guest moves a BAR).
pub fn vm_interrupt_ioctls() -> Vec<u64> {
    vec![KVM_IRQ_LINE(), KVM_SET_GSI_ROUTING(), KVM_IRQFD(), KVM_IOEVENTFD()]
}

/// `map_readonly_memory` and `unmap_memory`: UEFI firmware's flash (`firmware::flash`) maps its
/// variable store into the guest in read-array mode and out of it while a command runs, from
/// the vCPU thread whose MMIO write switched the mode.
pub fn memory_region_ioctl() -> u64 {
    KVM_SET_USER_MEMORY_REGION()
}

/// What `Vm::save_state` asks of the VM fd (the control socket's `save`): the interrupt
/// controllers, the PIT and the KVM clock.
pub fn vm_state_ioctls() -> Vec<u64> {
    vec![KVM_GET_IRQCHIP(), KVM_GET_CLOCK(), KVM_GET_PIT2()]
}

/// `set_irq_line` alone: the main thread's power-button press.
pub fn irq_line_ioctl() -> u64 {
    KVM_IRQ_LINE()
}

/// `set_gsi_routing` alone: MSI-X routes are installed when a vector first fires, by whichever
/// thread raises it (a queue worker).
pub fn gsi_routing_ioctl() -> u64 {
    KVM_SET_GSI_ROUTING()
}
