//! `cargo xtask demo`: weir balancing real traffic in the test bed. A client, the load
//! balancer running the `weir` agent on an embedded configuration, and three backends
//! whose servers answer with their own name, each in a network namespace; a few hundred
//! HTTP requests (IPv4 and IPv6) and UDP datagrams go through the VIPs (DSR and full
//! NAT); a backend is drained at runtime with the `weir` CLI; a backend's server is
//! stopped and its health checks take it out of rotation, then bring it back; `weir
//! proxy` terminates HTTPS in front of the same backends (`https`); the demo prints how
//! requests spread at each step, and the agent's counters, and removes everything (also
//! on Ctrl-C).

mod https;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use weir_testbed::{
    DsrTopology,
    agent::Agent,
    bins::{TEST_SERVER_BIN_ENV, WEIR_BIN_ENV},
    http_get,
    topology::{HTTP_PORT, UDP_PORT, VIP_V4, VIP_V6},
    udp_request_from,
};

use crate::{build::Built, style};

const CONFIG: &str = include_str!("demo.toml");
const HTTP_REQUESTS: usize = 300;
const HTTP6_REQUESTS: usize = 120;
const UDP_REQUESTS: u16 = 120;
const NAT_PORT: u16 = 8080;
/// How long a health state change may take in the demo (checks every 500 ms, rise and
/// fall 2: about a second).
const HEALTH_WAIT: Duration = Duration::from_secs(10);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C sets a flag the demo checks between requests, so it unwinds through its guards
/// (agent, servers, namespaces) instead of dying with them in place.
fn catch_ctrl_c() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted; the test bed has been removed");
    }
    Ok(())
}

/// Runs the demo with the binaries of `built`.
pub fn run_demo(built: &Built) -> Result<()> {
    catch_ctrl_c();
    // SAFETY: set before any thread is started.
    unsafe {
        std::env::set_var(WEIR_BIN_ENV, &built.weir_bin);
        std::env::set_var(TEST_SERVER_BIN_ENV, &built.test_server_bin);
    }

    say("building the test bed: client, load balancer, 3 backends on one L2 segment");
    let mut topology = DsrTopology::with_servers(3).context("cannot build the test bed")?;
    check_interrupted()?;
    let certificate = https::Certificate::generate()?;
    let config = CONFIG
        .replace("@LB_INTERFACE@", topology.lb_ifname())
        .replace("@CERTIFICATE@", &certificate.pem().display().to_string());
    say("starting `weir agent` in the load balancer's namespace on the embedded configuration");
    let agent = Agent::start(topology.lb_ns(), &config)?;
    for line in agent.log().lines() {
        println!("    {line}");
    }

    let client = &topology.client().ns;
    say(&format!(
        "{HTTP_REQUESTS} HTTP requests to http://{VIP_V4}/ (one connection each)"
    ));
    let web = count(HTTP_REQUESTS, |_| {
        Ok(http_get(client, &format!("http://{VIP_V4}:{HTTP_PORT}/"))?.body)
    })?;
    print_spread(&web);

    say(&format!(
        "{HTTP6_REQUESTS} HTTP requests to http://[{VIP_V6}]/"
    ));
    let web6 = count(HTTP6_REQUESTS, |_| {
        Ok(http_get(client, &format!("http://[{VIP_V6}]:{HTTP_PORT}/"))?.body)
    })?;
    print_spread(&web6);

    say(&format!(
        "{UDP_REQUESTS} UDP datagrams to {VIP_V4}:{UDP_PORT}, each from its own port"
    ));
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), UDP_PORT);
    let echo = count(UDP_REQUESTS as usize, |i| {
        let bind = SocketAddr::new(topology.client().ipv4.into(), 42000 + i as u16);
        let answer = udp_request_from(client, bind, vip, b"hello")?;
        Ok(String::from_utf8_lossy(&answer)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned())
    })?;
    print_spread(&echo);

    say("draining backend3 at runtime: `weir backend drain web 198.18.0.13`");
    cli(&agent, &["backend", "drain", "web", "198.18.0.13"])?;
    cli(&agent, &["backend", "list", "web"])?;
    say(&format!(
        "{HTTP_REQUESTS} more HTTP requests: new connections avoid the drained backend"
    ));
    let drained = count(HTTP_REQUESTS, |_| {
        Ok(http_get(client, &format!("http://{VIP_V4}:{HTTP_PORT}/"))?.body)
    })?;
    print_spread(&drained);
    cli(&agent, &["backend", "ready", "web", "198.18.0.13"])?;

    say(&format!(
        "{HTTP6_REQUESTS} HTTP requests to the full-NAT VIP http://{VIP_V4}:{NAT_PORT}/ (plain backends)"
    ));
    let client = &topology.client().ns;
    let nat = count(HTTP6_REQUESTS, |_| {
        Ok(http_get(client, &format!("http://{VIP_V4}:{NAT_PORT}/"))?.body)
    })?;
    print_spread(&nat);
    cli(&agent, &["vip", "show", "web-nat"])?;

    https::run(
        topology.lb_ns(),
        &topology.client().ns,
        &agent,
        &certificate,
    )?;

    say("stopping backend1's server: HTTP health checks take it DOWN");
    topology.stop_server(1)?;
    let down = Instant::now();
    wait_for_health(&agent, "down")?;
    println!("    DOWN after {} ms", down.elapsed().as_millis());
    cli(&agent, &["backend", "list", "web"])?;
    say(&format!(
        "{HTTP_REQUESTS} HTTP requests while it is down: none fails"
    ));
    let client = &topology.client().ns;
    let without = count(HTTP_REQUESTS, |_| {
        Ok(http_get(client, &format!("http://{VIP_V4}:{HTTP_PORT}/"))
            .map_or_else(|_| "failed".to_owned(), |answer| answer.body))
    })?;
    print_spread(&without);

    say("starting it again: UP after `rise` good checks, back in rotation");
    topology.start_server(1)?;
    let up = Instant::now();
    wait_for_health(&agent, "up")?;
    println!("    UP after {} ms", up.elapsed().as_millis());
    let client = &topology.client().ns;
    let back = count(HTTP_REQUESTS, |_| {
        Ok(http_get(client, &format!("http://{VIP_V4}:{HTTP_PORT}/"))?.body)
    })?;
    print_spread(&back);

    say("`weir status`");
    cli(&agent, &["status"])?;

    say("stopping the agent (it prints its counters)");
    let log = agent.stop()?;
    for line in log
        .lines()
        .skip_while(|line| !line.contains("shutting down"))
        .skip(1)
    {
        println!("    {line}");
    }
    say("done; removing the test bed");
    Ok(())
}

/// Runs the `weir` CLI against the demo's agent and shows its output.
fn cli(agent: &Agent, args: &[&str]) -> Result<()> {
    let output = agent.cli(args)?;
    if !output.status.success() {
        bail!(
            "weir {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("    {line}");
    }
    Ok(())
}

/// Waits until backend1 of VIP web has the health `state` ("up" or "down").
fn wait_for_health(agent: &Agent, state: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        check_interrupted()?;
        let output = agent.cli(&["--json", "backend", "list", "web"])?;
        let backends: serde_json::Value = serde_json::from_slice(&output.stdout)
            .context("`weir --json backend list web` printed no JSON")?;
        let health = backends
            .as_array()
            .and_then(|list| list.iter().find(|b| b["address"] == "198.18.0.11"))
            .map(|b| b["health"]["state"].clone());
        if health.as_ref().and_then(|s| s.as_str()) == Some(state) {
            return Ok(());
        }
        if start.elapsed() > HEALTH_WAIT {
            bail!("backend1 is not {state} after {HEALTH_WAIT:?}: {health:?}");
        }
        sleep(Duration::from_millis(50));
    }
}

/// Runs `request` `n` times and counts the answers (backend names).
fn count(
    n: usize,
    mut request: impl FnMut(usize) -> Result<String>,
) -> Result<BTreeMap<String, usize>> {
    let mut answers = BTreeMap::new();
    for i in 0..n {
        check_interrupted()?;
        *answers.entry(request(i)?.trim().to_owned()).or_insert(0) += 1;
    }
    Ok(answers)
}

fn print_spread(answers: &BTreeMap<String, usize>) {
    let total: usize = answers.values().sum();
    for (backend, n) in answers {
        let share = *n as f64 * 100.0 / total as f64;
        let bar = "#".repeat((share / 2.0).round() as usize);
        println!("    {backend:<10} {n:>5}  {share:5.1}%  {bar}");
    }
}

fn say(text: &str) {
    println!("\n{}", style::bold(&format!("==> {text}")));
}
