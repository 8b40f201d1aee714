//! The control socket (`--control PATH`): a unix stream socket through which the provider, or a
//! person with `socat - UNIX-CONNECT:PATH`, pauses, resumes, saves and ends the VM.
//!
//! Protocol: one command per line (UTF-8, `\n`-terminated); one reply line per command, `ok`
//! or `ok DETAIL` on success, `error MESSAGE` on failure. Clients are served one at a time, each
//! for as many commands as it sends.
//!
//! | command | what it does |
//! |---|---|
//! | `status` | `ok running` or `ok paused` |
//! | `pause` | stops every vCPU and device (outstanding I/O finished first) |
//! | `resume` | starts them again |
//! | `save PATH` | writes a snapshot to PATH (atomically); a running VM is paused for it and resumed after, a paused one stays paused. `ok` carries `bytes=N ram_written=N ms=N` |
//! | `quit` | ends the process at once (exit status 5), without telling the guest: after `pause` and `save`, the end of a suspend |

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sandbox::{self, ThreadKind};

/// What the control socket drives.
pub trait Machine: Send + Sync {
    fn paused(&self) -> bool;
    fn pause(&self) -> Result<(), String>;
    fn resume(&self) -> Result<(), String>;
    /// Returns the details for the reply.
    fn save(&self, path: &Path) -> Result<String, String>;
    fn quit(&self);
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Status,
    Pause,
    Resume,
    Save(PathBuf),
    Quit,
}

fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim();
    let (word, arg) = match line.split_once(char::is_whitespace) {
        Some((w, a)) => (w, a.trim()),
        None => (line, ""),
    };
    let no_arg = |c: Command| if arg.is_empty() { Ok(c) } else { Err(format!("{word} takes no argument")) };
    match word {
        "status" => no_arg(Command::Status),
        "pause" => no_arg(Command::Pause),
        "resume" => no_arg(Command::Resume),
        "quit" => no_arg(Command::Quit),
        "save" if arg.is_empty() => Err("save needs a PATH".into()),
        "save" => Ok(Command::Save(arg.into())),
        "" => Err("empty command".into()),
        other => Err(format!("unknown command '{other}' (status, pause, resume, save PATH, quit)")),
    }
}

fn execute(machine: &dyn Machine, cmd: Command) -> Result<String, String> {
    match cmd {
        Command::Status => Ok(if machine.paused() { "paused" } else { "running" }.into()),
        Command::Pause => machine.pause().map(|_| String::new()),
        Command::Resume => machine.resume().map(|_| String::new()),
        Command::Save(path) => machine.save(&path),
        // Answered by `serve` before it quits: the process may end at once.
        Command::Quit => Ok(String::new()),
    }
}

/// Binds `path` (replacing a stale socket, never another kind of file) and serves it on a thread.
pub fn spawn(path: &Path, machine: Arc<dyn Machine>) -> Result<(), String> {
    let what = |e: std::io::Error| format!("--control {}: {e}", path.display());
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!("--control {}: exists and is not a socket", path.display()));
        }
        std::fs::remove_file(path).map_err(what)?;
    }
    let listener = UnixListener::bind(path).map_err(what)?;
    sandbox::spawn(ThreadKind::Control, "control".into(), move || {
        for stream in listener.incoming().flatten() {
            serve(stream, machine.as_ref());
        }
    })
    .map_err(what)?;
    Ok(())
}

fn serve(stream: UnixStream, machine: &dyn Machine) {
    let Ok(mut out) = stream.try_clone() else { return };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let cmd = parse(&line);
        let quit = cmd == Ok(Command::Quit);
        let reply = match cmd.and_then(|c| execute(machine, c)) {
            Ok(d) if d.is_empty() => "ok\n".to_string(),
            Ok(d) => format!("ok {d}\n"),
            Err(e) => format!("error {}\n", e.replace('\n', " ")),
        };
        let sent = out.write_all(reply.as_bytes()).and_then(|_| out.flush());
        if quit {
            machine.quit();
        }
        if sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Fake {
        paused: Mutex<bool>,
        log: Mutex<Vec<String>>,
    }

    impl Machine for Fake {
        fn paused(&self) -> bool {
            *self.paused.lock().unwrap()
        }
        fn pause(&self) -> Result<(), String> {
            *self.paused.lock().unwrap() = true;
            Ok(())
        }
        fn resume(&self) -> Result<(), String> {
            *self.paused.lock().unwrap() = false;
            Ok(())
        }
        fn save(&self, path: &Path) -> Result<String, String> {
            self.log.lock().unwrap().push(format!("save {}", path.display()));
            if path == Path::new("/nope/x") {
                return Err("/nope/x: No such file or directory\n(os error 2)".into());
            }
            Ok("bytes=1".into())
        }
        fn quit(&self) {
            self.log.lock().unwrap().push("quit".into());
        }
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse("pause\n"), Ok(Command::Pause));
        assert_eq!(parse("  save /tmp/a b.snap "), Ok(Command::Save("/tmp/a b.snap".into())));
        assert_eq!(parse("save"), Err("save needs a PATH".into()));
        assert_eq!(parse("quit now"), Err("quit takes no argument".into()));
        assert!(parse("reboot").unwrap_err().contains("unknown command 'reboot'"));
        assert_eq!(parse(""), Err("empty command".into()));
    }

    #[test]
    fn serves_a_session_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("xhyve-control-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        std::fs::write(&path, b"not a socket").unwrap();
        let fake = Arc::new(Fake::default());
        assert!(spawn(&path, fake.clone()).unwrap_err().contains("not a socket"));
        std::fs::remove_file(&path).unwrap();
        spawn(&path, fake.clone()).unwrap();

        let s = UnixStream::connect(&path).unwrap();
        let mut lines = BufReader::new(s.try_clone().unwrap()).lines();
        let mut ask = |cmd: &str| {
            (&s).write_all(format!("{cmd}\n").as_bytes()).unwrap();
            lines.next().unwrap().unwrap()
        };
        assert_eq!(ask("status"), "ok running");
        assert_eq!(ask("pause"), "ok");
        assert_eq!(ask("status"), "ok paused");
        assert_eq!(ask("save /tmp/x.snap"), "ok bytes=1");
        assert_eq!(ask("save /nope/x"), "error /nope/x: No such file or directory (os error 2)");
        assert_eq!(ask("frobnicate"), "error unknown command 'frobnicate' (status, pause, resume, save PATH, quit)");
        assert_eq!(ask("resume"), "ok");
        assert_eq!(ask("quit"), "ok");
        // The answer goes out before the quit (which may end the process): wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while fake.log.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(*fake.log.lock().unwrap(), vec!["save /tmp/x.snap", "save /nope/x", "quit"]);
        // A stale socket (this one) is replaced by a new server.
        spawn(&path, Arc::new(Fake::default())).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
