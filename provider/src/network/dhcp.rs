//! The DHCP server of a host bridge (the shared network's, a bridge network's): one thread, a
//! UDP socket on port 67 bound to the bridge (SO_BINDTODEVICE), answering DHCPDISCOVER with DHCPOFFER and DHCPREQUEST with DHCPACK (or
//! DHCPNAK when the guest asks for another address than its own), from `Leases`. Replies go to
//! the limited broadcast address on the bridge (the guest has no address yet), or to the guest's
//! address when it renews. Options: subnet mask, router and broadcast address (the bridge), lease
//! time with T1/T2; no DNS server (the daemon runs none).

use super::config::Config;
use super::leases::Leases;
use crate::logger::log;
use crate::nic::Mac;
use dhcproto::v4::{self, DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use xhyve_contract::mac::format_mac;

/// Seconds a lease lasts (the address stays the MAC's anyway); T1 and T2 are the usual 1/2 and
/// 7/8 of it.
pub const LEASE_SECS: u32 = 86400;

/// What one request led to: a reply and where to send it, and a line for the log.
#[derive(Debug)]
pub struct Outcome {
    pub reply: Option<(Message, Ipv4Addr)>,
    pub note: String,
    /// True for packets ignored as malformed or not ours (their notes are rate-limited).
    pub ignored: bool,
}

fn ignored(note: impl Into<String>) -> Outcome {
    Outcome { reply: None, note: note.into(), ignored: true }
}

fn event(note: impl Into<String>) -> Outcome {
    Outcome { reply: None, note: note.into(), ignored: false }
}

fn opt_ip(m: &Message, code: OptionCode) -> Option<Ipv4Addr> {
    match m.opts().get(code)? {
        DhcpOption::ServerIdentifier(ip) | DhcpOption::RequestedIpAddress(ip) => Some(*ip),
        _ => None,
    }
}

/// A reply to `req` of type `t` offering `yiaddr`; with the network's options unless a NAK.
fn reply(req: &Message, cfg: &Config, t: MessageType, yiaddr: Ipv4Addr, lease: bool) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_chaddr(req.chaddr())
        .set_giaddr(req.giaddr())
        .set_yiaddr(yiaddr);
    if t != MessageType::Offer && t != MessageType::Nak {
        m.set_ciaddr(req.ciaddr());
    }
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(t));
    o.insert(DhcpOption::ServerIdentifier(cfg.gateway));
    if t != MessageType::Nak {
        o.insert(DhcpOption::SubnetMask(cfg.netmask()));
        if cfg.router {
            o.insert(DhcpOption::Router(vec![cfg.gateway]));
        }
        o.insert(DhcpOption::BroadcastAddr(cfg.broadcast()));
        if lease {
            o.insert(DhcpOption::AddressLeaseTime(LEASE_SECS));
            o.insert(DhcpOption::Renewal(LEASE_SECS / 2));
            o.insert(DhcpOption::Rebinding(LEASE_SECS / 8 * 7));
        }
    }
    m
}

/// Where a reply goes: the guest's address when it has one (renewing, INFORM), else the limited
/// broadcast address (as NAKs always do).
fn destination(req: &Message, t: MessageType) -> Ipv4Addr {
    if t == MessageType::Nak || req.ciaddr().is_unspecified() {
        Ipv4Addr::BROADCAST
    } else {
        req.ciaddr()
    }
}

/// Options whose length dhcproto's decoder takes for granted (a `debug_assert!` there, a misread
/// without it): (code, length, whether it is exact or a minimum).
const SIZED_OPTIONS: [(u8, usize, bool); 7] =
    [(80, 0, true), (81, 3, false), (94, 3, true), (152, 4, true), (153, 4, true), (154, 4, true), (155, 4, true)];

/// The first option in `options` (the bytes after the magic cookie) whose length breaks
/// `SIZED_OPTIONS`: a guest's message with one is refused before it is decoded.
fn misfit_option(options: &[u8]) -> Option<u8> {
    let mut i = 0;
    while let Some(&code) = options.get(i) {
        match code {
            0 => i += 1,
            255 => return None,
            _ => {
                let len = usize::from(*options.get(i + 1)?);
                let misfit = SIZED_OPTIONS
                    .iter()
                    .any(|&(c, want, exact)| c == code && if exact { len != want } else { len < want });
                if misfit {
                    return Some(code);
                }
                i += 2 + len;
            }
        }
    }
    None
}

/// Handles one datagram that arrived on port 67.
pub fn handle(buf: &[u8], cfg: &Config, leases: &mut Leases, now: u64) -> Outcome {
    if buf.len() < 240 || buf[236..240] != v4::MAGIC {
        return ignored(format!("ignored a {}-byte datagram: not a DHCP message", buf.len()));
    }
    if let Some(code) = misfit_option(&buf[240..]) {
        return ignored(format!("ignored a DHCP message: option {code} has a length it cannot have"));
    }
    let req = match Message::decode(&mut Decoder::new(buf)) {
        Ok(m) => m,
        Err(e) => return ignored(format!("ignored an undecodable DHCP message: {e}")),
    };
    if req.opcode() != Opcode::BootRequest {
        return ignored("ignored a BOOTREPLY (another DHCP server on the bridge?)");
    }
    // Checked before chaddr(): it slices by the wire's hlen.
    if req.htype() != HType::Eth || req.hlen() != 6 {
        return ignored(format!(
            "ignored a request for hardware type {:?} with a {}-byte address (Ethernet only)",
            req.htype(),
            req.hlen()
        ));
    }
    if !req.giaddr().is_unspecified() {
        return ignored(format!("ignored a request relayed by {}", req.giaddr()));
    }
    let mut mac: Mac = [0; 6];
    mac.copy_from_slice(req.chaddr());
    let m = format_mac(&mac);
    let server_id = opt_ip(&req, OptionCode::ServerIdentifier);
    let requested = opt_ip(&req, OptionCode::RequestedIpAddress);
    let ours = server_id.is_none_or(|s| s == cfg.gateway);
    let answer = |t: MessageType, yiaddr: Ipv4Addr, lease: bool, note: String| Outcome {
        reply: Some((reply(&req, cfg, t, yiaddr, lease), destination(&req, t))),
        note,
        ignored: false,
    };
    match req.opts().msg_type() {
        Some(MessageType::Discover) => match leases.address_for(&mac, now) {
            Some(ip) => answer(MessageType::Offer, ip, true, format!("DHCPDISCOVER from {m}: offering {ip}")),
            None => event(format!(
                "DHCPDISCOVER from {m}: no free address left in {} (destroy machines to free some)",
                cfg.cidr()
            )),
        },
        Some(MessageType::Request) => {
            if !ours {
                return event(format!(
                    "DHCPREQUEST from {m} for server {}: not us",
                    server_id.unwrap_or(Ipv4Addr::UNSPECIFIED)
                ));
            }
            let Some(want) = requested.or(Some(req.ciaddr()).filter(|a| !a.is_unspecified())) else {
                return ignored(format!("ignored a DHCPREQUEST from {m} without an address"));
            };
            match leases.address_for(&mac, now) {
                Some(ip) if ip == want => {
                    leases.bind(&mac, now);
                    answer(MessageType::Ack, ip, true, format!("DHCPREQUEST from {m} for {ip}: acknowledged"))
                }
                Some(ip) => answer(
                    MessageType::Nak,
                    Ipv4Addr::UNSPECIFIED,
                    false,
                    format!("DHCPREQUEST from {m} for {want}: refused (NAK), its address is {ip}"),
                ),
                None => answer(
                    MessageType::Nak,
                    Ipv4Addr::UNSPECIFIED,
                    false,
                    format!("DHCPREQUEST from {m} for {want}: refused (NAK), no free address left"),
                ),
            }
        }
        Some(MessageType::Decline) => match requested {
            Some(ip) if ours && leases.decline(&mac, ip) => {
                event(format!("DHCPDECLINE from {m}: {ip} is in use by something else; {m} gets another address"))
            }
            _ => ignored(format!("ignored a DHCPDECLINE from {m} of no address of its")),
        },
        Some(MessageType::Release) => {
            event(format!("DHCPRELEASE from {m} of {}: the address stays its own", req.ciaddr()))
        }
        Some(MessageType::Inform) if !req.ciaddr().is_unspecified() => answer(
            MessageType::Ack,
            Ipv4Addr::UNSPECIFIED,
            false,
            format!("DHCPINFORM from {m} ({}): answered", req.ciaddr()),
        ),
        other => ignored(format!("ignored a DHCP message of type {other:?} from {m}")),
    }
}

/// The bytes of a reply, padded to BOOTP's 300 bytes (some clients drop shorter ones).
pub fn encode(m: &Message) -> io::Result<Vec<u8>> {
    let mut v = m.to_vec().map_err(io::Error::other)?;
    if v.len() < v4::MIN_PACKET_SIZE {
        v.resize(v4::MIN_PACKET_SIZE, 0);
    }
    Ok(v)
}

/// UDP 0.0.0.0:67 bound to `bridge`, allowed to broadcast. No SO_REUSEADDR: a second server on
/// the same bridge (another daemon) gets EADDRINUSE instead of answering alongside.
fn bind(bridge: &str) -> Result<UdpSocket, String> {
    let sys = |what: &str| format!("DHCP socket on {bridge}: {what}: {}", io::Error::last_os_error());
    // SAFETY: plain socket calls on a descriptor we own; option values point to live locals.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(sys("socket"));
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let name = bridge.as_bytes();
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        ) != 0
        {
            return Err(sys("SO_BINDTODEVICE"));
        }
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BROADCAST,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            return Err(sys("SO_BROADCAST"));
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4::SERVER_PORT.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EADDRINUSE) {
                format!("UDP port 67 on {bridge} is taken: another DHCP server serves it (another xhyve-provider, of another XHYVE_HOME? give each its own bridge with XHYVE_BRIDGE and XHYVE_BRIDGE_ADDR)")
            } else {
                format!("DHCP socket on {bridge}: binding UDP port 67: {e}")
            });
        }
        Ok(UdpSocket::from(owned))
    }
}

/// Where the server finds the leases: shared mode loads them on first use, a named network's
/// are loaded with it.
pub trait LeaseCell: Send + Sync + 'static {
    /// Runs `f` on the leases, if they are loaded.
    fn with_leases(&self, f: &mut dyn FnMut(&mut Leases));
}

impl LeaseCell for Mutex<Option<Leases>> {
    fn with_leases(&self, f: &mut dyn FnMut(&mut Leases)) {
        if let Some(l) = self.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f(l)
        }
    }
}

impl LeaseCell for Mutex<Leases> {
    fn with_leases(&self, f: &mut dyn FnMut(&mut Leases)) {
        f(&mut self.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A running DHCP server thread.
pub struct Server {
    ifindex: u32,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Server {
    /// Binds the socket (errors come back here) and starts the thread.
    pub fn start(cfg: Config, ifindex: u32, leases: Arc<dyn LeaseCell>) -> Result<Server, String> {
        let sock = bind(&cfg.bridge)?;
        sock.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| format!("DHCP socket: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("dhcp".into())
            .spawn(move || serve(sock, cfg, leases, flag))
            .map_err(|e| format!("cannot start the DHCP thread: {e}"))?;
        Ok(Server { ifindex, stop, thread })
    }

    /// True while it runs on the bridge with this interface index.
    pub fn serves(&self, ifindex: u32) -> bool {
        self.ifindex == ifindex && !self.thread.is_finished()
    }

    /// Ends the thread (within a second) and closes the socket.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn serve(sock: UdpSocket, cfg: Config, leases: Arc<dyn LeaseCell>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 4096];
    // Notes of ignored packets: at most one per 10 s, with how many were not logged.
    let mut quiet_until = Instant::now();
    let mut unlogged = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                log(&format!("DHCP server on {}: {e}", cfg.bridge));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let mut out = None;
        leases.with_leases(&mut |l| {
            out = Some(handle(&buf[..n], &cfg, l, crate::state::now()));
            if let Err(e) = l.flush() {
                log(&format!("DHCP: cannot write the leases: {e}"));
            }
        });
        let Some(out) = out else { continue };
        if out.ignored {
            let now = Instant::now();
            if now < quiet_until {
                unlogged += 1;
            } else {
                let more = if unlogged > 0 { format!(" ({unlogged} more not logged)") } else { String::new() };
                log(&format!("DHCP: {} (from {from}){more}", out.note));
                quiet_until = now + Duration::from_secs(10);
                unlogged = 0;
            }
        } else {
            log(&format!("DHCP: {}", out.note));
        }
        if let Some((msg, dest)) = out.reply {
            let r = encode(&msg).and_then(|bytes| sock.send_to(&bytes, SocketAddrV4::new(dest, v4::CLIENT_PORT)));
            if let Err(e) = r {
                log(&format!("DHCP: sending to {dest}: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::leases::tests::tempdir;
    use super::*;

    const MAC: Mac = [0xda, 0xad, 0x9b, 0x42, 0x47, 0xcc];

    fn request(t: MessageType, opts: Vec<DhcpOption>, ciaddr: Ipv4Addr) -> Vec<u8> {
        let mut m = Message::new_with_id(
            0x1234_5678,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        m.opts_mut().insert(DhcpOption::MessageType(t));
        for o in opts {
            m.opts_mut().insert(o);
        }
        m.to_vec().unwrap()
    }

    fn setup(tag: &str) -> (std::path::PathBuf, Config, Leases) {
        let dir = tempdir(tag);
        let cfg = Config::default();
        let l = Leases::load(&dir.join("leases.json"), &cfg).unwrap();
        (dir, cfg, l)
    }

    #[test]
    fn options_of_a_length_the_decoder_assumes_otherwise_are_refused() {
        assert_eq!(misfit_option(&[53, 1, 1, 80, 0, 255]), None);
        assert_eq!(misfit_option(&[53, 1, 1, 0, 81, 3, 0, 0, 0, 255]), None);
        assert_eq!(misfit_option(&[53, 1, 1, 155, 2, 0, 0, 255]), Some(155));
        assert_eq!(misfit_option(&[80, 1, 0]), Some(80));
        assert_eq!(misfit_option(&[81, 2, 0, 0]), Some(81));
        assert_eq!(misfit_option(&[94, 9]), Some(94), "its length byte is enough to refuse it");
        assert_eq!(misfit_option(&[12, 200, 1]), None, "a truncated option is the decoder's to refuse");
    }

    fn decoded(o: &Outcome) -> (Message, Ipv4Addr) {
        let (m, dest) = o.reply.clone().unwrap_or_else(|| panic!("no reply: {}", o.note));
        // What goes on the wire parses back the same.
        let bytes = encode(&m).unwrap();
        assert!(bytes.len() >= 300);
        (Message::decode(&mut Decoder::new(&bytes)).unwrap(), dest)
    }

    #[test]
    fn discover_request_ack() {
        let (dir, cfg, mut l) = setup("dora");
        let o = handle(&request(MessageType::Discover, vec![], Ipv4Addr::UNSPECIFIED), &cfg, &mut l, 5);
        let (offer, dest) = decoded(&o);
        assert_eq!(dest, Ipv4Addr::BROADCAST);
        assert_eq!(offer.opcode(), Opcode::BootReply);
        assert_eq!(offer.xid(), 0x1234_5678);
        assert_eq!(offer.chaddr(), &MAC);
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        let ip = offer.yiaddr();
        assert!(cfg.in_pool(ip), "{ip}");
        let opts = offer.opts();
        assert_eq!(opts.get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(cfg.gateway)));
        assert_eq!(opts.get(OptionCode::SubnetMask), Some(&DhcpOption::SubnetMask([255, 255, 255, 0].into())));
        assert_eq!(opts.get(OptionCode::Router), Some(&DhcpOption::Router(vec![cfg.gateway])));
        assert_eq!(opts.get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(LEASE_SECS)));
        assert!(opts.get(OptionCode::DomainNameServer).is_none());
        assert_eq!(l.bound(&MAC), None, "an offer binds nothing");

        let req = request(
            MessageType::Request,
            vec![DhcpOption::RequestedIpAddress(ip), DhcpOption::ServerIdentifier(cfg.gateway)],
            Ipv4Addr::UNSPECIFIED,
        );
        let (ack, dest) = decoded(&handle(&req, &cfg, &mut l, 6));
        assert_eq!(dest, Ipv4Addr::BROADCAST);
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), ip);
        assert_eq!(l.bound(&MAC), Some(ip));
        l.flush().unwrap();

        // A new daemon, a new boot: the same address; a renewal (ciaddr, no option 50) is
        // answered to the guest's address.
        let mut l2 = Leases::load(&dir.join("leases.json"), &cfg).unwrap();
        let (offer2, _) =
            decoded(&handle(&request(MessageType::Discover, vec![], Ipv4Addr::UNSPECIFIED), &cfg, &mut l2, 7));
        assert_eq!(offer2.yiaddr(), ip);
        let (renew, dest) = decoded(&handle(&request(MessageType::Request, vec![], ip), &cfg, &mut l2, 8));
        assert_eq!(
            (renew.opts().msg_type(), renew.yiaddr(), renew.ciaddr(), dest),
            (Some(MessageType::Ack), ip, ip, ip)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wrong_address_is_refused_and_other_servers_are_left_alone() {
        let (dir, cfg, mut l) = setup("nak");
        let ip = l.address_for(&MAC, 0).unwrap();
        let other = Ipv4Addr::from(u32::from(ip) ^ 1);
        // INIT-REBOOT asking for an old address that is not its own: NAK, broadcast.
        let o = handle(
            &request(MessageType::Request, vec![DhcpOption::RequestedIpAddress(other)], Ipv4Addr::UNSPECIFIED),
            &cfg,
            &mut l,
            1,
        );
        let (nak, dest) = decoded(&o);
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!((nak.yiaddr(), dest), (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST));
        assert!(nak.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(o.note.contains("NAK") && o.note.contains(&ip.to_string()), "{}", o.note);
        assert_eq!(l.bound(&MAC), None);
        // A request to another server: silence.
        let o = handle(
            &request(
                MessageType::Request,
                vec![DhcpOption::RequestedIpAddress(ip), DhcpOption::ServerIdentifier([10, 0, 0, 1].into())],
                Ipv4Addr::UNSPECIFIED,
            ),
            &cfg,
            &mut l,
            2,
        );
        assert!(o.reply.is_none() && o.note.contains("not us"), "{o:?}");
        assert_eq!(l.bound(&MAC), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn decline_moves_the_mac_and_release_keeps_it() {
        let (dir, cfg, mut l) = setup("decline");
        let ip = l.address_for(&MAC, 0).unwrap();
        let o = handle(&request(MessageType::Release, vec![], ip), &cfg, &mut l, 1);
        assert!(o.reply.is_none());
        assert_eq!(l.get(&MAC).unwrap().ip, ip);
        let o = handle(
            &request(MessageType::Decline, vec![DhcpOption::RequestedIpAddress(ip)], Ipv4Addr::UNSPECIFIED),
            &cfg,
            &mut l,
            2,
        );
        assert!(o.reply.is_none() && !o.ignored, "{o:?}");
        let (offer, _) =
            decoded(&handle(&request(MessageType::Discover, vec![], Ipv4Addr::UNSPECIFIED), &cfg, &mut l, 3));
        assert_ne!(offer.yiaddr(), ip);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn inform_is_answered_without_a_lease() {
        let (dir, cfg, mut l) = setup("inform");
        let ciaddr = Ipv4Addr::new(192, 168, 64, 77);
        let (ack, dest) = decoded(&handle(&request(MessageType::Inform, vec![], ciaddr), &cfg, &mut l, 1));
        assert_eq!(
            (ack.opts().msg_type(), ack.yiaddr(), dest),
            (Some(MessageType::Ack), Ipv4Addr::UNSPECIFIED, ciaddr)
        );
        assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert_eq!(l.len(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn hostile_packets_are_ignored_without_panicking() {
        let (dir, cfg, mut l) = setup("hostile");
        let good = request(MessageType::Discover, vec![], Ipv4Addr::UNSPECIFIED);
        let mut cases: Vec<Vec<u8>> = vec![vec![], vec![0; 239], vec![0xff; 600], good[..242].to_vec()];
        // hlen beyond chaddr's 16 bytes (dhcproto's chaddr() would slice past it).
        let mut long_hlen = good.clone();
        long_hlen[2] = 200;
        cases.push(long_hlen);
        // Not Ethernet.
        let mut ib = good.clone();
        ib[1] = 32;
        cases.push(ib);
        // A BOOTREPLY, and a relayed request.
        let mut rep = good.clone();
        rep[0] = 2;
        cases.push(rep);
        let mut relayed = good.clone();
        relayed[24..28].copy_from_slice(&[10, 0, 0, 1]);
        cases.push(relayed);
        // Bad magic cookie.
        let mut magic = good.clone();
        magic[236] = 0;
        cases.push(magic);
        // No message type; an option that runs past the end.
        let mut m = Message::new_with_id(
            1,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        cases.push(m.to_vec().unwrap());
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
        let mut trunc = m.to_vec().unwrap();
        trunc.truncate(trunc.len() - 1);
        trunc.extend_from_slice(&[50, 200, 1]);
        for (i, c) in cases.iter().enumerate() {
            let o = handle(c, &cfg, &mut l, 0);
            assert!(o.reply.is_none() && o.ignored, "case {i}: {o:?}");
        }
        assert_eq!(l.len(), 0);
        // dhcproto stops at an option that runs past the end: still a DISCOVER, no panic.
        handle(&trunc, &cfg, &mut l, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
