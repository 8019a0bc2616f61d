//! Unit tests of the rewards pallet.

use crate::{mock::*, *};
use frame_support::{
    assert_noop, assert_ok,
    traits::{fungible::Inspect as _, Hooks},
};
use sp_runtime::DispatchResult;

/// Validator uids, accounts and stakes of the standard set-up.
const V1: AccountId = 101;
const V2: AccountId = 102;
/// Miner uids 10, 11 and 12 are held by accounts 110, 111 and 112.
const MA: Uid = 10;
const MB: Uid = 11;
const MC: Uid = 12;
const SALT: [u8; 32] = [7; 32];

type MaxMinersOf = <Test as Config>::MaxMiners;

/// Two validators with stakes 60/40 (uids 1, 2) and three miners (uids 10, 11, 12).
fn setup() {
    register_validator(1, V1, 60);
    register_validator(2, V2, 40);
    register_miner(MA, 110);
    register_miner(MB, 111);
    register_miner(MC, 112);
}

fn bounded<X>(items: &[X]) -> BoundedVec<X, MaxMinersOf>
where
    X: Clone + core::fmt::Debug,
{
    items.to_vec().try_into().expect("within MaxMiners")
}

fn commit_raw(who: AccountId, uids: &[Uid], weights: &[u16], salt: [u8; 32]) -> DispatchResult {
    let hash = Rewards::commit_hash(&who, CurrentEpoch::get(), uids, weights, &salt);
    Rewards::commit_weights(RuntimeOrigin::signed(who), hash)
}

fn reveal_raw(who: AccountId, uids: &[Uid], weights: &[u16], salt: [u8; 32]) -> DispatchResult {
    Rewards::reveal_weights(RuntimeOrigin::signed(who), bounded(uids), bounded(weights), salt)
}

fn split(weights: &[(Uid, u16)]) -> (Vec<Uid>, Vec<u16>) {
    weights.iter().copied().unzip()
}

fn commit(who: AccountId, weights: &[(Uid, u16)]) -> DispatchResult {
    let (uids, ws) = split(weights);
    commit_raw(who, &uids, &ws, SALT)
}

fn reveal(who: AccountId, weights: &[(Uid, u16)]) -> DispatchResult {
    let (uids, ws) = split(weights);
    reveal_raw(who, &uids, &ws, SALT)
}

/// Commits and reveals `reveals` in `epoch`, without settling.
fn commit_and_reveal(epoch: EpochIndex, reveals: &[(AccountId, &[(Uid, u16)])]) {
    set_clock(epoch, Phase::Commit);
    for (who, weights) in reveals {
        assert_ok!(commit(*who, weights));
    }
    set_clock(epoch, Phase::Reveal);
    for (who, weights) in reveals {
        assert_ok!(reveal(*who, weights));
    }
}

/// Settles `epoch` as the clock would at the boundary.
fn settle(epoch: EpochIndex) -> Weight {
    set_clock(epoch + 1, Phase::Train);
    <Rewards as OnEpochChange>::on_epoch_change(epoch, epoch + 1)
}

/// A full epoch: commit, reveal, settlement.
fn run_epoch(epoch: EpochIndex, reveals: &[(AccountId, &[(Uid, u16)])]) {
    commit_and_reveal(epoch, reveals);
    settle(epoch);
}

/// The hand-computed epoch: V1 weights A and B equally, V2 weights A 1/2, B 1/4, C 1/4.
const V1_WEIGHTS: &[(Uid, u16)] = &[(MA, 1), (MB, 1), (MC, 0)];
const V2_WEIGHTS: &[(Uid, u16)] = &[(MA, 2), (MB, 1), (MC, 1)];

/// A bond of `millionths` / 10^6.
fn bond(millionths: u64) -> Perquintill {
    Perquintill::from_parts(millionths * 1_000_000_000_000)
}

fn balance(who: AccountId) -> Balance {
    Balances::balance(&who)
}

fn settled_events() -> Vec<Event<Test>> {
    System::events()
        .into_iter()
        .filter_map(|r| match r.event {
            RuntimeEvent::Rewards(e @ Event::EpochSettled { .. }) => Some(e),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Genesis and plumbing.

#[test]
fn genesis_funds_the_pot() {
    ExtBuilder::default().build_and_execute(|| {
        let pot = Rewards::pot_account();
        let expected: AccountId = RewardsPalletId::get().into_account_truncating();
        assert_eq!(pot, expected);
        assert_eq!(balance(pot), POT);
        assert_eq!(Balances::total_issuance(), POT);
    });
}

#[test]
fn genesis_without_endowment_leaves_the_pot_empty() {
    ExtBuilder::default().pot_endowment(0).build_and_execute(|| {
        assert_eq!(balance(Rewards::pot_account()), 0);
    });
}

#[test]
fn integrity_test_passes() {
    ExtBuilder::default().build_and_execute(|| {
        <Rewards as Hooks<u64>>::integrity_test();
    });
}

#[test]
fn commit_hash_is_blake2_of_the_scale_encoding() {
    ExtBuilder::default().build_and_execute(|| {
        let uids: Vec<Uid> = vec![10, 11];
        let weights: Vec<u16> = vec![3, 4];
        let expected =
            sp_io::hashing::blake2_256(&(V1, 5u32, uids.clone(), weights.clone(), SALT).encode());
        assert_eq!(Rewards::commit_hash(&V1, 5, &uids, &weights, &SALT), H256(expected));
        // Any change to the payload changes the hash.
        assert_ne!(
            Rewards::commit_hash(&V1, 5, &uids, &weights, &[8; 32]),
            Rewards::commit_hash(&V1, 5, &uids, &weights, &SALT)
        );
        assert_ne!(
            Rewards::commit_hash(&V2, 5, &uids, &weights, &SALT),
            Rewards::commit_hash(&V1, 5, &uids, &weights, &SALT)
        );
    });
}

// ---------------------------------------------------------------------------------------------
// commit_weights

#[test]
fn commit_weights_works() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        set_clock(3, Phase::Commit);
        let hash = H256::repeat_byte(1);
        assert_ok!(Rewards::commit_weights(RuntimeOrigin::signed(V1), hash));
        assert_eq!(WeightCommits::<Test>::get(3, 1), Some(hash));
        System::assert_last_event(Event::WeightsCommitted { uid: 1, epoch: 3, hash }.into());
    });
}

#[test]
fn commit_weights_requires_a_validator() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        set_clock(0, Phase::Commit);
        let hash = H256::repeat_byte(1);
        // Unregistered.
        assert_noop!(
            Rewards::commit_weights(RuntimeOrigin::signed(999), hash),
            Error::<Test>::NotValidator
        );
        // A miner.
        assert_noop!(
            Rewards::commit_weights(RuntimeOrigin::signed(110), hash),
            Error::<Test>::NotValidator
        );
        // Unsigned.
        assert_noop!(
            Rewards::commit_weights(RuntimeOrigin::none(), hash),
            sp_runtime::DispatchError::BadOrigin
        );
    });
}

#[test]
fn commit_weights_only_in_commit_phase() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        for phase in [Phase::Train, Phase::Reveal] {
            set_clock(0, phase);
            assert_noop!(
                Rewards::commit_weights(RuntimeOrigin::signed(V1), H256::zero()),
                Error::<Test>::WrongPhase
            );
        }
    });
}

#[test]
fn commit_weights_once_per_epoch() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        set_clock(0, Phase::Commit);
        assert_ok!(Rewards::commit_weights(RuntimeOrigin::signed(V1), H256::zero()));
        assert_noop!(
            Rewards::commit_weights(RuntimeOrigin::signed(V1), H256::repeat_byte(2)),
            Error::<Test>::AlreadyCommitted
        );
        // Another validator may commit.
        assert_ok!(Rewards::commit_weights(RuntimeOrigin::signed(V2), H256::zero()));
        // And the next epoch is a fresh start.
        settle(0);
        set_clock(1, Phase::Commit);
        assert_ok!(Rewards::commit_weights(RuntimeOrigin::signed(V1), H256::repeat_byte(2)));
    });
}

// ---------------------------------------------------------------------------------------------
// reveal_weights

#[test]
fn reveal_weights_works() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        set_clock(2, Phase::Commit);
        assert_ok!(commit(V1, V1_WEIGHTS));
        set_clock(2, Phase::Reveal);
        assert_ok!(reveal(V1, V1_WEIGHTS));
        assert_eq!(Reveals::<Test>::get(2, 1), Some(bounded(V1_WEIGHTS)));
        System::assert_last_event(Event::WeightsRevealed { uid: 1, epoch: 2 }.into());
    });
}

#[test]
fn reveal_weights_drops_miners_registered_this_epoch() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        // The uid of the first miner in V1's weights changed hands in epoch 2: whoever holds it
        // now did not do the work V1 committed to.
        let taken_over = V1_WEIGHTS[0].0;
        crate::mock::REGISTERED_AT.with(|r| r.borrow_mut().insert(taken_over, 2));
        set_clock(2, Phase::Commit);
        assert_ok!(commit(V1, V1_WEIGHTS));
        set_clock(2, Phase::Reveal);
        assert_ok!(reveal(V1, V1_WEIGHTS));
        let stored = Reveals::<Test>::get(2, 1).expect("the other weights are kept");
        assert!(stored.iter().all(|(m, _)| *m != taken_over));
        assert_eq!(stored.len(), V1_WEIGHTS.len() - 1);
        crate::mock::REGISTERED_AT.with(|r| r.borrow_mut().clear());
    });
}

#[test]
fn reveal_weights_requires_a_validator_and_the_reveal_phase() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        set_clock(0, Phase::Commit);
        assert_ok!(commit(V1, V1_WEIGHTS));
        assert_noop!(reveal(V1, V1_WEIGHTS), Error::<Test>::WrongPhase);
        set_clock(0, Phase::Train);
        assert_noop!(reveal(V1, V1_WEIGHTS), Error::<Test>::WrongPhase);
        set_clock(0, Phase::Reveal);
        assert_noop!(reveal(999, V1_WEIGHTS), Error::<Test>::NotValidator);
        assert_noop!(reveal(110, V1_WEIGHTS), Error::<Test>::NotValidator);
    });
}

#[test]
fn reveal_weights_requires_a_commit_of_this_epoch() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        set_clock(0, Phase::Reveal);
        assert_noop!(reveal(V1, V1_WEIGHTS), Error::<Test>::NoCommit);
        // A commit of the previous epoch does not count.
        set_clock(0, Phase::Commit);
        assert_ok!(commit(V1, V1_WEIGHTS));
        settle(0);
        set_clock(1, Phase::Reveal);
        assert_noop!(reveal(V1, V1_WEIGHTS), Error::<Test>::NoCommit);
    });
}

#[test]
fn reveal_weights_only_once() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        commit_and_reveal(0, &[(V1, V1_WEIGHTS)]);
        assert_noop!(reveal(V1, V1_WEIGHTS), Error::<Test>::AlreadyRevealed);
    });
}

#[test]
fn reveal_weights_must_match_the_commit() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        set_clock(0, Phase::Commit);
        assert_ok!(commit(V1, V1_WEIGHTS));
        set_clock(0, Phase::Reveal);
        let (uids, weights) = split(V1_WEIGHTS);
        // Wrong salt.
        assert_noop!(reveal_raw(V1, &uids, &weights, [8; 32]), Error::<Test>::CommitMismatch);
        // Other weights.
        assert_noop!(reveal(V1, V2_WEIGHTS), Error::<Test>::CommitMismatch);
        // Same weights, other order.
        assert_noop!(reveal(V1, &[(MB, 1), (MA, 1), (MC, 0)]), Error::<Test>::CommitMismatch);
        assert_ok!(reveal(V1, V1_WEIGHTS));
    });
}

#[test]
fn reveal_weights_validates_the_shape() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        // Each bad payload is committed honestly, so that only the shape check can fail.
        let cases: Vec<(Vec<Uid>, Vec<u16>, Error<Test>)> = vec![
            (vec![MA, MB], vec![1], Error::<Test>::LengthMismatch),
            (vec![MA], vec![1, 2], Error::<Test>::LengthMismatch),
            (vec![], vec![], Error::<Test>::EmptyWeights),
            (vec![MA, MB, MA], vec![1, 1, 1], Error::<Test>::DuplicateUid),
            (vec![MA, MB], vec![0, 0], Error::<Test>::ZeroWeights),
        ];
        for (epoch, (uids, weights, error)) in cases.into_iter().enumerate() {
            let epoch = epoch as EpochIndex;
            set_clock(epoch, Phase::Commit);
            assert_ok!(commit_raw(V1, &uids, &weights, SALT));
            set_clock(epoch, Phase::Reveal);
            assert_noop!(reveal_raw(V1, &uids, &weights, SALT), error);
            settle(epoch);
        }
    });
}

#[test]
fn reveal_weights_accepts_the_maximum_number_of_miners() {
    ExtBuilder::default().build_and_execute(|| {
        register_validator(1, V1, 1);
        let weights: Vec<(Uid, u16)> = (0..MAX_MINERS as Uid).map(|k| (100 + k, k + 1)).collect();
        for (uid, _) in &weights {
            register_miner(*uid, 1_000 + AccountId::from(*uid));
        }
        commit_and_reveal(0, &[(V1, &weights)]);
        assert_eq!(Reveals::<Test>::get(0, 1).map(|r| r.len()), Some(MAX_MINERS as usize));
    });
}

// ---------------------------------------------------------------------------------------------
// publish_weight_commitment

#[test]
fn publish_weight_commitment_works() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        set_clock(4, Phase::Train);
        System::set_block_number(9);
        let hash = H256::repeat_byte(0xab);
        assert_ok!(Rewards::publish_weight_commitment(RuntimeOrigin::signed(110), hash, 1_024, 5));
        assert_eq!(
            WeightCommitments::<Test>::get(MA),
            Some(Commitment { epoch: 4, hash, size: 1_024, step: 5, block: 9 })
        );
        System::assert_last_event(
            Event::WeightCommitmentPublished { uid: MA, epoch: 4, hash, size: 1_024, step: 5 }
                .into(),
        );
        // The same step may be republished, and later steps replace it.
        let hash2 = H256::repeat_byte(0xcd);
        assert_ok!(Rewards::publish_weight_commitment(RuntimeOrigin::signed(110), hash2, 2, 5));
        assert_ok!(Rewards::publish_weight_commitment(RuntimeOrigin::signed(110), hash, 3, 6));
        assert_eq!(WeightCommitments::<Test>::get(MA).map(|c| (c.step, c.size)), Some((6, 3)));
    });
}

#[test]
fn publish_weight_commitment_requires_a_miner() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        assert_noop!(
            Rewards::publish_weight_commitment(RuntimeOrigin::signed(999), H256::zero(), 1, 1),
            Error::<Test>::NotMiner
        );
        assert_noop!(
            Rewards::publish_weight_commitment(RuntimeOrigin::signed(V1), H256::zero(), 1, 1),
            Error::<Test>::NotMiner
        );
    });
}

#[test]
fn publish_weight_commitment_rejects_zero_size_and_stale_steps() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        assert_noop!(
            Rewards::publish_weight_commitment(RuntimeOrigin::signed(110), H256::zero(), 0, 1),
            Error::<Test>::ZeroSize
        );
        assert_ok!(Rewards::publish_weight_commitment(
            RuntimeOrigin::signed(110),
            H256::zero(),
            10,
            7
        ));
        assert_noop!(
            Rewards::publish_weight_commitment(RuntimeOrigin::signed(110), H256::zero(), 10, 6),
            Error::<Test>::StaleCommitment
        );
        // Steps are per uid.
        assert_ok!(Rewards::publish_weight_commitment(
            RuntimeOrigin::signed(111),
            H256::zero(),
            10,
            1
        ));
    });
}

// ---------------------------------------------------------------------------------------------
// Settlement

#[test]
fn full_epoch_pays_the_hand_computed_amounts() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        EmissionPerEpoch::set(90_001);
        let pot = Rewards::pot_account();
        let issuance = Balances::total_issuance();

        commit_and_reveal(0, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        let weight = settle(0);
        assert_eq!(weight, <() as WeightInfo>::settle(2, 3));

        // Consensus: C = (1/2, 1/2, 0); R = (0.5, 0.4, 0): incentives 5/9, 4/9, 0.
        // Miner pot 50% of 90_001 = 45_000: 25_000, 20_000, 0.
        assert_eq!(balance(110), 25_000);
        assert_eq!(balance(111), 20_000);
        assert_eq!(balance(112), 0);
        // Bonds (alpha = 10%): B1 = (0.06, 0.075), B2 = (0.04, 0.025): dividends 2:1 of 45_001.
        assert_eq!(balance(V1), 30_000);
        assert_eq!(balance(V2), 15_000);
        assert_eq!(balance(pot), POT - 90_000);
        assert_eq!(Balances::total_issuance(), issuance);

        System::assert_has_event(Event::MinerPaid { uid: MA, who: 110, amount: 25_000 }.into());
        System::assert_has_event(Event::MinerPaid { uid: MB, who: 111, amount: 20_000 }.into());
        System::assert_has_event(Event::ValidatorPaid { uid: 1, who: V1, amount: 30_000 }.into());
        System::assert_has_event(Event::ValidatorPaid { uid: 2, who: V2, amount: 15_000 }.into());
        System::assert_last_event(
            Event::EpochSettled {
                epoch: 0,
                emission: 90_001,
                paid_miners: 45_000,
                paid_validators: 45_000,
                dust: 1,
            }
            .into(),
        );

        assert_eq!(Bonds::<Test>::get(1, MA), Some(bond(60_000)));
        assert_eq!(Bonds::<Test>::get(1, MB), Some(bond(75_000)));
        assert_eq!(Bonds::<Test>::get(2, MA), Some(bond(40_000)));
        assert_eq!(Bonds::<Test>::get(2, MB), Some(bond(25_000)));
        assert_eq!(Bonds::<Test>::get(1, MC), None);
        assert_eq!(Bonds::<Test>::get(2, MC), None);

        assert_eq!(LastIncentive::<Test>::get(MA), Some(Perbill::from_rational(5u32, 9u32)));
        assert_eq!(LastIncentive::<Test>::get(MB), Some(Perbill::from_rational(4u32, 9u32)));
        assert_eq!(LastIncentive::<Test>::get(MC), None);
        assert_eq!(<Rewards as MinerScores>::score(MA), 555_555_555);
        assert_eq!(<Rewards as MinerScores>::score(MB), 444_444_444);
        assert_eq!(<Rewards as MinerScores>::score(MC), 0);

        // The epoch's commits and reveals are gone.
        assert_eq!(WeightCommits::<Test>::iter_prefix(0).count(), 0);
        assert_eq!(Reveals::<Test>::iter_prefix(0).count(), 0);
    });
}

#[test]
fn bonds_are_an_exponential_moving_average_across_epochs() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        run_epoch(0, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        let (v1_before, v2_before) = (balance(V1), balance(V2));
        let (a_before, b_before) = (balance(110), balance(111));

        // In epoch 1, V2 comes round to V1's (the consensus) view.
        run_epoch(1, &[(V1, V1_WEIGHTS), (V2, V1_WEIGHTS)]);
        // B = 10% * dB + 90% * B(old), with dB = (0.6, 0.6) for V1 and (0.4, 0.4) for V2.
        assert_eq!(Bonds::<Test>::get(1, MA), Some(bond(114_000)));
        assert_eq!(Bonds::<Test>::get(1, MB), Some(bond(127_500)));
        assert_eq!(Bonds::<Test>::get(2, MA), Some(bond(76_000)));
        assert_eq!(Bonds::<Test>::get(2, MB), Some(bond(62_500)));

        // Miners: R = (0.5, 0.5): 22_500 each. Validators: D = (0.12075, 0.06925) of 45_000:
        // V1, which agreed with consensus from the start, earns more than its 60% stake share.
        assert_eq!(balance(110) - a_before, 22_500);
        assert_eq!(balance(111) - b_before, 22_500);
        assert_eq!(balance(V1) - v1_before, 28_598);
        assert_eq!(balance(V2) - v2_before, 16_401);
        System::assert_last_event(
            Event::EpochSettled {
                epoch: 1,
                emission: 90_000,
                paid_miners: 45_000,
                paid_validators: 44_999,
                dust: 1,
            }
            .into(),
        );
        assert_eq!(<Rewards as MinerScores>::score(MA), 500_000_000);
    });
}

#[test]
fn silent_validators_earn_nothing_and_their_bonds_decay() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        run_epoch(0, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        let v2_before = balance(V2);
        let v1_before = balance(V1);

        run_epoch(1, &[(V1, V1_WEIGHTS)]);
        assert_eq!(balance(V2), v2_before);
        assert_eq!(balance(V1) - v1_before, 45_000);
        // V2's bonds decay by (1 - alpha); V1 takes the whole delta.
        assert_eq!(Bonds::<Test>::get(2, MA), Some(bond(36_000)));
        assert_eq!(Bonds::<Test>::get(2, MB), Some(bond(22_500)));
        assert_eq!(Bonds::<Test>::get(1, MA), Some(bond(154_000)));
        assert_eq!(Bonds::<Test>::get(1, MB), Some(bond(167_500)));
    });
}

#[test]
fn weights_of_uids_that_are_not_miners_are_dropped_at_reveal() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        // Uid 2 is a validator and 77 is free: a miner that left after the commit must not be
        // able to void the validator's reveal.
        let (uids, weights) = (vec![MA, 2, 77], vec![1, 1, 1]);
        set_clock(0, Phase::Commit);
        assert_ok!(commit_raw(V1, &uids, &weights, SALT));
        set_clock(0, Phase::Reveal);
        assert_ok!(reveal_raw(V1, &uids, &weights, SALT));
        assert_eq!(Reveals::<Test>::get(0, 1), Some(bounded(&[(MA, 1)])));
    });
}

#[test]
fn no_payout_without_a_quorum_of_stake() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        let (v1, v2) = (balance(V1), balance(V2));
        let miners = [balance(110), balance(111), balance(112)];
        // V2 holds 40% of the stake: alone it cannot decide the epoch.
        run_epoch(0, &[(V2, V2_WEIGHTS)]);
        assert_eq!((balance(V1), balance(V2)), (v1, v2));
        assert_eq!([balance(110), balance(111), balance(112)], miners);
        assert!(Bonds::<Test>::iter().next().is_none());
    });
}

#[test]
fn committing_without_revealing_earns_nothing() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        set_clock(0, Phase::Commit);
        assert_ok!(commit(V1, V1_WEIGHTS));
        assert_ok!(commit(V2, V2_WEIGHTS));
        set_clock(0, Phase::Reveal);
        assert_ok!(reveal(V1, V1_WEIGHTS));
        settle(0);
        // Only V1's weights count (V1 holds 60% of the stake, a quorum): consensus is V1's view
        // and V1 gets every dividend.
        assert_eq!(balance(V2), 0);
        assert_eq!(balance(V1), 45_000);
        assert_eq!(balance(110), 22_500);
        assert_eq!(balance(111), 22_500);
        assert_eq!(balance(112), 0);
        assert_eq!(WeightCommits::<Test>::iter_prefix(0).count(), 0);
    });
}

#[test]
fn nobody_revealed_pays_nothing() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        set_clock(0, Phase::Commit);
        assert_ok!(commit(V1, V1_WEIGHTS));
        settle(0);
        assert_eq!(balance(Rewards::pot_account()), POT);
        System::assert_last_event(
            Event::EpochSettled {
                epoch: 0,
                emission: 0,
                paid_miners: 0,
                paid_validators: 0,
                dust: 0,
            }
            .into(),
        );
        assert_eq!(Bonds::<Test>::iter().count(), 0);
        assert_eq!(WeightCommits::<Test>::iter().count(), 0);
    });
}

#[test]
fn stakeless_validators_have_no_voice() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        register_validator(3, 103, 0);
        run_epoch(0, &[(103, V1_WEIGHTS)]);
        assert_eq!(balance(Rewards::pot_account()), POT);
        System::assert_last_event(
            Event::EpochSettled {
                epoch: 0,
                emission: 0,
                paid_miners: 0,
                paid_validators: 0,
                dust: 0,
            }
            .into(),
        );
    });
}

#[test]
fn empty_pot_pays_nothing() {
    ExtBuilder::default().pot_endowment(0).build_and_execute(|| {
        setup();
        run_epoch(0, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        System::assert_last_event(
            Event::EpochSettled {
                epoch: 0,
                emission: 0,
                paid_miners: 0,
                paid_validators: 0,
                dust: 0,
            }
            .into(),
        );
        assert_eq!(balance(110), 0);
        // Consensus still ran: bonds and scores are updated.
        assert_eq!(Bonds::<Test>::get(1, MA), Some(bond(60_000)));
        assert_eq!(<Rewards as MinerScores>::score(MA), 555_555_555);
    });
}

#[test]
fn a_small_pot_pays_what_it_can_and_stays_alive() {
    ExtBuilder::default().pot_endowment(10_001).build_and_execute(|| {
        setup();
        run_epoch(0, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        // Existential deposit 1: 10_000 can go.
        assert_eq!(balance(110), 2_777);
        assert_eq!(balance(111), 2_222);
        assert_eq!(balance(V1), 3_333);
        assert_eq!(balance(V2), 1_666);
        System::assert_last_event(
            Event::EpochSettled {
                epoch: 0,
                emission: 10_000,
                paid_miners: 4_999,
                paid_validators: 4_999,
                dust: 2,
            }
            .into(),
        );
        assert_eq!(balance(Rewards::pot_account()), 1 + 2);
    });
}

#[test]
fn zero_alpha_emits_no_validator_pot() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        BondsAlpha::set(Perbill::zero());
        run_epoch(0, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        assert_eq!(balance(V1), 0);
        System::assert_last_event(
            Event::EpochSettled {
                epoch: 0,
                emission: 45_000,
                paid_miners: 45_000,
                paid_validators: 0,
                dust: 0,
            }
            .into(),
        );
    });
}

#[test]
fn failed_payouts_stay_in_the_pot() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        NoAccountFor::set(Some(MA));
        EmissionPerEpoch::set(90_001);
        run_epoch(0, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        System::assert_has_event(Event::PayoutFailed { uid: MA, amount: 25_000 }.into());
        assert_eq!(balance(110), 0);
        System::assert_last_event(
            Event::EpochSettled {
                epoch: 0,
                emission: 90_001,
                paid_miners: 20_000,
                paid_validators: 45_000,
                dust: 25_001,
            }
            .into(),
        );
        assert_eq!(balance(Rewards::pot_account()), POT - 65_000);
    });
}

#[test]
fn settlement_conserves_currency() {
    ExtBuilder::default().balances(vec![(V1, 500), (110, 700)]).build_and_execute(|| {
        setup();
        register_validator(3, 103, 17);
        register_miner(13, 113);
        EmissionPerEpoch::set(77_777);
        let issuance = Balances::total_issuance();
        assert_eq!(issuance, POT + 1_200);
        let accounts = [Rewards::pot_account(), V1, V2, 103, 110, 111, 112, 113];
        let weights: [&[(Uid, u16)]; 4] = [
            &[(MA, 13), (MB, 7), (MC, 1), (13, 900)],
            &[(MA, 5), (MB, 1000), (13, 3)],
            &[(MC, 65_535), (13, 1)],
            &[(MA, 1), (MB, 2), (MC, 3), (13, 4)],
        ];
        for epoch in 0..12u32 {
            let w = |k: u32| weights[((epoch + k) % 4) as usize];
            run_epoch(epoch, &[(V1, w(0)), (V2, w(1)), (103, w(2))]);
            assert_eq!(Balances::total_issuance(), issuance);
            assert_eq!(accounts.iter().map(|a| balance(*a)).sum::<Balance>(), POT + 1_200);
        }
        let settled = settled_events();
        assert_eq!(settled.len(), 12);
        for event in settled {
            let Event::EpochSettled { emission, paid_miners, paid_validators, dust, .. } = event
            else {
                unreachable!()
            };
            assert_eq!(paid_miners + paid_validators + dust, emission);
            // 4 miners and 3 validators at most.
            assert!(dust < 7, "dust {dust}");
            assert_eq!(emission, 77_777);
        }
    });
}

#[test]
fn settlement_ignores_weights_of_miners_that_left() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        commit_and_reveal(0, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        // Miner C leaves without the release hook (defensive: settlement re-checks the roles).
        remove_from_registry(MC);
        settle(0);
        assert_eq!(balance(112), 0);
        assert!(Bonds::<Test>::iter().all(|(_, m, _)| m != MC));
        register_miner(MC, 112);
    });
}

// ---------------------------------------------------------------------------------------------
// Slot reuse

#[test]
fn a_new_holder_of_a_miner_uid_inherits_nothing() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        run_epoch(0, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        assert_ok!(Rewards::publish_weight_commitment(
            RuntimeOrigin::signed(110),
            H256::repeat_byte(1),
            10,
            100
        ));
        commit_and_reveal(1, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        assert!(Bonds::<Test>::get(1, MA).is_some());
        assert!(<Rewards as MinerScores>::score(MA) > 0);

        // Miner A leaves and somebody else takes uid 10.
        deregister(MA);
        assert_eq!(Bonds::<Test>::get(1, MA), None);
        assert_eq!(Bonds::<Test>::get(2, MA), None);
        assert_eq!(LastIncentive::<Test>::get(MA), None);
        assert_eq!(<Rewards as MinerScores>::score(MA), 0);
        assert_eq!(WeightCommitments::<Test>::get(MA), None);
        for reveal in Reveals::<Test>::iter_values() {
            assert!(reveal.iter().all(|(m, _)| *m != MA));
        }
        // The other miners' state is untouched.
        assert!(Bonds::<Test>::get(1, MB).is_some());
        assert!(LastIncentive::<Test>::get(MB).is_some());

        register_miner(MA, 999);
        // Its first commitment may start at any step.
        assert_ok!(Rewards::publish_weight_commitment(
            RuntimeOrigin::signed(999),
            H256::repeat_byte(2),
            10,
            1
        ));
        // The weights validators revealed for the previous holder pay the new one nothing.
        settle(1);
        assert_eq!(balance(999), 0);
        assert_eq!(Bonds::<Test>::iter().filter(|(_, m, _)| *m == MA).count(), 0);
        assert_eq!(<Rewards as MinerScores>::score(MA), 0);
    });
}

#[test]
fn a_new_holder_of_a_validator_uid_inherits_nothing() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        run_epoch(0, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        assert_eq!(Bonds::<Test>::iter_prefix(1).count(), 2);
        commit_and_reveal(1, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);

        deregister(1);
        assert_eq!(Bonds::<Test>::iter_prefix(1).count(), 0);
        assert_eq!(WeightCommits::<Test>::get(1, 1), None);
        assert_eq!(Reveals::<Test>::get(1, 1), None);
        // V2's state is untouched.
        assert_eq!(Bonds::<Test>::iter_prefix(2).count(), 2);
        assert!(Reveals::<Test>::get(1, 2).is_some());

        // The new holder of uid 1 starts clean: it may commit at once, and has no bonds.
        register_validator(1, 998, 60);
        set_clock(1, Phase::Commit);
        assert_ok!(commit(998, V1_WEIGHTS));
        set_clock(1, Phase::Reveal);
        assert_ok!(reveal(998, V1_WEIGHTS));
        settle(1);
        // Its bonds are this epoch's delta only: 10% * 0.6 (not 0.06 * 0.9 + 0.06).
        assert_eq!(Bonds::<Test>::get(1, MA), Some(bond(60_000)));
    });
}

#[test]
fn releasing_an_unknown_uid_is_harmless() {
    ExtBuilder::default().build_and_execute(|| {
        setup();
        run_epoch(0, &[(V1, V1_WEIGHTS), (V2, V2_WEIGHTS)]);
        let bonds = Bonds::<Test>::iter().count();
        let weight = <Rewards as OnUidReleased>::on_uid_released(500);
        assert_eq!(weight, <() as WeightInfo>::on_uid_released());
        assert_eq!(Bonds::<Test>::iter().count(), bonds);
    });
}

// ---------------------------------------------------------------------------------------------
// try_state

#[test]
fn try_state_detects_broken_invariants() {
    ExtBuilder::default().build().execute_with(|| {
        setup();
        set_clock(5, Phase::Train);
        assert_ok!(Rewards::do_try_state());

        WeightCommits::<Test>::insert(3, 1, H256::zero());
        assert!(Rewards::do_try_state().is_err());
        WeightCommits::<Test>::remove(3, 1);

        Reveals::<Test>::insert(5, 1, bounded(V1_WEIGHTS));
        assert!(Rewards::do_try_state().is_err());
        WeightCommits::<Test>::insert(5, 1, H256::zero());
        assert_ok!(Rewards::do_try_state());

        Bonds::<Test>::insert(MA, 1, bond(1));
        assert!(Rewards::do_try_state().is_err());
        Bonds::<Test>::remove(MA, 1);

        Bonds::<Test>::insert(1, 77, bond(1));
        assert!(Rewards::do_try_state().is_err());
        Bonds::<Test>::remove(1, 77);

        LastIncentive::<Test>::insert(1, Perbill::one());
        assert!(Rewards::do_try_state().is_err());
        LastIncentive::<Test>::remove(1);

        WeightCommitments::<Test>::insert(
            2,
            Commitment { epoch: 0, hash: H256::zero(), size: 1, step: 0, block: 1 },
        );
        assert!(Rewards::do_try_state().is_err());
        WeightCommitments::<Test>::remove(2);

        assert_ok!(Rewards::do_try_state());
    });
}
