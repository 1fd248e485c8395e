//! The sockets VRRP needs: a raw IP protocol 112 socket per family for the adverts, and
//! the sockets that announce held addresses (gratuitous ARP on an AF_PACKET socket,
//! unsolicited neighbour advertisements on an ICMPv6 raw socket). Frame layouts are pure
//! functions, tested apart from the sockets.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::io::unix::AsyncFd;

use super::packet::{GROUP_V4, GROUP_V6, HOP_LIMIT, PROTO_VRRP};

/// All-nodes multicast: where unsolicited neighbour advertisements go.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ETH_P_ARP: u16 = 0x0806;
/// Where the VRRP checksum is, for the kernel to fill in (IPV6_CHECKSUM).
const CHECKSUM_OFFSET: libc::c_int = 6;

/// An advert as it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub source: IpAddr,
    pub destination: IpAddr,
    /// TTL / hop limit: 255 unless a router forwarded it (then it must be dropped).
    pub hop_limit: u8,
    /// The VRRP message.
    pub message: Vec<u8>,
}

/// The raw sockets of one family's instance, bound to the interface; the receiving one
/// is a member of the VRRP group on it.
pub struct AdvertSocket {
    fd: AsyncFd<OwnedFd>,
    /// IPv4 sends from a socket of its own: binding a raw socket to the source address
    /// also filters what it receives by destination, which would drop the group's
    /// adverts.
    sender: Option<OwnedFd>,
    ipv6: bool,
    ifindex: u32,
}

impl AdvertSocket {
    /// IPv4: adverts leave from `source` with TTL 255.
    pub fn open_v4(interface: &str, ifindex: u32, source: Ipv4Addr) -> io::Result<AdvertSocket> {
        let fd = raw_socket(libc::AF_INET, libc::c_int::from(PROTO_VRRP))?;
        bind_to_device(&fd, interface)?;
        let membership = libc::ip_mreqn {
            imr_multiaddr: in_addr(GROUP_V4),
            imr_address: in_addr(Ipv4Addr::UNSPECIFIED),
            imr_ifindex: ifindex as libc::c_int,
        };
        set_option(&fd, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &membership)?;
        let sender = raw_socket(libc::AF_INET, libc::c_int::from(PROTO_VRRP))?;
        bind_to_device(&sender, interface)?;
        receive_nothing(&sender)?;
        set_option(
            &sender,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            &membership,
        )?;
        let hops = libc::c_int::from(HOP_LIMIT);
        set_option(&sender, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, &hops)?;
        set_option(&sender, libc::IPPROTO_IP, libc::IP_TTL, &hops)?;
        set_option(&sender, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, &0)?;
        let address = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: in_addr(source),
            sin_zero: [0; 8],
        };
        // SAFETY: `address` is a valid sockaddr_in of the length given.
        check(unsafe {
            libc::bind(
                sender.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
        Ok(AdvertSocket {
            fd: register(fd)?,
            sender: Some(sender),
            ipv6: false,
            ifindex,
        })
    }

    /// IPv6: the kernel picks the (link-local) source and fills in the checksum, as only
    /// it knows the source when the advert leaves.
    pub fn open_v6(interface: &str, ifindex: u32) -> io::Result<AdvertSocket> {
        let fd = raw_socket(libc::AF_INET6, libc::c_int::from(PROTO_VRRP))?;
        bind_to_device(&fd, interface)?;
        let membership = libc::ipv6_mreq {
            ipv6mr_multiaddr: in6_addr(GROUP_V6),
            ipv6mr_interface: ifindex,
        };
        set_option(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_ADD_MEMBERSHIP,
            &membership,
        )?;
        let index = ifindex as libc::c_int;
        set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)?;
        let hops = libc::c_int::from(HOP_LIMIT);
        set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops)?;
        set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &hops)?;
        set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, &0)?;
        set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, &1)?;
        set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, &1)?;
        set_option(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_CHECKSUM,
            &CHECKSUM_OFFSET,
        )?;
        Ok(AdvertSocket {
            fd: register(fd)?,
            sender: None,
            ipv6: true,
            ifindex,
        })
    }

    pub fn send(&self, message: &[u8], destination: IpAddr) -> io::Result<()> {
        let (address, len) = sockaddr(destination, self.ifindex);
        let fd = self.sender.as_ref().unwrap_or(self.fd.get_ref());
        send_to(fd, message, (&raw const address).cast(), len as usize)
    }

    /// The next advert (of any VRID) that arrives on the interface.
    pub async fn recv(&self) -> io::Result<Received> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| self.recv_now(fd.get_ref())) {
                Ok(Ok(Some(received))) => return Ok(received),
                // Not a usable packet (truncated header): wait for the next one.
                Ok(Ok(None)) => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }

    fn recv_now(&self, fd: &OwnedFd) -> io::Result<Option<Received>> {
        let mut buffer = [0u8; 2048];
        let mut control = [0u64; 32];
        // SAFETY: all-zero is a valid sockaddr_in6 and msghdr.
        let mut name: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_name = (&raw mut name).cast();
        header.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        header.msg_iov = &raw mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = size_of::<[u64; 32]>();
        // SAFETY: every pointer in `header` is valid for the lengths it gives.
        let len = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut header, 0) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let packet = &buffer[..len as usize];
        if !self.ipv6 {
            return Ok(parse_ipv4(packet));
        }
        let mut hop_limit = None;
        let mut destination = None;
        // SAFETY: the kernel filled `control` with well-formed control messages up to
        // `msg_controllen`; the CMSG macros stay inside it.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&raw const header);
            while !cmsg.is_null() {
                let data = libc::CMSG_DATA(cmsg);
                match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                    (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                        let value = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                        hop_limit = u8::try_from(value).ok();
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                        let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                        destination = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                    }
                    _ => {}
                }
                cmsg = libc::CMSG_NXTHDR(&raw const header, cmsg);
            }
        }
        let (Some(hop_limit), Some(destination)) = (hop_limit, destination) else {
            return Ok(None);
        };
        Ok(Some(Received {
            source: IpAddr::V6(Ipv6Addr::from(name.sin6_addr.s6_addr)),
            destination: IpAddr::V6(destination),
            hop_limit,
            message: packet.to_vec(),
        }))
    }
}

/// An IPv4 packet as a raw socket delivers it (header included).
fn parse_ipv4(packet: &[u8]) -> Option<Received> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    if header_len < 20 || packet.len() < header_len {
        return None;
    }
    let address = |at: usize| {
        IpAddr::V4(Ipv4Addr::new(
            packet[at],
            packet[at + 1],
            packet[at + 2],
            packet[at + 3],
        ))
    };
    Some(Received {
        source: address(12),
        destination: address(16),
        hop_limit: packet[8],
        message: packet[header_len..].to_vec(),
    })
}

/// Announces held addresses so that neighbours move them to this node's MAC address.
pub struct Announcer {
    /// AF_PACKET, for gratuitous ARP.
    arp: Option<OwnedFd>,
    /// ICMPv6 raw socket, for unsolicited neighbour advertisements.
    nd: Option<OwnedFd>,
    ifindex: u32,
    mac: [u8; 6],
}

impl Announcer {
    pub fn open(
        interface: &str,
        ifindex: u32,
        mac: [u8; 6],
        ipv4: bool,
        ipv6: bool,
    ) -> io::Result<Announcer> {
        let arp = if ipv4 {
            // Protocol 0: it only sends, so it receives nothing.
            Some(raw_socket(libc::AF_PACKET, 0)?)
        } else {
            None
        };
        let nd = if ipv6 {
            let fd = raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6)?;
            bind_to_device(&fd, interface)?;
            let index = ifindex as libc::c_int;
            set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)?;
            let hops = libc::c_int::from(HOP_LIMIT);
            set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops)?;
            Some(fd)
        } else {
            None
        };
        Ok(Announcer {
            arp,
            nd,
            ifindex,
            mac,
        })
    }

    /// One gratuitous ARP (IPv4) or unsolicited NA (IPv6) for `address`.
    pub fn announce(&self, address: IpAddr) -> io::Result<()> {
        let unsupported =
            || io::Error::new(io::ErrorKind::Unsupported, "no socket for this family");
        match address {
            IpAddr::V4(v4) => {
                let fd = self.arp.as_ref().ok_or_else(unsupported)?;
                let frame = gratuitous_arp(self.mac, v4);
                // SAFETY: all-zero is a valid sockaddr_ll.
                let mut link: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                link.sll_family = libc::AF_PACKET as u16;
                link.sll_protocol = ETH_P_ARP.to_be();
                link.sll_ifindex = self.ifindex as libc::c_int;
                link.sll_halen = 6;
                link.sll_addr[..6].copy_from_slice(&[0xff; 6]);
                send_to(
                    fd,
                    &frame,
                    (&raw const link).cast(),
                    size_of::<libc::sockaddr_ll>(),
                )
            }
            IpAddr::V6(v6) => {
                let fd = self.nd.as_ref().ok_or_else(unsupported)?;
                let message = unsolicited_na(self.mac, v6);
                let (destination, len) = sockaddr(IpAddr::V6(ALL_NODES), self.ifindex);
                send_to(fd, &message, (&raw const destination).cast(), len as usize)
            }
        }
    }
}

/// A gratuitous ARP request (sender and target both `address`), broadcast, as Linux
/// and keepalived send them: every neighbour with an entry for `address` updates it.
pub fn gratuitous_arp(mac: [u8; 6], address: Ipv4Addr) -> [u8; 42] {
    let mut frame = [0u8; 42];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet (1), IPv4, address lengths 6 and 4, request (1).
    frame[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&address.octets());
    frame[38..42].copy_from_slice(&address.octets());
    frame
}

/// An unsolicited neighbour advertisement (RFC 4861 §7.2.6) for `target` with the
/// override flag and the target link-layer address; the kernel adds the checksum.
pub fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut message = [0u8; 32];
    message[0] = 136; // Neighbor Advertisement, code 0
    message[4] = 0x20; // Override
    message[8..24].copy_from_slice(&target.octets());
    message[24] = 2; // Target Link-Layer Address option, 1 unit of 8 bytes
    message[25] = 1;
    message[26..32].copy_from_slice(&mac);
    message
}

/// Whether `interface` is up with a carrier (IFF_UP and IFF_RUNNING).
pub fn interface_running(interface: &str) -> io::Result<bool> {
    let fd = {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = check(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: `raw` is a socket this function owns from here on.
        unsafe { OwnedFd::from_raw_fd(raw) }
    };
    // SAFETY: all-zero is a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = CString::new(interface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name = name.as_bytes_with_nul();
    if name.len() > request.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `request` is a valid ifreq naming the interface.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut request) })?;
    // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
    let flags = libc::c_int::from(unsafe { request.ifr_ifru.ifru_flags });
    Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same
    // for the AsyncFd's whole life.
    unsafe { AsyncFd::register(fd) }.map_err(|err| err.into_parts().1)
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn raw_socket(domain: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    let kind = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = check(unsafe { libc::socket(domain, kind, protocol) })?;
    // SAFETY: `raw` is a new socket nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a T of the length given.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A socket filter that drops every packet: for sockets that only send.
fn receive_nothing(fd: &OwnedFd) -> io::Result<()> {
    let mut drop_all = [libc::sock_filter {
        code: 0x06, // BPF_RET | BPF_K
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let program = libc::sock_fprog {
        len: 1,
        filter: drop_all.as_mut_ptr(),
    };
    set_option(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program)
}

fn bind_to_device(fd: &OwnedFd, interface: &str) -> io::Result<()> {
    // SAFETY: `interface` is valid for the length given (no NUL needed).
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_ptr().cast(),
            interface.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn send_to(
    fd: &OwnedFd,
    bytes: &[u8],
    address: *const libc::sockaddr,
    len: usize,
) -> io::Result<()> {
    // SAFETY: `bytes` is valid for its length; the caller passes a valid address of `len`.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            address,
            len as libc::socklen_t,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn in_addr(address: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from_ne_bytes(address.octets()),
    }
}

fn in6_addr(address: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: address.octets(),
    }
}

/// A socket address for `destination`; link-local scopes name the interface.
fn sockaddr(destination: IpAddr, ifindex: u32) -> (libc::sockaddr_in6, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_in6 (and, in its first bytes, sockaddr_in).
    let mut storage: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    match destination {
        IpAddr::V4(v4) => {
            let address = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: in_addr(v4),
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in is smaller than sockaddr_in6; both are plain data.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), address) };
            (storage, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        IpAddr::V6(v6) => {
            storage.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            storage.sin6_addr = in6_addr(v6);
            let segment = v6.segments()[0];
            if segment & 0xffc0 == 0xfe80 || segment & 0xff0f == 0xff02 {
                storage.sin6_scope_id = ifindex;
            }
            (storage, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02];

    #[test]
    fn gratuitous_arp_layout() {
        let frame = gratuitous_arp(MAC, Ipv4Addr::new(198, 19, 0, 10));
        let mut expected = vec![0xff; 6];
        expected.extend_from_slice(&MAC);
        expected.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        expected.extend_from_slice(&MAC);
        expected.extend_from_slice(&[198, 19, 0, 10, 0, 0, 0, 0, 0, 0, 198, 19, 0, 10]);
        assert_eq!(frame.as_slice(), expected.as_slice());
    }

    #[test]
    fn unsolicited_na_layout() {
        let target: Ipv6Addr = "2001:db8:0:ff::10".parse().unwrap();
        let message = unsolicited_na(MAC, target);
        assert_eq!(&message[..8], &[136, 0, 0, 0, 0x20, 0, 0, 0]);
        assert_eq!(&message[8..24], &target.octets());
        assert_eq!(&message[24..], &[2, 1, 0x02, 0x00, 0xc6, 0x12, 0x00, 0x02]);
    }

    #[test]
    fn ipv4_header_is_parsed_and_stripped() {
        let mut packet = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 255, 112, 0, 0];
        packet.extend_from_slice(&[198, 18, 0, 2, 224, 0, 0, 18]);
        packet.extend_from_slice(&[0x31, 51]);
        let received = parse_ipv4(&packet).expect("parsed");
        assert_eq!(received.source, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(received.destination, IpAddr::V4(GROUP_V4));
        assert_eq!(received.hop_limit, 255);
        assert_eq!(received.message, [0x31, 51]);
        assert_eq!(parse_ipv4(&packet[..19]), None);
        assert_eq!(parse_ipv4(&[]), None);
        assert_eq!(parse_ipv4(&[0x44; 30]), None);
    }
}
