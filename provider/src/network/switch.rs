//! A named network's Ethernet switch: one thread of the daemon, no privileges. It listens on a
//! unix `SOCK_SEQPACKET` socket; every connection is a port (an xhyve NIC with
//! `-s N,virtio-net,socket=PATH`, protocol in vmm/src/net/socket.rs: one message, one Ethernet
//! frame). It learns which port each source MAC is behind and forwards a frame to its
//! destination's port, or to every other port when the destination is unknown, broadcast or
//! multicast. It answers DHCP itself (the requests go to no port) from the network's leases, with
//! the shared network's message handling (`dhcp::handle`), as the gateway address and a MAC of
//! its own; it answers nothing else (no ARP for the gateway: renewals that go unanswered fall
//! back to broadcast rebinding).
//!
//! A port that is not reading drops the frames sent to it (MSG_DONTWAIT), as a congested link.

use super::config::Config;
use super::dhcp;
use super::frames;
use super::leases::Leases;
use crate::logger::log;
use crate::nic::Mac;
use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use xhyve_contract::unix_path::with_short_path;

/// How often the thread looks at its stop flag while idle (ms).
const TICK_MS: i32 = 500;
/// Frames read from one port before the others get their turn.
const BATCH: usize = 64;
const MAX_FRAME: usize = 65536;

/// A running switch; `stop` ends it and removes its socket.
pub struct Switch {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

fn listen(path: &Path) -> Result<OwnedFd, String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    let p = path.display();
    // A socket left by a daemon that died: nobody listens on it any more (the home is locked).
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
    let sys = |what: &str| format!("switch socket {p}: {what}: {}", io::Error::last_os_error());
    // SAFETY: a new socket, owned at once.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(sys("socket"));
    }
    // SAFETY: `fd` is new and ours.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // A home deep enough for the path not to fit sockaddr_un is bound through its directory.
    let bind = |short: &Path| {
        // SAFETY: the sockaddr_un is zeroed, then the path (made to fit, NUL after it) copied in.
        unsafe {
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in addr.sun_path.iter_mut().zip(short.as_os_str().as_bytes()) {
                *d = *s as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len)
        }
    };
    match with_short_path(path, bind) {
        Ok(0) => {}
        Ok(_) => return Err(sys("bind")),
        Err(e) => return Err(format!("switch socket {p}: {e}")),
    }
    // SAFETY: listen on our bound socket.
    if unsafe { libc::listen(fd, 16) } != 0 {
        return Err(sys("listen"));
    }
    Ok(owned)
}

impl Switch {
    /// Listens on `path` (errors come back here) and starts the thread.
    pub fn start(path: &Path, cfg: Config, leases: Arc<Mutex<Leases>>) -> Result<Switch, String> {
        let listener = listen(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = cfg.bridge.clone();
        let thread = std::thread::Builder::new()
            .name(format!("switch-{name}"))
            .spawn(move || Ports::new(cfg, leases).run(listener, &flag))
            .map_err(|e| format!("cannot start the switch thread: {e}"))?;
        Ok(Switch { path: path.to_path_buf(), stop, thread })
    }

    /// Ends the thread (within `TICK_MS`), which closes every port, and removes the socket.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Port {
    id: u64,
    fd: OwnedFd,
}

struct Ports {
    cfg: Config,
    leases: Arc<Mutex<Leases>>,
    /// The switch's own MAC, for its DHCP replies: locally administered, from the gateway.
    mac: Mac,
    ports: Vec<Port>,
    next_id: u64,
    /// Source MAC -> the port it was last seen on.
    table: HashMap<Mac, u64>,
}

fn send(fd: RawFd, frame: &[u8]) {
    // SAFETY: sends from a live slice on a descriptor the switch owns; never blocks.
    unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
}

impl Ports {
    fn new(cfg: Config, leases: Arc<Mutex<Leases>>) -> Ports {
        let g = cfg.gateway.octets();
        let mac = [0x02, 0x58, g[0], g[1], g[2], g[3]];
        Ports { cfg, leases, mac, ports: Vec::new(), next_id: 0, table: HashMap::new() }
    }

    fn run(mut self, listener: OwnedFd, stop: &AtomicBool) {
        let mut buf = vec![0u8; MAX_FRAME];
        while !stop.load(Ordering::Relaxed) {
            let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
                .chain(self.ports.iter().map(|p| p.fd.as_raw_fd()))
                .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
                .collect();
            // SAFETY: a live array of pollfds for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, TICK_MS) };
            if n <= 0 {
                continue;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                self.accept(&listener);
            }
            let ready: Vec<(u64, RawFd, i16)> = fds[1..]
                .iter()
                .zip(&self.ports)
                .filter(|(f, _)| f.revents != 0)
                .map(|(f, p)| (p.id, p.fd.as_raw_fd(), f.revents))
                .collect();
            for (id, fd, revents) in ready {
                if !self.drain(id, fd, &mut buf) || revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    self.drop_port(id);
                }
            }
        }
    }

    fn accept(&mut self, listener: &OwnedFd) {
        loop {
            // SAFETY: accepts on our listener; the new descriptor is owned at once.
            let fd = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            self.next_id += 1;
            // SAFETY: the descriptor accept4 just returned.
            self.ports.push(Port { id: self.next_id, fd: unsafe { OwnedFd::from_raw_fd(fd) } });
            log(&format!("network {}: port {} connected ({} ports)", self.cfg.bridge, self.next_id, self.ports.len()));
        }
    }

    fn drop_port(&mut self, id: u64) {
        self.ports.retain(|p| p.id != id);
        self.table.retain(|_, p| *p != id);
        log(&format!("network {}: port {id} closed ({} ports)", self.cfg.bridge, self.ports.len()));
    }

    /// Reads and switches up to `BATCH` frames of port `id`; false when the port is closed.
    fn drain(&mut self, id: u64, fd: RawFd, buf: &mut [u8]) -> bool {
        for _ in 0..BATCH {
            // SAFETY: reads into a live buffer of its length on a descriptor the switch owns.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n == 0 {
                return false;
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                return matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted);
            }
            self.switch(id, &buf[..n as usize]);
        }
        true
    }

    fn switch(&mut self, from: u64, frame: &[u8]) {
        let (Some(dst), Some(src)) = (frames::dst_mac(frame), frames::src_mac(frame)) else { return };
        if src[0] & 1 == 0 {
            self.table.insert(src, from);
        }
        if let Some(req) = frames::dhcp_request(frame) {
            self.dhcp(from, req);
            return;
        }
        let to = if dst[0] & 1 == 0 { self.table.get(&dst).copied() } else { None };
        match to {
            Some(p) if p == from => {}
            Some(p) => {
                if let Some(port) = self.ports.iter().find(|q| q.id == p) {
                    send(port.fd.as_raw_fd(), frame);
                }
            }
            None => {
                for port in self.ports.iter().filter(|q| q.id != from) {
                    send(port.fd.as_raw_fd(), frame);
                }
            }
        }
    }

    /// Answers a DHCP request on the port it came from.
    fn dhcp(&mut self, from: u64, req: &[u8]) {
        let (frame, notes) = {
            let mut l = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            let out = dhcp_answer(&self.cfg, self.mac, &mut l, req, crate::state::now());
            if let Err(e) = l.flush() {
                log(&format!("network {}: cannot write the leases: {e}", self.cfg.bridge));
            }
            out
        };
        for note in notes {
            log(&format!("network {}: DHCP: {note}", self.cfg.bridge));
        }
        if let (Some(frame), Some(port)) = (frame, self.ports.iter().find(|q| q.id == from)) {
            send(port.fd.as_raw_fd(), &frame);
        }
    }
}

/// The gateway's (`mac`) answer to a DHCP request (a UDP payload to port 67): the frame to send
/// back, if any, and the lines for the log.
pub fn dhcp_answer(
    cfg: &Config,
    mac: Mac,
    leases: &mut Leases,
    req: &[u8],
    now: u64,
) -> (Option<Vec<u8>>, Vec<String>) {
    let out = dhcp::handle(req, cfg, leases, now);
    let mut notes = Vec::new();
    if !out.ignored {
        notes.push(out.note);
    }
    let Some((msg, dest)) = out.reply else { return (None, notes) };
    let bytes = match dhcp::encode(&msg) {
        Ok(b) => b,
        Err(e) => {
            notes.push(format!("encoding a reply: {e}"));
            return (None, notes);
        }
    };
    let client: Mac = msg.chaddr().get(..6).and_then(|m| m.try_into().ok()).unwrap_or([0xff; 6]);
    let dst_mac = if dest == Ipv4Addr::BROADCAST { [0xff; 6] } else { client };
    (Some(frames::dhcp_reply((mac, cfg.gateway), (dst_mac, dest), &bytes)), notes)
}

#[cfg(test)]
mod tests {
    use super::super::leases::tests::tempdir;
    use super::*;

    fn connect(path: &Path) -> OwnedFd {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: socket and connect on a new descriptor with a zeroed, filled sockaddr_un.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
                *d = *s as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            assert_eq!(libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len), 0);
            let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            OwnedFd::from_raw_fd(fd)
        }
    }

    fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME];
        // SAFETY: reads into a live buffer (blocking, with the receive timeout set above).
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then(|| buf[..n as usize].to_vec())
    }

    fn frame(dst: Mac, src: Mac, body: u8) -> Vec<u8> {
        let mut f = [dst, src].concat();
        f.extend_from_slice(&[0x88, 0xb5, body]);
        f.resize(60, 0);
        f
    }

    #[test]
    fn learns_floods_and_serves_dhcp() {
        use dhcproto::v4::{DhcpOption, Message, MessageType};
        use dhcproto::{Decodable, Decoder, Encodable};
        let dir = tempdir("switch");
        let cfg = Config {
            bridge: "test".into(),
            gateway: Ipv4Addr::new(10, 7, 0, 1),
            prefix: 24,
            router: false,
            range: Some((Ipv4Addr::new(10, 7, 0, 100), Ipv4Addr::new(10, 7, 0, 200))),
        };
        let mut l = Leases::load(&dir.join("leases.json"), &cfg).unwrap();
        let (a, b, c) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb], [2, 0, 0, 0, 0, 0xc]);
        l.fix(&b, Ipv4Addr::new(10, 7, 0, 5), 0).unwrap();
        let path = dir.join("s.sock");
        let sw = Switch::start(&path, cfg, Arc::new(Mutex::new(l))).unwrap();
        let (pa, pb, pc) = (connect(&path), connect(&path), connect(&path));
        // Unknown destination: flooded to the others, not back.
        send(pa.as_raw_fd(), &frame(b, a, 1));
        assert_eq!(recv(&pb).unwrap()[14], 1);
        assert_eq!(recv(&pc).unwrap()[14], 1);
        // a is learnt: b's answer goes to a only.
        send(pb.as_raw_fd(), &frame(a, b, 2));
        assert_eq!(recv(&pa).unwrap()[14], 2);
        send(pc.as_raw_fd(), &frame([0xff; 6], c, 3));
        assert_eq!(recv(&pa).unwrap()[14], 3, "c's broadcast, not b's earlier frame");
        assert_eq!(recv(&pb).unwrap()[14], 3);

        // DHCP: b's fixed address; a gets one from the range; the requests go to no port.
        let discover = |mac: Mac| {
            let mut m = Message::new_with_id(7, [0; 4].into(), [0; 4].into(), [0; 4].into(), [0; 4].into(), &mac);
            m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
            let udp = frames::dhcp_reply(
                (mac, Ipv4Addr::UNSPECIFIED),
                ([0xff; 6], Ipv4Addr::BROADCAST),
                &m.to_vec().unwrap(),
            );
            let mut udp = udp;
            // Turned into a request: port 68 -> 67.
            udp[34..36].copy_from_slice(&68u16.to_be_bytes());
            udp[36..38].copy_from_slice(&67u16.to_be_bytes());
            udp
        };
        for (port, mac, want) in [(&pb, b, Some(Ipv4Addr::new(10, 7, 0, 5))), (&pa, a, None)] {
            send(port.as_raw_fd(), &discover(mac));
            let f = recv(port).unwrap();
            assert_eq!(frames::dst_mac(&f), Some([0xff; 6]));
            let m = Message::decode(&mut Decoder::new(&f[42..])).unwrap();
            assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
            let ip = m.yiaddr();
            match want {
                Some(w) => assert_eq!(ip, w),
                None => assert!((100..=200).contains(&ip.octets()[3]), "{ip}"),
            }
            assert!(m.opts().get(dhcproto::v4::OptionCode::Router).is_none());
        }
        // The request was answered, not forwarded: the next thing c sees is a's frame.
        send(pa.as_raw_fd(), &frame(c, a, 4));
        assert_eq!(recv(&pc).unwrap()[14], 4);
        drop(pc);
        sw.stop();
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
