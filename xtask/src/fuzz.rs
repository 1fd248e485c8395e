//! `cargo xtask fuzz`: the long forms of the fuzz tests that `cargo xtask test` runs
//! bounded — the datapath fuzzer (`lb-userspace/tests/fuzz.rs`, a million frames by
//! default) and the parsers' property tests (`WEIR_FUZZ_CASES` cases each).

use anyhow::Result;

use crate::cargo;

/// Runs the fuzzers with `frames` datapath frames and `cases` cases per parser property,
/// from `seed` when given (each run prints its seed, so a failure can be replayed).
pub fn run_fuzz(frames: u64, cases: u32, seed: Option<u64>) -> Result<()> {
    let mut command = cargo()
        .args(["test", "--release", "-p", "lb-userspace", "--test", "fuzz"])
        .args(["--", "--nocapture"])
        .env("WEIR_FUZZ_FRAMES", frames.to_string())
        .env("PROPTEST_CASES", cases.to_string());
    if let Some(seed) = seed {
        command = command.env("WEIR_FUZZ_SEED", seed.to_string());
    }
    command.run()
}
