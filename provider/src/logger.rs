//! The daemon's log: one line per event on stderr, stamped with the Unix time
//! (`[SECONDS.MILLIS] message`). A daemon that `call` or `box` started in the background has its
//! stderr in `$XHYVE_HOME/provider.log` (see `client::start_daemon`).
//!
//! Every module logs through here, so none needs the server (or the server any of them) for it.

pub fn log(msg: &str) {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    eprintln!("[{}.{:03}] {msg}", t.as_secs(), t.subsec_millis());
}
