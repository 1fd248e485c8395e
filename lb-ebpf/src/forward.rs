//! Forwarding: find the next hop with `bpf_fib_lookup`, rewrite the MAC addresses (and,
//! for NAT, the addresses and ports: `translate.rs`), and send the frame out of the
//! ingress interface (XDP_TX) or another attached one (XDP_REDIRECT through the
//! `TX_PORTS` devmap). DSR rewrites nothing else: the backend holds the VIP and answers
//! the client directly.
//!
//! The lookup is the most expensive step of the fast path, so each CPU keeps its result
//! per backend for `NEXT_HOP_TTL_NS` (`NEXT_HOPS`), and for NAT replies per client
//! address (`CLIENT_HOPS`, direct-mapped by a hash of the address); failures are never
//! cached.

use core::mem;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup,
    },
    helpers::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_common::{ClientHop, Counter, FAMILY_IPV4, FlowKey, NEXT_HOP_TTL_NS, NextHop, mac_word};
use network_types::eth::EthHdr;

use crate::{
    CLIENT_HOPS, NEXT_HOPS, OWN_MACS, TX_PORTS,
    packet::{ptr_at_mut, read},
    parse::Packet,
    target::{NatTarget, Target},
    translate,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Forwards the packet to `target` (DSR: the MAC addresses only); `Ok` holds the
/// forwarding reason, `Err` the drop.
#[inline(always)]
pub fn forward(ctx: &XdpContext, packet: &Packet, target: &Target) -> Result<Counter, Counter> {
    let ingress = ctx.ingress_ifindex() as u32;
    let hop = next_hop(ctx, ingress, packet, target)?;
    send(ctx, ingress, packet, &hop)
}

/// Forwards the packet of a NAT flow to `target`, translated to `nat`'s source.
#[inline(always)]
pub fn forward_nat(
    ctx: &XdpContext,
    packet: &Packet,
    target: &Target,
    nat: &NatTarget,
) -> Result<Counter, Counter> {
    let ports = [nat.source_port, nat.backend_port];
    forward_translated(ctx, packet, target, || {
        translate::rewrite(ctx, packet, &nat.source, &target.backend_addr, ports)
    })
}

/// Sends an ICMP error about a NAT flow's reply, from the client's side, to the flow's
/// backend (`target`, `nat`): translated as if about the backend's own packet.
#[inline(always)]
pub fn icmp_to_backend(
    ctx: &XdpContext,
    packet: &Packet,
    target: &Target,
    nat: &NatTarget,
) -> Result<Counter, Counter> {
    let key = &packet.key;
    // The backend's packet: backend → NAT source, as the reply lookup keys it.
    let sent = FlowKey {
        src: target.backend_addr,
        dst: nat.source,
        src_port: nat.backend_port,
        dst_port: nat.source_port,
        protocol: key.protocol,
        family: key.family,
        _pad: [0; 2],
    };
    forward_translated(ctx, packet, target, || {
        translate::rewrite_icmp(ctx, packet, &sent)
    })
}

/// Forwards the packet to `target` of a NAT flow once `rewrite` has translated it.
#[inline(always)]
fn forward_translated(
    ctx: &XdpContext,
    packet: &Packet,
    target: &Target,
    rewrite: impl FnOnce() -> Option<()>,
) -> Result<Counter, Counter> {
    let ingress = ctx.ingress_ifindex() as u32;
    let hop = next_hop(ctx, ingress, packet, target)?;
    rewrite().ok_or(Counter::DropMalformed)?;
    send(ctx, ingress, packet, &hop)
}

/// Sends a NAT flow's reply (or an ICMP error about it) back to `client`, translated.
#[inline(always)]
pub fn reply(
    ctx: &XdpContext,
    packet: &Packet,
    client: &FlowKey,
    now: u64,
) -> Result<Counter, Counter> {
    let ingress = ctx.ingress_ifindex() as u32;
    let hop = client_hop(ctx, ingress, client, now)?;
    let ports = [client.dst_port, client.src_port];
    if packet.is_icmp() {
        translate::rewrite_icmp(ctx, packet, client)
    } else {
        translate::rewrite(ctx, packet, &client.dst, &client.src, ports)
    }
    .ok_or(Counter::DropMalformed)?;
    send(ctx, ingress, packet, &hop)
}

/// Whether the frame was sent to this host: to the MAC address of an interface the
/// program is attached to. A packet for a VIP in a frame for another host's MAC (a
/// bridge flooding unknown unicast, a promiscuous NIC, a tap) is that host's copy:
/// forwarding it would send it to a backend twice. Broadcast and multicast frames are no
/// one's in particular: a unicast VIP is reached by unicast frames, and a group frame
/// reaches every load balancer of the segment, which would all forward it. Any of the
/// host's MACs, not only the ingress interface's: the slaves of a bond run the program
/// with their own ifindex but receive the bond's MAC. Called for VIP traffic only: the
/// host's own packets cost nothing.
#[inline(always)]
pub fn sent_to_us(ctx: &XdpContext) -> bool {
    let Some(dst) = read::<[u8; 6]>(ctx, 0) else {
        return false;
    };
    let Some(own) = OWN_MACS.get(0) else {
        return false;
    };
    let dst = mac_word(dst);
    for slot in 0..own.words.len() {
        let word = own.words[slot];
        // Before the match: an all-zero destination is no one's.
        if word == 0 {
            return false;
        }
        if word == dst {
            return true;
        }
    }
    false
}

/// Rewrites the MAC addresses for `hop` and picks XDP_TX or XDP_REDIRECT. A redirected
/// packet larger than the egress MTU is dropped here, counted: the kernel would drop it
/// after the redirect without a trace. XDP_TX leaves by the interface the frame came in
/// on, whose MTU it already fits, so it pays nothing for the check.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    ingress: u32,
    packet: &Packet,
    hop: &NextHop,
) -> Result<Counter, Counter> {
    let eth = ptr_at_mut::<EthHdr>(ctx, 0).ok_or(Counter::DropMalformed)?;
    // SAFETY: `ptr_at_mut` bounds-checked the Ethernet header.
    unsafe {
        (*eth).dst_addr = hop.dst_mac;
        (*eth).src_addr = hop.src_mac;
    }
    if hop.ifindex == ingress {
        Ok(Counter::Tx)
    } else if hop.mtu != 0 && ctx.data_end() - ctx.data() > packet.l3 as usize + hop.mtu as usize {
        Err(Counter::DropTooBig)
    } else {
        TX_PORTS
            .redirect(hop.ifindex, 0)
            .map(|_| Counter::Redirect)
            .map_err(|_| Counter::DropEgressNotAttached)
    }
}

/// The backend's next hop: this CPU's cached lookup while it is fresh, else a new one.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    ingress: u32,
    packet: &Packet,
    target: &Target,
) -> Result<NextHop, Counter> {
    let now = target.now;
    let cached = NEXT_HOPS.get_ptr_mut(target.backend_id);
    if let Some(cached) = cached {
        // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
        let hop = unsafe { *cached };
        if hop.expires_ns > now {
            return Ok(hop);
        }
    }
    // DSR keeps the client's source, NAT sends from its NAT source.
    let key = &packet.key;
    let (src, ports) = match &target.nat {
        Some(nat) => (&nat.source, [nat.source_port, nat.backend_port]),
        None => (&key.src, [key.src_port, key.dst_port]),
    };
    let expires = now + NEXT_HOP_TTL_NS;
    let hop = lookup(ctx, ingress, key, src, &target.backend_addr, ports, expires)?;
    if let Some(cached) = cached {
        // SAFETY: as above.
        unsafe { *cached = hop };
    }
    Ok(hop)
}

/// The next hop towards a NAT flow's client: this CPU's cached lookup while it is
/// fresh, else a new one.
#[inline(always)]
fn client_hop(
    ctx: &XdpContext,
    ingress: u32,
    client: &FlowKey,
    now: u64,
) -> Result<NextHop, Counter> {
    let cached = CLIENT_HOPS.get_ptr_mut(ClientHop::slot(&client.src));
    if let Some(cached) = cached {
        // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
        let slot = unsafe { &*cached };
        if slot.hop.expires_ns > now && slot.addr == client.src && slot.family == client.family {
            return Ok(slot.hop);
        }
    }
    let ports = [client.dst_port, client.src_port];
    let expires = now + NEXT_HOP_TTL_NS;
    let hop = lookup(
        ctx,
        ingress,
        client,
        &client.dst,
        &client.src,
        ports,
        expires,
    )?;
    if let Some(cached) = cached {
        // SAFETY: as above.
        unsafe {
            (*cached).addr = client.src;
            (*cached).family = client.family;
            (*cached).hop = hop;
        }
    }
    Ok(hop)
}

/// `bpf_fib_lookup` for a packet of `flow`'s family and protocol from `src` to `dst`
/// with `ports` (network order), as if it were routed by the kernel.
#[inline(always)]
fn lookup(
    ctx: &XdpContext,
    ingress: u32,
    flow: &FlowKey,
    src: &[u32; 4],
    dst: &[u32; 4],
    ports: [u16; 2],
    expires_ns: u64,
) -> Result<NextHop, Counter> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut fib: bpf_fib_lookup = unsafe { mem::zeroed() };
    fib.l4_protocol = flow.protocol;
    fib.sport = ports[0];
    fib.dport = ports[1];
    fib.ifindex = ingress;
    if flow.family == FAMILY_IPV4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = src[0];
        fib.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = *src;
        fib.__bindgen_anon_4.ipv6_dst = *dst;
    }
    // tot_len stays 0: the lookup then never fails on size, and on success `mtu_result`
    // holds the egress MTU, kept with the hop to check redirected packets against.
    // SAFETY: `fib` is a valid, fully initialised request of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            &mut fib,
            mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(NextHop {
            expires_ns,
            ifindex: fib.ifindex,
            src_mac: fib.smac,
            dst_mac: fib.dmac,
            // SAFETY: the kernel wrote `mtu_result` (the union's output side) on success.
            mtu: u32::from(unsafe { fib.__bindgen_anon_1.mtu_result }),
            _pad: 0,
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Counter::DropFibNoNeigh),
        BPF_FIB_LKUP_RET_FWD_DISABLED => Err(Counter::DropFibForwardingDisabled),
        _ => Err(Counter::DropFibFailed),
    }
}
