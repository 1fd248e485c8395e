//! Firewall and flood guard fixtures: the real XDP program on crafted frames (the bed of
//! `common/mod.rs`): verdict, output frame, every global counter, and the firewall's own
//! counters per VIP and per rule. Token buckets run on a clock the test drives: it
//! writes a bucket's last-refill time (the program's clock is `bpf_ktime_get_coarse_ns`,
//! read here as CLOCK_MONOTONIC_COARSE).

mod common;

use common::*;
use etherparse::PacketBuilder;
use lb_common::{
    Counter, FAMILY_IPV6, VIP_GUARDED, Verdict, addr_words,
    firewall::{BucketKey, FirewallCounters, TokenBucket},
};
use weir::{config::Prefix, dataplane::flows::now_ns, stats::report::StatsReport};

const SECOND: u64 = 1_000_000_000;

const FILTERED4: [u8; 4] = [198, 19, 0, 70];
const PORTS4: [u8; 4] = [198, 19, 0, 71];
const RATED4: [u8; 4] = [198, 19, 0, 72];
const FILTERED6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x70,
];
const RATED6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x72,
];

const FIREWALL: &str = r#"
[[vip]]
name = "filtered4"
address = "198.19.0.70"
port = 80
table_size = 251
allow_sources = ["198.18.0.0/16", "198.18.0.100"]
deny_sources = ["198.18.0.0/24"]
[[vip.backend]]
address = "198.18.0.11"

[[vip]]
name = "filtered6"
address = "2001:db8:0:ff::70"
port = 80
table_size = 251
allow_sources = ["2001:db8:0:1::/64", "198.18.0.0/16"]
deny_sources = ["2001:db8:0:1::100"]
[[vip.backend]]
address = "2001:db8:0:1::11"

[[vip]]
name = "ports4"
address = "198.19.0.71"
port = 0
table_size = 251
allow_ports = [80, 443]
[[vip.backend]]
address = "198.18.0.11"

[[vip]]
name = "rated4"
address = "198.19.0.72"
port = 80
table_size = 251
new_flow_rate = 10
new_flow_burst = 2
[[vip.backend]]
address = "198.18.0.11"

[[vip]]
name = "rated4-udp"
address = "198.19.0.72"
port = 53
protocol = "udp"
table_size = 251
new_flow_rate = 1
[[vip.backend]]
address = "198.18.0.11"

[[vip]]
name = "rated6"
address = "2001:db8:0:ff::72"
port = 80
table_size = 251
new_flow_rate = 1
[[vip.backend]]
address = "2001:db8:0:1::11"

[[firewall.host]]
protocol = "tcp"
port = 22
allow_sources = ["198.18.0.0/24", "2001:db8:0:1::/64"]
"#;

fn firewall_bed() -> Bed {
    // Rate-limit buckets are per CPU: a test that moved to the other CPU between two runs
    // would meet a fresh bucket. The test's own thread stays on one CPU until it ends.
    std::mem::forget(weir_testbed::cpu::pin_current_thread(0).expect("pin the test thread"));
    let mut bed = Bed::new();
    bed.apply(&format!("{BASE_CONFIG}{FIREWALL}"));
    bed
}

fn v4(last: [u8; 2]) -> [u8; 4] {
    [198, 18, last[0], last[1]]
}

fn v6(net: u16, host: u16) -> [u8; 16] {
    let mut addr = CLIENT6;
    addr[6..8].copy_from_slice(&net.to_be_bytes());
    addr[14..16].copy_from_slice(&host.to_be_bytes());
    addr
}

fn ack4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1001, 64240)
        .ack(1);
    let mut frame = Vec::new();
    builder.write(&mut frame, PAYLOAD).unwrap();
    frame
}

/// Forwarded to the VIP's only backend.
fn expect_forwarded(bed: &mut Bed, name: &str, frame: &[u8], backend: &str, new_flows: u64) {
    let expected = rewritten(frame, mac_of(backend), LB0_MAC);
    bed.expect(name, frame, Verdict::Tx, &expected, &forwarded(new_flows));
}

fn expect_dropped(bed: &mut Bed, name: &str, frame: &[u8], reason: Counter) {
    bed.expect(name, frame, Verdict::Drop, frame, &[(reason, 1)]);
}

fn vip_counters(bed: &Bed, vip: &str) -> FirewallCounters {
    let id = bed.vip(vip).meta.id;
    bed.dataplane.firewall().vip_counters(id).unwrap()
}

/// Packets the rule of `prefix` in `vip`'s firewall decided.
fn rule_count(bed: &Bed, vip: &str, prefix: &str) -> u64 {
    let id = bed.vip(vip).meta.id;
    let policy = bed.state.firewall().vip(id).unwrap();
    let (_, rule) = policy.sources[&prefix.parse::<Prefix>().unwrap()];
    bed.dataplane.firewall().rule_count(rule).unwrap()
}

fn default_rule_count(bed: &Bed, vip: &str) -> u64 {
    let id = bed.vip(vip).meta.id;
    let rule = bed.state.firewall().vip(id).unwrap().policy.default_rule;
    bed.dataplane.firewall().rule_count(rule).unwrap()
}

/// A VIP without a firewall is not flagged: its packets never reach the firewall.
#[test]
fn only_vips_with_a_firewall_are_guarded() {
    let bed = firewall_bed();
    assert_eq!(bed.vip("tcp4").meta.flags & VIP_GUARDED, 0);
    for vip in ["filtered4", "filtered6", "ports4", "rated4", "rated6"] {
        assert_eq!(bed.vip(vip).meta.flags & VIP_GUARDED, VIP_GUARDED, "{vip}");
    }
}

/// IPv4: the longest matching prefix decides (a /32 allow inside a /24 deny inside a /16
/// allow); a source no rule matches is dropped, as there is an allow list. Each packet is
/// counted once, per VIP and per rule.
#[test]
fn ipv4_sources_longest_prefix_wins() {
    let mut bed = firewall_bed();
    let cases = [
        ("the /32 allow inside the /24 deny", CLIENT4, true),
        ("the /24 deny", v4([0, 101]), false),
        ("the /16 allow", v4([1, 5]), true),
        ("no rule, with an allow list", [198, 19, 200, 1], false),
    ];
    for (name, src, allowed) in cases {
        let frame = tcp4(src, 40000, FILTERED4, 80);
        if allowed {
            expect_forwarded(&mut bed, name, &frame, "198.18.0.11", 1);
        } else {
            expect_dropped(&mut bed, name, &frame, Counter::DropFirewall);
        }
    }
    assert_eq!(rule_count(&bed, "filtered4", "198.18.0.100/32"), 1);
    assert_eq!(rule_count(&bed, "filtered4", "198.18.0.0/24"), 1);
    assert_eq!(rule_count(&bed, "filtered4", "198.18.0.0/16"), 1);
    assert_eq!(default_rule_count(&bed, "filtered4"), 1);
    assert_eq!(
        vip_counters(&bed, "filtered4"),
        FirewallCounters {
            denied_source: 2,
            ..FirewallCounters::default()
        }
    );
    // Established packets of a denied source are denied too (not only new flows).
    let ack = ack4(v4([0, 101]), 40000, FILTERED4, 80);
    expect_dropped(&mut bed, "an ACK from the /24", &ack, Counter::DropFirewall);

    // What `weir stats` shows.
    let report = StatsReport::collect(&bed.dataplane, &bed.state).unwrap();
    assert_eq!(report.counter(Counter::DropFirewall), 3);
    let firewall = report.vips.iter().find(|v| v.name == "filtered4").unwrap();
    assert_eq!(firewall.firewall.as_ref().unwrap().denied_source, 3);
    let shown = report.to_string();
    for line in [
        "firewall: denied source 3, denied port 0, rate limited 0, capped 0",
        "deny  198.18.0.0/24",
        "deny  not allowed",
        "host tcp/22:",
    ] {
        assert!(shown.contains(line), "{line:?} in\n{shown}");
    }
    let tcp4 = report.vips.iter().find(|v| v.name == "tcp4").unwrap();
    assert!(
        tcp4.firewall.is_none(),
        "a VIP without a firewall shows none"
    );
}

/// IPv6: the same, and an IPv4 prefix in an IPv6 VIP's list never matches its clients.
#[test]
fn ipv6_sources_longest_prefix_wins() {
    let mut bed = firewall_bed();
    let cases = [
        ("the /128 deny inside the /64 allow", CLIENT6, false),
        ("the /64 allow", v6(1, 5), true),
        ("another /64", v6(2, 5), false),
    ];
    for (name, src, allowed) in cases {
        let frame = tcp6(src, 40000, FILTERED6, 80);
        if allowed {
            expect_forwarded(&mut bed, name, &frame, "2001:db8:0:1::11", 1);
        } else {
            expect_dropped(&mut bed, name, &frame, Counter::DropFirewall);
        }
    }
    assert_eq!(rule_count(&bed, "filtered6", "2001:db8:0:1::100/128"), 1);
    assert_eq!(rule_count(&bed, "filtered6", "2001:db8:0:1::/64"), 1);
    assert_eq!(rule_count(&bed, "filtered6", "198.18.0.0/16"), 0);
    assert_eq!(vip_counters(&bed, "filtered6").denied_source, 2);
}

/// A port-0 VIP with `allow_ports` takes only those ports.
#[test]
fn port_lists_admit_only_their_ports() {
    let mut bed = firewall_bed();
    for port in [80, 443] {
        let frame = tcp4(CLIENT4, 40000, PORTS4, port);
        expect_forwarded(&mut bed, &format!("port {port}"), &frame, "198.18.0.11", 1);
    }
    for port in [22, 8080] {
        let frame = tcp4(CLIENT4, 40000, PORTS4, port);
        expect_dropped(
            &mut bed,
            &format!("port {port}"),
            &frame,
            Counter::DropFirewall,
        );
    }
    assert_eq!(vip_counters(&bed, "ports4").denied_port, 2);
}

/// `[firewall.host]`: the host's TCP 22 answers only the admin prefixes; its other
/// ports, and UDP 22, are untouched.
#[test]
fn host_rules_guard_only_their_ports() {
    let mut bed = firewall_bed();
    let pass = [(Counter::PassNotVip, 1)];
    let cases = [
        (
            "ssh from the admin /24",
            tcp4(CLIENT4, 40000, NOT_A_VIP4, 22),
            true,
        ),
        (
            "ssh from the admin /64",
            tcp6(
                CLIENT6,
                40000,
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
                22,
            ),
            true,
        ),
        (
            "ssh from elsewhere",
            tcp4(v4([5, 5]), 40000, NOT_A_VIP4, 22),
            false,
        ),
        (
            "ssh from another /64",
            tcp6(
                v6(2, 1),
                40000,
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
                22,
            ),
            false,
        ),
        (
            "another port from elsewhere",
            tcp4(v4([5, 5]), 40000, NOT_A_VIP4, 23),
            true,
        ),
        (
            "udp 22 from elsewhere",
            udp4(v4([5, 5]), 40000, NOT_A_VIP4, 22),
            true,
        ),
    ];
    for (name, frame, allowed) in cases {
        if allowed {
            bed.expect(name, &frame, Verdict::Pass, &frame, &pass);
        } else {
            expect_dropped(&mut bed, name, &frame, Counter::DropHostFirewall);
        }
    }
    let (_, ssh) = bed.state.firewall().host().next().unwrap();
    let denied = bed
        .dataplane
        .firewall()
        .rule_count(ssh.policy.default_rule)
        .unwrap();
    assert_eq!(denied, 2);
}

fn bucket_key(bed: &Bed, vip: &str, src: std::net::IpAddr) -> BucketKey {
    let (family, mut addr) = addr_words(src);
    if family == FAMILY_IPV6 {
        addr[2] = 0;
        addr[3] = 0;
    }
    BucketKey {
        vip_id: bed.vip(vip).meta.id,
        family,
        _pad: [0; 3],
        addr,
    }
}

/// TCP: a source opens `new_flow_burst` flows at once, then `new_flow_rate` a second;
/// its established packets are never limited. The bucket's clock is driven by the test.
#[test]
fn new_tcp_flows_are_rate_limited_per_source_on_a_driven_clock() {
    let mut bed = firewall_bed();
    for sport in [1000, 1001] {
        let frame = tcp4(CLIENT4, sport, RATED4, 80);
        expect_forwarded(
            &mut bed,
            &format!("burst {sport}"),
            &frame,
            "198.18.0.11",
            1,
        );
    }
    let third = tcp4(CLIENT4, 1002, RATED4, 80);
    expect_dropped(&mut bed, "over the burst", &third, Counter::DropRateLimited);
    let ack = ack4(CLIENT4, 1000, RATED4, 80);
    expect_forwarded(&mut bed, "an established packet", &ack, "198.18.0.11", 0);
    // Another source has a bucket of its own.
    let other = tcp4(v4([0, 7]), 1000, RATED4, 80);
    expect_forwarded(&mut bed, "another source", &other, "198.18.0.11", 1);

    let key = bucket_key(&bed, "rated4", std::net::IpAddr::from(CLIENT4));
    // Empty, refilled up to "now + an hour": no time has passed for it.
    let empty_until = |last_ns| TokenBucket {
        credit_ns: 0,
        last_ns,
    };
    bed.dataplane
        .firewall_mut()
        .set_bucket(&key, empty_until(now_ns() + 3600 * SECOND))
        .unwrap();
    expect_dropped(&mut bed, "still empty", &third, Counter::DropRateLimited);
    // 150 ms ago at 10 a second: one flow earned, not two.
    bed.dataplane
        .firewall_mut()
        .set_bucket(&key, empty_until(now_ns() - 150 * SECOND / 1000))
        .unwrap();
    expect_forwarded(&mut bed, "one flow earned", &third, "198.18.0.11", 1);
    let fourth = tcp4(CLIENT4, 1003, RATED4, 80);
    expect_dropped(&mut bed, "spent again", &fourth, Counter::DropRateLimited);
    // Ten seconds ago (100 flows at 10 a second): the credit is capped at the burst.
    bed.dataplane
        .firewall_mut()
        .set_bucket(&key, empty_until(now_ns() - 10 * SECOND))
        .unwrap();
    for sport in [1003, 1004] {
        let frame = tcp4(CLIENT4, sport, RATED4, 80);
        expect_forwarded(
            &mut bed,
            &format!("refilled {sport}"),
            &frame,
            "198.18.0.11",
            1,
        );
    }
    let frame = tcp4(CLIENT4, 1005, RATED4, 80);
    expect_dropped(
        &mut bed,
        "no more than the burst",
        &frame,
        Counter::DropRateLimited,
    );
    assert_eq!(vip_counters(&bed, "rated4").rate_limited, 4);
}

/// UDP: a new flow is one the connection table does not know.
#[test]
fn new_udp_flows_are_rate_limited_per_source() {
    let mut bed = firewall_bed();
    let first = udp4(CLIENT4, 1000, RATED4, 53);
    expect_forwarded(&mut bed, "first flow", &first, "198.18.0.11", 1);
    expect_forwarded(&mut bed, "the same flow", &first, "198.18.0.11", 0);
    let second = udp4(CLIENT4, 1001, RATED4, 53);
    expect_dropped(&mut bed, "a second flow", &second, Counter::DropRateLimited);
}

/// IPv6 sources share a bucket per /64.
#[test]
fn ipv6_sources_share_a_bucket_per_64() {
    let mut bed = firewall_bed();
    let first = tcp6(v6(1, 5), 1000, RATED6, 80);
    expect_forwarded(&mut bed, "first of the /64", &first, "2001:db8:0:1::11", 1);
    let same_64 = tcp6(v6(1, 6), 1000, RATED6, 80);
    expect_dropped(&mut bed, "same /64", &same_64, Counter::DropRateLimited);
    let other_64 = tcp6(v6(2, 5), 1000, RATED6, 80);
    expect_forwarded(&mut bed, "another /64", &other_64, "2001:db8:0:1::11", 1);
    let key = bucket_key(&bed, "rated6", std::net::IpAddr::from(v6(1, 7)));
    assert!(bed.dataplane.firewall().bucket(&key).is_some());
    assert_eq!(key.family, FAMILY_IPV6);
}

/// The global cap guards every VIP's new flows, not their established packets.
#[test]
fn the_global_cap_limits_new_flows_of_every_vip() {
    let mut bed = firewall_bed();
    let established = tcp4(CLIENT4, 2000, VIP4, 80);
    let backend = bed.maglev_pick("tcp4", &key(&established)).to_string();
    expect_forwarded(&mut bed, "before the cap", &established, &backend, 1);
    bed.apply(&format!(
        "{BASE_CONFIG}{FIREWALL}\n[firewall]\nnew_flow_cap = 1000\n"
    ));
    assert_eq!(bed.vip("tcp4").meta.flags & VIP_GUARDED, VIP_GUARDED);

    let empty = TokenBucket {
        credit_ns: 0,
        last_ns: now_ns() + 3600 * SECOND,
    };
    bed.dataplane.firewall_mut().set_cap_bucket(empty).unwrap();
    let new = tcp4(CLIENT4, 2001, VIP4, 80);
    expect_dropped(
        &mut bed,
        "a new flow over the cap",
        &new,
        Counter::DropFlowCap,
    );
    let ack = ack4(CLIENT4, 2000, VIP4, 80);
    expect_forwarded(&mut bed, "an established flow", &ack, &backend, 0);
    assert_eq!(vip_counters(&bed, "tcp4").capped, 1);

    bed.dataplane
        .firewall_mut()
        .set_cap_bucket(TokenBucket {
            credit_ns: 0,
            last_ns: now_ns() - SECOND,
        })
        .unwrap();
    let backend = bed.maglev_pick("tcp4", &key(&new)).to_string();
    expect_forwarded(&mut bed, "credit earned", &new, &backend, 1);

    // Without the cap the VIP is no longer guarded.
    bed.apply(&format!("{BASE_CONFIG}{FIREWALL}"));
    assert_eq!(bed.vip("tcp4").meta.flags & VIP_GUARDED, 0);
}

/// A changed list is applied whole and the old rules are gone: a source the new list
/// denies is dropped, one it allows is served, and nothing is left of the old list.
#[test]
fn a_changed_list_replaces_the_old_one_whole() {
    let mut bed = firewall_bed();
    let changed = FIREWALL.replace(
        "allow_sources = [\"198.18.0.0/16\", \"198.18.0.100\"]\ndeny_sources = [\"198.18.0.0/24\"]",
        "deny_sources = [\"198.18.0.100\"]",
    );
    bed.apply(&format!("{BASE_CONFIG}{changed}"));
    let denied = tcp4(CLIENT4, 40000, FILTERED4, 80);
    expect_dropped(&mut bed, "now denied", &denied, Counter::DropFirewall);
    let allowed = tcp4([198, 19, 200, 1], 40000, FILTERED4, 80);
    expect_forwarded(
        &mut bed,
        "now allowed (no allow list)",
        &allowed,
        "198.18.0.11",
        1,
    );
    let programmed = bed.dataplane.programmed_state().unwrap().firewall;
    let ruleset = bed
        .state
        .firewall()
        .vip(bed.vip("filtered4").meta.id)
        .unwrap()
        .policy
        .ruleset;
    let entries = programmed
        .sources
        .iter()
        .filter(|(_, key, _)| key.ruleset == ruleset)
        .count();
    assert_eq!(entries, 1);
    let total: usize = ["filtered6", "filtered4"]
        .iter()
        .map(|vip| {
            bed.state
                .firewall()
                .vip(bed.vip(vip).meta.id)
                .unwrap()
                .sources
                .len()
        })
        .sum::<usize>()
        + 2; // the host rule's two prefixes
    assert_eq!(programmed.sources.len(), total, "no stale entries");
}
