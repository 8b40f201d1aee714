//! The addressing of the user-mode network (`virtio-net,slirp` / `passt`): the slirp convention,
//! fixed, the same on every boot for every UUID. The VMM's backends hand it out by DHCP; the
//! provider also gives it to a fast-started guest in its identity message, so the guest sets it
//! without a DHCP exchange (boxes/README.md, "Fast start").

use std::net::Ipv4Addr;

/// The guest's address.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The length of the network's prefix (10.0.2.0/24).
pub const PREFIX_LEN: u8 = 24;
/// The gateway, which also stands for the host's loopback (a guest reaches a host service on
/// 127.0.0.1:PORT at 10.0.2.2:PORT).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The DNS server (forwarded to the host's resolver).
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
