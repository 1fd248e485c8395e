//! The NAT sweep's thread: it walks and prunes the NAT tables on descriptors of its own,
//! so neither the agent's lock nor a runtime worker waits for its syscalls.

use std::{
    collections::HashSet,
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::Duration,
};

use tracing::{debug, warn};

use crate::dataplane::{FlowTables, flows};

/// How often ended NAT flows are removed.
const NAT_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The running sweep; dropping it stops the thread after its current pass.
pub struct NatSweep {
    _stop: mpsc::Sender<()>,
}

/// Starts sweeping `tables` every [`NAT_SWEEP_INTERVAL`].
pub fn spawn(mut tables: FlowTables) -> std::io::Result<NatSweep> {
    let (stop, stopped) = mpsc::channel::<()>();
    thread::Builder::new()
        .name("weir-nat-sweep".into())
        .spawn(move || {
            // Orphan reply entries seen by the previous pass (see `FlowTables::sweep_nat`).
            let mut suspects = HashSet::new();
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(NAT_SWEEP_INTERVAL) {
                match tables.sweep_nat(flows::now_ns(), &mut suspects) {
                    Ok(0) => {}
                    Ok(removed) => debug!(removed, "ended NAT flows swept"),
                    Err(err) => warn!(error = %err, "sweeping the NAT tables failed"),
                }
            }
        })?;
    Ok(NatSweep { _stop: stop })
}
