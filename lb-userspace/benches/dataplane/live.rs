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
//! The drop cases send what the LB must drop instead: UDP from a denied source, or a
//! TCP SYN flood from 1024 sources over the VIP's per-source rate limit; weir drops it
//! in XDP, nftables in its ingress hook (the earliest the kernel's firewall sees a
//! packet). Their rate is what the LB veth took in.
//!
//! Every case runs once per round, so cases interleave; each run warms up, then counts
//! what reached the sink (or the LB) over a window.

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
    generator::{Generator, Stop, Traffic},
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

/// The drop cases: a UDP VIP that denies `DENIED_SOURCES`, where `DENIED_CLIENT`
/// sends from; a TCP VIP whose sources may open one flow a second, flooded with SYNs
/// from `FLOOD_SOURCES` addresses.
const DENIED_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
const DENIED_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 100);
const DENIED_SOURCES: &str = "198.18.2.0/24";
const FLOOD_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 30);
const FLOOD_VIP_PORT: u16 = 80;
const FIRST_FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 16, 0);
pub const FLOOD_SOURCES: u32 = 1024;
const FLOOD_PREFIX: &str = "198.18.16.0/22";
/// nftables' table for the drop cases, on the LB veth's ingress hook.
const NFT_DROP_TABLE: &str = "weir_bench_drop";

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
    /// weir's program dropping UDP from a source its VIP denies.
    WeirDenied,
    /// nftables dropping the same traffic in the LB veth's ingress hook.
    NftablesDenied,
    /// weir's program dropping a SYN flood over its VIP's per-source rate limit.
    WeirFlood,
    /// nftables dropping the same flood in the LB veth's ingress hook.
    NftablesFlood,
}

impl Case {
    pub const ALL: [Case; 9] = [
        Case::WeirTx,
        Case::Ceiling,
        Case::Nftables,
        Case::WeirRedirect,
        Case::WeirNatTx,
        Case::WeirDenied,
        Case::NftablesDenied,
        Case::WeirFlood,
        Case::NftablesFlood,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Case::WeirTx => "weir, DSR via XDP_TX",
            Case::Ceiling => "ceiling: bare MAC swap, XDP_TX",
            Case::Nftables => "nftables DNAT jhash mod 2, forwarding",
            Case::WeirRedirect => "weir, DSR via XDP_REDIRECT to 2nd veth",
            Case::WeirNatTx => "weir, NAT (DNAT+SNAT) via XDP_TX",
            Case::WeirDenied => "drop: weir, denied source (UDP)",
            Case::NftablesDenied => "drop: nftables ingress, same traffic",
            Case::WeirFlood => "drop: weir, SYN flood over new_flow_rate",
            Case::NftablesFlood => "drop: nftables ingress, same flood",
        }
    }

    /// The case measures what the LB drops, not what it forwards.
    pub fn drops(self) -> bool {
        matches!(
            self,
            Case::WeirDenied | Case::NftablesDenied | Case::WeirFlood | Case::NftablesFlood
        )
    }

    fn traffic(self) -> Result<Traffic> {
        Ok(match self {
            Case::WeirDenied | Case::NftablesDenied => Traffic {
                frame: udp_frame(DENIED_CLIENT, DENIED_VIP)?,
                flows: FLOWS,
                sources: 1,
            },
            Case::WeirFlood | Case::NftablesFlood => Traffic {
                frame: syn_frame(FIRST_FLOOD_SOURCE, FLOOD_VIP)?,
                flows: FLOWS,
                sources: FLOOD_SOURCES,
            },
            _ => Traffic {
                frame: udp_frame(CLIENT, VIP)?,
                flows: FLOWS,
                sources: 1,
            },
        })
    }
}

/// One run of one case.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Frames that came back to the sink (the drop cases: that the LB took in), in
    /// millions per second.
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
            generator.send(&case.traffic()?)?;
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

    let frames = if case.drops() {
        let taken = after.taken_in - before.taken_in;
        ensure!(taken > 0, "the LB took no frame in");
        check_dropper(case, &before, &after, taken)?;
        taken
    } else {
        let delivered = after.delivered - before.delivered;
        ensure!(delivered > 0, "no frame came back to the sink");
        check_forwarder(case, &before, &after, delivered)?;
        delivered
    };
    let seconds = (after.at - before.at).as_secs_f64();
    let napi = (after.napi_runtime - before.napi_runtime).as_secs_f64();
    let busy = (after.lb_cpu_busy - before.lb_cpu_busy).as_secs_f64();
    Ok(Sample {
        mpps: frames as f64 / seconds / 1e6,
        napi_ns_per_packet: napi * 1e9 / frames as f64,
        lb_cpu_busy: busy / seconds,
    })
}

/// The counters a window is measured between.
struct Snapshot {
    delivered: u64,
    /// Frames the LB veth took in, whatever became of them.
    taken_in: u64,
    at: Instant,
    napi_runtime: Duration,
    lb_cpu_busy: Duration,
    weir: BTreeMap<Counter, u64>,
    ip_forwarded: u64,
    ip_received: u64,
}

impl Snapshot {
    fn take(generator: &Generator, lb: &LoadBalancer) -> Result<Snapshot> {
        Ok(Snapshot {
            delivered: generator.delivered()?,
            taken_in: lb.taken_in()?,
            at: Instant::now(),
            napi_runtime: cpu::thread_runtime(lb.napi_thread)?,
            lb_cpu_busy: cpu::busy_time(cpu::LB_CPU)?,
            weir: lb.dataplane.global_counters()?,
            ip_forwarded: lb.ip_counter("ForwDatagrams")?,
            ip_received: lb.ip_counter("InReceives")?,
        })
    }
}

/// Fails unless the forwarder under test forwarded what the sink counted, by its own
/// count: weir's verdict counters, or the kernel's IP forwarding counter. (The ceiling's
/// program cannot do anything else.)
fn check_forwarder(case: Case, before: &Snapshot, after: &Snapshot, delivered: u64) -> Result<()> {
    let forwarded = match case {
        Case::WeirTx | Case::WeirNatTx => weir_verdicts(&before.weir, &after.weir, Counter::Tx)?,
        Case::WeirRedirect => weir_verdicts(&before.weir, &after.weir, Counter::Redirect)?,
        Case::Nftables => after.ip_forwarded - before.ip_forwarded,
        _ => return Ok(()),
    };
    // The counters are read one after the other: allow for the frames in flight.
    ensure!(
        delivered as f64 <= 1.01 * forwarded as f64,
        "the sink counted {delivered} frames, but only {forwarded} were forwarded"
    );
    Ok(())
}

/// Fails unless the dropper under test dropped what the LB took in: weir by its own
/// count, nftables by letting (almost) nothing through to IP.
fn check_dropper(case: Case, before: &Snapshot, after: &Snapshot, taken: u64) -> Result<()> {
    let reason = match case {
        Case::WeirDenied => Counter::DropFirewall,
        Case::WeirFlood => Counter::DropRateLimited,
        _ => {
            let received = after.ip_received - before.ip_received;
            ensure!(
                received as f64 <= 0.01 * taken as f64,
                "nftables let {received} of {taken} frames through to IP"
            );
            return Ok(());
        }
    };
    weir_verdicts(&before.weir, &after.weir, reason)?;
    let verdicts = verdict_count(&after.weir) - verdict_count(&before.weir);
    // The counters are read one after the other: allow for the frames in flight.
    ensure!(
        taken as f64 <= 1.01 * verdicts as f64,
        "the LB took {taken} frames in, but weir decided on only {verdicts}"
    );
    Ok(())
}

/// The frames weir filed under `reason` between two readings of its counters. Fails
/// unless that is at least 99% of its verdicts: the rate must be weir doing what the
/// case measures (forwarding, or dropping for that reason), not anything else.
fn weir_verdicts(
    before: &BTreeMap<Counter, u64>,
    after: &BTreeMap<Counter, u64>,
    reason: Counter,
) -> Result<u64> {
    let moved = |counter: &Counter| after[counter] - before.get(counter).copied().unwrap_or(0);
    let verdicts = verdict_count(after) - verdict_count(before);
    let forwarded = moved(&reason);
    if (forwarded as f64) < 0.99 * verdicts as f64 {
        let changes: Vec<String> = after
            .keys()
            .filter(|c| moved(c) > 0)
            .map(|c| format!("{}={}", c.name(), moved(c)))
            .collect();
        bail!(
            "weir did not file the traffic under {}: {}",
            reason.name(),
            changes.join(" ")
        );
    }
    Ok(forwarded)
}

/// The packets weir has given a verdict so far.
fn verdict_count(counters: &BTreeMap<Counter, u64>) -> u64 {
    counters
        .iter()
        .filter(|(counter, _)| counter.verdict().is_some())
        .map(|(_, count)| count)
        .sum()
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
    let generator = Generator::new(gen_ns, &tx.a, &[&redirect.a], &Case::WeirTx.traffic()?)?;
    let lb = LoadBalancer::new(lb_ns, tx.b, redirect.b)?;
    Ok((generator, lb))
}

/// A client's first frame: UDP from `src` to `vip`, 64 bytes on the wire. The
/// generator rewrites its header into every frame, with the source port of the frame's
/// flow.
fn udp_frame(src: Ipv4Addr, vip: Ipv4Addr) -> Result<Vec<u8>> {
    let headers = PacketBuilder::ethernet2(GEN_MAC.octets(), LB_MAC.octets())
        .ipv4(src.octets(), vip.octets(), 64)
        .udp(FIRST_CLIENT_PORT, VIP_PORT);
    let mut frame = Vec::new();
    headers.write(&mut frame, &[0; FRAME_LEN - 14 - 20 - 8])?;
    // No UDP checksum (legal over IPv4): the source port changes from frame to frame.
    frame[14 + 20 + 6..14 + 20 + 8].fill(0);
    Ok(frame)
}

/// A TCP SYN from `src` to `vip`, padded to 64 bytes on the wire as a NIC would. Its TCP
/// checksum holds for the first source and port only: nothing on the drop path reads it.
fn syn_frame(src: Ipv4Addr, vip: Ipv4Addr) -> Result<Vec<u8>> {
    let headers = PacketBuilder::ethernet2(GEN_MAC.octets(), LB_MAC.octets())
        .ipv4(src.octets(), vip.octets(), 64)
        .tcp(FIRST_CLIENT_PORT, FLOOD_VIP_PORT, 1, 64240)
        .syn();
    let mut frame = Vec::new();
    headers.write(&mut frame, &[])?;
    frame.resize(FRAME_LEN, 0);
    Ok(frame)
}

/// The LB namespace: weir loaded and programmed, the bench's XDP_TX and XDP_PASS
/// programs, and the nftables load balancer.
struct LoadBalancer {
    dataplane: Dataplane,
    state: Reconciler,
    bench: Ebpf,
    attached: Option<Attached>,
    /// The nftables ingress drop table is installed.
    ingress_drop: bool,
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
            ingress_drop: false,
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
            Case::WeirDenied | Case::WeirFlood => {
                self.apply(TX_BACKENDS, Forwarding::Dsr)?;
                self.attach_weir()
            }
            Case::NftablesDenied => self.drop_in_ingress(DENIED_SOURCES),
            Case::NftablesFlood => self.drop_in_ingress(FLOOD_PREFIX),
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

    /// Drops packets from `prefix` in nftables' ingress hook of the LB veth, with the
    /// bench's XDP_PASS program attached (XDP sees every packet first either way).
    fn drop_in_ingress(&mut self, prefix: &str) -> Result<()> {
        self.attach_bench(bench_xdp::PASS)?;
        let ruleset = format!(
            "add table netdev {NFT_DROP_TABLE}; \
             add chain netdev {NFT_DROP_TABLE} c \
             {{ type filter hook ingress device \"{}\" priority -500; }}; \
             add rule netdev {NFT_DROP_TABLE} c ip saddr {prefix} drop",
            self.dev
        );
        self.ns
            .run(&["nft", &ruleset])
            .context("installing the nftables ingress drop")?;
        self.ingress_drop = true;
        Ok(())
    }

    /// Frames the LB veth took in, whatever became of them: its received packets, which
    /// on a veth with an XDP program count every frame its NAPI polled (`xdp_packets`).
    fn taken_in(&self) -> Result<u64> {
        let table = self.proc_net("dev")?;
        let prefix = format!("{}:", self.dev);
        table
            .lines()
            .find_map(|line| line.trim_start().strip_prefix(&prefix))
            .and_then(|counters| counters.split_whitespace().nth(1)?.parse().ok())
            .with_context(|| format!("no received packets of {} in /proc/net/dev", self.dev))
    }

    /// `/proc/net/FILE` of the LB namespace.
    fn proc_net(&self, file: &str) -> Result<String> {
        // The calling thread's view: inside `enter`, the LB namespace's.
        self.ns
            .enter(|| fs::read_to_string(format!("/proc/thread-self/net/{file}")))?
            .with_context(|| format!("reading the LB namespace's /proc/net/{file}"))
    }

    /// An `Ip:` counter of the LB namespace, e.g. forwarded datagrams (`ForwDatagrams`).
    fn ip_counter(&self, name: &str) -> Result<u64> {
        snmp_counter(&self.proc_net("snmp")?, "Ip", name)
    }

    fn detach(&mut self) -> Result<()> {
        if self.ingress_drop {
            self.ns
                .run(&["nft", "delete", "table", "netdev", NFT_DROP_TABLE])
                .context("removing the nftables ingress drop")?;
            self.ingress_drop = false;
        }
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

/// weir's configuration: the VIP, UDP, with two backends, and the drop cases' VIPs. In
/// NAT, the LB's address is the VIP's source (its backends' neighbour entries still
/// lead to the sink).
fn weir_config(
    dev: &str,
    redirect_dev: &str,
    backends: [Ipv4Addr; 2],
    forwarding: Forwarding,
) -> Result<Config> {
    let backends: String = backends
        .iter()
        .map(|addr| format!("[[vip.backend]]\naddress = \"{addr}\"\n"))
        .collect();
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
{nat}{backends}
[[vip]]
name = "denied"
address = "{DENIED_VIP}"
port = {VIP_PORT}
protocol = "udp"
deny_sources = ["{DENIED_SOURCES}"]
{backends}
[[vip]]
name = "flood"
address = "{FLOOD_VIP}"
port = {FLOOD_VIP_PORT}
protocol = "tcp"
new_flow_rate = 1
{backends}"#
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
