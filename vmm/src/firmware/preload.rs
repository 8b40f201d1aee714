//! The host does OVMF's first big job: SEC LZMA-decompresses the PEI and DXE firmware volumes
//! (13.5 MB from 1.5 MB in Debian's build) from flash into RAM, which under PVM's instruction
//! emulator takes over 15 minutes. The VMM decompresses them instead, puts them where SEC would
//! (the PEI volume at the address its PEI core is linked for, the DXE volume right after it, as
//! OVMF's memory layout has them), and answers SEC's "is this an S3 resume?" CMOS read with yes:
//! OVMF built without SMM then takes the PEI volume already in RAM (`FindPeiCoreImageBase`).
//! PEI reads the same CMOS register again, gets 0 and boots normally, finding the DXE volume
//! where it expects it. Firmware of another layout is left to decompress itself.

use std::ops::Range;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::boot::decompress::{self, Format};

/// EE4E5898-3914-4259-9D6E-DC7BD79403CF as stored: the LZMA GUID-defined section.
const LZMA_SECTION_GUID: [u8; 16] =
    [0x98, 0x58, 0x4e, 0xee, 0x14, 0x39, 0x59, 0x42, 0x9d, 0x6e, 0xdc, 0x7b, 0xd7, 0x94, 0x03, 0xcf];
const FILE_PEI_CORE: u8 = 0x04;
const FILE_FV_IMAGE: u8 = 0x0b;
const SECTION_GUID_DEFINED: u8 = 0x02;
const SECTION_PE32: u8 = 0x10;
const SECTION_TE: u8 = 0x12;
const SECTION_FV_IMAGE: u8 = 0x17;
/// The most the main volume may decompress to (Debian's: 13.5 MB).
const MAX_MAIN_FV: usize = 64 << 20;
/// Where OVMF's images can be linked: below 4 GiB, page aligned volumes.
const PAGE: u64 = 4096;

fn le(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = b.get(at..at + n)?;
    Some(s.iter().rev().fold(0, |v, x| v << 8 | u64::from(*x)))
}

/// A firmware volume's length, if `b` starts with one.
fn fv_len(b: &[u8]) -> Option<usize> {
    (b.get(40..44)? == b"_FVH").then(|| le(b, 32, 8)).flatten().map(|l| l as usize)
}

/// The FFS files of a volume: (type, where its sections are).
fn files(fv: &[u8]) -> Vec<(u8, Range<usize>)> {
    let (Some(len), Some(header)) = (fv_len(fv), le(fv, 0x30, 2)) else { return Vec::new() };
    let end = len.min(fv.len());
    let mut out = Vec::new();
    let mut at = header as usize;
    while let Some(h) = fv.get(at..at + 24).filter(|_| at + 24 <= end) {
        let (kind, large) = (h[18], h[19] & 1 != 0);
        let (size, head) = if large {
            (le(fv, at + 24, 8).unwrap_or(0) as usize, 32)
        } else {
            (le(h, 20, 3).unwrap_or(0) as usize, 24)
        };
        // A large file's size is 8 bytes of the image: checked, not trusted.
        let Some(file_end) = at.checked_add(size).filter(|e| *e <= end) else { break };
        if size < head || h.iter().all(|b| *b == 0xff) {
            break;
        }
        out.push((kind, at + head..file_end));
        at = file_end.next_multiple_of(8);
    }
    out
}

/// The sections in `b[range]`: (type, where the section starts, where its data is).
fn sections(b: &[u8], range: Range<usize>) -> Vec<(u8, usize, Range<usize>)> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at + 4 <= range.end {
        let Some(size) = le(b, at, 3) else { break };
        let (size, head) =
            if size == 0xff_ffff { (le(b, at + 4, 4).unwrap_or(0) as usize, 8) } else { (size as usize, 4) };
        let Some(section_end) = at.checked_add(size).filter(|e| *e <= range.end) else { break };
        if size < head {
            break;
        }
        out.push((b[at + 3], at, at + head..section_end));
        at = section_end.next_multiple_of(4);
    }
    out
}

/// The LZMA stream of the compressed main volume in the flash image.
fn compressed_main_fv(code: &[u8]) -> Option<&[u8]> {
    (0..code.len()).step_by(PAGE as usize).find_map(|fv_at| {
        let fv = &code[fv_at..];
        files(fv).into_iter().filter(|(kind, _)| *kind == FILE_FV_IMAGE).find_map(|(_, body)| {
            let (kind, start, data) = sections(fv, body).into_iter().next()?;
            if kind != SECTION_GUID_DEFINED || fv.get(data.start..data.start + 16)? != LZMA_SECTION_GUID {
                return None;
            }
            let data_offset = le(fv, data.start + 16, 2)? as usize;
            fv.get(start + data_offset..data.end)
        })
    })
}

/// The address the PEI core is linked at, and where it sits in the PEI volume.
fn pei_core_link(pei: &[u8]) -> Option<(u64, usize)> {
    let (_, body) = files(pei).into_iter().find(|(kind, _)| *kind == FILE_PEI_CORE)?;
    sections(pei, body).into_iter().find_map(|(kind, _, data)| {
        let img = &pei[data.clone()];
        let base = match kind {
            // A TE image sits where its PE image base plus the stripped headers' size says.
            SECTION_TE if img.get(..2)? == b"VZ" => le(img, 16, 8)?.checked_add(le(img, 6, 2)?)?.checked_sub(40)?,
            SECTION_PE32 if img.get(..2)? == b"MZ" => {
                let pe = le(img, 0x3c, 4)? as usize;
                match le(img, pe + 24, 2)? {
                    0x10b => le(img, pe + 24 + 28, 4)?,
                    0x20b => le(img, pe + 24 + 24, 8)?,
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some((base, data.start))
    })
}

/// The volumes placed in RAM.
#[derive(Debug, PartialEq, Eq)]
pub struct Preloaded {
    pub pei: (u64, usize),
    pub dxe: (u64, usize),
}

/// Decompresses the volumes of `code` (the firmware image) into `mem`, if it is laid out the way
/// this module expects; None otherwise, or when RAM is too small (the firmware then does it).
pub fn preload(code: &[u8], mem: &GuestMemoryMmap) -> Result<Option<Preloaded>, String> {
    let Some(stream) = compressed_main_fv(code) else { return Ok(None) };
    let main = decompress::decode(Format::Lzma, stream, MAX_MAIN_FV, 0)
        .map_err(|e| format!("decompressing the firmware's main volume: {e}"))?
        .data;
    let volumes: Vec<Range<usize>> = sections(&main, 0..main.len())
        .into_iter()
        .filter(|(kind, _, _)| *kind == SECTION_FV_IMAGE)
        .map(|(_, _, data)| data)
        .collect();
    let [pei, dxe] = &volumes[..] else { return Ok(None) };
    let (pei, dxe) = (&main[pei.clone()], &main[dxe.clone()]);
    let (Some(pei_len), Some(dxe_len), Some((link, at))) = (fv_len(pei), fv_len(dxe), pei_core_link(pei)) else {
        return Ok(None);
    };
    let Some(pei_base) = link.checked_sub(at as u64).filter(|b| b % PAGE == 0) else { return Ok(None) };
    // The lengths and the link address are the image's: checked before any sum.
    if pei_len > pei.len() || dxe_len > dxe.len() || pei_base.checked_add((pei_len + dxe_len) as u64).is_none() {
        return Ok(None);
    }
    let dxe_base = pei_base + pei_len as u64;
    if !mem.check_range(GuestAddress(pei_base), pei_len + dxe_len) {
        return Ok(None);
    }
    for (bytes, base) in [(&pei[..pei_len], pei_base), (&dxe[..dxe_len], dxe_base)] {
        mem.write_slice(bytes, GuestAddress(base)).map_err(|e| format!("placing a firmware volume: {e}"))?;
    }
    Ok(Some(Preloaded { pei: (pei_base, pei_len), dxe: (dxe_base, dxe_len) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's OVMF (`.ci/run` installs the package): its volumes land where OVMF's memory
    /// layout puts them.
    #[test]
    fn debian_ovmf_volumes() {
        let code = std::fs::read("/usr/share/OVMF/OVMF_CODE_4M.fd").expect("Debian's ovmf package");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let p = preload(&code, &mem).unwrap().expect("Debian's OVMF layout");
        assert_eq!(p.pei.0, 0x82_0000);
        assert_eq!(p.dxe.0, p.pei.0 + p.pei.1 as u64);
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(p.dxe.0 + 40)).unwrap();
        assert_eq!(&sig, b"_FVH");
        // Too little RAM: left to the firmware.
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        assert_eq!(preload(&code, &small).unwrap(), None);
    }

    #[test]
    fn other_images_are_left_alone() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(preload(&[0xff; 0x4000], &mem).unwrap(), None);
        let mut fv = vec![0xffu8; 0x2000];
        fv[40..44].copy_from_slice(b"_FVH");
        fv[32..40].copy_from_slice(&0x2000u64.to_le_bytes());
        fv[0x30..0x32].copy_from_slice(&72u16.to_le_bytes());
        assert_eq!(preload(&fv, &mem).unwrap(), None);
    }
}
