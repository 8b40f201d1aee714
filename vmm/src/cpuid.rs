//! The CPUID each vCPU sees: the backend's supported leaves with this vCPU's topology.

use crate::hypervisor::CpuidEntry;

const LEAF_FEATURES: u32 = 1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_ADDR_SIZES: u32 = 0x8000_0008;
const EDX_HTT: u32 = 1 << 28;

/// Sets APIC ID `id` and a package of `ncpus` logical CPUs in the topology leaves.
pub fn for_vcpu(base: &[CpuidEntry], id: u8, ncpus: u8) -> Vec<CpuidEntry> {
    let mut entries = base.to_vec();
    for e in &mut entries {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(ncpus) << 16);
                if ncpus > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => e.edx = u32::from(id),
            LEAF_ADDR_SIZES => e.ecx = (e.ecx & !0xff) | u32::from(ncpus - 1),
            _ => {}
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology() {
        let base = [
            CpuidEntry { function: 1, ebx: 0xdead_0800, ..Default::default() },
            CpuidEntry { function: 0xb, edx: 7, ..Default::default() },
        ];
        let e = for_vcpu(&base, 3, 4);
        assert_eq!(e[0].ebx, 0x0304_0800);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].edx, 3);
    }
}
