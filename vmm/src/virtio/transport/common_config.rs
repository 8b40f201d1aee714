//! The common configuration region: feature negotiation, device status, reset, queue setup.

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::{Worker, WorkerCtx};
use super::{Transport, NO_VECTOR};
use crate::logger::log;
use crate::sandbox;
use crate::virtio::F_VERSION_1;

/// Device status bits.
pub(super) const STATUS_DRIVER_OK: u8 = 4;
pub(super) const STATUS_FEATURES_OK: u8 = 8;
pub(super) const STATUS_NEEDS_RESET: u8 = 0x40;

/// The driver-visible state of the common configuration.
pub(super) struct Common {
    pub(super) device_feature_select: u32,
    pub(super) driver_feature_select: u32,
    pub(super) driver_features: u64,
    pub(super) status: u8,
    pub(super) queue_select: u16,
    pub(super) queues: Vec<Queue>,
    pub(super) vectors: Vec<u16>,
    pub(super) workers: Vec<Worker>,
    /// Stopped for a snapshot: the workers are gone, `queues` hold their positions.
    pub(super) paused: bool,
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

    pub(super) fn common_read(&self, offset: u64, data: &mut [u8]) {
        let c = self.common.lock().unwrap();
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = match FIELDS.iter().find(|(o, s)| at >= *o && at < o + *s as u64) {
                Some(&(o, _)) => (self.common_field(&c, o) >> ((at - o) * 8)) as u8,
                None => 0,
            };
        }
    }

    pub(super) fn common_write(&self, offset: u64, data: &[u8]) {
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
    pub(super) fn activate(&self, c: &mut Common) {
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
                let name = format!("virtio{}-q{i}", self.dev.device_type());
                let handle = sandbox::spawn(self.dev.queue_thread(), name, move || ctx.run())?;
                Ok(Worker { index: i, stop, handle })
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
