use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::frame::{read_frame, write_frame, HDR_LEN};
use super::poller::RxWake;
use crate::config::{BackendConfig, NetConfig};
use crate::net::{passt, slirp, socket, tap, Backend};
use crate::sandbox::{self, ThreadKind};
use crate::virtio::{drain_queue, ConfigNotifier, QueueBroken, VirtioDevice, TYPE_NET};

const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const F_CTRL_VQ: u64 = 1 << 17;
const F_GUEST_ANNOUNCE: u64 = 1 << 21;
const STATUS_LINK_UP: u16 = 1;
/// The driver should announce itself (gratuitous ARP); it acknowledges on the control queue.
const STATUS_ANNOUNCE: u16 = 2;
const RX: usize = 0;
const TX: usize = 1;
const CTRL: usize = 2;
/// Control queue: class and command of VIRTIO_NET_CTRL_ANNOUNCE_ACK, and the ack values.
const CTRL_ANNOUNCE: u8 = 3;
const CTRL_ANNOUNCE_ACK: u8 = 0;
const CTRL_OK: u8 = 0;
const CTRL_ERR: u8 = 1;

/// A random locally administered unicast MAC (no `-U`).
fn random_mac() -> [u8; 6] {
    let mut m = xhyve_contract::random::bytes::<6>().unwrap_or_default();
    m[0] = (m[0] & 0xfc) | 0x02;
    m
}

struct RxState {
    /// A frame read from the backend that found no guest buffer yet.
    pending: Option<Vec<u8>>,
    spare: Vec<u8>,
}

pub struct Net {
    mac: [u8; 6],
    backend: Box<dyn Backend>,
    rx: Mutex<RxState>,
    dead: AtomicBool,
    wake: Arc<RxWake>,
    /// Restored in a new process: the network behind the new backend (passt, a bridge) has not
    /// seen the guest's MAC; the guest announces it on request (as after a migration).
    announce: AtomicBool,
    config_changed: Mutex<Option<ConfigNotifier>>,
}

impl Net {
    /// `index`: the device's place among the VM's network devices in slot order (its MAC).
    pub fn new(cfg: &NetConfig, uuid: Option<&uuid::Uuid>, index: u8) -> Result<Net, String> {
        let mac =
            cfg.mac.unwrap_or_else(|| uuid.map(|u| xhyve_contract::mac::nic_mac(u, index)).unwrap_or_else(random_mac));
        let backend: Box<dyn Backend> = match &cfg.backend {
            BackendConfig::Tap(name) => Box::new(tap::open(name)?),
            BackendConfig::User(fwds) => Box::new(slirp::Slirp::spawn(fwds)?),
            BackendConfig::Passt(fwds) => Box::new(passt::Passt::spawn(fwds)?),
            BackendConfig::Socket(path) => Box::new(socket::connect(path)?),
        };
        let net = Net::with_backend(mac, backend)?;
        let (wake, fd) = (net.wake.clone(), net.backend.fd());
        sandbox::spawn(ThreadKind::NetPoll, "virtio-net-poll".into(), move || wake.run(fd))
            .map_err(|e| format!("cannot start the network poller: {e}"))?;
        Ok(net)
    }

    fn with_backend(mac: [u8; 6], backend: Box<dyn Backend>) -> Result<Net, String> {
        let wake = Arc::new(RxWake {
            armed: AtomicBool::new(false),
            arm: EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?,
            kick: Mutex::new(None),
        });
        let rx = Mutex::new(RxState { pending: None, spare: Vec::new() });
        Ok(Net {
            mac,
            backend,
            rx,
            dead: AtomicBool::new(false),
            wake,
            announce: AtomicBool::new(false),
            config_changed: Mutex::new(None),
        })
    }

    fn backend_failed(&self, e: std::io::Error) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            crate::logger::log(format!("virtio-net: backend: {e}; the link carries no more frames"));
        }
    }

    fn process_rx(&self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
        let broken = |e: virtio_queue::Error| QueueBroken(e.to_string());
        let mut st = self.rx.lock().unwrap();
        let mut used = false;
        loop {
            if st.pending.is_none() {
                if self.dead.load(Ordering::SeqCst) {
                    break;
                }
                let mut frame = std::mem::take(&mut st.spare);
                match self.backend.recv(&mut frame) {
                    Ok(true) => st.pending = Some(frame),
                    Ok(false) => {
                        st.spare = frame;
                        break;
                    }
                    Err(e) => {
                        self.backend_failed(e);
                        break;
                    }
                }
            }
            let chain = queue.iter(mem).map_err(broken)?.next();
            match chain {
                Some(chain) => {
                    let head = chain.head_index();
                    let frame = st.pending.take().unwrap_or_default();
                    let len = write_frame(chain, mem, &frame);
                    st.spare = frame;
                    queue.add_used(mem, head, len).map_err(broken)?;
                    used = true;
                }
                // No guest buffer: keep the frame; the guest's next notification resumes us
                // (unless buffers came while notifications were being re-enabled).
                None => {
                    if !queue.enable_notification(mem).map_err(broken)? {
                        break;
                    }
                }
            }
        }
        // Every frame taken: wake us when the backend has more.
        if st.pending.is_none() && !self.dead.load(Ordering::SeqCst) && !self.wake.armed.swap(true, Ordering::SeqCst) {
            let _ = self.wake.arm.write(1);
        }
        Ok(used)
    }
}

impl VirtioDevice for Net {
    fn queue_thread(&self) -> ThreadKind {
        ThreadKind::NetQueue
    }

    fn device_type(&self) -> u16 {
        TYPE_NET
    }
    fn pci_class(&self) -> (u8, u8) {
        (0x02, 0x00) // network controller, Ethernet
    }
    fn features(&self) -> u64 {
        F_MAC | F_STATUS | F_CTRL_VQ | F_GUEST_ANNOUNCE
    }
    fn num_queues(&self) -> usize {
        3 // rx, tx, control
    }
    fn queue_max_size(&self) -> u16 {
        256
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 8];
        cfg[..6].copy_from_slice(&self.mac);
        let announce = if self.announce.load(Ordering::SeqCst) { STATUS_ANNOUNCE } else { 0 };
        cfg[6..8].copy_from_slice(&(STATUS_LINK_UP | announce).to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| cfg.get(o))
                .copied()
                .unwrap_or(0);
        }
    }
    fn set_queue_kicks(&self, kicks: Vec<Arc<EventFd>>) {
        *self.wake.kick.lock().unwrap() = kicks.into_iter().next();
    }
    fn set_config_notifier(&self, notify: ConfigNotifier) {
        *self.config_changed.lock().unwrap() = Some(notify);
    }
    /// A new backend: ask the guest to announce itself.
    fn restore_state(&self, _: &serde_json::Value) -> Result<(), String> {
        self.announce.store(true, Ordering::SeqCst);
        if let Some(notify) = &*self.config_changed.lock().unwrap() {
            notify();
        }
        Ok(())
    }
    fn process_queue(&self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
        match index {
            RX => self.process_rx(queue, mem),
            TX => {
                let mut buf = Vec::new();
                drain_queue(queue, mem, |chain| {
                    if read_frame(chain, mem, &mut buf) && !self.dead.load(Ordering::SeqCst) {
                        // A full host side drops the frame, as a congested link would.
                        let _ = self.backend.send(&buf[HDR_LEN..]);
                    }
                    0
                })
            }
            CTRL => drain_queue(queue, mem, |chain| self.control(chain, mem)),
            _ => Ok(false),
        }
    }
}

impl Net {
    /// One control-queue command (class, command, data; then the driver's ack byte): only the
    /// announcement's acknowledgement is understood.
    fn control(&self, chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        let descs: Vec<_> = chain.collect();
        let Some(ack) = descs.iter().rev().find(|d| d.is_write_only()) else { return 0 };
        let head = descs.iter().find(|d| !d.is_write_only()).and_then(|d| mem.read_obj::<[u8; 2]>(d.addr()).ok());
        let status = match head {
            Some([CTRL_ANNOUNCE, CTRL_ANNOUNCE_ACK]) => {
                self.announce.store(false, Ordering::SeqCst);
                CTRL_OK
            }
            _ => CTRL_ERR,
        };
        u32::from(mem.write_obj(status, ack.addr()).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::*;
    use std::collections::VecDeque;
    use std::os::fd::{AsRawFd, RawFd};
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestAddress};

    const W: u16 = VRING_DESC_F_WRITE as u16;

    /// Frames to hand the device, and what it sent.
    struct Fake {
        evt: vmm_sys_util::eventfd::EventFd,
        incoming: Mutex<VecDeque<Vec<u8>>>,
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Backend for Fake {
        fn fd(&self) -> RawFd {
            self.evt.as_raw_fd()
        }
        fn recv(&self, buf: &mut Vec<u8>) -> std::io::Result<bool> {
            match self.incoming.lock().unwrap().pop_front() {
                Some(f) => {
                    *buf = f;
                    Ok(true)
                }
                None => Ok(false),
            }
        }
        fn send(&self, frame: &[u8]) -> std::io::Result<()> {
            self.sent.lock().unwrap().push(frame.to_vec());
            Ok(())
        }
    }

    fn net(frames: Vec<Vec<u8>>) -> (Net, Arc<Mutex<Vec<Vec<u8>>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            evt: vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
            incoming: Mutex::new(frames.into()),
            sent: sent.clone(),
        };
        (Net::with_backend([2, 1, 2, 3, 4, 5], Box::new(fake)).unwrap(), sent)
    }

    #[test]
    fn config_space() {
        let (n, _) = net(vec![]);
        let mut b = [0u8; 10];
        n.read_config(0, &mut b);
        assert_eq!(b, [2, 1, 2, 3, 4, 5, 1, 0, 0, 0]);
        n.read_config(u64::MAX, &mut b[..2]);
        assert_eq!(&b[..2], [0, 0]);
        assert_eq!(n.features(), F_MAC | F_STATUS | F_CTRL_VQ | F_GUEST_ANNOUNCE);
    }

    #[test]
    fn a_restore_asks_the_guest_to_announce_itself() {
        let (n, _) = net(vec![]);
        let raised = Arc::new(AtomicBool::new(false));
        let r = raised.clone();
        n.set_config_notifier(Box::new(move || r.store(true, Ordering::SeqCst)));
        n.restore_state(&serde_json::Value::Null).unwrap();
        assert!(raised.load(Ordering::SeqCst), "a configuration-change interrupt");
        let mut status = [0u8; 2];
        n.read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), STATUS_LINK_UP | STATUS_ANNOUNCE);
        // The driver's commands: an unknown one is refused, the announcement's ack clears it.
        let mem = guest_mem();
        mem.write_slice(&[1, 1], GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(&[CTRL_ANNOUNCE, CTRL_ANNOUNCE_ACK], GuestAddress(0x10_1000)).unwrap();
        let mut t = TestQueue::new(&mem);
        t.add(&[(0x10_0000, 2, 0), (0x10_2000, 1, W)]);
        t.add(&[(0x10_1000, 2, 0), (0x10_3000, 1, W)]);
        let mut q = t.queue();
        assert!(n.process_queue(CTRL, &mut q, &mem).unwrap());
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_2000)).unwrap(), CTRL_ERR);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_3000)).unwrap(), CTRL_OK);
        assert_eq!((t.used(0).1, t.used(1).1), (1, 1));
        n.read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), STATUS_LINK_UP);
    }

    #[test]
    fn rx_split_across_buffers_and_waits_for_buffers() {
        let f1: Vec<u8> = (0..100u8).collect();
        let (n, _) = net(vec![f1.clone(), vec![9; 60]]);
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem);
        // Header split across two buffers, then the frame.
        t.add(&[(0x10_0000, 5, W), (0x10_1000, 7, W), (0x10_2000, 2000, W)]);
        let mut q = t.queue();
        assert!(n.process_queue(RX, &mut q, &mem).unwrap());
        assert_eq!(t.used(0), (0, 112));
        let mut hdr = [0u8; 12];
        mem.read_slice(&mut hdr[..5], GuestAddress(0x10_0000)).unwrap();
        mem.read_slice(&mut hdr[5..], GuestAddress(0x10_1000)).unwrap();
        assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let mut got = vec![0u8; 100];
        mem.read_slice(&mut got, GuestAddress(0x10_2000)).unwrap();
        assert_eq!(got, f1);
        // The second frame waits for a buffer; the backend is not polled meanwhile.
        assert!(n.rx.lock().unwrap().pending.is_some());
        assert!(!n.wake.armed.load(Ordering::SeqCst));
        t.add(&[(0x10_3000, 2000, W)]);
        assert!(n.process_queue(RX, &mut q, &mem).unwrap());
        assert_eq!(t.used(1), (3, 72));
        assert!(n.wake.armed.load(Ordering::SeqCst), "all taken: the poller waits for the backend");
    }

    #[test]
    fn rx_hostile_chains_drop_the_frame() {
        let (n, _) = net(vec![vec![1; 1500], vec![2; 1500], vec![3; 1500], vec![4; 10]]);
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem);
        t.add(&[(0x10_0000, 100, W)]); // too small
        t.add(&[(0x10_0000, 1600, 0)]); // read-only
        t.add(&[(0xffff_ffff_f000, 0x2000, W)]); // outside guest memory
        t.add(&[(0x1f_fff0, u32::MAX, W)]); // runs off the end of memory: 10+12 bytes do not fit
        let mut q = t.queue();
        assert!(n.process_queue(RX, &mut q, &mem).unwrap());
        for i in 0..4 {
            assert_eq!(t.used(i).1, 0, "chain {i}");
        }
        // A descriptor loop: the chain ends, nothing written, no hang.
        let (n, _) = net(vec![vec![5; 100]]);
        let mut t = TestQueue::new(&mem);
        t.store(0, 0x10_0000, 4, W | virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16, 1);
        t.store(1, 0x10_1000, 4, W | virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16, 0);
        t.add_head(0);
        let mut q = t.queue();
        assert!(n.process_queue(RX, &mut q, &mem).unwrap());
        assert_eq!(t.used(0).1, 0);
        // An impossible avail index: the queue is broken, not the VMM.
        let (n, _) = net(vec![vec![5; 100]]);
        let mut t = TestQueue::new(&mem);
        t.set_avail_idx(1000);
        let mut q = t.queue();
        assert!(n.process_queue(RX, &mut q, &mem).is_err());
    }

    #[test]
    fn tx_strips_header_and_drops_bad_chains() {
        let (n, sent) = net(vec![]);
        let mem = guest_mem();
        mem.write_slice(&[0u8; 12], GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(&[0xaa; 60], GuestAddress(0x10_1000)).unwrap();
        let mut t = TestQueue::new(&mem);
        t.add(&[(0x10_0000, 12, 0), (0x10_1000, 60, 0)]); // good
        t.add(&[(0x10_0000, 10, 0)]); // shorter than the header
        t.add(&[(0x10_0000, 12, 0), (0xffff_ffff_0000, 60, 0)]); // outside guest memory
        t.add(&[(0x10_0000, 0x10_0000, 0), (0x10_0000, 0x10_0000, 0)]); // 2 MiB: too big
        t.add(&[(0x10_0000, 12, 0), (0x10_1000, 60, 0), (0x10_2000, 64, W)]); // writable part ignored
        let mut q = t.queue();
        assert!(n.process_queue(TX, &mut q, &mem).unwrap());
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|f| f == &vec![0xaa; 60]));
        for i in 0..5 {
            assert_eq!(t.used(i).1, 0);
        }
    }
}
