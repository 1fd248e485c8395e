//! The proxy's control socket (`proxy.sock` beside the agent's API socket, mode 0600):
//! `GET /v1/proxy/status` (frontends, certificates, backends, counters) and
//! `POST /v1/proxy/reload` (the certificates, as SIGHUP). `weir proxy status` and
//! `weir proxy reload` are its clients.
//!
//! A new proxy takes the socket path over (the old one, draining, keeps its own socket
//! open until it exits, and does not remove the new one's).

use std::{path::Path, sync::Arc};

use axum::{Json, Router, extract::State, http::StatusCode, routing};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::{ProxyStatus, ReloadReport};
use crate::api::{
    model::ErrorBody,
    server::{self as api, ApiError, UnixApiListener},
};

/// Status route.
pub const STATUS_PATH: &str = "/v1/proxy/status";
/// Reload route.
pub const RELOAD_PATH: &str = "/v1/proxy/reload";

/// A reload asked over the socket, answered by the proxy's main loop.
pub type ReloadRequest = oneshot::Sender<Result<ReloadReport, String>>;

/// The bound control socket, not yet served.
pub struct ControlListener(UnixApiListener);

#[derive(Clone)]
struct Shared {
    status: Arc<dyn Fn() -> ProxyStatus + Send + Sync>,
    reloads: mpsc::Sender<ReloadRequest>,
}

impl ControlListener {
    /// Binds `path`, replacing the socket of a proxy that runs there (the old one of a
    /// graceful restart).
    pub async fn bind(path: &Path) -> Result<ControlListener, ApiError> {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(path).map_err(|source| ApiError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(ControlListener(api::bind_unix(path).await?))
    }

    /// Serves the socket until `stop` turns true.
    pub fn serve(
        self,
        status: impl Fn() -> ProxyStatus + Send + Sync + 'static,
        reloads: mpsc::Sender<ReloadRequest>,
        mut stop: watch::Receiver<bool>,
    ) {
        let shared = Shared {
            status: Arc::new(status),
            reloads,
        };
        let router = Router::new()
            .route(STATUS_PATH, routing::get(get_status))
            .route(RELOAD_PATH, routing::post(reload))
            .with_state(shared);
        tokio::spawn(async move {
            let stopping = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            if let Err(error) = api::serve_router_on(self.0, router, stopping).await {
                warn!("the proxy's control socket: {error}");
            }
        });
    }
}

async fn get_status(State(shared): State<Shared>) -> Json<ProxyStatus> {
    Json((shared.status)())
}

async fn reload(
    State(shared): State<Shared>,
) -> Result<Json<ReloadReport>, (StatusCode, Json<ErrorBody>)> {
    let failed = |status, error: String| (status, Json(ErrorBody { error }));
    let (reply, answer) = oneshot::channel();
    let stopping = || {
        failed(
            StatusCode::SERVICE_UNAVAILABLE,
            "the proxy is stopping".into(),
        )
    };
    shared.reloads.send(reply).await.map_err(|_| stopping())?;
    match answer.await.map_err(|_| stopping())? {
        Ok(report) => Ok(Json(report)),
        Err(error) => Err(failed(StatusCode::UNPROCESSABLE_ENTITY, error)),
    }
}
