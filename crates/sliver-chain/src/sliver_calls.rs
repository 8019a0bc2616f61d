//! Typed wrappers of the Sliver pallets' calls, storage and runtime API.

use crate::{rpc, sliver, AccountId, Balance, ChainClient, ChainError, Keypair};
use subxt::{ext::codec::Encode, utils::H256};

pub use sliver::runtime_types::pallet_sliver_clock::types::{HyperParams, ModelConfig};
pub use sliver::runtime_types::pallet_sliver_registry::{Backend, HardwareProfile};
pub use sliver::runtime_types::pallet_sliver_rewards::Commitment;
pub use sliver::runtime_types::sliver_primitives::{EpochInfo, Phase, Role};

/// A registered participant as off-chain programs need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    /// Its slot.
    pub uid: Uid,
    /// Its account.
    pub account: AccountId,
    /// Miner or validator.
    pub role: Role,
    /// Its libp2p ed25519 public key (the PeerId is derived from it).
    pub peer_key: [u8; 32],
    /// The addresses it declared (multiaddrs as text; invalid UTF-8 is dropped).
    pub addresses: Vec<String>,
}

/// The training run in force: its id and parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInfo {
    /// Run id.
    pub id: u32,
    /// Model architecture.
    pub model: ModelConfig,
    /// Number of slivers.
    pub num_slivers: u16,
    /// Dataset identifier (text as declared).
    pub dataset_id: String,
    /// Optimiser settings.
    pub hyper: HyperParams,
}

/// Index of a registration slot.
pub type Uid = u16;

/// The context at the start of every registration message (18 raw bytes, no length prefix).
pub const REGISTRATION_CONTEXT: &[u8; 18] = b"sliver/register/v1";

/// The bytes a registrant's libp2p ed25519 key signs to prove it owns its PeerId:
/// SCALE of `(REGISTRATION_CONTEXT, account, genesis hash, registration nonce)`.
pub fn registration_message(account: &AccountId, genesis_hash: H256, nonce: u32) -> Vec<u8> {
    (REGISTRATION_CONTEXT, account.0, genesis_hash, nonce).encode()
}

/// The audit seed derived from an epoch seed: `blake2_256(b"sliver/audit" ++ seed)`, as the
/// clock pallet's `audit_seed`.
pub fn audit_seed_of(seed: &H256) -> [u8; 32] {
    let mut input = b"sliver/audit".to_vec();
    input.extend_from_slice(seed.as_bytes());
    sp_crypto_hashing::blake2_256(&input)
}

/// The hash a validator commits in the Commit phase and opens in the Reveal phase:
/// blake2-256 of SCALE `(validator, epoch, uids, weights, salt)`.
pub fn commit_hash(
    validator: &AccountId,
    epoch: u32,
    uids: &[Uid],
    weights: &[u16],
    salt: &[u8; 32],
) -> H256 {
    let bytes = (validator.0, epoch, uids, weights, salt).encode();
    H256(sp_crypto_hashing::blake2_256(&bytes))
}

fn bounded<T>(v: Vec<T>) -> sliver::runtime_types::bounded_collections::bounded_vec::BoundedVec<T> {
    sliver::runtime_types::bounded_collections::bounded_vec::BoundedVec(v)
}

impl ChainClient {
    /// The chain's genesis hash.
    pub fn genesis_hash(&self) -> H256 {
        self.api().genesis_hash()
    }

    /// The nonce the next registration of `who` must sign.
    pub async fn registration_nonce(&self, who: &AccountId) -> Result<u32, ChainError> {
        let at = self.api().at_current_block().await.map_err(rpc)?;
        let entry = at
            .storage()
            .entry(sliver::storage().sliver_registry().registration_nonce())
            .map_err(rpc)?;
        match entry.try_fetch((who.clone(),)).await.map_err(rpc)? {
            Some(v) => v.decode().map_err(rpc),
            None => Ok(0),
        }
    }

    /// The uid `who` holds at the latest finalized block.
    pub async fn uid_of(&self, who: &AccountId) -> Result<Option<Uid>, ChainError> {
        let at = self.api().at_current_block().await.map_err(rpc)?;
        let entry =
            at.storage().entry(sliver::storage().sliver_registry().uid_of()).map_err(rpc)?;
        match entry.try_fetch((who.clone(),)).await.map_err(rpc)? {
            Some(v) => Ok(Some(v.decode().map_err(rpc)?)),
            None => Ok(None),
        }
    }

    /// Registers `signer` in `role`, proving ownership of the libp2p key `peer` by signing the
    /// registration message with it. Waits for finality and returns the uid.
    pub async fn register(
        &self,
        signer: &Keypair,
        role: Role,
        peer: &ed25519_dalek::SigningKey,
        addresses: &[String],
        hardware: HardwareProfile,
    ) -> Result<Uid, ChainError> {
        use ed25519_dalek::Signer;
        let peer_key = peer.verifying_key().to_bytes();
        let sign = |m: &[u8]| peer.sign(m).to_bytes();
        self.register_signed(signer, role, peer_key, sign, addresses, hardware).await
    }

    /// Like [`ChainClient::register`], with the libp2p key held elsewhere: `sign` signs the
    /// registration message with the ed25519 key whose public half is `peer_key`.
    pub async fn register_signed(
        &self,
        signer: &Keypair,
        role: Role,
        peer_key: [u8; 32],
        sign: impl FnOnce(&[u8]) -> [u8; 64],
        addresses: &[String],
        hardware: HardwareProfile,
    ) -> Result<Uid, ChainError> {
        let who = crate::account_of(signer);
        let nonce = self.registration_nonce(&who).await?;
        let signature = sign(&registration_message(&who, self.genesis_hash(), nonce));
        let addresses = bounded(addresses.iter().map(|a| bounded(a.as_bytes().to_vec())).collect());
        let call =
            sliver::tx().sliver_registry().register(role, peer_key, signature, addresses, hardware);
        self.submit_and_finalize(&call, signer, "sliver_registry.register").await?;
        self.uid_of(&who).await?.ok_or_else(|| ChainError::Transaction {
            what: "sliver_registry.register".into(),
            reason: "finalized, but the account holds no uid".into(),
        })
    }

    /// Gives up `signer`'s uid (the deposit unbonds over the chain's unbonding period).
    pub async fn deregister(&self, signer: &Keypair) -> Result<(), ChainError> {
        let call = sliver::tx().sliver_registry().deregister();
        self.submit_and_finalize(&call, signer, "sliver_registry.deregister").await.map(|_| ())
    }

    /// Every registered participant at the latest finalized block, by uid.
    pub async fn participants(&self) -> Result<Vec<Participant>, ChainError> {
        let at = self.api().at_current_block().await.map_err(rpc)?;
        let entry =
            at.storage().entry(sliver::storage().sliver_registry().registrations()).map_err(rpc)?;
        let mut iter = entry.iter(()).await.map_err(rpc)?;
        let mut out = Vec::new();
        while let Some(kv) = iter.next().await {
            let kv = kv.map_err(rpc)?;
            let (uid,) = kv.key().map_err(rpc)?.decode().map_err(rpc)?;
            let r = kv.value().decode().map_err(rpc)?;
            out.push(Participant {
                uid,
                account: r.account,
                role: r.role,
                peer_key: r.peer_key,
                addresses: r
                    .addresses
                    .0
                    .into_iter()
                    .filter_map(|a| String::from_utf8(a.0).ok())
                    .collect(),
            });
        }
        out.sort_by_key(|p| p.uid);
        Ok(out)
    }

    /// The sliver assignment `(uid, sliver)` of the current epoch at the best block.
    pub async fn assignments(&self) -> Result<Vec<(Uid, u16)>, ChainError> {
        Ok(self.epoch_and_assignments().await?.1)
    }

    /// Epoch information and the assignment read at one and the same best block, so that the
    /// two always belong to the same epoch.
    pub async fn epoch_and_assignments(
        &self,
    ) -> Result<(EpochInfo<u32>, Vec<(Uid, u16)>), ChainError> {
        let (number, _) = self.best_block().await?;
        self.epoch_and_assignments_at(number).await
    }

    /// Epoch information and the sliver assignment as they stood at block `number` (the node
    /// must still hold that block's state: a pruning node keeps the last 256 blocks by default).
    pub async fn epoch_and_assignments_at(
        &self,
        number: u32,
    ) -> Result<(EpochInfo<u32>, Vec<(Uid, u16)>), ChainError> {
        let at = self.api().at_block(number).await.map_err(rpc)?;
        let apis = at.runtime_apis();
        let info =
            apis.call(sliver::runtime_apis().sliver_api().epoch_info()).await.map_err(rpc)?;
        let assignments =
            apis.call(sliver::runtime_apis().sliver_api().assignments()).await.map_err(rpc)?;
        Ok((info, assignments))
    }

    /// The latest weight commitment of each of `uids` at the latest finalized block, read at
    /// one and the same block.
    pub async fn weight_commitments(
        &self,
        uids: &[Uid],
    ) -> Result<Vec<(Uid, Option<Commitment<u32>>)>, ChainError> {
        let at = self.api().at_current_block().await.map_err(rpc)?;
        commitments_at(&at, uids).await
    }

    /// The latest weight commitment of each of `uids` as they stood at block `number` (the
    /// node must still hold that block's state).
    pub async fn weight_commitments_at(
        &self,
        uids: &[Uid],
        number: u32,
    ) -> Result<Vec<(Uid, Option<Commitment<u32>>)>, ChainError> {
        let at = self.api().at_block(number).await.map_err(rpc)?;
        commitments_at(&at, uids).await
    }

    /// The active training run at the latest finalized block, if any.
    pub async fn training_run(&self) -> Result<Option<RunInfo>, ChainError> {
        let at = self.api().at_current_block().await.map_err(rpc)?;
        let active =
            at.storage().entry(sliver::storage().sliver_clock().active_run()).map_err(rpc)?;
        let Some(id) = active.try_fetch(()).await.map_err(rpc)? else { return Ok(None) };
        let id: u32 = id.decode().map_err(rpc)?;
        let runs =
            at.storage().entry(sliver::storage().sliver_clock().training_runs()).map_err(rpc)?;
        let Some(run) = runs.try_fetch((id,)).await.map_err(rpc)? else { return Ok(None) };
        let run = run.decode().map_err(rpc)?;
        Ok(Some(RunInfo {
            id,
            model: run.model,
            num_slivers: run.num_slivers,
            dataset_id: String::from_utf8_lossy(&run.dataset_id.0).into_owned(),
            hyper: run.hyper,
        }))
    }

    /// Publishes the commitment to `signer`'s sliver weights after a merge: their BLAKE3 `hash`
    /// (the blob peers fetch), `size` in bytes and the training `step`.
    pub async fn publish_weight_commitment(
        &self,
        signer: &Keypair,
        hash: [u8; 32],
        size: u64,
        step: u64,
    ) -> Result<H256, ChainError> {
        let call = sliver::tx().sliver_rewards().publish_weight_commitment(H256(hash), size, step);
        self.submit_and_finalize(&call, signer, "sliver_rewards.publish_weight_commitment").await
    }

    /// The latest weight commitment of miner `uid` at the latest finalized block.
    pub async fn weight_commitment(&self, uid: Uid) -> Result<Option<Commitment<u32>>, ChainError> {
        let at = self.api().at_current_block().await.map_err(rpc)?;
        let entry = at
            .storage()
            .entry(sliver::storage().sliver_rewards().weight_commitments())
            .map_err(rpc)?;
        match entry.try_fetch((uid,)).await.map_err(rpc)? {
            Some(v) => Ok(Some(v.decode().map_err(rpc)?)),
            None => Ok(None),
        }
    }

    /// What the rewards pallet paid `who` as a miner in block `number` (`MinerPaid` events),
    /// and how many payouts that was. Fails once the node has pruned that block's state.
    pub async fn miner_payouts_at(
        &self,
        number: u32,
        who: &AccountId,
    ) -> Result<(Balance, u32), ChainError> {
        let at = self.api().at_block(number).await.map_err(rpc)?;
        let events = at.events().fetch().await.map_err(rpc)?;
        let (mut sum, mut count) = (0 as Balance, 0u32);
        for e in events.find::<sliver::sliver_rewards::events::MinerPaid>() {
            let e = e.map_err(rpc)?;
            if &e.who == who {
                sum = sum.saturating_add(e.amount);
                count = count.saturating_add(1);
            }
        }
        Ok((sum, count))
    }

    /// The epoch at the latest finalized block and the seed of the validators' audits in it,
    /// `blake2_256(b"sliver/audit" ++ seed(epoch))` (see the clock pallet). The seed is drawn
    /// when the epoch starts, so it is unknown while the epoch before it is trained: audits of
    /// epoch `e - 1` sample with the seed of `e`.
    pub async fn audit_seed(&self) -> Result<(u32, [u8; 32]), ChainError> {
        let at = self.api().at_current_block().await.map_err(rpc)?;
        let clock = || sliver::storage().sliver_clock();
        let epoch = at.storage().entry(clock().current_epoch()).map_err(rpc)?;
        let epoch: u32 = match epoch.try_fetch(()).await.map_err(rpc)? {
            Some(v) => v.decode().map_err(rpc)?,
            None => 0,
        };
        let seed = at.storage().entry(clock().epoch_seed()).map_err(rpc)?;
        // Epoch 0 has the all-zero seed, as the pallet stores it.
        let seed: H256 = match seed.try_fetch(()).await.map_err(rpc)? {
            Some(v) => v.decode().map_err(rpc)?,
            None if epoch == 0 => H256::zero(),
            None => return Err(ChainError::Rpc(format!("no seed stored for epoch {epoch}"))),
        };
        Ok((epoch, audit_seed_of(&seed)))
    }

    /// The stake bonded by the validator `who` (zero for anyone else), at the latest finalized
    /// block.
    pub async fn stake_of(&self, who: &AccountId) -> Result<Balance, ChainError> {
        let Some(uid) = self.uid_of(who).await? else { return Ok(0) };
        let at = self.api().at_current_block().await.map_err(rpc)?;
        let regs =
            at.storage().entry(sliver::storage().sliver_registry().registrations()).map_err(rpc)?;
        match regs.try_fetch((uid,)).await.map_err(rpc)? {
            Some(v) => Ok(v.decode().map_err(rpc)?.stake),
            None => Ok(0),
        }
    }

    /// Bonds `amount` more validator stake.
    pub async fn bond(&self, signer: &Keypair, amount: Balance) -> Result<(), ChainError> {
        let call = sliver::tx().sliver_registry().bond(amount);
        self.submit_and_finalize(&call, signer, "sliver_registry.bond").await.map(|_| ())
    }

    /// Epoch, phase and boundaries at the best (not yet finalized) block, which is what a
    /// transaction submitted now is checked against, with that block's number.
    pub async fn epoch_info(&self) -> Result<(EpochInfo<u32>, u32), ChainError> {
        let (number, hash) = self.best_block().await?;
        let at = self.api().at_block(hash).await.map_err(rpc)?;
        let info = at
            .runtime_apis()
            .call(sliver::runtime_apis().sliver_api().epoch_info())
            .await
            .map_err(rpc)?;
        Ok((info, number))
    }

    /// Commits the hash of this epoch's weights (Commit phase).
    pub async fn commit_weights(&self, signer: &Keypair, hash: H256) -> Result<H256, ChainError> {
        let call = sliver::tx().sliver_rewards().commit_weights(hash);
        self.submit_and_finalize(&call, signer, "sliver_rewards.commit_weights").await
    }

    /// Reveals the weights committed earlier this epoch (Reveal phase).
    pub async fn reveal_weights(
        &self,
        signer: &Keypair,
        uids: Vec<Uid>,
        weights: Vec<u16>,
        salt: [u8; 32],
    ) -> Result<H256, ChainError> {
        let call =
            sliver::tx().sliver_rewards().reveal_weights(bounded(uids), bounded(weights), salt);
        self.submit_and_finalize(&call, signer, "sliver_rewards.reveal_weights").await
    }
}

/// The latest weight commitment of each of `uids` in the state of `at`.
async fn commitments_at(
    at: &subxt::client::ClientAtBlock<
        crate::SliverConfig,
        subxt::client::OnlineClientAtBlockImpl<crate::SliverConfig>,
    >,
    uids: &[Uid],
) -> Result<Vec<(Uid, Option<Commitment<u32>>)>, ChainError> {
    let entry =
        at.storage().entry(sliver::storage().sliver_rewards().weight_commitments()).map_err(rpc)?;
    let mut out = Vec::with_capacity(uids.len());
    for &uid in uids {
        let c = match entry.try_fetch((uid,)).await.map_err(rpc)? {
            Some(v) => Some(v.decode().map_err(rpc)?),
            None => None,
        };
        out.push((uid, c));
    }
    Ok(out)
}
