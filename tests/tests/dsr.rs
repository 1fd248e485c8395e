//! End to end, DSR: a client, the load balancer running the real `weir` agent, and
//! backends running HTTP and UDP servers, on one L2 segment in network namespaces (see
//! `weir_testbed::topology`). Real TCP (the test's own sockets and curl) and UDP.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use weir_testbed::{
    DsrTopology, Netns,
    agent::{Agent, AgentDirs},
    curl, http_get,
    topology::{HTTP_PORT, LB_V4, UDP_PORT, VIP_V4, VIP_V6, backend_v4, backend_v6},
    udp_request_from,
};

/// A VIP of the test configuration; `backend` gives backend N's address.
struct Vip {
    name: &'static str,
    address: IpAddr,
    port: u16,
    protocol: &'static str,
    backend: fn(u8) -> IpAddr,
}

/// A configuration for the topology: TCP and UDP VIPs over IPv4 and TCP over IPv6, each
/// with the given backends.
fn config(topology: &DsrTopology, backends: &[u8]) -> String {
    let mut text = format!("[agent]\ninterfaces = [\"{}\"]\n", topology.lb_ifname());
    let v4 = |n| IpAddr::from(backend_v4(n));
    let v6 = |n| IpAddr::from(backend_v6(n));
    let vips = [
        Vip {
            name: "web",
            address: VIP_V4.into(),
            port: HTTP_PORT,
            protocol: "tcp",
            backend: v4,
        },
        Vip {
            name: "echo",
            address: VIP_V4.into(),
            port: UDP_PORT,
            protocol: "udp",
            backend: v4,
        },
        Vip {
            name: "web6",
            address: VIP_V6.into(),
            port: HTTP_PORT,
            protocol: "tcp",
            backend: v6,
        },
    ];
    for Vip {
        name,
        address,
        port,
        protocol,
        backend,
    } in vips
    {
        text += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nprotocol = \"{protocol}\"\ntable_size = 1021\n"
        );
        for n in backends {
            text += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend(*n));
        }
    }
    text
}

fn start(backends: u8) -> (DsrTopology, Agent) {
    let topology = DsrTopology::with_servers(backends)
        .expect("the DSR test bed needs root and network namespaces");
    let all: Vec<u8> = (1..=backends).collect();
    let agent = Agent::start(topology.lb_ns(), &config(&topology, &all)).expect("the agent starts");
    (topology, agent)
}

fn url(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(v4) => format!("http://{v4}:{HTTP_PORT}/"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{HTTP_PORT}/"),
    }
}

/// How many of `answers` each backend gave.
fn spread(answers: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.trim().to_owned()).or_insert(0) += 1;
    }
    counts
}

fn assert_every_backend_served(counts: &BTreeMap<String, usize>, backends: u8, total: usize) {
    assert_eq!(
        counts.len(),
        backends as usize,
        "every backend gets traffic: {counts:?}"
    );
    for (backend, n) in counts {
        assert!(
            *n * backends as usize * 3 >= total,
            "{backend} got {n} of {total}: {counts:?}"
        );
    }
}

/// A persistent HTTP/1.1 connection from the client namespace: one flow.
struct Connection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(ns: &Netns, to: SocketAddr) -> Connection {
        let stream = ns
            .enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))
            .unwrap()
            .expect("connect to the VIP");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Connection { stream, reader }
    }

    /// One request on the connection; the body names the backend.
    fn get(&mut self) -> std::io::Result<String> {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }
}

#[test]
fn tcp_flows_spread_over_every_backend_and_stay_on_one() {
    let (topology, agent) = start(3);
    let client = &topology.client().ns;
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        let total = 150;
        let answers = (0..total).map(|_| {
            http_get(client, &url(vip))
                .expect("GET through the VIP")
                .body
        });
        let counts = spread(answers);
        assert_every_backend_served(&counts, 3, total);

        // One connection is one flow: every request on it reaches the same backend.
        let mut connection = Connection::open(client, SocketAddr::new(vip, HTTP_PORT));
        let first = connection.get().unwrap();
        for _ in 0..50 {
            assert_eq!(connection.get().unwrap(), first);
        }
    }
    // A real client too.
    let body = curl(client, &url(VIP_V4.into())).expect("curl through the VIP");
    assert!(body.starts_with("backend"), "{body}");

    let log = agent.stop().unwrap();
    assert!(
        log.contains("verdicts:"),
        "the agent prints its counters on exit:\n{log}"
    );
}

#[test]
fn udp_flows_spread_and_stick() {
    let (topology, _agent) = start(3);
    let client = &topology.client().ns;
    let vip = SocketAddr::new(VIP_V4.into(), UDP_PORT);
    let request = |port: u16| {
        let bind = SocketAddr::new(topology.client().ipv4.into(), port);
        let answer = udp_request_from(client, bind, vip, b"ping").expect("UDP through the VIP");
        String::from_utf8_lossy(&answer)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let total = 90;
    let first: Vec<String> = (0..total).map(|i| request(41000 + i)).collect();
    assert_every_backend_served(&spread(first.clone()), 3, total as usize);
    let again: Vec<String> = (0..total).map(|i| request(41000 + i)).collect();
    assert_eq!(first, again, "a UDP flow stays on its backend");
}

#[test]
fn backend_changes_move_only_the_flows_they_must() {
    let (mut topology, mut agent) = start(3);
    let vip = SocketAddr::new(VIP_V4.into(), HTTP_PORT);
    let mut connections: Vec<(Connection, String)> = (0..30)
        .map(|_| {
            let mut connection = Connection::open(&topology.client().ns, vip);
            let backend = connection.get().unwrap();
            (connection, backend)
        })
        .collect();
    assert!(
        connections.iter().any(|(_, b)| b == "backend3"),
        "some flows are on backend3"
    );

    // Add a fourth backend: every established connection keeps its backend.
    let added = topology.add_backend().unwrap();
    topology.start_server(added).unwrap();
    agent.reload(&config(&topology, &[1, 2, 3, added])).unwrap();
    for (connection, backend) in &mut connections {
        assert_eq!(
            &connection.get().unwrap(),
            backend,
            "an established flow stays after an addition"
        );
    }
    let client = &topology.client().ns;
    let counts = spread((0..120).map(|_| http_get(client, &url(VIP_V4.into())).unwrap().body));
    assert!(
        counts.contains_key(&format!("backend{added}")),
        "new flows reach the new backend: {counts:?}"
    );

    // Remove backend3: flows of the other backends stay where they are, new flows avoid it.
    agent.reload(&config(&topology, &[1, 2, added])).unwrap();
    for (connection, backend) in connections.iter_mut().filter(|(_, b)| b != "backend3") {
        assert_eq!(
            &connection.get().unwrap(),
            backend,
            "a flow of a remaining backend stays"
        );
    }
    let counts = spread((0..90).map(|_| http_get(client, &url(VIP_V4.into())).unwrap().body));
    assert!(
        !counts.contains_key("backend3"),
        "no new flow reaches a removed backend: {counts:?}"
    );
    // The moved flows now reach a backend that has no such connection: it resets them,
    // which the client sees at once instead of waiting for a dead server.
    for (connection, _) in connections.iter_mut().filter(|(_, b)| b == "backend3") {
        assert!(
            connection.get().is_err(),
            "a moved TCP flow is reset by its new backend"
        );
    }
}

#[test]
fn traffic_for_the_lb_host_itself_still_works() {
    let (topology, _agent) = start(2);
    let client = &topology.client().ns;
    client
        .run(&["ping", "-c", "2", "-W", "2", &LB_V4.to_string()])
        .expect("ping the LB host");
    client
        .run(&[
            "ping",
            "-6",
            "-c",
            "2",
            "-W",
            "2",
            &topology.lb().ipv6.to_string(),
        ])
        .expect("ping6 the LB host");
    // A TCP service of the LB host itself (as SSH would be).
    let lb = &topology.lb().ns;
    let server = weir_testbed::test_server_bin().unwrap();
    let _service = lb
        .spawn(&[
            server.to_str().unwrap(),
            "--name",
            "lb-host",
            "--http",
            &format!("{LB_V4}:8080"),
        ])
        .unwrap();
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(response) = http_get(client, &format!("http://{LB_V4}:8080/")) {
            body = response.body;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(body.trim(), "lb-host");
}

#[test]
fn a_bad_configuration_is_refused_and_nothing_is_attached() {
    let topology = DsrTopology::with_backends(1).unwrap();
    let bad = format!(
        "[agent]\ninterfaces = [\"{}\"]\n[[vip]]\nname = \"web\"\naddress = \"198.19.0.10\"\nport = 80\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\nweight = 20000\n",
        topology.lb_ifname()
    );
    let error = Agent::start(topology.lb_ns(), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        // The exact line is checked by the config unit tests; the fixture adds lines here.
        error.contains(".toml:")
            && error.contains(":10: vip[0].backend[0].weight: must be in 0..=10000, got 20000"),
        "{error}"
    );
    let link = topology
        .lb_ns()
        .ip(&["link", "show", topology.lb_ifname()])
        .unwrap();
    assert!(!link.contains("xdp"), "nothing attached: {link}");
}

#[test]
fn stopping_the_agent_detaches_and_restores_the_host() {
    let topology = DsrTopology::with_servers(1).unwrap();
    let lb = topology.lb_ns();
    let forwarding = format!("net.ipv4.conf.{}.forwarding", topology.lb_ifname());
    assert_eq!(lb.read_sysctl(&forwarding).unwrap(), "0");
    let pins = AgentDirs::new().unwrap();
    let agent =
        Agent::start_with(lb, &config(&topology, &[1]), &pins, &["--detach-on-exit"]).unwrap();
    let link = lb.ip(&["link", "show", topology.lb_ifname()]).unwrap();
    assert!(link.contains("xdp"), "attached while running: {link}");
    assert_eq!(
        lb.read_sysctl(&forwarding).unwrap(),
        "1",
        "forwarding on while attached"
    );
    assert!(lb.ip(&["neigh"]).unwrap().contains("managed"));

    agent.stop().unwrap();
    let link = lb.ip(&["link", "show", topology.lb_ifname()]).unwrap();
    assert!(!link.contains("xdp"), "detached after SIGTERM: {link}");
    assert_eq!(
        lb.read_sysctl(&forwarding).unwrap(),
        "0",
        "forwarding restored"
    );
    assert!(
        !lb.ip(&["neigh"]).unwrap().contains("managed"),
        "managed neighbours removed"
    );
    assert!(!pins.pins().unwrap().join("v1").exists(), "pins removed");
}

#[test]
fn generic_mode_forwards_too() {
    let topology = DsrTopology::with_servers(2).unwrap();
    let text =
        config(&topology, &[1, 2]).replacen("[agent]\n", "[agent]\nxdp_mode = \"generic\"\n", 1);
    let agent = Agent::start(topology.lb_ns(), &text).unwrap();
    assert!(agent.log().contains("mode=\"generic\""), "{}", agent.log());
    let client = &topology.client().ns;
    let counts = spread((0..60).map(|_| http_get(client, &url(VIP_V4.into())).unwrap().body));
    assert_every_backend_served(&counts, 2, 60);
}

/// Without any neighbour entry for the backends on the LB, the agent's managed neighbour
/// entries get them resolved by the kernel, and no packet meets an unresolved next hop.
#[test]
fn next_hops_are_resolved_without_static_neighbours() {
    let topology = DsrTopology::with_servers(2).unwrap();
    let lb = topology.lb_ns();
    for n in 1..=2 {
        for addr in [IpAddr::from(backend_v4(n)), IpAddr::from(backend_v6(n))] {
            lb.ip(&[
                "neigh",
                "del",
                &addr.to_string(),
                "dev",
                topology.lb_ifname(),
            ])
            .unwrap();
        }
    }
    let agent = Agent::start(lb, &config(&topology, &[1, 2])).unwrap();
    let resolved = || {
        let neighbours = lb
            .ip(&["neigh", "show", "dev", topology.lb_ifname()])
            .unwrap();
        (1..=2).all(|n| {
            [backend_v4(n).to_string(), backend_v6(n).to_string()]
                .iter()
                .all(|addr| {
                    neighbours.lines().any(|l| {
                        l.starts_with(&format!("{addr} "))
                            && l.contains("managed")
                            && l.contains("lladdr")
                    })
                })
        })
    };
    for _ in 0..100 {
        if resolved() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        resolved(),
        "managed neighbours resolved:\n{}",
        lb.ip(&["neigh"]).unwrap()
    );
    let client = &topology.client().ns;
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        let counts = spread((0..40).map(|_| http_get(client, &url(vip)).unwrap().body));
        assert_every_backend_served(&counts, 2, 40);
    }
    let log = agent.stop().unwrap();
    assert!(log.contains("drop_fib_no_neigh 0,"), "{log}");
}
