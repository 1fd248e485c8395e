//! What the host's network stack must provide for `bpf_fib_lookup` to succeed:
//!
//! - forwarding enabled on the attached interfaces (the helper answers FWD_DISABLED
//!   otherwise, as the kernel would refuse to route the packet), with IPv6 router
//!   advertisements still accepted where they were;
//! - resolved next hops towards backends, so the first packet of a flow finds a neighbour
//!   entry instead of failing with NO_NEIGH. The kernel's *managed* neighbour entries
//!   (Linux 5.16, `NTF_MANAGED`) exist for this: the kernel resolves them on its own and
//!   keeps them fresh without traffic. The agent creates one per next hop with iproute2
//!   (`ip neigh replace … managed`).
//!
//! [`HostSetup`] records what it changed, so the agent can put the host back as it found
//! it when it detaches.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("forwarding setting {path}: {source}")]
    Forwarding {
        interface: String,
        path: String,
        source: std::io::Error,
    },
    #[error("running `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("`{command}` did not finish within {after:?}")]
    TimedOut { command: String, after: Duration },
    #[error("`{command}` printed no route")]
    NoRoute { command: String },
}

/// Where the network sysctls are.
const SYSCTL_NET: &str = "/proc/sys/net";

/// Host settings changed by the agent, and how to undo them.
#[derive(Debug, Default)]
pub struct HostSetup {
    /// Forwarding sysctls (and `accept_ra`) written, with the value each had before.
    forwarding: Vec<(String, String)>,
    /// Neighbour entries (next hop, device) made managed.
    managed: BTreeSet<(IpAddr, String)>,
    /// Backends whose next hop has been handled: every reload and API change passes all
    /// backends, and two `ip` runs each would make a change to one of thousands slow.
    handled: BTreeSet<IpAddr>,
}

impl HostSetup {
    /// Enables IPv4 and IPv6 forwarding on `interface` (per interface, not host-wide).
    /// IPv6 forwarding turns off router advertisements on the interface (a router takes
    /// none), which would cost a host that gets its address or default route from them
    /// (SLAAC) that address or route: `accept_ra = 1` becomes 2, "even when forwarding".
    pub fn enable_forwarding(&mut self, interface: &str) -> Result<(), HostError> {
        self.enable_forwarding_in(Path::new(SYSCTL_NET), interface)
    }

    /// [`Self::enable_forwarding`] on the sysctls under `root` (`/proc/sys/net`).
    fn enable_forwarding_in(&mut self, root: &Path, interface: &str) -> Result<(), HostError> {
        let conf = |family: &str, name: &str| {
            root.join(family)
                .join("conf")
                .join(interface)
                .join(name)
                .display()
                .to_string()
        };
        let accept_ra = conf("ipv6", "accept_ra");
        // Before forwarding, so that no advertisement is missed in between.
        if self.read_sysctl(interface, &accept_ra)? == "1" {
            self.write_sysctl(interface, accept_ra, "2")?;
        }
        for family in ["ipv4", "ipv6"] {
            self.write_sysctl(interface, conf(family, "forwarding"), "1")?;
        }
        Ok(())
    }

    fn read_sysctl(&self, interface: &str, path: &str) -> Result<String, HostError> {
        let value = std::fs::read_to_string(path).map_err(|source| HostError::Forwarding {
            interface: interface.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        Ok(value.trim().to_owned())
    }

    /// Writes a sysctl, remembering the value it had first (for [`Self::restore`]).
    fn write_sysctl(
        &mut self,
        interface: &str,
        path: String,
        value: &str,
    ) -> Result<(), HostError> {
        let previous = self.read_sysctl(interface, &path)?;
        std::fs::write(&path, value).map_err(|source| HostError::Forwarding {
            interface: interface.to_owned(),
            path: path.clone(),
            source,
        })?;
        if !self.forwarding.iter().any(|(known, _)| *known == path) {
            self.forwarding.push((path, previous));
        }
        Ok(())
    }

    /// Makes the next hop towards `backend` a managed neighbour entry. Backends reached
    /// through the host itself (local addresses) need none.
    pub fn manage_next_hop(&mut self, backend: IpAddr) -> Result<(), HostError> {
        if self.handled.contains(&backend) {
            return Ok(());
        }
        let output = ip(&["-j", "route", "get", &backend.to_string()])?;
        let routes: Vec<Route> = serde_json::from_str(&output).unwrap_or_default();
        let Some(route) = routes.into_iter().next() else {
            return Err(HostError::NoRoute {
                command: format!("ip route get {backend}"),
            });
        };
        if route.kind.as_deref() == Some("local") || route.dev == "lo" {
            self.handled.insert(backend);
            return Ok(());
        }
        let next_hop = route.gateway.unwrap_or(backend);
        ip(&[
            "neigh",
            "replace",
            &next_hop.to_string(),
            "dev",
            &route.dev,
            "managed",
        ])?;
        self.managed.insert((next_hop, route.dev));
        self.handled.insert(backend);
        Ok(())
    }

    /// The address the host sends from towards `destination` (`ip route get`'s
    /// `prefsrc`): the default NAT source towards a backend.
    pub fn source_address(destination: IpAddr) -> Result<IpAddr, HostError> {
        let command = format!("ip route get {destination}");
        let output = ip(&["-j", "route", "get", &destination.to_string()])?;
        let routes: Vec<Route> = serde_json::from_str(&output).unwrap_or_default();
        routes
            .into_iter()
            .next()
            .and_then(|route| route.prefsrc)
            .ok_or(HostError::NoRoute { command })
    }

    /// Puts back the forwarding settings and removes the managed neighbour entries (the
    /// kernel resolves those next hops again on demand). Returns what could not be undone.
    pub fn restore(self) -> Vec<HostError> {
        let mut errors = Vec::new();
        // Last written, first put back: forwarding off before RAs go back to `1`.
        for (path, previous) in self.forwarding.into_iter().rev() {
            if let Err(source) = std::fs::write(&path, previous) {
                errors.push(HostError::Forwarding {
                    interface: String::new(),
                    path,
                    source,
                });
            }
        }
        for (next_hop, dev) in self.managed {
            if let Err(err) = ip(&["neigh", "del", &next_hop.to_string(), "dev", &dev]) {
                errors.push(err);
            }
        }
        errors
    }
}

/// A next hop as `ip -j route get` reports it.
#[derive(Debug, Deserialize)]
struct Route {
    dev: String,
    gateway: Option<IpAddr>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    prefsrc: Option<IpAddr>,
}

/// How long one `ip` run may take: iproute2 answers in milliseconds, but a wedged netlink
/// or a stuck `ip` must not hold the agent.
pub const IP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `ip ARGS…` and returns its stdout; an error quotes its stderr. A run that takes
/// longer than [`IP_TIMEOUT`] is killed. The one way the agent runs `ip`: async callers use
/// [`ip_async`].
pub fn ip(args: &[&str]) -> Result<String, HostError> {
    let command = format!("ip {}", args.join(" "));
    let spawn_error = |source| HostError::Spawn {
        command: command.clone(),
        source,
    };
    let child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let pid = child.id();
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = match result.recv_timeout(IP_TIMEOUT) {
        Ok(output) => output.map_err(spawn_error)?,
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which its waiting thread has
            // not reaped yet (it is still running).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return Err(HostError::TimedOut {
                command,
                after: IP_TIMEOUT,
            });
        }
    };
    if !output.status.success() {
        return Err(HostError::Failed {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// [`ip`] on the blocking pool, so that the calling task keeps its timers.
pub async fn ip_async(args: &[&str]) -> Result<String, HostError> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ip(&args)
    })
    .await
    .unwrap_or_else(|err| {
        Err(HostError::Spawn {
            command: "ip".into(),
            source: std::io::Error::other(err),
        })
    })
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::HostSetup;

    fn sysctl(root: &Path, family: &str, name: &str) -> String {
        fs::read_to_string(root.join(family).join("conf/eth0").join(name)).unwrap()
    }

    #[test]
    fn forwarding_keeps_router_advertisements_and_restores_them() {
        let root = std::env::temp_dir().join(format!("weir-sysctl-{}", std::process::id()));
        for family in ["ipv4", "ipv6"] {
            fs::create_dir_all(root.join(family).join("conf/eth0")).unwrap();
            fs::write(root.join(family).join("conf/eth0/forwarding"), "0\n").unwrap();
        }
        fs::write(root.join("ipv6/conf/eth0/accept_ra"), "1\n").unwrap();
        let mut host = HostSetup::default();
        host.enable_forwarding_in(&root, "eth0").unwrap();
        assert_eq!(sysctl(&root, "ipv4", "forwarding"), "1");
        assert_eq!(sysctl(&root, "ipv6", "forwarding"), "1");
        assert_eq!(sysctl(&root, "ipv6", "accept_ra"), "2");
        assert!(host.restore().is_empty());
        assert_eq!(sysctl(&root, "ipv6", "forwarding"), "0");
        assert_eq!(sysctl(&root, "ipv6", "accept_ra"), "1");

        // RAs turned off stay off.
        fs::write(root.join("ipv6/conf/eth0/accept_ra"), "0\n").unwrap();
        let mut host = HostSetup::default();
        host.enable_forwarding_in(&root, "eth0").unwrap();
        assert_eq!(sysctl(&root, "ipv6", "accept_ra").trim(), "0");
        fs::remove_dir_all(&root).unwrap();
    }
}
