//! The VMM's only view of the hypervisor: a VM and its vCPUs behind traits, so that a macOS
//! Hypervisor.framework backend can be added beside `kvm` without touching boot or device code.
//! Register and exit types are our own (x86-64 shaped), not a backend's.

pub mod fake;
pub mod kvm;

/// Creates a VM on this host's hypervisor (KVM on Linux).
pub fn create_vm() -> Result<Box<dyn Vm>> {
    Ok(Box::new(kvm::create_vm()?))
}

/// Most vCPUs one VM may have on this host.
pub fn max_vcpus() -> Result<usize> {
    kvm::max_vcpus()
}

/// The TSC rate of a vCPU on this host, in kHz.
pub fn tsc_khz() -> Result<u32> {
    kvm::tsc_khz()
}

use std::fmt;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

/// A failed hypervisor call: what was attempted and the OS error.
#[derive(Debug)]
pub struct Error {
    pub op: std::borrow::Cow<'static, str>,
    pub errno: i32,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, std::io::Error::from_raw_os_error(self.errno))
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// General-purpose registers; `gpr` is indexed by x86 register number (rax=0 .. r15=15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
}

pub const RAX: usize = 0;
pub const RCX: usize = 1;
pub const RDX: usize = 2;
pub const RBX: usize = 3;
pub const RSP: usize = 4;
pub const RBP: usize = 5;
pub const RSI: usize = 6;
pub const R11: usize = 11;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    pub type_: u8,
    pub present: bool,
    pub dpl: u8,
    pub db: bool,
    pub s: bool,
    pub l: bool,
    pub g: bool,
    pub avl: bool,
    pub unusable: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
}

/// One CPUID leaf as the guest will see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Why `Vcpu::run` returned. Port and MMIO data point into the backend's run area: an `In`/`Read`
/// buffer must be filled before the next `run`.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    IoIn(u16, &'a mut [u8]),
    IoOut(u16, &'a [u8]),
    MmioRead(u64, &'a mut [u8]),
    MmioWrite(u64, &'a [u8]),
    /// HLT reached userspace (only without an in-kernel local APIC).
    Hlt,
    /// Triple fault.
    Shutdown,
    /// The platform asked for a reset or power-off (e.g. PSCI, Hyper-V); KVM's SYSTEM_EVENT.
    SystemReset,
    SystemPowerOff,
    /// The backend's instruction emulator gave up; `insn` holds the bytes it fetched, if it said.
    EmulationFailure {
        insn: Vec<u8>,
    },
    /// The guest accessed an MSR the hypervisor does not implement; the backend already completed
    /// it as ignored (reads give 0). Only after `Vm::ignore_unknown_msrs`.
    IgnoredMsr {
        index: u32,
        write: bool,
    },
    /// `run` was interrupted by a signal (a kick).
    Interrupted,
    /// Anything else: a description for the error report.
    Unhandled(String),
}

/// One entry of the VM's GSI routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqRoute {
    /// `gsi` drives `pin` of an in-kernel interrupt controller (0 PIC master, 1 PIC slave,
    /// 2 IOAPIC).
    Irqchip { gsi: u32, chip: u32, pin: u32 },
    /// `gsi` sends a message-signalled interrupt (an MSI/MSI-X table entry's address and data).
    Msi { gsi: u32, address: u64, data: u32 },
}

/// The routes KVM installs with the in-kernel irqchip: GSI 0-15 to the PICs and the IOAPIC,
/// 16-23 to the IOAPIC only. A new routing table replaces them, so it must repeat them.
pub fn default_irqchip_routes() -> Vec<IrqRoute> {
    let mut routes = Vec::new();
    for gsi in 0..24 {
        if gsi < 16 {
            let (chip, pin) = if gsi < 8 { (0, gsi) } else { (1, gsi - 8) };
            routes.push(IrqRoute::Irqchip { gsi, chip, pin });
        }
        routes.push(IrqRoute::Irqchip { gsi, chip: 2, pin: gsi });
    }
    routes
}

/// Everything the hypervisor holds for one vCPU, for a snapshot: opaque to the VMM, restored
/// only by the backend that saved it (the tag says which).
#[derive(Clone, Serialize, Deserialize)]
pub enum VcpuState {
    Kvm(Box<kvm::state::VcpuState>),
}

/// The VM-wide part: in-kernel interrupt controllers, timers and clock.
#[derive(Serialize, Deserialize)]
pub enum VmState {
    Kvm(Box<kvm::state::VmState>),
}

/// A virtual machine: guest memory, interrupt lines, vCPU creation.
pub trait Vm: Send + Sync {
    /// Maps `size` bytes of host memory at `host_addr` to guest physical `gpa`.
    ///
    /// # Safety
    /// The host range must stay mapped and valid for the VM's lifetime.
    unsafe fn map_memory(&self, slot: u32, gpa: u64, size: u64, host_addr: u64) -> Result<()>;
    /// Like `map_memory`, but guest writes to the range exit as `MmioWrite` (firmware ROM and
    /// flash).
    ///
    /// # Safety
    /// As for `map_memory`.
    unsafe fn map_readonly_memory(&self, slot: u32, gpa: u64, size: u64, host_addr: u64) -> Result<()>;
    /// Removes the mapping in `slot`: accesses to its range exit as MMIO from now on.
    fn unmap_memory(&self, slot: u32) -> Result<()>;
    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>>;
    /// Drives an interrupt line of the in-kernel interrupt controllers.
    fn set_irq_line(&self, irq: u32, level: bool) -> Result<()>;
    /// Every write to `fd` pulses `gsi` (edge interrupts from device threads).
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()>;
    /// Level-triggered delivery: a write to `fd` raises `gsi` and keeps it raised until the guest
    /// acknowledges it (EOI); then the line drops and `resample` is signalled, so that the device
    /// raises it again if it still wants service. Sources sharing a GSI drop together.
    fn register_irqfd_with_resample(&self, fd: &EventFd, resample: &EventFd, gsi: u32) -> Result<()>;
    /// Replaces the whole GSI routing table (include [`default_irqchip_routes`]).
    fn set_gsi_routing(&self, routes: &[IrqRoute]) -> Result<()>;
    /// Guest writes of any width to the MMIO address `addr` signal `fd` instead of exiting.
    fn register_ioevent(&self, fd: &EventFd, addr: u64) -> Result<()>;
    fn unregister_ioevent(&self, fd: &EventFd, addr: u64) -> Result<()>;
    /// Accesses to unimplemented MSRs complete as no-ops instead of raising #GP (bhyve's `-w`).
    fn ignore_unknown_msrs(&self) -> Result<()>;
    /// Runs the local APICs' timers from a clock of one tick per `ns` nanoseconds instead of the
    /// backend's default (KVM: 1 ns, the 1 GHz that OVMF assumes); before any vCPU exists.
    fn set_apic_bus_cycle_ns(&self, ns: u32) -> Result<()>;
    /// The CPUID leaves the backend can present, before the VMM's own edits.
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>>;
    /// Backend statistics (name, value) for `-v`; may be empty.
    fn stats(&self) -> Vec<(String, u64)>;
    /// The VM-wide state; every vCPU must be stopped outside `run`.
    fn save_state(&self) -> Result<VmState>;
    /// Puts a saved VM-wide state into this VM (built like the saved one), before its vCPUs run.
    fn restore_state(&self, state: &VmState) -> Result<()>;
}

/// Reads a vCPU's statistics from any thread, even while the vCPU runs.
pub type StatsReader = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// One virtual CPU. `run` is called from the vCPU's own thread.
pub trait Vcpu: Send {
    fn id(&self) -> u8;
    fn run(&mut self) -> Result<VcpuExit<'_>>;
    fn regs(&self) -> Result<Regs>;
    fn set_regs(&self, regs: &Regs) -> Result<()>;
    fn sregs(&self) -> Result<SpecialRegs>;
    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()>;
    fn msr(&self, index: u32) -> Result<u64>;
    fn set_msr(&self, index: u32, value: u64) -> Result<()>;
    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()>;
    /// x87/SSE control state for a vCPU that starts in 64-bit code.
    fn init_fpu(&self) -> Result<()>;
    /// Wires LINT0 to ExtINT and LINT1 to NMI (the PC's virtual-wire mode).
    fn init_lapic_lints(&self) -> Result<()>;
    fn mxcsr(&self) -> Result<u32>;
    fn set_mxcsr(&self, value: u32) -> Result<()>;
    /// The x87 and SSE state in FXSAVE's 512-byte layout (64-bit pointers), components in
    /// their init state filled in as FXSAVE would store them.
    fn fxsave(&self) -> Result<[u8; 512]>;
    fn set_fxsave(&self, image: &[u8; 512]) -> Result<()>;
    /// Queues an exception for delivery at the next entry.
    fn inject_exception(&self, vector: u8, error_code: Option<u32>) -> Result<()>;
    /// True when the vCPU sits in HLT and cannot be woken by an interrupt (IF clear).
    fn halted_for_good(&self) -> Result<bool>;
    /// The guest TSC rate, if the backend knows it.
    fn tsc_khz(&self) -> Option<u32>;
    /// A reader of this vCPU's statistics for `-v`.
    fn stats_reader(&self) -> StatsReader;
    /// While on, `run` returns `Interrupted` at once, after completing the last exit's I/O but
    /// before any guest instruction: the way to stop a vCPU in a state that can be saved (the
    /// data of an IN or MMIO read reaches the guest's registers only on the next entry).
    fn set_immediate_exit(&mut self, on: bool);
    /// This vCPU's whole state; call only after `run` returned `Interrupted`.
    fn save_state(&self) -> Result<VcpuState>;
    /// Puts a saved state into this vCPU (after its CPUID is set, before it first runs).
    fn restore_state(&self, state: &VcpuState) -> Result<()>;
}
