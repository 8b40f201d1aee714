//! The initrd: where it goes in guest RAM, and its compressed members unpacked on the host.
//!
//! Distributions ship an initrd as a concatenation: uncompressed cpio archives (early microcode,
//! ACPI tables), zero padding, then a compressed main archive (gzip, zstd, xz, lz4, ...). The
//! kernel's `unpack_to_rootfs` walks it that way and also takes it with every member already
//! uncompressed, so the VMM decodes the compressed members and hands the kernel one stream of
//! plain cpio archives: what the kernel would have unpacked, with none of its emulated
//! decompression.

use std::path::Path;
use std::time::Instant;

use linux_loader::loader::bootparam::boot_params;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::decompress::{self, Format};
use crate::layout::{HIMEM, MMIO_HOLE};

/// Initrds stay below 2 GiB unless the kernel says it accepts more (boot protocol default).
const INITRD_MAX_DEFAULT: u64 = 0x7fff_ffff;
const PAGE: u64 = 0x1000;
const CPIO_HEADER: usize = 110;
const CPIO_TRAILER: &[u8] = b"TRAILER!!!\0";

/// Where the initrd went, and a line for the log when it was unpacked (or could not be).
pub struct Placed {
    pub addr: u64,
    pub size: u64,
    pub note: Option<String>,
}

/// Puts the initrd as high as allowed below the MMIO hole, page aligned, above the kernel;
/// with `unpack`, its compressed members decoded first (as it is when that fails or does not fit).
pub fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    params: &boot_params,
    kernel_end: u64,
    unpack: bool,
) -> Result<Placed, String> {
    let file = std::fs::read(path).map_err(|e| format!("initrd {}: {e}", path.display()))?;
    let addr_max = match params.hdr.initrd_addr_max {
        0 => INITRD_MAX_DEFAULT,
        n => u64::from(n),
    };
    let top = mem.last_addr().raw_value().min(MMIO_HOLE - 1).min(addr_max) + 1;
    let bottom = kernel_end.max(HIMEM);
    let room = (top.saturating_sub(bottom) & !(PAGE - 1)).saturating_sub(PAGE) as usize;

    let started = Instant::now();
    let (data, note) = match unpack.then(|| unpack_members(&file, room)) {
        Some(Ok(Some(u))) => {
            let names: Vec<_> = u.members.iter().map(|f| f.name()).collect();
            let note = format!(
                "initrd: {} compressed member(s) ({}) decompressed on the host, {} -> {} bytes in {} ms",
                names.len(),
                names.join(", "),
                file.len(),
                u.data.len(),
                started.elapsed().as_millis()
            );
            (u.data, Some(note))
        }
        Some(Err(e)) => (file, Some(format!("initrd: loaded as it is, the guest kernel unpacks it: {e}"))),
        Some(Ok(None)) | None => (file, None),
    };

    let size = data.len() as u64;
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE - 1))
        .filter(|a| *a >= bottom)
        .ok_or_else(|| format!("initrd {} ({size} bytes) does not fit in guest memory", path.display()))?;
    mem.write_slice(&data, GuestAddress(addr)).map_err(|e| format!("initrd: {e}"))?;
    Ok(Placed { addr, size, note })
}

/// An initrd with its compressed members decoded.
pub struct Unpacked {
    pub data: Vec<u8>,
    pub members: Vec<Format>,
}

/// Decodes the compressed members of `initrd` into one stream of plain cpio archives of at most
/// `limit` bytes. `None`: nothing to decode (no compressed member before anything unknown,
/// e.g. an uncompressed initramfs or an old-style disk image).
pub fn unpack_members(initrd: &[u8], limit: usize) -> Result<Option<Unpacked>, String> {
    let mut pos = skip_plain(initrd, 0)?;
    if pos == initrd.len() || Format::detect(&initrd[pos..]).is_none() {
        return Ok(None);
    }
    let mut out = Output { data: initrd[..pos].to_vec(), limit };
    let mut members = Vec::new();
    while pos < initrd.len() {
        let format = Format::detect(&initrd[pos..])
            .ok_or_else(|| format!("neither a cpio archive nor a compressed one at offset {pos}"))?;
        let what = || format!("{} member at offset {pos}", format.name());
        out.pad_to(0)?;
        let room = limit - out.data.len();
        let member = decompress::decode(format, &initrd[pos..], room, 0).map_err(|e| format!("{}: {e}", what()))?;
        // The kernel feeds a member's output to its cpio parser only: it must hold whole
        // archives (and padding), nothing compressed or unknown.
        if skip_plain(&member.data, 0)? != member.data.len() {
            return Err(format!("{} does not hold cpio archives", what()));
        }
        out.extend(&member.data)?;
        members.push(format);
        pos += member.consumed;

        let plain_end = skip_plain(initrd, pos)?;
        if plain_end > pos {
            // Archives keep the 4-byte alignment they had in the file.
            out.pad_to(pos % 4)?;
            out.extend(&initrd[pos..plain_end])?;
            pos = plain_end;
        }
    }
    Ok(Some(Unpacked { data: out.data, members }))
}

struct Output {
    data: Vec<u8>,
    limit: usize,
}

impl Output {
    fn extend(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() > self.limit - self.data.len() {
            return Err(format!("more than {} bytes unpacked (the room for it in guest memory)", self.limit));
        }
        self.data.extend_from_slice(bytes);
        Ok(())
    }

    /// Zero padding up to the next offset that is `phase` modulo 4 (the kernel skips zeros).
    fn pad_to(&mut self, phase: usize) -> Result<(), String> {
        let pad = (phase + 4 - self.data.len() % 4) % 4;
        self.extend(&[0; 3][..pad])
    }
}

/// The offset past the zero padding and uncompressed cpio archives from `pos` on, where a
/// compressed member (or the end, or something unknown) starts. As in the kernel, an archive
/// starts with '0' at a 4-byte aligned offset.
fn skip_plain(data: &[u8], mut pos: usize) -> Result<usize, String> {
    while let Some(&b) = data.get(pos) {
        match b {
            0 => pos += 1,
            b'0' if pos.is_multiple_of(4) => pos = cpio_end(data, pos)?,
            _ => break,
        }
    }
    Ok(pos)
}

/// The end of the newc cpio archive at `pos`: past its TRAILER!!! entry, padding included.
fn cpio_end(data: &[u8], mut pos: usize) -> Result<usize, String> {
    let align = |n: usize| (n + 3) & !3;
    loop {
        let header =
            data.get(pos..pos + CPIO_HEADER).ok_or_else(|| format!("cpio header truncated at offset {pos}"))?;
        if !header.starts_with(b"070701") && !header.starts_with(b"070702") {
            return Err(format!("no cpio (newc) magic at offset {pos}"));
        }
        // Fields are 8 hex digits after the 6-byte magic: filesize is the 7th, namesize the 12th.
        let field = |i: usize| {
            std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .ok()
                .and_then(|s| usize::from_str_radix(s, 16).ok())
                .ok_or_else(|| format!("bad cpio header at offset {pos}"))
        };
        let (file_size, name_size) = (field(6)?, field(11)?);
        let name_start = pos + CPIO_HEADER;
        let name = data
            .get(name_start..name_start + name_size)
            .ok_or_else(|| format!("cpio name truncated at offset {pos}"))?;
        let next = align(align(name_start + name_size) + file_size);
        if name == CPIO_TRAILER {
            return Ok(next.min(data.len()));
        }
        if next > data.len() {
            return Err(format!("cpio entry at offset {pos} runs past the end"));
        }
        pos = next;
    }
}

#[cfg(test)]
mod tests {
    use super::super::decompress::tests::{compress, rng, sample, DECODED};
    use super::*;

    /// A newc archive of the given (name, contents) files, as gen_init_cpio and cpio write it.
    fn cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut add = |name: &str, body: &[u8]| {
            let fields = [1, 0o100644, 0, 0, 1, 0, body.len(), 0, 0, 0, 0, name.len() + 1, 0];
            out.extend_from_slice(b"070701");
            for f in fields {
                out.extend_from_slice(format!("{f:08X}").as_bytes());
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.resize((out.len() + 3) & !3, 0);
            out.extend_from_slice(body);
            out.resize((out.len() + 3) & !3, 0);
        };
        for (name, body) in files {
            add(name, body);
        }
        add("TRAILER!!!", b"");
        out.resize((out.len() + 511) & !511, 0); // cpio's block padding
        out
    }

    fn early() -> Vec<u8> {
        cpio(&[("kernel/x86/microcode/GenuineIntel.bin", b"microcode")])
    }

    fn main_archive() -> Vec<u8> {
        cpio(&[("init", b"#!/bin/sh\necho hi\n"), ("bin/busybox", &sample(700_000))])
    }

    #[test]
    fn early_cpio_then_each_compressed_format() {
        let (early, main) = (early(), main_archive());
        for f in DECODED {
            let mut initrd = early.clone();
            initrd.extend_from_slice(&compress(f, &main));
            let u = unpack_members(&initrd, 64 << 20).unwrap_or_else(|e| panic!("{f:?}: {e}")).unwrap();
            assert_eq!(u.members, vec![f]);
            let want = [early.clone(), main.clone()].concat();
            let diff = u.data.iter().zip(&want).position(|(a, b)| a != b);
            assert!(u.data == want, "{f:?}: {} vs {} bytes, first difference at {diff:?}", u.data.len(), want.len());
        }
    }

    #[test]
    fn mixed_members_with_padding_keep_alignment() {
        // gzip member, odd padding, a plain archive, then zstd: what `cat` of several makes.
        let a = cpio(&[("a", b"1")]);
        let b = cpio(&[("b", b"22")]);
        let c = cpio(&[("c", b"333")]);
        let mut initrd = compress(Format::Gzip, &a);
        let pad = (4 - initrd.len() % 4) % 4 + 4;
        initrd.resize(initrd.len() + pad, 0);
        initrd.extend_from_slice(&b);
        initrd.extend_from_slice(&compress(Format::Zstd, &c));
        initrd.extend_from_slice(&[0; 7]);
        let u = unpack_members(&initrd, 1 << 20).unwrap().unwrap();
        assert_eq!(u.members, vec![Format::Gzip, Format::Zstd]);
        // Every archive still parses from a 4-aligned offset, with nothing unknown left over.
        assert_eq!(skip_plain(&u.data, 0).unwrap(), u.data.len());
        for archive in [&a, &b, &c] {
            let at = u.data.windows(archive.len()).position(|w| w == &archive[..]).unwrap();
            assert_eq!(at % 4, 0);
        }
    }

    #[test]
    fn plain_or_unknown_initrds_are_left_alone() {
        assert!(unpack_members(&early(), 1 << 20).unwrap().is_none());
        let ext2_like = [vec![0u8; 1024], vec![0x53, 0xef, 1, 2, 3]].concat();
        assert!(unpack_members(&ext2_like, 1 << 20).unwrap().is_none());
        assert!(unpack_members(b"", 1 << 20).unwrap().is_none());
    }

    #[test]
    fn hostile_initrds_are_errors() {
        let main = main_archive();
        let gz = compress(Format::Gzip, &main);
        let cases: Vec<(&str, Vec<u8>, usize)> = vec![
            ("truncated", gz[..gz.len() / 2].to_vec(), 64 << 20),
            ("over the room", gz.clone(), main.len() - 1),
            ("not cpio inside", compress(Format::Xz, &sample(10_000)), 64 << 20),
            ("garbage after", [gz.clone(), b"junk".to_vec()].concat(), 64 << 20),
            ("lzo", [early(), b"\x89LZO\0\r\n\x1a\n\x10\x30".to_vec()].concat(), 64 << 20),
            ("bad cpio inside", compress(Format::Zstd, b"070701zzzz"), 64 << 20),
        ];
        for (what, initrd, limit) in cases {
            assert!(unpack_members(&initrd, limit).is_err(), "{what}");
        }
        // A member that expands past the room: an error before the memory is spent.
        let bomb = compress(Format::Zstd, &cpio(&[("zeros", &vec![0u8; 32 << 20])]));
        let err = unpack_members(&bomb, 1 << 20).err().unwrap();
        assert!(err.contains("more than 1048576 bytes"), "{err}");
    }

    #[test]
    fn mutated_initrds_end_in_bounded_output_or_an_error() {
        let initrd = [early(), compress(Format::Gzip, &cpio(&[("a", &sample(30_000))])), early()].concat();
        let mut next = rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let mut s = initrd.clone();
            for _ in 0..1 + next() % 4 {
                let i = next() as usize % s.len();
                s[i] = next() as u8;
            }
            if let Ok(Some(u)) = unpack_members(&s, 50_000) {
                assert!(u.data.len() <= 50_000);
            }
        }
    }

    #[test]
    fn loads_unpacked_high_and_falls_back_when_it_cannot() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let dir = std::env::temp_dir().join(format!("xhyve-initrd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("initrd.img");
        let (early, main) = (early(), main_archive());
        let gz = [early.clone(), compress(Format::Gzip, &main)].concat();
        std::fs::write(&path, &gz).unwrap();
        let params = boot_params::default();

        let p = load(&mem, &path, &params, 0x200_0000, true).unwrap();
        let want = [early.clone(), main.clone()].concat();
        assert_eq!(p.size, want.len() as u64);
        assert!(p.note.unwrap().contains("1 compressed member(s) (gzip)"));
        let mut back = vec![0u8; want.len()];
        mem.read_slice(&mut back, GuestAddress(p.addr)).unwrap();
        assert!(back == want);
        assert_eq!(p.addr % PAGE, 0);
        assert!(p.addr + p.size <= 64 << 20);

        // Switched off: as it is.
        let p = load(&mem, &path, &params, 0x200_0000, false).unwrap();
        assert_eq!((p.size, p.note), (gz.len() as u64, None));

        // Unpacked it would not fit above the kernel: as it is, with a note saying why.
        let kernel_end = (64 << 20) - gz.len() as u64 - 2 * PAGE;
        let p = load(&mem, &path, &params, kernel_end, true).unwrap();
        assert_eq!(p.size, gz.len() as u64);
        assert!(p.note.unwrap().contains("loaded as it is"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
