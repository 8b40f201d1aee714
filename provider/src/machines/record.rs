//! `machine.json`: everything the provider knows about one machine, written atomically.

use crate::error::{Error, Result};
use crate::size::MemSize;
use crate::state;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

pub const RECORD: &str = "machine.json";
/// A suspended machine's VM state (xhyve's snapshot format), from which `machine.start` resumes it.
pub const SAVED_STATE: &str = "saved.snap";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Being created (disks being copied), or a creation that a crash interrupted.
    NotCreated,
    Stopped,
    Running,
    Aborted,
    /// Suspended: its VM state is in `SAVED_STATE`, no process runs.
    Saved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::NotCreated => "not_created",
            State::Stopped => "stopped",
            State::Running => "running",
            State::Aborted => "aborted",
            State::Saved => "saved",
        }
    }
}

/// How a machine boots (box metadata `firmware`, machine.create's `firmware`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// xhyve loads the kernel and initrd itself (`-f kexec`).
    #[default]
    Kexec,
    /// UEFI firmware (Debian's OVMF, `-f bootrom`) boots the first disk through its EFI system
    /// partition.
    Efi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Kexec => "kexec",
            Firmware::Efi => "efi",
        }
    }
    fn is_kexec(&self) -> bool {
        *self == Firmware::Kexec
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
    /// `qcow2`: an overlay on `source` (a linked clone, `overlay.rs`); absent: raw.
    #[serde(default, skip_serializing_if = "DiskFormat::is_raw")]
    pub format: DiskFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn is_raw(&self) -> bool {
        *self == DiskFormat::Raw
    }

    /// The name qcow2 headers and xhyve's `format=` use.
    pub fn name(&self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// The machine's network: the management NIC (slot 2) of kind `mode`, the ports forwarded to
/// it in mode user, and the NICs after it (index 1 on), each on a named network (records
/// without `nics` have the first one only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub mode: NetworkMode,
    #[serde(default)]
    pub forwarded_ports: Vec<ForwardedPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<PrivateNic>,
}

/// A NIC on a named network: its static address, or None for one from the network's DHCP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateNic {
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// xhyve's user-mode network device (libslirp): outbound connections through the host's, and
    /// host ports forwarded to the guest (its SSH port among them).
    #[default]
    User,
    /// A TAP device on the daemon's bridge and an address from its DHCP server (`crate::network`).
    Shared,
    /// No network device.
    None,
}

impl NetworkMode {
    pub const ALL: [NetworkMode; 3] = [NetworkMode::User, NetworkMode::Shared, NetworkMode::None];

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::User => "user",
            NetworkMode::Shared => "shared",
            NetworkMode::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<NetworkMode> {
        NetworkMode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port forwarded from the host to the guest in network user (xhyve's `hostfwd=`). Records
/// written before the defaults were filled in may lack `host`, `protocol` and `host_ip`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PortOnDisk")]
pub struct ForwardedPort {
    pub guest: u16,
    pub host: u16,
    pub protocol: Protocol,
    pub host_ip: Ipv4Addr,
}

#[derive(Deserialize)]
struct PortOnDisk {
    guest: u16,
    host: Option<u16>,
    #[serde(default)]
    protocol: Protocol,
    host_ip: Option<Ipv4Addr>,
}

impl From<PortOnDisk> for ForwardedPort {
    fn from(p: PortOnDisk) -> ForwardedPort {
        ForwardedPort {
            guest: p.guest,
            host: p.host.unwrap_or(p.guest),
            protocol: p.protocol,
            host_ip: p.host_ip.unwrap_or(Ipv4Addr::LOCALHOST),
        }
    }
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
    pub memory: MemSize,
    pub cmdline: String,
    #[serde(default, skip_serializing_if = "Firmware::is_kexec")]
    pub firmware: Firmware,
    /// What kexec boots; a firmware machine may have none.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    /// A firmware machine's own UEFI variable store (`efi.rs`): its boot entries, kept across
    /// restarts and carried by machine.package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi_vars: Option<String>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    pub network: Network,
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
    /// Set by machine.suspend before it ends the VMM: its end, once the state is saved, is a
    /// suspend.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend_requested: bool,
    /// The box's init runs the identity step (box metadata `fast_start`): the machine gets the
    /// identity channel and may start from the box's saved boot (`fast_start.rs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fast_start: bool,
    /// No xhyve has run the machine yet: its disks are still as machine.create made them, so a
    /// fast start may put the saved boot's disks under them (`fast_start.rs`). Absent in older
    /// records: false, so a disk that may hold data is never replaced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
    /// The guest's reboots since machine.start (each restarted xhyve; see `reboot`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reboots: u32,
    /// The times (Unix seconds) of the recent ones, within `RebootLimit::window`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_reboots: Vec<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
        if self.reboots > 0 {
            v["reboots"] = json!(self.reboots);
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
        v["firmware"] = json!(self.firmware.as_str());
        v["path"] = json!(dir.display().to_string());
        v["forwarded_ports"] = json!(self.network.forwarded_ports);
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

    /// A record as the daemon wrote it before the record was typed (network and ports were
    /// stored as given, memory as a string): it must still load, and mean the same.
    const OLD_RECORD: &str = r#"{
  "id": "3f9a1c07b2e4",
  "name": "web",
  "uuid": "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01",
  "box": {"name": "acme/tiny", "version": "1.0.0", "architecture": "amd64", "path": "/h/boxes/acme-VAGRANTSLASH-tiny/1.0.0/amd64"},
  "cpus": 2,
  "memory": "300M",
  "cmdline": "console=ttyS0",
  "kernel": "/h/boxes/acme-VAGRANTSLASH-tiny/1.0.0/amd64/vmlinux",
  "initrd": null,
  "disks": [{"path": "/h/machines/3f9a1c07b2e4/disk0.img", "source": "/b/disk0.img", "owned": true}],
  "network": {"mode": "user", "forwarded_ports": [{"guest": 80, "host": 8080}, {"guest": 53, "protocol": "udp", "host_ip": "0.0.0.0"}]},
  "created_at": 1700000000,
  "state": "stopped",
  "exit_status": 1,
  "exit_signal": null,
  "exit_reason": "guest powered off (exit status 1)",
  "process": null,
  "ssh_port": 40123,
  "stop_requested": false
}"#;

    #[test]
    fn old_records_load() {
        let r: MachineRecord = serde_json::from_str(OLD_RECORD).unwrap();
        assert_eq!(r.memory.to_string(), "300M");
        assert_eq!(r.network.mode, NetworkMode::User);
        assert_eq!(
            r.network.forwarded_ports,
            vec![
                ForwardedPort { guest: 80, host: 8080, protocol: Protocol::Tcp, host_ip: Ipv4Addr::LOCALHOST },
                ForwardedPort { guest: 53, host: 53, protocol: Protocol::Udp, host_ip: Ipv4Addr::UNSPECIFIED },
            ]
        );
        assert_eq!((r.state, r.ssh_port, r.cpus), (State::Stopped, Some(40123), 2));
        // Every mode, and a network without forwarded_ports.
        for m in ["user", "shared", "none"] {
            let mut v: Value = serde_json::from_str(OLD_RECORD).unwrap();
            v["network"] = json!({"mode": m});
            let r: MachineRecord = serde_json::from_value(v).unwrap();
            assert_eq!((r.network.mode.as_str(), r.network.forwarded_ports.len()), (m, 0));
        }
    }

    /// What the daemon writes now reads as before: the same keys and the same kinds of values
    /// (a daemon of the previous version can load it), with the ports' defaults spelled out.
    #[test]
    fn records_keep_their_shape() {
        let r: MachineRecord = serde_json::from_str(OLD_RECORD).unwrap();
        let old: Value = serde_json::from_str(OLD_RECORD).unwrap();
        let new = serde_json::to_value(&r).unwrap();
        assert_eq!(new["memory"], "300M");
        assert_eq!(new["network"]["mode"], "user");
        assert_eq!(
            new["network"]["forwarded_ports"],
            json!([
                {"guest": 80, "host": 8080, "protocol": "tcp", "host_ip": "127.0.0.1"},
                {"guest": 53, "host": 53, "protocol": "udp", "host_ip": "0.0.0.0"},
            ])
        );
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&new), keys(&old));
        let mut again = new.clone();
        again["network"] = old["network"].clone();
        assert_eq!(again, old);
        assert_eq!(serde_json::from_value::<MachineRecord>(new).unwrap().network, r.network);
    }
}
