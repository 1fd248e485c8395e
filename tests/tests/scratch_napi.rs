use std::net::{IpAddr, UdpSocket};
use weir_testbed::*;

fn run(mode: &str) {
    let na = Netns::new("a").unwrap();
    let nb = Netns::new("b").unwrap();
    let p = veth_pair(&na, &nb).unwrap();
    na.add_addr(&p.a, "198.18.1.1".parse().unwrap(), 24).unwrap();
    nb.add_addr(&p.b, "198.18.1.2".parse().unwrap(), 24).unwrap();
    na.link_up(&p.a).unwrap();
    nb.link_up(&p.b).unwrap();
    let mac = na.mac(&p.a).unwrap();
    nb.add_neigh(&p.b, "198.18.1.1".parse::<IpAddr>().unwrap(), mac).unwrap();
    let _x = na.attach_xdp(&p.a, XdpAction::Tx).unwrap();
    let _peer = match mode {
        "gro" | "gro+kick" => { nb.set_gro(&p.b, true).unwrap(); None }
        "xdp" => Some(nb.attach_xdp(&p.b, XdpAction::Pass).unwrap()),
        _ => None,
    };
    let mut dump = nb.spawn(&["tcpdump", "-ni", &p.b, "-Q", "in", "-c", "1000", "udp or arp"]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let before = nb.link_stats(&p.b).unwrap();
    let s = nb.enter(|| UdpSocket::bind("198.18.1.2:0").unwrap()).unwrap();
    for _ in 0..100 { s.send_to(b"hello", "198.18.1.1:9").unwrap(); }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mid = nb.ethtool_stats(&p.b).unwrap().get("rx_queue_0_xdp_packets").copied();
    if mode == "gro+kick" { na.ping("198.18.1.2".parse().unwrap(), 1).ok(); }
    std::thread::sleep(std::time::Duration::from_millis(300));
    println!("mid xdp_packets on b: {mid:?}");
    let after = nb.link_stats(&p.b).unwrap();
    drop(dump.signal(2));
    std::thread::sleep(std::time::Duration::from_millis(300));
    println!("tcpdump: {}", dump.log().lines().filter(|l| l.contains("packets")).collect::<Vec<_>>().join(" | "));
    println!("MODE {mode}: b rx {} -> {}, tx {} -> {}", before.rx_packets, after.rx_packets, before.tx_packets, after.tx_packets);
    println!("  a ethtool: {:?}", na.ethtool_stats(&p.a).unwrap().into_iter().filter(|(_, v)| *v != 0).collect::<Vec<_>>());
    println!("  b ethtool: {:?}", nb.ethtool_stats(&p.b).unwrap().into_iter().filter(|(_, v)| *v != 0).collect::<Vec<_>>());
}

#[test]
fn napi() { for m in ["none", "gro", "gro+kick", "xdp"] { run(m); } }
