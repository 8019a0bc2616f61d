//! Weights for `pallet_sliver_registry`.
//!
//! PROVISIONAL: these figures are estimates written by hand, not measurements. They assume a
//! runtime with about 256 miner and 64 validator slots, 4 addresses of 128 bytes, an unlocking
//! queue of 32 chunks, and a rewards pallet whose `on_uid_released` and `score` cost a few
//! storage accesses. They will be replaced by the output of a real benchmark run
//! (`frame-omni-bencher v1 benchmark pallet --pallet=pallet_sliver_registry --extrinsic=*`)
//! with the same function names and signatures.
//!
//! Every benchmark runs at the worst case of its call (see `benchmarking.rs`); there are no
//! components.

#![cfg_attr(rustfmt, rustfmt_skip)]
#![allow(unused_parens)]
#![allow(unused_imports)]
#![allow(missing_docs)]
#![allow(dead_code)]

use frame_support::{traits::Get, weights::{Weight, constants::RocksDbWeight}};
use core::marker::PhantomData;

/// Weight functions needed for `pallet_sliver_registry`.
pub trait WeightInfo {
	fn register() -> Weight;
	fn update_endpoint() -> Weight;
	fn deregister() -> Weight;
	fn bond() -> Weight;
	fn unbond() -> Weight;
	fn withdraw_unbonded() -> Weight;
}

/// Weights for `pallet_sliver_registry` using the Substrate node and recommended hardware.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
	/// Storage: `SliverRegistry::UidOf` (r:1 w:1)
	/// Storage: `SliverRegistry::PeerKeyOwner` (r:1 w:2)
	/// Storage: `SliverRegistry::RegistrationNonce` (r:1 w:1)
	/// Storage: `System::BlockHash` (r:1 w:0)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Storage: `Balances::Account` / `System::Account` (r:1 w:1)
	/// Storage: clock's current epoch (r:1 w:0)
	/// Storage: `SliverRegistry::MinerCount` (r:1 w:1)
	/// Storage: `SliverRegistry::Registrations` (r:320 w:2), every registration is scanned
	/// Storage: rewards' scores (r:256 w:0)
	/// Storage: `SliverRegistry::Unlocking` (r:1 w:1), the replaced miner's
	/// Storage: rewards' per-uid state (r:5 w:5), `on_uid_released`
	fn register() -> Weight {
		Weight::from_parts(400_000_000, 230_000)
			.saturating_add(T::DbWeight::get().reads(590_u64))
			.saturating_add(T::DbWeight::get().writes(16_u64))
	}
	/// Storage: `SliverRegistry::UidOf` (r:1 w:0)
	/// Storage: `SliverRegistry::Registrations` (r:1 w:1)
	fn update_endpoint() -> Weight {
		Weight::from_parts(30_000_000, 3_600)
			.saturating_add(T::DbWeight::get().reads(2_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `SliverRegistry::UidOf` (r:1 w:1)
	/// Storage: `SliverRegistry::Registrations` (r:1 w:1)
	/// Storage: clock's current epoch (r:1 w:0)
	/// Storage: `SliverRegistry::Unlocking` (r:1 w:1)
	/// Storage: `SliverRegistry::PeerKeyOwner` (r:0 w:1)
	/// Storage: `SliverRegistry::ValidatorCount` (r:1 w:1)
	/// Storage: rewards' per-uid state (r:5 w:5), `on_uid_released`
	fn deregister() -> Weight {
		Weight::from_parts(60_000_000, 8_000)
			.saturating_add(T::DbWeight::get().reads(10_u64))
			.saturating_add(T::DbWeight::get().writes(10_u64))
	}
	/// Storage: `SliverRegistry::UidOf` (r:1 w:0)
	/// Storage: `SliverRegistry::Registrations` (r:1 w:1)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Storage: `Balances::Account` / `System::Account` (r:1 w:1)
	fn bond() -> Weight {
		Weight::from_parts(60_000_000, 6_000)
			.saturating_add(T::DbWeight::get().reads(4_u64))
			.saturating_add(T::DbWeight::get().writes(3_u64))
	}
	/// Storage: `SliverRegistry::UidOf` (r:1 w:0)
	/// Storage: `SliverRegistry::Registrations` (r:1 w:1)
	/// Storage: clock's current epoch (r:1 w:0)
	/// Storage: `SliverRegistry::Unlocking` (r:1 w:1)
	fn unbond() -> Weight {
		Weight::from_parts(45_000_000, 5_000)
			.saturating_add(T::DbWeight::get().reads(4_u64))
			.saturating_add(T::DbWeight::get().writes(2_u64))
	}
	/// Storage: clock's current epoch (r:1 w:0)
	/// Storage: `SliverRegistry::Unlocking` (r:1 w:1)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Storage: `Balances::Account` / `System::Account` (r:1 w:1)
	fn withdraw_unbonded() -> Weight {
		Weight::from_parts(70_000_000, 5_000)
			.saturating_add(T::DbWeight::get().reads(4_u64))
			.saturating_add(T::DbWeight::get().writes(3_u64))
	}
}

// For backwards compatibility and tests.
impl WeightInfo for () {
	fn register() -> Weight {
		Weight::from_parts(400_000_000, 230_000)
			.saturating_add(RocksDbWeight::get().reads(590_u64))
			.saturating_add(RocksDbWeight::get().writes(16_u64))
	}
	fn update_endpoint() -> Weight {
		Weight::from_parts(30_000_000, 3_600)
			.saturating_add(RocksDbWeight::get().reads(2_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn deregister() -> Weight {
		Weight::from_parts(60_000_000, 8_000)
			.saturating_add(RocksDbWeight::get().reads(10_u64))
			.saturating_add(RocksDbWeight::get().writes(10_u64))
	}
	fn bond() -> Weight {
		Weight::from_parts(60_000_000, 6_000)
			.saturating_add(RocksDbWeight::get().reads(4_u64))
			.saturating_add(RocksDbWeight::get().writes(3_u64))
	}
	fn unbond() -> Weight {
		Weight::from_parts(45_000_000, 5_000)
			.saturating_add(RocksDbWeight::get().reads(4_u64))
			.saturating_add(RocksDbWeight::get().writes(2_u64))
	}
	fn withdraw_unbonded() -> Weight {
		Weight::from_parts(70_000_000, 5_000)
			.saturating_add(RocksDbWeight::get().reads(4_u64))
			.saturating_add(RocksDbWeight::get().writes(3_u64))
	}
}
