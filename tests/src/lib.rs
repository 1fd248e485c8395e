//! weir's test bed: network namespaces, veths and a bridge wired into one-arm
//! (`topology`: DSR, or NAT to plain backends) and two-arm (`two_arm`) topologies, a test
//! server for the backends, the agent and its peers (BIRD, keepalived) as fixtures, and
//! clients for the tests.
//!
//! Everything is an RAII guard: namespaces ([`Netns`]), the processes inside them
//! ([`Child`]) and XDP attachments ([`XdpLink`]) go away when dropped, also while a test
//! panics. Names start with `weir-` and carry the process id and a counter, so tests run
//! in parallel (and alongside other processes' tests). Only 198.18.0.0/15, 2001:db8::/32
//! and loopback addresses are used, and traffic only flows between the test namespaces.
//!
//! Everything here needs root: functions fail with a clear error otherwise, and tests
//! should `unwrap`/`expect` them (never skip).

pub mod agent;
pub mod bins;
pub mod bird;
pub mod browser;
pub mod client;
pub mod cmd;
pub mod cpu;
pub mod flood;
pub mod keepalived;
pub mod link;
pub mod load;
pub mod netns;
pub mod server;
pub mod topology;
pub mod two_arm;
pub mod wrk;
pub mod xdp;

pub use bins::{test_server_bin, weir_bin, workspace_root};
pub use client::{HttpResponse, curl, http_get, http_get_keepalive, udp_request, udp_request_from};
pub use link::{LinkStats, MacAddr, VethPair, unique_ifname, veth_pair, veth_pair_named};
pub use netns::{Child, Netns, cleanup_stale_namespaces, require_root};
pub use server::ServerConfig;
pub use topology::{Backend, DsrTopology, Host};
pub use two_arm::{TwoArmBackends, TwoArmTopology, two_arm_backend};
pub use xdp::{XdpAction, XdpLink};
