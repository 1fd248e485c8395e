//! `weir`'s admin commands: a client of the agent's control API (JSON over HTTP/1.1 on
//! a Unix socket, `/v1`, shapes in [`crate::api::model`]).
//!
//! Three layers: the clap arguments ([`ClientArgs`], [`AdminCommand`]); a tiny blocking
//! HTTP client ([`Client`]); and pure formatting (tables, rates between two
//! [`StatsReport`]s, path escaping, pretty JSON) that the commands write out. Errors are
//! [`CliError`], each with the exit code scripts can trust ([`EXIT_CODES`]).

mod args;
mod client;
mod error;
mod render;

pub use args::*;
pub use client::*;
pub use error::*;
pub use render::*;

use crate::api::firewall::{FirewallEdit, FirewallView};
use std::{
    fmt::Write as _,
    io::{self, IsTerminal, Write},
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use crate::{
    api::model::{
        BackendChange, BackendView, FlowView, NewBackend, ReloadOutcome, Status, VipView,
    },
    config::AdminState,
    stats::report::StatsReport,
};

/// How often `backend drain --wait` looks at the backend's flows.
const DRAIN_POLL: Duration = Duration::from_secs(1);

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
            output.show(&a.raw, || {
                // The TLS tier's frontends, when a `weir proxy` runs beside the agent.
                let frontends = crate::proxy::cli::summary_beside(client.socket());
                render_status(&a.value) + frontends.as_deref().unwrap_or_default()
            })
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
        AdminCommand::Firewall(command) => firewall(client, command, output),
        AdminCommand::Reload => {
            let a = client.call::<ReloadOutcome>("POST", "/v1/reload", NO_BODY, 200)?;
            output.show(&a.raw, || match a.value.writes {
                0 => "reloaded: nothing changed\n".to_owned(),
                n => format!("reloaded: {n} map writes\n"),
            })
        }
    }
}

fn firewall(
    client: &Client,
    command: FirewallCommand,
    output: &mut Output<'_>,
) -> Result<(), CliError> {
    let (vip, edit) = match command {
        FirewallCommand::List => {
            let a = client.call::<Vec<FirewallView>>("GET", "/v1/firewall", None::<&()>, 200)?;
            return output.show(&a.raw, || render_firewalls(&a.value));
        }
        FirewallCommand::Allow { vip, prefixes } => (
            vip,
            FirewallEdit {
                allow: prefixes,
                ..FirewallEdit::default()
            },
        ),
        FirewallCommand::Deny { vip, prefixes } => (
            vip,
            FirewallEdit {
                deny: prefixes,
                ..FirewallEdit::default()
            },
        ),
        FirewallCommand::Remove { vip, prefixes } => (
            vip,
            FirewallEdit {
                remove: prefixes,
                ..FirewallEdit::default()
            },
        ),
    };
    let path = format!("{}/firewall", vip_path(&vip));
    let a = client.call::<FirewallView>("PATCH", &path, Some(&edit), 200)?;
    output.show(&a.raw, || render_firewalls(std::slice::from_ref(&a.value)))
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
        collections::BTreeMap,
        env,
        io::{BufRead, BufReader, Read},
        os::unix::net::UnixListener,
        path::{Path, PathBuf},
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::{args::*, client::*, render::*, *};
    use crate::{
        api::model::{ControlError, HealthView, LastCheck, NewVip, VipStatus, fake::FakeControl},
        config::{CheckKind, HashMode, Protocol},
        health::Operational,
        stats::report::{BackendReport, Traffic, VipReport},
    };

    #[test]
    fn vrrp_status_lines() {
        use crate::api::model::{VrrpInstanceStatus, VrrpStatus, VrrpTransition};
        use crate::failover::vrrp::state::State;
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
                    down_transitions: 0,
                    downtime_ms: 0,
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
                firewall: None,
            }],
            interfaces: vec![],
            host_rules: vec![],
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
        let control: crate::api::server::SharedControl =
            std::sync::Arc::new(tokio::sync::Mutex::new(agent));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = runtime
            .block_on(crate::api::server::bind_unix(&dir.path()))
            .unwrap();
        let server = runtime.spawn(crate::api::server::serve_unix_on(
            listener,
            control,
            async {
                let _ = stopped.await;
            },
        ));

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
