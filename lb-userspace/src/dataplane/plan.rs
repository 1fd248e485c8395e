//! Turns a validated configuration into the map writes that bring the dataplane to it.
//!
//! Pure logic, no I/O: [`Reconciler`] remembers what the maps hold (ids, Maglev tables,
//! ring slices) and [`Reconciler::plan`] computes, for a new configuration, the ordered
//! list of [`MapWrite`]s and the state after them — or refuses the whole change before
//! anything is written. The order of the writes keeps every intermediate state
//! consistent for packets in flight:
//!
//! 1. removed VIPs stop matching;
//! 2. new backends exist before any Maglev slot names them;
//! 3. a VIP's table is written before the VIP points at it (a new or resized table goes
//!    to a fresh ring slice, an unchanged size is patched slot by slot);
//! 4. backends that left (or went to maint) stop accepting flows only after no slot
//!    names them, so their flows move to the backend that now owns their slot; a backend
//!    back from maint accepts flows again before any slot names it;
//! 5. ring slices and ids are released last.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::IpAddr,
};

use lb_common::{
    BACKEND_ACCEPTS_FLOWS, BACKEND_TAKES_NEW_FLOWS, Backend, DESTINATION_NAT_SOURCES,
    DESTINATION_VIPS, DestinationFilter, FlowTimeouts, MAX_BACKENDS, MAX_VIPS, NO_BACKEND,
    VIP_FORWARDING_NAT, VIP_GUARDED, VIP_HASH_SOURCE_ONLY, VIP_NO_CONNTRACK, VipAddressKey, VipKey,
    VipMeta,
};

use crate::{
    config::{AdminState, BackendConfig, Config, Forwarding, HashMode, VipConfig},
    dataplane::maglev::{self, MaglevBackend},
    firewall::plan::{
        FirewallPlanError, FirewallState, FirewallWrite, ProgrammedFirewall, guarded,
    },
};

/// A VIP as the maps hold it.
#[derive(Clone, Debug)]
pub struct ProgrammedVip {
    pub key: VipKey,
    pub meta: VipMeta,
    /// Its slice of the Maglev ring.
    pub table: Vec<u32>,
}

/// The maps' contents that the planner needs to take over from a previous agent.
#[derive(Clone, Debug, Default)]
pub struct ProgrammedState {
    pub vips: Vec<ProgrammedVip>,
    pub backends: Vec<(u32, Backend)>,
    pub timeouts: FlowTimeouts,
    pub firewall: ProgrammedFirewall,
}

/// One write to the dataplane's maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapWrite {
    /// `BACKENDS[id] = backend`.
    SetBackend {
        id: u32,
        backend: Backend,
    },
    /// Zero the per-CPU state of a fresh or reused backend id: its counters
    /// (`BACKEND_STATS`) and its cached next hop (`NEXT_HOPS`).
    ResetBackend {
        id: u32,
    },
    /// `MAGLEV_RING[base + i] = slots[i]` for a whole table.
    SetRing {
        base: u32,
        slots: Vec<u32>,
    },
    /// `MAGLEV_RING[base + offset] = backend_id` for the slots that changed.
    PatchRing {
        base: u32,
        changes: Vec<(u32, u32)>,
    },
    SetVip {
        key: VipKey,
        meta: VipMeta,
    },
    RemoveVip {
        key: VipKey,
    },
    /// Zero `VIP_STATS[id]` on every CPU (a fresh or reused id).
    ClearVipStats {
        id: u32,
    },
    AddVipAddress {
        key: VipAddressKey,
    },
    RemoveVipAddress {
        key: VipAddressKey,
    },
    /// `NAT_CONFIG[0] = timeouts`: flow lifetimes and the NAT port range.
    SetFlowTimeouts {
        timeouts: FlowTimeouts,
    },
    /// `DESTINATIONS[slot] = filter`: every VIP address (`DESTINATION_VIPS`) or every
    /// NAT source (`DESTINATION_NAT_SOURCES`).
    SetDestinations {
        slot: u32,
        filter: Box<DestinationFilter>,
    },
    /// The firewall's maps (`crate::firewall::plan`).
    Firewall(FirewallWrite),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("too many VIPs: {wanted} configured, the dataplane holds {MAX_VIPS}")]
    TooManyVips { wanted: usize },
    #[error("too many backends: {wanted} across all VIPs, the dataplane holds {MAX_BACKENDS}")]
    TooManyBackends { wanted: usize },
    #[error(
        "the Maglev tables need {wanted} more ring slots but only {free} of {capacity} are free: \
         the ring is shared by all VIPs; lower their table_size (65521 fits 64 VIPs)"
    )]
    RingFull {
        wanted: u64,
        free: u64,
        capacity: u32,
    },
    #[error(
        "the adopted maps are inconsistent: a Maglev table at {base}+{size} overlaps another \
         or lies outside the ring of {capacity} slots (start with --replace-dataplane)"
    )]
    AdoptedRingCorrupt { base: u32, size: u32, capacity: u32 },
    #[error(
        "VIP {vip:?}: no NAT source address towards backend {backend} (no route to it?); \
         set nat_source"
    )]
    NoNatSource { vip: String, backend: IpAddr },
    #[error(transparent)]
    Firewall(#[from] FirewallPlanError),
    #[error("VIP {vip:?}: {source}")]
    Maglev {
        vip: String,
        source: maglev::MaglevError,
    },
}

/// What the maps hold for one backend of a VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendState {
    pub id: u32,
    /// Its weight in the Maglev table: the configured weight while ready, else 0.
    pub weight: u32,
    /// Whether its established flows may stay (`BACKEND_ACCEPTS_FLOWS`): not in maint.
    pub accepts: bool,
    /// Its `BACKENDS` entry as written.
    pub entry: Backend,
}

/// What the maps hold for one VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipState {
    pub name: String,
    pub key: VipKey,
    pub meta: VipMeta,
    pub backends: BTreeMap<IpAddr, BackendState>,
    /// The Maglev table as written to the ring: backend ids or `NO_BACKEND`.
    pub table: Vec<u32>,
}

/// The dataplane's programmed state, as far as the agent wrote it.
#[derive(Clone, Debug)]
pub struct Reconciler {
    vips: BTreeMap<VipKey, VipState>,
    vip_ids: IdPool,
    backend_ids: IdPool,
    ring: RingAllocator,
    timeouts: FlowTimeouts,
    /// The address the host reaches each backend from: the default NAT source.
    nat_sources: BTreeMap<IpAddr, IpAddr>,
    firewall: FirewallState,
}

impl Reconciler {
    /// An empty dataplane whose Maglev ring has `ring_capacity` slots.
    pub fn new(ring_capacity: u32) -> Self {
        Reconciler {
            vips: BTreeMap::new(),
            vip_ids: IdPool::new(MAX_VIPS),
            backend_ids: IdPool::new(MAX_BACKENDS),
            ring: RingAllocator::new(ring_capacity),
            // As a fresh map holds it, so that the first plan writes the real value.
            timeouts: FlowTimeouts {
                tcp_idle_ns: 0,
                udp_idle_ns: 0,
                closing_linger_ns: 0,
                tcp_embryonic_ns: 0,
                nat_port_first: 0,
                nat_port_count: 0,
            },
            nat_sources: BTreeMap::new(),
            firewall: FirewallState::default(),
        }
    }

    /// The addresses the host reaches backends from (resolved by the agent with the
    /// kernel's routes), used as the NAT source of VIPs that set none.
    pub fn set_nat_sources(&mut self, sources: BTreeMap<IpAddr, IpAddr>) {
        self.nat_sources = sources;
    }

    /// Takes over what a previous agent programmed (pinned maps), so that planning the
    /// same configuration writes nothing and every flow stays where it is. VIPs are named
    /// after the configuration; one it does not know keeps a placeholder name until the
    /// next plan removes it.
    pub fn adopt(
        programmed: &ProgrammedState,
        ring_capacity: u32,
        config: &Config,
    ) -> Result<Self, PlanError> {
        let mut state = Reconciler::new(ring_capacity);
        for vip in &programmed.vips {
            let configured = config.vips.iter().find(|c| vip_key(c) == vip.key);
            let backends: BTreeMap<IpAddr, BackendState> = programmed
                .backends
                .iter()
                .filter(|(_, backend)| backend.vip_id == vip.meta.id)
                .filter_map(|(id, backend)| {
                    let address = backend.ip()?;
                    let weight = configured
                        .and_then(|c| c.backends.iter().find(|b| b.address == address))
                        .map_or(0, maglev_weight);
                    let accepts = backend.flags & BACKEND_ACCEPTS_FLOWS != 0;
                    Some((
                        address,
                        BackendState {
                            id: *id,
                            weight,
                            accepts,
                            entry: *backend,
                        },
                    ))
                })
                .collect();
            state.vip_ids.take(vip.meta.id);
            for backend in backends.values() {
                state.backend_ids.take(backend.id);
            }
            state.ring.take(vip.meta.ring_base, vip.meta.ring_size)?;
            let name = configured.map_or_else(
                || format!("(adopted vip {})", vip.meta.id),
                |c| c.name.clone(),
            );
            state.vips.insert(
                vip.key,
                VipState {
                    name,
                    key: vip.key,
                    meta: vip.meta,
                    backends,
                    table: vip.table.clone(),
                },
            );
        }
        state.timeouts = programmed.timeouts;
        state.firewall = FirewallState::adopt(&programmed.firewall);
        Ok(state)
    }

    pub fn vips(&self) -> impl Iterator<Item = &VipState> {
        self.vips.values()
    }

    /// The firewall as programmed: policies and their rule ids, for the counters.
    pub fn firewall(&self) -> &FirewallState {
        &self.firewall
    }

    /// The writes that take the dataplane from this state to `config`, and the state
    /// after them. `self` is untouched, so a refused change leaves nothing behind.
    pub fn plan(&self, config: &Config) -> Result<(Vec<MapWrite>, Reconciler), PlanError> {
        check_capacity(config)?;
        let mut next = self.clone();
        let mut writes = Vec::new();
        let mut released_slices = Vec::new();
        let mut released_backends = Vec::new();
        let mut released_vips = Vec::new();
        let mut late_writes = Vec::new();

        let wanted: BTreeMap<VipKey, &VipConfig> =
            config.vips.iter().map(|vip| (vip_key(vip), vip)).collect();

        // The NAT port range exists before a VIP uses it, and goes after the last one.
        let nat = config
            .vips
            .iter()
            .any(|vip| vip.forwarding == Forwarding::Nat);
        let timeouts = config.flows.timeouts(nat);
        if timeouts != self.timeouts {
            let write = MapWrite::SetFlowTimeouts { timeouts };
            if nat {
                writes.push(write);
            } else {
                late_writes.push(write);
            }
            next.timeouts = timeouts;
        }

        // 1. Removed VIPs stop matching first.
        let removed: Vec<VipKey> = next
            .vips
            .keys()
            .filter(|key| !wanted.contains_key(key))
            .copied()
            .collect();
        for key in removed {
            let Some(state) = next.vips.remove(&key) else {
                continue;
            };
            writes.push(MapWrite::RemoveVip { key });
            released_slices.push((state.meta.ring_base, state.meta.ring_size));
            released_backends.extend(state.backends.values().map(|b| b.id));
            released_vips.push(state.meta.id);
        }

        // Addresses are added before the VIPs that use them, removed after.
        let old_addresses = vip_addresses(self.vips.keys());
        let new_addresses = vip_addresses(wanted.keys());
        for key in new_addresses.difference(&old_addresses) {
            writes.push(MapWrite::AddVipAddress { key: *key });
        }

        for (key, vip) in &wanted {
            next.apply_vip(
                *key,
                vip,
                guarded(&config.firewall, &vip.firewall),
                &mut writes,
                &mut released_slices,
                &mut released_backends,
                &mut late_writes,
            )?;
        }

        // The firewall: new policies are complete before a VIP is flagged to use them;
        // old ones go once nothing points at them.
        let firewalls = wanted
            .iter()
            .filter(|(_, vip)| guarded(&config.firewall, &vip.firewall))
            .filter_map(|(key, vip)| Some((next.vips.get(key)?.meta.id, vip.firewall.clone())))
            .collect();
        let (firewall, firewall_state) = next.firewall.plan(&config.firewall, &firewalls)?;
        next.firewall = firewall_state;
        writes.splice(0..0, firewall.before.into_iter().map(MapWrite::Firewall));

        // 4. Backends that left or went to maint stop accepting flows, now that no slot
        //    names them.
        writes.append(&mut late_writes);
        for &id in &released_backends {
            writes.push(MapWrite::SetBackend {
                id,
                backend: Backend::default(),
            });
        }
        // The destination filters let a VIP's packets in before any map names the VIP
        // (the union of old and new, after the NAT port range and before anything
        // else), and forget an address once nothing uses it.
        let first = writes
            .iter()
            .take_while(|w| matches!(w, MapWrite::SetFlowTimeouts { .. }))
            .count();
        for slot in [DESTINATION_VIPS, DESTINATION_NAT_SOURCES] {
            let (old, new) = (self.destinations(slot), next.destinations(slot));
            let mut union = old.clone();
            for (word, new) in union.words.iter_mut().zip(new.words) {
                *word |= new;
            }
            if union != old {
                let filter = union.clone();
                writes.insert(first, MapWrite::SetDestinations { slot, filter });
            }
            if new != union {
                writes.push(MapWrite::SetDestinations { slot, filter: new });
            }
        }
        for key in old_addresses.difference(&new_addresses) {
            writes.push(MapWrite::RemoveVipAddress { key: *key });
        }

        // 5. Release ring slices and ids.
        for (base, size) in released_slices {
            next.ring.free(base, size);
        }
        for id in released_backends {
            next.backend_ids.free(id);
        }
        for id in released_vips {
            next.vip_ids.free(id);
        }
        writes.extend(firewall.after.into_iter().map(MapWrite::Firewall));
        Ok((writes, next))
    }

    /// The `DESTINATIONS[slot]` filter of this state: its VIP addresses or NAT sources.
    fn destinations(&self, slot: u32) -> Box<DestinationFilter> {
        let mut filter = Box::new(DestinationFilter::EMPTY);
        for vip in self.vips.values() {
            if slot == DESTINATION_VIPS {
                filter.insert(&vip.key.addr);
                continue;
            }
            for backend in vip.backends.values() {
                if backend.entry.nat_source != [0; 4] {
                    filter.insert(&backend.entry.nat_source);
                }
            }
        }
        filter
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_vip(
        &mut self,
        key: VipKey,
        vip: &VipConfig,
        guarded: bool,
        writes: &mut Vec<MapWrite>,
        released_slices: &mut Vec<(u32, u32)>,
        released_backends: &mut Vec<u32>,
        late_writes: &mut Vec<MapWrite>,
    ) -> Result<(), PlanError> {
        let flags = match vip.hash {
            HashMode::FiveTuple => 0,
            HashMode::SourceIp => VIP_HASH_SOURCE_ONLY,
        } | match vip.forwarding {
            Forwarding::Dsr => 0,
            Forwarding::Nat => VIP_FORWARDING_NAT,
        } | if guarded { VIP_GUARDED } else { 0 }
            | if vip.conntrack { 0 } else { VIP_NO_CONNTRACK };
        let previous = self.vips.get(&key).cloned();
        let is_new = previous.is_none();
        let vip_id = match &previous {
            Some(state) => state.meta.id,
            None => self.vip_ids.allocate().ok_or(PlanError::TooManyVips {
                wanted: self.vips.len() + 1,
            })?,
        };

        // 2. Backends: keep ids of those that stay, allocate ids for new ones.
        let old_backends = previous
            .as_ref()
            .map(|s| s.backends.clone())
            .unwrap_or_default();
        let mut backends = BTreeMap::new();
        for backend in &vip.backends {
            let accepts = backend.state != AdminState::Maint;
            let weight = maglev_weight(backend);
            let mut entry = Backend::new(
                backend.address,
                vip_id,
                if accepts { BACKEND_ACCEPTS_FLOWS } else { 0 }
                    | if weight > 0 {
                        BACKEND_TAKES_NEW_FLOWS
                    } else {
                        0
                    },
            );
            if vip.forwarding == Forwarding::Nat {
                let source = vip
                    .nat_source
                    .or_else(|| self.nat_sources.get(&backend.address).copied())
                    .ok_or_else(|| PlanError::NoNatSource {
                        vip: vip.name.clone(),
                        backend: backend.address,
                    })?;
                entry = entry.with_nat(source, backend.port.unwrap_or(vip.port));
            }
            let id = match old_backends.get(&backend.address) {
                Some(state) => {
                    if state.entry != entry {
                        let write = MapWrite::SetBackend {
                            id: state.id,
                            backend: entry,
                        };
                        // Going to maint: once no slot names it, so its flows move to
                        // the slots' owners. Anything else (taking flows again, a new
                        // NAT port or source): before any slot names it.
                        if state.accepts && !accepts {
                            late_writes.push(write)
                        } else {
                            writes.push(write)
                        }
                    }
                    state.id
                }
                None => {
                    let id = self
                        .backend_ids
                        .allocate()
                        .ok_or(PlanError::TooManyBackends {
                            wanted: MAX_BACKENDS as usize + 1,
                        })?;
                    writes.push(MapWrite::ResetBackend { id });
                    writes.push(MapWrite::SetBackend { id, backend: entry });
                    id
                }
            };
            backends.insert(
                backend.address,
                BackendState {
                    id,
                    weight,
                    accepts,
                    entry,
                },
            );
        }
        released_backends.extend(
            old_backends
                .iter()
                .filter(|(addr, _)| !backends.contains_key(*addr))
                .map(|(_, state)| state.id),
        );

        // 3. The Maglev table, then the VIP entry that points at it. Building one takes
        // milliseconds per VIP, so a table whose inputs did not change is kept.
        let table = match previous
            .as_ref()
            .filter(|state| same_maglev_inputs(state, &backends, vip.table_size))
        {
            Some(state) => state.table.clone(),
            None => maglev_table(&vip.name, &backends, vip.table_size)?,
        };
        let mut meta = VipMeta {
            id: vip_id,
            flags,
            ring_base: 0,
            ring_size: vip.table_size,
        };
        match previous
            .as_ref()
            .filter(|state| state.meta.ring_size == vip.table_size)
        {
            Some(state) => {
                meta.ring_base = state.meta.ring_base;
                let changes: Vec<(u32, u32)> = (0u32..)
                    .zip(state.table.iter().zip(&table))
                    .filter(|(_, (old, new))| old != new)
                    .map(|(offset, (_, new))| (offset, *new))
                    .collect();
                if !changes.is_empty() {
                    writes.push(MapWrite::PatchRing {
                        base: meta.ring_base,
                        changes,
                    });
                }
            }
            None => {
                meta.ring_base = self.ring.allocate(vip.table_size)?;
                writes.push(MapWrite::SetRing {
                    base: meta.ring_base,
                    slots: table.clone(),
                });
                if let Some(state) = &previous {
                    released_slices.push((state.meta.ring_base, state.meta.ring_size));
                }
            }
        }
        if is_new {
            writes.push(MapWrite::ClearVipStats { id: vip_id });
        }
        if previous.as_ref().map(|state| state.meta) != Some(meta) {
            writes.push(MapWrite::SetVip { key, meta });
        }
        self.vips.insert(
            key,
            VipState {
                name: vip.name.clone(),
                key,
                meta,
                backends,
                table,
            },
        );
        Ok(())
    }
}

/// A backend's share of the Maglev table: only a ready backend takes new flows.
fn maglev_weight(backend: &BackendConfig) -> u32 {
    match backend.state {
        AdminState::Ready => backend.weight,
        AdminState::Drain | AdminState::Maint => 0,
    }
}

/// The VIP table key of a configured VIP.
pub fn vip_key(vip: &VipConfig) -> VipKey {
    VipKey::new(vip.address, vip.port, vip.protocol.number())
}

fn vip_addresses<'a>(keys: impl Iterator<Item = &'a VipKey>) -> BTreeSet<VipAddressKey> {
    keys.map(|key| VipAddressKey {
        addr: key.addr,
        family: key.family,
        _pad: [0; 3],
    })
    .collect()
}

/// Refuses configurations that cannot fit before any id or slot is handed out.
fn check_capacity(config: &Config) -> Result<(), PlanError> {
    if config.vips.len() > MAX_VIPS as usize {
        return Err(PlanError::TooManyVips {
            wanted: config.vips.len(),
        });
    }
    let backends: usize = config.vips.iter().map(|vip| vip.backends.len()).sum();
    if backends > MAX_BACKENDS as usize {
        return Err(PlanError::TooManyBackends { wanted: backends });
    }
    Ok(())
}

/// Whether `state`'s Maglev table is the one `backends` and `table_size` would build: the
/// same backends (addresses name them in the table) with the same ids and weights.
fn same_maglev_inputs(
    state: &VipState,
    backends: &BTreeMap<IpAddr, BackendState>,
    table_size: u32,
) -> bool {
    let inputs = |backends: &BTreeMap<IpAddr, BackendState>| {
        backends
            .iter()
            .map(|(address, backend)| (*address, backend.id, backend.weight))
            .collect::<Vec<_>>()
    };
    state.meta.ring_size == table_size && inputs(&state.backends) == inputs(backends)
}

/// The VIP's Maglev table in backend ids. Backends are named by address, so every node
/// with the same backends builds the same table.
fn maglev_table(
    vip: &str,
    backends: &BTreeMap<IpAddr, BackendState>,
    table_size: u32,
) -> Result<Vec<u32>, PlanError> {
    let names: Vec<String> = backends.keys().map(IpAddr::to_string).collect();
    let entries: Vec<MaglevBackend<'_>> = names
        .iter()
        .zip(backends.values())
        .map(|(name, state)| MaglevBackend {
            name: name.as_bytes(),
            weight: state.weight,
        })
        .collect();
    let ids: Vec<u32> = backends.values().map(|state| state.id).collect();
    let table = maglev::build_table(&entries, table_size).map_err(|source| PlanError::Maglev {
        vip: vip.to_owned(),
        source,
    })?;
    Ok(table
        .into_iter()
        .map(|index| {
            if index == NO_BACKEND {
                NO_BACKEND
            } else {
                ids[index as usize]
            }
        })
        .collect())
}

/// Hands out small integer ids. Freed ids go to the back of the queue, so an id is
/// reused as late as possible (a stale connection-table entry naming it is long gone).
#[derive(Clone, Debug)]
struct IdPool {
    free: VecDeque<u32>,
}

impl IdPool {
    fn new(capacity: u32) -> Self {
        IdPool {
            free: (0..capacity).collect(),
        }
    }

    fn allocate(&mut self) -> Option<u32> {
        self.free.pop_front()
    }

    fn free(&mut self, id: u32) {
        self.free.push_back(id);
    }

    /// Marks `id` as in use (adopted).
    fn take(&mut self, id: u32) {
        self.free.retain(|free| *free != id);
    }
}

/// First-fit allocator of contiguous slices of the Maglev ring.
#[derive(Clone, Debug)]
struct RingAllocator {
    capacity: u32,
    /// Free slices, base → size, never adjacent (merged on free).
    free: BTreeMap<u32, u32>,
}

impl RingAllocator {
    fn new(capacity: u32) -> Self {
        let free = if capacity > 0 {
            BTreeMap::from([(0, capacity)])
        } else {
            BTreeMap::new()
        };
        RingAllocator { capacity, free }
    }

    fn allocate(&mut self, size: u32) -> Result<u32, PlanError> {
        let Some((&base, &free_size)) = self.free.iter().find(|(_, free)| **free >= size) else {
            return Err(PlanError::RingFull {
                wanted: u64::from(size),
                free: self.free.values().map(|&s| u64::from(s)).sum(),
                capacity: self.capacity,
            });
        };
        self.free.remove(&base);
        if free_size > size {
            self.free.insert(base + size, free_size - size);
        }
        Ok(base)
    }

    /// Marks `[base, base + size)` as in use (adopted); it must lie in a free slice.
    fn take(&mut self, base: u32, size: u32) -> Result<(), PlanError> {
        let corrupt = || PlanError::AdoptedRingCorrupt {
            base,
            size,
            capacity: self.capacity,
        };
        let (&free_base, &free_size) = self.free.range(..=base).next_back().ok_or_else(corrupt)?;
        let (end, free_end) = (
            u64::from(base) + u64::from(size),
            u64::from(free_base) + u64::from(free_size),
        );
        if end > free_end {
            return Err(corrupt());
        }
        self.free.remove(&free_base);
        if base > free_base {
            self.free.insert(free_base, base - free_base);
        }
        if free_end > end {
            self.free.insert(base + size, (free_end - end) as u32);
        }
        Ok(())
    }

    fn free(&mut self, base: u32, size: u32) {
        let (mut base, mut size) = (base, size);
        if let Some((&prev_base, &prev_size)) = self.free.range(..base).next_back()
            && prev_base + prev_size == base
        {
            self.free.remove(&prev_base);
            base = prev_base;
            size += prev_size;
        }
        if let Some(next_size) = self.free.remove(&(base + size)) {
            size += next_size;
        }
        self.free.insert(base, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const RING: u32 = 1 << 20;

    fn config(text: &str) -> Config {
        Config::parse(text, "test.toml").expect("valid test config")
    }

    fn web(backends: &[(&str, u32)], table_size: u32) -> Config {
        let mut text = format!(
            "[agent]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"web\"\naddress = \"198.18.0.10\"\n\
             port = 80\ntable_size = {table_size}\n"
        );
        for (addr, weight) in backends {
            text += &format!("[[vip.backend]]\naddress = \"{addr}\"\nweight = {weight}\n");
        }
        config(&text)
    }

    fn ring_writes(writes: &[MapWrite]) -> usize {
        writes
            .iter()
            .map(|w| match w {
                MapWrite::SetRing { slots, .. } => slots.len(),
                MapWrite::PatchRing { changes, .. } => changes.len(),
                _ => 0,
            })
            .sum()
    }

    /// `count` VIPs of one backend each, at the default table size.
    fn default_vips(count: usize) -> Config {
        let mut text = String::from("[agent]\ninterfaces = [\"eth0\"]\n");
        for i in 0..count {
            text += &format!(
                "[[vip]]\nname = \"v{i}\"\naddress = \"198.18.2.{i}\"\nport = 80\n\
                 [[vip.backend]]\naddress = \"198.18.1.11\"\n"
            );
        }
        config(&text)
    }

    #[test]
    fn the_default_ring_holds_63_vips_at_the_default_table_size() {
        let ring = lb_common::DEFAULT_MAGLEV_RING_ENTRIES;
        assert!(Reconciler::new(ring).plan(&default_vips(63)).is_ok());
        let err = Reconciler::new(ring)
            .plan(&default_vips(64))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the Maglev tables need 65537 more ring slots but only 65473 of 4194304 are \
             free: the ring is shared by all VIPs; lower their table_size (65521 fits 64 VIPs)"
        );
    }

    #[test]
    fn a_table_is_rebuilt_only_when_its_backends_weights_or_size_change() {
        let planned = |cfg: &Config| {
            let (_, next) = Reconciler::new(RING).plan(cfg).unwrap();
            next.vips().next().unwrap().clone()
        };
        let state = planned(&web(&[("198.18.1.11", 1), ("198.18.1.12", 2)], 251));
        assert!(same_maglev_inputs(&state, &state.backends, 251));
        assert!(!same_maglev_inputs(&state, &state.backends, 509));
        let reweighted = planned(&web(&[("198.18.1.11", 1), ("198.18.1.12", 3)], 251));
        assert!(!same_maglev_inputs(&state, &reweighted.backends, 251));
        let other = planned(&web(&[("198.18.1.11", 1), ("198.18.1.13", 2)], 251));
        assert!(!same_maglev_inputs(&state, &other.backends, 251));
        // A re-plan of an unchanged VIP keeps its table and writes no ring slot.
        let cfg = web(&[("198.18.1.11", 1), ("198.18.1.12", 2)], 251);
        let (_, first) = Reconciler::new(RING).plan(&cfg).unwrap();
        let (writes, _) = first.plan(&cfg).unwrap();
        assert!(
            !writes
                .iter()
                .any(|w| matches!(w, MapWrite::SetRing { .. } | MapWrite::PatchRing { .. })),
            "{writes:?}"
        );
    }

    #[test]
    fn first_apply_writes_backends_then_ring_then_vip() {
        // Two VIPs: several writes of each kind, all of which must be in order.
        let text = "[agent]\ninterfaces = [\"eth0\"]\n\
                    [[vip]]\nname = \"web\"\naddress = \"198.18.0.10\"\nport = 80\ntable_size = 251\n\
                    [[vip.backend]]\naddress = \"198.18.1.11\"\n[[vip.backend]]\naddress = \"198.18.1.12\"\n\
                    [[vip]]\nname = \"dns\"\naddress = \"198.18.0.20\"\nport = 53\ntable_size = 251\n\
                    [[vip.backend]]\naddress = \"198.18.1.13\"\n";
        let (writes, next) = Reconciler::new(RING).plan(&config(text)).unwrap();
        // Every VIP is written after everything it makes the program use: its address,
        // its counters reset, its ring slots, and the backends those name.
        let index = |pred: &dyn Fn(&MapWrite) -> bool| {
            writes
                .iter()
                .position(pred)
                .unwrap_or_else(|| panic!("missing write: {writes:?}"))
        };
        let mut vips = 0;
        for (at, write) in writes.iter().enumerate() {
            let MapWrite::SetVip { key, meta } = write else {
                continue;
            };
            vips += 1;
            let address =
                index(&|w| matches!(w, MapWrite::AddVipAddress { key: a } if a.addr == key.addr));
            let stats = index(&|w| matches!(w, MapWrite::ClearVipStats { id } if *id == meta.id));
            assert!(address < at && stats < at, "{writes:?}");
            let ring = meta.ring_base..meta.ring_base + meta.ring_size;
            let mut covered = 0;
            for (ring_at, ring_write) in writes.iter().enumerate() {
                let MapWrite::SetRing { base, slots } = ring_write else {
                    continue;
                };
                if !ring.contains(base) {
                    continue;
                }
                assert!(ring_at < at, "ring slots after their VIP: {writes:?}");
                covered += slots.len() as u32;
                for id in slots.iter().collect::<BTreeSet<_>>() {
                    let backend =
                        index(&|w| matches!(w, MapWrite::SetBackend { id: b, .. } if b == id));
                    assert!(
                        backend < ring_at,
                        "backend {id} after its slots: {writes:?}"
                    );
                }
            }
            assert_eq!(covered, meta.ring_size, "{writes:?}");
        }
        assert_eq!(vips, 2, "{writes:?}");
        for state in next.vips() {
            assert_eq!(state.table.len(), 251);
            assert!(state.table.iter().all(|id| *id != NO_BACKEND));
        }
    }

    #[test]
    fn nat_vips_carry_their_source_and_backend_port() {
        let text = "[agent]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"web\"\n\
                    address = \"198.18.0.10\"\nport = 80\nforwarding = \"nat\"\n\
                    [[vip.backend]]\naddress = \"198.18.1.11\"\nport = 8080\n\
                    [[vip.backend]]\naddress = \"198.18.1.12\"\n";
        let cfg = config(text);
        let empty = Reconciler::new(RING);
        assert_eq!(
            empty.plan(&cfg).unwrap_err(),
            PlanError::NoNatSource {
                vip: "web".into(),
                backend: "198.18.1.11".parse().unwrap()
            },
            "without a route there is no source address"
        );
        let mut state = Reconciler::new(RING);
        let source: IpAddr = "198.18.1.1".parse().unwrap();
        state.set_nat_sources(BTreeMap::from([
            ("198.18.1.11".parse().unwrap(), source),
            ("198.18.1.12".parse().unwrap(), source),
        ]));
        let (writes, next) = state.plan(&cfg).unwrap();
        let backends: Vec<Backend> = writes
            .iter()
            .filter_map(|w| match w {
                MapWrite::SetBackend { backend, .. } => Some(*backend),
                _ => None,
            })
            .collect();
        assert_eq!(backends.len(), 2);
        assert!(backends.iter().all(|b| b.nat_source_ip() == Some(source)));
        assert_eq!(
            backends
                .iter()
                .map(|b| u16::from_be(b.port))
                .collect::<Vec<_>>(),
            vec![8080, 80]
        );
        let vip = next.vips().next().unwrap();
        assert_eq!(vip.meta.flags & VIP_FORWARDING_NAT, VIP_FORWARDING_NAT);
        let timeouts = writes.iter().find_map(|w| match w {
            MapWrite::SetFlowTimeouts { timeouts } => Some(*timeouts),
            _ => None,
        });
        let first_backend = writes
            .iter()
            .position(|w| matches!(w, MapWrite::SetBackend { .. }));
        assert_eq!(timeouts, Some(cfg.flows.timeouts(true)));
        assert_eq!(
            writes
                .iter()
                .position(|w| matches!(w, MapWrite::SetFlowTimeouts { .. })),
            Some(0),
            "the port range exists before the VIP uses it: {first_backend:?}"
        );

        // A new backend port is written in place; the same config again writes nothing.
        let moved = config(&text.replace("port = 8080", "port = 9090"));
        let (writes, next) = next.plan(&moved).unwrap();
        assert!(matches!(
            writes.as_slice(),
            [MapWrite::SetBackend { backend, .. }] if u16::from_be(backend.port) == 9090
        ));
        assert_eq!(next.plan(&moved).unwrap().0, vec![]);
    }

    #[test]
    fn reapplying_the_same_config_writes_nothing() {
        let cfg = web(&[("198.18.1.11", 100), ("198.18.1.12", 100)], 251);
        let (_, state) = Reconciler::new(RING).plan(&cfg).unwrap();
        let (writes, _) = state.plan(&cfg).unwrap();
        assert_eq!(writes, vec![]);
    }

    #[test]
    fn removing_a_backend_patches_only_changed_slots_and_retires_it_last() {
        let before = web(
            &[
                ("198.18.1.11", 100),
                ("198.18.1.12", 100),
                ("198.18.1.13", 100),
            ],
            65537,
        );
        let after = web(&[("198.18.1.11", 100), ("198.18.1.12", 100)], 65537);
        let (_, state) = Reconciler::new(RING).plan(&before).unwrap();
        let removed_id = state.vips().next().unwrap().backends[&"198.18.1.13".parse().unwrap()].id;
        let (writes, next) = state.plan(&after).unwrap();
        assert!(
            matches!(writes.first(), Some(MapWrite::PatchRing { .. })),
            "{writes:?}"
        );
        assert_eq!(
            writes.last(),
            Some(&MapWrite::SetBackend {
                id: removed_id,
                backend: Backend::default()
            })
        );
        assert!(
            ring_writes(&writes) < 65537 / 2,
            "only changed slots are written"
        );
        assert!(
            next.vips()
                .next()
                .unwrap()
                .table
                .iter()
                .all(|id| *id != removed_id)
        );
    }

    #[test]
    fn resizing_a_table_moves_it_to_a_fresh_slice_and_frees_the_old_one() {
        let cfg = web(&[("198.18.1.11", 100)], 251);
        let (_, state) = Reconciler::new(600).plan(&cfg).unwrap();
        let (writes, next) = state.plan(&web(&[("198.18.1.11", 100)], 257)).unwrap();
        let meta = next.vips().next().unwrap().meta;
        assert_eq!((meta.ring_base, meta.ring_size), (251, 257));
        assert!(writes.contains(&MapWrite::SetVip {
            key: state.vips().next().unwrap().key,
            meta
        }));
        // The old slice is free again: a third size fits at base 0.
        let (_, after) = next.plan(&web(&[("198.18.1.11", 100)], 241)).unwrap();
        assert_eq!(after.vips().next().unwrap().meta.ring_base, 0);
    }

    #[test]
    fn a_change_that_does_not_fit_is_refused_whole() {
        let cfg = web(&[("198.18.1.11", 100)], 251);
        let (_, state) = Reconciler::new(300).plan(&cfg).unwrap();
        let err = state.plan(&web(&[("198.18.1.11", 100)], 257)).unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::RingFull {
                    wanted: 257,
                    free: 49,
                    capacity: 300
                }
            ),
            "{err}"
        );
        // The state is unchanged: the same config still plans to nothing.
        assert_eq!(state.plan(&cfg).unwrap().0, vec![]);
    }

    #[test]
    fn removing_a_vip_stops_matching_first_and_frees_everything() {
        let cfg = web(&[("198.18.1.11", 100)], 251);
        let (_, state) = Reconciler::new(RING).plan(&cfg).unwrap();
        let empty = config("[agent]\ninterfaces = [\"eth0\"]\n");
        let (writes, next) = state.plan(&empty).unwrap();
        assert!(
            matches!(writes.first(), Some(MapWrite::RemoveVip { .. })),
            "{writes:?}"
        );
        assert!(
            matches!(writes.last(), Some(MapWrite::RemoveVipAddress { .. })),
            "{writes:?}"
        );
        assert_eq!(next.vips().count(), 0);
        // Ids are reused late: a new VIP gets a fresh id, not the one just freed.
        let (_, again) = next.plan(&cfg).unwrap();
        assert_ne!(
            again.vips().next().unwrap().meta.id,
            state.vips().next().unwrap().meta.id
        );
    }

    #[test]
    fn hash_mode_change_rewrites_only_the_vip_entry() {
        let cfg = web(&[("198.18.1.11", 100)], 251);
        let (_, state) = Reconciler::new(RING).plan(&cfg).unwrap();
        let text = "[agent]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"web\"\naddress = \"198.18.0.10\"\n\
                    port = 80\nhash = \"source-ip\"\ntable_size = 251\n[[vip.backend]]\naddress = \"198.18.1.11\"\n";
        let (writes, _) = state.plan(&config(text)).unwrap();
        assert!(
            matches!(writes.as_slice(), [MapWrite::SetVip { meta, .. }] if meta.flags == VIP_HASH_SOURCE_ONLY),
            "{writes:?}"
        );
    }

    #[test]
    fn ring_allocator_merges_free_neighbours() {
        let mut ring = RingAllocator::new(30);
        let a = ring.allocate(10).unwrap();
        let b = ring.allocate(10).unwrap();
        let c = ring.allocate(10).unwrap();
        ring.free(a, 10);
        ring.free(c, 10);
        ring.free(b, 10);
        assert_eq!(ring.free, BTreeMap::from([(0, 30)]));
    }

    /// The state a previous agent left in the maps, as the dataplane reads it back.
    fn programmed(state: &Reconciler) -> ProgrammedState {
        ProgrammedState {
            timeouts: FlowTimeouts::DEFAULT,
            firewall: Default::default(),
            vips: state
                .vips()
                .map(|vip| crate::dataplane::ProgrammedVip {
                    key: vip.key,
                    meta: vip.meta,
                    table: vip.table.clone(),
                })
                .collect(),
            backends: state
                .vips()
                .flat_map(|vip| vip.backends.values().map(|b| (b.id, b.entry)))
                .collect(),
        }
    }

    #[test]
    fn adopting_the_same_configuration_writes_nothing() {
        let cfg = web(&[("198.18.1.11", 100), ("198.18.1.12", 100)], 251);
        let (_, before) = Reconciler::new(RING).plan(&cfg).unwrap();
        let adopted = Reconciler::adopt(&programmed(&before), RING, &cfg).unwrap();
        assert_eq!(adopted.plan(&cfg).unwrap().0, vec![]);
        assert_eq!(adopted.vips().next().unwrap().name, "web");
    }

    #[test]
    fn an_adopted_state_plans_changes_like_a_live_one() {
        let cfg = web(&[("198.18.1.11", 100), ("198.18.1.12", 100)], 251);
        let changed = web(&[("198.18.1.11", 100), ("198.18.1.13", 100)], 251);
        let (_, before) = Reconciler::new(RING).plan(&cfg).unwrap();
        let adopted = Reconciler::adopt(&programmed(&before), RING, &cfg).unwrap();
        let (from_adopted, _) = adopted.plan(&changed).unwrap();
        let (from_live, _) = before.plan(&changed).unwrap();
        assert_eq!(from_adopted, from_live);
    }

    #[test]
    fn adopting_overlapping_tables_is_refused() {
        let cfg = web(&[("198.18.1.11", 100)], 251);
        let (_, before) = Reconciler::new(RING).plan(&cfg).unwrap();
        let mut maps = programmed(&before);
        let mut twin = maps.vips[0].clone();
        twin.key.port = 81u16.to_be();
        twin.meta.id += 1;
        maps.vips.push(twin);
        assert!(matches!(
            Reconciler::adopt(&maps, RING, &cfg),
            Err(PlanError::AdoptedRingCorrupt { .. })
        ));
    }

    fn with_state(state: &str) -> Config {
        let text = format!(
            "[agent]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"web\"\naddress = \"198.18.0.10\"\n\
             port = 80\ntable_size = 251\n[[vip.backend]]\naddress = \"198.18.1.11\"\n\
             [[vip.backend]]\naddress = \"198.18.1.12\"\nstate = \"{state}\"\n"
        );
        config(&text)
    }

    fn slots_of(state: &Reconciler, id: u32) -> usize {
        state
            .vips()
            .next()
            .unwrap()
            .table
            .iter()
            .filter(|slot| **slot == id)
            .count()
    }

    #[test]
    fn drain_takes_a_backend_out_of_the_table_but_keeps_its_flows() {
        let (_, ready) = Reconciler::new(RING).plan(&with_state("ready")).unwrap();
        let id = ready.vips().next().unwrap().backends[&"198.18.1.12".parse().unwrap()].id;
        let (writes, drained) = ready.plan(&with_state("drain")).unwrap();
        assert_eq!(slots_of(&drained, id), 0);
        assert!(
            matches!(writes.as_slice(), [MapWrite::SetBackend { id: i, backend }, MapWrite::PatchRing { .. }] if *i == id && backend.flags == BACKEND_ACCEPTS_FLOWS),
            "the backend keeps its flows but takes no new ones, then leaves the table: {writes:?}"
        );
    }

    #[test]
    fn maint_clears_the_backend_after_the_table_and_ready_sets_it_before() {
        let (_, ready) = Reconciler::new(RING).plan(&with_state("ready")).unwrap();
        let id = ready.vips().next().unwrap().backends[&"198.18.1.12".parse().unwrap()].id;
        let (writes, maint) = ready.plan(&with_state("maint")).unwrap();
        assert!(
            matches!(writes.as_slice(), [MapWrite::PatchRing { .. }, MapWrite::SetBackend { id: i, backend }] if *i == id && backend.flags == 0),
            "{writes:?}"
        );
        assert_eq!(slots_of(&maint, id), 0);

        let (writes, _) = maint.plan(&with_state("ready")).unwrap();
        assert!(
            matches!(writes.as_slice(), [MapWrite::SetBackend { id: i, backend }, MapWrite::PatchRing { .. }] if *i == id && backend.flags == BACKEND_ACCEPTS_FLOWS | BACKEND_TAKES_NEW_FLOWS),
            "{writes:?}"
        );
    }

    #[test]
    fn destination_filters_hold_a_vip_before_it_matches_and_until_it_is_gone() {
        let cfg = web(&[("198.18.1.11", 100)], 251);
        let (writes, state) = Reconciler::new(RING).plan(&cfg).unwrap();
        let addr = state.vips().next().unwrap().key.addr;
        let position = |writes: &[MapWrite], pred: &dyn Fn(&MapWrite) -> bool| {
            writes.iter().position(pred).unwrap()
        };
        let covers = |w: &MapWrite, covered: bool| {
            matches!(w, MapWrite::SetDestinations { slot: DESTINATION_VIPS, filter }
                if filter.may_contain(&addr) == covered)
        };
        let added = position(&writes, &|w| covers(w, true));
        let vip = position(&writes, &|w| matches!(w, MapWrite::SetVip { .. }));
        assert!(added < vip, "{writes:?}");

        let (writes, _) = state
            .plan(&config("[agent]\ninterfaces = [\"eth0\"]\n"))
            .unwrap();
        let removed = position(&writes, &|w| matches!(w, MapWrite::RemoveVip { .. }));
        let forgotten = position(&writes, &|w| covers(w, false));
        assert!(removed < forgotten, "{writes:?}");
    }
}
