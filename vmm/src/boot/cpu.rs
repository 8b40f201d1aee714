//! The boot vCPU's initial state: 64-bit mode with identity-mapped 4 GiB, as the Linux 64-bit
//! boot protocol expects.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::hypervisor::{DescriptorTable, Regs, Segment, SpecialRegs, Vcpu, RBP, RSI, RSP};
use crate::layout::{BOOT_GDT, BOOT_IDT, BOOT_STACK, PD, PDPT, PML4, ZERO_PAGE};

const GDT: [u64; 4] = [
    0,                     // null
    0x00af_9b00_0000_ffff, // 0x08: 64-bit code
    0x00cf_9300_0000_ffff, // 0x10: data
    0x008f_8b00_0000_ffff, // 0x18: TSS
];
const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Writes the boot GDT, IDT and page tables into guest memory.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), String> {
    let w = |addr: u64, v: u64| mem.write_obj(v, GuestAddress(addr)).map_err(|e| format!("boot tables: {e}"));
    for (i, d) in GDT.iter().enumerate() {
        w(BOOT_GDT + 8 * i as u64, *d)?;
    }
    w(BOOT_IDT, 0)?;
    w(PML4, PDPT | 3)?;
    for i in 0..4u64 {
        w(PDPT + 8 * i, (PD + i * 0x1000) | 3)?;
    }
    for i in 0..4 * 512u64 {
        w(PD + 8 * i, (i << 21) | 0x83)?; // present, writable, 2 MiB page
    }
    Ok(())
}

fn segment(selector: u16, type_: u8, l: bool) -> Segment {
    Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: true,
        dpl: 0,
        db: !l,
        s: true,
        l,
        g: true,
        avl: false,
        unusable: false,
    }
}

/// Puts the boot vCPU at the kernel's 64-bit entry with RSI pointing at the zero page.
pub fn setup_boot_vcpu(vcpu: &dyn Vcpu, entry: u64) -> Result<(), String> {
    let e = |e: crate::hypervisor::Error| e.to_string();
    let mut s = vcpu.sregs().map_err(e)?;
    let code = segment(0x08, 0xb, true);
    let data = segment(0x10, 0x3, false);
    let tss = Segment { s: false, db: false, ..segment(0x18, 0xb, false) };
    s = SpecialRegs {
        cs: code,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: tss,
        gdt: DescriptorTable { base: BOOT_GDT, limit: (GDT.len() * 8 - 1) as u16 },
        idt: DescriptorTable { base: BOOT_IDT, limit: 7 },
        cr0: CR0_PE | CR0_ET | CR0_PG,
        cr3: PML4,
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA,
        ..s
    };
    vcpu.set_sregs(&s).map_err(e)?;
    vcpu.init_fpu().map_err(e)?;
    let mut r = Regs { rip: entry, rflags: 2, ..Default::default() };
    r.gpr[RSP] = BOOT_STACK;
    r.gpr[RBP] = BOOT_STACK;
    r.gpr[RSI] = ZERO_PAGE;
    vcpu.set_regs(&r).map_err(e)
}
