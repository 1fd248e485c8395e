//! The firewall's map writes, planned with the VIPs' (`dataplane::plan::Reconciler`
//! calls [`FirewallState::plan`] once it knows every VIP's id).
//!
//! A policy that changes is written whole under a fresh ruleset tag (`FW_SOURCES`,
//! `FW_PORTS`) *before* the VIP or host port switches to it in one update (`FW_VIPS`,
//! `FW_HOST_PORTS`); the old tag's entries go *after* the VIPs' own writes, once nothing
//! points at them. A rule that stays keeps its id, hence its counter.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{
    addr_words,
    firewall::{
        FW_ALLOW, FW_DEFAULT_DENY, FW_DENY, FW_HOST_RULES, FW_PORT_LIST, FW_RATE_LIMIT,
        FW_SOURCE_FIXED_BITS, FW_SOURCES_LISTED, FwPolicy, FwPortKey, FwRule, FwSettings, FwSource,
        HostPortKey, MAX_FW_PORTS, MAX_FW_RULES, MAX_FW_RULESETS, MAX_FW_SOURCES,
    },
    words_addr,
};

use super::{FirewallConfig, HostRule, Prefix, VipFirewall, bucket};

/// One write to the firewall's maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirewallWrite {
    /// `FW_SOURCES[(prefix_len, key)] = rule`.
    AddSource {
        key: FwSource,
        prefix_len: u32,
        rule: FwRule,
    },
    RemoveSource {
        key: FwSource,
        prefix_len: u32,
    },
    AddPort {
        key: FwPortKey,
    },
    RemovePort {
        key: FwPortKey,
    },
    /// Zero `FW_RULE_STATS[id]` on every CPU (a fresh or reused rule id).
    ClearRuleStats {
        id: u32,
    },
    /// `FW_VIPS[vip_id] = policy`.
    SetVipPolicy {
        vip_id: u32,
        policy: FwPolicy,
    },
    /// Zero `FW_VIP_STATS[vip_id]` on every CPU (a VIP that gains a firewall).
    ClearVipStats {
        vip_id: u32,
    },
    SetHostPort {
        key: HostPortKey,
        policy: FwPolicy,
    },
    RemoveHostPort {
        key: HostPortKey,
    },
    /// `FW_SETTINGS[0]`; the cap as a total over all CPUs (the dataplane divides it).
    SetSettings {
        settings: FwSettings,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FirewallPlanError {
    #[error(
        "too many firewall source prefixes: {wanted} across VIPs and host rules, at most {} \
         (half the map, so that a change fits beside the rules it replaces)",
        MAX_FW_SOURCES / 2
    )]
    TooManySources { wanted: usize },
    #[error("too many allow_ports: {wanted} across VIPs, at most {}", MAX_FW_PORTS / 2)]
    TooManyPorts { wanted: usize },
}

/// What the maps hold for one policy (a VIP's or a host port's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programmed {
    pub policy: FwPolicy,
    /// Source prefix → (action, rule id).
    pub sources: BTreeMap<Prefix, (u32, u32)>,
    pub ports: BTreeSet<u16>,
}

/// A policy as the configuration wants it, before ids are given.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    /// `FwPolicy::flags`, `interval_ns`, `burst_ns`.
    flags: u32,
    interval_ns: u64,
    burst_ns: u64,
    sources: BTreeMap<Prefix, u32>,
    ports: BTreeSet<u16>,
}

impl Wanted {
    fn new(allow: &[Prefix], deny: &[Prefix]) -> Wanted {
        let sources: BTreeMap<Prefix, u32> = allow
            .iter()
            .map(|p| (*p, FW_ALLOW))
            .chain(deny.iter().map(|p| (*p, FW_DENY)))
            .collect();
        let mut flags = 0;
        if !sources.is_empty() {
            flags |= FW_SOURCES_LISTED;
        }
        if !allow.is_empty() {
            flags |= FW_DEFAULT_DENY;
        }
        Wanted {
            flags,
            interval_ns: 0,
            burst_ns: 0,
            sources,
            ports: BTreeSet::new(),
        }
    }

    fn vip(firewall: &VipFirewall) -> Wanted {
        let mut wanted = Wanted::new(&firewall.allow_sources, &firewall.deny_sources);
        if !firewall.allow_ports.is_empty() {
            wanted.flags |= FW_PORT_LIST;
            wanted.ports = firewall.allow_ports.iter().copied().collect();
        }
        if let Some(rate) = firewall.new_flow_rate {
            wanted.flags |= FW_RATE_LIMIT;
            let burst = firewall.new_flow_burst.unwrap_or(rate);
            (wanted.interval_ns, wanted.burst_ns) = bucket(rate, burst, 1);
        }
        wanted
    }

    fn host(rule: &HostRule) -> Wanted {
        Wanted::new(&rule.allow_sources, &rule.deny_sources)
    }

    fn matches(&self, programmed: &Programmed) -> bool {
        let policy = &programmed.policy;
        (policy.flags, policy.interval_ns, policy.burst_ns)
            == (self.flags, self.interval_ns, self.burst_ns)
            && programmed.ports == self.ports
            && programmed.sources.len() == self.sources.len()
            && programmed
                .sources
                .iter()
                .all(|(prefix, (action, _))| self.sources.get(prefix) == Some(action))
    }
}

/// The firewall's programmed state, as far as the agent wrote it.
#[derive(Clone, Debug, Default)]
pub struct FirewallState {
    vips: BTreeMap<u32, Programmed>,
    host: BTreeMap<HostPortKey, Programmed>,
    settings: FwSettings,
    rulesets: BTreeSet<u32>,
    rule_ids: BTreeSet<u32>,
    /// Entries found in adopted maps that no policy points at (an agent stopped half-way
    /// through a change): removed by the next plan.
    orphans: Vec<FirewallWrite>,
}

/// The firewall maps' contents, read back by an agent adopting them.
#[derive(Clone, Debug, Default)]
pub struct ProgrammedFirewall {
    /// Policies of the VIPs that are `VIP_GUARDED`, by VIP id.
    pub vips: Vec<(u32, FwPolicy)>,
    pub sources: Vec<(u32, FwSource, FwRule)>,
    pub ports: Vec<FwPortKey>,
    pub host: Vec<(HostPortKey, FwPolicy)>,
    pub settings: FwSettings,
}

/// The writes of one plan: before the VIPs' own writes, and after them.
#[derive(Debug, Default)]
pub struct FirewallWrites {
    pub before: Vec<FirewallWrite>,
    pub after: Vec<FirewallWrite>,
}

/// Whether a VIP has a firewall policy (its own, or the global cap's).
pub fn guarded(firewall: &FirewallConfig, vip: &VipFirewall) -> bool {
    firewall.new_flow_cap.is_some() || !vip.is_empty()
}

impl FirewallState {
    /// The policy of VIP `vip_id`, if it has one.
    pub fn vip(&self, vip_id: u32) -> Option<&Programmed> {
        self.vips.get(&vip_id)
    }

    /// The host port rules.
    pub fn host(&self) -> impl Iterator<Item = (&HostPortKey, &Programmed)> {
        self.host.iter()
    }

    /// Takes over what a previous agent programmed.
    pub fn adopt(programmed: &ProgrammedFirewall) -> FirewallState {
        let mut state = FirewallState {
            settings: programmed.settings,
            ..FirewallState::default()
        };
        let mut by_ruleset: BTreeMap<u32, Programmed> = BTreeMap::new();
        let policies = programmed
            .vips
            .iter()
            .map(|(_, p)| p)
            .chain(programmed.host.iter().map(|(_, p)| p));
        for policy in policies {
            state.rulesets.insert(policy.ruleset);
            state.rule_ids.insert(policy.default_rule);
            by_ruleset.insert(
                policy.ruleset,
                Programmed {
                    policy: *policy,
                    sources: BTreeMap::new(),
                    ports: BTreeSet::new(),
                },
            );
        }
        for (prefix_len, key, rule) in &programmed.sources {
            let prefix = words_addr(key.family, key.addr).map(|addr| Prefix {
                addr,
                len: (prefix_len - FW_SOURCE_FIXED_BITS) as u8,
            });
            match (by_ruleset.get_mut(&key.ruleset), prefix) {
                (Some(policy), Some(prefix)) => {
                    state.rule_ids.insert(rule.rule_id);
                    policy.sources.insert(prefix, (rule.action, rule.rule_id));
                }
                _ => state.orphans.push(FirewallWrite::RemoveSource {
                    key: *key,
                    prefix_len: *prefix_len,
                }),
            }
        }
        for key in &programmed.ports {
            match by_ruleset.get_mut(&key.ruleset) {
                Some(policy) => {
                    policy.ports.insert(u16::from_be(key.port));
                }
                None => state.orphans.push(FirewallWrite::RemovePort { key: *key }),
            }
        }
        for (vip_id, policy) in &programmed.vips {
            if let Some(p) = by_ruleset.get(&policy.ruleset) {
                state.vips.insert(*vip_id, p.clone());
            }
        }
        for (key, policy) in &programmed.host {
            if let Some(p) = by_ruleset.get(&policy.ruleset) {
                state.host.insert(*key, p.clone());
            }
        }
        state
    }

    /// The writes that take the firewall to `config`'s, for the VIPs `vips` (id and
    /// firewall of every guarded VIP), and the state after them.
    pub fn plan(
        &self,
        config: &FirewallConfig,
        vips: &BTreeMap<u32, VipFirewall>,
    ) -> Result<(FirewallWrites, FirewallState), FirewallPlanError> {
        let wanted_vips: BTreeMap<u32, Wanted> =
            vips.iter().map(|(id, f)| (*id, Wanted::vip(f))).collect();
        let wanted_host: BTreeMap<HostPortKey, Wanted> = config
            .host
            .iter()
            .map(|rule| (host_key(rule), Wanted::host(rule)))
            .collect();
        let sources: usize = wanted_vips
            .values()
            .chain(wanted_host.values())
            .map(|w| w.sources.len())
            .sum();
        if sources > MAX_FW_SOURCES as usize / 2 {
            return Err(FirewallPlanError::TooManySources { wanted: sources });
        }
        let ports: usize = wanted_vips.values().map(|w| w.ports.len()).sum();
        if ports > MAX_FW_PORTS as usize / 2 {
            return Err(FirewallPlanError::TooManyPorts { wanted: ports });
        }

        let mut next = self.clone();
        let mut writes = FirewallWrites {
            after: std::mem::take(&mut next.orphans),
            ..FirewallWrites::default()
        };
        let mut released = Vec::new();

        let gone: Vec<u32> = next
            .vips
            .keys()
            .filter(|id| !wanted_vips.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            released.extend(next.vips.remove(&id));
        }
        for (&id, wanted) in &wanted_vips {
            let old = next.vips.get(&id).cloned();
            if let Some(programmed) =
                next.program(old.as_ref(), wanted, &mut writes.before, &mut released)
            {
                if old.is_none() {
                    writes
                        .before
                        .push(FirewallWrite::ClearVipStats { vip_id: id });
                }
                writes.before.push(FirewallWrite::SetVipPolicy {
                    vip_id: id,
                    policy: programmed.policy,
                });
                next.vips.insert(id, programmed);
            }
        }

        let gone: Vec<HostPortKey> = next
            .host
            .keys()
            .filter(|key| !wanted_host.contains_key(key))
            .copied()
            .collect();
        for key in gone {
            released.extend(next.host.remove(&key));
            writes.after.push(FirewallWrite::RemoveHostPort { key });
        }
        for (&key, wanted) in &wanted_host {
            let old = next.host.get(&key).cloned();
            if let Some(programmed) =
                next.program(old.as_ref(), wanted, &mut writes.before, &mut released)
            {
                writes.before.push(FirewallWrite::SetHostPort {
                    key,
                    policy: programmed.policy,
                });
                next.host.insert(key, programmed);
            }
        }

        let mut settings = FwSettings {
            flags: if wanted_host.is_empty() {
                0
            } else {
                FW_HOST_RULES
            },
            ..FwSettings::default()
        };
        if let Some(rate) = config.new_flow_cap {
            let burst = config.new_flow_cap_burst.unwrap_or(rate);
            (settings.cap_interval_ns, settings.cap_burst_ns) = bucket(rate, burst, 1);
        }
        if settings != next.settings {
            writes.before.push(FirewallWrite::SetSettings { settings });
            next.settings = settings;
        }

        // Released policies: their entries go once nothing points at them, then their
        // ids, unless the policy that replaced them kept them.
        let in_use: BTreeSet<u32> = next
            .vips
            .values()
            .chain(next.host.values())
            .flat_map(|p| {
                p.sources
                    .values()
                    .map(|(_, id)| *id)
                    .chain([p.policy.default_rule])
            })
            .collect();
        for old in released {
            remove_entries(&old, &mut writes.after);
            next.rulesets.remove(&old.policy.ruleset);
            for id in old
                .sources
                .values()
                .map(|(_, id)| *id)
                .chain([old.policy.default_rule])
            {
                if !in_use.contains(&id) {
                    next.rule_ids.remove(&id);
                }
            }
        }
        Ok((writes, next))
    }

    /// Writes `wanted` under a fresh ruleset unless `old` already is it; the old policy
    /// goes to `released`. `None`: nothing to do.
    fn program(
        &mut self,
        old: Option<&Programmed>,
        wanted: &Wanted,
        writes: &mut Vec<FirewallWrite>,
        released: &mut Vec<Programmed>,
    ) -> Option<Programmed> {
        if old.is_some_and(|old| wanted.matches(old)) {
            return None;
        }
        let ruleset = allocate(&mut self.rulesets, MAX_FW_RULESETS);
        let mut rule_id = |writes: &mut Vec<FirewallWrite>, kept: Option<u32>| {
            kept.unwrap_or_else(|| {
                let id = allocate(&mut self.rule_ids, MAX_FW_RULES);
                writes.push(FirewallWrite::ClearRuleStats { id });
                id
            })
        };
        let default_rule = rule_id(writes, old.map(|o| o.policy.default_rule));
        let mut sources = BTreeMap::new();
        for (prefix, action) in &wanted.sources {
            let kept = old
                .and_then(|o| o.sources.get(prefix))
                .filter(|(a, _)| a == action)
                .map(|(_, id)| *id);
            let id = rule_id(writes, kept);
            let (prefix_len, key) = source_key(ruleset, prefix);
            writes.push(FirewallWrite::AddSource {
                key,
                prefix_len,
                rule: FwRule {
                    rule_id: id,
                    action: *action,
                },
            });
            sources.insert(*prefix, (*action, id));
        }
        for port in &wanted.ports {
            writes.push(FirewallWrite::AddPort {
                key: port_key(ruleset, *port),
            });
        }
        released.extend(old.cloned());
        Some(Programmed {
            policy: FwPolicy {
                ruleset,
                flags: wanted.flags,
                default_rule,
                _pad: 0,
                interval_ns: wanted.interval_ns,
                burst_ns: wanted.burst_ns,
            },
            sources,
            ports: wanted.ports.clone(),
        })
    }
}

fn remove_entries(old: &Programmed, writes: &mut Vec<FirewallWrite>) {
    for prefix in old.sources.keys() {
        let (prefix_len, key) = source_key(old.policy.ruleset, prefix);
        writes.push(FirewallWrite::RemoveSource { key, prefix_len });
    }
    for port in &old.ports {
        writes.push(FirewallWrite::RemovePort {
            key: port_key(old.policy.ruleset, *port),
        });
    }
}

/// The smallest id not in `used` (there is always one: capacities are checked first).
fn allocate(used: &mut BTreeSet<u32>, capacity: u32) -> u32 {
    let id = (0..capacity)
        .find(|id| !used.contains(id))
        .unwrap_or(capacity - 1);
    used.insert(id);
    id
}

pub fn source_key(ruleset: u32, prefix: &Prefix) -> (u32, FwSource) {
    let (family, addr) = addr_words(prefix.addr);
    (
        FW_SOURCE_FIXED_BITS + u32::from(prefix.len),
        FwSource {
            ruleset,
            family,
            _pad: [0; 3],
            addr,
        },
    )
}

fn port_key(ruleset: u32, port: u16) -> FwPortKey {
    FwPortKey {
        ruleset,
        port: port.to_be(),
        _pad: 0,
    }
}

pub fn host_key(rule: &HostRule) -> HostPortKey {
    HostPortKey {
        port: rule.port.to_be(),
        protocol: rule.protocol.number(),
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn p(text: &str) -> Prefix {
        text.parse().unwrap()
    }

    fn filtered(allow: &[&str], deny: &[&str]) -> VipFirewall {
        VipFirewall {
            allow_sources: allow.iter().map(|t| p(t)).collect(),
            deny_sources: deny.iter().map(|t| p(t)).collect(),
            ..VipFirewall::default()
        }
    }

    fn plan(state: &FirewallState, vips: &[(u32, VipFirewall)]) -> (FirewallWrites, FirewallState) {
        let vips = vips.iter().cloned().collect();
        state.plan(&FirewallConfig::default(), &vips).unwrap()
    }

    #[test]
    fn a_new_policy_is_written_whole_before_the_vip_points_at_it() {
        let (writes, state) = plan(
            &FirewallState::default(),
            &[(3, filtered(&["198.18.0.0/16"], &["198.18.5.0/24"]))],
        );
        let last = writes.before.last().unwrap();
        assert!(
            matches!(last, FirewallWrite::SetVipPolicy { vip_id: 3, policy } if policy.flags == FW_SOURCES_LISTED | FW_DEFAULT_DENY),
            "{writes:?}"
        );
        let sources = writes
            .before
            .iter()
            .filter(|w| matches!(w, FirewallWrite::AddSource { .. }))
            .count();
        assert_eq!(sources, 2);
        assert!(writes.after.is_empty());
        // The same again writes nothing.
        let (again, _) = plan(
            &state,
            &[(3, filtered(&["198.18.0.0/16"], &["198.18.5.0/24"]))],
        );
        assert!(
            again.before.is_empty() && again.after.is_empty(),
            "{again:?}"
        );
    }

    #[test]
    fn a_change_switches_rulesets_and_keeps_the_ids_of_rules_that_stay() {
        let (_, state) = plan(
            &FirewallState::default(),
            &[(3, filtered(&["198.18.0.0/16"], &[]))],
        );
        let before = state.vip(3).unwrap().clone();
        let (writes, next) = plan(
            &state,
            &[(3, filtered(&["198.18.0.0/16", "2001:db8::/32"], &[]))],
        );
        let after = next.vip(3).unwrap();
        assert_ne!(after.policy.ruleset, before.policy.ruleset);
        assert_eq!(
            after.sources[&p("198.18.0.0/16")],
            before.sources[&p("198.18.0.0/16")]
        );
        assert_eq!(after.policy.default_rule, before.policy.default_rule);
        // The old ruleset's entry goes after the switch.
        assert!(
            matches!(writes.after.as_slice(), [FirewallWrite::RemoveSource { key, .. }] if key.ruleset == before.policy.ruleset),
            "{writes:?}"
        );
    }

    #[test]
    fn dropping_a_policy_only_removes_after() {
        let (_, state) = plan(
            &FirewallState::default(),
            &[(3, filtered(&["198.18.0.0/16"], &[]))],
        );
        let (writes, next) = plan(&state, &[]);
        assert!(writes.before.is_empty());
        assert_eq!(writes.after.len(), 1);
        assert!(next.vip(3).is_none());
        assert!(next.rulesets.is_empty() && next.rule_ids.is_empty());
    }

    #[test]
    fn adopting_the_maps_plans_nothing_for_the_same_config() {
        let config = FirewallConfig {
            new_flow_cap: Some(1000),
            new_flow_cap_burst: None,
            host: vec![HostRule {
                protocol: Protocol::Tcp,
                port: 22,
                allow_sources: vec![p("198.18.100.0/24")],
                deny_sources: vec![],
            }],
        };
        let vips: BTreeMap<u32, VipFirewall> = [(
            1,
            VipFirewall {
                allow_ports: vec![80, 443],
                new_flow_rate: Some(10),
                ..filtered(&[], &["198.18.9.0/24"])
            },
        )]
        .into();
        let (writes, state) = FirewallState::default().plan(&config, &vips).unwrap();
        // What the maps would hold after those writes.
        let mut maps = ProgrammedFirewall::default();
        for write in &writes.before {
            match write {
                FirewallWrite::AddSource {
                    key,
                    prefix_len,
                    rule,
                } => maps.sources.push((*prefix_len, *key, *rule)),
                FirewallWrite::AddPort { key } => maps.ports.push(*key),
                FirewallWrite::SetVipPolicy { vip_id, policy } => {
                    maps.vips.push((*vip_id, *policy))
                }
                FirewallWrite::SetHostPort { key, policy } => maps.host.push((*key, *policy)),
                FirewallWrite::SetSettings { settings } => maps.settings = *settings,
                _ => {}
            }
        }
        let adopted = FirewallState::adopt(&maps);
        assert_eq!(adopted.vip(1), state.vip(1));
        let (again, _) = adopted.plan(&config, &vips).unwrap();
        assert!(
            again.before.is_empty() && again.after.is_empty(),
            "{again:?}"
        );
    }
}
