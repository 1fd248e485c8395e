//! The live bench's traffic generator and sinks, in the generator namespace.
//!
//! BPF_PROG_RUN in live-frames mode runs `bench_generate` on frames from a page pool of
//! its own and transmits every frame the program returns XDP_TX for, out of the veth
//! named as the ingress interface. Each call sets up and tears down that page pool, and
//! the teardown waits for an RCU grace period: tens of milliseconds with the other CPU
//! busy forwarding, during which nothing is sent. So the generator makes one call that
//! would last for many minutes, and [`Stop`] interrupts it with a signal (the kernel
//! checks for signals between batches).

use std::{
    io, mem, ptr,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, ensure};
use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, XdpMode},
    sys::SyscallError,
};
use weir_testbed::Netns;

use crate::{bench_xdp, cpu};

/// Frames per live-frames batch (the kernel's default).
const BATCH: u32 = 64;

/// What the generator sends: `frame`, with `flows` consecutive source ports and
/// `sources` consecutive IPv4 sources from the frame's own.
pub struct Traffic {
    pub frame: Vec<u8>,
    pub flows: u32,
    pub sources: u32,
}

/// `bench_generate` ready to run, and the sinks attached.
pub struct Generator {
    /// Declared before `ns`: the sinks detach before the namespace goes.
    bench: Ebpf,
    /// The maps `Traffic` goes into, taken out of `bench` to be set while it runs.
    traffic: Mutex<TrafficMaps>,
    frame_len: usize,
    ifindex: u32,
    ns: Netns,
}

struct TrafficMaps {
    header: Array<MapData, [u8; bench_xdp::GEN_HEADER_LEN]>,
    flows: Array<MapData, u32>,
    sources: Array<MapData, u32>,
}

impl Generator {
    /// Transmits `traffic` out of `dev`; counts what arrives on `dev` and on every one of
    /// `sink_devs`. Frames keep `traffic`'s length when [`Generator::send`] changes it.
    pub fn new(ns: Netns, dev: &str, sink_devs: &[&str], traffic: &Traffic) -> Result<Self> {
        let mut bench = bench_xdp::load()?;
        let mut take = |name| {
            bench
                .take_map(name)
                .with_context(|| format!("no map {name}"))
        };
        let traffic_maps = TrafficMaps {
            header: Array::try_from(take(bench_xdp::maps::GEN_HEADER)?)?,
            flows: Array::try_from(take(bench_xdp::maps::GEN_FLOWS)?)?,
            sources: Array::try_from(take(bench_xdp::maps::GEN_SOURCES)?)?,
        };
        for sink_dev in std::iter::once(dev).chain(sink_devs.iter().copied()) {
            let sink = bench_xdp::program_mut(&mut bench, bench_xdp::SINK)?;
            // The link lives as long as `bench`.
            ns.enter(|| sink.attach(sink_dev, XdpMode::Driver))?
                .with_context(|| format!("attaching the sink to {sink_dev}"))?;
        }
        let ifindex = ns.ifindex(dev)?;
        let generator = Generator {
            bench,
            traffic: Mutex::new(traffic_maps),
            frame_len: traffic.frame.len(),
            ifindex,
            ns,
        };
        generator.send(traffic)?;
        Ok(generator)
    }

    /// Sends `traffic` from now on (also while running).
    pub fn send(&self, traffic: &Traffic) -> Result<()> {
        ensure!(
            traffic.frame.len() == self.frame_len,
            "the generator's frames are {} bytes, not {}",
            self.frame_len,
            traffic.frame.len()
        );
        let header: [u8; bench_xdp::GEN_HEADER_LEN] = traffic
            .frame
            .get(..bench_xdp::GEN_HEADER_LEN)
            .context("the generator's frame is shorter than its header")?
            .try_into()?;
        let mut maps = self
            .traffic
            .lock()
            .map_err(|_| anyhow!("the generator's maps were poisoned"))?;
        maps.header
            .set(0, header, 0)
            .context("writing GEN_HEADER")?;
        maps.flows
            .set(0, traffic.flows, 0)
            .context("writing GEN_FLOWS")?;
        maps.sources
            .set(0, traffic.sources, 0)
            .context("writing GEN_SOURCES")?;
        Ok(())
    }

    /// Transmits from `cpu::GENERATOR_CPU` until `stop` is requested.
    pub fn run(&self, stop: &Stop) -> Result<()> {
        let _running = stop.register_current_thread();
        let _pinned = cpu::pin_current_thread(cpu::GENERATOR_CPU)?;
        let program = bench_xdp::program(&self.bench, bench_xdp::GENERATE)?;
        // The kernel fills its frames from this once; the program rewrites the headers.
        let frame = vec![0; self.frame_len];
        let ctx = bench_xdp::xdp_md(self.frame_len, self.ifindex);
        // In the generator's namespace: the kernel looks the ingress ifindex up there.
        self.ns.enter(|| {
            while !stop.requested() {
                let sent = program.test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ctx_in: Some(&ctx),
                    repeat: u32::MAX,
                    attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                    ..TestRunOptions::default()
                });
                // Interrupted by `Stop`, or by something else that `requested` will tell.
                if let Err(err) = sent
                    && !is_interrupted(&err)
                {
                    return Err(err.into());
                }
            }
            Ok(())
        })?
    }

    /// Frames the sinks have dropped so far.
    pub fn delivered(&self) -> Result<u64> {
        bench_xdp::sink_packets(&self.bench)
    }
}

/// The call ended because a signal arrived (EINTR).
fn is_interrupted(err: &ProgramError) -> bool {
    matches!(err, ProgramError::SyscallError(SyscallError { io_error, .. })
        if io_error.kind() == io::ErrorKind::Interrupted)
}

/// The signal that cuts a BPF_PROG_RUN call short; its handler does nothing.
const WAKE_SIGNAL: libc::c_int = libc::SIGUSR1;

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Stops [`Generator::run`] from another thread; for a thread that is joined only after
/// [`Stop::request`] has returned (a scoped thread), whose id stays valid until then.
pub struct Stop {
    requested: AtomicBool,
    finished: AtomicBool,
    thread: OnceLock<libc::pthread_t>,
}

impl Stop {
    /// Installs the handler of `WAKE_SIGNAL` (whose default action ends the process).
    pub fn new() -> Result<Stop> {
        // SAFETY: an all-zero sigaction is valid (empty mask, no flags); the handler does
        // nothing, so it is async-signal-safe. No SA_RESTART: the call must end.
        let installed = unsafe {
            let mut action: libc::sigaction = mem::zeroed();
            action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigaction(WAKE_SIGNAL, &action, ptr::null_mut())
        };
        ensure!(installed == 0, "sigaction: {}", io::Error::last_os_error());
        Ok(Stop {
            requested: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            thread: OnceLock::new(),
        })
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Records the calling thread as the one to interrupt; it counts as finished when
    /// the returned guard drops, however it leaves.
    fn register_current_thread(&self) -> Running<'_> {
        // SAFETY: pthread_self has no preconditions.
        let _ = self.thread.set(unsafe { libc::pthread_self() });
        Running(self)
    }

    /// Asks the generator to stop and interrupts its call until it has finished. A
    /// signal that lands between two calls is lost, hence the repetition.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        while !self.finished.load(Ordering::SeqCst) {
            if let Some(&thread) = self.thread.get() {
                // SAFETY: the thread is not joined yet (see `Stop`), so its id is valid.
                unsafe { libc::pthread_kill(thread, WAKE_SIGNAL) };
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Requests the stop when the guard drops: also when measuring fails or panics,
    /// without which the thread scope would wait for the generator forever.
    pub fn on_drop(&self) -> RequestOnDrop<'_> {
        RequestOnDrop(self)
    }
}

struct Running<'a>(&'a Stop);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.finished.store(true, Ordering::SeqCst);
    }
}

pub struct RequestOnDrop<'a>(&'a Stop);

impl Drop for RequestOnDrop<'_> {
    fn drop(&mut self) {
        self.0.request();
    }
}
