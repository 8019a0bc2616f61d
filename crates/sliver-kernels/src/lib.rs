//! CPU kernels for Sliver's training engine, with no dependency on Burn.
//!
//! Burn's `flex` backend spends most of a small transformer's training step in matrix
//! products whose shapes (hundreds of rows, K of 128 to 768) its general-purpose GEMM handles
//! at about 40 GFLOP/s per core on this project's reference machine. [`gemm`] is a packed,
//! register-blocked f32 product written for those shapes: an AVX-512 micro-kernel where the CPU
//! has one, and a portable kernel everywhere else that computes **the same bits**: every output
//! element is one fused multiply-add chain over `k` in increasing order, whatever the kernel,
//! the tile it falls in or the number of threads. Validators that replay a miner's work on other
//! hardware rely on that.
//!
//! [`gelu`] holds the exact (erf) GELU and its derivative as single passes with a vectorisable
//! erf, in place of the several element-wise passes and the scalar `erff` a decomposed GELU
//! costs.
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

pub use gemm::{gemm, gemm_uninit, MatRef, ShapeError};
