//! The firewall: per-VIP source filters and port lists, applied after the VIP is matched
//! and before a backend is selected, and the host's own port rules. Both are BPF-to-BPF
//! functions, so that their stack is not added to the fast path's; a VIP without a
//! firewall never calls them (`VIP_GUARDED`), nor does the host's traffic while no host
//! rule is configured (`FW_HOST_RULES`).
//!
//! Source rules are an LPM trie keyed by (ruleset, family, address): the longest prefix
//! that matches decides; a source no rule matches is allowed unless the policy has an
//! allow list (`FW_DEFAULT_DENY`). Every match is counted per rule.

// Keys go to the map helpers by reference: passed by value they would be copied.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    Counter, VipMeta,
    firewall::{
        FW_DEFAULT_DENY, FW_DENY, FW_HOST_RULES, FW_PORT_LIST, FW_SOURCE_FIXED_BITS,
        FW_SOURCES_LISTED, FirewallCounters, FwPolicy, FwPortKey, FwRule, FwSource, HostPortKey,
    },
};

use crate::{
    FW_HOST_PORTS, FW_PORTS, FW_RULE_STATS, FW_SETTINGS, FW_SOURCES, FW_VIP_STATS, FW_VIPS,
    parse::{IcmpKind, Packet},
};

/// What the firewall made of a packet. Field-less, so that it crosses BPF-to-BPF calls
/// without a trace in the object's BTF that the kernel would refuse.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Pass,
    Denied,
    RateLimited,
    Capped,
}

impl Check {
    /// The verdict reason of a packet the VIP firewall stopped.
    #[inline(always)]
    pub fn reason(self) -> Counter {
        match self {
            Check::Pass | Check::Denied => Counter::DropFirewall,
            Check::RateLimited => Counter::DropRateLimited,
            Check::Capped => Counter::DropFlowCap,
        }
    }
}

/// The firewall of the guarded VIP `vip`: its source rules and its port list (the
/// flood guard's limits come next, in a call of their own: the fast path's frame and
/// one of these must fit in 512 bytes together).
#[inline(never)]
pub fn check_vip(packet: &Packet, vip: &VipMeta) -> Check {
    let Some(policy) = FW_VIPS.get(vip.id) else {
        return Check::Pass;
    };
    let key = &packet.key;
    if !sources_allow(policy, key.family, &key.src) {
        count_vip(vip.id, |c| c.denied_source += 1);
        return Check::Denied;
    }
    if policy.flags & FW_PORT_LIST != 0 {
        let port = FwPortKey {
            ruleset: policy.ruleset,
            port: key.dst_port,
            _pad: 0,
        };
        if FW_PORTS.get_ptr(&port).is_none() {
            count_vip(vip.id, |c| c.denied_port += 1);
            return Check::Denied;
        }
    }
    Check::Pass
}

/// The host's rules for a packet addressed to no VIP: a TCP or UDP port with rules
/// admits only the sources they allow; everything else passes untouched.
#[inline(never)]
pub fn check_host(packet: &Packet) -> Counter {
    // ICMP errors about the host's flows are its own business.
    if !host_rules() || packet.icmp.kind != IcmpKind::None {
        return Counter::PassNotVip;
    }
    let key = &packet.key;
    let port = HostPortKey {
        port: key.dst_port,
        protocol: key.protocol,
        _pad: 0,
    };
    let Some(policy) = FW_HOST_PORTS.get_ptr(&port) else {
        return Counter::PassNotVip;
    };
    // SAFETY: a map value pointer from a successful lookup.
    let policy = unsafe { &*policy };
    if sources_allow(policy, key.family, &key.src) {
        Counter::PassNotVip
    } else {
        Counter::DropHostFirewall
    }
}

/// Whether the host has port rules: then its packets need their transport header read.
#[inline(always)]
pub fn host_rules() -> bool {
    FW_SETTINGS
        .get(0)
        .is_some_and(|settings| settings.flags & FW_HOST_RULES != 0)
}

/// Whether the policy's source rules let `src` through; counts the rule that decided.
#[inline(always)]
fn sources_allow(policy: &FwPolicy, family: u8, src: &[u32; 4]) -> bool {
    if policy.flags & FW_SOURCES_LISTED == 0 {
        return true;
    }
    let key = Key::new(
        FW_SOURCE_FIXED_BITS
            + if family == lb_common::FAMILY_IPV4 {
                32
            } else {
                128
            },
        FwSource {
            ruleset: policy.ruleset,
            family,
            _pad: [0; 3],
            addr: *src,
        },
    );
    match FW_SOURCES.get(&key) {
        Some(FwRule { rule_id, action }) => {
            count_rule(*rule_id);
            *action != FW_DENY
        }
        None if policy.flags & FW_DEFAULT_DENY != 0 => {
            count_rule(policy.default_rule);
            false
        }
        None => true,
    }
}

#[inline(always)]
fn count_rule(rule_id: u32) {
    if let Some(count) = FW_RULE_STATS.get_ptr_mut(rule_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
pub fn count_vip(vip_id: u32, add: impl FnOnce(&mut FirewallCounters)) {
    if let Some(counters) = FW_VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: as above.
        add(unsafe { &mut *counters });
    }
}
