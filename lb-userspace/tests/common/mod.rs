#![allow(dead_code)] // each test binary uses a different part of the bed

//! The dataplane fixture bed, shared by the dataplane tests and the benchmark: the real
//! XDP program run with BPF_PROG_TEST_RUN on crafted frames.
//!
//! Each bed builds its own network namespace so that `bpf_fib_lookup` sees a fixed
//! routing and neighbour table (below), and programs the maps through the agent's own
//! path (configuration → planner → map writes). Packets are built and checked with
//! `etherparse`, an implementation independent of the program's.
//!
//! The namespace: `lb0` (198.18.0.1/24, 2001:db8:0:1::1/64), `lb1` (198.18.2.1/24) and
//! `lb2` (198.18.3.1/24), veths with fixed MACs; permanent neighbours for the backends;
//! `lb0` and `lb1` are the agent's interfaces (they may be redirected to, and frames sent
//! to their MAC addresses are load-balanced), `lb2` not (as if the agent had not
//! attached it).

use std::{collections::BTreeMap, net::IpAddr};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use lb_common::{Counter, FlowKey, PROTO_TCP, PROTO_UDP, Verdict, flow_hash};
use weir::{
    config::Config,
    dataplane::{
        Dataplane, LoadOptions,
        plan::{Reconciler, VipState},
    },
    host::HostSetup,
};
use weir_testbed::Netns;

pub const LB0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const LB2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xcc, 0x01];

pub const CLIENT4: [u8; 4] = [198, 18, 0, 100];
pub const CLIENT6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
];
pub const ROUTER4: [u8; 4] = [198, 18, 0, 254];
pub const ROUTER6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xfe,
];

pub const VIP4: [u8; 4] = [198, 19, 0, 10];
pub const VIP4_ANY_PORT: [u8; 4] = [198, 19, 0, 20];
pub const VIP4_EMPTY: [u8; 4] = [198, 19, 0, 30];
pub const VIP4_REDIRECT: [u8; 4] = [198, 19, 0, 40];
pub const VIP4_NO_NEIGH: [u8; 4] = [198, 19, 0, 41];
pub const VIP4_NO_ROUTE: [u8; 4] = [198, 19, 0, 42];
pub const VIP4_UNATTACHED: [u8; 4] = [198, 19, 0, 43];
pub const VIP4_SOURCE_HASH: [u8; 4] = [198, 19, 0, 50];
pub const VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
pub const NOT_A_VIP4: [u8; 4] = [198, 18, 0, 1];
/// Neither a VIP address nor a NAT source (`DESTINATIONS`): the host's.
pub const HOST4: [u8; 4] = [198, 18, 0, 200];
/// The VIP of [`STATELESS_CONFIG`].
pub const STATELESS4: [u8; 4] = [198, 19, 0, 70];
/// A DSR VIP without a connection table (`conntrack = false`), to add to a bed's
/// configuration.
pub const STATELESS_CONFIG: &str = r#"
[[vip]]
name = "stateless"
address = "198.19.0.70"
port = 80
conntrack = false
table_size = 251
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
"#;

/// Capacity of the NAT tables in the bed: small, so that a test can fill them.
pub const NAT_ENTRIES: u32 = 64;

/// Backends and the MACs their permanent neighbour entries give them.
pub const NEIGHBOURS: &[(&str, &str, [u8; 6])] = &[
    ("lb0", "198.18.0.11", [0x02, 0, 0, 0, 0x01, 0x11]),
    ("lb0", "198.18.0.12", [0x02, 0, 0, 0, 0x01, 0x12]),
    ("lb0", "198.18.0.13", [0x02, 0, 0, 0, 0x01, 0x13]),
    ("lb0", "198.18.0.14", [0x02, 0, 0, 0, 0x01, 0x14]),
    ("lb0", "2001:db8:0:1::11", [0x02, 0, 0, 0, 0x01, 0x11]),
    ("lb0", "2001:db8:0:1::12", [0x02, 0, 0, 0, 0x01, 0x12]),
    ("lb0", "2001:db8:0:1::13", [0x02, 0, 0, 0, 0x01, 0x13]),
    ("lb1", "198.18.2.21", [0x02, 0, 0, 0, 0x02, 0x21]),
    ("lb2", "198.18.3.31", [0x02, 0, 0, 0, 0x03, 0x31]),
    // The client, for NAT replies.
    ("lb0", "198.18.0.100", CLIENT_MAC),
    ("lb0", "2001:db8:0:1::100", CLIENT_MAC),
];

pub const BASE_CONFIG: &str = r#"
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

/// NAT VIPs on top of the bed's base configuration, one backend each so that the
/// expected frames are known; TCP backends listen on another port than their VIP.
pub fn nat_config(nat_ports: &str) -> String {
    format!(
        r#"{BASE_CONFIG}
[[vip]]
name = "nat-tcp4"
address = "198.19.0.60"
port = 80
forwarding = "nat"
nat_source = "198.18.0.1"
table_size = 251
[[vip.backend]]
address = "198.18.0.11"
port = 8080

[[vip]]
name = "nat-udp4"
address = "198.19.0.60"
port = 53
protocol = "udp"
forwarding = "nat"
nat_source = "198.18.0.1"
table_size = 251
[[vip.backend]]
address = "198.18.0.12"

[[vip]]
name = "nat-tcp6"
address = "2001:db8:0:ff::60"
port = 80
forwarding = "nat"
nat_source = "2001:db8:0:1::1"
table_size = 251
[[vip.backend]]
address = "2001:db8:0:1::11"
port = 8080

[[vip]]
name = "nat-udp6"
address = "2001:db8:0:ff::60"
port = 53
protocol = "udp"
forwarding = "nat"
nat_source = "2001:db8:0:1::1"
table_size = 251
[[vip.backend]]
address = "2001:db8:0:1::12"

[[vip]]
name = "nat-two-arm"
address = "198.19.0.61"
port = 80
forwarding = "nat"
nat_source = "198.18.2.1"
table_size = 251
[[vip.backend]]
address = "198.18.2.21"

[flows]
nat_ports = "{nat_ports}"
"#
    )
}

/// A namespace with a loaded program whose maps hold a configuration.
pub struct Bed {
    pub ns: Netns,
    pub dataplane: Dataplane,
    pub state: Reconciler,
    pub lb0: u32,
    pub lb1: u32,
}

impl Bed {
    pub fn new() -> Bed {
        Bed::with_nat_entries(NAT_ENTRIES)
    }

    /// A bed whose NAT tables hold `nat_entries` flows.
    pub fn with_nat_entries(nat_entries: u32) -> Bed {
        let ns = Netns::new("dataplane").expect("dataplane tests need root and network namespaces");
        for (dev, peer, mac) in [
            ("lb0", "lb0p", LB0_MAC),
            ("lb1", "lb1p", LB1_MAC),
            ("lb2", "lb2p", LB2_MAC),
        ] {
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer])
                .unwrap();
            ns.ip(&["link", "set", dev, "address", &mac_string(mac)])
                .unwrap();
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
            ns.ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac_string(*mac),
                "dev",
                dev,
                "nud",
                "permanent",
            ])
            .unwrap();
        }
        let (dataplane, lb0, lb1) = ns
            .enter(|| {
                let mut host = HostSetup::default();
                for dev in ["lb0", "lb1", "lb2"] {
                    host.enable_forwarding(dev).unwrap();
                }
                let mut dataplane = Dataplane::load(LoadOptions {
                    conntrack_entries: 65536,
                    maglev_ring_entries: 1 << 16,
                    nat_entries,
                    pins: None,
                })
                .expect("the XDP program loads and passes the verifier");
                let lb0 = dataplane.add_interface("lb0").unwrap();
                let lb1 = dataplane.add_interface("lb1").unwrap();
                (dataplane, lb0, lb1)
            })
            .unwrap();
        let mut bed = Bed {
            ns,
            dataplane,
            state: Reconciler::new(1 << 16),
            lb0,
            lb1,
        };
        bed.apply(BASE_CONFIG);
        bed
    }

    pub fn apply(&mut self, text: &str) {
        let config = Config::parse(text, "test.toml").unwrap();
        let (writes, state) = self.state.plan(&config).unwrap();
        self.dataplane.apply(&writes).unwrap();
        self.state = state;
    }

    pub fn vip(&self, name: &str) -> &VipState {
        self.state.vips().find(|vip| vip.name == name).unwrap()
    }

    /// Runs the program once on `frame` arriving on `ifindex`.
    pub fn run_on(&mut self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
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

    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let lb0 = self.lb0;
        self.run_on(lb0, frame)
    }

    pub fn counters_moved(&self, before: &BTreeMap<Counter, u64>) -> BTreeMap<Counter, u64> {
        self.counters()
            .iter()
            .map(|(c, v)| (*c, v - before[c]))
            .filter(|(_, d)| *d != 0)
            .collect()
    }

    pub fn counters(&self) -> BTreeMap<Counter, u64> {
        self.dataplane.global_counters().unwrap()
    }

    /// Runs `frame` and checks the verdict, the output frame and that the global
    /// counters moved by exactly `counters` (every other counter unchanged).
    pub fn expect(
        &mut self,
        name: &str,
        frame: &[u8],
        verdict: Verdict,
        output: &[u8],
        counters: &[(Counter, u64)],
    ) {
        let lb0 = self.lb0;
        self.expect_on(lb0, name, frame, verdict, output, counters);
    }

    /// [`Bed::expect`] for a frame arriving on `ifindex`.
    pub fn expect_on(
        &mut self,
        ifindex: u32,
        name: &str,
        frame: &[u8],
        verdict: Verdict,
        output: &[u8],
        counters: &[(Counter, u64)],
    ) {
        let before = self.counters();
        let (action, out) = self.run_on(ifindex, frame);
        assert_eq!(action, verdict as u32, "{name}: verdict");
        assert_eq!(hex(&out), hex(output), "{name}: output frame");
        let wanted: BTreeMap<Counter, u64> = counters.iter().copied().collect();
        assert_eq!(
            self.counters_moved(&before),
            wanted,
            "{name}: counter changes"
        );
    }

    /// The backend the VIP's Maglev table picks for `key`.
    pub fn maglev_pick(&self, vip: &str, key: &FlowKey) -> IpAddr {
        let vip = self.vip(vip);
        let hash = flow_hash(key, vip.meta.flags & lb_common::VIP_HASH_SOURCE_ONLY != 0);
        let id = vip.table[(hash % vip.meta.ring_size) as usize];
        *vip.backends.iter().find(|(_, b)| b.id == id).unwrap().0
    }

    pub fn backend_id(&self, vip: &str, addr: &str) -> u32 {
        self.vip(vip).backends[&addr.parse::<IpAddr>().unwrap()].id
    }
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn mac_of(addr: &str) -> [u8; 6] {
    NEIGHBOURS.iter().find(|(_, a, _)| *a == addr).unwrap().2
}

/// The frame as forwarded: new destination and source MACs, every other byte as sent.
pub fn rewritten(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out
}

pub const PAYLOAD: &[u8] = b"weir test payload";

pub fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut frame = Vec::new();
    builder.write(&mut frame, PAYLOAD).unwrap();
    frame
}

/// A segment of an established TCP flow (ACK set), with FIN when `fin`.
pub fn tcp4_established(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, fin: bool) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1001, 64240)
        .ack(1);
    let builder = if fin { builder.fin() } else { builder };
    let mut frame = Vec::new();
    builder.write(&mut frame, PAYLOAD).unwrap();
    frame
}

pub fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut frame = Vec::new();
    builder.write(&mut frame, PAYLOAD).unwrap();
    frame
}

pub fn tcp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv6(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut frame = Vec::new();
    builder.write(&mut frame, PAYLOAD).unwrap();
    frame
}

pub fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv6(src, dst, 64)
        .udp(sport, dport);
    let mut frame = Vec::new();
    builder.write(&mut frame, PAYLOAD).unwrap();
    frame
}

pub fn key(frame: &[u8]) -> FlowKey {
    let packet = SlicedPacket::from_ethernet(frame).unwrap();
    let (src, dst): (IpAddr, IpAddr) = match packet.net.unwrap() {
        etherparse::NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        etherparse::NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => unreachable!(),
    };
    match packet.transport.unwrap() {
        TransportSlice::Tcp(tcp) => FlowKey::new(
            src,
            tcp.source_port(),
            dst,
            tcp.destination_port(),
            PROTO_TCP,
        ),
        TransportSlice::Udp(udp) => FlowKey::new(
            src,
            udp.source_port(),
            dst,
            udp.destination_port(),
            PROTO_UDP,
        ),
        _ => unreachable!(),
    }
}

/// Asserts that the frame's IP header checksum and transport checksum are valid, as an
/// independent implementation computes them.
pub fn assert_checksums_valid(frame: &[u8]) {
    use etherparse::{
        NetHeaders::{Ipv4, Ipv6},
        TransportHeader::{Tcp, Udp},
    };
    let headers = etherparse::PacketHeaders::from_ethernet_slice(frame).unwrap();
    if let Some(Ipv4(ip, _)) = &headers.net {
        assert_eq!(
            ip.header_checksum,
            ip.calc_header_checksum(),
            "IPv4 header checksum"
        );
    }
    let payload = headers.payload.slice();
    let (carried, computed) = match (&headers.net, &headers.transport) {
        (Some(Ipv4(ip, _)), Some(Tcp(tcp))) => (tcp.checksum, tcp.calc_checksum_ipv4(ip, payload)),
        (Some(Ipv6(ip, _)), Some(Tcp(tcp))) => (tcp.checksum, tcp.calc_checksum_ipv6(ip, payload)),
        (Some(Ipv4(ip, _)), Some(Udp(udp))) => (udp.checksum, udp.calc_checksum_ipv4(ip, payload)),
        (Some(Ipv6(ip, _)), Some(Udp(udp))) => (udp.checksum, udp.calc_checksum_ipv6(ip, payload)),
        other => panic!("not a TCP or UDP frame: {other:?}"),
    };
    assert_eq!(carried, computed.unwrap(), "transport checksum");
}

pub fn forwarded(new_flows: u64) -> Vec<(Counter, u64)> {
    let mut counters = vec![(Counter::Tx, 1)];
    if new_flows > 0 {
        counters.push((Counter::FlowNew, new_flows));
    }
    counters
}
