//! weir's XDP fast path: declares the maps and dispatches each packet.
//!
//! parse (headers → flow key) → select (VIP, connection table, Maglev; NAT flows in
//! `nat`) → forward (next hop by bpf_fib_lookup, MAC rewrite, NAT `translate`, XDP_TX or
//! XDP_REDIRECT). A packet for no VIP may be a NAT flow's reply: `nat::reply_flow`
//! finds its client and `forward::reply` translates it back. Every packet is counted
//! under exactly one verdict reason (see `lb_common::Counter`).
#![no_std]
#![no_main]

mod forward;
mod nat;
mod packet;
mod parse;
mod select;
mod stats;
mod translate;

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::{map, xdp},
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    Backend, Counter, DEFAULT_CONNTRACK_ENTRIES, DEFAULT_MAGLEV_RING_ENTRIES, DEFAULT_NAT_ENTRIES,
    Flow, FlowKey, FlowTimeouts, GLOBAL_STATS_SLOTS, MAX_BACKENDS, MAX_INTERFACES, MAX_VIPS,
    NextHop, TrafficCounters, VIP_FORWARDING_NAT, VipAddressKey, VipKey, VipMeta,
};

use crate::parse::Parsed;

/// VIP (address, port, protocol) → its metadata. Port 0 matches every port.
#[map(name = "VIPS")]
static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Every address that carries a VIP, for packets whose ports are unknown (fragments).
#[map(name = "VIP_ADDRESSES")]
static VIP_ADDRESSES: HashMap<VipAddressKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// The Maglev tables of all VIPs, one slice each (`VipMeta::ring_base`, `ring_size`),
/// holding backend ids. Sized by the agent at load time.
#[map(name = "MAGLEV_RING")]
static MAGLEV_RING: Array<u32> = Array::with_max_entries(DEFAULT_MAGLEV_RING_ENTRIES, 0);

/// Backend id → backend.
#[map(name = "BACKENDS")]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The connection table: established flows keep their backend. Sized by the agent.
/// Each CPU keeps its own LRU list (no global lock on the hot path); the table itself is
/// shared, so a flow is found whichever CPU its packets land on.
#[map(name = "CONNTRACK")]
static CONNTRACK: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK_ENTRIES, BPF_F_NO_COMMON_LRU);

/// NAT flows: client flow key → backend, NAT port, last seen. A plain hash, not an LRU:
/// evicting a live flow would break its translation; a full table refuses new flows.
/// Sized by the agent; ended flows are swept by the agent.
#[map(name = "NAT_FLOWS")]
static NAT_FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(DEFAULT_NAT_ENTRIES, 0);

/// NAT replies: (backend, backend port, NAT source, NAT port, protocol) as the reply
/// carries it → the client flow key. A plain hash for the same reason.
#[map(name = "NAT_REVERSE")]
static NAT_REVERSE: HashMap<FlowKey, FlowKey> = HashMap::with_max_entries(DEFAULT_NAT_ENTRIES, 0);

/// `[0]`: flow timeouts and the NAT port range, written by the agent.
#[map(name = "NAT_CONFIG")]
static NAT_CONFIG: Array<FlowTimeouts> = Array::with_max_entries(1, 0);

/// Interfaces the program may redirect to (the ones the agent attached to), by ifindex.
#[map(name = "TX_PORTS")]
static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_INTERFACES, 0);

/// Per CPU, per backend id: the backend's next hop, cached (see `forward.rs`).
#[map(name = "NEXT_HOPS")]
static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Verdict reasons and events, indexed by `lb_common::Counter`.
#[map(name = "GLOBAL_STATS")]
static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_STATS_SLOTS, 0);

/// Per VIP, indexed by `VipMeta::id`.
#[map(name = "VIP_STATS")]
static VIP_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per backend, indexed by backend id.
#[map(name = "BACKEND_STATS")]
static BACKEND_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[xdp]
pub fn weir_xdp(ctx: XdpContext) -> u32 {
    stats::verdict(process(&ctx))
}

/// Handles one packet and returns the reason for its verdict.
///
/// The verifier allows 512 bytes of stack for the deepest chain of calls together, so
/// each path after parsing is a function of its own (a BPF-to-BPF call): this frame holds
/// little more than the parsed packet, and no path carries another's stack.
#[inline(always)]
fn process(ctx: &XdpContext) -> Counter {
    // Matched in place: a copy of the packet would cost stack.
    let parsed = parse::parse(ctx);
    let packet = match &parsed {
        Parsed::Packet(packet) => packet,
        Parsed::NotIp => return Counter::PassNotIp,
        Parsed::NotVip => return Counter::PassNotVip,
        Parsed::Malformed => return Counter::DropMalformed,
        Parsed::Fragment(dst) => return select::fragment_reason(dst),
    };
    match select::lookup_vip(packet) {
        Some(vip) if vip.flags & VIP_FORWARDING_NAT != 0 => nat_forward(ctx, packet, &vip),
        Some(vip) => dsr_forward(ctx, packet, &vip),
        None => nat_reply(ctx, packet),
    }
}

/// A packet for a DSR VIP.
#[inline(never)]
fn dsr_forward(ctx: &XdpContext, packet: &parse::Packet, vip: &VipMeta) -> Counter {
    packet::keep_context(ctx);
    match select::select(packet, vip) {
        Ok(target) => to_backend(ctx, packet, &target),
        Err(reason) => reason,
    }
}

/// A packet for a NAT VIP.
#[inline(never)]
fn nat_forward(ctx: &XdpContext, packet: &parse::Packet, vip: &VipMeta) -> Counter {
    packet::keep_context(ctx);
    // ICMP errors towards a NAT VIP are the host's.
    if packet.icmp.is_some() {
        return Counter::PassNotVip;
    }
    match nat::select(packet, vip) {
        Ok(target) => to_backend(ctx, packet, &target),
        Err(reason) => reason,
    }
}

#[inline(always)]
fn to_backend(ctx: &XdpContext, packet: &parse::Packet, target: &select::Target) -> Counter {
    match forward::forward(ctx, packet, target) {
        Ok(reason) => {
            stats::count_traffic(ctx, target);
            if target.new_flow {
                stats::event(Counter::FlowNew);
            }
            if packet.icmp.is_some() {
                stats::event(Counter::IcmpTooBigForwarded);
            }
            reason
        }
        Err(reason) => reason,
    }
}

/// A packet for no VIP: a NAT flow's reply, translated back to its client, or the host's.
#[inline(never)]
fn nat_reply(ctx: &XdpContext, packet: &parse::Packet) -> Counter {
    packet::keep_context(ctx);
    let Some(client) = nat::reply_flow(packet) else {
        return Counter::PassNotVip;
    };
    match forward::reply(ctx, packet, &client) {
        Ok(reason) => {
            stats::event(if packet.icmp.is_some() {
                Counter::NatIcmpTranslated
            } else {
                Counter::NatReply
            });
            reason
        }
        Err(reason) => reason,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
