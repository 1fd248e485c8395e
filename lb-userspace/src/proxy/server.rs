//! Listening and serving client connections: `SO_REUSEPORT` listeners, the accept loop,
//! and one connection's life (TLS handshake, HTTP/1.1 or HTTP/2, idle timeout, graceful
//! stop).
//!
//! Graceful restart: a new `weir proxy` binds the same addresses beside the old one
//! (`SO_REUSEPORT`); the old one, told to stop, closes its listeners and lets its open
//! connections finish: HTTP/1.1 connections close after the request in progress (a
//! connection accepted but not yet read still gets its first request served), HTTP/2 ones
//! get a GOAWAY. Connections queued on the old listeners but not yet accepted move to
//! the new process only with `net.ipv4.tcp_migrate_req = 1` (checked at start).

use std::{
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::server::graceful::GracefulConnection;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};
use tracing::{debug, warn};

/// Pending connections per listener.
const BACKLOG: i32 = 4096;

/// A listening TCP socket that other processes may bind too (`SO_REUSEPORT`): the next
/// `weir proxy` binds beside this one.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Whether the kernel moves the connections queued on a closed listener to another of
/// its `SO_REUSEPORT` group (else they are reset when the old process stops).
pub fn migrates_queued_connections() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

/// Accepts connections until `stop` turns true, at most `slots` at a time; each goes to
/// `serve` with the slot it holds. The listener closes on return.
pub async fn accept_loop<F>(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit),
{
    let stopping = async move {
        // An error means the sender is gone: stop as well.
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let mut stopping = pin!(stopping);
    loop {
        let permit = tokio::select! {
            _ = &mut stopping => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = &mut stopping => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                serve(stream, peer, permit);
            }
            Err(error) => {
                // Out of descriptors or similar: back off rather than spin.
                warn!("accept on {:?}: {error}", listener.local_addr().ok());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Milliseconds since the first call: a cheap clock for activity stamps (tokio's, which
/// tests can pause).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When a connection last moved a byte, either way, and whether it brought a request.
#[derive(Debug, Default)]
pub struct Activity {
    last_ms: AtomicU64,
    requested: AtomicBool,
    first_request: Notify,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            last_ms: AtomicU64::new(now_ms()),
            ..Activity::default()
        })
    }

    fn touch(&self) {
        self.last_ms.store(now_ms(), Relaxed);
    }

    /// A request arrived on the connection.
    pub fn request(&self) {
        if !self.requested.swap(true, Relaxed) {
            self.first_request.notify_one();
        }
    }

    /// Completes once the connection brought a request.
    async fn requested(&self) {
        if !self.requested.load(Relaxed) {
            self.first_request.notified().await;
        }
    }

    /// Completes once no byte moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        let idle_ms = idle.as_millis() as u64;
        loop {
            let quiet = now_ms().saturating_sub(self.last_ms.load(Relaxed));
            if quiet >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
        }
    }
}

/// A stream that stamps its [`Activity`] on every byte read or written.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The client or the protocol closed it.
    Closed,
    /// Closed for its idle timeout.
    Idle,
    /// Closed for bringing no whole request head within the first-request time (a
    /// slowloris; for HTTP/2, whose server in hyper has no header-read timeout).
    NoRequest,
    /// Stopping: the drain time ran out before it finished.
    Drained,
}

/// Drives an HTTP connection to its end: closed by the peer, idle for `idle`, without a
/// whole request head within `first_request` of its start, or, once `stop` turns true,
/// shut down gracefully within `drain`. A connection that has not brought its first
/// request yet gets up to `first_request` for it before the shutdown starts: its client
/// connected before the stop and is owed an answer (HTTP/2 would refuse the stream with
/// GOAWAY, which clients report as an error).
pub async fn drive<C>(
    connection: C,
    activity: &Activity,
    idle: Duration,
    first_request: Duration,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> Ending
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut connection = pin!(connection);
    let mut idle_timer = pin!(activity.idle_for(idle));
    let no_first_request = async {
        if tokio::time::timeout(first_request, activity.requested())
            .await
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = connection.as_mut() => return closed(result),
        _ = &mut idle_timer => return Ending::Idle,
        _ = no_first_request => return Ending::NoRequest,
        _ = stop.wait_for(|stop| *stop) => {}
    }
    let drain_end = tokio::time::sleep(drain);
    let mut drain_end = pin!(drain_end);
    tokio::select! {
        result = connection.as_mut() => return closed(result),
        _ = &mut drain_end => return Ending::Drained,
        _ = activity.requested() => {}
        _ = tokio::time::sleep(first_request) => {}
    }
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        result = connection => closed(result),
        _ = idle_timer => Ending::Idle,
        _ = drain_end => Ending::Drained,
    }
}

fn closed<E: std::fmt::Display>(result: Result<(), E>) -> Ending {
    if let Err(error) = result {
        // Clients that go away, bad requests, header timeouts: the client's business.
        debug!("connection closed: {error}");
    }
    Ending::Closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_timer_restarts_on_activity() {
        let activity = Activity::new();
        let start = tokio::time::Instant::now();
        let waiting = activity.idle_for(Duration::from_secs(10));
        let touching = async {
            tokio::time::sleep(Duration::from_secs(6)).await;
            activity.touch();
        };
        let ((), ()) = tokio::join!(waiting, touching);
        // Ten seconds after the touch, not after the start.
        assert_eq!(start.elapsed().as_secs(), 16);
    }

    #[tokio::test]
    async fn two_listeners_share_an_address() {
        let first = bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let address = first.local_addr().unwrap();
        let second = bind(address).expect("a second SO_REUSEPORT listener");
        assert_eq!(second.local_addr().unwrap(), address);
    }

    /// An HTTP/2 server connection whose client sends nothing.
    fn silent_http2_connection() -> impl GracefulConnection<Error = hyper::Error> {
        let (_client, server) = tokio::io::duplex(64 * 1024);
        // The client's end stays open (leaked for the test) so the connection never ends.
        std::mem::forget(_client);
        let service = hyper::service::service_fn(|_request| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<
                bytes::Bytes,
            >::new()))
        });
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(server), service)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_head_is_closed_after_the_first_request_time() {
        let activity = Activity::new();
        let (_stop, stopped) = watch::channel(false);
        let start = tokio::time::Instant::now();
        // Bytes keep coming (the idle timer never fires), a request never does.
        let touching = async {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                activity.touch();
            }
        };
        let ending = tokio::select! {
            ending = drive(silent_http2_connection(), &activity, Duration::from_secs(60), Duration::from_secs(10), stopped, Duration::from_secs(30)) => ending,
            () = touching => unreachable!(),
        };
        assert_eq!(ending, Ending::NoRequest);
        assert_eq!(start.elapsed().as_secs(), 10);

        // With a request in time, the connection lives on to its idle timeout.
        let activity = Activity::new();
        activity.request();
        let (_stop, stopped) = watch::channel(false);
        let start = tokio::time::Instant::now();
        let ending = drive(
            silent_http2_connection(),
            &activity,
            Duration::from_secs(60),
            Duration::from_secs(10),
            stopped,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(ending, Ending::Idle);
        assert_eq!(start.elapsed().as_secs(), 60);
    }
}
