//! Fuzzes the vsock device's guest side: transmit-queue packets (header parsing, lengths, ops,
//! credit fields) from a hostile driver, then the receive queue filled with the answers.
//! Connection requests go to unix sockets that do not exist, so they end in RST.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xhyve::config::VsockConfig;
use xhyve::virtio::vsock;
use xhyve::virtio::VirtioDevice;

const MEM: usize = 1 << 20;
const QSIZE: u16 = 16;

fn device() -> &'static vsock::Vsock {
    static DEV: OnceLock<vsock::Vsock> = OnceLock::new();
    DEV.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("xhyve-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dev = vsock::Vsock::open(&VsockConfig { cid: 3, socket: dir.join("v.sock") }).unwrap();
        let _ = std::fs::remove_dir_all(&dir); // the listener lives on
        dev
    })
}

fn queue(base: u64) -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
    q.set_ready(true);
    q
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    // Transmit queue rings at 0, receive queue rings at 0x400.
    let (mut tx, mut rx) = (queue(0), queue(0x400));
    if tx.is_valid(&mem) {
        let _ = device().process_queue(1, &mut tx, &mem);
    }
    if rx.is_valid(&mem) {
        let _ = device().process_queue(0, &mut rx, &mem);
    }
});
