//! CPUID edits for PVM: on this host only the bits that `KVM_GET_SUPPORTED_CPUID` lists follow
//! `KVM_SET_CPUID2`; of the features the host emulator cannot run, that is `cx16`
//! (`cmpxchg16b`). Everything else (xsave, popcnt, smap, avx, ...) reaches the guest from the host
//! CPU regardless and is hidden through the kernel command line instead (see `cmdline.rs`).
//! Leaving those bits alone in KVM's copy also keeps KVM's own view (e.g. XCR0 checks) coherent.
//! KVM's paravirtual features that are driven by `vmcall` are hidden too: on this host a guest
//! `vmcall` never completes (the vCPU re-executes it forever), so the kernel must not use it.

use crate::hypervisor::CpuidEntry;

/// (leaf, subleaf or None for every subleaf, register 'a'..'d', bit)
const CLEAR: &[(u32, Option<u32>, char, u32)] = &[
    (1, None, 'c', 13), // cx16: `lock cmpxchg16b` makes the host emulator give up
    // kvmclock: without it the kernel has no pvclock page, so ptp_kvm never issues
    // KVM_HC_CLOCK_PAIRING; time comes from the TSC and the CMOS RTC instead.
    (KVM_FEATURES, None, 'a', 0),  // CLOCKSOURCE
    (KVM_FEATURES, None, 'a', 3),  // CLOCKSOURCE2
    (KVM_FEATURES, None, 'a', 7),  // PV_UNHALT: KVM_HC_KICK_CPU
    (KVM_FEATURES, None, 'a', 11), // PV_SEND_IPI: KVM_HC_SEND_IPI
    (KVM_FEATURES, None, 'a', 13), // PV_SCHED_YIELD: KVM_HC_SCHED_YIELD
];
const KVM_FEATURES: u32 = 0x4000_0001;

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
    fn clears_cx16_and_vmcall_features_only() {
        let mut e = [
            CpuidEntry { function: 1, ecx: 0xffff_ffff, edx: 0xffff_ffff, ..Default::default() },
            CpuidEntry { function: 7, ebx: 0xffff_ffff, ecx: 0xffff_ffff, ..Default::default() },
            CpuidEntry { function: KVM_FEATURES, eax: 0xffff_ffff, ..Default::default() },
        ];
        adjust(&mut e);
        assert_eq!(e[2].eax, !((1 << 0) | (1 << 3) | (1 << 7) | (1 << 11) | (1 << 13)));
        assert_eq!(e[0].ecx, !(1 << 13));
        assert_eq!(e[0].edx, 0xffff_ffff);
        assert_eq!(e[1].ebx, 0xffff_ffff);
        assert_eq!(e[1].ecx, 0xffff_ffff);
    }
}
