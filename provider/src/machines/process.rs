//! Processes: identity by pid plus start time (`/proc/PID/stat` field 22), waiting for a process
//! that is not our child (pidfd, else /proc polling), the CPU time it gets (`Budget`: waits on a
//! guest counted in it), finding and probing `xhyve`, and the `run-vmm` runner that stays the
//! VMM's parent and records how it ended in `exit.json`.

use crate::state;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use xhyve_contract::features::{self, Features};

/// The runner's record of the VMM's end, `MACHINE_DIR/exit.json`.
pub const EXIT_FILE: &str = "exit.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExitRecord {
    pub pid: i32,
    /// Exit status when the VMM exited.
    pub status: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
    pub exited_at: u64,
}

/// The fields of `/proc/PID/stat` after comm: [0] is field 3 (state), [11] and [12] fields 14
/// and 15 (utime, stime), [19] field 22 (starttime).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    if pid <= 0 {
        return None;
    }
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: the fields after it start after the last ')'.
    Some(s[s.rfind(')')? + 1..].split_whitespace().map(str::to_string).collect())
}

/// (start time in clock ticks since boot, state letter) of `pid`, from `/proc/PID/stat`.
pub fn stat(pid: i32) -> Option<(u64, char)> {
    let f = stat_fields(pid)?;
    let state = f.first()?.chars().next()?;
    Some((f.get(19)?.parse().ok()?, state))
}

/// The CPU time (user and system, all threads) process `pid`, started at `start`, has used.
pub fn cpu_time(pid: i32, start: u64) -> Option<Duration> {
    let f = stat_fields(pid)?;
    if f.get(19)?.parse::<u64>().ok()? != start {
        return None;
    }
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|&h| h > 0)?;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// A running process, known by pid and start time (a pid reused by another process is not it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
}

impl Proc {
    pub fn cpu_time(self) -> Option<Duration> {
        cpu_time(self.pid, self.start)
    }
}

/// How long a wait on a guest may take. On a host whose guests are CPU-bound, wall time
/// stretches with the number of guests (twenty on two cores each get a tenth of one); the CPU
/// time the guest's xhyve gets does not. So with that process known, the budget is `cpu` of its
/// CPU time, capped at `wall` for a guest that idles instead of answering; without it, wall time.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    cpu: Duration,
    wall: Duration,
    vmm: Option<Proc>,
}

impl Budget {
    pub fn wall(wall: Duration) -> Budget {
        Budget { cpu: wall, wall, vmm: None }
    }

    /// `cpu` of the CPU time of `vmm`, at most `wall`.
    pub fn guest_cpu(cpu: Duration, vmm: Proc, wall: Duration) -> Budget {
        Budget { cpu, wall, vmm: Some(vmm) }
    }

    /// Starts spending it now.
    pub fn start(self) -> Spending {
        Spending { budget: self, began: Instant::now(), cpu_at_start: self.used() }
    }

    fn used(&self) -> Option<Duration> {
        self.vmm.and_then(Proc::cpu_time)
    }

    /// "N s of its CPU time (M s at most)", or "M s" for wall time.
    pub fn describe(&self) -> String {
        match self.vmm {
            Some(_) => format!("{} s of its CPU time ({} s at most)", self.cpu.as_secs(), self.wall.as_secs()),
            None => format!("{} s", self.wall.as_secs()),
        }
    }
}

/// A budget being spent since `Budget::start`.
pub struct Spending {
    budget: Budget,
    began: Instant,
    cpu_at_start: Option<Duration>,
}

impl Spending {
    /// Whether the wall time passed or the process spent the CPU time.
    pub fn exhausted(&self) -> bool {
        let cpu = self.budget.used().zip(self.cpu_at_start).map(|(now, then)| now.saturating_sub(then));
        self.wall_left().is_zero() || cpu.is_some_and(|c| c >= self.budget.cpu)
    }

    pub fn wall_left(&self) -> Duration {
        self.budget.wall.saturating_sub(self.began.elapsed())
    }

    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(t, _)| t)
}

/// True when `pid` is the process that started at `start` and has not exited (zombies have).
pub fn alive(pid: i32, start: u64) -> bool {
    matches!(stat(pid), Some((t, s)) if t == start && s != 'Z' && s != 'X')
}

/// Sends `sig` to `pid` only if it is still the process that started at `start`.
pub fn kill(pid: i32, start: u64, sig: i32) -> bool {
    if !alive(pid, start) {
        return false;
    }
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Blocks until process `pid` (started at `start`) has exited. Uses a pidfd (Linux 5.3+), which
/// works for processes that are not our children; falls back to polling /proc.
pub fn wait_exit(pid: i32, start: u64) {
    // SAFETY: pidfd_open takes a pid and flags; returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: a descriptor the kernel just gave us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // The pid may have been reused before the pidfd was opened: check it names our process.
        if !alive(pid, start) {
            return;
        }
        loop {
            let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, 1000) };
            if r > 0 || !alive(pid, start) {
                return;
            }
        }
    }
    while alive(pid, start) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `xhyve` binary: `$XHYVE_BIN`, else `xhyve` next to this binary, else the first on PATH.
pub fn find_xhyve() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("XHYVE_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("XHYVE_BIN={} is not a file", p.display())) };
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        let p = dir.join("xhyve");
        if p.is_file() {
            return Ok(p);
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("xhyve");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err("cannot find xhyve: set XHYVE_BIN, or put xhyve next to xhyve-provider or on PATH".into())
}

/// What an `xhyve` binary supports: its `--features` line (cached per path and modification
/// time).
pub fn features(xhyve: &Path) -> Result<Features, String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Key = (PathBuf, Option<std::time::SystemTime>);
    static CACHE: Mutex<Option<HashMap<Key, Features>>> = Mutex::new(None);
    let key = (xhyve.to_path_buf(), fs::metadata(xhyve).and_then(|m| m.modified()).ok());
    if let Some(f) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|c| c.get(&key)) {
        return Ok(f.clone());
    }
    let out = Command::new(xhyve)
        .arg(xhyve_contract::features::FLAG)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} {}: {e}", xhyve.display(), features::FLAG))?;
    let f = Features::from_output(&String::from_utf8_lossy(&out.stdout))
        .map_err(|e| format!("{} {}: {e}", xhyve.display(), features::FLAG))?;
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(key, f.clone());
    Ok(f)
}

/// Starts `run-vmm` (below) for `argv` in the machine's directory, in a session of its own so
/// that it and the VMM outlive the daemon; returns the runner and the VMM's pid and start time
/// (its first stdout line). `vmm_log` takes both processes' stderr.
pub fn spawn_runner(dir: &Path, argv: &[String], vmm_log: fs::File) -> Result<(std::process::Child, i32, u64), String> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run-vmm")
        .arg(dir)
        .arg("--")
        .args(argv)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(vmm_log);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start the VMM runner: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = io::BufReader::new(out).read_line(&mut line);
    }
    let mut it = line.split_whitespace();
    match (it.next().and_then(|p| p.parse::<i32>().ok()), it.next().and_then(|p| p.parse::<u64>().ok())) {
        (Some(pid), Some(st)) => Ok((child, pid, st)),
        _ => {
            let _ = child.wait();
            Err(format!(
                "cannot start {}: {}",
                argv.first().map_or("xhyve", String::as_str),
                line.trim().trim_start_matches("error: ")
            ))
        }
    }
}

/// `xhyve-provider run-vmm MACHINE_DIR -- XHYVE ARGS...`: runs the VMM as its child, prints
/// `PID STARTTIME` on stdout (then closes it), waits, and writes `MACHINE_DIR/exit.json`
/// atomically with the exit status or signal. Started in its own session by the daemon, so it
/// outlives the daemon; the daemon watches it (its child, or a pidfd after a restart).
pub fn run_vmm(dir: &Path, argv: &[String]) -> ExitCode {
    let mut out = io::stdout();
    let Some((prog, args)) = argv.split_first() else {
        let _ = writeln!(out, "error: run-vmm needs a command");
        return ExitCode::from(2);
    };
    let stdout_to_log = io::stderr().as_fd().try_clone_to_owned().map(Stdio::from).unwrap_or_else(|_| Stdio::null());
    let mut child = match Command::new(prog).args(args).stdin(Stdio::null()).stdout(stdout_to_log).spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "error: cannot run {prog}: {e}");
            return ExitCode::from(127);
        }
    };
    let pid = child.id() as i32;
    let st = start_time(pid).unwrap_or(0);
    let _ = writeln!(out, "{pid} {st}");
    let _ = out.flush();
    // Close stdout (the daemon's pipe): point fd 1 at /dev/null.
    if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto our own stdout.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
    // Stray terminal or session signals must not end the runner: signals are for the VMM.
    // (Set after the spawn: ignored dispositions would be inherited by xhyve.)
    // SAFETY: setting dispositions to SIG_IGN.
    unsafe {
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(s, libc::SIG_IGN);
        }
    }
    let status = loop {
        match child.wait() {
            Ok(s) => break Some(s),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("xhyve-provider run-vmm: waiting for {pid}: {e}");
                break None;
            }
        }
    };
    let rec = ExitRecord {
        pid,
        status: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        exited_at: state::now(),
    };
    eprintln!(
        "xhyve-provider run-vmm: xhyve (pid {pid}) ended: {}",
        match (rec.status, rec.signal) {
            (Some(c), _) => format!("exit status {c}"),
            (_, Some(s)) => format!("signal {s}"),
            _ => "unknown".into(),
        }
    );
    if let Err(e) = state::write_json_atomic(&dir.join(EXIT_FILE), &rec) {
        eprintln!("xhyve-provider run-vmm: writing {EXIT_FILE}: {e}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

pub fn read_exit(dir: &Path) -> Option<ExitRecord> {
    serde_json::from_slice(&fs::read(dir.join(EXIT_FILE)).ok()?).ok()
}

/// Signal names for exit reasons.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert!(alive(me, t));
        assert!(!alive(me, t + 1));
        assert!(!alive(-1, t));
    }

    #[test]
    fn own_cpu_time_grows() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        let before = cpu_time(me, t).unwrap();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time(me, t).unwrap() > before);
        assert_eq!(cpu_time(me, t + 1), None, "another process with that pid");
    }

    /// A process whose CPU time stands still (a sleeping child) spends its budget only by the
    /// wall-time cap; one that computes (this one, spinning) spends it by its CPU time.
    #[test]
    fn budgets_are_spent_in_cpu_time_capped_by_wall_time() {
        let ms = Duration::from_millis;
        let mut sleeper = Command::new("sleep").arg("10").spawn().unwrap();
        let pid = sleeper.id() as i32;
        let idle = Proc { pid, start: start_time(pid).unwrap() };
        let s = Budget::guest_cpu(ms(50), idle, ms(400)).start();
        while !s.exhausted() {
            std::thread::sleep(ms(10));
        }
        assert!(s.elapsed() >= ms(400), "{:?}", s.elapsed());
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();

        let me = std::process::id() as i32;
        let busy = Proc { pid: me, start: start_time(me).unwrap() };
        let s = Budget::guest_cpu(ms(100), busy, Duration::from_secs(60)).start();
        while !s.exhausted() {
            std::hint::black_box(());
        }
        assert!(s.elapsed() < Duration::from_secs(30), "{:?}", s.elapsed());
        assert!(busy.cpu_time().unwrap() >= ms(100));

        let s = Budget::wall(ms(100)).start();
        assert!(!s.exhausted() && s.wall_left() > ms(0));
        std::thread::sleep(ms(120));
        assert!(s.exhausted() && s.wall_left().is_zero());
        assert_eq!(s.budget().describe(), "0 s");
    }

    #[test]
    fn waits_for_a_process_that_exits() {
        let mut c = Command::new("sleep").arg("0.3").spawn().unwrap();
        let pid = c.id() as i32;
        let t = start_time(pid).unwrap();
        let reaper = std::thread::spawn(move || c.wait());
        let began = std::time::Instant::now();
        wait_exit(pid, t);
        assert!(began.elapsed() >= Duration::from_millis(200));
        reaper.join().unwrap().unwrap();
        assert!(!alive(pid, t));
    }
}
