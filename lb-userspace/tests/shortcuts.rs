//! The dataplane's shortcuts, fixture style (see `dataplane.rs`): what they skip must
//! not change what a packet gets.

mod common;

use common::*;
use lb_common::{Counter, Verdict};

/// `conntrack = false`: every packet goes to the Maglev pick, as with a connection
/// table, but no flow is recorded; a SYN counts as a new flow, nothing else does.
#[test]
fn a_vip_without_connection_table_forwards_by_maglev_alone() {
    let mut bed = Bed::new();
    bed.apply(&(BASE_CONFIG.to_owned() + STATELESS_CONFIG));
    for port in [40000, 40001, 40002, 40003] {
        let syn = tcp4(CLIENT4, port, STATELESS4, 80);
        let established = tcp4_established(CLIENT4, port, STATELESS4, 80, false);
        let backend = bed.maglev_pick("stateless", &key(&syn)).to_string();
        let out = |frame: &[u8]| rewritten(frame, mac_of(&backend), LB0_MAC);
        bed.expect("syn", &syn, Verdict::Tx, &out(&syn), &forwarded(1));
        bed.expect(
            "established",
            &established,
            Verdict::Tx,
            &out(&established),
            &forwarded(0),
        );
    }
    let flows = bed.dataplane.flows().unwrap();
    assert!(
        flows
            .iter()
            .all(|(key, _)| key.dst[0] != u32::from_ne_bytes(STATELESS4)),
        "{flows:?}"
    );
}

/// A packet for the host is passed once its IP header is read: even a transport header
/// cut short is the host's to judge, not a malformed VIP packet.
#[test]
fn the_hosts_packets_are_passed_after_the_ip_header() {
    let mut bed = Bed::new();
    bed.apply(&nat_config("20000-29999"));
    let frame = tcp4(CLIENT4, 40000, HOST4, 80);
    let pass = [(Counter::PassNotVip, 1)];
    bed.expect("whole", &frame, Verdict::Pass, &frame, &pass);

    // The IP header's total length cut to 8 bytes of TCP.
    let mut cut = frame[..14 + 20 + 8].to_vec();
    cut[16..18].copy_from_slice(&28u16.to_be_bytes());
    cut[24..26].fill(0);
    let checksum = ipv4_header_checksum(&cut[14..34]);
    cut[24..26].copy_from_slice(&checksum.to_be_bytes());
    bed.expect("transport cut short", &cut, Verdict::Pass, &cut, &pass);
}

fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let sum: u32 = header
        .chunks_exact(2)
        .map(|word| u32::from(u16::from_be_bytes([word[0], word[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    !(((folded & 0xffff) + (folded >> 16)) as u16)
}
