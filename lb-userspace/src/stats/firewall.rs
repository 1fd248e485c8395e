//! The firewall's counters in the stats report: per guarded VIP, packets dropped by
//! why, and per rule, packets it decided; the same for the host's port rules.

use std::fmt;

use lb_common::firewall::{FW_DENY, FirewallCounters};
use serde::{Deserialize, Serialize};

use crate::{
    config::Protocol,
    dataplane::{Dataplane, DataplaneError},
    firewall::plan::Programmed,
};

/// Packets one rule decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleReport {
    /// "allow" or "deny".
    pub action: String,
    /// The prefix, or "not allowed" for the sources no rule allows (with an allow list).
    pub source: String,
    pub packets: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipFirewallReport {
    pub denied_source: u64,
    pub denied_port: u64,
    pub rate_limited: u64,
    pub capped: u64,
    pub rules: Vec<RuleReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRuleReport {
    pub protocol: String,
    pub port: u16,
    pub rules: Vec<RuleReport>,
}

/// A policy's rules with their counts, longest prefixes last (as they win).
pub fn rules(
    dataplane: &Dataplane,
    policy: &Programmed,
) -> Result<Vec<RuleReport>, DataplaneError> {
    let firewall = dataplane.firewall();
    let mut rules = Vec::new();
    for (prefix, (action, id)) in &policy.sources {
        rules.push(RuleReport {
            action: if *action == FW_DENY { "deny" } else { "allow" }.to_owned(),
            source: prefix.to_string(),
            packets: firewall.rule_count(*id)?,
        });
    }
    if policy.policy.flags & lb_common::firewall::FW_DEFAULT_DENY != 0 {
        rules.push(RuleReport {
            action: "deny".to_owned(),
            source: "not allowed".to_owned(),
            packets: firewall.rule_count(policy.policy.default_rule)?,
        });
    }
    Ok(rules)
}

pub fn vip_report(
    dataplane: &Dataplane,
    vip_id: u32,
    policy: &Programmed,
) -> Result<VipFirewallReport, DataplaneError> {
    let FirewallCounters {
        denied_source,
        denied_port,
        rate_limited,
        capped,
    } = dataplane.firewall().vip_counters(vip_id)?;
    Ok(VipFirewallReport {
        denied_source,
        denied_port,
        rate_limited,
        capped,
        rules: rules(dataplane, policy)?,
    })
}

pub fn host_report(
    dataplane: &Dataplane,
    protocol: u8,
    port: u16,
    policy: &Programmed,
) -> Result<HostRuleReport, DataplaneError> {
    Ok(HostRuleReport {
        protocol: Protocol::from_number(protocol)
            .map_or_else(|| protocol.to_string(), |p| p.to_string()),
        port,
        rules: rules(dataplane, policy)?,
    })
}

impl fmt::Display for VipFirewallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  firewall: denied source {}, denied port {}, rate limited {}, capped {}",
            self.denied_source, self.denied_port, self.rate_limited, self.capped
        )?;
        write_rules(f, &self.rules)
    }
}

impl fmt::Display for HostRuleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "host {}/{}:", self.protocol, self.port)?;
        write_rules(f, &self.rules)
    }
}

fn write_rules(f: &mut fmt::Formatter<'_>, rules: &[RuleReport]) -> fmt::Result {
    for rule in rules {
        writeln!(
            f,
            "    {:<5} {:<33} {:>12}",
            rule.action, rule.source, rule.packets
        )?;
    }
    Ok(())
}
