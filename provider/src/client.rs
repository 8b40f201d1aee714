//! `xhyve-provider call` and `box add`: connect (starting the daemon when none runs), send one
//! request, show progress notifications, return the result.

use crate::home::Home;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub enum CallError {
    /// The daemon answered with a JSON-RPC error.
    Rpc { code: i64, message: String, data: Option<Value> },
    /// No daemon could be reached, or the connection broke.
    Transport(String),
}

fn connect(home: &Home, autostart: bool) -> Result<UnixStream, String> {
    let sock = home.socket();
    match UnixStream::connect(&sock) {
        Ok(s) => return Ok(s),
        Err(e) if !autostart => {
            return Err(format!("cannot connect to {}: {e} (is `xhyve-provider serve` running?)", sock.display()))
        }
        Err(_) => {}
    }
    start_daemon(home)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match UnixStream::connect(&sock) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                let log = std::fs::read_to_string(home.log_file()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "started xhyve-provider serve but cannot connect to {}: {e}; {}:\n{}",
                    sock.display(),
                    home.log_file().display(),
                    tail.join("\n")
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    }
}

/// Spawns `xhyve-provider serve --home HOME` detached (own session, log in `provider.log`).
fn start_daemon(home: &Home) -> Result<(), String> {
    home.create().map_err(|e| format!("cannot create {}: {e}", home.root.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    // Private: it records the daemon's errors, which name the user's files.
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(home.log_file())
        .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)).map(|_| f))
        .map_err(|e| format!("cannot open {}: {e}", home.log_file().display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve").arg("--home").arg(&home.root).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("cannot start xhyve-provider serve: {e}"))?;
    Ok(())
}

/// Shows `progress` notifications: a bar on a terminal, plain lines (at most one a second per
/// phase, plus the last) otherwise.
struct ProgressView {
    tty: bool,
    bar: Option<(String, ProgressBar)>,
    plain: Option<(String, Instant)>,
}

impl ProgressView {
    fn new() -> ProgressView {
        ProgressView { tty: io::stderr().is_terminal(), bar: None, plain: None }
    }

    fn update(&mut self, p: &Value) {
        let phase = p.get("phase").and_then(Value::as_str).unwrap_or("progress").to_string();
        let done = p.get("done").and_then(Value::as_u64).unwrap_or(0);
        let total = p.get("total").and_then(Value::as_u64);
        if self.tty {
            if self.bar.as_ref().is_none_or(|(ph, _)| *ph != phase) {
                if let Some((_, b)) = self.bar.take() {
                    b.finish();
                }
                let bar = match total {
                    Some(t) => ProgressBar::new(t).with_style(
                        ProgressStyle::with_template("{msg:>9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                            .unwrap()
                            .progress_chars("=> "),
                    ),
                    None => ProgressBar::new_spinner().with_style(
                        ProgressStyle::with_template("{msg:>9} {spinner} {bytes} {bytes_per_sec}").unwrap(),
                    ),
                };
                bar.set_message(phase.clone());
                self.bar = Some((phase.clone(), bar));
            }
            let (_, bar) = self.bar.as_ref().unwrap();
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_position(done);
        } else {
            let now = Instant::now();
            let due = Some(done) == total
                || self
                    .plain
                    .as_ref()
                    .is_none_or(|(ph, t)| *ph != phase || now.duration_since(*t) >= Duration::from_secs(1));
            if due {
                self.plain = Some((phase.clone(), now));
                match total {
                    Some(t) => eprintln!("{phase}: {done}/{t} bytes"),
                    None => eprintln!("{phase}: {done} bytes"),
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some((_, b)) = self.bar.take() {
            b.finish();
        }
    }
}

/// Sends one request and waits for its response, showing progress on stderr.
pub fn call(home: &Home, method: &str, params: Value, autostart: bool) -> Result<Value, CallError> {
    let stream = connect(home, autostart).map_err(CallError::Transport)?;
    let mut w = stream.try_clone().map_err(|e| CallError::Transport(e.to_string()))?;
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(w, "{req}").map_err(|e| CallError::Transport(format!("sending the request: {e}")))?;
    let mut view = ProgressView::new();
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line.map_err(|e| CallError::Transport(format!("reading the response: {e}")))?;
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if msg.get("id").is_none() {
            match msg.get("method").and_then(Value::as_str) {
                Some("progress") => view.update(msg.get("params").unwrap_or(&Value::Null)),
                // machine.exec's output goes to stderr: stdout carries only the JSON result.
                Some("output") => {
                    if let Some(d) = msg.pointer("/params/data").and_then(Value::as_str) {
                        let mut e = std::io::stderr();
                        let _ = e.write_all(d.as_bytes()).and_then(|_| e.flush());
                    }
                }
                _ => {}
            }
            continue;
        }
        view.finish();
        if let Some(e) = msg.get("error") {
            return Err(CallError::Rpc {
                code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: e.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_string(),
                data: e.get("data").cloned(),
            });
        }
        return Ok(msg.get("result").cloned().unwrap_or(Value::Null));
    }
    view.finish();
    Err(CallError::Transport("the daemon closed the connection before answering".into()))
}
