//! ACPI tables for UEFI firmware, the way QEMU hands them over: two fw_cfg files holding the
//! tables (`etc/acpi/tables`) and the RSDP (`etc/acpi/rsdp`) with pointers relative to their
//! file, and a script (`etc/table-loader`) telling the firmware to allocate both, add the
//! tables' load address to each pointer and recompute the checksums. OVMF's AcpiPlatformDxe
//! runs it and installs every table a pointer leads to.

use crate::acpi::Tables;
use crate::devices::fw_cfg::FwCfg;

pub const TABLES_FILE: &str = "etc/acpi/tables";
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
pub const LOADER_FILE: &str = "etc/table-loader";

const ALLOCATE: u32 = 1;
const ADD_POINTER: u32 = 2;
const ADD_CHECKSUM: u32 = 3;
/// Allocation zones: anywhere below 4 GiB, or the legacy F segment (for the RSDP).
const ZONE_HIGH: u8 = 1;
const ZONE_FSEG: u8 = 2;
const COMMAND_LEN: usize = 128;
const NAME_LEN: usize = 56;
/// Header checksum byte of a table; the RSDP's two checksums and the lengths they cover.
const TABLE_CHECKSUM: usize = 9;
const RSDP_CHECKSUM: (usize, usize) = (8, 20);
const RSDP_EXT_CHECKSUM: (usize, usize) = (32, 36);

struct Script(Vec<u8>);

impl Script {
    fn command(&mut self, kind: u32, names: &[&str], fields: &[u8]) {
        let mut c = kind.to_le_bytes().to_vec();
        for n in names {
            let mut name = [0u8; NAME_LEN];
            name[..n.len()].copy_from_slice(n.as_bytes());
            c.extend_from_slice(&name);
        }
        c.extend_from_slice(fields);
        c.resize(COMMAND_LEN, 0);
        self.0.extend_from_slice(&c);
    }

    fn allocate(&mut self, file: &str, align: u32, zone: u8) {
        let mut f = align.to_le_bytes().to_vec();
        f.push(zone);
        self.command(ALLOCATE, &[file], &f);
    }

    fn add_pointer(&mut self, dest: &str, src: &str, offset: usize, size: u8) {
        let mut f = (offset as u32).to_le_bytes().to_vec();
        f.push(size);
        self.command(ADD_POINTER, &[dest, src], &f);
    }

    fn add_checksum(&mut self, file: &str, result: usize, start: usize, len: usize) {
        let f: Vec<u8> = [result, start, len].iter().flat_map(|v| (*v as u32).to_le_bytes()).collect();
        self.command(ADD_CHECKSUM, &[file], &f);
    }
}

/// Adds the three files for `tables`, which must have been built at base 0.
pub fn add_files(fw_cfg: &mut FwCfg, mut tables: Tables) -> Result<(), String> {
    let mut s = Script(Vec::new());
    s.allocate(RSDP_FILE, 16, ZONE_FSEG);
    s.allocate(TABLES_FILE, 64, ZONE_HIGH);
    for p in &tables.pointers {
        let dest = if p.in_rsdp { RSDP_FILE } else { TABLES_FILE };
        s.add_pointer(dest, TABLES_FILE, p.offset, p.size);
    }
    // The loader sets a checksum byte to make its range sum to zero, counting the byte itself:
    // clear them first.
    for &(at, len) in &tables.checksummed {
        tables.blob[at + TABLE_CHECKSUM] = 0;
        s.add_checksum(TABLES_FILE, at + TABLE_CHECKSUM, at, len);
    }
    for (at, len) in [RSDP_CHECKSUM, RSDP_EXT_CHECKSUM] {
        tables.rsdp[at] = 0;
        s.add_checksum(RSDP_FILE, at, 0, len);
    }
    fw_cfg.add_file(TABLES_FILE, tables.blob)?;
    fw_cfg.add_file(RSDP_FILE, tables.rsdp)?;
    fw_cfg.add_file(LOADER_FILE, s.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi;

    /// Runs a loader script the way OVMF does, with the tables at `base`; returns the tables
    /// blob and the RSDP.
    fn run(script: &[u8], files: &[(&str, Vec<u8>)], base: u64) -> (Vec<u8>, Vec<u8>) {
        let name = |b: &[u8]| String::from_utf8(b.iter().take_while(|c| **c != 0).copied().collect()).unwrap();
        let mut blobs: Vec<(String, Vec<u8>)> = files.iter().map(|(n, b)| (n.to_string(), b.clone())).collect();
        let idx = |blobs: &Vec<(String, Vec<u8>)>, n: &str| blobs.iter().position(|(b, _)| b == n).unwrap();
        for c in script.chunks(COMMAND_LEN) {
            let word = |at: usize| u32::from_le_bytes(c[at..at + 4].try_into().unwrap()) as usize;
            match word(0) as u32 {
                ALLOCATE => assert!(files.iter().any(|(n, _)| *n == name(&c[4..60]))),
                ADD_POINTER => {
                    let (dest, src) = (name(&c[4..60]), name(&c[60..116]));
                    assert_eq!(src, TABLES_FILE);
                    let (off, size) = (word(116), c[120] as usize);
                    assert_eq!(size, 8);
                    let d = idx(&blobs, &dest);
                    let b = &mut blobs[d].1;
                    let v = u64::from_le_bytes(b[off..off + 8].try_into().unwrap()) + base;
                    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
                }
                ADD_CHECKSUM => {
                    let f = idx(&blobs, &name(&c[4..60]));
                    let (result, start, len) = (word(60), word(64), word(68));
                    let b = &mut blobs[f].1;
                    let sum = b[start..start + len].iter().fold(0u8, |a, x| a.wrapping_add(*x));
                    b[result] = 0u8.wrapping_sub(sum);
                }
                other => panic!("unknown loader command {other}"),
            }
        }
        (blobs[idx(&blobs, TABLES_FILE)].1.clone(), blobs[idx(&blobs, RSDP_FILE)].1.clone())
    }

    #[test]
    fn loaded_tables_match_tables_built_in_place() {
        let mut fw =
            FwCfg::new(vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)]).unwrap());
        add_files(&mut fw, acpi::build(2, &[], 0).unwrap()).unwrap();
        let file = |name| fw.file(name).unwrap().to_vec();
        let (script, blob, rsdp) = (file(LOADER_FILE), file(TABLES_FILE), file(RSDP_FILE));
        assert_eq!(script.len() % COMMAND_LEN, 0);
        let base = 0x7fe0_0000;
        let (loaded, loaded_rsdp) = run(&script, &[(TABLES_FILE, blob), (RSDP_FILE, rsdp)], base);
        // The loader's result is what building at that base gives directly, checksums included.
        let direct = acpi::build(2, &[], base).unwrap();
        assert_eq!(loaded, direct.blob);
        assert_eq!(loaded_rsdp, direct.rsdp);
    }
}
