//! The packets on the virtqueues: a `virtio_vsock_hdr`, then the payload.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

pub(super) const HOST_CID: u64 = 2;
pub(super) const HDR_LEN: usize = 44;
pub(super) const TYPE_STREAM: u16 = 1;
pub(super) const OP_REQUEST: u16 = 1;
pub(super) const OP_RESPONSE: u16 = 2;
pub(super) const OP_RST: u16 = 3;
pub(super) const OP_SHUTDOWN: u16 = 4;
pub(super) const OP_RW: u16 = 5;
pub(super) const OP_CREDIT_UPDATE: u16 = 6;
pub(super) const OP_CREDIT_REQUEST: u16 = 7;
pub(super) const SHUTDOWN_RCV: u32 = 1;
pub(super) const SHUTDOWN_SEND: u32 = 2;
/// Largest payload accepted from the guest in one packet (Linux sends at most 64 KiB).
pub(super) const MAX_TX_PAYLOAD: u32 = 64 << 10;

/// A virtio_vsock_hdr (little endian, packed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Hdr {
    pub(super) src_cid: u64,
    pub(super) dst_cid: u64,
    pub(super) src_port: u32,
    pub(super) dst_port: u32,
    pub(super) len: u32,
    pub(super) kind: u16,
    pub(super) op: u16,
    pub(super) flags: u32,
    pub(super) buf_alloc: u32,
    pub(super) fwd_cnt: u32,
}

impl Hdr {
    pub(super) fn parse(b: &[u8]) -> Option<Hdr> {
        let b: &[u8; HDR_LEN] = b.get(..HDR_LEN)?.try_into().ok()?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
        Some(Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }

    pub(super) fn bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A transmit chain: its readable bytes, header first, as far as the header's length asks.
pub(super) fn read_packet(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> Option<(Hdr, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut want = HDR_LEN;
    for d in chain.readable() {
        if bytes.len() >= want {
            break;
        }
        let n = (d.len() as usize).min(want - bytes.len());
        let at = bytes.len();
        bytes.resize(at + n, 0);
        mem.read_slice(&mut bytes[at..], d.addr()).ok()?;
        if bytes.len() >= HDR_LEN && want == HDR_LEN {
            let h = Hdr::parse(&bytes)?;
            if h.len > MAX_TX_PAYLOAD {
                return None;
            }
            want = HDR_LEN + h.len as usize;
            // The rest of this descriptor may hold payload.
            let more = (d.len() as usize - n).min(want - bytes.len());
            if more > 0 {
                let at = bytes.len();
                bytes.resize(at + more, 0);
                mem.read_slice(&mut bytes[at..], d.addr().checked_add(n as u64)?).ok()?;
            }
        }
    }
    let hdr = Hdr::parse(&bytes)?;
    if bytes.len() != want {
        return None; // shorter than its header says
    }
    Some((hdr, bytes.split_off(HDR_LEN)))
}

/// Header and payload into a receive chain's writable buffers; the bytes written.
pub(super) fn write_packet(
    descs: &[virtio_queue::desc::split::Descriptor],
    mem: &GuestMemoryMmap,
    hdr: &Hdr,
    data: &[u8],
) -> u32 {
    let mut bytes = hdr.bytes().to_vec();
    bytes.extend_from_slice(data);
    let mut written = 0usize;
    for d in descs {
        let n = (d.len() as usize).min(bytes.len() - written);
        if n == 0 || mem.write_slice(&bytes[written..written + n], d.addr()).is_err() {
            break;
        }
        written += n;
    }
    written as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let h = Hdr {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5,
            dst_port: 6,
            len: 7,
            kind: 1,
            op: 5,
            flags: 2,
            buf_alloc: 9,
            fwd_cnt: 10,
        };
        assert_eq!(Hdr::parse(&h.bytes()), Some(h));
        assert_eq!(Hdr::parse(&[0u8; 43]), None);
    }
}
