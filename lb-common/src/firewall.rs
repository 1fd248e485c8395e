//! The firewall and flood guard's map types: per-VIP source filters and port lists, the
//! host's port rules, new-flow token buckets, and their counters.
//!
//! A *ruleset* is a number that tags one VIP's (or one host port's) entries in
//! `FW_SOURCES` and `FW_PORTS`. A change writes a complete ruleset under a fresh tag,
//! then switches the policy to it in one map update, then deletes the old tag's entries:
//! packets see the old rules or the new ones, never a mix.

/// Capacity of `FW_SOURCES` (source prefixes of all VIPs and host rules together).
pub const MAX_FW_SOURCES: u32 = 16384;
/// Capacity of `FW_PORTS` (allowed ports of all port-0 VIPs together).
pub const MAX_FW_PORTS: u32 = 16384;
/// Capacity of `FW_HOST_PORTS`.
pub const MAX_FW_HOST_PORTS: u32 = 256;
/// Slots of `FW_RULE_STATS`: one per source rule, plus one per policy for the sources it
/// denies by default.
pub const MAX_FW_RULES: u32 = MAX_FW_SOURCES + MAX_VIPS_AND_HOST_PORTS;
const MAX_VIPS_AND_HOST_PORTS: u32 = crate::MAX_VIPS + MAX_FW_HOST_PORTS;
/// Rulesets in use at once: each VIP and host port has one, and a second during a change.
pub const MAX_FW_RULESETS: u32 = 2 * MAX_VIPS_AND_HOST_PORTS;
/// Capacity of `FLOOD_BUCKETS`, per CPU: sources tracked at once (an LRU: a source
/// evicted by a flood of others starts again with a full bucket).
pub const FLOOD_BUCKET_ENTRIES: u32 = 1 << 16;

/// Bits of `FwSource` before the address: `ruleset`, `family` and the padding, always
/// matched in full. An LPM key's prefix length is this plus the address prefix's.
pub const FW_SOURCE_FIXED_BITS: u32 = 64;

/// Key data of the `FW_SOURCES` LPM trie: a source prefix of one ruleset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FwSource {
    pub ruleset: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    /// Network-order words, as everywhere; bits past the prefix are zero.
    pub addr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<FwSource>() == 24);

/// `FwRule::action`.
pub const FW_ALLOW: u32 = 0;
pub const FW_DENY: u32 = 1;

/// Value of `FW_SOURCES`: what the longest matching prefix says.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwRule {
    /// Its slot in `FW_RULE_STATS` (packets it matched).
    pub rule_id: u32,
    pub action: u32,
}
const _: () = assert!(core::mem::size_of::<FwRule>() == 8);

/// Key of `FW_PORTS`: an allowed destination port of a port-0 VIP's ruleset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FwPortKey {
    pub ruleset: u32,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<FwPortKey>() == 8);

/// Key of `FW_HOST_PORTS`: a port of the host itself that has rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPortKey {
    /// Network byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<HostPortKey>() == 4);

/// `FwPolicy::flags`: sources of the ruleset are looked up.
pub const FW_SOURCES_LISTED: u32 = 1 << 0;
/// `FwPolicy::flags`: a source no rule matches is denied (there is an allow list).
pub const FW_DEFAULT_DENY: u32 = 1 << 1;
/// `FwPolicy::flags`: only the ports in `FW_PORTS` are allowed.
pub const FW_PORT_LIST: u32 = 1 << 2;
/// `FwPolicy::flags`: new flows are rate limited per source (`interval_ns`, `burst_ns`).
pub const FW_RATE_LIMIT: u32 = 1 << 3;

/// A VIP's firewall (`FW_VIPS[vip id]`) or a host port's (`FW_HOST_PORTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwPolicy {
    pub ruleset: u32,
    pub flags: u32,
    /// `FW_RULE_STATS` slot counting the sources denied because no rule allows them.
    pub default_rule: u32,
    pub _pad: u32,
    /// Rate limit: nanoseconds of credit one new flow costs (10⁹ / rate).
    pub interval_ns: u64,
    /// Rate limit: most credit a source can save up (burst × `interval_ns`).
    pub burst_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FwPolicy>() == 32);

/// `FwSettings::flags`: `FW_HOST_PORTS` has entries.
pub const FW_HOST_RULES: u32 = 1 << 0;

/// `FW_SETTINGS[0]`: what applies to all VIPs and to the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwSettings {
    pub flags: u32,
    pub _pad: u32,
    /// The global new-flow cap, per CPU (0: no cap): cost of a new flow and most saved.
    pub cap_interval_ns: u64,
    pub cap_burst_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FwSettings>() == 24);

/// Key of `FLOOD_BUCKETS`: a client of a VIP (IPv6: its /64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub vip_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<BucketKey>() == 24);

/// A token bucket kept in nanoseconds of credit: time earns credit, up to `burst_ns`;
/// a new flow spends `interval_ns`. Time comes from the caller, so tests can drive it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub credit_ns: u64,
    /// The time credit was last earned up to (`bpf_ktime_get_coarse_ns`); 0: never used.
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<TokenBucket>() == 16);

impl TokenBucket {
    /// A fresh bucket that has just admitted its first flow at `now_ns`.
    #[inline(always)]
    pub const fn first(now_ns: u64, interval_ns: u64, burst_ns: u64) -> TokenBucket {
        TokenBucket {
            credit_ns: burst_ns.saturating_sub(interval_ns),
            last_ns: now_ns,
        }
    }

    /// Earns the credit of the time since the last call and spends one flow's worth if
    /// there is enough: whether the flow is admitted.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, interval_ns: u64, burst_ns: u64) -> bool {
        let earned = now_ns.saturating_sub(self.last_ns);
        let mut credit = self.credit_ns.saturating_add(earned);
        if credit > burst_ns {
            credit = burst_ns;
        }
        if now_ns > self.last_ns {
            self.last_ns = now_ns;
        }
        let admitted = credit >= interval_ns;
        if admitted {
            credit -= interval_ns;
        }
        self.credit_ns = credit;
        admitted
    }
}

/// Per-CPU firewall counters of a VIP (`FW_VIP_STATS[vip id]`): packets dropped, by why.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirewallCounters {
    pub denied_source: u64,
    pub denied_port: u64,
    pub rate_limited: u64,
    pub capped: u64,
}
const _: () = assert!(core::mem::size_of::<FirewallCounters>() == 32);

impl core::ops::AddAssign for FirewallCounters {
    fn add_assign(&mut self, other: Self) {
        self.denied_source += other.denied_source;
        self.denied_port += other.denied_port;
        self.rate_limited += other.rate_limited;
        self.capped += other.capped;
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: `#[repr(C)]`, `Copy`, only integers and explicit padding, valid for any
    // bit pattern.
    unsafe impl aya::Pod for FwSource {}
    unsafe impl aya::Pod for FwRule {}
    unsafe impl aya::Pod for FwPortKey {}
    unsafe impl aya::Pod for HostPortKey {}
    unsafe impl aya::Pod for FwPolicy {}
    unsafe impl aya::Pod for FwSettings {}
    unsafe impl aya::Pod for BucketKey {}
    unsafe impl aya::Pod for TokenBucket {}
    unsafe impl aya::Pod for FirewallCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        // 10 flows a second, bursts of 3.
        let (interval, burst) = (SECOND / 10, 3 * SECOND / 10);
        let mut bucket = TokenBucket::first(SECOND, interval, burst);
        assert!(bucket.take(SECOND, interval, burst));
        assert!(bucket.take(SECOND, interval, burst));
        assert!(!bucket.take(SECOND, interval, burst), "the burst is spent");
        assert!(
            bucket.take(SECOND + interval, interval, burst),
            "one more earned"
        );
        assert!(!bucket.take(SECOND + interval, interval, burst));
        // A long pause earns no more than the burst.
        let later = 100 * SECOND;
        assert_eq!(
            (0..10)
                .filter(|_| bucket.take(later, interval, burst))
                .count(),
            3
        );
        // A time before the last one earns nothing (and does not go back).
        assert!(!bucket.take(SECOND, interval, burst));
        assert_eq!(bucket.last_ns, later);
    }
}
