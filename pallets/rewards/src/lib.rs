//! # Sliver rewards pallet
//!
//! Sliver's payout trigger. Validators audit the miners that train the slivers (pipeline stages)
//! of a model and, once per epoch, score them with *weights*; this pallet turns those weights
//! into payments through Yuma-style stake-weighted consensus, and records the commitments miners
//! publish to the weights of the model they train.
//!
//! ## Overview
//!
//! - Commit-reveal of validator weights. In the epoch's `Commit` phase a validator submits
//!   [`Pallet::commit_weights`] with the hash [`Pallet::commit_hash`] of its weights and a secret
//!   salt; in the `Reveal` phase it submits the weights themselves with
//!   [`Pallet::reveal_weights`]. Hiding the weights until every validator has committed stops
//!   validators from copying each other's weights (weight copying earns bonds without doing the
//!   audit).
//! - Settlement. At every epoch boundary the clock pallet calls
//!   [`OnEpochChange::on_epoch_change`]; the pallet runs consensus on the weights revealed for the
//!   epoch that ended, updates the validators' bonds, and pays miners and validators from the pot
//!   account ([`Pallet::pot_account`]). The epoch's commits and reveals are then deleted.
//! - Weight commitments. After every merge a miner publishes the hash and size of its sliver's
//!   weights ([`Pallet::publish_weight_commitment`]) so that validators and users can fetch the
//!   model and check they got the right bytes.
//!
//! ## Consensus
//!
//! The maths lives in the pure module [`consensus`] (no storage, no floats, fixed point with
//! 10^18 accuracy). For the validators `i` that revealed, with stake shares `S_i`, and their
//! normalised weights `W_ij` over miners `j`:
//!
//! 1. consensus `C_j` = stake-weighted median of `W_ij` (the largest `w` such that validators with
//!    `W_ij >= w` hold at least half of the stake), so a minority cannot raise a miner;
//! 2. clipped weights `W'_ij = min(W_ij, C_j)`, ranks `R_j = sum_i S_i W'_ij`, miner incentive
//!    `I_j = R_j / sum_k R_k`;
//! 3. bonds `B_ij = alpha dB_ij + (1 - alpha) B_ij(old)` with `dB_ij = S_i W'_ij / R_j`
//!    (`alpha` = [`Config::BondsAlpha`]), kept in [`Bonds`] across epochs: validators that agree
//!    with consensus early accumulate bonds and earn more;
//! 4. validator dividends `D_i = sum_j B_ij I_j`, normalised to sum 1.
//!
//! The epoch's emission `E = min(EmissionPerEpoch, what the pot can pay while staying alive)` is
//! split into a miner pot `MinerShare * E` paid in proportion to `I_j` and a validator pot paid in
//! proportion to `D_i`. Each payout is rounded down; the rounding dust (less than one unit per
//! recipient) stays in the pot. Payouts are transfers, so no currency is ever created or burnt.
//! Each miner's last incentive is kept in [`LastIncentive`] and exposed through
//! [`MinerScores`], which the registry uses to choose which miner a newcomer replaces.
//!
//! ## Slot reuse
//!
//! Uids are recycled by the registry. [`OnUidReleased::on_uid_released`] deletes every trace of a
//! released uid (its bonds as validator and as miner, its pending commits and reveals, its
//! weights in other validators' pending reveals, its last incentive and its weight commitment),
//! so that a new holder of the uid inherits nothing.
//!
//! ## How it fits with the other pallets
//!
//! The pallet sees the others only through the traits of `sliver-primitives`:
//! [`Config::Registry`] (who holds which uid, roles, stakes), [`Config::Clock`] (epoch and phase);
//! it implements [`OnEpochChange`] (wire it into the clock), [`OnUidReleased`] and [`MinerScores`]
//! (wire them into the registry).

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod consensus;
pub mod weights;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;

use alloc::{
    collections::{BTreeMap, BTreeSet},
    vec::Vec,
};
use codec::{Decode, Encode, MaxEncodedLen};
use frame_support::{
    pallet_prelude::*,
    traits::{
        fungible::{Inspect, Mutate},
        tokens::{Fortitude, Preservation},
    },
    PalletId,
};
use frame_system::pallet_prelude::BlockNumberFor;
use scale_info::TypeInfo;
use sliver_primitives::{
    EpochClock, EpochIndex, MinerScores, OnEpochChange, OnUidReleased, Phase, Registry, Role, Uid,
};
use sp_core::H256;
use sp_runtime::{
    traits::{AccountIdConversion, Saturating, Zero},
    Perbill, Perquintill, SaturatedConversion,
};

pub use pallet::*;
pub use weights::WeightInfo;

/// Log target of this pallet.
const LOG_TARGET: &str = "runtime::sliver-rewards";

/// The balance type of [`Config::Currency`].
pub type BalanceOf<T> =
    <<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

/// A miner's public commitment to the weights of its sliver.
#[derive(Encode, Decode, MaxEncodedLen, TypeInfo, Clone, PartialEq, Eq, Debug)]
pub struct Commitment<BlockNumber> {
    /// Epoch in which it was published.
    pub epoch: EpochIndex,
    /// Hash of the weight file (BLAKE3 or any 32-byte hash the network agrees on).
    pub hash: H256,
    /// Size of the weight file in bytes.
    pub size: u64,
    /// Training step the weights are from; never decreases for a uid.
    pub step: u64,
    /// Block in which it was published.
    pub block: BlockNumber,
}

/// Sets up the registry and clock for benchmarks; the runtime implements it on top of its real
/// registry and clock pallets, the mock on top of its test doubles.
#[cfg(feature = "runtime-benchmarks")]
pub trait BenchmarkHelper<AccountId> {
    /// Registers `uid` as a validator with `stake` and returns its account.
    fn register_validator(uid: Uid, stake: sliver_primitives::Stake) -> AccountId;
    /// Registers `uid` as a miner and returns its account.
    fn register_miner(uid: Uid) -> AccountId;
    /// Moves the clock to `phase` of the current epoch.
    fn set_phase(phase: Phase);
    /// Moves the clock to `epoch`.
    fn set_epoch(epoch: EpochIndex);
}

#[frame_support::pallet]
pub mod pallet {
    use super::*;
    use frame_system::pallet_prelude::*;

    /// The in-code storage version.
    const STORAGE_VERSION: StorageVersion = StorageVersion::new(0);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    /// Configuration of the rewards pallet.
    #[pallet::config]
    pub trait Config: frame_system::Config {
        /// The overarching event type.
        #[allow(deprecated)]
        type RuntimeEvent: From<Event<Self>> + IsType<<Self as frame_system::Config>::RuntimeEvent>;

        /// The currency payouts are made in; the pot holds it.
        type Currency: Inspect<Self::AccountId> + Mutate<Self::AccountId>;

        /// The registry: uids, roles, accounts and validator stakes.
        type Registry: Registry<Self::AccountId>;

        /// The epoch clock: current epoch and phase.
        type Clock: EpochClock;

        /// The pallet's id, from which the pot account is derived.
        #[pallet::constant]
        type PalletId: Get<PalletId>;

        /// The most that is paid out per epoch (less if the pot holds less).
        #[pallet::constant]
        type EmissionPerEpoch: Get<BalanceOf<Self>>;

        /// The miners' share of each epoch's emission; validators get the rest.
        #[pallet::constant]
        type MinerShare: Get<Perbill>;

        /// Weight of an epoch's bond delta in the bonds' exponential moving average.
        #[pallet::constant]
        type BondsAlpha: Get<Perbill>;

        /// The most miners a validator can weight, and the most miners settled per epoch. Must be
        /// at least the registry's miner capacity.
        #[pallet::constant]
        type MaxMiners: Get<u32>;

        /// The most validators settled per epoch. Must be at least the registry's validator
        /// capacity.
        #[pallet::constant]
        type MaxValidators: Get<u32>;

        /// Weight information for the calls and hooks of this pallet.
        type WeightInfo: WeightInfo;

        /// Sets up the registry and clock for benchmarks.
        #[cfg(feature = "runtime-benchmarks")]
        type BenchmarkHelper: BenchmarkHelper<Self::AccountId>;
    }

    /// Validators' weight commitments: `(epoch, validator uid) -> commit_hash(...)`.
    ///
    /// Entries live until the epoch is settled.
    #[pallet::storage]
    pub type WeightCommits<T: Config> =
        StorageDoubleMap<_, Twox64Concat, EpochIndex, Twox64Concat, Uid, H256, OptionQuery>;

    /// Validators' revealed weights: `(epoch, validator uid) -> [(miner uid, raw weight)]`.
    ///
    /// Entries live until the epoch is settled; every entry has a matching [`WeightCommits`].
    #[pallet::storage]
    pub type Reveals<T: Config> = StorageDoubleMap<
        _,
        Twox64Concat,
        EpochIndex,
        Twox64Concat,
        Uid,
        BoundedVec<(Uid, u16), T::MaxMiners>,
        OptionQuery,
    >;

    /// Bonds `B_ij`: `(validator uid, miner uid) -> bond in [0, 1]`. Missing entries are 0.
    ///
    /// At most one entry per registered validator and registered miner.
    #[pallet::storage]
    pub type Bonds<T: Config> =
        StorageDoubleMap<_, Twox64Concat, Uid, Twox64Concat, Uid, Perquintill, OptionQuery>;

    /// Each miner's incentive share in the last epoch that reached consensus (only non-zero
    /// shares are stored).
    #[pallet::storage]
    pub type LastIncentive<T: Config> = StorageMap<_, Twox64Concat, Uid, Perbill, OptionQuery>;

    /// Each miner's latest commitment to its sliver's weights.
    #[pallet::storage]
    pub type WeightCommitments<T: Config> =
        StorageMap<_, Twox64Concat, Uid, Commitment<BlockNumberFor<T>>, OptionQuery>;

    /// Genesis configuration.
    #[pallet::genesis_config]
    #[derive(frame_support::DefaultNoBound)]
    pub struct GenesisConfig<T: Config> {
        /// Minted into the pot at genesis so that payouts can start (at least the existential
        /// deposit, or zero).
        pub pot_endowment: BalanceOf<T>,
    }

    #[pallet::genesis_build]
    impl<T: Config> BuildGenesisConfig for GenesisConfig<T> {
        fn build(&self) {
            if !self.pot_endowment.is_zero() {
                T::Currency::mint_into(&Pallet::<T>::pot_account(), self.pot_endowment)
                    .expect("the pot endowment must be at least the existential deposit");
            }
        }
    }

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// A validator committed to its weights for an epoch.
        WeightsCommitted {
            /// The validator.
            uid: Uid,
            /// The epoch.
            epoch: EpochIndex,
            /// The commitment.
            hash: H256,
        },
        /// A validator revealed its weights for an epoch.
        WeightsRevealed {
            /// The validator.
            uid: Uid,
            /// The epoch.
            epoch: EpochIndex,
        },
        /// A miner published a commitment to its sliver's weights.
        WeightCommitmentPublished {
            /// The miner.
            uid: Uid,
            /// The epoch it was published in.
            epoch: EpochIndex,
            /// Hash of the weight file.
            hash: H256,
            /// Size of the weight file in bytes.
            size: u64,
            /// Training step of the weights.
            step: u64,
        },
        /// A miner was paid its incentive.
        MinerPaid {
            /// The miner.
            uid: Uid,
            /// The account paid.
            who: T::AccountId,
            /// The amount paid.
            amount: BalanceOf<T>,
        },
        /// A validator was paid its dividend.
        ValidatorPaid {
            /// The validator.
            uid: Uid,
            /// The account paid.
            who: T::AccountId,
            /// The amount paid.
            amount: BalanceOf<T>,
        },
        /// A payout could not be made (no account for the uid, or the transfer failed, e.g. below
        /// the existential deposit of a new account); the amount stays in the pot as dust.
        PayoutFailed {
            /// The uid that was owed.
            uid: Uid,
            /// The amount owed.
            amount: BalanceOf<T>,
        },
        /// An epoch was settled.
        EpochSettled {
            /// The epoch.
            epoch: EpochIndex,
            /// The amount allotted to this epoch's payouts.
            emission: BalanceOf<T>,
            /// Paid to miners.
            paid_miners: BalanceOf<T>,
            /// Paid to validators.
            paid_validators: BalanceOf<T>,
            /// `emission - paid_miners - paid_validators`: rounding dust (less than one unit per
            /// recipient) plus any failed payout. It stays in the pot.
            dust: BalanceOf<T>,
        },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// The caller is not a registered validator.
        NotValidator,
        /// The caller is not a registered miner.
        NotMiner,
        /// The call is not allowed in the current phase of the epoch.
        WrongPhase,
        /// The validator already committed weights this epoch.
        AlreadyCommitted,
        /// The validator has not committed weights this epoch.
        NoCommit,
        /// The validator already revealed its weights this epoch.
        AlreadyRevealed,
        /// The revealed weights and salt do not hash to the commitment.
        CommitMismatch,
        /// `uids` and `weights` have different lengths.
        LengthMismatch,
        /// No weights were given.
        EmptyWeights,
        /// A miner uid appears more than once.
        DuplicateUid,
        /// Every weight is zero.
        ZeroWeights,
        /// A weight commitment must have a non-zero size.
        ZeroSize,
        /// A weight commitment's step is lower than the uid's previous one.
        StaleCommitment,
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        fn integrity_test() {
            assert!(T::MaxMiners::get() > 0, "MaxMiners must be positive");
            assert!(T::MaxValidators::get() > 0, "MaxValidators must be positive");
            assert!(
                T::MaxMiners::get().saturating_add(T::MaxValidators::get())
                    <= u32::from(Uid::MAX).saturating_add(1),
                "MaxMiners + MaxValidators must fit in the uid space"
            );
        }

        #[cfg(feature = "try-runtime")]
        fn try_state(_n: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
            Self::do_try_state()
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Commit to this epoch's weights: `hash` is [`Pallet::commit_hash`] of the weights that
        /// will be revealed.
        ///
        /// The origin must be a registered validator, in the `Commit` phase, once per epoch.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::commit_weights())]
        pub fn commit_weights(origin: OriginFor<T>, hash: H256) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let uid = Self::uid_with_role(&who, Role::Validator).ok_or(Error::<T>::NotValidator)?;
            ensure!(T::Clock::current_phase() == Phase::Commit, Error::<T>::WrongPhase);
            let epoch = T::Clock::current_epoch();
            ensure!(!WeightCommits::<T>::contains_key(epoch, uid), Error::<T>::AlreadyCommitted);

            WeightCommits::<T>::insert(epoch, uid, hash);

            Self::deposit_event(Event::WeightsCommitted { uid, epoch, hash });
            Ok(())
        }

        /// Reveal this epoch's weights: `weights[k]` is the weight of miner `uids[k]`. Only
        /// relative sizes matter (they are normalised to sum 1).
        ///
        /// The origin must be a registered validator that committed this epoch, in the `Reveal`
        /// phase, once per epoch. The uids must be distinct registered miners, the weights not
        /// all zero, and `commit_hash(origin, epoch, uids, weights, salt)` must equal the
        /// commitment.
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::reveal_weights(uids.len() as u32))]
        pub fn reveal_weights(
            origin: OriginFor<T>,
            uids: BoundedVec<Uid, T::MaxMiners>,
            weights: BoundedVec<u16, T::MaxMiners>,
            salt: [u8; 32],
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let uid = Self::uid_with_role(&who, Role::Validator).ok_or(Error::<T>::NotValidator)?;
            ensure!(T::Clock::current_phase() == Phase::Reveal, Error::<T>::WrongPhase);
            let epoch = T::Clock::current_epoch();
            let committed = WeightCommits::<T>::get(epoch, uid).ok_or(Error::<T>::NoCommit)?;
            ensure!(!Reveals::<T>::contains_key(epoch, uid), Error::<T>::AlreadyRevealed);
            ensure!(
                Self::commit_hash(&who, epoch, &uids, &weights, &salt) == committed,
                Error::<T>::CommitMismatch
            );
            ensure!(uids.len() == weights.len(), Error::<T>::LengthMismatch);
            ensure!(!uids.is_empty(), Error::<T>::EmptyWeights);
            let mut distinct = uids.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            ensure!(distinct.len() == uids.len(), Error::<T>::DuplicateUid);
            ensure!(weights.iter().any(|w| *w > 0), Error::<T>::ZeroWeights);

            // The committed list cannot change, but the miners in it can: weights of uids that
            // are no longer miners (a miner that left after the commit) are dropped rather than
            // failing the reveal, which would let any miner void the epoch by deregistering.
            // A miner that registered this epoch holds a uid whose previous holder did the work
            // the validator committed to (or no work at all: miners are assigned at the next
            // boundary); its weight is dropped too, so a uid taken over mid-epoch earns nothing.
            let entries: Vec<(Uid, u16)> = uids
                .into_iter()
                .zip(weights)
                .filter(|(m, _)| T::Registry::role_of(*m) == Some(Role::Miner))
                .filter(|(m, _)| T::Registry::registered_at(*m).is_none_or(|at| at < epoch))
                .collect();
            if entries.iter().any(|(_, w)| *w > 0) {
                Reveals::<T>::insert(epoch, uid, BoundedVec::truncate_from(entries));
            }

            Self::deposit_event(Event::WeightsRevealed { uid, epoch });
            Ok(())
        }

        /// Publish a commitment to the weights of the caller's sliver after a merge: the weight
        /// file's `hash` and `size` in bytes, at training `step`.
        ///
        /// The origin must be a registered miner; `size` must be positive and `step` at least the
        /// step of the caller's previous commitment.
        #[pallet::call_index(2)]
        #[pallet::weight(T::WeightInfo::publish_weight_commitment())]
        pub fn publish_weight_commitment(
            origin: OriginFor<T>,
            hash: H256,
            size: u64,
            step: u64,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let uid = Self::uid_with_role(&who, Role::Miner).ok_or(Error::<T>::NotMiner)?;
            ensure!(size > 0, Error::<T>::ZeroSize);
            ensure!(
                WeightCommitments::<T>::get(uid).is_none_or(|previous| step >= previous.step),
                Error::<T>::StaleCommitment
            );

            let epoch = T::Clock::current_epoch();
            let block = frame_system::Pallet::<T>::block_number();
            WeightCommitments::<T>::insert(uid, Commitment { epoch, hash, size, step, block });

            Self::deposit_event(Event::WeightCommitmentPublished { uid, epoch, hash, size, step });
            Ok(())
        }
    }
}

impl<T: Config> Pallet<T> {
    /// The account holding the pot payouts are made from.
    pub fn pot_account() -> T::AccountId {
        T::PalletId::get().into_account_truncating()
    }

    /// The commitment a validator submits to [`Pallet::commit_weights`]:
    /// `blake2_256(SCALE((who, epoch, uids, weights, salt)))`, where `uids` and `weights` are
    /// encoded as vectors (compact length prefix) and `salt` as 32 raw bytes.
    pub fn commit_hash(
        who: &T::AccountId,
        epoch: EpochIndex,
        uids: &[Uid],
        weights: &[u16],
        salt: &[u8; 32],
    ) -> H256 {
        (who, epoch, uids, weights, salt)
            .using_encoded(|bytes| sp_io::hashing::blake2_256(bytes))
            .into()
    }

    /// The uid `who` holds, if it holds one in `role`.
    fn uid_with_role(who: &T::AccountId, role: Role) -> Option<Uid> {
        T::Registry::uid_of(who).filter(|uid| T::Registry::role_of(*uid) == Some(role))
    }

    /// Settles `epoch`: consensus, bonds, payouts, then deletes the epoch's commits and reveals.
    pub(crate) fn settle(epoch: EpochIndex) -> Weight {
        let max_validators = T::MaxValidators::get();
        let max_miners = T::MaxMiners::get() as usize;

        // Registered validators by uid (at most `MaxValidators`) and registered miners.
        let mut validators = T::Registry::validators();
        validators.sort_unstable_by_key(|(uid, _)| *uid);
        validators.dedup_by_key(|(uid, _)| *uid);
        validators.truncate(max_validators as usize);
        let mut miners: Vec<Uid> = T::Registry::miners().into_iter().map(|(uid, _)| uid).collect();
        miners.sort_unstable();
        miners.dedup();
        miners.truncate(max_miners);

        let mut inputs: Vec<consensus::ValidatorWeights> = validators
            .iter()
            .map(|(uid, stake)| consensus::ValidatorWeights {
                uid: *uid,
                stake: *stake,
                weights: Reveals::<T>::get(epoch, uid)
                    .map(|r| {
                        r.into_iter().filter(|(m, _)| miners.binary_search(m).is_ok()).collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        // Quorum: consensus needs the validators holding at least half of all registered
        // validator stake to have revealed. Otherwise one small validator could decide an epoch
        // in which the others are silent; the epoch then pays nothing and bonds stay as they are.
        let total_stake = inputs.iter().fold(0u128, |acc, v| acc.saturating_add(v.stake));
        let revealed_stake = inputs
            .iter()
            .filter(|v| !v.weights.is_empty())
            .fold(0u128, |acc, v| acc.saturating_add(v.stake));
        if revealed_stake.saturating_mul(2) < total_stake {
            inputs.iter_mut().for_each(|v| v.weights.clear());
        }
        let settled_miners = consensus::miner_set(&inputs);
        let weight = T::WeightInfo::settle(validators.len() as u32, settled_miners.len() as u32);

        let mut old_bonds = BTreeMap::new();
        for (validator, _) in &validators {
            for miner in &settled_miners {
                if let Some(bond) = Bonds::<T>::get(validator, miner) {
                    old_bonds.insert((*validator, *miner), bond);
                }
            }
        }
        let outcome = consensus::compute(&inputs, &old_bonds, T::BondsAlpha::get());

        for (validator, miner, bond) in &outcome.bonds {
            if bond.is_zero() {
                Bonds::<T>::remove(validator, miner);
            } else {
                Bonds::<T>::insert(validator, miner, bond);
            }
        }

        let (emission, paid_miners, paid_validators) = if outcome.rank_total == 0 {
            (Zero::zero(), Zero::zero(), Zero::zero())
        } else {
            // Scores for slot replacement.
            let _ = LastIncentive::<T>::clear(T::MaxMiners::get(), None);
            for (miner, _) in &outcome.ranks {
                let share = outcome.incentive(*miner);
                if !share.is_zero() {
                    LastIncentive::<T>::insert(miner, share);
                }
            }
            Self::pay_out(&outcome)
        };
        let dust = emission.saturating_sub(paid_miners).saturating_sub(paid_validators);

        let _ = WeightCommits::<T>::clear_prefix(epoch, max_validators, None);
        let _ = Reveals::<T>::clear_prefix(epoch, max_validators, None);

        Self::deposit_event(Event::EpochSettled {
            epoch,
            emission,
            paid_miners,
            paid_validators,
            dust,
        });
        weight
    }

    /// Pays the epoch's emission out of the pot according to `outcome`. Returns
    /// `(emission, paid to miners, paid to validators)`.
    fn pay_out(outcome: &consensus::Outcome) -> (BalanceOf<T>, BalanceOf<T>, BalanceOf<T>) {
        let pot = Self::pot_account();
        let available =
            T::Currency::reducible_balance(&pot, Preservation::Preserve, Fortitude::Polite);
        let budget = T::EmissionPerEpoch::get().min(available);
        let miner_pot = T::MinerShare::get().mul_floor(budget);
        // Without any dividend (e.g. `BondsAlpha` = 0) the validator pot is not emitted.
        let validator_pot = if outcome.dividend_total == 0 {
            Zero::zero()
        } else {
            budget.saturating_sub(miner_pot)
        };
        let emission = miner_pot.saturating_add(validator_pot);

        let (miner_payouts, _) =
            consensus::apportion(miner_pot.saturated_into::<u128>(), &outcome.ranks);
        let (validator_payouts, _) =
            consensus::apportion(validator_pot.saturated_into::<u128>(), &outcome.dividends);

        let mut paid_miners: BalanceOf<T> = Zero::zero();
        for (uid, amount) in miner_payouts {
            paid_miners = paid_miners.saturating_add(Self::pay(&pot, uid, amount, Role::Miner));
        }
        let mut paid_validators: BalanceOf<T> = Zero::zero();
        for (uid, amount) in validator_payouts {
            paid_validators =
                paid_validators.saturating_add(Self::pay(&pot, uid, amount, Role::Validator));
        }
        (emission, paid_miners, paid_validators)
    }

    /// Transfers `amount` from the pot to `uid`'s account; returns what was paid.
    fn pay(pot: &T::AccountId, uid: Uid, amount: u128, role: Role) -> BalanceOf<T> {
        let amount: BalanceOf<T> = amount.saturated_into();
        if amount.is_zero() {
            return amount;
        }
        let Some(who) = T::Registry::account_of(uid) else {
            log::warn!(target: LOG_TARGET, "no account for uid {uid}; payout kept in the pot");
            Self::deposit_event(Event::PayoutFailed { uid, amount });
            return Zero::zero();
        };
        match T::Currency::transfer(pot, &who, amount, Preservation::Preserve) {
            Ok(_) => {
                let event = match role {
                    Role::Miner => Event::MinerPaid { uid, who, amount },
                    Role::Validator => Event::ValidatorPaid { uid, who, amount },
                };
                Self::deposit_event(event);
                amount
            }
            Err(error) => {
                log::warn!(target: LOG_TARGET, "payout to uid {uid} failed: {error:?}");
                Self::deposit_event(Event::PayoutFailed { uid, amount });
                Zero::zero()
            }
        }
    }

    /// Deletes every trace of `uid`.
    pub(crate) fn clear_uid(uid: Uid) -> Weight {
        let max_validators = T::MaxValidators::get();

        // Bonds as validator (its row) and as miner (its column).
        let _ = Bonds::<T>::clear_prefix(uid, T::MaxMiners::get(), None);
        for (validator, _) in T::Registry::validators().into_iter().take(max_validators as usize) {
            Bonds::<T>::remove(validator, uid);
        }

        // Pending commits and reveals: its own, and its weights in other validators' reveals.
        let current = T::Clock::current_epoch();
        let epochs: BTreeSet<EpochIndex> = [current.saturating_sub(1), current].into();
        for epoch in epochs {
            WeightCommits::<T>::remove(epoch, uid);
            Reveals::<T>::remove(epoch, uid);
            let affected: Vec<_> = Reveals::<T>::iter_prefix(epoch)
                .take(max_validators as usize)
                .filter(|(_, reveal)| reveal.iter().any(|(miner, _)| *miner == uid))
                .collect();
            for (validator, mut reveal) in affected {
                reveal.retain(|(miner, _)| *miner != uid);
                Reveals::<T>::insert(epoch, validator, reveal);
            }
        }

        LastIncentive::<T>::remove(uid);
        WeightCommitments::<T>::remove(uid);
        T::WeightInfo::on_uid_released()
    }

    /// Checks the pallet's invariants:
    /// - no commits or reveals for epochs older than the current one - 1;
    /// - every reveal has a matching commit;
    /// - every bond is in `[0, 1]` and links a registered validator to a registered miner;
    /// - last incentives and weight commitments belong to registered miners.
    #[cfg(any(test, feature = "try-runtime"))]
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        let oldest = T::Clock::current_epoch().saturating_sub(1);
        for (epoch, _) in WeightCommits::<T>::iter_keys() {
            ensure!(epoch >= oldest, "commit for an epoch that should have been settled");
        }
        for (epoch, validator, _) in Reveals::<T>::iter() {
            ensure!(epoch >= oldest, "reveal for an epoch that should have been settled");
            ensure!(
                WeightCommits::<T>::contains_key(epoch, validator),
                "reveal without a matching commit"
            );
        }
        for (validator, miner, bond) in Bonds::<T>::iter() {
            ensure!(
                bond.deconstruct() <= <Perquintill as sp_runtime::PerThing>::ACCURACY,
                "bond above 1"
            );
            ensure!(
                T::Registry::role_of(validator) == Some(Role::Validator),
                "bond row of a uid that is not a validator"
            );
            ensure!(
                T::Registry::role_of(miner) == Some(Role::Miner),
                "bond column of a uid that is not a miner"
            );
        }
        for miner in LastIncentive::<T>::iter_keys() {
            ensure!(
                T::Registry::role_of(miner) == Some(Role::Miner),
                "last incentive of a uid that is not a miner"
            );
        }
        for miner in WeightCommitments::<T>::iter_keys() {
            ensure!(
                T::Registry::role_of(miner) == Some(Role::Miner),
                "weight commitment of a uid that is not a miner"
            );
        }
        Ok(())
    }
}

impl<T: Config> OnEpochChange for Pallet<T> {
    /// Settles `ended`.
    fn on_epoch_change(ended: EpochIndex, _started: EpochIndex) -> Weight {
        Self::settle(ended)
    }
}

impl<T: Config> OnUidReleased for Pallet<T> {
    /// Deletes every trace of `uid`, so that its next holder starts clean.
    fn on_uid_released(uid: Uid) -> Weight {
        Self::clear_uid(uid)
    }

    fn max_weight() -> Weight {
        T::WeightInfo::on_uid_released()
    }
}

impl<T: Config> MinerScores for Pallet<T> {
    /// The miner's incentive share in the last settled epoch, in parts per billion.
    fn score(uid: Uid) -> u64 {
        LastIncentive::<T>::get(uid).map_or(0, |share| u64::from(share.deconstruct()))
    }
}
