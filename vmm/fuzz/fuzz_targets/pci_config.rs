//! Fuzzes the PCI bus as a guest reaches it: configuration mechanism #1 (address register and
//! data window), BAR moves and command bits, and a virtio function's BAR 0 (common
//! configuration, ISR, notify, the MSI-X table and PBA). `xhyve::fuzzing::pci_bus` documents
//! the input's operations.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xhyve::fuzzing::pci_bus(data));
