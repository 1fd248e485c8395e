//! End to end: active/active load balancing with BGP + ECMP. Two weir nodes keep their
//! serving VIPs on an `[announce]` interface, a BIRD 2 next to each announces them to a
//! router (BIRD 2, ECMP with an L4 hash), and the router spreads a client's connections
//! over both nodes.
//!
//! ```text
//!  far client ── router ─────────── segment 198.18.0.0/24 (bridge) ───────────────
//!  198.18.2.100  198.18.2.1 / .0.1      │              │           │    │    │
//!                                   lb1 (.2)       lb2 (.3)      backends .11-.13
//!                                   weir + BIRD    weir + BIRD   VIP on lo, reply
//!                                                                 via the router
//! ```
//!
//! Because both nodes build the same Maglev table, a connection that the router moves
//! from one node to the other reaches the same backend: losing a node (agent, BIRD and
//! links) breaks no connection, and a node whose VIPs cannot serve withdraws them.
//! The figures (time to withdraw, slowest answer, broken connections) are printed.
//! Needs root and BIRD 2 (`cargo xtask setup`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use weir_testbed::{
    DsrTopology, Host, Netns, XdpLink,
    agent::Agent,
    bird::Bird,
    link::veth_pair,
    load::{Load, LoadSpec},
    topology::{HTTP_PORT, LB_V4, VIP_V4, VIP_V6, attach_host, backend_v4, backend_v6},
};

const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1);
const LB2_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const LB2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 3);
/// The router's other side, towards the client.
const FRONT_NET: &str = "198.18.2.0/24";
const ROUTER_FRONT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const FAR_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 100);
const BACKENDS: u8 = 3;
const ANNOUNCE_INTERFACE: &str = "weir-vips";
/// How long BGP and BFD may take to converge or to notice a loss, generously.
const CONVERGENCE: Duration = Duration::from_secs(30);
/// Long enough for an agent's first reconciliation of its announce interface.
const FIRST_RECONCILIATION: Duration = Duration::from_secs(1);
/// How long a few hundred answers may take, generously.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(20);

/// BIRD on a weir node: `protocol direct` on the announce interface, exported to the
/// router over eBGP with BFD (the configuration of docs/examples/bird.conf, with the
/// test's addresses and short timers).
fn node_bird_config(address: Ipv4Addr) -> String {
    format!(
        r#"log stderr all;
router id {address};
protocol device {{ }}
protocol direct vips {{
    ipv4;
    interface "{ANNOUNCE_INTERFACE}";
}}
protocol bfd {{
    interface "*" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 5; }};
}}
protocol bgp uplink {{
    local {address} as 65001;
    neighbor {ROUTER_V4} as 65000;
    hold time 3; keepalive time 1;
    connect delay time 1; connect retry time 1; error wait time 1, 2;
    bfd on;
    ipv4 {{
        import none;
        export where proto = "vips" && net ~ [ 198.19.0.0/24{{32,32}} ];
    }};
}}
"#
    )
}

/// BIRD on the router: both nodes as eBGP peers, their routes merged into one ECMP
/// route in the kernel.
fn router_bird_config() -> String {
    let peer = |name: &str, address: Ipv4Addr| {
        format!("protocol bgp {name} from weir_node {{ neighbor {address} as 65001; }}\n")
    };
    format!(
        r#"log stderr all;
router id {ROUTER_V4};
protocol device {{ }}
protocol kernel {{
    ipv4 {{ import none; export all; }};
    merge paths on;
}}
protocol bfd {{
    interface "*" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 5; }};
}}
template bgp weir_node {{
    local {ROUTER_V4} as 65000;
    hold time 3; keepalive time 1;
    connect delay time 1; connect retry time 1; error wait time 1, 2;
    bfd on;
    ipv4 {{
        import where net ~ [ 198.19.0.0/24{{32,32}} ];
        export none;
    }};
}}
"#
    ) + &peer("lb1", LB_V4)
        + &peer("lb2", LB2_V4)
}

/// VIP web (the three backends) on `interface`, announced, then `extra` TOML.
fn agent_config(interface: &str, extra: &str) -> String {
    let mut text = format!(
        "[agent]\ninterfaces = [\"{interface}\"]\n\n[announce]\ninterface = \"{ANNOUNCE_INTERFACE}\"\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP_V4}\"\nport = {HTTP_PORT}\ntable_size = 1021\n"
    );
    for n in 1..=BACKENDS {
        text += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend_v4(n));
    }
    text + extra
}

/// A weir node: its agent and its BIRD (gone once the node is lost).
struct Node {
    bird: Option<Bird>,
    agent: Option<Agent>,
    address: Ipv4Addr,
}

impl Node {
    /// Starts the node's agent, with `extra` TOML after the VIP's backends.
    fn start(host: &Host, extra: &str) -> Node {
        let agent =
            Agent::start(&host.ns, &agent_config(&host.ifname, extra)).expect("the agent starts");
        let bird = Bird::start(&host.ns, &node_bird_config(host.ipv4)).expect("BIRD starts");
        Node {
            bird: Some(bird),
            agent: Some(agent),
            address: host.ipv4,
        }
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("the node runs")
    }

    /// `weir --json ARGS…` against this node's agent.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.agent().cli(&all).unwrap();
        assert!(
            output.status.success(),
            "weir {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("the CLI prints JSON with --json")
    }

    /// Packets the node forwarded for the VIP.
    fn vip_packets(&self) -> u64 {
        let stats = self.json(&["stats"]);
        stats["vips"]
            .as_array()
            .and_then(|vips| vips.iter().find(|vip| vip["name"] == "web"))
            .and_then(|vip| vip["traffic"]["packets"].as_u64())
            .unwrap_or_else(|| panic!("no counters for VIP web: {stats}"))
    }

    /// The addresses the agent reports as announced.
    fn announced(&self) -> Vec<String> {
        let status = self.json(&["status"]);
        status["announce"]["addresses"]
            .as_array()
            .unwrap_or_else(|| panic!("no announce status: {status}"))
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    }

    /// Puts every backend of VIP web in `state` ("maint", "ready") on this node.
    fn set_backends(&self, state: &str) {
        for n in 1..=BACKENDS {
            set_backend(self.agent(), "web", &backend_v4(n).to_string(), state);
        }
    }
}

/// `weir backend STATE VIP ADDRESS`.
fn set_backend(agent: &Agent, vip: &str, address: &str, state: &str) {
    let output = agent.cli(&["backend", state, vip, address]).unwrap();
    assert!(
        output.status.success(),
        "weir backend {state} {vip} {address}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The test network, the two nodes and the router. Field order is drop order: the
/// processes stop before their namespaces go.
struct Cluster {
    nodes: [Node; 2],
    router_bird: Bird,
    _lb2_port_xdp: XdpLink,
    _lb2: Host,
    far_client: Netns,
    router: Host,
    topology: DsrTopology,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::with_agent_extra("")
    }

    /// The cluster with `extra` TOML at the end of both agents' configuration.
    fn with_agent_extra(extra: &str) -> Cluster {
        let topology = DsrTopology::with_servers(BACKENDS).expect("the test bed needs root");
        let switch = topology.switch();
        let router = attach_host(switch, topology.bridge(), "router", ROUTER_V4, ROUTER_V6)
            .expect("the router joins the segment");
        let lb2 = attach_host(switch, topology.bridge(), "lb2", LB2_V4, LB2_V6).expect("lb2 joins");
        // As for the first LB: frames its XDP program transmits need NAPI on the port.
        let lb2_port_xdp = switch
            .enable_veth_xdp_receive(&lb2.switch_port)
            .expect("XDP_PASS on lb2's bridge port");

        // The client sits behind the router, on a link of its own.
        let far_client = Netns::new("far").unwrap();
        let front = veth_pair(&router.ns, &far_client).unwrap();
        for (ns, dev, address) in [
            (&router.ns, &front.a, ROUTER_FRONT_V4),
            (&far_client, &front.b, FAR_CLIENT_V4),
        ] {
            // Full checksums on the wire, as for every test bed host (see topology.rs).
            ns.run(&["ethtool", "-K", dev, "tx", "off"]).unwrap();
            ns.add_addr(dev, IpAddr::V4(address), 24).unwrap();
            ns.link_up(dev).unwrap();
        }
        far_client
            .ip(&[
                "route",
                "add",
                "default",
                "via",
                &ROUTER_FRONT_V4.to_string(),
            ])
            .unwrap();
        for backend in topology.backends() {
            backend
                .ns()
                .add_route(FRONT_NET, IpAddr::V4(ROUTER_V4))
                .unwrap();
        }
        router.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
        // ECMP over the 5-tuple, so the connections of one client spread over both nodes.
        router
            .ns
            .sysctl("net.ipv4.fib_multipath_hash_policy", "1")
            .unwrap();

        let router_bird = Bird::start(&router.ns, &router_bird_config()).expect("BIRD starts");
        let nodes = [Node::start(topology.lb(), extra), Node::start(&lb2, extra)];
        Cluster {
            nodes,
            router_bird,
            _lb2_port_xdp: lb2_port_xdp,
            _lb2: lb2,
            far_client,
            router,
            topology,
        }
    }

    /// The next hops of the router's route to the VIP, sorted (none: no route).
    fn next_hops(&self) -> Vec<Ipv4Addr> {
        let out = self
            .router
            .ns
            .ip(&["-j", "-4", "route", "show", &format!("{VIP_V4}/32")])
            .unwrap();
        let routes: Value = serde_json::from_str(&out).unwrap();
        let mut hops: Vec<Ipv4Addr> = routes
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|route| match route["nexthops"].as_array() {
                Some(hops) => hops.iter().map(|hop| hop["gateway"].clone()).collect(),
                None => vec![route["gateway"].clone()],
            })
            .filter_map(|gateway| gateway.as_str()?.parse().ok())
            .collect();
        hops.sort();
        hops
    }

    /// Waits until the router's next hops for the VIP are `expected`; returns how long
    /// that took.
    fn wait_for_next_hops(&self, expected: &[Ipv4Addr]) -> Duration {
        let start = Instant::now();
        while self.next_hops() != expected {
            assert!(
                start.elapsed() < CONVERGENCE,
                "the router's next hops for {VIP_V4} are {:?}, not {expected:?}, after {CONVERGENCE:?}\n{}\n{}",
                self.next_hops(),
                self.router_bird
                    .birdc(&["show", "protocols", "all"])
                    .unwrap_or_default(),
                self.router_bird.log(),
            );
            sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }

    /// Both nodes' addresses, sorted.
    fn both(&self) -> Vec<Ipv4Addr> {
        let mut both = vec![self.nodes[0].address, self.nodes[1].address];
        both.sort();
        both
    }

    fn start_load(&self, streams: usize) -> Load {
        let load = Load::start(
            &self.far_client,
            LoadSpec {
                target: SocketAddr::new(VIP_V4.into(), HTTP_PORT),
                streams,
                stream_interval: Duration::from_millis(50),
                short_workers: 0,
            },
        )
        .expect("the client load starts");
        load.wait_for_answers(200, TRAFFIC_TIMEOUT).unwrap();
        load
    }
}

#[test]
fn losing_an_lb_node_breaks_no_connection() {
    let mut cluster = Cluster::new();
    let converged = cluster.wait_for_next_hops(&cluster.both());
    eprintln!("both nodes announced, ECMP route installed {converged:?} after start");

    let load = cluster.start_load(32);
    sleep(Duration::from_secs(1));
    let before: Vec<u64> = cluster.nodes.iter().map(Node::vip_packets).collect();
    assert!(
        before.iter().all(|packets| *packets > 0),
        "the router spreads the connections over both nodes: {before:?} packets"
    );
    eprintln!("packets forwarded per node before the loss: {before:?}");

    // Node 1 dies: its link goes down first (a dead machine says nothing: no BGP
    // notification, no TCP FIN from its BIRD), then its agent and BIRD are killed. The
    // router notices through BFD; the pinned XDP program stays but receives nothing.
    let lost = Instant::now();
    let lb1 = cluster.topology.lb();
    lb1.ns.link_down(&lb1.ifname).unwrap();
    let node = &mut cluster.nodes[0];
    node.agent.take().unwrap().kill().unwrap();
    node.bird.take().unwrap().kill().unwrap();
    let survivor = vec![cluster.nodes[1].address];
    cluster.wait_for_next_hops(&survivor);
    let withdrawn = lost.elapsed();
    let session = cluster
        .router_bird
        .birdc(&["show", "protocols", "lb1"])
        .unwrap();
    assert!(!session.contains("Established"), "{session}");

    // The connections node 1 carried go on through node 2, to the same backends.
    let after = cluster.nodes[1].vip_packets();
    load.wait_for_answers(500, TRAFFIC_TIMEOUT).unwrap();
    sleep(Duration::from_secs(2));
    let report = load.stop();
    eprintln!("{report}");
    eprintln!(
        "node lost: route withdrawn by the router after {:.3}s; {} of {} connections broken, \
         {} moved to another backend; slowest answer {:.3}s",
        withdrawn.as_secs_f64(),
        report.streams_broken,
        report.spec.streams,
        report.streams_moved,
        report.slowest_answer.as_secs_f64()
    );
    report.assert_clean();
    assert!(
        cluster.nodes[1].vip_packets() > after,
        "node 2 carries the traffic"
    );
}

#[test]
fn a_node_whose_vips_cannot_serve_withdraws_them() {
    let cluster = Cluster::new();
    let lb1 = &cluster.nodes[0];
    let bird = lb1.bird.as_ref().expect("node 1 runs");
    // No backend takes new flows on node 1. Readied one at a time, node 1 would be
    // announced with the first one alone in its Maglev table, and the connections moved to
    // it would reach other backends: BIRD holds the route back until all are ready.
    withdrawn_then_announced_again(
        &cluster,
        "every backend of node 1 in maint",
        || lb1.set_backends("maint"),
        || {
            bird.birdc(&["disable", "vips"]).unwrap();
            lb1.set_backends("ready");
            bird.birdc(&["enable", "vips"]).unwrap();
        },
    );
}

#[test]
fn a_node_whose_health_checks_fail_withdraws_the_vip_until_they_pass() {
    // Fast checks: 200 ms apart, 300 ms timeout, 2 to rise, 2 to fall.
    let cluster = Cluster::with_agent_extra(
        "[vip.health]\ninterval = \"200ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n",
    );
    // Only node 1's checks fail: its own stack loses what it sends to the backends'
    // port; node 2 checks the same backends and finds them UP.
    let lb1 = cluster.topology.lb_ns();
    withdrawn_then_announced_again(
        &cluster,
        "node 1's health checks failing (fall 2 x 200 ms + 300 ms timeout, rise 2 x 200 ms)",
        || lb1.block_tcp_output(HTTP_PORT).unwrap(),
        || lb1.unblock_tcp_output().unwrap(),
    );
}

/// Node 1's VIP stops serving by `unserve`: node 1 withdraws it, node 2 keeps it. With
/// every connection through node 2, `serve` makes it serve again: node 1 announces it
/// again and the router moves a share of the connections back, each to the backend it
/// had. Prints the times, `cause` naming what `unserve` did.
fn withdrawn_then_announced_again(
    cluster: &Cluster,
    cause: &str,
    unserve: impl FnOnce(),
    serve: impl FnOnce(),
) {
    cluster.wait_for_next_hops(&cluster.both());
    let [lb1, lb2] = &cluster.nodes;
    assert_eq!(lb1.announced(), [VIP_V4.to_string()]);

    let unserving = Instant::now();
    unserve();
    cluster.wait_for_next_hops(&[lb2.address]);
    let withdrawn = unserving.elapsed();
    assert!(lb1.announced().is_empty());
    assert_eq!(lb2.announced(), [VIP_V4.to_string()]);
    let addresses = cluster
        .topology
        .lb_ns()
        .ip(&["-j", "addr", "show", "dev", ANNOUNCE_INTERFACE])
        .unwrap();
    assert!(!addresses.contains(&VIP_V4.to_string()), "{addresses}");

    let load = cluster.start_load(32);
    let serving = Instant::now();
    serve();
    cluster.wait_for_next_hops(&cluster.both());
    let announced = serving.elapsed();
    assert_eq!(lb1.announced(), [VIP_V4.to_string()]);
    let before = lb1.vip_packets();
    load.wait_for_answers(500, TRAFFIC_TIMEOUT).unwrap();
    let report = load.stop();
    eprintln!("{report}");
    eprintln!(
        "{cause}: withdrawn {:.3}s after, announced again {:.3}s after the cause went; \
         {} of {} connections broken, slowest answer {:.3}s",
        withdrawn.as_secs_f64(),
        announced.as_secs_f64(),
        report.streams_broken,
        report.spec.streams,
        report.slowest_answer.as_secs_f64()
    );
    report.assert_clean();
    assert!(
        lb1.vip_packets() > before,
        "the router moved connections back to node 1"
    );
}

#[test]
fn a_graceful_stop_withdraws_the_node() {
    let mut cluster = Cluster::new();
    cluster.wait_for_next_hops(&cluster.both());
    let log = cluster.nodes[0].agent.take().unwrap().stop().unwrap();
    assert!(log.contains("deleted the announce link"), "{log}");
    cluster.wait_for_next_hops(&[cluster.nodes[1].address]);
    let links = cluster.topology.lb_ns().ip(&["link", "show"]).unwrap();
    assert!(!links.contains(ANNOUNCE_INTERFACE), "{links}");
}

/// Ends a VIP's table: its backends are not health-checked.
const NO_CHECKS: &str = "[vip.health]\nkind = \"none\"\n";

/// The addresses on the LB's announce interface, sorted (none if it does not exist).
fn link_addresses(ns: &Netns) -> Vec<String> {
    let Ok(out) = ns.ip(&["-j", "addr", "show", "dev", ANNOUNCE_INTERFACE]) else {
        return Vec::new();
    };
    let links: Value = serde_json::from_str(&out).unwrap();
    let mut addresses: Vec<String> = links[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    addresses.sort();
    addresses
}

#[test]
fn the_announce_interface_holds_exactly_the_serving_vips() {
    let topology = DsrTopology::with_backends(BACKENDS).expect("the test bed needs root");
    // VIP tls shares web's address; web6 is IPv6. No server runs on the backends: the
    // admin states alone decide what serves, so the VIPs are not health-checked.
    let extra = format!(
        "{NO_CHECKS}\
         [[vip]]\nname = \"tls\"\naddress = \"{VIP_V4}\"\nport = 443\ntable_size = 1021\n\
         [[vip.backend]]\naddress = \"{}\"\n{NO_CHECKS}\
         [[vip]]\nname = \"web6\"\naddress = \"{VIP_V6}\"\nport = 80\ntable_size = 1021\n\
         [[vip.backend]]\naddress = \"{}\"\n{NO_CHECKS}",
        backend_v4(1),
        backend_v6(1)
    );
    let agent = Agent::start(
        topology.lb_ns(),
        &agent_config(topology.lb_ifname(), &extra),
    )
    .expect("the agent starts");
    let ns = topology.lb_ns();
    let v4 = format!("{VIP_V4}/32");
    let v6 = format!("{VIP_V6}/128");
    let wait_for = |expected: &[&str], what: &str| {
        let start = Instant::now();
        while link_addresses(ns) != expected {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{what}: {:?} on {ANNOUNCE_INTERFACE}, expected {expected:?}\n{}",
                link_addresses(ns),
                agent.log()
            );
            sleep(Duration::from_millis(50));
        }
    };
    wait_for(&[&v4, &v6], "at start");

    // An address stays while one of its VIPs serves.
    for n in 1..=BACKENDS {
        set_backend(&agent, "web", &backend_v4(n).to_string(), "maint");
    }
    set_backend(&agent, "web6", &backend_v6(1).to_string(), "maint");
    wait_for(&[&v4], "web and web6 without backends");
    set_backend(&agent, "tls", &backend_v4(1).to_string(), "drain");
    wait_for(&[], "no VIP serves");
    set_backend(&agent, "tls", &backend_v4(1).to_string(), "ready");
    wait_for(&[&v4], "tls serves again");

    // Someone else's address goes, a removed VIP comes back (within the reconcile interval).
    ns.ip(&["addr", "add", "198.19.0.99/32", "dev", ANNOUNCE_INTERFACE])
        .unwrap();
    ns.ip(&["addr", "del", &v4, "dev", ANNOUNCE_INTERFACE])
        .unwrap();
    wait_for(&[&v4], "after others changed the addresses");
    // A deleted interface is made again.
    ns.ip(&["link", "del", ANNOUNCE_INTERFACE]).unwrap();
    wait_for(&[&v4], "after the interface was deleted");
    let log = agent.log();
    assert!(
        log.contains("removed an address the agent did not put there")
            && log.contains("someone removed an announced address; added it back"),
        "{log}"
    );
    agent.stop().unwrap();
    assert!(link_addresses(ns).is_empty());
}

#[test]
fn an_interface_of_another_kind_is_refused_at_start() {
    let topology = DsrTopology::with_backends(1).expect("the test bed needs root");
    topology
        .lb_ns()
        .ip(&["link", "add", ANNOUNCE_INTERFACE, "type", "bridge"])
        .unwrap();
    let error = match Agent::start(topology.lb_ns(), &agent_config(topology.lb_ifname(), "")) {
        Ok(_) => panic!("the agent started"),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        error.contains("announce.interface \"weir-vips\" exists and is a bridge link"),
        "{error}"
    );
    // Nothing was attached.
    let link = topology
        .lb_ns()
        .ip(&["link", "show", topology.lb_ifname()])
        .unwrap();
    assert!(!link.contains("xdp"), "{link}");
}

#[test]
fn the_example_bird_configurations_parse() {
    for example in ["bird.conf", "router-bird.conf"] {
        let path = weir_testbed::workspace_root()
            .join("docs/examples")
            .join(example);
        let output = std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("bird runs (install bird2: `cargo xtask setup`)");
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn a_killed_agent_leaves_the_announcement_and_the_next_one_keeps_it() {
    let topology = DsrTopology::with_backends(BACKENDS).expect("the test bed needs root");
    let ns = topology.lb_ns();
    let config = agent_config(topology.lb_ifname(), "");
    let v4 = format!("{VIP_V4}/32");
    let first = Agent::start(ns, &config).expect("the agent starts");
    let start = Instant::now();
    while link_addresses(ns) != [v4.as_str()] {
        assert!(start.elapsed() < Duration::from_secs(15), "{}", first.log());
        sleep(Duration::from_millis(20));
    }
    assert!(first.log().contains("announced address"), "{}", first.log());
    // Like the pinned dataplane, the announcement outlives a killed agent.
    first.kill().unwrap();
    assert_eq!(link_addresses(ns), [v4.as_str()]);
    // The next agent finds it right: no withdrawal, no change at all.
    let second = Agent::start(ns, &config).expect("the agent starts again");
    sleep(FIRST_RECONCILIATION);
    assert_eq!(link_addresses(ns), [v4.as_str()]);
    let log = second.stop().unwrap();
    assert!(
        !log.contains("announced address") && !log.contains("withdrawn:"),
        "{log}"
    );
}
