//! Frames in descriptor chains: each behind a 12-byte virtio-net header (all zeros on RX,
//! ignored on TX: no offloads).

use vm_memory::{Address, Bytes, GuestMemoryMmap};

use crate::net::MAX_FRAME;

/// virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
pub(super) const HDR_LEN: usize = 12;

/// Header + frame into the chain's writable buffers; the bytes written, or 0 (frame dropped)
/// when the chain is too small or leaves guest memory.
pub(super) fn write_frame(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    frame: &[u8],
) -> u32 {
    let mut hdr = [0u8; HDR_LEN];
    hdr[10] = 1; // num_buffers
    let total = HDR_LEN + frame.len();
    let mut done = 0usize;
    for desc in chain.writable() {
        if done == total {
            break;
        }
        let n = (desc.len() as usize).min(total - done);
        let mut at = desc.addr();
        let mut left = n;
        // The part of the header, then of the frame, this buffer takes.
        if done < HDR_LEN {
            let h = (HDR_LEN - done).min(left);
            if mem.write_slice(&hdr[done..done + h], at).is_err() {
                return 0;
            }
            at = match at.checked_add(h as u64) {
                Some(a) => a,
                None => return 0,
            };
            done += h;
            left -= h;
        }
        if left > 0 {
            let f = done - HDR_LEN;
            if mem.write_slice(&frame[f..f + left], at).is_err() {
                return 0;
            }
            done += left;
        }
    }
    if done < total {
        return 0;
    }
    total as u32
}

/// The frame of a TX chain (its readable buffers minus the header); None drops it.
pub(super) fn read_frame(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buf: &mut Vec<u8>,
) -> bool {
    buf.clear();
    for desc in chain.readable() {
        let n = desc.len() as usize;
        if buf.len() + n > HDR_LEN + MAX_FRAME {
            return false;
        }
        let at = buf.len();
        buf.resize(at + n, 0);
        if mem.read_slice(&mut buf[at..], desc.addr()).is_err() {
            return false;
        }
    }
    buf.len() > HDR_LEN
}
