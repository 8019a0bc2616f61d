//! Configuration of each pallet in the runtime.

use crate::*;
use frame_support::{
    derive_impl,
    dispatch::DispatchClass,
    parameter_types,
    traits::{ConstBool, ConstU128, ConstU32, ConstU64, ConstU8, VariantCountOf},
    weights::{
        constants::{ParityDbWeight, WEIGHT_REF_TIME_PER_SECOND},
        IdentityFee, Weight,
    },
};
use pallet_transaction_payment::{ConstFeeMultiplier, FungibleAdapter, Multiplier};
use sp_consensus_aura::sr25519::AuthorityId as AuraId;
use sp_runtime::{traits::One, Perbill};

const NORMAL_DISPATCH_RATIO: Perbill = Perbill::from_percent(75);

parameter_types! {
    pub const BlockHashCount: BlockNumber = 2400;
    pub const Version: RuntimeVersion = VERSION;
    /// A third of the one-second block for computation, as the standard two seconds of six.
    pub RuntimeBlockWeights: frame_system::limits::BlockWeights =
        frame_system::limits::BlockWeights::with_sensible_defaults(
            Weight::from_parts(WEIGHT_REF_TIME_PER_SECOND / 3, u64::MAX),
            NORMAL_DISPATCH_RATIO,
        );
    pub RuntimeBlockLength: frame_system::limits::BlockLength =
        frame_system::limits::BlockLength::builder()
            .max_length(5 * 1024 * 1024)
            .modify_max_length_for_class(DispatchClass::Normal, |m| *m = NORMAL_DISPATCH_RATIO * *m)
            .build();
    /// The generic Substrate SS58 prefix.
    pub const SS58Prefix: u8 = 42;
}

#[derive_impl(frame_system::config_preludes::SolochainDefaultConfig)]
impl frame_system::Config for Runtime {
    type Block = Block;
    type BlockWeights = RuntimeBlockWeights;
    type BlockLength = RuntimeBlockLength;
    type AccountId = AccountId;
    type Nonce = Nonce;
    type Hash = Hash;
    type BlockHashCount = BlockHashCount;
    /// The node's database is ParityDB.
    type DbWeight = ParityDbWeight;
    type Version = Version;
    type AccountData = pallet_balances::AccountData<Balance>;
    type SS58Prefix = SS58Prefix;
    type MaxConsumers = ConstU32<16>;
}

impl pallet_aura::Config for Runtime {
    type AuthorityId = AuraId;
    type DisabledValidators = ();
    type MaxAuthorities = ConstU32<32>;
    type AllowMultipleBlocksPerSlot = ConstBool<false>;
    type SlotDuration = pallet_aura::MinimumPeriodTimesTwo<Runtime>;
}

impl pallet_grandpa::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type WeightInfo = ();
    type MaxAuthorities = ConstU32<32>;
    type MaxNominators = ConstU32<0>;
    type MaxSetIdSessionEntries = ConstU64<0>;
    type KeyOwnerProof = sp_core::Void;
    type EquivocationReportSystem = ();
}

impl pallet_timestamp::Config for Runtime {
    /// Milliseconds since the Unix epoch.
    type Moment = u64;
    type OnTimestampSet = Aura;
    type MinimumPeriod = ConstU64<{ SLOT_DURATION / 2 }>;
    type WeightInfo = ();
}

impl pallet_balances::Config for Runtime {
    type MaxLocks = ConstU32<50>;
    type MaxReserves = ();
    type ReserveIdentifier = [u8; 8];
    type Balance = Balance;
    type RuntimeEvent = RuntimeEvent;
    type DustRemoval = ();
    type ExistentialDeposit = ConstU128<EXISTENTIAL_DEPOSIT>;
    type AccountStore = System;
    type WeightInfo = pallet_balances::weights::SubstrateWeight<Runtime>;
    type FreezeIdentifier = RuntimeFreezeReason;
    type MaxFreezes = VariantCountOf<RuntimeFreezeReason>;
    type RuntimeHoldReason = RuntimeHoldReason;
    type RuntimeFreezeReason = RuntimeFreezeReason;
    type DoneSlashHandler = ();
}

parameter_types! {
    pub FeeMultiplier: Multiplier = Multiplier::one();
}

impl pallet_transaction_payment::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type OnChargeTransaction = FungibleAdapter<Balances, ()>;
    type OperationalFeeMultiplier = ConstU8<5>;
    type WeightToFee = IdentityFee<Balance>;
    type LengthToFee = IdentityFee<Balance>;
    type FeeMultiplierUpdate = ConstFeeMultiplier<FeeMultiplier>;
    type WeightInfo = pallet_transaction_payment::weights::SubstrateWeight<Runtime>;
}

impl pallet_sudo::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type RuntimeCall = RuntimeCall;
    type WeightInfo = pallet_sudo::weights::SubstrateWeight<Runtime>;
}

// ---------------------------------------------------------------------------------------------
// Sliver pallets.
// ---------------------------------------------------------------------------------------------

/// Miner slots. Settlement reads and writes one bond per (validator, miner) pair, so the
/// product of the two caps bounds its weight (measured in `docs/chain.md`).
pub const MAX_MINERS: u32 = 64;
/// Validator slots.
pub const MAX_VALIDATORS: u32 = 16;

parameter_types! {
    pub const RegistrationDeposit: Balance = 10 * UNIT;
    pub const MinValidatorStake: Balance = 100 * UNIT;
    pub const MaxMiners: u32 = MAX_MINERS;
    pub const MaxValidators: u32 = MAX_VALIDATORS;
    pub const MaxAddresses: u32 = 8;
    pub const MaxAddressLen: u32 = 128;
    /// Declared throughput cap: ten million tokens per second per miner.
    pub const MaxThroughput: u64 = 10_000_000;
    pub const ImmunityEpochs: sliver_primitives::EpochIndex = 2;
    pub const UnbondingEpochs: sliver_primitives::EpochIndex = 2;
    pub const MaxUnlockingChunks: u32 = 16;
}

impl pallet_sliver_registry::Config for Runtime {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type Clock = SliverClock;
    type Scores = SliverRewards;
    type OnUidReleased = (SliverRewards, SliverClock);
    type RegistrationDeposit = RegistrationDeposit;
    type MinValidatorStake = MinValidatorStake;
    type MaxMiners = MaxMiners;
    type MaxValidators = MaxValidators;
    type MaxAddresses = MaxAddresses;
    type MaxAddressLen = MaxAddressLen;
    type MaxThroughput = MaxThroughput;
    type ImmunityEpochs = ImmunityEpochs;
    type UnbondingEpochs = UnbondingEpochs;
    type MaxUnlockingChunks = MaxUnlockingChunks;
    type WeightInfo = pallet_sliver_registry::weights::SubstrateWeight<Runtime>;
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = crate::benchmark_helpers::SliverBenchmarkHelper;
}

parameter_types! {
    /// Epochs of 20 one-second blocks: local networks and tests see several epochs a minute.
    pub const EpochLength: BlockNumber = 20;
    pub const CommitLength: BlockNumber = 5;
    pub const RevealLength: BlockNumber = 5;
    pub const MaxSlivers: u32 = 16;
    pub const MaxDatasetIdLen: u32 = 128;
}

impl pallet_sliver_clock::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type Registry = SliverRegistry;
    type OnEpochChange = SliverRewards;
    type Entropy = pallet_sliver_clock::ParentHashEntropy<Runtime>;
    type RunOrigin = frame_system::EnsureRoot<AccountId>;
    type EpochLength = EpochLength;
    type CommitLength = CommitLength;
    type RevealLength = RevealLength;
    type MaxMiners = MaxMiners;
    type MaxSlivers = MaxSlivers;
    type MaxDatasetIdLen = MaxDatasetIdLen;
    type WeightInfo = pallet_sliver_clock::weights::SubstrateWeight<Runtime>;
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = crate::benchmark_helpers::SliverBenchmarkHelper;
}

parameter_types! {
    pub const RewardsPalletId: frame_support::PalletId = frame_support::PalletId(*b"slv/rwds");
    /// Paid out of the pot at each epoch boundary.
    pub const EmissionPerEpoch: Balance = 1_000 * UNIT;
    /// Miners' share of each epoch's emission; validators get the rest.
    pub const MinerShare: Perbill = Perbill::from_percent(80);
    /// Weight of the newest epoch in the validators' bond moving average.
    pub const BondsAlpha: Perbill = Perbill::from_percent(10);
}

impl pallet_sliver_rewards::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type Currency = Balances;
    type Registry = SliverRegistry;
    type Clock = SliverClock;
    type PalletId = RewardsPalletId;
    type EmissionPerEpoch = EmissionPerEpoch;
    type MinerShare = MinerShare;
    type BondsAlpha = BondsAlpha;
    type MaxMiners = MaxMiners;
    type MaxValidators = MaxValidators;
    type WeightInfo = pallet_sliver_rewards::weights::SubstrateWeight<Runtime>;
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = crate::benchmark_helpers::SliverBenchmarkHelper;
}
