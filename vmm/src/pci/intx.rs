//! Legacy PCI interrupts (INTx#) for drivers that leave MSI-X off (Linux with `pci=nomsi`, or
//! built without CONFIG_PCI_MSI): a function's INTA# drives an IOAPIC input, level-triggered.
//!
//! Wiring: slot S, pin P (0 = INTA#) goes to GSI 16 + (S + P) % 8, the usual swizzle over the
//! eight IOAPIC inputs above the ISA ones (bhyve hands out the same 16-23). The MP table and the
//! DSDT's `_PRT` tell the guest, as level-triggered and active-low ([`IntxRoute`]).
//!
//! Delivery: a KVM irqfd with a resample eventfd per function (`KVM_IRQFD_FLAG_RESAMPLE`, as
//! crosvm and QEMU's VFIO INTx do). A write to the irqfd raises the line; at the guest's EOI
//! KVM drops it and signals the resample fd, and the function's resampler thread raises it again
//! while the function still has something pending (a virtio ISR the driver has not read yet).
//! Functions on one GSI share KVM's resampler: the line drops for all of them, and each raises it
//! again for itself.

use std::sync::OnceLock;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::hypervisor::Vm;
use crate::sandbox::{self, ThreadKind};
use crate::wait;

const FIRST_GSI: u32 = 16;
const GSIS: u32 = 8;
/// INTA#, as `IntxRoute::pin` counts (the Interrupt Pin register says 1 for it).
pub const INTA: u8 = 0;

/// The GSI (IOAPIC input) that `pin` of `slot` drives.
pub fn gsi(slot: u8, pin: u8) -> u32 {
    FIRST_GSI + (u32::from(slot) + u32::from(pin)) % GSIS
}

/// One interrupt pin of a bus-0 slot and the IOAPIC input it is wired to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntxRoute {
    pub slot: u8,
    /// 0 = INTA# .. 3 = INTD#.
    pub pin: u8,
    pub gsi: u32,
}

/// A function's INTA# line.
pub struct IntxLine {
    gsi: u32,
    trigger: EventFd,
    resample: EventFd,
    /// Ends the resampler thread when the line is dropped.
    stop: EventFd,
    /// The resampler thread, joined when the line is dropped: nothing of it outlives the device.
    resampler: OnceLock<JoinHandle<()>>,
}

impl IntxLine {
    pub fn new(vm: &dyn Vm, slot: u8) -> Result<IntxLine, String> {
        let gsi = gsi(slot, INTA);
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"));
        let (trigger, resample, stop) = (eventfd()?, eventfd()?, eventfd()?);
        vm.register_irqfd_with_resample(&trigger, &resample, gsi).map_err(|e| format!("INTx: {e}"))?;
        Ok(IntxLine { gsi, trigger, resample, stop, resampler: OnceLock::new() })
    }

    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Raises the line (nothing changes while it is already up).
    pub fn raise(&self) {
        let _ = self.trigger.write(1);
    }

    /// Starts the thread that raises the line again after each EOI while `pending()` says the
    /// function still wants service.
    pub fn spawn_resampler(&self, name: String, pending: impl Fn() -> bool + Send + 'static) -> Result<(), String> {
        let clone = |fd: &EventFd| fd.try_clone().map_err(|e| format!("eventfd: {e}"));
        let (trigger, resample, stop) = (clone(&self.trigger)?, clone(&self.resample)?, clone(&self.stop)?);
        let thread = sandbox::spawn(ThreadKind::IntxResample, name, move || {
            while wait::readable(&[&resample, &stop]) == Some(0) {
                let _ = resample.read();
                if pending() {
                    let _ = trigger.write(1);
                }
            }
        })
        .map_err(|e| format!("INTx resampler thread: {e}"))?;
        self.resampler.set(thread).map_err(|_| "INTx: the resampler runs already".to_string())
    }
}

impl Drop for IntxLine {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.resampler.take() {
            // Its check upgrades a weak reference, so the thread itself may drop the line last.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::fake::FakeVm;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn eventually(what: &str, f: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn slots_swizzle_over_gsi_16_to_23() {
        assert_eq!(gsi(0, INTA), 16);
        assert_eq!(gsi(2, INTA), 18);
        assert_eq!(gsi(7, 1), 16);
        assert_eq!(gsi(31, 3), 18);
        assert!((0..32).all(|s| (0..4).all(|p| (16..24).contains(&gsi(s, p)))));
    }

    #[test]
    fn raised_again_after_eoi_only_while_pending() {
        let vm = FakeVm::default();
        let line = IntxLine::new(&vm, 3).unwrap();
        assert_eq!(line.gsi(), 19);
        let (gsi, trigger, resample) = vm.resample_irqfd(0);
        assert_eq!(gsi, 19);
        let pending = Arc::new(AtomicBool::new(true));
        let asked = Arc::new(AtomicUsize::new(0));
        let (p, a) = (pending.clone(), asked.clone());
        line.spawn_resampler("test-intx".into(), move || {
            a.fetch_add(1, Ordering::SeqCst);
            p.load(Ordering::SeqCst)
        })
        .unwrap();

        line.raise();
        assert_eq!(trigger.read().unwrap(), 1);
        // EOI with the interrupt still pending: the line comes back.
        resample.write(1).unwrap();
        eventually("the line raised again", || trigger.read().is_ok());
        // EOI once the driver has read the status: the line stays down.
        pending.store(false, Ordering::SeqCst);
        resample.write(1).unwrap();
        eventually("the resampler's check", || asked.load(Ordering::SeqCst) == 2);
        assert!(trigger.read().is_err(), "not raised while nothing is pending");
        // Dropping the line ends the thread (its stop fd wins over a later EOI).
        drop(line);
        resample.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }
}
