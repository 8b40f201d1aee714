//! `-s SLOT,virtio-blk,PATH[,ro][,format=raw|qcow2][,sectorsize=N[/PHYS]]`.

use std::path::PathBuf;

use crate::disk::{self, Disk, Format};

/// What `-s SLOT,virtio-blk,CONF` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub readonly: bool,
    /// The image's format: given, never guessed from its content (`crate::disk`).
    pub format: Format,
    /// Logical and physical block size in bytes.
    pub sector_size: u32,
    pub physical_size: u32,
}

fn parse_sector_size(s: &str) -> Option<u32> {
    s.parse().ok().filter(|n: &u32| n.is_power_of_two() && (512..=65536).contains(n))
}

impl BlockConfig {
    pub const USAGE: &'static str = "virtio-blk,PATH[,ro][,format=raw|qcow2][,sectorsize=N[/PHYS]]";

    /// Parses `PATH[,ro][,format=F][,sectorsize=N[/P]]` and checks the image opens as asked.
    pub fn parse(conf: Option<&str>) -> Result<BlockConfig, String> {
        let conf = conf.unwrap_or("");
        let mut parts = conf.split(',');
        let path = parts.next().filter(|p| !p.is_empty()).ok_or(format!("missing image path ({})", Self::USAGE))?;
        let mut cfg = BlockConfig {
            path: path.into(),
            readonly: false,
            format: Format::Raw,
            sector_size: 512,
            physical_size: 512,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => cfg.readonly = true,
                Some(("format", f)) => cfg.format = Format::parse(f)?,
                Some(("sectorsize", v)) => {
                    let (l, p) = v.split_once('/').unwrap_or((v, v));
                    match (parse_sector_size(l), parse_sector_size(p)) {
                        (Some(l), Some(p)) if p >= l => (cfg.sector_size, cfg.physical_size) = (l, p),
                        _ => {
                            return Err(format!(
                                "sectorsize={v}: a power of two from 512 to 65536 (logical[/physical])"
                            ))
                        }
                    }
                }
                _ => return Err(format!("unknown option '{opt}' (valid: ro, sectorsize=N[/PHYS], format=raw|qcow2)")),
            }
        }
        cfg.open()?;
        Ok(cfg)
    }

    /// Opens the image as asked (read-only or read-write); the device's I/O goes through it.
    pub fn open(&self) -> Result<Box<dyn Disk>, String> {
        disk::open(&self.path, self.format, self.readonly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs::File;

    fn image(name: &str) -> (PathBuf, BlockConfig) {
        let dir = std::env::temp_dir().join(format!("xhyve-blkcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        File::create(&path).unwrap().set_len(1 << 20).unwrap();
        (path.clone(), BlockConfig::parse(Some(path.to_str().unwrap())).unwrap())
    }

    #[test]
    fn parse_conf() {
        let (path, cfg) = image("disk.img");
        assert!(!cfg.readonly && cfg.sector_size == 512);
        let p = path.to_str().unwrap();
        let c = BlockConfig::parse(Some(&format!("{p},ro,sectorsize=4096"))).unwrap();
        assert!(c.readonly && c.sector_size == 4096 && c.physical_size == 4096);
        let c = BlockConfig::parse(Some(&format!("{p},sectorsize=512/4096"))).unwrap();
        assert_eq!((c.sector_size, c.physical_size), (512, 4096));
        assert!(BlockConfig::parse(Some(&format!("{p},sectorsize=1000"))).unwrap_err().contains("power of two"));
        assert!(BlockConfig::parse(Some(&format!("{p},nocache"))).unwrap_err().contains("valid: ro"));
        assert_eq!(BlockConfig::parse(Some(&format!("{p},format=raw"))).unwrap().format, Format::Raw);
        let e = BlockConfig::parse(Some(&format!("{p},format=qcow2"))).unwrap_err();
        assert!(e.starts_with(&format!("image {p}: ")), "a raw file is no qcow2 image: {e}");
        assert!(BlockConfig::parse(Some(&format!("{p},format=vmdk"))).unwrap_err().contains("raw, qcow2"));
        assert!(BlockConfig::parse(None).unwrap_err().contains("missing image path"));
        let e = BlockConfig::parse(Some("/nope")).unwrap_err();
        assert_eq!(e, "image /nope: No such file or directory");
    }
}
