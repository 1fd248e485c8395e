//! The RFC 5798 §6.4 state machine of one VRRP instance, without I/O or clock: events and
//! timer expiries go in with the current time, actions for the I/O side come out.
//!
//! Beyond the RFC: a Fault state while the interface is down (as keepalived has), a
//! preemption delay, priority changes from tracking, a periodic gratuitous ARP refresh
//! while master, and the end of a split brain handled on both sides: a master that gives
//! way sends one last advert (with its own, lower priority), and a master that hears a
//! lower-priority master re-announces its addresses, since the other one may have taken
//! the clients' ARP caches (keepalived's `higher_prio_send_advert` and
//! `garp_lower_prio_repeat`).

use std::{fmt, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Initialize,
    Backup,
    Master,
    /// The interface is down: no adverts, no addresses.
    Fault,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        })
    }
}

/// What an instance is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The configured priority (tracking lowers the effective one).
    pub priority: u8,
    /// Advertisement_Interval; a multiple of 10 ms.
    pub advert_interval: Duration,
    pub preempt: bool,
    /// How long a lower-priority master is accepted before preempting it.
    pub preempt_delay: Duration,
    /// Gratuitous ARP / unsolicited NA refresh while master (None: never).
    pub announce_refresh: Option<Duration>,
    /// This node's address adverts come from; the higher one wins a priority tie.
    pub primary: IpAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Startup,
    Shutdown,
    Advert {
        from: IpAddr,
        priority: u8,
        max_advert_centis: u16,
    },
    InterfaceDown,
    InterfaceUp,
    /// Tracking changed the effective priority.
    Priority(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    SendAdvert {
        priority: u8,
    },
    HoldAddresses,
    ReleaseAddresses,
    /// Gratuitous ARP / unsolicited NA burst for every held address.
    Announce,
    Transition {
        from: State,
        to: State,
        reason: &'static str,
    },
}

/// One instance. Times are offsets from any fixed origin (the I/O side uses an
/// `Instant`, the tests a simulated clock).
#[derive(Clone, Debug)]
pub struct Machine {
    settings: Settings,
    /// The effective priority.
    priority: u8,
    state: State,
    master_adver_interval: Duration,
    adver_timer: Option<Duration>,
    master_down_timer: Option<Duration>,
    refresh_timer: Option<Duration>,
    /// The current master's address, as far as this node knows.
    master: Option<IpAddr>,
    /// Since when a lower-priority master has been accepted (preempt_delay).
    lower_master_since: Option<Duration>,
    /// When this master last re-announced because of a lower-priority master.
    last_reannounce: Option<Duration>,
}

impl Machine {
    pub fn new(settings: Settings) -> Machine {
        Machine {
            priority: settings.priority,
            master_adver_interval: settings.advert_interval,
            settings,
            state: State::Initialize,
            adver_timer: None,
            master_down_timer: None,
            refresh_timer: None,
            master: None,
            lower_master_since: None,
            last_reannounce: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The effective priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    pub fn master_adver_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256.
    pub fn skew_time(&self) -> Duration {
        self.master_adver_interval * (256 - u32::from(self.priority)) / 256
    }

    /// Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        self.master_adver_interval * 3 + self.skew_time()
    }

    /// When `on_timer` has something to do next.
    pub fn next_deadline(&self) -> Option<Duration> {
        [self.adver_timer, self.master_down_timer, self.refresh_timer]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match (self.state, event) {
            (State::Initialize, Event::Startup) | (State::Fault, Event::InterfaceUp) => {
                let reason = if event == Event::Startup {
                    "startup"
                } else {
                    "interface up"
                };
                if self.priority == 255 {
                    self.become_master(now, reason, &mut actions);
                } else {
                    self.become_backup(now, None, reason, &mut actions);
                }
            }
            (
                State::Backup,
                Event::Advert {
                    from,
                    priority,
                    max_advert_centis,
                },
            ) => self.backup_advert(now, from, priority, max_advert_centis),
            (
                State::Master,
                Event::Advert {
                    from,
                    priority,
                    max_advert_centis,
                },
            ) => self.master_advert(now, from, priority, max_advert_centis, &mut actions),
            (State::Master, Event::Shutdown) => {
                actions.push(Action::SendAdvert { priority: 0 });
                actions.push(Action::ReleaseAddresses);
                self.enter(State::Initialize, "shutdown", &mut actions);
            }
            (State::Backup | State::Fault, Event::Shutdown) => {
                self.enter(State::Initialize, "shutdown", &mut actions);
            }
            (State::Master, Event::InterfaceDown) => {
                actions.push(Action::ReleaseAddresses);
                self.enter(State::Fault, "interface down", &mut actions);
            }
            (State::Backup, Event::InterfaceDown) => {
                self.enter(State::Fault, "interface down", &mut actions);
            }
            (_, Event::Priority(priority)) => {
                let changed = priority != self.priority;
                self.priority = priority;
                // Tell the backups at once: a lower priority lets a preempting peer
                // take over without waiting for the next advert.
                if changed && self.state == State::Master {
                    actions.push(Action::SendAdvert { priority });
                    self.adver_timer = Some(now + self.settings.advert_interval);
                }
            }
            _ => {}
        }
        actions
    }

    /// Fires the timers due at `now`.
    pub fn on_timer(&mut self, now: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        let due = |timer: Option<Duration>| timer.is_some_and(|at| at <= now);
        match self.state {
            State::Backup if due(self.master_down_timer) => {
                self.become_master(now, "master down", &mut actions);
            }
            State::Master => {
                if due(self.adver_timer) {
                    actions.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.adver_timer = Some(now + self.settings.advert_interval);
                }
                if due(self.refresh_timer) {
                    actions.push(Action::Announce);
                    self.refresh_timer = self.settings.announce_refresh.map(|every| now + every);
                }
            }
            _ => {}
        }
        actions
    }

    fn backup_advert(&mut self, now: Duration, from: IpAddr, priority: u8, centis: u16) {
        if priority == 0 {
            // The master is leaving: take over after Skew_Time only.
            self.master_down_timer = Some(now + self.skew_time());
            self.master = None;
            return;
        }
        let lower = self.settings.preempt && priority < self.priority;
        if lower {
            let since = *self.lower_master_since.get_or_insert(now);
            if now.saturating_sub(since) >= self.settings.preempt_delay {
                // Preempt: let Master_Down_Interval run out.
                return;
            }
        } else {
            self.lower_master_since = None;
        }
        self.master_adver_interval = Duration::from_millis(u64::from(centis) * 10);
        self.master_down_timer = Some(now + self.master_down_interval());
        self.master = Some(from);
    }

    fn master_advert(
        &mut self,
        now: Duration,
        from: IpAddr,
        priority: u8,
        centis: u16,
        actions: &mut Vec<Action>,
    ) {
        if priority == 0 {
            actions.push(Action::SendAdvert {
                priority: self.priority,
            });
            self.adver_timer = Some(now + self.settings.advert_interval);
            return;
        }
        if priority > self.priority || (priority == self.priority && from > self.settings.primary) {
            self.master_adver_interval = Duration::from_millis(u64::from(centis) * 10);
            // Heard by the new master, this makes it re-announce (see the module doc).
            actions.push(Action::SendAdvert {
                priority: self.priority,
            });
            actions.push(Action::ReleaseAddresses);
            self.become_backup(now, Some(from), "higher priority master", actions);
            return;
        }
        // Another master with a lower priority: a split brain is ending. It gives way at
        // our next advert; announce again, as it may have taken the clients' caches.
        let recently = self
            .last_reannounce
            .is_some_and(|at| now.saturating_sub(at) < self.master_down_interval());
        if !recently {
            self.last_reannounce = Some(now);
            actions.push(Action::SendAdvert {
                priority: self.priority,
            });
            actions.push(Action::Announce);
            self.adver_timer = Some(now + self.settings.advert_interval);
        }
    }

    fn become_master(&mut self, now: Duration, reason: &'static str, actions: &mut Vec<Action>) {
        actions.push(Action::SendAdvert {
            priority: self.priority,
        });
        actions.push(Action::HoldAddresses);
        actions.push(Action::Announce);
        self.master_down_timer = None;
        self.adver_timer = Some(now + self.settings.advert_interval);
        self.refresh_timer = self.settings.announce_refresh.map(|every| now + every);
        self.master = Some(self.settings.primary);
        self.last_reannounce = None;
        self.enter(State::Master, reason, actions);
    }

    /// `master` is who made this node a backup, if known.
    fn become_backup(
        &mut self,
        now: Duration,
        master: Option<IpAddr>,
        reason: &'static str,
        actions: &mut Vec<Action>,
    ) {
        if self.state == State::Initialize || self.state == State::Fault {
            // Addresses a previous (killed) agent left on the interface.
            self.master_adver_interval = self.settings.advert_interval;
            actions.push(Action::ReleaseAddresses);
        }
        self.master_down_timer = Some(now + self.master_down_interval());
        self.master = master;
        self.lower_master_since = None;
        self.enter(State::Backup, reason, actions);
    }

    fn enter(&mut self, to: State, reason: &'static str, actions: &mut Vec<Action>) {
        if matches!(to, State::Initialize | State::Fault) {
            self.master_down_timer = None;
            self.master = None;
        }
        if to != State::Master {
            self.adver_timer = None;
            self.refresh_timer = None;
        }
        actions.push(Action::Transition {
            from: self.state,
            to,
            reason,
        });
        self.state = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "198.18.0.2";
    const PEER_LOW: &str = "198.18.0.1";
    const PEER_HIGH: &str = "198.18.0.3";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn ns(n: u64) -> Duration {
        Duration::from_nanos(n)
    }

    fn settings(priority: u8, preempt: bool) -> Settings {
        Settings {
            priority,
            advert_interval: ms(100),
            preempt,
            preempt_delay: Duration::ZERO,
            announce_refresh: None,
            primary: ip(ME),
        }
    }

    fn advert(from: &str, priority: u8) -> Event {
        Event::Advert {
            from: ip(from),
            priority,
            max_advert_centis: 10,
        }
    }

    fn transition(from: State, to: State, reason: &'static str) -> Action {
        Action::Transition { from, to, reason }
    }

    /// A machine in Backup at time 0 (Master_Down_Interval for priority 150 and 100 ms:
    /// 300 ms + 106 * 100 ms / 256 = 341.40625 ms).
    fn backup(settings: Settings) -> Machine {
        let mut machine = Machine::new(settings);
        machine.handle(ms(0), Event::Startup);
        assert_eq!(machine.state(), State::Backup);
        machine
    }

    /// A machine that became master after its master-down timer ran out.
    fn master(settings: Settings) -> (Machine, Duration) {
        let mut machine = backup(settings);
        let at = machine.next_deadline().unwrap();
        machine.on_timer(at);
        assert_eq!(machine.state(), State::Master);
        (machine, at)
    }

    #[test]
    fn startup_enters_backup_and_cleans_left_over_addresses() {
        let mut machine = Machine::new(settings(150, true));
        let actions = machine.handle(ms(0), Event::Startup);
        assert_eq!(
            actions,
            [
                Action::ReleaseAddresses,
                transition(State::Initialize, State::Backup, "startup")
            ]
        );
        assert_eq!(machine.skew_time(), ns(41_406_250));
        assert_eq!(machine.master_down_interval(), ns(341_406_250));
        assert_eq!(machine.next_deadline(), Some(ns(341_406_250)));
    }

    #[test]
    fn backup_becomes_master_when_the_master_down_timer_runs_out() {
        let mut machine = backup(settings(150, true));
        assert!(machine.on_timer(ns(341_406_249)).is_empty());
        assert_eq!(machine.state(), State::Backup);
        let actions = machine.on_timer(ns(341_406_250));
        assert_eq!(
            actions,
            [
                Action::SendAdvert { priority: 150 },
                Action::HoldAddresses,
                Action::Announce,
                transition(State::Backup, State::Master, "master down"),
            ]
        );
        assert_eq!(machine.master(), Some(ip(ME)));
        // Then an advert every Advertisement_Interval.
        assert_eq!(machine.next_deadline(), Some(ns(441_406_250)));
        assert_eq!(
            machine.on_timer(ns(441_406_250)),
            [Action::SendAdvert { priority: 150 }]
        );
        assert_eq!(machine.next_deadline(), Some(ns(541_406_250)));
    }

    #[test]
    fn adverts_keep_a_backup_and_teach_it_the_master_interval() {
        let mut machine = backup(settings(100, true));
        for t in (300..=3000).step_by(300) {
            assert!(machine.on_timer(ms(t)).is_empty());
            let actions = machine.handle(
                ms(t),
                Event::Advert {
                    from: ip(PEER_HIGH),
                    priority: 200,
                    max_advert_centis: 100,
                },
            );
            assert!(actions.is_empty());
        }
        assert_eq!(machine.state(), State::Backup);
        assert_eq!(machine.master(), Some(ip(PEER_HIGH)));
        // Learned 1 s: 3 s + 156 * 1 s / 256.
        assert_eq!(machine.master_adver_interval(), ms(1000));
        assert_eq!(
            machine.next_deadline(),
            Some(ms(3000) + ms(3000) + us(609_375))
        );
    }

    #[test]
    fn a_leaving_master_is_replaced_after_skew_time() {
        let mut machine = backup(settings(150, true));
        machine.handle(ms(50), advert(PEER_HIGH, 200));
        machine.handle(ms(100), advert(PEER_HIGH, 0));
        assert_eq!(machine.next_deadline(), Some(ms(100) + ns(41_406_250)));
        machine.on_timer(ms(100) + ns(41_406_250));
        assert_eq!(machine.state(), State::Master);
    }

    #[test]
    fn a_higher_priority_master_makes_a_master_back_off() {
        let (mut machine, at) = master(settings(150, true));
        let actions = machine.handle(at + ms(10), advert(PEER_LOW, 200));
        assert_eq!(
            actions,
            [
                Action::SendAdvert { priority: 150 },
                Action::ReleaseAddresses,
                transition(State::Master, State::Backup, "higher priority master")
            ]
        );
        assert_eq!(machine.master(), Some(ip(PEER_LOW)));
        assert_eq!(machine.next_deadline(), Some(at + ms(10) + ns(341_406_250)));
    }

    #[test]
    fn equal_priorities_go_to_the_higher_address() {
        let (mut machine, at) = master(settings(150, true));
        // Lower address: this node stays master.
        let actions = machine.handle(at, advert(PEER_LOW, 150));
        assert_eq!(machine.state(), State::Master);
        assert!(actions.contains(&Action::Announce));
        machine.handle(at, advert(PEER_HIGH, 150));
        assert_eq!(machine.state(), State::Backup);
    }

    #[test]
    fn preempt_takes_over_from_a_lower_priority_master() {
        let mut preempting = backup(settings(150, true));
        let mut patient = backup(settings(150, false));
        for t in (0..=2000).step_by(100) {
            for machine in [&mut preempting, &mut patient] {
                machine.on_timer(ms(t));
                machine.handle(ms(t), advert(PEER_HIGH, 100));
            }
        }
        assert_eq!(preempting.state(), State::Master);
        assert_eq!(patient.state(), State::Backup);
        assert_eq!(patient.master(), Some(ip(PEER_HIGH)));
    }

    #[test]
    fn preempt_delay_defers_preemption() {
        let mut settings = settings(150, true);
        settings.preempt_delay = ms(1000);
        let mut machine = backup(settings);
        let mut became_master = None;
        for t in (0..=3000).step_by(100) {
            if machine.state() == State::Master {
                break;
            }
            let actions = machine.on_timer(ms(t));
            if actions.contains(&Action::HoldAddresses) {
                became_master = Some(t);
                break;
            }
            machine.handle(ms(t), advert(PEER_HIGH, 100));
        }
        // Lower master accepted for 1 s (from t=0), then its adverts are ignored and
        // Master_Down_Interval (341 ms) runs from the last accepted one (at 900 ms).
        assert_eq!(became_master, Some(1300));
    }

    #[test]
    fn graceful_shutdown_sends_priority_zero_and_releases() {
        let (mut machine, at) = master(settings(150, true));
        let actions = machine.handle(at, Event::Shutdown);
        assert_eq!(
            actions,
            [
                Action::SendAdvert { priority: 0 },
                Action::ReleaseAddresses,
                transition(State::Master, State::Initialize, "shutdown")
            ]
        );
        assert_eq!(machine.next_deadline(), None);
    }

    #[test]
    fn interface_down_is_a_fault_until_it_comes_back() {
        let (mut machine, at) = master(settings(150, true));
        let actions = machine.handle(at, Event::InterfaceDown);
        assert_eq!(
            actions,
            [
                Action::ReleaseAddresses,
                transition(State::Master, State::Fault, "interface down")
            ]
        );
        assert_eq!(machine.next_deadline(), None);
        assert!(machine.handle(at, advert(PEER_HIGH, 200)).is_empty());
        let actions = machine.handle(at + ms(5), Event::InterfaceUp);
        assert_eq!(
            actions.last(),
            Some(&transition(State::Fault, State::Backup, "interface up"))
        );
    }

    #[test]
    fn a_priority_change_is_advertised_at_once_by_a_master() {
        let (mut machine, at) = master(settings(150, true));
        assert_eq!(
            machine.handle(at + ms(30), Event::Priority(100)),
            [Action::SendAdvert { priority: 100 }]
        );
        assert_eq!(machine.priority(), 100);
        assert_eq!(machine.next_deadline(), Some(at + ms(130)));
        // Unchanged: nothing to say.
        assert!(machine.handle(at + ms(40), Event::Priority(100)).is_empty());
        // A backup only records it: its Skew_Time follows.
        let mut machine = backup(settings(150, true));
        assert!(machine.handle(ms(0), Event::Priority(50)).is_empty());
        assert_eq!(machine.skew_time(), ns(80_468_750));
    }

    #[test]
    fn a_master_hearing_a_lower_master_re_announces_once_in_a_while() {
        let (mut machine, at) = master(settings(150, true));
        let first = machine.handle(at, advert(PEER_HIGH, 100));
        assert_eq!(
            first,
            [Action::SendAdvert { priority: 150 }, Action::Announce]
        );
        assert!(
            machine
                .handle(at + ms(100), advert(PEER_HIGH, 100))
                .is_empty()
        );
        assert_eq!(machine.handle(at + ms(400), advert(PEER_HIGH, 100)), first);
        assert_eq!(machine.state(), State::Master);
    }

    #[test]
    fn a_master_answers_a_leaving_peer_at_once() {
        let (mut machine, at) = master(settings(150, true));
        assert_eq!(
            machine.handle(at + ms(20), advert(PEER_HIGH, 0)),
            [Action::SendAdvert { priority: 150 }]
        );
    }

    #[test]
    fn announcements_are_refreshed_while_master() {
        let mut settings = settings(150, true);
        settings.announce_refresh = Some(ms(1000));
        let (mut machine, at) = master(settings);
        let mut announced = Vec::new();
        let mut t = at;
        while t < at + ms(2500) {
            t = machine.next_deadline().unwrap();
            if machine.on_timer(t).contains(&Action::Announce) {
                announced.push(t - at);
            }
        }
        assert_eq!(announced, [ms(1000), ms(2000)]);
    }

    #[test]
    fn the_address_owner_starts_as_master() {
        let mut machine = Machine::new(settings(255, true));
        let actions = machine.handle(ms(0), Event::Startup);
        assert!(actions.contains(&Action::HoldAddresses));
        assert_eq!(machine.state(), State::Master);
    }
}
