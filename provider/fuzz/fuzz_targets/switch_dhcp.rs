//! Fuzzes the switch's DHCP handling: guest frames to the gateway (Ethernet, IPv4, UDP, DHCP) and
//! the answers built from one lease table (`xhyve_provider::fuzzing::switch_dhcp`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xhyve_provider::fuzzing::switch_dhcp(data));
