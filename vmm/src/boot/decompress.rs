//! Decoders for the compressed formats Linux takes for a bzImage's payload and for initramfs
//! members (the magics of the kernel's `lib/decompress.c`). The VMM decodes them on the host in
//! milliseconds; the guest kernel's own decompressor runs emulated on nested (PVM) hosts, at
//! ~1 us per instruction, and takes minutes there for a distribution's kernel or initrd.
//!
//! Every decoder is bounded: output past the caller's limit (derived from guest RAM) is an
//! error, so a hostile stream cannot make the host hold more than the guest could.

use std::io::Read;

use lzma_rust2::{Action, LzmaReader, Status, StreamResult, XzStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
}

/// Longer than the kernel's two-byte magics, so that plain data is rarely taken for a stream.
const MAGICS: &[(&[u8], Format)] = &[
    (&[0x1f, 0x8b], Format::Gzip),
    (b"BZh", Format::Bzip2),
    (&[0x5d, 0x00, 0x00], Format::Lzma), // lc=3 lp=0 pb=2, then a little-endian dictionary size
    (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Format::Xz),
    (&[0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a], Format::Lzo),
    (&LZ4_LEGACY_MAGIC.to_le_bytes(), Format::Lz4),
    (&[0x28, 0xb5, 0x2f, 0xfd], Format::Zstd),
];

/// The "legacy" frame of `lz4 -l`, the one Linux uses: the magic, then blocks of
/// [u32 LE compressed length][LZ4 block], each decoding to at most 8 MiB. It has no end mark:
/// it ends with its input, at a zero length (padding) or where a new frame's magic follows.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// LZ4_compressBound of a full block: no valid block is longer.
const LZ4_LEGACY_MAX_IN: usize = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;

/// Dictionaries up to this size are always allowed (`xz -9` and `lzma -9` use 64 MiB); above
/// it, no more than the output limit.
const DICT_FLOOR: usize = 64 << 20;

impl Format {
    pub fn detect(data: &[u8]) -> Option<Format> {
        MAGICS.iter().find(|(magic, _)| data.starts_with(magic)).map(|&(_, f)| f)
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
            Format::Bzip2 => "bzip2",
            Format::Lzma => "lzma",
            Format::Xz => "xz",
            Format::Lzo => "lzo",
            Format::Lz4 => "lz4",
            Format::Zstd => "zstd",
        }
    }
}

/// One decoded stream and the number of input bytes it took (what follows it is not read).
#[derive(Debug)]
pub struct Decoded {
    pub data: Vec<u8>,
    pub consumed: usize,
}

/// Decodes the stream of `format` at the start of `input` into at most `limit` bytes;
/// `size_hint` (0 if unknown) sizes the output buffer up front.
pub fn decode(format: Format, input: &[u8], limit: usize, size_hint: usize) -> Result<Decoded, String> {
    let mut out = Output { data: Vec::with_capacity(size_hint.min(limit)), limit };
    let consumed = match format {
        Format::Gzip => {
            let mut dec = flate2::bufread::GzDecoder::new(input);
            out.read_all(&mut dec)?;
            input.len() - dec.into_inner().len()
        }
        Format::Bzip2 => {
            let mut dec = bzip2::bufread::BzDecoder::new(input);
            out.read_all(&mut dec)?;
            input.len() - dec.into_inner().len()
        }
        Format::Zstd => {
            let mut rest = input;
            let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut rest).map_err(|e| e.to_string())?;
            out.read_all(&mut dec)?;
            drop(dec);
            input.len() - rest.len()
        }
        Format::Xz => {
            let mut stream = XzStream::new_mem_limit(false, dict_limit_kib(limit));
            drive(|i, o| stream.process(i, o, Action::Finish), input, &mut out)?
        }
        Format::Lzma => {
            // The reader, not LzmaStream: it hands back what it read past the stream's end.
            let mut dec = LzmaReader::new_mem_limit(input, dict_limit_kib(limit), None).map_err(|e| e.to_string())?;
            out.read_all(&mut dec)?;
            let (rest, unread) = dec.into_parts();
            input.len() - rest.len() - unread.len()
        }
        Format::Lz4 => lz4_legacy(input, &mut out)?,
        Format::Lzo => return Err("lzo: not decoded on the host (no maintained Rust decoder)".into()),
    };
    Ok(Decoded { data: out.data, consumed })
}

fn dict_limit_kib(limit: usize) -> u32 {
    u32::try_from(limit.max(DICT_FLOOR) / 1024).unwrap_or(u32::MAX - 1)
}

/// Output that refuses to grow past its limit.
struct Output {
    data: Vec<u8>,
    limit: usize,
}

impl Output {
    fn too_large(&self) -> String {
        format!("more than {} bytes once decompressed (the limit guest memory sets)", self.limit)
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() > self.limit - self.data.len() {
            return Err(self.too_large());
        }
        self.data.extend_from_slice(bytes);
        Ok(())
    }

    fn read_all(&mut self, reader: &mut impl Read) -> Result<(), String> {
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => self.push(&chunk[..n])?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Runs a sans-I/O decoder (lzma-rust2's) over the whole input until its stream ends.
fn drive(
    mut process: impl FnMut(&[u8], &mut [u8]) -> std::io::Result<StreamResult>,
    input: &[u8],
    out: &mut Output,
) -> Result<usize, String> {
    let mut chunk = vec![0u8; 1 << 20];
    let mut pos = 0;
    loop {
        let r = process(&input[pos..], &mut chunk).map_err(|e| e.to_string())?;
        pos += r.bytes_consumed;
        out.push(&chunk[..r.bytes_produced])?;
        if r.status == Status::StreamEnd {
            return Ok(pos);
        }
        if r.bytes_consumed == 0 && r.bytes_produced == 0 {
            return Err("truncated stream".into());
        }
    }
}

/// Walks a legacy lz4 frame the way the kernel's `unlz4` does (see LZ4_LEGACY_MAGIC).
fn lz4_legacy(input: &[u8], out: &mut Output) -> Result<usize, String> {
    if !input.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        return Err("lz4: no legacy frame magic".into());
    }
    let mut pos = 4;
    while let Some(word) = input.get(pos..pos + 4) {
        let len = u32::from_le_bytes(word.try_into().unwrap());
        if len == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        if len == 0 {
            break; // padding after the frame: not ours
        }
        let len = len as usize;
        if len > LZ4_LEGACY_MAX_IN {
            return Err(format!("lz4: a {len}-byte block at offset {pos} is longer than any legacy block"));
        }
        let block = input.get(pos + 4..pos + 4 + len).ok_or_else(|| format!("lz4: truncated block at offset {pos}"))?;
        let start = out.data.len();
        let room = LZ4_LEGACY_BLOCK.min(out.limit - start);
        out.data.resize(start + room, 0);
        let result = lz4_flex::block::decompress_into(block, &mut out.data[start..]);
        let produced = match result {
            Ok(n) => n,
            Err(lz4_flex::block::DecompressError::OutputTooSmall { .. }) if room < LZ4_LEGACY_BLOCK => {
                return Err(out.too_large())
            }
            Err(e) => return Err(format!("lz4: block at offset {pos}: {e}")),
        };
        out.data.truncate(start + produced);
        pos += 4 + len;
    }
    Ok(pos)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// Compressible but not trivial: text-like runs with a counter.
    pub fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| if i % 7 == 0 { (i / 7 % 251) as u8 } else { b"vmlinux initrd"[i % 14] }).collect()
    }

    /// Compresses with the crates' encoders (the Linux build uses the CLI tools; the formats are
    /// the same, and tests/vmm boots CLI-compressed files).
    pub fn compress(format: Format, data: &[u8]) -> Vec<u8> {
        match format {
            Format::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Format::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Format::Xz => {
                // As scripts/xz_wrap.sh does for x86 kernels: the x86 BCJ filter before LZMA2.
                let mut opts = lzma_rust2::XzOptions::with_preset(6);
                opts.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
                let mut e = lzma_rust2::XzWriter::new(Vec::new(), opts).unwrap();
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Format::Lzma => {
                // `lzma -9` from a pipe: the .lzma header with an unknown size, and an end marker.
                let opts = lzma_rust2::LzmaOptions::with_preset(6);
                let mut e = lzma_rust2::LzmaWriter::new_use_header(Vec::new(), &opts, None).unwrap();
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Format::Zstd => ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest),
            Format::Lz4 => {
                let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
                for block in data.chunks(LZ4_LEGACY_BLOCK) {
                    let c = lz4_flex::block::compress(block);
                    out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                    out.extend_from_slice(&c);
                }
                out
            }
            Format::Lzo => panic!("no lzo encoder"),
        }
    }

    pub const DECODED: [Format; 6] = [Format::Gzip, Format::Bzip2, Format::Lzma, Format::Xz, Format::Lz4, Format::Zstd];

    #[test]
    fn every_format_round_trips_and_stops_at_its_end() {
        for f in DECODED {
            // lz4: over one legacy block, so the frame has two.
            let data = sample(if f == Format::Lz4 { 9 << 20 } else { 1 << 20 });
            let mut stream = compress(f, &data);
            assert_eq!(Format::detect(&stream), Some(f), "{f:?}");
            let len = stream.len();
            stream.extend_from_slice(&[0, 0, 0, 0, b'0', b'7']); // padding, then the next member
            let d = decode(f, &stream, 64 << 20, 0).unwrap_or_else(|e| panic!("{f:?}: {e}"));
            assert!(d.data == data, "{f:?}: wrong output");
            assert_eq!(d.consumed, len, "{f:?}");
        }
    }

    #[test]
    fn output_past_the_limit_is_an_error() {
        let data = sample(256 << 10);
        for f in DECODED {
            let err = decode(f, &compress(f, &data), 1000, 0).unwrap_err();
            assert!(err.contains("more than 1000 bytes"), "{f:?}: {err}");
            decode(f, &compress(f, &data), data.len(), 0).unwrap();
        }
    }

    #[test]
    fn truncated_and_corrupt_streams_are_errors() {
        let data = sample(300_000);
        for f in DECODED {
            let stream = compress(f, &data);
            for cut in [stream.len() / 2, stream.len() - 1] {
                // lz4's legacy frame has no end mark: a cut at a block boundary is a shorter
                // frame, so check the output instead of expecting an error.
                match decode(f, &stream[..cut], 64 << 20, 0) {
                    Err(_) => {}
                    Ok(d) => assert!(f == Format::Lz4 && d.data.len() < data.len(), "{f:?} cut at {cut}"),
                }
            }
            let mut bad = stream.clone();
            let mid = bad.len() / 2;
            for b in &mut bad[mid..mid + 16] {
                *b ^= 0x5a;
            }
            if let Ok(d) = decode(f, &bad, 64 << 20, 0) {
                assert!(d.data != data, "{f:?}: corruption went unnoticed");
            }
        }
    }

    /// xorshift64: a fixed sequence, so a failure replays.
    pub fn rng(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    #[test]
    fn mutated_streams_end_in_bounded_output_or_an_error() {
        // Hostile input must not panic (release builds abort) nor run past the limit.
        let data = sample(64 << 10);
        let mut next = rng(0x2545_f491_4f6c_dd1d);
        for f in DECODED {
            let stream = compress(f, &data);
            for _ in 0..MUTATIONS {
                let mut s = stream.clone();
                for _ in 0..1 + next() % 8 {
                    let i = next() as usize % s.len();
                    s[i] = next() as u8;
                }
                if next().is_multiple_of(4) {
                    s.truncate(next() as usize % s.len());
                }
                if let Ok(d) = decode(f, &s, 100_000, 0) {
                    assert!(d.data.len() <= 100_000, "{f:?}: {} bytes out", d.data.len());
                    assert!(d.consumed <= s.len(), "{f:?}: {} of {} bytes consumed", d.consumed, s.len());
                }
            }
        }
    }

    const MUTATIONS: usize = 300;

    #[test]
    fn hostile_headers_are_refused_before_allocating() {
        // .lzma header asking for a 4 GiB dictionary; xz/zstd equivalents are bounded likewise.
        let mut lzma = vec![0x5d, 0xff, 0xff, 0xff, 0xff];
        lzma.extend_from_slice(&[0xff; 8]);
        lzma.extend_from_slice(&[0; 32]);
        let err = decode(Format::Lzma, &lzma, 1 << 20, 0).unwrap_err();
        assert!(!err.is_empty());
        // An lz4 block length far beyond any legacy block.
        let mut lz4 = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        lz4.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
        assert!(decode(Format::Lz4, &lz4, 1 << 20, 0).unwrap_err().contains("longer than any legacy block"));
        assert!(decode(Format::Lzo, b"\x89LZO\0\r\n\x1a\n", 1 << 20, 0).unwrap_err().contains("lzo"));
    }

    #[test]
    fn detects_by_magic_only() {
        assert_eq!(Format::detect(b"070701"), None);
        assert_eq!(Format::detect(&[0x1f]), None);
        assert_eq!(Format::detect(b"BZh9"), Some(Format::Bzip2));
        assert_eq!(Format::detect(b"\x89LZO\0\r\n\x1a\n"), Some(Format::Lzo));
    }
}
