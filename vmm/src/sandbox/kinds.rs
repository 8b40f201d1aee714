//! Every kind of thread the VMM runs once the guest is up, and the system calls each may make.
//! This is the one list to change when a thread or a device's host side changes (see the module
//! docs of `crate::sandbox` for how to add a kind).

use syscalls::Sysno::*;

use super::allow::AllowList;
use crate::hypervisor::kvm;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread after set-up: waits for the VM's end, turns SIGTERM into power-button
    /// presses, reports with `-v`, restores the terminal, ends the passt children.
    Main,
    /// Starts every other thread (`sandbox::spawn`), so that a thread kind that must not create
    /// threads can still ask for one (a vCPU starting queue workers at DRIVER_OK).
    Launcher,
    /// Runs a vCPU and the device emulation of its port I/O and MMIO exits.
    Vcpu,
    /// Kicks the vCPUs once a second so that a halted guest is noticed.
    HaltWatch,
    /// Feeds a console's host input (stdin, a pty, a socket client) to a UART or virtio-console.
    ConsoleInput,
    /// Waits for frames on the network backend and kicks the virtio-net receive queue.
    NetPoll,
    /// Accepts host connections on the virtio-vsock socket.
    VsockListen,
    /// Carries one virtio-vsock connection's host side.
    VsockConn,
    /// Raises a PCI INTx line again after the guest's EOI while the device still wants service.
    IntxResample,
    /// Copies passt's messages to the VMM's log.
    PasstLog,
    /// Runs libslirp, the `user` network: the guest's TCP and UDP as host sockets, DNS, forwards.
    Slirp,
    /// Serves the control socket (`--control`): pause, resume, save a snapshot, quit.
    Control,
    /// Kicks the vCPUs every 10 ms for `XHYVE_PROFILE`'s samples.
    Profile,
    /// The queue workers of each virtio device type (`VirtioDevice::queue_thread`).
    BlockQueue,
    NetQueue,
    RngQueue,
    ConsoleQueue,
    VsockQueue,
}

pub const ALL: [ThreadKind; 18] = [
    ThreadKind::Main,
    ThreadKind::Launcher,
    ThreadKind::Vcpu,
    ThreadKind::HaltWatch,
    ThreadKind::ConsoleInput,
    ThreadKind::NetPoll,
    ThreadKind::VsockListen,
    ThreadKind::VsockConn,
    ThreadKind::IntxResample,
    ThreadKind::PasstLog,
    ThreadKind::Slirp,
    ThreadKind::Control,
    ThreadKind::Profile,
    ThreadKind::BlockQueue,
    ThreadKind::NetQueue,
    ThreadKind::RngQueue,
    ThreadKind::ConsoleQueue,
    ThreadKind::VsockQueue,
];

// Argument values the lists restrict calls to.
const PROT_NONE: u64 = libc::PROT_NONE as u64;
const PROT_READ: u64 = libc::PROT_READ as u64;
const PROT_RW: u64 = (libc::PROT_READ | libc::PROT_WRITE) as u64;
const F_DUPFD_CLOEXEC: u64 = libc::F_DUPFD_CLOEXEC as u64;
/// openat's flags for a snapshot's temporary file (Rust's `create_new`) and for its directory.
pub const OPEN_NEW_FILE: u64 = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC) as u64;
pub const OPEN_READ: u64 = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
/// C's fopen(PATH, "r").
pub const OPEN_READ_STDIO: u64 = libc::O_RDONLY as u64;

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Launcher => "launcher",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::HaltWatch => "halt-watch",
            ThreadKind::ConsoleInput => "console-input",
            ThreadKind::NetPoll => "net-poll",
            ThreadKind::VsockListen => "vsock-listen",
            ThreadKind::VsockConn => "vsock-conn",
            ThreadKind::IntxResample => "intx-resample",
            ThreadKind::PasstLog => "passt-log",
            ThreadKind::Slirp => "net-slirp",
            ThreadKind::Control => "control",
            ThreadKind::Profile => "profile",
            ThreadKind::BlockQueue => "virtio-blk-queue",
            ThreadKind::NetQueue => "virtio-net-queue",
            ThreadKind::RngQueue => "virtio-rng-queue",
            ThreadKind::ConsoleQueue => "virtio-console-queue",
            ThreadKind::VsockQueue => "virtio-vsock-queue",
        }
    }

    /// What a thread of this kind may call: what every thread needs, plus its own.
    pub fn allow_list(self) -> AllowList {
        let every = every_thread();
        match self {
            ThreadKind::Main => every
                // Signals to power-button presses; the press raises the SCI.
                .calls(&[rt_sigtimedwait])
                .call_with(ioctl, 1, &[kvm::irq_line_ioctl(), libc::TCSETS])
                // -v's report: KVM's binary statistics, resident guest pages, peak RSS.
                .calls(&[pread64, mincore, getrusage])
                .call_with(fcntl, 1, &[F_DUPFD_CLOEXEC])
                // Ending the passt children (`net::passt`).
                .call_with(kill, 1, &[libc::SIGTERM as u64, libc::SIGKILL as u64])
                .calls(&[wait4]),
            ThreadKind::Launcher => ALL
                .iter()
                .filter(|k| **k != ThreadKind::Launcher)
                .fold(every, |l, k| l.union(&k.allow_list()))
                // pthread_create, and what a new thread does before its own filter is in: its
                // robust futex list, restartable sequences, name, signal stack, and the filter.
                .calls(&[clone, clone3, set_robust_list, rseq, sched_getaffinity, seccomp])
                .call_with(prctl, 0, &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64]),
            ThreadKind::Vcpu => every
                .call_with(ioctl, 1, &[kvm::vcpu_ioctls(), kvm::vm_interrupt_ioctls()].concat())
                // UEFI firmware's flash maps its variable store in and out (`firmware::flash`).
                .call_with(ioctl, 1, &[kvm::memory_region_ioctl()])
                // Device emulation: console output, eventfds (irqfds, queue notifications, a
                // queue worker's stop fd at DRIVER_OK).
                .calls(&[read, write, eventfd2, dup])
                .call_with(fcntl, 1, &[F_DUPFD_CLOEXEC]),
            // The vCPU kick.
            ThreadKind::HaltWatch | ThreadKind::Profile => every.call_with(tgkill, 2, &[libc::SIGRTMIN() as u64]),
            ThreadKind::ConsoleInput => {
                every.calls(&[read, recvfrom, write, accept4, poll]).call_with(fcntl, 1, &[F_DUPFD_CLOEXEC])
            }
            ThreadKind::NetPoll | ThreadKind::IntxResample => every.calls(&[poll, read, write]),
            ThreadKind::VsockListen => every.calls(&[accept4]),
            ThreadKind::VsockConn => every.calls(&[read, recvfrom, write, sendto, shutdown, poll]),
            ThreadKind::PasstLog => every.calls(&[read]),
            // The guest's connections and datagrams become the host's: any IPv4/IPv6 socket.
            // libslirp's DNS forwarder reads /etc/resolv.conf again when its mtime changes
            // (fopen "r": read-only, seen with XHYVE_SECCOMP=log).
            ThreadKind::Slirp => every
                .call_with(socket, 0, &[libc::AF_INET as u64, libc::AF_INET6 as u64])
                .calls(&[poll, ppoll, read, write, recvfrom, sendto, recvmsg, sendmsg, connect, bind, listen])
                .calls(&[accept, accept4, shutdown, setsockopt, getsockopt, getsockname, getpeername])
                .call_with(fcntl, 1, &[libc::F_GETFL as u64, libc::F_SETFL as u64, F_DUPFD_CLOEXEC])
                .call_with(ioctl, 1, &[libc::FIONBIO, libc::FIONREAD])
                .call_with(openat, 2, &[OPEN_READ_STDIO])
                .calls(&[newfstatat, fstat, lseek]),
            // Pausing kicks the vCPUs; a snapshot reads the VM's state, flushes the disks, writes
            // a file beside its target, syncs it and renames it over; resuming restarts the
            // queue workers (through the launcher) with new stop eventfds.
            ThreadKind::Control => every
                .calls(&[accept4, read, recvfrom, sendto, eventfd2])
                .call_with(fcntl, 1, &[F_DUPFD_CLOEXEC])
                .call_with(tgkill, 2, &[libc::SIGRTMIN() as u64])
                .call_with(ioctl, 1, &kvm::vm_state_ioctls())
                .call_with(openat, 2, &[OPEN_NEW_FILE, OPEN_READ])
                .calls(&[newfstatat, fstat, statx, lseek, pwrite64, pread64, ftruncate, fallocate])
                .calls(&[fsync, fdatasync, rename, renameat, renameat2, unlink, unlinkat]),
            ThreadKind::BlockQueue => {
                // ftruncate: imago grows a qcow2 image's file when a zeroing request reaches past
                // its end.
                queue_worker(every)
                    .calls(&[pread64, pwrite64, preadv, pwritev, fdatasync, fsync, fallocate, ftruncate, lseek])
            }
            // TAP: read/write; passt: recv/send on its socket, poll while its buffer is full.
            ThreadKind::NetQueue => queue_worker(every).calls(&[recvfrom, sendto, readv, writev]),
            ThreadKind::RngQueue => queue_worker(every), // getrandom is in every thread's list
            ThreadKind::ConsoleQueue => queue_worker(every).calls(&[sendto, writev]),
            // A guest connection request connects to the host's unix socket PATH_PORT.
            ThreadKind::VsockQueue => queue_worker(every)
                .call_with(socket, 0, &[libc::AF_UNIX as u64])
                .calls(&[connect, recvfrom, sendto, shutdown])
                .call_with(fcntl, 1, &[F_DUPFD_CLOEXEC]),
        }
    }
}

/// What every thread needs once it runs: memory (never executable), locks and condition
/// variables, sleeps and clocks, signal return and masks, its log lines on stderr, closing what
/// it drops, HashMap keys, and ending (or aborting on a bug).
fn every_thread() -> AllowList {
    AllowList::default()
        .calls(&[brk, munmap, madvise, mremap])
        .call_with(mmap, 2, &[PROT_NONE, PROT_READ, PROT_RW])
        .call_with(mprotect, 2, &[PROT_NONE, PROT_READ, PROT_RW])
        .calls(&[futex, sched_yield])
        .calls(&[clock_gettime, clock_nanosleep, nanosleep])
        .calls(&[rt_sigreturn, rt_sigprocmask, sigaltstack])
        .calls(&[write, close, getrandom])
        .calls(&[exit, exit_group, gettid, getpid])
        .call_with(tgkill, 2, &[libc::SIGABRT as u64])
}

/// A virtio queue worker: waits on its notify and stop eventfds, signals its interrupt (routing
/// an MSI-X vector the first time it fires with a new message).
fn queue_worker(every: AllowList) -> AllowList {
    every.calls(&[read, write, poll]).call_with(ioctl, 1, &[kvm::gsi_routing_ioctl()])
}
