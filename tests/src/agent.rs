//! The `weir` agent as a test fixture: started inside a namespace on a configuration
//! written to a private file, with its own bpffs pin directory, reloaded with SIGHUP,
//! stopped on drop (its file and pins removed, so nothing stays attached).

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bins::weir_bin,
    cmd,
    netns::{Child, Netns, next_id},
};

/// What the agent logs once it is attached and serving.
pub const READY: &str = "weir agent ready";
/// What it logs after applying a reloaded configuration.
pub const RELOADED: &str = "configuration reloaded";
/// How long start-up (program load and verification included) may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the test bed mounts its own bpffs. Not under /sys: `ip netns exec` mounts a
/// fresh /sys for the commands it runs, which hides /sys/fs/bpf from agents in namespaces.
pub const BPFFS: &str = "/run/weir-test-bpffs";

/// Mounts the test bed's bpffs at [`BPFFS`] unless it is mounted already.
fn mount_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
    static MOUNT: Mutex<()> = Mutex::new(());
    let _serial = MOUNT.lock().unwrap_or_else(|e| e.into_inner());
    fs::create_dir_all(BPFFS).with_context(|| format!("cannot create {BPFFS}"))?;
    let path = std::ffi::CString::new(BPFFS)?;
    // SAFETY: `path` is a valid C string and `stat` a writable statfs buffer.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } == 0 && stat.f_type == BPF_FS_MAGIC {
        return Ok(());
    }
    cmd::run(&["mount", "-t", "bpf", "bpf", BPFFS]).map(drop)
}

/// A pin directory on the test bed's bpffs for one test's agents (`[agent] bpf_pin_dir`),
/// removed on drop: whatever is pinned there (maps, XDP links) goes away with it.
#[derive(Debug)]
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new() -> Result<PinDir> {
        mount_bpffs()?;
        Ok(PinDir(Path::new(BPFFS).join(format!(
            "{}-{}",
            std::process::id(),
            next_id()
        ))))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running agent. Dropping it kills the agent, then removes its pins (detaching it).
#[derive(Debug)]
pub struct Agent {
    // Declared first, so it is killed before the pins go.
    child: Child,
    config: PathBuf,
    _own_pins: Option<PinDir>,
}

impl Agent {
    /// Starts `weir agent` inside `ns` on `config` (TOML text with an `[agent]` table)
    /// with a pin directory of its own, and waits until it is ready.
    pub fn start(ns: &Netns, config: &str) -> Result<Agent> {
        let pins = PinDir::new()?;
        let mut agent = Agent::start_with(ns, config, &pins, &[])?;
        agent._own_pins = Some(pins);
        Ok(agent)
    }

    /// Starts `weir agent ARGS…` on `config` with the pin directory `pins`, which several
    /// agents in turn may share (restart and upgrade tests), and waits until it is ready.
    pub fn start_with(ns: &Netns, config: &str, pins: &PinDir, args: &[&str]) -> Result<Agent> {
        let pinned = config.replacen(
            "[agent]\n",
            &format!("[agent]\nbpf_pin_dir = \"{}\"\n", pins.path().display()),
            1,
        );
        if pinned == config {
            bail!("the test configuration has no \"[agent]\" line to add bpf_pin_dir to");
        }
        let path =
            std::env::temp_dir().join(format!("weir-{}-{}.toml", std::process::id(), next_id()));
        fs::write(&path, pinned).with_context(|| format!("cannot write {}", path.display()))?;
        let weir = weir_bin()?;
        let mut argv = vec![
            weir.into_os_string(),
            "agent".into(),
            "--config".into(),
            path.clone().into(),
        ];
        argv.extend(args.iter().map(Into::into));
        let mut agent = Agent {
            child: ns.spawn(&argv)?,
            config: path,
            _own_pins: None,
        };
        agent.child.wait_for_log(READY, START_TIMEOUT)?;
        Ok(agent)
    }

    /// Kills the agent with SIGKILL (no clean-up of its own) and waits for it to die.
    pub fn kill(mut self) -> Result<()> {
        self.child.signal(libc::SIGKILL)?;
        self.child.wait_timeout(Duration::from_secs(5))?;
        Ok(())
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
    /// on the way out included). Unless it was started with `--detach-on-exit`, the
    /// dataplane stays attached until the pins are removed.
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
