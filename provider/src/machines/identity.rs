//! The identity channel of a box with `fast_start` (boxes/README.md, "Fast start"): a
//! virtio-console port whose host end is the unix socket `identity.sock` in the machine's
//! directory (`xhyve -s N,virtio-console,socket=identity.sock`), `hvc0` in the guest, named to
//! the box's init by `xhyve.identity=hvc0` on the kernel command line.
//!
//! The guest says `XHYVE-IDENTITY 1 WAITING` at its quiet point and blocks until the host sends
//! one message: `KEY=VALUE` lines (`machine`, `hostname`, one `mac` per NIC in PCI order, for a
//! first NIC on the user-mode network its fixed `address`, `router` and `dns`, `time`, `seed`)
//! and a line `end`; it answers `XHYVE-IDENTITY 1 APPLIED MACHINE`. A later message
//! (after a resume or a snapshot restore) refreshes the clock and the RNG seed.

use super::process::Budget;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The socket's name in the machine's directory (relative: xhyve runs there).
pub const SOCKET: &str = "identity.sock";
/// What the kernel command line tells the box's init: the channel's tty.
pub const CMDLINE: &str = "xhyve.identity=hvc0";
/// The prefix of the guest's lines.
const GUEST: &str = "XHYVE-IDENTITY 1 ";
/// Bytes of host randomness each message carries for the guest's RNG.
const SEED_BYTES: usize = 64;

/// Who the machine is.
pub struct Identity {
    pub machine: String,
    pub hostname: String,
    /// `aa:bb:...`, one per NIC in PCI order.
    pub macs: Vec<String>,
    /// The first NIC's IPv4 configuration when the host knows it (the user-mode network's is
    /// fixed): the guest sets it instead of asking DHCP, which costs it seconds here.
    pub ipv4: Option<Ipv4Config>,
}

/// A NIC's static IPv4 configuration.
pub struct Ipv4Config {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Ipv4Addr,
    pub dns: Ipv4Addr,
}

impl Identity {
    /// The message: the identity, the host's clock and a fresh seed.
    fn message(&self) -> io::Result<String> {
        let mut seed = [0u8; SEED_BYTES];
        File::open("/dev/urandom")?.read_exact(&mut seed)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut m = format!("machine={}\nhostname={}\n", self.machine, self.hostname);
        for mac in &self.macs {
            m.push_str(&format!("mac={mac}\n"));
        }
        if let Some(c) = &self.ipv4 {
            m.push_str(&format!("address={}/{}\nrouter={}\ndns={}\n", c.address, c.prefix_len, c.router, c.dns));
        }
        m.push_str(&format!("time={}.{:09}\n", now.as_secs(), now.subsec_nanos()));
        m.push_str("seed=");
        for b in seed {
            m.push_str(&format!("{b:02x}"));
        }
        m.push_str("\nend\n");
        Ok(m)
    }
}

/// A host name from the machine's name: letters, digits and `-`, at most 63.
pub fn hostname_of(name: &str) -> String {
    let h: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(63).collect();
    let h = h.trim_matches('-').to_string();
    if h.is_empty() {
        "xhyve".into()
    } else {
        h
    }
}

pub struct Channel {
    out: UnixStream,
    lines: BufReader<UnixStream>,
}

impl Channel {
    /// Connects to the channel of the machine in `dir`, retrying until `within` passed (xhyve
    /// binds the socket as it starts). Through `/proc/self/fd`: a home of any length fits.
    pub fn connect(dir: &Path, within: Duration) -> io::Result<Channel> {
        let d = File::options().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(dir)?;
        let deadline = Instant::now() + within;
        let out = loop {
            match UnixStream::connect(format!("/proc/self/fd/{}/{SOCKET}", d.as_raw_fd())) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        Ok(Channel { lines: BufReader::new(out.try_clone()?), out })
    }

    /// Reads the guest's lines until `XHYVE-IDENTITY 1 WORD...`; Ok(what follows WORD). Err when
    /// the channel ends (xhyve ended) or nothing came within `budget`.
    pub fn wait_for(&mut self, word: &str, budget: &Budget) -> Result<String, String> {
        let spending = budget.start();
        let mut line = String::new();
        loop {
            if spending.exhausted() {
                return Err(format!("the guest did not say {word} within {}", budget.describe()));
            }
            // Woken each second to look at the guest's CPU time.
            let wait = spending.wall_left().min(Duration::from_secs(1));
            self.out.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
            line.clear();
            match self.lines.read_line(&mut line) {
                Ok(0) => return Err(format!("the identity channel closed before the guest said {word}")),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(e) => return Err(format!("reading the identity channel: {e}")),
            }
            if let Some(rest) = line.trim_end().strip_prefix(GUEST) {
                match rest.split_once(' ').unwrap_or((rest, "")) {
                    (w, detail) if w == word => return Ok(detail.to_string()),
                    _ => {}
                }
            }
        }
    }

    /// Sends the identity, then waits (within `budget`) until the guest applied it.
    pub fn apply(&mut self, id: &Identity, budget: &Budget) -> Result<(), String> {
        let m = id.message().map_err(|e| format!("making the identity message: {e}"))?;
        self.out.write_all(m.as_bytes()).map_err(|e| format!("sending the identity: {e}"))?;
        let who = self.wait_for("APPLIED", budget)?;
        if who != id.machine {
            return Err(format!("the guest applied the identity of {who:?}, not {:?}", id.machine));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::process::{self, Proc};
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn hostnames() {
        assert_eq!(hostname_of("web_1.example"), "web-1-example");
        assert_eq!(hostname_of("__"), "xhyve");
        assert_eq!(hostname_of(&"a".repeat(80)).len(), 63);
    }

    /// A guest that never answers: with its VMM's CPU time as the budget the wait ends once that
    /// much CPU is spent (here by a spinning thread of this process), well before the wall cap.
    #[test]
    fn a_silent_guest_runs_out_of_cpu_budget() {
        let dir = std::env::temp_dir().join(format!("xhyve-identity-cpu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let l = UnixListener::bind(dir.join(SOCKET)).unwrap();
        let silent = std::thread::spawn(move || l.accept().unwrap());
        let mut c = Channel::connect(&dir, Duration::from_secs(5)).unwrap();
        let _peer = silent.join().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spin = {
            let stop = stop.clone();
            std::thread::spawn(move || while !stop.load(std::sync::atomic::Ordering::Relaxed) {})
        };
        let me = std::process::id() as i32;
        let budget = Budget::guest_cpu(
            Duration::from_millis(300),
            Proc { pid: me, start: process::start_time(me).unwrap() },
            Duration::from_secs(60),
        );
        let began = Instant::now();
        let err = c.wait_for("WAITING", &budget).unwrap_err();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spin.join().unwrap();
        assert!(err.contains("of its CPU time"), "{err}");
        assert!(began.elapsed() < Duration::from_secs(30), "{:?}", began.elapsed());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The host's side against a guest played by a thread: WAITING, the message, APPLIED.
    #[test]
    fn waits_sends_and_reads_the_answer() {
        let dir = std::env::temp_dir().join(format!("xhyve-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let l = UnixListener::bind(dir.join(SOCKET)).unwrap();
        let guest = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"noise\nXHYVE-IDENTITY 1 WAITING\n").unwrap();
            let mut got = Vec::new();
            for line in BufReader::new(s).lines() {
                let line = line.unwrap();
                if line == "end" {
                    break;
                }
                got.push(line);
            }
            w.write_all(b"XHYVE-IDENTITY 1 APPLIED 0a1b\n").unwrap();
            got
        });
        let mut c = Channel::connect(&dir, Duration::from_secs(5)).unwrap();
        assert_eq!(c.wait_for("WAITING", &Budget::wall(Duration::from_secs(5))), Ok(String::new()));
        let ipv4 = Ipv4Config {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            router: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
        };
        let id = Identity {
            machine: "0a1b".into(),
            hostname: "h".into(),
            macs: vec!["02:00:00:00:00:01".into()],
            ipv4: Some(ipv4),
        };
        c.apply(&id, &Budget::wall(Duration::from_secs(5))).unwrap();
        let got = guest.join().unwrap();
        let head = ["machine=0a1b", "hostname=h", "mac=02:00:00:00:00:01", "address=10.0.2.15/24", "router=10.0.2.2"];
        assert_eq!(&got[..6], [&head[..], &["dns=10.0.2.3"]].concat());
        assert!(got[6].starts_with("time=") && got[7].len() == "seed=".len() + 2 * SEED_BYTES);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
