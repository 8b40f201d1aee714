//! Guest virtual memory as the vCPU sees it: a walk of the guest's page tables (from CR3) that
//! turns a linear address into a guest physical one, with the permission checks an access of the
//! emulated instruction would get, and byte access through it.
//!
//! Supported: paging off (identity), 4-level and 5-level (CR4.LA57) long-mode paging with 4 KiB,
//! 2 MiB and 1 GiB pages. Legacy 32-bit and PAE-without-long-mode paging are reported as
//! unsupported (the VMM boots Linux straight into long mode).

use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::hypervisor::SpecialRegs;

const PTE_P: u64 = 1 << 0;
const PTE_W: u64 = 1 << 1;
const PTE_U: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_NX: u64 = 1 << 63;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

const CR0_PG: u64 = 1 << 31;
const CR0_WP: u64 = 1 << 16;
const CR4_PAE: u64 = 1 << 5;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;

/// #PF error-code bits.
pub const PF_PRESENT: u32 = 1 << 0;
pub const PF_WRITE: u32 = 1 << 1;
pub const PF_USER: u32 = 1 << 2;
pub const PF_FETCH: u32 = 1 << 4;

/// Why an access through the guest page tables failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemFault {
    /// The access would page-fault in the guest: CR2 and the error code to inject.
    PageFault { addr: u64, code: u32 },
    /// Non-canonical linear address: #GP(0) (#SS for stack accesses, which we never make).
    NonCanonical(u64),
    /// A page-table entry or the final address is not guest RAM (MMIO, hole, beyond RAM).
    NotRam { va: u64, gpa: u64 },
    /// A paging mode we do not walk, or an access we cannot do atomically.
    Unsupported(String),
}

impl std::fmt::Display for MemFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemFault::PageFault { addr, code } => {
                write!(f, "page fault at {addr:#x} (error code {code:#x})")
            }
            MemFault::NonCanonical(a) => write!(f, "non-canonical address {a:#x}"),
            MemFault::NotRam { va, gpa } => {
                write!(f, "{va:#x} -> guest physical {gpa:#x} is not RAM")
            }
            MemFault::Unsupported(s) => f.write_str(s),
        }
    }
}

/// The result of a page walk for one linear address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub gpa: u64,
    /// Bytes from the address to the end of the page that maps it.
    pub page_left: u64,
    /// Every level allows writes / user access; the leaf (or any level) forbids execution.
    pub writable: bool,
    pub user: bool,
    pub nx: bool,
    /// Guest physical address of the leaf entry (None with paging off).
    pub leaf_entry: Option<u64>,
}

/// What an access is, for the permission checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    Fetch,
    /// The VMM's own look (code bytes, IDT, exception frame): no permission checks.
    Inspect,
}

fn canonical(va: u64, bits: u32) -> bool {
    let shift = 64 - bits;
    (((va << shift) as i64) >> shift) as u64 == va
}

fn read_entry(mem: &GuestMemoryMmap, gpa: u64, va: u64) -> Result<u64, MemFault> {
    mem.load::<u64>(GuestAddress(gpa), Ordering::Relaxed).map_err(|_| MemFault::NotRam { va, gpa })
}

/// Walks the guest page tables for `va` (a linear address: segment base already added). Faults
/// are only "not present" ones here; permissions are checked by [`check_access`].
pub fn translate(mem: &GuestMemoryMmap, sregs: &SpecialRegs, va: u64) -> Result<Translation, MemFault> {
    if sregs.cr0 & CR0_PG == 0 {
        let gpa = if sregs.efer & EFER_LMA != 0 { va } else { va & 0xffff_ffff };
        return Ok(Translation {
            gpa,
            page_left: 0x1000 - (gpa & 0xfff),
            writable: true,
            user: true,
            nx: false,
            leaf_entry: None,
        });
    }
    if sregs.efer & EFER_LMA == 0 || sregs.cr4 & CR4_PAE == 0 {
        return Err(MemFault::Unsupported("legacy/PAE 32-bit paging is not walked".into()));
    }
    let levels: u32 = if sregs.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
    if !canonical(va, 12 + 9 * levels) {
        return Err(MemFault::NonCanonical(va));
    }
    let nxe = sregs.efer & EFER_NXE != 0;
    let mut table = sregs.cr3 & PTE_ADDR;
    let (mut writable, mut user, mut nx) = (true, true, false);
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let idx = (va >> shift) & 511;
        let entry_gpa = table + 8 * idx;
        let e = read_entry(mem, entry_gpa, va)?;
        if e & PTE_P == 0 {
            return Err(MemFault::PageFault { addr: va, code: 0 });
        }
        writable &= e & PTE_W != 0;
        user &= e & PTE_U != 0;
        nx |= nxe && e & PTE_NX != 0;
        let leaf = level == 1 || ((level == 2 || level == 3) && e & PTE_PS != 0);
        if leaf {
            let size = 1u64 << shift;
            // Large pages: bit 12 of the entry is PAT, not address.
            let base = e & PTE_ADDR & !(size - 1);
            let off = va & (size - 1);
            return Ok(Translation {
                gpa: base + off,
                page_left: size - off,
                writable,
                user,
                nx,
                leaf_entry: Some(entry_gpa),
            });
        }
        table = e & PTE_ADDR;
    }
    unreachable!("the loop returns at level 1")
}

/// The #PF error code of a `kind` access through `t`, or Ok when the access is allowed.
/// `cpl` is the vCPU's privilege level; `rflags` gives AC for SMAP.
pub fn check_access(
    t: &Translation,
    sregs: &SpecialRegs,
    cpl: u8,
    rflags: u64,
    kind: AccessKind,
    va: u64,
) -> Result<(), MemFault> {
    if kind == AccessKind::Inspect || sregs.cr0 & CR0_PG == 0 {
        return Ok(());
    }
    let user_mode = cpl == 3;
    let fault = match kind {
        AccessKind::Inspect => false,
        AccessKind::Read => (user_mode && !t.user) || smap_blocks(t, sregs, cpl, rflags),
        AccessKind::Write => {
            (user_mode && !t.user)
                || (!t.writable && (user_mode || sregs.cr0 & CR0_WP != 0))
                || smap_blocks(t, sregs, cpl, rflags)
        }
        AccessKind::Fetch => t.nx || (user_mode && !t.user) || (!user_mode && t.user && sregs.cr4 & CR4_SMEP != 0),
    };
    if !fault {
        return Ok(());
    }
    Err(MemFault::PageFault { addr: va, code: PF_PRESENT | error_bits(kind, cpl, sregs) })
}

fn smap_blocks(t: &Translation, sregs: &SpecialRegs, cpl: u8, rflags: u64) -> bool {
    cpl < 3 && t.user && sregs.cr4 & CR4_SMAP != 0 && rflags & RFLAGS_AC == 0
}

fn error_bits(kind: AccessKind, cpl: u8, sregs: &SpecialRegs) -> u32 {
    let mut code = 0;
    if kind == AccessKind::Write {
        code |= PF_WRITE;
    }
    if cpl == 3 {
        code |= PF_USER;
    }
    if kind == AccessKind::Fetch && sregs.efer & EFER_NXE != 0 {
        code |= PF_FETCH;
    }
    code
}

/// Host pointer to `len` bytes of guest RAM at `gpa`, if they lie in one region.
pub fn host_ptr(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Option<*mut u8> {
    let region = mem.find_region(GuestAddress(gpa))?;
    let end = gpa.checked_add(len.checked_sub(1)?)?;
    if end > region.last_addr().0 {
        return None;
    }
    mem.get_host_address(GuestAddress(gpa)).ok()
}

/// The guest's linear address space as one vCPU state sees it.
pub struct GuestView<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub sregs: &'a SpecialRegs,
    pub cpl: u8,
    pub rflags: u64,
}

impl<'a> GuestView<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, sregs: &'a SpecialRegs, rflags: u64) -> Self {
        GuestView { mem, sregs, cpl: cpl(sregs), rflags }
    }

    /// Translates and checks one address; the fault carries the vCPU's error-code bits.
    pub fn translate(&self, va: u64, kind: AccessKind) -> Result<Translation, MemFault> {
        let t = translate(self.mem, self.sregs, va).map_err(|f| match f {
            MemFault::PageFault { addr, .. } => {
                MemFault::PageFault { addr, code: error_bits(kind, self.cpl, self.sregs) }
            }
            other => other,
        })?;
        check_access(&t, self.sregs, self.cpl, self.rflags, kind, va)?;
        Ok(t)
    }

    /// Splits `[va, va+len)` into (gpa, offset, len) pieces, one per page, all checked first.
    fn pieces(&self, va: u64, len: usize, kind: AccessKind) -> Result<Vec<(u64, usize, usize)>, MemFault> {
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let a = va.wrapping_add(done as u64);
            let t = self.translate(a, kind)?;
            let n = (len - done).min(t.page_left.min(usize::MAX as u64) as usize);
            out.push((t.gpa, done, n));
            if kind == AccessKind::Write {
                self.mark_dirty(&t);
            }
            done += n;
        }
        Ok(out)
    }

    /// Sets Accessed+Dirty in the leaf entry, as the CPU does on a write.
    fn mark_dirty(&self, t: &Translation) {
        let Some(entry) = t.leaf_entry else { return };
        if entry & 7 != 0 {
            return;
        }
        if let Some(p) = host_ptr(self.mem, entry, 8) {
            // SAFETY: `p` points to 8 aligned bytes of mapped guest RAM (checked above); the guest
            // may update the entry concurrently, hence the atomic OR.
            let a = unsafe { AtomicU64::from_ptr(p.cast::<u64>()) };
            if a.load(Ordering::Relaxed) & (PTE_A | PTE_D) != PTE_A | PTE_D {
                a.fetch_or(PTE_A | PTE_D, Ordering::SeqCst);
            }
        }
    }

    pub fn read(&self, va: u64, buf: &mut [u8], kind: AccessKind) -> Result<(), MemFault> {
        for (gpa, off, n) in self.pieces(va, buf.len(), kind)? {
            self.mem
                .read_slice(&mut buf[off..off + n], GuestAddress(gpa))
                .map_err(|_| MemFault::NotRam { va: va.wrapping_add(off as u64), gpa })?;
        }
        Ok(())
    }

    pub fn write(&self, va: u64, data: &[u8]) -> Result<(), MemFault> {
        for (gpa, off, n) in self.pieces(va, data.len(), AccessKind::Write)? {
            self.mem
                .write_slice(&data[off..off + n], GuestAddress(gpa))
                .map_err(|_| MemFault::NotRam { va: va.wrapping_add(off as u64), gpa })?;
        }
        Ok(())
    }

    pub fn read_u64(&self, va: u64, kind: AccessKind) -> Result<u64, MemFault> {
        let mut b = [0u8; 8];
        self.read(va, &mut b, kind)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Up to `max` bytes of code at linear `va`: stops at the first page it cannot read.
    pub fn read_code(&self, va: u64, max: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(max);
        while out.len() < max {
            let a = va.wrapping_add(out.len() as u64);
            let Ok(t) = self.translate(a, AccessKind::Inspect) else {
                break;
            };
            let n = (max - out.len()).min(t.page_left as usize);
            let mut chunk = vec![0u8; n];
            if self.mem.read_slice(&mut chunk, GuestAddress(t.gpa)).is_err() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        out
    }

    /// Host pointer for an atomic `len`-byte access at `va` (which must not cross a page), after
    /// the permission checks of a write.
    pub fn host_ptr_for_write(&self, va: u64, len: u64) -> Result<*mut u8, MemFault> {
        let t = self.translate(va, AccessKind::Write)?;
        if t.page_left < len {
            return Err(MemFault::Unsupported(format!("atomic {len}-byte access at {va:#x} crosses a page")));
        }
        let p = host_ptr(self.mem, t.gpa, len).ok_or(MemFault::NotRam { va, gpa: t.gpa })?;
        self.mark_dirty(&t);
        Ok(p)
    }
}

/// Current privilege level: CS.RPL is authoritative in protected mode (SS.DPL would do too).
pub fn cpl(sregs: &SpecialRegs) -> u8 {
    if sregs.cr0 & 1 == 0 {
        0
    } else {
        sregs.cs.dpl.min(3).max((sregs.cs.selector & 3) as u8)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hypervisor::Segment;

    pub const PML4: u64 = 0x1000;
    pub const PDPT: u64 = 0x2000;
    pub const PD: u64 = 0x3000;
    pub const PT: u64 = 0x4000;

    pub fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    pub fn long_mode_sregs() -> SpecialRegs {
        SpecialRegs {
            cs: Segment { selector: 0x10, l: true, dpl: 0, present: true, s: true, type_: 0xb, ..Default::default() },
            cr0: 0x8005_0033,
            cr3: PML4,
            cr4: CR4_PAE,
            efer: 0xd01, // SCE LME LMA NXE
            ..Default::default()
        }
    }

    fn put(m: &GuestMemoryMmap, gpa: u64, v: u64) {
        m.write_obj(v, GuestAddress(gpa)).unwrap();
    }

    /// Tables: va 0 .. 2M: 4K pages (PT) at 0x0040_0000 + i*4K... see body.
    ///  - 0x0000_0000_0020_0000 (PD[1]) -> 2M page at gpa 0x20_0000 (kernel, RW)
    ///  - 0x0000_0000_0000_5000 (PT[5]) -> gpa 0x10_0000, RW, user
    ///  - 0x0000_0000_0000_6000 (PT[6]) -> gpa 0x10_1000, read-only, user
    ///  - 0x0000_0000_0000_7000 (PT[7]) not present
    ///  - 0x0000_0000_4000_0000 (PDPT[1]) -> 1G page at gpa 0 (PS)
    ///  - 0xffff_8000_0000_0000 + 0x5000 (PML4[256] -> same PDPT): same as va 0x5000
    pub fn build_tables(m: &GuestMemoryMmap) {
        put(m, PML4, PDPT | 7);
        put(m, PML4 + 256 * 8, PDPT | 7);
        put(m, PDPT, PD | 7);
        put(m, PDPT + 8, PTE_PS | 3); // 1 GiB at gpa 0, supervisor
        put(m, PD, PT | 7);
        put(m, PD + 8, 0x20_0000 | PTE_PS | 3);
        put(m, PT + 5 * 8, 0x10_0000 | 7);
        put(m, PT + 6 * 8, 0x10_1000 | 5);
        put(m, PT + 7 * 8, 0x10_2000 | 6); // not present
    }

    #[test]
    fn walk_4k_2m_1g() {
        let m = mem();
        build_tables(&m);
        let s = long_mode_sregs();
        let t = translate(&m, &s, 0x5123).unwrap();
        assert_eq!(t.gpa, 0x10_0123);
        assert_eq!(t.page_left, 0x1000 - 0x123);
        assert!(t.user && t.writable);
        assert_eq!(t.leaf_entry, Some(PT + 5 * 8));
        let t = translate(&m, &s, 0x3f_fff0).unwrap();
        assert_eq!(t.gpa, 0x3f_fff0);
        assert_eq!(t.page_left, 0x10);
        assert!(!t.user);
        let t = translate(&m, &s, 0x4012_3456).unwrap();
        assert_eq!(t.gpa, 0x12_3456);
        assert_eq!(t.page_left, (1 << 30) - 0x12_3456);
        let t = translate(&m, &s, 0xffff_8000_0000_5010).unwrap();
        assert_eq!(t.gpa, 0x10_0010);
        assert_eq!(translate(&m, &s, 0x7000), Err(MemFault::PageFault { addr: 0x7000, code: 0 }));
        assert_eq!(translate(&m, &s, 0x8000_0000), Err(MemFault::PageFault { addr: 0x8000_0000, code: 0 }));
        assert_eq!(translate(&m, &s, 0x8000_0000_0000), Err(MemFault::NonCanonical(0x8000_0000_0000)));
        // Paging off: identity.
        let mut real = s;
        real.cr0 = 0x11;
        assert_eq!(translate(&m, &real, 0x1234).unwrap().gpa, 0x1234);
    }

    #[test]
    fn table_outside_ram() {
        let m = mem();
        build_tables(&m);
        put(&m, PT + 8 * 8, 0x1_0000_0000 | 3);
        put(&m, PD + 2 * 8, 0x7000_0000 | 3); // page table beyond RAM
        let s = long_mode_sregs();
        assert!(matches!(translate(&m, &s, 0x40_0000), Err(MemFault::NotRam { .. })));
        let v = GuestView::new(&m, &s, 2);
        let mut b = [0u8; 4];
        assert!(matches!(v.read(0x8000, &mut b, AccessKind::Read), Err(MemFault::NotRam { .. })));
    }

    #[test]
    fn permissions_and_view() {
        let m = mem();
        build_tables(&m);
        let s = long_mode_sregs();
        let v = GuestView::new(&m, &s, 2);
        // Cross-page read: 0x5ffe..0x6002 -> 0x10_0ffe.. and 0x10_1000..
        m.write_slice(&[1, 2], GuestAddress(0x10_0ffe)).unwrap();
        m.write_slice(&[3, 4], GuestAddress(0x10_1000)).unwrap();
        let mut b = [0u8; 4];
        v.read(0x5ffe, &mut b, AccessKind::Read).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        // Kernel write to a read-only page with CR0.WP: #PF present|write.
        assert_eq!(v.write(0x6000, &[9]), Err(MemFault::PageFault { addr: 0x6000, code: PF_PRESENT | PF_WRITE }));
        // Not present, write from user mode.
        let mut us = long_mode_sregs();
        us.cs.selector = 0x33;
        us.cs.dpl = 3;
        let u = GuestView::new(&m, &us, 2);
        assert_eq!(u.write(0x7000, &[9]), Err(MemFault::PageFault { addr: 0x7000, code: PF_WRITE | PF_USER }));
        // User read of a supervisor 2M page.
        assert_eq!(
            u.read(0x20_0000, &mut b, AccessKind::Read),
            Err(MemFault::PageFault { addr: 0x20_0000, code: PF_PRESENT | PF_USER })
        );
        // A write sets A and D in the leaf entry.
        v.write(0x5000, &[7]).unwrap();
        assert_eq!(m.read_obj::<u64>(GuestAddress(PT + 5 * 8)).unwrap() & (PTE_A | PTE_D), PTE_A | PTE_D);
        // SMAP: supervisor read of a user page with AC clear faults, with AC set passes.
        let mut k = long_mode_sregs();
        k.cr4 |= CR4_SMAP;
        let kv = GuestView::new(&m, &k, 2);
        assert!(kv.read(0x5000, &mut b, AccessKind::Read).is_err());
        let kv = GuestView::new(&m, &k, 2 | RFLAGS_AC);
        assert!(kv.read(0x5000, &mut b, AccessKind::Read).is_ok());
        // Code read stops at an unmapped page.
        assert_eq!(v.read_code(0x6ffc, 15).len(), 4);
    }
}
