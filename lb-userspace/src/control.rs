//! The operations the control API offers, and the JSON shapes it exchanges (`/v1`).
//!
//! The HTTP layer (`api.rs`) maps routes to [`Control`] and errors to status codes; the
//! agent implements [`Control`]; the CLI (`cli.rs`) speaks the same shapes. Keeping the
//! shapes here, apart from both, is what lets the OpenAPI document, the server and the
//! client agree.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    config::{AdminState, HashMode, Protocol},
    report::StatsReport,
};

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
    pub hash: HashMode,
    pub table_size: u32,
    pub backends: Vec<BackendView>,
}

/// A backend of a VIP (`GET /v1/vips/{name}/backends`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub address: IpAddr,
    pub weight: u32,
    pub state: AdminState,
    /// Live entries of the connection table on this backend.
    pub flows: u64,
}

/// `POST /v1/vips/{name}/backends`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBackend {
    pub address: IpAddr,
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
    fn reload(&mut self) -> Result<ReloadOutcome, ControlError>;
}
