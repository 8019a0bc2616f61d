//! Test runtime: frame-system and the clock, with test doubles for the registry and for
//! `OnEpochChange`.

use crate::{self as pallet_sliver_clock, *};
use core::cell::RefCell;
use frame_support::{derive_impl, parameter_types, traits::Hooks};
use frame_system::EnsureRoot;
use sliver_primitives::{Role, Stake};
use sp_runtime::BuildStorage;

type Block = frame_system::mocking::MockBlock<Test>;

frame_support::construct_runtime!(
    pub enum Test {
        System: frame_system,
        SliverClock: pallet_sliver_clock,
    }
);

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
    type Block = Block;
}

/// Blocks per epoch in the mock: Train is blocks 0..=5 of an epoch, Commit 6..=7, Reveal 8..=9.
pub const EPOCH: u64 = 10;
/// Commit phase length in the mock.
pub const COMMIT: u64 = 2;
/// Reveal phase length in the mock.
pub const REVEAL: u64 = 2;
/// Weight the `OnEpochChange` double reports.
pub const ON_EPOCH_CHANGE_WEIGHT: Weight = Weight::from_parts(1_234, 56);

parameter_types! {
    pub const EpochLength: u64 = EPOCH;
    pub const CommitLength: u64 = COMMIT;
    pub const RevealLength: u64 = REVEAL;
    pub const MaxMiners: u32 = 16;
    pub const MaxSlivers: u32 = 4;
    pub const MaxDatasetIdLen: u32 = 32;
}

thread_local! {
    /// The registry double's miners, `(uid, throughput)`.
    static MINERS: RefCell<Vec<(Uid, u64)>> = const { RefCell::new(Vec::new()) };
    /// Every `(ended, started)` the `OnEpochChange` double was told.
    static EPOCH_CHANGES: RefCell<Vec<(EpochIndex, EpochIndex)>> = const { RefCell::new(Vec::new()) };
    /// Mixed into the parent hashes `run_to_block` sets, to vary them between tests.
    static PARENT_HASH_SALT: RefCell<u64> = const { RefCell::new(0) };
}

/// Registry double: miners are uids with a throughput; there are no validators or accounts.
pub struct MockRegistry;

impl MockRegistry {
    /// Replace the registered miners.
    pub fn set_miners(miners: Vec<(Uid, u64)>) {
        MINERS.with(|m| *m.borrow_mut() = miners);
    }

    /// Register one more miner (or update its throughput).
    pub fn add_miner(uid: Uid, throughput: u64) {
        MINERS.with(|m| {
            let mut miners = m.borrow_mut();
            miners.retain(|(u, _)| *u != uid);
            miners.push((uid, throughput));
            miners.sort_unstable();
        });
    }
}

impl Registry<u64> for MockRegistry {
    fn uid_of(_who: &u64) -> Option<Uid> {
        None
    }

    fn account_of(_uid: Uid) -> Option<u64> {
        None
    }

    fn role_of(uid: Uid) -> Option<Role> {
        MINERS.with(|m| m.borrow().iter().any(|(u, _)| *u == uid)).then_some(Role::Miner)
    }

    fn miners() -> Vec<(Uid, u64)> {
        MINERS.with(|m| m.borrow().clone())
    }

    fn validators() -> Vec<(Uid, Stake)> {
        Vec::new()
    }

    fn registered_at(_uid: Uid) -> Option<sliver_primitives::EpochIndex> {
        None
    }
}

/// `OnEpochChange` double that records its calls.
pub struct RecordEpochChanges;

impl RecordEpochChanges {
    /// The calls so far.
    pub fn calls() -> Vec<(EpochIndex, EpochIndex)> {
        EPOCH_CHANGES.with(|c| c.borrow().clone())
    }
}

impl OnEpochChange for RecordEpochChanges {
    fn on_epoch_change(ended: EpochIndex, started: EpochIndex) -> Weight {
        EPOCH_CHANGES.with(|c| c.borrow_mut().push((ended, started)));
        ON_EPOCH_CHANGE_WEIGHT
    }
}

/// Benchmark set-up: fills the registry double.
#[cfg(feature = "runtime-benchmarks")]
pub struct MockBenchmarkHelper;

#[cfg(feature = "runtime-benchmarks")]
impl BenchmarkHelper for MockBenchmarkHelper {
    fn register_miners(n: u32) {
        let n = Uid::try_from(n).unwrap_or(Uid::MAX);
        MockRegistry::set_miners((0..n).map(|uid| (uid, 1_000 + u64::from(uid))).collect());
    }
}

impl Config for Test {
    type RuntimeEvent = RuntimeEvent;
    type Registry = MockRegistry;
    type OnEpochChange = RecordEpochChanges;
    type Entropy = ParentHashEntropy<Test>;
    type RunOrigin = EnsureRoot<u64>;
    type EpochLength = EpochLength;
    type CommitLength = CommitLength;
    type RevealLength = RevealLength;
    type MaxMiners = MaxMiners;
    type MaxSlivers = MaxSlivers;
    type MaxDatasetIdLen = MaxDatasetIdLen;
    type WeightInfo = ();
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = MockBenchmarkHelper;
}

/// A valid run with `num_slivers` slivers (of an 8-layer model).
pub fn run_params(num_slivers: u16) -> TrainingRunParamsOf<Test> {
    TrainingRunParams {
        model: ModelConfig {
            n_layers: 8,
            d_model: 512,
            n_heads: 8,
            vocab_size: 32_000,
            context_len: 1_024,
            tied_embeddings: true,
        },
        num_slivers,
        dataset_id: BoundedVec::truncate_from(b"fineweb-edu/sample-10BT".to_vec()),
        dataset_hash: H256::repeat_byte(0xda),
        hyper: HyperParams {
            learning_rate_micro: 600,
            min_learning_rate_micro: 60,
            warmup_steps: 100,
            weight_decay_micro: 100_000,
            grad_clip_micro: 1_000_000,
            batch_size: 32,
            micro_batches: 4,
            merge_interval: 50,
            outer_lr_micro: 700_000,
            outer_momentum_micro: 900_000,
        },
    }
}

/// The parent hash `run_to_block` sets for block `n`: depends on `n` and the salt.
pub fn parent_hash_for(n: u64) -> H256 {
    let salt = PARENT_HASH_SALT.with(|s| *s.borrow());
    H256(sp_io::hashing::blake2_256(&(b"parent", salt, n).encode()))
}

/// Execute blocks up to and including `n`, calling `on_initialize` of each.
pub fn run_to_block(n: u64) {
    while System::block_number() < n {
        next_block();
    }
}

/// Execute the next block's `on_initialize`; returns the weight it reported.
pub fn next_block() -> Weight {
    let n = System::block_number() + 1;
    System::set_block_number(n);
    System::set_parent_hash(parent_hash_for(n));
    SliverClock::on_initialize(n)
}

/// The events this pallet emitted, oldest first.
pub fn clock_events() -> Vec<Event<Test>> {
    System::events()
        .into_iter()
        .filter_map(|record| match record.event {
            RuntimeEvent::SliverClock(event) => Some(event),
            _ => None,
        })
        .collect()
}

/// Builds test externalities.
#[derive(Default)]
pub struct ExtBuilder {
    initial_run: Option<TrainingRunParamsOf<Test>>,
    miners: Vec<(Uid, u64)>,
    salt: u64,
}

impl ExtBuilder {
    /// Start with `run` active (run 0).
    pub fn with_run(mut self, run: TrainingRunParamsOf<Test>) -> Self {
        self.initial_run = Some(run);
        self
    }

    /// Start with these miners registered.
    pub fn with_miners(mut self, miners: Vec<(Uid, u64)>) -> Self {
        self.miners = miners;
        self
    }

    /// Vary the parent hashes `run_to_block` sets.
    pub fn with_parent_hash_salt(mut self, salt: u64) -> Self {
        self.salt = salt;
        self
    }

    /// The externalities, at block 1 (whose `on_initialize` has nothing to do).
    pub fn build(self) -> sp_io::TestExternalities {
        MockRegistry::set_miners(self.miners);
        EPOCH_CHANGES.with(|c| c.borrow_mut().clear());
        PARENT_HASH_SALT.with(|s| *s.borrow_mut() = self.salt);
        let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
        pallet_sliver_clock::GenesisConfig::<Test> { initial_run: self.initial_run }
            .assimilate_storage(&mut storage)
            .unwrap();
        let mut ext = sp_io::TestExternalities::new(storage);
        ext.execute_with(|| {
            System::set_block_number(1);
            System::set_parent_hash(parent_hash_for(1));
        });
        ext
    }

    /// Run `test`, then check the pallet's invariants.
    pub fn build_and_execute(self, test: impl FnOnce()) {
        self.build().execute_with(|| {
            test();
            SliverClock::do_try_state().expect("try_state failed");
        });
    }
}

/// Externalities for the benchmark tests.
#[cfg(feature = "runtime-benchmarks")]
pub fn new_test_ext() -> sp_io::TestExternalities {
    ExtBuilder::default().build()
}
