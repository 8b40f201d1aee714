//! Builds a VM from its `Config` in named steps, Firecracker's builder: guest memory, the VM,
//! the legacy devices, the PCI devices, the vCPUs, the boot payload (a kernel loaded by the VMM,
//! or UEFI firmware), the vCPU threads, and the main thread's lock-down (`crate::sandbox`). Each
//! step takes what the earlier ones made. With `--restore`, guest memory comes from the snapshot
//! and `restore_snapshot` takes the place of the boot payload. The result is a running [`Vmm`],
//! with its control socket when `--control` asks for one.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use xhyve_contract::signals::TermSignals;

use crate::boot;
use crate::config::{Boot, Bootrom, Config, ConsoleTarget, DeviceConfig, Kexec, PciSlot};
use crate::console_io::{self, RawTerminal};
use crate::control;
use crate::cpuid;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::cmos::Cmos;
use crate::devices::i8042::{ResetToReboot, I8042};
use crate::devices::pvpanic::PvPanic;
use crate::devices::serial;
use crate::exit::ExitLatch;
use crate::firmware;
use crate::hypervisor::{self, Vcpu, Vm};
use crate::layout::*;
use crate::logger::log;
use crate::memory;
use crate::pause::PauseGate;
use crate::pci::{self, intx::IntxRoute, q35::Ecam, BarAllocator, Chipset, DeviceContext};
use crate::profile::{Profiler, SampleDetail};
use crate::pvm::Pvm;
use crate::sandbox;
use crate::snapshot::{self, Shape};
use crate::vcpu::{self, Shared};
use crate::virtio::{self, transport::VirtioPci, VirtioDevice};
use crate::vm::{Devices, Vmm};
use crate::vm_control::VmControl;

/// Builds the VM `cfg` describes and starts its vCPUs.
pub fn build(cfg: &Config) -> Result<Vmm, String> {
    let started = Instant::now();
    let pvm = pvm(cfg);
    if let Some(p) = &pvm {
        p.prepare_host_exec()?;
    }
    let shape = Shape::of(cfg, pvm.is_some());
    let saved = cfg.restore.as_deref().map(|p| snapshot::load(p, &shape)).transpose()?;
    let mem = match &saved {
        Some(s) => memory::map_private(&s.ram.file, s.ram.ram_offset, s.ram.ram_len)?,
        None => memory::create(cfg.mem_bytes)?,
    };
    let vm = create_vm(cfg, &mem, pvm.is_some())?;
    let exit = Arc::new(ExitLatch::default());
    let mut devices = Devices::default();
    let raw_terminal = attach_legacy_devices(cfg, &vm, &exit, &mut devices)?;
    attach_pci_devices(cfg, &mem, &vm, &mut devices)?;
    let vcpus = create_vcpus(cfg, &*vm, pvm.as_deref(), saved.is_none())?;
    let mut sample_detail: Option<Box<dyn SampleDetail>> = None;
    match (&saved, &cfg.boot) {
        (Some(s), _) => restore_snapshot(cfg, &*vm, &vcpus, pvm.as_deref(), &devices, &s.state)?,
        (None, Boot::Kexec(k)) => load_kernel(cfg, k, &mem, &vcpus, pvm.as_deref(), &devices.pci_intx_routes())?,
        (None, Boot::Bootrom(b)) => {
            let view = load_firmware(cfg, b, &mem, &vm, pvm.as_deref(), &mut devices)?;
            sample_detail = Some(Box::new(firmware::profile::Images::new(view)));
        }
    }
    let shared = Arc::new(Shared {
        mem,
        pio: devices.pio.clone(),
        mmio: devices.mmio.clone(),
        exit,
        pvm,
        pause: PauseGate::new(usize::from(cfg.cpus)),
        halted: (0..cfg.cpus).map(|_| AtomicBool::new(false)).collect(),
        unclaimed_io: AtomicU64::new(0),
        ignored_msrs: AtomicU64::new(0),
        verbose: cfg.verbose,
        profiler: Profiler::from_env(sample_detail)?,
    });
    let devices = Arc::new(devices);
    let (signals, vcpu_stats, threads) = start_vcpus(vcpus, &shared)?;
    if let Some(path) = &cfg.control {
        let control = VmControl::new(vm.clone(), shared.clone(), devices.clone(), threads, shape);
        control::spawn(path, Arc::new(control))?;
    }
    sandbox::lock_down_main()?;
    Ok(Vmm { vm, shared, devices, signals, vcpu_stats, raw_terminal, started, verbose: cfg.verbose })
}

/// The hypervisor's VM with guest RAM mapped; on the PVM host a firmware machine's APIC timer
/// runs on `firmware::PVM_APIC_BUS_CYCLE_NS`.
fn create_vm(cfg: &Config, mem: &GuestMemoryMmap, pvm: bool) -> Result<Arc<dyn Vm>, String> {
    let vm: Arc<dyn Vm> = Arc::from(hypervisor::create_vm().map_err(|e| e.to_string())?);
    if pvm && matches!(cfg.boot, Boot::Bootrom(_)) {
        // A host kernel older than 6.11 lacks the knob: the firmware still boots, at full tick
        // rate and with its watchdog on real time.
        if let Err(e) = vm.set_apic_bus_cycle_ns(firmware::PVM_APIC_BUS_CYCLE_NS) {
            log(format!(
                "firmware: the APIC timer stays at the host's rate ({e}): boot loaders slower than the \
                 firmware's 5-minute watchdog will be reset"
            ));
        }
    }
    for (slot, region) in mem.iter().enumerate() {
        // SAFETY: `mem` ends up in the vCPUs' `Shared` and lives until the process exits.
        unsafe { vm.map_memory(slot as u32, region.start_addr().0, region.len(), region.as_ptr() as u64) }
            .map_err(|e| e.to_string())?;
    }
    if cfg.ignore_msrs {
        vm.ignore_unknown_msrs().map_err(|e| format!("-w: not supported by this host: {e}"))?;
    }
    Ok(vm)
}

/// The PVM work-arounds, when they apply: detected, or forced with XHYVE_PVM=on|off.
fn pvm(cfg: &Config) -> Option<Arc<Pvm>> {
    Pvm::wanted().then(|| {
        let p = Pvm::new();
        p.set_verbose(u8::from(cfg.verbose));
        Arc::new(p)
    })
}

/// The UARTs (`-l`), the i8042, the RTC and, with `-A`, ACPI power management. Returns the
/// terminal a stdio console put into raw mode, to restore when the VM ends.
fn attach_legacy_devices(
    cfg: &Config,
    vm: &Arc<dyn Vm>,
    exit: &Arc<ExitLatch>,
    devices: &mut Devices,
) -> Result<Option<RawTerminal>, String> {
    let pio = &devices.pio;
    let mut raw_terminal = None;
    for (name, target, port, irq) in
        [("com1", &cfg.com1, PORT_COM1, IRQ_COM1), ("com2", &cfg.com2, PORT_COM2, IRQ_COM2)]
    {
        let Some(target) = target else { continue };
        let console = console_io::open(name, target, &format!("-l {name},{target}"))?;
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
            serial::spawn_input(port_dev.clone(), input).map_err(|e| format!("{name} input thread: {e}"))?;
        }
        devices.serial.push(port_dev);
    }
    let i8042 = Arc::new(Mutex::new(I8042(vm_superio::I8042Device::new(ResetToReboot(exit.clone())))));
    pio.insert(PORT_I8042.into(), 5, i8042.clone())?;
    devices.i8042 = Some(i8042);
    let (below_4g, above_4g) = (cfg.mem_bytes.min(MMIO_HOLE), cfg.mem_bytes.saturating_sub(MMIO_HOLE));
    let cmos = Arc::new(Mutex::new(Cmos::new(below_4g, above_4g, !cfg.rtc_utc)));
    pio.insert(PORT_RTC.into(), 2, cmos.clone())?;
    devices.cmos = Some(cmos);
    if cfg.acpi {
        let pm = Arc::new(Mutex::new(AcpiPm::new(vm.clone(), exit.clone())));
        pio.insert(PORT_PM1A_EVT.into(), 12, pm.clone())?;
        devices.acpi_pm = Some(pm);
        // With -A only: the DSDT is how the guest finds it. Stateless, so the bus holds it.
        pio.insert(PORT_PVPANIC.into(), 1, Arc::new(Mutex::new(PvPanic::new(exit.clone()))))?;
    }
    Ok(raw_terminal)
}

/// PCI bus 0 behind ports 0xcf8-0xcff, with the `-s` functions and, when needed, a host bridge.
/// For firmware the bridges are Q35's, and the MMCONFIG window leads to the same functions.
fn attach_pci_devices(
    cfg: &Config,
    mem: &GuestMemoryMmap,
    vm: &Arc<dyn Vm>,
    devices: &mut Devices,
) -> Result<(), String> {
    let ctx = DeviceContext { mem: mem.clone(), routing: pci::msix::GsiRouting::new(vm.clone()) };
    let mut bars = BarAllocator::default();
    let mut virtio = Vec::new();
    let chipset = match cfg.boot {
        Boot::Kexec(_) => Chipset::Bhyve,
        Boot::Bootrom(_) => Chipset::Q35(Arc::new(AtomicU64::new(0))),
    };
    let bus = pci::build_bus(&machine_slots(&cfg.slots), &chipset, Some(devices.mmio.clone()), |s| {
        let dev = Arc::new(Mutex::new(VirtioPci::new(virtio_device(s, cfg)?, s.slot, &ctx, &mut bars)?));
        virtio.push(dev.clone());
        Ok(dev)
    })?;
    let bus = Arc::new(Mutex::new(bus));
    devices.pio.insert(PORT_PCI_CONFIG.into(), 8, bus.clone())?;
    if let Chipset::Q35(pciexbar) = chipset {
        let (base, len) = Ecam::range();
        devices.mmio.insert(base, len, Arc::new(Ecam::new(pciexbar, bus.clone())))?;
    }
    devices.pci = Some(bus);
    devices.virtio = virtio;
    Ok(())
}

/// The `-s` functions, plus a host bridge at 0:0 when there are any and slot 0 is free: Linux
/// uses configuration mechanism #1 only when bus 0 shows a host bridge (or an Intel device), so
/// without one a guest sees none of the devices. An explicit `-s 0,...` wins.
fn machine_slots(slots: &[PciSlot]) -> Vec<PciSlot> {
    let mut all = slots.to_vec();
    if !slots.is_empty() && slots.iter().all(|s| s.slot != 0) {
        all.insert(0, PciSlot { slot: 0, func: 0, device: DeviceConfig::HostBridge });
    }
    all
}

/// The virtio device a PCI slot asks for.
fn virtio_device(slot: &PciSlot, cfg: &Config) -> Result<Arc<dyn VirtioDevice>, String> {
    Ok(match &slot.device {
        DeviceConfig::Block(c) => Arc::new(virtio::block::Block::open(c, cfg.cpus)?),
        DeviceConfig::Rng => Arc::new(virtio::rng::Rng),
        DeviceConfig::Console(c) => Arc::new(virtio::console::Console::open(c)?),
        DeviceConfig::Vsock(c) => Arc::new(virtio::vsock::Vsock::open(c)?),
        DeviceConfig::Net(c) => Arc::new(virtio::net::Net::new(c, cfg.uuid.as_ref(), nic_index(slot, &cfg.slots))?),
        other => return Err(format!("PCI device '{}' is not a virtio device", other.emulation())),
    })
}

/// The network device's index among the VM's network devices, in slot order (its MAC's).
fn nic_index(slot: &PciSlot, slots: &[PciSlot]) -> u8 {
    let before = slots
        .iter()
        .filter(|s| matches!(s.device, DeviceConfig::Net(_)) && (s.slot, s.func) < (slot.slot, slot.func))
        .count();
    before as u8
}

/// The vCPUs with their CPUID set up, and for a boot (`fresh`) their local APIC; not yet running.
fn create_vcpus(cfg: &Config, vm: &dyn Vm, pvm: Option<&Pvm>, fresh: bool) -> Result<Vec<Box<dyn Vcpu>>, String> {
    let base_cpuid = vm.supported_cpuid().map_err(|e| e.to_string())?;
    let mut vcpus = Vec::new();
    for id in 0..cfg.cpus {
        let vcpu = vm.create_vcpu(id).map_err(|e| format!("vcpu{id}: {e}"))?;
        let mut leaves = cpuid::for_vcpu(&base_cpuid, id, cfg.cpus);
        if let Some(p) = pvm {
            p.adjust_cpuid(&mut leaves);
        }
        vcpu.set_cpuid(&leaves).map_err(|e| format!("vcpu{id}: {e}"))?;
        if fresh {
            vcpu.init_lapic_lints().map_err(|e| format!("vcpu{id}: {e}"))?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// The boot payload of `-f kexec`: the MP table and ACPI tables, the kernel, initrd and command
/// line in guest memory, and the boot vCPU at the kernel's entry.
fn load_kernel(
    cfg: &Config,
    kexec: &Kexec,
    mem: &GuestMemoryMmap,
    vcpus: &[Box<dyn Vcpu>],
    pvm: Option<&Pvm>,
    intx_routes: &[IntxRoute],
) -> Result<(), String> {
    let mut cmdline = kexec.cmdline.clone();
    if let Some(p) = pvm {
        // Needs the vCPUs: the additions depend on the TSC rate.
        let added = p.cmdline_additions(&cmdline, vcpus[0].tsc_khz());
        if !added.is_empty() {
            log(format!("nested PVM host: adding to the kernel command line: {}", added.join(" ")));
            cmdline = with_kernel_params(&cmdline, &added);
        }
    }
    boot::mptable::write(mem, cfg.cpus, intx_routes)?;
    let rsdp = if cfg.acpi { Some(crate::acpi::write_tables(mem, cfg.cpus, intx_routes)?) } else { None };
    let entry = boot::load_linux(mem, &kexec.kernel, kexec.initrd.as_deref(), &cmdline, rsdp)?;
    entry.notes.iter().for_each(log);
    boot::cpu::write_tables(mem)?;
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
    Ok(())
}

/// Instead of the boot payload: the saved state of the VM, its devices, its vCPUs and the PVM
/// layer (guest RAM is already the snapshot's).
fn restore_snapshot(
    cfg: &Config,
    vm: &dyn Vm,
    vcpus: &[Box<dyn Vcpu>],
    pvm: Option<&Pvm>,
    devices: &Devices,
    state: &snapshot::State,
) -> Result<(), String> {
    vm.restore_state(&state.vm).map_err(|e| format!("restoring the VM: {e}"))?;
    for (vcpu, saved) in vcpus.iter().zip(&state.vcpus) {
        vcpu.restore_state(saved).map_err(|e| format!("restoring vcpu{}: {e}", vcpu.id()))?;
    }
    // After the interrupt controllers and LAPICs: a device's restore may raise an interrupt
    // (a UART's pending one, virtio-net's announcement), which a LAPIC restore would drop.
    devices.restore_state(&state.devices).map_err(|e| format!("restoring the devices: {e}"))?;
    if let (Some(p), Some(saved)) = (pvm, &state.pvm) {
        p.restore_state(saved);
    }
    if let Some(path) = &cfg.restore {
        log(format!("restored from {}", path.display()));
    }
    Ok(())
}

/// The boot payload of `-f bootrom`: the firmware images mapped below 4 GiB and what the
/// firmware reads (fw_cfg); the vCPUs stay at the reset vector, in real mode. Returns guest
/// memory as the firmware sees it (RAM and its images), for `XHYVE_PROFILE`'s samples.
fn load_firmware(
    cfg: &Config,
    b: &Bootrom,
    mem: &GuestMemoryMmap,
    vm: &Arc<dyn Vm>,
    pvm: Option<&Pvm>,
    devices: &mut Devices,
) -> Result<GuestMemoryMmap, String> {
    let cmos = devices.cmos.as_ref().ok_or("firmware needs the RTC")?;
    let platform = firmware::Platform { vm, mem, pio: &devices.pio, mmio: &devices.mmio, cmos, preload: pvm.is_some() };
    let fw = firmware::install(platform, cfg, b, &devices.pci_intx_routes())?;
    let view = fw.memory_view(mem)?;
    if let Some(p) = pvm {
        p.set_memory_view(view.clone());
    }
    devices.firmware = Some(fw);
    Ok(view)
}

/// Adds kernel parameters before any ` -- ` (after it, words are arguments for init).
fn with_kernel_params(cmdline: &str, params: &[String]) -> String {
    let (kernel, init) = match cmdline.find(" -- ") {
        Some(i) => (&cmdline[..i], &cmdline[i..]),
        None => (cmdline, ""),
    };
    format!("{} {}{init}", kernel.trim(), params.join(" ")).trim().to_string()
}

/// One thread per vCPU, with the termination signals blocked first so that only the main
/// thread takes them. Returns those signals, each vCPU's counters and the threads (for kicks).
fn start_vcpus(
    vcpus: Vec<Box<dyn Vcpu>>,
    shared: &Arc<Shared>,
) -> Result<(TermSignals, Vec<hypervisor::StatsReader>, Vec<libc::pthread_t>), String> {
    let signals = TermSignals::block();
    vcpu::install_kick_handler();
    let stats = vcpus.iter().map(|v| v.stats_reader()).collect();
    let mut threads = Vec::new();
    for v in vcpus {
        threads.push(vcpu::spawn(v, shared.clone()).map_err(|e| format!("vCPU thread: {e}"))?);
    }
    if shared.profiler.is_some() {
        Profiler::spawn_sampler(threads.clone(), shared.exit.clone(), vcpu::kick)
            .map_err(|e| format!("profile sampler thread: {e}"))?;
    }
    vcpu::spawn_halt_watch(threads.clone(), shared.exit.clone()).map_err(|e| format!("halt watch thread: {e}"))?;
    Ok((signals, stats, threads))
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

    fn slot(slot: u8, func: u8, device: DeviceConfig) -> PciSlot {
        PciSlot { slot, func, device }
    }

    #[test]
    fn host_bridge_when_pci_devices_and_slot_0_is_free() {
        let with_bridge = machine_slots(&[slot(2, 0, DeviceConfig::Rng)]);
        assert_eq!(with_bridge, vec![slot(0, 0, DeviceConfig::HostBridge), slot(2, 0, DeviceConfig::Rng)]);
        // No PCI device: no bus to announce.
        assert_eq!(machine_slots(&[]), vec![]);
        // An explicit slot 0 wins, whatever it holds and whichever function.
        for explicit in [
            vec![slot(0, 0, DeviceConfig::AmdHostBridge), slot(2, 0, DeviceConfig::Rng)],
            vec![slot(0, 0, DeviceConfig::Rng)],
            vec![slot(0, 1, DeviceConfig::Lpc)],
        ] {
            assert_eq!(machine_slots(&explicit), explicit);
        }
        // The bridge adds no interrupt route: the MP table and DSDT stay as they were.
        let bus = pci::build_bus(
            &machine_slots(&[slot(31, 0, DeviceConfig::Lpc)]),
            &pci::Chipset::Bhyve,
            None,
            |_| unreachable!(),
        )
        .unwrap();
        assert!(bus.intx_routes().is_empty());
    }
}
