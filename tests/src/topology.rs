//! The direct-server-return test network: one L2 segment (a bridge in a "switch"
//! namespace) joining a client, the load balancer and N backends, each in its own
//! namespace.
//!
//! ```text
//!                     switch namespace: bridge
//!        ┌──────────────┬──────────┴───┬──────────────┬─ …
//!     client            lb          backend1       backend2
//!  198.18.0.100     198.18.0.2     198.18.0.11    198.18.0.12
//!  2001:db8:0:1::100  …:1::2       …:1::11        …:1::12        VIPs on lo
//! ```
//!
//! * Segment 198.18.0.0/24 and 2001:db8:0:1::/64; MAC of each host
//!   `02:00:c6:12:00:<last IPv4 byte in hex>` ([`MacAddr::testbed`]).
//! * VIPs outside the segment: [`VIP_V4`] 198.19.0.10 and [`VIP_V6`] 2001:db8:0:ff::10.
//!   The client routes 198.19.0.0/24 and 2001:db8:0:ff::/64 via the LB's address, so it
//!   sends VIP traffic to the LB's MAC.
//! * Each backend holds the VIPs on its loopback with `arp_ignore=1` / `arp_announce=2`
//!   and answers the client directly (DSR); its test server (if started) listens on
//!   [`HTTP_PORT`] and [`UDP_PORT`] on all addresses and answers as `backend<N>`.
//! * Neighbour entries are static (permanent) everywhere they matter: the LB knows the
//!   client's and every backend's MAC, the client the LB's, each backend the client's and
//!   the LB's. Routing and `bpf_fib_lookup` in the LB namespace are deterministic.
//! * The LB's veth peer (its bridge port) runs an XDP_PASS program, which gives it NAPI,
//!   so frames the LB's XDP program sends back out (XDP_TX) are delivered rather than
//!   dropped. (GRO on the peer is not enough on kernel 6.18: the frames are accepted,
//!   `rx_queue_0_xdp_tx` counts them, but they are never delivered.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::{
    bins,
    link::{MacAddr, veth_pair},
    netns::{Child, Netns},
    server::{READY, ServerConfig},
    xdp::XdpLink,
};

pub const SEGMENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const SEGMENT_V4_PREFIX: u8 = 24;
pub const SEGMENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0);
pub const SEGMENT_V6_PREFIX: u8 = 64;

pub const LB_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x2);
/// The second load balancer of failover tests ([`DsrTopology::add_peer_lb`]).
pub const LB2_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const LB2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x3);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x100);

pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0xff, 0, 0, 0, 0x10);
/// The ranges the client routes via the LB; extra VIPs should come from them.
pub const VIP_NET_V4: &str = "198.19.0.0/24";
pub const VIP_NET_V6: &str = "2001:db8:0:ff::/64";

/// Ports the backends' test servers listen on.
pub const HTTP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 5300;

/// Backends are numbered 1..=MAX_BACKENDS (addresses .11 to .99).
pub const MAX_BACKENDS: u8 = 89;
pub const DEFAULT_BACKENDS: u8 = 3;

/// Backend `n`'s IPv4 address, 198.18.0.(10+n).
pub const fn backend_v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + n)
}

/// Backend `n`'s IPv6 address, 2001:db8:0:1::(10+n) written with the same digits as the
/// IPv4 one (backend 1 is ::11, i.e. 0x11).
pub const fn backend_v6(n: u8) -> Ipv6Addr {
    let d = 10 + n as u16;
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, (d / 10) * 16 + d % 10)
}

/// The name backend `n`'s test server answers with.
pub fn backend_name(n: u8) -> String {
    format!("backend{n}")
}

/// One host on the segment.
#[derive(Debug)]
pub struct Host {
    pub ns: Netns,
    /// Its interface on the segment, inside `ns`.
    pub ifname: String,
    /// The bridge port (the veth's other end) inside the switch namespace.
    pub switch_port: String,
    pub mac: MacAddr,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Host {
    /// The interface's index inside its namespace.
    pub fn ifindex(&self) -> Result<u32> {
        self.ns.ifindex(&self.ifname)
    }
}

/// A backend: its host and, when started, its test server.
#[derive(Debug)]
pub struct Backend {
    // Field order matters: the server stops before its namespace goes.
    server: Option<Child>,
    pub number: u8,
    pub host: Host,
}

impl Backend {
    /// The name its test server answers with (`backend<N>`).
    pub fn name(&self) -> String {
        backend_name(self.number)
    }

    pub fn ns(&self) -> &Netns {
        &self.host.ns
    }

    /// The running test server, if any.
    pub fn server(&mut self) -> Option<&mut Child> {
        self.server.as_mut()
    }

    /// The file whose existence makes its test server answer 503 (see
    /// [`DsrTopology::set_unavailable`]).
    fn unavailable_file(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}-unavailable", self.host.ns.name()))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.unavailable_file());
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct DsrTopology {
    // Drop order: backends (servers, then namespaces), client, LB, switch.
    backends: Vec<Backend>,
    client: Host,
    lb: Host,
    lb_port_xdp: XdpLink,
    /// A second LB and the XDP_PASS program on its bridge port (failover tests).
    peer_lb: Option<(Host, XdpLink)>,
    switch: Netns,
    bridge: String,
    vips: Vec<IpAddr>,
}

impl DsrTopology {
    /// The network with [`DEFAULT_BACKENDS`] backends, no servers started.
    pub fn new() -> Result<DsrTopology> {
        DsrTopology::with_backends(DEFAULT_BACKENDS)
    }

    /// The network with `count` backends (numbered 1..=count), no servers started.
    pub fn with_backends(count: u8) -> Result<DsrTopology> {
        DsrTopology::build(count, vec![IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)])
    }

    /// The network with `count` plain backends running test servers: no VIP on their
    /// loopback, no ARP settings, nothing but their address — what NAT forwarding serves.
    pub fn with_plain_servers(count: u8) -> Result<DsrTopology> {
        let mut topology = DsrTopology::build(count, Vec::new())?;
        topology.start_servers()?;
        Ok(topology)
    }

    fn build(count: u8, vips: Vec<IpAddr>) -> Result<DsrTopology> {
        ensure!(count <= MAX_BACKENDS, "at most {MAX_BACKENDS} backends");
        let switch = Netns::new("switch")?;
        // The switch is pure L2: no IPv6 link-local chatter from its ports.
        switch.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        switch.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        let bridge = crate::link::unique_ifname('s');
        switch.add_bridge(&bridge)?;

        let client = attach_host(&switch, &bridge, "client", CLIENT_V4, CLIENT_V6)?;
        let lb = attach_host(&switch, &bridge, "lb", LB_V4, LB_V6)?;
        // Frames the LB's XDP program transmits land in this port's receive queue, which
        // drops them unless it has NAPI: an XDP program gives it NAPI.
        let lb_port_xdp = switch
            .enable_veth_xdp_receive(&lb.switch_port)
            .context("cannot attach XDP_PASS (for NAPI) to the LB's bridge port")?;

        client.ns.add_route(VIP_NET_V4, IpAddr::V4(LB_V4))?;
        client.ns.add_route(VIP_NET_V6, IpAddr::V6(LB_V6))?;
        add_neighbours(&client, &lb)?;
        add_neighbours(&lb, &client)?;

        let mut topology = DsrTopology {
            backends: Vec::new(),
            client,
            lb,
            lb_port_xdp,
            peer_lb: None,
            switch,
            bridge,
            vips,
        };
        for n in 1..=count {
            topology.add_backend_number(n)?;
        }
        Ok(topology)
    }

    /// [`DsrTopology::with_backends`], then a test server on every backend.
    pub fn with_servers(count: u8) -> Result<DsrTopology> {
        let mut topology = DsrTopology::with_backends(count)?;
        topology.start_servers()?;
        Ok(topology)
    }

    pub fn client(&self) -> &Host {
        &self.client
    }

    pub fn lb(&self) -> &Host {
        &self.lb
    }

    /// The LB's namespace.
    pub fn lb_ns(&self) -> &Netns {
        &self.lb.ns
    }

    /// The LB's interface name inside its namespace (where the XDP program goes).
    pub fn lb_ifname(&self) -> &str {
        &self.lb.ifname
    }

    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// The XDP_PASS program on the LB's bridge port (see the module documentation).
    pub fn lb_port_xdp(&self) -> &XdpLink {
        &self.lb_port_xdp
    }

    /// The bridge's name inside the switch namespace.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The VIPs every backend holds (initially [`VIP_V4`] and [`VIP_V6`]).
    pub fn vips(&self) -> &[IpAddr] {
        &self.vips
    }

    /// The backends, in ascending number.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Backend number `n`.
    pub fn backend(&self, n: u8) -> Result<&Backend> {
        self.backends
            .iter()
            .find(|b| b.number == n)
            .with_context(|| format!("no backend {n}"))
    }

    pub fn backend_mut(&mut self, n: u8) -> Result<&mut Backend> {
        self.backends
            .iter_mut()
            .find(|b| b.number == n)
            .with_context(|| format!("no backend {n}"))
    }

    /// Adds a backend with the lowest free number and returns the number. Its server is
    /// not started.
    pub fn add_backend(&mut self) -> Result<u8> {
        let n = (1..=MAX_BACKENDS)
            .find(|n| self.backends.iter().all(|b| b.number != *n))
            .context("no free backend number")?;
        self.add_backend_number(n)?;
        Ok(n)
    }

    /// Adds backend number `n` (1..=89), which must not exist.
    pub fn add_backend_number(&mut self, n: u8) -> Result<()> {
        ensure!(
            (1..=MAX_BACKENDS).contains(&n),
            "backend numbers go from 1 to {MAX_BACKENDS}"
        );
        ensure!(self.backend(n).is_err(), "backend {n} already exists");
        let host = attach_host(
            &self.switch,
            &self.bridge,
            &format!("b{n}"),
            backend_v4(n),
            backend_v6(n),
        )
        .with_context(|| format!("cannot add backend {n}"))?;
        let ns = &host.ns;
        // A backend holding VIPs must not answer ARP for them (plain backends hold none).
        for key in ["all", "default", "lo", host.ifname.as_str()] {
            if self.vips.is_empty() {
                break;
            }
            ns.sysctl(&format!("net.ipv4.conf.{key}.arp_ignore"), "1")?;
            ns.sysctl(&format!("net.ipv4.conf.{key}.arp_announce"), "2")?;
        }
        for vip in &self.vips {
            add_vip_to(ns, *vip)?;
        }
        add_neighbours(&host, &self.client)?;
        add_neighbours(&host, &self.lb)?;
        add_neighbours(&self.client, &host)?;
        add_neighbours(&self.lb, &host)?;
        if let Some((peer, _)) = &self.peer_lb {
            add_neighbours(&host, peer)?;
            add_neighbours(peer, &host)?;
        }
        let backend = Backend {
            server: None,
            number: n,
            host,
        };
        let at = self.backends.partition_point(|b| b.number < n);
        self.backends.insert(at, backend);
        Ok(())
    }

    /// Adds a second load balancer at [`LB2_V4`] / [`LB2_V6`] on the segment, wired as the
    /// first one (static neighbours with the client and every backend, XDP_PASS on its
    /// bridge port), for failover tests.
    pub fn add_peer_lb(&mut self) -> Result<&Host> {
        ensure!(self.peer_lb.is_none(), "there is a second LB already");
        let lb = attach_host(&self.switch, &self.bridge, "lb2", LB2_V4, LB2_V6)?;
        let port_xdp = self
            .switch
            .enable_veth_xdp_receive(&lb.switch_port)
            .context("cannot attach XDP_PASS (for NAPI) to the second LB's bridge port")?;
        add_neighbours(&self.client, &lb)?;
        add_neighbours(&lb, &self.client)?;
        for backend in &self.backends {
            add_neighbours(&lb, &backend.host)?;
            add_neighbours(&backend.host, &lb)?;
        }
        Ok(&self.peer_lb.insert((lb, port_xdp)).0)
    }

    /// The second LB, once added.
    pub fn peer_lb(&self) -> Option<&Host> {
        self.peer_lb.as_ref().map(|(host, _)| host)
    }

    /// Makes the client reach the VIP ranges on the segment itself (it asks ARP / ND for
    /// a VIP) rather than via the LB's address: a VIP then goes to whichever LB holds
    /// its address, as with VRRP.
    pub fn route_vips_on_link(&self) -> Result<()> {
        for net in [VIP_NET_V4, VIP_NET_V6] {
            self.client
                .ns
                .ip(&["route", "replace", net, "dev", &self.client.ifname])?;
        }
        Ok(())
    }

    /// Removes backend `n`: stops its server, deletes its namespace and the LB's and
    /// client's neighbour entries for it.
    pub fn remove_backend(&mut self, n: u8) -> Result<()> {
        let at = self
            .backends
            .iter()
            .position(|b| b.number == n)
            .with_context(|| format!("no backend {n}"))?;
        let backend = self.backends.remove(at);
        let peer = self.peer_lb.as_ref().map(|(host, _)| host);
        for other in [&self.lb, &self.client].into_iter().chain(peer) {
            other
                .ns
                .del_neigh(&other.ifname, IpAddr::V4(backend.host.ipv4))?;
            other
                .ns
                .del_neigh(&other.ifname, IpAddr::V6(backend.host.ipv6))?;
        }
        drop(backend);
        Ok(())
    }

    /// Starts the test server on backend `n` (HTTP on [`HTTP_PORT`], UDP echo on
    /// [`UDP_PORT`], all addresses, IPv4 and IPv6) and waits until it listens.
    pub fn start_server(&mut self, n: u8) -> Result<()> {
        let bin = bins::test_server_bin()?;
        let backend = self.backend_mut(n)?;
        ensure!(
            backend.server.is_none(),
            "backend {n} already runs a server"
        );
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let config = ServerConfig {
            name: backend.name(),
            http: vec![
                SocketAddr::new(any4, HTTP_PORT),
                SocketAddr::new(any6, HTTP_PORT),
            ],
            udp: vec![
                SocketAddr::new(any4, UDP_PORT),
                SocketAddr::new(any6, UDP_PORT),
            ],
            unavailable_when: Some(backend.unavailable_file()),
        };
        let mut argv = vec![bin.display().to_string()];
        argv.extend(config.to_args());
        let mut child = backend.host.ns.spawn(&argv)?;
        child.wait_for_log(READY, Duration::from_secs(10))?;
        backend.server = Some(child);
        Ok(())
    }

    /// Stops backend `n`'s test server (the backend stays on the network).
    pub fn stop_server(&mut self, n: u8) -> Result<()> {
        match self.backend_mut(n)?.server.take() {
            Some(child) => child.stop(Duration::from_secs(2)).map(drop),
            None => bail!("backend {n} runs no server"),
        }
    }

    /// Makes backend `n`'s test server answer every HTTP request with 503 (`true`) or
    /// normally again (`false`): it keeps accepting connections, as an application
    /// whose dependency failed does.
    pub fn set_unavailable(&self, n: u8, unavailable: bool) -> Result<()> {
        let path = self.backend(n)?.unavailable_file();
        if unavailable {
            std::fs::write(&path, "").with_context(|| format!("cannot create {}", path.display()))
        } else {
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    Err(err).with_context(|| format!("cannot remove {}", path.display()))
                }
                _ => Ok(()),
            }
        }
    }

    /// Starts the test server on every backend that has none.
    pub fn start_servers(&mut self) -> Result<()> {
        let idle: Vec<u8> = self
            .backends
            .iter()
            .filter(|b| b.server.is_none())
            .map(|b| b.number)
            .collect();
        for n in idle {
            self.start_server(n)?;
        }
        Ok(())
    }

    /// Puts another VIP on every backend's loopback (present and future ones). Addresses
    /// outside [`VIP_NET_V4`] / [`VIP_NET_V6`] also get a client route via the LB.
    pub fn add_vip(&mut self, vip: IpAddr) -> Result<()> {
        ensure!(!self.vips.contains(&vip), "{vip} is already a VIP");
        ensure!(
            is_test_address(vip),
            "{vip} is outside 198.18.0.0/15 and 2001:db8::/32"
        );
        for backend in &self.backends {
            add_vip_to(&backend.host.ns, vip)?;
        }
        let in_vip_net = match vip {
            IpAddr::V4(v4) => v4.octets()[..3] == [198, 19, 0],
            IpAddr::V6(v6) => v6.segments()[..4] == [0x2001, 0xdb8, 0, 0xff],
        };
        if !in_vip_net {
            let (dst, via) = match vip {
                IpAddr::V4(_) => (format!("{vip}/32"), IpAddr::V4(LB_V4)),
                IpAddr::V6(_) => (format!("{vip}/128"), IpAddr::V6(LB_V6)),
            };
            self.client.ns.add_route(&dst, via)?;
        }
        self.vips.push(vip);
        Ok(())
    }
}

/// Whether `ip` is one the test bed may use (198.18.0.0/15, 2001:db8::/32, loopback).
pub fn is_test_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            (a == 198 && (b & 0xfe) == 18) || v4.is_loopback()
        }
        IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0xdb8] || v6.is_loopback(),
    }
}

fn add_vip_to(ns: &Netns, vip: IpAddr) -> Result<()> {
    let prefix = if vip.is_ipv6() { 128 } else { 32 };
    ns.add_addr("lo", vip, prefix)
}

/// A namespace `role` joined to the bridge by a veth, with its addresses and testbed MAC
/// (e.g. another host on a [`DsrTopology`]'s segment: `topology.switch()`,
/// `topology.bridge()`).
pub fn attach_host(
    switch: &Netns,
    bridge: &str,
    role: &str,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
) -> Result<Host> {
    ensure!(is_test_address(IpAddr::V4(ipv4)) && is_test_address(IpAddr::V6(ipv6)));
    let ns = Netns::new(role)?;
    let pair = veth_pair(&ns, switch)?;
    let mac = MacAddr::testbed(ipv4.octets()[3]);
    ns.set_mac(&pair.a, mac)?;
    // veth leaves transport checksums to "hardware" that never computes them (the frame
    // carries only the pseudo-header sum, trusted along the skb path). A frame that goes
    // through the LB's XDP program loses that trust, so hosts must send full checksums,
    // as a real NIC would put on the wire.
    ns.run(&["ethtool", "-K", &pair.a, "tx", "off"])
        .with_context(|| format!("cannot turn off TX checksum offload on {}", pair.a))?;
    ns.add_addr(&pair.a, IpAddr::V4(ipv4), SEGMENT_V4_PREFIX)?;
    ns.add_addr(&pair.a, IpAddr::V6(ipv6), SEGMENT_V6_PREFIX)?;
    switch.set_master(&pair.b, bridge)?;
    switch.link_up(&pair.b)?;
    ns.link_up(&pair.a)?;
    Ok(Host {
        ns,
        ifname: pair.a,
        switch_port: pair.b,
        mac,
        ipv4,
        ipv6,
    })
}

/// Static neighbour entries on `on` for both of `peer`'s addresses.
fn add_neighbours(on: &Host, peer: &Host) -> Result<()> {
    on.ns
        .add_neigh(&on.ifname, IpAddr::V4(peer.ipv4), peer.mac)?;
    on.ns.add_neigh(&on.ifname, IpAddr::V6(peer.ipv6), peer.mac)
}
