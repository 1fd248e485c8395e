//! `weir`'s admin commands: a client of the agent's control API (JSON over HTTP/1.1 on
//! a Unix socket, `/v1`, shapes in [`crate::control`]).
//!
//! Three layers: the clap arguments ([`ClientArgs`], [`AdminCommand`]); a tiny blocking
//! HTTP client ([`Client`]); and pure formatting (tables, rates between two
//! [`StatsReport`]s, path escaping, pretty JSON) that the commands write out. Errors are
//! [`CliError`], each with the exit code scripts can trust ([`EXIT_CODES`]).

use std::{
    collections::BTreeMap,
    env,
    fmt::Write as _,
    io::{self, BufRead, BufReader, IsTerminal, Read, Write},
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    config::{AdminState, CheckKind, DEFAULT_API_SOCKET, Forwarding, HashMode, Protocol},
    control::{
        BackendChange, BackendView, ErrorBody, FlowView, NewBackend, NewVip, ReloadOutcome, Status,
        VipStatus, VipView,
    },
    report::{StatsReport, Traffic},
};

/// The exit codes, for `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the agent refused or failed the request (its message is printed as `weir: <message>`)
  2  usage error
  3  timed out (`backend drain --wait --timeout`)
  4  cannot reach the agent (no socket, nobody listening, no answer)";

/// Environment variable naming the control socket (the `--socket` option wins).
pub const SOCKET_ENV: &str = "WEIR_SOCKET";

/// How long one request may take before the agent counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How often `backend drain --wait` looks at the backend's flows.
const DRAIN_POLL: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Arguments

/// Options of every admin command (global: they may come before or after the command).
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "Admin command options")]
pub struct ClientArgs {
    /// The agent's control socket [env: WEIR_SOCKET] [default: /run/weir/api.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the agent's JSON answers (pretty printed) instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientArgs {
    /// Whether any of these options was given (they mean nothing to `agent` or `check`).
    pub fn given(&self) -> bool {
        self.socket.is_some() || self.json
    }

    /// `--socket`, else `$WEIR_SOCKET`, else the default.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .or_else(|| {
                env::var_os(SOCKET_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCKET))
    }
}

/// The admin commands: each is one or a few requests to the running agent.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum AdminCommand {
    /// Show the agent's version, uptime, interfaces and what it serves.
    #[command(after_help = EXIT_CODES)]
    Status,
    /// List, show, add or remove VIPs.
    #[command(subcommand)]
    Vip(VipCommand),
    /// List, add, remove, reweight or change the state of a VIP's backends. Changes apply
    /// at once and persist across agent restarts.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// List the live entries of the connection table.
    #[command(after_help = EXIT_CODES)]
    Flows {
        /// Only the flows of this VIP.
        vip: Option<String>,
        /// Only the flows to this backend.
        #[arg(long, value_name = "ADDR")]
        backend: Option<IpAddr>,
    },
    /// Show the dataplane's counters per VIP and backend, and per verdict.
    #[command(after_help = EXIT_CODES)]
    Stats {
        /// Redraw every --interval with packet, byte and new-flow rates (Ctrl-C stops).
        #[arg(long)]
        watch: bool,
        /// Time between two snapshots with --watch (e.g. 500ms, 1s, 2m).
        #[arg(long, requires = "watch", default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
    },
    /// Re-read the configuration file and apply it, as SIGHUP does.
    #[command(after_help = EXIT_CODES)]
    Reload,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum VipCommand {
    /// List the VIPs, with their backend and flow counts.
    #[command(after_help = EXIT_CODES)]
    List,
    /// Show one VIP and its backends.
    #[command(after_help = EXIT_CODES)]
    Show {
        /// The VIP's name.
        name: String,
    },
    /// Add a VIP, with its backends; it serves at once and persists across agent restarts.
    #[command(after_help = EXIT_CODES)]
    Add(VipAddArgs),
    /// Remove a VIP: it stops serving, and its flows are forgotten.
    #[command(after_help = EXIT_CODES)]
    Remove {
        /// The VIP's name.
        name: String,
    },
}

/// `weir vip add`'s arguments; absent options take the agent's defaults.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct VipAddArgs {
    /// The VIP's name.
    pub name: String,
    /// The VIP's IP address.
    pub address: IpAddr,
    /// The VIP's port; 0 means every port of the address.
    pub port: u16,
    /// tcp or udp (default tcp).
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// What picks a flow's backend: 5-tuple or source-ip (default 5-tuple).
    #[arg(long, value_parser = parse_hash)]
    pub hash: Option<HashMode>,
    /// Maglev table size: a prime greater than the number of backends.
    #[arg(long, value_name = "N")]
    pub table_size: Option<u32>,
    /// dsr or nat (default dsr).
    #[arg(long, value_parser = parse_forwarding)]
    pub forwarding: Option<Forwarding>,
    /// NAT: the source address towards the backends (default: the host's own).
    #[arg(long, value_name = "ADDR")]
    pub nat_source: Option<IpAddr>,
    /// A backend, with its weight (default 100): 198.18.0.11, 198.18.0.11:50,
    /// 2001:db8::1, [2001:db8::1]:50. Repeat for each backend.
    #[arg(long = "backend", value_name = "ADDR[:WEIGHT]", value_parser = parse_backend_spec)]
    pub backends: Vec<BackendSpec>,
    /// A key of the VIP's health check, as in the file's [vip.health]: kind=http,
    /// path=/health, interval=500ms, rise=3, expect_status=[200,204],
    /// 'command=["/usr/local/bin/check","{address}"]'. Repeat for each key.
    #[arg(long = "health", value_name = "KEY=VALUE", value_parser = parse_health_setting)]
    pub health: Vec<HealthSetting>,
}

/// One `--health KEY=VALUE` of `weir vip add`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSetting {
    pub key: String,
    pub value: serde_json::Value,
}

/// `KEY=VALUE`: the value is read as a TOML value (a number, a list, a quoted string),
/// and taken as a plain string when it is not one (`kind=http`, `interval=2s`).
pub fn parse_health_setting(text: &str) -> Result<HealthSetting, String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("{text:?}: expected KEY=VALUE"));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{text:?}: the key is empty"));
    }
    let value = value.trim();
    let value = match format!("value = {value}").parse::<toml::Table>() {
        Ok(mut table) => {
            serde_json::to_value(table.remove("value")).map_err(|err| format!("{text:?}: {err}"))?
        }
        Err(_) => serde_json::Value::String(value.to_owned()),
    };
    Ok(HealthSetting {
        key: key.to_owned(),
        value,
    })
}

/// A backend of `weir vip add`: its address and, optionally, its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub address: IpAddr,
    pub weight: Option<u32>,
}

impl VipAddArgs {
    /// The `POST /v1/vips` body; absent options are left out, for the agent's defaults.
    pub fn request(&self) -> NewVip {
        NewVip {
            name: self.name.clone(),
            address: self.address,
            port: self.port,
            protocol: self.protocol,
            hash: self.hash,
            table_size: self.table_size,
            health: (!self.health.is_empty()).then(|| {
                self.health
                    .iter()
                    .map(|s| (s.key.clone(), s.value.clone()))
                    .collect()
            }),
            forwarding: self.forwarding,
            nat_source: self.nat_source,
            backends: self
                .backends
                .iter()
                .map(|b| NewBackend {
                    address: b.address,
                    port: None,
                    weight: b.weight,
                    state: None,
                })
                .collect(),
        }
    }
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum BackendCommand {
    /// List a VIP's backends: weight, state and live flows.
    #[command(after_help = EXIT_CODES)]
    List {
        /// The VIP's name.
        vip: String,
    },
    /// Add a backend to a VIP.
    #[command(after_help = EXIT_CODES)]
    Add {
        /// The VIP's name.
        vip: String,
        /// The backend's IP address (same family as the VIP).
        #[arg(value_parser = parse_backend_address)]
        address: IpAddr,
        /// Share of new flows, 0..=10000 (default 100).
        #[arg(long)]
        weight: Option<u32>,
        /// Initial state: ready, drain or maint (default ready).
        #[arg(long, value_parser = parse_state)]
        state: Option<AdminState>,
        /// NAT VIPs only: the port the backend listens on (default: the VIP's port).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Remove a backend from a VIP; its established flows move to the other backends.
    #[command(after_help = EXIT_CODES)]
    Remove {
        /// The VIP's name.
        vip: String,
        /// The backend's IP address.
        address: IpAddr,
    },
    /// Set a backend's weight (share of new flows; 0 sends it no new flows).
    #[command(after_help = EXIT_CODES)]
    Weight {
        /// The VIP's name.
        vip: String,
        /// The backend's IP address.
        address: IpAddr,
        /// The new weight, 0..=10000.
        weight: u32,
    },
    /// Stop sending new flows to a backend; its established flows continue.
    ///
    /// With --wait, it then waits until the backend has no flows left, printing progress.
    /// A flow ends when the connection table forgets it: the table is an LRU without
    /// timeouts, so the entry of a closed or idle connection stays until newer flows
    /// evict it. Give a --timeout to bound the wait (exit code 3 when it passes).
    #[command(after_help = EXIT_CODES)]
    Drain {
        /// The VIP's name.
        vip: String,
        /// The backend's IP address.
        address: IpAddr,
        /// Wait until the backend's flow count reaches 0.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (e.g. 90s, 5m, 1h); default: wait without limit.
        #[arg(long, requires = "wait", value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Put a backend back in rotation.
    #[command(after_help = EXIT_CODES)]
    Ready {
        /// The VIP's name.
        vip: String,
        /// The backend's IP address.
        address: IpAddr,
    },
    /// Take a backend out of rotation entirely: its established flows move to other
    /// backends.
    #[command(after_help = EXIT_CODES)]
    Maint {
        /// The VIP's name.
        vip: String,
        /// The backend's IP address.
        address: IpAddr,
    },
}

fn parse_forwarding(text: &str) -> Result<Forwarding, String> {
    match text {
        "dsr" => Ok(Forwarding::Dsr),
        "nat" => Ok(Forwarding::Nat),
        _ => Err("dsr or nat".to_owned()),
    }
}

/// A backend address: an IP address alone, with a hint when a port is given.
fn parse_backend_address(text: &str) -> Result<IpAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Err(format!(
            "give the address alone ({}); a NAT backend's port goes in --port",
            socket.ip()
        ));
    }
    Err("not an IP address".to_owned())
}

/// A backend of `vip add`: `ADDR` or `ADDR:WEIGHT`, an IPv6 address in brackets when a
/// weight follows (`[2001:db8::1]:50`).
pub fn parse_backend_spec(text: &str) -> Result<BackendSpec, String> {
    let text = text.trim();
    if let Ok(address) = text.parse() {
        return Ok(BackendSpec {
            address,
            weight: None,
        });
    }
    let (address, weight) = if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!("{text:?}: missing ']' after the IPv6 address"));
        };
        let address = inside
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{inside:?} is not an IPv6 address"))?;
        let weight = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(weight) => Some(weight),
                None => return Err(format!("{text:?}: expected [IPV6] or [IPV6]:WEIGHT")),
            },
        };
        (IpAddr::V6(address), weight)
    } else {
        let Some((address, weight)) = text.rsplit_once(':') else {
            return Err(format!("{text:?} is not an IP address"));
        };
        if address.contains(':') {
            return Err(format!(
                "{text:?} is not an IP address (put an IPv6 address in brackets to give a \
                 weight: [2001:db8::1]:50)"
            ));
        }
        let address = address
            .parse::<std::net::Ipv4Addr>()
            .map_err(|_| format!("{address:?} is not an IP address"))?;
        (IpAddr::V4(address), Some(weight))
    };
    let weight = weight
        .map(|w| {
            w.parse::<u32>()
                .map_err(|_| format!("{text:?}: the weight {w:?} is not a number (0..=10000)"))
        })
        .transpose()?;
    Ok(BackendSpec { address, weight })
}

fn parse_protocol(text: &str) -> Result<Protocol, String> {
    match text {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err("expected tcp or udp".to_owned()),
    }
}

fn parse_hash(text: &str) -> Result<HashMode, String> {
    match text {
        "5-tuple" => Ok(HashMode::FiveTuple),
        "source-ip" => Ok(HashMode::SourceIp),
        _ => Err("expected 5-tuple or source-ip".to_owned()),
    }
}

fn parse_state(text: &str) -> Result<AdminState, String> {
    match text {
        "ready" => Ok(AdminState::Ready),
        "drain" => Ok(AdminState::Drain),
        "maint" => Ok(AdminState::Maint),
        _ => Err("expected ready, drain or maint".to_owned()),
    }
}

/// A duration as in the configuration file (`500ms`, `1.5s`, `5m`, `1h`); a bare number
/// is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let with_unit = if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        format!("{text}s")
    } else {
        text.to_owned()
    };
    crate::config::parse_duration(&with_unit)
        .ok_or_else(|| format!("{text:?} is not a duration (e.g. 500ms, 1.5s, 5m, 1h)"))
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_millis(100) {
        return Err("the interval must be at least 100ms".to_owned());
    }
    Ok(interval)
}

// ---------------------------------------------------------------------------------------
// Errors

/// Why an admin command failed; [`CliError::exit_code`] is what the process exits with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No connection, or no answer.
    #[error("cannot reach the weir agent at {}: {cause} ({hint})", .socket.display())]
    Unreachable {
        socket: PathBuf,
        cause: String,
        hint: &'static str,
    },
    /// The agent answered with an error status.
    #[error("{message}")]
    Agent { status: u16, message: String },
    /// The answer is not HTTP, or not the JSON expected.
    #[error("unexpected answer from the weir agent at {}: {detail}", .socket.display())]
    BadAnswer { socket: PathBuf, detail: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Timeout(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Agent { .. } | CliError::BadAnswer { .. } | CliError::Output(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Timeout(_) => 3,
            CliError::Unreachable { .. } => 4,
        }
    }

    fn unreachable(socket: &Path, error: &io::Error) -> Self {
        let hint = if error.kind() == io::ErrorKind::PermissionDenied {
            "the socket is for its owner only: run as the agent's user or root"
        } else {
            "is `weir agent` running?"
        };
        let cause = if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            "no answer in time".to_owned()
        } else {
            io_cause(error)
        };
        CliError::Unreachable {
            socket: socket.to_owned(),
            cause,
            hint,
        }
    }
}

/// An I/O error's message without the "(os error N)" suffix, lower case first.
fn io_cause(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP client

/// A response: its status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A blocking HTTP/1.1 client of the control socket: one connection per request.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// A decoded answer, and its body as the agent sent it (for `--json`).
struct Answer<T> {
    value: T,
    raw: Vec<u8>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request (`body` as JSON) and returns the response, whatever its status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, CliError> {
        let unreachable = |e: io::Error| CliError::unreachable(&self.socket, &e);
        let mut stream = UnixStream::connect(&self.socket).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        stream
            .write_all(&encode_request(method, path, body))
            .map_err(unreachable)?;
        read_response(&mut BufReader::new(stream)).map_err(|e| match e {
            ReadError::Io(e) => unreachable(e),
            ReadError::Malformed(detail) => CliError::BadAnswer {
                socket: self.socket.clone(),
                detail,
            },
        })
    }

    /// A request whose success is `expect`ed and carries a `T`; an error status becomes
    /// [`CliError::Agent`] with the error body's message.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        expect: u16,
    ) -> Result<Answer<T>, CliError> {
        let raw = self.send(method, path, body, expect)?;
        let value = serde_json::from_slice(&raw).map_err(|e| CliError::BadAnswer {
            socket: self.socket.clone(),
            detail: format!("{method} {path}: {e}"),
        })?;
        Ok(Answer { value, raw })
    }

    /// As [`Client::call`], for an answer without a body (204).
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        expect: u16,
    ) -> Result<Vec<u8>, CliError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request shapes serialize"));
        let response = self.request(method, path, body.as_deref())?;
        if response.status == expect {
            return Ok(response.body);
        }
        Err(agent_error(&response))
    }
}

/// The error an unexpected response stands for: the message of its `{"error": …}` body,
/// else its text, else its status.
fn agent_error(response: &Response) -> CliError {
    let message = match serde_json::from_slice::<ErrorBody>(&response.body) {
        Ok(body) => body.error,
        Err(_) => {
            let text = String::from_utf8_lossy(&response.body);
            let text = text.trim();
            if text.is_empty() {
                format!("the agent answered HTTP {}", response.status)
            } else {
                format!("the agent answered HTTP {}: {text}", response.status)
            }
        }
    };
    CliError::Agent {
        status: response.status,
        message,
    }
}

fn encode_request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: weir\r\nUser-Agent: weir/{}\r\n\
         Accept: application/json\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    match body {
        Some(body) => {
            let _ = write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        None if method != "GET" && method != "DELETE" => head.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

#[derive(Debug)]
enum ReadError {
    Io(io::Error),
    Malformed(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

const MAX_HEAD: usize = 64 * 1024;

/// Reads one HTTP/1.1 response: the body by Content-Length, chunked, or to the end.
fn read_response(reader: &mut impl BufRead) -> Result<Response, ReadError> {
    let malformed = |what: &str| ReadError::Malformed(what.to_owned());
    loop {
        let mut head_len = 0;
        let status_line = read_line(reader, &mut head_len)?;
        if status_line.is_empty() {
            return Err(malformed("the connection closed without an answer"));
        }
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status = parts.next().and_then(|s| s.parse::<u16>().ok());
        let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
            return Err(ReadError::Malformed(format!(
                "not an HTTP response: {:?}",
                truncate(&status_line, 80)
            )));
        };
        let mut content_length = None;
        let mut chunked = false;
        loop {
            let line = read_line(reader, &mut head_len)?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(malformed("a header line without a colon"));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| malformed("an invalid Content-Length"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
        if (100..200).contains(&status) {
            continue; // 100 Continue and the like: the real answer follows.
        }
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            read_chunked(reader)?
        } else if let Some(length) = content_length {
            let mut body = vec![0; length];
            reader.read_exact(&mut body).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => malformed("the body ended early"),
                _ => ReadError::Io(e),
            })?;
            body
        } else {
            let mut body = Vec::new();
            reader.read_to_end(&mut body)?;
            body
        };
        return Ok(Response { status, body });
    }
}

/// One header line without its CRLF; empty at the end of the head (or of the stream).
fn read_line(reader: &mut impl BufRead, head_len: &mut usize) -> Result<String, ReadError> {
    let mut line = Vec::new();
    let n = reader.take(MAX_HEAD as u64).read_until(b'\n', &mut line)?;
    *head_len += n;
    if *head_len >= MAX_HEAD {
        return Err(ReadError::Malformed(
            "the response head is too long".to_owned(),
        ));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| ReadError::Malformed("a header is not UTF-8".to_owned()))
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    let mut head_len = 0;
    loop {
        let line = read_line(reader, &mut head_len)?;
        head_len = 0;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| ReadError::Malformed(format!("a bad chunk size {size:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader, &mut head_len)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        read_line(reader, &mut head_len)?; // the chunk's CRLF
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

// ---------------------------------------------------------------------------------------
// Paths

/// Percent-encodes a path segment or query value: everything but the unreserved
/// characters and `:` (so that IPv6 addresses stay readable).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn vip_path(vip: &str) -> String {
    format!("/v1/vips/{}", escape(vip))
}

fn backends_path(vip: &str) -> String {
    format!("/v1/vips/{}/backends", escape(vip))
}

fn backend_path(vip: &str, address: IpAddr) -> String {
    format!(
        "/v1/vips/{}/backends/{}",
        escape(vip),
        escape(&address.to_string())
    )
}

fn flows_path(vip: Option<&str>, backend: Option<IpAddr>) -> String {
    let mut query = Vec::new();
    if let Some(vip) = vip {
        query.push(format!("vip={}", escape(vip)));
    }
    if let Some(backend) = backend {
        query.push(format!("backend={}", escape(&backend.to_string())));
    }
    if query.is_empty() {
        "/v1/flows".to_owned()
    } else {
        format!("/v1/flows?{}", query.join("&"))
    }
}

// ---------------------------------------------------------------------------------------
// Formatting (pure)

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// An aligned text table: columns two spaces apart, no trailing spaces.
#[derive(Clone, Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers = self
            .columns
            .iter()
            .map(|(h, _)| h.to_string())
            .collect::<Vec<_>>();
        for cells in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                match self.columns[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Re-indents JSON as `serde_json::to_string_pretty` would, keeping the order of keys
/// (serde_json's `Value` would sort them). The input must be valid JSON.
pub fn pretty_json(json: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    }
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                out.push(c);
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.push(chars.next().unwrap_or_default());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

fn state_name(state: AdminState) -> &'static str {
    match state {
        AdminState::Ready => "ready",
        AdminState::Drain => "drain",
        AdminState::Maint => "maint",
    }
}

fn hash_name(hash: HashMode) -> &'static str {
    match hash {
        HashMode::FiveTuple => "5-tuple",
        HashMode::SourceIp => "source-ip",
    }
}

fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        lb_common::PROTO_TCP => "tcp",
        lb_common::PROTO_UDP => "udp",
        _ => "?",
    }
}

/// `192.0.2.1:80`, `[2001:db8::1]:53`; port 0 (every port) as `*`.
pub fn vip_address(address: IpAddr, port: u16) -> String {
    match (address, port) {
        (IpAddr::V4(a), 0) => format!("{a}:*"),
        (IpAddr::V6(a), 0) => format!("[{a}]:*"),
        (a, port) => SocketAddr::new(a, port).to_string(),
    }
}

/// `3d 4h`, `4h 5m`, `5m 3s`, `42s`.
pub fn human_duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A rate with an SI prefix and three significant digits: `0`, `950`, `1.23k`, `45.6M`.
pub fn si(value: f64) -> String {
    const PREFIXES: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut value = value.max(0.0);
    let mut prefix = 0;
    while value >= 999.5 && prefix + 1 < PREFIXES.len() {
        value /= 1000.0;
        prefix += 1;
    }
    let digits = if prefix == 0 || value >= 99.95 {
        0
    } else if value >= 9.995 {
        1
    } else {
        2
    };
    format!("{value:.digits$}{}", PREFIXES[prefix])
}

pub fn render_status(status: &Status) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("version", status.version.clone()),
        ("uptime", human_duration(status.uptime_seconds)),
        ("config", status.config_path.clone()),
        ("bpf pins", status.bpf_pin_dir.clone()),
        (
            "program id",
            status
                .program_id
                .map_or("-".to_owned(), |id| id.to_string()),
        ),
    ];
    if status.interfaces.is_empty() {
        rows.push(("interfaces", "-".to_owned()));
    }
    for (i, interface) in status.interfaces.iter().enumerate() {
        rows.push((
            if i == 0 { "interfaces" } else { "" },
            format!(
                "{} (ifindex {}, {})",
                interface.name, interface.ifindex, interface.mode
            ),
        ));
    }
    let with_down = |total: usize, down: usize| {
        if down == 0 {
            total.to_string()
        } else {
            format!("{total} ({down} down)")
        }
    };
    rows.push(("vips", with_down(status.vips, status.vips_down)));
    rows.push(("backends", with_down(status.backends, status.backends_down)));
    if let Some(announce) = &status.announce {
        let addresses: Vec<String> = announce.addresses.iter().map(IpAddr::to_string).collect();
        rows.push((
            "announced",
            format!(
                "{} on {}",
                if addresses.is_empty() {
                    "nothing".to_owned()
                } else {
                    addresses.join(" ")
                },
                announce.interface
            ),
        ));
    }
    let vrrp = status
        .vrrp
        .as_ref()
        .map(|vrrp| vrrp_rows(vrrp, unix_now_ms()));
    rows.extend(
        vrrp.iter()
            .flatten()
            .map(|(key, value)| (key.as_str(), value.clone())),
    );
    key_values(&rows)
}

/// The `[vrrp]` lines of `weir status`: the instance, each family's state and master,
/// and the latest state changes (at most 3 per family), `now` in Unix milliseconds.
fn vrrp_rows(vrrp: &crate::control::VrrpStatus, now: u64) -> Vec<(String, String)> {
    let priority = if vrrp.effective_priority == vrrp.priority {
        vrrp.priority.to_string()
    } else {
        format!("{} (configured {})", vrrp.effective_priority, vrrp.priority)
    };
    let mut rows = vec![(
        "vrrp".to_owned(),
        format!(
            "vrid {} on {}, priority {priority}",
            vrrp.vrid, vrrp.interface
        ),
    )];
    for instance in &vrrp.instances {
        let master = match instance.master {
            Some(master) if master == instance.address => "this node".to_owned(),
            Some(master) => master.to_string(),
            None => "-".to_owned(),
        };
        rows.push((
            format!("  {}", instance.family),
            format!(
                "{}, master {master}, {} address{}",
                instance.state,
                instance.addresses.len(),
                if instance.addresses.len() == 1 {
                    ""
                } else {
                    "es"
                }
            ),
        ));
        for (i, change) in instance.transitions.iter().rev().take(3).enumerate() {
            let ago = human_duration(now.saturating_sub(change.unix_ms) / 1000);
            rows.push((
                if i == 0 { "    changes" } else { "" }.to_owned(),
                format!(
                    "{ago} ago {} -> {} ({})",
                    change.from, change.to, change.reason
                ),
            ));
        }
    }
    rows
}

fn key_values(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

pub fn render_vips(vips: &[VipView]) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("ADDRESS", Align::Left),
        ("PROTO", Align::Left),
        ("HASH", Align::Left),
        ("TABLE", Align::Right),
        ("STATUS", Align::Left),
        ("BACKENDS", Align::Right),
        ("READY", Align::Right),
        ("FLOWS", Align::Right),
    ]);
    for vip in vips {
        // Ready means taking new flows: ready, weighted and up.
        let ready = vip
            .backends
            .iter()
            .filter(|b| b.state == AdminState::Ready && b.weight > 0 && b.health.state.is_up())
            .count();
        table.row(vec![
            vip.name.clone(),
            vip_address(vip.address, vip.port),
            vip.protocol.to_string(),
            hash_name(vip.hash).to_owned(),
            vip.table_size.to_string(),
            vip_status_name(vip.status).to_owned(),
            vip.backends.len().to_string(),
            ready.to_string(),
            vip.backends
                .iter()
                .map(|b| b.flows)
                .sum::<u64>()
                .to_string(),
        ]);
    }
    table.render()
}

pub fn render_vip(vip: &VipView) -> String {
    let head = key_values(&[
        ("name", vip.name.clone()),
        ("address", vip_address(vip.address, vip.port)),
        ("protocol", vip.protocol.to_string()),
        ("hash", hash_name(vip.hash).to_owned()),
        ("forwarding", vip.forwarding.to_string()),
        ("table size", vip.table_size.to_string()),
        ("status", vip_status_name(vip.status).to_owned()),
        ("health check", check_name(vip)),
    ]);
    format!("{head}\n{}", render_backends(&vip.backends, unix_now_ms()))
}

fn vip_status_name(status: VipStatus) -> &'static str {
    match status {
        VipStatus::Up => "up",
        VipStatus::Down => "down (no backend up: new flows are dropped)",
    }
}

/// The VIP's check kind, as its backends report it.
fn check_name(vip: &VipView) -> String {
    vip.backends
        .first()
        .map_or("-".to_owned(), |b| b.health.check.to_string())
}

fn unix_now_ms() -> u64 {
    crate::control::unix_ms(std::time::SystemTime::now())
}

/// Backends with their admin state, health (`up, going down` …), the last check's
/// result and duration, and how long ago their health last changed (`now_ms`: Unix
/// time in milliseconds); NAT VIPs' show the port and source address the NAT uses too.
pub fn render_backends(backends: &[BackendView], now_ms: u64) -> String {
    let nat = backends.iter().any(|b| b.nat_source.is_some());
    let mut columns = vec![
        ("ADDRESS", Align::Left),
        ("WEIGHT", Align::Right),
        ("STATE", Align::Left),
        ("HEALTH", Align::Left),
        ("SINCE", Align::Right),
        ("LAST CHECK", Align::Left),
        ("FLOWS", Align::Right),
    ];
    if nat {
        columns.extend([("PORT", Align::Right), ("NAT SOURCE", Align::Left)]);
    }
    let mut table = Table::new(&columns);
    for backend in backends {
        let health = &backend.health;
        let last = match (&health.last_check, health.check) {
            (_, CheckKind::None) => "-".to_owned(),
            (None, _) => format!("{} (not yet)", health.check),
            (Some(last), kind) => format!(
                "{kind}: {} in {:.1}ms",
                last.reason,
                last.duration_us as f64 / 1000.0
            ),
        };
        let since = if health.since_unix_ms == 0 {
            "-".to_owned()
        } else {
            human_duration(now_ms.saturating_sub(health.since_unix_ms) / 1000)
        };
        let mut row = vec![
            backend.address.to_string(),
            backend.weight.to_string(),
            state_name(backend.state).to_owned(),
            health.state.to_string(),
            since,
            last,
            backend.flows.to_string(),
        ];
        if nat {
            row.push(
                backend
                    .port
                    .map_or_else(|| "*".to_owned(), |p| p.to_string()),
            );
            row.push(
                backend
                    .nat_source
                    .map_or_else(|| "-".to_owned(), |a| a.to_string()),
            );
        }
        table.row(row);
    }
    table.render()
}

pub fn render_flows(flows: &[FlowView]) -> String {
    let mut table = Table::new(&[
        ("VIP", Align::Left),
        ("PROTO", Align::Left),
        ("CLIENT", Align::Left),
        ("DESTINATION", Align::Left),
        ("BACKEND", Align::Left),
    ]);
    for flow in flows {
        table.row(vec![
            flow.vip.clone(),
            flow.protocol.to_string(),
            flow.client.to_string(),
            flow.destination.to_string(),
            flow.backend.to_string(),
        ]);
    }
    table.render()
}

fn describe_backend(vip: &str, backend: &BackendView) -> String {
    format!(
        "{vip} {}: weight {}, {}, {} flows\n",
        backend.address,
        backend.weight,
        state_name(backend.state),
        backend.flows
    )
}

/// Per-second rates of a [`Traffic`]; `None` where there is no earlier sample or the
/// counter went back (the agent or the backend was recreated).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TrafficRates {
    pub packets: Option<f64>,
    pub bytes: Option<f64>,
    pub new_flows: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateRow {
    /// `web 192.0.2.1:80/tcp`, or `  198.18.0.11` for a backend.
    pub label: String,
    pub rates: TrafficRates,
}

/// The rates between two stats snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    pub rows: Vec<RateRow>,
    /// Packets per second per verdict.
    pub verdicts: BTreeMap<String, Option<f64>>,
    /// Per second, for the counters that moved.
    pub counters: BTreeMap<String, f64>,
}

fn rate(earlier: Option<u64>, now: u64, seconds: f64) -> Option<f64> {
    let earlier = earlier?;
    (now >= earlier && seconds > 0.0).then(|| (now - earlier) as f64 / seconds)
}

fn traffic_rates(earlier: Option<&Traffic>, now: &Traffic, seconds: f64) -> TrafficRates {
    TrafficRates {
        packets: rate(earlier.map(|t| t.packets), now.packets, seconds),
        bytes: rate(earlier.map(|t| t.bytes), now.bytes, seconds),
        new_flows: rate(earlier.map(|t| t.new_flows), now.new_flows, seconds),
    }
}

/// The rates from `earlier` (taken `elapsed` before `now`) to `now`, matching VIPs by
/// name and backends by address; without `earlier`, every rate is unknown.
pub fn compute_rates(earlier: Option<(&StatsReport, Duration)>, now: &StatsReport) -> Rates {
    let seconds = earlier.map_or(0.0, |(_, elapsed)| elapsed.as_secs_f64());
    let earlier = earlier.map(|(report, _)| report);
    let mut rows = Vec::new();
    for vip in &now.vips {
        let before = earlier.and_then(|e| e.vips.iter().find(|v| v.name == vip.name));
        let address = vip
            .address
            .map_or_else(|| "?".to_owned(), |a| vip_address(a, vip.port));
        rows.push(RateRow {
            label: format!("{} {address}/{}", vip.name, protocol_name(vip.protocol)),
            rates: traffic_rates(before.map(|v| &v.traffic), &vip.traffic, seconds),
        });
        for backend in &vip.backends {
            let before = before
                .and_then(|v| v.backends.iter().find(|b| b.address == backend.address))
                .map(|b| &b.traffic);
            rows.push(RateRow {
                label: format!("  {}", backend.address),
                rates: traffic_rates(before, &backend.traffic, seconds),
            });
        }
    }
    let verdicts = now
        .verdicts
        .iter()
        .map(|(name, value)| {
            let before = earlier.map(|e| e.verdicts.get(name).copied().unwrap_or(0));
            (name.clone(), rate(before, *value, seconds))
        })
        .collect();
    let counters = now
        .counters
        .iter()
        .filter_map(|(name, value)| {
            let before = earlier.map(|e| e.counters.get(name).copied().unwrap_or(0));
            rate(before, *value, seconds)
                .filter(|r| *r > 0.0)
                .map(|r| (name.clone(), r))
        })
        .collect();
    Rates {
        rows,
        verdicts,
        counters,
    }
}

pub fn render_rates(rates: &Rates) -> String {
    let show = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), si);
    let mut table = Table::new(&[
        ("VIP / BACKEND", Align::Left),
        ("PACKETS/S", Align::Right),
        ("BYTES/S", Align::Right),
        ("NEW FLOWS/S", Align::Right),
    ]);
    for row in &rates.rows {
        table.row(vec![
            row.label.clone(),
            show(row.rates.packets),
            show(row.rates.bytes),
            show(row.rates.new_flows),
        ]);
    }
    let verdicts: Vec<String> = rates
        .verdicts
        .iter()
        .map(|(name, r)| format!("{name} {}", show(*r)))
        .collect();
    let mut out = table.render();
    let _ = write!(out, "\nverdicts/s: {}\n", verdicts.join(", "));
    if !rates.counters.is_empty() {
        let counters: Vec<String> = rates
            .counters
            .iter()
            .map(|(name, r)| format!("{name} {}", si(*r)))
            .collect();
        let _ = writeln!(out, "counters/s: {}", counters.join(", "));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Commands

/// Where a command writes, and how.
pub struct Output<'a> {
    pub out: &'a mut dyn Write,
    /// Print the agent's JSON rather than tables.
    pub json: bool,
    /// `out` is a terminal (`stats --watch` clears the screen).
    pub terminal: bool,
}

impl Output<'_> {
    /// The human text, or the agent's JSON with `--json`.
    fn show(&mut self, raw: &[u8], human: impl FnOnce() -> String) -> Result<(), CliError> {
        if self.json {
            if raw.is_empty() {
                return Ok(()); // 204: nothing to print; the exit code says it all.
            }
            let text = String::from_utf8_lossy(raw);
            writeln!(self.out, "{}", pretty_json(text.trim()))?;
        } else {
            self.out.write_all(human().as_bytes())?;
        }
        self.out.flush()?;
        Ok(())
    }
}

/// Runs an admin command against the agent, writing to stdout.
pub fn run(args: &ClientArgs, command: AdminCommand) -> Result<(), CliError> {
    let client = Client::new(args.socket_path());
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    let mut lock = stdout.lock();
    let mut output = Output {
        out: &mut lock,
        json: args.json,
        terminal,
    };
    match execute(&client, command, &mut output) {
        // `weir flows | head`: the reader has what it wanted.
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Runs an admin command with `client`, writing to `output`.
pub fn execute(
    client: &Client,
    command: AdminCommand,
    output: &mut Output<'_>,
) -> Result<(), CliError> {
    const NO_BODY: Option<&()> = None;
    match command {
        AdminCommand::Status => {
            let a = client.call::<Status>("GET", "/v1/status", NO_BODY, 200)?;
            output.show(&a.raw, || render_status(&a.value))
        }
        AdminCommand::Vip(VipCommand::List) => {
            let a = client.call::<Vec<VipView>>("GET", "/v1/vips", NO_BODY, 200)?;
            output.show(&a.raw, || render_vips(&a.value))
        }
        AdminCommand::Vip(VipCommand::Show { name }) => {
            let a = client.call::<VipView>("GET", &vip_path(&name), NO_BODY, 200)?;
            output.show(&a.raw, || render_vip(&a.value))
        }
        AdminCommand::Vip(VipCommand::Add(args)) => {
            let request = args.request();
            let a = client.call::<VipView>("POST", "/v1/vips", Some(&request), 201)?;
            output.show(&a.raw, || render_vip(&a.value))
        }
        AdminCommand::Vip(VipCommand::Remove { name }) => {
            client.send("DELETE", &vip_path(&name), NO_BODY, 204)?;
            output.show(b"", || format!("removed VIP {name}\n"))
        }
        AdminCommand::Backend(command) => backend(client, command, output),
        AdminCommand::Flows { vip, backend } => {
            let path = flows_path(vip.as_deref(), backend);
            let a = client.call::<Vec<FlowView>>("GET", &path, NO_BODY, 200)?;
            output.show(&a.raw, || render_flows(&a.value))
        }
        AdminCommand::Stats { watch: false, .. } => {
            let a = client.call::<StatsReport>("GET", "/v1/stats", NO_BODY, 200)?;
            output.show(&a.raw, || format!("{}\n", a.value))
        }
        AdminCommand::Stats {
            watch: true,
            interval,
        } => watch_stats(client, interval, output),
        AdminCommand::Reload => {
            let a = client.call::<ReloadOutcome>("POST", "/v1/reload", NO_BODY, 200)?;
            output.show(&a.raw, || match a.value.writes {
                0 => "reloaded: nothing changed\n".to_owned(),
                n => format!("reloaded: {n} map writes\n"),
            })
        }
    }
}

fn backend(
    client: &Client,
    command: BackendCommand,
    output: &mut Output<'_>,
) -> Result<(), CliError> {
    let change = |vip: &str, address: IpAddr, change: BackendChange| {
        client.call::<BackendView>("PATCH", &backend_path(vip, address), Some(&change), 200)
    };
    let state = |state| BackendChange {
        weight: None,
        state: Some(state),
    };
    match command {
        BackendCommand::List { vip } => {
            let a =
                client.call::<Vec<BackendView>>("GET", &backends_path(&vip), None::<&()>, 200)?;
            output.show(&a.raw, || render_backends(&a.value, unix_now_ms()))
        }
        BackendCommand::Add {
            vip,
            address,
            weight,
            state,
            port,
        } => {
            let new = NewBackend {
                address,
                port,
                weight,
                state,
            };
            let a = client.call::<BackendView>("POST", &backends_path(&vip), Some(&new), 201)?;
            output.show(&a.raw, || {
                format!(
                    "{vip}: added backend {} (weight {}, {})\n",
                    a.value.address,
                    a.value.weight,
                    state_name(a.value.state)
                )
            })
        }
        BackendCommand::Remove { vip, address } => {
            client.send("DELETE", &backend_path(&vip, address), None::<&()>, 204)?;
            output.show(b"", || format!("{vip}: removed backend {address}\n"))
        }
        BackendCommand::Weight {
            vip,
            address,
            weight,
        } => {
            let a = change(
                &vip,
                address,
                BackendChange {
                    weight: Some(weight),
                    state: None,
                },
            )?;
            output.show(&a.raw, || describe_backend(&vip, &a.value))
        }
        BackendCommand::Ready { vip, address } => {
            let a = change(&vip, address, state(AdminState::Ready))?;
            output.show(&a.raw, || describe_backend(&vip, &a.value))
        }
        BackendCommand::Maint { vip, address } => {
            let a = change(&vip, address, state(AdminState::Maint))?;
            output.show(&a.raw, || describe_backend(&vip, &a.value))
        }
        BackendCommand::Drain {
            vip,
            address,
            wait,
            timeout,
        } => {
            let a = change(&vip, address, state(AdminState::Drain))?;
            output.show(&a.raw, || describe_backend(&vip, &a.value))?;
            if wait {
                wait_drained(client, &vip, address, a.value.flows, timeout, DRAIN_POLL)?;
            }
            Ok(())
        }
    }
}

/// Polls the VIP's backends until `address` has no flows, printing progress on stderr.
fn wait_drained(
    client: &Client,
    vip: &str,
    address: IpAddr,
    mut flows: u64,
    timeout: Option<Duration>,
    poll: Duration,
) -> Result<(), CliError> {
    let start = Instant::now();
    let mut reported = None;
    let mut stderr = io::stderr();
    loop {
        if flows == 0 {
            let _ = writeln!(stderr, "{vip} {address}: drained, no flows left");
            return Ok(());
        }
        if reported != Some(flows) {
            let _ = writeln!(
                stderr,
                "{vip} {address}: waiting for {flows} flows to end ({} elapsed)",
                human_duration(start.elapsed().as_secs())
            );
            reported = Some(flows);
        }
        let mut pause = poll;
        if let Some(timeout) = timeout {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(CliError::Timeout(format!(
                    "timed out after {}: {vip} {address} still has {flows} flows",
                    human_duration(timeout.as_secs())
                )));
            }
            pause = pause.min(left);
        }
        thread::sleep(pause);
        let backends =
            client.call::<Vec<BackendView>>("GET", &backends_path(vip), None::<&()>, 200)?;
        let Some(backend) = backends.value.iter().find(|b| b.address == address) else {
            return Err(CliError::Agent {
                status: 404,
                message: format!("{vip} no longer has backend {address}"),
            });
        };
        if backend.state == AdminState::Ready {
            return Err(CliError::Agent {
                status: 409,
                message: format!("{vip} {address} was put back to ready while draining"),
            });
        }
        flows = backend.flows;
    }
}

fn watch_stats(
    client: &Client,
    interval: Duration,
    output: &mut Output<'_>,
) -> Result<(), CliError> {
    let mut earlier: Option<(StatsReport, Instant)> = None;
    loop {
        let a = client.call::<StatsReport>("GET", "/v1/stats", None::<&()>, 200)?;
        let now = Instant::now();
        if output.json {
            output.show(&a.raw, String::new)?;
        } else {
            let rates = compute_rates(
                earlier.as_ref().map(|(r, t)| (r, now.duration_since(*t))),
                &a.value,
            );
            let mut frame = String::new();
            if output.terminal {
                frame.push_str("\x1b[H\x1b[2J");
            } else if earlier.is_some() {
                frame.push('\n');
            }
            let _ = writeln!(
                frame,
                "weir stats: rates per second, every {:.1}s (Ctrl-C to stop)\n",
                interval.as_secs_f64()
            );
            frame.push_str(&render_rates(&rates));
            output.out.write_all(frame.as_bytes())?;
            output.out.flush()?;
        }
        earlier = Some((a.value, now));
        thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::net::UnixListener,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::{
        control::{ControlError, HealthView, LastCheck, fake::FakeControl},
        health::Operational,
        report::{BackendReport, VipReport},
    };

    #[test]
    fn vrrp_status_lines() {
        use crate::control::{VrrpInstanceStatus, VrrpStatus, VrrpTransition};
        use crate::vrrp::state::State;
        let vrrp = VrrpStatus {
            interface: "eth0".into(),
            vrid: 51,
            priority: 150,
            effective_priority: 100,
            instances: vec![VrrpInstanceStatus {
                family: "ipv4".into(),
                state: State::Master,
                address: "198.18.0.2".parse().unwrap(),
                master: Some("198.18.0.2".parse().unwrap()),
                master_advert_interval_ms: 100,
                addresses: vec!["198.19.0.10".parse().unwrap()],
                transitions: vec![VrrpTransition {
                    unix_ms: 10_000,
                    from: State::Backup,
                    to: State::Master,
                    reason: "master down".into(),
                }],
            }],
        };
        let rows = vrrp_rows(&vrrp, 75_000);
        let text: Vec<String> = rows.iter().map(|(k, v)| format!("{k}|{v}")).collect();
        assert_eq!(
            text,
            [
                "vrrp|vrid 51 on eth0, priority 100 (configured 150)",
                "  ipv4|master, master this node, 1 address",
                "    changes|1m 5s ago backup -> master (master down)",
            ]
        );
    }
    #[test]
    fn escapes_names_and_addresses() {
        assert_eq!(escape("web-1_a.b~c"), "web-1_a.b~c");
        assert_eq!(
            escape("a b/c?d#e%f&g=h+i"),
            "a%20b%2Fc%3Fd%23e%25f%26g%3Dh%2Bi"
        );
        assert_eq!(escape("é"), "%C3%A9");
        assert_eq!(escape("2001:db8::1"), "2001:db8::1");
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            backend_path("w/b", v6),
            "/v1/vips/w%2Fb/backends/2001:db8::1"
        );
        assert_eq!(flows_path(None, None), "/v1/flows");
        assert_eq!(
            flows_path(Some("a&b"), Some(v6)),
            "/v1/flows?vip=a%26b&backend=2001:db8::1"
        );
        assert_eq!(flows_path(None, Some(v6)), "/v1/flows?backend=2001:db8::1");
    }

    #[test]
    fn tables_align_without_trailing_spaces() {
        let mut table = Table::new(&[
            ("NAME", Align::Left),
            ("N", Align::Right),
            ("X", Align::Left),
        ]);
        table.row(vec!["web".into(), "1200".into(), "".into()]);
        table.row(vec!["dns-long".into(), "7".into(), "z".into()]);
        assert_eq!(
            table.render(),
            "NAME         N  X\n\
             web       1200\n\
             dns-long     7  z\n"
        );
        assert_eq!(Table::new(&[("A", Align::Left)]).render(), "A\n");
    }

    #[test]
    fn renders_backends_and_vips() {
        let backends = vec![
            BackendView {
                address: "198.18.0.11".parse().unwrap(),
                weight: 100,
                state: AdminState::Ready,
                port: None,
                nat_source: None,
                flows: 12,
                health: HealthView {
                    check: CheckKind::Http,
                    state: Operational::Falling,
                    since_unix_ms: 1_000_000,
                    checks: 10,
                    failed_checks: 1,
                    last_check: Some(LastCheck {
                        passed: false,
                        reason: "HTTP status 503".into(),
                        duration_us: 1234,
                        at_unix_ms: 1_299_000,
                    }),
                },
            },
            BackendView {
                address: "198.18.0.13".parse().unwrap(),
                weight: 10000,
                state: AdminState::Drain,
                port: None,
                nat_source: None,
                flows: 0,
                health: HealthView::default(),
            },
        ];
        assert_eq!(
            render_backends(&backends, 1_303_000),
            "ADDRESS      WEIGHT  STATE  HEALTH          SINCE  LAST CHECK                      FLOWS\n\
             198.18.0.11     100  ready  up, going down  5m 3s  http: HTTP status 503 in 1.2ms     12\n\
             198.18.0.13   10000  drain  up                  -  -                                   0\n"
        );
        let vip = VipView {
            name: "web".into(),
            address: "2001:db8::80".parse().unwrap(),
            port: 0,
            protocol: crate::config::Protocol::Tcp,
            forwarding: Default::default(),
            hash: HashMode::SourceIp,
            table_size: 1021,
            status: VipStatus::Up,
            backends,
        };
        assert_eq!(
            render_vips(&[vip]),
            "NAME  ADDRESS           PROTO  HASH       TABLE  STATUS  BACKENDS  READY  FLOWS\n\
             web   [2001:db8::80]:*  tcp    source-ip   1021  up             2      1     12\n"
        );
    }

    #[test]
    fn pretty_json_keeps_key_order() {
        let compact = r#"{"b":1,"a":[],"c":{},"d":[{"x":"q\"u,o:{te"},2],"e":null}"#;
        let expected = "{\n  \"b\": 1,\n  \"a\": [],\n  \"c\": {},\n  \"d\": [\n    {\n      \
                        \"x\": \"q\\\"u,o:{te\"\n    },\n    2\n  ],\n  \"e\": null\n}";
        assert_eq!(pretty_json(compact), expected);
        // serde_json agrees where its (sorted) order does.
        let value: serde_json::Value =
            serde_json::from_str(r#"{"a":[1,{"b":[]}],"c":"x"}"#).unwrap();
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        assert_eq!(pretty_json(&value.to_string()), pretty);
        assert_eq!(pretty_json(&pretty), pretty);
    }

    #[test]
    fn formats_numbers_and_durations() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(999.4), "999");
        assert_eq!(si(999.6), "1.00k");
        assert_eq!(si(1234.0), "1.23k");
        assert_eq!(si(45_600_000.0), "45.6M");
        assert_eq!(si(123_400_000_000.0), "123G");
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(303), "5m 3s");
        assert_eq!(human_duration(4 * 3600 + 5 * 60 + 9), "4h 5m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600), "3d 4h");
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_interval("10ms").is_err());
        assert!(
            parse_backend_address("10.0.0.1:80")
                .unwrap_err()
                .contains("NAT")
        );
        assert_eq!(parse_backend_address("::1"), Ok("::1".parse().unwrap()));
    }

    #[test]
    fn parses_backend_specs() {
        let spec = |address: &str, weight| BackendSpec {
            address: address.parse().unwrap(),
            weight,
        };
        let ok = |text| parse_backend_spec(text).unwrap();
        assert_eq!(ok("198.18.0.11"), spec("198.18.0.11", None));
        assert_eq!(ok("198.18.0.11:50"), spec("198.18.0.11", Some(50)));
        assert_eq!(ok("198.18.0.11:0"), spec("198.18.0.11", Some(0)));
        assert_eq!(ok("2001:db8::1"), spec("2001:db8::1", None));
        assert_eq!(ok("[2001:db8::1]"), spec("2001:db8::1", None));
        assert_eq!(ok("[2001:db8::1]:50"), spec("2001:db8::1", Some(50)));
        assert_eq!(ok("::ffff:1.2.3.4"), spec("::ffff:1.2.3.4", None));
        let error = |text| parse_backend_spec(text).unwrap_err();
        assert!(error("198.18.0.11:").contains("weight \"\" is not a number"));
        assert!(error("198.18.0.11:-1").contains("weight \"-1\""));
        assert!(error("198.18.0.11:5x").contains("not a number"));
        assert!(error("198.18.0.11:99999999999").contains("not a number"));
        assert!(error("[2001:db8::1]:").contains("not a number"));
        assert!(error("[2001:db8::1]50").contains("expected [IPV6] or [IPV6]:WEIGHT"));
        assert!(error("[2001:db8::1:50").contains("missing ']'"));
        assert!(error("[198.18.0.11]:5").contains("not an IPv6 address"));
        assert!(error("2001:db8::g:50").contains("in brackets"));
        assert!(error("web").contains("not an IP address"));
        assert!(error("host.example:50").contains("not an IP address"));
        assert!(error("").contains("not an IP address"));
        assert_eq!(parse_protocol("udp"), Ok(Protocol::Udp));
        assert!(parse_protocol("sctp").is_err());
        assert_eq!(parse_hash("source-ip"), Ok(HashMode::SourceIp));
        assert_eq!(parse_hash("5-tuple"), Ok(HashMode::FiveTuple));
        assert!(parse_hash("random").is_err());
    }

    #[derive(clap::Parser, Debug)]
    struct TestCli {
        #[command(subcommand)]
        command: AdminCommand,
    }

    fn parse_args(args: &[&str]) -> Result<AdminCommand, clap::Error> {
        use clap::Parser as _;
        TestCli::try_parse_from(std::iter::once("weir").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn vip_add_builds_the_request_body() {
        let Ok(AdminCommand::Vip(VipCommand::Add(args))) =
            parse_args(&["vip", "add", "web", "192.0.2.1", "80"])
        else {
            panic!("not parsed");
        };
        assert_eq!(
            serde_json::to_string(&args.request()).unwrap(),
            r#"{"name":"web","address":"192.0.2.1","port":80}"#
        );
        let Ok(AdminCommand::Vip(VipCommand::Add(args))) = parse_args(&[
            "vip",
            "add",
            "dns 6",
            "2001:db8::53",
            "53",
            "--protocol",
            "udp",
            "--hash",
            "source-ip",
            "--table-size",
            "251",
            "--backend",
            "2001:db8::1",
            "--backend=[2001:db8::2]:50",
            "--health",
            "kind=exec",
            "--health=rise=3",
            "--health",
            r#"command=["/bin/check", "{address}"]"#,
            "--health=interval=500ms",
        ]) else {
            panic!("not parsed");
        };
        assert_eq!(
            serde_json::to_string(&args.request()).unwrap(),
            r#"{"name":"dns 6","address":"2001:db8::53","port":53,"protocol":"udp","hash":"source-ip","table_size":251,"health":{"command":["/bin/check","{address}"],"interval":"500ms","kind":"exec","rise":3},"backends":[{"address":"2001:db8::1"},{"address":"2001:db8::2","weight":50}]}"#
        );
        assert!(parse_health_setting("rise").is_err());
        assert!(parse_health_setting("=3").is_err());
        // The agent's shape reads it back whole.
        let new: NewVip = serde_json::to_value(args.request())
            .and_then(serde_json::from_value)
            .unwrap();
        assert_eq!(
            (new.protocol, new.hash, new.table_size),
            (Some(Protocol::Udp), Some(HashMode::SourceIp), Some(251))
        );
        assert_eq!(
            new.backends
                .iter()
                .map(|b| (b.address.to_string(), b.weight, b.state))
                .collect::<Vec<_>>(),
            [
                ("2001:db8::1".to_owned(), None, None),
                ("2001:db8::2".to_owned(), Some(50), None)
            ]
        );
        // Bad arguments are usage errors (clap exits with 2), with the parser's message.
        for (args, message) in [
            (
                &[
                    "vip",
                    "add",
                    "web",
                    "192.0.2.1",
                    "80",
                    "--backend",
                    "10.0.0.1:x",
                ][..],
                "not a number",
            ),
            (
                &["vip", "add", "web", "192.0.2.1", "80", "--protocol", "sctp"],
                "tcp or udp",
            ),
            (
                &["vip", "add", "web", "192.0.2.1", "80", "--hash", "rr"],
                "5-tuple or source-ip",
            ),
            (&["vip", "add", "web", "192.0.2.1", "http"], "invalid value"),
            (&["vip", "add", "web", "192.0.2.1"], "required"),
        ] {
            let error = parse_args(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}");
            assert!(error.to_string().contains(message), "{args:?}: {error}");
        }
        assert!(matches!(
            parse_args(&["vip", "remove", "web"]),
            Ok(AdminCommand::Vip(VipCommand::Remove { name })) if name == "web"
        ));
    }

    fn report(vip_packets: u64, backend_bytes: u64, drops: u64) -> StatsReport {
        let traffic = |packets, bytes| Traffic {
            packets,
            bytes,
            new_flows: packets / 10,
        };
        StatsReport {
            verdicts: BTreeMap::from([("drop".to_owned(), drops), ("tx".to_owned(), vip_packets)]),
            counters: BTreeMap::from([("no_backend".to_owned(), drops)]),
            vips: vec![VipReport {
                name: "web".into(),
                address: Some("192.0.2.1".parse().unwrap()),
                port: 80,
                protocol: lb_common::PROTO_TCP,
                traffic: traffic(vip_packets, vip_packets * 100),
                backends: vec![BackendReport {
                    address: "198.18.0.11".parse().unwrap(),
                    traffic: traffic(vip_packets, backend_bytes),
                }],
            }],
        }
    }

    #[test]
    fn rates_between_snapshots() {
        let first = report(1000, 50_000, 5);
        let second = report(3000, 40_000, 5);
        let rates = compute_rates(Some((&first, Duration::from_secs(2))), &second);
        assert_eq!(rates.rows[0].label, "web 192.0.2.1:80/tcp");
        assert_eq!(
            rates.rows[0].rates,
            TrafficRates {
                packets: Some(1000.0),
                bytes: Some(100_000.0),
                new_flows: Some(100.0),
            }
        );
        assert_eq!(rates.rows[1].label, "  198.18.0.11");
        // The backend's bytes went back (it was recreated): unknown, not negative.
        assert_eq!(rates.rows[1].rates.bytes, None);
        assert_eq!(rates.verdicts["tx"], Some(1000.0));
        assert_eq!(rates.verdicts["drop"], Some(0.0));
        assert!(
            rates.counters.is_empty(),
            "counters that did not move are left out"
        );

        let first_frame = compute_rates(None, &second);
        assert_eq!(first_frame.rows[0].rates, TrafficRates::default());
        assert_eq!(
            render_rates(&rates),
            "VIP / BACKEND         PACKETS/S  BYTES/S  NEW FLOWS/S\n\
             web 192.0.2.1:80/tcp      1.00k     100k          100\n\
             \x20 198.18.0.11             1.00k        -          100\n\
             \nverdicts/s: drop 0, tx 1.00k\n"
        );
    }

    #[test]
    fn reads_chunked_and_unsized_responses() {
        let chunked =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        4\r\n{\"a\"\r\n4;x=y\r\n:1}\n\r\n0\r\n\r\n";
        let response = read_response(&mut &chunked[..]).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"{\"a\":1}\n");
        let unsized_body = b"HTTP/1.0 500 Oops\r\n\r\nbroken";
        let response = read_response(&mut &unsized_body[..]).unwrap();
        assert_eq!((response.status, &response.body[..]), (500, &b"broken"[..]));
        assert!(matches!(
            read_response(&mut &b"SSH-2.0-OpenSSH\r\n"[..]),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"[..]),
            Err(ReadError::Malformed(_))
        ));
    }

    /// A socket path in a fresh temporary directory (removed on drop).
    struct TempSocket(PathBuf);

    impl TempSocket {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = env::temp_dir().join(format!(
                "weir-cli-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempSocket(dir)
        }

        fn path(&self) -> PathBuf {
            self.0.join("api.sock")
        }
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Answers one connection with `response`; returns the request it received.
    fn fake_agent(path: &Path, response: &'static str) -> thread::JoinHandle<String> {
        let listener = UnixListener::bind(path).unwrap();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                request.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            request.push_str(&String::from_utf8(body).unwrap());
            reader.get_mut().write_all(response.as_bytes()).unwrap();
            request
        })
    }

    fn run_against(socket: &Path, command: AdminCommand, json: bool) -> Result<String, CliError> {
        let client = Client::new(socket).with_timeout(Duration::from_secs(5));
        let mut out = Vec::new();
        let mut output = Output {
            out: &mut out,
            json,
            terminal: false,
        };
        execute(&client, command, &mut output)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn client_lists_backends() {
        let dir = TempSocket::new();
        let body = r#"[{"address":"198.18.0.11","weight":100,"state":"ready","flows":3}]"#;
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let server = fake_agent(&dir.path(), response);
        let command = AdminCommand::Backend(BackendCommand::List { vip: "we b".into() });
        let out = run_against(&dir.path(), command.clone(), false).unwrap();
        assert_eq!(
            out,
            "ADDRESS      WEIGHT  STATE  HEALTH  SINCE  LAST CHECK  FLOWS\n\
             198.18.0.11     100  ready  up          -  -               3\n"
        );
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /v1/vips/we%20b/backends HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Connection: close\r\n"), "{request}");

        // --json: the agent's JSON, pretty printed.
        let server = fake_agent(&dir.path().with_file_name("2.sock"), response);
        let out = run_against(&dir.path().with_file_name("2.sock"), command, true).unwrap();
        assert_eq!(out, format!("{}\n", pretty_json(body)));
        server.join().unwrap();
    }

    #[test]
    fn client_sends_json_bodies() {
        let dir = TempSocket::new();
        let body = r#"{"address":"2001:db8::1","weight":0,"state":"ready","flows":0}"#;
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let server = fake_agent(&dir.path(), response);
        let command = AdminCommand::Backend(BackendCommand::Weight {
            vip: "web".into(),
            address: "2001:db8::1".parse().unwrap(),
            weight: 0,
        });
        let out = run_against(&dir.path(), command, false).unwrap();
        assert_eq!(out, "web 2001:db8::1: weight 0, ready, 0 flows\n");
        let request = server.join().unwrap();
        assert!(request.starts_with("PATCH /v1/vips/web/backends/2001:db8::1 HTTP/1.1\r\n"));
        assert!(
            request.contains("Content-Type: application/json\r\n"),
            "{request}"
        );
        assert!(
            request.ends_with("\r\n\r\n{\"weight\":0,\"state\":null}"),
            "{request}"
        );
    }

    #[test]
    fn client_adds_and_removes_vips() {
        let dir = TempSocket::new();
        let body = r#"{"name":"web","address":"192.0.2.1","port":80,"protocol":"tcp","hash":"5-tuple","table_size":251,"backends":[{"address":"198.18.0.11","weight":50,"state":"ready","flows":0}]}"#;
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let server = fake_agent(&dir.path(), response);
        let command = AdminCommand::Vip(VipCommand::Add(VipAddArgs {
            name: "web".into(),
            address: "192.0.2.1".parse().unwrap(),
            port: 80,
            protocol: None,
            hash: None,
            table_size: Some(251),
            forwarding: None,
            nat_source: None,
            backends: vec![parse_backend_spec("198.18.0.11:50").unwrap()],
            health: vec![],
        }));
        let out = run_against(&dir.path(), command, false).unwrap();
        assert_eq!(
            out,
            "name          web\naddress       192.0.2.1:80\nprotocol      tcp\nhash          5-tuple\n\
             forwarding    dsr\ntable size    251\nstatus        up\nhealth check  none\n\n\
             ADDRESS      WEIGHT  STATE  HEALTH  SINCE  LAST CHECK  FLOWS\n\
             198.18.0.11      50  ready  up          -  -               0\n"
        );
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /v1/vips HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.ends_with(
                "\r\n\r\n{\"name\":\"web\",\"address\":\"192.0.2.1\",\"port\":80,\
                 \"table_size\":251,\"backends\":[{\"address\":\"198.18.0.11\",\"weight\":50}]}"
            ),
            "{request}"
        );

        let socket = dir.path().with_file_name("2.sock");
        let server = fake_agent(&socket, "HTTP/1.1 204 No Content\r\n\r\n");
        let remove = || {
            AdminCommand::Vip(VipCommand::Remove {
                name: "we b".into(),
            })
        };
        assert_eq!(
            run_against(&socket, remove(), false).unwrap(),
            "removed VIP we b\n"
        );
        let request = server.join().unwrap();
        assert!(
            request.starts_with("DELETE /v1/vips/we%20b HTTP/1.1\r\n"),
            "{request}"
        );
        let socket = dir.path().with_file_name("3.sock");
        let server = fake_agent(&socket, "HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(run_against(&socket, remove(), true).unwrap(), "");
        server.join().unwrap();

        // The agent's refusal: its message, exit code 1.
        let socket = dir.path().with_file_name("4.sock");
        let server = fake_agent(
            &socket,
            "HTTP/1.1 409 Conflict\r\nContent-Length: 38\r\n\r\n{\"error\":\"a VIP named \\\"web\\\" exists\"}",
        );
        let error = run_against(&socket, remove(), false).unwrap_err();
        server.join().unwrap();
        assert_eq!(
            (error.exit_code(), error.to_string().as_str()),
            (1, "a VIP named \"web\" exists")
        );
    }

    #[test]
    fn an_error_body_is_the_message_and_exit_code_1() {
        let dir = TempSocket::new();
        let body = r#"{"error":"no VIP named \"nope\""}"#;
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let server = fake_agent(&dir.path(), response);
        let command = AdminCommand::Vip(VipCommand::Show {
            name: "nope".into(),
        });
        let error = run_against(&dir.path(), command, false).unwrap_err();
        server.join().unwrap();
        assert_eq!(error.to_string(), "no VIP named \"nope\"");
        assert_eq!(error.exit_code(), 1);

        let server = fake_agent(
            &dir.path().with_file_name("x.sock"),
            "HTTP/1.1 200 OK\r\n\r\nnot json",
        );
        let error = run_against(
            &dir.path().with_file_name("x.sock"),
            AdminCommand::Status,
            false,
        )
        .unwrap_err();
        server.join().unwrap();
        assert!(
            error
                .to_string()
                .starts_with("unexpected answer from the weir agent"),
            "{error}"
        );
        assert_eq!(error.exit_code(), 1);
    }

    #[test]
    fn no_agent_is_exit_code_4() {
        let dir = TempSocket::new();
        // A socket file that nobody listens on: connection refused.
        drop(UnixListener::bind(dir.path()).unwrap());
        let error = run_against(&dir.path(), AdminCommand::Status, false).unwrap_err();
        assert_eq!(error.exit_code(), 4);
        assert_eq!(
            error.to_string(),
            format!(
                "cannot reach the weir agent at {}: connection refused (is `weir agent` running?)",
                dir.path().display()
            )
        );
        // No socket at all.
        let missing = dir.0.join("missing.sock");
        let error = run_against(&missing, AdminCommand::Status, false).unwrap_err();
        assert_eq!(error.exit_code(), 4);
        assert!(
            error.to_string().contains(": no such file or directory ("),
            "{error}"
        );
    }

    /// The commands against the real server: the wire format agrees both ways.
    #[test]
    fn commands_against_the_real_server() {
        let dir = TempSocket::new();
        // One VIP, "web a"; a backend change ends one of its 3 flows (the drain waits).
        let mut agent = FakeControl::with_vips(vec![VipView {
            name: "web a".into(),
            address: "2001:db8::80".parse().unwrap(),
            port: 80,
            protocol: crate::config::Protocol::Tcp,
            forwarding: Default::default(),
            hash: HashMode::FiveTuple,
            table_size: 251,
            status: VipStatus::Up,
            backends: vec![BackendView {
                address: "2001:db8::1".parse().unwrap(),
                weight: 100,
                state: AdminState::Ready,
                port: None,
                nat_source: None,
                flows: 3,
                health: HealthView::default(),
            }],
        }]);
        agent.uptime_seconds = 90_061;
        agent.stats = report(10, 10, 0);
        agent.check_weight = |weight| {
            if weight > 10_000 {
                return Err(ControlError::Invalid("weight must be in 0..=10000".into()));
            }
            Ok(())
        };
        agent.change_ends_a_flow = true;
        agent.flows = vec![FlowView {
            vip: "web a".into(),
            protocol: crate::config::Protocol::Tcp,
            client: "[2001:db8::99]:40000".parse().unwrap(),
            destination: "[2001:db8::80]:80".parse().unwrap(),
            backend: "2001:db8::1".parse().unwrap(),
        }];
        let control: crate::api::SharedControl =
            std::sync::Arc::new(tokio::sync::Mutex::new(agent));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = runtime
            .block_on(crate::api::bind_unix(&dir.path()))
            .unwrap();
        let server = runtime.spawn(crate::api::serve_unix_on(listener, control, async {
            let _ = stopped.await;
        }));

        let run = |json: bool, command: AdminCommand| run_against(&dir.path(), command, json);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let vip = || "web a".to_owned();
        let status = run(false, AdminCommand::Status).unwrap();
        assert!(status.contains("uptime      1d 1h\n"), "{status}");
        assert!(
            status.contains("interfaces  eth0 (ifindex 2, native)\n"),
            "{status}"
        );
        assert!(
            status.contains("announced   198.19.0.10 on weir-vips\n"),
            "{status}"
        );
        let json = run(true, AdminCommand::Status).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["program_id"], 7);
        assert!(
            json.starts_with("{\n  \"version\": \"0.1.0\",\n  \"uptime_seconds\""),
            "{json}"
        );

        let list = run(false, AdminCommand::Vip(VipCommand::List)).unwrap();
        assert!(list.contains("web a  [2001:db8::80]:80  tcp"), "{list}");
        let show = run(false, AdminCommand::Vip(VipCommand::Show { name: vip() })).unwrap();
        assert!(
            show.contains("2001:db8::1     100  ready  up          -  -               3"),
            "{show}"
        );

        let Ok(AdminCommand::Vip(VipCommand::Add(args))) = parse_args(&[
            "vip",
            "add",
            "dns/6",
            "2001:db8::53",
            "53",
            "--protocol=udp",
            "--hash=source-ip",
            "--table-size=251",
            "--backend=[2001:db8::5]:50",
            "--backend=2001:db8::6",
        ]) else {
            panic!("not parsed");
        };
        let add = || AdminCommand::Vip(VipCommand::Add(args.clone()));
        let added = run(false, add()).unwrap();
        assert!(
            added.starts_with(
                "name          dns/6\naddress       [2001:db8::53]:53\nprotocol      udp\n"
            ),
            "{added}"
        );
        assert!(
            added.ends_with(
                "2001:db8::5      50  ready  up          -  -               0\n\
                 2001:db8::6     100  ready  up          -  -               0\n"
            ),
            "{added}"
        );
        let error = run(true, add()).unwrap_err();
        assert_eq!(
            (error.exit_code(), error.to_string().as_str()),
            (1, "a VIP named \"dns/6\" exists already")
        );
        let remove = |name: &str| {
            AdminCommand::Vip(VipCommand::Remove {
                name: name.to_owned(),
            })
        };
        assert_eq!(run(false, remove("dns/6")).unwrap(), "removed VIP dns/6\n");
        let error = run(false, remove("dns/6")).unwrap_err();
        assert_eq!(
            (error.exit_code(), error.to_string().as_str()),
            (1, "no VIP named \"dns/6\"")
        );
        let Ok(AdminCommand::Vip(VipCommand::Add(args))) =
            parse_args(&["vip", "add", "dns", "192.0.2.53", "53"])
        else {
            panic!("not parsed");
        };
        let added = run(true, AdminCommand::Vip(VipCommand::Add(args))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&added).unwrap();
        assert_eq!(
            (value["table_size"].as_u64(), value["hash"].as_str()),
            (Some(65_537), Some("5-tuple"))
        );
        assert_eq!(run(true, remove("dns")).unwrap(), "");

        let added = run(
            false,
            AdminCommand::Backend(BackendCommand::Add {
                vip: vip(),
                address: "2001:db8::2".parse().unwrap(),
                weight: Some(300),
                state: Some(AdminState::Maint),
                port: None,
            }),
        )
        .unwrap();
        assert_eq!(
            added,
            "web a: added backend 2001:db8::2 (weight 300, maint)\n"
        );
        let removed = BackendCommand::Remove {
            vip: vip(),
            address: "2001:db8::2".parse().unwrap(),
        };
        assert_eq!(run(true, AdminCommand::Backend(removed)).unwrap(), "");
        let weight = |weight| BackendCommand::Weight {
            vip: vip(),
            address: v6,
            weight,
        };
        let error = run(false, AdminCommand::Backend(weight(20_000))).unwrap_err();
        assert_eq!(
            (error.exit_code(), error.to_string().as_str()),
            (1, "weight must be in 0..=10000")
        );
        let changed = run(false, AdminCommand::Backend(weight(5))).unwrap();
        assert_eq!(changed, "web a 2001:db8::1: weight 5, ready, 2 flows\n");

        let client = Client::new(dir.path());
        let wait = |flows, timeout| {
            wait_drained(
                &client,
                "web a",
                v6,
                flows,
                Some(timeout),
                Duration::from_millis(20),
            )
        };
        // Still ready: waiting would never end.
        let error = wait(2, Duration::from_secs(5)).unwrap_err();
        assert_eq!(error.exit_code(), 1);
        assert!(error.to_string().contains("put back to ready"), "{error}");
        let drained = BackendCommand::Drain {
            vip: vip(),
            address: v6,
            wait: false,
            timeout: None,
        };
        let out = run(false, AdminCommand::Backend(drained.clone())).unwrap();
        assert_eq!(out, "web a 2001:db8::1: weight 5, drain, 1 flows\n");
        // 1 flow left, and nothing ends it (only a PATCH does, in the fake): timeout.
        let error = wait(1, Duration::from_millis(100)).unwrap_err();
        assert_eq!(error.exit_code(), 3);
        assert!(error.to_string().contains("still has 1 flows"), "{error}");
        let out = run(false, AdminCommand::Backend(drained)).unwrap();
        assert_eq!(out, "web a 2001:db8::1: weight 5, drain, 0 flows\n");
        wait(0, Duration::ZERO).unwrap();

        let flows = AdminCommand::Flows {
            vip: Some(vip()),
            backend: Some(v6),
        };
        let flows = run(false, flows).unwrap();
        assert!(
            flows.contains("web a  tcp    [2001:db8::99]:40000"),
            "{flows}"
        );
        let stats = run(
            false,
            AdminCommand::Stats {
                watch: false,
                interval: Duration::ZERO,
            },
        )
        .unwrap();
        assert!(stats.starts_with("VIP / backend"), "{stats}");
        assert_eq!(
            run(false, AdminCommand::Reload).unwrap(),
            "reloaded: 3 map writes\n"
        );
        let error = run(
            false,
            AdminCommand::Vip(VipCommand::Show {
                name: "nope".into(),
            }),
        )
        .unwrap_err();
        assert_eq!(
            (error.exit_code(), error.to_string().as_str()),
            (1, "no VIP named \"nope\"")
        );

        let _ = stop.send(());
        runtime.block_on(server).unwrap().unwrap();
    }
}
