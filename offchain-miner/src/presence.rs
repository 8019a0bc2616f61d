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
//! A notice counts only if its sender is a miner the chain assigned this epoch to the sliver
//! the notice names, for this run and this epoch (the caller's [`Judge`]); anything else is
//! ignored, so no notice can name another sliver or a future epoch. Only replicas of the
//! receiver's own sliver hand over pseudo-gradients: at most one fetch per sender at a time,
//! [`MAX_FETCHES`] at once, each at most the size of that sliver's pseudo-gradient. Nothing a
//! notice says is trusted beyond "do not send this peer work": a handed-over pseudo-gradient
//! is decoded against the local model and merged robustly like any other.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sliver_p2p::{Client, PeerId, PresenceNotice};
use tokio::sync::{mpsc, Semaphore};

/// Pseudo-gradients kept per (sliver, epoch) at most.
const MAX_HANDOFFS: usize = 64;
/// Handed-over pseudo-gradients fetched at once at most.
pub const MAX_FETCHES: usize = 4;

/// What the receiver makes of a notice (from its view of the chain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not from a miner of the named sliver in this run and epoch: ignored.
    Ignore,
    /// Counts for "away or back"; `handoff` is the largest pseudo-gradient this receiver takes
    /// from it (`None`: not a replica of its own sliver, it takes none).
    Count {
        /// The local epoch (what handed-over blobs are kept for).
        epoch: u64,
        /// Largest pseudo-gradient taken, if any.
        handoff: Option<u64>,
    },
}

/// Decides about each notice and its sender.
pub type Judge = Box<dyn Fn(&PeerId, &PresenceNotice) -> Verdict + Send + Sync>;

/// Handed-over pseudo-gradients by (sliver, epoch): who handed each over.
type Handoffs = BTreeMap<(u16, u64), Vec<(PeerId, Vec<u8>)>>;

#[derive(Default)]
struct Inner {
    away: HashSet<PeerId>,
    handoffs: Handoffs,
    fetching: HashSet<PeerId>,
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

    /// Keeps a handed-over pseudo-gradient for `(sliver, epoch)`; `epoch` is the receiver's
    /// own, so blobs of epochs before the previous one are dropped whatever a notice claimed.
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

    /// Marks a fetch from `peer` as started; false if one is under way already.
    fn start_fetch(&self, peer: PeerId) -> bool {
        self.inner.lock().map(|mut i| i.fetching.insert(peer)).unwrap_or(false)
    }

    fn end_fetch(&self, peer: &PeerId) {
        if let Ok(mut i) = self.inner.lock() {
            i.fetching.remove(peer);
        }
    }

    /// Forgets who was away (a new epoch has a new assignment: they announce again).
    pub fn new_epoch(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.away.clear();
        }
    }
}

/// Takes the notices `client`'s node receives: `judge` says which count; records who is away,
/// and fetches (within 30 s, bounded as the verdict says) the pseudo-gradient a leaving
/// replica of this miner's sliver hands over.
pub async fn serve(
    presence: Presence,
    client: Client,
    mut notices: mpsc::Receiver<(PeerId, PresenceNotice)>,
    judge: Judge,
) {
    let slots = Arc::new(Semaphore::new(MAX_FETCHES));
    while let Some((peer, notice)) = notices.recv().await {
        let Verdict::Count { epoch, handoff } = judge(&peer, &notice) else {
            tracing::debug!(%peer, ?notice, "presence notice not from a miner of the sliver it names, this run and epoch; ignored");
            continue;
        };
        presence.note(peer, &notice);
        tracing::info!(
            %peer,
            sliver = notice.sliver,
            epoch = notice.epoch,
            "a miner {}",
            if notice.available { "rejoined the pipeline" } else { "is leaving the pipeline" }
        );
        let (Some(hash), Some(max)) = (notice.merge.filter(|_| !notice.available), handoff) else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many handed-over pseudo-gradients being fetched; this one is not taken");
            continue;
        };
        if !presence.start_fetch(peer) {
            continue;
        }
        let (presence, client) = (presence.clone(), client.clone());
        tokio::spawn(async move {
            let fetch = client.fetch_blob(peer, hash, max);
            match tokio::time::timeout(Duration::from_secs(30), fetch).await {
                Ok(Ok(bytes)) => {
                    tracing::info!(%peer, sliver = notice.sliver, epoch, bytes = bytes.len(), "took over a leaving replica's pseudo-gradient");
                    presence.keep(peer, notice.sliver, epoch, bytes);
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "handed-over pseudo-gradient not fetched")
                }
                Err(_) => tracing::warn!(%peer, "handed-over pseudo-gradient not fetched in 30 s"),
            }
            presence.end_fetch(&peer);
            drop(slot);
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
