//! The flood guard: limits on *new* flows, checked by the VIP firewall once a packet's
//! source and port are allowed. Per source and VIP (IPv6 sources by /64), a token
//! bucket in a per-CPU LRU (`FLOOD_BUCKETS`): no lock, and a flood of spoofed sources
//! evicts only cold buckets. Over all VIPs, a per-CPU token bucket caps the new flows a
//! second that reach the connection and NAT tables (`FLOOD_CAP`).
//!
//! A new flow is a TCP SYN without ACK (a flag test: established TCP traffic pays no
//! lookup here), or a UDP packet its VIP's flow table does not know.

#![allow(clippy::needless_borrows_for_generic_args)]

use lb_common::{
    FAMILY_IPV6, PROTO_TCP, VIP_FORWARDING_NAT, VipMeta,
    firewall::{BucketKey, FW_RATE_LIMIT, FwPolicy, TokenBucket},
};

use crate::{
    CONNTRACK, FLOOD_BUCKETS, FLOOD_CAP, FW_SETTINGS, FW_VIPS, NAT_FLOWS,
    firewall::{Check, count_vip},
    parse::Packet,
    select::clock,
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Whether a packet of the guarded VIP `vip` may go on to selection: a new flow must
/// be within its source's rate and the global cap.
#[inline(never)]
pub fn admit(packet: &Packet, vip: &VipMeta) -> Check {
    if !opens_flow(packet, vip) {
        return Check::Pass;
    }
    let Some(policy) = FW_VIPS.get(vip.id) else {
        return Check::Pass;
    };
    let now = clock();
    if policy.flags & FW_RATE_LIMIT != 0 && !source_admits(packet, vip, policy, now) {
        count_vip(vip.id, |c| c.rate_limited += 1);
        return Check::RateLimited;
    }
    if !cap_admits(now) {
        count_vip(vip.id, |c| c.capped += 1);
        return Check::Capped;
    }
    Check::Pass
}

#[inline(always)]
fn opens_flow(packet: &Packet, vip: &VipMeta) -> bool {
    if packet.is_icmp() {
        return false;
    }
    let key = &packet.key;
    if key.protocol == PROTO_TCP {
        return packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    }
    if vip.flags & VIP_FORWARDING_NAT != 0 {
        NAT_FLOWS.get_ptr(key).is_none()
    } else {
        CONNTRACK.get_ptr(key).is_none()
    }
}

/// The source's bucket at this VIP admits a new flow (a source seen for the first time
/// gets a full bucket).
#[inline(always)]
fn source_admits(packet: &Packet, vip: &VipMeta, policy: &FwPolicy, now: u64) -> bool {
    let key = &packet.key;
    let mut addr = key.src;
    if key.family == FAMILY_IPV6 {
        // An IPv6 client owns at least a /64.
        addr[2] = 0;
        addr[3] = 0;
    }
    let bucket_key = BucketKey {
        vip_id: vip.id,
        family: key.family,
        _pad: [0; 3],
        addr,
    };
    match FLOOD_BUCKETS.get_ptr_mut(&bucket_key) {
        // SAFETY: a per-CPU map value pointer from a successful lookup; only this CPU
        // writes it while the program runs.
        Some(bucket) => unsafe { (*bucket).take(now, policy.interval_ns, policy.burst_ns) },
        None => {
            let bucket = TokenBucket::first(now, policy.interval_ns, policy.burst_ns);
            // A full LRU evicts; a failed insert only forgets this source.
            let _ = FLOOD_BUCKETS.insert(&bucket_key, &bucket, 0);
            true
        }
    }
}

/// The global cap (per CPU: its share of `firewall.new_flow_cap`) admits a new flow.
#[inline(always)]
fn cap_admits(now: u64) -> bool {
    let Some(settings) = FW_SETTINGS.get(0) else {
        return true;
    };
    if settings.cap_interval_ns == 0 {
        return true;
    }
    let Some(bucket) = FLOOD_CAP.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a per-CPU slot; only this CPU writes it while the program runs.
    let bucket = unsafe { &mut *bucket };
    if bucket.last_ns == 0 {
        *bucket = TokenBucket::first(now, settings.cap_interval_ns, settings.cap_burst_ns);
        return true;
    }
    bucket.take(now, settings.cap_interval_ns, settings.cap_burst_ns)
}
