//! Safe extraction of tar, tar.gz and zip boxes into an empty directory: every entry's path and
//! type is checked, sizes and the compression ratio are capped, symlinks are created last and
//! must resolve inside the box (nothing is written through one), holes stay holes.

use super::cancel::Cancel;
use super::tar_stream::{self, Region, Sparse, TarStream};
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Caps against archive bombs.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest total unpacked size (logical bytes).
    pub max_size: u64,
    /// Largest ratio of unpacked to archive bytes ...
    pub max_ratio: u64,
    /// ... checked once this much has been unpacked (small boxes compress as they like).
    pub ratio_after: u64,
    /// Most entries.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_size: 64 << 30, max_ratio: 100, ratio_after: 256 << 20, max_entries: 100_000 }
    }
}

/// Checks an entry name and returns it as a relative path (None for the root itself, `./`).
pub fn check_path(name: &Path) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                return Err(Error::bad_archive(format!("entry {name:?} has a `..` component: refused")))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::bad_archive(format!("entry {name:?} is an absolute path: refused")))
            }
        }
    }
    Ok(if out.as_os_str().is_empty() { None } else { Some(out) })
}

/// Whether `target`, seen from the directory holding `link` (both relative to the box root),
/// stays inside the box by its text alone.
pub fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

pub struct Extractor {
    root: PathBuf,
    limits: Limits,
    /// Archive bytes read so far (for the ratio check).
    compressed: Arc<AtomicU64>,
    /// Bytes of data unpacked (the caps count these: holes of sparse files cost nothing).
    written: u64,
    /// The files' sizes, holes included (the box's size).
    logical: u64,
    entries: u64,
    symlinks: Vec<(PathBuf, PathBuf)>,
    /// Where the symlinks will be: no entry may be written there or below.
    symlink_paths: HashSet<PathBuf>,
    buf: Vec<u8>,
    cancel: Cancel,
}

impl Extractor {
    pub fn new(root: &Path, limits: Limits, compressed: Arc<AtomicU64>, cancel: Cancel) -> Extractor {
        Extractor {
            root: root.to_path_buf(),
            limits,
            compressed,
            written: 0,
            logical: 0,
            entries: 0,
            symlinks: Vec::new(),
            symlink_paths: HashSet::new(),
            buf: vec![0; 256 << 10],
            cancel,
        }
    }

    fn count_entry(&mut self) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::bad_archive(format!(
                "more than {} entries: refused as an archive bomb",
                self.limits.max_entries
            )));
        }
        Ok(())
    }

    fn too_big(&self, name: &Path) -> Error {
        Error::bad_archive(format!(
            "unpacked size exceeds the limit of {} bytes at {name:?}: refused as an archive bomb (XHYVE_MAX_BOX_SIZE raises it)",
            self.limits.max_size
        ))
    }

    /// Creates the directories above `rel`, refusing to go through a file or a symlink to be.
    fn make_parent(&self, rel: &Path) -> Result<()> {
        if let Some(link) = rel.ancestors().skip(1).find(|a| self.symlink_paths.contains(*a)) {
            return Err(Error::bad_archive(format!("entry {rel:?} is inside {link:?}, a symlink: refused")));
        }
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            let mut cur = self.root.clone();
            for c in parent.components() {
                cur.push(c);
                match fs::symlink_metadata(&cur) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(Error::bad_archive(format!(
                            "entry {rel:?} is inside {:?}, which is not a directory",
                            cur.strip_prefix(&self.root).unwrap_or(&cur)
                        )))
                    }
                    Err(_) => fs::create_dir(&cur)?,
                }
            }
        }
        Ok(())
    }

    /// Refuses an entry at the path of a symlink (created at the end, so not on disk yet).
    fn check_free(&self, rel: &Path) -> Result<()> {
        if self.symlink_paths.contains(rel) {
            return Err(Error::bad_archive(format!("entry {rel:?} collides with the symlink {rel:?}: refused")));
        }
        Ok(())
    }

    pub fn dir(&mut self, rel: &Path, mode: u32) -> Result<()> {
        self.count_entry()?;
        self.check_free(rel)?;
        self.make_parent(rel)?;
        let p = self.root.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::bad_archive(format!("directory {rel:?} collides with a file"))),
            Err(_) => fs::create_dir(&p)?,
        }
        fs::set_permissions(&p, fs::Permissions::from_mode((mode & 0o777) | 0o700))?;
        Ok(())
    }

    /// Creates (or replaces) the regular file `rel`, checking the data to come against the cap.
    fn create(&mut self, rel: &Path, data: u64) -> Result<File> {
        self.count_entry()?;
        if self.written.saturating_add(data) > self.limits.max_size {
            return Err(self.too_big(rel));
        }
        self.check_free(rel)?;
        self.make_parent(rel)?;
        let p = self.root.join(rel);
        if fs::symlink_metadata(&p).is_ok_and(|m| !m.is_file()) {
            return Err(Error::bad_archive(format!("file {rel:?} collides with a directory")));
        }
        Ok(OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&p)?)
    }

    /// Ends a file: its size (a trailing hole included) and mode.
    fn close(&mut self, f: File, len: u64, mode: u32) -> Result<()> {
        f.set_len(len)?;
        f.set_permissions(fs::Permissions::from_mode((mode & 0o777) | 0o600))?;
        self.logical += len;
        Ok(())
    }

    /// Writes a regular file, skipping runs of zeros (the file stays sparse).
    pub fn file(&mut self, rel: &Path, mode: u32, declared: u64, r: impl Read) -> Result<()> {
        let mut f = self.create(rel, declared)?;
        let len = self.copy(&mut f, rel, r)?;
        self.close(f, len, mode)
    }

    /// Writes a sparse file of `size` bytes: each region's bytes (read in turn from `r`) at its
    /// offset, and holes between them, never written.
    pub fn sparse_file(
        &mut self,
        rel: &Path,
        mode: u32,
        size: u64,
        regions: &[Region],
        mut r: impl Read,
    ) -> Result<()> {
        let data = regions.iter().map(|g| g.len).sum();
        let mut f = self.create(rel, data)?;
        for g in regions {
            f.seek(SeekFrom::Start(g.offset))?;
            if self.copy(&mut f, rel, (&mut r).take(g.len))? != g.len {
                return Err(Error::bad_archive(format!(
                    "broken or truncated archive: {rel:?} has less data than its sparse map"
                )));
            }
        }
        self.close(f, size, mode)
    }

    /// Copies `r` to `f` from its position, seeking over runs of zeros; returns the bytes read.
    fn copy(&mut self, f: &mut File, rel: &Path, mut r: impl Read) -> Result<u64> {
        let mut len: u64 = 0;
        loop {
            self.cancel.check()?;
            let n = match r.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e, rel)),
            };
            len += n as u64;
            self.written += n as u64;
            if self.written > self.limits.max_size {
                return Err(self.too_big(rel));
            }
            if self.written > self.limits.ratio_after {
                let packed = self.compressed.load(Ordering::Relaxed).max(1);
                if self.written / packed > self.limits.max_ratio {
                    return Err(Error::bad_archive(format!(
                        "{} bytes unpacked from {packed} archive bytes at {rel:?}: compression ratio above {}:1, refused as an archive bomb (XHYVE_MAX_BOX_RATIO raises it)",
                        self.written, self.limits.max_ratio
                    )));
                }
            }
            let chunk = &self.buf[..n];
            if chunk.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(n as i64))?;
            } else {
                f.write_all(chunk)?;
            }
        }
        Ok(len)
    }

    /// Records a symlink (created by `finish`, after every other entry).
    pub fn symlink(&mut self, rel: &Path, target: &Path) -> Result<()> {
        self.count_entry()?;
        if target.as_os_str().is_empty() || !link_stays_inside(rel, target) {
            return Err(Error::bad_archive(format!("symlink {rel:?} -> {target:?} points outside the box: refused")));
        }
        self.make_parent(rel)?;
        if let Ok(m) = fs::symlink_metadata(self.root.join(rel)) {
            let what = if m.is_dir() { "directory" } else { "file" };
            return Err(Error::bad_archive(format!("symlink {rel:?} collides with the {what} {rel:?}: refused")));
        }
        if !self.symlink_paths.insert(rel.to_path_buf()) {
            return Err(Error::bad_archive(format!("symlink {rel:?} comes twice: refused")));
        }
        self.symlinks.push((rel.to_path_buf(), target.to_path_buf()));
        Ok(())
    }

    /// A hard link to a file extracted earlier (`target` relative to the box root).
    pub fn hardlink(&mut self, rel: &Path, target: &Path) -> Result<()> {
        self.count_entry()?;
        self.check_free(rel)?;
        let t = match check_path(target) {
            Ok(Some(t)) => t,
            _ => {
                return Err(Error::bad_archive(format!(
                    "hard link {rel:?} -> {target:?} points outside the box: refused"
                )))
            }
        };
        let tp = self.root.join(&t);
        if !fs::symlink_metadata(&tp).is_ok_and(|m| m.is_file()) {
            return Err(Error::bad_archive(format!(
                "hard link {rel:?} -> {target:?}: the target is not a file of the box"
            )));
        }
        self.make_parent(rel)?;
        let p = self.root.join(rel);
        if let Ok(m) = fs::symlink_metadata(&p) {
            if !m.is_file() {
                return Err(Error::bad_archive(format!("hard link {rel:?} collides with a directory")));
            }
            fs::remove_file(&p)?;
        }
        fs::hard_link(&tp, &p)?;
        Ok(())
    }

    /// Creates the symlinks and checks each resolves inside the box. Returns the box's size.
    pub fn finish(self) -> Result<u64> {
        let root = fs::canonicalize(&self.root)?;
        for (rel, target) in &self.symlinks {
            self.make_parent(rel)?;
            let p = self.root.join(rel);
            if fs::symlink_metadata(&p).is_ok() {
                return Err(Error::bad_archive(format!("symlink {rel:?} collides with another entry")));
            }
            std::os::unix::fs::symlink(target, &p)?;
        }
        for (rel, target) in &self.symlinks {
            match fs::canonicalize(self.root.join(rel)) {
                Ok(real) if real.starts_with(&root) => {}
                Ok(_) => {
                    return Err(Error::bad_archive(format!(
                        "symlink {rel:?} -> {target:?} resolves outside the box: refused"
                    )))
                }
                Err(_) => {
                    return Err(Error::bad_archive(format!(
                        "symlink {rel:?} -> {target:?} points to nothing inside the box: refused"
                    )))
                }
            }
        }
        Ok(self.logical)
    }
}

fn entry_path(raw: &[u8]) -> Result<Option<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    check_path(Path::new(std::ffi::OsStr::from_bytes(raw)))
}

/// Unpacks a tar stream into `ex`'s root.
pub fn untar<R: Read>(r: R, ex: &mut Extractor) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use tar::EntryType as T;
    let mut tar = TarStream::new(r);
    let mut seen = 0u64;
    while let Some(m) = tar.next_member()? {
        seen += 1;
        let name = m.name();
        let Some(rel) = entry_path(&m.path)? else {
            if m.kind.is_dir() {
                continue;
            }
            return Err(Error::bad_archive(format!("entry {name:?} has an empty name")));
        };
        match m.kind {
            T::Regular | T::Continuous | T::GNUSparse => match m.sparse {
                None => ex.file(&rel, m.mode, m.size, tar.data())?,
                Some(Sparse::Map { size, regions }) => {
                    tar_stream::check_map(&name, size, &regions, m.size)?;
                    ex.sparse_file(&rel, m.mode, size, &regions, tar.data())?;
                }
                Some(Sparse::MapInData { size }) => {
                    let mut data = tar.data();
                    let (regions, used) = tar_stream::read_map(&mut data, &name)?;
                    tar_stream::check_map(&name, size, &regions, m.size - used)?;
                    ex.sparse_file(&rel, m.mode, size, &regions, data)?;
                }
            },
            T::Directory => ex.dir(&rel, m.mode)?,
            T::Symlink => ex.symlink(&rel, Path::new(std::ffi::OsStr::from_bytes(&m.link)))?,
            T::Link => ex.hardlink(&rel, Path::new(std::ffi::OsStr::from_bytes(&m.link)))?,
            T::Char | T::Block => return Err(Error::bad_archive(format!("entry {name:?} is a device node: refused"))),
            T::Fifo => return Err(Error::bad_archive(format!("entry {name:?} is a fifo: refused"))),
            other => {
                return Err(Error::bad_archive(format!(
                    "entry {name:?} has an unsupported type {:?}: refused",
                    other.as_byte() as char
                )))
            }
        }
    }
    if seen == 0 {
        return Err(Error::bad_archive("the archive is empty or not a tar archive"));
    }
    Ok(())
}

/// An error reading an entry's data: ours (download, bomb) keep their code, the rest mean a
/// broken archive.
fn read_error(e: io::Error, rel: &Path) -> Error {
    let e: Error = e.into();
    if e.code != crate::error::code::INTERNAL {
        return e;
    }
    Error::bad_archive(format!("broken or truncated archive at {rel:?}: {}", e.message))
}

/// Unpacks a zip file.
pub fn unzip(file: fs::File, ex: &mut Extractor) -> Result<()> {
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| Error::bad_archive(format!("not a valid zip archive: {e}")))?;
    let mut packed = 0u64;
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| Error::bad_archive(format!("zip entry {i}: {e}")))?;
        let name = String::from_utf8_lossy(f.name_raw()).into_owned();
        packed += f.compressed_size();
        ex.compressed.store(packed, Ordering::Relaxed);
        let Some(rel) = check_path(Path::new(&name))? else {
            continue;
        };
        let mode = f.unix_mode().unwrap_or(if f.is_dir() { 0o755 } else { 0o644 });
        let kind = mode & libc::S_IFMT;
        if f.is_dir() || kind == libc::S_IFDIR {
            ex.dir(&rel, mode)?;
        } else if kind == libc::S_IFLNK {
            let mut target = Vec::new();
            (&mut f).take(4096).read_to_end(&mut target)?;
            use std::os::unix::ffi::OsStrExt;
            ex.symlink(&rel, Path::new(std::ffi::OsStr::from_bytes(&target)))?;
        } else if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            return Err(Error::bad_archive(format!("entry {name:?} is a device node: refused")));
        } else if kind == libc::S_IFIFO || kind == libc::S_IFSOCK {
            return Err(Error::bad_archive(format!("entry {name:?} is a fifo or socket: refused")));
        } else {
            let size = f.size();
            ex.file(&rel, mode, size, &mut f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(check_path(Path::new("./a/b")).unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(check_path(Path::new("./")).unwrap(), None);
        assert!(check_path(Path::new("../x")).unwrap_err().message.contains(".."));
        assert!(check_path(Path::new("a/../../x")).is_err());
        assert!(check_path(Path::new("a/../b")).is_err());
        assert!(check_path(Path::new("/etc/x")).unwrap_err().message.contains("absolute"));
    }

    #[test]
    fn links() {
        assert!(link_stays_inside(Path::new("a/l"), Path::new("../b")));
        assert!(link_stays_inside(Path::new("l"), Path::new("b/c")));
        assert!(!link_stays_inside(Path::new("l"), Path::new("../b")));
        assert!(!link_stays_inside(Path::new("a/l"), Path::new("../../b")));
        assert!(!link_stays_inside(Path::new("l"), Path::new("/etc")));
        assert!(!link_stays_inside(Path::new("a/l"), Path::new("x/../../../b")));
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xhyve-unpack-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn symlink_chain_escape_is_caught() {
        // `s -> .` then `d1/d2/t -> ../../s/..`: fine by text, outside in reality.
        let d = tmp("chain");
        let mut ex = Extractor::new(&d, Limits::default(), Arc::new(AtomicU64::new(1)), Cancel::never());
        ex.dir(Path::new("d1/d2"), 0o755).unwrap();
        ex.symlink(Path::new("s"), Path::new(".")).unwrap();
        ex.symlink(Path::new("d1/d2/t"), Path::new("../../s/..")).unwrap();
        let e = ex.finish().unwrap_err();
        assert!(e.message.contains("outside"), "{}", e.message);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sparse_and_caps() {
        let d = tmp("caps");
        let limits = Limits { max_size: 1 << 20, max_ratio: 10, ratio_after: 1 << 16, max_entries: 3 };
        let packed = Arc::new(AtomicU64::new(1 << 10));
        let mut ex = Extractor::new(&d, limits, packed.clone(), Cancel::never());
        ex.file(Path::new("a"), 0o644, 4, &b"abcd"[..]).unwrap();
        // 1 MiB + 1 of zeros: over max_size.
        let e = ex.file(Path::new("z"), 0o644, 0, io::repeat(0).take((1 << 20) + 1)).unwrap_err();
        assert!(e.message.contains("archive bomb"), "{}", e.message);
        let mut ex = Extractor::new(&d, limits, packed, Cancel::never());
        // 100 KiB from 1 KiB is over 10:1 once past 64 KiB.
        let e = ex.file(Path::new("r"), 0o644, 0, io::repeat(0).take(100 << 10)).unwrap_err();
        assert!(e.message.contains("compression ratio"), "{}", e.message);
        fs::remove_dir_all(&d).unwrap();
    }
}
