//! Fuzzes box unpacking: tar, tar.gz and zip into a scratch directory, checking that nothing
//! lands outside it (`xhyve_provider::fuzzing::box_archive`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xhyve_provider::fuzzing::box_archive(data));
