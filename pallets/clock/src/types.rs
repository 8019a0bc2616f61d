//! The training-run record and the small traits the clock is configured with.

use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use core::{fmt::Debug, marker::PhantomData};
use frame_support::{
    traits::Get, BoundedVec, CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound,
};
use scale_info::TypeInfo;
use serde::{Deserialize, Serialize};
use sp_core::H256;
use sp_io::hashing::blake2_256;

/// The shape of the model a training run trains.
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelConfig {
    /// Number of transformer blocks; the slivers split them into contiguous stages.
    pub n_layers: u16,
    /// Width of the residual stream.
    pub d_model: u32,
    /// Attention heads per block; must divide `d_model`.
    pub n_heads: u16,
    /// Size of the token vocabulary.
    pub vocab_size: u32,
    /// Maximum sequence length in tokens.
    pub context_len: u32,
    /// Whether the output head shares the input embedding matrix.
    pub tied_embeddings: bool,
}

/// Optimiser and schedule of a training run. Real-valued settings are fixed point: the value
/// times 1,000,000 (`_micro`).
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HyperParams {
    /// Peak inner learning rate x 1e6.
    pub learning_rate_micro: u32,
    /// Floor of the learning-rate schedule x 1e6.
    pub min_learning_rate_micro: u32,
    /// Linear warm-up steps before the peak learning rate.
    pub warmup_steps: u32,
    /// Weight decay x 1e6.
    pub weight_decay_micro: u32,
    /// Gradient-norm clipping threshold x 1e6.
    pub grad_clip_micro: u32,
    /// Sequences per optimiser step; at least 1.
    pub batch_size: u32,
    /// Micro-batches per step (gradient accumulation); at least 1 and divides `batch_size`.
    pub micro_batches: u32,
    /// Inner steps `H` between two DiLoCo outer merges; at least 1.
    pub merge_interval: u32,
    /// Outer (merge) learning rate x 1e6.
    pub outer_lr_micro: u32,
    /// Outer Nesterov momentum x 1e6.
    pub outer_momentum_micro: u32,
}

/// What `set_training_run` (and the genesis config) takes: a [`TrainingRun`] without its
/// creation block. `S` bounds the length of the dataset identifier.
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    CloneNoBound,
    PartialEqNoBound,
    EqNoBound,
    DebugNoBound,
    Serialize,
    Deserialize,
)]
#[scale_info(skip_type_params(S))]
#[codec(mel_bound())]
#[serde(rename_all = "camelCase", deny_unknown_fields, bound(serialize = "", deserialize = ""))]
pub struct TrainingRunParams<S: Get<u32>> {
    /// Model architecture.
    pub model: ModelConfig,
    /// Number of slivers (pipeline stages) the model is cut into.
    pub num_slivers: u16,
    /// Identifier of the dataset (for example a content address); non-empty.
    pub dataset_id: BoundedVec<u8, S>,
    /// Hash of the dataset's manifest, so that miners and validators agree on the bytes.
    pub dataset_hash: H256,
    /// Optimiser settings.
    pub hyper: HyperParams,
}

/// A training run, as stored under its [`RunId`](sliver_primitives::RunId).
///
/// Runs are first-class records rather than a single global setting because later work adds
/// user-submitted jobs (with escrow) that each create a run.
#[derive(
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    CloneNoBound,
    PartialEqNoBound,
    EqNoBound,
    DebugNoBound,
)]
#[scale_info(skip_type_params(S))]
#[codec(mel_bound(BlockNumber: MaxEncodedLen))]
pub struct TrainingRun<BlockNumber, S>
where
    BlockNumber: Clone + PartialEq + Eq + Debug,
    S: Get<u32>,
{
    /// Model architecture.
    pub model: ModelConfig,
    /// Number of slivers (pipeline stages) the model is cut into.
    pub num_slivers: u16,
    /// Identifier of the dataset; non-empty.
    pub dataset_id: BoundedVec<u8, S>,
    /// Hash of the dataset's manifest.
    pub dataset_hash: H256,
    /// Optimiser settings.
    pub hyper: HyperParams,
    /// Block in which the run was registered.
    pub created_at: BlockNumber,
}

impl<BlockNumber, S> TrainingRun<BlockNumber, S>
where
    BlockNumber: Clone + PartialEq + Eq + Debug,
    S: Get<u32>,
{
    /// The record of `params` registered at `created_at`.
    pub fn new(params: TrainingRunParams<S>, created_at: BlockNumber) -> Self {
        let TrainingRunParams { model, num_slivers, dataset_id, dataset_hash, hyper } = params;
        Self { model, num_slivers, dataset_id, dataset_hash, hyper, created_at }
    }
}

/// Where the entropy mixed into each new epoch's seed comes from.
pub trait EpochEntropy {
    /// Fresh entropy, read in `on_initialize` of the first block of a new epoch.
    fn entropy() -> H256;
}

/// [`EpochEntropy`] from the parent block's hash.
///
/// **Known limitation:** the author of the parent block can grind its hash (by reordering or
/// omitting extrinsics) and so has some influence over the next epoch's seed, hence over which
/// miner lands on which sliver and over the data and audit seeds. This is acceptable while
/// block authors are trusted operators, and is to be replaced by a VRF (BABE) or BEEFY-based
/// randomness source behind this same trait.
pub struct ParentHashEntropy<T>(PhantomData<T>);

impl<T: frame_system::Config> EpochEntropy for ParentHashEntropy<T> {
    fn entropy() -> H256 {
        let parent = frame_system::Pallet::<T>::parent_hash();
        let bytes: &[u8] = parent.as_ref();
        // A 32-byte hash is used as is; any other width is hashed down to 32 bytes.
        <[u8; 32]>::try_from(bytes).map(H256).unwrap_or_else(|_| H256(blake2_256(bytes)))
    }
}

/// Set-up the benchmarks need from the other pallets.
#[cfg(feature = "runtime-benchmarks")]
pub trait BenchmarkHelper {
    /// Make [`sliver_primitives::Registry::miners`] return at least `n` miners, with distinct
    /// non-zero throughputs where possible.
    fn register_miners(n: u32);
}

#[cfg(feature = "runtime-benchmarks")]
impl BenchmarkHelper for () {
    fn register_miners(_n: u32) {}
}
