//! What the VM is made of: the machine's and each device's configuration, as `cli.rs` fills it
//! from bhyve's flags and the builder and the devices read it. Each device's option parsing
//! (the CONF of `-s SLOT,EMUL,CONF`) lives with its type, and checks what can fail before the
//! VM exists (an image that cannot be opened, a missing TAP or passt).

mod block;
mod boot;
mod console;
mod net;
mod vsock;

use uuid::Uuid;

pub use block::BlockConfig;
pub use boot::{check_readable, Boot, Bootrom, Kexec};
pub use console::ConsoleConfig;
pub use net::{BackendConfig, NetConfig};
pub use vsock::VsockConfig;

/// PCI emulations this build knows; `-s` with anything else is an error naming these.
pub const PCI_EMULATIONS: &[&str] = &[
    "hostbridge",
    "amd_hostbridge",
    "lpc",
    "virtio-blk",
    "virtio-rnd",
    "virtio-console",
    "virtio-vsock",
    "virtio-net",
    "virtio-tap",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub mem_bytes: u64,
    pub cpus: u8,
    pub acpi: bool,
    pub uuid: Option<Uuid>,
    pub com1: Option<ConsoleTarget>,
    pub com2: Option<ConsoleTarget>,
    pub slots: Vec<PciSlot>,
    pub boot: Boot,
    pub rtc_utc: bool,
    pub ignore_msrs: bool,
    pub verbose: bool,
    /// `--control PATH`: the control socket.
    pub control: Option<std::path::PathBuf>,
    /// `--restore PATH`: start from this snapshot.
    pub restore: Option<std::path::PathBuf>,
}

/// Where a console's output goes and its input comes from (`-l` and `virtio-console`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleTarget {
    Stdio,
    AutoPty,
    Log(std::path::PathBuf),
}

impl std::fmt::Display for ConsoleTarget {
    /// As on the command line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleTarget::Stdio => write!(f, "stdio"),
            ConsoleTarget::AutoPty => write!(f, "autopty"),
            ConsoleTarget::Log(path) => write!(f, "log={}", path.display()),
        }
    }
}

impl ConsoleTarget {
    /// `stdio`, `autopty` or `log=PATH`; None for anything else.
    pub fn parse(s: &str) -> Option<ConsoleTarget> {
        match s {
            "stdio" => Some(ConsoleTarget::Stdio),
            "autopty" => Some(ConsoleTarget::AutoPty),
            _ => s.strip_prefix("log=").filter(|p| !p.is_empty()).map(|p| ConsoleTarget::Log(p.into())),
        }
    }
}

/// A PCI function: `-s SLOT[:FUNC],EMUL[,CONF]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciSlot {
    pub slot: u8,
    pub func: u8,
    pub device: DeviceConfig,
}

/// A PCI function's emulation and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceConfig {
    HostBridge,
    AmdHostBridge,
    Lpc,
    Block(BlockConfig),
    Rng,
    Console(ConsoleConfig),
    Vsock(VsockConfig),
    Net(NetConfig),
}

impl DeviceConfig {
    /// Parses `EMUL[,CONF]` and checks it against the host.
    pub fn parse(emul: &str, conf: Option<&str>) -> Result<DeviceConfig, String> {
        Ok(match emul {
            "hostbridge" => DeviceConfig::HostBridge,
            "amd_hostbridge" => DeviceConfig::AmdHostBridge,
            "lpc" => DeviceConfig::Lpc,
            "virtio-blk" => DeviceConfig::Block(BlockConfig::parse(conf)?),
            "virtio-rnd" => match conf {
                None | Some("") => DeviceConfig::Rng,
                Some(c) => return Err(format!("unknown option '{c}' (virtio-rnd takes none)")),
            },
            "virtio-console" => DeviceConfig::Console(ConsoleConfig::parse(conf)?),
            "virtio-vsock" => DeviceConfig::Vsock(VsockConfig::parse(conf)?),
            "virtio-net" | "virtio-tap" => DeviceConfig::Net(NetConfig::parse(emul, conf)?),
            _ => return Err(format!("unknown device '{emul}' (valid: {})", PCI_EMULATIONS.join(", "))),
        })
    }

    /// The emulation's name on the command line.
    pub fn emulation(&self) -> &'static str {
        match self {
            DeviceConfig::HostBridge => "hostbridge",
            DeviceConfig::AmdHostBridge => "amd_hostbridge",
            DeviceConfig::Lpc => "lpc",
            DeviceConfig::Block(_) => "virtio-blk",
            DeviceConfig::Rng => "virtio-rnd",
            DeviceConfig::Console(_) => "virtio-console",
            DeviceConfig::Vsock(_) => "virtio-vsock",
            DeviceConfig::Net(NetConfig { backend: BackendConfig::Tap(_), .. }) => "virtio-tap",
            DeviceConfig::Net(_) => "virtio-net",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_targets_and_emulation_names() {
        assert_eq!(ConsoleTarget::parse("stdio"), Some(ConsoleTarget::Stdio));
        assert_eq!(ConsoleTarget::parse("log=/x"), Some(ConsoleTarget::Log("/x".into())));
        assert_eq!(ConsoleTarget::parse("log="), None);
        assert_eq!(ConsoleTarget::parse("tcp"), None);
        for emul in ["hostbridge", "amd_hostbridge", "lpc", "virtio-rnd"] {
            assert_eq!(DeviceConfig::parse(emul, None).unwrap().emulation(), emul);
        }
        assert!(DeviceConfig::parse("floppy", None).unwrap_err().contains("valid: hostbridge"));
    }
}
