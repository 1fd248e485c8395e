//! CPUs and threads for the benches: pinning, and how much CPU time a thread, a process
//! or a CPU used.
//!
//! The method (bench-method.md) gives each side of the live bench a CPU of its own: the
//! generator runs on one, the LB namespace's NAPI thread on the other.

use std::{collections::BTreeSet, fs, io, mem, time::Duration};

use anyhow::{Context, Result, bail, ensure};

/// Where the traffic generator runs.
pub const GENERATOR_CPU: usize = 0;
/// Where the load balancer runs: its veth's NAPI thread, and the BPF_PROG_TEST_RUN part.
pub const LB_CPU: usize = 1;

/// Fails unless both CPUs above exist.
pub fn require_two_cpus() -> Result<()> {
    let cpus = std::thread::available_parallelism().context("counting CPUs")?;
    ensure!(
        [GENERATOR_CPU, LB_CPU].iter().all(|&cpu| cpu < cpus.get()),
        "the bench needs 2 CPUs (one generates, one forwards), this machine has {cpus}"
    );
    Ok(())
}

/// The calling thread pinned to one CPU; dropping it restores the thread's former CPUs.
pub struct Pinned {
    previous: libc::cpu_set_t,
}

/// Pins the calling thread to `cpu` until the returned guard drops.
pub fn pin_current_thread(cpu: usize) -> Result<Pinned> {
    // SAFETY: cpu_set_t is a plain bit set, valid when zeroed.
    let mut previous: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `previous` is a writable cpu_set_t of the size passed; 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, mem::size_of_val(&previous), &mut previous) } != 0 {
        return Err(io::Error::last_os_error()).context("sched_getaffinity");
    }
    set_affinity(0, &single(cpu))
        .with_context(|| format!("pinning the current thread to CPU {cpu}"))?;
    Ok(Pinned { previous })
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Err(err) = set_affinity(0, &self.previous) {
            eprintln!("cannot restore the thread's CPU affinity: {err}");
        }
    }
}

/// Pins the thread `pid` (any process's) to `cpu`.
pub fn pin_thread(pid: i32, cpu: usize) -> Result<()> {
    set_affinity(pid, &single(cpu)).with_context(|| format!("pinning thread {pid} to CPU {cpu}"))
}

fn single(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: zeroed is an empty set; CPU_SET writes one bit inside it (cpu < 1024).
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

fn set_affinity(pid: i32, set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    match unsafe { libc::sched_setaffinity(pid, mem::size_of_val(set), set) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The processes whose name starts with `prefix`. A kernel thread is a process of its
/// own, named like the NAPI pollers' `napi/DEV-ID`, cut to 15 characters.
pub fn threads_named(prefix: &str) -> Result<BTreeSet<i32>> {
    let mut pids = BTreeSet::new();
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        // Threads come and go; one that left between listing and reading is not ours.
        let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if comm.starts_with(prefix) {
            pids.insert(pid);
        }
    }
    Ok(pids)
}

/// How long the thread `pid` has run on a CPU (`/proc/PID/schedstat`, nanoseconds).
pub fn thread_runtime(pid: i32) -> Result<Duration> {
    let path = format!("/proc/{pid}/schedstat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let nanos = text
        .split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .with_context(|| format!("unexpected {path}: {text:?}"))?;
    Ok(Duration::from_nanos(nanos))
}

/// The CPU time the process `pid` has used, all its threads, user and system
/// (`/proc/PID/stat`).
pub fn process_time(pid: i32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    // utime and stime are fields 14 and 15, the 12th and 13th after it.
    let ticks: u64 = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(2))
        .map(|fields| fields.filter_map(|f| f.parse::<u64>().ok()).sum())
        .with_context(|| format!("unexpected {path}: {text:?}"))?;
    ticks_duration(ticks)
}

/// How long `cpu` has been busy since boot: every `/proc/stat` state but idle, I/O wait
/// and time stolen by the hypervisor.
pub fn busy_time(cpu: usize) -> Result<Duration> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = format!("cpu{cpu}");
    let Some(line) = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(&name))
    else {
        bail!("/proc/stat has no line for {name}");
    };
    // user nice system idle iowait irq softirq steal guest guest_nice (guest time is
    // already counted in user and nice).
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("unexpected /proc/stat line {line:?}"))?;
    ensure!(ticks.len() >= 8, "unexpected /proc/stat line {line:?}");
    let busy: u64 = [0, 1, 2, 5, 6].iter().map(|&field| ticks[field]).sum();
    ticks_duration(busy)
}

/// Clock ticks (`_SC_CLK_TCK`) as a duration.
fn ticks_duration(ticks: u64) -> Result<Duration> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(ticks_per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(Duration::from_secs_f64(
        ticks as f64 / ticks_per_second as f64,
    ))
}
