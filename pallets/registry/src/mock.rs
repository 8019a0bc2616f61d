//! Test runtime of the registry: System, Balances and the registry, with small doubles of the
//! clock, the miner scores and the uid-release handler.

use crate as pallet_sliver_registry;
use crate::{AddressesOf, Backend, HardwareProfile, RegistrationNonce};
use core::cell::RefCell;
use frame_support::{derive_impl, parameter_types, traits::ConstU32};
use sliver_primitives::{
    EpochClock, EpochIndex, MinerScores, OnUidReleased, Phase, Role, SliverIndex, Uid,
};
use sp_core::{ed25519, Pair as _};
use sp_keystore::{testing::MemoryKeystore, KeystoreExt};
use sp_runtime::{BuildStorage, DispatchResult};
use std::collections::BTreeMap;

type Block = frame_system::mocking::MockBlock<Test>;

/// Account ids of the tests.
pub type AccountId = u64;
/// Balances of the tests.
pub type Balance = u128;

frame_support::construct_runtime!(
    pub enum Test {
        System: frame_system,
        Balances: pallet_balances,
        Registry: pallet_sliver_registry,
    }
);

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
    type Block = Block;
    type AccountData = pallet_balances::AccountData<Balance>;
}

#[derive_impl(pallet_balances::config_preludes::TestDefaultConfig)]
impl pallet_balances::Config for Test {
    type Balance = Balance;
    type AccountStore = System;
    type RuntimeHoldReason = RuntimeHoldReason;
}

parameter_types! {
    /// The clock double's current epoch.
    pub static Epoch: EpochIndex = 0;
    pub const RegistrationDeposit: Balance = 100;
    pub const MinValidatorStake: Balance = 1_000;
    pub const MaxThroughput: u64 = 1_000_000;
}

/// The deposit of the mock.
pub const DEPOSIT: Balance = 100;
/// The minimum validator stake of the mock.
pub const MIN_STAKE: Balance = 1_000;
/// Miner slots of the mock.
pub const MAX_MINERS: u32 = 3;
/// Validator slots of the mock.
pub const MAX_VALIDATORS: u32 = 2;
/// Immunity of the mock.
pub const IMMUNITY: EpochIndex = 2;
/// Unbonding period of the mock.
pub const UNBONDING: EpochIndex = 3;
/// Unlocking queue length of the mock.
pub const MAX_CHUNKS: u32 = 4;
/// Address bounds of the mock.
pub const MAX_ADDRESSES: u32 = 2;
pub const MAX_ADDRESS_LEN: u32 = 16;
/// Starting balance of the funded accounts `1..=FUNDED`.
pub const BALANCE: Balance = 100_000;
pub const FUNDED: AccountId = 20;

thread_local! {
    static SCORES: RefCell<BTreeMap<Uid, u64>> = const { RefCell::new(BTreeMap::new()) };
    static RELEASED: RefCell<Vec<Uid>> = const { RefCell::new(Vec::new()) };
}

/// Clock double: the epoch is [`Epoch`].
pub struct MockClock;
impl EpochClock for MockClock {
    fn current_epoch() -> EpochIndex {
        Epoch::get()
    }
    fn current_phase() -> Phase {
        Phase::Train
    }
    fn sliver_of(_uid: Uid) -> Option<SliverIndex> {
        None
    }
}

/// Scores double: set with [`set_score`]; unknown uids score 0.
pub struct MockScores;
impl MinerScores for MockScores {
    fn score(uid: Uid) -> u64 {
        SCORES.with(|s| s.borrow().get(&uid).copied().unwrap_or(0))
    }
}

/// Sets the score of `uid`.
pub fn set_score(uid: Uid, score: u64) {
    SCORES.with(|s| s.borrow_mut().insert(uid, score));
}

/// Release double: records every released uid and forgets its score, as rewards does.
pub struct MockOnUidReleased;
impl OnUidReleased for MockOnUidReleased {
    fn on_uid_released(uid: Uid) -> frame_support::weights::Weight {
        RELEASED.with(|r| r.borrow_mut().push(uid));
        SCORES.with(|s| s.borrow_mut().remove(&uid));
        frame_support::weights::Weight::zero()
    }

    fn max_weight() -> frame_support::weights::Weight {
        frame_support::weights::Weight::from_parts(1_000_000, 0)
    }
}

/// The uids released so far, in order.
pub fn released() -> Vec<Uid> {
    RELEASED.with(|r| r.borrow().clone())
}

/// Benchmark helper: drives the clock double.
#[cfg(feature = "runtime-benchmarks")]
pub struct MockBenchmarkHelper;
#[cfg(feature = "runtime-benchmarks")]
impl crate::BenchmarkHelper for MockBenchmarkHelper {
    fn set_epoch(epoch: EpochIndex) {
        Epoch::set(epoch);
    }
}

impl pallet_sliver_registry::Config for Test {
    type Currency = Balances;
    type RuntimeHoldReason = RuntimeHoldReason;
    type Clock = MockClock;
    type Scores = MockScores;
    type OnUidReleased = MockOnUidReleased;
    type RegistrationDeposit = RegistrationDeposit;
    type MinValidatorStake = MinValidatorStake;
    type MaxMiners = ConstU32<MAX_MINERS>;
    type MaxValidators = ConstU32<MAX_VALIDATORS>;
    type MaxAddresses = ConstU32<MAX_ADDRESSES>;
    type MaxAddressLen = ConstU32<MAX_ADDRESS_LEN>;
    type MaxThroughput = MaxThroughput;
    type ImmunityEpochs = ConstU32<IMMUNITY>;
    type UnbondingEpochs = ConstU32<UNBONDING>;
    type MaxUnlockingChunks = ConstU32<MAX_CHUNKS>;
    type WeightInfo = ();
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = MockBenchmarkHelper;
}

/// Builds the test externalities.
pub struct ExtBuilder {
    balances: Vec<(AccountId, Balance)>,
}

impl Default for ExtBuilder {
    fn default() -> Self {
        Self { balances: (1..=FUNDED).map(|who| (who, BALANCE)).collect() }
    }
}

impl ExtBuilder {
    /// Gives `who` a starting balance of `amount` (replacing the default).
    pub fn balance(mut self, who: AccountId, amount: Balance) -> Self {
        self.balances.retain(|(w, _)| *w != who);
        self.balances.push((who, amount));
        self
    }

    /// The externalities: funded accounts, epoch 0, block 1, a keystore.
    pub fn build(self) -> sp_io::TestExternalities {
        Epoch::set(0);
        SCORES.with(|s| s.borrow_mut().clear());
        RELEASED.with(|r| r.borrow_mut().clear());
        let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
        pallet_balances::GenesisConfig::<Test> { balances: self.balances, ..Default::default() }
            .assimilate_storage(&mut storage)
            .unwrap();
        let mut ext = sp_io::TestExternalities::new(storage);
        ext.register_extension(KeystoreExt::new(MemoryKeystore::new()));
        ext.execute_with(|| System::set_block_number(1));
        ext
    }

    /// Runs `test`, then checks the registry's invariants.
    pub fn build_and_execute(self, test: impl FnOnce()) {
        self.build().execute_with(|| {
            test();
            Registry::do_try_state().expect("registry invariants hold");
        })
    }
}

/// The externalities of the benchmark test suite.
#[cfg(feature = "runtime-benchmarks")]
pub fn new_test_ext() -> sp_io::TestExternalities {
    ExtBuilder::default().build()
}

/// The P2P key pair number `n`.
pub fn peer(n: u8) -> ed25519::Pair {
    ed25519::Pair::from_seed(&[n; 32])
}

/// The public key of [`peer`]`(n)`.
pub fn peer_key(n: u8) -> [u8; 32] {
    peer(n).public().0
}

/// `pair`'s signature over `who`'s current registration message.
pub fn sign_for(pair: &ed25519::Pair, who: AccountId) -> [u8; 64] {
    let nonce = RegistrationNonce::<Test>::get(who);
    pair.sign(&Registry::registration_message(&who, nonce)).0
}

/// `n` addresses of `len` bytes.
pub fn addresses(n: u32, len: u32) -> AddressesOf<Test> {
    let list: Vec<_> = (0..n)
        .map(|i| (0..len).map(|j| (i + j) as u8).collect::<Vec<u8>>().try_into().unwrap())
        .collect();
    list.try_into().unwrap()
}

/// A valid hardware profile with `throughput`.
pub fn hardware(throughput: u64) -> HardwareProfile {
    HardwareProfile { backend: Backend::Cuda, memory_mib: 24_576, throughput }
}

/// Registers `who` as `role` with peer key number `peer_n`, one address and throughput 100.
pub fn register(who: AccountId, role: Role, peer_n: u8) -> DispatchResult {
    let pair = peer(peer_n);
    Registry::register(
        RuntimeOrigin::signed(who),
        role,
        pair.public().0,
        sign_for(&pair, who),
        addresses(1, 4),
        hardware(100),
    )
}
