//! `-f kexec,KERNEL,INITRD,CMDLINE` or `-f|-l bootrom,FIRMWARE[,VARS]`: how the guest starts.

use std::path::PathBuf;

use crate::os_error::strip_os_error;

/// How the guest starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    Kexec(Kexec),
    Bootrom(Bootrom),
}

impl Boot {
    /// The value of `-f`: `kexec,...` or `bootrom,...`.
    pub fn parse(s: &str) -> Result<Boot, String> {
        let (method, rest) = s.split_once(',').unwrap_or((s, ""));
        match method {
            "kexec" => Kexec::parse(rest).map(Boot::Kexec),
            "bootrom" => Bootrom::parse(rest).map(Boot::Bootrom),
            other => Err(format!("unknown boot method '{other}' (kexec, bootrom)")),
        }
    }
}

/// Direct Linux boot: the VMM loads the kernel (bzImage or vmlinux) and the initrd itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kexec {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

impl Kexec {
    /// `KERNEL,INITRD,CMDLINE` after `kexec,`; the kernel (and a non-empty initrd) must be
    /// readable files.
    fn parse(s: &str) -> Result<Kexec, String> {
        let mut parts = s.splitn(3, ',');
        let kernel = parts.next().filter(|k| !k.is_empty()).ok_or("missing KERNEL")?;
        check_readable(kernel).map_err(|e| format!("kernel {kernel}: {e}"))?;
        let initrd = match parts.next() {
            None | Some("") => None,
            Some(i) => {
                check_readable(i).map_err(|e| format!("initrd {i}: {e}"))?;
                Some(PathBuf::from(i))
            }
        };
        let cmdline = parts.next().unwrap_or("").trim_matches('"').to_string();
        Ok(Kexec { kernel: kernel.into(), initrd, cmdline })
    }
}

/// UEFI firmware and the file that keeps its variables (`crate::firmware` checks both images).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootrom {
    pub firmware: PathBuf,
    pub vars: Option<PathBuf>,
}

impl Bootrom {
    /// `FIRMWARE[,VARS]` after `bootrom,`.
    pub fn parse(s: &str) -> Result<Bootrom, String> {
        let mut parts = s.split(',');
        let firmware = parts.next().filter(|f| !f.is_empty()).ok_or("missing FIRMWARE (e.g. OVMF_CODE_4M.fd)")?;
        let vars = parts.next().filter(|v| !v.is_empty());
        if let Some(extra) = parts.next() {
            return Err(format!("unexpected '{extra}' after FIRMWARE,VARS"));
        }
        Ok(Bootrom { firmware: firmware.into(), vars: vars.map(PathBuf::from) })
    }
}

pub fn check_readable(path: &str) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| strip_os_error(&e))?;
    let meta = f.metadata().map_err(|e| strip_os_error(&e))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() == 0 {
        return Err("empty file".into());
    }
    Ok(())
}
