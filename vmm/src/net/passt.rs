//! User-mode networking through Debian's `passt` (Debian 12: 0.0~git20230309), the
//! `-s SLOT,virtio-net,passt[,hostfwd=...]` backend; `user` is libslirp (`slirp.rs`), which has
//! neither caveat below. passt stays selectable: it is the other maintained user-mode stack, a
//! newer passt (`XHYVE_PASST`) has the caveats fixed, and `vmm/benches/user-net.sh` compares the two.
//!
//! One `passt` per VM, connected over a `socketpair` handed to it with `-F FD` (no socket file,
//! so no other local user can connect first), speaking its qemu protocol: a stream of Ethernet
//! frames each prefixed by a 4-byte big-endian length. The addressing of `super::user` (passt's
//! DHCP server hands out the guest's address; passt maps the gateway address to the host).
//! `hostfwd=tcp:ADDR:HOSTPORT-:GUESTPORT` becomes `-t ADDR/HOSTPORT:GUESTPORT`.
//!
//! passt leaves when its client goes (`-1`): the VMM's end of the socketpair closes however the
//! VMM exits. The child also gets PR_SET_PDEATHSIG (cleared when passt drops root privileges to
//! `nobody`, hence `-1`), and `kill_all` ends the children explicitly at exit.
//!
//! Caveat of Debian 12's passt (fixed upstream later): on a forwarded connection it does not ACK
//! the guest's SYN,ACK until it has data for the guest, so a guest service that speaks first
//! (and a host client that waits for it) waits forever; SSH and HTTP, where the client speaks
//! first, are unaffected. Passt's `-m 1500` MTU is handed to the guest by DHCP (option 26).
//!
//! Second caveat of the same passt: it resets a connection the guest opened 24 s after its
//! SYN,ACK (its 10 s handshake timer, then 7 "ACK timeouts" 2 s apart) unless by then it has sent
//! the guest data that the guest ACKed: the guest's ACK of the SYN,ACK does not clear its "ACK
//! due from the guest" state. So a guest upload to a peer that says nothing (`nc` to a silent
//! listener, a plain-HTTP POST) dies after 24 s; a peer that speaks first (SSH, TLS, a greeting)
//! keeps it alive. Found with a passt pcap (`-p`) of a guest upload: every frame intact, the RST
//! unprompted; reproduced without the VMM on a socketpair.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::user::{HostFwd, DNS, GATEWAY, GUEST_ADDR, MTU, PREFIX_LEN};
use super::{Backend, MAX_FRAME};
use crate::sandbox::{self, ThreadKind};

/// Where `passt` is, from `XHYVE_PASST` or PATH.
pub fn find_passt() -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let exe =
        |p: &std::path::Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if let Some(p) = std::env::var_os("XHYVE_PASST") {
        let p = std::path::PathBuf::from(p);
        return if exe(&p) { Ok(p) } else { Err(format!("XHYVE_PASST={}: not an executable", p.display())) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("passt"))
        .find(|p| exe(p))
        .ok_or_else(|| "the passt backend needs passt, which is not installed (apt-get install passt)".to_string())
}

/// The passt children of this process, for `kill_all`.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Ends every passt this process started (at VMM exit).
pub fn kill_all() {
    for pid in CHILDREN.lock().unwrap().drain(..) {
        // SAFETY: signals a child we spawned (not yet reaped: no one waits for it but `Drop`).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
}

struct RxBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

pub struct Passt {
    sock: UnixStream,
    child: Mutex<Child>,
    rx: Mutex<RxBuf>,
}

impl Passt {
    pub fn spawn(fwds: &[HostFwd]) -> Result<Passt, String> {
        let exe = find_passt()?;
        let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let theirs: OwnedFd = theirs.into();
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(&exe);
        cmd.args(["-f", "-q", "-1", "-4", "-F", &fd.to_string()])
            .args(["-a", &GUEST_ADDR.to_string(), "-n", &PREFIX_LEN.to_string(), "-g", &GATEWAY.to_string()])
            .args(["-m", &MTU.to_string(), "--dns-forward", &DNS.to_string(), "-D", &DNS.to_string()]);
        for f in fwds {
            let spec = match f.host_addr {
                Some(a) => format!("{a}/{}:{}", f.host_port, f.guest_port),
                None => format!("{}:{}", f.host_port, f.guest_port),
            };
            cmd.arg(if f.udp { "-u" } else { "-t" }).arg(spec);
        }
        if fwds.iter().all(|f| !f.udp) {
            cmd.args(["-u", "none"]);
        }
        if fwds.iter().all(|f| f.udp) {
            cmd.args(["-t", "none"]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0
                    || libc::fcntl(fd, libc::F_SETFD, 0) < 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", exe.display()))?;
        drop(theirs);
        CHILDREN.lock().unwrap().push(child.id());
        // passt's messages: keep the real ones (it also complains about a missing syslog).
        let stderr = child.stderr.take();
        let errors = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
        if let Some(stderr) = stderr {
            let errors = errors.clone();
            let _ = sandbox::spawn(ThreadKind::PasstLog, "passt-log".into(), move || {
                use std::io::BufRead;
                for line in io::BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.starts_with("Failed to send") || line.starts_with("Don't run as root") || line.is_empty() {
                        continue;
                    }
                    crate::logger::log(format!("passt: {line}"));
                    errors.lock().unwrap().push(line);
                }
            });
        }
        // A bad forward (port in use) makes passt exit at once: say so now, not at the first frame.
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                let why = errors.lock().unwrap().join("; ");
                return Err(format!(
                    "passt exited at startup ({status}){}",
                    if why.is_empty() { String::new() } else { format!(": {why}") }
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let rx = RxBuf { buf: vec![0; 2 * (MAX_FRAME + 4)], start: 0, end: 0 };
        Ok(Passt { sock: ours, child: Mutex::new(child), rx: Mutex::new(rx) })
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap();
        // Started by root, passt runs as `nobody`, which a VMM that gave up CAP_KILL
        // (`crate::sandbox`) cannot signal: it leaves by itself when the socket closes (`-1`),
        // so wait only for a child that was killed.
        if c.kill().is_ok() {
            let _ = c.wait();
        }
    }
}

fn io_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Backend for Passt {
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn recv(&self, out: &mut Vec<u8>) -> io::Result<bool> {
        let mut rx = self.rx.lock().unwrap();
        let RxBuf { buf, start, end } = &mut *rx;
        loop {
            let have = *end - *start;
            if have >= 4 {
                let len = u32::from_be_bytes(buf[*start..*start + 4].try_into().unwrap()) as usize;
                if len > MAX_FRAME {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("passt sent a {len}-byte frame")));
                }
                if have >= 4 + len {
                    out.clear();
                    out.extend_from_slice(&buf[*start + 4..*start + 4 + len]);
                    *start += 4 + len;
                    return Ok(true);
                }
            }
            if *start == *end {
                (*start, *end) = (0, 0);
            } else if *end == buf.len() {
                buf.copy_within(*start..*end, 0);
                (*start, *end) = (0, *end - *start);
            }
            let room = &mut buf[*end..];
            // SAFETY: receives at most room.len() bytes into room.
            let r = unsafe { libc::recv(self.fd(), room.as_mut_ptr().cast(), room.len(), libc::MSG_DONTWAIT) };
            match io_result(r) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "passt closed the connection")),
                Ok(n) => *end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut msg = Vec::with_capacity(4 + frame.len());
        msg.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        msg.extend_from_slice(frame);
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while sent < msg.len() {
            let rest = &msg[sent..];
            // SAFETY: sends at most rest.len() bytes from rest.
            let r = unsafe {
                libc::send(self.fd(), rest.as_ptr().cast(), rest.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            match io_result(r) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A frame half sent must be finished, or the stream loses its framing.
                    if sent == 0 && Instant::now() > deadline - Duration::from_secs(9) {
                        return Err(e);
                    }
                    if Instant::now() > deadline {
                        let _ = self.sock.shutdown(std::net::Shutdown::Both);
                        return Err(e);
                    }
                    super::wait_writable(self.fd(), 100);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend on our end of a socketpair; the other end plays passt.
    fn on(sock: UnixStream) -> Passt {
        Passt {
            sock,
            child: Mutex::new(Command::new("true").spawn().unwrap()),
            rx: Mutex::new(RxBuf { buf: vec![0; 2 * (MAX_FRAME + 4)], start: 0, end: 0 }),
        }
    }

    /// The qemu framing against a peer that writes frames in awkward pieces.
    #[test]
    fn framing() {
        let (a, b) = UnixStream::pair().unwrap();
        let p = on(a);
        use std::io::Write;
        let mut peer = &b;
        let mut out = Vec::new();
        assert!(!p.recv(&mut out).unwrap());
        peer.write_all(&[0, 0, 0, 3, 1, 2]).unwrap();
        assert!(!p.recv(&mut out).unwrap(), "partial frame");
        peer.write_all(&[3, 0, 0, 0, 1, 9]).unwrap();
        assert!(p.recv(&mut out).unwrap());
        assert_eq!(out, [1, 2, 3]);
        assert!(p.recv(&mut out).unwrap());
        assert_eq!(out, [9]);
        // Frames larger than the buffer's free tail: compaction keeps them whole.
        for i in 0..5u8 {
            let mut f = (MAX_FRAME as u32 - 10).to_be_bytes().to_vec();
            f.extend(std::iter::repeat_n(i, MAX_FRAME - 10));
            peer.write_all(&f).unwrap();
            let mut got = false;
            for _ in 0..100 {
                if p.recv(&mut out).unwrap() {
                    got = true;
                    break;
                }
            }
            assert!(got && out.len() == MAX_FRAME - 10 && out.iter().all(|x| *x == i));
        }
        p.send(&[7, 7]).unwrap();
        let mut r = [0u8; 6];
        use std::io::Read;
        (&b).read_exact(&mut r).unwrap();
        assert_eq!(r, [0, 0, 0, 2, 7, 7]);
        // A length no frame has: the stream is broken.
        peer.write_all(&[0xff, 0, 0, 0]).unwrap();
        assert!(p.recv(&mut out).is_err());
        drop(b);
    }

    /// Back-pressure: frames larger than the socket's send buffer leave in pieces (partial
    /// writes of the non-blocking send) while passt reads; each must be finished before the next
    /// starts, or the length prefixes stop lining up and passt parses payload as lengths.
    #[test]
    fn partial_writes_keep_the_framing() {
        use std::io::Read;
        let (a, b) = UnixStream::pair().unwrap();
        let small: libc::c_int = 4096;
        // SAFETY: sets one int option on a socket we own.
        let r = unsafe {
            libc::setsockopt(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, (&small as *const libc::c_int).cast(), 4)
        };
        assert_eq!(r, 0);
        let frames: Vec<Vec<u8>> = (0..40u32)
            .map(|i| (0..if i % 2 == 0 { 60_000 } else { 1514 }).map(|j| (i * 7 + j) as u8).collect())
            .collect();
        let n = frames.len();
        // passt's side: reads in small pieces, with pauses, so the sender keeps finding it full.
        let reader = std::thread::spawn(move || {
            let mut b = b;
            let mut got = Vec::new();
            for _ in 0..n {
                let mut len = [0u8; 4];
                b.read_exact(&mut len).unwrap();
                let len = u32::from_be_bytes(len) as usize;
                assert!(len <= MAX_FRAME, "a {len}-byte length: the framing is lost");
                let mut f = vec![0u8; len];
                for piece in f.chunks_mut(3000) {
                    b.read_exact(piece).unwrap();
                    std::thread::sleep(Duration::from_micros(200));
                }
                got.push(f);
            }
            got
        });
        let p = on(a);
        for f in &frames {
            p.send(f).unwrap();
        }
        drop(p); // a reader still waiting then sees the end instead of hanging
        assert!(reader.join().unwrap() == frames, "frames arrived damaged or out of order");
    }
}
