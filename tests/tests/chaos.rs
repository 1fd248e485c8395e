//! Chaos under load: for a while (`WEIR_CHAOS_SECONDS`, 45 s by default; minutes for a
//! soak), random failures hit a DSR load balancer with three backends while long-lived
//! streams and short requests run through it: the agent killed with SIGKILL and started
//! again, the configuration reloaded with a changed weight, a backend drained and made
//! ready, a backend's server stopped and started. Each event gets a load of its own, so
//! failed requests and broken or moved streams are counted per event type, printed, and
//! held to what the documentation promises:
//!
//! - agent killed and restarted, reload, drain: nothing fails, no stream breaks or moves
//!   (the dataplane forwards without the agent; established flows keep their backend);
//! - a server stopped: its own streams break and requests may fail until its checks take
//!   it DOWN; from then on until it is back UP and after, nothing fails.
//!
//! `WEIR_CHAOS_SEED` replays a run's sequence of events. Needs root.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    thread::sleep,
    time::{Duration, Instant},
};

use weir_testbed::{
    DsrTopology,
    agent::{Agent, AgentDirs},
    load::{Load, LoadReport, LoadSpec},
    topology::{HTTP_PORT, VIP_V4, backend_v4},
};

const DEFAULT_SECONDS: u64 = 45;
const BACKENDS: u8 = 3;
/// Health checks fast enough that a stopped server is DOWN within a second.
const HEALTH: &str =
    "[vip.health]\ninterval = \"200ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    KillAndRestart,
    Reload,
    DrainAndReady,
    /// The part of a stopped server's event before its checks took it DOWN.
    ServerStoppedUntilDown,
    /// The rest: DOWN, started again, UP.
    ServerDownUntilUp,
}

impl Event {
    /// What the documentation promises: nothing fails.
    fn promises_no_loss(self) -> bool {
        self != Event::ServerStoppedUntilDown
    }
}

/// What the load saw over the windows of one event type.
#[derive(Default)]
struct Tally {
    windows: u32,
    requests_ok: u64,
    requests_failed: u64,
    streams_broken: usize,
    streams_moved: usize,
    failures: Vec<String>,
}

impl Tally {
    fn add(&mut self, report: &LoadReport) {
        self.windows += 1;
        self.requests_ok += report.short_ok + report.stream_requests_ok;
        self.requests_failed += report.short_failed + report.stream_requests_failed;
        self.streams_broken += report.streams_broken;
        self.streams_moved += report.streams_moved;
        self.failures
            .extend(report.failures.iter().take(3).cloned());
    }
}

/// xorshift64: a seed replays the sequence of events.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn config(topology: &DsrTopology, weight3: u32) -> String {
    let mut text = format!(
        "[agent]\ninterfaces = [\"{}\"]\n\n[[vip]]\nname = \"web\"\naddress = \"{VIP_V4}\"\n\
         port = {HTTP_PORT}\ntable_size = 1021\n{HEALTH}",
        topology.lb_ifname()
    );
    for backend in topology.backends() {
        let weight = if backend.number == 3 { weight3 } else { 100 };
        let _ = write!(
            text,
            "[[vip.backend]]\naddress = \"{}\"\nweight = {weight}\n",
            IpAddr::from(backend_v4(backend.number))
        );
    }
    text
}

fn start_load(topology: &DsrTopology) -> Load {
    let load = Load::start(
        &topology.client().ns,
        LoadSpec {
            target: SocketAddr::new(VIP_V4.into(), HTTP_PORT),
            streams: 4,
            stream_interval: Duration::from_millis(20),
            short_workers: 2,
        },
    )
    .expect("the load starts");
    load.wait_for_answers(40, Duration::from_secs(10))
        .expect("traffic flows before the event");
    load
}

fn cli(agent: &Agent, args: &[&str]) {
    let output = agent.cli(args).expect("the weir CLI runs");
    assert!(
        output.status.success(),
        "weir {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until the agent logged `backend is {change}` for backend `n` more often than
/// `seen` times; returns the new count.
fn wait_for_change(agent: &Agent, n: u8, change: &str, seen: usize) -> usize {
    let needle = format!("backend={}", IpAddr::from(backend_v4(n)));
    let count = || {
        agent
            .log()
            .lines()
            .filter(|line| line.contains(&needle) && line.contains(&format!("backend is {change}")))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while count() <= seen {
        assert!(
            Instant::now() < deadline,
            "backend {n} never went {change}:\n{}",
            agent.log()
        );
        sleep(Duration::from_millis(20));
    }
    count()
}

#[test]
fn random_failures_under_load_lose_only_what_the_docs_allow() {
    let seconds = std::env::var("WEIR_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let seed = std::env::var("WEIR_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (u64::from(std::process::id()) * 0x9e37_79b9) | 1);
    eprintln!("chaos for {seconds} s, WEIR_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let mut topology = DsrTopology::with_servers(BACKENDS).expect("needs root and namespaces");
    let dirs = AgentDirs::new().unwrap();
    let mut weight3 = 100;
    let mut agent = Agent::start_with(topology.lb_ns(), &config(&topology, weight3), &dirs, &[])
        .expect("the agent starts");
    let mut tallies: BTreeMap<Event, Tally> = BTreeMap::new();
    // How often each backend was logged DOWN / UP by the running agent.
    let mut downs = [0usize; BACKENDS as usize + 1];
    let mut ups = [0usize; BACKENDS as usize + 1];
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let load = start_load(&topology);
        match rng.below(4) {
            0 => {
                agent.kill().unwrap();
                sleep(Duration::from_millis(rng.below(500)));
                agent =
                    Agent::start_with(topology.lb_ns(), &config(&topology, weight3), &dirs, &[])
                        .expect("the agent starts again and adopts the dataplane");
                downs = [0; BACKENDS as usize + 1];
                ups = [0; BACKENDS as usize + 1];
                sleep(Duration::from_millis(500));
                tallies
                    .entry(Event::KillAndRestart)
                    .or_default()
                    .add(&load.stop());
            }
            1 => {
                weight3 = if weight3 == 100 { 150 } else { 100 };
                agent.reload(&config(&topology, weight3)).unwrap();
                sleep(Duration::from_millis(500));
                tallies.entry(Event::Reload).or_default().add(&load.stop());
            }
            2 => {
                let n = 1 + rng.below(u64::from(BACKENDS)) as u8;
                let address = IpAddr::from(backend_v4(n)).to_string();
                cli(&agent, &["backend", "drain", "web", &address]);
                sleep(Duration::from_millis(700));
                cli(&agent, &["backend", "ready", "web", &address]);
                sleep(Duration::from_millis(300));
                tallies
                    .entry(Event::DrainAndReady)
                    .or_default()
                    .add(&load.stop());
            }
            _ => {
                let n = 1 + rng.below(u64::from(BACKENDS)) as u8;
                topology.stop_server(n).unwrap();
                downs[n as usize] = wait_for_change(&agent, n, "DOWN", downs[n as usize]);
                // Requests already in flight to it finish failing first.
                sleep(Duration::from_millis(300));
                tallies
                    .entry(Event::ServerStoppedUntilDown)
                    .or_default()
                    .add(&load.stop());
                let load = start_load(&topology);
                sleep(Duration::from_millis(300));
                topology.start_server(n).unwrap();
                ups[n as usize] = wait_for_change(&agent, n, "UP", ups[n as usize]);
                sleep(Duration::from_millis(500));
                tallies
                    .entry(Event::ServerDownUntilUp)
                    .or_default()
                    .add(&load.stop());
            }
        }
    }
    eprintln!(
        "{:<26} {:>7} {:>9} {:>7} {:>7} {:>6}",
        "event", "windows", "requests", "failed", "broken", "moved"
    );
    for (event, tally) in &tallies {
        eprintln!(
            "{:<26} {:>7} {:>9} {:>7} {:>7} {:>6}",
            format!("{event:?}"),
            tally.windows,
            tally.requests_ok,
            tally.requests_failed,
            tally.streams_broken,
            tally.streams_moved
        );
    }
    for (event, tally) in &tallies {
        if event.promises_no_loss() {
            assert!(
                tally.requests_failed == 0 && tally.streams_broken == 0 && tally.streams_moved == 0,
                "seed {seed}: {event:?} lost traffic: {} failed, {} broken, {} moved: {:?}",
                tally.requests_failed,
                tally.streams_broken,
                tally.streams_moved,
                tally.failures
            );
        }
    }
    assert!(
        tallies.len() >= 3,
        "seed {seed}: too few kinds of events ran"
    );
    agent.stop().unwrap();
}
