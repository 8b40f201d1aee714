//! Fuzzes virtio queue walking (virtio-queue's avail ring, descriptor chains, indirect tables)
//! and the block device's request parsing and execution (`Block::handle_chain`) together: the
//! input becomes the guest's memory, rings included, as a hostile driver would lay it out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xhyve::config::BlockConfig;
use xhyve::disk::Format;
use xhyve::fuzzing::queue;
use xhyve::virtio::block;
use xhyve::virtio::VirtioDevice;

const MEM: usize = 1 << 20;
// The ring layout (xhyve::fuzzing::queue(0)): descriptor table at 0, avail ring at 0x100, used
// ring at 0x200; everything else is data.

fn device() -> &'static block::Block {
    static DEV: OnceLock<block::Block> = OnceLock::new();
    DEV.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("xhyve-fuzz-{}.img", std::process::id()));
        std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let cfg = BlockConfig { path, readonly: false, format: Format::Raw, sector_size: 512, physical_size: 512 };
        let dev = block::Block::open(&cfg, 1).unwrap();
        let _ = std::fs::remove_file(&cfg.path); // the open file lives on
        dev
    })
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    let mut q = queue(0);
    if !q.is_valid(&mem) {
        return;
    }
    // Twice: the second round sees the used ring and indices the first one left.
    for _ in 0..2 {
        let _ = device().process_queue(0, &mut q, &mem);
    }
});
