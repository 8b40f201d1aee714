//! The few Ethernet frames a named network's switch reads and writes itself: DHCP requests
//! (IPv4, UDP to port 67) and their replies. Hand-written because that is all it needs: one
//! fixed 42-byte header stack whose only computed field is the IPv4 header checksum (UDP's is
//! optional over IPv4 and left 0).

use crate::nic::Mac;
use std::net::Ipv4Addr;

const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const PROTO_UDP: u8 = 17;
pub const DHCP_SERVER_PORT: u16 = 67;
pub const DHCP_CLIENT_PORT: u16 = 68;

pub fn dst_mac(frame: &[u8]) -> Option<Mac> {
    frame.get(..6).map(|m| m.try_into().expect("6 bytes"))
}

pub fn src_mac(frame: &[u8]) -> Option<Mac> {
    frame.get(6..12).map(|m| m.try_into().expect("6 bytes"))
}

/// The UDP payload of a frame that carries an IPv4 UDP datagram to port 67; None for any other
/// frame (which the switch forwards unread).
pub fn dhcp_request(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < ETH + IP + UDP || frame[12..14] != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    // Version 4, a whole header, UDP, and not a fragment (MF clear, offset 0).
    if ip[0] >> 4 != 4 || ihl < IP || ip[9] != PROTO_UDP || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let udp = ip.get(ihl..total)?;
    if udp.len() < UDP || u16::from_be_bytes([udp[2], udp[3]]) != DHCP_SERVER_PORT {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]])).clamp(UDP, udp.len());
    Some(&udp[UDP..len])
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying `payload` from `src` (port 67) to `dst` (port 68).
pub fn dhcp_reply(src: (Mac, Ipv4Addr), dst: (Mac, Ipv4Addr), payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH + IP + UDP + payload.len());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ETHERTYPE_IPV4);
    let total = (IP + UDP + payload.len()) as u16;
    let mut ip = [0u8; IP];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = PROTO_UDP;
    ip[12..16].copy_from_slice(&src.1.octets());
    ip[16..20].copy_from_slice(&dst.1.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&DHCP_SERVER_PORT.to_be_bytes());
    f.extend_from_slice(&DHCP_CLIENT_PORT.to_be_bytes());
    f.extend_from_slice(&((UDP + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_parses_back_and_checksums() {
        let from = ([2, 0, 0, 0, 0, 1], Ipv4Addr::new(192, 168, 56, 1));
        let to = ([2, 0, 0, 0, 0, 2], Ipv4Addr::BROADCAST);
        let mut f = dhcp_reply(from, to, b"hello");
        assert_eq!(dst_mac(&f), Some(to.0));
        assert_eq!(src_mac(&f), Some(from.0));
        // A valid header sums to 0.
        assert_eq!(checksum(&f[ETH..ETH + IP]), 0);
        // It goes to port 68, so it is no request; turned around, it is one.
        assert_eq!(dhcp_request(&f), None);
        f[ETH + IP + 2..ETH + IP + 4].copy_from_slice(&DHCP_SERVER_PORT.to_be_bytes());
        assert_eq!(dhcp_request(&f), Some(&b"hello"[..]));
        // Truncated, fragmented or not UDP: not a request.
        assert_eq!(dhcp_request(&f[..40]), None);
        let mut g = f.clone();
        g[ETH + 6] = 0x20;
        assert_eq!(dhcp_request(&g), None);
        let mut g = f.clone();
        g[ETH + 9] = 6;
        assert_eq!(dhcp_request(&g), None);
    }
}
