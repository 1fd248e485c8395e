//! The summary: one table per part, and the ratios that give the figures their meaning.
//!
//! Runs vary a lot on these shared machines, from round to round rather than from case
//! to case, so comparisons between cases (differences, ratios) are taken round by
//! round, between runs made seconds apart, before the median is.

use std::time::Duration;

use crate::{
    live::{self, Case, Rates, Sample},
    per_packet::{self, Path, PerPacket},
};

/// Median and minimum of a series of runs.
#[derive(Clone, Copy, Debug)]
struct Summary {
    median: f64,
    min: f64,
}

impl Summary {
    /// The summary of `runs` (NaN when there are none).
    fn of(runs: &[f64]) -> Summary {
        let mut sorted = runs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        let min = sorted.first().copied().unwrap_or(f64::NAN);
        Summary { median, min }
    }

    /// The summary of `combine(a, b)` over the runs of the same rounds.
    fn paired(a: &[f64], b: &[f64], combine: impl Fn(f64, f64) -> f64) -> Summary {
        let runs: Vec<f64> = a.iter().zip(b).map(|(&a, &b)| combine(a, b)).collect();
        Summary::of(&runs)
    }
}

pub fn print(per_packet: &PerPacket, rates: &Rates, elapsed: Duration) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!();
    println!(
        "weir dataplane benchmark: kernel {}, cases interleaved round by round, {:.0} s",
        kernel.trim(),
        elapsed.as_secs_f64()
    );
    print_per_packet(per_packet);
    print_rates(rates);
    print_comparisons(per_packet, rates);
}

fn print_per_packet(per_packet: &PerPacket) {
    let ns = |path| per_packet.runs.get(&path).map_or(&[][..], Vec::as_slice);
    let runs = ns(Path::EmptyPass).len();
    println!();
    println!(
        "1. BPF_PROG_TEST_RUN, ns per packet: the kernel's mean over {:e} repeats;",
        f64::from(per_packet::REPEAT)
    );
    println!("   median and min of {runs} runs; over floor: minus the empty program's run");
    println!(
        "   {:<52} {:>8} {:>8} {:>10}",
        "path", "median", "min", "over floor"
    );
    for path in per_packet.runs.keys().copied().filter(|&p| !is_wrapper(p)) {
        let summary = Summary::of(ns(path));
        let over_floor = Summary::paired(ns(path), ns(Path::EmptyPass), |a, b| a - b);
        println!(
            "   {:<52} {:>8.1} {:>8.1} {:>10.1}",
            path.label(),
            summary.median,
            summary.min,
            over_floor.median
        );
    }
    let (new, same) = (
        Summary::of(ns(Path::ChurnNewFlow)),
        Summary::of(ns(Path::ChurnSameFlow)),
    );
    println!(
        "   * per run: established + (new flow every run - one flow), both through a wrapper\n     \
         that rewrites the source and tail calls weir (medians {:.1} and {:.1} ns). The\n     \
         {}-entry LRU connection table fills up in the first run; then every insert evicts.",
        new.median,
        same.median,
        per_packet::CONNTRACK_ENTRIES
    );
    println!(
        "     NAT: established DSR + (NAT path - DSR), both through a wrapper that restores the\n     \
         headers NAT rewrote and tail calls weir (medians {:.1}, {:.1} and {:.1} ns).",
        Summary::of(ns(Path::ReplayNatRequest)).median,
        Summary::of(ns(Path::ReplayNatReply)).median,
        Summary::of(ns(Path::ReplayDsr)).median,
    );
}

fn is_wrapper(path: Path) -> bool {
    matches!(
        path,
        Path::ChurnSameFlow
            | Path::ChurnNewFlow
            | Path::ChurnStateless
            | Path::ReplayDsr
            | Path::ReplayNatRequest
            | Path::ReplayNatReply
    )
}

fn print_rates(rates: &Rates) {
    let runs = rates.values().map(Vec::len).max().unwrap_or(0);
    println!();
    println!(
        "2. Live veth, Mpps: {}-byte UDP frames from {} flows; generator on CPU 0, LB NAPI",
        live::FRAME_LEN + 4,
        live::FLOWS
    );
    println!(
        "   thread on CPU 1; {} ms warm-up, then a {} ms window; median and min of {runs} runs",
        live::WARMUP.as_millis(),
        live::WINDOW.as_millis()
    );
    println!(
        "   drop cases: what the LB veth took in; the flood: TCP SYN from {} sources,",
        live::FLOOD_SOURCES
    );
    println!("   each allowed one new flow a second");
    println!(
        "   {:<42} {:>8} {:>8} {:>13} {:>9}",
        "case", "Mpps", "min", "NAPI ns/pkt", "LB CPU"
    );
    for (case, samples) in rates {
        let mpps = Summary::of(&field(samples, |s| s.mpps));
        let ns = Summary::of(&field(samples, |s| s.napi_ns_per_packet));
        let busy = Summary::of(&field(samples, |s| s.lb_cpu_busy));
        println!(
            "   {:<42} {:>8.3} {:>8.3} {:>13.0} {:>8.0}%",
            case.label(),
            mpps.median,
            mpps.min,
            ns.median,
            busy.median * 100.0
        );
    }
}

fn print_comparisons(per_packet: &PerPacket, rates: &Rates) {
    let runs = |case| rates.get(&case).map_or(&[][..], Vec::as_slice);
    let mpps = |case| field(runs(case), |s| s.mpps);
    let napi_ns = |case| field(runs(case), |s| s.napi_ns_per_packet);
    println!();
    println!("   ratios of the Mpps (median over rounds of each round's ratio, and min):");
    for (label, baseline) in [
        ("weir / ceiling", Case::Ceiling),
        ("weir / nftables", Case::Nftables),
    ] {
        let ratio = Summary::paired(&mpps(Case::WeirTx), &mpps(baseline), |a, b| a / b);
        println!(
            "   {label:<20} {:>6.2}  (min {:.2})",
            ratio.median, ratio.min
        );
    }
    for (label, weir, nftables) in [
        ("denied source", Case::WeirDenied, Case::NftablesDenied),
        ("SYN flood", Case::WeirFlood, Case::NftablesFlood),
    ] {
        let ratio = Summary::paired(&mpps(weir), &mpps(nftables), |a, b| a / b);
        println!(
            "   drop, weir / nftables ingress, {label:<14} {:>6.2}  (min {:.2}; goal >= 5)",
            ratio.median, ratio.min
        );
    }
    let ns = |path| per_packet.runs.get(&path).map_or(&[][..], Vec::as_slice);
    let live = Summary::paired(&napi_ns(Case::WeirTx), &napi_ns(Case::Ceiling), |a, b| {
        a - b
    });
    let test_run = Summary::paired(ns(Path::Tcp4Established), ns(Path::MacSwapTx), |a, b| a - b);
    println!(
        "   weir's cost over the MAC swap: {:.0} ns/pkt live (NAPI thread), {:.0} ns in\n   \
         BPF_PROG_TEST_RUN (TCP v4 established); medians of the rounds' differences",
        live.median, test_run.median
    );
    let not_vip = Summary::paired(ns(Path::HostAddress), ns(Path::EmptyPass), |a, b| a - b);
    let nat = Summary::paired(ns(Path::Nat4Reply), ns(Path::Nat4Request), |a, b| a / b);
    println!(
        "   a packet for the host over the empty program: {:.0} ns; NAT reply / NAT request:\n   \
         {:.2} (BPF_PROG_TEST_RUN, medians of the rounds' differences and ratios)",
        not_vip.median, nat.median
    );
}

fn field(samples: &[Sample], field: impl Fn(&Sample) -> f64) -> Vec<f64> {
    samples.iter().map(field).collect()
}
