//! The Sliver pallets together in the real runtime (natively, no node): registrations,
//! several epochs of commit and reveal, and payouts at every epoch boundary.

mod common;

use frame_support::traits::{fungible::Inspect, OnInitialize};
use sliver_primitives::{Phase, Role};
use sliver_runtime::{
    configs::EmissionPerEpoch, AccountId, Balances, Runtime, RuntimeCall, RuntimeEvent,
    RuntimeOrigin, SliverClock, SliverRegistry, SliverRewards, System, UNIT,
};
use sp_core::{ed25519, Pair, H256};
use sp_keyring::Sr25519Keyring as K;
use sp_runtime::traits::Dispatchable;

fn dev_ext() -> sp_io::TestExternalities {
    let mut ext = common::ext_for("development");
    ext.execute_with(|| System::set_block_number(1));
    ext
}

fn run_to_block(n: u32) {
    while System::block_number() < n {
        let next = System::block_number() + 1;
        System::set_block_number(next);
        <sliver_runtime::AllPalletsWithSystem as OnInitialize<u32>>::on_initialize(next);
    }
}

/// Runs blocks until the current epoch is in `phase`.
fn run_to_phase(phase: Phase) {
    let epoch = SliverClock::epoch_info().epoch;
    while SliverClock::epoch_info().phase != phase {
        run_to_block(System::block_number() + 1);
        assert_eq!(
            SliverClock::epoch_info().epoch,
            epoch,
            "{phase:?} not reached in epoch {epoch}"
        );
    }
}

/// Runs blocks until the next epoch starts.
fn run_to_next_epoch() {
    let epoch = SliverClock::epoch_info().epoch;
    while SliverClock::epoch_info().epoch == epoch {
        run_to_block(System::block_number() + 1);
    }
}

fn dispatch(who: &AccountId, call: RuntimeCall) {
    let result = call.dispatch(RuntimeOrigin::signed(who.clone()));
    assert!(result.is_ok(), "{result:?}");
}

fn register(k: K, role: Role, seed: u8) {
    let who = k.to_account_id();
    let peer = ed25519::Pair::from_seed(&[seed; 32]);
    let nonce = pallet_sliver_registry::RegistrationNonce::<Runtime>::get(&who);
    let message = SliverRegistry::registration_message(&who, nonce);
    let signature = peer.sign(&message);
    dispatch(
        &who,
        RuntimeCall::SliverRegistry(pallet_sliver_registry::Call::register {
            role,
            peer_key: peer.public().0,
            peer_signature: signature.0,
            addresses: vec![b"/ip4/127.0.0.1/tcp/4001".to_vec().try_into().unwrap()]
                .try_into()
                .unwrap(),
            hardware: pallet_sliver_registry::HardwareProfile {
                backend: pallet_sliver_registry::Backend::Cpu,
                memory_mib: 8192,
                throughput: 20_000 + u64::from(seed),
            },
        }),
    );
}

fn uid(k: K) -> u16 {
    pallet_sliver_registry::UidOf::<Runtime>::get(k.to_account_id()).expect("registered")
}

fn paid(event_filter: impl Fn(&RuntimeEvent) -> Option<(u16, u128)>) -> Vec<(u16, u128)> {
    System::events().iter().filter_map(|r| event_filter(&r.event)).collect()
}

#[test]
fn registrations_commits_reveals_and_payouts_over_several_epochs() {
    dev_ext().execute_with(|| {
        let issuance = Balances::total_issuance();
        register(K::Bob, Role::Miner, 1);
        register(K::Charlie, Role::Miner, 2);
        register(K::Dave, Role::Validator, 3);
        register(K::Eve, Role::Validator, 4);
        for (k, stake) in [(K::Dave, 600 * UNIT), (K::Eve, 400 * UNIT)] {
            dispatch(
                &k.to_account_id(),
                RuntimeCall::SliverRegistry(pallet_sliver_registry::Call::bond { amount: stake }),
            );
        }
        let (bob, charlie) = (uid(K::Bob), uid(K::Charlie));
        // Miners that register mid-epoch are assigned at the next boundary.
        assert!(SliverClock::assignments().is_empty());
        run_to_next_epoch();

        for round in 0..3u32 {
            // Miners are assigned to the two slivers of the training run at the boundary.
            run_to_phase(Phase::Commit);
            let epoch = SliverClock::epoch_info().epoch;
            let assignment = SliverClock::assignments();
            assert_eq!(assignment.len(), 2, "both miners assigned in epoch {epoch}");
            assert_ne!(assignment[0].1, assignment[1].1, "one miner per sliver");

            // Both validators rate Bob 3:1 over Charlie; Eve changes her mind in round 2.
            let plans = [(K::Dave, [3u16, 1]), (K::Eve, if round == 2 { [1, 3] } else { [3, 1] })];
            for (k, w) in plans {
                let who = k.to_account_id();
                let salt = [round as u8; 32];
                let hash: H256 =
                    SliverRewards::commit_hash(&who, epoch, &[bob, charlie], &w, &salt);
                dispatch(
                    &who,
                    RuntimeCall::SliverRewards(pallet_sliver_rewards::Call::commit_weights {
                        hash,
                    }),
                );
            }
            run_to_phase(Phase::Reveal);
            for (k, w) in plans {
                dispatch(
                    &k.to_account_id(),
                    RuntimeCall::SliverRewards(pallet_sliver_rewards::Call::reveal_weights {
                        uids: vec![bob, charlie].try_into().unwrap(),
                        weights: w.to_vec().try_into().unwrap(),
                        salt: [round as u8; 32],
                    }),
                );
            }
            System::reset_events();
            run_to_next_epoch();
            assert_eq!(SliverClock::epoch_info().epoch, epoch + 1);

            let miners = paid(|e| match e {
                RuntimeEvent::SliverRewards(pallet_sliver_rewards::Event::MinerPaid {
                    uid,
                    amount,
                    ..
                }) => Some((*uid, *amount)),
                _ => None,
            });
            let validators = paid(|e| match e {
                RuntimeEvent::SliverRewards(pallet_sliver_rewards::Event::ValidatorPaid {
                    uid,
                    amount,
                    ..
                }) => Some((*uid, *amount)),
                _ => None,
            });
            let miner_total: u128 = miners.iter().map(|m| m.1).sum();
            let validator_total: u128 = validators.iter().map(|v| v.1).sum();
            let emission = EmissionPerEpoch::get();
            assert!(miner_total + validator_total <= emission);
            assert!(emission - miner_total - validator_total < 10, "dust below the recipients");
            assert!(emission * 80 / 100 - miner_total < 2, "miners' share is 80%: {miner_total}");
            let bob_pay = miners.iter().find(|m| m.0 == bob).map(|m| m.1).unwrap_or(0);
            let charlie_pay = miners.iter().find(|m| m.0 == charlie).map(|m| m.1).unwrap_or(0);
            if round < 2 {
                assert_eq!(bob_pay, charlie_pay * 3, "consensus 3:1 pays 3:1 (round {round})");
            } else {
                // Eve (40% stake) alone disagrees: the stake-weighted median follows Dave.
                assert!(bob_pay > charlie_pay, "the majority's view wins (round {round})");
            }
            assert_eq!(validators.len(), 2, "both validators earn dividends");
        }
        assert_eq!(Balances::total_issuance(), issuance, "payouts move currency, never create it");
        assert!(Balances::balance(&SliverRewards::pot_account()) > 0);
        #[cfg(feature = "try-runtime")]
        {
            pallet_sliver_registry::Pallet::<Runtime>::do_try_state().unwrap();
            pallet_sliver_clock::Pallet::<Runtime>::do_try_state().unwrap();
            pallet_sliver_rewards::Pallet::<Runtime>::do_try_state().unwrap();
        }
    });
}
