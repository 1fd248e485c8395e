//! VRRP version 3 (RFC 5798) in the agent: the node holds the VIP addresses on an
//! interface while it is master, and gives them up to a peer (weir or keepalived) that
//! has a higher priority, or when it stops.
//!
//! - `packet`: the advert codec; `state`: the state machine (pure, simulated clock);
//!   `socket`: raw sockets, gratuitous ARP / unsolicited NA; `interface`: addresses.
//! - One instance per address family of the VIPs (same VRID; IPv4 and IPv6 adverts are
//!   separate, as keepalived's one `vrrp_instance` per family). No VIP: one IPv4 instance.
//! - The held addresses are the VIPs' addresses, followed live from the agent's
//!   [`ServingVips`] channel, as is tracking: each VIP that serves no new flow lowers the
//!   priority by `track_weight` (as each failing keepalived `track_script` does), to 1
//!   at least. Both instances carry the same effective priority, so both families move
//!   together.
//! - A task of its own: the rest of the agent never waits for it.

pub mod interface;
pub mod packet;
pub mod socket;
pub mod state;

use std::{
    collections::VecDeque,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::{debug, info, warn};

use crate::{
    api::model::{VrrpInstanceStatus, VrrpStatus, VrrpTransition},
    config::VrrpConfig,
    failover::serving::ServingVips,
};
use packet::{Advert, GROUP_V4, GROUP_V6, HOP_LIMIT};
use socket::{AdvertSocket, Announcer, Received};
use state::{Action, Event, Machine, Settings, State};

/// How many state changes the status keeps per instance.
const TRANSITIONS_KEPT: usize = 10;
/// How often the interface's link state is checked (Fault detection).
const LINK_CHECK: Duration = Duration::from_millis(200);
/// How long a graceful stop may take (priority 0 advert, releasing the addresses).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum VrrpError {
    #[error("[vrrp] interface {interface}: {message}")]
    Interface { interface: String, message: String },
    #[error("VRRP socket on {interface}: {source}")]
    Socket {
        interface: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
}

/// The running VRRP task.
pub struct Vrrp {
    status: watch::Receiver<VrrpStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Vrrp {
    /// Opens the sockets (an error here fails the agent's start) and spawns the task,
    /// which follows `serving` for the addresses and tracking.
    pub async fn start(
        config: VrrpConfig,
        serving: watch::Receiver<ServingVips>,
    ) -> Result<Vrrp, VrrpError> {
        let info = interface::interface_info(&config.interface).await?;
        let vips = serving.borrow().clone();
        let addresses = vip_addresses(&vips);
        let ipv6 = addresses.iter().any(IpAddr::is_ipv6);
        let ipv4 = addresses.iter().any(IpAddr::is_ipv4) || !ipv6;
        let failed = |message: &str| VrrpError::Interface {
            interface: config.interface.clone(),
            message: message.to_owned(),
        };
        let socket_error = |source| VrrpError::Socket {
            interface: config.interface.clone(),
            source,
        };
        let priority = effective_priority(&config, &vips);
        let origin = Instant::now();
        let mut instances = Vec::new();
        if ipv4 {
            let source = info
                .ipv4_source(&addresses)
                .ok_or_else(|| failed("no IPv4 address of its own to send adverts from"))?;
            let socket = AdvertSocket::open_v4(&config.interface, info.ifindex, source)
                .map_err(socket_error)?;
            instances.push(Instance::new(&config, socket, IpAddr::V4(source), priority));
        }
        if ipv6 {
            let source = info
                .ipv6_link_local()
                .ok_or_else(|| failed("no IPv6 link-local address to send adverts from"))?;
            let socket =
                AdvertSocket::open_v6(&config.interface, info.ifindex).map_err(socket_error)?;
            instances.push(Instance::new(&config, socket, IpAddr::V6(source), priority));
        }
        let announcer = Announcer::open(&config.interface, info.ifindex, info.mac, ipv4, ipv6)
            .map_err(socket_error)?;
        let (stop, stopped) = watch::channel(false);
        let runner = Runner {
            config,
            instances,
            announcer,
            addresses,
            priority,
            origin,
            status: watch::Sender::new(VrrpStatus::default()),
        };
        runner.publish();
        let status = runner.status.subscribe();
        let task = tokio::spawn(runner.run(serving, stopped));
        Ok(Vrrp { status, stop, task })
    }

    /// Follows the instances' state.
    pub fn status(&self) -> watch::Receiver<VrrpStatus> {
        self.status.clone()
    }

    /// Leaves gracefully: a priority 0 advert (the peer takes over at once), then the
    /// addresses go.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        match tokio::time::timeout(STOP_TIMEOUT, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(error = %err, "the VRRP task failed"),
            Err(_) => warn!("the VRRP task did not stop in time"),
        }
    }
}

/// The distinct addresses of the VIPs, in configuration order.
fn vip_addresses(vips: &ServingVips) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = Vec::new();
    for vip in vips {
        if !addresses.contains(&vip.address) {
            addresses.push(vip.address);
        }
    }
    addresses
}

/// The configured priority less `track_weight` per VIP that serves no new flow, at
/// least 1 (0 would mean "leaving").
pub fn effective_priority(config: &VrrpConfig, vips: &ServingVips) -> u8 {
    if !config.track_vips {
        return config.priority;
    }
    let unserving = vips.iter().filter(|vip| !vip.serving).count();
    let penalty = usize::from(config.track_weight).saturating_mul(unserving);
    let priority = usize::from(config.priority).saturating_sub(penalty);
    priority.clamp(1, 254) as u8
}

struct Instance {
    machine: Machine,
    socket: AdvertSocket,
    source: IpAddr,
    transitions: VecDeque<VrrpTransition>,
}

impl Instance {
    fn new(config: &VrrpConfig, socket: AdvertSocket, source: IpAddr, priority: u8) -> Instance {
        let mut machine = Machine::new(Settings {
            priority: config.priority,
            advert_interval: config.advert_interval,
            preempt: config.preempt,
            preempt_delay: config.preempt_delay,
            announce_refresh: (!config.garp_refresh.is_zero()).then_some(config.garp_refresh),
            primary: source,
        });
        machine.handle(Duration::ZERO, Event::Priority(priority));
        Instance {
            machine,
            socket,
            source,
            transitions: VecDeque::new(),
        }
    }

    fn family(&self) -> &'static str {
        if self.source.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        }
    }

    /// The VIP addresses of this instance's family.
    fn addresses(&self, all: &[IpAddr]) -> Vec<IpAddr> {
        all.iter()
            .copied()
            .filter(|a| a.is_ipv4() == self.source.is_ipv4())
            .collect()
    }
}

struct Runner {
    config: VrrpConfig,
    instances: Vec<Instance>,
    announcer: Announcer,
    /// The VIP addresses (both families).
    addresses: Vec<IpAddr>,
    /// The effective priority.
    priority: u8,
    /// The state machines' time origin.
    origin: Instant,
    status: watch::Sender<VrrpStatus>,
}

impl Runner {
    async fn run(
        mut self,
        mut serving: watch::Receiver<ServingVips>,
        mut stopped: watch::Receiver<bool>,
    ) {
        info!(
            interface = %self.config.interface,
            vrid = self.config.vrid,
            priority = self.priority,
            instances = self.instances.len(),
            "VRRP starting"
        );
        for i in 0..self.instances.len() {
            self.event(i, Event::Startup).await;
        }
        let mut link_up = true;
        let mut link_check = tokio::time::interval(LINK_CHECK);
        loop {
            let deadline = self
                .instances
                .iter()
                .filter_map(|i| i.machine.next_deadline())
                .min()
                .map(|at| self.origin + at);
            tokio::select! {
                _ = stopped.changed() => break,
                received = recv(&self.instances, 0) => self.received(0, received).await,
                received = recv(&self.instances, 1) => self.received(1, received).await,
                _ = sleep_until(deadline) => {
                    let now = self.now();
                    for i in 0..self.instances.len() {
                        let actions = self.instances[i].machine.on_timer(now);
                        self.execute(i, actions).await;
                    }
                }
                changed = serving.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let vips = serving.borrow_and_update().clone();
                    self.serving_changed(&vips).await;
                }
                _ = link_check.tick() => {
                    let running = socket::interface_running(&self.config.interface).unwrap_or(false);
                    if running != link_up {
                        link_up = running;
                        let event = if running { Event::InterfaceUp } else { Event::InterfaceDown };
                        for i in 0..self.instances.len() {
                            self.event(i, event).await;
                        }
                    }
                }
            }
            self.publish();
        }
        for i in 0..self.instances.len() {
            self.event(i, Event::Shutdown).await;
        }
        self.publish();
        info!("VRRP stopped");
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    async fn event(&mut self, i: usize, event: Event) {
        let now = self.now();
        let actions = self.instances[i].machine.handle(now, event);
        self.execute(i, actions).await;
    }

    async fn received(&mut self, i: usize, received: std::io::Result<Received>) {
        let received = match received {
            Ok(received) => received,
            Err(err) => {
                warn!(error = %err, "receiving VRRP adverts failed");
                // Do not spin on a persistent error.
                tokio::time::sleep(LINK_CHECK).await;
                return;
            }
        };
        let instance = &self.instances[i];
        if received.source == instance.source {
            return;
        }
        if received.hop_limit != HOP_LIMIT {
            debug!(from = %received.source, hop_limit = received.hop_limit, "VRRP advert dropped: it crossed a router");
            return;
        }
        let peers = &self.config.unicast_peers;
        if !peers.is_empty() && !peers.contains(&received.source) {
            debug!(from = %received.source, "VRRP advert dropped: not from a unicast peer");
            return;
        }
        let advert = match Advert::decode(&received.message, received.source, received.destination)
        {
            Ok(advert) => advert,
            Err(err) => {
                debug!(from = %received.source, error = %err, "VRRP advert dropped");
                return;
            }
        };
        if advert.vrid != self.config.vrid {
            return;
        }
        let event = Event::Advert {
            from: received.source,
            priority: advert.priority,
            max_advert_centis: advert.max_advert_centis,
        };
        self.event(i, event).await;
    }

    async fn serving_changed(&mut self, vips: &ServingVips) {
        let addresses = vip_addresses(vips);
        if addresses != self.addresses {
            let gone: Vec<IpAddr> = self
                .addresses
                .iter()
                .copied()
                .filter(|a| !addresses.contains(a))
                .collect();
            let new: Vec<IpAddr> = addresses
                .iter()
                .copied()
                .filter(|a| !self.addresses.contains(a))
                .collect();
            self.addresses = addresses;
            for instance in &self.instances {
                if instance.machine.state() == State::Master {
                    let new = instance.addresses(&new);
                    self.release(&instance.addresses(&gone)).await;
                    self.hold(&new).await;
                    self.announce(&new);
                }
            }
            let missing = self
                .addresses
                .iter()
                .filter(|a| {
                    !self
                        .instances
                        .iter()
                        .any(|i| i.source.is_ipv4() == a.is_ipv4())
                })
                .count();
            if missing > 0 {
                warn!(
                    "a VIP of an address family that had none at start is not held by VRRP until the agent restarts"
                );
            }
        }
        let priority = effective_priority(&self.config, vips);
        if priority != self.priority {
            info!(
                from = self.priority,
                to = priority,
                "VRRP priority changed by VIP tracking"
            );
            self.priority = priority;
            for i in 0..self.instances.len() {
                self.event(i, Event::Priority(priority)).await;
            }
        }
    }

    async fn execute(&mut self, i: usize, actions: Vec<Action>) {
        let addresses = self.instances[i].addresses(&self.addresses);
        for action in actions {
            match action {
                Action::SendAdvert { priority } => self.send_advert(i, priority, &addresses),
                Action::HoldAddresses => self.hold(&addresses).await,
                Action::ReleaseAddresses => self.release(&addresses).await,
                Action::Announce => self.announce(&addresses),
                Action::Transition { from, to, reason } => self.transition(i, from, to, reason),
            }
        }
    }

    fn send_advert(&self, i: usize, priority: u8, addresses: &[IpAddr]) {
        let instance = &self.instances[i];
        let advert = Advert {
            vrid: self.config.vrid,
            priority,
            max_advert_centis: (self.config.advert_interval.as_millis() / 10) as u16,
            addresses: addresses.to_vec(),
        };
        let peers: Vec<IpAddr> = if self.config.unicast_peers.is_empty() {
            vec![match instance.source {
                IpAddr::V4(_) => IpAddr::V4(GROUP_V4),
                IpAddr::V6(_) => IpAddr::V6(GROUP_V6),
            }]
        } else {
            instance.addresses(&self.config.unicast_peers)
        };
        for peer in peers {
            // IPv6: the kernel recomputes the checksum for the source it picks.
            let message = advert.encode(instance.source, peer);
            if let Err(err) = instance.socket.send(&message, peer) {
                warn!(to = %peer, error = %err, "sending a VRRP advert failed");
            }
        }
    }

    async fn hold(&self, addresses: &[IpAddr]) {
        if let Err(err) = interface::hold(&self.config.interface, addresses).await {
            warn!(error = %err, "could not add a VIP address to the VRRP interface");
        }
    }

    async fn release(&self, addresses: &[IpAddr]) {
        if let Err(err) = interface::release(&self.config.interface, addresses).await {
            warn!(error = %err, "could not remove a VIP address from the VRRP interface");
        }
    }

    fn announce(&self, addresses: &[IpAddr]) {
        for address in addresses {
            for _ in 0..self.config.garp_repeat {
                if let Err(err) = self.announcer.announce(*address) {
                    warn!(%address, error = %err, "could not announce a VIP address");
                    break;
                }
            }
        }
    }

    fn transition(&mut self, i: usize, from: State, to: State, reason: &'static str) {
        let instance = &mut self.instances[i];
        let priority = instance.machine.priority();
        info!(
            family = instance.family(),
            vrid = self.config.vrid,
            %from,
            %to,
            reason,
            priority,
            master = ?instance.machine.master(),
            "VRRP state change"
        );
        if instance.transitions.len() == TRANSITIONS_KEPT {
            instance.transitions.pop_front();
        }
        instance.transitions.push_back(VrrpTransition {
            unix_ms: crate::api::model::unix_ms(SystemTime::now()),
            from,
            to,
            reason: reason.to_owned(),
        });
        notify(&self.config, instance.family(), to, priority);
    }

    fn publish(&self) {
        let status = VrrpStatus {
            interface: self.config.interface.clone(),
            vrid: self.config.vrid,
            priority: self.config.priority,
            effective_priority: self.priority,
            instances: self
                .instances
                .iter()
                .map(|instance| VrrpInstanceStatus {
                    family: instance.family().to_owned(),
                    state: instance.machine.state(),
                    address: instance.source,
                    master: instance.machine.master(),
                    master_advert_interval_ms: instance.machine.master_adver_interval().as_millis()
                        as u64,
                    addresses: instance.addresses(&self.addresses),
                    transitions: instance.transitions.iter().cloned().collect(),
                })
                .collect(),
        };
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }
}

/// The next advert of instance `i`; never, if there is no such instance.
async fn recv(instances: &[Instance], i: usize) -> std::io::Result<Received> {
    match instances.get(i) {
        Some(instance) => instance.socket.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs `notify` with the state, VRID and priority appended, and the same in the
/// environment (with the family and interface); it is not waited for.
fn notify(config: &VrrpConfig, family: &str, state: State, priority: u8) {
    let Some((program, args)) = config.notify.split_first() else {
        return;
    };
    let (state, vrid, priority) = (
        state.to_string(),
        config.vrid.to_string(),
        priority.to_string(),
    );
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .args([&state, &vrid, &priority])
        .env("WEIR_VRRP_STATE", &state)
        .env("WEIR_VRRP_VRID", &vrid)
        .env("WEIR_VRRP_PRIORITY", &priority)
        .env("WEIR_VRRP_FAMILY", family)
        .env("WEIR_VRRP_INTERFACE", &config.interface)
        .stdin(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            let program = program.clone();
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(status) if status.success() => {}
                    Ok(status) => warn!(%program, %status, "the VRRP notify command failed"),
                    Err(err) => warn!(%program, error = %err, "the VRRP notify command failed"),
                }
            });
        }
        Err(err) => warn!(%program, error = %err, "cannot run the VRRP notify command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::serving::VipServing;

    fn vips(serving: &[bool]) -> ServingVips {
        serving
            .iter()
            .enumerate()
            .map(|(i, &serving)| VipServing {
                name: format!("vip{i}"),
                address: IpAddr::from([198, 19, 0, i as u8]),
                serving,
            })
            .collect()
    }

    fn config(priority: u8, track_vips: bool) -> VrrpConfig {
        let text = format!(
            "[agent]\ninterfaces = [\"eth0\"]\n[vrrp]\ninterface = \"eth0\"\nvrid = 1\npriority = {priority}\ntrack_vips = {track_vips}\ntrack_weight = 50\n"
        );
        crate::config::Config::parse(&text, "test.toml")
            .expect("valid")
            .vrrp
            .expect("vrrp")
    }

    #[test]
    fn each_unserving_vip_lowers_the_priority_down_to_one() {
        let tracking = config(150, true);
        assert_eq!(effective_priority(&tracking, &vips(&[true, true])), 150);
        assert_eq!(effective_priority(&tracking, &vips(&[false, true])), 100);
        assert_eq!(effective_priority(&tracking, &vips(&[false, false])), 50);
        assert_eq!(effective_priority(&tracking, &vips(&[false; 4])), 1);
        assert_eq!(
            effective_priority(&config(150, false), &vips(&[false])),
            150
        );
    }

    #[test]
    fn vip_addresses_are_distinct() {
        let mut list = vips(&[true, true]);
        list[1].address = list[0].address;
        assert_eq!(vip_addresses(&list), [list[0].address]);
    }
}
