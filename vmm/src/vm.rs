//! The running VM: its vCPUs (started by `crate::builder`), every device, and how it ends:
//! signals become ACPI power-button presses, device events and vCPU exits become its ending.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use xhyve_contract::signals::TermSignals;

use crate::bus::Bus;
use crate::console_io::RawTerminal;
use crate::devices::acpi_pm::{AcpiPm, AcpiPmState};
use crate::devices::cmos::{Cmos, CmosState};
use crate::devices::i8042::I8042;
use crate::devices::serial::{SerialPort, SerialPortState};
use crate::exit::{ExitLatch, ExitReason};
use crate::firmware::Firmware;
use crate::hypervisor::{StatsReader, Vm};
use crate::logger::log;
use crate::pci::intx::IntxRoute;
use crate::pci::{PciConfigIo, PciState};
use crate::vcpu::Shared;
use crate::virtio::transport::VirtioPci;

/// Seconds the guest gets to power off after the ACPI power button, unless overridden.
const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 120;

/// Every device of the machine, reachable from one place, and the buses they sit on.
#[derive(Default)]
pub struct Devices {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    /// com1, com2 as configured.
    pub serial: Vec<Arc<Mutex<SerialPort>>>,
    pub i8042: Option<Arc<Mutex<I8042>>>,
    pub cmos: Option<Arc<Mutex<Cmos>>>,
    /// With `-A`: the ACPI power button.
    pub acpi_pm: Option<Arc<Mutex<AcpiPm>>>,
    /// PCI bus 0 (every function, bridges included) behind its configuration ports.
    pub pci: Option<Arc<Mutex<PciConfigIo>>>,
    /// The virtio functions on that bus.
    pub virtio: Vec<Arc<Mutex<VirtioPci>>>,
    /// With `-f bootrom`: the firmware's images and variable store.
    pub firmware: Option<Firmware>,
}

/// Every device's state in a snapshot. The i8042 has none worth keeping (guests use it only
/// to reset the machine).
#[derive(Serialize, Deserialize)]
pub struct DevicesState {
    serial: Vec<SerialPortState>,
    cmos: Option<CmosState>,
    acpi_pm: Option<AcpiPmState>,
    pci: Option<PciState>,
}

impl Devices {
    /// Where the PCI functions' interrupt pins are wired, for the MP table and the DSDT.
    pub fn pci_intx_routes(&self) -> Vec<IntxRoute> {
        self.pci.as_ref().map(|p| p.lock().unwrap().intx_routes()).unwrap_or_default()
    }

    /// Stops the devices that work on their own (virtio queue workers), each after the requests
    /// it holds, with their host side flushed. The vCPUs must be stopped first: they make the
    /// requests.
    pub fn pause(&self) -> Result<(), String> {
        for dev in &self.virtio {
            if let Err(e) = dev.lock().unwrap().pause() {
                self.resume();
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn resume(&self) {
        for dev in &self.virtio {
            dev.lock().unwrap().resume();
        }
    }

    /// The state of every device; they are paused.
    pub fn save_state(&self) -> Result<DevicesState, String> {
        if self.firmware.is_some() {
            return Err("a machine booted through UEFI firmware (-f bootrom) cannot be saved yet: its fw_cfg \
                        and flash devices keep no snapshot state"
                .into());
        }
        Ok(DevicesState {
            serial: self.serial.iter().map(|s| s.lock().unwrap().save()).collect(),
            cmos: self.cmos.as_ref().map(|c| c.lock().unwrap().save()),
            acpi_pm: self.acpi_pm.as_ref().map(|p| p.lock().unwrap().save()),
            pci: self.pci.as_ref().map(|p| p.lock().unwrap().save_state()).transpose()?,
        })
    }

    /// Puts saved states into this process's devices (built from the same configuration), before
    /// the vCPUs run.
    pub fn restore_state(&self, s: &DevicesState) -> Result<(), String> {
        if s.serial.len() != self.serial.len() {
            return Err(format!("{} serial ports in the snapshot, {} here", s.serial.len(), self.serial.len()));
        }
        for (port, saved) in self.serial.iter().zip(&s.serial) {
            port.lock().unwrap().restore(saved)?;
        }
        if let (Some(c), Some(saved)) = (&self.cmos, &s.cmos) {
            c.lock().unwrap().restore(saved)?;
        }
        if let (Some(p), Some(saved)) = (&self.acpi_pm, &s.acpi_pm) {
            p.lock().unwrap().restore(saved);
        }
        match (&self.pci, &s.pci) {
            (Some(p), Some(saved)) => p.lock().unwrap().restore_state(saved),
            (None, None) => Ok(()),
            _ => Err("PCI in one of the snapshot and this VM only".into()),
        }
    }
}

/// A VM whose vCPUs run.
pub struct Vmm {
    pub vm: Arc<dyn Vm>,
    /// What the vCPU threads share: guest memory, the buses, the exit latch.
    pub shared: Arc<Shared>,
    /// Shared with the control socket, which pauses and saves them.
    pub devices: Arc<Devices>,
    /// SIGTERM, SIGINT and SIGHUP, blocked in every thread and taken here.
    pub signals: TermSignals,
    pub vcpu_stats: Vec<StatsReader>,
    /// Restored when the VM ends.
    pub raw_terminal: Option<RawTerminal>,
    pub started: Instant,
    pub verbose: bool,
}

impl Vmm {
    /// Waits for the VM's ending; with `-v`, reports its counters.
    pub fn run(self) -> ExitReason {
        let reason = wait_for_end(&self.shared.exit, &self.signals, self.devices.acpi_pm.as_ref());
        drop(self.raw_terminal);
        if self.verbose {
            report(&*self.vm, &self.vcpu_stats, &self.shared, self.started);
        }
        // The devices live until the process exits, which ends their host sides (files,
        // sockets, passt): dropped here, the last reference could go on a vCPU thread whose
        // seccomp filter does not allow what a device's drop does.
        std::mem::forget(self.devices);
        reason
    }
}

/// Waits for the VM's ending while turning SIGTERM/SIGINT/SIGHUP into power-button presses.
fn wait_for_end(exit: &ExitLatch, signals: &TermSignals, button: Option<&Arc<Mutex<AcpiPm>>>) -> ExitReason {
    let timeout =
        std::env::var("XHYVE_SHUTDOWN_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
    let mut deadline: Option<Instant> = None;
    loop {
        if let Some(reason) = exit.wait_timeout(Duration::from_millis(100)) {
            return reason;
        }
        if let Some(sig) = signals.poll() {
            match (button, deadline) {
                (Some(pm), None) => {
                    log(format!("signal {sig}: pressing the ACPI power button ({timeout}s to power off)"));
                    pm.lock().unwrap().press_power_button();
                    deadline = Some(Instant::now() + Duration::from_secs(timeout));
                }
                (None, _) => {
                    log(format!("signal {sig}: no ACPI (-A), powering off at once"));
                    exit.request(ExitReason::PowerOff);
                }
                (Some(_), Some(_)) => {
                    log(format!("signal {sig} again: forcing power off"));
                    exit.request(ExitReason::PowerOff);
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            log("the guest did not power off in time: forcing power off");
            exit.request(ExitReason::PowerOff);
        }
    }
}

fn report(vm: &dyn Vm, vcpu_stats: &[StatsReader], shared: &Shared, started: Instant) {
    log(format!("ran {:.1}s", started.elapsed().as_secs_f64()));
    if let Some(p) = &shared.pvm {
        log(format!("nested PVM host: {}", p.report()));
    }
    log(format!(
        "unclaimed port I/O and MMIO accesses: {}, ignored MSR accesses: {}",
        shared.unclaimed_io.load(Ordering::Relaxed),
        shared.ignored_msrs.load(Ordering::Relaxed)
    ));
    let touched: u64 = shared.mem.iter().map(|r| resident_bytes(r.as_ptr(), r.len() as usize)).sum();
    let peak = peak_rss_bytes();
    log(format!(
        "memory: peak RSS {:.1} MiB, guest RAM touched {:.1} MiB, VMM overhead {:.1} MiB",
        mib(peak),
        mib(touched),
        mib(peak.saturating_sub(touched))
    ));
    let stats: Vec<String> = vm.stats().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !stats.is_empty() {
        log(format!("KVM VM counters: {}", stats.join(" ")));
    }
    for (id, read) in vcpu_stats.iter().enumerate() {
        let stats: Vec<String> = read().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        log(format!("KVM vcpu{id} counters: {}", stats.join(" ")));
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Bytes of a mapping that are resident in host memory (mincore).
fn resident_bytes(addr: *mut u8, len: usize) -> u64 {
    const PAGE: usize = 4096;
    let mut vec = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `addr..addr+len` is one of our guest RAM mappings; `vec` has a byte per page.
    let r = unsafe { libc::mincore(addr.cast(), len, vec.as_mut_ptr()) };
    if r != 0 {
        return 0;
    }
    vec.iter().filter(|b| *b & 1 != 0).count() as u64 * PAGE as u64
}

fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64 * 1024
}
