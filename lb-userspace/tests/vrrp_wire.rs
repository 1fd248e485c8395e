//! VRRPv3 on the wire: what keepalived 2.2.7 sends is, byte for byte, what weir's codec
//! encodes for the same instance (header, centisecond interval, addresses and the
//! checksum over the IPv4 pseudo-header), and it arrives with TTL 255.

use std::net::{IpAddr, Ipv4Addr};

use weir::failover::vrrp::packet::{Advert, GROUP_V4, HOP_LIMIT, PROTO_VRRP};
use weir_testbed::{
    Netns,
    keepalived::{Instance, Keepalived},
    require_root, veth_pair,
};

const SENDER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const LISTENER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const VIPS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(198, 19, 0, 10)),
    IpAddr::V4(Ipv4Addr::new(198, 19, 0, 11)),
];

/// The IP packet bytes of `tcpdump -x` output.
fn hex_dump(text: &str) -> Vec<u8> {
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(offset, _)| offset.starts_with("0x"))
        .flat_map(|(_, words)| {
            words
                .split_whitespace()
                .flat_map(|word| {
                    (0..word.len())
                        .step_by(2)
                        .filter_map(|i| u8::from_str_radix(&word[i..i + 2], 16).ok())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn keepalived_adverts_are_what_the_codec_encodes() {
    require_root().expect("this test needs root");
    let keepalived_ns = Netns::new("vrrpk").expect("namespace");
    let listener_ns = Netns::new("vrrpl").expect("namespace");
    let pair = veth_pair(&keepalived_ns, &listener_ns).expect("veth pair");
    keepalived_ns
        .add_addr(&pair.a, IpAddr::V4(SENDER), 24)
        .expect("address");
    listener_ns
        .add_addr(&pair.b, IpAddr::V4(LISTENER), 24)
        .expect("address");
    keepalived_ns.link_up(&pair.a).expect("link up");
    listener_ns.link_up(&pair.b).expect("link up");

    let keepalived = Keepalived::start(
        &keepalived_ns,
        &Instance {
            interface: &pair.a,
            vrid: 51,
            priority: 200,
            advert_centis: 10,
            addresses: &VIPS,
        },
    )
    .expect("keepalived");
    // Its first advert comes after its master-down interval (about 0.3 s).
    let dump = listener_ns
        .run(&[
            "timeout",
            "10",
            "tcpdump",
            "-i",
            &pair.b,
            "-c",
            "1",
            "-nn",
            "-x",
            "ip proto 112",
        ])
        .unwrap_or_else(|err| panic!("no advert from keepalived: {err}\n{}", keepalived.log()));
    let packet = hex_dump(&dump);
    assert!(packet.len() > 20, "{dump}");
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    assert_eq!(packet[8], HOP_LIMIT, "TTL");
    assert_eq!(packet[9], PROTO_VRRP);
    assert_eq!(&packet[16..20], &GROUP_V4.octets());

    let expected = Advert {
        vrid: 51,
        priority: 200,
        max_advert_centis: 10,
        addresses: VIPS.to_vec(),
    }
    .encode(IpAddr::V4(SENDER), IpAddr::V4(GROUP_V4));
    assert_eq!(&packet[header_len..], expected.as_slice(), "{dump}");
    assert_eq!(
        Advert::decode(
            &packet[header_len..],
            IpAddr::V4(SENDER),
            IpAddr::V4(GROUP_V4)
        )
        .expect("decodes")
        .addresses,
        VIPS
    );
}
