//! The VMM's sandbox, Firecracker's model: once set-up is over, every thread runs under a seccomp
//! filter of its own kind that allows only the system calls that kind needs (with the argument
//! values it uses, for ioctl, socket, fcntl, kill, tgkill, prctl, mmap and mprotect: no thread
//! can map executable memory or make a KVM ioctl other than the running VM's), no thread holds a
//! capability or may gain one through exec, and descriptors inherited from the parent are closed
//! (close-on-exec from `init` on, so that no program run during set-up, passt, inherits them).
//! The one executable page made at set-up is the PVM layer's, for x87/SSE instructions it runs on
//! the host CPU (`pvm/host_exec.rs`: code that module encodes, never the guest's bytes).
//!
//! - `kinds.rs`: every thread kind and its allow-list, the one place to change.
//! - `allow.rs`: the allow-list type, compiled to BPF with `seccompiler`.
//! - `launcher.rs`: the thread that starts all others (filters are inherited and only narrow).
//! - `privileges.rs`: no-new-privileges, capabilities, inherited descriptors.
//! - `report.rs`: the SIGSYS handler that names a blocked call and ends the VMM (status 4).
//!
//! `XHYVE_SECCOMP` switches the filters: `on` (default) blocks a call outside the lists and ends
//! the VM with a log line naming the thread kind and the call; `log` lets such calls through and
//! has the kernel log them (`dmesg`: `audit: type=1326 ... comm="THREAD" ... syscall=N`), which
//! is how to find what a changed thread needs; `off` installs no filter (capabilities and
//! inherited descriptors are still dropped). `-v` prints each kind's list at start.
//!
//! Adding a thread: start it with [`spawn`] and a [`ThreadKind`] (never `std::thread` directly:
//! it would run with its creator's filter, or none). A new kind is a variant in `kinds.rs`, its
//! name, an entry in `kinds::ALL` and its list in `ThreadKind::allow_list`, built from
//! `every_thread()` plus what it calls; run it with `XHYVE_SECCOMP=log` to see what is missing,
//! and check it in the end-to-end test that starts it (`Guest.assert_sandboxed`, tests/guest.py).
//! A virtio device names its queue workers' kind in `VirtioDevice::queue_thread`.

mod allow;
mod kinds;
mod launcher;
mod privileges;
mod report;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use seccompiler::{BpfProgram, SeccompAction};

pub use kinds::ThreadKind;
use launcher::Launcher;

use crate::logger::log;

/// What `XHYVE_SECCOMP` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A call outside the list is not made: the VMM reports it and ends.
    Enforce,
    /// A call outside the list is made and the kernel logs it.
    Log,
    /// No filters.
    Off,
}

impl Mode {
    fn from_env() -> Result<Mode, String> {
        Mode::parse(std::env::var("XHYVE_SECCOMP").ok().as_deref())
    }

    fn parse(value: Option<&str>) -> Result<Mode, String> {
        match value {
            None | Some("") | Some("on") | Some("1") => Ok(Mode::Enforce),
            Some("log") => Ok(Mode::Log),
            Some("off") | Some("0") => Ok(Mode::Off),
            Some(other) => Err(format!("XHYVE_SECCOMP={other}: expected on, log or off")),
        }
    }
}

struct Sandbox {
    mode: Mode,
    /// Each kind's filter, compiled once (empty when the mode is Off).
    programs: HashMap<ThreadKind, BpfProgram>,
    /// Descriptors open before the VMM opened any: close-on-exec from `init`, closed by
    /// `lock_down_main`.
    inherited: Vec<RawFd>,
    launcher: OnceLock<Launcher>,
}

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

/// Sets the sandbox up before the VM is built: compiles every kind's filter, handles SIGSYS and
/// starts the launcher (itself filtered from here on). Threads started before this (none in
/// `xhyve`; unit tests and fuzz targets never call it) run unfiltered.
pub fn init(verbose: bool) -> Result<(), String> {
    let mode = Mode::from_env()?;
    let mismatch = match mode {
        Mode::Enforce => Some(SeccompAction::Trap),
        Mode::Log => Some(SeccompAction::Log),
        Mode::Off => None,
    };
    let mut programs = HashMap::new();
    if let Some(action) = mismatch {
        for kind in kinds::ALL {
            programs.insert(kind, kind.allow_list().compile(action.clone())?);
        }
    }
    report::install()?;
    fix_malloc_arenas();
    let sandbox = Sandbox { mode, programs, inherited: privileges::inherited_fds(), launcher: OnceLock::new() };
    SANDBOX.set(sandbox).map_err(|_| "the sandbox is set up once".to_string())?;
    let launcher = Launcher::start()?;
    let _ = SANDBOX.get().map(|s| s.launcher.set(launcher));
    match mode {
        Mode::Off => log("seccomp: XHYVE_SECCOMP=off: no system call filters"),
        Mode::Log => log("seccomp: XHYVE_SECCOMP=log: calls outside the allow-lists are made and logged by the kernel (dmesg, audit type=1326)"),
        Mode::Enforce => {}
    }
    if verbose && mode != Mode::Off {
        for kind in kinds::ALL {
            let list = kind.allow_list();
            log(format!("seccomp: {} threads: {} calls: {}", kind.name(), list.len(), list.describe()));
        }
    }
    Ok(())
}

/// glibc's malloc opens files from whichever thread needs them, which no filter allows: it reads
/// /sys/devices/system/cpu/online the first time a thread needs an arena of its own, and
/// /proc/sys/vm/overcommit_memory the first time it shrinks such an arena's heap (seen: the
/// libslirp thread, killed by its filter). One arena for every thread (the main one, grown with
/// brk, trimmed without that file) does neither; the VMM's threads allocate little once running.
fn fix_malloc_arenas() {
    // SAFETY: mallopt only changes a malloc tunable.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Starts a thread of `kind` named `name` running `body` under the kind's filter, which is in
/// place when this returns. Without `init` (unit tests, fuzzing) it is a plain thread.
pub fn spawn<T: Send + 'static>(
    kind: ThreadKind,
    name: String,
    body: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    match SANDBOX.get().and_then(|s| s.launcher.get()) {
        Some(launcher) => launcher.spawn(kind, name, body),
        None => std::thread::Builder::new().name(name).spawn(body),
    }
}

/// The last set-up step, on the main thread: inherited descriptors closed, privileges dropped,
/// the main thread's filter in place.
pub fn lock_down_main() -> Result<(), String> {
    if let Some(s) = SANDBOX.get() {
        privileges::close_inherited(&s.inherited);
    }
    lock_down(ThreadKind::Main)
}

/// Drops the calling thread's privileges and installs its kind's filter (the launcher and the
/// main thread; threads the launcher starts inherit the dropped privileges).
fn lock_down(kind: ThreadKind) -> Result<(), String> {
    privileges::drop_for_this_thread()?;
    enter(kind)
}

/// Installs `kind`'s filter on the calling thread.
fn enter(kind: ThreadKind) -> Result<(), String> {
    report::set_thread_kind(kind.name());
    let Some(s) = SANDBOX.get() else { return Ok(()) };
    match s.programs.get(&kind) {
        Some(program) => seccompiler::apply_filter(program).map_err(|e| {
            format!("seccomp: cannot install the {} filter: {e} (XHYVE_SECCOMP=off runs without filters)", kind.name())
        }),
        None if s.mode == Mode::Off => Ok(()),
        None => Err(format!("seccomp: no filter for {} threads", kind.name())),
    }
}
