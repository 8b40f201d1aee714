//! The params of the `machine.*` methods, and the checks and defaults that turn the loosely
//! typed ones (sizes given as numbers or strings, the network as a string or an object) into
//! values the record keeps. Errors are the text after `invalid params: FIELD: `.

use crate::error::{Error, Result};
use crate::size::parse_size;
use serde::Deserialize;
use serde_json::{json, Value};
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
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    pub network: Option<Value>,
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

/// Memory as xhyve's `-m` takes it, normalised to whole MiB: an integer (MiB) or a size string
/// (`512M`, `1G`, a bare number is MiB as for xhyve).
pub fn parse_memory(v: &Value) -> std::result::Result<String, String> {
    let bytes = match v {
        Value::Number(n) => {
            n.as_u64().and_then(|m| m.checked_mul(1 << 20)).ok_or(format!("{n} is not a whole number of MiB"))?
        }
        Value::String(s) if s.trim().bytes().all(|b| b.is_ascii_digit()) && !s.trim().is_empty() => {
            s.trim().parse::<u64>().ok().and_then(|m| m.checked_mul(1 << 20)).ok_or(format!("{s:?} is not a size"))?
        }
        Value::String(s) => {
            parse_size(s).ok_or(format!("{s:?} is not a size (e.g. \"512M\", \"2G\", or an integer of MiB)"))?
        }
        other => return Err(format!("{other} is not a size (e.g. \"512M\")")),
    };
    if bytes % (1 << 20) != 0 {
        return Err("memory must be a whole number of MiB".into());
    }
    let mib = bytes >> 20;
    if !(16..=1 << 20).contains(&mib) {
        return Err(format!("{mib} MiB is out of range (16M to 1T)"));
    }
    Ok(format!("{mib}M"))
}

pub fn parse_disk_size(v: &Value) -> std::result::Result<u64, String> {
    let n = match v {
        Value::Number(n) => n.as_u64().ok_or(format!("{n} is not a size in bytes"))?,
        Value::String(s) => parse_size(s).ok_or(format!("{s:?} is not a size (e.g. \"10G\")"))?,
        other => return Err(format!("{other} is not a size")),
    };
    if n == 0 || n % 512 != 0 {
        return Err(format!("{n} bytes: a disk is a positive multiple of 512 bytes"));
    }
    Ok(n)
}

/// `network`: `"user"` (default), `"shared"`, `"none"`, or `{mode, forwarded_ports}`; `start`
/// turns mode `user` into xhyve's user-mode network device with the SSH and forwarded ports.
pub fn parse_network(v: Option<&Value>) -> std::result::Result<Value, String> {
    let modes = ["user", "shared", "none"];
    let (mode, ports) = match v {
        None | Some(Value::Null) => ("user".to_string(), Vec::new()),
        Some(Value::String(m)) => (m.clone(), Vec::new()),
        Some(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| !["mode", "forwarded_ports"].contains(&k.as_str())) {
                return Err(format!("unknown field {k:?} (mode, forwarded_ports)"));
            }
            let mode = match o.get("mode") {
                None => "user".to_string(),
                Some(Value::String(m)) => m.clone(),
                Some(other) => return Err(format!("mode: {other} is not a string")),
            };
            let ports = match o.get("forwarded_ports") {
                None => Vec::new(),
                Some(Value::Array(a)) => a.clone(),
                Some(other) => return Err(format!("forwarded_ports: {other} is not an array")),
            };
            for p in &ports {
                let ok = p.as_object().is_some_and(|o| {
                    o.keys().all(|k| ["guest", "host", "protocol", "host_ip"].contains(&k.as_str()))
                        && o.get("guest").and_then(Value::as_u64).is_some_and(|g| (1..=65535).contains(&g))
                        && o.get("host").is_none_or(|h| h.as_u64().is_some_and(|h| h <= 65535))
                        && o.get("protocol").is_none_or(|p| p == "tcp" || p == "udp")
                        && o.get("host_ip")
                            .is_none_or(|ip| ip.as_str().is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()))
                });
                if !ok {
                    return Err(format!(
                        "forwarded_ports: {p} is not {{guest: PORT, host?: PORT, protocol?: \"tcp\"|\"udp\", host_ip?: IPV4}}"
                    ));
                }
            }
            (mode, ports)
        }
        Some(other) => return Err(format!("{other} is not a network mode (user, shared, none)")),
    };
    if !modes.contains(&mode.as_str()) {
        return Err(format!("mode {mode:?} is not one of user, shared, none"));
    }
    Ok(json!({"mode": mode, "forwarded_ports": ports}))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn memory_and_network() {
        assert_eq!(parse_memory(&json!("512M")).unwrap(), "512M");
        assert_eq!(parse_memory(&json!("1G")).unwrap(), "1024M");
        assert_eq!(parse_memory(&json!(300)).unwrap(), "300M");
        assert_eq!(parse_memory(&json!("300")).unwrap(), "300M");
        assert!(parse_memory(&json!("1K")).is_err());
        assert!(parse_memory(&json!("lots")).is_err());
        assert_eq!(parse_network(None).unwrap()["mode"], "user");
        assert_eq!(parse_network(Some(&json!("shared"))).unwrap()["mode"], "shared");
        assert!(parse_network(Some(&json!("bridged"))).is_err());
        let n = json!({"mode": "user", "forwarded_ports": [{"guest": 80, "host": 8080}]});
        assert_eq!(parse_network(Some(&n)).unwrap()["forwarded_ports"][0]["host"], 8080);
        assert!(parse_network(Some(&json!({"forwarded_ports": [{"guest": 0}]}))).is_err());
    }
}
