//! Vagrant box catalogs ("metadata JSON"): pick the newest version that matches a constraint and
//! has an `xhyve` provider for the wanted architecture.

use super::version::{Requirement, Version};
use serde::Deserialize;

pub const PROVIDER: &str = "xhyve";

#[derive(Debug, Deserialize)]
pub struct Catalog {
    pub name: Option<String>,
    #[serde(default)]
    pub versions: Vec<CatalogVersion>,
}

#[derive(Debug, Deserialize)]
pub struct CatalogVersion {
    pub version: String,
    #[serde(default)]
    pub providers: Vec<CatalogProvider>,
}

#[derive(Debug, Deserialize)]
pub struct CatalogProvider {
    pub name: String,
    pub url: String,
    pub checksum: Option<String>,
    pub checksum_type: Option<String>,
    pub architecture: Option<String>,
    pub default_architecture: Option<bool>,
}

/// The chosen box of a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub version: String,
    pub url: String,
    pub checksum: Option<String>,
    pub checksum_type: Option<String>,
    /// The provider entry's architecture, if it names one.
    pub architecture: Option<String>,
}

/// Vagrant's name for the host architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "arm" => "arm",
        other => other,
    }
}

pub fn parse(text: &[u8]) -> Result<Catalog, String> {
    serde_json::from_slice(text).map_err(|e| format!("not a valid box catalog: {}", unquoted(&e.to_string())))
}

/// serde's message without the text it quotes (`invalid type: string "..."`): an error never
/// repeats what a file holds.
fn unquoted(msg: &str) -> String {
    match (msg.find('"'), msg.rfind('"')) {
        (Some(a), Some(b)) if b > a => format!("{}\"...\"{}", &msg[..a], &msg[b + 1..]),
        _ => msg.to_string(),
    }
}

/// Newest version matching `constraint` with a provider `xhyve` for `arch`: an entry whose
/// `architecture` is `arch` is preferred, then one without an architecture, then one marked
/// `default_architecture`.
pub fn select(cat: &Catalog, constraint: Option<&Requirement>, arch: &str) -> Result<Selected, String> {
    let mut versions: Vec<(Version, &CatalogVersion)> =
        cat.versions.iter().filter_map(|cv| Version::parse(&cv.version).ok().map(|v| (v, cv))).collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    for (v, cv) in &versions {
        if constraint.is_some_and(|c| !c.matches(v)) {
            continue;
        }
        let xhyve = || cv.providers.iter().filter(|p| p.name == PROVIDER);
        let pick = xhyve()
            .find(|p| p.architecture.as_deref() == Some(arch))
            .or_else(|| xhyve().find(|p| p.architecture.is_none()))
            .or_else(|| xhyve().find(|p| p.default_architecture == Some(true)));
        if let Some(p) = pick {
            return Ok(Selected {
                version: cv.version.trim().to_string(),
                url: p.url.clone(),
                checksum: p.checksum.clone().filter(|c| !c.is_empty()),
                checksum_type: p.checksum_type.clone().filter(|c| !c.is_empty()),
                architecture: p.architecture.clone(),
            });
        }
    }
    let name = cat.name.as_deref().unwrap_or("the catalog");
    let available: Vec<String> = versions
        .iter()
        .map(|(_, cv)| {
            let provs: Vec<String> = cv
                .providers
                .iter()
                .map(|p| match &p.architecture {
                    Some(a) => format!("{}/{a}", p.name),
                    None => p.name.clone(),
                })
                .collect();
            format!("{} ({})", cv.version, provs.join(", "))
        })
        .collect();
    let what = match constraint {
        Some(_) => "no version matching the constraint",
        None => "no version",
    };
    Err(format!(
        "{name}: {what} has a provider {PROVIDER:?} for architecture {arch}; available: {}",
        if available.is_empty() { "none".to_string() } else { available.join("; ") }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> Catalog {
        parse(
            br#"{
              "name": "acme/tiny",
              "versions": [
                {"version": "1.0.0", "providers": [
                  {"name": "xhyve", "url": "http://x/1.0.0.box", "checksum": "aa", "checksum_type": "sha256"}]},
                {"version": "1.2.0", "providers": [
                  {"name": "virtualbox", "url": "http://x/vb.box"},
                  {"name": "xhyve", "url": "http://x/1.2.0-arm.box", "architecture": "arm64"},
                  {"name": "xhyve", "url": "http://x/1.2.0-amd.box", "architecture": "amd64"}]},
                {"version": "1.10.0", "providers": [
                  {"name": "xhyve", "url": "http://x/1.10.0.box", "architecture": "arm64", "default_architecture": true}]},
                {"version": "2.0.0", "providers": [{"name": "virtualbox", "url": "http://x/2.box"}]},
                {"version": "not-a-version", "providers": [{"name": "xhyve", "url": "http://x/bad.box"}]}
              ]}"#,
        )
        .unwrap()
    }

    fn sel(c: Option<&str>, arch: &str) -> Result<Selected, String> {
        let req = c.map(|c| Requirement::parse(c).unwrap());
        select(&cat(), req.as_ref(), arch)
    }

    #[test]
    fn newest_with_provider() {
        // 2.0.0 has no xhyve provider; 1.10.0 only arm64 but marked default_architecture.
        let s = sel(None, "amd64").unwrap();
        assert_eq!(s.version, "1.10.0");
        assert_eq!(s.architecture.as_deref(), Some("arm64"));
    }

    #[test]
    fn constraint_and_exact_arch() {
        let s = sel(Some("~> 1.2.0"), "amd64").unwrap();
        assert_eq!((s.version.as_str(), s.url.as_str()), ("1.2.0", "http://x/1.2.0-amd.box"));
        let s = sel(Some("~> 1.2.0"), "arm64").unwrap();
        assert_eq!(s.url, "http://x/1.2.0-arm.box");
        let s = sel(Some(">= 1.0, < 1.1"), "amd64").unwrap();
        assert_eq!(s.version, "1.0.0");
        assert_eq!(s.checksum.as_deref(), Some("aa"));
        assert_eq!(s.checksum_type.as_deref(), Some("sha256"));
        assert_eq!(s.architecture, None);
    }

    #[test]
    fn nothing_matches() {
        let e = sel(Some(">= 2"), "amd64").unwrap_err();
        assert!(e.contains("acme/tiny") && e.contains("2.0.0 (virtualbox)"), "{e}");
        let e = sel(Some("= 1.2.0"), "riscv64").unwrap_err();
        assert!(e.contains("riscv64"), "{e}");
    }

    #[test]
    fn rejects_non_catalog() {
        assert!(parse(b"[1,2]").is_err());
        assert!(parse(br#"{"versions": [{"providers": []}]}"#).is_err());
        let e = parse(br#"{"versions": "root:x:0:0"}"#).unwrap_err();
        assert!(e.contains("invalid type: string \"...\", expected a sequence") && !e.contains("root"), "{e}");
    }
}
