//! The Q35 chipset identity OVMF's platform code checks (PlatformInitLib): the MCH host bridge
//! at 0:0.0, whose PCIEXBAR register enables the MMCONFIG window OVMF then uses for every PCI
//! configuration access, and the ICH9 LPC bridge at 0:1f.0, whose PMBASE and ACPI_CNTL registers
//! OVMF programs to find the ACPI PM timer (at PMBASE + 8; OVMF puts PMBASE at 0x600, where
//! `devices::acpi_pm` sits).
//!
//! Both are type-0 headers whose device-specific registers (0x40-0xff) read back what was
//! written, as far as OVMF and Linux look at them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::header::ConfigSpace;
use super::{PciConfigIo, PciDevice};
use crate::bus::BusDevice;
use crate::layout::{PCIE_ECAM, PCIE_ECAM_SIZE};

const VENDOR_INTEL: u16 = 0x8086;
const DEVICE_Q35_MCH: u16 = 0x29c0;
const DEVICE_ICH9_LPC: u16 = 0x2918;
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST: u8 = 0x00;
const SUBCLASS_ISA: u8 = 0x01;

/// First dword after the type-0 header.
const DEVICE_REGS: usize = 0x40 / 4;
/// MCH PCIEXBAR (0x60 low, 0x64 high): enable bit 0, size in bits 2:1 (0 = 256 buses).
const PCIEXBAR_LOW: usize = 0x60 / 4;
const PCIEXBAR_HIGH: usize = 0x64 / 4;
const PCIEXBAR_EN: u64 = 1;
const PCIEXBAR_LENGTH: u64 = 0b110;
const PCIEXBAR_BASE_MASK: u64 = 0xf_f000_0000;
/// ICH9 PMBASE (0x40): bit 0 is hardwired to 1 (an I/O address).
const PMBASE: usize = 0x40 / 4;

/// A chipset function: a fixed header and read/write device-specific registers.
pub struct ChipsetFunction {
    header: ConfigSpace,
    regs: [u32; 64 - DEVICE_REGS],
    /// The MCH's PCIEXBAR as last written, for the MMCONFIG window.
    pciexbar: Option<Arc<AtomicU64>>,
    /// A register and the bits that always read as 1 in it.
    hardwired: (usize, u32),
}

impl PciDevice for ChipsetFunction {
    fn config_read(&self, reg: usize) -> u32 {
        match reg.checked_sub(DEVICE_REGS) {
            None => self.header.config_read(reg),
            Some(i) => self.regs.get(i).copied().unwrap_or(0),
        }
    }

    fn config_write(&mut self, reg: usize, offset: u8, data: &[u8]) {
        let Some(i) = reg.checked_sub(DEVICE_REGS) else {
            return self.header.config_write(reg, offset, data);
        };
        let Some(value) = self.regs.get_mut(i) else { return };
        for (n, &b) in data.iter().enumerate() {
            let shift = (usize::from(offset) + n) * 8;
            if shift < 32 {
                *value = (*value & !(0xff << shift)) | u32::from(b) << shift;
            }
        }
        self.settle();
    }

    fn save_state(&mut self) -> Result<serde_json::Value, String> {
        let saved = ChipsetState { header: self.header.save(), regs: self.regs.to_vec() };
        serde_json::to_value(saved).map_err(|e| e.to_string())
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let saved: ChipsetState = serde_json::from_value(state.clone()).map_err(|e| e.to_string())?;
        self.header.restore(&saved.header)?;
        let n = saved.regs.len();
        self.regs =
            saved.regs.try_into().map_err(|_| format!("{n} device registers, expected {}", 64 - DEVICE_REGS))?;
        self.settle();
        Ok(())
    }
}

/// A chipset function in a snapshot: its header and device-specific registers.
#[derive(Serialize, Deserialize)]
struct ChipsetState {
    header: Vec<u32>,
    regs: Vec<u32>,
}

impl ChipsetFunction {
    /// After the registers change: the hard-wired bits, and PCIEXBAR for the MMCONFIG window.
    fn settle(&mut self) {
        let (r, ones) = self.hardwired;
        self.regs[r - DEVICE_REGS] |= ones;
        if let Some(bar) = &self.pciexbar {
            let low = u64::from(self.regs[PCIEXBAR_LOW - DEVICE_REGS]);
            let high = u64::from(self.regs[PCIEXBAR_HIGH - DEVICE_REGS]);
            bar.store(high << 32 | low, Ordering::Release);
        }
    }
}

/// The Q35 MCH; `pciexbar` follows its PCIEXBAR register.
pub fn mch(pciexbar: Arc<AtomicU64>) -> ChipsetFunction {
    let header = ConfigSpace::new(VENDOR_INTEL, DEVICE_Q35_MCH, CLASS_BRIDGE, SUBCLASS_HOST);
    ChipsetFunction { header, regs: [0; 64 - DEVICE_REGS], pciexbar: Some(pciexbar), hardwired: (DEVICE_REGS, 0) }
}

/// The ICH9 LPC bridge (PMBASE reads 1 until programmed).
pub fn lpc() -> ChipsetFunction {
    let header = ConfigSpace::new(VENDOR_INTEL, DEVICE_ICH9_LPC, CLASS_BRIDGE, SUBCLASS_ISA);
    let mut regs = [0; 64 - DEVICE_REGS];
    regs[PMBASE - DEVICE_REGS] = 1;
    ChipsetFunction { header, regs, pciexbar: None, hardwired: (PMBASE, 1) }
}

/// The MMCONFIG (ECAM) window for bus 0 at `layout::PCIE_ECAM`, decoded while the MCH's
/// PCIEXBAR enables it there; accesses go to the same functions as port 0xcf8/0xcfc.
pub struct Ecam {
    pciexbar: Arc<AtomicU64>,
    config_io: Arc<Mutex<PciConfigIo>>,
}

impl Ecam {
    pub fn new(pciexbar: Arc<AtomicU64>, config_io: Arc<Mutex<PciConfigIo>>) -> Self {
        Ecam { pciexbar, config_io }
    }

    pub fn range() -> (u64, u64) {
        (PCIE_ECAM, PCIE_ECAM_SIZE)
    }

    fn enabled(&self) -> bool {
        let bar = self.pciexbar.load(Ordering::Acquire);
        bar & PCIEXBAR_EN != 0 && bar & PCIEXBAR_LENGTH == 0 && bar & PCIEXBAR_BASE_MASK == PCIE_ECAM
    }

    /// (slot, function, dword, byte in the dword) of an access to bus 0's standard configuration
    /// space that stays within a dword; None otherwise.
    fn target(&self, offset: u64, len: usize) -> Option<(u8, u8, usize, u8)> {
        let (bus, devfn, reg) = (offset >> 20, (offset >> 12) & 0xff, offset & 0xfff);
        if !self.enabled() || bus != 0 || reg >= 0x100 || (reg & 3) as usize + len > 4 {
            return None;
        }
        Some(((devfn >> 3) as u8, (devfn & 7) as u8, (reg >> 2) as usize, (reg & 3) as u8))
    }
}

impl BusDevice for Ecam {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if data.len() == 8 {
            let (lo, hi) = data.split_at_mut(4);
            self.read(offset, lo);
            return self.read(offset + 4, hi);
        }
        let io = self.config_io.lock().unwrap();
        match self.target(offset, data.len()) {
            Some((slot, func, reg, at)) => {
                let bytes = io.read_config(slot, func, reg).to_le_bytes();
                data.copy_from_slice(&bytes[usize::from(at)..usize::from(at) + data.len()]);
            }
            None => {
                // Extended configuration space of a function reads 0 (no capabilities); the rest
                // floats high like an absent function.
                let present =
                    self.target(offset & !0xfff, 4).is_some_and(|(s, f, _, _)| io.read_config(s, f, 0) != u32::MAX);
                data.fill(if offset & 0xfff >= 0x100 && present { 0 } else { 0xff });
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if data.len() == 8 {
            self.write(offset, &data[..4]);
            return self.write(offset + 4, &data[4..]);
        }
        if let Some((slot, func, reg, at)) = self.target(offset, data.len()) {
            self.config_io.lock().unwrap().write_config(slot, func, reg, at, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::slot;
    use super::super::{build_bus, Chipset};
    use super::*;
    use crate::bus::PioDevice;

    fn bus_with_ecam() -> (Arc<Mutex<PciConfigIo>>, Ecam) {
        let bar = Arc::new(AtomicU64::new(0));
        let slots = [slot(0, 0, "hostbridge"), slot(31, 0, "lpc")];
        let io = build_bus(&slots, &Chipset::Q35(bar.clone()), None, |_| Err("needs a VM".into())).unwrap();
        let io = Arc::new(Mutex::new(io));
        (io.clone(), Ecam::new(bar, io))
    }

    fn read32(e: &Ecam, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        e.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identities_pciexbar_and_pmbase() {
        let (io, ecam) = bus_with_ecam();
        let cf8 = |dev: u32, reg: u32, value: Option<u32>| {
            let mut io = io.lock().unwrap();
            io.write(0, &(0x8000_0000 | dev << 11 | reg).to_le_bytes());
            if let Some(v) = value {
                io.write(4, &v.to_le_bytes());
            }
            let mut b = [0u8; 4];
            io.read(4, &mut b);
            u32::from_le_bytes(b)
        };
        assert_eq!(cf8(0, 0, None), 0x29c0_8086);
        assert_eq!(cf8(31, 0, None), 0x2918_8086);
        assert_eq!(read32(&ecam, 0), u32::MAX, "MMCONFIG off until PCIEXBAR enables it");
        // OVMF's PciExBarInitialization: high dword, then base | 256 buses | enable.
        cf8(0, 0x64, Some(0));
        cf8(0, 0x60, Some(PCIE_ECAM as u32 | 1));
        assert_eq!(read32(&ecam, 0), 0x29c0_8086);
        assert_eq!(read32(&ecam, 31 << 15), 0x2918_8086);
        assert_eq!(read32(&ecam, 5 << 15), u32::MAX, "empty slot");
        assert_eq!(read32(&ecam, 0x100), 0, "no extended capabilities");
        assert_eq!(read32(&ecam, 1 << 20), u32::MAX, "bus 1");
        // PMBASE and ACPI_CNTL through MMCONFIG, as OVMF programs them.
        assert_eq!(read32(&ecam, 31 << 15 | 0x40), 1);
        ecam.write(31 << 15 | 0x40, &0x600u32.to_le_bytes());
        ecam.write(31 << 15 | 0x44, &[0x80]);
        assert_eq!(cf8(31, 0x40, None), 0x601);
        assert_eq!(read32(&ecam, 31 << 15 | 0x44) & 0xff, 0x80);
        let mut w = [0u8; 2];
        ecam.read(31 << 15 | 2, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x2918);
        // The guest's own 0xcf8 address survives MMCONFIG accesses.
        cf8(31, 0x08, None);
        read32(&ecam, 0);
        let mut b = [0u8; 4];
        io.lock().unwrap().read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000 | 31 << 11 | 0x08);
    }

    #[test]
    fn saved_registers_come_back_with_the_mmconfig_window() {
        let (io, _) = bus_with_ecam();
        let cf8 = |io: &Arc<Mutex<PciConfigIo>>, dev: u32, reg: u32, value: u32| {
            let mut io = io.lock().unwrap();
            io.write(0, &(0x8000_0000 | dev << 11 | reg).to_le_bytes());
            io.write(4, &value.to_le_bytes());
        };
        cf8(&io, 0, 0x60, PCIE_ECAM as u32 | 1);
        cf8(&io, 31, 0x40, 0x600);
        let saved = io.lock().unwrap().save_state().unwrap();
        let (io2, ecam2) = bus_with_ecam();
        assert_eq!(read32(&ecam2, 0), u32::MAX);
        io2.lock().unwrap().restore_state(&saved).unwrap();
        assert_eq!(read32(&ecam2, 0), 0x29c0_8086, "PCIEXBAR restored: MMCONFIG on");
        assert_eq!(read32(&ecam2, 31 << 15 | 0x40), 0x601, "PMBASE restored, bit 0 still set");
    }
}
