//! The filters on the real kernel: this test binary runs itself again as a child that sets the
//! sandbox up, starts a thread of one kind (or locks the main thread down) and makes a call; the
//! parent checks how the child ended.

use std::process::{Command, Output};

use syscalls::Sysno;

use super::kinds::{self, ThreadKind, ALL};
use super::*;

const CHILD: &str = "XHYVE_SANDBOX_CHILD";
const THIS_TEST: &str = "sandbox::tests::forbidden_calls_end_the_vmm_and_name_the_call";

/// What the child tries once its filter is in place.
#[derive(Clone, Copy, Debug)]
enum Try {
    /// socket(AF_INET): no kind but libslirp's has a network socket (vsock queues: AF_UNIX only).
    InetSocket,
    /// execve: no kind may run a program.
    Exec,
    /// mmap with PROT_EXEC: no kind may map executable memory.
    ExecMemory,
    /// KVM_CREATE_VM on a descriptor: not one of the running VM's ioctls.
    KvmCreateVm,
    /// getpid: every kind may.
    Allowed,
    /// Everything a virtio-blk queue does to a raw and a qcow2 image (opened before the filter):
    /// reads, writes, flushes, discards and zeroing, within and past the files' ends.
    DiskWork,
}

impl Try {
    fn parse(s: &str) -> Try {
        match s {
            "InetSocket" => Try::InetSocket,
            "Exec" => Try::Exec,
            "ExecMemory" => Try::ExecMemory,
            "KvmCreateVm" => Try::KvmCreateVm,
            "DiskWork" => Try::DiskWork,
            _ => Try::Allowed,
        }
    }

    fn call(self) -> Sysno {
        match self {
            Try::InetSocket => Sysno::socket,
            Try::Exec => Sysno::execve,
            Try::ExecMemory => Sysno::mmap,
            Try::KvmCreateVm => Sysno::ioctl,
            Try::Allowed | Try::DiskWork => Sysno::getpid,
        }
    }

    /// Makes the call; returns only if the filter let it through.
    fn run(self) {
        // SAFETY: plain system calls with arguments that touch nothing of ours (a null path,
        // an anonymous mapping that is unmapped again, an ioctl on stdin that KVM would refuse).
        unsafe {
            match self {
                Try::InetSocket => {
                    libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0);
                }
                Try::Exec => {
                    libc::syscall(libc::SYS_execve, std::ptr::null::<u8>(), 0, 0);
                }
                Try::ExecMemory => {
                    let prot = libc::PROT_READ | libc::PROT_EXEC;
                    let p =
                        libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
                    if p != libc::MAP_FAILED {
                        libc::munmap(p, 4096);
                    }
                }
                Try::KvmCreateVm => {
                    libc::syscall(libc::SYS_ioctl, 0, 0xae01u64, 0);
                }
                Try::Allowed | Try::DiskWork => {
                    libc::getpid();
                }
            }
        }
    }
}

/// The child's part: `XHYVE_SANDBOX_CHILD=KIND:TRY`.
fn child(spec: &str) -> ! {
    let (kind, what) = spec.split_once(':').unwrap();
    let kind = *ALL.iter().find(|k| k.name() == kind).unwrap();
    let what = Try::parse(what);
    init(false).unwrap();
    let disks = matches!(what, Try::DiskWork).then(open_disks);
    let probe = move || {
        match &disks {
            Some(disks) => disks.iter().for_each(|d| disk_work(d.as_ref())),
            None => what.run(),
        }
        eprintln!("CHILD-SURVIVED");
    };
    if kind == ThreadKind::Main {
        lock_down_main().unwrap();
        probe();
    } else {
        spawn(kind, "probe".into(), probe).unwrap().join().unwrap();
    }
    std::process::exit(0)
}

/// A raw and a qcow2 image of 1 MiB in a new directory, opened as a virtio-blk device opens them.
fn open_disks() -> Vec<Box<dyn crate::disk::Disk>> {
    use crate::disk::{self, tests, Format};
    let dir = tests::tempdir("sandbox");
    let (raw, qcow2) = (dir.join("disk.img"), dir.join("disk.qcow2"));
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    tests::create_qcow2(&qcow2, 1 << 20, None).unwrap();
    vec![disk::open(&raw, Format::Raw, false).unwrap(), disk::open(&qcow2, Format::Qcow2, false).unwrap()]
}

/// What a guest's requests make a disk do; an error is fine (the guest gets it), a filter
/// violation is not.
fn disk_work(d: &dyn crate::disk::Disk) {
    use crate::disk::tests::{get, put};
    let end = d.size();
    put(d, 0, &[7; 4096]).unwrap();
    put(d, end - 65536, &[9; 65536]).unwrap();
    assert_eq!(get(d, 0, 4096), vec![7; 4096]);
    for unmap in [false, true] {
        let _ = d.write_zeroes(8192, 65536, unmap);
        let _ = d.write_zeroes(end - 131072, 131072, unmap); // reaches the file's end
    }
    let _ = d.discard(4096, 65536);
    let _ = d.discard(end - 65536, 65536);
    d.flush().unwrap();
}

fn run_child(kind: ThreadKind, what: Try, mode: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([THIS_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{}:{what:?}", kind.name()))
        .env("XHYVE_SECCOMP", mode)
        .output()
        .unwrap()
}

#[test]
fn forbidden_calls_end_the_vmm_and_name_the_call() {
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
    }
    // The user-mode network makes the guest's connections (and the launcher may start it).
    let inet = |k: &ThreadKind| matches!(k, ThreadKind::Slirp | ThreadKind::Launcher);
    let mut cases: Vec<(ThreadKind, Try)> =
        ALL.iter().map(|k| (*k, if inet(k) { Try::Exec } else { Try::InetSocket })).collect();
    cases.extend([
        (ThreadKind::Vcpu, Try::Exec),
        (ThreadKind::Vcpu, Try::ExecMemory),
        (ThreadKind::Vcpu, Try::KvmCreateVm),
        (ThreadKind::Main, Try::Exec),
        (ThreadKind::Main, Try::KvmCreateVm),
        (ThreadKind::BlockQueue, Try::ExecMemory),
        (ThreadKind::Slirp, Try::ExecMemory),
        (ThreadKind::Control, Try::KvmCreateVm),
    ]);
    for (kind, what) in cases {
        let out = run_child(kind, what, "on");
        let err = String::from_utf8_lossy(&out.stderr);
        let call = what.call();
        let expected = format!("a {} thread made system call {} ({})", kind.name(), call.id(), call.name());
        assert_eq!(out.status.code(), Some(report::STATUS), "{kind:?} {what:?}: {err}");
        assert!(err.contains(&expected), "{kind:?} {what:?}: expected '{expected}' in: {err}");
        assert!(!err.contains("CHILD-SURVIVED"), "{kind:?} {what:?}: {err}");
    }
    // Allowed calls go through; `log` lets a forbidden one through (the kernel logs it); `off`
    // has no filter at all.
    for (kind, what, mode) in [
        (ThreadKind::Vcpu, Try::Allowed, "on"),
        (ThreadKind::Main, Try::Allowed, "on"),
        (ThreadKind::BlockQueue, Try::DiskWork, "on"),
        (ThreadKind::Vcpu, Try::InetSocket, "log"),
        (ThreadKind::Vcpu, Try::InetSocket, "off"),
    ] {
        let out = run_child(kind, what, mode);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{kind:?} {what:?} {mode}: {err}");
        assert!(err.contains("CHILD-SURVIVED"), "{kind:?} {what:?} {mode}: {err}");
    }
}

#[test]
fn every_list_compiles_and_the_launcher_allows_what_any_kind_does() {
    let launcher = ThreadKind::Launcher.allow_list();
    for kind in ALL {
        let list = kind.allow_list();
        assert!(!list.compile(SeccompAction::Trap).unwrap().is_empty());
        assert_eq!(launcher.clone().union(&list), launcher, "the launcher's list lacks some of {kind:?}'s");
        for call in [Sysno::execve, Sysno::execveat, Sysno::ptrace, Sysno::open, Sysno::fork] {
            assert!(!list.allows(call, 0, 0), "{kind:?} allows {}", call.name());
        }
        assert!(!list.allows(Sysno::mmap, 2, (libc::PROT_READ | libc::PROT_EXEC) as u64), "{kind:?}");
        // Only the control socket (a snapshot and its directory) and the user-mode network (the
        // host's resolv.conf) open files, only the latter opens network sockets; the launcher
        // holds the union of every list.
        let opens = matches!(kind, ThreadKind::Control | ThreadKind::Slirp | ThreadKind::Launcher);
        let reads =
            list.allows(Sysno::openat, 2, kinds::OPEN_READ) || list.allows(Sysno::openat, 2, kinds::OPEN_READ_STDIO);
        assert_eq!(reads, opens, "{kind:?} and openat");
        let rw = (libc::O_RDWR | libc::O_CLOEXEC) as u64;
        assert!(!list.allows(Sysno::openat, 2, rw), "{kind:?} opens files read-write");
        let inet = matches!(kind, ThreadKind::Slirp | ThreadKind::Launcher);
        assert_eq!(list.allows(Sysno::socket, 0, libc::AF_INET as u64), inet, "{kind:?} and AF_INET");
    }
    assert!(!ThreadKind::Vcpu.allow_list().allows(Sysno::clone, 0, 0), "vCPUs ask the launcher for threads");
}

#[test]
fn the_switch_reads_on_log_off() {
    for (value, mode) in [("", Mode::Enforce), ("on", Mode::Enforce), ("log", Mode::Log), ("off", Mode::Off)] {
        assert_eq!(Mode::parse(Some(value)).unwrap(), mode);
    }
    assert_eq!(Mode::parse(None).unwrap(), Mode::Enforce);
    assert!(Mode::parse(Some("maybe")).unwrap_err().contains("expected on, log or off"));
}
