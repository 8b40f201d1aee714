use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio::{drain_queue, QueueBroken, VirtioDevice, TYPE_VSOCK};

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZE: u16 = 128;
pub const HOST_CID: u64 = 2;
pub const HDR_LEN: usize = 44;
const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;
/// Receive buffer the VMM advertises per connection.
const BUF_ALLOC: u32 = 256 << 10;
/// Largest payload accepted from the guest in one packet (Linux sends at most 64 KiB).
const MAX_TX_PAYLOAD: u32 = 64 << 10;
/// Host-to-guest bytes buffered per connection before its reader waits.
const CONN_BUFFER: usize = 64 << 10;
/// Payload-less packets waiting for receive buffers, and connections, at most: a guest that
/// floods requests without reading the answers loses answers, not VMM memory.
const MAX_CONTROL: usize = 1024;
const MAX_CONNS: usize = 1024;
/// Local ports for host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// A virtio_vsock_hdr (little endian, packed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    pub fn parse(b: &[u8]) -> Option<Hdr> {
        let b: &[u8; HDR_LEN] = b.get(..HDR_LEN)?.try_into().ok()?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
        Some(Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }

    pub fn bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub cid: u64,
    pub socket: PathBuf,
}

impl VsockConfig {
    pub const USAGE: &'static str = "virtio-vsock,cid=N,socket=PATH";

    pub fn parse(conf: Option<&str>) -> Result<VsockConfig, String> {
        let (mut cid, mut socket) = (None, None);
        for opt in conf.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("cid", v)) => {
                    let n: u64 = v.parse().map_err(|_| format!("cid={v}: not a number"))?;
                    if !(3..u64::from(u32::MAX)).contains(&n) {
                        return Err(format!("cid={v}: guest CIDs are 3 to 4294967294"));
                    }
                    cid = Some(n);
                }
                Some(("socket", p)) if !p.is_empty() => socket = Some(PathBuf::from(p)),
                _ => return Err(format!("unknown option '{opt}' ({})", Self::USAGE)),
            }
        }
        match (cid, socket) {
            (Some(cid), Some(socket)) => Ok(VsockConfig { cid, socket }),
            _ => Err(format!("needs cid= and socket= ({})", Self::USAGE)),
        }
    }
}

/// (host port, guest port).
type Key = (u32, u32);

struct Conn {
    id: u64,
    stream: Arc<UnixStream>,
    /// Host-initiated and not yet accepted by the guest.
    connecting: bool,
    /// Host-to-guest bytes not yet sent, and whether the host side has ended.
    pending: VecDeque<u8>,
    eof: bool,
    shutdown_sent: bool,
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    fwd_cnt: u32,
    fwd_reported: u32,
    credit_update: bool,
}

impl Conn {
    fn new(id: u64, stream: UnixStream, connecting: bool) -> Conn {
        Conn {
            id,
            stream: Arc::new(stream),
            connecting,
            pending: VecDeque::new(),
            eof: false,
            shutdown_sent: false,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            fwd_cnt: 0,
            fwd_reported: 0,
            credit_update: false,
        }
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl State {
    fn push_control(&mut self, key: Key, op: u16) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back((key, op, 0));
        }
    }
}

#[derive(Default)]
struct State {
    conns: HashMap<Key, Conn>,
    /// Payload-less packets for the guest: (key, op, flags).
    control: VecDeque<(Key, u16, u32)>,
    next_port: u32,
    next_id: u64,
}

struct Inner {
    cid: u64,
    socket: PathBuf,
    state: Mutex<State>,
    space: Condvar,
    kicks: Mutex<Vec<Arc<EventFd>>>,
}

pub struct Vsock {
    inner: Arc<Inner>,
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    std::thread::Builder::new().name(name.into()).spawn(f).is_ok()
}

impl Vsock {
    pub fn open(cfg: &VsockConfig) -> Result<Vsock, String> {
        let what = format!("virtio-vsock,socket={}", cfg.socket.display());
        crate::virtio::console::remove_stale_socket(&cfg.socket);
        let listener = UnixListener::bind(&cfg.socket).map_err(|e| format!("{what}: {e}"))?;
        let inner = Arc::new(Inner {
            cid: cfg.cid,
            socket: cfg.socket.clone(),
            state: Mutex::new(State { next_port: FIRST_HOST_PORT, ..State::default() }),
            space: Condvar::new(),
            kicks: Mutex::default(),
        });
        let i = inner.clone();
        std::thread::Builder::new()
            .name("vsock-listen".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let i = i.clone();
                    spawn("vsock-connect", move || i.host_connect(stream));
                }
            })
            .map_err(|e| format!("{what}: {e}"))?;
        Ok(Vsock { inner })
    }
}

impl Inner {
    fn kick_rx(&self) {
        if let Some(k) = self.kicks.lock().unwrap().get(RX) {
            let _ = k.write(1);
        }
    }

    /// A host program on `PATH`: reads `CONNECT P\n`, then asks the guest for port P.
    fn host_connect(self: Arc<Self>, mut stream: UnixStream) {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.len() < 64 {
            match stream.read(&mut b) {
                Ok(1) if b[0] == b'\n' => break,
                Ok(1) => line.push(b[0]),
                _ => return,
            }
        }
        let port = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(port) = port else { return };
        let mut st = self.state.lock().unwrap();
        if st.conns.len() >= MAX_CONNS {
            return;
        }
        let mut local = st.next_port;
        while st.conns.contains_key(&(local, port)) {
            local = local.wrapping_add(1).max(FIRST_HOST_PORT);
        }
        st.next_port = local.wrapping_add(1).max(FIRST_HOST_PORT);
        st.next_id += 1;
        let conn = Conn::new(st.next_id, stream, true);
        st.conns.insert((local, port), conn);
        st.push_control((local, port), OP_REQUEST);
        drop(st);
        self.kick_rx();
    }

    /// Copies a connection's host socket into its pending bytes until EOF.
    fn spawn_reader(self: &Arc<Self>, key: Key, id: u64, stream: Arc<UnixStream>) {
        let i = self.clone();
        let started = spawn("vsock-conn", move || {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                {
                    let mut st = i.state.lock().unwrap();
                    loop {
                        match st.conns.get(&key) {
                            Some(c) if c.id == id && c.pending.len() >= CONN_BUFFER => {}
                            Some(c) if c.id == id => break,
                            _ => return,
                        }
                        st = i.space.wait(st).unwrap();
                    }
                }
                let n = (&*stream).read(&mut buf).unwrap_or(0);
                let mut st = i.state.lock().unwrap();
                match st.conns.get_mut(&key) {
                    Some(c) if c.id == id => {
                        if n == 0 {
                            c.eof = true;
                        } else {
                            c.pending.extend(&buf[..n]);
                        }
                    }
                    _ => return,
                }
                drop(st);
                i.kick_rx();
                if n == 0 {
                    return;
                }
            }
        });
        if !started {
            let mut st = self.state.lock().unwrap();
            if let Some(c) = st.conns.get_mut(&key) {
                c.eof = true;
            }
        }
    }

    fn reset_conn(&self, st: &mut State, key: Key) {
        if let Some(c) = st.conns.remove(&key) {
            c.close();
        }
        self.space.notify_all();
    }

    /// One packet from the guest.
    fn guest_packet(self: &Arc<Self>, hdr: &Hdr, payload: &[u8]) {
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID {
            return; // not from this guest to the host: drop
        }
        let key = (hdr.dst_port, hdr.src_port);
        let mut st = self.state.lock().unwrap();
        let rst = |st: &mut MutexGuard<State>| st.push_control(key, OP_RST);
        if hdr.kind != TYPE_STREAM {
            if hdr.op != OP_RST {
                rst(&mut st);
            }
            return;
        }
        if hdr.op == OP_REQUEST {
            if st.conns.contains_key(&key) || st.conns.len() >= MAX_CONNS {
                self.reset_conn(&mut st, key);
                rst(&mut st);
                return;
            }
            drop(st); // connecting may take a moment
            let path = format!("{}_{}", self.socket.display(), hdr.dst_port);
            let stream = UnixStream::connect(&path).and_then(|s| s.try_clone().map(|r| (s, r)));
            let mut st = self.state.lock().unwrap();
            match stream {
                Ok((s, r)) => {
                    st.next_id += 1;
                    let id = st.next_id;
                    let mut c = Conn::new(id, s, false);
                    (c.peer_buf_alloc, c.peer_fwd_cnt) = (hdr.buf_alloc, hdr.fwd_cnt);
                    st.conns.insert(key, c);
                    st.push_control(key, OP_RESPONSE);
                    drop(st);
                    self.spawn_reader(key, id, Arc::new(r));
                }
                Err(_) => rst(&mut st),
            }
            return;
        }
        let Some(c) = st.conns.get_mut(&key) else {
            if hdr.op != OP_RST {
                rst(&mut st);
            }
            return;
        };
        (c.peer_buf_alloc, c.peer_fwd_cnt) = (hdr.buf_alloc, hdr.fwd_cnt);
        match hdr.op {
            OP_RESPONSE if c.connecting => {
                c.connecting = false;
                let (id, stream) = (c.id, c.stream.clone());
                drop(st);
                if (&*stream).write_all(format!("OK {}\n", key.0).as_bytes()).is_ok() {
                    self.spawn_reader(key, id, stream);
                } else {
                    let mut st = self.state.lock().unwrap();
                    self.reset_conn(&mut st, key);
                    rst(&mut st);
                }
            }
            OP_RST => self.reset_conn(&mut st, key),
            OP_SHUTDOWN if hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND => {
                self.reset_conn(&mut st, key);
                rst(&mut st);
            }
            OP_SHUTDOWN => {
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    let _ = c.stream.shutdown(Shutdown::Write);
                }
            }
            OP_RW if !c.connecting => {
                let (id, stream) = (c.id, c.stream.clone());
                drop(st);
                let ok = (&*stream).write_all(payload).is_ok();
                let mut st = self.state.lock().unwrap();
                match st.conns.get_mut(&key) {
                    Some(c) if c.id == id && ok => {
                        c.fwd_cnt = c.fwd_cnt.wrapping_add(payload.len() as u32);
                        if c.fwd_cnt.wrapping_sub(c.fwd_reported) >= BUF_ALLOC / 4 {
                            c.credit_update = true;
                        }
                    }
                    Some(c) if c.id == id => {
                        self.reset_conn(&mut st, key);
                        rst(&mut st);
                    }
                    _ => {}
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => c.credit_update = true,
            _ => {
                self.reset_conn(&mut st, key);
                rst(&mut st);
            }
        }
    }

    /// The next packet for the guest with at most `room` payload bytes.
    fn next_packet(&self, st: &mut State, room: usize) -> Option<(Hdr, Vec<u8>)> {
        let mk = |key: Key, op: u16, flags: u32, len: usize| Hdr {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len: len as u32,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: 0,
        };
        let finish = |st: &mut State, mut h: Hdr, data: Vec<u8>| {
            if let Some(c) = st.conns.get_mut(&(h.src_port, h.dst_port)) {
                h.fwd_cnt = c.fwd_cnt;
                c.fwd_reported = c.fwd_cnt;
                c.credit_update = false;
                c.tx_cnt = c.tx_cnt.wrapping_add(data.len() as u32);
            }
            Some((h, data))
        };
        if let Some((key, op, flags)) = st.control.pop_front() {
            return finish(st, mk(key, op, flags, 0), Vec::new());
        }
        let mut pick = None;
        for (key, c) in &st.conns {
            if c.connecting || c.shutdown_sent {
                continue;
            }
            let n = c.pending.len().min(c.credit() as usize).min(room);
            if n > 0 {
                pick = Some((*key, OP_RW, n));
                break;
            }
            if c.credit_update {
                pick = Some((*key, OP_CREDIT_UPDATE, 0));
            } else if c.eof && c.pending.is_empty() && pick.is_none() {
                pick = Some((*key, OP_SHUTDOWN, 0));
            }
        }
        let (key, op, n) = pick?;
        let c = st.conns.get_mut(&key)?;
        let (data, flags) = match op {
            OP_RW => (c.pending.drain(..n).collect(), 0),
            OP_SHUTDOWN => {
                c.shutdown_sent = true;
                (Vec::new(), SHUTDOWN_SEND)
            }
            _ => (Vec::new(), 0),
        };
        self.space.notify_all();
        finish(st, mk(key, op, flags, data.len()), data)
    }

    /// Fills receive buffers with packets while there are both.
    fn fill_rx(&self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
        let broken = |e: virtio_queue::Error| QueueBroken(e.to_string());
        let mut st = self.state.lock().unwrap();
        let mut used = false;
        loop {
            queue.disable_notification(mem).map_err(broken)?;
            let mut out_of_packets = false;
            while let Some(chain) = queue.iter(mem).map_err(broken)?.next() {
                let head = chain.head_index();
                let descs: Vec<_> = chain.writable().collect();
                let room: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
                if room < HDR_LEN as u64 {
                    queue.add_used(mem, head, 0).map_err(broken)?; // useless buffer: give it back
                    used = true;
                    continue;
                }
                let room = (room - HDR_LEN as u64).min(u64::from(MAX_TX_PAYLOAD)) as usize;
                let Some((hdr, data)) = self.next_packet(&mut st, room) else {
                    queue.go_to_previous_position();
                    out_of_packets = true;
                    break;
                };
                let mut bytes = hdr.bytes().to_vec();
                bytes.extend_from_slice(&data);
                let mut written = 0usize;
                for d in descs {
                    let n = (d.len() as usize).min(bytes.len() - written);
                    if n == 0 || mem.write_slice(&bytes[written..written + n], d.addr()).is_err() {
                        break;
                    }
                    written += n;
                }
                queue.add_used(mem, head, written as u32).map_err(broken)?;
                used = true;
            }
            if !queue.enable_notification(mem).map_err(broken)? || out_of_packets {
                break;
            }
        }
        Ok(used)
    }
}

/// A transmit chain: its readable bytes, header first, as far as the header's length asks.
fn read_packet(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> Option<(Hdr, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut want = HDR_LEN;
    for d in chain.readable() {
        if bytes.len() >= want {
            break;
        }
        let n = (d.len() as usize).min(want - bytes.len());
        let at = bytes.len();
        bytes.resize(at + n, 0);
        mem.read_slice(&mut bytes[at..], d.addr()).ok()?;
        if bytes.len() >= HDR_LEN && want == HDR_LEN {
            let h = Hdr::parse(&bytes)?;
            if h.len > MAX_TX_PAYLOAD {
                return None;
            }
            want = HDR_LEN + h.len as usize;
            // The rest of this descriptor may hold payload.
            let more = (d.len() as usize - n).min(want - bytes.len());
            if more > 0 {
                let at = bytes.len();
                bytes.resize(at + more, 0);
                mem.read_slice(&mut bytes[at..], d.addr().checked_add(n as u64)?).ok()?;
            }
        }
    }
    let hdr = Hdr::parse(&bytes)?;
    if bytes.len() != want {
        return None; // shorter than its header says
    }
    Some((hdr, bytes.split_off(HDR_LEN)))
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u16 {
        TYPE_VSOCK
    }
    fn pci_class(&self) -> (u8, u8) {
        (0xff, 0)
    }
    fn features(&self) -> u64 {
        0
    }
    fn num_queues(&self) -> usize {
        3 // rx, tx, event
    }
    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.inner.cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| c.get(o + i)).copied().unwrap_or(0);
        }
    }
    fn process_queue(&self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
        match index {
            RX => self.inner.fill_rx(queue, mem),
            TX => {
                let used = drain_queue(queue, mem, |chain| {
                    if let Some((hdr, payload)) = read_packet(chain, mem) {
                        self.inner.guest_packet(&hdr, &payload);
                    }
                    0
                })?;
                if used {
                    self.inner.kick_rx(); // answers, credit, or buffers freed up
                }
                Ok(used)
            }
            _ => Ok(false), // event queue: no events are ever sent
        }
    }
    fn set_queue_kicks(&self, kicks: Vec<Arc<EventFd>>) {
        *self.inner.kicks.lock().unwrap() = kicks;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestAddress;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const CID: u64 = 3;

    #[test]
    fn parse_conf() {
        let c = VsockConfig::parse(Some("cid=3,socket=/tmp/v")).unwrap();
        assert_eq!((c.cid, c.socket), (3, PathBuf::from("/tmp/v")));
        assert!(VsockConfig::parse(Some("cid=2,socket=/x")).unwrap_err().contains("3 to"));
        assert!(VsockConfig::parse(Some("cid=3")).unwrap_err().contains("needs cid= and socket="));
        assert!(VsockConfig::parse(None).is_err());
        assert!(VsockConfig::parse(Some("cid=3,socket=/x,fast")).unwrap_err().contains("unknown option 'fast'"));
    }

    #[test]
    fn header_roundtrip() {
        let h = Hdr {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5,
            dst_port: 6,
            len: 7,
            kind: 1,
            op: 5,
            flags: 2,
            buf_alloc: 9,
            fwd_cnt: 10,
        };
        assert_eq!(Hdr::parse(&h.bytes()), Some(h));
        assert_eq!(Hdr::parse(&[0u8; 43]), None);
    }

    struct Rig {
        dir: PathBuf,
        dev: Vsock,
        rx_kick: Arc<EventFd>,
    }

    impl Rig {
        fn new(name: &str) -> Rig {
            let dir = std::env::temp_dir().join(format!("vsock-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let dev = Vsock::open(&VsockConfig { cid: CID, socket: dir.join("v.sock") }).unwrap();
            let rx_kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
            dev.set_queue_kicks(vec![
                rx_kick.clone(),
                Arc::new(EventFd::new(0).unwrap()),
                Arc::new(EventFd::new(0).unwrap()),
            ]);
            Rig { dir, dev, rx_kick }
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn guest_hdr(op: u16, src_port: u32, dst_port: u32, len: u32) -> Hdr {
        Hdr {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 1 << 16,
            fwd_cnt: 0,
        }
    }

    /// Sends one packet on the transmit queue (header and payload in separate descriptors).
    fn send(dev: &Vsock, mem: &GuestMemoryMmap, hdr: Hdr, payload: &[u8]) {
        let mut t = TestQueue::new(mem);
        mem.write_slice(&hdr.bytes(), GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(payload, GuestAddress(0x11_0000)).unwrap();
        if payload.is_empty() {
            t.add(&[(0x10_0000, HDR_LEN as u32, 0)]);
        } else {
            t.add(&[(0x10_0000, HDR_LEN as u32, 0), (0x11_0000, payload.len() as u32, 0)]);
        }
        let mut q = t.queue();
        dev.process_queue(TX, &mut q, mem).unwrap();
    }

    /// Offers one receive buffer; the packet the device put there, if any.
    fn recv(dev: &Vsock, mem: &GuestMemoryMmap) -> Option<(Hdr, Vec<u8>)> {
        let mut t = TestQueue::new(mem);
        t.add(&[(0x18_0000, HDR_LEN as u32, W), (0x18_1000, 4096, W)]);
        let used = t.addrs().2;
        mem.write_obj(0u64, GuestAddress(used + 4)).unwrap(); // no stale used element
        let mut q = t.queue();
        dev.process_queue(RX, &mut q, mem).unwrap();
        let mut buf = [0u8; HDR_LEN];
        let (_, len) = t.used(0);
        if len == 0 {
            return None;
        }
        mem.read_slice(&mut buf, GuestAddress(0x18_0000)).unwrap();
        let h = Hdr::parse(&buf).unwrap();
        let mut data = vec![0u8; h.len as usize];
        mem.read_slice(&mut data, GuestAddress(0x18_1000)).unwrap();
        assert_eq!(len as usize, HDR_LEN + data.len());
        Some((h, data))
    }

    /// Waits for a packet (host threads run concurrently).
    fn recv_wait(dev: &Vsock, mem: &GuestMemoryMmap) -> (Hdr, Vec<u8>) {
        for _ in 0..500 {
            if let Some(p) = recv(dev, mem) {
                return p;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no packet for the guest");
    }

    #[test]
    fn guest_connects_to_host_port() {
        let r = Rig::new("g2h");
        let listener = UnixListener::bind(r.dir.join("v.sock_5000")).unwrap();
        let mem = guest_mem();
        send(&r.dev, &mem, guest_hdr(OP_REQUEST, 1234, 5000, 0), &[]);
        let (h, _) = recv_wait(&r.dev, &mem);
        assert_eq!((h.op, h.src_port, h.dst_port, h.dst_cid, h.buf_alloc), (OP_RESPONSE, 5000, 1234, CID, BUF_ALLOC));
        let (mut host, _) = listener.accept().unwrap();
        send(&r.dev, &mem, guest_hdr(OP_RW, 1234, 5000, 5), b"hello");
        let mut b = [0u8; 5];
        host.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
        // Credit request: the answer carries fwd_cnt = 5.
        send(&r.dev, &mem, guest_hdr(OP_CREDIT_REQUEST, 1234, 5000, 0), &[]);
        let (h, _) = recv_wait(&r.dev, &mem);
        assert_eq!((h.op, h.fwd_cnt), (OP_CREDIT_UPDATE, 5));
        // Host to guest, then the host's EOF becomes SHUTDOWN(SEND).
        host.write_all(b"world").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let (h, data) = recv_wait(&r.dev, &mem);
        assert_eq!((h.op, data.as_slice()), (OP_RW, &b"world"[..]));
        let (h, _) = recv_wait(&r.dev, &mem);
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        // The guest closes: RST, and the connection is gone.
        let mut shut = guest_hdr(OP_SHUTDOWN, 1234, 5000, 0);
        shut.flags = 3;
        send(&r.dev, &mem, shut, &[]);
        let (h, _) = recv_wait(&r.dev, &mem);
        assert_eq!(h.op, OP_RST);
        assert!(r.dev.inner.state.lock().unwrap().conns.is_empty());
        assert!(r.rx_kick.read().is_ok());
    }

    #[test]
    fn credit_limits_host_to_guest() {
        let r = Rig::new("credit");
        let listener = UnixListener::bind(r.dir.join("v.sock_7")).unwrap();
        let mem = guest_mem();
        let mut req = guest_hdr(OP_REQUEST, 9, 7, 0);
        req.buf_alloc = 3;
        send(&r.dev, &mem, req, &[]);
        assert_eq!(recv_wait(&r.dev, &mem).0.op, OP_RESPONSE);
        let (mut host, _) = listener.accept().unwrap();
        host.write_all(b"abcdef").unwrap();
        let (h, data) = recv_wait(&r.dev, &mem);
        assert_eq!((h.op, data.as_slice()), (OP_RW, &b"abc"[..]));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(recv(&r.dev, &mem).is_none(), "no credit left");
        let mut upd = guest_hdr(OP_CREDIT_UPDATE, 9, 7, 0);
        (upd.buf_alloc, upd.fwd_cnt) = (3, 3);
        send(&r.dev, &mem, upd, &[]);
        let (h, data) = recv_wait(&r.dev, &mem);
        assert_eq!((h.op, data.as_slice()), (OP_RW, &b"def"[..]));
    }

    #[test]
    fn host_connects_to_guest_port() {
        let r = Rig::new("h2g");
        let mem = guest_mem();
        let mut host = UnixStream::connect(r.dir.join("v.sock")).unwrap();
        host.write_all(b"CONNECT 6000\n").unwrap();
        let (h, _) = recv_wait(&r.dev, &mem);
        assert_eq!((h.op, h.dst_port), (OP_REQUEST, 6000));
        let local = h.src_port;
        send(&r.dev, &mem, guest_hdr(OP_RESPONSE, 6000, local, 0), &[]);
        let mut line = [0u8; 64];
        let n = host.read(&mut line).unwrap();
        assert_eq!(std::str::from_utf8(&line[..n]).unwrap(), format!("OK {local}\n"));
        send(&r.dev, &mem, guest_hdr(OP_RW, 6000, local, 3), b"hi!");
        let mut b = [0u8; 3];
        host.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi!");
        // A bad CONNECT line is just closed.
        let mut bad = UnixStream::connect(r.dir.join("v.sock")).unwrap();
        bad.write_all(b"HELLO\n").unwrap();
        assert_eq!(bad.read(&mut line).unwrap_or(0), 0);
    }

    #[test]
    fn refused_and_hostile_packets() {
        let r = Rig::new("hostile");
        let mem = guest_mem();
        // No listener at PATH_99: RST.
        send(&r.dev, &mem, guest_hdr(OP_REQUEST, 1, 99, 0), &[]);
        assert_eq!(recv_wait(&r.dev, &mem).0.op, OP_RST);
        // Data for an unknown connection: RST. Non-stream type: RST.
        send(&r.dev, &mem, guest_hdr(OP_RW, 1, 99, 2), b"xx");
        assert_eq!(recv_wait(&r.dev, &mem).0.op, OP_RST);
        let mut dgram = guest_hdr(OP_REQUEST, 1, 99, 0);
        dgram.kind = 2;
        send(&r.dev, &mem, dgram, &[]);
        assert_eq!(recv_wait(&r.dev, &mem).0.op, OP_RST);
        // Wrong source CID, length beyond the chain, huge length, short header: dropped.
        let mut spoof = guest_hdr(OP_REQUEST, 1, 99, 0);
        spoof.src_cid = 77;
        send(&r.dev, &mem, spoof, &[]);
        send(&r.dev, &mem, guest_hdr(OP_RW, 1, 99, 100), b"short");
        send(&r.dev, &mem, guest_hdr(OP_RW, 1, 99, u32::MAX), b"x");
        let mut t = TestQueue::new(&mem);
        t.add(&[(0x10_0000, 20, 0)]);
        t.add(&[(0xffff_ffff_f000, 0x2000, 0)]);
        t.add(&[(0x1f_fff0, u32::MAX, 0)]);
        t.add(&[(0x10_0000, HDR_LEN as u32, W)]);
        let mut q = t.queue();
        assert!(r.dev.process_queue(TX, &mut q, &mem).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(recv(&r.dev, &mem).is_none(), "nothing answered");
        // Receive buffers too small for a header, or outside guest memory: no panic.
        send(&r.dev, &mem, guest_hdr(OP_RW, 1, 99, 0), &[]);
        let mut t = TestQueue::new(&mem);
        t.add(&[(0x18_0000, 8, W)]);
        t.add(&[(0xffff_ffff_f000, 4096, W)]);
        let mut q = t.queue();
        assert!(r.dev.process_queue(RX, &mut q, &mem).unwrap());
        assert_eq!(t.used(0).1, 0);
        assert_eq!(t.used(1).1, 0);
        // A broken avail index: the queue is broken, not the VMM.
        t.set_avail_idx(1000);
        assert!(r.dev.process_queue(RX, &mut q, &mem).is_err());
        let mut t = TestQueue::new(&mem);
        t.set_avail_idx(1000);
        let mut q = t.queue();
        assert!(r.dev.process_queue(TX, &mut q, &mem).is_err());
    }
}
