//! `xhyve --features`: one JSON line saying what this `xhyve` build supports, so the provider
//! need not scrape `-h` text. Fields only ever get added; a reader ignores what it does not know
//! and takes a missing field as "not supported".

use serde::{Deserialize, Serialize};

/// The flag that asks for the line.
pub const FLAG: &str = "--features";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Features {
    /// The VMM's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// PCI emulations `-s SLOT,EMUL` accepts (`hostbridge`, `virtio-blk`, ...).
    pub pci: Vec<String>,
    /// Backends of `-s N,virtio-net,BACKEND` (`user`, ...), besides `virtio-tap`.
    pub net_backends: Vec<String>,
    /// Boot methods of `-f METHOD,...` (`kexec`, ...).
    pub boot: Vec<String>,
    /// `--control PATH` (pause, resume, save, quit) and `--restore PATH`.
    pub snapshots: bool,
    /// Formats of `-s N,virtio-blk,PATH,format=F` (`raw`, `qcow2`).
    pub disk_formats: Vec<String>,
    /// Kernel parameters a Linux guest needs on this host (the nested `kvm_pvm` host's
    /// work-arounds with the vCPUs' TSC rate as `tsc_early_khz`; none on plain KVM). `-f kexec`
    /// adds them itself; a guest booted through firmware gets only what its own boot entry says.
    pub guest_kernel_params: Vec<String>,
}

impl Features {
    pub fn has_pci(&self, emul: &str) -> bool {
        self.pci.iter().any(|e| e == emul)
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("plain strings serialise")
    }

    /// Parses the first line of `xhyve --features`'s output.
    pub fn from_output(out: &str) -> Result<Features, String> {
        let line = out.lines().next().unwrap_or_default();
        serde_json::from_str(line).map_err(|e| format!("not a --features line ({e}): {line:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_fields() {
        let f = Features {
            version: "0.1.0".into(),
            pci: vec!["hostbridge".into(), "virtio-blk".into()],
            net_backends: vec!["user".into()],
            boot: vec!["kexec".into()],
            snapshots: true,
            disk_formats: vec!["raw".into(), "qcow2".into()],
            guest_kernel_params: vec!["noxsave".into()],
        };
        assert_eq!(Features::from_output(&(f.to_line() + "\n")).unwrap(), f);
        let newer = r#"{"version":"9","pci":["virtio-blk"],"migration":true}"#;
        let g = Features::from_output(newer).unwrap();
        assert!(g.has_pci("virtio-blk") && !g.has_pci("lpc") && g.boot.is_empty());
        assert!(!g.snapshots && g.disk_formats.is_empty(), "missing fields: not supported");
        assert!(Features::from_output("usage: xhyve ...").is_err());
    }
}
