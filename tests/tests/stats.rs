//! End to end: the `[stats]` listener of an agent in the LB namespace, seen from the
//! client namespace. A real headless Chromium loads the page through basic
//! authentication (screenshots under `target/`), its DOM shows a killed backend DOWN
//! within the health checks' detection bound; the admin form drains a backend and no
//! new flow reaches it; `promtool check metrics` accepts `/metrics`, whose counters
//! match the traffic sent; `weir stats` and the metrics carry the interface's own loss
//! counters. Needs root, `chromium` and `prometheus` (promtool).

use std::{
    io::Write,
    net::IpAddr,
    path::PathBuf,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use weir_testbed::{
    DsrTopology,
    agent::Agent,
    browser, http_get,
    netns::Netns,
    topology::{HTTP_PORT, LB_V4, VIP_V4, backend_v4},
    workspace_root,
};

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(300);
const FALL: u32 = 2;
const STATS_PORT: u16 = 8404;
const USER: &str = "admin";
const PASSWORD: &str = "s3cret-page";
/// Scheduling allowance on a busy 2-core machine.
const ALLOWANCE: Duration = Duration::from_millis(1000);

/// A users file with `USER`, removed on drop.
struct UsersFile(PathBuf);

impl UsersFile {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("weir-stats-users-{}", std::process::id()));
        let hash = bcrypt::hash(PASSWORD, 6).unwrap();
        std::fs::write(&path, format!("# test users\n{USER}:{hash}\n")).unwrap();
        UsersFile(path)
    }
}

impl Drop for UsersFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config(topology: &DsrTopology, users: &UsersFile) -> String {
    let mut text = format!(
        "[agent]\ninterfaces = [\"{}\"]\n\n[stats]\nlisten = \"{LB_V4}:{STATS_PORT}\"\n\
         auth = \"{}\"\nadmin = true\nrefresh = \"1s\"\n\n[[vip]]\nname = \"web\"\n\
         address = \"{VIP_V4}\"\nport = {HTTP_PORT}\ntable_size = 1021\n[vip.health]\n\
         interval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = 2\nfall = {FALL}\n",
        topology.lb_ifname(),
        users.0.display(),
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    );
    for backend in topology.backends() {
        text += &format!(
            "[[vip.backend]]\naddress = \"{}\"\n",
            IpAddr::from(backend_v4(backend.number))
        );
    }
    text
}

fn page_url(credentials: bool, path: &str) -> String {
    if credentials {
        format!("http://{USER}:{PASSWORD}@{LB_V4}:{STATS_PORT}{path}")
    } else {
        format!("http://{LB_V4}:{STATS_PORT}{path}")
    }
}

/// `curl ARGS… URL` in the client namespace: (status, body).
fn curl(ns: &Netns, args: &[&str], url: &str) -> (u16, String) {
    let mut argv = vec![
        "curl",
        "--silent",
        "--max-time",
        "5",
        "--write-out",
        "\n%{http_code}",
    ];
    argv.extend_from_slice(args);
    argv.push(url);
    let out = ns.run(&argv).expect("curl runs");
    let (body, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (status.parse().expect("an HTTP status"), body.to_owned())
}

fn authenticated(ns: &Netns, path: &str) -> String {
    let credentials = format!("{USER}:{PASSWORD}");
    let (status, body) = curl(ns, &["--user", &credentials], &page_url(false, path));
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The value of the sample `name{labels}` (labels as written, or "" for none).
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.parse().expect("a number"))
}

/// The `<tr>` of backend `n` in a page or DOM dump.
fn row(page: &str, n: u8) -> Option<&str> {
    let needle = format!("data-backend=\"{}\"", IpAddr::from(backend_v4(n)));
    let at = page.find(&needle)?;
    let open = page[..at].rfind("<tr")?;
    let end = at + page[at..].find("</tr>")?;
    Some(&page[open..end])
}

fn screenshot(ns: &Netns, name: &str) -> PathBuf {
    let path = workspace_root().join("target").join(name);
    browser::screenshot(ns, &page_url(true, "/stats"), &path).expect("a screenshot");
    eprintln!("screenshot: {}", path.display());
    path
}

#[test]
fn the_stats_page_in_a_browser_metrics_and_the_admin_form() {
    let users = UsersFile::new();
    let mut topology = DsrTopology::with_servers(3).unwrap();
    let agent = Agent::start(topology.lb_ns(), &config(&topology, &users)).unwrap();

    // The page asks for a user; a wrong password is refused.
    let (status, _) = curl(&topology.client().ns, &[], &page_url(false, "/stats"));
    assert_eq!(status, 401);
    let (status, _) = curl(
        &topology.client().ns,
        &["--user", "admin:wrong"],
        &page_url(false, "/stats"),
    );
    assert_eq!(status, 401);

    // Traffic: one new flow per request.
    const REQUESTS: u64 = 40;
    let url = format!("http://{VIP_V4}/");
    for _ in 0..REQUESTS {
        let response = http_get(&topology.client().ns, &url).expect("GET through the VIP");
        assert_eq!(response.status, 200);
    }

    // /metrics: promtool accepts it, and the counters are the traffic sent.
    let metrics = authenticated(&topology.client().ns, "/metrics");
    promtool_check(&metrics);
    let vip = "vip=\"web\"";
    assert_eq!(
        metric(&metrics, "weir_vip_flows_total", vip),
        Some(REQUESTS as f64)
    );
    let per_backend: f64 = (1..=3)
        .map(|n| {
            let labels = format!("vip=\"web\",backend=\"{}\"", IpAddr::from(backend_v4(n)));
            metric(&metrics, "weir_backend_flows_total", &labels).expect("a backend series")
        })
        .sum();
    assert_eq!(per_backend, REQUESTS as f64);
    let packets = metric(&metrics, "weir_vip_packets_total", vip).unwrap();
    let bytes = metric(&metrics, "weir_vip_bytes_total", vip).unwrap();
    // Each request: SYN, ACK, the request, its ACKs and the close: at least 5 packets of
    // at least 40 bytes of headers, all forwarded (`tx`).
    assert!(packets >= 5.0 * REQUESTS as f64, "{packets} packets");
    assert!(
        bytes >= 40.0 * packets,
        "{bytes} bytes for {packets} packets"
    );
    assert_eq!(
        metric(&metrics, "weir_dataplane_packets_total", "reason=\"tx\""),
        Some(packets)
    );
    let lb = format!("interface=\"{}\"", topology.lb_ifname());
    assert!(
        metric(&metrics, "weir_interface_xdp_errors_total", &lb).is_some(),
        "{metrics}"
    );

    // The driver's counters are read (a veth's, summed over queues).
    let report = agent.cli(&["--json", "stats"]).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("JSON");
    let driver = &report["interfaces"][0]["driver"];
    assert!(driver.get("rx_xdp_tx_errors").is_some(), "{report}");
    // `weir stats` shows the interface's own counters too.
    let stats = agent.cli(&["stats"]).unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.contains(&format!("interface {}: xdp_errors ", topology.lb_ifname())),
        "{stats}"
    );

    // The census counts the connection table within its interval.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let metrics = authenticated(&topology.client().ns, "/metrics");
        let entries = metric(&metrics, "weir_conntrack_entries", "").unwrap();
        if entries >= REQUESTS as f64 {
            eprintln!("census: {entries} connection-table entries");
            break;
        }
        assert!(Instant::now() < deadline, "no census: {metrics}");
        sleep(Duration::from_millis(500));
    }

    // A browser through basic authentication: every backend UP.
    let dom = browser::dump_dom(&topology.client().ns, &page_url(true, "/stats"))
        .expect("the page loads");
    for n in 1..=3 {
        let row = row(&dom, n).unwrap_or_else(|| panic!("no row for backend {n}:\n{dom}"));
        assert!(row.contains("class=\"active_up\""), "{row}");
    }
    screenshot(&topology.client().ns, "stats-page.png");

    // Kill backend 1: the page shows it DOWN within the checks' detection bound (the
    // same as the health tests': fall × interval + timeout + one interval), give or
    // take one page load.
    let killed = Instant::now();
    topology.stop_server(1).unwrap();
    let mut load = Duration::ZERO;
    let detected = loop {
        let started = Instant::now();
        let dom = browser::dump_dom(&topology.client().ns, &page_url(true, "/stats"))
            .expect("the page loads");
        load = load.max(started.elapsed());
        if row(&dom, 1).is_some_and(|r| r.contains("class=\"active_down\"")) {
            // When the DOM was taken: the end of the load.
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "never DOWN:\n{dom}"
        );
    };
    let bound = INTERVAL * FALL + TIMEOUT + INTERVAL;
    eprintln!(
        "the DOM taken {detected:?} after the kill shows DOWN (bound {bound:?} + a page load, {load:?})"
    );
    assert!(detected <= bound + load + ALLOWANCE, "{detected:?}");
    screenshot(&topology.client().ns, "stats-page-down.png");

    // The admin form drains backend 2 (the CSRF token comes from the page).
    let page = authenticated(&topology.client().ns, "/stats");
    let at = page.find("name=\"token\" value=\"").expect("admin forms") + 20;
    let token = &page[at..at + 64];
    let backend2 = IpAddr::from(backend_v4(2)).to_string();
    let credentials = format!("{USER}:{PASSWORD}");
    let form = |token: &str| format!("token={token}&vip=web&backend={backend2}&action=drain");
    let (status, _) = curl(
        &topology.client().ns,
        &["--user", &credentials, "--data", &form("forged")],
        &page_url(false, "/stats"),
    );
    assert_eq!(status, 403, "a wrong token is refused");
    let (status, body) = curl(
        &topology.client().ns,
        &["--user", &credentials, "--data", &form(token)],
        &page_url(false, "/stats"),
    );
    assert_eq!(status, 303, "{body}");
    let dom = browser::dump_dom(&topology.client().ns, &page_url(true, "/stats"))
        .expect("the page loads");
    let drained = row(&dom, 2).expect("backend 2's row");
    assert!(drained.contains("class=\"active_draining\""), "{drained}");
    let listed = agent.cli(&["backend", "list", "web"]).unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("drain"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    // No new flow reaches it: every answer comes from backend 3 (1 is DOWN).
    for _ in 0..30 {
        let response = http_get(&topology.client().ns, &url).expect("GET through the VIP");
        assert_eq!(response.status, 200);
        assert_eq!(response.body.trim(), "backend3");
    }
    drop(agent);
}

/// `promtool check metrics` on `text` (its exit status says whether it parses and
/// passes the lint).
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
