//! # Sliver runtime
//!
//! The FRAME runtime of Sliver's coordination chain. The chain is deliberately thin: it records
//! who is who (registry), what time it is (epoch clock) and who gets paid (rewards); training
//! data and compute stay off-chain.
//!
//! This crate compiles twice:
//! - natively (`std`), for unit and integration tests and to export the metadata that the
//!   off-chain clients generate their types from (`metadata/sliver.scale`);
//! - to WebAssembly (`wasm32v1-none`, through `build.rs` and `substrate-wasm-builder`), which is
//!   what the `sliver-node` binary executes. Set `SKIP_WASM_BUILD=1` when only the native build
//!   is needed.
//!
//! Consensus is Aura (block production, [`MILLISECS_PER_BLOCK`] slots) with GRANDPA finality.
//! The standard transaction extensions are kept so that subxt, polkadot.js and Python's
//! substrate-interface work with no custom types.

#![cfg_attr(not(feature = "std"), no_std)]
// `construct_runtime`/`impl_runtime_apis` need a high recursion limit.
#![recursion_limit = "256"]

#[cfg(feature = "std")]
include!(concat!(env!("OUT_DIR"), "/wasm_binary.rs"));

extern crate alloc;

#[cfg(feature = "runtime-benchmarks")]
#[macro_use]
mod benchmarks;
pub mod apis;
#[cfg(feature = "runtime-benchmarks")]
mod benchmark_helpers;
pub mod configs;
pub mod genesis_config_presets;

use alloc::vec::Vec;
use sp_runtime::{
    generic, impl_opaque_keys,
    traits::{BlakeTwo256, IdentifyAccount, Verify},
    MultiAddress, MultiSignature,
};
use sp_version::RuntimeVersion;

pub use frame_system::Call as SystemCall;
pub use pallet_balances::Call as BalancesCall;
pub use pallet_timestamp::Call as TimestampCall;
#[cfg(any(feature = "std", test))]
pub use sp_runtime::BuildStorage;

/// The runtime's version. `spec_version` must be bumped on every change of runtime logic that
/// is deployed to a running chain.
#[sp_version::runtime_version]
pub const VERSION: RuntimeVersion = RuntimeVersion {
    spec_name: alloc::borrow::Cow::Borrowed("sliver"),
    impl_name: alloc::borrow::Cow::Borrowed("sliver"),
    authoring_version: 1,
    spec_version: 100,
    impl_version: 1,
    apis: apis::RUNTIME_API_VERSIONS,
    transaction_version: 1,
    system_version: 1,
};

/// Target block time. Local networks and tests need epochs of seconds, not minutes, so Sliver
/// uses one-second slots. `SLOT_DURATION` cannot change once a chain has started.
pub const MILLISECS_PER_BLOCK: u64 = 1000;
/// Aura slot duration in milliseconds.
pub const SLOT_DURATION: u64 = MILLISECS_PER_BLOCK;

/// Blocks per minute at the target block time.
pub const MINUTES: BlockNumber = 60_000 / (MILLISECS_PER_BLOCK as BlockNumber);
/// Blocks per hour at the target block time.
pub const HOURS: BlockNumber = MINUTES * 60;

/// Smallest unit: the token has 12 decimals.
pub const UNIT: Balance = 1_000_000_000_000;
/// A thousandth of a [`UNIT`].
pub const MILLI_UNIT: Balance = UNIT / 1_000;
/// Accounts below this balance are reaped.
pub const EXISTENTIAL_DEPOSIT: Balance = MILLI_UNIT;

/// Ticker symbol shown by wallets and explorers.
pub const TOKEN_SYMBOL: &str = "SLV";
/// Number of decimals of [`TOKEN_SYMBOL`].
pub const TOKEN_DECIMALS: u32 = 12;

/// Block number.
pub type BlockNumber = u32;
/// Transaction signature: sr25519, ed25519 or ecdsa.
pub type Signature = MultiSignature;
/// Account identifier: the public key of the signing scheme.
pub type AccountId = <<Signature as Verify>::Signer as IdentifyAccount>::AccountId;
/// Balance of an account.
pub type Balance = u128;
/// Transaction index of an account.
pub type Nonce = u32;
/// Block and state hash.
pub type Hash = sp_core::H256;

/// Types the node needs without knowing the runtime's call and event types.
pub mod opaque {
    use super::*;
    pub use sp_runtime::OpaqueExtrinsic as UncheckedExtrinsic;

    /// Opaque block header type.
    pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
    /// Opaque block type.
    pub type Block = generic::Block<Header, UncheckedExtrinsic>;
    /// Opaque block identifier type.
    pub type BlockId = generic::BlockId<Block>;

    impl_opaque_keys! {
        /// The session keys of a block-producing authority.
        pub struct SessionKeys {
            /// Aura block production key.
            pub aura: super::Aura,
            /// GRANDPA finality key.
            pub grandpa: super::Grandpa,
        }
    }
}

/// The address format for describing accounts.
pub type Address = MultiAddress<AccountId, ()>;
/// Block header type as expected by this runtime.
pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
/// Block type as expected by this runtime.
pub type Block = generic::Block<Header, UncheckedExtrinsic>;

/// The transaction extensions: the standard set that every Substrate client knows.
pub type TxExtension = (
    frame_system::CheckNonZeroSender<Runtime>,
    frame_system::CheckSpecVersion<Runtime>,
    frame_system::CheckTxVersion<Runtime>,
    frame_system::CheckGenesis<Runtime>,
    frame_system::CheckEra<Runtime>,
    frame_system::CheckNonce<Runtime>,
    frame_system::CheckWeight<Runtime>,
    pallet_transaction_payment::ChargeTransactionPayment<Runtime>,
);

/// Unchecked extrinsic type as expected by this runtime.
pub type UncheckedExtrinsic =
    generic::UncheckedExtrinsic<Address, RuntimeCall, Signature, TxExtension>;
/// The payload being signed in transactions.
pub type SignedPayload = generic::SignedPayload<RuntimeCall, TxExtension>;

/// Migrations to run on runtime upgrade, beyond the pallets' own.
type Migrations = ();

/// Executive: dispatches blocks and extrinsics to the pallets.
pub type Executive = frame_executive::Executive<
    Runtime,
    Block,
    frame_system::ChainContext<Runtime>,
    Runtime,
    AllPalletsWithSystem,
    Migrations,
>;

#[frame_support::runtime]
mod runtime {
    /// The runtime: the composition of all pallets.
    #[runtime::runtime]
    #[runtime::derive(
        RuntimeCall,
        RuntimeEvent,
        RuntimeError,
        RuntimeOrigin,
        RuntimeFreezeReason,
        RuntimeHoldReason,
        RuntimeSlashReason,
        RuntimeLockId,
        RuntimeTask,
        RuntimeViewFunction
    )]
    pub struct Runtime;

    #[runtime::pallet_index(0)]
    pub type System = frame_system;

    #[runtime::pallet_index(1)]
    pub type Timestamp = pallet_timestamp;

    #[runtime::pallet_index(2)]
    pub type Aura = pallet_aura;

    #[runtime::pallet_index(3)]
    pub type Grandpa = pallet_grandpa;

    #[runtime::pallet_index(4)]
    pub type Balances = pallet_balances;

    #[runtime::pallet_index(5)]
    pub type TransactionPayment = pallet_transaction_payment;

    #[runtime::pallet_index(6)]
    pub type Sudo = pallet_sudo;

    // Sliver. The clock comes after the registry so that genesis miners are assigned.
    #[runtime::pallet_index(20)]
    pub type SliverRegistry = pallet_sliver_registry;

    #[runtime::pallet_index(21)]
    pub type SliverClock = pallet_sliver_clock;

    #[runtime::pallet_index(22)]
    pub type SliverRewards = pallet_sliver_rewards;
}

/// Returns the runtime metadata at `version` (16 is what the off-chain clients are generated
/// from), SCALE-encoded with the `meta` magic prefix, as a node's `state_getMetadata` serves it.
pub fn metadata_bytes(version: u32) -> Option<Vec<u8>> {
    Runtime::metadata_at_version(version).map(|m| m.to_vec())
}
