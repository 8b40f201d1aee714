//! Direct Linux boot ("kexec"): kernel, initrd and command line into guest RAM, the zero page,
//! and the firmware tables (MP table, and ACPI with `-A`) a kernel looks for.
//!
//! A bzImage's payload and a compressed initrd are decompressed on the host (`bzimage`,
//! `initrd`, `decompress`): on nested (PVM) hosts the guest's own decompressors run emulated and
//! take minutes. `XHYVE_HOST_DECOMPRESS=off` leaves both to the guest, as before.

pub mod bzimage;
pub mod cpu;
pub mod decompress;
pub mod initrd;
pub mod mptable;

use std::fs::File;
use std::io::Cursor;
use std::path::Path;
use std::time::Instant;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{CMDLINE, CMDLINE_MAX, EBDA, FOUR_GIB, HIMEM, MMIO_HOLE, SETUP_DATA, ZERO_PAGE};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const BOOT_FLAG: u16 = 0xaa55;
const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADED_HIGH: u8 = 0x01;
const KASLR_FLAG: u8 = 0x02;
const XLF_KERNEL_64: u16 = 0x01;

/// Whether bzImage payloads and initrds are decompressed on the host (`XHYVE_HOST_DECOMPRESS`,
/// default on; `off` or `0` leaves it to the guest kernel).
fn host_decompress() -> bool {
    !matches!(std::env::var("XHYVE_HOST_DECOMPRESS").as_deref(), Ok("off") | Ok("0"))
}

/// What the vCPU needs to start the kernel, and lines for the log.
pub struct BootEntry {
    pub rip: u64,
    pub kind: &'static str,
    /// What was decompressed on the host, or why not.
    pub notes: Vec<String>,
}

/// A kernel in guest memory: where it ends, its entry, and the setup header the zero page
/// starts from (a bzImage's own, or a minimal one for a plain vmlinux).
struct LoadedKernel {
    result: KernelLoaderResult,
    hdr: setup_header,
    rip: u64,
    kind: &'static str,
}

/// Loads the kernel (vmlinux ELF or bzImage) and initrd, writes the command line and zero page.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    acpi_rsdp: Option<GuestAddress>,
) -> Result<BootEntry, String> {
    let unpack = host_decompress();
    let mut notes = Vec::new();
    let k = load_kernel(mem, kernel, unpack, &mut notes)?;
    let mut params = boot_params { hdr: k.hdr, ..Default::default() };
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
        let placed = initrd::load(mem, path, &params, k.result.kernel_end, unpack)?;
        params.hdr.ramdisk_image = placed.addr as u32;
        params.hdr.ramdisk_size = placed.size as u32;
        notes.extend(placed.note);
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
    Ok(BootEntry { rip: k.rip, kind: k.kind, notes })
}

/// Puts the kernel into guest memory: a vmlinux as it is; a bzImage as the vmlinux its payload
/// decodes to (with `unpack`), or else as it is, to decompress itself in the guest.
fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    unpack: bool,
    notes: &mut Vec<String>,
) -> Result<LoadedKernel, String> {
    let err = |e: &dyn std::fmt::Display| format!("kernel {}: {e}", path.display());
    let mut image = File::open(path).map_err(|e| err(&e))?;
    let highmem = Some(GuestAddress(HIMEM));
    match Elf::load(mem, None, &mut image, highmem) {
        Ok(result) => return Ok(vmlinux(result, None)),
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {}
        Err(e) => return Err(err(&e)),
    }
    if unpack {
        let started = Instant::now();
        let bytes = std::fs::read(path).map_err(|e| err(&e))?;
        let ram: u64 = mem.iter().map(|r| r.len()).sum();
        let elf = bzimage::decompress(&bytes, ram as usize).and_then(|v| {
            let result =
                Elf::load(mem, None, &mut Cursor::new(&v.elf), highmem).map_err(|e| format!("its vmlinux: {e}"))?;
            Ok((v, result))
        });
        match elf {
            Ok((v, result)) => {
                notes.push(format!(
                    "kernel: bzImage payload ({}, {} bytes) decompressed on the host to a {}-byte vmlinux in {} ms",
                    v.format.name(),
                    v.compressed_len,
                    v.elf.len(),
                    started.elapsed().as_millis()
                ));
                return Ok(vmlinux(result, Some(v.header)));
            }
            Err(e) => {
                notes.push(format!("kernel: booting the bzImage as it is, it decompresses itself in the guest: {e}"))
            }
        }
    }
    let result = BzImage::load(mem, None, &mut image, highmem)
        .map_err(|e| format!("kernel {}: neither ELF nor bzImage: {e}", path.display()))?;
    let hdr = result.setup_header.ok_or_else(|| err(&"bzImage without a setup header"))?;
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(err(&"bzImage has no 64-bit entry point"));
    }
    // startup_64 sits 0x200 bytes into the protected-mode kernel.
    let rip = result.kernel_load.raw_value() + 0x200;
    Ok(LoadedKernel { result, hdr, rip, kind: "bzImage" })
}

/// A vmlinux ELF entered at its 64-bit entry, with its bzImage's setup header when it came
/// from one (root flags, video mode, limits), else a minimal header.
fn vmlinux(result: KernelLoaderResult, from_bzimage: Option<setup_header>) -> LoadedKernel {
    let rip = result.kernel_load.raw_value();
    let (hdr, kind) = match from_bzimage {
        // Not randomised: the guest decompressor that would have done KASLR did not run.
        Some(hdr) => (setup_header { loadflags: hdr.loadflags & !KASLR_FLAG, ..hdr }, "vmlinux from bzImage"),
        None => (
            setup_header {
                boot_flag: BOOT_FLAG,
                header: HDR_MAGIC,
                kernel_alignment: 0x100_0000,
                ..Default::default()
            },
            "vmlinux",
        ),
    };
    LoadedKernel { result, hdr, rip, kind }
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

    fn temp_file(name: &str, data: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("xhyve-{name}-{}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn bzimage_boots_as_its_vmlinux_or_as_it_is() {
        use bzimage::tests::{payload, tiny_bzimage, tiny_elf};
        use decompress::{tests::sample, Format};
        let mem = crate::memory::create(64 << 20).unwrap();
        let body = sample(100_000);
        let path = temp_file("bzimage", &tiny_bzimage(&payload(Format::Lz4, &tiny_elf(0x100_0000, &body))));

        let mut notes = Vec::new();
        let k = load_kernel(&mem, &path, true, &mut notes).unwrap();
        assert_eq!((k.rip, k.kind), (0x100_0000, "vmlinux from bzImage"));
        assert_eq!(k.result.kernel_end, 0x100_0000 + body.len() as u64 + 0x1000);
        let mut back = vec![0u8; body.len()];
        mem.read_slice(&mut back, GuestAddress(0x100_0000)).unwrap();
        assert!(back == body);
        // The zero page starts from the bzImage's setup header, unrandomised.
        let (version, loadflags, cmdline_size) = (k.hdr.version, k.hdr.loadflags, k.hdr.cmdline_size);
        assert_eq!((version, loadflags & KASLR_FLAG, cmdline_size), (0x020f, 0, 2047));
        assert!(notes[0].contains("bzImage payload (lz4"), "{notes:?}");

        // Switched off: the bzImage's own 64-bit entry, as before.
        let mut notes = Vec::new();
        let k = load_kernel(&mem, &path, false, &mut notes).unwrap();
        assert_eq!((k.rip, k.kind), (0x10_0200, "bzImage"));
        assert!(notes.is_empty());

        // A payload the host cannot decode: the bzImage as it is, with a note saying why.
        std::fs::write(&path, tiny_bzimage(&[0x42; 64])).unwrap();
        let mut notes = Vec::new();
        let k = load_kernel(&mem, &path, true, &mut notes).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(k.kind, "bzImage");
        assert!(notes[0].contains("decompresses itself in the guest: payload compression unknown"), "{notes:?}");
    }

    #[test]
    fn rejects_non_kernel() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let junk = temp_file("junk", &[0x5a; 8192]);
        let err = load_linux(&mem, &junk, None, "", None).err().unwrap();
        std::fs::remove_file(&junk).unwrap();
        assert!(err.contains("neither ELF nor bzImage"), "{err}");
    }
}
