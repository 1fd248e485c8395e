//! A backend's operational state, driven by check results: HAProxy's semantics, pure
//! (no clock, no I/O), so that every rule is unit-tested against a simulated clock.
//!
//! A backend is UP or DOWN. An UP backend goes DOWN after `fall` consecutive failed
//! checks; a DOWN one comes UP after `rise` consecutive successes. In between it is
//! "UP, going down" (falling) or "DOWN, going up" (rising), as HAProxy shows it, and it
//! is checked every `fastinter` so that the decision comes quickly; a stable UP backend
//! is checked every `interval`, a fully DOWN one every `downinter`.
//!
//! The admin state (ready, drain, maint) is the operator's and overrides health in what
//! the dataplane does ([`effective_admin_state`]); checks go on in every admin state, so
//! that the operator sees whether a backend in maint is healthy before readying it.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config::{AdminState, HealthConfig};

/// What the checks say of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operational {
    /// Fully up.
    Up,
    /// Up, but its last checks failed ("UP, going down").
    Falling,
    /// Fully down.
    Down,
    /// Down, but its last checks passed ("DOWN, going up").
    Rising,
}

impl Operational {
    /// Whether the backend is in rotation (UP, falling or not).
    pub fn is_up(self) -> bool {
        matches!(self, Operational::Up | Operational::Falling)
    }
}

impl fmt::Display for Operational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operational::Up => "up",
            Operational::Falling => "up, going down",
            Operational::Down => "down",
            Operational::Rising => "down, going up",
        })
    }
}

/// The health state machine of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    up: bool,
    /// Consecutive results that disagree with `up`: failures while UP, successes while
    /// DOWN. Always below `fall` (UP) or `rise` (DOWN).
    streak: u32,
}

impl HealthState {
    /// Fully UP: how every backend starts, at agent start and when added (below).
    pub const UP: HealthState = HealthState {
        up: true,
        streak: 0,
    };
    /// Fully DOWN: a backend the adopted dataplane had taken out of rotation.
    pub const DOWN: HealthState = HealthState {
        up: false,
        streak: 0,
    };

    pub fn operational(self) -> Operational {
        match (self.up, self.streak) {
            (true, 0) => Operational::Up,
            (true, _) => Operational::Falling,
            (false, 0) => Operational::Down,
            (false, _) => Operational::Rising,
        }
    }

    pub fn is_up(self) -> bool {
        self.up
    }

    /// Takes a check result into account; returns whether the backend changed between
    /// UP and DOWN.
    pub fn record(&mut self, rules: &HealthConfig, passed: bool) -> bool {
        if passed == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.up { rules.fall } else { rules.rise };
        if self.streak < needed {
            return false;
        }
        self.up = !self.up;
        self.streak = 0;
        true
    }

    /// How long after the start of a check the next one starts.
    pub fn next_interval(self, rules: &HealthConfig) -> Duration {
        match self.operational() {
            Operational::Up => rules.interval,
            Operational::Falling | Operational::Rising => rules.fastinter,
            Operational::Down => rules.downinter,
        }
    }
}

/// What the dataplane does with a backend: its admin state, unless it is DOWN, which
/// takes it out entirely like maint (no new flows, and its established flows move to
/// the backends that own their Maglev slots — a dead server cannot finish them).
pub fn effective_admin_state(admin: AdminState, up: bool) -> AdminState {
    if up { admin } else { AdminState::Maint }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Protocol, parse_duration};

    fn rules(rise: u32, fall: u32) -> HealthConfig {
        HealthConfig {
            rise,
            fall,
            interval: Duration::from_secs(2),
            fastinter: Duration::from_millis(500),
            downinter: Duration::from_secs(5),
            ..HealthConfig::default_for(Protocol::Tcp, 80)
        }
    }

    /// Runs the checks of one backend on a simulated clock from `start`: each check at
    /// time t passes when `healthy(t)`; returns the times of the checks and of every
    /// UP/DOWN change, until `end`.
    fn simulate(
        rules: &HealthConfig,
        start: HealthState,
        end: Duration,
        healthy: impl Fn(Duration) -> bool,
    ) -> (Vec<Duration>, Vec<(Duration, bool)>) {
        let mut state = start;
        let mut now = Duration::ZERO;
        let (mut checks, mut changes) = (Vec::new(), Vec::new());
        while now <= end {
            checks.push(now);
            if state.record(rules, healthy(now)) {
                changes.push((now, state.is_up()));
            }
            now += state.next_interval(rules);
        }
        (checks, changes)
    }

    fn secs(text: &str) -> Duration {
        parse_duration(text).expect("test duration")
    }

    #[test]
    fn fall_consecutive_failures_take_it_down_at_the_fast_pace() {
        let rules = rules(2, 3);
        // Healthy until 10 s, dead afterwards.
        let (checks, changes) = simulate(&rules, HealthState::UP, secs("20s"), |t| t < secs("10s"));
        // Stable: every 2 s. First failure at 10 s, then every 500 ms: DOWN at 11 s.
        assert_eq!(
            &checks[..6],
            &["0s", "2s", "4s", "6s", "8s", "10s"].map(secs)
        );
        assert_eq!(changes, vec![(secs("11s"), false)]);
        assert_eq!(checks[6] - checks[5], secs("500ms"));
        // Fully down: every 5 s.
        assert_eq!(
            checks[checks.len() - 1] - checks[checks.len() - 2],
            secs("5s")
        );
    }

    #[test]
    fn rise_consecutive_successes_bring_it_back() {
        let rules = rules(2, 3);
        let (checks, changes) =
            simulate(&rules, HealthState::DOWN, secs("30s"), |t| t >= secs("12s"));
        // Down checks every 5 s: 0, 5, 10, 15 (first success), then 15.5: UP.
        let expected = ["0s", "5s", "10s", "15s", "15500ms"].map(secs);
        assert_eq!(&checks[..5], &expected);
        assert_eq!(changes, vec![(secs("15500ms"), true)]);
        // Back to the stable pace.
        assert_eq!(checks[6] - checks[5], secs("2s"));
    }

    #[test]
    fn states_in_between_are_shown_and_paced_fast() {
        let rules = rules(2, 3);
        let mut state = HealthState::UP;
        assert_eq!(state.operational(), Operational::Up);
        assert!(!state.record(&rules, false));
        assert_eq!(state.operational(), Operational::Falling);
        assert!(state.operational().is_up());
        assert_eq!(state.next_interval(&rules), secs("500ms"));
        assert_eq!(state.operational().to_string(), "up, going down");
        assert!(!state.record(&rules, false));
        assert!(state.record(&rules, false));
        assert_eq!(state.operational(), Operational::Down);
        assert_eq!(state.next_interval(&rules), secs("5s"));
        assert!(!state.record(&rules, true));
        assert_eq!(state.operational(), Operational::Rising);
        assert!(!state.operational().is_up());
        assert_eq!(state.operational().to_string(), "down, going up");
        assert_eq!(state.next_interval(&rules), secs("500ms"));
        assert!(state.record(&rules, true));
        assert_eq!(state, HealthState::UP);
    }

    #[test]
    fn flapping_never_crosses_without_a_full_streak() {
        let rules = rules(2, 3);
        // Two failures, one success, forever: never DOWN (fall = 3 consecutive).
        let (_, changes) = simulate(&rules, HealthState::UP, secs("60s"), |t| {
            (t.as_millis() / 500) % 3 != 2
        });
        assert!(changes.is_empty(), "{changes:?}");
        // Down and flapping the other way: one success between failures never rises.
        let (_, changes) = simulate(&rules, HealthState::DOWN, secs("60s"), |t| {
            (t.as_millis() / 500) % 2 == 0
        });
        assert!(changes.is_empty(), "{changes:?}");
        // A failure in the middle of a rise starts it again.
        let mut state = HealthState::DOWN;
        let rules = self::rules(3, 1);
        for passed in [true, true, false, true, true] {
            assert!(!state.record(&rules, passed));
        }
        assert!(state.record(&rules, true), "three in a row");
        // fall = 1: the first failure takes it down.
        assert!(state.record(&rules, false));
    }

    #[test]
    fn admin_states_override_health() {
        use AdminState::*;
        for admin in [Ready, Drain, Maint] {
            assert_eq!(effective_admin_state(admin, true), admin);
            assert_eq!(effective_admin_state(admin, false), Maint);
        }
    }
}
