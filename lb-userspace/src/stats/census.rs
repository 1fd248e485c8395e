//! The flow census: live connections per backend, counted by a background thread that
//! walks the connection table and the NAT flows at a bounded pace, so that a page view or
//! a scrape reads the last count instead of walking a million entries.
//!
//! Why a sample and not a gauge kept by the program: an entry of the LRU connection
//! table ends silently (idle timeout, eviction), so the program never sees a flow end and
//! could not decrement a per-backend gauge. The census counts as `weir flows` does
//! ([`crate::dataplane::flows::live_per_backend`]), at most [`WALK_BUDGET`] entries a
//! second, one walk every [`CENSUS_INTERVAL`] at most: a million-entry table costs a
//! ~10 s walk and its counts are that old at worst.

use std::{
    collections::HashMap,
    thread,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;
use tracing::warn;

use crate::dataplane::{FlowTables, flows};

/// Entries walked per second at most.
pub const WALK_BUDGET: u64 = 100_000;
/// The shortest time between the starts of two walks.
pub const CENSUS_INTERVAL: Duration = Duration::from_secs(5);
/// Entries between two looks at the clock.
const BATCH: u64 = 1_000;

/// One census.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// When the walk ended.
    pub at: Option<SystemTime>,
    /// Live connections per backend id.
    pub per_backend: HashMap<u32, u64>,
    /// Entries in the connection table, live or not (an LRU keeps ended ones).
    pub conntrack_entries: u64,
    /// Entries in the NAT flow table.
    pub nat_entries: u64,
    /// How long the walk took.
    pub walk: Duration,
}

/// Starts the census thread on `tables`, whose capacities bound a walk (entries added
/// during a walk could otherwise keep it going). It stops once every receiver is gone.
pub fn spawn(
    tables: FlowTables,
    conntrack_capacity: u32,
    nat_capacity: u32,
) -> std::io::Result<watch::Receiver<Census>> {
    let (sender, receiver) = watch::channel(Census::default());
    thread::Builder::new()
        .name("weir-census".into())
        .spawn(move || {
            while !sender.is_closed() {
                let started = Instant::now();
                match walk(&tables, conntrack_capacity, nat_capacity) {
                    Ok(census) => {
                        sender.send_replace(census);
                    }
                    Err(err) => warn!(error = %err, "the flow census failed"),
                }
                thread::sleep(CENSUS_INTERVAL.saturating_sub(started.elapsed()));
            }
        })?;
    Ok(receiver)
}

fn walk(
    tables: &FlowTables,
    conntrack_capacity: u32,
    nat_capacity: u32,
) -> Result<Census, crate::dataplane::DataplaneError> {
    let started = Instant::now();
    let timeouts = tables.timeouts()?;
    let now = flows::now_ns();
    let mut pace = Pace::new(started);
    let (mut conntrack_entries, mut nat_entries) = (0, 0);
    // A failed look-up (an entry removed between two steps) skips the entry.
    let conntrack = tables
        .conntrack
        .iter()
        .filter_map(Result::ok)
        .take(conntrack_capacity as usize)
        .inspect(|_| conntrack_entries += 1);
    let nat = tables
        .nat_flows
        .iter()
        .filter_map(Result::ok)
        .take(nat_capacity as usize)
        .inspect(|_| nat_entries += 1);
    let entries = conntrack.chain(nat).inspect(|_| pace.step());
    let per_backend = flows::live_per_backend(entries, now, &timeouts);
    Ok(Census {
        at: Some(SystemTime::now()),
        per_backend,
        conntrack_entries,
        nat_entries,
        walk: started.elapsed(),
    })
}

/// Keeps a walk at [`WALK_BUDGET`] entries a second.
struct Pace {
    started: Instant,
    entries: u64,
}

impl Pace {
    fn new(started: Instant) -> Self {
        Pace {
            started,
            entries: 0,
        }
    }

    fn step(&mut self) {
        self.entries += 1;
        if self.entries.is_multiple_of(BATCH) {
            thread::sleep(pause(self.entries, self.started.elapsed(), WALK_BUDGET));
        }
    }
}

/// How long to wait after `entries` walked in `elapsed` to stay within `budget` a second.
fn pause(entries: u64, elapsed: Duration, budget: u64) -> Duration {
    Duration::from_secs_f64(entries as f64 / budget as f64).saturating_sub(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_keeps_to_its_budget() {
        let ms = Duration::from_millis;
        // 1000 entries at 100 000/s take 10 ms: walked in 2 ms, wait 8 ms.
        assert_eq!(pause(1_000, ms(2), 100_000), ms(8));
        // Slower than the budget: no wait.
        assert_eq!(pause(1_000, ms(30), 100_000), Duration::ZERO);
        // A million entries take ten seconds, whatever the machine.
        assert_eq!(pause(1_000_000, ms(1_500), 100_000), ms(8_500));
    }
}
