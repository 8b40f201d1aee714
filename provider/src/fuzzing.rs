//! Entry points for the cargo-fuzz targets (provider/fuzz): the daemon's line handling down to
//! each method's params, box archive unpacking, catalogs with version constraints, and the
//! switch's DHCP answers. None touches a real home or the host's network: the request handling
//! stops after the params are checked, archives unpack into a scratch directory of their own.
//! Each function states the properties it checks (a failed one panics, which the fuzzer reports);
//! the unit tests replay the seed corpus (provider/fuzz/seeds) through them.

use crate::boxes::{self, cancel::Cancel, catalog, download, unpack, version};
use crate::jsonrpc::Response;
use crate::machines::params;
use crate::network::{config::Config, leases::Leases, named, switch};
use crate::size::{DiskSize, MemSize};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// One line as the daemon reads it, each request's params checked instead of the method run,
/// then the loosely typed params (sizes, networks, NICs, ports, UUIDs, subnets) through their
/// checks. Properties: the answer is one line of JSON-RPC 2.0 (a response or a batch of them).
pub fn rpc_line(line: &[u8]) {
    let out = crate::server::answer_line(line, |m, req| {
        let checked = (m.check)(req.params.clone());
        if let Some(p) = req.params.as_ref().and_then(Value::as_object) {
            field_checks(m.name, p);
        }
        req.id.map(|id| match checked {
            Ok(()) => Response::result(id, Value::Null),
            Err(e) => Response::failure(id, e),
        })
    });
    if let Some(out) = out {
        assert!(!out.contains('\n'), "a response is one line: {out}");
        let v: Value = serde_json::from_str(&out).expect("the response is JSON");
        let each = |r: &Value| assert_eq!(r["jsonrpc"], "2.0", "{out}");
        match &v {
            Value::Array(a) => a.iter().for_each(each),
            r => each(r),
        }
    }
}

/// The checks the methods run on their params' fields before anything else (all pure).
fn field_checks(method: &str, p: &serde_json::Map<String, Value>) {
    if let Some(v) = p.get("memory") {
        let _ = MemSize::from_json(v);
    }
    if let Some(v) = p.get("disk_size") {
        let _ = DiskSize::from_json(v);
    }
    for d in p.get("disks").and_then(Value::as_array).into_iter().flatten() {
        if let Some(v) = d.get("size") {
            let _ = DiskSize::from_json(v);
        }
    }
    if let Some(u) = p.get("uuid").and_then(Value::as_str) {
        let _ = params::check_uuid(u);
    }
    let nics = p.get("nics").and_then(Value::as_array).map(Vec::as_slice);
    let _ = params::parse_nics(p.get("network"), nics);
    if let Some(v) = p.get("forwarded_ports") {
        let _ = params::parse_forwarded_ports(v);
    }
    if method == "network.create" {
        if let Ok(c) = crate::rpc::parse::<named::CreateParams>(Some(Value::Object(p.clone()))) {
            let _ = named::Spec::check(&c);
        }
    }
    if let Some(v) = p.get("version").and_then(Value::as_str) {
        let _ = version::Requirement::parse(v);
    }
}

/// Small caps, so that a run never writes much: an archive bomb is refused all the same.
const LIMITS: unpack::Limits =
    unpack::Limits { max_size: 16 << 20, max_ratio: 100, ratio_after: 1 << 20, max_entries: 1000 };

/// A box file as `box.add` unpacks it (its format sniffed: tar, tar.gz or zip) into a fresh
/// directory. Properties: nothing is written outside the box's directory, and an unpacked box's
/// symlinks all resolve inside it.
pub fn box_archive(data: &[u8]) {
    let scratch = Scratch::new();
    let root = scratch.0.join("box");
    let beside = scratch.0.join("beside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&beside).unwrap();
    let mut ex = unpack::Extractor::new(&root, LIMITS, Arc::new(AtomicU64::new(data.len() as u64)), Cancel::never());
    let unpacked = match download::sniff(data) {
        download::Format::Gzip => boxes::untar(true, data, &mut ex),
        download::Format::Tar => boxes::untar(false, data, &mut ex),
        download::Format::Zip => {
            let file = scratch.0.join("box.zip");
            fs::write(&file, data).unwrap();
            unpack::unzip(fs::File::open(&file).unwrap(), &mut ex)
        }
        _ => return,
    };
    let finished = unpacked.and_then(|()| ex.finish());
    let mut names: Vec<_> = fs::read_dir(&scratch.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    names.retain(|n| n != "box.zip");
    assert_eq!(names, ["beside", "box"], "nothing appears beside the box");
    assert!(fs::read_dir(&beside).unwrap().next().is_none(), "nothing is written beside the box");
    if finished.is_ok() {
        let real = fs::canonicalize(&root).unwrap();
        for path in walk(&root) {
            if fs::symlink_metadata(&path).unwrap().file_type().is_symlink() {
                let to = fs::canonicalize(&path).expect("an unpacked symlink resolves");
                assert!(to.starts_with(&real), "{} resolves to {}, outside the box", path.display(), to.display());
            }
        }
    }
}

/// Every path under `dir` (symlinks not followed).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xhyve-provider-fuzz-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A version constraint (the first line) and a catalog (the rest) as `box.add` picks from it.
/// Properties: versions are totally ordered, equal exactly when their store spelling
/// (`canonical_text`) is, and that spelling parses back to an equal version; the selected
/// version matches the constraint.
pub fn catalog(data: &[u8]) {
    let (first, rest) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let constraint = std::str::from_utf8(first).ok().and_then(|s| version::Requirement::parse(s).ok());
    let Ok(cat) = catalog::parse(rest) else { return };
    let versions: Vec<version::Version> =
        cat.versions.iter().filter_map(|v| version::Version::parse(&v.version).ok()).take(8).collect();
    for a in &versions {
        let again = version::Version::parse(&a.canonical_text()).expect("the store spelling parses");
        assert_eq!(&again, a, "{a} and its store spelling {}", a.canonical_text());
        assert_eq!(again.canonical_text(), a.canonical_text());
        for b in &versions {
            assert_eq!(a.cmp(b), b.cmp(a).reverse(), "{a} against {b}");
            assert_eq!(a == b, a.canonical_text() == b.canonical_text(), "{a} against {b}");
            for c in &versions {
                if a <= b && b <= c {
                    assert!(a <= c, "{a} <= {b} <= {c}");
                }
            }
        }
    }
    if let Ok(sel) = catalog::select(&cat, constraint.as_ref(), catalog::host_arch()) {
        let v = version::Version::parse(&sel.version).expect("a selected version parses");
        assert!(constraint.is_none_or(|c| c.matches(&v)), "{v} was selected against the constraint");
    }
}

/// Frames a guest sends to the switch's gateway (each behind a 2-byte big-endian length), as
/// the switch answers them, with one lease table across them (a DISCOVER, then a REQUEST).
/// Properties: an answer is an IPv4/UDP frame from port 67 to 68 whose payload decodes as a
/// DHCP reply.
pub fn switch_dhcp(data: &[u8]) {
    use dhcproto::{v4, Decodable, Decoder};
    let scratch = Scratch::new();
    let cfg = Config::default();
    let mut leases = Leases::load(&scratch.0.join("leases.json"), &cfg).unwrap();
    let gateway = [0x02, 0, 0, 0, 0, 1];
    let mut rest = data;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        rest = tail;
        let Some(req) = crate::network::frames::dhcp_request(frame) else { continue };
        let (answer, _) = switch::dhcp_answer(&cfg, gateway, &mut leases, req, 1_700_000_000);
        if let Some(f) = answer {
            assert_eq!(&f[23..24], &[17], "UDP");
            assert_eq!(&f[34..38], &[0, 67, 0, 68], "from port 67 to 68");
            let reply = v4::Message::decode(&mut Decoder::new(&f[42..])).expect("the reply decodes");
            assert_eq!(reply.opcode(), v4::Opcode::BootReply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of a target's seed corpus (and the inputs that once broke it) runs clean.
    fn replay(target: &str, run: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
        let mut n = 0;
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            run(&fs::read(e.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn rpc_line_seeds() {
        replay("rpc_line", rpc_line);
    }

    #[test]
    fn box_archive_seeds() {
        replay("box_archive", box_archive);
    }

    #[test]
    fn catalog_seeds() {
        replay("catalog", catalog);
    }

    #[test]
    fn switch_dhcp_seeds() {
        replay("switch_dhcp", switch_dhcp);
    }
}
