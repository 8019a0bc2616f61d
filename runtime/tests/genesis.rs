//! The genesis presets build a valid initial state.

mod common;
use common::ext_for;

use sliver_runtime::{
    genesis_config_presets::{self, ENDOWMENT},
    Aura, Balances, Grandpa, Runtime,
};
use sp_keyring::Sr25519Keyring;

#[test]
fn development_preset_has_one_authority_and_endowed_dev_accounts() {
    ext_for(sp_genesis_builder::DEV_RUNTIME_PRESET).execute_with(|| {
        assert_eq!(pallet_aura::Authorities::<Runtime>::get().len(), 1);
        assert_eq!(Grandpa::grandpa_authorities().len(), 1);
        assert_eq!(Balances::free_balance(Sr25519Keyring::Alice.to_account_id()), ENDOWMENT);
        assert_eq!(Balances::free_balance(Sr25519Keyring::FerdieStash.to_account_id()), ENDOWMENT);
        assert_eq!(pallet_sudo::Key::<Runtime>::get(), Some(Sr25519Keyring::Alice.to_account_id()));
        let _ = Aura::slot_duration();
    });
}

#[test]
fn local_preset_has_alice_and_bob_as_authorities() {
    ext_for(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET).execute_with(|| {
        assert_eq!(pallet_aura::Authorities::<Runtime>::get().len(), 2);
        assert_eq!(Grandpa::grandpa_authorities().len(), 2);
    });
}

#[test]
fn slot_duration_is_one_second() {
    assert_eq!(sliver_runtime::SLOT_DURATION, 1000);
    ext_for(sp_genesis_builder::DEV_RUNTIME_PRESET)
        .execute_with(|| assert_eq!(Aura::slot_duration(), 1000));
}

#[test]
fn unknown_preset_is_none() {
    assert!(genesis_config_presets::get_preset(&"nope".into()).is_none());
    assert_eq!(genesis_config_presets::preset_names().len(), 2);
}

/// Settlement and the epoch rotation run in `on_initialize` of the boundary block, at the
/// maximum slot counts; their benchmarked weight must leave most of the block to transactions.
#[test]
fn epoch_boundary_at_maximum_size_fits_well_inside_a_block() {
    use frame_support::weights::Weight;
    use pallet_sliver_clock::WeightInfo as _;
    use pallet_sliver_rewards::WeightInfo as _;
    use sliver_runtime::configs::{RuntimeBlockWeights, MAX_MINERS, MAX_VALIDATORS};
    let settle = pallet_sliver_rewards::weights::SubstrateWeight::<Runtime>::settle(
        MAX_VALIDATORS,
        MAX_MINERS,
    );
    let rotate =
        pallet_sliver_clock::weights::SubstrateWeight::<Runtime>::on_initialize_rotate(MAX_MINERS);
    let boundary: Weight = settle.saturating_add(rotate);
    let block = RuntimeBlockWeights::get().max_block;
    let share = boundary.ref_time() as f64 / block.ref_time() as f64;
    println!(
        "epoch boundary at {MAX_VALIDATORS} validators x {MAX_MINERS} miners: settle {:.1} ms + rotate {:.1} ms = {:.1}% of the block's {:.0} ms",
        settle.ref_time() as f64 / 1e9,
        rotate.ref_time() as f64 / 1e9,
        share * 100.0,
        block.ref_time() as f64 / 1e9
    );
    assert!(share < 0.5, "the epoch boundary takes {:.1}% of a block", share * 100.0);
}
