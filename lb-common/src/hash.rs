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
    let k = word.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finalize(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
