//! The admin commands' arguments (clap) and the parsers of their values.

use crate::firewall::Prefix;
use std::{
    env,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use crate::{
    api::model::{NewBackend, NewVip},
    config::{AdminState, DEFAULT_API_SOCKET, Forwarding, HashMode, Protocol},
};

use super::error::EXIT_CODES;

/// Environment variable naming the control socket (the `--socket` option wins).
pub const SOCKET_ENV: &str = "WEIR_SOCKET";

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
    /// List the VIPs' firewalls, or allow, deny or remove source prefixes of one. Changes
    /// apply at once, whole, and persist across agent restarts.
    #[command(subcommand)]
    Firewall(FirewallCommand),
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum FirewallCommand {
    /// List the VIPs that have a firewall, with their lists.
    #[command(after_help = EXIT_CODES)]
    List,
    /// Allow source prefixes to reach a VIP (taking them off its deny list). A VIP with
    /// an allow list drops every source it does not allow.
    #[command(after_help = EXIT_CODES)]
    Allow {
        vip: String,
        #[arg(required = true, value_name = "PREFIX")]
        prefixes: Vec<Prefix>,
    },
    /// Deny source prefixes (taking them off the allow list); the longest prefix wins.
    #[command(after_help = EXIT_CODES)]
    Deny {
        vip: String,
        #[arg(required = true, value_name = "PREFIX")]
        prefixes: Vec<Prefix>,
    },
    /// Take source prefixes off a VIP's allow and deny lists.
    #[command(after_help = EXIT_CODES)]
    Remove {
        vip: String,
        #[arg(required = true, value_name = "PREFIX")]
        prefixes: Vec<Prefix>,
    },
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

pub(super) fn parse_forwarding(text: &str) -> Result<Forwarding, String> {
    match text {
        "dsr" => Ok(Forwarding::Dsr),
        "nat" => Ok(Forwarding::Nat),
        _ => Err("dsr or nat".to_owned()),
    }
}

/// A backend address: an IP address alone, with a hint when a port is given.
pub(super) fn parse_backend_address(text: &str) -> Result<IpAddr, String> {
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

pub(super) fn parse_protocol(text: &str) -> Result<Protocol, String> {
    match text {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err("expected tcp or udp".to_owned()),
    }
}

pub(super) fn parse_hash(text: &str) -> Result<HashMode, String> {
    match text {
        "5-tuple" => Ok(HashMode::FiveTuple),
        "source-ip" => Ok(HashMode::SourceIp),
        _ => Err("expected 5-tuple or source-ip".to_owned()),
    }
}

pub(super) fn parse_state(text: &str) -> Result<AdminState, String> {
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

pub(super) fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_millis(100) {
        return Err("the interval must be at least 100ms".to_owned());
    }
    Ok(interval)
}
