//! QEMU's debug console (isa-debugcon) at port 0x402: OVMF's debug builds find it by reading
//! 0xe9 back and then write their log to it byte by byte. Only installed with `-v` (every byte is
//! an exit: without the port OVMF skips its log).

use crate::bus::PioDevice;
use crate::logger::log;

pub const PORT: u16 = 0x402;
/// What a read returns: how the firmware knows the port is there.
const PRESENT: u8 = 0xe9;

/// Collects bytes into lines and logs each as "firmware: LINE".
#[derive(Default)]
pub struct DebugCon {
    line: Vec<u8>,
}

impl PioDevice for DebugCon {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(PRESENT);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        for &b in data {
            match b {
                b'\n' => {
                    let line = String::from_utf8_lossy(&self.line);
                    log(format!("firmware: {}", line.trim_end_matches('\r')));
                    self.line.clear();
                }
                _ if self.line.len() < 4096 => self.line.push(b),
                _ => {}
            }
        }
    }
}
