//! `machine.create` in three steps: check the params into a `Spec` (nothing is on disk yet),
//! register the machine (its directory and a record in state not_created, under the box lock so
//! that box.remove either sees it or ran before), then populate it (boot files and disks; state
//! stopped). A creation that fails leaves nothing behind, nor does one that a crash cut short
//! (`drop_unfinished`, at the next start). A box's raw disks become qcow2
//! overlays on them (linked clones) when xhyve serves qcow2; otherwise, and for `{copy}` disks,
//! the machine gets sparse copies.

use super::params::{check_uuid, new_uuid, parse_nics, CreateParams, DiskSpec};
use super::record::{BoxRef, Disk, DiskFormat, Firmware, MachineRecord, Network, State};
use super::source::{self, Source};
use super::{argv::MAX_DISKS, disk, efi, invalid_field, lock, overlay, process, Machines};
use crate::boxes::{store, Boxes};
use crate::error::{code, Error, Result};
use crate::home::Home;
use crate::logger::log;
use crate::size::{DiskSize, MemSize};
use crate::state;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use xhyve_contract::{hex::hex, random};

/// Where one of the machine's disks comes from.
enum Plan {
    /// A box disk or a `{copy}`: copied (sparse) into the machine.
    Copy(PathBuf),
    /// A box disk: a qcow2 overlay on it in the machine (a linked clone).
    Overlay(PathBuf),
    /// `{size}`: a new empty disk in the machine.
    New(DiskSize),
    /// `{path}`: an image used where it is (the machine does not own it).
    InPlace(PathBuf),
}

/// The params checked: what the machine will be.
struct Spec {
    name: String,
    source: Source,
    firmware: Firmware,
    /// Firmware efi: where the machine's variable store is copied from.
    vars_from: Option<PathBuf>,
    cpus: u32,
    memory: MemSize,
    cmdline: String,
    network: Network,
    /// In order: the box's disks, then the extra ones.
    disks: Vec<Plan>,
    /// `disk_size`: the size the first disk's copy grows to.
    grow_to: Option<DiskSize>,
    uuid: String,
}

impl Spec {
    /// Checks the params in the order their errors have always come: name, box (or kernel),
    /// cpus, memory, cmdline, network, disks, disk_size, uuid; then firmware.
    fn check(home: &Home, p: CreateParams) -> Result<Spec> {
        if p.name.trim().is_empty() || p.name.len() > 200 || p.name.chars().any(char::is_control) {
            return Err(invalid_field("name", "a machine name is 1 to 200 printable characters"));
        }
        let source = Source::resolve(home, p.bx.as_ref(), p.kernel.as_deref(), p.initrd.as_deref(), p.firmware)?;
        let cpus = p.cpus.or(source.cpus).unwrap_or(1);
        if !(1..=255).contains(&cpus) {
            return Err(invalid_field("cpus", format!("{cpus}: from 1 to 255")));
        }
        let memory = match (&p.memory, &source.memory) {
            (Some(m), _) => MemSize::from_json(m).map_err(|e| invalid_field("memory", e))?,
            (None, Some(m)) => MemSize::from_json(m).map_err(|e| {
                let box_name = source.bx.as_ref().map(|(_, r)| r.name.as_str()).unwrap_or_default();
                Error::bad_box(format!("box {box_name:?}: metadata.json memory: {e}"))
            })?,
            (None, None) => MemSize::DEFAULT,
        };
        let cmdline = p.cmdline.clone().or(source.cmdline.clone()).unwrap_or_else(|| "console=ttyS0".into());
        if cmdline.contains('\n') || cmdline.contains('\0') {
            return Err(invalid_field("cmdline", "has a newline or NUL"));
        }
        let network = parse_nics(p.network.as_ref(), p.nics.as_deref()).map_err(|(f, e)| invalid_field(&f, e))?;
        let disks = disk_plan(&source, &p.disks, linked_clones())?;
        if disks.len() + network.nics.len() > MAX_DISKS {
            return Err(invalid_field("nics", format!("disks and extra NICs take at most {MAX_DISKS} slots")));
        }
        let grow_to = p.disk_size.as_ref().map(|v| grow_to(v, &disks)).transpose()?;
        let uuid = match &p.uuid {
            Some(u) => check_uuid(u).map_err(|e| invalid_field("uuid", e))?,
            None => new_uuid()?,
        };
        let firmware = p.firmware.unwrap_or(source.firmware);
        let vars_from = match firmware {
            Firmware::Kexec if source.kernel.is_none() => {
                return Err(invalid_field(
                    "firmware",
                    "kexec needs a kernel, and the box names none: it boots with efi",
                ))
            }
            Firmware::Kexec => None,
            Firmware::Efi if disks.is_empty() => {
                return Err(invalid_field(
                    "firmware",
                    "efi boots the machine's first disk, and it has none: give disks",
                ))
            }
            Firmware::Efi => {
                // Checked now, so that a machine that cannot start is not made.
                efi::code()?;
                Some(source.efi_vars.clone().map_or_else(efi::vars_template, Ok)?)
            }
        };
        Ok(Spec { name: p.name, source, firmware, vars_from, cpus, memory, cmdline, network, disks, grow_to, uuid })
    }
}

/// Whether the xhyve that will run the machine reads qcow2 disks (`--features`).
pub(super) fn linked_clones() -> bool {
    process::find_xhyve().and_then(|x| process::features(&x)).is_ok_and(|f| f.disk_formats.iter().any(|d| d == "qcow2"))
}

/// The machine's disks in order: the box's (overlays on them when `linked`, else copies), then
/// the extra ones (a new empty disk {size}, an image used in place {path}, or one copied into
/// the machine {copy}).
fn disk_plan(source: &Source, extra: &[DiskSpec], linked: bool) -> Result<Vec<Plan>> {
    let mut plan = Vec::new();
    for d in &source.disks {
        let raw = !overlay::looks_qcow2(d).map_err(|e| Error::internal(format!("reading {}: {e}", d.display())))?;
        plan.push(if linked && raw { Plan::Overlay(d.clone()) } else { Plan::Copy(d.clone()) });
    }
    for (i, d) in extra.iter().enumerate() {
        let field = format!("disks[{i}]");
        plan.push(match (&d.size, &d.path, &d.copy) {
            (Some(s), None, None) => Plan::New(DiskSize::from_json(s).map_err(|e| invalid_field(&field, e))?),
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
    Ok(plan)
}

/// `disk_size` grows the first disk's copy (sparse), as Packer's disk_size does: never shrinks.
fn grow_to(v: &Value, disks: &[Plan]) -> Result<DiskSize> {
    let size = DiskSize::from_json(v).map_err(|e| invalid_field("disk_size", e))?;
    let Some(Plan::Copy(first) | Plan::Overlay(first)) = disks.first() else {
        return Err(invalid_field(
            "disk_size",
            "grows the first disk, which must be a copy (a box disk or {copy}); there is none",
        ));
    };
    let have = fs::metadata(first)?.len();
    if size.bytes() < have {
        return Err(invalid_field(
            "disk_size",
            format!("{} bytes is smaller than the first disk ({have} bytes); disks only grow", size.bytes()),
        ));
    }
    Ok(size)
}

impl Machines {
    pub fn create(&self, boxes: &Boxes, p: CreateParams) -> Result<Value> {
        let spec = Spec::check(&self.home, p)?;
        let nic_macs = self.check_nics(&spec)?;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(self.home.machines())?;
        let (dir, mut rec) = self.register(boxes, &spec)?;
        let slot = self.slot(&rec.id);
        let _op = lock(&slot.op);
        let made = populate(&spec, &rec, &dir).and_then(|()| self.fix_nics(&spec, &nic_macs)).and_then(|()| {
            let _g = lock(&slot.rec);
            rec.state = State::Stopped;
            rec.save(&dir)
        });
        if let Err(e) = made {
            for (nic, mac) in spec.network.nics.iter().zip(&nic_macs) {
                self.networks.forget(&nic.network, mac);
            }
            self.remove_dir(&dir);
            return Err(e);
        }
        let from = match &rec.bx {
            Some(b) => format!("box {} {}", b.name, b.version),
            None => match &rec.kernel {
                Some(k) => format!("kernel {k}"),
                None => format!("disk {}", rec.disks.first().map_or("", |d| d.path.as_str())),
            },
        };
        log(&format!("machine {} ({}) created from {from}", rec.id, rec.name));
        Ok(json!({
            "id": rec.id, "name": rec.name, "uuid": rec.uuid, "state": rec.state.as_str(),
            "path": dir.display().to_string(),
        }))
    }

    /// At daemon start, before any call: a creation that a crash cut short left a directory
    /// without a record, or with one still not_created beside half-copied disks. Both go (with
    /// the static leases the creation may have fixed), so machine.list shows only machines
    /// that were fully made; the others lose only the temp files of record writes cut short.
    pub fn drop_unfinished(&self) {
        let Ok(rd) = fs::read_dir(self.home.machines()) else { return };
        for dir in rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()) {
            match MachineRecord::load(&dir) {
                Ok(rec) if rec.state == State::NotCreated => {
                    for (i, nic) in rec.network.nics.iter().enumerate() {
                        let mac = u8::try_from(i + 1).ok().and_then(|n| crate::nic::nic_mac_of_uuid(&rec.uuid, n));
                        if let Some(mac) = mac {
                            self.networks.forget(&nic.network, &mac);
                        }
                    }
                    self.remove_dir(&dir);
                    log(&format!("machine {} ({}): its creation was interrupted; removed", rec.id, rec.name));
                }
                Err(e) if e.code == code::NOT_FOUND => {
                    self.remove_dir(&dir);
                    log(&format!("{}: a machine directory without a record; removed", dir.display()));
                }
                _ => state::remove_stale_temps(&dir),
            }
        }
    }

    /// The MACs of the NICs on named networks (index 1 on), once their networks exist and their
    /// static addresses are free.
    fn check_nics(&self, spec: &Spec) -> Result<Vec<crate::nic::Mac>> {
        let mut macs = Vec::new();
        for (i, nic) in spec.network.nics.iter().enumerate() {
            let index = u8::try_from(i + 1).map_err(|_| invalid_field("nics", "too many"))?;
            let mac = crate::nic::nic_mac_of_uuid(&spec.uuid, index).ok_or_else(|| Error::internal("bad uuid"))?;
            self.networks.check_nic(&format!("nics[{}]", i + 1), &nic.network, &mac, nic.ip)?;
            macs.push(mac);
        }
        Ok(macs)
    }

    /// The static addresses become fixed leases of the NICs' MACs.
    fn fix_nics(&self, spec: &Spec, macs: &[crate::nic::Mac]) -> Result<()> {
        for (nic, mac) in spec.network.nics.iter().zip(macs) {
            if let Some(ip) = nic.ip {
                self.networks.fix(&nic.network, mac, ip)?;
            }
        }
        Ok(())
    }

    /// Under the box lock: checks that the uuid is free and the box still installed, makes the
    /// machine's directory and writes its record (state not_created).
    fn register(&self, boxes: &Boxes, spec: &Spec) -> Result<(PathBuf, MachineRecord)> {
        let _g = lock(&boxes.lock);
        if let Some((_, other)) = self.records().into_iter().find(|(_, r)| r.uuid == spec.uuid) {
            return Err(Error::new(
                code::ALREADY_EXISTS,
                format!("machine {} ({}) already has uuid {}", other.id, other.name, spec.uuid),
            ));
        }
        if let Some((bdir, brec)) = &spec.source.bx {
            if !bdir.join(store::RECORD).is_file() {
                return Err(Error::not_found(format!("box {:?} was just removed", brec.name)));
            }
        }
        let (id, dir) = self.new_dir()?;
        let rec = new_record(spec, id, &dir);
        if let Err(e) = rec.save(&dir) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok((dir, rec))
    }

    /// A new, empty machine directory under a random id.
    fn new_dir(&self) -> Result<(String, PathBuf)> {
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
        Ok((id, dir))
    }
}

/// The record of a machine about to be populated in `dir`: where its disks and boot files go.
fn new_record(spec: &Spec, id: String, dir: &Path) -> MachineRecord {
    let disks = spec
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let own = |ext: &str| dir.join(format!("disk{i}.{ext}")).display().to_string();
            let (raw, from) = (DiskFormat::Raw, |p: &PathBuf| Some(p.display().to_string()));
            match d {
                Plan::Copy(src) => Disk { path: own("img"), source: from(src), owned: true, format: raw },
                Plan::Overlay(src) => {
                    Disk { path: own("qcow2"), source: from(src), owned: true, format: DiskFormat::Qcow2 }
                }
                Plan::New(_) => Disk { path: own("img"), source: None, owned: true, format: raw },
                Plan::InPlace(p) => Disk { path: p.display().to_string(), source: None, owned: false, format: raw },
            }
        })
        .collect();
    // Boot files of a box stay in the box (box.remove refuses while machines use it); files
    // given directly are copied into the machine, which then owns them.
    let src = &spec.source;
    let (kernel, initrd) = match (&src.bx, &src.kernel) {
        (None, Some(k)) => {
            let (k, i) = source::boot_paths(dir, k, src.initrd.as_deref());
            (Some(k), i)
        }
        _ => (src.kernel.clone(), src.initrd.clone()),
    };
    MachineRecord {
        id,
        name: spec.name.clone(),
        uuid: spec.uuid.clone(),
        bx: src.bx.as_ref().map(|(bdir, brec)| BoxRef {
            name: brec.name.clone(),
            version: brec.version.clone(),
            architecture: brec.architecture.clone(),
            path: bdir.display().to_string(),
        }),
        cpus: spec.cpus,
        memory: spec.memory,
        cmdline: spec.cmdline.clone(),
        firmware: spec.firmware,
        kernel: kernel.map(|p| p.display().to_string()),
        initrd: initrd.map(|p| p.display().to_string()),
        efi_vars: spec.vars_from.as_ref().map(|_| dir.join(efi::VARS).display().to_string()),
        disks,
        network: spec.network.clone(),
        created_at: state::now(),
        state: State::NotCreated,
        exit_status: None,
        exit_signal: None,
        exit_reason: None,
        process: None,
        ssh_port: None,
        stop_requested: false,
        suspend_requested: false,
        // A saved boot needs kexec: xhyve cannot save a firmware machine.
        fast_start: src.fast_start && spec.firmware == Firmware::Kexec,
        fresh: true,
        reboots: 0,
        recent_reboots: Vec::new(),
    }
}

/// Copies the boot files (of a machine without a box), the variable store and the disks to where
/// the record says, makes the new empty disks and grows the first disk to `disk_size`.
fn populate(spec: &Spec, rec: &MachineRecord, dir: &Path) -> Result<()> {
    let src = &spec.source;
    let boot = src
        .kernel
        .iter()
        .zip(&rec.kernel)
        .chain(src.initrd.iter().zip(&rec.initrd))
        .filter(|_| src.bx.is_none())
        .chain(spec.vars_from.iter().zip(&rec.efi_vars));
    for (from, to) in boot {
        let to = Path::new(to);
        fs::create_dir_all(to.parent().unwrap_or(dir))
            .and_then(|()| fs::copy(from, to))
            .map_err(|e| Error::internal(format!("copying {} to {}: {e}", from.display(), to.display())))?;
    }
    if let Some(vars) = &rec.efi_vars {
        // The firmware writes it: writable whatever the template's mode (fs::copy keeps it).
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(vars, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::internal(format!("making {vars} writable: {e}")))?;
    }
    for (plan, d) in spec.disks.iter().zip(&rec.disks) {
        let dst = Path::new(&d.path);
        match plan {
            Plan::Copy(from) => {
                let how = disk::sparse_copy(from, dst)
                    .map_err(|e| Error::internal(format!("copying {} to {}: {e}", from.display(), dst.display())))?;
                log(&format!("machine {}: {} copied ({how:?})", rec.id, dst.display()));
            }
            Plan::Overlay(from) => {
                // disk_size is the overlay's size: it grows past its backing file's end.
                let size = fs::metadata(from)?.len().max(spec.grow_to.map_or(0, |s| s.bytes()));
                overlay::create(dst, from, DiskFormat::Raw, size).map_err(|e| {
                    Error::internal(format!("making {} an overlay on {}: {e}", dst.display(), from.display()))
                })?;
                log(&format!("machine {}: {} is an overlay on {}", rec.id, dst.display(), from.display()));
            }
            Plan::New(size) => disk::create_empty(dst, size.bytes())
                .map_err(|e| Error::internal(format!("creating {}: {e}", dst.display())))?,
            Plan::InPlace(_) => {}
        }
    }
    if let (Some(size), Some(Plan::Copy(_))) = (spec.grow_to, spec.disks.first()) {
        // set_len past the end adds a hole: the grown disk stays sparse.
        let first = Path::new(&rec.disks[0].path);
        fs::OpenOptions::new()
            .write(true)
            .open(first)
            .and_then(|f| f.set_len(size.bytes()))
            .map_err(|e| Error::internal(format!("growing {}: {e}", first.display())))?;
    }
    Ok(())
}
