//! weir's agent and CLI as a library, one folder per domain. Pure logic (Maglev, the
//! configuration, planning map writes, health and VRRP state machines) lives apart from
//! the I/O that drives it, so that it can be tested without a kernel.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod error_report;
pub mod failover;
pub mod firewall;
pub mod health;
pub mod host;
pub mod proxy;
pub mod stats;
