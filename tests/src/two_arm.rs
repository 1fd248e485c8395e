//! The two-arm test network: clients reach the load balancer on one interface, the
//! backends sit behind another (a bridge in a "switch" namespace).
//!
//! ```text
//!  client 198.18.20.100 ── 198.18.20.1 [lb] 198.18.21.1 ── bridge ── backend1 198.18.21.11
//!                                                                └── backend2 198.18.21.12
//! ```
//!
//! DSR backends hold the VIP on their loopback (without answering ARP for it) and route
//! to clients through the LB host's kernel; plain backends (for NAT) have nothing but
//! their address. Each backend runs the test server (HTTP on 80, UDP echo on
//! [`UDP_PORT`]). Frames the LB redirects into a veth are delivered only if the veth's
//! peer runs XDP (NAPI): the client's veth and the switch's LB port run XDP_PASS.

use anyhow::{Context, Result};

use crate::{
    Child, Netns, XdpAction, XdpLink, bins::test_server_bin, link::unique_ifname, link::veth_pair,
    topology::UDP_PORT,
};

/// What the backends are configured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwoArmBackends {
    /// The VIP on the loopback, a default route via the LB: what DSR needs.
    Dsr { vip: &'static str },
    /// Nothing but their address: what NAT serves.
    Plain,
}

/// The network; every piece is a guard, dropped in reverse order of creation.
pub struct TwoArmTopology {
    /// The LB's interface towards the client, and towards the backends.
    pub lb_front: String,
    pub lb_back: String,
    _servers: Vec<Child>,
    _backends: Vec<Netns>,
    _bridge_port_xdp: XdpLink,
    _client_xdp: XdpLink,
    _switch: Netns,
    pub lb: Netns,
    pub client: Netns,
}

/// Backend `n`'s address (1 or 2).
pub fn two_arm_backend(n: u8) -> String {
    format!("198.18.21.1{n}")
}

/// Brings `dev` up in `ns` with `cidr`, sending full checksums (see the DSR topology).
fn configure(ns: &Netns, dev: &str, cidr: &str) -> Result<()> {
    ns.ip(&["addr", "add", cidr, "dev", dev])?;
    ns.ip(&["link", "set", dev, "up"])?;
    ns.run(&["ethtool", "-K", dev, "tx", "off"])?;
    Ok(())
}

impl TwoArmTopology {
    pub fn new(backends: TwoArmBackends) -> Result<TwoArmTopology> {
        let client = Netns::new("client")?;
        let lb = Netns::new("lb")?;
        let switch = Netns::new("switch")?;

        let front = veth_pair(&client, &lb)?;
        configure(&client, &front.a, "198.18.20.100/24")?;
        configure(&lb, &front.b, "198.18.20.1/24")?;
        client.ip(&["route", "add", "198.19.0.0/24", "via", "198.18.20.1"])?;
        let client_xdp = client.attach_xdp(&front.a, XdpAction::Pass)?;

        let back = veth_pair(&lb, &switch)?;
        configure(&lb, &back.a, "198.18.21.1/24")?;
        let bridge = unique_ifname('s');
        switch.add_bridge(&bridge)?;
        switch.set_master(&back.b, &bridge)?;
        switch.link_up(&back.b)?;
        let bridge_port_xdp = switch.attach_xdp(&back.b, XdpAction::Pass)?;

        let server = test_server_bin()?;
        let server = server.to_str().context("the test server's path")?;
        let mut namespaces = Vec::new();
        let mut servers = Vec::new();
        for n in 1..=2 {
            let ns = Netns::new(&format!("b{n}"))?;
            let link = veth_pair(&ns, &switch)?;
            configure(&ns, &link.a, &format!("{}/24", two_arm_backend(n)))?;
            switch.set_master(&link.b, &bridge)?;
            switch.link_up(&link.b)?;
            if let TwoArmBackends::Dsr { vip } = backends {
                ns.ip(&["route", "add", "default", "via", "198.18.21.1"])?;
                ns.ip(&["addr", "add", &format!("{vip}/32"), "dev", "lo"])?;
                for key in ["all", "default", link.a.as_str()] {
                    ns.sysctl(&format!("net.ipv4.conf.{key}.arp_ignore"), "1")?;
                    ns.sysctl(&format!("net.ipv4.conf.{key}.arp_announce"), "2")?;
                }
            }
            let name = format!("backend{n}");
            let udp = format!("0.0.0.0:{UDP_PORT}");
            servers.push(ns.spawn(&[
                server,
                "--name",
                &name,
                "--http",
                "0.0.0.0:80",
                "--udp",
                &udp,
            ])?);
            namespaces.push(ns);
        }
        Ok(TwoArmTopology {
            lb_front: front.b,
            lb_back: back.a,
            _servers: servers,
            _backends: namespaces,
            _bridge_port_xdp: bridge_port_xdp,
            _client_xdp: client_xdp,
            _switch: switch,
            lb,
            client,
        })
    }
}
