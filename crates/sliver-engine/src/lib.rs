//! # sliver-engine
//!
//! The training core that Sliver's miners and validators share: a GPT-style decoder split into
//! *slivers* (pipeline stages of consecutive blocks), trained with [Burn](https://burn.dev) 0.22
//! on its `flex` CPU backend by default (wgpu and CUDA behind the `wgpu` and `cuda` features).
//! No chain and no network here: the off-chain binaries move the bytes this crate produces.
//!
//! - [`config`]: [`GptConfig`] and [`SliverSpec`], the split of blocks into slivers.
//! - [`model`]: the [`Sliver`] module (the whole model is the one sliver that is first and last).
//! - [`pipeline`]: [`SliverTrainer`] (forward, backward from a received gradient, accumulation,
//!   AdamW step) and an in-process [`Pipeline`] that runs several slivers through the codecs.
//! - [`codec`]: what crosses a boundary (f32, bf16, int8 per row; learned bottleneck in the model).
//! - [`closeness`]: relative L2 and cosine, for comparing work done on another backend.
//! - [`merge`]: DiLoCo outer steps between replicas of a sliver, with int8 and top-k compression.
//! - [`data`]: byte tokenizer (BPE with feature `bpe`), readers, deterministic sampling.
//! - [`checkpoint`]: safetensors files with GPT-2 names; assembling a model from slivers.
//! - [`generate`]: text from a checkpoint.
//! - [`optim`]: AdamW, learning-rate schedule, global-norm clipping.
//! - [`fast`]: the CPU kernels of `sliver-kernels` as a Burn backend extension with their own
//!   backward passes (GEMM, attention, GELU, layer norm, cross-entropy, AdamW).
//! - [`alloc`]: the allocator setup of processes that train; [`on_compute_thread`] runs
//!   training calls on rayon's pool.
//!
//! Design notes and measured results: `docs/engine.md`.

pub mod alloc;
pub mod checkpoint;
pub mod closeness;
pub mod codec;
pub mod config;
pub mod data;
pub mod fast;
pub mod generate;
pub mod merge;
pub mod model;
pub mod optim;
pub mod pipeline;
pub mod rng;
pub mod tensor_set;

pub use config::{GptConfig, SliverSpec};
pub use model::{Sliver, SliverInput};
pub use pipeline::{Boundary, MicroBatch, Pipeline, Schedule, SliverTrainer, StepStats};

pub use burn::tensor::Device;

/// Errors of the engine. Every input from outside (peer bytes, files, configuration) ends in
/// one of these rather than a panic.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model or run configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A tensor has the wrong shape or content.
    #[error("shape error: {0}")]
    Shape(String),
    /// A frame from a peer was refused.
    #[error("bad frame: {0}")]
    Codec(#[from] codec::CodecError),
    /// Micro-batches were driven out of order.
    #[error("schedule error: {0}")]
    Schedule(String),
    /// The loss became NaN or infinite.
    #[error("training diverged: loss is {0}")]
    Diverged(f32),
    /// Dataset problem.
    #[error("data: {0}")]
    Data(String),
    /// Checkpoint problem.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

/// The default device: Burn's `flex` CPU backend.
pub fn default_device() -> Device {
    Device::flex()
}

/// The device named `name`: `flex` (default), `wgpu` or `cuda` (when compiled in).
pub fn device_by_name(name: &str) -> Result<Device, EngineError> {
    match name {
        "flex" | "cpu" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(Default::default())),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0usize)),
        other => Err(EngineError::Config(format!(
            "unknown or not compiled-in device {other:?} (this build has: flex{}{})",
            if cfg!(feature = "wgpu") { ", wgpu" } else { "" },
            if cfg!(feature = "cuda") { ", cuda" } else { "" }
        ))),
    }
}

/// Runs `f` on a thread of rayon's global pool and returns its result (directly when already on
/// one). Burn's flex backend splits large operations over that pool; called from any other
/// thread (a tokio worker, say), each such operation hands its work to sleeping pool threads
/// and waits for them, which cost about 10% of a training step in the speed benchmark.
pub fn on_compute_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // Called from outside the pool, `join` runs both closures on a pool thread and waits.
    rayon::join(f, || ()).0
}
