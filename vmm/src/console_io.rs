//! The host side of a guest console (`-l` UARTs, `virtio-console`): stdio, a pty, or a log
//! file; and the raw mode of a terminal on stdin.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};

use crate::config::ConsoleTarget;

/// Output of a console target, and its input if it has one.
pub struct Console {
    pub output: Box<dyn Write + Send>,
    pub input: Option<Box<dyn Read + Send>>,
    /// A line for the user about where the console is (e.g. the pty path).
    pub notice: Option<String>,
}

/// Opens a console target for `name` (used in the pty notice); errors start with `what`. Stdio
/// output is unbuffered so the guest console appears as it is written.
pub fn open(name: &str, target: &ConsoleTarget, what: &str) -> Result<Console, String> {
    match target {
        ConsoleTarget::Stdio => {
            Ok(Console { output: Box::new(StdoutWriter), input: Some(Box::new(io::stdin())), notice: None })
        }
        ConsoleTarget::Log(path) => {
            let f = OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("{what}: {e}"))?;
            Ok(Console { output: Box::new(f), input: None, notice: None })
        }
        ConsoleTarget::AutoPty => {
            let (master, path) = open_pty().map_err(|e| format!("{what}: {e}"))?;
            let reader = master.try_clone().map_err(|e| format!("{what}: {e}"))?;
            Ok(Console {
                output: Box::new(master),
                input: Some(Box::new(reader)),
                notice: Some(format!("{name} connected to {path}")),
            })
        }
    }
}

struct StdoutWriter;

impl Write for StdoutWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

fn open_pty() -> io::Result<(File, String)> {
    // SAFETY: plain libc calls; the fd is checked and then owned by the returned File.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let file = File::from_raw_fd(fd);
        if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0 as libc::c_char; 128];
        if libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let path = std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
        Ok((file, path))
    }
}

/// Puts a terminal on stdin into raw mode for the guest console; restored on drop.
pub struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    pub fn enter() -> RawTerminal {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: termios calls on stdin with properly sized structs.
        unsafe {
            if libc::isatty(fd) == 0 {
                return RawTerminal(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            t.c_oflag |= libc::OPOST | libc::ONLCR; // keep host-side newline handling readable
            libc::tcsetattr(fd, libc::TCSANOW, &t);
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the attributes read in `enter`.
            unsafe { libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &t) };
        }
    }
}
