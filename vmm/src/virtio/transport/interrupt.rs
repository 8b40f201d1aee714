//! The function's interrupt: MSI-X vectors once the driver enables them, else INTA#.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::pci::intx::IntxLine;
use crate::pci::msix::Msix;

/// ISR status bits: a used ring changed; the configuration (here: the status) changed.
pub(super) const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// Interrupt state shared by the transport and its queue workers.
pub(super) struct Interrupt {
    pub(super) msix: Mutex<Msix>,
    pub(super) intx: IntxLine,
    /// The command register's INTx-disable bit, as the driver last wrote it.
    pub(super) intx_disabled: AtomicBool,
    pub(super) isr: AtomicU8,
    pub(super) config_vector: AtomicU16,
    pub(super) needs_reset: AtomicBool,
}

impl Interrupt {
    /// Sets `isr_bit` and signals the driver: MSI-X `vector` when it enabled MSI-X, else INTA#.
    fn raise(&self, isr_bit: u8, vector: u16) {
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        let mut msix = self.msix.lock().unwrap();
        if msix.enabled() {
            msix.trigger(vector);
        } else if !self.intx_disabled.load(Ordering::SeqCst) {
            self.intx.raise();
        }
    }

    pub(super) fn queue(&self, vector: u16) {
        self.raise(ISR_QUEUE, vector);
    }

    /// DEVICE_NEEDS_RESET, announced by a configuration-change interrupt.
    pub(super) fn needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.config_changed();
    }

    pub(super) fn config_changed(&self) {
        self.raise(ISR_CONFIG, self.config_vector.load(Ordering::SeqCst));
    }

    /// Whether INTA# should be up: an interrupt not yet read from the ISR, INTx in use.
    pub(super) fn intx_level(&self) -> bool {
        self.isr.load(Ordering::SeqCst) != 0
            && !self.intx_disabled.load(Ordering::SeqCst)
            && !self.msix.lock().unwrap().enabled()
    }

    pub(super) fn set_intx_disabled(&self, disabled: bool) {
        self.intx_disabled.store(disabled, Ordering::SeqCst);
        if self.intx_level() {
            self.intx.raise();
        }
    }
}
