//! Which VIPs can take new flows right now. The agent publishes it on a watch channel
//! whenever the running state changes (configuration, admin states, health); VIP failover
//! (VRRP priority tracking) and route announcement follow it instead of polling the agent.
//!
//! A VIP that stopped serving comes back at once when all of its backends are UP again,
//! and otherwise only after [`settle_time`] ([`Settling`]). Its peers (the other active
//! nodes, or the VRRP backup) kept checking the same backends and have them all UP: a
//! node that takes traffic again with only the first risen backends in its Maglev table
//! sends the established connections it receives to other backends than its peers did,
//! which reset them. When the node's own path to the backends comes back, their checks
//! do not pass together: one may still wait for its timeout, the next check of another
//! may be a `downinter` away, and each needs `rise` good checks. The settle time covers
//! that; a backend that is really dead (for the peers too) delays the VIP by no more.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    config::{AdminState, BackendConfig, CheckKind, Config, VipConfig},
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

/// The VIPs of `config` that can take new flows, by the operator's states and `health`
/// (a backend's operational state), before [`Settling`] holds back those that come back.
pub fn serving_vips(
    config: &Config,
    health: impl Fn(&VipConfig, &BackendConfig) -> Operational,
) -> ServingVips {
    config
        .vips
        .iter()
        .map(|vip| VipServing {
            name: vip.name.clone(),
            address: vip.address,
            serving: vip_serving(vip, |backend| health(vip, backend).is_up()),
        })
        .collect()
}

/// How long a VIP that stopped serving must be able to serve again before it does: a
/// backend's check in progress times out (`timeout`), the next one starts at the latest
/// `downinter` later, and `rise` checks `fastinter` apart bring it UP. Nothing for a VIP
/// without checks (its backends' states change only by the operator).
pub fn settle_time(vip: &VipConfig) -> Duration {
    let health = &vip.health;
    if health.kind == CheckKind::None {
        return Duration::ZERO;
    }
    health.timeout + health.downinter + health.fastinter * health.rise
}

/// The hold of VIPs that come back: since when each has been able to serve again.
#[derive(Debug, Default)]
pub struct Settling {
    since: HashMap<String, Instant>,
}

impl Settling {
    /// Holds back the VIPs of `candidate` (what [`serving_vips`] says) that did not serve
    /// in `previous`, while some of their backends are not UP, until they have been able
    /// to serve for their [`settle_time`]. Returns what to publish, and when the next held
    /// VIP is due (to be evaluated again then).
    pub fn hold(
        &mut self,
        config: &Config,
        previous: &[VipServing],
        mut candidate: ServingVips,
        now: Instant,
        health: impl Fn(&VipConfig, &BackendConfig) -> Operational,
    ) -> (ServingVips, Option<Instant>) {
        let mut next = None::<Instant>;
        let mut held = HashMap::new();
        for (vip, config) in candidate.iter_mut().zip(&config.vips) {
            let returning = vip.serving
                && previous
                    .iter()
                    .any(|before| before.name == vip.name && !before.serving);
            let incomplete = config
                .backends
                .iter()
                .any(|backend| takes_new_flows(backend) && !health(config, backend).is_up());
            if !returning || !incomplete {
                continue;
            }
            let since = self.since.get(&vip.name).copied().unwrap_or(now);
            let due = since + settle_time(config);
            if now < due {
                vip.serving = false;
                held.insert(vip.name.clone(), since);
                next = Some(next.map_or(due, |next| next.min(due)));
            }
        }
        self.since = held;
        (candidate, next)
    }
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
        let serving = |text: &str| serving_vips(&config(text), |_, _| Operational::Up)[0].serving;
        assert!(serving(
            "[[vip.backend]]\naddress = \"198.18.0.11\"\n[[vip.backend]]\naddress = \"198.18.0.12\"\nstate = \"drain\"\n"
        ));
        assert!(!serving(
            "[[vip.backend]]\naddress = \"198.18.0.11\"\nstate = \"maint\"\n[[vip.backend]]\naddress = \"198.18.0.12\"\nweight = 0\n"
        ));
        assert!(!serving(""));
    }

    #[test]
    fn a_vip_that_comes_back_waits_until_its_backends_can_have_risen() {
        let config = config(
            "[vip.health]\ninterval = \"200ms\"\ntimeout = \"300ms\"\nrise = 2\n\
             [[vip.backend]]\naddress = \"198.18.0.11\"\n[[vip.backend]]\naddress = \"198.18.0.12\"\n",
        );
        let settle = settle_time(&config.vips[0]);
        assert_eq!(settle, Duration::from_millis(300 + 200 + 2 * 200));
        let start = Instant::now();
        let mut settling = Settling::default();
        let second = "198.18.0.12".parse::<IpAddr>().unwrap();
        // The first backend is UP again, the second still DOWN (its check is in flight).
        let partly = |_: &VipConfig, backend: &BackendConfig| {
            if backend.address == second {
                Operational::Down
            } else {
                Operational::Up
            }
        };
        let up = serving_vips(&config, |_, _| Operational::Up);
        let down = serving_vips(&config, |_, _| Operational::Down);
        // At start, and while serving, nothing is held.
        assert_eq!(
            settling.hold(&config, &[], up.clone(), start, partly),
            (up.clone(), None)
        );
        assert_eq!(
            settling.hold(&config, &up, up.clone(), start, partly),
            (up.clone(), None)
        );
        // Able to serve again: held until the settle time has passed since then.
        let (held, next) = settling.hold(&config, &down, up.clone(), start, partly);
        assert!(!held[0].serving);
        assert_eq!(next, Some(start + settle));
        let (held, next) = settling.hold(&config, &held, up.clone(), start + settle / 2, partly);
        assert!(!held[0].serving, "still settling");
        assert_eq!(next, Some(start + settle), "counted from the first time");
        let (back, next) = settling.hold(&config, &held, up.clone(), start + settle, partly);
        assert!(back[0].serving);
        assert_eq!(next, None);
        // Down again in between: the hold starts over.
        let (held, _) = settling.hold(&config, &down, up.clone(), start, partly);
        let (_, _) = settling.hold(&config, &held, down.clone(), start + settle / 2, partly);
        let (held, next) = settling.hold(&config, &down, up.clone(), start + settle, partly);
        assert!(!held[0].serving);
        assert_eq!(next, Some(start + settle * 2));
        // With every backend UP again nothing waits.
        let (back, next) = settling.hold(&config, &down, up.clone(), start, |_, _| Operational::Up);
        assert!(back[0].serving);
        assert_eq!(next, None);
        // Without checks nothing waits.
        let unchecked = self::config(
            "[vip.health]\nkind = \"none\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\n",
        );
        assert_eq!(settle_time(&unchecked.vips[0]), Duration::ZERO);
    }

    #[test]
    fn a_vip_whose_backends_are_all_down_does_not_serve() {
        let config = config("[[vip.backend]]\naddress = \"198.18.0.11\"\n");
        assert!(!serving_vips(&config, |_, _| Operational::Down)[0].serving);
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
        let now = Instant::now();
        let mut settling = Settling::default();
        type Health<'a> = &'a dyn Fn(&VipConfig, &BackendConfig) -> Operational;
        let mut publish = |previous: &[VipServing], config: &Config, health: Health| {
            let candidate = serving_vips(config, health);
            settling.hold(config, previous, candidate, now, health).0[0].serving
        };
        let down = serving_vips(&config, |_, _| Operational::Down);
        assert!(!publish(&down, &config, &half_risen));
        // Both risen: back.
        let up = serving_vips(&config, |_, _| Operational::Up);
        assert!(publish(&down, &config, &|_, _| Operational::Up));
        // A serving VIP does not wait for a backend that rises (it only gains one).
        assert!(publish(&up, &config, &half_risen));
        // A backend that rises while out of rotation by the operator does not hold it.
        let maint = format!(
            "[[vip.backend]]\naddress = \"198.18.0.11\"\n[[vip.backend]]\naddress = \"{second}\"\nstate = \"maint\"\n"
        );
        assert!(publish(&down, &self::config(&maint), &half_risen));
    }
}
