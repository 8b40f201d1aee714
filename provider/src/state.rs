//! State files written atomically: temp file in the same directory, fsync, rename, fsync dir;
//! and the Unix time their time stamps carry.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `data` so that a reader sees either the old or the new content, never a
/// mix, even across a crash.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name =
        path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "state path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes the temp files in `dir` that `write_atomic` calls of dead processes left (a crash
/// between create and rename); those of live processes (a VMM's runner writing its exit record)
/// are theirs to rename.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = temp_writer(&name) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The pid in a `write_atomic` temp name, `.NAME.tmp.PID.SEQ`.
fn temp_writer(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp.")?;
    let (pid, seq) = tail.split_once('.')?;
    seq.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// `write_atomic` of a value as pretty JSON with a trailing newline.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    data.push(b'\n');
    write_atomic(path, &data)
}

/// Seconds since the Unix epoch (records' `created_at`, `exited_at`, lease times).
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("xhyve-state-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("box.json");
        write_atomic(&p, b"one").unwrap();
        write_json_atomic(&p, &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "{\n  \"a\": 1\n}\n");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("box.json")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temps_of_dead_writers_go() {
        let dir = std::env::temp_dir().join(format!("xhyve-state-temps-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // pid_max is at most 2^22: this pid cannot be alive.
        let dead = dir.join(".machine.json.tmp.4194305.0");
        let live = dir.join(format!(".exit.json.tmp.{}.3", std::process::id()));
        for p in [&dead, &live, &dir.join("machine.json"), &dir.join(".x.tmp.y")] {
            fs::write(p, b"{").unwrap();
        }
        remove_stale_temps(&dir);
        let mut names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        let want: Vec<std::ffi::OsString> =
            vec![live.file_name().unwrap().into(), ".x.tmp.y".into(), "machine.json".into()];
        assert_eq!(names, want);
        fs::remove_dir_all(&dir).unwrap();
    }
}
