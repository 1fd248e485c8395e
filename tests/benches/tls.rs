//! The TLS tier against HAProxy: `cargo bench -p weir-tests --bench tls` (no test
//! harness; `cargo xtask bench` runs it after the dataplane bench, on the release build).
//!
//! Same machine, same backends, same certificate (ECDSA P-256, made here with rcgen),
//! one after the other in interleaved rounds: `weir proxy` and HAProxy (`mode http`,
//! `bind … ssl crt`), each with one thread and with two, all run at once on the LB
//! namespace, each on its own port, and only the one being measured gets load. The
//! servers under test are pinned to CPU 1, everything else (the load generators, the
//! backends' test servers, the agent) to CPU 0. No access logs on either side; both add
//! X-Forwarded-For/-Proto/-Port and keep idle connections to the backends.
//!
//! Per server and round:
//! * full TLS 1.3 handshakes per second (X25519, ECDSA P-256, no resumption): this
//!   binary's own client (rustls, [`HANDSHAKE_THREADS`] threads, each connection a
//!   handshake, a close_notify and the server's close; the client skips certificate
//!   checks so that the server, not the client, is the bottleneck);
//! * HTTPS keep-alive requests per second and p50/p99 latency: `wrk --latency` with
//!   [`WRK_CONNECTIONS`] connections;
//! * the server's CPU time (utime + stime of /proc/PID/stat) over each window, per 1000
//!   handshakes and per 10 000 requests.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use weir_testbed::{
    Child, DsrTopology, Netns,
    agent::Agent,
    cpu,
    topology::{HTTP_PORT, LB_V4, VIP_V4, backend_v4},
    weir_bin,
    wrk::WrkReport,
};

const BACKENDS: u8 = 2;
const ROUNDS: usize = 3;
/// Length of each measurement.
const WINDOW: Duration = Duration::from_secs(5);
const HANDSHAKE_THREADS: usize = 8;
const WRK_CONNECTIONS: usize = 32;
const HOST: &str = "www.test";
/// The CPU of the server under test; everything else runs on the other one.
const SERVER_CPU: &str = "1";
const LOAD_CPU: &str = "0";
/// Set (to `ADDRESS SECONDS`) when this binary runs as the handshake client.
const CLIENT_ENV: &str = "WEIR_TLS_BENCH_HANDSHAKES";

fn main() -> Result<()> {
    if let Ok(args) = std::env::var(CLIENT_ENV) {
        return handshake_client(&args);
    }
    weir_testbed::require_root()?;
    let bed = Bed::new()?;
    let servers = bed.servers()?;
    let mut results: Vec<Vec<Round>> = servers.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        // Each round in another order, so that no server always goes first.
        for offset in 0..servers.len() {
            let i = (round + offset) % servers.len();
            let measured = bed.round(&servers[i])?;
            eprintln!("round {}: {}: {measured:?}", round + 1, servers[i].label);
            results[i].push(measured);
        }
    }
    print!("{}", report(&servers, &results));
    Ok(())
}

/// The namespaces, the backends, the agent and the certificate.
struct Bed {
    topology: DsrTopology,
    agent: Agent,
    home: PathBuf,
}

/// A server under test, listening on `port` of the LB.
struct Server {
    label: &'static str,
    port: u16,
    child: Child,
}

/// One round's figures for one server.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    handshakes_per_s: f64,
    cpu_ms_per_1k_handshakes: f64,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_s_per_10k_requests: f64,
}

impl Bed {
    fn new() -> Result<Bed> {
        let topology = DsrTopology::with_plain_servers(BACKENDS)?;
        let home = std::env::temp_dir().join(format!("weir-tls-bench-{}", std::process::id()));
        std::fs::create_dir_all(&home)?;
        let certified = rcgen::generate_simple_self_signed(vec![HOST.to_owned()])?;
        std::fs::write(
            home.join("www.pem"),
            format!(
                "{}{}",
                certified.cert.pem(),
                certified.key_pair.serialize_pem()
            ),
        )?;
        let mut config = format!(
            "[agent]\ninterfaces = [\"{}\"]\n\n[[vip]]\nname = \"web\"\naddress = \"{VIP_V4}\"\nport = {HTTP_PORT}\n\
             [vip.health]\nkind = \"http\"\ninterval = \"1s\"\n",
            topology.lb_ifname()
        );
        for backend in topology.backends() {
            let _ = writeln!(
                config,
                "[[vip.backend]]\naddress = \"{}\"",
                backend_v4(backend.number)
            );
        }
        let agent = Agent::start(&topology.lb().ns, &config)?;
        let bed = Bed {
            topology,
            agent,
            home,
        };
        for backend in bed.topology.backends() {
            bed.pin_namespace(backend.ns())?;
        }
        bed.pin_namespace(&bed.topology.lb().ns)?;
        Ok(bed)
    }

    /// Pins every process now in `ns` to the load CPU.
    fn pin_namespace(&self, ns: &Netns) -> Result<()> {
        for pid in ns.pids()? {
            pin(pid as u32, LOAD_CPU)?;
        }
        Ok(())
    }

    fn certificate(&self) -> PathBuf {
        self.home.join("www.pem")
    }

    /// Starts the servers under test, each pinned to the server CPU: weir and HAProxy
    /// with one thread, and with two (on one CPU, a process with more threads gets a
    /// larger share of it from the scheduler against other load: compare like with like).
    fn servers(&self) -> Result<Vec<Server>> {
        Ok(vec![
            Server {
                label: "weir proxy, 1 thread",
                port: 4431,
                child: self.weir_proxy(4431, 1)?,
            },
            Server {
                label: "HAProxy, nbthread 1",
                port: 4441,
                child: self.haproxy(4441, 1)?,
            },
            Server {
                label: "weir proxy, 2 threads",
                port: 4432,
                child: self.weir_proxy(4432, 2)?,
            },
            Server {
                label: "HAProxy, nbthread 2",
                port: 4442,
                child: self.haproxy(4442, 2)?,
            },
        ])
    }

    /// `weir proxy --threads THREADS` on a copy of the agent's file with frontend `www`
    /// on `port`.
    fn weir_proxy(&self, port: u16, threads: usize) -> Result<Child> {
        let mut config = std::fs::read_to_string(self.agent.config_path())?;
        let _ = write!(
            config,
            "\n[[frontend]]\nname = \"www\"\nbind = [\"{LB_V4}:{port}\"]\ncertificates = \"{}\"\nbackends = \"web\"\n",
            self.certificate().display()
        );
        let path = self.home.join(format!("weir-{port}.toml"));
        std::fs::write(&path, config)?;
        let weir = weir_bin()?;
        let mut command = self.topology.lb().ns.command("taskset");
        command
            .args(["-c", SERVER_CPU])
            .arg(weir)
            .args(["proxy", "--threads", &threads.to_string(), "--config"])
            .arg(&path)
            .env("WEIR_LOG", "warn,weir::proxy=info");
        let mut child = Child::spawn(command)?;
        child.wait_for_log(
            &format!("{BACKENDS} of {BACKENDS} take requests"),
            Duration::from_secs(10),
        )?;
        Ok(child)
    }

    /// HAProxy as its docs configure TLS termination, with `threads` threads.
    fn haproxy(&self, port: u16, threads: usize) -> Result<Child> {
        let mut config = format!(
            "global\n  nbthread {threads}\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 3s\n  timeout client 60s\n  timeout server 30s\n  \
             timeout http-request 10s\n  option forwardfor\n  http-reuse safe\n\
             frontend www\n  bind {LB_V4}:{port} ssl crt {} alpn h2,http/1.1\n  \
             http-request set-header X-Forwarded-Proto https\n  \
             http-request set-header X-Forwarded-Port %[dst_port]\n  default_backend web\n\
             backend web\n  balance roundrobin\n",
            self.certificate().display()
        );
        for backend in self.topology.backends() {
            let _ = writeln!(
                config,
                "  server b{0} {1}:{HTTP_PORT}",
                backend.number,
                backend_v4(backend.number)
            );
        }
        let path = self.home.join(format!("haproxy-{port}.cfg"));
        std::fs::write(&path, config)?;
        let mut command = self.topology.lb().ns.command("taskset");
        command
            .args(["-c", SERVER_CPU, "haproxy", "-db", "-f"])
            .arg(&path);
        let mut child = Child::spawn(command)?;
        let address = SocketAddr::from((LB_V4, port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .topology
            .lb()
            .ns
            .enter(|| TcpStream::connect(address))?
            .is_err()
        {
            if let Some(status) = child.try_wait()? {
                bail!("haproxy exited ({status}):\n{}", child.log());
            }
            ensure!(
                Instant::now() < deadline,
                "haproxy does not listen on {address}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        Ok(child)
    }

    fn client(&self) -> &Netns {
        &self.topology.client().ns
    }

    fn round(&self, server: &Server) -> Result<Round> {
        let pid = server.child.id();
        let address = SocketAddr::from((LB_V4, server.port));

        let cpu = cpu_seconds(pid)?;
        let output = self
            .client()
            .command("taskset")
            .args(["-c", LOAD_CPU])
            .arg(std::env::current_exe()?)
            .env(CLIENT_ENV, format!("{address} {}", WINDOW.as_secs_f64()))
            .output()?;
        let handshake_cpu = cpu_seconds(pid)? - cpu;
        ensure!(
            output.status.success(),
            "the handshake client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let handshakes: f64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;

        let cpu = cpu_seconds(pid)?;
        let output = self
            .client()
            .command("taskset")
            .args(["-c", LOAD_CPU, "wrk", "--latency", "-t1"])
            .args(["-c", &WRK_CONNECTIONS.to_string()])
            .args(["-d", &format!("{}s", WINDOW.as_secs())])
            .arg(format!("https://{address}/"))
            .output()?;
        let request_cpu = cpu_seconds(pid)? - cpu;
        let text = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success() && !text.contains("Non-2xx") && !text.contains("Socket errors"),
            "wrk against {}: {text}{}",
            server.label,
            String::from_utf8_lossy(&output.stderr)
        );
        let wrk = WrkReport::parse(&text)?;
        Ok(Round {
            handshakes_per_s: handshakes / WINDOW.as_secs_f64(),
            cpu_ms_per_1k_handshakes: handshake_cpu * 1e6 / handshakes,
            requests_per_s: wrk.requests as f64 / WINDOW.as_secs_f64(),
            p50_ms: wrk.p50.as_secs_f64() * 1e3,
            p99_ms: wrk.p99.as_secs_f64() * 1e3,
            cpu_s_per_10k_requests: request_cpu * 1e4 / wrk.requests as f64,
        })
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Pins every thread of `pid` to `cpus`.
fn pin(pid: u32, cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()?;
    ensure!(status.success(), "taskset -p {cpus} {pid} failed");
    Ok(())
}

/// User + system CPU seconds of every thread of `pid` so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    Ok(cpu::process_time(pid as i32)?.as_secs_f64())
}

/// A column of the table: its title, its figure, whether higher is better.
type Column = (&'static str, fn(&Round) -> f64, bool);

/// The table, medians of the rounds, and weir's ratios to HAProxy.
fn report(servers: &[Server], results: &[Vec<Round>]) -> String {
    let median = |rounds: &[Round], field: fn(&Round) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(field).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let columns: [Column; 6] = [
        ("handshakes/s", |r| r.handshakes_per_s, true),
        (
            "CPU ms / 1k handshakes",
            |r| r.cpu_ms_per_1k_handshakes,
            false,
        ),
        ("keep-alive req/s", |r| r.requests_per_s, true),
        ("p50 ms", |r| r.p50_ms, false),
        ("p99 ms", |r| r.p99_ms, false),
        ("CPU s / 10k req", |r| r.cpu_s_per_10k_requests, false),
    ];
    let mut text = format!(
        "\nTLS tier: weir proxy vs HAProxy ({}), {BACKENDS} backends, ECDSA P-256, TLS 1.3.\n\
         Servers pinned to CPU {SERVER_CPU}; clients, wrk (-t1 -c{WRK_CONNECTIONS}), backends \
         and agent to CPU {LOAD_CPU}. No access logs. Medians of {ROUNDS} interleaved rounds \
         of {}s.\n\n",
        haproxy_version(),
        WINDOW.as_secs()
    );
    let _ = writeln!(
        text,
        "| server | {} |",
        columns.map(|(name, ..)| name).join(" | ")
    );
    let _ = writeln!(text, "|---|{}", "---|".repeat(columns.len()));
    for (server, rounds) in servers.iter().zip(results) {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, field, _)| format!("{:.2}", median(rounds, *field)))
            .map(|cell| cell.trim_end_matches(".00").to_owned())
            .collect();
        let _ = writeln!(text, "| {} | {} |", server.label, cells.join(" | "));
    }
    // Each weir row against the HAProxy row after it (the same number of threads).
    for pair in servers.iter().zip(results).collect::<Vec<_>>().chunks(2) {
        let [(weir, weir_rounds), (haproxy, haproxy_rounds)] = pair else {
            continue;
        };
        let ratios: Vec<String> = columns
            .iter()
            .map(|(name, field, higher_is_better)| {
                let ratio = median(weir_rounds, *field) / median(haproxy_rounds, *field);
                let better = if *higher_is_better {
                    ratio >= 1.0
                } else {
                    ratio <= 1.0
                };
                format!("{name} {ratio:.2}{}", if better { "" } else { " (behind)" })
            })
            .collect();
        let _ = writeln!(
            text,
            "\n{} / {}: {}",
            weir.label,
            haproxy.label,
            ratios.join(", ")
        );
    }
    text
}

fn haproxy_version() -> String {
    Command::new("haproxy")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(2).map(|v| format!("HAProxy {v}")))
        })
        .unwrap_or_else(|| "HAProxy".to_owned())
}

/// The handshake client: `ADDRESS SECONDS`; prints the handshakes done.
fn handshake_client(args: &str) -> Result<()> {
    let (address, seconds) = args
        .split_once(' ')
        .with_context(|| format!("{CLIENT_ENV}={args:?}: ADDRESS SECONDS"))?;
    let address: SocketAddr = address.parse()?;
    let window = Duration::from_secs_f64(seconds.parse()?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let deadline = Instant::now() + window;
    let workers: Vec<_> = (0..HANDSHAKE_THREADS)
        .map(|_| {
            let config = config.clone();
            thread::spawn(move || -> Result<u64> {
                let mut done = 0;
                while Instant::now() < deadline {
                    handshake(address, &config)?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.join().expect("a handshake thread panicked")?;
    }
    println!("{total}");
    Ok(())
}

/// One connection: a full handshake, close_notify, then the server's close.
fn handshake(address: SocketAddr, config: &Arc<ClientConfig>) -> Result<()> {
    let mut tcp = TcpStream::connect(address)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = ClientConnection::new(config.clone(), ServerName::try_from(HOST)?)?;
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp)?;
    }
    tls.send_close_notify();
    while tls.wants_write() {
        tls.write_tls(&mut tcp)?;
    }
    tcp.flush()?;
    // The session tickets, the server's close_notify and its FIN: unread.
    let mut sink = [0u8; 4096];
    while tcp.read(&mut sink)? > 0 {}
    Ok(())
}

/// Accepts any certificate and signature: the client's share of the work stays small.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
