use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::input::{Inner, SocketOut};
use crate::config::ConsoleConfig;
use crate::console_io;
use crate::sandbox::{self, ThreadKind};
use crate::virtio::{drain_queue, fill_queue, listen, QueueBroken, VirtioDevice, TYPE_CONSOLE};

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZE: u16 = 128;
/// Most output bytes taken from one descriptor.
const MAX_OUT_DESC: u32 = 64 << 10;

pub struct Console {
    out: Mutex<Box<dyn Write + Send>>,
    inner: Arc<Inner>,
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    sandbox::spawn(ThreadKind::ConsoleInput, name.into(), f).map(drop).map_err(|e| format!("{name}: {e}"))
}

impl Console {
    pub fn open(cfg: &ConsoleConfig) -> Result<Console, String> {
        let inner = Arc::new(Inner { input: Mutex::default(), space: Condvar::new(), rx_kick: Mutex::default() });
        let out: Box<dyn Write + Send> = match cfg {
            ConsoleConfig::Target(t) => {
                let c = console_io::open("virtio-console", t, &format!("virtio-console,{t}"))?;
                if let Some(n) = c.notice {
                    crate::logger::log(n);
                }
                if let Some(input) = c.input {
                    let i = inner.clone();
                    spawn("vcon-in", move || i.pump(input))?;
                }
                c.output
            }
            ConsoleConfig::Socket(path) => {
                let what = format!("virtio-console,socket={}", path.display());
                let listener = listen(path).map_err(|e| format!("{what}: {e}"))?;
                let client = Arc::new(Mutex::new(None));
                let (c, i) = (client.clone(), inner.clone());
                spawn("vcon-sock", move || {
                    for stream in listener.incoming().flatten() {
                        let Ok(reader) = stream.try_clone() else { continue };
                        *c.lock().unwrap() = Some(stream);
                        i.pump(reader);
                        *c.lock().unwrap() = None;
                    }
                })?;
                Box::new(SocketOut(client))
            }
        };
        Ok(Console { out: Mutex::new(out), inner })
    }

    /// Fills receive buffers from the pending input.
    fn fill_rx(&self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
        let mut input = self.inner.input.lock().unwrap();
        let used = fill_queue(queue, mem, |chain| {
            if input.is_empty() {
                return None;
            }
            let mut written = 0u32;
            for desc in chain.writable() {
                let n = (desc.len() as usize).min(input.len());
                let bytes: Vec<u8> = input.iter().take(n).copied().collect();
                if n == 0 || mem.write_slice(&bytes, desc.addr()).is_err() {
                    break;
                }
                input.drain(..n);
                written += n as u32;
            }
            Some(written)
        });
        self.inner.space.notify_all();
        used
    }

    /// Sends a transmit chain's readable bytes to the target.
    fn transmit(&self, chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        let mut bytes = Vec::new();
        for desc in chain.readable() {
            let len = desc.len().min(MAX_OUT_DESC) as usize;
            let at = bytes.len();
            bytes.resize(at + len, 0);
            if mem.read_slice(&mut bytes[at..], desc.addr()).is_err() {
                bytes.truncate(at);
                break;
            }
        }
        let mut out = self.out.lock().unwrap();
        let _ = out.write_all(&bytes).and_then(|()| out.flush());
        0
    }
}

impl VirtioDevice for Console {
    fn queue_thread(&self) -> ThreadKind {
        ThreadKind::ConsoleQueue
    }

    fn device_type(&self) -> u16 {
        TYPE_CONSOLE
    }
    fn pci_class(&self) -> (u8, u8) {
        (0x07, 0x80) // simple communication controller, other
    }
    fn features(&self) -> u64 {
        0
    }
    fn num_queues(&self) -> usize {
        2
    }
    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // no size, no multiport, no emergency write
    }
    fn process_queue(&self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
        match index {
            RX => self.fill_rx(queue, mem),
            TX => drain_queue(queue, mem, |chain| self.transmit(chain, mem)),
            _ => Ok(false),
        }
    }
    fn set_queue_kicks(&self, kicks: Vec<Arc<EventFd>>) {
        *self.inner.rx_kick.lock().unwrap() = kicks.into_iter().nth(RX);
    }
    /// Input the host sent that the guest had not taken yet.
    fn save_state(&self) -> serde_json::Value {
        serde_json::json!({ "input": self.inner.input.lock().unwrap().iter().copied().collect::<Vec<u8>>() })
    }
    fn restore_state(&self, state: &serde_json::Value) -> Result<(), String> {
        let input: Vec<u8> = serde_json::from_value(state["input"].clone()).map_err(|e| format!("console: {e}"))?;
        let mut q = self.inner.input.lock().unwrap();
        let later: Vec<u8> = q.drain(..).collect();
        q.extend(input.into_iter().chain(later));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConsoleTarget;
    use crate::virtio::testing::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestAddress;

    const W: u16 = VRING_DESC_F_WRITE as u16;

    #[test]
    fn output_to_log_and_hostile_chains() {
        let dir = std::env::temp_dir().join(format!("vcon-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("out.log");
        let _ = std::fs::remove_file(&log);
        let c = Console::open(&ConsoleConfig::Target(ConsoleTarget::Log(log.clone()))).unwrap();
        let mem = guest_mem();
        mem.write_slice(b"hello ", GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(b"hvc0\n", GuestAddress(0x10_1000)).unwrap();
        let mut t = TestQueue::new(&mem);
        t.add(&[(0x10_0000, 6, 0), (0x10_1000, 5, 0)]);
        // Outside guest memory, write-only, huge: nothing written, no panic.
        t.add(&[(0xffff_ffff_f000, 0x2000, 0)]);
        t.add(&[(0x10_0000, 6, W)]);
        t.add(&[(0x1f_ff00, u32::MAX, 0)]);
        let mut q = t.queue();
        assert!(c.process_queue(TX, &mut q, &mem).unwrap());
        assert_eq!(t.used(0), (0, 0));
        let text = std::fs::read(&log).unwrap();
        assert!(text.starts_with(b"hello hvc0\n"), "{text:?}");
        t.set_avail_idx(1000);
        assert!(c.process_queue(TX, &mut q, &mem).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn socket_input_reaches_receive_buffers() {
        let dir = std::env::temp_dir().join(format!("vcon-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("con.sock");
        let c = Console::open(&ConsoleConfig::Socket(path.clone())).unwrap();
        let kick = Arc::new(EventFd::new(0).unwrap());
        c.set_queue_kicks(vec![kick.clone(), Arc::new(EventFd::new(0).unwrap())]);
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem);
        let mut q = t.queue();
        // No input yet: the posted buffer is left alone.
        t.add(&[(0x10_0000, 4, W)]);
        assert!(!c.process_queue(RX, &mut q, &mem).unwrap());
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"typed!").unwrap();
        kick.read().unwrap(); // the reader thread kicked the receive queue
        while c.inner.input.lock().unwrap().len() < 6 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(c.process_queue(RX, &mut q, &mem).unwrap());
        assert_eq!(t.used(0), (0, 4));
        t.add(&[(0x10_1000, 1, W), (0x10_2000, 64, W)]);
        assert!(c.process_queue(RX, &mut q, &mem).unwrap());
        assert_eq!(t.used(1), (1, 2));
        let mut b = [0u8; 4];
        mem.read_slice(&mut b, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(&b, b"type");
        // Output goes to the connected client.
        mem.write_slice(b"out", GuestAddress(0x10_3000)).unwrap();
        t.add(&[(0x10_3000, 3, 0)]);
        assert!(c.process_queue(TX, &mut q, &mem).unwrap());
        let mut got = [0u8; 3];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"out");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
