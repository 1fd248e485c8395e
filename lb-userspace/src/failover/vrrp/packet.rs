//! The VRRP version 3 advertisement (RFC 5798 §5.2), encoded and decoded without I/O.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! |                       IPvX Address(es)                        |
//! ```
//!
//! The checksum covers the message and, for both families, the pseudo-header of the IP
//! packet carrying it (source, destination, protocol 112, length): it is computed here
//! rather than by the kernel, so that IPv4 and IPv6 are handled the same way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP.
pub const PROTO_VRRP: u8 = 112;
/// The IPv4 and IPv6 multicast groups adverts are sent to.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// The TTL / hop limit an advert is sent with, and must arrive with (it never crossed a
/// router).
pub const HOP_LIMIT: u8 = 255;
/// Largest Max Adver Int: 12 bits of centiseconds.
pub const MAX_ADVERT_CENTIS: u16 = 0x0fff;

const VERSION_TYPE: u8 = 0x31; // version 3, type 1 (ADVERTISEMENT)
const HEADER_LEN: usize = 8;

/// One advertisement. Its addresses are all of one family: IPv4 and IPv6 are separate
/// VRRP instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    pub vrid: u8,
    /// 0: the master is leaving; 255: the address owner.
    pub priority: u8,
    /// The sender's advertisement interval, in centiseconds.
    pub max_advert_centis: u16,
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("{0} bytes is shorter than a VRRP header")]
    Short(usize),
    #[error("version/type byte {0:#04x} is not a VRRPv3 advertisement")]
    NotVrrp3Advert(u8),
    #[error("{count} addresses announced, but {len} bytes carry them")]
    Length { count: u8, len: usize },
    #[error("bad checksum")]
    Checksum,
    #[error("source {source_address} and destination {destination} are not of one family")]
    Family {
        source_address: IpAddr,
        destination: IpAddr,
    },
}

impl Advert {
    /// The message as sent from `source` to `destination` (the checksum depends on them).
    /// Addresses of the other family than `source` are left out.
    pub fn encode(&self, source: IpAddr, destination: IpAddr) -> Vec<u8> {
        let addresses: Vec<IpAddr> = self
            .addresses
            .iter()
            .copied()
            .filter(|a| a.is_ipv4() == source.is_ipv4())
            .take(usize::from(u8::MAX))
            .collect();
        let mut bytes = Vec::with_capacity(HEADER_LEN + addresses.len() * 16);
        bytes.push(VERSION_TYPE);
        bytes.push(self.vrid);
        bytes.push(self.priority);
        bytes.push(addresses.len() as u8);
        bytes.extend_from_slice(&(self.max_advert_centis & MAX_ADVERT_CENTIS).to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        for address in addresses {
            match address {
                IpAddr::V4(v4) => bytes.extend_from_slice(&v4.octets()),
                IpAddr::V6(v6) => bytes.extend_from_slice(&v6.octets()),
            }
        }
        let sum = checksum(source, destination, &bytes);
        bytes[6..8].copy_from_slice(&sum.to_be_bytes());
        bytes
    }

    /// Decodes and checks a message received from `source` for `destination`.
    pub fn decode(
        bytes: &[u8],
        source: IpAddr,
        destination: IpAddr,
    ) -> Result<Advert, PacketError> {
        if source.is_ipv4() != destination.is_ipv4() {
            return Err(PacketError::Family {
                source_address: source,
                destination,
            });
        }
        if bytes.len() < HEADER_LEN {
            return Err(PacketError::Short(bytes.len()));
        }
        if bytes[0] != VERSION_TYPE {
            return Err(PacketError::NotVrrp3Advert(bytes[0]));
        }
        let count = bytes[3];
        let width = if source.is_ipv4() { 4 } else { 16 };
        let body = &bytes[HEADER_LEN..];
        if body.len() < usize::from(count) * width {
            return Err(PacketError::Length {
                count,
                len: body.len(),
            });
        }
        if checksum(source, destination, bytes) != 0 {
            return Err(PacketError::Checksum);
        }
        let addresses = body
            .chunks_exact(width)
            .take(usize::from(count))
            .map(|chunk| match <[u8; 4]>::try_from(chunk) {
                Ok(v4) => IpAddr::from(v4),
                Err(_) => {
                    let mut v6 = [0; 16];
                    v6.copy_from_slice(chunk);
                    IpAddr::from(v6)
                }
            })
            .collect();
        Ok(Advert {
            vrid: bytes[1],
            priority: bytes[2],
            max_advert_centis: u16::from_be_bytes([bytes[4], bytes[5]]) & MAX_ADVERT_CENTIS,
            addresses,
        })
    }
}

/// The Internet checksum of `message` with the pseudo-header of an IP packet carrying
/// it (RFC 768 layout for IPv4, RFC 8200 §8.1 for IPv6). Over a message whose checksum
/// field is filled in, a valid one gives 0.
pub fn checksum(source: IpAddr, destination: IpAddr, message: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    };
    match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            add(&s.octets());
            add(&d.octets());
            add(&[0, PROTO_VRRP]);
            add(&(message.len() as u16).to_be_bytes());
        }
        (s, d) => {
            add(&to_v6(s).octets());
            add(&to_v6(d).octets());
            add(&(message.len() as u32).to_be_bytes());
            add(&[0, 0, 0, PROTO_VRRP]);
        }
    }
    add(message);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn to_v6(address: IpAddr) -> Ipv6Addr {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn advert(addresses: &[&str]) -> Advert {
        Advert {
            vrid: 51,
            priority: 150,
            max_advert_centis: 10,
            addresses: addresses.iter().map(|a| ip(a)).collect(),
        }
    }

    /// Built by hand from the RFC 5798 §5.2 layout; the checksum worked out on paper:
    /// pseudo-header 0xc612+0x0002+0xe000+0x0012+0x0070+0x000c = 0x1a6a2,
    /// message 0x3133+0x9601+0x000a+0x0000+0xc613+0x000a = 0x18d5b;
    /// 0x1a6a2+0x18d5b = 0x333fd, folded 0x3400, complemented 0xcbff.
    #[test]
    fn ipv4_golden_packet() {
        let bytes = advert(&["198.19.0.10"]).encode(ip("198.18.0.2"), IpAddr::V4(GROUP_V4));
        assert_eq!(
            bytes,
            [0x31, 51, 150, 1, 0x00, 0x0a, 0xcb, 0xff, 198, 19, 0, 10]
        );
    }

    #[test]
    fn round_trips_both_families() {
        for (source, destination, addresses) in [
            (
                "198.18.0.2",
                "224.0.0.18",
                vec!["198.19.0.10", "198.19.0.11"],
            ),
            ("198.18.0.2", "198.18.0.3", vec!["198.19.0.10"]),
            ("fe80::2", "ff02::12", vec!["2001:db8:0:ff::10"]),
        ] {
            let advert = advert(&addresses);
            let bytes = advert.encode(ip(source), ip(destination));
            assert_eq!(checksum(ip(source), ip(destination), &bytes), 0);
            assert_eq!(
                Advert::decode(&bytes, ip(source), ip(destination)),
                Ok(advert)
            );
        }
    }

    #[test]
    fn ipv6_checksum_covers_the_pseudo_header() {
        let bytes = advert(&["2001:db8:0:ff::10"]).encode(ip("fe80::2"), ip("ff02::12"));
        assert_eq!(bytes.len(), 8 + 16);
        // The same message from another source fails its checksum.
        assert_eq!(
            Advert::decode(&bytes, ip("fe80::3"), ip("ff02::12")),
            Err(PacketError::Checksum)
        );
    }

    #[test]
    fn other_family_addresses_are_left_out() {
        let bytes = advert(&["198.19.0.10", "2001:db8:0:ff::10"])
            .encode(ip("198.18.0.2"), IpAddr::V4(GROUP_V4));
        assert_eq!(bytes[3], 1);
        assert_eq!(bytes.len(), 12);
    }

    #[test]
    fn malformed_messages_are_refused() {
        let (s, d) = (ip("198.18.0.2"), IpAddr::V4(GROUP_V4));
        let good = advert(&["198.19.0.10"]).encode(s, d);
        assert_eq!(Advert::decode(&good[..7], s, d), Err(PacketError::Short(7)));
        let mut v2 = good.clone();
        v2[0] = 0x21;
        assert_eq!(
            Advert::decode(&v2, s, d),
            Err(PacketError::NotVrrp3Advert(0x21))
        );
        let mut long_count = good.clone();
        long_count[3] = 2;
        assert!(matches!(
            Advert::decode(&long_count, s, d),
            Err(PacketError::Length { count: 2, len: 4 })
        ));
        let mut corrupted = good.clone();
        corrupted[2] ^= 1;
        assert_eq!(Advert::decode(&corrupted, s, d), Err(PacketError::Checksum));
        assert!(Advert::decode(&good, s, ip("ff02::12")).is_err());
        // Any prefix of any byte string: an error or an advert, never a panic.
        for len in 0..good.len() {
            let _ = Advert::decode(&good[..len], s, d);
        }
    }

    #[test]
    fn reserved_bits_are_ignored_and_never_sent() {
        let mut advert = advert(&["198.19.0.10"]);
        advert.max_advert_centis = 0xffff;
        let bytes = advert.encode(ip("198.18.0.2"), IpAddr::V4(GROUP_V4));
        assert_eq!(&bytes[4..6], &[0x0f, 0xff]);
    }
}
