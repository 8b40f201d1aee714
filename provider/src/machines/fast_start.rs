//! Fast start from a saved boot (provider/API.md, "Fast start"; the guest's side:
//! boxes/README.md). A machine of a box whose metadata says `fast_start` gets the identity
//! channel (`identity.rs`); its guest waits there at a quiet point after boot, before anything
//! machine-specific. The first machine of a box version (and machine shape) that gets there saves
//! the whole VM as the box's saved boot, then gets its identity; later machines of that shape run
//! xhyve from the saved boot and get theirs at once (seconds instead of a boot).
//!
//! The saved boot is `saved-boots/KEY.snap` in the box's directory (box.remove deletes it with
//! the box). KEY hashes what the guest saw before the quiet point and what xhyve's snapshot
//! shape checks: vCPUs, memory, network mode and NIC count, kernel, initrd, command line (but
//! its `hostname=`, which the identity carries) and the disks. A machine with disks saves and
//! starts from a saved boot only on its first start, on the saved boot's disks
//! (`boot_disks.rs`). The saved boot is published by a rename once complete; a lock file beside
//! it lets one machine write it while others boot on. A saved boot xhyve refuses (damaged,
//! another xhyve's format or shape) is deleted and the machine boots normally, saving a new one.

use super::boot_disks;
use super::identity::{self, Channel, Identity, Ipv4Config};
use super::process::{Budget, Proc};
use super::record::{Disk, MachineRecord, NetworkMode};
use super::{lock, Machines};
use crate::boxes::Reporter;
use crate::error::{code, Result};
use crate::logger::log;
use crate::nic;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use xhyve_contract::user_net;

/// The folder of a box's saved boots, in the box's directory.
pub const SAVED_BOOTS: &str = "saved-boots";
/// How long a booting guest may take to reach its quiet point.
const BOOT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How much of its CPU time a guest may take to apply its identity (process::Budget), and how
/// long in wall time at most (twenty guests on two cores each get a tenth of one).
const APPLY_CPU: Duration = Duration::from_secs(60);
const APPLY_WALL: Duration = Duration::from_secs(900);

/// The saved boot a machine like `rec` starts from; None when it cannot fast-start.
pub(super) fn saved_boot(rec: &MachineRecord) -> Option<PathBuf> {
    if !rec.fast_start {
        return None;
    }
    let bx = rec.bx.as_ref()?;
    let disks = boot_disks::key(rec)?;
    // The identity step sets the host name: machines that differ only in it share a boot.
    let cmdline: Vec<&str> = rec.cmdline.split_whitespace().filter(|w| !w.starts_with("hostname=")).collect();
    let what = format!(
        "cpus={}\nmemory={}\nnetwork={}\nnics={}\nkernel={}\ninitrd={}\ncmdline={}\n{disks}",
        rec.cpus,
        rec.memory,
        rec.network.mode.as_str(),
        rec.network.nics.len(),
        rec.kernel.as_deref().unwrap_or(""),
        rec.initrd.as_deref().unwrap_or(""),
        cmdline.join(" ")
    );
    let key: String = Sha256::digest(what.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    Some(Path::new(&bx.path).join(SAVED_BOOTS).join(format!("{key}.snap")))
}

/// Who the machine is, for its guest: its MACs in PCI order (the management NIC's, then each
/// named network's).
pub(super) fn identity_of(rec: &MachineRecord) -> Option<Identity> {
    let fmt = |m: nic::Mac| xhyve_contract::mac::format_mac(&m);
    let mut macs = Vec::new();
    if rec.network.mode != NetworkMode::None {
        macs.push(fmt(nic::mac_of_uuid(&rec.uuid)?));
    }
    for k in 0..rec.network.nics.len() {
        macs.push(fmt(nic::nic_mac_of_uuid(&rec.uuid, u8::try_from(k + 1).ok()?)?));
    }
    // The host name the machine's command line asks for (Vagrant's config.vm.hostname becomes
    // `hostname=`), else one made from its name: the identity step must not undo the former.
    let hostname = rec
        .cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("hostname="))
        .filter(|h| h.len() <= 63 && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
        .filter(|h| !h.is_empty())
        .map_or_else(|| identity::hostname_of(&rec.name), str::to_string);
    // The user-mode network's addressing is fixed (the VMM's DHCP hands out the same): given here,
    // the guest skips a DHCP exchange. A shared network's lease is the daemon's DHCP server's
    // to record, so there the guest asks.
    let ipv4 = (rec.network.mode == NetworkMode::User).then_some(Ipv4Config {
        address: user_net::GUEST_ADDR,
        prefix_len: user_net::PREFIX_LEN,
        router: user_net::GATEWAY,
        dns: user_net::DNS,
    });
    Some(Identity { machine: rec.id.clone(), hostname, macs, ipv4 })
}

/// Whether xhyve's command line `argv` carries the identity channel.
pub(super) fn has_channel(argv: &[String]) -> bool {
    argv.iter().any(|a| a.ends_with(&format!("virtio-console,socket={}", identity::SOCKET)))
}

impl Machines {
    /// `machine.start` of a stopped machine: from the box's saved boot when there is one, else a
    /// boot (a guest with the identity channel gets its identity at its quiet point, and saves
    /// the box's boot there when none is saved). The caller holds the `op` lock.
    pub(super) fn boot(
        self: &Arc<Self>,
        id: &str,
        dir: &Path,
        rec: &MachineRecord,
        report: &Reporter,
    ) -> Result<Value> {
        // A machine with disks runs on overlays: only an xhyve that reads qcow2 can.
        let saved = saved_boot(rec).filter(|_| rec.disks.is_empty() || super::create::linked_clones());
        if let Some(boot) = saved.as_deref().filter(|p| p.is_file()) {
            match self.fast_start(id, dir, rec, boot, report) {
                Ok(v) => return Ok(v),
                Err(why) => {
                    log(&format!(
                        "machine {id}: no fast start from {}: {why}; it boots, and saves a new one",
                        boot.display()
                    ));
                    if let Err(e) = fs::remove_file(boot) {
                        log(&format!("machine {id}: removing {}: {e}", boot.display()));
                    }
                }
            }
        }
        let v = self.launch(id, dir, rec, None)?;
        if rec.fast_start {
            self.identity_at_quiet_point(id, dir, saved);
        }
        Ok(v)
    }

    /// Runs xhyve from the saved boot and gives the guest its identity. Err: why not, with no
    /// xhyve left running (the caller then boots).
    fn fast_start(
        self: &Arc<Self>,
        id: &str,
        dir: &Path,
        rec: &MachineRecord,
        boot: &Path,
        report: &Reporter,
    ) -> std::result::Result<Value, String> {
        let who = identity_of(rec).ok_or_else(|| format!("{:?} is not a UUID", rec.uuid))?;
        report("fast start: restoring the saved boot", 0, Some(2));
        // A new guest, as after a boot: the previous run's console is kept as console.log.1.
        let console = dir.join(super::console::LOG);
        if console.exists() {
            let _ = fs::rename(&console, dir.join("console.log.1"));
        }
        // The saved boot's disks under new overlays, in place of the fresh machine's own.
        let mut run = rec.clone();
        if !rec.disks.is_empty() {
            run.disks = boot_disks::overlays(rec, boot, dir)?;
            if let Err(e) = self.record_disks(id, dir, &run.disks) {
                boot_disks::remove(&run.disks);
                return Err(e);
            }
        }
        let undo = |why: String| {
            if !rec.disks.is_empty() {
                if let Err(e) = self.record_disks(id, dir, &rec.disks) {
                    log(&format!("machine {id}: recording its own disks again: {e}"));
                }
                boot_disks::remove(&run.disks);
            }
            why
        };
        let v = match self.launch(id, dir, &run, Some(boot)) {
            Ok(v) => v,
            // Any other failure (no xhyve, a TAP device) would fail a boot just as well.
            Err(e) if e.code == code::BAD_SAVED_STATE => return Err(undo(e.message)),
            Err(e) => return Err(undo(format!("xhyve did not start: {}", e.message))),
        };
        report("fast start: applying the identity", 1, Some(2));
        let applied = Channel::connect(dir, Duration::from_secs(10))
            .map_err(|e| format!("the identity channel: {e}"))
            .and_then(|mut c| c.apply(&who, &self.apply_budget(id, dir)));
        if let Err(why) = applied {
            // Never a machine with the identity of the one that saved the boot.
            if let Ok(Some(p)) = self.mark_stop_requested(id) {
                let _ = self.kill_and_wait(id, &p);
            }
            return Err(undo(why));
        }
        // Its own disks were never run on: the saved boot's stand in for them.
        boot_disks::remove(&rec.disks);
        report("fast start: applying the identity", 2, Some(2));
        log(&format!("machine {id}: fast start from {}: identity applied", boot.display()));
        Ok(v)
    }

    /// In the background: waits for the booting guest's quiet point, saves the boot at `save`
    /// (unless another machine has, or does), then gives the guest its identity.
    pub(super) fn identity_at_quiet_point(self: &Arc<Self>, id: &str, dir: &Path, save: Option<PathBuf>) {
        let (me, name, dir) = (self.clone(), id.to_string(), dir.to_path_buf());
        let r = std::thread::Builder::new().name(format!("identity-{id}")).spawn(move || {
            if let Err(why) = me.quiet_point(&name, &dir, save.as_deref()) {
                log(&format!("machine {name}: identity step: {why}"));
            }
        });
        if let Err(e) = r {
            log(&format!("machine {id}: cannot start its identity step: {e}"));
        }
    }

    fn quiet_point(&self, id: &str, dir: &Path, save: Option<&Path>) -> std::result::Result<(), String> {
        let mut ch =
            Channel::connect(dir, Duration::from_secs(10)).map_err(|e| format!("the identity channel: {e}"))?;
        ch.wait_for("WAITING", &Budget::wall(BOOT_TIMEOUT))?;
        // Read now: the record the guest's identity comes from, the xhyve to save.
        let rec = {
            let slot = self.slot(id);
            let _g = lock(&slot.rec);
            MachineRecord::load(dir).map_err(|e| e.message)?
        };
        if let Some(path) = save {
            match self.save_boot(id, dir, &rec, path) {
                Ok(Some(detail)) => log(&format!("machine {id}: boot saved to {} ({detail})", path.display())),
                Ok(None) => {}
                Err(why) => log(&format!("machine {id}: saving the boot to {} failed: {why}", path.display())),
            }
        }
        let who = identity_of(&rec).ok_or_else(|| format!("{:?} is not a UUID", rec.uuid))?;
        ch.apply(&who, &self.apply_budget(id, dir))?;
        log(&format!("machine {id}: identity applied"));
        Ok(())
    }

    /// Pauses the guest, saves it (and its disks) as the saved boot `path` and resumes it,
    /// unless the file exists or another machine holds its lock (Ok(None)).
    fn save_boot(
        &self,
        id: &str,
        dir: &Path,
        rec: &MachineRecord,
        path: &Path,
    ) -> std::result::Result<Option<String>, String> {
        let p = rec.process.as_ref().ok_or("not running")?;
        let folder = path.parent().ok_or("no folder")?;
        fs::create_dir_all(folder).map_err(|e| format!("creating {}: {e}", folder.display()))?;
        let lock_path = path.with_extension("lock");
        let lock_file = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
        // SAFETY: flock on a descriptor we own; released when `lock_file` is dropped.
        if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 || path.is_file() {
            return Ok(None);
        }
        // Published by the rename at the end, once its disks are beside it.
        let staged = path.with_extension("saving");
        let mut ctl = self.control(id, dir, &p.argv).map_err(|e| e.message)?;
        ctl.ask("pause")?;
        // Paused (and flushed by the save), its disks do not change under the copies.
        let saved = ctl.ask(&format!("save {}", staged.display())).and_then(|detail| {
            let copies = boot_disks::save(rec, path)?;
            fs::rename(&staged, path).map(|()| detail).map_err(|e| {
                copies.iter().for_each(|c| drop(fs::remove_file(c)));
                format!("publishing {}: {e}", path.display())
            })
        });
        let resumed = ctl.ask("resume");
        if saved.is_err() {
            let _ = fs::remove_file(&staged);
        }
        resumed?;
        saved.map(Some)
    }

    /// The identity step's budget: the CPU time of the machine's running xhyve.
    fn apply_budget(&self, id: &str, dir: &Path) -> Budget {
        let slot = self.slot(id);
        let _g = lock(&slot.rec);
        match MachineRecord::load(dir).ok().and_then(|r| r.process) {
            Some(p) => Budget::guest_cpu(APPLY_CPU, Proc { pid: p.pid, start: p.start_time }, APPLY_WALL),
            None => Budget::wall(APPLY_CPU),
        }
    }

    /// Records `disks` as the machine's.
    fn record_disks(&self, id: &str, dir: &Path, disks: &[Disk]) -> std::result::Result<(), String> {
        let slot = self.slot(id);
        let _g = lock(&slot.rec);
        let mut rec = MachineRecord::load(dir).map_err(|e| e.message)?;
        rec.disks = disks.to_vec();
        rec.save(dir).map_err(|e| e.message)
    }

    /// After a resume or a snapshot restore: the guest's clock and RNG seed again, in the
    /// background (its identity step stays on the channel for this).
    pub(super) fn refresh_identity(self: &Arc<Self>, id: &str, dir: &Path, rec: &MachineRecord) {
        let Some(who) = identity_of(rec) else { return };
        let (me, name, dir) = (self.clone(), id.to_string(), dir.to_path_buf());
        let r = std::thread::Builder::new().name(format!("identity-{id}")).spawn(move || {
            let id = name;
            let applied = Channel::connect(&dir, Duration::from_secs(10))
                .map_err(|e| format!("the identity channel: {e}"))
                .and_then(|mut c| c.apply(&who, &me.apply_budget(&id, &dir)));
            match applied {
                Ok(()) => log(&format!("machine {id}: clock and RNG seed refreshed after the resume")),
                Err(why) => log(&format!("machine {id}: refreshing clock and RNG seed after the resume: {why}")),
            }
        });
        if let Err(e) = r {
            log(&format!("machine {id}: cannot start its identity refresh: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::record::tests::rec;
    use crate::machines::record::PrivateNic;

    #[test]
    fn saved_boot_key_follows_the_shape() {
        let mut r = rec();
        assert_eq!(saved_boot(&r), None, "a box without fast_start");
        r.fast_start = true;
        let a = saved_boot(&r).unwrap();
        assert!(a.starts_with("/b/saved-boots") && a.extension().is_some_and(|e| e == "snap"));
        let mut other = r.clone();
        other.id = "other".into();
        other.uuid = "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01".into();
        other.name = "web".into();
        assert_eq!(saved_boot(&other), Some(a.clone()), "identity is not part of the key");
        other.cmdline = format!("{} hostname=web", r.cmdline);
        assert_eq!(saved_boot(&other), Some(a.clone()), "nor the host name the identity sets");
        other.network.nics.push(PrivateNic { network: "n".into(), ip: None });
        assert_ne!(saved_boot(&other), Some(a.clone()));
        let mut more = r.clone();
        more.cpus = 2;
        assert_ne!(saved_boot(&more), Some(a));
        more.disks.push(crate::machines::record::Disk {
            path: "/d".into(),
            source: None,
            owned: true,
            format: Default::default(),
        });
        assert_eq!(saved_boot(&more), None, "a machine that ran has its own data on its disks");
    }

    #[test]
    fn macs_in_pci_order() {
        let mut r = rec();
        r.uuid = "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01".into();
        r.network.nics.push(PrivateNic { network: "n".into(), ip: None });
        let who = identity_of(&r).unwrap();
        assert_eq!(who.macs.len(), 2);
        assert_eq!(who.macs[0], xhyve_contract::mac::format_mac(&nic::mac_of_uuid(&r.uuid).unwrap()));
        r.network.mode = NetworkMode::None;
        assert_eq!(identity_of(&r).unwrap().macs.len(), 1);
    }

    #[test]
    fn static_address_only_on_the_user_mode_network() {
        let mut r = rec();
        r.uuid = "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01".into();
        r.network.mode = NetworkMode::User;
        let c = identity_of(&r).unwrap().ipv4.expect("user mode: the fixed address");
        assert_eq!(
            (c.address, c.prefix_len, c.router, c.dns),
            (user_net::GUEST_ADDR, 24, user_net::GATEWAY, user_net::DNS)
        );
        for mode in [NetworkMode::Shared, NetworkMode::None] {
            r.network.mode = mode;
            assert!(identity_of(&r).unwrap().ipv4.is_none(), "a shared network's lease is asked for by DHCP");
        }
    }

    #[test]
    fn hostname_from_the_command_line_first() {
        let mut r = rec();
        r.name = "project_default".into();
        r.uuid = "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01".into();
        assert_eq!(identity_of(&r).unwrap().hostname, "project-default");
        r.cmdline = "console=ttyS0 hostname=web.example".into();
        assert_eq!(identity_of(&r).unwrap().hostname, "web.example", "Vagrant's config.vm.hostname");
        r.cmdline = "console=ttyS0 hostname=bad;name".into();
        assert_eq!(identity_of(&r).unwrap().hostname, "project-default");
    }
}
