//! Changes made at runtime (through the control API), kept apart from the configuration
//! file and persisted in `[agent] state_dir`, so that they survive reloads and restarts.
//!
//! The running configuration is always *file ⊕ runtime changes*: on `weir reload` and on
//! restart the file is read again and the runtime changes are applied on top. A change
//! that no longer applies (its VIP left the file, say) is skipped with a warning.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tracing::error;

use crate::{
    api::model::NewVip,
    config::{AdminState, BackendConfig, Config, ConfigError, VipConfig, VipFirewall},
    dataplane::plan::vip_key,
};

/// The file runtime changes are kept in, inside `state_dir`.
pub const RUNTIME_FILE: &str = "runtime.json";

/// What the operator did to one backend at runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum BackendOverride {
    /// Added by the API (or re-added after a removal).
    Added {
        weight: u32,
        state: AdminState,
        /// NAT only: the backend's port (absent: the VIP's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    },
    /// Removed by the API.
    Removed,
    /// Weight and/or admin state changed by the API.
    Changed {
        weight: Option<u32>,
        state: Option<AdminState>,
    },
}

/// What the operator did to a whole VIP at runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum VipOverride {
    /// Added (or redefined) by the API; validated like the file's VIPs.
    Added(NewVip),
    /// Removed by the API.
    Removed,
}

/// Runtime changes: to whole VIPs by name, and to backends by VIP name and address
/// (applied after the VIP changes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeState {
    #[serde(default)]
    pub vips: BTreeMap<String, VipOverride>,
    #[serde(default)]
    pub backends: BTreeMap<String, BTreeMap<IpAddr, BackendOverride>>,
    /// VIPs' firewalls as edited at runtime, each replacing the VIP's whole firewall
    /// (applied last).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub firewalls: BTreeMap<String, VipFirewall>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl RuntimeState {
    /// The runtime changes kept in `state_dir` (none if there is no file yet). A file that
    /// does not parse (torn by a crash, edited by hand) does not stop the agent: it is
    /// moved aside to `runtime.json.bad-<unix time>`, loudly, and the agent starts on the
    /// configuration file alone — the operator re-applies the changes (or repairs the
    /// file, moves it back and restarts).
    pub fn load(state_dir: &Path) -> Result<Self, RuntimeError> {
        let path = state_dir.join(RUNTIME_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(RuntimeError::Io { path, source }),
        };
        let error = match serde_json::from_str(&text) {
            Ok(state) => return Ok(state),
            Err(error) => error,
        };
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let aside = state_dir.join(format!("{RUNTIME_FILE}.bad-{seconds}"));
        fs::rename(&path, &aside).map_err(|source| RuntimeError::Io {
            path: aside.clone(),
            source,
        })?;
        error!(
            file = %path.display(),
            kept_as = %aside.display(),
            %error,
            "the runtime changes cannot be read: starting on the configuration file ALONE; \
             changes made through the API are not applied until made again"
        );
        Ok(Self::default())
    }

    /// Writes the changes so that a crash or power loss at any point leaves either the
    /// old file or the new one: a temporary file, flushed to disk, renamed over the old
    /// one, and the directory flushed (which makes the rename durable).
    pub fn save(&self, state_dir: &Path) -> Result<(), RuntimeError> {
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| RuntimeError::Io { path, source }
        };
        fs::create_dir_all(state_dir).map_err(io_error(state_dir))?;
        let path = state_dir.join(RUNTIME_FILE);
        let temporary = state_dir.join(format!("{RUNTIME_FILE}.new"));
        let text = serde_json::to_string_pretty(self).expect("runtime state always serializes");
        let mut file = fs::File::create(&temporary).map_err(io_error(&temporary))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error(&temporary))?;
        fs::rename(&temporary, &path).map_err(io_error(&path))?;
        fs::File::open(state_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(state_dir))
    }

    /// Records a change to a backend, merged with what was recorded before.
    pub fn record(&mut self, vip: &str, address: IpAddr, change: BackendOverride) {
        let backends = self.backends.entry(vip.to_owned()).or_default();
        let merged = match (backends.get(&address), change) {
            (
                Some(BackendOverride::Added {
                    weight,
                    state,
                    port,
                }),
                BackendOverride::Changed {
                    weight: w,
                    state: s,
                },
            ) => BackendOverride::Added {
                weight: w.unwrap_or(*weight),
                state: s.unwrap_or(*state),
                port: *port,
            },
            (
                Some(BackendOverride::Changed { weight, state }),
                BackendOverride::Changed {
                    weight: w,
                    state: s,
                },
            ) => BackendOverride::Changed {
                weight: w.or(*weight),
                state: s.or(*state),
            },
            (_, change) => change,
        };
        backends.insert(address, merged);
    }

    /// Records a change to a whole VIP; it replaces the VIP's earlier backend changes.
    pub fn record_vip(&mut self, name: &str, change: VipOverride) {
        self.backends.remove(name);
        self.firewalls.remove(name);
        self.vips.insert(name.to_owned(), change);
    }

    /// The running configuration: `file` with the runtime changes applied, and a warning
    /// for each change that no longer applies.
    pub fn apply(&self, file: &Config) -> (Config, Vec<String>) {
        let mut config = file.clone();
        let mut warnings = Vec::new();
        for (name, change) in &self.vips {
            config.vips.retain(|vip| vip.name != *name);
            let VipOverride::Added(new) = change else {
                continue;
            };
            match validate_vip(new) {
                Ok(vip)
                    if config
                        .vips
                        .iter()
                        .any(|other| vip_key(other) == vip_key(&vip)) =>
                {
                    warnings.push(format!(
                        "runtime VIP {name:?} skipped: another VIP now has {}:{}/{}",
                        vip.address, vip.port, vip.protocol
                    ))
                }
                Ok(vip) => config.vips.push(vip),
                Err(err) => warnings.push(format!("runtime VIP {name:?} skipped: {err}")),
            }
        }
        for (vip_name, changes) in &self.backends {
            let Some(vip) = config.vips.iter_mut().find(|vip| vip.name == *vip_name) else {
                warnings.push(format!(
                    "runtime changes to VIP {vip_name:?} skipped: it is not configured any more"
                ));
                continue;
            };
            for (address, change) in changes {
                let position = vip.backends.iter().position(|b| b.address == *address);
                match (change, position) {
                    (BackendOverride::Removed, Some(i)) => {
                        vip.backends.remove(i);
                    }
                    (BackendOverride::Removed, None) => {}
                    (BackendOverride::Added { weight, state, port }, Some(i)) => {
                        vip.backends[i].weight = *weight;
                        vip.backends[i].state = *state;
                        vip.backends[i].port = *port;
                    }
                    (BackendOverride::Added { weight, state, port }, None) => {
                        vip.backends.push(BackendConfig { address: *address, port: *port, weight: *weight, state: *state });
                    }
                    (BackendOverride::Changed { weight, state }, Some(i)) => {
                        let backend = &mut vip.backends[i];
                        backend.weight = weight.unwrap_or(backend.weight);
                        backend.state = state.unwrap_or(backend.state);
                    }
                    (BackendOverride::Changed { .. }, None) => warnings.push(format!(
                        "runtime change to backend {address} of VIP {vip_name:?} skipped: it is not configured any more"
                    )),
                }
            }
        }
        for (vip_name, firewall) in &self.firewalls {
            let Some(vip) = config.vips.iter_mut().find(|vip| vip.name == *vip_name) else {
                warnings.push(format!(
                    "runtime firewall of VIP {vip_name:?} skipped: it is not configured any more"
                ));
                continue;
            };
            match crate::firewall::check_vip(firewall, vip.address, vip.port) {
                Ok(()) => vip.firewall = firewall.clone(),
                Err(err) => warnings.push(format!(
                    "runtime firewall of VIP {vip_name:?} skipped: {err}"
                )),
            }
        }
        (config, warnings)
    }
}

/// A VIP of the API, validated exactly as the configuration file's VIPs are: it is
/// written out as a one-VIP file and parsed. The error names the offending key.
pub fn validate_vip(new: &NewVip) -> Result<VipConfig, String> {
    let mut text = String::from("[agent]\ninterfaces = [\"lo\"]\n\n[[vip]]\n");
    text += &format!(
        "name = {}\naddress = \"{}\"\nport = {}\n",
        toml_literal(&new.name),
        new.address,
        new.port
    );
    if let Some(protocol) = new.protocol {
        text += &format!("protocol = \"{protocol}\"\n");
    }
    if let Some(hash) = new.hash {
        text += &format!("hash = {}\n", toml_literal(&hash));
    }
    if let Some(table_size) = new.table_size {
        text += &format!("table_size = {table_size}\n");
    }
    if let Some(health) = &new.health {
        text += "[vip.health]\n";
        for (key, value) in health {
            let Ok(value) = toml::Value::try_from(value) else {
                return Err(format!("health.{key}: null is not a value"));
            };
            text += &format!("{} = {value}\n", toml_literal(key));
        }
    }
    if let Some(forwarding) = new.forwarding {
        text += &format!("forwarding = \"{forwarding}\"\n");
    }
    if let Some(nat_source) = new.nat_source {
        text += &format!("nat_source = \"{nat_source}\"\n");
    }
    for backend in &new.backends {
        text += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend.address);
        if let Some(weight) = backend.weight {
            text += &format!("weight = {weight}\n");
        }
        if let Some(state) = backend.state {
            text += &format!("state = {}\n", toml_literal(&state));
        }
        if let Some(port) = backend.port {
            text += &format!("port = {port}\n");
        }
    }
    match Config::parse(&text, "request") {
        Ok(mut config) => Ok(config.vips.remove(0)),
        Err(ConfigError::Invalid { key, message, .. }) => {
            Err(format!("{}: {message}", key.trim_start_matches("vip[0].")))
        }
        Err(err) => Err(err.to_string()),
    }
}

/// The TOML literal of a string or enum value (quoted and escaped).
fn toml_literal<T: Serialize>(value: &T) -> String {
    toml::Value::try_from(value).map_or_else(|_| "\"\"".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Forwarding;

    fn file() -> Config {
        Config::parse(
            "[agent]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"web\"\naddress = \"198.18.0.10\"\nport = 80\n\
             [[vip.backend]]\naddress = \"198.18.1.11\"\n[[vip.backend]]\naddress = \"198.18.1.12\"\n",
            "test.toml",
        )
        .unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_runtime_firewall_replaces_the_files_and_is_checked_again() {
        let mut runtime = RuntimeState::default();
        let firewall = VipFirewall {
            deny_sources: vec!["198.18.5.0/24".parse().unwrap()],
            ..VipFirewall::default()
        };
        runtime.firewalls.insert("web".into(), firewall.clone());
        let (config, warnings) = runtime.apply(&file());
        assert_eq!(config.vips[0].firewall, firewall);
        assert!(warnings.is_empty());
        // A list that no longer fits its VIP (ports on a one-port VIP) is skipped.
        runtime.firewalls.insert(
            "web".into(),
            VipFirewall {
                allow_ports: vec![443],
                ..VipFirewall::default()
            },
        );
        let (config, warnings) = runtime.apply(&file());
        assert!(config.vips[0].firewall.is_empty());
        assert!(warnings[0].contains("allow_ports[0]"), "{warnings:?}");
        // It survives a save and a load.
        let dir = std::env::temp_dir().join(format!("weir-fw-runtime-{}", std::process::id()));
        runtime.save(&dir).unwrap();
        assert_eq!(RuntimeState::load(&dir).unwrap(), runtime);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changes_apply_on_top_of_the_file() {
        let mut runtime = RuntimeState::default();
        runtime.record(
            "web",
            ip("198.18.1.11"),
            BackendOverride::Changed {
                weight: None,
                state: Some(AdminState::Drain),
            },
        );
        runtime.record("web", ip("198.18.1.12"), BackendOverride::Removed);
        runtime.record(
            "web",
            ip("198.18.1.13"),
            BackendOverride::Added {
                weight: 50,
                state: AdminState::Ready,
                port: None,
            },
        );
        runtime.record(
            "web",
            ip("198.18.1.13"),
            BackendOverride::Changed {
                weight: Some(70),
                state: None,
            },
        );
        let (config, warnings) = runtime.apply(&file());
        assert!(warnings.is_empty());
        let backends = &config.vips[0].backends;
        assert_eq!(backends.len(), 2);
        assert_eq!(
            (backends[0].address, backends[0].state),
            (ip("198.18.1.11"), AdminState::Drain)
        );
        assert_eq!(
            (backends[1].address, backends[1].weight),
            (ip("198.18.1.13"), 70)
        );
    }

    #[test]
    fn changes_that_no_longer_apply_are_skipped_with_a_warning() {
        let mut runtime = RuntimeState::default();
        runtime.record("gone", ip("198.18.1.11"), BackendOverride::Removed);
        runtime.record(
            "web",
            ip("198.18.1.99"),
            BackendOverride::Changed {
                weight: Some(1),
                state: None,
            },
        );
        let (config, warnings) = runtime.apply(&file());
        assert_eq!(config, file());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn state_survives_a_save_and_load() {
        let dir = std::env::temp_dir().join(format!("weir-runtime-test-{}", std::process::id()));
        let mut runtime = RuntimeState::default();
        runtime.record(
            "web",
            ip("2001:db8::1"),
            BackendOverride::Added {
                weight: 5,
                state: AdminState::Maint,
                port: Some(8080),
            },
        );
        runtime.save(&dir).unwrap();
        assert_eq!(RuntimeState::load(&dir).unwrap(), runtime);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(RuntimeState::load(&dir).unwrap(), RuntimeState::default());
    }

    #[test]
    fn a_torn_runtime_file_is_set_aside_and_the_agent_starts_without_it() {
        let dir = std::env::temp_dir().join(format!("weir-runtime-torn-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(RUNTIME_FILE), "{\"vips\": {\"web\": {\"chan").unwrap();
        assert_eq!(RuntimeState::load(&dir).unwrap(), RuntimeState::default());
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("runtime.json.bad-"), "{names:?}");
        assert_eq!(
            fs::read_to_string(dir.join(&names[0])).unwrap(),
            "{\"vips\": {\"web\": {\"chan",
            "kept as it was, for the operator"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_save_leaves_only_the_runtime_file() {
        let dir = std::env::temp_dir().join(format!("weir-runtime-save-{}", std::process::id()));
        RuntimeState::default().save(&dir).unwrap();
        RuntimeState::default().save(&dir).unwrap();
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [RUNTIME_FILE]);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn new_vip(port: u16, table_size: Option<u32>) -> NewVip {
        NewVip {
            name: "api".into(),
            address: ip("198.18.0.20"),
            port,
            protocol: None,
            hash: None,
            table_size,
            health: None,
            forwarding: None,
            nat_source: None,
            backends: vec![crate::api::model::NewBackend {
                address: ip("198.18.1.21"),
                port: None,
                weight: Some(7),
                state: None,
            }],
        }
    }

    #[test]
    fn api_vips_are_validated_like_the_file() {
        let vip = validate_vip(&new_vip(443, None)).unwrap();
        assert_eq!(
            (vip.port, vip.table_size, vip.backends[0].weight),
            (443, 65537, 7)
        );
        assert_eq!(
            validate_vip(&new_vip(443, Some(100))).unwrap_err(),
            "table_size: 100 is not prime; Maglev needs a prime table size (e.g. 65537)"
        );
        let mut checked = new_vip(443, None);
        let health = serde_json::json!({"kind": "http", "path": "/ready", "interval": "500ms"});
        checked.health = serde_json::from_value(health).unwrap();
        let vip = validate_vip(&checked).unwrap();
        assert_eq!(vip.health.path.as_deref(), Some("/ready"));
        assert_eq!(vip.health.fastinter, std::time::Duration::from_millis(500));
        checked.health = serde_json::from_value(serde_json::json!({"rise": 0})).unwrap();
        assert_eq!(
            validate_vip(&checked).unwrap_err(),
            "health.rise: must be in 1..=1000, got 0"
        );
    }

    #[test]
    fn api_nat_vips_carry_their_source_and_ports() {
        let mut new = new_vip(443, None);
        new.forwarding = Some(Forwarding::Nat);
        new.nat_source = Some(ip("198.18.0.1"));
        new.backends[0].port = Some(8443);
        let vip = validate_vip(&new).unwrap();
        assert_eq!(vip.forwarding, Forwarding::Nat);
        assert_eq!(vip.nat_source, Some(ip("198.18.0.1")));
        assert_eq!(vip.backends[0].port, Some(8443));
        new.forwarding = None;
        new.nat_source = None;
        assert!(
            validate_vip(&new)
                .unwrap_err()
                .starts_with("backend[0].port: DSR cannot change the port")
        );
    }

    #[test]
    fn vip_changes_replace_the_file_and_skip_clashes() {
        let mut runtime = RuntimeState::default();
        runtime.record_vip("api", VipOverride::Added(new_vip(443, None)));
        runtime.record_vip("web", VipOverride::Removed);
        let (config, warnings) = runtime.apply(&file());
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            config
                .vips
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            ["api"]
        );

        let mut clash = RuntimeState::default();
        let mut same_port = new_vip(80, None);
        same_port.address = ip("198.18.0.10");
        clash.record_vip("api", VipOverride::Added(same_port));
        let (config, warnings) = clash.apply(&file());
        assert_eq!(config, file());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
}
