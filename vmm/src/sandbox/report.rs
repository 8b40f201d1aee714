//! What happens when a filter stops a call: the kernel does not make it and sends SIGSYS to the
//! thread; the handler here says which kind of thread made which call, and ends the VMM with
//! status 4 (bhyve's "error"), Firecracker's way. Only async-signal-safe work in the handler: no
//! allocation, no lock, one write(2), then _exit(2).

use std::cell::Cell;

use syscalls::Sysno;

/// The exit status after a blocked call.
pub const STATUS: i32 = 4;

thread_local! {
    /// The kind of the calling thread, for the report (const-initialised: safe to read in a handler).
    static KIND: Cell<&'static str> = const { Cell::new("newly started") };
}

pub fn set_thread_kind(name: &'static str) {
    KIND.with(|k| k.set(name));
}

/// Installs the SIGSYS handler for the process.
pub fn install() -> Result<(), String> {
    // SAFETY: installs a handler that only does async-signal-safe work.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(format!("seccomp: cannot handle SIGSYS: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// `siginfo_t._sifields._sigsys._syscall` on Linux x86-64 (libc has no accessor): after
/// si_signo, si_errno, si_code, padding (16 bytes) and `_call_addr` (8).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGSYS with
    // si_code SYS_SECCOMP the `_sigsys` member is filled in.
    let nr = unsafe { info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>().read_unaligned() };
    let mut msg = Message::default();
    msg.push("xhyve: seccomp: a ");
    msg.push(KIND.with(|k| k.get()));
    msg.push(" thread made system call ");
    msg.number(nr.max(0) as u64);
    msg.push(" (");
    msg.push(Sysno::new(nr.max(0) as usize).map_or("unknown", |s| s.name()));
    msg.push(
        "), which its allow-list forbids: ending the VM (XHYVE_SECCOMP=log lets such calls through and logs them)\n",
    );
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(2, msg.buf.as_ptr().cast(), msg.len);
        libc::_exit(STATUS);
    }
}

/// A fixed buffer: the handler may not allocate.
struct Message {
    buf: [u8; 320],
    len: usize,
}

impl Default for Message {
    fn default() -> Self {
        Message { buf: [0; 320], len: 0 }
    }
}

impl Message {
    fn push(&mut self, s: &str) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
    }

    fn number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        // Digits are ASCII.
        self.push(std::str::from_utf8(&digits[i..]).unwrap_or("?"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_formats_without_allocating() {
        let mut m = Message::default();
        m.push("call ");
        m.number(0);
        m.push(" ");
        m.number(18446744073709551615);
        assert_eq!(&m.buf[..m.len], b"call 0 18446744073709551615");
        let long = "x".repeat(400);
        m.push(&long);
        assert_eq!(m.len, 320, "a long message is cut, not overflowed");
    }
}
