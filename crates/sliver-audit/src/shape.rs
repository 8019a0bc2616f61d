//! A training run's shapes: the model the engine builds for it, its slivers, and the
//! micro-batch every miner trains (`batch_size / micro_batches` rows of `context_len` tokens).

use sliver_chain::RunInfo;
use sliver_engine::data::{ByteTokenizer, Dataset, Source};
use sliver_engine::optim::{AdamWConfig, LrSchedule};
use sliver_engine::{EngineError, GptConfig, SliverSpec};

/// The run's inner learning-rate schedule over a miner's optimiser steps.
pub fn schedule_of(run: &RunInfo) -> LrSchedule {
    let hyper = &run.hyper;
    LrSchedule {
        max_lr: hyper.learning_rate_micro as f64 / 1e6,
        min_lr: hyper.min_learning_rate_micro as f64 / 1e6,
        warmup_steps: hyper.warmup_steps as u64,
        decay_steps: 5000,
    }
}

/// The run's inner optimiser.
pub fn adamw_of(run: &RunInfo) -> AdamWConfig {
    AdamWConfig {
        weight_decay: run.hyper.weight_decay_micro as f64 / 1e6,
        ..AdamWConfig::default()
    }
}

/// The run's model (embeddings untied across machines: the first and last slivers each own
/// theirs).
pub fn model_of(run: &RunInfo) -> Result<GptConfig, EngineError> {
    let m = &run.model;
    let cfg = GptConfig::new()
        .with_vocab_size(m.vocab_size as usize)
        .with_n_layer(m.n_layers as usize)
        .with_n_head(m.n_heads as usize)
        .with_d_model(m.d_model as usize)
        .with_block_size(m.context_len as usize)
        .with_tie_embeddings(false);
    cfg.validate()?;
    Ok(cfg)
}

/// Everything shape-like a miner and a validator of a run must agree on.
#[derive(Clone, Debug)]
pub struct RunShape {
    /// Run id.
    pub run: u64,
    /// The model.
    pub model: GptConfig,
    /// Its slivers (layers per pipeline stage).
    pub specs: Vec<SliverSpec>,
    /// Micro-batches per optimiser step.
    pub micro_batches: u64,
    /// Rows per micro-batch.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// The inner learning-rate schedule.
    pub lr: LrSchedule,
    /// Largest gradient norm of a sliver (0: no clipping).
    pub clip: f64,
    /// The inner optimiser.
    pub adamw: AdamWConfig,
}

impl RunShape {
    /// The shapes of `run`.
    pub fn of(run: &RunInfo) -> Result<Self, EngineError> {
        let model = model_of(run)?;
        let specs = SliverSpec::split(model.n_layer, run.num_slivers as usize)?;
        let micro_batches = run.hyper.micro_batches.max(1) as u64;
        Ok(RunShape {
            run: run.id as u64,
            specs,
            micro_batches,
            batch: (run.hyper.batch_size as usize / micro_batches as usize).max(1),
            seq: run.model.context_len as usize,
            model,
            lr: schedule_of(run),
            clip: run.hyper.grad_clip_micro as f64 / 1e6,
            adamw: adamw_of(run),
        })
    }

    /// The shape of an activation or gradient between slivers.
    pub fn hidden(&self) -> [usize; 3] {
        [self.batch, self.seq, self.model.d_model]
    }

    /// Number of slivers.
    pub fn slivers(&self) -> u16 {
        self.specs.len() as u16
    }
}

/// Loads the run's training text from `path` (a text file, a directory of `.txt` files, or
/// JSON Lines) with the byte tokenizer and the 90/10 train/validation split every miner uses.
pub fn load_dataset(path: &std::path::Path, run: &RunInfo) -> Result<Dataset, EngineError> {
    if !path.exists() {
        return Err(EngineError::Data(format!(
            "dataset missing: {} does not exist (the run trains on {:?})",
            path.display(),
            run.dataset_id
        )));
    }
    if run.model.vocab_size != 256 {
        return Err(EngineError::Data(format!(
            "the run's vocabulary has {} tokens; only byte tokenization (256) is supported",
            run.model.vocab_size
        )));
    }
    Dataset::load(&Source::detect(path), &ByteTokenizer, 0.9)
}
