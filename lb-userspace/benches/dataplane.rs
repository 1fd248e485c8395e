//! The dataplane benchmark: `cargo xtask bench`, or as root
//! `cargo bench -p lb-userspace --bench dataplane`.
//!
//! 1. BPF_PROG_TEST_RUN: nanoseconds per packet of weir's paths in the fixture bed,
//!    next to an empty program and a bare MAC swap (the harness's own cost).
//! 2. Live: packets per second through a load-balancer namespace on a veth, weir
//!    against the bare XDP_TX ceiling and an nftables DNAT load balancer; and what the
//!    firewall drops (a denied source, a SYN flood over the per-source rate limit)
//!    against nftables dropping the same traffic in its ingress hook.
//!
//! The method is that of `../shared/bench-method.md`: one CPU generates, the other
//! forwards, the cases take turns round by round, and the medians over the rounds are
//! reported. Runs vary up to 2x on these shared machines, so a figure means something
//! only as a ratio to the baselines measured in the same run, which the summary prints.

#[path = "../tests/common/mod.rs"]
mod common;

// This file is the crate root, so its modules' paths are spelled out.
#[path = "dataplane/bench_xdp.rs"]
mod bench_xdp;
#[path = "dataplane/generator.rs"]
mod generator;
#[path = "dataplane/live.rs"]
mod live;
#[path = "dataplane/per_packet.rs"]
mod per_packet;
#[path = "dataplane/report.rs"]
mod report;

use std::time::Instant;

use anyhow::Result;
use weir_testbed::cpu;

/// Rounds: every case runs once per round. The machine's speed drifts by up to 2x over
/// seconds, which the cases of a round see alike; more, shorter rounds make the medians
/// (of figures, and of each round's ratios) steadier.
const ROUNDS: usize = 9;

fn main() -> Result<()> {
    weir_testbed::require_root()?;
    cpu::require_two_cpus()?;
    let started = Instant::now();
    eprintln!("part 1/2: BPF_PROG_TEST_RUN, {ROUNDS} rounds");
    let per_packet = per_packet::measure(ROUNDS)?;
    eprintln!("part 2/2: live veth, {ROUNDS} rounds");
    let rates = live::measure(ROUNDS)?;
    report::print(&per_packet, &rates, started.elapsed());
    Ok(())
}
