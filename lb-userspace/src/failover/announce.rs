//! Route announcement for active/active clusters: the agent keeps the addresses of the
//! VIPs that can serve on a dummy interface of its own (`[announce] interface`), and a
//! routing daemon (BIRD's `protocol direct` on that interface) announces them to the
//! routers, which spread flows over the LB nodes with ECMP.
//!
//! - The link holds EXACTLY the serving VIPs' addresses, as host routes (/32, /128). An
//!   address shared by several VIPs (other ports) stays while any of them serves.
//! - The announcer follows [`ServingVips`] and, every [`RECONCILE_INTERVAL`], the link
//!   itself: an address someone else added is removed, one someone removed is put back,
//!   a deleted or downed link is recreated or brought up.
//! - A graceful stop deletes the link, so the routing daemon withdraws every route. A
//!   killed agent leaves it (and the pinned dataplane forwarding): the node keeps being
//!   announced while its routing daemon runs; a lost node is withdrawn by the routers'
//!   BGP hold timer or BFD.
//! - Kernels without the dummy driver (`CONFIG_DUMMY`) get an `ifb` link instead, which
//!   holds addresses the same way; the link carries [`LINK_ALIAS`] so that the agent
//!   recognises it as its own.
//!
//! The desired set and the difference from the link are pure ([`wanted`],
//! [`changes`]); the link is driven through iproute2 with [`crate::host::ip`].

use std::{collections::BTreeSet, fmt, net::IpAddr, time::Duration};

use serde::Deserialize;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    api::model::AnnounceStatus,
    config::AnnounceConfig,
    failover::serving::ServingVips,
    host::{HostError, ip},
};

/// How often the link is checked even when no VIP changed.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// Marks the link as the agent's (`ip link show` prints it as its alias).
pub const LINK_ALIAS: &str = "weir: announced VIPs";

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error(
        "announce.interface {interface:?} exists and is a {kind} link, not a dummy link of the agent's: choose another name, or delete that link"
    )]
    NotOurs { interface: String, kind: String },
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("cannot read the output of `{command}`: {source}")]
    Output {
        command: String,
        source: serde_json::Error,
    },
}

/// An address as set on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkAddress {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl LinkAddress {
    /// `address` as a host route: /32 or /128.
    pub fn host(address: IpAddr) -> LinkAddress {
        let prefix_len = if address.is_ipv4() { 32 } else { 128 };
        LinkAddress {
            address,
            prefix_len,
        }
    }

    /// IPv6 link-local addresses belong to the kernel, not to the announcement.
    fn is_link_local(&self) -> bool {
        matches!(self.address, IpAddr::V6(v6) if v6.is_unicast_link_local())
    }
}

impl fmt::Display for LinkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// The addresses to announce: one host address per address of a serving VIP.
pub fn wanted(vips: &ServingVips) -> BTreeSet<LinkAddress> {
    vips.iter()
        .filter(|vip| vip.serving)
        .map(|vip| LinkAddress::host(vip.address))
        .collect()
}

/// What to add to and remove from a link holding `current` so that it holds `wanted`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressChanges {
    pub add: Vec<LinkAddress>,
    pub remove: Vec<LinkAddress>,
}

impl AddressChanges {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// The difference between the link's addresses and the wanted ones. A VIP address with
/// another prefix length is replaced (a /24 would announce a whole network); IPv6
/// link-local addresses are left alone.
pub fn changes(current: &BTreeSet<LinkAddress>, wanted: &BTreeSet<LinkAddress>) -> AddressChanges {
    AddressChanges {
        add: wanted.difference(current).copied().collect(),
        remove: current
            .difference(wanted)
            .filter(|address| !address.is_link_local())
            .copied()
            .collect(),
    }
}

/// Fails unless `interface` is free, or already a dummy link, or a link the agent made.
/// Called at start, so that a name clash stops the agent before it changes anything.
pub fn check_link(interface: &str) -> Result<(), AnnounceError> {
    AnnounceLink::new(interface).state().map(drop)
}

/// A running announcer: its task, and what it announces.
pub struct Announcer {
    pub task: JoinHandle<()>,
    pub status: watch::Receiver<AnnounceStatus>,
}

/// Starts the announcer: it follows `serving` until `stop` changes (or its sender goes),
/// then deletes the link.
pub fn spawn(
    config: &AnnounceConfig,
    serving: watch::Receiver<ServingVips>,
    stop: watch::Receiver<()>,
) -> Announcer {
    let (status_sender, status) = watch::channel(AnnounceStatus {
        interface: config.interface.clone(),
        addresses: Vec::new(),
    });
    let link = AnnounceLink::new(&config.interface);
    let task = tokio::spawn(run(link, serving, stop, status_sender));
    Announcer { task, status }
}

async fn run(
    link: AnnounceLink,
    mut serving: watch::Receiver<ServingVips>,
    mut stop: watch::Receiver<()>,
    status: watch::Sender<AnnounceStatus>,
) {
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the link held after the last reconciliation, to tell our changes from others'.
    let mut announced = BTreeSet::new();
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = serving.changed() => if changed.is_err() { break },
            _ = stop.changed() => break,
        }
        let wanted = wanted(&serving.borrow_and_update());
        let step = {
            let link = link.clone();
            let previous = announced.clone();
            tokio::task::spawn_blocking(move || link.reconcile(&previous, &wanted)).await
        };
        let reconciled = match step {
            Ok(reconciled) => reconciled,
            Err(err) => {
                warn!(error = %err, "the announcement task failed");
                continue;
            }
        };
        announced = reconciled.held;
        status.send_if_modified(|status| {
            let addresses: Vec<IpAddr> = announced.iter().map(|a| a.address).collect();
            let changed = status.addresses != addresses;
            status.addresses = addresses;
            changed
        });
        // Each distinct failure is logged once, not at every retry.
        let errors = (!reconciled.errors.is_empty()).then(|| {
            let messages: Vec<String> = reconciled.errors.iter().map(ToString::to_string).collect();
            messages.join("; ")
        });
        if errors != last_error {
            match &errors {
                Some(errors) => {
                    warn!(interface = %link.name, %errors, "cannot keep the announced addresses; retrying")
                }
                None => info!(interface = %link.name, "the announced addresses are right again"),
            }
            last_error = errors;
        }
    }
    let withdraw = {
        let link = link.clone();
        tokio::task::spawn_blocking(move || link.delete()).await
    };
    match withdraw {
        Ok(Ok(())) => {
            info!(interface = %link.name, addresses = announced.len(), "deleted the announce link: every VIP route is withdrawn")
        }
        Ok(Err(err)) => {
            warn!(interface = %link.name, error = %err, "cannot delete the announce link")
        }
        Err(err) => warn!(error = %err, "the announcement task failed"),
    }
}

/// What a reconciliation left on the link, and what failed.
struct Reconciled {
    held: BTreeSet<LinkAddress>,
    errors: Vec<AnnounceError>,
}

/// The announce link, driven through iproute2.
#[derive(Clone, Debug)]
struct AnnounceLink {
    name: String,
}

/// What `ip -j -d link show` says about a link.
#[derive(Debug, Deserialize)]
struct LinkInfo {
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    ifalias: Option<String>,
    #[serde(default)]
    linkinfo: Option<LinkKind>,
}

#[derive(Debug, Deserialize)]
struct LinkKind {
    info_kind: Option<String>,
}

/// What `ip -j addr show` says about a link's addresses.
#[derive(Debug, Deserialize)]
struct LinkAddresses {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    local: IpAddr,
    prefixlen: u8,
}

impl AnnounceLink {
    fn new(name: &str) -> AnnounceLink {
        AnnounceLink {
            name: name.to_owned(),
        }
    }

    /// The link, if it exists; an error if it exists and is not the agent's to use.
    fn state(&self) -> Result<Option<LinkInfo>, AnnounceError> {
        if crate::dataplane::ifindex(&self.name).is_err() {
            return Ok(None);
        }
        let links: Vec<LinkInfo> = json(&["-j", "-d", "link", "show", "dev", &self.name])?;
        let Some(link) = links.into_iter().next() else {
            return Ok(None);
        };
        let kind = link
            .linkinfo
            .as_ref()
            .and_then(|info| info.info_kind.clone())
            .unwrap_or_else(|| "physical".to_owned());
        if kind == "dummy" || link.ifalias.as_deref() == Some(LINK_ALIAS) {
            Ok(Some(link))
        } else {
            Err(AnnounceError::NotOurs {
                interface: self.name.clone(),
                kind,
            })
        }
    }

    /// Creates the link if it is missing and brings it up.
    fn ensure(&self) -> Result<(), AnnounceError> {
        let up = match self.state()? {
            Some(link) => link.flags.iter().any(|flag| flag == "UP"),
            None => {
                self.create()?;
                false
            }
        };
        if !up {
            ip(&["link", "set", "dev", &self.name, "up"])?;
        }
        Ok(())
    }

    fn create(&self) -> Result<(), AnnounceError> {
        let add = |kind| ip(&["link", "add", &self.name, "type", kind]);
        match add("dummy") {
            Ok(_) => info!(interface = %self.name, "created the dummy announce link"),
            Err(HostError::Failed { stderr, .. }) if stderr.contains("Unknown device type") => {
                add("ifb")?;
                warn!(interface = %self.name, "this kernel has no dummy driver (CONFIG_DUMMY): created an ifb link to hold the announced addresses");
            }
            Err(err) => return Err(err.into()),
        }
        // No IPv6 link-local address: the link only holds VIPs.
        ip(&["link", "set", "dev", &self.name, "addrgenmode", "none"])?;
        ip(&["link", "set", "dev", &self.name, "alias", LINK_ALIAS])?;
        Ok(())
    }

    fn addresses(&self) -> Result<BTreeSet<LinkAddress>, AnnounceError> {
        let links: Vec<LinkAddresses> = json(&["-j", "addr", "show", "dev", &self.name])?;
        Ok(links
            .iter()
            .flat_map(|link| &link.addr_info)
            .map(|info| LinkAddress {
                address: info.local,
                prefix_len: info.prefixlen,
            })
            .collect())
    }

    /// Brings the link towards holding `wanted`, logging each change once; `previous` is
    /// what it held after the last reconciliation. One address that cannot be added or
    /// removed does not hold the others back.
    fn reconcile(
        &self,
        previous: &BTreeSet<LinkAddress>,
        wanted: &BTreeSet<LinkAddress>,
    ) -> Reconciled {
        let current = match self.ensure().and_then(|()| self.addresses()) {
            Ok(current) => current,
            Err(err) => {
                return Reconciled {
                    held: previous.clone(),
                    errors: vec![err],
                };
            }
        };
        let changes = changes(&current, wanted);
        let mut held: BTreeSet<LinkAddress> =
            current.into_iter().filter(|a| !a.is_link_local()).collect();
        let mut errors = Vec::new();
        for address in &changes.remove {
            if let Err(err) = ip(&["addr", "del", &address.to_string(), "dev", &self.name]) {
                errors.push(err.into());
                continue;
            }
            held.remove(address);
            if previous.contains(address) {
                info!(%address, interface = %self.name, "withdrawn: no VIP on this address takes new flows");
            } else {
                warn!(%address, interface = %self.name, "removed an address the agent did not put there");
            }
        }
        for address in &changes.add {
            let address_text = address.to_string();
            let mut args = vec!["addr", "add", &address_text, "dev", &self.name];
            if address.address.is_ipv6() {
                // A VIP is usable at once; DAD on a link without neighbours is pointless.
                args.push("nodad");
            }
            if let Err(err) = ip(&args) {
                errors.push(err.into());
                continue;
            }
            held.insert(*address);
            if previous.contains(address) {
                warn!(%address, interface = %self.name, "someone removed an announced address; added it back");
            } else {
                info!(%address, interface = %self.name, "announced");
            }
        }
        Reconciled { held, errors }
    }

    /// Deletes the link (and with it every announced address), if it exists.
    fn delete(&self) -> Result<(), AnnounceError> {
        if self.state()?.is_some() {
            ip(&["link", "del", "dev", &self.name])?;
        }
        Ok(())
    }
}

fn json<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T, AnnounceError> {
    let output = ip(args)?;
    serde_json::from_str(&output).map_err(|source| AnnounceError::Output {
        command: format!("ip {}", args.join(" ")),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::serving::VipServing;

    fn vip(name: &str, address: &str, serving: bool) -> VipServing {
        VipServing {
            name: name.into(),
            address: address.parse().unwrap(),
            serving,
        }
    }

    fn addresses(list: &[&str]) -> BTreeSet<LinkAddress> {
        list.iter()
            .map(|text| {
                let (address, prefix_len) = text.split_once('/').unwrap();
                LinkAddress {
                    address: address.parse().unwrap(),
                    prefix_len: prefix_len.parse().unwrap(),
                }
            })
            .collect()
    }

    #[test]
    fn only_serving_vips_are_wanted_as_host_addresses() {
        let vips = vec![
            vip("web", "198.19.0.10", true),
            vip("dns", "2001:db8:0:ff::53", true),
            vip("down", "198.19.0.20", false),
        ];
        assert_eq!(
            wanted(&vips),
            addresses(&["198.19.0.10/32", "2001:db8:0:ff::53/128"])
        );
        assert!(wanted(&Vec::new()).is_empty());
    }

    #[test]
    fn a_shared_address_stays_while_any_of_its_vips_serves() {
        let vips = vec![
            vip("http", "198.19.0.10", false),
            vip("https", "198.19.0.10", true),
        ];
        assert_eq!(wanted(&vips), addresses(&["198.19.0.10/32"]));
        let vips = vec![
            vip("http", "198.19.0.10", false),
            vip("https", "198.19.0.10", false),
        ];
        assert!(wanted(&vips).is_empty());
    }

    #[test]
    fn changes_bring_the_link_to_exactly_the_wanted_addresses() {
        let current = addresses(&[
            "198.19.0.10/32",
            "198.19.0.20/32",
            "198.19.0.30/24",
            "fe80::1/64",
        ]);
        let wanted = addresses(&["198.19.0.10/32", "198.19.0.30/32", "2001:db8::1/128"]);
        assert_eq!(
            changes(&current, &wanted),
            AddressChanges {
                // A VIP with the wrong prefix length is replaced, not left announcing a /24.
                add: addresses(&["198.19.0.30/32", "2001:db8::1/128"])
                    .into_iter()
                    .collect(),
                remove: addresses(&["198.19.0.20/32", "198.19.0.30/24"])
                    .into_iter()
                    .collect(),
            }
        );
        assert!(changes(&wanted, &wanted).is_empty());
        // Link-local addresses are the kernel's.
        assert!(changes(&addresses(&["fe80::1/64"]), &BTreeSet::new()).is_empty());
    }
}
