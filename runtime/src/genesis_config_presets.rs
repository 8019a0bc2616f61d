//! Genesis presets: the initial state of a new chain, by name.
//!
//! - `development` (`--dev`): Alice alone produces and finalizes blocks and holds sudo.
//! - `local_testnet` (`--chain local`): Alice and Bob are authorities, for multi-node networks
//!   on one machine.
//!
//! Both endow the well-known development accounts (Alice to Ferdie and their `//stash`
//! accounts) so that miners and validators of a local network can pay fees and deposits.

use crate::{
    AccountId, BalancesConfig, Runtime, RuntimeGenesisConfig, SliverClockConfig,
    SliverRewardsConfig, SudoConfig, UNIT,
};
use alloc::{vec, vec::Vec};
use frame_support::build_struct_json_patch;
use serde_json::Value;
use sp_consensus_aura::sr25519::AuthorityId as AuraId;
use sp_consensus_grandpa::AuthorityId as GrandpaId;
use sp_genesis_builder::{self, PresetId};
use sp_keyring::Sr25519Keyring;

/// Balance given to each endowed development account.
pub const ENDOWMENT: crate::Balance = 1_000_000 * UNIT;

/// Minted into the rewards pot at genesis (10,000 epochs of emission).
pub const POT_ENDOWMENT: crate::Balance = 10_000_000 * UNIT;

/// The training run of local networks: the character-level tiny-Shakespeare model of nanoGPT's
/// CPU recipe (4 layers, 4 heads, 128 wide, context 64, batch 12, AdamW at 1e-3 with 100
/// warm-up steps decaying to 1e-4, weight decay 0.1, clipping 1.0), cut into 2 slivers and
/// merged DiLoCo-style every 50 inner steps (outer learning rate 0.7, Nesterov momentum 0.9).
/// The dataset is named, not hashed, until the engine defines dataset manifests.
pub fn local_training_run() -> pallet_sliver_clock::TrainingRunParamsOf<Runtime> {
    use pallet_sliver_clock::{HyperParams, ModelConfig, TrainingRunParams};
    TrainingRunParams {
        model: ModelConfig {
            n_layers: 4,
            d_model: 128,
            n_heads: 4,
            vocab_size: 256,
            context_len: 64,
            tied_embeddings: true,
        },
        num_slivers: 2,
        dataset_id: b"builtin:tinyshakespeare-char".to_vec().try_into().unwrap_or_default(),
        dataset_hash: Default::default(),
        hyper: HyperParams {
            learning_rate_micro: 1_000,
            min_learning_rate_micro: 100,
            warmup_steps: 100,
            weight_decay_micro: 100_000,
            grad_clip_micro: 1_000_000,
            batch_size: 12,
            micro_batches: 3,
            merge_interval: 50,
            outer_lr_micro: 700_000,
            outer_momentum_micro: 900_000,
        },
    }
}

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
        sliver_clock: SliverClockConfig { initial_run: Some(local_training_run()) },
        sliver_rewards: SliverRewardsConfig { pot_endowment: POT_ENDOWMENT },
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
