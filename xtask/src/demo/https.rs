//! The demo's HTTPS step: `weir proxy` beside the agent terminates TLS on the load
//! balancer's own address and sends plain HTTP to the backends of VIP `web`, on the
//! agent's health states; curl in the client namespace speaks HTTP/2 to it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result};
use weir_testbed::{Netns, agent::Agent, cmd, topology::LB_V4, weir_bin};

use super::{count, print_spread, say};

/// The name in the demo's certificate, which curl resolves to the LB's address.
const HOST: &str = "www.demo";
const REQUESTS: usize = 60;
/// What `weir proxy` logs once all three backends of `web` take requests.
const BACKENDS_READY: &str = "3 of 3 take requests";
const PROXY_START: Duration = Duration::from_secs(10);

/// A self-signed ECDSA P-256 certificate for `HOST`, in a directory removed on drop.
pub struct Certificate {
    dir: PathBuf,
}

impl Certificate {
    /// Makes one with `openssl` (installed by `cargo xtask setup`).
    pub fn generate() -> Result<Certificate> {
        let dir = std::env::temp_dir().join(format!("weir-demo-tls-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let certificate = Certificate { dir };
        let (cert, key) = (
            certificate.dir.join("cert.pem"),
            certificate.dir.join("key.pem"),
        );
        cmd::check(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
                .args(["-subj", &format!("/CN={HOST}")])
                .args(["-addext", &format!("subjectAltName=DNS:{HOST}")])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        )
        .context("generating the demo's certificate (is openssl installed? `cargo xtask setup`)")?;
        // `weir proxy` takes the chain and the key from one PEM file.
        let pem = fs::read_to_string(&cert)? + &fs::read_to_string(&key)?;
        fs::write(certificate.pem(), pem)?;
        Ok(certificate)
    }

    /// The certificate and its key: the frontend's `certificates`.
    pub fn pem(&self) -> PathBuf {
        self.dir.join("www.pem")
    }

    /// The certificate alone: what curl trusts.
    fn trusted(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Starts `weir proxy` in `lb` on the agent's configuration, sends `REQUESTS` HTTPS
/// requests from `client`, prints their spread and `weir proxy status`, and stops it.
pub fn run(lb: &Netns, client: &Netns, agent: &Agent, certificate: &Certificate) -> Result<()> {
    say("starting `weir proxy` beside the agent: HTTPS on the LB's address, port 443");
    let weir = weir_bin()?;
    let config = agent.config_path();
    let mut proxy = lb.spawn(&[
        weir.as_os_str(),
        "proxy".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ])?;
    proxy.wait_for_log(BACKENDS_READY, PROXY_START)?;

    say(&format!(
        "{REQUESTS} HTTPS requests to https://{HOST}/ over HTTP/2 (one connection each)"
    ));
    let trusted = certificate.trusted();
    let answers = count(REQUESTS, |_| curl(client, &trusted))?;
    print_spread(&answers);

    say("`weir proxy status`");
    let status = cmd::check(
        Command::new(&weir)
            .args(["proxy", "status", "--config"])
            .arg(config),
    )?;
    for line in status.lines() {
        println!("    {line}");
    }
    proxy.stop(Duration::from_secs(2))?;
    Ok(())
}

/// One HTTP/2 request through the proxy; the answer is the backend's name.
fn curl(client: &Netns, trusted: &Path) -> Result<String> {
    cmd::check(
        client
            .command("curl")
            .args(["--silent", "--show-error", "--http2", "--max-time", "5"])
            .arg("--cacert")
            .arg(trusted)
            .args(["--resolve", &format!("{HOST}:443:{LB_V4}")])
            .arg(format!("https://{HOST}/")),
    )
}
