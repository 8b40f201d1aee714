//! The port-I/O and MMIO buses: one range map from guest addresses (I/O ports, or
//! guest-physical addresses outside RAM) to the devices behind them.
//!
//! Ranges change at run time (the guest programs PCI BARs), so the table sits behind a `RwLock`
//! that vCPUs only read. Devices take `&self`: each does its own locking, so an access to one
//! device never waits for another. Unclaimed reads return all ones and unclaimed writes are
//! dropped, as on an empty bus.

use std::sync::{Arc, Mutex, RwLock};

/// A device behind a bus range; `offset` is relative to the range's base.
pub trait BusDevice: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

/// A port-I/O device whose state sits behind one lock; in a `Mutex` it is a [`BusDevice`].
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

impl<T: PioDevice> BusDevice for Mutex<T> {
    // Port ranges lie below 64 Ki, so their offsets fit a u16.
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.lock().unwrap().read(offset as u16, data);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.lock().unwrap().write(offset as u16, data);
    }
}

struct Range {
    base: u64,
    len: u64,
    /// Who placed the range (e.g. a PCI function), so its ranges can be replaced together;
    /// None for the fixed ranges of the machine's devices.
    owner: Option<u32>,
    dev: Arc<dyn BusDevice>,
}

impl Range {
    fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.len
    }
}

#[derive(Default)]
pub struct Bus {
    ranges: RwLock<Vec<Range>>,
}

impl Bus {
    /// Claims `len` addresses from `base` for good; the machine's fixed ranges never overlap.
    pub fn insert(&self, base: u64, len: u64, dev: Arc<dyn BusDevice>) -> Result<(), String> {
        let mut table = self.ranges.write().unwrap();
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(format!("bus range {base:#x}+{len} is empty"))?;
        if table.iter().any(|r| r.owner.is_none() && base < r.base + r.len && r.base < end) {
            return Err(format!("bus range {base:#x}+{len} overlaps another device"));
        }
        table.push(Range { base, len, owner: None, dev });
        Ok(())
    }

    /// Replaces every range of `owner` with `ranges` (base, length, device). Ranges that would
    /// wrap around the address space are left out.
    pub fn set_owner_ranges(&self, owner: u32, ranges: Vec<(u64, u64, Arc<dyn BusDevice>)>) {
        let mut table = self.ranges.write().unwrap();
        table.retain(|r| r.owner != Some(owner));
        for (base, len, dev) in ranges {
            if len > 0 && base.checked_add(len).is_some() {
                table.push(Range { base, len, owner: Some(owner), dev });
            }
        }
    }

    fn find(&self, addr: u64) -> Option<(u64, Arc<dyn BusDevice>)> {
        let table = self.ranges.read().unwrap();
        table.iter().find(|r| r.contains(addr)).map(|r| (addr - r.base, r.dev.clone()))
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

    #[derive(Default)]
    struct Scratch(Mutex<Vec<(u64, Vec<u8>)>>);

    impl BusDevice for Scratch {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_replace() {
        let bus = Bus::default();
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

    /// A port device: `&mut self` behind its mutex, offsets relative to its base.
    struct Port(Vec<(u16, u8)>);

    impl PioDevice for Port {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8 + 0x40);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn fixed_port_ranges() {
        let bus = Bus::default();
        let port = Arc::new(Mutex::new(Port(Vec::new())));
        bus.insert(0x3f8, 8, port.clone()).unwrap();
        assert!(bus.insert(0x3fc, 8, port.clone()).unwrap_err().contains("overlaps"));
        assert!(bus.insert(0x2f8, 0, port.clone()).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [0x42]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(port.lock().unwrap().0, vec![(7, 7)]);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
    }
}
