//! PCI bus 0 behind configuration mechanism #1, with bhyve's host bridges and LPC bridge.

mod config_io;
mod header;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use config_io::PciConfigIo;

use crate::cli::PciSlot;

/// A PCI function's configuration space, accessed by dword index `reg` (0..64).
pub trait PciDevice: Send {
    fn config_read(&self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` (0..4) of dword `reg`.
    fn config_write(&mut self, reg: usize, offset: u8, data: &[u8]);
}

/// Header type register (dword 3, byte 2): bit 7 says the slot has functions other than 0.
const HEADER_TYPE_REG: usize = 3;
const MULTI_FUNCTION: u32 = 0x80 << 16;

/// The functions of bus 0, by (slot, function).
#[derive(Default)]
pub struct PciBus {
    devices: BTreeMap<(u8, u8), Arc<Mutex<dyn PciDevice>>>,
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

    fn write(&self, slot: u8, func: u8, reg: usize, offset: u8, data: &[u8]) {
        if let Some(dev) = self.devices.get(&(slot, func)) {
            dev.lock().unwrap().config_write(reg, offset, data);
        }
    }
}

/// Builds bus 0 from the `-s` options.
pub fn build_bus(slots: &[PciSlot]) -> Result<PciConfigIo, String> {
    if slots.iter().filter(|s| s.emul == "lpc").count() > 1 {
        return Err("only one LPC bridge is allowed".into());
    }
    let mut bus = PciBus::default();
    for s in slots {
        let dev = match s.emul.as_str() {
            "hostbridge" => header::host_bridge(),
            "amd_hostbridge" => header::amd_host_bridge(),
            "lpc" => header::lpc(),
            other => return Err(format!("PCI device '{other}' is not implemented")),
        };
        bus.add(s.slot, s.func, Arc::new(Mutex::new(dev)))?;
    }
    Ok(PciConfigIo::new(bus))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn slot(slot: u8, func: u8, emul: &str) -> PciSlot {
        PciSlot { slot, func, emul: emul.into(), conf: None }
    }

    #[test]
    fn duplicate_slot_is_an_error() {
        let err = build_bus(&[slot(0, 0, "hostbridge"), slot(0, 0, "lpc")]).err().unwrap();
        assert!(err.contains("0:0 is already occupied"), "{err}");
        assert!(build_bus(&[slot(1, 0, "lpc"), slot(2, 0, "lpc")]).is_err());
        assert!(build_bus(&[slot(0, 0, "hostbridge"), slot(0, 1, "lpc")]).is_ok());
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
}
