//! SYSCALL via #PF. On PVM a SYSCALL from guest CPL3 sets RIP=LSTAR (and RCX/R11/RFLAGS) but
//! leaves the vCPU in CPL3, so fetching the (supervisor-only) kernel entry page-faults and the
//! guest's #PF handler runs. We replace the first byte of that handler (a NOP) with int3, which
//! the host emulator cannot run, so every #PF entry exits to the VMM: if the exception frame says
//! "user fetch at LSTAR" we restart the vCPU at LSTAR in kernel mode with the user's RSP/RFLAGS
//! (a completed SYSCALL); otherwise we step over the NOP and the normal #PF path runs.
//! SYSRETQ/IRETQ back to CPL3 work on this host (SYSRETQ through the fix-up in `fixup.rs`).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::fixup::{CpuState, MSR_LSTAR};
use super::guest_mem::{AccessKind, GuestView};
use crate::hypervisor::{SpecialRegs, RSP};

/// The guest kernel's IDT lives in the upper half once it has set up its own.
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;
const PF_VECTOR: u64 = 14;
pub const INT3: u8 = 0xcc;

/// NOP encodings a #PF entry can start with (ENDBR64 counts: it is a NOP for our purpose).
const NOPS: &[&[u8]] = &[
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0xf3, 0x0f, 0x1e, 0xfa],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x00],
    &[0x66, 0x90],
    &[0x90],
];

/// Where the #PF handler is and what it starts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handler {
    /// Not yet findable (IDT not in high memory yet, or unreadable).
    NotYet,
    /// Starts with a NOP of `nop_len` bytes (or already with our int3 when `patched`).
    Nop { va: u64, gpa: u64, nop_len: usize },
    /// Starts with something else: leave it alone.
    Other { va: u64, bytes: Vec<u8> },
}

/// Finds the #PF handler through the IDT.
pub fn find_pf_handler(mem: &GuestMemoryMmap, sregs: &SpecialRegs) -> Handler {
    if sregs.idt.base < KERNEL_HALF || u64::from(sregs.idt.limit) < (PF_VECTOR + 1) * 16 - 1 {
        return Handler::NotYet;
    }
    let view = GuestView::new(mem, sregs, 2);
    let mut gate = [0u8; 16];
    if view.read(sregs.idt.base + PF_VECTOR * 16, &mut gate, AccessKind::Inspect).is_err() {
        return Handler::NotYet;
    }
    let w16 = |i: usize| u64::from(u16::from_le_bytes([gate[i], gate[i + 1]]));
    let va = w16(0) | (w16(6) << 16) | (u64::from(u32::from_le_bytes(gate[8..12].try_into().unwrap())) << 32);
    let Ok(t) = view.translate(va, AccessKind::Inspect) else {
        return Handler::NotYet;
    };
    let mut bytes = [0u8; 5];
    if view.read(va, &mut bytes, AccessKind::Inspect).is_err() {
        return Handler::NotYet;
    }
    match NOPS.iter().find(|n| bytes.starts_with(n)) {
        Some(n) => Handler::Nop { va, gpa: t.gpa, nop_len: n.len() },
        None => Handler::Other { va, bytes: bytes.to_vec() },
    }
}

/// Writes int3 over the handler's first byte.
pub fn patch(mem: &GuestMemoryMmap, gpa: u64) -> bool {
    mem.write_obj(INT3, GuestAddress(gpa)).is_ok()
}

/// The byte at the patched address now (None if unreadable).
pub fn byte_at(mem: &GuestMemoryMmap, gpa: u64) -> Option<u8> {
    mem.read_obj::<u8>(GuestAddress(gpa)).ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PfEntry {
    /// A user SYSCALL: the vCPU now sits at LSTAR in kernel mode.
    Syscall,
    /// An ordinary page fault: the vCPU steps over the NOP.
    Passthrough,
}

/// The vCPU stopped on our int3 at the #PF handler entry (RIP == patched address). Reads the
/// exception frame at RSP (error code, RIP, CS, RFLAGS, RSP, SS) and completes a SYSCALL or
/// lets the fault through.
pub fn pf_entry(cpu: &mut CpuState, mem: &GuestMemoryMmap, nop_len: usize) -> Result<PfEntry, String> {
    let view = GuestView::new(mem, &cpu.sregs, cpu.regs.rflags);
    let rsp = cpu.regs.gpr[RSP];
    let mut frame = [0u64; 6];
    for (i, slot) in frame.iter_mut().enumerate() {
        *slot = view
            .read_u64(rsp.wrapping_add(8 * i as u64), AccessKind::Inspect)
            .map_err(|e| format!("#PF entry: exception frame at rsp {rsp:#x}: {e}"))?;
    }
    let [err, rip, cs, rflags, user_rsp, _ss] = frame;
    let lstar = cpu.extra.msr(MSR_LSTAR)?;
    if rip == lstar && cs & 3 == 3 && err & 4 != 0 {
        cpu.regs.rip = lstar;
        cpu.regs.gpr[RSP] = user_rsp;
        cpu.regs.rflags = (rflags & !0x1_0000) | 2; // drop RF
        Ok(PfEntry::Syscall)
    } else {
        cpu.regs.rip = cpu.regs.rip.wrapping_add(nop_len as u64);
        Ok(PfEntry::Passthrough)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{DescriptorTable, Regs};
    use crate::pvm::fixup::FakeExtra;
    use crate::pvm::guest_mem::tests::{build_tables, long_mode_sregs, mem};

    /// Kernel-half alias: PML4[256] maps like PML4[0], so 0xffff_8000_0020_0000 is gpa 0x20_0000.
    const K: u64 = 0xffff_8000_0000_0000;

    #[test]
    fn finds_patches_and_converts() {
        let m = mem();
        build_tables(&m);
        let mut s = long_mode_sregs();
        assert_eq!(find_pf_handler(&m, &s), Handler::NotYet);
        // IDT at K+0x20_0000 (gpa 0x20_0000); handler at K+0x20_1234 (gpa 0x20_1234).
        s.idt = DescriptorTable { base: K + 0x20_0000, limit: 255 };
        let h = K + 0x20_1234;
        let mut gate = [0u8; 16];
        gate[0..2].copy_from_slice(&(h as u16).to_le_bytes());
        gate[6..8].copy_from_slice(&((h >> 16) as u16).to_le_bytes());
        gate[8..12].copy_from_slice(&((h >> 32) as u32).to_le_bytes());
        m.write_slice(&gate, GuestAddress(0x20_0000 + 14 * 16)).unwrap();
        m.write_slice(&[0x0f, 0x1f, 0x00, 0x55], GuestAddress(0x20_1234)).unwrap();
        assert_eq!(find_pf_handler(&m, &s), Handler::Nop { va: h, gpa: 0x20_1234, nop_len: 3 });
        assert!(patch(&m, 0x20_1234));
        assert_eq!(byte_at(&m, 0x20_1234), Some(INT3));
        assert!(matches!(find_pf_handler(&m, &s), Handler::Other { .. }));

        // Frame of a user fetch fault at LSTAR on the kernel stack at K+0x20_8000.
        let lstar = K + 0x20_4000;
        let frame: [u64; 6] = [0x15, lstar, 0x33, 0x246, 0x7fff_0000, 0x2b];
        for (i, v) in frame.iter().enumerate() {
            m.write_obj(*v, GuestAddress(0x20_8000 + 8 * i as u64)).unwrap();
        }
        let mut x = FakeExtra { lstar, ..Default::default() };
        let mut regs = Regs { rip: h, rflags: 2, ..Default::default() };
        regs.gpr[RSP] = K + 0x20_8000;
        let mut cpu = CpuState { regs, sregs: s, sregs_dirty: false, extra: &mut x };
        assert_eq!(pf_entry(&mut cpu, &m, 3), Ok(PfEntry::Syscall));
        assert_eq!((cpu.regs.rip, cpu.regs.gpr[RSP], cpu.regs.rflags), (lstar, 0x7fff_0000, 0x246));
        // A kernel-mode fault elsewhere passes through.
        m.write_obj(0x10u64, GuestAddress(0x20_8010)).unwrap();
        cpu.regs = regs;
        assert_eq!(pf_entry(&mut cpu, &m, 3), Ok(PfEntry::Passthrough));
        assert_eq!(cpu.regs.rip, h + 3);
        assert_eq!(cpu.regs.gpr[RSP], K + 0x20_8000);
    }
}
