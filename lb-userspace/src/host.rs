//! What the host's network stack must provide for `bpf_fib_lookup` to succeed:
//!
//! - forwarding enabled on the attached interfaces (the helper answers FWD_DISABLED
//!   otherwise, as the kernel would refuse to route the packet);
//! - resolved next hops towards backends, so the first packet of a flow finds a neighbour
//!   entry instead of failing with NO_NEIGH. The kernel's *managed* neighbour entries
//!   (Linux 5.16, `NTF_MANAGED`) exist for this: the kernel resolves them on its own and
//!   keeps them fresh without traffic. The agent creates one per next hop with iproute2
//!   (`ip neigh replace … managed`).

use std::{net::IpAddr, process::Command};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("enabling forwarding on {interface} ({path}): {source}")]
    Forwarding { interface: String, path: String, source: std::io::Error },
    #[error("running `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("`{command}` printed no route")]
    NoRoute { command: String },
}

/// Enables IPv4 and IPv6 forwarding on `interface` (per interface, not host-wide).
pub fn enable_forwarding(interface: &str) -> Result<(), HostError> {
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{interface}/forwarding");
        std::fs::write(&path, "1").map_err(|source| HostError::Forwarding {
            interface: interface.to_owned(),
            path,
            source,
        })?;
    }
    Ok(())
}

/// A next hop as `ip -j route get` reports it.
#[derive(Debug, Deserialize)]
struct Route {
    dev: String,
    gateway: Option<IpAddr>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// Makes the next hop towards `backend` a managed neighbour entry. Backends reached
/// through the host itself (local addresses) need none.
pub fn ensure_managed(backend: IpAddr) -> Result<(), HostError> {
    let output = ip(&["-j", "route", "get", &backend.to_string()])?;
    let routes: Vec<Route> = serde_json::from_str(&output).unwrap_or_default();
    let Some(route) = routes.into_iter().next() else {
        return Err(HostError::NoRoute { command: format!("ip route get {backend}") });
    };
    if route.kind.as_deref() == Some("local") || route.dev == "lo" {
        return Ok(());
    }
    let next_hop = route.gateway.unwrap_or(backend).to_string();
    ip(&["neigh", "replace", &next_hop, "dev", &route.dev, "managed"]).map(drop)
}

fn ip(args: &[&str]) -> Result<String, HostError> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| HostError::Spawn { command: command.clone(), source })?;
    if !output.status.success() {
        return Err(HostError::Failed {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
