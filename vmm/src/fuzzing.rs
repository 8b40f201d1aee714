//! Entry points for the cargo-fuzz targets (vmm/fuzz) into parts that are not public: the PCI
//! bus (configuration mechanism #1, BAR moves, a virtio function's BAR with its MSI-X table) on
//! a fake VM, and PVM's instruction fix-ups (decode and perform) on a vCPU state and guest
//! memory made from the input. Each takes the fuzzer's bytes as they come; what the bytes mean
//! is documented per function so that a seed can be written by hand. The unit tests replay the
//! seed corpus (vmm/fuzz/seeds) through them.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::{Bus, PioDevice};
use crate::config::{DeviceConfig, PciSlot};
use crate::hypervisor::fake::FakeVm;
use crate::hypervisor::{Regs, Segment, SpecialRegs};
use crate::layout::PCI_MMIO_START;
use crate::pci::{self, msix::GsiRouting, BarAllocator, DeviceContext};
use crate::pvm::fixup::{self, CpuState, FakeExtra};
use crate::virtio::rng::Rng;
use crate::virtio::transport::{VirtioPci, BAR_SIZE};

/// The queue size of the virtio targets' queues.
pub const QUEUE_SIZE: u16 = 16;

/// A ready split virtqueue of [`QUEUE_SIZE`] entries whose descriptor table, available ring and
/// used ring lie at `base`, `base + 0x100` and `base + 0x200` of guest memory, where the virtio
/// targets' inputs put them.
pub fn queue(base: u64) -> virtio_queue::Queue {
    use virtio_queue::QueueT;
    let mut q = virtio_queue::Queue::new(QUEUE_SIZE).expect("a power of two");
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
    q.set_ready(true);
    q
}

/// Takes bytes off the front of the input; past its end everything reads as zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes().map(u16::from_le_bytes)
    }
    fn u64(&mut self) -> u64 {
        self.bytes().map(u64::from_le_bytes).unwrap_or(0)
    }
}

/// Guest RAM of the PCI target: the virtio function's queue worker may run on it.
const PCI_MEM: usize = 1 << 20;
/// Where the virtio-rnd function sits (the host bridge is at 0, the LPC bridge at 31).
pub const PCI_RNG_SLOT: u8 = 2;

/// A bus as the builder makes it (host bridge, a virtio-rnd function, LPC bridge) on a fake VM;
/// then a guest's accesses, one operation after another until the input ends:
///
/// | first byte % 5 | operation | then |
/// | --- | --- | --- |
/// | 0 | write the address register (0xcf8) | 4 bytes |
/// | 1 | write the data window (0xcfc + n) | 1 byte: n = b & 3, length 1 << (b >> 2 & 3) capped at 4; data |
/// | 2 | read the data window | 1 byte as above |
/// | 3 | write BAR 0 of the virtio function where the builder placed it | u16 offset (mod the BAR's size), 1 byte length as above, data |
/// | 4 | read BAR 0 | u16 offset, 1 byte length |
///
/// The whole input is also the guest's RAM (queue rings the driver points at live there).
pub fn pci_bus(data: &[u8]) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), PCI_MEM)]).unwrap();
    mem.write_slice(&data[..data.len().min(PCI_MEM)], GuestAddress(0)).unwrap();
    let ctx = DeviceContext { mem: mem.clone(), routing: GsiRouting::new(Arc::new(FakeVm::default())) };
    let rng =
        Arc::new(Mutex::new(VirtioPci::new(Arc::new(Rng), PCI_RNG_SLOT, &ctx, &mut BarAllocator::default()).unwrap()));
    let slot = |slot, emul| PciSlot { slot, func: 0, device: DeviceConfig::parse(emul, None).unwrap() };
    let slots = [slot(0, "hostbridge"), slot(PCI_RNG_SLOT, "virtio-rnd"), slot(31, "lpc")];
    let mmio = Arc::new(Bus::default());
    let r = rng.clone();
    let mut io = pci::build_bus(&slots, &pci::Chipset::Bhyve, Some(mmio.clone()), move |_| Ok(r.clone())).unwrap();
    let mut input = Input(data);
    let len = |b: u8| (1usize << (b >> 2 & 3)).min(4);
    while let Some(op) = input.u8() {
        match op % 5 {
            0 => match input.bytes::<4>() {
                Some(a) => io.write(0, &a),
                None => break,
            },
            1 | 2 => {
                let Some(b) = input.u8() else { break };
                let port = 4 + u16::from(b & 3);
                if op % 5 == 1 {
                    let Some(d) = input.bytes::<4>() else { break };
                    io.write(port, &d[..len(b)]);
                } else {
                    io.read(port, &mut [0u8; 4][..len(b)]);
                }
            }
            _ => {
                let (Some(off), Some(b)) = (input.u16(), input.u8()) else { break };
                let addr = PCI_MMIO_START + u64::from(off) % BAR_SIZE;
                if op % 5 == 3 {
                    let Some(d) = input.bytes::<8>() else { break };
                    mmio.write(addr, &d[..len(b) << (b >> 4 & 1)]);
                } else {
                    mmio.read(addr, &mut [0u8; 8][..len(b) << (b >> 4 & 1)]);
                }
            }
        }
    }
    // The queue workers a DRIVER_OK started end here, as for a snapshot.
    let _ = rng.lock().unwrap().pause();
}

/// Guest RAM of the PVM target and its fixed page tables (4-level, identity): va 0-2 MiB in
/// 4 KiB pages (the PT), va 2-4 MiB one 2 MiB kernel page, and the same at the top half's start.
const PVM_MEM: usize = 4 << 20;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
/// The code runs from the kernel page; the input's tail is data from `PVM_DATA` on.
pub const PVM_CODE: u64 = 0x20_1000;
const PVM_DATA: u64 = 0x10_0000;

/// One fix-up as `pvm` calls it, on a vCPU state and guest memory the input makes:
///
/// | bytes | what |
/// | --- | --- |
/// | 1 | CPU mode: 0 long mode CPL 0, 1 long mode CPL 3, 2 compatibility mode, 3 paging off; bit 2: SMAP/SMEP on; bit 3: raw page tables (the fixed ones are not written: the data below is all there is) |
/// | 1 | how many of the code bytes the host emulator "fetched" (mod 16) |
/// | 15 | the instruction's bytes, at `PVM_CODE` |
/// | 8 | RFLAGS |
/// | 16 x 8 | the general registers |
/// | 4 + 8 + 8 | MXCSR, STAR, LSTAR |
/// | 16 | flags of the PT entries for va 0x100000-0x10ffff (low 12 bits, NX from bit 15) |
/// | rest | guest RAM from `PVM_DATA` (with raw page tables: from 0, the tables' place) |
pub fn pvm_fixup(data: &[u8]) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), PVM_MEM)]).unwrap();
    let mut input = Input(data);
    let mode = input.u8().unwrap_or(0);
    let fetched = usize::from(input.u8().unwrap_or(0) % 16);
    let code = input.bytes::<15>().unwrap_or([0x90; 15]);
    let rflags = input.u64() | 2;
    let mut regs = Regs { rflags, rip: PVM_CODE, ..Default::default() };
    for r in &mut regs.gpr {
        *r = input.u64();
    }
    let mxcsr = input.bytes().map(u32::from_le_bytes).unwrap_or(0x1f80);
    let (star, lstar) = (input.u64(), input.u64());
    let pte_flags: Vec<u64> =
        (0..16).map(|_| input.u16().map_or(7, |f| u64::from(f & 0xfff) | u64::from(f >> 15) << 63)).collect();
    let raw = mode & 8 != 0;
    let tail = input.0;
    let at = if raw { 0 } else { PVM_DATA };
    let n = tail.len().min(PVM_MEM - at as usize);
    mem.write_slice(&tail[..n], GuestAddress(at)).unwrap();
    if !raw {
        let put = |gpa: u64, v: u64| mem.write_obj(v, GuestAddress(gpa)).unwrap();
        put(PML4, PDPT | 7);
        put(PML4 + 256 * 8, PDPT | 7);
        put(PDPT, PD | 7);
        put(PD, PT | 7);
        put(PD + 8, 0x20_0000 | 1 << 7 | 3);
        for i in 0..512u64 {
            let flags = if (0x100..0x110).contains(&i) { pte_flags[i as usize - 0x100] } else { 7 };
            put(PT + i * 8, i << 12 | flags);
        }
    }
    mem.write_slice(&code, GuestAddress(PVM_CODE)).unwrap();
    let cs = Segment { selector: 0x10, l: true, present: true, s: true, type_: 0xb, ..Default::default() };
    let mut sregs = SpecialRegs {
        cs,
        ss: Segment { selector: 0x18, present: true, s: true, type_: 3, db: true, ..Default::default() },
        cr0: 0x8005_0033,
        cr3: PML4,
        cr4: 1 << 5 | if mode & 4 != 0 { 3 << 20 } else { 0 },
        efer: 0xd01,
        ..Default::default()
    };
    match mode & 3 {
        1 => {
            sregs.cs.dpl = 3;
            sregs.cs.selector |= 3;
            sregs.ss.dpl = 3;
        }
        2 => {
            sregs.cs.l = false;
            sregs.cs.db = true;
        }
        3 => {
            sregs.cr0 = 0x11;
            sregs.efer = 0;
            sregs.cs.l = false;
        }
        _ => {}
    }
    let mut extra = FakeExtra { mxcsr, star, lstar, ..Default::default() };
    let mut cpu = CpuState { regs, sregs, sregs_dirty: false, extra: &mut extra };
    let _ = fixup::emulate(&mut cpu, &mem, &code[..fetched.min(code.len())]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of a target's seed corpus (and the inputs that once crashed it) runs clean.
    fn replay(target: &str, run: fn(&[u8])) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            run(&std::fs::read(e.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn pci_seeds() {
        replay("pci_config", pci_bus);
    }

    #[test]
    fn pvm_seeds() {
        replay("pvm_fixup", pvm_fixup);
    }
}
