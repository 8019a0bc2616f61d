//! Shared set-up of the runtime's integration tests.

use sliver_runtime::{BuildStorage, RuntimeGenesisConfig};

/// Applies a genesis preset (a JSON patch) over the default config, as the node's chain-spec
/// builder does.
fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// Externalities holding the genesis state of `preset`.
pub fn ext_for(preset: &str) -> sp_io::TestExternalities {
    let json = frame_support::genesis_builder_helper::get_preset::<RuntimeGenesisConfig>(
        &Some(preset.into()),
        sliver_runtime::genesis_config_presets::get_preset,
    )
    .unwrap_or_else(|| panic!("preset {preset} exists"));
    let patch: serde_json::Value = serde_json::from_slice(&json).expect("preset is JSON");
    let mut full = serde_json::to_value(RuntimeGenesisConfig::default()).unwrap();
    merge(&mut full, patch);
    let config: RuntimeGenesisConfig =
        serde_json::from_value(full).expect("patched config is valid");
    sp_io::TestExternalities::new(config.build_storage().expect("genesis builds"))
}
