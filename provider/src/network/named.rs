//! Named networks (`network.create|list|remove`): private networks that machines join with
//! their second and later NICs. Each is a subnet (default 192.168.56.0/21, Vagrant's host-only
//! range), a DHCP range for NICs without a static address (default: the upper half of the
//! subnet; `false`: static addresses only) and, while the daemon runs, one of:
//! - mode `switch` (rootless, the default): a switch thread (`switch`) that answers DHCP itself;
//! - mode `bridge` (root): a host bridge (`bridge`, default name `xhn-NAME`) with the host's own
//!   address on it, the NICs as TAP devices on it and a DHCP server (`dhcp`) on it, as the
//!   shared network has: the host reaches the machines directly (Vagrant's host-only network).
//!
//! Its first host address is the gateway: the switch answers DHCP from it, or the host has it
//! on the bridge; no guest gets it.
//!
//! State under `$XHYVE_HOME/networks/`: `networks.json` (the list, written atomically; a change
//! that cannot be written is not made), `NAME.leases.json` (the network's leases, as the shared
//! network's: a static `ip` is a fixed lease for the NIC's MAC) and `NAME.sock` (the switch).
//!
//! This module knows networks, MACs and addresses, not machines: the caller names the machines
//! that use a network when it asks to remove it.

use super::config::{check_ifname, Config};
use super::leases::Leases;
use super::switch::Switch;
use super::{bridge, dhcp, need_caps, whoami};
use crate::error::{code, Error, Result};
use crate::home::Home;
use crate::logger::log;
use crate::nic::{Mac, TAP_PREFIX};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use xhyve_contract::mac::format_mac;

pub const DEFAULT_SUBNET: &str = "192.168.56.0/21";
/// A bridge network's default interface name: this, then the network's name.
pub const BRIDGE_PREFIX: &str = "xhn-";
const NAME_MAX: usize = 40;

/// `network.create`'s params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    pub name: String,
    pub subnet: Option<String>,
    /// `{start, end}`, or `false` for static addresses only; default: the subnet's upper half.
    pub dhcp: Option<Value>,
    pub mode: Option<Mode>,
    /// Mode bridge: the bridge's interface name (default `xhn-NAME`).
    pub bridge: Option<String>,
}

/// How the network's frames travel: a rootless switch in the daemon, or a host bridge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Switch,
    Bridge,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Switch => "switch",
            Mode::Bridge => "bridge",
        }
    }
}

/// Where a NIC on the network plugs in.
pub enum Port {
    /// The switch's unix socket (xhyve `virtio-net,socket=PATH`).
    Socket(PathBuf),
    /// The host bridge a TAP device joins (xhyve `virtio-tap`).
    Bridge(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameParams {
    pub name: String,
}

/// One network as `networks.json` keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    /// Network address and prefix: `192.168.56.0/21`.
    pub subnet: String,
    /// The DHCP range; None: static addresses only.
    pub dhcp: Option<Range>,
    pub created_at: u64,
    #[serde(default)]
    pub mode: Mode,
    /// Mode bridge's interface name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    networks: Vec<Spec>,
}

fn bad(field: &str, m: impl Into<String>) -> Error {
    Error::invalid_params(format!("invalid params: {field}: {}", m.into())).with_data(json!({"field": field}))
}

/// `a.b.c.d/p` (host bits may be set) as the network address and prefix; /8 to /30.
pub fn parse_subnet(s: &str) -> std::result::Result<(Ipv4Addr, u8), String> {
    let err = || format!("{s:?} is not an IPv4 subnet with a prefix length from 8 to 30, e.g. {DEFAULT_SUBNET}");
    let (ip, prefix) = s.trim().split_once('/').ok_or_else(err)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
    let prefix: u8 = prefix.parse().map_err(|_| err())?;
    if !(8..=30).contains(&prefix) {
        return Err(err());
    }
    Ok((Ipv4Addr::from(u32::from(ip) & (u32::MAX << (32 - prefix))), prefix))
}

impl Spec {
    /// The DHCP server's view: the gateway is the first host address; no router option.
    pub fn config(&self) -> Config {
        let (net, prefix) = parse_subnet(&self.subnet).expect("checked when created");
        // An empty range (start > end) when DHCP hands out only the fixed leases.
        let range = self.dhcp.map(|r| (r.start, r.end)).unwrap_or((Ipv4Addr::BROADCAST, Ipv4Addr::UNSPECIFIED));
        Config {
            bridge: self.bridge.clone().unwrap_or_else(|| self.name.clone()),
            gateway: Ipv4Addr::from(u32::from(net) + 1),
            prefix,
            router: false,
            range: Some(range),
        }
    }

    fn value(&self, path: &std::path::Path) -> Value {
        let c = self.config();
        json!({
            "name": self.name, "subnet": self.subnet, "gateway": c.gateway.to_string(),
            "netmask": c.netmask().to_string(),
            "dhcp": self.dhcp.map(|r| json!({"start": r.start.to_string(), "end": r.end.to_string()})),
            "mode": self.mode.as_str(), "bridge": self.bridge,
            "socket": (self.mode == Mode::Switch).then(|| path.display().to_string()),
            "created_at": self.created_at,
        })
    }

    /// Checks the params into a spec.
    pub(crate) fn check(p: &CreateParams) -> Result<Spec> {
        let n = &p.name;
        let name_ok = !n.is_empty()
            && n.len() <= NAME_MAX
            && !n.starts_with('.')
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(bad("name", format!("{n:?} is not a network name (1 to {NAME_MAX} letters, digits, '-', '_' or '.'; not starting with '.')")));
        }
        let (net, prefix) =
            parse_subnet(p.subnet.as_deref().unwrap_or(DEFAULT_SUBNET)).map_err(|e| bad("subnet", e))?;
        let subnet = format!("{net}/{prefix}");
        let mode = p.mode.unwrap_or_default();
        let bridge = match (mode, &p.bridge) {
            (Mode::Switch, Some(_)) => return Err(bad("bridge", "names the host bridge of mode \"bridge\" only")),
            (Mode::Switch, None) => None,
            (Mode::Bridge, Some(b)) => {
                check_ifname(b).map_err(|e| bad("bridge", e))?;
                Some(b.clone())
            }
            (Mode::Bridge, None) => {
                let b = format!("{BRIDGE_PREFIX}{n}");
                check_ifname(&b).map_err(|_| {
                    bad(
                        "bridge",
                        format!("{b:?} (the default) is too long for an interface name (15 characters): give bridge"),
                    )
                })?;
                Some(b)
            }
        };
        if let Some(b) = bridge.as_deref().filter(|b| b.starts_with(TAP_PREFIX)) {
            return Err(bad("bridge", format!("{b}: names starting with {TAP_PREFIX} are the machines' TAP devices")));
        }
        let mut spec = Spec { name: n.clone(), subnet, dhcp: None, created_at: crate::state::now(), mode, bridge };
        let cfg = spec.config();
        let ip = |v: Option<&Value>, what: &str| -> Result<Ipv4Addr> {
            let ip: Ipv4Addr = v
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("dhcp", format!("{what} must be an IPv4 address")))?;
            if !cfg.in_pool(ip) {
                return Err(bad(
                    "dhcp",
                    format!(
                        "{what} {ip} is outside the guest addresses of {} (the gateway {} excluded)",
                        spec.subnet, cfg.gateway
                    ),
                ));
            }
            Ok(ip)
        };
        spec.dhcp = match &p.dhcp {
            Some(Value::Bool(false)) => None,
            None | Some(Value::Null) | Some(Value::Bool(true)) => {
                // The upper half of the host addresses; the lower half stays for static ones.
                let first = u32::from(cfg.gateway) + 1;
                let last = u32::from(cfg.broadcast()) - 1;
                Some(Range { start: Ipv4Addr::from(first + (last - first).div_ceil(2)), end: Ipv4Addr::from(last) })
            }
            Some(Value::Object(o)) => {
                if let Some(k) = o.keys().find(|k| !["start", "end"].contains(&k.as_str())) {
                    return Err(bad("dhcp", format!("unknown field {k:?} (start, end)")));
                }
                let (start, end) = (ip(o.get("start"), "start")?, ip(o.get("end"), "end")?);
                if start > end {
                    return Err(bad("dhcp", format!("start {start} is after end {end}")));
                }
                Some(Range { start, end })
            }
            Some(other) => return Err(bad("dhcp", format!("{other} is not {{start, end}}, true or false"))),
        };
        Ok(spec)
    }

    fn overlaps(&self, other: &Spec) -> bool {
        overlap(&self.config(), &other.config())
    }
}

fn overlap(a: &Config, b: &Config) -> bool {
    let common = a.mask() & b.mask();
    a.network() & common == b.network() & common
}

/// What runs for a network: its switch, or its bridge's DHCP server.
enum Running {
    Switch(Switch),
    Bridge(dhcp::Server),
}

/// A network while the daemon runs: its spec, leases and what runs for it (None: it could not
/// start; the next machine to join tries again).
struct Live {
    spec: Spec,
    leases: Arc<Mutex<Leases>>,
    running: Option<Running>,
}

impl Live {
    /// Stops what runs; `delete`: the bridge goes too (the network is removed, or its creation
    /// failed).
    fn stop(&mut self, delete: bool) {
        match self.running.take() {
            Some(Running::Switch(s)) => s.stop(),
            Some(Running::Bridge(s)) => s.stop(),
            None => {}
        }
        if let (true, Some(br)) = (delete, &self.spec.bridge) {
            if let Err(e) = bridge::delete_link(br) {
                log(&format!("network {}: {e}", self.spec.name));
            }
        }
    }
}

/// The daemon's named networks.
pub struct Named {
    dir: PathBuf,
    nets: Mutex<Option<BTreeMap<String, Live>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn net_err(m: impl Into<String>) -> Error {
    Error::new(code::NETWORK_FAILED, m)
}

impl Named {
    pub fn new(home: &Home) -> Named {
        Named { dir: home.root.join("networks"), nets: Mutex::new(None) }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("networks.json")
    }
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }
    fn leases_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.leases.json"))
    }

    fn save(&self, nets: &BTreeMap<String, Live>, extra: Option<&Spec>, without: Option<&str>) -> Result<()> {
        let f = File {
            networks: nets
                .values()
                .map(|l| &l.spec)
                .chain(extra)
                .filter(|s| Some(s.name.as_str()) != without)
                .cloned()
                .collect(),
        };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        crate::state::write_json_atomic(&self.file(), &f)
            .map_err(|e| net_err(format!("writing {}: {e}", self.file().display())))
    }

    /// A network's leases, nothing running yet.
    fn load(&self, spec: Spec) -> Result<Live> {
        let leases = Leases::load(&self.leases_file(&spec.name), &spec.config()).map_err(net_err)?;
        Ok(Live { spec, leases: Arc::new(Mutex::new(leases)), running: None })
    }

    /// Starts the network's switch, or makes its bridge (idempotent: an existing one is kept)
    /// and starts its DHCP server; a server whose bridge was made anew is restarted.
    fn start(&self, live: &mut Live) -> Result<()> {
        let cfg = live.spec.config();
        let name = live.spec.name.clone();
        let err = |e: String| net_err(format!("network {name}: {e}"));
        match live.spec.mode {
            Mode::Switch if live.running.is_none() => {
                let s = Switch::start(&self.socket(&name), cfg, live.leases.clone()).map_err(err)?;
                live.running = Some(Running::Switch(s));
            }
            Mode::Switch => {}
            Mode::Bridge => {
                need_caps(|missing| {
                    format!(
                        "network {name:?} is a host bridge ({}): this daemon {} lacks {missing}, which the bridge, the machines' TAP devices and its DHCP server need; run `xhyve-provider serve` as root, or use a network of mode \"switch\" (rootless)",
                        cfg.bridge,
                        whoami()
                    )
                })?;
                bridge::ensure_bridge(&cfg).map_err(err)?;
                let ifindex = bridge::ifindex(&cfg.bridge).ok_or_else(|| err(format!("{} vanished", cfg.bridge)))?;
                if matches!(&live.running, Some(Running::Bridge(s)) if s.serves(ifindex)) {
                    return Ok(());
                }
                live.stop(false);
                let s = dhcp::Server::start(cfg.clone(), ifindex, live.leases.clone()).map_err(err)?;
                log(&format!("network {name}: bridge {} ({}) with its DHCP server", cfg.bridge, cfg.cidr()));
                live.running = Some(Running::Bridge(s));
            }
        }
        Ok(())
    }

    /// Runs `f` on the networks, loading them (and starting their switches) on first use.
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Live>) -> Result<T>) -> Result<T> {
        let mut g = lock(&self.nets);
        if g.is_none() {
            let file: File = match std::fs::read(self.file()) {
                Ok(t) => serde_json::from_slice(&t).map_err(|e| {
                    net_err(format!(
                        "{} is not a valid networks file: {e} (fix it; nothing was changed)",
                        self.file().display()
                    ))
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
                Err(e) => return Err(net_err(format!("reading {}: {e}", self.file().display()))),
            };
            let mut nets = BTreeMap::new();
            for spec in file.networks {
                let name = spec.name.clone();
                let mut live = self.load(spec)?;
                // On error it stays in the list (the machines' NICs name it): its machines cannot
                // start until it can.
                match self.start(&mut live) {
                    Ok(()) if live.spec.mode == Mode::Switch => log(&format!(
                        "network {name} ({}): switch on {}",
                        live.spec.subnet,
                        self.socket(&name).display()
                    )),
                    Ok(()) => {}
                    Err(e) => log(&e.message),
                }
                nets.insert(name, live);
            }
            *g = Some(nets);
        }
        f(g.as_mut().expect("loaded above"))
    }

    /// At daemon start: the switches and bridges of every network.
    pub fn resume(&self) {
        if let Err(e) = self.with(|_| Ok(())) {
            log(&format!("named networks: {}", e.message));
        }
    }

    pub fn create(&self, p: CreateParams) -> Result<Value> {
        let spec = Spec::check(&p)?;
        self.with(|nets| {
            if nets.contains_key(&spec.name) {
                return Err(Error::new(code::ALREADY_EXISTS, format!("network {:?} already exists", spec.name)));
            }
            if let Some(o) = nets.values().find(|o| o.spec.overlaps(&spec)) {
                return Err(Error::new(
                    code::IN_USE,
                    format!(
                        "subnet {} overlaps network {:?} ({}): give each network its own subnet",
                        spec.subnet, o.spec.name, o.spec.subnet
                    ),
                )
                .with_data(json!({"network": o.spec.name})));
            }
            if let Some(br) = &spec.bridge {
                self.check_bridge(nets, &spec, br)?;
            }
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
            // A leases file of an earlier network of that name is not this one's.
            let _ = std::fs::remove_file(self.leases_file(&spec.name));
            let mut live = self.load(spec.clone())?;
            if let Err(e) = self.start(&mut live).and_then(|()| self.save(nets, Some(&spec), None)) {
                live.stop(true);
                return Err(e);
            }
            let v = spec.value(&self.socket(&spec.name));
            log(&format!("network {} ({}) created", spec.name, spec.subnet));
            nets.insert(spec.name.clone(), live);
            Ok(v)
        })
    }

    /// A new bridge network's checks: the daemon may make bridges, its interface is not taken
    /// (by another network, or anything on the host), its subnet is not the shared network's.
    fn check_bridge(&self, nets: &BTreeMap<String, Live>, spec: &Spec, br: &str) -> Result<()> {
        need_caps(|missing| {
            format!(
                "mode \"bridge\" needs root: this daemon {} lacks {missing}, which the bridge {br}, the machines' TAP devices and its DHCP server need; run `xhyve-provider serve` as root, or use mode \"switch\" (rootless)",
                whoami()
            )
        })?;
        let taken = |field: &str, m: String| Err(Error::new(code::IN_USE, m).with_data(json!({"field": field})));
        if let Some(o) = nets.values().find(|o| o.spec.bridge.as_deref() == Some(br)) {
            return taken("bridge", format!("bridge {br} is network {:?}'s: give another bridge name", o.spec.name));
        }
        if bridge::exists(br) {
            return taken("bridge", format!("the host already has an interface {br}: give another bridge name"));
        }
        if let Ok(shared) = Config::from_env() {
            if overlap(&shared, &spec.config()) {
                return taken(
                    "subnet",
                    format!(
                        "subnet {} overlaps the shared network's ({} on {}): give another subnet",
                        spec.subnet,
                        shared.cidr(),
                        shared.bridge
                    ),
                );
            }
        }
        Ok(())
    }

    pub fn list(&self) -> Result<Value> {
        self.with(|nets| {
            let v = nets
                .values()
                .map(|l| {
                    let mut v = l.spec.value(&self.socket(&l.spec.name));
                    v["leases"] = lock(&l.leases).list();
                    v
                })
                .collect();
            Ok(Value::Array(v))
        })
    }

    /// `users`: the machines with a NIC on it (their names, for the error).
    pub fn remove(&self, name: &str, users: &[String]) -> Result<Value> {
        self.with(|nets| {
            if !nets.contains_key(name) {
                return Err(Error::not_found(format!("no network {name:?} (network.list shows the networks)")));
            }
            if !users.is_empty() {
                return Err(Error::new(
                    code::IN_USE,
                    format!("network {name:?} is in use by machine(s) {}: destroy them first", users.join(", ")),
                )
                .with_data(json!({"machines": users})));
            }
            self.save(nets, None, Some(name))?;
            let mut live = nets.remove(name).expect("checked above");
            live.stop(true);
            let _ = std::fs::remove_file(self.leases_file(name));
            log(&format!("network {name} removed"));
            Ok(json!({"name": name, "removed": true}))
        })
    }

    /// Checks that the network exists and `ip` (if any) is an address of it that no other MAC
    /// has; `field` names the NIC in the error.
    pub fn check_nic(&self, field: &str, name: &str, mac: &Mac, ip: Option<Ipv4Addr>) -> Result<()> {
        self.with(|nets| {
            let live = nets.get(name).ok_or_else(|| {
                Error::not_found(format!("{field}: no network {name:?} (network.create makes it)"))
                    .with_data(json!({"field": field}))
            })?;
            let Some(ip) = ip else { return Ok(()) };
            let cfg = live.spec.config();
            if !cfg.in_pool(ip) {
                return Err(bad(
                    field,
                    format!(
                        "{ip} is not a guest address of network {name:?} ({}; its gateway {} excluded)",
                        live.spec.subnet, cfg.gateway
                    ),
                ));
            }
            let leases = lock(&live.leases);
            match leases.holder(ip) {
                Some(other) if other != *mac => Err(Error::new(
                    code::IN_USE,
                    format!(
                        "{field}: {ip} is already the address of another NIC ({}) on network {name:?}",
                        format_mac(&other)
                    ),
                )
                .with_data(json!({"field": field}))),
                _ => Ok(()),
            }
        })
    }

    /// Gives the NIC `mac` the static address `ip` (a fixed lease, written at once).
    pub fn fix(&self, name: &str, mac: &Mac, ip: Ipv4Addr) -> Result<()> {
        self.with(|nets| {
            let live = nets.get(name).ok_or_else(|| Error::not_found(format!("no network {name:?}")))?;
            let mut l = lock(&live.leases);
            l.fix(mac, ip, crate::state::now()).map_err(|e| Error::new(code::IN_USE, format!("network {name:?}: {e}")))
        })
    }

    /// The NIC is gone (its machine destroyed): its address goes back to the pool.
    pub fn forget(&self, name: &str, mac: &Mac) {
        let r = self.with(|nets| {
            let Some(live) = nets.get(name) else { return Ok(None) };
            let mut l = lock(&live.leases);
            l.remove(mac).map_err(|e| net_err(e.to_string()))
        });
        match r {
            Ok(Some(ip)) => log(&format!("network {name}: lease {ip} of {} released", format_mac(mac))),
            Ok(None) => {}
            Err(e) => log(&format!("network {name}: {}", e.message)),
        }
    }

    /// Where a NIC on the network plugs in (its switch or bridge started again if it is not
    /// running); an error when the network is gone or cannot start.
    pub fn port(&self, name: &str) -> Result<Port> {
        self.with(|nets| {
            let live = nets.get_mut(name).ok_or_else(|| {
                net_err(format!("network {name:?} no longer exists: destroy the machine, or create the network again"))
            })?;
            self.start(live)?;
            Ok(match &live.spec.bridge {
                Some(br) => Port::Bridge(br.clone()),
                None => Port::Socket(self.socket(name)),
            })
        })
    }

    #[cfg(test)]
    /// The address the NIC `mac` has on the network (fixed, or given by DHCP), if any.
    pub fn address(&self, name: &str, mac: &Mac) -> Option<Ipv4Addr> {
        self.with(|nets| Ok(nets.get(name).and_then(|l| lock(&l.leases).address(mac)))).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::super::leases::tests::tempdir;
    use super::*;

    fn params(name: &str, subnet: Option<&str>, dhcp: Option<Value>) -> CreateParams {
        CreateParams { name: name.into(), subnet: subnet.map(String::from), dhcp, mode: None, bridge: None }
    }

    fn with_bridge(name: &str, mode: Option<Mode>, bridge: Option<&str>) -> CreateParams {
        CreateParams { mode, bridge: bridge.map(String::from), ..params(name, Some("10.31.0.0/24"), None) }
    }

    #[test]
    fn create_list_remove_and_bad_input() {
        let dir = tempdir("named");
        let home = Home { root: dir.clone() };
        let n = Named::new(&home);
        let v = n.create(params("vagrant", None, None)).unwrap();
        assert_eq!(v["subnet"], "192.168.56.0/21");
        assert_eq!(v["gateway"], "192.168.56.1");
        assert_eq!(v["dhcp"], json!({"start": "192.168.60.0", "end": "192.168.63.254"}));
        assert_eq!((v["mode"].as_str(), v["bridge"].is_null()), (Some("switch"), true), "{v}");
        assert!(n.socket("vagrant").exists());
        let v = n
            .create(params("lab", Some("10.20.30.40/24"), Some(json!({"start": "10.20.30.10", "end": "10.20.30.20"}))))
            .unwrap();
        assert_eq!(v["subnet"], "10.20.30.0/24");
        n.create(params("static", Some("10.21.0.0/24"), Some(json!(false)))).unwrap();

        let before = std::fs::read(n.file()).unwrap();
        for (p, want) in [
            (params("vagrant", Some("10.99.0.0/24"), None), "already exists"),
            (params("other", Some("192.168.57.0/24"), None), "overlaps network \"vagrant\""),
            (params("other", Some("10.0.0.0/8"), None), "overlaps network"),
            (params("a/b", None, None), "not a network name"),
            (params("", None, None), "not a network name"),
            (params("x", Some("10.30.0.0/31"), None), "prefix length from 8 to 30"),
            (params("x", Some("10.30.0.0"), None), "not an IPv4 subnet"),
            (params("x", Some("10.30.0.0/24"), Some(json!({"start": "10.30.1.5", "end": "10.30.0.9"}))), "outside"),
            (params("x", Some("10.30.0.0/24"), Some(json!({"start": "10.30.0.1", "end": "10.30.0.9"}))), "outside"),
            (params("x", Some("10.30.0.0/24"), Some(json!({"start": "10.30.0.9", "end": "10.30.0.5"}))), "is after"),
            (params("x", Some("10.30.0.0/24"), Some(json!("yes"))), "is not {start, end}"),
            (with_bridge("x", None, Some("br-x")), "mode \"bridge\" only"),
            (with_bridge("a-long-network", Some(Mode::Bridge), None), "too long for an interface name"),
            (with_bridge("x", Some(Mode::Bridge), Some("xh-x")), "the machines' TAP devices"),
            (with_bridge("x", Some(Mode::Bridge), Some("a/b")), "is not an interface name"),
        ] {
            let e = n.create(p).unwrap_err();
            assert!(e.message.contains(want), "{} (wanted {want})", e.message);
        }
        assert_eq!(std::fs::read(n.file()).unwrap(), before, "nothing half-made");

        // Static addresses: in the subnet, not the gateway, one NIC each.
        let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let ip = Ipv4Addr::new(10, 20, 30, 5);
        n.check_nic("nics[1]", "lab", &a, Some(ip)).unwrap();
        n.fix("lab", &a, ip).unwrap();
        assert_eq!(n.address("lab", &a), Some(ip));
        let e = n.check_nic("nics[1]", "lab", &b, Some(ip)).unwrap_err();
        assert!(e.message.contains("already the address of another NIC"), "{}", e.message);
        for bad_ip in [[10, 20, 31, 5], [10, 20, 30, 1], [10, 20, 30, 255], [10, 20, 30, 0]] {
            let e = n.check_nic("nics[1]", "lab", &b, Some(bad_ip.into())).unwrap_err();
            assert!(e.message.contains("is not a guest address"), "{}", e.message);
        }
        assert!(n.check_nic("nics[1]", "nope", &b, None).unwrap_err().message.contains("no network \"nope\""));

        // In use: refused, kept; then removed, with its socket and leases.
        let e = n.remove("lab", &["m1".into()]).unwrap_err();
        assert!(e.message.contains("in use by machine(s) m1"), "{}", e.message);
        assert!(n.socket("lab").exists());
        assert!(n.remove("nope", &[]).unwrap_err().message.contains("no network"));

        // A new daemon sees the same networks and leases.
        drop(n);
        let n = Named::new(&home);
        assert_eq!(n.address("lab", &a), Some(ip));
        assert_eq!(n.list().unwrap().as_array().unwrap().len(), 3);
        n.remove("lab", &[]).unwrap();
        assert!(!n.socket("lab").exists() && !n.leases_file("lab").exists());
        let names: Vec<String> =
            n.list().unwrap().as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_string()).collect();
        assert_eq!(names, ["static", "vagrant"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
