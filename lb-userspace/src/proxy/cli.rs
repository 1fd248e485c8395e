//! The `weir proxy` commands: run the TLS tier, or ask the running one (over its control
//! socket) to reload its certificates or to show its status.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use thiserror::Error;

use super::{Proxy, ProxyError, ReloadReport, control, control_socket};
use crate::{
    api::model::ErrorBody,
    cli::{CliError, Client, pretty_json},
    config::{Config, ConfigError},
};

#[derive(Args)]
pub struct ProxyArgs {
    #[command(subcommand)]
    command: Option<ProxyCommand>,
    /// Configuration file (its [[frontend]] sections; the agent's API socket).
    #[arg(long, short, global = true, default_value = "/etc/weir/weir.toml")]
    config: PathBuf,
}

#[derive(Clone, Copy, Subcommand)]
enum ProxyCommand {
    /// Reload the running proxy's certificates (as SIGHUP); a bad certificate or key is
    /// refused and the current ones keep serving.
    Reload,
    /// The running proxy's frontends, certificates, backends and counters (JSON).
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

/// Runs `weir proxy [reload | status]`.
pub fn run(args: ProxyArgs) -> Result<(), ProxyCliError> {
    let Some(command) = args.command else {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(ProxyCliError::Runtime)?;
        return runtime.block_on(async {
            Proxy::start(&args.config).await?.run().await?;
            Ok(())
        });
    };
    let config = Config::load(&args.config)?;
    let client = Client::new(control_socket(&config));
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
        ProxyCommand::Status => println!("{}", pretty_json(&body)),
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
