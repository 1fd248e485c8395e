//! keepalived (2.2.7, the Debian 12 package, installed by `cargo xtask setup`) as a test
//! fixture: one VRRPv3 instance in a namespace, its configuration and pid files in a
//! private directory, stopped (SIGTERM, so it sends its priority 0 advert) on drop.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};

use crate::netns::{Child, Netns, next_id};

/// One `vrrp_instance`: every node starts as BACKUP, the priorities decide.
#[derive(Clone, Debug)]
pub struct Instance<'a> {
    pub interface: &'a str,
    pub vrid: u8,
    pub priority: u8,
    /// `advert_int`, in centiseconds.
    pub advert_centis: u16,
    pub addresses: &'a [IpAddr],
}

#[derive(Debug)]
pub struct Keepalived {
    // Declared first: stopped before its directory goes.
    child: Child,
    dir: PathBuf,
}

impl Keepalived {
    /// Starts `keepalived --vrrp --dont-fork` with `instance` inside `ns`.
    pub fn start(ns: &Netns, instance: &Instance<'_>) -> Result<Keepalived> {
        let dir = std::env::temp_dir().join(format!(
            "weir-keepalived-{}-{}",
            std::process::id(),
            next_id()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let addresses: String = instance
            .addresses
            .iter()
            .map(|a| {
                let prefix = if a.is_ipv4() { 32 } else { 128 };
                format!("    {a}/{prefix} dev {}\n", instance.interface)
            })
            .collect();
        let conf = format!(
            "global_defs {{\n  router_id weir_test\n  vrrp_version 3\n}}\n\
             vrrp_instance weir_test {{\n  state BACKUP\n  interface {}\n  \
             virtual_router_id {}\n  priority {}\n  advert_int {}.{:02}\n  \
             virtual_ipaddress {{\n{addresses}  }}\n}}\n",
            instance.interface,
            instance.vrid,
            instance.priority,
            instance.advert_centis / 100,
            instance.advert_centis % 100
        );
        let path = |name: &str| dir.join(name).display().to_string();
        std::fs::write(path("keepalived.conf"), conf).context("cannot write keepalived.conf")?;
        let child = ns
            .spawn(&[
                "keepalived".to_owned(),
                "--dont-fork".into(),
                "--log-console".into(),
                "--log-detail".into(),
                "--no-syslog".into(),
                "--vrrp".into(),
                "--use-file".into(),
                path("keepalived.conf"),
                "--pid".into(),
                path("keepalived.pid"),
                "--vrrp_pid".into(),
                path("vrrp.pid"),
            ])
            .context("cannot run keepalived (installed by `cargo xtask setup`)")?;
        Ok(Keepalived { child, dir })
    }

    /// "MASTER", "BACKUP" or "FAULT", from its log; None before its first state.
    pub fn state(&self) -> Option<&'static str> {
        let log = self.child.log();
        ["MASTER", "BACKUP", "FAULT"]
            .into_iter()
            .filter_map(|state| {
                log.rfind(&format!("Entering {state} STATE"))
                    .map(|at| (at, state))
            })
            .max()
            .map(|(_, state)| state)
    }

    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Sends SIGTERM (keepalived then advertises priority 0) without waiting.
    pub fn terminate(&mut self) -> Result<()> {
        self.child.signal(libc::SIGTERM)
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let _ = self.child.signal(libc::SIGTERM);
        let _ = self.child.wait_timeout(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
