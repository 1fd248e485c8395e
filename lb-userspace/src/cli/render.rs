//! Pure formatting of the agent's answers: aligned tables, durations, rates between two
//! counter reports, pretty JSON.

use crate::api::firewall::FirewallView;
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::{
    api::model::{BackendView, FlowView, Status, VipStatus, VipView},
    config::{AdminState, CheckKind, HashMode},
    stats::report::{StatsReport, Traffic},
};

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

pub(super) fn state_name(state: AdminState) -> &'static str {
    match state {
        AdminState::Ready => "ready",
        AdminState::Drain => "drain",
        AdminState::Maint => "maint",
    }
}

pub(super) fn hash_name(hash: HashMode) -> &'static str {
    match hash {
        HashMode::FiveTuple => "5-tuple",
        HashMode::SourceIp => "source-ip",
    }
}

pub(super) fn protocol_name(protocol: u8) -> &'static str {
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
pub(super) fn vrrp_rows(vrrp: &crate::api::model::VrrpStatus, now: u64) -> Vec<(String, String)> {
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

pub(super) fn key_values(rows: &[(&str, String)]) -> String {
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

pub(super) fn vip_status_name(status: VipStatus) -> &'static str {
    match status {
        VipStatus::Up => "up",
        VipStatus::Down => "down (no backend up: new flows are dropped)",
    }
}

/// The VIP's check kind, as its backends report it.
pub(super) fn check_name(vip: &VipView) -> String {
    vip.backends
        .first()
        .map_or("-".to_owned(), |b| b.health.check.to_string())
}

pub(super) fn unix_now_ms() -> u64 {
    crate::api::model::unix_ms(std::time::SystemTime::now())
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

pub(super) fn describe_backend(vip: &str, backend: &BackendView) -> String {
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

pub(crate) fn rate(earlier: Option<u64>, now: u64, seconds: f64) -> Option<f64> {
    let earlier = earlier?;
    (now >= earlier && seconds > 0.0).then(|| (now - earlier) as f64 / seconds)
}

pub(super) fn traffic_rates(
    earlier: Option<&Traffic>,
    now: &Traffic,
    seconds: f64,
) -> TrafficRates {
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

/// `weir firewall list`: each VIP's lists, one line per list.
pub fn render_firewalls(firewalls: &[FirewallView]) -> String {
    if firewalls.is_empty() {
        return "no VIP has a firewall\n".to_owned();
    }
    let mut out = String::new();
    for view in firewalls {
        let firewall = &view.firewall;
        let _ = writeln!(out, "{}:", view.vip);
        let list = |items: Vec<String>| items.join(" ");
        for (name, items) in [
            (
                "allow",
                list(
                    firewall
                        .allow_sources
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                ),
            ),
            (
                "deny",
                list(
                    firewall
                        .deny_sources
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                ),
            ),
            (
                "ports",
                list(firewall.allow_ports.iter().map(|p| p.to_string()).collect()),
            ),
        ] {
            if !items.is_empty() {
                let _ = writeln!(out, "  {name:<6} {items}");
            }
        }
        if let Some(rate) = firewall.new_flow_rate {
            let burst = firewall.new_flow_burst.unwrap_or(rate);
            let _ = writeln!(out, "  rate   {rate} new flows/s per source, burst {burst}");
        }
    }
    out
}
