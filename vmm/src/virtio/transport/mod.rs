//! The virtio 1.x modern PCI transport (virtio spec 4.1): vendor 0x1af4, device 0x1040 + type,
//! one 32-bit memory BAR holding the four virtio regions and the MSI-X table and PBA:
//!
//! | BAR 0 offset | what |
//! | --- | --- |
//! | 0x0000 | common configuration (`virtio_pci_common_cfg`) |
//! | 0x1000 | ISR status (read clears) |
//! | 0x2000 | device-specific configuration |
//! | 0x3000 | queue notify, 4 bytes per queue (`notify_off_multiplier` 4) |
//! | 0x4000 | MSI-X table, 16 bytes per vector (one per queue + one for config changes) |
//! | 0x5000 | MSI-X pending bits |
//!
//! Interrupts go out as MSI-X once the driver enables it (Linux does when the kernel has
//! CONFIG_PCI_MSI); until then, and for drivers that never do, through INTA#
//! (`crate::pci::intx`): level-triggered, up while the ISR status is non-zero. The driver's ISR
//! read clears it; KVM's resample at EOI raises the line again if a new interrupt came meanwhile.
//! The `VIRTIO_PCI_CAP_PCI_CFG` window is not offered.

mod bar;
mod common_config;
mod interrupt;
mod pci_function;
mod persist;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::virtio::VirtioDevice;
use common_config::Common;
use interrupt::Interrupt;

pub use pci_function::VirtioPci;

/// BAR 0's layout.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u64 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;
const REGION: u64 = 0x1000;
/// An MSI-X vector the driver has not assigned.
const NO_VECTOR: u16 = 0xffff;

/// The transport's state behind BAR 0 (`bar.rs` dispatches accesses to it), shared with the
/// queue workers through `irq`.
struct Transport {
    dev: Arc<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    common: Mutex<Common>,
    irq: Arc<Interrupt>,
    notify: Vec<Arc<EventFd>>,
    offered: u64,
}
