//! The flow hash that picks a Maglev slot. It lives here so that the agent and the tests
//! compute exactly what the XDP program computes.

use crate::FlowKey;

const SEED: u32 = 0x7765_6972; // "weir"

/// Hashes a flow for Maglev slot selection: the whole 5-tuple, or only the client
/// address (with the family) when `source_only` is set.
///
/// A murmur3-style word mixer: cheap in BPF (no loops over bytes, no tables) and well
/// spread in the low bits, which the modulo by the table size uses.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, source_only: bool) -> u32 {
    let mut h = SEED ^ key.family as u32;
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    if !source_only {
        h = mix(h, key.dst[0]);
        h = mix(h, key.dst[1]);
        h = mix(h, key.dst[2]);
        h = mix(h, key.dst[3]);
        h = mix(h, ((key.src_port as u32) << 16) | key.dst_port as u32);
        h = mix(h, key.protocol as u32);
    }
    finalize(h)
}

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finalize(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(all(test, feature = "user"))]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;
    use crate::{PROTO_TCP, PROTO_UDP};

    fn key(client_port: u16) -> FlowKey {
        FlowKey::new(
            "198.18.0.100".parse().unwrap(),
            client_port,
            "198.19.0.10".parse().unwrap(),
            80,
            PROTO_TCP,
        )
    }

    /// Every LB node, every version, must hash a flow to the same slot, or flows break
    /// when they move between nodes or across an upgrade. A change of these values is a
    /// compatibility break, not a refactoring.
    #[test]
    fn hash_values_are_stable() {
        assert_eq!(flow_hash(&key(40000), false), 0x98b6_66ad);
        assert_eq!(flow_hash(&key(40000), true), 0xf257_b5d5);
    }

    #[test]
    fn source_only_ignores_everything_but_the_client_address() {
        let a = key(40000);
        let mut b = key(50000);
        b.dst_port = 443u16.to_be();
        b.protocol = PROTO_UDP;
        assert_eq!(flow_hash(&a, true), flow_hash(&b, true));
        assert_ne!(flow_hash(&a, false), flow_hash(&b, false));
    }

    /// Consecutive client ports (what one client's connections look like) spread evenly
    /// over a prime-sized table.
    #[test]
    fn consecutive_ports_spread_evenly() {
        let buckets = 251usize;
        let flows = 251 * 400;
        let mut counts = vec![0u32; buckets];
        for port in 0..flows {
            counts[flow_hash(&key(port as u16), false) as usize % buckets] += 1;
        }
        let expected = (flows / buckets) as f64;
        let worst: Vec<f64> = counts
            .iter()
            .map(|c| (*c as f64 - expected).abs() / expected)
            .collect();
        let max = worst.iter().cloned().fold(0.0, f64::max);
        assert!(max < 0.25, "a bucket is {max:.2} off its share");
    }
}
