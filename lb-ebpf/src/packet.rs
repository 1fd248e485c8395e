//! Bounds-checked access to the packet: every read goes through `ptr_at`, which the
//! verifier sees compared against `data_end`.

use core::mem;

use aya_ebpf::programs::XdpContext;

/// Largest offset `ptr_at` accepts: an XDP frame fits in a page. An offset the
/// verifier knows to be this small keeps its bounds check (it gives up on offsets that
/// might pass 64 KiB, such as a `u16` read back from the stack).
const MAX_OFFSET: usize = 4096;

/// A pointer to a `T` at `offset` bytes into the packet, or `None` when the packet is
/// too short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if offset > MAX_OFFSET || start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Called first thing in a function that is a BPF-to-BPF call and takes the context:
/// without it, LLVM passes the packet bounds as integers it has truncated, and the
/// verifier refuses arithmetic on the end pointer. A volatile read of the context keeps
/// the context itself the argument.
#[inline(always)]
pub fn keep_context(ctx: &XdpContext) {
    // SAFETY: `ctx.ctx` is the program's context, valid for the whole run.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.ctx).data) };
}

/// Whether the frame holds at least `len` bytes. A pointer comparison: the verifier
/// refuses arithmetic on the end pointer.
#[inline(always)]
pub fn within(ctx: &XdpContext, len: usize) -> bool {
    ctx.data() + len <= ctx.data_end()
}

/// The frame's length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// The mutable twin of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}

/// Reads a `T` at `offset`; packet fields are not aligned, so this never assumes it.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `offset` are in the packet.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// An IPv4 address as the maps store it (first of four network-order words).
#[inline(always)]
pub fn ipv4_words(addr: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(addr), 0, 0, 0]
}

/// An IPv6 address as the maps store it.
#[inline(always)]
pub fn ipv6_words(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
