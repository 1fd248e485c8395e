//! Finding the binaries that tests run: the `weir` agent (built by lb-userspace, which
//! this crate must not depend on) and `weir-test-server` (this crate's binary).

use std::{
    env, fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Result, bail};

/// Environment variable naming the `weir` binary to test (`cargo xtask test` sets it).
pub const WEIR_BIN_ENV: &str = "WEIR_BIN";
/// Environment variable naming the `weir-test-server` binary (optional).
pub const TEST_SERVER_BIN_ENV: &str = "WEIR_TEST_SERVER_BIN";

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The `weir` binary: `$WEIR_BIN` if set, else `<target>/debug/weir`. Fails, with a hint
/// to run `cargo xtask test`, when it does not exist, or (found in the target directory)
/// when it is older than the sources it is built from: `cargo test -p weir-tests` alone
/// does not rebuild it, and a stale agent would test old code.
pub fn weir_bin() -> Result<PathBuf> {
    if let Some(path) = env::var_os(WEIR_BIN_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "${WEIR_BIN_ENV} is {} but no such file exists",
                path.display()
            );
        }
        return Ok(path);
    }
    let mut candidates = vec![workspace_root().join("target/debug/weir")];
    candidates.insert(0, target_dir().join("debug/weir"));
    candidates.dedup();
    match candidates.iter().find(|p| p.is_file()) {
        Some(path) => {
            let built = modified(path).unwrap_or(SystemTime::UNIX_EPOCH);
            if let Some(newer) = ["lb-userspace", "lb-ebpf", "lb-common"]
                .iter()
                .find_map(|krate| weir_source_newer(&workspace_root().join(krate), built))
            {
                bail!(
                    "{} is older than {}: run `cargo build` (or `cargo xtask test`, which builds \
                     first) so that the tests run the current code",
                    path.display(),
                    newer.display()
                );
            }
            Ok(path.clone())
        }
        None => bail!(
            "the weir binary is not built (looked for {}); run `cargo xtask test` (which builds it \
             and sets ${WEIR_BIN_ENV}), or `cargo build -p lb-userspace` first, or set ${WEIR_BIN_ENV}",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A file the `weir` binary is built from in the crate `krate` (its `Cargo.toml`,
/// `build.rs` and `src/`) modified after `built`.
fn weir_source_newer(krate: &Path, built: SystemTime) -> Option<PathBuf> {
    ["Cargo.toml", "build.rs"]
        .iter()
        .map(|file| krate.join(file))
        .find(|path| modified(path).is_some_and(|m| m > built))
        .or_else(|| newer_source(&krate.join("src"), built))
}

/// A Rust source file or manifest under `dir` modified after `built`.
fn newer_source(dir: &Path, built: SystemTime) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if let Some(newer) = newer_source(&path, built) {
                return Some(newer);
            }
        } else if (path.extension().is_some_and(|e| e == "rs") || name == "Cargo.toml")
            && modified(&path).is_some_and(|m| m > built)
        {
            return Some(path);
        }
    }
    None
}

/// The `weir-test-server` binary: `$WEIR_TEST_SERVER_BIN` if set, else next to the
/// running test executable's profile directory (`target/<profile>/`), else
/// `<target>/debug/`. Fails with a hint when it is not built.
pub fn test_server_bin() -> Result<PathBuf> {
    const NAME: &str = "weir-test-server";
    if let Some(path) = env::var_os(TEST_SERVER_BIN_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "${TEST_SERVER_BIN_ENV} is {} but no such file exists",
                path.display()
            );
        }
        return Ok(path);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = env::current_exe() {
        // target/<profile>/deps/<test>-<hash> or target/<profile>/<bin>
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(NAME));
        }
    }
    candidates.push(target_dir().join("debug").join(NAME));
    match candidates.iter().find(|p| p.is_file()) {
        Some(path) => Ok(path.clone()),
        None => bail!(
            "{NAME} is not built (looked for {}); run `cargo xtask test`, or \
             `cargo build -p weir-tests --bins` first, or set ${TEST_SERVER_BIN_ENV}",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
