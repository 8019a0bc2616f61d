//! The memory allocator of processes that train.
//!
//! A training step frees and reallocates the same tensor buffers, a few hundred KiB to a few
//! MiB each, every step. glibc's `malloc` hands blocks that large back to the kernel and faults
//! them in again, zero-filled, on the next step; mimalloc reuses them, but by default it still
//! returns ("purges") idle memory to the kernel after a delay (1 s in mimalloc 3), and the
//! speed benchmark still faults pages in every step. Binaries
//! that train therefore install [`TrainingAllocator`] and call [`keep_freed_memory`] first:
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: sliver_engine::alloc::TrainingAllocator = sliver_engine::alloc::TrainingAllocator;
//!
//! fn main() {
//!     sliver_engine::alloc::keep_freed_memory();
//!     // ...
//! }
//! ```
//!
//! The process then holds its peak working set for its lifetime, which for a training loop is
//! the steady state anyway. Measured on the nanoGPT speed benchmark (60 steps): page faults
//! drop from about 13,900 to about 360 (`perf stat -e page-faults`).

/// mimalloc, the allocator to install as `#[global_allocator]`.
pub use mimalloc::MiMalloc as TrainingAllocator;

/// `mi_option_purge_delay`: its position in `mi_option_e` in both mimalloc 2.x and 3.x
/// (`libmimalloc-sys` has no constant for it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc keep freed memory for reuse instead of returning it to the kernel. Harmless
/// when mimalloc is not the global allocator (it then manages nothing).
pub fn keep_freed_memory() {
    // SAFETY: sets one integer option; -1 is the documented "never purge" value.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}

/// The purge delay mimalloc now uses, in milliseconds (-1: never).
pub fn purge_delay_ms() -> i64 {
    // SAFETY: reads one integer option.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        assert!(super::purge_delay_ms() >= 0, "mimalloc purges by default");
        super::keep_freed_memory();
        assert_eq!(super::purge_delay_ms(), -1);
    }
}
