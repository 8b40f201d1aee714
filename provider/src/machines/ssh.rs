//! SSH to machines: where to reach a guest's port 22 (the host port forwarded to it in network
//! user, its leased address in network shared), and the methods that use it: `machine.ssh_info`,
//! `machine.wait_ssh` (a real handshake and publickey authentication with libssh2, retried until
//! a deadline) and `machine.exec` (a command over SSH with its output streamed as notifications,
//! on the session the last login left in `ssh_pool`). Below the methods, the libssh2 session code
//! they share.

use super::params::{ExecParams, WaitParams};
use super::process::{Budget, Proc};
use super::record::{MachineRecord, NetworkMode, State};
use super::ssh_pool::Target;
use super::{console, invalid_field, wrong_state, Machines};
use crate::error::{code, Error, Result};
use crate::home::Home;
use crate::logger::log;
use crate::nic;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use xhyve_contract::mac::format_mac;

/// The guest user of Vagrant boxes.
pub const USERNAME: &str = "vagrant";
/// The host address the SSH port is forwarded on.
pub const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The guest's SSH port (forwarded to in network user, connected to in network shared).
pub const GUEST_PORT: u16 = 22;
/// Vagrant's well-known insecure private key (its public half is in the tiny box's
/// `authorized_keys`); written to `$XHYVE_HOME/insecure_private_key` when the daemon starts.
pub const INSECURE_PRIVATE_KEY: &str = include_str!("../../../boxes/tiny/vagrant.key");
pub const KEY_FILE: &str = "insecure_private_key";
/// Default seconds of `machine.wait_ssh`.
pub const DEFAULT_WAIT: f64 = 300.0;
/// How many of the console's last lines a failed wait_ssh quotes.
const CONSOLE_LINES: usize = 10;
/// How long `machine.exec` keeps trying to log in when it has no kept session: on a nested-KVM
/// host a busy guest's key exchange alone can take over 10 s.
pub const EXEC_LOGIN: Duration = Duration::from_secs(60);

impl Machines {
    /// `machine.ssh_info`: where to SSH to, or null when the machine does not run (or has no
    /// forwarded SSH port, or in network shared no address yet).
    pub fn ssh_info(&self, id: &str) -> Result<Value> {
        let dir = self.existing(id)?;
        let rec = MachineRecord::load(&dir)?;
        if rec.state != State::Running {
            return Ok(Value::Null);
        }
        Ok(match self.ssh_addr(&rec) {
            Ok(addr) => info(addr, &self.key_path()),
            Err(_) => Value::Null,
        })
    }

    /// The address to SSH to: user mode's forward on 127.0.0.1, shared mode's leased address
    /// and port 22; Err says why there is none (yet).
    fn ssh_addr(&self, rec: &MachineRecord) -> std::result::Result<SocketAddr, String> {
        match rec.network.mode {
            NetworkMode::User => rec
                .ssh_port
                .map(|p| SocketAddr::from((HOST, p)))
                .ok_or_else(|| "the machine has no forwarded SSH port (no user-mode network device)".into()),
            NetworkMode::Shared => {
                let has_tap = rec.process.as_ref().is_none_or(|p| p.argv.iter().any(|a| a.contains(",virtio-tap,")));
                if !has_tap {
                    return Err("the machine runs without a network device (its xhyve has no virtio-tap)".into());
                }
                let mac = nic::mac_of_uuid(&rec.uuid).ok_or_else(|| format!("uuid {:?} is not a UUID", rec.uuid))?;
                match self.net.bound(&mac) {
                    Ok(Some(ip)) => Ok(SocketAddr::from((ip, GUEST_PORT))),
                    Ok(None) => Err(format!(
                        "no DHCP lease for the machine's MAC address {} yet (the guest has not asked for an address)",
                        format_mac(&mac)
                    )),
                    Err(e) => Err(e.message),
                }
            }
            NetworkMode::None => Err("the machine has no network (network none)".into()),
        }
    }

    pub fn key_path(&self) -> PathBuf {
        self.home.root.join(KEY_FILE)
    }

    /// Where machine `id`'s SSH session goes now: its address and its xhyve process; Err says
    /// why there is none (not running, no address yet).
    fn ssh_target(&self, id: &str) -> Result<std::result::Result<Target, String>> {
        let rec = MachineRecord::load(&self.existing(id)?)?;
        if rec.state != State::Running {
            return Err(wrong_state(
                format!(
                    "machine {id} ({}) is {}: start it first{}",
                    rec.name,
                    rec.state.as_str(),
                    rec.exit_reason.as_deref().map(|r| format!(" (last run: {r})")).unwrap_or_default()
                ),
                rec.state,
            ));
        }
        let process = rec.process.as_ref().map(|p| Proc { pid: p.pid, start: p.start_time });
        Ok(self.ssh_addr(&rec).map(|addr| Target { addr, process }))
    }

    /// Logs in with one of `keys` until `deadline`; errors when the machine is not (or no
    /// longer) running, or with the step that failed last. The session is what the machine's
    /// later `exec` calls use (`keep`).
    fn ssh_login(&self, id: &str, keys: &[PathBuf], deadline: Instant) -> Result<(Conn, u32, Target)> {
        let last = std::cell::RefCell::new(None::<Target>);
        let r = wait_login(
            || {
                let t = self.ssh_target(id)?;
                Ok(t.map(|t| {
                    *last.borrow_mut() = Some(t);
                    (t.addr, t.process)
                }))
            },
            keys,
            ATTEMPT,
            deadline,
        )?;
        let last = last.into_inner();
        match (r, last) {
            (Ok((c, n)), Some(t)) => Ok((c, n, t)),
            (Ok(_), None) => unreachable!("a login needs an address"),
            (Err(f), _) => {
                // What the guest last said: a boot that went wrong (firmware that found nothing
                // to boot, a guest stuck in its init) shows there, not in the SSH step.
                let console = console::tail(&self.dir(id), CONSOLE_LINES);
                let mut m = format!("SSH to machine {id} failed: {}: {}", f.step.as_str(), f.detail);
                if let Some(c) = &console {
                    m.push_str(&format!("; its console ({}) ended with:\n{c}", console::LOG));
                }
                Err(Error::new(code::SSH_FAILED, m)
                    .with_data(json!({"step": f.step.as_str(), "detail": f.detail, "console": console})))
            }
        }
    }

    /// Keeps machine `id`'s session for its next `exec`.
    fn keep(&self, id: &str, target: Target, conn: Conn) {
        self.ssh_pool.put(id, target, conn, |other, t| matches!(self.ssh_target(other), Ok(Ok(now)) if now == *t));
    }

    /// The insecure key, written again if it went missing.
    fn insecure_key(&self) -> Result<PathBuf> {
        let key = self.key_path();
        if !key.is_file() {
            install_key(&self.home).map_err(|e| Error::internal(format!("writing {}: {e}", key.display())))?;
        }
        Ok(key)
    }

    /// `machine.wait_ssh`: a real SSH login (handshake and the key), retried until `timeout`.
    pub fn wait_ssh(&self, p: WaitParams) -> Result<Value> {
        let timeout = p.timeout.unwrap_or(DEFAULT_WAIT);
        if !(0.0..=86400.0).contains(&timeout) {
            return Err(invalid_field("timeout", "seconds from 0 to 86400"));
        }
        let keys = match p.private_key_path {
            None => vec![self.insecure_key()?],
            Some(v) if v.is_empty() => return Err(invalid_field("private_key_path", "an empty list")),
            Some(v) => v
                .into_iter()
                .map(|k| match PathBuf::from(&k) {
                    p if p.is_absolute() && p.is_file() => Ok(p),
                    _ => Err(invalid_field("private_key_path", format!("{k:?} is not an absolute path of a file"))),
                })
                .collect::<Result<_>>()?,
        };
        let began = Instant::now();
        let (c, attempts, target) = self.ssh_login(&p.id, &keys, began + Duration::from_secs_f64(timeout))?;
        let secs = began.elapsed().as_secs_f64();
        log(&format!("machine {}: SSH login after {secs:.1} s ({attempts} attempts)", p.id));
        let mut v = info(target.addr, &c.key);
        v["id"] = json!(p.id);
        v["attempts"] = json!(attempts);
        v["seconds"] = json!((secs * 1000.0).round() / 1000.0);
        self.keep(&p.id, target, c);
        Ok(v)
    }

    /// `machine.exec`: runs `command` over SSH; `out(stream, text)` gets its output. Uses the
    /// machine's kept session if it still opens a channel, else logs in with the insecure key.
    pub fn exec(&self, p: ExecParams, out: impl FnMut(&str, &str)) -> Result<Value> {
        if p.command.contains('\0') {
            return Err(invalid_field("command", "has a NUL"));
        }
        let failed = |e: String| Error::new(code::SSH_FAILED, format!("machine {}: exec over SSH: {e}", p.id));
        let kept = match self.ssh_target(&p.id)? {
            Ok(t) => self.ssh_pool.take(&p.id, &t).map(|c| (c, t)),
            Err(_) => None,
        };
        let (c, target, ch) = match kept.and_then(|(c, t)| open_channel(&c).ok().map(|ch| (c, t, ch))) {
            Some(x) => x,
            None => {
                let (c, _, t) = self.ssh_login(&p.id, &[self.insecure_key()?], Instant::now() + EXEC_LOGIN)?;
                let ch = open_channel(&c).map_err(failed)?;
                (c, t, ch)
            }
        };
        let (status, signal) = run(&c, ch, &p.command, out).map_err(failed)?;
        self.keep(&p.id, target, c);
        let mut v = json!({"exit_status": status});
        if let Some(sig) = signal {
            v["exit_signal"] = json!(sig);
        }
        Ok(v)
    }
}

/// Writes the insecure key (mode 0600, atomically) so ssh clients can use its path.
pub fn install_key(home: &Home) -> io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = home.root.join(KEY_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|t| t == INSECURE_PRIVATE_KEY) {
        return Ok(path);
    }
    let tmp = home.root.join(format!(".{KEY_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(INSECURE_PRIVATE_KEY.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// True when nothing listens on 127.0.0.1:`port` (we could bind it).
pub fn port_free(port: u16) -> bool {
    port != 0 && TcpListener::bind((HOST, port)).is_ok()
}

/// The host port for a machine's SSH forward: `prev` while it is free, else a new free port
/// the kernel picks that no other machine has recorded (`taken`).
pub fn pick_port(prev: Option<u16>, taken: &HashSet<u16>) -> io::Result<u16> {
    if let Some(p) = prev.filter(|p| port_free(*p)) {
        return Ok(p);
    }
    for _ in 0..64 {
        let p = TcpListener::bind((HOST, 0))?.local_addr()?.port();
        if !taken.contains(&p) {
            return Ok(p);
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrNotAvailable, "no free TCP port on 127.0.0.1"))
}

/// `machine.ssh_info`'s answer for a running machine: its forwarded port on 127.0.0.1 (network
/// user) or its own address (network shared).
pub fn info(addr: SocketAddr, key: &Path) -> Value {
    json!({
        "host": addr.ip().to_string(),
        "port": addr.port(),
        "username": USERNAME,
        "private_key_path": [key.display().to_string()],
    })
}

/// Which step of an SSH login failed (wait_ssh names the last one in its timeout error), in
/// the order a login takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    NoAddress,
    PortClosed,
    Banner,
    Auth,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::NoAddress => "no address yet",
            Step::PortClosed => "port closed",
            Step::Banner => "banner",
            Step::Auth => "auth refused",
        }
    }
}

/// A failed login attempt: the step and what libssh2 or the socket said.
#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub detail: String,
}

/// One login: TCP connect, SSH handshake (banner, key exchange) and publickey authentication
/// with each of `keys` in turn until one is accepted, each step bounded by `limit`.
pub fn login(addr: SocketAddr, keys: &[PathBuf], limit: Duration) -> std::result::Result<Conn, Failure> {
    let limit = limit.max(Duration::from_millis(200));
    handshake(connect(addr, limit)?, keys, limit)
}

fn connect(addr: SocketAddr, limit: Duration) -> std::result::Result<TcpStream, Failure> {
    TcpStream::connect_timeout(&addr, limit)
        .map_err(|e| Failure { step: Step::PortClosed, detail: format!("connecting to {addr}: {e}") })
}

/// How much longer in wall time than in the guest's CPU time a login attempt may take: a guest
/// that idles instead of answering (a server stuck in a connection) is given up on too.
const WALL_PER_CPU: u32 = 10;

/// One login as `login`, bounded by `cpu` of the CPU time the guest's xhyve (`vmm`) gets during
/// it (`process::Budget`) instead of wall time: a wall-time limit gives up on logins that are
/// merely slow on a loaded host, leaving the guest one more server process to finish. A watchdog
/// shuts the socket down once the budget is spent (WALL_PER_CPU times `cpu` in wall time at
/// most). Also returns whether it ran out of time.
fn login_on_guest_cpu(
    addr: SocketAddr,
    keys: &[PathBuf],
    cpu: Duration,
    vmm: Proc,
    left: Duration,
) -> (std::result::Result<Conn, Failure>, bool) {
    let wall = (cpu * WALL_PER_CPU).min(left).max(Duration::from_millis(200));
    let tcp = match connect(addr, wall.min(cpu).max(Duration::from_millis(200))) {
        Ok(t) => t,
        Err(f) => return (Err(f), false),
    };
    let watched = match tcp.try_clone() {
        Ok(t) => t,
        Err(e) => return (Err(Failure { step: Step::Banner, detail: format!("socket: {e}") }), false),
    };
    let spending = Budget::guest_cpu(cpu, vmm, wall).start();
    // (finished, fired): the watchdog (this thread) fires only while the handshake runs.
    let state = std::sync::Mutex::new((false, false));
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let r = std::thread::scope(|scope| {
        let login = scope.spawn(|| {
            let r = handshake(tcp, keys, wall);
            state.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
            let _ = done.send(());
            r
        });
        loop {
            let _ = finished.recv_timeout(Duration::from_millis(100));
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            if st.0 {
                break;
            }
            if spending.exhausted() {
                st.1 = true;
                let _ = watched.shutdown(std::net::Shutdown::Both);
                break;
            }
        }
        login.join().unwrap_or_else(|_| Err(Failure { step: Step::Banner, detail: "the login panicked".into() }))
    });
    let fired = state.lock().unwrap_or_else(|e| e.into_inner()).1;
    if !fired {
        return (r, false);
    }
    let step = match &r {
        Err(f) => f.step,
        Ok(_) => Step::Auth,
    };
    let detail =
        format!("no login within {} ({:.0} s passed)", spending.budget().describe(), spending.elapsed().as_secs_f64());
    (Err(Failure { step, detail }), true)
}

/// The SSH handshake and authentication on a connected socket, each step bounded by `limit`.
fn handshake(tcp: TcpStream, keys: &[PathBuf], limit: Duration) -> std::result::Result<Conn, Failure> {
    let addr = tcp.peer_addr().map_or_else(|_| "the guest".to_string(), |a| a.to_string());
    let _ = tcp.set_nodelay(true);
    let fd = tcp.as_raw_fd();
    let mut s = ssh2::Session::new().map_err(|e| Failure { step: Step::Banner, detail: format!("libssh2: {e}") })?;
    s.set_tcp_stream(tcp);
    s.set_timeout(limit.as_millis().min(u32::MAX as u128) as u32);
    s.handshake().map_err(|e| Failure { step: Step::Banner, detail: format!("SSH handshake with {addr}: {e}") })?;
    let mut refused = Vec::new();
    for key in keys {
        match s.userauth_pubkey_file(USERNAME, None, key, None) {
            Ok(()) if s.authenticated() => return Ok(Conn { session: s, fd, key: key.clone() }),
            Ok(()) => refused.push(format!("{}: not authenticated", key.display())),
            Err(e) => refused.push(format!("{}: {e}", key.display())),
        }
    }
    Err(Failure {
        step: Step::Auth,
        detail: format!("publickey authentication as {USERNAME} refused ({})", refused.join("; ")),
    })
}

/// An authenticated session, its socket (for poll) and the key it logged in with.
pub struct Conn {
    pub session: ssh2::Session,
    fd: std::os::fd::RawFd,
    pub key: PathBuf,
}

/// How long the first login attempt may take (in the guest's CPU time when its xhyve is known:
/// `login_on_guest_cpu`). An attempt that runs out of time gives the next one twice as long: on
/// a slow guest the banner comes late because sshd starts a new process per connection, and
/// each attempt given up on leaves the guest one more of those to run.
const ATTEMPT: Duration = Duration::from_secs(20);

/// Retries `login` until it succeeds or `deadline`, the first attempt bounded by `first`
/// (ATTEMPT), and each one that runs out of time doubling that; `target()` is asked before each
/// attempt for the address and the guest's xhyve, whose CPU time bounds the attempt when known
/// (Err(why): the machine has no address yet), and may end the wait with an error (the machine
/// stopped). Returns the session and the number of attempts; on timeout the failure of the last
/// attempt, unless the deadline cut that one short before it got as far as the one before.
pub fn wait_login(
    mut target: impl FnMut() -> Result<std::result::Result<(SocketAddr, Option<Proc>), String>>,
    keys: &[PathBuf],
    first: Duration,
    deadline: Instant,
) -> Result<std::result::Result<(Conn, u32), Failure>> {
    let mut attempts = 0;
    let mut prev: Option<Failure> = None;
    let mut limit = first;
    let mut refused = Duration::ZERO;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let this_limit = limit;
        let fail = match target()? {
            Err(detail) => Failure { step: Step::NoAddress, detail },
            Ok((a, vmm)) => {
                let began = Instant::now();
                let (r, timed_out) = match vmm.filter(|v| v.cpu_time().is_some()) {
                    Some(v) => login_on_guest_cpu(a, keys, limit, v, left),
                    None => {
                        let r = login(a, keys, left.min(limit));
                        let timed_out = r.is_err() && began.elapsed() >= limit * 9 / 10;
                        (r, timed_out)
                    }
                };
                match r {
                    Ok(s) => return Ok(Ok((s, attempts))),
                    Err(f) => {
                        limit = next_limit(limit, timed_out);
                        f
                    }
                }
            }
        };
        let now = Instant::now();
        if now >= deadline {
            return Ok(Err(match prev {
                Some(p) if left < this_limit && p.step > fail.step => p,
                _ => fail,
            }));
        }
        // The user-mode stack accepts at once and drops the connection while the guest does not
        // listen yet: retry soon, without spinning. A refused key cost the guest a whole login
        // (a process, a key exchange): retrying it every 250 ms would keep a slow guest too busy
        // to answer at all, so those retries back off (1, 2, 4, 8 s).
        let pause = if fail.step == Step::Auth {
            refused = (refused * 2).clamp(Duration::from_secs(1), Duration::from_secs(8));
            refused
        } else {
            Duration::from_millis(250)
        };
        prev = Some(fail);
        std::thread::sleep((deadline - now).min(pause));
    }
}

/// The limit of the attempt after one under `limit`: twice as long if it ran out of time
/// (libssh2 gives up a little early at times: 90% of a wall-time limit counts), the same if it
/// failed sooner.
fn next_limit(limit: Duration, timed_out: bool) -> Duration {
    if timed_out {
        limit * 2
    } else {
        limit
    }
}

/// Splits off the longest valid UTF-8 prefix of `buf` (a character cut between two reads waits
/// for the next); invalid bytes become U+FFFD.
fn take_utf8(buf: &mut Vec<u8>, flush: bool) -> String {
    let n = match std::str::from_utf8(buf) {
        Ok(_) => buf.len(),
        Err(e) if e.error_len().is_none() && !flush => e.valid_up_to(),
        Err(_) => buf.len(),
    };
    let out = String::from_utf8_lossy(&buf[..n]).into_owned();
    buf.drain(..n);
    out
}

/// How long a kept session may take to open a channel before `exec` logs in anew. Long: sshd
/// opens none until the login's PAM session is up, and on a slow guest pam_systemd waits for the
/// user's systemd instance to start; a session whose machine stopped is never reused.
const OPEN_CHANNEL: Duration = Duration::from_secs(300);

/// A session channel on `c` (bounded by OPEN_CHANNEL: a session whose guest is gone fails).
fn open_channel(c: &Conn) -> std::result::Result<ssh2::Channel, String> {
    c.session.set_blocking(true);
    c.session.set_timeout(OPEN_CHANNEL.as_millis() as u32);
    c.session.channel_session().map_err(|e| format!("opening an SSH session channel: {e}"))
}

/// Runs `command` on channel `ch` of `c`; `out(stream, text)` gets stdout and stderr as they
/// come. Returns (exit status, exit signal name).
pub fn run(
    c: &Conn,
    mut ch: ssh2::Channel,
    command: &str,
    mut out: impl FnMut(&str, &str),
) -> std::result::Result<(i32, Option<String>), String> {
    let s = &c.session;
    let fd = c.fd;
    s.set_timeout(0);
    ch.exec(command).map_err(|e| format!("starting the command: {e}"))?;
    s.set_blocking(false);
    let mut bufs = [Vec::new(), Vec::new()];
    let mut chunk = [0u8; 32768];
    loop {
        let mut progressed = false;
        for (i, name) in [(0usize, "stdout"), (1, "stderr")] {
            let r = if i == 0 { ch.read(&mut chunk) } else { ch.stderr().read(&mut chunk) };
            match r {
                Ok(0) => {}
                Ok(n) => {
                    progressed = true;
                    bufs[i].extend_from_slice(&chunk[..n]);
                    let t = take_utf8(&mut bufs[i], false);
                    if !t.is_empty() {
                        out(name, &t);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("reading the command's {name}: {e}")),
            }
        }
        if ch.eof() {
            break;
        }
        if !progressed && fd >= 0 {
            let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd; the socket outlives the call.
            unsafe { libc::poll(&mut p, 1, 100) };
        }
    }
    for (i, name) in [(0usize, "stdout"), (1, "stderr")] {
        let t = take_utf8(&mut bufs[i], true);
        if !t.is_empty() {
            out(name, &t);
        }
    }
    s.set_blocking(true);
    s.set_timeout(30_000);
    let _ = ch.wait_close();
    let status = ch.exit_status().map_err(|e| format!("reading the exit status: {e}"))?;
    let signal = ch.exit_signal().ok().and_then(|x| x.exit_signal);
    Ok((status, signal))
}

#[cfg(test)]
mod tests {
    use super::super::process;
    use super::*;

    #[test]
    fn utf8_split_across_reads() {
        let mut b = "héllo".as_bytes()[..2].to_vec();
        assert_eq!(take_utf8(&mut b, false), "h");
        b.extend_from_slice(&"héllo".as_bytes()[2..]);
        assert_eq!(take_utf8(&mut b, false), "éllo");
        let mut b = vec![b'a', 0xff, b'b'];
        assert_eq!(take_utf8(&mut b, false), "a\u{fffd}b");
        let mut b = vec![0xc3];
        assert_eq!(take_utf8(&mut b, true), "\u{fffd}");
    }

    /// A server that accepts for 2.5 s and never sends its banner (a guest's sshd still
    /// starting its per-connection process); the thread answers how many connections it held.
    fn silent_server() -> (SocketAddr, std::thread::JoinHandle<usize>) {
        let l = TcpListener::bind((HOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let held = std::thread::spawn(move || {
            let mut conns = Vec::new();
            l.set_nonblocking(true).unwrap();
            let end = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < end {
                if let Ok((c, _)) = l.accept() {
                    conns.push(c);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            conns.len()
        });
        (addr, held)
    }

    /// Against the silent server, each timed-out attempt doubles the next one's limit, so the
    /// guest is not handed a new connection every ATTEMPT.
    #[test]
    fn timed_out_attempts_get_longer() {
        let (addr, held) = silent_server();
        let key = PathBuf::from("/nonexistent");
        let deadline = Instant::now() + Duration::from_millis(1900);
        let r = wait_login(|| Ok(Ok((addr, None))), &[key], Duration::from_millis(200), deadline).unwrap();
        let f = r.err().expect("no banner, no login");
        assert_eq!(f.step, Step::Banner, "{}", f.detail);
        // Attempts of 200, 400 and 800 ms with 250 ms pauses (and perhaps the end of the deadline):
        // at most 4 connections, where a fixed 200 ms limit makes 5.
        let conns = held.join().unwrap();
        assert!((3..=4).contains(&conns), "{conns} connections");
    }

    /// The same server, with the guest's xhyve known: an attempt lasts until the guest spent its
    /// limit in CPU time, not until that much wall time passed. An idle guest (a sleeping
    /// process: its CPU time stands still) keeps its one connection until WALL_PER_CPU times the
    /// limit; a guest that computes all the time (this process, spinning) is given up on after
    /// its CPU time, again and again.
    #[test]
    fn attempts_count_the_guest_cpu_time() {
        let key = PathBuf::from("/nonexistent");
        let ms = Duration::from_millis;
        let mut sleeper = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        let pid = sleeper.id() as i32;
        let idle = Proc { pid, start: process::start_time(pid).unwrap() };
        let (addr, held) = silent_server();
        let deadline = Instant::now() + ms(1900);
        let f = wait_login(|| Ok(Ok((addr, Some(idle)))), std::slice::from_ref(&key), ms(200), deadline)
            .unwrap()
            .err()
            .expect("no banner, no login");
        assert_eq!(f.step, Step::Banner, "{}", f.detail);
        assert_eq!(held.join().unwrap(), 1, "one connection, kept while the guest idles");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();

        let me = std::process::id() as i32;
        let busy = Proc { pid: me, start: process::start_time(me).unwrap() };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spin = {
            let stop = stop.clone();
            std::thread::spawn(move || while !stop.load(std::sync::atomic::Ordering::Relaxed) {})
        };
        // Attempts of 400 ms of its CPU time, then 800: the second connection comes once this
        // process has spun for 400 ms, where an idle guest keeps its first for 4 s.
        let (addr, held) = silent_server();
        let deadline = Instant::now() + ms(3500);
        let r = wait_login(|| Ok(Ok((addr, Some(busy)))), &[key], ms(400), deadline).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spin.join().unwrap();
        assert!(r.is_err(), "no banner, no login");
        let conns = held.join().unwrap();
        assert!(conns >= 2, "{conns} connections");
    }

    #[test]
    fn only_a_timed_out_attempt_doubles_the_limit() {
        let s = Duration::from_secs;
        assert_eq!(next_limit(s(20), true), s(40));
        assert_eq!(next_limit(s(40), false), s(40));
    }

    #[test]
    fn ports() {
        let l = TcpListener::bind((HOST, 0)).unwrap();
        let busy = l.local_addr().unwrap().port();
        assert!(!port_free(busy));
        let p = pick_port(Some(busy), &HashSet::new()).unwrap();
        assert_ne!(p, busy);
        drop(l);
        assert_eq!(pick_port(Some(busy), &HashSet::new()).unwrap(), busy);
    }

    #[test]
    fn closed_port_is_named() {
        let p = TcpListener::bind((HOST, 0)).unwrap().local_addr().unwrap().port();
        let a = SocketAddr::from((HOST, p));
        let Err(f) = login(a, &[PathBuf::from("/nonexistent")], Duration::from_millis(500)) else {
            panic!("logged in to a closed port")
        };
        assert_eq!(f.step, Step::PortClosed);
    }

    #[test]
    fn key_matches_the_public_key() {
        assert!(INSECURE_PRIVATE_KEY.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    }
}
