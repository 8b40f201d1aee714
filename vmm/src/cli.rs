//! bhyve/xhyve command line: flags, their checks, and the usage text.
//!
//! Every problem is reported as one line naming the flag, before any VM exists.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use uuid::Uuid;

use crate::config::{check_readable, Boot, Bootrom, Config, ConsoleTarget, DeviceConfig, PciSlot};

pub const USAGE: &str = "\
usage: xhyve [-AHMPuvw] [-c vcpus] [-l <lpc>] [-m mem] [-s <pci>] [-U uuid]
             [--control PATH] [--restore PATH] -f <fw>
       -A: create ACPI tables (and an ACPI power button: SIGTERM presses it; and pvpanic)
       -c: number of vCPUs (default 1)
       -f: kexec,KERNEL,INITRD,\"CMDLINE\"   boot a Linux bzImage or vmlinux directly
           (INITRD may be empty); a bzImage's payload and compressed initrd members (gzip,
           zstd, xz, lzma, bzip2, lz4) are decompressed on the host; XHYVE_HOST_DECOMPRESS=off
           leaves that to the guest kernel
           bootrom,FIRMWARE[,VARS]   boot UEFI firmware (OVMF_CODE*.fd with a VARS file that
           keeps the variables, or OVMF.fd alone); needs -s 0,hostbridge -s 31,lpc
       -h: help
       --features: what this build supports, as one JSON line (read by xhyve-provider)
       -H: vCPUs sleep in the host on HLT (always so with KVM)
       -l: com1|com2,stdio | com1|com2,autopty | com1|com2,log=PATH | bootrom,FIRMWARE[,VARS]
       -m: memory size, SIZE[K|M|G] (MiB when no suffix; default 256M)
       -M: print the MAC address derived from -U (the first network device's) and exit
       -P: vCPUs yield on PAUSE loops (always so with KVM)
       -s: <slot[:func],emul[,conf]>  PCI device; emul: hostbridge, amd_hostbridge, lpc,
           virtio-blk,PATH[,ro][,format=raw|qcow2][,sectorsize=N[/PHYS]], virtio-rnd,
           virtio-console[,stdio|autopty|log=PATH|socket=PATH], virtio-vsock,cid=N,socket=PATH,
           virtio-net,user[,hostfwd=tcp:ADDR:HOSTPORT-:GUESTPORT]...[,mac=MAC] (user-mode
           network, libslirp: guest 10.0.2.15/24 by DHCP, host's 127.0.0.1 at 10.0.2.2, DNS
           10.0.2.3; `passt` instead of `user`: the same through passt),
           virtio-net,socket=PATH[,mac=MAC] (a port of the Ethernet switch on the unix
           SOCK_SEQPACKET socket PATH: one frame per message),
           virtio-tap,TAPNAME[,mac=MAC] (an existing TAP device); the Nth network device's MAC
           comes from -U and N; with PCI devices and slot 0 free, a hostbridge is at 0:0
       -u: RTC keeps UTC (default: local time)
       -U: UUID (pins the MAC address)
       -v: alone: print the version; with a VM: verbose (platform fix-up and KVM counters at exit)
       -w: ignore accesses to unimplemented MSRs (reads return 0)
       --control PATH: serve the VM's control socket at PATH (one command a line: status,
           pause, resume, save PATH, quit; each answered ok [DETAIL] or error MESSAGE)
       --restore PATH: carry on from the snapshot at PATH (written by `save`) instead of
           booting; the other flags must describe the same machine (memory, vCPUs, devices)
exit status: 0 rebooted, 1 powered off, 2 halted, 3 triple fault, 4 error, 5 quit (control socket),
             6 guest kernel panic (pvpanic); 4 includes a system call a seccomp filter forbids
signals: SIGTERM presses the ACPI power button (with -A); a second SIGTERM, or no power-off
         within XHYVE_SHUTDOWN_TIMEOUT seconds (default 120), ends the VM (status 1)
sandbox: every thread runs under a seccomp allow-list once the VM is set up;
         XHYVE_SECCOMP=on (default) | log (make and log forbidden calls: dmesg) | off;
         descriptors inherited beyond 0-2 are closed then (close-on-exec from the start)
";

pub const DEFAULT_MEM: u64 = 256 << 20;
/// The largest vCPU count our MP table and APIC IDs can express.
const MAX_CPUS_LAYOUT: usize = 254;

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    /// `--features`: what this build supports, as one JSON line (for the provider).
    Features,
    Version,
    PrintMac(Uuid),
}

/// A command-line problem: the flag (as typed) and what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub struct CliError {
    pub flag: String,
    pub problem: String,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.flag, self.problem)
    }
}

fn bad(flag: impl Into<String>, problem: impl Into<String>) -> CliError {
    CliError { flag: flag.into(), problem: problem.into() }
}

/// Parses argv (without the program name). `max_cpus` is asked only when `-c` is given.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    max_cpus: impl FnOnce() -> Result<usize, String>,
) -> Result<Command, CliError> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut mem_bytes = DEFAULT_MEM;
    let mut cpus: Option<(String, u64)> = None;
    let (mut acpi, mut rtc_utc, mut ignore_msrs, mut verbose, mut print_mac) = (false, false, false, false, false);
    let mut uuid = None;
    let (mut com1, mut com2) = (None, None);
    let mut slots: Vec<PciSlot> = Vec::new();
    let mut boot = None;
    let (mut control, mut restore) = (None, None);
    let mut any_vm_flag = false;

    while let Some(arg) = p.next().map_err(|e| bad("command line", e.to_string()))? {
        let (short, flag) = match arg {
            Short(c) => (Some(c), format!("-{c}")),
            Long(l) => (None, format!("--{l}")),
            Value(v) => return Err(bad(v.to_string_lossy(), "unexpected argument (flags only)")),
        };
        let mut value = || -> Result<String, CliError> {
            let v = p.value().map_err(|_| bad(&flag, "needs a value"))?;
            v.into_string().map_err(|_| bad(&flag, "value is not valid UTF-8"))
        };
        if flag == xhyve_contract::features::FLAG {
            return Ok(Command::Features);
        }
        match flag.as_str() {
            "--control" => {
                control = Some(PathBuf::from(value()?));
                any_vm_flag = true;
                continue;
            }
            "--restore" => {
                let v = value()?;
                check_readable(&v).map_err(|e| bad(format!("--restore {v}"), e))?;
                restore = Some(PathBuf::from(v));
                any_vm_flag = true;
                continue;
            }
            _ => {}
        }
        match short {
            Some('h') => return Ok(Command::Help),
            Some('v') => verbose = true,
            Some('A') => acpi = true,
            // KVM always blocks a halted vCPU in the host and handles PAUSE loops in the kernel.
            Some('H') | Some('P') => {}
            Some('u') => rtc_utc = true,
            Some('w') => ignore_msrs = true,
            Some('M') => print_mac = true,
            Some('m') => {
                let v = value()?;
                mem_bytes = parse_size(&v).map_err(|e| bad(format!("-m {v}"), e))?;
            }
            Some('c') => {
                let v = value()?;
                let n: u64 = v.parse().map_err(|_| bad(format!("-c {v}"), "not a number of vCPUs"))?;
                cpus = Some((v, n));
            }
            Some('U') => {
                let v = value()?;
                uuid = Some(Uuid::parse_str(&v).map_err(|_| bad(format!("-U {v}"), "malformed UUID"))?);
            }
            Some('l') => {
                let v = value()?;
                // Firmware errors name the file themselves.
                let shown = if first_field(&v) == "bootrom" { "bootrom" } else { &v };
                match parse_lpc(&v).map_err(|e| bad(format!("-l {shown}"), e))? {
                    Lpc::Com(1, target) => com1 = Some(target),
                    Lpc::Com(_, target) => com2 = Some(target),
                    Lpc::Bootrom(b) => boot = Some(Boot::Bootrom(b)),
                }
            }
            Some('s') => {
                let v = value()?;
                let s = parse_slot(&v).map_err(|e| bad(format!("-s {v}"), e))?;
                if let Some(o) = slots.iter().find(|o| o.slot == s.slot && o.func == s.func) {
                    let held = o.device.emulation();
                    return Err(bad(format!("-s {v}"), format!("slot {}:{} already holds {held}", s.slot, s.func)));
                }
                slots.push(s);
            }
            Some('f') => {
                let v = value()?;
                let b = Boot::parse(&v).and_then(check_firmware);
                boot = Some(b.map_err(|e| bad(format!("-f {}", first_field(&v)), e))?);
            }
            _ => return Err(bad(flag, "unknown flag (see xhyve -h)")),
        }
        any_vm_flag |= flag != "-v";
    }

    if print_mac {
        return uuid.map(Command::PrintMac).ok_or_else(|| bad("-M", "needs -U UUID to derive the MAC from"));
    }
    if verbose && !any_vm_flag {
        return Ok(Command::Version);
    }
    let boot =
        boot.ok_or_else(|| bad("-f", "missing: give -f kexec,KERNEL,INITRD,CMDLINE or -f bootrom,FIRMWARE[,VARS]"))?;
    if let Boot::Bootrom(b) = &boot {
        crate::firmware::check_slots(&slots).map_err(|e| bad(format!("-f bootrom,{}", b.firmware.display()), e))?;
        if restore.is_some() {
            // fw_cfg and the flash keep no snapshot state yet, so no firmware machine is saved.
            return Err(bad("--restore", "not supported with -f bootrom yet (firmware machines cannot be saved)"));
        }
    }
    let cpus = match cpus {
        None => 1,
        Some((v, n)) => {
            let flag = format!("-c {v}");
            if n == 0 {
                return Err(bad(flag, "at least 1 vCPU"));
            }
            let host = max_cpus().map_err(|e| bad(&flag, e))?.min(MAX_CPUS_LAYOUT);
            if n > host as u64 {
                return Err(bad(flag, format!("more vCPUs than this host allows ({host})")));
            }
            n as u8
        }
    };
    Ok(Command::Run(Box::new(Config {
        mem_bytes,
        cpus,
        acpi,
        uuid,
        com1,
        com2,
        slots,
        boot,
        rtc_utc,
        ignore_msrs,
        verbose,
        control,
        restore,
    })))
}

/// `SIZE[K|M|G|T]`, MiB without a suffix, as bhyve; at least 1 MiB, page aligned.
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix '{c}' (K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1 << 20),
    };
    let n: u64 = num.parse().map_err(|_| "not a size (SIZE[K|M|G])".to_string())?;
    let bytes = n.checked_mul(mult).ok_or("size too large")?;
    if bytes < 1 << 20 {
        return Err("memory size must be at least 1M".into());
    }
    if bytes % 4096 != 0 {
        return Err("memory size must be a multiple of 4K".into());
    }
    Ok(bytes)
}

/// What an `-l` option configures.
enum Lpc {
    Com(u8, ConsoleTarget),
    Bootrom(Bootrom),
}

fn parse_lpc(s: &str) -> Result<Lpc, String> {
    let (dev, target) = s.split_once(',').ok_or("expected com1,TARGET or bootrom,FIRMWARE[,VARS]")?;
    let port = match dev {
        "com1" => 1,
        "com2" => 2,
        "bootrom" => return Bootrom::parse(target).and_then(|b| crate::firmware::check(&b).map(|_| Lpc::Bootrom(b))),
        _ => return Err(format!("unknown LPC device '{dev}' (com1, com2, bootrom)")),
    };
    let target =
        ConsoleTarget::parse(target).ok_or_else(|| format!("unknown target '{target}' (stdio, autopty, log=PATH)"))?;
    Ok(Lpc::Com(port, target))
}

/// Checks firmware images as the command line is parsed (kind, size, VARS writable).
fn check_firmware(boot: Boot) -> Result<Boot, String> {
    if let Boot::Bootrom(b) = &boot {
        crate::firmware::check(b)?;
    }
    Ok(boot)
}

fn parse_slot(s: &str) -> Result<PciSlot, String> {
    let mut parts = s.splitn(3, ',');
    let loc = parts.next().unwrap_or_default();
    let emul = parts.next().ok_or("expected SLOT[:FUNC],EMUL[,CONF]")?;
    let conf = parts.next().map(str::to_string);
    let (slot, func) = match loc.split_once(':') {
        Some((s, f)) => (s, f),
        None => (loc, "0"),
    };
    let slot: u8 = slot.parse().ok().filter(|s| *s < 32).ok_or("slot must be 0-31")?;
    let func: u8 = func.parse().ok().filter(|f| *f < 8).ok_or("function must be 0-7")?;
    Ok(PciSlot { slot, func, device: DeviceConfig::parse(emul, conf.as_deref())? })
}

fn first_field(s: &str) -> &str {
    s.split(',').next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(OsString::from), || Ok(4))
    }

    fn kernel() -> String {
        // Any readable, non-empty regular file will do as a "kernel" for parsing.
        std::env::current_exe().unwrap().to_string_lossy().into_owned()
    }

    fn config(args: &[&str]) -> Config {
        match run(args).unwrap() {
            Command::Run(c) => *c,
            other => panic!("expected a VM, got {other:?}"),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512"), Ok(512 << 20));
        assert_eq!(parse_size("4096K"), Ok(4 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn full_command_line() {
        let f = format!("kexec,{},,\"console=ttyS0 quiet\"", kernel());
        let c = config(&[
            "-A",
            "-u",
            "-c",
            "2",
            "-m",
            "1G",
            "-s",
            "0,hostbridge",
            "-s",
            "31,lpc",
            "-l",
            "com1,log=/tmp/x.log",
            "-U",
            "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01",
            "-f",
            &f,
        ]);
        assert!(c.acpi && c.rtc_utc && !c.verbose);
        assert_eq!((c.cpus, c.mem_bytes), (2, 1 << 30));
        assert_eq!(c.com1, Some(ConsoleTarget::Log("/tmp/x.log".into())));
        assert_eq!(c.slots.len(), 2);
        assert_eq!(c.slots[1].slot, 31);
        let Boot::Kexec(k) = &c.boot else { panic!("kexec expected") };
        assert_eq!(k.initrd, None);
        assert_eq!(k.cmdline, "console=ttyS0 quiet");
    }

    #[test]
    fn errors_name_the_flag() {
        let f = format!("kexec,{},,", kernel());
        let e = |args: &[&str]| run(args).unwrap_err();
        assert_eq!(e(&["-m", "0", "-f", &f]).flag, "-m 0");
        assert_eq!(e(&["-c", "0", "-f", &f]).flag, "-c 0");
        assert!(e(&["-c", "5", "-f", &f]).problem.contains("allows (4)"));
        assert_eq!(e(&["-U", "nope", "-f", &f]).problem, "malformed UUID");
        assert_eq!(e(&["-Z"]).flag, "-Z");
        assert!(e(&["-s", "3,floppy", "-f", &f]).problem.contains("valid: hostbridge"));
        assert_eq!(
            e(&["-s", "2,virtio-blk,/nope", "-f", &f]).to_string(),
            "-s 2,virtio-blk,/nope: image /nope: No such file or directory"
        );
        assert!(e(&["-s", "2,virtio-blk", "-f", &f]).problem.contains("missing image path"));
        let k = kernel();
        assert!(e(&["-s", &format!("2,virtio-blk,{k},fast"), "-f", &f]).problem.contains("valid: ro, sectorsize"));
        assert!(e(&["-s", "3,virtio-rnd,x", "-f", &f]).problem.contains("unknown option 'x'"));
        assert_eq!(config(&["-s", &format!("2,virtio-blk,{k},ro"), "-s", "3,virtio-rnd", "-f", &f]).slots.len(), 2);
        assert!(e(&["-s", "0,lpc", "-s", "0,hostbridge", "-f", &f]).problem.contains("already holds"));
        assert!(e(&["-f", "kexec,/nonexistent,,"]).problem.contains("No such file"));
        assert!(e(&["-f", "bootrom,/x"]).problem.contains("No such file"));
        assert!(e(&["-f", "boot,/x"]).problem.contains("(kexec, bootrom)"));
        assert_eq!(e(&["-A"]).flag, "-f");
    }

    #[test]
    fn control_and_restore() {
        let f = format!("kexec,{},,", kernel());
        let k = kernel();
        let c = config(&["--control", "/run/x.sock", "--restore", &k, "-f", &f]);
        assert_eq!(c.control, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(c.restore, Some(PathBuf::from(&k)));
        let e = run(&["--restore", "/nonexistent.snap", "-f", &f]).unwrap_err();
        assert_eq!(e.to_string(), "--restore /nonexistent.snap: No such file or directory");
        assert_eq!(run(&["--control"]).unwrap_err().to_string(), "--control: needs a value");
    }

    #[test]
    fn version_help_and_mac() {
        assert!(matches!(run(&["-v"]), Ok(Command::Version)));
        assert!(matches!(run(&["-h"]), Ok(Command::Help)));
        assert!(matches!(run(&["--features"]), Ok(Command::Features)));
        assert!(matches!(run(&["-M", "-U", "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01"]), Ok(Command::PrintMac(_))));
        assert_eq!(run(&["-M"]).unwrap_err().flag, "-M");
    }
}
