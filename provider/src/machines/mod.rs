//! Machines: `machine.create`, `list`, `state`, `start`, `stop`, `destroy`, `ssh_info`,
//! `wait_ssh`, `exec`, `package`, `suspend`, `resume`, `snapshot.*`, and the supervisors that
//! watch running VMMs.
//!
//! Each machine is `$XHYVE_HOME/machines/ID/` with `machine.json` (the record, written
//! atomically), its disks, `console.log` (the guest's serial console), `vmm.log` (xhyve's
//! stderr) and, once the VMM ended, `exit.json` (written by the runner, see `process::run_vmm`).
//!
//! Locks: `Slot::op` serialises the methods on one machine (held for a whole call); `Slot::rec`
//! guards read-modify-write of `machine.json` and pairs with `Slot::cv`, which the supervisor
//! signals when the VMM ended. The supervisor takes only `rec`, so `stop` can hold `op` while it
//! waits for the end.
//!
//! This file holds what every method shares (the registry of machine directories and the
//! locks); the methods live in the modules below, each an `impl Machines` block of its own.
//! Dependencies point one way: the method modules use this file and the leaf modules (`record`,
//! `params`, `process`, ...); of its own submodules this file uses only `record` and
//! `restore_journal`.

mod argv;
mod boot_disks;
mod console;
mod control;
mod create;
pub mod disk;
mod efi;
mod fast_start;
mod identity;
mod lifecycle;
pub mod overlay;
pub mod package;
pub mod params;
pub mod process;
pub mod reboot;
pub mod record;
mod restore_journal;
mod snapshots;
mod source;
pub mod ssh;
mod ssh_pool;
mod suspend;

use crate::boxes::store;
use crate::error::{code, Error, Result};
use crate::home::Home;
use crate::logger::log;
use crate::network;
use record::{MachineRecord, State};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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
    net: network::Shared,
    /// The named networks that NICs after the first join.
    pub networks: network::named::Named,
    /// How many guest reboots the supervisors restart.
    reboot_limit: reboot::RebootLimit,
    /// The SSH session of each machine's last login, for `exec`.
    ssh_pool: ssh_pool::Pool<ssh::Conn>,
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

/// Machine ids are ours (12 hex digits) but come back in params: nothing that leaves the store.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(invalid_field("id", format!("{id:?} is not a machine id")));
    }
    Ok(())
}

impl Machines {
    pub fn new(home: Home, reboot_limit: reboot::RebootLimit) -> Arc<Machines> {
        Arc::new(Machines {
            net: network::Shared::new(&home),
            networks: network::named::Named::new(&home),
            home,
            slots: Mutex::new(HashMap::new()),
            reboot_limit,
            ssh_pool: Default::default(),
        })
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

    /// Finishes the snapshot restore that a crash or a failed rename cut short on machine `id`,
    /// if any (`restore_journal.rs`); the caller holds its `op` lock. Every call that uses the
    /// machine's disks or boots it does this first.
    fn roll_forward(&self, id: &str, dir: &Path) -> Result<()> {
        let slot = self.slot(id);
        let _g = lock(&slot.rec);
        if let Some(name) = restore_journal::finish(dir)? {
            log(&format!("machine {id}: the restore of snapshot {name} that was cut short is finished"));
        }
        Ok(())
    }

    /// At daemon start, before any call: `roll_forward` of every machine.
    pub fn finish_restores(&self) {
        for (dir, rec) in self.records() {
            if let Err(e) = self.roll_forward(&rec.id, &dir) {
                log(&format!("machine {}: {}", rec.id, e.message));
            }
        }
    }

    /// The machines with a NIC on network `name` (id and name).
    pub fn network_users(&self, name: &str) -> Vec<String> {
        self.records()
            .into_iter()
            .filter(|(_, r)| r.network.nics.iter().any(|n| n.network == name))
            .map(|(_, r)| format!("{} ({})", r.id, r.name))
            .collect()
    }

    pub fn list(&self) -> Value {
        Value::Array(self.records().iter().map(|(d, r)| r.list_value(d)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_the_store() {
        assert!(check_id("0a1b2c3d4e5f").is_ok());
        for bad in ["", "..", "a/b", "../x", "a b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
