//! Box checksums as Vagrant takes them: a type (md5, sha1, sha256, sha384, sha512) and a hex
//! digest compared case-insensitively. `TYPE:HEX` in `checksum` is accepted too.

use digest::DynDigest;
#[cfg(test)]
use xhyve_contract::hex::hex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Kind, String> {
        match s.trim().to_ascii_lowercase().replace('-', "").as_str() {
            "md5" => Ok(Kind::Md5),
            "sha1" => Ok(Kind::Sha1),
            "sha256" => Ok(Kind::Sha256),
            "sha384" => Ok(Kind::Sha384),
            "sha512" => Ok(Kind::Sha512),
            _ => Err(format!("unsupported checksum_type {s:?} (supported: md5, sha1, sha256, sha384, sha512)")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Md5 => "md5",
            Kind::Sha1 => "sha1",
            Kind::Sha256 => "sha256",
            Kind::Sha384 => "sha384",
            Kind::Sha512 => "sha512",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Kind::Md5 => 32,
            Kind::Sha1 => 40,
            Kind::Sha256 => 64,
            Kind::Sha384 => 96,
            Kind::Sha512 => 128,
        }
    }
    pub fn hasher(self) -> Box<dyn DynDigest + Send> {
        match self {
            Kind::Md5 => Box::new(md5::Md5::default()),
            Kind::Sha1 => Box::new(sha1::Sha1::default()),
            Kind::Sha256 => Box::new(sha2::Sha256::default()),
            Kind::Sha384 => Box::new(sha2::Sha384::default()),
            Kind::Sha512 => Box::new(sha2::Sha512::default()),
        }
    }
}

/// An expected checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub kind: Kind,
    /// Lower-case hex.
    pub hex: String,
}

impl Checksum {
    /// From a `checksum` and an optional `checksum_type` (required unless `checksum` is
    /// `TYPE:HEX`). An error names the field at fault: `checksum_type` or `checksum`.
    pub fn parse(checksum: &str, checksum_type: Option<&str>) -> Result<Checksum, (&'static str, String)> {
        let c = checksum.trim();
        let (kind, hex) = match (checksum_type.map(str::trim).filter(|t| !t.is_empty()), c.split_once(':')) {
            (Some(t), _) => (Kind::parse(t).map_err(|e| ("checksum_type", e))?, c),
            (None, Some((t, h))) => (Kind::parse(t).map_err(|e| ("checksum", e))?, h.trim()),
            (None, None) => {
                return Err((
                    "checksum_type",
                    "checksum_type is required with checksum (md5, sha1, sha256, sha384 or sha512)".into(),
                ))
            }
        };
        let hex = hex.to_ascii_lowercase();
        if hex.len() != kind.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err((
                "checksum",
                format!(
                    "checksum {checksum:?} is not a {} digest ({} hex digits expected)",
                    kind.name(),
                    kind.hex_len()
                ),
            ));
        }
        Ok(Checksum { kind, hex })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn parses() {
        let c = Checksum::parse(&SHA256_ABC.to_uppercase(), Some("SHA256")).unwrap();
        assert_eq!(c, Checksum { kind: Kind::Sha256, hex: SHA256_ABC.into() });
        let c = Checksum::parse(&format!("sha256:{SHA256_ABC}"), None).unwrap();
        assert_eq!(c.hex, SHA256_ABC);
        assert_eq!(Checksum::parse("900150983cd24fb0d6963f7d28e17f72", Some("md5")).unwrap().kind, Kind::Md5);
    }

    #[test]
    fn refuses() {
        let (field, e) = Checksum::parse(SHA256_ABC, None).unwrap_err();
        assert!(field == "checksum_type" && e.contains("checksum_type is required"), "{e}");
        let (field, e) = Checksum::parse(SHA256_ABC, Some("crc32")).unwrap_err();
        assert!(field == "checksum_type" && e.contains("unsupported"), "{e}");
        let (field, e) = Checksum::parse(SHA256_ABC, Some("sha1")).unwrap_err();
        assert!(field == "checksum" && e.contains("40 hex digits"), "{e}");
        assert_eq!(Checksum::parse(&SHA256_ABC.replace('b', "g"), Some("sha256")).unwrap_err().0, "checksum");
        assert_eq!(Checksum::parse("crc:00", None).unwrap_err().0, "checksum");
    }

    #[test]
    fn hashes() {
        for (kind, want) in [
            (Kind::Md5, "900150983cd24fb0d6963f7d28e17f72"),
            (Kind::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (Kind::Sha256, SHA256_ABC),
            (Kind::Sha384, "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"),
            (Kind::Sha512, "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
        ] {
            let mut h = kind.hasher();
            h.update(b"abc");
            assert_eq!(hex(&h.finalize()), want, "{kind:?}");
        }
    }
}
