//! BIRD 2 as a test fixture: a routing daemon started inside a namespace on a
//! configuration of the test's, with its control socket and pid file in a private
//! directory (never the system's /run/bird), queried with `birdc`, killed on drop.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd,
    netns::{Child, Netns, next_id},
};

/// How long BIRD may take to read its configuration and open its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running BIRD. Dropping it kills it and removes its directory.
#[derive(Debug)]
pub struct Bird {
    // Declared first, so it stops before its directory goes.
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Bird {
    /// Starts `bird` in the foreground inside `ns` on `config` (BIRD 2 syntax; add
    /// `log stderr all;` to see its log in [`Bird::log`]) and waits until `birdc` can
    /// talk to it.
    pub fn start(ns: &Netns, config: &str) -> Result<Bird> {
        let dir =
            std::env::temp_dir().join(format!("weir-bird-{}-{}", std::process::id(), next_id()));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let conf = dir.join("bird.conf");
        fs::write(&conf, config).with_context(|| format!("cannot write {}", conf.display()))?;
        let socket = dir.join("bird.ctl");
        let argv = [
            "bird".into(),
            "-f".into(),
            "-c".into(),
            conf.into_os_string(),
            "-s".into(),
            socket.clone().into_os_string(),
            "-P".into(),
            dir.join("bird.pid").into_os_string(),
        ];
        let child = ns
            .spawn(&argv)
            .context("cannot start bird (install the bird2 package: `cargo xtask setup`)")?;
        let mut bird = Bird { child, dir, socket };
        let deadline = Instant::now() + START_TIMEOUT;
        while bird.birdc(&["show", "status"]).is_err() {
            if !bird.child.is_running() || Instant::now() > deadline {
                bail!(
                    "bird did not start within {START_TIMEOUT:?}; its output:\n{}",
                    bird.child.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bird)
    }

    /// Runs `birdc -s SOCKET ARGS…` (from the host: the Unix socket is reachable from any
    /// namespace) and returns its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let socket = self.socket.to_string_lossy();
        let mut argv = vec!["birdc", "-s", &socket];
        argv.extend_from_slice(args);
        cmd::run(&argv)
    }

    /// Everything BIRD printed so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Kills BIRD with SIGKILL (it withdraws nothing: its peers notice through their
    /// hold timers or BFD) and waits for it to die.
    pub fn kill(mut self) -> Result<()> {
        self.child.signal(libc::SIGKILL)?;
        self.child.wait_timeout(Duration::from_secs(5))?;
        Ok(())
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.signal(libc::SIGKILL);
        let _ = self.child.wait_timeout(Duration::from_secs(5));
        let _ = fs::remove_dir_all(&self.dir);
    }
}
