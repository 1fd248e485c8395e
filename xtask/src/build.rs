//! `cargo xtask build [--release]`: the whole workspace on the host (the agent's build
//! script builds the eBPF object), including the test server.

use std::path::PathBuf;

use anyhow::{Result, ensure};

use crate::{cargo, target_dir};

/// Workspace members that only build for the BPF target (lb-userspace/build.rs builds
/// them); every host-side cargo command leaves them out.
pub const BPF_ONLY_PACKAGES: &[&str] = &["lb-ebpf"];

/// `--workspace --exclude <BPF-only packages>`.
pub fn host_packages() -> Vec<String> {
    let mut args = vec!["--workspace".to_owned()];
    for package in BPF_ONLY_PACKAGES {
        args.extend(["--exclude".to_owned(), package.to_string()]);
    }
    args
}

/// What a build produced.
#[derive(Clone, Debug)]
pub struct Built {
    pub release: bool,
    /// `<target>/debug` or `<target>/release`.
    pub profile_dir: PathBuf,
    /// The agent.
    pub weir_bin: PathBuf,
    /// The backends' HTTP/UDP test server.
    pub test_server_bin: PathBuf,
}

impl Built {
    pub fn locate(release: bool) -> Built {
        let profile_dir = target_dir().join(if release { "release" } else { "debug" });
        Built {
            release,
            weir_bin: profile_dir.join("weir"),
            test_server_bin: profile_dir.join("weir-test-server"),
            profile_dir,
        }
    }

    fn check(&self) -> Result<()> {
        for bin in [&self.weir_bin, &self.test_server_bin] {
            ensure!(
                bin.is_file(),
                "the build succeeded but {} is missing",
                bin.display()
            );
        }
        Ok(())
    }
}

/// `cargo build` of every host package (with `--bins` when `bins_only`).
pub fn build(release: bool, bins_only: bool) -> Result<Built> {
    let mut args = vec!["build".to_owned()];
    args.extend(host_packages());
    if bins_only {
        args.push("--bins".into());
    }
    if release {
        args.push("--release".into());
    }
    cargo().args(args).run()?;
    let built = Built::locate(release);
    built.check()?;
    Ok(built)
}
