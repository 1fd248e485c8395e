//! weir's agent and CLI as a library: pure logic (Maglev, configuration, planning map
//! writes) apart from the I/O that loads the XDP program and programs its maps.

pub mod agent;
pub mod announce;
pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod flows;
pub mod health;
pub mod host;
pub mod maglev;
pub mod pins;
pub mod plan;
pub mod proxy;
pub mod report;
pub mod runtime;
pub mod serving;
pub mod vrrp;
