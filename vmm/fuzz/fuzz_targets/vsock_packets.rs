//! Fuzzes the vsock device's guest side: transmit-queue packets (header parsing, lengths, ops,
//! credit fields) from a hostile driver, then the receive queue filled with the answers.
//! Connection requests go to unix sockets that do not exist, so they end in RST.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xhyve::config::VsockConfig;
use xhyve::fuzzing::queue;
use xhyve::virtio::vsock;
use xhyve::virtio::VirtioDevice;

const MEM: usize = 1 << 20;

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
