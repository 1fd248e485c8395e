//! End to end, DSR with two arms: clients reach the load balancer on one interface, the
//! backends sit behind another, so the XDP program forwards with XDP_REDIRECT through its
//! devmap. The backends' replies go back through the LB host's kernel (their default
//! route), untouched by the program.
//!
//! ```text
//!  client 198.18.20.100 ── 198.18.20.1 [lb] 198.18.21.1 ── bridge ── backend1 198.18.21.11
//!                                                                └── backend2 198.18.21.12
//! ```

use std::collections::BTreeMap;

use weir_testbed::{
    Child, Netns, VethPair, XdpAction, XdpLink, agent::Agent, http_get, test_server_bin, veth_pair,
};

const VIP: &str = "198.19.0.10";

/// The network; every piece is a guard, dropped in reverse order of creation.
struct TwoArm {
    lb_front: String,
    lb_back: String,
    _servers: Vec<Child>,
    _backends: Vec<Netns>,
    _bridge_port_xdp: XdpLink,
    _switch: Netns,
    lb: Netns,
    client: Netns,
}

/// Brings `dev` up in `ns` with `cidr`, sending full checksums (see the DSR topology).
fn configure(ns: &Netns, dev: &str, cidr: &str) {
    ns.ip(&["addr", "add", cidr, "dev", dev]).unwrap();
    ns.ip(&["link", "set", dev, "up"]).unwrap();
    ns.run(&["ethtool", "-K", dev, "tx", "off"]).unwrap();
}

fn build() -> TwoArm {
    let client = Netns::new("client").expect("the two-arm test needs root and network namespaces");
    let lb = Netns::new("lb").unwrap();
    let switch = Netns::new("switch").unwrap();

    let front: VethPair = veth_pair(&client, &lb).unwrap();
    configure(&client, &front.a, "198.18.20.100/24");
    configure(&lb, &front.b, "198.18.20.1/24");
    client
        .ip(&["route", "add", "198.19.0.0/24", "via", "198.18.20.1"])
        .unwrap();

    let back = veth_pair(&lb, &switch).unwrap();
    configure(&lb, &back.a, "198.18.21.1/24");
    let bridge = weir_testbed::unique_ifname('s');
    switch.add_bridge(&bridge).unwrap();
    switch.set_master(&back.b, &bridge).unwrap();
    switch.link_up(&back.b).unwrap();
    // Frames redirected into a veth are only delivered if its peer runs XDP (NAPI).
    let bridge_port_xdp = switch.attach_xdp(&back.b, XdpAction::Pass).unwrap();

    let server = test_server_bin().unwrap();
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    for n in 1..=2 {
        let ns = Netns::new(&format!("b{n}")).unwrap();
        let link = veth_pair(&ns, &switch).unwrap();
        configure(&ns, &link.a, &format!("198.18.21.1{n}/24"));
        switch.set_master(&link.b, &bridge).unwrap();
        switch.link_up(&link.b).unwrap();
        ns.ip(&["route", "add", "default", "via", "198.18.21.1"])
            .unwrap();
        ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])
            .unwrap();
        for key in ["all", "default", link.a.as_str()] {
            ns.sysctl(&format!("net.ipv4.conf.{key}.arp_ignore"), "1")
                .unwrap();
            ns.sysctl(&format!("net.ipv4.conf.{key}.arp_announce"), "2")
                .unwrap();
        }
        let name = format!("backend{n}");
        servers.push(
            ns.spawn(&[
                server.to_str().unwrap(),
                "--name",
                &name,
                "--http",
                "0.0.0.0:80",
            ])
            .unwrap(),
        );
        backends.push(ns);
    }
    TwoArm {
        lb_front: front.b,
        lb_back: back.a,
        _servers: servers,
        _backends: backends,
        _bridge_port_xdp: bridge_port_xdp,
        _switch: switch,
        lb,
        client,
    }
}

/// The value of `name` in the agent's `verdicts:` line.
fn verdict(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.starts_with("verdicts:"))
        .expect("the agent prints its verdicts");
    line.trim_start_matches("verdicts:")
        .split(',')
        .filter_map(|part| part.trim().split_once(' '))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

#[test]
fn flows_are_redirected_to_backends_behind_another_interface() {
    let net = build();
    let config = format!(
        "[agent]\ninterfaces = [\"{}\", \"{}\"]\n\n[[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\n\
         [[vip.backend]]\naddress = \"198.18.21.11\"\n[[vip.backend]]\naddress = \"198.18.21.12\"\n",
        net.lb_front, net.lb_back
    );
    let agent = Agent::start(&net.lb, &config).expect("the agent starts");

    let mut answers = BTreeMap::new();
    for _ in 0..60 {
        let body = http_get(&net.client, &format!("http://{VIP}/"))
            .expect("GET through the VIP")
            .body;
        *answers.entry(body.trim().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(answers.len(), 2, "both backends answer: {answers:?}");

    let log = agent.stop().unwrap();
    assert!(
        verdict(&log, "redirect") >= 60,
        "requests were redirected:\n{log}"
    );
    assert_eq!(verdict(&log, "drop"), 0, "{log}");
}
