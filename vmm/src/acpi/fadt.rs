//! FADT: a PC with ACPI fixed hardware (not hardware-reduced) whose registers `devices::acpi_pm`
//! implements, reset through the i8042.

use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};

use super::{OEM_ID, OEM_REVISION};
use crate::layout;

/// IAPC_BOOT_ARCH: ISA devices on an LPC bus, an 8042 (Linux skips probing it otherwise), and no
/// VGA (so Linux leaves the legacy VGA ranges alone).
const BOOT_ARCH: u16 = 1 | 1 << 1 | 1 << 2;
/// The CMOS register holding the century, read by Linux's RTC driver.
const CMOS_CENTURY: u8 = 0x32;
/// Writing this to the 8042 command port pulses the CPU reset line.
const I8042_RESET: u8 = 0xfe;

pub fn fadt(dsdt: u64, facs: u64) -> FADT {
    let mut f = FADTBuilder::new(OEM_ID, *b"BVFACP  ", OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        // The power button is the fixed-feature one (PWR_BUTTON clear); there is no sleep button.
        .flag(Flags::SlpButton)
        // The RTC has no wake status in PM1 (FIX_RTC).
        .flag(Flags::FixRtc)
        .flag(Flags::TmrValExt)
        .flag(Flags::ResetRegSup);
    // SMI_CMD stays 0: the platform is always in ACPI mode, SCI_EN reads as set.
    f.sci_int = (layout::IRQ_SCI as u16).into();
    f.pm1a_evt_blk = u32::from(layout::PORT_PM1A_EVT).into();
    f.pm1_evt_len = 4;
    f.pm1a_cnt_blk = u32::from(layout::PORT_PM1A_CNT).into();
    f.pm1_cnt_len = 2;
    f.pm_tmr_blk = u32::from(layout::PORT_PM_TMR).into();
    f.pm_tmr_len = 4;
    f.century = CMOS_CENTURY;
    f.iapc_boot_arch = BOOT_ARCH.into();
    let i8042_command = u64::from(layout::PORT_I8042 + 4);
    f.reset_reg = GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, i8042_command);
    f.reset_value = I8042_RESET;
    f.finalize()
}
