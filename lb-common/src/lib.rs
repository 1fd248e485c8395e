//! Types shared by the XDP program (`lb-ebpf`) and the agent (`lb-userspace`).
//!
//! Every map key and value is `#[repr(C)]`, has explicit padding fields that both sides
//! keep zeroed (the kernel hashes and compares keys byte for byte), and has its size
//! asserted at compile time so that a change of layout is a deliberate act.
//!
//! Addresses are stored as four `u32` words holding the address bytes in network order
//! (an IPv4 address uses the first word, the rest stay zero). Ports are stored in network
//! byte order, exactly as they appear on the wire, so the fast path never swaps bytes.
#![no_std]

pub mod csum;
pub mod firewall;
mod hash;
#[cfg(feature = "user")]
mod user;

pub use hash::flow_hash;
#[cfg(feature = "user")]
pub use user::{addr_words, words_addr};

/// Address family tags used in keys (`family` fields).
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// IP protocol numbers the load balancer handles.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A Maglev slot that names no backend: the VIP has no backend in rotation.
pub const NO_BACKEND: u32 = u32::MAX;

/// Capacities of the fixed-size maps, then the defaults of those the agent sizes at load
/// time: the connection table, the Maglev ring and the NAT tables.
pub const MAX_VIPS: u32 = 1024;
pub const MAX_BACKENDS: u32 = 16384;
pub const MAX_INTERFACES: u32 = 64;
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 1 << 20;
pub const DEFAULT_MAGLEV_RING_ENTRIES: u32 = 1 << 22;
/// Default capacity of each NAT table (`NAT_FLOWS`, `NAT_REVERSE`): concurrent NAT flows.
pub const DEFAULT_NAT_ENTRIES: u32 = 1 << 18;

/// Version of the maps' layout (names, key and value types, sizes). Pinned maps live
/// under a directory named after it, and an agent adopts only maps of its own version:
/// any change to a map type or size must bump it.
pub const MAP_LAYOUT_VERSION: u32 = 8;

/// Slots of `GLOBAL_STATS`: room for counters added later without a layout change.
pub const GLOBAL_STATS_SLOTS: u32 = 64;
const _: () = assert!(Counter::COUNT <= GLOBAL_STATS_SLOTS);

/// Names of the maps in the XDP object, used by the agent and the tests.
pub mod map_names {
    pub const VIPS: &str = "VIPS";
    pub const VIP_ADDRESSES: &str = "VIP_ADDRESSES";
    pub const MAGLEV_RING: &str = "MAGLEV_RING";
    pub const BACKENDS: &str = "BACKENDS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    pub const NAT_FLOWS: &str = "NAT_FLOWS";
    pub const NAT_REVERSE: &str = "NAT_REVERSE";
    pub const NAT_CONFIG: &str = "NAT_CONFIG";
    pub const NAT_PROGRAM: &str = "NAT_PROGRAM";
    pub const OWN_MACS: &str = "OWN_MACS";
    pub const DESTINATIONS: &str = "DESTINATIONS";
    pub const NAT_HANDOFF: &str = "NAT_HANDOFF";
    pub const CLIENT_HOPS: &str = "CLIENT_HOPS";
    pub const FW_VIPS: &str = "FW_VIPS";
    pub const FW_SOURCES: &str = "FW_SOURCES";
    pub const FW_PORTS: &str = "FW_PORTS";
    pub const FW_HOST_PORTS: &str = "FW_HOST_PORTS";
    pub const FW_SETTINGS: &str = "FW_SETTINGS";
    pub const FW_VIP_STATS: &str = "FW_VIP_STATS";
    pub const FW_RULE_STATS: &str = "FW_RULE_STATS";
    pub const FLOOD_BUCKETS: &str = "FLOOD_BUCKETS";
    pub const FLOOD_CAP: &str = "FLOOD_CAP";
}

/// Size of `NAT_HANDOFF`'s value: the parse of a packet that `weir_xdp` hands to
/// `weir_nat` (a type of the XDP program alone, which asserts this size).
pub const NAT_HANDOFF_SIZE: u32 = 72;

/// Name of the XDP program in the object (the one attached to interfaces).
pub const PROGRAM_NAME: &str = "weir_xdp";
/// Name of the NAT program, which `PROGRAM_NAME` tail calls (`NAT_PROGRAM[0]`).
pub const NAT_PROGRAM_NAME: &str = "weir_nat";

/// Key of the VIP table: (address, port, protocol). Port 0 means every port of the
/// address; the fast path tries the exact port first, then port 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub protocol: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// Key of the VIP address set: every address that carries at least one VIP. Used for
/// packets whose ports cannot be read (fragments), so they are never mistaken for
/// traffic to the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipAddressKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<VipAddressKey>() == 20);

/// `VipMeta::flags`: pick backends by the client address only (client affinity).
pub const VIP_HASH_SOURCE_ONLY: u32 = 1 << 0;
/// `VipMeta::flags`: full NAT: the destination becomes the backend, the source the
/// backend's `nat_source` and a port of the NAT range; replies are translated back.
pub const VIP_FORWARDING_NAT: u32 = 1 << 1;
/// `VipMeta::flags`: the VIP has a firewall policy (`FW_VIPS[id]`): source filters, a
/// port list, a new-flow rate limit, or the global new-flow cap. Without it the fast
/// path never looks at the firewall maps.
pub const VIP_GUARDED: u32 = 1 << 2;
/// `VipMeta::flags`, DSR only: no connection table; every packet goes to the backend
/// the Maglev table gives its flow (Katran's `F_LRU_BYPASS`).
pub const VIP_NO_CONNTRACK: u32 = 1 << 3;

/// Value of the VIP table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into `VIP_STATS`, and the owner tag checked in `Backend::vip_id`.
    pub id: u32,
    pub flags: u32,
    /// This VIP's Maglev table is `MAGLEV_RING[ring_base .. ring_base + ring_size]`.
    pub ring_base: u32,
    pub ring_size: u32,
}
const _: () = assert!(core::mem::size_of::<VipMeta>() == 16);

/// `Backend::flags`: established flows may keep using this backend. Cleared when a
/// backend is removed, so its flows move to the backend that now owns their slot.
pub const BACKEND_ACCEPTS_FLOWS: u8 = 1 << 0;
/// `Backend::flags`: the backend is in rotation (ready, up, weight above 0): Maglev may
/// give it new flows. A SYN that finds a flow of a backend without it (draining) is a
/// new connection reusing the 5-tuple, and is placed by Maglev.
pub const BACKEND_TAKES_NEW_FLOWS: u8 = 1 << 1;

/// Value of the backend array, indexed by backend id (a Maglev slot's content).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u32; 4],
    /// NAT only: the load balancer's address towards this backend (the SNAT source).
    pub nat_source: [u32; 4],
    /// The VIP this backend serves; a flow entry whose VIP differs is stale.
    pub vip_id: u32,
    pub family: u8,
    pub flags: u8,
    /// NAT only, network byte order: the port the backend listens on; 0 keeps the
    /// client's destination port (VIPs on every port).
    pub port: u16,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 40);

/// Key of the connection table: the flow's 5-tuple as the client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The same flow seen from the other end: addresses and ports swapped.
    #[inline(always)]
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

/// `Flow::flags`: the client (or, NAT, the backend) sent a FIN or RST; the flow is ending.
pub const FLOW_CLOSING: u16 = 1 << 0;
/// `Flow::flags`, NAT only: a TCP flow opened by a SYN that its backend has not answered
/// yet; it ends `FlowTimeouts::tcp_embryonic_ns` after its last packet. The backend's
/// first reply clears it.
pub const FLOW_EMBRYONIC: u16 = 1 << 1;

/// How often a flow's `last_seen_ns` is refreshed: writing it on every packet would
/// dirty the entry's cache line for nothing.
pub const FLOW_TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// Value of the connection tables (`CONNTRACK` for DSR, `NAT_FLOWS` for NAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_id: u32,
    pub flags: u16,
    /// NAT only, network byte order: the source port the flow was given towards its
    /// backend (its `NAT_REVERSE` entry's key has it).
    pub nat_port: u16,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of a recent packet, at most
    /// `FLOW_TOUCH_INTERVAL_NS` old while packets flow.
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Flow>() == 16);

/// When a flow is over: `NAT_CONFIG`'s value, read by the XDP program to reclaim the
/// ports of ended NAT flows and by the agent to sweep them and to count live flows.
/// All times in nanoseconds of `bpf_ktime_get_coarse_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// A TCP flow with no packet from its client for this long is over (a silent peer, a
    /// lost FIN).
    pub tcp_idle_ns: u64,
    /// A UDP flow with no packet from its client for this long is over.
    pub udp_idle_ns: u64,
    /// A flow whose client sent FIN or RST is over once its packets stop for this long.
    pub closing_linger_ns: u64,
    /// An embryonic flow (`FLOW_EMBRYONIC`: its backend has not answered) with no packet
    /// for this long is over.
    pub tcp_embryonic_ns: u64,
    /// The NAT source ports: `nat_port_first .. nat_port_first + nat_port_count` (host
    /// order). A count of 0 means no VIP uses NAT, and replies are not even looked up.
    pub nat_port_first: u32,
    pub nat_port_count: u32,
}
const _: () = assert!(core::mem::size_of::<FlowTimeouts>() == 40);

impl FlowTimeouts {
    pub const DEFAULT: FlowTimeouts = FlowTimeouts {
        tcp_idle_ns: 300_000_000_000,
        udp_idle_ns: 30_000_000_000,
        closing_linger_ns: 2_000_000_000,
        tcp_embryonic_ns: 5_000_000_000,
        nat_port_first: 0,
        nat_port_count: 0,
    };

    /// Whether `flow` (of `protocol`) has ended at `now_ns`. `last_seen_ns` is refreshed
    /// once per `FLOW_TOUCH_INTERVAL_NS` only, hence the slack.
    #[inline(always)]
    pub fn expired(&self, flow: &Flow, protocol: u8, now_ns: u64) -> bool {
        let quiet = now_ns.saturating_sub(flow.last_seen_ns);
        let limit = if flow.flags & FLOW_CLOSING != 0 {
            self.closing_linger_ns
        } else if flow.flags & FLOW_EMBRYONIC != 0 {
            self.tcp_embryonic_ns
        } else if protocol == PROTO_UDP {
            self.udp_idle_ns
        } else {
            self.tcp_idle_ns
        };
        quiet >= limit + FLOW_TOUCH_INTERVAL_NS
    }
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        FlowTimeouts::DEFAULT
    }
}

/// Value of `NAT_REVERSE`: the flow that holds a reply key, and when it claimed it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReply {
    /// The client flow key (its `NAT_FLOWS` key).
    pub client: FlowKey,
    /// `bpf_ktime_get_coarse_ns` when the flow claimed the key. A flow that takes the key
    /// over from an ended one swaps it with a compare-and-swap, so that of two CPUs
    /// reclaiming the key at once only one does.
    pub claimed_ns: u64,
}
const _: () = assert!(core::mem::size_of::<NatReply>() == 48);

/// A reply key claimed less than this long ago is never taken over, even if no flow
/// holds it: the flow may be being created on another CPU, which claims the key before
/// it writes the flow.
pub const NAT_CLAIM_GRACE_NS: u64 = FLOW_TOUCH_INTERVAL_NS;

/// How many source ports a new NAT flow tries (consecutive from a hash of the flow)
/// before it is dropped as `drop_nat_ports_exhausted`: bounds the work per packet.
pub const NAT_PORT_PROBES: u32 = 16;

/// How long a CPU reuses a backend's `bpf_fib_lookup` result. The lookup is the most
/// expensive step of the fast path (100 ns for IPv4, 270 ns for IPv6 measured here);
/// reusing it for 100 ms bounds how long a changed route or neighbour goes unnoticed.
pub const NEXT_HOP_TTL_NS: u64 = 100_000_000;

/// A backend's next hop as `bpf_fib_lookup` found it, cached per CPU (`NEXT_HOPS`,
/// indexed by backend id; `CLIENT_HOPS` holds NAT clients', see `ClientHop`). All zero
/// means "not cached"; the agent zeroes a backend id's entry whenever it gives the id to
/// a new backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// `bpf_ktime_get_coarse_ns` after which the entry must be looked up again.
    pub expires_ns: u64,
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The egress MTU (0: unknown, not checked); redirected packets larger are dropped.
    pub mtu: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 32);

/// `OWN_MACS[0]`: the MAC addresses of the interfaces the program is attached to, as
/// `mac_word`s, from the first slot on; a 0 ends the list. Only frames sent to one of them
/// are load-balanced. An array of one value rather than a hash: the fast path pays one
/// inlined lookup and a comparison per interface instead of hashing. Slots are only ever
/// added, so a reader never sees a known address vanish.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnMacs {
    pub words: [u64; MAX_INTERFACES as usize],
}
const _: () = assert!(core::mem::size_of::<OwnMacs>() == 512);

impl Default for OwnMacs {
    fn default() -> Self {
        OwnMacs {
            words: [0; MAX_INTERFACES as usize],
        }
    }
}

/// `DESTINATIONS[DESTINATION_VIPS]`: every VIP address, `[DESTINATION_NAT_SOURCES]`:
/// every NAT source; each a Bloom filter with one hash function. A destination clear in
/// both is the host's, passed after reading the IP header only; only one for a NAT
/// source is checked for a NAT reply. A set bit is no promise
/// (another address may share it): such packets take the full path. 65536 bits keep
/// false positives below 1 % up to 650 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestinationFilter {
    pub words: [u64; DESTINATION_FILTER_WORDS],
}
const DESTINATION_FILTER_WORDS: usize = 1024;
const _: () = assert!(core::mem::size_of::<DestinationFilter>() == 8192);

impl DestinationFilter {
    pub const EMPTY: DestinationFilter = DestinationFilter {
        words: [0; DESTINATION_FILTER_WORDS],
    };

    /// The address's bit: the top 16 bits of its hash.
    #[inline(always)]
    const fn bit(addr: &[u32; 4]) -> u32 {
        address_hash(addr) >> 16
    }

    pub fn insert(&mut self, addr: &[u32; 4]) {
        let bit = Self::bit(addr);
        self.words[(bit >> 6) as usize] |= 1 << (bit & 63);
    }

    /// Whether the address may be one of those inserted.
    #[inline(always)]
    pub fn may_contain(&self, addr: &[u32; 4]) -> bool {
        let bit = Self::bit(addr);
        self.words[(bit >> 6) as usize] & (1 << (bit & 63)) != 0
    }
}

impl Default for DestinationFilter {
    fn default() -> Self {
        DestinationFilter::EMPTY
    }
}

/// `DESTINATIONS` slots.
pub const DESTINATION_VIPS: u32 = 0;
pub const DESTINATION_NAT_SOURCES: u32 = 1;

/// A hash of an address (IPv4 and IPv6 alike: an IPv4 address is its first word) whose
/// top bits are well mixed: Fibonacci hashing of the folded words. Callers take the top
/// bits they need.
#[inline(always)]
pub const fn address_hash(addr: &[u32; 4]) -> u32 {
    (addr[0] ^ addr[1] ^ addr[2] ^ addr[3]).wrapping_mul(0x9e37_79b1)
}

/// Slots of `CLIENT_HOPS`, a power of two.
pub const CLIENT_HOP_SLOTS: u32 = 4096;

/// A slot of `CLIENT_HOPS`, per CPU: the next hop towards a NAT client, cached for
/// `NEXT_HOP_TTL_NS` like a backend's. Direct-mapped: the slot is picked by the top bits
/// of the client address's hash and holds the address it caches, so a client that maps
/// to a taken slot replaces its holder. All zero means empty (`expires_ns` 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientHop {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 7],
    pub hop: NextHop,
}
const _: () = assert!(core::mem::size_of::<ClientHop>() == 56);

impl ClientHop {
    /// The `CLIENT_HOPS` slot of a client address.
    #[inline(always)]
    pub const fn slot(addr: &[u32; 4]) -> u32 {
        address_hash(addr) >> (32 - CLIENT_HOP_SLOTS.trailing_zeros())
    }
}

/// A MAC address as one number: its six bytes in order, then two zero bytes. 0 is the
/// all-zero address, which no interface the agent attaches to has.
#[inline(always)]
pub const fn mac_word(mac: [u8; 6]) -> u64 {
    u64::from_ne_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
}

/// Per-CPU traffic counters kept per VIP and per backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 24);

/// What the program did with a packet, for the per-CPU `GLOBAL_STATS` array.
///
/// Every packet is counted under exactly one *verdict reason*; *events* (`FlowNew` to
/// `NatIcmpTranslated`) happen on the way and are counted in addition. New counters are
/// appended, so that the slots of the old ones keep their meaning; `verdict` tells which
/// is which.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Not IPv4/IPv6 (ARP, LLDP, stacked VLANs …): passed to the kernel.
    PassNotIp = 0,
    /// IP, but not for a VIP: passed to the kernel.
    PassNotVip,
    /// For a VIP (or a NAT flow's reply), but in a frame not sent to the MAC address of
    /// an attached interface (a flooding bridge, a promiscuous NIC): another host's
    /// frame, passed to the kernel (which drops it) rather than forwarded twice.
    PassNotOurMac,
    /// Forwarded to a backend out of the ingress interface.
    Tx,
    /// Forwarded to a backend out of another interface.
    Redirect,
    /// The VIP has no backend in rotation.
    DropNoBackend,
    /// An IP fragment addressed to a VIP address (see docs/architecture.md).
    DropFragment,
    /// Headers cut short or inconsistent.
    DropMalformed,
    /// The backend's next hop has no resolved neighbour entry yet.
    DropFibNoNeigh,
    /// Forwarding is disabled on the ingress interface (the agent enables it on the
    /// interfaces it attaches to).
    DropFibForwardingDisabled,
    /// No usable route to the backend (unreachable, blackhole, prohibited …).
    DropFibFailed,
    /// The route to the backend leaves through an interface the agent has not attached.
    DropEgressNotAttached,
    /// A new NAT flow found no free source port within `NAT_PORT_PROBES` tries.
    DropNatPortsExhausted,
    /// A new NAT flow did not fit in the NAT tables (`agent.nat_entries`).
    DropNatTableFull,
    /// The NAT program is not in place (`NAT_PROGRAM`): an agent that failed half-way.
    DropNatUnavailable,
    /// A TCP segment for a NAT VIP that is not a SYN and has no NAT flow (or one that
    /// has ended, or whose backend left): only a SYN creates NAT state, so a spoofed ACK
    /// flood cannot fill the NAT tables.
    DropNatNoFlow,
    /// A new flow was scheduled by Maglev.
    FlowNew,
    /// A flow's backend was removed; the flow moved to its slot's current backend.
    FlowRescheduled,
    /// The connection table refused an insert; the flow is still forwarded by hash.
    ConntrackInsertFailed,
    /// An ICMP "fragmentation needed" / ICMPv6 "packet too big" went to its flow's backend.
    IcmpTooBigForwarded,
    /// A backend's reply on a NAT flow was translated back to its client.
    NatReply,
    /// A new NAT flow took over the source port of a flow that had ended.
    NatPortReclaimed,
    /// An ICMP error about a NAT flow was translated: from the backend's side to its
    /// client, or a "too big" from the client's side to its backend.
    NatIcmpTranslated,
    /// A TCP SYN (ACK clear) reused the 5-tuple of a flow that is closing, or whose
    /// backend takes no new flows (draining): a new connection, placed by Maglev as a new
    /// flow (also counted `flow_new`).
    FlowReused,
    /// Dropped by a VIP's firewall: a denied source, or a port not in `allow_ports`.
    DropFirewall,
    /// Dropped by a `[firewall.host]` rule: a source not allowed to the host's port.
    DropHostFirewall,
    /// A new flow over its source's rate (`new_flow_rate`, per source and VIP).
    DropRateLimited,
    /// A new flow over the global cap (`firewall.new_flow_cap`).
    DropFlowCap,
    /// A frame to redirect that is larger than the egress interface's MTU.
    DropTooBig,
}

impl Counter {
    /// Number of `GLOBAL_STATS` slots.
    pub const COUNT: u32 = Counter::DropTooBig as u32 + 1;

    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::PassNotIp,
        Counter::PassNotVip,
        Counter::PassNotOurMac,
        Counter::Tx,
        Counter::Redirect,
        Counter::DropNoBackend,
        Counter::DropFragment,
        Counter::DropMalformed,
        Counter::DropFibNoNeigh,
        Counter::DropFibForwardingDisabled,
        Counter::DropFibFailed,
        Counter::DropEgressNotAttached,
        Counter::DropNatPortsExhausted,
        Counter::DropNatTableFull,
        Counter::DropNatUnavailable,
        Counter::DropNatNoFlow,
        Counter::FlowNew,
        Counter::FlowRescheduled,
        Counter::ConntrackInsertFailed,
        Counter::IcmpTooBigForwarded,
        Counter::NatReply,
        Counter::NatPortReclaimed,
        Counter::NatIcmpTranslated,
        Counter::FlowReused,
        Counter::DropFirewall,
        Counter::DropHostFirewall,
        Counter::DropRateLimited,
        Counter::DropFlowCap,
        Counter::DropTooBig,
    ];

    /// The XDP verdict this reason ends in, or `None` for an event counter.
    pub const fn verdict(self) -> Option<Verdict> {
        match self {
            Counter::PassNotIp | Counter::PassNotVip | Counter::PassNotOurMac => {
                Some(Verdict::Pass)
            }
            Counter::Tx => Some(Verdict::Tx),
            Counter::Redirect => Some(Verdict::Redirect),
            Counter::DropNoBackend
            | Counter::DropFragment
            | Counter::DropMalformed
            | Counter::DropFibNoNeigh
            | Counter::DropFibForwardingDisabled
            | Counter::DropFibFailed
            | Counter::DropEgressNotAttached
            | Counter::DropNatPortsExhausted
            | Counter::DropNatTableFull
            | Counter::DropNatUnavailable
            | Counter::DropNatNoFlow
            | Counter::DropFirewall
            | Counter::DropHostFirewall
            | Counter::DropRateLimited
            | Counter::DropFlowCap
            | Counter::DropTooBig => Some(Verdict::Drop),
            Counter::FlowNew
            | Counter::FlowRescheduled
            | Counter::ConntrackInsertFailed
            | Counter::IcmpTooBigForwarded
            | Counter::NatReply
            | Counter::NatPortReclaimed
            | Counter::NatIcmpTranslated
            | Counter::FlowReused => None,
        }
    }

    /// Stable snake_case name, used by the CLI, logs and (later) metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassNotVip => "pass_not_vip",
            Counter::PassNotOurMac => "pass_not_our_mac",
            Counter::Tx => "tx",
            Counter::Redirect => "redirect",
            Counter::DropNoBackend => "drop_no_backend",
            Counter::DropFragment => "drop_fragment",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropFibNoNeigh => "drop_fib_no_neigh",
            Counter::DropFibForwardingDisabled => "drop_fib_forwarding_disabled",
            Counter::DropFibFailed => "drop_fib_failed",
            Counter::DropEgressNotAttached => "drop_egress_not_attached",
            Counter::DropNatPortsExhausted => "drop_nat_ports_exhausted",
            Counter::DropNatTableFull => "drop_nat_table_full",
            Counter::DropNatUnavailable => "drop_nat_unavailable",
            Counter::DropNatNoFlow => "drop_nat_no_flow",
            Counter::FlowNew => "flow_new",
            Counter::FlowRescheduled => "flow_rescheduled",
            Counter::ConntrackInsertFailed => "conntrack_insert_failed",
            Counter::IcmpTooBigForwarded => "icmp_too_big_forwarded",
            Counter::NatReply => "nat_reply",
            Counter::NatPortReclaimed => "nat_port_reclaimed",
            Counter::NatIcmpTranslated => "nat_icmp_translated",
            Counter::FlowReused => "flow_reused",
            Counter::DropFirewall => "drop_firewall",
            Counter::DropHostFirewall => "drop_host_firewall",
            Counter::DropRateLimited => "drop_rate_limited",
            Counter::DropFlowCap => "drop_flow_cap",
            Counter::DropTooBig => "drop_too_big",
        }
    }
}

/// XDP verdicts, with the kernel's numeric values.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Aborted = 0,
    Drop = 1,
    Pass = 2,
    Tx = 3,
    Redirect = 4,
}

impl Verdict {
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Aborted => "aborted",
            Verdict::Drop => "drop",
            Verdict::Pass => "pass",
            Verdict::Tx => "tx",
            Verdict::Redirect => "redirect",
        }
    }
}
