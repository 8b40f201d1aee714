//! `restoring.json`: the journal of a snapshot restore, so that one a crash (or a failed rename)
//! cuts short rolls forward instead of leaving old and restored disks mixed. The restore writes
//! it (atomically) once every `*.restoring` copy is complete, then makes its renames and saves
//! the record, and removes it last. `finish` does what is left of a journal, again and again if
//! need be (a rename already made is skipped); `*.restoring` files without a journal are copies
//! a restore never committed to, and go.

use super::record::{MachineRecord, State, SAVED_STATE};
use crate::error::{Error, Result};
use crate::state;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

pub const FILE: &str = "restoring.json";
/// The suffix of the copies a restore builds beside the files they replace.
const SUFFIX: &str = ".restoring";

#[derive(Debug, Serialize, Deserialize)]
pub struct Journal {
    pub snapshot: String,
    /// Each complete copy and the machine's file it replaces.
    pub renames: Vec<Rename>,
    /// The machine's state once restored (`saved` with the snapshot's VM state, else `stopped`).
    pub state: State,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Rename {
    pub from: PathBuf,
    pub to: PathBuf,
}

/// Where a restore builds the file that replaces `path`.
pub fn restoring(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(SUFFIX);
    path.with_file_name(name)
}

/// Commits the restore of machine `dir`: from here on it rolls forward.
pub fn begin(dir: &Path, j: &Journal) -> Result<()> {
    let path = dir.join(FILE);
    state::write_json_atomic(&path, j).map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))
}

/// Does what is left of the journal in `dir` (the caller holds the machine's locks): the renames
/// not yet made, the saved state a stopped snapshot drops, the record; then removes the journal.
/// Without a journal, removes the `*.restoring` leftovers. The snapshot's name when it finished one.
pub fn finish(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(FILE);
    let io = |what: &str, p: &Path, e: std::io::Error| Error::internal(format!("{what} {}: {e}", p.display()));
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            remove_leftovers(dir);
            return Ok(None);
        }
        Err(e) => return Err(io("reading", &path, e)),
    };
    let j: Journal =
        serde_json::from_slice(&text).map_err(|e| Error::internal(format!("cannot parse {}: {e}", path.display())))?;
    for r in &j.renames {
        // A copy that is gone was renamed before the cut (the journal follows complete copies).
        if r.from.exists() {
            fs::rename(&r.from, &r.to).map_err(|e| io("renaming into place", &r.to, e))?;
        }
    }
    if j.state != State::Saved {
        match fs::remove_file(dir.join(SAVED_STATE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing", &dir.join(SAVED_STATE), e))
            }
            _ => {}
        }
    }
    let mut rec = MachineRecord::load(dir)?;
    rec.state = j.state;
    rec.exit_reason = Some(format!("restored from snapshot {}", j.snapshot));
    rec.save(dir)?;
    fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
    Ok(Some(j.snapshot))
}

fn remove_leftovers(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().ends_with(SUFFIX) {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_cut_short_rolls_forward() {
        let dir = std::env::temp_dir().join(format!("xhyve-restore-journal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut rec = crate::machines::record::tests::rec();
        rec.state = State::Aborted;
        rec.save(&dir).unwrap();
        let disks = [dir.join("disk0.img"), dir.join("disk1.img")];
        let saved = dir.join(SAVED_STATE);
        for (i, d) in disks.iter().enumerate() {
            fs::write(d, format!("old{i}")).unwrap();
            fs::write(restoring(d), format!("new{i}")).unwrap();
        }
        fs::write(&saved, b"old state").unwrap();
        fs::write(restoring(&saved), b"new state").unwrap();
        let renames =
            [&disks[0], &disks[1], &saved].iter().map(|&to| Rename { from: restoring(to), to: to.clone() }).collect();
        begin(&dir, &Journal { snapshot: "s1".into(), renames, state: State::Saved }).unwrap();
        // The kill: after the first rename of three.
        fs::rename(restoring(&disks[0]), &disks[0]).unwrap();
        assert_eq!(finish(&dir).unwrap().as_deref(), Some("s1"));
        assert_eq!(fs::read_to_string(&disks[0]).unwrap(), "new0");
        assert_eq!(fs::read_to_string(&disks[1]).unwrap(), "new1");
        assert_eq!(fs::read_to_string(&saved).unwrap(), "new state");
        let rec = MachineRecord::load(&dir).unwrap();
        assert_eq!((rec.state, rec.exit_reason.as_deref()), (State::Saved, Some("restored from snapshot s1")));
        assert!(!dir.join(FILE).exists());
        assert_eq!(finish(&dir).unwrap(), None, "done once");

        // A stopped snapshot drops the saved state, even when every rename was made before the cut.
        let renames = vec![Rename { from: restoring(&disks[1]), to: disks[1].clone() }];
        begin(&dir, &Journal { snapshot: "s0".into(), renames, state: State::Stopped }).unwrap();
        assert_eq!(finish(&dir).unwrap().as_deref(), Some("s0"));
        assert!(!saved.exists() && MachineRecord::load(&dir).unwrap().state == State::Stopped);

        // Copies without a journal were never committed to: they go, the disks stay.
        fs::write(restoring(&disks[0]), b"half").unwrap();
        assert_eq!(finish(&dir).unwrap(), None);
        assert!(!restoring(&disks[0]).exists());
        assert_eq!(fs::read_to_string(&disks[0]).unwrap(), "new0");
        fs::remove_dir_all(&dir).unwrap();
    }
}
