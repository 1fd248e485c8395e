//! Continuous client load for failure-injection tests (agent killed and restarted,
//! program replaced, configuration reloaded, backend drained): HTTP traffic from a
//! namespace that runs until stopped and then reports every failed request and every
//! broken or moved connection, so a test can assert that nothing was lost.
//!
//! Two kinds of traffic run side by side, each on its own threads:
//!
//! * **streams**: long-lived HTTP/1.1 keep-alive connections, opened when the load
//!   starts, each sending `GET /` every [`LoadSpec::stream_interval`]. The answer names
//!   the backend, so a stream that lands on another backend is seen. A stream that fails
//!   (reset, end of stream, bad answer, or no answer within [`REQUEST_TIMEOUT`], i.e.
//!   black-holed) is *broken* and stops: it is never reconnected.
//! * **short workers**: each does back-to-back one-shot requests, a new TCP connection
//!   (`Connection: close`) per request, with a short pause between them.
//!
//! Every stream and every short worker makes at least one request, so a clean report is
//! never an empty one. Worker threads are created inside the namespace (a thread starts
//! in its creator's network namespace) and stay there; they only talk to the caller's
//! target, which must be a test bed address.
//!
//! ```no_run
//! # use std::{net::SocketAddr, time::Duration};
//! # use weir_testbed::{DsrTopology, load::{Load, LoadSpec}};
//! # let topology = DsrTopology::with_servers(2).unwrap();
//! let load = Load::start(
//!     &topology.client().ns,
//!     LoadSpec {
//!         target: "198.19.0.10:80".parse().unwrap(),
//!         streams: 6,
//!         stream_interval: Duration::from_millis(20),
//!         short_workers: 2,
//!     },
//! )
//! .unwrap();
//! // … wait until load.progress().0 grows, inject the failure, wait again …
//! load.stop().assert_clean();
//! ```

use std::{
    collections::BTreeMap,
    fmt, fs,
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::MetadataExt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use http1::{Limits, ReadError, Response};

use crate::{netns::Netns, topology::is_test_address};

/// How long a request may take to connect, and each write or read: past it, the
/// connection counts as black-holed (broken stream, failed short request).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause between two requests of a short worker (keeps a 2-core machine responsive).
const SHORT_PAUSE: Duration = Duration::from_millis(5);
/// How many failure descriptions a report keeps (the earliest ones).
const MAX_FAILURES: usize = 20;
/// Longest stream interval: the test server closes connections idle for 60 s.
const MAX_STREAM_INTERVAL: Duration = Duration::from_secs(30);
/// Limits on a response, so a broken peer cannot make the client misbehave.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: u64 = 64 * 1024;

/// What load to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSpec {
    /// Where the requests go (`GET /`); a test bed address (198.18.0.0/15,
    /// 2001:db8::/32).
    pub target: SocketAddr,
    /// Long-lived keep-alive connections.
    pub streams: usize,
    /// Pause between two requests on a stream (at most 30 s).
    pub stream_interval: Duration,
    /// Threads each doing back-to-back one-shot requests (a new connection each).
    pub short_workers: usize,
}

/// A running load; [`Load::stop`] ends it and returns the report. Dropping it also stops
/// and joins every thread (printing the report if the test is panicking).
pub struct Load {
    spec: LoadSpec,
    started: Instant,
    shared: Arc<Shared>,
    workers: Vec<(Kind, JoinHandle<WorkerStats>)>,
}

/// State the test reads while the load runs.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Stream,
    Short,
}

impl Load {
    /// Opens the streams from inside `ns` (failing if one cannot connect) and starts
    /// every worker thread. The first requests go out at once; wait for
    /// [`Load::progress`] to grow before injecting a failure.
    pub fn start(ns: &Netns, spec: LoadSpec) -> Result<Load> {
        ensure!(
            is_test_address(spec.target.ip()) && !spec.target.ip().is_unspecified(),
            "load target {} is not a test bed address (198.18.0.0/15, 2001:db8::/32)",
            spec.target
        );
        ensure!(
            spec.streams + spec.short_workers > 0,
            "a load needs at least one stream or short worker"
        );
        ensure!(
            spec.stream_interval <= MAX_STREAM_INTERVAL,
            "stream_interval {:?} is longer than {MAX_STREAM_INTERVAL:?}",
            spec.stream_interval
        );
        let netns_inode = fs::metadata(ns.path())
            .with_context(|| format!("cannot stat {}", ns.path().display()))?
            .ino();
        let mut load = Load {
            spec,
            started: Instant::now(),
            shared: Arc::default(),
            workers: Vec::new(),
        };
        // Everything happens on this thread switched into `ns`: the streams' sockets are
        // opened there, and the workers, spawned from it, start there. On an error,
        // dropping `load` stops whatever already runs.
        ns.enter(|| -> Result<()> {
            let mut streams = Vec::with_capacity(spec.streams);
            for i in 0..spec.streams {
                let stream = TcpStream::connect_timeout(&spec.target, REQUEST_TIMEOUT)
                    .map_err(|e| describe_io(&e))
                    .with_context(|| {
                        format!(
                            "load stream {i}: cannot connect to {} from {}",
                            spec.target,
                            ns.name()
                        )
                    })?;
                streams.push(stream);
            }
            load.started = Instant::now();
            for (i, stream) in streams.into_iter().enumerate() {
                let worker = load.worker(format!("stream {i}"));
                let interval = spec.stream_interval;
                load.spawn(Kind::Stream, format!("weir-load-s{i}"), move || {
                    run_stream(worker, stream, interval)
                })?;
            }
            for i in 0..spec.short_workers {
                let worker = load.worker(format!("short worker {i}"));
                load.spawn(Kind::Short, format!("weir-load-w{i}"), move || {
                    run_short(worker, netns_inode)
                })?;
            }
            Ok(())
        })??;
        Ok(load)
    }

    /// Requests answered correctly and requests failed so far, over both kinds of
    /// traffic (a cheap snapshot, e.g. to wait until traffic flows).
    pub fn progress(&self) -> (u64, u64) {
        (
            self.shared.ok.load(Ordering::Relaxed),
            self.shared.failed.load(Ordering::Relaxed),
        )
    }

    /// Waits until `more` further requests have been answered; fails (with the progress)
    /// if that takes longer than `timeout`.
    pub fn wait_for_answers(&self, more: u64, timeout: Duration) -> Result<()> {
        let (start, _) = self.progress();
        let deadline = Instant::now() + timeout;
        while self.progress().0 < start + more {
            if Instant::now() > deadline {
                bail!(
                    "{more} more answers expected within {timeout:?}: {:?}",
                    self
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops the load, waits for every thread (a request in flight completes or times
    /// out, so a failure just before the stop is still counted) and reports.
    pub fn stop(mut self) -> LoadReport {
        self.finish()
    }

    fn worker(&self, label: String) -> Worker {
        Worker {
            label,
            target: self.spec.target,
            started: self.started,
            request_began: Duration::ZERO,
            shared: self.shared.clone(),
            stats: WorkerStats::default(),
        }
    }

    fn spawn(
        &mut self,
        kind: Kind,
        name: String,
        f: impl FnOnce() -> WorkerStats + Send + 'static,
    ) -> Result<()> {
        let handle = thread::Builder::new()
            .name(name)
            .spawn(f)
            .context("cannot start a load thread")?;
        self.workers.push((kind, handle));
        Ok(())
    }

    fn finish(&mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let mut report = LoadReport {
            spec: self.spec,
            elapsed,
            short_ok: 0,
            short_failed: 0,
            stream_requests_ok: 0,
            stream_requests_failed: 0,
            streams_broken: 0,
            streams_moved: 0,
            backends: BTreeMap::new(),
            slowest_answer: Duration::ZERO,
            failures: Vec::new(),
        };
        let mut failures = Vec::new();
        for (i, (kind, handle)) in self.workers.drain(..).enumerate() {
            let stats = handle.join().unwrap_or_else(|_| WorkerStats {
                failed: 1,
                broken: true,
                failures: vec![Failure::new(elapsed, format!("load thread {i} panicked"))],
                ..WorkerStats::default()
            });
            match kind {
                Kind::Stream => {
                    report.stream_requests_ok += stats.ok;
                    report.stream_requests_failed += stats.failed;
                    report.streams_broken += usize::from(stats.broken);
                    report.streams_moved += usize::from(stats.moved);
                }
                Kind::Short => {
                    report.short_ok += stats.ok;
                    report.short_failed += stats.failed;
                }
            }
            report.slowest_answer = report.slowest_answer.max(stats.slowest_answer);
            for (backend, n) in stats.backends {
                *report.backends.entry(backend).or_insert(0) += n;
            }
            failures.extend(stats.failures);
        }
        failures.sort_by_key(|failure| failure.first);
        report.failures = failures
            .iter()
            .take(MAX_FAILURES)
            .map(Failure::to_string)
            .collect();
        report
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        let report = self.finish();
        if thread::panicking() {
            eprintln!("weir-testbed: the client load when the test panicked: {report}");
        }
    }
}

impl fmt::Debug for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ok, failed) = self.progress();
        f.debug_struct("Load")
            .field("spec", &self.spec)
            .field("ok", &ok)
            .field("failed", &failed)
            .finish_non_exhaustive()
    }
}

/// What a load saw, from [`Load::stop`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReport {
    /// The load that ran.
    pub spec: LoadSpec,
    /// From the start of the traffic to the stop request.
    pub elapsed: Duration,
    /// One-shot requests answered with 200 and a backend name, and the others.
    pub short_ok: u64,
    pub short_failed: u64,
    /// Requests on the streams answered with 200 and a backend name, and the others
    /// (at most one per stream: a stream stops at its first failure).
    pub stream_requests_ok: u64,
    pub stream_requests_failed: u64,
    /// Streams that failed (reset, end of stream, bad answer, timeout).
    pub streams_broken: usize,
    /// Streams whose answers changed backend.
    pub streams_moved: usize,
    /// Answers per backend name (both kinds of traffic).
    pub backends: BTreeMap<String, u64>,
    /// The longest time an answered request took (both kinds): how long traffic stalled
    /// without failing, e.g. while a lost packet waited for its retransmission.
    pub slowest_answer: Duration,
    /// The earliest failures (at most 20), each as `+SECONDSs WHO -> TARGET: WHAT` where
    /// `+SECONDSs` is when the failed request started, since the traffic started; a
    /// thread's run of identical failures is one line ending `[N times until +SECONDSs]`.
    pub failures: Vec<String>,
}

impl LoadReport {
    /// Panics, printing the report, unless no request failed, no stream broke or moved,
    /// and each configured kind of traffic had answers.
    pub fn assert_clean(&self) {
        let problems = self.problems();
        if !problems.is_empty() {
            panic!(
                "the client load was not clean: {}\n{self}",
                problems.join("; ")
            );
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.short_failed > 0 {
            problems.push(format!("{} short requests failed", self.short_failed));
        }
        if self.stream_requests_failed > 0 {
            problems.push(format!(
                "{} stream requests failed",
                self.stream_requests_failed
            ));
        }
        if self.streams_broken > 0 {
            problems.push(format!("{} streams broke", self.streams_broken));
        }
        if self.streams_moved > 0 {
            problems.push(format!(
                "{} streams moved to another backend",
                self.streams_moved
            ));
        }
        if self.spec.short_workers > 0 && self.short_ok == 0 {
            problems.push("no short request was answered".to_owned());
        }
        if self.spec.streams > 0 && self.stream_requests_ok == 0 {
            problems.push("no stream request was answered".to_owned());
        }
        problems
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "client load on {} for {:.2}s:",
            self.spec.target,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  short requests: {} ok, {} failed ({} workers)",
            self.short_ok, self.short_failed, self.spec.short_workers
        )?;
        writeln!(
            f,
            "  streams: {} requests ok, {} failed; {} of {} streams broken, {} moved",
            self.stream_requests_ok,
            self.stream_requests_failed,
            self.streams_broken,
            self.spec.streams,
            self.streams_moved
        )?;
        write!(f, "  backends:")?;
        if self.backends.is_empty() {
            write!(f, " none")?;
        }
        for (backend, n) in &self.backends {
            write!(f, " {backend}={n}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  slowest answer: {:.3}s",
            self.slowest_answer.as_secs_f64()
        )?;
        if !self.failures.is_empty() {
            let first = if self.failures.len() == MAX_FAILURES {
                " (the earliest)"
            } else {
                ""
            };
            writeln!(f, "  failures{first}:")?;
            for failure in &self.failures {
                writeln!(f, "    {failure}")?;
            }
        }
        Ok(())
    }
}

/// What one worker thread saw.
#[derive(Debug, Default)]
struct WorkerStats {
    ok: u64,
    failed: u64,
    broken: bool,
    moved: bool,
    backends: BTreeMap<String, u64>,
    slowest_answer: Duration,
    failures: Vec<Failure>,
}

/// A failure, or a run of identical ones of one thread.
#[derive(Debug)]
struct Failure {
    first: Duration,
    last: Duration,
    times: u64,
    what: String,
}

impl Failure {
    fn new(at: Duration, what: String) -> Failure {
        Failure {
            first: at,
            last: at,
            times: 1,
            what,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{:.3}s {}", self.first.as_secs_f64(), self.what)?;
        if self.times > 1 {
            write!(
                f,
                " [{} times until +{:.3}s]",
                self.times,
                self.last.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// A worker thread's view of the load.
struct Worker {
    label: String,
    target: SocketAddr,
    started: Instant,
    /// When the current request started, from `started`.
    request_began: Duration,
    shared: Arc<Shared>,
    stats: WorkerStats,
}

impl Worker {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `pause` unless stopped first; whether to go on.
    fn pause(&self, pause: Duration) -> bool {
        let deadline = Instant::now() + pause;
        loop {
            if self.stopped() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            thread::sleep(left.min(Duration::from_millis(10)));
        }
    }

    fn answered(&mut self, backend: &str) {
        let took = self.started.elapsed().saturating_sub(self.request_began);
        self.stats.slowest_answer = self.stats.slowest_answer.max(took);
        self.stats.ok += 1;
        self.shared.ok.fetch_add(1, Ordering::Relaxed);
        match self.stats.backends.get_mut(backend) {
            Some(n) => *n += 1,
            None => {
                self.stats.backends.insert(backend.to_owned(), 1);
            }
        }
    }

    fn failed(&mut self, error: &anyhow::Error) {
        self.stats.failed += 1;
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        self.note(format!("{error:#}"));
    }

    /// Marks the start of a request: its failure is dated from there (a timeout is
    /// reported when it expires, but the trouble began when the request went out).
    fn begin(&mut self) {
        self.request_began = self.started.elapsed();
    }

    /// Records a failure description of the current request (a repeat of the previous
    /// one extends it; past the first few, the others only count).
    fn note(&mut self, what: String) {
        let at = self.request_began;
        let what = format!("{} -> {}: {what}", self.label, self.target);
        let failures = &mut self.stats.failures;
        if let Some(last) = failures.last_mut()
            && last.what == what
        {
            last.times += 1;
            last.last = at;
        } else if failures.len() < MAX_FAILURES {
            failures.push(Failure::new(at, what));
        }
    }
}

/// A stream: requests on one connection until stopped or broken.
fn run_stream(mut worker: Worker, stream: TcpStream, interval: Duration) -> WorkerStats {
    let request = request(worker.target, true);
    let mut connection = match Connection::new(stream) {
        Ok(connection) => connection,
        Err(e) => {
            worker.failed(&e);
            worker.stats.broken = true;
            return worker.stats;
        }
    };
    let mut backend: Option<String> = None;
    loop {
        worker.begin();
        match connection.exchange(&request).and_then(check_answer) {
            Ok(name) => {
                if let Some(previous) = &backend
                    && *previous != name
                {
                    worker.stats.moved = true;
                    let answers = worker.stats.ok;
                    worker.note(format!(
                        "moved from {previous} to {name} after {answers} answers"
                    ));
                }
                worker.answered(&name);
                backend = Some(name);
            }
            Err(e) => {
                let e = e.context(format!(
                    "broken after {} answers from {}",
                    worker.stats.ok,
                    backend.as_deref().unwrap_or("no backend")
                ));
                worker.failed(&e);
                worker.stats.broken = true;
                break;
            }
        }
        if !worker.pause(interval) {
            break;
        }
    }
    worker.stats
}

/// A short worker: one-shot requests until stopped.
fn run_short(mut worker: Worker, netns_inode: u64) -> WorkerStats {
    // This thread was spawned inside the namespace; never send anything from another.
    let here = fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino());
    if here.as_ref().ok() != Some(&netns_inode) {
        worker.failed(&anyhow::anyhow!(
            "the load thread is not in the client namespace ({here:?}); it sent nothing"
        ));
        return worker.stats;
    }
    let request = request(worker.target, false);
    loop {
        worker.begin();
        match one_shot(worker.target, &request).and_then(check_answer) {
            Ok(name) => worker.answered(&name),
            Err(e) => worker.failed(&e),
        }
        if !worker.pause(SHORT_PAUSE) {
            break;
        }
    }
    worker.stats
}

/// `GET /` for `target`, keep-alive or `Connection: close`.
fn request(target: SocketAddr, keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    http1::encode_request(
        "GET",
        "/",
        &target.to_string(),
        &[("User-Agent", "weir-load"), ("Connection", connection)],
        None,
    )
}

/// One request on a new connection.
fn one_shot(target: SocketAddr, request: &[u8]) -> Result<Response> {
    let stream = TcpStream::connect_timeout(&target, REQUEST_TIMEOUT)
        .map_err(|e| describe_io(&e))
        .context("connect")?;
    let mut connection = Connection::new(stream)?;
    let response = connection.exchange(request)?;
    // The server closes after answering: wait for that, so the TIME_WAIT state stays on
    // its side and thousands of requests do not use up the client's ports.
    let _ = io::copy(
        &mut (&mut connection.reader).take(MAX_BODY),
        &mut io::sink(),
    );
    Ok(response)
}

/// A connection with timeouts, for request/response exchanges.
struct Connection {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn new(stream: TcpStream) -> Result<Connection> {
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .context("cannot set a read timeout")?;
        stream
            .set_write_timeout(Some(REQUEST_TIMEOUT))
            .context("cannot set a write timeout")?;
        let _ = stream.set_nodelay(true);
        let reader = BufReader::new(stream.try_clone().context("cannot clone a socket")?);
        Ok(Connection {
            writer: stream,
            reader,
        })
    }

    fn exchange(&mut self, request: &[u8]) -> Result<Response> {
        self.writer
            .write_all(request)
            .map_err(|e| describe_io(&e))
            .context("send")?;
        read_response(&mut self.reader)
    }
}

/// A correct answer names a backend: status 200, a non-empty body (`NAME\n`).
fn check_answer(response: Response) -> Result<String> {
    let body = String::from_utf8_lossy(&response.body);
    let name = body.trim();
    ensure!(
        response.status == 200,
        "status {} (body {name:?})",
        response.status
    );
    ensure!(!name.is_empty(), "status 200 with an empty body");
    Ok(name.to_owned())
}

/// Reads one response framed by `Content-Length` (required: the connection may carry
/// more), within the load's limits.
fn read_response(reader: &mut impl BufRead) -> Result<Response> {
    let limits = Limits {
        max_head: MAX_HEAD,
        max_body: MAX_BODY,
        body_to_eof: false,
    };
    http1::read_response(reader, limits).map_err(|e| match e {
        ReadError::Io(e) => describe_io(&e).context("receive"),
        ReadError::Malformed(what) => anyhow::anyhow!("{what}"),
    })
}

/// An I/O error, with timeouts spelled out.
fn describe_io(e: &io::Error) -> anyhow::Error {
    match e.kind() {
        // A timed-out read or write says EAGAIN ("Resource temporarily unavailable").
        io::ErrorKind::WouldBlock => anyhow::anyhow!("timed out after {REQUEST_TIMEOUT:?}"),
        io::ErrorKind::TimedOut => anyhow::anyhow!("timed out after {REQUEST_TIMEOUT:?} ({e})"),
        _ => anyhow::anyhow!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Response> {
        read_response(&mut BufReader::new(bytes))
    }

    #[test]
    fn parses_responses_back_to_back() {
        let two =
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: keep-alive\r\n\r\nbackend1\n\
                    HTTP/1.1 200 OK\r\ncontent-length:9\r\n\r\nbackend2\n";
        let mut reader = BufReader::new(&two[..]);
        let first = read_response(&mut reader).unwrap();
        assert_eq!(check_answer(first).unwrap(), "backend1");
        let second = read_response(&mut reader).unwrap();
        assert_eq!(check_answer(second).unwrap(), "backend2");
        let end = read_response(&mut reader).unwrap_err().to_string();
        assert!(end.contains("before a response"), "{end}");
    }

    #[test]
    fn rejects_bad_answers() {
        let not_ok = parse(b"HTTP/1.1 503 Busy\r\nContent-Length: 5\r\n\r\nbusy\n").unwrap();
        assert!(check_answer(not_ok).is_err());
        let empty = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n \n").unwrap();
        assert!(check_answer(empty).is_err());
    }

    /// A stream against a fake server on loopback that answers as backend1 twice, then
    /// as backend2, then hangs up.
    #[test]
    fn a_stream_sees_a_move_and_a_hang_up() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            for name in ["backend1", "backend1", "backend2"] {
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                }
                let body = format!("{name}\n");
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                writer.write_all((head + &body).as_bytes()).unwrap();
            }
        });
        let worker = Worker {
            label: "stream 0".to_owned(),
            target,
            started: Instant::now(),
            request_began: Duration::ZERO,
            shared: Arc::default(),
            stats: WorkerStats::default(),
        };
        let stream = TcpStream::connect(target).unwrap();
        let stats = run_stream(worker, stream, Duration::from_millis(1));
        server.join().unwrap();
        assert_eq!((stats.ok, stats.failed), (3, 1), "{stats:?}");
        assert!(stats.moved && stats.broken, "{stats:?}");
        assert_eq!(
            stats.backends,
            BTreeMap::from([("backend1".to_owned(), 2), ("backend2".to_owned(), 1)])
        );
        let failures: Vec<String> = stats.failures.iter().map(Failure::to_string).collect();
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(
            failures[0].contains("moved from backend1 to backend2 after 2 answers"),
            "{failures:?}"
        );
        assert!(
            failures[1].contains("broken after 3 answers from backend2"),
            "{failures:?}"
        );
    }

    #[test]
    fn reports_say_what_went_wrong() {
        let spec = LoadSpec {
            target: "198.18.0.11:80".parse().unwrap(),
            streams: 2,
            stream_interval: Duration::from_millis(20),
            short_workers: 1,
        };
        let clean = LoadReport {
            spec,
            elapsed: Duration::from_secs(1),
            short_ok: 100,
            short_failed: 0,
            stream_requests_ok: 40,
            stream_requests_failed: 0,
            streams_broken: 0,
            streams_moved: 0,
            backends: BTreeMap::from([("backend1".to_owned(), 140)]),
            slowest_answer: Duration::from_millis(1500),
            failures: Vec::new(),
        };
        assert!(clean.problems().is_empty());
        clean.assert_clean();
        let text = clean.to_string();
        assert!(
            text.contains("100 ok, 0 failed")
                && text.contains("backend1=140")
                && text.contains("slowest answer: 1.500s"),
            "{text}"
        );

        let empty = LoadReport {
            short_ok: 0,
            stream_requests_ok: 0,
            backends: BTreeMap::new(),
            ..clean.clone()
        };
        assert_eq!(empty.problems().len(), 2, "{:?}", empty.problems());

        let broken = LoadReport {
            stream_requests_failed: 1,
            streams_broken: 1,
            streams_moved: 1,
            failures: vec!["+0.500s stream 1 -> 198.18.0.11:80: reset".to_owned()],
            ..clean
        };
        assert_eq!(broken.problems().len(), 3, "{:?}", broken.problems());
        assert!(broken.to_string().contains("+0.500s stream 1"), "{broken}");
    }
}
