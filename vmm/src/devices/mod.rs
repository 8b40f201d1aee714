//! Emulated devices and the port-I/O bus that routes guest IN/OUT to them.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod mmio;
pub mod serial;

use std::sync::{Arc, Mutex};

/// A device behind a range of I/O ports; `offset` is relative to the range's base.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A claimed port range: (base, length, device).
type PioRange = (u16, u16, Arc<Mutex<dyn PioDevice>>);

/// Port ranges and their devices. Unclaimed reads return all ones, as on real hardware.
#[derive(Default)]
pub struct PioBus {
    ranges: Vec<PioRange>,
}

impl PioBus {
    /// Claims `len` ports from `base`; overlapping an existing range is a programming error.
    pub fn insert(&mut self, base: u16, len: u16, dev: Arc<Mutex<dyn PioDevice>>) {
        let end = u32::from(base) + u32::from(len);
        assert!(
            self.ranges
                .iter()
                .all(|(b, l, _)| end <= u32::from(*b) || u32::from(base) >= u32::from(*b) + u32::from(*l)),
            "port range {base:#x}+{len} overlaps"
        );
        self.ranges.push((base, len, dev));
    }

    fn find(&self, port: u16) -> Option<(u16, &Arc<Mutex<dyn PioDevice>>)> {
        self.ranges
            .iter()
            .find(|(b, l, _)| port >= *b && u32::from(port) < u32::from(*b) + u32::from(*l))
            .map(|(b, _, d)| (port - b, d))
    }

    /// Returns false when no device claims the port.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((off, dev)) => {
                dev.lock().unwrap().read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
            Some((off, dev)) => {
                dev.lock().unwrap().write(off, data);
                true
            }
            None => false,
        }
    }
}
