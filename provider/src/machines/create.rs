//! `machine.create`: checks the params, registers the machine (its directory and a record in
//! state not_created, under the box lock so that box.remove sees it), then copies its boot files
//! and disks; a creation that fails leaves nothing behind.

use super::params::{check_uuid, new_uuid, parse_disk_size, parse_memory, parse_network, CreateParams};
use super::record::{BoxRef, Disk, MachineRecord, State};
use super::source::{self, Source};
use super::{argv::MAX_DISKS, disk, invalid_field, lock, Machines};
use crate::boxes::{store, Boxes};
use crate::error::{code, Error, Result};
use crate::logger::log;
use crate::state;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use xhyve_contract::{hex::hex, random};

impl Machines {
    pub fn create(&self, boxes: &Boxes, p: CreateParams) -> Result<Value> {
        if p.name.trim().is_empty() || p.name.len() > 200 || p.name.chars().any(char::is_control) {
            return Err(invalid_field("name", "a machine name is 1 to 200 printable characters"));
        }
        let meta = Source::resolve(&self.home, p.bx.as_ref(), p.kernel.as_deref(), p.initrd.as_deref())?;
        let box_name = meta.bx.as_ref().map(|(_, r)| r.name.clone());
        let cpus = p.cpus.or(meta.cpus).unwrap_or(1);
        if !(1..=255).contains(&cpus) {
            return Err(invalid_field("cpus", format!("{cpus}: from 1 to 255")));
        }
        let memory = match (&p.memory, &meta.memory) {
            (Some(m), _) => parse_memory(m).map_err(|e| invalid_field("memory", e))?,
            (None, Some(m)) => parse_memory(m).map_err(|e| {
                Error::bad_box(format!("box {:?}: metadata.json memory: {e}", box_name.as_deref().unwrap_or_default()))
            })?,
            (None, None) => "256M".into(),
        };
        let cmdline = p.cmdline.clone().or(meta.cmdline.clone()).unwrap_or_else(|| "console=ttyS0".into());
        if cmdline.contains('\n') || cmdline.contains('\0') {
            return Err(invalid_field("cmdline", "has a newline or NUL"));
        }
        let network = parse_network(p.network.as_ref()).map_err(|e| invalid_field("network", e))?;
        // The machine's disks in order: copies of the box's, then the extra ones (a new empty
        // disk {size}, an image used in place {path}, or one copied into the machine {copy}).
        enum Plan {
            Copy(PathBuf),
            New(u64),
            InPlace(PathBuf),
        }
        let mut plan: Vec<Plan> = meta.disks.iter().cloned().map(Plan::Copy).collect();
        for (i, d) in p.disks.iter().enumerate() {
            let field = format!("disks[{i}]");
            plan.push(match (&d.size, &d.path, &d.copy) {
                (Some(s), None, None) => {
                    Plan::New(parse_disk_size(s).map_err(|e| invalid_field(&field, e))?)
                }
                (None, Some(path), None) => Plan::InPlace(source::given_file(&field, path)?),
                (None, None, Some(path)) => Plan::Copy(source::given_file(&field, path)?),
                _ => {
                    return Err(invalid_field(
                        &field,
                        "give one of size (a new empty disk), path (an existing image used in place) or copy (an image copied into the machine)",
                    ))
                }
            });
        }
        if plan.len() > MAX_DISKS {
            return Err(invalid_field("disks", format!("at most {MAX_DISKS} disks")));
        }
        // disk_size grows the first disk's copy (sparse), as Packer's disk_size does.
        let grow_to = match &p.disk_size {
            None => None,
            Some(v) => {
                let size = parse_disk_size(v).map_err(|e| invalid_field("disk_size", e))?;
                let Some(Plan::Copy(first)) = plan.first() else {
                    return Err(invalid_field(
                        "disk_size",
                        "grows the first disk, which must be a copy (a box disk or {copy}); there is none",
                    ));
                };
                let have = fs::metadata(first)?.len();
                if size < have {
                    return Err(invalid_field(
                        "disk_size",
                        format!("{size} bytes is smaller than the first disk ({have} bytes); disks only grow"),
                    ));
                }
                Some(size)
            }
        };
        let uuid = match &p.uuid {
            Some(u) => check_uuid(u).map_err(|e| invalid_field("uuid", e))?,
            None => new_uuid()?,
        };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(self.home.machines())?;
        // The record appears under the box lock: box.remove either sees it or ran before.
        let (id, dir, mut rec) = {
            let _g = lock(&boxes.lock);
            if let Some((_, other)) = self.records().into_iter().find(|(_, r)| r.uuid == uuid) {
                return Err(Error::new(
                    code::ALREADY_EXISTS,
                    format!("machine {} ({}) already has uuid {uuid}", other.id, other.name),
                ));
            }
            if let Some((bdir, brec)) = &meta.bx {
                if !bdir.join(store::RECORD).is_file() {
                    return Err(Error::not_found(format!("box {:?} was just removed", brec.name)));
                }
            }
            let (id, dir) = loop {
                let id = hex(&random::bytes::<6>().map_err(Error::internal)?);
                let dir = self.dir(&id);
                match fs::DirBuilder::new().mode(0o700).create(&dir) {
                    Ok(()) => break (id, dir),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(Error::internal(format!("creating {}: {e}", dir.display()))),
                }
            };
            if dir.to_string_lossy().contains(',') {
                let _ = fs::remove_dir(&dir);
                return Err(Error::internal(format!(
                    "{}: xhyve's options cannot carry a path with a comma; use another XHYVE_HOME",
                    dir.display()
                )));
            }
            let disks = plan
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let own = dir.join(format!("disk{i}.img")).display().to_string();
                    match d {
                        Plan::Copy(src) => Disk { path: own, source: Some(src.display().to_string()), owned: true },
                        Plan::New(_) => Disk { path: own, source: None, owned: true },
                        Plan::InPlace(p) => Disk { path: p.display().to_string(), source: None, owned: false },
                    }
                })
                .collect();
            // Boot files of a box stay in the box (box.remove refuses while machines use it);
            // files given directly are copied into the machine, which then owns them.
            let (kernel, initrd) = match &meta.bx {
                Some(_) => (meta.kernel.clone(), meta.initrd.clone()),
                None => source::boot_paths(&dir, &meta.kernel, meta.initrd.as_deref()),
            };
            let rec = MachineRecord {
                id: id.clone(),
                name: p.name.clone(),
                uuid: uuid.clone(),
                bx: meta.bx.as_ref().map(|(bdir, brec)| BoxRef {
                    name: brec.name.clone(),
                    version: brec.version.clone(),
                    architecture: brec.architecture.clone(),
                    path: bdir.display().to_string(),
                }),
                cpus,
                memory,
                cmdline,
                kernel: kernel.display().to_string(),
                initrd: initrd.map(|p| p.display().to_string()),
                disks,
                network,
                created_at: state::now(),
                state: State::NotCreated,
                exit_status: None,
                exit_signal: None,
                exit_reason: None,
                process: None,
                ssh_port: None,
                stop_requested: false,
            };
            if let Err(e) = rec.save(&dir) {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
            (id, dir, rec)
        };
        let slot = self.slot(&id);
        let _op = lock(&slot.op);
        let made = (|| -> Result<()> {
            // Without a box, the kernel and initrd are copied to where the record says.
            let boot = std::iter::once((&meta.kernel, &rec.kernel))
                .chain(meta.initrd.iter().zip(&rec.initrd))
                .filter(|_| meta.bx.is_none());
            for (src, dst) in boot {
                let dst = Path::new(dst);
                fs::create_dir_all(dst.parent().unwrap_or(&dir))
                    .and_then(|()| fs::copy(src, dst))
                    .map_err(|e| Error::internal(format!("copying {} to {}: {e}", src.display(), dst.display())))?;
            }
            for (i, d) in plan.iter().enumerate() {
                let dst = Path::new(&rec.disks[i].path);
                match d {
                    Plan::Copy(src) => {
                        let how = disk::sparse_copy(src, dst).map_err(|e| {
                            Error::internal(format!("copying {} to {}: {e}", src.display(), dst.display()))
                        })?;
                        log(&format!("machine {id}: {} copied ({how:?})", dst.display()));
                    }
                    Plan::New(size) => disk::create_empty(dst, *size)
                        .map_err(|e| Error::internal(format!("creating {}: {e}", dst.display())))?,
                    Plan::InPlace(_) => {}
                }
            }
            if let Some(size) = grow_to {
                // set_len past the end adds a hole: the grown disk stays sparse.
                let first = Path::new(&rec.disks[0].path);
                fs::OpenOptions::new()
                    .write(true)
                    .open(first)
                    .and_then(|f| f.set_len(size))
                    .map_err(|e| Error::internal(format!("growing {}: {e}", first.display())))?;
            }
            let _g = lock(&slot.rec);
            rec.state = State::Stopped;
            rec.save(&dir)
        })();
        if let Err(e) = made {
            self.remove_dir(&dir);
            return Err(e);
        }
        let from = match &rec.bx {
            Some(b) => format!("box {} {}", b.name, b.version),
            None => format!("kernel {}", rec.kernel),
        };
        log(&format!("machine {id} ({}) created from {from}", rec.name));
        Ok(
            json!({"id": id, "name": rec.name, "uuid": rec.uuid, "state": rec.state.as_str(), "path": dir.display().to_string()}),
        )
    }
}
