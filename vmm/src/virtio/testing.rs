//! Crafted queues for the devices' unit tests, built with virtio-queue's driver-side mock.

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const QUEUE_SIZE: u16 = 16;

/// 2 MiB of guest RAM: the rings at 0, buffers from 1 MiB.
pub fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

pub struct TestQueue<'a> {
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    mem: &'a GuestMemoryMmap,
    next_desc: u16,
    avail: u16,
}

impl<'a> TestQueue<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> Self {
        TestQueue { mock: MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE), mem, next_desc: 0, avail: 0 }
    }

    /// Makes a chain of (address, length, flags) available; NEXT links are added.
    pub fn add(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = self.next_desc % QUEUE_SIZE;
            let last = i + 1 == descs.len();
            let next = (idx + 1) % QUEUE_SIZE;
            let flags =
                if last { flags } else { flags | virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16 };
            self.mock
                .desc_table()
                .store(idx, RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next)))
                .unwrap();
            self.next_desc += 1;
        }
        self.add_head(head % QUEUE_SIZE);
        head
    }

    /// Puts a raw descriptor at `idx` (for loops and bad links).
    pub fn store(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.mock.desc_table().store(idx, RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))).unwrap();
    }

    pub fn add_head(&mut self, head: u16) {
        self.mock.avail().ring().ref_at(usize::from(self.avail % QUEUE_SIZE)).unwrap().store(head);
        self.avail = self.avail.wrapping_add(1);
        self.mock.avail().idx().store(self.avail);
    }

    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail = idx;
        self.mock.avail().idx().store(idx);
    }

    /// (descriptor table, avail ring, used ring) guest addresses.
    pub fn addrs(&self) -> (u64, u64, u64) {
        (self.mock.desc_table_addr().0, self.mock.avail_addr().0, self.mock.used_addr().0)
    }

    pub fn queue(&self) -> Queue {
        self.mock.create_queue().unwrap()
    }

    /// Used element `i`: (descriptor head, bytes written).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let at = self.mock.used_addr().0 + 4 + 8 * u64::from(i % QUEUE_SIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }
}
