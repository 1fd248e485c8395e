//! The agent's side of the control API: every operation reads or changes the running
//! state; a change is recorded as a runtime change (persisted in `state_dir`), planned
//! whole, and only then written — a refused change leaves everything as it was.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::{FlowKey, VipKey};
use tracing::error;

use super::Agent;
use crate::{
    agent::runtime::{BackendOverride, RuntimeState, VipOverride, validate_vip},
    api::firewall::{FirewallEdit, FirewallView},
    api::model::{
        BackendChange, BackendView, Control, ControlError, FlowView, HealthView, InterfaceStatus,
        LastCheck, NewBackend, NewVip, ReloadOutcome, Status, VipStatus, VipView, unix_ms,
    },
    config::{DEFAULT_WEIGHT, Forwarding, MAX_WEIGHT, Protocol, VipConfig},
    dataplane::flows,
    dataplane::plan::vip_key,
    failover::serving::vip_serving,
    health::BackendHealth,
    stats::{
        overview::{CensusView, Overview},
        report::StatsReport,
    },
};

fn internal(err: impl std::fmt::Display) -> ControlError {
    ControlError::Internal(err.to_string())
}

impl Agent {
    fn vip_config(&self, name: &str) -> Result<&VipConfig, ControlError> {
        self.config
            .vips
            .iter()
            .find(|vip| vip.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("no VIP named {name:?}")))
    }

    /// Records a runtime change (`edit`), plans and applies the result, then saves it:
    /// the file only ever holds changes that were applied. On any error nothing (runtime
    /// file included) has changed: a change that cannot be saved is taken back.
    fn change_runtime(&mut self, edit: impl FnOnce(&mut RuntimeState)) -> Result<(), ControlError> {
        let mut runtime = self.runtime.clone();
        edit(&mut runtime);
        let (config, _) = runtime.apply(&self.file_config);
        // Plan first: a change that cannot be applied is refused before anything moves.
        self.state
            .set_nat_sources(super::resolve_nat_sources(&config));
        self.state
            .plan(&self.health.effective(&config))
            .map_err(|err| ControlError::Invalid(err.to_string()))?;
        self.program_resolved(&config).map_err(internal)?;
        if let Err(err) = runtime.save(&self.config.agent.state_dir) {
            let running = self.config.clone();
            if let Err(undo) = self.program_config(&running) {
                error!(error = %undo, "cannot take back a change that could not be saved");
            }
            return Err(internal(err));
        }
        self.runtime = runtime;
        self.config = config;
        Ok(())
    }

    /// Live connections per backend id, counted now (a walk of the connection table:
    /// the API's exact answer; the stats page reads the census instead).
    fn flows_per_backend(&self) -> Result<HashMap<u32, u64>, ControlError> {
        let entries = self.dataplane.flows().map_err(internal)?;
        Ok(flows::live_per_backend(
            entries,
            flows::now_ns(),
            &self.config.flows.timeouts(false),
        ))
    }

    fn vip_view(&self, vip: &VipConfig, flows: &HashMap<u32, u64>) -> VipView {
        let state = self.state.vips().find(|state| state.name == vip.name);
        let backends = vip
            .backends
            .iter()
            .map(|backend| {
                let programmed = state.and_then(|s| s.backends.get(&backend.address));
                let nat = vip.forwarding == Forwarding::Nat;
                BackendView {
                    address: backend.address,
                    weight: backend.weight,
                    state: backend.state,
                    flows: programmed
                        .and_then(|b| flows.get(&b.id))
                        .copied()
                        .unwrap_or(0),
                    port: backend
                        .port
                        .or(Some(vip.port))
                        .filter(|port| nat && *port != 0),
                    nat_source: programmed.and_then(|b| b.entry.nat_source_ip()),
                    health: self
                        .health
                        .get(&vip.name, backend.address)
                        .map(health_view)
                        .unwrap_or_default(),
                }
            })
            .collect();
        let serving = vip_serving(vip, |backend| self.health.is_up(&vip.name, backend.address));
        VipView {
            name: vip.name.clone(),
            address: vip.address,
            port: vip.port,
            protocol: vip.protocol,
            forwarding: vip.forwarding,
            hash: vip.hash,
            table_size: vip.table_size,
            status: if serving {
                VipStatus::Up
            } else {
                VipStatus::Down
            },
            backends,
        }
    }

    /// Fails unless `vip` has the backend `address` (a configuration look-up only).
    fn check_backend(&self, vip: &str, address: IpAddr) -> Result<(), ControlError> {
        if self
            .vip_config(vip)?
            .backends
            .iter()
            .any(|b| b.address == address)
        {
            Ok(())
        } else {
            Err(ControlError::NotFound(format!(
                "VIP {vip:?} has no backend {address}"
            )))
        }
    }

    fn backend_view(&self, vip: &str, address: IpAddr) -> Result<BackendView, ControlError> {
        let flows = self.flows_per_backend()?;
        self.vip_view(self.vip_config(vip)?, &flows)
            .backends
            .into_iter()
            .find(|backend| backend.address == address)
            .ok_or_else(|| ControlError::NotFound(format!("VIP {vip:?} has no backend {address}")))
    }

    /// The VIP a connection-table key belongs to: exact port first, then port 0.
    fn vip_of(&self, key: &FlowKey) -> Option<&crate::dataplane::plan::VipState> {
        let exact = VipKey {
            addr: key.dst,
            port: key.dst_port,
            protocol: key.protocol,
            family: key.family,
        };
        let any_port = VipKey { port: 0, ..exact };
        self.state
            .vips()
            .find(|vip| vip.key == exact)
            .or_else(|| self.state.vips().find(|vip| vip.key == any_port))
    }
}

impl Control for Agent {
    fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            config_path: self.options.config_path.display().to_string(),
            bpf_pin_dir: self.config.agent.bpf_pin_dir.display().to_string(),
            program_id: self.dataplane.program_id(),
            interfaces: self
                .dataplane
                .attachments()
                .map(|a| InterfaceStatus {
                    name: a.interface.clone(),
                    ifindex: a.ifindex,
                    mode: a.mode.to_owned(),
                })
                .collect(),
            vips: self.config.vips.len(),
            backends: self.config.vips.iter().map(|vip| vip.backends.len()).sum(),
            announce: self.announce.as_ref().map(|status| status.borrow().clone()),
            vips_down: self
                .config
                .vips
                .iter()
                .filter(|vip| !vip_serving(vip, |b| self.health.is_up(&vip.name, b.address)))
                .count(),
            backends_down: self
                .config
                .vips
                .iter()
                .flat_map(|vip| vip.backends.iter().map(move |b| (vip, b)))
                .filter(|(vip, b)| !self.health.is_up(&vip.name, b.address))
                .count(),
            vrrp: self
                .vrrp_status
                .as_ref()
                .map(|status| status.borrow().clone()),
        }
    }

    fn vips(&self) -> Vec<VipView> {
        let flows = self.flows_per_backend().unwrap_or_default();
        self.config
            .vips
            .iter()
            .map(|vip| self.vip_view(vip, &flows))
            .collect()
    }

    fn vip(&self, name: &str) -> Result<VipView, ControlError> {
        let flows = self.flows_per_backend()?;
        Ok(self.vip_view(self.vip_config(name)?, &flows))
    }

    fn add_vip(&mut self, new: NewVip) -> Result<VipView, ControlError> {
        let vip = validate_vip(&new).map_err(ControlError::Invalid)?;
        if self.vip_config(&vip.name).is_ok() {
            return Err(ControlError::Conflict(format!(
                "a VIP named {:?} exists already",
                vip.name
            )));
        }
        if let Some(other) = self
            .config
            .vips
            .iter()
            .find(|other| vip_key(other) == vip_key(&vip))
        {
            return Err(ControlError::Conflict(format!(
                "VIP {:?} already serves {}:{}/{}",
                other.name, vip.address, vip.port, vip.protocol
            )));
        }
        let name = vip.name.clone();
        self.change_runtime(|runtime| runtime.record_vip(&name, VipOverride::Added(new)))?;
        self.vip(&name)
    }

    fn firewalls(&self) -> Vec<FirewallView> {
        self.config
            .vips
            .iter()
            .filter(|vip| !vip.firewall.is_empty())
            .map(|vip| FirewallView {
                vip: vip.name.clone(),
                firewall: vip.firewall.clone(),
            })
            .collect()
    }

    fn edit_firewall(
        &mut self,
        name: &str,
        edit: FirewallEdit,
    ) -> Result<FirewallView, ControlError> {
        let vip = self.vip_config(name)?;
        let firewall = edit.apply(&vip.firewall).map_err(ControlError::Invalid)?;
        crate::firewall::check_vip(&firewall, vip.address, vip.port)
            .map_err(|err| ControlError::Invalid(err.to_string()))?;
        let recorded = firewall.clone();
        self.change_runtime(|runtime| {
            runtime.firewalls.insert(name.to_owned(), recorded);
        })?;
        Ok(FirewallView {
            vip: name.to_owned(),
            firewall,
        })
    }

    fn remove_vip(&mut self, name: &str) -> Result<(), ControlError> {
        self.vip_config(name)?;
        self.change_runtime(|runtime| runtime.record_vip(name, VipOverride::Removed))
    }

    fn add_backend(&mut self, vip: &str, backend: NewBackend) -> Result<BackendView, ControlError> {
        let config = self.vip_config(vip)?;
        if backend.address.is_ipv4() != config.address.is_ipv4() {
            return Err(ControlError::Invalid(format!(
                "backend {} is not of VIP {vip:?}'s address family ({}): {}",
                backend.address,
                config.address,
                match config.forwarding {
                    Forwarding::Dsr => "DSR rewrites MAC addresses only",
                    Forwarding::Nat => "NAT does not translate between families",
                }
            )));
        }
        if let Some(port) = backend.port {
            check_backend_port(config, port)?;
        }
        if config.backends.iter().any(|b| b.address == backend.address) {
            return Err(ControlError::Conflict(format!(
                "VIP {vip:?} already has backend {}",
                backend.address
            )));
        }
        let weight = backend.weight.unwrap_or(DEFAULT_WEIGHT);
        check_weight(weight)?;
        let state = backend.state.unwrap_or_default();
        let added = BackendOverride::Added {
            weight,
            state,
            port: backend.port,
        };
        self.change_runtime(|runtime| runtime.record(vip, backend.address, added))?;
        self.backend_view(vip, backend.address)
    }

    fn remove_backend(&mut self, vip: &str, address: IpAddr) -> Result<(), ControlError> {
        self.check_backend(vip, address)?;
        self.change_runtime(|runtime| runtime.record(vip, address, BackendOverride::Removed))
    }

    fn change_backend(
        &mut self,
        vip: &str,
        address: IpAddr,
        change: BackendChange,
    ) -> Result<BackendView, ControlError> {
        self.check_backend(vip, address)?;
        if let Some(weight) = change.weight {
            check_weight(weight)?;
        }
        let change = BackendOverride::Changed {
            weight: change.weight,
            state: change.state,
        };
        self.change_runtime(|runtime| runtime.record(vip, address, change))?;
        self.backend_view(vip, address)
    }

    fn flows(
        &self,
        vip: Option<&str>,
        backend: Option<IpAddr>,
    ) -> Result<Vec<FlowView>, ControlError> {
        if let Some(name) = vip {
            self.vip_config(name)?;
        }
        let now = flows::now_ns();
        let timeouts = self.config.flows.timeouts(false);
        let mut views = Vec::new();
        for (key, flow) in self.dataplane.flows().map_err(internal)? {
            if !flows::is_live(&flow, key.protocol, now, &timeouts) {
                continue;
            }
            let Some(state) = self.vip_of(&key) else {
                continue;
            };
            let Some((address, _)) = state.backends.iter().find(|(_, b)| b.id == flow.backend_id)
            else {
                continue;
            };
            if vip.is_some_and(|name| name != state.name) || backend.is_some_and(|b| b != *address)
            {
                continue;
            }
            let (Some(src), Some(dst), Some(protocol)) = (
                key.src_ip(),
                key.dst_ip(),
                Protocol::from_number(key.protocol),
            ) else {
                continue;
            };
            views.push(FlowView {
                vip: state.name.clone(),
                protocol,
                client: SocketAddr::new(src, u16::from_be(key.src_port)),
                destination: SocketAddr::new(dst, u16::from_be(key.dst_port)),
                backend: *address,
            });
        }
        views.sort_by(|a, b| (&a.vip, a.client).cmp(&(&b.vip, b.client)));
        Ok(views)
    }

    fn stats(&self) -> Result<StatsReport, ControlError> {
        self.stats_report().map_err(internal)
    }

    fn overview(&self) -> Result<Overview, ControlError> {
        let census = self
            .census
            .as_ref()
            .map(|census| census.borrow().clone())
            .unwrap_or_default();
        Ok(Overview {
            status: self.status(),
            vips: self
                .config
                .vips
                .iter()
                .map(|vip| self.vip_view(vip, &census.per_backend))
                .collect(),
            stats: self.stats()?,
            census: CensusView {
                at_unix_ms: census.at.map(unix_ms),
                walk_ms: census.walk.as_millis() as u64,
                conntrack_entries: census.conntrack_entries,
                conntrack_capacity: self.config.agent.conntrack_entries,
                nat_entries: census.nat_entries,
                nat_capacity: self.config.agent.nat_entries,
            },
            // The stats server asks the proxy itself, outside the agent's lock.
            tls: None,
        })
    }

    fn reload(&mut self) -> Result<ReloadOutcome, ControlError> {
        Agent::reload(self)
            .map(|writes| ReloadOutcome { writes })
            .map_err(|err| ControlError::Invalid(err.to_string()))
    }
}

fn health_view(health: &BackendHealth) -> HealthView {
    HealthView {
        check: health.kind,
        state: health.state.operational(),
        since_unix_ms: unix_ms(health.changed_at),
        checks: health.checks,
        failed_checks: health.failed_checks,
        down_transitions: health.down_transitions,
        downtime_ms: health.downtime(std::time::SystemTime::now()).as_millis() as u64,
        last_check: health.last.as_ref().map(|(result, at)| LastCheck {
            passed: result.passed,
            reason: result.reason.to_string(),
            duration_us: result.duration.as_micros() as u64,
            at_unix_ms: unix_ms(*at),
        }),
    }
}

/// A backend port is NAT's, on a VIP of one port (as the file's validation says).
fn check_backend_port(vip: &VipConfig, port: u16) -> Result<(), ControlError> {
    let refusal = if vip.forwarding != Forwarding::Nat {
        "DSR cannot change the port: the backend receives the client's packet as sent"
    } else if vip.port == 0 {
        "a VIP on every port keeps the client's destination port"
    } else if port == 0 {
        "a backend port is 1..=65535"
    } else {
        return Ok(());
    };
    Err(ControlError::Invalid(format!("port {port}: {refusal}")))
}

fn check_weight(weight: u32) -> Result<(), ControlError> {
    if weight > MAX_WEIGHT {
        return Err(ControlError::Invalid(format!(
            "weight must be in 0..={MAX_WEIGHT}, got {weight}"
        )));
    }
    Ok(())
}
