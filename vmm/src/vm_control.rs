//! The running VM as the control socket drives it: pause, resume, save, quit.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::control::Machine;
use crate::exit::ExitReason;
use crate::hypervisor::Vm;
use crate::snapshot::{self, Shape, State};
use crate::vcpu::{self, Shared};
use crate::vm::Devices;

pub struct VmControl {
    vm: Arc<dyn Vm>,
    shared: Arc<Shared>,
    devices: Arc<Devices>,
    /// The vCPU threads, for kicks.
    threads: Vec<libc::pthread_t>,
    shape: Shape,
    /// One command at a time, whoever sends it.
    busy: Mutex<()>,
}

impl VmControl {
    pub fn new(
        vm: Arc<dyn Vm>,
        shared: Arc<Shared>,
        devices: Arc<Devices>,
        threads: Vec<libc::pthread_t>,
        shape: Shape,
    ) -> Self {
        VmControl { vm, shared, devices, threads, shape, busy: Mutex::new(()) }
    }

    /// The vCPUs first (they make the devices' requests), then the devices.
    fn pause_now(&self) -> Result<(), String> {
        let exit = &self.shared.exit;
        self.shared.pause.pause(|| vcpu::kick(&self.threads), || exit.is_set())?;
        self.devices.pause().inspect_err(|_| self.shared.pause.resume())
    }

    fn resume_now(&self) {
        self.devices.resume();
        self.shared.pause.resume();
    }

    /// Writes the snapshot of the paused VM.
    fn write(&self, path: &Path) -> Result<String, String> {
        let started = Instant::now();
        let state = State {
            vm: self.vm.save_state().map_err(|e| e.to_string())?,
            vcpus: self.shared.pause.states()?,
            pvm: self.shared.pvm.as_ref().map(|p| p.save_state()),
            devices: self.devices.save_state()?,
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
        self.resume_now();
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
            self.resume_now();
        }
        result
    }

    fn quit(&self) {
        self.shared.exit.request(ExitReason::Quit);
    }
}
