//! What the dataplane counted, for people and scripts.

pub mod firewall;
pub mod report;
