//! Health checks: one tokio task per checked backend (no thread per check), each bounded
//! by its own timeout ([`check`]) and owning the backend's state machine ([`state`]),
//! which paces it, so a black-holed backend never delays another's checks. Tasks report
//! every result with the state it led to on a channel; the agent hands them to
//! [`HealthMonitor::record`] and re-plans the dataplane when a backend changes between
//! UP and DOWN.
//!
//! The monitor follows the running configuration ([`HealthMonitor::sync`]): a backend
//! whose check is unchanged keeps its task and its state across reloads and API changes.

pub mod check;
pub mod state;

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::BuildHasher,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use tokio::{
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, sleep_until},
};

use crate::config::{AdminState, BackendConfig, CheckKind, Config, HealthConfig, VipConfig};
pub use check::{CheckReason, CheckResult, Checker, Target};
pub use state::{HealthState, Operational, effective_admin_state};

/// A backend of a VIP.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub vip: String,
    pub address: IpAddr,
}

/// One check's result, as a task reports it.
#[derive(Debug)]
pub struct Report {
    pub key: BackendKey,
    /// Which task sent it: a report of a task stopped since is ignored.
    generation: u64,
    pub result: CheckResult,
    pub at: SystemTime,
    /// The backend's state after this result, and whether it crossed UP/DOWN.
    state: HealthState,
    changed: bool,
}

/// What is known of one backend's health.
#[derive(Clone, Debug)]
pub struct BackendHealth {
    pub kind: CheckKind,
    pub state: HealthState,
    /// The last check's result and when it ended.
    pub last: Option<(CheckResult, SystemTime)>,
    /// When it last changed between UP and DOWN (or was first seen).
    pub changed_at: SystemTime,
    pub checks: u64,
    pub failed_checks: u64,
    /// Changes from UP to DOWN (HAProxy's `chkdown`).
    pub down_transitions: u64,
    /// Time spent DOWN before the current state (see [`BackendHealth::downtime`]).
    pub past_downtime: Duration,
}

impl BackendHealth {
    /// Total time spent DOWN up to `now`, the current DOWN period included (HAProxy's
    /// `downtime`).
    pub fn downtime(&self, now: SystemTime) -> Duration {
        let current = if self.state.is_up() {
            Duration::ZERO
        } else {
            now.duration_since(self.changed_at).unwrap_or_default()
        };
        self.past_downtime + current
    }
}

/// An UP/DOWN change, to log and act on.
#[derive(Clone, Debug)]
pub struct Transition {
    pub key: BackendKey,
    pub up: bool,
    pub result: CheckResult,
}

struct Monitored {
    /// What the task checks: a change restarts it.
    rules: HealthConfig,
    target: Target,
    generation: u64,
    /// The task running the checks (none for kind = "none"); aborted on drop.
    _task: Option<AbortOnDrop>,
    health: BackendHealth,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The health of every backend of the running configuration.
pub struct HealthMonitor {
    checker: Checker,
    reports: mpsc::UnboundedSender<Report>,
    backends: BTreeMap<BackendKey, Monitored>,
    next_generation: u64,
}

impl HealthMonitor {
    /// A monitor checking nothing yet, and the channel its checks report on.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Report>) {
        let (reports, receiver) = mpsc::unbounded_channel();
        let monitor = HealthMonitor {
            checker: Checker::new(),
            reports,
            backends: BTreeMap::new(),
            next_generation: 0,
        };
        (monitor, receiver)
    }

    /// Starts, restarts or stops checks so that exactly the backends of `config` are
    /// checked, as their VIPs say. A backend seen for the first time starts UP — or
    /// DOWN if it is in `down` (taken out of rotation by a previous agent whose dataplane
    /// was adopted); its first check comes at a random point of its first interval when
    /// `spread` (agent start: thousands of checks do not fire at once), else at once (an
    /// added backend is confirmed quickly). A backend whose check changed keeps its
    /// state, with checks of the new kind.
    pub fn sync(&mut self, config: &Config, down: &BTreeSet<BackendKey>, spread: bool) {
        let mut wanted = BTreeSet::new();
        for vip in &config.vips {
            for backend in &vip.backends {
                let key = BackendKey {
                    vip: vip.name.clone(),
                    address: backend.address,
                };
                let target = target_of(vip, backend);
                wanted.insert(key.clone());
                if let Some(monitored) = self.backends.get(&key)
                    && monitored.rules == vip.health
                    && monitored.target == target
                {
                    continue;
                }
                let state = match self.backends.remove(&key) {
                    Some(old) => old.health.state,
                    None if down.contains(&key) => HealthState::DOWN,
                    None => HealthState::UP,
                };
                // Kind "none" is always UP.
                let state = if vip.health.kind == CheckKind::None {
                    HealthState::UP
                } else {
                    state
                };
                let generation = self.next_generation;
                self.next_generation += 1;
                let first = if spread {
                    jitter(&key, state.next_interval(&vip.health))
                } else {
                    Duration::ZERO
                };
                let task = (vip.health.kind != CheckKind::None).then(|| {
                    AbortOnDrop(tokio::spawn(run_checks(
                        self.checker.clone(),
                        key.clone(),
                        vip.health.clone(),
                        target.clone(),
                        state,
                        first,
                        generation,
                        self.reports.clone(),
                    )))
                });
                self.backends.insert(
                    key,
                    Monitored {
                        rules: vip.health.clone(),
                        target,
                        generation,
                        _task: task,
                        health: BackendHealth {
                            kind: vip.health.kind,
                            state,
                            last: None,
                            changed_at: SystemTime::now(),
                            checks: 0,
                            failed_checks: 0,
                            down_transitions: 0,
                            past_downtime: Duration::ZERO,
                        },
                    },
                );
            }
        }
        self.backends.retain(|key, _| wanted.contains(key));
    }

    /// Takes a check's report into account; returns the UP/DOWN change it made, if any.
    pub fn record(&mut self, report: Report) -> Option<Transition> {
        let monitored = self.backends.get_mut(&report.key)?;
        if monitored.generation != report.generation {
            return None;
        }
        let health = &mut monitored.health;
        health.checks += 1;
        if !report.result.passed {
            health.failed_checks += 1;
        }
        health.state = report.state;
        if report.changed {
            if health.state.is_up() {
                health.past_downtime += report
                    .at
                    .duration_since(health.changed_at)
                    .unwrap_or_default();
            } else {
                health.down_transitions += 1;
            }
            health.changed_at = report.at;
        }
        health.last = Some((report.result.clone(), report.at));
        let up = health.state.is_up();
        report.changed.then_some(Transition {
            key: report.key,
            up,
            result: report.result,
        })
    }

    pub fn get(&self, vip: &str, address: IpAddr) -> Option<&BackendHealth> {
        self.backends
            .get(&BackendKey {
                vip: vip.to_owned(),
                address,
            })
            .map(|m| &m.health)
    }

    /// A backend's operational state; one not checked yet is UP (see [`Self::sync`]).
    pub fn operational(&self, vip: &str, address: IpAddr) -> Operational {
        self.get(vip, address)
            .map_or(Operational::Up, |h| h.state.operational())
    }

    /// Whether a backend is UP (one not checked yet counts as UP: see [`Self::sync`]).
    pub fn is_up(&self, vip: &str, address: IpAddr) -> bool {
        self.operational(vip, address).is_up()
    }

    /// What the dataplane is programmed from: `config` with every DOWN backend in maint.
    pub fn effective(&self, config: &Config) -> Config {
        let mut effective = config.clone();
        for vip in &mut effective.vips {
            for backend in &mut vip.backends {
                backend.state =
                    effective_admin_state(backend.state, self.is_up(&vip.name, backend.address));
            }
        }
        effective
    }
}

/// The backends a pinned dataplane had taken out of rotation although their admin state
/// lets them take flows: a previous agent found them DOWN.
pub fn down_in_dataplane<'a>(
    config: &Config,
    programmed: impl Iterator<Item = &'a crate::dataplane::plan::VipState>,
) -> BTreeSet<BackendKey> {
    let mut down = BTreeSet::new();
    for vip in programmed {
        let Some(configured) = config.vips.iter().find(|c| c.name == vip.name) else {
            continue;
        };
        for (address, state) in &vip.backends {
            let admin = configured
                .backends
                .iter()
                .find(|b| b.address == *address)
                .map(|b| b.state);
            if !state.accepts && admin.is_some_and(|a| a != AdminState::Maint) {
                down.insert(BackendKey {
                    vip: vip.name.clone(),
                    address: *address,
                });
            }
        }
    }
    down
}

/// What a backend's checks connect to: `health.port`, else the port the backend serves
/// on (its NAT port, else the VIP's).
fn target_of(vip: &VipConfig, backend: &BackendConfig) -> Target {
    Target {
        address: backend.address,
        port: vip.health.port.or(backend.port).unwrap_or(vip.port),
        vip: vip.address,
        vip_port: vip.port,
    }
}

/// A random point of `interval`, different for every backend and agent run.
fn jitter(key: &BackendKey, interval: Duration) -> Duration {
    let nanos = interval.as_nanos().max(1) as u64;
    Duration::from_nanos(std::hash::RandomState::new().hash_one(key) % nanos)
}

/// One backend's checks, forever: each starts `next_interval` after the previous one
/// started (or at once when the previous one took longer).
#[allow(clippy::too_many_arguments)]
async fn run_checks(
    checker: Checker,
    key: BackendKey,
    rules: HealthConfig,
    target: Target,
    mut state: HealthState,
    first: Duration,
    generation: u64,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut next = Instant::now() + first;
    loop {
        sleep_until(next).await;
        let started = Instant::now();
        let result = checker.check(&rules, &target).await;
        let changed = state.record(&rules, result.passed);
        next = started + state.next_interval(&rules);
        let report = Report {
            key: key.clone(),
            generation,
            result,
            at: SystemTime::now(),
            state,
            changed,
        };
        if reports.send(report).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(health: &str, backends: &[&str]) -> Config {
        let mut text = format!(
            "[agent]\ninterfaces = [\"lo\"]\n[[vip]]\nname = \"web\"\naddress = \"127.0.0.1\"\nport = 1\n[vip.health]\n{health}"
        );
        for address in backends {
            text += &format!("[[vip.backend]]\naddress = \"{address}\"\n");
        }
        Config::parse(&text, "test.toml").expect("valid")
    }

    #[test]
    fn checks_go_to_the_port_the_backend_serves_on() {
        let text = "[agent]\ninterfaces = [\"lo\"]\n[[vip]]\nname = \"nat\"\naddress = \"127.0.0.1\"\n\
                    port = 8080\nforwarding = \"nat\"\n[[vip.backend]]\naddress = \"127.0.0.2\"\nport = 80\n\
                    [[vip.backend]]\naddress = \"127.0.0.3\"\n";
        let mut config = Config::parse(text, "test.toml").expect("valid");
        let vip = &config.vips[0];
        assert_eq!(target_of(vip, &vip.backends[0]).port, 80, "the NAT port");
        assert_eq!(
            target_of(vip, &vip.backends[1]).port,
            8080,
            "the VIP's port"
        );
        config.vips[0].health.port = Some(9000);
        let vip = &config.vips[0];
        assert_eq!(target_of(vip, &vip.backends[0]).port, 9000, "health.port");
    }

    fn key(address: &str) -> BackendKey {
        BackendKey {
            vip: "web".into(),
            address: address.parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn failing_checks_take_a_backend_down_and_out_of_the_effective_config() {
        // Nothing listens on 127.0.0.1:1 (or 127.0.0.2:1): connection refused.
        let config = config(
            "interval = \"10ms\"\nfall = 2\ntimeout = \"200ms\"\n",
            &["127.0.0.1", "127.0.0.2"],
        );
        let (mut monitor, mut reports) = HealthMonitor::new();
        monitor.sync(&config, &BTreeSet::new(), false);
        assert!(monitor.is_up("web", "127.0.0.1".parse().unwrap()));
        let mut down = BTreeSet::new();
        while down.len() < 2 {
            let report = reports.recv().await.expect("a report");
            assert_eq!(report.result.reason, CheckReason::ConnectionRefused);
            if let Some(transition) = monitor.record(report) {
                assert!(!transition.up);
                down.insert(transition.key);
            }
        }
        let effective = monitor.effective(&config);
        assert!(
            effective.vips[0]
                .backends
                .iter()
                .all(|b| b.state == AdminState::Maint)
        );
        let health = monitor.get("web", "127.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(health.state.operational(), Operational::Down);
        assert!(health.checks >= 2 && health.failed_checks == health.checks);
        assert_eq!(health.down_transitions, 1);
        let later = health.changed_at + Duration::from_secs(3);
        assert_eq!(health.downtime(later), Duration::from_secs(3));

        // An unchanged check keeps its state; a removed backend is forgotten; a stale
        // report (of a stopped task) is ignored.
        let one = self::config(
            "interval = \"10ms\"\nfall = 2\ntimeout = \"200ms\"\n",
            &["127.0.0.1"],
        );
        monitor.sync(&one, &BTreeSet::new(), false);
        assert!(!monitor.is_up("web", "127.0.0.1".parse().unwrap()));
        assert!(monitor.get("web", "127.0.0.2".parse().unwrap()).is_none());
        let none = self::config("kind = \"none\"\n", &["127.0.0.1"]);
        monitor.sync(&none, &BTreeSet::new(), false);
        assert!(monitor.is_up("web", "127.0.0.1".parse().unwrap()));
        while let Ok(report) = reports.try_recv() {
            assert!(monitor.record(report).is_none());
        }
    }

    /// A reload or the API removing a backend stops its check, killing a running
    /// command's whole process group.
    #[tokio::test]
    async fn removing_a_backend_kills_its_running_exec_check() {
        use check::tests::{dies, grandchild_command, grandchild_pid, pid_file};
        let pid_file = pid_file("monitor-grandchild");
        let health = format!(
            "kind = \"exec\"\ninterval = \"60s\"\ntimeout = \"30s\"\n{}",
            grandchild_command(&pid_file)
        );
        let (mut monitor, _reports) = HealthMonitor::new();
        monitor.sync(&config(&health, &["127.0.0.2"]), &BTreeSet::new(), false);
        let pid = grandchild_pid(&pid_file).await;
        monitor.sync(&config(&health, &[]), &BTreeSet::new(), false);
        assert!(dies(pid).await, "the check command's child {pid} survived");
    }

    /// A thousand backends from one monitor: each is checked at its own pace, spread over
    /// the interval, none waiting for another. (Results are not asserted: under a busy
    /// test run the listener's backlog may overflow and some connects time out.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_backends_are_checked_concurrently() {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let addresses: Vec<String> = (0..1000)
            .map(|i| format!("127.1.{}.{}", i / 250, 1 + i % 250))
            .collect();
        let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let mut config = config("interval = \"200ms\"\n", &addresses);
        config.vips[0].health.port = Some(port);
        let (mut monitor, mut reports) = HealthMonitor::new();
        monitor.sync(&config, &BTreeSet::new(), true);
        let mut checked = BTreeMap::new();
        let started = Instant::now();
        while checked.len() < addresses.len() || checked.values().any(|n| *n < 2) {
            let report = reports.recv().await.expect("reports");
            *checked.entry(report.key.address).or_insert(0) += 1;
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} of 1000 checked twice",
                checked.values().filter(|n| **n >= 2).count()
            );
        }
    }

    #[test]
    fn backends_a_previous_agent_took_out_start_down() {
        let config = config("kind = \"none\"\n", &["127.0.0.1"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let (mut monitor, _reports) = HealthMonitor::new();
        let tcp = self::config("interval = \"1m\"\n", &["127.0.0.1"]);
        monitor.sync(&tcp, &BTreeSet::from([key("127.0.0.1")]), true);
        assert!(!monitor.is_up("web", "127.0.0.1".parse().unwrap()));
        // Kind none is always up.
        let (mut monitor, _reports) = HealthMonitor::new();
        monitor.sync(&config, &BTreeSet::from([key("127.0.0.1")]), true);
        assert!(monitor.is_up("web", "127.0.0.1".parse().unwrap()));
    }

    /// What the planner makes of a VIP whose backends are all DOWN: a table of
    /// `NO_BACKEND` slots (the program drops and counts new flows, `drop_no_backend`),
    /// and backends that stop accepting flows only after no slot names them.
    #[test]
    fn a_vip_whose_backends_are_all_down_gets_a_table_without_backends() {
        use crate::dataplane::plan::{MapWrite, Reconciler};
        let config = config("kind = \"none\"\n", &["127.0.0.1", "127.0.0.2"]);
        let mut effective = config.clone();
        for backend in &mut effective.vips[0].backends {
            backend.state = effective_admin_state(backend.state, false);
        }
        let (_, up) = Reconciler::new(1 << 20).plan(&config).unwrap();
        let (writes, down) = up.plan(&effective).unwrap();
        let vip = down.vips().next().unwrap();
        assert!(vip.table.iter().all(|slot| *slot == lb_common::NO_BACKEND));
        assert!(vip.backends.values().all(|b| !b.accepts && b.weight == 0));
        let patch = writes
            .iter()
            .position(|w| matches!(w, MapWrite::PatchRing { .. }))
            .expect("the table is patched");
        let closed: Vec<usize> = (0..writes.len())
            .filter(|&i| matches!(&writes[i], MapWrite::SetBackend { backend, .. } if backend.flags & lb_common::BACKEND_ACCEPTS_FLOWS == 0))
            .collect();
        assert_eq!(closed.len(), 2, "{writes:?}");
        assert!(closed.iter().all(|&i| i > patch), "{writes:?}");
        // Back UP: the same table as before, so every flow returns where it was.
        let (_, again) = down.plan(&config).unwrap();
        assert_eq!(
            again.vips().next().unwrap().table,
            up.vips().next().unwrap().table
        );
    }

    #[test]
    fn a_pinned_dataplane_tells_which_backends_were_down() {
        use crate::dataplane::plan::Reconciler;
        let mut config = config(
            "kind = \"none\"\n",
            &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        );
        config.vips[0].backends[2].state = AdminState::Maint;
        let mut effective = config.clone();
        effective.vips[0].backends[0].state = AdminState::Maint;
        let (_, programmed) = Reconciler::new(1 << 20).plan(&effective).unwrap();
        // Backend 1 was out for its health; backend 3 is in maint by the operator's will.
        assert_eq!(
            down_in_dataplane(&config, programmed.vips()),
            BTreeSet::from([key("127.0.0.1")])
        );
        config.vips[0].name = "renamed".into();
        assert!(down_in_dataplane(&config, programmed.vips()).is_empty());
    }

    /// UP→DOWN changes are counted, and DOWN periods add up to the downtime, the
    /// current one included.
    #[test]
    fn transitions_and_downtime_are_kept_incrementally() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let config = config("interval = \"1h\"\n", &["127.0.0.1"]);
        let (mut monitor, _reports) = HealthMonitor::new();
        monitor.sync(&config, &BTreeSet::new(), false);
        let generation = monitor.backends[&key("127.0.0.1")].generation;
        let start = monitor.get("web", ip("127.0.0.1")).unwrap().changed_at;
        let report = |seconds: u64, up: bool| Report {
            key: key("127.0.0.1"),
            generation,
            result: CheckResult {
                passed: up,
                reason: CheckReason::ConnectionRefused,
                duration: Duration::from_millis(1),
            },
            at: start + Duration::from_secs(seconds),
            state: if up {
                HealthState::UP
            } else {
                HealthState::DOWN
            },
            changed: true,
        };
        for (at, up) in [(10, false), (15, true), (20, false)] {
            monitor.record(report(at, up)).expect("a change");
        }
        let health = monitor.get("web", ip("127.0.0.1")).unwrap();
        assert_eq!(health.down_transitions, 2);
        assert_eq!(health.past_downtime, Duration::from_secs(5));
        assert_eq!(
            health.downtime(start + Duration::from_secs(27)),
            Duration::from_secs(12)
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn jitter_stays_within_the_interval() {
        for n in 0..100 {
            let key = BackendKey {
                vip: format!("v{n}"),
                address: "127.0.0.1".parse().unwrap(),
            };
            assert!(jitter(&key, Duration::from_millis(200)) < Duration::from_millis(200));
        }
        assert_eq!(jitter(&key("127.0.0.1"), Duration::ZERO), Duration::ZERO);
    }
}
