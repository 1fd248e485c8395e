//! End to end: weir DSR, weir NAT and HAProxy (`mode tcp`) in front of the same two
//! backends on the namespace test bed, serving the same `wrk` load, one run:
//! requests/s, p99 latency, and the CPU the load balancer's namespace spends per 10k
//! requests. `cargo xtask bench`, or as root `cargo bench -p weir-tests --bench endtoend`
//! (after `cargo build`: the agent is `target/debug/weir` unless `WEIR_BIN` says
//! otherwise).
//!
//! The LB's CPU is what its veth's NAPI thread (threaded NAPI: the LB's softirq work,
//! XDP included) and its process (the agent, or haproxy) used during the run, from
//! `/proc/PID/schedstat` and `/proc/PID/stat`. The agent's XDP program stays attached
//! while HAProxy is measured, passing HAProxy's packets to the kernel: it gives the veth
//! the NAPI whose thread is measured, and its cost is part of what HAProxy's row pays.
//!
//! With `Connection: close` every request is a connection of its own; the keep-alive
//! rows reuse `CONNECTIONS` connections.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use weir_testbed::{
    Child, DsrTopology, Netns,
    agent::Agent,
    cpu,
    topology::{HTTP_PORT, VIP_V4, backend_v4},
    wrk::WrkReport,
};

/// The NAT VIP and HAProxy's address, from the range the client routes via the LB.
const NAT_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
const HAPROXY_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 30);
const BACKENDS: u8 = 2;
/// wrk's concurrent connections and the length of each run.
const CONNECTIONS: u32 = 32;
const DURATION: Duration = Duration::from_secs(5);
/// Runs of each case, interleaved.
const ROUNDS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Balancer {
    WeirDsr,
    WeirNat,
    Haproxy,
}

impl Balancer {
    const ALL: [Balancer; 3] = [Balancer::WeirDsr, Balancer::WeirNat, Balancer::Haproxy];

    fn label(self) -> &'static str {
        match self {
            Balancer::WeirDsr => "weir DSR",
            Balancer::WeirNat => "weir NAT",
            Balancer::Haproxy => "HAProxy 2.6, mode tcp",
        }
    }

    fn address(self) -> IpAddr {
        IpAddr::V4(match self {
            Balancer::WeirDsr => VIP_V4,
            Balancer::WeirNat => NAT_VIP,
            Balancer::Haproxy => HAPROXY_VIP,
        })
    }
}

/// One wrk run and what the LB spent on it.
#[derive(Clone, Copy, Debug)]
struct Sample {
    requests_per_second: f64,
    p99: Duration,
    /// LB CPU seconds per 10k requests (connections, with `Connection: close`): its NAPI
    /// thread's, and its process's.
    napi_per_10k: f64,
    process_per_10k: f64,
}

impl Sample {
    fn cpu_per_10k(&self) -> f64 {
        self.napi_per_10k + self.process_per_10k
    }
}

fn main() -> Result<()> {
    weir_testbed::require_root()?;
    let topology = DsrTopology::with_servers(BACKENDS)
        .context("the end-to-end bench needs root and network namespaces")?;
    let lb = topology.lb_ns();
    let agent = Agent::start(lb, &weir_config(topology.lb_ifname()))?;
    lb.add_addr("lo", HAPROXY_VIP.into(), 32)?;
    let haproxy = start_haproxy(lb)?;
    // After the agent's attach: threaded NAPI needs the NAPI that XDP gives a veth.
    let napi = napi_threads(lb, topology.lb_ifname())?;
    // The bridge port's NAPI (what the LB transmits lands there) in a thread of its own
    // too: run as a softirq, it would be charged to whichever thread raised it, often the
    // LB's, with the switch's work and the backends' receive.
    topology
        .switch()
        .set_threaded_napi(&topology.lb().switch_port, true)?;

    let mut results: Vec<(bool, Balancer, Vec<Sample>)> = Vec::new();
    for close in [true, false] {
        for balancer in Balancer::ALL {
            results.push((close, balancer, Vec::new()));
        }
    }
    for round in 1..=ROUNDS {
        for (close, balancer, samples) in &mut results {
            let lb_process = match balancer {
                Balancer::Haproxy => haproxy.id() as i32,
                _ => agent.pid() as i32,
            };
            let sample = run(&topology, *balancer, *close, &napi, lb_process)
                .with_context(|| format!("round {round}, {}", balancer.label()))?;
            eprintln!(
                "  round {round}/{ROUNDS}  {:<24} {:<10} {:>8.0} req/s",
                balancer.label(),
                connection_label(*close),
                sample.requests_per_second
            );
            samples.push(sample);
        }
    }
    print(&results);
    Ok(())
}

fn connection_label(close: bool) -> &'static str {
    if close { "new conn" } else { "keep-alive" }
}

/// The agent's configuration: the DSR VIP (the backends hold it on their loopback) and
/// the NAT VIP, both on the backends' HTTP port.
fn weir_config(lb_dev: &str) -> String {
    let backends = |vip: &str| {
        (1..=BACKENDS)
            .map(|n| format!("[[vip.backend]]\naddress = \"{}\"\n", backend_v4(n)))
            .fold(vip.to_owned(), |text, backend| text + &backend)
    };
    format!("[agent]\ninterfaces = [\"{lb_dev}\"]\n")
        + &backends(&format!(
            "[[vip]]\nname = \"dsr\"\naddress = \"{VIP_V4}\"\nport = {HTTP_PORT}\n"
        ))
        + &backends(&format!(
            "[[vip]]\nname = \"nat\"\naddress = \"{NAT_VIP}\"\nport = {HTTP_PORT}\n\
             forwarding = \"nat\"\n"
        ))
}

/// HAProxy in the LB namespace, round robin over the same backends.
fn start_haproxy(lb: &Netns) -> Result<Child> {
    let servers: String = (1..=BACKENDS)
        .map(|n| format!("  server b{n} {}:{HTTP_PORT}\n", backend_v4(n)))
        .collect();
    let config = format!(
        "global\n  maxconn 4096\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
         frontend vip\n  bind {HAPROXY_VIP}:{HTTP_PORT}\n  default_backend servers\n\
         backend servers\n  balance roundrobin\n{servers}"
    );
    let path = std::env::temp_dir().join(format!("weir-bench-haproxy-{}.cfg", std::process::id()));
    fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let path = path.to_string_lossy().into_owned();
    let mut child = lb
        .spawn(&["haproxy", "-db", "-f", &path])
        .context("starting haproxy (is it installed? `cargo xtask setup`)")?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = child.try_wait()? {
        bail!("haproxy exited ({status}): {}", child.log());
    }
    Ok(child)
}

/// Switches the LB veth's NAPI to kernel threads and returns them.
fn napi_threads(lb: &Netns, dev: &str) -> Result<Vec<i32>> {
    let prefix: String = format!("napi/{dev}-").chars().take(15).collect();
    lb.set_threaded_napi(dev, true)?;
    let threads: Vec<i32> = cpu::threads_named(&prefix)?.into_iter().collect();
    if threads.is_empty() {
        bail!("no NAPI thread for {dev} after switching it to threaded mode");
    }
    Ok(threads)
}

/// The CPU the LB namespace has used: its NAPI threads', and `process`'s.
fn lb_cpu(napi: &[i32], process: i32) -> Result<(Duration, Duration)> {
    let mut threads = Duration::ZERO;
    for &thread in napi {
        threads += cpu::thread_runtime(thread)?;
    }
    Ok((threads, cpu::process_time(process)?))
}

fn run(
    topology: &DsrTopology,
    balancer: Balancer,
    close: bool,
    napi: &[i32],
    lb_process: i32,
) -> Result<Sample> {
    let url = format!("http://{}/", SocketAddr::new(balancer.address(), HTTP_PORT));
    let connections = CONNECTIONS.to_string();
    let duration = format!("{}s", DURATION.as_secs());
    let mut argv = vec![
        "wrk",
        "-t1",
        "-c",
        &connections,
        "-d",
        &duration,
        "--latency",
    ];
    if close {
        argv.extend(["-H", "Connection: close"]);
    }
    argv.push(&url);
    let before = lb_cpu(napi, lb_process)?;
    let started = Instant::now();
    let output = topology.client().ns.run(&argv).context("running wrk")?;
    let elapsed = started.elapsed();
    let after = lb_cpu(napi, lb_process)?;
    let report = WrkReport::parse(&output)?;
    if report.errors * 100 > report.requests {
        bail!("wrk saw errors on more than 1% of its requests:\n{output}");
    }
    let per_10k = |before: Duration, after: Duration| {
        (after - before).as_secs_f64() * 10_000.0 / report.requests.max(1) as f64
    };
    Ok(Sample {
        requests_per_second: report.requests as f64 / elapsed.as_secs_f64(),
        p99: report.p99,
        napi_per_10k: per_10k(before.0, after.0),
        process_per_10k: per_10k(before.1, after.1),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn print(results: &[(bool, Balancer, Vec<Sample>)]) {
    println!();
    println!(
        "end to end: wrk -t1 -c{CONNECTIONS} -d{}s from the client namespace, {BACKENDS} \
         backends, medians of {ROUNDS} interleaved runs",
        DURATION.as_secs()
    );
    println!(
        "   {:<24} {:<10} {:>8} {:>7} {:>18} {:>8} {:>8}",
        "load balancer", "requests", "req/s", "p99 ms", "LB CPU s/10k req", "NAPI", "process"
    );
    let cpu_of = |close: bool, balancer: Balancer| {
        results
            .iter()
            .find(|(c, b, _)| *c == close && *b == balancer)
            .map_or(f64::NAN, |(_, _, samples)| {
                median(samples.iter().map(Sample::cpu_per_10k).collect())
            })
    };
    for (close, balancer, samples) in results {
        let of = |field: fn(&Sample) -> f64| median(samples.iter().map(field).collect());
        println!(
            "   {:<24} {:<10} {:>8.0} {:>7.2} {:>18.4} {:>8.4} {:>8.4}",
            balancer.label(),
            connection_label(*close),
            of(|s| s.requests_per_second),
            of(|s| s.p99.as_secs_f64() * 1e3),
            of(Sample::cpu_per_10k),
            of(|s| s.napi_per_10k),
            of(|s| s.process_per_10k),
        );
    }
    for balancer in [Balancer::WeirDsr, Balancer::WeirNat] {
        println!(
            "   HAProxy / {} LB CPU per new connection: {:.1}x",
            balancer.label(),
            cpu_of(true, Balancer::Haproxy) / cpu_of(true, balancer)
        );
    }
}
