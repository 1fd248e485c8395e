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

/// The directories one test's agents (in turn) live in, removed on drop: a pin directory
/// on the test bed's bpffs (`bpf_pin_dir`; whatever is pinned there, maps and XDP links,
/// goes away with it) and a private directory for `state_dir` and the API socket.
#[derive(Debug)]
pub struct AgentDirs {
    /// `None`: the agent's default pin directory (see [`AgentDirs::default_pins`]).
    pins: Option<PathBuf>,
    home: PathBuf,
}

impl AgentDirs {
    pub fn new() -> Result<AgentDirs> {
        mount_bpffs()?;
        let mut dirs = AgentDirs::default_pins()?;
        dirs.pins = Some(Path::new(BPFFS).join(dirs.name()));
        Ok(dirs)
    }

    /// Like [`AgentDirs::new`], but the agent keeps its default `bpf_pin_dir` (under
    /// /sys/fs/bpf). Only for agents in a network namespace: `ip netns exec` gives each
    /// its own mount namespace and /sys, so what it mounts and pins there goes with it.
    pub fn default_pins() -> Result<AgentDirs> {
        let name = format!("{}-{}", std::process::id(), next_id());
        let home = std::env::temp_dir().join(format!("weir-test-{name}"));
        fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
        Ok(AgentDirs { pins: None, home })
    }

    fn name(&self) -> String {
        let home = self.home.file_name().unwrap_or_default().to_string_lossy();
        home.trim_start_matches("weir-test-").to_owned()
    }

    /// The pin directory on the test bed's bpffs (`None` with the default one).
    pub fn pins(&self) -> Option<&Path> {
        self.pins.as_deref()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.home.join("state")
    }

    /// The control API's Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.home.join("api.sock")
    }

    /// The `[agent]` settings that place an agent in these directories.
    fn settings(&self) -> String {
        let pins = self.pins.as_ref().map_or(String::new(), |pins| {
            format!("bpf_pin_dir = \"{}\"\n", pins.display())
        });
        format!(
            "{pins}state_dir = \"{}\"\napi_socket = \"{}\"\n",
            self.state_dir().display(),
            self.socket().display()
        )
    }
}

impl Drop for AgentDirs {
    fn drop(&mut self) {
        if let Some(pins) = &self.pins {
            let _ = fs::remove_dir_all(pins);
        }
        let _ = fs::remove_dir_all(&self.home);
    }
}

/// A running agent. Dropping it kills the agent, then removes its pins (detaching it).
#[derive(Debug)]
pub struct Agent {
    // Declared first, so it is killed before the pins go.
    child: Child,
    config: PathBuf,
    socket: PathBuf,
    _own_dirs: Option<AgentDirs>,
}

impl Agent {
    /// Starts `weir agent` inside `ns` on `config` (TOML text with an `[agent]` table)
    /// with a pin directory of its own, and waits until it is ready.
    pub fn start(ns: &Netns, config: &str) -> Result<Agent> {
        let dirs = AgentDirs::new()?;
        let mut agent = Agent::start_with(ns, config, &dirs, &[])?;
        agent._own_dirs = Some(dirs);
        Ok(agent)
    }

    /// Starts `weir agent ARGS…` on `config` in the directories `dirs`, which several
    /// agents in turn may share (restart and upgrade tests), and waits until it is ready.
    pub fn start_with(ns: &Netns, config: &str, dirs: &AgentDirs, args: &[&str]) -> Result<Agent> {
        let pinned = config.replacen("[agent]\n", &format!("[agent]\n{}", dirs.settings()), 1);
        if pinned == config {
            bail!("the test configuration has no \"[agent]\" line to add the directories to");
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
            socket: dirs.socket(),
            _own_dirs: None,
        };
        agent.child.wait_for_log(READY, START_TIMEOUT)?;
        Ok(agent)
    }

    /// The control API's Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The configuration file it runs on (with its directories filled in): what a
    /// `weir proxy` beside it reads too.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Runs the `weir` CLI against this agent's API socket (from the host: a Unix socket
    /// is reachable from any network namespace) and returns its output.
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        let output = std::process::Command::new(weir_bin()?)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("cannot run the weir CLI")?;
        Ok(output)
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
