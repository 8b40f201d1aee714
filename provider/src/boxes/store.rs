//! The box store: `$XHYVE_HOME/boxes/NAME/VERSION/ARCH/` (NAME with `/` as `-VAGRANTSLASH-`,
//! as Vagrant stores it; VERSION in its one spelling, `Version::canonical_text`), each with the
//! box's files and our `box.json` record. One box is one directory: a name with
//! `-VAGRANTSLASH-` in it is refused, equal versions are one. Stores written before that keep
//! working: their records are read by what they say (a name spelt with `-VAGRANTSLASH-` is the
//! name with `/`), wherever their directories are.

use super::version::Version;
use crate::error::{code, Context, Error, Result};
use crate::home::Home;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

pub const RECORD: &str = "box.json";
const SLASH: &str = "-VAGRANTSLASH-";

/// What `box.json` records about an installed box.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoxRecord {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub provider: String,
    /// Logical bytes of the unpacked files.
    pub size: u64,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
    pub checksum_type: String,
    pub checksum: String,
    pub added_at: u64,
}

/// One entry of `box.list`.
#[derive(Clone, Debug, Serialize)]
pub struct BoxInfo {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub provider: String,
    pub path: String,
    pub size: u64,
}

pub fn escape_name(name: &str) -> String {
    name.replace('/', SLASH)
}

/// A name as a store written before names were checked may record it: `a-VAGRANTSLASH-b` is
/// `a/b`, as Vagrant reads its own store.
fn unescape_name(name: &str) -> String {
    name.replace(SLASH, "/")
}

/// Box names as Vagrant accepts them (`acme/tiny`), nothing that could leave the store, and
/// nothing that names another box's directory.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err("box name must be 1 to 200 characters".into());
    }
    if name.contains(SLASH) {
        return Err(format!(
            "box name {name:?}: {SLASH} is how the store writes \"/\"; name the box {:?}",
            unescape_name(name)
        ));
    }
    if name.chars().any(|c| c.is_control() || c == '\\' || c == ':') {
        return Err(format!("box name {name:?} has a forbidden character"));
    }
    if name.split('/').any(|p| p.is_empty() || p == "." || p == ".." || p.starts_with('.')) || name.starts_with(' ') {
        return Err(format!("box name {name:?} is not a valid name (e.g. \"tiny\" or \"acme/tiny\")"));
    }
    Ok(())
}

pub fn check_arch(arch: &str) -> std::result::Result<(), String> {
    if arch.is_empty() || arch.len() > 32 || !arch.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("architecture {arch:?} is not valid (e.g. amd64, arm64)"));
    }
    Ok(())
}

pub fn box_dir(home: &Home, name: &str, version: &Version, arch: &str) -> PathBuf {
    home.boxes().join(escape_name(name)).join(version.canonical_text()).join(arch)
}

fn subdirs(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok()).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every installed box with its record, sorted by name, version (newest last) and architecture.
pub fn installed(home: &Home) -> Vec<(PathBuf, BoxRecord)> {
    let mut out = Vec::new();
    for n in subdirs(&home.boxes()) {
        for v in subdirs(&n) {
            for a in subdirs(&v) {
                if let Ok(text) = fs::read(a.join(RECORD)) {
                    if let Ok(mut rec) = serde_json::from_slice::<BoxRecord>(&text) {
                        rec.name = unescape_name(&rec.name);
                        out.push((a, rec));
                    }
                }
            }
        }
    }
    out.sort_by(|(_, a), (_, b)| {
        a.name
            .cmp(&b.name)
            .then_with(|| match (Version::parse(&a.version), Version::parse(&b.version)) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => a.version.cmp(&b.version),
            })
            .then_with(|| a.architecture.cmp(&b.architecture))
    });
    out
}

pub fn info(path: &Path, r: &BoxRecord) -> BoxInfo {
    BoxInfo {
        name: r.name.clone(),
        version: r.version.clone(),
        architecture: r.architecture.clone(),
        provider: r.provider.clone(),
        path: path.display().to_string(),
        size: r.size,
    }
}

pub fn list(home: &Home) -> Vec<BoxInfo> {
    installed(home).iter().map(|(p, r)| info(p, r)).collect()
}

/// The installed boxes that are box `name` at a version equal to `version` for `arch`: one, or
/// several in a store written before versions had one spelling (`1.0` and `1.0.0`).
pub fn find(home: &Home, name: &str, version: &str, arch: &str) -> Vec<(PathBuf, BoxRecord)> {
    installed(home)
        .into_iter()
        .filter(|(_, r)| r.name == name && same_version(version, &r.version) && r.architecture == arch)
        .collect()
}

fn same_version(a: &str, b: &str) -> bool {
    a == b || matches!((Version::parse(a), Version::parse(b)), (Ok(x), Ok(y)) if x == y)
}

/// A machine of the (future) machine registry that uses a box: `machines/*/machine.json` with
/// `box: {name, version, architecture}`.
#[derive(Debug, Deserialize)]
struct MachineBoxRef {
    #[serde(rename = "box")]
    bx: Option<BoxRef>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BoxRef {
    name: String,
    version: Option<String>,
    architecture: Option<String>,
}

/// Machines (their ids, the directory names) that use box `name` at `version`/`arch` (any when
/// None). A machine.json that cannot be read counts as a user: refusing is the safe side.
pub fn machines_using(home: &Home, name: &str, version: Option<&str>, arch: Option<&str>) -> Result<Vec<String>> {
    let mut users = Vec::new();
    for dir in subdirs(&home.machines()) {
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = dir.join("machine.json");
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::internal(format!("cannot read {}: {e}", path.display()))),
        };
        let m: MachineBoxRef = serde_json::from_slice(&text)
            .map_err(|e| Error::internal(format!("cannot parse {}: {e}", path.display())))?;
        let Some(b) = m.bx else { continue };
        let uses = unescape_name(&b.name) == name
            && match (version, b.version.as_deref()) {
                (Some(v), Some(bv)) => same_version(v, bv),
                _ => true,
            }
            && match (arch, b.architecture.as_deref()) {
                (Some(a), Some(ba)) => a == ba,
                _ => true,
            };
        if uses {
            users.push(match m.name {
                Some(n) if n != id => format!("{id} ({n})"),
                _ => id,
            });
        }
    }
    Ok(users)
}

/// Removes box `name` (every version when `version` is None; every architecture when `arch` is
/// None). Refuses while a machine uses one of them. Each box directory is first renamed into
/// `tmp/` so it disappears from the store at once, then deleted.
pub fn remove(home: &Home, name: &str, version: Option<&str>, arch: Option<&str>) -> Result<Vec<BoxInfo>> {
    let victims: Vec<(PathBuf, BoxRecord)> = installed(home)
        .into_iter()
        .filter(|(_, r)| {
            r.name == name
                && version.is_none_or(|v| same_version(v, &r.version))
                && arch.is_none_or(|a| a == r.architecture)
        })
        .collect();
    if victims.is_empty() {
        let what = match (version, arch) {
            (Some(v), Some(a)) => format!("box {name:?} version {v} ({a})"),
            (Some(v), None) => format!("box {name:?} version {v}"),
            (None, Some(a)) => format!("box {name:?} ({a})"),
            (None, None) => format!("box {name:?}"),
        };
        return Err(Error::not_found(format!("{what} is not installed")));
    }
    check_unused(home, &victims)?;
    let mut removed = Vec::new();
    for (path, r) in victims {
        let trash = tempdir_path(home, "remove");
        fs::rename(&path, &trash).ctx(|| format!("removing {}", path.display()))?;
        fs::remove_dir_all(&trash).ctx(|| format!("deleting {}", trash.display()))?;
        prune_empty(home, &path);
        removed.push(info(&path, &r));
    }
    Ok(removed)
}

/// Refuses (-32002) when a machine uses one of `boxes`.
pub fn check_unused(home: &Home, boxes: &[(PathBuf, BoxRecord)]) -> Result<()> {
    for (_, r) in boxes {
        let users = machines_using(home, &r.name, Some(&r.version), Some(&r.architecture))?;
        if !users.is_empty() {
            return Err(Error::new(
                code::IN_USE,
                format!(
                    "box {:?} version {} ({}) is used by machine{} {}: destroy {} first",
                    r.name,
                    r.version,
                    r.architecture,
                    if users.len() > 1 { "s" } else { "" },
                    users.join(", "),
                    if users.len() > 1 { "them" } else { "it" }
                ),
            )
            .with_data(serde_json::json!({ "machines": users })));
        }
    }
    Ok(())
}

/// Removes empty VERSION and NAME directories above a removed box.
pub fn prune_empty(home: &Home, box_dir: &Path) {
    let boxes = home.boxes();
    let mut p = box_dir.parent();
    while let Some(d) = p {
        if d == boxes || !d.starts_with(&boxes) || fs::remove_dir(d).is_err() {
            break;
        }
        p = d.parent();
    }
}

/// Swaps two directories in one step (renameat2 RENAME_EXCHANGE): each name always names one.
pub fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A fresh, unused path in `tmp/`.
pub fn tempdir_path(home: &Home, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    home.tmp().join(format!("{what}-{}-{}-{nanos:x}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_swaps_two_directories() {
        let root = std::env::temp_dir().join(format!("xhyve-store-exchange-{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        for (d, f) in [(&a, "new"), (&b, "old")] {
            fs::create_dir_all(d).unwrap();
            fs::write(d.join(f), b"").unwrap();
        }
        exchange(&a, &b).unwrap();
        assert!(a.join("old").exists() && b.join("new").exists());
        assert!(exchange(&a, &root.join("nope")).is_err(), "both must exist");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn names() {
        assert_eq!(escape_name("acme/tiny"), "acme-VAGRANTSLASH-tiny");
        assert!(check_name("acme/tiny").is_ok());
        assert!(check_name("tiny-1.0_x").is_ok());
        for bad in ["", "..", "a/../b", "/abs", "a//b", ".hidden", "a\\b", "a\nb", "a/", "a-VAGRANTSLASH-b"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_arch("amd64").is_ok());
        assert!(check_arch("../x").is_err());
    }

    #[test]
    fn machine_registry_check() {
        let root = std::env::temp_dir().join(format!("xhyve-store-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let home = Home { root: root.clone() };
        home.create().unwrap();
        let m = home.machines().join("m1");
        fs::create_dir_all(&m).unwrap();
        fs::write(
            m.join("machine.json"),
            r#"{"name":"web","box":{"name":"acme/tiny","version":"1.0.0","architecture":"amd64"}}"#,
        )
        .unwrap();
        fs::create_dir_all(home.machines().join("m2")).unwrap(); // being created: no machine.json yet
        assert_eq!(machines_using(&home, "acme/tiny", Some("1.0"), Some("amd64")).unwrap(), vec!["m1 (web)"]);
        assert_eq!(machines_using(&home, "acme/tiny", None, None).unwrap().len(), 1);
        assert!(machines_using(&home, "acme/tiny", Some("2.0"), None).unwrap().is_empty());
        assert!(machines_using(&home, "acme/tiny", Some("1.0.0"), Some("arm64")).unwrap().is_empty());
        assert!(machines_using(&home, "other", None, None).unwrap().is_empty());
        // A machine recorded before names were checked, with the store's spelling of `/`.
        let old = home.machines().join("m3");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join("machine.json"), r#"{"box":{"name":"acme-VAGRANTSLASH-tiny","version":"3"}}"#).unwrap();
        assert_eq!(machines_using(&home, "acme/tiny", Some("3.0"), None).unwrap(), vec!["m3"]);
        fs::write(m.join("machine.json"), "{broken").unwrap();
        assert!(machines_using(&home, "x", None, None).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
