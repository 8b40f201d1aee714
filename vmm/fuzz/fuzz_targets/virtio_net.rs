//! Fuzzes virtio-net's three queues as a hostile driver lays them out: transmit chains (header
//! and frame gathering, lengths, read/write flags), receive chains the frames from the host are
//! scattered into, and control-queue commands. The device is the real one on the real `socket=`
//! backend: a SOCK_SEQPACKET switch port this target listens on and answers from.
//!
//! Input: byte 0 = how many frames (mod 4) the switch sends before the queues run, byte 1 = their
//! length's high byte (the frames are cut from the input); then the whole input is guest memory:
//! the TX rings at 0, the RX rings at 0x400, the control rings at 0x800.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xhyve::config::{BackendConfig, NetConfig};
use xhyve::fuzzing::queue;
use xhyve::virtio::net::Net;
use xhyve::virtio::VirtioDevice;

const MEM: usize = 1 << 20;
const RX: usize = 0;
const TX: usize = 1;
const CTRL: usize = 2;

/// The device and the switch's end of its port.
fn device() -> &'static (Net, OwnedFd) {
    static DEV: OnceLock<(Net, OwnedFd)> = OnceLock::new();
    DEV.get_or_init(|| {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(format!("xhyve-fuzz-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("switch.sock");
        // SAFETY: socket, bind and listen on a new descriptor with a zeroed, filled sockaddr_un;
        // accept on it once the device has connected.
        unsafe {
            let l = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
            assert!(l >= 0);
            let listener = OwnedFd::from_raw_fd(l);
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
                *d = *s as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            assert_eq!(libc::bind(l, (&addr as *const libc::sockaddr_un).cast(), len), 0);
            assert_eq!(libc::listen(l, 1), 0);
            let cfg = NetConfig { backend: BackendConfig::Socket(path), mac: Some([2, 0, 0, 0, 0, 1]) };
            let net = Net::new(&cfg, None, 0).unwrap();
            let peer = libc::accept(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut());
            assert!(peer >= 0);
            let _ = std::fs::remove_dir_all(&dir); // the connection lives on
            (net, OwnedFd::from_raw_fd(peer))
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let (net, peer) = device();
    let fd = peer.as_raw_fd();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    // Frames from the switch; a full port drops them, as a congested link does.
    let frames = data.first().map_or(0, |b| b % 4);
    let len = (usize::from(data.get(1).copied().unwrap_or(0)) << 8 | 60).min(data.len().max(60));
    for i in 0..frames {
        let start = (usize::from(i) * 7) % data.len().max(1);
        let frame: Vec<u8> = data.iter().cycle().skip(start).take(len).copied().collect();
        // SAFETY: sends from a live buffer on the switch's descriptor, without blocking.
        unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
    }
    let (mut tx, mut rx, mut ctrl) = (queue(0), queue(0x400), queue(0x800));
    if tx.is_valid(&mem) {
        let _ = net.process_queue(TX, &mut tx, &mem);
    }
    if rx.is_valid(&mem) {
        let _ = net.process_queue(RX, &mut rx, &mem);
    }
    if ctrl.is_valid(&mem) {
        let _ = net.process_queue(CTRL, &mut ctrl, &mem);
    }
    // What the device sent: drained so that the port never fills up.
    let mut buf = vec![0u8; 65536];
    // SAFETY: receives into a live buffer of that size, without blocking.
    while unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) } > 0 {}
});
