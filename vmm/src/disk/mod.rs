//! Disk images behind one small trait, so that virtio-blk sees neither files nor formats.
//!
//! - `raw.rs`: a plain file or block device (positioned I/O, holes punched for discard).
//! - `qcow2.rs`: qcow2 images with backing chains (imago), for thin per-machine overlays on a
//!   box's disk and for disk snapshots.
//!
//! The format is always given, never guessed from the content: a raw disk whose guest wrote a
//! qcow2 header at its start must stay raw, or the guest could name a host file as its backing
//! file (QEMU's probing hole).

mod qcow2;
mod raw;

use std::io;
use std::path::Path;

use vm_memory::VolatileSlice;

/// A guest disk. Every method may be called from several threads at once.
pub trait Disk: Send + Sync {
    /// The size the guest sees, in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the range lies within `size`.
    fn read(&self, offset: u64, buf: &VolatileSlice) -> io::Result<()>;
    fn write(&self, offset: u64, buf: &VolatileSlice) -> io::Result<()>;
    /// Makes every completed write durable (the image's own metadata included).
    fn flush(&self) -> io::Result<()>;
    /// Makes the range read as zeroes; with `unmap` its space may be freed.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// The guest no longer needs the range: its space is freed where the image allows; it
    /// reads as zeroes afterwards.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            other => Err(format!("unknown image format '{other}' (raw, qcow2)")),
        }
    }
}

/// Opens the image at `path`; errors name the path.
pub fn open(path: &Path, format: Format, readonly: bool) -> Result<Box<dyn Disk>, String> {
    let what = |e: io::Error| format!("image {}: {}", path.display(), crate::os_error::strip_os_error(&e));
    Ok(match format {
        Format::Raw => Box::new(raw::Raw::open(path, readonly).map_err(what)?),
        Format::Qcow2 => Box::new(qcow2::Qcow2::open(path, readonly).map_err(what)?),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    use super::*;

    /// Creates a qcow2 image of `size` bytes at `path` (which must not exist), optionally as an
    /// overlay on `backing` (a path relative to the new image's directory, or absolute) of
    /// `backing_format` ("raw" or "qcow2").
    pub fn create_qcow2(path: &Path, size: u64, backing: Option<(&str, &str)>) -> std::io::Result<()> {
        use imago::{file::File, qcow2::Qcow2, FormatCreateBuilder, Storage, StorageCreateOptions};
        let storage = File::create_open(StorageCreateOptions::new().filename(path).size(0))?;
        let mut builder = Qcow2::<File>::create_builder(storage).size(size);
        if let Some((file, format)) = backing {
            builder = builder.backing(file.into(), format.into());
        }
        builder.create()
    }

    pub fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xhyve-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Writes `data` at `offset` through guest memory, as virtio-blk does.
    pub fn put(disk: &dyn Disk, offset: u64, data: &[u8]) -> io::Result<()> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(data, GuestAddress(0)).unwrap();
        disk.write(offset, &mem.get_slice(GuestAddress(0), data.len()).unwrap())
    }

    /// Reads `len` bytes at `offset` through guest memory.
    pub fn get(disk: &dyn Disk, offset: u64, len: usize) -> Vec<u8> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(&vec![0xee; len], GuestAddress(0)).unwrap();
        disk.read(offset, &mem.get_slice(GuestAddress(0), len).unwrap()).unwrap();
        let mut out = vec![0; len];
        mem.read_slice(&mut out, GuestAddress(0)).unwrap();
        out
    }

    /// What every backend must do the same way.
    pub fn behaves_like_a_disk(disk: &dyn Disk) {
        let size = disk.size();
        assert!(size >= 4 << 20);
        put(disk, 4096, &[7; 8192]).unwrap();
        assert_eq!(get(disk, 4096, 8192), vec![7; 8192]);
        assert_eq!(get(disk, 0, 4096), vec![0; 4096]);
        put(disk, size - 512, &[9; 512]).unwrap();
        assert_eq!(get(disk, size - 512, 512), vec![9; 512]);
        disk.write_zeroes(4096, 4096, false).unwrap();
        assert_eq!(get(disk, 4096, 8192)[..4096], [0; 4096]);
        assert_eq!(get(disk, 8192, 4096), vec![7; 4096]);
        disk.write_zeroes(8192, 4096, true).unwrap();
        assert_eq!(get(disk, 8192, 4096), vec![0; 4096]);
        put(disk, 1 << 20, &[5; 65536]).unwrap();
        disk.discard(1 << 20, 65536).unwrap();
        assert_eq!(get(disk, 1 << 20, 65536), vec![0; 65536]);
        disk.flush().unwrap();
    }

    #[test]
    fn formats_parse() {
        assert_eq!(Format::parse("qcow2"), Ok(Format::Qcow2));
        assert_eq!(Format::parse("raw"), Ok(Format::Raw));
        assert!(Format::parse("vmdk").unwrap_err().contains("raw, qcow2"));
    }
}
