//! End to end: the dataplane outlives the agent. Maps and XDP links are pinned, so the
//! program keeps forwarding while no agent runs, a restarted agent adopts the pinned state
//! (connection table and counters included) and swaps its program into the links
//! atomically — under continuous client load, without a failed request or broken stream.

use std::{
    net::{IpAddr, SocketAddr},
    thread::sleep,
    time::{Duration, Instant},
};

use weir_testbed::{
    DsrTopology,
    agent::{Agent, AgentDirs},
    http_get,
    load::{Load, LoadSpec},
    topology::{HTTP_PORT, VIP_V4, backend_v4},
};

fn config(topology: &DsrTopology, conntrack_entries: u32, extra: &str) -> String {
    let mut text = format!(
        "[agent]\ninterfaces = [\"{}\"]\nconntrack_entries = {conntrack_entries}\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP_V4}\"\nport = {HTTP_PORT}\ntable_size = 1021\n",
        topology.lb_ifname()
    );
    for n in 1..=3 {
        text += &format!(
            "[[vip.backend]]\naddress = \"{}\"\n",
            IpAddr::from(backend_v4(n))
        );
    }
    text + extra
}

fn start_load(topology: &DsrTopology) -> Load {
    let load = Load::start(
        &topology.client().ns,
        LoadSpec {
            target: SocketAddr::new(VIP_V4.into(), HTTP_PORT),
            streams: 6,
            stream_interval: Duration::from_millis(20),
            short_workers: 2,
        },
    )
    .expect("the client load starts");
    wait_for_traffic(&load, 50);
    load
}

/// Waits until `more` further requests have succeeded.
fn wait_for_traffic(load: &Load, more: u64) {
    let (start, _) = load.progress();
    let deadline = Instant::now() + Duration::from_secs(10);
    while load.progress().0 < start + more {
        assert!(
            Instant::now() < deadline,
            "no traffic flows: {:?}",
            load.progress()
        );
        sleep(Duration::from_millis(20));
    }
}

/// The id of the XDP program attached to the LB's interface.
fn program_id(topology: &DsrTopology) -> Option<u32> {
    let link = topology
        .lb_ns()
        .ip(&["link", "show", topology.lb_ifname()])
        .unwrap();
    let (_, rest) = link.split_once("prog/xdp id ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The restarted agent adds a backend, which takes over Maglev slots: established
/// streams stay on their backends only if it adopted the connection table (a fresh one
/// would send those flows to the new backend, which resets them).
#[test]
fn kill_9_and_restart_under_load_loses_nothing() {
    let topology = DsrTopology::with_servers(3).unwrap();
    let pins = AgentDirs::new().unwrap();
    let backend_3 = format!(
        "\n[[vip.backend]]\naddress = \"{}\"\n",
        IpAddr::from(backend_v4(3))
    );
    let two_backends = config(&topology, 65536, "").replace(&backend_3, "\n");
    assert_ne!(
        two_backends,
        config(&topology, 65536, ""),
        "backend 3 left out"
    );
    let agent = Agent::start_with(topology.lb_ns(), &two_backends, &pins, &[]).unwrap();
    let load = Load::start(
        &topology.client().ns,
        LoadSpec {
            target: SocketAddr::new(VIP_V4.into(), HTTP_PORT),
            // Enough that some would move to the added backend: each does with p = 1/3.
            streams: 24,
            stream_interval: Duration::from_millis(20),
            short_workers: 2,
        },
    )
    .expect("the client load starts");
    wait_for_traffic(&load, 50);

    agent.kill().unwrap();
    // No agent: the pinned program goes on forwarding.
    wait_for_traffic(&load, 100);
    let text = config(&topology, 65536, "");
    let agent = Agent::start_with(topology.lb_ns(), &text, &pins, &[]).unwrap();
    assert!(
        agent.log().contains("adopting the pinned dataplane"),
        "{}",
        agent.log()
    );
    wait_for_traffic(&load, 300);

    let report = load.stop();
    report.assert_clean();
    let log = agent.stop().unwrap();
    assert!(log.contains("stays attached"), "{log}");
}

#[test]
fn a_new_agent_swaps_its_program_into_the_pinned_link() {
    let topology = DsrTopology::with_servers(3).unwrap();
    let pins = AgentDirs::new().unwrap();
    let text = config(&topology, 65536, "");
    let first = Agent::start_with(topology.lb_ns(), &text, &pins, &[]).unwrap();
    let first_program = program_id(&topology).expect("attached");
    let load = start_load(&topology);

    // A graceful stop leaves the dataplane forwarding.
    first.stop().unwrap();
    assert_eq!(program_id(&topology), Some(first_program));
    wait_for_traffic(&load, 100);

    let second = Agent::start_with(topology.lb_ns(), &text, &pins, &[]).unwrap();
    assert!(
        second.log().contains("mode=\"adopted\""),
        "{}",
        second.log()
    );
    let second_program = program_id(&topology).expect("still attached");
    assert_ne!(
        second_program, first_program,
        "the new program replaced the old one"
    );
    wait_for_traffic(&load, 100);

    let report = load.stop();
    report.assert_clean();
    // The counters survived: the second agent reports the first one's traffic too.
    let log = second.stop().unwrap();
    let tx: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("verdicts:"))
        .and_then(|v| v.split(',').find_map(|p| p.trim().strip_prefix("tx ")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tx count in:\n{log}"));
    assert!(
        tx >= report.short_ok + report.stream_requests_ok,
        "tx {tx}, report {report}"
    );
}

#[test]
fn reload_with_an_unrelated_change_under_load_loses_nothing() {
    let topology = DsrTopology::with_servers(3).unwrap();
    let text = config(&topology, 65536, "");
    let mut agent = Agent::start(topology.lb_ns(), &text).unwrap();
    let load = start_load(&topology);
    let other = "\n[[vip]]\nname = \"other\"\naddress = \"198.19.0.99\"\nport = 443\ntable_size = 1021\n\
                 [[vip.backend]]\naddress = \"198.18.0.11\"\n";
    agent.reload(&config(&topology, 65536, other)).unwrap();
    wait_for_traffic(&load, 100);
    agent.reload(&text).unwrap();
    wait_for_traffic(&load, 100);
    load.stop().assert_clean();
}

#[test]
fn an_incompatible_pinned_dataplane_is_refused_and_keeps_forwarding() {
    let topology = DsrTopology::with_servers(3).unwrap();
    let pins = AgentDirs::new().unwrap();
    Agent::start_with(topology.lb_ns(), &config(&topology, 65536, ""), &pins, &[])
        .unwrap()
        .stop()
        .unwrap();

    let resized = config(&topology, 131072, "");
    let error = Agent::start_with(topology.lb_ns(), &resized, &pins, &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("CONNTRACK") && error.contains("capacity is 65536, expected 131072"),
        "{error}"
    );
    assert!(error.contains("--replace-dataplane"), "{error}");
    let url = format!("http://{VIP_V4}:{HTTP_PORT}/");
    let client = &topology.client().ns;
    assert!(
        http_get(client, &url).is_ok(),
        "the old dataplane still forwards"
    );

    let agent =
        Agent::start_with(topology.lb_ns(), &resized, &pins, &["--replace-dataplane"]).unwrap();
    assert!(!agent.log().contains("adopting"), "{}", agent.log());
    assert!(
        http_get(client, &url).is_ok(),
        "the fresh dataplane forwards"
    );
}

/// The kernel gives a connection table with one LRU list per CPU a capacity that is a
/// multiple of the possible CPUs: 1025 entries are 1026 on two CPUs (1032 on 6 …). The
/// agent starts with such a size, and the next agent adopts the maps it pinned.
#[test]
fn a_connection_table_size_the_kernel_rounds_up_is_adopted() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(cpus >= 2, "the kernel rounds nothing on {cpus} CPU");
    let topology = DsrTopology::with_servers(3).unwrap();
    let pins = AgentDirs::new().unwrap();
    let text = config(&topology, 1025, "");
    let first = Agent::start_with(topology.lb_ns(), &text, &pins, &[])
        .expect("an agent starts with 1025 connection table entries");
    assert!(!first.log().contains("adopting"), "{}", first.log());
    first.stop().unwrap();
    let second = Agent::start_with(topology.lb_ns(), &text, &pins, &[])
        .expect("the next agent adopts the maps");
    assert!(second.log().contains("adopting"), "{}", second.log());
    let url = format!("http://{VIP_V4}:{HTTP_PORT}/");
    assert!(http_get(&topology.client().ns, &url).is_ok());
}

/// The rolling-deploy step, under load: draining a backend (by reload) breaks no
/// established stream and fails no request, and new connections stop reaching it.
#[test]
fn draining_a_backend_under_load_loses_nothing() {
    let topology = DsrTopology::with_servers(3).unwrap();
    let text = config(&topology, 65536, "");
    let mut agent = Agent::start(topology.lb_ns(), &text).unwrap();
    let load = start_load(&topology);

    let drained = text.replacen(
        "address = \"198.18.0.13\"\n",
        "address = \"198.18.0.13\"\nstate = \"drain\"\n",
        1,
    );
    agent.reload(&drained).unwrap();
    wait_for_traffic(&load, 100);
    let report = load.stop();
    report.assert_clean();

    let client = &topology.client().ns;
    let url = format!("http://{VIP_V4}:{HTTP_PORT}/");
    for _ in 0..60 {
        let body = http_get(client, &url).unwrap().body;
        assert_ne!(
            body.trim(),
            "backend3",
            "a drained backend gets no new connection"
        );
    }
}
