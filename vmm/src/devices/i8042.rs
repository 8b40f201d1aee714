//! The i8042 keyboard controller, for the one thing guests use it for here: CPU reset.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::PioDevice;
use crate::exit::{ExitLatch, ExitReason};

/// A reset request from the guest ends the VM with "rebooted", as bhyve does.
pub struct ResetToReboot(pub Arc<ExitLatch>);

impl Trigger for ResetToReboot {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reboot);
        Ok(())
    }
}

/// Ports 0x60-0x64 (data at offset 0, command/status at offset 4).
pub struct I8042(pub I8042Device<ResetToReboot>);

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.0.read(offset as u8);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let _ = self.0.write(offset as u8, data[0]);
    }
}
