//! The connections between guest ports and host unix sockets, with their credit accounting,
//! and the host side's threads: one reads a host program's `CONNECT P` line, one per connection
//! copies its host socket into a bounded buffer for the guest.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use crate::sandbox::{self, ThreadKind};

use super::packet::{
    Hdr, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
    SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Receive buffer the VMM advertises per connection.
pub(super) const BUF_ALLOC: u32 = 256 << 10;
/// Host-to-guest bytes buffered per connection before its reader waits.
const CONN_BUFFER: usize = 64 << 10;
/// Payload-less packets waiting for receive buffers, and connections, at most: a guest that
/// floods requests without reading the answers loses answers, not VMM memory.
const MAX_CONTROL: usize = 1024;
const MAX_CONNS: usize = 1024;
/// Local ports for host-initiated connections start here.
pub(super) const FIRST_HOST_PORT: u32 = 1 << 30;

/// (host port, guest port).
pub(super) type Key = (u32, u32);

pub(super) struct Conn {
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
pub(super) struct State {
    pub(super) conns: HashMap<Key, Conn>,
    /// Payload-less packets for the guest: (key, op, flags).
    pub(super) control: VecDeque<(Key, u16, u32)>,
    pub(super) next_port: u32,
    pub(super) next_id: u64,
}

pub(super) struct Inner {
    pub(super) cid: u64,
    pub(super) socket: PathBuf,
    pub(super) state: Mutex<State>,
    pub(super) space: Condvar,
    /// The receive queue's kick (from the transport).
    pub(super) rx_kick: Mutex<Option<Arc<EventFd>>>,
}

pub(super) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    sandbox::spawn(ThreadKind::VsockConn, name.into(), f).is_ok()
}

impl Inner {
    pub(super) fn kick_rx(&self) {
        if let Some(k) = &*self.rx_kick.lock().unwrap() {
            let _ = k.write(1);
        }
    }

    /// A host program on `PATH`: reads `CONNECT P\n`, then asks the guest for port P.
    pub(super) fn host_connect(self: Arc<Self>, mut stream: UnixStream) {
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
    pub(super) fn guest_packet(self: &Arc<Self>, hdr: &Hdr, payload: &[u8]) {
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
    pub(super) fn next_packet(&self, st: &mut State, room: usize) -> Option<(Hdr, Vec<u8>)> {
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
}
