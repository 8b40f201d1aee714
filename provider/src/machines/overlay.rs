//! Linked clones: a machine's disk as a qcow2 overlay whose backing file is the box's disk
//! (which stays while machines use it: `box.remove` refuses), so creating a machine copies
//! nothing and its disk holds only what the machine wrote. Made and read through imago, the
//! crate xhyve serves qcow2 disks with.

use super::record::DiskFormat;
use imago::file::File;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatCreateBuilder, FormatDriverBuilder, PermissiveImplicitOpenGate, Storage};
use imago::{StorageCreateOptions, StorageOpenOptions};
use std::io::{self, Read};
use std::path::Path;

/// qcow2's magic, "QFI\xfb".
const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Whether the image at `path` starts as a qcow2 image does. A box disk that does is copied,
/// never used as a backing file: its own header could name any host file as its backing.
pub fn looks_qcow2(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)?.read(&mut head)?;
    Ok(n == 4 && head == MAGIC)
}

/// Makes `path` (which must not exist) a qcow2 image of `size` bytes backed by the image
/// `backing` of format `backing_format`.
pub fn create(path: &Path, backing: &Path, backing_format: DiskFormat, size: u64) -> io::Result<()> {
    let file = File::create_open(StorageCreateOptions::new().filename(path))?;
    Qcow2::<File>::create_builder(file)
        .size(size)
        .backing(backing.display().to_string(), backing_format.name().into())
        .create()?;
    std::fs::File::open(path)?.sync_all()
}

/// A qcow2 image (and its backing chain) read as the flat disk the guest sees.
pub struct Flat {
    image: FormatAccess<File>,
    pos: u64,
    size: u64,
}

impl Flat {
    pub fn open(path: &Path) -> io::Result<Flat> {
        let file = File::open(StorageOpenOptions::new().filename(path).write(false))?;
        let image = Qcow2::<File>::builder(file).write(false).open(PermissiveImplicitOpenGate::default())?;
        let image = FormatAccess::new(image);
        Ok(Flat { size: image.size(), image, pos: 0 })
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Read for Flat {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min((self.size - self.pos) as usize);
        if n == 0 {
            return Ok(0);
        }
        self.image.read(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_read_through_to_their_backing_file_and_stay_thin() {
        let dir = std::env::temp_dir().join(format!("xhyve-overlay-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.img");
        let mut data = vec![0u8; 1 << 20];
        data[4096..4101].copy_from_slice(b"hello");
        std::fs::write(&base, &data).unwrap();
        let top = dir.join("top.qcow2");
        create(&top, &base, DiskFormat::Raw, 2 << 20).unwrap();
        assert!(create(&top, &base, DiskFormat::Raw, 2 << 20).is_err(), "never overwrites");
        assert!(looks_qcow2(&top).unwrap() && !looks_qcow2(&base).unwrap());
        assert!(std::fs::metadata(&top).unwrap().len() < 1 << 20);
        let mut flat = Flat::open(&top).unwrap();
        assert_eq!(flat.size(), 2 << 20);
        let mut all = Vec::new();
        flat.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 2 << 20);
        assert_eq!(&all[..1 << 20], &data[..]);
        assert!(all[1 << 20..].iter().all(|&b| b == 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
