//! BAR 0: the virtio regions and the MSI-X table and PBA, dispatched by offset.

use std::sync::atomic::Ordering;

use super::{Transport, COMMON, DEVICE_CFG, ISR, MSIX_PBA, MSIX_TABLE, NOTIFY, NOTIFY_MULTIPLIER, REGION};
use crate::bus::BusDevice;

impl BusDevice for Transport {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let region = offset / REGION * REGION;
        let at = offset - region;
        match region {
            COMMON => self.common_read(at, data),
            ISR => {
                data.fill(0);
                if at == 0 {
                    data[0] = self.isr_take();
                }
            }
            DEVICE_CFG => self.dev.read_config(at, data),
            MSIX_TABLE => self.irq.msix.lock().unwrap().table_read(at, data),
            MSIX_PBA => self.irq.msix.lock().unwrap().pba_read(at, data),
            _ => data.fill(0),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let region = offset / REGION * REGION;
        let at = offset - region;
        match region {
            COMMON => self.common_write(at, data),
            DEVICE_CFG => self.dev.write_config(at, data),
            NOTIFY => {
                if let Some(evt) = self.notify.get((at / NOTIFY_MULTIPLIER) as usize) {
                    let _ = evt.write(1);
                }
            }
            MSIX_TABLE => self.irq.msix.lock().unwrap().table_write(at, data),
            _ => {}
        }
    }
}

impl Transport {
    pub(super) fn isr_take(&self) -> u8 {
        self.irq.isr.swap(0, Ordering::SeqCst)
    }
}
