//! The backends of a frontend, as the agent sees them, and which one takes the next
//! request.
//!
//! The pool follows the agent: [`follow_agent`] asks its control API for the VIP
//! (`GET /v1/vips/{name}`) every [`POLL_INTERVAL`], so the health checks run once, in the
//! agent, for both tiers. A backend takes new requests only when it is ready (not drain,
//! not maint), weighted and UP; requests already sent to it finish. When the agent cannot
//! be reached, the last known set stays.
//!
//! Selection is smooth weighted round-robin (nginx's): each pick adds every eligible
//! backend's weight to its credit, takes the backend with the most credit and charges it
//! the total. Weights are followed exactly over any window of `total weight` requests,
//! and picks of one backend are spread out rather than bunched.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    api::model::{API_VERSION, VipView},
    cli::{Client, escape},
    config::AdminState,
    health::Operational,
};

/// How often the pool asks the agent.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Bound of one question to the agent.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// A backend as the pool knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolMember {
    pub address: SocketAddr,
    pub weight: u32,
    pub state: AdminState,
    pub health: Operational,
}

impl PoolMember {
    /// Whether it takes new requests.
    pub fn eligible(&self) -> bool {
        self.state == AdminState::Ready && self.weight > 0 && self.health.is_up()
    }
}

/// The members of a VIP from the agent's view of it: each at its NAT port, else the
/// VIP's port.
pub fn members(vip: &VipView) -> Vec<PoolMember> {
    vip.backends
        .iter()
        .map(|b| PoolMember {
            address: SocketAddr::new(b.address, b.port.unwrap_or(vip.port)),
            weight: b.weight,
            state: b.state,
            health: b.health.state,
        })
        .collect()
}

#[derive(Debug)]
pub struct Pool {
    vip: String,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    members: Vec<PoolMember>,
    /// Smooth weighted round-robin credit, by member index.
    credit: Vec<i64>,
    /// Whether the agent answered the last question (for logging changes only).
    agent_reachable: Option<bool>,
}

impl Pool {
    pub fn new(vip: &str) -> Pool {
        Pool {
            vip: vip.to_owned(),
            inner: Mutex::default(),
        }
    }

    pub fn vip(&self) -> &str {
        &self.vip
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (plain assignments).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the members; those that stay keep their credit. Returns whether anything
    /// changed.
    pub fn update(&self, members: Vec<PoolMember>) -> bool {
        let mut inner = self.lock();
        if inner.members == members {
            return false;
        }
        let credit = members
            .iter()
            .map(|m| {
                inner
                    .members
                    .iter()
                    .position(|old| old.address == m.address)
                    .map_or(0, |i| inner.credit[i])
            })
            .collect();
        inner.members = members;
        inner.credit = credit;
        true
    }

    pub fn members(&self) -> Vec<PoolMember> {
        self.lock().members.clone()
    }

    /// The backend for the next request, other than `except` (a backend that just failed
    /// to connect); `None` when no other backend is eligible.
    pub fn pick(&self, except: Option<SocketAddr>) -> Option<SocketAddr> {
        let mut inner = self.lock();
        let Inner {
            members, credit, ..
        } = &mut *inner;
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, member) in members.iter().enumerate() {
            if !member.eligible() || Some(member.address) == except {
                continue;
            }
            credit[i] += i64::from(member.weight);
            total += i64::from(member.weight);
            if best.is_none_or(|b| credit[i] > credit[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        credit[best] -= total;
        Some(members[best].address)
    }

    /// Records whether the agent answered; logs changes only.
    fn agent_reachable(&self, reachable: bool, error: &str) {
        let mut inner = self.lock();
        if inner.agent_reachable == Some(reachable) {
            return;
        }
        inner.agent_reachable = Some(reachable);
        let known = inner.members.len();
        drop(inner);
        if reachable {
            info!(vip = %self.vip, "the agent answers: following its backend states");
        } else {
            warn!(
                vip = %self.vip,
                "cannot ask the agent for the backends ({error}); keeping the last known {known}"
            );
        }
    }
}

/// Keeps `pool` in step with the agent at `socket`, until the task is dropped.
pub async fn follow_agent(pool: Arc<Pool>, socket: std::path::PathBuf) {
    let client = Client::new(socket).with_timeout(POLL_TIMEOUT);
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        poll(&pool, &client).await;
    }
}

/// Asks the agent once for `pool`'s backends, so that a starting proxy serves its first
/// request with them (a new proxy taking over from an old one would otherwise answer 503
/// until its first poll); an agent that does not answer is logged, and the proxy starts
/// with no backend until it does.
pub async fn first_sync(pool: &Pool, socket: std::path::PathBuf) {
    poll(pool, &Client::new(socket).with_timeout(POLL_TIMEOUT)).await;
}

/// One poll of the agent: the pool takes the backends it reports.
async fn poll(pool: &Pool, client: &Client) {
    let path = format!("/{API_VERSION}/vips/{}", escape(pool.vip()));
    let client = client.clone();
    // The CLI's client is blocking; a poll is a few hundred bytes over a Unix socket.
    let answer = tokio::task::spawn_blocking(move || client.request("GET", &path, None)).await;
    let view = match answer {
        Ok(Ok(response)) if response.status == 200 => {
            serde_json::from_slice::<VipView>(&response.body).map_err(|e| e.to_string())
        }
        Ok(Ok(response)) => Err(format!(
            "HTTP {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match view {
        Ok(view) => {
            pool.agent_reachable(true, "");
            let members = members(&view);
            if pool.update(members.clone()) {
                let eligible: Vec<String> = members
                    .iter()
                    .filter(|m| m.eligible())
                    .map(|m| m.address.to_string())
                    .collect();
                info!(
                    vip = %pool.vip(),
                    "backends: {} of {} take requests: {}",
                    eligible.len(),
                    members.len(),
                    eligible.join(" ")
                );
            }
        }
        Err(error) => pool.agent_reachable(false, &error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8, weight: u32) -> PoolMember {
        PoolMember {
            address: SocketAddr::from(([198, 18, 0, n], 80)),
            weight,
            state: AdminState::Ready,
            health: Operational::Up,
        }
    }

    fn picks(pool: &Pool, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| match pool.pick(None).map(|a| a.ip()) {
                Some(std::net::IpAddr::V4(ip)) => ip.octets()[3],
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn weights_are_followed_and_spread() {
        let pool = Pool::new("web");
        pool.update(vec![member(11, 100), member(12, 200), member(13, 100)]);
        let sequence = picks(&pool, 8);
        // A cycle of four: 12 twice, 11 and 13 once each.
        assert_eq!(sequence, [12, 11, 13, 12, 12, 11, 13, 12]);
        let counts = |seq: &[u8], n| seq.iter().filter(|x| **x == n).count();
        let long = picks(&pool, 400);
        assert_eq!(
            (counts(&long, 11), counts(&long, 12), counts(&long, 13)),
            (100, 200, 100)
        );
    }

    #[test]
    fn only_ready_weighted_and_up_backends_take_requests() {
        let pool = Pool::new("web");
        let mut drained = member(12, 100);
        drained.state = AdminState::Drain;
        let mut maint = member(13, 100);
        maint.state = AdminState::Maint;
        let mut down = member(14, 100);
        down.health = Operational::Down;
        let mut rising = member(15, 100);
        rising.health = Operational::Rising;
        let mut falling = member(16, 100);
        falling.health = Operational::Falling;
        pool.update(vec![
            member(11, 100),
            drained,
            maint,
            down,
            rising,
            falling,
            member(17, 0),
        ]);
        let mut seen = picks(&pool, 10);
        seen.sort();
        seen.dedup();
        assert_eq!(seen, [11, 16]);
    }

    #[test]
    fn a_retry_avoids_the_failed_backend_and_nothing_eligible_is_none() {
        let pool = Pool::new("web");
        assert_eq!(pool.pick(None), None);
        pool.update(vec![member(11, 100), member(12, 100)]);
        let first = pool.pick(None).unwrap();
        for _ in 0..5 {
            assert_ne!(pool.pick(Some(first)), Some(first));
        }
        pool.update(vec![member(11, 100)]);
        assert_eq!(
            pool.pick(Some(SocketAddr::from(([198, 18, 0, 11], 80)))),
            None
        );
    }

    #[test]
    fn members_take_the_nat_port_else_the_vip_port() {
        let view: VipView = serde_json::from_value(serde_json::json!({
            "name": "web", "address": "198.19.0.10", "port": 443, "protocol": "tcp",
            "forwarding": "nat", "hash": "5-tuple", "table_size": 251,
            "backends": [
                {"address": "198.18.0.11", "weight": 100, "state": "ready", "flows": 0, "port": 8080,
                 "health": {"check": "tcp", "state": "up", "since_unix_ms": 0, "checks": 1, "failed_checks": 0}},
                {"address": "198.18.0.12", "weight": 50, "state": "drain", "flows": 0,
                 "health": {"check": "tcp", "state": "down", "since_unix_ms": 0, "checks": 1, "failed_checks": 1}}
            ]
        }))
        .expect("a VipView");
        let members = members(&view);
        assert_eq!(members[0].address, "198.18.0.11:8080".parse().unwrap());
        assert_eq!(members[1].address, "198.18.0.12:443".parse().unwrap());
        assert_eq!(
            (members[1].state, members[1].health),
            (AdminState::Drain, Operational::Down)
        );
    }
}
