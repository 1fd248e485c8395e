//! Full NAT: a flow's packets go to its backend from `nat_source` and a source port of
//! the NAT range; the backend's replies (and ICMP errors about the flow) come back to
//! that address and port and are translated back to VIP → client.
//!
//! Two plain hash maps, never LRU: an LRU would silently evict a live flow's entry and
//! break its translation. A full table refuses the *new* flow instead (counted).
//!
//! - `NAT_FLOWS`: client flow key → `Flow` (backend id, NAT port, last seen, closing);
//! - `NAT_REVERSE`: the reply's key (backend, backend port, NAT source, NAT port,
//!   protocol) → the client flow key and when it claimed the key. Inserted with
//!   BPF_NOEXIST while probing ports from a hash of the flow, *before* the flow is
//!   written, so two live flows never share a reply key; an entry whose flow has ended
//!   (closing + linger, idle, or gone) is taken over (`nat_port_reclaimed`) once its
//!   claim is older than `NAT_CLAIM_GRACE_NS` (a newer one may belong to a flow that
//!   another CPU is writing), by compare-and-swap of its claim time.
//!
//! The agent sweeps both tables for ended flows (`Dataplane::sweep_nat`).

// Keys go to the map helpers by reference: passed by value they would be copied to a
// stack of 512 bytes that every path shares.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    Counter, FLOW_EMBRYONIC, Flow, FlowKey, FlowTimeouts, NAT_CLAIM_GRACE_NS, NAT_PORT_PROBES,
    NatReply, PROTO_TCP, VipMeta, flow_hash,
};

use crate::{
    BACKENDS, NAT_CONFIG, NAT_FLOWS, NAT_REVERSE,
    atomic::compare_and_swap,
    parse::Packet,
    select::{clock, closing_flag, is_syn, maglev_pick, reuses, touch, usable_backend},
    stats,
    target::{NatTarget, Target},
};

/// `-EEXIST`: a BPF_NOEXIST insert found the key taken.
const EEXIST: i32 = -17;

/// The target of a packet for a NAT VIP: its flow's backend and NAT port, or a new flow
/// with a free port.
#[inline(always)]
pub fn select(packet: &Packet, vip: &VipMeta) -> Result<Target, Counter> {
    let now = clock();
    let config = NAT_CONFIG.get(0).ok_or(Counter::DropNatPortsExhausted)?;
    let key = &packet.key;
    let closing = closing_flag(packet);
    // Why the packet's flow, if it has one, cannot go on: counted once a new one starts.
    let mut restart = None;
    if let Some(flow) = NAT_FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value pointer from a successful lookup.
        let current = unsafe { *flow };
        if !config.expired(&current, key.protocol, now) {
            match usable_backend(current.backend_id, vip.id) {
                Some(backend) if !reuses(packet, flow, backend) => {
                    touch(flow, closing, now);
                    return Ok(target(
                        packet,
                        vip,
                        current.backend_id,
                        backend,
                        current.nat_port,
                        false,
                        now,
                    ));
                }
                Some(_) => restart = Some(Counter::FlowReused),
                None => restart = Some(Counter::FlowRescheduled),
            }
        }
        // An ended or reused flow starts afresh; its reply entry is taken over or swept
        // (the new flow probes past it while the old one lingers).
    }
    // Only a SYN creates TCP state: a segment of no (live) flow is a spoofed ACK, or a
    // connection the backend would reset anyway.
    let tcp = key.protocol == PROTO_TCP;
    if tcp && !is_syn(packet) {
        return Err(Counter::DropNatNoFlow);
    }
    if let Some(event) = restart {
        stats::event(event);
    }

    let (backend_id, backend) = maglev_pick(key, vip)?;
    let mut reply = FlowKey {
        src: backend.addr,
        dst: backend.nat_source,
        src_port: backend_port(backend.port, key),
        dst_port: 0,
        protocol: key.protocol,
        family: key.family,
        _pad: [0; 2],
    };
    let nat_port = allocate_port(&mut reply, key, config, now)?;
    let flow = Flow {
        backend_id,
        flags: closing | if tcp { FLOW_EMBRYONIC } else { 0 },
        nat_port,
        last_seen_ns: now,
    };
    if NAT_FLOWS.insert(key, flow, 0).is_err() {
        let _ = NAT_REVERSE.remove(&reply);
        return Err(Counter::DropNatTableFull);
    }
    Ok(target(
        packet, vip, backend_id, backend, nat_port, true, now,
    ))
}

/// The target of the NAT flow `packet` belongs to, as it stands (nothing created or
/// touched): for an ICMP error about the flow from the client's side.
#[inline(always)]
pub fn flow_target(packet: &Packet, vip: &VipMeta) -> Option<Target> {
    // SAFETY: a map value read once, copied.
    let flow = (unsafe { NAT_FLOWS.get(&packet.key) })?;
    let backend = usable_backend(flow.backend_id, vip.id)?;
    Some(target(
        packet,
        vip,
        flow.backend_id,
        backend,
        flow.nat_port,
        false,
        clock(),
    ))
}

/// The backend's port in network order: its own, or the client's destination port when
/// it has none (VIPs on every port).
#[inline(always)]
fn backend_port(port: u16, key: &FlowKey) -> u16 {
    if port == 0 { key.dst_port } else { port }
}

#[inline(always)]
fn target(
    packet: &Packet,
    vip: &VipMeta,
    backend_id: u32,
    backend: &lb_common::Backend,
    nat_port: u16,
    new_flow: bool,
    now: u64,
) -> Target {
    let key = &packet.key;
    Target {
        vip_id: vip.id,
        backend_id,
        backend_addr: backend.addr,
        new_flow,
        now,
        nat: Some(NatTarget {
            source: backend.nat_source,
            source_port: nat_port,
            backend_port: backend_port(backend.port, key),
        }),
    }
}

/// Finds a NAT port for `client` towards the backend in `reply` (whose `dst_port` it
/// sets), and claims the reply key. Ports are tried consecutively from a hash of the
/// flow, at most `NAT_PORT_PROBES` of them. A function of its own (a BPF-to-BPF call):
/// the verifier would otherwise walk the probe loop unrolled inside every path.
#[inline(never)]
fn allocate_port(
    reply: &mut FlowKey,
    client: &FlowKey,
    config: &FlowTimeouts,
    now: u64,
) -> Result<u16, Counter> {
    let count = config.nat_port_count;
    if count == 0 {
        return Err(Counter::DropNatPortsExhausted);
    }
    let claim = NatReply {
        client: *client,
        claimed_ns: now,
    };
    let start = flow_hash(client, false);
    for probe in 0..NAT_PORT_PROBES {
        let port = (config.nat_port_first + start.wrapping_add(probe) % count) as u16;
        reply.dst_port = port.to_be();
        match NAT_REVERSE.insert(&*reply, &claim, BPF_NOEXIST as u64) {
            Ok(()) => return Ok(reply.dst_port),
            Err(EEXIST) => {
                if reclaim(reply, &claim, config) {
                    return Ok(reply.dst_port);
                }
            }
            Err(_) => return Err(Counter::DropNatTableFull),
        }
    }
    Err(Counter::DropNatPortsExhausted)
}

/// Takes over the reply key `reply` for `claim` if the flow that holds it has ended: its
/// forward entry is gone, points elsewhere (an orphan left by a rescheduled or restarted
/// flow), or has expired. Never a claim younger than `NAT_CLAIM_GRACE_NS`: its flow may
/// be being written on another CPU this instant. The holder's claim time is swapped by
/// compare-and-swap before the entry is rewritten, so that of two CPUs reclaiming the
/// key at once only one does; the loser probes on.
#[inline(always)]
fn reclaim(reply: &FlowKey, claim: &NatReply, config: &FlowTimeouts) -> bool {
    let Some(held) = NAT_REVERSE.get_ptr_mut(reply) else {
        return false;
    };
    // SAFETY: a map value pointer from a successful lookup; fields read in place (a copy
    // would cost stack). A racing reclaim changes `claimed_ns` first, then the value as
    // a whole (a map update), so a torn read here loses the compare-and-swap below.
    let (claimed, owner) = unsafe { ((*held).claimed_ns, &(*held).client) };
    if claim.claimed_ns.saturating_sub(claimed) < NAT_CLAIM_GRACE_NS
        || !ended(reply, owner, config, claim.claimed_ns)
    {
        return false;
    }
    let taken_over = !same_flow(owner, &claim.client);
    // SAFETY: `held` is a map value pointer; `claimed_ns` an aligned u64 inside it.
    let stamp = unsafe { &raw mut (*held).claimed_ns };
    if !compare_and_swap(stamp, claimed, claim.claimed_ns) {
        return false;
    }
    // Ours now: no other CPU gets past the grace check until the next second. A map
    // update, so that a reply being translated sees the old holder or the new, whole.
    if NAT_REVERSE.insert(reply, claim, 0).is_err() {
        return false;
    }
    if taken_over {
        stats::event(Counter::NatPortReclaimed);
    }
    true
}

/// Field by field: `==` on the whole key would call `bcmp`.
#[inline(always)]
fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    a.src == b.src && a.dst == b.dst && a.src_port == b.src_port && a.dst_port == b.dst_port
}

/// Whether the flow `owner` no longer uses the reply key `reply`.
#[inline(always)]
fn ended(reply: &FlowKey, owner: &FlowKey, config: &FlowTimeouts, now: u64) -> bool {
    // SAFETY: a map value read once, copied.
    let Some(flow) = (unsafe { NAT_FLOWS.get(owner) }) else {
        return true;
    };
    if flow.nat_port != reply.dst_port {
        return true;
    }
    match BACKENDS.get(flow.backend_id) {
        Some(backend) if backend.addr == reply.src => config.expired(flow, owner.protocol, now),
        _ => true,
    }
}

/// Clears `FLOW_EMBRYONIC`: the backend answered. Written once per flow.
#[inline(always)]
fn promote(flow: *mut Flow, now: u64) {
    // SAFETY: a map value pointer from a successful lookup; a racing writer on another
    // CPU can only set the closing flag or store a similar time.
    unsafe {
        if (*flow).flags & FLOW_EMBRYONIC != 0 {
            (*flow).flags &= !FLOW_EMBRYONIC;
            (*flow).last_seen_ns = now;
        }
    }
}

/// Whether a packet for no VIP may be a NAT reply: its destination port is in the NAT
/// range. The host's own traffic uses other ports, so it costs no more than this.
#[inline(always)]
pub fn may_be_reply(packet: &Packet) -> bool {
    let Some(config) = NAT_CONFIG.get(0) else {
        return false;
    };
    let port = u16::from_be(packet.key.dst_port) as u32;
    port.wrapping_sub(config.nat_port_first) < config.nat_port_count
}

/// A backend's reply (or an ICMP error about a NAT flow): the client flow it belongs
/// to, or `None` when it is not NAT traffic (the host's own).
#[inline(always)]
pub fn reply_flow(packet: &Packet, now: u64) -> Option<FlowKey> {
    if !may_be_reply(packet) {
        return None;
    }
    // SAFETY: a map value read once, copied.
    let client = (unsafe { NAT_REVERSE.get(&packet.key) })?.client;
    if !packet.is_icmp()
        && let Some(flow) = NAT_FLOWS.get_ptr_mut(&client)
    {
        // A reply keeps the flow alive, as the client's packets do (a service where only
        // the server talks is not idle); a backend's FIN or RST makes it linger from now
        // on, as the client's does. The first one ends its embryonic time.
        promote(flow, now);
        touch(flow, closing_flag(packet), now);
    }
    Some(client)
}
