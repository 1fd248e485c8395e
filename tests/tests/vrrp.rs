//! End to end: VIP failover with VRRP version 3 between two weir nodes (LB1, LB2) on one
//! segment with a client and two backends, and with keepalived 2.2.7 as the peer. The
//! client reaches the VIPs on the segment (it asks ARP for them), so a VIP goes to
//! whichever LB holds its address.
//!
//! Takeover times and failed client requests are printed (`--nocapture`); the assertions
//! only check behaviour, with generous time bounds.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use weir_testbed::{
    DsrTopology, MacAddr, Netns,
    agent::Agent,
    keepalived::{self, Keepalived},
    topology::{HTTP_PORT, LB_V4, LB2_V4, VIP_V4, VIP_V6, backend_v4, backend_v6},
};

const VRID: u8 = 51;
/// LB1's priority is the higher one: it is master when both run.
const LB1_PRIORITY: u8 = 150;
const LB2_PRIORITY: u8 = 100;
/// 100 ms adverts: LB2's Master_Down_Interval is 300 ms + (256-100)*100 ms/256 ≈ 361 ms.
const ADVERT_INTERVAL_MS: u64 = 100;

/// The agent configuration of one LB: VIP "web" (and "web6" with `ipv6`) on backends 1
/// and 2, and `[vrrp]` with `extra` lines.
fn config(ifname: &str, priority: u8, ipv6: bool, extra: &str) -> String {
    let mut text = dataplane_config(ifname, ipv6);
    text += &format!(
        "[vrrp]\ninterface = \"{ifname}\"\nvrid = {VRID}\npriority = {priority}\n\
         advert_interval = \"{ADVERT_INTERVAL_MS}ms\"\ngarp_refresh = \"0s\"\n{extra}"
    );
    text
}

/// The agent configuration without `[vrrp]` (a node whose VIPs keepalived moves).
fn dataplane_config(ifname: &str, ipv6: bool) -> String {
    let mut text = format!("[agent]\ninterfaces = [\"{ifname}\"]\n");
    let mut vips = vec![("web", IpAddr::V4(VIP_V4))];
    if ipv6 {
        vips.push(("web6", IpAddr::V6(VIP_V6)));
    }
    for (name, address) in vips {
        text +=
            &format!("[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {HTTP_PORT}\n");
        for n in 1..=2 {
            let backend = match address {
                IpAddr::V4(_) => IpAddr::V4(backend_v4(n)),
                IpAddr::V6(_) => IpAddr::V6(backend_v6(n)),
            };
            text += &format!("[[vip.backend]]\naddress = \"{backend}\"\n");
        }
    }
    text
}

/// Two LBs, a client and two backends with their servers; the client routes the VIPs
/// on the segment.
fn topology() -> DsrTopology {
    weir_testbed::require_root().expect("these tests need root");
    let mut topology = DsrTopology::with_servers(2).expect("topology");
    topology.add_peer_lb().expect("second LB");
    topology.route_vips_on_link().expect("on-link VIP routes");
    topology
}

fn lb1(topology: &DsrTopology, ipv6: bool, extra: &str) -> Agent {
    let config = config(topology.lb_ifname(), LB1_PRIORITY, ipv6, extra);
    Agent::start(topology.lb_ns(), &config).expect("LB1 agent")
}

fn lb2(topology: &DsrTopology, ipv6: bool, extra: &str) -> Agent {
    let peer = topology.peer_lb().expect("second LB");
    let config = config(&peer.ifname, LB2_PRIORITY, ipv6, extra);
    Agent::start(&peer.ns, &config).expect("LB2 agent")
}

/// `weir status` as JSON.
fn status(agent: &Agent) -> Value {
    let output = agent.cli(&["--json", "status"]).expect("weir status");
    assert!(output.status.success(), "weir status failed: {output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON status")
}

/// The state of the agent's instance of `family` ("ipv4", "ipv6").
fn state_of(agent: &Agent, family: &str) -> String {
    let status = status(agent);
    let instances = status["vrrp"]["instances"]
        .as_array()
        .expect("VRRP instances");
    let instance = instances
        .iter()
        .find(|i| i["family"] == family)
        .unwrap_or_else(|| panic!("no {family} instance in {status}"));
    instance["state"].as_str().expect("state").to_owned()
}

fn state(agent: &Agent) -> String {
    state_of(agent, "ipv4")
}

/// Polls `check` every 10 ms until it holds; returns how long that took, or None after
/// `timeout`.
fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The MAC address the client's neighbour entry for `vip` points at, if any.
fn client_neighbour(topology: &DsrTopology, vip: IpAddr) -> Option<MacAddr> {
    let client = topology.client();
    let json = client
        .ns
        .ip(&[
            "-j",
            "neigh",
            "show",
            &vip.to_string(),
            "dev",
            &client.ifname,
        ])
        .ok()?;
    let entries: Value = serde_json::from_str(&json).ok()?;
    entries.as_array()?.first()?["lladdr"]
        .as_str()?
        .parse()
        .ok()
}

/// Whether `vip` is on the interface `ifname` inside `ns`.
fn holds(ns: &Netns, ifname: &str, vip: IpAddr) -> bool {
    ns.ip(&["-o", "addr", "show", "dev", ifname])
        .is_ok_and(|out| out.contains(&format!(" {vip}/")))
}

/// One HTTP request to `vip` with short timeouts, from the current thread's namespace;
/// true if answered.
fn request(vip: IpAddr) -> bool {
    let addr = SocketAddr::new(vip, HTTP_PORT);
    let exchange = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(300))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(answer.starts_with(b"HTTP/1.1 200"))
    };
    exchange().unwrap_or(false)
}

/// One request from the client.
fn client_request(topology: &DsrTopology, vip: IpAddr) -> bool {
    topology.client().ns.enter(|| request(vip)).unwrap_or(false)
}

/// A client sending one request to the VIP every 20 ms in the background.
struct Prober {
    running: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Vec<(Instant, bool)>>>,
}

impl Prober {
    fn start(topology: &DsrTopology, vip: IpAddr) -> Prober {
        let namespace = std::fs::File::open(topology.client().ns.path()).expect("client netns");
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        let thread = thread::spawn(move || {
            // This thread lives in the client's namespace until it ends.
            // SAFETY: setns on a namespace file this thread holds open.
            let entered = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "cannot enter the client's namespace");
            let mut results = Vec::new();
            while flag.load(Ordering::Relaxed) {
                results.push((Instant::now(), request(vip)));
                thread::sleep(Duration::from_millis(20));
            }
            results
        });
        Prober {
            running,
            thread: Some(thread),
        }
    }

    /// Stops; returns (requests, failed requests, the first success after `since`).
    fn finish(mut self, since: Instant) -> (usize, usize, Option<Duration>) {
        self.running.store(false, Ordering::Relaxed);
        let results = self.thread.take().expect("running").join().expect("prober");
        let failed = results.iter().filter(|(_, ok)| !ok).count();
        let last_failure = results
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(at, _)| *at)
            .max();
        let recovered = results
            .iter()
            .find(|(at, ok)| *ok && *at > last_failure.unwrap_or(since).max(since))
            .map(|(at, _)| at.duration_since(since));
        (results.len(), failed, recovered)
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Both nodes up: LB1 (higher priority) is master and holds the VIP, LB2 is backup.
fn settle(topology: &DsrTopology, lb1: &Agent, lb2: &Agent) {
    let peer = topology.peer_lb().expect("second LB");
    let settled = wait_for(Duration::from_secs(10), || {
        state(lb1) == "master" && state(lb2) == "backup"
    });
    assert!(
        settled.is_some(),
        "LB1 {} / LB2 {}:\n{}\n{}",
        state(lb1),
        state(lb2),
        lb1.log(),
        lb2.log()
    );
    assert!(holds(
        topology.lb_ns(),
        topology.lb_ifname(),
        IpAddr::V4(VIP_V4)
    ));
    assert!(!holds(&peer.ns, &peer.ifname, IpAddr::V4(VIP_V4)));
    assert!(
        wait_for(Duration::from_secs(5), || client_request(
            topology,
            IpAddr::V4(VIP_V4)
        ))
        .is_some(),
        "the client cannot reach the VIP through LB1"
    );
    assert_eq!(
        client_neighbour(topology, IpAddr::V4(VIP_V4)),
        Some(topology.lb().mac)
    );
}

#[test]
fn kill_9_of_the_master_hands_the_vip_to_the_backup() {
    let topology = topology();
    let lb2 = lb2(&topology, false, "");
    let lb1 = lb1(&topology, false, "");
    settle(&topology, &lb1, &lb2);
    let peer_mac = topology.peer_lb().expect("second LB").mac;

    let prober = Prober::start(&topology, IpAddr::V4(VIP_V4));
    thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    lb1.kill().expect("kill -9 LB1");
    wait_for(Duration::from_secs(5), || state(&lb2) == "master")
        .expect("LB2 did not become master");
    let master = killed.elapsed();
    let neighbour = wait_for(Duration::from_secs(5), || {
        client_neighbour(&topology, IpAddr::V4(VIP_V4)) == Some(peer_mac)
    })
    .expect("the client's neighbour entry for the VIP did not move to LB2");
    thread::sleep(Duration::from_millis(500));
    let (requests, failed, recovered) = prober.finish(killed);
    println!(
        "kill -9: LB2 master after {} ms (master-down interval ~361 ms), client ARP entry moved after {} ms, \
         client served again after {:?} ms; {failed} of {requests} requests failed",
        ms(master),
        ms(master + neighbour),
        recovered.map(ms)
    );
    // Generous: the master-down interval is ~361 ms.
    assert!(master < Duration::from_secs(2), "takeover took {master:?}");
    assert!(
        recovered.is_some(),
        "the client was not served after the takeover"
    );
    assert!(client_request(&topology, IpAddr::V4(VIP_V4)));

    // The killed agent left the VIP on its interface; the next one removes it as it
    // enters BACKUP (without preempt, it stays there).
    assert!(holds(
        topology.lb_ns(),
        topology.lb_ifname(),
        IpAddr::V4(VIP_V4)
    ));
    let lb1 = self::lb1(&topology, false, "preempt = false\n");
    assert!(
        wait_for(Duration::from_secs(3), || !holds(
            topology.lb_ns(),
            topology.lb_ifname(),
            IpAddr::V4(VIP_V4)
        ))
        .is_some(),
        "the restarted agent did not clean the left-over VIP"
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        (state(&lb1).as_str(), state(&lb2).as_str()),
        ("backup", "master")
    );
}

/// How many state changes the agent's instance of `family` has gone through so far.
fn transitions(agent: &Agent, family: &str) -> usize {
    let status = status(agent);
    status["vrrp"]["instances"]
        .as_array()
        .expect("VRRP instances")
        .iter()
        .find(|i| i["family"] == family)
        .and_then(|i| i["transitions"].as_array())
        .map_or(0, Vec::len)
}

#[test]
fn graceful_stop_hands_over_at_once_and_preempt_brings_the_master_back_without_flapping() {
    let topology = topology();
    let lb2 = lb2(&topology, true, "");
    let lb1 = lb1(&topology, true, "");
    settle(&topology, &lb1, &lb2);
    let peer = topology.peer_lb().expect("second LB");
    for family in ["ipv4", "ipv6"] {
        assert_eq!(state_of(&lb1, family), "master");
        assert_eq!(state_of(&lb2, family), "backup");
    }
    assert!(holds(
        topology.lb_ns(),
        topology.lb_ifname(),
        IpAddr::V6(VIP_V6)
    ));

    // Graceful stop: priority 0, LB2 takes over after its Skew_Time (~61 ms).
    let prober = Prober::start(&topology, IpAddr::V4(VIP_V4));
    thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    lb1.stop().expect("graceful stop of LB1");
    wait_for(Duration::from_secs(5), || state(&lb2) == "master")
        .expect("LB2 did not become master");
    let master = stopped.elapsed();
    thread::sleep(Duration::from_millis(500));
    let (requests, failed, recovered) = prober.finish(stopped);
    println!(
        "graceful stop: LB2 master {} ms after SIGTERM (advert interval {ADVERT_INTERVAL_MS} ms); \
         client served again after {:?} ms; {failed} of {requests} requests failed",
        ms(master),
        recovered.map(ms)
    );
    assert!(master < Duration::from_secs(1), "takeover took {master:?}");
    assert!(
        !holds(topology.lb_ns(), topology.lb_ifname(), IpAddr::V4(VIP_V4)),
        "LB1 left the VIP behind"
    );
    assert!(holds(&peer.ns, &peer.ifname, IpAddr::V4(VIP_V4)));
    assert!(holds(&peer.ns, &peer.ifname, IpAddr::V6(VIP_V6)));
    assert!(client_request(&topology, IpAddr::V4(VIP_V4)));
    assert!(client_request(&topology, IpAddr::V6(VIP_V6)));

    // LB1 comes back: it preempts, LB2 gives way, and then nothing moves.
    let restarted = Instant::now();
    let lb1 = self::lb1(&topology, true, "");
    let back = wait_for(Duration::from_secs(5), || {
        state(&lb1) == "master" && state(&lb2) == "backup"
    })
    .expect("LB1 did not take the VIP back");
    println!(
        "preempt: LB1 master again {} ms after its restart",
        ms(back)
    );
    assert!(restarted.elapsed() < Duration::from_secs(10));
    let before = (transitions(&lb1, "ipv4"), transitions(&lb2, "ipv4"));
    for _ in 0..30 {
        assert_eq!(
            (state(&lb1).as_str(), state(&lb2).as_str()),
            ("master", "backup")
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        (transitions(&lb1, "ipv4"), transitions(&lb2, "ipv4")),
        before,
        "a node changed state while both were up"
    );
    assert!(
        wait_for(Duration::from_secs(3), || {
            client_neighbour(&topology, IpAddr::V4(VIP_V4)) == Some(topology.lb().mac)
        })
        .is_some()
    );
    assert!(client_request(&topology, IpAddr::V4(VIP_V4)));
    assert!(client_request(&topology, IpAddr::V6(VIP_V6)));
}

/// An nftables table in `ns` that drops VRRP (IP protocol 112) both ways.
fn cut_vrrp(ns: &Netns) {
    for command in [
        "add table inet weir_vrrp_cut",
        "add chain inet weir_vrrp_cut input { type filter hook input priority 0 ; }",
        "add chain inet weir_vrrp_cut output { type filter hook output priority 0 ; }",
        "add rule inet weir_vrrp_cut input meta l4proto 112 drop",
        "add rule inet weir_vrrp_cut output meta l4proto 112 drop",
    ] {
        let mut argv = vec!["nft"];
        argv.extend(command.split(' '));
        ns.run(&argv).expect("nft");
    }
}

#[test]
fn split_brain_heals_to_one_master_that_re_announces() {
    let topology = topology();
    let lb2 = lb2(&topology, false, "");
    let lb1 = lb1(&topology, false, "");
    settle(&topology, &lb1, &lb2);
    let peer = topology.peer_lb().expect("second LB");
    // The client's entry must be older than its locktime (1 s) for a GARP to move it.
    thread::sleep(Duration::from_millis(1200));

    cut_vrrp(&peer.ns);
    let split = wait_for(Duration::from_secs(5), || state(&lb2) == "master")
        .expect("LB2 did not become master without adverts");
    assert_eq!(state(&lb1), "master", "split brain: both are masters");
    let stolen = wait_for(Duration::from_secs(3), || {
        client_neighbour(&topology, IpAddr::V4(VIP_V4)) == Some(peer.mac)
    });
    println!(
        "split brain after {} ms; LB2's gratuitous ARP moved the client after {:?} ms",
        ms(split),
        stolen.map(ms)
    );
    assert!(
        stolen.is_some(),
        "the client never saw LB2's gratuitous ARP"
    );

    thread::sleep(Duration::from_millis(1200));
    peer.ns
        .run(&["nft", "delete", "table", "inet", "weir_vrrp_cut"])
        .expect("restore VRRP");
    let healed = wait_for(Duration::from_secs(5), || {
        state(&lb1) == "master" && state(&lb2) == "backup"
    })
    .expect("no single master after the split brain");
    let announced = wait_for(Duration::from_secs(3), || {
        client_neighbour(&topology, IpAddr::V4(VIP_V4)) == Some(topology.lb().mac)
    });
    println!(
        "healed: one master after {} ms, the client back on LB1 after {:?} ms",
        ms(healed),
        announced.map(|d| ms(healed + d))
    );
    assert!(
        announced.is_some(),
        "the client never saw LB1's re-announcement"
    );
    assert!(!holds(&peer.ns, &peer.ifname, IpAddr::V4(VIP_V4)));
    for _ in 0..10 {
        assert_eq!(
            (state(&lb1).as_str(), state(&lb2).as_str()),
            ("master", "backup")
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(client_request(&topology, IpAddr::V4(VIP_V4)));
}

#[test]
fn a_node_whose_vips_cannot_serve_gives_way_to_its_peer() {
    let topology = topology();
    // 150 - 60 = 90 < 100: LB2 preempts.
    let lb2 = lb2(&topology, false, "track_weight = 60\n");
    let lb1 = lb1(&topology, false, "track_weight = 60\n");
    settle(&topology, &lb1, &lb2);
    assert_eq!(status(&lb1)["vrrp"]["effective_priority"], 150);

    let started = Instant::now();
    for n in 1..=2 {
        let backend = IpAddr::V4(backend_v4(n)).to_string();
        let output = lb1
            .cli(&["backend", "maint", "web", &backend])
            .expect("weir backend maint");
        assert!(output.status.success(), "{output:?}");
    }
    wait_for(Duration::from_secs(5), || {
        state(&lb2) == "master" && state(&lb1) == "backup"
    })
    .expect("LB1 did not give way");
    let gave_way = started.elapsed();
    println!(
        "tracking: LB2 master {} ms after `weir backend maint` of both backends on LB1 started",
        ms(gave_way)
    );
    assert_eq!(status(&lb1)["vrrp"]["effective_priority"], 90);
    assert!(client_request(&topology, IpAddr::V4(VIP_V4)));

    // Back in service: LB1 preempts again.
    for n in 1..=2 {
        let backend = IpAddr::V4(backend_v4(n)).to_string();
        assert!(
            lb1.cli(&["backend", "ready", "web", &backend])
                .expect("weir")
                .status
                .success()
        );
    }
    wait_for(Duration::from_secs(5), || {
        state(&lb1) == "master" && state(&lb2) == "backup"
    })
    .expect("LB1 did not take the VIP back");
}

/// `[vrrp]` extra lines for the tracking tests: one VIP without a serving backend takes
/// 150 - 60 = 90 < 100, so LB2 preempts. Then fast health checks (200 ms apart, 300 ms
/// timeout, 2 to rise, 2 to fall) of the only VIP: in TOML `[vip.health]` belongs to the
/// last `[[vip]]`, even after `[vrrp]`.
const TRACKING: &str = "track_weight = 60\n[vip.health]\ninterval = \"200ms\"\n\
                        timeout = \"300ms\"\nrise = 2\nfall = 2\n";

#[test]
fn a_master_whose_health_checks_fail_gives_way_and_takes_back_once_they_pass() {
    let topology = topology();
    let lb2 = lb2(&topology, false, TRACKING);
    let lb1 = lb1(&topology, false, TRACKING);
    settle(&topology, &lb1, &lb2);
    let peer = topology.peer_lb().expect("second LB");
    assert_eq!(status(&lb1)["vrrp"]["effective_priority"], 150);
    // The client's entry must be older than its locktime (1 s) for a GARP to move it.
    thread::sleep(Duration::from_millis(1200));

    // Only LB1's checks fail: its own stack loses what it sends to the backends' port;
    // LB2 checks the same backends and finds them UP.
    let vip = IpAddr::V4(VIP_V4);
    let prober = Prober::start(&topology, vip);
    let blocked = Instant::now();
    topology
        .lb_ns()
        .block_tcp_output(HTTP_PORT)
        .expect("block LB1's checks");
    let gave_way = wait_for(Duration::from_secs(10), || {
        state(&lb2) == "master" && state(&lb1) == "backup"
    })
    .unwrap_or_else(|| panic!("LB1 did not give way:\n{}\n{}", lb1.log(), lb2.log()));
    assert_eq!(status(&lb1)["vrrp"]["effective_priority"], 90);
    assert_eq!(status(&lb2)["vrrp"]["effective_priority"], 100);
    assert!(!holds(topology.lb_ns(), topology.lb_ifname(), vip));
    served_through(&topology, vip, peer.mac, "LB2");
    thread::sleep(Duration::from_millis(500));
    let (requests, failed, served) = prober.finish(blocked);
    assert!(
        served.is_some(),
        "the client was not served after the takeover"
    );
    println!(
        "tracking by health: LB2 master {} ms after LB1's checks started failing \
         (fall 2 x 200 ms + 300 ms timeout); client served again after {:?} ms; \
         {failed} of {requests} client requests failed",
        ms(gave_way),
        served.map(ms)
    );

    // LB1's checks pass again: its backends rise, its priority is back, it preempts.
    thread::sleep(Duration::from_millis(1200));
    let prober = Prober::start(&topology, vip);
    let unblocked = Instant::now();
    topology
        .lb_ns()
        .unblock_tcp_output()
        .expect("unblock LB1's checks");
    let took_back = wait_for(Duration::from_secs(10), || {
        state(&lb1) == "master" && state(&lb2) == "backup"
    })
    .unwrap_or_else(|| panic!("LB1 did not take back:\n{}\n{}", lb1.log(), lb2.log()));
    assert_eq!(status(&lb1)["vrrp"]["effective_priority"], 150);
    served_through(&topology, vip, topology.lb().mac, "LB1");
    thread::sleep(Duration::from_millis(500));
    let (requests, failed, _) = prober.finish(unblocked);
    println!(
        "tracking by health: LB1 master again {} ms after its checks could pass \
         (rise 2 x 200 ms); {failed} of {requests} client requests failed",
        ms(took_back)
    );
}

/// Waits until the client sends `vip`'s traffic to `mac` (the LB named `lb`) and is
/// served.
fn served_through(topology: &DsrTopology, vip: IpAddr, mac: MacAddr, lb: &str) {
    assert!(
        wait_for(Duration::from_secs(3), || client_neighbour(topology, vip)
            == Some(mac))
        .is_some(),
        "the client does not send the VIP's traffic to {lb}"
    );
    assert!(
        wait_for(Duration::from_secs(3), || client_request(topology, vip)).is_some(),
        "the client is not served through {lb}"
    );
}

/// keepalived on LB2 with the IPv4 VIP, VRID 51 and 100 ms adverts.
fn keepalived(topology: &DsrTopology, priority: u8) -> Keepalived {
    let peer = topology.peer_lb().expect("second LB");
    let instance = keepalived::Instance {
        interface: &peer.ifname,
        vrid: VRID,
        priority,
        advert_centis: (ADVERT_INTERVAL_MS / 10) as u16,
        addresses: &[IpAddr::V4(VIP_V4)],
    };
    Keepalived::start(&peer.ns, &instance).expect("keepalived")
}

#[test]
fn interop_weir_master_with_a_keepalived_backup() {
    let topology = topology();
    let peer = topology.peer_lb().expect("second LB");
    // LB2: weir as the dataplane, keepalived moving the VIP.
    let _dataplane =
        Agent::start(&peer.ns, &dataplane_config(&peer.ifname, false)).expect("LB2 agent");
    let keepalived = keepalived(&topology, LB2_PRIORITY);
    let lb1 = lb1(&topology, false, "");
    let settled = wait_for(Duration::from_secs(10), || {
        state(&lb1) == "master" && keepalived.state() == Some("BACKUP")
    });
    assert!(
        settled.is_some(),
        "weir {} / keepalived {:?}:\n{}",
        state(&lb1),
        keepalived.state(),
        keepalived.log()
    );
    // keepalived accepts weir's adverts: it stays backup.
    thread::sleep(Duration::from_secs(1));
    assert_eq!(keepalived.state(), Some("BACKUP"), "{}", keepalived.log());
    assert!(!holds(&peer.ns, &peer.ifname, IpAddr::V4(VIP_V4)));
    assert!(
        wait_for(Duration::from_secs(3), || client_request(
            &topology,
            IpAddr::V4(VIP_V4)
        ))
        .is_some()
    );

    let stopped = Instant::now();
    lb1.stop().expect("graceful stop of weir");
    wait_for(Duration::from_secs(5), || {
        keepalived.state() == Some("MASTER")
    })
    .expect("keepalived did not take over");
    println!(
        "interop: keepalived master {} ms after weir's graceful stop",
        ms(stopped.elapsed())
    );
    assert!(
        wait_for(Duration::from_secs(3), || holds(
            &peer.ns,
            &peer.ifname,
            IpAddr::V4(VIP_V4)
        ))
        .is_some()
    );
    assert!(
        wait_for(Duration::from_secs(5), || client_request(
            &topology,
            IpAddr::V4(VIP_V4)
        ))
        .is_some(),
        "the client cannot reach the VIP through keepalived's node"
    );
}

#[test]
fn interop_keepalived_master_with_a_weir_backup() {
    let topology = topology();
    let peer = topology.peer_lb().expect("second LB");
    let _dataplane =
        Agent::start(&peer.ns, &dataplane_config(&peer.ifname, false)).expect("LB2 agent");
    // keepalived has the higher priority this time.
    let mut keepalived = keepalived(&topology, 200);
    wait_for(Duration::from_secs(10), || {
        keepalived.state() == Some("MASTER")
    })
    .unwrap_or_else(|| panic!("keepalived did not become master:\n{}", keepalived.log()));
    let lb1 = lb1(&topology, false, "");
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        state(&lb1),
        "backup",
        "weir does not accept keepalived's adverts:\n{}",
        lb1.log()
    );
    let vrrp = &status(&lb1)["vrrp"]["instances"][0];
    assert_eq!(vrrp["master"], LB2_V4.to_string());
    assert_eq!(vrrp["master_advert_interval_ms"], 100);
    assert_eq!(keepalived.state(), Some("MASTER"));
    assert!(!holds(
        topology.lb_ns(),
        topology.lb_ifname(),
        IpAddr::V4(VIP_V4)
    ));

    // keepalived leaves (priority 0): weir takes over at once.
    let stopped = Instant::now();
    keepalived.terminate().expect("SIGTERM to keepalived");
    wait_for(Duration::from_secs(5), || state(&lb1) == "master").expect("weir did not take over");
    println!(
        "interop: weir master {} ms after keepalived's stop",
        ms(stopped.elapsed())
    );
    assert!(holds(
        topology.lb_ns(),
        topology.lb_ifname(),
        IpAddr::V4(VIP_V4)
    ));
    assert!(
        wait_for(Duration::from_secs(5), || client_request(
            &topology,
            IpAddr::V4(VIP_V4)
        ))
        .is_some()
    );
    assert_eq!(
        status(&lb1)["vrrp"]["instances"][0]["master"],
        LB_V4.to_string()
    );
}

#[test]
fn a_master_whose_link_goes_down_is_in_fault_and_releases_the_vip() {
    let topology = topology();
    let lb2 = lb2(&topology, false, "");
    let lb1 = lb1(&topology, false, "");
    settle(&topology, &lb1, &lb2);

    topology
        .lb_ns()
        .link_down(topology.lb_ifname())
        .expect("link down");
    let fault = wait_for(Duration::from_secs(5), || {
        state(&lb1) == "fault" && state(&lb2) == "master"
    });
    assert!(fault.is_some(), "LB1 {} / LB2 {}", state(&lb1), state(&lb2));
    assert!(!holds(
        topology.lb_ns(),
        topology.lb_ifname(),
        IpAddr::V4(VIP_V4)
    ));
    assert!(
        wait_for(Duration::from_secs(3), || client_request(
            &topology,
            IpAddr::V4(VIP_V4)
        ))
        .is_some()
    );

    // Link back: backup first, then it preempts.
    topology
        .lb_ns()
        .link_up(topology.lb_ifname())
        .expect("link up");
    wait_for(Duration::from_secs(5), || {
        state(&lb1) == "master" && state(&lb2) == "backup"
    })
    .expect("LB1 did not come back as master");
    let status = status(&lb1);
    let changes: Vec<&str> = status["vrrp"]["instances"][0]["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter_map(|t| t["to"].as_str())
        .collect();
    assert_eq!(changes, ["backup", "master", "fault", "backup", "master"]);
}

#[test]
fn unicast_peers_fail_over_and_notify_runs_on_each_change() {
    let topology = topology();
    let dir = std::env::temp_dir().join(format!("weir-vrrp-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("notify directory");
    let log = |name: &str| dir.join(name).display().to_string();
    let extra = |peer: std::net::Ipv4Addr, name: &str| {
        format!(
            "unicast_peers = [\"{peer}\"]\nnotify = [\"/bin/sh\", \"-c\", \"echo \\\"$* $WEIR_VRRP_FAMILY\\\" >> {}\", \"notify\"]\n",
            log(name)
        )
    };
    let lb2 = lb2(&topology, false, &extra(LB_V4, "lb2"));
    let lb1 = lb1(&topology, false, &extra(LB2_V4, "lb1"));
    settle(&topology, &lb1, &lb2);

    let killed = Instant::now();
    lb1.kill().expect("kill -9 LB1");
    wait_for(Duration::from_secs(5), || state(&lb2) == "master").expect("LB2 did not take over");
    println!(
        "unicast: LB2 master {} ms after kill -9",
        ms(killed.elapsed())
    );
    assert!(
        wait_for(Duration::from_secs(3), || client_request(
            &topology,
            IpAddr::V4(VIP_V4)
        ))
        .is_some()
    );

    let notified = wait_for(Duration::from_secs(3), || {
        std::fs::read_to_string(log("lb2")).is_ok_and(|text| text.lines().count() >= 4)
    });
    let text = std::fs::read_to_string(log("lb2")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(notified.is_some(), "notify ran: {text:?}");
    // Alone first, then LB1 came, then LB1 died; no tracking penalty (backends ready).
    let expected: Vec<String> = ["backup", "master", "backup", "master"]
        .iter()
        .map(|state| format!("{state} {VRID} {LB2_PRIORITY} ipv4"))
        .collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn the_master_holds_the_vips_added_and_releases_those_removed_at_runtime() {
    let topology = topology();
    let lb2 = lb2(&topology, false, "");
    let lb1 = lb1(&topology, false, "");
    settle(&topology, &lb1, &lb2);
    let extra: IpAddr = "198.19.0.20".parse().expect("address");
    let backend = IpAddr::V4(backend_v4(1)).to_string();

    let added = lb1
        .cli(&[
            "vip",
            "add",
            "extra",
            &extra.to_string(),
            "80",
            "--backend",
            &backend,
        ])
        .expect("weir vip add");
    assert!(added.status.success(), "{added:?}");
    assert!(
        wait_for(Duration::from_secs(3), || holds(
            topology.lb_ns(),
            topology.lb_ifname(),
            extra
        ))
        .is_some(),
        "the master does not hold the new VIP"
    );
    let addresses = &status(&lb1)["vrrp"]["instances"][0]["addresses"];
    assert_eq!(
        addresses,
        &serde_json::json!([VIP_V4.to_string(), extra.to_string()])
    );
    // A VIP that serves does not lower the priority.
    assert_eq!(status(&lb1)["vrrp"]["effective_priority"], LB1_PRIORITY);

    let removed = lb1
        .cli(&["vip", "remove", "extra"])
        .expect("weir vip remove");
    assert!(removed.status.success(), "{removed:?}");
    assert!(
        wait_for(Duration::from_secs(3), || !holds(
            topology.lb_ns(),
            topology.lb_ifname(),
            extra
        ))
        .is_some(),
        "the master still holds the removed VIP"
    );
    assert!(holds(
        topology.lb_ns(),
        topology.lb_ifname(),
        IpAddr::V4(VIP_V4)
    ));
    assert_eq!(state(&lb1), "master");
}

/// Flows written into LB1's pinned connection table.
const BUSY_FLOWS: u32 = 1_000_000;

/// `count` live TCP flows to the IPv4 VIP from distinct clients, written from two
/// threads (the table's LRU lists are per CPU) through the pinned map.
fn fill_conntrack(pins: &std::path::Path, count: u32) {
    use aya::maps::{HashMap, Map, MapData};
    use lb_common::{Flow, FlowKey, MAP_LAYOUT_VERSION, map_names};

    let path = pins
        .join(format!("v{MAP_LAYOUT_VERSION}"))
        .join("maps")
        .join(map_names::CONNTRACK);
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    let now_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    let vip = u32::from_ne_bytes(VIP_V4.octets());
    let writers: Vec<_> = (0..2u32)
        .map(|part| {
            let path = path.clone();
            thread::spawn(move || {
                let data = MapData::from_pin(&path).expect("the pinned CONNTRACK");
                let mut map: HashMap<MapData, FlowKey, Flow> =
                    HashMap::try_from(Map::HashMap(data)).expect("a hash map");
                for n in (part..count).step_by(2) {
                    // Clients 198.19.0.0/16, 16 ports each.
                    let client = 0xc613_0000 | (n / 16);
                    let key = FlowKey {
                        src: [
                            u32::from_ne_bytes(std::net::Ipv4Addr::from(client).octets()),
                            0,
                            0,
                            0,
                        ],
                        dst: [vip, 0, 0, 0],
                        src_port: (10_000 + (n % 16) as u16).to_be(),
                        dst_port: HTTP_PORT.to_be(),
                        protocol: libc::IPPROTO_TCP as u8,
                        family: libc::AF_INET as u8,
                        _pad: [0; 2],
                    };
                    let flow = Flow {
                        backend_id: n % 2,
                        flags: 0,
                        nat_port: 0,
                        last_seen_ns: now_ns,
                    };
                    map.insert(key, flow, 0).expect("a CONNTRACK entry");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("a writer thread");
    }
}

/// The times LB1's adverts crossed the segment, as `tcpdump -tt` printed them.
fn advert_times(capture: &str) -> Vec<f64> {
    capture
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn adverts_keep_their_pace_while_a_million_flows_are_listed() {
    let topology = topology();
    let dirs = weir_testbed::agent::AgentDirs::new().expect("agent directories");
    let config = config(topology.lb_ifname(), LB1_PRIORITY, false, "").replacen(
        "[agent]\n",
        "[agent]\nconntrack_entries = 2097152\n",
        1,
    );
    let lb1 = Agent::start_with(topology.lb_ns(), &config, &dirs, &[]).expect("LB1 agent");
    assert!(
        wait_for(Duration::from_secs(10), || state(&lb1) == "master").is_some(),
        "LB1 alone did not become master:\n{}",
        lb1.log()
    );
    let started = Instant::now();
    fill_conntrack(dirs.pins().expect("a pin directory"), BUSY_FLOWS);
    eprintln!("{BUSY_FLOWS} flows written in {} ms", ms(started.elapsed()));

    // The adverts as the peer's interface sees them.
    let peer = topology.peer_lb().expect("second LB");
    let mut tcpdump = peer
        .ns
        .command("tcpdump")
        .args(["-i", &peer.ifname, "-n", "-l", "-tt", "-Q", "in"])
        .args(["ip", "proto", "112", "and", "src", &LB_V4.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    thread::sleep(Duration::from_secs(1));

    // Listings of the whole table back to back for 8 s, which spans at least one NAT
    // sweep (every 5 s). One client: concurrent ones would only queue on the agent.
    let busy_until = Instant::now() + Duration::from_secs(8);
    let commands: [&[&str]; 3] = [
        &["--json", "vip", "list"],
        &["--json", "vip", "show", "web"],
        &["--json", "flows", "--backend", "198.18.9.9"],
    ];
    let mut listings = 0;
    for args in commands.iter().cycle() {
        if Instant::now() >= busy_until {
            break;
        }
        let output = lb1.cli(args).expect("weir CLI");
        assert!(output.status.success(), "weir {args:?}: {output:?}");
        listings += 1;
    }
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGTERM) };
    let mut capture = String::new();
    tcpdump
        .stdout
        .take()
        .expect("tcpdump's output")
        .read_to_string(&mut capture)
        .expect("tcpdump's output");
    let _ = tcpdump.wait();

    let times = advert_times(&capture);
    let max_gap = times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .fold(0.0, f64::max);
    eprintln!(
        "{} listings of {BUSY_FLOWS} flows; {} adverts, largest gap {:.0} ms (interval {ADVERT_INTERVAL_MS} ms)",
        listings,
        times.len(),
        max_gap * 1000.0
    );
    assert!(times.len() >= 50, "too few adverts seen:\n{capture}");
    assert!(
        max_gap < 0.3,
        "an advert came {:.0} ms after the previous one:\n{}",
        max_gap * 1000.0,
        lb1.log()
    );
}
