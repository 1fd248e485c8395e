//! `[agent]`, `[flows]` and `[announce]`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{DEFAULT_CONNTRACK_ENTRIES, DEFAULT_NAT_ENTRIES, MAX_INTERFACES};
use toml::Spanned;

use super::super::{raw::*, source::*, *};

impl RawAnnounce {
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        agent: &AgentConfig,
    ) -> Result<AnnounceConfig, ConfigError> {
        let key = "announce.interface";
        let name = src.required(&self.interface, &[Step::Key("announce")], key)?;
        let interface = src.interface_name(name, key)?;
        // The agent adds and deletes addresses on it, and deletes it when it stops.
        if let Some(i) = agent.interfaces.iter().position(|n| n == interface) {
            let message = format!(
                "{interface:?} is agent.interfaces[{i}]; the announce interface is a dummy the agent creates and owns, give it a name of its own (e.g. \"weir-vips\")"
            );
            return Err(src.error_at(name, key, message));
        }
        Ok(AnnounceConfig {
            interface: interface.clone(),
        })
    }
}

impl RawAgent {
    pub(super) fn validate(&self, src: &Source<'_>) -> Result<AgentConfig, ConfigError> {
        let key = "agent.interfaces";
        let list = src.required(&self.interfaces, &[Step::Key("agent")], key)?;
        if list.get_ref().is_empty() {
            return Err(src.error_at(list, key, "must list at least one interface"));
        }
        if list.get_ref().len() > MAX_INTERFACES as usize {
            let message = format!("too many interfaces: at most {MAX_INTERFACES} are supported");
            return Err(src.error_at(list, key, message));
        }
        let mut interfaces: Vec<String> = Vec::with_capacity(list.get_ref().len());
        for (i, name) in list.get_ref().iter().enumerate() {
            let key = format!("{key}[{i}]");
            let name_str = src.interface_name(name, &key)?;
            if let Some(first) = interfaces.iter().position(|n| n == name_str) {
                let message = format!(
                    "interface {name_str:?} is already listed as agent.interfaces[{first}]"
                );
                return Err(src.error_at(name, &key, message));
            }
            interfaces.push(name_str.clone());
        }
        let conntrack_entries = match &self.conntrack_entries {
            Some(v) => src.integer(
                v,
                "agent.conntrack_entries",
                MIN_CONNTRACK_ENTRIES,
                MAX_CONNTRACK_ENTRIES,
            )?,
            None => DEFAULT_CONNTRACK_ENTRIES,
        };
        let path = |value: &Option<Spanned<String>>, key: &str| match value {
            Some(path) if !Path::new(path.get_ref()).is_absolute() => {
                let message = format!("{:?} is not an absolute path", path.get_ref());
                Err(src.error_at(path, key, message))
            }
            Some(path) => Ok(Some(PathBuf::from(path.get_ref()))),
            None => Ok(None),
        };
        let bpf_pin_dir = path(&self.bpf_pin_dir, "agent.bpf_pin_dir")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BPF_PIN_DIR));
        let state_dir = path(&self.state_dir, "agent.state_dir")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let api_socket = path(&self.api_socket, "agent.api_socket")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCKET));
        let api_token_file = path(&self.api_token_file, "agent.api_token_file")?;
        let api_listen = match &self.api_listen {
            Some(listen) => {
                let Ok(addr) = listen.get_ref().parse::<std::net::SocketAddr>() else {
                    let message = format!("{:?} is not an address:port", listen.get_ref());
                    return Err(src.error_at(listen, "agent.api_listen", message));
                };
                if !addr.ip().is_loopback() {
                    let message = format!(
                        "{} is not a loopback address: the TCP listener speaks plain HTTP, so \
                         the bearer token would cross the network in clear; listen on \
                         127.0.0.1 or [::1] and reach it through an SSH tunnel or a TLS proxy",
                        addr.ip()
                    );
                    return Err(src.error_at(listen, "agent.api_listen", message));
                }
                if api_token_file.is_none() {
                    let message =
                        "a TCP listener needs agent.api_token_file (no token, no TCP listener)";
                    return Err(src.error_at(listen, "agent.api_listen", message));
                }
                Some(addr)
            }
            None => None,
        };
        let nat_entries = match &self.nat_entries {
            Some(v) => src.integer(v, "agent.nat_entries", MIN_NAT_ENTRIES, MAX_NAT_ENTRIES)?,
            None => DEFAULT_NAT_ENTRIES,
        };
        Ok(AgentConfig {
            nat_entries,
            interfaces,
            xdp_mode: self.xdp_mode.unwrap_or_default(),
            conntrack_entries,
            bpf_pin_dir,
            state_dir,
            api_socket,
            api_listen,
            api_token_file,
        })
    }
}

impl RawFlows {
    pub(super) fn validate(&self, src: &Source<'_>) -> Result<FlowSettings, ConfigError> {
        let defaults = FlowSettings::default();
        let timeout = |value: &Option<Spanned<String>>, key: &str, default: Duration| {
            let Some(value) = value else {
                return Ok(default);
            };
            let key = format!("flows.{key}");
            let duration = src.duration(value, &key)?;
            if FLOW_TIMEOUTS.contains(&duration) {
                Ok(duration)
            } else {
                Err(src.error_at(value, &key, "must be at least 100ms and at most 24h"))
            }
        };
        let nat_ports = match &self.nat_ports {
            Some(text) => text
                .get_ref()
                .parse()
                .map_err(|message: String| src.error_at(text, "flows.nat_ports", message))?,
            None => defaults.nat_ports,
        };
        Ok(FlowSettings {
            tcp_idle_timeout: timeout(
                &self.tcp_idle_timeout,
                "tcp_idle_timeout",
                defaults.tcp_idle_timeout,
            )?,
            udp_idle_timeout: timeout(
                &self.udp_idle_timeout,
                "udp_idle_timeout",
                defaults.udp_idle_timeout,
            )?,
            tcp_linger: timeout(&self.tcp_linger, "tcp_linger", defaults.tcp_linger)?,
            tcp_embryonic_timeout: timeout(
                &self.tcp_embryonic_timeout,
                "tcp_embryonic_timeout",
                defaults.tcp_embryonic_timeout,
            )?,
            nat_ports,
        })
    }
}
