//! ACPI tables for `-A`: RSDP, XSDT, FADT (with FACS), DSDT and MADT in the BIOS area. They describe
//! the PC fixed hardware of `devices::acpi_pm`, the CMOS RTC, the in-kernel IOAPIC/LAPICs and the
//! PCI interrupt pins' wiring to the IOAPIC (`routes`, from `pci::intx`).

mod dsdt;
mod fadt;
mod madt;

use acpi_tables::facs::FACS;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;
use crate::pci::intx::IntxRoute;

/// Every table's OEM identity, as bhyve's.
const OEM_ID: [u8; 6] = *b"BHYVE ";
const OEM_REVISION: u32 = 1;

/// FADT fields holding the FACS's and the DSDT's 64-bit addresses.
const FADT_X_FIRMWARE_CTRL: usize = 132;
const FADT_X_DSDT: usize = 140;
/// Where the XSDT's entries start, and the RSDP's XSDT address.
const XSDT_ENTRIES: usize = 36;
const RSDP_XSDT: usize = 24;

/// A field holding the address of a place in [`Tables::blob`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pointer {
    /// In the RSDP rather than in the blob.
    pub in_rsdp: bool,
    pub offset: usize,
    pub size: u8,
}

/// The tables for `-A`, laid out back to back as if loaded at `base`, and the links between them,
/// so that firmware can load them elsewhere (QEMU's table loader, `firmware::table_loader`).
pub struct Tables {
    /// FACS, DSDT, FADT, MADT, XSDT.
    pub blob: Vec<u8>,
    pub rsdp: Vec<u8>,
    pub pointers: Vec<Pointer>,
    /// (offset, length) of every table in the blob with a header checksum (all but the FACS).
    pub checksummed: Vec<(usize, usize)>,
}

/// Builds the tables as if the blob were loaded at `base` (64-byte aligned, for the FACS).
pub fn build(ncpus: u8, routes: &[IntxRoute], base: u64) -> Result<Tables, String> {
    if ncpus == 0 {
        return Err("ACPI tables need at least one vCPU".into());
    }
    let mut t = Tables { blob: Vec::new(), rsdp: Vec::new(), pointers: Vec::new(), checksummed: Vec::new() };
    let facs = t.put(&FACS::new(), 64, false);
    let dsdt = t.put(&dsdt::dsdt(routes), 16, true);
    let fadt = t.put(&fadt::fadt(base + dsdt as u64, base + facs as u64), 16, true);
    t.link(fadt + FADT_X_FIRMWARE_CTRL, false);
    t.link(fadt + FADT_X_DSDT, false);
    let madt = t.put(&madt::madt(ncpus), 16, true);
    let mut xsdt = XSDT::new(OEM_ID, *b"BVXSDT  ", OEM_REVISION);
    xsdt.add_entry(base + fadt as u64);
    xsdt.add_entry(base + madt as u64);
    let xsdt_at = t.put(&xsdt, 16, true);
    t.link(xsdt_at + XSDT_ENTRIES, false);
    t.link(xsdt_at + XSDT_ENTRIES + 8, false);
    Rsdp::new(OEM_ID, base + xsdt_at as u64).to_aml_bytes(&mut t.rsdp);
    t.link(RSDP_XSDT, true);
    Ok(t)
}

impl Tables {
    /// Appends `table` at the next multiple of `align`; returns its offset.
    fn put(&mut self, table: &dyn Aml, align: usize, checksummed: bool) -> usize {
        let at = self.blob.len().next_multiple_of(align);
        self.blob.resize(at, 0);
        table.to_aml_bytes(&mut self.blob);
        if checksummed {
            self.checksummed.push((at, self.blob.len() - at));
        }
        at
    }

    fn link(&mut self, offset: usize, in_rsdp: bool) {
        self.pointers.push(Pointer { in_rsdp, offset, size: 8 });
    }
}

/// Writes the tables into the BIOS area (the RSDP first, so that a legacy scan of 0xe0000..
/// finds it) and returns the RSDP's address, for `boot_params.acpi_rsdp_addr`.
pub fn write_tables(mem: &GuestMemoryMmap, ncpus: u8, routes: &[IntxRoute]) -> Result<GuestAddress, String> {
    let rsdp = layout::ACPI_TABLES;
    let base = (rsdp + Rsdp::len() as u64).next_multiple_of(64);
    let t = build(ncpus, routes, base)?;
    if base + t.blob.len() as u64 > layout::ACPI_TABLES_END {
        return Err(format!("ACPI tables do not fit below {:#x}", layout::ACPI_TABLES_END));
    }
    for (bytes, at) in [(&t.rsdp, rsdp), (&t.blob, base)] {
        mem.write_slice(bytes, GuestAddress(at)).map_err(|e| format!("writing ACPI tables at {at:#x}: {e}"))?;
    }
    Ok(GuestAddress(rsdp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Reads the table at `addr`, checking its signature, length and checksum.
    fn table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let head = read(mem, addr, 36);
        assert_eq!(&head[..4], sig);
        let t = read(mem, addr, u32_at(&head, 4) as usize);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        t
    }

    /// Follows RSDP -> XSDT and returns the XSDT's FADT and MADT.
    fn tables(mem: &GuestMemoryMmap) -> (Vec<u8>, Vec<u8>) {
        let rsdp = read(mem, layout::ACPI_TABLES, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");
        let xsdt = table(mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 2 * 8);
        (table(mem, u64_at(&xsdt, 36), b"FACP"), table(mem, u64_at(&xsdt, 44), b"APIC"))
    }

    #[test]
    fn fadt_describes_fixed_hardware() {
        let mem = guest();
        let routes = [IntxRoute { slot: 2, pin: 0, gsi: 18 }, IntxRoute { slot: 31, pin: 3, gsi: 18 }];
        assert_eq!(write_tables(&mem, 2, &routes).unwrap(), GuestAddress(layout::ACPI_TABLES));
        let (fadt, _) = tables(&mem);
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "FADT revision");
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9, "SCI_INT");
        assert_eq!(u32_at(&fadt, 48), 0, "SMI_CMD: ACPI always enabled");
        assert_eq!(u32_at(&fadt, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(&fadt, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(&fadt, 76), 0x608, "PM_TMR_BLK");
        assert_eq!((fadt[88], fadt[89], fadt[91]), (4, 2, 4), "PM1_EVT/PM1_CNT/PM_TMR lengths");
        assert_eq!(fadt[108], 0x32, "CENTURY");
        assert_eq!(u16::from_le_bytes([fadt[109], fadt[110]]) & 2, 2, "8042 present");
        let flags = u32_at(&fadt, 112);
        assert_eq!(flags & (1 << 4), 0, "fixed power button");
        assert_ne!(flags & (1 << 5), 0, "no sleep button");
        assert_ne!(flags & (1 << 8), 0, "32-bit PM timer");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1], "RESET_REG: 8-bit I/O port");
        assert_eq!(u64_at(&fadt, 120), 0x64);
        assert_eq!(fadt[128], 0xfe, "RESET_VALUE");

        let facs = read(&mem, u64_at(&fadt, 132), 64);
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u64_at(&fadt, 132) % 64, 0);
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        // Name(_S5_, Package(4) {5, 5, 0, 0})
        let s5 = [0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00];
        assert!(dsdt.windows(s5.len()).any(|w| w == s5));
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
        // Name(_PRT, Package(2) {Package(4) {0x0002ffff, 0, 0, 18}, Package(4) {0x001fffff, 3, 0, 18}})
        let prt = [
            0x08, b'_', b'P', b'R', b'T', 0x12, 0x1b, 0x02, // Name, Package: length, 2 elements
            0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x0a, 18, // slot 2 INTA#
            0x12, 0x0c, 0x04, 0x0c, 0xff, 0xff, 0x1f, 0x00, 0x0a, 0x03, 0x00, 0x0a, 18, // slot 31 INTD#
        ];
        assert!(dsdt.windows(prt.len()).any(|w| w == prt), "_PRT");
        // pvpanic: Name(_HID, "QEMU0001") and an I/O port descriptor (decode16) for 0x505, length 1.
        let hid = [&[0x08, b'_', b'H', b'I', b'D', 0x0d][..], b"QEMU0001\0"].concat();
        assert!(dsdt.windows(hid.len()).any(|w| w == hid), "pvpanic _HID");
        let port = [0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01];
        assert!(dsdt.windows(port.len()).any(|w| w == port), "pvpanic port");
    }

    #[test]
    fn madt_lists_cpus_ioapic_and_sci_override() {
        let mem = guest();
        write_tables(&mem, 2, &[]).unwrap();
        let (_, madt) = tables(&mem);
        assert_eq!(u32_at(&madt, 36), 0xfee0_0000);
        assert_eq!(u32_at(&madt, 40), 1, "PCAT_COMPAT");
        let mut entries = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            entries.push(&madt[off..off + madt[off + 1] as usize]);
            off += madt[off + 1] as usize;
        }
        assert_eq!(entries.len(), 4);
        for (id, e) in entries[..2].iter().enumerate() {
            assert_eq!(e[..4], [0, 8, id as u8, id as u8]);
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
        assert_eq!(entries[2][..4], [1, 12, 2, 0], "IOAPIC id = ncpus");
        assert_eq!((u32_at(entries[2], 4), u32_at(entries[2], 8)), (0xfec0_0000, 0));
        assert_eq!(entries[3], [2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0]);
    }

    #[test]
    fn no_cpus_is_an_error() {
        assert!(write_tables(&guest(), 0, &[]).is_err());
    }
}
