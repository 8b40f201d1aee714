//! Type-0 configuration header for simple functions, and the bridges bhyve puts on bus 0.

use super::PciDevice;

/// Command register bits the guest may set: I/O space, memory space, bus master.
const COMMAND_WRITABLE: u32 = 0x7;
/// Dword 1: the command register, and the status register in its high half.
pub const COMMAND_REG: usize = 1;
/// Command register bit 10, writable on functions with an interrupt pin: INTx# must stay quiet.
pub const COMMAND_INTX_DISABLE: u32 = 1 << 10;
/// Status register bit 3 (dword 1, bit 19): the function is asserting INTx#.
pub const STATUS_INTX: u32 = 1 << 19;
/// Interrupt line (dword 15, byte 0): scratch for the OS, writable on every function; the
/// interrupt pin (byte 1): 0 none, 1 INTA# .. 4 INTD#.
pub const INTERRUPT_REG: usize = 15;
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST: u8 = 0x00;
const SUBCLASS_ISA: u8 = 0x01;

/// Status register bit (dword 1, bit 20): a capability list starts at 0x34.
const STATUS_CAP_LIST: u32 = 1 << 20;
const CAP_POINTER_REG: usize = 13;
/// First byte of the capability area (after the type-0 header).
const CAPS_START: usize = 0x40;
/// Command register bit 1: the function decodes its memory BARs.
pub const COMMAND_MEMORY: u32 = 0x2;
pub const BAR0_REG: usize = 4;

/// 256 bytes of configuration space; only the bits in `writable` take the guest's writes.
pub struct ConfigSpace {
    regs: [u32; 64],
    writable: [u32; 64],
    /// Where the next capability goes, and the last one's offset (to chain the next one).
    next_cap: usize,
    last_cap: usize,
}

impl ConfigSpace {
    /// A type-0 header with programming interface and revision 0.
    pub fn new(vendor: u16, device: u16, class: u8, subclass: u8) -> Self {
        let mut regs = [0; 64];
        regs[0] = u32::from(device) << 16 | u32::from(vendor);
        regs[2] = u32::from(class) << 24 | u32::from(subclass) << 16;
        let mut writable = [0; 64];
        writable[COMMAND_REG] = COMMAND_WRITABLE;
        writable[INTERRUPT_REG] = 0xff;
        ConfigSpace { regs, writable, next_cap: CAPS_START, last_cap: 0 }
    }

    pub fn set_revision(&mut self, revision: u8) {
        self.regs[2] = (self.regs[2] & !0xff) | u32::from(revision);
    }

    pub fn set_subsystem(&mut self, vendor: u16, device: u16) {
        self.regs[11] = u32::from(device) << 16 | u32::from(vendor);
    }

    /// Gives the function interrupt pin `pin` (0 = INTA#), with `line` in the interrupt line
    /// register as firmware would leave it (the IOAPIC input), and the command register's
    /// INTx-disable bit.
    pub fn set_interrupt_pin(&mut self, pin: u8, line: u8) {
        self.regs[INTERRUPT_REG] = u32::from(pin + 1) << 8 | u32::from(line);
        self.writable[COMMAND_REG] |= COMMAND_INTX_DISABLE;
    }

    /// The command register's value.
    pub fn command(&self) -> u32 {
        self.regs[COMMAND_REG] & 0xffff
    }

    /// A 32-bit non-prefetchable memory BAR of `size` bytes (a power of two, at least 16) placed
    /// at `addr` (aligned to `size`). Writing all ones reads back `!(size - 1)`: the sizing protocol.
    pub fn add_mem32_bar(&mut self, bar: usize, addr: u32, size: u32) {
        assert!(bar < 6 && size.is_power_of_two() && size >= 16 && addr.is_multiple_of(size));
        self.regs[BAR0_REG + bar] = addr;
        self.writable[BAR0_REG + bar] = !(size - 1);
    }

    /// The address a memory BAR decodes now, if the command register enables memory decoding.
    pub fn mem_bar(&self, bar: usize) -> Option<u64> {
        let size_mask = self.writable.get(BAR0_REG + bar).copied().filter(|w| *w != 0)?;
        (self.regs[COMMAND_REG] & COMMAND_MEMORY != 0).then(|| u64::from(self.regs[BAR0_REG + bar] & size_mask))
    }

    /// Appends a capability: `body` starts with the capability ID; its next pointer (byte 1) is
    /// filled in. `writable` gives per-byte masks (may be shorter than `body`). Returns its offset.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> usize {
        let at = self.next_cap;
        assert!(body.len() >= 2 && at + body.len() <= 256);
        for (i, &b) in body.iter().enumerate() {
            self.set_byte(at + i, if i == 1 { 0 } else { b });
        }
        for (i, &w) in writable.iter().enumerate() {
            let (reg, shift) = ((at + i) / 4, (at + i) % 4 * 8);
            self.writable[reg] = (self.writable[reg] & !(0xff << shift)) | u32::from(w) << shift;
        }
        if self.last_cap == 0 {
            self.regs[CAP_POINTER_REG] = at as u32;
            self.regs[COMMAND_REG] |= STATUS_CAP_LIST;
        } else {
            self.set_byte(self.last_cap + 1, at as u8);
        }
        self.last_cap = at;
        self.next_cap = (at + body.len() + 3) & !3;
        at
    }

    fn set_byte(&mut self, at: usize, value: u8) {
        let (reg, shift) = (at / 4, at % 4 * 8);
        self.regs[reg] = (self.regs[reg] & !(0xff << shift)) | u32::from(value) << shift;
    }

    pub fn byte(&self, at: usize) -> u8 {
        (self.regs[at / 4] >> (at % 4 * 8)) as u8
    }

    pub fn word(&self, at: usize) -> u16 {
        u16::from(self.byte(at)) | u16::from(self.byte(at + 1)) << 8
    }

    /// The registers, for a snapshot.
    pub fn save(&self) -> Vec<u32> {
        self.regs.to_vec()
    }

    /// Takes saved registers back as the guest wrote them: only writable bits change, so a
    /// snapshot cannot alter what the function is (IDs, class, capabilities).
    pub fn restore(&mut self, saved: &[u32]) -> Result<(), String> {
        if saved.len() != self.regs.len() {
            return Err(format!("PCI configuration space of {} dwords, expected {}", saved.len(), self.regs.len()));
        }
        for ((r, w), s) in self.regs.iter_mut().zip(&self.writable).zip(saved) {
            *r = (*r & !w) | (s & w);
        }
        Ok(())
    }
}

impl PciDevice for ConfigSpace {
    fn save_state(&mut self) -> Result<serde_json::Value, String> {
        serde_json::to_value(self.save()).map_err(|e| e.to_string())
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let regs: Vec<u32> = serde_json::from_value(state.clone()).map_err(|e| e.to_string())?;
        self.restore(&regs)
    }

    fn config_read(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0)
    }

    fn config_write(&mut self, reg: usize, offset: u8, data: &[u8]) {
        let (Some(value), Some(&writable)) = (self.regs.get_mut(reg), self.writable.get(reg)) else { return };
        for (i, &b) in data.iter().enumerate() {
            let shift = (usize::from(offset) + i) * 8;
            if shift < 32 {
                let mask = writable & (0xff << shift);
                *value = (*value & !mask) | (u32::from(b) << shift & mask);
            }
        }
    }
}

/// bhyve's "hostbridge".
pub fn host_bridge() -> ConfigSpace {
    ConfigSpace::new(0x1275, 0x1275, CLASS_BRIDGE, SUBCLASS_HOST)
}

/// bhyve's "amd_hostbridge": an AMD vendor ID for guests that key AMD-specific code off it.
pub fn amd_host_bridge() -> ConfigSpace {
    ConfigSpace::new(0x1022, 0x7432, CLASS_BRIDGE, SUBCLASS_HOST)
}

/// bhyve's "lpc": a PIIX3 PCI-to-ISA bridge, behind which the legacy devices (COM ports, RTC,
/// i8042, ACPI PM) notionally sit.
pub fn lpc() -> ConfigSpace {
    ConfigSpace::new(0x8086, 0x7000, CLASS_BRIDGE, SUBCLASS_ISA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_fields_stay_read_only() {
        let mut c = lpc();
        for reg in [0, 2, 3] {
            let before = c.config_read(reg);
            c.config_write(reg, 0, &[0x55; 4]);
            c.config_write(reg, 2, &[0xaa, 0xaa]);
            assert_eq!(c.config_read(reg), before, "dword {reg}");
        }
        c.config_write(1, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(c.config_read(1), COMMAND_WRITABLE, "status and reserved command bits");
        c.config_write(INTERRUPT_REG, 0, &[0x0b, 0x01]);
        assert_eq!(c.config_read(INTERRUPT_REG), 0x0b, "line writable, pin not");
    }

    #[test]
    fn interrupt_pin_line_and_intx_disable() {
        let mut c = ConfigSpace::new(0x1af4, 0x1042, 1, 0);
        c.config_write(1, 0, &[0xff, 0xff]);
        assert_eq!(c.command() & COMMAND_INTX_DISABLE, 0, "no pin: no INTx-disable bit");
        c.set_interrupt_pin(0, 18);
        assert_eq!(c.config_read(INTERRUPT_REG), 0x0112, "INTA#, line 18");
        c.config_write(INTERRUPT_REG, 0, &[0x0b, 0x04]);
        assert_eq!(c.config_read(INTERRUPT_REG), 0x010b, "line writable, pin not");
        c.config_write(1, 0, &[0x07, 0x04]);
        assert_eq!(c.command(), 0x407);
        c.config_write(1, 1, &[0]);
        assert_eq!(c.command(), 0x007);
    }

    #[test]
    fn bar_sizing_and_decode() {
        let mut c = ConfigSpace::new(0x1af4, 0x1042, 1, 0);
        c.add_mem32_bar(0, 0xc000_8000, 0x8000);
        assert_eq!(c.mem_bar(0), None, "memory decoding off");
        c.config_write(1, 0, &[0x02, 0]);
        assert_eq!(c.mem_bar(0), Some(0xc000_8000));
        c.config_write(BAR0_REG, 0, &[0xff; 4]);
        assert_eq!(c.config_read(BAR0_REG), 0xffff_8000, "size 32 KiB, 32-bit memory");
        c.config_write(BAR0_REG, 0, &0xd000_0000u32.to_le_bytes());
        assert_eq!(c.mem_bar(0), Some(0xd000_0000));
        assert_eq!(c.mem_bar(1), None, "unimplemented BAR");
        c.config_write(BAR0_REG + 1, 0, &[0xff; 4]);
        assert_eq!(c.config_read(BAR0_REG + 1), 0, "unimplemented BAR reads 0 after sizing");
    }

    #[test]
    fn restore_takes_only_what_the_guest_could_write() {
        let mut c = ConfigSpace::new(0x1af4, 0x1042, 1, 0);
        c.add_mem32_bar(0, 0xc000_8000, 0x8000);
        c.config_write(1, 0, &[0x06, 0]);
        c.config_write(BAR0_REG, 0, &0xd000_0000u32.to_le_bytes());
        let mut saved = c.save();
        saved[0] = 0xdead_beef; // the IDs are not the guest's to change
        let mut fresh = ConfigSpace::new(0x1af4, 0x1042, 1, 0);
        fresh.add_mem32_bar(0, 0xc000_8000, 0x8000);
        fresh.restore(&saved).unwrap();
        assert_eq!(fresh.mem_bar(0), Some(0xd000_0000));
        assert_eq!(fresh.command(), 0x06);
        assert_eq!(fresh.config_read(0), 0x1042_1af4);
        assert!(fresh.restore(&saved[..10]).is_err());
    }

    #[test]
    fn capability_chain() {
        let mut c = ConfigSpace::new(0x1af4, 0x1042, 1, 0);
        let a = c.add_capability(&[0x11, 0xee, 0x03, 0x00, 1, 2, 3, 4, 5, 6, 7, 8], &[0, 0, 0, 0xc0]);
        let b = c.add_capability(&[0x09, 0, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x38, 0, 0, 0], &[]);
        assert_eq!((a, b), (0x40, 0x4c));
        assert_ne!(c.config_read(1) & STATUS_CAP_LIST, 0);
        assert_eq!(c.byte(0x34), 0x40);
        assert_eq!(c.byte(a + 1), b as u8);
        assert_eq!(c.byte(b + 1), 0);
        c.config_write(a / 4, 2, &[0xff, 0xff]);
        assert_eq!(c.word(a + 2), 0xc003, "only enable and function mask are writable");
    }
}
