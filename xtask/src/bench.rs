//! `cargo xtask bench`: measures weir's packet rate against the baselines of
//! `../shared/bench-method.md`, in the same run.
//!
//! The benchmark is the `dataplane` bench of lb-userspace (`benches/dataplane.rs`, no
//! test harness): it builds its namespaces, loads weir's XDP program and its own
//! yardsticks in-process, and prints one table of per-packet costs and packet rates,
//! with the ratios to the baselines. It takes about a minute after the build.

use anyhow::Result;

use crate::{build::Built, cargo};

/// Runs the benchmark. It drives the dataplane in-process rather than through the
/// binaries that `_built` names (the bench profile reuses most of that release build).
pub fn run_bench(_built: &Built) -> Result<()> {
    cargo()
        .args(["bench", "--package", "lb-userspace", "--bench", "dataplane"])
        .run()
}
