//! Backend selection: VIP lookup, then the connection table, then the VIP's Maglev table.
//! NAT VIPs keep their flows in the NAT tables instead (`nat.rs`).

use lb_common::{
    BACKEND_ACCEPTS_FLOWS, BACKEND_TAKES_NEW_FLOWS, Backend, Counter, FLOW_CLOSING,
    FLOW_TOUCH_INTERVAL_NS, Flow, FlowKey, NO_BACKEND, VIP_HASH_SOURCE_ONLY, VIP_NO_CONNTRACK,
    VipAddressKey, VipKey, VipMeta, flow_hash,
};

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;

use crate::{
    BACKENDS, CONNTRACK, MAGLEV_RING, VIP_ADDRESSES, VIPS,
    parse::{IcmpKind, Packet},
    stats,
    target::Target,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Fragments carry no ports, so they cannot be matched to a flow: the ones addressed to
/// a VIP address are dropped and counted rather than risk sending them to the wrong
/// backend; the rest belong to the host.
#[inline(always)]
pub fn fragment_reason(dst: &VipAddressKey) -> Counter {
    if VIP_ADDRESSES.get_ptr(dst).is_some() {
        Counter::DropFragment
    } else {
        Counter::PassNotVip
    }
}

/// The target of a packet for the DSR VIP `vip`: its flow's backend, or Maglev's pick.
#[inline(always)]
pub fn select(packet: &Packet, vip: &VipMeta) -> Result<Target, Counter> {
    // DSR forwards the "too big" errors about its flows to their backends; other ICMP
    // errors are the host's.
    if packet.icmp.kind == IcmpKind::Unreachable {
        return Err(Counter::PassNotVip);
    }
    let now = clock();
    let key = &packet.key;
    let icmp = packet.is_icmp();
    if vip.flags & VIP_NO_CONNTRACK != 0 {
        let (backend_id, backend) = maglev_pick(key, vip)?;
        // No flow table: a SYN is the only sign of a new flow.
        let new_flow = is_syn(packet);
        return Ok(target(vip, backend_id, backend, new_flow, now));
    }
    let closing = closing_flag(packet);

    // The flow's entry when it must start afresh: rewritten in place, which spares the
    // LRU a new node (and an eviction).
    let mut stale = None;
    if let Some(flow) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a map value pointer from a successful lookup.
        let backend_id = unsafe { (*flow).backend_id };
        match usable_backend(backend_id, vip.id) {
            Some(backend) if !reuses(packet, flow, backend) => {
                if !icmp {
                    touch(flow, closing, now);
                }
                return Ok(target(vip, backend_id, backend, false, now));
            }
            Some(_) => stats::event(Counter::FlowReused),
            None => stats::event(Counter::FlowRescheduled),
        }
        stale = Some(flow);
    }

    let (backend_id, backend) = maglev_pick(key, vip)?;
    // An ICMP error follows its flow but never creates one.
    if !icmp {
        let flow = Flow {
            backend_id,
            flags: closing,
            nat_port: 0,
            last_seen_ns: now,
        };
        match stale {
            // SAFETY: a map value pointer from a successful lookup; a racing reader on
            // another CPU sees the old backend or the new one.
            Some(entry) => unsafe { *entry = flow },
            None => {
                if CONNTRACK.insert(key, flow, 0).is_err() {
                    stats::event(Counter::ConntrackInsertFailed);
                }
            }
        }
    }
    Ok(target(vip, backend_id, backend, !icmp, now))
}

#[inline(always)]
fn target(vip: &VipMeta, backend_id: u32, backend: &Backend, new_flow: bool, now: u64) -> Target {
    Target {
        vip_id: vip.id,
        backend_id,
        backend_addr: backend.addr,
        new_flow,
        now,
        nat: None,
    }
}

/// The backend the VIP's Maglev table gives the flow (id and entry).
#[inline(always)]
pub fn maglev_pick(key: &FlowKey, vip: &VipMeta) -> Result<(u32, &'static Backend), Counter> {
    if vip.ring_size == 0 {
        return Err(Counter::DropNoBackend);
    }
    let hash = flow_hash(key, vip.flags & VIP_HASH_SOURCE_ONLY != 0);
    let slot = vip.ring_base + hash % vip.ring_size;
    let backend_id = *MAGLEV_RING.get(slot).ok_or(Counter::DropNoBackend)?;
    if backend_id == NO_BACKEND {
        return Err(Counter::DropNoBackend);
    }
    let backend = usable_backend(backend_id, vip.id).ok_or(Counter::DropNoBackend)?;
    Ok((backend_id, backend))
}

/// `FLOW_CLOSING` for a TCP FIN or RST, else 0.
#[inline(always)]
pub fn closing_flag(packet: &Packet) -> u16 {
    if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        FLOW_CLOSING
    } else {
        0
    }
}

/// Whether the packet opens a new connection on the 5-tuple of `flow`, whose backend is
/// `backend`: a SYN (ACK clear) on a flow that is closing, or whose backend takes no new
/// flows (draining). A SYN on any other flow is a retransmission of its own handshake.
/// Established packets carry ACK: they pay the flags test only.
#[inline(always)]
pub fn reuses(packet: &Packet, flow: *const Flow, backend: &Backend) -> bool {
    is_syn(packet)
        // SAFETY: a map value pointer from a successful lookup.
        && (unsafe { (*flow).flags } & FLOW_CLOSING != 0
            || backend.flags & BACKEND_TAKES_NEW_FLOWS == 0)
}

/// Whether the packet is a TCP SYN with ACK clear: a client opening a connection.
#[inline(always)]
pub fn is_syn(packet: &Packet) -> bool {
    packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Refreshes a flow's last-seen time (at most once per `FLOW_TOUCH_INTERVAL_NS`) and
/// marks it closing on a FIN or RST.
#[inline(always)]
pub fn touch(flow: *mut Flow, closing: u16, now: u64) {
    // SAFETY: a map value pointer from a successful lookup; racing writers on other CPUs
    // can only store a similar time or the same flag.
    unsafe {
        if now.wrapping_sub((*flow).last_seen_ns) > FLOW_TOUCH_INTERVAL_NS
            || (*flow).flags & closing != closing
        {
            (*flow).last_seen_ns = now;
            (*flow).flags |= closing;
        }
    }
}

/// `bpf_ktime_get_coarse_ns`, read only for VIP traffic: the host's own packets need no
/// time.
#[inline(always)]
pub fn clock() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The exact (address, port, protocol) VIP, else the address's every-port VIP.
#[inline(always)]
pub fn lookup_vip(packet: &Packet) -> Option<VipMeta> {
    let key = &packet.key;
    let mut vip = VipKey {
        addr: key.dst,
        port: key.dst_port,
        protocol: key.protocol,
        family: key.family,
    };
    if let Some(meta) = VIPS.get_ptr(vip) {
        // SAFETY: a map value pointer from a successful lookup.
        return Some(unsafe { *meta });
    }
    vip.port = 0;
    // SAFETY: as above.
    VIPS.get_ptr(vip).map(|meta| unsafe { *meta })
}

/// The backend if it still takes this VIP's flows.
#[inline(always)]
pub fn usable_backend(backend_id: u32, vip_id: u32) -> Option<&'static Backend> {
    let backend = BACKENDS.get(backend_id)?;
    (backend.flags & BACKEND_ACCEPTS_FLOWS != 0 && backend.vip_id == vip_id).then_some(backend)
}
