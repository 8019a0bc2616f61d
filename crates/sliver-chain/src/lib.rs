//! # sliver-chain
//!
//! The typed client every off-chain Sliver program (miner, validator, tests) uses to talk to
//! the chain. It wraps [`subxt`] with types generated at compile time from
//! `metadata/sliver.scale`, the runtime's metadata committed in the repository (regenerate it
//! with `SLIVER_UPDATE_METADATA=1 SKIP_WASM_BUILD=1 cargo test -p sliver-runtime --test
//! metadata`; that test fails while the file is stale).
//!
//! Errors say what went wrong in operator terms: a node that cannot be reached names the URL
//! and how to start one; a transaction that fails on chain names the pallet error.

use std::time::Duration;

pub use subxt;
pub use subxt_signer;

mod sliver_calls;
pub use sliver_calls::*;

/// Types, calls, storage and events generated from the committed runtime metadata.
#[subxt::subxt(
    runtime_metadata_path = "../../metadata/sliver.scale",
    derive_for_all_types = "Eq, PartialEq, Clone"
)]
pub mod sliver {}

/// The chain's configuration for subxt: the runtime uses Polkadot's account, address,
/// signature and transaction-extension types.
pub type SliverConfig = subxt::PolkadotConfig;

/// An account on the chain.
pub type AccountId = subxt::utils::AccountId32;

/// Balance in the smallest unit (12 decimals).
pub type Balance = u128;

/// A signer backed by an sr25519 key pair (`//Alice`, a mnemonic or a key file).
pub type Keypair = subxt_signer::sr25519::Keypair;

/// The default RPC endpoint of a local node.
pub const DEFAULT_RPC_URL: &str = "ws://127.0.0.1:9944";

/// What can go wrong talking to the chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// No node answered at the URL.
    #[error(
        "cannot reach a Sliver node at {url}: {reason}\n  start one with `sliver-node --dev --tmp` \
         or pass the right --rpc-url"
    )]
    Unreachable {
        /// The URL that was tried.
        url: String,
        /// The underlying error.
        reason: String,
    },
    /// The node answered, but it does not run a runtime these types were generated for.
    #[error(
        "the node at {url} runs a runtime this client was not built for ({reason}); update \
         sliver or point it at a Sliver node"
    )]
    IncompatibleRuntime {
        /// The URL of the node.
        url: String,
        /// Why the runtime is not compatible.
        reason: String,
    },
    /// A transaction was rejected or failed on chain.
    #[error("transaction {what} failed: {reason}")]
    Transaction {
        /// What the transaction was for.
        what: String,
        /// The node's or the runtime's reason.
        reason: String,
    },
    /// Any other RPC or decoding error.
    #[error("chain RPC error: {0}")]
    Rpc(String),
    /// Waiting for the chain took longer than allowed.
    #[error("timed out after {0:?} waiting for the chain")]
    Timeout(Duration),
}

fn rpc<E: std::fmt::Display>(e: E) -> ChainError {
    ChainError::Rpc(e.to_string())
}

/// The head of the chain as a node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Number of the latest finalized block.
    pub finalized: u64,
    /// Hash of the latest finalized block.
    pub finalized_hash: subxt::utils::H256,
    /// The runtime's spec version at that block.
    pub spec_version: u32,
}

/// A connection to a Sliver node.
#[derive(Clone)]
pub struct ChainClient {
    api: subxt::OnlineClient<SliverConfig>,
    /// The same connection, for the plain JSON-RPC methods (best head).
    legacy: subxt::rpcs::LegacyRpcMethods<subxt::config::RpcConfigFor<SliverConfig>>,
    url: String,
}

impl ChainClient {
    /// Connects to the node at `url` (`ws://` or `wss://`) and checks that it runs a runtime
    /// whose metadata matches the generated types.
    pub async fn connect(url: &str) -> Result<Self, ChainError> {
        let unreachable = |e: &dyn std::fmt::Display| ChainError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        };
        let rpc_client =
            subxt::rpcs::RpcClient::from_insecure_url(url).await.map_err(|e| unreachable(&e))?;
        let api = subxt::OnlineClient::<SliverConfig>::from_rpc_client(rpc_client.clone())
            .await
            .map_err(|e| unreachable(&e))?;
        let legacy = subxt::rpcs::LegacyRpcMethods::new(rpc_client);
        let client = Self { api, legacy, url: url.to_string() };
        let at = client.api.at_current_block().await.map_err(rpc)?;
        sliver::is_codegen_valid_for(at.metadata_ref()).then_some(()).ok_or_else(|| {
            ChainError::IncompatibleRuntime {
                url: url.to_string(),
                reason: format!("spec version {} has different metadata", at.spec_version()),
            }
        })?;
        Ok(client)
    }

    /// Connects, retrying until `timeout` while the node is starting.
    pub async fn connect_with_retry(url: &str, timeout: Duration) -> Result<Self, ChainError> {
        let start = std::time::Instant::now();
        loop {
            match Self::connect(url).await {
                Ok(c) => return Ok(c),
                Err(ChainError::Unreachable { .. }) if start.elapsed() < timeout => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The RPC URL this client is connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying subxt client, for calls this crate does not wrap yet.
    pub fn api(&self) -> &subxt::OnlineClient<SliverConfig> {
        &self.api
    }

    /// Number and hash of the best (newest, not yet finalized) block.
    pub async fn best_block(&self) -> Result<(u32, subxt::utils::H256), ChainError> {
        let hash = self
            .legacy
            .chain_get_block_hash(None)
            .await
            .map_err(rpc)?
            .ok_or_else(|| ChainError::Rpc("the node has no best block".into()))?;
        let header = self
            .legacy
            .chain_get_header(Some(hash))
            .await
            .map_err(rpc)?
            .ok_or_else(|| ChainError::Rpc("best block header not found".into()))?;
        Ok((u32::try_from(header.number).map_err(rpc)?, hash))
    }

    /// The latest finalized block.
    pub async fn head(&self) -> Result<ChainHead, ChainError> {
        let at = self.api.at_current_block().await.map_err(rpc)?;
        Ok(ChainHead {
            finalized: at.block_number(),
            finalized_hash: at.block_hash(),
            spec_version: at.spec_version(),
        })
    }

    /// Waits until the finalized head reaches block `number`.
    pub async fn wait_for_finalized(
        &self,
        number: u64,
        timeout: Duration,
    ) -> Result<ChainHead, ChainError> {
        let start = std::time::Instant::now();
        loop {
            let head = self.head().await?;
            if head.finalized >= number {
                return Ok(head);
            }
            if start.elapsed() > timeout {
                return Err(ChainError::Timeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Free balance of `account` at the latest finalized block (zero for unknown accounts).
    pub async fn free_balance(&self, account: &AccountId) -> Result<Balance, ChainError> {
        let at = self.api.at_current_block().await.map_err(rpc)?;
        let entry = at.storage().entry(sliver::storage().system().account()).map_err(rpc)?;
        match entry.try_fetch((account.clone(),)).await.map_err(rpc)? {
            Some(v) => Ok(v.decode().map_err(rpc)?.data.free),
            None => Ok(0),
        }
    }

    /// Transfers `amount` from `from` to `to`, keeping `from` alive, and waits until the
    /// transfer is in a finalized block. Returns that block's hash.
    pub async fn transfer(
        &self,
        from: &Keypair,
        to: &AccountId,
        amount: Balance,
    ) -> Result<subxt::utils::H256, ChainError> {
        let call = sliver::tx().balances().transfer_keep_alive(to.clone().into(), amount);
        self.submit_and_finalize(&call, from, "balances.transfer_keep_alive").await
    }

    /// Signs `call` with `signer`, submits it, and waits for it to succeed in a finalized block.
    pub async fn submit_and_finalize<Call: subxt::transactions::Payload>(
        &self,
        call: &Call,
        signer: &Keypair,
        what: &str,
    ) -> Result<subxt::utils::H256, ChainError> {
        let fail = |e: &dyn std::fmt::Display| ChainError::Transaction {
            what: what.to_string(),
            reason: e.to_string(),
        };
        let at = self.api.at_current_block().await.map_err(rpc)?;
        // The nonce as the node's transaction pool sees it: the finalized block's would repeat
        // the nonce of a transaction still pending (one sent just before a restart, say), and
        // the second would be refused as outdated once the first lands.
        let account: AccountId = signer.public_key().into();
        let nonce = self.legacy.system_account_next_index(&account).await.map_err(rpc)?;
        let params = subxt::config::PolkadotExtrinsicParamsBuilder::<SliverConfig>::new()
            .nonce(nonce)
            .build();
        let progress = at
            .transactions()
            .sign_and_submit_then_watch(call, signer, params)
            .await
            .map_err(|e| fail(&e))?;
        let in_block = progress.wait_for_finalized().await.map_err(|e| fail(&e))?;
        let block_hash = in_block.block_hash();
        in_block.wait_for_success().await.map_err(|e| fail(&e))?;
        Ok(block_hash)
    }
}

/// A development key pair by name (`alice`, `bob`, ... `ferdie`), as `//Alice` etc.
pub fn dev_keypair(name: &str) -> Option<Keypair> {
    use subxt_signer::sr25519::dev;
    Some(match name.to_ascii_lowercase().as_str() {
        "alice" => dev::alice(),
        "bob" => dev::bob(),
        "charlie" => dev::charlie(),
        "dave" => dev::dave(),
        "eve" => dev::eve(),
        "ferdie" => dev::ferdie(),
        _ => return None,
    })
}

/// The account of an sr25519 key pair.
pub fn account_of(pair: &Keypair) -> AccountId {
    pair.public_key().into()
}

/// Prints the finalized head every `interval` until `count` heads were printed (forever when
/// `count` is `None`). The thin start of the miner's and validator's chain follower.
pub async fn print_heads(
    client: &ChainClient,
    who: &str,
    interval: Duration,
    count: Option<u64>,
) -> Result<(), ChainError> {
    let mut printed = 0u64;
    let mut last = None;
    loop {
        let head = client.head().await?;
        if last != Some(head.finalized) {
            println!(
                "[{who}] {}: finalized #{} {:?} (runtime spec {})",
                client.url(),
                head.finalized,
                head.finalized_hash,
                head.spec_version
            );
            last = Some(head.finalized);
            printed += 1;
            if count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
        }
        tokio::time::sleep(interval).await;
    }
}
