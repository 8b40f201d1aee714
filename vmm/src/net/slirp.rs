//! Rootless user-mode networking through libslirp (QEMU's user-mode TCP/IP stack, Debian's
//! `libslirp0`), the `-s SLOT,virtio-net,user[,hostfwd=...]` backend, addressed as
//! `super::user` says (libslirp's DHCP server, DNS forwarder and host-loopback mapping).
//!
//! Why libslirp: it is the stack QEMU's `-netdev user` has used for decades, maintained as a
//! library, packaged by Debian, and it carries every TCP pattern: a forwarded port to a guest
//! service that speaks first (libslirp completes the handshake on its own) and a long upload to
//! a peer that stays silent (no handshake timer on established connections), the two that
//! Debian 12's passt breaks (see `passt.rs`). It runs in the VMM process: no child to supervise.
//!
//! libslirp is not thread-safe, so one thread, `net-slirp`, owns the instance and does
//! everything with it: it polls libslirp's host sockets, its timers and its end of a
//! `SOCK_SEQPACKET` socketpair whose other end is the device's backend (`FrameFd`, as a TAP or a
//! switch port is). Frames the guest sends arrive on the pair and go to `slirp_input`; frames
//! libslirp sends go out on the pair, or wait in a bounded queue while the device is not
//! reading (beyond it they are dropped, as libslirp allows: TCP retransmits). The thread ends
//! when the device's end closes.
//!
//! System calls of `net-slirp` (for a seccomp allow-list): poll, read/write and
//! recvfrom/sendto/recvmsg/sendmsg on its sockets, socket/connect/setsockopt/getsockopt/
//! getsockname/getpeername/shutdown/close/fcntl/ioctl(FIONBIO) for the guest's outbound
//! connections (TCP, UDP, ICMP datagram sockets), accept/accept4 on the forwarded ports'
//! listeners (bound before the thread starts), openat/fstat/newfstatat/read/close of
//! `/etc/resolv.conf` (libslirp re-reads it for DNS), clock_gettime, memory allocation
//! (mmap/munmap/madvise/brk).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use libslirp_sys as sys;

use super::fd::{seqpacket_pair, FrameFd};
use super::user::{HostFwd, DNS, GATEWAY, GUEST_ADDR, MTU, PREFIX_LEN};
use super::{Backend, MAX_FRAME};
use crate::sandbox::{self, ThreadKind};

/// Frames for the guest that wait while the device does not read: at most this many bytes.
const QUEUE_MAX: usize = 4 << 20;
/// Frames from the guest handed to libslirp per loop, so its sockets are served in between.
const INPUT_BATCH: usize = 256;

/// The device's end of the stack: frames to and from the `net-slirp` thread.
pub struct Slirp {
    frames: FrameFd,
}

impl Slirp {
    /// A libslirp instance with the forwards (their listeners bound now: a taken port is an
    /// error here, before the VM starts) and its thread.
    pub fn spawn(fwds: &[HostFwd]) -> Result<Slirp, String> {
        let (ours, theirs) = seqpacket_pair().map_err(|e| format!("socketpair: {e}"))?;
        // Room for bursts both ways (the kernel caps it at net.core.wmem_max).
        for fd in [&ours, &theirs] {
            set_sndbuf(fd.as_raw_fd(), 1 << 20);
        }
        let stack = Stack::new(theirs)?;
        for f in fwds {
            stack.add_hostfwd(f)?;
        }
        let stack = SendStack(stack);
        sandbox::spawn(ThreadKind::Slirp, "net-slirp".into(), move || stack.run())
            .map_err(|e| format!("cannot start the user-mode network thread: {e}"))?;
        Ok(Slirp { frames: FrameFd::new(ours, "the user-mode network (libslirp) thread") })
    }
}

impl Backend for Slirp {
    fn fd(&self) -> RawFd {
        self.frames.fd()
    }
    fn recv(&self, buf: &mut Vec<u8>) -> io::Result<bool> {
        self.frames.recv(buf)
    }
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.frames.send(frame)
    }
}

fn set_sndbuf(fd: RawFd, bytes: c_int) {
    // SAFETY: sets one int option on a socket we own; failure leaves the default.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
}

/// A libslirp timer (`timer_new`): its callback and when it is due (ms of `clock_get_ns`).
struct Timer {
    cb: sys::SlirpTimerCb,
    cb_opaque: *mut c_void,
    due_ms: Cell<Option<i64>>,
}

/// Everything the `net-slirp` thread owns. libslirp's callbacks get `&Stack` (the opaque
/// pointer) while the loop holds one too, so the state they change is in cells.
struct Stack {
    slirp: Cell<*mut sys::Slirp>,
    /// The thread's end of the socketpair.
    sock: OwnedFd,
    start: Instant,
    /// Boxed: a timer's address is libslirp's handle for it and must not move.
    #[allow(clippy::vec_box)]
    timers: RefCell<Vec<Box<Timer>>>,
    /// This round's poll set: our socket first, then what `slirp_pollfds_fill` adds.
    pollfds: RefCell<Vec<libc::pollfd>>,
    /// Frames for the guest that found the socketpair full.
    queue: RefCell<VecDeque<Vec<u8>>>,
    queued_bytes: Cell<usize>,
    dropped: Cell<u64>,
}

impl Drop for Stack {
    /// Closes libslirp's sockets (the forwarded ports' listeners among them).
    fn drop(&mut self) {
        let slirp = self.slirp.replace(std::ptr::null_mut());
        if !slirp.is_null() {
            // SAFETY: the instance is live, and no callback (which would need `self`) follows.
            unsafe { sys::slirp_cleanup(slirp) };
        }
    }
}

/// The stack moves to its thread once, before any other thread can reach it.
struct SendStack(Box<Stack>);
// SAFETY: the libslirp instance and the timers' pointers are used by one thread at a time: the
// spawning thread until the move, the `net-slirp` thread after it.
unsafe impl Send for SendStack {}

impl SendStack {
    /// The thread's body (a method, so the closure takes the whole `SendStack`).
    fn run(self) {
        self.0.run();
    }
}

static CALLBACKS: sys::SlirpCb = sys::SlirpCb {
    send_packet: Some(cb_send_packet),
    guest_error: Some(cb_guest_error),
    clock_get_ns: Some(cb_clock_get_ns),
    timer_new: Some(cb_timer_new),
    timer_free: Some(cb_timer_free),
    timer_mod: Some(cb_timer_mod),
    register_poll_fd: Some(cb_nothing_fd),
    unregister_poll_fd: Some(cb_nothing_fd),
    notify: Some(cb_nothing),
};

fn in_addr(a: std::net::Ipv4Addr) -> sys::in_addr {
    sys::in_addr::from(a)
}

impl Stack {
    fn new(sock: OwnedFd) -> Result<Box<Stack>, String> {
        let stack = Box::new(Stack {
            slirp: Cell::new(std::ptr::null_mut()),
            sock,
            start: Instant::now(),
            timers: RefCell::new(Vec::new()),
            pollfds: RefCell::new(Vec::new()),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            dropped: Cell::new(0),
        });
        let zero6 = sys::in6_addr { s6_addr: [0; 16] };
        let cfg = sys::SlirpConfig {
            // Version 3: the fields of the crate's struct (version 4 adds callbacks it lacks).
            version: 3,
            restricted: 0,
            in_enabled: true,
            vnetwork: in_addr(std::net::Ipv4Addr::new(10, 0, 2, 0)),
            vnetmask: in_addr(std::net::Ipv4Addr::from(u32::MAX << (32 - PREFIX_LEN))),
            vhost: in_addr(GATEWAY),
            // IPv4 only, as the passt backend (`-4`): no router advertisements to time.
            in6_enabled: false,
            vprefix_addr6: zero6,
            vprefix_len: 0,
            vhost6: zero6,
            vhostname: std::ptr::null(),
            tftp_server_name: std::ptr::null(),
            tftp_path: std::ptr::null(),
            bootfile: std::ptr::null(),
            vdhcp_start: in_addr(GUEST_ADDR),
            vnameserver: in_addr(DNS),
            vnameserver6: zero6,
            vdnssearch: std::ptr::null_mut(),
            vdomainname: std::ptr::null(),
            if_mtu: MTU as usize,
            if_mru: MTU as usize,
            // The gateway stands for the host's 127.0.0.1 (the convention `user` documents).
            disable_host_loopback: false,
            enable_emu: false,
            outbound_addr: std::ptr::null(),
            outbound_addr6: std::ptr::null(),
            disable_dns: false,
            disable_dhcp: false,
        };
        let opaque = (&*stack as *const Stack).cast_mut().cast();
        // SAFETY: the config and callbacks outlive the call (libslirp copies the config; the
        // callbacks are static); `opaque` is the boxed stack, which outlives the instance.
        let slirp = unsafe { sys::slirp_new(&cfg, &CALLBACKS, opaque) };
        if slirp.is_null() {
            return Err("libslirp: cannot create the user-mode network".into());
        }
        stack.slirp.set(slirp);
        Ok(stack)
    }

    fn add_hostfwd(&self, f: &HostFwd) -> Result<(), String> {
        let host = f.host_addr.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        // SAFETY: a live instance; plain values.
        let r = unsafe {
            sys::slirp_add_hostfwd(
                self.slirp.get(),
                f.udp as c_int,
                in_addr(host),
                f.host_port as c_int,
                in_addr(GUEST_ADDR),
                f.guest_port as c_int,
            )
        };
        if r < 0 {
            let proto = if f.udp { "udp" } else { "tcp" };
            return Err(format!(
                "hostfwd={proto}:{host}:{}-:{}: cannot listen on {host}:{} ({})",
                f.host_port,
                f.guest_port,
                f.host_port,
                io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    fn now_ms(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }

    /// The thread's loop: until the device's end of the pair closes.
    fn run(&self) {
        loop {
            let mut timeout: u32 = u32::MAX;
            {
                let mut p = self.pollfds.borrow_mut();
                p.clear();
                let out = if self.queue.borrow().is_empty() { 0 } else { libc::POLLOUT };
                p.push(libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN | out, revents: 0 });
            }
            let opaque = (self as *const Stack).cast_mut().cast();
            // SAFETY: a live instance; `add_poll` appends to `pollfds` through `opaque`.
            unsafe { sys::slirp_pollfds_fill(self.slirp.get(), &mut timeout, Some(cb_add_poll), opaque) };
            let now = self.now_ms();
            for t in self.timers.borrow().iter() {
                if let Some(due) = t.due_ms.get() {
                    timeout = timeout.min((due - now).clamp(0, u32::MAX as i64) as u32);
                }
            }
            let wait = if timeout == u32::MAX { -1 } else { timeout.min(i32::MAX as u32) as c_int };
            let r = {
                let mut p = self.pollfds.borrow_mut();
                // SAFETY: `p` holds p.len() valid pollfds for the call's duration.
                unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, wait) }
            };
            let ours = self.pollfds.borrow()[0].revents;
            // SAFETY: a live instance; `get_revents` reads `pollfds` through `opaque`.
            unsafe { sys::slirp_pollfds_poll(self.slirp.get(), (r < 0) as c_int, Some(cb_get_revents), opaque) };
            self.fire_timers();
            if ours & libc::POLLOUT != 0 {
                self.flush_queue();
            }
            if ours & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && !self.take_guest_frames() {
                break;
            }
        }
    }

    /// Runs the timers that are due; a callback may add, change or free timers.
    fn fire_timers(&self) {
        loop {
            let now = self.now_ms();
            let due = self.timers.borrow().iter().find(|t| t.due_ms.get().is_some_and(|d| d <= now)).map(|t| {
                t.due_ms.set(None);
                (t.cb, t.cb_opaque)
            });
            match due {
                // SAFETY: libslirp's own callback with its own argument, on its thread.
                Some((Some(cb), arg)) => unsafe { cb(arg) },
                Some((None, _)) => {}
                None => return,
            }
        }
    }

    /// Frames the guest sent, into libslirp; false once the device's end closed.
    fn take_guest_frames(&self) -> bool {
        let mut buf = vec![0u8; MAX_FRAME];
        for _ in 0..INPUT_BATCH {
            // SAFETY: reads at most buf.len() bytes into buf.
            let n = unsafe { libc::read(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                0 => return false,
                n if n > 0 => {
                    // SAFETY: a live instance; the frame is valid for the call.
                    unsafe { sys::slirp_input(self.slirp.get(), buf.as_ptr(), n as c_int) }
                }
                _ => {
                    let e = io::Error::last_os_error();
                    return match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => true,
                        _ => {
                            crate::logger::log(format!("user-mode network: {e}; the link carries no more frames"));
                            false
                        }
                    };
                }
            }
        }
        true
    }

    /// A frame libslirp sends the guest: out now, or queued behind the others.
    fn send_to_guest(&self, frame: &[u8]) {
        if self.queue.borrow().is_empty() && self.try_send(frame) {
            return;
        }
        if self.queued_bytes.get() + frame.len() > QUEUE_MAX {
            let n = self.dropped.get() + 1;
            self.dropped.set(n);
            if n.is_power_of_two() {
                crate::logger::log(format!("user-mode network: the guest is not reading: {n} frame(s) dropped"));
            }
            return;
        }
        self.queued_bytes.set(self.queued_bytes.get() + frame.len());
        self.queue.borrow_mut().push_back(frame.to_vec());
    }

    fn flush_queue(&self) {
        let mut q = self.queue.borrow_mut();
        while let Some(f) = q.front() {
            if !self.try_send(f) {
                return;
            }
            self.queued_bytes.set(self.queued_bytes.get() - f.len());
            q.pop_front();
        }
    }

    /// False when the pair is full (the frame stays the caller's); a frame the pair refuses
    /// otherwise (its end closed) is gone.
    fn try_send(&self, frame: &[u8]) -> bool {
        loop {
            // SAFETY: writes frame.len() bytes from frame.
            let n = unsafe { libc::write(self.sock.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            if n >= 0 {
                return true;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return false,
                _ => return true,
            }
        }
    }
}

/// The `Stack` behind libslirp's opaque pointer.
///
/// # Safety
/// `opaque` must be the pointer `Stack::new` gave libslirp, on the thread that owns the stack.
unsafe fn stack<'a>(opaque: *mut c_void) -> &'a Stack {
    &*(opaque as *const Stack)
}

unsafe extern "C" fn cb_send_packet(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    stack(opaque).send_to_guest(std::slice::from_raw_parts(buf.cast(), len));
    len as isize
}

unsafe extern "C" fn cb_guest_error(msg: *const c_char, _opaque: *mut c_void) {
    crate::logger::log(format!("user-mode network: guest error: {}", CStr::from_ptr(msg).to_string_lossy()));
}

unsafe extern "C" fn cb_clock_get_ns(opaque: *mut c_void) -> i64 {
    stack(opaque).start.elapsed().as_nanos() as i64
}

unsafe extern "C" fn cb_timer_new(cb: sys::SlirpTimerCb, cb_opaque: *mut c_void, opaque: *mut c_void) -> *mut c_void {
    let t = Box::new(Timer { cb, cb_opaque, due_ms: Cell::new(None) });
    let ptr = (&*t as *const Timer).cast_mut().cast();
    stack(opaque).timers.borrow_mut().push(t);
    ptr
}

unsafe extern "C" fn cb_timer_free(timer: *mut c_void, opaque: *mut c_void) {
    stack(opaque).timers.borrow_mut().retain(|t| !std::ptr::eq(&**t, timer as *const Timer));
}

unsafe extern "C" fn cb_timer_mod(timer: *mut c_void, expire_ms: i64, opaque: *mut c_void) {
    if let Some(t) = stack(opaque).timers.borrow().iter().find(|t| std::ptr::eq(&***t, timer as *const Timer)) {
        t.due_ms.set(Some(expire_ms));
    }
}

/// libslirp's poll flags and poll(2)'s.
const POLL_FLAGS: [(c_int, libc::c_short); 5] = [
    (sys::SLIRP_POLL_IN, libc::POLLIN),
    (sys::SLIRP_POLL_OUT, libc::POLLOUT),
    (sys::SLIRP_POLL_PRI, libc::POLLPRI),
    (sys::SLIRP_POLL_ERR, libc::POLLERR),
    (sys::SLIRP_POLL_HUP, libc::POLLHUP),
];

unsafe extern "C" fn cb_add_poll(fd: c_int, events: c_int, opaque: *mut c_void) -> c_int {
    let ev = POLL_FLAGS.iter().filter(|(s, _)| events & s != 0).fold(0, |ev, (_, p)| ev | p);
    let mut p = stack(opaque).pollfds.borrow_mut();
    p.push(libc::pollfd { fd, events: ev, revents: 0 });
    (p.len() - 1) as c_int
}

unsafe extern "C" fn cb_get_revents(idx: c_int, opaque: *mut c_void) -> c_int {
    let p = stack(opaque).pollfds.borrow();
    let Some(pfd) = usize::try_from(idx).ok().and_then(|i| p.get(i)) else { return 0 };
    POLL_FLAGS.iter().filter(|(_, p)| pfd.revents & p != 0).fold(0, |ev, (s, _)| ev | s)
}

unsafe extern "C" fn cb_nothing_fd(_fd: c_int, _opaque: *mut c_void) {}

unsafe extern "C" fn cb_nothing(_opaque: *mut c_void) {}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x15];

    /// An ARP request from the guest for `target`.
    fn arp_request(target: std::net::Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend(GUEST_MAC);
        f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend(GUEST_MAC);
        f.extend(GUEST_ADDR.octets());
        f.extend([0; 6]);
        f.extend(target.octets());
        f
    }

    fn wait_frame(s: &Slirp) -> Vec<u8> {
        let mut buf = Vec::new();
        for _ in 0..500 {
            if s.recv(&mut buf).unwrap() {
                return buf;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no frame from the stack");
    }

    /// The thread answers ARP for the gateway and the DNS address (libslirp's own MAC).
    #[test]
    fn answers_arp_through_its_thread() {
        let s = Slirp::spawn(&[]).unwrap();
        for target in [GATEWAY, DNS] {
            s.send(&arp_request(target)).unwrap();
            let r = wait_frame(&s);
            assert_eq!(&r[..6], GUEST_MAC, "to the guest");
            assert_eq!(&r[12..14], [0x08, 0x06], "ARP");
            assert_eq!(&r[20..22], [0, 2], "a reply");
            assert_eq!(&r[28..32], target.octets(), "for the address asked");
        }
    }

    /// A forwarded port that cannot be bound fails the spawn, before any VM runs.
    #[test]
    fn a_taken_host_port_is_an_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let f = HostFwd { udp: false, host_addr: Some(std::net::Ipv4Addr::LOCALHOST), host_port: port, guest_port: 22 };
        let e = Slirp::spawn(std::slice::from_ref(&f)).err().unwrap();
        assert!(e.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{e}");
        drop(taken);
        // Free again: the failed instance released everything.
        let s = Slirp::spawn(&[f]).unwrap();
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err(), "the forward listens");
        drop(s);
    }
}
