//! The XDP program and its maps: loading, attaching, applying [`MapWrite`]s and reading
//! counters. The only module that talks to the kernel's BPF side.

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use lb_common::{
    Backend, Counter, Flow, FlowKey, NextHop, PROGRAM_NAME, TrafficCounters, VipAddressKey, VipKey,
    VipMeta, map_names,
};
use tracing::warn;

use crate::{config::XdpMode, plan::MapWrite};

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
    #[error("map TX_PORTS: {0}")]
    TxPorts(#[from] aya::maps::xdp::XdpMapError),
    #[error("attaching XDP to {interface}: {source}")]
    Attach {
        interface: String,
        source: ProgramError,
    },
    #[error("interface {0} does not exist")]
    UnknownInterface(String),
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
}

/// Sizes chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub conntrack_entries: u32,
    pub maglev_ring_entries: u32,
}

/// How the program ended up attached to an interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    /// "native" or "generic".
    pub mode: &'static str,
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
    global_stats: PerCpuArray<MapData, u64>,
    vip_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    next_hops: PerCpuArray<MapData, NextHop>,
    links: Vec<(Attachment, XdpLinkId)>,
    cpus: usize,
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// Takes a map out of the object as its typed handle.
fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(map_err(name))
}

impl Dataplane {
    /// Loads the program into the kernel (verifier included) without attaching it.
    pub fn load(options: LoadOptions) -> Result<Self, DataplaneError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::CONNTRACK, options.conntrack_entries)
            .map_max_entries(map_names::MAGLEV_RING, options.maglev_ring_entries)
            .load(XDP_OBJECT)?;
        program_mut(&mut ebpf)?.load()?;
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| DataplaneError::Cpus(err))?;
        Ok(Dataplane {
            vips: take(&mut ebpf, map_names::VIPS)?,
            vip_addresses: take(&mut ebpf, map_names::VIP_ADDRESSES)?,
            ring: take(&mut ebpf, map_names::MAGLEV_RING)?,
            backends: take(&mut ebpf, map_names::BACKENDS)?,
            conntrack: take(&mut ebpf, map_names::CONNTRACK)?,
            tx_ports: take(&mut ebpf, map_names::TX_PORTS)?,
            global_stats: take(&mut ebpf, map_names::GLOBAL_STATS)?,
            vip_stats: take(&mut ebpf, map_names::VIP_STATS)?,
            backend_stats: take(&mut ebpf, map_names::BACKEND_STATS)?,
            next_hops: take(&mut ebpf, map_names::NEXT_HOPS)?,
            links: Vec::new(),
            cpus,
            ebpf,
        })
    }

    /// The loaded program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        program_mut(&mut self.ebpf)
    }

    /// Attaches to `interface` and lets the program redirect frames out of it.
    /// `Auto` tries native (driver) mode and falls back to generic mode with a warning.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<Attachment, DataplaneError> {
        let ifindex = ifindex(interface)?;
        let attach = |program: &mut Xdp, mode| {
            program
                .attach_to_if_index(ifindex, mode)
                .map_err(|source| DataplaneError::Attach {
                    interface: interface.to_owned(),
                    source,
                })
        };
        let program = self.program()?;
        let (link, mode) = match mode {
            XdpMode::Native => (attach(program, AyaXdpMode::Driver)?, "native"),
            XdpMode::Generic => (attach(program, AyaXdpMode::Skb)?, "generic"),
            XdpMode::Auto => match attach(program, AyaXdpMode::Driver) {
                Ok(link) => (link, "native"),
                Err(err) => {
                    warn!(%interface, error = %err, "native XDP unavailable, using generic mode (slower)");
                    (attach(program, AyaXdpMode::Skb)?, "generic")
                }
            },
        };
        self.add_tx_port(ifindex)?;
        let attachment = Attachment {
            interface: interface.to_owned(),
            ifindex,
            mode,
        };
        self.links.push((attachment.clone(), link));
        Ok(attachment)
    }

    /// Lets the program redirect frames out of `ifindex` (done by [`Self::attach`]).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        Ok(self.tx_ports.insert(ifindex, ifindex, None, 0)?)
    }

    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.links.iter().map(|(attachment, _)| attachment)
    }

    /// Detaches from every interface (also done when the `Dataplane` is dropped).
    pub fn detach_all(&mut self) -> Result<(), DataplaneError> {
        let links = std::mem::take(&mut self.links);
        let program = self.program()?;
        for (_, link) in links {
            program.detach(link)?;
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
        }
    }

    fn zeroed_per_cpu<T: aya::Pod + Default>(&self) -> Result<PerCpuValues<T>, DataplaneError> {
        PerCpuValues::try_from(vec![T::default(); self.cpus])
            .map_err(|err| DataplaneError::Cpus(std::io::Error::other(err)))
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

    /// Live entries of the connection table.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, DataplaneError> {
        self.conntrack
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::CONNTRACK))
    }

    /// One backend entry as the program sees it.
    pub fn backend(&self, id: u32) -> Result<Backend, DataplaneError> {
        self.backends
            .get(&id, 0)
            .map_err(map_err(map_names::BACKENDS))
    }
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

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let program = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(DataplaneError::Missing {
            kind: "program",
            name: PROGRAM_NAME,
        })?;
    program.try_into().map_err(DataplaneError::Program)
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
