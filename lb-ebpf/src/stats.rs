//! Per-CPU counters: no atomics, no contention; the agent sums the CPUs.

use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, TrafficCounters, Verdict};

use crate::{BACKEND_STATS, GLOBAL_STATS, VIP_STATS, packet::frame_len, target::Target};

/// Counts the packet under its verdict reason and returns the XDP action.
#[inline(always)]
pub fn verdict(reason: Counter) -> u32 {
    event(reason);
    // Only verdict reasons reach here; an event would be a bug, and passing the packet to
    // the kernel is the harmless answer.
    reason.verdict().unwrap_or(Verdict::Pass) as u32
}

#[inline(always)]
pub fn event(counter: Counter) {
    if let Some(count) = GLOBAL_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *count += 1 };
    }
}

/// Packets, bytes and new flows of a forwarded packet, per VIP and per backend.
#[inline(always)]
pub fn count_traffic(ctx: &XdpContext, target: &Target) {
    let bytes = frame_len(ctx) as u64;
    let new_flows = target.new_flow as u64;
    if let Some(counters) = VIP_STATS.get_ptr_mut(target.vip_id) {
        add(counters, bytes, new_flows);
    }
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(target.backend_id) {
        add(counters, bytes, new_flows);
    }
}

#[inline(always)]
fn add(counters: *mut TrafficCounters, bytes: u64, new_flows: u64) {
    // SAFETY: a per-CPU map slot; only this CPU writes it while the program runs.
    unsafe {
        (*counters).packets += 1;
        (*counters).bytes += bytes;
        (*counters).new_flows += new_flows;
    }
}
