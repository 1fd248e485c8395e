//! Which VIPs can take new flows right now. The agent publishes it on a watch channel
//! whenever the running state changes (configuration, admin states, health); VIP failover
//! (VRRP priority tracking) and route announcement follow it instead of polling the agent.

use std::net::IpAddr;

use crate::config::{AdminState, BackendConfig, Config, VipConfig};

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

/// The VIPs of `config`; `is_up` tells a backend's operational (health) state.
pub fn serving_vips(
    config: &Config,
    is_up: impl Fn(&VipConfig, &BackendConfig) -> bool,
) -> ServingVips {
    config
        .vips
        .iter()
        .map(|vip| VipServing {
            name: vip.name.clone(),
            address: vip.address,
            serving: vip_serving(vip, |backend| is_up(vip, backend)),
        })
        .collect()
}

/// Whether one backend of `vip` takes new flows: ready, weight above 0, and up.
pub fn vip_serving(vip: &VipConfig, is_up: impl Fn(&BackendConfig) -> bool) -> bool {
    vip.backends
        .iter()
        .any(|backend| backend.state == AdminState::Ready && backend.weight > 0 && is_up(backend))
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
        let serving = |text: &str| serving_vips(&config(text), |_, _| true)[0].serving;
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
        assert!(!serving_vips(&config, |_, _| false)[0].serving);
    }
}
