//! `/metrics`: the overview in the Prometheus (OpenMetrics) text format, encoded by the
//! `prometheus-client` crate from a registry built afresh for each scrape (the values
//! are the dataplane's and the agent's, read in one overview: nothing to keep between
//! scrapes). Names follow HAProxy's exporter where they map (`docs/operations.md`).

use std::{
    sync::atomic::AtomicU64,
    time::{Duration, SystemTime},
};

use lb_common::Counter as DataplaneCounter;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    api::model::VipStatus,
    failover::vrrp::state::State as VrrpState,
    proxy::ProxyStatus,
    stats::overview::{BackendStatus, Overview},
};

/// The exposition formats, by what the scraper accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, as the crate encodes it (what Prometheus asks for).
    OpenMetrics,
    /// The classic text format 0.0.4 (`promtool check metrics`, older scrapers).
    Text,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it, else the classic text format.
    pub fn accepted(accept: Option<&str>) -> Format {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

type Labels = Vec<(&'static str, String)>;
type Gauges = Family<Labels, Gauge>;
type Seconds = Family<Labels, Gauge<f64, AtomicU64>>;
type Counters = Family<Labels, Counter>;
type SecondsCounters = Family<Labels, Counter<f64, AtomicU64>>;

/// Registers families on one registry.
struct Builder(Registry);

impl Builder {
    fn gauge(&mut self, name: &str, help: &str) -> Gauges {
        let family = Gauges::default();
        self.0.register(name, help, family.clone());
        family
    }

    fn seconds(&mut self, name: &str, help: &str) -> Seconds {
        let family = Seconds::default();
        self.0.register(name, help, family.clone());
        family
    }

    /// `name` without `_total`: the encoder adds it.
    fn counter(&mut self, name: &str, help: &str) -> Counters {
        let family = Counters::default();
        self.0.register(name, help, family.clone());
        family
    }

    fn seconds_counter(&mut self, name: &str, help: &str) -> SecondsCounters {
        let family = SecondsCounters::default();
        self.0.register(name, help, family.clone());
        family
    }
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

fn seconds(ms: u64) -> f64 {
    Duration::from_millis(ms).as_secs_f64()
}

/// The exposition of `overview` at `now`.
pub fn render(overview: &Overview, now: SystemTime, format: Format) -> String {
    let mut b = Builder(Registry::default());
    let now_ms = crate::api::model::unix_ms(now);

    b.seconds("weir_uptime_seconds", "Time since the agent started")
        .get_or_create(&vec![])
        .set(overview.status.uptime_seconds as f64);

    backends(&mut b, overview, now_ms);
    vips(&mut b, overview);
    dataplane(&mut b, overview);
    node(&mut b, overview);
    if let Some(tls) = &overview.tls {
        frontends(&mut b, tls);
    }

    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &b.0);
    match format {
        Format::OpenMetrics => text,
        Format::Text => classic(&text),
    }
}

/// The crate's OpenMetrics text as the classic format has it: a counter family is named
/// by its `_total` samples (OpenMetrics names it without), and there is no `# EOF`.
fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            continue;
        }
        // HELP comes right before TYPE: look at the TYPE to name both.
        let counter = |line: &str| {
            line.strip_prefix("# TYPE ")
                .and_then(|rest| rest.strip_suffix(" counter"))
                .map(str::to_owned)
        };
        let family = match line.strip_prefix("# HELP ") {
            Some(_) => lines.peek().and_then(|next| counter(next)),
            None => counter(line),
        };
        match family {
            Some(name) => {
                let prefix = if line.starts_with("# HELP ") {
                    "# HELP "
                } else {
                    "# TYPE "
                };
                out.push_str(prefix);
                out.push_str(&name);
                out.push_str("_total");
                out.push_str(&line[prefix.len() + name.len()..]);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The TLS tier's frontends (HAProxy's `haproxy_frontend_*`).
fn frontends(b: &mut Builder, tls: &ProxyStatus) {
    let connections = b.counter(
        "weir_frontend_connections",
        "Client connections accepted by the frontend",
    );
    let open = b.gauge(
        "weir_frontend_current_connections",
        "Client connections open now",
    );
    let handshakes = b.counter("weir_frontend_handshakes", "TLS handshakes completed");
    let failed = b.counter(
        "weir_frontend_handshake_failures",
        "TLS handshakes that failed or timed out",
    );
    let requests = b.counter("weir_frontend_requests", "HTTP requests received");
    let responses = b.counter(
        "weir_frontend_http_responses",
        "HTTP responses sent, by status class (1xx … 5xx)",
    );
    let errors = b.counter(
        "weir_frontend_proxy_errors",
        "Requests the proxy answered itself, by reason: no_backend and connect (503), timeout (504), backend (502)",
    );
    let backends = b.gauge(
        "weir_frontend_active_backends",
        "Backends of the frontend's pool taking requests (ready, weighted and UP)",
    );
    let response_time = b.seconds_counter(
        "weir_frontend_response_time_seconds",
        "Total time from sending requests to their response heads (divide by requests for the mean)",
    );
    for frontend in &tls.frontends {
        let id = labels([("frontend", &frontend.name)]);
        let c = &frontend.counters;
        connections.get_or_create(&id).inc_by(c.connections);
        open.get_or_create(&id).set(c.open_connections as i64);
        handshakes.get_or_create(&id).inc_by(c.handshakes);
        failed
            .get_or_create(&id)
            .inc_by(c.handshake_failures + c.handshake_timeouts);
        requests.get_or_create(&id).inc_by(c.requests);
        for (class, count) in c.responses.iter().enumerate() {
            let mut with_class = id.clone();
            with_class.push(("code", format!("{}xx", class + 1)));
            responses.get_or_create(&with_class).inc_by(*count);
        }
        for (reason, count) in [
            ("no_backend", c.no_backend),
            ("connect", c.backend_connect_errors),
            ("timeout", c.backend_timeouts),
            ("backend", c.backend_errors),
        ] {
            let mut with_reason = id.clone();
            with_reason.push(("reason", reason.to_owned()));
            errors.get_or_create(&with_reason).inc_by(count);
        }
        let eligible = frontend.backends.iter().filter(|b| b.eligible()).count();
        backends.get_or_create(&id).set(eligible as i64);
        response_time
            .get_or_create(&id)
            .inc_by(c.response_time_us_total as f64 / 1e6);
    }
}

fn backends(b: &mut Builder, overview: &Overview, now_ms: u64) {
    let status = b.gauge(
        "weir_backend_status",
        "1 for the backend's current status (UP, GOING_DOWN, DOWN, GOING_UP, DRAIN, MAINT), 0 for the others",
    );
    let weight = b.gauge("weir_backend_weight", "The backend's weight");
    let current = b.gauge(
        "weir_backend_current_flows",
        "Live flows on the backend, as the last flow census counted them",
    );
    let flows = b.counter("weir_backend_flows", "New flows sent to the backend");
    let packets = b.counter(
        "weir_backend_packets",
        "Packets forwarded to the backend (client to backend)",
    );
    let bytes = b.counter(
        "weir_backend_bytes",
        "Bytes forwarded to the backend (client to backend)",
    );
    let failures = b.counter(
        "weir_backend_check_failures",
        "Health checks of the backend that failed",
    );
    let up_down = b.counter(
        "weir_backend_check_up_down",
        "Changes of the backend from UP to DOWN",
    );
    let duration = b.seconds(
        "weir_backend_check_duration_seconds",
        "How long the backend's last health check took",
    );
    let downtime = b.seconds_counter(
        "weir_backend_downtime_seconds",
        "Total time the backend has been DOWN, the current DOWN period included",
    );
    let last_change = b.seconds(
        "weir_backend_last_change_seconds",
        "Time since the backend last changed between UP and DOWN",
    );
    for vip in &overview.vips {
        for backend in &vip.backends {
            let address = backend.address.to_string();
            let id = labels([("vip", &vip.name), ("backend", &address)]);
            let current_status = BackendStatus::of(backend);
            for state in BackendStatus::ALL {
                let mut with_state = id.clone();
                with_state.push(("state", state.metric_state().to_owned()));
                status
                    .get_or_create(&with_state)
                    .set(i64::from(state == current_status));
            }
            weight.get_or_create(&id).set(backend.weight.into());
            current.get_or_create(&id).set(backend.flows as i64);
            if let Some(report) = overview.backend_report(&vip.name, backend.address) {
                flows.get_or_create(&id).inc_by(report.traffic.new_flows);
                packets.get_or_create(&id).inc_by(report.traffic.packets);
                bytes.get_or_create(&id).inc_by(report.traffic.bytes);
            }
            let health = &backend.health;
            failures.get_or_create(&id).inc_by(health.failed_checks);
            up_down.get_or_create(&id).inc_by(health.down_transitions);
            if let Some(last) = &health.last_check {
                duration
                    .get_or_create(&id)
                    .set(last.duration_us as f64 / 1e6);
            }
            downtime
                .get_or_create(&id)
                .inc_by(seconds(health.downtime_ms));
            if health.since_unix_ms != 0 {
                last_change
                    .get_or_create(&id)
                    .set(seconds(now_ms.saturating_sub(health.since_unix_ms)));
            }
        }
    }
}

fn vips(b: &mut Builder, overview: &Overview) {
    let status = b.gauge(
        "weir_vip_status",
        "1 for the VIP's current status: UP (some backend can take new flows) or DOWN",
    );
    let active = b.gauge(
        "weir_vip_active_backends",
        "Backends of the VIP that are UP (going down or not) and not drained or in maint",
    );
    let current = b.gauge(
        "weir_vip_current_flows",
        "Live flows of the VIP, as the last flow census counted them",
    );
    let flows = b.counter("weir_vip_flows", "New flows to the VIP");
    let packets = b.counter("weir_vip_packets", "Packets to the VIP");
    let bytes = b.counter("weir_vip_bytes", "Bytes to the VIP");
    for vip in &overview.vips {
        let id = labels([("vip", &vip.name)]);
        for (state, is) in [
            ("UP", vip.status == VipStatus::Up),
            ("DOWN", vip.status == VipStatus::Down),
        ] {
            let mut with_state = id.clone();
            with_state.push(("state", state.to_owned()));
            status.get_or_create(&with_state).set(i64::from(is));
        }
        let up = BackendStatus::active_backends(vip);
        active.get_or_create(&id).set(up as i64);
        current
            .get_or_create(&id)
            .set(vip.backends.iter().map(|b| b.flows as i64).sum());
        if let Some(report) = overview.vip_report(&vip.name) {
            flows.get_or_create(&id).inc_by(report.traffic.new_flows);
            packets.get_or_create(&id).inc_by(report.traffic.packets);
            bytes.get_or_create(&id).inc_by(report.traffic.bytes);
        }
    }
}

fn dataplane(b: &mut Builder, overview: &Overview) {
    let stats = &overview.stats;
    let packets = b.counter(
        "weir_dataplane_packets",
        "Packets the XDP program handled, by the reason of its verdict",
    );
    let verdicts = b.counter(
        "weir_dataplane_verdicts",
        "Packets the XDP program handled, by verdict (pass, tx, redirect, drop)",
    );
    let events = b.counter(
        "weir_dataplane_events",
        "Events the XDP program counted (new and rescheduled flows, NAT replies …)",
    );
    for counter in DataplaneCounter::ALL {
        let value = stats.counter(counter);
        match counter.verdict() {
            Some(_) => packets.get_or_create(&labels([("reason", counter.name())])),
            None => events.get_or_create(&labels([("event", counter.name())])),
        }
        .inc_by(value);
    }
    for (verdict, value) in &stats.verdicts {
        verdicts
            .get_or_create(&labels([("verdict", verdict)]))
            .inc_by(*value);
    }
    let census = &overview.census;
    let one = |family: Gauges, value: i64| family.get_or_create(&vec![]).set(value);
    one(
        b.gauge(
            "weir_conntrack_entries",
            "Entries in the connection table, live or not (an LRU), at the last flow census",
        ),
        census.conntrack_entries as i64,
    );
    one(
        b.gauge(
            "weir_conntrack_capacity",
            "Capacity of the connection table",
        ),
        census.conntrack_capacity.into(),
    );
    one(
        b.gauge("weir_nat_entries", "NAT flows at the last flow census"),
        census.nat_entries as i64,
    );
    one(
        b.gauge("weir_nat_capacity", "Capacity of the NAT flow table"),
        census.nat_capacity.into(),
    );
    if let Some(at) = census.at_unix_ms {
        b.seconds(
            "weir_flow_census_timestamp_seconds",
            "Unix time of the last flow census",
        )
        .get_or_create(&vec![])
        .set(seconds(at));
    }
    b.seconds(
        "weir_flow_census_walk_seconds",
        "How long the last flow census walked the flow tables",
    )
    .get_or_create(&vec![])
    .set(seconds(census.walk_ms));

    let xdp_errors = b.counter(
        "weir_interface_xdp_errors",
        "Driver counters of frames an XDP program sent (TX, redirect) that the interface could not send",
    );
    let xdp_drops = b.counter(
        "weir_interface_xdp_drops",
        "Driver counters of XDP drops (the program's own XDP_DROP included)",
    );
    let dropped = b.counter(
        "weir_interface_dropped",
        "The kernel's rx_dropped and tx_dropped of the interface",
    );
    for i in &stats.interfaces {
        let id = labels([("interface", &i.name)]);
        xdp_errors.get_or_create(&id).inc_by(i.xdp_errors);
        xdp_drops.get_or_create(&id).inc_by(i.xdp_drops);
        for (direction, value) in [("rx", i.rx_dropped), ("tx", i.tx_dropped)] {
            dropped
                .get_or_create(&labels([("interface", &i.name), ("direction", direction)]))
                .inc_by(value);
        }
    }
}

fn node(b: &mut Builder, overview: &Overview) {
    let state = b.gauge(
        "weir_vrrp_state",
        "1 for the VRRP instance's current state (initialize, backup, master, fault), per address family",
    );
    let priority = b.gauge(
        "weir_vrrp_effective_priority",
        "The priority the VRRP adverts carry (after tracking)",
    );
    if let Some(vrrp) = &overview.status.vrrp {
        priority
            .get_or_create(&vec![])
            .set(vrrp.effective_priority.into());
        for instance in &vrrp.instances {
            for candidate in [
                VrrpState::Initialize,
                VrrpState::Backup,
                VrrpState::Master,
                VrrpState::Fault,
            ] {
                state
                    .get_or_create(&labels([
                        ("family", &instance.family),
                        ("state", &candidate.to_string()),
                    ]))
                    .set(i64::from(instance.state == candidate));
            }
        }
    }
    b.gauge(
        "weir_announced_vips",
        "VIP addresses this node announces ([announce] interface, VRRP master)",
    )
    .get_or_create(&vec![])
    .set(overview.announced().len() as i64);
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::stats::overview::tests::sample;

    /// Sample lines by metric name: the sets of label names, and the values by labels.
    fn parse(text: &str) -> BTreeMap<String, BTreeMap<String, f64>> {
        let mut metrics: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            metrics
                .entry(name.to_owned())
                .or_default()
                .insert(labels.to_owned(), value.parse().expect("a number"));
        }
        metrics
    }

    fn label_names(labels: &str) -> BTreeSet<String> {
        labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| l.split_once('=').unwrap().0.to_owned())
            .collect()
    }

    #[test]
    fn names_and_label_sets() {
        let text = render(
            &sample(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(61),
            Format::OpenMetrics,
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let metrics = parse(&text);
        let expected: [(&str, &[&str]); 31] = [
            ("weir_uptime_seconds", &[]),
            ("weir_backend_status", &["vip", "backend", "state"]),
            ("weir_backend_weight", &["vip", "backend"]),
            ("weir_backend_current_flows", &["vip", "backend"]),
            ("weir_backend_flows_total", &["vip", "backend"]),
            ("weir_backend_packets_total", &["vip", "backend"]),
            ("weir_backend_bytes_total", &["vip", "backend"]),
            ("weir_backend_check_failures_total", &["vip", "backend"]),
            ("weir_backend_check_up_down_total", &["vip", "backend"]),
            ("weir_backend_check_duration_seconds", &["vip", "backend"]),
            ("weir_backend_downtime_seconds_total", &["vip", "backend"]),
            ("weir_backend_last_change_seconds", &["vip", "backend"]),
            ("weir_vip_status", &["vip", "state"]),
            ("weir_vip_active_backends", &["vip"]),
            ("weir_vip_current_flows", &["vip"]),
            ("weir_vip_flows_total", &["vip"]),
            ("weir_vip_packets_total", &["vip"]),
            ("weir_vip_bytes_total", &["vip"]),
            ("weir_dataplane_packets_total", &["reason"]),
            ("weir_dataplane_verdicts_total", &["verdict"]),
            ("weir_dataplane_events_total", &["event"]),
            ("weir_conntrack_entries", &[]),
            ("weir_conntrack_capacity", &[]),
            ("weir_nat_entries", &[]),
            ("weir_nat_capacity", &[]),
            ("weir_flow_census_timestamp_seconds", &[]),
            ("weir_flow_census_walk_seconds", &[]),
            ("weir_interface_xdp_errors_total", &["interface"]),
            ("weir_interface_xdp_drops_total", &["interface"]),
            ("weir_interface_dropped_total", &["interface", "direction"]),
            ("weir_announced_vips", &[]),
        ];
        for (name, names) in expected {
            let samples = metrics
                .get(name)
                .unwrap_or_else(|| panic!("no {name} in\n{text}"));
            let names: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
            for labels in samples.keys() {
                assert_eq!(label_names(labels), names, "{name}{{{labels}}}");
            }
        }
        // Without [vrrp], its families have no samples; without a proxy, neither have
        // the frontends'.
        assert!(!metrics.contains_key("weir_vrrp_state"));
        assert!(!metrics.contains_key("weir_frontend_requests_total"));
    }

    #[test]
    fn a_proxy_beside_the_agent_adds_its_frontends() {
        let mut overview = sample();
        overview.tls = Some(crate::proxy::cli::tests::sample_status());
        let text = render(&overview, SystemTime::UNIX_EPOCH, Format::OpenMetrics);
        let metrics = parse(&text);
        for (name, names) in [
            ("weir_frontend_connections_total", &["frontend"][..]),
            ("weir_frontend_current_connections", &["frontend"]),
            ("weir_frontend_handshakes_total", &["frontend"]),
            ("weir_frontend_handshake_failures_total", &["frontend"]),
            ("weir_frontend_requests_total", &["frontend"]),
            ("weir_frontend_http_responses_total", &["frontend", "code"]),
            ("weir_frontend_proxy_errors_total", &["frontend", "reason"]),
            ("weir_frontend_active_backends", &["frontend"]),
            ("weir_frontend_response_time_seconds_total", &["frontend"]),
        ] {
            let samples = metrics
                .get(name)
                .unwrap_or_else(|| panic!("no {name} in\n{text}"));
            let names: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
            for labels in samples.keys() {
                assert_eq!(label_names(labels), names, "{name}{{{labels}}}");
            }
        }
        let one = |name: &str, labels: &str| metrics[name][labels];
        assert_eq!(one("weir_frontend_requests_total", "frontend=\"www\""), 2.0);
        let class = "frontend=\"www\",code=\"5xx\"";
        assert_eq!(one("weir_frontend_http_responses_total", class), 1.0);
        let timeout = "frontend=\"www\",reason=\"timeout\"";
        assert_eq!(one("weir_frontend_proxy_errors_total", timeout), 1.0);
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(61);
        let openmetrics = render(&sample(), at, Format::OpenMetrics);
        let text = render(&sample(), at, Format::Text);
        assert!(openmetrics.contains("# TYPE weir_vip_flows counter\n"));
        assert!(text.contains(
            "# HELP weir_vip_flows_total New flows to the VIP.\n# TYPE weir_vip_flows_total counter\n"
        ), "{text}");
        assert!(text.contains("# TYPE weir_conntrack_entries gauge\n"));
        assert!(!text.contains("# EOF"));
        // Same samples.
        let samples = |t: &str| parse(t);
        assert_eq!(samples(&text), samples(&openmetrics));
        assert_eq!(
            Format::accepted(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::accepted(Some("text/plain")), Format::Text);
        assert_eq!(Format::accepted(None), Format::Text);
    }

    #[test]
    fn values() {
        let text = render(
            &sample(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(61),
            Format::OpenMetrics,
        );
        let metrics = parse(&text);
        let value = |name: &str, labels: &str| metrics[name][labels];
        let down = "vip=\"web\",backend=\"198.18.0.12\"";
        assert_eq!(
            value("weir_backend_status", &format!("{down},state=\"DOWN\"")),
            1.0
        );
        assert_eq!(
            value("weir_backend_status", &format!("{down},state=\"UP\"")),
            0.0
        );
        assert_eq!(value("weir_backend_flows_total", down), 2.0);
        assert_eq!(value("weir_backend_bytes_total", down), 1000.0);
        assert_eq!(value("weir_backend_check_failures_total", down), 4.0);
        assert_eq!(value("weir_backend_check_up_down_total", down), 1.0);
        assert_eq!(value("weir_backend_check_duration_seconds", down), 0.0015);
        assert_eq!(value("weir_backend_downtime_seconds_total", down), 2.5);
        assert_eq!(value("weir_backend_last_change_seconds", down), 60.0);
        assert_eq!(value("weir_vip_active_backends", "vip=\"web\""), 2.0);
        assert_eq!(value("weir_vip_current_flows", "vip=\"web\""), 18.0);
        assert_eq!(
            value("weir_dataplane_packets_total", "reason=\"drop_no_backend\""),
            1.0
        );
        assert_eq!(
            value("weir_dataplane_verdicts_total", "verdict=\"tx\""),
            60.0
        );
        assert_eq!(
            value("weir_interface_xdp_errors_total", "interface=\"eth0\""),
            5.0
        );
        assert_eq!(
            value(
                "weir_interface_dropped_total",
                "interface=\"eth0\",direction=\"tx\""
            ),
            2.0
        );
        assert_eq!(value("weir_conntrack_capacity", ""), 1_048_576.0);
    }
}
