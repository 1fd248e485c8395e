//! Incremental Internet checksum updates (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`),
//! for the NAT rewrites: only the changed 16-bit words are summed, never the payload.
//!
//! Words are taken exactly as they lie in memory (network bytes loaded in native order),
//! checksums too: the one's-complement sum is byte-order independent (RFC 1071), so no
//! byte is swapped on the fast path.

/// The change to a checksum: the one's-complement sum of `~old + new` over every changed
/// word, kept unfolded (a `u32` holds the sum of 32768 word changes without overflow; a
/// rewrite changes at most a few dozen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    pub const ZERO: Delta = Delta(0);

    /// One 16-bit word changes from `old` to `new`.
    #[inline(always)]
    pub const fn word(self, old: u16, new: u16) -> Delta {
        Delta(self.0 + (!old) as u32 + new as u32)
    }

    /// A 32-bit word (as stored in a map: four network bytes) changes.
    #[inline(always)]
    pub const fn word32(self, old: u32, new: u32) -> Delta {
        self.word(old as u16, new as u16)
            .word((old >> 16) as u16, (new >> 16) as u16)
    }

    /// An address in map form changes: the first word for IPv4, all four for IPv6.
    #[inline(always)]
    pub const fn addr(self, ipv6: bool, old: &[u32; 4], new: &[u32; 4]) -> Delta {
        let d = self.word32(old[0], new[0]);
        if ipv6 {
            d.word32(old[1], new[1])
                .word32(old[2], new[2])
                .word32(old[3], new[3])
        } else {
            d
        }
    }

    /// Both changes together.
    #[inline(always)]
    pub const fn plus(self, other: Delta) -> Delta {
        Delta(fold(self.0) as u32 + fold(other.0) as u32)
    }
}

/// The one's-complement sum folded to 16 bits. Two folds suffice for a `u32`.
#[inline(always)]
const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// The checksum `csum` after the changes in `delta`.
#[inline(always)]
pub const fn apply(csum: u16, delta: Delta) -> u16 {
    !fold((!csum) as u32 + fold(delta.0) as u32)
}

/// A UDP checksum after the changes: 0 over IPv4 means "no checksum" and stays 0; a
/// computed 0 is sent as 0xffff (RFC 768; over IPv6 a checksum is mandatory, RFC 8200).
#[inline(always)]
pub const fn apply_udp(csum: u16, delta: Delta, ipv6: bool) -> u16 {
    if csum == 0 && !ipv6 {
        return 0;
    }
    match apply(csum, delta) {
        0 => 0xffff,
        updated => updated,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// RFC 1071 from scratch, over big-endian words: the reference.
    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum = 0u32;
        for chunk in bytes.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += word as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn native16(bytes: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([bytes[at], bytes[at + 1]])
    }

    fn native32(bytes: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// A random buffer with a valid checksum at `at`; random words rewritten one by
    /// one (16 or 32 bits, as the NAT does): the incremental checksum equals the one
    /// computed from scratch, every time.
    #[test]
    fn incremental_equals_from_scratch() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..20_000u32 {
            let len = 8 + (rng(&mut seed) % 60) as usize * 2;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng(&mut seed) as u8).collect();
            if round.is_multiple_of(7) {
                // Sums near the edges: all ones, all zeros.
                let fill = if round.is_multiple_of(2) { 0xff } else { 0 };
                bytes.iter_mut().for_each(|b| *b = fill);
            }
            let at = 2 * (rng(&mut seed) as usize % (len / 2));
            bytes[at..at + 2].copy_from_slice(&[0, 0]);
            let csum = checksum(&bytes).to_be_bytes();
            bytes[at..at + 2].copy_from_slice(&csum);

            let mut delta = Delta::ZERO;
            for _ in 0..1 + rng(&mut seed) % 6 {
                let wide = rng(&mut seed).is_multiple_of(2) && len >= 8;
                let span = if wide { 4 } else { 2 };
                let word_at = 2 * (rng(&mut seed) as usize % ((len - span) / 2 + 1));
                if (word_at..word_at + span).contains(&at) || (at..at + 2).contains(&word_at) {
                    continue;
                }
                let new = rng(&mut seed);
                if wide {
                    let old = native32(&bytes, word_at);
                    let new = new as u32;
                    bytes[word_at..word_at + 4].copy_from_slice(&new.to_ne_bytes());
                    delta = delta.plus(Delta::ZERO.word32(old, new));
                } else {
                    let old = native16(&bytes, word_at);
                    let new = new as u16;
                    bytes[word_at..word_at + 2].copy_from_slice(&new.to_ne_bytes());
                    delta = delta.word(old, new);
                }
            }
            let updated = apply(native16(&bytes, at), delta);
            bytes[at..at + 2].copy_from_slice(&[0, 0]);
            assert_eq!(
                updated.to_ne_bytes(),
                checksum(&bytes).to_be_bytes(),
                "round {round}"
            );
        }
    }

    #[test]
    fn addresses_change_four_or_sixteen_bytes() {
        let old = [0x0a00_0001u32, 1, 2, 3];
        let new = [0x0a00_0002u32, 4, 5, 6];
        assert_eq!(
            Delta::ZERO.addr(false, &old, &new),
            Delta::ZERO.word32(old[0], new[0])
        );
        assert_ne!(
            Delta::ZERO.addr(true, &old, &new),
            Delta::ZERO.addr(false, &old, &new)
        );
    }

    #[test]
    fn udp_zero_checksum() {
        let delta = Delta::ZERO.word(0x1234, 0x4321);
        assert_eq!(
            apply_udp(0, delta, false),
            0,
            "IPv4: no checksum stays none"
        );
        // A change that makes the sum come out at zero is sent as 0xffff.
        let csum = 0x1234;
        let zeroing = Delta::ZERO.word(0, csum);
        assert_eq!(apply(csum, zeroing), 0);
        assert_eq!(apply_udp(csum, zeroing, false), 0xffff);
        assert_eq!(apply_udp(csum, zeroing, true), 0xffff);
    }

    #[test]
    fn no_change_keeps_the_checksum() {
        for csum in [0x0000, 0x1234, 0xfffe] {
            assert_eq!(apply(csum, Delta::ZERO), csum);
            assert_eq!(apply(csum, Delta::ZERO.word(0xabcd, 0xabcd)), csum);
        }
    }
}
