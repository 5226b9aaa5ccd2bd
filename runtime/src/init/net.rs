//! Network set-up for the appliance: interface address, netmask, link state
//! and default route with the classic `SIOC*` ioctls (the Debian cloud
//! kernel has `IP_PNP` off, so nothing else configures the network), plus a
//! minimal DHCPv4 client (DISCOVER → OFFER → REQUEST → ACK, RFC 2131) for
//! when the configuration sets no static address.
//!
//! # Why this module uses `unsafe`
//! Setting an interface address and a route has no safe wrapper in `nix`
//! (it would need netlink, which is a dependency of its own); the ioctls
//! take pointers to `ifreq` / `rtentry` structures. Every `unsafe` block
//! below passes a pointer to a fully initialised local structure that lives
//! for the whole call, on a socket descriptor we own; each carries its own
//! `// SAFETY:` reason. Nothing else in the init needs `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// An IPv4 interface configuration, static or leased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Config {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

/// Parses `a.b.c.d/len`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("address `{s}` needs a prefix length (`a.b.c.d/24`)"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("`{len}` is not a prefix length (0 to 32)"))?;
    Ok((addr, len))
}

/// The netmask of a prefix length.
pub fn netmask(prefix_len: u8) -> Ipv4Addr {
    let bits = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    };
    Ipv4Addr::from(bits)
}

/// The prefix length of a netmask (counts leading ones).
pub fn prefix_of(mask: Ipv4Addr) -> u8 {
    // leading_ones of a u32 is at most 32, so it fits.
    u8::try_from(u32::from(mask).leading_ones()).unwrap_or(32)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // sockaddr is plain old data; this is the documented way to pass an IPv4
    // address through the generic socket address type.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name `{name}`"),
        ));
    }
    // SAFETY: ifreq is plain old data (a name array and a union of plain
    // fields); all-zero bytes are a valid value for every member.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn control_socket() -> io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
}

fn ioctl_ifreq(sock: &UdpSocket, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `req` is a valid, initialised ifreq that outlives the call;
    // the SIOC[GS]IF* requests read or write exactly one ifreq.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets or clears `IFF_UP` on `name`.
pub fn set_link_up(name: &str) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    ioctl_ifreq(&sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP as libc::c_short);
    ioctl_ifreq(&sock, libc::SIOCSIFFLAGS, &mut req)
}

/// Gives `name` an address and netmask and brings it up.
pub fn set_address(name: &str, address: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(address);
    ioctl_ifreq(&sock, libc::SIOCSIFADDR, &mut req)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(netmask(prefix_len));
    ioctl_ifreq(&sock, libc::SIOCSIFNETMASK, &mut req)?;
    set_link_up(name)
}

/// The kernel's `struct rtentry` (linux/route.h); libc only defines it for
/// some C libraries.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Adds the default route via `gateway`.
pub fn add_default_route(gateway: Ipv4Addr) -> io::Result<()> {
    let sock = control_socket()?;
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: `rt` is a fully initialised rtentry living across the call;
    // SIOCADDRT reads exactly one rtentry and the null pointers mean "no
    // device, no padding data" to the kernel.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT as _,
            &mut rt as *mut RtEntry,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}

/// Applies a complete configuration to `name`.
pub fn apply(name: &str, cfg: &Ipv4Config) -> io::Result<()> {
    set_address(name, cfg.address, cfg.prefix_len)?;
    if let Some(gw) = cfg.gateway {
        add_default_route(gw)?;
    }
    Ok(())
}

/// The interface's MAC address, from sysfs.
pub fn mac_address(name: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
    parse_mac(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad mac address `{}`", text.trim()),
        )
    })
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

// ---- DHCP -----------------------------------------------------------------

const DHCP_MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// What a DHCP server said in one reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhcpReply {
    pub xid: u32,
    pub message_type: u8,
    pub your_address: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub netmask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: Option<u32>,
}

/// Builds a DHCP DISCOVER or REQUEST (broadcast flag set, so replies come
/// to 255.255.255.255 and reach a socket with no address yet).
pub fn build_message(
    message_type: u8,
    xid: u32,
    mac: [u8; 6],
    requested: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // ethernet
    p[2] = 6; // hardware address length
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&DHCP_MAGIC);
    p.extend_from_slice(&[53, 1, message_type]);
    if let Some((addr, server)) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&addr.octets());
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&server.octets());
    }
    // parameter request list: netmask, router, dns, lease time
    p.extend_from_slice(&[55, 4, 1, 3, 6, 51]);
    p.push(255);
    p
}

/// Parses a BOOTREPLY; `None` for anything that is not one.
pub fn parse_reply(p: &[u8]) -> Option<DhcpReply> {
    if p.len() < 240 || p[0] != 2 || p[236..240] != DHCP_MAGIC {
        return None;
    }
    let ip_at = |b: &[u8]| -> Option<Ipv4Addr> {
        let o: [u8; 4] = b.get(..4)?.try_into().ok()?;
        Some(Ipv4Addr::from(o))
    };
    let mut r = DhcpReply {
        xid: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        your_address: ip_at(&p[16..20]).filter(|a| !a.is_unspecified()),
        ..DhcpReply::default()
    };
    let mut i = 240;
    while i < p.len() {
        let code = p[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(*p.get(i + 1)?);
        let val = p.get(i + 2..i + 2 + len)?;
        match code {
            53 => r.message_type = *val.first()?,
            1 => r.netmask = ip_at(val),
            3 => r.router = ip_at(val),
            6 => r.dns = val.chunks_exact(4).filter_map(ip_at).collect(),
            51 => r.lease_secs = Some(u32::from_be_bytes(val.get(..4)?.try_into().ok()?)),
            54 => r.server_id = ip_at(val),
            _ => {}
        }
        i += 2 + len;
    }
    Some(r)
}

fn receive(sock: &UdpSocket, xid: u32, want: u8, deadline: Instant) -> io::Result<DhcpReply> {
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no dhcp reply"));
        }
        sock.set_read_timeout(Some(left))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no dhcp reply"))
            }
            Err(e) => return Err(e),
        };
        let Some(reply) = buf.get(..n).and_then(parse_reply) else {
            continue;
        };
        if reply.xid != xid {
            continue;
        }
        if reply.message_type == NAK {
            return Err(io::Error::other("dhcp server answered nak"));
        }
        if reply.message_type == want {
            return Ok(reply);
        }
    }
}

/// Runs DHCP on `name` (which must be up) and returns the lease, trying for
/// at most `budget`.
pub fn dhcp(name: &str, budget: Duration) -> io::Result<Ipv4Config> {
    let mac = mac_address(name)?;
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))?;
    sock.set_broadcast(true)?;
    nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::BindToDevice,
        &std::ffi::OsString::from(name),
    )
    .map_err(io::Error::from)?;
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let deadline = Instant::now() + budget;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ attempt.rotate_left(16);
        let step = Instant::now()
            + Duration::from_secs(2).min(deadline.saturating_duration_since(Instant::now()));
        sock.send_to(&build_message(DISCOVER, xid, mac, None), to)?;
        let offer = match receive(&sock, xid, OFFER, step) {
            Ok(o) => o,
            Err(e) if e.kind() == io::ErrorKind::TimedOut && Instant::now() < deadline => continue,
            Err(e) => return Err(e),
        };
        let (Some(addr), Some(server)) = (offer.your_address, offer.server_id) else {
            continue;
        };
        sock.send_to(&build_message(REQUEST, xid, mac, Some((addr, server))), to)?;
        let step = Instant::now()
            + Duration::from_secs(2).min(deadline.saturating_duration_since(Instant::now()));
        let ack = match receive(&sock, xid, ACK, step) {
            Ok(a) => a,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        let address = ack.your_address.unwrap_or(addr);
        return Ok(Ipv4Config {
            address,
            prefix_len: prefix_of(
                ack.netmask
                    .or(offer.netmask)
                    .unwrap_or(Ipv4Addr::new(255, 255, 255, 0)),
            ),
            gateway: ack.router.or(offer.router),
            dns: if ack.dns.is_empty() {
                offer.dns
            } else {
                ack.dns
            },
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn cidr_and_masks() {
        assert_eq!(
            parse_cidr("10.0.2.15/24").unwrap(),
            (Ipv4Addr::new(10, 0, 2, 15), 24)
        );
        assert!(parse_cidr("10.0.2.15").is_err());
        assert!(parse_cidr("10.0.2.15/33").is_err());
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        for len in 0..=32 {
            assert_eq!(prefix_of(netmask(len)), len);
        }
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
    }

    #[test]
    fn dhcp_round_trip_through_a_server_reply() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let req = build_message(
            REQUEST,
            0x1234_5678,
            mac,
            Some((Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2))),
        );
        assert_eq!(req[0], 1);
        assert_eq!(&req[4..8], &0x1234_5678u32.to_be_bytes());
        assert_eq!(&req[28..34], &mac);
        // Turn it into the reply a server (qemu's slirp) would send.
        let mut reply = req[..240].to_vec();
        reply[0] = 2;
        reply[16..20].copy_from_slice(&[10, 0, 2, 15]);
        reply.extend_from_slice(&[
            53, 1, ACK, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 1, 1, 1, 1,
            51, 4, 0, 1, 81, 128, 54, 4, 10, 0, 2, 2, 255,
        ]);
        let r = parse_reply(&reply).unwrap();
        assert_eq!(r.xid, 0x1234_5678);
        assert_eq!(r.message_type, ACK);
        assert_eq!(r.your_address, Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(r.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(r.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            r.dns,
            vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert_eq!(r.lease_secs, Some(86400));
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        // Truncated options are refused, not read past the end.
        assert!(parse_reply(&reply[..reply.len() - 30]).is_none());
        assert!(parse_reply(&reply[..100]).is_none());
    }
}
