//! Sizes as people write them (`64G`, `512M`, `1048576`), and the two sizes a machine has:
//! its memory (whole MiB, as xhyve's `-m` takes it) and a disk's (bytes, whole sectors).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// A size such as `64G`, `512M`, `1048576`: K, M, G, T are powers of 1024; no suffix is bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&t[..i], 1 << 20),
        (i, 'G' | 'g') => (&t[..i], 1 << 30),
        (i, 'T' | 't') => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// Guest memory: whole MiB from 16M to 1T. Written `"256M"` in records, answers and box
/// metadata (what xhyve's `-m` takes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemSize {
    mib: u64,
}

impl MemSize {
    /// A machine's memory when neither machine.create nor the box names one.
    pub const DEFAULT: MemSize = MemSize { mib: 256 };

    /// An integer (MiB) or a size string (`512M`, `1G`; a bare number is MiB, as for xhyve).
    pub fn from_json(v: &Value) -> Result<MemSize, String> {
        let bytes = match v {
            Value::Number(n) => {
                n.as_u64().and_then(|m| m.checked_mul(1 << 20)).ok_or(format!("{n} is not a whole number of MiB"))?
            }
            Value::String(s) if s.trim().bytes().all(|b| b.is_ascii_digit()) && !s.trim().is_empty() => s
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|m| m.checked_mul(1 << 20))
                .ok_or(format!("{s:?} is not a size"))?,
            Value::String(s) => {
                parse_size(s).ok_or(format!("{s:?} is not a size (e.g. \"512M\", \"2G\", or an integer of MiB)"))?
            }
            other => return Err(format!("{other} is not a size (e.g. \"512M\")")),
        };
        if bytes % (1 << 20) != 0 {
            return Err("memory must be a whole number of MiB".into());
        }
        let mib = bytes >> 20;
        if !(16..=1 << 20).contains(&mib) {
            return Err(format!("{mib} MiB is out of range (16M to 1T)"));
        }
        Ok(MemSize { mib })
    }
}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}M", self.mib)
    }
}

impl TryFrom<String> for MemSize {
    type Error = String;
    fn try_from(s: String) -> Result<MemSize, String> {
        MemSize::from_json(&Value::String(s))
    }
}

impl From<MemSize> for String {
    fn from(m: MemSize) -> String {
        m.to_string()
    }
}

/// A disk's size in bytes: a positive multiple of 512 (whole sectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSize(u64);

impl DiskSize {
    /// Bytes as an integer, or a size string (`10G`).
    pub fn from_json(v: &Value) -> Result<DiskSize, String> {
        let n = match v {
            Value::Number(n) => n.as_u64().ok_or(format!("{n} is not a size in bytes"))?,
            Value::String(s) => parse_size(s).ok_or(format!("{s:?} is not a size (e.g. \"10G\")"))?,
            other => return Err(format!("{other} is not a size")),
        };
        if n == 0 || n % 512 != 0 {
            return Err(format!("{n} bytes: a disk is a positive multiple of 512 bytes"));
        }
        Ok(DiskSize(n))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64G"), Some(64 << 30));
        assert_eq!(parse_size("1m"), Some(1 << 20));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn memory() {
        let mem = |v: Value| MemSize::from_json(&v).map(|m| m.to_string());
        assert_eq!(mem(json!("512M")).unwrap(), "512M");
        assert_eq!(mem(json!("1G")).unwrap(), "1024M");
        assert_eq!(mem(json!(300)).unwrap(), "300M");
        assert_eq!(mem(json!("300")).unwrap(), "300M");
        assert!(mem(json!("1K")).is_err());
        assert!(mem(json!("lots")).is_err());
        assert!(mem(json!("8M")).is_err());
        // Records keep "NNNM" and read it back.
        assert_eq!(serde_json::to_value(MemSize::DEFAULT).unwrap(), json!("256M"));
        assert_eq!(serde_json::from_value::<MemSize>(json!("300M")).unwrap(), MemSize { mib: 300 });
        assert!(serde_json::from_value::<MemSize>(json!("lots")).is_err());
    }

    #[test]
    fn disks() {
        assert_eq!(DiskSize::from_json(&json!("10G")).unwrap().bytes(), 10 << 30);
        assert_eq!(DiskSize::from_json(&json!(4096)).unwrap().bytes(), 4096);
        for bad in [json!(0), json!(1000), json!("1x"), json!(-1), json!(true)] {
            assert!(DiskSize::from_json(&bad).is_err(), "{bad}");
        }
    }
}
