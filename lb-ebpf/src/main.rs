//! weir's XDP fast path: declares the maps and dispatches each packet.
//!
//! `weir_xdp`: parse (headers → flow key) → select (VIP, connection table, Maglev) →
//! forward (next hop by bpf_fib_lookup, MAC rewrite, XDP_TX or XDP_REDIRECT). Packets of
//! NAT VIPs, and packets for no VIP whose port may make them NAT replies, go on by tail
//! call to `weir_nat`: NAT flows and ports (`nat`), header rewrites (`translate`), and
//! replies translated back to their clients. Guarded VIPs (`VIP_GUARDED`) pass their
//! firewall (`firewall`, with the flood guard in `flood`) before selection; packets for
//! no VIP meet the host's port rules. Every packet is counted under exactly one
//! verdict reason (see `lb_common::Counter`).
#![no_std]
#![no_main]
// Inline BPF assembly (`atomic.rs`), as aya-ebpf itself uses.
#![feature(asm_experimental_arch)]

mod atomic;
mod destinations;
mod firewall;
mod flood;
mod forward;
mod nat;
mod packet;
mod parse;
mod select;
mod stats;
mod target;
mod translate;

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::{map, xdp},
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray,
        ProgramArray,
    },
    programs::XdpContext,
};
use lb_common::{
    Backend, CLIENT_HOP_SLOTS, ClientHop, Counter, DEFAULT_CONNTRACK_ENTRIES,
    DEFAULT_MAGLEV_RING_ENTRIES, DEFAULT_NAT_ENTRIES, DestinationFilter, Flow, FlowKey,
    FlowTimeouts, GLOBAL_STATS_SLOTS, MAX_BACKENDS, MAX_INTERFACES, MAX_VIPS, NatReply, NextHop,
    OwnMacs, TrafficCounters, VIP_FORWARDING_NAT, VIP_GUARDED, VipAddressKey, VipKey, VipMeta,
    firewall::{
        BucketKey, FLOOD_BUCKET_ENTRIES, FirewallCounters, FwPolicy, FwPortKey, FwRule, FwSettings,
        FwSource, HostPortKey, MAX_FW_HOST_PORTS, MAX_FW_PORTS, MAX_FW_RULES, MAX_FW_SOURCES,
        TokenBucket,
    },
};

use crate::parse::{IcmpKind, Kind, NatHandoff, Packet, Parsed};

/// VIP (address, port, protocol) → its metadata. Port 0 matches every port.
#[map(name = "VIPS")]
static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Every address that carries a VIP, for packets whose ports are unknown (fragments).
#[map(name = "VIP_ADDRESSES")]
static VIP_ADDRESSES: HashMap<VipAddressKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Every VIP address (`[0]`) and NAT source (`[1]`), as Bloom filters: a destination in
/// neither is the host's (see `destinations.rs`).
#[map(name = "DESTINATIONS")]
static DESTINATIONS: Array<DestinationFilter> = Array::with_max_entries(2, 0);

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
/// carries it → the client flow key and when it claimed the key. A plain hash for the
/// same reason.
#[map(name = "NAT_REVERSE")]
static NAT_REVERSE: HashMap<FlowKey, NatReply> = HashMap::with_max_entries(DEFAULT_NAT_ENTRIES, 0);

/// `[0]`: flow timeouts and the NAT port range, written by the agent.
#[map(name = "NAT_CONFIG")]
static NAT_CONFIG: Array<FlowTimeouts> = Array::with_max_entries(1, 0);

/// `[0]`: `weir_nat`, put there by the agent (see `weir_nat`).
#[map(name = "NAT_PROGRAM")]
static NAT_PROGRAM: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Per CPU, `[0]`: the packet `weir_xdp` hands to `weir_nat` (see `to_nat`). Pinned
/// with the rest, so that an adopted `weir_xdp` and a new `weir_nat` share it.
#[map(name = "NAT_HANDOFF")]
static NAT_HANDOFF: PerCpuArray<NatHandoff> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, by a hash of the client address: the next hop of NAT replies towards it,
/// cached as `NEXT_HOPS` caches the backends' (see `lb_common::ClientHop`).
#[map(name = "CLIENT_HOPS")]
static CLIENT_HOPS: PerCpuArray<ClientHop> = PerCpuArray::with_max_entries(CLIENT_HOP_SLOTS, 0);

/// Interfaces the program may redirect to (the ones the agent attached to), by ifindex.
#[map(name = "TX_PORTS")]
static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_INTERFACES, 0);

/// `[0]`: the MAC addresses of the interfaces the agent attached to: only frames sent to
/// one of them are load-balanced (see `forward::sent_to_us`).
#[map(name = "OWN_MACS")]
static OWN_MACS: Array<OwnMacs> = Array::with_max_entries(1, 0);

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

/// Per VIP id: its firewall, read when the VIP is `VIP_GUARDED`.
#[map(name = "FW_VIPS")]
static FW_VIPS: Array<FwPolicy> = Array::with_max_entries(MAX_VIPS, 0);

/// Source rules of every ruleset (VIPs' and host ports'): longest prefix wins.
#[map(name = "FW_SOURCES")]
static FW_SOURCES: LpmTrie<FwSource, FwRule> = LpmTrie::with_max_entries(MAX_FW_SOURCES, 0);

/// Allowed destination ports of port-0 VIPs, by ruleset.
#[map(name = "FW_PORTS")]
static FW_PORTS: HashMap<FwPortKey, u32> = HashMap::with_max_entries(MAX_FW_PORTS, 0);

/// The host's ports that have rules: (port, protocol) → policy.
#[map(name = "FW_HOST_PORTS")]
static FW_HOST_PORTS: HashMap<HostPortKey, FwPolicy> =
    HashMap::with_max_entries(MAX_FW_HOST_PORTS, 0);

/// `[0]`: whether host rules exist, and the global new-flow cap (per CPU).
#[map(name = "FW_SETTINGS")]
static FW_SETTINGS: Array<FwSettings> = Array::with_max_entries(1, 0);

/// Per VIP id: packets its firewall dropped, by why.
#[map(name = "FW_VIP_STATS")]
static FW_VIP_STATS: PerCpuArray<FirewallCounters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per rule id (`FwRule::rule_id`, `FwPolicy::default_rule`): packets it decided.
#[map(name = "FW_RULE_STATS")]
static FW_RULE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_FW_RULES, 0);

/// New-flow token buckets per (VIP, source), per CPU.
#[map(name = "FLOOD_BUCKETS")]
static FLOOD_BUCKETS: LruPerCpuHashMap<BucketKey, TokenBucket> =
    LruPerCpuHashMap::with_max_entries(FLOOD_BUCKET_ENTRIES, 0);

/// `[0]`: this CPU's bucket of the global new-flow cap.
#[map(name = "FLOOD_CAP")]
static FLOOD_CAP: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn weir_xdp(ctx: XdpContext) -> u32 {
    stats::verdict(process(&ctx))
}

/// Handles one packet and returns the reason for its verdict: DSR here, all inline;
/// NAT VIPs' packets and possible NAT replies go on to `weir_nat`. (`weir_nat` trusts
/// the check of the destination MAC made here for NAT VIPs' packets.)
#[inline(always)]
fn process(ctx: &XdpContext) -> Counter {
    let parsed = parse::parse(ctx);
    let packet = match flow_of(&parsed) {
        Ok(packet) => packet,
        Err(reason) => return reason,
    };
    let Some(vip) = select::lookup_vip(packet) else {
        if destinations::may_be_nat_source(&packet.key.dst) && nat::may_be_reply(packet) {
            return to_nat(ctx, packet, None);
        }
        return firewall::check_host(packet);
    };
    if !forward::sent_to_us(ctx) {
        return Counter::PassNotOurMac;
    }
    if vip.flags & VIP_GUARDED != 0 {
        let mut check = firewall::check_vip(packet, &vip);
        if check == firewall::Check::Pass {
            check = flood::admit(packet, &vip);
        }
        if check != firewall::Check::Pass {
            return check.reason();
        }
    }
    if vip.flags & VIP_FORWARDING_NAT != 0 {
        return to_nat(ctx, packet, Some(&vip));
    }
    let target = match select::select(packet, &vip) {
        Ok(target) => target,
        Err(reason) => return reason,
    };
    let forwarded = forward::forward(ctx, packet, &target);
    counted(ctx, packet, &target, forwarded)
}

/// The packet's flow, or the verdict reason of a packet that is none.
#[inline(always)]
fn flow_of(parsed: &Parsed) -> Result<&Packet, Counter> {
    match (parsed.kind, parsed.packet()) {
        (Kind::Flow, Some(packet)) => Ok(packet),
        (Kind::Fragment, Some(fragment)) => Err(select::fragment_reason(&fragment.vip_address())),
        (Kind::NotIp, _) => Err(Counter::PassNotIp),
        (Kind::Malformed, _) => Err(Counter::DropMalformed),
        _ => Err(Counter::PassNotVip),
    }
}

/// Hands the packet's parse (and its NAT VIP, if any) to `weir_nat` and tail calls it;
/// `weir_nat` counts the packet, only a missing program returns.
#[inline(always)]
fn to_nat(ctx: &XdpContext, packet: &Packet, vip: Option<&VipMeta>) -> Counter {
    let Some(handoff) = NAT_HANDOFF.get_ptr_mut(0) else {
        return Counter::DropNatUnavailable;
    };
    // SAFETY: this CPU's slot; the tail call runs on this CPU before any other packet.
    unsafe {
        (*handoff).packet = *packet;
        (*handoff).vip_found = vip.is_some();
        if let Some(vip) = vip {
            (*handoff).vip = *vip;
        }
    }
    // SAFETY: the slot holds an XDP program of this object, put there by the agent.
    unsafe { NAT_PROGRAM.tail_call(ctx, 0) };
    Counter::DropNatUnavailable
}

/// Counts a packet forwarded to a backend.
#[inline(always)]
fn counted(
    ctx: &XdpContext,
    packet: &Packet,
    target: &target::Target,
    forwarded: Result<Counter, Counter>,
) -> Counter {
    match forwarded {
        Ok(reason) => {
            stats::count_traffic(ctx, target);
            if target.new_flow {
                stats::event(Counter::FlowNew);
            }
            if packet.is_icmp() {
                stats::event(Counter::IcmpTooBigForwarded);
            }
            reason
        }
        Err(reason) => reason,
    }
}

/// NAT: the packets of NAT VIPs and the replies to them, reached from `weir_xdp` by tail
/// call, with what `weir_xdp` found (`NAT_HANDOFF`): the packet is parsed and its VIP
/// looked up once. A program of its own, so that NAT's stack is not added to the DSR
/// path's: the verifier allows 512 bytes for the deepest chain of calls together. For
/// the same reason the request path, the reply path and the port probe loop are each a
/// function of its own (a BPF-to-BPF call) here.
#[xdp]
pub fn weir_nat(ctx: XdpContext) -> u32 {
    stats::verdict(process_nat(&ctx))
}

#[inline(always)]
fn process_nat(ctx: &XdpContext) -> Counter {
    // Read in place: a copy would cost stack.
    let Some(handoff) = NAT_HANDOFF.get_ptr(0) else {
        return Counter::DropNatUnavailable;
    };
    // SAFETY: this CPU's slot, written by `weir_xdp` for this packet just before the tail
    // call (see `to_nat`).
    let handoff = unsafe { &*handoff };
    let packet = &handoff.packet;
    match (handoff.vip_found, packet.is_icmp()) {
        // Each its own BPF-to-BPF call, so that neither's stack adds to the other's.
        (true, true) => nat_icmp_to_backend(ctx, packet, &handoff.vip),
        (true, false) => nat_forward(ctx, packet, &handoff.vip),
        (false, _) => nat_reply(ctx, packet),
    }
}

/// A packet for a NAT VIP.
#[inline(never)]
fn nat_forward(ctx: &XdpContext, packet: &Packet, vip: &VipMeta) -> Counter {
    packet::keep_context(ctx);
    let target = match nat::select(packet, vip) {
        Ok(target) => target,
        Err(reason) => return reason,
    };
    let Some(nat) = &target.nat else {
        return Counter::DropNatUnavailable;
    };
    let forwarded = forward::forward_nat(ctx, packet, &target, nat);
    counted(ctx, packet, &target, forwarded)
}

/// An ICMP error towards a NAT VIP, about a reply on the client's path: a "too big"
/// about a NAT flow goes to its backend, translated (PMTU discovery); the rest are the
/// host's.
#[inline(never)]
fn nat_icmp_to_backend(ctx: &XdpContext, packet: &Packet, vip: &VipMeta) -> Counter {
    packet::keep_context(ctx);
    if packet.icmp.kind != IcmpKind::TooBig {
        return Counter::PassNotVip;
    }
    let Some(target) = nat::flow_target(packet, vip) else {
        return Counter::PassNotVip;
    };
    let Some(nat) = &target.nat else {
        return Counter::DropNatUnavailable;
    };
    match forward::icmp_to_backend(ctx, packet, &target, nat) {
        Ok(reason) => {
            stats::count_traffic(ctx, &target);
            stats::event(Counter::NatIcmpTranslated);
            reason
        }
        Err(reason) => reason,
    }
}

/// A packet for no VIP: a NAT flow's reply, translated back to its client, or the host's.
#[inline(never)]
fn nat_reply(ctx: &XdpContext, packet: &Packet) -> Counter {
    packet::keep_context(ctx);
    let now = select::clock();
    let Some(client) = nat::reply_flow(packet, now) else {
        return firewall::check_host(packet);
    };
    if !forward::sent_to_us(ctx) {
        return Counter::PassNotOurMac;
    }
    match forward::reply(ctx, packet, &client, now) {
        Ok(reason) => {
            stats::event(if packet.is_icmp() {
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
