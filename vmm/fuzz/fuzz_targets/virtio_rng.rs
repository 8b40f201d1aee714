//! Fuzzes virtio-rnd's request queue as a hostile driver lays it out: the input is guest
//! memory, the rings at 0 (descriptor table, avail ring at 0x100, used ring at 0x200).
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xhyve::fuzzing::queue;
use xhyve::virtio::rng::Rng;
use xhyve::virtio::VirtioDevice;

const MEM: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    let mut q = queue(0);
    if !q.is_valid(&mem) {
        return;
    }
    for _ in 0..2 {
        let _ = Rng.process_queue(0, &mut q, &mem);
    }
});
