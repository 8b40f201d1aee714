//! The kernel inside a bzImage: its setup header, its compressed payload (boot protocol 2.08+
//! `payload_offset`/`payload_length`) and the vmlinux ELF the payload decodes to on the host.
//!
//! The payload is what `arch/x86/boot/compressed/Makefile` packs: the stripped vmlinux ELF, then
//! (on relocatable kernels with KASLR) its relocation table, compressed, then the uncompressed
//! size as a little-endian u32 (gzip's own ISIZE; appended after the stream for the others).
//! The relocations only serve the guest decompressor's virtual KASLR: an ELF loaded at its
//! physical addresses runs as an unrandomised kernel, as with any vmlinux.

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

use super::decompress::{self, Format};

const SETUP_HEADER_OFFSET: usize = 0x1f1;
const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const XLF_KERNEL_64: u16 = 0x01;
/// The boot protocol version that added `payload_offset` and `payload_length`.
const PAYLOAD_FIELDS_VERSION: u16 = 0x0208;

/// A bzImage's decoded kernel.
pub struct Vmlinux {
    /// The bzImage's setup header: the zero page takes it as the bzImage path does.
    pub header: setup_header,
    /// The vmlinux ELF (followed by the relocation table, which nothing reads).
    pub elf: Vec<u8>,
    pub format: Format,
    pub compressed_len: usize,
}

/// Decodes the payload of the bzImage `image` into at most `limit` bytes.
pub fn decompress(image: &[u8], limit: usize) -> Result<Vmlinux, String> {
    let mut header = setup_header::default();
    let end = SETUP_HEADER_OFFSET + header.as_slice().len();
    header.as_mut_slice().copy_from_slice(image.get(SETUP_HEADER_OFFSET..end).ok_or("shorter than a setup header")?);
    if header.header != HDR_MAGIC {
        return Err("no bzImage setup header".into());
    }
    let (version, offset, length) = (header.version, header.payload_offset, header.payload_length);
    if version < PAYLOAD_FIELDS_VERSION {
        return Err(format!("boot protocol {version:#x} has no payload_offset (2.08+)"));
    }
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err("not a 64-bit kernel".into());
    }
    let setup_sects = match header.setup_sects {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + offset as usize;
    let payload = image
        .get(start..start + length as usize)
        .filter(|p| p.len() > 4)
        .ok_or_else(|| format!("payload ({length} bytes at {start:#x}) lies outside the file"))?;
    let format = Format::detect(payload)
        .ok_or_else(|| format!("payload compression unknown (magic {:02x} {:02x})", payload[0], payload[1]))?;
    let (stream, trailer) = payload.split_at(payload.len() - 4);
    let size = u32::from_le_bytes(trailer.try_into().unwrap()) as usize;
    if size > limit {
        return Err(format!("payload decompresses to {size} bytes, more than guest memory ({limit})"));
    }
    // gzip's trailer is its own ISIZE; the other streams end before the appended size.
    let stream = if format == Format::Gzip { payload } else { stream };
    let decoded = decompress::decode(format, stream, limit, size).map_err(|e| format!("{}: {e}", format.name()))?;
    if decoded.data.len() != size {
        return Err(format!("{} payload gave {} bytes, its trailer says {size}", format.name(), decoded.data.len()));
    }
    if !decoded.data.starts_with(b"\x7fELF") {
        return Err(format!("{} payload does not hold an ELF kernel", format.name()));
    }
    Ok(Vmlinux { header, elf: decoded.data, format, compressed_len: payload.len() })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::decompress::tests::{compress, sample, DECODED};
    use super::*;

    /// A minimal x86-64 vmlinux: one PT_LOAD of `body` at physical `paddr`, entry at its start.
    pub fn tiny_elf(paddr: u64, body: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; 0x78];
        e[..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        e[32..40].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        e[52..54].copy_from_slice(&0x40u16.to_le_bytes()); // e_ehsize
        e[54..56].copy_from_slice(&0x38u16.to_le_bytes()); // e_phentsize
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = &mut e[0x40..0x78];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // p_offset
        ph[16..24].copy_from_slice(&(0xffff_ffff_8000_0000 + paddr).to_le_bytes()); // p_vaddr
        ph[24..32].copy_from_slice(&paddr.to_le_bytes()); // p_paddr
        ph[32..40].copy_from_slice(&(body.len() as u64).to_le_bytes()); // p_filesz
        ph[40..48].copy_from_slice(&(body.len() as u64 + 0x1000).to_le_bytes()); // p_memsz (+bss)
        ph[48..56].copy_from_slice(&0x20_0000u64.to_le_bytes()); // p_align
        e.resize(0x1000, 0);
        e.extend_from_slice(body);
        e
    }

    /// A bzImage as the kernel build lays it out: boot sector + setup (setup_sects = 3), then
    /// the protected-mode part with `payload` (compressed kernel + size trailer) at offset 0x100.
    pub fn tiny_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 4 * 512];
        let put = |img: &mut Vec<u8>, at: usize, v: &[u8]| img[at..at + v.len()].copy_from_slice(v);
        put(&mut img, 0x1f1, &[3]); // setup_sects
        put(&mut img, 0x1fe, &0xaa55u16.to_le_bytes());
        put(&mut img, 0x202, &HDR_MAGIC.to_le_bytes());
        put(&mut img, 0x206, &0x020fu16.to_le_bytes()); // version
        put(&mut img, 0x211, &[0x01]); // loadflags: LOADED_HIGH
        put(&mut img, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
        put(&mut img, 0x236, &0x0003u16.to_le_bytes()); // xloadflags: KERNEL_64 | CAN_BE_LOADED_ABOVE_4G
        put(&mut img, 0x238, &2047u32.to_le_bytes()); // cmdline_size
        put(&mut img, 0x248, &0x100u32.to_le_bytes()); // payload_offset
        put(&mut img, 0x24c, &(payload.len() as u32).to_le_bytes()); // payload_length
        img.resize(4 * 512 + 0x100, 0x90);
        img.extend_from_slice(payload);
        img.resize(img.len() + 0x40, 0x90); // the rest of the protected-mode part
        img
    }

    /// `elf` compressed as the kernel build does (see the module comment).
    pub fn payload(format: Format, elf: &[u8]) -> Vec<u8> {
        let mut p = compress(format, elf);
        if format != Format::Gzip {
            p.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        }
        p
    }

    #[test]
    fn every_format_gives_back_the_elf_and_header() {
        let mut elf = tiny_elf(0x100_0000, &sample(1 << 20));
        elf.extend_from_slice(&[0u8; 64]); // the relocation table goes along
        for f in DECODED {
            let v = decompress(&tiny_bzimage(&payload(f, &elf)), 64 << 20).unwrap_or_else(|e| panic!("{f:?}: {e}"));
            assert!(v.elf == elf, "{f:?}");
            assert_eq!(v.format, f);
            let version = v.header.version;
            assert_eq!(version, 0x020f);
        }
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let elf = tiny_elf(0x100_0000, &sample(4096));
        // Unknown compression.
        let err = decompress(&tiny_bzimage(&[0x42; 64]), 64 << 20).err().unwrap();
        assert!(err.contains("compression unknown"), "{err}");
        // A trailer that disagrees with the stream.
        let mut p = payload(Format::Zstd, &elf);
        let n = p.len();
        p[n - 4..].copy_from_slice(&(elf.len() as u32 + 1).to_le_bytes());
        assert!(decompress(&tiny_bzimage(&p), 64 << 20).err().unwrap().contains("trailer says"));
        // A payload bigger than guest memory, by its trailer.
        assert!(decompress(&tiny_bzimage(&payload(Format::Xz, &elf)), 1024)
            .err()
            .unwrap()
            .contains("more than guest memory"));
        // Not an ELF inside.
        let err = decompress(&tiny_bzimage(&payload(Format::Gzip, &sample(5000))), 64 << 20).err().unwrap();
        assert!(err.contains("does not hold an ELF"), "{err}");
        // payload_length past the end of the file; an old boot protocol.
        let mut img = tiny_bzimage(&payload(Format::Lz4, &elf));
        img[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decompress(&img, 64 << 20).err().unwrap().contains("outside the file"));
        img[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
        assert!(decompress(&img, 64 << 20).err().unwrap().contains("2.08"));
        assert!(decompress(&[0u8; 100], 64 << 20).is_err());
    }
}
