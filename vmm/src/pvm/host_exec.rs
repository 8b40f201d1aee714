//! x87, MMX and SSE instructions run on the host's CPU. The host emulator performs none of the
//! x87 arithmetic and no SSE at all: UEFI firmware built without SSE computes with x87 (OpenSSL
//! in OVMF's TlsDxe), boot loaders built with it move data through XMM registers
//! (systemd-boot). Emulating those instruction sets exactly is a library of its own; the host CPU
//! already is one. A stub loads the guest's FXSAVE image, runs the instruction re-encoded with its
//! memory operand at `[rsi]` and its general register (at most one) as RAX, and saves the image
//! back, around a save and restore of the host's own FPU state.
//!
//! What may run: instructions of those sets only, without control flow or stack use, touching no
//! registers but x87/MMX/XMM ones and that one general register; the stub is built here, so the
//! guest chooses no other host code. Exceptions stay the guest's: an x87 exception pending
//! (FSW.ES) makes a waiting instruction raise #MF without running; SSE runs with every MXCSR
//! exception masked, and one the guest left unmasked becomes #XM with nothing committed.

use std::sync::{Mutex, OnceLock};

use iced_x86::{
    CpuidFeature, Encoder, FlowControl, Instruction, InstructionInfoFactory, MemorySize, OpAccess, OpKind, Register,
    RflagsBits,
};

/// Bytes of the FXSAVE image, and where MXCSR and the status word sit in it.
pub const FXSAVE_LEN: usize = 512;
const MXCSR: usize = 24;
const FSW: usize = 2;
/// FSW bit 7: an unmasked x87 exception is pending.
const FSW_ES: u16 = 1 << 7;
/// MXCSR: exception flags (bits 0-5) and their masks (bits 7-12).
const MXCSR_FLAGS: u32 = 0x3f;
const MXCSR_MASKS: u32 = 0x3f << 7;
/// CF PF AF ZF SF OF.
const ARITH_FLAGS: u64 = 0x8d5;
/// Largest memory operand run here (FNSAVE/FRSTOR in the 32-bit layout).
const MAX_OPERAND: usize = 108;

#[repr(C, align(16))]
pub struct Fxsave(pub [u8; FXSAVE_LEN]);

#[repr(C, align(16))]
struct Operand([u8; 128]);

/// Where the guest's general register and memory operand go, and what the instruction changes.
#[derive(Debug)]
pub struct HostInsn {
    code: Vec<u8>,
    /// The general-register operand (as the guest names it) and whether it is written.
    pub gpr: Option<(Register, bool)>,
    /// The memory operand's size and whether it is read and written.
    pub mem: Option<(usize, bool, bool)>,
    /// RFLAGS bits (x86 positions) the instruction sets.
    pub flags: u64,
    /// x87 or MMX: waits for pending x87 exceptions unless a no-wait form.
    pub x87: bool,
}

/// The instruction sets run here: at least one of them, and besides them only X64 (their
/// 64-bit forms) and CMOV with the x87 (FCMOVcc, FCOMI). X64 alone is no set: iced names it for
/// 64-bit forms of system instructions too (`lgdt` with REX.W), which fault on the host.
fn allowed(features: &[CpuidFeature]) -> bool {
    use CpuidFeature::*;
    let set = |f: &CpuidFeature| matches!(f, FPU | FPU287 | FPU387 | MMX | SSE | SSE2 | SSE3 | SSSE3 | SSE4_1 | SSE4_2);
    let x87 = features.iter().any(|f| matches!(f, FPU | FPU287 | FPU387));
    features.iter().any(set) && features.iter().all(|f| set(f) || *f == X64 || (*f == CMOV && x87))
}

/// RFLAGS bits as iced numbers them -> as x86 does.
fn x86_flags(iced: u32) -> u64 {
    [(RflagsBits::CF, 1 << 0), (RflagsBits::PF, 1 << 2), (RflagsBits::AF, 1 << 4), (RflagsBits::ZF, 1 << 6)]
        .into_iter()
        .chain([(RflagsBits::SF, 1 << 7), (RflagsBits::OF, 1 << 11)])
        .filter(|(bit, _)| iced & bit != 0)
        .fold(0, |acc, (_, x86)| acc | x86)
}

fn reads(a: OpAccess) -> bool {
    matches!(a, OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite)
}

fn writes(a: OpAccess) -> bool {
    matches!(a, OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite)
}

/// The host form of `insn`, if it is one this module runs.
pub fn prepare(insn: &Instruction) -> Result<HostInsn, String> {
    let features = insn.cpuid_features();
    if !allowed(features) {
        return Err("not an x87, MMX or SSE instruction".into());
    }
    if insn.flow_control() != FlowControl::Next || insn.is_stack_instruction() {
        return Err("x87/SSE instruction with control flow or stack use".into());
    }
    let mut host = *insn;
    let mut gpr = None;
    let mut mem = None;
    for op in 0..insn.op_count() {
        match insn.op_kind(op) {
            OpKind::Register if insn.op_register(op).is_gpr() => {
                let r = insn.op_register(op);
                if gpr.is_some_and(|g| g != r) || matches!(r, Register::AH | Register::BH | Register::CH | Register::DH)
                {
                    return Err("more than one general register".into());
                }
                let rax = match r.size() {
                    1 => Register::AL,
                    2 => Register::AX,
                    4 => Register::EAX,
                    _ => Register::RAX,
                };
                host.set_op_register(op, rax);
                gpr = Some(r);
            }
            OpKind::Memory => {
                let size = insn.memory_size().size();
                if !(1..=MAX_OPERAND).contains(&size)
                    || matches!(insn.memory_size(), MemorySize::FpuEnv14 | MemorySize::FpuState94)
                {
                    // The 16-bit environment layouts, which the 64-bit host would not store.
                    return Err(format!("memory operand of {size} bytes"));
                }
                host.set_memory_base(Register::RSI);
                host.set_memory_index(Register::None);
                host.set_memory_index_scale(1);
                host.set_memory_displacement64(0);
                host.set_memory_displ_size(0);
                host.set_segment_prefix(Register::None);
                mem = Some(size);
            }
            _ => {}
        }
    }
    // Nothing else: no implicit general registers (a string-like MASKMOVDQU's RDI, CPUID's...).
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(insn);
    let addressing = [insn.memory_base(), insn.memory_index()];
    let mut gpr_written = false;
    for u in info.used_registers() {
        let r = u.register();
        if r.is_st() || r.is_mm() || r.is_xmm() || (r.is_segment_register() && mem.is_some()) {
            continue;
        }
        if gpr.is_some_and(|g| g.full_register() == r.full_register()) {
            gpr_written |= writes(u.access());
        } else if !addressing.contains(&r) || r == Register::None {
            return Err(format!("uses {r:?}"));
        }
    }
    let mem = match (mem, info.used_memory().first()) {
        (Some(size), Some(m)) => Some((size, reads(m.access()), writes(m.access()))),
        (Some(size), None) => Some((size, false, false)),
        (None, _) => None,
    };
    let mut encoder = Encoder::new(64);
    encoder.encode(&host, 0).map_err(|e| format!("re-encoding for the host: {e}"))?;
    let x87 = features.iter().any(|f| matches!(f, CpuidFeature::FPU | CpuidFeature::FPU287 | CpuidFeature::FPU387))
        || features.contains(&CpuidFeature::MMX);
    Ok(HostInsn {
        code: encoder.take_buffer(),
        gpr: gpr.map(|r| (r, gpr_written)),
        mem,
        flags: x86_flags(insn.rflags_modified()),
        x87,
    })
}

/// The executable page the stubs are written to, one at a time.
pub struct StubPage(*mut u8);
// SAFETY: the page is only written and run under the mutex around it.
unsafe impl Send for StubPage {}

/// Made at set-up (`Pvm::prepare_host_exec`), before the seccomp filters forbid executable
/// mappings; the only writable and executable page of the VMM.
pub fn stub_page() -> Result<&'static Mutex<StubPage>, String> {
    static PAGE: OnceLock<Result<Mutex<StubPage>, String>> = OnceLock::new();
    PAGE.get_or_init(|| {
        // SAFETY: a fresh anonymous mapping, never unmapped.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("host instruction page: {}", std::io::Error::last_os_error()));
        }
        Ok(Mutex::new(StubPage(p.cast())))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// What running an instruction left besides the FXSAVE image and the memory operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effects {
    /// Done: RAX (the general register's new value, if written) and RFLAGS after it.
    Done { rax: u64, rflags: u64 },
    /// An unmasked SIMD floating-point exception: nothing committed, #XM for the guest.
    SimdException,
}

/// True when the guest has an unmasked x87 exception pending: a waiting instruction raises #MF.
pub fn x87_exception_pending(image: &Fxsave) -> bool {
    u16::from_le_bytes([image.0[FSW], image.0[FSW + 1]]) & FSW_ES != 0
}

fn mxcsr(image: &Fxsave) -> u32 {
    u32::from_le_bytes(image.0[MXCSR..MXCSR + 4].try_into().unwrap())
}

fn set_mxcsr(image: &mut Fxsave, v: u32) {
    image.0[MXCSR..MXCSR + 4].copy_from_slice(&v.to_le_bytes());
}

/// Runs `h` on `image` with `operand` as its memory operand (its bytes in and out), `rax` as its
/// general register and the arithmetic flags of `rflags` (FCMOVcc reads them).
pub fn run(h: &HostInsn, image: &mut Fxsave, operand: &mut [u8], rax: u64, rflags: u64) -> Result<Effects, String> {
    if operand.len() > MAX_OPERAND || h.code.len() > 15 {
        return Err("host instruction too large".into());
    }
    let guest_mxcsr = mxcsr(image);
    let mut work = Fxsave(image.0);
    set_mxcsr(&mut work, (guest_mxcsr & !MXCSR_FLAGS) | MXCSR_MASKS);
    let mut buf = Operand([0; 128]);
    buf.0[..operand.len()].copy_from_slice(operand);
    let mut host = Fxsave([0; FXSAVE_LEN]);
    let mut code = Vec::with_capacity(42);
    code.extend_from_slice(&[0x48, 0x0f, 0xae, 0x02]); // fxsave64 [rdx]: the host's state
    code.extend_from_slice(&[0x48, 0x0f, 0xae, 0x0f]); // fxrstor64 [rdi]: the guest's
    code.extend_from_slice(&[0x51, 0x9d]); // push rcx; popfq: the guest's arithmetic flags
    code.extend_from_slice(&h.code);
    code.extend_from_slice(&[0x9c, 0x59]); // pushfq; pop rcx
    code.extend_from_slice(&[0x48, 0x0f, 0xae, 0x07]); // fxsave64 [rdi]
    code.extend_from_slice(&[0x48, 0x0f, 0xae, 0x0a]); // fxrstor64 [rdx]
    code.push(0xc3); // ret
    let page = stub_page()?.lock().unwrap();
    // Reserved bit 1 and IF as the host has them; DF clear, as the host's code expects.
    let flags_in = 0x202 | (rflags & ARITH_FLAGS);
    let (rax_out, rflags): (u64, u64);
    // SAFETY: the page is ours, RWX, 4 KiB; the stub is the code above, which touches only the
    // three 16-byte aligned buffers in rdi/rsi/rdx, rcx and rax (prepare() allows no other
    // register and no stack, control flow or system instruction), and leaves the host's FPU
    // state as it found it. Every SIMD exception is masked while it runs.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), page.0, code.len());
        std::arch::asm!(
            "call {stub}",
            stub = in(reg) page.0,
            in("rdi") work.0.as_mut_ptr(),
            in("rsi") buf.0.as_mut_ptr(),
            in("rdx") host.0.as_mut_ptr(),
            inout("rax") rax => rax_out,
            inout("rcx") flags_in => rflags,
        );
    }
    drop(page);
    let raised = mxcsr(&work) & MXCSR_FLAGS;
    let unmasked = !(guest_mxcsr >> 7) & MXCSR_FLAGS;
    if raised & unmasked != 0 {
        return Ok(Effects::SimdException);
    }
    set_mxcsr(&mut work, guest_mxcsr | raised);
    image.0 = work.0;
    operand.copy_from_slice(&buf.0[..operand.len()]);
    Ok(Effects::Done { rax: rax_out, rflags })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    /// An FXSAVE image in the init state: FCW 0x37f, empty x87 stack, MXCSR 0x1f80.
    pub fn init_image() -> Fxsave {
        let mut f = Fxsave([0; FXSAVE_LEN]);
        f.0[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        set_mxcsr(&mut f, 0x1f80);
        f
    }

    fn host(bytes: &[u8]) -> Result<HostInsn, String> {
        prepare(&Decoder::new(64, bytes, DecoderOptions::NONE).decode())
    }

    fn go(bytes: &[u8], img: &mut Fxsave, op: &mut [u8], rax: u64) -> Effects {
        run(&host(bytes).unwrap(), img, op, rax, 0).unwrap()
    }

    fn xmm(img: &Fxsave, n: usize) -> u128 {
        u128::from_le_bytes(img.0[160 + 16 * n..176 + 16 * n].try_into().unwrap())
    }

    #[test]
    fn x87_integer_arithmetic() {
        let mut img = init_image();
        go(&[0xdb, 0x44, 0x24, 0x1c], &mut img, &mut 7i32.to_le_bytes(), 0); // fild dword [rsp+1ch]
        go(&[0xda, 0x0c, 0x24], &mut img, &mut 6i32.to_le_bytes(), 0); // fimul dword [rsp]
        let mut out = [0u8; 8];
        go(&[0xdf, 0x7d, 0x08], &mut img, &mut out, 0); // fistp qword [rbp+8]
        assert_eq!(i64::from_le_bytes(out), 42);
        assert_eq!(img.0[4], 0, "abridged tag word: the stack is empty again");
    }

    #[test]
    fn status_word_compare_flags_and_pending_exceptions() {
        let mut img = init_image();
        go(&[0xdd, 0x06], &mut img, &mut 1.0f64.to_le_bytes(), 0); // fld qword [rsi]
        go(&[0xd9, 0xee], &mut img, &mut [], 0); // fldz
        let fcomip = host(&[0xdf, 0xf1]).unwrap();
        assert_eq!(fcomip.flags, 0x8d5, "ZF PF CF set, OF SF AF cleared");
        let Effects::Done { rflags, .. } = run(&fcomip, &mut img, &mut [], 0, 0).unwrap() else { panic!() };
        assert_eq!(rflags & 0x45, 1, "0 < 1: CF");
        let fnstsw = host(&[0xdf, 0xe0]).unwrap();
        assert_eq!(fnstsw.gpr, Some((Register::AX, true)));
        let Effects::Done { rax, .. } = run(&fnstsw, &mut img, &mut [], 0xabcd, 0).unwrap() else { panic!() };
        assert_eq!(rax & 0x3800, 7 << 11, "TOP = 7: one value on the stack");
        assert!(!x87_exception_pending(&img));
        // 1/0 with ZE unmasked: pending for the guest, never raised on the host.
        img.0[0..2].copy_from_slice(&(0x37fu16 & !4).to_le_bytes());
        go(&[0xd9, 0xee], &mut img, &mut [], 0);
        go(&[0xde, 0xf9], &mut img, &mut [], 0); // fdivp st(1), st
        assert!(x87_exception_pending(&img));
    }

    #[test]
    fn sse_moves_and_arithmetic() {
        let mut img = init_image();
        // movq xmm0, rax (systemd-boot); movdqu [rdi+8], xmm0 keeps the operand's 16 bytes.
        let movq = host(&[0x66, 0x48, 0x0f, 0x6e, 0xc0]).unwrap();
        assert_eq!(movq.gpr, Some((Register::RAX, false)));
        run(&movq, &mut img, &mut [], 0x1122_3344_5566_7788, 0).unwrap();
        assert_eq!(xmm(&img, 0), 0x1122_3344_5566_7788);
        let mut out = [0u8; 16];
        let store = host(&[0xf3, 0x0f, 0x7f, 0x47, 0x08]).unwrap();
        assert_eq!(store.mem, Some((16, false, true)));
        run(&store, &mut img, &mut out, 0, 0).unwrap();
        assert_eq!(u128::from_le_bytes(out), 0x1122_3344_5566_7788);
        // movd r9d, xmm0: the general register is renamed to EAX for the host.
        let movd = host(&[0x66, 0x41, 0x0f, 0x7e, 0xc1]).unwrap();
        assert_eq!(movd.gpr, Some((Register::R9D, true)));
        let e = run(&movd, &mut img, &mut [], u64::MAX, 0).unwrap();
        assert!(matches!(e, Effects::Done { rax: 0x5566_7788, .. }), "{e:?}");
        // 1.0 / 0.0 (divss xmm0, xmm1): masked, the flag is the guest's; unmasked, #XM and
        // nothing changes.
        let mut img = init_image();
        go(&[0x66, 0x0f, 0x6e, 0xc0], &mut img, &mut [], 0x3f80_0000); // movd xmm0, eax
        let divss = host(&[0xf3, 0x0f, 0x5e, 0xc1]).unwrap();
        run(&divss, &mut img, &mut [], 0, 0).unwrap();
        assert_eq!(mxcsr(&img), 0x1f80 | 4, "ZE flag");
        assert_eq!(xmm(&img, 0) as u32, f32::INFINITY.to_bits());
        go(&[0x66, 0x0f, 0x6e, 0xc0], &mut img, &mut [], 0x3f80_0000);
        set_mxcsr(&mut img, 0x1f80 & !(4 << 7));
        let before = img.0;
        assert_eq!(run(&divss, &mut img, &mut [], 0, 0).unwrap(), Effects::SimdException);
        assert_eq!(img.0, before);
        // fcmovb st, st(1) reads the guest's CF.
        let mut img = init_image();
        go(&[0xdd, 0x06], &mut img, &mut 2.0f64.to_le_bytes(), 0);
        go(&[0xd9, 0xe8], &mut img, &mut [], 0); // fld1: st0 = 1, st1 = 2
        let fcmovb = host(&[0xda, 0xc1]).unwrap();
        let mut out = [0u8; 8];
        run(&fcmovb, &mut img, &mut [], 0, 1).unwrap(); // CF set: st0 = st1
        go(&[0xdd, 0x1e], &mut img, &mut out, 0); // fstp qword [rsi]
        assert_eq!(f64::from_le_bytes(out), 2.0);
    }

    #[test]
    fn only_data_instructions() {
        for (bytes, why) in [
            (&[0x0f, 0x05][..], "syscall"),
            (&[0x66, 0x0f, 0xf7, 0xc1][..], "maskmovdqu writes through rdi"),
            (&[0x0f, 0xae, 0x00][..], "fxsave"),
            (&[0x48, 0x01, 0xd8][..], "add rax, rbx"),
            // iced lists only X64 for these 64-bit system forms (a fuzz input ran lgdt here).
            (&[0x48, 0x0f, 0x01, 0x55, 0x05][..], "lgdt [rbp+5] with REX.W"),
            (&[0x48, 0x0f, 0x01, 0x5d, 0x05][..], "lidt [rbp+5] with REX.W"),
            (&[0x48, 0x0f, 0x00, 0x55, 0x05][..], "lldt [rbp+5] with REX.W"),
            (&[0x66, 0x0f, 0xc5, 0xc1, 0x01][..], "pextrw eax, xmm1: fine"),
        ] {
            let r = host(bytes);
            assert_eq!(r.is_ok(), why.ends_with("fine"), "{why}: {r:?}");
        }
    }
}
