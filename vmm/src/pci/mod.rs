//! PCI bus 0 behind configuration mechanism #1, with bhyve's host bridges and LPC bridge, and
//! the virtio devices (`crate::virtio`). The VMM places every BAR in the 32-bit window
//! (`layout::PCI_MMIO_START..PCI_MMIO_END`); the guest may move them, and the bus then moves the
//! function's ranges on the MMIO [`Bus`].
//! Interrupts: MSI-X (`msix.rs`) or, while a driver leaves it off, INTx# on IOAPIC inputs
//! (`intx.rs`); the bus reports the INTx wiring for the MP table and the DSDT.

mod config_io;
pub mod header;
pub mod intx;
pub mod msix;
pub mod q35;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use vm_memory::GuestMemoryMmap;

pub use config_io::{PciConfigIo, PciState};

use crate::bus::{Bus, BusDevice};
use crate::config::{DeviceConfig, PciSlot};
use crate::layout::{PCI_MMIO_END, PCI_MMIO_START};
use header::{COMMAND_REG, INTERRUPT_REG};
use intx::IntxRoute;

/// An MMIO range a function decodes: (guest address, length, handler).
pub type MmioRange = (u64, u64, Arc<dyn BusDevice>);

/// A PCI function's configuration space, accessed by dword index `reg` (0..64).
pub trait PciDevice: Send {
    fn config_read(&self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` (0..4) of dword `reg`.
    fn config_write(&mut self, reg: usize, offset: u8, data: &[u8]);
    /// The MMIO ranges the function decodes now; asked after every write to the command register
    /// or a BAR.
    fn mmio_ranges(&mut self) -> Vec<MmioRange> {
        Vec::new()
    }
    /// What the guest made of the function (its configuration space, and the device behind it),
    /// for a snapshot; the device is paused.
    fn save_state(&mut self) -> Result<serde_json::Value, String>;
    /// Takes a saved state over before the guest runs again.
    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), String>;
}

/// One function's saved state.
#[derive(Serialize, Deserialize)]
pub struct FunctionState {
    pub slot: u8,
    pub func: u8,
    pub state: serde_json::Value,
}

/// Command register and BARs: writes there may move the function's MMIO ranges.
const BAR_REGS: std::ops::RangeInclusive<usize> = 4..=9;

/// What devices with BARs and interrupts need from the VM.
pub struct DeviceContext {
    pub mem: GuestMemoryMmap,
    pub routing: Arc<msix::GsiRouting>,
}

/// Hands out BAR addresses in the 32-bit window, each aligned to its size.
pub struct BarAllocator {
    next: u64,
}

impl Default for BarAllocator {
    fn default() -> Self {
        BarAllocator { next: PCI_MMIO_START }
    }
}

impl BarAllocator {
    pub fn allocate(&mut self, size: u64) -> Result<u32, String> {
        let at = self.next.next_multiple_of(size);
        if at + size > PCI_MMIO_END {
            return Err("PCI: the 32-bit MMIO window is full".into());
        }
        self.next = at + size;
        Ok(at as u32)
    }
}

/// Header type register (dword 3, byte 2): bit 7 says the slot has functions other than 0.
const HEADER_TYPE_REG: usize = 3;
const MULTI_FUNCTION: u32 = 0x80 << 16;

/// The functions of bus 0, by (slot, function).
#[derive(Default)]
pub struct PciBus {
    devices: BTreeMap<(u8, u8), Arc<Mutex<dyn PciDevice>>>,
    mmio: Option<Arc<Bus>>,
}

impl PciBus {
    pub fn add(&mut self, slot: u8, func: u8, dev: Arc<Mutex<dyn PciDevice>>) -> Result<(), String> {
        if slot >= 32 || func >= 8 {
            return Err(format!("PCI slot {slot}:{func} does not exist (slots 0-31, functions 0-7)"));
        }
        if self.devices.contains_key(&(slot, func)) {
            return Err(format!("PCI slot {slot}:{func} is already occupied"));
        }
        self.devices.insert((slot, func), dev);
        Ok(())
    }

    /// Absent functions read as all ones, which is how the guest finds the slot empty.
    fn read(&self, slot: u8, func: u8, reg: usize) -> u32 {
        let Some(dev) = self.devices.get(&(slot, func)) else { return u32::MAX };
        let value = dev.lock().unwrap().config_read(reg);
        // Guests scan functions 1-7 only when function 0 says the slot is multi-function.
        let others = func == 0 && self.devices.range((slot, 1)..=(slot, 7)).next().is_some();
        if reg == HEADER_TYPE_REG && others {
            value | MULTI_FUNCTION
        } else {
            value
        }
    }

    /// Where the functions' interrupt pins are wired, one entry per (slot, pin) in use, for the
    /// MP table and the DSDT.
    pub fn intx_routes(&self) -> Vec<IntxRoute> {
        let mut routes: Vec<IntxRoute> = Vec::new();
        for (&(slot, _), dev) in &self.devices {
            let pin = (dev.lock().unwrap().config_read(INTERRUPT_REG) >> 8) as u8;
            if (1..=4).contains(&pin) {
                let route = IntxRoute { slot, pin: pin - 1, gsi: intx::gsi(slot, pin - 1) };
                if !routes.contains(&route) {
                    routes.push(route);
                }
            }
        }
        routes
    }

    fn write(&self, slot: u8, func: u8, reg: usize, offset: u8, data: &[u8]) {
        if let Some(dev) = self.devices.get(&(slot, func)) {
            let mut dev = dev.lock().unwrap();
            dev.config_write(reg, offset, data);
            if reg == COMMAND_REG || BAR_REGS.contains(&reg) {
                self.map(slot, func, &mut *dev);
            }
        }
    }

    /// Puts the function's MMIO ranges where its BARs say.
    fn map(&self, slot: u8, func: u8, dev: &mut dyn PciDevice) {
        if let Some(mmio) = &self.mmio {
            mmio.set_owner_ranges(u32::from(slot) << 3 | u32::from(func), dev.mmio_ranges());
        }
    }

    pub fn save_state(&self) -> Result<Vec<FunctionState>, String> {
        let mut out = Vec::new();
        for (&(slot, func), dev) in &self.devices {
            let state = dev.lock().unwrap().save_state().map_err(|e| format!("PCI {slot}:{func}: {e}"))?;
            out.push(FunctionState { slot, func, state });
        }
        Ok(out)
    }

    /// Restores every function (the snapshot's list must be this bus's) and maps its BARs.
    pub fn restore_state(&self, saved: &[FunctionState]) -> Result<(), String> {
        let here: Vec<(u8, u8)> = self.devices.keys().copied().collect();
        let there: Vec<(u8, u8)> = saved.iter().map(|f| (f.slot, f.func)).collect();
        if here != there {
            return Err(format!("PCI functions {there:?} in the snapshot, {here:?} here"));
        }
        for f in saved {
            let mut dev = self.devices[&(f.slot, f.func)].lock().unwrap();
            dev.restore_state(&f.state).map_err(|e| format!("PCI {}:{}: {e}", f.slot, f.func))?;
            self.map(f.slot, f.func, &mut *dev);
        }
        Ok(())
    }
}

/// Which bridges `hostbridge` and `lpc` are.
pub enum Chipset {
    /// bhyve's, for kexec boots.
    Bhyve,
    /// Q35's, for UEFI firmware (`q35.rs`); the MCH's PCIEXBAR register goes to the cell.
    Q35(Arc<AtomicU64>),
}

/// Builds bus 0 from the `-s` options: the bridges of `chipset` here, every other function by
/// `make`. Functions that place BARs there need `mmio`.
pub fn build_bus(
    slots: &[PciSlot],
    chipset: &Chipset,
    mmio: Option<Arc<Bus>>,
    mut make: impl FnMut(&PciSlot) -> Result<Arc<Mutex<dyn PciDevice>>, String>,
) -> Result<PciConfigIo, String> {
    if slots.iter().filter(|s| s.device == DeviceConfig::Lpc).count() > 1 {
        return Err("only one LPC bridge is allowed".into());
    }
    let mut bus = PciBus { mmio, ..Default::default() };
    for s in slots {
        let dev: Arc<Mutex<dyn PciDevice>> = match (&s.device, chipset) {
            (DeviceConfig::HostBridge, Chipset::Q35(pciexbar)) => Arc::new(Mutex::new(q35::mch(pciexbar.clone()))),
            (DeviceConfig::Lpc, Chipset::Q35(_)) => Arc::new(Mutex::new(q35::lpc())),
            (DeviceConfig::HostBridge, _) => Arc::new(Mutex::new(header::host_bridge())),
            (DeviceConfig::AmdHostBridge, _) => Arc::new(Mutex::new(header::amd_host_bridge())),
            (DeviceConfig::Lpc, _) => Arc::new(Mutex::new(header::lpc())),
            _ => make(s).map_err(|e| format!("-s {},{}: {e}", s.slot, s.device.emulation()))?,
        };
        bus.add(s.slot, s.func, dev)?;
    }
    Ok(PciConfigIo::new(bus))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn slot(slot: u8, func: u8, emul: &str) -> PciSlot {
        PciSlot { slot, func, device: DeviceConfig::parse(emul, None).unwrap() }
    }

    /// Only bridges: no other function can be made without a VM.
    pub(super) fn bridges(slots: &[PciSlot]) -> Result<PciConfigIo, String> {
        build_bus(slots, &Chipset::Bhyve, None, |_| Err("needs a VM".into()))
    }

    #[test]
    fn duplicate_slot_is_an_error() {
        let err = bridges(&[slot(0, 0, "hostbridge"), slot(0, 0, "lpc")]).err().unwrap();
        assert!(err.contains("0:0 is already occupied"), "{err}");
        assert!(bridges(&[slot(1, 0, "lpc"), slot(2, 0, "lpc")]).is_err());
        assert!(bridges(&[slot(0, 0, "hostbridge"), slot(0, 1, "lpc")]).is_ok());
    }

    #[test]
    fn function_zero_announces_other_functions() {
        let mut bus = PciBus::default();
        bus.add(3, 0, Arc::new(Mutex::new(header::lpc()))).unwrap();
        assert_eq!(bus.read(3, 0, HEADER_TYPE_REG) & MULTI_FUNCTION, 0);
        bus.add(3, 2, Arc::new(Mutex::new(header::host_bridge()))).unwrap();
        assert_ne!(bus.read(3, 0, HEADER_TYPE_REG) & MULTI_FUNCTION, 0);
        assert!(bus.add(32, 0, Arc::new(Mutex::new(header::lpc()))).is_err());
    }

    #[test]
    fn intx_routes_follow_the_interrupt_pins() {
        let mut bus = PciBus::default();
        bus.add(0, 0, Arc::new(Mutex::new(header::host_bridge()))).unwrap();
        let with_pin = |pin| {
            let mut c = header::ConfigSpace::new(0x1af4, 0x1042, 1, 0);
            c.set_interrupt_pin(pin, 0);
            Arc::new(Mutex::new(c))
        };
        bus.add(2, 0, with_pin(intx::INTA)).unwrap();
        bus.add(9, 0, with_pin(intx::INTA)).unwrap();
        bus.add(9, 1, with_pin(intx::INTA)).unwrap(); // shares 9's INTA#: one route
        bus.add(9, 2, with_pin(1)).unwrap();
        assert_eq!(
            bus.intx_routes(),
            vec![
                IntxRoute { slot: 2, pin: 0, gsi: 18 },
                IntxRoute { slot: 9, pin: 0, gsi: 17 },
                IntxRoute { slot: 9, pin: 1, gsi: 18 },
            ]
        );
    }
}
