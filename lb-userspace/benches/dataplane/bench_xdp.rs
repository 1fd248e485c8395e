//! The bench's own XDP object (`lb-ebpf/src/bin/bench.rs`), which `build.rs` builds
//! next to weir's: the yardsticks, the new-flow wrapper, the generator and the sink.

use anyhow::{Context, Result};
use aya::{
    Ebpf, Pod,
    maps::{Array, MapData, PerCpuArray, ProgramArray},
    programs::{ProgramFd, Xdp},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir-bench-xdp"));

/// XDP_PASS, nothing else.
pub const PASS: &str = "bench_pass";
/// Swaps the MAC addresses and returns XDP_TX.
pub const MAC_SWAP: &str = "bench_mac_swap";
/// Moves the frame to a new flow (by `FLOW_STEP`), then tail calls weir.
pub const FLOW_CHURN: &str = "bench_flow_churn";
/// Restores the frame's headers from `REPLAY_HEADER`, then tail calls weir.
pub const REPLAY: &str = "bench_replay";
/// The live-frames generator.
pub const GENERATE: &str = "bench_generate";
/// Counts into `SINK_PACKETS` and drops.
pub const SINK: &str = "bench_sink";

const PROGRAMS: [&str; 6] = [PASS, MAC_SWAP, FLOW_CHURN, REPLAY, GENERATE, SINK];

/// Map names, as in the object.
pub mod maps {
    pub const WEIR: &str = "WEIR";
    pub const FLOW_STEP: &str = "FLOW_STEP";
    pub const REPLAY_HEADER: &str = "REPLAY_HEADER";
    pub const GEN_HEADER: &str = "GEN_HEADER";
    pub const GEN_FLOWS: &str = "GEN_FLOWS";
    pub const GEN_SOURCES: &str = "GEN_SOURCES";
    pub const SINK_PACKETS: &str = "SINK_PACKETS";
}

/// What the generator writes into every frame: Ethernet + IPv4 + TCP, or Ethernet +
/// IPv4 + UDP and the first 12 bytes after them.
pub const GEN_HEADER_LEN: usize = 14 + 20 + 20;
/// Ethernet + IPv4 + TCP: the headers `bench_replay` restores.
pub const REPLAY_HEADER_LEN: usize = 14 + 20 + 20;

/// Loads the object and every program in it (each passes the verifier here).
pub fn load() -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(OBJECT).context("loading the bench XDP object")?;
    for name in PROGRAMS {
        program_mut(&mut ebpf, name)?
            .load()
            .with_context(|| format!("loading the bench program {name}"))?;
    }
    Ok(ebpf)
}

pub fn program<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    let program = ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?;
    Ok(program.try_into()?)
}

pub fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?;
    Ok(program.try_into()?)
}

/// Sets element 0 of the one-element array `map`.
pub fn set<V: Pod>(ebpf: &mut Ebpf, map: &str, value: V) -> Result<()> {
    let data = ebpf.map_mut(map).with_context(|| format!("no map {map}"))?;
    let mut array = Array::<&mut MapData, V>::try_from(data)?;
    array
        .set(0, value, 0)
        .with_context(|| format!("writing {map}"))
}

/// Points `bench_flow_churn`'s tail call at `weir`.
pub fn set_churn_target(ebpf: &mut Ebpf, weir: &ProgramFd) -> Result<()> {
    let data = ebpf.map_mut(maps::WEIR).context("no map WEIR")?;
    let mut jump_table = ProgramArray::try_from(data)?;
    jump_table
        .set(0, weir, 0)
        .context("putting weir in the tail-call table")
}

/// Frames the sink has dropped so far, summed over CPUs.
pub fn sink_packets(ebpf: &Ebpf) -> Result<u64> {
    let data = ebpf
        .map(maps::SINK_PACKETS)
        .context("no map SINK_PACKETS")?;
    let counters = PerCpuArray::<&MapData, u64>::try_from(data)?;
    Ok(counters.get(&0, 0)?.iter().sum())
}

/// A `struct xdp_md` for BPF_PROG_TEST_RUN: a frame of `len` bytes arriving on
/// `ingress_ifindex`. The kernel insists that `data_end` is the frame's length.
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> Vec<u8> {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let len = u32::try_from(len).expect("test frames are small");
    [0, len, 0, ingress_ifindex, 0, 0]
        .iter()
        .flat_map(|word: &u32| word.to_ne_bytes())
        .collect()
}
