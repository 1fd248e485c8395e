//! Links inside namespaces: veth pairs, bridges, addresses, routes, neighbours, and the
//! veth knobs that matter for XDP (GRO / NAPI, threaded NAPI).
//!
//! Interfaces are always created directly inside test namespaces (never in the root
//! namespace), with names `weir-<pid hex>-<n><suffix>` that fit Linux's 15 characters.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    str::FromStr,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::{Netns, PREFIX};

/// Linux's limit on interface names (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

static LINK_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh interface name `weir-<pid hex>-<n><suffix>`, at most 15 characters, unique
/// within this process (the counter wraps after 100–10000 names, depending on the pid's
/// length, which only matters if that many live in one namespace at once).
pub fn unique_ifname(suffix: char) -> String {
    let base = format!("{PREFIX}{:x}-", std::process::id());
    let width = IFNAME_MAX.saturating_sub(base.len() + 1).clamp(1, 4);
    let n = LINK_COUNTER.fetch_add(1, Ordering::Relaxed) % 10u32.pow(width as u32);
    let name = format!("{base}{n:0width$}{suffix}");
    debug_assert!(name.len() <= IFNAME_MAX, "{name}");
    name
}

fn check_ifname(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= IFNAME_MAX
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "bad interface name {name:?} (1-15 characters of [A-Za-z0-9._-])"
    );
    Ok(())
}

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The test bed's fixed, locally administered addresses: `02:00:c6:12:00:<host>`
    /// (c6:12 is 198.18), where `host` is the last byte of the host's IPv4 address.
    pub const fn testbed(host: u8) -> MacAddr {
        MacAddr([0x02, 0x00, 0xc6, 0x12, 0x00, host])
    }

    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<MacAddr> {
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts
                .next()
                .with_context(|| format!("bad MAC address {s:?}"))?;
            *octet =
                u8::from_str_radix(part, 16).with_context(|| format!("bad MAC address {s:?}"))?;
        }
        ensure!(parts.next().is_none(), "bad MAC address {s:?}");
        Ok(MacAddr(octets))
    }
}

/// The two ends of a veth pair: `a` lives in the first namespace, `b` in the second.
/// Deleting either namespace deletes the pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethPair {
    pub a: String,
    pub b: String,
}

/// Creates a veth pair with fresh names, end `a` inside `ns_a` and end `b` inside `ns_b`
/// (which may be the same namespace). Both ends stay down.
pub fn veth_pair(ns_a: &Netns, ns_b: &Netns) -> Result<VethPair> {
    let a = unique_ifname('a');
    let b = a
        .strip_suffix('a')
        .map(|base| format!("{base}b"))
        .unwrap_or_else(|| unique_ifname('b'));
    veth_pair_named(ns_a, &a, ns_b, &b)?;
    Ok(VethPair { a, b })
}

/// Creates a veth pair `a` (inside `ns_a`) ↔ `b` (inside `ns_b`). Both ends stay down.
pub fn veth_pair_named(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) -> Result<()> {
    check_ifname(a)?;
    check_ifname(b)?;
    let mut args = vec!["link", "add", a, "type", "veth", "peer", "name", b];
    if ns_a.name() != ns_b.name() {
        args.extend(["netns", ns_b.name()]);
    }
    ns_a.ip(&args).with_context(|| {
        format!(
            "cannot create veth {a} ({}) <-> {b} ({})",
            ns_a.name(),
            ns_b.name()
        )
    })?;
    Ok(())
}

/// Counters of `/sys/class/net/DEV/statistics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

impl Netns {
    /// `ip link set DEV up`.
    pub fn link_up(&self, dev: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", dev, "up"]).map(drop)
    }

    /// `ip link set DEV down`.
    pub fn link_down(&self, dev: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", dev, "down"]).map(drop)
    }

    /// `ip link del DEV` (a veth takes its peer with it).
    pub fn link_del(&self, dev: &str) -> Result<()> {
        self.ip(&["link", "del", "dev", dev]).map(drop)
    }

    /// Sets the interface's Ethernet address.
    pub fn set_mac(&self, dev: &str, mac: MacAddr) -> Result<()> {
        self.ip(&["link", "set", "dev", dev, "address", &mac.to_string()])
            .map(drop)
    }

    /// The interface's Ethernet address.
    pub fn mac(&self, dev: &str) -> Result<MacAddr> {
        let out = self.ip(&["-o", "link", "show", "dev", dev])?;
        let mut words = out.split_whitespace();
        words
            .find(|w| *w == "link/ether")
            .and_then(|_| words.next())
            .with_context(|| format!("no Ethernet address on {dev} in {}: {out}", self.name()))?
            .parse()
    }

    /// The interface's index inside this namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        check_ifname(dev)?;
        let cname = std::ffi::CString::new(dev)?;
        // SAFETY: a valid NUL-terminated string.
        let index = self.enter(|| unsafe { libc::if_nametoindex(cname.as_ptr()) })?;
        if index == 0 {
            bail!("no interface {dev} in {}", self.name());
        }
        Ok(index)
    }

    /// Adds `addr/prefix` to the interface (IPv6 without duplicate address detection).
    pub fn add_addr(&self, dev: &str, addr: IpAddr, prefix: u8) -> Result<()> {
        let cidr = format!("{addr}/{prefix}");
        let mut args = vec!["addr", "add", &cidr, "dev", dev];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// Removes `addr/prefix` from the interface.
    pub fn del_addr(&self, dev: &str, addr: IpAddr, prefix: u8) -> Result<()> {
        self.ip(&["addr", "del", &format!("{addr}/{prefix}"), "dev", dev])
            .map(drop)
    }

    /// `ip route replace DST via GATEWAY` (`dst` is a CIDR such as `198.19.0.0/24`).
    pub fn add_route(&self, dst: &str, via: IpAddr) -> Result<()> {
        let family = if via.is_ipv6() { "-6" } else { "-4" };
        self.ip(&[family, "route", "replace", dst, "via", &via.to_string()])
            .map(drop)
    }

    /// A permanent neighbour entry (ARP / NDP resolved without asking), so lookups such
    /// as `bpf_fib_lookup` find the next hop's address deterministically.
    pub fn add_neigh(&self, dev: &str, addr: IpAddr, mac: MacAddr) -> Result<()> {
        self.ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &mac.to_string(),
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// Removes a neighbour entry.
    pub fn del_neigh(&self, dev: &str, addr: IpAddr) -> Result<()> {
        self.ip(&["neigh", "del", &addr.to_string(), "dev", dev])
            .map(drop)
    }

    /// Creates a bridge (no STP, no forwarding delay, no multicast snooping, so IPv6
    /// neighbour discovery is plainly flooded) and brings it up.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        check_ifname(name)?;
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        self.link_up(name)
    }

    /// Makes `dev` a port of `bridge`.
    pub fn set_master(&self, dev: &str, bridge: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", dev, "master", bridge])
            .map(drop)
    }

    /// Turns GRO on or off (`ethtool -K DEV gro on|off`). On a veth, GRO on gives the
    /// device NAPI, but on kernel 6.18 that is NOT enough to receive frames that XDP
    /// transmits or redirects into it: they are accepted (the sender counts
    /// `rx_queue_0_xdp_tx`) and never delivered, because the receiver's NAPI is only
    /// kicked when it has an XDP program. Use [`Netns::attach_xdp`] on the receiving end.
    pub fn set_gro(&self, dev: &str, on: bool) -> Result<()> {
        self.run(&["ethtool", "-K", dev, "gro", if on { "on" } else { "off" }])
            .map(drop)
    }

    /// Moves the device's NAPI polling to a kernel thread (`/sys/class/net/DEV/threaded`),
    /// which can then be pinned to a CPU. Needs NAPI (XDP or GRO on the veth) first.
    pub fn set_threaded_napi(&self, dev: &str, on: bool) -> Result<()> {
        check_ifname(dev)?;
        let script = format!("echo {} > /sys/class/net/{dev}/threaded", u8::from(on));
        self.run(&["sh", "-c", &script]).map(drop)
    }

    /// The device's `/sys/class/net/DEV/statistics` counters.
    pub fn link_stats(&self, dev: &str) -> Result<LinkStats> {
        check_ifname(dev)?;
        const FIELDS: [&str; 6] = [
            "rx_packets",
            "tx_packets",
            "rx_bytes",
            "tx_bytes",
            "rx_dropped",
            "tx_dropped",
        ];
        let mut argv = vec!["cat".to_owned()];
        argv.extend(
            FIELDS
                .iter()
                .map(|f| format!("/sys/class/net/{dev}/statistics/{f}")),
        );
        let out = self.run(&argv)?;
        let values: Vec<u64> = out
            .lines()
            .map(|l| l.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("bad statistics for {dev}: {out}"))?;
        ensure!(
            values.len() == FIELDS.len(),
            "bad statistics for {dev}: {out}"
        );
        Ok(LinkStats {
            rx_packets: values[0],
            tx_packets: values[1],
            rx_bytes: values[2],
            tx_bytes: values[3],
            rx_dropped: values[4],
            tx_dropped: values[5],
        })
    }

    /// Pings `dst` from inside the namespace (`count` echo requests, 2 s deadline each);
    /// fails unless every one is answered.
    pub fn ping(&self, dst: IpAddr, count: u32) -> Result<()> {
        let count = count.max(1).to_string();
        let deadline = (2 * count.parse::<u32>()?).to_string();
        self.run(&[
            "ping",
            "-n",
            "-q",
            "-c",
            &count,
            "-i",
            "0.2",
            "-w",
            &deadline,
            &dst.to_string(),
        ])
        .map(drop)
    }

    /// The driver's own counters (`ethtool -S DEV`), e.g. a veth's
    /// `rx_queue_0_xdp_packets`, `rx_queue_0_xdp_tx`, `rx_queue_0_xdp_drops`.
    pub fn ethtool_stats(&self, dev: &str) -> Result<BTreeMap<String, u64>> {
        let out = self.run(&["ethtool", "-S", dev])?;
        Ok(out
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(':')?;
                Some((key.trim().to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    }
}
