//! Leaving and rejoining the pipeline at the edges of availability windows.
//!
//! A miner whose window ends tells its neighbours (the miners of the slivers before and after
//! its own) and its replicas (the other miners of its sliver) that it is leaving, with a
//! [`PresenceNotice`]; it then finishes its in-flight micro-batches, steps on what it
//! accumulated, publishes its pseudo-gradient for the epoch and tells its replicas its hash.
//! The replicas fetch it at once and merge it at the epoch boundary even if the leaver's
//! machine is off by then. Neighbours stop routing work to it; when it rejoins it says so and
//! they route to it again.
//!
//! [`Presence`] is the receiving side: who is away, and the pseudo-gradients handed over.
//! Notices come only from registered miners of the run (the caller's `accept` check), handed
//! over blobs are bounded in size and number, and nothing a notice says is trusted beyond
//! "do not send this peer work": a handed-over pseudo-gradient is decoded against the local
//! model before it is merged.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sliver_p2p::{Client, PeerId, PresenceNotice};
use tokio::sync::mpsc;

/// Pseudo-gradients kept per (sliver, epoch) at most.
const MAX_HANDOFFS: usize = 64;

#[derive(Default)]
struct Inner {
    away: HashSet<PeerId>,
    handoffs: BTreeMap<(u16, u64), Vec<(PeerId, Vec<u8>)>>,
}

/// What other miners said of their presence (cheap to clone).
#[derive(Clone, Default)]
pub struct Presence {
    inner: Arc<Mutex<Inner>>,
}

impl Presence {
    /// True if `peer` left the pipeline and has not said it is back.
    pub fn is_away(&self, peer: &PeerId) -> bool {
        self.inner.lock().map(|i| i.away.contains(peer)).unwrap_or(false)
    }

    /// The pseudo-gradient `peer` handed over for `sliver` in `epoch`, if any (taken once).
    pub fn take_handoff(&self, peer: &PeerId, sliver: u16, epoch: u64) -> Option<Vec<u8>> {
        let mut inner = self.inner.lock().ok()?;
        let list = inner.handoffs.get_mut(&(sliver, epoch))?;
        let at = list.iter().position(|(p, _)| p == peer)?;
        Some(list.swap_remove(at).1)
    }

    fn note(&self, peer: PeerId, notice: &PresenceNotice) {
        if let Ok(mut inner) = self.inner.lock() {
            if notice.available {
                inner.away.remove(&peer);
            } else {
                inner.away.insert(peer);
            }
        }
    }

    fn keep(&self, peer: PeerId, sliver: u16, epoch: u64, bytes: Vec<u8>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.handoffs.retain(|(_, e), _| e.saturating_add(1) >= epoch);
            let list = inner.handoffs.entry((sliver, epoch)).or_default();
            list.retain(|(p, _)| *p != peer);
            if list.len() < MAX_HANDOFFS {
                list.push((peer, bytes));
            }
        }
    }
}

/// Takes the notices `client`'s node receives: records who is away, and fetches (within
/// 30 s, at most `max_handoff` bytes) the pseudo-gradient a leaving replica hands over.
/// `accept` says whether a notice's sender may speak for the sliver it names (a registered
/// miner of the run); other notices are ignored.
pub async fn serve(
    presence: Presence,
    client: Client,
    mut notices: mpsc::Receiver<(PeerId, PresenceNotice)>,
    accept: impl Fn(&PeerId, &PresenceNotice) -> bool + Send + 'static,
    max_handoff: u64,
) {
    while let Some((peer, notice)) = notices.recv().await {
        if !accept(&peer, &notice) {
            tracing::debug!(%peer, ?notice, "presence notice from a peer that is not a miner of this run; ignored");
            continue;
        }
        presence.note(peer, &notice);
        tracing::info!(
            %peer,
            sliver = notice.sliver,
            epoch = notice.epoch,
            "a miner {}",
            if notice.available { "rejoined the pipeline" } else { "is leaving the pipeline" }
        );
        let Some(hash) = notice.merge.filter(|_| !notice.available) else { continue };
        let (presence, client) = (presence.clone(), client.clone());
        tokio::spawn(async move {
            let fetch = client.fetch_blob(peer, hash, max_handoff);
            match tokio::time::timeout(Duration::from_secs(30), fetch).await {
                Ok(Ok(bytes)) => {
                    tracing::info!(%peer, sliver = notice.sliver, epoch = notice.epoch, bytes = bytes.len(), "took over a leaving replica's pseudo-gradient");
                    presence.keep(peer, notice.sliver, notice.epoch, bytes);
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "handed-over pseudo-gradient not fetched")
                }
                Err(_) => tracing::warn!(%peer, "handed-over pseudo-gradient not fetched in 30 s"),
            }
        });
    }
}

/// Sends `notice` to every peer of `peers` at once; returns how many took it.
pub async fn announce(client: &Client, peers: &[PeerId], notice: PresenceNotice) -> usize {
    let sent = futures::future::join_all(peers.iter().map(|p| async move {
        let r = tokio::time::timeout(Duration::from_secs(5), client.announce(*p, notice)).await;
        match r {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(peer = %p, error = %e, "presence notice not taken");
                false
            }
            Err(_) => false,
        }
    }))
    .await;
    sent.into_iter().filter(|ok| *ok).count()
}
