//! The guest MAC address pinned by the VM's UUID (xhyve's `-M`): the provider predicts it (DHCP
//! leases, TAP checks) and the VMM gives it to the guest, so the rule lives here only.

use uuid::Uuid;

/// Folds the UUID's 16 bytes into 6 by XOR (byte i takes bytes i, i+6, i+12), then marks the
/// address locally administered and unicast. Same UUID, same MAC, on every host.
pub fn mac_from_uuid(uuid: &Uuid) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, byte) in uuid.as_bytes().iter().enumerate() {
        mac[i % 6] ^= byte;
    }
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
    }
}
