//! Taking a sliver's merged state from other miners, checked against the chain.
//!
//! A miner that joins a sliver (reassigned at a boundary, restarted, or back after an epoch in
//! which it did not train) needs the state its replicas merged at the end of the epoch that
//! just ended. Any peer can claim to serve it, so the chain decides which bytes are right:
//!
//! **The rule.** The miners the chain assigned to the sliver in that epoch commit the BLAKE3
//! hash of their merged state on chain in the epoch after it (`publish_weight_commitment`). A
//! hash is accepted only if a strict majority of those replicas committed it. Honest replicas
//! that merged the same pseudo-gradients commit the same hash (the robust merge is bitwise
//! reproducible, see [`crate::merge`]), so while most of a sliver's replicas are honest and
//! trained, their hash is accepted; a liar — or any minority, however fast — never is. Without
//! a majority (replicas that did not train commit nothing; two replicas that disagree tie)
//! nothing is taken, and the miner keeps, or starts from, its own weights. The joiner waits (at
//! most the given time) until some hash has its majority.
//!
//! **The fetch.** The blob is asked for by that hash — first from the replicas that committed
//! it, then from the sliver's other miners of both epochs — and every blob is checked against
//! the hash on arrival: a holder that lies is skipped and the next one asked. A committed size
//! that differs from what the model's state takes is refused before anything is fetched.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sliver_chain::{Commitment, Uid};
use sliver_engine::merge::Flat;
use sliver_operator::chain::{ChainHandle, ChainView};
use sliver_p2p::{Client, PeerId};
use sliver_wire::WireCodec;

use crate::merge::{decode_flat, encoded_len, State};

/// Why no verified state was taken.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The previous epoch's assignment is not known.
    #[error("the assignment of epoch {0} is not known (the node may have pruned it)")]
    NoAssignment(u64),
    /// No hash has a strict majority of the replicas of that epoch.
    #[error(
        "no state of sliver {sliver} for epoch {epoch} was committed by a majority of its \
         {replicas} replicas within {waited:?} (committers per hash: {counts:?})"
    )]
    NoMajority {
        /// The sliver.
        sliver: u16,
        /// The epoch merged.
        epoch: u64,
        /// Replicas assigned in that epoch.
        replicas: usize,
        /// Committers per candidate hash, most first.
        counts: Vec<usize>,
        /// How long it waited.
        waited: Duration,
    },
    /// Committed, but no holder served bytes with that hash.
    #[error("no miner served the committed weights {hash} of sliver {sliver} ({tried} asked)")]
    NotServed {
        /// The sliver.
        sliver: u16,
        /// The hash, hex.
        hash: String,
        /// Holders asked.
        tried: usize,
    },
    /// The chain could not be read.
    #[error(transparent)]
    Chain(#[from] sliver_operator::chain::ChainTaskError),
}

/// A hash the replicas committed, with who committed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// BLAKE3 of the state.
    pub hash: [u8; 32],
    /// Its committed size.
    pub size: u64,
    /// Committing uids, ascending.
    pub committers: Vec<Uid>,
}

/// The candidates among `commitments` published in epoch `merged_in` (the epoch after the one
/// merged), most committers first (then the lowest committing uid), and the accepted one: the
/// first, if a strict majority of the `replicas` committed it.
pub fn candidates(
    commitments: &[(Uid, Option<Commitment<u32>>)],
    merged_in: u64,
    replicas: usize,
) -> (Vec<Candidate>, Option<Candidate>) {
    let mut by_hash: BTreeMap<([u8; 32], u64), Vec<Uid>> = BTreeMap::new();
    for (uid, c) in commitments {
        if let Some(c) = c.as_ref().filter(|c| c.epoch as u64 == merged_in) {
            by_hash.entry((c.hash.0, c.size)).or_default().push(*uid);
        }
    }
    let mut out: Vec<Candidate> = by_hash
        .into_iter()
        .map(|((hash, size), mut committers)| {
            committers.sort_unstable();
            Candidate { hash, size, committers }
        })
        .collect();
    out.sort_by(|a, b| {
        b.committers.len().cmp(&a.committers.len()).then(a.committers[0].cmp(&b.committers[0]))
    });
    let accepted = out.first().filter(|c| 2 * c.committers.len() > replicas).cloned();
    (out, accepted)
}

/// The merged state of `sliver` at the end of epoch `ended`, as the chain's commitments name
/// it, from whichever holder serves those bytes; waits at most `wait` for the commitments.
/// Returns the state and the peer that served it.
pub async fn committed_state(
    chain: &ChainHandle,
    client: &Client,
    view: &ChainView,
    sliver: u16,
    ended: u64,
    weights_like: &Flat,
    wait: Duration,
) -> Result<(State, PeerId), SyncError> {
    if view.previous.as_ref().is_none_or(|(e, _)| *e != ended) {
        return Err(SyncError::NoAssignment(ended));
    }
    let replicas = view.previous_miners(sliver);
    // Every uid assigned in that epoch counts towards the majority, also one that deregistered
    // since: leaving does not hand the vote to whoever stays.
    let uids: Vec<Uid> =
        view.previous.as_ref().and_then(|(_, s)| s.get(&sliver)).cloned().unwrap_or_default();
    let began = Instant::now();
    let (list, accepted) = loop {
        let ask = uids.clone();
        let commitments =
            chain.call(move |c| async move { c.weight_commitments(&ask).await }).await?;
        let (list, accepted) = candidates(&commitments, ended + 1, uids.len());
        if accepted.is_some() || began.elapsed() >= wait {
            break (list, accepted);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let Some(c) = accepted else {
        return Err(SyncError::NoMajority {
            sliver,
            epoch: ended,
            replicas: uids.len(),
            counts: list.iter().map(|c| c.committers.len()).collect(),
            waited: began.elapsed(),
        });
    };
    let like = State::like(weights_like);
    let size = encoded_len(&like, WireCodec::F32);
    if c.size != size {
        return Err(SyncError::NotServed { sliver, hash: hex(&c.hash), tried: 0 });
    }
    let me = client.peer_id();
    // Its committers first, then every other miner of the sliver in either epoch.
    let mut holders: Vec<PeerId> = Vec::new();
    let committers = replicas.iter().filter(|p| c.committers.contains(&p.uid));
    let others = replicas.iter().copied().chain(view.miners(sliver));
    for p in committers.copied().chain(others) {
        if p.peer != me && !holders.contains(&p.peer) {
            holders.push(p.peer);
        }
    }
    for &peer in &holders {
        let fetch = client.fetch_blob(peer, c.hash, size);
        match tokio::time::timeout(Duration::from_secs(10), fetch).await {
            Ok(Ok(bytes)) => match decode_flat(&bytes, &like) {
                Ok(flat) => {
                    tracing::info!(%peer, sliver, epoch = ended, committers = ?c.committers, of = uids.len(), "weights synced from a replica (hash committed on chain by a majority)");
                    return Ok((State::from_flat(flat), peer));
                }
                Err(e) => tracing::warn!(%peer, error = %e, "committed state does not decode"),
            },
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "holder did not serve the committed weights; asking the next")
            }
            Err(_) => tracing::info!(%peer, "holder too slow; asking the next"),
        }
    }
    Err(SyncError::NotServed { sliver, hash: hex(&c.hash), tried: holders.len() })
}

fn hex(h: &[u8; 32]) -> String {
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sliver_chain::subxt::utils::H256;

    fn c(epoch: u32, hash: u8, size: u64) -> Option<Commitment<u32>> {
        Some(Commitment { epoch, hash: H256([hash; 32]), size, step: 10, block: 5 })
    }

    #[test]
    fn only_a_hash_a_strict_majority_of_the_replicas_committed_is_accepted() {
        // Three replicas: two agree, one lies.
        let (list, ok) =
            candidates(&[(4, c(8, 1, 100)), (2, c(8, 9, 100)), (7, c(8, 1, 100))], 8, 3);
        assert_eq!(ok.unwrap().committers, vec![4, 7]);
        assert_eq!(list[1].committers, vec![2]);
        // Commitments of other epochs do not count.
        let (list, ok) = candidates(&[(4, c(7, 1, 100)), (2, c(8, 9, 100)), (5, None)], 8, 3);
        assert_eq!(list.len(), 1);
        assert!(ok.is_none(), "one of three is no majority");
        // A lone committer of two replicas (the other did not train) is no majority either:
        // it could be a liar.
        assert!(candidates(&[(6, c(8, 1, 100)), (3, None)], 8, 2).1.is_none());
        // A tie is no majority; the order still puts the lowest uid first.
        let (list, ok) = candidates(&[(6, c(8, 1, 100)), (3, c(8, 2, 100))], 8, 2);
        assert_eq!(list[0].hash, [2; 32]);
        assert!(ok.is_none());
        assert!(candidates(&[(6, c(8, 1, 100)), (3, c(8, 1, 100))], 8, 2).1.is_some());
        assert_eq!(candidates(&[], 8, 2), (Vec::new(), None));
    }
}
