//! # Sliver clock pallet
//!
//! Sliver's epoch clock, its record of training runs, and the assignment of miners to slivers.
//!
//! ## Overview
//!
//! Sliver trains one large model by pipeline parallelism: a training run cuts the model into
//! `num_slivers` contiguous stages ("slivers") and every registered miner trains one of them.
//! Validators audit the miners' work and set weights; the chain pays out. All of this happens
//! in lock-step *epochs* of [`Config::EpochLength`] blocks, which this pallet keeps.
//!
//! ### Epochs and phases
//!
//! An epoch starting at block `s` with length `L = EpochLength`, `C = CommitLength`,
//! `R = RevealLength` (checked by `integrity_test`: all non-zero and `C + R < L`) has three
//! phases:
//!
//! | phase             | blocks                        | who does what                         |
//! |-------------------|-------------------------------|---------------------------------------|
//! | [`Phase::Train`]  | `s .. s + L - C - R`          | miners train, validators audit        |
//! | [`Phase::Commit`] | `s + L - C - R .. s + L - R`  | validators commit hashes of weights   |
//! | [`Phase::Reveal`] | `s + L - R .. s + L`          | validators reveal their weights       |
//!
//! Block `s + L` is the first block of the next epoch. In its `on_initialize` the pallet
//! *rotates*: the epoch index goes up by one, a new epoch seed is drawn, a pending training run
//! is activated, the sliver assignment is recomputed from the registry, [`Event::EpochStarted`]
//! and [`Event::PhaseStarted`] are emitted and finally [`Config::OnEpochChange`] is told
//! `(ended, started)`, which is where the rewards pallet settles the ended epoch. Root can
//! bring the rotation forward to the next block with [`Pallet::force_new_epoch`]; the new
//! epoch then starts at that block and lasts a full `L` blocks.
//!
//! Genesis is epoch 0, starting at block 0.
//!
//! ### Seeds
//!
//! Each epoch has a 32-byte seed: `seed(e) = blake2_256(SCALE((seed(e - 1), entropy, e)))`,
//! where `entropy` comes from [`Config::Entropy`] (the parent block's hash in the provided
//! [`ParentHashEntropy`]); epoch 0 has the all-zero seed. Only the current and the previous
//! seeds are kept. From a seed, the pallet derives domain-separated seeds for off-chain work:
//! [`Pallet::data_seed`] (`blake2_256(b"sliver/data" ++ seed)`, which data shards to train on)
//! and [`Pallet::audit_seed`] (`blake2_256(b"sliver/audit" ++ seed)`, what validators audit).
//!
//! **Known limitation:** a parent hash can be ground by the block author, who thereby has some
//! influence over the next epoch's assignment and seeds. This is to be replaced by a VRF
//! (BABE) or BEEFY-based randomness source behind [`EpochEntropy`].
//!
//! ### Training runs
//!
//! A [`TrainingRun`] (model shape, number of slivers, dataset, hyper-parameters) is stored under
//! a [`RunId`] taken from [`NextRunId`]. [`Pallet::set_training_run`] validates and records a
//! run and makes it *pending*: it becomes the [`ActiveRun`] at the next epoch boundary, so that
//! an epoch never changes runs half-way. If no run is active yet, the new run becomes active
//! at once (and the next boundary assigns miners to it; `force_new_epoch` brings that
//! forward). Registering another run while one is pending replaces the pending one.
//!
//! ### Sliver assignment
//!
//! At each boundary the assignment is recomputed from [`sliver_primitives::Registry::miners`]
//! (the registry's `(uid, declared throughput)` list, at most [`Config::MaxMiners`] of them),
//! the new epoch's seed and the active run's `num_slivers`, by [`assign_slivers`] — a pure
//! function, so anyone can recompute the assignment from chain state:
//!
//! 1. Order the miners by throughput, highest first; ties are broken by
//!    `blake2_256(seed ++ uid.to_le_bytes())`, lowest first (so equal miners are ordered by the
//!    seed, not by uid).
//! 2. Give each miner in that order to the sliver whose total throughput is the lowest so far;
//!    ties go to the sliver with fewer miners, then to the lowest *rotated* index
//!    `(index + seed[0]) % num_slivers` (so sliver 0 is not always favoured).
//!
//! This is the LPT ("longest processing time first") greedy for balancing loads. It
//! guarantees that the most and the least loaded slivers differ by at most the largest single
//! miner throughput, and, since an empty sliver always has the lowest load and the fewest
//! miners, that every sliver gets a miner whenever there are at least as many miners as
//! slivers. Miners that register mid-epoch are assigned at the next boundary only. The
//! throughput is, for now, the registry's declared (and capped) figure; measured throughput will
//! replace it.
//!
//! ### How it fits with the other pallets
//!
//! - It reads the registry through [`sliver_primitives::Registry`] (miners and throughputs).
//! - It calls [`sliver_primitives::OnEpochChange`] (the rewards pallet) at every boundary.
//! - It implements [`sliver_primitives::EpochClock`] for the other pallets (current epoch,
//!   phase, a uid's sliver), and [`Pallet::epoch_info`] and [`Pallet::assignments`] back the
//!   runtime's [`sliver_primitives::SliverApi`].
//!
//! ## Calls
//!
//! - [`Pallet::set_training_run`] ([`Config::RunOrigin`]): register a run, to become active at
//!   the next boundary.
//! - [`Pallet::force_new_epoch`] (root): start a new epoch at the next block.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
mod types;
pub mod weights;

pub use pallet::*;
pub use types::*;
pub use weights::WeightInfo;

use alloc::{
    collections::{BTreeSet, BinaryHeap},
    vec,
    vec::Vec,
};
use core::cmp::Reverse;
use frame_support::pallet_prelude::*;
use frame_system::pallet_prelude::*;
use sliver_primitives::{
    EpochClock, EpochIndex, EpochInfo, OnEpochChange, OnUidReleased, Phase, Registry, RunId,
    SliverIndex, Uid,
};
use sp_core::H256;
use sp_io::hashing::blake2_256;
use sp_runtime::traits::Saturating;

/// Log target of this pallet.
pub const LOG_TARGET: &str = "runtime::sliver-clock";

/// Domain tag of [`Pallet::data_seed`].
pub const DATA_SEED_DOMAIN: &[u8] = b"sliver/data";
/// Domain tag of [`Pallet::audit_seed`].
pub const AUDIT_SEED_DOMAIN: &[u8] = b"sliver/audit";

/// A training run as this runtime stores it.
pub type TrainingRunOf<T> = TrainingRun<BlockNumberFor<T>, <T as Config>::MaxDatasetIdLen>;
/// The parameters of a training run as this runtime takes them.
pub type TrainingRunParamsOf<T> = TrainingRunParams<<T as Config>::MaxDatasetIdLen>;
/// Per-sliver `(miners, total throughput)` of the current epoch.
pub type SliverLoadOf<T> = BoundedVec<(u32, u64), <T as Config>::MaxSlivers>;

/// What `on_initialize` did, for weighing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Tick {
    /// Nothing changed.
    Idle,
    /// The phase changed within the epoch.
    PhaseChanged,
    /// A new epoch started; `miners` is the larger of the old and the new assignment's size.
    Rotated { ended: EpochIndex, started: EpochIndex, miners: u32 },
}

#[frame_support::pallet]
pub mod pallet {
    use super::*;

    #[pallet::pallet]
    pub struct Pallet<T>(_);

    #[pallet::config]
    pub trait Config: frame_system::Config {
        /// The overarching event type.
        #[allow(deprecated)]
        type RuntimeEvent: From<Event<Self>> + IsType<<Self as frame_system::Config>::RuntimeEvent>;

        /// The registry: who the miners are and their declared throughput.
        type Registry: Registry<Self::AccountId>;

        /// Told `(ended, started)` at every epoch boundary, after the new assignment is made
        /// (the rewards pallet settles there). The weight it returns is added to the block's.
        type OnEpochChange: OnEpochChange;

        /// Entropy mixed into each new epoch's seed. [`ParentHashEntropy`] uses the parent
        /// block's hash (see its documentation for the limitation).
        type Entropy: EpochEntropy;

        /// Who may register training runs (root, or later a governance origin).
        type RunOrigin: EnsureOrigin<Self::RuntimeOrigin>;

        /// Length of an epoch in blocks.
        #[pallet::constant]
        type EpochLength: Get<BlockNumberFor<Self>>;

        /// Length of the commit phase in blocks (just before the reveal phase).
        #[pallet::constant]
        type CommitLength: Get<BlockNumberFor<Self>>;

        /// Length of the reveal phase in blocks (the last blocks of an epoch).
        #[pallet::constant]
        type RevealLength: Get<BlockNumberFor<Self>>;

        /// Most miners assigned in one epoch. Should equal the registry's miner slots: any
        /// miners beyond it (in the registry's uid order) are left unassigned.
        #[pallet::constant]
        type MaxMiners: Get<u32>;

        /// Most slivers a training run may have.
        #[pallet::constant]
        type MaxSlivers: Get<u32>;

        /// Longest dataset identifier, in bytes.
        #[pallet::constant]
        type MaxDatasetIdLen: Get<u32>;

        /// Weights of this pallet's calls and hooks.
        type WeightInfo: WeightInfo;

        /// Sets up the registry for the benchmarks.
        #[cfg(feature = "runtime-benchmarks")]
        type BenchmarkHelper: BenchmarkHelper;
    }

    /// The current epoch, counted from 0 at genesis.
    #[pallet::storage]
    pub type CurrentEpoch<T> = StorageValue<_, EpochIndex, ValueQuery>;

    /// First block of the current epoch (0 at genesis).
    #[pallet::storage]
    pub type EpochStart<T: Config> = StorageValue<_, BlockNumberFor<T>, ValueQuery>;

    /// The current phase of the current epoch.
    #[pallet::storage]
    pub type CurrentPhase<T> = StorageValue<_, Phase, ValueQuery, DefaultPhase>;

    /// Default of [`CurrentPhase`]: an epoch starts in `Train`.
    #[pallet::type_value]
    pub fn DefaultPhase() -> Phase {
        Phase::Train
    }

    /// Seed of the current epoch (all zeros for epoch 0).
    #[pallet::storage]
    pub type EpochSeed<T> = StorageValue<_, H256, ValueQuery>;

    /// Seed of the previous epoch (meaningless in epoch 0).
    #[pallet::storage]
    pub type PreviousEpochSeed<T> = StorageValue<_, H256, ValueQuery>;

    /// The current epoch's sliver of each assigned miner.
    #[pallet::storage]
    pub type Assignment<T> = StorageMap<_, Twox64Concat, Uid, SliverIndex, OptionQuery>;

    /// The current epoch's `(miners, total declared throughput)` of each sliver, indexed by
    /// sliver. Empty until the first boundary after a run became active.
    #[pallet::storage]
    pub type SliverLoad<T: Config> = StorageValue<_, SliverLoadOf<T>, ValueQuery>;

    /// Every training run ever registered.
    #[pallet::storage]
    pub type TrainingRuns<T: Config> =
        StorageMap<_, Twox64Concat, RunId, TrainingRunOf<T>, OptionQuery>;

    /// The run miners currently train.
    #[pallet::storage]
    pub type ActiveRun<T> = StorageValue<_, RunId, OptionQuery>;

    /// The id the next registered run gets.
    #[pallet::storage]
    pub type NextRunId<T> = StorageValue<_, RunId, ValueQuery>;

    /// A registered run that becomes active at the next epoch boundary.
    #[pallet::storage]
    pub type PendingRun<T> = StorageValue<_, RunId, OptionQuery>;

    /// Set by `force_new_epoch`: the next block starts a new epoch.
    #[pallet::storage]
    pub type ForceNewEpoch<T> = StorageValue<_, bool, ValueQuery>;

    #[pallet::genesis_config]
    #[derive(frame_support::DefaultNoBound)]
    pub struct GenesisConfig<T: Config> {
        /// A training run active from genesis, stored as run 0.
        pub initial_run: Option<TrainingRunParamsOf<T>>,
    }

    #[pallet::genesis_build]
    impl<T: Config> BuildGenesisConfig for GenesisConfig<T> {
        fn build(&self) {
            if let Some(params) = self.initial_run.clone() {
                if let Err(e) = Pallet::<T>::validate_run(&params) {
                    panic!("sliver-clock genesis: invalid initial_run: {:?}", e);
                }
                let run_id: RunId = 0;
                TrainingRuns::<T>::insert(run_id, TrainingRun::new(params, Zero::zero()));
                ActiveRun::<T>::put(run_id);
                NextRunId::<T>::put(run_id.saturating_add(1));
                // Miners registered at genesis (by a registry built before this pallet) are
                // assigned for epoch 0.
                Pallet::<T>::reassign(&EpochSeed::<T>::get());
            }
        }
    }

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// A new epoch started (and with it the `Train` phase).
        EpochStarted {
            /// The new epoch.
            epoch: EpochIndex,
            /// Its first block.
            start: BlockNumberFor<T>,
            /// The first block of the epoch after it (unless forced earlier).
            end: BlockNumberFor<T>,
            /// Its seed.
            seed: H256,
        },
        /// A phase started.
        PhaseStarted {
            /// The current epoch.
            epoch: EpochIndex,
            /// The phase that started in this block.
            phase: Phase,
        },
        /// A training run was registered.
        RunRegistered {
            /// Its id.
            run_id: RunId,
        },
        /// A training run became the active one.
        RunActivated {
            /// Its id.
            run_id: RunId,
            /// The epoch in which it became active.
            epoch: EpochIndex,
        },
        /// Root asked for a new epoch to start at the next block.
        NewEpochForced,
    }

    #[pallet::error]
    pub enum Error<T> {
        /// `n_layers` is 0.
        NoLayers,
        /// `d_model` is 0.
        ZeroModelDim,
        /// `n_heads` is 0.
        NoHeads,
        /// `d_model` is not a multiple of `n_heads`.
        HeadsDoNotDivideModelDim,
        /// `vocab_size` is below 2.
        VocabTooSmall,
        /// `context_len` is 0.
        ZeroContextLen,
        /// `num_slivers` is 0.
        NoSlivers,
        /// `num_slivers` is greater than `n_layers`: a sliver needs at least one layer.
        MoreSliversThanLayers,
        /// `num_slivers` is greater than [`Config::MaxSlivers`].
        TooManySlivers,
        /// `dataset_id` is empty.
        EmptyDatasetId,
        /// `batch_size` is 0.
        ZeroBatchSize,
        /// `micro_batches` is 0.
        ZeroMicroBatches,
        /// `micro_batches` does not divide `batch_size`.
        MicroBatchesDoNotDivideBatch,
        /// `merge_interval` is 0.
        ZeroMergeInterval,
        /// Run ids are exhausted.
        RunIdOverflow,
        /// A new epoch is already forced for the next block.
        AlreadyForced,
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        fn on_initialize(n: BlockNumberFor<T>) -> Weight {
            match Self::tick(n) {
                Tick::Idle => T::WeightInfo::on_initialize_idle(),
                Tick::PhaseChanged => T::WeightInfo::on_initialize_phase_change(),
                Tick::Rotated { ended, started, miners } => {
                    T::WeightInfo::on_initialize_rotate(miners)
                        .saturating_add(T::OnEpochChange::on_epoch_change(ended, started))
                }
            }
        }

        fn integrity_test() {
            let epoch = T::EpochLength::get();
            let commit = T::CommitLength::get();
            let reveal = T::RevealLength::get();
            assert!(!epoch.is_zero(), "EpochLength must be non-zero");
            assert!(!commit.is_zero(), "CommitLength must be non-zero");
            assert!(!reveal.is_zero(), "RevealLength must be non-zero");
            assert!(
                commit.saturating_add(reveal) < epoch,
                "CommitLength + RevealLength must be less than EpochLength"
            );
            assert!(T::MaxSlivers::get() > 0, "MaxSlivers must be non-zero");
            assert!(
                T::MaxSlivers::get() <= u32::from(SliverIndex::MAX),
                "MaxSlivers must fit a SliverIndex"
            );
            assert!(T::MaxDatasetIdLen::get() > 0, "MaxDatasetIdLen must be non-zero");
        }

        #[cfg(feature = "try-runtime")]
        fn try_state(_n: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
            Self::do_try_state()
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Register a training run.
        ///
        /// The run is validated, stored under the next [`RunId`] and becomes the pending run,
        /// activated at the next epoch boundary (replacing any run pending before). If no run
        /// is active, it becomes active at once; its miners are assigned at the next boundary.
        ///
        /// Origin: [`Config::RunOrigin`]. Emits [`Event::RunRegistered`], and
        /// [`Event::RunActivated`] when activated at once.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::set_training_run())]
        pub fn set_training_run(
            origin: OriginFor<T>,
            run: TrainingRunParamsOf<T>,
        ) -> DispatchResult {
            T::RunOrigin::ensure_origin(origin)?;
            Self::validate_run(&run)?;
            let run_id = NextRunId::<T>::get();
            let next_id = run_id.checked_add(1).ok_or(Error::<T>::RunIdOverflow)?;

            let now = frame_system::Pallet::<T>::block_number();
            TrainingRuns::<T>::insert(run_id, TrainingRun::new(run, now));
            NextRunId::<T>::put(next_id);
            let activate_now = ActiveRun::<T>::get().is_none();
            if activate_now {
                ActiveRun::<T>::put(run_id);
            } else {
                PendingRun::<T>::put(run_id);
            }

            Self::deposit_event(Event::RunRegistered { run_id });
            if activate_now {
                Self::deposit_event(Event::RunActivated {
                    run_id,
                    epoch: CurrentEpoch::<T>::get(),
                });
            }
            Ok(())
        }

        /// Start a new epoch at the next block, whatever the phase.
        ///
        /// Origin: root. Emits [`Event::NewEpochForced`].
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::force_new_epoch())]
        pub fn force_new_epoch(origin: OriginFor<T>) -> DispatchResult {
            ensure_root(origin)?;
            ensure!(!ForceNewEpoch::<T>::get(), Error::<T>::AlreadyForced);

            ForceNewEpoch::<T>::put(true);

            Self::deposit_event(Event::NewEpochForced);
            Ok(())
        }
    }
}

impl<T: Config> Pallet<T> {
    /// The current epoch, phase and their boundaries (for the runtime API).
    pub fn epoch_info() -> EpochInfo<BlockNumberFor<T>> {
        let epoch_start = EpochStart::<T>::get();
        let phase = CurrentPhase::<T>::get();
        let (commit_offset, reveal_offset, epoch_len) = Self::phase_offsets();
        let epoch_end = epoch_start.saturating_add(epoch_len);
        let phase_end = match phase {
            Phase::Train => epoch_start.saturating_add(commit_offset),
            Phase::Commit => epoch_start.saturating_add(reveal_offset),
            Phase::Reveal => epoch_end,
        };
        EpochInfo { epoch: CurrentEpoch::<T>::get(), phase, epoch_start, phase_end, epoch_end }
    }

    /// The current epoch's assignment as `(uid, sliver)`, by uid.
    pub fn assignments() -> Vec<(Uid, SliverIndex)> {
        let mut all: Vec<_> = Assignment::<T>::iter().collect();
        all.sort_unstable();
        all
    }

    /// The active training run and its id.
    pub fn active_run() -> Option<(RunId, TrainingRunOf<T>)> {
        let run_id = ActiveRun::<T>::get()?;
        TrainingRuns::<T>::get(run_id).map(|run| (run_id, run))
    }

    /// The seed of `epoch`, if it is the current or the previous epoch.
    pub fn epoch_seed(epoch: EpochIndex) -> Option<H256> {
        let current = CurrentEpoch::<T>::get();
        if epoch == current {
            Some(EpochSeed::<T>::get())
        } else if epoch.checked_add(1) == Some(current) {
            Some(PreviousEpochSeed::<T>::get())
        } else {
            None
        }
    }

    /// Seed of the data miners train on in `epoch` (current or previous epoch only):
    /// `blake2_256(b"sliver/data" ++ seed(epoch))`.
    pub fn data_seed(epoch: EpochIndex) -> Option<H256> {
        Self::epoch_seed(epoch).map(|seed| derive_seed(DATA_SEED_DOMAIN, &seed))
    }

    /// Seed of the validators' audits of `epoch` (current or previous epoch only):
    /// `blake2_256(b"sliver/audit" ++ seed(epoch))`.
    pub fn audit_seed(epoch: EpochIndex) -> Option<H256> {
        Self::epoch_seed(epoch).map(|seed| derive_seed(AUDIT_SEED_DOMAIN, &seed))
    }

    /// The phase of block `n` in an epoch starting at `start`.
    pub fn phase_at(n: BlockNumberFor<T>, start: BlockNumberFor<T>) -> Phase {
        let offset = n.saturating_sub(start);
        let (commit_offset, reveal_offset, _) = Self::phase_offsets();
        if offset < commit_offset {
            Phase::Train
        } else if offset < reveal_offset {
            Phase::Commit
        } else {
            Phase::Reveal
        }
    }

    /// Offsets from the epoch's start of the commit phase, of the reveal phase and of the next
    /// epoch.
    fn phase_offsets() -> (BlockNumberFor<T>, BlockNumberFor<T>, BlockNumberFor<T>) {
        let epoch_len = T::EpochLength::get();
        let reveal_offset = epoch_len.saturating_sub(T::RevealLength::get());
        let commit_offset = reveal_offset.saturating_sub(T::CommitLength::get());
        (commit_offset, reveal_offset, epoch_len)
    }

    /// Check a run's parameters.
    pub fn validate_run(run: &TrainingRunParamsOf<T>) -> Result<(), Error<T>> {
        let model = &run.model;
        ensure!(model.n_layers >= 1, Error::<T>::NoLayers);
        ensure!(model.d_model >= 1, Error::<T>::ZeroModelDim);
        ensure!(model.n_heads >= 1, Error::<T>::NoHeads);
        ensure!(
            model.d_model.checked_rem(u32::from(model.n_heads)) == Some(0),
            Error::<T>::HeadsDoNotDivideModelDim
        );
        ensure!(model.vocab_size >= 2, Error::<T>::VocabTooSmall);
        ensure!(model.context_len >= 1, Error::<T>::ZeroContextLen);
        ensure!(run.num_slivers >= 1, Error::<T>::NoSlivers);
        ensure!(run.num_slivers <= model.n_layers, Error::<T>::MoreSliversThanLayers);
        ensure!(u32::from(run.num_slivers) <= T::MaxSlivers::get(), Error::<T>::TooManySlivers);
        ensure!(!run.dataset_id.is_empty(), Error::<T>::EmptyDatasetId);
        let hyper = &run.hyper;
        ensure!(hyper.batch_size >= 1, Error::<T>::ZeroBatchSize);
        ensure!(hyper.micro_batches >= 1, Error::<T>::ZeroMicroBatches);
        ensure!(
            hyper.batch_size.checked_rem(hyper.micro_batches) == Some(0),
            Error::<T>::MicroBatchesDoNotDivideBatch
        );
        ensure!(hyper.merge_interval >= 1, Error::<T>::ZeroMergeInterval);
        Ok(())
    }

    /// The work of `on_initialize`, less the call to [`Config::OnEpochChange`] (which the
    /// benchmarks must not measure: it is weighed by its implementer).
    pub(crate) fn tick(n: BlockNumberFor<T>) -> Tick {
        let start = EpochStart::<T>::get();
        if ForceNewEpoch::<T>::get() || n >= start.saturating_add(T::EpochLength::get()) {
            return Self::rotate(n);
        }
        let phase = Self::phase_at(n, start);
        if phase == CurrentPhase::<T>::get() {
            return Tick::Idle;
        }
        CurrentPhase::<T>::put(phase);
        Self::deposit_event(Event::PhaseStarted { epoch: CurrentEpoch::<T>::get(), phase });
        Tick::PhaseChanged
    }

    /// Start a new epoch at block `n`.
    fn rotate(n: BlockNumberFor<T>) -> Tick {
        let ended = CurrentEpoch::<T>::get();
        let started = ended.saturating_add(1);
        let previous_seed = EpochSeed::<T>::get();
        let seed = next_seed(&previous_seed, &T::Entropy::entropy(), started);

        CurrentEpoch::<T>::put(started);
        EpochStart::<T>::put(n);
        CurrentPhase::<T>::put(Phase::Train);
        ForceNewEpoch::<T>::kill();
        PreviousEpochSeed::<T>::put(previous_seed);
        EpochSeed::<T>::put(seed);

        if let Some(run_id) = PendingRun::<T>::take() {
            if TrainingRuns::<T>::contains_key(run_id) {
                ActiveRun::<T>::put(run_id);
                Self::deposit_event(Event::RunActivated { run_id, epoch: started });
            }
        }

        let miners = Self::reassign(&seed);

        Self::deposit_event(Event::EpochStarted {
            epoch: started,
            start: n,
            end: n.saturating_add(T::EpochLength::get()),
            seed,
        });
        Self::deposit_event(Event::PhaseStarted { epoch: started, phase: Phase::Train });
        Tick::Rotated { ended, started, miners }
    }

    /// Replace the assignment with a fresh one for the active run, drawn with `seed`. Returns
    /// the larger of the old and the new number of assigned miners.
    fn reassign(seed: &H256) -> u32 {
        let max_miners = T::MaxMiners::get();
        let old_count =
            SliverLoad::<T>::get().iter().fold(0u32, |acc, (count, _)| acc.saturating_add(*count));
        // At most `MaxMiners` entries are ever inserted, so one bounded pass clears them all.
        let _ = Assignment::<T>::clear(max_miners, None);

        let num_slivers = Self::active_run()
            .map(|(_, run)| run.num_slivers)
            .unwrap_or(0)
            .min(u16::try_from(T::MaxSlivers::get()).unwrap_or(u16::MAX));
        let mut miners = T::Registry::miners();
        if miners.len() > max_miners as usize {
            log::warn!(
                target: LOG_TARGET,
                "{} miners registered but MaxMiners is {}: the rest are not assigned",
                miners.len(),
                max_miners,
            );
            miners.truncate(max_miners as usize);
        }

        let mut load = vec![(0u32, 0u64); usize::from(num_slivers)];
        let assignment = lpt_assign(&miners, num_slivers, seed.as_fixed_bytes());
        let new_count = u32::try_from(assignment.len()).unwrap_or(u32::MAX);
        for (uid, sliver, throughput) in assignment {
            Assignment::<T>::insert(uid, sliver);
            if let Some(entry) = load.get_mut(usize::from(sliver)) {
                entry.0 = entry.0.saturating_add(1);
                entry.1 = entry.1.saturating_add(throughput);
            }
        }
        SliverLoad::<T>::put(SliverLoadOf::<T>::truncate_from(load));
        old_count.max(new_count)
    }

    /// Check the pallet's invariants:
    /// - the active and pending runs exist and have ids below [`NextRunId`];
    /// - [`SliverLoad`] has no more slivers than the active run, every [`Assignment`] entry
    ///   names one of its slivers, and its miner counts match the [`Assignment`] map;
    /// - [`CurrentPhase`] is the phase of the current block, and the epoch has not overrun.
    #[cfg(any(test, feature = "try-runtime"))]
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        let next_id = NextRunId::<T>::get();
        let active = Self::active_run();
        if let Some(run_id) = ActiveRun::<T>::get() {
            ensure!(active.is_some(), "active run is not stored");
            ensure!(run_id < next_id, "active run id not below NextRunId");
        }
        if let Some(run_id) = PendingRun::<T>::get() {
            ensure!(TrainingRuns::<T>::contains_key(run_id), "pending run is not stored");
            ensure!(run_id < next_id, "pending run id not below NextRunId");
        }

        let num_slivers = active.map(|(_, run)| usize::from(run.num_slivers)).unwrap_or(0);
        let load = SliverLoad::<T>::get();
        ensure!(load.len() <= num_slivers, "SliverLoad has more slivers than the active run");
        let mut counts = vec![0u32; load.len()];
        for (_, sliver) in Assignment::<T>::iter() {
            let count = counts
                .get_mut(usize::from(sliver))
                .ok_or("assignment to a sliver outside the active run")?;
            *count = count.saturating_add(1);
        }
        ensure!(
            load.iter().map(|(count, _)| *count).eq(counts.into_iter()),
            "SliverLoad does not match the Assignment map"
        );

        let now = frame_system::Pallet::<T>::block_number();
        let start = EpochStart::<T>::get();
        ensure!(start <= now, "epoch starts in the future");
        ensure!(now < start.saturating_add(T::EpochLength::get()), "epoch overran its length");
        ensure!(
            CurrentPhase::<T>::get() == Self::phase_at(now, start),
            "CurrentPhase disagrees with the block number"
        );
        Ok(())
    }
}

/// A freed uid leaves the current assignment at once, so that whoever takes the uid next is not
/// reported as training the previous holder's sliver. The sliver's miner count drops; its
/// throughput figure stays the one assigned at the boundary until the next rotation.
impl<T: Config> OnUidReleased for Pallet<T> {
    fn on_uid_released(uid: Uid) -> Weight {
        if let Some(sliver) = Assignment::<T>::take(uid) {
            SliverLoad::<T>::mutate(|load| {
                if let Some((count, _)) = load.get_mut(usize::from(sliver)) {
                    *count = count.saturating_sub(1);
                }
            });
        }
        Self::max_weight()
    }

    fn max_weight() -> Weight {
        T::DbWeight::get().reads_writes(2, 2)
    }
}

impl<T: Config> EpochClock for Pallet<T> {
    fn current_epoch() -> EpochIndex {
        CurrentEpoch::<T>::get()
    }

    fn current_phase() -> Phase {
        CurrentPhase::<T>::get()
    }

    fn sliver_of(uid: Uid) -> Option<SliverIndex> {
        Assignment::<T>::get(uid)
    }
}

/// The seed of epoch `epoch`: `blake2_256(SCALE((previous, entropy, epoch)))`.
pub fn next_seed(previous: &H256, entropy: &H256, epoch: EpochIndex) -> H256 {
    H256(blake2_256(&(previous, entropy, epoch).encode()))
}

/// `blake2_256(domain ++ seed)`.
pub fn derive_seed(domain: &[u8], seed: &H256) -> H256 {
    let mut input = Vec::with_capacity(domain.len().saturating_add(32));
    input.extend_from_slice(domain);
    input.extend_from_slice(seed.as_bytes());
    H256(blake2_256(&input))
}

/// Assign `miners` (`(uid, throughput)`) to `num_slivers` slivers with the seeded LPT greedy
/// described in the [crate documentation](crate#sliver-assignment). Returns `(uid, sliver)`
/// sorted by uid.
///
/// The result depends only on the set of miners, `num_slivers` and `seed`, not on the order
/// of `miners`. A uid listed more than once is assigned once, with its highest throughput.
/// With `num_slivers == 0`, nobody is assigned.
pub fn assign_slivers(
    miners: &[(Uid, u64)],
    num_slivers: u16,
    seed: &[u8; 32],
) -> Vec<(Uid, SliverIndex)> {
    lpt_assign(miners, num_slivers, seed)
        .into_iter()
        .map(|(uid, sliver, _)| (uid, sliver))
        .collect()
}

/// [`assign_slivers`], keeping each miner's throughput: `(uid, sliver, throughput)` by uid.
fn lpt_assign(
    miners: &[(Uid, u64)],
    num_slivers: u16,
    seed: &[u8; 32],
) -> Vec<(Uid, SliverIndex, u64)> {
    if num_slivers == 0 {
        return Vec::new();
    }

    // 1. Throughput descending, then the seeded hash of the uid ascending, then uid (only
    //    equal for duplicate uids, which are then dropped).
    let mut order: Vec<(Reverse<u64>, [u8; 32], Uid)> = miners
        .iter()
        .map(|&(uid, throughput)| (Reverse(throughput), tie_break(seed, uid), uid))
        .collect();
    order.sort_unstable();
    let mut seen = BTreeSet::new();
    order.retain(|&(_, _, uid)| seen.insert(uid));

    // 2. Each miner to the least loaded sliver: lowest total throughput, then fewest miners,
    //    then lowest rotated index. A min-heap of `(load, miners, rotated index, sliver)`;
    //    loads are summed in u128 so that they never saturate.
    let rotation = u16::from(seed[0]) % num_slivers;
    let mut heap: BinaryHeap<Reverse<(u128, u32, u16, SliverIndex)>> = (0..num_slivers)
        .map(|sliver| {
            let rotated =
                u32::from(sliver).saturating_add(u32::from(rotation)) % u32::from(num_slivers);
            // `rotated < num_slivers`, so it always fits.
            Reverse((0, 0, u16::try_from(rotated).unwrap_or(sliver), sliver))
        })
        .collect();

    let mut out = Vec::with_capacity(order.len());
    for (Reverse(throughput), _, uid) in order {
        let Some(Reverse((load, count, rotated, sliver))) = heap.pop() else { break };
        out.push((uid, sliver, throughput));
        heap.push(Reverse((
            load.saturating_add(u128::from(throughput)),
            count.saturating_add(1),
            rotated,
            sliver,
        )));
    }
    out.sort_unstable_by_key(|&(uid, _, _)| uid);
    out
}

/// `blake2_256(seed ++ uid.to_le_bytes())`: the order of miners of equal throughput.
fn tie_break(seed: &[u8; 32], uid: Uid) -> [u8; 32] {
    let mut input = [0u8; 34];
    input[..32].copy_from_slice(seed);
    input[32..].copy_from_slice(&uid.to_le_bytes());
    blake2_256(&input)
}
