//! One thread per enabled queue: processes it on each notification, signals used buffers.

use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::Interrupt;
use crate::logger::log;
use crate::virtio::{QueueBroken, VirtioDevice};
use crate::wait;

pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) stop: EventFd,
    /// Gives the queue back, with its positions, when the worker stops.
    pub(super) handle: JoinHandle<Queue>,
}
pub(super) struct WorkerCtx {
    pub(super) index: usize,
    pub(super) queue: Queue,
    pub(super) vector: u16,
    pub(super) dev: Arc<dyn VirtioDevice>,
    pub(super) mem: GuestMemoryMmap,
    pub(super) irq: Arc<Interrupt>,
    pub(super) notify: Arc<EventFd>,
    pub(super) stop: EventFd,
}

impl WorkerCtx {
    pub(super) fn run(mut self) -> Queue {
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
                    return self.queue;
                }
            }
            match wait::readable(&[&self.notify, &self.stop]) {
                Some(0) => {
                    let _ = self.notify.read();
                }
                _ => return self.queue,
            }
        }
    }
}
