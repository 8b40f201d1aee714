//! Console input: reader threads fill a bounded buffer for the receive queue; output to the
//! current socket client.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// Input held for the guest before the reader threads wait.
const INPUT_BUFFER: usize = 16 << 10;

pub(super) struct Inner {
    pub(super) input: Mutex<VecDeque<u8>>,
    pub(super) space: Condvar,
    /// The receive queue's kick (from the transport).
    pub(super) rx_kick: Mutex<Option<Arc<EventFd>>>,
}

impl Inner {
    pub(super) fn kick_rx(&self) {
        if let Some(k) = &*self.rx_kick.lock().unwrap() {
            let _ = k.write(1);
        }
    }

    /// Copies `reader` into the input buffer until EOF or an error.
    pub(super) fn pump(&self, mut reader: impl Read) {
        let mut buf = [0u8; 512];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut q = self.input.lock().unwrap();
            while q.len() >= INPUT_BUFFER {
                q = self.space.wait(q).unwrap();
            }
            q.extend(&buf[..n]);
            drop(q);
            self.kick_rx();
        }
    }
}

/// Output to the current socket client, if any.
pub(super) struct SocketOut(pub(super) Arc<Mutex<Option<UnixStream>>>);

impl Write for SocketOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut c = self.0.lock().unwrap();
        if let Some(s) = c.as_mut() {
            if s.write_all(buf).is_err() {
                *c = None; // the client went away: drop output until the next one
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
