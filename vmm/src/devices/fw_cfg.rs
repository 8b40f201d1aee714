//! QEMU's firmware configuration interface (fw_cfg) at ports 0x510-0x51b, as OVMF's
//! QemuFwCfgLib drives it: a 16-bit selector at 0x510, a byte-wide data port at 0x511, and the
//! DMA interface (the guest writes the big-endian address of an access descriptor to 0x514 and
//! 0x518; the write of the low half runs it). Items are numbered; files are items listed by name
//! in the directory item.

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::PioDevice;

pub const PORT: u16 = 0x510;
pub const PORTS: u16 = 0x0c;

/// What a DMA read past an item's end writes, a page at a time.
static ZEROS: [u8; 4096] = [0; 4096];

const SELECTOR: u16 = 0;
const DATA: u16 = 1;
const DMA_HIGH: u16 = 4;
const DMA_LOW: u16 = 8;

pub const SIGNATURE: u16 = 0x00;
pub const ID: u16 = 0x01;
pub const UUID: u16 = 0x02;
pub const RAM_SIZE: u16 = 0x03;
pub const NB_CPUS: u16 = 0x05;
pub const MAX_CPUS: u16 = 0x0f;
const FILE_DIR: u16 = 0x19;
const FIRST_FILE: u16 = 0x20;
/// ID bits: the traditional interface and DMA.
const ID_TRADITIONAL: u32 = 1;
const ID_DMA: u32 = 2;
/// The selector's write-channel bit (legacy writes); not part of the item number.
const SELECTOR_WRITE: u16 = 0x4000;
/// Longest file name with its NUL.
const MAX_NAME: usize = 56;

/// DMA control bits (big-endian in the descriptor).
const DMA_ERROR: u32 = 1 << 0;
const DMA_READ: u32 = 1 << 1;
const DMA_SKIP: u32 = 1 << 2;
const DMA_SELECT: u32 = 1 << 3;
const DMA_WRITE: u32 = 1 << 4;

pub struct FwCfg {
    mem: GuestMemoryMmap,
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<(String, u16)>,
    selected: u16,
    offset: usize,
    dma_high: u32,
}

impl FwCfg {
    pub fn new(mem: GuestMemoryMmap) -> Self {
        let mut items = BTreeMap::new();
        items.insert(SIGNATURE, b"QEMU".to_vec());
        items.insert(ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec());
        let mut f = FwCfg { mem, items, files: Vec::new(), selected: 0, offset: 0, dma_high: 0 };
        f.update_dir();
        f
    }

    pub fn add_item(&mut self, key: u16, bytes: Vec<u8>) {
        self.items.insert(key, bytes);
    }

    /// Adds (or replaces) file `name`.
    pub fn add_file(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), String> {
        if name.len() >= MAX_NAME {
            return Err(format!("fw_cfg: file name {name} is too long"));
        }
        let key = match self.files.iter().find(|(n, _)| n == name) {
            Some((_, k)) => *k,
            None => {
                let k = FIRST_FILE + self.files.len() as u16;
                self.files.push((name.to_string(), k));
                k
            }
        };
        self.items.insert(key, bytes);
        self.update_dir();
        Ok(())
    }

    /// The bytes of file `name`.
    #[cfg(test)]
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        let (_, key) = self.files.iter().find(|(n, _)| n == name)?;
        self.items.get(key).map(Vec::as_slice)
    }

    /// The directory: a big-endian count, then per file its size, item number, reserved 16 bits
    /// and NUL-padded name, sorted by name as QEMU lists them.
    fn update_dir(&mut self) {
        let mut files = self.files.clone();
        files.sort();
        let mut dir = (files.len() as u32).to_be_bytes().to_vec();
        for (name, key) in files {
            let size = self.items.get(&key).map_or(0, Vec::len) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; MAX_NAME];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        self.items.insert(FILE_DIR, dir);
    }

    fn select(&mut self, selector: u16) {
        self.selected = selector & !SELECTOR_WRITE;
        self.offset = 0;
    }

    /// The selected item's bytes from the current offset (empty past its end or for an unknown
    /// item, which read as zeros).
    fn remaining(&self) -> &[u8] {
        self.items.get(&self.selected).map_or(&[], |b| b.get(self.offset..).unwrap_or(&[]))
    }

    /// Runs the DMA descriptor at `addr`, then writes its control word back (0, or the error bit).
    fn dma(&mut self, addr: u64) {
        let desc = GuestAddress(addr);
        let mut raw = [0u8; 16];
        if self.mem.read_slice(&mut raw, desc).is_err() {
            return;
        }
        let control = u32::from_be_bytes(raw[0..4].try_into().unwrap());
        let length = u32::from_be_bytes(raw[4..8].try_into().unwrap()) as usize;
        let target = GuestAddress(u64::from_be_bytes(raw[8..16].try_into().unwrap()));
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let ok = if control & DMA_READ != 0 {
            // Past the item's end the guest gets zeros, written a page at a time: the length is
            // the guest's, up to 4 GiB.
            let have = self.remaining();
            let n = have.len().min(length);
            let mut ok = self.mem.write_slice(&have[..n], target).is_ok();
            let mut done = n;
            while ok && done < length {
                let chunk = (length - done).min(ZEROS.len());
                ok = target
                    .0
                    .checked_add(done as u64)
                    .is_some_and(|at| self.mem.write_slice(&ZEROS[..chunk], GuestAddress(at)).is_ok());
                done += chunk;
            }
            self.offset = self.offset.saturating_add(length);
            ok
        } else if control & DMA_SKIP != 0 {
            self.offset = self.offset.saturating_add(length);
            true
        } else {
            // Writes (DMA_WRITE): no item here is writable.
            control & DMA_WRITE == 0
        };
        let status: u32 = if ok { 0 } else { DMA_ERROR };
        let _ = self.mem.write_slice(&status.to_be_bytes(), desc);
    }
}

impl PioDevice for FwCfg {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match offset {
            // Byte by byte: a `rep insb` arrives as one access of several bytes.
            DATA => {
                for b in data.iter_mut() {
                    *b = self.remaining().first().copied().unwrap_or(0);
                    self.offset += 1;
                }
            }
            // Reading the DMA address register gives QEMU's "QEMU CFG" signature.
            DMA_HIGH..=11 => {
                let sig = 0x5145_4d55_2043_4647u64.to_be_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = sig.get(usize::from(offset - DMA_HIGH) + i).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        match (offset, data.len()) {
            (SELECTOR, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (DMA_HIGH, 4) => self.dma_high = u32::from_be_bytes(data.try_into().unwrap()),
            (DMA_LOW, 4) => {
                let low = u32::from_be_bytes(data.try_into().unwrap());
                let addr = u64::from(self.dma_high) << 32 | u64::from(low);
                self.dma_high = 0;
                self.dma(addr);
            }
            (DMA_HIGH, 8) => self.dma(u64::from_be_bytes(data.try_into().unwrap())),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> FwCfg {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut f = FwCfg::new(mem);
        f.add_item(NB_CPUS, 2u16.to_le_bytes().to_vec());
        f.add_file("etc/e820", vec![1, 2, 3, 4, 5]).unwrap();
        f.add_file("bootorder", b"/pci@i0cf8/x\0".to_vec()).unwrap();
        f
    }

    fn pio_read(f: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        f.write(SELECTOR, &key.to_le_bytes());
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                f.read(DATA, &mut b);
                b[0]
            })
            .collect()
    }

    /// Runs a DMA descriptor at 0x1000 targeting 0x2000 and returns the control word after.
    fn dma(f: &mut FwCfg, control: u32, len: u32) -> u32 {
        let mut d = control.to_be_bytes().to_vec();
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&0x2000u64.to_be_bytes());
        f.mem.write_slice(&d, GuestAddress(0x1000)).unwrap();
        f.write(DMA_HIGH, &0u32.to_be_bytes());
        f.write(DMA_LOW, &0x1000u32.to_be_bytes());
        u32::from_be_bytes(f.mem.read_obj::<[u8; 4]>(GuestAddress(0x1000)).unwrap())
    }

    #[test]
    fn signature_id_and_items_through_the_data_port() {
        let mut f = dev();
        assert_eq!(pio_read(&mut f, SIGNATURE, 4), b"QEMU");
        assert_eq!(pio_read(&mut f, ID, 4), [3, 0, 0, 0]);
        assert_eq!(pio_read(&mut f, NB_CPUS, 3), [2, 0, 0], "zeros past the end");
        assert_eq!(pio_read(&mut f, 0x08, 4), [0; 4], "unknown items read as zeros");
        // `rep insb` of 4: one access of 4 bytes, each the next byte of the item.
        f.write(SELECTOR, &SIGNATURE.to_le_bytes());
        let mut four = [0u8; 4];
        f.read(DATA, &mut four);
        assert_eq!(&four, b"QEMU");
        let mut sig = [0u8; 4];
        f.read(DMA_HIGH, &mut sig);
        assert_eq!(&sig, b"QEMU");
    }

    #[test]
    fn directory_lists_files_by_name() {
        let mut f = dev();
        let dir = pio_read(&mut f, FILE_DIR, 4 + 2 * 64);
        assert_eq!(dir[..4], [0, 0, 0, 2]);
        let entry = |i: usize| &dir[4 + 64 * i..4 + 64 * (i + 1)];
        assert_eq!(entry(0)[..8], [0, 0, 0, 13, 0, 0x21, 0, 0], "bootorder: 13 bytes, item 0x21");
        assert_eq!(&entry(0)[8..17], b"bootorder");
        assert_eq!(&entry(1)[8..16], b"etc/e820");
        assert_eq!(pio_read(&mut f, 0x20, 5), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn dma_select_read_skip_and_errors() {
        let mut f = dev();
        assert_eq!(dma(&mut f, u32::from(0x20u16) << 16 | DMA_SELECT | DMA_READ, 2), 0);
        assert_eq!(f.mem.read_obj::<[u8; 2]>(GuestAddress(0x2000)).unwrap(), [1, 2]);
        assert_eq!(dma(&mut f, DMA_SKIP, 1), 0);
        assert_eq!(dma(&mut f, DMA_READ, 4), 0);
        assert_eq!(f.mem.read_obj::<[u8; 4]>(GuestAddress(0x2000)).unwrap(), [4, 5, 0, 0], "zeros past the end");
        assert_eq!(dma(&mut f, DMA_WRITE, 4), DMA_ERROR, "nothing is writable");
        // The guest's lengths, up to 4 GiB: zeros until RAM ends (no host buffer that large), and
        // an offset that saturates.
        f.mem.write_obj(0xaau8, GuestAddress(0xffff)).unwrap();
        assert_eq!(dma(&mut f, DMA_READ, u32::MAX), DMA_ERROR);
        assert_eq!(f.mem.read_obj::<u8>(GuestAddress(0xffff)).unwrap(), 0, "zeroed up to RAM's last byte");
        for _ in 0..3 {
            assert_eq!(dma(&mut f, DMA_SKIP, u32::MAX), 0);
        }
        // A descriptor whose target is outside RAM fails.
        let mut d = (DMA_SELECT | DMA_READ | u32::from(SIGNATURE) << 16).to_be_bytes().to_vec();
        d.extend_from_slice(&4u32.to_be_bytes());
        d.extend_from_slice(&0x1_0000_0000u64.to_be_bytes());
        f.mem.write_slice(&d, GuestAddress(0x1000)).unwrap();
        f.write(DMA_HIGH, &0u32.to_be_bytes());
        f.write(DMA_LOW, &0x1000u32.to_be_bytes());
        assert_eq!(f.mem.read_obj::<[u8; 4]>(GuestAddress(0x1000)).unwrap(), DMA_ERROR.to_be_bytes());
    }
}
