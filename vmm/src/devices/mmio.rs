//! The MMIO bus: guest-physical ranges outside RAM (PCI BARs) and the devices behind them.
//!
//! Ranges change at run time (the guest programs BARs), so the table sits behind a `RwLock`
//! that vCPUs only read. Devices take `&self`: each does its own locking, so an access to one
//! device never waits for another.

use std::sync::{Arc, RwLock};

/// A device behind an MMIO range; `offset` is relative to the range's base.
pub trait MmioDevice: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

struct Range {
    base: u64,
    len: u64,
    /// Who placed the range (e.g. a PCI function), so its ranges can be replaced together.
    owner: u32,
    dev: Arc<dyn MmioDevice>,
}

/// Unclaimed reads return all ones and unclaimed writes are dropped, as on an empty bus.
#[derive(Default)]
pub struct MmioBus {
    ranges: RwLock<Vec<Range>>,
}

impl MmioBus {
    /// Replaces every range of `owner` with `ranges` (base, length, device). Ranges that would
    /// wrap around the address space are left out.
    pub fn set_owner_ranges(&self, owner: u32, ranges: Vec<(u64, u64, Arc<dyn MmioDevice>)>) {
        let mut table = self.ranges.write().unwrap();
        table.retain(|r| r.owner != owner);
        for (base, len, dev) in ranges {
            if len > 0 && base.checked_add(len).is_some() {
                table.push(Range { base, len, owner, dev });
            }
        }
    }

    fn find(&self, addr: u64) -> Option<(u64, Arc<dyn MmioDevice>)> {
        let table = self.ranges.read().unwrap();
        table.iter().find(|r| addr >= r.base && addr - r.base < r.len).map(|r| (addr - r.base, r.dev.clone()))
    }

    /// Returns false when no device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                dev.read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                dev.write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Scratch(Mutex<Vec<(u64, Vec<u8>)>>);

    impl MmioDevice for Scratch {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_replace() {
        let bus = MmioBus::default();
        let dev = Arc::new(Scratch::default());
        bus.set_owner_ranges(1, vec![(0x1000, 0x100, dev.clone())]);
        let mut b = [0u8; 4];
        assert!(bus.read(0x1010, &mut b));
        assert_eq!(b, [0x10; 4]);
        assert!(!bus.read(0x1100, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(bus.write(0x10ff, &[1]));
        assert_eq!(dev.0.lock().unwrap()[0], (0xff, vec![1]));
        // Moving the range: the old address goes dead.
        bus.set_owner_ranges(1, vec![(0x8000, 0x100, dev.clone())]);
        assert!(!bus.write(0x1000, &[1]));
        assert!(bus.read(0x8000, &mut b));
        // A wrapping range is refused rather than matched.
        bus.set_owner_ranges(2, vec![(u64::MAX - 4, 0x100, dev)]);
        assert!(!bus.read(u64::MAX - 1, &mut b));
    }
}
