//! The CPUID the guest sees: KVM_GET_SUPPORTED_CPUID, with each vCPU's APIC ID, the
//! hypervisor bit, features the VMM does not virtualize removed, and features the caller asks
//! to hide (this project's test host's instruction emulator cannot handle cmpxchg16b, popcnt
//! or xsave, for instance) cleared.

use kvm_bindings::CpuId;

/// A CPU feature that can be hidden from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuFeature {
    /// CMPXCHG16B (leaf 1 ECX bit 13).
    Cx16,
    /// POPCNT (leaf 1 ECX bit 23).
    Popcnt,
    /// XSAVE and everything that needs it: OSXSAVE, AVX, FMA, F16C, AVX2, AVX-512, leaf 0xD.
    Xsave,
}

const LEAF_FEATURES: u32 = 1;
const LEAF_THERMAL: u32 = 6;
const LEAF_EXTENDED_FEATURES: u32 = 7;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

// Leaf 1 ECX.
const ECX_MONITOR: u32 = 1 << 3;
const ECX_VMX: u32 = 1 << 5;
const ECX_FMA: u32 = 1 << 12;
const ECX_CX16: u32 = 1 << 13;
const ECX_POPCNT: u32 = 1 << 23;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_OSXSAVE: u32 = 1 << 27;
const ECX_AVX: u32 = 1 << 28;
const ECX_F16C: u32 = 1 << 29;
const ECX_HYPERVISOR: u32 = 1 << 31;
// Leaf 1 EDX.
const EDX_HTT: u32 = 1 << 28;
// Leaf 7 EBX: AVX2 and the AVX-512 family, which need XSAVE-managed state.
const EBX7_AVX_FAMILY: u32 = (1 << 5)
    | (1 << 16)
    | (1 << 17)
    | (1 << 21)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 30)
    | (1 << 31);

/// Shapes `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `vcpu_id` of `vcpu_count`.
pub fn filter(cpuid: &mut CpuId, vcpu_id: u8, vcpu_count: u8, hidden: &[CpuFeature]) {
    let hide_xsave = hidden.contains(&CpuFeature::Xsave);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(vcpu_id) << 24)
                    | (u32::from(vcpu_count) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                entry.ecx &= !(ECX_MONITOR | ECX_VMX);
                if vcpu_count > 1 {
                    entry.edx |= EDX_HTT;
                }
                for feature in hidden {
                    entry.ecx &= !match feature {
                        CpuFeature::Cx16 => ECX_CX16,
                        CpuFeature::Popcnt => ECX_POPCNT,
                        CpuFeature::Xsave => ECX_XSAVE | ECX_OSXSAVE | ECX_AVX | ECX_FMA | ECX_F16C,
                    };
                }
            }
            LEAF_EXTENDED_FEATURES if entry.index == 0 && hide_xsave => {
                entry.ebx &= !EBX7_AVX_FAMILY;
            }
            LEAF_XSAVE if hide_xsave => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            // No thermal or power management, no performance counters in the guest.
            LEAF_THERMAL | LEAF_PMU => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => entry.edx = u32::from(vcpu_id),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_cpuid_entry2;

    use super::*;

    fn leaf(function: u32, index: u32, value: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: value,
            ebx: value,
            ecx: value,
            edx: value,
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function)
            .unwrap()
    }

    #[test]
    fn each_vcpu_sees_its_apic_id_and_the_hypervisor_bit() {
        let mut cpuid =
            CpuId::from_entries(&[leaf(1, 0, 0), leaf(0xb, 0, 0), leaf(0xb, 1, 0)]).unwrap();
        filter(&mut cpuid, 3, 4, &[]);
        let features = find(&cpuid, 1);
        assert_eq!(features.ebx >> 24, 3);
        assert_eq!((features.ebx >> 16) & 0xff, 4);
        assert_ne!(features.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(features.edx & EDX_HTT, 0);
        assert!(cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == 0xb)
            .all(|e| e.edx == 3));
    }

    #[test]
    fn vmx_and_monitor_are_never_offered() {
        let mut cpuid = CpuId::from_entries(&[leaf(1, 0, u32::MAX)]).unwrap();
        filter(&mut cpuid, 0, 1, &[]);
        let ecx = find(&cpuid, 1).ecx;
        assert_eq!(ecx & (ECX_VMX | ECX_MONITOR), 0);
        assert_ne!(ecx & ECX_CX16, 0, "nothing else hidden unless asked");
    }

    #[test]
    fn hidden_features_are_cleared_with_what_depends_on_them() {
        let mut cpuid = CpuId::from_entries(&[
            leaf(1, 0, u32::MAX),
            leaf(7, 0, u32::MAX),
            leaf(0xd, 0, u32::MAX),
        ])
        .unwrap();
        filter(
            &mut cpuid,
            0,
            1,
            &[CpuFeature::Cx16, CpuFeature::Popcnt, CpuFeature::Xsave],
        );
        let ecx = find(&cpuid, 1).ecx;
        for bit in [ECX_CX16, ECX_POPCNT, ECX_XSAVE, ECX_OSXSAVE, ECX_AVX] {
            assert_eq!(ecx & bit, 0, "bit {bit:#x} still set");
        }
        assert_eq!(find(&cpuid, 7).ebx & (1 << 5), 0, "AVX2 needs XSAVE");
        assert_eq!(find(&cpuid, 0xd).eax, 0);
    }
}
