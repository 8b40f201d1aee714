//! `box.add`, `box.list`, `box.remove`.

pub mod cancel;
pub mod catalog;
pub mod checksum;
pub mod download;
pub mod store;
pub mod tar_stream;
pub mod unpack;
pub mod version;

use crate::error::{code, Context, Error, Result};
use crate::home::Home;
use crate::state;
use cancel::Cancel;
use checksum::{Checksum, Kind};
use download::{Fetch, Format, Hashing, Source};
use serde::Deserialize;
use serde_json::{json, Value};
use std::fs;
use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use unpack::{Extractor, Limits};
use version::{Requirement, Version};
use xhyve_contract::hex::hex;

/// What the box methods share: the home, the limits, how long a server may send nothing, and
/// the lock that serialises changes to the store (installs, removals; machine creation).
pub struct Boxes {
    pub home: Home,
    pub limits: Limits,
    pub http_timeout: std::time::Duration,
    pub lock: Mutex<()>,
}

/// Reports progress: phase, bytes done, total bytes if known.
pub type Reporter = Arc<dyn Fn(&str, u64, Option<u64>) + Send + Sync>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddParams {
    pub source: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub architecture: Option<String>,
    pub checksum: Option<String>,
    pub checksum_type: Option<String>,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveParams {
    pub name: String,
    pub version: Option<String>,
    pub architecture: Option<String>,
}

/// A directory in `tmp/` removed when dropped (on every failure path).
struct TempDir(PathBuf);

impl TempDir {
    fn new(home: &Home, what: &str) -> Result<TempDir> {
        let p = store::tempdir_path(home, what);
        fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The box to fetch once a catalog (if any) has been resolved.
struct Plan {
    name: String,
    version: String,
    arch: String,
    checksum: Option<Checksum>,
    source: Source,
    catalog: Option<String>,
    reader: Box<dyn Read + Send>,
    total: Option<u64>,
    head: Vec<u8>,
}

/// A source opened with its first bytes read: (first bytes, whole stream, length if known).
type OpenedHead = (Vec<u8>, Box<dyn Read + Send>, Option<u64>);

fn open_peeked(src: &Source, fetch: &Fetch) -> Result<OpenedHead> {
    let opened = download::open(src, fetch)?;
    let (head, r) = download::peek(opened.reader, 512).ctx(|| format!("reading {src}"))?;
    Ok((head, Box::new(r), opened.total))
}

fn plan(p: &AddParams, fetch: &Fetch) -> Result<Plan> {
    let src = Source::parse(&p.source).map_err(|e| Error::bad_param("source", e))?;
    if let Some(n) = &p.name {
        store::check_name(n).map_err(|e| Error::bad_param("name", e))?;
    }
    // A version or a constraint (which one it must be depends on the source, read below).
    let req = p.version.as_deref().map(Requirement::parse).transpose().map_err(|e| Error::bad_param("version", e))?;
    if let Some(a) = &p.architecture {
        store::check_arch(a).map_err(|e| Error::bad_param("architecture", e))?;
    }
    let explicit = match (p.checksum.as_deref().filter(|c| !c.trim().is_empty()), p.checksum_type.as_deref()) {
        (Some(c), t) => Some(Checksum::parse(c, t).map_err(|(field, e)| Error::bad_param(field, e))?),
        (None, Some(t)) if !t.trim().is_empty() => {
            return Err(Error::bad_param("checksum", "checksum_type given without checksum"))
        }
        _ => None,
    };
    let want_arch = p.architecture.clone().unwrap_or_else(|| catalog::host_arch().to_string());
    let (head, reader, total) = open_peeked(&src, fetch)?;
    if download::sniff(&head) != Format::Json {
        let name = p.name.clone().ok_or_else(|| {
            Error::bad_param("name", "name is required when the source is a box file (only a catalog names its box)")
        })?;
        let version = p.version.clone().unwrap_or_else(|| "0".into());
        let version = Version::parse(&version).map_err(|_| {
            Error::bad_param(
                "version",
                format!("version {version:?}: for a box file, version is the version to record (e.g. 1.0.0); constraints only apply to catalogs"),
            )
        })?;
        let version = version.to_string();
        return Ok(Plan {
            name,
            version,
            arch: want_arch,
            checksum: explicit,
            source: src,
            catalog: None,
            reader,
            total,
            head,
        });
    }
    // A catalog.
    let text = download::read_limited(reader, download::MAX_CATALOG).ctx(|| format!("reading catalog {src}"))?;
    let cat = catalog::parse(&text).map_err(|e| Error::bad_box(format!("{src}: {e}")))?;
    let sel = catalog::select(&cat, req.as_ref(), &want_arch).map_err(|m| Error::new(code::NO_MATCHING_BOX, m))?;
    let name = p
        .name
        .clone()
        .or(cat.name.clone())
        .ok_or_else(|| Error::bad_param("name", format!("the catalog {src} has no name: pass name")))?;
    store::check_name(&name).map_err(|e| Error::bad_box(format!("catalog {src}: {e}")))?;
    let arch = sel.architecture.clone().unwrap_or(want_arch);
    store::check_arch(&arch).map_err(|e| Error::bad_box(format!("catalog {src}: {e}")))?;
    let checksum = match explicit {
        Some(c) => Some(c),
        None => match &sel.checksum {
            Some(c) => Some(
                Checksum::parse(c, sel.checksum_type.as_deref())
                    .map_err(|(_, e)| Error::bad_box(format!("catalog {src}, version {}: {e}", sel.version)))?,
            ),
            None => None,
        },
    };
    let box_src = src.join(&sel.url).map_err(|e| Error::bad_box(format!("catalog {src}: {e}")))?;
    let (head, reader, total) = open_peeked(&box_src, fetch)?;
    if download::sniff(&head) == Format::Json {
        return Err(Error::bad_box(format!("{box_src} (from catalog {src}) is another catalog, not a box")));
    }
    Ok(Plan {
        name,
        version: sel.version,
        arch,
        checksum,
        source: box_src,
        catalog: Some(src.to_string()),
        reader,
        total,
        head,
    })
}

/// Reads the rest of a decoded stream after the tar end, refusing more than a little.
fn drain_decoded(mut r: impl Read) -> Result<()> {
    let n = io::copy(&mut (&mut r).take((1 << 20) + 1), &mut io::sink()).map_err(tar_stream::stream_error)?;
    if n > 1 << 20 {
        return Err(Error::bad_archive("more than 1 MiB of data after the end of the tar archive"));
    }
    Ok(())
}

/// Unpacks a tar stream, gzip-compressed or not, into `ex`.
pub(crate) fn untar(gzip: bool, r: impl Read, ex: &mut Extractor) -> Result<()> {
    if !gzip {
        return unpack::untar(r, ex);
    }
    let mut gz = flate2::read::GzDecoder::new(r);
    unpack::untar(&mut gz, ex)?;
    drain_decoded(gz)
}

/// Installs a box; stops when `cancel` says so (its client has gone), leaving nothing behind.
pub fn add(b: &Boxes, p: AddParams, report: Reporter, cancel: Cancel) -> Result<Value> {
    let fetch = Fetch { timeout: b.http_timeout, cancel: cancel.clone() };
    let mut plan = plan(&p, &fetch)?;
    let home = &b.home;
    let version = Version::parse(&plan.version).map_err(Error::bad_box)?;
    let target = store::box_dir(home, &plan.name, &version, &plan.arch);
    // Before the download, so that a box that cannot be installed fails at once.
    replaced(b, &plan, p.force)?;
    let job = TempDir::new(home, "add")?;
    let root = job.0.join("box");
    fs::create_dir(&root)?;
    let kind = plan.checksum.as_ref().map(|c| c.kind).unwrap_or(Kind::Sha256);
    let phase: &'static str = match plan.source {
        Source::Http(_) => "download",
        Source::File(_) => "read",
    };
    let r2 = report.clone();
    let progress: download::Progress = Arc::new(move |d, t| r2(phase, d, t));
    let format = download::sniff(&plan.head);
    let mut h = Hashing::new(
        std::mem::replace(&mut plan.reader, Box::new(io::empty())),
        kind.hasher(),
        plan.total,
        progress,
        cancel.clone(),
    );
    let mut ex = Extractor::new(&root, b.limits, h.counter(), cancel.clone());
    match format {
        Format::Gzip => untar(true, &mut h, &mut ex)?,
        Format::Tar => untar(false, &mut h, &mut ex)?,
        Format::Zip => {
            // zip needs random access: hash while copying to disk (or reading the local file),
            // check the checksum, then unpack from the file.
            let file = match &plan.source {
                Source::File(path) => {
                    io::copy(&mut h, &mut io::sink()).ctx(|| format!("reading {}", plan.source))?;
                    path.clone()
                }
                Source::Http(_) => {
                    let part = job.0.join("box.part");
                    let mut f = fs::File::create(&part)?;
                    io::copy(&mut h, &mut f).ctx(|| format!("downloading {}", plan.source))?;
                    part
                }
            };
            let (digest, _) = h.finish().ctx(|| format!("reading {}", plan.source))?;
            verify(&plan, kind, &digest)?;
            let f = fs::File::open(&file)?;
            let mut ex = Extractor::new(&root, b.limits, Arc::new(Default::default()), cancel.clone());
            report("unpack", 0, None);
            unpack::unzip(f, &mut ex)?;
            cancel.check()?;
            let digest = hex(&digest);
            return finish(Unpacked {
                b,
                force: p.force,
                plan,
                ex,
                digest,
                kind,
                root: &root,
                target: &target,
                report: &report,
            });
        }
        Format::Empty => return Err(Error::bad_archive(format!("{} is empty", plan.source))),
        Format::Unsupported(what) => {
            return Err(Error::bad_archive(format!(
                "{}: {what}-compressed boxes are not supported (use tar, tar.gz or zip)",
                plan.source
            )))
        }
        Format::Json => unreachable!("plan() refuses a catalog as a box"),
    }
    let (digest, bytes) = h.finish().ctx(|| format!("reading {}", plan.source))?;
    if plan.total.is_some_and(|t| t != bytes) {
        return Err(Error::download(format!(
            "{}: read {bytes} bytes of {} (truncated or changed while reading)",
            plan.source,
            plan.total.unwrap_or(0)
        )));
    }
    verify(&plan, kind, &digest)?;
    cancel.check()?;
    let digest = hex(&digest);
    finish(Unpacked { b, force: p.force, plan, ex, digest, kind, root: &root, target: &target, report: &report })
}

/// The installed boxes the new one replaces: those of its name and architecture at an equal
/// version (one, or several in a store written before versions had one spelling). Refused
/// without `force`, and while a machine uses one.
fn replaced(b: &Boxes, plan: &Plan, force: bool) -> Result<Vec<(PathBuf, store::BoxRecord)>> {
    let old = store::find(&b.home, &plan.name, &plan.version, &plan.arch);
    if let Some((_, r)) = old.first() {
        if !force {
            let as_ = if r.version == plan.version { String::new() } else { format!(" as version {}", r.version) };
            return Err(Error::new(
                code::ALREADY_EXISTS,
                format!(
                    "box {:?} version {} ({}) is already installed{as_} (pass force to replace it)",
                    plan.name, plan.version, plan.arch
                ),
            ));
        }
        store::check_unused(&b.home, &old)?;
    }
    Ok(old)
}

fn verify(plan: &Plan, kind: Kind, digest: &[u8]) -> Result<()> {
    if let Some(c) = &plan.checksum {
        let got = hex(digest);
        if got != c.hex {
            return Err(Error::new(
                code::CHECKSUM_MISMATCH,
                format!("checksum mismatch for {}: expected {} {}, got {got}", plan.source, kind.name(), c.hex),
            )
            .with_data(json!({"expected": c.hex, "actual": got, "checksum_type": kind.name()})));
        }
    }
    Ok(())
}

/// A box unpacked into `root` (by `ex`) whose checksum matched.
struct Unpacked<'a> {
    b: &'a Boxes,
    /// Replace an installed box of the same name, version and architecture.
    force: bool,
    plan: Plan,
    ex: Extractor,
    /// The archive's checksum of `kind`, in hex.
    digest: String,
    kind: Kind,
    root: &'a Path,
    target: &'a Path,
    report: &'a Reporter,
}

/// Checks the unpacked box's metadata.json, writes its record and renames it into the store.
fn finish(u: Unpacked) -> Result<Value> {
    let Unpacked { b, force, plan, ex, digest, kind, root, target, report } = u;
    let size = ex.finish()?;
    let meta_path = root.join("metadata.json");
    let meta = match fs::read(&meta_path) {
        Ok(m) => m,
        Err(_) => return Err(Error::bad_box(format!("{}: the box has no metadata.json at its root", plan.source))),
    };
    let meta: Value = serde_json::from_slice(&meta)
        .map_err(|e| Error::bad_box(format!("{}: metadata.json is not valid JSON: {e}", plan.source)))?;
    match meta.get("provider").and_then(Value::as_str) {
        Some(catalog::PROVIDER) => {}
        Some(other) => {
            return Err(Error::bad_box(format!(
                "{}: the box is for provider {other:?}, not {:?}",
                plan.source,
                catalog::PROVIDER
            )))
        }
        None => {
            return Err(Error::bad_box(format!(
                "{}: metadata.json has no \"provider\" (expected \"xhyve\")",
                plan.source
            )))
        }
    }
    if fs::symlink_metadata(root.join(store::RECORD)).is_ok() {
        return Err(Error::bad_box(format!(
            "{}: the box has a {} at its root, a name reserved for the provider",
            plan.source,
            store::RECORD
        )));
    }
    let rec = store::BoxRecord {
        name: plan.name.clone(),
        version: plan.version.clone(),
        architecture: plan.arch.clone(),
        provider: catalog::PROVIDER.into(),
        size,
        source: plan.source.to_string(),
        catalog: plan.catalog.clone(),
        checksum_type: kind.name().into(),
        checksum: digest,
        added_at: state::now(),
    };
    state::write_json_atomic(&root.join(store::RECORD), &rec)?;
    // Every unpacked file reaches the disk before the box appears in the store.
    let dir = fs::File::open(root)?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    report("install", size, Some(size));
    install(b, root, target, force, &plan)?;
    let mut v = serde_json::to_value(store::info(target, &rec)).map_err(|e| Error::internal(e.to_string()))?;
    v["checksum_type"] = json!(rec.checksum_type);
    v["checksum"] = json!(rec.checksum);
    v["source"] = json!(rec.source);
    if let Some(c) = rec.catalog {
        v["catalog"] = json!(c);
    }
    Ok(v)
}

/// Puts the verified box into place, replacing the boxes it replaces with `force`. The old box
/// at the target trades places with the new one in one step (RENAME_EXCHANGE): a crash leaves
/// one of the two installed, never neither; it then goes with the job's scratch. Old boxes at
/// another spelling of the version go after the new one is in.
fn install(b: &Boxes, root: &Path, target: &Path, force: bool, plan: &Plan) -> Result<()> {
    let _g = b.lock.lock().unwrap_or_else(|e| e.into_inner());
    let old = replaced(b, plan, force)?;
    let parent = target.parent().expect("box dir has a parent");
    let swap = old.iter().any(|(dir, _)| dir == target);
    let r = fs::create_dir_all(parent).and_then(|_| {
        if swap {
            store::exchange(root, target)
        } else {
            fs::rename(root, target)
        }
    });
    if let Err(e) = r {
        store::prune_empty(&b.home, target);
        return Err(Error::from(e).context(format!("installing into {}", target.display())));
    }
    if let Ok(p) = fs::File::open(parent) {
        let _ = p.sync_all();
    }
    for (dir, _) in old.iter().filter(|(dir, _)| dir != target) {
        let t = store::tempdir_path(&b.home, "replaced");
        if fs::rename(dir, &t).is_ok() {
            let _ = fs::remove_dir_all(t);
            store::prune_empty(&b.home, dir);
        }
    }
    Ok(())
}

pub fn list(b: &Boxes) -> Value {
    json!(store::list(&b.home))
}

pub fn remove(b: &Boxes, p: RemoveParams) -> Result<Value> {
    store::check_name(&p.name).map_err(|e| Error::bad_param("name", e))?;
    if let Some(v) = &p.version {
        Version::parse(v).map_err(|e| Error::bad_param("version", format!("version: {e}")))?;
    }
    if let Some(a) = &p.architecture {
        store::check_arch(a).map_err(|e| Error::bad_param("architecture", e))?;
    }
    let _g = b.lock.lock().unwrap_or_else(|e| e.into_inner());
    let removed = store::remove(&b.home, &p.name, p.version.as_deref(), p.architecture.as_deref())?;
    Ok(json!({ "removed": removed }))
}
