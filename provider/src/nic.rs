//! A machine's network interface as the host names it: the MAC address xhyve gives the guest
//! (from the machine's UUID by the contract's rule, `xhyve_contract::mac`) and, in network
//! shared, the TAP device that carries its frames. The machines (start, SSH address, destroy) and
//! the shared network (TAP devices, DHCP leases) both name interfaces through here, so neither
//! needs the other.

pub type Mac = [u8; 6];

/// Prefix of the TAP devices' names (then the first 12 characters of the machine id: 15 in all,
/// the kernel's limit).
pub const TAP_PREFIX: &str = "xh-";
/// The longest interface name the kernel takes (IFNAMSIZ less its NUL).
pub const IFNAME_MAX: usize = 15;

/// The MAC address xhyve gives a guest with `-U UUID`; None for a malformed UUID.
pub fn mac_of_uuid(uuid: &str) -> Option<Mac> {
    let uuid = uuid::Uuid::parse_str(uuid).ok()?;
    Some(xhyve_contract::mac::mac_from_uuid(&uuid))
}

/// The MAC of the machine's NIC number `index` (0: the management NIC, as `mac_of_uuid`).
pub fn nic_mac_of_uuid(uuid: &str, index: u8) -> Option<Mac> {
    let uuid = uuid::Uuid::parse_str(uuid).ok()?;
    Some(xhyve_contract::mac::nic_mac(&uuid, index))
}

/// The TAP device of a machine.
pub fn tap_name(machine_id: &str) -> String {
    let id: String = machine_id.chars().take(IFNAME_MAX - TAP_PREFIX.len()).collect();
    format!("{TAP_PREFIX}{id}")
}

/// The TAP device of the machine's NIC number `index` on a bridge network: `xh-`, the id's first
/// 10 characters, `-` and the index (`xh-3f9a1c07b2-1`; one character less of the id from index
/// 10: the kernel's limit).
pub fn nic_tap_name(machine_id: &str, index: u8) -> String {
    let suffix = format!("-{index}");
    let id: String = machine_id.chars().take(IFNAME_MAX - TAP_PREFIX.len() - suffix.len()).collect();
    format!("{TAP_PREFIX}{id}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use xhyve_contract::mac::format_mac;

    #[test]
    fn mac_matches_the_vmm() {
        // `xhyve -U ... -M` prints these (the rule: vmm/contract/src/mac.rs).
        let m = mac_of_uuid("8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01").unwrap();
        assert_eq!(format_mac(&m), "da:ad:9b:42:47:cc");
        let m = mac_of_uuid("6A0E5C1E-3B7D-4F0A-9D3E-2F1C0B9A8E71").unwrap();
        assert_eq!(format_mac(&m), "2e:9e:4f:51:14:61");
        assert!(mac_of_uuid("nope").is_none());
        assert!(mac_of_uuid("8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f0g").is_none());
    }

    #[test]
    fn tap_names_fit_the_kernel() {
        assert_eq!(tap_name("3f9a1c07b2e4"), "xh-3f9a1c07b2e4");
        assert_eq!(tap_name("3f9a1c07b2e4ffff").len(), IFNAME_MAX);
        assert_eq!(nic_tap_name("3f9a1c07b2e4", 1), "xh-3f9a1c07b2-1");
        assert_eq!(nic_tap_name("3f9a1c07b2e4", 12), "xh-3f9a1c07b-12");
    }
}
