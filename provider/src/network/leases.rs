//! `$XHYVE_HOME/network/leases.json`: the one address of each MAC on the shared network.
//!
//! An address is allocated at a MAC's first DHCPDISCOVER (or REQUEST) and stays the MAC's for
//! good: every later boot gets it again, whatever the guest asks for; it goes back to the pool
//! only when the machine is destroyed, or when the guest declines it (DHCPDECLINE: something
//! else uses it). The first choice for a new MAC is a slot picked by a hash of the MAC, so even a
//! lost leases file most likely gives the same addresses again; taken slots move to the next
//! free one. The file is rewritten atomically (`state::write_json_atomic`) on every change.

use super::config::Config;
use crate::logger::log;
use crate::state;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use xhyve_contract::mac::format_mac;

use crate::nic::Mac;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
    /// When the address was allocated (seconds since the epoch).
    pub allocated_at: u64,
    /// The last DHCPACK of it; None while it was only offered.
    #[serde(default)]
    pub bound_at: Option<u64>,
    /// A static address (a named network's `ip`): never declined away, never moved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The bridge's address when the file was written, for people (`192.168.64.1/24`).
    subnet: String,
    leases: Vec<Lease>,
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

/// FNV-1a of the MAC: the new MAC's preferred slot in the pool.
fn slot(mac: &Mac, n: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in mac {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h % n
}

pub struct Leases {
    path: PathBuf,
    cfg: Config,
    by_mac: BTreeMap<Mac, Lease>,
    /// Addresses guests declined (in use by something else) since the daemon started.
    declined: HashSet<Ipv4Addr>,
    dirty: bool,
}

impl Leases {
    /// Reads the file (none yet: no leases). A file that cannot be parsed is an error, never
    /// silently replaced. Leases outside `cfg`'s subnet (it was changed) are dropped.
    pub fn load(path: &Path, cfg: &Config) -> Result<Leases, String> {
        let mut l = Leases {
            path: path.to_path_buf(),
            cfg: cfg.clone(),
            by_mac: BTreeMap::new(),
            declined: HashSet::new(),
            dirty: false,
        };
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(l),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let bad = |m: String| {
            format!("{} is not a valid leases file: {m} (fix it, or delete it to start over)", path.display())
        };
        let f: File = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let mut ips = HashSet::new();
        for lease in f.leases {
            let mac = parse_mac(&lease.mac).ok_or_else(|| bad(format!("{:?} is not a MAC address", lease.mac)))?;
            if !cfg.in_pool(lease.ip) {
                log(&format!(
                    "lease {} of {} is outside the shared network {}: dropped",
                    lease.ip,
                    lease.mac,
                    cfg.cidr()
                ));
                l.dirty = true;
                continue;
            }
            if !ips.insert(lease.ip) {
                return Err(bad(format!("{} is leased twice", lease.ip)));
            }
            let lease = Lease { mac: format_mac(&mac), ..lease };
            if l.by_mac.insert(mac, lease).is_some() {
                return Err(bad(format!("{} has two leases", format_mac(&mac))));
            }
        }
        Ok(l)
    }

    #[cfg(test)]
    pub fn get(&self, mac: &Mac) -> Option<&Lease> {
        self.by_mac.get(mac)
    }

    /// The MAC's address once a guest with it was given it (DHCPACK).
    pub fn bound(&self, mac: &Mac) -> Option<Ipv4Addr> {
        self.by_mac.get(mac).filter(|l| l.bound_at.is_some()).map(|l| l.ip)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    fn free_address(&self, mac: &Mac) -> Option<Ipv4Addr> {
        let used: HashSet<Ipv4Addr> = self.by_mac.values().map(|l| l.ip).chain(self.declined.iter().copied()).collect();
        let first = self.cfg.network() + 1;
        let n = u32::from(self.cfg.broadcast()) - first;
        let start = slot(mac, n);
        (0..n).map(|k| Ipv4Addr::from(first + (start + k) % n)).find(|ip| self.cfg.in_range(*ip) && !used.contains(ip))
    }

    /// The MAC's address: its lease, or a new one (None when the pool is exhausted).
    pub fn address_for(&mut self, mac: &Mac, now: u64) -> Option<Ipv4Addr> {
        if let Some(l) = self.by_mac.get(mac) {
            return Some(l.ip);
        }
        let ip = self.free_address(mac)?;
        self.by_mac.insert(*mac, Lease { mac: format_mac(mac), ip, allocated_at: now, bound_at: None, fixed: false });
        self.dirty = true;
        Some(ip)
    }

    #[cfg(test)]
    /// The MAC's address, fixed or allocated (whether or not a guest took it yet).
    pub fn address(&self, mac: &Mac) -> Option<Ipv4Addr> {
        self.by_mac.get(mac).map(|l| l.ip)
    }

    /// `[{mac, ip, fixed, bound}]` in MAC order, for network.list.
    pub fn list(&self) -> serde_json::Value {
        self.by_mac
            .values()
            .map(|l| serde_json::json!({"mac": l.mac, "ip": l.ip.to_string(), "fixed": l.fixed, "bound": l.bound_at.is_some()}))
            .collect()
    }

    /// Whose address `ip` is, if anyone's.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.by_mac.iter().find(|(_, l)| l.ip == ip).map(|(m, _)| *m)
    }

    /// Gives the MAC the static address `ip` (written at once); Err when it is not a guest
    /// address of the subnet or another MAC has it.
    pub fn fix(&mut self, mac: &Mac, ip: Ipv4Addr, now: u64) -> Result<(), String> {
        if !self.cfg.in_pool(ip) {
            return Err(format!(
                "{ip} is not a guest address of {} (its network and broadcast addresses and the gateway {} are not)",
                self.cfg.cidr(),
                self.cfg.gateway
            ));
        }
        if let Some(other) = self.holder(ip).filter(|m| m != mac) {
            return Err(format!("{ip} is already the address of {}", format_mac(&other)));
        }
        self.by_mac.insert(*mac, Lease { mac: format_mac(mac), ip, allocated_at: now, bound_at: None, fixed: true });
        self.dirty = true;
        self.flush().map_err(|e| format!("writing {}: {e}", self.path.display()))
    }

    /// Records a DHCPACK of the MAC's address.
    pub fn bind(&mut self, mac: &Mac, now: u64) {
        if let Some(l) = self.by_mac.get_mut(mac) {
            l.bound_at = Some(now);
            self.dirty = true;
        }
    }

    /// DHCPDECLINE: `ip` is used by something else; the MAC gets another address next time.
    pub fn decline(&mut self, mac: &Mac, ip: Ipv4Addr) -> bool {
        if self.by_mac.get(mac).is_some_and(|l| l.ip == ip && !l.fixed) {
            self.by_mac.remove(mac);
            self.declined.insert(ip);
            self.dirty = true;
            return true;
        }
        false
    }

    /// The machine is destroyed: its address goes back to the pool (written at once).
    pub fn remove(&mut self, mac: &Mac) -> io::Result<Option<Ipv4Addr>> {
        let ip = self.by_mac.remove(mac).map(|l| l.ip);
        if ip.is_some() {
            self.dirty = true;
        }
        self.flush()?;
        Ok(ip)
    }

    /// Writes the file (atomically) if anything changed since the last write.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let f = File { subnet: self.cfg.cidr(), leases: self.by_mac.values().cloned().collect() };
        state::write_json_atomic(&self.path, &f)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "xhyve-leases-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mac(i: u8) -> Mac {
        [0x02, 0, 0, 0, 0, i]
    }

    #[test]
    fn one_fixed_address_per_mac_persisted() {
        let dir = tempdir("fixed");
        let path = dir.join("network/leases.json");
        let cfg = Config::default();
        let mut l = Leases::load(&path, &cfg).unwrap();
        assert_eq!(l.len(), 0);
        let a = l.address_for(&mac(1), 10).unwrap();
        let b = l.address_for(&mac(2), 11).unwrap();
        assert_ne!(a, b);
        assert!(cfg.in_pool(a) && cfg.in_pool(b));
        assert_eq!(l.address_for(&mac(1), 12), Some(a), "the same address again");
        assert_eq!(l.bound(&mac(1)), None, "offered, not bound");
        l.bind(&mac(1), 13);
        assert_eq!(l.bound(&mac(1)), Some(a));
        l.flush().unwrap();
        // No temp file left; mode 0600.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["leases.json"]);

        // A new daemon reads them back.
        let mut l2 = Leases::load(&path, &cfg).unwrap();
        assert_eq!(l2.bound(&mac(1)), Some(a));
        assert_eq!(l2.get(&mac(2)).unwrap().ip, b);
        assert_eq!(l2.get(&mac(1)).unwrap().bound_at, Some(13));
        assert_eq!(l2.address_for(&mac(2), 20), Some(b));
        assert_eq!(l2.remove(&mac(2)).unwrap(), Some(b));
        assert_eq!(Leases::load(&path, &cfg).unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_lost_file_most_likely_gives_the_same_address() {
        let dir = tempdir("hash");
        let cfg = Config::default();
        let mut l1 = Leases::load(&dir.join("a.json"), &cfg).unwrap();
        let mut l2 = Leases::load(&dir.join("b.json"), &cfg).unwrap();
        let m = [0xda, 0xad, 0x9b, 0x42, 0x47, 0xcc];
        assert_eq!(l1.address_for(&m, 0), l2.address_for(&m, 0));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pool_exhaustion_and_decline() {
        let dir = tempdir("pool");
        // /29: .1 is the bridge, .2-.6 the guests (5).
        let cfg = Config::parse(None, Some("10.1.2.1/29")).unwrap();
        let mut l = Leases::load(&dir.join("l.json"), &cfg).unwrap();
        let mut got = HashSet::new();
        for i in 0..5 {
            let ip = l.address_for(&mac(i), 0).unwrap();
            assert!(cfg.in_pool(ip), "{ip}");
            assert!(got.insert(ip));
        }
        assert_eq!(l.address_for(&mac(9), 0), None, "exhausted");
        // A decline frees the MAC's lease, and the address is not offered again.
        let ip0 = l.get(&mac(0)).unwrap().ip;
        assert!(!l.decline(&mac(0), Ipv4Addr::new(10, 1, 2, 200)));
        assert!(l.decline(&mac(0), ip0));
        assert_eq!(l.address_for(&mac(0), 1), None, "only the declined one was free");
        l.remove(&mac(1)).unwrap();
        let ip = l.address_for(&mac(0), 2).unwrap();
        assert_ne!(ip, ip0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_are_refused_not_replaced() {
        let dir = tempdir("bad");
        let cfg = Config::default();
        let p = dir.join("leases.json");
        for (text, want) in [
            ("{", "is not a valid leases file"),
            (
                r#"{"subnet": "x", "leases": [{"mac": "zz", "ip": "192.168.64.2", "allocated_at": 0}]}"#,
                "is not a MAC address",
            ),
            (
                r#"{"subnet": "x", "leases": [{"mac": "02:00:00:00:00:01", "ip": "192.168.64.2", "allocated_at": 0},
                {"mac": "02:00:00:00:00:02", "ip": "192.168.64.2", "allocated_at": 0}]}"#,
                "leased twice",
            ),
            (
                r#"{"subnet": "x", "leases": [{"mac": "02:00:00:00:00:01", "ip": "192.168.64.2", "allocated_at": 0},
                {"mac": "02:00:00:00:00:01", "ip": "192.168.64.3", "allocated_at": 0}]}"#,
                "two leases",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = Leases::load(&p, &cfg).err().unwrap();
            assert!(e.contains(want) && e.contains("delete it"), "{e}");
            assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        }
        // Another subnet now: its leases are dropped (and the file rewritten on the next change).
        std::fs::write(&p, r#"{"subnet": "10.0.0.1/24", "leases": [{"mac": "02:00:00:00:00:01", "ip": "10.0.0.7", "allocated_at": 0, "bound_at": 1}]}"#).unwrap();
        let mut l = Leases::load(&p, &cfg).unwrap();
        assert_eq!(l.len(), 0);
        l.flush().unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("192.168.64.1/24"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
