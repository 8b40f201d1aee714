//! The bridge and the machines' TAP devices, made with iproute2's `ip`.
//!
//! Why `ip` and not netlink from Rust: the daemon is synchronous (threads, no async runtime), and
//! the netlink crates are either async (`rtnetlink` needs tokio) or need the messages built by
//! hand (`neli`); `ip` is on every Linux that has bridges, does each step in one command the
//! administrator can rerun, and its error messages are the ones people know. A few runs per
//! `machine.start` cost nothing next to booting a guest.

use super::config::{check_ifname, Config};
use std::path::Path;
use std::process::{Command, Stdio};

fn sys(name: &str) -> std::path::PathBuf {
    Path::new("/sys/class/net").join(name)
}

/// True when the interface exists (in the daemon's network namespace).
pub fn exists(name: &str) -> bool {
    check_ifname(name).is_ok() && sys(name).exists()
}

pub fn ifindex(name: &str) -> Option<u32> {
    std::fs::read_to_string(sys(name).join("ifindex")).ok()?.trim().parse().ok()
}

/// Runs `ip ARGS`; Err has the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            "network mode shared needs iproute2's `ip` command on the daemon's PATH (apt-get install iproute2)"
                .to_string()
        } else {
            format!("cannot run ip: {e}")
        }
    })?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr);
    Err(format!("`ip {}` failed: {}", args.join(" "), msg.trim().trim_start_matches("RTNETLINK answers: ")))
}

/// The bridge, with its address, up. Idempotent: an existing bridge is kept (its other
/// addresses too); an interface of that name that is not a bridge is an error.
pub fn ensure_bridge(cfg: &Config) -> Result<(), String> {
    let br = cfg.bridge.as_str();
    check_ifname(br)?;
    if !sys(br).exists() {
        // forward_delay 0: the TAP ports forward at once (no STP on this bridge).
        if let Err(e) = ip(&["link", "add", "name", br, "type", "bridge", "forward_delay", "0"]) {
            // Someone else may have made it meanwhile.
            if !sys(br).exists() {
                return Err(format!("cannot make the bridge {br}: {e}"));
            }
        }
    }
    if !sys(br).join("bridge").exists() {
        return Err(format!(
            "{br} exists and is not a bridge: set XHYVE_BRIDGE to another name for the shared network"
        ));
    }
    ip(&["addr", "replace", &cfg.cidr(), "dev", br])
        .map_err(|e| format!("cannot give the bridge {br} the address {}: {e}", cfg.cidr()))?;
    ip(&["link", "set", "dev", br, "up"]).map_err(|e| format!("cannot bring {br} up: {e}"))
}

/// A new TAP device `name` on the bridge, up (an old one of the same name, left by a run that
/// was not cleaned up, is replaced). On error nothing is left.
pub fn create_tap(name: &str, bridge: &str) -> Result<(), String> {
    check_ifname(name)?;
    if sys(name).exists() {
        delete_link(name)?;
    }
    ip(&["tuntap", "add", "dev", name, "mode", "tap"])
        .map_err(|e| format!("cannot make the TAP device {name}: {e}"))?;
    if let Err(e) = ip(&["link", "set", "dev", name, "master", bridge, "up"]) {
        let _ = delete_link(name);
        return Err(format!("cannot put the TAP device {name} on {bridge}: {e}"));
    }
    Ok(())
}

/// Deletes an interface; one that does not exist is not an error.
pub fn delete_link(name: &str) -> Result<(), String> {
    if !exists(name) {
        return Ok(());
    }
    match ip(&["link", "del", "dev", name]) {
        Err(_) if !sys(name).exists() => Ok(()),
        r => r.map_err(|e| format!("cannot delete {name}: {e}")),
    }
}
