//! Weights for `pallet_sliver_rewards`.
//!
//! PROVISIONAL: these figures are hand estimates, not measurements. They will be replaced by the
//! output of a real benchmark run (`frame-omni-bencher v1 benchmark pallet
//! --pallet=pallet_sliver_rewards ...`) on the Sliver runtime, keeping these function names and
//! signatures. Storage accesses are counted from the code; the reads of the registry and clock
//! pallets behind `Config::Registry` and `Config::Clock` are included as estimates.

#![cfg_attr(rustfmt, rustfmt_skip)]
#![allow(unused_parens)]
#![allow(unused_imports)]
#![allow(missing_docs)]

use frame_support::{traits::Get, weights::{Weight, constants::RocksDbWeight}};
use core::marker::PhantomData;

/// Weight functions needed for `pallet_sliver_rewards`.
pub trait WeightInfo {
    fn commit_weights() -> Weight;
    fn reveal_weights(n: u32, ) -> Weight;
    fn publish_weight_commitment() -> Weight;
    fn settle(v: u32, m: u32, ) -> Weight;
    fn on_uid_released() -> Weight;
}

/// Weights for `pallet_sliver_rewards` using the Sliver node and recommended hardware.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
    /// Registry: uid of the caller and its role; Clock: phase and epoch;
    /// `Rewards::WeightCommits` (r:1 w:1).
    fn commit_weights() -> Weight {
        Weight::from_parts(25_000_000, 3_600)
            .saturating_add(T::DbWeight::get().reads(5_u64))
            .saturating_add(T::DbWeight::get().writes(1_u64))
    }
    /// Registry: uid and role of the caller, role of each of the `n` miners; Clock: phase and
    /// epoch; `Rewards::WeightCommits` (r:1), `Rewards::Reveals` (r:1 w:1).
    /// The range of component `n` is `[1, MaxMiners]`.
    fn reveal_weights(n: u32, ) -> Weight {
        Weight::from_parts(35_000_000, 4_000)
            .saturating_add(Weight::from_parts(2_500_000, 2_600).saturating_mul(n.into()))
            .saturating_add(T::DbWeight::get().reads(6_u64))
            .saturating_add(T::DbWeight::get().reads((1_u64).saturating_mul(n.into())))
            .saturating_add(T::DbWeight::get().writes(1_u64))
    }
    /// Registry: uid and role of the caller; Clock: epoch; `Rewards::WeightCommitments`
    /// (r:1 w:1).
    fn publish_weight_commitment() -> Weight {
        Weight::from_parts(22_000_000, 3_600)
            .saturating_add(T::DbWeight::get().reads(4_u64))
            .saturating_add(T::DbWeight::get().writes(1_u64))
    }
    /// Registry: validators, miners and the `v + m` payees' accounts; `Rewards::Reveals`
    /// (r:v w:v), `Rewards::WeightCommits` (w:v), `Rewards::Bonds` (r:v*m w:v*m),
    /// `Rewards::LastIncentive` (w:2m), `System::Account` (r:1+v+m w:1+v+m).
    /// The range of component `v` is `[1, MaxValidators]`.
    /// The range of component `m` is `[1, MaxMiners]`.
    fn settle(v: u32, m: u32, ) -> Weight {
        Weight::from_parts(80_000_000, 8_000)
            .saturating_add(Weight::from_parts(20_000_000, 5_200).saturating_mul(v.into()))
            .saturating_add(Weight::from_parts(20_000_000, 5_200).saturating_mul(m.into()))
            .saturating_add(Weight::from_parts(4_000_000, 2_600).saturating_mul((v as u64).saturating_mul(m as u64)))
            .saturating_add(T::DbWeight::get().reads(4_u64))
            .saturating_add(T::DbWeight::get().reads((3_u64).saturating_mul(v.into())))
            .saturating_add(T::DbWeight::get().reads((2_u64).saturating_mul(m.into())))
            .saturating_add(T::DbWeight::get().reads((v as u64).saturating_mul(m as u64)))
            .saturating_add(T::DbWeight::get().writes(1_u64))
            .saturating_add(T::DbWeight::get().writes((3_u64).saturating_mul(v.into())))
            .saturating_add(T::DbWeight::get().writes((3_u64).saturating_mul(m.into())))
            .saturating_add(T::DbWeight::get().writes((v as u64).saturating_mul(m as u64)))
    }
    /// Worst case at `MaxValidators` validators and `MaxMiners` miners (estimated for 64 and
    /// 256): `Rewards::Bonds` (w:MaxMiners + MaxValidators), `Rewards::Reveals`
    /// (r:2*MaxValidators w:2*MaxValidators), `Rewards::WeightCommits` (w:2),
    /// `Rewards::LastIncentive` (w:1), `Rewards::WeightCommitments` (w:1).
    fn on_uid_released() -> Weight {
        Weight::from_parts(400_000_000, 1_400_000)
            .saturating_add(T::DbWeight::get().reads(132_u64))
            .saturating_add(T::DbWeight::get().writes(452_u64))
    }
}

// For backwards compatibility and tests.
impl WeightInfo for () {
    fn commit_weights() -> Weight {
        Weight::from_parts(25_000_000, 3_600)
            .saturating_add(RocksDbWeight::get().reads(5_u64))
            .saturating_add(RocksDbWeight::get().writes(1_u64))
    }
    fn reveal_weights(n: u32, ) -> Weight {
        Weight::from_parts(35_000_000, 4_000)
            .saturating_add(Weight::from_parts(2_500_000, 2_600).saturating_mul(n.into()))
            .saturating_add(RocksDbWeight::get().reads(6_u64))
            .saturating_add(RocksDbWeight::get().reads((1_u64).saturating_mul(n.into())))
            .saturating_add(RocksDbWeight::get().writes(1_u64))
    }
    fn publish_weight_commitment() -> Weight {
        Weight::from_parts(22_000_000, 3_600)
            .saturating_add(RocksDbWeight::get().reads(4_u64))
            .saturating_add(RocksDbWeight::get().writes(1_u64))
    }
    fn settle(v: u32, m: u32, ) -> Weight {
        Weight::from_parts(80_000_000, 8_000)
            .saturating_add(Weight::from_parts(20_000_000, 5_200).saturating_mul(v.into()))
            .saturating_add(Weight::from_parts(20_000_000, 5_200).saturating_mul(m.into()))
            .saturating_add(Weight::from_parts(4_000_000, 2_600).saturating_mul((v as u64).saturating_mul(m as u64)))
            .saturating_add(RocksDbWeight::get().reads(4_u64))
            .saturating_add(RocksDbWeight::get().reads((3_u64).saturating_mul(v.into())))
            .saturating_add(RocksDbWeight::get().reads((2_u64).saturating_mul(m.into())))
            .saturating_add(RocksDbWeight::get().reads((v as u64).saturating_mul(m as u64)))
            .saturating_add(RocksDbWeight::get().writes(1_u64))
            .saturating_add(RocksDbWeight::get().writes((3_u64).saturating_mul(v.into())))
            .saturating_add(RocksDbWeight::get().writes((3_u64).saturating_mul(m.into())))
            .saturating_add(RocksDbWeight::get().writes((v as u64).saturating_mul(m as u64)))
    }
    fn on_uid_released() -> Weight {
        Weight::from_parts(400_000_000, 1_400_000)
            .saturating_add(RocksDbWeight::get().reads(132_u64))
            .saturating_add(RocksDbWeight::get().writes(452_u64))
    }
}
