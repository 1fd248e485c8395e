//! The firewall's maps: typed handles, the writes of [`super::plan`], the counters, and
//! what an adopting agent reads back. Owned by [`crate::dataplane::Dataplane`].

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
    },
};
use lb_common::{
    firewall::{
        BucketKey, FirewallCounters, FwPolicy, FwPortKey, FwRule, FwSettings, FwSource,
        HostPortKey, TokenBucket,
    },
    map_names,
};

use super::plan::{FirewallWrite, ProgrammedFirewall};
use crate::dataplane::{DataplaneError, map_err, on_every_cpu, take};

pub struct FirewallMaps {
    vips: Array<MapData, FwPolicy>,
    sources: LpmTrie<MapData, FwSource, FwRule>,
    ports: HashMap<MapData, FwPortKey, u32>,
    host_ports: HashMap<MapData, HostPortKey, FwPolicy>,
    settings: Array<MapData, FwSettings>,
    vip_stats: PerCpuArray<MapData, FirewallCounters>,
    rule_stats: PerCpuArray<MapData, u64>,
    buckets: PerCpuHashMap<MapData, BucketKey, TokenBucket>,
    cap: PerCpuArray<MapData, TokenBucket>,
    cpus: usize,
}

impl FirewallMaps {
    pub fn take(ebpf: &mut Ebpf, cpus: usize) -> Result<Self, DataplaneError> {
        Ok(FirewallMaps {
            vips: take(ebpf, map_names::FW_VIPS)?,
            sources: take(ebpf, map_names::FW_SOURCES)?,
            ports: take(ebpf, map_names::FW_PORTS)?,
            host_ports: take(ebpf, map_names::FW_HOST_PORTS)?,
            settings: take(ebpf, map_names::FW_SETTINGS)?,
            vip_stats: take(ebpf, map_names::FW_VIP_STATS)?,
            rule_stats: take(ebpf, map_names::FW_RULE_STATS)?,
            buckets: take(ebpf, map_names::FLOOD_BUCKETS)?,
            cap: take(ebpf, map_names::FLOOD_CAP)?,
            cpus,
        })
    }

    pub fn apply(&mut self, write: &FirewallWrite) -> Result<(), DataplaneError> {
        match write {
            FirewallWrite::AddSource {
                key,
                prefix_len,
                rule,
            } => self
                .sources
                .insert(&Key::new(*prefix_len, *key), rule, 0)
                .map_err(map_err(map_names::FW_SOURCES)),
            FirewallWrite::RemoveSource { key, prefix_len } => self
                .sources
                .remove(&Key::new(*prefix_len, *key))
                .map_err(map_err(map_names::FW_SOURCES)),
            FirewallWrite::AddPort { key } => self
                .ports
                .insert(key, 1, 0)
                .map_err(map_err(map_names::FW_PORTS)),
            FirewallWrite::RemovePort { key } => {
                self.ports.remove(key).map_err(map_err(map_names::FW_PORTS))
            }
            FirewallWrite::ClearRuleStats { id } => {
                let zero = self.zeroed()?;
                self.rule_stats
                    .set(*id, zero, 0)
                    .map_err(map_err(map_names::FW_RULE_STATS))
            }
            FirewallWrite::SetVipPolicy { vip_id, policy } => self
                .vips
                .set(*vip_id, policy, 0)
                .map_err(map_err(map_names::FW_VIPS)),
            FirewallWrite::ClearVipStats { vip_id } => {
                let zero = self.zeroed()?;
                self.vip_stats
                    .set(*vip_id, zero, 0)
                    .map_err(map_err(map_names::FW_VIP_STATS))
            }
            FirewallWrite::SetHostPort { key, policy } => self
                .host_ports
                .insert(key, policy, 0)
                .map_err(map_err(map_names::FW_HOST_PORTS)),
            FirewallWrite::RemoveHostPort { key } => self
                .host_ports
                .remove(key)
                .map_err(map_err(map_names::FW_HOST_PORTS)),
            FirewallWrite::SetSettings { settings } => {
                // Each CPU has a bucket of its own: it gets its share of the cap.
                let share = self.cpus as u64;
                let per_cpu = FwSettings {
                    cap_interval_ns: settings.cap_interval_ns * share,
                    cap_burst_ns: settings.cap_burst_ns * share,
                    ..*settings
                };
                self.settings
                    .set(0, per_cpu, 0)
                    .map_err(map_err(map_names::FW_SETTINGS))
            }
        }
    }

    fn zeroed<T: aya::Pod + Default>(&self) -> Result<PerCpuValues<T>, DataplaneError> {
        on_every_cpu(T::default(), self.cpus)
    }

    /// What the maps hold, for an agent adopting them; `guarded` are the VIP ids whose
    /// VIP entry is `VIP_GUARDED` (the others' `FW_VIPS` slots are stale).
    pub fn programmed(
        &self,
        guarded: impl Iterator<Item = u32>,
    ) -> Result<ProgrammedFirewall, DataplaneError> {
        let vips = guarded
            .map(|id| Ok((id, self.vips.get(&id, 0)?)))
            .collect::<Result<_, aya::maps::MapError>>()
            .map_err(map_err(map_names::FW_VIPS))?;
        let sources = self
            .sources
            .iter()
            .map(|entry| entry.map(|(key, rule)| (key.prefix_len(), key.data(), rule)))
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::FW_SOURCES))?;
        let ports = self
            .ports
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::FW_PORTS))?;
        let host = self
            .host_ports
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::FW_HOST_PORTS))?;
        let mut settings = self
            .settings
            .get(&0, 0)
            .map_err(map_err(map_names::FW_SETTINGS))?;
        let share = self.cpus as u64;
        settings.cap_interval_ns /= share;
        settings.cap_burst_ns /= share;
        Ok(ProgrammedFirewall {
            vips,
            sources,
            ports,
            host,
            settings,
        })
    }

    /// A VIP's firewall counters, summed over CPUs.
    pub fn vip_counters(&self, vip_id: u32) -> Result<FirewallCounters, DataplaneError> {
        let values = self
            .vip_stats
            .get(&vip_id, 0)
            .map_err(map_err(map_names::FW_VIP_STATS))?;
        let mut total = FirewallCounters::default();
        for value in values.iter() {
            total += *value;
        }
        Ok(total)
    }

    /// Packets a rule decided, summed over CPUs.
    pub fn rule_count(&self, rule_id: u32) -> Result<u64, DataplaneError> {
        let values = self
            .rule_stats
            .get(&rule_id, 0)
            .map_err(map_err(map_names::FW_RULE_STATS))?;
        Ok(values.iter().sum())
    }

    /// A source's new-flow bucket on every CPU (tests and operators: set the clock).
    pub fn bucket(&self, key: &BucketKey) -> Option<Vec<TokenBucket>> {
        self.buckets.get(key, 0).ok().map(|values| values.to_vec())
    }

    /// Overwrites a source's bucket on every CPU.
    pub fn set_bucket(
        &mut self,
        key: &BucketKey,
        bucket: TokenBucket,
    ) -> Result<(), DataplaneError> {
        let values = on_every_cpu(bucket, self.cpus)?;
        self.buckets
            .insert(key, values, 0)
            .map_err(map_err(map_names::FLOOD_BUCKETS))
    }

    /// Overwrites the global cap's bucket on every CPU.
    pub fn set_cap_bucket(&mut self, bucket: TokenBucket) -> Result<(), DataplaneError> {
        let values = on_every_cpu(bucket, self.cpus)?;
        self.cap
            .set(0, values, 0)
            .map_err(map_err(map_names::FLOOD_CAP))
    }
}
