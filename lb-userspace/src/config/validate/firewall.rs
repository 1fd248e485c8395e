//! The firewall keys of `[[vip]]` and `[firewall]`, with the rules of
//! [`crate::firewall`] located in the file.

use crate::firewall::{self, Field, MAX_RATE, RuleError};

use std::net::IpAddr;

use lb_common::firewall::MAX_FW_HOST_PORTS;
use toml::Spanned;

use super::super::{raw::*, source::*, *};

/// Well-known ports a host rule must name its sources for: cutting them off would take
/// the node out of its cluster.
const BGP_PORT: u16 = 179;

impl RawVip {
    /// `vip[i]`'s firewall keys, for the VIP at `address`, `port`.
    pub(super) fn validate_firewall(
        &self,
        src: &Source<'_>,
        i: usize,
        address: IpAddr,
        port: u16,
    ) -> Result<VipFirewall, ConfigError> {
        let key = format!("vip[{i}]");
        let rate = |value: &Option<Spanned<Integer>>, name: &str| {
            value
                .as_ref()
                .map(|v| src.integer(v, &format!("{key}.{name}"), 1, MAX_RATE))
                .transpose()
        };
        let ports = match &self.allow_ports {
            None => Vec::new(),
            Some(ports) => ports
                .iter()
                .enumerate()
                .map(|(j, p)| src.integer(p, &format!("{key}.allow_ports[{j}]"), 1, u16::MAX))
                .collect::<Result<_, _>>()?,
        };
        let firewall = VipFirewall {
            allow_sources: prefixes(src, &self.allow_sources, &format!("{key}.allow_sources"))?,
            deny_sources: prefixes(src, &self.deny_sources, &format!("{key}.deny_sources"))?,
            allow_ports: ports,
            new_flow_rate: rate(&self.new_flow_rate, "new_flow_rate")?,
            new_flow_burst: rate(&self.new_flow_burst, "new_flow_burst")?,
        };
        firewall::check_vip(&firewall, address, port).map_err(|err| {
            let at = match err.field {
                Field::AllowSources => entry_at(&self.allow_sources, err.index),
                Field::DenySources => entry_at(&self.deny_sources, err.index),
                Field::AllowPorts => entry_at(&self.allow_ports, err.index),
                Field::NewFlowRate => self.new_flow_rate.as_ref().map(|v| v.span().start),
                Field::NewFlowBurst => self.new_flow_burst.as_ref().map(|v| v.span().start),
            };
            located(src, at, &key, &err)
        })?;
        Ok(firewall)
    }
}

impl RawFirewall {
    pub(in crate::config) fn validate(
        &self,
        src: &Source<'_>,
        agent: &AgentConfig,
    ) -> Result<FirewallConfig, ConfigError> {
        let cap = |value: &Option<Spanned<Integer>>, name: &str| {
            value
                .as_ref()
                .map(|v| src.integer(v, &format!("firewall.{name}"), 1, MAX_RATE))
                .transpose()
        };
        let new_flow_cap = cap(&self.new_flow_cap, "new_flow_cap")?;
        let new_flow_cap_burst = cap(&self.new_flow_cap_burst, "new_flow_cap_burst")?;
        if let (Some(burst), None) = (&self.new_flow_cap_burst, new_flow_cap) {
            let message = "a burst needs a cap: set firewall.new_flow_cap";
            return Err(src.error_at(burst, "firewall.new_flow_cap_burst", message));
        }
        if self.host.len() > MAX_FW_HOST_PORTS as usize {
            let at = src.table(&[
                Step::Key("firewall"),
                Step::Key("host"),
                Step::Index(MAX_FW_HOST_PORTS as usize),
            ]);
            let message = format!("too many host rules: at most {MAX_FW_HOST_PORTS}");
            return Err(src.error(at, &format!("firewall.host[{MAX_FW_HOST_PORTS}]"), message));
        }
        let mut host: Vec<HostRule> = Vec::with_capacity(self.host.len());
        for (i, raw) in self.host.iter().enumerate() {
            let rule = raw.validate(src, i, agent)?;
            if let Some(first) = host
                .iter()
                .position(|r| (r.protocol, r.port) == (rule.protocol, rule.port))
            {
                let at = raw.port.as_ref().map_or(0, |p| p.span().start);
                let message = format!(
                    "{} port {} already has a rule: firewall.host[{first}]",
                    rule.protocol, rule.port
                );
                return Err(src.error(at, &format!("firewall.host[{i}].port"), message));
            }
            host.push(rule);
        }
        Ok(FirewallConfig {
            new_flow_cap,
            new_flow_cap_burst,
            host,
        })
    }
}

impl RawHostRule {
    fn validate(
        &self,
        src: &Source<'_>,
        i: usize,
        agent: &AgentConfig,
    ) -> Result<HostRule, ConfigError> {
        let table = [Step::Key("firewall"), Step::Key("host"), Step::Index(i)];
        let key = format!("firewall.host[{i}]");
        let port_key = format!("{key}.port");
        let port_value = src.required(&self.port, &table, &port_key)?;
        let port = src.integer(port_value, &port_key, 1, u16::MAX)?;
        let protocol = self.protocol.unwrap_or_default();
        let rule = HostRule {
            protocol,
            port,
            allow_sources: prefixes(src, &self.allow_sources, &format!("{key}.allow_sources"))?,
            deny_sources: prefixes(src, &self.deny_sources, &format!("{key}.deny_sources"))?,
        };
        firewall::check_sources(&rule.allow_sources, &rule.deny_sources, None).map_err(|err| {
            let at = match err.field {
                Field::DenySources => entry_at(&self.deny_sources, err.index),
                _ => entry_at(&self.allow_sources, err.index),
            };
            located(src, at, &key, &err)
        })?;
        if rule.allow_sources.is_empty() && rule.deny_sources.is_empty() {
            let message = "a host rule needs allow_sources or deny_sources";
            return Err(src.error(src.table(&table), &key, message));
        }
        // What must stay reachable: the control API's listener, and BGP peers (VRRP is
        // IP protocol 112, which the firewall never filters).
        let vital = match agent.api_listen {
            Some(api) if protocol == Protocol::Tcp && api.port() == port => {
                Some(format!("the control API listens on {api}"))
            }
            _ if protocol == Protocol::Tcp && port == BGP_PORT => {
                Some("BGP peers connect to it".to_owned())
            }
            _ => None,
        };
        if let Some(why) = vital {
            let at_all = |p: &Prefix| p.len == 0;
            if rule.allow_sources.is_empty() || rule.deny_sources.iter().any(at_all) {
                let message = format!(
                    "this rule would cut off tcp port {port} ({why}): list the addresses \
                     that must reach it in allow_sources, and deny no /0"
                );
                return Err(src.error_at(port_value, &port_key, message));
            }
        }
        Ok(rule)
    }
}

/// A list of prefixes, each checked where it is written.
fn prefixes(
    src: &Source<'_>,
    list: &Option<Vec<Spanned<String>>>,
    key: &str,
) -> Result<Vec<Prefix>, ConfigError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    list.iter()
        .enumerate()
        .map(|(i, value)| {
            value
                .get_ref()
                .parse()
                .map_err(|message: String| src.error_at(value, &format!("{key}[{i}]"), message))
        })
        .collect()
}

/// Where entry `index` of a list is written.
fn entry_at<T>(list: &Option<Vec<Spanned<T>>>, index: Option<usize>) -> Option<usize> {
    let list = list.as_ref()?;
    Some(list.get(index.unwrap_or(0))?.span().start)
}

fn located(src: &Source<'_>, at: Option<usize>, key: &str, err: &RuleError) -> ConfigError {
    let index = err.index.map(|i| format!("[{i}]")).unwrap_or_default();
    src.error(
        at.unwrap_or(0),
        &format!("{key}.{}{index}", err.field.key()),
        err.message.clone(),
    )
}
