//! A raw image: the guest's bytes at the same offsets in a file (or a host block device).
//! Positioned I/O on one shared descriptor: no file position, no lock. Discard and unmapping
//! write-zeroes punch holes (a sparse image gets smaller), other write-zeroes use `ZERO_RANGE`,
//! with plain zeroes written where the file system has neither. Flush is `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::VolatileSlice;

use super::Disk;

pub struct Raw {
    file: File,
    size: u64,
}

impl Raw {
    pub fn open(path: &Path, readonly: bool) -> io::Result<Raw> {
        let file = OpenOptions::new().read(true).write(!readonly).open(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::other("is a directory"));
        }
        // Block devices report 0 in metadata: ask for their end.
        // SAFETY: lseek on a descriptor we own.
        let size = if meta.len() == 0 {
            unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) }.max(0) as u64
        } else {
            meta.len()
        };
        Ok(Raw { file, size })
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> bool {
        // SAFETY: fallocate on a descriptor we own.
        len == 0 || unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as i64, len as i64) } == 0
    }

    fn write_plain_zeroes(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; (1 << 20).min(len as usize)];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

/// Loops a positioned transfer until `len` bytes are done; 0 bytes moved is an error (EOF).
fn transfer(len: usize, mut op: impl FnMut(usize) -> isize) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        match op(done) {
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            r => done += r as usize,
        }
    }
    Ok(())
}

impl Disk for Raw {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &VolatileSlice) -> io::Result<()> {
        let guard = buf.ptr_guard_mut();
        let (fd, ptr) = (self.file.as_raw_fd(), guard.as_ptr());
        transfer(buf.len(), |done| {
            // SAFETY: the slice is valid for writes of buf.len() bytes (VolatileSlice invariant).
            unsafe { libc::pread(fd, ptr.add(done).cast(), buf.len() - done, (offset + done as u64) as libc::off_t) }
        })
    }

    fn write(&self, offset: u64, buf: &VolatileSlice) -> io::Result<()> {
        let guard = buf.ptr_guard();
        let (fd, ptr) = (self.file.as_raw_fd(), guard.as_ptr());
        transfer(buf.len(), |done| {
            // SAFETY: the slice is valid for reads of buf.len() bytes (VolatileSlice invariant).
            unsafe { libc::pwrite(fd, ptr.add(done).cast(), buf.len() - done, (offset + done as u64) as libc::off_t) }
        })
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap { libc::FALLOC_FL_PUNCH_HOLE } else { libc::FALLOC_FL_ZERO_RANGE };
        if self.fallocate(mode | libc::FALLOC_FL_KEEP_SIZE, offset, len) {
            return Ok(());
        }
        self.write_plain_zeroes(offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len) {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::super::tests::{behaves_like_a_disk, get, put, tempdir};
    use super::*;

    #[test]
    fn raw_image() {
        let dir = tempdir("raw");
        let path = dir.join("disk.img");
        File::create(&path).unwrap().set_len(8 << 20).unwrap();
        let disk = Raw::open(&path, false).unwrap();
        assert_eq!(disk.size(), 8 << 20);
        behaves_like_a_disk(&disk);
        // The bytes are where the guest put them, and discard left a hole.
        let mut b = [0u8; 4];
        File::open(&path).unwrap().read_exact_at(&mut b, (8 << 20) - 4).unwrap();
        assert_eq!(b, [9; 4]);
        put(&disk, 0, &[1; 4096]).unwrap();
        let before = std::fs::metadata(&path).unwrap().blocks();
        disk.discard(0, 4096).unwrap();
        assert!(std::fs::metadata(&path).unwrap().blocks() < before);

        let ro = Raw::open(&path, true).unwrap();
        assert_eq!(get(&ro, 0, 4), vec![0; 4]);
        assert!(put(&ro, 0, &[1; 512]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
