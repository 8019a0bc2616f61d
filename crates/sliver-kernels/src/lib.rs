//! CPU kernels for Sliver's training engine, with no dependency on Burn.
//!
//! Burn's `flex` backend spends most of a small transformer's training step in matrix
//! products whose shapes (hundreds of rows, K of 128 to 768) its general-purpose GEMM handles
//! at about 40 GFLOP/s per core on this project's reference machine, and much of the rest in
//! element-wise passes that a fused kernel does in one. This crate holds those kernels:
//!
//! - [`gemm`]: register-blocked f32 product (AVX-512 micro-kernel, portable elsewhere) reading
//!   its operands in place through their strides.
//! - [`attention`]: causal attention from the fused QKV projection, and its backward pass.
//! - [`gelu`], [`layernorm`], [`xent`] (cross-entropy with its softmax), [`adamw`]: one pass
//!   each way instead of several.
//!
//! Every kernel computes **the same bits** whatever the CPU (the portable path and the AVX-512
//! one), the tile or part an element falls in, and the number of threads: products are fused
//! multiply-add chains in a fixed order, sums are lane partials combined in a fixed tree.
//! Validators that replay a miner's work on other hardware rely on that. Outputs are written
//! into `&mut [MaybeUninit<f32>]`, so callers need not zero-fill fresh buffers. Parts run on
//! a small spinning fork-join pool sized by rayon's thread count (`pool`).
//!
//! The engine wires these into Burn as a backend extension (`sliver_engine::fast`); this crate
//! knows only slices.

pub mod adamw;
pub mod attention;
pub mod gelu;
pub mod gemm;
pub mod layernorm;
mod math;
mod pool;
pub mod xent;

pub use gemm::{gemm, gemm_uninit, MatRef, ShapeError};

use std::mem::MaybeUninit;

/// Kernels write their results into `&mut [MaybeUninit<f32>]`, so a fresh output buffer needs no
/// zero-filling; this views initialised values the same way, for this crate's own callers. (Not
/// public: safe code could write `MaybeUninit::uninit()` through the view and then read it.)
pub(crate) fn as_out(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and this crate's kernels only write
    // initialised values through the view.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// `dst[i] = src[i]`, lengths equal.
#[inline(always)]
pub(crate) fn write_all(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "write_all: lengths");
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Deterministic test inputs.
#[cfg(test)]
pub(crate) mod testing {
    /// `n` values uniform in `[-scale, scale)` from an xorshift stream keyed by `seed`.
    pub(crate) fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
            })
            .collect()
    }
}
