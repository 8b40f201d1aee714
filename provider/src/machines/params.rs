//! The params of the `machine.*` methods, and the checks and defaults that turn the loosely
//! typed ones (sizes given as numbers or strings, the network as a string or an object) into
//! values the record keeps. Errors are the text after `invalid params: FIELD: `.

use super::record::{Firmware, ForwardedPort, Network, NetworkMode, PrivateNic, Protocol};
use crate::error::{Error, Result};
use serde::Deserialize;
use serde_json::Value;
use std::net::Ipv4Addr;
use xhyve_contract::random;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    #[serde(rename = "box")]
    pub bx: Option<Value>,
    /// Without a box: the kernel and initrd to boot (copied into the machine).
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    /// Grows the first disk's copy to this size.
    pub disk_size: Option<Value>,
    pub name: String,
    pub uuid: Option<String>,
    pub cpus: Option<u32>,
    pub memory: Option<Value>,
    pub cmdline: Option<String>,
    /// Overrides the box's: `kexec` needs a kernel, `efi` a first disk the firmware boots.
    pub firmware: Option<Firmware>,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    pub network: Option<Value>,
    /// The NICs in order: the first is what `network` takes (the management NIC), the others
    /// `{network: NAME, ip?: IPV4}` on named networks.
    pub nics: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub size: Option<Value>,
    pub path: Option<String>,
    pub copy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdParams {
    pub id: String,
}

/// `machine.start`'s params: `forwarded_ports`, when given, replace the machine's (a Vagrant
/// plugin passes them after Vagrant moved a taken host port elsewhere, `auto_correct`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartParams {
    pub id: String,
    pub forwarded_ports: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotParams {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    pub id: String,
    #[serde(default)]
    pub force: bool,
    pub timeout: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyParams {
    pub id: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    pub id: String,
    pub timeout: Option<f64>,
    /// The private keys to log in with, tried in order (default: the insecure key). Vagrant
    /// passes the key it put in the guest in place of the insecure one (`insert_key`).
    pub private_key_path: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    pub id: String,
    pub command: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageParams {
    pub id: String,
    /// Absolute path of the `.box` to write.
    pub output: String,
    /// Replace `output` if it exists.
    #[serde(default)]
    pub force: bool,
    /// Absolute path of a Vagrantfile to ship instead of the box's own.
    pub vagrantfile: Option<String>,
}

/// A random (version 4) UUID.
pub fn new_uuid() -> Result<String> {
    let b = random::bytes().map_err(Error::internal)?;
    Ok(uuid::Builder::from_random_bytes(b).into_uuid().to_string())
}

/// `8-4-4-4-12` hex digits; returned in lower case.
pub fn check_uuid(u: &str) -> std::result::Result<String, String> {
    let parts: Vec<&str> = u.split('-').collect();
    let ok = parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(u.to_ascii_lowercase())
    } else {
        Err(format!("{u:?} is not a UUID (e.g. 8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01)"))
    }
}

/// `network`: `"user"` (default), `"shared"`, `"none"`, or `{mode, forwarded_ports}`; `start`
/// turns mode `user` into xhyve's user-mode network device with the SSH and forwarded ports.
pub fn parse_network(v: Option<&Value>) -> std::result::Result<Network, String> {
    let (mode, ports) = match v {
        None | Some(Value::Null) => (None, Vec::new()),
        Some(Value::String(m)) => (Some(m.as_str()), Vec::new()),
        Some(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| !["mode", "forwarded_ports"].contains(&k.as_str())) {
                return Err(format!("unknown field {k:?} (mode, forwarded_ports)"));
            }
            let mode = match o.get("mode") {
                None => None,
                Some(Value::String(m)) => Some(m.as_str()),
                Some(other) => return Err(format!("mode: {other} is not a string")),
            };
            let ports = match o.get("forwarded_ports") {
                None => Vec::new(),
                Some(v) => parse_forwarded_ports(v).map_err(|e| format!("forwarded_ports: {e}"))?,
            };
            (mode, ports)
        }
        Some(other) => return Err(format!("{other} is not a network mode (user, shared, none)")),
    };
    let mode = match mode {
        None => NetworkMode::default(),
        Some(m) => NetworkMode::parse(m).ok_or_else(|| format!("mode {m:?} is not one of user, shared, none"))?,
    };
    Ok(Network { mode, forwarded_ports: ports, nics: Vec::new() })
}

/// `network` and `nics` (at most one of them): the management NIC and those on named networks.
/// Errors name their field.
pub fn parse_nics(network: Option<&Value>, nics: Option<&[Value]>) -> std::result::Result<Network, (String, String)> {
    let Some(nics) = nics else {
        return parse_network(network).map_err(|e| ("network".into(), e));
    };
    if network.is_some() {
        return Err(("nics".into(), "give network or nics, not both (nics[0] is the management NIC)".into()));
    }
    let Some((first, rest)) = nics.split_first() else {
        return Err(("nics".into(), "is empty: nics[0] is the management NIC (e.g. \"user\")".into()));
    };
    let mut net = parse_network(Some(first)).map_err(|e| ("nics[0]".into(), e))?;
    for (i, v) in rest.iter().enumerate() {
        let field = format!("nics[{}]", i + 1);
        let nic = private_nic(v).ok_or_else(|| {
            (field.clone(), format!("{v} is not {{network: NAME, ip?: IPV4}} (a NIC on a named network)"))
        })?;
        if let Some(ip) = nic.ip {
            if net.nics.iter().any(|n| n.network == nic.network && n.ip == Some(ip)) {
                return Err((field, format!("{ip} is given twice on network {:?}", nic.network)));
            }
        }
        net.nics.push(nic);
    }
    Ok(net)
}

fn private_nic(v: &Value) -> Option<PrivateNic> {
    let o = v.as_object()?;
    if !o.keys().all(|k| ["network", "ip"].contains(&k.as_str())) {
        return None;
    }
    let network = o.get("network")?.as_str()?.to_string();
    let ip = match o.get("ip") {
        None | Some(Value::Null) => None,
        Some(ip) => Some(ip.as_str()?.parse().ok()?),
    };
    Some(PrivateNic { network, ip })
}

/// `{guest, host?, protocol?, host_ip?}` with the defaults filled in (the guest's port, tcp,
/// 127.0.0.1); None when it is not that.
/// `[{guest, host?, protocol?, host_ip?}]`, the defaults filled in.
pub fn parse_forwarded_ports(v: &Value) -> std::result::Result<Vec<ForwardedPort>, String> {
    let Value::Array(a) = v else { return Err(format!("{v} is not an array")) };
    a.iter()
        .map(|p| {
            forwarded_port(p).ok_or_else(|| {
                format!("{p} is not {{guest: PORT, host?: PORT, protocol?: \"tcp\"|\"udp\", host_ip?: IPV4}}")
            })
        })
        .collect()
}

fn forwarded_port(p: &Value) -> Option<ForwardedPort> {
    let o = p.as_object()?;
    if !o.keys().all(|k| ["guest", "host", "protocol", "host_ip"].contains(&k.as_str())) {
        return None;
    }
    let port = |v: &Value| v.as_u64().and_then(|n| u16::try_from(n).ok());
    let guest = o.get("guest").and_then(port).filter(|g| *g != 0)?;
    let host = match o.get("host") {
        None => guest,
        Some(h) => port(h)?,
    };
    let protocol = match o.get("protocol").map(Value::as_str) {
        None => Protocol::Tcp,
        Some(Some("tcp")) => Protocol::Tcp,
        Some(Some("udp")) => Protocol::Udp,
        Some(_) => return None,
    };
    let host_ip = match o.get("host_ip") {
        None => Ipv4Addr::LOCALHOST,
        Some(ip) => ip.as_str()?.parse().ok()?,
    };
    Some(ForwardedPort { guest, host, protocol, host_ip })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uuids() {
        let u = new_uuid().unwrap();
        assert_eq!(check_uuid(&u).unwrap(), u);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uuid().unwrap());
        assert_eq!(check_uuid("8C4D1B6A-29A3-4A6E-9F29-6E6F1E8E1F01").unwrap(), "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01");
        for bad in ["", "x", "8c4d1b6a29a34a6e9f296e6f1e8e1f01", "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f0g"] {
            assert!(check_uuid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nics() {
        let n = parse_nics(
            None,
            Some(&[json!("user"), json!({"network": "lab", "ip": "10.0.0.5"}), json!({"network": "lab"})]),
        )
        .unwrap();
        assert_eq!(n.mode, NetworkMode::User);
        assert_eq!(n.nics[0], PrivateNic { network: "lab".into(), ip: Some(Ipv4Addr::new(10, 0, 0, 5)) });
        assert_eq!(n.nics[1].ip, None);
        assert_eq!(parse_nics(Some(&json!("shared")), None).unwrap().mode, NetworkMode::Shared);
        for (net, nics, field, want) in [
            (Some(json!("user")), Some(vec![json!("user")]), "nics", "not both"),
            (None, Some(vec![]), "nics", "is empty"),
            (None, Some(vec![json!("bridged")]), "nics[0]", "is not one of user, shared, none"),
            (
                None,
                Some(vec![json!("user"), json!({"network": "lab", "ip": "10.0.0.300"})]),
                "nics[1]",
                "is not {network",
            ),
            (None, Some(vec![json!("user"), json!({"name": "lab"})]), "nics[1]", "is not {network"),
            (
                None,
                Some(vec![
                    json!("user"),
                    json!({"network": "lab", "ip": "10.0.0.5"}),
                    json!({"network": "lab", "ip": "10.0.0.5"}),
                ]),
                "nics[2]",
                "given twice",
            ),
        ] {
            let (f, e) = parse_nics(net.as_ref(), nics.as_deref()).unwrap_err();
            assert_eq!(f, field);
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn network() {
        assert_eq!(parse_network(None).unwrap().mode, NetworkMode::User);
        assert_eq!(parse_network(Some(&json!("shared"))).unwrap().mode, NetworkMode::Shared);
        assert!(parse_network(Some(&json!("bridged"))).is_err());
        let n = json!({"mode": "user", "forwarded_ports": [{"guest": 80, "host": 8080}]});
        assert_eq!(parse_network(Some(&n)).unwrap().forwarded_ports[0].host, 8080);
        assert!(parse_network(Some(&json!({"forwarded_ports": [{"guest": 0}]}))).is_err());
        // Defaults filled in: the guest's port on 127.0.0.1, tcp.
        let n = json!({"forwarded_ports": [{"guest": 53, "protocol": "udp"}, {"guest": 80, "host_ip": "0.0.0.0"}]});
        let ports = parse_network(Some(&n)).unwrap().forwarded_ports;
        assert_eq!(
            ports[0],
            ForwardedPort { guest: 53, host: 53, protocol: Protocol::Udp, host_ip: Ipv4Addr::LOCALHOST }
        );
        assert_eq!((ports[1].host, ports[1].protocol, ports[1].host_ip), (80, Protocol::Tcp, Ipv4Addr::UNSPECIFIED));
        for bad in [
            json!({"guest": 70000}),
            json!({"guest": 80, "host": -1}),
            json!({"guest": 80, "host": null}),
            json!({"guest": 80, "protocol": "sctp"}),
            json!({"guest": 80, "host_ip": "localhost"}),
            json!({"guest": 80, "port": 1}),
            json!(80),
        ] {
            let e = parse_network(Some(&json!({"forwarded_ports": [bad]}))).unwrap_err();
            assert!(e.starts_with(&format!("forwarded_ports: {bad} is not {{guest: PORT")), "{e}");
        }
    }
}
