//! A `Vm` for unit tests and the fuzz targets: records routes, irqfds and ioeventfds instead of
//! calling KVM.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use super::{CpuidEntry, Error, IrqRoute, Result, Vcpu, Vm, VmState};

#[derive(Default)]
pub struct FakeVm {
    pub routes: Mutex<Vec<IrqRoute>>,
    pub irqfds: Mutex<Vec<(u32, EventFd)>>,
    /// (GSI, trigger, resample) of each level-triggered irqfd.
    pub resample_irqfds: Mutex<Vec<(u32, EventFd, EventFd)>>,
    pub ioevents: Mutex<Vec<u64>>,
}

#[cfg(test)]
impl FakeVm {
    /// The `i`th level-triggered irqfd: (GSI, trigger, resample), as KVM would hold them.
    pub fn resample_irqfd(&self, i: usize) -> (u32, EventFd, EventFd) {
        let list = self.resample_irqfds.lock().unwrap();
        let (gsi, trigger, resample) = &list[i];
        (*gsi, trigger.try_clone().unwrap(), resample.try_clone().unwrap())
    }
}

impl Vm for FakeVm {
    unsafe fn map_memory(&self, _: u32, _: u64, _: u64, _: u64) -> Result<()> {
        Ok(())
    }
    unsafe fn map_readonly_memory(&self, _: u32, _: u64, _: u64, _: u64) -> Result<()> {
        Ok(())
    }
    fn unmap_memory(&self, _: u32) -> Result<()> {
        Ok(())
    }
    fn create_vcpu(&self, _: u8) -> Result<Box<dyn Vcpu>> {
        Err(Error { op: "fake".into(), errno: libc::ENOSYS })
    }
    fn set_irq_line(&self, _: u32, _: bool) -> Result<()> {
        Ok(())
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.irqfds.lock().unwrap().push((gsi, fd.try_clone().unwrap()));
        Ok(())
    }
    fn register_irqfd_with_resample(&self, fd: &EventFd, resample: &EventFd, gsi: u32) -> Result<()> {
        let entry = (gsi, fd.try_clone().unwrap(), resample.try_clone().unwrap());
        self.resample_irqfds.lock().unwrap().push(entry);
        Ok(())
    }
    fn set_gsi_routing(&self, routes: &[IrqRoute]) -> Result<()> {
        *self.routes.lock().unwrap() = routes.to_vec();
        Ok(())
    }
    fn register_ioevent(&self, _: &EventFd, addr: u64) -> Result<()> {
        self.ioevents.lock().unwrap().push(addr);
        Ok(())
    }
    fn unregister_ioevent(&self, _: &EventFd, addr: u64) -> Result<()> {
        self.ioevents.lock().unwrap().retain(|a| *a != addr);
        Ok(())
    }
    fn ignore_unknown_msrs(&self) -> Result<()> {
        Ok(())
    }
    fn set_apic_bus_cycle_ns(&self, _: u32) -> Result<()> {
        Ok(())
    }
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        Ok(Vec::new())
    }
    fn stats(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    fn save_state(&self) -> Result<VmState> {
        Err(Error { op: "fake".into(), errno: libc::ENOSYS })
    }
    fn restore_state(&self, _: &VmState) -> Result<()> {
        Ok(())
    }
}
