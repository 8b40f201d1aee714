//! Fuzzes virtio-console's queues as a hostile driver lays them out: transmit chains (the
//! output gathered from readable buffers, to a log target) and receive chains the pending input
//! is scattered into. The input waiting for the guest comes in as a snapshot would bring it
//! (`restore_state`), so that every run sees it at once.
//!
//! Input: byte 0 = how many bytes of input wait (times 16), cut from the input; then the whole
//! input is guest memory: the TX rings at 0, the RX rings at 0x400.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xhyve::config::{ConsoleConfig, ConsoleTarget};
use xhyve::fuzzing::queue;
use xhyve::virtio::console::Console;
use xhyve::virtio::VirtioDevice;

const MEM: usize = 1 << 20;
const RX: usize = 0;
const TX: usize = 1;

fn device() -> &'static Console {
    static DEV: OnceLock<Console> = OnceLock::new();
    DEV.get_or_init(|| Console::open(&ConsoleConfig::Target(ConsoleTarget::Log("/dev/null".into()))).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let con = device();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    let waiting = (usize::from(data.first().copied().unwrap_or(0)) * 16).min(data.len());
    // Left over from the last run: the guest takes it now or it stays (as on a real console).
    let _ = con.restore_state(&serde_json::json!({ "input": &data[..waiting] }));
    let (mut tx, mut rx) = (queue(0), queue(0x400));
    if tx.is_valid(&mem) {
        let _ = con.process_queue(TX, &mut tx, &mem);
    }
    if rx.is_valid(&mem) {
        let _ = con.process_queue(RX, &mut rx, &mem);
    }
});
