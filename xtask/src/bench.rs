//! `cargo xtask bench`: measures weir's packet rate against the baselines of
//! `../shared/bench-method.md`, in the same run.

use anyhow::{Result, bail};

use crate::build::Built;

/// Runs the benchmark with the (release) binaries of `built`.
pub fn run_bench(built: &Built) -> Result<()> {
    let _ = built;
    bail!("bench not implemented yet")
}
