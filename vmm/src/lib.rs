//! `xhyve`: a bhyve/xhyve-compatible VMM. One process runs one VM.
//!
//! The library is the whole VMM: the `xhyve` binary only hands its command line to
//! [`run_command_line`], which parses it (`cli`, into a `config::Config`), builds the VM
//! (`builder`) and runs it until it ends (`vm`). `config` and `virtio` are public for the fuzz
//! targets (vmm/fuzz), which drive the devices' queue handling with hostile guest memory;
//! `fuzzing` holds their entry points into the parts that are not public (PCI, PVM fix-ups).

mod acpi;
mod boot;
mod builder;
mod bus;
mod cli;
pub mod config;
mod console_io;
mod control;
mod cpuid;
mod devices;
pub mod disk;
mod exit;
mod firmware;
pub mod fuzzing;
mod hypervisor;
mod layout;
mod logger;
mod memory;
mod net;
mod os_error;
mod pause;
mod pci;
mod profile;
mod pvm;
mod sandbox;
mod snapshot;
mod vcpu;
pub mod virtio;
mod vm;
mod vm_control;
mod wait;

use std::ffi::OsString;
use std::io::Write;

use cli::Command;
use exit::ExitReason;
use xhyve_contract::mac;

/// Runs bhyve-style `args` (without the program name): parses them, then prints help, the
/// version or a MAC, or runs the VM. Returns the process exit status (bhyve's, see `exit`).
pub fn run_command_line(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cmd = cli::parse(args, || hypervisor::max_vcpus().map_err(|e| format!("cannot ask the hypervisor: {e}")));
    match cmd {
        Err(e) => {
            logger::log(e.to_string());
            ExitReason::Error(String::new()).status()
        }
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            0
        }
        Ok(Command::Features) => {
            let features = xhyve_contract::features::Features {
                version: env!("CARGO_PKG_VERSION").into(),
                pci: config::PCI_EMULATIONS.iter().map(|e| e.to_string()).collect(),
                net_backends: ["user", "passt", "socket"].map(String::from).to_vec(),
                boot: vec!["kexec".into(), "bootrom".into()],
                snapshots: true,
                disk_formats: ["raw", "qcow2"].map(String::from).to_vec(),
                guest_kernel_params: if pvm::Pvm::wanted() {
                    pvm::Pvm::guest_kernel_params(hypervisor::tsc_khz().ok())
                } else {
                    Vec::new()
                },
            };
            println!("{}", features.to_line());
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
            // Every failure before the guest starts is an `Error` ending.
            let reason = sandbox::init(cfg.verbose)
                .and_then(|()| builder::build(&cfg))
                .map_or_else(ExitReason::Error, vm::Vmm::run);
            net::passt::kill_all();
            let _ = std::io::stdout().flush();
            logger::log(format!("{reason} (exit status {})", reason.status()));
            reason.status()
        }
    }
}
