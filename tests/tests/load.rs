//! Tests of the client-load harness (`weir_testbed::load`) against backends' test
//! servers directly, no load balancer: it reports clean traffic as clean, and it sees
//! the failures it exists to catch (a dead server, a black hole). Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    panic::{self, AssertUnwindSafe},
    thread::sleep,
    time::{Duration, Instant},
};

use weir_testbed::{
    DsrTopology,
    load::{Load, LoadReport, LoadSpec, REQUEST_TIMEOUT},
    topology::{HTTP_PORT, backend_v4, backend_v6},
};

fn spec(target: IpAddr) -> LoadSpec {
    LoadSpec {
        target: SocketAddr::new(target, HTTP_PORT),
        streams: 4,
        stream_interval: Duration::from_millis(20),
        short_workers: 2,
    }
}

/// Waits until `more` further requests have been answered.
fn wait_for_answers(load: &Load, more: u64) {
    let (start, _) = load.progress();
    let deadline = Instant::now() + Duration::from_secs(10);
    while load.progress().0 < start + more {
        assert!(Instant::now() < deadline, "no traffic: {load:?}");
        sleep(Duration::from_millis(10));
    }
}

/// Waits until some request has failed.
fn wait_for_failures(load: &Load) {
    let deadline = Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(5);
    while load.progress().1 == 0 {
        assert!(Instant::now() < deadline, "no failure seen: {load:?}");
        sleep(Duration::from_millis(10));
    }
}

/// The message `assert_clean` panics with, or `None` if it passes.
fn assert_clean_message(report: &LoadReport) -> Option<String> {
    let panic = panic::catch_unwind(AssertUnwindSafe(|| report.assert_clean())).err()?;
    Some(
        panic
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "(not a string)".to_owned()),
    )
}

#[test]
fn steady_traffic_gives_a_clean_report() {
    let topology = DsrTopology::with_servers(2).expect("the test bed needs root");
    let client = &topology.client().ns;
    // IPv4 to backend1 and IPv6 to backend2 at the same time.
    let v4 = Load::start(client, spec(backend_v4(1).into())).unwrap();
    let v6 = Load::start(client, spec(backend_v6(2).into())).unwrap();
    wait_for_answers(&v4, 50);
    wait_for_answers(&v6, 50);
    sleep(Duration::from_secs(1));
    assert_eq!(v4.progress().1, 0, "{v4:?}");
    let v4 = v4.stop();
    let v6 = v6.stop();
    for (report, backend) in [(&v4, "backend1"), (&v6, "backend2")] {
        eprintln!("{report}");
        report.assert_clean();
        assert!(report.short_ok >= 20, "{report}");
        // Every stream answered every ~20 ms for over a second.
        assert!(report.stream_requests_ok >= 4 * 20, "{report}");
        assert!(report.elapsed >= Duration::from_secs(1), "{report}");
        assert_eq!(
            report.backends.keys().collect::<Vec<_>>(),
            [backend],
            "{report}"
        );
        assert_eq!(
            report.backends[backend],
            report.short_ok + report.stream_requests_ok,
            "{report}"
        );
        assert!(report.failures.is_empty(), "{report}");
    }
}

#[test]
fn a_stopped_server_breaks_every_stream_and_fails_short_requests() {
    let mut topology = DsrTopology::with_servers(2).expect("the test bed needs root");
    let load = Load::start(&topology.client().ns, spec(backend_v4(1).into())).unwrap();
    wait_for_answers(&load, 50);
    topology.stop_server(1).unwrap();
    wait_for_failures(&load);
    // Give every stream the time to try again.
    sleep(Duration::from_millis(300));
    let report = load.stop();
    eprintln!("{report}");
    assert!(
        report.short_ok > 0 && report.stream_requests_ok > 0,
        "{report}"
    );
    assert_eq!(report.streams_broken, 4, "{report}");
    assert_eq!(
        report.stream_requests_failed, 4,
        "one failure per stream: {report}"
    );
    assert_eq!(report.streams_moved, 0, "{report}");
    assert!(report.short_failed > 0, "{report}");
    assert!(
        !report.failures.is_empty() && report.failures.len() <= 20,
        "{report}"
    );
    assert!(
        report.failures.iter().all(|f| f.starts_with('+')),
        "timestamped: {report}"
    );
    let message = assert_clean_message(&report).expect("assert_clean must fail");
    assert!(
        message.contains("streams broke") && message.contains("short requests failed"),
        "{message}"
    );
    // The server is gone: a new load cannot even open its streams.
    let error = Load::start(&topology.client().ns, spec(backend_v4(1).into()))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("cannot connect to 198.18.0.11:80"),
        "{error}"
    );
}

#[test]
fn a_black_hole_is_detected_by_the_timeouts() {
    let topology = DsrTopology::with_servers(1).expect("the test bed needs root");
    let load = Load::start(&topology.client().ns, spec(backend_v4(1).into())).unwrap();
    wait_for_answers(&load, 50);
    // The backend vanishes without a word: no reset, no FIN, nothing.
    let backend = &topology.backend(1).unwrap().host;
    backend
        .ns
        .ip(&["link", "set", "dev", &backend.ifname, "down"])
        .unwrap();
    wait_for_failures(&load);
    let stopping = Instant::now();
    let report = load.stop();
    eprintln!("{report}");
    assert!(
        stopping.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(2),
        "stop waits at most one timeout: {:?}",
        stopping.elapsed()
    );
    assert_eq!(report.streams_broken, 4, "{report}");
    assert!(report.short_failed > 0, "{report}");
    assert!(
        report.failures.iter().any(|f| f.contains("timed out")),
        "{report}"
    );
    assert!(assert_clean_message(&report).is_some(), "{report}");
}

#[test]
fn only_test_bed_addresses_are_targets() {
    let topology = DsrTopology::with_backends(1).expect("the test bed needs root");
    for target in ["192.0.2.1", "10.0.0.1", "2001:db9::1", "0.0.0.0"] {
        let error = Load::start(&topology.client().ns, spec(target.parse().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a test bed address"), "{error}");
    }
}
