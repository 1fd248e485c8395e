//! The VRRP interface as iproute2 shows it, and the VIP addresses held on it. Like the
//! rest of the agent's host changes, this goes through [`crate::host::ip_async`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

use super::VrrpError;
use crate::host::ip_async as ip;

/// What the instances need to know about their interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// Every address on it (held VIPs included), in the kernel's order.
    pub addresses: Vec<IpAddr>,
}

impl InterfaceInfo {
    /// The address IPv4 adverts come from: the first one that is not a VIP.
    pub fn ipv4_source(&self, vips: &[IpAddr]) -> Option<Ipv4Addr> {
        self.addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) if !vips.contains(a) => Some(*v4),
            _ => None,
        })
    }

    /// The link-local address IPv6 adverts come from (RFC 5798 §5.1.2.1).
    pub fn ipv6_link_local(&self) -> Option<Ipv6Addr> {
        self.addresses.iter().find_map(|a| match a {
            IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some(*v6),
            _ => None,
        })
    }
}

#[derive(Deserialize)]
struct Link {
    ifindex: u32,
    #[serde(default)]
    address: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    local: IpAddr,
}

/// Parses `ip -j addr show dev NAME`.
fn parse_interface(json: &str) -> Option<InterfaceInfo> {
    let links: Vec<Link> = serde_json::from_str(json).ok()?;
    let link = links.into_iter().next()?;
    let mut mac = [0u8; 6];
    let mut octets = link.address.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(octets.next()?, 16).ok()?;
    }
    Some(InterfaceInfo {
        ifindex: link.ifindex,
        mac,
        addresses: link.addr_info.into_iter().map(|a| a.local).collect(),
    })
}

pub async fn interface_info(interface: &str) -> Result<InterfaceInfo, VrrpError> {
    let json = ip(&["-j", "addr", "show", "dev", interface]).await?;
    parse_interface(&json).ok_or_else(|| VrrpError::Interface {
        interface: interface.to_owned(),
        message: "`ip -j addr show` gave no Ethernet interface with that name".into(),
    })
}

/// Adds `addresses` to the interface (already there is fine). IPv6 ones skip duplicate
/// address detection: the address moves between nodes, it is not claimed afresh.
pub async fn hold(interface: &str, addresses: &[IpAddr]) -> Result<(), VrrpError> {
    for address in addresses {
        let (prefix, options): (u8, &[&str]) = match address {
            IpAddr::V4(_) => (32, &[]),
            IpAddr::V6(_) => (128, &["nodad"]),
        };
        let local = format!("{address}/{prefix}");
        let mut args = vec!["addr", "replace", &local, "dev", interface];
        args.extend_from_slice(options);
        ip(&args).await?;
    }
    Ok(())
}

/// Removes those of `addresses` that are on the interface (a previous agent's left-overs
/// included).
pub async fn release(interface: &str, addresses: &[IpAddr]) -> Result<(), VrrpError> {
    let present = interface_info(interface).await?.addresses;
    for address in addresses.iter().filter(|a| present.contains(a)) {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        ip(&[
            "addr",
            "del",
            &format!("{address}/{prefix}"),
            "dev",
            interface,
        ])
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = r#"[{"ifindex":7,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"operstate":"UP","link_type":"ether","address":"02:00:c6:12:00:02","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet","local":"198.19.0.10","prefixlen":32,"scope":"global"},{"family":"inet","local":"198.18.0.2","prefixlen":24,"scope":"global"},{"family":"inet6","local":"2001:db8:0:1::2","prefixlen":64},{"family":"inet6","local":"fe80::c6ff:fe12:2","prefixlen":64,"scope":"link"}]}]"#;

    #[test]
    fn parses_ip_addr_show() {
        let info = parse_interface(SHOW).expect("parsed");
        assert_eq!(info.ifindex, 7);
        assert_eq!(info.mac, [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02]);
        let vip: IpAddr = "198.19.0.10".parse().unwrap();
        assert_eq!(info.ipv4_source(&[vip]), Some(Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(info.ipv4_source(&[]), Some(Ipv4Addr::new(198, 19, 0, 10)));
        assert_eq!(
            info.ipv6_link_local(),
            Some("fe80::c6ff:fe12:2".parse().unwrap())
        );
        assert_eq!(parse_interface("[]"), None);
        assert_eq!(parse_interface("not json"), None);
    }
}
