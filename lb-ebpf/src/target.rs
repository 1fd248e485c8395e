//! Where a packet goes: what selection (`select`, `nat`) decides and forwarding and the
//! counters (`forward`, `stats`) use. A module of its own so that neither side imports
//! the other.

/// Where a packet goes.
pub struct Target {
    pub vip_id: u32,
    pub backend_id: u32,
    pub backend_addr: [u32; 4],
    /// The packet started (or restarted) a flow on this backend.
    pub new_flow: bool,
    /// `bpf_ktime_get_coarse_ns` when the packet was selected.
    pub now: u64,
    /// NAT: the source the packet takes towards the backend. `None` for DSR.
    pub nat: Option<NatTarget>,
}

/// A NAT flow's side towards its backend.
#[derive(Clone, Copy)]
pub struct NatTarget {
    pub source: [u32; 4],
    /// Network byte order.
    pub source_port: u16,
    /// Network byte order.
    pub backend_port: u16,
}
