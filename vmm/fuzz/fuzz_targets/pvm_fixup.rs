//! Fuzzes PVM's instruction fix-ups: the instruction at RIP read through the guest's page
//! tables, decoded and performed on a vCPU state made from the input
//! (`xhyve::fuzzing::pvm_fixup` documents the layout).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xhyve::fuzzing::pvm_fixup(data));
