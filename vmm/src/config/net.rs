//! `-s SLOT,virtio-net,BACKEND[,...][,mac=MAC]` and `-s SLOT,virtio-tap,TAPNAME[,mac=MAC]`.
//! BACKEND: `user[,hostfwd=...]...` (libslirp), `passt[,hostfwd=...]...` (passt),
//! `socket=PATH` (a switch port).

use std::path::PathBuf;

use crate::net::user::{parse_hostfwd, HostFwd};
use crate::net::{passt, socket, tap};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    Tap(String),
    /// User-mode networking through libslirp.
    User(Vec<HostFwd>),
    /// User-mode networking through passt.
    Passt(Vec<HostFwd>),
    /// A port of the switch listening on this unix socket.
    Socket(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub backend: BackendConfig,
    pub mac: Option<[u8; 6]>,
}

const BACKENDS: &str = "user, passt or socket=PATH; for a TAP use virtio-tap,TAPNAME";

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<_> = s.split([':', '-']).collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("mac={s}: expected six hex bytes (02:xx:xx:xx:xx:xx)"));
    }
    for (m, p) in mac.iter_mut().zip(&parts) {
        *m = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .ok_or_else(|| format!("mac={s}: bad byte '{p}'"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("mac={s}: a multicast address"));
    }
    Ok(mac)
}

impl NetConfig {
    /// `-s` CONF of `virtio-tap` and `virtio-net`. Checks what can fail before the VM exists:
    /// the TAP exists, passt is installed, the switch's socket is there.
    pub fn parse(emul: &str, conf: Option<&str>) -> Result<NetConfig, String> {
        let mut fields = conf.unwrap_or("").split(',');
        let first = fields.next().unwrap_or("");
        let backend = match emul {
            "virtio-tap" => {
                if first.is_empty() {
                    return Err("missing TAP device name".into());
                }
                tap::check_name(first)?;
                BackendConfig::Tap(first.to_string())
            }
            _ => match first.split_once('=') {
                None if first == "user" => BackendConfig::User(Vec::new()),
                None if first == "passt" => BackendConfig::Passt(Vec::new()),
                Some(("socket", path)) if !path.is_empty() => BackendConfig::Socket(PathBuf::from(path)),
                _ if first.is_empty() => return Err(format!("missing backend ({BACKENDS})")),
                _ => return Err(format!("unknown backend '{first}' ({BACKENDS})")),
            },
        };
        let mut cfg = NetConfig { backend, mac: None };
        for f in fields {
            match (f.split_once('='), &mut cfg.backend) {
                (Some(("mac", m)), _) => cfg.mac = Some(parse_mac(m)?),
                (Some(("hostfwd", h)), BackendConfig::User(fwds) | BackendConfig::Passt(fwds)) => {
                    fwds.push(parse_hostfwd(h)?)
                }
                (_, backend) => {
                    let valid = match backend {
                        BackendConfig::User(_) | BackendConfig::Passt(_) => "hostfwd, mac",
                        _ => "mac",
                    };
                    return Err(format!("unknown option '{f}' (valid: {valid})"));
                }
            }
        }
        match &cfg.backend {
            BackendConfig::User(fwds) | BackendConfig::Passt(fwds) => {
                if matches!(cfg.backend, BackendConfig::Passt(_)) {
                    passt::find_passt()?;
                }
                for (i, a) in fwds.iter().enumerate() {
                    if fwds[..i].iter().any(|b| b.udp == a.udp && b.host_port == a.host_port) {
                        return Err(format!("host port {} forwarded twice", a.host_port));
                    }
                }
            }
            BackendConfig::Socket(path) => socket::check_path(path)?,
            BackendConfig::Tap(_) => {}
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_parsing() {
        assert!(NetConfig::parse("virtio-tap", None).is_err());
        assert!(NetConfig::parse("virtio-tap", Some("no-such-tap0")).unwrap_err().contains("does not exist"));
        assert!(NetConfig::parse("virtio-net", None).unwrap_err().contains("missing backend"));
        assert!(NetConfig::parse("virtio-net", Some("vmnet")).unwrap_err().contains("unknown backend"));
        assert!(NetConfig::parse("virtio-net", Some("socket=")).unwrap_err().contains("unknown backend"));
        assert!(NetConfig::parse("virtio-net", Some("user,fast")).unwrap_err().contains("unknown option 'fast'"));
        assert!(NetConfig::parse("virtio-net", Some("user,mac=01:00:00:00:00:00")).unwrap_err().contains("multicast"));
        assert!(NetConfig::parse("virtio-net", Some("user,mac=02:00:00:00:00")).is_err());
        assert_eq!(parse_mac("02:AB:00:01:02:03").unwrap(), [2, 0xab, 0, 1, 2, 3]);
        let c =
            NetConfig::parse("virtio-net", Some("user,hostfwd=tcp:127.0.0.1:2222-:22,mac=02:00:00:00:00:01")).unwrap();
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 1]));
        assert!(matches!(&c.backend, BackendConfig::User(f) if f.len() == 1));
        let e = NetConfig::parse("virtio-net", Some("user,hostfwd=tcp::22-:22,hostfwd=tcp:127.0.0.1:22-:23"));
        assert!(e.unwrap_err().contains("twice"));
        if passt::find_passt().is_ok() {
            let c = NetConfig::parse("virtio-net", Some("passt,hostfwd=udp::53-:53")).unwrap();
            assert!(matches!(&c.backend, BackendConfig::Passt(f) if f.len() == 1 && f[0].udp));
        }
        let e = NetConfig::parse("virtio-net", Some("socket=/nonexistent/switch.sock"));
        assert!(e.unwrap_err().contains("is the switch running?"));
        let e = NetConfig::parse("virtio-net", Some("socket=/dev/null,hostfwd=tcp::1-:2"));
        assert!(e.unwrap_err().contains("unknown option 'hostfwd=tcp::1-:2' (valid: mac)"));
    }
}
