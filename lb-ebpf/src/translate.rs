//! NAT header rewrites with incremental checksums (RFC 1624, `lb_common::csum`): the
//! IPv4 header checksum, the TCP/UDP checksum (its pseudo-header holds the addresses),
//! and for ICMP errors the quoted headers and the ICMP checksum (ICMPv6's includes the
//! outer addresses in its pseudo-header).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_IPV6, FlowKey, PROTO_UDP,
    csum::{self, Delta},
};

use crate::{
    packet::{ptr_at_mut, read},
    parse::Packet,
};

/// Offsets in the IPv4 and IPv6 headers.
const IPV4_CHECK: usize = 10;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;
/// Offsets of the checksum in the UDP and TCP headers, and in the ICMP header.
const UDP_CHECK: usize = 6;
const TCP_CHECK: usize = 16;
const ICMP_CHECK: usize = 2;

/// Rewrites a TCP or UDP packet's addresses and ports (network order) from
/// `packet.key` to these.
#[inline(always)]
pub fn rewrite(
    ctx: &XdpContext,
    packet: &Packet,
    src: &[u32; 4],
    dst: &[u32; 4],
    ports: [u16; 2],
) -> Option<()> {
    let old = &packet.key;
    let new = FlowKey {
        src: *src,
        dst: *dst,
        src_port: ports[0],
        dst_port: ports[1],
        ..*old
    };
    let ipv6 = old.family == FAMILY_IPV6;
    let (l3, l4) = (packet.l3 as usize, packet.l4 as usize);
    let (addresses, _) = set_addresses(ctx, ipv6, l3, old, &new)?;
    set_ports(ctx, l4, &new)?;
    let delta = addresses.plus(port_delta(old, &new));
    update_l4_checksum(ctx, l4, old.protocol, ipv6, delta, true).map(|_| ())
}

/// Translates an ICMP error about a packet of a NAT flow so that it is about `quoted`
/// instead, the packet as the error's new recipient sent it: the quoted packet becomes
/// `quoted` (addresses, ports), the outer header `quoted.dst` → `quoted.src` (the
/// load balancer speaks for whoever sent the error). From the backend's side `quoted` is
/// the client's flow (VIP → client outside); from the client's side, the backend's
/// packet (NAT source → backend outside).
#[inline(always)]
pub fn rewrite_icmp(ctx: &XdpContext, packet: &Packet, quoted: &FlowKey) -> Option<()> {
    let error = &packet.icmp;
    let ipv6 = quoted.family == FAMILY_IPV6;
    // The quoted packet: as the load balancer sent it, and as its new recipient sent it.
    let old_quoted = packet.key.reversed();
    let new_quoted = *quoted;
    let (quoted_l3, quoted_l4_at) = (error.quoted_l3 as usize, error.quoted_l4 as usize);
    let (quoted_addresses, quoted_header) =
        set_addresses(ctx, ipv6, quoted_l3, &old_quoted, &new_quoted)?;
    set_ports(ctx, quoted_l4_at, &new_quoted)?;
    let quoted_l4 = quoted_addresses.plus(port_delta(&old_quoted, &new_quoted));
    // The quoted transport checksum is fixed when it was quoted (not required).
    let quoted_check =
        update_l4_checksum(ctx, quoted_l4_at, quoted.protocol, ipv6, quoted_l4, false)?;
    let mut icmp = quoted_l4.plus(quoted_header).plus(quoted_check);

    let (l3, l4) = (packet.l3 as usize, packet.l4 as usize);
    let outer_old = outer_addresses(ctx, ipv6, l3)?;
    let outer_new = FlowKey {
        src: quoted.dst,
        dst: quoted.src,
        ..*quoted
    };
    let (outer, _) = set_addresses(ctx, ipv6, l3, &outer_old, &outer_new)?;
    if ipv6 {
        icmp = icmp.plus(outer);
    }
    let check = ptr_at_mut::<u16>(ctx, l4 + ICMP_CHECK)?;
    // SAFETY: bounds-checked by `ptr_at_mut`.
    unsafe { check.write_unaligned(csum::apply(check.read_unaligned(), icmp)) };
    Some(())
}

#[inline(always)]
fn port_delta(old: &FlowKey, new: &FlowKey) -> Delta {
    Delta::ZERO
        .word(old.src_port, new.src_port)
        .word(old.dst_port, new.dst_port)
}

/// The IP header's addresses (ports zero), read from the packet.
#[inline(always)]
fn outer_addresses(ctx: &XdpContext, ipv6: bool, l3: usize) -> Option<FlowKey> {
    let mut key = FlowKey::default();
    if ipv6 {
        key.src = read::<[u32; 4]>(ctx, l3 + IPV6_SRC)?;
        key.dst = read::<[u32; 4]>(ctx, l3 + IPV6_DST)?;
    } else {
        key.src[0] = read::<u32>(ctx, l3 + IPV4_SRC)?;
        key.dst[0] = read::<u32>(ctx, l3 + IPV4_DST)?;
    }
    Some(key)
}

/// Writes the IP header's addresses, updating the IPv4 header checksum. Returns the
/// addresses' checksum change (for the transport pseudo-header) and the change of the
/// header checksum word itself (for an ICMP checksum covering a quoted header).
#[inline(always)]
fn set_addresses(
    ctx: &XdpContext,
    ipv6: bool,
    l3: usize,
    old: &FlowKey,
    new: &FlowKey,
) -> Option<(Delta, Delta)> {
    let delta = Delta::ZERO
        .addr(ipv6, &old.src, &new.src)
        .plus(Delta::ZERO.addr(ipv6, &old.dst, &new.dst));
    if ipv6 {
        let addresses = ptr_at_mut::<[[u32; 4]; 2]>(ctx, l3 + IPV6_SRC)?;
        // SAFETY: bounds-checked by `ptr_at_mut`.
        unsafe { addresses.write_unaligned([new.src, new.dst]) };
        return Some((delta, Delta::ZERO));
    }
    let header = ptr_at_mut::<[u16; 10]>(ctx, l3)?;
    // SAFETY: bounds-checked by `ptr_at_mut`; fields at fixed offsets inside it.
    unsafe {
        let bytes = header.cast::<u8>();
        let check = bytes.add(IPV4_CHECK).cast::<u16>();
        let old_check = check.read_unaligned();
        let new_check = csum::apply(old_check, delta);
        check.write_unaligned(new_check);
        bytes
            .add(IPV4_SRC)
            .cast::<u32>()
            .write_unaligned(new.src[0]);
        bytes
            .add(IPV4_DST)
            .cast::<u32>()
            .write_unaligned(new.dst[0]);
        Some((delta, Delta::ZERO.word(old_check, new_check)))
    }
}

/// Writes the transport ports (the first four bytes of TCP and UDP headers).
#[inline(always)]
fn set_ports(ctx: &XdpContext, l4: usize, new: &FlowKey) -> Option<()> {
    let ports = ptr_at_mut::<[u16; 2]>(ctx, l4)?;
    // SAFETY: bounds-checked by `ptr_at_mut`.
    unsafe { ports.write_unaligned([new.src_port, new.dst_port]) };
    Some(())
}

/// Applies `delta` to the TCP or UDP checksum at `l4`, and returns the change of the
/// checksum word. With `required`, a checksum beyond the packet is an error; otherwise
/// (a quoted header cut short) it is left alone.
#[inline(always)]
fn update_l4_checksum(
    ctx: &XdpContext,
    l4: usize,
    protocol: u8,
    ipv6: bool,
    delta: Delta,
    required: bool,
) -> Option<Delta> {
    let offset = if protocol == PROTO_UDP {
        UDP_CHECK
    } else {
        TCP_CHECK
    };
    let Some(check) = ptr_at_mut::<u16>(ctx, l4 + offset) else {
        return if required { None } else { Some(Delta::ZERO) };
    };
    // SAFETY: bounds-checked by `ptr_at_mut`.
    unsafe {
        let old = check.read_unaligned();
        let new = if protocol == PROTO_UDP {
            csum::apply_udp(old, delta, ipv6)
        } else {
            csum::apply(old, delta)
        };
        check.write_unaligned(new);
        Some(Delta::ZERO.word(old, new))
    }
}
