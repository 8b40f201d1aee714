//! `-f kexec,KERNEL,INITRD,CMDLINE`: how the guest starts.

use std::path::PathBuf;

use crate::os_error::strip_os_error;

/// Direct Linux boot: the VMM loads the kernel (bzImage or vmlinux) and the initrd itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kexec {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

impl Kexec {
    /// `kexec,KERNEL,INITRD,CMDLINE`; the kernel (and a non-empty initrd) must be readable files.
    pub fn parse(s: &str) -> Result<Kexec, String> {
        let mut parts = s.splitn(4, ',');
        match parts.next() {
            Some("kexec") => {}
            Some("bootrom") => return Err("UEFI firmware boot is not supported yet; use -f kexec".into()),
            Some(other) => return Err(format!("unknown boot method '{other}' (kexec)")),
            None => unreachable!(),
        }
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
