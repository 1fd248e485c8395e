//! `cargo xtask bench`: measures weir against its yardsticks, in the same run.
//!
//! * The `dataplane` bench of lb-userspace (`benches/dataplane.rs`, no test harness): it
//!   builds its namespaces, loads weir's XDP program and its own yardsticks in-process,
//!   and prints one table of per-packet costs and packet rates, with the ratios to the
//!   baselines of `../shared/bench-method.md`. About a minute after the build.
//! * The `tls` bench of the test bed (`tests/benches/tls.rs`): `weir proxy` against
//!   HAProxy on the same backends and certificate (handshakes, keep-alive requests,
//!   latency, CPU per request). It runs the release binaries of the build. About two
//!   minutes.
//! * The `endtoend` bench of the test bed (`tests/benches/endtoend.rs`): weir DSR, weir
//!   NAT and HAProxy (`mode tcp`) under `wrk` on the same backends (requests/s, p99, the
//!   LB's CPU per connection), with the release agent. About two minutes.

use anyhow::Result;
use weir_testbed::bins::{TEST_SERVER_BIN_ENV, WEIR_BIN_ENV};

use crate::{build::Built, cargo};

/// Runs the benchmarks.
pub fn run_bench(built: &Built) -> Result<()> {
    cargo()
        .args(["bench", "--package", "lb-userspace", "--bench", "dataplane"])
        .run()?;
    for bench in ["tls", "endtoend"] {
        cargo()
            .args(["bench", "--package", "weir-tests", "--bench", bench])
            .env(WEIR_BIN_ENV, &built.weir_bin)
            .env(TEST_SERVER_BIN_ENV, &built.test_server_bin)
            .run()?;
    }
    Ok(())
}
