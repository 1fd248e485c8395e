//! NAT dataplane tests: the real XDP program, run with BPF_PROG_TEST_RUN on crafted
//! frames, in the fixture style of `dataplane.rs` — input frame, expected verdict,
//! expected output frame (every byte), expected change of every global counter. Expected
//! frames are built from scratch by `etherparse`, so byte equality also checks every
//! checksum the program updated incrementally against an independent implementation.

mod common;

use std::{collections::HashSet, net::IpAddr};

use common::*;
use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4::DestUnreachableHeader};
use lb_common::{
    Counter, FLOW_CLOSING, FlowKey, FlowTimeouts, NAT_CLAIM_GRACE_NS, NatReply, PROTO_TCP,
    PROTO_UDP, Verdict, flow_hash,
};
use weir::dataplane::flows::now_ns;

const NAT_VIP4: [u8; 4] = [198, 19, 0, 60];
const NAT_VIP4_TWO_ARM: [u8; 4] = [198, 19, 0, 61];
const NAT_VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x60,
];
const SOURCE4: [u8; 4] = [198, 18, 0, 1];
const SOURCE4_LB1: [u8; 4] = [198, 18, 2, 1];
const SOURCE6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x01,
];
const BACKEND4: [u8; 4] = [198, 18, 0, 11];
const BACKEND4_UDP: [u8; 4] = [198, 18, 0, 12];
const BACKEND4_LB1: [u8; 4] = [198, 18, 2, 21];
const BACKEND6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x11,
];
const BACKEND6_UDP: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x12,
];

const PORTS: (u16, u16) = (20000, 29999);

fn nat_bed(ports: (u16, u16)) -> Bed {
    let mut bed = Bed::new();
    bed.apply(&nat_config(&format!("{}-{}", ports.0, ports.1)));
    bed
}

/// A TCP SYN (or SYN-ACK with `reply`) or a UDP datagram carrying `PAYLOAD`.
#[allow(clippy::too_many_arguments)]
fn frame(
    macs: ([u8; 6], [u8; 6]),
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    protocol: u8,
    reply: bool,
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(macs.0, macs.1);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("one family"),
    };
    let mut out = Vec::new();
    if protocol == PROTO_TCP {
        let tcp = ip.tcp(sport, dport, 1000, 64240).syn();
        let tcp = if reply { tcp.ack(1001) } else { tcp };
        tcp.write(&mut out, PAYLOAD).unwrap();
    } else {
        ip.udp(sport, dport).write(&mut out, PAYLOAD).unwrap();
    }
    out
}

/// A TCP SYN from the client to the v4 NAT VIP's port 80.
fn tcp_request(client_port: u16) -> Vec<u8> {
    frame(
        (CLIENT_MAC, LB0_MAC),
        CLIENT4.into(),
        client_port,
        NAT_VIP4.into(),
        80,
        PROTO_TCP,
        false,
    )
}

/// The NAT port a flow gets when no other flow holds it: the first probe.
fn first_port(client: &FlowKey, ports: (u16, u16)) -> u16 {
    let count = (ports.1 - ports.0) as u32 + 1;
    ports.0 + (flow_hash(client, false) % count) as u16
}

struct Case {
    name: &'static str,
    client: IpAddr,
    vip: IpAddr,
    vip_port: u16,
    protocol: u8,
    source: IpAddr,
    backend: IpAddr,
    backend_port: u16,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "tcp4",
            client: CLIENT4.into(),
            vip: NAT_VIP4.into(),
            vip_port: 80,
            protocol: PROTO_TCP,
            source: SOURCE4.into(),
            backend: BACKEND4.into(),
            backend_port: 8080,
        },
        Case {
            name: "udp4",
            client: CLIENT4.into(),
            vip: NAT_VIP4.into(),
            vip_port: 53,
            protocol: PROTO_UDP,
            source: SOURCE4.into(),
            backend: BACKEND4_UDP.into(),
            backend_port: 53,
        },
        Case {
            name: "tcp6",
            client: CLIENT6.into(),
            vip: NAT_VIP6.into(),
            vip_port: 80,
            protocol: PROTO_TCP,
            source: SOURCE6.into(),
            backend: BACKEND6.into(),
            backend_port: 8080,
        },
        Case {
            name: "udp6",
            client: CLIENT6.into(),
            vip: NAT_VIP6.into(),
            vip_port: 53,
            protocol: PROTO_UDP,
            source: SOURCE6.into(),
            backend: BACKEND6_UDP.into(),
            backend_port: 53,
        },
    ]
}

/// Both directions in every family × protocol: the client's packet leaves DNATed and
/// SNATed; the backend's reply comes back as VIP → client. Every byte (checksums
/// included) as etherparse builds the translated packet from scratch.
#[test]
fn translates_both_directions_in_every_family_and_protocol() {
    let mut bed = nat_bed(PORTS);
    for case in cases() {
        let client_port = 41000;
        let key = FlowKey::new(
            case.client,
            client_port,
            case.vip,
            case.vip_port,
            case.protocol,
        );
        let nat_port = first_port(&key, PORTS);
        let backend_mac = mac_of(&case.backend.to_string());
        let request = frame(
            (CLIENT_MAC, LB0_MAC),
            case.client,
            client_port,
            case.vip,
            case.vip_port,
            case.protocol,
            false,
        );
        let translated = frame(
            (LB0_MAC, backend_mac),
            case.source,
            nat_port,
            case.backend,
            case.backend_port,
            case.protocol,
            false,
        );
        bed.expect(
            &format!("{} request", case.name),
            &request,
            Verdict::Tx,
            &translated,
            &[(Counter::Tx, 1), (Counter::FlowNew, 1)],
        );
        assert_checksums_valid(&translated);
        bed.expect(
            &format!("{} request again", case.name),
            &request,
            Verdict::Tx,
            &translated,
            &[(Counter::Tx, 1)],
        );

        let reply = frame(
            (backend_mac, LB0_MAC),
            case.backend,
            case.backend_port,
            case.source,
            nat_port,
            case.protocol,
            true,
        );
        let back = frame(
            (LB0_MAC, CLIENT_MAC),
            case.vip,
            case.vip_port,
            case.client,
            client_port,
            case.protocol,
            true,
        );
        bed.expect(
            &format!("{} reply", case.name),
            &reply,
            Verdict::Tx,
            &back,
            &[(Counter::Tx, 1), (Counter::NatReply, 1)],
        );
        assert_checksums_valid(&back);
    }
}

/// A UDP datagram over IPv4 without a checksum (0) keeps none, both ways.
#[test]
fn a_zero_udp_checksum_over_ipv4_stays_zero() {
    let mut bed = nat_bed(PORTS);
    let zero = |mut frame: Vec<u8>| {
        frame[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        frame
    };
    let client: IpAddr = CLIENT4.into();
    let key = FlowKey::new(client, 42000, NAT_VIP4.into(), 53, PROTO_UDP);
    let nat_port = first_port(&key, PORTS);
    let backend_mac = mac_of("198.18.0.12");
    let request = zero(frame(
        (CLIENT_MAC, LB0_MAC),
        client,
        42000,
        NAT_VIP4.into(),
        53,
        PROTO_UDP,
        false,
    ));
    let translated = zero(frame(
        (LB0_MAC, backend_mac),
        SOURCE4.into(),
        nat_port,
        BACKEND4_UDP.into(),
        53,
        PROTO_UDP,
        false,
    ));
    bed.expect(
        "request",
        &request,
        Verdict::Tx,
        &translated,
        &[(Counter::Tx, 1), (Counter::FlowNew, 1)],
    );
    let reply = zero(frame(
        (backend_mac, LB0_MAC),
        BACKEND4_UDP.into(),
        53,
        SOURCE4.into(),
        nat_port,
        PROTO_UDP,
        true,
    ));
    let back = zero(frame(
        (LB0_MAC, CLIENT_MAC),
        NAT_VIP4.into(),
        53,
        client,
        42000,
        PROTO_UDP,
        true,
    ));
    bed.expect(
        "reply",
        &reply,
        Verdict::Tx,
        &back,
        &[(Counter::Tx, 1), (Counter::NatReply, 1)],
    );
}

/// Two arms: the backend is behind lb1. The request leaves through lb1, the reply comes
/// in on lb1 and leaves through lb0 towards the client.
#[test]
fn two_arms_redirect_both_ways() {
    let mut bed = nat_bed(PORTS);
    let client: IpAddr = CLIENT4.into();
    let key = FlowKey::new(client, 43000, NAT_VIP4_TWO_ARM.into(), 80, PROTO_TCP);
    let nat_port = first_port(&key, PORTS);
    let backend_mac = mac_of("198.18.2.21");
    let request = frame(
        (CLIENT_MAC, LB0_MAC),
        client,
        43000,
        NAT_VIP4_TWO_ARM.into(),
        80,
        PROTO_TCP,
        false,
    );
    let translated = frame(
        (LB1_MAC, backend_mac),
        SOURCE4_LB1.into(),
        nat_port,
        BACKEND4_LB1.into(),
        80,
        PROTO_TCP,
        false,
    );
    bed.expect(
        "request",
        &request,
        Verdict::Redirect,
        &translated,
        &[(Counter::Redirect, 1), (Counter::FlowNew, 1)],
    );
    let reply = frame(
        (backend_mac, LB1_MAC),
        BACKEND4_LB1.into(),
        80,
        SOURCE4_LB1.into(),
        nat_port,
        PROTO_TCP,
        true,
    );
    let back = frame(
        (LB0_MAC, CLIENT_MAC),
        NAT_VIP4_TWO_ARM.into(),
        80,
        client,
        43000,
        PROTO_TCP,
        true,
    );
    let lb1 = bed.lb1;
    bed.expect_on(
        lb1,
        "reply",
        &reply,
        Verdict::Redirect,
        &back,
        &[(Counter::Redirect, 1), (Counter::NatReply, 1)],
    );
}

/// Replies that match no NAT flow are the host's: passed untouched.
#[test]
fn traffic_from_backends_that_matches_no_flow_passes_untouched() {
    let mut bed = nat_bed(PORTS);
    let backend_mac = mac_of("198.18.0.11");
    for (name, port) in [("port in the NAT range", 25000), ("port outside", 40000)] {
        let stray = frame(
            (backend_mac, LB0_MAC),
            BACKEND4.into(),
            8080,
            SOURCE4.into(),
            port,
            PROTO_TCP,
            true,
        );
        bed.expect(
            name,
            &stray,
            Verdict::Pass,
            &stray,
            &[(Counter::PassNotVip, 1)],
        );
    }
}

/// Four ports for one backend: four clients get four different ports (collisions
/// probed past), the fifth is dropped and counted. Once a flow has closed and lingered,
/// its port goes to the next new flow.
/// Frames sent to another host's MAC address (a flooding bridge) are not translated, in
/// either direction: another host's copies pass to the kernel, counted.
#[test]
fn frames_sent_to_another_mac_are_not_translated() {
    let mut bed = nat_bed(PORTS);
    let other_host = [0x02, 0, 0, 0, 0x0e, 0x01];
    let mut request = tcp_request(43000);
    request[..6].copy_from_slice(&other_host);
    bed.expect(
        "request to another host",
        &request,
        Verdict::Pass,
        &request,
        &[(Counter::PassNotOurMac, 1)],
    );
    assert!(bed.dataplane.flows().unwrap().is_empty(), "no NAT flow");

    // A flow the load balancer did translate; its reply, as another host's copy.
    let request = tcp_request(43001);
    let (verdict, _) = bed.run(&request);
    assert_eq!(verdict, Verdict::Tx as u32);
    let key = FlowKey::new(CLIENT4.into(), 43001, NAT_VIP4.into(), 80, PROTO_TCP);
    let reply = frame(
        (mac_of("198.18.0.11"), other_host),
        BACKEND4.into(),
        8080,
        SOURCE4.into(),
        first_port(&key, PORTS),
        PROTO_TCP,
        true,
    );
    bed.expect(
        "reply to another host",
        &reply,
        Verdict::Pass,
        &reply,
        &[(Counter::PassNotOurMac, 1)],
    );
}

#[test]
fn ports_never_collide_run_out_predictably_and_are_reclaimed() {
    let ports = (30000, 30003);
    let mut bed = nat_bed(ports);
    let mut used = HashSet::new();
    for client_port in 50000..50004 {
        let before = bed.counters();
        let (verdict, out) = bed.run(&tcp_request(client_port));
        assert_eq!(verdict, Verdict::Tx as u32);
        assert_checksums_valid(&out);
        let nat_port = u16::from_be_bytes([out[34], out[35]]);
        assert!((ports.0..=ports.1).contains(&nat_port));
        assert!(used.insert(nat_port), "port {nat_port} given twice");
        assert_eq!(
            bed.counters_moved(&before),
            [(Counter::Tx, 1), (Counter::FlowNew, 1)].into()
        );
    }
    let fifth = tcp_request(50004);
    bed.expect(
        "no port left",
        &fifth,
        Verdict::Drop,
        &fifth,
        &[(Counter::DropNatPortsExhausted, 1)],
    );
    // Established flows are untouched by the refusal.
    let (verdict, _) = bed.run(&tcp_request(50000));
    assert_eq!(verdict, Verdict::Tx as u32);

    // The first client's flow closed long ago: its port is reclaimed.
    let first = FlowKey::new(CLIENT4.into(), 50000, NAT_VIP4.into(), 80, PROTO_TCP);
    let port = bed.dataplane.nat_flow(&first).unwrap().nat_port;
    end_long_ago(&mut bed, |client| *client == first);
    let before = bed.counters();
    let (verdict, out) = bed.run(&fifth);
    assert_eq!(verdict, Verdict::Tx as u32);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), u16::from_be(port));
    assert_eq!(
        bed.counters_moved(&before),
        [
            (Counter::Tx, 1),
            (Counter::FlowNew, 1),
            (Counter::NatPortReclaimed, 1)
        ]
        .into()
    );
    let replies = bed.dataplane.nat_replies().unwrap();
    let owners: HashSet<FlowKey> = replies.iter().map(|(_, client)| *client).collect();
    assert_eq!(replies.len(), 4);
    assert!(
        !owners.contains(&first),
        "the reclaimed reply entry is the new flow's"
    );
}

/// Ends the NAT flows of the clients `which` picks as if they had closed long ago: closing,
/// silent for longer than the linger, their ports claimed as long ago.
fn end_long_ago(bed: &mut Bed, which: impl Fn(&FlowKey) -> bool) {
    let long_ago = now_ns() - 10 * FlowTimeouts::DEFAULT.closing_linger_ns;
    for (client, mut flow) in bed.dataplane.flows().unwrap() {
        if which(&client) {
            flow.flags |= FLOW_CLOSING;
            flow.last_seen_ns = long_ago;
            bed.dataplane.set_nat_flow(&client, &flow).unwrap();
        }
    }
    for (reply, client) in bed.dataplane.nat_replies().unwrap() {
        if which(&client) {
            let claim = NatReply {
                client,
                claimed_ns: long_ago,
            };
            bed.dataplane.set_nat_reply(&reply, &claim).unwrap();
        }
    }
}

/// An idle UDP flow ends after its timeout: the sweep removes it, and its client starts
/// a new flow on the next datagram.
#[test]
fn idle_flows_are_swept() {
    let mut bed = nat_bed(PORTS);
    let key = FlowKey::new(CLIENT4.into(), 44000, NAT_VIP4.into(), 53, PROTO_UDP);
    let request = frame(
        (CLIENT_MAC, LB0_MAC),
        CLIENT4.into(),
        44000,
        NAT_VIP4.into(),
        53,
        PROTO_UDP,
        false,
    );
    bed.run(&request);
    let mut suspects = HashSet::new();
    assert_eq!(bed.dataplane.sweep_nat(now_ns(), &mut suspects).unwrap(), 0);
    let mut flow = bed.dataplane.nat_flow(&key).unwrap();
    flow.last_seen_ns = now_ns() - 2 * FlowTimeouts::DEFAULT.udp_idle_ns;
    bed.dataplane.set_nat_flow(&key, &flow).unwrap();
    assert_eq!(bed.dataplane.sweep_nat(now_ns(), &mut suspects).unwrap(), 1);
    assert!(bed.dataplane.nat_flow(&key).is_none());
    assert!(bed.dataplane.nat_replies().unwrap().is_empty());
    let before = bed.counters();
    bed.run(&request);
    assert_eq!(
        bed.counters_moved(&before),
        [(Counter::Tx, 1), (Counter::FlowNew, 1)].into()
    );
}

/// The backend's replies keep a flow alive as the client's packets do.
#[test]
fn replies_keep_a_flow_alive() {
    let mut bed = nat_bed(PORTS);
    let key = FlowKey::new(CLIENT4.into(), 44100, NAT_VIP4.into(), 53, PROTO_UDP);
    bed.run(&frame(
        (CLIENT_MAC, LB0_MAC),
        CLIENT4.into(),
        44100,
        NAT_VIP4.into(),
        53,
        PROTO_UDP,
        false,
    ));
    let mut flow = bed.dataplane.nat_flow(&key).unwrap();
    let nat_port = u16::from_be(flow.nat_port);
    // Nearly idle: the client has been silent for almost the whole timeout.
    let silent_since = now_ns() - FlowTimeouts::DEFAULT.udp_idle_ns + 1_000_000_000;
    flow.last_seen_ns = silent_since;
    bed.dataplane.set_nat_flow(&key, &flow).unwrap();
    let reply = frame(
        (mac_of("198.18.0.12"), LB0_MAC),
        BACKEND4_UDP.into(),
        53,
        SOURCE4.into(),
        nat_port,
        PROTO_UDP,
        true,
    );
    let (verdict, _) = bed.run(&reply);
    assert_eq!(verdict, Verdict::Tx as u32);
    assert!(bed.dataplane.nat_flow(&key).unwrap().last_seen_ns > silent_since);
    // Not swept when the client's silence alone would have ended it.
    let mut suspects = HashSet::new();
    let later = now_ns() + FlowTimeouts::DEFAULT.udp_idle_ns / 2;
    assert_eq!(bed.dataplane.sweep_nat(later, &mut suspects).unwrap(), 0);
    assert!(bed.dataplane.nat_flow(&key).is_some());
}

/// A backend's FIN marks its flow closing, as the client's does.
#[test]
fn a_backend_closing_marks_the_flow() {
    let mut bed = nat_bed(PORTS);
    let key = FlowKey::new(CLIENT4.into(), 45000, NAT_VIP4.into(), 80, PROTO_TCP);
    bed.run(&frame(
        (CLIENT_MAC, LB0_MAC),
        CLIENT4.into(),
        45000,
        NAT_VIP4.into(),
        80,
        PROTO_TCP,
        false,
    ));
    let nat_port = u16::from_be(bed.dataplane.nat_flow(&key).unwrap().nat_port);
    let mut fin = Vec::new();
    PacketBuilder::ethernet2(mac_of("198.18.0.11"), LB0_MAC)
        .ipv4(BACKEND4, SOURCE4, 64)
        .tcp(8080, nat_port, 5000, 64240)
        .fin()
        .ack(1)
        .write(&mut fin, &[])
        .unwrap();
    let (verdict, out) = bed.run(&fin);
    assert_eq!(verdict, Verdict::Tx as u32);
    assert_checksums_valid(&out);
    assert_eq!(
        bed.dataplane.nat_flow(&key).unwrap().flags & FLOW_CLOSING,
        FLOW_CLOSING
    );
}

/// The NAT port a flow gets when the first `taken` ports of its probe sequence are held.
fn probed_port(client: &FlowKey, ports: (u16, u16), taken: u16) -> u16 {
    let count = ports.1 - ports.0 + 1;
    ports.0 + (first_port(client, ports) - ports.0 + taken) % count
}

/// A segment of an established TCP flow from the client to the v4 NAT VIP's port 80.
fn tcp_segment(client_port: u16, fin: bool) -> Vec<u8> {
    tcp4_established(CLIENT4, client_port, NAT_VIP4, 80, fin)
}

/// The client's TCP frame as it leaves towards `backend`:8080 from `nat_port`.
fn translated_tcp(frame: &[u8], backend: [u8; 4], nat_port: u16) -> Vec<u8> {
    let mut headers = etherparse::PacketHeaders::from_ethernet_slice(frame).unwrap();
    let payload = headers.payload.slice().to_vec();
    let Some(etherparse::NetHeaders::Ipv4(ip, _)) = &mut headers.net else {
        unreachable!("a v4 frame")
    };
    ip.source = SOURCE4;
    ip.destination = backend;
    ip.header_checksum = ip.calc_header_checksum();
    let ip = ip.clone();
    let Some(etherparse::TransportHeader::Tcp(tcp)) = &mut headers.transport else {
        unreachable!("a TCP frame")
    };
    tcp.source_port = nat_port;
    tcp.destination_port = 8080;
    tcp.checksum = tcp.calc_checksum_ipv4(&ip, &payload).unwrap();
    let mut out = Vec::new();
    etherparse::Ethernet2Header {
        source: LB0_MAC,
        destination: mac_of(&std::net::Ipv4Addr::from(backend).to_string()),
        ether_type: etherparse::EtherType::IPV4,
    }
    .write(&mut out)
    .unwrap();
    ip.write(&mut out).unwrap();
    tcp.write(&mut out).unwrap();
    out.extend_from_slice(&payload);
    out
}

/// A client that reuses the 5-tuple of a NAT flow it closed opens a new connection: its
/// SYN starts a fresh NAT flow (counted `flow_reused`) on another NAT port — the old
/// port's connection may still linger on the backend — and the flow is open again.
#[test]
fn a_syn_on_a_closing_nat_flow_starts_a_new_one() {
    let mut bed = nat_bed(PORTS);
    let client_port = 47000;
    let key = FlowKey::new(CLIENT4.into(), client_port, NAT_VIP4.into(), 80, PROTO_TCP);
    let syn = tcp_request(client_port);
    let old_port = first_port(&key, PORTS);
    bed.expect(
        "first connection",
        &syn,
        Verdict::Tx,
        &translated_tcp(&syn, BACKEND4, old_port),
        &[(Counter::Tx, 1), (Counter::FlowNew, 1)],
    );
    let fin = tcp_segment(client_port, true);
    bed.expect(
        "its FIN",
        &fin,
        Verdict::Tx,
        &translated_tcp(&fin, BACKEND4, old_port),
        &[(Counter::Tx, 1)],
    );
    let new_port = probed_port(&key, PORTS, 1);
    bed.expect(
        "a new connection on the same tuple",
        &syn,
        Verdict::Tx,
        &translated_tcp(&syn, BACKEND4, new_port),
        &[
            (Counter::Tx, 1),
            (Counter::FlowNew, 1),
            (Counter::FlowReused, 1),
        ],
    );
    let flow = bed.dataplane.nat_flow(&key).unwrap();
    assert_eq!(
        (flow.flags & FLOW_CLOSING, u16::from_be(flow.nat_port)),
        (0, new_port)
    );
    let segment = tcp_segment(client_port, false);
    bed.expect(
        "the new connection's next segment",
        &segment,
        Verdict::Tx,
        &translated_tcp(&segment, BACKEND4, new_port),
        &[(Counter::Tx, 1)],
    );
}

/// A client that reuses the 5-tuple of a NAT flow whose backend drains opens a new
/// connection: its SYN starts a fresh NAT flow on a backend in rotation, counted
/// `flow_reused`; the old connection's segments before it stay on the drained backend.
#[test]
fn a_syn_on_a_nat_flow_of_a_draining_backend_starts_a_new_one() {
    let mut bed = nat_bed(PORTS);
    let two_backends = |state: &str| {
        nat_config(&format!("{}-{}", PORTS.0, PORTS.1)).replacen(
            "[[vip.backend]]\naddress = \"198.18.0.11\"\nport = 8080\n",
            &format!(
                "[[vip.backend]]\naddress = \"198.18.0.11\"\nport = 8080\nstate = \"{state}\"\n\
                 [[vip.backend]]\naddress = \"198.18.0.13\"\nport = 8080\n"
            ),
            1,
        )
    };
    bed.apply(&two_backends("ready"));
    let backend: IpAddr = BACKEND4.into();
    let client_port = (48000..49000)
        .find(|port| {
            let key = FlowKey::new(CLIENT4.into(), *port, NAT_VIP4.into(), 80, PROTO_TCP);
            bed.maglev_pick("nat-tcp4", &key) == backend
        })
        .unwrap();
    let key = FlowKey::new(CLIENT4.into(), client_port, NAT_VIP4.into(), 80, PROTO_TCP);
    let syn = tcp_request(client_port);
    let nat_port = first_port(&key, PORTS);
    let (verdict, out) = bed.run(&syn);
    assert_eq!(verdict, Verdict::Tx as u32);
    assert_eq!(out, translated_tcp(&syn, BACKEND4, nat_port));

    bed.apply(&two_backends("drain"));
    let segment = tcp_segment(client_port, false);
    bed.expect(
        "the old connection",
        &segment,
        Verdict::Tx,
        &translated_tcp(&segment, BACKEND4, nat_port),
        &[(Counter::Tx, 1)],
    );
    // Another backend: the reply key differs, so the first port is free for it.
    bed.expect(
        "a new connection on the same tuple",
        &syn,
        Verdict::Tx,
        &translated_tcp(&syn, [198, 18, 0, 13], nat_port),
        &[
            (Counter::Tx, 1),
            (Counter::FlowNew, 1),
            (Counter::FlowReused, 1),
        ],
    );
}

/// Only a SYN creates NAT state: a TCP segment without a NAT flow (a spoofed ACK, a
/// connection the load balancer never saw open) is dropped, counted, and leaves nothing
/// in the tables.
#[test]
fn only_a_syn_creates_a_nat_flow() {
    let mut bed = nat_bed(PORTS);
    for (name, frame) in [
        ("ACK", tcp_segment(47100, false)),
        ("FIN", tcp_segment(47101, true)),
        (
            "SYN-ACK",
            frame(
                (CLIENT_MAC, LB0_MAC),
                CLIENT4.into(),
                47102,
                NAT_VIP4.into(),
                80,
                PROTO_TCP,
                true,
            ),
        ),
    ] {
        bed.expect(
            name,
            &frame,
            Verdict::Drop,
            &frame,
            &[(Counter::DropNatNoFlow, 1)],
        );
    }
    assert!(bed.dataplane.flows().unwrap().is_empty(), "no NAT flow");
    assert!(
        bed.dataplane.nat_replies().unwrap().is_empty(),
        "no reply entry"
    );
}

/// A NAT flow opened by a SYN is embryonic until its backend answers: unanswered, it
/// ends `tcp_embryonic_timeout` after the client's last packet (a SYN flood's state
/// goes in seconds, not `tcp_idle_timeout`); the backend's first reply promotes it, and
/// it then lives as long as any open flow.
#[test]
fn an_unanswered_nat_flow_ends_after_the_embryonic_timeout() {
    let mut bed = nat_bed(PORTS);
    let timeouts = bed.dataplane.flow_timeouts().unwrap();
    assert_eq!(timeouts.tcp_embryonic_ns, 5_000_000_000, "the default");
    let key = |port| FlowKey::new(CLIENT4.into(), port, NAT_VIP4.into(), 80, PROTO_TCP);
    let (unanswered, answered) = (key(47200), key(47201));
    for client in [&unanswered, &answered] {
        let (verdict, _) = bed.run(&tcp_request(client.src_port.to_be()));
        assert_eq!(verdict, Verdict::Tx as u32);
    }
    let reply = frame(
        (mac_of("198.18.0.11"), LB0_MAC),
        BACKEND4.into(),
        8080,
        SOURCE4.into(),
        first_port(&answered, PORTS),
        PROTO_TCP,
        true,
    );
    let (verdict, _) = bed.run(&reply);
    assert_eq!(verdict, Verdict::Tx as u32);

    let now = now_ns();
    let later = now + timeouts.tcp_embryonic_ns + 2_000_000_000;
    let mut suspects = HashSet::new();
    assert_eq!(bed.dataplane.sweep_nat(now, &mut suspects).unwrap(), 0);
    assert_eq!(bed.dataplane.sweep_nat(later, &mut suspects).unwrap(), 1);
    assert!(bed.dataplane.nat_flow(&unanswered).is_none(), "swept");
    assert!(bed.dataplane.nat_flow(&answered).is_some(), "promoted");
    let replies = bed.dataplane.nat_replies().unwrap();
    assert_eq!(
        replies
            .iter()
            .map(|(_, client)| *client)
            .collect::<Vec<_>>(),
        vec![answered],
        "the unanswered flow's reply entry went with it"
    );
}

/// A full NAT table refuses new flows (counted) and keeps translating the flows it has.
#[test]
fn a_full_table_refuses_new_flows_and_keeps_the_others() {
    let mut bed = nat_bed(PORTS);
    let mut outputs = Vec::new();
    for client_port in 0..NAT_ENTRIES as u16 {
        let (verdict, out) = bed.run(&tcp_request(10000 + client_port));
        assert_eq!(verdict, Verdict::Tx as u32, "flow {client_port}");
        outputs.push(out);
    }
    let one_more = tcp_request(10000 + NAT_ENTRIES as u16);
    bed.expect(
        "table full",
        &one_more,
        Verdict::Drop,
        &one_more,
        &[(Counter::DropNatTableFull, 1)],
    );
    assert_eq!(
        bed.dataplane.nat_replies().unwrap().len(),
        NAT_ENTRIES as usize,
        "a refused flow leaves nothing behind"
    );
    for (i, expected) in outputs.iter().enumerate() {
        bed.expect(
            &format!("established flow {i}"),
            &tcp_request(10000 + i as u16),
            Verdict::Tx,
            expected,
            &[(Counter::Tx, 1)],
        );
    }
}

/// ICMP errors from the backend's side about a NAT flow reach the client translated:
/// outer header VIP → client, quoted packet as the client sent it, checksums (ICMPv6's
/// pseudo-header included) as etherparse computes them.
#[test]
fn icmp_errors_about_a_flow_are_translated_for_the_client() {
    let mut bed = nat_bed(PORTS);
    let cases: [(&str, IpAddr, IpAddr, u8, IpAddr, IpAddr, usize); 3] = [
        (
            "v4 port unreachable, whole packet quoted",
            CLIENT4.into(),
            NAT_VIP4.into(),
            PROTO_UDP,
            SOURCE4.into(),
            BACKEND4_UDP.into(),
            usize::MAX,
        ),
        (
            "v4 fragmentation needed, 8 bytes quoted",
            CLIENT4.into(),
            NAT_VIP4.into(),
            PROTO_TCP,
            SOURCE4.into(),
            BACKEND4.into(),
            28,
        ),
        (
            "v6 packet too big",
            CLIENT6.into(),
            NAT_VIP6.into(),
            PROTO_TCP,
            SOURCE6.into(),
            BACKEND6.into(),
            usize::MAX,
        ),
    ];
    for (name, client, vip, protocol, source, backend, quoted_len) in cases {
        let vip_port = if protocol == PROTO_UDP { 53 } else { 80 };
        let request = frame(
            (CLIENT_MAC, LB0_MAC),
            client,
            46000,
            vip,
            vip_port,
            protocol,
            false,
        );
        let (_, sent) = bed.run(&request);
        let quote = |frame: &[u8]| {
            let ip = &frame[14..];
            ip[..quoted_len.min(ip.len())].to_vec()
        };
        let backend_mac = mac_of(&backend.to_string());
        let mut error = Vec::new();
        let mut expected = Vec::new();
        match (source, client) {
            (IpAddr::V4(source), IpAddr::V4(client)) => {
                let kind = if protocol == PROTO_UDP {
                    DestUnreachableHeader::Port
                } else {
                    DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 }
                };
                let backend = match backend {
                    IpAddr::V4(b) => b.octets(),
                    _ => unreachable!(),
                };
                PacketBuilder::ethernet2(backend_mac, LB0_MAC)
                    .ipv4(backend, source.octets(), 64)
                    .icmpv4(Icmpv4Type::DestinationUnreachable(kind.clone()))
                    .write(&mut error, &quote(&sent))
                    .unwrap();
                let vip = match vip {
                    IpAddr::V4(v) => v.octets(),
                    _ => unreachable!(),
                };
                PacketBuilder::ethernet2(LB0_MAC, CLIENT_MAC)
                    .ipv4(vip, client.octets(), 64)
                    .icmpv4(Icmpv4Type::DestinationUnreachable(kind))
                    .write(&mut expected, &quote(&request))
                    .unwrap();
            }
            (IpAddr::V6(source), IpAddr::V6(client)) => {
                let backend = match backend {
                    IpAddr::V6(b) => b.octets(),
                    _ => unreachable!(),
                };
                PacketBuilder::ethernet2(backend_mac, LB0_MAC)
                    .ipv6(backend, source.octets(), 64)
                    .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
                    .write(&mut error, &quote(&sent))
                    .unwrap();
                let vip = match vip {
                    IpAddr::V6(v) => v.octets(),
                    _ => unreachable!(),
                };
                PacketBuilder::ethernet2(LB0_MAC, CLIENT_MAC)
                    .ipv6(vip, client.octets(), 64)
                    .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
                    .write(&mut expected, &quote(&request))
                    .unwrap();
            }
            _ => unreachable!(),
        }
        bed.expect(
            name,
            &error,
            Verdict::Tx,
            &expected,
            &[(Counter::Tx, 1), (Counter::NatIcmpTranslated, 1)],
        );
    }
}

/// The reply key of a flow to the v4 TCP NAT VIP's backend from `nat_port`.
fn tcp_reply_key(nat_port: u16) -> FlowKey {
    FlowKey::new(BACKEND4.into(), 8080, SOURCE4.into(), nat_port, PROTO_TCP)
}

/// The interleaving of two CPUs creating flows at once: one CPU has claimed a port (its
/// reply entry is written) but not yet written its flow. Another client whose probe
/// starts at that port must not take it over: it probes on.
#[test]
fn a_port_being_claimed_by_another_cpu_is_not_taken_over() {
    let mut bed = nat_bed(PORTS);
    let owner = FlowKey::new(CLIENT4.into(), 47300, NAT_VIP4.into(), 80, PROTO_TCP);
    let client = FlowKey::new(CLIENT4.into(), 47301, NAT_VIP4.into(), 80, PROTO_TCP);
    let port = first_port(&client, PORTS);
    let claim = |claimed_ns| NatReply {
        client: owner,
        claimed_ns,
    };
    bed.dataplane
        .set_nat_reply(&tcp_reply_key(port), &claim(now_ns()))
        .unwrap();
    let syn = tcp_request(47301);
    bed.expect(
        "the other client",
        &syn,
        Verdict::Tx,
        &translated_tcp(&syn, BACKEND4, probed_port(&client, PORTS, 1)),
        &[(Counter::Tx, 1), (Counter::FlowNew, 1)],
    );
    let owners: Vec<(u16, FlowKey)> = bed
        .dataplane
        .nat_replies()
        .unwrap()
        .into_iter()
        .map(|(reply, owner)| (u16::from_be(reply.dst_port), owner))
        .collect();
    assert!(
        owners.contains(&(port, owner)),
        "the claim stays its owner's: {owners:?}"
    );

    // An orphan: claimed long ago, no flow. A new client takes it over.
    let late = FlowKey::new(CLIENT4.into(), 47302, NAT_VIP4.into(), 80, PROTO_TCP);
    let port = first_port(&late, PORTS);
    bed.dataplane
        .set_nat_reply(
            &tcp_reply_key(port),
            &claim(now_ns() - 10 * NAT_CLAIM_GRACE_NS),
        )
        .unwrap();
    let syn = tcp_request(47302);
    bed.expect(
        "a client on an orphan's port",
        &syn,
        Verdict::Tx,
        &translated_tcp(&syn, BACKEND4, port),
        &[
            (Counter::Tx, 1),
            (Counter::FlowNew, 1),
            (Counter::NatPortReclaimed, 1),
        ],
    );
}

/// Two CPUs create NAT flows at the same instant, many times over, for clients whose
/// port probes start at the same port: first on free ports (one claims, the other must
/// probe on), then on ports held by ended flows (both reclaim at once; one must win).
/// However the two interleave, no two flows share a port, and every flow's reply entry
/// is its own.
#[test]
fn two_cpus_creating_flows_at_once_never_share_a_port() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(
        cpus >= 2,
        "this test needs two CPUs, the machine has {cpus}"
    );
    const PAIRS: usize = 4000;
    let ports = (1024, 65535);
    let mut bed = Bed::with_nat_entries(5 * PAIRS as u32);
    bed.apply(&nat_config(&format!("{}-{}", ports.0, ports.1)));
    // Four clients per port, whose first probe is that port, a different one per group:
    // two for each wave.
    let mut by_port: std::collections::HashMap<u16, Vec<FlowKey>> =
        std::collections::HashMap::new();
    let mut groups = Vec::new();
    'search: for client_port in 1024u16..=u16::MAX {
        for address in [CLIENT4, [198, 18, 0, 101]] {
            let client = FlowKey::new(address.into(), client_port, NAT_VIP4.into(), 80, PROTO_TCP);
            let group = by_port.entry(first_port(&client, ports)).or_default();
            group.push(client);
            if group.len() == 4 {
                groups.push(std::mem::take(group));
                if groups.len() == PAIRS {
                    break 'search;
                }
            }
        }
    }
    assert_eq!(groups.len(), PAIRS);
    let first_wave: Vec<[FlowKey; 2]> = groups.iter().map(|g| [g[0], g[1]]).collect();
    let second_wave: Vec<[FlowKey; 2]> = groups.iter().map(|g| [g[2], g[3]]).collect();
    let request = |client: &FlowKey| {
        frame(
            (CLIENT_MAC, LB0_MAC),
            IpAddr::from(std::net::Ipv4Addr::from(client.src[0].to_ne_bytes())),
            u16::from_be(client.src_port),
            NAT_VIP4.into(),
            80,
            PROTO_TCP,
            false,
        )
    };
    let run_wave = |bed: &mut Bed, wave: &[[FlowKey; 2]]| {
        let frames: Vec<[Vec<u8>; 2]> =
            wave.iter().map(|[a, b]| [request(a), request(b)]).collect();
        let lb0 = bed.lb0;
        let Bed { ns, dataplane, .. } = bed;
        let program: &aya::programs::Xdp = dataplane.program().unwrap();
        let arrived = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for side in 0..2 {
                let (frames, arrived, ns) = (&frames, &arrived, &*ns);
                scope.spawn(move || {
                    // The thread ends with the scope: no need to give the CPUs back.
                    std::mem::forget(
                        weir_testbed::cpu::pin_current_thread(side).expect("pin to a CPU"),
                    );
                    ns.enter(|| {
                        let ctx: Vec<u8> = [0, frames[0][side].len() as u32, 0, lb0, 0, 0]
                            .iter()
                            .flat_map(|word: &u32| word.to_ne_bytes())
                            .collect();
                        let mut out = vec![0u8; 1024];
                        for (round, pair) in frames.iter().enumerate() {
                            // Both sides leave this spin within a few ns of each other.
                            arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            while arrived.load(std::sync::atomic::Ordering::SeqCst)
                                < 2 * (round + 1)
                            {
                                std::hint::spin_loop();
                            }
                            aya::programs::TestRun::test_run(
                                program,
                                aya::programs::TestRunOptions {
                                    data_in: Some(&pair[side]),
                                    data_out: Some(&mut out),
                                    ctx_in: Some(&ctx),
                                    ..Default::default()
                                },
                            )
                            .unwrap();
                        }
                    })
                    .unwrap();
                });
            }
        });
    };
    let check = |bed: &Bed, wave: &str| {
        let replies: std::collections::HashMap<u16, FlowKey> = bed
            .dataplane
            .nat_replies()
            .unwrap()
            .into_iter()
            .map(|(reply, client)| (reply.dst_port, client))
            .collect();
        let mut shared = 0;
        let mut ports_seen = HashSet::new();
        let flows = bed.dataplane.flows().unwrap();
        let live: Vec<_> = flows
            .iter()
            .filter(|(_, flow)| flow.flags & FLOW_CLOSING == 0)
            .collect();
        for (client, flow) in &live {
            if !ports_seen.insert(flow.nat_port) || replies.get(&flow.nat_port) != Some(client) {
                shared += 1;
            }
        }
        assert_eq!(
            shared,
            0,
            "{wave}: flows whose port is not their own, of {}",
            live.len()
        );
        live.len()
    };

    let before = bed.counters();
    run_wave(&mut bed, &first_wave);
    let opened = check(&bed, "free ports");
    assert_eq!(opened, 2 * PAIRS, "every client got a port");
    // The first wave's flows end; the second wave's pairs start on their ports.
    end_long_ago(&mut bed, |_| true);
    run_wave(&mut bed, &second_wave);
    assert_eq!(check(&bed, "ended flows' ports"), 2 * PAIRS);
    let moved = bed.counters_moved(&before);
    assert_eq!(moved[&Counter::FlowNew], 4 * PAIRS as u64, "{moved:?}");
}

/// A router on the client's path sends "fragmentation needed" / "packet too big" about
/// a reply (VIP → client, as the load balancer sent it): it reaches the flow's backend,
/// translated as if about the backend's own packet (outer header NAT source → backend,
/// quoted packet backend → NAT source and port), so that PMTU discovery works through
/// the NAT. Checksums as etherparse computes them.
#[test]
fn icmp_too_big_from_the_clients_side_reaches_the_backend() {
    let mut bed = nat_bed(PORTS);
    let router6: [u8; 16] = ROUTER6;
    let cases: [(&str, IpAddr, IpAddr, IpAddr, IpAddr, IpAddr); 2] = [
        (
            "v4 fragmentation needed",
            CLIENT4.into(),
            NAT_VIP4.into(),
            SOURCE4.into(),
            BACKEND4.into(),
            ROUTER4.into(),
        ),
        (
            "v6 packet too big",
            CLIENT6.into(),
            NAT_VIP6.into(),
            SOURCE6.into(),
            BACKEND6.into(),
            router6.into(),
        ),
    ];
    for (name, client, vip, source, backend, router) in cases {
        let key = FlowKey::new(client, 46100, vip, 80, PROTO_TCP);
        let nat_port = first_port(&key, PORTS);
        let (verdict, _) = bed.run(&frame(
            (CLIENT_MAC, LB0_MAC),
            client,
            46100,
            vip,
            80,
            PROTO_TCP,
            false,
        ));
        assert_eq!(verdict, Verdict::Tx as u32, "{name}: the flow");
        // The reply as the client got it, and as the backend sent it.
        let to_client = frame(
            (LB0_MAC, CLIENT_MAC),
            vip,
            80,
            client,
            46100,
            PROTO_TCP,
            true,
        );
        let from_backend = frame(
            (mac_of(&backend.to_string()), LB0_MAC),
            backend,
            8080,
            source,
            nat_port,
            PROTO_TCP,
            true,
        );
        let quote = |frame: &[u8]| frame[14..].to_vec();
        let mut error = Vec::new();
        let mut expected = Vec::new();
        let backend_mac = mac_of(&backend.to_string());
        match (router, vip, source, backend) {
            (IpAddr::V4(router), IpAddr::V4(vip), IpAddr::V4(source), IpAddr::V4(backend)) => {
                let kind = Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
                );
                PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
                    .ipv4(router.octets(), vip.octets(), 64)
                    .icmpv4(kind.clone())
                    .write(&mut error, &quote(&to_client)[..28])
                    .unwrap();
                PacketBuilder::ethernet2(LB0_MAC, backend_mac)
                    .ipv4(source.octets(), backend.octets(), 64)
                    .icmpv4(kind)
                    .write(&mut expected, &quote(&from_backend)[..28])
                    .unwrap();
            }
            (IpAddr::V6(router), IpAddr::V6(vip), IpAddr::V6(source), IpAddr::V6(backend)) => {
                PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
                    .ipv6(router.octets(), vip.octets(), 64)
                    .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
                    .write(&mut error, &quote(&to_client))
                    .unwrap();
                PacketBuilder::ethernet2(LB0_MAC, backend_mac)
                    .ipv6(source.octets(), backend.octets(), 64)
                    .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
                    .write(&mut expected, &quote(&from_backend))
                    .unwrap();
            }
            _ => unreachable!(),
        }
        bed.expect(
            name,
            &error,
            Verdict::Tx,
            &expected,
            &[(Counter::Tx, 1), (Counter::NatIcmpTranslated, 1)],
        );
    }
}
