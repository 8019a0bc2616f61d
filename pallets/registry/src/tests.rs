//! Tests of the registry. Every test ends with the registry's `try_state` checks (through
//! `ExtBuilder::build_and_execute`).

use crate::{
    mock::*, Error, Event, HoldReason, MinerCount, PeerKeyOwner, Registration, RegistrationNonce,
    Registrations, UidOf, UnlockChunk, Unlocking, ValidatorCount, PEER_ID_ED25519_PREFIX,
    REGISTRATION_CONTEXT, SMALL_ORDER_KEYS,
};
use codec::Encode;
use frame_support::{
    assert_noop, assert_ok,
    traits::{
        fungible::{self, InspectHold},
        Hooks,
    },
};
use proptest::prelude::*;
use sliver_primitives::{MinerScores, Registry as _, Role, Uid};
use sp_core::{Pair as _, H256};
use sp_runtime::{BoundedVec, StateVersion};

fn deposit_held(who: AccountId) -> Balance {
    Balances::balance_on_hold(&HoldReason::RegistrationDeposit.into(), &who)
}

fn stake_held(who: AccountId) -> Balance {
    Balances::balance_on_hold(&HoldReason::ValidatorStake.into(), &who)
}

fn free(who: AccountId) -> Balance {
    Balances::free_balance(who)
}

fn chunk(deposit: Balance, stake: Balance, release_epoch: u32) -> UnlockChunk<Balance> {
    UnlockChunk { deposit, stake, release_epoch }
}

fn queue(who: AccountId) -> Vec<UnlockChunk<Balance>> {
    Unlocking::<Test>::get(who).into_inner()
}

fn signed(who: AccountId) -> RuntimeOrigin {
    RuntimeOrigin::signed(who)
}

/// Registers `who` with an explicit key, signature, addresses and hardware.
fn register_with(
    who: AccountId,
    role: Role,
    peer_key: [u8; 32],
    signature: [u8; 64],
) -> sp_runtime::DispatchResult {
    Registry::register(signed(who), role, peer_key, signature, addresses(1, 4), hardware(100))
}

/// Base58 (bitcoin alphabet), as libp2p prints PeerIds.
fn base58(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut digits: Vec<u32> = Vec::new();
    for &byte in bytes {
        let mut carry = u32::from(byte);
        for digit in digits.iter_mut() {
            carry += *digit << 8;
            *digit = carry % 58;
            carry /= 58;
        }
        while carry > 0 {
            digits.push(carry % 58);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    std::iter::repeat_n('1', zeros)
        .chain(digits.iter().rev().map(|d| ALPHABET[*d as usize] as char))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// register
// ---------------------------------------------------------------------------------------------

#[test]
fn register_miner_works() {
    ExtBuilder::default().build_and_execute(|| {
        Epoch::set(5);
        let pair = peer(1);
        assert_ok!(Registry::register(
            signed(1),
            Role::Miner,
            pair.public().0,
            sign_for(&pair, 1),
            addresses(2, 8),
            hardware(500),
        ));

        assert_eq!(
            Registry::registration_of(0),
            Some(Registration {
                account: 1,
                role: Role::Miner,
                peer_key: peer_key(1),
                addresses: addresses(2, 8),
                hardware: hardware(500),
                registered_at: 5,
                deposit: DEPOSIT,
                stake: 0,
            })
        );
        assert_eq!(UidOf::<Test>::get(1), Some(0));
        assert_eq!(PeerKeyOwner::<Test>::get(peer_key(1)), Some(0));
        assert_eq!(MinerCount::<Test>::get(), 1);
        assert_eq!(ValidatorCount::<Test>::get(), 0);
        assert_eq!(RegistrationNonce::<Test>::get(1), 1);
        assert_eq!(deposit_held(1), DEPOSIT);
        assert_eq!(free(1), BALANCE - DEPOSIT);
        System::assert_last_event(
            Event::Registered { who: 1, uid: 0, role: Role::Miner, peer_key: peer_key(1) }.into(),
        );
    });
}

#[test]
fn register_validator_works() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Validator, 1));

        let registration = Registry::registration_of(0).unwrap();
        assert_eq!(registration.role, Role::Validator);
        assert_eq!(registration.stake, 0);
        assert_eq!(ValidatorCount::<Test>::get(), 1);
        assert_eq!(MinerCount::<Test>::get(), 0);
        assert_eq!(deposit_held(1), DEPOSIT);
        System::assert_last_event(
            Event::Registered { who: 1, uid: 0, role: Role::Validator, peer_key: peer_key(1) }
                .into(),
        );
    });
}

#[test]
fn register_takes_the_lowest_free_uid_of_the_shared_space() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Miner, 1));
        assert_ok!(register(2, Role::Validator, 2));
        assert_ok!(register(3, Role::Miner, 3));
        assert_eq!(
            [UidOf::<Test>::get(1), UidOf::<Test>::get(2), UidOf::<Test>::get(3)],
            [Some(0), Some(1), Some(2)]
        );

        assert_ok!(Registry::deregister(signed(2)));
        assert_ok!(register(4, Role::Miner, 4));
        assert_eq!(UidOf::<Test>::get(4), Some(1));
        assert_ok!(register(5, Role::Validator, 5));
        assert_eq!(UidOf::<Test>::get(5), Some(3));
    });
}

#[test]
fn register_rejects_a_signature_by_another_key() {
    ExtBuilder::default().build_and_execute(|| {
        let signature = sign_for(&peer(2), 1);
        assert_noop!(
            register_with(1, Role::Miner, peer_key(1), signature),
            Error::<Test>::InvalidPeerSignature
        );
    });
}

#[test]
fn register_rejects_a_signature_over_another_account() {
    ExtBuilder::default().build_and_execute(|| {
        let signature = sign_for(&peer(1), 2);
        assert_noop!(
            register_with(1, Role::Miner, peer_key(1), signature),
            Error::<Test>::InvalidPeerSignature
        );
        // The account it was made for can use it.
        assert_ok!(register_with(2, Role::Miner, peer_key(1), signature));
    });
}

#[test]
fn register_rejects_a_replayed_signature() {
    ExtBuilder::default().build_and_execute(|| {
        let pair = peer(1);
        let old_signature = sign_for(&pair, 1);
        assert_ok!(register_with(1, Role::Miner, peer_key(1), old_signature));
        assert_ok!(Registry::deregister(signed(1)));
        assert_eq!(RegistrationNonce::<Test>::get(1), 1);

        assert_noop!(
            register_with(1, Role::Miner, peer_key(1), old_signature),
            Error::<Test>::InvalidPeerSignature
        );
        // A signature over the new nonce works.
        assert_ok!(register_with(1, Role::Miner, peer_key(1), sign_for(&pair, 1)));
        assert_eq!(RegistrationNonce::<Test>::get(1), 2);
    });
}

#[test]
fn register_rejects_a_signature_for_another_chain() {
    ExtBuilder::default().build_and_execute(|| {
        let pair = peer(1);
        let other_chain = (REGISTRATION_CONTEXT, 1u64, H256::repeat_byte(7), 0u32).encode();
        assert_noop!(
            register_with(1, Role::Miner, peer_key(1), pair.sign(&other_chain).0),
            Error::<Test>::InvalidPeerSignature
        );

        let this_chain = (REGISTRATION_CONTEXT, 1u64, System::block_hash(0), 0u32).encode();
        assert_eq!(this_chain, Registry::registration_message(&1, 0));
        assert_ok!(register_with(1, Role::Miner, peer_key(1), pair.sign(&this_chain).0));
    });
}

#[test]
fn register_rejects_malformed_keys_and_signatures() {
    ExtBuilder::default().build_and_execute(|| {
        assert_noop!(
            register_with(1, Role::Miner, [0x5a; 32], [0; 64]),
            Error::<Test>::InvalidPeerSignature
        );
        assert_noop!(
            register_with(1, Role::Miner, peer_key(1), [0xff; 64]),
            Error::<Test>::InvalidPeerSignature
        );
        assert_noop!(
            register_with(1, Role::Miner, peer_key(1), [0; 64]),
            Error::<Test>::InvalidPeerSignature
        );
    });
}

#[test]
fn register_rejects_keys_of_small_order() {
    ExtBuilder::default().build_and_execute(|| {
        let message = Registry::registration_message(&1, 0);
        let zero = sp_core::ed25519::Signature::from_raw([0; 64]);
        for y in SMALL_ORDER_KEYS {
            for sign in [0, 0x80] {
                let mut key = y;
                key[31] |= sign;
                // The danger: the all-zero signature "verifies" for any message.
                assert!(sp_io::crypto::ed25519_verify(
                    &zero,
                    &message,
                    &sp_core::ed25519::Public::from_raw(key)
                ));
                assert!(Registry::is_weak_peer_key(&key));
                assert_noop!(
                    register_with(1, Role::Miner, key, [0; 64]),
                    Error::<Test>::WeakPeerKey
                );
            }
        }
        // Real keys are fine, and the zero signature means nothing for them.
        assert!(!Registry::is_weak_peer_key(&peer_key(1)));
        assert!(!sp_io::crypto::ed25519_verify(
            &zero,
            &message,
            &sp_core::ed25519::Public::from_raw(peer_key(1))
        ));
    });
}

#[test]
fn register_rejects_a_peer_key_in_use() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Miner, 1));
        let signature = sign_for(&peer(1), 2);
        assert_noop!(
            register_with(2, Role::Validator, peer_key(1), signature),
            Error::<Test>::PeerKeyInUse
        );

        // Free again once its holder leaves.
        assert_ok!(Registry::deregister(signed(1)));
        assert_ok!(register_with(2, Role::Validator, peer_key(1), signature));
        assert_eq!(PeerKeyOwner::<Test>::get(peer_key(1)), Some(0));
    });
}

#[test]
fn register_rejects_a_registered_account() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Miner, 1));
        assert_noop!(register(1, Role::Validator, 2), Error::<Test>::AlreadyRegistered);
        assert_noop!(register(1, Role::Miner, 1), Error::<Test>::AlreadyRegistered);
    });
}

#[test]
fn register_validates_the_endpoint() {
    ExtBuilder::default().build_and_execute(|| {
        let pair = peer(1);
        let attempt = |addresses, hardware| {
            Registry::register(
                signed(1),
                Role::Miner,
                pair.public().0,
                sign_for(&pair, 1),
                addresses,
                hardware,
            )
        };
        assert_noop!(attempt(addresses(1, 4), hardware(0)), Error::<Test>::InvalidThroughput);
        assert_noop!(
            attempt(addresses(1, 4), hardware(MaxThroughput::get() + 1)),
            Error::<Test>::InvalidThroughput
        );
        assert_noop!(attempt(addresses(0, 4), hardware(100)), Error::<Test>::NoAddresses);
        assert_noop!(attempt(addresses(1, 0), hardware(100)), Error::<Test>::EmptyAddress);
        let mixed: crate::AddressesOf<Test> =
            vec![BoundedVec::truncate_from(vec![1u8]), BoundedVec::new()].try_into().unwrap();
        assert_noop!(attempt(mixed, hardware(100)), Error::<Test>::EmptyAddress);

        assert_ok!(attempt(
            addresses(MAX_ADDRESSES, MAX_ADDRESS_LEN),
            hardware(MaxThroughput::get())
        ));
    });
}

#[test]
fn register_needs_the_deposit() {
    ExtBuilder::default().balance(30, DEPOSIT).balance(31, DEPOSIT + 1).build_and_execute(|| {
        // Holding the whole balance would reap the account.
        assert_noop!(register(30, Role::Miner, 30), Error::<Test>::InsufficientBalance);
        assert_noop!(register(32, Role::Miner, 32), Error::<Test>::InsufficientBalance);
        assert_ok!(register(31, Role::Miner, 31));
        assert_eq!(free(31), 1);
        assert_eq!(deposit_held(31), DEPOSIT);
    });
}

#[test]
fn register_rejects_a_validator_when_validator_slots_are_full() {
    ExtBuilder::default().build_and_execute(|| {
        for who in 1..=MAX_VALIDATORS as AccountId {
            assert_ok!(register(who, Role::Validator, who as u8));
        }
        assert_noop!(register(10, Role::Validator, 10), Error::<Test>::ValidatorSlotsFull);
        // Validators are never replaced, whatever the epoch.
        Epoch::set(100);
        assert_noop!(register(10, Role::Validator, 10), Error::<Test>::ValidatorSlotsFull);
        // Miner slots are separate.
        assert_ok!(register(10, Role::Miner, 10));
    });
}

// ---------------------------------------------------------------------------------------------
// Miner replacement
// ---------------------------------------------------------------------------------------------

#[test]
fn replacement_picks_the_lowest_scoring_miner() {
    ExtBuilder::default().build_and_execute(|| {
        for who in 1..=3 {
            assert_ok!(register(who, Role::Miner, who as u8));
        }
        set_score(0, 50);
        set_score(1, 10);
        set_score(2, 30);
        Epoch::set(IMMUNITY + 1);

        assert_ok!(register(4, Role::Miner, 4));

        assert_eq!(UidOf::<Test>::get(4), Some(1));
        assert_eq!(UidOf::<Test>::get(2), None);
        assert_eq!(MinerCount::<Test>::get(), MAX_MINERS);
        assert_eq!(released(), vec![1]);
        System::assert_has_event(Event::Deregistered { who: 2, uid: 1 }.into());
        System::assert_has_event(Event::MinerReplaced { uid: 1, old: 2, new: 4 }.into());
        System::assert_last_event(
            Event::Registered { who: 4, uid: 1, role: Role::Miner, peer_key: peer_key(4) }.into(),
        );
        // The replaced miner's deposit unlocks like on deregistration.
        assert_eq!(queue(2), vec![chunk(DEPOSIT, 0, IMMUNITY + 1 + UNBONDING)]);
        assert_eq!(deposit_held(2), DEPOSIT);
        assert_eq!(free(2), BALANCE - DEPOSIT);
    });
}

#[test]
fn replacement_ties_break_by_registration_epoch_then_uid() {
    ExtBuilder::default().build_and_execute(|| {
        for who in 1..=3 {
            assert_ok!(register(who, Role::Miner, who as u8));
        }
        Epoch::set(1);
        assert_ok!(Registry::deregister(signed(1)));
        assert_ok!(register(4, Role::Miner, 4));
        assert_eq!(UidOf::<Test>::get(4), Some(0));

        // Everybody scores 0; uid 1 and 2 registered earliest, uid 1 is lower.
        Epoch::set(1 + IMMUNITY + 1);
        assert_ok!(register(5, Role::Miner, 5));
        assert_eq!(UidOf::<Test>::get(5), Some(1));
        // Next: uid 2 (epoch 0) before uid 0 (epoch 1); uid 1 is immune now.
        assert_ok!(register(6, Role::Miner, 6));
        assert_eq!(UidOf::<Test>::get(6), Some(2));
        // Then uid 0.
        assert_ok!(register(7, Role::Miner, 7));
        assert_eq!(UidOf::<Test>::get(7), Some(0));
        assert_eq!(released(), vec![0, 1, 2, 0]);
    });
}

#[test]
fn immunity_blocks_replacement() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Miner, 1));
        assert_ok!(register(2, Role::Miner, 2));
        Epoch::set(1);
        assert_ok!(register(3, Role::Miner, 3));
        set_score(0, 5);
        set_score(1, 7);
        set_score(2, 0);

        // Immune through the registration epoch and IMMUNITY epochs after it.
        for epoch in 0..=IMMUNITY {
            Epoch::set(epoch);
            assert_noop!(register(4, Role::Miner, 4), Error::<Test>::NoReplaceableMiner);
        }
        assert!(Registry::is_immune(0, IMMUNITY));
        assert!(!Registry::is_immune(0, IMMUNITY + 1));

        // uid 2 scores lowest but is still immune (registered in epoch 1).
        Epoch::set(IMMUNITY + 1);
        assert_ok!(register(4, Role::Miner, 4));
        assert_eq!(UidOf::<Test>::get(4), Some(0));
        assert_eq!(UidOf::<Test>::get(3), Some(2));
    });
}

// ---------------------------------------------------------------------------------------------
// Slot reuse
// ---------------------------------------------------------------------------------------------

#[test]
fn slot_reuse_starts_clean() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Validator, 1));
        assert_ok!(Registry::bond(signed(1), 2 * MIN_STAKE));
        Epoch::set(2);
        assert_ok!(Registry::deregister(signed(1)));
        assert_eq!(released(), vec![0]);
        assert_eq!(Registry::registration_of(0), None);
        assert_eq!(PeerKeyOwner::<Test>::get(peer_key(1)), None);
        // The old holder's funds stay held, unlocking.
        assert_eq!(queue(1), vec![chunk(DEPOSIT, 2 * MIN_STAKE, 2 + UNBONDING)]);
        assert_eq!(stake_held(1), 2 * MIN_STAKE);

        Epoch::set(4);
        assert_ok!(register(2, Role::Validator, 2));
        assert_eq!(
            Registry::registration_of(0),
            Some(Registration {
                account: 2,
                role: Role::Validator,
                peer_key: peer_key(2),
                addresses: addresses(1, 4),
                hardware: hardware(100),
                registered_at: 4,
                deposit: DEPOSIT,
                stake: 0,
            })
        );
        assert_eq!(Registry::validators(), vec![(0, 0)]);
        assert_eq!(stake_held(2), 0);
    });
}

#[test]
fn slot_reuse_after_replacement_starts_clean() {
    ExtBuilder::default().build_and_execute(|| {
        for who in 1..=3 {
            assert_ok!(register(who, Role::Miner, who as u8));
        }
        set_score(0, 1);
        set_score(1, 9);
        set_score(2, 9);
        Epoch::set(IMMUNITY + 1);
        assert_ok!(register(4, Role::Miner, 4));

        assert_eq!(released(), vec![0]);
        // The release handler ran before the newcomer took the uid: its score is gone.
        assert_eq!(MockScores::score(0), 0);
        let registration = Registry::registration_of(0).unwrap();
        assert_eq!(registration.account, 4);
        assert_eq!(registration.peer_key, peer_key(4));
        assert_eq!(registration.registered_at, IMMUNITY + 1);
        assert_eq!(registration.stake, 0);
        assert_eq!(PeerKeyOwner::<Test>::get(peer_key(1)), None);
    });
}

// ---------------------------------------------------------------------------------------------
// update_endpoint
// ---------------------------------------------------------------------------------------------

#[test]
fn update_endpoint_works() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Miner, 1));
        assert_ok!(Registry::update_endpoint(
            signed(1),
            addresses(MAX_ADDRESSES, MAX_ADDRESS_LEN),
            hardware(777)
        ));

        let registration = Registry::registration_of(0).unwrap();
        assert_eq!(registration.addresses, addresses(MAX_ADDRESSES, MAX_ADDRESS_LEN));
        assert_eq!(registration.hardware, hardware(777));
        assert_eq!(Registry::miners(), vec![(0, 777)]);
        System::assert_last_event(Event::EndpointUpdated { who: 1, uid: 0 }.into());
    });
}

#[test]
fn update_endpoint_errors() {
    ExtBuilder::default().build_and_execute(|| {
        assert_noop!(
            Registry::update_endpoint(signed(1), addresses(1, 4), hardware(100)),
            Error::<Test>::NotRegistered
        );
        assert_ok!(register(1, Role::Miner, 1));
        assert_noop!(
            Registry::update_endpoint(signed(1), addresses(0, 4), hardware(100)),
            Error::<Test>::NoAddresses
        );
        assert_noop!(
            Registry::update_endpoint(signed(1), addresses(2, 0), hardware(100)),
            Error::<Test>::EmptyAddress
        );
        assert_noop!(
            Registry::update_endpoint(signed(1), addresses(1, 4), hardware(0)),
            Error::<Test>::InvalidThroughput
        );
        assert_noop!(
            Registry::update_endpoint(
                signed(1),
                addresses(1, 4),
                hardware(MaxThroughput::get() + 1)
            ),
            Error::<Test>::InvalidThroughput
        );
    });
}

// ---------------------------------------------------------------------------------------------
// deregister
// ---------------------------------------------------------------------------------------------

#[test]
fn deregister_works() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Miner, 1));
        Epoch::set(7);
        assert_ok!(Registry::deregister(signed(1)));

        assert_eq!(Registrations::<Test>::get(0), None);
        assert_eq!(UidOf::<Test>::get(1), None);
        assert_eq!(PeerKeyOwner::<Test>::get(peer_key(1)), None);
        assert_eq!(MinerCount::<Test>::get(), 0);
        assert_eq!(released(), vec![0]);
        assert_eq!(queue(1), vec![chunk(DEPOSIT, 0, 7 + UNBONDING)]);
        assert_eq!(deposit_held(1), DEPOSIT);
        assert_eq!(free(1), BALANCE - DEPOSIT);
        System::assert_last_event(Event::Deregistered { who: 1, uid: 0 }.into());
    });
}

#[test]
fn deregister_errors() {
    ExtBuilder::default().build_and_execute(|| {
        assert_noop!(Registry::deregister(signed(1)), Error::<Test>::NotRegistered);
        assert_ok!(register(1, Role::Validator, 1));
        assert_ok!(Registry::deregister(signed(1)));
        assert_noop!(Registry::deregister(signed(1)), Error::<Test>::NotRegistered);
    });
}

#[test]
fn deregister_with_a_full_queue_folds_into_the_last_chunk() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Validator, 1));
        for epoch in 0..MAX_CHUNKS {
            Epoch::set(epoch);
            assert_ok!(Registry::bond(signed(1), MIN_STAKE));
            assert_ok!(Registry::unbond(signed(1), MIN_STAKE));
        }
        assert_ok!(Registry::bond(signed(1), MIN_STAKE));
        Epoch::set(10);
        assert_ok!(Registry::deregister(signed(1)));

        let last = MAX_CHUNKS - 1;
        let mut expected: Vec<_> =
            (0..last).map(|epoch| chunk(0, MIN_STAKE, epoch + UNBONDING)).collect();
        expected.push(chunk(DEPOSIT, 2 * MIN_STAKE, 10 + UNBONDING));
        assert_eq!(queue(1), expected);

        // Nothing is released early: the folded chunk waits for the new release epoch.
        Epoch::set(10 + UNBONDING - 1);
        assert_ok!(Registry::withdraw_unbonded(signed(1)));
        assert_eq!(queue(1), vec![chunk(DEPOSIT, 2 * MIN_STAKE, 10 + UNBONDING)]);
        Epoch::set(10 + UNBONDING);
        assert_ok!(Registry::withdraw_unbonded(signed(1)));
        assert_eq!(free(1), BALANCE);
        assert!(!Unlocking::<Test>::contains_key(1));
    });
}

// ---------------------------------------------------------------------------------------------
// bond
// ---------------------------------------------------------------------------------------------

#[test]
fn bond_works() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Validator, 1));
        assert_ok!(Registry::bond(signed(1), MIN_STAKE));
        System::assert_last_event(Event::Bonded { who: 1, amount: MIN_STAKE }.into());
        // Once at the minimum, any amount can be added.
        assert_ok!(Registry::bond(signed(1), 1));

        assert_eq!(Registry::registration_of(0).unwrap().stake, MIN_STAKE + 1);
        assert_eq!(stake_held(1), MIN_STAKE + 1);
        assert_eq!(deposit_held(1), DEPOSIT);
        assert_eq!(free(1), BALANCE - DEPOSIT - MIN_STAKE - 1);
        assert_eq!(Registry::validators(), vec![(0, MIN_STAKE + 1)]);
        System::assert_last_event(Event::Bonded { who: 1, amount: 1 }.into());
    });
}

#[test]
fn bond_errors() {
    ExtBuilder::default().build_and_execute(|| {
        assert_noop!(Registry::bond(signed(1), MIN_STAKE), Error::<Test>::NotRegistered);
        assert_ok!(register(1, Role::Miner, 1));
        assert_noop!(Registry::bond(signed(1), MIN_STAKE), Error::<Test>::NotValidator);

        assert_ok!(register(2, Role::Validator, 2));
        assert_noop!(Registry::bond(signed(2), 0), Error::<Test>::ZeroAmount);
        assert_noop!(Registry::bond(signed(2), MIN_STAKE - 1), Error::<Test>::BelowMinimumStake);
        assert_noop!(
            Registry::bond(signed(2), BALANCE - DEPOSIT),
            Error::<Test>::InsufficientBalance
        );
        assert_ok!(Registry::bond(signed(2), BALANCE - DEPOSIT - 1));
        assert_eq!(free(2), 1);
        assert_noop!(
            Registry::bond(signed(2), Balance::MAX),
            sp_runtime::ArithmeticError::Overflow
        );
    });
}

// ---------------------------------------------------------------------------------------------
// unbond
// ---------------------------------------------------------------------------------------------

#[test]
fn unbond_works() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Validator, 1));
        assert_ok!(Registry::bond(signed(1), 3 * MIN_STAKE));
        Epoch::set(4);
        assert_ok!(Registry::unbond(signed(1), MIN_STAKE));
        System::assert_last_event(
            Event::Unbonded { who: 1, amount: MIN_STAKE, release_epoch: 4 + UNBONDING }.into(),
        );
        // Same epoch: merged.
        assert_ok!(Registry::unbond(signed(1), MIN_STAKE / 2));
        assert_eq!(queue(1), vec![chunk(0, MIN_STAKE + MIN_STAKE / 2, 4 + UNBONDING)]);
        // Next epoch: a new chunk; unbonding everything is allowed.
        Epoch::set(5);
        assert_ok!(Registry::unbond(signed(1), MIN_STAKE + MIN_STAKE / 2));
        assert_eq!(
            queue(1),
            vec![
                chunk(0, MIN_STAKE + MIN_STAKE / 2, 4 + UNBONDING),
                chunk(0, MIN_STAKE + MIN_STAKE / 2, 5 + UNBONDING)
            ]
        );

        assert_eq!(Registry::registration_of(0).unwrap().stake, 0);
        // Still held until withdrawn.
        assert_eq!(stake_held(1), 3 * MIN_STAKE);
        assert_eq!(free(1), BALANCE - DEPOSIT - 3 * MIN_STAKE);
    });
}

#[test]
fn unbond_errors() {
    ExtBuilder::default().build_and_execute(|| {
        assert_noop!(Registry::unbond(signed(1), 1), Error::<Test>::NotRegistered);
        assert_ok!(register(1, Role::Miner, 1));
        assert_noop!(Registry::unbond(signed(1), 1), Error::<Test>::NotValidator);

        assert_ok!(register(2, Role::Validator, 2));
        assert_ok!(Registry::bond(signed(2), 2 * MIN_STAKE));
        assert_noop!(Registry::unbond(signed(2), 0), Error::<Test>::ZeroAmount);
        assert_noop!(
            Registry::unbond(signed(2), 2 * MIN_STAKE + 1),
            Error::<Test>::InsufficientStake
        );
        assert_noop!(Registry::unbond(signed(2), MIN_STAKE + 1), Error::<Test>::BelowMinimumStake);
        assert_noop!(
            Registry::unbond(signed(2), 2 * MIN_STAKE - 1),
            Error::<Test>::BelowMinimumStake
        );
    });
}

#[test]
fn unbond_fails_on_a_full_queue() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Validator, 1));
        assert_ok!(Registry::bond(signed(1), 10 * MIN_STAKE));
        for epoch in 0..MAX_CHUNKS {
            Epoch::set(epoch);
            assert_ok!(Registry::unbond(signed(1), MIN_STAKE));
        }
        Epoch::set(MAX_CHUNKS);
        assert_noop!(Registry::unbond(signed(1), MIN_STAKE), Error::<Test>::TooManyUnlockingChunks);
        // Still merges into an existing chunk of the same release epoch.
        Epoch::set(MAX_CHUNKS - 1);
        assert_ok!(Registry::unbond(signed(1), MIN_STAKE));
        assert_eq!(queue(1).len(), MAX_CHUNKS as usize);
        // Withdrawing matured chunks makes room.
        Epoch::set(MAX_CHUNKS + UNBONDING);
        assert_ok!(Registry::withdraw_unbonded(signed(1)));
        assert_ok!(Registry::unbond(signed(1), MIN_STAKE));
        assert_eq!(queue(1), vec![chunk(0, MIN_STAKE, MAX_CHUNKS + 2 * UNBONDING)]);
    });
}

// ---------------------------------------------------------------------------------------------
// withdraw_unbonded
// ---------------------------------------------------------------------------------------------

#[test]
fn withdraw_respects_the_unbonding_delay() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Validator, 1));
        assert_ok!(Registry::bond(signed(1), 2 * MIN_STAKE));
        assert_ok!(Registry::unbond(signed(1), MIN_STAKE));

        for epoch in 0..UNBONDING {
            Epoch::set(epoch);
            assert_noop!(Registry::withdraw_unbonded(signed(1)), Error::<Test>::NothingToWithdraw);
        }
        Epoch::set(UNBONDING);
        assert_ok!(Registry::withdraw_unbonded(signed(1)));
        System::assert_last_event(Event::Withdrawn { who: 1, amount: MIN_STAKE }.into());

        assert_eq!(free(1), BALANCE - DEPOSIT - MIN_STAKE);
        assert_eq!(stake_held(1), MIN_STAKE);
        assert_eq!(deposit_held(1), DEPOSIT);
        assert!(!Unlocking::<Test>::contains_key(1));
        assert_noop!(Registry::withdraw_unbonded(signed(1)), Error::<Test>::NothingToWithdraw);
    });
}

#[test]
fn withdraw_releases_only_matured_chunks() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Validator, 1));
        assert_ok!(Registry::bond(signed(1), 3 * MIN_STAKE));
        assert_ok!(Registry::unbond(signed(1), MIN_STAKE));
        Epoch::set(2);
        assert_ok!(Registry::unbond(signed(1), MIN_STAKE));

        Epoch::set(UNBONDING + 1);
        assert_ok!(Registry::withdraw_unbonded(signed(1)));
        assert_eq!(queue(1), vec![chunk(0, MIN_STAKE, 2 + UNBONDING)]);
        assert_eq!(free(1), BALANCE - DEPOSIT - 2 * MIN_STAKE);
        assert_eq!(stake_held(1), 2 * MIN_STAKE);
    });
}

#[test]
fn withdraw_works_after_deregistration() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Validator, 1));
        assert_ok!(Registry::bond(signed(1), 2 * MIN_STAKE));
        Epoch::set(1);
        assert_ok!(Registry::unbond(signed(1), MIN_STAKE));
        Epoch::set(2);
        assert_ok!(Registry::deregister(signed(1)));
        assert_eq!(
            queue(1),
            vec![chunk(0, MIN_STAKE, 1 + UNBONDING), chunk(DEPOSIT, MIN_STAKE, 2 + UNBONDING)]
        );

        Epoch::set(1 + UNBONDING - 1);
        assert_noop!(Registry::withdraw_unbonded(signed(1)), Error::<Test>::NothingToWithdraw);
        Epoch::set(1 + UNBONDING);
        assert_ok!(Registry::withdraw_unbonded(signed(1)));
        System::assert_last_event(Event::Withdrawn { who: 1, amount: MIN_STAKE }.into());
        assert_eq!(free(1), BALANCE - DEPOSIT - MIN_STAKE);
        assert_noop!(Registry::withdraw_unbonded(signed(1)), Error::<Test>::NothingToWithdraw);

        Epoch::set(2 + UNBONDING);
        assert_ok!(Registry::withdraw_unbonded(signed(1)));
        System::assert_last_event(Event::Withdrawn { who: 1, amount: DEPOSIT + MIN_STAKE }.into());
        assert_eq!(free(1), BALANCE);
        assert_eq!(deposit_held(1), 0);
        assert_eq!(stake_held(1), 0);
        assert!(!Unlocking::<Test>::contains_key(1));
    });
}

#[test]
fn withdraw_errors_without_a_queue() {
    ExtBuilder::default().build_and_execute(|| {
        assert_noop!(Registry::withdraw_unbonded(signed(1)), Error::<Test>::NothingToWithdraw);
        assert_ok!(register(1, Role::Miner, 1));
        Epoch::set(100);
        assert_noop!(Registry::withdraw_unbonded(signed(1)), Error::<Test>::NothingToWithdraw);
    });
}

// ---------------------------------------------------------------------------------------------
// Registry trait, helpers, hooks
// ---------------------------------------------------------------------------------------------

#[test]
fn registry_trait_reports_registrations() {
    ExtBuilder::default().build_and_execute(|| {
        assert_ok!(register(1, Role::Validator, 1));
        assert_ok!(register(2, Role::Miner, 2));
        assert_ok!(register(3, Role::Validator, 3));
        assert_ok!(register(4, Role::Miner, 4));
        assert_ok!(Registry::update_endpoint(signed(4), addresses(1, 4), hardware(9)));
        assert_ok!(Registry::bond(signed(3), MIN_STAKE));

        assert_eq!(<Registry as sliver_primitives::Registry<_>>::uid_of(&3), Some(2));
        assert_eq!(<Registry as sliver_primitives::Registry<_>>::uid_of(&9), None);
        assert_eq!(<Registry as sliver_primitives::Registry<_>>::account_of(1), Some(2));
        assert_eq!(<Registry as sliver_primitives::Registry<_>>::account_of(4), None);
        assert_eq!(<Registry as sliver_primitives::Registry<_>>::role_of(0), Some(Role::Validator));
        assert_eq!(<Registry as sliver_primitives::Registry<_>>::role_of(3), Some(Role::Miner));
        assert_eq!(<Registry as sliver_primitives::Registry<_>>::role_of(4), None);
        assert_eq!(Registry::miners(), vec![(1, 100), (3, 9)]);
        assert_eq!(Registry::validators(), vec![(0, 0), (2, MIN_STAKE)]);
    });
}

#[test]
fn peer_id_bytes_is_the_libp2p_peer_id() {
    let key = peer_key(9);
    let peer_id = Registry::peer_id_bytes(&key);
    assert_eq!(peer_id[..6], PEER_ID_ED25519_PREFIX);
    assert_eq!(peer_id[6..], key);
    // Ed25519 PeerIds print as "12D3KooW…".
    assert!(base58(&peer_id).starts_with("12D3KooW"), "{}", base58(&peer_id));
    assert!(base58(&Registry::peer_id_bytes(&[0; 32])).starts_with("12D3KooW"));
    assert!(base58(&Registry::peer_id_bytes(&[0xff; 32])).starts_with("12D3KooW"));
}

#[test]
fn registration_message_layout() {
    ExtBuilder::default().build_and_execute(|| {
        let message = Registry::registration_message(&0x0102, 7);
        assert_eq!(message.len(), 18 + 8 + 32 + 4);
        assert_eq!(&message[..18], b"sliver/register/v1");
        assert_eq!(message[18..26], 0x0102u64.to_le_bytes());
        assert_eq!(message[26..58], System::block_hash(0).0);
        assert_eq!(message[58..], 7u32.to_le_bytes());
    });
}

#[test]
fn integrity_test_passes() {
    ExtBuilder::default().build_and_execute(|| {
        <Registry as Hooks<u64>>::integrity_test();
    });
}

#[test]
fn try_state_detects_corruption() {
    ExtBuilder::default().build().execute_with(|| {
        assert_ok!(register(1, Role::Validator, 1));
        assert_ok!(Registry::bond(signed(1), MIN_STAKE));
        assert_ok!(Registry::do_try_state());

        MinerCount::<Test>::put(1);
        assert!(Registry::do_try_state().is_err());
        MinerCount::<Test>::put(0);

        UidOf::<Test>::insert(5, 0);
        assert!(Registry::do_try_state().is_err());
        UidOf::<Test>::remove(5);

        PeerKeyOwner::<Test>::insert(peer_key(7), 0);
        assert!(Registry::do_try_state().is_err());
        PeerKeyOwner::<Test>::remove(peer_key(7));

        // Unlocking that is not backed by a hold.
        Unlocking::<Test>::insert(1, BoundedVec::truncate_from(vec![chunk(0, 5, 9)]));
        assert!(Registry::do_try_state().is_err());
        Unlocking::<Test>::remove(1);

        // Stake accounted under the wrong reason.
        Registrations::<Test>::mutate(0, |r| {
            let r = r.as_mut().unwrap();
            r.deposit = DEPOSIT + MIN_STAKE;
            r.stake = 0;
        });
        assert!(Registry::do_try_state().is_err());
    });
}

// ---------------------------------------------------------------------------------------------
// Property: any sequence of calls keeps the invariants; failed calls change nothing.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Register { who: AccountId, validator: bool, peer: u8 },
    UpdateEndpoint { who: AccountId, throughput: u64 },
    Deregister { who: AccountId },
    Bond { who: AccountId, amount: Balance },
    Unbond { who: AccountId, amount: Balance },
    Withdraw { who: AccountId },
    Advance { epochs: u32 },
    Score { uid: Uid, score: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let who = 1..=8 as AccountId;
    prop_oneof![
        4 => (who.clone(), any::<bool>(), 1..=10u8)
            .prop_map(|(who, validator, peer)| Op::Register { who, validator, peer }),
        1 => (who.clone(), 0..=3u64).prop_map(|(who, throughput)| Op::UpdateEndpoint { who, throughput }),
        2 => who.clone().prop_map(|who| Op::Deregister { who }),
        3 => (who.clone(), 0..=2_500 as Balance).prop_map(|(who, amount)| Op::Bond { who, amount }),
        3 => (who.clone(), 0..=2_500 as Balance).prop_map(|(who, amount)| Op::Unbond { who, amount }),
        2 => who.prop_map(|who| Op::Withdraw { who }),
        3 => (0..=2u32).prop_map(|epochs| Op::Advance { epochs }),
        1 => (0..5 as Uid, 0..100u64).prop_map(|(uid, score)| Op::Score { uid, score }),
    ]
}

fn apply(op: &Op) -> sp_runtime::DispatchResult {
    match *op {
        Op::Register { who, validator, peer } => {
            register(who, if validator { Role::Validator } else { Role::Miner }, peer)
        }
        Op::UpdateEndpoint { who, throughput } => {
            Registry::update_endpoint(signed(who), addresses(1, 3), hardware(throughput))
        }
        Op::Deregister { who } => Registry::deregister(signed(who)),
        Op::Bond { who, amount } => Registry::bond(signed(who), amount),
        Op::Unbond { who, amount } => Registry::unbond(signed(who), amount),
        Op::Withdraw { who } => Registry::withdraw_unbonded(signed(who)),
        Op::Advance { epochs } => {
            Epoch::set(Epoch::get() + epochs);
            Ok(())
        }
        Op::Score { uid, score } => {
            set_score(uid, score);
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_call_sequence_keeps_the_invariants(ops in prop::collection::vec(op(), 1..80)) {
        ExtBuilder::default().build_and_execute(|| {
            for op in &ops {
                let root = sp_io::storage::root(StateVersion::V1);
                if apply(op).is_err() {
                    assert_eq!(root, sp_io::storage::root(StateVersion::V1), "{op:?} failed but changed state");
                }
                Registry::do_try_state().unwrap_or_else(|e| panic!("after {op:?}: {e:?}"));
                assert!(MinerCount::<Test>::get() <= MAX_MINERS);
                assert!(ValidatorCount::<Test>::get() <= MAX_VALIDATORS);
                // Funds are only ever held or free: nothing is created or lost.
                let total: Balance = (1..=FUNDED)
                    .map(|who| <Balances as fungible::Inspect<_>>::total_balance(&who))
                    .sum();
                assert_eq!(total, BALANCE * FUNDED as Balance);
            }
        });
    }
}
