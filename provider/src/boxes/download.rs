//! Where box bytes come from: a local path, a `file://` URL or an `http(s)://` URL read with
//! `ureq`, resumed with HTTP Range when the connection breaks; and the reader that hashes and
//! counts those bytes on the way through.

use super::cancel::Cancel;
use crate::error::{Error, Result};
use digest::DynDigest;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// How many times a broken download is resumed before giving up.
const RESUMES: u32 = 5;
/// Largest catalog accepted.
pub const MAX_CATALOG: u64 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Http(Url),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Http(u) => write!(f, "{u}"),
        }
    }
}

impl Source {
    /// A path (absolute: the daemon does not share the caller's working directory), a
    /// `file://` URL or an `http(s)://` URL.
    pub fn parse(s: &str) -> std::result::Result<Source, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("source is empty".into());
        }
        if let Some((scheme, _)) = t.split_once("://") {
            let url = Url::parse(t).map_err(|e| format!("source {t:?} is not a valid URL: {e}"))?;
            return match scheme.to_ascii_lowercase().as_str() {
                "http" | "https" => Ok(Source::Http(url)),
                "file" => {
                    url.to_file_path().map(Source::File).map_err(|_| format!("source {t:?} is not a local file URL"))
                }
                other => Err(format!(
                    "source {t:?}: unsupported URL scheme {other:?} (use a path, file://, http:// or https://)"
                )),
            };
        }
        let p = PathBuf::from(t);
        if !p.is_absolute() {
            return Err(format!(
                "source path {t:?} must be absolute (the daemon does not share your working directory)"
            ));
        }
        Ok(Source::File(p))
    }

    /// Resolves a URL found in a catalog read from `self`. A catalog served over http(s) is
    /// resolved as a browser would (a path-absolute URL is a path on its server) and may only
    /// point to http(s) URLs: a remote catalog never reaches a local file. A local catalog's
    /// relative paths are relative to it.
    pub fn join(&self, reference: &str) -> std::result::Result<Source, String> {
        let r = reference.trim();
        match self {
            Source::Http(base) => {
                let u = base.join(r).map_err(|e| format!("bad box URL {r:?}: {e}"))?;
                match u.scheme() {
                    "http" | "https" => Ok(Source::Http(u)),
                    other => Err(format!(
                        "box URL {r:?} is a {other}: URL; a catalog served over http(s) may only point to http(s) URLs"
                    )),
                }
            }
            Source::File(_) if r.contains("://") || r.starts_with('/') => Source::parse(r),
            Source::File(p) => Ok(Source::File(p.parent().unwrap_or(Path::new("/")).join(r))),
        }
    }
}

/// How a job reads its sources: how long a server may send nothing, and when to stop.
#[derive(Clone)]
pub struct Fetch {
    pub timeout: Duration,
    pub cancel: Cancel,
}

/// A progress callback: bytes done and total if known.
pub type Progress = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// Hashes and counts every byte read through it, reports progress and stops the job once it is
/// cancelled.
pub struct Hashing<R> {
    inner: R,
    hasher: Box<dyn DynDigest + Send>,
    count: Arc<AtomicU64>,
    total: Option<u64>,
    progress: Progress,
    cancel: Cancel,
}

impl<R: Read> Hashing<R> {
    pub fn new(
        inner: R,
        hasher: Box<dyn DynDigest + Send>,
        total: Option<u64>,
        progress: Progress,
        cancel: Cancel,
    ) -> Self {
        Hashing { inner, hasher, count: Arc::new(AtomicU64::new(0)), total, progress, cancel }
    }
    /// Shared counter of bytes read so far (the unpacker's compression-ratio check reads it).
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }
    pub fn read_so_far(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    /// Reads to the end (hashing the rest) and returns the digest and the byte count.
    pub fn finish(mut self) -> io::Result<(Vec<u8>, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let n = self.read_so_far();
        Ok((self.hasher.finalize().to_vec(), n))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cancel.check()?;
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            let done = self.count.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            (self.progress)(done, self.total);
        }
        Ok(n)
    }
}

/// An opened source: its byte stream and, when known, its length.
pub struct Opened {
    pub reader: Box<dyn Read + Send>,
    pub total: Option<u64>,
}

pub fn open(src: &Source, fetch: &Fetch) -> Result<Opened> {
    match src {
        Source::File(p) => {
            let f = File::open(p).map_err(|e| Error::not_found(format!("cannot open {}: {e}", p.display())))?;
            let md = f.metadata()?;
            if md.is_dir() {
                return Err(Error::invalid_params(format!("source {} is a directory", p.display())));
            }
            Ok(Opened { reader: Box::new(f), total: Some(md.len()) })
        }
        Source::Http(u) => {
            let r = HttpReader::open(u, fetch)?;
            let total = r.total;
            Ok(Opened { reader: Box::new(r), total })
        }
    }
}

/// A reader whose first bytes were peeked at.
pub type Peeked<R> = io::Chain<Cursor<Vec<u8>>, R>;

/// Reads the first `n` bytes (fewer at EOF) and gives back a reader that still yields them.
pub fn peek<R: Read>(mut r: R, n: usize) -> io::Result<(Vec<u8>, Peeked<R>)> {
    let mut head = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    Ok((head.clone(), Cursor::new(head).chain(r)))
}

/// What a stream holds, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Zip,
    Tar,
    Json,
    Unsupported(&'static str),
    Empty,
}

pub fn sniff(head: &[u8]) -> Format {
    let first = head.iter().copied().find(|b| !b.is_ascii_whitespace());
    if head.is_empty() {
        Format::Empty
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Format::Zip
    } else if first == Some(b'{') {
        Format::Json
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Format::Unsupported("xz")
    } else if head.starts_with(b"BZh") {
        Format::Unsupported("bzip2")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Unsupported("zstd")
    } else {
        Format::Tar
    }
}

/// Default for how long a server may send nothing (connecting, answering, within a body).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// `timeout` bounds each wait for the server: the connection, the response's headers and each
/// read of the body (a body that stalls is resumed, not waited for forever).
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_per_read(Some(timeout))
        .user_agent(concat!("xhyve-provider/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// An HTTP(S) body that resumes with `Range: bytes=N-` (and `If-Range`) when the connection
/// breaks, stalls or closes before `Content-Length` bytes arrived.
pub struct HttpReader {
    agent: ureq::Agent,
    url: String,
    body: Option<Box<dyn Read + Send>>,
    offset: u64,
    pub total: Option<u64>,
    validator: Option<String>,
    resumes_left: u32,
    fetch: Fetch,
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string())
}

impl HttpReader {
    pub fn open(url: &Url, fetch: &Fetch) -> Result<HttpReader> {
        let agent = agent(fetch.timeout);
        let resp = agent.get(url.as_str()).call().map_err(|e| Error::download(format!("cannot fetch {url}: {e}")))?;
        let status = resp.status();
        if status.as_u16() == 404 {
            return Err(Error::not_found(format!("{url}: HTTP 404 Not Found")));
        }
        if !status.is_success() {
            return Err(Error::download(format!("{url}: HTTP {status}")));
        }
        let total = header(&resp, "content-length").and_then(|v| v.parse().ok());
        let validator =
            header(&resp, "etag").filter(|e| !e.starts_with("W/")).or_else(|| header(&resp, "last-modified"));
        Ok(HttpReader {
            agent,
            url: url.to_string(),
            body: Some(Box::new(resp.into_body().into_reader())),
            offset: 0,
            total,
            validator,
            resumes_left: RESUMES,
            fetch: fetch.clone(),
        })
    }

    fn truncated(&self, why: &str) -> io::Error {
        let of = self.total.map(|t| format!(" of {t}")).unwrap_or_default();
        Error::download(format!("download of {} truncated at {}{of} bytes: {why}", self.url, self.offset)).into()
    }

    /// Re-requests the rest of the body from `offset`.
    fn resume(&mut self, why: String) -> io::Result<()> {
        self.body = None;
        let mut why = why;
        loop {
            self.fetch.cancel.check()?;
            if self.resumes_left == 0 {
                return Err(self.truncated(&format!("{why} (gave up after {RESUMES} resumes)")));
            }
            self.resumes_left -= 1;
            std::thread::sleep(Duration::from_millis(100 * u64::from(RESUMES - self.resumes_left)));
            let mut req = self.agent.get(&self.url).header("Range", format!("bytes={}-", self.offset));
            if let Some(v) = &self.validator {
                req = req.header("If-Range", v.as_str());
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(e) => {
                    why = format!("resuming: {e}");
                    continue;
                }
            };
            match resp.status().as_u16() {
                206 => {
                    let start = header(&resp, "content-range").and_then(|cr| {
                        cr.strip_prefix("bytes ").and_then(|r| r.split('-').next()?.trim().parse::<u64>().ok())
                    });
                    if start != Some(self.offset) {
                        return Err(self.truncated("the server answered the resume with the wrong range"));
                    }
                    self.body = Some(Box::new(resp.into_body().into_reader()));
                    return Ok(());
                }
                200 => {
                    return Err(self.truncated(&format!(
                        "{why}; the server does not support resuming (no Range), or the file changed"
                    )))
                }
                s => why = format!("resuming: HTTP {s}"),
            }
        }
    }
}

impl Read for HttpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let r = match self.body.as_mut() {
                Some(b) => b.read(buf),
                None => return Ok(0),
            };
            match r {
                Ok(0) => match self.total {
                    Some(t) if self.offset < t => self.resume("the connection closed early".into())?,
                    _ => {
                        self.body = None;
                        return Ok(0);
                    }
                },
                Ok(n) => {
                    self.offset += n as u64;
                    if self.total.is_some_and(|t| self.offset > t) {
                        return Err(Error::download(format!("{}: more data than Content-Length", self.url)).into());
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    self.resume(format!("the server sent nothing for {} s", self.fetch.timeout.as_secs_f64()))?
                }
                Err(e) => self.resume(e.to_string())?,
            }
        }
    }
}

/// A read that waited the whole timeout (ureq wraps its own timeout in an `other` error).
fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
        || matches!(e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()), Some(ureq::Error::Timeout(_)))
}

/// Reads a whole (small) source, e.g. a catalog, refusing more than `limit` bytes.
pub fn read_limited<R: Read>(r: R, limit: u64) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(limit + 1).read_to_end(&mut v)?;
    if v.len() as u64 > limit {
        return Err(Error::bad_box(format!("catalog larger than {limit} bytes")).into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(Source::parse("/a/b.box").unwrap(), Source::File("/a/b.box".into()));
        assert_eq!(Source::parse("file:///a/b%20c.box").unwrap(), Source::File("/a/b c.box".into()));
        assert!(matches!(Source::parse("https://h/x.box").unwrap(), Source::Http(_)));
        assert!(Source::parse("rel/x.box").unwrap_err().contains("absolute"));
        assert!(Source::parse("ftp://h/x.box").unwrap_err().contains("unsupported URL scheme"));
        assert!(Source::parse("").is_err());
        let cat = Source::parse("http://h/boxes/cat.json").unwrap();
        assert_eq!(cat.join("tiny.box").unwrap().to_string(), "http://h/boxes/tiny.box");
        assert_eq!(cat.join("/x/t.box").unwrap().to_string(), "http://h/x/t.box");
        assert_eq!(cat.join("//o/t.box").unwrap().to_string(), "http://o/t.box");
        assert_eq!(cat.join("https://o/t.box").unwrap().to_string(), "https://o/t.box");
        for bad in ["file:///etc/passwd", "FILE:///x.box", "ftp://o/t.box", "c:\\x.box", "data:,x"] {
            assert!(cat.join(bad).unwrap_err().contains("may only point to http(s)"), "{bad}");
        }
        let cat = Source::parse("/srv/cat.json").unwrap();
        assert_eq!(cat.join("t.box").unwrap(), Source::File("/srv/t.box".into()));
        assert_eq!(cat.join("/x/t.box").unwrap(), Source::File("/x/t.box".into()));
        assert_eq!(cat.join("file:///x/t.box").unwrap(), Source::File("/x/t.box".into()));
        assert_eq!(cat.join("http://o/t.box").unwrap().to_string(), "http://o/t.box");
    }

    #[test]
    fn sniffs() {
        assert_eq!(sniff(b""), Format::Empty);
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Format::Gzip);
        assert_eq!(sniff(b"PK\x03\x04...."), Format::Zip);
        assert_eq!(sniff(b"  \n{\"name\":1}"), Format::Json);
        assert_eq!(sniff(b"BZh91AY"), Format::Unsupported("bzip2"));
        assert_eq!(sniff(b"metadata.json\0\0\0"), Format::Tar);
    }

    #[test]
    fn peek_keeps_bytes() {
        let (head, mut r) = peek(&b"hello world"[..], 5).unwrap();
        assert_eq!(head, b"hello");
        let mut all = String::new();
        r.read_to_string(&mut all).unwrap();
        assert_eq!(all, "hello world");
    }
}
