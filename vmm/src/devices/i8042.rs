//! The i8042 keyboard controller, for the one thing guests use it for here: CPU reset. No
//! keyboard answers behind it, and the status register says so the way an absent controller
//! does (parity and time-out errors, a byte waiting): UEFI's PS/2 keyboard and mouse drivers
//! then give up at once instead of waiting out their command time-outs (tens of seconds under
//! an emulating host), and Linux's i8042 driver finds no controller.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::PioDevice;
use crate::exit::{ExitLatch, ExitReason};

/// Port offsets: data at 0 (0x60), command/status at 4 (0x64).
const DATA: u16 = 0;
const STATUS: u16 = 4;
/// Status bits: parity error, time-out, output buffer full (input buffer empty: writes go in).
const STATUS_NO_KEYBOARD: u8 = 0x80 | 0x40 | 0x01;
/// What the data port reads: the floating bus of a controller nobody decodes.
const DATA_NONE: u8 = 0xff;

/// A reset request from the guest ends the VM with "rebooted", as bhyve does.
pub struct ResetToReboot(pub Arc<ExitLatch>);

impl Trigger for ResetToReboot {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reboot);
        Ok(())
    }
}

/// Ports 0x60-0x64.
pub struct I8042(pub I8042Device<ResetToReboot>);

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(match offset {
            DATA => DATA_NONE,
            STATUS => STATUS_NO_KEYBOARD,
            _ => 0,
        });
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let _ = self.0.write(offset as u8, data[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_keyboard_and_reset() {
        let exit = Arc::new(ExitLatch::default());
        let mut kbc = I8042(I8042Device::new(ResetToReboot(exit.clone())));
        let mut b = [0u8];
        kbc.read(STATUS, &mut b);
        // EDK2's Ps2KeyboardDxe: PARE and TIM both set means no controller; IBF clear lets
        // Linux's reboot=k write its reset command without waiting.
        assert_eq!(b[0] & 0xc0, 0xc0);
        assert_eq!(b[0] & 0x02, 0);
        kbc.read(DATA, &mut b);
        assert_eq!(b[0], 0xff);
        assert!(!exit.is_set());
        kbc.write(STATUS, &[0xfe]);
        assert_eq!(exit.wait_timeout(std::time::Duration::ZERO), Some(ExitReason::Reboot));
    }
}
