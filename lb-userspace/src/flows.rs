//! When a connection-table entry stands for a live connection. The table is an LRU: an
//! entry stays until the space is needed, long after its connection ended, so liveness
//! comes from the entry's last-seen time and closing flag (kept by the XDP program).

use lb_common::{FLOW_CLOSING, FLOW_TOUCH_INTERVAL_NS, Flow, PROTO_UDP};

/// A TCP flow with no packet for this long is over (a silent peer, a lost FIN).
pub const TCP_IDLE_NS: u64 = 300_000_000_000;
/// A UDP flow with no packet for this long is over.
pub const UDP_IDLE_NS: u64 = 30_000_000_000;
/// A flow whose client sent FIN or RST is over once its packets stop for this long.
pub const CLOSING_LINGER_NS: u64 = 2_000_000_000;

/// Whether `flow` (of `protocol`) is still a live connection at `now_ns`
/// (CLOCK_MONOTONIC_COARSE, the clock of `bpf_ktime_get_coarse_ns`).
pub fn is_live(flow: &Flow, protocol: u8, now_ns: u64) -> bool {
    let quiet = now_ns.saturating_sub(flow.last_seen_ns);
    // `last_seen_ns` is refreshed once per touch interval only.
    let limit = if flow.flags & FLOW_CLOSING != 0 {
        CLOSING_LINGER_NS
    } else if protocol == PROTO_UDP {
        UDP_IDLE_NS
    } else {
        TCP_IDLE_NS
    };
    quiet < limit + FLOW_TOUCH_INTERVAL_NS
}

/// The current CLOCK_MONOTONIC_COARSE time in nanoseconds.
pub fn now_ns() -> u64 {
    // SAFETY: `ts` is a valid, writable timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use lb_common::PROTO_TCP;

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn flow(flags: u32, last_seen_ns: u64) -> Flow {
        Flow {
            backend_id: 1,
            flags,
            last_seen_ns,
        }
    }

    #[test]
    fn open_flows_live_until_their_idle_timeout() {
        let now = 1000 * SECOND;
        assert!(is_live(&flow(0, now - 299 * SECOND), PROTO_TCP, now));
        assert!(!is_live(&flow(0, now - 302 * SECOND), PROTO_TCP, now));
        assert!(is_live(&flow(0, now - 29 * SECOND), PROTO_UDP, now));
        assert!(!is_live(&flow(0, now - 32 * SECOND), PROTO_UDP, now));
    }

    #[test]
    fn a_closing_flow_ends_soon_after_its_last_packet() {
        let now = 1000 * SECOND;
        assert!(is_live(&flow(FLOW_CLOSING, now - SECOND), PROTO_TCP, now));
        assert!(!is_live(
            &flow(FLOW_CLOSING, now - 4 * SECOND),
            PROTO_TCP,
            now
        ));
    }

    #[test]
    fn the_clock_is_the_coarse_monotonic_one() {
        let (a, b) = (now_ns(), now_ns());
        assert!(b >= a && a > 0);
    }
}
