use std::{net::IpAddr, time::Duration};

use lb_common::{
    DEFAULT_CONNTRACK_ENTRIES, DEFAULT_NAT_ENTRIES, MAX_BACKENDS, MAX_INTERFACES, MAX_VIPS,
    PROTO_TCP, PROTO_UDP,
};

use super::{duration::*, *};
use crate::dataplane::maglev;

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
                conntrack: true,
                table_size: maglev::DEFAULT_TABLE_SIZE,
                health: HealthConfig::default_for(Protocol::Tcp, 80),
                firewall: VipFirewall::default(),
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
                conntrack: true,
                table_size: 251,
                health: HealthConfig::default_for(Protocol::Udp, 53),
                firewall: VipFirewall::default(),
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
        stats: None,
        firewall: FirewallConfig::default(),
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
fn vips_without_connection_table() {
    let config = parse(&web("port = 53\nprotocol = \"udp\"\nconntrack = false\n")).expect("valid");
    assert!(!config.vips[0].conntrack);
    assert!(parse(&web("port = 80\n")).expect("valid").vips[0].conntrack);
    assert_eq!(
        error(&web("port = 80\nforwarding = \"nat\"\nconntrack = false\n")),
        "weir.toml:9:13: vip[0].conntrack: NAT needs its flow table: conntrack = false is for DSR VIPs only"
    );
}

#[test]
fn a_nat_source_may_not_be_a_vip_address() {
    // Its own: replies to the NAT source would be load-balanced as client traffic.
    assert_eq!(
        error(&web(
            "port = 80\nforwarding = \"nat\"\nnat_source = \"198.18.0.10\"\n"
        )),
        "weir.toml:9:14: vip[0].nat_source: 198.18.0.10 is the address of VIP \"web\" (vip[0]): \
         backends' replies to it would be taken for clients' traffic"
    );
    // Another VIP's, further down the file.
    assert_eq!(
        error(&web(
            "port = 80\nforwarding = \"nat\"\nnat_source = \"198.18.0.20\"\n\
             [[vip]]\nname = \"dns\"\naddress = \"198.18.0.20\"\nport = 53\n"
        )),
        "weir.toml:9:14: vip[0].nat_source: 198.18.0.20 is the address of VIP \"dns\" (vip[1]): \
         backends' replies to it would be taken for clients' traffic"
    );
}

#[test]
fn flow_settings() {
    let config = parse(&format!(
        "{AGENT}nat_entries = 4096\n[flows]\ntcp_idle_timeout = \"10m\"\nudp_idle_timeout = \"10s\"\n\
         tcp_linger = \"500ms\"\ntcp_embryonic_timeout = \"3s\"\nnat_ports = \"40000-40009\"\n"
    ))
    .expect("valid");
    assert_eq!(config.agent.nat_entries, 4096);
    assert_eq!(
        config.flows,
        FlowSettings {
            tcp_idle_timeout: Duration::from_secs(600),
            udp_idle_timeout: Duration::from_secs(10),
            tcp_linger: Duration::from_millis(500),
            tcp_embryonic_timeout: Duration::from_secs(3),
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
    assert_eq!(timeouts.tcp_embryonic_ns, 3_000_000_000);
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
    let backend =
        |address: &str, extra: &str| format!("[[vip.backend]]\naddress = \"{address}\"\n{extra}");
    let two = |a: &str, b: &str| web(&format!("port = 80\n{}{}", backend(a, ""), backend(b, "")));
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

    let path = std::env::temp_dir().join(format!("weir-config-test-{}.toml", std::process::id()));
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
    let err =
        parse("[agent]\ninterfaces = [\"eth0\"]\napi_listen = \"127.0.0.1:9900\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "weir.toml:3:14: agent.api_listen: a TCP listener needs agent.api_token_file (no token, no TCP listener)"
    );
    let ok = parse("[agent]\ninterfaces = [\"eth0\"]\napi_listen = \"127.0.0.1:9900\"\napi_token_file = \"/etc/weir/token\"\n").unwrap();
    assert_eq!(ok.agent.api_listen, Some("127.0.0.1:9900".parse().unwrap()));
}

#[test]
fn a_tcp_api_listener_listens_on_loopback_only() {
    let err = parse("[agent]\ninterfaces = [\"eth0\"]\napi_listen = \"198.18.0.1:9900\"\napi_token_file = \"/etc/weir/token\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "weir.toml:3:14: agent.api_listen: 198.18.0.1 is not a loopback address: the TCP \
         listener speaks plain HTTP, so the bearer token would cross the network in clear; \
         listen on 127.0.0.1 or [::1] and reach it through an SSH tunnel or a TLS proxy"
    );
    let ok = parse("[agent]\ninterfaces = [\"eth0\"]\napi_listen = \"[::1]:9900\"\napi_token_file = \"/etc/weir/token\"\n").unwrap();
    assert_eq!(ok.agent.api_listen, Some("[::1]:9900".parse().unwrap()));
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

/// A VIP on every port with the firewall keys after `extra`.
fn firewall_vip(port: u16, extra: &str) -> String {
    format!(
        "{AGENT}[[vip]]\nname = \"web\"\naddress = \"198.18.0.10\"\nport = {port}\n{extra}\
         [[vip.backend]]\naddress = \"198.18.1.11\"\n"
    )
}

#[test]
fn vip_firewall_keys_are_validated_where_they_are_written() {
    let config = parse(&firewall_vip(
        0,
        "allow_sources = [\"198.18.0.0/16\"]\ndeny_sources = [\"198.18.5.0/24\"]\n\
         allow_ports = [80, 443]\nnew_flow_rate = 100\n",
    ))
    .unwrap();
    let firewall = &config.vips[0].firewall;
    assert_eq!(firewall.allow_sources[0].to_string(), "198.18.0.0/16");
    assert_eq!(firewall.allow_ports, [80, 443]);
    assert_eq!(firewall.new_flow_rate, Some(100));

    let cases = [
        (
            0,
            "allow_sources = [\"198.18.0.1/16\"]\n",
            "weir.toml:7:18: vip[0].allow_sources[0]: \"198.18.0.1/16\" has bits set past its prefix length",
        ),
        (
            0,
            "allow_sources = [\"198.18.0.0/16\"]\ndeny_sources = [\"198.18.0.0/16\"]\n",
            "weir.toml:8:17: vip[0].deny_sources[0]: 198.18.0.0/16 is also allow_sources[0]",
        ),
        (
            0,
            "allow_sources = [\"2001:db8::/32\"]\n",
            "vip[0].allow_sources: no IPv4 prefix: every client of 198.18.0.10 would be dropped",
        ),
        (
            80,
            "allow_ports = [443]\n",
            "weir.toml:7:16: vip[0].allow_ports[0]: only a VIP on every port",
        ),
        (
            0,
            "allow_ports = [0]\n",
            "vip[0].allow_ports[0]: must be in 1..=65535",
        ),
        (
            0,
            "new_flow_rate = 0\n",
            "vip[0].new_flow_rate: must be in 1..=",
        ),
        (
            0,
            "new_flow_burst = 5\n",
            "vip[0].new_flow_burst: a burst needs a rate",
        ),
    ];
    for (port, extra, expected) in cases {
        let message = error(&firewall_vip(port, extra));
        assert!(message.contains(expected), "{extra:?}: {message}");
    }
}

#[test]
fn host_rules_that_would_cut_off_the_api_or_bgp_are_refused() {
    let host =
        |agent_extra: &str, rule: &str| format!("{AGENT}{agent_extra}[[firewall.host]]\n{rule}");
    let config = parse(&host(
        "",
        "port = 22\nallow_sources = [\"198.18.100.0/24\"]\n",
    ))
    .unwrap();
    assert_eq!(config.firewall.host[0].protocol, Protocol::Tcp);
    let api = "api_listen = \"127.0.0.1:8443\"\napi_token_file = \"/etc/weir/token\"\n";
    let cases = [
        (
            api,
            "port = 8443\ndeny_sources = [\"198.18.9.0/24\"]\n",
            "firewall.host[0].port: this rule would cut off tcp port 8443 (the control API listens on 127.0.0.1:8443)",
        ),
        (
            "",
            "port = 179\nallow_sources = [\"198.18.0.0/24\"]\ndeny_sources = [\"0.0.0.0/0\"]\n",
            "firewall.host[0].port: this rule would cut off tcp port 179 (BGP peers connect to it)",
        ),
        (
            "",
            "port = 22\n",
            "firewall.host[0]: a host rule needs allow_sources or deny_sources",
        ),
        (
            "",
            "allow_sources = [\"198.18.0.0/24\"]\n",
            "firewall.host[0].port: required key is missing",
        ),
    ];
    for (agent_extra, rule, expected) in cases {
        let message = error(&host(agent_extra, rule));
        assert!(message.contains(expected), "{rule:?}: {message}");
    }
    // UDP 8443 is not the API's.
    assert!(
        parse(&host(
            api,
            "port = 8443\nprotocol = \"udp\"\ndeny_sources = [\"0.0.0.0/0\"]\n"
        ))
        .is_ok()
    );
    let twice = host(
        "",
        "port = 22\nallow_sources = [\"198.18.0.0/24\"]\n[[firewall.host]]\nport = 22\nallow_sources = [\"198.18.1.0/24\"]\n",
    );
    assert!(
        error(&twice)
            .contains("firewall.host[1].port: tcp port 22 already has a rule: firewall.host[0]")
    );
}
