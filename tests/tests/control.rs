//! End to end: the control API and the `weir` CLI against a running agent — listings,
//! runtime changes that apply at once, persist and survive a restart, and bad input that
//! is refused with a clear message and changes nothing.

use std::{
    io::{Read, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    process::Output,
};

use serde_json::Value;
use weir_testbed::{
    DsrTopology,
    agent::{Agent, AgentDirs},
    http_get,
    topology::{HTTP_PORT, VIP_V4, backend_v4},
};

fn config(topology: &DsrTopology, extra_agent: &str) -> String {
    let mut text = format!(
        "[agent]\ninterfaces = [\"{}\"]\n{extra_agent}\n[[vip]]\nname = \"web\"\naddress = \"{VIP_V4}\"\n\
         port = {HTTP_PORT}\ntable_size = 1021\n",
        topology.lb_ifname()
    );
    for n in 1..=3 {
        text += &format!(
            "[[vip.backend]]\naddress = \"{}\"\n",
            IpAddr::from(backend_v4(n))
        );
    }
    text
}

fn ok(output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "weir failed ({}): {}{}",
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs a CLI command expected to fail; returns its exit code and stderr.
fn fails(output: Output) -> (i32, String) {
    assert!(
        !output.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(agent: &Agent, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(agent.cli(&all).unwrap())).expect("the CLI prints JSON with --json")
}

/// Backend address → (weight, state) as the API reports them.
fn backends(agent: &Agent) -> Vec<(String, u64, String)> {
    json(agent, &["backend", "list", "web"])
        .as_array()
        .expect("a list of backends")
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["weight"].as_u64().unwrap(),
                b["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn answers(topology: &DsrTopology, requests: usize) -> Vec<String> {
    let url = format!("http://{VIP_V4}:{HTTP_PORT}/");
    (0..requests)
        .map(|_| {
            http_get(&topology.client().ns, &url)
                .unwrap()
                .body
                .trim()
                .to_owned()
        })
        .collect()
}

#[test]
fn status_and_listings() {
    let topology = DsrTopology::with_servers(3).unwrap();
    let agent = Agent::start(topology.lb_ns(), &config(&topology, "")).unwrap();

    let status = json(&agent, &["status"]);
    assert_eq!(status["vips"], 1);
    assert_eq!(status["backends"], 3);
    assert_eq!(status["interfaces"][0]["name"], topology.lb_ifname());
    assert!(status["program_id"].as_u64().is_some(), "{status}");

    let table = ok(agent.cli(&["vip", "list"]).unwrap());
    assert!(
        table.contains("web") && table.contains(&VIP_V4.to_string()),
        "{table}"
    );
    assert_eq!(
        backends(&agent),
        (1..=3)
            .map(|n| (backend_v4(n).to_string(), 100, "ready".to_owned()))
            .collect::<Vec<_>>()
    );
    let stats = json(&agent, &["stats"]);
    assert!(stats["counters"].is_object(), "{stats}");
}

#[test]
fn runtime_changes_apply_at_once_and_survive_a_restart() {
    let mut topology = DsrTopology::with_servers(3).unwrap();
    let dirs = AgentDirs::new().unwrap();
    let text = config(&topology, "");
    let agent = Agent::start_with(topology.lb_ns(), &text, &dirs, &[]).unwrap();

    ok(agent
        .cli(&["backend", "drain", "web", "198.18.0.13"])
        .unwrap());
    assert!(
        !answers(&topology, 60).contains(&"backend3".to_owned()),
        "a drained backend gets no new flow"
    );

    let added = topology.add_backend().unwrap();
    topology.start_server(added).unwrap();
    let address = backend_v4(added).to_string();
    ok(agent
        .cli(&["backend", "add", "web", &address, "--weight", "300"])
        .unwrap());
    assert!(
        answers(&topology, 60).contains(&format!("backend{added}")),
        "new flows reach the added backend"
    );
    ok(agent
        .cli(&["backend", "weight", "web", "198.18.0.11", "0"])
        .unwrap());
    ok(agent
        .cli(&["backend", "remove", "web", "198.18.0.12"])
        .unwrap());
    let expected = vec![
        ("198.18.0.11".to_owned(), 0, "ready".to_owned()),
        ("198.18.0.13".to_owned(), 100, "drain".to_owned()),
        (address.clone(), 300, "ready".to_owned()),
    ];
    assert_eq!(backends(&agent), expected);

    // The changes are kept in state_dir: a new agent (after kill -9) runs with them,
    // and so does a reload of the unchanged file.
    agent.kill().unwrap();
    let agent = Agent::start_with(topology.lb_ns(), &text, &dirs, &[]).unwrap();
    assert_eq!(backends(&agent), expected);
    ok(agent.cli(&["reload"]).unwrap());
    assert_eq!(backends(&agent), expected);
    ok(agent
        .cli(&["backend", "ready", "web", "198.18.0.13"])
        .unwrap());
    assert_eq!(backends(&agent)[1].2, "ready");
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let topology = DsrTopology::with_servers(3).unwrap();
    let agent = Agent::start(topology.lb_ns(), &config(&topology, "")).unwrap();
    let before = backends(&agent);

    let cases: [(&[&str], &str); 5] = [
        (
            &["backend", "drain", "nope", "198.18.0.11"],
            "no VIP named \"nope\"",
        ),
        (
            &["backend", "weight", "web", "198.18.0.11", "20000"],
            "weight must be in 0..=10000, got 20000",
        ),
        (&["backend", "add", "web", "2001:db8::99"], "address family"),
        (
            &["backend", "add", "web", "198.18.0.11"],
            "already has backend 198.18.0.11",
        ),
        (
            &["backend", "remove", "web", "198.18.0.99"],
            "has no backend 198.18.0.99",
        ),
    ];
    for (args, message) in cases {
        let (code, stderr) = fails(agent.cli(args).unwrap());
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let (code, stderr) = fails(
        agent
            .cli(&["backend", "add", "web", "not-an-address"])
            .unwrap(),
    );
    assert_eq!(code, 2, "a usage error: {stderr}");

    // Malformed JSON straight to the API: 400 with an error body.
    let mut stream = UnixStream::connect(agent.socket()).unwrap();
    let body = "{\"address\": ";
    write!(
        stream,
        "POST /v1/vips/web/backends HTTP/1.1\r\nHost: weir\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("\"error\""), "{response}");

    assert_eq!(backends(&agent), before, "nothing changed");

    // No agent behind the socket: a clear message and exit code 4.
    let output = std::process::Command::new(weir_testbed::weir_bin().unwrap())
        .args(["--socket", "/nonexistent/weir.sock", "status"])
        .output()
        .unwrap();
    let (code, stderr) = fails(output);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("cannot reach the weir agent"), "{stderr}");
}

#[test]
fn the_tcp_listener_requires_the_token() {
    let topology = DsrTopology::with_servers(1).unwrap();
    let dirs = AgentDirs::new().unwrap();
    let token_file = dirs.state_dir().with_file_name("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // Loopback only (plain HTTP): the client runs in the LB's namespace.
    let listen = "127.0.0.1:9900";
    let extra = format!(
        "api_listen = \"{listen}\"\napi_token_file = \"{}\"\n",
        token_file.display()
    );
    let _agent =
        Agent::start_with(topology.lb_ns(), &config(&topology, &extra), &dirs, &[]).unwrap();

    let client = topology.lb_ns();
    let url = format!("http://{listen}/v1/status");
    let code = |args: &[&str]| {
        let mut argv = vec![
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ];
        argv.extend_from_slice(args);
        argv.push(&url);
        client.run(&argv).unwrap()
    };
    assert_eq!(code(&[]), "401");
    assert_eq!(code(&["-H", "Authorization: Bearer wrong"]), "401");
    assert_eq!(code(&["-H", "Authorization: Bearer s3cret-token"]), "200");
}

/// The rolling-deploy step: `weir backend drain --wait` returns once the backend's last
/// connection has ended, and draining breaks none of them.
#[test]
fn drain_wait_returns_when_the_last_connection_ends() {
    use std::time::{Duration, Instant};
    use weir_testbed::load::{Load, LoadSpec};

    let topology = DsrTopology::with_servers(3).unwrap();
    let agent = Agent::start(topology.lb_ns(), &config(&topology, "")).unwrap();
    let load = Load::start(
        &topology.client().ns,
        LoadSpec {
            target: std::net::SocketAddr::new(VIP_V4.into(), HTTP_PORT),
            // Enough streams that some are on the drained backend.
            streams: 24,
            stream_interval: Duration::from_millis(50),
            short_workers: 2,
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let mut drain = std::process::Command::new(weir_testbed::weir_bin().unwrap())
        .arg("--socket")
        .arg(agent.socket())
        .args([
            "backend",
            "drain",
            "web",
            "198.18.0.13",
            "--wait",
            "--timeout",
            "60s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        drain.try_wait().unwrap().is_none(),
        "drain --wait waits while connections are open"
    );

    let report = load.stop();
    report.assert_clean();
    assert!(
        report.backends.contains_key("backend3"),
        "some streams were on the drained backend: {report}"
    );
    let status = drain.wait().unwrap();
    assert!(status.success(), "drain --wait: {status}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it returned soon after the streams closed"
    );
}

#[test]
fn vips_are_added_and_removed_at_runtime() {
    let mut topology = DsrTopology::with_servers(2).unwrap();
    let agent = Agent::start(topology.lb_ns(), &config(&topology, "")).unwrap();
    topology.add_vip("198.19.0.77".parse().unwrap()).unwrap();

    ok(agent
        .cli(&[
            "vip",
            "add",
            "api",
            "198.19.0.77",
            "80",
            "--table-size",
            "251",
            "--backend",
            "198.18.0.11:10",
        ])
        .unwrap());
    let url = format!("http://198.19.0.77:{HTTP_PORT}/");
    let client = &topology.client().ns;
    let mut reached = false;
    for _ in 0..20 {
        if let Ok(response) = http_get(client, &url) {
            assert_eq!(response.body.trim(), "backend1");
            reached = true;
            break;
        }
    }
    assert!(reached, "the new VIP forwards");
    assert_eq!(json(&agent, &["status"])["vips"], 2);

    let (code, stderr) = fails(
        agent
            .cli(&["vip", "add", "again", "198.19.0.77", "80"])
            .unwrap(),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("already serves 198.19.0.77:80/tcp"),
        "{stderr}"
    );
    let (code, stderr) = fails(
        agent
            .cli(&[
                "vip",
                "add",
                "odd",
                "198.19.0.78",
                "80",
                "--table-size",
                "100",
            ])
            .unwrap(),
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("table_size: 100 is not prime"), "{stderr}");

    ok(agent.cli(&["vip", "remove", "api"]).unwrap());
    assert_eq!(json(&agent, &["status"])["vips"], 1);
    assert!(
        http_get(client, &url).is_err(),
        "a removed VIP no longer forwards"
    );
}
