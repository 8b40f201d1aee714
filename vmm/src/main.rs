//! `xhyve`: a bhyve/xhyve-compatible VMM. One process runs one VM; the VMM is the library.

fn main() {
    std::process::exit(xhyve::run_command_line(std::env::args_os().skip(1)));
}
