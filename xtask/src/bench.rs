//! `cargo xtask bench`: measures weir's packet rate against the baselines of
//! `../shared/bench-method.md`, in the same run.
//!
//! The benchmark is the `dataplane` bench of lb-userspace (`benches/dataplane.rs`, no
//! test harness): it builds its namespaces, loads weir's XDP program and its own
//! yardsticks in-process, and prints one table of per-packet costs and packet rates,
//! with the ratios to the baselines. It takes about a minute after the build.
//!
//! Then the end-to-end bench of weir-tests (`tests/benches/endtoend.rs`): weir DSR, weir
//! NAT and HAProxy under `wrk` on the namespace test bed, with the release agent.

use anyhow::Result;

use crate::{build::Built, cargo};

/// Runs the benchmarks. The dataplane bench drives the dataplane in-process; the
/// end-to-end bench runs the agent that `built` names.
pub fn run_bench(built: &Built) -> Result<()> {
    cargo()
        .args(["bench", "--package", "lb-userspace", "--bench", "dataplane"])
        .run()?;
    cargo()
        .args(["bench", "--package", "weir-tests", "--bench", "endtoend"])
        .env("WEIR_BIN", &built.weir_bin)
        .env("WEIR_TEST_SERVER_BIN", &built.test_server_bin)
        .run()
}
