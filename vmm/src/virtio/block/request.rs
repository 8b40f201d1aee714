//! A block request as the driver lays it out in a descriptor chain: the header, the data
//! buffers, the status byte, and the segments of discard / write-zeroes requests.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

// Request types and status values.
pub(super) const T_IN: u32 = 0;
pub(super) const T_OUT: u32 = 1;
pub(super) const T_FLUSH: u32 = 4;
pub(super) const T_GET_ID: u32 = 8;
pub(super) const T_DISCARD: u32 = 11;
pub(super) const T_WRITE_ZEROES: u32 = 13;
pub(super) const S_OK: u8 = 0;
pub(super) const S_IOERR: u8 = 1;
pub(super) const S_UNSUPP: u8 = 2;

const HEADER_LEN: u64 = 16;
const SEGMENT_LEN: usize = 16;
/// Segments one discard / write-zeroes request may carry (announced in the config space).
pub(super) const MAX_DISCARD_SEGS: u32 = 32;
/// Write-zeroes segment flag: the device may unmap (punch holes).
pub(super) const WZ_FLAG_UNMAP: u32 = 1;

/// A request chain split into its parts: device-readable (header, then data for OUT/DISCARD/
/// WRITE_ZEROES) and device-writable (data for IN/GET_ID, then the status byte).
pub(super) struct Request {
    readable: Vec<(GuestAddress, u32)>,
    pub(super) data_in: Vec<(GuestAddress, u32)>,
    pub(super) status: GuestAddress,
}

impl Request {
    /// None when there is no writable byte for the status, or a readable buffer follows a
    /// writable one (the spec's order).
    pub(super) fn parse(descs: &[Descriptor]) -> Option<Request> {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        for d in descs {
            if d.is_write_only() {
                writable.push((d.addr(), d.len()));
            } else if writable.is_empty() {
                readable.push((d.addr(), d.len()));
            } else {
                return None;
            }
        }
        // The status is the last writable byte; zero-length buffers carry nothing.
        writable.retain(|w| w.1 > 0);
        let (addr, len) = writable.pop()?;
        let status = addr.checked_add(u64::from(len) - 1)?;
        if len > 1 {
            writable.push((addr, len - 1));
        }
        Some(Request { readable, data_in: writable, status })
    }

    /// (type, sector) from the 16-byte header at the start of the readable part.
    pub(super) fn header(&self, mem: &GuestMemoryMmap) -> Option<(u32, u64)> {
        let mut h = [0u8; HEADER_LEN as usize];
        let mut at = 0usize;
        for &(addr, len) in &self.readable {
            let n = (h.len() - at).min(len as usize);
            mem.read_slice(&mut h[at..at + n], addr).ok()?;
            at += n;
            if at == h.len() {
                break;
            }
        }
        (at == h.len()).then(|| {
            (u32::from_le_bytes(h[0..4].try_into().unwrap()), u64::from_le_bytes(h[8..16].try_into().unwrap()))
        })
    }

    /// The readable buffers after the header.
    pub(super) fn data_out(&self) -> Vec<(GuestAddress, u32)> {
        let mut skip = HEADER_LEN;
        let mut out = Vec::new();
        for &(addr, len) in &self.readable {
            let l = u64::from(len);
            if skip >= l {
                skip -= l;
                continue;
            }
            match addr.checked_add(skip) {
                Some(a) => out.push((a, (l - skip) as u32)),
                None => break,
            }
            skip = 0;
        }
        out
    }

    pub(super) fn data_in_len(&self) -> u64 {
        self.data_in.iter().map(|d| u64::from(d.1)).sum()
    }
}

/// One segment of a discard / write-zeroes request (`virtio_blk_discard_write_zeroes`).
pub(super) struct Segment {
    pub(super) sector: u64,
    pub(super) sectors: u32,
    pub(super) flags: u32,
}

impl Request {
    /// The segments of a discard / write-zeroes request: None when there are none, too many, a
    /// partial one, or they leave guest memory.
    pub(super) fn segments(&self, mem: &GuestMemoryMmap) -> Option<Vec<Segment>> {
        let data = self.data_out();
        let total: u64 = data.iter().map(|d| u64::from(d.1)).sum();
        if total == 0
            || !total.is_multiple_of(SEGMENT_LEN as u64)
            || total / SEGMENT_LEN as u64 > u64::from(MAX_DISCARD_SEGS)
        {
            return None;
        }
        let mut bytes = vec![0u8; total as usize];
        let mut at = 0;
        for &(addr, len) in &data {
            mem.read_slice(&mut bytes[at..at + len as usize], addr).ok()?;
            at += len as usize;
        }
        let segment = |s: &[u8]| Segment {
            sector: u64::from_le_bytes(s[0..8].try_into().unwrap()),
            sectors: u32::from_le_bytes(s[8..12].try_into().unwrap()),
            flags: u32::from_le_bytes(s[12..16].try_into().unwrap()),
        };
        Some(bytes.chunks(SEGMENT_LEN).map(segment).collect())
    }
}
