//! The agent: loads the program, programs the maps from the configuration, attaches to
//! the interfaces, reloads on SIGHUP, and detaches on SIGINT/SIGTERM.

use std::path::{Path, PathBuf};

use lb_common::DEFAULT_MAGLEV_RING_ENTRIES;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    config::{Config, ConfigError},
    dataplane::{Dataplane, DataplaneError, LoadOptions},
    host::{self, HostSetup},
    plan::{PlanError, Reconciler},
    report::StatsReport,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("the configuration cannot be applied: {0}")]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

pub struct Agent {
    config_path: PathBuf,
    config: Config,
    dataplane: Dataplane,
    state: Reconciler,
    host: HostSetup,
}

impl Agent {
    /// Loads the configuration and the program, programs the maps, then attaches. Any
    /// error leaves nothing attached.
    pub fn start(config_path: &Path) -> Result<Self, AgentError> {
        let config = Config::load(config_path)?;
        for interface in &config.agent.interfaces {
            crate::dataplane::ifindex(interface)?;
        }
        let mut dataplane = Dataplane::load(LoadOptions {
            conntrack_entries: config.agent.conntrack_entries,
            maglev_ring_entries: DEFAULT_MAGLEV_RING_ENTRIES,
        })?;
        let (writes, state) = Reconciler::new(DEFAULT_MAGLEV_RING_ENTRIES).plan(&config)?;
        dataplane.apply(&writes)?;
        let mut host = HostSetup::default();
        resolve_next_hops(&mut host, &config);
        for interface in &config.agent.interfaces {
            host.enable_forwarding(interface)?;
            let attachment = dataplane.attach(interface, config.agent.xdp_mode)?;
            info!(interface = %attachment.interface, ifindex = attachment.ifindex, mode = attachment.mode, "attached");
        }
        info!(vips = config.vips.len(), config = %config_path.display(), "weir agent ready");
        Ok(Agent {
            config_path: config_path.to_owned(),
            config,
            dataplane,
            state,
            host,
        })
    }

    /// Re-reads the configuration and applies only the difference. A bad file or a
    /// change that cannot be applied leaves the running state as it was.
    pub fn reload(&mut self) -> Result<(), AgentError> {
        let config = Config::load(&self.config_path)?;
        if config.agent != self.config.agent {
            warn!("[agent] settings changed; they take effect at the next restart");
        }
        let (writes, state) = self.state.plan(&config)?;
        self.dataplane.apply(&writes)?;
        self.state = state;
        resolve_next_hops(&mut self.host, &config);
        info!(
            writes = writes.len(),
            vips = config.vips.len(),
            "configuration reloaded"
        );
        self.config = config;
        Ok(())
    }

    pub fn stats(&self) -> Result<StatsReport, DataplaneError> {
        StatsReport::collect(&self.dataplane, &self.state)
    }

    /// Serves until SIGINT or SIGTERM, reloading on SIGHUP; then prints the counters and
    /// detaches.
    pub async fn run(mut self) -> Result<(), AgentError> {
        let mut hangup = signal(SignalKind::hangup()).map_err(AgentError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    if let Err(err) = self.reload() {
                        error!(error = %err, "reload refused; the running configuration is unchanged");
                    }
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        info!("shutting down");
        match self.stats() {
            Ok(report) => println!("{report}"),
            Err(err) => warn!(error = %err, "could not read the counters"),
        }
        self.dataplane.detach_all()?;
        for err in self.host.restore() {
            warn!(error = %err, "could not restore a host setting");
        }
        info!("detached");
        Ok(())
    }
}

fn resolve_next_hops(host: &mut HostSetup, config: &Config) {
    for backend in config.vips.iter().flat_map(|vip| &vip.backends) {
        if let Err(err) = host.manage_next_hop(backend.address) {
            warn!(backend = %backend.address, error = %err, "cannot keep the next hop resolved");
        }
    }
}
