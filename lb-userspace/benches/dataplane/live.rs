//! Part 2: packets per second through a load-balancer namespace, on veth.
//!
//! ```text
//!  generator namespace                          LB namespace
//!  bench_generate (CPU 0) ──── veth ────►  weir | MAC swap | nftables
//!  bench_sink            ◄────────────────  XDP_TX, or routed back out
//!  bench_sink            ◄──── veth ──────  XDP_REDIRECT (weir, second case)
//! ```
//!
//! The generator ([`Generator`]) sends UDP from 1000 client ports to the VIP, out of
//! its veth into the LB's. The LB's backends are neighbours whose MAC is the generator
//! side's, so what the LB forwards comes back into `bench_sink`, which counts it. The
//! LB veth's NAPI runs in a kernel thread pinned to the other CPU; everything the LB
//! does (and the sink's receive, which its sends trigger) happens there.
//!
//! Every case runs once per round, so cases interleave; each run warms up, then counts
//! what reached the sink over a window.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::{
    Ebpf,
    programs::{XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use etherparse::PacketBuilder;
use lb_common::{Counter, DEFAULT_MAGLEV_RING_ENTRIES};
use weir::{
    config::{Config, Forwarding, XdpMode},
    dataplane::{self, Dataplane, LoadOptions, plan::Reconciler},
    host::HostSetup,
};
use weir_testbed::{MacAddr, Netns, veth_pair};

use crate::{
    bench_xdp, cpu,
    generator::{Generator, Stop},
};

/// Distinct flows (client source ports) the generator cycles through.
pub const FLOWS: u32 = 1000;
/// 64 bytes on the wire with the FCS, which a veth does not carry.
pub const FRAME_LEN: usize = 60;
/// After a program swap: the connection table refills in milliseconds at these rates.
pub const WARMUP: Duration = Duration::from_millis(300);
pub const WINDOW: Duration = Duration::from_millis(700);

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const FIRST_CLIENT_PORT: u16 = 20000;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const VIP_PORT: u16 = 53;
/// The LB's address on each veth, and the backends behind it.
const LB_CIDR: &str = "198.18.0.1/24";
const LB_ADDRESS: &str = "198.18.0.1";
const TX_BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 11), Ipv4Addr::new(198, 18, 0, 12)];
const REDIRECT_LB_CIDR: &str = "198.18.1.1/24";
const REDIRECT_BACKENDS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(198, 18, 1, 11), Ipv4Addr::new(198, 18, 1, 12)];

const GEN_MAC: MacAddr = MacAddr::testbed(100);
const GEN_REDIRECT_MAC: MacAddr = MacAddr::testbed(101);
const LB_MAC: MacAddr = MacAddr::testbed(1);
const LB_REDIRECT_MAC: MacAddr = MacAddr::testbed(2);

/// What forwards the frames in the LB namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Case {
    /// weir's program; its backends are on the ingress veth (DSR, XDP_TX).
    WeirTx,
    /// The ceiling: `bench_mac_swap` (XDP_TX) on the LB veth.
    Ceiling,
    /// The kernel's own alternative: XDP_PASS, then nftables DNAT and IP forwarding.
    Nftables,
    /// weir's program; its backends are on a second veth (DSR, XDP_REDIRECT).
    WeirRedirect,
    /// weir's program, the VIP in full NAT; its backends are on the ingress veth.
    WeirNatTx,
}

impl Case {
    pub const ALL: [Case; 5] = [
        Case::WeirTx,
        Case::Ceiling,
        Case::Nftables,
        Case::WeirRedirect,
        Case::WeirNatTx,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Case::WeirTx => "weir, DSR via XDP_TX",
            Case::Ceiling => "ceiling: bare MAC swap, XDP_TX",
            Case::Nftables => "nftables DNAT jhash mod 2, forwarding",
            Case::WeirRedirect => "weir, DSR via XDP_REDIRECT to 2nd veth",
            Case::WeirNatTx => "weir, NAT (DNAT+SNAT) via XDP_TX",
        }
    }
}

/// One run of one case.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Frames that came back to the sink, in millions per second.
    pub mpps: f64,
    /// The LB NAPI thread's CPU time per frame.
    pub napi_ns_per_packet: f64,
    /// How busy the LB's CPU was (1.0: fully): below 1, the LB was not the bottleneck.
    pub lb_cpu_busy: f64,
}

pub type Rates = BTreeMap<Case, Vec<Sample>>;

/// Measures every case once per round, `rounds` times.
pub fn measure(rounds: usize) -> Result<Rates> {
    let (generator, mut lb) = build()?;
    let stop = Stop::new()?;
    thread::scope(|scope| {
        let traffic = scope.spawn(|| generator.run(&stop));
        let rates = {
            let _stop = stop.on_drop();
            measure_rounds(&generator, &mut lb, rounds)
        };
        let generated = traffic
            .join()
            .map_err(|_| anyhow!("the generator panicked"))?;
        // A failed generator explains whatever the rounds saw, so it is reported first.
        generated.context("the traffic generator failed")?;
        rates
    })
}

fn measure_rounds(generator: &Generator, lb: &mut LoadBalancer, rounds: usize) -> Result<Rates> {
    let mut rates = Rates::new();
    for round in 1..=rounds {
        for case in Case::ALL {
            lb.select(case)
                .with_context(|| format!("setting up {case:?}"))?;
            let sample = sample(generator, lb, case)
                .with_context(|| format!("round {round}, {}", case.label()))?;
            eprintln!(
                "  round {round}/{rounds}  {:<42} {:>6.3} Mpps",
                case.label(),
                sample.mpps
            );
            rates.entry(case).or_default().push(sample);
        }
    }
    Ok(rates)
}

/// Warms up, then counts over `WINDOW`.
fn sample(generator: &Generator, lb: &LoadBalancer, case: Case) -> Result<Sample> {
    thread::sleep(WARMUP);
    let before = Snapshot::take(generator, lb)?;
    thread::sleep(WINDOW);
    let after = Snapshot::take(generator, lb)?;

    let delivered = after.delivered - before.delivered;
    ensure!(delivered > 0, "no frame came back to the sink");
    check_forwarder(case, &before, &after, delivered)?;
    let seconds = (after.at - before.at).as_secs_f64();
    let napi = (after.napi_runtime - before.napi_runtime).as_secs_f64();
    let busy = (after.lb_cpu_busy - before.lb_cpu_busy).as_secs_f64();
    Ok(Sample {
        mpps: delivered as f64 / seconds / 1e6,
        napi_ns_per_packet: napi * 1e9 / delivered as f64,
        lb_cpu_busy: busy / seconds,
    })
}

/// The counters a window is measured between.
struct Snapshot {
    delivered: u64,
    at: Instant,
    napi_runtime: Duration,
    lb_cpu_busy: Duration,
    weir: BTreeMap<Counter, u64>,
    ip_forwarded: u64,
}

impl Snapshot {
    fn take(generator: &Generator, lb: &LoadBalancer) -> Result<Snapshot> {
        Ok(Snapshot {
            delivered: generator.delivered()?,
            at: Instant::now(),
            napi_runtime: cpu::thread_runtime(lb.napi_thread)?,
            lb_cpu_busy: cpu::busy_time(cpu::LB_CPU)?,
            weir: lb.dataplane.global_counters()?,
            ip_forwarded: lb.ip_forwarded()?,
        })
    }
}

/// Fails unless the forwarder under test forwarded what the sink counted, by its own
/// count: weir's verdict counters, or the kernel's IP forwarding counter. (The ceiling's
/// program cannot do anything else.)
fn check_forwarder(case: Case, before: &Snapshot, after: &Snapshot, delivered: u64) -> Result<()> {
    let forwarded = match case {
        Case::WeirTx | Case::WeirNatTx => weir_forwarded(&before.weir, &after.weir, Counter::Tx)?,
        Case::WeirRedirect => weir_forwarded(&before.weir, &after.weir, Counter::Redirect)?,
        Case::Nftables => after.ip_forwarded - before.ip_forwarded,
        Case::Ceiling => return Ok(()),
    };
    // The counters are read one after the other: allow for the frames in flight.
    ensure!(
        delivered as f64 <= 1.01 * forwarded as f64,
        "the sink counted {delivered} frames, but only {forwarded} were forwarded"
    );
    Ok(())
}

/// The frames weir filed under `reason` between two readings of its counters. Fails
/// unless that is at least 99% of its verdicts: the rate must be weir forwarding, not
/// weir passing or dropping.
fn weir_forwarded(
    before: &BTreeMap<Counter, u64>,
    after: &BTreeMap<Counter, u64>,
    reason: Counter,
) -> Result<u64> {
    let moved = |counter: &Counter| after[counter] - before.get(counter).copied().unwrap_or(0);
    let verdicts: u64 = after
        .keys()
        .filter(|c| c.verdict().is_some())
        .map(moved)
        .sum();
    let forwarded = moved(&reason);
    if (forwarded as f64) < 0.99 * verdicts as f64 {
        let changes: Vec<String> = after
            .keys()
            .filter(|c| moved(c) > 0)
            .map(|c| format!("{}={}", c.name(), moved(c)))
            .collect();
        bail!(
            "weir did not forward the traffic as {}: {}",
            reason.name(),
            changes.join(" ")
        );
    }
    Ok(forwarded)
}

/// The two namespaces and the veths between them.
fn build() -> Result<(Generator, LoadBalancer)> {
    let gen_ns = Netns::new("bench-gen")?;
    let lb_ns = Netns::new("bench-lb")?;
    for ns in [&gen_ns, &lb_ns] {
        // No IPv6 chatter (router solicitations, MLD) for the sink to count.
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    }
    let tx = veth_pair(&gen_ns, &lb_ns)?;
    let redirect = veth_pair(&gen_ns, &lb_ns)?;
    for (ns, dev, mac) in [
        (&gen_ns, &tx.a, GEN_MAC),
        (&gen_ns, &redirect.a, GEN_REDIRECT_MAC),
        (&lb_ns, &tx.b, LB_MAC),
        (&lb_ns, &redirect.b, LB_REDIRECT_MAC),
    ] {
        ns.set_mac(dev, mac)?;
        ns.link_up(dev)?;
    }
    let generator = Generator::new(gen_ns, &tx.a, &[&redirect.a], client_frame()?, FLOWS)?;
    let lb = LoadBalancer::new(lb_ns, tx.b, redirect.b)?;
    Ok((generator, lb))
}

/// The client's first frame: UDP to the VIP, 64 bytes on the wire. The generator
/// rewrites its header into every frame, with the source port of the frame's flow.
fn client_frame() -> Result<Vec<u8>> {
    let headers = PacketBuilder::ethernet2(GEN_MAC.octets(), LB_MAC.octets())
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .udp(FIRST_CLIENT_PORT, VIP_PORT);
    let mut frame = Vec::new();
    headers.write(&mut frame, &[0; FRAME_LEN - bench_xdp::GEN_HEADER_LEN])?;
    // No UDP checksum (legal over IPv4): the source port changes from frame to frame.
    frame[bench_xdp::GEN_HEADER_LEN - 2..bench_xdp::GEN_HEADER_LEN].fill(0);
    Ok(frame)
}

/// The LB namespace: weir loaded and programmed, the bench's XDP_TX and XDP_PASS
/// programs, and the nftables load balancer.
struct LoadBalancer {
    dataplane: Dataplane,
    state: Reconciler,
    bench: Ebpf,
    attached: Option<Attached>,
    dev: String,
    redirect_dev: String,
    napi_thread: i32,
    ns: Netns,
}

/// What is attached to the LB veth.
enum Attached {
    Weir,
    Bench(&'static str, XdpLinkId),
}

impl LoadBalancer {
    fn new(ns: Netns, dev: String, redirect_dev: String) -> Result<LoadBalancer> {
        configure_routing(&ns, &dev, &redirect_dev)?;
        install_nftables(&ns)?;
        let config = weir_config(&dev, &redirect_dev, TX_BACKENDS, Forwarding::Dsr)?;
        let dataplane = ns.enter(|| load_weir(&config, &redirect_dev))??;
        let mut bench = bench_xdp::load()?;
        // Threaded NAPI needs the veth to have NAPI, which an XDP program gives it. GRO
        // (on by default on real NICs) keeps that NAPI, and so its thread, alive while one
        // program is swapped for another; without it, the thread would go with each
        // detach. So the thread is pinned once, here.
        ns.set_gro(&dev, true)?;
        let link = attach(&ns, &mut bench, bench_xdp::PASS, &dev)?;
        let napi_thread = pin_napi_thread(&ns, &dev, cpu::LB_CPU)?;
        let mut lb = LoadBalancer {
            dataplane,
            state: Reconciler::new(DEFAULT_MAGLEV_RING_ENTRIES),
            bench,
            attached: Some(Attached::Bench(bench_xdp::PASS, link)),
            napi_thread,
            dev,
            redirect_dev,
            ns,
        };
        lb.apply(TX_BACKENDS, Forwarding::Dsr)?;
        Ok(lb)
    }

    /// Puts `case`'s forwarder on the LB veth.
    fn select(&mut self, case: Case) -> Result<()> {
        self.detach()?;
        match case {
            Case::WeirTx => {
                self.apply(TX_BACKENDS, Forwarding::Dsr)?;
                self.attach_weir()
            }
            Case::WeirRedirect => {
                self.apply(REDIRECT_BACKENDS, Forwarding::Dsr)?;
                self.attach_weir()
            }
            Case::WeirNatTx => {
                self.apply(TX_BACKENDS, Forwarding::Nat)?;
                self.attach_weir()
            }
            Case::Ceiling => self.attach_bench(bench_xdp::MAC_SWAP),
            // The ruleset is always there; only packets that reach the stack meet it.
            Case::Nftables => self.attach_bench(bench_xdp::PASS),
        }
    }

    /// Programs weir's maps for `backends` the way the agent does: the configuration
    /// through the planner, then its map writes.
    fn apply(&mut self, backends: [Ipv4Addr; 2], forwarding: Forwarding) -> Result<()> {
        let config = weir_config(&self.dev, &self.redirect_dev, backends, forwarding)?;
        let (writes, state) = self.state.plan(&config)?;
        self.dataplane.apply(&writes)?;
        self.state = state;
        Ok(())
    }

    fn attach_weir(&mut self) -> Result<()> {
        let (dataplane, dev) = (&mut self.dataplane, &self.dev);
        self.ns.enter(|| dataplane.attach(dev, XdpMode::Native))??;
        self.attached = Some(Attached::Weir);
        Ok(())
    }

    fn attach_bench(&mut self, name: &'static str) -> Result<()> {
        let link = attach(&self.ns, &mut self.bench, name, &self.dev)?;
        self.attached = Some(Attached::Bench(name, link));
        Ok(())
    }

    /// The LB namespace's count of forwarded IPv4 datagrams (`Ip: ForwDatagrams`).
    fn ip_forwarded(&self) -> Result<u64> {
        // The calling thread's view: inside `enter`, the LB namespace's.
        let snmp = self
            .ns
            .enter(|| fs::read_to_string("/proc/thread-self/net/snmp"))?
            .context("reading the LB namespace's /proc/net/snmp")?;
        snmp_counter(&snmp, "Ip", "ForwDatagrams")
    }

    fn detach(&mut self) -> Result<()> {
        match self.attached.take() {
            Some(Attached::Weir) => self.dataplane.detach_all()?,
            Some(Attached::Bench(name, link)) => {
                bench_xdp::program_mut(&mut self.bench, name)?.detach(link)?
            }
            None => {}
        }
        Ok(())
    }
}

/// A counter of `/proc/net/snmp`: a line of names, then a line of values, per group.
fn snmp_counter(snmp: &str, group: &str, name: &str) -> Result<u64> {
    let prefix = format!("{group}:");
    let mut lines = snmp.lines().filter(|line| line.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {group} counters in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(counter, _)| *counter == name)
        .and_then(|(_, value)| value.parse().ok())
        .with_context(|| format!("no counter {group}: {name} in /proc/net/snmp"))
}

/// Attaches the bench program `name` to `dev` (native mode).
fn attach(ns: &Netns, bench: &mut Ebpf, name: &str, dev: &str) -> Result<XdpLinkId> {
    let program = bench_xdp::program_mut(bench, name)?;
    let link = ns.enter(|| program.attach(dev, AyaXdpMode::Driver))?;
    link.with_context(|| format!("attaching {name} to {dev}"))
}

/// Addresses, neighbours and sysctls of the LB namespace. The backends' neighbour
/// entries carry the generator side's MACs, so forwarded frames go back to the sinks.
fn configure_routing(ns: &Netns, dev: &str, redirect_dev: &str) -> Result<()> {
    ns.ip(&["addr", "add", LB_CIDR, "dev", dev])?;
    ns.ip(&["addr", "add", REDIRECT_LB_CIDR, "dev", redirect_dev])?;
    for (dev, backends, mac) in [
        (dev, TX_BACKENDS, GEN_MAC),
        (redirect_dev, REDIRECT_BACKENDS, GEN_REDIRECT_MAC),
    ] {
        for backend in backends {
            ns.add_neigh(dev, backend.into(), mac)?;
        }
    }
    // Kernel forwarding for nftables. It sends frames back out of the interface they came
    // in on, which would also send an ICMP redirect per flow: not part of the job.
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    for scope in ["all", dev] {
        ns.sysctl(&format!("net.ipv4.conf.{scope}.send_redirects"), "0")?;
    }
    // weir's bpf_fib_lookup answers FWD_DISABLED on an interface that does not forward.
    // Nothing to restore afterwards: the namespace goes.
    let mut host = HostSetup::default();
    ns.enter(|| {
        [dev, redirect_dev]
            .into_iter()
            .try_for_each(|dev| host.enable_forwarding(dev))
    })??;
    Ok(())
}

/// The kernel's own load balancer for the VIP: DNAT to a hash of the client's address
/// and port over the two backends (conntrack keeps each flow on its backend).
fn install_nftables(ns: &Netns) -> Result<()> {
    let backends = TX_BACKENDS
        .iter()
        .enumerate()
        .map(|(slot, addr)| format!("{slot} : {addr}"))
        .collect::<Vec<_>>()
        .join(", ");
    let ruleset = format!(
        "add table ip weir_bench; \
         add chain ip weir_bench prerouting {{ type nat hook prerouting priority dstnat; }}; \
         add rule ip weir_bench prerouting ip daddr {VIP} udp dport {VIP_PORT} \
         dnat to jhash ip saddr . udp sport mod {} map {{ {backends} }}",
        TX_BACKENDS.len()
    );
    ns.run(&["nft", &ruleset])
        .context("installing the nftables load balancer (is nft installed? `cargo xtask setup`)")?;
    Ok(())
}

/// weir's configuration: the one VIP, UDP, with two backends. In NAT, the LB's address
/// is the source (its backends' neighbour entries still lead to the sink).
fn weir_config(
    dev: &str,
    redirect_dev: &str,
    backends: [Ipv4Addr; 2],
    forwarding: Forwarding,
) -> Result<Config> {
    let [first, second] = backends;
    let nat = match forwarding {
        Forwarding::Dsr => String::new(),
        Forwarding::Nat => format!("forwarding = \"nat\"\nnat_source = \"{LB_ADDRESS}\"\n"),
    };
    let text = format!(
        r#"
[agent]
interfaces = ["{dev}", "{redirect_dev}"]

[[vip]]
name = "bench"
address = "{VIP}"
port = {VIP_PORT}
protocol = "udp"
{nat}[[vip.backend]]
address = "{first}"
[[vip.backend]]
address = "{second}"
"#
    );
    Ok(Config::parse(&text, "bench.toml")?)
}

/// Loads weir as the agent does. Only the LB veth gets the program attached: the second
/// veth only transmits, which needs it in the redirect map, not a program.
fn load_weir(config: &Config, redirect_dev: &str) -> Result<Dataplane> {
    let mut dataplane = Dataplane::load(LoadOptions {
        conntrack_entries: config.agent.conntrack_entries,
        maglev_ring_entries: DEFAULT_MAGLEV_RING_ENTRIES,
        nat_entries: lb_common::DEFAULT_NAT_ENTRIES,
        pins: None,
    })?;
    dataplane.add_tx_port(dataplane::ifindex(redirect_dev)?)?;
    Ok(dataplane)
}

/// Moves `dev`'s NAPI polling into a kernel thread, pins it to `cpu`, returns its pid.
/// The thread is found as the one that appeared when threaded mode was switched on.
fn pin_napi_thread(ns: &Netns, dev: &str, cpu: usize) -> Result<i32> {
    // Thread names are cut to 15 characters.
    let prefix: String = format!("napi/{dev}-").chars().take(15).collect();
    let before = cpu::threads_named(&prefix)?;
    ns.set_threaded_napi(dev, true)?;
    let appeared: Vec<i32> = cpu::threads_named(&prefix)?
        .difference(&before)
        .copied()
        .collect();
    let [pid] = appeared[..] else {
        bail!("expected one new NAPI thread for {dev}, found {appeared:?}");
    };
    cpu::pin_thread(pid, cpu)?;
    Ok(pid)
}
