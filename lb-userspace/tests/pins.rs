//! Pinned dataplane state on a real bpffs (the test bed's): what a failed load leaves.

use lb_common::MAP_LAYOUT_VERSION;
use weir::dataplane::{Dataplane, LoadOptions, pins::Pins};
use weir_testbed::agent::AgentDirs;

/// A load that fails once some maps are created (here the connection table, too big for
/// the kernel) removes the pins it created: the next start is not met by a half-made
/// dataplane. The maps are created in an order that varies from load to load, so the
/// failure comes after a different set of pins each time.
#[test]
fn a_failed_load_removes_the_pins_it_created() {
    let dirs = AgentDirs::new().expect("the pins tests need root and a bpffs");
    let pins = Pins::new(dirs.pins().expect("a pin directory of its own"));
    for attempt in 0..5 {
        let result = Dataplane::load(LoadOptions {
            // Above the kernel's limit for a hash map (2^31 entries): E2BIG at creation,
            // before anything is allocated.
            conntrack_entries: (1 << 31) + 2,
            maglev_ring_entries: 1 << 16,
            nat_entries: 64,
            pins: Some(pins.clone()),
        });
        assert!(result.is_err(), "attempt {attempt}: the load fails");
        let left: Vec<_> = std::fs::read_dir(pins.root().join("maps"))
            .map(|entries| entries.map(|entry| entry.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "attempt {attempt}: pins left in v{MAP_LAYOUT_VERSION}/maps: {left:?}"
        );
    }
}
