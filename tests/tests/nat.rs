//! End to end, full NAT: the real `weir` agent in front of *plain* backends — no VIP on
//! their loopback, no ARP settings, no route to the client. Each backend sees the load
//! balancer as its peer and answers it; the XDP program translates the answers back.
//!
//! One arm: client, LB and backends on one segment (`DsrTopology::with_plain_servers`).
//! Two arms: clients on one interface of the LB, backends behind another.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    thread::sleep,
    time::{Duration, Instant},
};

use weir_testbed::{
    DsrTopology, TwoArmBackends, TwoArmTopology,
    agent::{Agent, AgentDirs},
    curl, http_get,
    load::{Load, LoadSpec},
    topology::{HTTP_PORT, LB_V4, UDP_PORT, VIP_V4, VIP_V6, backend_v4, backend_v6},
    two_arm_backend, udp_request,
};

/// The VIPs' ports: not the backends' own, so the NAT translates ports too.
const VIP_HTTP_PORT: u16 = 8080;
const VIP_UDP_PORT: u16 = 53;

fn nat_vip(name: &str, address: IpAddr, port: u16, protocol: &str, backends: &[IpAddr]) -> String {
    let backend_port = if protocol == "tcp" {
        HTTP_PORT
    } else {
        UDP_PORT
    };
    let mut text = format!(
        "\n[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\n\
         protocol = \"{protocol}\"\nforwarding = \"nat\"\ntable_size = 1021\n"
    );
    for backend in backends {
        text += &format!("[[vip.backend]]\naddress = \"{backend}\"\nport = {backend_port}\n");
    }
    text
}

fn one_arm_config(topology: &DsrTopology, backends: &[u8]) -> String {
    let v4: Vec<IpAddr> = backends.iter().map(|n| backend_v4(*n).into()).collect();
    let v6: Vec<IpAddr> = backends.iter().map(|n| backend_v6(*n).into()).collect();
    format!("[agent]\ninterfaces = [\"{}\"]\n", topology.lb_ifname())
        + &nat_vip("web", VIP_V4.into(), VIP_HTTP_PORT, "tcp", &v4)
        + &nat_vip("echo", VIP_V4.into(), VIP_UDP_PORT, "udp", &v4)
        + &nat_vip("web6", VIP_V6.into(), VIP_HTTP_PORT, "tcp", &v6)
        + &nat_vip("echo6", VIP_V6.into(), VIP_UDP_PORT, "udp", &v6)
}

fn url(vip: IpAddr) -> String {
    format!("http://{}/", SocketAddr::new(vip, VIP_HTTP_PORT))
}

/// The value of `name` in one of the agent's summary lines (`verdicts:`, `counters:`).
fn summary(log: &str, prefix: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("the agent prints its {prefix} line:\n{log}"));
    line.trim_start_matches(prefix)
        .split(',')
        .filter_map(|part| part.trim().split_once(' '))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

#[test]
fn one_arm_http_and_udp_reach_plain_backends() {
    let topology = DsrTopology::with_plain_servers(3)
        .expect("the NAT test bed needs root and network namespaces");
    let agent = Agent::start(topology.lb_ns(), &one_arm_config(&topology, &[1, 2]))
        .expect("the agent starts");
    let client = &topology.client().ns;

    for vip in [IpAddr::from(VIP_V4), IpAddr::from(VIP_V6)] {
        let mut answers = BTreeMap::new();
        for _ in 0..40 {
            let response = http_get(client, &url(vip)).expect("GET through the NAT VIP");
            let backend = response.header("X-Weir-Backend").unwrap_or("?").to_owned();
            *answers.entry(backend).or_insert(0) += 1;
        }
        assert_eq!(answers.len(), 2, "{vip}: both backends answer: {answers:?}");
        let body = curl(client, &url(vip)).expect("curl through the NAT VIP");
        assert!(body.contains("backend"), "{vip}: {body}");

        let echo = udp_request(client, SocketAddr::new(vip, VIP_UDP_PORT), b"ping")
            .expect("UDP through the NAT VIP");
        let echo = String::from_utf8_lossy(&echo);
        assert!(
            echo.starts_with("backend") && echo.ends_with(" ping"),
            "{vip}: {echo}"
        );
    }

    // The CLI shows the forwarding mode, and each backend's port and NAT source.
    let show = agent.cli(&["vip", "show", "web"]).unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.lines()
            .any(|l| l.split_whitespace().eq(["forwarding", "nat"])),
        "{show}"
    );
    let backend1 = show
        .lines()
        .find(|l| l.starts_with(&backend_v4(1).to_string()))
        .unwrap_or_else(|| panic!("{show}"));
    assert!(
        backend1.contains(&format!("{HTTP_PORT}")) && backend1.contains(&LB_V4.to_string()),
        "port and NAT source (the LB's address on the segment): {show}"
    );

    // A backend added through the CLI, with its port.
    let added = agent
        .cli(&[
            "backend",
            "add",
            "web",
            &backend_v4(3).to_string(),
            "--port",
            &HTTP_PORT.to_string(),
        ])
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let reached = (0..100).any(|_| {
        http_get(client, &url(VIP_V4.into()))
            .ok()
            .and_then(|r| r.header("X-Weir-Backend").map(str::to_owned))
            .as_deref()
            == Some("backend3")
    });
    assert!(reached, "new flows reach the backend added with its port");

    let log = agent.stop().unwrap();
    assert!(summary(&log, "counters:", "nat_reply") > 0, "{log}");
    assert_eq!(summary(&log, "verdicts:", "drop"), 0, "{log}");
}

/// Many concurrent connections, long-lived ones among them, while a backend is added:
/// every request answered, no connection broken or moved.
#[test]
fn concurrent_and_long_lived_connections_survive_a_backend_addition() {
    let mut topology = DsrTopology::with_plain_servers(3)
        .expect("the NAT test bed needs root and network namespaces");
    let mut agent = Agent::start(topology.lb_ns(), &one_arm_config(&topology, &[1, 2]))
        .expect("the agent starts");
    let spec = |vip: IpAddr| LoadSpec {
        target: SocketAddr::new(vip, VIP_HTTP_PORT),
        streams: 16,
        stream_interval: Duration::from_millis(20),
        short_workers: 4,
    };
    let client = &topology.client().ns;
    let v4 = Load::start(client, spec(VIP_V4.into())).unwrap();
    let v6 = Load::start(client, spec(VIP_V6.into())).unwrap();
    wait_for(&v4, 200);
    wait_for(&v6, 200);

    agent
        .reload(&one_arm_config(&topology, &[1, 2, 3]))
        .expect("the reload adds backend 3");
    wait_for(&v4, 300);
    wait_for(&v6, 300);
    let v4 = v4.stop();
    let v6 = v6.stop();
    for report in [&v4, &v6] {
        eprintln!("{report}");
        report.assert_clean();
        assert!(
            report.backends.contains_key("backend3"),
            "new connections reach the new backend: {report}"
        );
    }
    topology.stop_server(3).unwrap();
    let log = agent.stop().unwrap();
    assert_eq!(summary(&log, "verdicts:", "drop"), 0, "{log}");
}

/// NAT flows live in pinned maps: an agent killed and restarted (adopting the pinned
/// dataplane and swapping its programs in) breaks no connection, long-lived ones included.
#[test]
fn nat_connections_survive_an_agent_restart() {
    let topology = DsrTopology::with_plain_servers(2)
        .expect("the NAT test bed needs root and network namespaces");
    let dirs = AgentDirs::new().unwrap();
    let text = one_arm_config(&topology, &[1, 2]);
    let agent = Agent::start_with(topology.lb_ns(), &text, &dirs, &[]).unwrap();
    let load = Load::start(
        &topology.client().ns,
        LoadSpec {
            target: SocketAddr::new(VIP_V4.into(), VIP_HTTP_PORT),
            streams: 8,
            stream_interval: Duration::from_millis(20),
            short_workers: 2,
        },
    )
    .unwrap();
    wait_for(&load, 100);
    agent.kill().unwrap();
    // No agent: the pinned programs go on translating.
    wait_for(&load, 100);
    let agent = Agent::start_with(topology.lb_ns(), &text, &dirs, &[]).unwrap();
    assert!(
        agent.log().contains("adopting the pinned dataplane"),
        "{}",
        agent.log()
    );
    wait_for(&load, 200);
    let report = load.stop();
    eprintln!("{report}");
    report.assert_clean();
    agent.stop().unwrap();
}

/// Waits until `more` further requests have been answered.
fn wait_for(load: &Load, more: u64) {
    let (start, _) = load.progress();
    let deadline = Instant::now() + Duration::from_secs(15);
    while load.progress().0 < start + more {
        assert!(Instant::now() < deadline, "no traffic: {load:?}");
        sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_arms_translate_through_both_interfaces() {
    let net = TwoArmTopology::new(TwoArmBackends::Plain)
        .expect("the two-arm test needs root and network namespaces");
    let backends: Vec<IpAddr> = [1, 2]
        .iter()
        .map(|n| two_arm_backend(*n).parse().unwrap())
        .collect();
    let config = format!(
        "[agent]\ninterfaces = [\"{}\", \"{}\"]\n",
        net.lb_front, net.lb_back
    ) + &nat_vip("web", VIP_V4.into(), VIP_HTTP_PORT, "tcp", &backends)
        + &nat_vip("echo", VIP_V4.into(), VIP_UDP_PORT, "udp", &backends);
    let agent = Agent::start(&net.lb, &config).expect("the agent starts");

    let mut answers = BTreeMap::new();
    for _ in 0..40 {
        let response = http_get(&net.client, &url(VIP_V4.into())).expect("GET through the VIP");
        let backend = response.header("X-Weir-Backend").unwrap_or("?").to_owned();
        *answers.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(answers.len(), 2, "both backends answer: {answers:?}");
    let echo = udp_request(
        &net.client,
        SocketAddr::new(VIP_V4.into(), VIP_UDP_PORT),
        b"ping",
    )
    .expect("UDP through the VIP");
    assert!(String::from_utf8_lossy(&echo).ends_with(" ping"));

    let log = agent.stop().unwrap();
    assert!(
        summary(&log, "verdicts:", "redirect") >= 80,
        "requests and replies were redirected between the arms:\n{log}"
    );
    assert_eq!(summary(&log, "verdicts:", "drop"), 0, "{log}");
}
