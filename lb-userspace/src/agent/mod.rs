//! The agent: loads the program, programs the maps from the configuration (the file with
//! the runtime changes on top), attaches to the interfaces, serves the control API
//! (`operations.rs`), reloads on SIGHUP, and stops on SIGINT/SIGTERM.

mod operations;
pub mod runtime;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::DEFAULT_MAGLEV_RING_ENTRIES;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Mutex, mpsc, watch},
};
use tracing::{debug, error, info, warn};

use crate::{
    agent::runtime::{RuntimeError, RuntimeState},
    api::model::AnnounceStatus,
    api::server::{self as api, SharedControl},
    api::token::read_token,
    config::{Config, ConfigError, Forwarding},
    dataplane::flows,
    dataplane::pins::Pins,
    dataplane::plan::{PlanError, Reconciler},
    dataplane::{Dataplane, DataplaneError, LoadOptions},
    failover::announce::{self, AnnounceError},
    failover::serving::{ServingVips, Settling, serving_vips},
    failover::vrrp::{Vrrp, VrrpError},
    health::{self, HealthMonitor, Report, Transition},
    host::{self, HostSetup},
    stats::{self, census::Census, report::StatsReport},
};

/// How often ended NAT flows are removed from the NAT tables (the program also takes
/// over the port of an ended flow it meets, so this only bounds how full they get).
const NAT_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

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
    #[error("runtime state: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("the control API: {0}")]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Token(#[from] crate::api::token::TokenError),
    #[error(transparent)]
    Announce(#[from] AnnounceError),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Vrrp(#[from] VrrpError),
    #[error(transparent)]
    Stats(#[from] stats::server::StatsError),
    #[error("starting the flow census: {0}")]
    Census(std::io::Error),
}

/// How the agent starts and stops.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub config_path: PathBuf,
    /// Detach and remove the pinned state on exit, instead of leaving the dataplane
    /// forwarding for the next agent.
    pub detach_on_exit: bool,
    /// Discard pinned state left by a previous agent (even of an incompatible layout)
    /// and start from fresh maps: established flows are rescheduled.
    pub replace_dataplane: bool,
}

pub struct Agent {
    options: AgentOptions,
    /// The configuration file as last read.
    file_config: Config,
    /// Changes made through the control API, kept in `state_dir`.
    runtime: RuntimeState,
    /// What runs: the file with the runtime changes applied.
    config: Config,
    dataplane: Dataplane,
    state: Reconciler,
    host: HostSetup,
    started: Instant,
    /// Which VIPs can take new flows, for failover and route announcement.
    serving: watch::Sender<ServingVips>,
    /// VIPs held back while they come back (see [`crate::failover::serving::Settling`]).
    settling: Settling,
    /// When a held VIP is due: `run` publishes again then.
    settling_due: watch::Sender<Option<Instant>>,
    /// What the announcer keeps on its interface, while it runs (`[announce]`).
    announce: Option<watch::Receiver<AnnounceStatus>>,
    /// Backend health; DOWN backends are programmed as if in maint.
    health: HealthMonitor,
    /// Where the checks report, until `run` takes it.
    health_reports: Option<mpsc::UnboundedReceiver<Report>>,
    /// The VRRP instances' state, while `[vrrp]` runs.
    vrrp_status: Option<watch::Receiver<crate::api::model::VrrpStatus>>,
    /// Live flows per backend, counted in the background while `[stats]` serves.
    census: Option<watch::Receiver<Census>>,
}

impl Agent {
    /// Loads the configuration and the program, adopts the pinned maps and links of a
    /// previous agent if there are any, programs the difference, then attaches (swapping
    /// the program into adopted links atomically). An error before any change leaves an
    /// adopted dataplane running as it was, and a fresh one removed.
    pub fn start(options: AgentOptions) -> Result<Self, AgentError> {
        let file_config = Config::load(&options.config_path)?;
        let runtime = RuntimeState::load(&file_config.agent.state_dir)?;
        let config = running_config(&file_config, &runtime);
        for interface in &config.agent.interfaces {
            crate::dataplane::ifindex(interface)?;
        }
        if let Some(settings) = &config.announce {
            announce::check_link(&settings.interface)?;
        }
        if let Some(vrrp) = &config.vrrp {
            crate::dataplane::ifindex(&vrrp.interface)?;
        }
        let pins = Pins::new(&config.agent.bpf_pin_dir);
        if options.replace_dataplane {
            warn!(pins = %pins.root().display(), "replacing the pinned dataplane: established flows are rescheduled");
            pins.remove().map_err(DataplaneError::from)?;
        }
        let mut dataplane = Dataplane::load(LoadOptions {
            conntrack_entries: config.agent.conntrack_entries,
            maglev_ring_entries: DEFAULT_MAGLEV_RING_ENTRIES,
            nat_entries: config.agent.nat_entries,
            pins: Some(pins.clone()),
        })?;
        let adopted = dataplane.adopted();
        let (mut health, health_reports) = HealthMonitor::new();
        let started = Self::program(&mut dataplane, &config, &mut health);
        let (state, host) = match started {
            Ok(started) => started,
            Err(err) => {
                if !adopted {
                    let _ = dataplane.detach_all();
                }
                return Err(err);
            }
        };
        info!(
            vips = config.vips.len(),
            adopted,
            pins = %pins.root().display(),
            config = %options.config_path.display(),
            "dataplane programmed"
        );
        let serving = watch::Sender::new(serving_vips(&config, |vip, backend| {
            health.operational(&vip.name, backend.address)
        }));
        Ok(Agent {
            options,
            file_config,
            runtime,
            config,
            dataplane,
            state,
            host,
            started: Instant::now(),
            serving,
            settling: Settling::default(),
            settling_due: watch::Sender::new(None),
            announce: None,
            health,
            health_reports: Some(health_reports),
            vrrp_status: None,
            census: None,
        })
    }

    /// Brings the loaded dataplane to `config` and attaches it; starts the checks.
    /// Backends that an adopted dataplane had taken out of rotation for their health
    /// start DOWN, so that a restart does not put a dead backend back until its checks.
    fn program(
        dataplane: &mut Dataplane,
        config: &Config,
        health: &mut HealthMonitor,
    ) -> Result<(Reconciler, HostSetup), AgentError> {
        let (current, down) = if dataplane.adopted() {
            let programmed = dataplane.programmed_state()?;
            info!(
                vips = programmed.vips.len(),
                "adopting the pinned dataplane of a previous agent"
            );
            let adopted = Reconciler::adopt(&programmed, DEFAULT_MAGLEV_RING_ENTRIES, config)?;
            let down = health::down_in_dataplane(config, adopted.vips());
            for key in &down {
                info!(vip = %key.vip, backend = %key.address, "backend starts DOWN: the adopted dataplane had it out of rotation");
            }
            (adopted, down)
        } else {
            (
                Reconciler::new(DEFAULT_MAGLEV_RING_ENTRIES),
                BTreeSet::new(),
            )
        };
        health.sync(config, &down, true);
        let mut current = current;
        current.set_nat_sources(resolve_nat_sources(config));
        let (writes, state) = current.plan(&health.effective(config))?;
        dataplane.apply(&writes)?;
        let mut host = HostSetup::default();
        resolve_next_hops(&mut host, config);
        for interface in &config.agent.interfaces {
            host.enable_forwarding(interface)?;
            let attachment = dataplane.attach(interface, config.agent.xdp_mode)?;
            info!(interface = %attachment.interface, ifindex = attachment.ifindex, mode = attachment.mode, writes = writes.len(), "attached");
        }
        Ok((state, host))
    }

    /// Re-reads the configuration file, applies the runtime changes on top, and programs
    /// only the difference; returns the number of map writes. A bad file or a change
    /// that cannot be applied leaves the running state as it was.
    pub fn reload(&mut self) -> Result<usize, AgentError> {
        let file_config = Config::load(&self.options.config_path)?;
        if file_config.agent != self.file_config.agent {
            warn!("[agent] settings changed; they take effect at the next restart");
        }
        if file_config.announce != self.file_config.announce {
            warn!("[announce] settings changed; they take effect at the next restart");
        }
        if file_config.stats != self.file_config.stats {
            warn!("[stats] settings changed; they take effect at the next restart");
        }
        if file_config.vrrp != self.file_config.vrrp {
            warn!(
                "[vrrp] settings changed; they take effect at the next restart (the held addresses follow the VIPs now)"
            );
        }
        let config = running_config(&file_config, &self.runtime);
        let writes = self.program_config(&config)?;
        info!(writes, vips = config.vips.len(), "configuration reloaded");
        self.file_config = file_config;
        self.config = config;
        Ok(writes)
    }

    /// Plans and writes the difference between the running state and `config` (with
    /// DOWN backends out of rotation), then follows it with the checks.
    fn program_config(&mut self, config: &Config) -> Result<usize, AgentError> {
        self.state.set_nat_sources(resolve_nat_sources(config));
        self.program_resolved(config)
    }

    /// [`Agent::program_config`] with the NAT sources of `config` already resolved.
    fn program_resolved(&mut self, config: &Config) -> Result<usize, AgentError> {
        let writes = self.program_health(config)?;
        self.health.sync(config, &BTreeSet::new(), false);
        resolve_next_hops(&mut self.host, config);
        Ok(writes)
    }

    /// Plans and writes `config` as backend health makes it, and publishes which VIPs
    /// can serve.
    fn program_health(&mut self, config: &Config) -> Result<usize, AgentError> {
        let (writes, state) = self.state.plan(&self.health.effective(config))?;
        self.dataplane.apply(&writes)?;
        self.state = state;
        self.publish_serving(config);
        Ok(writes.len())
    }

    /// Takes check results into account; re-plans once if a backend changed between UP
    /// and DOWN (each change logged once, with its reason).
    fn apply_health(&mut self, reports: impl IntoIterator<Item = Report>) {
        let mut changed = false;
        for report in reports {
            let Some(Transition { key, up, result }) = self.health.record(report) else {
                continue;
            };
            changed = true;
            let reason = result.reason.to_string();
            let duration_ms = result.duration.as_millis() as u64;
            if up {
                info!(vip = %key.vip, backend = %key.address, %reason, duration_ms, "backend is UP");
            } else {
                warn!(vip = %key.vip, backend = %key.address, %reason, duration_ms, "backend is DOWN");
            }
        }
        if changed {
            let config = self.config.clone();
            match self.program_health(&config) {
                Ok(writes) => info!(writes, "dataplane follows backend health"),
                Err(err) => error!(error = %err, "cannot apply a health change to the dataplane"),
            }
        }
    }

    /// Publishes which VIPs of the running configuration can take new flows.
    fn republish_serving(&mut self) {
        let config = self.config.clone();
        self.publish_serving(&config);
    }

    /// Publishes which VIPs of `config` can take new flows (only when that changed),
    /// holding back those that come back until they have settled.
    fn publish_serving(&mut self, config: &Config) {
        let previous = self.serving.borrow().clone();
        let candidate = serving_vips(config, |vip, backend| {
            self.health.operational(&vip.name, backend.address)
        });
        let (serving, due) = self.settling.hold(
            config,
            &previous,
            candidate,
            Instant::now(),
            |vip, backend| self.health.operational(&vip.name, backend.address),
        );
        self.settling_due.send_if_modified(|current| {
            let changed = *current != due;
            *current = due;
            changed
        });
        self.serving.send_if_modified(|current| {
            let changed = *current != serving;
            *current = serving;
            changed
        });
    }

    /// Follows which VIPs can take new flows.
    pub fn subscribe_serving(&self) -> watch::Receiver<ServingVips> {
        self.serving.subscribe()
    }

    pub fn stats_report(&self) -> Result<StatsReport, DataplaneError> {
        StatsReport::collect(&self.dataplane, &self.state)
    }

    /// Serves the control API and signals until SIGINT or SIGTERM (SIGHUP reloads); then
    /// prints the counters and leaves the dataplane forwarding (or detaches, with
    /// `detach_on_exit`).
    pub async fn run(mut self) -> Result<(), AgentError> {
        let mut hangup = signal(SignalKind::hangup()).map_err(AgentError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;

        let settings = self.config.agent.clone();
        let stats_settings = self.config.stats.clone();
        let listeners = async {
            let unix = api::bind_unix(&settings.api_socket).await?;
            let stats = match &stats_settings {
                Some(stats) => Some(stats::server::bind(stats, &settings.api_socket).await?),
                None => None,
            };
            let tcp = match (settings.api_listen, &settings.api_token_file) {
                (Some(addr), Some(token_file)) => {
                    Some((api::bind_tcp(addr).await?, read_token(token_file)?))
                }
                _ => None,
            };
            Ok::<_, AgentError>((unix, tcp, stats))
        };
        let vrrp_config = self.config.vrrp.clone();
        let serving = self.subscribe_serving();
        let vrrp = async move {
            match vrrp_config {
                Some(config) => Ok(Some(Vrrp::start(config, serving).await?)),
                None => Ok(None),
            }
        };
        let started = match listeners.await {
            Ok(listeners) => vrrp.await.map(|vrrp| (listeners, vrrp)),
            Err(err) => Err(err),
        };
        let started = started.and_then(|started| {
            if stats_settings.is_some() {
                let tables = self.dataplane.flow_tables()?;
                let agent = &self.config.agent;
                self.census = Some(
                    stats::census::spawn(tables, agent.conntrack_entries, agent.nat_entries)
                        .map_err(AgentError::Census)?,
                );
            }
            Ok(started)
        });
        let ((unix, tcp, stats_listener), vrrp) = match started {
            Ok(started) => started,
            Err(err) => {
                // As a failed start: a dataplane this agent created goes, an adopted one
                // keeps forwarding.
                if !self.dataplane.adopted() {
                    let _ = self.dataplane.detach_all();
                }
                return Err(err);
            }
        };
        let (stop, stopped) = watch::channel(());
        let announcer = self.config.announce.clone().map(|settings| {
            let announcer = announce::spawn(&settings, self.subscribe_serving(), stopped.clone());
            self.announce = Some(announcer.status);
            announcer.task
        });
        let mut health_reports = self
            .health_reports
            .take()
            .expect("run takes the health reports once");
        self.vrrp_status = vrrp.as_ref().map(Vrrp::status);
        let mut settling_due = self.settling_due.subscribe();
        let agent = Arc::new(Mutex::new(self));
        let control: SharedControl = agent.clone();
        let until_stopped = |mut stopped: watch::Receiver<()>| async move {
            let _ = stopped.changed().await;
        };
        let mut servers = vec![tokio::spawn(api::serve_unix_on(
            unix,
            control.clone(),
            until_stopped(stopped.clone()),
        ))];
        if let Some((listener, token)) = tcp {
            let shutdown = until_stopped(stopped.clone());
            servers.push(tokio::spawn(api::serve_tcp_on(
                listener,
                control.clone(),
                token,
                shutdown,
            )));
        }
        let stats_listen = stats_listener.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = stats_listener {
            let shutdown = until_stopped(stopped.clone());
            servers.push(tokio::spawn(stats::server::serve_on(
                listener,
                control.clone(),
                shutdown,
            )));
        }
        info!(api = %settings.api_socket.display(), tcp = ?settings.api_listen, stats = ?stats_listen, "weir agent ready");

        let mut sweep = tokio::time::interval(NAT_SWEEP_INTERVAL);
        let mut suspects = HashSet::new();
        loop {
            let due = *settling_due.borrow_and_update();
            let settled = async move {
                match due {
                    Some(due) => tokio::time::sleep_until(due.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = settled => agent.lock().await.republish_serving(),
                // A new hold (or none): wait for its due time instead.
                Ok(()) = settling_due.changed() => {}
                _ = sweep.tick() => {
                    let mut agent = agent.lock().await;
                    match agent.dataplane.sweep_nat(flows::now_ns(), &mut suspects) {
                        Ok(0) => {}
                        Ok(removed) => debug!(removed, "ended NAT flows swept"),
                        Err(err) => warn!(error = %err, "sweeping the NAT tables failed"),
                    }
                }
                _ = hangup.recv() => {
                    if let Err(err) = agent.lock().await.reload() {
                        error!(error = %err, "reload refused; the running configuration is unchanged");
                    }
                }
                Some(report) = health_reports.recv() => {
                    // Everything already waiting is applied with one re-plan.
                    let mut reports = vec![report];
                    while let Ok(more) = health_reports.try_recv() {
                        reports.push(more);
                    }
                    agent.lock().await.apply_health(reports);
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        info!("shutting down");
        // First, so that the peer takes over at once.
        if let Some(vrrp) = vrrp {
            vrrp.stop().await;
        }
        let _ = stop.send(());
        for server in servers {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => warn!(error = %err, "the control API failed"),
                Err(err) => warn!(error = %err, "the control API task failed"),
            }
        }
        // The announcer withdraws the routes (deletes its link) before the agent exits.
        if let Some(task) = announcer
            && let Err(err) = task.await
        {
            warn!(error = %err, "the announcement task failed");
        }
        agent.lock().await.stop()
    }

    /// Prints the counters, then detaches (with `detach_on_exit`) or leaves the dataplane
    /// forwarding for the next agent.
    fn stop(&mut self) -> Result<(), AgentError> {
        match self.stats_report() {
            Ok(report) => println!("{report}"),
            Err(err) => warn!(error = %err, "could not read the counters"),
        }
        if self.options.detach_on_exit {
            self.dataplane.detach_all()?;
            for err in std::mem::take(&mut self.host).restore() {
                warn!(error = %err, "could not restore a host setting");
            }
            info!("detached");
        } else {
            info!("the dataplane stays attached and forwarding; the next agent adopts it");
        }
        Ok(())
    }
}

/// The file's configuration with the runtime changes applied; changes that no longer
/// apply are logged.
fn running_config(file: &Config, runtime: &RuntimeState) -> Config {
    let (config, skipped) = runtime.apply(file);
    for warning in skipped {
        warn!("{warning}");
    }
    config
}

/// The NAT source of every backend of a NAT VIP that sets none: the address the host
/// reaches it from, as the kernel's routes say now. Resolved whenever a configuration is
/// applied (start, reload, API change); a backend without one makes the plan fail.
fn resolve_nat_sources(config: &Config) -> BTreeMap<IpAddr, IpAddr> {
    let mut sources = BTreeMap::new();
    let backends = config
        .vips
        .iter()
        .filter(|vip| vip.forwarding == Forwarding::Nat && vip.nat_source.is_none())
        .flat_map(|vip| &vip.backends);
    for backend in backends {
        if sources.contains_key(&backend.address) {
            continue;
        }
        match HostSetup::source_address(backend.address) {
            Ok(source) => {
                sources.insert(backend.address, source);
            }
            Err(err) => warn!(backend = %backend.address, error = %err, "no NAT source address"),
        }
    }
    sources
}

fn resolve_next_hops(host: &mut HostSetup, config: &Config) {
    for backend in config.vips.iter().flat_map(|vip| &vip.backends) {
        if let Err(err) = host.manage_next_hop(backend.address) {
            warn!(backend = %backend.address, error = %err, "cannot keep the next hop resolved");
        }
    }
}
