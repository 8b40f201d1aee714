//! Snapshots: a whole running VM in one file, from which a new `xhyve` process carries on.
//!
//! A snapshot holds the machine's shape (what the guest sees of its hardware: memory size, vCPU
//! count, devices, whether it ran on a nested `kvm_pvm` host), its state (every vCPU and the
//! VM-wide hypervisor state, the PVM layer's #PF patch, every device: UARTs, RTC, ACPI PM, the
//! PCI bus with each function's configuration space, MSI-X table and virtio transport with its
//! queues' positions and the device's own state) and guest RAM. Saving pauses the vCPUs, then
//! the devices: each virtio queue worker finishes the requests it holds and stops, and the
//! device flushes its host side (a disk's caches), so the saved RAM, device state and disks
//! agree. The file layout is in `file.rs`; the state section is JSON (small next to RAM,
//! readable with `jq`). A restoring `xhyve` gets the same command line as the saved one (paths, sockets and
//! consoles are the host's business and may differ) plus `--restore PATH`; it builds the
//! machine, compares shapes and refuses a mismatch with the difference spelled out.
//!
//! Found on this host (nested `kvm_pvm`, host kernel 6.18, Linux 6.1 tiny guest):
//! - KVM's state ioctls work on vCPUs taken out of a running guest, and the state restores into
//!   a working guest in a new process: `KVM_GET/SET` of REGS, SREGS, XSAVE, XCRS, DEBUGREGS,
//!   LAPIC, MSRS (KVM_GET_MSR_INDEX_LIST, the ones that read), VCPU_EVENTS, MP_STATE, and of the
//!   VM's IRQCHIPs, PIT2 and CLOCK. Shown with the tiny guest counting on its console (1 and 2
//!   vCPUs; saved, process ended, restored, restored again from the restored one) and with a
//!   real-mode toy guest stopped right after an IN exit (`kvm_test.rs`).
//! - Saving 256 MiB of a booted tiny guest writes ~30 MB (zero pages stay holes) in 50-300 ms;
//!   a restore maps that file privately, so it reads nothing up front.
//! - The PVM layer's #PF patch (an int3 in guest RAM) must be carried over: without it the new
//!   process would refuse to patch a handler that starts with int3 and SYSCALL would break.
//! - A vCPU is stopped with `immediate_exit`: `KVM_RUN` then completes the last exit's I/O
//!   (an IN's data lands in RAX only at the next entry) and returns at once (`pause.rs`).
//! - The tiny guest's clocksource is the TSC (no kvm-clock is offered to it here). Restoring the
//!   saved TSC lets its clocks carry on from the save; jumping the TSC by the time the VM was
//!   away would overflow Linux 6.1's `delta * mult` for gaps beyond ~20 minutes (the clocksource
//!   reports `max_cycles` 0x257a3a7b45f). So monotonic time never goes back and never jumps;
//!   the wall clock jumps forward when the guest resyncs it from the RTC (which goes on from the
//!   host clock), as after a host suspend.

mod file;
#[cfg(test)]
mod kvm_test;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use crate::config::Config;
use crate::hypervisor::{VcpuState, VmState};
use crate::pvm::PvmState;
use crate::vm::DevicesState;
pub use file::{Opened, Written};

/// Bumped whenever the state section or the file layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// What the guest sees of its machine: a snapshot restores only into the same shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub mem_bytes: u64,
    pub cpus: u8,
    /// The guest-visible devices, e.g. `pci 0:0 hostbridge`, `com1`, `acpi`.
    pub devices: Vec<String>,
    /// Saved on a nested `kvm_pvm` host: the guest carries that host's work-arounds.
    pub pvm: bool,
}

impl Shape {
    pub fn of(cfg: &Config, pvm: bool) -> Shape {
        let mut devices: Vec<String> =
            cfg.slots.iter().map(|s| format!("pci {}:{} {}", s.slot, s.func, s.device.emulation())).collect();
        devices.sort();
        for (name, present) in [("com1", cfg.com1.is_some()), ("com2", cfg.com2.is_some()), ("acpi", cfg.acpi)] {
            if present {
                devices.push(name.into());
            }
        }
        Shape { mem_bytes: cfg.mem_bytes, cpus: cfg.cpus, devices, pvm }
    }

    /// Why this machine cannot take a snapshot of shape `saved`, if it cannot.
    pub fn mismatch(&self, saved: &Shape) -> Option<String> {
        let mut why = Vec::new();
        if self.mem_bytes != saved.mem_bytes {
            why.push(format!("memory {} MiB, this VM has {} MiB", saved.mem_bytes >> 20, self.mem_bytes >> 20));
        }
        if self.cpus != saved.cpus {
            why.push(format!("{} vCPU(s), this VM has {}", saved.cpus, self.cpus));
        }
        let missing: Vec<&str> =
            saved.devices.iter().filter(|d| !self.devices.contains(d)).map(String::as_str).collect();
        let extra: Vec<&str> = self.devices.iter().filter(|d| !saved.devices.contains(d)).map(String::as_str).collect();
        if !missing.is_empty() {
            why.push(format!("devices missing here: {}", missing.join(", ")));
        }
        if !extra.is_empty() {
            why.push(format!("devices not in the snapshot: {}", extra.join(", ")));
        }
        if self.pvm != saved.pvm {
            let host = |p: bool| if p { "a nested kvm_pvm host" } else { "a plain KVM host" };
            why.push(format!("saved on {}, this is {}", host(saved.pvm), host(self.pvm)));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Everything of a paused VM but its RAM.
#[derive(Serialize, Deserialize)]
pub struct State {
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub pvm: Option<PvmState>,
    pub devices: DevicesState,
}

/// The state section.
#[derive(Serialize, Deserialize)]
struct Section {
    /// The xhyve that wrote it, for people reading the file.
    xhyve: String,
    shape: Shape,
    state: State,
}

/// Writes a snapshot of a paused VM (every vCPU and device stopped) to `path`, atomically.
pub fn save(path: &std::path::Path, shape: &Shape, state: State, mem: &GuestMemoryMmap) -> Result<Written, String> {
    let section = Section { xhyve: env!("CARGO_PKG_VERSION").into(), shape: shape.clone(), state };
    let bytes = serde_json::to_vec(&section).map_err(|e| format!("encoding the state: {e}"))?;
    file::write(path, FORMAT_VERSION, &bytes, mem)
}

/// A snapshot checked against the machine about to take it.
pub struct Loaded {
    pub state: State,
    /// The file and where its RAM is, for `memory::map_private`.
    pub ram: Opened,
}

/// Opens a snapshot for a machine of shape `this`; any damage or mismatch is an error naming it.
pub fn load(path: &std::path::Path, this: &Shape) -> Result<Loaded, String> {
    let mut ram = file::open(path, FORMAT_VERSION)?;
    let section: Section = serde_json::from_slice(&std::mem::take(&mut ram.state))
        .map_err(|e| format!("{}: unreadable snapshot state: {e}", path.display()))?;
    if let Some(why) = this.mismatch(&section.shape) {
        return Err(format!("{}: the snapshot is of another machine: {why}", path.display()));
    }
    if ram.ram_len != section.shape.mem_bytes || section.state.vcpus.len() != usize::from(section.shape.cpus) {
        return Err(format!("{}: corrupt snapshot (its RAM or vCPUs do not match its shape)", path.display()));
    }
    Ok(Loaded { state: section.state, ram })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            mem_bytes: 256 << 20,
            cpus: 1,
            devices: vec!["pci 0:0 hostbridge".into(), "pci 2:0 virtio-blk".into(), "com1".into()],
            pvm: true,
        }
    }

    #[test]
    fn mismatches_are_spelled_out() {
        assert_eq!(shape().mismatch(&shape()), None);
        let mut other = shape();
        other.mem_bytes = 512 << 20;
        other.cpus = 2;
        other.devices[1] = "pci 3:0 virtio-net".into();
        other.pvm = false;
        let why = shape().mismatch(&other).unwrap();
        assert!(why.contains("memory 512 MiB, this VM has 256 MiB"), "{why}");
        assert!(why.contains("2 vCPU(s), this VM has 1"), "{why}");
        assert!(why.contains("devices missing here: pci 3:0 virtio-net"), "{why}");
        assert!(why.contains("devices not in the snapshot: pci 2:0 virtio-blk"), "{why}");
        assert!(why.contains("saved on a plain KVM host, this is a nested kvm_pvm host"), "{why}");
    }
}
