//! Network mode `shared`: a host bridge (default `xhyve0`, 192.168.64.1/24, as vmnet's shared
//! mode), one TAP device per running machine on it (`xh-<machine id>`, made before xhyve starts,
//! deleted when it ends) and the daemon's own DHCP server on the bridge, which gives every MAC
//! address one fixed address and keeps it in `$XHYVE_HOME/network/leases.json`. The machine's
//! MAC comes from its UUID (xhyve `-U`, see `crate::nic`), so the same UUID gets the same address
//! across restarts of the machine and of the daemon.
//!
//! - `config`: the bridge's name and subnet, from the daemon's environment.
//! - `bridge`: the bridge and TAP devices (iproute2's `ip`).
//! - `leases`: the address of each MAC, allocated once and persisted atomically.
//! - `dhcp`: the DHCP server thread and its message handling (dhcproto).
//!
//! Named networks (`named`) are rootless: a switch thread per network (`switch`, which answers
//! DHCP itself through `frames` with `dhcp`'s message handling and its own `leases`).
//!
//! Needs root (CAP_NET_ADMIN for the devices, CAP_NET_BIND_SERVICE for UDP port 67), as vmnet
//! does. No NAT: the guests reach the host and each other on the bridge (see API.md).
//!
//! This module knows interfaces, MACs and addresses, not machines: the machines module calls it
//! with a machine's id (for its TAP device) or MAC.

pub mod bridge;
pub mod config;
pub mod dhcp;
pub mod frames;
pub mod leases;
pub mod named;
pub mod switch;

use crate::error::{code, Error, Result};
use crate::home::Home;
use crate::logger::log;
use crate::nic::{nic_tap_name, tap_name, Mac};
pub use config::Config;
use leases::Leases;
use serde_json::json;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use xhyve_contract::mac::format_mac;

fn net_err(m: impl Into<String>) -> Error {
    Error::new(code::NETWORK_FAILED, m)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Capabilities the shared network needs that this process lacks (from `CapEff` of
/// /proc/self/status; where that cannot be read, root has them all and others none).
pub fn missing_caps() -> Vec<&'static str> {
    const NEEDED: [(u32, &str); 2] = [(12, "CAP_NET_ADMIN"), (10, "CAP_NET_BIND_SERVICE")];
    let eff = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    });
    NEEDED
        .iter()
        .filter(|(bit, _)| match eff {
            Some(e) => e & (1 << bit) == 0,
            // SAFETY: geteuid cannot fail.
            None => (unsafe { libc::geteuid() }) != 0,
        })
        .map(|(_, n)| *n)
        .collect()
}

/// Ok when this process has the capabilities a host bridge needs (`missing_caps`); else the
/// error `msg` makes of the missing ones, with them in its data.
pub fn need_caps(msg: impl FnOnce(&str) -> String) -> Result<()> {
    let missing = missing_caps();
    if missing.is_empty() {
        return Ok(());
    }
    Err(net_err(msg(&missing.join(" and "))).with_data(json!({"missing": missing})))
}

/// `(pid N, uid U)` of this daemon, for the errors of `need_caps`.
pub fn whoami() -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    format!("(pid {}, uid {uid})", std::process::id())
}

/// A TAP device made for a machine that is about to start: deleted when dropped, unless
/// `keep` (the VMM started; the supervisor deletes it when the VMM ends).
pub struct Tap {
    name: String,
    keep: bool,
}

impl Tap {
    /// A new TAP device `name` on `bridge` (see `bridge::create_tap`).
    pub fn create(name: String, bridge: &str) -> Result<Tap> {
        bridge::create_tap(&name, bridge).map_err(net_err)?;
        Ok(Tap { name, keep: false })
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = bridge::delete_link(&self.name) {
                log(&format!("cannot delete TAP device {}: {e}", self.name));
            }
        }
    }
}

/// The daemon's shared-network state: its config, the leases (loaded on first use) and the DHCP
/// server (started with the first shared machine).
pub struct Shared {
    cfg: std::result::Result<Config, String>,
    leases_path: PathBuf,
    leases: Arc<Mutex<Option<Leases>>>,
    server: Mutex<Option<dhcp::Server>>,
    /// Serialises bridge, server and TAP set-up.
    setup: Mutex<()>,
}

impl Shared {
    pub fn new(home: &Home) -> Shared {
        Shared {
            cfg: Config::from_env(),
            leases_path: leases_path(&home.root),
            leases: Arc::new(Mutex::new(None)),
            server: Mutex::new(None),
            setup: Mutex::new(()),
        }
    }

    fn cfg(&self) -> Result<&Config> {
        self.cfg.as_ref().map_err(|e| net_err(e.clone()))
    }

    /// Runs `f` on the leases, loading them first (an unreadable file is an error: it is not
    /// replaced, so no address is lost).
    fn with_leases<T>(&self, f: impl FnOnce(&mut Leases) -> T) -> Result<T> {
        let cfg = self.cfg()?;
        let mut g = lock(&self.leases);
        if g.is_none() {
            *g = Some(Leases::load(&self.leases_path, cfg).map_err(net_err)?);
        }
        Ok(f(g.as_mut().expect("loaded above")))
    }

    /// Before a shared machine starts: checks the privileges, makes the bridge (idempotent),
    /// starts the DHCP server and makes the machine's TAP device on the bridge. Nothing is made
    /// when the daemon lacks the privileges; a TAP made is deleted again on any later error.
    pub fn prepare(&self, machine_id: &str) -> Result<Tap> {
        let cfg = self.cfg()?.clone();
        need_caps(|missing| {
            format!(
                "network mode shared needs root: this daemon {} lacks {missing}, which the bridge {}, the machine's TAP device and the DHCP server need; run `xhyve-provider serve` as root (as vmnet needs), or use network \"user\"",
                whoami(),
                cfg.bridge
            )
        })?;
        let _g = lock(&self.setup);
        bridge::ensure_bridge(&cfg).map_err(net_err)?;
        self.ensure_server(&cfg)?;
        Tap::create(tap_name(machine_id), &cfg.bridge)
    }

    /// Starts the DHCP server on the bridge, or restarts it when the bridge was made anew.
    fn ensure_server(&self, cfg: &Config) -> Result<()> {
        let ifindex =
            bridge::ifindex(&cfg.bridge).ok_or_else(|| net_err(format!("the bridge {} vanished", cfg.bridge)))?;
        let mut srv = lock(&self.server);
        if srv.as_ref().is_some_and(|s| s.serves(ifindex)) {
            return Ok(());
        }
        if let Some(old) = srv.take() {
            old.stop();
        }
        self.with_leases(|_| ())?;
        let s = dhcp::Server::start(cfg.clone(), ifindex, self.leases.clone()).map_err(net_err)?;
        log(&format!("DHCP server on {} ({}), leases in {}", cfg.bridge, cfg.cidr(), self.leases_path.display()));
        *srv = Some(s);
        Ok(())
    }

    /// Deletes the machine's TAP devices that exist (its VMM ended, or it is destroyed): mode
    /// shared's and those of its `nics` NICs on bridge networks.
    pub fn remove_tap(&self, machine_id: &str, nics: usize) {
        let names = (1..=nics).filter_map(|k| Some(nic_tap_name(machine_id, u8::try_from(k).ok()?)));
        for name in std::iter::once(tap_name(machine_id)).chain(names) {
            if bridge::exists(&name) {
                let _g = lock(&self.setup);
                match bridge::delete_link(&name) {
                    Ok(()) => log(&format!("machine {machine_id}: TAP device {name} deleted")),
                    Err(e) => log(&format!("machine {machine_id}: {e}")),
                }
            }
        }
    }

    /// `machine.destroy` of a shared machine: its address goes back to the pool.
    pub fn forget(&self, mac: &Mac) {
        if self.cfg.is_err() || !self.leases_path.exists() {
            return;
        }
        match self.with_leases(|l| l.remove(mac)) {
            Ok(Ok(Some(ip))) => log(&format!("lease {ip} of {} released", format_mac(mac))),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => log(&format!("writing {}: {e}", self.leases_path.display())),
            Err(e) => log(&e.message),
        }
    }

    /// The address the guest with `mac` was given (its last DHCPACK); None while it has asked
    /// for none.
    pub fn bound(&self, mac: &Mac) -> Result<Option<Ipv4Addr>> {
        self.with_leases(|l| l.bound(mac))
    }

    /// At daemon start, when a shared machine still runs: the bridge and the DHCP server again.
    pub fn resume(&self) {
        let r = self.cfg().and_then(|cfg| {
            let _g = lock(&self.setup);
            bridge::ensure_bridge(cfg).map_err(net_err)?;
            self.ensure_server(cfg)
        });
        if let Err(e) = r {
            log(&format!("shared network: {e}"));
        }
    }
}

pub fn leases_path(home_root: &Path) -> PathBuf {
    home_root.join("network").join("leases.json")
}
