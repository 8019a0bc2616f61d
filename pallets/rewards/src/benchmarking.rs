//! Benchmarks of the rewards pallet, each at its worst case.

#![cfg(feature = "runtime-benchmarks")]

use super::*;
use crate::Pallet as Rewards;
use frame_benchmarking::v2::*;
use frame_system::RawOrigin;
use sliver_primitives::Stake;

/// The epoch the benchmarks run in.
const EPOCH: EpochIndex = 7;
const SALT: [u8; 32] = [7; 32];

type Helper<T> = <T as Config>::BenchmarkHelper;
type Accounts<T> = Vec<(Uid, <T as frame_system::Config>::AccountId)>;

/// Registers `v` validators (uids `0..v`, distinct stakes) and `m` miners (uids `v..v + m`).
fn populate<T: Config>(v: u32, m: u32) -> (Accounts<T>, Accounts<T>) {
    let validators = (0..v)
        .map(|i| {
            let uid = i as Uid;
            (uid, Helper::<T>::register_validator(uid, Stake::from(i).saturating_add(1_000)))
        })
        .collect();
    let miners = (0..m)
        .map(|j| {
            let uid = v.saturating_add(j) as Uid;
            (uid, Helper::<T>::register_miner(uid))
        })
        .collect();
    (validators, miners)
}

/// Weights that differ between validators, so that the medians have real sorting to do.
fn weight_of(i: u32, j: u32) -> u16 {
    (i.wrapping_mul(7_919).wrapping_add(j.wrapping_mul(104_729)) % 1_000 + 1) as u16
}

/// Validator `i`'s full weights over `miners`.
fn full_weights<T: Config>(i: u32, miners: &Accounts<T>) -> BoundedVec<(Uid, u16), T::MaxMiners> {
    BoundedVec::truncate_from(
        miners.iter().enumerate().map(|(j, (uid, _))| (*uid, weight_of(i, j as u32))).collect(),
    )
}

/// Funds the pot for a full epoch and gives every payee the existential deposit, so that every
/// payout is a successful transfer.
fn fund<T: Config>(payees: &[&Accounts<T>]) {
    let ed = T::Currency::minimum_balance();
    let _ = T::Currency::set_balance(
        &Rewards::<T>::pot_account(),
        T::EmissionPerEpoch::get().saturating_mul(2u32.into()).saturating_add(ed),
    );
    for (_, who) in payees.iter().flat_map(|accounts| accounts.iter()) {
        let _ = T::Currency::set_balance(who, ed.max(1u32.into()));
    }
}

#[benchmarks]
mod benchmarks {
    use super::*;

    #[benchmark]
    fn commit_weights() {
        let (mut validators, _) = populate::<T>(1, 0);
        let (uid, who) = validators.pop().expect("one validator");
        Helper::<T>::set_epoch(EPOCH);
        Helper::<T>::set_phase(Phase::Commit);
        let hash = H256::repeat_byte(1);

        #[extrinsic_call]
        _(RawOrigin::Signed(who), hash);

        assert_eq!(WeightCommits::<T>::get(EPOCH, uid), Some(hash));
    }

    #[benchmark]
    fn reveal_weights(n: Linear<1, { T::MaxMiners::get() }>) {
        let (mut validators, miners) = populate::<T>(1, n);
        let (uid, who) = validators.pop().expect("one validator");
        let weights = full_weights::<T>(0, &miners);
        let (uids, raw): (Vec<Uid>, Vec<u16>) = weights.into_iter().unzip();
        Helper::<T>::set_epoch(EPOCH);
        WeightCommits::<T>::insert(
            EPOCH,
            uid,
            Rewards::<T>::commit_hash(&who, EPOCH, &uids, &raw, &SALT),
        );
        Helper::<T>::set_phase(Phase::Reveal);

        #[extrinsic_call]
        _(
            RawOrigin::Signed(who),
            BoundedVec::truncate_from(uids),
            BoundedVec::truncate_from(raw),
            SALT,
        );

        assert_eq!(Reveals::<T>::get(EPOCH, uid).map(|r| r.len() as u32), Some(n));
    }

    #[benchmark]
    fn publish_weight_commitment() {
        let (_, mut miners) = populate::<T>(0, 1);
        let (uid, who) = miners.pop().expect("one miner");
        Helper::<T>::set_epoch(EPOCH);
        WeightCommitments::<T>::insert(
            uid,
            Commitment {
                epoch: EPOCH,
                hash: H256::zero(),
                size: 1,
                step: 1,
                block: frame_system::Pallet::<T>::block_number(),
            },
        );

        #[extrinsic_call]
        _(RawOrigin::Signed(who), H256::repeat_byte(2), 1_000_000, 2);

        assert_eq!(WeightCommitments::<T>::get(uid).map(|c| c.step), Some(2));
    }

    /// Settlement of an epoch (`OnEpochChange::on_epoch_change`) in which all `v` validators
    /// revealed weights for all `m` miners, with every bond present and every payout made.
    #[benchmark]
    fn settle(v: Linear<1, { T::MaxValidators::get() }>, m: Linear<1, { T::MaxMiners::get() }>) {
        let (validators, miners) = populate::<T>(v, m);
        fund::<T>(&[&validators, &miners]);
        for (i, (uid, _)) in validators.iter().enumerate() {
            WeightCommits::<T>::insert(EPOCH, uid, H256::zero());
            Reveals::<T>::insert(EPOCH, uid, full_weights::<T>(i as u32, &miners));
            for (miner, _) in &miners {
                Bonds::<T>::insert(uid, miner, Perquintill::from_percent(10));
            }
        }
        for (miner, _) in &miners {
            LastIncentive::<T>::insert(miner, Perbill::from_percent(1));
        }
        Helper::<T>::set_epoch(EPOCH.saturating_add(1));
        Helper::<T>::set_phase(Phase::Train);

        #[block]
        {
            let _ = <Rewards<T> as OnEpochChange>::on_epoch_change(EPOCH, EPOCH.saturating_add(1));
        }

        assert_eq!(Reveals::<T>::iter_prefix(EPOCH).count(), 0);
        assert_eq!(WeightCommits::<T>::iter_prefix(EPOCH).count(), 0);
    }

    /// Release of a miner uid at full size: `MaxValidators` validators with bonds to
    /// `MaxMiners` miners and full reveals in the current and previous epochs. The released uid
    /// also gets a full bond row, so that both cleanup paths run at their maximum.
    #[benchmark]
    fn on_uid_released() {
        let (validators, miners) = populate::<T>(T::MaxValidators::get(), T::MaxMiners::get());
        let (target, _) = miners.last().cloned().expect("MaxMiners > 0");
        Helper::<T>::set_epoch(EPOCH);
        for epoch in [EPOCH.saturating_sub(1), EPOCH] {
            for (i, (uid, _)) in validators.iter().enumerate() {
                WeightCommits::<T>::insert(epoch, uid, H256::zero());
                Reveals::<T>::insert(epoch, uid, full_weights::<T>(i as u32, &miners));
            }
        }
        let rows = validators.iter().map(|(uid, _)| *uid).chain(core::iter::once(target));
        for uid in rows {
            for (miner, _) in &miners {
                Bonds::<T>::insert(uid, miner, Perquintill::from_percent(10));
            }
        }
        LastIncentive::<T>::insert(target, Perbill::from_percent(1));
        WeightCommitments::<T>::insert(
            target,
            Commitment {
                epoch: EPOCH,
                hash: H256::zero(),
                size: 1,
                step: 1,
                block: frame_system::Pallet::<T>::block_number(),
            },
        );

        #[block]
        {
            let _ = <Rewards<T> as OnUidReleased>::on_uid_released(target);
        }

        assert_eq!(Bonds::<T>::iter_prefix(target).count(), 0);
        assert!(Bonds::<T>::iter().all(|(_, miner, _)| miner != target));
        assert!(Reveals::<T>::iter_values().all(|r| r.iter().all(|(miner, _)| *miner != target)));
        assert_eq!(LastIncentive::<T>::get(target), None);
        assert_eq!(WeightCommitments::<T>::get(target), None);
    }

    impl_benchmark_test_suite!(Rewards, crate::mock::new_test_ext(), crate::mock::Test);
}
