use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};

use crate::sandbox::ThreadKind;
use crate::virtio::{drain_queue, QueueBroken, VirtioDevice, TYPE_RNG};

/// Most bytes one request gets (the driver asks again for more).
const MAX_PER_REQUEST: usize = 64 << 10;

pub struct Rng;

/// Fills the chain's device-writable buffers; returns the bytes written.
fn fill(chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
    let mut written = 0usize;
    let mut buf = Vec::new();
    for desc in chain.writable() {
        let want = (desc.len() as usize).min(MAX_PER_REQUEST - written);
        if want == 0 {
            break;
        }
        buf.resize(want, 0);
        if xhyve_contract::random::fill(&mut buf).is_err() || mem.write_slice(&buf, desc.addr()).is_err() {
            break; // outside guest memory: what was written so far counts
        }
        written += want;
    }
    written as u32
}

impl VirtioDevice for Rng {
    fn queue_thread(&self) -> ThreadKind {
        ThreadKind::RngQueue
    }

    fn device_type(&self) -> u16 {
        TYPE_RNG
    }
    fn pci_class(&self) -> (u8, u8) {
        (0xff, 0) // "other"
    }
    fn features(&self) -> u64 {
        0
    }
    fn num_queues(&self) -> usize {
        1
    }
    fn queue_max_size(&self) -> u16 {
        64
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn process_queue(&self, _index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
        drain_queue(queue, mem, |chain| fill(chain, mem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;

    #[test]
    fn fills_writable_buffers() {
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem);
        t.add(&[(0x10_0000, 300, VRING_DESC_F_WRITE as u16), (0x10_1000, 100, VRING_DESC_F_WRITE as u16)]);
        let mut q = t.queue();
        assert!(Rng.process_queue(0, &mut q, &mem).unwrap());
        assert_eq!(t.used(0), (0, 400));
        let mut b = [0u8; 300];
        mem.read_slice(&mut b, vm_memory::GuestAddress(0x10_0000)).unwrap();
        assert!(b.iter().any(|x| *x != 0), "random bytes");
    }

    #[test]
    fn hostile_chains() {
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem);
        // Outside guest memory, read-only only, huge length: nothing written, no panic.
        t.add(&[(0xffff_ffff_f000, 0x2000, VRING_DESC_F_WRITE as u16)]);
        t.add(&[(0x10_0000, 16, 0)]);
        t.add(&[(0x1f_8000, u32::MAX, VRING_DESC_F_WRITE as u16)]);
        let mut q = t.queue();
        assert!(Rng.process_queue(0, &mut q, &mem).unwrap());
        assert_eq!(t.used(0).1, 0);
        assert_eq!(t.used(1).1, 0);
        assert_eq!(t.used(2).1, 0, "beyond guest memory: nothing");
        // An avail index that runs ahead of the ring: the queue is broken, not the VMM.
        t.set_avail_idx(1000);
        assert!(Rng.process_queue(0, &mut q, &mem).is_err());
    }
}
