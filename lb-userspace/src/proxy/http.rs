//! One request through the proxy: pick a backend, send the request there over a pooled
//! keep-alive connection, stream the answer back. Bodies are streamed both ways, never
//! buffered. When the proxy answers itself (503 no backend or connect failure, 504 no
//! response in time, 502 a broken response) it logs the backend and the reason.
//!
//! Every request ends with an access log line (target `weir::access`), after the last
//! byte of the response or the client's departure, in the spirit of HAProxy's:
//!
//! ```text
//! 198.18.0.100:40312 www web/198.18.0.11:80 1/3 200 8 -- "GET / HTTP/2.0"
//! ```
//!
//! client, frontend, VIP/backend, ms to the response head / ms to the end, status,
//! body bytes sent, termination state (`--` complete, `CD` the client left early, `SD`
//! the backend broke off the body, `SC` no backend eligible or none could be connected
//! to, `sH` response timeout, `SH` broken response), request line.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode, Uri,
    body::{Body, Frame, Incoming, SizeHint},
    header::{self, HeaderMap, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tracing::{info, warn};

use super::{
    forward::{self, ClientConnection},
    pool::Pool,
    server::Activity,
    stats::{FrontendStats, ProxyFailure},
};
use crate::config::Forward;

/// A body of either side: a peer's streamed body or one the proxy made.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Idle keep-alive connections kept per backend.
const MAX_IDLE_PER_BACKEND: usize = 256;
/// How long an idle backend connection is kept (below common backend keep-alive timeouts,
/// so that the proxy closes first and rarely sends on a connection being closed).
const BACKEND_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// The pooled HTTP/1.1 client towards the backends.
pub type BackendClient = Client<BackendConnector, ProxyBody>;

/// Connects to a backend (TCP_NODELAY, the connect timeout) and, for `forward =
/// "proxy-v2"`, sends the PROXY header of the client connection it serves first.
#[derive(Clone)]
pub struct BackendConnector {
    http: HttpConnector,
    proxy_header: Option<Arc<[u8]>>,
}

impl tower_service::Service<Uri> for BackendConnector {
    type Response = TokioIo<TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let header = self.proxy_header.clone();
        Box::pin(async move {
            let mut io = connecting.await?;
            if let Some(header) = header {
                io.inner_mut().write_all(&header).await?;
            }
            Ok(io)
        })
    }
}

/// A client towards the backends. With `proxy_header`, its connections carry that
/// client's PROXY header and must serve that client connection only.
pub fn backend_client(connect_timeout: Duration, proxy_header: Option<Vec<u8>>) -> BackendClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let connector = BackendConnector {
        http,
        proxy_header: proxy_header.map(Arc::from),
    };
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(BACKEND_IDLE_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_PER_BACKEND)
        .build(connector)
}

/// What requests of one frontend need.
#[derive(Debug)]
pub struct Upstream {
    pub frontend: String,
    pub pool: Arc<Pool>,
    pub forward: Forward,
    pub hsts: Option<HeaderValue>,
    pub response_timeout: Duration,
    pub stats: Arc<FrontendStats>,
}

/// One client connection's view: its frontend, its ends, its backend client.
pub struct ConnectionContext {
    pub upstream: Arc<Upstream>,
    pub client: ClientConnection,
    pub backends: BackendClient,
    pub activity: Arc<Activity>,
}

/// Serves one request of a client connection.
pub async fn handle(
    connection: Arc<ConnectionContext>,
    request: Request<Incoming>,
) -> Result<Response<LoggedBody>, Infallible> {
    let started = Instant::now();
    let upstream = &connection.upstream;
    connection.activity.request();
    upstream.stats.request();
    let (mut head, body) = request.into_parts();
    // Cheap to keep (reference counts, no formatting): a request pays for its log line
    // only when the line is written.
    let mut log = AccessLog {
        client: connection.client.peer,
        upstream: upstream.clone(),
        backend: None,
        method: head.method.clone(),
        path: head.uri.path_and_query().cloned(),
        version: head.version,
        started,
        head_after: Duration::ZERO,
        status: 0,
        termination: "--",
    };
    let Some(mut backend) = upstream.pool.pick(None) else {
        return Ok(proxy_answer(
            upstream,
            log,
            ProxyFailure::NoBackend,
            "no backend is ready and UP",
        ));
    };
    forward::rewrite_request(&mut head, backend, upstream.forward, connection.client);
    // A request without a body can go to a second backend when the first did not answer
    // at all (below); one with a body cannot be replayed.
    let retry_head = body
        .is_end_stream()
        .then(|| (head.method.clone(), head.uri.clone(), head.headers.clone()));
    let mut request = Request::from_parts(head, body.boxed());
    let mut retried = false;
    loop {
        log.backend = Some(backend);
        let sent = tokio::time::timeout(
            upstream.response_timeout,
            connection.backends.request(request),
        )
        .await;
        let error = match sent {
            Ok(Ok(response)) => return Ok(relay(upstream, log, response)),
            Err(_) => {
                let reason = format!("no response within {:?}", upstream.response_timeout);
                return Ok(proxy_answer(upstream, log, ProxyFailure::Timeout, &reason));
            }
            Ok(Err(error)) => error,
        };
        let reason = error_chain(&error);
        // Refused, or sent on a kept-alive connection the backend had closed (killed,
        // restarted) without a byte back: it never reached a backend that answered, so an
        // idempotent request without a body may go to another (HAProxy's `retry-on
        // conn-failure empty-response`).
        let unanswered = error.is_connect()
            || (retry_head
                .as_ref()
                .is_some_and(|(method, _, _)| method.is_idempotent())
                && closed_without_answer(&error));
        if !unanswered {
            return Ok(proxy_answer(upstream, log, ProxyFailure::Backend, &reason));
        }
        let failure = if error.is_connect() {
            ProxyFailure::Connect
        } else {
            ProxyFailure::Backend
        };
        let next = upstream.pool.pick(Some(backend));
        match (&retry_head, next) {
            (Some((method, uri, headers)), Some(next)) if !retried => {
                warn!(frontend = %upstream.frontend, %backend, "no answer ({reason}); trying {next}");
                upstream.stats.retry();
                retried = true;
                backend = next;
                request = rebuild(method, uri, headers, next);
            }
            _ => return Ok(proxy_answer(upstream, log, failure, &reason)),
        }
    }
}

/// Whether the backend's connection closed before any of its answer arrived.
fn closed_without_answer(error: &hyper_util::client::legacy::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|cause| cause.downcast_ref::<hyper::Error>())
        .is_some_and(|cause| cause.is_incomplete_message() || cause.is_canceled())
}

/// The request again, with an empty body, for `backend`.
fn rebuild(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    backend: SocketAddr,
) -> Request<ProxyBody> {
    let mut request = Request::new(Empty::new().map_err(|never| match never {}).boxed());
    *request.method_mut() = method.clone();
    *request.uri_mut() = forward::backend_uri(backend, uri);
    *request.headers_mut() = headers.clone();
    request
}

/// A backend's response on its way to the client.
fn relay(
    upstream: &Upstream,
    mut log: AccessLog,
    response: Response<Incoming>,
) -> Response<LoggedBody> {
    let (mut head, body) = response.into_parts();
    forward::rewrite_response(&mut head, upstream.hsts.as_ref());
    log.head_after = log.started.elapsed();
    log.status = head.status.as_u16();
    upstream.stats.response(log.status, log.head_after);
    Response::from_parts(head, LoggedBody::new(body.boxed(), log))
}

/// The proxy's own answer for `failure`, logged with the backend and the reason.
fn proxy_answer(
    upstream: &Upstream,
    mut log: AccessLog,
    failure: ProxyFailure,
    reason: &str,
) -> Response<LoggedBody> {
    let (status, termination) = match failure {
        ProxyFailure::NoBackend | ProxyFailure::Connect => (StatusCode::SERVICE_UNAVAILABLE, "SC"),
        ProxyFailure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "sH"),
        ProxyFailure::Backend => (StatusCode::BAD_GATEWAY, "SH"),
    };
    let backend = log
        .backend
        .map_or_else(|| "-".to_owned(), |b| b.to_string());
    warn!(
        frontend = %upstream.frontend,
        vip = %upstream.pool.vip(),
        %backend,
        "{} {}: {reason}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    );
    upstream.stats.failure(failure);
    log.head_after = log.started.elapsed();
    log.status = status.as_u16();
    log.termination = termination;
    upstream.stats.response(log.status, log.head_after);
    let mut response = plain_response(status, &format!("{status}\n"));
    if let Some(hsts) = &upstream.hsts {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let (head, body) = response.into_parts();
    Response::from_parts(head, LoggedBody::new(body, log))
}

/// A short text/plain response.
pub fn plain_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::copy_from_slice(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An error and its causes, on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The answer of a plain-HTTP `redirect_http` listener: 301 to the same host and path on
/// https (at `https_port` when it is not 443); 400 without a host.
pub fn redirect(request: &Request<Incoming>, https_port: u16) -> Response<ProxyBody> {
    match redirect_location(request.headers(), request.uri(), https_port) {
        Some(location) => {
            let mut response = plain_response(StatusCode::MOVED_PERMANENTLY, "");
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        None => plain_response(StatusCode::BAD_REQUEST, "400 Bad Request: no Host\n"),
    }
}

fn redirect_location(headers: &HeaderMap, uri: &Uri, https_port: u16) -> Option<HeaderValue> {
    let authority = match headers.get(header::HOST) {
        Some(host) => host
            .to_str()
            .ok()?
            .parse::<hyper::http::uri::Authority>()
            .ok()?,
        None => uri.authority()?.clone(),
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    HeaderValue::from_str(&format!("https://{}{port}{path}", authority.host())).ok()
}

/// What the access log line says of a request.
#[derive(Debug)]
struct AccessLog {
    client: SocketAddr,
    upstream: Arc<Upstream>,
    backend: Option<SocketAddr>,
    method: Method,
    path: Option<hyper::http::uri::PathAndQuery>,
    version: hyper::Version,
    started: Instant,
    head_after: Duration,
    status: u16,
    termination: &'static str,
}

/// A response body that counts what it sends and writes the access log line when it is
/// done (or dropped: the client left).
pub struct LoggedBody {
    inner: ProxyBody,
    bytes: u64,
    finished: bool,
    log: AccessLog,
}

impl LoggedBody {
    fn new(inner: ProxyBody, log: AccessLog) -> LoggedBody {
        LoggedBody {
            inner,
            bytes: 0,
            finished: false,
            log,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                this.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(Some(Err(_))) => this.log.termination = "SD",
            Poll::Ready(None) => this.finished = true,
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let log = &self.log;
        let termination =
            if log.termination == "--" && !self.finished && !self.inner.is_end_stream() {
                "CD"
            } else {
                log.termination
            };
        let backend = log
            .backend
            .map_or_else(|| "-".to_owned(), |b| b.to_string());
        info!(
            target: "weir::access",
            "{} {} {}/{} {}/{} {} {} {} \"{} {} {:?}\"",
            log.client,
            log.upstream.frontend,
            log.upstream.pool.vip(),
            backend,
            log.head_after.as_millis(),
            log.started.elapsed().as_millis(),
            log.status,
            self.bytes,
            termination,
            log.method,
            log.path.as_ref().map_or("/", |p| p.as_str()),
            log.version
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_host_and_path() {
        let uri: Uri = "/a/b?c=d".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("www.example.com:80"));
        assert_eq!(
            redirect_location(&headers, &uri, 443).unwrap(),
            "https://www.example.com/a/b?c=d"
        );
        assert_eq!(
            redirect_location(&headers, &uri, 8443).unwrap(),
            "https://www.example.com:8443/a/b?c=d"
        );
        headers.insert(header::HOST, HeaderValue::from_static("[2001:db8::10]"));
        assert_eq!(
            redirect_location(&headers, &"/".parse().unwrap(), 443).unwrap(),
            "https://[2001:db8::10]/"
        );
        assert!(redirect_location(&HeaderMap::new(), &uri, 443).is_none());
    }
}
