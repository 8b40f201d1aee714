//! MADT: one enabled local APIC per vCPU, the IOAPIC, and the SCI's level-triggered override.

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{OEM_ID, OEM_REVISION};
use crate::layout;

/// The board also has dual 8259s (Linux masks them once it uses the IOAPIC).
const PCAT_COMPAT: u32 = 1;
/// Override flags: active high (bits 0-1 = 01), level triggered (bits 2-3 = 11), as the SCI is.
const ACTIVE_HIGH_LEVEL: u16 = 0x000d;

pub fn madt(ncpus: u8) -> Sdt {
    // Header, local APIC address, flags. acpi_tables' MADT type can set neither the flags nor an
    // Interrupt Source Override, hence the generic SDT.
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, *b"BVMADT  ", OEM_REVISION);
    t.write_u32(36, layout::LAPIC as u32);
    t.write_u32(40, PCAT_COMPAT);
    for id in 0..ncpus {
        append(&mut t, &ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // GSI n is IOAPIC pin n, so the IOAPIC takes the first APIC ID after the CPUs and GSI base 0.
    append(&mut t, &IoApic::new(ncpus, layout::IOAPIC as u32, 0));
    // ISA IRQs default to edge/active-high; the SCI is level-triggered.
    t.append_slice(&interrupt_source_override(layout::IRQ_SCI as u8, layout::IRQ_SCI, ACTIVE_HIGH_LEVEL));
    t
}

fn append(t: &mut Sdt, entry: &dyn Aml) {
    let mut bytes = Vec::new();
    entry.to_aml_bytes(&mut bytes);
    t.append_slice(&bytes);
}

/// MADT entry type 2: ISA `irq` arrives at `gsi` with `flags` polarity and trigger mode.
fn interrupt_source_override(irq: u8, gsi: u32, flags: u16) -> [u8; 10] {
    let mut e = [2, 10, 0 /* ISA bus */, irq, 0, 0, 0, 0, 0, 0];
    e[4..8].copy_from_slice(&gsi.to_le_bytes());
    e[8..].copy_from_slice(&flags.to_le_bytes());
    e
}
