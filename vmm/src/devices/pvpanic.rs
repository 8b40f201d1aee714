//! QEMU's ISA pvpanic device at port 0x505, which the DSDT announces as `QEMU0001` (Linux:
//! `pvpanic-mmio`, CONFIG_PVPANIC_MMIO, which takes port resources too). The guest kernel's panic
//! notifier, the first one it runs, writes PANICKED here after printing the panic; the VM then
//! ends with its own exit status instead of spinning in the panic loop until someone kills it.
//! With a crash kernel loaded the guest writes CRASH_LOADED instead and goes on to it: that is
//! only logged.

use std::sync::Arc;

use crate::bus::PioDevice;
use crate::exit::{ExitLatch, ExitReason};
use crate::logger::log;

/// Event bits (Linux `uapi/misc/pvpanic.h`); a read returns the ones the device supports.
const PANICKED: u8 = 1 << 0;
const CRASH_LOADED: u8 = 1 << 1;

pub struct PvPanic {
    exit: Arc<ExitLatch>,
}

impl PvPanic {
    pub fn new(exit: Arc<ExitLatch>) -> Self {
        PvPanic { exit }
    }
}

impl PioDevice for PvPanic {
    fn read(&mut self, _: u16, data: &mut [u8]) {
        data.fill(0);
        data[0] = PANICKED | CRASH_LOADED;
    }

    fn write(&mut self, _: u16, data: &[u8]) {
        if data[0] & PANICKED != 0 {
            self.exit.request(ExitReason::GuestPanic);
        } else if data[0] & CRASH_LOADED != 0 {
            log("the guest kernel panicked and is starting its crash kernel (pvpanic)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn panicked_ends_the_vm_and_crash_loaded_does_not() {
        let exit = Arc::new(ExitLatch::default());
        let mut dev = PvPanic::new(exit.clone());
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b[0], PANICKED | CRASH_LOADED, "the guest driver only sends events the device offers");
        dev.write(0, &[CRASH_LOADED]);
        dev.write(0, &[0]);
        assert!(!exit.is_set());
        dev.write(0, &[PANICKED]);
        assert_eq!(exit.wait_timeout(Duration::ZERO), Some(ExitReason::GuestPanic));
        assert_eq!(ExitReason::GuestPanic.status(), 6);
    }
}
