//! Tests of the test bed itself. They need root (network namespaces) and fail, never
//! skip, without it.

use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::fs::MetadataExt,
    panic,
    path::Path,
    sync::Mutex,
    time::Duration,
};

use weir_testbed::{
    DsrTopology, Netns, ServerConfig, XdpAction, cleanup_stale_namespaces, client, http_get,
    http_get_keepalive,
    link::IFNAME_MAX,
    topology::{
        CLIENT_V4, CLIENT_V6, HTTP_PORT, LB_V4, LB_V6, UDP_PORT, VIP_V4, VIP_V6, backend_name,
        backend_v4, backend_v6,
    },
    udp_request, unique_ifname, veth_pair,
};

fn ns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn thread_netns_inode() -> u64 {
    fs::metadata("/proc/thread-self/ns/net")
        .expect("stat /proc/thread-self/ns/net")
        .ino()
}

fn url(ip: IpAddr, port: u16) -> String {
    format!("http://{}/", SocketAddr::new(ip, port))
}

#[test]
fn netns_runs_commands_and_is_deleted_on_drop() {
    let ns = Netns::new("unit").expect("creating a network namespace needs root");
    let name = ns.name().to_owned();
    assert!(
        name.starts_with(&format!("weir-{}-", std::process::id())),
        "{name}"
    );
    assert!(ns_exists(&name));
    let links = ns.run(&["ip", "-o", "link", "show"]).unwrap();
    assert_eq!(
        links.lines().count(),
        1,
        "a fresh namespace has only lo: {links}"
    );
    assert!(
        links.contains("lo:") && links.contains("UP"),
        "lo is up: {links}"
    );
    let err = ns
        .run(&["ip", "link", "show", "dev", "nosuchdev"])
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("ip link show dev nosuchdev") && msg.contains("does not exist"),
        "{msg}"
    );
    drop(ns);
    assert!(!ns_exists(&name), "{name} still exists after drop");
}

#[test]
fn namespaces_are_deleted_when_a_test_panics() {
    let names = Mutex::new(Vec::new());
    let result = panic::catch_unwind(|| {
        let topology = DsrTopology::with_backends(1).expect("topology");
        let mut names = names.lock().unwrap();
        for ns in [
            topology.switch(),
            &topology.client().ns,
            topology.lb_ns(),
            topology.backend(1).unwrap().ns(),
        ] {
            names.push(ns.name().to_owned());
        }
        let child = topology.client().ns.spawn(&["sleep", "1000"]).unwrap();
        names.push(format!("/proc/{}", child.id()));
        drop(names); // not poisoned by the panic below
        panic!("deliberate panic inside the test closure");
    });
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 5);
    for name in &names[..4] {
        assert!(!ns_exists(name), "{name} survived the panic");
    }
    let proc_dir = &names[4];
    assert!(
        !Path::new(proc_dir).exists(),
        "the child ({proc_dir}) survived the panic"
    );
}

#[test]
fn enter_switches_the_thread_and_switches_back_even_on_panic() {
    let ns = Netns::new("enter").unwrap();
    let outside = thread_netns_inode();
    let inside = ns.enter(thread_netns_inode).unwrap();
    assert_ne!(inside, outside);
    assert_eq!(
        inside,
        fs::metadata(ns.path()).unwrap().ino(),
        "entered the right namespace"
    );
    assert_eq!(thread_netns_inode(), outside, "switched back");

    let result = panic::catch_unwind(|| ns.enter(|| panic!("deliberate panic inside enter")));
    assert!(result.is_err());
    assert_eq!(thread_netns_inode(), outside, "switched back after a panic");

    // sysctls go through enter as well.
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(ns.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
}

#[test]
fn child_guard_stops_the_process_and_netns_drop_kills_leftovers() {
    let ns = Netns::new("child").unwrap();
    let mut child = ns
        .spawn(&["sh", "-c", "echo started; exec sleep 1000"])
        .unwrap();
    child
        .wait_for_log("started", Duration::from_secs(5))
        .unwrap();
    assert!(child.is_running());
    let pid = child.id();
    assert_eq!(ns.pids().unwrap(), vec![pid as i32]);
    drop(child);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} still exists"
    );

    // A process started without a guard dies with its namespace.
    let mut raw = ns.command("sleep").arg("1000").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(ns);
    let status = raw.wait().unwrap();
    assert!(!status.success(), "killed, not exited: {status}");
}

#[test]
fn child_that_exits_early_reports_its_output() {
    let ns = Netns::new("early").unwrap();
    let mut child = ns.spawn(&["sh", "-c", "echo oops >&2; exit 3"]).unwrap();
    let err = child
        .wait_for_log("never printed", Duration::from_secs(5))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("exited") && msg.contains("oops"), "{msg}");
}

#[test]
fn names_are_unique_and_fit() {
    let a = unique_ifname('a');
    let b = unique_ifname('a');
    assert_ne!(a, b);
    for name in [&a, &b] {
        assert!(
            name.starts_with("weir-") && name.len() <= IFNAME_MAX,
            "{name}"
        );
    }
}

#[test]
fn stale_namespaces_of_dead_processes_are_cleaned_up() {
    // A pid that no longer exists: a finished child's.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let name = format!("weir-{dead}-0-stale");
    weir_testbed::cmd::run(&["ip", "netns", "add", &name]).unwrap();
    let mine = Netns::new("alive").unwrap();
    let removed = cleanup_stale_namespaces().unwrap();
    assert!(removed.contains(&name), "{removed:?}");
    assert!(!ns_exists(&name));
    assert!(
        ns_exists(mine.name()),
        "a live process's namespace was removed"
    );
}

#[test]
fn topology_comes_up_and_hosts_reach_each_other() {
    let topology = DsrTopology::new().unwrap();
    assert_eq!(topology.backends().len(), 3);
    let client = topology.client();
    let lb = topology.lb();
    assert_eq!(
        (client.ipv4, client.ipv6, lb.ipv4, lb.ipv6),
        (CLIENT_V4, CLIENT_V6, LB_V4, LB_V6)
    );
    assert_eq!(topology.lb_ifname(), lb.ifname);
    assert!(lb.ifname.len() <= IFNAME_MAX);
    assert_eq!(
        lb.ns.mac(&lb.ifname).unwrap().to_string(),
        "02:00:c6:12:00:02"
    );
    assert!(topology.lb().ifindex().unwrap() > 1);

    for backend in topology.backends() {
        let n = backend.number;
        assert_eq!(backend.host.ipv4, backend_v4(n));
        assert_eq!(backend.host.ipv6, backend_v6(n));
        client.ns.ping(IpAddr::V4(backend_v4(n)), 1).unwrap();
        client.ns.ping(IpAddr::V6(backend_v6(n)), 1).unwrap();
        let lo = backend.ns().ip(&["addr", "show", "dev", "lo"]).unwrap();
        assert!(
            lo.contains("198.19.0.10/32") && lo.contains("2001:db8:0:ff::10/128"),
            "{lo}"
        );
        assert_eq!(
            backend
                .ns()
                .read_sysctl("net.ipv4.conf.all.arp_ignore")
                .unwrap(),
            "1"
        );
        assert_eq!(
            backend
                .ns()
                .read_sysctl("net.ipv4.conf.all.arp_announce")
                .unwrap(),
            "2"
        );
    }
    assert_eq!(backend_v6(1).to_string(), "2001:db8:0:1::11");
    lb.ns.ping(IpAddr::V4(CLIENT_V4), 1).unwrap();
    lb.ns.ping(IpAddr::V6(CLIENT_V6), 1).unwrap();

    // The client sends VIP traffic to the LB.
    let route = client
        .ns
        .ip(&["route", "get", &VIP_V4.to_string()])
        .unwrap();
    assert!(route.contains("via 198.18.0.2"), "{route}");
    let route = client
        .ns
        .ip(&["-6", "route", "get", &VIP_V6.to_string()])
        .unwrap();
    assert!(route.contains("via 2001:db8:0:1::2"), "{route}");
    // The LB knows every backend's MAC without asking.
    let neigh = lb.ns.ip(&["neigh", "show", "dev", &lb.ifname]).unwrap();
    for n in 1..=3 {
        assert!(
            neigh.contains(&format!(
                "{} lladdr 02:00:c6:12:00:{:02x} PERMANENT",
                backend_v4(n),
                10 + n
            )),
            "{neigh}"
        );
    }
}

#[test]
fn test_server_answers_http_and_udp_in_the_topology() {
    let topology = DsrTopology::with_servers(3).unwrap();
    let client = &topology.client().ns;
    for backend in topology.backends() {
        let name = backend.name();
        for ip in [IpAddr::V4(backend.host.ipv4), IpAddr::V6(backend.host.ipv6)] {
            let response = http_get(client, &url(ip, HTTP_PORT)).unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(response.body, format!("{name}\n"));
            assert_eq!(response.header("x-weir-backend"), Some(name.as_str()));
            let answer = udp_request(client, SocketAddr::new(ip, UDP_PORT), b"hello").unwrap();
            assert_eq!(answer, format!("{name} hello").into_bytes());
        }
    }
    let responses =
        http_get_keepalive(client, &url(IpAddr::V4(backend_v4(2)), HTTP_PORT), 5).unwrap();
    assert_eq!(responses.len(), 5);
    assert!(
        responses
            .iter()
            .all(|r| r.status == 200 && r.body == "backend2\n")
    );
    let body = client::curl(client, &url(IpAddr::V6(backend_v6(3)), HTTP_PORT)).unwrap();
    assert_eq!(body, "backend3\n");
}

#[test]
fn test_server_survives_bad_requests() {
    let topology = DsrTopology::with_servers(1).unwrap();
    let client = &topology.client().ns;
    let addr = SocketAddr::new(IpAddr::V4(backend_v4(1)), HTTP_PORT);
    let exchange = |request: &[u8]| -> String {
        let mut stream = client
            .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .unwrap()
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request).unwrap();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    assert!(exchange(b"garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(
        exchange(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").starts_with("HTTP/1.1 405")
    );
    assert!(exchange(&[b'A'; 40_000]).starts_with("HTTP/1.1 400"));
    assert_eq!(exchange(b""), "");
    let head = exchange(b"HEAD / HTTP/1.0\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "{head:?}"
    );
    // Two pipelined requests on one connection.
    let two =
        exchange(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(two.matches("backend1\n").count(), 2, "{two:?}");
    // Still serving.
    assert_eq!(
        http_get(client, &url(IpAddr::V4(backend_v4(1)), HTTP_PORT))
            .unwrap()
            .body,
        "backend1\n"
    );
}

/// The backends' DSR setup end to end, without weir: the LB namespace routes VIP traffic
/// to backend 2 with the kernel, and the backend answers the client directly from the VIP
/// (UDP included, which needs the server to answer from the datagram's destination).
#[test]
fn backends_answer_vip_traffic_directly() {
    let topology = DsrTopology::with_servers(2).unwrap();
    let lb = topology.lb_ns();
    lb.sysctl("net.ipv4.ip_forward", "1").unwrap();
    lb.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    for key in ["all", "default", topology.lb_ifname()] {
        lb.sysctl(&format!("net.ipv4.conf.{key}.send_redirects"), "0")
            .unwrap();
    }
    lb.ip(&[
        "route",
        "add",
        "198.19.0.0/24",
        "via",
        &backend_v4(2).to_string(),
    ])
    .unwrap();
    lb.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:0:ff::/64",
        "via",
        &backend_v6(2).to_string(),
    ])
    .unwrap();

    let client = &topology.client().ns;
    let backend2 = topology.backend(2).unwrap();
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        let before = backend2.ns().link_stats(&backend2.host.ifname).unwrap();
        assert_eq!(
            http_get(client, &url(vip, HTTP_PORT)).unwrap().body,
            "backend2\n"
        );
        let answer = udp_request(client, SocketAddr::new(vip, UDP_PORT), b"ping").unwrap();
        assert_eq!(answer, b"backend2 ping");
        let after = backend2.ns().link_stats(&backend2.host.ifname).unwrap();
        assert!(after.tx_packets > before.tx_packets);
    }
    // The LB saw (and routed) the client's packets.
    let stats = lb.link_stats(topology.lb_ifname()).unwrap();
    assert!(stats.rx_packets > 0 && stats.tx_packets > 0);
}

#[test]
fn backends_can_be_removed_and_added_back() {
    let mut topology = DsrTopology::with_servers(3).unwrap();
    let client = &topology.client().ns.name().to_owned();
    let ns2 = topology.backend(2).unwrap().ns().name().to_owned();
    topology.remove_backend(2).unwrap();
    assert!(!ns_exists(&ns2));
    assert!(topology.backend(2).is_err());
    assert_eq!(
        topology
            .backends()
            .iter()
            .map(|b| b.number)
            .collect::<Vec<_>>(),
        vec![1, 3]
    );
    let neigh = topology
        .lb_ns()
        .ip(&["neigh", "show", &backend_v4(2).to_string()])
        .unwrap();
    assert!(neigh.trim().is_empty(), "{neigh}");

    assert_eq!(topology.add_backend().unwrap(), 2);
    topology.start_server(2).unwrap();
    let response = http_get(
        &topology.client().ns,
        &url(IpAddr::V4(backend_v4(2)), HTTP_PORT),
    )
    .unwrap();
    assert_eq!(response.body, format!("{}\n", backend_name(2)));
    assert_eq!(topology.add_backend().unwrap(), 4);
    assert_eq!(topology.backends().len(), 4);

    topology.stop_server(3).unwrap();
    assert!(
        http_get(
            &topology.client().ns,
            &url(IpAddr::V4(backend_v4(3)), HTTP_PORT)
        )
        .is_err()
    );
    assert!(ns_exists(client));
}

/// Frames that XDP transmits into a veth (XDP_TX out of one end) arrive at the other end
/// only when that end has an XDP program; GRO on it is not enough (see `set_gro`).
#[test]
fn xdp_tx_into_a_veth_needs_xdp_on_the_peer() {
    let bounced = |peer_mode: &str| -> (u64, u64) {
        let na = Netns::new("xdp-a").unwrap();
        let nb = Netns::new("xdp-b").unwrap();
        let pair = veth_pair(&na, &nb).unwrap();
        let a_ip: IpAddr = "198.18.1.1".parse().unwrap();
        na.add_addr(&pair.a, a_ip, 24).unwrap();
        nb.add_addr(&pair.b, "198.18.1.2".parse().unwrap(), 24)
            .unwrap();
        na.link_up(&pair.a).unwrap();
        nb.link_up(&pair.b).unwrap();
        nb.add_neigh(&pair.b, a_ip, na.mac(&pair.a).unwrap())
            .unwrap();
        let tx = na.attach_xdp(&pair.a, XdpAction::Tx).unwrap();
        assert_eq!(tx.action(), XdpAction::Tx);
        let _peer = match peer_mode {
            "xdp" => Some(nb.attach_xdp(&pair.b, XdpAction::Pass).unwrap()),
            "gro" => {
                nb.set_gro(&pair.b, true).unwrap();
                None
            }
            _ => None,
        };
        let socket = nb
            .enter(|| std::net::UdpSocket::bind("198.18.1.2:0"))
            .unwrap()
            .unwrap();
        for _ in 0..50 {
            socket.send_to(b"bounce", "198.18.1.1:9").unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let a = na.ethtool_stats(&pair.a).unwrap();
        let b = nb.ethtool_stats(&pair.b).unwrap();
        (
            a.get("rx_queue_0_xdp_tx_errors").copied().unwrap_or(0),
            b.get("rx_queue_0_xdp_packets").copied().unwrap_or(0),
        )
    };
    let (errors, received) = bounced("none");
    assert!(
        errors >= 50 && received == 0,
        "no XDP on the peer: errors {errors}, received {received}"
    );
    let (errors, received) = bounced("xdp");
    assert!(
        errors == 0 && received >= 50,
        "XDP_PASS on the peer: errors {errors}, received {received}"
    );
}

#[test]
fn server_config_round_trips_and_rejects_bad_arguments() {
    let config = ServerConfig::from_args([
        "--name",
        "b1",
        "--http",
        "0.0.0.0:80",
        "--http=[::]:80",
        "--udp",
        "[2001:db8::1]:5300",
    ])
    .unwrap();
    assert_eq!(config.http.len(), 2);
    assert_eq!(ServerConfig::from_args(config.to_args()).unwrap(), config);
    assert!(ServerConfig::from_args(["--name", "x"]).is_err());
    assert!(ServerConfig::from_args(["--http", "0.0.0.0:80"]).is_err());
    assert!(ServerConfig::from_args(["--name", "x", "--http", "nonsense"]).is_err());
    assert!(ServerConfig::from_args(["--name", "x", "--bogus"]).is_err());
}

#[test]
fn http_urls_parse() {
    let parse = weir_testbed::client::parse_http_url;
    assert_eq!(
        parse("http://198.19.0.10/").unwrap(),
        ("198.19.0.10:80".parse().unwrap(), "/".into())
    );
    assert_eq!(
        parse("http://198.19.0.10:8080").unwrap(),
        ("198.19.0.10:8080".parse().unwrap(), "/".into())
    );
    assert_eq!(
        parse("http://[2001:db8:0:ff::10]:81/x?y").unwrap(),
        ("[2001:db8:0:ff::10]:81".parse().unwrap(), "/x?y".into())
    );
    assert!(parse("https://198.19.0.10/").is_err());
    assert!(parse("http://example.com/").is_err());
}
