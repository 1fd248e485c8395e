//! XDP programs for the dataplane benchmark (`lb-userspace/benches/dataplane.rs`), the
//! yardsticks that weir's own program is measured against:
//!
//! - `bench_pass`, `bench_mac_swap`: the cheapest XDP_PASS and XDP_TX programs, the
//!   harness floor under BPF_PROG_TEST_RUN and the XDP_TX ceiling on a live veth;
//! - `bench_flow_churn`: moves the test frame to another flow on every run, then tail
//!   calls weir, so that BPF_PROG_TEST_RUN's `repeat` can time the new-flow path;
//! - `bench_replay`: puts the frame's headers back as they were before weir rewrote
//!   them, then tail calls weir, so that `repeat` can time NAT (which rewrites them);
//! - `bench_generate`: the traffic generator, run with BPF_PROG_RUN in live-frames mode;
//! - `bench_sink`: counts and drops what comes back to the generator's side.
//!
//! Frame layout assumptions (the bench builds its frames to match): untagged Ethernet,
//! then IPv4 with a 20-byte header, then TCP or UDP; the generator's frames are at least
//! `GEN_HEADER_LEN` long.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};

const ETH_ALEN: usize = 6;
/// Offset of the last two bytes of the IPv4 source address.
const IPV4_SRC_LOW_OFFSET: usize = 14 + 12 + 2;
/// Offset of the IPv4 header checksum.
const IPV4_CHECKSUM_OFFSET: usize = 14 + 10;
/// Offset of the TCP or UDP source port.
const L4_SRC_PORT_OFFSET: usize = 14 + 20;
/// What the generator writes into every frame: Ethernet + IPv4 + TCP headers, or
/// Ethernet + IPv4 + UDP headers and the first 12 bytes after them.
const GEN_HEADER_LEN: usize = 14 + 20 + 20;
/// Ethernet + IPv4 + TCP headers: what `bench_replay` restores.
const REPLAY_HEADER_LEN: usize = 14 + 20 + 20;

/// Slot 0: weir's program, put there by the bench.
#[map(name = "WEIR")]
static WEIR: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// `[0]`: how far `bench_flow_churn` moves the flow on each run. 1 makes every run a new
/// flow, 0 keeps one flow; the instructions are the same either way, so the difference
/// between the two is what a new flow costs weir.
#[map(name = "FLOW_STEP")]
static FLOW_STEP: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "FLOW_SEQ")]
static FLOW_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "GEN_SEQ")]
static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Frames the sink dropped.
#[map(name = "SINK_PACKETS")]
static SINK_PACKETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `[0]`: the generator's headers, set by the bench. Its source port is the first of
/// `GEN_FLOWS[0]` consecutive ports, its IPv4 source the first of `GEN_SOURCES[0]`.
#[map(name = "GEN_HEADER")]
static GEN_HEADER: Array<[u8; GEN_HEADER_LEN]> = Array::with_max_entries(1, 0);

/// `[0]`: the headers `bench_replay` writes back before each run, set by the bench.
#[map(name = "REPLAY_HEADER")]
static REPLAY_HEADER: Array<[u8; REPLAY_HEADER_LEN]> = Array::with_max_entries(1, 0);

/// `[0]`: how many flows (source ports) the generator cycles through, set by the bench.
#[map(name = "GEN_FLOWS")]
static GEN_FLOWS: Array<u32> = Array::with_max_entries(1, 0);

/// `[0]`: how many consecutive IPv4 sources the generator cycles through (at most
/// 65536: it varies the address's last two bytes), set by the bench.
#[map(name = "GEN_SOURCES")]
static GEN_SOURCES: Array<u32> = Array::with_max_entries(1, 0);

/// A pointer to `N` bytes at `offset`, or `None` when the frame is shorter.
#[inline(always)]
fn bytes_mut<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<*mut [u8; N]> {
    let start = ctx.data() + offset;
    if start + N > ctx.data_end() {
        return None;
    }
    Some(start as *mut [u8; N])
}

/// The next value of a per-CPU sequence, moved forward by `step`.
#[inline(always)]
fn advance(seq: &PerCpuArray<u32>, step: u32) -> Option<u32> {
    let value = seq.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot; nothing else on this CPU runs while the program does.
    unsafe {
        *value = (*value).wrapping_add(step);
        Some(*value)
    }
}

/// Does nothing: what is left of a BPF_PROG_TEST_RUN figure is the harness's cost.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Sends the frame back where it came from: the least an XDP_TX forwarder can do.
#[xdp]
pub fn bench_mac_swap(ctx: XdpContext) -> u32 {
    let (Some(dst), Some(src)) = (
        bytes_mut::<ETH_ALEN>(&ctx, 0),
        bytes_mut::<ETH_ALEN>(&ctx, ETH_ALEN),
    ) else {
        return XDP_ABORTED;
    };
    // SAFETY: `bytes_mut` checked that both addresses are inside the frame.
    unsafe {
        let old_dst = dst.read_unaligned();
        dst.write_unaligned(src.read_unaligned());
        src.write_unaligned(old_dst);
    }
    XDP_TX
}

/// Gives the frame a flow of its own, then runs weir on it.
///
/// BPF_PROG_TEST_RUN repeats one frame, so after the first run weir finds its flow in
/// the connection table. This writes a per-CPU sequence number into the TCP source port
/// and the low half of the IPv4 source address, so with a step of 1 every run is a flow
/// weir has not seen (2^32 of them before one repeats).
#[xdp]
pub fn bench_flow_churn(ctx: XdpContext) -> u32 {
    let step = FLOW_STEP.get(0).copied().unwrap_or(0);
    let (Some(seq), Some(src_low), Some(src_port)) = (
        advance(&FLOW_SEQ, step),
        bytes_mut::<2>(&ctx, IPV4_SRC_LOW_OFFSET),
        bytes_mut::<2>(&ctx, L4_SRC_PORT_OFFSET),
    ) else {
        return XDP_ABORTED;
    };
    // SAFETY: both pointers were bounds-checked by `bytes_mut`.
    unsafe {
        src_low.write_unaligned(((seq >> 16) as u16).to_be_bytes());
        src_port.write_unaligned((seq as u16).to_be_bytes());
        WEIR.tail_call(&ctx, 0);
    }
    // Only reached when the tail call failed (empty slot): the bench checks for it.
    XDP_ABORTED
}

/// Restores the frame's headers, then runs weir on it.
///
/// BPF_PROG_TEST_RUN repeats the program on one buffer, so whatever weir rewrote stays
/// rewritten: NAT's second run would see its own output. The copy is the same for
/// every case, so it cancels out against the same wrapper around a DSR frame.
#[xdp]
pub fn bench_replay(ctx: XdpContext) -> u32 {
    let (Some(header), Some(template)) = (
        bytes_mut::<REPLAY_HEADER_LEN>(&ctx, 0),
        REPLAY_HEADER.get(0),
    ) else {
        return XDP_ABORTED;
    };
    // SAFETY: `bytes_mut` checked that the headers fit in the frame; `template` is a map
    // value, not packet memory, so the two cannot overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(template.as_ptr(), header.cast::<u8>(), REPLAY_HEADER_LEN);
        WEIR.tail_call(&ctx, 0);
    }
    // Only reached when the tail call failed (empty slot): the bench checks for it.
    XDP_ABORTED
}

/// The live-frames generator: writes the whole header (the kernel recycles frames, and
/// whoever forwarded a frame last has rewritten its MACs, and NAT its addresses), gives
/// it the next of `GEN_FLOWS` source ports and of `GEN_SOURCES` source addresses, and
/// transmits it.
#[xdp]
pub fn bench_generate(ctx: XdpContext) -> u32 {
    let (Some(header), Some(template), Some(seq)) = (
        bytes_mut::<GEN_HEADER_LEN>(&ctx, 0),
        GEN_HEADER.get(0),
        advance(&GEN_SEQ, 1),
    ) else {
        return XDP_ABORTED;
    };
    let flows = GEN_FLOWS.get(0).copied().unwrap_or(1).max(1);
    let sources = GEN_SOURCES.get(0).copied().unwrap_or(1).max(1);
    let word = |offset: usize| u16::from_be_bytes([template[offset], template[offset + 1]]);
    let src_port = word(L4_SRC_PORT_OFFSET).wrapping_add((seq % flows) as u16);
    let first_src = word(IPV4_SRC_LOW_OFFSET);
    let src_low = first_src.wrapping_add((seq % sources) as u16);
    let checksum = checksum_replace(word(IPV4_CHECKSUM_OFFSET), first_src, src_low);
    // SAFETY: `bytes_mut` checked that the header fits in the frame; `template` is a map
    // value, not packet memory, so the two cannot overlap.
    unsafe {
        let header = header.cast::<u8>();
        core::ptr::copy_nonoverlapping(template.as_ptr(), header, GEN_HEADER_LEN);
        for (offset, value) in [
            (L4_SRC_PORT_OFFSET, src_port),
            (IPV4_SRC_LOW_OFFSET, src_low),
            (IPV4_CHECKSUM_OFFSET, checksum),
        ] {
            header
                .add(offset)
                .cast::<[u8; 2]>()
                .write_unaligned(value.to_be_bytes());
        }
    }
    XDP_TX
}

/// The IPv4 header checksum after one of its 16-bit words changed from `old` to `new`
/// (RFC 1624, eqn. 3): the frames stay valid for whoever checks them.
#[inline(always)]
fn checksum_replace(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Counts the frame and drops it: the cheapest receiver a veth can have (one without an
/// XDP program would not take frames sent by XDP at all).
#[xdp]
pub fn bench_sink(_ctx: XdpContext) -> u32 {
    if let Some(count) = SINK_PACKETS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, as in `advance`.
        unsafe { *count += 1 };
    }
    XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
