//! A client of xhyve's control socket (`--control`, `vmm/src/control.rs`): one command a line,
//! one reply line, `ok [DETAIL]` or `error MESSAGE`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The socket's name in the machine's directory; xhyve runs there and binds it by this relative
/// name.
pub const SOCKET: &str = "control.sock";

pub struct Control {
    out: UnixStream,
    replies: BufReader<UnixStream>,
}

impl Control {
    /// Connects to the socket of the machine in `dir`. The path goes through `/proc/self/fd`, so
    /// a home of any length fits the 108 bytes a socket address holds. `timeout` bounds each
    /// reply (a `save` writes the guest's RAM).
    pub fn connect(dir: &Path, timeout: Duration) -> io::Result<Control> {
        let d = File::options().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(dir)?;
        let out = UnixStream::connect(format!("/proc/self/fd/{}/{SOCKET}", d.as_raw_fd()))?;
        out.set_read_timeout(Some(timeout))?;
        out.set_write_timeout(Some(timeout))?;
        Ok(Control { replies: BufReader::new(out.try_clone()?), out })
    }

    /// Sends `command`; Ok(detail) for `ok [DETAIL]`, Err(what went wrong) otherwise.
    pub fn ask(&mut self, command: &str) -> Result<String, String> {
        let fail = |e: io::Error| format!("xhyve's control socket, {command}: {e}");
        self.out.write_all(format!("{command}\n").as_bytes()).map_err(fail)?;
        let mut line = String::new();
        if self.replies.read_line(&mut line).map_err(fail)? == 0 {
            return Err(format!("xhyve's control socket closed before it answered {command}"));
        }
        let line = line.trim_end();
        match line.split_once(' ').unwrap_or((line, "")) {
            ("ok", detail) => Ok(detail.to_string()),
            ("error", m) => Err(format!("xhyve refused {command}: {m}")),
            _ => Err(format!("xhyve's control socket answered {command} with {line:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn asks_and_reads_replies() {
        let dir = std::env::temp_dir().join(format!("xhyve-ctl-client-{}-{}", std::process::id(), "a".repeat(90)));
        std::fs::create_dir_all(&dir).unwrap();
        let d = File::open(&dir).unwrap();
        let l = UnixListener::bind(format!("/proc/self/fd/{}/{SOCKET}", d.as_raw_fd())).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            for line in BufReader::new(s).lines() {
                let reply = match line.unwrap().as_str() {
                    "status" => "ok running\n",
                    "pause" => "ok\n",
                    _ => "error unknown command\n",
                };
                w.write_all(reply.as_bytes()).unwrap();
            }
        });
        assert!(dir.join(SOCKET).as_os_str().len() > 108, "longer than a socket address");
        let mut c = Control::connect(&dir, Duration::from_secs(5)).unwrap();
        assert_eq!(c.ask("status"), Ok("running".into()));
        assert_eq!(c.ask("pause"), Ok(String::new()));
        assert_eq!(c.ask("frob"), Err("xhyve refused frob: unknown command".into()));
        drop(c);
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
