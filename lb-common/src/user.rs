//! Userspace conveniences: `aya::Pod` for every map type, and conversions from `std::net`.

extern crate std;

use std::net::IpAddr;

use crate::{
    Backend, ClientHop, DestinationFilter, FAMILY_IPV4, FAMILY_IPV6, Flow, FlowKey, FlowTimeouts,
    NatReply, NextHop, OwnMacs, TrafficCounters, VipAddressKey, VipKey, VipMeta,
};

// SAFETY: all of these are `#[repr(C)]`, `Copy`, contain only integers and explicit
// padding fields, and are valid for any bit pattern.
unsafe impl aya::Pod for VipKey {}
unsafe impl aya::Pod for VipAddressKey {}
unsafe impl aya::Pod for VipMeta {}
unsafe impl aya::Pod for Backend {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for Flow {}
unsafe impl aya::Pod for TrafficCounters {}
unsafe impl aya::Pod for NextHop {}
unsafe impl aya::Pod for FlowTimeouts {}
unsafe impl aya::Pod for NatReply {}
unsafe impl aya::Pod for OwnMacs {}
unsafe impl aya::Pod for DestinationFilter {}
unsafe impl aya::Pod for ClientHop {}

/// An address as the maps store it: its family tag and four words of network-order bytes.
pub fn addr_words(addr: IpAddr) -> (u8, [u32; 4]) {
    let mut bytes = [0u8; 16];
    let family = match addr {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            FAMILY_IPV4
        }
        IpAddr::V6(v6) => {
            bytes.copy_from_slice(&v6.octets());
            FAMILY_IPV6
        }
    };
    let mut words = [0u32; 4];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    (family, words)
}

/// The inverse of [`addr_words`]; `None` for an unknown family tag.
pub fn words_addr(family: u8, words: [u32; 4]) -> Option<IpAddr> {
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    match family {
        FAMILY_IPV4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
        FAMILY_IPV6 => Some(IpAddr::from(bytes)),
        _ => None,
    }
}

impl VipKey {
    /// `port` in host order; stored in network order.
    pub fn new(addr: IpAddr, port: u16, protocol: u8) -> Self {
        let (family, addr) = addr_words(addr);
        VipKey {
            addr,
            port: port.to_be(),
            protocol,
            family,
        }
    }
}

impl VipAddressKey {
    pub fn new(addr: IpAddr) -> Self {
        let (family, addr) = addr_words(addr);
        VipAddressKey {
            addr,
            family,
            _pad: [0; 3],
        }
    }
}

impl Backend {
    pub fn new(addr: IpAddr, vip_id: u32, flags: u8) -> Self {
        let (family, addr) = addr_words(addr);
        Backend {
            addr,
            nat_source: [0; 4],
            vip_id,
            family,
            flags,
            port: 0,
        }
    }

    /// The NAT side: the source address towards the backend and its port (host order; 0
    /// keeps the client's destination port).
    pub fn with_nat(mut self, nat_source: IpAddr, port: u16) -> Self {
        self.nat_source = addr_words(nat_source).1;
        self.port = port.to_be();
        self
    }

    pub fn nat_source_ip(&self) -> Option<IpAddr> {
        (self.nat_source != [0; 4])
            .then(|| words_addr(self.family, self.nat_source))
            .flatten()
    }

    pub fn ip(&self) -> Option<IpAddr> {
        words_addr(self.family, self.addr)
    }
}

impl FlowKey {
    /// Ports in host order. `src` and `dst` must be of the same family.
    pub fn new(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, protocol: u8) -> Self {
        let (family, src) = addr_words(src);
        let (_, dst) = addr_words(dst);
        FlowKey {
            src,
            dst,
            src_port: src_port.to_be(),
            dst_port: dst_port.to_be(),
            protocol,
            family,
            _pad: [0; 2],
        }
    }

    pub fn src_ip(&self) -> Option<IpAddr> {
        words_addr(self.family, self.src)
    }

    pub fn dst_ip(&self) -> Option<IpAddr> {
        words_addr(self.family, self.dst)
    }
}

impl core::ops::AddAssign for TrafficCounters {
    fn add_assign(&mut self, other: Self) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_flows += other.new_flows;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_words_round_trip() {
        for addr in ["198.18.0.10", "2001:db8::10"] {
            let addr: IpAddr = addr.parse().unwrap();
            let (family, words) = addr_words(addr);
            assert_eq!(words_addr(family, words), Some(addr));
        }
    }

    #[test]
    fn ipv4_uses_first_word_only() {
        let (family, words) = addr_words("198.18.0.10".parse().unwrap());
        assert_eq!(family, FAMILY_IPV4);
        assert_eq!(words[0].to_ne_bytes(), [198, 18, 0, 10]);
        assert_eq!(&words[1..], &[0, 0, 0]);
    }

    #[test]
    fn ports_are_stored_in_network_order() {
        let key = VipKey::new("198.18.0.10".parse().unwrap(), 80, crate::PROTO_TCP);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
    }
}
