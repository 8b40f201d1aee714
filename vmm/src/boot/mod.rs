//! Direct Linux boot ("kexec"): kernel, initrd and command line into guest RAM, the zero page,
//! and the firmware tables (MP table, and ACPI with `-A`) a kernel looks for.

pub mod cpu;
pub mod mptable;

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout::{CMDLINE, CMDLINE_MAX, EBDA, FOUR_GIB, HIMEM, MMIO_HOLE, SETUP_DATA, ZERO_PAGE};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const BOOT_FLAG: u16 = 0xaa55;
const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADED_HIGH: u8 = 0x01;
const XLF_KERNEL_64: u16 = 0x01;
/// Initrds stay below 2 GiB unless the kernel says it accepts more (boot protocol default).
const INITRD_MAX_DEFAULT: u64 = 0x7fff_ffff;

/// What the vCPU needs to start the kernel.
pub struct BootEntry {
    pub rip: u64,
    pub kind: &'static str,
}

/// Loads the kernel (vmlinux ELF or bzImage) and initrd, writes the command line and zero page.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    acpi_rsdp: Option<GuestAddress>,
) -> Result<BootEntry, String> {
    let mut image = File::open(kernel).map_err(|e| format!("kernel {}: {e}", kernel.display()))?;
    let highmem = Some(GuestAddress(HIMEM));
    let (result, kind) = match Elf::load(mem, None, &mut image, highmem) {
        Ok(r) => (r, "vmlinux"),
        Err(loader::Error::Elf(linux_loader::loader::elf::Error::InvalidElfMagicNumber)) => {
            let r = BzImage::load(mem, None, &mut image, highmem)
                .map_err(|e| format!("kernel {}: neither ELF nor bzImage: {e}", kernel.display()))?;
            (r, "bzImage")
        }
        Err(e) => return Err(format!("kernel {}: {e}", kernel.display())),
    };

    let mut params = boot_params::default();
    let rip = match result.setup_header {
        Some(hdr) => {
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(format!("kernel {}: bzImage has no 64-bit entry point", kernel.display()));
            }
            params.hdr = hdr;
            // startup_64 sits 0x200 bytes into the protected-mode kernel.
            result.kernel_load.raw_value() + 0x200
        }
        None => {
            params.hdr.boot_flag = BOOT_FLAG;
            params.hdr.header = HDR_MAGIC;
            params.hdr.kernel_alignment = 0x100_0000;
            result.kernel_load.raw_value()
        }
    };
    params.hdr.type_of_loader = 0xff;
    params.hdr.loadflags |= LOADED_HIGH;

    let max_cmdline = match params.hdr.cmdline_size {
        0 => CMDLINE_MAX,
        n => (n as usize + 1).min(CMDLINE_MAX),
    };
    let mut cl = Cmdline::new(max_cmdline).map_err(|e| format!("command line: {e}"))?;
    cl.insert_str(cmdline).map_err(|e| format!("command line: {e}"))?;
    load_cmdline(mem, GuestAddress(CMDLINE), &cl).map_err(|e| format!("command line: {e}"))?;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;

    if let Some(path) = initrd {
        let (addr, size) = load_initrd(mem, path, &params, result.kernel_end)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    params.hdr.setup_data = write_rng_seed(mem)?;
    add_e820(&mut params, mem)?;
    if let Some(rsdp) = acpi_rsdp {
        params.acpi_rsdp_addr = rsdp.raw_value();
    }
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(|e| format!("zero page: {e}"))?;
    Ok(BootEntry { rip, kind })
}

/// A `SETUP_RNG_SEED` entry: the kernel's CRNG is seeded at once instead of waiting for
/// entropy from interrupts, which are rare on slow (nested) hosts.
fn write_rng_seed(mem: &GuestMemoryMmap) -> Result<u64, String> {
    const SETUP_RNG_SEED: u32 = 9;
    let seed: [u8; 32] = xhyve_contract::random::bytes()?;
    let mut entry = Vec::with_capacity(16 + seed.len());
    entry.extend_from_slice(&0u64.to_le_bytes()); // next: end of the chain
    entry.extend_from_slice(&SETUP_RNG_SEED.to_le_bytes());
    entry.extend_from_slice(&(seed.len() as u32).to_le_bytes());
    entry.extend_from_slice(&seed);
    mem.write_slice(&entry, GuestAddress(SETUP_DATA)).map_err(|e| format!("setup_data: {e}"))?;
    Ok(SETUP_DATA)
}

/// Puts the initrd as high as allowed below the MMIO hole, page aligned, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    params: &boot_params,
    kernel_end: u64,
) -> Result<(u64, u64), String> {
    let data = std::fs::read(path).map_err(|e| format!("initrd {}: {e}", path.display()))?;
    let size = data.len() as u64;
    let addr_max = match params.hdr.initrd_addr_max {
        0 => INITRD_MAX_DEFAULT,
        n => u64::from(n),
    };
    let low_end = mem.last_addr().raw_value().min(MMIO_HOLE - 1);
    let top = low_end.min(addr_max) + 1;
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.max(HIMEM))
        .ok_or_else(|| format!("initrd {} ({size} bytes) does not fit in guest memory", path.display()))?;
    mem.write_slice(&data, GuestAddress(addr)).map_err(|e| format!("initrd: {e}"))?;
    Ok((addr, size))
}

fn add_e820(params: &mut boot_params, mem: &GuestMemoryMmap) -> Result<(), String> {
    let ram_end = mem.last_addr().raw_value() + 1;
    let mut entries = vec![
        (0, EBDA, E820_RAM),
        (EBDA, HIMEM - EBDA, E820_RESERVED),
        (HIMEM, ram_end.min(MMIO_HOLE) - HIMEM, E820_RAM),
    ];
    if ram_end > FOUR_GIB {
        entries.push((FOUR_GIB, ram_end - FOUR_GIB, E820_RAM));
    }
    for (i, (addr, size, kind)) in entries.into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr, size, r#type: kind };
        params.e820_entries += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_hole() {
        let mem = crate::memory::create(5 << 30).unwrap();
        let mut p = boot_params::default();
        add_e820(&mut p, &mem).unwrap();
        assert_eq!(p.e820_entries, 4);
        let e = p.e820_table;
        let (a2, s2, a3, s3) = (e[2].addr, e[2].size, e[3].addr, e[3].size);
        assert_eq!((a2, s2), (HIMEM, MMIO_HOLE - HIMEM));
        assert_eq!((a3, s3), (FOUR_GIB, (5u64 << 30) - MMIO_HOLE));
        let kind = e[1].r#type;
        assert_eq!(kind, E820_RESERVED);
    }

    #[test]
    fn rejects_non_kernel() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let junk = std::env::temp_dir().join(format!("xhyve-junk-{}", std::process::id()));
        std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
        let err = load_linux(&mem, &junk, None, "", None).err().unwrap();
        std::fs::remove_file(&junk).unwrap();
        assert!(err.contains("neither ELF nor bzImage"), "{err}");
    }
}
