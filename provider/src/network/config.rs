//! The shared network's settings: the bridge's name and its address and prefix (from
//! `XHYVE_BRIDGE` and `XHYVE_BRIDGE_ADDR`), and which names the kernel takes for interfaces.

use crate::nic::{IFNAME_MAX, TAP_PREFIX};
use std::net::Ipv4Addr;

/// Default bridge name and address (vmnet's shared-mode subnet).
pub const DEFAULT_BRIDGE: &str = "xhyve0";
pub const DEFAULT_ADDR: &str = "192.168.64.1/24";
/// The daemon's environment variables that configure the shared network.
pub const ENV_BRIDGE: &str = "XHYVE_BRIDGE";
pub const ENV_ADDR: &str = "XHYVE_BRIDGE_ADDR";

/// A DHCP-served subnet: the shared network's bridge (which has `gateway/prefix`), or a named
/// network's switch (`bridge` is then the network's name, for the log; `gateway` the address the
/// switch answers DHCP from). Guests get the other host addresses of the subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// Whether DHCP names the gateway as the guests' router: not on a named network, whose
    /// NIC is a guest's second one (its default route stays on the management NIC).
    pub router: bool,
    /// The addresses handed out to MACs without a fixed lease (both ends included); None: the
    /// whole subnet.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
}

impl Default for Config {
    fn default() -> Config {
        Config::parse(None, None).expect("the defaults are valid")
    }
}

/// A name the kernel takes for an interface: 1 to 15 characters, no `/`, whitespace, `:` or `,`.
pub fn check_ifname(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
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
        let c = Config { bridge, gateway, prefix, router: true, range: None };
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
    /// Addresses a MAC without a fixed lease may get: in the pool and in the DHCP range.
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        self.in_pool(ip) && self.range.is_none_or(|(lo, hi)| lo <= ip && ip <= hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn tap_names_are_interface_names() {
        assert!(check_ifname(&crate::nic::tap_name("3f9a1c07b2e4")).is_ok());
        assert!(check_ifname(&crate::nic::tap_name("3f9a1c07b2e4ffffffff")).is_ok());
    }
}
