//! The PCI function: configuration space with the virtio capabilities, and BAR 0's placement.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::common_config::Common;
use super::interrupt::Interrupt;
use super::{
    Transport, BAR_SIZE, COMMON, COMMON_LEN, DEVICE_CFG, ISR, MSIX_PBA, MSIX_TABLE, NOTIFY, NOTIFY_MULTIPLIER,
    NO_VECTOR, REGION,
};
use crate::bus::BusDevice;
use crate::hypervisor::Vm;
use crate::logger::log;
use crate::pci::header::{ConfigSpace, COMMAND_INTX_DISABLE, COMMAND_REG, STATUS_INTX};
use crate::pci::intx::{IntxLine, INTA};
use crate::pci::msix::{self, IrqfdSink, Msix};
use crate::pci::{BarAllocator, DeviceContext, MmioRange, PciDevice};
use crate::virtio::{VirtioDevice, F_RING_INDIRECT_DESC, F_VERSION_1};

const VENDOR: u16 = 0x1af4;
const DEVICE_BASE: u16 = 0x1040;
/// virtio_pci_cap cfg_type values.
pub(super) const CAP_COMMON: u8 = 1;
pub(super) const CAP_NOTIFY: u8 = 2;
pub(super) const CAP_ISR: u8 = 3;
pub(super) const CAP_DEVICE: u8 = 4;
const CAP_VENDOR: u8 = 0x09;

/// The PCI function: configuration space (with the capabilities) and BAR 0.
pub struct VirtioPci {
    pub(super) config: ConfigSpace,
    pub(super) msix_cap: usize,
    pub(super) transport: Arc<Transport>,
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
        let weak = Arc::downgrade(&irq);
        dev.set_config_notifier(Box::new(move || {
            if let Some(irq) = weak.upgrade() {
                irq.config_changed();
            }
        }));
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
                paused: false,
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
    fn save_state(&mut self) -> Result<serde_json::Value, String> {
        serde_json::to_value(self.save()?).map_err(|e| e.to_string())
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        self.restore(&serde_json::from_value(state.clone()).map_err(|e| e.to_string())?)
    }

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
        now.map(|base| vec![(base, BAR_SIZE, self.transport.clone() as Arc<dyn BusDevice>)]).unwrap_or_default()
    }
}
