//! What the user-mode backends (`slirp`, `passt`) share: the slirp addressing convention and
//! QEMU's `hostfwd=` syntax.
//!
//! The addressing (guest 10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3) is the contract's
//! (`xhyve_contract::user_net`): the provider hands it to fast-started guests too.

use std::net::Ipv4Addr;
pub use xhyve_contract::user_net::{DNS, GATEWAY, GUEST_ADDR, PREFIX_LEN};

/// The link MTU of the user-mode network: the device offers no mergeable or big RX buffers.
pub const MTU: u32 = 1500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFwd {
    pub udp: bool,
    /// None: every host address.
    pub host_addr: Option<Ipv4Addr>,
    pub host_port: u16,
    pub guest_port: u16,
}

/// `tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT` (QEMU's syntax; `udp:` too). The guest
/// address, when given, must be the guest's (10.0.2.15).
pub fn parse_hostfwd(s: &str) -> Result<HostFwd, String> {
    let bad = || format!("hostfwd={s}: expected tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT");
    let (proto, rest) = s.split_once(':').ok_or_else(bad)?;
    let udp = match proto {
        "tcp" | "" => false,
        "udp" => true,
        _ => return Err(format!("hostfwd={s}: protocol '{proto}' (tcp or udp)")),
    };
    let (host, guest) = rest.split_once('-').ok_or_else(bad)?;
    let (haddr, hport) = host.rsplit_once(':').ok_or_else(bad)?;
    let (gaddr, gport) = guest.rsplit_once(':').ok_or_else(bad)?;
    let port =
        |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("hostfwd={s}: bad port '{p}'"));
    let host_addr = match haddr {
        "" => None,
        a => Some(a.parse::<Ipv4Addr>().map_err(|_| format!("hostfwd={s}: bad host address '{a}'"))?),
    };
    if !gaddr.is_empty() && gaddr.parse::<Ipv4Addr>().ok() != Some(GUEST_ADDR) {
        return Err(format!("hostfwd={s}: the guest address is {GUEST_ADDR}"));
    }
    Ok(HostFwd { udp, host_addr, host_port: port(hport)?, guest_port: port(gport)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfwd_syntax() {
        let f = parse_hostfwd("tcp:127.0.0.1:2222-:22").unwrap();
        assert_eq!(f, HostFwd { udp: false, host_addr: Some(Ipv4Addr::LOCALHOST), host_port: 2222, guest_port: 22 });
        let f = parse_hostfwd("udp::5353-10.0.2.15:53").unwrap();
        assert_eq!(f, HostFwd { udp: true, host_addr: None, host_port: 5353, guest_port: 53 });
        for bad in [
            "tcp:127.0.0.1:2222",
            "sctp::1-:2",
            "tcp::0-:22",
            "tcp::70000-:22",
            "tcp:x:1-:2",
            "tcp::1-10.0.2.9:2",
            "22",
        ] {
            assert!(parse_hostfwd(bad).is_err(), "{bad}");
        }
    }
}
