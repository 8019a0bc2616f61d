//! Taking a sliver's merged state from other miners, checked against the chain.
//!
//! A miner that joins a sliver (reassigned at a boundary, or restarted) needs the state its
//! replicas merged at the end of the epoch that just ended. Any peer can claim to serve it, so
//! the chain decides which bytes are right:
//!
//! **The rule.** The miners the chain assigned to the sliver in that epoch commit the BLAKE3
//! hash of their merged state on chain in the epoch after it (`publish_weight_commitment`). The
//! accepted hash is the one most of them committed; a tie goes to the hash committed by the
//! lowest uid. Honest replicas that merged the same pseudo-gradients commit the same hash
//! (the robust merge is bitwise reproducible, see [`crate::merge`]), so while most of a
//! sliver's replicas are honest, their hash wins. The joiner waits (at most the given time)
//! until no hash still missing a commitment could overtake the leader, or until the leader
//! holds half of the replicas and no commitment has come for 3 s (replicas that did not train
//! commit nothing).
//!
//! **The fetch.** The blob is asked for by that hash — first from the replicas that committed
//! it, then from the sliver's other miners of both epochs — and every blob is checked against
//! the hash on arrival: a holder that lies is skipped and the next one asked. A committed size
//! that differs from what the model's state takes is refused before anything is fetched.
//!
//! Without any commitment to check against (a fresh run, or the node no longer holding the
//! previous epoch's assignment), nothing is taken from peers: the miner starts from its local
//! checkpoint or the deterministic initialisation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sliver_chain::{Commitment, Uid};
use sliver_engine::merge::Flat;
use sliver_operator::chain::{ChainHandle, ChainView};
use sliver_p2p::{Client, PeerId};
use sliver_wire::WireCodec;

use crate::merge::{decode_flat, encoded_len, State};

/// How long without a new commitment before a leader that holds half of the replicas is taken.
const SETTLE: Duration = Duration::from_secs(3);

/// Why no verified state was taken.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The previous epoch's assignment is not known.
    #[error("the assignment of epoch {0} is not known (the node may have pruned it)")]
    NoAssignment(u64),
    /// No replica of that epoch committed a state.
    #[error(
        "no miner of sliver {sliver} committed its weights for epoch {epoch} within {waited:?}"
    )]
    NoCommitment {
        /// The sliver.
        sliver: u16,
        /// The epoch merged.
        epoch: u64,
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
/// merged), best first: most committers, then lowest committing uid. Also whether the leader is
/// decided: no candidate could overtake it with the `expected` replicas still to commit.
pub fn candidates(
    commitments: &[(Uid, Option<Commitment<u32>>)],
    merged_in: u64,
    expected: usize,
) -> (Vec<Candidate>, bool) {
    let mut by_hash: BTreeMap<([u8; 32], u64), Vec<Uid>> = BTreeMap::new();
    for (uid, c) in commitments {
        if let Some(c) = c.as_ref().filter(|c| c.epoch as u64 == merged_in) {
            by_hash.entry((c.hash.0, c.size)).or_default().push(*uid);
        }
    }
    let committed: usize = by_hash.values().map(Vec::len).sum();
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
    let missing = expected.saturating_sub(committed);
    let decided = match out.as_slice() {
        [] => false,
        [only] => only.committers.len() > missing,
        [first, second, ..] => first.committers.len() > second.committers.len() + missing,
    };
    (out, decided)
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
    let uids: Vec<Uid> = replicas.iter().map(|p| p.uid).collect();
    let began = Instant::now();
    let (mut seen, mut last_new) = (0usize, Instant::now());
    let best = loop {
        let ask = uids.clone();
        let commitments =
            chain.call(move |c| async move { c.weight_commitments(&ask).await }).await?;
        let (list, decided) = candidates(&commitments, ended + 1, uids.len());
        let committed: usize = list.iter().map(|c| c.committers.len()).sum();
        if committed > seen {
            (seen, last_new) = (committed, Instant::now());
        }
        // Replicas that did not train commit nothing: once the leader holds half of the
        // replicas and no commitment came for a while, the rest are not coming.
        let settled = list.first().is_some_and(|l| 2 * l.committers.len() >= uids.len())
            && last_new.elapsed() >= SETTLE;
        if decided || settled || began.elapsed() >= wait {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if best.is_empty() {
        return Err(SyncError::NoCommitment { sliver, epoch: ended, waited: began.elapsed() });
    }
    let like = State::like(weights_like);
    let size = encoded_len(&like, WireCodec::F32);
    let me = client.peer_id();
    let mut tried = 0;
    let mut last_hash = String::new();
    for c in &best {
        last_hash = hex(&c.hash);
        if c.size != size {
            tracing::warn!(hash = %last_hash, committed = c.size, expected = size, committers = ?c.committers, "a committed state of the wrong size; ignored");
            continue;
        }
        // Its committers first, then every other miner of the sliver in either epoch.
        let mut holders: Vec<PeerId> = Vec::new();
        let committers = replicas.iter().filter(|p| c.committers.contains(&p.uid));
        let others = replicas.iter().copied().chain(view.miners(sliver));
        for p in committers.copied().chain(others) {
            if p.peer != me && !holders.contains(&p.peer) {
                holders.push(p.peer);
            }
        }
        for peer in holders {
            tried += 1;
            let fetch = client.fetch_blob(peer, c.hash, size);
            match tokio::time::timeout(Duration::from_secs(10), fetch).await {
                Ok(Ok(bytes)) => match decode_flat(&bytes, &like) {
                    Ok(flat) => {
                        tracing::info!(%peer, sliver, epoch = ended, committers = ?c.committers, "weights synced from a replica (hash committed on chain)");
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
    }
    Err(SyncError::NotServed { sliver, hash: last_hash, tried })
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
    fn the_hash_most_replicas_committed_wins_and_ties_go_to_the_lowest_uid() {
        // Three replicas: two agree, one lies.
        let (list, decided) =
            candidates(&[(4, c(8, 1, 100)), (2, c(8, 9, 100)), (7, c(8, 1, 100))], 8, 3);
        assert!(decided);
        assert_eq!(list[0].hash, [1; 32]);
        assert_eq!(list[0].committers, vec![4, 7]);
        assert_eq!(list[1].committers, vec![2]);
        // Commitments of other epochs do not count.
        let (list, _) = candidates(&[(4, c(7, 1, 100)), (2, c(8, 9, 100)), (5, None)], 8, 3);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].hash, [9; 32]);
        // A tie: the lowest uid's hash first, and not decided while one could still break it.
        let (list, decided) = candidates(&[(6, c(8, 1, 100)), (3, c(8, 2, 100))], 8, 3);
        assert_eq!(list[0].hash, [2; 32]);
        assert!(!decided);
        let (_, decided) = candidates(&[(6, c(8, 1, 100)), (3, c(8, 2, 100))], 8, 2);
        assert!(!decided, "a tie with everyone committed stays a tie");
        let (_, decided) = candidates(&[(6, c(8, 1, 100))], 8, 2);
        assert!(!decided, "one of two could still be outvoted");
        let (_, decided) = candidates(&[(6, c(8, 1, 100)), (3, c(8, 1, 100))], 8, 2);
        assert!(decided);
        assert_eq!(candidates(&[], 8, 2), (Vec::new(), false));
    }
}
