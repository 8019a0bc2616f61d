//! # Sliver registry pallet
//!
//! The identity registry of Sliver: who takes part in training, in which role, under which P2P
//! identity, reachable where, with which hardware, and with how much at stake.
//!
//! ## Overview
//!
//! Every participant holds one *uid* ([`Uid`]), a slot index shared by both roles:
//!
//! - **Miners** train a sliver (pipeline stage) of the model. At most [`Config::MaxMiners`].
//! - **Validators** audit miners and set weights. At most [`Config::MaxValidators`]. They bond
//!   stake ([`Pallet::bond`]) which the rewards pallet uses to weigh their opinions.
//!
//! The uid space is `0..MaxMiners + MaxValidators`; a registrant gets the lowest free uid.
//!
//! The other Sliver pallets see the registry only through [`sliver_primitives::Registry`],
//! which this pallet implements. The registry in turn reads the epoch from
//! [`Config::Clock`] (the clock pallet), miners' recent scores from [`Config::Scores`] (the
//! rewards pallet) and tells [`Config::OnUidReleased`] (the rewards pallet) whenever a uid is
//! freed.
//!
//! ## Registration
//!
//! [`Pallet::register`] takes the registrant's libp2p ed25519 public key (`peer_key`) and a
//! signature by that key over [`Pallet::registration_message`]: the SCALE encoding of
//! `(b"sliver/register/v1", who, genesis_hash, nonce)`, where the context is the 18 raw bytes
//! of a fixed-size array (no length prefix), `who` the registering account, `genesis_hash` the
//! hash of block 0 and `nonce` the account's [`RegistrationNonce`]. The signature proves that
//! the registrant controls the P2P identity it claims, binds it to one account on one chain,
//! and cannot be replayed: the nonce moves on at every successful registration. Keys of small
//! order ([`SMALL_ORDER_KEYS`]), for which any signature verifies, are rejected. The PeerId
//! other nodes see is [`Pallet::peer_id_bytes`] of the key. A peer key is held by one uid at
//! most and an account holds one uid at most.
//!
//! A registration deposit ([`Config::RegistrationDeposit`]) is put on hold
//! ([`HoldReason::RegistrationDeposit`]). Validator stake is held under
//! [`HoldReason::ValidatorStake`].
//!
//! ## Miner replacement
//!
//! When all miner slots are taken, a new miner replaces the miner with the lowest
//! [`sliver_primitives::MinerScores::score`] among those that are not immune (ties: the
//! earliest registration epoch, then the lowest uid). A miner registered in epoch `e` is
//! immune up to and including epoch `e + ImmunityEpochs`: its registration epoch and the
//! `ImmunityEpochs` whole epochs after it, so that it is scored at least once before it can be
//! pushed out. If every miner is immune, registration fails. Validator slots are never
//! replaced.
//!
//! ## Freeing a uid
//!
//! A uid is freed by [`Pallet::deregister`] or by a replacement. Both go through the same
//! path: the registration, the account's and the peer key's index entries are removed,
//! [`sliver_primitives::OnUidReleased::on_uid_released`] is called (so that the rewards pallet
//! drops weights, bonds, commitments and scores of the uid) *before* the uid can be handed out
//! again, and the deposit and any validator stake stay on hold but move to the account's
//! unlocking queue ([`Unlocking`]). A new holder of the uid therefore starts clean: no stake,
//! its own registration epoch, its own peer key.
//!
//! ## Unlocking
//!
//! [`Pallet::unbond`] and deregistration schedule funds for release `UnbondingEpochs` epochs
//! after the current one. Each [`UnlockChunk`] carries the deposit part and the stake part
//! separately so that every hold reason stays accounted for. Chunks with the same release epoch
//! merge; the queue holds at most [`Config::MaxUnlockingChunks`]. `unbond` fails on a full
//! queue; deregistration (which may be forced on a replaced miner) never does: it folds the
//! funds into the chunk released last and moves that chunk's release to the new epoch if later,
//! so funds are never released early. [`Pallet::withdraw_unbonded`] releases every matured
//! chunk, also after deregistration.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub use pallet::*;
pub use weights::WeightInfo;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
pub mod weights;

use alloc::vec::Vec;
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{
    traits::{fungible, Get},
    BoundedVec, CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound,
};
use scale_info::TypeInfo;
use sliver_primitives::{EpochIndex, Role};

/// The balance type of [`Config::Currency`].
pub type BalanceOf<T> =
    <<T as Config>::Currency as fungible::Inspect<<T as frame_system::Config>::AccountId>>::Balance;

/// One network address of a registrant (opaque bytes; the binary multiaddr encoding is
/// recommended), at most [`Config::MaxAddressLen`] bytes.
pub type AddressOf<T> = BoundedVec<u8, <T as Config>::MaxAddressLen>;

/// The addresses of a registrant, at most [`Config::MaxAddresses`].
pub type AddressesOf<T> = BoundedVec<AddressOf<T>, <T as Config>::MaxAddresses>;

/// The unlocking queue of an account.
pub type UnlockingQueueOf<T> =
    BoundedVec<UnlockChunk<BalanceOf<T>>, <T as Config>::MaxUnlockingChunks>;

/// The compute backend a registrant trains with.
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
pub enum Backend {
    /// Plain CPU.
    Cpu,
    /// NVIDIA CUDA.
    Cuda,
    /// Apple Metal.
    Metal,
    /// Vulkan.
    Vulkan,
    /// Anything else.
    Other,
}

/// The hardware a registrant declares.
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
pub struct HardwareProfile {
    /// The compute backend.
    pub backend: Backend,
    /// Accelerator (or system) memory in MiB.
    pub memory_mib: u32,
    /// Self-measured training throughput in tokens per second; in `1..=MaxThroughput`.
    pub throughput: u64,
}

/// What the registry keeps about a uid.
#[derive(
    Encode, Decode, MaxEncodedLen, TypeInfo, CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound(T: Config))]
pub struct Registration<T: Config> {
    /// The account holding the uid.
    pub account: T::AccountId,
    /// Miner or validator.
    pub role: Role,
    /// The libp2p ed25519 public key of the registrant's P2P identity.
    pub peer_key: [u8; 32],
    /// Where the registrant can be reached.
    pub addresses: AddressesOf<T>,
    /// The declared hardware.
    pub hardware: HardwareProfile,
    /// The epoch of registration.
    pub registered_at: EpochIndex,
    /// The registration deposit held (under [`HoldReason::RegistrationDeposit`]).
    pub deposit: BalanceOf<T>,
    /// The active validator stake held (under [`HoldReason::ValidatorStake`]); zero for miners.
    pub stake: BalanceOf<T>,
}

/// Funds on hold waiting for release, split by hold reason.
#[derive(Encode, Decode, MaxEncodedLen, TypeInfo, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct UnlockChunk<Balance> {
    /// Part held under [`HoldReason::RegistrationDeposit`].
    pub deposit: Balance,
    /// Part held under [`HoldReason::ValidatorStake`].
    pub stake: Balance,
    /// First epoch in which the chunk can be withdrawn.
    pub release_epoch: EpochIndex,
}

impl<Balance: sp_arithmetic::traits::Saturating + Copy> UnlockChunk<Balance> {
    /// Deposit and stake together.
    pub fn amount(&self) -> Balance {
        self.deposit.saturating_add(self.stake)
    }
}

/// Lets benchmarks drive the pallet's external dependencies.
#[cfg(feature = "runtime-benchmarks")]
pub trait BenchmarkHelper {
    /// Make [`sliver_primitives::EpochClock::current_epoch`] of [`Config::Clock`] return
    /// `epoch` from now on.
    fn set_epoch(epoch: EpochIndex);
}

#[cfg(feature = "runtime-benchmarks")]
impl BenchmarkHelper for () {
    fn set_epoch(_epoch: EpochIndex) {}
}

/// The context string at the start of every registration message.
pub const REGISTRATION_CONTEXT: &[u8; 18] = b"sliver/register/v1";

/// Multihash and protobuf header of a libp2p ed25519 PeerId: identity multihash (`0x00`) of 36
/// bytes (`0x24`) holding a `PublicKey` message: field 1 `KeyType` = Ed25519 (`0x08 0x01`),
/// field 2 `Data` of 32 bytes (`0x12 0x20`).
pub const PEER_ID_ED25519_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// The encodings of the edwards25519 points of small order, with the sign bit (top bit of the
/// last byte) cleared: y = 0, 1, two values of order 8, p - 1, and the non-canonical p and
/// p + 1 (the list of libsodium's `ge25519_has_small_order`). The verifier accepts a signature
/// by such a key over *any* message (e.g. the all-zero signature), so it proves nothing: such
/// keys are rejected.
pub const SMALL_ORDER_KEYS: [[u8; 32]; 7] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

#[frame_support::pallet]
pub mod pallet {
    use super::*;
    use frame_support::{
        pallet_prelude::*,
        traits::{
            fungible::{InspectHold, MutateHold},
            tokens::Precision,
        },
    };
    use frame_system::pallet_prelude::*;
    use sliver_primitives::{EpochClock, MinerScores, OnUidReleased, Uid};
    use sp_runtime::{
        traits::{CheckedAdd, Saturating, Zero},
        ArithmeticError,
    };

    #[pallet::pallet]
    pub struct Pallet<T>(_);

    /// Configuration of the registry.
    ///
    /// `RuntimeEvent` is the system's: `frame_system::Config::RuntimeEvent` must convert from
    /// this pallet's [`Event`].
    #[pallet::config]
    pub trait Config: frame_system::Config<RuntimeEvent: From<Event<Self>>> {
        /// The currency deposits and stake are held in (the balances pallet).
        type Currency: fungible::Inspect<Self::AccountId>
            + fungible::MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>;

        /// The overarching hold reason; must include this pallet's [`HoldReason`].
        type RuntimeHoldReason: From<HoldReason>;

        /// The epoch clock (the clock pallet): the epoch of registrations, immunity and
        /// unlocking.
        type Clock: EpochClock;

        /// Miners' recent scores (the rewards pallet), to pick whom a new miner replaces.
        type Scores: MinerScores;

        /// Told whenever a uid is freed, before it can be reassigned (the rewards pallet).
        type OnUidReleased: OnUidReleased;

        /// Held from every registrant for as long as it is registered, plus the unbonding
        /// period.
        #[pallet::constant]
        type RegistrationDeposit: Get<BalanceOf<Self>>;

        /// The least active stake of a validator that has bonded (a validator's stake is zero
        /// or at least this).
        #[pallet::constant]
        type MinValidatorStake: Get<BalanceOf<Self>>;

        /// The number of miner slots.
        #[pallet::constant]
        type MaxMiners: Get<u32>;

        /// The number of validator slots. `MaxMiners + MaxValidators` uids exist; the sum must
        /// fit the `u16` uid space.
        #[pallet::constant]
        type MaxValidators: Get<u32>;

        /// The most addresses a registrant may declare (at least 1).
        #[pallet::constant]
        type MaxAddresses: Get<u32>;

        /// The longest address in bytes (at least 1).
        #[pallet::constant]
        type MaxAddressLen: Get<u32>;

        /// The highest throughput (tokens per second) a registrant may declare.
        #[pallet::constant]
        type MaxThroughput: Get<u64>;

        /// The number of whole epochs after its registration epoch during which a miner cannot
        /// be replaced.
        #[pallet::constant]
        type ImmunityEpochs: Get<EpochIndex>;

        /// The number of epochs between unbonding (or deregistering) and release of the funds.
        #[pallet::constant]
        type UnbondingEpochs: Get<EpochIndex>;

        /// The most chunks in an account's unlocking queue (at least 1).
        #[pallet::constant]
        type MaxUnlockingChunks: Get<u32>;

        /// Weights of this pallet's calls.
        type WeightInfo: WeightInfo;

        /// Drives the clock from the benchmarks.
        #[cfg(feature = "runtime-benchmarks")]
        type BenchmarkHelper: BenchmarkHelper;
    }

    /// Why this pallet holds funds.
    #[pallet::composite_enum]
    pub enum HoldReason {
        /// The deposit of a registration (also while it unlocks after deregistration).
        #[codec(index = 0)]
        RegistrationDeposit,
        /// A validator's stake (also while it unlocks).
        #[codec(index = 1)]
        ValidatorStake,
    }

    /// The registration of each uid in use.
    #[pallet::storage]
    pub type Registrations<T: Config> = StorageMap<_, Twox64Concat, Uid, Registration<T>>;

    /// The uid of each registered account (inverse of [`Registrations`]' `account`).
    #[pallet::storage]
    pub type UidOf<T: Config> = StorageMap<_, Blake2_128Concat, T::AccountId, Uid>;

    /// The uid holding each registered peer key (inverse of [`Registrations`]' `peer_key`).
    #[pallet::storage]
    pub type PeerKeyOwner<T: Config> = StorageMap<_, Blake2_128Concat, [u8; 32], Uid>;

    /// The number of registered miners.
    #[pallet::storage]
    pub type MinerCount<T: Config> = StorageValue<_, u32, ValueQuery>;

    /// The number of registered validators.
    #[pallet::storage]
    pub type ValidatorCount<T: Config> = StorageValue<_, u32, ValueQuery>;

    /// The nonce an account's next registration message must carry; incremented at each
    /// successful registration so that a signature cannot be replayed.
    #[pallet::storage]
    pub type RegistrationNonce<T: Config> =
        StorageMap<_, Blake2_128Concat, T::AccountId, u32, ValueQuery>;

    /// Held funds of each account waiting for release, oldest first.
    #[pallet::storage]
    pub type Unlocking<T: Config> =
        StorageMap<_, Blake2_128Concat, T::AccountId, UnlockingQueueOf<T>, ValueQuery>;

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// `who` registered as `role` under `uid` with P2P identity `peer_key`.
        Registered { who: T::AccountId, uid: Uid, role: Role, peer_key: [u8; 32] },
        /// Miner `old` was replaced by `new` on `uid`.
        MinerReplaced { uid: Uid, old: T::AccountId, new: T::AccountId },
        /// `who` (on `uid`) replaced its addresses and hardware profile.
        EndpointUpdated { who: T::AccountId, uid: Uid },
        /// `who` left `uid` (by itself or replaced); its deposit and stake are unlocking.
        Deregistered { who: T::AccountId, uid: Uid },
        /// `who` put `amount` more on stake.
        Bonded { who: T::AccountId, amount: BalanceOf<T> },
        /// `who` unbonded `amount`, withdrawable from `release_epoch`.
        Unbonded { who: T::AccountId, amount: BalanceOf<T>, release_epoch: EpochIndex },
        /// `who` got `amount` of matured deposit and stake back.
        Withdrawn { who: T::AccountId, amount: BalanceOf<T> },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// The account already holds a uid.
        AlreadyRegistered,
        /// The account holds no uid.
        NotRegistered,
        /// Only validators can bond and unbond.
        NotValidator,
        /// The peer key is held by another uid.
        PeerKeyInUse,
        /// The peer key is a point of small order, for which signatures prove nothing.
        WeakPeerKey,
        /// The peer signature is not a valid signature by the peer key over this account's
        /// registration message (wrong key, account, chain or nonce).
        InvalidPeerSignature,
        /// The declared throughput is zero or above `MaxThroughput`.
        InvalidThroughput,
        /// At least one address is required.
        NoAddresses,
        /// An address is empty.
        EmptyAddress,
        /// All miner slots are taken and every miner is still immune.
        NoReplaceableMiner,
        /// All validator slots are taken.
        ValidatorSlotsFull,
        /// No uid is free (inconsistent slot counts; should not happen).
        NoFreeUid,
        /// The free balance cannot cover the deposit or the stake.
        InsufficientBalance,
        /// The amount is zero.
        ZeroAmount,
        /// The resulting active stake would be neither zero nor at least `MinValidatorStake`.
        BelowMinimumStake,
        /// Unbonding more than the active stake.
        InsufficientStake,
        /// The unlocking queue is full; withdraw matured chunks or wait.
        TooManyUnlockingChunks,
        /// No unlocking chunk has matured.
        NothingToWithdraw,
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        fn integrity_test() {
            let uids = T::MaxMiners::get().saturating_add(T::MaxValidators::get());
            assert!(
                uids <= u32::from(Uid::MAX).saturating_add(1),
                "MaxMiners + MaxValidators must fit in the u16 uid space"
            );
            assert!(T::MaxAddresses::get() >= 1, "MaxAddresses must be at least 1");
            assert!(T::MaxAddressLen::get() >= 1, "MaxAddressLen must be at least 1");
            assert!(T::MaxThroughput::get() >= 1, "MaxThroughput must be at least 1");
            assert!(T::MaxUnlockingChunks::get() >= 1, "MaxUnlockingChunks must be at least 1");
        }

        #[cfg(feature = "try-runtime")]
        fn try_state(_n: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
            Self::do_try_state()
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Register the caller as `role` under P2P identity `peer_key`.
        ///
        /// `peer_signature` is an ed25519 signature by `peer_key` over
        /// [`Pallet::registration_message`] of the caller and its current
        /// [`RegistrationNonce`]. Holds [`Config::RegistrationDeposit`]. The caller gets the
        /// lowest free uid, or, as a miner when all miner slots are taken, the uid of the
        /// lowest-scoring miner that is not immune (which is deregistered).
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::register().saturating_add(T::OnUidReleased::max_weight()))]
        pub fn register(
            origin: OriginFor<T>,
            role: Role,
            peer_key: [u8; 32],
            peer_signature: [u8; 64],
            addresses: AddressesOf<T>,
            hardware: HardwareProfile,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            ensure!(!UidOf::<T>::contains_key(&who), Error::<T>::AlreadyRegistered);
            ensure!(!PeerKeyOwner::<T>::contains_key(peer_key), Error::<T>::PeerKeyInUse);
            ensure!(!Self::is_weak_peer_key(&peer_key), Error::<T>::WeakPeerKey);
            Self::ensure_valid_endpoint(&addresses, &hardware)?;
            let nonce = RegistrationNonce::<T>::get(&who);
            ensure!(
                Self::verify_peer_signature(&who, nonce, &peer_key, &peer_signature),
                Error::<T>::InvalidPeerSignature
            );
            let deposit = T::RegistrationDeposit::get();
            ensure!(
                T::Currency::can_hold(&HoldReason::RegistrationDeposit.into(), &who, deposit),
                Error::<T>::InsufficientBalance
            );
            let epoch = T::Clock::current_epoch();
            let (uid, replaced) = match role {
                Role::Miner if MinerCount::<T>::get() >= T::MaxMiners::get() => {
                    let victim =
                        Self::replacement_candidate(epoch).ok_or(Error::<T>::NoReplaceableMiner)?;
                    (victim, true)
                }
                Role::Miner => (Self::lowest_free_uid().ok_or(Error::<T>::NoFreeUid)?, false),
                Role::Validator => {
                    ensure!(
                        ValidatorCount::<T>::get() < T::MaxValidators::get(),
                        Error::<T>::ValidatorSlotsFull
                    );
                    (Self::lowest_free_uid().ok_or(Error::<T>::NoFreeUid)?, false)
                }
            };

            if replaced {
                let old = Self::release_uid(uid)?;
                Self::deposit_event(Event::MinerReplaced { uid, old, new: who.clone() });
            }
            if !deposit.is_zero() {
                T::Currency::hold(&HoldReason::RegistrationDeposit.into(), &who, deposit)?;
            }
            Registrations::<T>::insert(
                uid,
                Registration {
                    account: who.clone(),
                    role,
                    peer_key,
                    addresses,
                    hardware,
                    registered_at: epoch,
                    deposit,
                    stake: Zero::zero(),
                },
            );
            UidOf::<T>::insert(&who, uid);
            PeerKeyOwner::<T>::insert(peer_key, uid);
            match role {
                Role::Miner => MinerCount::<T>::mutate(|n| n.saturating_inc()),
                Role::Validator => ValidatorCount::<T>::mutate(|n| n.saturating_inc()),
            }
            RegistrationNonce::<T>::mutate(&who, |n| n.saturating_inc());

            Self::deposit_event(Event::Registered { who, uid, role, peer_key });
            Ok(())
        }

        /// Replace the caller's addresses and hardware profile.
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::update_endpoint())]
        pub fn update_endpoint(
            origin: OriginFor<T>,
            addresses: AddressesOf<T>,
            hardware: HardwareProfile,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let (uid, mut registration) = Self::registration_of_account(&who)?;
            Self::ensure_valid_endpoint(&addresses, &hardware)?;

            registration.addresses = addresses;
            registration.hardware = hardware;
            Registrations::<T>::insert(uid, registration);

            Self::deposit_event(Event::EndpointUpdated { who, uid });
            Ok(())
        }

        /// Give up the caller's uid. The deposit and any stake stay on hold and are
        /// withdrawable [`Config::UnbondingEpochs`] epochs from now.
        #[pallet::call_index(2)]
        #[pallet::weight(T::WeightInfo::deregister().saturating_add(T::OnUidReleased::max_weight()))]
        pub fn deregister(origin: OriginFor<T>) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let (uid, _) = Self::registration_of_account(&who)?;

            Self::release_uid(uid)?;
            Ok(())
        }

        /// Put `amount` more of the caller's balance on stake. Validators only; the resulting
        /// stake must be at least [`Config::MinValidatorStake`].
        #[pallet::call_index(3)]
        #[pallet::weight(T::WeightInfo::bond())]
        pub fn bond(
            origin: OriginFor<T>,
            #[pallet::compact] amount: BalanceOf<T>,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let (uid, mut registration) = Self::registration_of_account(&who)?;
            ensure!(registration.role == Role::Validator, Error::<T>::NotValidator);
            ensure!(!amount.is_zero(), Error::<T>::ZeroAmount);
            let stake = registration.stake.checked_add(&amount).ok_or(ArithmeticError::Overflow)?;
            ensure!(stake >= T::MinValidatorStake::get(), Error::<T>::BelowMinimumStake);
            ensure!(
                T::Currency::can_hold(&HoldReason::ValidatorStake.into(), &who, amount),
                Error::<T>::InsufficientBalance
            );

            T::Currency::hold(&HoldReason::ValidatorStake.into(), &who, amount)?;
            registration.stake = stake;
            Registrations::<T>::insert(uid, registration);

            Self::deposit_event(Event::Bonded { who, amount });
            Ok(())
        }

        /// Move `amount` of the caller's active stake to its unlocking queue, withdrawable
        /// [`Config::UnbondingEpochs`] epochs from now. The remaining stake must be zero or at
        /// least [`Config::MinValidatorStake`].
        #[pallet::call_index(4)]
        #[pallet::weight(T::WeightInfo::unbond())]
        pub fn unbond(
            origin: OriginFor<T>,
            #[pallet::compact] amount: BalanceOf<T>,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let (uid, mut registration) = Self::registration_of_account(&who)?;
            ensure!(registration.role == Role::Validator, Error::<T>::NotValidator);
            ensure!(!amount.is_zero(), Error::<T>::ZeroAmount);
            ensure!(amount <= registration.stake, Error::<T>::InsufficientStake);
            let remaining = registration.stake.saturating_sub(amount);
            ensure!(
                remaining.is_zero() || remaining >= T::MinValidatorStake::get(),
                Error::<T>::BelowMinimumStake
            );
            let release_epoch = Self::release_epoch();
            let queue = Self::schedule(
                Unlocking::<T>::get(&who),
                UnlockChunk { deposit: Zero::zero(), stake: amount, release_epoch },
                false,
            )?;

            Unlocking::<T>::insert(&who, queue);
            registration.stake = remaining;
            Registrations::<T>::insert(uid, registration);

            Self::deposit_event(Event::Unbonded { who, amount, release_epoch });
            Ok(())
        }

        /// Release every matured chunk of the caller's unlocking queue to its free balance.
        /// Works whether or not the caller is still registered.
        #[pallet::call_index(5)]
        #[pallet::weight(T::WeightInfo::withdraw_unbonded())]
        pub fn withdraw_unbonded(origin: OriginFor<T>) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let now = T::Clock::current_epoch();
            let (matured, pending): (Vec<_>, Vec<_>) =
                Unlocking::<T>::get(&who).into_iter().partition(|c| c.release_epoch <= now);
            ensure!(!matured.is_empty(), Error::<T>::NothingToWithdraw);
            let (deposit, stake) = matured
                .iter()
                .fold((BalanceOf::<T>::zero(), BalanceOf::<T>::zero()), |(d, s), c| {
                    (d.saturating_add(c.deposit), s.saturating_add(c.stake))
                });

            let mut amount = BalanceOf::<T>::zero();
            if !deposit.is_zero() {
                let released = T::Currency::release(
                    &HoldReason::RegistrationDeposit.into(),
                    &who,
                    deposit,
                    Precision::BestEffort,
                )?;
                amount = amount.saturating_add(released);
            }
            if !stake.is_zero() {
                let released = T::Currency::release(
                    &HoldReason::ValidatorStake.into(),
                    &who,
                    stake,
                    Precision::BestEffort,
                )?;
                amount = amount.saturating_add(released);
            }
            if pending.is_empty() {
                Unlocking::<T>::remove(&who);
            } else {
                // `pending` is a part of a bounded queue, so it fits the bound.
                Unlocking::<T>::insert(&who, UnlockingQueueOf::<T>::truncate_from(pending));
            }

            Self::deposit_event(Event::Withdrawn { who, amount });
            Ok(())
        }
    }

    impl<T: Config> Pallet<T> {
        /// The message a registrant's peer key signs: the SCALE encoding of
        /// `(REGISTRATION_CONTEXT, who, genesis_hash, nonce)`, the context being 18 raw bytes
        /// (a fixed-size array: no length prefix), `genesis_hash` the hash of block 0 and
        /// `nonce` the account's [`RegistrationNonce`] as a little-endian `u32`.
        pub fn registration_message(who: &T::AccountId, nonce: u32) -> Vec<u8> {
            let genesis_hash = frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero());
            (REGISTRATION_CONTEXT, who, genesis_hash, nonce).encode()
        }

        /// The libp2p PeerId bytes of an ed25519 public key: the identity multihash of the
        /// protobuf-encoded key, [`PEER_ID_ED25519_PREFIX`] followed by the key.
        pub fn peer_id_bytes(peer_key: &[u8; 32]) -> [u8; 38] {
            let mut bytes = [0u8; 38];
            for (out, byte) in
                bytes.iter_mut().zip(PEER_ID_ED25519_PREFIX.iter().chain(peer_key.iter()))
            {
                *out = *byte;
            }
            bytes
        }

        /// Whether `peer_key` encodes a point of small order (see [`SMALL_ORDER_KEYS`]).
        pub fn is_weak_peer_key(peer_key: &[u8; 32]) -> bool {
            let mut y = *peer_key;
            if let Some(last) = y.last_mut() {
                *last &= 0x7f;
            }
            SMALL_ORDER_KEYS.contains(&y)
        }

        /// The registration of `uid`, if in use.
        pub fn registration_of(uid: Uid) -> Option<Registration<T>> {
            Registrations::<T>::get(uid)
        }

        /// Whether a miner registered in `registered_at` is immune to replacement in `now`.
        pub fn is_immune(registered_at: EpochIndex, now: EpochIndex) -> bool {
            now <= registered_at.saturating_add(T::ImmunityEpochs::get())
        }

        /// The uid and registration of `who`, or [`Error::NotRegistered`].
        fn registration_of_account(
            who: &T::AccountId,
        ) -> Result<(Uid, Registration<T>), DispatchError> {
            let uid = UidOf::<T>::get(who).ok_or(Error::<T>::NotRegistered)?;
            let registration = Registrations::<T>::get(uid).ok_or(Error::<T>::NotRegistered)?;
            Ok((uid, registration))
        }

        /// Checks addresses and hardware profile.
        fn ensure_valid_endpoint(
            addresses: &AddressesOf<T>,
            hardware: &HardwareProfile,
        ) -> DispatchResult {
            ensure!(!addresses.is_empty(), Error::<T>::NoAddresses);
            ensure!(addresses.iter().all(|a| !a.is_empty()), Error::<T>::EmptyAddress);
            ensure!(
                hardware.throughput != 0 && hardware.throughput <= T::MaxThroughput::get(),
                Error::<T>::InvalidThroughput
            );
            Ok(())
        }

        /// Whether `signature` is `peer_key`'s signature over `who`'s registration message.
        fn verify_peer_signature(
            who: &T::AccountId,
            nonce: u32,
            peer_key: &[u8; 32],
            signature: &[u8; 64],
        ) -> bool {
            let message = Self::registration_message(who, nonce);
            sp_io::crypto::ed25519_verify(
                &sp_core::ed25519::Signature::from_raw(*signature),
                &message,
                &sp_core::ed25519::Public::from_raw(*peer_key),
            )
        }

        /// The lowest uid not in use.
        fn lowest_free_uid() -> Option<Uid> {
            let uids = T::MaxMiners::get().saturating_add(T::MaxValidators::get());
            (0..uids)
                .map_while(|uid| Uid::try_from(uid).ok())
                .find(|uid| !Registrations::<T>::contains_key(uid))
        }

        /// The miner a newcomer replaces in `now`: the lowest score among miners that are not
        /// immune, then the earliest registration epoch, then the lowest uid.
        fn replacement_candidate(now: EpochIndex) -> Option<Uid> {
            Registrations::<T>::iter()
                .filter(|(_, r)| r.role == Role::Miner && !Self::is_immune(r.registered_at, now))
                .map(|(uid, r)| (T::Scores::score(uid), r.registered_at, uid))
                .min()
                .map(|(_, _, uid)| uid)
        }

        /// The release epoch of funds unlocked now.
        fn release_epoch() -> EpochIndex {
            T::Clock::current_epoch().saturating_add(T::UnbondingEpochs::get())
        }

        /// `queue` with `chunk` added: merged into the chunk with the same release epoch, else
        /// appended. On a full queue, fails with [`Error::TooManyUnlockingChunks`] unless
        /// `force`, in which case the chunk is folded into the one released last, whose release
        /// moves to `chunk.release_epoch` if that is later (funds are never released early).
        pub(crate) fn schedule(
            mut queue: UnlockingQueueOf<T>,
            chunk: UnlockChunk<BalanceOf<T>>,
            force: bool,
        ) -> Result<UnlockingQueueOf<T>, Error<T>> {
            if chunk.amount().is_zero() {
                return Ok(queue);
            }
            if let Some(same) = queue.iter_mut().find(|c| c.release_epoch == chunk.release_epoch) {
                same.deposit = same.deposit.saturating_add(chunk.deposit);
                same.stake = same.stake.saturating_add(chunk.stake);
                return Ok(queue);
            }
            if queue.try_push(chunk).is_ok() {
                return Ok(queue);
            }
            if !force {
                return Err(Error::<T>::TooManyUnlockingChunks);
            }
            let last = queue
                .iter_mut()
                .max_by_key(|c| c.release_epoch)
                .ok_or(Error::<T>::TooManyUnlockingChunks)?;
            last.deposit = last.deposit.saturating_add(chunk.deposit);
            last.stake = last.stake.saturating_add(chunk.stake);
            last.release_epoch = last.release_epoch.max(chunk.release_epoch);
            Ok(queue)
        }

        /// Frees `uid`: removes its registration and index entries, tells
        /// [`Config::OnUidReleased`], and moves the deposit and stake to the holder's unlocking
        /// queue. Returns the former holder.
        fn release_uid(uid: Uid) -> Result<T::AccountId, DispatchError> {
            let registration = Registrations::<T>::get(uid).ok_or(Error::<T>::NotRegistered)?;
            let who = registration.account;
            let queue = Self::schedule(
                Unlocking::<T>::get(&who),
                UnlockChunk {
                    deposit: registration.deposit,
                    stake: registration.stake,
                    release_epoch: Self::release_epoch(),
                },
                true,
            )?;

            Registrations::<T>::remove(uid);
            UidOf::<T>::remove(&who);
            PeerKeyOwner::<T>::remove(registration.peer_key);
            match registration.role {
                Role::Miner => MinerCount::<T>::mutate(|n| n.saturating_dec()),
                Role::Validator => ValidatorCount::<T>::mutate(|n| n.saturating_dec()),
            }
            if !queue.is_empty() {
                Unlocking::<T>::insert(&who, queue);
            }
            // The handler's weight is part of this pallet's benchmarked weights: the runtime's
            // benchmarks run with the real handler.
            let _ = T::OnUidReleased::on_uid_released(uid);

            Self::deposit_event(Event::Deregistered { who: who.clone(), uid });
            Ok(who)
        }
    }

    #[cfg(any(test, feature = "try-runtime"))]
    impl<T: Config> Pallet<T> {
        /// Checks the registry's invariants:
        ///
        /// - `MinerCount` and `ValidatorCount` equal the counts in `Registrations` and stay
        ///   within their maxima; every uid is in the uid space; miners have no stake;
        ///   validators' stake is zero or at least `MinValidatorStake`;
        /// - `UidOf` and `PeerKeyOwner` are exact inverses of `Registrations`;
        /// - no unlocking queue is stored empty or holds an empty chunk;
        /// - for every account with a registration or an unlocking queue, the balance held
        ///   under each [`HoldReason`] equals what the registry accounts for under it
        ///   (registration deposit or active stake, plus the unlocking chunks' parts).
        pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
            use alloc::collections::BTreeMap;

            let uids = T::MaxMiners::get().saturating_add(T::MaxValidators::get());
            let mut miners = 0u32;
            let mut validators = 0u32;
            // account -> (deposit, stake) the registry accounts for.
            let mut held: BTreeMap<T::AccountId, (BalanceOf<T>, BalanceOf<T>)> = BTreeMap::new();

            for (uid, r) in Registrations::<T>::iter() {
                ensure!(u32::from(uid) < uids, "uid outside the uid space");
                match r.role {
                    Role::Miner => {
                        miners.saturating_inc();
                        ensure!(r.stake.is_zero(), "a miner has stake");
                    }
                    Role::Validator => {
                        validators.saturating_inc();
                        ensure!(
                            r.stake.is_zero() || r.stake >= T::MinValidatorStake::get(),
                            "a validator's stake is below the minimum"
                        );
                    }
                }
                ensure!(
                    UidOf::<T>::get(&r.account) == Some(uid),
                    "UidOf does not point back at a registration"
                );
                ensure!(
                    PeerKeyOwner::<T>::get(r.peer_key) == Some(uid),
                    "PeerKeyOwner does not point back at a registration"
                );
                let entry = held.entry(r.account.clone()).or_default();
                ensure!(entry.0.is_zero() && entry.1.is_zero(), "an account holds two uids");
                *entry = (r.deposit, r.stake);
            }
            ensure!(MinerCount::<T>::get() == miners, "MinerCount is off");
            ensure!(ValidatorCount::<T>::get() == validators, "ValidatorCount is off");
            ensure!(miners <= T::MaxMiners::get(), "too many miners");
            ensure!(validators <= T::MaxValidators::get(), "too many validators");

            for (who, uid) in UidOf::<T>::iter() {
                ensure!(
                    Registrations::<T>::get(uid).map(|r| r.account) == Some(who),
                    "UidOf has an entry without registration"
                );
            }
            for (key, uid) in PeerKeyOwner::<T>::iter() {
                ensure!(
                    Registrations::<T>::get(uid).map(|r| r.peer_key) == Some(key),
                    "PeerKeyOwner has an entry without registration"
                );
            }

            for (who, queue) in Unlocking::<T>::iter() {
                ensure!(!queue.is_empty(), "an empty unlocking queue is stored");
                let entry = held.entry(who).or_default();
                for chunk in queue.iter() {
                    ensure!(!chunk.amount().is_zero(), "an empty unlocking chunk is stored");
                    entry.0 = entry.0.saturating_add(chunk.deposit);
                    entry.1 = entry.1.saturating_add(chunk.stake);
                }
            }

            for (who, (deposit, stake)) in held {
                ensure!(
                    T::Currency::balance_on_hold(&HoldReason::RegistrationDeposit.into(), &who)
                        == deposit,
                    "held registration deposit differs from the registry's accounts"
                );
                ensure!(
                    T::Currency::balance_on_hold(&HoldReason::ValidatorStake.into(), &who) == stake,
                    "held validator stake differs from the registry's accounts"
                );
            }
            Ok(())
        }
    }
}

impl<T: Config> sliver_primitives::Registry<T::AccountId> for Pallet<T> {
    fn uid_of(who: &T::AccountId) -> Option<sliver_primitives::Uid> {
        UidOf::<T>::get(who)
    }

    fn account_of(uid: sliver_primitives::Uid) -> Option<T::AccountId> {
        Registrations::<T>::get(uid).map(|r| r.account)
    }

    fn role_of(uid: sliver_primitives::Uid) -> Option<Role> {
        Registrations::<T>::get(uid).map(|r| r.role)
    }

    fn miners() -> Vec<(sliver_primitives::Uid, u64)> {
        let mut miners: Vec<_> = Registrations::<T>::iter()
            .filter(|(_, r)| r.role == Role::Miner)
            .map(|(uid, r)| (uid, r.hardware.throughput))
            .collect();
        miners.sort_unstable_by_key(|(uid, _)| *uid);
        miners
    }

    fn validators() -> Vec<(sliver_primitives::Uid, sliver_primitives::Stake)> {
        use sp_runtime::SaturatedConversion;
        let mut validators: Vec<_> = Registrations::<T>::iter()
            .filter(|(_, r)| r.role == Role::Validator)
            .map(|(uid, r)| (uid, r.stake.saturated_into::<sliver_primitives::Stake>()))
            .collect();
        validators.sort_unstable_by_key(|(uid, _)| *uid);
        validators
    }

    fn registered_at(uid: sliver_primitives::Uid) -> Option<EpochIndex> {
        Registrations::<T>::get(uid).map(|r| r.registered_at)
    }
}
