//! What KVM holds for a VM and its vCPUs, saved and restored for snapshots.
//!
//! The state is KVM's own structs (kvm-bindings serialises each as its raw bytes; KVM's ABI for
//! them is stable), so nothing is lost in a translation; only this backend restores it.
//! Restore order follows KVM's dependencies: CPUID before anything (set by the VM builder), the
//! LAPIC before the MSRs (a TSC-deadline write is dropped unless the LVT timer is in that mode),
//! the TSC first among the MSRs (the deadline is relative to it), events last.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::err;
use crate::hypervisor::{Error, Result};

const MSR_IA32_TSC: u32 = 0x10;

/// One vCPU as KVM holds it.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    mp_state: kvm_mp_state,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    /// None where the host has no XCRs to give (no XSAVE).
    xcrs: Option<kvm_xcrs>,
    debugregs: kvm_debugregs,
    lapic: kvm_lapic_state,
    /// Every MSR of KVM's save list that this vCPU could read, the TSC first.
    msrs: Vec<kvm_msr_entry>,
    events: kvm_vcpu_events,
    tsc_khz: Option<u32>,
}

// By hand: kvm-bindings gives kvm_xsave no Clone (it ends in a flexible array, empty here).
impl Clone for VcpuState {
    fn clone(&self) -> Self {
        VcpuState {
            xsave: kvm_xsave { region: self.xsave.region, ..Default::default() },
            msrs: self.msrs.clone(),
            ..*self
        }
    }
}

/// The in-kernel interrupt controllers, the PIT and the KVM clock.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pic_master: kvm_irqchip,
    pic_slave: kvm_irqchip,
    ioapic: kvm_irqchip,
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
}

/// The MSRs KVM says a VMM must save and restore (KVM_GET_MSR_INDEX_LIST), the TSC first.
pub fn msrs_to_save(kvm: &Kvm) -> Result<Vec<u32>> {
    let list = kvm.get_msr_index_list().map_err(err("KVM_GET_MSR_INDEX_LIST"))?;
    let mut v: Vec<u32> = list.as_slice().iter().copied().filter(|i| *i != MSR_IA32_TSC).collect();
    v.insert(0, MSR_IA32_TSC);
    Ok(v)
}

pub fn save_vcpu(fd: &VcpuFd, msr_list: &[u32]) -> Result<VcpuState> {
    Ok(VcpuState {
        mp_state: fd.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?,
        regs: fd.get_regs().map_err(err("KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(err("KVM_GET_SREGS"))?,
        xsave: fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?,
        xcrs: fd.get_xcrs().ok(),
        debugregs: fd.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?,
        lapic: fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?,
        msrs: read_msrs(fd, msr_list)?,
        events: fd.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?,
        tsc_khz: fd.get_tsc_khz().ok(),
    })
}

/// Reads the listed MSRs; KVM_GET_MSRS stops at the first one it cannot read, which is skipped
/// (the list names every MSR KVM knows, some of which this CPU model lacks).
fn read_msrs(fd: &VcpuFd, list: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> =
            batch.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| Error { op: "KVM_GET_MSRS".into(), errno: libc::E2BIG })?;
        let n = fd.get_msrs(&mut msrs).map_err(err("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        // Entry n (if any) was unreadable: go on after it.
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}

pub fn restore_vcpu(fd: &VcpuFd, s: &VcpuState) -> Result<()> {
    if let Some(khz) = s.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz).map_err(err("KVM_SET_TSC_KHZ (the saved guest TSC rate differs from this host's)"))?;
        }
    }
    fd.set_mp_state(s.mp_state).map_err(err("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(err("KVM_SET_REGS"))?;
    fd.set_sregs(&s.sregs).map_err(err("KVM_SET_SREGS"))?;
    // SAFETY: a kvm_xsave of the legacy 4 KiB size, as KVM_GET_XSAVE gave it.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(err("KVM_SET_XSAVE"))?;
    if let Some(xcrs) = &s.xcrs {
        fd.set_xcrs(xcrs).map_err(err("KVM_SET_XCRS"))?;
    }
    fd.set_debug_regs(&s.debugregs).map_err(err("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic).map_err(err("KVM_SET_LAPIC"))?;
    for chunk in s.msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| Error { op: "KVM_SET_MSRS".into(), errno: libc::E2BIG })?;
        let n = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if n < chunk.len() {
            let op = format!("KVM_SET_MSRS: MSR {:#x} refused", chunk[n].index);
            return Err(Error { op: op.into(), errno: libc::EINVAL });
        }
    }
    fd.set_vcpu_events(&s.events).map_err(err("KVM_SET_VCPU_EVENTS"))
}

pub fn save_vm(fd: &VmFd) -> Result<VmState> {
    let chip = |id: u32| -> Result<kvm_irqchip> {
        let mut c = kvm_irqchip { chip_id: id, ..Default::default() };
        fd.get_irqchip(&mut c).map_err(err("KVM_GET_IRQCHIP"))?;
        Ok(c)
    };
    Ok(VmState {
        pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
        pit: fd.get_pit2().map_err(err("KVM_GET_PIT2"))?,
        clock: fd.get_clock().map_err(err("KVM_GET_CLOCK"))?,
    })
}

pub fn restore_vm(fd: &VmFd, s: &VmState) -> Result<()> {
    for chip in [&s.pic_master, &s.pic_slave, &s.ioapic] {
        fd.set_irqchip(chip).map_err(err("KVM_SET_IRQCHIP"))?;
    }
    fd.set_pit2(&s.pit).map_err(err("KVM_SET_PIT2"))?;
    // The KVM clock continues from where it was saved (no KVM_CLOCK_REALTIME: a jump over the
    // time the VM was away would overflow a Linux 6.1 guest's clocksource arithmetic beyond a
    // few minutes); the guest's wall clock is set forward by the guest (see `snapshot`).
    let clock = kvm_clock_data { clock: s.clock.clock, ..Default::default() };
    fd.set_clock(&clock).map_err(err("KVM_SET_CLOCK"))
}
