//! `cargo xtask setup`: installs what building and testing weir needs, and nothing when
//! it is all there (then it only checks, in well under a second).
//!
//! * Debian packages ([`APT_PACKAGES`]), with one `apt-get update` first if any is missing.
//! * The nightly toolchain and its `rust-src` (for `-Z build-std=core` on the BPF target);
//!   if rustup cannot reach its server, `rust-src` comes from the tarball in
//!   `../shared/toolchain/` (see its README).
//! * `rustfmt` and `clippy` for stable.
//! * `bpf-linker` 0.13.0 built against LLVM 22 (the LLVM of rustc).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::{cmd::Cmd, is_root, workspace_root};

/// Debian packages: LLVM 22 for bpf-linker, the network tools the tests and benchmarks
/// use (BIRD 2 for the route announcement tests, keepalived for the VRRP interop tests,
/// HAProxy as the TLS tier's yardstick in the benchmark: all run in namespaces), headless
/// Chromium and promtool (`prometheus`) for the stats page tests, and xz for the rust-src
/// fallback.
pub const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "bpftool",
    "iproute2",
    "iputils-ping",
    "nftables",
    "curl",
    "openssl",
    "wrk",
    "ethtool",
    "tcpdump",
    "bird2",
    "keepalived",
    "haproxy",
    "chromium",
    "prometheus",
    "xz-utils",
];

/// (package, service) pairs whose service must not run on the host: the tests start
/// their own daemons in namespaces.
const NO_SERVICE: &[(&str, &str)] = &[
    ("keepalived", "keepalived"),
    ("bird2", "bird"),
    ("haproxy", "haproxy"),
    ("prometheus", "prometheus"),
];
/// Debian's hook that lets package scripts start services; exit 101 forbids it.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The nightly that `../shared/toolchain/rust-src-nightly-2026-05-19.tar.xz` matches.
const RUST_SRC_TARBALL: &str = "rust-src-nightly-2026-05-19.tar.xz";
const RUST_SRC_NIGHTLY_COMMIT: &str = "e50aa6fba";
/// How long `rustup` may try to reach its server before the tarball fallback.
const RUSTUP_TIMEOUT_SECS: &str = "120";

pub fn setup() -> Result<()> {
    let mut installed = Vec::new();
    apt_packages(&mut installed)?;
    nightly_rust_src(&mut installed)?;
    stable_components(&mut installed)?;
    bpf_linker(&mut installed)?;
    if installed.is_empty() {
        eprintln!("setup: everything is installed");
    } else {
        eprintln!("setup: installed {}", installed.join(", "));
    }
    Ok(())
}

fn apt_packages(installed: &mut Vec<String>) -> Result<()> {
    // One dpkg-query for all; unknown packages print nothing on stdout (and fail).
    let out = Cmd::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(APT_PACKAGES)
        .probe()
        .context("dpkg-query is missing: is this Debian?")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let present: Vec<&str> = stdout
        .lines()
        .filter_map(|line| {
            let (name, status) = line.split_once(' ')?;
            status
                .starts_with("ii")
                .then_some(name.split(':').next().unwrap_or(name))
        })
        .collect();
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !present.contains(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "setup must install Debian packages ({}) and needs root for that: run it as root \
             (`sudo -E cargo xtask setup`)",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    Cmd::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    // Keep the installed services (keepalived) from starting with the host's
    // configuration while they install: a policy-rc.d for the duration, unless one exists.
    let own_policy = !Path::new(POLICY_RC_D).exists();
    if own_policy {
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# weir setup: no service starts\nexit 101\n",
        )
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
        })
        .with_context(|| format!("cannot write {POLICY_RC_D}"))?;
    }
    let install = Cmd::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run();
    if own_policy {
        std::fs::remove_file(POLICY_RC_D)
            .with_context(|| format!("cannot remove {POLICY_RC_D}"))?;
    }
    install?;
    disable_services(&missing)?;
    installed.extend(missing.iter().map(|p| p.to_string()));
    Ok(())
}

/// Disables (and stops) the services of [`NO_SERVICE`] packages just installed, so they
/// do not start at boot either (systemd hosts; elsewhere policy-rc.d kept them off).
fn disable_services(installed: &[&str]) -> Result<()> {
    if !Path::new("/run/systemd/system").exists() {
        return Ok(());
    }
    for (_, service) in NO_SERVICE
        .iter()
        .filter(|(package, _)| installed.contains(package))
    {
        Cmd::new("systemctl")
            .args(["disable", "--now", service])
            .run()?;
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(
        Cmd::new("rustc")
            .arg("+nightly")
            .args(["--print", "sysroot"])
            .read()?
            .trim(),
    ))
}

fn has_rust_src(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/src/lib.rs")
        .is_file()
}

fn nightly_rust_src(installed: &mut Vec<String>) -> Result<()> {
    let toolchains = Cmd::new("rustup")
        .args(["toolchain", "list"])
        .read()
        .context(
            "rustup is not on PATH: install it (https://rustup.rs), or `source ~/.cargo/env`",
        )?;
    if !toolchains.lines().any(|t| t.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain");
        Cmd::new("rustup")
            .args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ])
            .run()
            .context(
                "cannot install the nightly toolchain (the eBPF build needs it; the machine's \
                 image should carry nightly 1.97.0 e50aa6fba 2026-05-19)",
            )?;
        installed.push("nightly toolchain".into());
    }
    let sysroot = nightly_sysroot()?;
    if has_rust_src(&sysroot) {
        return Ok(());
    }
    eprintln!("setup: installing rust-src for nightly");
    let added = Cmd::new("timeout")
        .args([
            RUSTUP_TIMEOUT_SECS,
            "rustup",
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ])
        .run();
    if let Err(e) = added {
        let tarball = workspace_root()
            .join("../shared/toolchain")
            .join(RUST_SRC_TARBALL);
        eprintln!("setup: {e:#}; falling back to {}", tarball.display());
        if !tarball.is_file() {
            bail!(
                "rust-src for nightly is missing, rustup cannot add it and {} does not exist",
                tarball.display()
            );
        }
        let version = Cmd::new("rustc").args(["+nightly", "-vV"]).read()?;
        if !version.contains(&format!("commit-hash: {RUST_SRC_NIGHTLY_COMMIT}")) {
            eprintln!(
                "setup: warning: {RUST_SRC_TARBALL} matches nightly {RUST_SRC_NIGHTLY_COMMIT}, but this nightly is\n{version}"
            );
        }
        Cmd::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(sysroot.join("lib/rustlib"))
            .run()?;
    }
    if !has_rust_src(&sysroot) {
        bail!(
            "rust-src for nightly is still missing under {}",
            sysroot.display()
        );
    }
    installed.push("nightly rust-src".into());
    Ok(())
}

fn stable_components(installed: &mut Vec<String>) -> Result<()> {
    let list = Cmd::new("rustup")
        .args(["component", "list", "--toolchain", "stable", "--installed"])
        .read()?;
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| {
            !list
                .lines()
                .any(|l| l == *c || l.starts_with(&format!("{c}-")))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing stable components: {}", missing.join(" "));
    Cmd::new("rustup")
        .args(["component", "add", "--toolchain", "stable"])
        .args(&missing)
        .run()?;
    installed.extend(missing.iter().map(|c| format!("stable {c}")));
    Ok(())
}

fn bpf_linker(installed: &mut Vec<String>) -> Result<()> {
    let current = Cmd::new("bpf-linker")
        .arg("--version")
        .probe()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    if current.as_deref() == Some(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        return Ok(());
    }
    eprintln!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} (found: {}); this compiles for a few minutes",
        current.as_deref().unwrap_or("none")
    );
    Cmd::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .run()?;
    installed.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    Ok(())
}
