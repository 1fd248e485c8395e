//! `weir proxy`: the TLS tier.

pub mod tls;
