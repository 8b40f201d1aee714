//! `xhyve-provider serve`: the unix-socket listener, one thread per connection, one JSON-RPC
//! message per line.

use crate::boxes::{unpack::Limits, Boxes};
use crate::home::{self, Home};
use crate::logger::log;
use crate::machines::Machines;
use crate::rpc::{self, Ctx, Session};
use crate::size::parse_size;
use jsonrpc_core::{Call, Failure, Id, MetaIoHandler, Output, Request, Response, Version};
use serde_json::Value;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Longest request line accepted.
const MAX_LINE: u64 = 4 << 20;

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
    crate::network::Config::from_env()?;
    // Scratch space of a daemon that died mid-job; the lock says none is running now.
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
    let machines = Machines::new(home.clone());
    machines.recover();
    let ctx = Arc::new(Ctx {
        boxes: Boxes { home: home.clone(), limits, lock: Mutex::new(()) },
        machines,
        socket: socket.clone(),
    });
    let io = Arc::new(rpc::io_handler());
    log(&format!(
        "xhyve-provider {} serving {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        socket.display(),
        std::process::id()
    ));
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let (ctx, io) = (ctx.clone(), io.clone());
                std::thread::spawn(move || {
                    if let Err(e) = connection(stream, ctx, &io) {
                        log(&format!("connection: {e}"));
                    }
                });
            }
            Err(e) => log(&format!("accept: {e}")),
        }
    }
    Ok(())
}

fn connection(stream: UnixStream, ctx: Arc<Ctx>, io: &MetaIoHandler<Session>) -> io::Result<()> {
    let session = Session::new(ctx, Box::new(stream.try_clone()?));
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
            session.send_line(&error_line(-32700, format!("Parse error: request longer than {MAX_LINE} bytes")));
            continue;
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if let Some(out) = handle(io, &line, &session) {
            session.send_line(&out);
        }
    }
}

fn error_line(code: i64, message: String) -> String {
    let f = Failure {
        jsonrpc: Some(Version::V2),
        error: jsonrpc_core::Error { code: code.into(), message, data: None },
        id: Id::Null,
    };
    serde_json::to_string(&Response::Single(Output::Failure(f))).unwrap_or_default()
}

/// Handles one line; returns the response line (None for notifications only).
pub fn handle(io: &MetaIoHandler<Session>, line: &[u8], session: &Session) -> Option<String> {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_line(
                -32700,
                format!("Parse error: {e} (send one JSON-RPC 2.0 request per line, e.g. {{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"box.list\"}})"),
            ))
        }
    };
    let req: Request = match serde_json::from_value(v) {
        Ok(r) => r,
        Err(e) => {
            return Some(error_line(
                -32600,
                format!("Invalid request: {e} (expected a JSON-RPC 2.0 request object or a batch array)"),
            ))
        }
    };
    let resp = match req {
        Request::Single(call) => Response::Single(call_one(io, call, session)?),
        Request::Batch(calls) if calls.is_empty() => {
            return Some(error_line(-32600, "Invalid request: empty batch".into()))
        }
        Request::Batch(calls) => {
            let outs: Vec<Output> = calls.into_iter().filter_map(|c| call_one(io, c, session)).collect();
            if outs.is_empty() {
                return None;
            }
            Response::Batch(outs)
        }
    };
    serde_json::to_string(&resp).ok()
}

fn call_one(io: &MetaIoHandler<Session>, call: Call, base: &Session) -> Option<Output> {
    let mut s = base.clone();
    let (method, id) = match &call {
        Call::MethodCall(m) => (m.method.clone(), Some(m.id.clone())),
        Call::Notification(n) => (n.method.clone(), None),
        Call::Invalid { id } => {
            return Some(Output::Failure(Failure {
                jsonrpc: Some(Version::V2),
                error: jsonrpc_core::Error {
                    code: jsonrpc_core::ErrorCode::InvalidRequest,
                    message: "Invalid request: a request needs \"jsonrpc\": \"2.0\", a string \"method\" and, for a call, an \"id\"".into(),
                    data: None,
                },
                id: id.clone(),
            }))
        }
    };
    if !rpc::METHODS.iter().any(|m| m.name == method) {
        let id = id?;
        return Some(Output::Failure(Failure {
            jsonrpc: Some(Version::V2),
            error: jsonrpc_core::Error {
                code: jsonrpc_core::ErrorCode::MethodNotFound,
                message: format!("Method not found: {method:?} (methods: {})", rpc::method_names().join(", ")),
                data: None,
            },
            id,
        }));
    }
    s.request_id = id;
    let start = Instant::now();
    let out = jsonrpc_core::futures::executor::block_on(io.handle_call(call, s));
    let status = match &out {
        Some(Output::Failure(f)) => format!("error {}: {}", f.error.code.code(), f.error.message),
        _ => "ok".into(),
    };
    log(&format!("{method} {status} ({} ms)", start.elapsed().as_millis()));
    out
}
