//! The firewall and flood guard: what the configuration says (per VIP: source filters, a
//! port list, a new-flow rate; `[firewall]`: the global new-flow cap and the host's port
//! rules), the rules every such list must follow (shared by the file and the API), the
//! planner that turns them into map writes (`plan`) and the maps (`maps`).

pub mod maps;
pub mod plan;

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::config::Protocol;

/// Largest `new_flow_rate`, `new_flow_burst`, `new_flow_cap` and its burst.
pub const MAX_RATE: u32 = 100_000_000;

/// An address prefix: `198.18.0.0/16`, `2001:db8::/32`; a bare address is a host prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn max_len(addr: IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    /// Whether `addr` lies in the prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.len as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid =
            || format!("{text:?} is not an address prefix (\"198.18.0.0/16\", \"2001:db8::/32\")");
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| invalid())?;
        let max = Prefix::max_len(addr);
        let len = match len {
            None => max,
            Some(len) => len
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(invalid)?,
        };
        let prefix = Prefix { addr, len };
        let network = prefix.network();
        if network != addr {
            return Err(format!(
                "{text:?} has bits set past its prefix length (the network is {network}/{len})"
            ));
        }
        Ok(prefix)
    }
}

impl Prefix {
    /// The address with the bits past the prefix cleared.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - self.len as u32).unwrap_or(0);
                IpAddr::from((u128::from(a) & mask).to_be_bytes())
            }
        }
    }
}

impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A VIP's firewall: who may reach it, on which ports (port-0 VIPs), and how many new
/// flows a second each source may open. Empty: no firewall, no cost on the fast path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipFirewall {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_sources: Vec<Prefix>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_sources: Vec<Prefix>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_ports: Vec<u16>,
    /// New flows a second per source (IPv6: per /64), per CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_flow_rate: Option<u32>,
    /// New flows a source may open at once; default: `new_flow_rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_flow_burst: Option<u32>,
}

impl VipFirewall {
    pub fn is_empty(&self) -> bool {
        *self == VipFirewall::default()
    }
}

/// `[firewall]`: what applies to all VIPs, and the host's own ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FirewallConfig {
    /// New flows a second into the connection and NAT tables, all VIPs together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_flow_cap: Option<u32>,
    /// New flows at once over the cap's rate; default: `new_flow_cap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_flow_cap_burst: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<HostRule>,
}

/// `[[firewall.host]]`: a TCP or UDP port of the host itself (on the attached
/// interfaces) and who may reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostRule {
    pub protocol: Protocol,
    pub port: u16,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_sources: Vec<Prefix>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_sources: Vec<Prefix>,
}

/// Which list of a firewall an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    AllowSources,
    DenySources,
    AllowPorts,
    NewFlowRate,
    NewFlowBurst,
}

impl Field {
    pub fn key(self) -> &'static str {
        match self {
            Field::AllowSources => "allow_sources",
            Field::DenySources => "deny_sources",
            Field::AllowPorts => "allow_ports",
            Field::NewFlowRate => "new_flow_rate",
            Field::NewFlowBurst => "new_flow_burst",
        }
    }
}

/// A firewall that breaks a rule: which list, which entry (if one), and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", field.key(), index.map(|i| format!("[{i}]")).unwrap_or_default())]
pub struct RuleError {
    pub field: Field,
    pub index: Option<usize>,
    pub message: String,
}

fn rule_error(field: Field, index: Option<usize>, message: impl Into<String>) -> RuleError {
    RuleError {
        field,
        index,
        message: message.into(),
    }
}

/// The source lists' rules: no prefix twice, none in both lists (longest prefix wins,
/// so the same prefix allowed and denied would mean nothing), and an allow list must
/// let some client of the VIP's family (`family_of`) in.
pub fn check_sources(
    allow: &[Prefix],
    deny: &[Prefix],
    family_of: Option<IpAddr>,
) -> Result<(), RuleError> {
    for (field, list) in [(Field::AllowSources, allow), (Field::DenySources, deny)] {
        for (i, prefix) in list.iter().enumerate() {
            if let Some(first) = list[..i].iter().position(|p| p == prefix) {
                return Err(rule_error(
                    field,
                    Some(i),
                    format!("{prefix} is already listed as {}[{first}]", field.key()),
                ));
            }
        }
    }
    for (i, prefix) in deny.iter().enumerate() {
        if let Some(first) = allow.iter().position(|p| p == prefix) {
            return Err(rule_error(
                Field::DenySources,
                Some(i),
                format!(
                    "{prefix} is also allow_sources[{first}]: a prefix is allowed or denied, \
                     not both (a longer prefix in the other list overrides it)"
                ),
            ));
        }
    }
    if let Some(address) = family_of
        && !allow.is_empty()
        && !allow.iter().any(|p| p.addr.is_ipv4() == address.is_ipv4())
    {
        let family = if address.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(rule_error(
            Field::AllowSources,
            None,
            format!("no {family} prefix: every client of {address} would be dropped"),
        ));
    }
    Ok(())
}

/// A VIP's firewall rules, for the VIP at `address`, `port`.
pub fn check_vip(firewall: &VipFirewall, address: IpAddr, port: u16) -> Result<(), RuleError> {
    check_sources(
        &firewall.allow_sources,
        &firewall.deny_sources,
        Some(address),
    )?;
    for (i, &p) in firewall.allow_ports.iter().enumerate() {
        if port != 0 {
            return Err(rule_error(
                Field::AllowPorts,
                Some(i),
                format!(
                    "only a VIP on every port (port = 0) has a port list; this one is on port {port}"
                ),
            ));
        }
        if p == 0 {
            return Err(rule_error(
                Field::AllowPorts,
                Some(i),
                "ports are 1..=65535",
            ));
        }
        if let Some(first) = firewall.allow_ports[..i].iter().position(|q| *q == p) {
            return Err(rule_error(
                Field::AllowPorts,
                Some(i),
                format!("port {p} is already listed as allow_ports[{first}]"),
            ));
        }
    }
    for (field, value) in [
        (Field::NewFlowRate, firewall.new_flow_rate),
        (Field::NewFlowBurst, firewall.new_flow_burst),
    ] {
        if let Some(value) = value
            && !(1..=MAX_RATE).contains(&value)
        {
            return Err(rule_error(
                field,
                None,
                format!("must be in 1..={MAX_RATE}, got {value}"),
            ));
        }
    }
    if firewall.new_flow_burst.is_some() && firewall.new_flow_rate.is_none() {
        return Err(rule_error(
            Field::NewFlowBurst,
            None,
            "a burst needs a rate: set new_flow_rate",
        ));
    }
    Ok(())
}

/// Nanoseconds of credit per flow and most credit saved, for `rate` flows a second
/// and bursts of `burst`, over `share` CPUs.
pub fn bucket(rate: u32, burst: u32, share: u32) -> (u64, u64) {
    let interval = (1_000_000_000u64 * u64::from(share.max(1)) / u64::from(rate.max(1))).max(1);
    (interval, interval * u64::from(burst.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Prefix {
        text.parse().unwrap()
    }

    #[test]
    fn prefixes_parse_and_refuse_host_bits() {
        assert_eq!(p("198.18.0.0/16").to_string(), "198.18.0.0/16");
        assert_eq!(p("2001:db8::1").len, 128);
        assert!(
            "198.18.0.1/16"
                .parse::<Prefix>()
                .unwrap_err()
                .contains("198.18.0.0/16")
        );
        assert!("198.18.0.0/33".parse::<Prefix>().is_err());
        assert!(p("198.18.0.0/15").contains("198.19.255.1".parse().unwrap()));
        assert!(!p("198.18.0.0/16").contains("198.19.0.1".parse().unwrap()));
        assert!(p("0.0.0.0/0").contains("203.0.113.1".parse().unwrap()));
        assert!(!p("0.0.0.0/0").contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn a_prefix_in_both_lists_is_refused_but_a_longer_one_is_not() {
        let vip: IpAddr = "198.19.0.10".parse().unwrap();
        let allow = [p("198.18.0.0/16")];
        let err = check_sources(&allow, &[p("198.18.0.0/16")], Some(vip)).unwrap_err();
        assert_eq!((err.field, err.index), (Field::DenySources, Some(0)));
        assert!(check_sources(&allow, &[p("198.18.5.0/24")], Some(vip)).is_ok());
        let err = check_sources(&[p("2001:db8::/32")], &[], Some(vip)).unwrap_err();
        assert!(err.message.contains("every client"), "{err}");
    }

    #[test]
    fn ports_belong_to_port_zero_vips() {
        let vip: IpAddr = "198.19.0.10".parse().unwrap();
        let firewall = VipFirewall {
            allow_ports: vec![80, 443],
            ..VipFirewall::default()
        };
        assert!(check_vip(&firewall, vip, 0).is_ok());
        assert_eq!(
            check_vip(&firewall, vip, 80).unwrap_err().field,
            Field::AllowPorts
        );
    }

    #[test]
    fn buckets_share_the_rate_between_cpus() {
        assert_eq!(bucket(10, 20, 1), (100_000_000, 2_000_000_000));
        assert_eq!(bucket(1000, 1000, 4).0, 4_000_000);
    }
}
