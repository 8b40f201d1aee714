//! `machine.snapshot.save|restore|list|delete`: named snapshots of a machine, each a directory
//! `snapshots/NAME/` of the machine's: `snapshot.json`, a copy of each disk the machine owns
//! (`diskN.img`, a reflink or a sparse copy: holes stay holes, and a qcow2 overlay copies only
//! what the machine changed) and, when the machine ran or was saved, its VM state
//! (`state.snap`). A running machine is paused for the save (its state and disks then agree)
//! and runs on after it. A restore copies the snapshot's disks beside the machine's and only
//! once all are complete renames them over the current ones, rolling forward from a journal
//! (`restore_journal.rs`) when cut short; the machine ends `saved` (a snapshot with a VM state:
//! `machine.start` carries on from it) or `stopped`.

use super::disk;
use super::record::{MachineRecord, State, SAVED_STATE};
use super::restore_journal::{self, restoring};
use super::{invalid_field, lock, wrong_state, Machines};
use crate::boxes::store;
use crate::error::{code, Error, Result};
use crate::logger::log;
use crate::state;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DIR: &str = "snapshots";
const META: &str = "snapshot.json";
const STATE: &str = "state.snap";

/// `snapshot.json`.
#[derive(Serialize, Deserialize)]
struct Meta {
    name: String,
    created_at: u64,
    /// The machine's state when it was taken (`running`, `saved`, `stopped`, `aborted`).
    machine_state: State,
    /// Whether `state.snap` holds the VM.
    vm_state: bool,
    /// The copied disks: the machine's disk index and the copy's file name.
    disks: Vec<SnapDisk>,
}

#[derive(Serialize, Deserialize)]
struct SnapDisk {
    index: usize,
    file: String,
}

impl Meta {
    fn value(&self, dir: &Path) -> Value {
        json!({
            "name": self.name, "created_at": self.created_at, "machine_state": self.machine_state.as_str(),
            "vm_state": self.vm_state, "size": allocated(dir),
        })
    }
}

/// Bytes the directory's files take on disk (holes not counted).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.blocks() * 512).sum()).unwrap_or(0)
}

/// Snapshot names become directory names: letters, digits and `._+@:-`, not starting with a dot.
fn check_name(name: &str) -> Result<()> {
    let ok = (1..=100).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+@:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid_field("name", format!("{name:?}: 1 to 100 letters, digits and ._+@:- (not starting with a dot)")))
    }
}

fn io_err<'a>(what: &'a str, p: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::internal(format!("{what} {}: {e}", p.display()))
}

/// Removes a directory being built unless it was committed.
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

impl Machines {
    fn snapshot_dir(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(dir.join(DIR).join(name))
    }

    fn load_meta(&self, id: &str, snap: &Path, name: &str) -> Result<Meta> {
        let text = fs::read(snap.join(META)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::not_found(format!(
                    "machine {id} has no snapshot {name:?} (machine.snapshot.list shows its snapshots)"
                ))
            } else {
                Error::internal(format!("reading {}: {e}", snap.join(META).display()))
            }
        })?;
        serde_json::from_slice(&text)
            .map_err(|e| Error::internal(format!("cannot parse {}: {e}", snap.join(META).display())))
    }

    pub fn snapshot_save(self: &Arc<Self>, id: &str, name: &str) -> Result<Value> {
        let dir = self.existing(id)?;
        let target = self.snapshot_dir(&dir, name)?;
        let slot = self.slot(id);
        let _op = lock(&slot.op);
        self.roll_forward(id, &dir)?;
        let rec = MachineRecord::load(&dir)?;
        if rec.state == State::NotCreated {
            return Err(wrong_state(format!("machine {id} was not fully created: destroy it"), rec.state));
        }
        if target.exists() {
            return Err(Error::new(
                code::ALREADY_EXISTS,
                format!("machine {id} already has a snapshot {name:?}: delete it first, or pick another name"),
            ));
        }
        fs::create_dir_all(dir.join(DIR)).map_err(io_err("creating", &dir.join(DIR)))?;
        let tmp = store::tempdir_path(&self.home, "snapshot");
        fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;
        let mut scratch = Scratch(Some(tmp.clone()));
        let vm_state = match (rec.state, &rec.process) {
            (State::Running, Some(p)) => {
                let mut ctl = self.control(id, &dir, &p.argv)?;
                let vmm = |e: String| Error::new(code::VMM_FAILED, format!("machine {id}: {e}"));
                ctl.ask("pause").map_err(vmm)?;
                // Paused, its disks do not change under the copies; it runs on whatever happens.
                let made = ctl
                    .ask(&format!("save {}", tmp.join(STATE).display()))
                    .map_err(vmm)
                    .and_then(|_| copy_disks(&rec, &tmp));
                let resumed = ctl.ask("resume").map_err(vmm);
                let disks = made?;
                resumed?;
                Some(disks)
            }
            (State::Saved, _) => {
                let from = dir.join(SAVED_STATE);
                // Never written in place (a save makes a new file), so the two names may share it.
                fs::hard_link(&from, tmp.join(STATE))
                    .or_else(|_| fs::copy(&from, tmp.join(STATE)).map(|_| ()))
                    .map_err(io_err("copying", &from))?;
                Some(copy_disks(&rec, &tmp)?)
            }
            _ => None,
        };
        let meta = Meta {
            name: name.to_string(),
            created_at: state::now(),
            machine_state: rec.state,
            vm_state: vm_state.is_some(),
            disks: match vm_state {
                Some(d) => d,
                None => copy_disks(&rec, &tmp)?,
            },
        };
        state::write_json_atomic(&tmp.join(META), &meta).map_err(io_err("writing", &tmp.join(META)))?;
        fs::rename(&tmp, &target).map_err(io_err("moving the snapshot to", &target))?;
        scratch.0 = None;
        log(&format!("machine {id}: snapshot {name} saved ({})", rec.state.as_str()));
        Ok(meta.value(&target))
    }

    pub fn snapshot_list(&self, id: &str) -> Result<Value> {
        let dir = self.existing(id)?;
        let mut v: Vec<(Meta, PathBuf)> = fs::read_dir(dir.join(DIR))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter_map(|p| Some((serde_json::from_slice::<Meta>(&fs::read(p.join(META)).ok()?).ok()?, p)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|(a, _), (b, _)| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(Value::Array(v.iter().map(|(m, p)| m.value(p)).collect()))
    }

    pub fn snapshot_delete(&self, id: &str, name: &str) -> Result<Value> {
        let dir = self.existing(id)?;
        let snap = self.snapshot_dir(&dir, name)?;
        let slot = self.slot(id);
        let _op = lock(&slot.op);
        self.load_meta(id, &snap, name)?;
        self.remove_dir(&snap);
        log(&format!("machine {id}: snapshot {name} deleted"));
        Ok(json!({"name": name, "deleted": true}))
    }

    pub fn snapshot_restore(self: &Arc<Self>, id: &str, name: &str) -> Result<Value> {
        let dir = self.existing(id)?;
        let snap = self.snapshot_dir(&dir, name)?;
        let slot = self.slot(id);
        let _op = lock(&slot.op);
        self.roll_forward(id, &dir)?;
        let meta = self.load_meta(id, &snap, name)?;
        let rec = MachineRecord::load(&dir)?;
        if rec.state == State::NotCreated {
            return Err(wrong_state(format!("machine {id} was not fully created: destroy it"), rec.state));
        }
        // The copies first, beside the disks they replace: the current disks stay whole until
        // every copy is complete.
        let mut ready: Vec<(PathBuf, PathBuf)> = Vec::new();
        let cleanup = |ready: &[(PathBuf, PathBuf)]| ready.iter().for_each(|(tmp, _)| drop(fs::remove_file(tmp)));
        let prepared = (|| -> Result<()> {
            for d in &meta.disks {
                let Some(to) = rec.disks.get(d.index).filter(|x| x.owned) else {
                    return Err(Error::internal(format!(
                        "snapshot {name:?} holds disk {} which machine {id} does not own",
                        d.index
                    )));
                };
                let to = PathBuf::from(&to.path);
                let tmp = restoring(&to);
                let _ = fs::remove_file(&tmp);
                ready.push((tmp.clone(), to));
                disk::sparse_copy(&snap.join(&d.file), &tmp).map_err(io_err("copying", &snap.join(&d.file)))?;
            }
            if meta.vm_state {
                let to = dir.join(SAVED_STATE);
                let tmp = restoring(&to);
                let _ = fs::remove_file(&tmp);
                ready.push((tmp.clone(), to));
                fs::hard_link(snap.join(STATE), &tmp)
                    .or_else(|_| fs::copy(snap.join(STATE), &tmp).map(|_| ()))
                    .map_err(io_err("copying", &snap.join(STATE)))?;
            }
            Ok(())
        })();
        if let Err(e) = prepared {
            cleanup(&ready);
            return Err(e);
        }
        // The machine's present goes: its VMM (killed: its state is being replaced), its saved state.
        if let Some(p) = self.mark_stop_requested(id)? {
            if let Err(e) = self.kill_and_wait(id, &p) {
                cleanup(&ready);
                return Err(e);
            }
        }
        // Committed: from the journal on, a crash or a failed rename rolls forward (the next
        // call on the machine, or the daemon's next start, finishes it).
        let journal = restore_journal::Journal {
            snapshot: name.to_string(),
            renames: ready
                .iter()
                .map(|(from, to)| restore_journal::Rename { from: from.clone(), to: to.clone() })
                .collect(),
            state: if meta.vm_state { State::Saved } else { State::Stopped },
        };
        if let Err(e) = restore_journal::begin(&dir, &journal) {
            cleanup(&ready);
            return Err(e);
        }
        let _g = lock(&slot.rec);
        restore_journal::finish(&dir)?;
        let rec = MachineRecord::load(&dir)?;
        log(&format!("machine {id}: snapshot {name} restored ({})", rec.state.as_str()));
        Ok(rec.state_value())
    }
}

/// Copies the machine's own disks into `to`; their entries for `snapshot.json`.
fn copy_disks(rec: &MachineRecord, to: &Path) -> Result<Vec<SnapDisk>> {
    let mut out = Vec::new();
    for (index, d) in rec.disks.iter().enumerate().filter(|(_, d)| d.owned) {
        let from = Path::new(&d.path);
        let file =
            format!("disk{index}{}", from.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default());
        disk::sparse_copy(from, &to.join(&file)).map_err(io_err("copying", from))?;
        out.push(SnapDisk { index, file });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "push_1701234567_42", "v1.0+b@x:y-z"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(101)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(restoring(Path::new("/m/disk0.img")), Path::new("/m/disk0.img.restoring"));
    }
}
