//! The operations the control API offers, and the JSON shapes it exchanges (`/v1`).
//!
//! The HTTP layer (`server.rs`) maps routes to [`Control`] and errors to status codes; the
//! agent implements [`Control`] (`agent/operations.rs`); the CLI (`cli/`) speaks the same
//! shapes. Keeping the shapes here, apart from both, is what lets the OpenAPI document,
//! the server and the client agree.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::api::firewall::{FirewallEdit, FirewallView};
use crate::{
    config::{AdminState, CheckKind, Forwarding, HashMode, Protocol},
    failover::vrrp::state::State as VrrpState,
    health::Operational,
    stats::{overview::Overview, report::StatsReport},
};

/// Unix time in milliseconds, as the API's `*_unix_ms` fields carry it (0 before 1970).
pub fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The API's version, the first segment of every path.
pub const API_VERSION: &str = "v1";

/// `GET /v1/status`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: u64,
    pub config_path: String,
    pub bpf_pin_dir: String,
    /// The XDP program's kernel id.
    pub program_id: Option<u32>,
    pub interfaces: Vec<InterfaceStatus>,
    pub vips: usize,
    pub backends: usize,
    /// VIPs that cannot take new flows (no backend ready and UP).
    #[serde(default)]
    pub vips_down: usize,
    /// Backends whose health checks say DOWN.
    #[serde(default)]
    pub backends_down: usize,
    /// Route announcement, when `[announce]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceStatus>,
    /// Present when `[vrrp]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp: Option<VrrpStatus>,
}

/// VIP failover (`[vrrp]`): one instance per address family of the VIPs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpStatus {
    pub interface: String,
    pub vrid: u8,
    /// As configured.
    pub priority: u8,
    /// After tracking: what the adverts carry.
    pub effective_priority: u8,
    pub instances: Vec<VrrpInstanceStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpInstanceStatus {
    /// "ipv4" or "ipv6".
    pub family: String,
    pub state: VrrpState,
    /// This node's address in the adverts.
    pub address: IpAddr,
    /// The current master (this node's address when master), if known.
    pub master: Option<IpAddr>,
    /// Master_Adver_Interval: the master's advert interval, as learned.
    pub master_advert_interval_ms: u64,
    /// The VIP addresses this instance holds while master.
    pub addresses: Vec<IpAddr>,
    /// The latest state changes, oldest first.
    pub transitions: Vec<VrrpTransition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpTransition {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub from: VrrpState,
    pub to: VrrpState,
    pub reason: String,
}

/// The VIP addresses the agent keeps on its announce interface (for the routing daemon).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    pub interface: String,
    /// Addresses on the interface now: those of the VIPs that serve.
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    /// "native", "generic" or "adopted".
    pub mode: String,
}

/// A VIP with its backends (`GET /v1/vips`, `GET /v1/vips/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipView {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// `dsr` or `nat` (absent from older agents: DSR).
    #[serde(default)]
    pub forwarding: Forwarding,
    pub hash: HashMode,
    pub table_size: u32,
    /// `down` when no backend can take new flows (none ready, weighted and UP): its new
    /// flows are dropped and counted (`drop_no_backend`).
    #[serde(default)]
    pub status: VipStatus,
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VipStatus {
    #[default]
    Up,
    Down,
}

/// A backend of a VIP (`GET /v1/vips/{name}/backends`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub address: IpAddr,
    pub weight: u32,
    /// The admin state (the operator's); `health` says what the checks find.
    pub state: AdminState,
    /// Live entries of the connection table on this backend.
    pub flows: u64,
    /// NAT: the port the backend receives on (absent: the client's destination port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// NAT: the load balancer's source address towards the backend, as programmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_source: Option<IpAddr>,
    #[serde(default)]
    pub health: HealthView,
}

/// What the health checks say of a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// tcp, http, https, exec or none (always up).
    pub check: CheckKind,
    /// up, falling ("up, going down"), down or rising ("down, going up"); a backend
    /// that is not up takes no traffic whatever its admin state.
    pub state: Operational,
    /// Unix time (milliseconds) of its last change between up and down, or of when the
    /// agent started checking it.
    pub since_unix_ms: u64,
    pub checks: u64,
    pub failed_checks: u64,
    /// Changes from UP to DOWN since the agent started checking it.
    #[serde(default)]
    pub down_transitions: u64,
    /// Total time DOWN since the agent started checking it, the current period included.
    #[serde(default)]
    pub downtime_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<LastCheck>,
}

impl Default for HealthView {
    fn default() -> Self {
        HealthView {
            check: CheckKind::None,
            state: Operational::Up,
            since_unix_ms: 0,
            checks: 0,
            failed_checks: 0,
            down_transitions: 0,
            downtime_ms: 0,
            last_check: None,
        }
    }
}

/// The last health check of a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCheck {
    pub passed: bool,
    /// What happened: "connected", "HTTP status 503", "timeout at connect", …
    pub reason: String,
    pub duration_us: u64,
    /// Unix time (milliseconds) it ended.
    pub at_unix_ms: u64,
}

/// `POST /v1/vips/{name}/backends`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBackend {
    pub address: IpAddr,
    /// NAT only: the port the backend listens on (default: the VIP's port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Default ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AdminState>,
}

/// `POST /v1/vips`: a VIP as the configuration file describes one (same defaults).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVip {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HashMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    /// The keys of the file's `[vip.health]` table, same names, values and defaults
    /// (`{"kind": "http", "path": "/health", "interval": "500ms"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// dsr or nat (default dsr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<Forwarding>,
    /// NAT only: the source address towards the backends (default: the host's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_source: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<NewBackend>,
}

/// `PATCH /v1/vips/{name}/backends/{address}`: what to change; absent fields stay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendChange {
    pub weight: Option<u32>,
    pub state: Option<AdminState>,
}

/// A live connection-table entry (`GET /v1/flows?vip=NAME&backend=ADDR`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    pub vip: String,
    pub protocol: Protocol,
    pub client: SocketAddr,
    pub destination: SocketAddr,
    pub backend: IpAddr,
}

/// `POST /v1/reload`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Map writes the reload needed (0: nothing changed).
    pub writes: usize,
}

/// Every error body: `{"error": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Why an operation failed; the HTTP layer maps each kind to a status code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 422: the request is well formed but not acceptable (validation).
    #[error("{0}")]
    Invalid(String),
    /// 409: it conflicts with the current state (e.g. the backend exists already).
    #[error("{0}")]
    Conflict(String),
    /// 500: the dataplane or the host failed; the state is unchanged.
    #[error("{0}")]
    Internal(String),
}

/// What the control API can do. Every change is validated whole before anything is
/// written; an error leaves the running state exactly as it was.
pub trait Control: Send {
    fn status(&self) -> Status;
    fn vips(&self) -> Vec<VipView>;
    fn vip(&self, name: &str) -> Result<VipView, ControlError>;
    fn add_vip(&mut self, vip: NewVip) -> Result<VipView, ControlError>;
    fn remove_vip(&mut self, name: &str) -> Result<(), ControlError>;
    fn add_backend(&mut self, vip: &str, backend: NewBackend) -> Result<BackendView, ControlError>;
    fn remove_backend(&mut self, vip: &str, address: IpAddr) -> Result<(), ControlError>;
    fn change_backend(
        &mut self,
        vip: &str,
        address: IpAddr,
        change: BackendChange,
    ) -> Result<BackendView, ControlError>;
    fn flows(
        &self,
        vip: Option<&str>,
        backend: Option<IpAddr>,
    ) -> Result<Vec<FlowView>, ControlError>;
    fn stats(&self) -> Result<StatsReport, ControlError>;
    /// Everything the stats page and `/metrics` show, without walking the connection
    /// table (current flows: the last census).
    fn overview(&self) -> Result<Overview, ControlError>;
    fn reload(&mut self) -> Result<ReloadOutcome, ControlError>;
    /// The VIPs that have a firewall.
    fn firewalls(&self) -> Vec<FirewallView>;
    /// Edits a VIP's source lists; the result is validated and applied whole.
    fn edit_firewall(
        &mut self,
        vip: &str,
        edit: FirewallEdit,
    ) -> Result<FirewallView, ControlError>;
}

/// An in-memory [`Control`] for the tests of the HTTP layer and of the CLI.
#[cfg(test)]
pub(crate) mod fake {
    use std::{collections::BTreeMap, net::IpAddr};

    use super::{
        BackendChange, BackendView, Control, ControlError, FirewallEdit, FirewallView, FlowView,
        InterfaceStatus, NewBackend, NewVip, ReloadOutcome, Status, VipView,
    };
    use crate::stats::report::StatsReport;

    /// The VIPs and flows are public, as are the knobs the tests turn.
    pub(crate) struct FakeControl {
        pub(crate) vips: Vec<VipView>,
        /// What `flows` filters and returns.
        pub(crate) flows: Vec<FlowView>,
        pub(crate) uptime_seconds: u64,
        pub(crate) stats: StatsReport,
        /// Every change to this VIP fails with an internal error.
        pub(crate) failing_vip: Option<String>,
        /// Checks the weight of a new or changed backend.
        pub(crate) check_weight: fn(u32) -> Result<(), ControlError>,
        /// Each backend change ends one of the backend's flows (a drain, as a test polls).
        pub(crate) change_ends_a_flow: bool,
        pub(crate) firewalls: Vec<FirewallView>,
    }

    fn at_most_1000(weight: u32) -> Result<(), ControlError> {
        if weight > 1000 {
            return Err(ControlError::Invalid(format!(
                "weight {weight} is above the maximum, 1000"
            )));
        }
        Ok(())
    }

    impl FakeControl {
        /// These VIPs, no flows, weights up to 1000, nothing failing or draining.
        pub(crate) fn with_vips(vips: Vec<VipView>) -> Self {
            FakeControl {
                vips,
                flows: Vec::new(),
                uptime_seconds: 42,
                stats: StatsReport {
                    verdicts: BTreeMap::from([("tx".to_owned(), 10)]),
                    counters: BTreeMap::from([("forwarded".to_owned(), 10)]),
                    vips: vec![],
                    interfaces: vec![],
                    host_rules: vec![],
                },
                failing_vip: None,
                check_weight: at_most_1000,
                change_ends_a_flow: false,
                firewalls: Vec::new(),
            }
        }

        fn vip_mut(&mut self, name: &str) -> Result<&mut VipView, ControlError> {
            if self.failing_vip.as_deref() == Some(name) {
                return Err(ControlError::Internal("the dataplane is on fire".into()));
            }
            self.vips
                .iter_mut()
                .find(|v| v.name == name)
                .ok_or_else(|| ControlError::NotFound(format!("no VIP named {name:?}")))
        }

        fn check_weight(&self, weight: Option<u32>) -> Result<(), ControlError> {
            weight.map_or(Ok(()), self.check_weight)
        }
    }

    impl Control for FakeControl {
        fn status(&self) -> Status {
            Status {
                version: "0.1.0".into(),
                uptime_seconds: self.uptime_seconds,
                config_path: "/etc/weir/weir.toml".into(),
                bpf_pin_dir: "/sys/fs/bpf/weir".into(),
                program_id: Some(7),
                interfaces: vec![InterfaceStatus {
                    name: "eth0".into(),
                    ifindex: 2,
                    mode: "native".into(),
                }],
                vips: self.vips.len(),
                backends: self.vips.iter().map(|v| v.backends.len()).sum(),
                announce: Some(super::AnnounceStatus {
                    interface: "weir-vips".into(),
                    addresses: vec!["198.19.0.10".parse().unwrap()],
                }),
                vips_down: 0,
                backends_down: 0,
                vrrp: None,
            }
        }

        fn vips(&self) -> Vec<VipView> {
            self.vips.clone()
        }

        fn vip(&self, name: &str) -> Result<VipView, ControlError> {
            self.vips
                .iter()
                .find(|v| v.name == name)
                .cloned()
                .ok_or_else(|| ControlError::NotFound(format!("no VIP named {name:?}")))
        }

        fn add_vip(&mut self, new: NewVip) -> Result<VipView, ControlError> {
            if self.vips.iter().any(|v| v.name == new.name) {
                return Err(ControlError::Conflict(format!(
                    "a VIP named {:?} exists already",
                    new.name
                )));
            }
            let vip = VipView {
                name: new.name,
                address: new.address,
                port: new.port,
                protocol: new.protocol.unwrap_or_default(),
                forwarding: Default::default(),
                hash: new.hash.unwrap_or_default(),
                table_size: new.table_size.unwrap_or(65_537),
                status: Default::default(),
                backends: new
                    .backends
                    .into_iter()
                    .map(|b| BackendView {
                        address: b.address,
                        weight: b.weight.unwrap_or(100),
                        state: b.state.unwrap_or_default(),
                        port: None,
                        nat_source: None,
                        flows: 0,
                        health: Default::default(),
                    })
                    .collect(),
            };
            self.vips.push(vip.clone());
            Ok(vip)
        }

        fn remove_vip(&mut self, name: &str) -> Result<(), ControlError> {
            let before = self.vips.len();
            self.vips.retain(|v| v.name != name);
            if self.vips.len() == before {
                return Err(ControlError::NotFound(format!("no VIP named {name:?}")));
            }
            Ok(())
        }

        fn add_backend(&mut self, vip: &str, new: NewBackend) -> Result<BackendView, ControlError> {
            self.check_weight(new.weight)?;
            let vip = self.vip_mut(vip)?;
            if vip.backends.iter().any(|b| b.address == new.address) {
                return Err(ControlError::Conflict(format!(
                    "{} is already a backend of {}",
                    new.address, vip.name
                )));
            }
            let added = BackendView {
                address: new.address,
                weight: new.weight.unwrap_or(100),
                state: new.state.unwrap_or_default(),
                port: None,
                nat_source: None,
                flows: 0,
                health: Default::default(),
            };
            vip.backends.push(added.clone());
            Ok(added)
        }

        fn remove_backend(&mut self, vip: &str, address: IpAddr) -> Result<(), ControlError> {
            let vip = self.vip_mut(vip)?;
            let before = vip.backends.len();
            vip.backends.retain(|b| b.address != address);
            if vip.backends.len() == before {
                return Err(ControlError::NotFound(format!("no backend {address}")));
            }
            Ok(())
        }

        fn change_backend(
            &mut self,
            vip: &str,
            address: IpAddr,
            change: BackendChange,
        ) -> Result<BackendView, ControlError> {
            self.check_weight(change.weight)?;
            let ends_a_flow = self.change_ends_a_flow;
            let vip = self.vip_mut(vip)?;
            let backend = vip
                .backends
                .iter_mut()
                .find(|b| b.address == address)
                .ok_or_else(|| ControlError::NotFound(format!("no backend {address}")))?;
            if let Some(weight) = change.weight {
                backend.weight = weight;
            }
            if let Some(state) = change.state {
                backend.state = state;
            }
            if ends_a_flow {
                backend.flows = backend.flows.saturating_sub(1);
            }
            Ok(backend.clone())
        }

        fn flows(
            &self,
            vip: Option<&str>,
            backend: Option<IpAddr>,
        ) -> Result<Vec<FlowView>, ControlError> {
            if let Some(name) = vip {
                self.vip(name)?;
            }
            Ok(self
                .flows
                .iter()
                .filter(|f| vip.is_none_or(|v| f.vip == v))
                .filter(|f| backend.is_none_or(|b| f.backend == b))
                .cloned()
                .collect())
        }

        fn stats(&self) -> Result<StatsReport, ControlError> {
            Ok(self.stats.clone())
        }

        fn overview(&self) -> Result<crate::stats::overview::Overview, ControlError> {
            Ok(crate::stats::overview::Overview {
                status: self.status(),
                vips: self.vips.clone(),
                stats: self.stats.clone(),
                census: Default::default(),
                tls: None,
            })
        }

        fn reload(&mut self) -> Result<ReloadOutcome, ControlError> {
            Ok(ReloadOutcome { writes: 3 })
        }

        fn firewalls(&self) -> Vec<FirewallView> {
            self.firewalls.clone()
        }

        fn edit_firewall(
            &mut self,
            vip: &str,
            edit: FirewallEdit,
        ) -> Result<FirewallView, ControlError> {
            self.vip_mut(vip)?;
            let current = self.firewalls.iter().find(|f| f.vip == vip);
            let firewall = edit
                .apply(&current.map(|f| f.firewall.clone()).unwrap_or_default())
                .map_err(ControlError::Invalid)?;
            let view = FirewallView {
                vip: vip.to_owned(),
                firewall,
            };
            self.firewalls.retain(|f| f.vip != vip);
            self.firewalls.push(view.clone());
            Ok(view)
        }
    }
}
