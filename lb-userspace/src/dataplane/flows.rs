//! When a flow-table entry stands for a live connection. The connection table is an LRU:
//! an entry stays until the space is needed, long after its connection ended, so
//! liveness comes from the entry's last-seen time and closing flag (kept by the XDP
//! program). The NAT tables are plain hashes: the agent sweeps their ended entries.

use std::collections::HashMap;

use lb_common::{Flow, FlowKey, FlowTimeouts};

/// Whether `flow` (of `protocol`) is still a live connection at `now_ns`
/// (CLOCK_MONOTONIC_COARSE, the clock of `bpf_ktime_get_coarse_ns`).
pub fn is_live(flow: &Flow, protocol: u8, now_ns: u64, timeouts: &FlowTimeouts) -> bool {
    !timeouts.expired(flow, protocol, now_ns)
}

/// Live connections per backend id among `entries` (of the connection table and the NAT
/// flows), at `now_ns`.
pub fn live_per_backend(
    entries: impl IntoIterator<Item = (FlowKey, Flow)>,
    now_ns: u64,
    timeouts: &FlowTimeouts,
) -> HashMap<u32, u64> {
    let mut counts = HashMap::new();
    for (key, flow) in entries {
        if is_live(&flow, key.protocol, now_ns, timeouts) {
            *counts.entry(flow.backend_id).or_insert(0) += 1;
        }
    }
    counts
}

/// What the NAT sweep does with a reply entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    Keep,
    /// Its flow has ended, or has moved on to another port: remove it.
    Ended,
    /// No flow at all: remove it if that is still so at the next sweep.
    Orphan,
}

/// The fate of the reply entry `reply` whose client flow is `flow` (as the NAT_FLOWS
/// entry of its client key reads now).
pub fn sweep_decision(
    reply: &FlowKey,
    flow: Option<&Flow>,
    timeouts: &FlowTimeouts,
    now_ns: u64,
) -> Sweep {
    match flow {
        None => Sweep::Orphan,
        Some(flow) if flow.nat_port != reply.dst_port => Sweep::Ended,
        Some(flow) if timeouts.expired(flow, reply.protocol, now_ns) => Sweep::Ended,
        Some(_) => Sweep::Keep,
    }
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
    use lb_common::{FLOW_CLOSING, FLOW_EMBRYONIC, PROTO_TCP, PROTO_UDP};

    use super::*;

    const SECOND: u64 = 1_000_000_000;
    const DEFAULT: FlowTimeouts = FlowTimeouts::DEFAULT;

    fn flow(flags: u16, last_seen_ns: u64) -> Flow {
        Flow {
            backend_id: 1,
            flags,
            nat_port: 0,
            last_seen_ns,
        }
    }

    #[test]
    fn open_flows_live_until_their_idle_timeout() {
        let now = 1000 * SECOND;
        assert!(is_live(
            &flow(0, now - 299 * SECOND),
            PROTO_TCP,
            now,
            &DEFAULT
        ));
        assert!(!is_live(
            &flow(0, now - 302 * SECOND),
            PROTO_TCP,
            now,
            &DEFAULT
        ));
        assert!(is_live(
            &flow(0, now - 29 * SECOND),
            PROTO_UDP,
            now,
            &DEFAULT
        ));
        assert!(!is_live(
            &flow(0, now - 32 * SECOND),
            PROTO_UDP,
            now,
            &DEFAULT
        ));
    }

    #[test]
    fn a_closing_flow_ends_soon_after_its_last_packet() {
        let now = 1000 * SECOND;
        let closing = flow(FLOW_CLOSING, now - SECOND);
        assert!(is_live(&closing, PROTO_TCP, now, &DEFAULT));
        let closed = flow(FLOW_CLOSING, now - 4 * SECOND);
        assert!(!is_live(&closed, PROTO_TCP, now, &DEFAULT));
    }

    #[test]
    fn an_unanswered_nat_flow_ends_after_the_embryonic_timeout() {
        let now = 1000 * SECOND;
        let embryonic = flow(FLOW_EMBRYONIC, now - 4 * SECOND);
        assert!(is_live(&embryonic, PROTO_TCP, now, &DEFAULT));
        let unanswered = flow(FLOW_EMBRYONIC, now - 7 * SECOND);
        assert!(!is_live(&unanswered, PROTO_TCP, now, &DEFAULT));
        let reply = FlowKey::default();
        assert_eq!(
            sweep_decision(&reply, Some(&unanswered), &DEFAULT, now),
            Sweep::Ended
        );
        // Closing wins: a SYN then RST lingers, no longer.
        let reset = flow(FLOW_EMBRYONIC | FLOW_CLOSING, now - 4 * SECOND);
        assert!(!is_live(&reset, PROTO_TCP, now, &DEFAULT));
    }

    #[test]
    fn configured_timeouts_apply() {
        let now = 1000 * SECOND;
        let short = FlowTimeouts {
            udp_idle_ns: 5 * SECOND,
            ..DEFAULT
        };
        assert!(!is_live(&flow(0, now - 7 * SECOND), PROTO_UDP, now, &short));
        assert!(is_live(
            &flow(0, now - 7 * SECOND),
            PROTO_UDP,
            now,
            &DEFAULT
        ));
    }

    #[test]
    fn the_sweep_removes_ended_and_moved_flows_and_suspects_orphans() {
        let now = 1000 * SECOND;
        let reply = FlowKey::new(
            "198.18.0.11".parse().unwrap(),
            80,
            "198.18.0.1".parse().unwrap(),
            20000,
            PROTO_TCP,
        );
        let mut live = flow(0, now);
        live.nat_port = reply.dst_port;
        assert_eq!(
            sweep_decision(&reply, Some(&live), &DEFAULT, now),
            Sweep::Keep
        );
        let mut ended = flow(FLOW_CLOSING, now - 10 * SECOND);
        ended.nat_port = reply.dst_port;
        assert_eq!(
            sweep_decision(&reply, Some(&ended), &DEFAULT, now),
            Sweep::Ended
        );
        let moved = Flow {
            nat_port: 1234u16.to_be(),
            ..live
        };
        assert_eq!(
            sweep_decision(&reply, Some(&moved), &DEFAULT, now),
            Sweep::Ended
        );
        assert_eq!(sweep_decision(&reply, None, &DEFAULT, now), Sweep::Orphan);
    }

    fn clock_ns(clock: libc::clockid_t) -> u64 {
        // SAFETY: `ts` is a valid, writable timespec.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::clock_gettime(clock, &mut ts) }, 0);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    #[test]
    fn live_flows_are_counted_per_backend() {
        let now = 1000 * SECOND;
        let key = |port| {
            FlowKey::new(
                "198.18.0.100".parse().unwrap(),
                port,
                "198.19.0.10".parse().unwrap(),
                80,
                PROTO_TCP,
            )
        };
        let on = |backend_id, last_seen_ns| Flow {
            backend_id,
            ..flow(0, last_seen_ns)
        };
        let entries = [
            (key(1), on(1, now)),
            (key(2), on(1, now - SECOND)),
            (key(3), on(2, now)),
            (key(4), on(2, now - 400 * SECOND)),
        ];
        let counts = live_per_backend(entries, now, &DEFAULT);
        assert_eq!(counts, HashMap::from([(1, 2), (2, 1)]));
    }

    #[test]
    fn the_clock_is_the_coarse_monotonic_one() {
        // Between two reads of the coarse clock, every time: a finer clock runs up to a
        // tick ahead of it, another clock (boot time, real time) is elsewhere entirely.
        for _ in 0..1000 {
            let before = clock_ns(libc::CLOCK_MONOTONIC_COARSE);
            let now = now_ns();
            let after = clock_ns(libc::CLOCK_MONOTONIC_COARSE);
            assert!(before <= now && now <= after, "{before} {now} {after}");
        }
        // And a coarse clock: its reads repeat within a tick.
        let reads: std::collections::BTreeSet<u64> = (0..1000).map(|_| now_ns()).collect();
        assert!(reads.len() < 1000, "every read differs: not a coarse clock");
    }
}
