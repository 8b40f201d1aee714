//! The snapshot file: a fixed header, the state section, then guest RAM from a page-aligned
//! offset, the RAM ranges back to back, with holes where the guest's pages are zero.
//!
//! Header (64 bytes, little endian): magic `XHYVESNP`, format version (u32), 4 zero bytes,
//! state length (u64), state CRC-32 (u32), 4 zero bytes, RAM offset (u64), RAM length (u64),
//! 8 zero bytes, CRC-32 of the 56 bytes before it (u32), 4 zero bytes. The state section starts
//! right after the header.
//!
//! A file is written under a temporary name in the target's directory, synced, renamed over the
//! target and the directory synced: a crash at any point leaves either the old file or the new
//! one, never a mix. A VM restored from a file maps its RAM privately: a later save to the same
//! path makes a new inode, so the running VM's mapping is never written under it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const MAGIC: &[u8; 8] = b"XHYVESNP";
const HEADER_LEN: u64 = 64;
const PAGE: usize = 4096;
/// Guest RAM is copied out through a buffer of this size.
const CHUNK: usize = 1 << 20;

/// What a write cost, for the caller's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The file's length (RAM included, holes and all).
    pub file_len: u64,
    /// Bytes of guest RAM actually written (non-zero pages).
    pub ram_written: u64,
}

/// A snapshot file whose header and state section have been checked.
pub struct Opened {
    pub state: Vec<u8>,
    /// The file, for mapping guest RAM from `ram_offset`.
    pub file: File,
    pub ram_offset: u64,
    pub ram_len: u64,
}

fn ram_offset(state_len: u64) -> u64 {
    (HEADER_LEN + state_len).next_multiple_of(PAGE as u64)
}

fn header(version: u32, state: &[u8], ram_offset: u64, ram_len: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&(state.len() as u64).to_le_bytes());
    h[24..28].copy_from_slice(&crc32fast::hash(state).to_le_bytes());
    h[32..40].copy_from_slice(&ram_offset.to_le_bytes());
    h[40..48].copy_from_slice(&ram_len.to_le_bytes());
    let crc = crc32fast::hash(&h[..56]);
    h[56..60].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Removes the temporary file unless the write was committed.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Writes a snapshot of format `version` holding `state` and the whole of `mem` to `path`,
/// atomically. Guest memory must not change meanwhile (every vCPU and device stopped).
pub fn write(path: &Path, version: u32, state: &[u8], mem: &GuestMemoryMmap) -> Result<Written, String> {
    let what = |e: io::Error| format!("{}: {e}", path.display());
    let name = path.file_name().ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp_path = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(|e| format!("{}: {e}", tmp_path.display()))?;
    let mut tmp = TempFile(Some(tmp_path.clone()));

    let ram_len: u64 = mem.iter().map(|r| r.len()).sum();
    let ram_at = ram_offset(state.len() as u64);
    file.set_len(ram_at + ram_len).map_err(what)?;
    file.write_all_at(state, HEADER_LEN).map_err(what)?;
    let ram_written = write_ram(&file, ram_at, mem).map_err(what)?;
    // The header last: a file with a valid header is complete.
    file.write_all_at(&header(version, state, ram_at, ram_len), 0).map_err(what)?;
    file.sync_all().map_err(what)?;
    fs::rename(&tmp_path, path).map_err(what)?;
    tmp.0 = None;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(Written { file_len: ram_at + ram_len, ram_written })
}

/// Copies guest RAM to `file` from `offset`, skipping zero pages (they stay holes).
fn write_ram(file: &File, offset: u64, mem: &GuestMemoryMmap) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let (mut at, mut written) = (offset, 0u64);
    for region in mem.iter() {
        let (start, len) = (region.start_addr().0, region.len());
        let mut done = 0u64;
        while done < len {
            let n = CHUNK.min((len - done) as usize);
            mem.read_slice(&mut buf[..n], GuestAddress(start + done)).map_err(io::Error::other)?;
            for (off, run) in non_zero_runs(&buf[..n]) {
                file.write_all_at(run, at + off as u64)?;
                written += run.len() as u64;
            }
            at += n as u64;
            done += n as u64;
        }
    }
    Ok(written)
}

/// The maximal runs of non-zero pages in `buf`, with their offsets.
fn non_zero_runs(buf: &[u8]) -> Vec<(usize, &[u8])> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, page) in buf.chunks(PAGE).enumerate() {
        match (is_zero(page), start) {
            (false, None) => start = Some(i * PAGE),
            (true, Some(s)) => {
                runs.push((s, &buf[s..i * PAGE]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, &buf[s..]));
    }
    runs
}

fn is_zero(page: &[u8]) -> bool {
    // OR-folding 64-byte blocks vectorises; an early exit per byte would not.
    page.chunks(64).all(|c| c.iter().fold(0u8, |a, b| a | b) == 0)
}

/// Opens a snapshot and checks its header and state section; `version` is the format this
/// build reads.
pub fn open(path: &Path, version: u32) -> Result<Opened, String> {
    let what = |e: io::Error| format!("{}: {e}", path.display());
    let bad = |why: &str| format!("{}: {why}", path.display());
    let mut file = File::open(path).map_err(what)?;
    let mut h = [0u8; HEADER_LEN as usize];
    match file.read_exact(&mut h) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(bad("not an xhyve snapshot (too short)")),
        r => r.map_err(what)?,
    }
    if &h[0..8] != MAGIC {
        return Err(bad("not an xhyve snapshot"));
    }
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
    if crc32fast::hash(&h[..56]) != u32_at(56) {
        return Err(bad("corrupt snapshot header (checksum mismatch)"));
    }
    let found = u32_at(8);
    if found != version {
        return Err(bad(&format!("snapshot format version {found}; this xhyve reads version {version}")));
    }
    let (state_len, state_crc, ram_at, ram_len) = (u64_at(16), u32_at(24), u64_at(32), u64_at(40));
    let file_len = file.metadata().map_err(what)?.len();
    if ram_at != ram_offset(state_len) || ram_at.checked_add(ram_len).is_none_or(|end| end > file_len) {
        return Err(bad(&format!(
            "truncated or corrupt snapshot ({file_len} bytes, the header says state {state_len} and RAM {ram_len})"
        )));
    }
    let mut state = vec![0u8; state_len as usize];
    file.read_exact_at(&mut state, HEADER_LEN).map_err(what)?;
    if crc32fast::hash(&state) != state_crc {
        return Err(bad("corrupt snapshot state (checksum mismatch)"));
    }
    Ok(Opened { state, file, ram_offset: ram_at, ram_len })
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn mem_with(pages: &[(u64, u8)]) -> GuestMemoryMmap {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        for &(gpa, b) in pages {
            m.write_slice(&[b; PAGE], GuestAddress(gpa)).unwrap();
        }
        m
    }

    #[test]
    fn runs_of_non_zero_pages() {
        let mut buf = vec![0u8; 6 * PAGE];
        buf[PAGE + 5] = 1;
        buf[2 * PAGE] = 1;
        buf[5 * PAGE + PAGE - 1] = 1;
        let runs: Vec<(usize, usize)> = non_zero_runs(&buf).iter().map(|(o, r)| (*o, r.len())).collect();
        assert_eq!(runs, vec![(PAGE, 2 * PAGE), (5 * PAGE, PAGE)]);
        assert!(non_zero_runs(&vec![0u8; 3 * PAGE]).is_empty());
    }

    #[test]
    fn round_trip_is_sparse_and_checked() {
        let dir = tempdir();
        let path = dir.join("vm.snap");
        let mem = mem_with(&[(0x1000, 0xaa), (0x30_0000, 0x55)]);
        let w = write(&path, 7, b"{\"x\":1}", &mem).unwrap();
        assert_eq!(w.ram_written, 2 * PAGE as u64);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), w.file_len);
        // Holes: far fewer blocks allocated than the 4 MiB of RAM.
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let o = open(&path, 7).unwrap();
        assert_eq!(o.state, b"{\"x\":1}");
        assert_eq!((o.ram_offset % PAGE as u64, o.ram_len), (0, 4 << 20));
        let restored = crate::memory::map_private(&o.file, o.ram_offset, o.ram_len).unwrap();
        let mut page = [0u8; PAGE];
        restored.read_slice(&mut page, GuestAddress(0x30_0000)).unwrap();
        assert_eq!(page, [0x55; PAGE]);
        restored.read_slice(&mut page, GuestAddress(0x2000)).unwrap();
        assert_eq!(page, [0; PAGE]);
        // Private: the guest's writes never reach the file.
        restored.write_slice(&[1; 8], GuestAddress(0x1000)).unwrap();
        let again = crate::memory::map_private(&o.file, o.ram_offset, o.ram_len).unwrap();
        assert_eq!(again.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0xaa);
        assert!(fs::read_dir(&dir).unwrap().count() == 1, "no temporary file left");
    }

    #[test]
    fn damage_is_a_clear_error() {
        let dir = tempdir();
        let path = dir.join("vm.snap");
        write(&path, 1, b"state", &mem_with(&[])).unwrap();
        let err = |p: &Path| open(p, 1).err().unwrap();
        assert!(open(&path, 2).err().unwrap().contains("format version 1; this xhyve reads version 2"));

        let bytes = fs::read(&path).unwrap();
        let damaged = dir.join("damaged");
        let mut b = bytes.clone();
        b[HEADER_LEN as usize + 1] ^= 1;
        fs::write(&damaged, &b).unwrap();
        assert!(err(&damaged).contains("corrupt snapshot state"));
        let mut b = bytes.clone();
        b[17] ^= 1;
        fs::write(&damaged, &b).unwrap();
        assert!(err(&damaged).contains("corrupt snapshot header"));
        fs::write(&damaged, &bytes[..bytes.len() - 1]).unwrap();
        assert!(err(&damaged).contains("truncated"));
        fs::write(&damaged, b"XHY").unwrap();
        assert!(err(&damaged).contains("not an xhyve snapshot"));
        fs::write(&damaged, [0u8; 100]).unwrap();
        assert!(err(&damaged).contains("not an xhyve snapshot"));
        assert!(err(&dir.join("missing")).contains("No such file"));
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempdir();
        let path = dir.join("vm.snap");
        write(&path, 1, b"old", &mem_with(&[])).unwrap();
        // A stale temporary file of this very process makes the next write fail before rename.
        let tmp = dir.join(format!(".vm.snap.{}.tmp", std::process::id()));
        fs::write(&tmp, b"x").unwrap();
        assert!(write(&path, 1, b"new", &mem_with(&[])).is_err());
        assert_eq!(open(&path, 1).unwrap().state, b"old");
    }

    pub fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "xhyve-snap-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }
}
