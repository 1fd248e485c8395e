//! The control API's HTTP server: JSON over HTTP/1.1, on a Unix socket (trusted by its
//! file mode, 0600) or on TCP (every request carries `Authorization: Bearer <token>`).
//!
//! The routes are [`ROUTES`], one table that both builds the router and is checked
//! against `docs/api/openapi.yaml` by a test. Each handler locks the [`Control`] for one
//! call only, and maps [`ControlError`] to a status code; every error body, including
//! the ones for malformed requests, unknown routes and wrong methods, is an
//! [`ErrorBody`].
//!
//! Start a server in two steps, so that the caller knows the socket is bound before it
//! says it is ready: [`bind_unix`] then [`serve_unix_on`] (or [`bind_tcp`] then
//! [`serve_tcp_on`]).

use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        FromRequest, Query, Request, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::{HeaderMap, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter, on},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::Mutex,
};

use crate::api::connections::{self, Limits, Listener};
use crate::api::firewall::{FirewallEdit, FirewallView};
use crate::api::model::{
    BackendChange, BackendView, Control, ControlError, ErrorBody, FlowView, NewBackend, NewVip,
    ReloadOutcome, Status, VipView,
};
use crate::stats::report::StatsReport;

/// The agent's state as the server holds it. An `Arc<Mutex<Agent>>` coerces to it.
pub type SharedControl = Arc<Mutex<dyn Control>>;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot create the socket's directory {}: {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} exists and is not a socket: not replacing it", .0.display())]
    NotASocket(PathBuf),
    #[error("another process is serving on {}", .0.display())]
    InUse(PathBuf),
    #[error("cannot remove the stale socket {}: {source}", .path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind {}: {source}", .path.display())]
    BindUnix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot restrict {} to mode 0600: {source}", .path.display())]
    Chmod {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind {addr}: {source}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the TCP control API needs a non-empty token")]
    EmptyToken,
}

/// What a route does; [`ROUTES`] pairs each with its method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Status,
    Vips,
    Vip,
    AddVip,
    RemoveVip,
    Backends,
    AddBackend,
    RemoveBackend,
    ChangeBackend,
    Flows,
    Stats,
    Reload,
    Firewalls,
    EditFirewall,
}

/// One route of the API: a method and an axum path template (`{param}`, as OpenAPI's).
#[derive(Clone, Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    op: Op,
}

const fn route(method: Method, path: &'static str, op: Op) -> Route {
    Route { method, path, op }
}

/// Every route the server serves, and nothing else.
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/v1/status", Op::Status),
    route(Method::GET, "/v1/vips", Op::Vips),
    route(Method::GET, "/v1/vips/{name}", Op::Vip),
    route(Method::POST, "/v1/vips", Op::AddVip),
    route(Method::DELETE, "/v1/vips/{name}", Op::RemoveVip),
    route(Method::GET, "/v1/vips/{name}/backends", Op::Backends),
    route(Method::POST, "/v1/vips/{name}/backends", Op::AddBackend),
    route(
        Method::DELETE,
        "/v1/vips/{name}/backends/{address}",
        Op::RemoveBackend,
    ),
    route(
        Method::PATCH,
        "/v1/vips/{name}/backends/{address}",
        Op::ChangeBackend,
    ),
    route(Method::GET, "/v1/flows", Op::Flows),
    route(Method::GET, "/v1/stats", Op::Stats),
    route(Method::POST, "/v1/reload", Op::Reload),
    route(Method::GET, "/v1/firewall", Op::Firewalls),
    route(Method::PATCH, "/v1/vips/{name}/firewall", Op::EditFirewall),
];

/// The API's routes, without authentication (for the Unix socket).
pub fn router(control: SharedControl) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        let filter = MethodFilter::try_from(route.method.clone())
            .expect("every method in ROUTES has a MethodFilter");
        let handler: MethodRouter<SharedControl> = match route.op {
            Op::Status => on(filter, status),
            Op::Vips => on(filter, vips),
            Op::Vip => on(filter, vip),
            Op::AddVip => on(filter, add_vip),
            Op::RemoveVip => on(filter, remove_vip),
            Op::Backends => on(filter, backends),
            Op::AddBackend => on(filter, add_backend),
            Op::RemoveBackend => on(filter, remove_backend),
            Op::ChangeBackend => on(filter, change_backend),
            Op::Flows => on(filter, flows),
            Op::Stats => on(filter, stats),
            Op::Reload => on(filter, reload),
            Op::Firewalls => on(filter, firewalls),
            Op::EditFirewall => on(filter, edit_firewall),
        };
        router = router.route(route.path, handler);
    }
    router
        // After the routes: it applies to the routes present.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(control)
}

/// The API's routes, each request authenticated by `Authorization: Bearer <token>`.
pub fn router_with_token(control: SharedControl, token: &str) -> Router {
    let token: Arc<[u8]> = token.as_bytes().into();
    router(control).layer(middleware::from_fn_with_state(token, require_token))
}

/// A bound Unix socket; the socket file is removed when it is dropped (if it is still
/// the one this bound).
#[derive(Debug)]
pub struct UnixApiListener {
    listener: Option<UnixListener>,
    path: PathBuf,
    /// (device, inode) of the socket file as bound.
    file: (u64, u64),
}

impl UnixApiListener {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixApiListener {
    fn drop(&mut self) {
        drop(self.listener.take());
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.file
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the control socket at `path`: creates its directory (mode 0700, if missing),
/// replaces a stale socket left by a dead agent (but not a live one, nor a file that is
/// not a socket), and restricts the socket to its owner (0600).
pub async fn bind_unix(path: &Path) -> Result<UnixApiListener, ApiError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| ApiError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ApiError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(|source| ApiError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => return Err(ApiError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    let listener = bind_private(path)?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| ApiError::BindUnix {
        path: path.to_owned(),
        source,
    })?;
    Ok(UnixApiListener {
        listener: Some(listener),
        path: path.to_owned(),
        file: (meta.dev(), meta.ino()),
    })
}

/// Binds a socket that appears at `path` with mode 0600 already: bound and restricted in
/// a fresh 0700 directory beside it, where no one else can reach it, then renamed into
/// place (a chmod after binding at `path` would leave it open to anyone for a moment).
fn bind_private(path: &Path) -> Result<UnixListener, ApiError> {
    let bind_error = |source| ApiError::BindUnix {
        path: path.to_owned(),
        source,
    };
    let parent = path.parent().unwrap_or(Path::new("."));
    let private = parent.join(format!(".weir-bind-{}", std::process::id()));
    // Left by an earlier agent of the same pid that died here.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(bind_error)?;
    let bound = private.join("s");
    let result = (|| {
        let listener = UnixListener::bind(&bound).map_err(bind_error)?;
        std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| ApiError::Chmod {
                path: path.to_owned(),
                source,
            },
        )?;
        std::fs::rename(&bound, path).map_err(bind_error)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// Serves the API on a bound Unix socket until `shutdown` resolves (then lets the
/// requests in progress finish), and removes the socket file.
pub async fn serve_unix_on(
    listener: UnixApiListener,
    control: SharedControl,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    serve_router_on(listener, router(control), shutdown).await
}

/// Serves `router` on a bound Unix socket as [`serve_unix_on`] does (the proxy's control
/// socket is served so too).
pub async fn serve_router_on(
    mut listener: UnixApiListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let socket = listener.listener.take().expect("a listener not yet served");
    connections::serve(Listener::Unix(socket), router, Limits::default(), shutdown).await;
    drop(listener);
    Ok(())
}

pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::BindTcp { addr, source })
}

/// Serves the API on a bound TCP listener until `shutdown` resolves; every request
/// must carry `Authorization: Bearer <token>`, else 401.
pub async fn serve_tcp_on(
    listener: TcpListener,
    control: SharedControl,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    if token.is_empty() {
        return Err(ApiError::EmptyToken);
    }
    let router = router_with_token(control, &token);
    connections::serve(Listener::Tcp(listener), router, Limits::default(), shutdown).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Errors

/// An error response: a status and an [`ErrorBody`].
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ControlError> for Failure {
    fn from(error: ControlError) -> Self {
        let status = match &error {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Internal(message) => {
                tracing::error!("control API: {message}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Failure::new(status, error.to_string())
    }
}

impl From<PathRejection> for Failure {
    fn from(rejection: PathRejection) -> Self {
        Failure::new(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for Failure {
    fn from(rejection: QueryRejection) -> Self {
        let detail = match &rejection {
            QueryRejection::FailedToDeserializeQueryString(e) => deepest_source(e),
            other => other.body_text(),
        };
        Failure::bad_request(format!("invalid query string: {detail}"))
    }
}

impl From<BytesRejection> for Failure {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        Failure::new(
            status,
            format!(
                "cannot read the request body: {}",
                deepest_source(&rejection)
            ),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: self.message,
        });
        if self.status == StatusCode::UNAUTHORIZED {
            (self.status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

/// The innermost error's message: axum's wrappers only add "Failed to …".
fn deepest_source(error: &(dyn std::error::Error + 'static)) -> String {
    let mut error = error;
    while let Some(source) = error.source() {
        error = source;
    }
    error.to_string()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

// ---------------------------------------------------------------------------------------
// Extractors

/// A JSON body: `Content-Type: application/json`, parsed with messages that say where
/// and what is wrong, and every rejection an [`ErrorBody`].
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        if !is_json(req.headers()) {
            return Err(Failure::bad_request(
                "the body must be JSON, with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| Failure::bad_request(json_error_message(&e)))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// "invalid JSON at line 1 column 12: expected value", or, for a body that is JSON but
/// not the expected shape, "invalid request body at line 1 column 30: unknown field …".
fn json_error_message(error: &serde_json::Error) -> String {
    let what = match error.classify() {
        serde_json::error::Category::Data => "invalid request body",
        _ => "invalid JSON",
    };
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let detail = full.strip_suffix(&suffix).unwrap_or(&full);
    format!("{what}{suffix}: {detail}")
}

/// A path segment that must be an IP address.
fn parse_address(text: &str) -> Result<IpAddr, Failure> {
    text.parse()
        .map_err(|_| Failure::bad_request(format!("{text:?} is not an IP address")))
}

type VipPath = axum::extract::Path<String>;
type BackendPath = axum::extract::Path<(String, String)>;

// ---------------------------------------------------------------------------------------
// Handlers: each locks the control for one call.

type Reply<T> = Result<Json<T>, Failure>;

async fn status(State(control): State<SharedControl>) -> Json<Status> {
    let status = control.lock().await.status();
    Json(status)
}

async fn vips(State(control): State<SharedControl>) -> Json<Vec<VipView>> {
    let vips = control.lock().await.vips();
    Json(vips)
}

async fn vip(
    State(control): State<SharedControl>,
    path: Result<VipPath, PathRejection>,
) -> Reply<VipView> {
    let name = path?.0;
    let vip = control.lock().await.vip(&name)?;
    Ok(Json(vip))
}

async fn add_vip(
    State(control): State<SharedControl>,
    JsonBody(vip): JsonBody<NewVip>,
) -> Result<(StatusCode, Json<VipView>), Failure> {
    let added = control.lock().await.add_vip(vip)?;
    Ok((StatusCode::CREATED, Json(added)))
}

async fn remove_vip(
    State(control): State<SharedControl>,
    path: Result<VipPath, PathRejection>,
) -> Result<StatusCode, Failure> {
    let name = path?.0;
    control.lock().await.remove_vip(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn backends(
    State(control): State<SharedControl>,
    path: Result<VipPath, PathRejection>,
) -> Reply<Vec<BackendView>> {
    let name = path?.0;
    let vip = control.lock().await.vip(&name)?;
    Ok(Json(vip.backends))
}

async fn add_backend(
    State(control): State<SharedControl>,
    path: Result<VipPath, PathRejection>,
    JsonBody(backend): JsonBody<NewBackend>,
) -> Result<(StatusCode, Json<BackendView>), Failure> {
    let name = path?.0;
    let added = control.lock().await.add_backend(&name, backend)?;
    Ok((StatusCode::CREATED, Json(added)))
}

async fn remove_backend(
    State(control): State<SharedControl>,
    path: Result<BackendPath, PathRejection>,
) -> Result<StatusCode, Failure> {
    let (name, address) = path?.0;
    let address = parse_address(&address)?;
    control.lock().await.remove_backend(&name, address)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn change_backend(
    State(control): State<SharedControl>,
    path: Result<BackendPath, PathRejection>,
    JsonBody(change): JsonBody<BackendChange>,
) -> Reply<BackendView> {
    let (name, address) = path?.0;
    let address = parse_address(&address)?;
    let changed = control
        .lock()
        .await
        .change_backend(&name, address, change)?;
    Ok(Json(changed))
}

/// `GET /v1/flows?vip=NAME&backend=ADDR`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowQuery {
    vip: Option<String>,
    backend: Option<String>,
}

async fn flows(
    State(control): State<SharedControl>,
    query: Result<Query<FlowQuery>, QueryRejection>,
) -> Reply<Vec<FlowView>> {
    let Query(query) = query?;
    let backend = query.backend.as_deref().map(parse_address).transpose()?;
    let flows = control.lock().await.flows(query.vip.as_deref(), backend)?;
    Ok(Json(flows))
}

async fn stats(State(control): State<SharedControl>) -> Reply<StatsReport> {
    let stats = control.lock().await.stats()?;
    Ok(Json(stats))
}

async fn reload(State(control): State<SharedControl>) -> Reply<ReloadOutcome> {
    let outcome = control.lock().await.reload()?;
    Ok(Json(outcome))
}

async fn firewalls(State(control): State<SharedControl>) -> Json<Vec<FirewallView>> {
    let firewalls = control.lock().await.firewalls();
    Json(firewalls)
}

async fn edit_firewall(
    State(control): State<SharedControl>,
    path: Result<VipPath, PathRejection>,
    JsonBody(edit): JsonBody<FirewallEdit>,
) -> Reply<FirewallView> {
    let name = path?.0;
    let edited = control.lock().await.edit_firewall(&name, edit)?;
    Ok(Json(edited))
}

// ---------------------------------------------------------------------------------------
// Authentication (TCP)

async fn require_token(State(token): State<Arc<[u8]>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes())
        .and_then(|value| {
            let (scheme, credentials) = value.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"Bearer ")
                .then(|| credentials.trim_ascii())
        });
    match presented {
        None => Failure::new(
            StatusCode::UNAUTHORIZED,
            "missing credentials: send Authorization: Bearer <token>",
        )
        .into_response(),
        Some(presented) if !constant_time_eq(presented, &token) => {
            Failure::new(StatusCode::UNAUTHORIZED, "invalid bearer token").into_response()
        }
        Some(_) => next.run(request).await,
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess
/// was right (only whether its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        net::{Ipv4Addr, Ipv6Addr},
        sync::atomic::{AtomicU32, Ordering},
    };

    use serde_json::{Value, json};
    use tokio::{
        io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
        net::{TcpStream, UnixStream},
        sync::oneshot,
        task::JoinHandle,
    };

    use super::*;
    use crate::{
        api::model::fake::FakeControl,
        config::{AdminState, HashMode, Protocol},
    };

    // -- A fake agent ---------------------------------------------------------------

    /// Three VIPs ("web", "dns", and "broken", which fails every change with an
    /// internal error) and three flows.
    fn fake() -> FakeControl {
        let web = VipView {
            name: "web".into(),
            address: ip("192.0.2.10"),
            port: 80,
            protocol: Protocol::Tcp,
            forwarding: Default::default(),
            hash: HashMode::FiveTuple,
            table_size: 65537,
            status: Default::default(),
            backends: vec![backend("10.0.0.1", 100), backend("10.0.0.2", 50)],
        };
        let dns = VipView {
            name: "dns".into(),
            address: ip("2001:db8::53"),
            port: 53,
            protocol: Protocol::Udp,
            forwarding: Default::default(),
            hash: HashMode::SourceIp,
            table_size: 251,
            status: Default::default(),
            backends: vec![backend("2001:db8::1", 100)],
        };
        let broken = VipView {
            name: "broken".into(),
            backends: vec![],
            ..dns.clone()
        };
        let mut fake = FakeControl::with_vips(vec![web, dns, broken]);
        fake.failing_vip = Some("broken".into());
        fake.flows = vec![
            FlowView {
                vip: "web".into(),
                protocol: Protocol::Tcp,
                client: "198.51.100.7:40000".parse().unwrap(),
                destination: "192.0.2.10:80".parse().unwrap(),
                backend: ip("10.0.0.1"),
            },
            FlowView {
                vip: "web".into(),
                protocol: Protocol::Tcp,
                client: "198.51.100.8:40001".parse().unwrap(),
                destination: "192.0.2.10:80".parse().unwrap(),
                backend: ip("10.0.0.2"),
            },
            FlowView {
                vip: "dns".into(),
                protocol: Protocol::Udp,
                client: "[2001:db8::99]:5353".parse().unwrap(),
                destination: "[2001:db8::53]:53".parse().unwrap(),
                backend: ip("2001:db8::1"),
            },
        ];
        fake
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn backend(address: &str, weight: u32) -> BackendView {
        BackendView {
            address: ip(address),
            weight,
            state: AdminState::Ready,
            port: None,
            nat_source: None,
            flows: 0,
            health: Default::default(),
        }
    }

    // -- A server in a temporary directory, and a tiny HTTP/1.1 client ----------------

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("weir-api-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Server {
        _dir: TempDir,
        socket: PathBuf,
        stop: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<Result<(), ApiError>>>,
    }

    impl Server {
        async fn start() -> Self {
            let dir = TempDir::new();
            // A directory that does not exist yet: bind_unix creates it.
            let socket = dir.0.join("run").join("weir.sock");
            let control: SharedControl = Arc::new(Mutex::new(fake()));
            let listener = bind_unix(&socket).await.unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve_unix_on(listener, control, async {
                let _ = stopped.await;
            }));
            Server {
                _dir: dir,
                socket,
                stop: Some(stop),
                task: Some(task),
            }
        }

        async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
            let stream = UnixStream::connect(&self.socket).await.unwrap();
            http(stream, method, path, &[], body).await
        }

        async fn stop(mut self) -> PathBuf {
            self.stop.take().unwrap().send(()).unwrap();
            self.task.take().unwrap().await.unwrap().unwrap();
            self.socket.clone()
        }
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        /// Asserts an error: the status, the `ErrorBody` shape, and a fragment of its message.
        #[track_caller]
        fn assert_error(&self, status: u16, fragment: &str) {
            assert_eq!(self.status, status, "{self:?}");
            assert_eq!(
                self.header("content-type"),
                Some("application/json"),
                "{self:?}"
            );
            let body: ErrorBody = serde_json::from_str(&self.body)
                .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {:?}", self.body));
            assert!(
                body.error.contains(fragment),
                "{:?} does not contain {fragment:?}",
                body.error
            );
            assert_eq!(self.json().as_object().unwrap().len(), 1, "{self:?}");
        }
    }

    /// One request on its own connection (`Connection: close`), read to the end.
    async fn http(
        mut stream: impl AsyncRead + AsyncWrite + Unpin,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            if !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            {
                request.push_str("Content-Type: application/json\r\n");
            }
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or(""));
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.trim().to_owned(), value.trim().to_owned())
            })
            .collect();
        assert!(
            !headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v == "chunked"),
            "the test client does not decode chunked bodies"
        );
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    // -- Happy paths ----------------------------------------------------------------

    #[tokio::test]
    async fn every_route_happy_path_over_a_unix_socket() {
        let server = Server::start().await;
        let fake = fake();

        let r = server.call("GET", "/v1/status", None).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            serde_json::from_str::<Status>(&r.body).unwrap(),
            fake.status()
        );

        let r = server.call("GET", "/v1/vips", None).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            serde_json::from_str::<Vec<VipView>>(&r.body).unwrap(),
            fake.vips
        );
        // The wire names of the enums.
        assert_eq!(r.json()[0]["hash"], "5-tuple");
        assert_eq!(r.json()[1]["protocol"], "udp");

        let r = server.call("GET", "/v1/vips/web", None).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            serde_json::from_str::<VipView>(&r.body).unwrap(),
            fake.vips[0]
        );

        let r = server.call("GET", "/v1/vips/web/backends", None).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            serde_json::from_str::<Vec<BackendView>>(&r.body).unwrap(),
            fake.vips[0].backends
        );

        let r = server
            .call(
                "POST",
                "/v1/vips/web/backends",
                Some(r#"{"address": "10.0.0.3", "weight": 20, "state": "drain"}"#),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(
            r.json(),
            json!({"address": "10.0.0.3", "weight": 20, "state": "drain", "flows": 0,
                   "health": {"check": "none", "state": "up", "since_unix_ms": 0, "checks": 0,
                              "failed_checks": 0, "down_transitions": 0, "downtime_ms": 0}})
        );
        // Defaults.
        let r = server
            .call(
                "POST",
                "/v1/vips/dns/backends",
                Some(r#"{"address": "2001:db8::2"}"#),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(
            r.json(),
            json!({"address": "2001:db8::2", "weight": 100, "state": "ready", "flows": 0,
                   "health": {"check": "none", "state": "up", "since_unix_ms": 0, "checks": 0,
                              "failed_checks": 0, "down_transitions": 0, "downtime_ms": 0}})
        );

        let r = server
            .call(
                "PATCH",
                "/v1/vips/web/backends/10.0.0.3",
                Some(r#"{"state": "maint"}"#),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.json(),
            json!({"address": "10.0.0.3", "weight": 20, "state": "maint", "flows": 0,
                   "health": {"check": "none", "state": "up", "since_unix_ms": 0, "checks": 0,
                              "failed_checks": 0, "down_transitions": 0, "downtime_ms": 0}})
        );
        // IPv6 in the path, and an empty change.
        let r = server
            .call("PATCH", "/v1/vips/dns/backends/2001:db8::2", Some("{}"))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["weight"], 100);

        let r = server
            .call("DELETE", "/v1/vips/web/backends/10.0.0.3", None)
            .await;
        assert_eq!(r.status, 204, "{r:?}");
        assert_eq!(r.body, "");
        let r = server
            .call("DELETE", "/v1/vips/dns/backends/2001:db8::2", None)
            .await;
        assert_eq!(r.status, 204, "{r:?}");
        let r = server.call("GET", "/v1/vips/web/backends", None).await;
        assert_eq!(r.json().as_array().unwrap().len(), 2);

        let r = server.call("GET", "/v1/flows", None).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            serde_json::from_str::<Vec<FlowView>>(&r.body).unwrap(),
            fake.flows
        );
        let r = server.call("GET", "/v1/flows?vip=web", None).await;
        assert_eq!(r.json().as_array().unwrap().len(), 2);
        let r = server
            .call("GET", "/v1/flows?vip=web&backend=10.0.0.2", None)
            .await;
        assert_eq!(
            serde_json::from_str::<Vec<FlowView>>(&r.body).unwrap(),
            fake.flows[1..2]
        );
        let r = server
            .call("GET", "/v1/flows?backend=2001%3Adb8%3A%3A1", None)
            .await;
        assert_eq!(
            serde_json::from_str::<Vec<FlowView>>(&r.body).unwrap(),
            fake.flows[2..3]
        );

        let r = server.call("GET", "/v1/stats", None).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.json(),
            json!({"verdicts": {"tx": 10}, "counters": {"forwarded": 10}, "vips": []})
        );

        let r = server.call("POST", "/v1/reload", None).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json(), json!({"writes": 3}));

        let socket = server.stop().await;
        assert!(!socket.exists(), "the socket file is removed at the end");
    }

    // -- Errors ---------------------------------------------------------------------

    #[tokio::test]
    async fn firewall_edits_apply_and_list() {
        let server = Server::start().await;
        let r = server.call("GET", "/v1/firewall", None).await;
        assert_eq!((r.status, r.body.as_str()), (200, "[]"), "{r:?}");
        let body = r#"{"allow": ["198.18.0.0/16"], "deny": ["198.18.5.0/24"]}"#;
        let r = server
            .call("PATCH", "/v1/vips/web/firewall", Some(body))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let view: FirewallView = serde_json::from_str(&r.body).unwrap();
        assert_eq!(view.firewall.deny_sources[0].to_string(), "198.18.5.0/24");
        let r = server.call("GET", "/v1/firewall", None).await;
        let list: Vec<FirewallView> = serde_json::from_str(&r.body).unwrap();
        assert_eq!(list, [view]);
        server
            .call(
                "PATCH",
                "/v1/vips/web/firewall",
                Some(r#"{"allow": ["198.18.0.1/16"]}"#),
            )
            .await
            .assert_error(400, "has bits set past its prefix length");
        server
            .call(
                "PATCH",
                "/v1/vips/web/firewall",
                Some(r#"{"remove": ["198.18.9.0/24"]}"#),
            )
            .await
            .assert_error(422, "in neither");
        server
            .call("PATCH", "/v1/vips/nope/firewall", Some("{}"))
            .await
            .assert_error(404, "nope");
    }

    #[tokio::test]
    async fn control_errors_map_to_status_codes() {
        let server = Server::start().await;
        // NotFound → 404
        server
            .call("GET", "/v1/vips/nope", None)
            .await
            .assert_error(404, "no VIP named \"nope\"");
        server
            .call("GET", "/v1/vips/nope/backends", None)
            .await
            .assert_error(404, "nope");
        server
            .call("DELETE", "/v1/vips/web/backends/10.9.9.9", None)
            .await
            .assert_error(404, "no backend 10.9.9.9");
        server
            .call("GET", "/v1/flows?vip=nope", None)
            .await
            .assert_error(404, "nope");
        // Invalid → 422
        server
            .call(
                "POST",
                "/v1/vips/web/backends",
                Some(r#"{"address": "10.0.0.9", "weight": 5000}"#),
            )
            .await
            .assert_error(422, "weight 5000");
        server
            .call(
                "PATCH",
                "/v1/vips/web/backends/10.0.0.1",
                Some(r#"{"weight": 5000}"#),
            )
            .await
            .assert_error(422, "weight 5000");
        // Conflict → 409
        server
            .call(
                "POST",
                "/v1/vips/web/backends",
                Some(r#"{"address": "10.0.0.1"}"#),
            )
            .await
            .assert_error(409, "already a backend");
        // Internal → 500
        server
            .call(
                "POST",
                "/v1/vips/broken/backends",
                Some(r#"{"address": "10.0.0.1"}"#),
            )
            .await
            .assert_error(500, "on fire");
        server.stop().await;
    }

    #[tokio::test]
    async fn malformed_requests_are_400_with_an_error_body() {
        let server = Server::start().await;
        let post = |body: &'static str| server.call("POST", "/v1/vips/web/backends", Some(body));

        let r = post(r#"{"address": "10.0.0.9",,}"#).await;
        r.assert_error(400, "invalid JSON at line 1 column 24: ");
        post(r#"{"address": "10.0.0.9""#)
            .await
            .assert_error(400, "invalid JSON");
        post("").await.assert_error(400, "invalid JSON");
        post(r#"{"address": "10.0.0.9", "wieght": 3}"#)
            .await
            .assert_error(400, "unknown field `wieght`");
        post(r#"{"address": "abc"}"#)
            .await
            .assert_error(400, "invalid IP address");
        post(r#"{"address": "10.0.0.9", "state": "up"}"#)
            .await
            .assert_error(400, "unknown variant `up`");
        post(r#"{"weight": 3}"#)
            .await
            .assert_error(400, "missing field `address`");
        server
            .call(
                "PATCH",
                "/v1/vips/web/backends/10.0.0.1",
                Some(r#"{"weight": -1}"#),
            )
            .await
            .assert_error(400, "invalid request body at line 1 column 13");

        // Wrong content type, or none.
        let stream = UnixStream::connect(&server.socket).await.unwrap();
        http(
            stream,
            "POST",
            "/v1/vips/web/backends",
            &[("Content-Type", "text/plain")],
            Some("{}"),
        )
        .await
        .assert_error(400, "Content-Type: application/json");
        let stream = UnixStream::connect(&server.socket).await.unwrap();
        let r = http(
            stream,
            "POST",
            "/v1/vips/web/backends",
            &[("Content-Type", "application/json; charset=utf-8")],
            Some(r#"{"address": "10.0.0.9"}"#),
        )
        .await;
        assert_eq!(r.status, 201, "a charset parameter is fine: {r:?}");
        server
            .call("PATCH", "/v1/vips/web/backends/10.0.0.1", None)
            .await
            .assert_error(400, "Content-Type: application/json");

        // Bad addresses in the path and the query; unknown query parameters.
        server
            .call("DELETE", "/v1/vips/web/backends/abc", None)
            .await
            .assert_error(400, "\"abc\" is not an IP address");
        server
            .call("PATCH", "/v1/vips/web/backends/10.0.0.300", Some("{}"))
            .await
            .assert_error(400, "\"10.0.0.300\" is not an IP address");
        server
            .call("GET", "/v1/flows?backend=abc", None)
            .await
            .assert_error(400, "\"abc\" is not an IP address");
        server
            .call("GET", "/v1/flows?vipp=web", None)
            .await
            .assert_error(400, "unknown field `vipp`");

        // Unknown routes and wrong methods.
        server
            .call("GET", "/v1/nope", None)
            .await
            .assert_error(404, "no route for GET /v1/nope");
        server
            .call("GET", "/v2/status", None)
            .await
            .assert_error(404, "no route");
        server
            .call("GET", "/v1/vips/web/backends/10.0.0.1", None)
            .await
            .assert_error(405, "method GET is not allowed");
        let r = server.call("DELETE", "/v1/status", None).await;
        r.assert_error(405, "method DELETE is not allowed on /v1/status");
        assert_eq!(r.header("allow"), Some("GET,HEAD"));
        server
            .call("PUT", "/v1/vips/web/backends", Some("{}"))
            .await
            .assert_error(405, "PUT");
        server
            .call("GET", "/v1/reload", None)
            .await
            .assert_error(405, "GET");
        server.stop().await;
    }

    // -- The socket -----------------------------------------------------------------

    #[tokio::test]
    async fn the_socket_is_private_and_replaces_a_stale_one() {
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.0).unwrap();
        let socket = dir.0.join("weir.sock");
        // A stale socket, as a killed agent leaves it.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert!(socket.exists());

        let control: SharedControl = Arc::new(Mutex::new(fake()));
        let listener = bind_unix(&socket).await.unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");

        // A live one is not replaced.
        match bind_unix(&socket).await {
            Err(ApiError::InUse(path)) => assert_eq!(path, socket),
            other => panic!("{other:?}"),
        }
        drop(listener);
        assert!(!socket.exists(), "a dropped listener removes its socket");

        // Nor is a file that is not a socket.
        std::fs::write(&socket, "precious").unwrap();
        assert!(matches!(
            bind_unix(&socket).await,
            Err(ApiError::NotASocket(_))
        ));
        std::fs::remove_file(&socket).unwrap();

        // bind_unix + serve_unix_on: binds over a stale socket, serves, removes the
        // socket when shut down.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let path = socket.clone();
        let task = tokio::spawn(async move {
            let listener = bind_unix(&path).await?;
            serve_unix_on(listener, control, async {
                let _ = stopped.await;
            })
            .await
        });
        let mut attempts = 0;
        let stream = loop {
            match UnixStream::connect(&socket).await {
                Ok(stream) => break stream,
                Err(_) if attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(
            http(stream, "GET", "/v1/status", &[], None).await.status,
            200
        );
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        assert!(!socket.exists());
    }

    // -- TCP and its token ----------------------------------------------------------

    #[tokio::test]
    async fn tcp_requires_the_bearer_token() {
        let control: SharedControl = Arc::new(Mutex::new(fake()));
        let listener = bind_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_tcp_on(
            listener,
            control.clone(),
            "s3cret-token".into(),
            async {
                let _ = stopped.await;
            },
        ));
        let call = |headers: &'static [(&'static str, &'static str)]| async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            http(stream, "GET", "/v1/status", headers, None).await
        };

        let r = call(&[]).await;
        r.assert_error(401, "missing credentials");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        call(&[("Authorization", "Bearer wrong")])
            .await
            .assert_error(401, "invalid bearer token");
        call(&[("Authorization", "Bearer s3cret-tokeN")])
            .await
            .assert_error(401, "invalid");
        call(&[("Authorization", "Basic czNjcmV0LXRva2Vu")])
            .await
            .assert_error(401, "missing");
        let r = call(&[("Authorization", "Bearer s3cret-token")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["version"], "0.1.0");
        let r = call(&[("Authorization", "bearer s3cret-token")]).await;
        assert_eq!(r.status, 200, "the scheme is case-insensitive: {r:?}");

        // Unknown routes too need the token; with it, the usual 404.
        let stream = TcpStream::connect(addr).await.unwrap();
        http(stream, "GET", "/v1/nope", &[], None)
            .await
            .assert_error(401, "missing");
        let stream = TcpStream::connect(addr).await.unwrap();
        http(
            stream,
            "GET",
            "/v1/nope",
            &[("Authorization", "Bearer s3cret-token")],
            None,
        )
        .await
        .assert_error(404, "no route");

        stop.send(()).unwrap();
        task.await.unwrap().unwrap();

        // An empty token is refused outright.
        let never = std::future::pending::<()>();
        let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
        assert!(matches!(
            serve_tcp_on(bind_tcp(addr).await.unwrap(), control, String::new(), never).await,
            Err(ApiError::EmptyToken)
        ));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    // -- The OpenAPI document ---------------------------------------------------------

    fn openapi() -> serde_norway::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api/openapi.yaml");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes_served() {
        const METHODS: &[&str] = &[
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ];
        let doc = openapi();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_mapping().expect("paths") {
            let path = path.as_str().unwrap();
            for (key, _) in item.as_mapping().unwrap() {
                let key = key.as_str().unwrap();
                if METHODS.contains(&key) {
                    documented.insert((key.to_uppercase(), path.to_owned()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_openapi_reference_resolves() {
        fn refs(value: &serde_norway::Value, out: &mut Vec<String>) {
            match value {
                serde_norway::Value::Mapping(map) => {
                    for (key, value) in map {
                        if key.as_str() == Some("$ref") {
                            out.push(value.as_str().unwrap().to_owned());
                        } else {
                            refs(value, out);
                        }
                    }
                }
                serde_norway::Value::Sequence(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = openapi();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for reference in found {
            let pointer = reference
                .strip_prefix("#/")
                .unwrap_or_else(|| panic!("{reference}"));
            let mut node = &doc;
            for part in pointer.split('/') {
                node = node
                    .get(part)
                    .unwrap_or_else(|| panic!("{reference} does not resolve"));
            }
        }
    }

    #[tokio::test]
    async fn the_socket_appears_with_its_mode_already_set() {
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.0).unwrap();
        // SAFETY: inotify_init1 has no preconditions; the descriptor is closed below.
        let inotify = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(inotify >= 0);
        let watched = std::ffi::CString::new(dir.0.as_os_str().as_encoded_bytes()).unwrap();
        let mask = libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MOVED_TO;
        // SAFETY: a valid descriptor and C string.
        assert!(unsafe { libc::inotify_add_watch(inotify, watched.as_ptr(), mask) } >= 0);
        let socket = dir.0.join("api.sock");
        let listener = bind_unix(&socket).await.unwrap();
        let mut buffer = [0u8; 4096];
        // SAFETY: reads into a buffer of the given length.
        let read = unsafe { libc::read(inotify, buffer.as_mut_ptr().cast(), buffer.len()) };
        // SAFETY: the descriptor is ours.
        unsafe { libc::close(inotify) };
        assert!(read > 0, "no event");
        // What happened to the name "api.sock": it must appear by a rename of a socket
        // already restricted, never be created (or chmod-ed) under that name.
        let mut events = Vec::new();
        let mut offset = 0;
        while offset < read as usize {
            let field = |at: usize| {
                u32::from_ne_bytes(buffer[offset + at..offset + at + 4].try_into().unwrap())
            };
            let (event_mask, length) = (field(4), field(12) as usize);
            let name = &buffer[offset + 16..offset + 16 + length];
            let name = String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_owned();
            if name == "api.sock" {
                events.push(event_mask);
            }
            offset += 16 + length;
        }
        assert_eq!(events, [libc::IN_MOVED_TO], "{events:x?}");
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        drop(listener);
    }
}
