use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::connections::{spawn, Inner, State, FIRST_HOST_PORT};
use super::packet::{read_packet, write_packet, HDR_LEN, MAX_TX_PAYLOAD};
use crate::config::VsockConfig;
use crate::sandbox::{self, ThreadKind};
use crate::virtio::{drain_queue, fill_queue, listen, QueueBroken, VirtioDevice, TYPE_VSOCK};

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZE: u16 = 128;
/// virtio_vsock_event id: every connection is gone (a restore in a new process).
const EVENT_TRANSPORT_RESET: u32 = 0;

pub struct Vsock {
    inner: Arc<Inner>,
    /// Restored in a new process: the guest's connections are gone on the host side. The event
    /// queue tells the driver (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET), which resets them all.
    reset_pending: AtomicBool,
}

impl Vsock {
    pub fn open(cfg: &VsockConfig) -> Result<Vsock, String> {
        let what = format!("virtio-vsock,socket={}", cfg.socket.display());
        let listener = listen(&cfg.socket).map_err(|e| format!("{what}: {e}"))?;
        let inner = Arc::new(Inner {
            cid: cfg.cid,
            socket: cfg.socket.clone(),
            state: Mutex::new(State { next_port: FIRST_HOST_PORT, ..State::default() }),
            space: Condvar::new(),
            rx_kick: Mutex::default(),
        });
        let i = inner.clone();
        sandbox::spawn(ThreadKind::VsockListen, "vsock-listen".into(), move || {
            for stream in listener.incoming().flatten() {
                let i = i.clone();
                spawn("vsock-connect", move || i.host_connect(stream));
            }
        })
        .map_err(|e| format!("{what}: {e}"))?;
        Ok(Vsock { inner, reset_pending: AtomicBool::new(false) })
    }

    /// Fills receive buffers with packets while there are both.
    fn fill_rx(&self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
        let mut st = self.inner.state.lock().unwrap();
        fill_queue(queue, mem, |chain| {
            let descs: Vec<_> = chain.writable().collect();
            let room: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
            if room < HDR_LEN as u64 {
                return Some(0); // useless buffer: give it back
            }
            let room = (room - HDR_LEN as u64).min(u64::from(MAX_TX_PAYLOAD)) as usize;
            let (hdr, data) = self.inner.next_packet(&mut st, room)?;
            Some(write_packet(&descs, mem, &hdr, &data))
        })
    }
}

impl VirtioDevice for Vsock {
    fn queue_thread(&self) -> ThreadKind {
        ThreadKind::VsockQueue
    }

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
            RX => self.fill_rx(queue, mem),
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
            _ if self.reset_pending.load(Ordering::SeqCst) => {
                let mut sent = false;
                let used = fill_queue(queue, mem, |chain| {
                    let desc = chain.writable().next()?;
                    if sent || desc.len() < 4 || mem.write_obj(EVENT_TRANSPORT_RESET, desc.addr()).is_err() {
                        return None;
                    }
                    sent = true;
                    Some(4)
                })?;
                self.reset_pending.store(!sent, Ordering::SeqCst);
                Ok(used)
            }
            _ => Ok(false), // event queue: nothing else to say
        }
    }
    fn restore_state(&self, _: &serde_json::Value) -> Result<(), String> {
        self.reset_pending.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn set_queue_kicks(&self, kicks: Vec<Arc<EventFd>>) {
        *self.inner.rx_kick.lock().unwrap() = kicks.into_iter().nth(RX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::*;
    use crate::virtio::vsock::connections::BUF_ALLOC;
    use crate::virtio::vsock::packet::{
        Hdr, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
        SHUTDOWN_SEND, TYPE_STREAM,
    };
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixListener;
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestAddress};

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const CID: u64 = 3;

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
