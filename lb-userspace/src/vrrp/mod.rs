//! VRRP version 3 (RFC 5798) in the agent: the node holds the VIP addresses on an
//! interface while it is master, and gives them up to a peer (weir or keepalived) that
//! has a higher priority or when it stops.

pub mod packet;
pub mod state;
