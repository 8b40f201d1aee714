//! Fuzzes the daemon's request lines: JSON parsing, batches, JSON-RPC 2.0 request checks, method
//! lookup and every method's params (typed parsing, then the field checks), without running a
//! method (`xhyve_provider::fuzzing::rpc_line`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xhyve_provider::fuzzing::rpc_line(data));
