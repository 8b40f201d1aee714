//! Builds a VM from a `Config`, runs it, and turns signals and device events into its ending.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot;
use crate::bus::Bus;
use crate::config::{Config, ConsoleTarget, DeviceConfig};
use crate::cpuid;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::cmos::Cmos;
use crate::devices::i8042::{ResetToReboot, I8042};
use crate::devices::serial::{self, RawTerminal};
use crate::exit::{ExitLatch, ExitReason};
use crate::hypervisor::{self, StatsReader, Vm};
use crate::layout::*;
use crate::logger::log;
use crate::memory;
use crate::pci;
use crate::pvm::Pvm;
use crate::vcpu::{self, Shared};
use crate::virtio::{self, transport::VirtioPci, VirtioDevice};
use xhyve_contract::signals::TermSignals;

/// Seconds the guest gets to power off after the ACPI power button, unless overridden.
const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 120;

/// Whether the PVM work-arounds apply: detected, or forced with XHYVE_PVM=on|off.
fn want_pvm() -> bool {
    match std::env::var("XHYVE_PVM").as_deref() {
        Ok("on") | Ok("1") => true,
        Ok("off") | Ok("0") => false,
        _ => Pvm::detect(),
    }
}

/// Builds and runs the VM; every failure before the guest starts is an `Error` ending.
pub fn run(cfg: &Config) -> ExitReason {
    match build_and_run(cfg) {
        Ok(reason) => reason,
        Err(e) => ExitReason::Error(e),
    }
}

fn build_and_run(cfg: &Config) -> Result<ExitReason, String> {
    let started = Instant::now();
    let mem = memory::create(cfg.mem_bytes)?;
    let vm: Arc<dyn Vm> = Arc::from(hypervisor::create_vm().map_err(|e| e.to_string())?);
    for (slot, region) in mem.iter().enumerate() {
        // SAFETY: `mem` is moved into `Shared` below and lives until the process exits.
        unsafe { vm.map_memory(slot as u32, region.start_addr().0, region.len(), region.as_ptr() as u64) }
            .map_err(|e| e.to_string())?;
    }
    if cfg.ignore_msrs {
        vm.ignore_unknown_msrs().map_err(|e| format!("-w: not supported by this host: {e}"))?;
    }
    let exit = Arc::new(ExitLatch::default());
    let pvm = want_pvm().then(|| {
        let p = Pvm::new();
        p.set_verbose(u8::from(cfg.verbose));
        Arc::new(p)
    });

    // Devices.
    let pio = Arc::new(Bus::default());
    let mut raw_terminal = None;
    for (name, target, port, irq) in
        [("com1", &cfg.com1, PORT_COM1, IRQ_COM1), ("com2", &cfg.com2, PORT_COM2, IRQ_COM2)]
    {
        let Some(target) = target else { continue };
        let console = serial::open_console(name, target)?;
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("{name}: eventfd: {e}"))?;
        vm.register_irqfd(&irq_evt, irq).map_err(|e| format!("{name}: {e}"))?;
        let port_dev = Arc::new(Mutex::new(serial::new_port(irq_evt, console.output)));
        pio.insert(port.into(), 8, port_dev.clone())?;
        if let Some(notice) = console.notice {
            log(notice);
        }
        if let Some(input) = console.input {
            if *target == ConsoleTarget::Stdio {
                raw_terminal = Some(RawTerminal::enter());
            }
            serial::spawn_input(port_dev, input);
        }
    }
    let i8042 = vm_superio::I8042Device::new(ResetToReboot(exit.clone()));
    pio.insert(PORT_I8042.into(), 5, Arc::new(Mutex::new(I8042(i8042))))?;
    let (below_4g, above_4g) = split_ram(cfg.mem_bytes);
    pio.insert(PORT_RTC.into(), 2, Arc::new(Mutex::new(Cmos::new(below_4g, above_4g, !cfg.rtc_utc))))?;
    let mmio = Arc::new(Bus::default());
    let pci_ctx = pci::DeviceContext { mem: mem.clone(), routing: pci::msix::GsiRouting::new(vm.clone()) };
    let mut bars = pci::BarAllocator::default();
    let pci_bus = pci::build_bus(&cfg.slots, Some(mmio.clone()), |s| {
        let dev = virtio_device(&s.device, cfg)?;
        Ok(Arc::new(Mutex::new(VirtioPci::new(dev, s.slot, &pci_ctx, &mut bars)?)))
    })?;
    let intx_routes = pci_bus.intx_routes();
    pio.insert(PORT_PCI_CONFIG.into(), 8, Arc::new(Mutex::new(pci_bus)))?;
    let power_button = if cfg.acpi {
        let pm = Arc::new(Mutex::new(AcpiPm::new(vm.clone(), exit.clone())));
        pio.insert(PORT_PM1A_EVT.into(), 12, pm.clone())?;
        Some(pm)
    } else {
        None
    };

    // vCPUs first: the PVM command-line additions need the TSC rate.
    let base_cpuid = vm.supported_cpuid().map_err(|e| e.to_string())?;
    let mut vcpus = Vec::new();
    for id in 0..cfg.cpus {
        let vcpu = vm.create_vcpu(id).map_err(|e| format!("vcpu{id}: {e}"))?;
        let mut leaves = cpuid::for_vcpu(&base_cpuid, id, cfg.cpus);
        if let Some(p) = &pvm {
            p.adjust_cpuid(&mut leaves);
        }
        vcpu.set_cpuid(&leaves).map_err(|e| format!("vcpu{id}: {e}"))?;
        vcpu.init_lapic_lints().map_err(|e| format!("vcpu{id}: {e}"))?;
        vcpus.push(vcpu);
    }

    // Guest memory contents.
    let mut cmdline = cfg.kexec.cmdline.clone();
    if let Some(p) = &pvm {
        let added = p.cmdline_additions(&cmdline, vcpus[0].tsc_khz());
        if !added.is_empty() {
            log(format!("nested PVM host: adding to the kernel command line: {}", added.join(" ")));
            cmdline = with_kernel_params(&cmdline, &added);
        }
    }
    boot::mptable::write(&mem, cfg.cpus, &intx_routes)?;
    let rsdp = if cfg.acpi { Some(crate::acpi::write_tables(&mem, cfg.cpus, &intx_routes)?) } else { None };
    let entry = boot::load_linux(&mem, &cfg.kexec.kernel, cfg.kexec.initrd.as_deref(), &cmdline, rsdp)?;
    boot::cpu::write_tables(&mem)?;
    boot::cpu::setup_boot_vcpu(vcpus[0].as_ref(), entry.rip)?;
    if cfg.verbose {
        log(format!(
            "{} vCPU(s), {} MiB, {} entry {:#x}, cmdline: {cmdline}",
            cfg.cpus,
            cfg.mem_bytes >> 20,
            entry.kind,
            entry.rip
        ));
    }

    // Run.
    let shared = Arc::new(Shared {
        mem,
        pio,
        mmio,
        exit: exit.clone(),
        pvm: pvm.clone(),
        halted: (0..cfg.cpus).map(|_| AtomicBool::new(false)).collect(),
        unclaimed_io: AtomicU64::new(0),
        ignored_msrs: AtomicU64::new(0),
        verbose: cfg.verbose,
    });
    let signals = TermSignals::block();
    vcpu::install_kick_handler();
    let vcpu_stats: Vec<_> = vcpus.iter().map(|v| v.stats_reader()).collect();
    let mut threads = Vec::new();
    for v in vcpus {
        threads.push(vcpu::spawn(v, shared.clone()).map_err(|e| format!("vCPU thread: {e}"))?);
    }
    vcpu::spawn_halt_watch(threads, exit.clone());

    let reason = wait_for_end(&exit, &signals, power_button.as_ref());
    drop(raw_terminal);
    if cfg.verbose {
        report(&*vm, &vcpu_stats, &shared, started);
    }
    Ok(reason)
}

/// The virtio device a PCI slot asks for.
fn virtio_device(device: &DeviceConfig, cfg: &Config) -> Result<Arc<dyn VirtioDevice>, String> {
    Ok(match device {
        DeviceConfig::Block(c) => Arc::new(virtio::block::Block::open(c, cfg.cpus)?),
        DeviceConfig::Rng => Arc::new(virtio::rng::Rng),
        DeviceConfig::Console(c) => Arc::new(virtio::console::Console::open(c)?),
        DeviceConfig::Vsock(c) => Arc::new(virtio::vsock::Vsock::open(c)?),
        DeviceConfig::Net(c) => Arc::new(virtio::net::Net::new(c, cfg.uuid.as_ref())?),
        other => return Err(format!("PCI device '{}' is not a virtio device", other.emulation())),
    })
}

/// Adds kernel parameters before any ` -- ` (after it, words are arguments for init).
fn with_kernel_params(cmdline: &str, params: &[String]) -> String {
    let (kernel, init) = match cmdline.find(" -- ") {
        Some(i) => (&cmdline[..i], &cmdline[i..]),
        None => (cmdline, ""),
    };
    format!("{} {}{init}", kernel.trim(), params.join(" ")).trim().to_string()
}

fn split_ram(size: u64) -> (u64, u64) {
    (size.min(MMIO_HOLE), size.saturating_sub(MMIO_HOLE))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_params_go_before_init_args() {
        let p = vec!["a=1".to_string(), "b".to_string()];
        assert_eq!(with_kernel_params("console=ttyS0", &p), "console=ttyS0 a=1 b");
        assert_eq!(with_kernel_params("console=ttyS0 -- -s x", &p), "console=ttyS0 a=1 b -- -s x");
        assert_eq!(with_kernel_params("", &p), "a=1 b");
    }
}
