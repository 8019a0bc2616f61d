//! Byte budgets: how much memory peers can make this node hold, and how many bytes it serves
//! each of them.
//!
//! - [`InboundBudget`]: tensor frames being read and waiting in the delivery queue. Each peer
//!   reads at most `streams_per_peer` frames at once and reserves each frame's announced length
//!   from its own budget before the payload is read (a peer that stalls its streams only blocks
//!   itself). Buffers grow as bytes arrive, and their capacity is taken from one global budget,
//!   so announcing a large frame costs nothing until the bytes are there, and what all peers
//!   together make this node hold is bounded. A frame keeps its permits until the application
//!   drops it.
//! - [`ServeBudget`]: a token bucket per peer for blob bytes served, so one peer cannot take the
//!   node's upload for itself.
//!
//! Peers' entries are pruned when nothing of theirs is held, so the maps stay as small as the set
//! of peers active now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budgets count in units of this many bytes.
const UNIT: u64 = 1024;
/// Buffers grow by at least this much at a time.
const MIN_GROWTH: usize = 64 << 10;

fn units(bytes: u64) -> u32 {
    bytes.div_ceil(UNIT).min(u32::MAX as u64) as u32
}

struct PeerBudget {
    streams: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// The inbound budgets of one node (shared by its stream-reading tasks).
pub struct InboundBudget {
    global: Arc<Semaphore>,
    global_units: u32,
    streams_per_peer: usize,
    peer_units: u32,
    peers: Mutex<HashMap<PeerId, PeerBudget>>,
}

/// Why a stream could not start.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// The peer already has its streams in flight.
    Streams,
}

/// A stream slot of one peer; released when dropped.
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
}

/// The memory a frame holds: its reservation in the peer's budget and its buffer's capacity in
/// the global one. Released when dropped.
#[derive(Debug)]
pub struct FramePermit {
    _peer: OwnedSemaphorePermit,
    global: Option<OwnedSemaphorePermit>,
}

impl InboundBudget {
    /// A budget of `global_bytes` in all, `peer_bytes` and `streams_per_peer` streams per peer.
    pub fn new(global_bytes: u64, peer_bytes: u64, streams_per_peer: usize) -> Self {
        let global_units = units(global_bytes).max(1);
        InboundBudget {
            global: Arc::new(Semaphore::new(global_units as usize)),
            global_units,
            streams_per_peer: streams_per_peer.max(1),
            peer_units: units(peer_bytes).max(1),
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn peer(&self, peer: PeerId) -> Option<(Arc<Semaphore>, Arc<Semaphore>)> {
        let mut peers = self.peers.lock().ok()?;
        let b = peers.entry(peer).or_insert_with(|| PeerBudget {
            streams: Arc::new(Semaphore::new(self.streams_per_peer)),
            bytes: Arc::new(Semaphore::new(self.peer_units as usize)),
        });
        Some((b.streams.clone(), b.bytes.clone()))
    }

    /// A stream slot for `peer`, or [`Busy`] if it has its streams in flight.
    pub fn stream(&self, peer: PeerId) -> Result<StreamSlot, Busy> {
        let (streams, _) = self.peer(peer).ok_or(Busy::Streams)?;
        let permit = streams.try_acquire_owned().map_err(|_| Busy::Streams)?;
        Ok(StreamSlot { _permit: permit })
    }

    /// Reserves `len` bytes of `peer`'s budget for a frame about to be read (waits while the
    /// peer's earlier frames hold it). `None` if `len` exceeds the whole per-peer budget.
    pub async fn reserve(&self, peer: PeerId, len: u64) -> Option<FramePermit> {
        let want = units(len);
        if want > self.peer_units {
            return None;
        }
        let (_, bytes) = self.peer(peer)?;
        let permit = bytes.acquire_many_owned(want).await.ok()?;
        Some(FramePermit { _peer: permit, global: None })
    }

    /// Grows `buf` to hold at least `more` further bytes (at most `cap` in all), taking the
    /// added capacity from the global budget first; false (nothing grown) if the global budget
    /// does not hold it now.
    pub fn grow(
        &self,
        buf: &mut Vec<u8>,
        more: usize,
        cap: usize,
        permit: &mut FramePermit,
    ) -> bool {
        let need = buf.len() + more;
        if need <= buf.capacity() {
            return true;
        }
        let target = need.max(buf.capacity().saturating_mul(2)).max(MIN_GROWTH).min(cap.max(need));
        let add = units((target - buf.capacity()) as u64);
        let Ok(p) = self.global.clone().try_acquire_many_owned(add) else { return false };
        match &mut permit.global {
            Some(held) => held.merge(p),
            None => permit.global = Some(p),
        }
        buf.reserve_exact(target - buf.len());
        true
    }

    /// Forgets the entry of `peer` when nothing of it is held.
    pub fn prune(&self, peer: &PeerId) {
        if let Ok(mut peers) = self.peers.lock() {
            let idle = peers.get(peer).is_some_and(|b| {
                b.streams.available_permits() == self.streams_per_peer
                    && b.bytes.available_permits() == self.peer_units as usize
            });
            if idle {
                peers.remove(peer);
            }
        }
    }

    /// Bytes held now across all peers (buffer capacity of frames being read or queued).
    pub fn held_bytes(&self) -> u64 {
        (self.global_units as u64 - self.global.available_permits() as u64) * UNIT
    }

    /// Peers with an entry now.
    pub fn tracked_peers(&self) -> usize {
        self.peers.lock().map(|p| p.len()).unwrap_or(0)
    }
}

/// A token bucket per peer: `rate` bytes a second, at most `burst` at once.
pub struct ServeBudget {
    rate: f64,
    burst: f64,
    buckets: HashMap<PeerId, (f64, Instant)>,
}

impl ServeBudget {
    /// Buckets of `burst` bytes refilled at `rate` bytes a second.
    pub fn new(rate: u64, burst: u64) -> Self {
        ServeBudget { rate: rate as f64, burst: burst as f64, buckets: HashMap::new() }
    }

    /// Takes `bytes` from `peer`'s bucket; false (nothing taken) if it does not hold them.
    pub fn take(&mut self, peer: PeerId, bytes: u64, now: Instant) -> bool {
        if self.buckets.len() > 1024 {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (t, at)| {
                *t + rate * now.saturating_duration_since(*at).as_secs_f64() < burst
            });
        }
        let (tokens, at) = self.buckets.entry(peer).or_insert((self.burst, now));
        *tokens = (*tokens + self.rate * now.saturating_duration_since(*at).as_secs_f64())
            .min(self.burst);
        *at = now;
        if *tokens >= bytes as f64 {
            *tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn frames_reserve_their_peer_budget_and_buffers_take_the_global_one() {
        let b = InboundBudget::new(1 << 20, 300 << 10, 2);
        let p = PeerId::random();
        let s1 = b.stream(p).unwrap();
        let _s2 = b.stream(p).unwrap();
        assert_eq!(b.stream(p).err(), Some(Busy::Streams), "two streams per peer");
        drop(s1);
        let _s3 = b.stream(p).unwrap();
        assert!(b.reserve(p, 301 << 10).await.is_none(), "larger than the peer's budget");
        let mut f1 = b.reserve(p, 200 << 10).await.unwrap();
        // The second frame waits until the first is released.
        let pending = tokio::time::timeout(Duration::from_millis(50), b.reserve(p, 200 << 10));
        assert!(pending.await.is_err());
        let mut buf = Vec::new();
        assert!(b.grow(&mut buf, 10, 200 << 10, &mut f1));
        assert!(buf.capacity() >= MIN_GROWTH && buf.capacity() <= 200 << 10);
        assert!(b.held_bytes() >= MIN_GROWTH as u64 && b.held_bytes() <= 200 << 10);
        drop(f1);
        assert_eq!(b.held_bytes(), 0, "released with the frame");
        let mut f2 = b.reserve(p, 200 << 10).await.unwrap();
        // The global budget (1 MiB here) refuses growth past it instead of waiting.
        let mut big = Vec::new();
        assert!(!b.grow(&mut big, 2 << 20, 2 << 20, &mut f2), "more than the global budget");
        assert!(big.capacity() == 0);
        // Another peer has its own budget.
        let q = PeerId::random();
        assert!(b.reserve(q, 250 << 10).await.is_some());
        b.prune(&q);
        assert_eq!(b.tracked_peers(), 1, "an idle peer's entry is dropped");
    }

    #[test]
    fn buckets_refill_at_their_rate() {
        let mut s = ServeBudget::new(1000, 2000);
        let p = PeerId::random();
        let t = Instant::now();
        assert!(s.take(p, 1500, t));
        assert!(!s.take(p, 1000, t), "500 left");
        assert!(s.take(p, 1000, t + Duration::from_millis(600)), "1100 after 0.6 s");
        assert!(!s.take(p, 3000, t + Duration::from_secs(100)), "never more than the burst");
        assert!(s.take(PeerId::random(), 2000, t), "each peer has its own bucket");
    }
}
