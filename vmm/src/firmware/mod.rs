//! UEFI firmware boot (`-f bootrom,FIRMWARE[,VARS]`) with Debian's stock OVMF, on the machine its
//! QEMU platform code expects, and only as much of it as that code reads:
//!
//! - the firmware image at the top of 4 GiB, read-only; the variable store just below it as the
//!   CFI flash OVMF's QEMU flash driver probes and programs (`flash.rs`), kept in the VARS file;
//! - a Q35 host bridge and ICH9 LPC bridge at 0:0.0 and 0:1f.0 (where xhyve command lines put
//!   `hostbridge` and `lpc`) with the MMCONFIG window and the ACPI PM base (`pci::q35`);
//! - QEMU's fw_cfg with the memory map, CPU count and ACPI tables (`devices::fw_cfg`,
//!   `table_loader.rs`).
//!
//! The vCPUs start in real mode at the reset vector (0xfffffff0), as on a PC.
//!
//! Measured on the nested PVM host (Debian's OVMF 2022.11, `OVMF_CODE_4M.fd`, whose SEC and PEI
//! are 32-bit and DXE 64-bit; 1 vCPU, 256 MiB), where every firmware instruction goes through the
//! host's emulator at about 1.5-2 million instructions a second:
//! - SEC: LZMA-decompressing the PEI and DXE volumes took 706 s; `preload.rs` does it on the host
//!   (under 1 s), so SEC reaches PEI in about 1 s.
//! - PEI: the DXE IPL builds the identity map of the 64 GiB address space with 2 MiB pages:
//!   32768 entries, each asking dynamic PCDs through the PEI services (`XHYVE_PROFILE`: PcdPeim
//!   44%, PeiCore 29%, DxeIpl 25%). That took 2.5 minutes beside a kernel build, 11 minutes in
//!   an earlier measurement on a busier host. Stock OVMF does not use 1 GiB pages there
//!   (`PcdUse1GPageTable` is FALSE), and this host's `KVM_SET_CPUID2` would not pass `pdpe1gb`
//!   anyway; OVMF's minimum address width is 36 bits.
//! - DXE to BdsDxe starting the disk's `\EFI\BOOT\BOOTX64.EFI`: 2-5.5 minutes, mostly
//!   DxeCore dispatching and loading drivers, then VariableRuntimeDxe, PcdDxe, CpuDxe and
//!   HiiDatabase.
//! - The tiny EFI disk (`boxes/tiny/efi-disk.sh`, `tests/provider/test_efi.py`), seconds after
//!   process start, 1 vCPU, 256 MiB, 3 boots with the other core busy: BdsDxe starts
//!   systemd-boot at about 240-330; the kernel's EFI stub prints the first kernel line at 289-397
//!   (systemd-boot reads the 2.9 MB kernel and 7.9 MB initramfs through OVMF's FAT driver:
//!   ~45 s), "Linux version" 10 s later, the box's "ready" at 343-483. The same kernel through
//!   `-f kexec`: "Linux version" at 8 s, "ready" at 48-65 s. So the firmware costs 5-7 minutes
//!   here, nearly all of it in emulated OVMF code; the kernel's own boot takes about as long
//!   either way. The entry must carry `xhyve --features`' guest_kernel_params with
//!   `tsc_early_khz`: without it the kernel calibrates against the PIT and hangs in its IO-APIC
//!   timer check.
//! - Fix-ups firmware needs: fwait, ldmxcsr/stmxcsr, and x87/SSE instructions run on the host CPU
//!   (`pvm`: its FPU set-up, OpenSSL in TlsDxe, systemd-boot).
//!
//! On a normal KVM host none of this applies and `preload.rs` is not used.
//!
//! `XHYVE_PROFILE=FILE` samples where the firmware runs (`profile.rs`);
//! `tests/tools/firmware_profile.py` names the modules.

mod flash;
mod preload;
pub mod profile;
pub mod table_loader;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

use crate::bus::Bus;
use crate::config::{Bootrom, Config, DeviceConfig, PciSlot};
use crate::devices::cmos::{Cmos, SHUTDOWN_S3_RESUME};
use crate::devices::debugcon::{self, DebugCon};
use crate::devices::fw_cfg::{self, FwCfg};
use crate::hypervisor::Vm;
use crate::layout::FOUR_GIB;
use crate::logger::log;
use crate::os_error::strip_os_error;
use crate::pci::intx::IntxRoute;

pub use flash::Flash;

/// On the PVM host, a firmware machine's local APIC timer counts at 100 MHz (a common bus clock
/// on real PCs) instead of KVM's 1 GHz, which OVMF takes for granted: its timer (LocalApicTimerDxe)
/// then ticks at 10 Hz, not 100, and the firmware's clock runs at a tenth of real time. Every
/// firmware instruction is emulated here, so the firmware runs ~1000 times slower than on
/// hardware: at 100 Hz its tick handler took a growing share of the vCPU once other guests
/// shared the cores, and the 5-minute watchdog that its boot manager arms before starting a boot
/// loader reset the machine while systemd-boot was still reading the kernel (measured: reset 5
/// min 24 s after "starting Boot0001", beside the test suite). Stalls (the ACPI PM timer) keep
/// real time; Linux measures the APIC timer's rate itself or uses the TSC deadline.
pub const PVM_APIC_BUS_CYCLE_NS: u32 = 10;

/// Firmware and variable store together must fit below 4 GiB above the LAPIC's page.
const MAX_SIZE: u64 = 16 << 20;
/// OVMF's flash block (erase) size, and the granularity of both images.
const BLOCK: u64 = 4096;
/// KVM memory slots of the code and the variable store (RAM uses the first few).
const SLOT_CODE: u32 = 16;
const SLOT_VARS: u32 = 17;
/// fw_cfg's memory map entry type for RAM.
const E820_RAM: u32 = 1;

/// EFI_SYSTEM_NV_DATA_FV_GUID as stored: the file system GUID of a variable store volume.
const NV_DATA_FV_GUID: [u8; 16] =
    [0x8d, 0x2b, 0xf1, 0xff, 0x96, 0x76, 0x8b, 0x4c, 0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50];

/// Length of the variable-store firmware volume at the start of an image, if it starts with one.
fn var_store_len(head: &[u8]) -> Option<u64> {
    // EFI_FIRMWARE_VOLUME_HEADER: zero vector (16), file system GUID (16), length (8), "_FVH".
    if head.len() < 44 || head[16..32] != NV_DATA_FV_GUID || &head[40..44] != b"_FVH" {
        return None;
    }
    Some(u64::from_le_bytes(head[32..40].try_into().unwrap()))
}

/// Where the variables live.
#[derive(Debug, PartialEq, Eq)]
enum Vars {
    /// In the VARS file, which every change is written through to.
    File { path: PathBuf, len: u64 },
    /// In the first `len` bytes of a unified image (OVMF.fd): changes last for this run only.
    Embedded { len: u64 },
    /// None: OVMF finds no flash and keeps its variables in memory.
    None,
}

/// What the images hold, checked.
#[derive(Debug, PartialEq, Eq)]
struct Images {
    firmware: PathBuf,
    /// Offset and length of the code in the firmware file.
    code: (u64, u64),
    vars: Vars,
}

impl Images {
    fn total(&self) -> u64 {
        self.code.1
            + match self.vars {
                Vars::File { len, .. } | Vars::Embedded { len } => len,
                Vars::None => 0,
            }
    }
}

fn open_image(path: &Path, writable: bool) -> Result<(File, u64, Vec<u8>), String> {
    let name = path.display();
    let mut f = OpenOptions::new().read(true).write(writable).open(path).map_err(|e| {
        let hint = if writable && e.kind() == std::io::ErrorKind::PermissionDenied {
            ": the firmware writes its variables there; give a writable copy of OVMF_VARS*.fd"
        } else {
            ""
        };
        format!("{name}: {}{hint}", strip_os_error(&e))
    })?;
    let meta = f.metadata().map_err(|e| format!("{name}: {}", strip_os_error(&e)))?;
    if !meta.is_file() {
        return Err(format!("{name}: not a regular file"));
    }
    let len = meta.len();
    if len == 0 || len % BLOCK != 0 || len > MAX_SIZE {
        return Err(format!("{name}: {len} bytes is not a firmware image size (a multiple of 4 KiB, at most 16 MiB)"));
    }
    let mut head = vec![0u8; 64];
    f.read_exact(&mut head).map_err(|e| format!("{name}: {}", strip_os_error(&e)))?;
    Ok((f, len, head))
}

fn inspect(b: &Bootrom) -> Result<Images, String> {
    let fw = b.firmware.display();
    let (_, fw_len, head) = open_image(&b.firmware, false)?;
    let firmware = b.firmware.clone();
    if let Some(store) = var_store_len(&head) {
        if b.vars.is_some() {
            return Err(format!(
                "{fw} is a unified image that holds its own variable store: give OVMF_CODE*.fd with the VARS \
                 file, or {fw} alone"
            ));
        }
        if store % BLOCK != 0 || store >= fw_len {
            return Err(format!("{fw}: its variable store is {store} bytes of {fw_len}: not an OVMF image"));
        }
        return Ok(Images { firmware, code: (store, fw_len - store), vars: Vars::Embedded { len: store } });
    }
    let vars = match &b.vars {
        None => Vars::None,
        Some(path) => {
            let (_, len, head) = open_image(path, true)?;
            if var_store_len(&head).is_none() {
                return Err(format!(
                    "{}: not a UEFI variable store (give a copy of OVMF_VARS*.fd that matches {fw})",
                    path.display()
                ));
            }
            Vars::File { path: path.clone(), len }
        }
    };
    let images = Images { firmware, code: (0, fw_len), vars };
    if images.total() > MAX_SIZE {
        return Err(format!("{fw} and its VARS file are {} bytes together: more than 16 MiB", images.total()));
    }
    Ok(images)
}

/// Checks the images as the command line is parsed: readable, sized like firmware, VARS writable
/// and a variable store.
pub fn check(b: &Bootrom) -> Result<(), String> {
    inspect(b).map(drop)
}

/// OVMF's Q35 platform code looks for the host bridge at 0:0.0 and the LPC bridge at 0:1f.0.
pub fn check_slots(slots: &[PciSlot]) -> Result<(), String> {
    let has = |slot, dev| slots.iter().any(|s| s.slot == slot && s.func == 0 && s.device == dev);
    if has(0, DeviceConfig::HostBridge) && has(31, DeviceConfig::Lpc) {
        Ok(())
    } else {
        Err("UEFI firmware needs -s 0,hostbridge and -s 31,lpc (OVMF's Q35 platform code expects them there)".into())
    }
}

/// The mapped firmware; lives as long as the VM.
pub struct Firmware {
    code: MmapRegion,
    code_base: u64,
    flash: Option<Arc<Flash>>,
    /// A notice for the log (variables not kept), if any.
    pub notice: Option<String>,
}

fn map_file(path: &Path, offset: u64, len: u64, shared: bool) -> Result<MmapRegion, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(shared)
        .open(path)
        .map_err(|e| format!("{}: {}", path.display(), strip_os_error(&e)))?;
    let flags = if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE } | libc::MAP_NORESERVE;
    MmapRegion::build(Some(FileOffset::new(file, offset)), len as usize, libc::PROT_READ | libc::PROT_WRITE, flags)
        .map_err(|e| format!("{}: mmap: {e}", path.display()))
}

/// Maps the images below 4 GiB: the code read-only, the variable store as flash on `mmio`.
fn load(vm: &Arc<dyn Vm>, mmio: &Bus, images: &Images) -> Result<Firmware, String> {
    let (code_off, code_len) = images.code;
    let code = map_file(&images.firmware, code_off, code_len, false)?;
    let code_base = FOUR_GIB - code_len;
    // SAFETY: `code` is kept in the returned Firmware, which the VMM keeps until it exits.
    unsafe { vm.map_readonly_memory(SLOT_CODE, code_base, code_len, code.as_ptr() as u64) }
        .map_err(|e| format!("mapping {}: {e}", images.firmware.display()))?;
    let (store, notice) = match &images.vars {
        Vars::File { path, len } => (Some((map_file(path, 0, *len, true)?, path.clone())), None),
        Vars::Embedded { len } => (
            Some((map_file(&images.firmware, 0, *len, false)?, images.firmware.clone())),
            Some(format!(
                "{} holds its own variable store: variable changes last for this run only (give \
                 OVMF_CODE*.fd and a VARS file to keep them)",
                images.firmware.display()
            )),
        ),
        Vars::None => (None, Some("no VARS file: the firmware keeps its variables for this run only".to_string())),
    };
    let flash = match store {
        None => None,
        Some((region, path)) => {
            let base = code_base - region.size() as u64;
            let flash = Arc::new(
                Flash::new(vm.clone(), SLOT_VARS, base, region, BLOCK)
                    .map_err(|e| format!("mapping {}: {e}", path.display()))?,
            );
            mmio.insert(base, flash.len(), flash.clone())?;
            Some(flash)
        }
    };
    Ok(Firmware { code, code_base, flash, notice })
}

impl Firmware {
    /// Guest RAM with the images added: what the vCPU reads and fetches from, for the PVM
    /// instruction fix-ups (the images are outside `ram`).
    pub fn memory_view(&self, ram: &GuestMemoryMmap) -> Result<GuestMemoryMmap, String> {
        let mut regions = Vec::new();
        let mut alias = |ptr: *mut u8, len: usize, base: u64| -> Result<(), String> {
            // SAFETY: `ptr..ptr+len` is one of our mappings (guest RAM or an image), which live
            // until the process exits; the alias does not unmap it.
            let r = unsafe { MmapRegion::build_raw(ptr, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE) }
                .map_err(|e| format!("firmware memory view: {e}"))?;
            regions.push(GuestRegionMmap::new(r, GuestAddress(base)).ok_or("firmware memory view: bad region")?);
            Ok(())
        };
        for r in ram.iter() {
            alias(r.as_ptr(), r.len() as usize, r.start_addr().0)?;
        }
        if let Some(f) = &self.flash {
            let (ptr, len, base) = f.mapping();
            alias(ptr, len, base)?;
        }
        alias(self.code.as_ptr(), self.code.size(), self.code_base)?;
        GuestMemoryMmap::from_regions(regions).map_err(|e| format!("firmware memory view: {e}"))
    }
}

/// The parts of the machine a firmware boot adds to.
pub struct Platform<'a> {
    pub vm: &'a Arc<dyn Vm>,
    pub mem: &'a GuestMemoryMmap,
    pub pio: &'a Bus,
    pub mmio: &'a Bus,
    pub cmos: &'a Mutex<Cmos>,
    /// Decompress the firmware's volumes on the host (`preload.rs`): where guest code is slow.
    pub preload: bool,
}

/// Adds what the firmware needs to the machine: its images, fw_cfg and, with `-v`, the debug
/// console. The vCPUs stay at the reset vector.
pub fn install(p: Platform, cfg: &Config, b: &Bootrom, intx_routes: &[IntxRoute]) -> Result<Firmware, String> {
    let images = inspect(b)?;
    let fw = load(p.vm, p.mmio, &images)?;
    if let Some(n) = &fw.notice {
        log(n);
    }
    if p.preload {
        let name = images.firmware.display();
        let image = std::fs::read(&images.firmware).map_err(|e| format!("{name}: {}", strip_os_error(&e)))?;
        match preload::preload(&image[images.code.0 as usize..], p.mem)? {
            Some(v) => {
                p.cmos.lock().unwrap().set_shutdown_status_once(SHUTDOWN_S3_RESUME);
                if cfg.verbose {
                    log(format!("firmware: PEI and DXE volumes decompressed by the host: {v:?}"));
                }
            }
            None => log(format!(
                "{name}: not laid out like OVMF: it decompresses its own volumes, which takes minutes here"
            )),
        }
    }
    let mut f = FwCfg::new(p.mem.clone());
    let ncpus = u16::from(cfg.cpus).to_le_bytes().to_vec();
    f.add_item(fw_cfg::NB_CPUS, ncpus.clone());
    f.add_item(fw_cfg::MAX_CPUS, ncpus);
    f.add_item(fw_cfg::RAM_SIZE, cfg.mem_bytes.to_le_bytes().to_vec());
    if let Some(u) = cfg.uuid {
        f.add_item(fw_cfg::UUID, u.as_bytes().to_vec());
    }
    f.add_file("etc/e820", e820(p.mem))?;
    if cfg.acpi {
        table_loader::add_files(&mut f, crate::acpi::build(cfg.cpus, intx_routes, 0)?)?;
    }
    p.pio.insert(fw_cfg::PORT.into(), fw_cfg::PORTS.into(), Arc::new(Mutex::new(f)))?;
    if cfg.verbose {
        p.pio.insert(debugcon::PORT.into(), 1, Arc::new(Mutex::new(DebugCon::default())))?;
    }
    Ok(fw)
}

/// QEMU's `etc/e820`: (address, length, type) per RAM range, little-endian.
fn e820(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut out = Vec::new();
    for r in mem.iter() {
        out.extend_from_slice(&r.start_addr().0.to_le_bytes());
        out.extend_from_slice(&r.len().to_le_bytes());
        out.extend_from_slice(&E820_RAM.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file of `len` bytes starting with a firmware volume header for `guid`.
    pub(crate) fn image(dir: &Path, name: &str, len: u64, guid: Option<[u8; 16]>, fv_len: u64) -> PathBuf {
        let path = dir.join(name);
        let mut bytes = vec![0u8; len as usize];
        if let Some(g) = guid {
            bytes[16..32].copy_from_slice(&g);
            bytes[32..40].copy_from_slice(&fv_len.to_le_bytes());
            bytes[40..44].copy_from_slice(b"_FVH");
        }
        File::create(&path).unwrap().write_all(&bytes).unwrap();
        path
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("xhyve-fw-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn split_unified_and_bad_images() {
        let d = tmp();
        let code = image(&d, "code.fd", 0x10_0000, Some([7; 16]), 0x10_0000);
        let vars = image(&d, "vars.fd", 0x8_4000, Some(NV_DATA_FV_GUID), 0x8_4000);
        let unified = image(&d, "unified.fd", 0x20_0000, Some(NV_DATA_FV_GUID), 0x2_0000);
        let b = |f: &PathBuf, v: Option<&PathBuf>| Bootrom { firmware: f.clone(), vars: v.cloned() };

        let i = inspect(&b(&code, Some(&vars))).unwrap();
        assert_eq!(i.code, (0, 0x10_0000));
        assert_eq!(i.vars, Vars::File { path: vars.clone(), len: 0x8_4000 });
        let i = inspect(&b(&unified, None)).unwrap();
        assert_eq!((i.code, i.vars), ((0x2_0000, 0x1e_0000), Vars::Embedded { len: 0x2_0000 }));
        assert_eq!(inspect(&b(&code, None)).unwrap().vars, Vars::None);

        let e = inspect(&b(&unified, Some(&vars))).unwrap_err();
        assert!(e.contains("unified image") && e.contains("unified.fd"), "{e}");
        let e = inspect(&b(&code, Some(&code))).unwrap_err();
        assert!(e.contains("not a UEFI variable store"), "{e}");
        let odd = image(&d, "odd.fd", 5000, None, 0);
        assert!(inspect(&b(&odd, None)).unwrap_err().contains("multiple of 4 KiB"));
        let big = image(&d, "big.fd", 0x100_1000, None, 0);
        assert!(inspect(&b(&big, None)).unwrap_err().contains("at most 16 MiB"));
        let e = inspect(&b(&d.join("missing.fd"), None)).unwrap_err();
        assert!(e.contains("missing.fd: No such file"), "{e}");
        let ro = image(&d, "ro.fd", 0x8_4000, Some(NV_DATA_FV_GUID), 0x8_4000);
        std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
        if unsafe { libc::geteuid() } != 0 {
            assert!(inspect(&b(&code, Some(&ro))).unwrap_err().contains("writable copy"));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn slots_where_ovmf_looks() {
        let s = |slot, emul: &str| PciSlot { slot, func: 0, device: DeviceConfig::parse(emul, None).unwrap() };
        assert!(check_slots(&[s(0, "hostbridge"), s(31, "lpc")]).is_ok());
        assert!(check_slots(&[s(0, "hostbridge"), s(1, "lpc")]).unwrap_err().contains("-s 31,lpc"));
    }
}
