//! Fuzzes box catalogs and version constraints: parsing, ordering, the store's spelling of a
//! version and the selection (`xhyve_provider::fuzzing::catalog`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xhyve_provider::fuzzing::catalog(data));
