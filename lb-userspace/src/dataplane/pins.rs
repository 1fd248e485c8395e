//! Pinned dataplane state: the maps and the XDP links live on a bpffs under
//! `<bpf_pin_dir>/v<MAP_LAYOUT_VERSION>/`, so they outlive the agent. Traffic keeps flowing
//! while no agent runs, and the next agent adopts the maps (connection table and counters
//! included) and swaps its program into the links atomically.
//!
//! An agent adopts only maps whose layout is exactly the one it was built for; anything
//! else is refused with the map and the difference named, never silently replaced.

use std::{
    fs, io,
    mem::size_of,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use lb_common::{
    Backend, CLIENT_HOP_SLOTS, ClientHop, DestinationFilter, Flow, FlowKey, FlowTimeouts,
    GLOBAL_STATS_SLOTS, MAP_LAYOUT_VERSION, MAX_BACKENDS, MAX_INTERFACES, MAX_VIPS,
    NAT_HANDOFF_SIZE, NatReply, NextHop, OwnMacs, TrafficCounters, VipAddressKey, VipKey, VipMeta,
    firewall::{
        BucketKey, FLOOD_BUCKET_ENTRIES, FirewallCounters, FwPolicy, FwPortKey, FwRule, FwSettings,
        FwSource, HostPortKey, MAX_FW_HOST_PORTS, MAX_FW_PORTS, MAX_FW_RULES, MAX_FW_SOURCES,
        TokenBucket,
    },
    map_names,
};
use tracing::{info, warn};

use crate::dataplane::bpffs::{self, Mounted};

/// What a map must look like: key and value sizes (`None`: set by the kernel's features)
/// and capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: Option<u32>,
    pub max_entries: u32,
}

const fn spec<K, V>(name: &'static str, max_entries: u32) -> MapSpec {
    MapSpec {
        name,
        key_size: size_of::<K>() as u32,
        value_size: Some(size_of::<V>() as u32),
        max_entries,
    }
}

/// The capacity the kernel gives a hash map with one LRU list per CPU
/// (`BPF_F_NO_COMMON_LRU`, as `CONNTRACK` is) asked for `requested` entries: the next
/// multiple of the possible CPUs, so that every list gets as many (the multiple below
/// when that would overflow), as `htab_map_alloc` computes it.
pub fn per_cpu_lru_capacity(requested: u32, possible_cpus: u32) -> u32 {
    let cpus = possible_cpus.max(1);
    requested
        .div_ceil(cpus)
        .checked_mul(cpus)
        .unwrap_or(requested / cpus * cpus)
}

/// Every map of the program, as this agent expects it (`conntrack_entries` as the
/// kernel makes it: [`per_cpu_lru_capacity`]).
pub fn map_specs(
    conntrack_entries: u32,
    maglev_ring_entries: u32,
    nat_entries: u32,
) -> [MapSpec; 27] {
    [
        spec::<VipKey, VipMeta>(map_names::VIPS, MAX_VIPS),
        spec::<VipAddressKey, u32>(map_names::VIP_ADDRESSES, MAX_VIPS),
        spec::<u32, u32>(map_names::MAGLEV_RING, maglev_ring_entries),
        spec::<u32, Backend>(map_names::BACKENDS, MAX_BACKENDS),
        spec::<FlowKey, Flow>(map_names::CONNTRACK, conntrack_entries),
        // The devmap's value grows with the kernel's features (a program id).
        MapSpec {
            value_size: None,
            ..spec::<u32, u32>(map_names::TX_PORTS, MAX_INTERFACES)
        },
        spec::<u32, u64>(map_names::GLOBAL_STATS, GLOBAL_STATS_SLOTS),
        spec::<u32, TrafficCounters>(map_names::VIP_STATS, MAX_VIPS),
        spec::<u32, TrafficCounters>(map_names::BACKEND_STATS, MAX_BACKENDS),
        spec::<u32, NextHop>(map_names::NEXT_HOPS, MAX_BACKENDS),
        spec::<FlowKey, Flow>(map_names::NAT_FLOWS, nat_entries),
        spec::<FlowKey, NatReply>(map_names::NAT_REVERSE, nat_entries),
        spec::<u32, FlowTimeouts>(map_names::NAT_CONFIG, 1),
        spec::<u32, u32>(map_names::NAT_PROGRAM, 1),
        spec::<u32, OwnMacs>(map_names::OWN_MACS, 1),
        spec::<u32, FwPolicy>(map_names::FW_VIPS, MAX_VIPS),
        // An LPM trie's key: the prefix length, then the data.
        spec::<(u32, FwSource), FwRule>(map_names::FW_SOURCES, MAX_FW_SOURCES),
        spec::<FwPortKey, u32>(map_names::FW_PORTS, MAX_FW_PORTS),
        spec::<HostPortKey, FwPolicy>(map_names::FW_HOST_PORTS, MAX_FW_HOST_PORTS),
        spec::<u32, FwSettings>(map_names::FW_SETTINGS, 1),
        spec::<u32, FirewallCounters>(map_names::FW_VIP_STATS, MAX_VIPS),
        spec::<u32, u64>(map_names::FW_RULE_STATS, MAX_FW_RULES),
        spec::<BucketKey, TokenBucket>(map_names::FLOOD_BUCKETS, FLOOD_BUCKET_ENTRIES),
        spec::<u32, TokenBucket>(map_names::FLOOD_CAP, 1),
        spec::<u32, DestinationFilter>(map_names::DESTINATIONS, 2),
        MapSpec {
            value_size: Some(NAT_HANDOFF_SIZE),
            ..spec::<u32, u32>(map_names::NAT_HANDOFF, 1)
        },
        spec::<u32, ClientHop>(map_names::CLIENT_HOPS, CLIENT_HOP_SLOTS),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "pinned map {path} does not match this agent: {what} is {found}, expected {expected}. \
         The running dataplane was left untouched. {hint}"
    )]
    Mismatch {
        path: PathBuf,
        what: &'static str,
        found: u32,
        expected: u32,
        hint: &'static str,
    },
    #[error("reading pinned map {path}: {source}")]
    Read {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not on a bpffs, so nothing can be pinned there{mount_failure}: mount one \
         (`mount -t bpf bpf /sys/fs/bpf`) or choose another [agent] bpf_pin_dir"
    )]
    NotBpffs {
        path: PathBuf,
        /// Why mounting one at /sys/fs/bpf failed (", and …"), or empty.
        mount_failure: String,
    },
}

/// The pin directory of one layout version.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(bpf_pin_dir: &Path) -> Self {
        Pins {
            root: bpf_pin_dir.join(format!("v{MAP_LAYOUT_VERSION}")),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn link(&self, interface: &str) -> PathBuf {
        self.root.join("links").join(interface)
    }

    /// Creates the directories, which must be on a bpffs; under /sys/fs/bpf, mounts one
    /// there first if there is none.
    pub fn create_dirs(&self) -> Result<(), PinError> {
        let not_bpffs = |mount_failure| PinError::NotBpffs {
            path: self.root.clone(),
            mount_failure,
        };
        let mounted = bpffs::mount_for(&self.root).map_err(|err| {
            not_bpffs(format!(
                ", and mounting one at {} failed: {err}",
                bpffs::MOUNT_POINT
            ))
        })?;
        let private_namespace = bpffs::in_private_mount_namespace() == Some(true);
        if mounted == Mounted::Yes {
            info!(
                mount_point = bpffs::MOUNT_POINT,
                "mounted a bpffs for the pins"
            );
        }
        if private_namespace {
            warn!(
                mounted_bpffs = mounted == Mounted::Yes,
                "the agent runs in a mount namespace of its own (as under `ip netns exec`): \
                 pins on a bpffs mounted only in it vanish with the process, which detaches \
                 the dataplane; run the agent in the host's mount namespace to keep it"
            );
        }
        for dir in [self.root.join("maps"), self.root.join("links")] {
            if let Err(source) = fs::create_dir_all(&dir) {
                // An unmounted /sys/fs/bpf refuses mkdir (ENOENT): say what is missing.
                if !dir
                    .ancestors()
                    .find(|path| path.exists())
                    .is_some_and(bpffs::on_bpffs)
                {
                    return Err(not_bpffs(String::new()));
                }
                return Err(PinError::Io { path: dir, source });
            }
        }
        if !bpffs::on_bpffs(&self.root) {
            return Err(not_bpffs(String::new()));
        }
        Ok(())
    }

    /// Whether a previous agent left maps to adopt.
    pub fn has_maps(&self) -> bool {
        self.map(map_names::VIPS).exists()
    }

    /// Checks every pinned map against `specs`; maps not pinned yet are fine.
    pub fn check(&self, specs: &[MapSpec]) -> Result<(), PinError> {
        for spec in specs {
            let path = self.map(spec.name);
            if !path.exists() {
                continue;
            }
            let info = MapInfo::from_pin(&path).map_err(|source| PinError::Read {
                path: path.clone(),
                source,
            })?;
            check_map(&path, &info, spec)?;
        }
        Ok(())
    }

    /// Removes every pin (maps and links) of this layout version: what is pinned only
    /// goes away with it, so the links detach.
    pub fn remove(&self) -> Result<(), PinError> {
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PinError::Io {
                path: self.root.clone(),
                source,
            }),
        }
    }
}

/// Compares one map's kernel description with what the agent expects.
pub fn check_map(path: &Path, info: &MapInfo, spec: &MapSpec) -> Result<(), PinError> {
    let mismatch = |what, found, expected, hint| PinError::Mismatch {
        path: path.to_owned(),
        what,
        found,
        expected,
        hint,
    };
    const NEW_LAYOUT: &str = "This agent was built for another map layout; stop traffic \
        and start it with --replace-dataplane to create fresh maps.";
    if info.key_size() != spec.key_size {
        return Err(mismatch(
            "the key size",
            info.key_size(),
            spec.key_size,
            NEW_LAYOUT,
        ));
    }
    if let Some(value_size) = spec.value_size
        && info.value_size() != value_size
    {
        return Err(mismatch(
            "the value size",
            info.value_size(),
            value_size,
            NEW_LAYOUT,
        ));
    }
    if info.max_entries() != spec.max_entries {
        let hint = if spec.name == map_names::CONNTRACK {
            "A running connection table cannot be resized: keep agent.conntrack_entries, \
             or start with --replace-dataplane (established flows are then rescheduled)."
        } else if spec.name == map_names::NAT_FLOWS || spec.name == map_names::NAT_REVERSE {
            "The running NAT tables cannot be resized: keep agent.nat_entries, \
             or start with --replace-dataplane (NAT connections are then cut)."
        } else {
            NEW_LAYOUT
        };
        return Err(mismatch(
            "the capacity",
            info.max_entries(),
            spec.max_entries,
            hint,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_per_cpu_lru_gets_a_multiple_of_the_possible_cpus() {
        assert_eq!(per_cpu_lru_capacity(1025, 2), 1026);
        assert_eq!(per_cpu_lru_capacity(1024, 2), 1024);
        assert_eq!(per_cpu_lru_capacity(1025, 1), 1025);
        // The default size on the core counts of many servers.
        for cpus in [6, 12, 24, 48, 96] {
            let capacity = per_cpu_lru_capacity(1 << 20, cpus);
            assert_eq!(capacity % cpus, 0);
            assert!(
                (1 << 20..(1 << 20) + cpus).contains(&capacity),
                "{cpus} CPUs"
            );
        }
        assert_eq!(per_cpu_lru_capacity(1 << 20, 6), 1_048_578);
        // Rounding up would overflow: down instead.
        assert_eq!(per_cpu_lru_capacity(u32::MAX - 1, 4), u32::MAX / 4 * 4);
        // No CPU count (cannot happen) is taken as one.
        assert_eq!(per_cpu_lru_capacity(1025, 0), 1025);
    }
}
