//! Firmware machines: Debian's stock OVMF (package `ovmf`), its code shared read-only by every
//! machine, and a variable store per machine, copied at machine.create from the box's (a packaged
//! machine's boot entries) or from OVMF's empty template. `XHYVE_OVMF_CODE` and
//! `XHYVE_OVMF_VARS` in the daemon's environment name other builds of the two files.

use super::overlay::Flat;
use super::record::{Disk, DiskFormat};
use super::source::unusable_by_vmm;
use crate::error::{code, Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The machine's own variable store, in its directory (and in a packaged box).
pub const VARS: &str = "efi-vars.fd";

/// OVMF's code: what `-f bootrom` maps at the top of 4 GiB.
pub fn code() -> Result<PathBuf> {
    ovmf_file("XHYVE_OVMF_CODE", "/usr/share/OVMF/OVMF_CODE_4M.fd", "the UEFI firmware")
}

/// OVMF's empty variable store, the template of a machine's own.
pub fn vars_template() -> Result<PathBuf> {
    ovmf_file("XHYVE_OVMF_VARS", "/usr/share/OVMF/OVMF_VARS_4M.fd", "the UEFI variable store template")
}

fn ovmf_file(var: &str, default: &str, what: &str) -> Result<PathBuf> {
    let (path, named_by) = match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), format!("{var} names it")),
        None => (PathBuf::from(default), format!("Debian's ovmf package installs it; {var} names another")),
    };
    match unusable_by_vmm(&path) {
        None => Ok(path),
        Some(why) => Err(Error::new(code::VMM_FAILED, format!("{what} {why} ({named_by})"))),
    }
}

/// GPT partition type of an EFI system partition (C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as
/// stored: the first three fields little-endian).
const ESP_TYPE: [u8; 16] =
    [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b];
/// MBR partition type of an EFI system partition.
const ESP_MBR_TYPE: u8 = 0xef;
/// What is read of the disk: its MBR, the GPT header and partition entries of 512- and
/// 4096-byte sectors.
const PREFIX: u64 = 1 << 20;

/// Where the firmware can find a boot loader on the disk: an EFI system partition in its GPT (or
/// MBR), or a FAT file system on the whole disk (removable-media style).
pub fn has_boot_partition(disk: impl Read) -> std::io::Result<bool> {
    let mut prefix = Vec::new();
    disk.take(PREFIX).read_to_end(&mut prefix)?;
    if let Ok(gpt) = gptman::GPT::find_from(&mut std::io::Cursor::new(&prefix)) {
        let esp = gpt.iter().any(|(_, p)| p.is_used() && p.partition_type_guid == ESP_TYPE);
        return Ok(esp);
    }
    let Some(mbr) = prefix.get(..512).filter(|s| s[510..] == [0x55, 0xaa]) else { return Ok(false) };
    if (0..4).any(|i| mbr[446 + 16 * i + 4] == ESP_MBR_TYPE) {
        return Ok(true);
    }
    // A FAT boot sector names its type at 0x36 (FAT12/16) or 0x52 (FAT32).
    let fat = mbr[0x36..0x39] == *b"FAT" || mbr[0x52..0x57] == *b"FAT32";
    Ok(fat)
}

/// machine.start of a firmware machine: its first disk must hold something the firmware boots,
/// else OVMF would end in its boot menu with no message a user sees.
pub fn check_boot_disk(id: &str, disks: &[Disk]) -> Result<()> {
    let fail = |m: String| Error::new(code::VMM_FAILED, format!("machine {id} boots through UEFI firmware: {m}"));
    let first = disks.first().ok_or_else(|| fail("it has no disk to boot".into()))?;
    let read_err = |e: std::io::Error| fail(format!("cannot read its first disk {}: {e}", first.path));
    let found = match first.format {
        DiskFormat::Qcow2 => has_boot_partition(Flat::open(Path::new(&first.path)).map_err(read_err)?),
        DiskFormat::Raw => has_boot_partition(std::fs::File::open(&first.path).map_err(read_err)?),
    }
    .map_err(read_err)?;
    if found {
        return Ok(());
    }
    Err(fail(format!(
        "its first disk {} has no EFI system partition (GPT or MBR) and no FAT file system, so the firmware would find nothing to boot; give it a disk whose EFI system partition holds a boot loader (\\EFI\\BOOT\\BOOTX64.EFI), or boot a kernel with firmware kexec",
        first.path
    )))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// A whole-disk FAT file system's first sector, as mkfs.vfat writes it (what matters here).
    pub(crate) fn fat_disk() -> Vec<u8> {
        let mut d = vec![0u8; 64 << 10];
        d[0x36..0x3e].copy_from_slice(b"FAT16   ");
        d[510..512].copy_from_slice(&[0x55, 0xaa]);
        d
    }

    fn gpt_disk(types: &[[u8; 16]]) -> Vec<u8> {
        let mut d = Cursor::new(vec![0u8; 8 << 20]);
        let mut gpt = gptman::GPT::new_from(&mut d, 512, [7; 16]).unwrap();
        for (i, t) in types.iter().enumerate() {
            let start = 2048 + 4096 * i as u64;
            gpt[i as u32 + 1] = gptman::GPTPartitionEntry {
                partition_type_guid: *t,
                unique_partition_guid: [i as u8 + 1; 16],
                starting_lba: start,
                ending_lba: start + 4095,
                attribute_bits: 0,
                partition_name: "p".into(),
            };
        }
        gptman::GPT::write_protective_mbr_into(&mut d, 512).unwrap();
        gpt.write_into(&mut d).unwrap();
        d.into_inner()
    }

    #[test]
    fn finds_what_the_firmware_boots() {
        let linux = [0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4];
        let found = |d: Vec<u8>| has_boot_partition(Cursor::new(d)).unwrap();
        assert!(found(gpt_disk(&[linux, ESP_TYPE])));
        // A GPT without one: its protective MBR is no ESP either.
        assert!(!found(gpt_disk(&[linux])));
        let mut mbr = vec![0u8; 4096];
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        mbr[446 + 16 + 4] = 0x83;
        assert!(!found(mbr.clone()));
        mbr[446 + 32 + 4] = ESP_MBR_TYPE;
        assert!(found(mbr));
        assert!(found(fat_disk()));
        for junk in [vec![], vec![0u8; 100], vec![0u8; 8 << 20], vec![0xffu8; 4096]] {
            assert!(!found(junk));
        }
        // A damaged GPT header (its CRC fails) is not read as one.
        let mut bad = gpt_disk(&[ESP_TYPE]);
        bad[512 + 40] ^= 1;
        assert!(!found(bad));
    }

    #[test]
    fn a_disk_without_boot_partition_is_refused_by_name() {
        let path = std::env::temp_dir().join(format!("xhyve-efi-test-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
        let disk = Disk { path: path.display().to_string(), source: None, owned: true, format: DiskFormat::Raw };
        let e = check_boot_disk("m1", std::slice::from_ref(&disk)).unwrap_err();
        assert!(
            e.message.contains(&format!("its first disk {} has no EFI system partition", disk.path)),
            "{}",
            e.message
        );
        std::fs::write(&path, fat_disk()).unwrap();
        check_boot_disk("m1", &[disk]).unwrap();
        assert!(check_boot_disk("m1", &[]).unwrap_err().message.contains("it has no disk to boot"));
        std::fs::remove_file(&path).unwrap();
    }
}
