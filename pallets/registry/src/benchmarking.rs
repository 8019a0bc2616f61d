//! Benchmarks of the registry, each call at its worst case.
//!
//! Peer signatures are made with the keystore of the benchmark externalities
//! (`sp_io::crypto::ed25519_generate` / `ed25519_sign`; the benchmark CLI and the mock register
//! one). Epochs are moved with [`Config::BenchmarkHelper`], which must drive [`Config::Clock`].

#![cfg(feature = "runtime-benchmarks")]

use super::*;
use crate::Pallet as Registry;
use alloc::vec;
use frame_benchmarking::v2::*;
use frame_support::traits::fungible::{Inspect, Mutate};
use frame_system::RawOrigin;
use sliver_primitives::{EpochClock, Uid};
use sp_runtime::{
    traits::{One, Saturating, Zero},
    KeyTypeId,
};

const SEED: u32 = 0;
/// Key type of the benchmarks' peer keys in the keystore.
const KEY_TYPE: KeyTypeId = KeyTypeId(*b"slvr");

/// The amount bonded and unbonded at a time: the minimum stake (at least 1).
fn unit<T: Config>() -> BalanceOf<T> {
    T::MinValidatorStake::get().max(One::one())
}

/// Gives `who` enough for a deposit and a full unlocking queue of stake.
fn fund<T: Config>(who: &T::AccountId)
where
    T::Currency: Mutate<T::AccountId>,
{
    let units: BalanceOf<T> = T::MaxUnlockingChunks::get().saturating_add(4).into();
    let amount = T::Currency::minimum_balance()
        .saturating_mul(10u32.into())
        .saturating_add(T::RegistrationDeposit::get())
        .saturating_add(unit::<T>().saturating_mul(units));
    T::Currency::set_balance(who, amount);
}

/// A fresh peer key and its signature over `who`'s registration message.
fn credentials<T: Config>(who: &T::AccountId) -> ([u8; 32], [u8; 64]) {
    let public = sp_io::crypto::ed25519_generate(KEY_TYPE, None);
    let message = Registry::<T>::registration_message(who, RegistrationNonce::<T>::get(who));
    let signature = sp_io::crypto::ed25519_sign(KEY_TYPE, &public, &message)
        .expect("the key was just generated in the keystore; qed");
    (public.0, signature.0)
}

/// `MaxAddresses` addresses of `MaxAddressLen` bytes of `fill`.
fn max_addresses<T: Config>(fill: u8) -> AddressesOf<T> {
    let address: AddressOf<T> =
        BoundedVec::truncate_from(vec![fill; T::MaxAddressLen::get() as usize]);
    BoundedVec::truncate_from(vec![address; T::MaxAddresses::get() as usize])
}

/// The largest valid hardware profile.
fn max_hardware<T: Config>() -> HardwareProfile {
    HardwareProfile {
        backend: Backend::Other,
        memory_mib: u32::MAX,
        throughput: T::MaxThroughput::get(),
    }
}

/// Sets the epoch and checks that the clock follows.
fn set_epoch<T: Config>(epoch: EpochIndex) -> Result<(), BenchmarkError> {
    T::BenchmarkHelper::set_epoch(epoch);
    if T::Clock::current_epoch() != epoch {
        return Err(BenchmarkError::Stop("BenchmarkHelper::set_epoch must drive Config::Clock"));
    }
    Ok(())
}

/// Funds `who` and registers it as `role` with maximal addresses.
fn register_as<T: Config>(who: &T::AccountId, role: Role) -> Result<Uid, BenchmarkError>
where
    T::Currency: Mutate<T::AccountId>,
{
    fund::<T>(who);
    let (peer_key, signature) = credentials::<T>(who);
    Registry::<T>::register(
        RawOrigin::Signed(who.clone()).into(),
        role,
        peer_key,
        signature,
        max_addresses::<T>(0x2f),
        max_hardware::<T>(),
    )?;
    UidOf::<T>::get(who).ok_or(BenchmarkError::Stop("registration failed"))
}

/// Fills `n` chunks of validator `who`'s unlocking queue, one per epoch from the current one on
/// (bond and unbond one unit in each). Leaves the clock at the epoch after the last.
fn fill_queue<T: Config>(who: &T::AccountId, n: u32) -> Result<(), BenchmarkError> {
    let start = T::Clock::current_epoch();
    for i in 0..n {
        set_epoch::<T>(start.saturating_add(i))?;
        Registry::<T>::bond(RawOrigin::Signed(who.clone()).into(), unit::<T>())?;
        Registry::<T>::unbond(RawOrigin::Signed(who.clone()).into(), unit::<T>())?;
    }
    set_epoch::<T>(start.saturating_add(n))
}

#[benchmarks(where T::Currency: Mutate<T::AccountId>)]
mod benchmarks {
    use super::*;

    /// All validator and miner slots taken, no miner immune: the newcomer replaces one after
    /// a scan of every registration. Maximal addresses everywhere.
    #[benchmark]
    fn register() -> Result<(), BenchmarkError> {
        set_epoch::<T>(0)?;
        for i in 0..T::MaxValidators::get() {
            register_as::<T>(&account("validator", i, SEED), Role::Validator)?;
        }
        for i in 0..T::MaxMiners::get() {
            register_as::<T>(&account("miner", i, SEED), Role::Miner)?;
        }
        set_epoch::<T>(T::ImmunityEpochs::get().saturating_add(1))?;
        let caller: T::AccountId = whitelisted_caller();
        fund::<T>(&caller);
        let (peer_key, signature) = credentials::<T>(&caller);

        #[extrinsic_call]
        _(
            RawOrigin::Signed(caller.clone()),
            Role::Miner,
            peer_key,
            signature,
            max_addresses::<T>(0x2f),
            max_hardware::<T>(),
        );

        assert!(UidOf::<T>::contains_key(&caller));
        assert_eq!(MinerCount::<T>::get(), T::MaxMiners::get());
        Ok(())
    }

    /// Maximal addresses replaced by maximal addresses.
    #[benchmark]
    fn update_endpoint() -> Result<(), BenchmarkError> {
        let caller: T::AccountId = whitelisted_caller();
        let uid = register_as::<T>(&caller, Role::Validator)?;
        let addresses = max_addresses::<T>(0x3a);

        #[extrinsic_call]
        _(RawOrigin::Signed(caller.clone()), addresses.clone(), max_hardware::<T>());

        assert_eq!(Registrations::<T>::get(uid).map(|r| r.addresses), Some(addresses));
        Ok(())
    }

    /// A bonded validator with a full unlocking queue: the deposit and stake are folded into
    /// the last chunk.
    #[benchmark]
    fn deregister() -> Result<(), BenchmarkError> {
        let caller: T::AccountId = whitelisted_caller();
        register_as::<T>(&caller, Role::Validator)?;
        fill_queue::<T>(&caller, T::MaxUnlockingChunks::get())?;
        Registry::<T>::bond(RawOrigin::Signed(caller.clone()).into(), unit::<T>())?;

        #[extrinsic_call]
        _(RawOrigin::Signed(caller.clone()));

        assert!(!UidOf::<T>::contains_key(&caller));
        assert_eq!(Unlocking::<T>::get(&caller).len() as u32, T::MaxUnlockingChunks::get());
        Ok(())
    }

    /// A validator's first bond.
    #[benchmark]
    fn bond() -> Result<(), BenchmarkError> {
        let caller: T::AccountId = whitelisted_caller();
        let uid = register_as::<T>(&caller, Role::Validator)?;

        #[extrinsic_call]
        _(RawOrigin::Signed(caller.clone()), unit::<T>());

        assert_eq!(Registrations::<T>::get(uid).map(|r| r.stake), Some(unit::<T>()));
        Ok(())
    }

    /// The unlocking queue has one free place: the new chunk is compared with every chunk,
    /// then appended.
    #[benchmark]
    fn unbond() -> Result<(), BenchmarkError> {
        let caller: T::AccountId = whitelisted_caller();
        let uid = register_as::<T>(&caller, Role::Validator)?;
        fill_queue::<T>(&caller, T::MaxUnlockingChunks::get().saturating_sub(1))?;
        Registry::<T>::bond(RawOrigin::Signed(caller.clone()).into(), unit::<T>())?;

        #[extrinsic_call]
        _(RawOrigin::Signed(caller.clone()), unit::<T>());

        assert_eq!(Registrations::<T>::get(uid).map(|r| r.stake), Some(Zero::zero()));
        assert_eq!(Unlocking::<T>::get(&caller).len() as u32, T::MaxUnlockingChunks::get());
        Ok(())
    }

    /// A full queue of matured chunks holding both deposit and stake.
    #[benchmark]
    fn withdraw_unbonded() -> Result<(), BenchmarkError> {
        let caller: T::AccountId = whitelisted_caller();
        register_as::<T>(&caller, Role::Validator)?;
        fill_queue::<T>(&caller, T::MaxUnlockingChunks::get())?;
        Registry::<T>::deregister(RawOrigin::Signed(caller.clone()).into())?;
        let last = Unlocking::<T>::get(&caller).iter().map(|c| c.release_epoch).max();
        set_epoch::<T>(last.unwrap_or_default())?;

        #[extrinsic_call]
        _(RawOrigin::Signed(caller.clone()));

        assert!(Unlocking::<T>::get(&caller).is_empty());
        Ok(())
    }

    impl_benchmark_test_suite!(Registry, crate::mock::new_test_ext(), crate::mock::Test);
}
