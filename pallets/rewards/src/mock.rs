//! Test runtime: System, Balances and the rewards pallet, with test doubles for the registry and
//! the clock that tests drive directly.

use crate::{self as pallet_sliver_rewards, Config};
use frame_support::{derive_impl, parameter_types, traits::ConstU32, PalletId};
use sliver_primitives::{
    EpochClock, EpochIndex, OnUidReleased, Phase, Registry, Role, SliverIndex, Stake, Uid,
};
use sp_runtime::{BuildStorage, Perbill};
use std::{cell::RefCell, collections::BTreeMap};

type Block = frame_system::mocking::MockBlock<Test>;
pub type AccountId = u64;
pub type Balance = u64;

frame_support::construct_runtime!(
    pub enum Test {
        System: frame_system,
        Balances: pallet_balances,
        Rewards: pallet_sliver_rewards,
    }
);

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
    type Block = Block;
    type AccountData = pallet_balances::AccountData<Balance>;
}

#[derive_impl(pallet_balances::config_preludes::TestDefaultConfig)]
impl pallet_balances::Config for Test {
    type AccountStore = System;
}

/// Pot endowment minted at genesis by default.
pub const POT: Balance = 1_000_000;
/// Mock `MaxMiners`.
pub const MAX_MINERS: u32 = 16;
/// Mock `MaxValidators`.
pub const MAX_VALIDATORS: u32 = 8;

parameter_types! {
    pub const RewardsPalletId: PalletId = PalletId(*b"slv/rwds");
    pub static EmissionPerEpoch: Balance = 90_000;
    pub static MinerShare: Perbill = Perbill::from_percent(50);
    pub static BondsAlpha: Perbill = Perbill::from_percent(10);
    pub static CurrentEpoch: EpochIndex = 0;
    pub static CurrentPhase: Phase = Phase::Train;
    /// A uid whose account the registry double pretends not to know (to test failed payouts).
    pub static NoAccountFor: Option<Uid> = None;
}

thread_local! {
    /// The registry double: uid -> (account, role, stake).
    static REGISTRY: RefCell<BTreeMap<Uid, (AccountId, Role, Stake)>> =
        const { RefCell::new(BTreeMap::new()) };
}

/// Registry double backed by [`REGISTRY`].
pub struct TestRegistry;
thread_local! {
    /// Registration epochs the registry double reports (none unless a test sets one).
    pub static REGISTERED_AT: core::cell::RefCell<std::collections::BTreeMap<Uid, EpochIndex>> =
        Default::default();
}

impl Registry<AccountId> for TestRegistry {
    fn uid_of(who: &AccountId) -> Option<Uid> {
        REGISTRY.with(|r| r.borrow().iter().find(|(_, (a, _, _))| a == who).map(|(uid, _)| *uid))
    }
    fn account_of(uid: Uid) -> Option<AccountId> {
        if NoAccountFor::get() == Some(uid) {
            return None;
        }
        REGISTRY.with(|r| r.borrow().get(&uid).map(|(a, _, _)| *a))
    }
    fn role_of(uid: Uid) -> Option<Role> {
        REGISTRY.with(|r| r.borrow().get(&uid).map(|(_, role, _)| *role))
    }
    fn miners() -> Vec<(Uid, u64)> {
        REGISTRY.with(|r| {
            r.borrow()
                .iter()
                .filter(|(_, (_, role, _))| *role == Role::Miner)
                .map(|(uid, _)| (*uid, 1_000))
                .collect()
        })
    }
    fn validators() -> Vec<(Uid, Stake)> {
        REGISTRY.with(|r| {
            r.borrow()
                .iter()
                .filter(|(_, (_, role, _))| *role == Role::Validator)
                .map(|(uid, (_, _, stake))| (*uid, *stake))
                .collect()
        })
    }

    fn registered_at(uid: Uid) -> Option<EpochIndex> {
        REGISTERED_AT.with(|r| r.borrow().get(&uid).copied())
    }
}

/// Clock double backed by [`CurrentEpoch`] and [`CurrentPhase`].
pub struct TestClock;
impl EpochClock for TestClock {
    fn current_epoch() -> EpochIndex {
        CurrentEpoch::get()
    }
    fn current_phase() -> Phase {
        CurrentPhase::get()
    }
    fn sliver_of(_uid: Uid) -> Option<SliverIndex> {
        None
    }
}

impl Config for Test {
    type RuntimeEvent = RuntimeEvent;
    type Currency = Balances;
    type Registry = TestRegistry;
    type Clock = TestClock;
    type PalletId = RewardsPalletId;
    type EmissionPerEpoch = EmissionPerEpoch;
    type MinerShare = MinerShare;
    type BondsAlpha = BondsAlpha;
    type MaxMiners = ConstU32<MAX_MINERS>;
    type MaxValidators = ConstU32<MAX_VALIDATORS>;
    type WeightInfo = ();
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = MockBenchmarkHelper;
}

/// Registers `uid` for `who` as a validator with `stake`.
pub fn register_validator(uid: Uid, who: AccountId, stake: Stake) {
    REGISTRY.with(|r| r.borrow_mut().insert(uid, (who, Role::Validator, stake)));
}

/// Registers `uid` for `who` as a miner.
pub fn register_miner(uid: Uid, who: AccountId) {
    REGISTRY.with(|r| r.borrow_mut().insert(uid, (who, Role::Miner, 0)));
}

/// Frees `uid` as the registry does: removes it, then tells the rewards pallet.
pub fn deregister(uid: Uid) {
    REGISTRY.with(|r| r.borrow_mut().remove(&uid));
    <Rewards as OnUidReleased>::on_uid_released(uid);
}

/// Removes `uid` from the registry double without telling the rewards pallet.
pub fn remove_from_registry(uid: Uid) {
    REGISTRY.with(|r| r.borrow_mut().remove(&uid));
}

/// Moves the clock.
pub fn set_clock(epoch: EpochIndex, phase: Phase) {
    CurrentEpoch::set(epoch);
    CurrentPhase::set(phase);
}

/// Sets the registry and clock up from benchmarks. Accounts are `10_000 + uid`.
#[cfg(feature = "runtime-benchmarks")]
pub struct MockBenchmarkHelper;
#[cfg(feature = "runtime-benchmarks")]
impl crate::BenchmarkHelper<AccountId> for MockBenchmarkHelper {
    fn register_validator(uid: Uid, stake: Stake) -> AccountId {
        let who = 10_000 + AccountId::from(uid);
        register_validator(uid, who, stake);
        who
    }
    fn register_miner(uid: Uid) -> AccountId {
        let who = 10_000 + AccountId::from(uid);
        register_miner(uid, who);
        who
    }
    fn set_phase(phase: Phase) {
        CurrentPhase::set(phase);
    }
    fn set_epoch(epoch: EpochIndex) {
        CurrentEpoch::set(epoch);
    }
}

/// Builds test externalities.
pub struct ExtBuilder {
    pot_endowment: Balance,
    balances: Vec<(AccountId, Balance)>,
}

impl Default for ExtBuilder {
    fn default() -> Self {
        Self { pot_endowment: POT, balances: vec![] }
    }
}

impl ExtBuilder {
    /// Sets the pot endowment minted at genesis.
    pub fn pot_endowment(mut self, amount: Balance) -> Self {
        self.pot_endowment = amount;
        self
    }

    /// Endows accounts at genesis.
    pub fn balances(mut self, balances: Vec<(AccountId, Balance)>) -> Self {
        self.balances = balances;
        self
    }

    /// Builds the externalities with fresh test doubles and default parameters.
    pub fn build(self) -> sp_io::TestExternalities {
        REGISTRY.with(|r| r.borrow_mut().clear());
        set_clock(0, Phase::Train);
        NoAccountFor::set(None);
        EmissionPerEpoch::set(90_000);
        MinerShare::set(Perbill::from_percent(50));
        BondsAlpha::set(Perbill::from_percent(10));

        let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
        pallet_balances::GenesisConfig::<Test> { balances: self.balances, dev_accounts: None }
            .assimilate_storage(&mut storage)
            .unwrap();
        pallet_sliver_rewards::GenesisConfig::<Test> { pot_endowment: self.pot_endowment }
            .assimilate_storage(&mut storage)
            .unwrap();
        let mut ext = sp_io::TestExternalities::new(storage);
        ext.execute_with(|| System::set_block_number(1));
        ext
    }

    /// Builds the externalities, runs `test`, then checks the pallet's invariants.
    pub fn build_and_execute(self, test: impl FnOnce()) {
        self.build().execute_with(|| {
            test();
            Rewards::do_try_state().expect("try_state holds after the test");
        });
    }
}

/// Default externalities (for the benchmark test suite).
#[cfg(feature = "runtime-benchmarks")]
pub fn new_test_ext() -> sp_io::TestExternalities {
    ExtBuilder::default().build()
}
