//! The `weir proxy` commands: run the TLS tier, or ask the running one (over its control
//! socket) to reload its certificates or to show its status; and the frontends' summary
//! that `weir status` adds when a proxy runs beside the agent.

use std::{
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Subcommand};
use thiserror::Error;

use super::{Proxy, ProxyError, ProxyStatus, ReloadReport, control, control_socket_beside};
use crate::{
    api::model::ErrorBody,
    cli::{Align, CliError, Client, Table, human_duration, pretty_json},
    config::{Config, ConfigError},
};

#[derive(Args)]
pub struct ProxyArgs {
    #[command(subcommand)]
    command: Option<ProxyCommand>,
    /// Configuration file (its [[frontend]] sections; the agent's API socket).
    #[arg(long, short, global = true, default_value = "/etc/weir/weir.toml")]
    config: PathBuf,
    /// Threads serving connections. 1: everything on one thread, which is the most
    /// efficient on one CPU. Default: one per CPU the process may run on (its affinity
    /// mask, e.g. under `taskset`).
    #[arg(long)]
    threads: Option<NonZeroUsize>,
}

#[derive(Clone, Copy, Subcommand)]
enum ProxyCommand {
    /// Reload the running proxy's certificates (as SIGHUP); a bad certificate or key is
    /// refused and the current ones keep serving.
    Reload,
    /// The running proxy's frontends and their counters (with --json: the whole answer,
    /// also the certificates and backends).
    Status,
}

#[derive(Debug, Error)]
pub enum ProxyCliError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] CliError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the proxy refused: {0}")]
    Refused(String),
}

/// Runs `weir proxy [reload | status]`; `json`: `status` prints the JSON answer (the
/// global `--json`).
pub fn run(args: ProxyArgs, json: bool) -> Result<(), ProxyCliError> {
    let Some(command) = args.command else {
        let mut runtime = match args.threads.map(NonZeroUsize::get) {
            Some(1) => tokio::runtime::Builder::new_current_thread(),
            Some(threads) => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(threads);
                builder
            }
            // tokio's default: the CPUs of the affinity mask.
            None => tokio::runtime::Builder::new_multi_thread(),
        };
        let runtime = runtime
            .enable_all()
            .build()
            .map_err(ProxyCliError::Runtime)?;
        return runtime.block_on(async {
            Proxy::start(&args.config).await?.run().await?;
            Ok(())
        });
    };
    let config = Config::load(&args.config)?;
    let client = Client::new(control_socket_beside(&config.agent.api_socket));
    let (method, path) = match command {
        ProxyCommand::Reload => ("POST", control::RELOAD_PATH),
        ProxyCommand::Status => ("GET", control::STATUS_PATH),
    };
    let response = client.request(method, path, None)?;
    if response.status != 200 {
        let message = serde_json::from_slice::<ErrorBody>(&response.body)
            .map(|body| body.error)
            .unwrap_or_else(|_| format!("HTTP {}", response.status));
        return Err(ProxyCliError::Refused(message));
    }
    let body = String::from_utf8_lossy(&response.body);
    match command {
        ProxyCommand::Status if json => println!("{}", pretty_json(&body)),
        ProxyCommand::Status => {
            let status: ProxyStatus = serde_json::from_str(&body)
                .map_err(|e| ProxyCliError::Refused(format!("unexpected answer: {e}")))?;
            print!(
                "weir proxy {}, pid {}, up {}, on {}\n\n{}",
                status.version,
                status.pid,
                human_duration(status.uptime_seconds),
                status.config_path.display(),
                render_frontends(&status)
            );
        }
        ProxyCommand::Reload => {
            let report: ReloadReport = serde_json::from_str(&body)
                .map_err(|e| ProxyCliError::Refused(format!("unexpected answer: {e}")))?;
            println!("reloaded: {}", report.reloaded.join(", "));
            for note in report.needs_restart {
                println!("needs a restart: {note}");
            }
        }
    }
    Ok(())
}

/// How long `weir status` and the stats page wait for the proxy's answer.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(1);

/// The status of the proxy whose control socket is beside the agent's `api_socket`;
/// `None` when no proxy answers there within a second.
pub fn status_beside(api_socket: &Path) -> Option<ProxyStatus> {
    let client = Client::new(control_socket_beside(api_socket)).with_timeout(SUMMARY_TIMEOUT);
    let response = client.request("GET", control::STATUS_PATH, None).ok()?;
    serde_json::from_slice(&response.body).ok()
}

/// The frontends of the proxy beside the agent's `api_socket`, as `weir status` shows
/// them; `None` when no proxy answers there.
pub fn summary_beside(api_socket: &Path) -> Option<String> {
    let status = status_beside(api_socket)?;
    Some(format!(
        "\nTLS tier (weir proxy, pid {}):\n{}",
        status.pid,
        render_frontends(&status)
    ))
}

/// One line per frontend: listeners, backends taking requests, connections (open /
/// since start), handshakes, requests, responses by class, errors (failed handshakes,
/// the proxy's own 502/503/504) and the response-time bucket bounds of p50 and p99.
pub fn render_frontends(status: &ProxyStatus) -> String {
    let mut table = Table::new(&[
        ("FRONTEND", Align::Left),
        ("BIND", Align::Left),
        ("VIP", Align::Left),
        ("BACKENDS", Align::Right),
        ("CONNS", Align::Right),
        ("HANDSHAKES", Align::Right),
        ("REQUESTS", Align::Right),
        ("2XX", Align::Right),
        ("3XX", Align::Right),
        ("4XX", Align::Right),
        ("5XX", Align::Right),
        ("ERRORS", Align::Right),
        ("P50", Align::Right),
        ("P99", Align::Right),
    ]);
    let quantile = |counters: &super::stats::FrontendCounters, q| counters.quantile_label(q);
    for frontend in &status.frontends {
        let counters = &frontend.counters;
        let eligible = frontend.backends.iter().filter(|b| b.eligible()).count();
        table.row(vec![
            frontend.name.clone(),
            frontend
                .bind
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            frontend.vip.clone(),
            format!("{eligible}/{}", frontend.backends.len()),
            format!("{}/{}", counters.open_connections, counters.connections),
            counters.handshakes.to_string(),
            counters.requests.to_string(),
            counters.responses[1].to_string(),
            counters.responses[2].to_string(),
            counters.responses[3].to_string(),
            counters.responses[4].to_string(),
            counters.errors().to_string(),
            quantile(counters, 0.5),
            quantile(counters, 0.99),
        ]);
    }
    table.render()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proxy::{FrontendStatus, stats::FrontendStats};

    /// A proxy with one frontend that served a 200 and timed out once (a 504).
    pub(crate) fn sample_status() -> ProxyStatus {
        let stats = FrontendStats::default();
        stats.connection_opened();
        stats.handshake();
        stats.request();
        stats.response(200, Duration::from_micros(700));
        stats.request();
        stats.failure(crate::proxy::stats::ProxyFailure::Timeout);
        stats.response(504, Duration::from_secs(30));
        ProxyStatus {
            version: "0.1.0".into(),
            pid: 7,
            uptime_seconds: 5,
            config_path: "/etc/weir/weir.toml".into(),
            frontends: vec![FrontendStatus {
                name: "www".into(),
                bind: vec!["198.18.0.10:443".parse().unwrap()],
                redirect_http: vec![],
                vip: "web".into(),
                certificates: vec![],
                backends: vec![],
                counters: stats.snapshot(),
            }],
        }
    }

    #[test]
    fn frontends_render_as_one_line_each() {
        assert_eq!(
            render_frontends(&sample_status()),
            "FRONTEND  BIND             VIP  BACKENDS  CONNS  HANDSHAKES  REQUESTS  2XX  3XX  4XX  5XX  ERRORS   P50      P99\n\
             www       198.18.0.10:443  web       0/0    1/1           1         2    1    0    0    1       1  <1ms  >5000ms\n"
        );
    }
}
