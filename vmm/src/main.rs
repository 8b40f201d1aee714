//! `xhyve`: a bhyve/xhyve-compatible VMM. One process runs one VM.

mod acpi;
mod boot;
mod cli;
mod cpuid;
mod devices;
mod exit;
mod hypervisor;
mod layout;
mod mac;
mod memory;
mod net;
mod pci;
mod pvm;
mod vcpu;
mod virtio;
mod vm;

use std::io::Write;

use cli::Command;
use exit::ExitReason;

fn main() {
    let cmd = cli::parse(std::env::args_os().skip(1), || {
        hypervisor::max_vcpus().map_err(|e| format!("cannot ask the hypervisor: {e}"))
    });
    let code = match cmd {
        Err(e) => {
            vm::log(e.to_string());
            ExitReason::Error(String::new()).status()
        }
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            0
        }
        Ok(Command::Version) => {
            println!("xhyve {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(Command::PrintMac(uuid)) => {
            println!("MAC: {}", mac::format_mac(&mac::mac_from_uuid(&uuid)));
            0
        }
        Ok(Command::Run(cfg)) => {
            let reason = vm::run(&cfg);
            net::passt::kill_all();
            let _ = std::io::stdout().flush();
            vm::log(format!("{reason} (exit status {})", reason.status()));
            reason.status()
        }
    };
    std::process::exit(code);
}
