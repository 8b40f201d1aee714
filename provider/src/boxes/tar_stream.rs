//! The members of a tar stream, with what the headers before each say about it resolved: GNU
//! long names and links, PAX records (`path`, `linkpath`, `size`) and sparse maps (GNU `S`
//! headers, PAX 0.0, 0.1 and 1.0). The `tar` crate parses each header; the walk is ours because
//! the crate's expands a sparse file's holes into zeros to be read, knows no PAX sparse map, reads
//! extended headers of any size into memory and takes an archive cut at a header for its end.
//! Every size here is bounded, and no error quotes the bytes it could not parse.

use crate::error::{Error, Result};
use std::io::{self, Read};
use tar::{EntryType, GnuExtSparseHeader, GnuSparseHeader, Header, PaxExtensions};

const BLOCK: u64 = 512;
/// Largest PAX extended header, GNU long name or long link (PAX 0.x sparse maps live there).
const MAX_EXTENDED: u64 = 8 << 20;
/// Most regions in one sparse file's map.
pub const MAX_REGIONS: usize = 1 << 20;
/// Largest apparent size of a sparse file (ext4's largest file).
pub const MAX_SPARSE_SIZE: u64 = 16 << 40;

/// One run of data in a sparse file; the bytes between runs are holes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Sparse {
    /// GNU `S` and PAX 0.0/0.1: the map came in the headers; the data holds the regions.
    Map { size: u64, regions: Vec<Region> },
    /// PAX 1.0: the map leads the member's data, padded to a block.
    MapInData { size: u64 },
}

#[derive(Debug)]
pub struct Member {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: EntryType,
    pub mode: u32,
    /// Bytes of data in the archive.
    pub size: u64,
    pub sparse: Option<Sparse>,
}

impl Member {
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// What the extended headers before a member said about it.
#[derive(Default)]
struct Extended {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

pub struct TarStream<R> {
    r: R,
    /// Bytes consumed so far (where the next block starts, between members).
    pos: u64,
    /// Data of the current member not read yet, then its padding.
    left: u64,
    pad: u64,
}

fn not_tar() -> Error {
    Error::bad_archive("not a box (tar, tar.gz or zip): its first block is not a tar header")
}

fn broken(what: impl std::fmt::Display) -> Error {
    Error::bad_archive(format!("broken or truncated archive: {what}"))
}

/// An error of the stream under the archive: ours (a download, a cancel, a bomb) keep their
/// code; the rest mean a broken archive (e.g. a gzip stream that ends early).
pub fn stream_error(e: io::Error) -> Error {
    let e: Error = e.into();
    if e.code != crate::error::code::INTERNAL {
        return e;
    }
    broken(e.message)
}

impl<R: Read> TarStream<R> {
    pub fn new(r: R) -> TarStream<R> {
        TarStream { r, pos: 0, left: 0, pad: 0 }
    }

    /// Fills `buf` unless the stream ends first; returns the bytes read.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_error(e)),
            }
        }
        Ok(got)
    }

    fn read_full(&mut self, buf: &mut [u8], inside: &str) -> Result<()> {
        if self.read_some(buf)? < buf.len() {
            return Err(broken(format!("the archive ends inside {inside} at byte {}", self.pos)));
        }
        Ok(())
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.read_full(&mut buf[..k], "a member")?;
            n -= k as u64;
        }
        Ok(())
    }

    /// The data of an extended header (bounded), with its padding skipped.
    fn read_extended(&mut self, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > MAX_EXTENDED {
            return Err(Error::bad_archive(format!(
                "{what} of {size} bytes at byte {}: more than {MAX_EXTENDED} bytes, refused",
                self.pos
            )));
        }
        let mut v = vec![0u8; size as usize];
        self.read_full(&mut v, what)?;
        self.skip(padding(size))?;
        Ok(v)
    }

    /// The next member, or None after the end-of-archive block. The rest of the previous
    /// member's data is skipped. An archive that ends before that block is refused: it was cut.
    pub fn next_member(&mut self) -> Result<Option<Member>> {
        self.skip(self.left + self.pad)?;
        self.left = 0;
        self.pad = 0;
        let mut ext = Extended::default();
        loop {
            let mut block = [0u8; BLOCK as usize];
            let at = self.pos;
            let got = self.read_some(&mut block)?;
            if at == 0 && got < block.len() {
                return Err(not_tar());
            }
            if got == 0 {
                return Err(broken(format!("the archive ends at byte {at} without its end-of-archive block")));
            }
            if got < block.len() {
                return Err(broken(format!("the archive ends inside the header at byte {at}")));
            }
            if block.iter().all(|&b| b == 0) {
                if ext.long_name.is_some() || ext.long_link.is_some() || ext.pax.is_some() {
                    return Err(broken("an extended header describes no member"));
                }
                return Ok(None);
            }
            let h = Header::from_byte_slice(&block);
            if !checksum_ok(h) {
                return Err(if at == 0 {
                    not_tar()
                } else {
                    broken(format!("the block at byte {at} is not a tar header (bad checksum)"))
                });
            }
            let size = h.entry_size().map_err(|_| broken(format!("the header at byte {at} has a malformed size")))?;
            let kind = h.entry_type();
            let slot = match kind {
                EntryType::XHeader => &mut ext.pax,
                EntryType::GNULongName => &mut ext.long_name,
                EntryType::GNULongLink => &mut ext.long_link,
                EntryType::XGlobalHeader => {
                    self.skip(size + padding(size))?;
                    continue;
                }
                _ => {
                    let m = self.member(h, size, ext)?;
                    self.left = m.size;
                    self.pad = padding(m.size);
                    return Ok(Some(m));
                }
            };
            if slot.is_some() {
                return Err(broken(format!("two extended headers of one kind for one member at byte {at}")));
            }
            let what = if kind == EntryType::XHeader { "a PAX extended header" } else { "a GNU long name or link" };
            *slot = Some(self.read_extended(size, what)?);
        }
    }

    fn member(&mut self, h: &Header, mut size: u64, ext: Extended) -> Result<Member> {
        let mut path = ext.long_name.map(trim_nul).unwrap_or_else(|| h.path_bytes().into_owned());
        let mut link =
            ext.long_link.map(trim_nul).unwrap_or_else(|| h.link_name_bytes().unwrap_or_default().into_owned());
        let mut sparse = None;
        if let Some(pax) = ext.pax {
            let rec = PaxRecords::parse(&pax)?;
            if let Some(p) = rec.get("path") {
                path = p.to_vec();
            }
            if let Some(l) = rec.get("linkpath") {
                link = l.to_vec();
            }
            if let Some(s) = rec.get("size") {
                size = number(s).ok_or_else(|| broken("a PAX size record is not a number"))?;
            }
            sparse = rec.sparse(&mut path)?;
        }
        let name = String::from_utf8_lossy(&path).into_owned();
        if h.entry_type() == EntryType::GNUSparse {
            sparse = Some(self.gnu_sparse(h, &name)?);
        }
        let mode = h.mode().unwrap_or(0o644);
        Ok(Member { path, link, kind: h.entry_type(), mode, size, sparse })
    }

    /// A GNU `S` header's map: four regions in the header, 21 in each extension block after it.
    fn gnu_sparse(&mut self, h: &Header, name: &str) -> Result<Sparse> {
        let bad = |what: &str| Error::bad_archive(format!("sparse map of {name:?}: {what}"));
        let gnu = h.as_gnu().ok_or_else(|| bad("a sparse member without a GNU header"))?;
        let size = gnu.real_size().map_err(|_| bad("a malformed real size"))?;
        let mut regions = Vec::new();
        let mut add = |s: &GnuSparseHeader| -> Result<()> {
            if s.is_empty() {
                return Ok(());
            }
            if regions.len() >= MAX_REGIONS {
                return Err(bad(&format!("more than {MAX_REGIONS} regions")));
            }
            let offset = s.offset().map_err(|_| bad("a malformed offset"))?;
            let len = s.length().map_err(|_| bad("a malformed length"))?;
            regions.push(Region { offset, len });
            Ok(())
        };
        gnu.sparse.iter().try_for_each(&mut add)?;
        let mut extended = gnu.is_extended();
        let mut blocks = 0;
        while extended {
            blocks += 1;
            // Counted apart from the regions: empty extension blocks add none.
            if blocks > MAX_REGIONS / 21 + 1 {
                return Err(bad(&format!("more than {MAX_REGIONS} regions")));
            }
            let mut ext = GnuExtSparseHeader::new();
            self.read_full(ext.as_mut_bytes(), "a sparse map")?;
            ext.sparse().iter().try_for_each(&mut add)?;
            extended = ext.is_extended();
        }
        Ok(Sparse::Map { size, regions })
    }
}

impl<R: Read> TarStream<R> {
    /// The current member's data: exactly its size, or an error if the archive ends first.
    pub fn data(&mut self) -> Data<'_, R> {
        Data { s: self }
    }
}

pub struct Data<'a, R> {
    s: &'a mut TarStream<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let s = &mut *self.s;
        if s.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(s.left) as usize;
        let k = s.r.read(&mut buf[..n])?;
        if k == 0 {
            return Err(broken(format!("the archive ends inside a member's data at byte {}", s.pos)).into());
        }
        s.left -= k as u64;
        s.pos += k as u64;
        Ok(k)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// The header checksum: the sum of its bytes with the checksum field as spaces.
fn checksum_ok(h: &Header) -> bool {
    let b = h.as_bytes();
    let sum: u32 = b[..148].iter().chain(&b[156..]).map(|&x| u32::from(x)).sum::<u32>() + 8 * u32::from(b' ');
    h.cksum().is_ok_and(|c| c == sum)
}

fn number(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.trim().parse().ok()
}

/// A PAX extended header's records, in order (PAX 0.0 repeats its sparse keys).
struct PaxRecords<'a>(Vec<(&'a str, &'a [u8])>);

impl<'a> PaxRecords<'a> {
    fn parse(data: &'a [u8]) -> Result<PaxRecords<'a>> {
        let mut v = Vec::new();
        for r in PaxExtensions::new(data) {
            let r = r.map_err(|_| broken("a malformed PAX extended header"))?;
            let key = r.key().map_err(|_| broken("a PAX record key is not UTF-8"))?;
            v.push((key, r.value_bytes()));
        }
        Ok(PaxRecords(v))
    }

    fn get(&self, key: &str) -> Option<&'a [u8]> {
        self.0.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The sparse map the records describe (GNU's PAX formats 0.0, 0.1 and 1.0), renaming the
    /// member to its real name.
    fn sparse(&self, path: &mut Vec<u8>) -> Result<Option<Sparse>> {
        if !self.0.iter().any(|(k, _)| k.starts_with("GNU.sparse.")) {
            return Ok(None);
        }
        if let Some(n) = self.get("GNU.sparse.name") {
            *path = n.to_vec();
        }
        let name = String::from_utf8_lossy(path).into_owned();
        let bad = |what: &str| Error::bad_archive(format!("sparse map of {name:?}: {what}"));
        let num = |key: &str| -> Result<u64> {
            number(self.get(key).ok_or_else(|| bad(&format!("no {key}")))?)
                .ok_or_else(|| bad(&format!("{key} is not a number")))
        };
        match (self.get("GNU.sparse.major"), self.get("GNU.sparse.minor")) {
            (Some(b"1"), Some(b"0")) => return Ok(Some(Sparse::MapInData { size: num("GNU.sparse.realsize")? })),
            (None, None) => {}
            _ => return Err(bad("unsupported GNU sparse format version (1.0, 0.1 and 0.0 are read)")),
        }
        let size = num("GNU.sparse.size")?;
        let mut nums = Vec::new();
        if let Some(map) = self.get("GNU.sparse.map") {
            // 0.1: offset,size,offset,size...
            for n in map.split(|&b| b == b',').filter(|n| !n.is_empty()) {
                nums.push(number(n).ok_or_else(|| bad("a number of GNU.sparse.map is not a number"))?);
            }
        } else {
            // 0.0: GNU.sparse.offset and GNU.sparse.numbytes records, in pairs.
            for (k, v) in &self.0 {
                if *k == "GNU.sparse.offset" || *k == "GNU.sparse.numbytes" {
                    let want = if nums.len() % 2 == 0 { "GNU.sparse.offset" } else { "GNU.sparse.numbytes" };
                    if *k != want {
                        return Err(bad("GNU.sparse.offset and GNU.sparse.numbytes records out of order"));
                    }
                    nums.push(number(v).ok_or_else(|| bad(&format!("a {k} is not a number")))?);
                }
            }
        }
        if nums.len() % 2 != 0 {
            return Err(bad("an offset without a length"));
        }
        if nums.len() / 2 > MAX_REGIONS {
            return Err(bad(&format!("more than {MAX_REGIONS} regions")));
        }
        let regions = nums.chunks(2).map(|c| Region { offset: c[0], len: c[1] }).collect();
        Ok(Some(Sparse::Map { size, regions }))
    }
}

/// Reads a PAX 1.0 map from the start of a member's data: the count of regions, then each
/// one's offset and length, one decimal number a line, padded to a block. Returns the map and
/// the bytes it took.
pub fn read_map(r: &mut impl Read, name: &str) -> Result<(Vec<Region>, u64)> {
    let bad = |what: String| Error::bad_archive(format!("sparse map of {name:?}: {what}"));
    let mut regions = Vec::new();
    let (mut count, mut offset): (Option<u64>, Option<u64>) = (None, None);
    let (mut cur, mut digits) = (0u64, 0);
    let mut used = 0u64;
    let mut block = [0u8; BLOCK as usize];
    loop {
        r.read_exact(&mut block).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => bad("it is longer than the member".into()),
            _ => stream_error(e),
        })?;
        used += BLOCK;
        for &b in &block {
            if b != b'\n' {
                cur = Some(b)
                    .filter(u8::is_ascii_digit)
                    .and_then(|d| cur.checked_mul(10)?.checked_add(u64::from(d - b'0')))
                    .ok_or_else(|| bad("a line that is no decimal number below 2^64".into()))?;
                digits += 1;
                continue;
            }
            if digits == 0 {
                return Err(bad("an empty line".into()));
            }
            match (count, offset) {
                (None, _) if cur > MAX_REGIONS as u64 => {
                    return Err(bad(format!("{cur} regions, more than {MAX_REGIONS}")));
                }
                (None, _) => count = Some(cur),
                (Some(_), None) => offset = Some(cur),
                (Some(_), Some(o)) => {
                    regions.push(Region { offset: o, len: cur });
                    offset = None;
                }
            }
            (cur, digits) = (0, 0);
            if count == Some(regions.len() as u64) {
                return Ok((regions, used));
            }
        }
    }
}

/// Checks a sparse map against the file's size and the data the member holds: regions in
/// order, not overlapping, inside the file; the file no larger than a file system holds.
pub fn check_map(name: &str, size: u64, regions: &[Region], data: u64) -> Result<()> {
    let bad = |what: String| Error::bad_archive(format!("sparse map of {name:?}: {what}"));
    if size > MAX_SPARSE_SIZE {
        return Err(bad(format!("a file of {size} bytes is too large (at most {MAX_SPARSE_SIZE})")));
    }
    let (mut end, mut total) = (0u64, 0u64);
    for r in regions {
        if r.offset < end {
            return Err(bad("regions out of order or overlapping".into()));
        }
        end = r.offset.checked_add(r.len).filter(|&e| e <= size).ok_or_else(|| {
            bad(format!("a region at {} of {} bytes ends beyond the file's {size} bytes", r.offset, r.len))
        })?;
        total += r.len;
    }
    if total != data {
        return Err(bad(format!("it lists {total} bytes of data but the member holds {data}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_10_map() {
        let mut text = b"2\n0\n512\n4096\n3\n".to_vec();
        text.resize(1024, 0);
        text.extend_from_slice(b"data");
        let (m, used) = read_map(&mut &text[..], "d").unwrap();
        assert_eq!(m, vec![Region { offset: 0, len: 512 }, Region { offset: 4096, len: 3 }]);
        assert_eq!(used, 512);
        let empty = b"0\n".iter().copied().chain(std::iter::repeat_n(0, 510)).collect::<Vec<u8>>();
        assert_eq!(read_map(&mut &empty[..], "d").unwrap(), (vec![], 512));
        for bad in [&b"x\n"[..], b"\n", b"1\n0\n", b"99999999999999999999999\n", b"2000000\n"] {
            let mut t = bad.to_vec();
            t.resize(512, 0);
            assert!(read_map(&mut &t[..], "d").unwrap_err().message.contains("sparse map"), "{bad:?}");
        }
    }

    #[test]
    fn maps_are_checked() {
        let r = |offset, len| Region { offset, len };
        assert!(check_map("d", 100, &[r(0, 10), r(10, 5), r(90, 10)], 25).is_ok());
        assert!(check_map("d", 100, &[], 0).is_ok());
        for (regions, data, word) in [
            (vec![r(0, 10), r(5, 10)], 20, "overlapping"),
            (vec![r(50, 10), r(0, 10)], 20, "out of order"),
            (vec![r(95, 10)], 10, "beyond"),
            (vec![r(u64::MAX, 10)], 10, "beyond"),
            (vec![r(0, 10)], 11, "holds 11"),
        ] {
            let e = check_map("d", 100, &regions, data).unwrap_err();
            assert!(e.message.contains(word), "{}", e.message);
        }
        assert!(check_map("d", MAX_SPARSE_SIZE + 1, &[], 0).unwrap_err().message.contains("too large"));
    }

    #[test]
    fn pax_0x_records() {
        let recs = |s: &str| {
            let mut out = Vec::new();
            for (k, v) in s.split(';').filter_map(|kv| kv.split_once('=')) {
                let body = format!(" {k}={v}\n");
                let mut n = body.len() + 1;
                while n.to_string().len() + body.len() != n {
                    n += 1;
                }
                out.extend_from_slice(format!("{n}{body}").as_bytes());
            }
            out
        };
        let data = recs("GNU.sparse.size=100;GNU.sparse.offset=0;GNU.sparse.numbytes=5;GNU.sparse.offset=50;GNU.sparse.numbytes=7;path=x");
        let mut path = b"x".to_vec();
        let s = PaxRecords::parse(&data).unwrap().sparse(&mut path).unwrap().unwrap();
        assert_eq!(
            s,
            Sparse::Map { size: 100, regions: vec![Region { offset: 0, len: 5 }, Region { offset: 50, len: 7 }] }
        );
        let data = recs("GNU.sparse.size=100;GNU.sparse.name=real;GNU.sparse.map=0,5,50,7");
        let s = PaxRecords::parse(&data).unwrap().sparse(&mut path).unwrap().unwrap();
        assert_eq!(path, b"real");
        assert!(matches!(s, Sparse::Map { size: 100, ref regions } if regions.len() == 2));
        let data = recs("GNU.sparse.size=100;GNU.sparse.numbytes=5");
        assert!(PaxRecords::parse(&data).unwrap().sparse(&mut path).is_err());
        let data = recs("GNU.sparse.major=2;GNU.sparse.minor=0");
        assert!(PaxRecords::parse(&data).unwrap().sparse(&mut path).unwrap_err().message.contains("unsupported"));
        assert!(PaxRecords::parse(&recs("path=y")).unwrap().sparse(&mut path).unwrap().is_none());
    }
}
