//! The method table and the per-connection session that handlers see.

use crate::boxes::{self, cancel::Cancel, Boxes, Reporter};
use crate::error::{Error, Result};
use crate::machines::{self, Machines};
use crate::network;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The daemon's shared state.
pub struct Ctx {
    pub boxes: Boxes,
    pub machines: Arc<Machines>,
    pub socket: std::path::PathBuf,
}

/// One connection's view: the shared state, the connection (responses and notifications are
/// written to it, one line each) and the id of the request being handled.
#[derive(Clone)]
pub struct Session {
    pub ctx: Arc<Ctx>,
    conn: Arc<Mutex<UnixStream>>,
    pub request_id: Option<Value>,
}

impl Session {
    pub fn new(ctx: Arc<Ctx>, conn: UnixStream) -> Session {
        Session { ctx, conn: Arc::new(Mutex::new(conn)), request_id: None }
    }

    /// Writes one line to the client; a client that went away is not an error of the request.
    pub fn send_line(&self, line: &str) {
        let mut out = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(line.as_bytes()).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush());
    }

    /// Whether the client has hung up. A unix socket polls POLLHUP once the peer closed both
    /// ways: a client that only shut down its writing side still reads its answer.
    pub fn client_gone(&self) -> bool {
        let fd = self.conn.lock().unwrap_or_else(|e| e.into_inner()).as_raw_fd();
        let mut p = libc::pollfd { fd, events: 0, revents: 0 };
        // SAFETY: one pollfd for a descriptor this session keeps open; no waiting.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Cancels a job once its client has gone.
    pub fn cancel(&self) -> Cancel {
        let s = self.clone();
        Cancel::when(move || s.client_gone())
    }

    /// Sends a JSON-RPC notification (no id).
    pub fn notify(&self, method: &str, params: Value) {
        let msg = json!({"jsonrpc": "2.0", "method": method, "params": params});
        self.send_line(&msg.to_string());
    }

    /// A progress reporter for this request: `progress` notifications at most every 100 ms per
    /// phase, plus each phase's first and final (done == total) update.
    pub fn reporter(&self) -> Reporter {
        let s = self.clone();
        let last: Mutex<Option<(String, Instant)>> = Mutex::new(None);
        Arc::new(move |phase: &str, done: u64, total: Option<u64>| {
            let now = Instant::now();
            let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
            let due = match &*l {
                Some((p, t)) => {
                    p != phase || now.duration_since(*t) >= Duration::from_millis(100) || Some(done) == total
                }
                None => true,
            };
            if due {
                *l = Some((phase.to_string(), now));
                drop(l);
                let id = s.request_id.clone().unwrap_or(Value::Null);
                s.notify("progress", json!({"request_id": id, "phase": phase, "done": done, "total": total}));
            }
        })
    }
}

/// A method: its params (an object or an array, when given) and the caller's session.
pub type Params = Option<Value>;
type Handler = fn(Params, &Session) -> Result<Value>;

pub struct Method {
    pub name: &'static str,
    pub handler: Handler,
    /// The handler's first step alone: its params parsed into their type (no side effects; the
    /// fuzz targets run it).
    pub check: fn(Params) -> Result<()>,
}

fn check<T: DeserializeOwned>(p: Params) -> Result<()> {
    parse::<T>(p).map(drop)
}

/// Every method the daemon serves (`provider/api-schema.json` must list exactly these).
pub const METHODS: &[Method] = &[
    Method { name: "provider.info", handler: provider_info, check: check::<NoParams> },
    Method { name: "box.add", handler: box_add, check: check::<boxes::AddParams> },
    Method { name: "box.list", handler: box_list, check: check::<NoParams> },
    Method { name: "box.remove", handler: box_remove, check: check::<boxes::RemoveParams> },
    Method { name: "machine.create", handler: machine_create, check: check::<machines::params::CreateParams> },
    Method { name: "machine.list", handler: machine_list, check: check::<NoParams> },
    Method { name: "machine.state", handler: machine_state, check: check::<machines::params::IdParams> },
    Method { name: "machine.start", handler: machine_start, check: check::<machines::params::StartParams> },
    Method { name: "machine.stop", handler: machine_stop, check: check::<machines::params::StopParams> },
    Method { name: "machine.destroy", handler: machine_destroy, check: check::<machines::params::DestroyParams> },
    Method { name: "machine.ssh_info", handler: machine_ssh_info, check: check::<machines::params::IdParams> },
    Method { name: "machine.wait_ssh", handler: machine_wait_ssh, check: check::<machines::params::WaitParams> },
    Method { name: "machine.exec", handler: machine_exec, check: check::<machines::params::ExecParams> },
    Method { name: "machine.package", handler: machine_package, check: check::<machines::params::PackageParams> },
    Method { name: "network.create", handler: network_create, check: check::<network::named::CreateParams> },
    Method { name: "network.list", handler: network_list, check: check::<NoParams> },
    Method { name: "network.remove", handler: network_remove, check: check::<network::named::NameParams> },
    Method { name: "machine.suspend", handler: machine_suspend, check: check::<machines::params::IdParams> },
    Method { name: "machine.resume", handler: machine_resume, check: check::<machines::params::IdParams> },
    Method {
        name: "machine.snapshot.save",
        handler: machine_snapshot_save,
        check: check::<machines::params::SnapshotParams>,
    },
    Method {
        name: "machine.snapshot.restore",
        handler: machine_snapshot_restore,
        check: check::<machines::params::SnapshotParams>,
    },
    Method {
        name: "machine.snapshot.list",
        handler: machine_snapshot_list,
        check: check::<machines::params::IdParams>,
    },
    Method {
        name: "machine.snapshot.delete",
        handler: machine_snapshot_delete,
        check: check::<machines::params::SnapshotParams>,
    },
];

pub fn method_names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

pub fn method(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// Typed params with errors that name the field: `-32602 invalid params: name: invalid type...`.
pub fn parse<T: DeserializeOwned>(p: Params) -> Result<T> {
    let v = match p {
        None => Value::Object(Default::default()),
        Some(Value::Array(a)) if a.is_empty() => Value::Object(Default::default()),
        Some(m @ Value::Object(_)) => m,
        Some(_) => {
            return Err(Error::invalid_params(
                "invalid params: params must be an object of named fields, e.g. {\"name\": \"tiny\"}",
            ))
        }
    };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            Error::invalid_params(format!("invalid params: {inner}"))
        } else {
            Error::invalid_params(format!("invalid params: {path}: {inner}")).with_data(json!({"field": path}))
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

fn provider_info(p: Params, s: &Session) -> Result<Value> {
    let NoParams {} = parse(p)?;
    Ok(json!({
        "name": "xhyve-provider",
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "home": s.ctx.boxes.home.root.display().to_string(),
        "socket": s.ctx.socket.display().to_string(),
        "methods": method_names(),
    }))
}

fn box_add(p: Params, s: &Session) -> Result<Value> {
    let p: boxes::AddParams = parse(p)?;
    boxes::add(&s.ctx.boxes, p, s.reporter(), s.cancel())
}

fn box_list(p: Params, s: &Session) -> Result<Value> {
    let NoParams {} = parse(p)?;
    Ok(boxes::list(&s.ctx.boxes))
}

fn box_remove(p: Params, s: &Session) -> Result<Value> {
    let p: boxes::RemoveParams = parse(p)?;
    boxes::remove(&s.ctx.boxes, p)
}

fn machine_create(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::CreateParams = parse(p)?;
    s.ctx.machines.create(&s.ctx.boxes, p)
}

fn machine_list(p: Params, s: &Session) -> Result<Value> {
    let NoParams {} = parse(p)?;
    Ok(s.ctx.machines.list())
}

fn machine_state(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::IdParams = parse(p)?;
    s.ctx.machines.state(&p.id)
}

fn machine_start(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::StartParams = parse(p)?;
    s.ctx.machines.start(p, &s.reporter())
}

fn machine_stop(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::StopParams = parse(p)?;
    s.ctx.machines.stop(p)
}

fn machine_destroy(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::DestroyParams = parse(p)?;
    s.ctx.machines.destroy(p)
}

fn machine_ssh_info(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::IdParams = parse(p)?;
    s.ctx.machines.ssh_info(&p.id)
}

fn machine_wait_ssh(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::WaitParams = parse(p)?;
    s.ctx.machines.wait_ssh(p)
}

/// Streams the command's stdout and stderr as `output` notifications, then returns its status.
fn machine_exec(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::ExecParams = parse(p)?;
    let id = s.request_id.clone().unwrap_or(Value::Null);
    s.ctx.machines.exec(p, |stream, data| s.notify("output", json!({"request_id": id, "stream": stream, "data": data})))
}

fn machine_package(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::PackageParams = parse(p)?;
    s.ctx.machines.package(p, s.reporter())
}

fn network_create(p: Params, s: &Session) -> Result<Value> {
    let p: network::named::CreateParams = parse(p)?;
    s.ctx.machines.networks.create(p)
}

fn network_list(p: Params, s: &Session) -> Result<Value> {
    let NoParams {} = parse(p)?;
    s.ctx.machines.networks.list()
}

/// Refused while a machine has a NIC on it (the machines module knows which).
fn network_remove(p: Params, s: &Session) -> Result<Value> {
    let p: network::named::NameParams = parse(p)?;
    let users = s.ctx.machines.network_users(&p.name);
    s.ctx.machines.networks.remove(&p.name, &users)
}

fn machine_suspend(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::IdParams = parse(p)?;
    s.ctx.machines.suspend(&p.id)
}

fn machine_resume(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::IdParams = parse(p)?;
    s.ctx.machines.resume(&p.id)
}

fn machine_snapshot_save(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::SnapshotParams = parse(p)?;
    s.ctx.machines.snapshot_save(&p.id, &p.name)
}

fn machine_snapshot_restore(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::SnapshotParams = parse(p)?;
    s.ctx.machines.snapshot_restore(&p.id, &p.name)
}

fn machine_snapshot_list(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::IdParams = parse(p)?;
    s.ctx.machines.snapshot_list(&p.id)
}

fn machine_snapshot_delete(p: Params, s: &Session) -> Result<Value> {
    let p: machines::params::SnapshotParams = parse(p)?;
    s.ctx.machines.snapshot_delete(&p.id, &p.name)
}
