//! Dataplane tests: the real XDP program, run with BPF_PROG_TEST_RUN on crafted frames,
//! in Katran's fixture style — input frame, expected verdict, expected output frame
//! (every byte), expected change of every global counter.
//!
//! Each test builds its own network namespace so that `bpf_fib_lookup` sees a fixed
//! routing and neighbour table (below), and programs the maps through the agent's own
//! path (configuration → planner → map writes). Packets are built and checked with
//! `etherparse`, an implementation independent of the program's.
//!
//! The namespace: `lb0` (198.18.0.1/24, 2001:db8:0:1::1/64), `lb1` (198.18.2.1/24) and
//! `lb2` (198.18.3.1/24), veths with fixed MACs; permanent neighbours for the backends;
//! `lb0` and `lb1` may be redirected to, `lb2` not (as if the agent had not attached it).

use std::{collections::BTreeMap, net::IpAddr};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, PacketBuilder, SlicedPacket, TransportSlice, VlanId,
    icmpv4::DestUnreachableHeader, Icmpv4Type, Icmpv6Type,
};
use lb_common::{Counter, FlowKey, PROTO_TCP, PROTO_UDP, Verdict, flow_hash};
use weir::{
    config::{Config, HashMode},
    dataplane::{Dataplane, LoadOptions},
    host,
    plan::{Reconciler, VipState},
};
use weir_testbed::Netns;

const LB0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const LB1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const LB2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xcc, 0x01];

const CLIENT4: [u8; 4] = [198, 18, 0, 100];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x01, 0x00];
const ROUTER4: [u8; 4] = [198, 18, 0, 254];
const ROUTER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xfe];

const VIP4: [u8; 4] = [198, 19, 0, 10];
const VIP4_ANY_PORT: [u8; 4] = [198, 19, 0, 20];
const VIP4_EMPTY: [u8; 4] = [198, 19, 0, 30];
const VIP4_REDIRECT: [u8; 4] = [198, 19, 0, 40];
const VIP4_NO_NEIGH: [u8; 4] = [198, 19, 0, 41];
const VIP4_NO_ROUTE: [u8; 4] = [198, 19, 0, 42];
const VIP4_UNATTACHED: [u8; 4] = [198, 19, 0, 43];
const VIP4_SOURCE_HASH: [u8; 4] = [198, 19, 0, 50];
const VIP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x10];
const NOT_A_VIP4: [u8; 4] = [198, 18, 0, 1];

/// Backends and the MACs their permanent neighbour entries give them.
const NEIGHBOURS: &[(&str, &str, [u8; 6])] = &[
    ("lb0", "198.18.0.11", [0x02, 0, 0, 0, 0x01, 0x11]),
    ("lb0", "198.18.0.12", [0x02, 0, 0, 0, 0x01, 0x12]),
    ("lb0", "198.18.0.13", [0x02, 0, 0, 0, 0x01, 0x13]),
    ("lb0", "198.18.0.14", [0x02, 0, 0, 0, 0x01, 0x14]),
    ("lb0", "2001:db8:0:1::11", [0x02, 0, 0, 0, 0x01, 0x11]),
    ("lb0", "2001:db8:0:1::12", [0x02, 0, 0, 0, 0x01, 0x12]),
    ("lb0", "2001:db8:0:1::13", [0x02, 0, 0, 0, 0x01, 0x13]),
    ("lb1", "198.18.2.21", [0x02, 0, 0, 0, 0x02, 0x21]),
    ("lb2", "198.18.3.31", [0x02, 0, 0, 0, 0x03, 0x31]),
];

const BASE_CONFIG: &str = r#"
[agent]
interfaces = ["lb0", "lb1"]

[[vip]]
name = "tcp4"
address = "198.19.0.10"
port = 80
table_size = 251
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[[vip.backend]]
address = "198.18.0.13"

[[vip]]
name = "udp4"
address = "198.19.0.10"
port = 53
protocol = "udp"
table_size = 251
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"

[[vip]]
name = "any-port"
address = "198.19.0.20"
port = 0
table_size = 251
[[vip.backend]]
address = "198.18.0.12"

[[vip]]
name = "empty"
address = "198.19.0.30"
port = 80
table_size = 251

[[vip]]
name = "redirect"
address = "198.19.0.40"
port = 80
table_size = 251
[[vip.backend]]
address = "198.18.2.21"

[[vip]]
name = "no-neigh"
address = "198.19.0.41"
port = 80
table_size = 251
[[vip.backend]]
address = "198.18.0.99"

[[vip]]
name = "no-route"
address = "198.19.0.42"
port = 80
table_size = 251
[[vip.backend]]
address = "198.18.9.9"

[[vip]]
name = "unattached"
address = "198.19.0.43"
port = 80
table_size = 251
[[vip.backend]]
address = "198.18.3.31"

[[vip]]
name = "source-hash"
address = "198.19.0.50"
port = 80
hash = "source-ip"
table_size = 251
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[[vip.backend]]
address = "198.18.0.13"

[[vip]]
name = "tcp6"
address = "2001:db8:0:ff::10"
port = 80
table_size = 251
[[vip.backend]]
address = "2001:db8:0:1::11"
[[vip.backend]]
address = "2001:db8:0:1::12"
[[vip.backend]]
address = "2001:db8:0:1::13"

[[vip]]
name = "udp6"
address = "2001:db8:0:ff::10"
port = 53
protocol = "udp"
table_size = 251
[[vip.backend]]
address = "2001:db8:0:1::11"
"#;

/// A namespace with a loaded program whose maps hold a configuration.
struct Bed {
    ns: Netns,
    dataplane: Dataplane,
    state: Reconciler,
    lb0: u32,
}

impl Bed {
    fn new() -> Bed {
        let ns = Netns::new("dataplane").expect("dataplane tests need root and network namespaces");
        for (dev, peer, mac) in [("lb0", "lb0p", LB0_MAC), ("lb1", "lb1p", LB1_MAC), ("lb2", "lb2p", LB2_MAC)] {
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer]).unwrap();
            ns.ip(&["link", "set", dev, "address", &mac_string(mac)]).unwrap();
            ns.ip(&["link", "set", dev, "up"]).unwrap();
            ns.ip(&["link", "set", peer, "up"]).unwrap();
        }
        for (dev, cidr) in [
            ("lb0", "198.18.0.1/24"),
            ("lb0", "2001:db8:0:1::1/64"),
            ("lb1", "198.18.2.1/24"),
            ("lb2", "198.18.3.1/24"),
        ] {
            ns.ip(&["addr", "add", cidr, "dev", dev, "nodad"]).unwrap();
        }
        for (dev, addr, mac) in NEIGHBOURS {
            ns.ip(&["neigh", "replace", addr, "lladdr", &mac_string(*mac), "dev", dev, "nud", "permanent"])
                .unwrap();
        }
        let (dataplane, lb0) = ns
            .enter(|| {
                for dev in ["lb0", "lb1", "lb2"] {
                    host::enable_forwarding(dev).unwrap();
                }
                let mut dataplane = Dataplane::load(LoadOptions {
                    conntrack_entries: 65536,
                    maglev_ring_entries: 1 << 16,
                })
                .expect("the XDP program loads and passes the verifier");
                let lb0 = weir::dataplane::ifindex("lb0").unwrap();
                let lb1 = weir::dataplane::ifindex("lb1").unwrap();
                dataplane.add_tx_port(lb0).unwrap();
                dataplane.add_tx_port(lb1).unwrap();
                (dataplane, lb0)
            })
            .unwrap();
        let mut bed = Bed { ns, dataplane, state: Reconciler::new(1 << 16), lb0 };
        bed.apply(BASE_CONFIG);
        bed
    }

    fn apply(&mut self, text: &str) {
        let config = Config::parse(text, "test.toml").unwrap();
        let (writes, state) = self.state.plan(&config).unwrap();
        self.dataplane.apply(&writes).unwrap();
        self.state = state;
    }

    fn vip(&self, name: &str) -> &VipState {
        self.state.vips().find(|vip| vip.name == name).unwrap()
    }

    /// Runs the program once on `frame` arriving on `ifindex`.
    fn run_on(&mut self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|word: &u32| word.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; frame.len() + 512];
        let dataplane = &mut self.dataplane;
        let result = self
            .ns
            .enter(|| {
                dataplane.program().unwrap().test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..Default::default()
                })
            })
            .unwrap()
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let lb0 = self.lb0;
        self.run_on(lb0, frame)
    }

    fn counters(&self) -> BTreeMap<Counter, u64> {
        self.dataplane.global_counters().unwrap()
    }

    /// Runs `frame` and checks the verdict, the output frame and that the global
    /// counters moved by exactly `counters` (every other counter unchanged).
    fn expect(&mut self, name: &str, frame: &[u8], verdict: Verdict, output: &[u8], counters: &[(Counter, u64)]) {
        let before = self.counters();
        let (action, out) = self.run(frame);
        assert_eq!(action, verdict as u32, "{name}: verdict");
        assert_eq!(hex(&out), hex(output), "{name}: output frame");
        let after = self.counters();
        let moved: BTreeMap<Counter, u64> =
            after.iter().map(|(c, v)| (*c, v - before[c])).filter(|(_, d)| *d != 0).collect();
        let wanted: BTreeMap<Counter, u64> = counters.iter().copied().collect();
        assert_eq!(moved, wanted, "{name}: counter changes");
    }

    /// The backend the VIP's Maglev table picks for `key`.
    fn maglev_pick(&self, vip: &str, key: &FlowKey) -> IpAddr {
        let vip = self.vip(vip);
        let hash = flow_hash(key, vip.meta.flags & lb_common::VIP_HASH_SOURCE_ONLY != 0);
        let id = vip.table[(hash % vip.meta.ring_size) as usize];
        *vip.backends.iter().find(|(_, b)| b.id == id).unwrap().0
    }

    fn backend_id(&self, vip: &str, addr: &str) -> u32 {
        self.vip(vip).backends[&addr.parse::<IpAddr>().unwrap()].id
    }
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn mac_of(addr: &str) -> [u8; 6] {
    NEIGHBOURS.iter().find(|(_, a, _)| *a == addr).unwrap().2
}

/// The frame as forwarded: new destination and source MACs, every other byte as sent.
fn rewritten(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out
}

const PAYLOAD: &[u8] = b"weir test payload";

fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC).ipv4(src, dst, 64).tcp(sport, dport, 1000, 64240).syn();
    let mut frame = Vec::new();
    builder.write(&mut frame, PAYLOAD).unwrap();
    frame
}

fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC).ipv4(src, dst, 64).udp(sport, dport);
    let mut frame = Vec::new();
    builder.write(&mut frame, PAYLOAD).unwrap();
    frame
}

fn tcp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC).ipv6(src, dst, 64).tcp(sport, dport, 1000, 64240).syn();
    let mut frame = Vec::new();
    builder.write(&mut frame, PAYLOAD).unwrap();
    frame
}

fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC).ipv6(src, dst, 64).udp(sport, dport);
    let mut frame = Vec::new();
    builder.write(&mut frame, PAYLOAD).unwrap();
    frame
}

fn key(frame: &[u8]) -> FlowKey {
    let packet = SlicedPacket::from_ethernet(frame).unwrap();
    let (src, dst): (IpAddr, IpAddr) = match packet.net.unwrap() {
        etherparse::NetSlice::Ipv4(ip) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        etherparse::NetSlice::Ipv6(ip) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        _ => unreachable!(),
    };
    match packet.transport.unwrap() {
        TransportSlice::Tcp(tcp) => FlowKey::new(src, tcp.source_port(), dst, tcp.destination_port(), PROTO_TCP),
        TransportSlice::Udp(udp) => FlowKey::new(src, udp.source_port(), dst, udp.destination_port(), PROTO_UDP),
        _ => unreachable!(),
    }
}

/// Asserts that the frame's IP header checksum and transport checksum are valid, as an
/// independent implementation computes them.
fn assert_checksums_valid(frame: &[u8]) {
    let packet = SlicedPacket::from_ethernet(frame).unwrap();
    let headers = etherparse::PacketHeaders::from_ethernet_slice(frame).unwrap();
    if let Some(etherparse::NetHeaders::Ipv4(ip, _)) = &headers.net {
        assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IPv4 header checksum");
    }
    let payload = packet.transport.as_ref().map(|t| match t {
        TransportSlice::Tcp(tcp) => tcp.payload().to_vec(),
        TransportSlice::Udp(udp) => udp.payload().to_vec(),
        _ => Vec::new(),
    });
    match (&headers.net, &headers.transport, payload) {
        (Some(etherparse::NetHeaders::Ipv4(ip, _)), Some(etherparse::TransportHeader::Tcp(tcp)), Some(p)) => {
            assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(ip, &p).unwrap(), "TCP checksum")
        }
        (Some(etherparse::NetHeaders::Ipv6(ip, _)), Some(etherparse::TransportHeader::Tcp(tcp)), Some(p)) => {
            assert_eq!(tcp.checksum, tcp.calc_checksum_ipv6(ip, &p).unwrap(), "TCP checksum")
        }
        (Some(etherparse::NetHeaders::Ipv4(ip, _)), Some(etherparse::TransportHeader::Udp(udp)), Some(p)) => {
            assert_eq!(udp.checksum, udp.calc_checksum_ipv4(ip, &p).unwrap(), "UDP checksum")
        }
        (Some(etherparse::NetHeaders::Ipv6(ip, _)), Some(etherparse::TransportHeader::Udp(udp)), Some(p)) => {
            assert_eq!(udp.checksum, udp.calc_checksum_ipv6(ip, &p).unwrap(), "UDP checksum")
        }
        _ => {}
    }
}

fn forwarded(new_flows: u64) -> Vec<(Counter, u64)> {
    let mut counters = vec![(Counter::Tx, 1)];
    if new_flows > 0 {
        counters.push((Counter::FlowNew, new_flows));
    }
    counters
}

/// Every family × protocol: forwarded out of lb0 to the Maglev pick, MACs rewritten and
/// nothing else, checksums still valid, VIP and backend counters updated.
#[test]
fn forwards_every_family_and_protocol_to_the_maglev_pick() {
    let mut bed = Bed::new();
    let cases = [
        ("tcp4", tcp4(CLIENT4, 40000, VIP4, 80)),
        ("udp4", udp4(CLIENT4, 40000, VIP4, 53)),
        ("tcp6", tcp6(CLIENT6, 40000, VIP6, 80)),
        ("udp6", udp6(CLIENT6, 40000, VIP6, 53)),
    ];
    for (vip, frame) in cases {
        let backend = bed.maglev_pick(vip, &key(&frame)).to_string();
        let expected = rewritten(&frame, mac_of(&backend), LB0_MAC);
        bed.expect(vip, &frame, Verdict::Tx, &expected, &forwarded(1));
        assert_checksums_valid(&expected);

        let state = bed.vip(vip);
        let vip_traffic = bed.dataplane.vip_counters(state.meta.id).unwrap();
        assert_eq!((vip_traffic.packets, vip_traffic.bytes, vip_traffic.new_flows), (1, frame.len() as u64, 1));
        let backend_id = bed.backend_id(vip, &backend);
        let backend_traffic = bed.dataplane.backend_counters(backend_id).unwrap();
        assert_eq!(backend_traffic, vip_traffic, "{vip}: backend counters");

        // The same packet again is the same flow: same backend, no new flow.
        bed.expect(&format!("{vip} again"), &frame, Verdict::Tx, &expected, &forwarded(0));
    }
}

#[test]
fn vlan_tag_is_kept() {
    let mut bed = Bed::new();
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .single_vlan(VlanId::try_new(100).unwrap())
        .ipv4(CLIENT4, VIP4, 64)
        .tcp(40001, 80, 1, 1024);
    let mut frame = Vec::new();
    builder.write(&mut frame, PAYLOAD).unwrap();
    assert_eq!(&frame[12..14], &[0x81, 0x00], "the frame carries an 802.1Q tag");
    let backend = bed.maglev_pick("tcp4", &FlowKey::new(CLIENT4.into(), 40001, VIP4.into(), 80, PROTO_TCP));
    let expected = rewritten(&frame, mac_of(&backend.to_string()), LB0_MAC);
    bed.expect("vlan", &frame, Verdict::Tx, &expected, &forwarded(1));
}

#[test]
fn ipv4_options_are_skipped_and_kept() {
    let mut bed = Bed::new();
    for options in [&[1u8, 1, 1, 0][..], &[1; 40][..]] {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT4, VIP4).unwrap();
        ip.options = options.try_into().unwrap();
        let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .tcp(40002, 80, 1, 1024);
        let mut frame = Vec::new();
        builder.write(&mut frame, PAYLOAD).unwrap();
        assert_eq!(frame[14] & 0x0f, 5 + options.len() as u8 / 4);
        let backend = bed.maglev_pick("tcp4", &key(&frame));
        let expected = rewritten(&frame, mac_of(&backend.to_string()), LB0_MAC);
        let new_flows = if options.len() == 4 { 1 } else { 0 };
        bed.expect("ipv4 options", &frame, Verdict::Tx, &expected, &forwarded(new_flows));
        assert_checksums_valid(&expected);
    }
}

#[test]
fn traffic_that_is_not_for_a_vip_passes_untouched() {
    let mut bed = Bed::new();
    let not_ip = {
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        arp
    };
    let pass = |reason| vec![(reason, 1)];
    let cases = [
        ("arp", not_ip, Counter::PassNotIp),
        ("not a vip address", tcp4(CLIENT4, 40000, NOT_A_VIP4, 22), Counter::PassNotVip),
        ("vip address, other port", tcp4(CLIENT4, 40000, VIP4, 8080), Counter::PassNotVip),
        ("vip address and port, other protocol", udp4(CLIENT4, 40000, VIP4, 80), Counter::PassNotVip),
        ("any-port vip, other protocol", udp4(CLIENT4, 40000, VIP4_ANY_PORT, 80), Counter::PassNotVip),
        ("ipv6 not a vip", tcp6(CLIENT6, 40000, ROUTER6, 22), Counter::PassNotVip),
    ];
    for (name, frame, reason) in cases {
        bed.expect(name, &frame, Verdict::Pass, &frame, &pass(reason));
    }
    // ICMP that is not a "too big" error quoting a flow is the host's.
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv4(CLIENT4, VIP4, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, PAYLOAD)
        .unwrap();
    bed.expect("icmp echo to a vip", &echo, Verdict::Pass, &echo, &pass(Counter::PassNotVip));
}

#[test]
fn port_zero_vip_matches_every_port() {
    let mut bed = Bed::new();
    for port in [1, 80, 443, 65535] {
        let frame = tcp4(CLIENT4, 40000 + port % 1000, VIP4_ANY_PORT, port);
        let expected = rewritten(&frame, mac_of("198.18.0.12"), LB0_MAC);
        bed.expect(&format!("port {port}"), &frame, Verdict::Tx, &expected, &forwarded(1));
    }
}

#[test]
fn next_hop_failures_are_dropped_and_counted_by_reason() {
    let mut bed = Bed::new();
    let frame = tcp4(CLIENT4, 40000, VIP4_REDIRECT, 80);
    let expected = rewritten(&frame, mac_of("198.18.2.21"), LB1_MAC);
    bed.expect("redirect", &frame, Verdict::Redirect, &expected, &[(Counter::Redirect, 1), (Counter::FlowNew, 1)]);

    let cases = [
        ("no neighbour", VIP4_NO_NEIGH, Counter::DropFibNoNeigh),
        ("no route", VIP4_NO_ROUTE, Counter::DropFibFailed),
        ("egress not attached", VIP4_UNATTACHED, Counter::DropEgressNotAttached),
    ];
    for (name, vip, reason) in cases {
        let frame = tcp4(CLIENT4, 40000, vip, 80);
        let before = bed.counters();
        let (action, _) = bed.run(&frame);
        assert_eq!(action, Verdict::Drop as u32, "{name}");
        let after = bed.counters();
        assert_eq!(after[&reason] - before[&reason], 1, "{name}: {reason:?}");
        assert_eq!(after[&Counter::Tx], before[&Counter::Tx], "{name}");
    }

    let frame = tcp4(CLIENT4, 40000, VIP4_EMPTY, 80);
    bed.expect("no backend", &frame, Verdict::Drop, &frame, &[(Counter::DropNoBackend, 1)]);

    bed.ns.sysctl("net.ipv4.conf.lb0.forwarding", "0").unwrap();
    let frame = tcp4(CLIENT4, 40100, VIP4, 80);
    let (action, _) = bed.run(&frame);
    assert_eq!(action, Verdict::Drop as u32);
    assert_eq!(bed.counters()[&Counter::DropFibForwardingDisabled], 1);
}

#[test]
fn source_ip_hash_keeps_a_client_on_one_backend() {
    let mut bed = Bed::new();
    let mut seen_source = std::collections::BTreeSet::new();
    let mut seen_tuple = std::collections::BTreeSet::new();
    for port in 0..64 {
        let (_, out) = bed.run(&tcp4(CLIENT4, 30000 + port, VIP4_SOURCE_HASH, 80));
        seen_source.insert(out[..6].to_vec());
        let (_, out) = bed.run(&tcp4(CLIENT4, 30000 + port, VIP4, 80));
        seen_tuple.insert(out[..6].to_vec());
    }
    assert_eq!(seen_source.len(), 1, "source-ip hashing: one backend for one client");
    assert_eq!(seen_tuple.len(), 3, "5-tuple hashing: the same client's flows spread");
    assert!(matches!(
        Config::parse(BASE_CONFIG, "t").unwrap().vips.iter().find(|v| v.name == "source-hash").unwrap().hash,
        HashMode::SourceIp
    ));
}

/// Runs `flows` and returns each one's backend MAC.
fn backends_of(bed: &mut Bed, flows: &[Vec<u8>]) -> Vec<[u8; 6]> {
    flows
        .iter()
        .map(|frame| {
            let (action, out) = bed.run(frame);
            assert_eq!(action, Verdict::Tx as u32);
            out[..6].try_into().unwrap()
        })
        .collect()
}

#[test]
fn established_flows_stay_put_when_backends_are_added_or_reweighted() {
    let mut bed = Bed::new();
    let flows: Vec<Vec<u8>> = (0..300).map(|i| tcp4(CLIENT4, 20000 + i, VIP4, 80)).collect();
    let before = backends_of(&mut bed, &flows);

    let added = BASE_CONFIG.replacen(
        "[[vip.backend]]\naddress = \"198.18.0.13\"\n",
        "[[vip.backend]]\naddress = \"198.18.0.13\"\nweight = 300\n[[vip.backend]]\naddress = \"198.18.0.14\"\n",
        1,
    );
    bed.apply(&added);
    assert_eq!(backends_of(&mut bed, &flows), before, "established flows keep their backend");

    // New flows do reach the new backend.
    let fresh: Vec<Vec<u8>> = (0..300).map(|i| tcp4(CLIENT4, 50000 + i, VIP4, 80)).collect();
    let fresh_backends = backends_of(&mut bed, &fresh);
    assert!(fresh_backends.contains(&mac_of("198.18.0.14")));
    for (frame, mac) in fresh.iter().zip(&fresh_backends) {
        assert_eq!(mac_of(&bed.maglev_pick("tcp4", &key(frame)).to_string()), *mac);
    }
}

#[test]
fn only_the_flows_of_a_removed_backend_move() {
    let mut bed = Bed::new();
    let flows: Vec<Vec<u8>> = (0..300).map(|i| tcp4(CLIENT4, 20000 + i, VIP4, 80)).collect();
    let before = backends_of(&mut bed, &flows);
    let removed = mac_of("198.18.0.13");
    let on_removed = before.iter().filter(|mac| **mac == removed).count() as u64;
    assert!(on_removed > 50, "the removed backend had flows");

    bed.apply(&BASE_CONFIG.replacen("[[vip.backend]]\naddress = \"198.18.0.13\"\n", "", 1));
    let counters_before = bed.counters();
    let after = backends_of(&mut bed, &flows);
    for ((frame, old), new) in flows.iter().zip(&before).zip(&after) {
        if *old == removed {
            assert_eq!(mac_of(&bed.maglev_pick("tcp4", &key(frame)).to_string()), *new, "moved to its slot's owner");
        } else {
            assert_eq!(old, new, "a flow of a remaining backend stays");
        }
    }
    let counters_after = bed.counters();
    assert_eq!(counters_after[&Counter::FlowRescheduled] - counters_before[&Counter::FlowRescheduled], on_removed);
    assert_eq!(counters_after[&Counter::FlowNew] - counters_before[&Counter::FlowNew], on_removed);
}

/// A router on the client's path sends "fragmentation needed" about the backend's DSR
/// reply (VIP → client); it must reach the backend that serves the flow.
#[test]
fn icmp_too_big_reaches_the_flows_backend() {
    let mut bed = Bed::new();
    // IPv4: establish the flow, then the error quoting its reply.
    let flow = tcp4(CLIENT4, 41000, VIP4, 80);
    let (_, out) = bed.run(&flow);
    let backend_mac: [u8; 6] = out[..6].try_into().unwrap();
    let mut reply = Vec::new();
    PacketBuilder::ipv4(VIP4, CLIENT4, 64).tcp(80, 41000, 7, 1024).write(&mut reply, &[0; 64]).unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv4(ROUTER4, VIP4, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 }))
        .write(&mut frame, &reply[..28])
        .unwrap();
    let expected = rewritten(&frame, backend_mac, LB0_MAC);
    bed.expect("icmp frag needed", &frame, Verdict::Tx, &expected, &[(Counter::Tx, 1), (Counter::IcmpTooBigForwarded, 1)]);

    // IPv6, for a flow the connection table has not seen: the hash alone decides, and
    // it agrees with where the flow's own packets would go.
    let mut reply = Vec::new();
    PacketBuilder::ipv6(VIP6, CLIENT6, 64).udp(53, 41001).write(&mut reply, &[0; 64]).unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv6(ROUTER6, VIP6, 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut frame, &reply[..48])
        .unwrap();
    let flow_key = FlowKey::new(CLIENT6.into(), 41001, VIP6.into(), 53, PROTO_UDP);
    let backend = bed.maglev_pick("udp6", &flow_key).to_string();
    let expected = rewritten(&frame, mac_of(&backend), LB0_MAC);
    bed.expect("icmpv6 packet too big", &frame, Verdict::Tx, &expected, &[(Counter::Tx, 1), (Counter::IcmpTooBigForwarded, 1)]);
    assert!(bed.dataplane.flows().unwrap().iter().all(|(k, _)| *k != flow_key), "an ICMP error creates no flow");
}

#[test]
fn fragments_to_a_vip_address_are_dropped_and_counted() {
    let mut bed = Bed::new();
    let fragment4 = |dst: [u8; 4], more: bool, offset: u16| {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, CLIENT4, dst).unwrap();
        ip.more_fragments = more;
        ip.fragment_offset = etherparse::IpFragOffset::try_new(offset).unwrap();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .udp(40000, 53)
            .write(&mut frame, PAYLOAD)
            .unwrap();
        frame
    };
    let first = fragment4(VIP4, true, 0);
    bed.expect("first fragment", &first, Verdict::Drop, &first, &[(Counter::DropFragment, 1)]);
    let later = fragment4(VIP4, false, 100);
    bed.expect("later fragment", &later, Verdict::Drop, &later, &[(Counter::DropFragment, 1)]);
    let host = fragment4(NOT_A_VIP4, true, 0);
    bed.expect("fragment for the host", &host, Verdict::Pass, &host, &[(Counter::PassNotVip, 1)]);

    // IPv6: a fragment header between the fixed header and UDP.
    let mut frame = udp6(CLIENT6, 40000, VIP6, 53);
    let payload_len = u16::from_be_bytes([frame[18], frame[19]]) + 8;
    frame[18..20].copy_from_slice(&payload_len.to_be_bytes());
    frame[20] = 44;
    let fragment_header = [17u8, 0, 0x00, 0x01, 0, 0, 0x12, 0x34];
    frame.splice(54..54, fragment_header);
    bed.expect("ipv6 fragment", &frame, Verdict::Drop, &frame, &[(Counter::DropFragment, 1)]);
}

/// Cut every valid frame at every length from the Ethernet header on (shorter frames are
/// refused by BPF_PROG_TEST_RUN itself): always dropped as malformed, never aborted.
#[test]
fn truncated_frames_are_dropped_as_malformed_at_every_boundary() {
    let mut bed = Bed::new();
    let frames = [
        tcp4(CLIENT4, 40000, VIP4, 80),
        udp4(CLIENT4, 40000, VIP4, 53),
        tcp6(CLIENT6, 40000, VIP6, 80),
        udp6(CLIENT6, 40000, VIP6, 53),
    ];
    for frame in frames {
        let headers_end = frame.len() - PAYLOAD.len();
        for len in 14..headers_end {
            let cut = &frame[..len];
            bed.expect(&format!("cut at {len}"), cut, Verdict::Drop, cut, &[(Counter::DropMalformed, 1)]);
        }
    }
}

#[test]
fn inconsistent_headers_are_dropped_as_malformed() {
    let mut bed = Bed::new();
    let good4 = tcp4(CLIENT4, 40000, VIP4, 80);
    let good6 = tcp6(CLIENT6, 40000, VIP6, 80);
    let patch = |frame: &[u8], at: usize, bytes: &[u8]| {
        let mut f = frame.to_vec();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    let cases = [
        ("ipv4 ihl below 5", patch(&good4, 14, &[0x44])),
        ("ipv4 version 6 in an IPv4 ethertype", patch(&good4, 14, &[0x65])),
        ("ipv4 total length beyond the frame", patch(&good4, 16, &[0x05, 0xdc])),
        ("ipv4 total length shorter than its header", patch(&good4, 16, &[0x00, 0x10])),
        ("ipv4 options beyond the frame", patch(&good4[..40], 14, &[0x4f])),
        ("ipv6 payload length beyond the frame", patch(&good6, 18, &[0x05, 0xdc])),
        ("ipv6 version 4 in an IPv6 ethertype", patch(&good6, 14, &[0x46])),
    ];
    for (name, frame) in cases {
        bed.expect(name, &frame, Verdict::Drop, &frame, &[(Counter::DropMalformed, 1)]);
    }
}

/// Random and bit-flipped frames: the program never aborts, and every frame is counted
/// under exactly one verdict reason.
#[test]
fn garbage_is_never_aborted_and_always_counted_once() {
    let mut bed = Bed::new();
    let seeds = [tcp4(CLIENT4, 40000, VIP4, 80), udp6(CLIENT6, 40000, VIP6, 53)];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let reasons = |counters: &BTreeMap<Counter, u64>| -> u64 {
        counters.iter().filter(|(c, _)| c.verdict().is_some()).map(|(_, v)| v).sum()
    };
    let before = reasons(&bed.counters());
    let runs = 3000;
    for i in 0..runs {
        let frame: Vec<u8> = if i % 3 == 0 {
            let len = 14 + (next() % 200) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            let mut frame = seeds[i % 2].clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % frame.len();
                frame[at] ^= 1 << (next() % 8);
            }
            frame
        };
        let (action, _) = bed.run(&frame);
        assert_ne!(action, Verdict::Aborted as u32, "aborted on {}", hex(&frame));
        assert!(action <= Verdict::Redirect as u32, "unknown verdict {action}");
    }
    assert_eq!(reasons(&bed.counters()) - before, runs as u64);
}
