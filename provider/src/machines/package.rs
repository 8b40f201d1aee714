//! `machine.package`: a stopped machine as a new `.box` (tar.gz, the format of
//! `boxes/README.md`): its kernel, initrd and command line (or its firmware and UEFI variable
//! store), its current disks, its cpus and memory as defaults, and a Vagrantfile. `vagrant package` and Packer's export step call it.
//! A disk that is a qcow2 overlay (a linked clone) goes in flat: the raw disk the guest sees.
//! The box is written beside its output and renamed into place; one that a crash cut short is
//! removed at the daemon's next start (`remove_partials`).

use super::overlay::Flat;
use super::params::PackageParams;
use super::record::{DiskFormat, Firmware, MachineRecord, State};
use super::{efi, invalid_field, lock, wrong_state, Machines};
use crate::boxes::{store, Reporter};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::logger::log;
use crate::state::now;
use flate2::write::GzEncoder;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use xhyve_contract::hex::hex;

/// Counts and hashes what goes to the file, reporting progress by input bytes elsewhere.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a file while reporting the bytes read so far (of every file in the box).
struct ProgressReader<'a, R> {
    inner: R,
    done: &'a mut u64,
    total: u64,
    report: &'a Reporter,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.done += n as u64;
        (self.report)("package", *self.done, Some(self.total));
        Ok(n)
    }
}

fn absolute(field: &str, p: &str) -> Result<PathBuf> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(invalid_field(field, format!("{field} {p:?} is not an absolute path")));
    }
    Ok(path)
}

/// The files of the new box: (name in the archive, file on disk).
fn members(rec: &MachineRecord, vagrantfile: Option<PathBuf>) -> Vec<(String, PathBuf)> {
    let base =
        |p: &str| Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let mut files: Vec<(String, PathBuf)> = rec.kernel.iter().map(|k| (base(k), PathBuf::from(k))).collect();
    if let Some(i) = &rec.initrd {
        let name = base(i);
        // A kernel and an initrd of one name (possible in a box) must not collide.
        let name = if files.first().is_some_and(|(k, _)| *k == name) { format!("initrd-{name}") } else { name };
        files.push((name, PathBuf::from(i)));
    }
    for (n, d) in rec.disks.iter().enumerate() {
        files.push((format!("disk{n}.img"), PathBuf::from(&d.path)));
    }
    if let Some(v) = &rec.efi_vars {
        files.push((efi::VARS.into(), PathBuf::from(v)));
    }
    let box_vagrantfile = rec.bx.as_ref().map(|b| Path::new(&b.path).join("Vagrantfile")).filter(|v| v.is_file());
    if let Some(v) = vagrantfile.or(box_vagrantfile) {
        files.push(("Vagrantfile".into(), v));
    }
    files
}

fn metadata(rec: &MachineRecord, files: &[(String, PathBuf)]) -> Value {
    let disks: Vec<&str> =
        files.iter().filter(|(n, _)| n.starts_with("disk") && n.ends_with(".img")).map(|(n, _)| n.as_str()).collect();
    // The archive name of a file the record names.
    let name = |p: &Option<String>| {
        p.as_ref().and_then(|p| files.iter().find(|(_, f)| f == Path::new(p))).map(|(n, _)| n.as_str())
    };
    let mut m = json!({
        "provider": "xhyve",
        "cmdline": rec.cmdline,
        "cpus": rec.cpus,
        "memory": rec.memory,
        "disks": disks,
    });
    for (key, file) in [("kernel", &rec.kernel), ("initrd", &rec.initrd), ("efi_vars", &rec.efi_vars)] {
        if let Some(n) = name(file) {
            m[key] = json!(n);
        }
    }
    if rec.firmware == Firmware::Efi {
        m["firmware"] = json!(rec.firmware.as_str());
    }
    // The same kernel and initrd: the same init, with its identity step.
    if rec.fast_start {
        m["fast_start"] = json!(true);
    }
    m
}

/// A member's size and contents: `qcow2` ones read flat.
fn open_member(path: &Path, qcow2: &[PathBuf]) -> io::Result<(u64, Box<dyn Read>)> {
    let what = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    if qcow2.iter().any(|q| q == path) {
        let f = Flat::open(path).map_err(what)?;
        return Ok((f.size(), Box::new(f)));
    }
    let f = File::open(path).map_err(what)?;
    Ok((f.metadata()?.len(), Box::new(f)))
}

/// Writes the archive to `tmp`; returns its size and sha256. `qcow2`: the members that are
/// qcow2 overlays.
fn write_box(
    tmp: &Path,
    meta: &Value,
    files: &[(String, PathBuf)],
    qcow2: &[PathBuf],
    report: &Reporter,
) -> io::Result<(u64, String)> {
    let total: u64 = files.iter().map(|(_, p)| open_member(p, qcow2).map(|m| m.0)).sum::<io::Result<u64>>()?;
    let out = OpenOptions::new().write(true).create_new(true).mode(0o644).open(tmp)?;
    let hashing = HashingWriter { inner: io::BufWriter::new(out), hash: Sha256::new(), len: 0 };
    // Fast compression: disks are mostly zeros or already-compressed data.
    let mut tar = tar::Builder::new(GzEncoder::new(hashing, flate2::Compression::fast()));
    let meta = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
    let mut h = tar::Header::new_gnu();
    h.set_size(meta.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(now());
    tar.append_data(&mut h, "metadata.json", meta.as_slice())?;
    let mut done = 0u64;
    report("package", 0, Some(total));
    for (name, path) in files {
        let (size, f) = open_member(path, qcow2)?;
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(now());
        let r = ProgressReader { inner: f, done: &mut done, total, report };
        tar.append_data(&mut h, name, r)?;
    }
    let hashing = tar.into_inner()?.finish()?;
    let mut file = hashing.inner.into_inner().map_err(|e| e.into_error())?;
    file.flush()?;
    file.sync_all()?;
    Ok((hashing.len, hex(&hashing.hash.finalize())))
}

/// The note in `tmp/` that names a box being written beside its output (a rename into place
/// must stay on one file system), so that the daemon removes it at its next start when a crash
/// cut the writing short (`remove_partials`). Removed when dropped.
struct Partial(PathBuf);

const NOTE: &str = "package-partial";

impl Partial {
    fn note(home: &Home, partial: &Path) -> Result<Partial> {
        let note = store::tempdir_path(home, NOTE);
        crate::state::write_atomic(&note, partial.as_os_str().as_bytes())
            .map_err(|e| Error::internal(format!("writing {}: {e}", note.display())))?;
        Ok(Partial(note))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// At daemon start, before `tmp/` is cleared: removes the half-written boxes its notes name
/// (only files named as `package` names them, `.NAME.partial-PID`).
pub fn remove_partials(home: &Home) {
    let Ok(rd) = fs::read_dir(home.tmp()) else { return };
    for e in rd.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with(NOTE)) {
        let Ok(text) = fs::read(e.path()) else { continue };
        let partial = PathBuf::from(std::ffi::OsStr::from_bytes(&text));
        let ours = partial
            .file_name()
            .map(|n| n.to_string_lossy())
            .is_some_and(|n| n.starts_with('.') && n.contains(".partial-"));
        if ours && partial.is_absolute() && fs::remove_file(&partial).is_ok() {
            log(&format!("removed {}, a box that a crash left half-written", partial.display()));
        }
        let _ = fs::remove_file(e.path());
    }
}

impl Machines {
    pub fn package(&self, p: PackageParams, report: Reporter) -> Result<Value> {
        let output = absolute("output", &p.output)?;
        let vagrantfile = p.vagrantfile.as_deref().map(|v| absolute("vagrantfile", v)).transpose()?;
        if let Some(v) = &vagrantfile {
            if !v.is_file() {
                return Err(Error::not_found(format!("vagrantfile {} is not a file", v.display())));
            }
        }
        let dir = self.existing(&p.id)?;
        let slot = self.slot(&p.id);
        let _op = lock(&slot.op);
        self.roll_forward(&p.id, &dir)?;
        let rec = MachineRecord::load(&dir)?;
        if rec.state == State::Running || rec.state == State::NotCreated {
            return Err(wrong_state(
                format!(
                    "machine {} ({}) is {}: package needs it stopped (machine.stop)",
                    rec.id,
                    rec.name,
                    rec.state.as_str()
                ),
                rec.state,
            ));
        }
        let parent = output
            .parent()
            .filter(|d| d.is_dir())
            .ok_or_else(|| Error::not_found(format!("the directory of {} does not exist", output.display())))?;
        if output.exists() && !p.force {
            return Err(Error::new(
                crate::error::code::ALREADY_EXISTS,
                format!("{} exists: pass force to replace it", output.display()),
            ));
        }
        let files = members(&rec, vagrantfile);
        let meta = metadata(&rec, &files);
        let tmp = parent.join(format!(
            ".{}.partial-{}",
            output.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
            std::process::id()
        ));
        let _ = fs::remove_file(&tmp);
        let note = Partial::note(&self.home, &tmp)?;
        let qcow2: Vec<PathBuf> =
            rec.disks.iter().filter(|d| d.format == DiskFormat::Qcow2).map(|d| PathBuf::from(&d.path)).collect();
        let written = write_box(&tmp, &meta, &files, &qcow2, &report).and_then(|r| {
            fs::rename(&tmp, &output)?;
            File::open(parent)?.sync_all()?;
            Ok(r)
        });
        drop(note);
        let (size, sha256) = match written {
            Ok(r) => r,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(Error::internal(format!("writing {}: {e}", output.display())));
            }
        };
        log(&format!("machine {} packaged as {} ({size} bytes)", rec.id, output.display()));
        Ok(json!({
            "path": output.display().to_string(),
            "size": size,
            "checksum_type": "sha256",
            "checksum": sha256,
            "metadata": meta,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::record::{BoxRef, Disk};

    fn rec(dir: &Path) -> MachineRecord {
        let mut r = crate::machines::record::tests::rec();
        r.kernel = Some(dir.join("vmlinux").display().to_string());
        r.initrd = Some(dir.join("initrd.img").display().to_string());
        r.disks = vec![Disk {
            path: dir.join("disk-0.img").display().to_string(),
            source: None,
            owned: true,
            format: Default::default(),
        }];
        r.bx = Some(BoxRef {
            name: "t".into(),
            version: "0".into(),
            architecture: "amd64".into(),
            path: dir.display().to_string(),
        });
        r
    }

    #[test]
    fn a_crash_leaves_no_partial_box() {
        let dir = std::env::temp_dir().join(format!("xhyve-package-partial-{}", std::process::id()));
        let home = Home { root: dir.join("home") };
        home.create().unwrap();
        let out = dir.join("out");
        fs::create_dir_all(&out).unwrap();
        let partial = out.join(".my.box.partial-123");
        let other = out.join("my.box");
        fs::write(&partial, b"half").unwrap();
        fs::write(&other, b"a user's file").unwrap();
        std::mem::forget(Partial::note(&home, &partial).unwrap()); // the crash: no drop
        std::mem::forget(Partial::note(&home, &other).unwrap()); // not a name package writes
        let done = Partial::note(&home, &out.join(".done.box.partial-1")).unwrap();
        drop(done);
        assert_eq!(fs::read_dir(home.tmp()).unwrap().count(), 2, "a finished package drops its note");
        remove_partials(&home);
        assert!(!partial.exists() && other.exists());
        assert_eq!(fs::read_dir(home.tmp()).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_firmware_machine_carries_its_variable_store_and_no_kernel() {
        let dir = Path::new("/m");
        let mut r = rec(dir);
        (r.firmware, r.kernel, r.initrd) = (Firmware::Efi, None, None);
        r.efi_vars = Some("/m/efi-vars.fd".into());
        let files = members(&r, None);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["disk0.img", "efi-vars.fd"]);
        let meta = metadata(&r, &files);
        assert_eq!(
            (&meta["firmware"], &meta["efi_vars"], &meta["disks"]),
            (&json!("efi"), &json!("efi-vars.fd"), &json!(["disk0.img"]))
        );
        assert!(meta.get("kernel").is_none() && meta.get("initrd").is_none(), "{meta}");
        // A kexec machine's metadata says nothing of firmware (older daemons read it too).
        assert!(metadata(&rec(dir), &members(&rec(dir), None)).get("firmware").is_none());
    }

    #[test]
    fn writes_a_box_that_names_its_files() {
        let dir = std::env::temp_dir().join(format!("xhyve-package-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vmlinux"), b"kernel").unwrap();
        fs::write(dir.join("initrd.img"), b"initrd").unwrap();
        let disk = File::create(dir.join("disk-0.img")).unwrap();
        disk.set_len(1 << 20).unwrap();
        let r = rec(&dir);
        let files = members(&r, None);
        let meta = metadata(&r, &files);
        assert_eq!(meta["kernel"], "vmlinux");
        assert_eq!(meta["initrd"], "initrd.img");
        assert_eq!(meta["disks"], json!(["disk0.img"]));
        assert_eq!(meta.get("fast_start"), None);
        let mut fast = r.clone();
        fast.fast_start = true;
        assert_eq!(metadata(&fast, &files)["fast_start"], true);
        let out = dir.join("out.box");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(0u64));
        let s = seen.clone();
        let report: Reporter = std::sync::Arc::new(move |_: &str, done: u64, _: Option<u64>| {
            *s.lock().unwrap() = done;
        });
        let (size, sum) = write_box(&out, &meta, &files, &[], &report).unwrap();
        assert_eq!(*seen.lock().unwrap(), 12 + (1 << 20));
        let bytes = fs::read(&out).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(sum, hex(&Sha256::digest(&bytes)));
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            names.push((e.path().unwrap().display().to_string(), e.size()));
        }
        assert_eq!(
            names,
            vec![
                ("metadata.json".to_string(), serde_json::to_vec_pretty(&meta).unwrap().len() as u64),
                ("vmlinux".into(), 6),
                ("initrd.img".into(), 6),
                ("disk0.img".into(), 1 << 20),
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
