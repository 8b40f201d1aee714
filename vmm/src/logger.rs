//! The VMM's messages to the user: one line each on stderr, prefixed with the program's name.
//! Every module logs through here, so none depends on the VM's code for it.

pub fn log(msg: impl AsRef<str>) {
    eprintln!("xhyve: {}", msg.as_ref());
}
