//! The `xhyve` command line that starts a machine: its devices in xhyve's slots (management
//! network in slot 2, disks after it, then the NICs on named networks), the user-mode port
//! forwards, the control socket and the boot: kexec, UEFI firmware, or `--restore` of a saved
//! state.

use super::record::{DiskFormat, Firmware, MachineRecord, NetworkMode};
use super::{control, efi, identity, ssh};
use crate::error::{code, Error, Result};
use crate::network::named::{Named, Port};
use crate::network::{Shared, Tap};
use std::collections::HashSet;
use std::path::Path;
use xhyve_contract::features::Features;

/// The network device's PCI slot; disks follow it.
pub(super) const NET_SLOT: usize = 2;
/// The most PCI slots disks may take (3..=30; 0 is the host bridge, 2 the network device, 31
/// the LPC bridge).
pub(super) const MAX_DISKS: usize = 28;

/// What `machine.start` runs, and what it notes in vmm.log.
pub(super) struct Launch {
    pub argv: Vec<String>,
    pub notes: Vec<String>,
    /// The host port forwarded to the guest's SSH (network user).
    pub ssh_port: Option<u16>,
    /// The TAP devices of mode shared and of the NICs on bridge networks: deleted again if the
    /// start fails before xhyve runs.
    pub taps: Vec<Tap>,
}

/// The networks a machine's NICs join: mode shared's bridge and the named networks.
pub(super) struct Nets<'a> {
    pub shared: &'a Shared,
    pub named: &'a Named,
}

/// xhyve's flag that resumes a saved state instead of booting.
const RESTORE: &str = "--restore";

/// `taken`: the SSH host ports other machines have recorded; `restore`: the saved state to
/// carry on from.
pub(super) fn launch(
    xhyve: &Path,
    feat: &Features,
    rec: &MachineRecord,
    console: &Path,
    taken: &HashSet<u16>,
    nets: Nets,
    restore: Option<&Path>,
) -> Result<Launch> {
    let Nets { shared: net, named } = nets;
    let vmm_err = |m: String| Error::new(code::VMM_FAILED, m);
    let mut argv: Vec<String> = vec![
        xhyve.display().to_string(),
        "-A".into(),
        "-U".into(),
        rec.uuid.clone(),
        "-c".into(),
        rec.cpus.to_string(),
        "-m".into(),
        rec.memory.to_string(),
    ];
    if feat.has_pci("hostbridge") {
        argv.extend(["-s".into(), "0,hostbridge".into()]);
    }
    if feat.has_pci("lpc") {
        argv.extend(["-s".into(), "31,lpc".into()]);
    }
    let mut notes = Vec::new();
    let mut ssh_port = None;
    let mut taps = Vec::new();
    match rec.network.mode {
        NetworkMode::User if feat.has_pci("virtio-net") => {
            let port =
                ssh::pick_port(rec.ssh_port, taken).map_err(|e| vmm_err(format!("choosing the SSH host port: {e}")))?;
            if rec.ssh_port.is_some_and(|p| p != port) {
                notes.push(format!("SSH host port {} is taken: now {port}", rec.ssh_port.unwrap_or(0)));
            }
            let mut dev = format!("{NET_SLOT},virtio-net,user,hostfwd=tcp:{}:{port}-:{}", ssh::HOST, ssh::GUEST_PORT);
            for f in &rec.network.forwarded_ports {
                dev.push_str(&format!(",hostfwd={}:{}:{}-:{}", f.protocol.as_str(), f.host_ip, f.host, f.guest));
            }
            argv.extend(["-s".into(), dev]);
            ssh_port = Some(port);
        }
        NetworkMode::User => {
            notes.push(format!("{} has no virtio-net: the machine has no network (and no SSH)", xhyve.display()))
        }
        NetworkMode::Shared if feat.has_pci("virtio-tap") => {
            let t = net.prepare(&rec.id)?;
            argv.extend(["-s".into(), format!("{NET_SLOT},virtio-tap,{}", t.name())]);
            if !rec.network.forwarded_ports.is_empty() {
                notes.push("forwarded_ports apply to network user only: in network shared the guest's own address is reachable".into());
            }
            taps.push(t);
        }
        NetworkMode::Shared => {
            notes.push(format!("{} has no virtio-tap: the machine has no network (and no SSH)", xhyve.display()))
        }
        NetworkMode::None => {}
    }
    if feat.has_pci("virtio-blk") {
        for (i, d) in rec.disks.iter().enumerate() {
            let format = if d.format == DiskFormat::Qcow2 { ",format=qcow2" } else { "" };
            argv.extend(["-s".into(), format!("{},virtio-blk,{}{format}", i + NET_SLOT + 1, d.path)]);
        }
    } else if !rec.disks.is_empty() {
        notes.push(format!(
            "{} has no virtio-blk: the machine's {} disk(s) are not attached",
            xhyve.display(),
            rec.disks.len()
        ));
    }
    // After the disks, so that adding NICs moves no disk; each with the MAC of its index.
    for (k, nic) in rec.network.nics.iter().enumerate() {
        let index = u8::try_from(k + 1).map_err(|_| vmm_err("too many NICs".into()))?;
        let mac = crate::nic::nic_mac_of_uuid(&rec.uuid, index)
            .ok_or_else(|| vmm_err(format!("{:?} is not a UUID", rec.uuid)))?;
        let mac = xhyve_contract::mac::format_mac(&mac);
        let slot = NET_SLOT + 1 + rec.disks.len() + k;
        let lacks = |what: &str| {
            vmm_err(format!("{} has no {what}, which the NIC on network {} needs", xhyve.display(), nic.network))
        };
        let dev = match named.port(&nic.network)? {
            Port::Socket(sock) => {
                if !feat.has_pci("virtio-net") || !feat.net_backends.iter().any(|b| b == "socket") {
                    return Err(lacks("virtio-net socket backend"));
                }
                format!("{slot},virtio-net,socket={},mac={mac}", sock.display())
            }
            Port::Bridge(br) => {
                if !feat.has_pci("virtio-tap") {
                    return Err(lacks("virtio-tap"));
                }
                let t = Tap::create(crate::nic::nic_tap_name(&rec.id, index), &br)?;
                let dev = format!("{slot},virtio-tap,{},mac={mac}", t.name());
                taps.push(t);
                dev
            }
        };
        argv.extend(["-s".into(), dev]);
    }
    // The identity channel after every other device (boxes/README.md, "Fast start"); without
    // it the guest is not told of one, and its init skips the identity step.
    let mut cmdline = rec.cmdline.clone();
    if rec.fast_start && feat.has_pci("virtio-console") {
        let slot = NET_SLOT + 1 + rec.disks.len() + rec.network.nics.len();
        argv.extend(["-s".into(), format!("{slot},virtio-console,socket={}", identity::SOCKET)]);
        cmdline = format!("{cmdline} {}", identity::CMDLINE).trim_start().to_string();
    }
    if feat.snapshots {
        // Relative: xhyve runs in the machine's directory, and a long home would not fit a
        // socket address.
        argv.extend(["--control".into(), control::SOCKET.into()]);
    }
    if let Some(state) = restore {
        argv.extend([RESTORE.into(), state.display().to_string()]);
    }
    argv.extend([
        "-l".into(),
        format!("com1,log={}", console.display()),
        "-f".into(),
        boot(xhyve, feat, rec, &cmdline)?,
    ]);
    Ok(Launch { argv, notes, ssh_port, taps })
}

/// `-f`'s value: kexec of the record's kernel, or OVMF with the machine's variable store.
fn boot(xhyve: &Path, feat: &Features, rec: &MachineRecord, cmdline: &str) -> Result<String> {
    let missing =
        |what: &str| Error::new(code::VMM_FAILED, format!("machine {}: {what} (was the box changed?)", rec.id));
    match rec.firmware {
        Firmware::Kexec => {
            let kernel =
                rec.kernel.as_deref().ok_or_else(|| missing("kexec needs a kernel and the record has none"))?;
            Ok(format!("kexec,{kernel},{},{cmdline}", rec.initrd.as_deref().unwrap_or_default()))
        }
        Firmware::Efi => {
            // OVMF's Q35 platform code expects the host bridge and the LPC bridge (slots 0, 31).
            if !feat.boot.iter().any(|b| b == "bootrom") || !feat.has_pci("hostbridge") || !feat.has_pci("lpc") {
                return Err(Error::new(
                    code::VMM_FAILED,
                    format!(
                        "{} cannot boot UEFI firmware (its --features has no bootrom): use a newer xhyve",
                        xhyve.display()
                    ),
                ));
            }
            let vars = rec.efi_vars.as_deref().ok_or_else(|| missing("firmware efi needs its variable store"))?;
            efi::check_boot_disk(&rec.id, &rec.disks)?;
            Ok(format!("bootrom,{},{vars}", efi::code()?.display()))
        }
    }
}

/// `argv` without its `--restore`: how xhyve starts again after a guest reboot.
pub(super) fn without_restore(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == RESTORE {
            it.next();
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Whether `argv` serves xhyve's control socket (an xhyve older than snapshots does not).
pub(super) fn has_control(argv: &[String]) -> bool {
    argv.iter().any(|a| a == "--control")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::record::tests::rec;

    #[test]
    fn control_socket_and_restore() {
        let feat = Features { pci: vec!["hostbridge".into(), "lpc".into()], snapshots: true, ..Default::default() };
        let mut r = rec();
        r.network.mode = NetworkMode::None;
        let home = crate::home::Home { root: std::env::temp_dir().join("xhyve-argv-test") };
        let (net, named) = (Shared::new(&home), Named::new(&home));
        let nets = || Nets { shared: &net, named: &named };
        let state = Path::new("/m/saved.snap");
        let l = launch(Path::new("/x"), &feat, &r, Path::new("/m/console.log"), &HashSet::new(), nets(), Some(state))
            .unwrap();
        assert!(has_control(&l.argv));
        let at = l.argv.iter().position(|a| a == RESTORE).unwrap();
        assert_eq!(l.argv[at + 1], "/m/saved.snap");
        let again = without_restore(&l.argv);
        assert_eq!(again.len(), l.argv.len() - 2);
        assert!(!again.iter().any(|a| a == RESTORE || a == "/m/saved.snap") && has_control(&again));
        let f = |a: &[String]| a[a.iter().position(|a| a == "-f").unwrap() + 1].clone();
        assert_eq!(f(&l.argv), "kexec,/k,,");
        // Firmware: OVMF with the machine's own variable store, only from an xhyve that has it.
        let mut efi = r.clone();
        (efi.firmware, efi.kernel, efi.efi_vars) = (Firmware::Efi, None, Some("/m/efi-vars.fd".into()));
        let disk = std::env::temp_dir().join(format!("xhyve-argv-efi-{}.img", std::process::id()));
        std::fs::write(&disk, efi::tests::fat_disk()).unwrap();
        efi.disks = vec![crate::machines::record::Disk {
            path: disk.display().to_string(),
            source: None,
            owned: true,
            format: DiskFormat::Raw,
        }];
        let fw = Features { boot: vec!["kexec".into(), "bootrom".into()], ..feat.clone() };
        let got = launch(Path::new("/x"), &fw, &efi, Path::new("/c"), &HashSet::new(), nets(), None);
        match efi::code() {
            Ok(code) => assert_eq!(f(&got.unwrap().argv), format!("bootrom,{},/m/efi-vars.fd", code.display())),
            Err(e) => assert_eq!(got.err().unwrap().message, e.message),
        }
        let e = launch(Path::new("/x"), &feat, &efi, Path::new("/c"), &HashSet::new(), nets(), None).err().unwrap();
        assert!(e.message.contains("/x cannot boot UEFI firmware"), "{}", e.message);
        std::fs::remove_file(&disk).unwrap();
        let old = Features { snapshots: false, ..feat };
        let l = launch(Path::new("/x"), &old, &r, Path::new("/c"), &HashSet::new(), nets(), None).unwrap();
        assert!(!has_control(&l.argv));
    }
}
