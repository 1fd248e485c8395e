//! One health check: a TCP connect, an HTTP/1.1 GET (over TLS for https), or a command.
//! Each is bounded by the check's timeout as a whole, and says what happened in a
//! [`CheckReason`] an operator can act on ("timeout at connect", "HTTP status 503").
//!
//! Checks run from the LB host itself, through its routing table and neighbours: the
//! same path the load balancer's packets take to the backend.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, timeout_at},
};
use tokio_rustls::TlsConnector;

use crate::config::{CheckKind, HealthConfig};

/// The longest status line read from an HTTP answer.
const MAX_STATUS_LINE: usize = 1024;

/// How long a check waits for its killed command to exit before returning.
const REAP_GRACE: Duration = Duration::from_millis(100);

/// What one check is aimed at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub address: IpAddr,
    /// The port checked (`health.port`, else the VIP's).
    pub port: u16,
    pub vip: IpAddr,
    pub vip_port: u16,
}

/// What a check found, as an operator reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum CheckReason {
    /// tcp: the connection was accepted.
    Connected,
    /// http/https: the status of the answer (expected or not).
    HttpStatus(u16),
    /// exec: the command's exit status (0 passed).
    ExitCode(i32),
    ConnectionRefused,
    /// No connection within the timeout (a black hole, or a SYN backlog overflow).
    TimeoutAtConnect,
    /// Connected, but no (complete) answer within the timeout.
    TimeoutAtResponse,
    /// The command did not finish within the timeout and was killed.
    TimeoutCommand,
    /// Any other error while connecting (no route, host unreachable…).
    ConnectError(String),
    /// The answer is not HTTP, or the connection failed while exchanging.
    BadResponse(String),
    TlsError(String),
    KilledBySignal(i32),
    CannotRun(String),
}

impl fmt::Display for CheckReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckReason::Connected => f.write_str("connected"),
            CheckReason::HttpStatus(status) => write!(f, "HTTP status {status}"),
            CheckReason::ExitCode(code) => write!(f, "exit code {code}"),
            CheckReason::ConnectionRefused => f.write_str("connection refused"),
            CheckReason::TimeoutAtConnect => f.write_str("timeout at connect"),
            CheckReason::TimeoutAtResponse => f.write_str("timeout at response"),
            CheckReason::TimeoutCommand => f.write_str("timeout: the command was killed"),
            CheckReason::ConnectError(error) => write!(f, "cannot connect: {error}"),
            CheckReason::BadResponse(error) => write!(f, "bad response: {error}"),
            CheckReason::TlsError(error) => write!(f, "TLS error: {error}"),
            CheckReason::KilledBySignal(signal) => write!(f, "killed by signal {signal}"),
            CheckReason::CannotRun(error) => write!(f, "cannot run the command: {error}"),
        }
    }
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub passed: bool,
    pub reason: CheckReason,
    pub duration: Duration,
}

/// What checks share: the TLS client configuration.
#[derive(Clone)]
pub struct Checker {
    tls: TlsConnector,
}

impl Default for Checker {
    fn default() -> Self {
        Checker::new()
    }
}

impl Checker {
    pub fn new() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Checker {
            tls: TlsConnector::from(Arc::new(config)),
        }
    }

    /// Runs one check of `rules` against `target`, within `rules.timeout`.
    pub async fn check(&self, rules: &HealthConfig, target: &Target) -> CheckResult {
        let started = Instant::now();
        let deadline = started + rules.timeout;
        let (passed, reason) = match rules.kind {
            CheckKind::None => (true, CheckReason::Connected),
            CheckKind::Tcp => match connect(target, deadline).await {
                Ok(_) => (true, CheckReason::Connected),
                Err(reason) => (false, reason),
            },
            CheckKind::Http => match connect(target, deadline).await {
                Ok(stream) => http(stream, rules, target, deadline).await,
                Err(reason) => (false, reason),
            },
            CheckKind::Https => match connect(target, deadline).await {
                Ok(stream) => self.https(stream, rules, target, deadline).await,
                Err(reason) => (false, reason),
            },
            CheckKind::Exec => exec(rules, target, deadline).await,
        };
        CheckResult {
            passed,
            reason,
            duration: started.elapsed(),
        }
    }

    async fn https(
        &self,
        stream: TcpStream,
        rules: &HealthConfig,
        target: &Target,
        deadline: Instant,
    ) -> (bool, CheckReason) {
        // SNI is the configured host; an address (the default) sends none.
        let name = rules
            .host
            .as_deref()
            .and_then(|host| ServerName::try_from(host.to_owned()).ok())
            .unwrap_or(ServerName::IpAddress(target.address.into()));
        match timeout_at(deadline, self.tls.connect(name, stream)).await {
            Err(_) => (false, CheckReason::TimeoutAtResponse),
            Ok(Err(err)) => (false, CheckReason::TlsError(err.to_string())),
            Ok(Ok(stream)) => http(stream, rules, target, deadline).await,
        }
    }
}

async fn connect(target: &Target, deadline: Instant) -> Result<TcpStream, CheckReason> {
    let address = SocketAddr::new(target.address, target.port);
    match timeout_at(deadline, TcpStream::connect(address)).await {
        Err(_) => Err(CheckReason::TimeoutAtConnect),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(CheckReason::ConnectionRefused)
        }
        Ok(Err(err)) => Err(CheckReason::ConnectError(err.to_string())),
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// `GET path` with `Connection: close`; only the status line is read.
async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    rules: &HealthConfig,
    target: &Target,
    deadline: Instant,
) -> (bool, CheckReason) {
    let host = match (&rules.host, target.address) {
        (Some(host), _) => host.clone(),
        (None, IpAddr::V4(v4)) => v4.to_string(),
        (None, IpAddr::V6(v6)) => format!("[{v6}]"),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weir-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        rules.path.as_deref().unwrap_or("/")
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let mut line = Vec::with_capacity(128);
        let mut buffer = [0u8; 256];
        while !line.contains(&b'\n') && line.len() < MAX_STATUS_LINE {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            line.extend_from_slice(&buffer[..read]);
        }
        Ok::<_, std::io::Error>(line)
    };
    match timeout_at(deadline, exchange).await {
        Err(_) => (false, CheckReason::TimeoutAtResponse),
        Ok(Err(err)) => (false, CheckReason::BadResponse(err.to_string())),
        Ok(Ok(answer)) => match status_code(&answer) {
            Some(status) => (rules.status_ok(status), CheckReason::HttpStatus(status)),
            None if answer.is_empty() => (
                false,
                CheckReason::BadResponse("the connection closed without an answer".into()),
            ),
            None => (
                false,
                CheckReason::BadResponse("the answer is not HTTP/1.x".into()),
            ),
        },
    }
}

/// The status of an answer starting `HTTP/1.x NNN`.
fn status_code(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    let version = words.next()?;
    let code = words.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..=599).contains(c))
}

/// Runs the command with its placeholders filled in; exit status 0 passes. The command
/// runs in its own process group, killed whole when it overruns the timeout or when the
/// check is cancelled (its backend removed by a reload or the API).
async fn exec(rules: &HealthConfig, target: &Target, deadline: Instant) -> (bool, CheckReason) {
    let Some((program, args)) = rules.command.as_deref().and_then(<[String]>::split_first) else {
        return (false, CheckReason::CannotRun("no command".into()));
    };
    let fill = |word: &String| {
        word.replace("{address}", &target.address.to_string())
            .replace("{port}", &target.port.to_string())
            .replace("{vip_port}", &target.vip_port.to_string())
            .replace("{vip}", &target.vip.to_string())
    };
    let mut command = tokio::process::Command::new(fill(program));
    command
        .args(args.iter().map(fill))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        // Tokio reaps a dropped child in the background: no zombie after a cancellation.
        .kill_on_drop(true);
    let mut group = match command.spawn() {
        Ok(child) => ProcessGroup(child),
        Err(err) => return (false, CheckReason::CannotRun(err.to_string())),
    };
    match timeout_at(deadline, group.0.wait()).await {
        Ok(Ok(status)) => match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => (code == 0, CheckReason::ExitCode(code)),
            (None, Some(signal)) => (false, CheckReason::KilledBySignal(signal)),
            (None, None) => (false, CheckReason::CannotRun("no exit status".into())),
        },
        Ok(Err(err)) => (false, CheckReason::CannotRun(err.to_string())),
        Err(_) => {
            group.kill();
            // A process stuck in the kernel (uninterruptible sleep) dies late: the check
            // ends now anyway, and tokio reaps the dropped child when it does.
            let _ = tokio::time::timeout(REAP_GRACE, group.0.wait()).await;
            (false, CheckReason::TimeoutCommand)
        }
    }
}

/// A check command leading its own process group, which is killed whole (the command's
/// children too) unless the command has been waited for.
struct ProcessGroup(tokio::process::Child);

impl ProcessGroup {
    fn kill(&mut self) {
        // `id()` is `None` once the leader is reaped: until then its pid, which is the
        // group's id, cannot be reused, so the signal reaches this group and no other.
        if let Some(pid) = self.0.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
            // SAFETY: kill(2) has no memory effects; it signals the group this check created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Health checks do not verify certificates: they ask "does the service answer", and
/// backends commonly serve self-signed or internal certificates under names the LB does
/// not use. The handshake signature is still verified, so the peer holds the key of the
/// certificate it presents.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use rustls::pki_types::PrivateKeyDer;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::config::Config;

    fn rules(extra: &str) -> HealthConfig {
        let text = format!(
            "[agent]\ninterfaces = [\"lo\"]\n[[vip]]\nname = \"t\"\naddress = \"127.0.0.1\"\nport = 80\n[vip.health]\ntimeout = \"300ms\"\n{extra}"
        );
        Config::parse(&text, "test.toml")
            .expect("valid")
            .vips
            .remove(0)
            .health
    }

    fn target(port: u16) -> Target {
        Target {
            address: Ipv4Addr::LOCALHOST.into(),
            port,
            vip: Ipv4Addr::new(198, 19, 0, 10).into(),
            vip_port: 80,
        }
    }

    /// How a test server answers a request.
    #[derive(Clone)]
    enum Answer {
        Bytes(Vec<u8>),
        /// Keeps the connection open, says nothing.
        Silent,
        /// Sends this byte forever.
        Endless(u8),
    }

    /// What a test server saw of one connection.
    #[derive(Debug)]
    struct Seen {
        /// The TLS SNI.
        server_name: Option<String>,
        request: String,
    }

    type Log = Arc<std::sync::Mutex<Vec<Seen>>>;

    /// A local listener answering each connection with `answer`, over TLS with `tls`.
    async fn serve(answer: Answer, tls: Option<TlsAcceptor>) -> (u16, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let log = Log::default();
        let server_log = log.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (answer, tls, log) = (answer.clone(), tls.clone(), server_log.clone());
                tokio::spawn(async move {
                    match tls {
                        None => respond(stream, answer, None, &log).await,
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let server_name = stream.get_ref().1.server_name().map(str::to_owned);
                            respond(stream, answer, server_name, &log).await;
                        }
                    }
                });
            }
        });
        (port, log)
    }

    async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        answer: Answer,
        server_name: Option<String>,
        log: &Log,
    ) {
        let mut request = [0u8; 1024];
        let read = stream.read(&mut request).await.unwrap_or(0);
        log.lock().expect("log").push(Seen {
            server_name,
            request: String::from_utf8_lossy(&request[..read]).into_owned(),
        });
        match answer {
            Answer::Bytes(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            }
            Answer::Silent => tokio::time::sleep(Duration::from_secs(5)).await,
            Answer::Endless(byte) => {
                let chunk = [byte; 4096];
                while stream.write_all(&chunk).await.is_ok() {}
            }
        }
    }

    async fn server(answer: Option<&'static str>) -> u16 {
        let answer = match answer {
            Some(text) => Answer::Bytes(text.into()),
            None => Answer::Silent,
        };
        serve(answer, None).await.0
    }

    /// A TLS acceptor with a fresh self-signed certificate.
    fn tls_acceptor() -> TlsAcceptor {
        let certified = rcgen::generate_simple_self_signed(vec!["www.example".to_owned()])
            .expect("certificate");
        let key = PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
        TlsAcceptor::from(Arc::new(config))
    }

    /// A port nothing listens on.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address").port()
    }

    #[tokio::test]
    async fn tcp_checks() {
        let checker = Checker::new();
        let port = server(Some("")).await;
        let result = checker.check(&rules(""), &target(port)).await;
        assert_eq!(
            (result.passed, result.reason),
            (true, CheckReason::Connected)
        );
        let result = checker
            .check(&rules(""), &target(closed_port().await))
            .await;
        assert_eq!(
            (result.passed, result.reason.to_string()),
            (false, "connection refused".to_owned())
        );
    }

    #[tokio::test]
    async fn http_checks_read_the_status() {
        let checker = Checker::new();
        let http = rules("kind = \"http\"\npath = \"/health\"\n");
        let ok = server(Some("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")).await;
        let result = checker.check(&http, &target(ok)).await;
        assert_eq!(
            (result.passed, result.reason),
            (true, CheckReason::HttpStatus(200))
        );
        let unavailable = server(Some("HTTP/1.0 503 Service Unavailable\r\n\r\n")).await;
        let result = checker.check(&http, &target(unavailable)).await;
        assert!(!result.passed);
        assert_eq!(result.reason.to_string(), "HTTP status 503");
        let only_503 = rules("kind = \"http\"\nexpect_status = [503]\n");
        assert!(checker.check(&only_503, &target(unavailable)).await.passed);

        let silent = server(None).await;
        let result = checker.check(&http, &target(silent)).await;
        assert_eq!(result.reason.to_string(), "timeout at response");
        assert!(result.duration >= Duration::from_millis(300));
        assert!(
            result.duration < Duration::from_secs(2),
            "{:?}",
            result.duration
        );
        let garbage = server(Some("SSH-2.0-OpenSSH\r\n")).await;
        let result = checker.check(&http, &target(garbage)).await;
        assert_eq!(
            result.reason.to_string(),
            "bad response: the answer is not HTTP/1.x"
        );
    }

    #[tokio::test]
    async fn http_checks_survive_odd_answers() {
        let checker = Checker::new();
        let http = rules("kind = \"http\"\n");
        let reason = async |answer: Answer| {
            let (port, _) = serve(answer, None).await;
            let result = checker.check(&http, &target(port)).await;
            assert!(
                result.duration < Duration::from_millis(300),
                "{:?}",
                result.duration
            );
            (result.passed, result.reason.to_string())
        };
        let not_http = (false, "bad response: the answer is not HTTP/1.x".to_owned());
        let bytes = |text: &[u8]| Answer::Bytes(text.to_vec());

        assert_eq!(
            reason(bytes(b"HTTP/1.0 204 No Content\n\n")).await,
            (true, "HTTP status 204".to_owned())
        );
        assert_eq!(reason(bytes(b"\r\n\r\n")).await, not_http);
        assert_eq!(reason(bytes(b"\x00\xff\xfe garbage")).await, not_http);
        assert_eq!(reason(bytes(b"HTTP/1.1 abc OK\r\n")).await, not_http);
        // Closed in the middle of the status line, or before a word of it.
        assert_eq!(reason(bytes(b"HTTP/1.1 2")).await, not_http);
        assert_eq!(
            reason(bytes(b"")).await,
            (
                false,
                "bad response: the connection closed without an answer".to_owned()
            )
        );
        // Only the status line is read: long headers and bodies do not matter.
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        for n in 0..10_000 {
            long.extend_from_slice(format!("X-Header-{n}: {}\r\n", "v".repeat(64)).as_bytes());
        }
        assert_eq!(
            reason(Answer::Bytes(long)).await,
            (true, "HTTP status 200".to_owned())
        );
        // An endless answer is cut at the status line's bound, not read to the timeout.
        assert_eq!(reason(Answer::Endless(b'A')).await, not_http);
    }

    #[tokio::test]
    async fn https_checks() {
        let checker = Checker::new();
        let https = rules("kind = \"https\"\nhost = \"www.example\"\npath = \"/health\"\n");
        let answer = |text: &str| Answer::Bytes(text.into());

        let (ok, seen) = serve(answer("HTTP/1.1 200 OK\r\n\r\n"), Some(tls_acceptor())).await;
        let result = checker.check(&https, &target(ok)).await;
        assert_eq!(
            (result.passed, result.reason),
            (true, CheckReason::HttpStatus(200))
        );
        {
            let seen = seen.lock().expect("log");
            assert_eq!(seen[0].server_name.as_deref(), Some("www.example"));
            assert!(
                seen[0]
                    .request
                    .starts_with("GET /health HTTP/1.1\r\nHost: www.example\r\n"),
                "{:?}",
                seen[0].request
            );
        }
        // No host: no SNI (an address is not a server name), the address as Host.
        let result = checker
            .check(&rules("kind = \"https\"\n"), &target(ok))
            .await;
        assert!(result.passed, "{}", result.reason);
        {
            let seen = seen.lock().expect("log");
            assert_eq!(seen[1].server_name, None);
            assert!(seen[1].request.contains("\r\nHost: 127.0.0.1\r\n"));
        }

        let (unavailable, _) = serve(
            answer("HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Some(tls_acceptor()),
        )
        .await;
        let result = checker.check(&https, &target(unavailable)).await;
        assert_eq!(
            (result.passed, result.reason.to_string()),
            (false, "HTTP status 503".to_owned())
        );

        // TLS up, then no answer; no TLS handshake at all: both the response's timeout.
        for tls in [Some(tls_acceptor()), None] {
            let (silent, _) = serve(Answer::Silent, tls).await;
            let result = checker.check(&https, &target(silent)).await;
            assert_eq!(result.reason, CheckReason::TimeoutAtResponse);
            assert!(result.duration >= Duration::from_millis(300));
            assert!(result.duration < Duration::from_secs(2));
        }

        let plain = server(Some("HTTP/1.1 400 Bad Request\r\n\r\n")).await;
        let result = checker.check(&https, &target(plain)).await;
        assert!(!result.passed);
        assert!(
            result.reason.to_string().starts_with("TLS error: "),
            "{}",
            result.reason
        );
        // Endless garbage instead of a handshake: rustls bounds what it buffers.
        let (endless, _) = serve(Answer::Endless(0x16), None).await;
        let result = checker.check(&https, &target(endless)).await;
        assert!(
            matches!(result.reason, CheckReason::TlsError(_)),
            "{}",
            result.reason
        );
        assert!(result.duration < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn exec_checks() {
        let checker = Checker::new();
        let exec = |command: &str| rules(&format!("kind = \"exec\"\ncommand = {command}\n"));
        let result = checker
            .check(
                &exec(r#"["/bin/sh", "-c", "test {address}:{port}/{vip}:{vip_port} = 127.0.0.1:81/198.19.0.10:80"]"#),
                &target(81),
            )
            .await;
        assert_eq!(
            (result.passed, result.reason),
            (true, CheckReason::ExitCode(0))
        );
        let result = checker
            .check(&exec(r#"["/bin/sh", "-c", "exit 3"]"#), &target(81))
            .await;
        assert_eq!(result.reason.to_string(), "exit code 3");
        // The whole process group goes at the timeout, grandchildren included.
        let result = checker
            .check(&exec(r#"["/bin/sh", "-c", "sleep 10; true"]"#), &target(81))
            .await;
        assert_eq!(result.reason, CheckReason::TimeoutCommand);
        assert!(result.duration < Duration::from_secs(2));
        let result = checker
            .check(&exec(r#"["/nonexistent/check"]"#), &target(81))
            .await;
        assert!(
            result
                .reason
                .to_string()
                .starts_with("cannot run the command: ")
        );
    }

    /// A file for a test command to write its grandchild's pid in.
    pub(crate) fn pid_file(test: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("weir-{test}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    /// An exec check's `command`, as TOML, that starts a grandchild `sleep`, writes its pid
    /// to `pid_file` and waits for it.
    pub(crate) fn grandchild_command(pid_file: &std::path::Path) -> String {
        format!(
            "command = [\"/bin/sh\", \"-c\", \"sleep 30 & echo $! > {}; wait\"]\n",
            pid_file.display()
        )
    }

    /// The pid written by [`grandchild_command`], once it is.
    pub(crate) async fn grandchild_pid(pid_file: &std::path::Path) -> i32 {
        loop {
            let text = std::fs::read_to_string(pid_file).unwrap_or_default();
            if let Some(pid) = text.strip_suffix('\n').and_then(|pid| pid.parse().ok()) {
                let _ = std::fs::remove_file(pid_file);
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether process `pid` dies within two seconds (it is killed if not, so that a
    /// failed test leaves nothing behind).
    pub(crate) async fn dies(pid: i32) -> bool {
        // Gone, or a zombie until whoever inherited it reaps it.
        let dead = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |stat| stat.contains(") Z "))
        };
        for _ in 0..200 {
            if dead() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // SAFETY: kill(2) has no memory effects.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        false
    }

    /// Runs an exec check whose command starts a grandchild `sleep`, ends the check by
    /// its timeout or by cancelling it, and tells whether the grandchild was killed.
    async fn grandchild_is_killed(cancel: bool) -> bool {
        let pid_file = pid_file(&format!("check-grandchild-{cancel}"));
        let mut exec = rules(&format!(
            "kind = \"exec\"\n{}",
            grandchild_command(&pid_file)
        ));
        if cancel {
            exec.timeout = Duration::from_secs(30);
        }
        let checker = Checker::new();
        let target = target(81);
        let check = checker.check(&exec, &target);
        let pid = if cancel {
            // Dropping the check's future is what removing its backend does.
            tokio::select! {
                result = check => panic!("the check ended: {result:?}"),
                pid = grandchild_pid(&pid_file) => pid,
            }
        } else {
            let (result, pid) = tokio::join!(check, grandchild_pid(&pid_file));
            assert_eq!(result.reason, CheckReason::TimeoutCommand);
            pid
        };
        dies(pid).await
    }

    #[tokio::test]
    async fn a_timed_out_exec_check_kills_its_process_group() {
        assert!(grandchild_is_killed(false).await);
    }

    #[tokio::test]
    async fn a_cancelled_exec_check_kills_its_process_group() {
        assert!(grandchild_is_killed(true).await);
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 503"), Some(503));
        assert_eq!(status_code(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 x\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 099 x\r\n"), None);
        assert_eq!(status_code(b""), None);
    }
}
