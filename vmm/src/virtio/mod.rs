//! virtio 1.x devices on the modern PCI transport, with queues from the `virtio-queue` crate.
//! Each device has a folder (Firecracker's `devices/virtio/<dev>/`): `device.rs` implements
//! [`VirtioDevice`], and what the guest writes into the queues is parsed apart from it.
//!
//! - `transport/`: capabilities, common/notify/ISR/device configuration in BAR 0, MSI-X table
//!   and PBA in the same BAR, INTA# (`crate::pci::intx`) while MSI-X is off, feature
//!   negotiation, status and reset, one worker thread per enabled queue (woken through an
//!   eventfd: a KVM ioeventfd on the queue's notify address where the host has them, else the
//!   vCPU's MMIO write signals it).
//! - `block/`: `virtio-blk` on a `crate::disk::Disk`, raw or qcow2 (queues never share a lock);
//!   `request.rs` parses the request chains.
//! - `rng/`: `virtio-rnd` from the host's getrandom.
//! - `net/`: `virtio-net` (`virtio-tap,TAP` and `virtio-net,user`; backends in `crate::net`);
//!   `frame.rs` moves frames in and out of chains.
//! - `console/`: `virtio-console` (hvc0) on a `-l`-style target or a unix socket.
//! - `vsock/`: `virtio-vsock` with the host side as unix sockets (Firecracker's scheme);
//!   `packet.rs` parses packets, `connections.rs` keeps the connections.
//!
//! A device's configuration (`-s SLOT,EMUL,CONF`) lives in `crate::config`; `crate::builder`
//! turns it into the device and its PCI function.
//!
//! Measured on the nested `kvm_pvm` host (2026-11, tiny box, Linux 6.1): KVM_SET_GSI_ROUTING
//! with MSI routes, irqfds on those GSIs and MMIO ioeventfds are all accepted; the guest binds
//! `virtio-pci` to blk and rng, uses PCI-MSI vectors (config + one per queue; 2 blk queues with
//! `-c 2`), and its block and rng I/O complete. Booted with `pci=nomsi` it binds the same
//! devices to IO-APIC level interrupts (fasteoi) on GSIs 16-23 through the resample irqfds of
//! `crate::pci::intx`, with and without ACPI (`_PRT` or the MP table), and the same I/O works.
//!
//! Everything in a queue comes from the guest: devices access guest memory only through
//! vm-memory's checked accessors, answer a malformed request with an error status, and a broken
//! queue sets DEVICE_NEEDS_RESET. None of it may panic the VMM.

pub mod block;
pub mod console;
pub mod net;
pub mod rng;
#[cfg(test)]
pub mod testing;
pub mod transport;
pub mod vsock;

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::sandbox::ThreadKind;

/// Device types (virtio 1.x section 5).
pub const TYPE_NET: u16 = 1;
pub const TYPE_BLOCK: u16 = 2;
pub const TYPE_CONSOLE: u16 = 3;
pub const TYPE_RNG: u16 = 4;
pub const TYPE_VSOCK: u16 = 19;

/// Transport feature bits.
pub const F_RING_INDIRECT_DESC: u64 = 1 << 28;
pub const F_VERSION_1: u64 = 1 << 32;

/// A queue could not be processed at all (its rings are not in guest memory, its avail index is
/// impossible): the device must be reset by the driver.
#[derive(Debug)]
pub struct QueueBroken(pub String);

/// Raises a configuration-change interrupt.
pub type ConfigNotifier = Box<dyn Fn() + Send + Sync>;

/// The device-type half of a virtio device; the transport does the rest.
pub trait VirtioDevice: Send + Sync {
    fn device_type(&self) -> u16;
    /// PCI class, subclass.
    fn pci_class(&self) -> (u8, u8);
    /// Device feature bits (the transport adds VERSION_1 and INDIRECT_DESC).
    fn features(&self) -> u64;
    fn num_queues(&self) -> usize;
    fn queue_max_size(&self) -> u16;
    /// Reads the device-specific configuration (out-of-range bytes read 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&self, _offset: u64, _data: &[u8]) {}
    /// Handles the chains the driver made available on queue `index`. Returns whether the used
    /// ring changed (the driver wants an interrupt).
    fn process_queue(&self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueBroken>;
    /// Given once by the transport: one eventfd per queue; writing 1 to `kicks[i]` makes queue
    /// `i`'s worker call `process_queue` again, as a driver notification does. For devices whose
    /// host side produces data (console input, vsock packets).
    fn set_queue_kicks(&self, _kicks: Vec<Arc<EventFd>>) {}
    /// Given once by the transport: tells the driver the device configuration changed (a
    /// configuration-change interrupt).
    fn set_config_notifier(&self, _notify: ConfigNotifier) {}
    /// Every queue worker has stopped for a snapshot: bring the host side in line with what the
    /// guest was told (a disk's write-back caches flushed).
    fn quiesce(&self) -> Result<(), String> {
        Ok(())
    }
    /// The device's own state beyond its queues, for a snapshot (after `quiesce`).
    fn save_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Takes a saved state over in a new VMM process, before the queues run again; the host side
    /// (sockets, backends) is this process's, not the one the state was saved with.
    fn restore_state(&self, _state: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }
    /// The kind of thread (and so the seccomp allow-list) its queue workers run as.
    fn queue_thread(&self) -> ThreadKind;
}

/// Listens on the unix socket `path`, replacing a socket an earlier run left there (never any
/// other kind of file). For the devices whose host side is a socket (console, vsock).
pub fn listen(path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
    std::os::unix::net::UnixListener::bind(path)
}

/// Processes everything available on `queue` with `handle(chain) -> bytes written`. Shared by
/// the devices.
pub fn drain_queue<F>(queue: &mut Queue, mem: &GuestMemoryMmap, mut handle: F) -> Result<bool, QueueBroken>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    fill_queue(queue, mem, |chain| Some(handle(chain)))
}

/// Offers the chains available on `queue` to `fill` until it returns None (nothing more to
/// give now: that chain stays available for the next round), re-enabling notifications at the
/// end without missing a late addition. `fill(chain)` returns the bytes it wrote. Returns
/// whether the used ring changed (the driver wants an interrupt).
pub fn fill_queue<F>(queue: &mut Queue, mem: &GuestMemoryMmap, mut fill: F) -> Result<bool, QueueBroken>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> Option<u32>,
{
    let broken = |e: virtio_queue::Error| QueueBroken(e.to_string());
    let mut used = false;
    loop {
        queue.disable_notification(mem).map_err(broken)?;
        let mut exhausted = false;
        while let Some(chain) = queue.iter(mem).map_err(broken)?.next() {
            let head = chain.head_index();
            let Some(len) = fill(chain) else {
                queue.go_to_previous_position();
                exhausted = true;
                break;
            };
            queue.add_used(mem, head, len).map_err(broken)?;
            used = true;
        }
        if !queue.enable_notification(mem).map_err(broken)? || exhausted {
            break;
        }
    }
    Ok(used)
}
