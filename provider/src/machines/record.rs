//! `machine.json`: everything the provider knows about one machine, written atomically.

use crate::error::{Error, Result};
use crate::state;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

pub const RECORD: &str = "machine.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Being created (disks being copied), or a creation that a crash interrupted.
    NotCreated,
    Stopped,
    Running,
    Aborted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::NotCreated => "not_created",
            State::Stopped => "stopped",
            State::Running => "running",
            State::Aborted => "aborted",
        }
    }
}

/// The box a machine was made from (box.remove's guard reads `name`, `version`, `architecture`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoxRef {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub path: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Disk {
    pub path: String,
    /// The box file it was copied from, for box disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// True when the file lives in the machine's directory (and goes with it).
    pub owned: bool,
}

/// The running VMM: `pid`/`start_time` are xhyve's, `runner_*` the `run-vmm` parent's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Process {
    pub pid: i32,
    pub start_time: u64,
    pub runner_pid: i32,
    pub runner_start_time: u64,
    pub started_at: u64,
    pub argv: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineRecord {
    pub id: String,
    pub name: String,
    pub uuid: String,
    /// None for a machine made from a kernel and disks given to machine.create.
    #[serde(rename = "box")]
    pub bx: Option<BoxRef>,
    pub cpus: u32,
    pub memory: String,
    pub cmdline: String,
    pub kernel: String,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    pub network: Value,
    pub created_at: u64,
    pub state: State,
    #[serde(default)]
    pub exit_status: Option<i32>,
    #[serde(default)]
    pub exit_signal: Option<i32>,
    #[serde(default)]
    pub exit_reason: Option<String>,
    #[serde(default)]
    pub process: Option<Process>,
    /// The host port on 127.0.0.1 forwarded to the guest's SSH port (user-mode networking);
    /// kept across restarts while it is free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// Set by machine.stop: the VMM's end, however it comes, is a stop, not a crash.
    #[serde(default)]
    pub stop_requested: bool,
}

impl MachineRecord {
    pub fn load(dir: &Path) -> Result<MachineRecord> {
        let p = dir.join(RECORD);
        let text = fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::not_found(format!("no machine record {}", p.display()))
            } else {
                Error::internal(format!("cannot read {}: {e}", p.display()))
            }
        })?;
        serde_json::from_slice(&text).map_err(|e| Error::internal(format!("cannot parse {}: {e}", p.display())))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        state::write_json_atomic(&dir.join(RECORD), self)
            .map_err(|e| Error::internal(format!("writing {}: {e}", dir.join(RECORD).display())))
    }

    /// `machine.state`'s answer.
    pub fn state_value(&self) -> Value {
        let mut v = json!({"id": self.id, "name": self.name, "state": self.state.as_str()});
        if let Some(s) = self.exit_status {
            v["exit_status"] = json!(s);
        }
        if let Some(s) = self.exit_signal {
            v["exit_signal"] = json!(s);
        }
        if let Some(r) = &self.exit_reason {
            v["exit_reason"] = json!(r);
        }
        if let (State::Running, Some(p)) = (self.state, &self.process) {
            v["pid"] = json!(p.pid);
        }
        v
    }

    /// One entry of `machine.list`.
    pub fn list_value(&self, dir: &Path) -> Value {
        let mut v = self.state_value();
        v["uuid"] = json!(self.uuid);
        v["box"] = match &self.bx {
            Some(b) => {
                json!({"name": b.name, "version": b.version, "architecture": b.architecture})
            }
            None => Value::Null,
        };
        v["cpus"] = json!(self.cpus);
        v["memory"] = json!(self.memory);
        v["path"] = json!(dir.display().to_string());
        v
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rec() -> MachineRecord {
        serde_json::from_value(json!({
            "id": "m", "name": "n", "uuid": "u",
            "box": {"name": "b", "version": "0", "architecture": "amd64", "path": "/b"},
            "cpus": 1, "memory": "256M", "cmdline": "", "kernel": "/k",
            "network": {"mode": "user"}, "created_at": 0, "state": "running"
        }))
        .unwrap()
    }
}
