//! `weir proxy`: the TLS tier. HTTPS in (HTTP/1.1 and HTTP/2), plain HTTP/1.1 to the
//! backends of a VIP, on the agent's health and admin states.
//!
//! A process of its own, so that a crash or restart of it never touches the agent or the
//! XDP dataplane; it reads the `[[frontend]]` sections of the agent's weir.toml and asks
//! the agent's control API for the backends ([`pool`]). SIGHUP (or `weir proxy reload`)
//! reloads the certificates without dropping a connection; SIGTERM, SIGINT or SIGUSR1
//! stop it gracefully (see [`server`] for the restart).
//!
//! Modules: [`tls`] (certificates, SNI, rustls), [`pool`] (backends, selection),
//! [`http`] (a request through the proxy), [`forward`] (header rewriting, PROXY v2),
//! [`server`] (listeners, connections), [`stats`] (counters), [`control`] (the proxy's
//! control socket), [`cli`] (the `weir proxy` commands).

pub mod cli;
pub mod control;
pub mod forward;
pub mod http;
pub mod pool;
pub mod server;
pub mod stats;
pub mod tls;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use hyper::{header::HeaderValue, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::ServerConfig;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::{
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigError, FrontendConfig};
use forward::ClientConnection;
use http::{BackendClient, ConnectionContext, Upstream};
use pool::{Pool, PoolMember};
use server::{Activity, Ending, Tracked};
use stats::{FrontendCounters, FrontendStats};
use tls::{Resumption, TlsError};

/// What the proxy logs once it serves.
pub const READY: &str = "weir proxy ready";
/// What it logs after a reload that applied.
pub const RELOADED: &str = "certificates reloaded";

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}: no [[frontend]] section: nothing for weir proxy to serve", .0.display())]
    NoFrontend(PathBuf),
    #[error("frontend {frontend:?}: {source}")]
    Tls {
        frontend: String,
        #[source]
        source: TlsError,
    },
    #[error("frontend {frontend:?}: cannot listen on {address}: {source}")]
    Bind {
        frontend: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the proxy's control socket: {0}")]
    Control(#[from] crate::api::server::ApiError),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// The proxy's control socket: beside the agent's API socket.
pub fn control_socket(config: &Config) -> PathBuf {
    control_socket_beside(&config.agent.api_socket)
}

/// The control socket of a proxy beside the agent whose API socket is `api_socket`.
pub fn control_socket_beside(api_socket: &Path) -> PathBuf {
    api_socket.with_file_name("proxy.sock")
}

/// One frontend while it runs.
pub struct Frontend {
    config: FrontendConfig,
    /// Swapped whole on reload; a handshake takes the one current when it starts.
    tls: RwLock<LoadedTls>,
    resumption: Resumption,
    upstream: Arc<Upstream>,
    /// Shared by every client connection; `None` with PROXY v2 (a backend connection per
    /// client connection).
    backends: Option<BackendClient>,
    http: auto::Builder<TokioExecutor>,
    /// One permit per open client connection (`limits.max_connections`).
    slots: Arc<Semaphore>,
}

#[derive(Clone)]
struct LoadedTls {
    config: Arc<ServerConfig>,
    certificates: Vec<CertificateStatus>,
}

impl Frontend {
    fn new(config: FrontendConfig, pool: Arc<Pool>) -> Result<Frontend, ProxyError> {
        let tls_error = |source| ProxyError::Tls {
            frontend: config.name.clone(),
            source,
        };
        let resumption = Resumption::new().map_err(tls_error)?;
        let tls = load_tls(&config, &resumption).map_err(tls_error)?;
        let hsts = config
            .hsts
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .expect("validated as a header value");
        let upstream = Arc::new(Upstream {
            frontend: config.name.clone(),
            pool,
            forward: config.forward,
            hsts,
            response_timeout: config.timeouts.response,
            stats: Arc::new(FrontendStats::default()),
        });
        let backends = (config.forward != crate::config::Forward::ProxyV2)
            .then(|| http::backend_client(config.timeouts.connect, None));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.timeouts.header_read)
            .max_buf_size(config.limits.max_header_bytes as usize);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.limits.max_h2_streams)
            .max_header_list_size(config.limits.max_header_bytes);
        Ok(Frontend {
            slots: Arc::new(Semaphore::new(config.limits.max_connections as usize)),
            tls: RwLock::new(tls),
            resumption,
            upstream,
            backends,
            http: builder,
            config,
        })
    }

    fn tls(&self) -> LoadedTls {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn stats(&self) -> &FrontendStats {
        &self.upstream.stats
    }

    /// Serves one accepted TLS connection to its end.
    async fn serve_tls(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        _slot: OwnedSemaphorePermit,
        stop: watch::Receiver<bool>,
    ) {
        let stats = self.stats();
        stats.connection_opened();
        let ending = self.clone().serve_tls_inner(stream, peer, stop).await;
        if ending == Some(Ending::Idle) {
            stats.idle_timeout();
        }
        stats.connection_closed();
    }

    async fn serve_tls_inner(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        stop: watch::Receiver<bool>,
    ) -> Option<Ending> {
        let local = stream.local_addr().ok()?;
        let timeouts = self.config.timeouts;
        let activity = Activity::new();
        let acceptor = TlsAcceptor::from(self.tls().config);
        let handshake = acceptor.accept(Tracked::new(stream, activity.clone()));
        let stream = match tokio::time::timeout(timeouts.handshake, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                debug!(frontend = %self.config.name, %peer, "TLS handshake failed: {error}");
                self.stats().handshake_failed(false);
                return None;
            }
            Err(_) => {
                debug!(frontend = %self.config.name, %peer, "TLS handshake timed out");
                self.stats().handshake_failed(true);
                return None;
            }
        };
        self.stats().handshake();
        let client = ClientConnection { peer, local };
        let backends = match &self.backends {
            Some(shared) => shared.clone(),
            None => http::backend_client(timeouts.connect, Some(forward::proxy_v2_header(client))),
        };
        let context = Arc::new(ConnectionContext {
            upstream: self.upstream.clone(),
            client,
            backends,
            activity: activity.clone(),
        });
        let service = service_fn(move |request| http::handle(context.clone(), request));
        let connection = self.http.serve_connection(TokioIo::new(stream), service);
        Some(self.drive(connection, &activity, stop).await)
    }

    /// Drives a client connection with the frontend's timeouts; a connection that has
    /// not sent its first request when the proxy stops gets `header_read` for it.
    async fn drive<C>(
        &self,
        connection: C,
        activity: &Activity,
        stop: watch::Receiver<bool>,
    ) -> Ending
    where
        C: hyper_util::server::graceful::GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let timeouts = self.config.timeouts;
        server::drive(
            connection,
            activity,
            timeouts.idle,
            timeouts.header_read,
            stop,
            timeouts.drain,
        )
        .await
    }

    /// Serves one plain-HTTP connection of a `redirect_http` listener.
    async fn serve_redirect(
        self: Arc<Self>,
        stream: TcpStream,
        _slot: OwnedSemaphorePermit,
        stop: watch::Receiver<bool>,
    ) {
        let https_port = self.config.bind[0].port();
        let activity = Activity::new();
        let frontend = self.clone();
        let requests = activity.clone();
        let service = service_fn(move |request| {
            requests.request();
            frontend.stats().redirect();
            std::future::ready(Ok::<_, std::convert::Infallible>(http::redirect(
                &request, https_port,
            )))
        });
        let io = TokioIo::new(Tracked::new(stream, activity.clone()));
        let connection = self.http.serve_connection(io, service);
        self.drive(connection, &activity, stop).await;
    }

    fn status(&self) -> FrontendStatus {
        FrontendStatus {
            name: self.config.name.clone(),
            bind: self.config.bind.clone(),
            redirect_http: self.config.redirect_http.clone(),
            vip: self.upstream.pool.vip().to_owned(),
            certificates: self.tls().certificates,
            backends: self.upstream.pool.members(),
            counters: self.stats().snapshot(),
        }
    }
}

fn load_tls(config: &FrontendConfig, resumption: &Resumption) -> Result<LoadedTls, TlsError> {
    let certificates = tls::load_certificates(&config.certificates)?;
    Ok(LoadedTls {
        config: tls::server_config(config, &certificates, resumption)?,
        certificates: certificates
            .into_iter()
            .map(|c| CertificateStatus {
                file: c.path,
                names: c.names,
            })
            .collect(),
    })
}

/// `GET /v1/proxy/status` on the proxy's control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub config_path: PathBuf,
    pub frontends: Vec<FrontendStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendStatus {
    pub name: String,
    pub bind: Vec<SocketAddr>,
    pub redirect_http: Vec<SocketAddr>,
    /// The VIP whose backends serve it.
    pub vip: String,
    pub certificates: Vec<CertificateStatus>,
    /// As the agent last said.
    pub backends: Vec<PoolMember>,
    pub counters: FrontendCounters,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub file: PathBuf,
    pub names: Vec<String>,
}

/// `POST /v1/proxy/reload`: what was reloaded, and what needs a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Frontends whose certificates (and ALPN, minimum TLS version) were replaced.
    pub reloaded: Vec<String>,
    /// Changes a reload does not apply (listeners, timeouts, new frontends, …).
    pub needs_restart: Vec<String>,
}

/// A running proxy.
pub struct Proxy {
    config_path: PathBuf,
    frontends: Arc<[Arc<Frontend>]>,
    stop: watch::Sender<bool>,
    reloads: mpsc::Receiver<control::ReloadRequest>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Loads the configuration and certificates, binds every listener and starts serving.
    pub async fn start(config_path: &Path) -> Result<Proxy, ProxyError> {
        let config = Config::load(config_path)?;
        if config.frontends.is_empty() {
            return Err(ProxyError::NoFrontend(config_path.to_owned()));
        }
        let mut pools: BTreeMap<String, Arc<Pool>> = BTreeMap::new();
        let mut frontends = Vec::new();
        for frontend in &config.frontends {
            let pool = pools
                .entry(frontend.backends.clone())
                .or_insert_with(|| Arc::new(Pool::new(&frontend.backends)))
                .clone();
            frontends.push(Arc::new(Frontend::new(frontend.clone(), pool)?));
        }
        // Every listener first: a bind failure starts nothing.
        let mut listeners: Vec<(Arc<Frontend>, TcpListener, bool)> = Vec::new();
        for frontend in &frontends {
            let addresses = frontend
                .config
                .bind
                .iter()
                .map(|a| (*a, false))
                .chain(frontend.config.redirect_http.iter().map(|a| (*a, true)));
            for (address, redirect) in addresses {
                let listener = server::bind(address).map_err(|source| ProxyError::Bind {
                    frontend: frontend.config.name.clone(),
                    address,
                    source,
                })?;
                listeners.push((frontend.clone(), listener, redirect));
            }
        }
        let control = control::ControlListener::bind(&control_socket(&config)).await?;
        if !server::migrates_queued_connections() {
            warn!(
                "net.ipv4.tcp_migrate_req is 0: on a graceful restart, connections queued at the old \
                 weir proxy but not yet accepted are reset; set it to 1 (sysctl) for restarts that \
                 refuse nothing"
            );
        }

        // The backends first: connections queue on the bound listeners meanwhile.
        for pool in pools.values() {
            pool::first_sync(pool, config.agent.api_socket.clone()).await;
        }
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        for pool in pools.values() {
            tasks.push(tokio::spawn(pool::follow_agent(
                pool.clone(),
                config.agent.api_socket.clone(),
            )));
        }
        for (frontend, listener, redirect) in listeners {
            let slots = frontend.slots.clone();
            let stopped = stop.subscribe();
            let serve = move |stream, peer, slot| {
                let frontend = frontend.clone();
                let stop = stopped.clone();
                if redirect {
                    tokio::spawn(frontend.serve_redirect(stream, slot, stop));
                } else {
                    tokio::spawn(frontend.serve_tls(stream, peer, slot, stop));
                }
            };
            tasks.push(tokio::spawn(server::accept_loop(
                listener,
                slots,
                stop.subscribe(),
                serve,
            )));
        }
        let frontends: Arc<[Arc<Frontend>]> = frontends.into();
        let (reload_requests, reloads) = mpsc::channel(4);
        control.serve(
            status_snapshot(config_path, frontends.clone()),
            reload_requests,
            stop.subscribe(),
        );
        let proxy = Proxy {
            config_path: config_path.to_owned(),
            frontends,
            stop,
            reloads,
            tasks,
        };
        for frontend in proxy.frontends.iter() {
            let names: Vec<String> = frontend
                .tls()
                .certificates
                .iter()
                .flat_map(|c| c.names.clone())
                .collect();
            info!(
                frontend = %frontend.config.name,
                "HTTPS on {} for {} (backends of VIP {:?}){}",
                join(&frontend.config.bind),
                names.join(" "),
                frontend.config.backends,
                if frontend.config.redirect_http.is_empty() {
                    String::new()
                } else {
                    format!("; redirects plain HTTP on {}", join(&frontend.config.redirect_http))
                }
            );
        }
        info!("{READY} (pid {})", std::process::id());
        Ok(proxy)
    }

    /// Serves until SIGTERM, SIGINT or SIGUSR1 (SIGHUP and the control socket reload),
    /// then stops accepting and lets the connections finish, each frontend within its
    /// `timeouts.drain`.
    pub async fn run(mut self) -> Result<(), ProxyError> {
        let mut hangup = signal(SignalKind::hangup()).map_err(ProxyError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(ProxyError::Signals)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(ProxyError::Signals)?;
        let mut user1 = signal(SignalKind::user_defined1()).map_err(ProxyError::Signals)?;
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    info!("SIGHUP: reloading the certificates");
                    let _ = self.reload();
                }
                Some(reply) = self.reloads.recv() => {
                    let _ = reply.send(self.reload());
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = user1.recv() => break,
            }
        }
        self.stop().await;
        Ok(())
    }

    /// Reloads the certificates of every frontend from the file as it is now; all or
    /// nothing: one bad certificate or key keeps every frontend on its current ones.
    fn reload(&self) -> Result<ReloadReport, String> {
        let outcome = self.prepare_reload();
        match &outcome {
            Ok((report, _)) => {
                for note in &report.needs_restart {
                    warn!("not applied by a reload, needs a restart: {note}");
                }
            }
            Err(error) => warn!("reload refused, the current certificates keep serving: {error}"),
        }
        let (report, loaded) = outcome?;
        for (frontend, tls) in self.frontends.iter().zip(loaded) {
            if let Some(tls) = tls {
                *frontend.tls.write().unwrap_or_else(|e| e.into_inner()) = tls;
            }
        }
        info!("{RELOADED}: {}", report.reloaded.join(", "));
        Ok(report)
    }

    fn prepare_reload(&self) -> Result<(ReloadReport, Vec<Option<LoadedTls>>), String> {
        let config = Config::load(&self.config_path).map_err(|e| e.to_string())?;
        let mut report = ReloadReport::default();
        let mut loaded = Vec::new();
        for frontend in self.frontends.iter() {
            let name = &frontend.config.name;
            let Some(new) = config.frontends.iter().find(|f| f.name == *name) else {
                report
                    .needs_restart
                    .push(format!("frontend {name:?} is no longer in the file"));
                loaded.push(None);
                continue;
            };
            let tls = load_tls(new, &frontend.resumption)
                .map_err(|e| format!("frontend {name:?}: {e}"))?;
            let mut rest = new.clone();
            rest.certificates = frontend.config.certificates.clone();
            rest.alpn = frontend.config.alpn.clone();
            rest.min_tls = frontend.config.min_tls;
            if rest != frontend.config {
                report
                    .needs_restart
                    .push(format!("frontend {name:?}: settings other than the certificates, alpn and min_tls changed"));
            }
            report.reloaded.push(name.clone());
            loaded.push(Some(tls));
        }
        for new in &config.frontends {
            if !self.frontends.iter().any(|f| f.config.name == new.name) {
                report
                    .needs_restart
                    .push(format!("frontend {:?} is new", new.name));
            }
        }
        Ok((report, loaded))
    }

    async fn stop(self) {
        let open: u64 = self
            .frontends
            .iter()
            .map(|f| f.stats().snapshot().open_connections)
            .sum();
        info!("stopping: no new connections; {open} open connections may finish");
        let _ = self.stop.send(true);
        for frontend in self.frontends.iter() {
            let all = frontend.config.limits.max_connections;
            // Every connection's slot back: all finished, or the drain time is over.
            let drained = tokio::time::timeout(
                frontend.config.timeouts.drain + Duration::from_millis(100),
                frontend.slots.acquire_many(all),
            )
            .await;
            if drained.is_err() {
                warn!(frontend = %frontend.config.name, "drain time over: closing the remaining connections");
            }
        }
        for task in &self.tasks {
            task.abort();
        }
        for frontend in self.frontends.iter() {
            let counters = frontend.stats().snapshot();
            info!(
                frontend = %frontend.config.name,
                "counters: {}",
                serde_json::to_string(&counters).unwrap_or_default()
            );
        }
        info!("weir proxy stopped");
    }
}

/// What `GET /v1/proxy/status` answers, at any time.
fn status_snapshot(
    config_path: &Path,
    frontends: Arc<[Arc<Frontend>]>,
) -> impl Fn() -> ProxyStatus + Send + Sync + 'static {
    let config_path = config_path.to_owned();
    let started = Instant::now();
    move || ProxyStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_seconds: started.elapsed().as_secs(),
        config_path: config_path.clone(),
        frontends: frontends.iter().map(|f| f.status()).collect(),
    }
}

fn join(addresses: &[SocketAddr]) -> String {
    addresses
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}
