//! What the stage tests share: the corpus, a small model, the run's stage settings, trainers.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use sliver_engine::data::{ByteTokenizer, Dataset};
use sliver_engine::optim::{AdamWConfig, LrSchedule};
use sliver_engine::{GptConfig, SliverSpec, SliverTrainer};
use sliver_miner::stage::StageConfig;
use sliver_wire::WireCodec;

pub fn corpus() -> Arc<Dataset> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/tinyshakespeare.txt");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|_| "To be, or not to be, that is the question. ".repeat(2000));
    Arc::new(Dataset::from_text(&text[..text.len().min(200_000)], &ByteTokenizer, 0.9).unwrap())
}

pub fn model() -> GptConfig {
    GptConfig::new()
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(32)
        .with_block_size(16)
        .with_tie_embeddings(false)
}

pub fn stage_config() -> StageConfig {
    StageConfig {
        run: 1,
        epoch: 3,
        route: 0,
        micro_batches: 2,
        batch: 4,
        seq: 16,
        codec: WireCodec::Bf16,
        lr: LrSchedule { max_lr: 3e-3, min_lr: 3e-4, warmup_steps: 5, decay_steps: 200 },
        clip: 1.0,
        grad_timeout: Duration::from_secs(3),
        audit_every: 8,
    }
}

/// A trainer of sliver `index` of two.
pub fn trainer(index: usize) -> SliverTrainer {
    let cfg = model();
    let spec = SliverSpec::split(cfg.n_layer, 2).unwrap().remove(index);
    SliverTrainer::new(&cfg, spec, None, AdamWConfig::default(), &sliver_engine::default_device())
        .unwrap()
}
