//! `weir`: the agent daemon and its command-line tools.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand, error::ErrorKind};
use tracing_subscriber::EnvFilter;
use weir::{
    agent::{Agent, AgentOptions},
    cli::{AdminCommand, CliError, ClientArgs},
    config::Config,
};

#[derive(Parser)]
#[command(name = "weir", version, about = "An XDP L4 load balancer")]
#[command(after_help = weir::cli::EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// --socket and --json, for the admin commands.
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load and attach the XDP program and program it from the config.
    Agent {
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/weir/weir.toml")]
        config: PathBuf,
        /// On exit, detach and remove the pinned maps and links. By default the dataplane
        /// keeps forwarding without the agent, and the next agent adopts it.
        #[arg(long)]
        detach_on_exit: bool,
        /// Discard the pinned state of a previous agent (even of another map layout) and
        /// start from fresh maps; established flows are rescheduled.
        #[arg(long)]
        replace_dataplane: bool,
    },
    /// Check a configuration file and print it with defaults filled in (like `haproxy -c`).
    Check {
        #[arg(long, short, default_value = "/etc/weir/weir.toml")]
        config: PathBuf,
    },
    /// Run the TLS tier (the [[frontend]] sections), or reload or show the running one.
    Proxy(weir::proxy::cli::ProxyArgs),
    /// The admin commands (status, vip, backend, flows, stats, reload): clients of the
    /// running agent's control API.
    #[command(flatten)]
    Admin(AdminCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    // `weir proxy status --json` too.
    let json_for_proxy = matches!(cli.command, Command::Proxy(_)) && cli.client.socket.is_none();
    if cli.client.given() && !matches!(cli.command, Command::Admin(_)) && !json_for_proxy {
        Cli::command()
            .error(
                ErrorKind::ArgumentConflict,
                "--socket and --json apply to the admin commands (and --json to weir proxy status) only",
            )
            .exit();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weir: {}", weir::error_report::describe(err.as_ref()));
            // The admin commands' exit codes (see EXIT_CODES).
            err.downcast_ref::<CliError>()
                .map_or(ExitCode::FAILURE, |e| ExitCode::from(e.exit_code()))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent {
            config,
            detach_on_exit,
            replace_dataplane,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let agent = Agent::start(AgentOptions {
                    config_path: config,
                    detach_on_exit,
                    replace_dataplane,
                })?;
                agent.run().await?;
                Ok(())
            })
        }
        Command::Check { config } => {
            let config = Config::load(&config)?;
            println!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
        Command::Proxy(args) => Ok(weir::proxy::cli::run(args, cli.client.json)?),
        Command::Admin(command) => Ok(weir::cli::run(&cli.client, command)?),
    }
}
