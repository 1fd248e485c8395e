//! The early exit for the host's own packets: a packet whose destination is neither a
//! VIP address nor a NAT source is passed once its IP header is read, without parsing
//! further or looking up a VIP (unless the host has firewall port rules); only one for a
//! NAT source is checked for a NAT reply (`lb_common::DestinationFilter`).

use lb_common::{DESTINATION_NAT_SOURCES, DESTINATION_VIPS};

use crate::{DESTINATIONS, firewall};

/// Whether a packet for `dst` is certainly the host's and may be passed as is: neither
/// a VIP address nor a NAT source, and no firewall rules for the host's ports (which
/// need the transport header).
#[inline(always)]
pub fn is_hosts(dst: &[u32; 4]) -> bool {
    !may_be_vip(dst) && !may_be_nat_source(dst) && !firewall::host_rules()
}

#[inline(always)]
fn may_be_vip(dst: &[u32; 4]) -> bool {
    may_contain(DESTINATION_VIPS, dst)
}

#[inline(always)]
pub fn may_be_nat_source(dst: &[u32; 4]) -> bool {
    may_contain(DESTINATION_NAT_SOURCES, dst)
}

#[inline(always)]
fn may_contain(slot: u32, dst: &[u32; 4]) -> bool {
    DESTINATIONS
        .get(slot)
        .is_some_and(|filter| filter.may_contain(dst))
}
