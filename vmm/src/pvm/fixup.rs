//! Instructions PVM's host emulator gives up on (KVM_EXIT_INTERNAL_ERROR / EMULATION): decoded
//! from guest memory with iced-x86 and performed here, on a [`CpuState`] the caller loads from
//! and stores back to the vCPU. Pure logic: tests run it against a fake CPU and real guest RAM.

use std::sync::atomic::{fence, Ordering};

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic, OpKind, Register};
use vm_memory::GuestMemoryMmap;

use super::guest_mem::{cpl, AccessKind, GuestView, MemFault};
use super::host_exec::{self, Effects, Fxsave, HostInsn};
use super::Kind;
use crate::hypervisor::{Regs, Segment, SpecialRegs, R11, RAX, RBX, RCX, RDX};

pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;

pub const FL_CF: u64 = 1 << 0;
pub const FL_PF: u64 = 1 << 2;
pub const FL_AF: u64 = 1 << 4;
pub const FL_ZF: u64 = 1 << 6;
pub const FL_SF: u64 = 1 << 7;
pub const FL_OF: u64 = 1 << 11;
pub const FL_AC: u64 = 1 << 18;
const FL_ARITH: u64 = FL_CF | FL_PF | FL_AF | FL_ZF | FL_SF | FL_OF;

pub const VEC_BP: u8 = 3;
pub const VEC_UD: u8 = 6;
pub const VEC_NM: u8 = 7;
pub const VEC_GP: u8 = 13;
pub const VEC_PF: u8 = 14;
pub const VEC_MF: u8 = 16;
pub const VEC_XM: u8 = 19;

/// MXCSR bits a guest may set (MXCSR_MASK with DAZ).
const MXCSR_MASK: u32 = 0xffff;

/// Vector and error code of an exception to queue for the vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error_code: Option<u32>,
}

/// vCPU state read lazily (each costs an ioctl on KVM).
pub trait CpuExtra {
    fn mxcsr(&mut self) -> Result<u32, String>;
    fn set_mxcsr(&mut self, value: u32) -> Result<(), String>;
    /// The x87/SSE state in FXSAVE's layout (`host_exec.rs` runs instructions on it).
    fn fxsave(&mut self) -> Result<[u8; 512], String>;
    fn set_fxsave(&mut self, image: &[u8; 512]) -> Result<(), String>;
    fn msr(&mut self, index: u32) -> Result<u64, String>;
}

/// The registers a fix-up works on; the caller writes `regs` back, and `sregs` if dirty.
pub struct CpuState<'a> {
    pub regs: Regs,
    pub sregs: SpecialRegs,
    pub sregs_dirty: bool,
    pub extra: &'a mut dyn CpuExtra,
}

/// What `emulate` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The code at RIP is not what the host emulator fetched (live patching on another vCPU):
    /// nothing changed, run the vCPU again.
    Retry,
    /// Performed (registers updated), possibly with an exception to inject.
    Done { kind: Kind, exception: Option<Exception> },
}

/// Why one instruction could not be completed.
enum Fail {
    Mem(MemFault),
    Exc(Exception),
    Fatal(String),
}

impl From<MemFault> for Fail {
    fn from(f: MemFault) -> Self {
        Fail::Mem(f)
    }
}

fn gp0() -> Fail {
    Fail::Exc(Exception { vector: VEC_GP, error_code: Some(0) })
}

fn ud() -> Fail {
    Fail::Exc(Exception { vector: VEC_UD, error_code: None })
}

/// 64, 32 or 16: how the vCPU decodes code now.
pub fn code_bitness(s: &SpecialRegs) -> u32 {
    const EFER_LMA: u64 = 1 << 10;
    if s.efer & EFER_LMA != 0 && s.cs.l {
        64
    } else if s.cr0 & 1 != 0 && s.cs.db {
        32
    } else {
        16
    }
}

/// Linear address of the instruction at CS:RIP.
pub fn linear_rip(s: &SpecialRegs, rip: u64) -> u64 {
    match code_bitness(s) {
        64 => rip,
        _ => s.cs.base.wrapping_add(rip) & 0xffff_ffff,
    }
}

/// "rip 0x...: 0f c7 0e = cmpxchg16b [rsi]"
pub fn describe(rip: u64, bytes: &[u8], bitness: u32) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    let text = if insn.is_invalid() {
        "(invalid or incomplete)".to_string()
    } else {
        let mut s = String::new();
        IntelFormatter::new().format(&insn, &mut s);
        s
    };
    let used = if insn.is_invalid() { bytes.len() } else { insn.len().min(bytes.len()) };
    format!("rip {rip:#x} ({bitness}-bit): {} = {text}", hex[..used].join(" "))
}

/// Index into `Regs::gpr` of a general-purpose register (any width).
fn gpr_index(r: Register) -> Option<usize> {
    let full = r.full_register();
    if (Register::RAX..=Register::R15).contains(&full) {
        Some(full as usize - Register::RAX as usize)
    } else {
        None
    }
}

fn is_high_byte(r: Register) -> bool {
    matches!(r, Register::AH | Register::CH | Register::DH | Register::BH)
}

fn read_reg(regs: &Regs, r: Register) -> Option<u64> {
    let v = regs.gpr[gpr_index(r)?];
    Some(match r.size() {
        1 if is_high_byte(r) => (v >> 8) & 0xff,
        1 => v & 0xff,
        2 => v & 0xffff,
        4 => v & 0xffff_ffff,
        _ => v,
    })
}

/// Writes with x86-64 semantics: 32-bit writes zero-extend, 8/16-bit ones merge.
fn write_reg(regs: &mut Regs, r: Register, value: u64) -> Result<(), Fail> {
    let i = gpr_index(r).ok_or_else(|| Fail::Fatal(format!("not a general register: {r:?}")))?;
    let old = regs.gpr[i];
    regs.gpr[i] = match r.size() {
        1 if is_high_byte(r) => (old & !0xff00) | ((value & 0xff) << 8),
        1 => (old & !0xff) | (value & 0xff),
        2 => (old & !0xffff) | (value & 0xffff),
        4 => value & 0xffff_ffff,
        _ => value,
    };
    Ok(())
}

/// Linear address of memory operand `op` of `insn`.
fn mem_addr(cpu: &CpuState, insn: &Instruction, op: u32, bitness: u32) -> Result<u64, Fail> {
    let s = &cpu.sregs;
    let regs = &cpu.regs;
    let seg_base = |seg: &Segment| if bitness == 64 { 0 } else { seg.base };
    insn.virtual_address(op, 0, |reg, _, _| match reg {
        Register::ES => Some(seg_base(&s.es)),
        Register::CS => Some(seg_base(&s.cs)),
        Register::SS => Some(seg_base(&s.ss)),
        Register::DS => Some(seg_base(&s.ds)),
        Register::FS => Some(s.fs.base),
        Register::GS => Some(s.gs.base),
        r => read_reg(regs, r),
    })
    .map(|a| if bitness == 64 { a } else { a & 0xffff_ffff })
    .ok_or_else(|| Fail::Fatal("cannot compute the memory operand's address".into()))
}

/// Reads source operand `op` (register or memory) of `size` bytes.
fn read_src(
    cpu: &CpuState,
    mem: &GuestMemoryMmap,
    insn: &Instruction,
    op: u32,
    size: usize,
    bitness: u32,
) -> Result<u64, Fail> {
    match insn.op_kind(op) {
        OpKind::Register => {
            read_reg(&cpu.regs, insn.op_register(op)).ok_or_else(|| Fail::Fatal("unexpected register".into()))
        }
        OpKind::Memory => {
            let addr = mem_addr(cpu, insn, op, bitness)?;
            let mut b = [0u8; 8];
            GuestView::new(mem, &cpu.sregs, cpu.regs.rflags).read(addr, &mut b[..size], AccessKind::Read)?;
            Ok(u64::from_le_bytes(b))
        }
        k => Err(Fail::Fatal(format!("unexpected operand kind {k:?}"))),
    }
}

/// POPCNT/LZCNT/TZCNT of a `bits`-wide value: (result, new arithmetic flags).
pub fn bit_count(m: Mnemonic, value: u64, bits: u32) -> (u64, u64) {
    let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
    let v = value & mask;
    match m {
        // POPCNT: OF SF ZF AF CF PF cleared, ZF = (src == 0).
        Mnemonic::Popcnt => (u64::from(v.count_ones()), if v == 0 { FL_ZF } else { 0 }),
        // LZCNT/TZCNT: CF = (src == 0), ZF = (result == 0); OF SF AF PF undefined (cleared).
        Mnemonic::Lzcnt | Mnemonic::Tzcnt => {
            let r = if v == 0 {
                u64::from(bits)
            } else if m == Mnemonic::Lzcnt {
                u64::from(v.leading_zeros() - (64 - bits))
            } else {
                u64::from(v.trailing_zeros())
            };
            let mut f = 0;
            if v == 0 {
                f |= FL_CF;
            }
            if r == 0 {
                f |= FL_ZF;
            }
            (r, f)
        }
        _ => (0, 0),
    }
}

/// Atomic 16-byte compare-exchange on host memory: returns the old value (equal to `expected`
/// on success).
///
/// # Safety
/// `ptr` must be 16-byte aligned and valid for reads and writes of 16 bytes.
unsafe fn cmpxchg16b(ptr: *mut u8, expected: (u64, u64), new: (u64, u64)) -> (u64, u64) {
    let (mut lo, mut hi) = expected;
    // SAFETY: the caller guarantees the pointer; rbx is reserved by LLVM, so the new low half
    // is swapped in and out around the instruction.
    unsafe {
        std::arch::asm!(
            "xchg {nlo}, rbx",
            "lock cmpxchg16b xmmword ptr [{p}]",
            "mov rbx, {nlo}",
            p = in(reg) ptr,
            nlo = inout(reg) new.0 => _,
            inout("rax") lo,
            inout("rdx") hi,
            in("rcx") new.1,
            options(nostack),
        );
    }
    (lo, hi)
}

/// Atomic 8-byte compare-exchange (what CMPXCHG8B does to EDX:EAX / ECX:EBX), alignment free.
///
/// # Safety
/// `ptr` must be valid for reads and writes of 8 bytes.
unsafe fn cmpxchg8b(ptr: *mut u8, expected: u64, new: u64) -> u64 {
    let mut old = expected;
    // SAFETY: the caller guarantees the pointer; `lock cmpxchg` allows unaligned operands.
    unsafe {
        std::arch::asm!(
            "lock cmpxchg qword ptr [{p}], {n}",
            p = in(reg) ptr,
            n = in(reg) new,
            inout("rax") old,
            options(nostack),
        );
    }
    old
}

/// Random bytes from the host kernel, or None when it has none at hand (RDRAND's CF=0).
fn host_random(n: usize) -> Option<u64> {
    let mut b = [0u8; 8];
    xhyve_contract::random::fill(&mut b[..n]).ok().map(|()| u64::from_le_bytes(b))
}

/// SYSRET's user CS and SS from STAR[63:48]; the selector arithmetic wraps at 16 bits, as the
/// CPU's does.
fn user_segments(star: u64, long: bool) -> (Segment, Segment) {
    let base = ((star >> 48) & 0xfffc) as u16;
    let cs = Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: if long { base.wrapping_add(16) } else { base } | 3,
        type_: 0xb,
        present: true,
        dpl: 3,
        db: !long,
        s: true,
        l: long,
        g: true,
        avl: false,
        unusable: false,
    };
    let ss = Segment { selector: base.wrapping_add(8) | 3, type_: 3, db: true, l: false, ..cs };
    (cs, ss)
}

fn is_canonical(va: u64) -> bool {
    (((va << 16) as i64) >> 16) as u64 == va
}

/// Decodes the instruction at the vCPU's RIP and performs it. `insn` is what the host emulator
/// fetched (may be empty).
pub fn emulate(cpu: &mut CpuState, mem: &GuestMemoryMmap, insn: &[u8]) -> Result<Outcome, String> {
    let bitness = code_bitness(&cpu.sregs);
    let rip = cpu.regs.rip;
    let lin = linear_rip(&cpu.sregs, rip);
    let code = GuestView::new(mem, &cpu.sregs, cpu.regs.rflags).read_code(lin, 15);
    if code.is_empty() {
        return Err(format!("rip {rip:#x}: code not readable; the host fetched {insn:02x?}"));
    }
    let n = code.len().min(insn.len());
    if code[..n] != insn[..n] {
        return Ok(Outcome::Retry);
    }
    let mut decoder = Decoder::with_ip(bitness, &code, rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        return Err(format!("cannot decode: {}", describe(rip, &code, bitness)));
    }
    let saved = cpu.regs;
    // Instructions with a fix-up of their own first; x87/MMX/SSE ones the host CPU runs.
    let host = if kind_of(instr.mnemonic()).is_none() { host_exec::prepare(&instr).ok() } else { None };
    let result = match &host {
        Some(h) => exec_on_host(cpu, mem, &instr, h, bitness),
        None => exec(cpu, mem, &instr, bitness),
    };
    match result {
        Ok((kind, exception)) => Ok(Outcome::Done { kind, exception }),
        Err(fail) => {
            cpu.regs = saved;
            let kind = match &host {
                Some(h) => Some(if h.x87 { Kind::X87 } else { Kind::Sse }),
                None => kind_of(instr.mnemonic()),
            };
            let kind = kind.unwrap_or(Kind::FaultInjected);
            match fail {
                Fail::Exc(e) => Ok(Outcome::Done { kind, exception: Some(e) }),
                Fail::Mem(MemFault::PageFault { addr, code }) => {
                    cpu.sregs.cr2 = addr;
                    cpu.sregs_dirty = true;
                    Ok(Outcome::Done {
                        kind: Kind::FaultInjected,
                        exception: Some(Exception { vector: VEC_PF, error_code: Some(code) }),
                    })
                }
                Fail::Mem(MemFault::NonCanonical(_)) => Ok(Outcome::Done {
                    kind: Kind::FaultInjected,
                    exception: Some(Exception { vector: VEC_GP, error_code: Some(0) }),
                }),
                Fail::Mem(other) => Err(format!("{}: {other}", describe(rip, &code, bitness))),
                Fail::Fatal(why) => Err(format!("{}: {why}", describe(rip, &code, bitness))),
            }
        }
    }
}

fn kind_of(m: Mnemonic) -> Option<Kind> {
    Some(match m {
        Mnemonic::Int3 => Kind::Int3,
        Mnemonic::Ud2 | Mnemonic::Ud0 | Mnemonic::Ud1 => Kind::Ud2,
        Mnemonic::Wait => Kind::Fwait,
        Mnemonic::Lfence | Mnemonic::Mfence | Mnemonic::Sfence => Kind::Fence,
        Mnemonic::Clac | Mnemonic::Stac => Kind::ClacStac,
        Mnemonic::Ldmxcsr | Mnemonic::Vldmxcsr => Kind::Ldmxcsr,
        Mnemonic::Stmxcsr | Mnemonic::Vstmxcsr => Kind::Stmxcsr,
        Mnemonic::Popcnt => Kind::Popcnt,
        Mnemonic::Lzcnt => Kind::Lzcnt,
        Mnemonic::Tzcnt => Kind::Tzcnt,
        Mnemonic::Cmpxchg16b => Kind::Cmpxchg16b,
        Mnemonic::Cmpxchg8b => Kind::Cmpxchg8b,
        Mnemonic::Rdrand => Kind::Rdrand,
        Mnemonic::Rdseed => Kind::Rdseed,
        Mnemonic::Sysret | Mnemonic::Sysretq => Kind::Sysret,
        _ => return None,
    })
}

/// The no-wait x87 forms: they run even with an exception pending.
fn x87_no_wait(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(m, Fninit | Fnclex | Fnstsw | Fnstcw | Fnstenv | Fnsave | Fndisi | Fneni | Fnsetpm)
}

/// Runs an x87, MMX or SSE instruction on the host CPU with the guest's FPU state
/// (`host_exec.rs`).
fn exec_on_host(
    cpu: &mut CpuState,
    mem: &GuestMemoryMmap,
    insn: &Instruction,
    host: &HostInsn,
    bitness: u32,
) -> Result<(Kind, Option<Exception>), Fail> {
    const CR0_EM: u64 = 1 << 2;
    const CR0_TS: u64 = 1 << 3;
    const CR4_OSXMMEXCPT: u64 = 1 << 10;
    let m = insn.mnemonic();
    let kind = if host.x87 { Kind::X87 } else { Kind::Sse };
    if cpu.sregs.cr0 & CR0_TS != 0 || (host.x87 && cpu.sregs.cr0 & CR0_EM != 0) {
        return Err(Fail::Exc(Exception { vector: VEC_NM, error_code: None }));
    }
    if !host.x87 && cpu.sregs.cr0 & CR0_EM != 0 {
        return Err(ud());
    }
    let mut image = Fxsave(cpu.extra.fxsave().map_err(Fail::Fatal)?);
    if host.x87 && host_exec::x87_exception_pending(&image) && !x87_no_wait(m) {
        return Err(Fail::Exc(Exception { vector: VEC_MF, error_code: None }));
    }
    let view = GuestView::new(mem, &cpu.sregs, cpu.regs.rflags);
    let mem_op = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory);
    let addr = mem_op.map(|op| mem_addr(cpu, insn, op, bitness)).transpose()?;
    let (size, read, write) = host.mem.unwrap_or((0, false, false));
    let mut operand = vec![0u8; size];
    if let (Some(a), true) = (addr, read) {
        view.read(a, &mut operand, AccessKind::Read)?;
    }
    let rax = host.gpr.and_then(|(r, _)| read_reg(&cpu.regs, r)).unwrap_or(0);
    let effects = host_exec::run(host, &mut image, &mut operand, rax, cpu.regs.rflags).map_err(Fail::Fatal)?;
    let (rax, rflags) = match effects {
        Effects::Done { rax, rflags } => (rax, rflags),
        Effects::SimdException if cpu.sregs.cr4 & CR4_OSXMMEXCPT != 0 => {
            return Err(Fail::Exc(Exception { vector: VEC_XM, error_code: None }))
        }
        Effects::SimdException => return Err(ud()),
    };
    if let (Some(a), true) = (addr, write) {
        view.write(a, &operand)?;
    }
    if host.x87 {
        // The last instruction and data pointers as the guest would see them, not the stub's.
        image.0[8..16].copy_from_slice(&linear_rip(&cpu.sregs, cpu.regs.rip).to_le_bytes());
        image.0[16..24].copy_from_slice(&addr.unwrap_or(0).to_le_bytes());
    }
    cpu.extra.set_fxsave(&image.0).map_err(Fail::Fatal)?;
    if let Some((r, true)) = host.gpr {
        write_reg(&mut cpu.regs, r, rax)?;
    }
    cpu.regs.rflags = (cpu.regs.rflags & !host.flags) | (rflags & host.flags);
    cpu.regs.rip = insn.next_ip();
    Ok((kind, None))
}

/// Performs one decoded instruction; on error the caller restores the registers.
fn exec(
    cpu: &mut CpuState,
    mem: &GuestMemoryMmap,
    insn: &Instruction,
    bitness: u32,
) -> Result<(Kind, Option<Exception>), Fail> {
    let m = insn.mnemonic();
    let Some(kind) = kind_of(m) else {
        let why = match m {
            Mnemonic::Xrstor | Mnemonic::Xsave | Mnemonic::Xsaveopt | Mnemonic::Xrstors | Mnemonic::Xsaves => {
                "XSAVE family: boot the guest with `noxsave`"
            }
            _ => "no PVM fix-up for this instruction",
        };
        return Err(Fail::Fatal(why.into()));
    };
    let next = insn.next_ip();
    let cur_cpl = cpl(&cpu.sregs);
    let mut exception = None;
    match m {
        Mnemonic::Int3 => {
            // A trap: the handler sees RIP after the int3 (Linux's poke_int3_handler relies on it).
            cpu.regs.rip = next;
            exception = Some(Exception { vector: VEC_BP, error_code: None });
        }
        Mnemonic::Ud2 | Mnemonic::Ud0 | Mnemonic::Ud1 => {
            exception = Some(Exception { vector: VEC_UD, error_code: None });
        }
        Mnemonic::Wait => cpu.regs.rip = next,
        Mnemonic::Lfence | Mnemonic::Mfence | Mnemonic::Sfence => {
            fence(Ordering::SeqCst);
            cpu.regs.rip = next;
        }
        Mnemonic::Clac | Mnemonic::Stac => {
            if cur_cpl != 0 {
                return Err(ud());
            }
            if m == Mnemonic::Clac {
                cpu.regs.rflags &= !FL_AC;
            } else {
                cpu.regs.rflags |= FL_AC;
            }
            cpu.regs.rip = next;
        }
        Mnemonic::Ldmxcsr | Mnemonic::Vldmxcsr => {
            let v = read_src(cpu, mem, insn, 0, 4, bitness)? as u32;
            if v & !MXCSR_MASK != 0 {
                return Err(gp0());
            }
            cpu.extra.set_mxcsr(v).map_err(Fail::Fatal)?;
            cpu.regs.rip = next;
        }
        Mnemonic::Stmxcsr | Mnemonic::Vstmxcsr => {
            let addr = mem_addr(cpu, insn, 0, bitness)?;
            let v = cpu.extra.mxcsr().map_err(Fail::Fatal)?;
            GuestView::new(mem, &cpu.sregs, cpu.regs.rflags).write(addr, &v.to_le_bytes())?;
            cpu.regs.rip = next;
        }
        Mnemonic::Popcnt | Mnemonic::Lzcnt | Mnemonic::Tzcnt => {
            let dst = insn.op0_register();
            let size = dst.size();
            if !matches!(size, 2 | 4 | 8) {
                return Err(Fail::Fatal(format!("unexpected destination {dst:?}")));
            }
            let v = read_src(cpu, mem, insn, 1, size, bitness)?;
            let (res, flags) = bit_count(m, v, size as u32 * 8);
            write_reg(&mut cpu.regs, dst, res)?;
            cpu.regs.rflags = (cpu.regs.rflags & !FL_ARITH) | flags;
            cpu.regs.rip = next;
        }
        Mnemonic::Cmpxchg16b | Mnemonic::Cmpxchg8b => {
            if insn.op0_kind() != OpKind::Memory {
                return Err(ud());
            }
            let addr = mem_addr(cpu, insn, 0, bitness)?;
            let wide = m == Mnemonic::Cmpxchg16b;
            if wide && addr & 15 != 0 {
                return Err(gp0());
            }
            let view = GuestView::new(mem, &cpu.sregs, cpu.regs.rflags);
            let g = &mut cpu.regs.gpr;
            let equal = if wide {
                let p = view.host_ptr_for_write(addr, 16)?;
                let exp = (g[RAX], g[RDX]);
                // SAFETY: `p` maps 16 aligned bytes of guest RAM inside one page and region.
                let old = unsafe { cmpxchg16b(p, exp, (g[RBX], g[RCX])) };
                if old != exp {
                    g[RAX] = old.0;
                    g[RDX] = old.1;
                }
                old == exp
            } else {
                let p = view.host_ptr_for_write(addr, 8)?;
                let exp = (g[RAX] & 0xffff_ffff) | (g[RDX] << 32);
                let new = (g[RBX] & 0xffff_ffff) | (g[RCX] << 32);
                // SAFETY: `p` maps 8 bytes of guest RAM inside one page and region.
                let old = unsafe { cmpxchg8b(p, exp, new) };
                if old != exp {
                    g[RAX] = old & 0xffff_ffff;
                    g[RDX] = old >> 32;
                }
                old == exp
            };
            if equal {
                cpu.regs.rflags |= FL_ZF;
            } else {
                cpu.regs.rflags &= !FL_ZF;
            }
            cpu.regs.rip = next;
        }
        Mnemonic::Rdrand | Mnemonic::Rdseed => {
            let dst = insn.op0_register();
            let size = dst.size();
            let value = host_random(size);
            write_reg(&mut cpu.regs, dst, value.unwrap_or(0))?;
            cpu.regs.rflags = (cpu.regs.rflags & !FL_ARITH) | if value.is_some() { FL_CF } else { 0 };
            cpu.regs.rip = next;
        }
        Mnemonic::Sysret | Mnemonic::Sysretq => {
            const EFER_SCE: u64 = 1;
            if bitness != 64 || cpu.sregs.efer & EFER_SCE == 0 {
                return Err(ud());
            }
            if cur_cpl != 0 {
                return Err(gp0());
            }
            let long = m == Mnemonic::Sysretq;
            let rcx = cpu.regs.gpr[RCX];
            if long && !is_canonical(rcx) {
                return Err(gp0());
            }
            let star = cpu.extra.msr(MSR_STAR).map_err(Fail::Fatal)?;
            let (cs, ss) = user_segments(star, long);
            cpu.regs.rip = if long { rcx } else { rcx & 0xffff_ffff };
            cpu.regs.rflags = (cpu.regs.gpr[R11] & 0x3c_7fd7) | 2;
            cpu.sregs.cs = cs;
            cpu.sregs.ss = ss;
            cpu.sregs_dirty = true;
        }
        _ => unreachable!("kind_of covers exactly these mnemonics"),
    }
    Ok((kind, exception))
}

/// MXCSR, the FXSAVE image (x87 control word 0x37f, MXCSR 0x1f80 by default), STAR and LSTAR as
/// given (the fix-up tests and the pvm_fixup fuzz target make it); any other MSR is an error, as a
/// failing ioctl is.
pub(crate) struct FakeExtra {
    pub mxcsr: u32,
    pub fx: [u8; 512],
    pub star: u64,
    pub lstar: u64,
}

impl Default for FakeExtra {
    fn default() -> Self {
        let mut fx = [0; 512];
        fx[..2].copy_from_slice(&0x37fu16.to_le_bytes());
        FakeExtra { mxcsr: 0x1f80, fx, star: 0, lstar: 0 }
    }
}

impl CpuExtra for FakeExtra {
    fn mxcsr(&mut self) -> Result<u32, String> {
        Ok(self.mxcsr)
    }
    fn set_mxcsr(&mut self, value: u32) -> Result<(), String> {
        self.mxcsr = value;
        Ok(())
    }
    fn fxsave(&mut self) -> Result<[u8; 512], String> {
        Ok(self.fx)
    }
    fn set_fxsave(&mut self, image: &[u8; 512]) -> Result<(), String> {
        self.fx = *image;
        Ok(())
    }
    fn msr(&mut self, index: u32) -> Result<u64, String> {
        match index {
            MSR_STAR => Ok(self.star),
            MSR_LSTAR => Ok(self.lstar),
            _ => Err(format!("msr {index:#x}")),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pvm::guest_mem::tests::{build_tables, long_mode_sregs, mem};
    use vm_memory::{Bytes, GuestAddress};

    /// Code goes to va 0x20_1000 (2 MiB kernel page, gpa 0x20_1000); data page at va 0x5000
    /// (gpa 0x10_0000).
    pub const CODE: u64 = 0x20_1000;
    pub const DATA: u64 = 0x5000;
    pub const DATA_GPA: u64 = 0x10_0000;

    fn run(code: &[u8], regs: &mut Regs, extra: &mut FakeExtra) -> (Result<Outcome, String>, SpecialRegs) {
        let m = mem();
        build_tables(&m);
        run_in(&m, code, regs, extra)
    }

    fn run_in(
        m: &GuestMemoryMmap,
        code: &[u8],
        regs: &mut Regs,
        extra: &mut FakeExtra,
    ) -> (Result<Outcome, String>, SpecialRegs) {
        m.write_slice(code, GuestAddress(CODE)).unwrap();
        regs.rip = CODE;
        let mut cpu = CpuState { regs: *regs, sregs: long_mode_sregs(), sregs_dirty: false, extra };
        let r = emulate(&mut cpu, m, code);
        *regs = cpu.regs;
        (r, cpu.sregs)
    }

    fn done(kind: Kind) -> Result<Outcome, String> {
        Ok(Outcome::Done { kind, exception: None })
    }

    #[test]
    fn bit_counts() {
        use Mnemonic::*;
        assert_eq!(bit_count(Popcnt, 0xf0f0, 16), (8, 0));
        assert_eq!(bit_count(Popcnt, 0, 64), (0, FL_ZF));
        assert_eq!(bit_count(Popcnt, 0x1_0000_0001, 32), (1, 0));
        assert_eq!(bit_count(Lzcnt, 1, 32), (31, 0));
        assert_eq!(bit_count(Lzcnt, 1, 64), (63, 0));
        assert_eq!(bit_count(Lzcnt, 0x8000, 16), (0, FL_ZF));
        assert_eq!(bit_count(Lzcnt, 0, 16), (16, FL_CF));
        assert_eq!(bit_count(Tzcnt, 0x8000_0000_0000_0000, 64), (63, 0));
        assert_eq!(bit_count(Tzcnt, 1, 32), (0, FL_ZF));
        assert_eq!(bit_count(Tzcnt, 0, 32), (32, FL_CF));
        assert_eq!(bit_count(Tzcnt, 0x1_0000_0000, 32), (32, FL_CF));
    }

    #[test]
    fn popcnt_lzcnt_tzcnt_instructions() {
        let mut x = FakeExtra::default();
        // popcnt rax, rbx
        let mut r = Regs { rflags: 2 | FL_CF | FL_SF, ..Default::default() };
        r.gpr[RBX] = 0xff00_0000_0000_00ff;
        assert_eq!(run(&[0xf3, 0x48, 0x0f, 0xb8, 0xc3], &mut r, &mut x).0, done(Kind::Popcnt));
        assert_eq!(r.gpr[RAX], 16);
        assert_eq!(r.rflags, 2);
        assert_eq!(r.rip, CODE + 5);
        // popcnt eax, ebx zero-extends; 0 source sets ZF
        r.gpr[RAX] = u64::MAX;
        r.gpr[RBX] = 0xffff_ffff_0000_0000;
        run(&[0xf3, 0x0f, 0xb8, 0xc3], &mut r, &mut x).0.unwrap();
        assert_eq!(r.gpr[RAX], 0);
        assert_eq!(r.rflags, 2 | FL_ZF);
        // lzcnt cx, dx keeps rcx's upper bits
        r.gpr[RCX] = 0xaaaa_aaaa_aaaa_aaaa;
        r.gpr[RDX] = 0x00f0;
        assert_eq!(run(&[0x66, 0xf3, 0x0f, 0xbd, 0xca], &mut r, &mut x).0, done(Kind::Lzcnt));
        assert_eq!(r.gpr[RCX], 0xaaaa_aaaa_aaaa_0008);
        // tzcnt r9, qword [rsi+8] (memory source)
        let m = mem();
        build_tables(&m);
        m.write_obj(0u64, GuestAddress(DATA_GPA + 8)).unwrap();
        r.gpr[6] = DATA;
        r.gpr[9] = 5;
        assert_eq!(run_in(&m, &[0xf3, 0x4c, 0x0f, 0xbc, 0x4e, 0x08], &mut r, &mut x).0, done(Kind::Tzcnt));
        assert_eq!(r.gpr[9], 64);
        assert_eq!(r.rflags & FL_ARITH, FL_CF);
        m.write_obj(0x100u64, GuestAddress(DATA_GPA + 8)).unwrap();
        run_in(&m, &[0xf3, 0x4c, 0x0f, 0xbc, 0x4e, 0x08], &mut r, &mut x).0.unwrap();
        assert_eq!(r.gpr[9], 8);
        assert_eq!(r.rflags & FL_ARITH, 0);
        // RIP-relative memory source: popcnt eax, [rip+0x10]  (data at CODE+8+0x10)
        m.write_obj(0x7u32, GuestAddress(CODE + 8 + 0x10)).unwrap();
        run_in(&m, &[0xf3, 0x0f, 0xb8, 0x05, 0x10, 0, 0, 0], &mut r, &mut x).0.unwrap();
        assert_eq!(r.gpr[RAX], 3);
    }

    #[test]
    fn x87_on_the_host_fpu() {
        let m = mem();
        build_tables(&m);
        let mut x = FakeExtra::default();
        let mut r = Regs { rflags: 2, ..Default::default() };
        r.gpr[4] = DATA; // rsp
                         // fild dword [rsp+0x1c] (OpenSSL in OVMF's TlsDxe), fmul st, st(0), fistp qword [rsp+8]
        m.write_obj(-9i32, GuestAddress(DATA_GPA + 0x1c)).unwrap();
        assert_eq!(run_in(&m, &[0xdb, 0x44, 0x24, 0x1c], &mut r, &mut x).0, done(Kind::X87));
        assert_eq!(r.rip, CODE + 4);
        run_in(&m, &[0xd8, 0xc8], &mut r, &mut x).0.unwrap();
        run_in(&m, &[0x48, 0xdf, 0x7c, 0x24, 0x08], &mut r, &mut x).0.unwrap();
        assert_eq!(m.read_obj::<i64>(GuestAddress(DATA_GPA + 8)).unwrap(), 81);
        // The guest sees its own instruction and data pointers.
        assert_eq!(u64::from_le_bytes(x.fx[8..16].try_into().unwrap()), CODE);
        assert_eq!(u64::from_le_bytes(x.fx[16..24].try_into().unwrap()), DATA + 8);
        // fldcw [rsp+0x1c] / fnstcw [rsp+0x20]: the control word round trip.
        m.write_obj(0x27fu16, GuestAddress(DATA_GPA + 0x1c)).unwrap();
        run_in(&m, &[0xd9, 0x6c, 0x24, 0x1c], &mut r, &mut x).0.unwrap();
        run_in(&m, &[0xd9, 0x7c, 0x24, 0x20], &mut r, &mut x).0.unwrap();
        assert_eq!(m.read_obj::<u16>(GuestAddress(DATA_GPA + 0x20)).unwrap(), 0x27f);
        // fnstsw ax merges into rax (TOP back at 0 after the fistp).
        r.gpr[RAX] = 0xffff_ffff_ffff_ffff;
        run_in(&m, &[0xdf, 0xe0], &mut r, &mut x).0.unwrap();
        assert_eq!(r.gpr[RAX], 0xffff_ffff_ffff_0000);
        // A pending unmasked exception: waiting instructions raise #MF, no-wait ones run.
        x.fx[2] |= 0x80;
        let mf = Ok(Outcome::Done { kind: Kind::X87, exception: Some(Exception { vector: VEC_MF, error_code: None }) });
        assert_eq!(run_in(&m, &[0xd9, 0xee], &mut r, &mut x).0, mf);
        assert_eq!(r.rip, CODE, "not performed");
        assert_eq!(run_in(&m, &[0xdb, 0xe2], &mut r, &mut x).0, done(Kind::X87), "fnclex");
        assert_eq!(x.fx[2] & 0x80, 0);
    }

    #[test]
    fn traps_and_simple_ones() {
        let mut x = FakeExtra::default();
        let mut r = Regs { rflags: 2, ..Default::default() };
        let (o, _) = run(&[0xcc, 0x90], &mut r, &mut x);
        assert_eq!(
            o,
            Ok(Outcome::Done { kind: Kind::Int3, exception: Some(Exception { vector: 3, error_code: None }) })
        );
        assert_eq!(r.rip, CODE + 1);
        let (o, _) = run(&[0x0f, 0x0b], &mut r, &mut x);
        assert_eq!(
            o,
            Ok(Outcome::Done { kind: Kind::Ud2, exception: Some(Exception { vector: 6, error_code: None }) })
        );
        assert_eq!(r.rip, CODE);
        assert_eq!(run(&[0x9b], &mut r, &mut x).0, done(Kind::Fwait));
        assert_eq!(r.rip, CODE + 1);
        assert_eq!(run(&[0x0f, 0xae, 0xf0], &mut r, &mut x).0, done(Kind::Fence));
        assert_eq!(r.rip, CODE + 3);
        assert_eq!(run(&[0x0f, 0x01, 0xcb], &mut r, &mut x).0, done(Kind::ClacStac));
        assert_eq!(r.rflags, 2 | FL_AC);
        run(&[0x0f, 0x01, 0xca], &mut r, &mut x).0.unwrap();
        assert_eq!(r.rflags, 2);
    }

    #[test]
    fn mxcsr() {
        let m = mem();
        build_tables(&m);
        let mut x = FakeExtra { mxcsr: 0x1f80, ..Default::default() };
        let mut r = Regs { rflags: 2, ..Default::default() };
        r.gpr[RAX] = DATA;
        // stmxcsr [rax+4]
        assert_eq!(run_in(&m, &[0x0f, 0xae, 0x58, 0x04], &mut r, &mut x).0, done(Kind::Stmxcsr));
        assert_eq!(m.read_obj::<u32>(GuestAddress(DATA_GPA + 4)).unwrap(), 0x1f80);
        // ldmxcsr [rax]
        m.write_obj(0x9fc0u32, GuestAddress(DATA_GPA)).unwrap();
        assert_eq!(run_in(&m, &[0x0f, 0xae, 0x10], &mut r, &mut x).0, done(Kind::Ldmxcsr));
        assert_eq!(x.mxcsr, 0x9fc0);
        assert_eq!(r.rip, CODE + 3);
        // reserved bit: #GP(0), nothing changed
        m.write_obj(0x1_0000u32, GuestAddress(DATA_GPA)).unwrap();
        let (o, _) = run_in(&m, &[0x0f, 0xae, 0x10], &mut r, &mut x);
        assert_eq!(
            o,
            Ok(Outcome::Done { kind: Kind::Ldmxcsr, exception: Some(Exception { vector: 13, error_code: Some(0) }) })
        );
        assert_eq!(x.mxcsr, 0x9fc0);
        assert_eq!(r.rip, CODE);
    }

    #[test]
    fn cmpxchg16b_and_8b() {
        let m = mem();
        build_tables(&m);
        let mut x = FakeExtra::default();
        let mut r = Regs { rflags: 2, ..Default::default() };
        m.write_obj(0x1111u64, GuestAddress(DATA_GPA + 0x10)).unwrap();
        m.write_obj(0x2222u64, GuestAddress(DATA_GPA + 0x18)).unwrap();
        r.gpr[6] = DATA + 0x10;
        r.gpr[RAX] = 0x1111;
        r.gpr[RDX] = 0x2222;
        r.gpr[RBX] = 0x3333;
        r.gpr[RCX] = 0x4444;
        // lock cmpxchg16b [rsi]: success
        let code = [0xf0, 0x48, 0x0f, 0xc7, 0x0e];
        assert_eq!(run_in(&m, &code, &mut r, &mut x).0, done(Kind::Cmpxchg16b));
        assert_eq!(m.read_obj::<u64>(GuestAddress(DATA_GPA + 0x10)).unwrap(), 0x3333);
        assert_eq!(m.read_obj::<u64>(GuestAddress(DATA_GPA + 0x18)).unwrap(), 0x4444);
        assert_eq!(r.rflags & FL_ZF, FL_ZF);
        assert_eq!(r.rip, CODE + 5);
        // again: fails, loads the current value
        run_in(&m, &code, &mut r, &mut x).0.unwrap();
        assert_eq!(r.rflags & FL_ZF, 0);
        assert_eq!((r.gpr[RAX], r.gpr[RDX]), (0x3333, 0x4444));
        assert_eq!(r.gpr[RBX], 0x3333); // rbx survived the asm
                                        // unaligned: #GP(0)
        r.gpr[6] = DATA + 8;
        let (o, _) = run_in(&m, &code, &mut r, &mut x);
        assert_eq!(
            o,
            Ok(Outcome::Done {
                kind: Kind::Cmpxchg16b,
                exception: Some(Exception { vector: 13, error_code: Some(0) })
            })
        );
        // not present page: #PF with CR2
        r.gpr[6] = 0x7000;
        let (o, s) = run_in(&m, &code, &mut r, &mut x);
        assert_eq!(
            o,
            Ok(Outcome::Done {
                kind: Kind::FaultInjected,
                exception: Some(Exception { vector: 14, error_code: Some(2) })
            })
        );
        assert_eq!(s.cr2, 0x7000);
        // cmpxchg8b [rsi+3] (unaligned is fine)
        m.write_obj(0x0000_0002_0000_0001u64, GuestAddress(DATA_GPA + 0x23)).unwrap();
        r.gpr[6] = DATA + 0x20;
        r.gpr[RAX] = 1;
        r.gpr[RDX] = 2;
        r.gpr[RBX] = 5;
        r.gpr[RCX] = 6;
        assert_eq!(run_in(&m, &[0xf0, 0x0f, 0xc7, 0x4e, 0x03], &mut r, &mut x).0, done(Kind::Cmpxchg8b));
        assert_eq!(m.read_obj::<u64>(GuestAddress(DATA_GPA + 0x23)).unwrap(), 0x0000_0006_0000_0005);
        assert_eq!(r.rflags & FL_ZF, FL_ZF);
    }

    #[test]
    fn rdrand_and_sysret() {
        let mut x = FakeExtra { star: 0x0023_0010_0000_0000, ..Default::default() };
        let mut r = Regs { rflags: 2 | FL_ZF, ..Default::default() };
        // rdrand eax
        assert_eq!(run(&[0x0f, 0xc7, 0xf0], &mut r, &mut x).0, done(Kind::Rdrand));
        assert_eq!(r.rflags & FL_ARITH, FL_CF);
        assert_eq!(r.gpr[RAX] >> 32, 0);
        // sysretq
        r.gpr[RCX] = 0x40_1000;
        r.gpr[R11] = 0x246;
        let (o, s) = run(&[0x48, 0x0f, 0x07], &mut r, &mut x);
        assert_eq!(o, done(Kind::Sysret));
        assert_eq!(r.rip, 0x40_1000);
        assert_eq!(r.rflags, 0x246);
        assert_eq!((s.cs.selector, s.ss.selector, s.cs.dpl, s.cs.l), (0x33, 0x2b, 3, true));
    }

    #[test]
    fn code_changed_and_unknown() {
        let mut x = FakeExtra::default();
        let mut r = Regs { rflags: 2, ..Default::default() };
        let m = mem();
        build_tables(&m);
        m.write_slice(&[0x0f, 0x1f, 0x44, 0, 0], GuestAddress(CODE)).unwrap();
        r.rip = CODE;
        let mut cpu = CpuState { regs: r, sregs: long_mode_sregs(), sregs_dirty: false, extra: &mut x };
        assert_eq!(emulate(&mut cpu, &m, &[0xcc, 0x1f]), Ok(Outcome::Retry));
        assert_eq!(cpu.regs, r);
        // vmovdqu xmm0, [rax] (AVX, which the host does not run for the guest): no fix-up, described
        let e = run(&[0xc5, 0xfa, 0x6f, 0x00], &mut r, &mut x).0.unwrap_err();
        assert!(e.contains("vmovdqu xmm0,[rax]") && e.contains("c5 fa 6f 00") && e.contains("0x201000"), "{e}");
    }
}
