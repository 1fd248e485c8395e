//! The control API's connections: accepted only while fewer than
//! [`Limits::max_connections`] are open (the next ones wait in the listen backlog), and
//! closed when a client takes longer than [`Limits::header_read_timeout`] to send a
//! request's headers — an idle keep-alive connection included — so that slow or silent
//! clients cannot hold the API.

use std::{io, sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::{Semaphore, watch},
};
use tracing::{debug, warn};

/// Bounds on the API's clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (from the connection's
    /// start, or the end of the previous response).
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 32,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// A listening socket of the API.
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

impl Listener {
    async fn accept(&self) -> io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Unix(listener) => Box::new(listener.accept().await?.0),
            Listener::Tcp(listener) => Box::new(listener.accept().await?.0),
        })
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves; then
/// finishes the requests in progress (idle connections close at once) and returns.
pub async fn serve(
    listener: Listener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stopping, stop) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // A slot first: while none is free, connections wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(err) => {
                    // Out of descriptors, say: wait, rather than spin.
                    warn!(error = %err, "the control API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let stopped = async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            };
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopped => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                debug!(error = %err, "a control API connection ended with an error");
            }
        });
    }
    let _ = stopping.send(true);
    // Every slot back: every connection has ended.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        time::{Duration, Instant},
    };

    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::UnixStream,
        sync::oneshot,
        task::JoinHandle,
    };

    use super::*;

    const REQUEST: &str = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

    struct Server {
        dir: PathBuf,
        socket: PathBuf,
        stop: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<()>>,
    }

    impl Server {
        fn start(name: &str, limits: Limits) -> Server {
            let dir = std::env::temp_dir().join(format!("weir-conn-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let socket = dir.join("api.sock");
            let listener = Listener::Unix(UnixListener::bind(&socket).unwrap());
            let router = Router::new().route("/", get(|| async { "served" }));
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, router, limits, async {
                let _ = stopped.await;
            }));
            Server {
                dir,
                socket,
                stop: Some(stop),
                task: Some(task),
            }
        }

        async fn connect(&self) -> UnixStream {
            UnixStream::connect(&self.socket).await.unwrap()
        }

        async fn stop(mut self) {
            self.stop.take().unwrap().send(()).unwrap();
            let task = self.task.take().unwrap();
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the server stops")
                .unwrap();
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Reads until the server closes the connection (or `limit` passes: `None`).
    async fn read_to_close(stream: &mut UnixStream, limit: Duration) -> Option<String> {
        let mut response = Vec::new();
        match tokio::time::timeout(limit, stream.read_to_end(&mut response)).await {
            Ok(_) => Some(String::from_utf8_lossy(&response).into_owned()),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_client_that_sends_its_headers_slowly_is_cut_off() {
        let limits = Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(500),
        };
        let server = Server::start("slow", limits);
        let mut slow = server.connect().await;
        let started = Instant::now();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        // A header byte every 100 ms, for up to 5 s: slowloris.
        for _ in 0..50 {
            if slow.write_all(b"X").await.is_err() {
                break;
            }
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => break,
                Err(_) => {}
            }
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(2),
            "cut off after {elapsed:?}"
        );
        // An idle connection, too.
        let mut idle = server.connect().await;
        let started = Instant::now();
        assert!(
            read_to_close(&mut idle, Duration::from_secs(3))
                .await
                .is_some(),
            "an idle connection stays open"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        server.stop().await;
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let limits = Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(10),
        };
        let server = Server::start("limit", limits);
        let first = server.connect().await;
        let _second = server.connect().await;
        // Both are accepted and served (an idle connection holds its slot).
        let mut third = server.connect().await;
        third.write_all(REQUEST.as_bytes()).await.unwrap();
        assert_eq!(
            read_to_close(&mut third, Duration::from_millis(500)).await,
            None,
            "the third connection is served while two others hold the slots"
        );
        drop(first);
        let response = read_to_close(&mut third, Duration::from_secs(2))
            .await
            .expect("served once a slot is free");
        assert!(
            response.starts_with("HTTP/1.1 200") && response.ends_with("served"),
            "{response}"
        );
        server.stop().await;
    }
}
