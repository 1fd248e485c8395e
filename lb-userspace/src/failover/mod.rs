//! Sharing the VIPs between load-balancer nodes: which VIPs this node can serve
//! (`serving`), active/passive failover with VRRP (`vrrp`), and active/active route
//! announcement for BGP + ECMP (`announce`).

pub mod announce;
pub mod serving;
pub mod vrrp;
