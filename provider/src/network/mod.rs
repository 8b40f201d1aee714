//! Network mode `shared`: a host bridge (default `xhyve0`, 192.168.64.1/24, as vmnet's shared
//! mode), one TAP device per running machine on it (`xh-<machine id>`, made before xhyve starts,
//! deleted when it ends) and the daemon's own DHCP server on the bridge, which gives every MAC
//! address one fixed address and keeps it in `$XHYVE_HOME/network/leases.json`. The machine's
//! MAC comes from its UUID (xhyve `-U`), so the same UUID gets the same address across restarts
//! of the machine and of the daemon.
//!
//! - `bridge`: the bridge and TAP devices (iproute2's `ip`).
//! - `leases`: the address of each MAC, allocated once and persisted atomically.
//! - `dhcp`: the DHCP server thread and its message handling (dhcproto).
//!
//! Needs root (CAP_NET_ADMIN for the devices, CAP_NET_BIND_SERVICE for UDP port 67), as vmnet
//! does. No NAT: the guests reach the host and each other on the bridge (see API.md).

pub mod bridge;
pub mod dhcp;
pub mod leases;

use crate::error::{code, Error, Result};
use crate::home::Home;
use crate::logger::log;
use crate::machines::record::{MachineRecord, State};
use crate::machines::ssh;
use leases::Leases;
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use xhyve_contract::mac::format_mac;

/// Default bridge name and address (vmnet's shared-mode subnet).
pub const DEFAULT_BRIDGE: &str = "xhyve0";
pub const DEFAULT_ADDR: &str = "192.168.64.1/24";
/// The daemon's environment variables that configure the shared network.
pub const ENV_BRIDGE: &str = "XHYVE_BRIDGE";
pub const ENV_ADDR: &str = "XHYVE_BRIDGE_ADDR";
/// Prefix of the TAP devices' names (then the first 12 characters of the machine id: 15 in all,
/// the kernel's limit).
pub const TAP_PREFIX: &str = "xh-";
/// The guest port `ssh_info` names in shared mode.
pub const SSH_PORT: u16 = 22;

fn net_err(m: impl Into<String>) -> Error {
    Error::new(code::NETWORK_FAILED, m)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shared network's bridge and subnet: the bridge has `gateway/prefix`; the guests get the
/// other host addresses of the subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

impl Default for Config {
    fn default() -> Config {
        Config::parse(None, None).expect("the defaults are valid")
    }
}

/// A name the kernel takes for an interface: 1 to 15 characters, no `/`, whitespace, `:` or `,`.
pub fn check_ifname(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not an interface name (1 to 15 letters, digits, '-', '_' or '.')"))
    }
}

impl Config {
    /// From `XHYVE_BRIDGE` (default xhyve0) and `XHYVE_BRIDGE_ADDR` (default 192.168.64.1/24).
    pub fn from_env() -> std::result::Result<Config, String> {
        let b = std::env::var(ENV_BRIDGE).ok().filter(|v| !v.is_empty());
        let a = std::env::var(ENV_ADDR).ok().filter(|v| !v.is_empty());
        Config::parse(b.as_deref(), a.as_deref())
    }

    pub fn parse(bridge: Option<&str>, addr: Option<&str>) -> std::result::Result<Config, String> {
        let bridge = bridge.unwrap_or(DEFAULT_BRIDGE).to_string();
        check_ifname(&bridge).map_err(|e| format!("{ENV_BRIDGE}: {e}"))?;
        if bridge.starts_with(TAP_PREFIX) {
            return Err(format!(
                "{ENV_BRIDGE}={bridge}: names starting with {TAP_PREFIX} are the machines' TAP devices"
            ));
        }
        let a = addr.unwrap_or(DEFAULT_ADDR);
        let bad = || {
            format!("{ENV_ADDR}={a:?} is not the bridge's address and prefix length, e.g. {DEFAULT_ADDR} (an IPv4 host address, /8 to /30)")
        };
        let (ip, prefix) = a.trim().split_once('/').ok_or_else(bad)?;
        let gateway: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let c = Config { bridge, gateway, prefix };
        let g = u32::from(gateway);
        if g == c.network() || g == u32::from(c.broadcast()) || gateway.is_loopback() {
            return Err(format!("{}: {gateway} is the subnet's network or broadcast address", bad()));
        }
        Ok(c)
    }

    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }
    pub fn network(&self) -> u32 {
        u32::from(self.gateway) & self.mask()
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network() | !self.mask())
    }
    /// `192.168.64.1/24`
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.gateway, self.prefix)
    }
    /// The guests' addresses: the subnet's host addresses but the gateway's.
    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n & self.mask() == self.network() && n != self.network() && ip != self.broadcast() && ip != self.gateway
    }
}

/// The MAC address xhyve gives a guest with `-U UUID` (the contract's rule); None for a
/// malformed UUID.
pub fn mac_of_uuid(uuid: &str) -> Option<[u8; 6]> {
    let uuid = uuid::Uuid::parse_str(uuid).ok()?;
    Some(xhyve_contract::mac::mac_from_uuid(&uuid))
}

/// The TAP device of a machine.
pub fn tap_name(machine_id: &str) -> String {
    let id: String = machine_id.chars().take(15 - TAP_PREFIX.len()).collect();
    format!("{TAP_PREFIX}{id}")
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

/// A TAP device made for a machine that is about to start: deleted when dropped, unless
/// `keep` (the VMM started; the supervisor deletes it when the VMM ends).
pub struct Tap {
    name: String,
    keep: bool,
}

impl Tap {
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
        let missing = missing_caps();
        if !missing.is_empty() {
            // SAFETY: geteuid cannot fail.
            let uid = unsafe { libc::geteuid() };
            return Err(net_err(format!(
                "network mode shared needs root: this daemon (pid {}, uid {uid}) lacks {}, which the bridge {}, the machine's TAP device and the DHCP server need; run `xhyve-provider serve` as root (as vmnet needs), or use network \"user\"",
                std::process::id(),
                missing.join(" and "),
                cfg.bridge
            ))
            .with_data(json!({"missing": missing})));
        }
        let _g = lock(&self.setup);
        bridge::ensure_bridge(&cfg).map_err(net_err)?;
        self.ensure_server(&cfg)?;
        let name = tap_name(machine_id);
        bridge::create_tap(&name, &cfg.bridge).map_err(net_err)?;
        Ok(Tap { name, keep: false })
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

    /// Deletes the machine's TAP device if there is one (its VMM ended, or it is destroyed).
    pub fn remove_tap(&self, machine_id: &str) {
        let name = tap_name(machine_id);
        if bridge::exists(&name) {
            let _g = lock(&self.setup);
            match bridge::delete_link(&name) {
                Ok(()) => log(&format!("machine {machine_id}: TAP device {name} deleted")),
                Err(e) => log(&format!("machine {machine_id}: {e}")),
            }
        }
    }

    /// `machine.destroy` of a shared machine: its address goes back to the pool.
    pub fn forget(&self, uuid: &str) {
        let Some(mac) = mac_of_uuid(uuid) else { return };
        if self.cfg.is_err() || !self.leases_path.exists() {
            return;
        }
        match self.with_leases(|l| l.remove(&mac)) {
            Ok(Ok(Some(ip))) => log(&format!("lease {ip} of {} released", format_mac(&mac))),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => log(&format!("writing {}: {e}", self.leases_path.display())),
            Err(e) => log(&e.message),
        }
    }

    /// The address to SSH to: user mode's forward on 127.0.0.1, shared mode's leased address
    /// and port 22; Err says why there is none (yet).
    pub fn ssh_addr(&self, rec: &MachineRecord) -> std::result::Result<SocketAddr, String> {
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
                let mac = mac_of_uuid(&rec.uuid).ok_or_else(|| format!("uuid {:?} is not a UUID", rec.uuid))?;
                match self.with_leases(|l| l.bound(&mac)) {
                    Ok(Some(ip)) => Ok(SocketAddr::from((ip, SSH_PORT))),
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

    /// At daemon start: the DHCP server again when a shared machine still runs; the TAP devices
    /// of this home's machines that no longer run are deleted.
    pub fn recover(&self, records: &[(PathBuf, MachineRecord)]) {
        let mut running_shared = false;
        for (_, r) in records {
            if r.state == State::Running {
                running_shared |= r.network["mode"] == "shared";
            } else {
                self.remove_tap(&r.id);
            }
        }
        if running_shared {
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
}

pub fn leases_path(home_root: &Path) -> PathBuf {
    home_root.join("network").join("leases.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_matches_the_vmm() {
        // `xhyve -U ... -M` prints these (vmm/src/mac.rs).
        let m = mac_of_uuid("8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01").unwrap();
        assert_eq!(format_mac(&m), "da:ad:9b:42:47:cc");
        let m = mac_of_uuid("6A0E5C1E-3B7D-4F0A-9D3E-2F1C0B9A8E71").unwrap();
        assert_eq!(format_mac(&m), "2e:9e:4f:51:14:61");
        assert!(mac_of_uuid("nope").is_none());
        assert!(mac_of_uuid("8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f0g").is_none());
    }

    #[test]
    fn config() {
        let c = Config::default();
        assert_eq!(c.bridge, "xhyve0");
        assert_eq!(c.cidr(), "192.168.64.1/24");
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 168, 64, 255));
        assert!(c.in_pool(Ipv4Addr::new(192, 168, 64, 2)));
        assert!(c.in_pool(Ipv4Addr::new(192, 168, 64, 254)));
        for ip in [[192, 168, 64, 0], [192, 168, 64, 1], [192, 168, 64, 255], [192, 168, 65, 2]] {
            assert!(!c.in_pool(Ipv4Addr::from(ip)), "{ip:?}");
        }
        let c = Config::parse(Some("br-test"), Some("10.9.0.129/25")).unwrap();
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 9, 0, 255));
        assert!(c.in_pool(Ipv4Addr::new(10, 9, 0, 128 + 5)));
        assert!(!c.in_pool(Ipv4Addr::new(10, 9, 0, 5)));
        for (b, a) in [
            (Some("a/b"), None),
            (Some(""), None),
            (Some("sixteen-chars-xx"), None),
            (Some("xh-abc"), None),
            (None, Some("192.168.64.1")),
            (None, Some("192.168.64.0/24")),
            (None, Some("192.168.64.255/24")),
            (None, Some("192.168.64.1/31")),
            (None, Some("192.168.64.1/4")),
            (None, Some("300.1.1.1/24")),
            (None, Some("127.0.0.1/8")),
        ] {
            assert!(Config::parse(b, a).is_err(), "{b:?} {a:?}");
        }
    }

    #[test]
    fn tap_names_fit_the_kernel() {
        assert_eq!(tap_name("3f9a1c07b2e4"), "xh-3f9a1c07b2e4");
        assert_eq!(tap_name("3f9a1c07b2e4ffff").len(), 15);
        assert!(check_ifname(&tap_name("3f9a1c07b2e4")).is_ok());
    }
}
