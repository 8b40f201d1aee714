//! Box versions and Vagrant's version constraints (RubyGems semantics: `>= 1.0, < 2`, `~> 1.2`,
//! `= 1.0`, `!= 1.1`, plain `1.0`), and the one spelling of each version the store uses.

use std::cmp::Ordering;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Num(u64),
    Str(String),
}

/// A version such as `1.2.3` or `2.0.0.beta1`, compared as `Gem::Version` compares them:
/// segments numerically (`01` is `1`); a segment with letters marks a pre-release and sorts
/// before any number; trailing zeros of the release and of the pre-release part do not count
/// (`1.0` is `1.0.0`).
#[derive(Clone, Debug)]
pub struct Version {
    text: String,
    /// As written (what `~>` bumps).
    segs: Vec<Segment>,
    /// Without the zeros that do not count (what comparisons see).
    canonical: Vec<Segment>,
}

/// Longest store spelling of a version (a directory name).
const MAX_CANONICAL: usize = 128;

impl Version {
    pub fn parse(s: &str) -> Result<Version, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty version".into());
        }
        if !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            || t.starts_with('.')
            || t.ends_with('.')
            || t.contains("..")
        {
            return Err(format!("malformed version {s:?} (expected e.g. 1.2.3)"));
        }
        if !t.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("malformed version {s:?} (must start with a digit)"));
        }
        let mut segs = Vec::new();
        // RubyGems: "-" means ".pre."; letters and digits adjacent form separate segments.
        let norm = t.replace('-', ".pre.");
        for part in norm.split('.') {
            let mut cur = String::new();
            let mut cur_digit = None;
            for c in part.chars() {
                let d = c.is_ascii_digit();
                if cur_digit.is_some_and(|cd| cd != d) {
                    segs.push(seg(&cur)?);
                    cur.clear();
                }
                cur.push(c);
                cur_digit = Some(d);
            }
            if !cur.is_empty() {
                segs.push(seg(&cur)?);
            }
        }
        let canonical = canonical(&segs);
        let v = Version { text: t.to_string(), segs, canonical };
        if v.canonical_text().len() > MAX_CANONICAL {
            return Err(format!("version {s:?} is too long"));
        }
        Ok(v)
    }

    /// The one spelling of all equal versions, the name of their directory in the store: the
    /// release's segments (at least three: `1` is `1.0.0`), then the pre-release's, without
    /// leading or trailing zeros that do not count (`01.0`, `1.0.0` and `1` are `1.0.0`,
    /// `2.0.0.beta1` is `2.0.0.beta.1`).
    pub fn canonical_text(&self) -> String {
        let release = self.canonical.iter().take_while(|s| matches!(s, Segment::Num(_))).count();
        let mut parts: Vec<String> = self.canonical.iter().map(ToString::to_string).collect();
        for i in release..3 {
            parts.insert(i, "0".into());
        }
        parts.join(".")
    }

    /// The numeric release segments before any pre-release part.
    fn release(&self) -> Vec<u64> {
        self.segs
            .iter()
            .map_while(|s| match s {
                Segment::Num(n) => Some(*n),
                Segment::Str(_) => None,
            })
            .collect()
    }

    /// RubyGems' `bump`: drop the last release segment (unless only one) and increment the new
    /// last. Returns the segments kept and the incremented one (which may exceed u64: RubyGems
    /// has big numbers).
    fn bump(&self) -> (Vec<u64>, u128) {
        let mut r = self.release();
        if r.len() > 1 {
            r.pop();
        }
        let last = r.pop().map_or(0, |n| u128::from(n) + 1);
        (r, last)
    }

    /// Whether `v` is below `self.bump()`, the upper bound of `~> self`.
    fn below_bump(&self, v: &Version) -> bool {
        let (prefix, last) = self.bump();
        let vr = v.release();
        let seg = |i: usize| vr.get(i).copied().unwrap_or(0);
        for (i, p) in prefix.iter().enumerate() {
            if seg(i) != *p {
                return seg(i) < *p;
            }
        }
        u128::from(seg(prefix.len())) < last
    }
}

/// `Gem::Version#canonical_segments`: the release part and the pre-release part each without
/// trailing zeros.
fn canonical(segs: &[Segment]) -> Vec<Segment> {
    let split = segs.iter().position(|s| matches!(s, Segment::Str(_))).unwrap_or(segs.len());
    let trim = |part: &[Segment]| {
        let keep = part.iter().rposition(|s| *s != Segment::Num(0)).map_or(0, |i| i + 1);
        part[..keep].to_vec()
    };
    let mut out = trim(&segs[..split]);
    out.extend(trim(&segs[split..]));
    out
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segment::Num(n) => write!(f, "{n}"),
            Segment::Str(s) => f.write_str(s),
        }
    }
}

fn seg(s: &str) -> Result<Segment, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().map(Segment::Num).map_err(|_| format!("version segment {s:?} is too large"))
    } else {
        Ok(Segment::Str(s.to_string()))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.canonical.len().max(other.canonical.len());
        for i in 0..n {
            let a = self.canonical.get(i).unwrap_or(&Segment::Num(0));
            let b = other.canonical.get(i).unwrap_or(&Segment::Num(0));
            let o = match (a, b) {
                (Segment::Num(x), Segment::Num(y)) => x.cmp(y),
                (Segment::Str(x), Segment::Str(y)) => x.cmp(y),
                (Segment::Num(_), Segment::Str(_)) => Ordering::Greater,
                (Segment::Str(_), Segment::Num(_)) => Ordering::Less,
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Pessimistic,
}

/// A comma-separated list of constraints, all of which must hold.
#[derive(Clone, Debug)]
pub struct Requirement {
    parts: Vec<(Op, Version)>,
}

impl Requirement {
    pub fn parse(s: &str) -> Result<Requirement, String> {
        let mut parts = Vec::new();
        for raw in s.split(',') {
            let t = raw.trim();
            if t.is_empty() {
                return Err(format!("empty constraint in {s:?}"));
            }
            let (op, rest) = [
                ("~>", Op::Pessimistic),
                (">=", Op::Ge),
                ("<=", Op::Le),
                ("!=", Op::Ne),
                ("=", Op::Eq),
                (">", Op::Gt),
                ("<", Op::Lt),
            ]
            .iter()
            .find_map(|(p, op)| t.strip_prefix(p).map(|r| (*op, r)))
            .unwrap_or((Op::Eq, t));
            let v = Version::parse(rest).map_err(|e| format!("bad constraint {t:?}: {e}"))?;
            parts.push((op, v));
        }
        Ok(Requirement { parts })
    }

    pub fn matches(&self, v: &Version) -> bool {
        self.parts.iter().all(|(op, r)| match op {
            Op::Eq => v == r,
            Op::Ne => v != r,
            Op::Gt => v > r,
            Op::Ge => v >= r,
            Op::Lt => v < r,
            Op::Le => v <= r,
            Op::Pessimistic => v >= r && r.below_bump(v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }
    fn m(req: &str, ver: &str) -> bool {
        Requirement::parse(req).unwrap().matches(&v(ver))
    }

    #[test]
    fn ordering() {
        assert!(v("1.10") > v("1.9"));
        assert!(v("1.0") == v("1.0.0"));
        assert!(v("2.0.0.beta1") < v("2.0.0"));
        assert!(v("2.0.0.beta1") > v("1.9.9"));
        assert!(v("20240101.0.0") > v("3.1.4"));
        assert!(v("1.0-rc1") < v("1.0"));
        assert_eq!(v(" 1.2 ").to_string(), "1.2");
        assert!(v("01.0") == v("1.0.0") && v("1") == v("1.0.0.0"));
        assert!(v("1.0.a") == v("1.a")); // Gem::Version: the release part's zeros do not count
        assert!(v("1.0.0.beta1") < v("1") && v("1.0.0.beta1") > v("0.9"));
    }

    #[test]
    fn canonical_text() {
        for (given, store) in [
            ("1.0", "1.0.0"),
            ("01.0", "1.0.0"),
            ("1", "1.0.0"),
            ("1.0.0.0", "1.0.0"),
            ("0", "0.0.0"),
            ("1.2.3.4", "1.2.3.4"),
            ("20240101", "20240101.0.0"),
            ("2.0.0.beta1", "2.0.0.beta.1"),
            ("2.beta.1.0", "2.0.0.beta.1"),
            ("1.0-rc1", "1.0.0.pre.rc.1"),
        ] {
            assert_eq!(v(given).canonical_text(), store, "{given}");
        }
        assert!(Version::parse(&format!("{}1", "1.".repeat(100))).unwrap_err().contains("too long"));
    }

    #[test]
    fn malformed() {
        for bad in ["", "a.b", "1..2", ".1", "1.", "1 2", "1/2", "../1"] {
            assert!(Version::parse(bad).is_err(), "{bad:?} accepted");
        }
        for bad in ["", ">= ", "1.0,", "=> 1", ">= 1, foo"] {
            assert!(Requirement::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn constraints() {
        assert!(m(">= 1.0, < 2", "1.5.3"));
        assert!(m(">= 1.0, < 2", "1.0"));
        assert!(!m(">= 1.0, < 2", "2.0"));
        assert!(!m(">= 1.0, < 2", "0.9"));
        assert!(m("1.0", "1.0.0"));
        assert!(m("= 1.0", "1.0"));
        assert!(!m("= 1.0", "1.0.1"));
        assert!(m("!= 1.1", "1.2"));
        assert!(!m("!= 1.1", "1.1.0"));
        assert!(m("> 1", "1.0.1"));
        assert!(m("<= 1.2", "1.2"));
        assert!(m(">=1.0,<2", "1.9"));
    }

    #[test]
    fn pessimistic() {
        assert!(m("~> 1.2", "1.2"));
        assert!(m("~> 1.2", "1.9.9"));
        assert!(!m("~> 1.2", "2.0"));
        assert!(!m("~> 1.2", "1.1"));
        assert!(m("~> 1.2.3", "1.2.9"));
        assert!(!m("~> 1.2.3", "1.3.0"));
        assert!(m("~> 1", "1.9"));
        assert!(!m("~> 1", "2.0"));
        assert!(!m("~> 1.2", "2.0.0.beta"));
        // A segment at u64's end: the bound is past it, not a wrapped 0 (nor an overflow panic).
        assert!(m("~> 18446744073709551615", "18446744073709551615.3"));
        assert!(m("~> 1.18446744073709551615.0", "1.18446744073709551615.7"));
        assert!(!m("~> 1.18446744073709551615.0", "2.0"));
    }
}
