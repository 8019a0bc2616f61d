//! Chain specifications built from the runtime's genesis presets.

use sc_service::ChainType;
use sliver_runtime::WASM_BINARY;

/// The chain specification of a Sliver chain (no extensions).
pub type ChainSpec = sc_service::GenericChainSpec;

fn wasm() -> Result<&'static [u8], String> {
    WASM_BINARY.ok_or_else(|| {
        "the runtime's WebAssembly blob is missing: this node was built with SKIP_WASM_BUILD; \
         rebuild it without that variable"
            .to_string()
    })
}

fn properties() -> sc_service::Properties {
    let mut p = sc_service::Properties::new();
    p.insert("tokenSymbol".into(), sliver_runtime::TOKEN_SYMBOL.into());
    p.insert("tokenDecimals".into(), sliver_runtime::TOKEN_DECIMALS.into());
    p.insert("ss58Format".into(), 42.into());
    p
}

/// `--dev`: a single authority (Alice).
pub fn development_chain_spec() -> Result<ChainSpec, String> {
    Ok(ChainSpec::builder(wasm()?, None)
        .with_name("Sliver Development")
        .with_id("sliver_dev")
        .with_chain_type(ChainType::Development)
        .with_genesis_config_preset_name(sp_genesis_builder::DEV_RUNTIME_PRESET)
        .with_properties(properties())
        .build())
}

/// `--chain local`: two authorities (Alice and Bob), for multi-node networks on one machine.
pub fn local_chain_spec() -> Result<ChainSpec, String> {
    Ok(ChainSpec::builder(wasm()?, None)
        .with_name("Sliver Local Testnet")
        .with_id("sliver_local")
        .with_chain_type(ChainType::Local)
        .with_genesis_config_preset_name(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET)
        .with_properties(properties())
        .build())
}
