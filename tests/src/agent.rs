//! The `weir` agent as a test fixture: started inside a namespace on a configuration
//! written to a private file, reloaded with SIGHUP, stopped (and its file removed) on drop.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bins::weir_bin,
    netns::{Child, Netns, next_id},
};

/// What the agent logs once it is attached and serving.
pub const READY: &str = "weir agent ready";
/// What it logs after applying a reloaded configuration.
pub const RELOADED: &str = "configuration reloaded";
/// How long start-up (program load and verification included) may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running agent. Dropping it stops the agent (SIGTERM, which detaches the program).
#[derive(Debug)]
pub struct Agent {
    child: Child,
    config: PathBuf,
}

impl Agent {
    /// Starts `weir agent` inside `ns` on `config` (TOML text) and waits until it is ready.
    pub fn start(ns: &Netns, config: &str) -> Result<Agent> {
        let path =
            std::env::temp_dir().join(format!("weir-{}-{}.toml", std::process::id(), next_id()));
        fs::write(&path, config).with_context(|| format!("cannot write {}", path.display()))?;
        let weir = weir_bin()?;
        let mut agent = Agent {
            child: ns.spawn(&[
                weir.as_os_str(),
                "agent".as_ref(),
                "--config".as_ref(),
                path.as_os_str(),
            ])?,
            config: path,
        };
        agent.child.wait_for_log(READY, START_TIMEOUT)?;
        Ok(agent)
    }

    /// Rewrites the configuration, sends SIGHUP and waits until the agent applied it.
    pub fn reload(&mut self, config: &str) -> Result<()> {
        let before = self.child.log().matches(RELOADED).count();
        fs::write(&self.config, config)
            .with_context(|| format!("cannot write {}", self.config.display()))?;
        self.child.signal(libc::SIGHUP)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.log().matches(RELOADED).count() == before {
            if Instant::now() > deadline || !self.child.is_running() {
                bail!(
                    "the agent did not apply the reloaded configuration:\n{}",
                    self.child.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Everything the agent printed so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the agent with SIGTERM and returns its whole output (the counters it prints
    /// on the way out included).
    pub fn stop(mut self) -> Result<String> {
        self.child.signal(libc::SIGTERM)?;
        let status = self.child.wait_timeout(Duration::from_secs(10))?;
        let log = self.child.log();
        match status {
            Some(status) if status.success() => Ok(log),
            Some(status) => bail!("the agent exited with {status}:\n{log}"),
            None => bail!("the agent did not exit within 10 s of SIGTERM:\n{log}"),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.config);
    }
}
