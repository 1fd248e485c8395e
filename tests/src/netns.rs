//! Network namespaces as RAII guards, and child processes running inside them.

use std::{
    ffi::OsStr,
    fs::{self, File},
    io::Read,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::cmd;

/// Where `ip netns add` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Prefix of every namespace (and interface) the test bed creates.
pub const PREFIX: &str = "weir-";

/// The nftables table of [`Netns::block_tcp_output`].
const BLOCK_TABLE: &str = "weir_test_block";

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` sets up the /run/netns mount on first use; concurrent first uses in one
/// process can race, so this process adds its namespaces one at a time.
static ADD_LOCK: Mutex<()> = Mutex::new(());

/// A number unique within this process, for names.
pub(crate) fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Fails with a clear message unless this process runs as root (network namespaces,
/// veths and XDP all need it).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "the weir test bed needs root (network namespaces, veth, XDP); running as uid {euid}. \
         Run the tests as root, e.g. `sudo -E cargo xtask test`"
    );
    Ok(())
}

/// A network namespace, named `weir-<pid>-<n>-<role>`, deleted (with every process still
/// inside it killed) when dropped, also while unwinding from a panic.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with its loopback up and IPv6 duplicate address
    /// detection off (addresses are usable at once). `role` (a short `[a-z0-9-]` word)
    /// ends the name, to recognise it in `ip netns list`.
    pub fn new(role: &str) -> Result<Netns> {
        require_root()?;
        ensure!(
            !role.is_empty()
                && role.len() <= 16
                && role
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "bad namespace role {role:?}: use 1-16 characters of [a-z0-9-]"
        );
        let name = format!("{PREFIX}{}-{}-{role}", std::process::id(), next_id());
        {
            let _serial = ADD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            cmd::run(&["ip", "netns", "add", &name]).with_context(|| {
                format!("cannot create network namespace {name} (are you root, with iproute2 installed?)")
            })?;
        }
        let ns = Netns { name };
        ns.setup_defaults()
            .with_context(|| format!("cannot set up network namespace {}", ns.name))?;
        Ok(ns)
    }

    fn setup_defaults(&self) -> Result<()> {
        for key in [
            "net.ipv6.conf.all.accept_dad",
            "net.ipv6.conf.default.accept_dad",
        ] {
            self.sysctl(key, "0")?;
        }
        self.ip(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`,
    /// which also mounts a matching /sys). Add arguments, environment, then run it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its stdout; the error names the
    /// command and quotes its stderr.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<String> {
        let (program, args) = argv
            .split_first()
            .context("Netns::run: empty command line")?;
        cmd::check(self.command(program).args(args))
    }

    /// Runs `argv` inside the namespace and returns its output whatever its status.
    pub fn output<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output> {
        let (program, args) = argv
            .split_first()
            .context("Netns::output: empty command line")?;
        cmd::output(self.command(program).args(args))
    }

    /// Runs `ip -n NAME ARGS…` (cheaper than `run(["ip", …])`).
    pub fn ip<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        cmd::check(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Starts the long-running `argv` inside the namespace; the returned guard stops it.
    pub fn spawn<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Child> {
        let (program, args) = argv
            .split_first()
            .context("Netns::spawn: empty command line")?;
        let mut cmd = self.command(program);
        cmd.args(args);
        Child::spawn(cmd)
    }

    /// Runs `f` with the CURRENT THREAD switched into this namespace (setns), and switches
    /// it back afterwards, also when `f` panics. Sockets opened and BPF calls made in `f`
    /// (BPF_PROG_TEST_RUN's `bpf_fib_lookup`, link lookups by ifindex, /proc/sys/net)
    /// see this namespace. Child processes spawned in `f` start in it too, but /sys does
    /// not follow: use [`Netns::run`] for /sys/class/net.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        let target = File::open(self.path())
            .with_context(|| format!("cannot open {}", self.path().display()))?;
        let _back = Switch::to(&target)
            .with_context(|| format!("cannot enter network namespace {}", self.name))?;
        Ok(f())
    }

    /// Writes a sysctl (`net.ipv4.ip_forward`, dotted or slashed) inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.enter(|| fs::write(&path, value))?
            .with_context(|| format!("cannot set sysctl {key}={value} in {}", self.name))
    }

    /// Reads a sysctl inside the namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let value = self
            .enter(|| fs::read_to_string(&path))?
            .with_context(|| format!("cannot read sysctl {key} in {}", self.name))?;
        Ok(value.trim().to_owned())
    }

    /// Drops the TCP packets this namespace's own stack sends to `port` (an LB's health
    /// checks: XDP-forwarded traffic never meets netfilter), silently, as a network
    /// that loses them would, until [`Netns::unblock_tcp_output`].
    pub fn block_tcp_output(&self, port: u16) -> Result<()> {
        self.run(&["nft", "add", "table", "inet", BLOCK_TABLE])?;
        self.run(&[
            "nft",
            &format!(
                "add chain inet {BLOCK_TABLE} output {{ type filter hook output priority 0 ; }}"
            ),
        ])?;
        self.run(&[
            "nft",
            &format!("add rule inet {BLOCK_TABLE} output tcp dport {port} drop"),
        ])?;
        Ok(())
    }

    /// Lifts [`Netns::block_tcp_output`].
    pub fn unblock_tcp_output(&self) -> Result<()> {
        self.run(&["nft", "delete", "table", "inet", BLOCK_TABLE])?;
        Ok(())
    }

    /// Processes running inside the namespace.
    pub fn pids(&self) -> Result<Vec<i32>> {
        Ok(cmd::run(&["ip", "netns", "pids", &self.name])?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("weir-testbed: {e:#}");
        }
    }
}

/// Kills what runs inside `name` and deletes the namespace.
fn delete(name: &str) -> Result<()> {
    let pids = cmd::run(&["ip", "netns", "pids", name]).unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut last = None;
    for _ in 0..5 {
        match cmd::run(&["ip", "netns", "delete", name]) {
            Ok(_) => return Ok(()),
            Err(_) if !Path::new(NETNS_DIR).join(name).exists() => return Ok(()),
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(last
        .unwrap()
        .context(format!("cannot delete network namespace {name}")))
}

/// Deletes the test bed's namespaces left behind by processes that no longer exist
/// (`weir-<pid>-…` whose pid is gone, e.g. after a SIGKILLed test run). Returns their
/// names. Namespaces of live processes are left alone.
pub fn cleanup_stale_namespaces() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).context(format!("cannot list {NETNS_DIR}")),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete(&name)?;
        removed.push(name);
    }
    Ok(removed)
}

/// Puts the current thread into a network namespace; dropping it switches back.
struct Switch {
    original: File,
}

impl Switch {
    fn to(target: &File) -> Result<Switch> {
        let original = File::open("/proc/thread-self/ns/net")
            .context("cannot open /proc/thread-self/ns/net")?;
        // SAFETY: setns on valid namespace file descriptors only changes this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
        }
        Ok(Switch { original })
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        // SAFETY: as above.
        if unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // Going on in the wrong namespace would send test traffic who knows where.
            eprintln!(
                "weir-testbed: cannot switch back to the original network namespace: {}; aborting",
                std::io::Error::last_os_error()
            );
            std::process::abort();
        }
    }
}

/// A long-running child process (usually inside a namespace). Its stdout and stderr go
/// to a log file (read it with [`Child::log`]; it is printed if the guard drops during a
/// panic). Dropping the guard stops the process (SIGTERM, then SIGKILL after 2 s) and
/// reaps it.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    label: String,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Child {
    /// Starts `cmd` with stdin closed and stdout+stderr captured in a log file.
    pub fn spawn(mut cmd: Command) -> Result<Child> {
        let label = cmd::describe(&cmd);
        let log_path =
            std::env::temp_dir().join(format!("{PREFIX}{}-{}.log", std::process::id(), next_id()));
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start `{label}`"))?;
        Ok(Child {
            child,
            label,
            log_path,
            status: None,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// What it printed so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits until its output contains `needle`; fails (quoting the log) if it exits
    /// first or `timeout` passes.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                // It may have printed the needle just before exiting.
                if self.log().contains(needle) {
                    return Ok(());
                }
                bail!(
                    "`{}` exited ({status}) before printing {needle:?}; its output:\n{}",
                    self.label,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` did not print {needle:?} within {timeout:?}; its output:\n{}",
                    self.label,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) unless it has already exited.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.try_wait()?.is_none() {
            // SAFETY: kill has no memory-safety preconditions; the child is not reaped
            // yet, so the pid is still ours.
            if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot signal `{}`", self.label));
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops it: SIGTERM, then SIGKILL if it has not exited after `grace`. Returns its
    /// exit status (a SIGTERM-ed process reports the signal).
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        self.terminate(grace)
    }

    fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.signal(libc::SIGKILL)?;
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Err(e) = self.terminate(Duration::from_secs(2)) {
            eprintln!("weir-testbed: cannot stop `{}`: {e:#}", self.label);
        }
        if thread::panicking() {
            eprintln!(
                "---- output of `{}` ----\n{}---- end ----",
                self.label,
                self.log()
            );
        }
        let _ = fs::remove_file(&self.log_path);
    }
}
