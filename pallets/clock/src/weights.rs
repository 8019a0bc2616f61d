//! Weights for `pallet_sliver_clock`.
//!
//! **PROVISIONAL.** These figures are hand estimates (storage accesses counted from the code,
//! execution time guessed from comparable FRAME pallets), not measurements. They will be
//! replaced by the output of a real benchmark run (`frame-omni-bencher v1 benchmark pallet
//! --pallet=pallet_sliver_clock --extrinsic=*`) with the same function names and signatures.
//!
//! `on_initialize_rotate` does not include [`sliver_primitives::OnEpochChange`], whose
//! implementer returns its own weight, nor the registry's `miners()` beyond what the benchmark
//! with the runtime's real registry measures.

#![cfg_attr(rustfmt, rustfmt_skip)]
#![allow(unused_parens)]
#![allow(unused_imports)]
#![allow(missing_docs)]

use frame_support::{traits::Get, weights::{Weight, constants::RocksDbWeight}};
use core::marker::PhantomData;

/// Weight functions needed for `pallet_sliver_clock`.
pub trait WeightInfo {
    fn set_training_run() -> Weight;
    fn force_new_epoch() -> Weight;
    fn on_initialize_idle() -> Weight;
    fn on_initialize_phase_change() -> Weight;
    fn on_initialize_rotate(m: u32, ) -> Weight;
}

/// Weights for `pallet_sliver_clock` using the Substrate node and recommended hardware.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
    /// Storage: `SliverClock::NextRunId` (r:1 w:1)
    /// Proof: `SliverClock::NextRunId` (`max_values`: Some(1), `max_size`: Some(4), added: 499, mode: `MaxEncodedLen`)
    /// Storage: `SliverClock::ActiveRun` (r:1 w:1)
    /// Proof: `SliverClock::ActiveRun` (`max_values`: Some(1), `max_size`: Some(4), added: 499, mode: `MaxEncodedLen`)
    /// Storage: `SliverClock::CurrentEpoch` (r:1 w:0)
    /// Proof: `SliverClock::CurrentEpoch` (`max_values`: Some(1), `max_size`: Some(4), added: 499, mode: `MaxEncodedLen`)
    /// Storage: `SliverClock::TrainingRuns` (r:0 w:1)
    /// Proof: `SliverClock::TrainingRuns` (`max_values`: None, `max_size`: Some(376), added: 2851, mode: `MaxEncodedLen`)
    fn set_training_run() -> Weight {
        // Proof Size summary in bytes:
        //  Measured:  `0`
        //  Estimated: `1489`
        Weight::from_parts(18_000_000, 1489)
            .saturating_add(T::DbWeight::get().reads(3_u64))
            .saturating_add(T::DbWeight::get().writes(3_u64))
    }
    /// Storage: `SliverClock::ForceNewEpoch` (r:1 w:1)
    /// Proof: `SliverClock::ForceNewEpoch` (`max_values`: Some(1), `max_size`: Some(1), added: 496, mode: `MaxEncodedLen`)
    fn force_new_epoch() -> Weight {
        // Proof Size summary in bytes:
        //  Measured:  `0`
        //  Estimated: `1486`
        Weight::from_parts(8_000_000, 1486)
            .saturating_add(T::DbWeight::get().reads(1_u64))
            .saturating_add(T::DbWeight::get().writes(1_u64))
    }
    /// Storage: `SliverClock::EpochStart` (r:1 w:0)
    /// Storage: `SliverClock::ForceNewEpoch` (r:1 w:0)
    /// Storage: `SliverClock::CurrentPhase` (r:1 w:0)
    fn on_initialize_idle() -> Weight {
        // Proof Size summary in bytes:
        //  Measured:  `0`
        //  Estimated: `1489`
        Weight::from_parts(4_000_000, 1489)
            .saturating_add(T::DbWeight::get().reads(3_u64))
    }
    /// Storage: `SliverClock::EpochStart` (r:1 w:0)
    /// Storage: `SliverClock::ForceNewEpoch` (r:1 w:0)
    /// Storage: `SliverClock::CurrentPhase` (r:1 w:1)
    /// Storage: `SliverClock::CurrentEpoch` (r:1 w:0)
    /// Storage: `System::Events` and `System::EventCount` (one event)
    fn on_initialize_phase_change() -> Weight {
        // Proof Size summary in bytes:
        //  Measured:  `0`
        //  Estimated: `1489`
        Weight::from_parts(9_000_000, 1489)
            .saturating_add(T::DbWeight::get().reads(4_u64))
            .saturating_add(T::DbWeight::get().writes(1_u64))
    }
    /// Storage: `SliverClock::EpochStart` (r:1 w:1)
    /// Storage: `SliverClock::ForceNewEpoch` (r:1 w:1)
    /// Storage: `SliverClock::CurrentEpoch` (r:1 w:1)
    /// Storage: `SliverClock::CurrentPhase` (r:0 w:1)
    /// Storage: `SliverClock::EpochSeed` (r:1 w:1)
    /// Storage: `SliverClock::PreviousEpochSeed` (r:0 w:1)
    /// Storage: `System::ParentHash` (r:1 w:0)
    /// Storage: `SliverClock::PendingRun` (r:1 w:1)
    /// Storage: `SliverClock::ActiveRun` (r:1 w:1)
    /// Storage: `SliverClock::TrainingRuns` (r:2 w:0)
    /// Storage: `SliverClock::SliverLoad` (r:1 w:1)
    /// Storage: `SliverClock::Assignment` (r:0 w:2m) (m removed, m inserted)
    /// The registry's miners (r:1+m w:0)
    /// The parameter `m` is `[0, MaxMiners]`.
    fn on_initialize_rotate(m: u32, ) -> Weight {
        // Proof Size summary in bytes:
        //  Measured:  `400 + m * (60 ±0)`
        //  Estimated: `6000 + m * (2600 ±0)`
        Weight::from_parts(45_000_000, 6000)
            // Standard Error: provisional
            .saturating_add(Weight::from_parts(12_000_000, 0).saturating_mul(m.into()))
            .saturating_add(T::DbWeight::get().reads(12_u64))
            .saturating_add(T::DbWeight::get().reads((1_u64).saturating_mul(m.into())))
            .saturating_add(T::DbWeight::get().writes(9_u64))
            .saturating_add(T::DbWeight::get().writes((2_u64).saturating_mul(m.into())))
            .saturating_add(Weight::from_parts(0, 2600).saturating_mul(m.into()))
    }
}

// For backwards compatibility and tests.
impl WeightInfo for () {
    fn set_training_run() -> Weight {
        Weight::from_parts(18_000_000, 1489)
            .saturating_add(RocksDbWeight::get().reads(3_u64))
            .saturating_add(RocksDbWeight::get().writes(3_u64))
    }
    fn force_new_epoch() -> Weight {
        Weight::from_parts(8_000_000, 1486)
            .saturating_add(RocksDbWeight::get().reads(1_u64))
            .saturating_add(RocksDbWeight::get().writes(1_u64))
    }
    fn on_initialize_idle() -> Weight {
        Weight::from_parts(4_000_000, 1489)
            .saturating_add(RocksDbWeight::get().reads(3_u64))
    }
    fn on_initialize_phase_change() -> Weight {
        Weight::from_parts(9_000_000, 1489)
            .saturating_add(RocksDbWeight::get().reads(4_u64))
            .saturating_add(RocksDbWeight::get().writes(1_u64))
    }
    fn on_initialize_rotate(m: u32, ) -> Weight {
        Weight::from_parts(45_000_000, 6000)
            .saturating_add(Weight::from_parts(12_000_000, 0).saturating_mul(m.into()))
            .saturating_add(RocksDbWeight::get().reads(12_u64))
            .saturating_add(RocksDbWeight::get().reads((1_u64).saturating_mul(m.into())))
            .saturating_add(RocksDbWeight::get().writes(9_u64))
            .saturating_add(RocksDbWeight::get().writes((2_u64).saturating_mul(m.into())))
            .saturating_add(Weight::from_parts(0, 2600).saturating_mul(m.into()))
    }
}
