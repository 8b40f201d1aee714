//! Intel MultiProcessor Specification 1.4 table: how a kernel without ACPI finds the vCPUs,
//! the IOAPIC and the ISA interrupt wiring. Placed in the EBDA, where kernels scan for `_MP_`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{EBDA, IOAPIC, LAPIC};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_IRQS: u8 = 16;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_sub(*b))
}

/// The table's bytes for `ncpus` vCPUs (APIC IDs 0..ncpus), IOAPIC ID `ncpus`.
pub fn build(ncpus: u8) -> Vec<u8> {
    let ioapic_id = ncpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..ncpus {
        let flags = 1 | if id == 0 { 2 } else { 0 }; // enabled, bootstrap processor
        entries.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // CPU signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC as u32).to_le_bytes());
    count += 1;
    // ISA IRQ n is IOAPIC pin n (KVM's default routing); conforming polarity and trigger.
    for irq in 0..ISA_IRQS {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0: ExtINT from the PIC; LINT1: NMI, on every local APIC.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let config_len = 44 + entries.len();
    let mut config = Vec::with_capacity(config_len);
    config.extend_from_slice(b"PCMP");
    config.extend_from_slice(&(config_len as u16).to_le_bytes());
    config.push(4); // spec revision 1.4
    config.push(0); // checksum, below
    config.extend_from_slice(b"XHYVE   ");
    config.extend_from_slice(b"XHYVE-RS    ");
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&count.to_le_bytes());
    config.extend_from_slice(&(LAPIC as u32).to_le_bytes());
    config.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&((EBDA + 16) as u32).to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length in 16-byte units, rev 1.4
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&config);
    floating
}

pub fn write(mem: &GuestMemoryMmap, ncpus: u8) -> Result<(), String> {
    mem.write_slice(&build(ncpus), GuestAddress(EBDA)).map_err(|e| format!("MP table: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        let t = build(2);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        let cfg = &t[16..];
        assert_eq!(&cfg[0..4], b"PCMP");
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(len, cfg.len());
        assert_eq!(cfg.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        // 2 CPUs + bus + IOAPIC + 16 IRQs + 2 local = 22 entries
        assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 22);
        // Table must fit in the EBDA below 1 MiB.
        assert!(EBDA + (build(254).len() as u64) <= crate::layout::ACPI_TABLES);
    }
}
