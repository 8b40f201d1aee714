//! Intel MultiProcessor Specification 1.4 table: how a kernel without ACPI finds the vCPUs,
//! the IOAPIC, and the ISA and PCI interrupt wiring. Placed in the EBDA, where kernels scan for
//! `_MP_`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{EBDA, IOAPIC, LAPIC};
use crate::pci::intx::IntxRoute;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_IRQS: u8 = 16;
/// Bus IDs: a PCI bus's ID is its bus number (that is how kernels match PCI interrupt entries),
/// so PCI bus 0 is 0 and the ISA bus comes after it, as in bhyve's table.
const BUS_PCI0: u8 = 0;
const BUS_ISA: u8 = 1;
/// I/O interrupt entry flags: polarity and trigger mode as the bus defines them (ISA: edge,
/// high); level-triggered and active-low (PCI INTx#).
const FLAGS_CONFORMING: u8 = 0;
const FLAGS_LEVEL_LOW: u8 = 0x0f;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_sub(*b))
}

/// The table's bytes for `ncpus` vCPUs (APIC IDs 0..ncpus), IOAPIC ID `ncpus`, and the PCI
/// interrupt pins of `routes`.
pub fn build(ncpus: u8, routes: &[IntxRoute]) -> Vec<u8> {
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
    entries.extend_from_slice(&[1, BUS_PCI0]);
    entries.extend_from_slice(b"PCI   ");
    entries.extend_from_slice(&[1, BUS_ISA]);
    entries.extend_from_slice(b"ISA   ");
    count += 2;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC as u32).to_le_bytes());
    count += 1;
    // ISA IRQ n is IOAPIC pin n (KVM's default routing); conforming polarity and trigger.
    for irq in 0..ISA_IRQS {
        entries.extend_from_slice(&[3, 0, FLAGS_CONFORMING, 0, BUS_ISA, irq, ioapic_id, irq]);
        count += 1;
    }
    // A PCI source IRQ is (device << 2) | pin; a GSI is the IOAPIC pin of the same number.
    for r in routes {
        let source = r.slot << 2 | r.pin;
        entries.extend_from_slice(&[3, 0, FLAGS_LEVEL_LOW, 0, BUS_PCI0, source, ioapic_id, r.gsi as u8]);
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

pub fn write(mem: &GuestMemoryMmap, ncpus: u8, routes: &[IntxRoute]) -> Result<(), String> {
    mem.write_slice(&build(ncpus, routes), GuestAddress(EBDA)).map_err(|e| format!("MP table: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config table's entries, split by type (entry lengths: 20 for CPUs, 8 for the rest).
    fn entries(t: &[u8]) -> Vec<&[u8]> {
        let cfg = &t[16..];
        let mut out = Vec::new();
        let mut at = 44;
        while at < cfg.len() {
            let len = if cfg[at] == 0 { 20 } else { 8 };
            out.push(&cfg[at..at + len]);
            at += len;
        }
        out
    }

    #[test]
    fn checksums_and_counts() {
        let t = build(2, &[]);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        let cfg = &t[16..];
        assert_eq!(&cfg[0..4], b"PCMP");
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(len, cfg.len());
        assert_eq!(cfg.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        // 2 CPUs + 2 buses + IOAPIC + 16 IRQs + 2 local = 23 entries
        assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 23);
        assert_eq!(entries(&t).len(), 23);
        // Table must fit in the EBDA below 1 MiB, even with every pin of every slot wired.
        let all: Vec<IntxRoute> = (0..32)
            .flat_map(|slot| (0..4).map(move |pin| IntxRoute { slot, pin, gsi: crate::pci::intx::gsi(slot, pin) }))
            .collect();
        assert!(EBDA + (build(254, &all).len() as u64) <= crate::layout::ACPI_TABLES);
    }

    #[test]
    fn pci_pins_are_level_low_on_their_ioapic_inputs() {
        let routes = [IntxRoute { slot: 2, pin: 0, gsi: 18 }, IntxRoute { slot: 31, pin: 3, gsi: 18 }];
        let t = build(1, &routes);
        let e = entries(&t);
        assert_eq!(e[1], b"\x01\x00PCI   ", "bus 0 is PCI");
        assert_eq!(e[2], b"\x01\x01ISA   ");
        let ioints: Vec<&[u8]> = e.iter().copied().filter(|e| e[0] == 3).collect();
        assert_eq!(ioints.len(), 18);
        assert_eq!(ioints[4], [3, 0, 0, 0, BUS_ISA, 4, 1, 4], "ISA IRQ 4 -> IOAPIC (ID 1) pin 4");
        assert_eq!(ioints[16], [3, 0, 0x0f, 0, BUS_PCI0, 2 << 2, 1, 18], "slot 2 INTA#");
        assert_eq!(ioints[17], [3, 0, 0x0f, 0, BUS_PCI0, 31 << 2 | 3, 1, 18], "slot 31 INTD#");
    }
}
