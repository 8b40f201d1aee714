//! `-s SLOT,virtio-blk,PATH[,ro][,sectorsize=N[/PHYS]]`.

use std::fs::File;
use std::path::PathBuf;

use super::strip_os_error;

/// What `-s SLOT,virtio-blk,CONF` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub readonly: bool,
    /// Logical and physical block size in bytes.
    pub sector_size: u32,
    pub physical_size: u32,
}

fn parse_sector_size(s: &str) -> Option<u32> {
    s.parse().ok().filter(|n: &u32| n.is_power_of_two() && (512..=65536).contains(n))
}

impl BlockConfig {
    pub const USAGE: &'static str = "virtio-blk,PATH[,ro][,sectorsize=N[/PHYS]]";

    /// Parses `PATH[,ro][,sectorsize=N[/P]]` and checks the image can be opened as asked.
    pub fn parse(conf: Option<&str>) -> Result<BlockConfig, String> {
        let conf = conf.unwrap_or("");
        let mut parts = conf.split(',');
        let path = parts.next().filter(|p| !p.is_empty()).ok_or(format!("missing image path ({})", Self::USAGE))?;
        let mut cfg = BlockConfig { path: path.into(), readonly: false, sector_size: 512, physical_size: 512 };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => cfg.readonly = true,
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
                _ => return Err(format!("unknown option '{opt}' (valid: ro, sectorsize=N[/PHYS])")),
            }
        }
        cfg.open()?;
        Ok(cfg)
    }

    /// Opens the image as asked (read-only or read-write); the device's I/O goes through it.
    pub fn open(&self) -> Result<File, String> {
        let path = &self.path;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(!self.readonly)
            .open(path)
            .map_err(|e| format!("image {}: {}", path.display(), strip_os_error(&e)))?;
        let meta = f.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            return Err(format!("{}: is a directory", path.display()));
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(BlockConfig::parse(None).unwrap_err().contains("missing image path"));
        let e = BlockConfig::parse(Some("/nope")).unwrap_err();
        assert_eq!(e, "image /nope: No such file or directory");
    }
}
