//! Box versions and Vagrant's version constraints (RubyGems semantics: `>= 1.0, < 2`, `~> 1.2`,
//! `= 1.0`, `!= 1.1`, plain `1.0`).

use std::cmp::Ordering;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Num(u64),
    Str(String),
}

/// A version such as `1.2.3` or `2.0.0.beta1`: segments compared numerically; a segment with
/// letters marks a pre-release and sorts before any number; trailing zeros do not count.
#[derive(Clone, Debug)]
pub struct Version {
    text: String,
    segs: Vec<Segment>,
}

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
        Ok(Version { text: t.to_string(), segs })
    }

    /// The version without its pre-release part (`2.0.0.beta` -> `2.0.0`).
    fn release_version(&self) -> Version {
        let r = self.release();
        let text = r.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".");
        Version { text, segs: r.into_iter().map(Segment::Num).collect() }
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

    /// RubyGems' `bump`: drop the last release segment (unless only one) and increment the new last.
    fn bump(&self) -> Version {
        let mut r = self.release();
        if r.len() > 1 {
            r.pop();
        }
        if let Some(last) = r.last_mut() {
            *last += 1;
        }
        let text = r.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".");
        Version { text, segs: r.into_iter().map(Segment::Num).collect() }
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
        let n = self.segs.len().max(other.segs.len());
        for i in 0..n {
            let a = self.segs.get(i).unwrap_or(&Segment::Num(0));
            let b = other.segs.get(i).unwrap_or(&Segment::Num(0));
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
            Op::Pessimistic => v >= r && v.release_version() < r.bump(),
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
    }
}
