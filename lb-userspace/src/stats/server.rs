//! The `[stats]` listener: the page (`GET uri`), its CSV export (`GET uri;csv`), its
//! admin forms (`POST uri`, with `admin = true`) and `/metrics`, over HTTP/1.1 with
//! basic authentication against the users file.
//!
//! Every request reads one [`Overview`] (one call under the agent's lock, no walk of the
//! connection table); an admin form goes through [`Control::change_backend`], the path
//! `PATCH /v1/vips/{name}/backends/{address}` takes, validation and persistence
//! included. Forms carry a CSRF token bound to the user.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use axum::{
    Form, Router,
    extract::{Query, State, rejection::FormRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::{
    api::{
        connections::{self, Limits, Listener},
        model::{BackendChange, ControlError, unix_ms},
        server::{ApiError, SharedControl, bind_tcp},
    },
    config::{AdminState, StatsConfig},
    proxy::cli::status_beside,
    stats::{
        auth::{Csrf, Users, UsersError},
        csv,
        metrics::{self, Format},
        overview::{NewFlowRates, Overview},
        page::{self, PageContext, escape},
        report::StatsReport,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("[stats]: {0}")]
    Users(#[from] UsersError),
    #[error("[stats]: {0}")]
    Bind(#[from] ApiError),
}

/// A bound listener and what it serves with.
pub struct StatsListener {
    listener: TcpListener,
    settings: StatsConfig,
    users: Option<Users>,
    /// The agent's API socket: a `weir proxy` beside it shows its frontends too.
    api_socket: PathBuf,
}

impl StatsListener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Reads the users file and binds `settings.listen`; `api_socket` is the agent's.
pub async fn bind(settings: &StatsConfig, api_socket: &Path) -> Result<StatsListener, StatsError> {
    let users = settings.auth.as_deref().map(Users::load).transpose()?;
    Ok(StatsListener {
        listener: bind_tcp(settings.listen).await?,
        settings: settings.clone(),
        users,
        api_socket: api_socket.to_owned(),
    })
}

/// Serves until `shutdown` resolves.
pub async fn serve_on(
    listener: StatsListener,
    control: SharedControl,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let router = router(
        listener.settings,
        listener.users,
        control,
        listener.api_socket,
    );
    // The same header-read timeout and connection limit as the control API.
    connections::serve(
        Listener::Tcp(listener.listener),
        router,
        Limits::default(),
        shutdown,
    )
    .await;
    Ok(())
}

struct Stats {
    control: SharedControl,
    api_socket: PathBuf,
    settings: StatsConfig,
    users: Option<Users>,
    csrf: Csrf,
    rates: Mutex<RateMemory>,
}

/// The report rates were last computed from, and those rates.
#[derive(Default)]
struct RateMemory {
    earlier: Option<(Instant, StatsReport)>,
    rates: NewFlowRates,
}

/// Rates over at least this long (a page and a scrape at once share one).
const RATE_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

pub fn router(
    settings: StatsConfig,
    users: Option<Users>,
    control: SharedControl,
    api_socket: PathBuf,
) -> Router {
    let uri = settings.uri.clone();
    let state = Arc::new(Stats {
        control,
        settings,
        users,
        api_socket,
        csrf: Csrf::default(),
        rates: Mutex::new(RateMemory::default()),
    });
    Router::new()
        .route(&uri, get(show_page).post(admin))
        .route(&format!("{uri};csv"), get(show_csv))
        .route("/metrics", get(show_metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

type Shared = State<Arc<Stats>>;

/// The authenticated user ("" without a users file: a loopback listener), or the 401
/// that asks for one.
async fn user(stats: &Arc<Stats>, headers: &HeaderMap) -> Result<String, Response> {
    if stats.users.is_none() {
        return Ok(String::new());
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let shared = stats.clone();
    // A hash takes ~0.1 s: off the runtime's threads.
    let user = tokio::task::spawn_blocking(move || {
        shared
            .users
            .as_ref()
            .and_then(|users| users.authenticate(authorization.as_deref()))
    })
    .await
    .ok()
    .flatten();
    user.ok_or_else(|| {
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"weir statistics\", charset=\"UTF-8\""),
            )],
            "authentication required\n",
        )
            .into_response()
    })
}

impl Stats {
    /// The overview and the new-flow rates up to it.
    async fn overview(&self) -> Result<(Overview, NewFlowRates), Response> {
        let mut overview = self.control.lock().await.overview().map_err(failure)?;
        // The proxy is asked outside the agent's lock, on the blocking pool (the CLI's
        // client); a proxy that does not answer within a second is left out.
        let api_socket = self.api_socket.clone();
        overview.tls = tokio::task::spawn_blocking(move || status_beside(&api_socket))
            .await
            .ok()
            .flatten();
        let mut memory = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match &memory.earlier {
            Some((at, _)) if now.duration_since(*at) < RATE_PERIOD => {}
            Some((at, earlier)) => {
                let seconds = now.duration_since(*at).as_secs_f64();
                memory.rates = NewFlowRates::between(earlier, &overview.stats, seconds);
                memory.earlier = Some((now, overview.stats.clone()));
            }
            None => memory.earlier = Some((now, overview.stats.clone())),
        }
        Ok((overview, memory.rates.clone()))
    }
}

#[derive(Deserialize)]
struct PageQuery {
    /// The outcome of an admin action, as HAProxy's `st=`.
    st: Option<String>,
}

async fn show_page(State(stats): Shared, headers: HeaderMap, query: Query<PageQuery>) -> Response {
    let user = match user(&stats, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let (overview, rates) = match stats.overview().await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let notice = match query.st.as_deref() {
        Some("DONE") => Some("Action processed successfully."),
        _ => None,
    };
    let context = PageContext {
        uri: &stats.settings.uri,
        refresh: stats.settings.refresh,
        admin_token: stats.settings.admin.then(|| stats.csrf.token(&user)),
        now_ms: unix_ms(SystemTime::now()),
        rates: &rates,
        notice,
    };
    Html(page::render(&overview, &context)).into_response()
}

async fn show_csv(State(stats): Shared, headers: HeaderMap) -> Response {
    if let Err(response) = user(&stats, &headers).await {
        return response;
    }
    match stats.overview().await {
        Ok((overview, rates)) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            csv::render(&overview, &rates, unix_ms(SystemTime::now())),
        )
            .into_response(),
        Err(response) => response,
    }
}

async fn show_metrics(State(stats): Shared, headers: HeaderMap) -> Response {
    if stats.settings.metrics_auth
        && let Err(response) = user(&stats, &headers).await
    {
        return response;
    }
    let format = Format::accepted(
        headers
            .get(header::ACCEPT)
            .and_then(|accept| accept.to_str().ok()),
    );
    match stats.overview().await {
        Ok((overview, _)) => (
            [(header::CONTENT_TYPE, format.content_type())],
            metrics::render(&overview, SystemTime::now(), format),
        )
            .into_response(),
        Err(response) => response,
    }
}

/// An admin form: set `backend` of `vip` to `action` (ready, drain or maint).
#[derive(Deserialize)]
struct AdminForm {
    #[serde(default)]
    token: String,
    vip: String,
    backend: String,
    action: AdminState,
}

async fn admin(
    State(stats): Shared,
    headers: HeaderMap,
    form: Result<Form<AdminForm>, FormRejection>,
) -> Response {
    if !stats.settings.admin {
        return message(
            StatusCode::METHOD_NOT_ALLOWED,
            "the stats page is read-only (stats.admin is not set)",
        );
    }
    let user = match user(&stats, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let Ok(Form(form)) = form else {
        return message(
            StatusCode::BAD_REQUEST,
            "expected a form with token, vip, backend and action (ready, drain or maint)",
        );
    };
    if !stats.csrf.check(&user, &form.token) {
        return message(
            StatusCode::FORBIDDEN,
            "missing or wrong form token: reload the page and try again",
        );
    }
    let Ok(address) = form.backend.parse::<IpAddr>() else {
        return message(
            StatusCode::BAD_REQUEST,
            &format!("{:?} is not a backend address", form.backend),
        );
    };
    let change = BackendChange {
        weight: None,
        state: Some(form.action),
    };
    let changed = stats
        .control
        .lock()
        .await
        .change_backend(&form.vip, address, change);
    match changed {
        Ok(_) => {
            tracing::info!(user, vip = %form.vip, backend = %address, state = ?form.action, "backend state set from the stats page");
            Redirect::to(&format!("{}?st=DONE", stats.settings.uri)).into_response()
        }
        Err(err) => failure(err),
    }
}

/// A control error as a short page, with the API's status codes.
fn failure(error: ControlError) -> Response {
    let status = match &error {
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    message(status, &error.to_string())
}

fn message(status: StatusCode, text: &str) -> Response {
    (
        status,
        Html(format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>weir statistics</title></head><body><p>{}</p></body></html>\n",
            escape(text)
        )),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufReader, Write},
        net::TcpStream,
        time::Duration,
    };

    use tokio::sync::Mutex as AsyncMutex;

    use super::*;
    use crate::{
        api::model::fake::FakeControl,
        stats::{
            auth::tests::{basic, users},
            overview::tests::sample,
        },
    };

    struct Served {
        addr: SocketAddr,
        control: Arc<AsyncMutex<FakeControl>>,
    }

    async fn serve(admin: bool, metrics_auth: bool) -> Served {
        let control = Arc::new(AsyncMutex::new(FakeControl::with_vips(sample().vips)));
        let settings = StatsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            uri: "/stats".into(),
            auth: Some("/etc/weir/stats-users".into()),
            admin,
            metrics_auth,
            refresh: Duration::from_secs(5),
        };
        let listener = TcpListener::bind(settings.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared: SharedControl = control.clone();
        tokio::spawn(async move {
            axum::serve(
                listener,
                router(
                    settings,
                    Some(users()),
                    shared,
                    PathBuf::from("/nonexistent/api.sock"),
                ),
            )
            .await
        });
        Served { addr, control }
    }

    /// One request; `auth` is the `Authorization` header.
    async fn call(
        served: &Served,
        method: &'static str,
        path: &str,
        auth: Option<String>,
        form: Option<String>,
    ) -> http1::Response {
        let (addr, path) = (served.addr, path.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut headers = vec![("Connection", "close")];
            if let Some(auth) = &auth {
                headers.push(("Authorization", auth));
            }
            if form.is_some() {
                headers.push(("Content-Type", "application/x-www-form-urlencoded"));
            }
            let mut stream = TcpStream::connect(addr).unwrap();
            let request = http1::encode_request(
                method,
                &path,
                "localhost",
                &headers,
                form.as_deref().map(str::as_bytes),
            );
            stream.write_all(&request).unwrap();
            http1::read_response(&mut BufReader::new(stream), http1::Limits::default()).unwrap()
        })
        .await
        .unwrap()
    }

    fn text(response: &http1::Response) -> String {
        String::from_utf8_lossy(&response.body).into_owned()
    }

    fn right() -> Option<String> {
        Some(basic("admin", "s3cret"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_page_and_its_csv_need_a_user() {
        let served = serve(false, false).await;
        for path in ["/stats", "/stats;csv"] {
            let missing = call(&served, "GET", path, None, None).await;
            assert_eq!(missing.status, 401, "{path}");
            assert_eq!(
                missing.header("www-authenticate"),
                Some("Basic realm=\"weir statistics\", charset=\"UTF-8\"")
            );
            let wrong = call(&served, "GET", path, Some(basic("admin", "guess")), None).await;
            assert_eq!(wrong.status, 401, "{path}");
        }
        let page = call(&served, "GET", "/stats", right(), None).await;
        assert_eq!(page.status, 200);
        assert!(
            text(&page).contains(
                "<tr class=\"active_down\" data-vip=\"web\" data-backend=\"198.18.0.12\""
            )
        );
        assert!(!text(&page).contains("<form"), "read-only");
        let csv = call(&served, "GET", "/stats;csv", right(), None).await;
        assert_eq!(csv.status, 200);
        assert!(text(&csv).starts_with("# pxname,svname,"));
        // Metrics are open unless metrics_auth.
        let metrics = call(&served, "GET", "/metrics", None, None).await;
        assert_eq!(metrics.status, 200);
        assert_eq!(
            metrics.header("content-type"),
            Some(Format::Text.content_type())
        );
        assert!(text(&metrics).contains("weir_backend_status{"));
        assert_eq!(
            call(&served, "GET", "/other", right(), None).await.status,
            404
        );
        // Read-only: no admin action.
        let form = "token=x&vip=web&backend=198.18.0.11&action=drain".to_owned();
        let post = call(&served, "POST", "/stats", right(), Some(form)).await;
        assert_eq!(post.status, 405);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_auth_asks_for_a_user() {
        let served = serve(false, true).await;
        assert_eq!(
            call(&served, "GET", "/metrics", None, None).await.status,
            401
        );
        assert_eq!(
            call(&served, "GET", "/metrics", right(), None).await.status,
            200
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_forms_need_the_csrf_token() {
        let served = serve(true, false).await;
        let page = text(&call(&served, "GET", "/stats", right(), None).await);
        let start = page.find("name=\"token\" value=\"").expect("a form") + 20;
        let token = &page[start..start + 64];
        let form = |token: &str| format!("token={token}&vip=web&backend=198.18.0.11&action=drain");
        let state = |control: &FakeControl| control.vips[0].backends[0].state;

        // Not authenticated: 401, whatever the token.
        let post = call(&served, "POST", "/stats", None, Some(form(token))).await;
        assert_eq!(post.status, 401);
        // Missing and wrong tokens: 403, nothing changed.
        let missing = "vip=web&backend=198.18.0.11&action=drain".to_owned();
        assert_eq!(
            call(&served, "POST", "/stats", right(), Some(missing))
                .await
                .status,
            403
        );
        let wrong = form(&"0".repeat(64));
        assert_eq!(
            call(&served, "POST", "/stats", right(), Some(wrong))
                .await
                .status,
            403
        );
        assert_eq!(state(&*served.control.lock().await), AdminState::Ready);

        // The right one: set through the control path, then back to the page.
        let done = call(&served, "POST", "/stats", right(), Some(form(token))).await;
        assert_eq!(done.status, 303, "{}", text(&done));
        assert_eq!(done.header("location"), Some("/stats?st=DONE"));
        assert_eq!(state(&*served.control.lock().await), AdminState::Drain);
        let page = text(&call(&served, "GET", "/stats?st=DONE", right(), None).await);
        assert!(page.contains("Action processed successfully."));

        // Validation errors come back with the API's status codes.
        let unknown = format!("token={token}&vip=web&backend=198.18.0.99&action=maint");
        let refused = call(&served, "POST", "/stats", right(), Some(unknown)).await;
        assert_eq!(refused.status, 404, "{}", text(&refused));
        let bad = format!("token={token}&vip=web&backend=198.18.0.11&action=off");
        assert_eq!(
            call(&served, "POST", "/stats", right(), Some(bad))
                .await
                .status,
            400
        );
    }
}
