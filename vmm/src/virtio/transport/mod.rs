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

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::virtio::{QueueBroken, VirtioDevice, F_RING_INDIRECT_DESC, F_VERSION_1};
use crate::devices::mmio::MmioDevice;
use crate::hypervisor::Vm;
use crate::pci::header::{ConfigSpace, COMMAND_INTX_DISABLE, COMMAND_REG, STATUS_INTX};
use crate::pci::intx::{IntxLine, INTA};
use crate::pci::msix::{self, IrqfdSink, Msix};
use crate::pci::{BarAllocator, DeviceContext, MmioRange, PciDevice};
use crate::vm::log;
use crate::wait;

const VENDOR: u16 = 0x1af4;
const DEVICE_BASE: u16 = 0x1040;
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

/// virtio_pci_cap cfg_type values.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_VENDOR: u8 = 0x09;

/// Device status bits.
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const NO_VECTOR: u16 = 0xffff;

/// ISR status bits: a used ring changed; the configuration (here: the status) changed.
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// Interrupt state shared by the transport and its queue workers.
pub struct Interrupt {
    msix: Mutex<Msix>,
    intx: IntxLine,
    /// The command register's INTx-disable bit, as the driver last wrote it.
    intx_disabled: AtomicBool,
    isr: AtomicU8,
    config_vector: AtomicU16,
    needs_reset: AtomicBool,
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

    fn queue(&self, vector: u16) {
        self.raise(ISR_QUEUE, vector);
    }

    /// DEVICE_NEEDS_RESET, announced by a configuration-change interrupt.
    fn needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.raise(ISR_CONFIG, self.config_vector.load(Ordering::SeqCst));
    }

    /// Whether INTA# should be up: an interrupt not yet read from the ISR, INTx in use.
    fn intx_level(&self) -> bool {
        self.isr.load(Ordering::SeqCst) != 0
            && !self.intx_disabled.load(Ordering::SeqCst)
            && !self.msix.lock().unwrap().enabled()
    }

    fn set_intx_disabled(&self, disabled: bool) {
        self.intx_disabled.store(disabled, Ordering::SeqCst);
        if self.intx_level() {
            self.intx.raise();
        }
    }
}

struct Worker {
    stop: EventFd,
    handle: JoinHandle<()>,
}

/// The driver-visible state of the common configuration.
struct Common {
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<Queue>,
    vectors: Vec<u16>,
    workers: Vec<Worker>,
}

/// BAR 0 of a virtio PCI function.
pub struct Transport {
    dev: Arc<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    common: Mutex<Common>,
    irq: Arc<Interrupt>,
    notify: Vec<Arc<EventFd>>,
    offered: u64,
}

/// The PCI function: configuration space (with the capabilities) and BAR 0.
pub struct VirtioPci {
    config: ConfigSpace,
    msix_cap: usize,
    transport: Arc<Transport>,
    vm: Arc<dyn Vm>,
    /// Where BAR 0 decodes now, and whether the notify ioeventfds are registered there.
    mapped: Option<u64>,
    ioeventfds: bool,
    ioeventfd_failed: bool,
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let len = if extra.is_some() { 20 } else { 16 };
    let mut c = vec![CAP_VENDOR, 0, len, cfg_type, 0, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        c.extend_from_slice(&x.to_le_bytes());
    }
    c
}

impl VirtioPci {
    pub fn new(
        dev: Arc<dyn VirtioDevice>,
        slot: u8,
        ctx: &DeviceContext,
        bars: &mut BarAllocator,
    ) -> Result<VirtioPci, String> {
        let nq = dev.num_queues();
        let (class, subclass) = dev.pci_class();
        let mut config = ConfigSpace::new(VENDOR, DEVICE_BASE + dev.device_type(), class, subclass);
        config.set_revision(1);
        config.set_subsystem(VENDOR, 0x40);
        config.add_mem32_bar(0, bars.allocate(BAR_SIZE)?, BAR_SIZE as u32);
        let intx = IntxLine::new(ctx.routing.vm().as_ref(), slot)?;
        config.set_interrupt_pin(INTA, intx.gsi() as u8);
        let vectors = nq + 1;
        let control = (vectors - 1) as u16;
        let mut cap = vec![msix::CAP_ID, 0];
        cap.extend_from_slice(&control.to_le_bytes());
        cap.extend_from_slice(&(MSIX_TABLE as u32).to_le_bytes()); // BIR 0
        cap.extend_from_slice(&(MSIX_PBA as u32).to_le_bytes());
        let msix_cap = config.add_capability(&cap, &[0, 0, 0, 0xc0]);
        config.add_capability(&vendor_cap(CAP_COMMON, COMMON, COMMON_LEN, None), &[]);
        config.add_capability(&vendor_cap(CAP_ISR, ISR, 1, None), &[]);
        config.add_capability(&vendor_cap(CAP_DEVICE, DEVICE_CFG, REGION, None), &[]);
        config.add_capability(
            &vendor_cap(CAP_NOTIFY, NOTIFY, nq as u64 * NOTIFY_MULTIPLIER, Some(NOTIFY_MULTIPLIER as u32)),
            &[],
        );

        let sink = IrqfdSink::new(ctx.routing.clone(), vectors)?;
        let irq = Arc::new(Interrupt {
            msix: Mutex::new(Msix::new(vectors, Box::new(sink))),
            intx,
            intx_disabled: AtomicBool::new(false),
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(NO_VECTOR),
            needs_reset: AtomicBool::new(false),
        });
        // The thread holds the interrupt state weakly: dropping the device ends it.
        let weak = Arc::downgrade(&irq);
        irq.intx.spawn_resampler(format!("virtio{}-intx", dev.device_type()), move || {
            weak.upgrade().is_some_and(|irq| irq.intx_level())
        })?;
        let mut notify = Vec::new();
        let mut queues = Vec::new();
        for _ in 0..nq {
            notify.push(Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?));
            queues.push(Queue::new(dev.queue_max_size()).map_err(|e| format!("queue: {e}"))?);
        }
        dev.set_queue_kicks(notify.clone());
        let offered = dev.features() | F_VERSION_1 | F_RING_INDIRECT_DESC;
        let transport = Arc::new(Transport {
            dev,
            mem: ctx.mem.clone(),
            common: Mutex::new(Common {
                device_feature_select: 0,
                driver_feature_select: 0,
                driver_features: 0,
                status: 0,
                queue_select: 0,
                queues,
                vectors: vec![NO_VECTOR; nq],
                workers: Vec::new(),
            }),
            irq,
            notify,
            offered,
        });
        Ok(VirtioPci {
            config,
            msix_cap,
            transport,
            vm: ctx.routing.vm().clone(),
            mapped: None,
            ioeventfds: false,
            ioeventfd_failed: false,
        })
    }

    fn unregister_ioeventfds(&mut self, base: u64) {
        if self.ioeventfds {
            for (i, evt) in self.transport.notify.iter().enumerate() {
                let _ = self.vm.unregister_ioevent(evt, base + NOTIFY + i as u64 * NOTIFY_MULTIPLIER);
            }
            self.ioeventfds = false;
        }
    }

    /// Notify writes then go straight from KVM to the queue's worker, without a VM exit to us.
    /// Where the host refuses, the MMIO handler signals the same eventfd.
    fn register_ioeventfds(&mut self, base: u64) {
        if self.ioeventfd_failed {
            return;
        }
        for (i, evt) in self.transport.notify.iter().enumerate() {
            if let Err(e) = self.vm.register_ioevent(evt, base + NOTIFY + i as u64 * NOTIFY_MULTIPLIER) {
                log(format!("virtio: no ioeventfd ({e}); queue notifications exit to the VMM"));
                for (j, evt) in self.transport.notify.iter().enumerate().take(i) {
                    let _ = self.vm.unregister_ioevent(evt, base + NOTIFY + j as u64 * NOTIFY_MULTIPLIER);
                }
                self.ioeventfd_failed = true;
                return;
            }
        }
        self.ioeventfds = true;
    }
}

impl PciDevice for VirtioPci {
    fn config_read(&self, reg: usize) -> u32 {
        let value = self.config.config_read(reg);
        if reg == COMMAND_REG && self.transport.irq.intx_level() {
            value | STATUS_INTX
        } else {
            value
        }
    }

    fn config_write(&mut self, reg: usize, offset: u8, data: &[u8]) {
        self.config.config_write(reg, offset, data);
        if reg == self.msix_cap / 4 {
            let control = self.config.word(self.msix_cap + 2);
            self.transport.irq.msix.lock().unwrap().set_control(control);
        }
        if reg == COMMAND_REG {
            self.transport.irq.set_intx_disabled(self.config.command() & COMMAND_INTX_DISABLE != 0);
        }
    }

    fn mmio_ranges(&mut self) -> Vec<MmioRange> {
        let now = self.config.mem_bar(0);
        if now != self.mapped {
            if let Some(old) = self.mapped {
                self.unregister_ioeventfds(old);
            }
            if let Some(new) = now {
                self.register_ioeventfds(new);
            }
            self.mapped = now;
        }
        now.map(|base| vec![(base, BAR_SIZE, self.transport.clone() as Arc<dyn MmioDevice>)]).unwrap_or_default()
    }
}

/// (offset, size) of each common-configuration field, virtio 1.0.
const FIELDS: &[(u64, usize)] = &[
    (0x00, 4), // device_feature_select
    (0x04, 4), // device_feature
    (0x08, 4), // driver_feature_select
    (0x0c, 4), // driver_feature
    (0x10, 2), // config_msix_vector
    (0x12, 2), // num_queues
    (0x14, 1), // device_status
    (0x15, 1), // config_generation
    (0x16, 2), // queue_select
    (0x18, 2), // queue_size
    (0x1a, 2), // queue_msix_vector
    (0x1c, 2), // queue_enable
    (0x1e, 2), // queue_notify_off
    (0x20, 4), // queue_desc lo
    (0x24, 4), // queue_desc hi
    (0x28, 4), // queue_driver lo
    (0x2c, 4), // queue_driver hi
    (0x30, 4), // queue_device lo
    (0x34, 4), // queue_device hi
];

impl Transport {
    fn common_field(&self, c: &Common, off: u64) -> u32 {
        let q = c.queues.get(usize::from(c.queue_select));
        let qv = |f: &dyn Fn(&Queue) -> u64| q.map_or(0, f);
        match off {
            0x00 => c.device_feature_select,
            0x04 => match c.device_feature_select {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            0x08 => c.driver_feature_select,
            0x0c => match c.driver_feature_select {
                0 => c.driver_features as u32,
                1 => (c.driver_features >> 32) as u32,
                _ => 0,
            },
            0x10 => u32::from(self.irq.config_vector.load(Ordering::SeqCst)),
            0x12 => c.queues.len() as u32,
            0x14 => {
                let nr = if self.irq.needs_reset.load(Ordering::SeqCst) { STATUS_NEEDS_RESET } else { 0 };
                u32::from(c.status | nr)
            }
            0x15 => 0, // the device configuration never changes under the driver
            0x16 => u32::from(c.queue_select),
            0x18 => qv(&|q| u64::from(q.size())) as u32,
            0x1a => u32::from(c.vectors.get(usize::from(c.queue_select)).copied().unwrap_or(NO_VECTOR)),
            0x1c => qv(&|q| u64::from(q.ready())) as u32,
            0x1e => u32::from(c.queue_select),
            0x20 => qv(&|q| q.desc_table()) as u32,
            0x24 => (qv(&|q| q.desc_table()) >> 32) as u32,
            0x28 => qv(&|q| q.avail_ring()) as u32,
            0x2c => (qv(&|q| q.avail_ring()) >> 32) as u32,
            0x30 => qv(&|q| q.used_ring()) as u32,
            0x34 => (qv(&|q| q.used_ring()) >> 32) as u32,
            _ => 0,
        }
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let c = self.common.lock().unwrap();
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = match FIELDS.iter().find(|(o, s)| at >= *o && at < o + *s as u64) {
                Some(&(o, _)) => (self.common_field(&c, o) >> ((at - o) * 8)) as u8,
                None => 0,
            };
        }
    }

    fn common_write(&self, offset: u64, data: &[u8]) {
        let mut c = self.common.lock().unwrap();
        // Byte-merge the write into each field it touches (a 64-bit write covers two fields).
        let mut at = offset;
        let end = offset + data.len() as u64;
        while at < end {
            let Some(&(o, size)) = FIELDS.iter().find(|(o, s)| at >= *o && at < o + *s as u64) else {
                at += 1;
                continue;
            };
            let mut value = self.common_field(&c, o);
            for b in 0..size as u64 {
                if (offset..end).contains(&(o + b)) {
                    let byte = u32::from(data[(o + b - offset) as usize]);
                    value = (value & !(0xff << (b * 8))) | byte << (b * 8);
                }
            }
            self.set_common_field(&mut c, o, value);
            at = o + size as u64;
        }
    }

    fn set_common_field(&self, c: &mut Common, off: u64, v: u32) {
        let running = c.status & STATUS_DRIVER_OK != 0;
        let qi = usize::from(c.queue_select);
        match off {
            0x00 => c.device_feature_select = v,
            0x08 => c.driver_feature_select = v,
            0x0c if c.status & STATUS_FEATURES_OK == 0 => match c.driver_feature_select {
                0 => c.driver_features = (c.driver_features & !0xffff_ffff) | u64::from(v),
                1 => c.driver_features = (c.driver_features & 0xffff_ffff) | u64::from(v) << 32,
                _ => {}
            },
            0x10 => {
                let n = self.irq.msix.lock().unwrap().len();
                let v = if usize::from(v as u16) < n { v as u16 } else { NO_VECTOR };
                self.irq.config_vector.store(v, Ordering::SeqCst);
            }
            0x14 => self.set_status(c, v as u8),
            0x16 => c.queue_select = v as u16,
            _ if running || qi >= c.queues.len() => {}
            0x18 => c.queues[qi].set_size(v as u16),
            0x1a => {
                let n = self.irq.msix.lock().unwrap().len();
                c.vectors[qi] = if usize::from(v as u16) < n { v as u16 } else { NO_VECTOR };
            }
            0x1c => c.queues[qi].set_ready(v & 1 == 1),
            0x20 => c.queues[qi].set_desc_table_address(Some(v), None),
            0x24 => c.queues[qi].set_desc_table_address(None, Some(v)),
            0x28 => c.queues[qi].set_avail_ring_address(Some(v), None),
            0x2c => c.queues[qi].set_avail_ring_address(None, Some(v)),
            0x30 => c.queues[qi].set_used_ring_address(Some(v), None),
            0x34 => c.queues[qi].set_used_ring_address(None, Some(v)),
            _ => {}
        }
    }

    fn set_status(&self, c: &mut Common, v: u8) {
        if v == 0 {
            self.reset(c);
            return;
        }
        let mut v = v & !STATUS_NEEDS_RESET;
        let newly = v & !c.status;
        if newly & STATUS_FEATURES_OK != 0 {
            let f = c.driver_features;
            if f & !self.offered != 0 || f & F_VERSION_1 == 0 {
                v &= !STATUS_FEATURES_OK; // the driver reads it back and gives up
            }
        }
        c.status = v;
        if newly & STATUS_DRIVER_OK != 0 && v & STATUS_FEATURES_OK != 0 {
            self.activate(c);
        }
    }

    fn reset(&self, c: &mut Common) {
        for w in c.workers.drain(..) {
            let _ = w.stop.write(1);
            let _ = w.handle.join();
        }
        for q in &mut c.queues {
            q.reset();
        }
        c.vectors.fill(NO_VECTOR);
        c.status = 0;
        c.driver_features = 0;
        c.device_feature_select = 0;
        c.driver_feature_select = 0;
        c.queue_select = 0;
        self.irq.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        self.irq.isr.store(0, Ordering::SeqCst);
        self.irq.needs_reset.store(false, Ordering::SeqCst);
    }

    /// DRIVER_OK: a worker thread per enabled queue.
    fn activate(&self, c: &mut Common) {
        for i in 0..c.queues.len() {
            let q = &c.queues[i];
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
                log(format!("virtio type {}: queue {i} is not in guest memory", self.dev.device_type()));
                self.irq.needs_reset();
                return;
            }
            let worker = (|| -> std::io::Result<Worker> {
                let stop = EventFd::new(EFD_NONBLOCK)?;
                let queue = Queue::try_from(q.state()).map_err(|e| std::io::Error::other(e.to_string()))?;
                let ctx = WorkerCtx {
                    index: i,
                    queue,
                    vector: c.vectors[i],
                    dev: self.dev.clone(),
                    mem: self.mem.clone(),
                    irq: self.irq.clone(),
                    notify: self.notify[i].clone(),
                    stop: stop.try_clone()?,
                };
                let handle = std::thread::Builder::new()
                    .name(format!("virtio{}-q{i}", self.dev.device_type()))
                    .spawn(move || ctx.run())?;
                Ok(Worker { stop, handle })
            })();
            match worker {
                Ok(w) => c.workers.push(w),
                Err(e) => {
                    log(format!("virtio: cannot start a queue worker: {e}"));
                    self.irq.needs_reset();
                    return;
                }
            }
        }
    }
}

struct WorkerCtx {
    index: usize,
    queue: Queue,
    vector: u16,
    dev: Arc<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    irq: Arc<Interrupt>,
    notify: Arc<EventFd>,
    stop: EventFd,
}

impl WorkerCtx {
    fn run(mut self) {
        loop {
            // First round without waiting: the driver may have notified before DRIVER_OK.
            match self.dev.process_queue(self.index, &mut self.queue, &self.mem) {
                Ok(true) => self.irq.queue(self.vector),
                Ok(false) => {}
                Err(QueueBroken(e)) => {
                    log(format!(
                        "virtio type {} queue {}: {e}: device needs reset",
                        self.dev.device_type(),
                        self.index
                    ));
                    self.irq.needs_reset();
                    wait::readable(&[&self.stop]);
                    return;
                }
            }
            match wait::readable(&[&self.notify, &self.stop]) {
                Some(0) => {
                    let _ = self.notify.read();
                }
                _ => return,
            }
        }
    }
}

impl MmioDevice for Transport {
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
    fn isr_take(&self) -> u8 {
        self.irq.isr.swap(0, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::mmio::MmioBus;
    use crate::hypervisor::fake::FakeVm;
    use crate::hypervisor::IrqRoute;
    use crate::pci::header::INTERRUPT_REG;
    use crate::pci::msix::GsiRouting;
    use crate::virtio::rng::Rng;
    use crate::virtio::testing::*;
    use std::time::{Duration, Instant};
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;

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
        let ctx = DeviceContext {
            mem: mem.clone(),
            mmio: Arc::new(MmioBus::default()),
            routing: GsiRouting::new(vm.clone()),
            cpus: 1,
            uuid: None,
        };
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
}
