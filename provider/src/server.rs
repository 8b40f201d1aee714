//! `xhyve-provider serve`: the unix-socket listener, one thread per connection, one JSON-RPC
//! message per line.

use crate::boxes::{unpack::Limits, Boxes};
use crate::home::{self, Home};
use crate::jsonrpc::{self, Request, Response};
use crate::logger::log;
use crate::machines::Machines;
use crate::rpc::{self, Ctx, Method, Session};
use crate::size::parse_size;
use serde_json::Value;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest request line accepted.
const MAX_LINE: u64 = 4 << 20;

/// XHYVE_HTTP_TIMEOUT: seconds a server may send nothing (connecting, answering, within a body)
/// before the download is resumed or given up.
pub fn http_timeout_from_env() -> Result<Duration, String> {
    match std::env::var("XHYVE_HTTP_TIMEOUT") {
        Err(_) => Ok(crate::boxes::download::TIMEOUT),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
            .map(Duration::from_secs_f64)
            .ok_or(format!("XHYVE_HTTP_TIMEOUT={v:?} is not a number of seconds")),
    }
}

/// Limits from the environment: XHYVE_MAX_BOX_SIZE (bytes, K/M/G/T suffixes) and
/// XHYVE_MAX_BOX_RATIO (unpacked:archive bytes).
pub fn limits_from_env() -> Result<Limits, String> {
    let mut l = Limits::default();
    if let Ok(v) = std::env::var("XHYVE_MAX_BOX_SIZE") {
        l.max_size = parse_size(&v).ok_or(format!("XHYVE_MAX_BOX_SIZE={v:?} is not a size"))?;
    }
    if let Ok(v) = std::env::var("XHYVE_MAX_BOX_RATIO") {
        l.max_ratio = v.trim().parse().map_err(|_| format!("XHYVE_MAX_BOX_RATIO={v:?} is not a number"))?;
    }
    Ok(l)
}

/// Removes the socket and exits on SIGTERM/SIGINT/SIGHUP.
fn handle_signals(socket: std::path::PathBuf) {
    let signals = xhyve_contract::signals::TermSignals::block();
    std::thread::spawn(move || {
        let sig = signals.wait();
        let _ = fs::remove_file(&socket);
        log(&format!("{sig}: stopping"));
        std::process::exit(0);
    });
}

pub fn serve(home: &Home) -> Result<(), String> {
    home.create().map_err(|e| format!("cannot create {}: {e}", home.root.display()))?;
    let _lock = home.lock().map_err(|e| e.to_string())?;
    let limits = limits_from_env()?;
    let http_timeout = http_timeout_from_env()?;
    let reboot_limit = crate::machines::reboot::RebootLimit::from_env()?;
    crate::network::Config::from_env()?;
    // Scratch space of a daemon that died mid-job; the lock says none is running now.
    crate::machines::package::remove_partials(home);
    let _ = home::clear_dir(&home.tmp());
    let socket = home.socket();
    let _ = fs::remove_file(&socket);
    // SAFETY: umask is process-wide; no other thread runs yet.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(&socket);
    unsafe { libc::umask(old) };
    let listener = listener.map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    handle_signals(socket.clone());
    match crate::machines::ssh::install_key(home) {
        Ok(p) => log(&format!("SSH key for the guests: {}", p.display())),
        Err(e) => log(&format!("cannot write the insecure SSH key: {e}")),
    }
    let machines = Machines::new(home.clone(), reboot_limit);
    machines.networks.resume();
    machines.drop_unfinished();
    machines.finish_restores();
    machines.recover();
    let ctx = Arc::new(Ctx {
        boxes: Boxes { home: home.clone(), limits, http_timeout, lock: Mutex::new(()) },
        machines,
        socket: socket.clone(),
    });
    log(&format!(
        "xhyve-provider {} serving {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        socket.display(),
        std::process::id()
    ));
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let ctx = ctx.clone();
                std::thread::spawn(move || {
                    if let Err(e) = connection(stream, ctx) {
                        log(&format!("connection: {e}"));
                    }
                });
            }
            Err(e) => log(&format!("accept: {e}")),
        }
    }
    Ok(())
}

fn connection(stream: UnixStream, ctx: Arc<Ctx>) -> io::Result<()> {
    let session = Session::new(ctx, stream.try_clone()?);
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.len() as u64 > MAX_LINE && line.last() != Some(&b'\n') {
            // Skip the rest of the over-long line.
            loop {
                let mut rest = Vec::new();
                let k = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut rest)?;
                if k == 0 || rest.last() == Some(&b'\n') {
                    break;
                }
            }
            session.send_line(&error_line(
                jsonrpc::PARSE_ERROR,
                format!("Parse error: request longer than {MAX_LINE} bytes"),
            ));
            continue;
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if let Some(out) = handle(&line, &session) {
            session.send_line(&out);
        }
    }
}

fn error_line(code: i64, message: String) -> String {
    to_line(&Response::error(Value::Null, code, message))
}

fn to_line<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Handles one line: a request or a batch. Returns the response line (None when there is
/// nothing to answer: notifications only).
fn handle(line: &[u8], session: &Session) -> Option<String> {
    answer_line(line, |m, req| run(m, req, session))
}

/// A line's response line, with `call` answering each valid request to a known method (the
/// daemon runs it; the fuzz targets only check its params).
pub(crate) fn answer_line(
    line: &[u8],
    mut call: impl FnMut(&'static Method, Request) -> Option<Response>,
) -> Option<String> {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_line(
                jsonrpc::PARSE_ERROR,
                format!("Parse error: {e} (send one JSON-RPC 2.0 request per line, e.g. {{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"box.list\"}})"),
            ))
        }
    };
    match v {
        Value::Array(a) if a.is_empty() => {
            Some(error_line(jsonrpc::INVALID_REQUEST, "Invalid request: empty batch".into()))
        }
        // Each element on its own: an invalid one gets its -32600, the others run.
        Value::Array(a) => {
            let outs: Vec<Response> = a.into_iter().filter_map(|v| handle_one(v, &mut call)).collect();
            (!outs.is_empty()).then(|| to_line(&outs))
        }
        v => handle_one(v, &mut call).map(|r| to_line(&r)),
    }
}

fn handle_one(v: Value, call: &mut impl FnMut(&'static Method, Request) -> Option<Response>) -> Option<Response> {
    let req = match jsonrpc::parse_request(v) {
        Ok(r) => r,
        Err(invalid) => return Some(invalid),
    };
    let Some(m) = rpc::method(&req.method) else {
        let msg = format!("Method not found: {:?} (methods: {})", req.method, rpc::method_names().join(", "));
        return req.id.map(|id| Response::error(id, jsonrpc::METHOD_NOT_FOUND, msg));
    };
    call(m, req)
}

/// Runs a request's method in its own session (the request's id for its notifications).
fn run(m: &Method, req: Request, base: &Session) -> Option<Response> {
    let mut s = base.clone();
    s.request_id = req.id.clone();
    let start = Instant::now();
    let out = (m.handler)(req.params, &s);
    let status = match &out {
        Err(e) => format!("error {}: {}", e.code, e.message),
        Ok(_) => "ok".into(),
    };
    log(&format!("{} {status} ({} ms)", m.name, start.elapsed().as_millis()));
    let id = req.id?;
    Some(match out {
        Ok(v) => Response::result(id, v),
        Err(e) => Response::failure(id, e),
    })
}
