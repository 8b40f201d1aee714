//! A machine's own copy of a box disk: a reflink (FICLONE) where the filesystem can share
//! blocks, else a copy of the data extents only (SEEK_DATA/SEEK_HOLE), so holes stay holes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// How a disk was copied.
#[derive(Debug, PartialEq, Eq)]
pub enum Copied {
    Reflink,
    Sparse,
}

/// Copies `src` to the new file `dst` (which must not exist).
pub fn sparse_copy(src: &Path, dst: &Path) -> io::Result<Copied> {
    let mut from = File::open(src)?;
    let len = from.metadata()?.len();
    let mut to = OpenOptions::new().write(true).create_new(true).mode(0o600).open(dst)?;
    // SAFETY: FICLONE takes the source descriptor as its argument.
    if unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0 {
        return Ok(Copied::Reflink);
    }
    to.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: u64 = 0;
    while pos < len {
        let data = match seek(&from, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // only a hole is left
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => pos,  // no SEEK_DATA: copy all
            Err(e) => return Err(e),
        };
        let hole = match seek(&from, data, libc::SEEK_HOLE) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        from.seek(SeekFrom::Start(data))?;
        to.seek(SeekFrom::Start(data))?;
        let mut left = hole - data;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            from.read_exact(&mut buf[..n])?;
            if buf[..n].iter().all(|&b| b == 0) {
                to.seek(SeekFrom::Current(n as i64))?; // a run of zeros stays a hole
            } else {
                to.write_all(&buf[..n])?;
            }
            left -= n as u64;
        }
        pos = hole;
    }
    to.sync_all()?;
    Ok(Copied::Sparse)
}

fn seek(f: &File, off: u64, whence: i32) -> io::Result<u64> {
    // SAFETY: lseek on a descriptor we own.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// A new empty (all-hole) disk of `size` bytes.
pub fn create_empty(dst: &Path, size: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(dst)?;
    f.set_len(size)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copies_data_and_keeps_holes() {
        let dir = std::env::temp_dir().join(format!("xhyve-disk-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src.img");
        {
            let mut f = File::create(&src).unwrap();
            f.set_len(64 << 20).unwrap();
            f.seek(SeekFrom::Start(8 << 20)).unwrap();
            f.write_all(b"hello").unwrap();
            f.seek(SeekFrom::Start((64 << 20) - 3)).unwrap();
            f.write_all(b"end").unwrap();
        }
        let dst = dir.join("dst.img");
        sparse_copy(&src, &dst).unwrap();
        let a = std::fs::read(&src).unwrap();
        let b = std::fs::read(&dst).unwrap();
        assert!(a == b);
        assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 < 8 << 20);
        assert!(sparse_copy(&src, &dst).is_err(), "never overwrites");
        create_empty(&dir.join("e.img"), 1 << 30).unwrap();
        assert_eq!(std::fs::metadata(dir.join("e.img")).unwrap().len(), 1 << 30);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
