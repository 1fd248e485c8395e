//! Compare-and-swap on a map value: the BPF target has the instruction (BPF_CMPXCHG,
//! since Linux 5.12), but Rust's `core` offers no atomic read-modify-write on it.

/// Stores `new` at `word` if it holds `expected`, atomically; returns whether it did.
#[inline(always)]
pub fn compare_and_swap(word: *mut u64, expected: u64, new: u64) -> bool {
    let mut found = expected;
    // SAFETY: `word` points into a map value (the caller's lookup); the instruction
    // compares the word with r0, stores `new` if they are equal, and leaves the word's
    // former value in r0.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({word} + 0, r0, {new})",
            word = in(reg) word,
            new = in(reg) new,
            inout("r0") found,
        );
    }
    found == expected
}
