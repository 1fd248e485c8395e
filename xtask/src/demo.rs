//! `cargo xtask demo`: weir balancing real traffic in the test bed. A client, the load
//! balancer running the `weir` agent on an embedded configuration, and three backends
//! whose servers answer with their own name, each in a network namespace; a few hundred
//! HTTP requests (IPv4 and IPv6) and UDP datagrams go through the VIPs; a backend is
//! drained at runtime with the `weir` CLI; the demo prints how requests spread before and
//! after, and the agent's counters, and removes everything (also on Ctrl-C).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
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
    let topology = DsrTopology::with_servers(3).context("cannot build the test bed")?;
    check_interrupted()?;
    let config = CONFIG.replace("@LB_INTERFACE@", topology.lb_ifname());
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
