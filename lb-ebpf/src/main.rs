//! weir's XDP fast path: declares the maps and dispatches each packet.
//!
//! parse (headers → flow key) → select (VIP, connection table, Maglev) → forward
//! (next hop by bpf_fib_lookup, MAC rewrite, XDP_TX or XDP_REDIRECT). Every packet is
//! counted under exactly one verdict reason (see `lb_common::Counter`).
#![no_std]
#![no_main]

mod forward;
mod packet;
mod parse;
mod select;
mod stats;

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::{map, xdp},
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    Backend, Counter, DEFAULT_CONNTRACK_ENTRIES, DEFAULT_MAGLEV_RING_ENTRIES, Flow, FlowKey,
    GLOBAL_STATS_SLOTS, MAX_BACKENDS, MAX_INTERFACES, MAX_VIPS, NextHop, TrafficCounters,
    VipAddressKey, VipKey, VipMeta,
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
#[inline(always)]
fn process(ctx: &XdpContext) -> Counter {
    let packet = match parse::parse(ctx) {
        Parsed::Packet(packet) => packet,
        Parsed::NotIp => return Counter::PassNotIp,
        Parsed::NotVip => return Counter::PassNotVip,
        Parsed::Malformed => return Counter::DropMalformed,
        Parsed::Fragment(dst) => return select::fragment_reason(&dst),
    };
    let target = match select::select(&packet) {
        Ok(target) => target,
        Err(reason) => return reason,
    };
    match forward::forward(ctx, &packet, &target) {
        Ok(reason) => {
            stats::count_traffic(ctx, &target);
            if target.new_flow {
                stats::event(Counter::FlowNew);
            }
            if packet.icmp_too_big {
                stats::event(Counter::IcmpTooBigForwarded);
            }
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
