//! Header parsing: Ethernet (with at most one 802.1Q/802.1ad tag), IPv4 (with options),
//! IPv6 (with hop-by-hop, routing and destination-options headers), TCP, UDP, and the
//! ICMP errors ("destination unreachable", "too big") that quote a flow. The result is
//! the flow as its client sent it, and where its headers are, for the NAT rewrites.

use core::mem::MaybeUninit;

use lb_common::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, PROTO_TCP, PROTO_UDP, VipAddressKey, VipMeta};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

use crate::{
    destinations,
    packet::{ipv4_words, ipv6_words, ptr_at, read, within},
};

use aya_ebpf::programs::XdpContext;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;
/// Extension headers skipped before giving up on finding the transport header.
const IPV6_MAX_EXTENSIONS: usize = 4;

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// ICMP and ICMPv6 headers are 8 bytes before the quoted packet.
const ICMP_HEADER_LEN: usize = 8;

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

/// IPv4 `frags` field: more-fragments flag and fragment offset.
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;

/// What a packet is, as far as the load balancer cares.
///
/// The types here are plain `#[repr(C)]` structs and field-less enums, never Rust enums
/// with data: the NAT program passes them across BPF-to-BPF calls, whose types go into
/// the object's BTF, where an enum with data becomes a union whose members have
/// non-zero offsets — which the kernel rejects, and the whole object loses its BTF.
#[repr(C)]
pub struct Parsed {
    pub kind: Kind,
    /// Written for `Kind::Flow`, and for `Kind::Fragment` (its destination only, the
    /// rest zero); left alone otherwise, so that the fast path stores nothing it will
    /// not read.
    packet: MaybeUninit<Packet>,
}

#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP or UDP, or an ICMP error quoting such a flow.
    Flow,
    /// Not IPv4 or IPv6.
    NotIp,
    /// IP, but nothing the load balancer handles: another destination (checked before
    /// the transport header is read), other protocols, other ICMP.
    NotVip,
    /// Headers cut short or inconsistent.
    Malformed,
    /// An IP fragment: its ports are unknown, only its destination address.
    Fragment,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Packet {
    /// The flow in the client → VIP direction (for a NAT reply: backend → NAT source,
    /// the key of its `NAT_REVERSE` entry).
    pub key: FlowKey,
    /// Offset of the IP header (offsets are kept small: the stack is 512 bytes).
    pub l3: u16,
    /// Offset of the TCP, UDP or ICMP header.
    pub l4: u16,
    /// An ICMP error about the flow, or (`IcmpKind::None`) the flow's own traffic.
    pub icmp: IcmpError,
    /// The TCP flags byte (0 for UDP and ICMP).
    pub tcp_flags: u8,
}

/// What `weir_xdp` hands to `weir_nat` through `NAT_HANDOFF`: the packet, and its NAT
/// VIP when it is for one (else it may be a NAT reply).
#[repr(C)]
pub struct NatHandoff {
    pub packet: Packet,
    pub vip: VipMeta,
    pub vip_found: bool,
}
const _: () = assert!(core::mem::size_of::<NatHandoff>() == lb_common::NAT_HANDOFF_SIZE as usize);

impl Packet {
    /// Whether the packet is an ICMP error about the flow.
    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        self.icmp.kind != IcmpKind::None
    }

    /// The destination address, the only thing known of a fragment.
    #[inline(always)]
    pub fn vip_address(&self) -> VipAddressKey {
        VipAddressKey {
            addr: self.key.dst,
            family: self.key.family,
            _pad: [0; 3],
        }
    }
}

/// An ICMP error quoting a packet of a flow, or `IcmpKind::None`. The quoted packet
/// runs the other way: its source is the flow's `key.dst`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpError {
    pub kind: IcmpKind,
    /// Offsets of the quoted IP and transport headers.
    pub quoted_l3: u16,
    pub quoted_l4: u16,
}

#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// Not an ICMP error: the flow's own traffic.
    None,
    /// "Fragmentation needed" / "packet too big", the only kind DSR forwards.
    TooBig,
    /// The other "destination unreachable" errors, which NAT translates too.
    Unreachable,
}

impl IcmpError {
    /// No ICMP error. The offsets are never read; they are given values the caller
    /// holds in registers anyway, because LLVM turns a run of zero stores into a call
    /// to `memset` (a BPF-to-BPF call on the fast path).
    #[inline(always)]
    fn none(l3: u16, l4: u16) -> IcmpError {
        IcmpError {
            kind: IcmpKind::None,
            quoted_l3: l3,
            quoted_l4: l4,
        }
    }
}

impl Parsed {
    /// The packet of a `Kind::Flow` or `Kind::Fragment`.
    #[inline(always)]
    pub fn packet(&self) -> Option<&Packet> {
        match self.kind {
            // SAFETY: written for these kinds (see the constructors below).
            Kind::Flow | Kind::Fragment => Some(unsafe { self.packet.assume_init_ref() }),
            Kind::NotIp | Kind::NotVip | Kind::Malformed => None,
        }
    }

    /// A packet that is no flow: only its kind matters.
    #[inline(always)]
    fn not_flow(kind: Kind) -> Parsed {
        Parsed {
            kind,
            packet: MaybeUninit::uninit(),
        }
    }

    #[inline(always)]
    fn flow(packet: Packet) -> Parsed {
        Parsed {
            kind: Kind::Flow,
            packet: MaybeUninit::new(packet),
        }
    }

    /// A fragment: only its destination is known.
    #[inline(always)]
    fn fragment(dst: [u32; 4], family: u8) -> Parsed {
        Parsed {
            kind: Kind::Fragment,
            packet: MaybeUninit::new(Packet {
                key: FlowKey {
                    dst,
                    family,
                    ..FlowKey::default()
                },
                l3: 0,
                l4: 0,
                icmp: IcmpError::none(0, 0),
                tcp_flags: 0,
            }),
        }
    }
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::not_flow(Kind::Malformed);
    };
    // SAFETY: `ptr_at` bounds-checked the Ethernet header.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, l3) else {
            return Parsed::not_flow(Kind::Malformed);
        };
        // SAFETY: bounds-checked above.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3 += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => parse_ipv6(ctx, l3),
        _ => Parsed::not_flow(Kind::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(ip) = read::<Ipv4Hdr>(ctx, l3) else {
        return Parsed::not_flow(Kind::Malformed);
    };
    let header_len = (ip.vihl & 0x0f) as usize * 4;
    let total_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip.vihl >> 4 != 4
        || header_len < Ipv4Hdr::LEN
        || total_len < header_len
        || !within(ctx, l3 + total_len)
    {
        return Parsed::not_flow(Kind::Malformed);
    }
    let (src, dst) = (ipv4_words(ip.src_addr), ipv4_words(ip.dst_addr));
    if destinations::is_hosts(&dst) {
        return Parsed::not_flow(Kind::NotVip);
    }
    if u16::from_be_bytes(ip.frags) & IPV4_MF_AND_OFFSET != 0 {
        return Parsed::fragment(dst, FAMILY_IPV4);
    }
    let l4 = l3 + header_len;
    match ip.proto {
        PROTO_TCP | PROTO_UDP => transport(ctx, l3, l4, ip.proto, FAMILY_IPV4, src, dst),
        PROTO_ICMP => icmpv4_error(ctx, l3, l4),
        _ => Parsed::not_flow(Kind::NotVip),
    }
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(ip) = read::<Ipv6Hdr>(ctx, l3) else {
        return Parsed::not_flow(Kind::Malformed);
    };
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    if ip.vcf[0] >> 4 != 6 || !within(ctx, l3 + Ipv6Hdr::LEN + payload_len) {
        return Parsed::not_flow(Kind::Malformed);
    }
    let (src, dst) = (ipv6_words(ip.src_addr), ipv6_words(ip.dst_addr));
    if destinations::is_hosts(&dst) {
        return Parsed::not_flow(Kind::NotVip);
    }
    let mut next = ip.next_hdr;
    let mut l4 = l3 + Ipv6Hdr::LEN;
    for _ in 0..IPV6_MAX_EXTENSIONS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                // Next header, then length in 8-byte units not counting the first 8.
                let Some([ext_next, ext_len]) = read::<[u8; 2]>(ctx, l4) else {
                    return Parsed::not_flow(Kind::Malformed);
                };
                next = ext_next;
                l4 += (ext_len as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                return Parsed::fragment(dst, FAMILY_IPV6);
            }
            _ => break,
        }
    }
    match next {
        PROTO_TCP | PROTO_UDP => transport(ctx, l3, l4, next, FAMILY_IPV6, src, dst),
        PROTO_ICMPV6 => icmpv6_error(ctx, l3, l4),
        _ => Parsed::not_flow(Kind::NotVip),
    }
}

/// A TCP or UDP packet: the full transport header must be present.
#[inline(always)]
fn transport(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    protocol: u8,
    family: u8,
    src: [u32; 4],
    dst: [u32; 4],
) -> Parsed {
    let tcp_flags = if protocol == PROTO_TCP {
        // SAFETY: `ptr_at` bounds-checked the whole 20-byte header.
        ptr_at::<[u8; 20]>(ctx, l4).map(|tcp| unsafe { (*tcp)[TCP_FLAGS_OFFSET] })
    } else {
        ptr_at::<[u8; 8]>(ctx, l4).map(|_| 0)
    };
    let Some(ports) = read::<[u16; 2]>(ctx, l4) else {
        return Parsed::not_flow(Kind::Malformed);
    };
    let Some(tcp_flags) = tcp_flags else {
        return Parsed::not_flow(Kind::Malformed);
    };
    Parsed::flow(Packet {
        key: FlowKey {
            src,
            dst,
            src_port: ports[0],
            dst_port: ports[1],
            protocol,
            family,
            _pad: [0; 2],
        },
        l3: l3 as u16,
        l4: l4 as u16,
        icmp: IcmpError::none(l3 as u16, l4 as u16),
        tcp_flags,
    })
}

/// ICMP "destination unreachable" about a packet the VIP sent (a backend's DSR reply:
/// the quoted packet runs VIP → client) or a NAT flow sent (NAT source → backend). Its
/// flow reversed is the client's flow, or the NAT reply's.
#[inline(always)]
fn icmpv4_error(ctx: &XdpContext, l3: usize, l4: usize) -> Parsed {
    let Some([icmp_type, icmp_code]) = read::<[u8; 2]>(ctx, l4) else {
        return Parsed::not_flow(Kind::Malformed);
    };
    if icmp_type != ICMP_DEST_UNREACH {
        return Parsed::not_flow(Kind::NotVip);
    }
    let inner = l4 + ICMP_HEADER_LEN;
    let Some(ip) = read::<Ipv4Hdr>(ctx, inner) else {
        return Parsed::not_flow(Kind::NotVip);
    };
    let header_len = (ip.vihl & 0x0f) as usize * 4;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || u16::from_be_bytes(ip.frags) & 0x1fff != 0
    {
        return Parsed::not_flow(Kind::NotVip);
    }
    let error = IcmpError {
        kind: if icmp_code == ICMP_FRAG_NEEDED {
            IcmpKind::TooBig
        } else {
            IcmpKind::Unreachable
        },
        quoted_l3: inner as u16,
        quoted_l4: (inner + header_len) as u16,
    };
    let (src, dst) = (ipv4_words(ip.src_addr), ipv4_words(ip.dst_addr));
    quoted_flow(ctx, l3, l4, error, ip.proto, FAMILY_IPV4, src, dst)
}

/// ICMPv6 "destination unreachable" and "packet too big", the IPv6 twin of
/// [`icmpv4_error`].
#[inline(always)]
fn icmpv6_error(ctx: &XdpContext, l3: usize, l4: usize) -> Parsed {
    let Some([icmp_type, _code]) = read::<[u8; 2]>(ctx, l4) else {
        return Parsed::not_flow(Kind::Malformed);
    };
    if icmp_type != ICMPV6_PACKET_TOO_BIG && icmp_type != ICMPV6_DEST_UNREACH {
        return Parsed::not_flow(Kind::NotVip);
    }
    let inner = l4 + ICMP_HEADER_LEN;
    let Some(ip) = read::<Ipv6Hdr>(ctx, inner) else {
        return Parsed::not_flow(Kind::NotVip);
    };
    let error = IcmpError {
        kind: if icmp_type == ICMPV6_PACKET_TOO_BIG {
            IcmpKind::TooBig
        } else {
            IcmpKind::Unreachable
        },
        quoted_l3: inner as u16,
        quoted_l4: (inner + Ipv6Hdr::LEN) as u16,
    };
    let (src, dst) = (ipv6_words(ip.src_addr), ipv6_words(ip.dst_addr));
    quoted_flow(ctx, l3, l4, error, ip.next_hdr, FAMILY_IPV6, src, dst)
}

/// The flow from the first transport bytes an ICMP error quotes (RFC 792 and RFC 4443
/// guarantee at least the ports), reversed: the quoted packet's destination is the
/// flow's source.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn quoted_flow(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    error: IcmpError,
    protocol: u8,
    family: u8,
    quoted_src: [u32; 4],
    quoted_dst: [u32; 4],
) -> Parsed {
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return Parsed::not_flow(Kind::NotVip);
    }
    let Some([quoted_src_port, quoted_dst_port]) = read::<[u16; 2]>(ctx, error.quoted_l4 as usize)
    else {
        return Parsed::not_flow(Kind::NotVip);
    };
    Parsed::flow(Packet {
        key: FlowKey {
            src: quoted_dst,
            dst: quoted_src,
            src_port: quoted_dst_port,
            dst_port: quoted_src_port,
            protocol,
            family,
            _pad: [0; 2],
        },
        l3: l3 as u16,
        l4: l4 as u16,
        icmp: error,
        tcp_flags: 0,
    })
}
