//! Where a new machine's boot files, first disks and defaults come from: an installed box (its
//! `metadata.json`, see boxes/README.md) or files named in `machine.create` itself (a machine
//! without a box, as Packer builds from a kernel, or from a disk image its firmware boots).

use super::invalid_field;
use super::record::Firmware;
use crate::boxes::{catalog, store, version};
use crate::error::{Error, Result};
use crate::home::Home;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

/// A machine's origin: the box (its directory and record) or none, and the files and defaults
/// it gives (a box's `metadata.json`; for files given directly, no disks and no defaults).
pub(super) struct Source {
    pub bx: Option<(PathBuf, store::BoxRecord)>,
    /// How the box boots (`firmware`, kexec unless it says efi).
    pub firmware: Firmware,
    /// A box that boots through firmware may name no kernel.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub cpus: Option<u32>,
    pub memory: Option<Value>,
    pub disks: Vec<PathBuf>,
    /// The box's metadata says `fast_start` (boxes/README.md, "Fast start").
    pub fast_start: bool,
    /// The box's UEFI variable store (`efi_vars`, a packaged firmware machine's).
    pub efi_vars: Option<PathBuf>,
}

impl Source {
    /// machine.create's `box`, or its `kernel` and `initrd`: exactly one of the two ways, or
    /// neither with `firmware` efi (the firmware boots the first of the disks given).
    pub fn resolve(
        home: &Home,
        bx: Option<&Value>,
        kernel: Option<&str>,
        initrd: Option<&str>,
        firmware: Option<Firmware>,
    ) -> Result<Source> {
        match (bx, kernel) {
            (Some(spec), None) => {
                if initrd.is_some() {
                    return Err(invalid_field("initrd", "a box names its own initrd"));
                }
                let (dir, rec) = resolve_box(home, spec)?;
                let mut src = read_meta(&dir, &rec.name)?;
                src.bx = Some((dir, rec));
                Ok(src)
            }
            (None, Some(k)) => Ok(Source {
                kernel: Some(given_file("kernel", k)?),
                initrd: initrd.map(|i| given_file("initrd", i)).transpose()?,
                ..Source::files(Firmware::Kexec)
            }),
            (None, None) if firmware == Some(Firmware::Efi) => {
                if initrd.is_some() {
                    return Err(invalid_field("initrd", "firmware efi boots no initrd of its own: give a kernel too"));
                }
                Ok(Source::files(Firmware::Efi))
            }
            (Some(_), Some(_)) => {
                Err(invalid_field("kernel", "give a box or a kernel, not both (a box names its kernel)"))
            }
            (None, None) => Err(invalid_field(
                "box",
                "missing: give an installed box, or a kernel (and initrd) to boot without one, or firmware efi and disks",
            )),
        }
    }

    /// A machine without a box: nothing but what its params give.
    fn files(firmware: Firmware) -> Source {
        Source {
            bx: None,
            firmware,
            kernel: None,
            initrd: None,
            cmdline: None,
            cpus: None,
            memory: None,
            disks: Vec::new(),
            fast_start: false,
            efi_vars: None,
        }
    }
}

/// Why `xhyve` cannot be given `path` as a file, if it cannot: xhyve's options separate with
/// commas, and what it opens must be a regular file.
pub(super) fn unusable_by_vmm(path: &Path) -> Option<String> {
    if path.to_string_lossy().contains(',') {
        return Some(format!("{} has a comma, which xhyve's options cannot carry", path.display()));
    }
    match fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(_) => Some(format!("{} is not a regular file", path.display())),
        Err(e) => Some(format!("{}: {e}", path.display())),
    }
}

/// A file named in machine.create's params: an absolute path to a file xhyve can be given.
pub(super) fn given_file(field: &str, path: &str) -> Result<PathBuf> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(invalid_field(field, format!("{path:?}: an absolute path without commas")));
    }
    match unusable_by_vmm(&p) {
        None => Ok(p),
        Some(why) => Err(invalid_field(field, why)),
    }
}

/// A file named by a box's metadata: relative, inside the box, a file xhyve can be given.
fn box_file(dir: &Path, rel: &str, what: &str, box_name: &str) -> Result<PathBuf> {
    let bad = |m: String| Error::bad_box(format!("box {box_name:?}: metadata.json {what}: {m}"));
    let p = Path::new(rel);
    if rel.is_empty() || p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(bad(format!("{rel:?} is not a path inside the box (e.g. \"vmlinux\")")));
    }
    let full = dir.join(p);
    match unusable_by_vmm(&full) {
        None => Ok(full),
        Some(why) => Err(bad(why)),
    }
}

fn read_meta(dir: &Path, box_name: &str) -> Result<Source> {
    let p = dir.join("metadata.json");
    let v: Value = fs::read(&p)
        .map_err(|e| Error::bad_box(format!("box {box_name:?}: cannot read {}: {e}", p.display())))
        .and_then(|t| {
            serde_json::from_slice(&t)
                .map_err(|e| Error::bad_box(format!("box {box_name:?}: metadata.json is not JSON: {e}")))
        })?;
    let bad = |m: &str| Error::bad_box(format!("box {box_name:?}: metadata.json {m} (see boxes/README.md)"));
    let firmware = match v.get("firmware") {
        None | Some(Value::Null) => Firmware::Kexec,
        Some(f) => serde_json::from_value(f.clone()).map_err(|_| bad("\"firmware\" is not \"kexec\" or \"efi\""))?,
    };
    // A box file named by an optional string field.
    let file = |key: &str| match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => box_file(dir, s, key, box_name).map(Some),
        Some(_) => Err(bad(&format!("\"{key}\" is not a string"))),
    };
    let kernel = file("kernel")?;
    if kernel.is_none() && firmware == Firmware::Kexec {
        return Err(bad("has no \"kernel\": an xhyve box names the kernel it boots, or says \"firmware\": \"efi\""));
    }
    let initrd = file("initrd")?;
    let efi_vars = file("efi_vars")?;
    let cmdline = match v.get("cmdline") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.contains(['\n', '\0']) => {
            return Err(bad("\"cmdline\" has a newline or NUL, which xhyve's command line cannot carry"))
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("\"cmdline\" is not a string")),
    };
    let cpus = match v.get("cpus") {
        None | Some(Value::Null) => None,
        Some(c) => Some(
            c.as_u64().filter(|c| (1..=255).contains(c)).ok_or_else(|| bad("\"cpus\" is not a number from 1 to 255"))?
                as u32,
        ),
    };
    let memory = v.get("memory").filter(|m| !m.is_null()).cloned();
    let mut disks = Vec::new();
    match v.get("disks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for d in a {
                let s = d.as_str().ok_or_else(|| bad("\"disks\" is not an array of file names"))?;
                disks.push(box_file(dir, s, "disks", box_name)?);
            }
        }
        Some(_) => return Err(bad("\"disks\" is not an array of file names")),
    }
    if firmware == Firmware::Efi && disks.is_empty() {
        return Err(bad("says \"firmware\": \"efi\" but has no \"disks\": the firmware boots the first one"));
    }
    let fast_start = match v.get("fast_start") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("\"fast_start\" is not true or false")),
    };
    Ok(Source { bx: None, firmware, kernel, initrd, cmdline, cpus, memory, disks, fast_start, efi_vars })
}

/// `box` param: `"NAME"` or `{name, version?, architecture?}` (version: a constraint).
fn resolve_box(home: &Home, spec: &Value) -> Result<(PathBuf, store::BoxRecord)> {
    let (name, constraint, arch) = match spec {
        Value::String(s) => (s.clone(), None, None),
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| !["name", "version", "architecture"].contains(&k.as_str())) {
                return Err(invalid_field("box", format!("unknown field {k:?} (name, version, architecture)")));
            }
            let get = |k: &str| -> Result<Option<String>> {
                match o.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(other) => Err(invalid_field(&format!("box.{k}"), format!("{other} is not a string"))),
                }
            };
            let name = get("name")?.ok_or_else(|| invalid_field("box.name", "missing"))?;
            (name, get("version")?, get("architecture")?)
        }
        _ => {
            return Err(invalid_field(
                "box",
                "expected a box name (\"acme/tiny\") or {\"name\", \"version\"?, \"architecture\"?}",
            ))
        }
    };
    store::check_name(&name).map_err(|e| invalid_field("box", e))?;
    let req = constraint
        .as_deref()
        .map(version::Requirement::parse)
        .transpose()
        .map_err(|e| invalid_field("box.version", e))?;
    let arch = arch.unwrap_or_else(|| catalog::host_arch().to_string());
    let all = store::installed(home);
    // `installed` sorts versions oldest first: the newest match is the last.
    let found = all.iter().rfind(|(_, r)| {
        r.name == name
            && r.architecture == arch
            && match &req {
                None => true,
                Some(q) => version::Version::parse(&r.version).is_ok_and(|v| q.matches(&v)),
            }
    });
    match found {
        Some((p, r)) => Ok((p.clone(), r.clone())),
        None => {
            let have: Vec<String> = all
                .iter()
                .filter(|(_, r)| r.name == name)
                .map(|(_, r)| format!("{} ({})", r.version, r.architecture))
                .collect();
            let want = match &constraint {
                Some(c) => format!("box {name:?} version {c} ({arch})"),
                None => format!("box {name:?} ({arch})"),
            };
            let hint = if have.is_empty() {
                "box.list shows the installed boxes, box.add installs one".to_string()
            } else {
                format!("installed: {}", have.join(", "))
            };
            Err(Error::not_found(format!("{want} is not installed; {hint}")).with_data(json!({"box": name})))
        }
    }
}

/// Where a machine without a box keeps its copies of the kernel and initrd: `boot/` in its
/// directory, under their own file names (an initrd named as the kernel gets an `initrd-` prefix).
pub(super) fn boot_paths(dir: &Path, kernel: &Path, initrd: Option<&Path>) -> (PathBuf, Option<PathBuf>) {
    let boot = dir.join("boot");
    let name = |p: &Path| p.file_name().map_or("file".into(), |n| n.to_os_string());
    let initrd = initrd.map(|i| {
        let mut n = name(i);
        if n == name(kernel) {
            n = format!("initrd-{}", n.to_string_lossy()).into();
        }
        boot.join(n)
    });
    (boot.join(name(kernel)), initrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(dir: &Path, v: Value) -> Result<Source> {
        fs::write(dir.join("metadata.json"), v.to_string()).unwrap();
        read_meta(dir, "t")
    }

    #[test]
    fn firmware_boxes_name_disks_and_may_name_no_kernel() {
        let dir = std::env::temp_dir().join(format!("xhyve-source-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for f in ["vmlinux", "disk0.img", "efi-vars.fd"] {
            fs::write(dir.join(f), b"x").unwrap();
        }
        let s = meta(&dir, json!({"firmware": "efi", "disks": ["disk0.img"], "efi_vars": "efi-vars.fd"})).unwrap();
        assert_eq!((s.firmware, s.kernel, s.efi_vars), (Firmware::Efi, None, Some(dir.join("efi-vars.fd"))));
        let s = meta(&dir, json!({"kernel": "vmlinux", "disks": ["disk0.img"]})).unwrap();
        assert_eq!((s.firmware, s.kernel, s.efi_vars), (Firmware::Kexec, Some(dir.join("vmlinux")), None));
        for (v, want) in [
            (json!({"firmware": "bios", "disks": ["disk0.img"]}), "\"firmware\" is not \"kexec\" or \"efi\""),
            (json!({"firmware": "efi"}), "has no \"disks\": the firmware boots the first one"),
            (json!({"disks": ["disk0.img"]}), "or says \"firmware\": \"efi\""),
            (json!({"firmware": "kexec", "disks": ["disk0.img"]}), "has no \"kernel\""),
            (
                json!({"firmware": "efi", "disks": ["disk0.img"], "efi_vars": "../x"}),
                "efi_vars: \"../x\" is not a path",
            ),
        ] {
            let e = meta(&dir, v.clone()).err().unwrap_or_else(|| panic!("{v} was accepted"));
            assert!(e.code == crate::error::code::BAD_BOX && e.message.contains(want), "{v}: {}", e.message);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
