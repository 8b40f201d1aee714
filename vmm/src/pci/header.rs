//! Type-0 configuration header for simple functions, and the bridges bhyve puts on bus 0.

use super::PciDevice;

/// Command register bits the guest may set: I/O space, memory space, bus master.
const COMMAND_WRITABLE: u32 = 0x7;
/// Interrupt line (dword 15, byte 0): scratch for the OS, writable on every function.
const INTERRUPT_LINE_REG: usize = 15;
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST: u8 = 0x00;
const SUBCLASS_ISA: u8 = 0x01;

/// 256 bytes of configuration space; only the bits in `writable` take the guest's writes.
pub struct ConfigSpace {
    regs: [u32; 64],
    writable: [u32; 64],
}

impl ConfigSpace {
    /// A type-0 header with programming interface and revision 0.
    pub fn new(vendor: u16, device: u16, class: u8, subclass: u8) -> Self {
        let mut regs = [0; 64];
        regs[0] = u32::from(device) << 16 | u32::from(vendor);
        regs[2] = u32::from(class) << 24 | u32::from(subclass) << 16;
        let mut writable = [0; 64];
        writable[1] = COMMAND_WRITABLE;
        writable[INTERRUPT_LINE_REG] = 0xff;
        ConfigSpace { regs, writable }
    }
}

impl PciDevice for ConfigSpace {
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
        c.config_write(INTERRUPT_LINE_REG, 0, &[0x0b, 0x01]);
        assert_eq!(c.config_read(INTERRUPT_LINE_REG), 0x0b, "line writable, pin not");
    }
}
