//! The validated configuration: the types the rest of the agent reads, with their
//! defaults and bounds.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use lb_common::{FlowTimeouts, PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Serialize};

pub use crate::firewall::{FirewallConfig, HostRule, Prefix, VipFirewall};

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
    pub frontends: Vec<FrontendConfig>,
    /// The HAProxy-style stats page and Prometheus metrics (`[stats]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsConfig>,
    /// `[firewall]`: the global new-flow cap and the host's port rules.
    #[serde(skip_serializing_if = "is_default")]
    pub firewall: FirewallConfig,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Default of `stats.uri`, as HAProxy's `stats uri`.
pub const DEFAULT_STATS_URI: &str = "/stats";
/// Default of `stats.refresh`: how often the page reloads itself.
pub const DEFAULT_STATS_REFRESH: Duration = Duration::from_secs(5);
/// Bounds of `stats.refresh`.
pub const STATS_REFRESH: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// `[stats]`: the stats page (`uri`, its `;csv` export and, with `admin`, its forms)
/// and `/metrics`, on one listener of their own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatsConfig {
    pub listen: std::net::SocketAddr,
    pub uri: String,
    /// The users file (`name:hash` lines, bcrypt or SHA-crypt hashes). Without it the
    /// listener must be on a loopback address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<PathBuf>,
    /// The page may set a backend ready, drain or maint.
    pub admin: bool,
    /// `/metrics` asks for the users too (else it is open, as HAProxy's exporter).
    pub metrics_auth: bool,
    #[serde(serialize_with = "crate::config::duration::serialize_duration")]
    pub refresh: Duration,
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
    #[serde(serialize_with = "crate::config::duration::serialize_duration")]
    pub tcp_idle_timeout: Duration,
    /// Time without a packet from the client after which a UDP flow is over.
    #[serde(serialize_with = "crate::config::duration::serialize_duration")]
    pub udp_idle_timeout: Duration,
    /// How long a TCP flow lingers after a FIN or RST (late retransmissions, the last ACK).
    #[serde(serialize_with = "crate::config::duration::serialize_duration")]
    pub tcp_linger: Duration,
    /// How long a NAT flow opened by a SYN lives without a packet until its backend answers.
    #[serde(serialize_with = "crate::config::duration::serialize_duration")]
    pub tcp_embryonic_timeout: Duration,
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
            tcp_embryonic_timeout: Duration::from_nanos(defaults.tcp_embryonic_ns),
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
            tcp_embryonic_ns: ns(self.tcp_embryonic_timeout),
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
    /// Whether established flows keep their backend through the connection table
    /// (default). `false` (DSR only): every packet goes where the Maglev table says, with
    /// no table lookup or insert — for stateless services, where a backend change may
    /// move flows.
    pub conntrack: bool,
    /// Maglev table size: prime, greater than the number of backends.
    pub table_size: u32,
    /// How its backends are checked (`[vip.health]`).
    pub health: HealthConfig,
    /// Source filters, port list and new-flow rate (empty: none).
    #[serde(flatten)]
    pub firewall: VipFirewall,
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
    #[serde(with = "crate::config::duration::duration_text")]
    pub interval: Duration,
    /// While it is rising or falling.
    #[serde(with = "crate::config::duration::duration_text")]
    pub fastinter: Duration,
    /// While it is fully down.
    #[serde(with = "crate::config::duration::duration_text")]
    pub downinter: Duration,
    /// Bound of one whole check (connect, request, answer; or the command's run).
    #[serde(with = "crate::config::duration::duration_text")]
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
    #[serde(serialize_with = "crate::config::duration::serialize_duration")]
    pub advert_interval: Duration,
    pub preempt: bool,
    #[serde(serialize_with = "crate::config::duration::serialize_duration")]
    pub preempt_delay: Duration,
    /// Empty: multicast (224.0.0.18, ff02::12).
    pub unicast_peers: Vec<IpAddr>,
    /// Each VIP that serves no new flow lowers the priority by `track_weight`.
    pub track_vips: bool,
    pub track_weight: u8,
    /// Gratuitous ARPs / unsolicited NAs per address on becoming master.
    pub garp_repeat: u32,
    /// Repeated while master; zero: never.
    #[serde(serialize_with = "crate::config::duration::serialize_duration")]
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

/// Defaults of `[frontend.timeouts]`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest timeout of any kind.
pub const MAX_PROXY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Defaults and bounds of `[frontend.limits]`.
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 16 * 1024;
/// hyper reads a request head in a buffer of at least 8 KiB.
pub const MIN_MAX_HEADER_BYTES: u32 = 8 * 1024;
pub const MAX_MAX_HEADER_BYTES: u32 = 1024 * 1024;
pub const DEFAULT_MAX_H2_STREAMS: u32 = 100;
pub const MAX_MAX_H2_STREAMS: u32 = 10_000;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
pub const MAX_MAX_CONNECTIONS: u32 = 1_000_000;

/// A validated `[[frontend]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrontendConfig {
    pub name: String,
    /// Where HTTPS is served; unique across frontends.
    pub bind: Vec<SocketAddr>,
    /// A PEM file, or a directory of `*.pem` files (one chain and key each, the first in
    /// name order is the default).
    pub certificates: PathBuf,
    /// Offered in this order of preference.
    pub alpn: Vec<Alpn>,
    pub min_tls: TlsVersion,
    /// Where plain HTTP is answered with a redirect to https.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redirect_http: Vec<SocketAddr>,
    /// The Strict-Transport-Security value added to every answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
    pub forward: Forward,
    /// The VIP (of this file) whose backends serve the requests.
    pub backends: String,
    pub timeouts: ProxyTimeouts,
    pub limits: ProxyLimits,
}

/// An ALPN protocol a frontend offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alpn {
    #[serde(rename = "h2")]
    H2,
    #[serde(rename = "http/1.1")]
    Http11,
}

impl Alpn {
    pub fn as_str(self) -> &'static str {
        match self {
            Alpn::H2 => "h2",
            Alpn::Http11 => "http/1.1",
        }
    }
}

/// The oldest TLS version a frontend accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// How a backend learns the client's address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forward {
    /// X-Forwarded-For (appended), X-Forwarded-Proto and X-Forwarded-Port (set).
    #[default]
    XForwardedFor,
    /// A PROXY protocol v2 header on each backend connection; a backend connection then
    /// serves one client connection only.
    ProxyV2,
    None,
}

/// `[frontend.timeouts]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ProxyTimeouts {
    /// From accept to the end of the TLS handshake.
    #[serde(with = "crate::config::duration::duration_text")]
    pub handshake: Duration,
    /// To receive a whole request head (slowloris).
    #[serde(with = "crate::config::duration::duration_text")]
    pub header_read: Duration,
    /// A client connection with no byte in either direction for this long is closed.
    #[serde(with = "crate::config::duration::duration_text")]
    pub idle: Duration,
    /// To connect to a backend.
    #[serde(with = "crate::config::duration::duration_text")]
    pub connect: Duration,
    /// From sending the request to the backend's response head.
    #[serde(with = "crate::config::duration::duration_text")]
    pub response: Duration,
    /// How long connections may finish after the proxy was asked to stop.
    #[serde(with = "crate::config::duration::duration_text")]
    pub drain: Duration,
}

impl Default for ProxyTimeouts {
    fn default() -> Self {
        ProxyTimeouts {
            handshake: DEFAULT_HANDSHAKE_TIMEOUT,
            header_read: DEFAULT_HEADER_READ_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            connect: DEFAULT_CONNECT_TIMEOUT,
            response: DEFAULT_RESPONSE_TIMEOUT,
            drain: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// `[frontend.limits]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ProxyLimits {
    /// Largest request head (HTTP/1.1: answered 431) or header list (HTTP/2).
    pub max_header_bytes: u32,
    /// Concurrent streams per HTTP/2 connection.
    pub max_h2_streams: u32,
    /// Open client connections; more wait in the kernel's accept queue.
    pub max_connections: u32,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_h2_streams: DEFAULT_MAX_H2_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}
