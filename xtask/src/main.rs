//! weir's developer tasks, run as `cargo xtask <task>` (see .cargo/config.toml).
//!
//! * `setup`: install the toolchain pieces and tools (idempotent, quick when done).
//! * `build [--release]`: setup, then build the workspace (the agent embeds the eBPF
//!   object) and the test server.
//! * `test`: setup, fmt check, clippy, build, every test. The project's test command.
//! * `demo`, `bench`: setup, build, then the demo or the benchmark.
//! * `fuzz`: setup, then the fuzzers for longer than the tests run them.
//!
//! This crate must build before the eBPF toolchain exists (it installs it): it depends
//! on nothing of weir's but the test bed.

mod bench;
mod build;
mod cmd;
mod demo;
mod fuzz;
mod setup;
mod style;
mod test;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::cmd::Cmd;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "weir's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing needs (apt packages, nightly rust-src,
    /// bpf-linker, rustfmt, clippy); quick and silent when everything is there.
    Setup,
    /// Setup, then build the workspace and the test server.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Setup, then fmt check, clippy -D warnings, build and all tests (needs root).
    Test,
    /// Setup, build, then run the demo (needs root).
    Demo,
    /// Setup, release build, then run the benchmark (needs root).
    Bench,
    /// Setup, then the datapath fuzzer and the parsers' property tests, longer than
    /// `test` runs them (needs root).
    Fuzz {
        /// Frames through the XDP program.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Cases per parser property.
        #[arg(long, default_value_t = 100_000)]
        cases: u32,
        /// Replay a run: the seed it printed.
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the whole chain of causes, without anyhow's backtrace.
            eprintln!("{}", style::error(&format!("error: {e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    std::env::set_current_dir(workspace_root())?;
    match task {
        Task::Setup => setup::setup(),
        Task::Build { release } => {
            setup::setup()?;
            let built = build::build(release, false)?;
            let profile = if built.release { "release" } else { "debug" };
            eprintln!("built ({profile}) into {}", built.profile_dir.display());
            Ok(())
        }
        Task::Test => test::test(),
        Task::Demo => {
            require_root("the demo runs in network namespaces")?;
            setup::setup()?;
            let built = build::build(false, false)?;
            demo::run_demo(&built)
        }
        Task::Bench => {
            require_root("the benchmark runs in network namespaces")?;
            setup::setup()?;
            let built = build::build(true, false)?;
            bench::run_bench(&built)
        }
        Task::Fuzz {
            frames,
            cases,
            seed,
        } => {
            require_root("the datapath fuzzer runs the XDP program in a network namespace")?;
            setup::setup()?;
            fuzz::run_fuzz(frames, cases, seed)
        }
    }
}

/// The workspace's root directory (xtask's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Cargo's target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    weir_testbed::bins::target_dir()
}

/// `cargo` (the rustup proxy on PATH, so the toolchain is chosen as for the user), run
/// from the workspace root.
pub fn cargo() -> Cmd {
    Cmd::new("cargo").current_dir(workspace_root())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with a clear message unless running as root.
pub fn require_root(why: &str) -> Result<()> {
    if !is_root() {
        bail!("this task needs root ({why}): run it as root, e.g. `sudo -E cargo xtask ...`");
    }
    Ok(())
}
