//! Unix socket paths longer than `sockaddr_un` holds (107 bytes): a machine's home can be deep
//! (a test's temporary directory, a long user name), and the switch socket of a named network
//! lives in it. Linux resolves `/proc/self/fd/N/NAME` through the open directory N, so a socket in
//! any directory is reached by a short path while that directory stays open.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The longest path `sockaddr_un` holds (108 bytes with the terminating NUL).
pub const SUN_PATH_MAX: usize = 107;

/// Calls `f` with a path to `path` that fits `sockaddr_un`: `path` itself when it fits, else one
/// through its directory, open while `f` runs (bind and connect resolve it then).
pub fn with_short_path<T>(path: &Path, f: impl FnOnce(&Path) -> T) -> io::Result<T> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok(f(path));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a path to a file"));
    };
    let dir = File::options().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(dir)?;
    let short: PathBuf = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
    if short.as_os_str().len() > SUN_PATH_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the socket's file name is too long"));
    }
    Ok(f(&short))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_socket_in_a_deep_directory() {
        let base = std::env::temp_dir().join(format!("xhyve-unix-path-{}", std::process::id()));
        let deep = base.join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let sock = deep.join("switch.sock");
        assert!(sock.as_os_str().len() > SUN_PATH_MAX);
        let l = with_short_path(&sock, |p| UnixListener::bind(p)).unwrap().unwrap();
        assert!(sock.exists(), "bound at its real path");
        let c = with_short_path(&sock, |p| UnixStream::connect(p)).unwrap().unwrap();
        let (s, _) = l.accept().unwrap();
        drop((c, s));
        let short = base.join("s.sock");
        assert_eq!(with_short_path(&short, |p| p.to_path_buf()).unwrap(), short);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
