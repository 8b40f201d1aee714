//! `$XHYVE_HOME`: where the daemon keeps its socket, lock, boxes, machines and scratch space.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The directory layout of one provider home.
#[derive(Clone, Debug)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    /// `--home DIR`, else `$XHYVE_HOME`, else `~/.xhyve`.
    pub fn resolve(explicit: Option<PathBuf>) -> io::Result<Home> {
        let root = match explicit {
            Some(p) => p,
            None => match std::env::var_os("XHYVE_HOME").filter(|v| !v.is_empty()) {
                Some(p) => PathBuf::from(p),
                None => {
                    let home = std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "neither XHYVE_HOME nor HOME is set"))?;
                    PathBuf::from(home).join(".xhyve")
                }
            },
        };
        let root = if root.is_absolute() { root } else { std::env::current_dir()?.join(root) };
        Ok(Home { root })
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("provider.sock")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("provider.lock")
    }
    pub fn log_file(&self) -> PathBuf {
        self.root.join("provider.log")
    }
    pub fn boxes(&self) -> PathBuf {
        self.root.join("boxes")
    }
    pub fn machines(&self) -> PathBuf {
        self.root.join("machines")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Creates the home (mode 0700) and its sub-directories. A home that already exists with
    /// access for group or others (a `mkdir` under umask 022) loses it: other local users must
    /// neither list it nor reach the socket, boxes or machines in it.
    pub fn create(&self) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.root)?;
        let mode = fs::metadata(&self.root)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            fs::set_permissions(&self.root, fs::Permissions::from_mode(mode & !0o077))?;
        }
        for d in [self.boxes(), self.machines(), self.tmp()] {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(d)?;
        }
        Ok(())
    }

    /// Takes the home's exclusive lock (flock on `provider.lock`), held as long as the returned
    /// file is open. Refuses with the running daemon's pid when another `serve` holds it.
    pub fn lock(&self) -> io::Result<File> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock_file())?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                let pid = pid.trim();
                let who = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another xhyve-provider is already serving {}{who}; stop it first or use another --home",
                        self.root.display()
                    ),
                ));
            }
            return Err(err);
        }
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.flush()?;
        Ok(f)
    }
}

/// Removes every entry of `dir` (not `dir` itself); used to clear scratch space left by a crash.
pub fn clear_dir(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}
