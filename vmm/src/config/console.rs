//! `-s SLOT,virtio-console[,stdio|autopty|log=PATH|socket=PATH]`.

use std::path::PathBuf;

use super::ConsoleTarget;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleConfig {
    Target(ConsoleTarget),
    Socket(PathBuf),
}

impl ConsoleConfig {
    pub const USAGE: &'static str = "virtio-console[,stdio|autopty|log=PATH|socket=PATH]";

    /// Parses the CONF of `-s SLOT,virtio-console[,CONF]` (stdio when absent).
    pub fn parse(conf: Option<&str>) -> Result<ConsoleConfig, String> {
        let bad = |c: &str| format!("unknown target '{c}' ({})", Self::USAGE);
        match conf.unwrap_or("stdio") {
            "" => Ok(ConsoleConfig::Target(ConsoleTarget::Stdio)),
            c => match (ConsoleTarget::parse(c), c.strip_prefix("socket=")) {
                (Some(t), _) => Ok(ConsoleConfig::Target(t)),
                (None, Some(p)) if !p.is_empty() => Ok(ConsoleConfig::Socket(p.into())),
                _ => Err(bad(c)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_conf() {
        assert_eq!(ConsoleConfig::parse(None), Ok(ConsoleConfig::Target(ConsoleTarget::Stdio)));
        assert_eq!(ConsoleConfig::parse(Some("autopty")), Ok(ConsoleConfig::Target(ConsoleTarget::AutoPty)));
        assert_eq!(ConsoleConfig::parse(Some("log=/x")), Ok(ConsoleConfig::Target(ConsoleTarget::Log("/x".into()))));
        assert_eq!(ConsoleConfig::parse(Some("socket=/s")), Ok(ConsoleConfig::Socket("/s".into())));
        assert!(ConsoleConfig::parse(Some("log=")).is_err());
        assert!(ConsoleConfig::parse(Some("tcp=1")).unwrap_err().contains("unknown target 'tcp=1'"));
    }
}
