//! The running VM as the control socket drives it: pause, resume, save, quit.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::control::Machine;
use crate::exit::ExitReason;
use crate::hypervisor::Vm;
use crate::snapshot::{self, Shape, State};
use crate::vcpu::{self, Shared};

/// PCI devices whose state a snapshot does not need yet; virtio devices' state is still to come.
const STATELESS_PCI: &[&str] = &[" hostbridge", " amd_hostbridge", " lpc"];

pub struct VmControl {
    vm: Arc<dyn Vm>,
    shared: Arc<Shared>,
    /// The vCPU threads, for kicks.
    threads: Vec<libc::pthread_t>,
    shape: Shape,
    /// One command at a time, whoever sends it.
    busy: Mutex<()>,
}

impl VmControl {
    pub fn new(vm: Arc<dyn Vm>, shared: Arc<Shared>, threads: Vec<libc::pthread_t>, shape: Shape) -> Self {
        VmControl { vm, shared, threads, shape, busy: Mutex::new(()) }
    }

    fn pause_now(&self) -> Result<(), String> {
        let exit = &self.shared.exit;
        self.shared.pause.pause(|| vcpu::kick(&self.threads), || exit.is_set())
    }

    /// Writes the snapshot of the paused VM.
    fn write(&self, path: &Path) -> Result<String, String> {
        if let Some(dev) =
            self.shape.devices.iter().find(|d| d.starts_with("pci ") && !STATELESS_PCI.iter().any(|s| d.ends_with(s)))
        {
            return Err(format!("cannot save this VM yet: the state of {dev} is not saved by this xhyve"));
        }
        let started = Instant::now();
        let state = State {
            vm: self.vm.save_state().map_err(|e| e.to_string())?,
            vcpus: self.shared.pause.states()?,
            pvm: self.shared.pvm.as_ref().map(|p| p.save_state()),
        };
        let w = snapshot::save(path, &self.shape, state, &self.shared.mem)?;
        Ok(format!("bytes={} ram_written={} ms={}", w.file_len, w.ram_written, started.elapsed().as_millis()))
    }
}

impl Machine for VmControl {
    fn paused(&self) -> bool {
        self.shared.pause.is_paused()
    }

    fn pause(&self) -> Result<(), String> {
        let _one = self.busy.lock().unwrap();
        if self.paused() {
            return Ok(());
        }
        self.pause_now()
    }

    fn resume(&self) -> Result<(), String> {
        let _one = self.busy.lock().unwrap();
        if !self.paused() {
            return Err("not paused".into());
        }
        self.shared.pause.resume();
        Ok(())
    }

    fn save(&self, path: &Path) -> Result<String, String> {
        let _one = self.busy.lock().unwrap();
        let was_paused = self.paused();
        if !was_paused {
            self.pause_now()?;
        }
        let result = self.write(path);
        if !was_paused {
            self.shared.pause.resume();
        }
        result
    }

    fn quit(&self) {
        self.shared.exit.request(ExitReason::Quit);
    }
}
