//! The sliver a miner trains and what it needs to build one: [`Setup`] holds what does not
//! change while the miner runs (model, run settings, device, data, the P2P client, the audit
//! log), [`Training`] the sliver being trained with its merge state (the replicas' shared start
//! and the outer optimiser).
//!
//! A trainer starts from, in order of preference: the merged state of its sliver as the chain's
//! commitments name it ([`crate::sync`]), the local checkpoint of this run and sliver, or the
//! deterministic initialisation (the same on every machine).

use std::path::PathBuf;
use std::sync::Arc;

use sliver_engine::checkpoint::{self, CheckpointInfo};
use sliver_engine::data::Dataset;
use sliver_engine::merge::{self as engine_merge, Flat, OuterOptimizer};
use sliver_engine::optim::AdamWConfig;
use sliver_engine::{EngineError, GptConfig, SliverSpec, SliverTrainer};
use sliver_p2p::Client;

use crate::audit::AuditLog;
use crate::merge::State;
use crate::stage::{Stage, StageConfig};

/// What does not change while the miner runs.
pub struct Setup {
    /// The run's model.
    pub model: GptConfig,
    /// Its slivers.
    pub specs: Vec<SliverSpec>,
    /// The stage settings (epoch and route change as the miner goes).
    pub stage_cfg: StageConfig,
    /// Inner optimiser settings.
    pub adamw: AdamWConfig,
    /// Burn device.
    pub device: sliver_engine::Device,
    /// The training text.
    pub data: Arc<Dataset>,
    /// The P2P node.
    pub client: Client,
    /// Where checkpoints live.
    pub data_dir: PathBuf,
    /// The run id.
    pub run_id: u32,
    /// The audit log.
    pub audit: AuditLog,
    /// Outer learning rate and momentum.
    pub outer: (f32, f32),
}

/// The sliver being trained, with its merge state.
pub struct Training {
    /// Which sliver.
    pub sliver: u16,
    /// Its stage.
    pub stage: Stage,
    /// Weights at the last merge (the replicas' shared start).
    pub start: Flat,
    /// The outer optimiser.
    pub outer: OuterOptimizer,
    /// Steps taken at the last merge.
    pub merged_steps: u64,
    pub(crate) info: CheckpointInfo,
    pub(crate) ckpt: PathBuf,
}

impl Training {
    /// The merged state: start weights and momentum.
    pub fn state(&self) -> State {
        State { weights: self.start.clone(), velocity: self.outer.velocity(&self.start) }
    }
}

/// Where a trainer's weights came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The replicas' merged state, as committed on chain.
    Synced,
    /// The local checkpoint.
    Checkpoint,
    /// The deterministic initialisation.
    Fresh,
}

impl Setup {
    fn spec(&self, sliver: u16) -> Result<SliverSpec, EngineError> {
        self.specs.get(sliver as usize).cloned().ok_or_else(|| {
            EngineError::Config(format!(
                "sliver {sliver} is outside the run's {} slivers",
                self.specs.len()
            ))
        })
    }

    /// The names and sizes of `sliver`'s parameters (what peers' tensor sets must match).
    pub fn like(&self, sliver: u16) -> Result<Flat, EngineError> {
        let spec = self.spec(sliver)?;
        let mut trainer =
            SliverTrainer::new(&self.model, spec, None, self.adamw.clone(), &self.device)?;
        Ok(engine_merge::export_flat(&mut trainer.sliver))
    }

    /// A trainer for `sliver` from `state` if given, else from the local checkpoint of this run
    /// and sliver if there is one, else from the deterministic initialisation. Its stage takes
    /// over the transport's frame gate.
    pub fn train(
        &self,
        sliver: u16,
        state: Option<State>,
    ) -> Result<(Training, Origin), EngineError> {
        let spec = self.spec(sliver)?;
        let mut trainer =
            SliverTrainer::new(&self.model, spec.clone(), None, self.adamw.clone(), &self.device)?;
        let ckpt = checkpoint_path(&self.data_dir, self.run_id, sliver);
        let info =
            CheckpointInfo { config: self.model.clone(), spec: spec.clone(), bottleneck: None };
        let mut outer = OuterOptimizer::new(self.outer.0, self.outer.1);
        let mut origin = Origin::Fresh;
        if let Some(s) = state {
            engine_merge::import_flat(&mut trainer.sliver, &s.weights)?;
            outer.set_velocity(s.velocity);
            origin = Origin::Synced;
        } else if ckpt.is_file() {
            match checkpoint::read(&ckpt) {
                Ok((i, flat)) if i.spec == spec && i.config == self.model => {
                    engine_merge::import_flat(&mut trainer.sliver, &flat)?;
                    tracing::info!(path = %ckpt.display(), "resumed from the local checkpoint");
                    origin = Origin::Checkpoint;
                }
                Ok(_) => {
                    tracing::warn!(path = %ckpt.display(), "checkpoint is for another model or sliver; starting fresh")
                }
                Err(e) => tracing::warn!(error = %e, "checkpoint unreadable; starting fresh"),
            }
        }
        let mut stage =
            Stage::new(trainer, self.client.clone(), self.data.clone(), self.stage_cfg.clone())
                .with_audit(self.audit.clone());
        let start = engine_merge::export_flat(&mut stage.trainer.sliver);
        Ok((Training { sliver, stage, start, outer, merged_steps: 0, info, ckpt }, origin))
    }
}

/// Where the sliver's local checkpoint lives.
pub fn checkpoint_path(data_dir: &std::path::Path, run: u32, sliver: u16) -> PathBuf {
    data_dir.join(format!("run-{run}")).join(format!("sliver-{sliver}.safetensors"))
}
