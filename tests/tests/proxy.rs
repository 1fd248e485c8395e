//! End to end: the TLS tier. `weir agent` and `weir proxy` run on the LB namespace on one
//! weir.toml; three plain HTTP backends (the test server); real clients (curl with
//! --http1.1 and --http2, openssl s_client) in the client namespace. Certificates come
//! from a test CA made with rcgen (ECDSA P-256). Needs root.
//!
//! The load here is curl processes in a loop (a new connection and full handshake per
//! request) plus keep-alive streams (`curl --rate`, one connection for many requests),
//! so a refused connection, a failed handshake and a broken keep-alive connection all
//! show.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle, sleep},
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::Value;
use weir_testbed::{
    Child, DsrTopology, Netns,
    agent::Agent,
    http_get,
    server::{FORWARDED_PATH, HANG_PATH},
    topology::{CLIENT_V4, HTTP_PORT, LB_V4, LB_V6, VIP_V4, backend_v4},
    weir_bin,
};

/// What `weir proxy` logs once it serves, and after a reload.
const READY: &str = "weir proxy ready";
const RELOADED: &str = "certificates reloaded";
const HOST: &str = "www.test";

/// A test CA and the certificate directory of the frontend, removed on drop.
struct Certificates {
    home: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Certificates {
    fn new() -> Certificates {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let home = std::env::temp_dir().join(format!(
            "weir-proxy-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(home.join("certs")).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "weir test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        std::fs::write(home.join("ca.pem"), ca_cert.pem()).unwrap();
        Certificates {
            home,
            ca_cert,
            ca_key,
        }
    }

    fn dir(&self) -> PathBuf {
        self.home.join("certs")
    }

    fn ca(&self) -> PathBuf {
        self.home.join("ca.pem")
    }

    /// A certificate (chain and key) for `names`, with subject CN `cn`, as PEM text.
    fn issue(&self, cn: &str, names: &[&str]) -> String {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    /// Writes `certs/<file>` atomically (a reload never reads half a file).
    fn install(&self, file: &str, pem: &str) {
        let temporary = self.home.join(format!("{file}.new"));
        std::fs::write(&temporary, pem).unwrap();
        std::fs::rename(&temporary, self.dir().join(file)).unwrap();
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// The test bed: plain backends, an agent with VIP `web` (HTTP checks every 200 ms, rise
/// 2, fall 2) and frontend `www` on the LB's addresses, port 443 (and 80: redirects).
struct Bed {
    topology: DsrTopology,
    certificates: Certificates,
    agent: Agent,
}

fn config(topology: &DsrTopology, certificates: &Path, extra: &str) -> String {
    let mut text = format!(
        "[agent]\ninterfaces = [\"{}\"]\n\n[[vip]]\nname = \"web\"\naddress = \"{VIP_V4}\"\nport = {HTTP_PORT}\n\
         [vip.health]\nkind = \"http\"\ninterval = \"200ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n",
        topology.lb_ifname()
    );
    for backend in topology.backends() {
        text += &format!(
            "[[vip.backend]]\naddress = \"{}\"\n",
            IpAddr::from(backend_v4(backend.number))
        );
    }
    text += &format!(
        "\n[[frontend]]\nname = \"www\"\nbind = [\"{LB_V4}:443\", \"[{LB_V6}]:443\"]\n\
         certificates = \"{}\"\nredirect_http = [\"{LB_V4}:80\"]\nhsts = \"max-age=600\"\nbackends = \"web\"\n{extra}\
         \n[stats]\nlisten = \"{STATS}\"\n",
        certificates.display()
    );
    text
}

/// The agent's stats page and metrics, on the load balancer's loopback.
const STATS: &str = "127.0.0.1:8404";

impl Bed {
    /// `extra`: more keys for the frontend (e.g. its timeouts table).
    fn new(extra: &str) -> Bed {
        let topology = DsrTopology::with_plain_servers(3).unwrap();
        let certificates = Certificates::new();
        certificates.install("1-www.pem", &certificates.issue("www", &[HOST]));
        certificates.install(
            "2-api.pem",
            &certificates.issue("api wildcard", &["*.api.test"]),
        );
        let agent = Agent::start(
            &topology.lb().ns,
            &config(&topology, &certificates.dir(), extra),
        )
        .unwrap();
        Bed {
            topology,
            certificates,
            agent,
        }
    }

    /// Starts `weir proxy` on the agent's file and waits until every backend takes
    /// requests.
    fn proxy(&self) -> Child {
        let weir = weir_bin().unwrap();
        let mut proxy = self
            .topology
            .lb()
            .ns
            .spawn(&[
                weir.as_os_str(),
                "proxy".as_ref(),
                "--config".as_ref(),
                self.agent.config_path().as_os_str(),
            ])
            .unwrap();
        proxy.wait_for_log(READY, Duration::from_secs(10)).unwrap();
        proxy
            .wait_for_log("3 of 3 take requests", Duration::from_secs(10))
            .unwrap();
        proxy
    }

    fn client(&self) -> &Netns {
        &self.topology.client().ns
    }

    /// curl's arguments that reach the frontend by name and trust the test CA.
    fn curl_args(&self) -> Vec<String> {
        let ca = self.certificates.ca().display().to_string();
        [
            "--silent",
            "--show-error",
            "--max-time",
            "5",
            "--cacert",
            &ca,
            "--resolve",
            &format!("{HOST}:443:{LB_V4}"),
            "--resolve",
            &format!("{HOST}:80:{LB_V4}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Runs curl in the client namespace with the common arguments and `args`.
    fn curl(&self, args: &[&str]) -> std::process::Output {
        self.client()
            .command("curl")
            .args(self.curl_args())
            .args(args)
            .output()
            .unwrap()
    }

    /// The certificate subject that `openssl s_client` gets for `server_name` (None: no
    /// SNI), and the ALPN protocol it negotiated offering `alpn`.
    fn handshake(&self, server_name: Option<&str>, alpn: &str) -> (String, String) {
        let mut args = vec![
            "s_client".to_owned(),
            "-connect".to_owned(),
            format!("{LB_V4}:443"),
            "-alpn".to_owned(),
            alpn.to_owned(),
            "-CAfile".to_owned(),
            self.certificates.ca().display().to_string(),
        ];
        match server_name {
            Some(name) => args.extend(["-servername".to_owned(), name.to_owned()]),
            None => args.push("-noservername".to_owned()),
        }
        let output = self
            .client()
            .command("openssl")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let line = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} in s_client's output:\n{text}"))
                .trim()
                .to_owned()
        };
        (line("subject="), line("ALPN protocol: "))
    }
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "curl failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `weir proxy status --json` of the proxy beside `agent`.
fn proxy_status(agent: &Agent) -> Value {
    let output = Command::new(weir_bin().unwrap())
        .args(["proxy", "status", "--json", "--config"])
        .arg(agent.config_path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn https_with_http1_http2_sni_alpn_forwarding_and_redirects() {
    let bed = Bed::new("");
    let _proxy = bed.proxy();
    let url = format!("https://{HOST}/");

    // HTTP/1.1 and HTTP/2, each answered by a backend, with HSTS.
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = stdout(&bed.curl(&[
            flag,
            "--include",
            "--write-out",
            "version=%{http_version}",
            &url,
        ]));
        assert!(out.contains(&format!("version={version}")), "{out}");
        assert!(
            out.contains("strict-transport-security: max-age=600"),
            "{out}"
        );
        assert!(out.contains("\r\n\r\nbackend"), "{out}");
    }
    // IPv6.
    let v6 = bed
        .client()
        .command("curl")
        .args(bed.curl_args())
        .args(["--resolve", &format!("{HOST}:443:[{LB_V6}]"), "-6", &url])
        .output()
        .unwrap();
    assert!(stdout(&v6).starts_with("backend"));

    // SNI: each name gets its certificate; no SNI or an unknown name the default one.
    assert_eq!(
        bed.handshake(Some(HOST), "h2,http/1.1"),
        ("CN = www".into(), "h2".into())
    );
    assert_eq!(
        bed.handshake(Some("a.api.test"), "http/1.1"),
        ("CN = api wildcard".into(), "http/1.1".into())
    );
    assert_eq!(bed.handshake(None, "h2").0, "CN = www");
    assert_eq!(bed.handshake(Some("other.test"), "h2").0, "CN = www");

    // The backend sees the client's address and the scheme.
    for flag in ["--http1.1", "--http2"] {
        let out = stdout(&bed.curl(&[flag, &format!("https://{HOST}{FORWARDED_PATH}")]));
        assert!(
            out.contains(&format!("x-forwarded-for: {CLIENT_V4}\n")),
            "{out}"
        );
        assert!(out.contains("x-forwarded-proto: https\n"), "{out}");
        assert!(out.contains("x-forwarded-port: 443\n"), "{out}");
    }

    // Requests spread over the three backends (smooth weighted round-robin: evenly).
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let urls: Vec<String> = (0..30).map(|_| url.clone()).collect();
    let mut args = vec!["--http2"];
    args.extend(urls.iter().map(String::as_str));
    for line in stdout(&bed.curl(&args)).lines() {
        *seen.entry(line.to_owned()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n == 10), "{seen:?}");

    // Plain HTTP is redirected.
    let out = stdout(&bed.curl(&["--include", &format!("http://{HOST}/a?b=c")]));
    assert!(out.starts_with("HTTP/1.1 301"), "{out}");
    assert!(
        out.contains(&format!("location: https://{HOST}/a?b=c")),
        "{out}"
    );

    // The status shows the frontend, its certificates, backends and counters.
    let status = proxy_status(&bed.agent);
    let frontend = &status["frontends"][0];
    assert_eq!(frontend["name"], "www");
    assert_eq!(frontend["certificates"][1]["names"][0], "*.api.test");
    assert_eq!(frontend["backends"].as_array().unwrap().len(), 3);
    assert_eq!(frontend["counters"]["requests"], 35, "{frontend}");
    assert!(
        frontend["counters"]["handshakes"].as_u64().unwrap() >= 10,
        "{frontend}"
    );
    assert_eq!(frontend["counters"]["redirects"], 1);

    // The table of `weir proxy status`, and the frontends' lines in `weir status`.
    let table = Command::new(weir_bin().unwrap())
        .args(["proxy", "status", "--config"])
        .arg(bed.agent.config_path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("FRONTEND"), "{table}");
    let www = table.lines().find(|l| l.starts_with("www ")).expect(&table);
    assert!(www.contains(" web ") && www.contains(" 3/3 "), "{table}");
    let status = bed.agent.cli(&["status"]).unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("TLS tier (weir proxy"), "{status}");

    // The agent's stats page and metrics show the frontend too.
    let lb = &bed.topology.lb().ns;
    let page = http_get(lb, &format!("http://{STATS}/stats")).unwrap();
    assert!(page.body.contains("id=\"frontend-www\""), "{}", page.body);
    let metrics = http_get(lb, &format!("http://{STATS}/metrics")).unwrap();
    let requests = metrics
        .body
        .lines()
        .find(|l| l.starts_with("weir_frontend_requests_total{frontend=\"www\"}"))
        .unwrap_or_else(|| panic!("{}", metrics.body));
    let served: f64 = requests.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(served >= 30.0, "{requests}");
}

/// HTTPS load from the client: `workers` threads each running one-shot curls (a new
/// connection and handshake each) until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    workers: Vec<JoinHandle<Tally>>,
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    backends: BTreeMap<String, u64>,
    /// `(seconds since start, what)`.
    failures: Vec<(f64, String)>,
}

impl Load {
    fn start(bed: &Bed, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers = (0..workers)
            .map(|i| {
                let (stop, ok) = (stop.clone(), ok.clone());
                let ns = bed.client().name().to_owned();
                let args = bed.curl_args();
                let http = if i % 2 == 0 { "--http1.1" } else { "--http2" };
                thread::spawn(move || {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        let at = started.elapsed().as_secs_f64();
                        let output = Command::new("ip")
                            .args(["netns", "exec", &ns, "curl"])
                            .args(&args)
                            .args([
                                http,
                                "--write-out",
                                " %{http_code}",
                                &format!("https://{HOST}/"),
                            ])
                            .output()
                            .expect("curl runs");
                        let text = String::from_utf8_lossy(&output.stdout);
                        match text.split_whitespace().collect::<Vec<_>>()[..] {
                            [backend, "200"] if output.status.success() => {
                                tally.ok += 1;
                                ok.fetch_add(1, Ordering::Relaxed);
                                *tally.backends.entry(backend.to_owned()).or_default() += 1;
                            }
                            _ => tally.failures.push((
                                at,
                                format!(
                                    "{text:?} {}",
                                    String::from_utf8_lossy(&output.stderr).trim()
                                ),
                            )),
                        }
                    }
                    tally
                })
            })
            .collect();
        Load { stop, ok, workers }
    }

    fn wait_for_answers(&self, more: u64) {
        let target = self.ok.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the load makes no progress");
            sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for worker in self.workers {
            let tally = worker.join().unwrap();
            total.ok += tally.ok;
            total.failures.extend(tally.failures);
            for (backend, n) in tally.backends {
                *total.backends.entry(backend).or_default() += n;
            }
        }
        total
    }
}

/// A keep-alive stream: `count` requests on one connection, `rate` per second, with
/// `flag` (--http1.1 or --http2). Returns, per request, the backend, the status and the
/// number of new connections it took.
fn stream(
    bed: &Bed,
    flag: &str,
    count: usize,
    rate: u32,
) -> JoinHandle<Vec<(String, String, String)>> {
    let mut command = bed.client().command("curl");
    command.args(bed.curl_args()).args([
        flag,
        "--rate",
        &format!("{rate}/s"),
        "--write-out",
        "%{http_code} %{num_connects}\n",
        &format!("https://{HOST}/?[1-{count}]"),
    ]);
    thread::spawn(move || {
        let output = command.output().expect("curl runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .map(|pair| {
                let (status, connects) = pair
                    .get(1)
                    .and_then(|l| l.split_once(' '))
                    .unwrap_or(("?", "?"));
                (pair[0].to_owned(), status.to_owned(), connects.to_owned())
            })
            .collect()
    })
}

fn assert_stream_clean(
    results: &[(String, String, String)],
    count: usize,
    reconnects_allowed: bool,
) {
    assert_eq!(results.len(), count, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(backend, status, _)| status == "200" && backend.starts_with("backend")),
        "{results:?}"
    );
    if !reconnects_allowed {
        let new_connections: usize = results
            .iter()
            .map(|(_, _, n)| n.parse::<usize>().unwrap())
            .sum();
        assert_eq!(
            new_connections, 1,
            "the stream's connection was not kept: {results:?}"
        );
    }
}

fn backend_cli(bed: &Bed, args: &[&str]) {
    let output = bed.agent.cli(args).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_pool_follows_health_and_admin_states_under_load() {
    let mut bed = Bed::new("");
    let mut proxy = bed.proxy();
    let load = Load::start(&bed, 4);
    load.wait_for_answers(20);

    // A backend killed: connections to it are refused until it is DOWN, and each such
    // request is retried on another backend: no request fails.
    bed.topology.stop_server(2).unwrap();
    proxy
        .wait_for_log("2 of 3 take requests", Duration::from_secs(5))
        .unwrap();
    load.wait_for_answers(20);

    // Drained: no new requests, while the others keep them.
    backend_cli(&bed, &["backend", "drain", "web", "198.18.0.11"]);
    proxy
        .wait_for_log(
            "1 of 3 take requests: 198.18.0.13:80",
            Duration::from_secs(5),
        )
        .unwrap();
    // Requests sent to it before are logged when they end: let them.
    sleep(Duration::from_millis(300));
    let drained_at = proxy.log().len();
    load.wait_for_answers(30);
    let tally = load.stop();
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:?}",
        tally.failures
    );
    let after_drain = &proxy.log()[drained_at..];
    let to_drained = after_drain
        .lines()
        .filter(|l| l.contains("weir::access") && l.contains("web/198.18.0.11:80"))
        .count();
    assert_eq!(
        to_drained, 0,
        "requests went to the drained backend:\n{after_drain}"
    );
    println!("{} requests, backends {:?}", tally.ok, tally.backends);
}

#[test]
fn certificates_reload_and_the_proxy_restarts_under_load_without_a_failure() {
    let bed = Bed::new("[frontend.timeouts]\ndrain = \"5s\"\n");
    let mut proxy = bed.proxy();
    // Connections queued at the old proxy move to the new one (see operations.md).
    bed.topology
        .lb()
        .ns
        .sysctl("net.ipv4.tcp_migrate_req", "1")
        .unwrap();
    let load = Load::start(&bed, 4);
    load.wait_for_answers(20);

    // A new certificate for www.test, reloaded under load: new handshakes get it, a
    // keep-alive stream of each protocol continues on its connection.
    let streams = [
        stream(&bed, "--http1.1", 40, 10),
        stream(&bed, "--http2", 40, 10),
    ];
    sleep(Duration::from_millis(1000));
    bed.certificates
        .install("1-www.pem", &bed.certificates.issue("www renewed", &[HOST]));
    proxy.signal(libc::SIGHUP).unwrap();
    proxy
        .wait_for_log(RELOADED, Duration::from_secs(5))
        .unwrap();
    assert_eq!(bed.handshake(Some(HOST), "h2").0, "CN = www renewed");
    for stream in streams {
        assert_stream_clean(&stream.join().unwrap(), 40, false);
    }

    // A key that does not match its certificate: refused, the current one serves on.
    let good = bed.certificates.issue("www bad", &[HOST]);
    let other = bed.certificates.issue("other", &[HOST]);
    let cert_end = good.find("-----END CERTIFICATE-----").unwrap() + 26;
    let key_start = other.find("-----BEGIN PRIVATE KEY-----").unwrap();
    bed.certificates.install(
        "1-www.pem",
        &format!("{}{}", &good[..cert_end], &other[key_start..]),
    );
    let output = Command::new(weir_bin().unwrap())
        .args(["proxy", "reload", "--config"])
        .arg(bed.agent.config_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("the private key does not match the certificate"),
        "{stderr}"
    );
    assert_eq!(bed.handshake(Some(HOST), "h2").0, "CN = www renewed");

    // Graceful restart: a new proxy binds beside the old one, the old one stops.
    let streams = [
        stream(&bed, "--http1.1", 40, 10),
        stream(&bed, "--http2", 40, 10),
    ];
    sleep(Duration::from_millis(500));
    bed.certificates
        .install("1-www.pem", &bed.certificates.issue("www", &[HOST]));
    let new = bed.proxy();
    let stopped = Instant::now();
    let status = proxy.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "the old proxy exited with {status}");
    println!("old proxy stopped in {:?}", stopped.elapsed());
    load.wait_for_answers(40);
    for stream in streams {
        // HTTP/1.1 streams reconnect after the old proxy closes them between requests.
        assert_stream_clean(&stream.join().unwrap(), 40, true);
    }
    let tally = load.stop();
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:?}",
        tally.failures
    );
    println!("{} requests, backends {:?}", tally.ok, tally.backends);
    drop(new);
}

#[test]
fn bad_clients_are_closed_and_others_are_served() {
    let bed = Bed::new("[frontend.timeouts]\nheader_read = \"1s\"\nhandshake = \"1s\"\n");
    let proxy = bed.proxy();
    let target = SocketAddr::from((LB_V4, 443));
    let closed_within = |mut stream: TcpStream, bound: Duration| {
        stream
            .set_read_timeout(Some(bound + Duration::from_secs(2)))
            .unwrap();
        let started = Instant::now();
        let mut sink = Vec::new();
        // Whatever it answers (a TLS alert), the connection ends.
        let _ = stream.read_to_end(&mut sink);
        assert!(
            started.elapsed() < bound + Duration::from_secs(1),
            "not closed in time"
        );
    };
    bed.client()
        .enter(|| {
            // Garbage instead of a ClientHello.
            let mut garbage = TcpStream::connect(target).unwrap();
            garbage
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            closed_within(garbage, Duration::ZERO);
            // Nothing at all: the handshake timeout.
            closed_within(TcpStream::connect(target).unwrap(), Duration::from_secs(1));
        })
        .unwrap();

    // Oversized headers: 431 and closed.
    let big = format!("x-big: {}", "a".repeat(20_000));
    let out = stdout(&bed.curl(&[
        "--http1.1",
        "--write-out",
        "%{http_code}",
        "-H",
        &big,
        &format!("https://{HOST}/"),
    ]));
    assert!(out.ends_with("431"), "{out}");

    // Slowloris: a TLS connection that sends its head a byte now and then is closed after
    // header_read, while another client is served.
    let mut slow = bed
        .client()
        .command("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("{LB_V4}:443"),
            "-servername",
            HOST,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut input = slow.stdin.take().unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET / HTTP/1.1\r\nHost: www.test\r\nX-Slow: "
        .iter()
        .cycle()
        .take(40)
    {
        if input
            .write_all(&[*byte])
            .and_then(|()| input.flush())
            .is_err()
        {
            closed = true;
            break;
        }
        if let Ok(Some(_)) = slow.try_wait() {
            closed = true;
            break;
        }
        sleep(Duration::from_millis(100));
    }
    let served = stdout(&bed.curl(&[&format!("https://{HOST}/")]));
    assert!(served.starts_with("backend"), "{served}");
    if !closed {
        closed = slow.wait().is_ok();
    }
    assert!(
        closed && started.elapsed() < Duration::from_secs(4),
        "slowloris not closed: {:?}",
        started.elapsed()
    );
    let _ = slow.kill();
    let _ = slow.wait();
    drop(proxy);
}

#[test]
fn a_backend_that_does_not_answer_gets_a_504_and_proxy_v2_carries_the_client() {
    let bed = Bed::new("forward = \"proxy-v2\"\n[frontend.timeouts]\nresponse = \"1s\"\n");
    let proxy = bed.proxy();

    // The backend reads the PROXY v2 header: the client's address and the one it reached.
    for flag in ["--http1.1", "--http2"] {
        let out = stdout(&bed.curl(&[flag, &format!("https://{HOST}{FORWARDED_PATH}")]));
        assert!(
            out.contains(&format!("proxy-v2: {CLIENT_V4}:"))
                && out.contains(&format!(" {LB_V4}:443\n")),
            "{out}"
        );
        assert!(!out.contains("x-forwarded-for"), "{out}");
    }

    // No response head within timeouts.response: 504, logged with the backend.
    let started = Instant::now();
    let out = stdout(&bed.curl(&[
        "--http2",
        "--write-out",
        "%{http_code}",
        &format!("https://{HOST}{HANG_PATH}"),
    ]));
    assert!(out.ends_with("504"), "{out}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let log = proxy.log();
    assert!(
        log.contains("504 Gateway Timeout: no response within 1s"),
        "{log}"
    );
    assert!(log.contains(" sH \"GET /hang HTTP/2.0\""), "{log}");
    assert_eq!(
        proxy_status(&bed.agent)["frontends"][0]["counters"]["backend_timeouts"],
        1
    );
}
