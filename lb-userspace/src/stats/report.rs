//! A snapshot of the dataplane's counters, per VIP and backend and per verdict reason,
//! for people (`Display`) and for scripts (`Serialize`).

use std::{collections::BTreeMap, fmt, net::IpAddr};

use lb_common::{Counter, TrafficCounters, Verdict, words_addr};
use serde::{Deserialize, Serialize};

use super::firewall::{HostRuleReport, VipFirewallReport, host_report, vip_report};
use crate::{
    config::Protocol,
    dataplane::plan::Reconciler,
    dataplane::{Dataplane, DataplaneError},
    stats::interface::InterfaceCounters,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl From<TrafficCounters> for Traffic {
    fn from(c: TrafficCounters) -> Self {
        Traffic {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendReport {
    pub address: IpAddr,
    pub traffic: Traffic,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipReport {
    pub name: String,
    pub address: Option<IpAddr>,
    pub port: u16,
    pub protocol: u8,
    pub traffic: Traffic,
    pub backends: Vec<BackendReport>,
    /// Its firewall's drops and rules, if it has a firewall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<VipFirewallReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatsReport {
    /// Packets per XDP verdict (derived from the reasons).
    pub verdicts: BTreeMap<String, u64>,
    /// Packets per verdict reason, and event counts, by counter name.
    pub counters: BTreeMap<String, u64>,
    pub vips: Vec<VipReport>,
    /// The kernel's loss counters of the attached interfaces (absent from older agents).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceCounters>,
    /// `[firewall.host]` rules and the packets each decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_rules: Vec<HostRuleReport>,
}

impl StatsReport {
    pub fn collect(dataplane: &Dataplane, state: &Reconciler) -> Result<Self, DataplaneError> {
        let global = dataplane.global_counters()?;
        let mut verdicts = BTreeMap::new();
        for (counter, value) in &global {
            if let Some(verdict) = counter.verdict() {
                *verdicts.entry(verdict.name().to_owned()).or_insert(0) += value;
            }
        }
        let mut vips = Vec::new();
        for vip in state.vips() {
            let backends = vip
                .backends
                .iter()
                .map(|(address, backend)| {
                    Ok(BackendReport {
                        address: *address,
                        traffic: dataplane.backend_counters(backend.id)?.into(),
                    })
                })
                .collect::<Result<_, DataplaneError>>()?;
            let firewall = state
                .firewall()
                .vip(vip.meta.id)
                .map(|policy| vip_report(dataplane, vip.meta.id, policy))
                .transpose()?;
            vips.push(VipReport {
                name: vip.name.clone(),
                address: words_addr(vip.key.family, vip.key.addr),
                port: u16::from_be(vip.key.port),
                protocol: vip.key.protocol,
                traffic: dataplane.vip_counters(vip.meta.id)?.into(),
                backends,
                firewall,
            });
        }
        let interfaces = dataplane
            .attachments()
            .filter_map(|a| match InterfaceCounters::read(&a.interface) {
                Ok(counters) => Some(counters),
                Err(err) => {
                    tracing::debug!(interface = %a.interface, error = %err, "no interface counters");
                    None
                }
            })
            .collect();
        let host_rules = state
            .firewall()
            .host()
            .map(|(key, policy)| {
                host_report(dataplane, key.protocol, u16::from_be(key.port), policy)
            })
            .collect::<Result<_, _>>()?;
        Ok(StatsReport {
            interfaces,
            verdicts,
            counters: global
                .into_iter()
                .map(|(c, v)| (c.name().to_owned(), v))
                .collect(),
            vips,
            host_rules,
        })
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters.get(counter.name()).copied().unwrap_or(0)
    }

    pub fn verdict(&self, verdict: Verdict) -> u64 {
        self.verdicts.get(verdict.name()).copied().unwrap_or(0)
    }
}

impl fmt::Display for StatsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<40} {:>12} {:>14} {:>10}",
            "VIP / backend", "packets", "bytes", "new flows"
        )?;
        for vip in &self.vips {
            let address = vip.address.map_or_else(
                || "?".to_owned(),
                |a| std::net::SocketAddr::new(a, vip.port).to_string(),
            );
            let label = format!(
                "{} {}/{}",
                vip.name,
                address,
                Protocol::from_number(vip.protocol)
                    .map_or_else(|| "?".to_owned(), |p| p.to_string())
            );
            row(f, &label, vip.traffic)?;
            for backend in &vip.backends {
                row(f, &format!("  {}", backend.address), backend.traffic)?;
            }
            if let Some(firewall) = &vip.firewall {
                write!(f, "{firewall}")?;
            }
        }
        for rule in &self.host_rules {
            write!(f, "{rule}")?;
        }
        writeln!(f)?;
        let verdicts: Vec<String> = self
            .verdicts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "verdicts: {}", verdicts.join(", "))?;
        let counters: Vec<String> = Counter::ALL
            .iter()
            .map(|c| format!("{} {}", c.name(), self.counter(*c)))
            .collect();
        write!(f, "counters: {}", counters.join(", "))?;
        // The kernel's view: frames weir counted `tx` may still have been dropped here.
        for i in &self.interfaces {
            write!(
                f,
                "\ninterface {}: xdp_errors {}, xdp_drops {}, rx_dropped {}, tx_dropped {}",
                i.name, i.xdp_errors, i.xdp_drops, i.rx_dropped, i.tx_dropped
            )?;
            for (name, value) in i.driver.iter().filter(|(_, v)| **v > 0) {
                write!(f, ", {name} {value}")?;
            }
        }
        Ok(())
    }
}

fn row(f: &mut fmt::Formatter<'_>, label: &str, t: Traffic) -> fmt::Result {
    writeln!(
        f,
        "{label:<40} {:>12} {:>14} {:>10}",
        t.packets, t.bytes, t.new_flows
    )
}
