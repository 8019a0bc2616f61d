//! Genesis presets: the initial state of a new chain, by name.
//!
//! - `development` (`--dev`): Alice alone produces and finalizes blocks and holds sudo.
//! - `local_testnet` (`--chain local`): Alice and Bob are authorities, for multi-node networks
//!   on one machine.
//!
//! Both endow the well-known development accounts (Alice to Ferdie and their `//stash`
//! accounts) so that miners and validators of a local network can pay fees and deposits.

use crate::{AccountId, BalancesConfig, RuntimeGenesisConfig, SudoConfig, UNIT};
use alloc::{vec, vec::Vec};
use frame_support::build_struct_json_patch;
use serde_json::Value;
use sp_consensus_aura::sr25519::AuthorityId as AuraId;
use sp_consensus_grandpa::AuthorityId as GrandpaId;
use sp_genesis_builder::{self, PresetId};
use sp_keyring::Sr25519Keyring;

/// Balance given to each endowed development account.
pub const ENDOWMENT: crate::Balance = 1_000_000 * UNIT;

fn testnet_genesis(
    initial_authorities: Vec<(AuraId, GrandpaId)>,
    endowed_accounts: Vec<AccountId>,
    root: AccountId,
) -> Value {
    build_struct_json_patch!(RuntimeGenesisConfig {
        balances: BalancesConfig {
            balances: endowed_accounts.iter().cloned().map(|k| (k, ENDOWMENT)).collect::<Vec<_>>(),
        },
        aura: pallet_aura::GenesisConfig {
            authorities: initial_authorities.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
        },
        grandpa: pallet_grandpa::GenesisConfig {
            authorities: initial_authorities.iter().map(|x| (x.1.clone(), 1)).collect::<Vec<_>>(),
        },
        sudo: SudoConfig { key: Some(root) },
    })
}

fn authority(k: Sr25519Keyring) -> (AuraId, GrandpaId) {
    (k.public().into(), grandpa_of(k))
}

/// The GRANDPA (ed25519) key derived from the same `//Name` seed as the sr25519 keyring entry.
fn grandpa_of(k: Sr25519Keyring) -> GrandpaId {
    use sp_keyring::Ed25519Keyring as E;
    let e = match k {
        Sr25519Keyring::Alice => E::Alice,
        Sr25519Keyring::Bob => E::Bob,
        Sr25519Keyring::Charlie => E::Charlie,
        Sr25519Keyring::Dave => E::Dave,
        Sr25519Keyring::Eve => E::Eve,
        Sr25519Keyring::Ferdie => E::Ferdie,
        _ => E::One,
    };
    e.public().into()
}

/// The `development` preset.
pub fn development_config_genesis() -> Value {
    testnet_genesis(
        vec![authority(Sr25519Keyring::Alice)],
        Sr25519Keyring::well_known().map(|k| k.to_account_id()).collect(),
        Sr25519Keyring::Alice.to_account_id(),
    )
}

/// The `local_testnet` preset.
pub fn local_config_genesis() -> Value {
    testnet_genesis(
        vec![authority(Sr25519Keyring::Alice), authority(Sr25519Keyring::Bob)],
        Sr25519Keyring::iter()
            .filter(|v| v != &Sr25519Keyring::One && v != &Sr25519Keyring::Two)
            .map(|v| v.to_account_id())
            .collect::<Vec<_>>(),
        Sr25519Keyring::Alice.to_account_id(),
    )
}

/// The JSON patch for preset `id`, if there is one.
pub fn get_preset(id: &PresetId) -> Option<Vec<u8>> {
    let patch = match id.as_ref() {
        sp_genesis_builder::DEV_RUNTIME_PRESET => development_config_genesis(),
        sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET => local_config_genesis(),
        _ => return None,
    };
    Some(
        serde_json::to_string(&patch)
            .expect("serialization to json is expected to work. qed.")
            .into_bytes(),
    )
}

/// The names of the presets.
pub fn preset_names() -> Vec<PresetId> {
    vec![
        PresetId::from(sp_genesis_builder::DEV_RUNTIME_PRESET),
        PresetId::from(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET),
    ]
}
