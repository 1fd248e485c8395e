//! The datapath fuzzer: the real XDP program (and the NAT program it tail-calls) run with
//! BPF_PROG_TEST_RUN on frames built layer by layer from the bed's own addresses, so that
//! they reach every path — VIPs of every kind, NAT requests and replies, ICMP errors
//! quoting flows — and then cut or bit-flipped at random. What must hold for every frame:
//!
//! - the program never aborts and answers a known verdict;
//! - it is counted under exactly one verdict reason;
//! - a forwarded frame that came in well-formed (as etherparse sees it) leaves with valid
//!   IP and TCP/UDP checksums;
//! - the NAT tables stay consistent: every live NAT flow owns the reply entry of its port.
//!
//! The parsers that read what others send are fuzzed here too, as properties (proptest):
//! the configuration file, the API's JSON bodies, VRRP adverts and the health checker's
//! HTTP answers never panic, and what they accept they accept whole.
//!
//! `cargo test` runs 100 000 frames and proptest's default 256 cases per property;
//! `cargo xtask fuzz` runs a million frames or more (`WEIR_FUZZ_FRAMES`) and more cases
//! (`PROPTEST_CASES`); `WEIR_FUZZ_SEED` replays a datapath run.

mod common;

use std::collections::BTreeMap;

use common::*;
use lb_common::{Counter, PROTO_TCP, PROTO_UDP, Verdict};
use weir::dataplane::flows::now_ns;

const DEFAULT_FRAMES: u64 = 100_000;
/// Counters are summed and the NAT tables checked once per this many frames.
const CHECK_EVERY: u64 = 2_000;
/// A NAT port range small enough that replies often hit a live flow.
const NAT_PORTS: (u16, u16) = (1024, 1039);

/// BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header.
const ETH_HLEN: usize = 14;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// xorshift64*: fast, and a seed replays a run exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

const fn v6(last: u16, group3: u16) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0x20;
    a[1] = 0x01;
    a[2] = 0x0d;
    a[3] = 0xb8;
    a[6] = (group3 >> 8) as u8;
    a[7] = group3 as u8;
    a[14] = (last >> 8) as u8;
    a[15] = last as u8;
    a
}

/// Destinations: every kind of VIP of the bed, the NAT sources (replies), other hosts.
const DESTINATIONS4: &[[u8; 4]] = &[
    VIP4,
    VIP4_ANY_PORT,
    VIP4_EMPTY,
    VIP4_REDIRECT,
    VIP4_NO_NEIGH,
    VIP4_NO_ROUTE,
    VIP4_UNATTACHED,
    VIP4_SOURCE_HASH,
    [198, 19, 0, 60],
    [198, 19, 0, 61],
    [198, 18, 0, 1],
    [198, 18, 2, 1],
    NOT_A_VIP4,
];
const SOURCES4: &[[u8; 4]] = &[
    CLIENT4,
    [198, 18, 0, 101],
    [198, 18, 0, 11],
    [198, 18, 0, 12],
    [198, 18, 2, 21],
];
const DESTINATIONS6: &[[u8; 16]] = &[VIP6, v6(0x60, 0xff), v6(1, 1), v6(9, 1)];
const SOURCES6: &[[u8; 16]] = &[CLIENT6, v6(0x11, 1), v6(0x12, 1), v6(0x101, 1)];
/// Ports: the VIPs', the NAT backends', the NAT range, a few clients'.
const PORTS: &[u16] = &[
    80, 53, 8080, 443, 40000, 40001, 50000, 1024, 1025, 1030, 1039, 0,
];

/// Flows the bed serves, so that half the packets reach a VIP's or a NAT reply's path:
/// (source, source port, destination, destination port, protocol); 0 = any port.
type Service4 = ([u8; 4], u16, [u8; 4], u16, u8);
type Service6 = ([u8; 16], u16, [u8; 16], u16, u8);
const SERVICES4: &[Service4] = &[
    (CLIENT4, 0, VIP4, 80, PROTO_TCP),
    (CLIENT4, 0, VIP4_ANY_PORT, 0, PROTO_UDP),
    (CLIENT4, 0, VIP4_REDIRECT, 80, PROTO_TCP),
    (CLIENT4, 0, VIP4_SOURCE_HASH, 80, PROTO_TCP),
    (CLIENT4, 0, [198, 19, 0, 60], 80, PROTO_TCP),
    (CLIENT4, 0, [198, 19, 0, 60], 53, PROTO_UDP),
    (CLIENT4, 0, [198, 19, 0, 61], 80, PROTO_TCP),
    ([198, 18, 0, 11], 8080, [198, 18, 0, 1], 0, PROTO_TCP),
    ([198, 18, 0, 12], 53, [198, 18, 0, 1], 0, PROTO_UDP),
    ([198, 18, 2, 21], 80, [198, 18, 2, 1], 0, PROTO_TCP),
];
const SERVICES6: &[Service6] = &[
    (CLIENT6, 0, VIP6, 53, PROTO_UDP),
    (CLIENT6, 0, v6(0x60, 0xff), 80, PROTO_TCP),
    (CLIENT6, 0, v6(0x60, 0xff), 53, PROTO_UDP),
    (v6(0x11, 1), 8080, v6(1, 1), 0, PROTO_TCP),
    (v6(0x12, 1), 53, v6(1, 1), 0, PROTO_UDP),
];

/// A frame and whether it was built whole (neither cut nor flipped).
struct Built {
    frame: Vec<u8>,
    whole: bool,
    /// TCP or UDP at the top level (checksums checked when forwarded whole).
    transport: bool,
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: &[u8], dst: &[u8], protocol: u8, len: usize) -> u32 {
    let mut sum = 0u32;
    for pair in src.chunks(2).chain(dst.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum + u32::from(protocol) + len as u32
}

/// A TCP segment or UDP datagram (checksummed over `src`/`dst`), between the given ports
/// or random ones, or an ICMP error that quotes `inner`.
fn transport(
    rng: &mut Rng,
    protocol: u8,
    src: &[u8],
    dst: &[u8],
    (sport, dport): (Option<u16>, Option<u16>),
    inner: Option<Vec<u8>>,
) -> Vec<u8> {
    let payload_len = rng.below(48) as usize;
    let payload = rng.bytes(payload_len);
    let sport = sport.unwrap_or_else(|| rng.pick(PORTS));
    let dport = dport.unwrap_or_else(|| {
        if rng.chance(30) {
            NAT_PORTS.0 + rng.below(u64::from(NAT_PORTS.1 - NAT_PORTS.0) + 1) as u16
        } else {
            rng.pick(PORTS)
        }
    });
    let mut segment = match protocol {
        PROTO_TCP => {
            let options = if rng.chance(20) { 4 * rng.below(4) } else { 0 } as usize;
            let mut tcp = vec![0u8; 20 + options];
            tcp[0..2].copy_from_slice(&sport.to_be_bytes());
            tcp[2..4].copy_from_slice(&dport.to_be_bytes());
            tcp[4..8].copy_from_slice(&(rng.next() as u32).to_be_bytes());
            let offset = if rng.chance(3) {
                rng.below(16) as u8
            } else {
                ((20 + options) / 4) as u8
            };
            tcp[12] = offset << 4;
            // SYN, SYN+ACK, ACK, FIN+ACK, RST, PSH+ACK, or anything.
            let any = rng.next() as u8;
            tcp[13] = rng.pick(&[0x02, 0x12, 0x10, 0x11, 0x04, 0x18, any]);
            tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
            for byte in &mut tcp[20..] {
                *byte = 1; // NOP options
            }
            tcp.extend_from_slice(&payload);
            tcp
        }
        PROTO_UDP => {
            let mut udp = vec![0u8; 8];
            udp[0..2].copy_from_slice(&sport.to_be_bytes());
            udp[2..4].copy_from_slice(&dport.to_be_bytes());
            let len = if rng.chance(3) {
                rng.next() as u16
            } else {
                (8 + payload.len()) as u16
            };
            udp[4..6].copy_from_slice(&len.to_be_bytes());
            udp.extend_from_slice(&payload);
            udp
        }
        _ => {
            // ICMP / ICMPv6: mostly errors that quote a packet, sometimes echo.
            let v6 = protocol == PROTO_ICMPV6;
            let (kind, code) = if rng.chance(15) {
                (if v6 { 128 } else { 8 }, 0)
            } else if v6 {
                rng.pick(&[(1u8, 4u8), (2, 0), (3, 0), (1, 0)])
            } else {
                rng.pick(&[(3u8, 4u8), (3, 3), (11, 0), (3, 1)])
            };
            let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0xdc];
            icmp.extend(inner.unwrap_or(payload));
            icmp
        }
    };
    let (offset, include_pseudo) = match protocol {
        PROTO_TCP => (16, true),
        PROTO_UDP => (6, true),
        PROTO_ICMPV6 => (2, true),
        _ => (2, false),
    };
    if protocol == PROTO_UDP && src.len() == 4 && rng.chance(10) {
        return segment; // IPv4 UDP without a checksum
    }
    let initial = if include_pseudo {
        pseudo_sum(src, dst, protocol, segment.len())
    } else {
        0
    };
    let sum = checksum(&segment, initial);
    let sum = if protocol == PROTO_UDP && sum == 0 {
        0xffff
    } else {
        sum
    };
    segment[offset..offset + 2].copy_from_slice(&sum.to_be_bytes());
    segment
}

fn ipv4(rng: &mut Rng, src: [u8; 4], dst: [u8; 4], protocol: u8, body: &[u8]) -> Vec<u8> {
    let options = if rng.chance(10) { 4 * rng.below(11) } else { 0 } as usize;
    let mut header = vec![0u8; 20 + options];
    let ihl = if rng.chance(2) {
        rng.below(5) as u8
    } else {
        ((20 + options) / 4) as u8
    };
    header[0] = 0x40 | ihl;
    let total = if rng.chance(3) {
        rng.next() as u16
    } else {
        (header.len() + body.len()) as u16
    };
    header[2..4].copy_from_slice(&total.to_be_bytes());
    header[4..6].copy_from_slice(&(rng.next() as u16).to_be_bytes());
    let any = rng.next() as u16;
    let fragment: u16 = rng.pick(&[0, 0, 0, 0x4000, 0x2000, 0x0010, any]);
    header[6..8].copy_from_slice(&fragment.to_be_bytes());
    header[8] = 64;
    header[9] = protocol;
    header[12..16].copy_from_slice(&src);
    header[16..20].copy_from_slice(&dst);
    for byte in &mut header[20..] {
        *byte = 1; // NOP options
    }
    let sum = checksum(&header, 0);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
    header.extend_from_slice(body);
    header
}

fn ipv6(rng: &mut Rng, src: [u8; 16], dst: [u8; 16], protocol: u8, body: &[u8]) -> Vec<u8> {
    // Extension headers: hop-by-hop, routing, destination options, fragment, or junk.
    let count = if rng.chance(15) { 1 + rng.below(5) } else { 0 };
    let kinds: Vec<u8> = (0..count)
        .map(|_| {
            let any = rng.next() as u8;
            rng.pick(&[0u8, 43, 60, 44, 60, any])
        })
        .collect();
    let mut extensions = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(protocol);
        if *kind == 44 {
            let mut fragment = vec![next, 0, 0, 0, 0, 0, 0, 0];
            fragment[2..4].copy_from_slice(&(rng.next() as u16 & 0xfff9).to_be_bytes());
            extensions.extend(fragment);
        } else {
            let units = rng.below(3) as u8;
            extensions.extend([next, units]);
            extensions.extend(vec![1u8; 6 + 8 * usize::from(units)]);
        }
    }
    let first = kinds.first().copied().unwrap_or(protocol);
    let payload_len = if rng.chance(3) {
        rng.next() as u16
    } else {
        (extensions.len() + body.len()) as u16
    };
    let mut header = vec![0x60, 0, 0, 0];
    header.extend(payload_len.to_be_bytes());
    header.extend([first, 64]);
    header.extend(src);
    header.extend(dst);
    header.extend(extensions);
    header.extend_from_slice(body);
    header
}

fn ethernet(rng: &mut Rng, ethertype: u16, body: &[u8]) -> Vec<u8> {
    let dst = if rng.chance(85) {
        LB0_MAC
    } else {
        rng.pick(&[[0xff; 6], [0x02, 0, 0, 0, 0x77, 0x77], LB1_MAC])
    };
    let mut frame = dst.to_vec();
    frame.extend(CLIENT_MAC);
    for _ in 0..rng.pick(&[0, 0, 0, 0, 0, 0, 1, 1, 2]) {
        frame.extend(rng.pick(&[0x8100u16, 0x88a8]).to_be_bytes());
        frame.extend((rng.next() as u16 & 0x0fff).to_be_bytes());
    }
    frame.extend(ethertype.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// One IP packet (not framed), of either family, with its transport: half the time one
/// of the bed's services, else anything.
fn packet(rng: &mut Rng, v6: bool, quote: Option<Vec<u8>>) -> (Vec<u8>, u8) {
    let service = rng.chance(50);
    let mut protocol = match (rng.below(10), v6) {
        (0..=4, _) => PROTO_TCP,
        (5..=7, _) => PROTO_UDP,
        (8, false) => PROTO_ICMP,
        (8, true) => PROTO_ICMPV6,
        _ => rng.next() as u8,
    };
    let mut ports = (None, None);
    let (src, dst): (Vec<u8>, Vec<u8>) = if service && quote.is_none() {
        let (src, sport, dst, dport, service_protocol) = if v6 {
            let (s, sp, d, dp, p) = rng.pick(SERVICES6);
            (s.to_vec(), sp, d.to_vec(), dp, p)
        } else {
            let (s, sp, d, dp, p) = rng.pick(SERVICES4);
            (s.to_vec(), sp, d.to_vec(), dp, p)
        };
        protocol = service_protocol;
        ports = ((sport != 0).then_some(sport), (dport != 0).then_some(dport));
        (src, dst)
    } else if v6 {
        (
            rng.pick(SOURCES6).to_vec(),
            rng.pick(DESTINATIONS6).to_vec(),
        )
    } else {
        (
            rng.pick(SOURCES4).to_vec(),
            rng.pick(DESTINATIONS4).to_vec(),
        )
    };
    let body = transport(rng, protocol, &src, &dst, ports, quote);
    let ip = if v6 {
        ipv6(
            rng,
            src.try_into().unwrap(),
            dst.try_into().unwrap(),
            protocol,
            &body,
        )
    } else {
        ipv4(
            rng,
            src.try_into().unwrap(),
            dst.try_into().unwrap(),
            protocol,
            &body,
        )
    };
    (ip, protocol)
}

fn build(rng: &mut Rng) -> Built {
    if rng.chance(3) {
        let len = ETH_HLEN + rng.below(160) as usize;
        return Built {
            frame: rng.bytes(len),
            whole: false,
            transport: false,
        };
    }
    let v6 = rng.chance(35);
    // ICMP errors quote a packet of the same family, often one headed for a VIP.
    let quote = rng.chance(15).then(|| {
        let (inner, _) = packet(rng, v6, None);
        let keep = 28 + rng.below(inner.len().saturating_sub(27) as u64 + 1) as usize;
        inner[..keep.min(inner.len())].to_vec()
    });
    let (ip, protocol) = packet(rng, v6, quote);
    let ethertype = if rng.chance(2) {
        let any = rng.next() as u16;
        rng.pick(&[0x0806u16, 0x88cc, any])
    } else if v6 {
        0x86dd
    } else {
        0x0800
    };
    let mut frame = ethernet(rng, ethertype, &ip);
    let mut whole = true;
    if rng.chance(10) {
        let cut = ETH_HLEN + rng.below((frame.len() - ETH_HLEN) as u64 + 1) as usize;
        frame.truncate(cut);
        whole = false;
    }
    if rng.chance(10) && !frame.is_empty() {
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(frame.len() as u64) as usize;
            frame[at] ^= 1 << rng.below(8);
        }
        whole = false;
    }
    Built {
        frame,
        whole,
        transport: matches!(protocol, PROTO_TCP | PROTO_UDP),
    }
}

/// Whether an independent implementation (etherparse) parses the frame and agrees with
/// its checksums.
fn checksums_valid(frame: &[u8]) -> bool {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let valid = std::panic::catch_unwind(|| assert_checksums_valid(frame)).is_ok();
    std::panic::set_hook(report);
    valid
}

fn verdicts(counters: &BTreeMap<Counter, u64>) -> u64 {
    counters
        .iter()
        .filter(|(counter, _)| counter.verdict().is_some())
        .map(|(_, n)| n)
        .sum()
}

/// Every live NAT flow owns the reply entry of its port, and that entry names it back.
fn assert_nat_tables_consistent(bed: &Bed, seed: u64) {
    let timeouts = bed.dataplane.flow_timeouts().unwrap();
    let replies = bed.dataplane.nat_replies().unwrap();
    let now = now_ns();
    for (client, flow) in bed.dataplane.flows().unwrap() {
        if bed.dataplane.nat_flow(&client).is_none()
            || timeouts.expired(&flow, client.protocol, now)
        {
            continue;
        }
        let owned = replies
            .iter()
            .any(|(reply, owner)| *owner == client && reply.dst_port == flow.nat_port);
        assert!(
            owned,
            "seed {seed}: the live NAT flow {client:?} ({flow:?}) owns no reply entry"
        );
    }
}

#[test]
fn fuzzed_frames_never_abort_are_counted_once_and_keep_the_tables_consistent() {
    let frames = env_u64("WEIR_FUZZ_FRAMES").unwrap_or(DEFAULT_FRAMES);
    let seed = env_u64("WEIR_FUZZ_SEED").unwrap_or_else(|| now_ns() | 1);
    eprintln!("fuzzing {frames} frames, WEIR_FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    let mut bed = Bed::new();
    bed.apply(&nat_config(&format!("{}-{}", NAT_PORTS.0, NAT_PORTS.1)));
    let mut counted = verdicts(&bed.counters());
    let mut by_verdict = BTreeMap::new();
    for i in 1..=frames {
        let built = build(&mut rng);
        let ifindex = if rng.chance(10) { bed.lb1 } else { bed.lb0 };
        let (action, out) = bed.run_on(ifindex, &built.frame);
        assert!(
            (Verdict::Drop as u32..=Verdict::Redirect as u32).contains(&action),
            "seed {seed}, frame {i}: verdict {action} on {}",
            hex(&built.frame)
        );
        *by_verdict.entry(action).or_insert(0u64) += 1;
        let forwarded = action == Verdict::Tx as u32 || action == Verdict::Redirect as u32;
        if forwarded && built.whole && built.transport && checksums_valid(&built.frame) {
            assert!(
                checksums_valid(&out),
                "seed {seed}, frame {i}: bad checksums out of {} -> {}",
                hex(&built.frame),
                hex(&out)
            );
        }
        if i % CHECK_EVERY == 0 || i == frames {
            let now = verdicts(&bed.counters());
            let batch = if i % CHECK_EVERY == 0 {
                CHECK_EVERY
            } else {
                i % CHECK_EVERY
            };
            assert_eq!(
                now - counted,
                batch,
                "seed {seed}: frames {}..={i} were not each counted once",
                i + 1 - batch
            );
            counted = now;
            assert_nat_tables_consistent(&bed, seed);
        }
    }
    eprintln!("verdicts (1 drop, 2 pass, 3 tx, 4 redirect): {by_verdict:?}");
    // The frames must reach the interesting paths, not just the parser's rejections.
    for verdict in [Verdict::Drop, Verdict::Pass, Verdict::Tx, Verdict::Redirect] {
        assert!(
            by_verdict.get(&(verdict as u32)).copied().unwrap_or(0) > frames / 1000,
            "seed {seed}: too few {verdict:?} verdicts: {by_verdict:?}"
        );
    }
}

mod parsers {
    use std::{
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
        time::Duration,
    };

    use proptest::{collection::vec, prelude::*};
    use tokio::{io::AsyncWriteExt, net::TcpListener};
    use weir::{
        agent::runtime::validate_vip,
        api::model::{BackendChange, NewBackend, NewVip},
        config::{CheckKind, Config, HealthConfig, Protocol},
        failover::vrrp::packet::Advert,
        health::check::{Checker, Target},
    };

    use super::common::{BASE_CONFIG, nat_config};

    /// `text` with `edits` applied: (position, byte, what) — replace, insert or delete.
    fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> Vec<u8> {
        let mut bytes = text.as_bytes().to_vec();
        for &(at, byte, what) in edits {
            let at = at % (bytes.len() + 1);
            match what {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        bytes
    }

    const NEW_VIP: &str = r#"{"name": "web", "address": "198.19.0.10", "port": 80,
        "protocol": "tcp", "forwarding": "nat", "hash": "5-tuple",
        "backends": [{"address": "198.18.0.11", "weight": 10, "port": 8080}],
        "health": {"kind": "http", "path": "/health", "rise": "2"}}"#;

    /// proptest's defaults (`PROPTEST_CASES` cases), without its regression files: a
    /// failure prints the minimal input, which becomes a unit test where it is fixed.
    fn config(cases: Option<u32>) -> ProptestConfig {
        let mut config = ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        if let Some(cases) = cases {
            config.cases = cases.min(config.cases);
        }
        config
    }

    proptest! {
        #![proptest_config(config(None))]
        #[test]
        fn any_text_is_a_configuration_or_a_located_error(text in ".{0,300}") {
            if let Err(err) = Config::parse(&text, "fuzz.toml") {
                prop_assert!(err.to_string().starts_with("fuzz.toml:"), "{err}");
            }
        }

        #[test]
        fn an_edited_configuration_is_valid_or_a_located_error(
            edits in vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
            nat in any::<bool>(),
        ) {
            let base = if nat { nat_config("1024-1039") } else { BASE_CONFIG.to_owned() };
            let text = String::from_utf8_lossy(&mutate(&base, &edits)).into_owned();
            match Config::parse(&text, "fuzz.toml") {
                // What parses is whole: it prints and parses back to itself.
                Ok(config) => {
                    let printed = toml::to_string(&config).unwrap();
                    prop_assert_eq!(Config::parse(&printed, "printed.toml").unwrap(), config);
                }
                Err(err) => prop_assert!(err.to_string().starts_with("fuzz.toml:"), "{err}"),
            }
        }

        #[test]
        fn api_bodies_decode_or_are_refused(
            edits in vec((any::<usize>(), any::<u8>(), 0u8..3), 0..6),
        ) {
            let body = mutate(NEW_VIP, &edits);
            if let Ok(vip) = serde_json::from_slice::<NewVip>(&body) {
                let _ = validate_vip(&vip);
            }
            let _ = serde_json::from_slice::<NewBackend>(&body);
            let _ = serde_json::from_slice::<BackendChange>(&body);
        }

        #[test]
        fn any_vrrp_message_decodes_or_is_refused(
            bytes in vec(any::<u8>(), 0..80),
            v6 in any::<bool>(),
        ) {
            let (source, destination): (IpAddr, IpAddr) = if v6 {
                ("fe80::1".parse().unwrap(), "ff02::12".parse().unwrap())
            } else {
                ("198.18.0.2".parse().unwrap(), "224.0.0.18".parse().unwrap())
            };
            let _ = Advert::decode(&bytes, source, destination);
        }

        #[test]
        fn adverts_decode_to_what_was_encoded(
            vrid in 1u8..=255,
            priority in any::<u8>(),
            max_advert_centis in 1u16..4096,
            count in 0usize..20,
            v6 in any::<bool>(),
            seed in any::<u32>(),
        ) {
            let addresses: Vec<IpAddr> = (0..count as u32)
                .map(|i| match v6 {
                    true => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, (seed ^ i) as u16)),
                    false => IpAddr::V4(Ipv4Addr::from(0xc612_0000 | ((seed ^ i) & 0xffff))),
                })
                .collect();
            let advert = Advert { vrid, priority, max_advert_centis, addresses };
            let (source, destination): (IpAddr, IpAddr) = if v6 {
                ("fe80::1".parse().unwrap(), "ff02::12".parse().unwrap())
            } else {
                ("198.18.0.2".parse().unwrap(), "224.0.0.18".parse().unwrap())
            };
            let bytes = advert.encode(source, destination);
            prop_assert_eq!(Advert::decode(&bytes, source, destination).unwrap(), advert);
        }
    }

    proptest! {
        // Each case is a real check against a server on loopback: at most 64 in the tests.
        #![proptest_config(config(std::env::var("PROPTEST_CASES").is_err().then_some(64)))]
        #[test]
        fn any_http_answer_is_a_check_result(answer in vec(any::<u8>(), 0..3000)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let result = runtime.block_on(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = listener.local_addr().unwrap().port();
                let server = tokio::spawn(async move {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let _ = stream.write_all(&answer).await;
                });
                let mut rules = HealthConfig::default_for(Protocol::Tcp, port);
                rules.kind = CheckKind::Http;
                rules.path = Some("/".into());
                rules.timeout = Duration::from_millis(500);
                let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
                let target = Target { address: localhost, port, vip: localhost, vip_port: port };
                let result = Checker::new().check(&rules, &target).await;
                server.abort();
                result
            });
            // Whatever it was, the check ended with a reason an operator can read.
            prop_assert!(!result.reason.to_string().is_empty());
        }
    }
}
