use std::path::Path;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::request::{
    Request, Segment, MAX_DISCARD_SEGS, S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT,
    T_WRITE_ZEROES, WZ_FLAG_UNMAP,
};
use crate::config::BlockConfig;
use crate::disk::Disk;
use crate::sandbox::ThreadKind;
use crate::virtio::{drain_queue, QueueBroken, VirtioDevice, TYPE_BLOCK};

// Feature bits.
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_TOPOLOGY: u64 = 1 << 10;
const F_MQ: u64 = 1 << 12;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

const SECTOR: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const MAX_QUEUES: usize = 16;
const ID_LEN: usize = 20;
/// Discard / write-zeroes limits the config space announces (and requests are held to).
const MAX_DISCARD_SECTORS: u32 = 1 << 22; // 2 GiB per segment
/// Most bytes one read/write request may move.
const MAX_REQUEST: u64 = 64 << 20;

/// The device's ID: the image's file name, cut or zero-padded to 20 bytes.
fn device_id(path: &Path) -> [u8; ID_LEN] {
    let mut id = [0u8; ID_LEN];
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = name.len().min(ID_LEN);
    id[..n].copy_from_slice(&name.as_bytes()[..n]);
    id
}

pub struct Block {
    disk: Box<dyn Disk>,
    capacity: u64, // in 512-byte sectors
    readonly: bool,
    sector_size: u32,
    physical_size: u32,
    queues: usize,
    id: [u8; ID_LEN],
}

impl Block {
    pub fn open(cfg: &BlockConfig, cpus: u8) -> Result<Block, String> {
        let disk = cfg.open()?;
        Ok(Block {
            capacity: disk.size() / SECTOR,
            disk,
            readonly: cfg.readonly,
            sector_size: cfg.sector_size,
            physical_size: cfg.physical_size,
            queues: usize::from(cpus).clamp(1, MAX_QUEUES),
            id: device_id(&cfg.path),
        })
    }

    fn config_image(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        let put = |c: &mut [u8; 60], at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(&mut c, 0x00, &self.capacity.to_le_bytes());
        put(&mut c, 0x0c, &(u32::from(QUEUE_SIZE) - 2).to_le_bytes()); // seg_max
        put(&mut c, 0x14, &self.sector_size.to_le_bytes());
        c[0x18] = (self.physical_size / self.sector_size).trailing_zeros() as u8; // physical_block_exp
        put(&mut c, 0x1a, &1u16.to_le_bytes()); // min_io_size, in logical blocks
        put(&mut c, 0x22, &(self.queues as u16).to_le_bytes());
        put(&mut c, 0x24, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(&mut c, 0x28, &MAX_DISCARD_SEGS.to_le_bytes());
        put(&mut c, 0x2c, &(self.sector_size / SECTOR as u32).to_le_bytes());
        put(&mut c, 0x30, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(&mut c, 0x34, &MAX_DISCARD_SEGS.to_le_bytes());
        c[0x38] = 1; // write_zeroes_may_unmap
        c
    }

    /// Handles one request chain; returns the bytes written into the chain (for the used ring).
    pub fn handle_chain(&self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        let descs: Vec<Descriptor> = chain.collect();
        let Some(req) = Request::parse(&descs) else {
            return 0; // nowhere to put a status: drop it (used length 0)
        };
        let (status, data_written) = match req.header(mem) {
            Some((kind, sector)) => self.execute(&req, kind, sector, mem),
            None => (S_IOERR, 0),
        };
        match mem.write_obj(status, req.status) {
            Ok(()) => data_written.saturating_add(1),
            Err(_) => 0,
        }
    }

    fn execute(&self, req: &Request, kind: u32, sector: u64, mem: &GuestMemoryMmap) -> (u8, u32) {
        match kind {
            T_IN => match self.range(sector, req.data_in_len()) {
                Some(offset) => match transfer(mem, &req.data_in, offset, |at, buf| self.disk.read(at, buf)) {
                    true => (S_OK, req.data_in_len() as u32),
                    false => (S_IOERR, 0),
                },
                None => (S_IOERR, 0),
            },
            T_OUT => {
                let data = req.data_out();
                let len = data.iter().map(|d| u64::from(d.1)).sum();
                match (self.readonly, self.range(sector, len)) {
                    (false, Some(offset)) => match transfer(mem, &data, offset, |at, buf| self.disk.write(at, buf)) {
                        true => (S_OK, 0),
                        false => (S_IOERR, 0),
                    },
                    _ => (S_IOERR, 0),
                }
            }
            T_FLUSH => match self.disk.flush() {
                Ok(()) => (S_OK, 0),
                Err(_) => (S_IOERR, 0),
            },
            T_GET_ID => {
                let mut left = &self.id[..];
                let mut written = 0u32;
                for &(addr, len) in &req.data_in {
                    let n = left.len().min(len as usize);
                    if mem.write_slice(&left[..n], addr).is_err() {
                        return (S_IOERR, 0);
                    }
                    written += n as u32;
                    left = &left[n..];
                }
                (S_OK, written)
            }
            T_DISCARD | T_WRITE_ZEROES if !self.readonly => (self.discard_or_zero(req, kind, mem), 0),
            T_DISCARD | T_WRITE_ZEROES => (S_IOERR, 0),
            _ => (S_UNSUPP, 0),
        }
    }

    /// Byte offset of `len` bytes at `sector`, if a whole number of sectors inside the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let sectors = len / SECTOR;
        // `then`, not `then_some`: the offset of a sector far past the end does not fit a u64.
        (len.is_multiple_of(SECTOR) && len <= MAX_REQUEST && sector.checked_add(sectors)? <= self.capacity)
            .then(|| sector * SECTOR)
    }

    fn discard_or_zero(&self, req: &Request, kind: u32, mem: &GuestMemoryMmap) -> u8 {
        let Some(segments) = req.segments(mem) else { return S_IOERR };
        for Segment { sector, sectors: n, flags } in segments {
            let allowed = if kind == T_DISCARD { 0 } else { WZ_FLAG_UNMAP };
            if flags & !allowed != 0 {
                return S_UNSUPP;
            }
            if n > MAX_DISCARD_SECTORS {
                return S_IOERR;
            }
            let Some(end) = sector.checked_add(u64::from(n)).filter(|e| *e <= self.capacity) else {
                return S_IOERR;
            };
            let (offset, len) = (sector * SECTOR, (end - sector) * SECTOR);
            let done = if kind == T_DISCARD {
                self.disk.discard(offset, len)
            } else {
                self.disk.write_zeroes(offset, len, flags & WZ_FLAG_UNMAP != 0)
            };
            if done.is_err() {
                return S_IOERR;
            }
        }
        S_OK
    }
}

/// Moves the guest buffers `bufs` to or from the disk from `offset` on, one host-contiguous slice
/// at a time (a buffer may span guest RAM regions); false if a buffer is not in guest RAM or
/// the disk fails.
fn transfer(
    mem: &GuestMemoryMmap,
    bufs: &[(GuestAddress, u32)],
    mut offset: u64,
    mut io: impl FnMut(u64, &VolatileSlice) -> std::io::Result<()>,
) -> bool {
    for &(addr, len) in bufs {
        for slice in mem.get_slices(addr, len as usize) {
            let Ok(slice) = slice else { return false };
            if io(offset, &slice).is_err() {
                return false;
            }
            offset += slice.len() as u64;
        }
    }
    true
}

impl VirtioDevice for Block {
    fn queue_thread(&self) -> ThreadKind {
        ThreadKind::BlockQueue
    }

    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }
    fn pci_class(&self) -> (u8, u8) {
        (0x01, 0x00) // mass storage, SCSI (what QEMU shows for virtio-blk)
    }
    fn features(&self) -> u64 {
        let mut f = F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_MQ;
        if self.physical_size != self.sector_size {
            f |= F_TOPOLOGY;
        }
        if self.readonly {
            f |= F_RO;
        } else {
            f |= F_DISCARD | F_WRITE_ZEROES;
        }
        f
    }
    fn num_queues(&self) -> usize {
        self.queues
    }
    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_image();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| c.get(o + i)).copied().unwrap_or(0);
        }
    }
    fn process_queue(&self, _index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken> {
        drain_queue(queue, mem, |chain| self.handle_chain(chain, mem))
    }
    /// The image as the guest left it, metadata and all, before a snapshot is written.
    fn quiesce(&self) -> Result<(), String> {
        self.disk.flush().map_err(|e| format!("virtio-blk: flushing the image: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::*;
    use std::fs::File;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::path::PathBuf;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestAddress;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x11_0000;
    const STATUS: u64 = 0x12_0000;

    fn image(name: &str, size: u64) -> (PathBuf, BlockConfig) {
        let dir = std::env::temp_dir().join(format!("xhyve-blk-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        (path.clone(), BlockConfig::parse(Some(path.to_str().unwrap())).unwrap())
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    #[test]
    fn write_read_flush_get_id() {
        let (path, cfg) = image("serial-number-longer-than-20.img", 1 << 20);
        let blk = Block::open(&cfg, 2).unwrap();
        assert_eq!(blk.num_queues(), 2);
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem);
        let mut q = t.queue();
        // OUT: 1 KiB at sector 2.
        header(&mem, T_OUT, 2);
        mem.write_slice(&[0xab; 1024], GuestAddress(DATA)).unwrap();
        t.add(&[(HDR, 16, 0), (DATA, 1024, 0), (STATUS, 1, W)]);
        assert!(blk.process_queue(0, &mut q, &mem).unwrap());
        assert_eq!((status(&mem), t.used(0).1), (S_OK, 1));
        let mut back = [0u8; 1024];
        File::open(&path).unwrap().read_exact_at(&mut back, 1024).unwrap();
        assert_eq!(back, [0xab; 1024]);
        // IN, header and data in one buffer split across two descriptors.
        header(&mem, T_IN, 2);
        t.add(&[(HDR, 16, 0), (DATA + 0x1000, 512, W), (DATA + 0x2000, 512, W), (STATUS, 1, W)]);
        blk.process_queue(0, &mut q, &mem).unwrap();
        assert_eq!((status(&mem), t.used(1).1), (S_OK, 1025));
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA + 0x2000)).unwrap();
        assert_eq!(got, [0xab; 512]);
        // FLUSH, GET_ID.
        header(&mem, T_FLUSH, 0);
        t.add(&[(HDR, 16, 0), (STATUS, 1, W)]);
        header(&mem, T_GET_ID, 0);
        blk.process_queue(0, &mut q, &mem).unwrap();
        assert_eq!(status(&mem), S_OK);
        t.add(&[(HDR, 16, 0), (DATA, 20, W), (STATUS, 1, W)]);
        blk.process_queue(0, &mut q, &mem).unwrap();
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"serial-number-longer");
        assert_eq!(t.used(3).1, 21);
        // Unknown type.
        header(&mem, 99, 0);
        t.add(&[(HDR, 16, 0), (STATUS, 1, W)]);
        blk.process_queue(0, &mut q, &mem).unwrap();
        assert_eq!(status(&mem), S_UNSUPP);
    }

    #[test]
    fn read_only_refuses_writes() {
        let (path, _) = image("ro.img", 1 << 20);
        let cfg = BlockConfig::parse(Some(&format!("{},ro", path.display()))).unwrap();
        let blk = Block::open(&cfg, 1).unwrap();
        assert_ne!(blk.features() & F_RO, 0);
        assert_eq!(blk.features() & F_DISCARD, 0);
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem);
        let mut q = t.queue();
        for kind in [T_OUT, T_DISCARD, T_WRITE_ZEROES] {
            header(&mem, kind, 0);
            mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            t.add(&[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]);
            blk.process_queue(0, &mut q, &mem).unwrap();
            assert_eq!(status(&mem), S_IOERR, "type {kind}");
        }
    }

    #[test]
    fn discard_punches_holes_and_write_zeroes() {
        let (path, cfg) = image("sparse.img", 4 << 20);
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        f.write_all_at(&vec![0x5a; 2 << 20], 0).unwrap();
        f.sync_all().unwrap();
        let blocks = || std::fs::metadata(&path).unwrap().blocks();
        let before = blocks();
        let blk = Block::open(&cfg, 1).unwrap();
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem);
        let mut q = t.queue();
        let seg = |sector: u64, n: u32, flags: u32| {
            let mut s = [0u8; 16];
            s[0..8].copy_from_slice(&sector.to_le_bytes());
            s[8..12].copy_from_slice(&n.to_le_bytes());
            s[12..16].copy_from_slice(&flags.to_le_bytes());
            s
        };
        header(&mem, T_DISCARD, 0);
        mem.write_slice(&seg(0, 2048, 0), GuestAddress(DATA)).unwrap(); // first MiB
        t.add(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, W)]);
        blk.process_queue(0, &mut q, &mem).unwrap();
        assert_eq!(status(&mem), S_OK);
        assert!(blocks() < before, "st_blocks {} -> {}", before, blocks());
        let mut b = [1u8; 512];
        f.read_exact_at(&mut b, 4096).unwrap();
        assert_eq!(b, [0; 512]);
        // Write zeroes (no unmap) on the second MiB; discard with a flag is unsupported.
        header(&mem, T_WRITE_ZEROES, 2048);
        mem.write_slice(&seg(2048, 8, 0), GuestAddress(DATA)).unwrap();
        t.add(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, W)]);
        blk.process_queue(0, &mut q, &mem).unwrap();
        assert_eq!(status(&mem), S_OK);
        f.read_exact_at(&mut b, 2048 * 512).unwrap();
        assert_eq!(b, [0; 512]);
        f.read_exact_at(&mut b, 2056 * 512).unwrap();
        assert_eq!(b, [0x5a; 512]);
        header(&mem, T_DISCARD, 0);
        mem.write_slice(&seg(0, 8, 1), GuestAddress(DATA)).unwrap();
        t.add(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, W)]);
        blk.process_queue(0, &mut q, &mem).unwrap();
        assert_eq!(status(&mem), S_UNSUPP);
        // Past the end of the disk.
        mem.write_slice(&seg(8190, 8, 0), GuestAddress(DATA)).unwrap();
        t.add(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, W)]);
        blk.process_queue(0, &mut q, &mem).unwrap();
        assert_eq!(status(&mem), S_IOERR);
    }

    #[test]
    fn hostile_chains() {
        let (_, cfg) = image("hostile.img", 1 << 20);
        let blk = Block::open(&cfg, 1).unwrap();
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem);
        let mut q = t.queue();
        let mut expect = |t: &mut TestQueue, descs: &[(u64, u32, u16)], want: Option<u8>, what: &str| {
            mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
            t.add(descs);
            blk.process_queue(0, &mut q, &mem).unwrap();
            assert_eq!(want.map_or(0xee, |w| w), status(&mem), "{what}");
        };
        header(&mem, T_IN, 0);
        expect(&mut t, &[(HDR, 16, 0), (0xffff_0000_0000, 512, W), (STATUS, 1, W)], Some(S_IOERR), "data outside RAM");
        expect(&mut t, &[(HDR, 16, 0), (DATA, 512, W), (0xffff_0000_0000, 1, W)], None, "status outside RAM");
        expect(&mut t, &[(HDR, 16, 0), (DATA, 512, 0)], None, "no writable status");
        expect(&mut t, &[(HDR, 8, 0), (STATUS, 1, W)], Some(S_IOERR), "short header");
        expect(&mut t, &[(HDR, 16, 0), (DATA, 511, W), (STATUS, 1, W)], Some(S_IOERR), "partial sector");
        expect(&mut t, &[(HDR, 16, W), (DATA, 16, 0), (STATUS, 1, W)], None, "readable after writable");
        expect(&mut t, &[(HDR, 16, 0), (DATA, 0x8000_0000, W), (STATUS, 1, W)], Some(S_IOERR), "huge length");
        // Lengths summing past 4 GiB: virtio-queue ends the chain there, so no status buffer.
        expect(&mut t, &[(HDR, 16, 0), (DATA, u32::MAX, W), (STATUS, 1, W)], None, "chain over 4 GiB");
        header(&mem, T_IN, u64::MAX - 1);
        expect(&mut t, &[(HDR, 16, 0), (DATA, 1024, W), (STATUS, 1, W)], Some(S_IOERR), "sector overflow");
        // Found by the fuzzer (vmm/fuzz/seeds/block_request/sector_offset_overflow): the offset
        // of a sector this far out overflowed (a panic with overflow checks) before the refusal.
        header(&mem, T_IN, 1 << 60);
        expect(&mut t, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)], Some(S_IOERR), "offset overflow");
        header(&mem, T_IN, 2047);
        expect(&mut t, &[(HDR, 16, 0), (DATA, 1024, W), (STATUS, 1, W)], Some(S_IOERR), "past the end");
        // A descriptor loop: 0 -> 1 -> 0 ... ends at the queue size, no hang, no status.
        t.store(0, HDR, 16, 1, 1);
        t.store(1, DATA, 512, 1, 0);
        t.add_head(0);
        mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        blk.process_queue(0, &mut q, &mem).unwrap();
        // A head index beyond the table: the queue is broken (NEEDS_RESET), not the VMM.
        t.add_head(crate::virtio::testing::QUEUE_SIZE + 5);
        assert!(blk.process_queue(0, &mut q, &mem).is_err());
    }
}
