//! Dataplane tests: the real XDP program, run with BPF_PROG_TEST_RUN on crafted frames,
//! in Katran's fixture style — input frame, expected verdict, expected output frame
//! (every byte), expected change of every global counter. The bed (namespace, routes,
//! neighbours, configuration) is in `common/mod.rs`.

mod common;

use std::collections::BTreeSet;

use common::*;
use etherparse::{
    Icmpv4Type, Icmpv6Type, IpHeaders, IpNumber, Ipv4Header, PacketBuilder, VlanId,
    icmpv4::DestUnreachableHeader,
};
use lb_common::{Counter, FlowKey, PROTO_TCP, PROTO_UDP, Verdict};
use weir::config::{Config, HashMode};

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
        assert_eq!(
            (
                vip_traffic.packets,
                vip_traffic.bytes,
                vip_traffic.new_flows
            ),
            (1, frame.len() as u64, 1)
        );
        let backend_id = bed.backend_id(vip, &backend);
        let backend_traffic = bed.dataplane.backend_counters(backend_id).unwrap();
        assert_eq!(backend_traffic, vip_traffic, "{vip}: backend counters");

        // The same packet again is the same flow: same backend, no new flow.
        bed.expect(
            &format!("{vip} again"),
            &frame,
            Verdict::Tx,
            &expected,
            &forwarded(0),
        );
    }
}

/// A frame sent to another MAC address than the attached interfaces' (a bridge flooding
/// unknown unicast, a promiscuous NIC) is another host's copy: the VIP packet in it goes
/// to the kernel untouched (which drops it) and is counted, rather than forwarded a
/// second time. Broadcast and multicast frames are no one's in particular. The host's
/// own traffic is not looked at.
#[test]
fn vip_traffic_sent_to_another_mac_passes_untouched() {
    let mut bed = Bed::new();
    let destinations = [
        ("another host", [0x02, 0, 0, 0, 0x0e, 0x01]),
        ("broadcast", [0xff; 6]),
        ("IPv4 multicast", [0x01, 0x00, 0x5e, 0, 0, 0x01]),
        ("IPv6 multicast", [0x33, 0x33, 0, 0, 0, 0x01]),
        // One byte off lb0's.
        ("almost lb0", [0x02, 0, 0, 0, 0x01, 0x01]),
        ("almost lb0 too", [0x02, 0, 0, 0, 0, 0x11]),
    ];
    let frames = [
        ("tcp4", tcp4(CLIENT4, 40000, VIP4, 80)),
        ("udp6", udp6(CLIENT6, 40000, VIP6, 53)),
    ];
    for (vip, frame) in &frames {
        for (to, mac) in destinations {
            let mut frame = frame.clone();
            frame[..6].copy_from_slice(&mac);
            bed.expect(
                &format!("{vip} to {to}"),
                &frame,
                Verdict::Pass,
                &frame,
                &[(Counter::PassNotOurMac, 1)],
            );
        }
    }
    // lb2 is not attached: its MAC is not the load balancer's.
    let mut frame = frames[0].1.clone();
    frame[..6].copy_from_slice(&LB2_MAC);
    bed.expect(
        "tcp4 to lb2's MAC",
        &frame,
        Verdict::Pass,
        &frame,
        &[(Counter::PassNotOurMac, 1)],
    );
    assert!(
        bed.dataplane.flows().unwrap().is_empty(),
        "no flow was recorded"
    );

    // Any attached interface's MAC is the host's (a bond's slaves see the bond's MAC).
    frame[..6].copy_from_slice(&LB1_MAC);
    let backend = bed.maglev_pick("tcp4", &key(&frame)).to_string();
    let expected = rewritten(&frame, mac_of(&backend), LB0_MAC);
    bed.expect(
        "tcp4 to lb1's MAC on lb0",
        &frame,
        Verdict::Tx,
        &expected,
        &forwarded(1),
    );

    let mut not_for_a_vip = tcp4(CLIENT4, 40000, NOT_A_VIP4, 22);
    not_for_a_vip[..6].copy_from_slice(&[0x02, 0, 0, 0, 0x0e, 0x01]);
    bed.expect(
        "not for a vip, another host",
        &not_for_a_vip,
        Verdict::Pass,
        &not_for_a_vip,
        &[(Counter::PassNotVip, 1)],
    );
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
    assert_eq!(
        &frame[12..14],
        &[0x81, 0x00],
        "the frame carries an 802.1Q tag"
    );
    let backend = bed.maglev_pick(
        "tcp4",
        &FlowKey::new(CLIENT4.into(), 40001, VIP4.into(), 80, PROTO_TCP),
    );
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
        bed.expect(
            "ipv4 options",
            &frame,
            Verdict::Tx,
            &expected,
            &forwarded(new_flows),
        );
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
        (
            "not a vip address",
            tcp4(CLIENT4, 40000, NOT_A_VIP4, 22),
            Counter::PassNotVip,
        ),
        (
            "vip address, other port",
            tcp4(CLIENT4, 40000, VIP4, 8080),
            Counter::PassNotVip,
        ),
        (
            "vip address and port, other protocol",
            udp4(CLIENT4, 40000, VIP4, 80),
            Counter::PassNotVip,
        ),
        (
            "any-port vip, other protocol",
            udp4(CLIENT4, 40000, VIP4_ANY_PORT, 80),
            Counter::PassNotVip,
        ),
        (
            "ipv6 not a vip",
            tcp6(CLIENT6, 40000, ROUTER6, 22),
            Counter::PassNotVip,
        ),
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
    bed.expect(
        "icmp echo to a vip",
        &echo,
        Verdict::Pass,
        &echo,
        &pass(Counter::PassNotVip),
    );
}

#[test]
fn port_zero_vip_matches_every_port() {
    let mut bed = Bed::new();
    for port in [1, 80, 443, 65535] {
        let frame = tcp4(CLIENT4, 40000 + port % 1000, VIP4_ANY_PORT, port);
        let expected = rewritten(&frame, mac_of("198.18.0.12"), LB0_MAC);
        bed.expect(
            &format!("port {port}"),
            &frame,
            Verdict::Tx,
            &expected,
            &forwarded(1),
        );
    }
}

/// `tcp4` with a payload that makes the IP packet `ip_len` bytes long.
fn tcp4_sized(ip_len: usize) -> Vec<u8> {
    let payload = vec![0x5a; ip_len - 20 - 20];
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv4(CLIENT4, VIP4_REDIRECT, 64)
        .tcp(40000, 80, 1000, 64240)
        .syn()
        .write(&mut frame, &payload)
        .unwrap();
    frame
}

#[test]
fn a_redirect_larger_than_the_egress_mtu_is_dropped_and_counted() {
    let mut bed = Bed::new();
    bed.ns.ip(&["link", "set", "lb1", "mtu", "1280"]).unwrap();
    let small = tcp4_sized(1280);
    let expected = rewritten(&small, mac_of("198.18.2.21"), LB1_MAC);
    bed.expect(
        "fits lb1's MTU",
        &small,
        Verdict::Redirect,
        &expected,
        &[(Counter::Redirect, 1), (Counter::FlowNew, 1)],
    );
    let big = tcp4_sized(1400);
    let before = bed.counters();
    let (action, _) = bed.run(&big);
    assert_eq!(
        action,
        Verdict::Drop as u32,
        "a 1400-byte packet onto a 1280-byte MTU"
    );
    let moved = bed.counters_moved(&before);
    assert_eq!(moved.get(&Counter::DropTooBig), Some(&1), "{moved:?}");
    assert_eq!(moved.get(&Counter::Redirect), None, "{moved:?}");
}

#[test]
fn next_hop_failures_are_dropped_and_counted_by_reason() {
    let mut bed = Bed::new();
    let frame = tcp4(CLIENT4, 40000, VIP4_REDIRECT, 80);
    let expected = rewritten(&frame, mac_of("198.18.2.21"), LB1_MAC);
    bed.expect(
        "redirect",
        &frame,
        Verdict::Redirect,
        &expected,
        &[(Counter::Redirect, 1), (Counter::FlowNew, 1)],
    );

    let cases = [
        ("no neighbour", VIP4_NO_NEIGH, Counter::DropFibNoNeigh),
        ("no route", VIP4_NO_ROUTE, Counter::DropFibFailed),
        (
            "egress not attached",
            VIP4_UNATTACHED,
            Counter::DropEgressNotAttached,
        ),
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
    bed.expect(
        "no backend",
        &frame,
        Verdict::Drop,
        &frame,
        &[(Counter::DropNoBackend, 1)],
    );

    bed.ns.sysctl("net.ipv4.conf.lb0.forwarding", "0").unwrap();
    let frame = tcp4(CLIENT4, 40100, VIP4, 80);
    let (action, _) = bed.run(&frame);
    assert_eq!(action, Verdict::Drop as u32);
    assert_eq!(bed.counters()[&Counter::DropFibForwardingDisabled], 1);
}

#[test]
fn source_ip_hash_keeps_a_client_on_one_backend() {
    let mut bed = Bed::new();
    let mut seen_source = BTreeSet::new();
    let mut seen_tuple = BTreeSet::new();
    for port in 0..64 {
        let (_, out) = bed.run(&tcp4(CLIENT4, 30000 + port, VIP4_SOURCE_HASH, 80));
        seen_source.insert(out[..6].to_vec());
        let (_, out) = bed.run(&tcp4(CLIENT4, 30000 + port, VIP4, 80));
        seen_tuple.insert(out[..6].to_vec());
    }
    assert_eq!(
        seen_source.len(),
        1,
        "source-ip hashing: one backend for one client"
    );
    assert_eq!(
        seen_tuple.len(),
        3,
        "5-tuple hashing: the same client's flows spread"
    );
    assert!(matches!(
        Config::parse(BASE_CONFIG, "t")
            .unwrap()
            .vips
            .iter()
            .find(|v| v.name == "source-hash")
            .unwrap()
            .hash,
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
    let flows: Vec<Vec<u8>> = (0..300)
        .map(|i| tcp4(CLIENT4, 20000 + i, VIP4, 80))
        .collect();
    let before = backends_of(&mut bed, &flows);

    let added = BASE_CONFIG.replacen(
        "[[vip.backend]]\naddress = \"198.18.0.13\"\n",
        "[[vip.backend]]\naddress = \"198.18.0.13\"\nweight = 300\n[[vip.backend]]\naddress = \"198.18.0.14\"\n",
        1,
    );
    bed.apply(&added);
    assert_eq!(
        backends_of(&mut bed, &flows),
        before,
        "established flows keep their backend"
    );

    // New flows do reach the new backend.
    let fresh: Vec<Vec<u8>> = (0..300)
        .map(|i| tcp4(CLIENT4, 50000 + i, VIP4, 80))
        .collect();
    let fresh_backends = backends_of(&mut bed, &fresh);
    assert!(fresh_backends.contains(&mac_of("198.18.0.14")));
    for (frame, mac) in fresh.iter().zip(&fresh_backends) {
        assert_eq!(
            mac_of(&bed.maglev_pick("tcp4", &key(frame)).to_string()),
            *mac
        );
    }
}

#[test]
fn only_the_flows_of_a_removed_backend_move() {
    let mut bed = Bed::new();
    let flows: Vec<Vec<u8>> = (0..300)
        .map(|i| tcp4(CLIENT4, 20000 + i, VIP4, 80))
        .collect();
    let before = backends_of(&mut bed, &flows);
    let removed = mac_of("198.18.0.13");
    let on_removed = before.iter().filter(|mac| **mac == removed).count() as u64;
    assert!(on_removed > 50, "the removed backend had flows");

    bed.apply(&BASE_CONFIG.replacen("[[vip.backend]]\naddress = \"198.18.0.13\"\n", "", 1));
    let counters_before = bed.counters();
    let after = backends_of(&mut bed, &flows);
    for ((frame, old), new) in flows.iter().zip(&before).zip(&after) {
        if *old == removed {
            assert_eq!(
                mac_of(&bed.maglev_pick("tcp4", &key(frame)).to_string()),
                *new,
                "moved to its slot's owner"
            );
        } else {
            assert_eq!(old, new, "a flow of a remaining backend stays");
        }
    }
    let counters_after = bed.counters();
    assert_eq!(
        counters_after[&Counter::FlowRescheduled] - counters_before[&Counter::FlowRescheduled],
        on_removed
    );
    assert_eq!(
        counters_after[&Counter::FlowNew] - counters_before[&Counter::FlowNew],
        on_removed
    );
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
    PacketBuilder::ipv4(VIP4, CLIENT4, 64)
        .tcp(80, 41000, 7, 1024)
        .write(&mut reply, &[0; 64])
        .unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv4(ROUTER4, VIP4, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut frame, &reply[..28])
        .unwrap();
    let expected = rewritten(&frame, backend_mac, LB0_MAC);
    bed.expect(
        "icmp frag needed",
        &frame,
        Verdict::Tx,
        &expected,
        &[(Counter::Tx, 1), (Counter::IcmpTooBigForwarded, 1)],
    );

    // IPv6, for a flow the connection table has not seen: the hash alone decides, and
    // it agrees with where the flow's own packets would go.
    let mut reply = Vec::new();
    PacketBuilder::ipv6(VIP6, CLIENT6, 64)
        .udp(53, 41001)
        .write(&mut reply, &[0; 64])
        .unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv6(ROUTER6, VIP6, 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut frame, &reply[..48])
        .unwrap();
    let flow_key = FlowKey::new(CLIENT6.into(), 41001, VIP6.into(), 53, PROTO_UDP);
    let backend = bed.maglev_pick("udp6", &flow_key).to_string();
    let expected = rewritten(&frame, mac_of(&backend), LB0_MAC);
    bed.expect(
        "icmpv6 packet too big",
        &frame,
        Verdict::Tx,
        &expected,
        &[(Counter::Tx, 1), (Counter::IcmpTooBigForwarded, 1)],
    );
    assert!(
        bed.dataplane
            .flows()
            .unwrap()
            .iter()
            .all(|(k, _)| *k != flow_key),
        "an ICMP error creates no flow"
    );
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
    bed.expect(
        "first fragment",
        &first,
        Verdict::Drop,
        &first,
        &[(Counter::DropFragment, 1)],
    );
    let later = fragment4(VIP4, false, 100);
    bed.expect(
        "later fragment",
        &later,
        Verdict::Drop,
        &later,
        &[(Counter::DropFragment, 1)],
    );
    let host = fragment4(NOT_A_VIP4, true, 0);
    bed.expect(
        "fragment for the host",
        &host,
        Verdict::Pass,
        &host,
        &[(Counter::PassNotVip, 1)],
    );

    // IPv6: a fragment header between the fixed header and UDP.
    let mut frame = udp6(CLIENT6, 40000, VIP6, 53);
    let payload_len = u16::from_be_bytes([frame[18], frame[19]]) + 8;
    frame[18..20].copy_from_slice(&payload_len.to_be_bytes());
    frame[20] = 44;
    let fragment_header = [17u8, 0, 0x00, 0x01, 0, 0, 0x12, 0x34];
    frame.splice(54..54, fragment_header);
    bed.expect(
        "ipv6 fragment",
        &frame,
        Verdict::Drop,
        &frame,
        &[(Counter::DropFragment, 1)],
    );
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
            bed.expect(
                &format!("cut at {len}"),
                cut,
                Verdict::Drop,
                cut,
                &[(Counter::DropMalformed, 1)],
            );
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
        (
            "ipv4 version 6 in an IPv4 ethertype",
            patch(&good4, 14, &[0x65]),
        ),
        (
            "ipv4 total length beyond the frame",
            patch(&good4, 16, &[0x05, 0xdc]),
        ),
        (
            "ipv4 total length shorter than its header",
            patch(&good4, 16, &[0x00, 0x10]),
        ),
        (
            "ipv4 options beyond the frame",
            patch(&good4[..40], 14, &[0x4f]),
        ),
        (
            "ipv6 payload length beyond the frame",
            patch(&good6, 18, &[0x05, 0xdc]),
        ),
        (
            "ipv6 version 4 in an IPv6 ethertype",
            patch(&good6, 14, &[0x46]),
        ),
    ];
    for (name, frame) in cases {
        bed.expect(
            name,
            &frame,
            Verdict::Drop,
            &frame,
            &[(Counter::DropMalformed, 1)],
        );
    }
}

/// Next hops are cached per CPU for `NEXT_HOP_TTL_NS`: a backend whose MAC address
/// changes (new NIC, failover) is reached at its new address once that time has passed.
#[test]
fn a_changed_neighbour_is_used_once_the_cached_next_hop_expires() {
    let mut bed = Bed::new();
    let frame = tcp4(CLIENT4, 40000, VIP4_ANY_PORT, 80);
    let (_, out) = bed.run(&frame);
    assert_eq!(&out[..6], &mac_of("198.18.0.12"));

    let moved = [0x02, 0, 0, 0, 0x01, 0x99];
    bed.ns
        .ip(&[
            "neigh",
            "replace",
            "198.18.0.12",
            "lladdr",
            &mac_string(moved),
            "dev",
            "lb0",
            "nud",
            "permanent",
        ])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        lb_common::NEXT_HOP_TTL_NS * 3 / 2,
    ));
    let expected = rewritten(&frame, moved, LB0_MAC);
    bed.expect(
        "after the TTL",
        &frame,
        Verdict::Tx,
        &expected,
        &forwarded(0),
    );
}

/// Drain: the backend gets no new flow, its established flows stay. Maint: no traffic at
/// all, its flows move to the backends that own their slots.
#[test]
fn drain_keeps_established_flows_and_maint_moves_them() {
    let mut bed = Bed::new();
    let flows: Vec<Vec<u8>> = (0..300)
        .map(|i| tcp4(CLIENT4, 20000 + i, VIP4, 80))
        .collect();
    let before = backends_of(&mut bed, &flows);
    let established: Vec<Vec<u8>> = (0..300)
        .map(|i| tcp4_established(CLIENT4, 20000 + i, VIP4, 80, false))
        .collect();
    let target = mac_of("198.18.0.13");
    assert!(before.contains(&target));

    bed.apply(&with_state("198.18.0.13", "drain"));
    assert_eq!(
        backends_of(&mut bed, &established),
        before,
        "drain keeps every established flow"
    );
    let fresh: Vec<Vec<u8>> = (0..300)
        .map(|i| tcp4(CLIENT4, 50000 + i, VIP4, 80))
        .collect();
    assert!(
        !backends_of(&mut bed, &fresh).contains(&target),
        "no new flow reaches a drained backend"
    );

    bed.apply(&with_state("198.18.0.13", "maint"));
    let after = backends_of(&mut bed, &established);
    for (old, new) in before.iter().zip(&after) {
        if *old == target {
            assert_ne!(new, &target, "a maint backend gets no traffic");
        } else {
            assert_eq!(old, new, "other flows stay");
        }
    }
}

/// The base configuration with one of the tcp4 VIP's backends in `state`.
fn with_state(backend: &str, state: &str) -> String {
    let entry = format!("[[vip.backend]]\naddress = \"{backend}\"\n");
    BASE_CONFIG.replacen(&entry, &format!("{entry}state = \"{state}\"\n"), 1)
}

/// Checks that `syn` opens a new flow on a reused 5-tuple, to the backend `mac`.
fn expect_reused(bed: &mut Bed, name: &str, syn: &[u8], mac: [u8; 6]) {
    let counters = [
        (Counter::Tx, 1),
        (Counter::FlowNew, 1),
        (Counter::FlowReused, 1),
    ];
    bed.expect(
        name,
        syn,
        Verdict::Tx,
        &rewritten(syn, mac, LB0_MAC),
        &counters,
    );
}

/// A client that reuses the 5-tuple of a flow whose backend drains opens a new
/// connection: its SYN (ACK clear) is placed by Maglev as a new flow, counted
/// `flow_reused`, and the flow's later packets follow it. The old connection's segments
/// that came before stay on the drained backend, and a SYN on a flow of a backend in
/// rotation (a retransmitted SYN) keeps its backend.
#[test]
fn a_syn_on_a_flow_of_a_draining_backend_is_a_new_flow() {
    let mut bed = Bed::new();
    let flows: Vec<Vec<u8>> = (0..300)
        .map(|i| tcp4(CLIENT4, 20000 + i, VIP4, 80))
        .collect();
    let before = backends_of(&mut bed, &flows);
    let drained = mac_of("198.18.0.13");
    bed.apply(&with_state("198.18.0.13", "drain"));
    let mut reused = 0;
    for (i, (syn, old)) in (0u16..).zip(flows.iter().zip(&before)) {
        let segment = tcp4_established(CLIENT4, 20000 + i, VIP4, 80, false);
        if *old != drained {
            bed.expect(
                &format!("retransmitted SYN {i}"),
                syn,
                Verdict::Tx,
                &rewritten(syn, *old, LB0_MAC),
                &forwarded(0),
            );
            continue;
        }
        bed.expect(
            &format!("old connection {i}"),
            &segment,
            Verdict::Tx,
            &rewritten(&segment, drained, LB0_MAC),
            &forwarded(0),
        );
        let pick = mac_of(&bed.maglev_pick("tcp4", &key(syn)).to_string());
        assert_ne!(pick, drained);
        expect_reused(&mut bed, &format!("new connection {i}"), syn, pick);
        bed.expect(
            &format!("new connection {i} established"),
            &segment,
            Verdict::Tx,
            &rewritten(&segment, pick, LB0_MAC),
            &forwarded(0),
        );
        reused += 1;
    }
    assert!(reused > 50, "the drained backend had flows");
}

/// A client that reuses the 5-tuple of a flow it closed (FIN or RST seen) opens a new
/// connection: its SYN is placed by Maglev as a new flow (here after a backend was
/// added, so that Maglev's pick differs for some), counted `flow_reused`, and the new
/// flow is not closing.
#[test]
fn a_syn_on_a_closing_flow_is_a_new_flow() {
    let mut bed = Bed::new();
    let flows: Vec<Vec<u8>> = (0..300)
        .map(|i| tcp4(CLIENT4, 20000 + i, VIP4, 80))
        .collect();
    let before = backends_of(&mut bed, &flows);
    for i in 0..300 {
        let fin = tcp4_established(CLIENT4, 20000 + i, VIP4, 80, true);
        let (verdict, _) = bed.run(&fin);
        assert_eq!(verdict, Verdict::Tx as u32);
    }
    bed.apply(&BASE_CONFIG.replacen(
        "[[vip.backend]]\naddress = \"198.18.0.13\"\n",
        "[[vip.backend]]\naddress = \"198.18.0.13\"\n[[vip.backend]]\naddress = \"198.18.0.14\"\nweight = 300\n",
        1,
    ));
    let mut moved = 0;
    for (i, (syn, old)) in flows.iter().zip(&before).enumerate() {
        let pick = mac_of(&bed.maglev_pick("tcp4", &key(syn)).to_string());
        moved += usize::from(pick != *old);
        expect_reused(&mut bed, &format!("new connection {i}"), syn, pick);
    }
    assert!(moved > 50, "Maglev's pick changed for many flows");
    assert!(
        bed.dataplane
            .flows()
            .unwrap()
            .iter()
            .all(|(_, flow)| flow.flags == 0),
        "the new flows are open"
    );
}

/// The program keeps each flow's last-seen time and marks it closing on the client's FIN
/// or RST, which is how the agent tells live connections from stale LRU entries.
#[test]
fn flows_record_when_they_were_seen_and_that_they_close() {
    let mut bed = Bed::new();
    let syn = tcp4(CLIENT4, 43000, VIP4, 80);
    bed.run(&syn);
    let flow_of = |bed: &Bed| {
        let key = key(&syn);
        bed.dataplane
            .flows()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == key)
            .unwrap()
            .1
    };
    let opened = flow_of(&bed);
    assert_eq!(opened.flags, 0);
    assert!(opened.last_seen_ns > 0);

    let mut fin = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv4(CLIENT4, VIP4, 64)
        .tcp(43000, 80, 2000, 64240)
        .fin()
        .ack(1)
        .write(&mut fin, &[])
        .unwrap();
    bed.run(&fin);
    let closing = flow_of(&bed);
    assert_eq!(closing.flags, lb_common::FLOW_CLOSING);
    assert_eq!(
        closing.backend_id, opened.backend_id,
        "a closing flow keeps its backend"
    );
}

/// The object's BTF is accepted by the kernel, so the programs carry it (bpftool and the
/// verifier's messages then know their functions and types). When the kernel rejects it
/// (as it did the unions Rust's enums with data become in the types of non-inlined
/// functions), aya loads the programs without BTF and only logs a warning.
#[test]
fn the_programs_are_loaded_with_their_btf() {
    let mut bed = Bed::new();
    let info = bed.dataplane.program().unwrap().info().unwrap();
    assert!(
        info.btf_id().is_some(),
        "the kernel rejected the object's BTF (see the agent's `object BTF couldn't be loaded` warning)"
    );
}
