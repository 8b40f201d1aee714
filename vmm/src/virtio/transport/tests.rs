//! The transport driven as a driver would, on a fake VM.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::GuestMemoryMmap;

use super::common_config::{STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET};
use super::interrupt::ISR_QUEUE;
use super::pci_function::{CAP_COMMON, CAP_DEVICE, CAP_ISR, CAP_NOTIFY};
use super::*;
use crate::bus::BusDevice;
use crate::hypervisor::fake::FakeVm;
use crate::hypervisor::IrqRoute;
use crate::pci::header::INTERRUPT_REG;
use crate::pci::header::{COMMAND_REG, STATUS_INTX};
use crate::pci::msix;
use crate::pci::msix::GsiRouting;
use crate::pci::{BarAllocator, DeviceContext, PciDevice};
use crate::virtio::rng::Rng;
use crate::virtio::testing::*;

const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;

fn w32(t: &Transport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}
fn r32(t: &Transport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}
fn w16(t: &Transport, off: u64, v: u16) {
    t.write(off, &v.to_le_bytes());
}
fn r16(t: &Transport, off: u64) -> u16 {
    let mut b = [0u8; 2];
    t.read(off, &mut b);
    u16::from_le_bytes(b)
}
fn status(t: &Transport) -> u8 {
    let mut b = [0u8; 1];
    t.read(0x14, &mut b);
    b[0]
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A virtio-rnd function in `slot` of a fake VM.
fn rng_device(vm: &Arc<FakeVm>, mem: &GuestMemoryMmap, slot: u8) -> VirtioPci {
    let ctx = DeviceContext { mem: mem.clone(), routing: GsiRouting::new(vm.clone()) };
    VirtioPci::new(Arc::new(Rng), slot, &ctx, &mut BarAllocator::default()).unwrap()
}

/// The driver's side up to DRIVER_OK with queue 0 on `tq`, vectors left unassigned.
fn bring_up(t: &Transport, tq: &TestQueue) {
    t.write(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
    w32(t, 0x08, 1);
    w32(t, 0x0c, 1); // VERSION_1
    t.write(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK]);
    let (desc, avail, used) = tq.addrs();
    w16(t, 0x18, QUEUE_SIZE);
    t.write(0x20, &desc.to_le_bytes());
    t.write(0x28, &avail.to_le_bytes());
    t.write(0x30, &used.to_le_bytes());
    w16(t, 0x1c, 1);
    t.write(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK]);
}

fn isr_read(t: &Transport) -> u8 {
    let mut b = [0u8; 1];
    t.read(ISR, &mut b);
    b[0]
}

#[test]
fn intx_until_msix_is_enabled() {
    let vm = Arc::new(FakeVm::default());
    let mem = guest_mem();
    let mut pci = rng_device(&vm, &mem, 5);
    // INTA#, line = the GSI slot 5 is wired to, level irqfd on it.
    assert_eq!(pci.config_read(INTERRUPT_REG), 0x0100 | 21);
    let (gsi, trigger, resample) = vm.resample_irqfd(0);
    assert_eq!(gsi, 21);
    pci.config_write(1, 0, &[0x06, 0]);
    pci.mmio_ranges();
    let t = pci.transport.clone();
    let mut tq = TestQueue::new(&mem);
    bring_up(&t, &tq);
    let intx_status = |pci: &VirtioPci| pci.config_read(COMMAND_REG) & STATUS_INTX != 0;

    // A used buffer with MSI-X off: ISR bit 0, INTA# up, the status register says so.
    tq.add(&[(0x10_0000, 16, VRING_DESC_F_WRITE as u16)]);
    w16(&t, NOTIFY, 0);
    eventually("INTA#", || trigger.read().is_ok());
    assert!(intx_status(&pci));
    // EOI before the driver read the ISR: the resampler raises the line again.
    resample.write(1).unwrap();
    eventually("INTA# again after EOI", || trigger.read().is_ok());
    // The driver's ISR read returns and clears it.
    assert_eq!(isr_read(&t), ISR_QUEUE);
    assert_eq!(isr_read(&t), 0);
    assert!(!intx_status(&pci));

    // INTx disabled in the command register: the ISR is set but the line stays down until
    // the driver enables INTx again.
    pci.config_write(1, 1, &[0x04]);
    tq.add(&[(0x10_1000, 16, VRING_DESC_F_WRITE as u16)]);
    w16(&t, NOTIFY, 0);
    eventually("the second request", || tq.used(1).1 == 16);
    eventually("ISR", || t.irq.isr.load(Ordering::SeqCst) != 0);
    assert!(!intx_status(&pci));
    assert!(trigger.read().is_err());
    pci.config_write(1, 1, &[0]);
    assert_eq!(trigger.read().unwrap(), 1, "raised when INTx is enabled with the ISR set");
    assert_eq!(isr_read(&t), ISR_QUEUE);

    // MSI-X on: queue interrupts go to the vector, not INTA#.
    w16(&t, 0x16, 0);
    t.write(0x14, &[0]); // vectors are assigned before DRIVER_OK: start over
    let mut tq = TestQueue::new(&mem);
    pci.config_write(pci.msix_cap / 4, 2, &msix::CONTROL_ENABLE.to_le_bytes());
    w32(&t, MSIX_TABLE + 16, 0xfee0_0000);
    w32(&t, MSIX_TABLE + 24, 0x42);
    w32(&t, MSIX_TABLE + 28, 0);
    t.write(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
    w16(&t, 0x1a, 1);
    bring_up(&t, &tq);
    tq.add(&[(0x10_2000, 16, VRING_DESC_F_WRITE as u16)]);
    w16(&t, NOTIFY, 0);
    let msi = vm.irqfds.lock().unwrap()[1].1.try_clone().unwrap();
    eventually("the MSI-X vector", || msi.read().is_ok());
    assert!(trigger.read().is_err(), "no INTx with MSI-X on");
    assert!(!intx_status(&pci));
}

#[test]
fn driver_sequence_msix_and_needs_reset() {
    let vm = Arc::new(FakeVm::default());
    let mem = guest_mem();
    let mut pci = rng_device(&vm, &mem, 2);
    assert_eq!(pci.config_read(0), 0x1044_1af4);
    // Capabilities: MSI-X first, then the four virtio structures.
    let mut at = pci.config.byte(0x34) as usize;
    let mut kinds = Vec::new();
    while at != 0 {
        kinds.push((pci.config.byte(at), pci.config.byte(at + 3)));
        at = pci.config.byte(at + 1) as usize;
    }
    assert_eq!(kinds[0].0, msix::CAP_ID);
    let vtypes: Vec<u8> = kinds[1..].iter().map(|k| k.1).collect();
    assert_eq!(vtypes, vec![CAP_COMMON, CAP_ISR, CAP_DEVICE, CAP_NOTIFY]);
    // Memory decoding on: BAR 0 decodes, the notify ioeventfd sits at its address.
    assert!(pci.mmio_ranges().is_empty());
    pci.config_write(1, 0, &[0x06, 0]);
    let ranges = pci.mmio_ranges();
    assert_eq!((ranges[0].0, ranges[0].1), (crate::layout::PCI_MMIO_START, BAR_SIZE));
    assert_eq!(*vm.ioevents.lock().unwrap(), vec![crate::layout::PCI_MMIO_START + NOTIFY]);
    let t = pci.transport.clone();

    // Features: VERSION_1 offered; a driver without it is refused at FEATURES_OK.
    t.write(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
    w32(&t, 0x00, 1);
    assert_ne!(r32(&t, 0x04) & 1, 0, "VERSION_1");
    t.write(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK]);
    assert_eq!(status(&t) & STATUS_FEATURES_OK, 0);
    w32(&t, 0x08, 1);
    w32(&t, 0x0c, 1 | 0x8000_0000); // an unoffered bit
    t.write(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK]);
    assert_eq!(status(&t) & STATUS_FEATURES_OK, 0);
    w32(&t, 0x0c, 1);
    t.write(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK]);
    assert_ne!(status(&t) & STATUS_FEATURES_OK, 0);

    // Queue 0 at the test queue's rings; vectors: config 0, queue 1; vector 9 does not exist.
    let mut tq = TestQueue::new(&mem);
    let (desc, avail, used) = tq.addrs();
    assert_eq!(r16(&t, 0x12), 1, "num_queues");
    w16(&t, 0x16, 0);
    assert_eq!(r16(&t, 0x18), 64, "max size");
    w16(&t, 0x18, QUEUE_SIZE);
    t.write(0x20, &desc.to_le_bytes()); // one 64-bit write
    w32(&t, 0x28, avail as u32); // two 32-bit halves
    w32(&t, 0x2c, (avail >> 32) as u32);
    w32(&t, 0x30, used as u32);
    w32(&t, 0x34, 0);
    w16(&t, 0x10, 9);
    assert_eq!(r16(&t, 0x10), NO_VECTOR);
    w16(&t, 0x10, 0);
    w16(&t, 0x1a, 1);
    assert_eq!(r16(&t, 0x1a), 1);
    w16(&t, 0x1c, 1);
    assert_eq!(r32(&t, 0x20), desc as u32);
    assert_eq!(r32(&t, 0x28), avail as u32);
    // MSI-X on (capability control), vector 1 programmed and unmasked.
    let cap = pci.msix_cap;
    pci.config_write(cap / 4, 2, &msix::CONTROL_ENABLE.to_le_bytes());
    w32(&t, MSIX_TABLE + 16, 0xfee0_0000);
    w32(&t, MSIX_TABLE + 24, 0x41);
    w32(&t, MSIX_TABLE + 28, 0);
    t.write(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK]);

    // A request, notified through the MMIO path: the worker fills it and sends vector 1.
    tq.add(&[(0x10_0000, 32, VRING_DESC_F_WRITE as u16)]);
    w16(&t, NOTIFY, 0);
    let irqfd = vm.irqfds.lock().unwrap()[1].1.try_clone().unwrap();
    eventually("the queue interrupt", || irqfd.read().is_ok());
    assert_eq!(tq.used(0).1, 32);
    assert!(vm.routes.lock().unwrap().contains(&IrqRoute::Msi { gsi: 25, address: 0xfee0_0000, data: 0x41 }));
    assert!(vm.routes.lock().unwrap().contains(&IrqRoute::Irqchip { gsi: 4, chip: 2, pin: 4 }), "defaults kept");
    assert_eq!(t.isr_take() & 1, 1);

    // A broken avail index: DEVICE_NEEDS_RESET, then a reset brings the device back to 0.
    tq.set_avail_idx(500);
    w16(&t, NOTIFY, 0);
    eventually("NEEDS_RESET", || status(&t) & STATUS_NEEDS_RESET != 0);
    t.write(0x14, &[0]);
    assert_eq!(status(&t), 0);
    assert_eq!(r16(&t, 0x1c), 0, "queue disabled by reset");
    assert!(t.common.lock().unwrap().workers.is_empty());
    // Moving the BAR moves the ioeventfd.
    pci.config_write(4, 0, &0xd000_0000u32.to_le_bytes());
    pci.mmio_ranges();
    assert_eq!(*vm.ioevents.lock().unwrap(), vec![0xd000_0000 + NOTIFY]);
}
