//! What the stats page, its CSV export and `/metrics` show, read in one call under the
//! agent's lock ([`crate::api::model::Control::overview`]) without walking the
//! connection table: current flows come from the census (`census.rs`).

use std::{collections::HashMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    api::model::{BackendView, Status, VipView},
    cli::rate,
    config::AdminState,
    health::Operational,
    proxy::ProxyStatus,
    stats::report::{BackendReport, StatsReport, VipReport},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overview {
    pub status: Status,
    /// Every VIP with its backends; `flows` is the census's count.
    pub vips: Vec<VipView>,
    pub stats: StatsReport,
    pub census: CensusView,
    /// The TLS tier's frontends, when a `weir proxy` answers beside the agent (its
    /// control socket next to the API socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ProxyStatus>,
}

/// The last flow census (see `census.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusView {
    /// When it ended (Unix ms); absent before the first one (or without `[stats]`).
    pub at_unix_ms: Option<u64>,
    pub walk_ms: u64,
    pub conntrack_entries: u64,
    pub conntrack_capacity: u32,
    pub nat_entries: u64,
    pub nat_capacity: u32,
}

impl Overview {
    /// The counters of `vip` (by name).
    pub fn vip_report(&self, vip: &str) -> Option<&VipReport> {
        self.stats.vips.iter().find(|v| v.name == vip)
    }

    /// The counters of backend `address` of `vip`.
    pub fn backend_report(&self, vip: &str, address: IpAddr) -> Option<&BackendReport> {
        self.vip_report(vip)?
            .backends
            .iter()
            .find(|b| b.address == address)
    }

    /// The addresses this node announces: those on the `[announce]` interface and those
    /// its VRRP instances hold as master.
    pub fn announced(&self) -> Vec<IpAddr> {
        let mut addresses: Vec<IpAddr> = self
            .status
            .announce
            .iter()
            .flat_map(|a| a.addresses.iter().copied())
            .collect();
        for instance in self.status.vrrp.iter().flat_map(|v| &v.instances) {
            if instance.state == crate::failover::vrrp::state::State::Master {
                addresses.extend(&instance.addresses);
            }
        }
        addresses.sort();
        addresses.dedup();
        addresses
    }
}

/// New flows per second between two reports, per VIP and per backend (HAProxy's
/// session rate).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewFlowRates {
    pub vips: HashMap<String, f64>,
    pub backends: HashMap<(String, IpAddr), f64>,
}

impl NewFlowRates {
    /// The rates from `earlier` to `now`, `seconds` apart; VIPs by name, backends by
    /// address (one that appeared in between has none yet).
    pub fn between(earlier: &StatsReport, now: &StatsReport, seconds: f64) -> Self {
        let mut rates = NewFlowRates::default();
        for vip in &now.vips {
            let before = earlier.vips.iter().find(|v| v.name == vip.name);
            let new_flows = |t: &crate::stats::report::Traffic| t.new_flows;
            if let Some(rate) = rate(
                before.map(|v| new_flows(&v.traffic)),
                vip.traffic.new_flows,
                seconds,
            ) {
                rates.vips.insert(vip.name.clone(), rate);
            }
            for backend in &vip.backends {
                let earlier = before
                    .and_then(|v| v.backends.iter().find(|b| b.address == backend.address))
                    .map(|b| new_flows(&b.traffic));
                if let Some(rate) = rate(earlier, backend.traffic.new_flows, seconds) {
                    rates
                        .backends
                        .insert((vip.name.clone(), backend.address), rate);
                }
            }
        }
        rates
    }

    pub fn vip(&self, vip: &str) -> Option<f64> {
        self.vips.get(vip).copied()
    }

    pub fn backend(&self, vip: &str, address: IpAddr) -> Option<f64> {
        self.backends.get(&(vip.to_owned(), address)).copied()
    }
}

/// A backend's status as HAProxy's stats page shows a server's: the admin state and
/// the health checks' verdict in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendStatus {
    Up,
    /// UP, but its last checks failed.
    GoingDown,
    Down,
    /// DOWN, but its last checks passed.
    GoingUp,
    /// Ready for its established flows only (and UP).
    Drain,
    /// Out by the operator's will, whatever its health.
    Maint,
}

impl BackendStatus {
    pub const ALL: [BackendStatus; 6] = [
        BackendStatus::Up,
        BackendStatus::GoingDown,
        BackendStatus::Down,
        BackendStatus::GoingUp,
        BackendStatus::Drain,
        BackendStatus::Maint,
    ];

    pub fn of(backend: &BackendView) -> Self {
        match (backend.state, backend.health.state) {
            (AdminState::Maint, _) => BackendStatus::Maint,
            (_, Operational::Down) => BackendStatus::Down,
            (_, Operational::Rising) => BackendStatus::GoingUp,
            (AdminState::Drain, _) => BackendStatus::Drain,
            (_, Operational::Falling) => BackendStatus::GoingDown,
            (AdminState::Ready, Operational::Up) => BackendStatus::Up,
        }
    }

    /// In rotation for new flows: UP, going down or not.
    pub fn takes_new_flows(self) -> bool {
        matches!(self, BackendStatus::Up | BackendStatus::GoingDown)
    }

    /// Backends of `vip` that take new flows (HAProxy's active servers).
    pub fn active_backends(vip: &VipView) -> usize {
        vip.backends
            .iter()
            .filter(|b| BackendStatus::of(b).takes_new_flows())
            .count()
    }

    /// As the page and the CSV `status` column write it.
    pub fn label(self) -> &'static str {
        match self {
            BackendStatus::Up => "UP",
            BackendStatus::GoingDown => "UP, going down",
            BackendStatus::Down => "DOWN",
            BackendStatus::GoingUp => "DOWN, going up",
            BackendStatus::Drain => "DRAIN",
            BackendStatus::Maint => "MAINT",
        }
    }

    /// The `state` label of `weir_backend_status`.
    pub fn metric_state(self) -> &'static str {
        match self {
            BackendStatus::Up => "UP",
            BackendStatus::GoingDown => "GOING_DOWN",
            BackendStatus::Down => "DOWN",
            BackendStatus::GoingUp => "GOING_UP",
            BackendStatus::Drain => "DRAIN",
            BackendStatus::Maint => "MAINT",
        }
    }

    /// The row's class, HAProxy's name for it (and its colour, in the page's style).
    pub fn css_class(self) -> &'static str {
        match self {
            BackendStatus::Up => "active_up",
            BackendStatus::GoingDown => "active_going_down",
            BackendStatus::Down => "active_down",
            BackendStatus::GoingUp => "active_going_up",
            BackendStatus::Drain => "active_draining",
            BackendStatus::Maint => "maintain",
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        api::model::{HealthView, InterfaceStatus, LastCheck, VipStatus},
        config::{CheckKind, Forwarding, HashMode, Protocol},
        stats::{interface::InterfaceCounters, report::Traffic},
    };

    fn backend(address: &str, state: AdminState, health: Operational) -> BackendView {
        BackendView {
            address: address.parse().unwrap(),
            weight: 100,
            state,
            flows: 3,
            port: None,
            nat_source: None,
            health: HealthView {
                check: CheckKind::Tcp,
                state: health,
                since_unix_ms: 1_000,
                checks: 20,
                failed_checks: 4,
                down_transitions: 1,
                downtime_ms: 2_500,
                last_check: Some(LastCheck {
                    passed: health.is_up(),
                    reason: "connection refused".into(),
                    duration_us: 1_500,
                    at_unix_ms: 900,
                }),
            },
        }
    }

    /// VIP `web` with a backend of every status (.11 UP, .12 DOWN, .13 DRAIN, .14
    /// MAINT, .15 going down, .16 going up), counters and one interface.
    pub(crate) fn sample() -> Overview {
        use AdminState::*;
        use Operational::*;
        let backends = vec![
            backend("198.18.0.11", Ready, Up),
            backend("198.18.0.12", Ready, Down),
            backend("198.18.0.13", Drain, Up),
            backend("198.18.0.14", Maint, Up),
            backend("198.18.0.15", Ready, Falling),
            backend("198.18.0.16", Ready, Rising),
        ];
        let traffic = Traffic {
            packets: 10,
            bytes: 1_000,
            new_flows: 2,
        };
        let reports = backends
            .iter()
            .map(|b| BackendReport {
                address: b.address,
                traffic,
            })
            .collect();
        Overview {
            status: Status {
                version: "0.1.0".into(),
                uptime_seconds: 3_700,
                config_path: "/etc/weir/weir.toml".into(),
                bpf_pin_dir: "/sys/fs/bpf/weir".into(),
                program_id: Some(7),
                interfaces: vec![InterfaceStatus {
                    name: "eth0".into(),
                    ifindex: 2,
                    mode: "native".into(),
                }],
                vips: 1,
                backends: 6,
                vips_down: 0,
                backends_down: 1,
                announce: None,
                vrrp: None,
            },
            vips: vec![VipView {
                name: "web".into(),
                address: "198.19.0.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
                forwarding: Forwarding::Dsr,
                hash: HashMode::FiveTuple,
                table_size: 65_537,
                status: VipStatus::Up,
                backends,
            }],
            stats: StatsReport {
                verdicts: BTreeMap::from([("tx".into(), 60), ("drop".into(), 1)]),
                counters: BTreeMap::from([("forwarded".into(), 60), ("drop_no_backend".into(), 1)]),
                vips: vec![VipReport {
                    name: "web".into(),
                    address: Some("198.19.0.10".parse().unwrap()),
                    port: 80,
                    protocol: lb_common::PROTO_TCP,
                    traffic: Traffic {
                        packets: 60,
                        bytes: 6_000,
                        new_flows: 12,
                    },
                    backends: reports,
                    firewall: None,
                }],
                host_rules: vec![],
                interfaces: vec![InterfaceCounters {
                    name: "eth0".into(),
                    rx_dropped: 1,
                    tx_dropped: 2,
                    xdp_errors: 5,
                    xdp_drops: 0,
                    driver: BTreeMap::from([("rx_xdp_tx_errors".into(), 5)]),
                }],
            },
            census: CensusView {
                at_unix_ms: Some(1_000),
                walk_ms: 3,
                conntrack_entries: 40,
                conntrack_capacity: 1 << 20,
                nat_entries: 0,
                nat_capacity: 1 << 18,
            },
            tls: None,
        }
    }

    #[test]
    fn new_flow_rates_between_reports() {
        let earlier = sample().stats;
        let mut now = earlier.clone();
        now.vips[0].traffic.new_flows += 30;
        now.vips[0].backends[1].traffic.new_flows += 10;
        let rates = NewFlowRates::between(&earlier, &now, 2.0);
        assert_eq!(rates.vip("web"), Some(15.0));
        assert_eq!(
            rates.backend("web", "198.18.0.12".parse().unwrap()),
            Some(5.0)
        );
        assert_eq!(
            rates.backend("web", "198.18.0.11".parse().unwrap()),
            Some(0.0)
        );
        assert_eq!(rates.backend("web", "198.18.0.99".parse().unwrap()), None);
    }

    #[test]
    fn status_follows_haproxy_precedence() {
        let sample = sample();
        let statuses: Vec<&str> = sample.vips[0]
            .backends
            .iter()
            .map(|b| BackendStatus::of(b).label())
            .collect();
        assert_eq!(
            statuses,
            [
                "UP",
                "DOWN",
                "DRAIN",
                "MAINT",
                "UP, going down",
                "DOWN, going up"
            ]
        );
        // Maint wins over DOWN; DOWN over drain.
        let mut b = backend("198.18.0.11", AdminState::Maint, Operational::Down);
        assert_eq!(BackendStatus::of(&b), BackendStatus::Maint);
        b.state = AdminState::Drain;
        assert_eq!(BackendStatus::of(&b), BackendStatus::Down);
    }
}
