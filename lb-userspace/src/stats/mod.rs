//! What the dataplane counted, for people and scripts: the report (`weir stats`), the
//! interfaces' own loss counters, the flow census, and the HAProxy-style stats page with
//! its CSV export and Prometheus metrics (`[stats]`).

pub mod auth;
pub mod census;
pub mod csv;
pub mod firewall;
pub mod interface;
pub mod metrics;
pub mod overview;
pub mod page;
pub mod report;
pub mod server;
