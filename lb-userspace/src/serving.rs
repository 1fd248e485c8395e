//! Which VIPs can take new flows right now. The agent publishes it on a watch channel
//! whenever the running state changes (configuration, admin states, health); VIP failover
//! (VRRP priority tracking) and route announcement follow it instead of polling the agent.
//!
//! A VIP that stopped serving comes back only once none of its backends is half-way
//! through its rise. Its peers (the other active nodes, or the VRRP backup) kept checking
//! the same backends and have them all UP: a node that takes traffic again with only the
//! first risen backend in its Maglev table sends the established connections it receives
//! to other backends than its peers did, which reset them. The others usually rise within
//! one `fastinter` (the node's checks came back together), so the wait is short.

use std::{collections::HashSet, net::IpAddr};

use crate::{
    config::{AdminState, BackendConfig, Config, VipConfig},
    health::Operational,
};

/// One VIP and whether it can serve new flows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipServing {
    pub name: String,
    pub address: IpAddr,
    /// At least one backend takes new flows: ready, weight above 0, and up.
    pub serving: bool,
}

/// Every VIP of the running configuration, in configuration order.
pub type ServingVips = Vec<VipServing>;

/// The VIPs of `config`, following `previous` (what was published before; empty at
/// start); `health` tells a backend's operational state.
pub fn serving_vips(
    config: &Config,
    previous: &[VipServing],
    health: impl Fn(&VipConfig, &BackendConfig) -> Operational,
) -> ServingVips {
    let was_serving: HashSet<&str> = previous
        .iter()
        .filter(|vip| vip.serving)
        .map(|vip| vip.name.as_str())
        .collect();
    config
        .vips
        .iter()
        .map(|vip| {
            let rising = vip.backends.iter().any(|backend| {
                takes_new_flows(backend) && health(vip, backend) == Operational::Rising
            });
            let settled = was_serving.contains(vip.name.as_str()) || !rising;
            VipServing {
                name: vip.name.clone(),
                address: vip.address,
                serving: settled && vip_serving(vip, |backend| health(vip, backend).is_up()),
            }
        })
        .collect()
}

/// Whether one backend of `vip` takes new flows: ready, weight above 0, and up.
pub fn vip_serving(vip: &VipConfig, is_up: impl Fn(&BackendConfig) -> bool) -> bool {
    vip.backends
        .iter()
        .any(|backend| takes_new_flows(backend) && is_up(backend))
}

/// Whether the operator lets `backend` take new flows (health aside).
fn takes_new_flows(backend: &BackendConfig) -> bool {
    backend.state == AdminState::Ready && backend.weight > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backends: &str) -> Config {
        let text = format!(
            "[agent]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"web\"\naddress = \"198.19.0.10\"\nport = 80\n{backends}"
        );
        Config::parse(&text, "test.toml").expect("valid test configuration")
    }

    #[test]
    fn a_vip_serves_while_one_backend_takes_new_flows() {
        let serving =
            |text: &str| serving_vips(&config(text), &[], |_, _| Operational::Up)[0].serving;
        assert!(serving(
            "[[vip.backend]]\naddress = \"198.18.0.11\"\n[[vip.backend]]\naddress = \"198.18.0.12\"\nstate = \"drain\"\n"
        ));
        assert!(!serving(
            "[[vip.backend]]\naddress = \"198.18.0.11\"\nstate = \"maint\"\n[[vip.backend]]\naddress = \"198.18.0.12\"\nweight = 0\n"
        ));
        assert!(!serving(""));
    }

    #[test]
    fn a_vip_whose_backends_are_all_down_does_not_serve() {
        let config = config("[[vip.backend]]\naddress = \"198.18.0.11\"\n");
        assert!(!serving_vips(&config, &[], |_, _| Operational::Down)[0].serving);
    }

    #[test]
    fn a_vip_comes_back_once_no_backend_is_rising_and_stays_while_one_rises() {
        let config = config(
            "[[vip.backend]]\naddress = \"198.18.0.11\"\n[[vip.backend]]\naddress = \"198.18.0.12\"\n",
        );
        let second = "198.18.0.12".parse::<IpAddr>().unwrap();
        // The first backend has risen, the second is one check short.
        let half_risen = |_: &VipConfig, backend: &BackendConfig| {
            if backend.address == second {
                Operational::Rising
            } else {
                Operational::Up
            }
        };
        let down = serving_vips(&config, &[], |_, _| Operational::Down);
        assert!(!serving_vips(&config, &down, half_risen)[0].serving);
        // Both risen: back.
        let up = serving_vips(&config, &down, |_, _| Operational::Up);
        assert!(up[0].serving);
        // A serving VIP does not wait for a backend that rises (it only gains one).
        assert!(serving_vips(&config, &up, half_risen)[0].serving);
        // A backend that rises while out of rotation by the operator does not hold it.
        let maint = format!(
            "[[vip.backend]]\naddress = \"198.18.0.11\"\n[[vip.backend]]\naddress = \"{second}\"\nstate = \"maint\"\n"
        );
        assert!(serving_vips(&self::config(&maint), &down, half_risen)[0].serving);
    }
}
