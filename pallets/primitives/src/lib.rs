//! # sliver-primitives
//!
//! The vocabulary Sliver's pallets share, so that each pallet stays small and depends on the
//! others only through traits wired up in the runtime:
//!
//! - [`Registry`] (implemented by the registry pallet): who holds which uid, in which role,
//!   with which declared throughput and validator stake.
//! - [`EpochClock`] (implemented by the clock pallet): the current epoch and phase, and each
//!   miner's sliver assignment.
//! - [`OnUidReleased`] (implemented by pallets with per-uid state, called by the registry when a
//!   slot is freed): a new holder of the uid starts clean.
//! - [`OnEpochChange`] (implemented by the rewards pallet, called by the clock at every epoch
//!   boundary): settlement.
//! - [`MinerScores`] (implemented by the rewards pallet, read by the registry to pick which
//!   miner a newcomer replaces when all miner slots are full).
//! - [`SliverApi`]: the runtime API that tells off-chain programs the epoch, phase and
//!   assignment without decoding storage.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

use alloc::vec::Vec;
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::weights::Weight;
use scale_info::TypeInfo;

/// Index of a registration slot. Miners and validators share one uid space.
pub type Uid = u16;
/// Index of an epoch, counted from genesis.
pub type EpochIndex = u32;
/// Index of a sliver (pipeline stage) within a training run: 0 owns the embeddings, the last
/// owns the head and the loss.
pub type SliverIndex = u16;
/// Identifier of a training run.
pub type RunId = u32;
/// Stake and balances as plain numbers in the pallets' maths.
pub type Stake = u128;

/// What a registrant does in the network.
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
)]
pub enum Role {
    /// Trains a sliver of the model.
    Miner,
    /// Audits miners and sets weights.
    Validator,
}

/// The phases of an epoch, in order. Settlement happens at the boundary after `Reveal`.
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
)]
pub enum Phase {
    /// Miners train; validators audit.
    Train,
    /// Validators commit the hash of their weights.
    Commit,
    /// Validators reveal their weights.
    Reveal,
}

/// Where the chain is in its epoch, as the runtime API reports it.
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
)]
pub struct EpochInfo<BlockNumber> {
    /// The current epoch.
    pub epoch: EpochIndex,
    /// The current phase.
    pub phase: Phase,
    /// First block of the current epoch.
    pub epoch_start: BlockNumber,
    /// First block of the next phase (or of the next epoch, in `Reveal`).
    pub phase_end: BlockNumber,
    /// First block of the next epoch.
    pub epoch_end: BlockNumber,
}

/// Read access to the registry.
pub trait Registry<AccountId> {
    /// The uid `who` holds, if registered.
    fn uid_of(who: &AccountId) -> Option<Uid>;
    /// The account holding `uid`.
    fn account_of(uid: Uid) -> Option<AccountId>;
    /// The role of `uid`.
    fn role_of(uid: Uid) -> Option<Role>;
    /// Registered miners as `(uid, declared throughput in tokens per second)`, by uid.
    fn miners() -> Vec<(Uid, u64)>;
    /// Registered validators as `(uid, active stake)`, by uid.
    fn validators() -> Vec<(Uid, Stake)>;
    /// The epoch in which the current holder of `uid` registered (`None` if unknown).
    fn registered_at(uid: Uid) -> Option<EpochIndex>;
}

/// Read access to the epoch clock.
pub trait EpochClock {
    /// The current epoch.
    fn current_epoch() -> EpochIndex;
    /// The current phase.
    fn current_phase() -> Phase;
    /// The sliver `uid` trains in the current epoch, if assigned.
    fn sliver_of(uid: Uid) -> Option<SliverIndex>;
}

/// Called when a uid is freed (deregistration or replacement), before anyone can take it.
pub trait OnUidReleased {
    /// Drop all state kept for `uid`. Returns the weight used.
    fn on_uid_released(uid: Uid) -> Weight;
    /// An upper bound of the weight of [`OnUidReleased::on_uid_released`], which callers add to
    /// the pre-dispatch weight of calls that free a uid.
    fn max_weight() -> Weight;
}

/// Called by the clock at each epoch boundary, after the new epoch's assignment is made.
pub trait OnEpochChange {
    /// `ended` has just finished; `started` begins now. Returns the weight used.
    fn on_epoch_change(ended: EpochIndex, started: EpochIndex) -> Weight;
}

/// Recent performance of miners, for slot replacement.
pub trait MinerScores {
    /// A score of `uid`'s recent work; higher is better. Unknown uids score 0.
    fn score(uid: Uid) -> u64;
}

#[impl_trait_for_tuples::impl_for_tuples(8)]
impl OnUidReleased for Tuple {
    fn on_uid_released(uid: Uid) -> Weight {
        let mut weight = Weight::zero();
        for_tuples!( #( weight = weight.saturating_add(Tuple::on_uid_released(uid)); )* );
        weight
    }

    fn max_weight() -> Weight {
        let mut weight = Weight::zero();
        for_tuples!( #( weight = weight.saturating_add(Tuple::max_weight()); )* );
        weight
    }
}

#[impl_trait_for_tuples::impl_for_tuples(8)]
impl OnEpochChange for Tuple {
    fn on_epoch_change(ended: EpochIndex, started: EpochIndex) -> Weight {
        let mut weight = Weight::zero();
        for_tuples!( #( weight = weight.saturating_add(Tuple::on_epoch_change(ended, started)); )* );
        weight
    }
}

impl MinerScores for () {
    fn score(_uid: Uid) -> u64 {
        0
    }
}

sp_api::decl_runtime_apis! {
    /// What off-chain Sliver programs ask the runtime.
    pub trait SliverApi<BlockNumber> where BlockNumber: codec::Codec {
        /// The current epoch, phase and their boundaries.
        fn epoch_info() -> EpochInfo<BlockNumber>;
        /// The sliver assignment of the current epoch as `(uid, sliver)`.
        fn assignments() -> Vec<(Uid, SliverIndex)>;
    }
}
