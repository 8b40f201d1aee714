//! CPUID edits for PVM: on this host only the bits that `KVM_GET_SUPPORTED_CPUID` lists follow
//! `KVM_SET_CPUID2`; of the features the host emulator cannot run, that is `cx16`
//! (`cmpxchg16b`). Everything else (xsave, popcnt, smap, avx, ...) reaches the guest from the host
//! CPU regardless and is hidden through the kernel command line instead (see `cmdline.rs`).
//! Leaving those bits alone in KVM's copy also keeps KVM's own view (e.g. XCR0 checks) coherent.

use crate::hypervisor::CpuidEntry;

/// (leaf, subleaf or None for every subleaf, register 'a'..'d', bit)
const CLEAR: &[(u32, Option<u32>, char, u32)] = &[
    (1, None, 'c', 13), // cx16: `lock cmpxchg16b` makes the host emulator give up
];

pub fn adjust(entries: &mut [CpuidEntry]) {
    for e in entries.iter_mut() {
        for &(leaf, sub, reg, bit) in CLEAR {
            if e.function != leaf || sub.is_some_and(|s| s != e.index) {
                continue;
            }
            let r = match reg {
                'a' => &mut e.eax,
                'b' => &mut e.ebx,
                'c' => &mut e.ecx,
                _ => &mut e.edx,
            };
            *r &= !(1u32 << bit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clears_cx16_only() {
        let mut e = [
            CpuidEntry { function: 1, ecx: 0xffff_ffff, edx: 0xffff_ffff, ..Default::default() },
            CpuidEntry { function: 7, ebx: 0xffff_ffff, ecx: 0xffff_ffff, ..Default::default() },
        ];
        adjust(&mut e);
        assert_eq!(e[0].ecx, !(1 << 13));
        assert_eq!(e[0].edx, 0xffff_ffff);
        assert_eq!(e[1].ebx, 0xffff_ffff);
        assert_eq!(e[1].ecx, 0xffff_ffff);
    }
}
