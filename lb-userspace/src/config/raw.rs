//! The file as written: serde's view of it, every value with its span.

use std::fmt;

use serde::{
    Deserialize,
    de::{self, Deserializer, Visitor},
};
use toml::Spanned;

use super::*;

// Raw structs: the file as written. Every field is optional, so that validation reports a
// missing key with its full path, and every value is spanned, so that errors point at it.
// Tables are not spanned: toml has no span for a table made by dotted keys
// (`agent.interfaces = …`) and refuses to deserialize one into `Spanned`, so the
// position of a table is looked up in the document instead (`Source::table`).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) agent: Option<RawAgent>,
    pub(super) flows: Option<RawFlows>,
    #[serde(default)]
    pub(super) vip: Vec<RawVip>,
    pub(super) announce: Option<RawAnnounce>,
    pub(super) vrrp: Option<RawVrrp>,
    #[serde(default)]
    pub(super) frontend: Vec<RawFrontend>,
    pub(super) stats: Option<RawStats>,
    pub(super) firewall: Option<RawFirewall>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStats {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) uri: Option<Spanned<String>>,
    pub(super) auth: Option<Spanned<String>>,
    pub(super) admin: Option<bool>,
    pub(super) metrics_auth: Option<Spanned<bool>>,
    pub(super) refresh: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFirewall {
    pub(super) new_flow_cap: Option<Spanned<Integer>>,
    pub(super) new_flow_cap_burst: Option<Spanned<Integer>>,
    #[serde(default)]
    pub(super) host: Vec<RawHostRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHostRule {
    pub(super) protocol: Option<Protocol>,
    pub(super) port: Option<Spanned<Integer>>,
    pub(super) allow_sources: Option<Vec<Spanned<String>>>,
    pub(super) deny_sources: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    pub(super) interface: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVrrp {
    pub(super) interface: Option<Spanned<String>>,
    pub(super) vrid: Option<Spanned<Integer>>,
    pub(super) priority: Option<Spanned<Integer>>,
    pub(super) advert_interval: Option<Spanned<String>>,
    pub(super) preempt: Option<bool>,
    pub(super) preempt_delay: Option<Spanned<String>>,
    pub(super) unicast_peers: Option<Vec<Spanned<String>>>,
    pub(super) track_vips: Option<bool>,
    pub(super) track_weight: Option<Spanned<Integer>>,
    pub(super) garp_repeat: Option<Spanned<Integer>>,
    pub(super) garp_refresh: Option<Spanned<String>>,
    pub(super) notify: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) xdp_mode: Option<XdpMode>,
    pub(super) conntrack_entries: Option<Spanned<Integer>>,
    pub(super) bpf_pin_dir: Option<Spanned<String>>,
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) api_socket: Option<Spanned<String>>,
    pub(super) api_listen: Option<Spanned<String>>,
    pub(super) api_token_file: Option<Spanned<String>>,
    pub(super) nat_entries: Option<Spanned<Integer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlows {
    pub(super) tcp_idle_timeout: Option<Spanned<String>>,
    pub(super) udp_idle_timeout: Option<Spanned<String>>,
    pub(super) tcp_linger: Option<Spanned<String>>,
    pub(super) tcp_embryonic_timeout: Option<Spanned<String>>,
    pub(super) nat_ports: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub(super) name: Option<Spanned<String>>,
    pub(super) address: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<Integer>>,
    pub(super) protocol: Option<Protocol>,
    pub(super) forwarding: Option<Forwarding>,
    pub(super) nat_source: Option<Spanned<String>>,
    pub(super) hash: Option<HashMode>,
    pub(super) conntrack: Option<Spanned<bool>>,
    pub(super) table_size: Option<Spanned<Integer>>,
    pub(super) health: Option<RawHealth>,
    pub(super) allow_sources: Option<Vec<Spanned<String>>>,
    pub(super) deny_sources: Option<Vec<Spanned<String>>>,
    pub(super) allow_ports: Option<Vec<Spanned<Integer>>>,
    pub(super) new_flow_rate: Option<Spanned<Integer>>,
    pub(super) new_flow_burst: Option<Spanned<Integer>>,
    #[serde(default)]
    pub(super) backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) kind: Option<Spanned<CheckKind>>,
    pub(super) port: Option<Spanned<Integer>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) expect_status: Option<Spanned<Vec<Spanned<Integer>>>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) fastinter: Option<Spanned<String>>,
    pub(super) downinter: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) rise: Option<Spanned<Integer>>,
    pub(super) fall: Option<Spanned<Integer>>,
    pub(super) command: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<Integer>>,
    pub(super) weight: Option<Spanned<Integer>>,
    pub(super) state: Option<AdminState>,
}

/// A TOML integer of any size, range-checked by validation so that the error can state
/// the allowed range ("expected an integer" rather than serde's "expected u16").
pub(super) struct Integer(pub(super) i64);

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFrontend {
    pub(super) name: Option<Spanned<String>>,
    pub(super) bind: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) certificates: Option<Spanned<String>>,
    pub(super) alpn: Option<Spanned<Vec<Spanned<Alpn>>>>,
    pub(super) min_tls: Option<TlsVersion>,
    pub(super) redirect_http: Option<Vec<Spanned<String>>>,
    pub(super) hsts: Option<Spanned<String>>,
    pub(super) forward: Option<Forward>,
    pub(super) backends: Option<Spanned<String>>,
    pub(super) timeouts: Option<RawTimeouts>,
    pub(super) limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) handshake: Option<Spanned<String>>,
    pub(super) header_read: Option<Spanned<String>>,
    pub(super) idle: Option<Spanned<String>>,
    pub(super) connect: Option<Spanned<String>>,
    pub(super) response: Option<Spanned<String>>,
    pub(super) drain: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_header_bytes: Option<Spanned<Integer>>,
    pub(super) max_h2_streams: Option<Spanned<Integer>>,
    pub(super) max_connections: Option<Spanned<Integer>>,
}
