//! qcow2 images through imago: clusters allocated on first write, reads of unallocated clusters
//! fall through to the backing image (a box's disk under a machine's thin overlay), discard
//! turns clusters into zero clusters.
//!
//! Backing images are opened through [`BackingGate`]: read-only, regular files only, at most
//! [`MAX_CHAIN`] deep (an image naming itself as its backing file ends there), and no external
//! data files (a qcow2 feature that would let an image's header pick a host file to write to).
//! imago keeps metadata (L2 and refcount tables) in write-back caches: `flush` writes them out,
//! so it must run before the process ends or a snapshot is taken.

use std::io;
use std::path::Path;
use std::sync::RwLock;

use imago::file::File;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2 as Image;
use imago::{FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};
use vm_memory::VolatileSlice;

use super::Disk;

/// Deepest backing chain accepted below an image.
const MAX_CHAIN: usize = 16;

pub struct Qcow2 {
    /// Reads and writes share it; discard takes it alone (it may move clusters under them).
    image: RwLock<FormatAccess<File>>,
}

impl Qcow2 {
    pub fn open(path: &Path, readonly: bool) -> io::Result<Qcow2> {
        // Opened here, not through the gate: the gate sees only what the image names.
        let file = File::open(StorageOpenOptions::new().filename(path).write(!readonly))?;
        let image = Image::<File>::builder(file).write(!readonly).open(BackingGate { depth: 0 })?;
        Ok(Qcow2 { image: RwLock::new(FormatAccess::new(image)) })
    }
}

/// Opens what an image names as its backing chain, within limits (module docs).
struct BackingGate {
    depth: usize,
}

impl imago::format::gate::ImplicitOpenGate<File> for BackingGate {
    fn open_format<F: FormatDriverBuilder<File>>(&mut self, builder: F) -> io::Result<FormatAccess<File>> {
        if self.depth >= MAX_CHAIN {
            return Err(io::Error::other(format!("backing chain deeper than {MAX_CHAIN} images (a loop?)")));
        }
        let layer = builder.write(false).open(BackingGate { depth: self.depth + 1 })?;
        Ok(FormatAccess::new(layer))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<File> {
        let name = opts.get_filename().map(Path::to_path_buf).unwrap_or_default();
        if opts.get_writable() {
            return Err(io::Error::other(format!("{}: external data files are not supported", name.display())));
        }
        if !std::fs::metadata(&name).map(|m| m.is_file()).unwrap_or(false) {
            return Err(io::Error::other(format!("backing image {}: not a regular file", name.display())));
        }
        File::open(opts.write(false))
    }
}

impl Disk for Qcow2 {
    fn size(&self) -> u64 {
        self.image.read().unwrap().size()
    }

    fn read(&self, offset: u64, buf: &VolatileSlice) -> io::Result<()> {
        let (v, _mapped) = IoVectorMut::from_volatile_slice_one(buf);
        self.image.read().unwrap().readv(v, offset)
    }

    fn write(&self, offset: u64, buf: &VolatileSlice) -> io::Result<()> {
        let (v, _mapped) = IoVector::from_volatile_slice_one(buf);
        self.image.read().unwrap().writev(v, offset)
    }

    fn flush(&self) -> io::Result<()> {
        let image = self.image.read().unwrap();
        image.flush()?;
        image.sync()
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap {
            return self.discard(offset, len);
        }
        self.image.read().unwrap().write_zeroes(offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.image.write().unwrap().discard_to_zero(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::super::tests::{behaves_like_a_disk, create_qcow2 as create, get, put, tempdir};
    use super::super::{open, Format};
    use super::*;

    #[test]
    fn plain_image() {
        let dir = tempdir("qcow2");
        let path = dir.join("disk.qcow2");
        create(&path, 8 << 20, None).unwrap();
        let disk = Qcow2::open(&path, false).unwrap();
        assert_eq!(disk.size(), 8 << 20);
        behaves_like_a_disk(&disk);
        drop(disk);
        // Reopened, the data is there (the metadata was flushed).
        let disk = open(&path, Format::Qcow2, true).unwrap();
        assert_eq!(get(disk.as_ref(), (8 << 20) - 512, 512), vec![9; 512]);
        assert!(put(disk.as_ref(), 0, &[1; 512]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overlay_on_a_raw_base_leaves_the_base_alone() {
        let dir = tempdir("overlay");
        let base = dir.join("box.img");
        std::fs::write(&base, vec![0x42u8; 4 << 20]).unwrap();
        let overlay = dir.join("machine.qcow2");
        create(&overlay, 4 << 20, Some(("box.img", "raw"))).unwrap();
        let disk = Qcow2::open(&overlay, false).unwrap();
        assert_eq!(get(&disk, 0, 512), vec![0x42; 512]);
        put(&disk, 512, &[1; 512]).unwrap();
        disk.discard(1 << 20, 65536).unwrap();
        disk.flush().unwrap();
        assert_eq!(get(&disk, 0, 1024), [vec![0x42; 512], vec![1; 512]].concat());
        assert_eq!(get(&disk, 1 << 20, 65536), vec![0; 65536]);
        assert_eq!(get(&disk, 2 << 20, 512), vec![0x42; 512]);
        let mut b = [0u8; 1024];
        std::fs::File::open(&base).unwrap().read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, [0x42; 1024], "the base image is never written");
        // A snapshot's overlay on the overlay: a chain of two.
        let top = dir.join("snap.qcow2");
        create(&top, 4 << 20, Some(("machine.qcow2", "qcow2"))).unwrap();
        drop(disk);
        let disk = Qcow2::open(&top, false).unwrap();
        assert_eq!(get(&disk, 512, 512), vec![1; 512]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_backing_files_are_refused() {
        let dir = tempdir("hostile");
        let looped = dir.join("loop.qcow2");
        create(&looped, 1 << 20, Some(("loop.qcow2", "qcow2"))).unwrap();
        let e = Qcow2::open(&looped, true).err().unwrap().to_string();
        assert!(e.contains("deeper than 16"), "{e}");
        let dev = dir.join("dev.qcow2");
        create(&dev, 1 << 20, Some(("/dev/zero", "raw"))).unwrap();
        let e = Qcow2::open(&dev, true).err().unwrap().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let missing = dir.join("missing.qcow2");
        create(&missing, 1 << 20, Some(("nope.img", "raw"))).unwrap();
        assert!(Qcow2::open(&missing, true).is_err());
        let raw = dir.join("raw.img");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        assert!(Qcow2::open(&raw, true).is_err(), "a raw file is not qcow2");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
