//! Fuzzes virtio-rnd's request queue as a hostile driver lays it out: the input is guest
//! memory, the rings at 0 (descriptor table, avail ring at 0x100, used ring at 0x200).
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xhyve::virtio::rng::Rng;
use xhyve::virtio::VirtioDevice;

const MEM: usize = 1 << 20;
const QSIZE: u16 = 16;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x100), Some(0));
    q.set_used_ring_address(Some(0x200), Some(0));
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    for _ in 0..2 {
        let _ = Rng.process_queue(0, &mut q, &mem);
    }
});
