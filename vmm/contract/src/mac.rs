//! The guest MAC addresses pinned by the VM's UUID (xhyve's `-U`): the provider predicts them
//! (DHCP leases, TAP checks) and the VMM gives them to the guest, so the rule lives here only.
//! A VM's network devices are numbered in PCI slot order (0 for the first); each index has its
//! own address.

use uuid::Uuid;

/// The MAC of the VM's first network device (index 0), which `xhyve -M` prints: folds the
/// UUID's 16 bytes into 6 by XOR (byte i takes bytes i, i+6, i+12), then marks the address
/// locally administered and unicast. Same UUID, same MAC, on every host.
pub fn mac_from_uuid(uuid: &Uuid) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, byte) in uuid.as_bytes().iter().enumerate() {
        mac[i % 6] ^= byte;
    }
    local_unicast(mac)
}

/// The MAC of network device `index`: index 0 keeps `mac_from_uuid` (existing machines keep
/// their address); every other index hashes the UUID and the index (64-bit FNV-1a, 6 of its
/// bytes), so the devices of one VM differ from each other and from other VMs' as random
/// addresses would.
pub fn nic_mac(uuid: &Uuid, index: u8) -> [u8; 6] {
    if index == 0 {
        return mac_from_uuid(uuid);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uuid.as_bytes().iter().chain(&[index]) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&h.to_be_bytes()[..6]);
    local_unicast(mac)
}

fn local_unicast(mut mac: [u8; 6]) -> [u8; 6] {
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// `02:ab:00:01:02:03`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_local_unicast() {
        let u = Uuid::parse_str("8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01").unwrap();
        let m = mac_from_uuid(&u);
        assert_eq!(m, mac_from_uuid(&u));
        assert_eq!(m[0] & 0x03, 0x02);
        let other = Uuid::parse_str("8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f02").unwrap();
        assert_ne!(m, mac_from_uuid(&other));
        assert_eq!(format_mac(&[2, 0xab, 0, 1, 2, 3]), "02:ab:00:01:02:03");
    }

    #[test]
    fn known_value() {
        // Pinned: changing the rule would change every existing machine's MAC and address.
        let u = Uuid::parse_str("8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01").unwrap();
        assert_eq!(format_mac(&mac_from_uuid(&u)), "da:ad:9b:42:47:cc");
        assert_eq!(nic_mac(&u, 0), mac_from_uuid(&u));
        // Pinned too: a DHCP server keys its leases by it.
        assert_eq!(format_mac(&nic_mac(&u, 1)), "8a:af:fe:b4:8e:ed");
    }

    #[test]
    fn every_index_differs() {
        let u = Uuid::parse_str("8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01").unwrap();
        let macs: std::collections::HashSet<_> = (0..=255u8).map(|i| nic_mac(&u, i)).collect();
        assert_eq!(macs.len(), 256);
        assert!(macs.iter().all(|m| m[0] & 0x03 == 0x02));
    }
}
