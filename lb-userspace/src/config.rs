//! The agent's TOML configuration, validated as a whole: a file is either entirely valid
//! or rejected with one error naming the file, line, column and key, so that a typo is
//! never half-applied to the data plane.
//!
//! Parsing has two steps. serde turns the document into raw structs that keep every
//! value's span (syntax, type and unknown-key errors come from here); validation then
//! turns them into the public types, checking ranges and cross-references.

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_common::{
    DEFAULT_CONNTRACK_ENTRIES, DEFAULT_NAT_ENTRIES, FlowTimeouts, MAX_BACKENDS, MAX_INTERFACES,
    MAX_VIPS, PROTO_TCP, PROTO_UDP,
};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::Spanned;
use toml_edit::{ImDocument, Item, TableLike, Value};

use crate::maglev;

pub mod frontend;

/// Weight of a backend that does not set one.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Default of `agent.bpf_pin_dir`.
pub const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/weir";
/// Default of `agent.state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weir";
/// Default of `agent.api_socket`.
pub const DEFAULT_API_SOCKET: &str = "/run/weir/api.sock";
/// Bounds of `agent.conntrack_entries`.
pub const MIN_CONNTRACK_ENTRIES: u32 = 1024;
pub const MAX_CONNTRACK_ENTRIES: u32 = 1 << 26;
/// Bounds of `agent.nat_entries`.
pub const MIN_NAT_ENTRIES: u32 = 16;
pub const MAX_NAT_ENTRIES: u32 = 1 << 24;
/// Default of `flows.nat_ports`: below Linux's default ephemeral range (32768-60999,
/// `net.ipv4.ip_local_port_range`), so that the host's own connections to backends
/// (health checks, for one) never meet a NAT flow's address and port.
pub const DEFAULT_NAT_PORTS: PortRange = PortRange {
    first: 1024,
    last: 32767,
};
/// Largest flow timeout, in seconds (a day).
/// Bounds of the `[flows]` timeouts.
pub const FLOW_TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(86_400);

/// A validated configuration. Serializes back to the file format (same key names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    pub agent: AgentConfig,
    pub flows: FlowSettings,
    #[serde(rename = "vip")]
    pub vips: Vec<VipConfig>,
    /// Route announcement: the serving VIPs' addresses kept on a dummy interface, for a
    /// routing daemon to announce.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceConfig>,
    /// VIP failover between LB nodes; absent: this node always holds nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vrrp: Option<VrrpConfig>,
    /// The TLS tier's frontends (`weir proxy`); the agent ignores them.
    #[serde(rename = "frontend", skip_serializing_if = "Vec::is_empty")]
    pub frontends: Vec<frontend::FrontendConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AnnounceConfig {
    /// The dummy interface the agent creates and owns; never one of `agent.interfaces`.
    pub interface: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentConfig {
    /// Interfaces to attach the XDP program to; unique, at least one.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Capacity of the connection table.
    pub conntrack_entries: u32,
    /// Where the maps and XDP links are pinned (on a bpffs), so that they outlive the
    /// agent: a restarted or upgraded agent adopts them without disturbing a flow.
    pub bpf_pin_dir: PathBuf,
    /// Where runtime changes (made through the control API) are kept.
    pub state_dir: PathBuf,
    /// The control API's Unix socket (mode 0600).
    pub api_socket: PathBuf,
    /// An optional TCP listener for the control API, which then requires the bearer
    /// token read from `api_token_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<std::net::SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token_file: Option<PathBuf>,
    /// Capacity of each NAT table: concurrent NAT flows.
    pub nat_entries: u32,
}

/// `[flows]`: when a flow is over, and the NAT source ports. Applied on reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FlowSettings {
    /// Time without a packet from the client after which a TCP flow is over.
    #[serde(serialize_with = "serialize_duration")]
    pub tcp_idle_timeout: Duration,
    /// Time without a packet from the client after which a UDP flow is over.
    #[serde(serialize_with = "serialize_duration")]
    pub udp_idle_timeout: Duration,
    /// How long a TCP flow lingers after a FIN or RST (late retransmissions, the last ACK).
    #[serde(serialize_with = "serialize_duration")]
    pub tcp_linger: Duration,
    /// The source ports NAT flows use towards backends.
    pub nat_ports: PortRange,
}

impl Default for FlowSettings {
    fn default() -> Self {
        let defaults = FlowTimeouts::DEFAULT;
        FlowSettings {
            tcp_idle_timeout: Duration::from_nanos(defaults.tcp_idle_ns),
            udp_idle_timeout: Duration::from_nanos(defaults.udp_idle_ns),
            tcp_linger: Duration::from_nanos(defaults.closing_linger_ns),
            nat_ports: DEFAULT_NAT_PORTS,
        }
    }
}

impl FlowSettings {
    /// The program's view (`NAT_CONFIG`); the port range only when a VIP uses NAT, so
    /// that without one no reply is ever looked up.
    pub fn timeouts(&self, nat: bool) -> FlowTimeouts {
        // At most a day: far from overflowing.
        let ns = |d: Duration| d.as_nanos() as u64;
        FlowTimeouts {
            tcp_idle_ns: ns(self.tcp_idle_timeout),
            udp_idle_ns: ns(self.udp_idle_timeout),
            closing_linger_ns: ns(self.tcp_linger),
            nat_port_first: if nat { self.nat_ports.first as u32 } else { 0 },
            nat_port_count: if nat { self.nat_ports.count() } else { 0 },
        }
    }
}

/// An inclusive range of ports, written `"first-last"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// How many ports (never 0: validation refuses an empty range).
    pub fn count(&self) -> u32 {
        self.last as u32 - self.first as u32 + 1
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("{text:?} is not a port range \"first-last\" (1024-65535)");
        let (first, last) = text.split_once('-').ok_or_else(invalid)?;
        let first: u16 = first.trim().parse().map_err(|_| invalid())?;
        let last: u16 = last.trim().parse().map_err(|_| invalid())?;
        if first < 1024 || last < first {
            return Err(format!(
                "{text:?}: the range must lie within 1024-65535 and not be empty \
                 (ports below 1024 are the host's services)"
            ));
        }
        Ok(PortRange { first, last })
    }
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic mode with a warning.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VipConfig {
    pub name: String,
    pub address: IpAddr,
    /// 0 means every port of the address.
    pub port: u16,
    pub protocol: Protocol,
    pub forwarding: Forwarding,
    /// NAT: the load balancer's address towards the backends; by default the address
    /// the kernel would use to reach each backend (its egress interface's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_source: Option<IpAddr>,
    pub hash: HashMode,
    /// Maglev table size: prime, greater than the number of backends.
    pub table_size: u32,
    /// How its backends are checked (`[vip.health]`).
    pub health: HealthConfig,
    #[serde(rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

/// Default `health.interval`: the pace of checks while a backend is stable.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Default `health.timeout`.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Defaults of `health.rise` and `health.fall` (HAProxy's).
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
/// Bounds of `rise` and `fall`.
pub const MAX_RISE_FALL: u32 = 1000;
/// Bounds of every check duration.
pub const MAX_CHECK_DURATION: Duration = Duration::from_secs(3600);
/// Placeholders an exec check's command may use.
pub const COMMAND_PLACEHOLDERS: [&str; 4] = ["{address}", "{port}", "{vip}", "{vip_port}"];

/// How the backends of a VIP are checked, with every default filled in. Keys that only
/// make sense for some kinds (`path`, `command`, …) are `Some` only for those kinds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct HealthConfig {
    pub kind: CheckKind,
    /// The port checked; `None`: the port the backend serves on (its NAT port, else the
    /// VIP's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// http/https: the request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// http/https: the Host header and TLS SNI; `None`: the backend's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// http/https: the statuses that count as healthy; `None`: 2xx and 3xx.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<Vec<u16>>,
    /// While the backend is stable (fully up).
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// While it is rising or falling.
    #[serde(with = "duration_text")]
    pub fastinter: Duration,
    /// While it is fully down.
    #[serde(with = "duration_text")]
    pub downinter: Duration,
    /// Bound of one whole check (connect, request, answer; or the command's run).
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Consecutive successes that bring a DOWN backend UP.
    pub rise: u32,
    /// Consecutive failures that take an UP backend DOWN.
    pub fall: u32,
    /// exec: the program and its arguments; exit status 0 is healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// What a health check does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP/1.1 GET is answered with an expected status.
    Http,
    /// The same over TLS.
    Https,
    /// A command exits with status 0.
    Exec,
    /// No check: the backend is always UP.
    None,
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Https => "https",
            CheckKind::Exec => "exec",
            CheckKind::None => "none",
        })
    }
}

impl HealthConfig {
    /// The defaults for a VIP of `protocol` on `port`: a TCP connect to the port for TCP;
    /// nothing for UDP (a UDP port cannot be probed without knowing its protocol) nor
    /// for a VIP on every port (there is no port to check).
    pub fn default_for(protocol: Protocol, port: u16) -> Self {
        HealthConfig {
            kind: match protocol {
                Protocol::Tcp if port != 0 => CheckKind::Tcp,
                _ => CheckKind::None,
            },
            port: None,
            path: None,
            host: None,
            expect_status: None,
            interval: DEFAULT_CHECK_INTERVAL,
            fastinter: DEFAULT_CHECK_INTERVAL,
            downinter: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            command: None,
        }
    }

    /// Whether an HTTP status counts as healthy.
    pub fn status_ok(&self, status: u16) -> bool {
        match &self.expect_status {
            Some(list) => list.contains(&status),
            None => (200..400).contains(&status),
        }
    }
}

/// Durations as the file writes them: a number and a unit, `ms`, `s`, `m` or `h`
/// ("500ms", "2s", "1.5s", "1m"), to the millisecond.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    // The fraction, in thousandths of the unit; finer than a millisecond is refused.
    let thousandths: u64 = if fraction.is_empty() {
        0
    } else if fraction.len() <= 3 {
        format!("{fraction:0<3}").parse().ok()?
    } else {
        return None;
    };
    let fraction_ms = thousandths * unit_ms;
    if !fraction_ms.is_multiple_of(1000) {
        return None;
    }
    whole
        .checked_mul(unit_ms)?
        .checked_add(fraction_ms / 1000)
        .map(Duration::from_millis)
}

pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms != 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms != 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

mod duration_text {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number, as used in map keys.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    /// The protocol of an IP protocol number, if weir balances it.
    pub fn from_number(number: u8) -> Option<Protocol> {
        match number {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How packets reach a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Direct server return: only the MAC addresses are rewritten.
    #[default]
    Dsr,
    /// Full NAT: destination → backend, source → the load balancer; replies come back
    /// through it and are translated back.
    Nat,
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forwarding::Dsr => "dsr",
            Forwarding::Nat => "nat",
        })
    }
}

/// What Maglev hashes to pick a backend for a new flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HashMode {
    #[default]
    #[serde(rename = "5-tuple")]
    FiveTuple,
    /// Client address only: every flow of a client goes to the same backend.
    #[serde(rename = "source-ip")]
    SourceIp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    /// Same address family as the VIP: DSR rewrites MAC addresses only.
    pub address: IpAddr,
    /// NAT: the port the backend listens on; by default the VIP's port (a VIP on every
    /// port keeps the client's destination port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Share of new flows; 0 sends it none while its established flows continue.
    pub weight: u32,
    /// What the operator allows it to receive, as HAProxy's admin states.
    pub state: AdminState,
}

/// A backend's administrative state, as HAProxy users know them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// In rotation.
    #[default]
    Ready,
    /// No new flows; established flows continue (the rolling-deploy step).
    Drain,
    /// No traffic at all: established flows move to the backends that own their slots.
    Maint,
}

/// `[vrrp]`: VRRP version 3 (RFC 5798) on one interface. The node holds the addresses of
/// every `[[vip]]` there while it is master; IPv4 and IPv6 VIPs each get an instance
/// (same VRID, separate adverts), as keepalived needs one `vrrp_instance` per family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VrrpConfig {
    pub interface: String,
    pub vrid: u8,
    /// 1..=254; tracking lowers it.
    pub priority: u8,
    #[serde(serialize_with = "serialize_duration")]
    pub advert_interval: Duration,
    pub preempt: bool,
    #[serde(serialize_with = "serialize_duration")]
    pub preempt_delay: Duration,
    /// Empty: multicast (224.0.0.18, ff02::12).
    pub unicast_peers: Vec<IpAddr>,
    /// Each VIP that serves no new flow lowers the priority by `track_weight`.
    pub track_vips: bool,
    pub track_weight: u8,
    /// Gratuitous ARPs / unsolicited NAs per address on becoming master.
    pub garp_repeat: u32,
    /// Repeated while master; zero: never.
    #[serde(serialize_with = "serialize_duration")]
    pub garp_refresh: Duration,
    /// Run on every state change with the state, VRID and priority appended.
    pub notify: Vec<String>,
}

/// Bounds and defaults of `[vrrp]`.
pub const DEFAULT_VRRP_PRIORITY: u8 = 100;
pub const DEFAULT_ADVERT_INTERVAL: Duration = Duration::from_secs(1);
/// Max Adver Int is 12 bits of centiseconds.
pub const MAX_ADVERT_INTERVAL: Duration = Duration::from_millis(40_950);
pub const DEFAULT_TRACK_WEIGHT: u8 = 50;
pub const DEFAULT_GARP_REPEAT: u32 = 5;
pub const MAX_GARP_REPEAT: u32 = 100;
pub const DEFAULT_GARP_REFRESH: Duration = Duration::from_secs(60);

/// As the file writes it: whole seconds as `"60s"`, anything else in milliseconds.
fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    match d.as_millis() {
        ms if ms % 1000 == 0 => s.serialize_str(&format!("{}s", ms / 1000)),
        ms => s.serialize_str(&format!("{ms}ms")),
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The document is not TOML.
    #[error("{origin}:{line}:{column}: syntax error: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A key is missing, unknown, of the wrong type or has a value that is not allowed.
    /// `key` is a path such as `vip[1].backend[0].weight`; line and column are 1-based
    /// and point at the offending value (or the table a missing key belongs in).
    #[error("{origin}:{line}:{column}: {key}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors (usually the file name).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let doc = ImDocument::parse(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
            ConfigError::Syntax {
                origin: origin.to_owned(),
                line,
                column,
                message: one_line(e.message()),
            }
        })?;
        let src = Source { text, origin, doc };
        let raw = RawConfig::deserialize(toml_edit::de::Deserializer::from(src.doc.clone()))
            .map_err(|e| {
                // toml's errors carry a span but no key path: recover it from the document.
                let offset = e.span().map_or(0, |s| s.start);
                src.error(
                    offset,
                    &path_at(src.doc.as_table(), offset),
                    one_line(e.message()),
                )
            })?;
        raw.validate(&src)
    }
}

// Raw structs: the file as written. Every field is optional, so that validation reports a
// missing key with its full path, and every value is spanned, so that errors point at it.
// Tables are not spanned: toml has no span for a table made by dotted keys
// (`agent.interfaces = …`) and refuses to deserialize one into `Spanned`, so the
// position of a table is looked up in the document instead (`Source::table`).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: Option<RawAgent>,
    flows: Option<RawFlows>,
    #[serde(default)]
    vip: Vec<RawVip>,
    announce: Option<RawAnnounce>,
    vrrp: Option<RawVrrp>,
    #[serde(default)]
    frontend: Vec<frontend::RawFrontend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnnounce {
    interface: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVrrp {
    interface: Option<Spanned<String>>,
    vrid: Option<Spanned<Integer>>,
    priority: Option<Spanned<Integer>>,
    advert_interval: Option<Spanned<String>>,
    preempt: Option<bool>,
    preempt_delay: Option<Spanned<String>>,
    unicast_peers: Option<Vec<Spanned<String>>>,
    track_vips: Option<bool>,
    track_weight: Option<Spanned<Integer>>,
    garp_repeat: Option<Spanned<Integer>>,
    garp_refresh: Option<Spanned<String>>,
    notify: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    xdp_mode: Option<XdpMode>,
    conntrack_entries: Option<Spanned<Integer>>,
    bpf_pin_dir: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    api_socket: Option<Spanned<String>>,
    api_listen: Option<Spanned<String>>,
    api_token_file: Option<Spanned<String>>,
    nat_entries: Option<Spanned<Integer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlows {
    tcp_idle_timeout: Option<Spanned<String>>,
    udp_idle_timeout: Option<Spanned<String>>,
    tcp_linger: Option<Spanned<String>>,
    nat_ports: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    port: Option<Spanned<Integer>>,
    protocol: Option<Protocol>,
    forwarding: Option<Forwarding>,
    nat_source: Option<Spanned<String>>,
    hash: Option<HashMode>,
    table_size: Option<Spanned<Integer>>,
    health: Option<RawHealth>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Option<Spanned<CheckKind>>,
    port: Option<Spanned<Integer>>,
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    expect_status: Option<Spanned<Vec<Spanned<Integer>>>>,
    interval: Option<Spanned<String>>,
    fastinter: Option<Spanned<String>>,
    downinter: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<Integer>>,
    fall: Option<Spanned<Integer>>,
    command: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<Spanned<String>>,
    port: Option<Spanned<Integer>>,
    weight: Option<Spanned<Integer>>,
    state: Option<AdminState>,
}

/// A TOML integer of any size, range-checked by validation so that the error can state
/// the allowed range ("expected an integer" rather than serde's "expected u16").
struct Integer(i64);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntegerVisitor;
        impl Visitor<'_> for IntegerVisitor {
            type Value = Integer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Integer, E> {
                Ok(Integer(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Integer, E> {
                i64::try_from(v)
                    .map(Integer)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }
        deserializer.deserialize_i64(IntegerVisitor)
    }
}

/// A step of the path to a table in the document.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The text being parsed, to turn positions into located errors.
struct Source<'a> {
    text: &'a str,
    origin: &'a str,
    doc: ImDocument<&'a str>,
}

impl Source<'_> {
    fn error(&self, offset: usize, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, offset);
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn error_at<T>(
        &self,
        value: &Spanned<T>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(value.span().start, key, message)
    }

    /// Where the table at `path` starts (its header, or its key when it has no header),
    /// or the start of the document if it is not there.
    fn table(&self, path: &[Step<'_>]) -> usize {
        let mut item = self.doc.as_item();
        let mut offset = 0;
        for step in path {
            let (child, key_span) = match *step {
                Step::Key(name) => match item.as_table_like().and_then(|t| t.get_key_value(name)) {
                    Some((key, child)) => (child, key.span()),
                    None => break,
                },
                Step::Index(i) => match item.get(i) {
                    Some(child) => (child, None),
                    None => break,
                },
            };
            if let Some(span) = child.span().or(key_span) {
                offset = span.start;
            }
            item = child;
        }
        offset
    }

    /// A required key, or an error pointing at the table it is missing from.
    fn required<'v, T>(
        &self,
        value: &'v Option<T>,
        table: &[Step<'_>],
        key: &str,
    ) -> Result<&'v T, ConfigError> {
        value
            .as_ref()
            .ok_or_else(|| self.error(self.table(table), key, "required key is missing"))
    }

    fn integer<T>(
        &self,
        value: &Spanned<Integer>,
        key: &str,
        min: T,
        max: T,
    ) -> Result<T, ConfigError>
    where
        T: TryFrom<i64> + Into<i64> + Copy + fmt::Display,
    {
        let v = value.get_ref().0;
        match T::try_from(v) {
            Ok(t) if (min.into()..=max.into()).contains(&v) => Ok(t),
            _ => Err(self.error_at(value, key, format!("must be in {min}..={max}, got {v}"))),
        }
    }

    fn interface_name<'v>(
        &self,
        value: &'v Spanned<String>,
        key: &str,
    ) -> Result<&'v String, ConfigError> {
        let name = value.get_ref();
        if !valid_ifname(name) {
            let message = format!(
                "{name:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)"
            );
            return Err(self.error_at(value, key, message));
        }
        Ok(name)
    }

    fn duration(&self, value: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        parse_duration(value.get_ref()).ok_or_else(|| {
            let message = format!(
                "{:?} is not a duration (a number and ms, s, m or h: \"500ms\", \"1.5s\", \"1m\")",
                value.get_ref()
            );
            self.error_at(value, key, message)
        })
    }

    fn address(&self, value: &Spanned<String>, key: &str) -> Result<IpAddr, ConfigError> {
        value.get_ref().parse().map_err(|_| {
            let message = format!("{:?} is not an IPv4 or IPv6 address", value.get_ref());
            self.error_at(value, key, message)
        })
    }
}

impl RawConfig {
    fn validate(&self, src: &Source<'_>) -> Result<Config, ConfigError> {
        let agent = match &self.agent {
            Some(agent) => agent.validate(src)?,
            None => return Err(src.error(0, "agent", "required table [agent] is missing")),
        };
        if self.vip.len() > MAX_VIPS as usize {
            let at = src.table(&[Step::Key("vip"), Step::Index(MAX_VIPS as usize)]);
            let message = format!("too many VIPs: at most {MAX_VIPS} are supported");
            return Err(src.error(at, &format!("vip[{MAX_VIPS}]"), message));
        }
        let mut vips: Vec<VipConfig> = Vec::with_capacity(self.vip.len());
        let mut total_backends = 0;
        for (i, raw) in self.vip.iter().enumerate() {
            let key = format!("vip[{i}]");
            let vip = raw.validate(src, i, &mut total_backends)?;
            // At most MAX_VIPS VIPs: a quadratic search is cheap and keeps this simple.
            if let Some(first) = vips.iter().position(|v| v.name == vip.name) {
                let message = format!("VIP name {:?} is already used by vip[{first}]", vip.name);
                let at = raw.name.as_ref().map_or(0, |n| n.span().start);
                return Err(src.error(at, &format!("{key}.name"), message));
            }
            let endpoint = |v: &VipConfig| (v.address, v.port, v.protocol);
            if let Some(first) = vips.iter().position(|v| endpoint(v) == endpoint(&vip)) {
                let message = format!(
                    "{} port {} {} is already served by vip[{first}] ({:?})",
                    vip.address, vip.port, vip.protocol, vips[first].name
                );
                let at = raw.address.as_ref().map_or(0, |a| a.span().start);
                return Err(src.error(at, &format!("{key}.address"), message));
            }
            vips.push(vip);
        }
        let announce = match &self.announce {
            Some(announce) => Some(announce.validate(src, &agent)?),
            None => None,
        };
        let vrrp = match &self.vrrp {
            Some(vrrp) => Some(vrrp.validate(src, &vips)?),
            None => None,
        };
        let flows = match &self.flows {
            Some(flows) => flows.validate(src)?,
            None => FlowSettings::default(),
        };
        let frontends = frontend::validate_all(&self.frontend, src, &vips)?;
        Ok(Config {
            agent,
            flows,
            vips,
            announce,
            vrrp,
            frontends,
        })
    }
}

impl RawAnnounce {
    fn validate(
        &self,
        src: &Source<'_>,
        agent: &AgentConfig,
    ) -> Result<AnnounceConfig, ConfigError> {
        let key = "announce.interface";
        let name = src.required(&self.interface, &[Step::Key("announce")], key)?;
        let interface = src.interface_name(name, key)?;
        // The agent adds and deletes addresses on it, and deletes it when it stops.
        if let Some(i) = agent.interfaces.iter().position(|n| n == interface) {
            let message = format!(
                "{interface:?} is agent.interfaces[{i}]; the announce interface is a dummy the agent creates and owns, give it a name of its own (e.g. \"weir-vips\")"
            );
            return Err(src.error_at(name, key, message));
        }
        Ok(AnnounceConfig {
            interface: interface.clone(),
        })
    }
}

impl RawAgent {
    fn validate(&self, src: &Source<'_>) -> Result<AgentConfig, ConfigError> {
        let key = "agent.interfaces";
        let list = src.required(&self.interfaces, &[Step::Key("agent")], key)?;
        if list.get_ref().is_empty() {
            return Err(src.error_at(list, key, "must list at least one interface"));
        }
        if list.get_ref().len() > MAX_INTERFACES as usize {
            let message = format!("too many interfaces: at most {MAX_INTERFACES} are supported");
            return Err(src.error_at(list, key, message));
        }
        let mut interfaces: Vec<String> = Vec::with_capacity(list.get_ref().len());
        for (i, name) in list.get_ref().iter().enumerate() {
            let key = format!("{key}[{i}]");
            let name_str = src.interface_name(name, &key)?;
            if let Some(first) = interfaces.iter().position(|n| n == name_str) {
                let message = format!(
                    "interface {name_str:?} is already listed as agent.interfaces[{first}]"
                );
                return Err(src.error_at(name, &key, message));
            }
            interfaces.push(name_str.clone());
        }
        let conntrack_entries = match &self.conntrack_entries {
            Some(v) => src.integer(
                v,
                "agent.conntrack_entries",
                MIN_CONNTRACK_ENTRIES,
                MAX_CONNTRACK_ENTRIES,
            )?,
            None => DEFAULT_CONNTRACK_ENTRIES,
        };
        let path = |value: &Option<Spanned<String>>, key: &str| match value {
            Some(path) if !Path::new(path.get_ref()).is_absolute() => {
                let message = format!("{:?} is not an absolute path", path.get_ref());
                Err(src.error_at(path, key, message))
            }
            Some(path) => Ok(Some(PathBuf::from(path.get_ref()))),
            None => Ok(None),
        };
        let bpf_pin_dir = path(&self.bpf_pin_dir, "agent.bpf_pin_dir")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BPF_PIN_DIR));
        let state_dir = path(&self.state_dir, "agent.state_dir")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let api_socket = path(&self.api_socket, "agent.api_socket")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCKET));
        let api_token_file = path(&self.api_token_file, "agent.api_token_file")?;
        let api_listen = match &self.api_listen {
            Some(listen) => {
                let Ok(addr) = listen.get_ref().parse::<std::net::SocketAddr>() else {
                    let message = format!("{:?} is not an address:port", listen.get_ref());
                    return Err(src.error_at(listen, "agent.api_listen", message));
                };
                if api_token_file.is_none() {
                    let message =
                        "a TCP listener needs agent.api_token_file (no token, no TCP listener)";
                    return Err(src.error_at(listen, "agent.api_listen", message));
                }
                Some(addr)
            }
            None => None,
        };
        let nat_entries = match &self.nat_entries {
            Some(v) => src.integer(v, "agent.nat_entries", MIN_NAT_ENTRIES, MAX_NAT_ENTRIES)?,
            None => DEFAULT_NAT_ENTRIES,
        };
        Ok(AgentConfig {
            nat_entries,
            interfaces,
            xdp_mode: self.xdp_mode.unwrap_or_default(),
            conntrack_entries,
            bpf_pin_dir,
            state_dir,
            api_socket,
            api_listen,
            api_token_file,
        })
    }
}

impl RawFlows {
    fn validate(&self, src: &Source<'_>) -> Result<FlowSettings, ConfigError> {
        let defaults = FlowSettings::default();
        let timeout = |value: &Option<Spanned<String>>, key: &str, default: Duration| {
            let Some(value) = value else {
                return Ok(default);
            };
            let key = format!("flows.{key}");
            let duration = src.duration(value, &key)?;
            if FLOW_TIMEOUTS.contains(&duration) {
                Ok(duration)
            } else {
                Err(src.error_at(value, &key, "must be at least 100ms and at most 24h"))
            }
        };
        let nat_ports = match &self.nat_ports {
            Some(text) => text
                .get_ref()
                .parse()
                .map_err(|message: String| src.error_at(text, "flows.nat_ports", message))?,
            None => defaults.nat_ports,
        };
        Ok(FlowSettings {
            tcp_idle_timeout: timeout(
                &self.tcp_idle_timeout,
                "tcp_idle_timeout",
                defaults.tcp_idle_timeout,
            )?,
            udp_idle_timeout: timeout(
                &self.udp_idle_timeout,
                "udp_idle_timeout",
                defaults.udp_idle_timeout,
            )?,
            tcp_linger: timeout(&self.tcp_linger, "tcp_linger", defaults.tcp_linger)?,
            nat_ports,
        })
    }
}

impl RawVip {
    /// Validates `vip[i]`; `total_backends` counts backends across VIPs for the
    /// `MAX_BACKENDS` capacity of the backend map.
    fn validate(
        &self,
        src: &Source<'_>,
        i: usize,
        total_backends: &mut usize,
    ) -> Result<VipConfig, ConfigError> {
        let table = [Step::Key("vip"), Step::Index(i)];
        let key = format!("vip[{i}]");
        let name_key = format!("{key}.name");
        let name = src.required(&self.name, &table, &name_key)?;
        if !valid_vip_name(name.get_ref()) {
            let message = format!(
                "{:?} is not a valid VIP name (1 to 64 of A-Z a-z 0-9 _ . -)",
                name.get_ref()
            );
            return Err(src.error_at(name, &name_key, message));
        }
        let address_key = format!("{key}.address");
        let address = src.address(
            src.required(&self.address, &table, &address_key)?,
            &address_key,
        )?;
        let port_key = format!("{key}.port");
        let port = src.integer(
            src.required(&self.port, &table, &port_key)?,
            &port_key,
            0,
            u16::MAX,
        )?;
        let forwarding = self.forwarding.unwrap_or_default();
        let nat_source = match &self.nat_source {
            None => None,
            Some(value) => {
                let nat_key = format!("{key}.nat_source");
                if forwarding != Forwarding::Nat {
                    let message =
                        "only NAT forwarding has a source address (set forwarding = \"nat\")";
                    return Err(src.error_at(value, &nat_key, message));
                }
                let nat_source = src.address(value, &nat_key)?;
                if nat_source.is_ipv4() != address.is_ipv4() {
                    let message = format!(
                        "{nat_source} is {} but the VIP address {address} is {}",
                        family(nat_source),
                        family(address)
                    );
                    return Err(src.error_at(value, &nat_key, message));
                }
                Some(nat_source)
            }
        };

        let mut backends: Vec<BackendConfig> = Vec::with_capacity(self.backend.len());
        for (j, backend) in self.backend.iter().enumerate() {
            let backend_table = [
                Step::Key("vip"),
                Step::Index(i),
                Step::Key("backend"),
                Step::Index(j),
            ];
            let backend_key = format!("{key}.backend[{j}]");
            *total_backends += 1;
            if *total_backends > MAX_BACKENDS as usize {
                let message =
                    format!("too many backends: all VIPs together may have at most {MAX_BACKENDS}");
                return Err(src.error(src.table(&backend_table), &backend_key, message));
            }
            let address_key = format!("{backend_key}.address");
            let address_value = src.required(&backend.address, &backend_table, &address_key)?;
            let backend_address = src.address(address_value, &address_key)?;
            if backend_address.is_ipv4() != address.is_ipv4() {
                let why = match forwarding {
                    Forwarding::Dsr => "DSR rewrites only MAC addresses",
                    Forwarding::Nat => "NAT does not translate between families",
                };
                let message = format!(
                    "backend {backend_address} is {} but the VIP address {address} is {}; {why}, so a backend must have its VIP's address family",
                    family(backend_address),
                    family(address)
                );
                return Err(src.error_at(address_value, &address_key, message));
            }
            let backend_port = match &backend.port {
                None => None,
                Some(value) => {
                    let port_key = format!("{backend_key}.port");
                    if forwarding != Forwarding::Nat {
                        let message = "DSR cannot change the port: the backend receives the client's packet as sent (use forwarding = \"nat\")";
                        return Err(src.error_at(value, &port_key, message));
                    }
                    if port == 0 {
                        let message = "a VIP on every port (port = 0) keeps the client's destination port; remove the backend port";
                        return Err(src.error_at(value, &port_key, message));
                    }
                    Some(src.integer(value, &port_key, 1, u16::MAX)?)
                }
            };
            if let Some(first) = backends.iter().position(|b| b.address == backend_address) {
                let message = format!(
                    "backend {backend_address} is already listed as {key}.backend[{first}]"
                );
                return Err(src.error_at(address_value, &address_key, message));
            }
            let weight = match &backend.weight {
                Some(w) => src.integer(w, &format!("{backend_key}.weight"), 0, MAX_WEIGHT)?,
                None => DEFAULT_WEIGHT,
            };
            backends.push(BackendConfig {
                address: backend_address,
                port: backend_port,
                weight,
                state: backend.state.unwrap_or_default(),
            });
        }

        let table_size_key = format!("{key}.table_size");
        let (table_size, table_size_at) = match &self.table_size {
            Some(v) => (
                src.integer(v, &table_size_key, 2, maglev::MAX_TABLE_SIZE)?,
                v.span().start,
            ),
            None => (maglev::DEFAULT_TABLE_SIZE, src.table(&table)),
        };
        if !maglev::is_prime(table_size) {
            let message = format!(
                "{table_size} is not prime; Maglev needs a prime table size (e.g. {})",
                maglev::DEFAULT_TABLE_SIZE
            );
            return Err(src.error(table_size_at, &table_size_key, message));
        }
        if table_size as usize <= backends.len() {
            let message = format!(
                "must be greater than the number of backends ({})",
                backends.len()
            );
            return Err(src.error(table_size_at, &table_size_key, message));
        }

        let protocol = self.protocol.unwrap_or_default();
        let health = match &self.health {
            Some(raw) => raw.validate(src, i, protocol, port)?,
            None => HealthConfig::default_for(protocol, port),
        };
        let needs_port = matches!(
            health.kind,
            CheckKind::Tcp | CheckKind::Http | CheckKind::Https
        );
        if port == 0 && health.port.is_none() && needs_port {
            let message = "a VIP on every port (port = 0) has no port to check: set health.port";
            let at = src.table(&[Step::Key("vip"), Step::Index(i), Step::Key("health")]);
            return Err(src.error(at, &format!("{key}.health.port"), message));
        }

        Ok(VipConfig {
            name: name.get_ref().clone(),
            address,
            port,
            protocol,
            forwarding,
            nat_source,
            hash: self.hash.unwrap_or_default(),
            table_size,
            health,
            backends,
        })
    }
}

impl RawHealth {
    /// Validates `vip[i].health` of a VIP of `protocol` on `vip_port`.
    fn validate(
        &self,
        src: &Source<'_>,
        i: usize,
        protocol: Protocol,
        vip_port: u16,
    ) -> Result<HealthConfig, ConfigError> {
        let key = format!("vip[{i}].health");
        let defaults = HealthConfig::default_for(protocol, vip_port);
        let kind = self.kind.as_ref().map_or(defaults.kind, |k| *k.get_ref());
        let is_http = matches!(kind, CheckKind::Http | CheckKind::Https);
        // A key that the kind does not use is an error, not silently ignored.
        let only_for =
            |present: Option<usize>, name: &str, kinds: &str, applies: bool| match present {
                Some(at) if !applies => Err(src.error(
                    at,
                    &format!("{key}.{name}"),
                    format!("only used by kind {kinds}, not by kind = \"{kind}\""),
                )),
                _ => Ok(()),
            };
        let start = |v: Option<&Spanned<String>>| v.map(|v| v.span().start);
        only_for(start(self.path.as_ref()), "path", "http or https", is_http)?;
        only_for(start(self.host.as_ref()), "host", "http or https", is_http)?;
        only_for(
            self.expect_status.as_ref().map(|v| v.span().start),
            "expect_status",
            "http or https",
            is_http,
        )?;
        only_for(
            self.command.as_ref().map(|v| v.span().start),
            "command",
            "exec",
            kind == CheckKind::Exec,
        )?;

        let port = match &self.port {
            Some(p) => Some(src.integer(p, &format!("{key}.port"), 1, u16::MAX)?),
            None => None,
        };
        let path = match &self.path {
            Some(path) => {
                let text = path.get_ref();
                if !text.starts_with('/')
                    || text.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    let message = format!(
                        "{text:?} is not a request path (it starts with '/' and has no white space)"
                    );
                    return Err(src.error_at(path, &format!("{key}.path"), message));
                }
                Some(text.clone())
            }
            None if is_http => Some("/".to_owned()),
            None => None,
        };
        let host = match &self.host {
            Some(host) => {
                let text = host.get_ref();
                if text.is_empty()
                    || text.len() > 255
                    || text.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    let message = format!(
                        "{text:?} is not a host name (1 to 255 characters, no white space)"
                    );
                    return Err(src.error_at(host, &format!("{key}.host"), message));
                }
                Some(text.clone())
            }
            None => None,
        };
        let expect_status = match &self.expect_status {
            Some(list) => {
                if list.get_ref().is_empty() {
                    let message = "must list at least one status";
                    return Err(src.error_at(list, &format!("{key}.expect_status"), message));
                }
                let mut statuses = Vec::with_capacity(list.get_ref().len());
                for (j, status) in list.get_ref().iter().enumerate() {
                    statuses.push(src.integer(
                        status,
                        &format!("{key}.expect_status[{j}]"),
                        100u16,
                        599,
                    )?);
                }
                Some(statuses)
            }
            None => None,
        };
        let duration = |value: &Option<Spanned<String>>, name: &str, default: Duration| {
            let Some(value) = value else {
                return Ok(default);
            };
            match src.duration(value, &format!("{key}.{name}"))? {
                d if !d.is_zero() && d <= MAX_CHECK_DURATION => Ok(d),
                _ => Err(src.error_at(
                    value,
                    &format!("{key}.{name}"),
                    "must be above 0 and at most 1h",
                )),
            }
        };
        // HAProxy's semantics: fastinter and downinter default to the interval.
        let interval = duration(&self.interval, "interval", defaults.interval)?;
        let fastinter = duration(&self.fastinter, "fastinter", interval)?;
        let downinter = duration(&self.downinter, "downinter", interval)?;
        let timeout = duration(&self.timeout, "timeout", defaults.timeout)?;
        let count = |value: &Option<Spanned<Integer>>, name: &str, default: u32| match value {
            Some(v) => src.integer(v, &format!("{key}.{name}"), 1, MAX_RISE_FALL),
            None => Ok(default),
        };
        let rise = count(&self.rise, "rise", defaults.rise)?;
        let fall = count(&self.fall, "fall", defaults.fall)?;
        let command = match (&self.command, kind) {
            (Some(list), _) => {
                let words = list.get_ref();
                if words.first().is_none_or(|w| w.get_ref().is_empty()) {
                    let message = "needs a program to run (the first word)";
                    return Err(src.error_at(list, &format!("{key}.command"), message));
                }
                for (j, word) in words.iter().enumerate() {
                    if let Some(unknown) = unknown_placeholder(word.get_ref()) {
                        let message = format!(
                            "unknown placeholder {unknown}; use {}",
                            COMMAND_PLACEHOLDERS.join(", ")
                        );
                        return Err(src.error_at(word, &format!("{key}.command[{j}]"), message));
                    }
                }
                Some(words.iter().map(|w| w.get_ref().clone()).collect())
            }
            (None, CheckKind::Exec) => {
                let at = src.table(&[Step::Key("vip"), Step::Index(i), Step::Key("health")]);
                return Err(src.error(
                    at,
                    &format!("{key}.command"),
                    "kind = \"exec\" needs a command",
                ));
            }
            (None, _) => None,
        };
        Ok(HealthConfig {
            kind,
            port,
            path,
            host,
            expect_status,
            interval,
            fastinter,
            downinter,
            timeout,
            rise,
            fall,
            command,
        })
    }
}

impl RawVrrp {
    fn validate(&self, src: &Source<'_>, vips: &[VipConfig]) -> Result<VrrpConfig, ConfigError> {
        let table = [Step::Key("vrrp")];
        let interface = src.required(&self.interface, &table, "vrrp.interface")?;
        if !valid_ifname(interface.get_ref()) {
            let message = format!(
                "{:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)",
                interface.get_ref()
            );
            return Err(src.error_at(interface, "vrrp.interface", message));
        }
        let vrid = src.integer(
            src.required(&self.vrid, &table, "vrrp.vrid")?,
            "vrrp.vrid",
            1u8,
            255,
        )?;
        let priority = match &self.priority {
            Some(v) if v.get_ref().0 == 255 => {
                let message = "255 is the address owner's priority (a router whose own addresses are the virtual ones); weir holds the VIPs as a backup does: use 1..=254";
                return Err(src.error_at(v, "vrrp.priority", message));
            }
            Some(v) => src.integer(v, "vrrp.priority", 1u8, 254)?,
            None => DEFAULT_VRRP_PRIORITY,
        };
        let advert_interval = match &self.advert_interval {
            Some(v) => {
                let interval = src.duration(v, "vrrp.advert_interval")?;
                if interval.as_millis() % 10 != 0
                    || !(Duration::from_millis(10)..=MAX_ADVERT_INTERVAL).contains(&interval)
                {
                    let message = "must be 10ms..=40950ms in steps of 10ms (VRRPv3 carries centiseconds in 12 bits)";
                    return Err(src.error_at(v, "vrrp.advert_interval", message));
                }
                interval
            }
            None => DEFAULT_ADVERT_INTERVAL,
        };
        let optional_duration = |value: &Option<Spanned<String>>, key: &str, default| match value {
            Some(v) => src.duration(v, key),
            None => Ok(default),
        };
        let preempt_delay =
            optional_duration(&self.preempt_delay, "vrrp.preempt_delay", Duration::ZERO)?;
        let garp_refresh = optional_duration(
            &self.garp_refresh,
            "vrrp.garp_refresh",
            DEFAULT_GARP_REFRESH,
        )?;
        let mut unicast_peers: Vec<IpAddr> = Vec::new();
        for (i, peer) in self.unicast_peers.iter().flatten().enumerate() {
            let key = format!("vrrp.unicast_peers[{i}]");
            let address = src.address(peer, &key)?;
            if unicast_peers.contains(&address) {
                return Err(src.error_at(peer, &key, format!("{address} is listed twice")));
            }
            unicast_peers.push(address);
        }
        // Unicast: every family that has VIPs (an instance) needs a peer of its family.
        if let Some(first) = self.unicast_peers.as_ref().and_then(|peers| peers.first()) {
            for (i, vip) in vips.iter().enumerate() {
                if !unicast_peers
                    .iter()
                    .any(|p| p.is_ipv4() == vip.address.is_ipv4())
                {
                    let message = format!(
                        "no {} peer, but vip[{i}] ({}) is {}: each family with VIPs runs its own instance and needs peers of that family",
                        family(vip.address),
                        vip.address,
                        family(vip.address)
                    );
                    return Err(src.error_at(first, "vrrp.unicast_peers", message));
                }
            }
        }
        let track_weight = match &self.track_weight {
            Some(v) => src.integer(v, "vrrp.track_weight", 0u8, 254)?,
            None => DEFAULT_TRACK_WEIGHT,
        };
        let garp_repeat = match &self.garp_repeat {
            Some(v) => src.integer(v, "vrrp.garp_repeat", 1u32, MAX_GARP_REPEAT)?,
            None => DEFAULT_GARP_REPEAT,
        };
        let notify = match &self.notify {
            Some(list) => {
                if list
                    .get_ref()
                    .first()
                    .is_some_and(|c| c.get_ref().is_empty())
                {
                    let message = "the command (first element) is empty";
                    return Err(src.error_at(list, "vrrp.notify", message));
                }
                list.get_ref().iter().map(|a| a.get_ref().clone()).collect()
            }
            None => Vec::new(),
        };
        Ok(VrrpConfig {
            interface: interface.get_ref().clone(),
            vrid,
            priority,
            advert_interval,
            preempt: self.preempt.unwrap_or(true),
            preempt_delay,
            unicast_peers,
            track_vips: self.track_vips.unwrap_or(true),
            track_weight,
            garp_repeat,
            garp_refresh,
            notify,
        })
    }
}

/// The first `{…}` in `word` that is not one of [`COMMAND_PLACEHOLDERS`].
fn unknown_placeholder(word: &str) -> Option<&str> {
    let mut rest = word;
    while let Some(open) = rest.find('{') {
        let after = &rest[open..];
        let close = after.find('}').map_or(after.len(), |c| c + 1);
        let candidate = &after[..close];
        if !COMMAND_PLACEHOLDERS.contains(&candidate) {
            return Some(candidate);
        }
        rest = &after[close..];
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in text.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

fn family(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// What Linux accepts as a device name (`dev_valid_name`): shorter than IFNAMSIZ (16),
/// not `.` or `..`, no `/`, `:` or whitespace.
fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| matches!(b, b'/' | b':' | b'\0' | b'\x0b') || b.is_ascii_whitespace())
}

fn valid_vip_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// toml's messages span several lines; errors here are one line each.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Readable path (`vip[1].backend[0].weight`) of the innermost key or value of the
/// document whose span contains `offset`.
fn path_at(root: &toml_edit::Table, offset: usize) -> String {
    let mut path = String::new();
    if find_in_table(root, offset, &mut path) {
        path
    } else {
        "(document)".to_owned()
    }
}

fn find_in_table(table: &dyn TableLike, offset: usize, path: &mut String) -> bool {
    for (name, item) in table.iter() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(name);
        let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
        if contains(key_span, offset) || find_in_item(item, offset, path) {
            return true;
        }
        path.truncate(len);
    }
    false
}

fn find_in_item(item: &Item, offset: usize, path: &mut String) -> bool {
    match item {
        Item::None => false,
        Item::Value(value) => find_in_value(value, offset, path),
        Item::Table(table) => find_in_table(table, offset, path) || contains(table.span(), offset),
        Item::ArrayOfTables(array) => array.iter().enumerate().any(|(i, table)| {
            with_index(path, i, |path| {
                find_in_table(table, offset, path) || contains(table.span(), offset)
            })
        }),
    }
}

fn find_in_value(value: &Value, offset: usize, path: &mut String) -> bool {
    let inside = match value {
        Value::Array(array) => array
            .iter()
            .enumerate()
            .any(|(i, v)| with_index(path, i, |path| find_in_value(v, offset, path))),
        Value::InlineTable(table) => find_in_table(table, offset, path),
        _ => false,
    };
    inside || contains(value.span(), offset)
}

/// Runs `find` with `[i]` appended to `path`, keeping it only if `find` succeeds.
fn with_index(path: &mut String, i: usize, find: impl FnOnce(&mut String) -> bool) -> bool {
    let len = path.len();
    path.push_str(&format!("[{i}]"));
    let found = find(path);
    if !found {
        path.truncate(len);
    }
    found
}

fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.contains(&offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"# weir test configuration
[agent]
interfaces = ["eth0", "eth1"]
xdp_mode = "native"
conntrack_entries = 2048

[[vip]]
name = "web"
address = "198.18.0.10"
port = 80

[[vip.backend]]
address = "198.18.1.11"

[[vip.backend]]
address = "198.18.1.12"
weight = 0
state = "drain"

[[vip]]
name = "dns"
address = "2001:db8::53"
port = 53
protocol = "udp"
forwarding = "dsr"
hash = "source-ip"
table_size = 251

[[vip.backend]]
address = "2001:db8::1:53"
weight = 10000
"#;

    const AGENT: &str = "[agent]\ninterfaces = [\"eth0\"]\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "weir.toml")
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// `AGENT` followed by one VIP `web` at 198.18.0.10:80 with the given extra lines;
    /// the VIP's extra lines start at line 7.
    fn web(extra: &str) -> String {
        format!("{AGENT}\n[[vip]]\nname = \"web\"\naddress = \"198.18.0.10\"\n{extra}")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn full_config_with_defaults() {
        let config = parse(FULL).expect("valid");
        let expected = Config {
            flows: FlowSettings::default(),
            agent: AgentConfig {
                interfaces: vec!["eth0".into(), "eth1".into()],
                xdp_mode: XdpMode::Native,
                conntrack_entries: 2048,
                bpf_pin_dir: PathBuf::from(DEFAULT_BPF_PIN_DIR),
                state_dir: PathBuf::from(DEFAULT_STATE_DIR),
                api_socket: PathBuf::from(DEFAULT_API_SOCKET),
                api_listen: None,
                api_token_file: None,
                nat_entries: DEFAULT_NAT_ENTRIES,
            },
            vips: vec![
                VipConfig {
                    name: "web".into(),
                    address: ip("198.18.0.10"),
                    port: 80,
                    protocol: Protocol::Tcp,
                    forwarding: Forwarding::Dsr,
                    nat_source: None,
                    hash: HashMode::FiveTuple,
                    table_size: maglev::DEFAULT_TABLE_SIZE,
                    health: HealthConfig::default_for(Protocol::Tcp, 80),
                    backends: vec![
                        BackendConfig {
                            port: None,
                            address: ip("198.18.1.11"),
                            weight: DEFAULT_WEIGHT,
                            state: AdminState::Ready,
                        },
                        BackendConfig {
                            port: None,
                            address: ip("198.18.1.12"),
                            weight: 0,
                            state: AdminState::Drain,
                        },
                    ],
                },
                VipConfig {
                    name: "dns".into(),
                    address: ip("2001:db8::53"),
                    port: 53,
                    protocol: Protocol::Udp,
                    forwarding: Forwarding::Dsr,
                    nat_source: None,
                    hash: HashMode::SourceIp,
                    table_size: 251,
                    health: HealthConfig::default_for(Protocol::Udp, 53),
                    backends: vec![BackendConfig {
                        port: None,
                        address: ip("2001:db8::1:53"),
                        weight: 10_000,
                        state: AdminState::Ready,
                    }],
                },
            ],
            announce: None,
            vrrp: None,
            frontends: Vec::new(),
        };
        assert_eq!(config, expected);
        assert_eq!(config.vips[1].protocol.number(), PROTO_UDP);
        assert_eq!(config.vips[0].protocol.number(), PROTO_TCP);
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let config = parse(AGENT).expect("valid");
        assert_eq!(config.agent.xdp_mode, XdpMode::Auto);
        assert_eq!(config.agent.conntrack_entries, DEFAULT_CONNTRACK_ENTRIES);
        assert!(config.vips.is_empty());
        // A VIP without backends is valid: its new flows are dropped and counted.
        let config = parse(&web("port = 0\n")).expect("valid");
        assert!(config.vips[0].backends.is_empty());
        assert_eq!(config.vips[0].port, 0);
    }

    /// What the agent prints reads back as the same configuration.
    #[test]
    fn serializes_to_the_file_format() {
        let config = parse(FULL).expect("valid");
        let text = toml::to_string(&config).expect("serializable");
        assert_eq!(parse(&text).expect("reads back"), config);
        let empty = parse(AGENT).expect("valid");
        assert_eq!(
            parse(&toml::to_string(&empty).expect("serializable")).expect("reads back"),
            empty
        );
    }

    #[test]
    fn inline_tables_are_the_same_config() {
        let inline = r#"
agent = { interfaces = ["eth0", "eth1"], xdp_mode = "native", conntrack_entries = 2048 }
vip = [
  { name = "web", address = "198.18.0.10", port = 80, backend = [{ address = "198.18.1.11" }, { address = "198.18.1.12", weight = 0, state = "drain" }] },
  { name = "dns", address = "2001:db8::53", port = 53, protocol = "udp", forwarding = "dsr", hash = "source-ip", table_size = 251, backend = [{ address = "2001:db8::1:53", weight = 10000 }] },
]
"#;
        assert_eq!(parse(inline).expect("valid"), parse(FULL).expect("valid"));
        // Dotted keys make tables without a header; a missing key points at the first.
        let dotted = "agent.interfaces = [\"eth0\"]\nagent.xdp_mode = \"generic\"\n";
        assert_eq!(
            parse(dotted).expect("valid").agent.xdp_mode,
            XdpMode::Generic
        );
        assert_eq!(
            error("\nagent.xdp_mode = \"auto\"\n"),
            "weir.toml:2:1: agent.interfaces: required key is missing"
        );
        let bad = "agent = { interfaces = [\"eth0\"] }\nvip = [{ name = \"web\", address = \"198.18.0.10\", port = 80, backend = [{ address = \"198.18.1.11\", wieght = 1 }] }]\n";
        assert_eq!(
            error(bad),
            "weir.toml:2:98: vip[0].backend[0].wieght: unknown field `wieght`, expected one of `address`, `port`, `weight`, `state`"
        );
    }

    #[test]
    fn syntax_error() {
        let message = error("[agent]\ninterfaces = [\"eth0\"]\nxdp_mode = \n");
        assert!(
            message.starts_with("weir.toml:3:12: syntax error: "),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
        let message = error("[agent]\ninterfaces = [\"eth0\"]\n[agent]\n");
        assert!(message.starts_with("weir.toml:3:"), "{message}");
        assert!(message.contains("duplicate key"), "{message}");
    }

    #[test]
    fn type_errors_name_the_key() {
        assert_eq!(
            error(&web("port = \"eighty\"\n")),
            "weir.toml:7:8: vip[0].port: invalid type: string \"eighty\", expected an integer"
        );
        assert_eq!(
            error("[agent]\ninterfaces = [\"eth0\", 3]\n"),
            "weir.toml:2:23: agent.interfaces[1]: invalid type: integer `3`, expected a string"
        );
        assert_eq!(
            error(&web(
                "port = 80\n[[vip.backend]]\naddress = \"198.18.1.11\"\nweight = 1.5\n"
            )),
            "weir.toml:10:10: vip[0].backend[0].weight: invalid type: floating point `1.5`, expected an integer"
        );
        let message = error(&format!("{AGENT}[vip]\nname = \"web\"\n"));
        assert!(
            message.starts_with("weir.toml:3:1: vip: invalid type: map"),
            "{message}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert_eq!(
            error(&format!("{AGENT}xdp = \"native\"\n")),
            "weir.toml:3:1: agent.xdp: unknown field `xdp`, expected one of `interfaces`, `xdp_mode`, `conntrack_entries`, `bpf_pin_dir`, `state_dir`, `api_socket`, `api_listen`, `api_token_file`, `nat_entries`"
        );
        assert!(
            error(&format!("{AGENT}[agnet]\n"))
                .starts_with("weir.toml:3:2: agnet: unknown field `agnet`, expected")
        );
        assert!(
            error(&web("port = 80\nweight = 3\n"))
                .starts_with("weir.toml:8:1: vip[0].weight: unknown field `weight`")
        );
    }

    #[test]
    fn enumerations() {
        assert_eq!(
            error(&format!("{AGENT}xdp_mode = \"offload\"\n")),
            "weir.toml:3:12: agent.xdp_mode: unknown variant `offload`, expected one of `auto`, `native`, `generic`"
        );
        assert!(
            error(&web("port = 80\nprotocol = \"sctp\"\n"))
                .starts_with("weir.toml:8:12: vip[0].protocol: unknown variant `sctp`")
        );
        assert!(
            error(&web("port = 80\nhash = \"round-robin\"\n"))
                .starts_with("weir.toml:8:8: vip[0].hash: unknown variant")
        );
    }

    #[test]
    fn nat_vips_and_their_settings() {
        let config = parse(&web(
            "port = 80\nforwarding = \"nat\"\nnat_source = \"198.18.0.1\"\n\
             [[vip.backend]]\naddress = \"198.18.1.11\"\nport = 8080\n\
             [[vip.backend]]\naddress = \"198.18.1.12\"\n",
        ))
        .expect("valid");
        let vip = &config.vips[0];
        assert_eq!(vip.forwarding, Forwarding::Nat);
        assert_eq!(vip.nat_source, Some(ip("198.18.0.1")));
        assert_eq!(vip.backends[0].port, Some(8080));
        assert_eq!(vip.backends[1].port, None, "defaults to the VIP's port");
        assert_eq!(config.flows, FlowSettings::default());
        assert_eq!(
            config.flows.nat_ports,
            PortRange {
                first: 1024,
                last: 32767
            }
        );

        assert_eq!(
            error(&web(
                "port = 80\n[[vip.backend]]\naddress = \"198.18.1.11\"\nport = 8080\n"
            )),
            "weir.toml:10:8: vip[0].backend[0].port: DSR cannot change the port: the backend receives the client's packet as sent (use forwarding = \"nat\")"
        );
        assert_eq!(
            error(&web(
                "port = 0\nforwarding = \"nat\"\n[[vip.backend]]\naddress = \"198.18.1.11\"\nport = 8080\n"
            )),
            "weir.toml:11:8: vip[0].backend[0].port: a VIP on every port (port = 0) keeps the client's destination port; remove the backend port"
        );
        assert_eq!(
            error(&web("port = 80\nnat_source = \"198.18.0.1\"\n")),
            "weir.toml:8:14: vip[0].nat_source: only NAT forwarding has a source address (set forwarding = \"nat\")"
        );
        assert_eq!(
            error(&web(
                "port = 80\nforwarding = \"nat\"\nnat_source = \"2001:db8::1\"\n"
            )),
            "weir.toml:9:14: vip[0].nat_source: 2001:db8::1 is IPv6 but the VIP address 198.18.0.10 is IPv4"
        );
        assert!(
            error(&web(
                "port = 80\nforwarding = \"nat\"\n[[vip.backend]]\naddress = \"2001:db8::1\"\n"
            ))
            .contains("NAT does not translate between families")
        );
    }

    #[test]
    fn flow_settings() {
        let config = parse(&format!(
            "{AGENT}nat_entries = 4096\n[flows]\ntcp_idle_timeout = \"10m\"\nudp_idle_timeout = \"10s\"\n\
             tcp_linger = \"500ms\"\nnat_ports = \"40000-40009\"\n"
        ))
        .expect("valid");
        assert_eq!(config.agent.nat_entries, 4096);
        assert_eq!(
            config.flows,
            FlowSettings {
                tcp_idle_timeout: Duration::from_secs(600),
                udp_idle_timeout: Duration::from_secs(10),
                tcp_linger: Duration::from_millis(500),
                nat_ports: PortRange {
                    first: 40000,
                    last: 40009
                },
            }
        );
        let timeouts = config.flows.timeouts(true);
        assert_eq!(
            (timeouts.nat_port_first, timeouts.nat_port_count),
            (40000, 10)
        );
        assert_eq!(timeouts.udp_idle_ns, 10_000_000_000);
        assert_eq!(config.flows.timeouts(false).nat_port_count, 0);

        let flows = |text: &str| error(&format!("{AGENT}[flows]\n{text}\n"));
        assert!(flows("nat_ports = \"100-200\"").contains("must lie within 1024-65535"));
        assert!(flows("nat_ports = \"5000-4000\"").contains("not be empty"));
        assert!(flows("nat_ports = \"5000\"").contains("is not a port range"));
        assert!(
            flows("tcp_linger = \"0s\"")
                .contains("flows.tcp_linger: must be at least 100ms and at most 24h")
        );
        assert!(flows("tcp_linger = 2").contains("flows.tcp_linger: invalid type"));
        assert!(flows("udp_timeout = 3").contains("unknown field"));
    }

    #[test]
    fn missing_and_empty_interfaces() {
        assert_eq!(
            error(""),
            "weir.toml:1:1: agent: required table [agent] is missing"
        );
        assert_eq!(
            error("# agent\n[agent]\nxdp_mode = \"auto\"\n"),
            "weir.toml:2:1: agent.interfaces: required key is missing"
        );
        assert_eq!(
            error("[agent]\ninterfaces = []\n"),
            "weir.toml:2:14: agent.interfaces: must list at least one interface"
        );
        assert_eq!(
            error("[agent]\ninterfaces = [\"eth0\", \"eth0\"]\n"),
            "weir.toml:2:23: agent.interfaces[1]: interface \"eth0\" is already listed as agent.interfaces[0]"
        );
        for bad in ["", "a/b", "eth 0", "eth0:1", "sixteen-chars-xx", ".."] {
            let message = error(&format!("[agent]\ninterfaces = [\"{bad}\"]\n"));
            assert!(
                message.starts_with("weir.toml:2:15: agent.interfaces[0]: "),
                "{message}"
            );
        }
        // Columns count characters, not bytes.
        assert!(error("[agent]\ninterfaces = [\"é\", \"é\"]\n").starts_with("weir.toml:2:20: "));
        let many: Vec<String> = (0..=MAX_INTERFACES).map(|i| format!("\"e{i}\"")).collect();
        let message = error(&format!("[agent]\ninterfaces = [{}]\n", many.join(",")));
        assert!(message.contains("at most 64"), "{message}");
    }

    #[test]
    fn conntrack_entries_range() {
        assert_eq!(
            error(&format!("{AGENT}conntrack_entries = 1000\n")),
            "weir.toml:3:21: agent.conntrack_entries: must be in 1024..=67108864, got 1000"
        );
        assert!(error(&format!("{AGENT}conntrack_entries = 67108865\n")).contains("got 67108865"));
        assert!(parse(&format!("{AGENT}conntrack_entries = 67108864\n")).is_ok());
    }

    #[test]
    fn vip_fields() {
        assert_eq!(
            error(&web("")),
            "weir.toml:4:1: vip[0].port: required key is missing"
        );
        assert_eq!(
            error(&web("port = 65536\n")),
            "weir.toml:7:8: vip[0].port: must be in 0..=65535, got 65536"
        );
        assert_eq!(
            error(&format!("{AGENT}[[vip]]\nname = \"web\"\nport = 80\n")),
            "weir.toml:3:1: vip[0].address: required key is missing"
        );
        assert_eq!(
            error(&format!(
                "{AGENT}[[vip]]\nname = \"web\"\naddress = \"198.18.0\"\nport = 80\n"
            )),
            "weir.toml:5:11: vip[0].address: \"198.18.0\" is not an IPv4 or IPv6 address"
        );
        assert_eq!(
            error(&format!(
                "{AGENT}[[vip]]\nname = \"web server\"\naddress = \"198.18.0.10\"\nport = 80\n"
            )),
            "weir.toml:4:8: vip[0].name: \"web server\" is not a valid VIP name (1 to 64 of A-Z a-z 0-9 _ . -)"
        );
        assert!(
            error(&format!(
                "{AGENT}[[vip]]\naddress = \"198.18.0.10\"\nport = 80\n"
            ))
            .starts_with("weir.toml:3:1: vip[0].name: required")
        );
        let long = "a".repeat(65);
        assert!(
            error(&format!(
                "{AGENT}[[vip]]\nname = \"{long}\"\naddress = \"198.18.0.10\"\nport = 80\n"
            ))
            .contains("not a valid VIP name")
        );
        assert!(
            parse(&format!(
                "{AGENT}[[vip]]\nname = \"{}\"\naddress = \"198.18.0.10\"\nport = 80\n",
                &long[1..]
            ))
            .is_ok()
        );
    }

    #[test]
    fn duplicate_vips() {
        let second = |name: &str, port: u16, protocol: &str| {
            format!(
                "{}\n[[vip]]\nname = \"{name}\"\naddress = \"198.18.0.10\"\nport = {port}\nprotocol = \"{protocol}\"\n",
                web("port = 80\n")
            )
        };
        assert_eq!(
            error(&second("web", 443, "tcp")),
            "weir.toml:10:8: vip[1].name: VIP name \"web\" is already used by vip[0]"
        );
        assert_eq!(
            error(&second("web2", 80, "tcp")),
            "weir.toml:11:11: vip[1].address: 198.18.0.10 port 80 tcp is already served by vip[0] (\"web\")"
        );
        // Another protocol, or every port of the address, is another VIP.
        assert!(parse(&second("web2", 80, "udp")).is_ok());
        assert!(parse(&second("web2", 0, "tcp")).is_ok());
    }

    #[test]
    fn backends() {
        let backend = |address: &str, extra: &str| {
            format!("[[vip.backend]]\naddress = \"{address}\"\n{extra}")
        };
        let two =
            |a: &str, b: &str| web(&format!("port = 80\n{}{}", backend(a, ""), backend(b, "")));
        assert_eq!(
            error(&two("198.18.1.11", "198.18.1.11")),
            "weir.toml:11:11: vip[0].backend[1].address: backend 198.18.1.11 is already listed as vip[0].backend[0]"
        );
        assert_eq!(
            error(&two("198.18.1.11", "2001:db8::11")),
            "weir.toml:11:11: vip[0].backend[1].address: backend 2001:db8::11 is IPv6 but the VIP address 198.18.0.10 is IPv4; DSR rewrites only MAC addresses, so a backend must have its VIP's address family"
        );
        assert!(
            error(&web(&format!("port = 80\n{}", backend("backend-1", ""))))
                .contains("is not an IPv4 or IPv6 address")
        );
        assert_eq!(
            error(&web("port = 80\n[[vip.backend]]\nweight = 5\n")),
            "weir.toml:8:1: vip[0].backend[0].address: required key is missing"
        );
        assert_eq!(
            error(&web(&format!(
                "port = 80\n{}",
                backend("198.18.1.11", "weight = 10001\n")
            ))),
            "weir.toml:10:10: vip[0].backend[0].weight: must be in 0..=10000, got 10001"
        );
        assert!(
            error(&web(&format!(
                "port = 80\n{}",
                backend("198.18.1.11", "weight = -1\n")
            )))
            .contains("must be in 0..=10000, got -1")
        );
        // Spelled differently, still the same address.
        let v6 = format!(
            "{AGENT}[[vip]]\nname = \"v6\"\naddress = \"2001:db8::10\"\nport = 80\n{}{}",
            backend("2001:db8::1", ""),
            backend("2001:DB8:0::1", "")
        );
        assert!(error(&v6).contains("already listed"));
    }

    #[test]
    fn table_size() {
        assert_eq!(
            error(&web("port = 80\ntable_size = 65536\n")),
            "weir.toml:8:14: vip[0].table_size: 65536 is not prime; Maglev needs a prime table size (e.g. 65537)"
        );
        assert_eq!(
            error(&web("port = 80\ntable_size = 1048583\n")),
            "weir.toml:8:14: vip[0].table_size: must be in 2..=1048573, got 1048583"
        );
        assert_eq!(
            error(&web(
                "port = 80\ntable_size = 2\n[[vip.backend]]\naddress = \"198.18.1.11\"\n[[vip.backend]]\naddress = \"198.18.1.12\"\n"
            )),
            "weir.toml:8:14: vip[0].table_size: must be greater than the number of backends (2)"
        );
        assert_eq!(
            parse(&web("port = 80\ntable_size = 1048573\n"))
                .expect("valid")
                .vips[0]
                .table_size,
            maglev::MAX_TABLE_SIZE
        );
    }

    #[test]
    fn capacity_limits() {
        let vips: String = (0..=MAX_VIPS)
            .map(|i| format!("[[vip]]\nname = \"v{i}\"\naddress = \"198.18.0.10\"\nport = {i}\n"))
            .collect();
        let message = error(&format!("{AGENT}{vips}"));
        assert!(
            message.contains(":4099:1: vip[1024]: too many VIPs"),
            "{message}"
        );
        let backends: String = (0..=MAX_BACKENDS)
            .map(|i| {
                format!(
                    "[[vip.backend]]\naddress = \"10.{}.{}.{}\"\n",
                    i >> 16,
                    (i >> 8) & 255,
                    i & 255
                )
            })
            .collect();
        let message = error(&web(&format!("port = 80\n{backends}")));
        assert!(
            message.contains(":32776:1: vip[0].backend[16384]: too many backends"),
            "{message}"
        );
    }

    #[test]
    fn load_names_the_file() {
        let missing = Path::new("/nonexistent/weir.toml");
        let message = Config::load(missing).expect_err("no such file").to_string();
        assert!(
            message.starts_with("cannot read /nonexistent/weir.toml: "),
            "{message}"
        );

        let path =
            std::env::temp_dir().join(format!("weir-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, "[agent]\ninterfaces = []\n").expect("temp file");
        let message = Config::load(&path).expect_err("invalid").to_string();
        std::fs::write(&path, FULL).expect("temp file");
        let loaded = Config::load(&path);
        std::fs::remove_file(&path).expect("temp file");
        assert_eq!(
            message,
            format!(
                "{}:2:14: agent.interfaces: must list at least one interface",
                path.display()
            )
        );
        assert_eq!(loaded.expect("valid"), parse(FULL).expect("valid"));
    }

    /// Any input either parses or is rejected with a located error; none panics.
    #[test]
    fn mangled_inputs_never_panic() {
        let chars: Vec<char> = FULL.chars().collect();
        for end in 0..=chars.len() {
            let _ = parse(&chars[..end].iter().collect::<String>());
        }
        for i in 0..chars.len() {
            for c in ['"', '[', ']', '=', '\n', '0', 'x', '.', '{', ',', 'é', '\0'] {
                let mut mangled = chars.clone();
                mangled[i] = c;
                if let Err(
                    ConfigError::Invalid { line, column, .. }
                    | ConfigError::Syntax { line, column, .. },
                ) = parse(&mangled.iter().collect::<String>())
                {
                    assert!(line >= 1 && column >= 1);
                }
            }
        }
    }

    #[test]
    fn bpf_pin_dir_must_be_absolute() {
        let err = parse("[agent]\ninterfaces = [\"eth0\"]\nbpf_pin_dir = \"weir\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "weir.toml:3:15: agent.bpf_pin_dir: \"weir\" is not an absolute path"
        );
    }

    #[test]
    fn a_tcp_api_listener_needs_a_token() {
        let err = parse("[agent]\ninterfaces = [\"eth0\"]\napi_listen = \"127.0.0.1:9900\"\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "weir.toml:3:14: agent.api_listen: a TCP listener needs agent.api_token_file (no token, no TCP listener)"
        );
        let ok = parse("[agent]\ninterfaces = [\"eth0\"]\napi_listen = \"127.0.0.1:9900\"\napi_token_file = \"/etc/weir/token\"\n").unwrap();
        assert_eq!(ok.agent.api_listen, Some("127.0.0.1:9900".parse().unwrap()));
    }

    #[test]
    fn announce_names_a_dummy_interface_of_its_own() {
        let config = parse(&format!("{AGENT}[announce]\ninterface = \"weir-vips\"\n")).unwrap();
        assert_eq!(
            config.announce,
            Some(AnnounceConfig {
                interface: "weir-vips".into()
            })
        );
        assert_eq!(parse(AGENT).unwrap().announce, None);
        assert_eq!(
            error(&format!("{AGENT}[announce]\n")),
            "weir.toml:3:1: announce.interface: required key is missing"
        );
        assert_eq!(
            error(&format!("{AGENT}[announce]\ninterface = \"eth0\"\n")),
            "weir.toml:4:13: announce.interface: \"eth0\" is agent.interfaces[0]; the announce interface is a dummy the agent creates and owns, give it a name of its own (e.g. \"weir-vips\")"
        );
        for bad in ["", "weir/vips", "weir vips", "sixteen-chars-xx"] {
            let message = error(&format!("{AGENT}[announce]\ninterface = \"{bad}\"\n"));
            assert!(
                message.starts_with("weir.toml:4:13: announce.interface: ")
                    && message.contains("not a valid interface name"),
                "{message}"
            );
        }
        let message = error(&format!(
            "{AGENT}[announce]\ninterface = \"v\"\nasn = 65001\n"
        ));
        assert!(message.contains("unknown field `asn`"), "{message}");
    }

    #[test]
    fn health_defaults_follow_haproxy() {
        let config = parse(&web("port = 80\n")).expect("valid");
        let health = &config.vips[0].health;
        assert_eq!(health.kind, CheckKind::Tcp);
        assert_eq!((health.rise, health.fall), (2, 3));
        assert_eq!(health.interval, Duration::from_secs(2));
        assert_eq!(
            (health.fastinter, health.downinter),
            (health.interval, health.interval)
        );
        assert_eq!(health.timeout, Duration::from_secs(1));
        assert!(health.status_ok(200) && health.status_ok(302) && !health.status_ok(503));
        // fastinter and downinter follow an explicit interval.
        let config = parse(&web("port = 80\n[vip.health]\ninterval = \"500ms\"\n")).expect("valid");
        assert_eq!(config.vips[0].health.downinter, Duration::from_millis(500));
        let udp = parse(&web("port = 53\nprotocol = \"udp\"\n")).expect("valid");
        assert_eq!(udp.vips[0].health.kind, CheckKind::None);
    }

    #[test]
    fn a_full_health_table() {
        let config = parse(&web(
            "port = 80\n[vip.health]\nkind = \"http\"\nport = 8080\npath = \"/health\"\nhost = \"www.example\"\nexpect_status = [200, 204]\ninterval = \"2s\"\nfastinter = \"500ms\"\ndowninter = \"1m\"\ntimeout = \"1s\"\nrise = 1\nfall = 5\n",
        ))
        .expect("valid");
        let health = &config.vips[0].health;
        assert_eq!(health.port, Some(8080));
        assert_eq!(health.path.as_deref(), Some("/health"));
        assert_eq!(health.host.as_deref(), Some("www.example"));
        assert_eq!(health.expect_status, Some(vec![200, 204]));
        assert_eq!(health.downinter, Duration::from_secs(60));
        assert!(health.status_ok(204) && !health.status_ok(301));
        // It serializes back to the same configuration.
        let text = toml::to_string(&config).expect("serializable");
        assert_eq!(parse(&text).expect("reads back"), config);
        let exec = parse(&web(
            "port = 80\n[vip.health]\nkind = \"exec\"\ncommand = [\"/bin/check\", \"{address}:{port}\", \"{vip}\", \"{vip_port}\"]\n",
        ))
        .expect("valid");
        let text = toml::to_string(&exec).expect("serializable");
        assert_eq!(parse(&text).expect("reads back"), exec);
    }

    #[test]
    fn health_errors_are_located() {
        let health = |lines: &str| error(&web(&format!("port = 80\n[vip.health]\n{lines}")));
        assert_eq!(
            health("kind = \"icmp\"\n"),
            "weir.toml:9:8: vip[0].health.kind: unknown variant `icmp`, expected one of `tcp`, `http`, `https`, `exec`, `none`"
        );
        assert_eq!(
            health("interval = \"2 s\"\n"),
            "weir.toml:9:12: vip[0].health.interval: \"2 s\" is not a duration (a number and ms, s, m or h: \"500ms\", \"1.5s\", \"1m\")"
        );
        assert_eq!(
            health("timeout = \"0ms\"\n"),
            "weir.toml:9:11: vip[0].health.timeout: must be above 0 and at most 1h"
        );
        assert_eq!(
            health("rise = 0\n"),
            "weir.toml:9:8: vip[0].health.rise: must be in 1..=1000, got 0"
        );
        assert_eq!(
            health("kind = \"http\"\nexpect_status = [200, 600]\n"),
            "weir.toml:10:23: vip[0].health.expect_status[1]: must be in 100..=599, got 600"
        );
        assert_eq!(
            health("kind = \"http\"\npath = \"health\"\n"),
            "weir.toml:10:8: vip[0].health.path: \"health\" is not a request path (it starts with '/' and has no white space)"
        );
        assert_eq!(
            health("path = \"/health\"\n"),
            "weir.toml:9:8: vip[0].health.path: only used by kind http or https, not by kind = \"tcp\""
        );
        assert_eq!(
            health("kind = \"exec\"\n"),
            "weir.toml:8:1: vip[0].health.command: kind = \"exec\" needs a command"
        );
        assert_eq!(
            health("kind = \"exec\"\ncommand = []\n"),
            "weir.toml:10:11: vip[0].health.command: needs a program to run (the first word)"
        );
        assert_eq!(
            health("kind = \"exec\"\ncommand = [\"/bin/check\", \"{addr}\"]\n"),
            "weir.toml:10:26: vip[0].health.command[1]: unknown placeholder {addr}; use {address}, {port}, {vip}, {vip_port}"
        );
        assert_eq!(
            health("port = 0\n"),
            "weir.toml:9:8: vip[0].health.port: must be in 1..=65535, got 0"
        );
        assert!(
            health("colour = \"red\"\n")
                .starts_with("weir.toml:9:1: vip[0].health.colour: unknown field")
        );
        assert_eq!(
            error(&web("port = 0\n[vip.health]\nkind = \"tcp\"\n")),
            "weir.toml:8:1: vip[0].health.port: a VIP on every port (port = 0) has no port to check: set health.port"
        );
        assert_eq!(
            parse(&web("port = 0\n")).expect("valid").vips[0]
                .health
                .kind,
            CheckKind::None
        );
        assert!(parse(&web("port = 0\n[vip.health]\nkind = \"tcp\"\nport = 22\n")).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.1s"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        for bad in [
            "",
            "2",
            "s",
            ".5s",
            "1.5ms",
            "1.0001s",
            "1..5s",
            "-1s",
            "2d",
            " 2s",
            "99999999999999999999s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        for d in [1, 999, 1000, 1500, 60_000, 90_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
    }

    const VRRP: &str = "[vrrp]\ninterface = \"eth0\"\nvrid = 51\n";

    /// `AGENT`, one IPv4 VIP and `[vrrp]` with the given extra lines (from line 10 on).
    fn vrrp(extra: &str) -> String {
        format!("{}port = 80\n{VRRP}{extra}", web(""))
    }

    #[test]
    fn vrrp_defaults_and_full_table() {
        assert_eq!(parse(AGENT).expect("valid").vrrp, None);
        let config = parse(&vrrp("")).expect("valid");
        assert_eq!(
            config.vrrp,
            Some(VrrpConfig {
                interface: "eth0".into(),
                vrid: 51,
                priority: DEFAULT_VRRP_PRIORITY,
                advert_interval: Duration::from_secs(1),
                preempt: true,
                preempt_delay: Duration::ZERO,
                unicast_peers: vec![],
                track_vips: true,
                track_weight: DEFAULT_TRACK_WEIGHT,
                garp_repeat: DEFAULT_GARP_REPEAT,
                garp_refresh: Duration::from_secs(60),
                notify: vec![],
            })
        );
        let config = parse(&vrrp(
            "priority = 150\nadvert_interval = \"100ms\"\npreempt = false\npreempt_delay = \"1.5s\"\n\
             unicast_peers = [\"198.18.0.3\"]\ntrack_vips = false\ntrack_weight = 20\n\
             garp_repeat = 3\ngarp_refresh = \"0s\"\nnotify = [\"/usr/local/bin/vrrp-notify\", \"weir\"]\n",
        ))
        .expect("valid");
        let vrrp = config.vrrp.as_ref().expect("vrrp");
        assert_eq!(vrrp.advert_interval, Duration::from_millis(100));
        assert_eq!(vrrp.preempt_delay, Duration::from_millis(1500));
        assert_eq!(vrrp.garp_refresh, Duration::ZERO);
        assert_eq!(vrrp.unicast_peers, [ip("198.18.0.3")]);
        assert_eq!(vrrp.notify, ["/usr/local/bin/vrrp-notify", "weir"]);
        assert!(!vrrp.preempt && !vrrp.track_vips);
        // What the agent prints reads back the same.
        let text = toml::to_string(&config).expect("serializable");
        assert_eq!(parse(&text).expect("reads back"), config);
    }

    #[test]
    fn vrrp_errors_name_key_and_position() {
        let cases = [
            (
                "[vrrp]\nvrid = 1\n",
                "vrrp.interface: required key is missing",
            ),
            (
                "[vrrp]\ninterface = \"eth0\"\nvrid = 0\n",
                "weir.toml:5:8: vrrp.vrid: must be in 1..=255, got 0",
            ),
            (
                "priority = 255\n",
                "vrrp.priority: 255 is the address owner's priority",
            ),
            ("priority = 0\n", "vrrp.priority: must be in 1..=254, got 0"),
            (
                "advert_interval = \"15ms\"\n",
                "vrrp.advert_interval: must be 10ms..=40950ms in steps of 10ms",
            ),
            (
                "advert_interval = \"41s\"\n",
                "vrrp.advert_interval: must be 10ms..=40950ms",
            ),
            (
                "advert_interval = \"1 s\"\n",
                "vrrp.advert_interval: \"1 s\" is not a duration",
            ),
            (
                "garp_refresh = \"1.0001s\"\n",
                "vrrp.garp_refresh: \"1.0001s\" is not a duration",
            ),
            (
                "unicast_peers = [\"2001:db8::3\"]\n",
                "vrrp.unicast_peers: no IPv4 peer, but vip[0] (198.18.0.10) is IPv4",
            ),
            (
                "unicast_peers = [\"198.18.0.3\", \"198.18.0.3\"]\n",
                "vrrp.unicast_peers[1]: 198.18.0.3 is listed twice",
            ),
            (
                "unicast_peers = [\"peer\"]\n",
                "vrrp.unicast_peers[0]: \"peer\" is not an IPv4 or IPv6 address",
            ),
            (
                "track_weight = 255\n",
                "vrrp.track_weight: must be in 0..=254",
            ),
            ("garp_repeat = 0\n", "vrrp.garp_repeat: must be in 1..=100"),
            (
                "notify = [\"\"]\n",
                "vrrp.notify: the command (first element) is empty",
            ),
            ("interval = \"1s\"\n", "unknown field `interval`"),
        ];
        for (extra, expected) in cases {
            let text = if extra.starts_with("[vrrp]") {
                format!("{AGENT}{extra}")
            } else {
                vrrp(extra)
            };
            let message = error(&text);
            assert!(message.contains(expected), "{extra:?}: {message}");
        }
    }

    #[test]
    fn vrrp_interface_must_be_a_valid_name() {
        let text = format!("{AGENT}[vrrp]\ninterface = \"a/b\"\nvrid = 1\n");
        assert!(error(&text).contains("vrrp.interface: \"a/b\" is not a valid interface name"));
    }
}
