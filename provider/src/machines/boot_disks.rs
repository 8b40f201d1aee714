//! The disks of a saved boot (`fast_start.rs`). The saved guest's page cache and mounted file
//! systems describe its disks as they were at the save, so a machine starts from a saved boot
//! only on those very disks: at the save (the guest paused, its images flushed by xhyve's `save`)
//! each disk is copied beside the saved boot, and a machine that starts from it gets a new qcow2
//! overlay on each copy in place of its own disk.
//!
//! That is only right for a machine whose disks are still as `machine.create` made them (`fresh`:
//! no xhyve ran it yet) and hold what every machine of the box starts with: the box's disks (an
//! overlay on one or a copy) and new empty disks. A disk used in place or copied from elsewhere
//! rules the saved boot out, and so does a machine that ran: its disks hold its own data.
//!
//! Copies are named `KEY-GEN.diskN.EXT` (GEN: the save's time), never reused: machines started
//! from an earlier saved boot of the key keep theirs as backing files. `KEY.json` lists the
//! copies; it is written after them and before the saved boot is published.

use super::disk;
use super::overlay;
use super::record::{Disk, DiskFormat, MachineRecord};
use crate::state;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// `KEY.json`: the saved boot's disks, in the machine's order.
#[derive(Serialize, Deserialize)]
struct Saved {
    disks: Vec<SavedDisk>,
}

#[derive(Serialize, Deserialize)]
struct SavedDisk {
    /// The copy's name, beside `KEY.json`.
    file: String,
    format: DiskFormat,
    /// What the guest sees: the copy's virtual size.
    size: u64,
}

/// What the machine's disks add to its saved boot's key (empty without disks); None when they
/// rule a saved boot out (module docs).
pub fn key(rec: &MachineRecord) -> Option<String> {
    if rec.disks.is_empty() {
        return Some(String::new());
    }
    let bx = Path::new(&rec.bx.as_ref()?.path);
    if !rec.fresh {
        return None;
    }
    let mut key = String::new();
    for (i, d) in rec.disks.iter().enumerate() {
        let from = match &d.source {
            _ if !d.owned => return None,
            None => "new".to_string(),
            Some(s) => Path::new(s).strip_prefix(bx).ok()?.display().to_string(),
        };
        let size = virtual_size(d).ok()?;
        key.push_str(&format!("disk{i}={from} {} {size}\n", d.format.name()));
    }
    Some(key)
}

/// The size the guest sees.
fn virtual_size(d: &Disk) -> std::io::Result<u64> {
    match d.format {
        DiskFormat::Raw => Ok(fs::metadata(&d.path)?.len()),
        DiskFormat::Qcow2 => Ok(overlay::Flat::open(Path::new(&d.path))?.size()),
    }
}

fn list_path(snap: &Path) -> PathBuf {
    snap.with_extension("json")
}

/// Copies the paused machine's disks beside the saved boot `snap` (not yet published) and
/// lists them. Returns the copies, which the caller removes should the save fail.
pub fn save(rec: &MachineRecord, snap: &Path) -> Result<Vec<PathBuf>, String> {
    let folder = snap.parent().ok_or("no folder")?;
    let stem = snap.file_stem().ok_or("no file name")?.to_string_lossy();
    let generation = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let (mut made, mut disks) = (Vec::new(), Vec::new());
    let copied = rec.disks.iter().enumerate().try_for_each(|(i, d)| {
        let ext = if d.format == DiskFormat::Qcow2 { "qcow2" } else { "img" };
        let file = format!("{stem}-{generation:x}.disk{i}.{ext}");
        let to = folder.join(&file);
        let size = virtual_size(d).map_err(|e| format!("{}: {e}", d.path))?;
        disk::sparse_copy(Path::new(&d.path), &to)
            .map_err(|e| format!("copying {} to {}: {e}", d.path, to.display()))?;
        made.push(to);
        disks.push(SavedDisk { file, format: d.format, size });
        Ok::<(), String>(())
    });
    let listed = copied.and_then(|()| {
        let list = list_path(snap);
        state::write_json_atomic(&list, &Saved { disks }).map_err(|e| format!("writing {}: {e}", list.display()))
    });
    if let Err(why) = listed {
        for f in &made {
            let _ = fs::remove_file(f);
        }
        return Err(why);
    }
    Ok(made)
}

/// New overlays in the machine's directory `dir`, one on each of the saved boot's disk copies:
/// the disks a machine starting from `snap` runs on. The caller records them (and removes them
/// should the start fail).
pub fn overlays(rec: &MachineRecord, snap: &Path, dir: &Path) -> Result<Vec<Disk>, String> {
    let list = list_path(snap);
    let saved: Saved = fs::read(&list)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("the saved boot's disk list {}: {e}", list.display()))?;
    if saved.disks.len() != rec.disks.len() {
        return Err(format!(
            "{} lists {} disk(s), the machine has {}",
            list.display(),
            saved.disks.len(),
            rec.disks.len()
        ));
    }
    let folder = snap.parent().ok_or("no folder")?;
    let mut made: Vec<Disk> = Vec::new();
    for (i, s) in saved.disks.iter().enumerate() {
        let backing = folder.join(&s.file);
        let path = dir.join(format!("disk{i}.boot.qcow2"));
        let _ = fs::remove_file(&path); // left by a start that failed before it was recorded
        if let Err(e) = overlay::create(&path, &backing, s.format, s.size) {
            remove(&made);
            return Err(format!("making {} an overlay on {}: {e}", path.display(), backing.display()));
        }
        made.push(Disk {
            path: path.display().to_string(),
            source: Some(backing.display().to_string()),
            owned: true,
            format: DiskFormat::Qcow2,
        });
    }
    Ok(made)
}

/// Removes the files of `disks` the machine owns.
pub fn remove(disks: &[Disk]) {
    for d in disks.iter().filter(|d| d.owned) {
        let _ = fs::remove_file(&d.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::record::tests::rec;
    use crate::machines::record::BoxRef;
    use std::io::Read;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xhyve-boot-disks-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn disk(path: &Path, source: Option<&Path>, owned: bool, format: DiskFormat) -> Disk {
        Disk { path: path.display().to_string(), source: source.map(|s| s.display().to_string()), owned, format }
    }

    #[test]
    fn key_only_for_fresh_machines_on_box_and_new_disks() {
        let d = tmp("key");
        let (bx, m) = (d.join("box"), d.join("m"));
        fs::create_dir_all(&bx).unwrap();
        fs::create_dir_all(&m).unwrap();
        fs::write(bx.join("disk.img"), vec![7u8; 4096]).unwrap();
        overlay::create(&m.join("disk0.qcow2"), &bx.join("disk.img"), DiskFormat::Raw, 1 << 20).unwrap();
        fs::write(m.join("disk1.img"), vec![0u8; 8192]).unwrap();
        let mut r = rec();
        r.bx = Some(BoxRef {
            name: "b".into(),
            version: "1".into(),
            architecture: "amd64".into(),
            path: bx.display().to_string(),
        });
        r.fresh = true;
        assert_eq!(key(&r).as_deref(), Some(""), "no disks");
        r.disks = vec![
            disk(&m.join("disk0.qcow2"), Some(&bx.join("disk.img")), true, DiskFormat::Qcow2),
            disk(&m.join("disk1.img"), None, true, DiskFormat::Raw),
        ];
        assert_eq!(key(&r).unwrap(), "disk0=disk.img qcow2 1048576\ndisk1=new raw 8192\n");
        let mut ran = r.clone();
        ran.fresh = false;
        assert_eq!(key(&ran), None, "a machine that ran has its own data");
        let mut elsewhere = r.clone();
        elsewhere.disks[1].source = Some("/srv/images/data.img".into());
        assert_eq!(key(&elsewhere), None, "copied from outside the box");
        let mut in_place = r.clone();
        in_place.disks[1].owned = false;
        assert_eq!(key(&in_place), None, "a disk used in place");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn saved_disks_become_the_backing_of_new_overlays() {
        let d = tmp("save");
        let (boots, m, n) = (d.join("saved-boots"), d.join("m"), d.join("n"));
        for p in [&boots, &m, &n] {
            fs::create_dir_all(p).unwrap();
        }
        let mut data = vec![0u8; 1 << 20];
        data[512..517].copy_from_slice(b"saved");
        fs::write(m.join("disk0.img"), &data).unwrap();
        let mut r = rec();
        r.disks = vec![disk(&m.join("disk0.img"), None, true, DiskFormat::Raw)];
        let snap = boots.join("abc.snap");
        let made = save(&r, &snap).unwrap();
        assert_eq!(made.len(), 1);
        assert!(made[0].file_name().unwrap().to_string_lossy().starts_with("abc-"));
        // The machine writes on after the save: the copy keeps the saved content.
        fs::write(m.join("disk0.img"), vec![1u8; 1 << 20]).unwrap();
        let new = overlays(&r, &snap, &n).unwrap();
        assert_eq!(new[0].format, DiskFormat::Qcow2);
        assert_eq!(new[0].source.as_deref(), Some(made[0].to_str().unwrap()));
        let mut flat = overlay::Flat::open(Path::new(&new[0].path)).unwrap();
        let mut all = Vec::new();
        flat.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        // A second save of the key never overwrites the first one's copies.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let again = save(&r, &snap).unwrap();
        assert_ne!(again, made);
        assert!(made[0].is_file());
        let mut two = r.clone();
        two.disks.push(r.disks[0].clone());
        assert!(overlays(&two, &snap, &n).unwrap_err().contains("lists 1 disk(s), the machine has 2"));
        fs::remove_dir_all(&d).unwrap();
    }
}
