//! The transport in a snapshot: pausing it (the queue workers stop, each after the requests it
//! holds, and hand their queues back), and its state: configuration space, MSI-X table, the
//! common configuration with every queue's positions, and the device's own state.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

use super::common_config::{Common, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use super::{Transport, VirtioPci};
use crate::pci::header::COMMAND_INTX_DISABLE;
use crate::pci::msix::MsixState;

/// virtio-queue's `QueueState` (plain public fields), serialised as it is.
#[derive(Serialize, Deserialize)]
#[serde(remote = "QueueState")]
struct QueueStateDef {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

#[derive(Serialize, Deserialize)]
struct SavedQueue(#[serde(with = "QueueStateDef")] QueueState);

#[derive(Serialize, Deserialize)]
pub struct VirtioPciState {
    config: Vec<u32>,
    msix: MsixState,
    isr: u8,
    config_vector: u16,
    needs_reset: bool,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<SavedQueue>,
    vectors: Vec<u16>,
    device: serde_json::Value,
}

impl Transport {
    fn running(&self, c: &Common) -> bool {
        let ok = STATUS_DRIVER_OK | STATUS_FEATURES_OK;
        c.status & ok == ok && !self.irq.needs_reset.load(Ordering::SeqCst)
    }

    fn pause(&self) -> Result<(), String> {
        let mut c = self.common.lock().unwrap();
        if c.paused {
            return Ok(());
        }
        for w in std::mem::take(&mut c.workers) {
            let _ = w.stop.write(1);
            let queue =
                w.handle.join().map_err(|_| format!("virtio type {}: a queue worker died", self.dev.device_type()))?;
            c.queues[w.index] = queue;
        }
        c.paused = true;
        drop(c);
        self.dev.quiesce()
    }

    fn resume(&self) {
        let mut c = self.common.lock().unwrap();
        if std::mem::take(&mut c.paused) && self.running(&c) {
            self.activate(&mut c);
        }
    }
}

impl VirtioPci {
    /// Stops the device for a snapshot: no queue work and no guest memory access until `resume`.
    pub fn pause(&self) -> Result<(), String> {
        self.transport.pause()
    }

    pub fn resume(&self) {
        self.transport.resume()
    }

    /// The function's state; the device is paused.
    pub(super) fn save(&self) -> Result<VirtioPciState, String> {
        let t = &self.transport;
        let c = t.common.lock().unwrap();
        if !c.paused && !c.workers.is_empty() {
            return Err("the device is running: pause it first".into());
        }
        Ok(VirtioPciState {
            config: self.config.save(),
            msix: t.irq.msix.lock().unwrap().save(),
            isr: t.irq.isr.load(Ordering::SeqCst),
            config_vector: t.irq.config_vector.load(Ordering::SeqCst),
            needs_reset: t.irq.needs_reset.load(Ordering::SeqCst),
            device_feature_select: c.device_feature_select,
            driver_feature_select: c.driver_feature_select,
            driver_features: c.driver_features,
            status: c.status,
            queue_select: c.queue_select,
            queues: c.queues.iter().map(|q| SavedQueue(q.state())).collect(),
            vectors: c.vectors.clone(),
            device: t.dev.save_state(),
        })
    }

    /// Takes a saved state over in a new process, then starts the queues the driver had running.
    pub(super) fn restore(&mut self, s: &VirtioPciState) -> Result<(), String> {
        let t = self.transport.clone();
        let mut c = t.common.lock().unwrap();
        if s.queues.len() != c.queues.len() || s.vectors.len() != c.vectors.len() {
            return Err(format!("{} queues in the snapshot, {} here", s.queues.len(), c.queues.len()));
        }
        if s.driver_features & !t.offered != 0 {
            return Err(format!("the driver's features {:#x} are not all offered here", s.driver_features));
        }
        let max_size = t.dev.queue_max_size();
        let mut queues = Vec::new();
        for (i, q) in s.queues.iter().enumerate() {
            let state = QueueState { max_size, ..q.0 };
            queues.push(Queue::try_from(state).map_err(|e| format!("queue {i}: {e}"))?);
        }
        self.config.restore(&s.config)?;
        {
            let mut msix = t.irq.msix.lock().unwrap();
            msix.restore(&s.msix)?;
            let vectors = msix.len();
            let valid = |v: u16| if usize::from(v) < vectors { v } else { super::NO_VECTOR };
            c.vectors = s.vectors.iter().map(|&v| valid(v)).collect();
            t.irq.config_vector.store(valid(s.config_vector), Ordering::SeqCst);
        }
        c.queues = queues;
        c.device_feature_select = s.device_feature_select;
        c.driver_feature_select = s.driver_feature_select;
        c.driver_features = s.driver_features;
        c.status = s.status;
        c.queue_select = s.queue_select;
        t.irq.isr.store(s.isr, Ordering::SeqCst);
        t.irq.needs_reset.store(s.needs_reset, Ordering::SeqCst);
        // Derived from configuration space, as the guest's writes there would have set them.
        t.irq.msix.lock().unwrap().set_control(self.config.word(self.msix_cap + 2));
        t.irq.set_intx_disabled(self.config.command() & COMMAND_INTX_DISABLE != 0);
        // Last: the device may raise interrupts (the net device's announcement).
        t.dev.restore_state(&s.device)?;
        if t.running(&c) {
            t.activate(&mut c);
        }
        Ok(())
    }
}
