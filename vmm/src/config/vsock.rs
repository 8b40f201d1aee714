//! `-s SLOT,virtio-vsock,cid=N,socket=PATH`.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub cid: u64,
    pub socket: PathBuf,
}

impl VsockConfig {
    pub const USAGE: &'static str = "virtio-vsock,cid=N,socket=PATH";

    pub fn parse(conf: Option<&str>) -> Result<VsockConfig, String> {
        let (mut cid, mut socket) = (None, None);
        for opt in conf.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("cid", v)) => {
                    let n: u64 = v.parse().map_err(|_| format!("cid={v}: not a number"))?;
                    if !(3..u64::from(u32::MAX)).contains(&n) {
                        return Err(format!("cid={v}: guest CIDs are 3 to 4294967294"));
                    }
                    cid = Some(n);
                }
                Some(("socket", p)) if !p.is_empty() => socket = Some(PathBuf::from(p)),
                _ => return Err(format!("unknown option '{opt}' ({})", Self::USAGE)),
            }
        }
        match (cid, socket) {
            (Some(cid), Some(socket)) => Ok(VsockConfig { cid, socket }),
            _ => Err(format!("needs cid= and socket= ({})", Self::USAGE)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_conf() {
        let c = VsockConfig::parse(Some("cid=3,socket=/tmp/v")).unwrap();
        assert_eq!((c.cid, c.socket), (3, PathBuf::from("/tmp/v")));
        assert!(VsockConfig::parse(Some("cid=2,socket=/x")).unwrap_err().contains("3 to"));
        assert!(VsockConfig::parse(Some("cid=3")).unwrap_err().contains("needs cid= and socket="));
        assert!(VsockConfig::parse(None).is_err());
        assert!(VsockConfig::parse(Some("cid=3,socket=/x,fast")).unwrap_err().contains("unknown option 'fast'"));
    }
}
