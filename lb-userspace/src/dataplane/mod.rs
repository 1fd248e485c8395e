//! The XDP program and its maps: loading, attaching, applying [`MapWrite`]s and reading
//! counters. The only module that talks to the kernel's BPF side; its submodules are pure:
//! what to write (`plan`, with `maglev`), which pinned maps to expect (`pins`, on the
//! bpffs `bpffs` mounts if needed) and when a flow has ended (`flows`).

pub mod bpffs;
pub mod flows;
pub mod maglev;
pub mod pins;
pub mod plan;

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, ProgramArray,
    },
    programs::{
        ProgramError, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{
    Backend, Counter, DestinationFilter, Flow, FlowKey, FlowTimeouts, NAT_PROGRAM_NAME, NatReply,
    NextHop, OwnMacs, PROGRAM_NAME, TrafficCounters, VipAddressKey, VipKey, VipMeta, mac_word,
    map_names,
};
use tracing::warn;

use crate::{
    config::XdpMode,
    dataplane::{
        flows::{Sweep, sweep_decision},
        pins::{MapSpec, PinError, Pins, map_specs, per_cpu_lru_capacity},
        plan::{MapWrite, ProgrammedState, ProgrammedVip},
    },
    firewall::maps::FirewallMaps,
};

/// The XDP object built by `build.rs` from `lb-ebpf`.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir-xdp"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("the XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("the XDP link pinned at {path}: {source}")]
    Link { path: PathBuf, source: LinkError },
    #[error("pinning the XDP link at {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("unpinning {path}: {source}")]
    Unpin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("map TX_PORTS: {0}")]
    TxPorts(#[from] aya::maps::xdp::XdpMapError),
    #[error("attaching XDP to {interface}: {source}")]
    Attach {
        interface: String,
        source: ProgramError,
    },
    #[error("interface {0} does not exist")]
    UnknownInterface(String),
    #[error(
        "the pinned dataplane already knows {} MAC addresses, the most it can hold: \
         restart the agent once with --detach-on-exit to start afresh",
        lb_common::MAX_INTERFACES
    )]
    TooManyMacs,
    #[error("reading the MAC address of {interface}: {source}")]
    MacAddress {
        interface: String,
        source: std::io::Error,
    },
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
}

/// Sizes chosen at load time, and where the state is pinned.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub conntrack_entries: u32,
    pub maglev_ring_entries: u32,
    /// Capacity of each NAT table (`NAT_FLOWS`, `NAT_REVERSE`).
    pub nat_entries: u32,
    /// `None`: nothing is pinned and everything goes away with the `Dataplane` (tests).
    pub pins: Option<Pins>,
}

/// How the program ended up attached to an interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    /// "native" or "generic", or "adopted" for a link a previous agent attached.
    pub mode: &'static str,
}

/// An attachment and what keeps it alive: a pin, which outlives the agent, or (pinning
/// off) the link itself, which detaches when dropped.
struct AttachedLink {
    attachment: Attachment,
    pin: Option<PathBuf>,
    _unpinned: Option<XdpLink>,
}

/// The loaded program and typed handles on its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    vips: HashMap<MapData, VipKey, VipMeta>,
    vip_addresses: HashMap<MapData, VipAddressKey, u32>,
    ring: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    conntrack: HashMap<MapData, FlowKey, Flow>,
    tx_ports: DevMapHash<MapData>,
    own_macs: Array<MapData, OwnMacs>,
    destinations: Array<MapData, DestinationFilter>,
    global_stats: PerCpuArray<MapData, u64>,
    vip_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    next_hops: PerCpuArray<MapData, NextHop>,
    nat_flows: HashMap<MapData, FlowKey, Flow>,
    nat_reverse: HashMap<MapData, FlowKey, NatReply>,
    nat_config: Array<MapData, FlowTimeouts>,
    /// Holds `weir_nat` for `weir_xdp`'s tail call. Kept open: the kernel empties a
    /// program array when its last user reference (an fd or a pin) goes.
    _nat_program: ProgramArray<MapData>,
    firewall: FirewallMaps,
    links: Vec<AttachedLink>,
    pins: Option<Pins>,
    /// The maps were pinned by a previous agent and adopted, not created.
    adopted: bool,
    cpus: usize,
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// Takes a map out of the object as its typed handle.
pub(crate) fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(map_err(name))
}

impl Dataplane {
    /// Loads the program into the kernel (verifier included) without attaching it. With
    /// pins, maps a previous agent pinned are adopted (after checking their layout) and
    /// missing ones are created and pinned; a load that fails after creating pins
    /// removes them (an adopted dataplane is left as it was).
    pub fn load(options: LoadOptions) -> Result<Self, DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| DataplaneError::Cpus(err))?;
        // Asked for as the kernel makes it, so that the pinned map compares equal.
        let conntrack_entries = per_cpu_lru_capacity(options.conntrack_entries, cpus as u32);
        let specs = map_specs(
            conntrack_entries,
            options.maglev_ring_entries,
            options.nat_entries,
        );
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map_names::CONNTRACK, conntrack_entries)
            .map_max_entries(map_names::MAGLEV_RING, options.maglev_ring_entries)
            .map_max_entries(map_names::NAT_FLOWS, options.nat_entries)
            .map_max_entries(map_names::NAT_REVERSE, options.nat_entries);
        let mut adopted = false;
        if let Some(pins) = &options.pins {
            pins.create_dirs()?;
            pins.check(&specs)?;
            adopted = pins.has_maps();
            for spec in &specs {
                loader.map_pin_path(spec.name, pins.map(spec.name));
            }
        }
        let loaded = Self::load_pinned(loader, &specs, options.pins.clone(), adopted, cpus);
        if let Err(err) = &loaded
            && !adopted
            && let Some(pins) = &options.pins
            && let Err(cleanup) = pins.remove()
        {
            warn!(error = %err, cleanup = %cleanup, "a failed load left pins behind");
        }
        loaded
    }

    /// The rest of [`Self::load`], from the object's maps on.
    fn load_pinned(
        mut loader: EbpfLoader<'_>,
        specs: &[MapSpec],
        pins: Option<Pins>,
        adopted: bool,
        cpus: usize,
    ) -> Result<Self, DataplaneError> {
        let mut ebpf = loader.load(XDP_OBJECT)?;
        load_verified(program_mut(&mut ebpf)?)?;
        // The NAT program goes into the tail-call slot before anything is attached (in
        // an adopted dataplane, the old program starts calling the new one: same layout).
        let nat = xdp_program_mut(&mut ebpf, NAT_PROGRAM_NAME)?;
        load_verified(nat)?;
        let nat_fd = nat
            .fd()?
            .try_clone()
            .map_err(|err| DataplaneError::Program(ProgramError::IOError(err)))?;
        let mut nat_program: ProgramArray<MapData> = take(&mut ebpf, map_names::NAT_PROGRAM)?;
        nat_program
            .set(0, &nat_fd, 0)
            .map_err(map_err(map_names::NAT_PROGRAM))?;
        if let Some(pins) = &pins {
            // What the program declares must be what this agent expects (and adopts).
            pins.check(specs)?;
        }
        Ok(Dataplane {
            vips: take(&mut ebpf, map_names::VIPS)?,
            vip_addresses: take(&mut ebpf, map_names::VIP_ADDRESSES)?,
            ring: take(&mut ebpf, map_names::MAGLEV_RING)?,
            backends: take(&mut ebpf, map_names::BACKENDS)?,
            conntrack: take(&mut ebpf, map_names::CONNTRACK)?,
            tx_ports: take(&mut ebpf, map_names::TX_PORTS)?,
            own_macs: take(&mut ebpf, map_names::OWN_MACS)?,
            destinations: take(&mut ebpf, map_names::DESTINATIONS)?,
            global_stats: take(&mut ebpf, map_names::GLOBAL_STATS)?,
            vip_stats: take(&mut ebpf, map_names::VIP_STATS)?,
            backend_stats: take(&mut ebpf, map_names::BACKEND_STATS)?,
            next_hops: take(&mut ebpf, map_names::NEXT_HOPS)?,
            nat_flows: take(&mut ebpf, map_names::NAT_FLOWS)?,
            nat_reverse: take(&mut ebpf, map_names::NAT_REVERSE)?,
            nat_config: take(&mut ebpf, map_names::NAT_CONFIG)?,
            _nat_program: nat_program,
            firewall: FirewallMaps::take(&mut ebpf, cpus)?,
            links: Vec::new(),
            pins,
            adopted,
            cpus,
            ebpf,
        })
    }

    /// Whether the maps come from a previous agent (see [`Self::programmed_state`]).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The kernel's id of the loaded program.
    pub fn program_id(&self) -> Option<u32> {
        let program = self.ebpf.program(PROGRAM_NAME)?;
        program.info().ok().map(|info| info.id())
    }

    /// The loaded program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        program_mut(&mut self.ebpf)
    }

    /// Attaches to `interface` and lets the program redirect frames out of it. A link a
    /// previous agent pinned for the interface gets this program swapped in atomically
    /// (not a packet sees no program); otherwise a new link is created, and pinned.
    /// `Auto` tries native (driver) mode and falls back to generic mode with a warning.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<Attachment, DataplaneError> {
        let ifindex = self.add_interface(interface)?;
        let attach_error = |source| DataplaneError::Attach {
            interface: interface.to_owned(),
            source,
        };
        let pin = self.pins.as_ref().map(|pins| pins.link(interface));
        let program = program_mut(&mut self.ebpf)?;
        let (link_id, mode) = match pin.as_ref().filter(|path| path.exists()) {
            Some(path) => {
                let pinned = PinnedLink::from_pin(path).map_err(|source| DataplaneError::Link {
                    path: path.clone(),
                    source,
                })?;
                let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|source| {
                    DataplaneError::Link {
                        path: path.clone(),
                        source,
                    }
                })?;
                (
                    program.attach_to_link(link).map_err(attach_error)?,
                    "adopted",
                )
            }
            None => attach_new(program, ifindex, mode, interface).map_err(attach_error)?,
        };
        let link = program.take_link(link_id)?;
        let unpinned = match &pin {
            Some(path) if path.exists() => None,
            Some(path) => {
                let link = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
                    path: path.clone(),
                    source,
                })?;
                link.pin(path).map_err(|source| DataplaneError::Pin {
                    path: path.clone(),
                    source,
                })?;
                None
            }
            None => Some(link),
        };
        let attachment = Attachment {
            interface: interface.to_owned(),
            ifindex,
            mode,
        };
        self.links.push(AttachedLink {
            attachment: attachment.clone(),
            pin,
            _unpinned: unpinned,
        });
        Ok(attachment)
    }

    /// Prepares the maps for an interface the program runs on (done by [`Self::attach`],
    /// before the program sees a frame): it may redirect frames out of it, and it
    /// load-balances the frames sent to its MAC address, read now (an adopted dataplane
    /// gets it afresh). Returns its ifindex.
    pub fn add_interface(&mut self, interface: &str) -> Result<u32, DataplaneError> {
        let ifindex = ifindex(interface)?;
        self.add_tx_port(ifindex)?;
        let word = mac_word(mac_address(interface)?);
        let mut own = self
            .own_macs
            .get(&0, 0)
            .map_err(map_err(map_names::OWN_MACS))?;
        if !own.words.contains(&word) {
            // Appended, never moved: the program may be reading the list.
            let free = own
                .words
                .iter()
                .position(|slot| *slot == 0)
                .ok_or(DataplaneError::TooManyMacs)?;
            own.words[free] = word;
            self.own_macs
                .set(0, own, 0)
                .map_err(map_err(map_names::OWN_MACS))?;
        }
        Ok(ifindex)
    }

    /// Lets the program redirect frames out of `ifindex` (done by [`Self::attach`]).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        Ok(self.tx_ports.insert(ifindex, ifindex, None, 0)?)
    }

    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.links.iter().map(|attached| &attached.attachment)
    }

    /// Detaches from every interface and removes every pin, maps included: the next
    /// agent starts from scratch. (Without this, unpinned links detach when the
    /// `Dataplane` is dropped and pinned ones stay.)
    pub fn detach_all(&mut self) -> Result<(), DataplaneError> {
        for attached in std::mem::take(&mut self.links) {
            if let Some(path) = &attached.pin {
                std::fs::remove_file(path).map_err(|source| DataplaneError::Unpin {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        if let Some(pins) = &self.pins {
            pins.remove()?;
        }
        Ok(())
    }

    /// Applies writes in order; the planner chose an order that is safe for packets in
    /// flight, so a failure part-way leaves a consistent (if incomplete) state.
    pub fn apply(&mut self, writes: &[MapWrite]) -> Result<(), DataplaneError> {
        for write in writes {
            self.apply_one(write)?;
        }
        Ok(())
    }

    fn apply_one(&mut self, write: &MapWrite) -> Result<(), DataplaneError> {
        match write {
            MapWrite::SetBackend { id, backend } => self
                .backends
                .set(*id, backend, 0)
                .map_err(map_err(map_names::BACKENDS)),
            MapWrite::ResetBackend { id } => {
                let zero = self.zeroed_per_cpu()?;
                self.backend_stats
                    .set(*id, zero, 0)
                    .map_err(map_err(map_names::BACKEND_STATS))?;
                let zero = self.zeroed_per_cpu()?;
                self.next_hops
                    .set(*id, zero, 0)
                    .map_err(map_err(map_names::NEXT_HOPS))
            }
            MapWrite::SetRing { base, slots } => (*base..)
                .zip(slots)
                .try_for_each(|(index, id)| self.ring.set(index, id, 0))
                .map_err(map_err(map_names::MAGLEV_RING)),
            MapWrite::PatchRing { base, changes } => changes
                .iter()
                .try_for_each(|(offset, id)| self.ring.set(base + offset, id, 0))
                .map_err(map_err(map_names::MAGLEV_RING)),
            MapWrite::SetVip { key, meta } => self
                .vips
                .insert(key, meta, 0)
                .map_err(map_err(map_names::VIPS)),
            MapWrite::RemoveVip { key } => self.vips.remove(key).map_err(map_err(map_names::VIPS)),
            MapWrite::ClearVipStats { id } => {
                let zero = self.zeroed_per_cpu()?;
                self.vip_stats
                    .set(*id, zero, 0)
                    .map_err(map_err(map_names::VIP_STATS))
            }
            MapWrite::AddVipAddress { key } => self
                .vip_addresses
                .insert(key, 1, 0)
                .map_err(map_err(map_names::VIP_ADDRESSES)),
            MapWrite::RemoveVipAddress { key } => self
                .vip_addresses
                .remove(key)
                .map_err(map_err(map_names::VIP_ADDRESSES)),
            MapWrite::SetFlowTimeouts { timeouts } => self
                .nat_config
                .set(0, timeouts, 0)
                .map_err(map_err(map_names::NAT_CONFIG)),
            MapWrite::SetDestinations { slot, filter } => self
                .destinations
                .set(*slot, filter.as_ref(), 0)
                .map_err(map_err(map_names::DESTINATIONS)),
            MapWrite::Firewall(write) => self.firewall.apply(write),
        }
    }

    fn zeroed_per_cpu<T: aya::Pod + Default>(&self) -> Result<PerCpuValues<T>, DataplaneError> {
        on_every_cpu(T::default(), self.cpus)
    }

    /// Global counters summed over CPUs, in `Counter` order.
    pub fn global_counters(&self) -> Result<BTreeMap<Counter, u64>, DataplaneError> {
        Counter::ALL
            .iter()
            .map(|&counter| {
                let values = self
                    .global_stats
                    .get(&(counter as u32), 0)
                    .map_err(map_err(map_names::GLOBAL_STATS))?;
                Ok((counter, values.iter().sum()))
            })
            .collect()
    }

    pub fn vip_counters(&self, vip_id: u32) -> Result<TrafficCounters, DataplaneError> {
        sum_per_cpu(&self.vip_stats, vip_id, map_names::VIP_STATS)
    }

    pub fn backend_counters(&self, backend_id: u32) -> Result<TrafficCounters, DataplaneError> {
        sum_per_cpu(&self.backend_stats, backend_id, map_names::BACKEND_STATS)
    }

    /// What the maps hold, for an agent adopting them: the VIPs with their Maglev tables,
    /// and the backends in use.
    pub fn programmed_state(&self) -> Result<ProgrammedState, DataplaneError> {
        let mut vips = Vec::new();
        for entry in self.vips.iter() {
            let (key, meta) = entry.map_err(map_err(map_names::VIPS))?;
            let table = (meta.ring_base..meta.ring_base + meta.ring_size)
                .map(|slot| self.ring.get(&slot, 0))
                .collect::<Result<_, _>>()
                .map_err(map_err(map_names::MAGLEV_RING))?;
            vips.push(ProgrammedVip { key, meta, table });
        }
        let mut backends = Vec::new();
        for id in 0..self.backends.len() {
            let backend = self.backend(id)?;
            // Released ids are zeroed; a backend in use always has a family.
            if backend.family != 0 {
                backends.push((id, backend));
            }
        }
        let timeouts = self
            .nat_config
            .get(&0, 0)
            .map_err(map_err(map_names::NAT_CONFIG))?;
        let guarded = vips
            .iter()
            .filter(|vip| vip.meta.flags & lb_common::VIP_GUARDED != 0)
            .map(|vip| vip.meta.id);
        let firewall = self.firewall.programmed(guarded)?;
        Ok(ProgrammedState {
            vips,
            backends,
            timeouts,
            firewall,
        })
    }

    /// Entries of the connection table and the NAT flows.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, DataplaneError> {
        let mut flows: Vec<(FlowKey, Flow)> = self
            .conntrack
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::CONNTRACK))?;
        for entry in self.nat_flows.iter() {
            flows.push(entry.map_err(map_err(map_names::NAT_FLOWS))?);
        }
        Ok(flows)
    }

    /// Handles of their own on the flow tables, to read them without the agent's lock
    /// (the flow census).
    pub fn flow_tables(&self) -> Result<FlowTables, DataplaneError> {
        Ok(FlowTables {
            conntrack: reopen(&self.conntrack, map_names::CONNTRACK)?,
            nat_flows: reopen(&self.nat_flows, map_names::NAT_FLOWS)?,
            nat_reverse: reopen(&self.nat_reverse, map_names::NAT_REVERSE)?,
            nat_config: reopen(&self.nat_config, map_names::NAT_CONFIG)?,
        })
    }

    /// The NAT flow of a client flow key.
    pub fn nat_flow(&self, client: &FlowKey) -> Option<Flow> {
        self.nat_flows.get(client, 0).ok()
    }

    /// Overwrites a NAT flow (operators' and tests' tool: age a flow, mark it closing).
    pub fn set_nat_flow(&mut self, client: &FlowKey, flow: &Flow) -> Result<(), DataplaneError> {
        self.nat_flows
            .insert(client, flow, 0)
            .map_err(map_err(map_names::NAT_FLOWS))
    }

    /// Overwrites a NAT reply entry (tests' tool: the state another CPU leaves half-way
    /// through creating a flow, an orphan).
    pub fn set_nat_reply(
        &mut self,
        reply: &FlowKey,
        owner: &NatReply,
    ) -> Result<(), DataplaneError> {
        self.nat_reverse
            .insert(reply, owner, 0)
            .map_err(map_err(map_names::NAT_REVERSE))
    }

    /// The NAT reply entries: reply key → client flow key.
    pub fn nat_replies(&self) -> Result<Vec<(FlowKey, FlowKey)>, DataplaneError> {
        self.nat_reverse
            .iter()
            .map(|entry| entry.map(|(reply, owner)| (reply, owner.client)))
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::NAT_REVERSE))
    }

    /// The flow timeouts the program uses (`NAT_CONFIG`).
    pub fn flow_timeouts(&self) -> Result<FlowTimeouts, DataplaneError> {
        self.flow_tables()?.timeouts()
    }

    /// Sweeps the NAT tables once (see [`FlowTables::sweep_nat`]); the agent sweeps
    /// from a thread of its own instead.
    pub fn sweep_nat(
        &mut self,
        now_ns: u64,
        suspects: &mut HashSet<FlowKey>,
    ) -> Result<usize, DataplaneError> {
        self.flow_tables()?.sweep_nat(now_ns, suspects)
    }

    /// The firewall's maps: counters, and the flood guard's buckets.
    pub fn firewall(&self) -> &FirewallMaps {
        &self.firewall
    }

    pub fn firewall_mut(&mut self) -> &mut FirewallMaps {
        &mut self.firewall
    }

    /// One backend entry as the program sees it.
    pub fn backend(&self, id: u32) -> Result<Backend, DataplaneError> {
        self.backends
            .get(&id, 0)
            .map_err(map_err(map_names::BACKENDS))
    }
}

/// The connection table, the NAT tables and the flow timeouts, on descriptors of their
/// own: the census and the NAT sweep walk them from threads of their own.
pub struct FlowTables {
    pub conntrack: HashMap<MapData, FlowKey, Flow>,
    pub nat_flows: HashMap<MapData, FlowKey, Flow>,
    nat_reverse: HashMap<MapData, FlowKey, NatReply>,
    nat_config: Array<MapData, FlowTimeouts>,
}

impl FlowTables {
    /// The flow timeouts the program uses now.
    pub fn timeouts(&self) -> Result<FlowTimeouts, DataplaneError> {
        self.nat_config
            .get(&0, 0)
            .map_err(map_err(map_names::NAT_CONFIG))
    }

    /// Removes the NAT entries of flows that have ended at `now_ns`: reply entries first
    /// (see [`crate::dataplane::flows::sweep_decision`]), then the flows. A reply entry without a
    /// flow may be a flow being created this very instant (the program writes the reply
    /// entry first), so it goes only when `suspects`, carried from one sweep to the next,
    /// already held it. Returns how many flows were removed.
    pub fn sweep_nat(
        &mut self,
        now_ns: u64,
        suspects: &mut HashSet<FlowKey>,
    ) -> Result<usize, DataplaneError> {
        let timeouts = self.timeouts()?;
        let mut orphans = HashSet::new();
        let replies: Vec<(FlowKey, NatReply)> = self
            .nat_reverse
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::NAT_REVERSE))?;
        for (reply, NatReply { client, .. }) in replies {
            let flow = self.nat_flows.get(&client, 0).ok();
            let remove = match sweep_decision(&reply, flow.as_ref(), &timeouts, now_ns) {
                Sweep::Keep => false,
                Sweep::Orphan => {
                    orphans.insert(reply);
                    suspects.contains(&reply)
                }
                Sweep::Ended => true,
            };
            // Re-read right before deleting: the program may have handed the port to a
            // new flow since.
            if remove
                && self
                    .nat_reverse
                    .get(&reply, 0)
                    .is_ok_and(|owner| owner.client == client)
            {
                let _ = self.nat_reverse.remove(&reply);
            }
        }
        *suspects = orphans;
        let flows: Vec<(FlowKey, Flow)> = self
            .nat_flows
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::NAT_FLOWS))?;
        let mut removed = 0;
        for (client, flow) in flows {
            let still_expired = |flow: &Flow| timeouts.expired(flow, client.protocol, now_ns);
            if still_expired(&flow)
                && self
                    .nat_flows
                    .get(&client, 0)
                    .is_ok_and(|current| still_expired(&current))
            {
                let _ = self.nat_flows.remove(&client);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A new typed handle on the map behind `map` (a duplicated descriptor).
fn reopen<K: aya::Pod, V, M, T>(map: &M, name: &'static str) -> Result<T, DataplaneError>
where
    M: aya::maps::IterableMap<K, V>,
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    use std::os::fd::AsFd;
    let fd = map
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|err| DataplaneError::Map {
            map: name,
            source: MapError::IoError(err),
        })?;
    let data = MapData::from_fd(fd).map_err(map_err(name))?;
    T::try_from(aya::maps::Map::from_map_data(data).map_err(map_err(name))?).map_err(map_err(name))
}

/// `value` for each of `cpus` CPUs: a per-CPU map write.
pub(crate) fn on_every_cpu<T: aya::Pod>(
    value: T,
    cpus: usize,
) -> Result<PerCpuValues<T>, DataplaneError> {
    PerCpuValues::try_from(vec![value; cpus])
        .map_err(|err| DataplaneError::Cpus(std::io::Error::other(err)))
}

fn sum_per_cpu(
    map: &PerCpuArray<MapData, TrafficCounters>,
    index: u32,
    name: &'static str,
) -> Result<TrafficCounters, DataplaneError> {
    let values = map.get(&index, 0).map_err(map_err(name))?;
    let mut total = TrafficCounters::default();
    for value in values.iter() {
        total += *value;
    }
    Ok(total)
}

/// A new link on `ifindex`; `Auto` tries native mode, then generic mode with a warning.
fn attach_new(
    program: &mut Xdp,
    ifindex: u32,
    mode: XdpMode,
    interface: &str,
) -> Result<(XdpLinkId, &'static str), ProgramError> {
    match mode {
        XdpMode::Native => Ok((
            program.attach_to_if_index(ifindex, AyaXdpMode::Driver)?,
            "native",
        )),
        XdpMode::Generic => Ok((
            program.attach_to_if_index(ifindex, AyaXdpMode::Skb)?,
            "generic",
        )),
        XdpMode::Auto => match program.attach_to_if_index(ifindex, AyaXdpMode::Driver) {
            Ok(link) => Ok((link, "native")),
            Err(err) => {
                warn!(%interface, error = %err, "native XDP unavailable, using generic mode (slower)");
                Ok((
                    program.attach_to_if_index(ifindex, AyaXdpMode::Skb)?,
                    "generic",
                ))
            }
        },
    }
}

/// How often a load the verifier gave up on because of a signal is tried again (libbpf's
/// number).
const VERIFIER_ATTEMPTS: u32 = 5;

/// Loads `program` through the verifier. The verifier gives up with EAGAIN when a signal
/// reaches the loading thread while it works (a child exiting, a timer): as libbpf does,
/// such a load is tried again.
fn load_verified(program: &mut Xdp) -> Result<(), ProgramError> {
    let mut attempt = 1;
    loop {
        match program.load() {
            Err(err) if attempt < VERIFIER_ATTEMPTS && interrupted(&err) => attempt += 1,
            result => return result,
        }
    }
}

/// Whether a load failed only because the verifier was interrupted.
fn interrupted(err: &ProgramError) -> bool {
    matches!(err, ProgramError::LoadError { io_error, .. }
        if io_error.raw_os_error() == Some(libc::EAGAIN))
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    xdp_program_mut(ebpf, PROGRAM_NAME)
}

fn xdp_program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, DataplaneError> {
    let program = ebpf.program_mut(name).ok_or(DataplaneError::Missing {
        kind: "program",
        name,
    })?;
    program.try_into().map_err(DataplaneError::Program)
}

/// The interface's Ethernet address, in the current network namespace
/// (`SIOCGIFHWADDR`: no dependence on which sysfs is mounted).
pub fn mac_address(interface: &str) -> Result<[u8; 6], DataplaneError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let error = |source| DataplaneError::MacAddress {
        interface: interface.to_owned(),
        source,
    };
    // SAFETY: an all-zero `ifreq` is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return Err(DataplaneError::UnknownInterface(interface.to_owned()));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(error(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFHWADDR reads the NUL-terminated name and writes into `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) } < 0 {
        return Err(error(std::io::Error::last_os_error()));
    }
    // SAFETY: SIOCGIFHWADDR filled the `ifru_hwaddr` member.
    let address = unsafe { request.ifr_ifru.ifru_hwaddr };
    if address.sa_family != libc::ARPHRD_ETHER {
        return Err(error(std::io::Error::other(
            "not an Ethernet interface (XDP load balancing needs Ethernet frames)",
        )));
    }
    let mut mac = [0u8; 6];
    for (byte, data) in mac.iter_mut().zip(address.sa_data) {
        *byte = data as u8;
    }
    if mac == [0; 6] {
        return Err(error(std::io::Error::other("it has no MAC address")));
    }
    Ok(mac)
}

/// The interface's index in the current network namespace.
pub fn ifindex(interface: &str) -> Result<u32, DataplaneError> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| DataplaneError::UnknownInterface(interface.to_owned()))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(DataplaneError::UnknownInterface(interface.to_owned())),
        index => Ok(index),
    }
}
