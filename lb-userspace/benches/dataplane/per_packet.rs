//! Part 1: nanoseconds per packet of each fixture path, with BPF_PROG_TEST_RUN.
//!
//! The kernel runs a program `REPEAT` times on one frame and reports the mean time per
//! run, about 30 ns of which is the harness itself: the empty program measures that
//! floor. Everything runs in the fixture bed (`tests/common`), whose routes and
//! neighbours are what weir's `bpf_fib_lookup` sees, on the LB's CPU; the cases take
//! turns, one run each per round.
//!
//! Repeating one frame makes every run after the first a connection-table hit. The new
//! flow path is timed through `bench_flow_churn`, which moves the frame to a new flow
//! and tail calls weir: the same wrapper with the flow held still is subtracted, which
//! leaves weir's own cost of a new flow.
//!
//! NAT rewrites the frame, so a repeated run would see its own output: the NAT paths
//! are timed through `bench_replay`, which restores the headers and tail calls weir; the
//! same wrapper around the DSR frame is subtracted.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use etherparse::{Icmpv4Type, PacketBuilder, icmpv4::DestUnreachableHeader};
use lb_common::Verdict;

use crate::{
    bench_xdp,
    common::{
        Bed, CLIENT_MAC, CLIENT4, CLIENT6, HOST4, LB0_MAC, NEIGHBOURS, NOT_A_VIP4, ROUTER4,
        STATELESS_CONFIG, STATELESS4, VIP4, VIP6, mac_string, nat_config, tcp4, udp6,
    },
    cpu,
};

/// The NAT VIP of the fixture bed's NAT configuration, its backend and source address.
const NAT_VIP4: [u8; 4] = [198, 19, 0, 60];
const NAT_BACKEND4: [u8; 4] = [198, 18, 0, 11];
const NAT_SOURCE4: [u8; 4] = [198, 18, 0, 1];

/// Runs per BPF_PROG_TEST_RUN call.
pub const REPEAT: u32 = 1_000_000;
/// The fixture bed's connection table size (`Bed::new`).
pub const CONNTRACK_ENTRIES: u32 = 65536;

/// The paths timed, in the order they are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    EmptyPass,
    MacSwapTx,
    Tcp4Established,
    /// Derived: `Tcp4Established` + `ChurnNewFlow` − `ChurnSameFlow`.
    Tcp4NewFlow,
    /// Derived: `Tcp4Established` + `ChurnStateless` − `ChurnSameFlow`.
    Tcp4NewFlowStateless,
    Udp6Established,
    VipMiss,
    HostAddress,
    IcmpTooBig,
    ChurnSameFlow,
    ChurnNewFlow,
    ChurnStateless,
    /// Derived: `Tcp4Established` + `ReplayNatRequest` − `ReplayDsr`.
    Nat4Request,
    /// Derived: `Tcp4Established` + `ReplayNatReply` − `ReplayDsr`.
    Nat4Reply,
    ReplayDsr,
    ReplayNatRequest,
    ReplayNatReply,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Path::EmptyPass => "empty program, XDP_PASS (harness floor)",
            Path::MacSwapTx => "bare MAC swap, XDP_TX (harness floor)",
            Path::Tcp4Established => "weir TCP v4, established (conntrack hit)",
            Path::Tcp4NewFlow => "weir TCP v4, new flow (conntrack miss + insert) *",
            Path::Tcp4NewFlowStateless => "weir TCP v4, new flow, VIP with conntrack = false *",
            Path::Udp6Established => "weir UDP v6, established",
            Path::VipMiss => "weir VIP miss, to the NAT source (XDP_PASS)",
            Path::HostAddress => "weir, to another host address (XDP_PASS)",
            Path::IcmpTooBig => "weir ICMP frag-needed, established flow",
            Path::ChurnSameFlow => "wrapper + weir, one flow",
            Path::ChurnNewFlow => "wrapper + weir, new flow every run",
            Path::ChurnStateless => "wrapper + weir, new flow every run, conntrack = false",
            Path::Nat4Request => "weir TCP v4 NAT, client → backend (established) *",
            Path::Nat4Reply => "weir TCP v4 NAT, backend reply → client *",
            Path::ReplayDsr => "restore wrapper + weir DSR",
            Path::ReplayNatRequest => "restore wrapper + weir NAT request",
            Path::ReplayNatReply => "restore wrapper + weir NAT reply",
        }
    }
}

/// Nanoseconds per packet of every path, run by run (round by round).
pub struct PerPacket {
    pub runs: BTreeMap<Path, Vec<f64>>,
}

/// What runs on a case's frame.
#[derive(Clone, Copy)]
enum Program {
    Weir,
    Bench(&'static str),
    /// `bench_flow_churn`, moving the flow by `step` each run.
    Churn {
        step: u32,
    },
    /// `bench_replay`, restoring the case's frame before each run.
    Replay,
}

struct Case {
    path: Path,
    program: Program,
    frame: Vec<u8>,
    /// Run once before each timed run: puts the flow that the frame refers to in the
    /// connection table (the other cases' new flows may have evicted it).
    prime: Option<Vec<u8>>,
    verdict: Verdict,
}

pub fn measure(rounds: usize) -> Result<PerPacket> {
    let _pinned = cpu::pin_current_thread(cpu::LB_CPU)?;
    let mut harness = Harness::new()?;
    let cases = cases(&mut harness.bed)?;
    let mut samples: BTreeMap<Path, Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        for case in &cases {
            let ns = harness.time(case).with_context(|| case.path.label())?;
            samples.entry(case.path).or_default().push(ns);
        }
    }
    let derived = [
        (Path::Tcp4NewFlow, Path::ChurnNewFlow, Path::ChurnSameFlow),
        (
            Path::Tcp4NewFlowStateless,
            Path::ChurnStateless,
            Path::ChurnSameFlow,
        ),
        (Path::Nat4Request, Path::ReplayNatRequest, Path::ReplayDsr),
        (Path::Nat4Reply, Path::ReplayNatReply, Path::ReplayDsr),
    ];
    for (path, wrapped, wrapper) in derived {
        let series = derive(&samples, wrapped, wrapper);
        samples.insert(path, series);
    }
    Ok(PerPacket { runs: samples })
}

/// Per round: established DSR + (the wrapper around the path − the same wrapper around
/// established DSR), i.e. the path's own cost with the wrapper's cancelled out.
fn derive(samples: &BTreeMap<Path, Vec<f64>>, wrapped: Path, wrapper: Path) -> Vec<f64> {
    let series = |path| samples.get(&path).map(Vec::as_slice).unwrap_or_default();
    let rounds = series(Path::Tcp4Established)
        .iter()
        .zip(series(wrapped))
        .zip(series(wrapper));
    rounds
        .map(|((established, path), same)| established + path - same)
        .collect()
}

fn cases(bed: &mut Bed) -> Result<Vec<Case>> {
    let tcp_flow = tcp4(CLIENT4, 40000, VIP4, 80);
    let (nat_request, nat_reply) = nat_frames(bed)?;
    let case = |path, program, frame: &[u8], verdict| Case {
        path,
        program,
        frame: frame.to_vec(),
        prime: None,
        verdict,
    };
    Ok(vec![
        case(
            Path::EmptyPass,
            Program::Bench(bench_xdp::PASS),
            &tcp_flow,
            Verdict::Pass,
        ),
        case(
            Path::MacSwapTx,
            Program::Bench(bench_xdp::MAC_SWAP),
            &tcp_flow,
            Verdict::Tx,
        ),
        case(Path::Tcp4Established, Program::Weir, &tcp_flow, Verdict::Tx),
        case(
            Path::ChurnSameFlow,
            Program::Churn { step: 0 },
            &tcp_flow,
            Verdict::Tx,
        ),
        case(
            Path::ChurnNewFlow,
            Program::Churn { step: 1 },
            &tcp_flow,
            Verdict::Tx,
        ),
        case(
            Path::ChurnStateless,
            Program::Churn { step: 1 },
            &tcp4(CLIENT4, 40000, STATELESS4, 80),
            Verdict::Tx,
        ),
        case(
            Path::Udp6Established,
            Program::Weir,
            &udp6(CLIENT6, 40000, VIP6, 53),
            Verdict::Tx,
        ),
        case(
            Path::VipMiss,
            Program::Weir,
            &tcp4(CLIENT4, 40000, NOT_A_VIP4, 80),
            Verdict::Pass,
        ),
        case(
            Path::HostAddress,
            Program::Weir,
            &tcp4(CLIENT4, 40000, HOST4, 80),
            Verdict::Pass,
        ),
        Case {
            prime: Some(tcp_flow.clone()),
            ..case(
                Path::IcmpTooBig,
                Program::Weir,
                &frag_needed(40000)?,
                Verdict::Tx,
            )
        },
        case(Path::ReplayDsr, Program::Replay, &tcp_flow, Verdict::Tx),
        case(
            Path::ReplayNatRequest,
            Program::Replay,
            &nat_request,
            Verdict::Tx,
        ),
        Case {
            prime: Some(nat_request.clone()),
            ..case(
                Path::ReplayNatReply,
                Program::Replay,
                &nat_reply,
                Verdict::Tx,
            )
        },
    ])
}

/// A client's request to the NAT VIP, and its backend's reply (to the NAT port the
/// program gave the flow).
fn nat_frames(bed: &mut Bed) -> Result<(Vec<u8>, Vec<u8>)> {
    let request = tcp4(CLIENT4, 40000, NAT_VIP4, 80);
    let (verdict, translated) = bed.run(&request);
    ensure!(
        verdict == Verdict::Tx as u32,
        "NAT request: verdict {verdict}"
    );
    let nat_port = u16::from_be_bytes([translated[34], translated[35]]);
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv4(NAT_BACKEND4, NAT_SOURCE4, 64)
        .tcp(8080, nat_port, 1000, 64240)
        .syn()
        .ack(1001)
        .write(&mut reply, crate::common::PAYLOAD)?;
    Ok((request, reply))
}

/// ICMP "fragmentation needed" from a router on the client's path, about the backend's
/// DSR reply to the client's flow `CLIENT4:port → VIP4:80`.
fn frag_needed(port: u16) -> Result<Vec<u8>> {
    let mut reply = Vec::new();
    PacketBuilder::ipv4(VIP4, CLIENT4, 64)
        .tcp(80, port, 7, 1024)
        .write(&mut reply, &[0; 64])?;
    let too_big = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    });
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB0_MAC)
        .ipv4(ROUTER4, VIP4, 64)
        .icmpv4(too_big)
        // The IP header and the first 8 bytes of its payload, as RFC 792 requires.
        .write(&mut frame, &reply[..28])?;
    Ok(frame)
}

/// The fixture bed with weir programmed, and the bench object with its wrapper
/// pointing at weir.
struct Harness {
    bed: Bed,
    bench: Ebpf,
}

impl Harness {
    fn new() -> Result<Harness> {
        let mut bed = Bed::new();
        bed.apply(&(nat_config("20000-29999") + STATELESS_CONFIG));
        // A repeated run sees the frame as the previous run left it, and weir forwards
        // only frames sent to lb0's MAC: the backends on lb0 take lb0's MAC, so that a
        // forwarded frame is sent to lb0 again. (NAT's wrapper restores the headers.)
        let lb0_mac = mac_string(LB0_MAC);
        for (dev, addr, _) in NEIGHBOURS.iter().filter(|(dev, ..)| *dev == "lb0") {
            bed.ns.ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &lb0_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        let mut bench = bench_xdp::load()?;
        bench_xdp::set_churn_target(&mut bench, bed.dataplane.program()?.fd()?)?;
        Ok(Harness { bed, bench })
    }

    /// Runs the case's program `REPEAT` times; the kernel's mean ns per run.
    fn time(&mut self, case: &Case) -> Result<f64> {
        if let Program::Churn { step } = case.program {
            bench_xdp::set(&mut self.bench, bench_xdp::maps::FLOW_STEP, step)?;
        }
        if let Program::Replay = case.program {
            let header: [u8; bench_xdp::REPLAY_HEADER_LEN] = case.frame
                [..bench_xdp::REPLAY_HEADER_LEN]
                .try_into()
                .context("a frame shorter than its headers")?;
            bench_xdp::set(&mut self.bench, bench_xdp::maps::REPLAY_HEADER, header)?;
        }
        if let Some(prime) = &case.prime {
            let (verdict, _) = self.bed.run(prime);
            ensure!(
                verdict == Verdict::Tx as u32,
                "priming the flow: verdict {verdict}"
            );
        }
        let program: &Xdp = match case.program {
            Program::Weir => self.bed.dataplane.program()?,
            Program::Bench(name) => bench_xdp::program(&self.bench, name)?,
            Program::Churn { .. } => bench_xdp::program(&self.bench, bench_xdp::FLOW_CHURN)?,
            Program::Replay => bench_xdp::program(&self.bench, bench_xdp::REPLAY)?,
        };
        let ctx = bench_xdp::xdp_md(case.frame.len(), self.bed.lb0);
        let options = TestRunOptions {
            data_in: Some(&case.frame),
            ctx_in: Some(&ctx),
            repeat: REPEAT,
            ..TestRunOptions::default()
        };
        // In the bed's namespace: weir's ingress ifindex and route lookups are there.
        let result = self.bed.ns.enter(|| program.test_run(options))??;
        ensure!(
            result.return_value == case.verdict as u32,
            "verdict {} instead of {:?}",
            result.return_value,
            case.verdict
        );
        Ok(result.duration.as_nanos() as f64)
    }
}
