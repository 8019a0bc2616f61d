//! Merging with the other miners of the same sliver over the network (DiLoCo outer step), made
//! to hold when some replicas lie.
//!
//! At every epoch boundary each replica publishes its pseudo-gradient (start weights minus
//! current weights, bf16) as a blob named `merge/<sliver>/<epoch>` in its node status,
//! fetches the other replicas' blobs, and combines what it has with the engine's robust
//! aggregate ([`sliver_engine::merge::clipped_mean`]: every norm clipped to the lower median,
//! then the mean), summed in the order of the blobs' hashes. Honest replicas that merged the
//! same set therefore compute the same bits, and commit the same hash. The outer Nesterov step
//! is all or nothing: if it would make any weight or momentum non-finite, the round is
//! discarded and both stay as they were. The chain's epoch clock is the synchronisation point,
//! so replicas on hardware of different speeds merge after different numbers of inner steps
//! without waiting for each other. A replica that does not publish in time is left out of that
//! round.
//!
//! The merged *state* — weights and the outer optimiser's momentum, so that a replica that
//! joins later continues exactly as the others do — is published as `weights/<sliver>/<epoch>`
//! and its BLAKE3 hash committed on chain; [`crate::sync`] takes it back only by that hash.
//!
//! Wire format of a set of named tensors (pseudo-gradients, weights): `b"SLVF1"`, a `u32`
//! count, then per tensor `[name length u16][name][frame length u32][sliver-wire frame]`, names
//! in sorted order. Decoding checks every name and length against the local model.

use std::time::{Duration, Instant};

use sliver_engine::checkpoint;
use sliver_engine::merge::{self as engine_merge, Flat};
use sliver_p2p::{Client, ControlRequest, ControlResponse, NodeStatus, PeerId};
use sliver_wire::WireCodec;
use tokio::sync::watch;

use crate::presence::Presence;
use crate::training::Training;

/// Why a tensor set from a peer was refused, or a merge step failed.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The bytes are not a tensor set of the local model's names and sizes.
    #[error("bad tensor set: {0}")]
    Format(String),
    /// The peer did not publish or serve it in time.
    #[error("{0}")]
    Timeout(String),
    /// The transport failed.
    #[error(transparent)]
    P2p(Box<sliver_p2p::P2pError>),
    /// The engine refused the weights.
    #[error(transparent)]
    Engine(Box<sliver_engine::EngineError>),
}

pub use sliver_engine::tensor_set::{encode_flat, encoded_len};

/// Decodes bytes from a peer into tensors with exactly the names and lengths of `like`.
pub fn decode_flat(bytes: &[u8], like: &Flat) -> Result<Flat, MergeError> {
    sliver_engine::tensor_set::decode_flat(bytes, like).map_err(|e| match e {
        sliver_engine::EngineError::Checkpoint(m) => MergeError::Format(m),
        other => MergeError::Engine(Box::new(other)),
    })
}

impl From<sliver_p2p::P2pError> for MergeError {
    fn from(e: sliver_p2p::P2pError) -> Self {
        MergeError::P2p(Box::new(e))
    }
}

impl From<sliver_engine::EngineError> for MergeError {
    fn from(e: sliver_engine::EngineError) -> Self {
        MergeError::Engine(Box::new(e))
    }
}

/// A pseudo-gradient as published: its blob's hash and the values replicas decode from it.
pub type Delta = ([u8; 32], Flat);

pub use sliver_engine::merge::State;

/// The blob name of the merged state of `sliver` at the end of `epoch`.
pub fn weights_name(sliver: u16, epoch: u64) -> String {
    format!("weights/{sliver}/{epoch}")
}

/// The blob name of a pseudo-gradient of `sliver` in `epoch`.
pub fn merge_name(sliver: u16, epoch: u64) -> String {
    format!("merge/{sliver}/{epoch}")
}

/// Waits (at most `timeout`) until `peer` names a blob `name` in its status, then fetches and
/// decodes it like `like` (at most its f32 size); returns its hash with it.
pub async fn fetch_named(
    client: &Client,
    peer: PeerId,
    name: &str,
    like: &Flat,
    timeout: Duration,
) -> Result<([u8; 32], Flat), MergeError> {
    let max_len = encoded_len(like, WireCodec::F32);
    let deadline = tokio::time::Instant::now() + timeout;
    let late =
        |what| MergeError::Timeout(format!("{name} not {what} by {peer} within {timeout:?}"));
    loop {
        match client.request(peer, ControlRequest::Status).await {
            Ok(ControlResponse::Status(s)) => {
                if let Some(hash) = s.published.get(name) {
                    let fetch = client.fetch_blob(peer, *hash, max_len);
                    let bytes = tokio::time::timeout_at(deadline, fetch)
                        .await
                        .map_err(|_| late("fetched"))??;
                    return Ok((*hash, decode_flat(&bytes, like)?));
                }
            }
            Ok(_) => {
                return Err(MergeError::Format("unexpected answer to a status request".into()))
            }
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(late("published"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Names `hash` in the node status and drops names (and blobs) older than the previous epoch.
pub fn publish_named(
    status: &watch::Sender<NodeStatus>,
    client: &Client,
    name: String,
    hash: [u8; 32],
    epoch: u64,
) {
    status.send_modify(|s| {
        s.published.insert(name, hash);
        let stale: Vec<String> = s
            .published
            .keys()
            .filter(|k| {
                k.rsplit('/')
                    .next()
                    .and_then(|e| e.parse::<u64>().ok())
                    .is_some_and(|e| e + 1 < epoch)
            })
            .cloned()
            .collect();
        for k in stale {
            if let Some(h) = s.published.remove(&k) {
                // The same bytes can stand under several names (weights that did not change).
                if !s.published.values().any(|v| *v == h) {
                    client.unpublish_blob(&h);
                }
            }
        }
    });
}

/// Publishes this epoch's pseudo-gradient (bf16) as `merge/<sliver>/<epoch>` if the sliver
/// trained since the last merge; returns it as the replicas will decode it, with its hash.
pub fn publish_delta(
    t: &mut Training,
    status: &watch::Sender<NodeStatus>,
    epoch: u64,
) -> Result<(Flat, Option<Delta>), MergeError> {
    let client = t.stage.client().clone();
    let current = engine_merge::export_flat(&mut t.stage.trainer.sliver);
    let delta = engine_merge::pseudo_gradient(&t.start, &current);
    if t.stage.steps() <= t.merged_steps {
        // A replica that did no work this epoch adds no (zero) delta to the aggregate.
        return Ok((delta, None));
    }
    let bytes = encode_flat(&delta, WireCodec::Bf16);
    let decoded = decode_flat(&bytes, &delta)?;
    let hash = client.publish_blob(bytes)?;
    publish_named(status, &client, merge_name(t.sliver, epoch), hash, epoch);
    Ok((delta, Some((hash, decoded))))
}

/// What a merge round did.
#[derive(Clone, Debug)]
pub struct Merged {
    /// BLAKE3 of the merged state (published as a blob, committed on chain).
    pub hash: [u8; 32],
    /// Its size in bytes.
    pub size: u64,
    /// Replicas whose pseudo-gradients were combined, besides this one.
    pub with: usize,
    /// Whether this miner contributed its own.
    pub trained: bool,
    /// Pseudo-gradients clipped to the median norm.
    pub clipped: usize,
    /// Whether the outer step was applied (false: it would not have been finite).
    pub applied: bool,
    /// How long it took.
    pub took: Duration,
}

/// One merge round at the end of `epoch` with `replicas` (the sliver's other miners in that
/// epoch): publish, fetch (8 s, all at once), take handed-over pseudo-gradients of replicas
/// that left, combine robustly, step, publish the merged state, save the checkpoint.
///
/// A replica that did not train this epoch merges nothing (`trained: false`, weights
/// untouched): without a pseudo-gradient of its own it cannot tell a lying replica's from an
/// honest one, so it takes the state the replicas committed instead ([`crate::sync`]).
pub async fn merge_round(
    t: &mut Training,
    status: &watch::Sender<NodeStatus>,
    replicas: &[PeerId],
    epoch: u64,
    presence: &Presence,
) -> Result<Merged, MergeError> {
    let began = Instant::now();
    let client = t.stage.client().clone();
    let name = merge_name(t.sliver, epoch);
    let (delta, own) = publish_delta(t, status, epoch)?;
    let Some(own) = own else {
        let took = began.elapsed();
        return Ok(Merged {
            hash: [0; 32],
            size: 0,
            with: 0,
            trained: false,
            clipped: 0,
            applied: false,
            took,
        });
    };
    let trained = true;
    let mut set: Vec<Delta> = vec![own];
    let fetched = futures::future::join_all(
        replicas.iter().map(|r| fetch_named(&client, *r, &name, &delta, Duration::from_secs(8))),
    )
    .await;
    for (r, f) in replicas.iter().zip(fetched) {
        match f {
            Ok(d) => set.push(d),
            Err(e) => match presence.take_handoff(r, t.sliver, epoch) {
                // A replica that left its window handed its pseudo-gradient over.
                Some(bytes) => match decode_flat(&bytes, &delta) {
                    Ok(d) => {
                        tracing::info!(peer = %r, "merging the pseudo-gradient a leaving replica handed over");
                        set.push((*blake3::hash(&bytes).as_bytes(), d));
                    }
                    Err(e) => {
                        tracing::warn!(peer = %r, error = %e, "handed-over pseudo-gradient refused")
                    }
                },
                None => tracing::debug!(peer = %r, error = %e, "replica left out of this merge"),
            },
        }
    }
    let with = set.len() - 1;
    // Every replica sums the same set in the same order: the same bits everywhere.
    set.sort_by_key(|d| d.0);
    let deltas: Vec<Flat> = set.into_iter().map(|(_, d)| d).collect();
    let agg = engine_merge::clipped_mean(&deltas);
    let clipped = agg.clipped;
    if clipped > 0 {
        tracing::info!(epoch, clipped, bound = agg.bound, norms = ?agg.norms, "pseudo-gradients clipped to the median norm");
    }
    let applied = t.outer.step_checked(&mut t.start, &agg.delta);
    if !applied {
        tracing::warn!(epoch, "the merged weights would not be finite; this round is discarded (weights and momentum kept)");
    }
    engine_merge::import_flat(&mut t.stage.trainer.sliver, &t.start)?;
    t.merged_steps = t.stage.steps();
    if let Err(e) = checkpoint::save_sliver(&mut t.stage.trainer.sliver, &t.info, &t.ckpt) {
        tracing::warn!(error = %e, "could not save the local checkpoint");
    }
    let bytes = t.state().encode();
    let size = bytes.len() as u64;
    let hash = client.publish_blob(bytes)?;
    publish_named(status, &client, weights_name(t.sliver, epoch), hash, epoch);
    Ok(Merged { hash, size, with, trained, clipped, applied, took: began.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_sets_round_trip_and_hostile_bytes_are_refused() {
        let mut flat = Flat::new();
        flat.insert("h.0.attn.c_attn.weight".into(), vec![0.5, -1.25, 3.0]);
        flat.insert("wte.weight".into(), vec![1.0; 10]);
        let bytes = encode_flat(&flat, WireCodec::F32);
        assert_eq!(bytes.len() as u64, encoded_len(&flat, WireCodec::F32));
        assert_eq!(
            encode_flat(&flat, WireCodec::Bf16).len() as u64,
            encoded_len(&flat, WireCodec::Bf16)
        );
        assert_eq!(decode_flat(&bytes, &flat).unwrap(), flat);
        let bf = decode_flat(&encode_flat(&flat, WireCodec::Bf16), &flat).unwrap();
        assert_eq!(bf["h.0.attn.c_attn.weight"], vec![0.5, -1.25, 3.0]);

        for cut in [0, 4, 9, 20, bytes.len() - 1] {
            assert!(decode_flat(&bytes[..cut], &flat).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_flat(&longer, &flat).unwrap_err().to_string().contains("trailing"));
        let mut other = flat.clone();
        other.insert("wte.weight".into(), vec![1.0; 11]);
        assert!(decode_flat(&bytes, &other).is_err(), "wrong length");
        let mut renamed = Flat::new();
        renamed.insert("x".into(), vec![0.0; 3]);
        renamed.insert("wte.weight".into(), vec![1.0; 10]);
        assert!(decode_flat(&bytes, &renamed)
            .unwrap_err()
            .to_string()
            .contains("unexpected tensor"));
        let mut nan = flat.clone();
        nan.insert("wte.weight".into(), vec![f32::NAN; 10]);
        assert!(decode_flat(&encode_flat(&nan, WireCodec::F32), &flat).is_err(), "non-finite");
    }

    #[test]
    fn a_state_carries_weights_and_momentum() {
        let mut w = Flat::new();
        w.insert("a".into(), vec![1.0, 2.0]);
        w.insert("b".into(), vec![3.0]);
        let mut v = Flat::new();
        v.insert("a".into(), vec![0.1, 0.2]);
        v.insert("b".into(), vec![0.3]);
        let s = State { weights: w.clone(), velocity: v };
        let back = State::from_flat(decode_flat(&s.encode(), &State::like(&w)).unwrap());
        assert_eq!(back, s);
        assert!(
            decode_flat(&encode_flat(&w, WireCodec::F32), &State::like(&w)).is_err(),
            "weights alone are not a state"
        );
    }
}
