//! `cargo xtask demo`: shows weir balancing real traffic in the test bed.

use anyhow::{Result, bail};

use crate::build::Built;

/// Runs the demo with the binaries of `built`.
pub fn run_demo(built: &Built) -> Result<()> {
    let _ = built;
    bail!("demo not implemented yet")
}
