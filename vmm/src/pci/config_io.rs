//! Configuration mechanism #1: an address register at 0xcf8 and a data window at 0xcfc-0xcff.

use serde::{Deserialize, Serialize};

use super::intx::IntxRoute;
use super::{FunctionState, PciBus};
use crate::bus::PioDevice;

/// Address register: enable, bus (23:16), device (15:11), function (10:8), register (7:2). Other
/// bits read as zero.
const ENABLE: u32 = 1 << 31;
const ADDRESS_BITS: u32 = ENABLE | 0x00ff_fffc;
/// Port offset of the data window.
const DATA: u16 = 4;

/// The bus in a snapshot: the address register (a vCPU may stop between writing it and using
/// the data window) and every function.
#[derive(Serialize, Deserialize)]
pub struct PciState {
    address: u32,
    functions: Vec<FunctionState>,
}

pub struct PciConfigIo {
    bus: PciBus,
    address: u32,
}

impl PciConfigIo {
    pub fn new(bus: PciBus) -> Self {
        PciConfigIo { bus, address: 0 }
    }

    pub fn intx_routes(&self) -> Vec<IntxRoute> {
        self.bus.intx_routes()
    }

    pub fn save_state(&self) -> Result<PciState, String> {
        Ok(PciState { address: self.address, functions: self.bus.save_state()? })
    }

    pub fn restore_state(&mut self, s: &PciState) -> Result<(), String> {
        self.address = s.address & ADDRESS_BITS;
        self.bus.restore_state(&s.functions)
    }

    /// Dword `reg` of a function's configuration space (the MMCONFIG window's way in).
    pub fn read_config(&self, slot: u8, func: u8, reg: usize) -> u32 {
        self.bus.read(slot, func, reg)
    }

    /// Writes `data` at byte `offset` of dword `reg` of a function's configuration space.
    pub fn write_config(&self, slot: u8, func: u8, reg: usize, offset: u8, data: &[u8]) {
        self.bus.write(slot, func, reg, offset, data)
    }

    /// (slot, function, dword) the address register selects, if enabled and on bus 0.
    fn target(&self) -> Option<(u8, u8, usize)> {
        let a = self.address;
        (a & ENABLE != 0 && (a >> 16) & 0xff == 0).then_some((
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 7) as u8,
            ((a >> 2) & 0x3f) as usize,
        ))
    }
}

/// Byte offset of a data-window access within the dword, if it does not spill past it.
fn window(offset: u16, len: usize) -> Option<u8> {
    let at = offset.checked_sub(DATA)?;
    (usize::from(at) + len <= 4).then_some(at as u8)
}

impl PioDevice for PciConfigIo {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let (value, at) = if offset < DATA {
            (self.address, offset as usize)
        } else {
            let Some(at) = window(offset, data.len()) else { return data.fill(0xff) };
            let value = self.target().map_or(u32::MAX, |(slot, func, reg)| self.bus.read(slot, func, reg));
            (value, usize::from(at))
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(at + i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset < DATA {
            // Only dword writes latch an address; byte writes to 0xcf8-0xcfb belong to other
            // chipset registers we do not have.
            if let (0, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
                self.address = u32::from_le_bytes(bytes) & ADDRESS_BITS;
            }
        } else if let (Some(at), Some((slot, func, reg))) = (window(offset, data.len()), self.target()) {
            self.bus.write(slot, func, reg, at, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bridges, slot};
    use super::*;

    fn select(io: &mut PciConfigIo, dev: u32, func: u32, reg: u32) {
        io.write(0, &(ENABLE | dev << 11 | func << 8 | reg).to_le_bytes());
    }

    fn read(io: &mut PciConfigIo, offset: u16, len: usize) -> u32 {
        let mut b = [0u8; 4];
        io.read(DATA + offset, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn bus() -> PciConfigIo {
        bridges(&[slot(0, 0, "hostbridge"), slot(31, 0, "lpc")]).unwrap()
    }

    #[test]
    fn enumerates_through_cf8_cfc() {
        let mut io = bus();
        select(&mut io, 0, 0, 0);
        assert_eq!(read(&mut io, 0, 4), 0x1275_1275);
        select(&mut io, 0, 0, 8);
        assert_eq!(read(&mut io, 0, 4) >> 8, 0x06_00_00, "host bridge class");
        select(&mut io, 31, 0, 0);
        assert_eq!(read(&mut io, 0, 4), 0x7000_8086);
        assert_eq!(read(&mut io, 2, 2), 0x7000, "word at offset 2: device ID");
        assert_eq!(read(&mut io, 1, 1), 0x80, "byte at offset 1");
        select(&mut io, 31, 0, 8);
        assert_eq!(read(&mut io, 2, 2), 0x0601, "word at 0xa: class and subclass");
        assert_eq!(read(&mut io, 3, 1), 0x06);
        select(&mut io, 5, 0, 0);
        assert_eq!(read(&mut io, 0, 4), u32::MAX, "empty slot");
        select(&mut io, 0, 1, 0);
        assert_eq!(read(&mut io, 0, 2), 0xffff, "empty function");
    }

    #[test]
    fn address_register() {
        let mut io = bus();
        // Linux's type-1 probe: the enable bit must read back.
        select(&mut io, 0, 0, 0);
        let mut b = [0u8; 4];
        io.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), ENABLE);
        // Disabled, or another bus: nothing answers.
        io.write(0, &0u32.to_le_bytes());
        assert_eq!(read(&mut io, 0, 4), u32::MAX);
        io.write(0, &(ENABLE | 1 << 16).to_le_bytes());
        assert_eq!(read(&mut io, 0, 4), u32::MAX);
        // A byte write to 0xcfb leaves the address alone; a spilling access reads all ones.
        select(&mut io, 0, 0, 0);
        io.write(3, &[0x01]);
        assert_eq!(read(&mut io, 2, 2), 0x1275);
        assert_eq!(read(&mut io, 3, 2), 0xffff);
    }

    #[test]
    fn command_register_through_the_window() {
        let mut io = bus();
        select(&mut io, 31, 0, 4);
        io.write(DATA, &[0x07, 0x00]);
        assert_eq!(read(&mut io, 0, 2), 0x7);
        io.write(DATA + 2, &[0xff, 0xff]);
        assert_eq!(read(&mut io, 2, 2), 0, "status is read-only");
    }
}
