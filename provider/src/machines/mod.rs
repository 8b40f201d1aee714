//! Machines: `machine.create`, `list`, `state`, `start`, `stop`, `destroy`, and the supervisors
//! that watch running VMMs.
//!
//! Each machine is `$XHYVE_HOME/machines/ID/` with `machine.json` (the record, written
//! atomically), its disks, `console.log` (the guest's serial console), `vmm.log` (xhyve's
//! stderr) and, once the VMM ended, `exit.json` (written by the runner, see `process::run_vmm`).
//!
//! Locks: `Slot::op` serialises the methods on one machine (held for a whole call); `Slot::rec`
//! guards read-modify-write of `machine.json` and pairs with `Slot::cv`, which the supervisor
//! signals when the VMM ended. The supervisor takes only `rec`, so `stop` can hold `op` while it
//! waits for the end.

mod argv;
pub mod disk;
pub mod package;
pub mod process;
pub mod record;
mod source;
pub mod ssh;

use crate::boxes::{store, Boxes};
use crate::error::{code, Error, Result};
use crate::home::Home;
use crate::logger::log;
use crate::nic;
use crate::size::parse_size;
use crate::state;
use process::ExitRecord;
use record::{BoxRef, Disk, MachineRecord, Process, State};
use serde::Deserialize;
use serde_json::{json, Value};
use source::Source;
use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use xhyve_contract::mac::format_mac;
use xhyve_contract::{hex::hex, random};

/// Default seconds `machine.stop` waits for the guest to power off before SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: f64 = 60.0;
/// The network device's PCI slot; disks follow it.
const NET_SLOT: usize = 2;
/// The most PCI slots disks may take (3..=30; 0 is the host bridge, 2 the network device, 31
/// the LPC bridge).
const MAX_DISKS: usize = 28;

#[derive(Default)]
struct Slot {
    op: Mutex<()>,
    rec: Mutex<()>,
    cv: Condvar,
}

pub struct Machines {
    pub home: Home,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Network mode shared: the bridge, the TAP devices, the DHCP server and its leases.
    net: crate::network::Shared,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wrong_state(m: impl Into<String>, state: State) -> Error {
    Error::new(code::WRONG_STATE, m).with_data(json!({"state": state.as_str()}))
}

fn invalid_field(field: &str, m: impl Into<String>) -> Error {
    Error::invalid_params(format!("invalid params: {field}: {}", m.into())).with_data(json!({"field": field}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    #[serde(rename = "box")]
    pub bx: Option<Value>,
    /// Without a box: the kernel and initrd to boot (copied into the machine).
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    /// Grows the first disk's copy to this size.
    pub disk_size: Option<Value>,
    pub name: String,
    pub uuid: Option<String>,
    pub cpus: Option<u32>,
    pub memory: Option<Value>,
    pub cmdline: Option<String>,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    pub network: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub size: Option<Value>,
    pub path: Option<String>,
    pub copy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdParams {
    pub id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    pub id: String,
    #[serde(default)]
    pub force: bool,
    pub timeout: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyParams {
    pub id: String,
    #[serde(default)]
    pub force: bool,
}

/// A random (version 4) UUID.
pub fn new_uuid() -> Result<String> {
    let b = random::bytes().map_err(Error::internal)?;
    Ok(uuid::Builder::from_random_bytes(b).into_uuid().to_string())
}

/// `8-4-4-4-12` hex digits; returned in lower case.
pub fn check_uuid(u: &str) -> std::result::Result<String, String> {
    let parts: Vec<&str> = u.split('-').collect();
    let ok = parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(u.to_ascii_lowercase())
    } else {
        Err(format!("{u:?} is not a UUID (e.g. 8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01)"))
    }
}

/// Machine ids are ours (12 hex digits) but come back in params: nothing that leaves the store.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(invalid_field("id", format!("{id:?} is not a machine id")));
    }
    Ok(())
}

/// Memory as xhyve's `-m` takes it, normalised to whole MiB: an integer (MiB) or a size string
/// (`512M`, `1G`, a bare number is MiB as for xhyve).
fn parse_memory(v: &Value) -> std::result::Result<String, String> {
    let bytes = match v {
        Value::Number(n) => {
            n.as_u64().and_then(|m| m.checked_mul(1 << 20)).ok_or(format!("{n} is not a whole number of MiB"))?
        }
        Value::String(s) if s.trim().bytes().all(|b| b.is_ascii_digit()) && !s.trim().is_empty() => {
            s.trim().parse::<u64>().ok().and_then(|m| m.checked_mul(1 << 20)).ok_or(format!("{s:?} is not a size"))?
        }
        Value::String(s) => {
            parse_size(s).ok_or(format!("{s:?} is not a size (e.g. \"512M\", \"2G\", or an integer of MiB)"))?
        }
        other => return Err(format!("{other} is not a size (e.g. \"512M\")")),
    };
    if bytes % (1 << 20) != 0 {
        return Err("memory must be a whole number of MiB".into());
    }
    let mib = bytes >> 20;
    if !(16..=1 << 20).contains(&mib) {
        return Err(format!("{mib} MiB is out of range (16M to 1T)"));
    }
    Ok(format!("{mib}M"))
}

fn parse_disk_size(v: &Value) -> std::result::Result<u64, String> {
    let n = match v {
        Value::Number(n) => n.as_u64().ok_or(format!("{n} is not a size in bytes"))?,
        Value::String(s) => parse_size(s).ok_or(format!("{s:?} is not a size (e.g. \"10G\")"))?,
        other => return Err(format!("{other} is not a size")),
    };
    if n == 0 || n % 512 != 0 {
        return Err(format!("{n} bytes: a disk is a positive multiple of 512 bytes"));
    }
    Ok(n)
}

/// `network`: `"user"` (default), `"shared"`, `"none"`, or `{mode, forwarded_ports}`; `start`
/// turns mode `user` into xhyve's user-mode network device with the SSH and forwarded ports.
fn parse_network(v: Option<&Value>) -> std::result::Result<Value, String> {
    let modes = ["user", "shared", "none"];
    let (mode, ports) = match v {
        None | Some(Value::Null) => ("user".to_string(), Vec::new()),
        Some(Value::String(m)) => (m.clone(), Vec::new()),
        Some(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| !["mode", "forwarded_ports"].contains(&k.as_str())) {
                return Err(format!("unknown field {k:?} (mode, forwarded_ports)"));
            }
            let mode = match o.get("mode") {
                None => "user".to_string(),
                Some(Value::String(m)) => m.clone(),
                Some(other) => return Err(format!("mode: {other} is not a string")),
            };
            let ports = match o.get("forwarded_ports") {
                None => Vec::new(),
                Some(Value::Array(a)) => a.clone(),
                Some(other) => return Err(format!("forwarded_ports: {other} is not an array")),
            };
            for p in &ports {
                let ok = p.as_object().is_some_and(|o| {
                    o.keys().all(|k| ["guest", "host", "protocol", "host_ip"].contains(&k.as_str()))
                        && o.get("guest").and_then(Value::as_u64).is_some_and(|g| (1..=65535).contains(&g))
                        && o.get("host").is_none_or(|h| h.as_u64().is_some_and(|h| h <= 65535))
                        && o.get("protocol").is_none_or(|p| p == "tcp" || p == "udp")
                        && o.get("host_ip")
                            .is_none_or(|ip| ip.as_str().is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()))
                });
                if !ok {
                    return Err(format!(
                        "forwarded_ports: {p} is not {{guest: PORT, host?: PORT, protocol?: \"tcp\"|\"udp\", host_ip?: IPV4}}"
                    ));
                }
            }
            (mode, ports)
        }
        Some(other) => return Err(format!("{other} is not a network mode (user, shared, none)")),
    };
    if !modes.contains(&mode.as_str()) {
        return Err(format!("mode {mode:?} is not one of user, shared, none"));
    }
    Ok(json!({"mode": mode, "forwarded_ports": ports}))
}

impl Machines {
    pub fn new(home: Home) -> Arc<Machines> {
        Arc::new(Machines { net: crate::network::Shared::new(&home), home, slots: Mutex::new(HashMap::new()) })
    }

    fn slot(&self, id: &str) -> Arc<Slot> {
        lock(&self.slots).entry(id.to_string()).or_default().clone()
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.home.machines().join(id)
    }

    /// The machine's directory; -32001 when there is no such machine.
    fn existing(&self, id: &str) -> Result<PathBuf> {
        check_id(id)?;
        let d = self.dir(id);
        if d.is_dir() {
            Ok(d)
        } else {
            Err(Error::not_found(format!("no machine with id {id:?} (machine.list shows the machines)"))
                .with_data(json!({"state": "not_created"})))
        }
    }

    fn records(&self) -> Vec<(PathBuf, MachineRecord)> {
        let mut v: Vec<(PathBuf, MachineRecord)> = fs::read_dir(self.home.machines())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter_map(|p| MachineRecord::load(&p).ok().map(|r| (p, r)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|(_, a), (_, b)| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

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

    /// Moves the directory into tmp/ (it leaves the registry at once), then deletes it.
    fn remove_dir(&self, dir: &Path) {
        let trash = store::tempdir_path(&self.home, "destroy");
        match fs::rename(dir, &trash) {
            Ok(()) => {
                let _ = fs::remove_dir_all(&trash);
            }
            Err(_) => {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }

    pub fn list(&self) -> Value {
        Value::Array(self.records().iter().map(|(d, r)| r.list_value(d)).collect())
    }

    /// Cheap: reads machine.json, spawns nothing.
    pub fn state(&self, id: &str) -> Result<Value> {
        let dir = self.existing(id)?;
        Ok(MachineRecord::load(&dir)?.state_value())
    }

    pub fn start(self: &Arc<Self>, id: &str) -> Result<Value> {
        let dir = self.existing(id)?;
        let slot = self.slot(id);
        let _op = lock(&slot.op);
        let dir = if dir.is_dir() { dir } else { self.existing(id)? };
        let rec = MachineRecord::load(&dir)?;
        match rec.state {
            State::Running => return Ok(rec.state_value()),
            State::NotCreated => {
                return Err(wrong_state(
                    format!("machine {id} was not fully created (its creation was interrupted): destroy it"),
                    rec.state,
                ))
            }
            State::Stopped | State::Aborted => {}
        }
        let vmm_err = |m: String| Error::new(code::VMM_FAILED, m);
        let xhyve = process::find_xhyve().map_err(vmm_err)?;
        let feat = process::features(&xhyve).map_err(vmm_err)?;
        for f in std::iter::once(&rec.kernel).chain(rec.initrd.iter()) {
            if !Path::new(f).is_file() {
                return Err(vmm_err(format!("{f} is missing (was the box changed?)")));
            }
        }
        let console = dir.join("console.log");
        let taken: std::collections::HashSet<u16> =
            self.records().into_iter().filter(|(_, r)| r.id != rec.id).filter_map(|(_, r)| r.ssh_port).collect();
        let argv::Launch { argv, notes, ssh_port, tap } =
            argv::launch(&xhyve, &feat, &rec, &console, &taken, &self.net)?;
        // A fresh console log per boot (the previous one is kept as console.log.1).
        if console.exists() {
            let _ = fs::rename(&console, dir.join("console.log.1"));
        }
        let _ = fs::remove_file(dir.join(process::EXIT_FILE));
        let vmm_log_path = dir.join("vmm.log");
        let vmm_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&vmm_log_path)
            .map_err(|e| Error::internal(format!("opening {}: {e}", vmm_log_path.display())))?;
        {
            use std::io::Write;
            let mut l = &vmm_log;
            let _ = writeln!(l, "--- {} start: {}", state::now(), argv.join(" "));
            for n in &notes {
                let _ = writeln!(l, "note: {n}");
            }
        }
        let (child, pid, st) = process::spawn_runner(&dir, &argv, vmm_log).map_err(vmm_err)?;
        let runner_pid = child.id() as i32;
        let proc = Process {
            pid,
            start_time: st,
            runner_pid,
            runner_start_time: process::start_time(runner_pid).unwrap_or(0),
            started_at: state::now(),
            argv,
        };
        let rec = {
            let _g = lock(&slot.rec);
            let mut rec = MachineRecord::load(&dir)?;
            rec.state = State::Running;
            rec.process = Some(proc.clone());
            rec.exit_status = None;
            rec.exit_signal = None;
            rec.exit_reason = None;
            rec.stop_requested = false;
            if ssh_port.is_some() {
                rec.ssh_port = ssh_port;
            }
            rec.save(&dir)?;
            rec
        };
        if let Some(t) = tap {
            t.keep();
        }
        for n in notes {
            log(&format!("machine {id}: {n}"));
        }
        log(&format!("machine {id}: xhyve started (pid {pid})"));
        self.supervise(id.to_string(), Some(child), proc);
        Ok(rec.state_value())
    }

    /// Watches a running VMM until it ends, then records how. `child` is the runner when this
    /// daemon started it; after a daemon restart the runner is watched through a pidfd.
    fn supervise(self: &Arc<Self>, id: String, child: Option<Child>, p: Process) {
        let me = self.clone();
        let pid = p.pid;
        let r = std::thread::Builder::new().name(format!("vmm-{id}")).spawn(move || {
            match child {
                Some(mut c) => {
                    let _ = c.wait();
                }
                None => process::wait_exit(p.runner_pid, p.runner_start_time),
            }
            // The runner may have been killed while the VMM runs on: wait for the VMM too.
            process::wait_exit(p.pid, p.start_time);
            me.finalize(&id, &p);
        });
        if let Err(e) = r {
            log(&format!("xhyve pid {pid}: cannot start its supervisor: {e}"));
        }
    }

    /// Records the end of the VMM `p` of machine `id` (from the runner's exit.json).
    fn finalize(&self, id: &str, p: &Process) {
        let slot = self.slot(id);
        let _g = lock(&slot.rec);
        let dir = self.dir(id);
        let Ok(mut rec) = MachineRecord::load(&dir) else {
            slot.cv.notify_all();
            return;
        };
        if rec.state != State::Running || rec.process.as_ref().map(|q| q.pid) != Some(p.pid) {
            slot.cv.notify_all();
            return;
        }
        let exit = process::read_exit(&dir).filter(|e| e.pid == p.pid);
        // Before the record says "not running": a start that follows makes a new TAP device.
        self.net.remove_tap(id);
        classify(&mut rec, exit.as_ref(), &dir);
        rec.process = None;
        if let Err(e) = rec.save(&dir) {
            log(&format!("machine {id}: {e}"));
        }
        log(&format!("machine {id}: {} ({})", rec.state.as_str(), rec.exit_reason.as_deref().unwrap_or("")));
        slot.cv.notify_all();
    }

    /// Waits (up to `timeout`) until the machine is no longer running; None on timeout.
    fn wait_not_running(&self, id: &str, timeout: Duration) -> Result<Option<MachineRecord>> {
        let slot = self.slot(id);
        let dir = self.dir(id);
        let deadline = Instant::now() + timeout;
        let mut g = lock(&slot.rec);
        loop {
            let rec = MachineRecord::load(&dir)?;
            if rec.state != State::Running {
                return Ok(Some(rec));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).min(Duration::from_millis(500));
            g = slot.cv.wait_timeout(g, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn mark_stop_requested(&self, id: &str) -> Result<()> {
        let slot = self.slot(id);
        let _g = lock(&slot.rec);
        let dir = self.dir(id);
        let mut rec = MachineRecord::load(&dir)?;
        if rec.state == State::Running && !rec.stop_requested {
            rec.stop_requested = true;
            rec.save(&dir)?;
        }
        Ok(())
    }

    /// SIGKILL and wait for the supervisor to record the end.
    fn kill_and_wait(&self, id: &str, p: &Process) -> Result<MachineRecord> {
        process::kill(p.pid, p.start_time, libc::SIGKILL);
        match self.wait_not_running(id, Duration::from_secs(30))? {
            Some(r) => Ok(r),
            None => {
                Err(Error::internal(format!("xhyve (pid {}) of machine {id} did not end 30 s after SIGKILL", p.pid)))
            }
        }
    }

    pub fn stop(self: &Arc<Self>, p: StopParams) -> Result<Value> {
        let timeout = p.timeout.unwrap_or(DEFAULT_STOP_TIMEOUT);
        if !(0.0..=86400.0).contains(&timeout) {
            return Err(invalid_field("timeout", "seconds from 0 to 86400"));
        }
        let dir = self.existing(&p.id)?;
        let slot = self.slot(&p.id);
        let _op = lock(&slot.op);
        let rec = MachineRecord::load(&dir)?;
        let Some(proc) = rec.process.clone().filter(|_| rec.state == State::Running) else {
            return Ok(rec.state_value());
        };
        self.mark_stop_requested(&p.id)?;
        if !p.force {
            // With -A, SIGTERM presses the ACPI power button.
            process::kill(proc.pid, proc.start_time, libc::SIGTERM);
            if let Some(r) = self.wait_not_running(&p.id, Duration::from_secs_f64(timeout))? {
                return Ok(r.state_value());
            }
            log(&format!("machine {}: no power-off within {timeout} s: SIGKILL", p.id));
        }
        Ok(self.kill_and_wait(&p.id, &proc)?.state_value())
    }

    pub fn destroy(self: &Arc<Self>, p: DestroyParams) -> Result<Value> {
        let dir = self.existing(&p.id)?;
        let slot = self.slot(&p.id);
        let _op = lock(&slot.op);
        if !dir.is_dir() {
            return Err(self.existing(&p.id).err().unwrap_or_else(|| Error::not_found("gone")));
        }
        let shared_mac = MachineRecord::load(&dir)
            .ok()
            .filter(|r| r.network["mode"] == "shared")
            .and_then(|r| nic::mac_of_uuid(&r.uuid));
        // A directory without a readable record (a creation cut short) can always go.
        if let Ok(rec) = MachineRecord::load(&dir) {
            if let (State::Running, Some(proc)) = (rec.state, rec.process.clone()) {
                if !p.force {
                    return Err(wrong_state(
                        format!(
                            "machine {} ({}) is running: stop it first, or pass force to kill it",
                            rec.id, rec.name
                        ),
                        rec.state,
                    ));
                }
                self.mark_stop_requested(&p.id)?;
                self.kill_and_wait(&p.id, &proc)?;
            }
        }
        {
            let _g = lock(&slot.rec);
            self.remove_dir(&dir);
        }
        self.net.remove_tap(&p.id);
        if let Some(mac) = shared_mac {
            self.net.forget(&mac);
        }
        lock(&self.slots).remove(&p.id);
        log(&format!("machine {} destroyed", p.id));
        Ok(json!({"id": p.id, "state": "not_created"}))
    }

    /// `machine.ssh_info`: where to SSH to, or null when the machine does not run (or has no
    /// forwarded SSH port, or in network shared no address yet).
    pub fn ssh_info(&self, id: &str) -> Result<Value> {
        let dir = self.existing(id)?;
        let rec = MachineRecord::load(&dir)?;
        if rec.state != State::Running {
            return Ok(Value::Null);
        }
        Ok(match self.ssh_addr(&rec) {
            Ok(addr) => ssh::info(addr, &self.key_path()),
            Err(_) => Value::Null,
        })
    }

    /// The address to SSH to: user mode's forward on 127.0.0.1, shared mode's leased address
    /// and port 22; Err says why there is none (yet).
    fn ssh_addr(&self, rec: &MachineRecord) -> std::result::Result<SocketAddr, String> {
        match rec.network["mode"].as_str().unwrap_or("user") {
            "user" => rec
                .ssh_port
                .map(|p| SocketAddr::from((ssh::HOST, p)))
                .ok_or_else(|| "the machine has no forwarded SSH port (no user-mode network device)".into()),
            "shared" => {
                let has_tap = rec.process.as_ref().is_none_or(|p| p.argv.iter().any(|a| a.contains(",virtio-tap,")));
                if !has_tap {
                    return Err("the machine runs without a network device (its xhyve has no virtio-tap)".into());
                }
                let mac = nic::mac_of_uuid(&rec.uuid).ok_or_else(|| format!("uuid {:?} is not a UUID", rec.uuid))?;
                match self.net.bound(&mac) {
                    Ok(Some(ip)) => Ok(SocketAddr::from((ip, ssh::GUEST_PORT))),
                    Ok(None) => Err(format!(
                        "no DHCP lease for the machine's MAC address {} yet (the guest has not asked for an address)",
                        format_mac(&mac)
                    )),
                    Err(e) => Err(e.message),
                }
            }
            _ => Err("the machine has no network (network none)".into()),
        }
    }

    pub fn key_path(&self) -> PathBuf {
        self.home.root.join(ssh::KEY_FILE)
    }

    /// Logs in until `deadline`; errors when the machine is not (or no longer) running, or
    /// with the step that failed last.
    fn ssh_login(&self, id: &str, deadline: Instant) -> Result<(ssh::Conn, u32, SocketAddr)> {
        let dir = self.existing(id)?;
        let mut last_addr = SocketAddr::from((ssh::HOST, 0));
        let target = || -> Result<std::result::Result<SocketAddr, String>> {
            let rec = MachineRecord::load(&dir)?;
            if rec.state != State::Running {
                return Err(wrong_state(
                    format!(
                        "machine {id} ({}) is {}: start it first{}",
                        rec.name,
                        rec.state.as_str(),
                        rec.exit_reason.as_deref().map(|r| format!(" (last run: {r})")).unwrap_or_default()
                    ),
                    rec.state,
                ));
            }
            Ok(self.ssh_addr(&rec))
        };
        let key = self.key_path();
        if !key.is_file() {
            ssh::install_key(&self.home).map_err(|e| Error::internal(format!("writing {}: {e}", key.display())))?;
        }
        let r = ssh::wait_login(
            || {
                let a = target()?;
                if let Ok(a) = a {
                    last_addr = a;
                }
                Ok(a)
            },
            &key,
            deadline,
        )?;
        match r {
            Ok((c, n)) => Ok((c, n, last_addr)),
            Err(f) => Err(Error::new(
                code::SSH_FAILED,
                format!("SSH to machine {id} failed: {}: {}", f.step.as_str(), f.detail),
            )
            .with_data(json!({"step": f.step.as_str(), "detail": f.detail}))),
        }
    }

    /// `machine.wait_ssh`: a real SSH login (handshake and the key), retried until `timeout`.
    pub fn wait_ssh(&self, p: ssh::WaitParams) -> Result<Value> {
        let timeout = p.timeout.unwrap_or(ssh::DEFAULT_WAIT);
        if !(0.0..=86400.0).contains(&timeout) {
            return Err(invalid_field("timeout", "seconds from 0 to 86400"));
        }
        let began = Instant::now();
        let (_c, attempts, addr) = self.ssh_login(&p.id, began + Duration::from_secs_f64(timeout))?;
        let secs = began.elapsed().as_secs_f64();
        log(&format!("machine {}: SSH login after {secs:.1} s ({attempts} attempts)", p.id));
        let mut v = ssh::info(addr, &self.key_path());
        v["id"] = json!(p.id);
        v["attempts"] = json!(attempts);
        v["seconds"] = json!((secs * 1000.0).round() / 1000.0);
        Ok(v)
    }

    /// `machine.exec`: runs `command` over SSH; `out(stream, text)` gets its output.
    pub fn exec(&self, p: ssh::ExecParams, out: impl FnMut(&str, &str)) -> Result<Value> {
        if p.command.contains('\0') {
            return Err(invalid_field("command", "has a NUL"));
        }
        let (c, _, _) = self.ssh_login(&p.id, Instant::now() + ssh::EXEC_LOGIN)?;
        let (status, signal) = ssh::exec(&c, &p.command, out)
            .map_err(|e| Error::new(code::SSH_FAILED, format!("machine {}: exec over SSH: {e}", p.id)))?;
        let mut v = json!({"exit_status": status});
        if let Some(sig) = signal {
            v["exit_signal"] = json!(sig);
        }
        Ok(v)
    }

    /// At daemon start: adopt the VMMs still running (pid and start time match), record the end
    /// of those that ended while no daemon watched.
    pub fn recover(self: &Arc<Self>) {
        for (dir, rec) in self.records() {
            let (State::Running, Some(p)) = (rec.state, rec.process.clone()) else {
                continue;
            };
            let id = rec.id.clone();
            if dir.file_name().map(|n| n.to_string_lossy() != id.as_str()).unwrap_or(true) {
                continue;
            }
            if process::alive(p.runner_pid, p.runner_start_time) || process::alive(p.pid, p.start_time) {
                log(&format!("machine {id}: xhyve (pid {}) still runs: supervising it again", p.pid));
                self.supervise(id, None, p);
            } else {
                self.finalize(&id, &p);
            }
        }
        // Then the shared network: its TAP devices of machines that no longer run go, its
        // bridge and DHCP server come back while a shared machine runs.
        let records = self.records();
        for (_, r) in records.iter().filter(|(_, r)| r.state != State::Running) {
            self.net.remove_tap(&r.id);
        }
        if records.iter().any(|(_, r)| r.state == State::Running && r.network["mode"] == "shared") {
            self.net.resume();
        }
    }
}

/// The last line xhyve wrote to vmm.log (its error message when it failed).
fn last_vmm_line(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join("vmm.log")).ok()?;
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("xhyve-provider run-vmm:") && !l.starts_with("--- "))
        .map(str::to_string)
}

/// Sets state, exit status/signal and reason from how the VMM ended.
fn classify(rec: &mut MachineRecord, exit: Option<&ExitRecord>, dir: &Path) {
    let stop = rec.stop_requested;
    let (state, reason) = match exit {
        Some(ExitRecord { status: Some(s), .. }) => match s {
            0 => (State::Stopped, "guest rebooted (exit status 0)".to_string()),
            1 if stop => (State::Stopped, "powered off by machine.stop (ACPI power button; exit status 1)".into()),
            1 => (State::Stopped, "guest powered off (exit status 1)".into()),
            2 => (State::Stopped, "guest halted (exit status 2)".into()),
            3 => (State::Aborted, "triple fault (exit status 3)".into()),
            4 => (
                State::Aborted,
                match last_vmm_line(dir) {
                    Some(l) => format!("xhyve failed (exit status 4): {l}"),
                    None => "xhyve failed (exit status 4)".into(),
                },
            ),
            n => (State::Aborted, format!("xhyve exited with status {n}")),
        },
        Some(ExitRecord { signal: Some(sig), .. }) if stop => {
            (State::Stopped, format!("forced off by machine.stop (signal {sig}, {})", process::signal_name(*sig)))
        }
        Some(ExitRecord { signal: Some(sig), .. }) => {
            (State::Aborted, format!("killed by signal {sig} ({})", process::signal_name(*sig)))
        }
        _ if stop => (State::Stopped, "stopped by machine.stop (exit status unknown: its runner was gone)".into()),
        _ => (State::Aborted, "xhyve ended and its exit status is unknown (its runner was killed)".into()),
    };
    rec.state = state;
    rec.exit_status = exit.and_then(|e| e.status);
    rec.exit_signal = exit.and_then(|e| e.signal);
    rec.exit_reason = Some(reason);
    rec.stop_requested = false;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let u = new_uuid().unwrap();
        assert_eq!(check_uuid(&u).unwrap(), u);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uuid().unwrap());
        assert_eq!(check_uuid("8C4D1B6A-29A3-4A6E-9F29-6E6F1E8E1F01").unwrap(), "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01");
        for bad in ["", "x", "8c4d1b6a29a34a6e9f296e6f1e8e1f01", "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f0g"] {
            assert!(check_uuid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_and_network() {
        assert_eq!(parse_memory(&json!("512M")).unwrap(), "512M");
        assert_eq!(parse_memory(&json!("1G")).unwrap(), "1024M");
        assert_eq!(parse_memory(&json!(300)).unwrap(), "300M");
        assert_eq!(parse_memory(&json!("300")).unwrap(), "300M");
        assert!(parse_memory(&json!("1K")).is_err());
        assert!(parse_memory(&json!("lots")).is_err());
        assert_eq!(parse_network(None).unwrap()["mode"], "user");
        assert_eq!(parse_network(Some(&json!("shared"))).unwrap()["mode"], "shared");
        assert!(parse_network(Some(&json!("bridged"))).is_err());
        let n = json!({"mode": "user", "forwarded_ports": [{"guest": 80, "host": 8080}]});
        assert_eq!(parse_network(Some(&n)).unwrap()["forwarded_ports"][0]["host"], 8080);
        assert!(parse_network(Some(&json!({"forwarded_ports": [{"guest": 0}]}))).is_err());
    }

    #[test]
    fn ids_cannot_leave_the_store() {
        assert!(check_id("0a1b2c3d4e5f").is_ok());
        for bad in ["", "..", "a/b", "../x", "a b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    pub(crate) fn rec() -> MachineRecord {
        serde_json::from_value(json!({
            "id": "m", "name": "n", "uuid": "u",
            "box": {"name": "b", "version": "0", "architecture": "amd64", "path": "/b"},
            "cpus": 1, "memory": "256M", "cmdline": "", "kernel": "/k",
            "network": {"mode": "user"}, "created_at": 0, "state": "running"
        }))
        .unwrap()
    }

    #[test]
    fn exit_classification() {
        let dir = Path::new("/nonexistent");
        let e = |status, signal| ExitRecord { pid: 1, status, signal, exited_at: 0 };
        let mut r = rec();
        classify(&mut r, Some(&e(Some(1), None)), dir);
        assert_eq!((r.state, r.exit_status), (State::Stopped, Some(1)));
        let mut r = rec();
        classify(&mut r, Some(&e(None, Some(9))), dir);
        assert_eq!(r.state, State::Aborted);
        assert!(r.exit_reason.unwrap().starts_with("killed by signal 9"));
        let mut r = rec();
        r.stop_requested = true;
        classify(&mut r, Some(&e(None, Some(9))), dir);
        assert_eq!(r.state, State::Stopped);
        assert!(!r.stop_requested);
        let mut r = rec();
        classify(&mut r, Some(&e(Some(3), None)), dir);
        assert_eq!(r.state, State::Aborted);
        let mut r = rec();
        classify(&mut r, None, dir);
        assert_eq!(r.state, State::Aborted);
    }
}
