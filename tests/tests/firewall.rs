//! End to end, the firewall: the real agent on the DSR test bed (see
//! `weir_testbed::topology`). A VIP's source lists decide which clients are served, the
//! host's own port answers only its admin prefix, runtime edits through `weir firewall`
//! apply at once, and a SYN flood from spoofed sources (live frames, see
//! `weir_testbed::flood`) leaves a real client served and the connection table usable.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    thread,
    time::{Duration, Instant},
};

use weir_testbed::{
    DsrTopology, Netns,
    agent::Agent,
    flood::Flooder,
    http_get,
    topology::{CLIENT_V4, HTTP_PORT, LB_V4, UDP_PORT, VIP_V4, backend_v4},
    udp_request_from,
};

/// The client's second address: another source, in no allowed prefix.
const STRANGER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
/// The host's SSH-like port.
const ADMIN_PORT: u16 = 2222;

fn config(topology: &DsrTopology, vip_extra: &str) -> String {
    format!(
        "[agent]\ninterfaces = [\"{}\"]\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP_V4}\"\nport = {HTTP_PORT}\ntable_size = 251\n\
         {vip_extra}[[vip.backend]]\naddress = \"{}\"\n\
         [[vip]]\nname = \"echo\"\naddress = \"{VIP_V4}\"\nport = {UDP_PORT}\nprotocol = \"udp\"\n\
         table_size = 251\nallow_sources = [\"{CLIENT_V4}\"]\n\
         [[vip.backend]]\naddress = \"{}\"\n\
         [[firewall.host]]\nport = {ADMIN_PORT}\nallow_sources = [\"{CLIENT_V4}/32\"]\n",
        topology.lb_ifname(),
        backend_v4(1),
        backend_v4(1),
    )
}

fn start(vip_extra: &str) -> (DsrTopology, Agent) {
    let topology =
        DsrTopology::with_servers(1).expect("the DSR test bed needs root and network namespaces");
    let client = topology.client();
    client
        .ns
        .add_addr(&client.ifname, IpAddr::V4(STRANGER_V4), 24)
        .expect("a second client address");
    let agent = Agent::start(topology.lb_ns(), &config(&topology, vip_extra))
        .expect("the agent starts with a firewall");
    (topology, agent)
}

/// curl from the client namespace with a chosen source address: whether it was answered.
fn curl_from(ns: &Netns, source: Ipv4Addr, url: &str) -> bool {
    let output = ns
        .output(&[
            "curl",
            "-s",
            "--max-time",
            "3",
            "--interface",
            &source.to_string(),
            url,
        ])
        .expect("curl runs");
    output.status.success()
}

fn udp_from(ns: &Netns, source: Ipv4Addr) -> bool {
    let bind = SocketAddr::new(source.into(), 0);
    let to = SocketAddr::new(VIP_V4.into(), UDP_PORT);
    udp_request_from(ns, bind, to, b"ping").is_ok()
}

fn cli(agent: &Agent, args: &[&str]) -> String {
    let output = agent.cli(args).expect("the CLI runs");
    assert!(output.status.success(), "weir {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stats_counter(agent: &Agent, name: &str) -> u64 {
    let json = cli(agent, &["--json", "stats"]);
    let report: serde_json::Value = serde_json::from_str(&json).expect("stats as JSON");
    report["counters"][name].as_u64().unwrap_or(0)
}

#[test]
fn a_client_from_an_allowed_prefix_is_served_and_another_is_dropped() {
    let (topology, agent) = start(&format!("deny_sources = [\"{STRANGER_V4}\"]\n"));
    let client = &topology.client().ns;
    let url = format!("http://{VIP_V4}:{HTTP_PORT}/");
    assert!(
        curl_from(client, CLIENT_V4, &url),
        "the allowed client is served"
    );
    assert!(
        !curl_from(client, STRANGER_V4, &url),
        "the denied source is dropped"
    );
    assert!(udp_from(client, CLIENT_V4), "UDP: the allowed client");
    assert!(!udp_from(client, STRANGER_V4), "UDP: not in allow_sources");
    assert!(stats_counter(&agent, "drop_firewall") > 0);

    // Runtime edits: applied at once, listed, and the lists swap whole.
    cli(
        &agent,
        &["firewall", "allow", "echo", &STRANGER_V4.to_string()],
    );
    assert!(udp_from(client, STRANGER_V4), "UDP: allowed at runtime");
    cli(
        &agent,
        &["firewall", "remove", "web", &format!("{STRANGER_V4}/32")],
    );
    assert!(
        curl_from(client, STRANGER_V4, &url),
        "TCP: no longer denied"
    );
    let list = cli(&agent, &["firewall", "list"]);
    assert!(
        list.contains(&format!("allow  {CLIENT_V4}/32 {STRANGER_V4}/32")),
        "{list}"
    );
    // A refused edit changes nothing.
    let refused = agent
        .cli(&["firewall", "deny", "echo", "198.18.0.1/16"])
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        udp_from(client, STRANGER_V4),
        "still allowed after a refused edit"
    );
}

#[test]
fn the_hosts_ssh_like_port_answers_only_the_admin_prefix() {
    let (topology, _agent) = start("");
    let listener = topology
        .lb_ns()
        .enter(|| TcpListener::bind((LB_V4, ADMIN_PORT)))
        .unwrap()
        .expect("a listener on the LB host");
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            use std::io::Write;
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nhost");
        }
    });
    let client = &topology.client().ns;
    let url = format!("http://{LB_V4}:{ADMIN_PORT}/");
    assert!(
        curl_from(client, CLIENT_V4, &url),
        "the admin prefix reaches the host"
    );
    assert!(
        !curl_from(client, STRANGER_V4, &url),
        "another source does not"
    );
    // The host's other traffic is untouched: the VIP still serves the stranger.
    let vip = format!("http://{VIP_V4}:{HTTP_PORT}/");
    assert!(curl_from(client, STRANGER_V4, &vip));
}

#[test]
fn a_syn_flood_from_spoofed_sources_leaves_real_clients_served() {
    let (topology, agent) = start("new_flow_rate = 4\n");
    let flooder = Flooder::join(
        topology.switch(),
        topology.bridge(),
        Ipv4Addr::new(198, 18, 0, 150),
    )
    .expect("the flooding host joins the segment");
    // 500 spoofed sources outside the segment, 400 SYNs each. (Each live-frames call
    // costs tens of milliseconds of set-up, hence few sources and many copies.)
    let sources: Vec<Ipv4Addr> = (0..500u32)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + i))
        .collect();
    let lb_mac = topology.lb().mac;
    let url = format!("http://{VIP_V4}:{HTTP_PORT}/");
    let client = &topology.client().ns;
    let started = Instant::now();
    let (sent, served) = thread::scope(|scope| {
        let flood = scope.spawn(|| flooder.syn_flood(&sources, lb_mac, VIP_V4, HTTP_PORT, 400));
        let mut served = 0;
        // A real client keeps connecting (2 a second, under its rate) while it lasts.
        while !flood.is_finished() || served < 3 {
            let answer =
                http_get(client, &url).expect("the real client is served during the flood");
            assert_eq!(answer.status, 200);
            served += 1;
            thread::sleep(Duration::from_millis(500));
        }
        (flood.join().unwrap().expect("the flood is sent"), served)
    });
    eprintln!(
        "flood: {sent} SYNs from {} sources in {:?}; the client was served {served} times",
        sources.len(),
        started.elapsed()
    );
    let limited = stats_counter(&agent, "drop_rate_limited");
    assert!(
        limited >= sent / 2,
        "most of the flood is dropped before the connection table: {limited} of {sent}"
    );
    // The table holds what was admitted, no more: one flow per spoofed source here.
    let flows = cli(&agent, &["--json", "flows", "web"]);
    let flows: Vec<serde_json::Value> = serde_json::from_str(&flows).unwrap();
    assert!(
        flows.len() <= sources.len() + served + 1,
        "{} flows",
        flows.len()
    );
    // And it is usable: a new connection after the flood is served.
    assert_eq!(http_get(client, &url).unwrap().status, 200);
}
