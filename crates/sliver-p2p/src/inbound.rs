//! Receiving tensor frames: every check a frame passes before the application gets it and
//! before a receipt is signed for it, in the order that keeps a hostile peer's cost to this
//! node small.
//!
//! 1. The sender must be admitted (registered, not banned) — checked before a byte is read.
//! 2. At most `max_inbound_per_peer` of its streams are read at once; more are refused "busy".
//! 3. The header (at most [`MAX_HEADER_LEN`] bytes) is decoded and its announced length checked
//!    against `max_frame_bytes` and against what codec and shape need.
//! 4. The application's [`FrameGate`] says whether this peer may send this frame now (run,
//!    epoch, sliver, its assignment, the micro-batch waited for) — still before the payload.
//! 5. The announced length is reserved from the peer's byte budget; the buffer then grows as
//!    bytes arrive, taking its capacity from the node's global budget (see [`crate::budget`]).
//! 6. The payload's hash, codec, shape, finiteness and magnitude (`max_abs_value`) are checked,
//!    then the gate accepts it, and the frame is delivered (once, even if a retried stream
//!    brings it twice) with its memory permits.
//! 7. Only then is the receipt signed: "this receiver accepted this frame from this sender".
//!
//! A refusal is answered with its reason; misbehaviour (malformed, lying or oversized frames,
//! frames the gate says no peer of that role should send) also strikes the peer, and the swarm
//! task bans it after `max_strikes`. Everything is bounded by `frame_timeout`.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use tokio::sync::{mpsc, watch};

use crate::admission::AdmissionView;
use crate::budget::{FramePermit, InboundBudget};
use crate::frame::{FrameError, FrameHeader, MAX_HEADER_LEN};
use crate::network::{Client, IncomingFrame};
use crate::receipt::{Receipt, Reply};
use crate::swarm::Command;

/// The application's say over tensor frames, consulted by the receiver before the payload is
/// read ([`FrameGate::check`]) and after it passed the transport's checks
/// ([`FrameGate::accept`]); a receipt is signed only if both agree.
pub trait FrameGate: Send + Sync + 'static {
    /// Whether `peer` may send a frame with `header` now.
    fn check(&self, peer: &PeerId, header: &FrameHeader) -> Result<(), Refusal>;

    /// The final acceptance of a frame whose payload is valid; a gate may take note here (a
    /// gradient it waited for has come, so a second one is refused).
    fn accept(&self, peer: &PeerId, header: &FrameHeader) -> Result<(), Refusal> {
        self.check(peer, header)
    }
}

/// Why a gate refused a frame, and whether that counts against the sender (an honest peer can
/// send a frame of an epoch that just ended; no honest peer sends a frame for a sliver it is
/// not assigned to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Sent back to the sender.
    pub reason: String,
    /// Counts a strike.
    pub strike: bool,
}

impl Refusal {
    /// A refusal an honest peer can earn (late, early): no strike.
    pub fn benign(reason: impl Into<String>) -> Self {
        Refusal { reason: reason.into(), strike: false }
    }

    /// A refusal only misbehaviour earns: a strike.
    pub fn strike(reason: impl Into<String>) -> Self {
        Refusal { reason: reason.into(), strike: true }
    }
}

impl From<FrameError> for Refusal {
    fn from(e: FrameError) -> Self {
        Refusal::strike(e.to_string())
    }
}

/// The refusal of a stream beyond a peer's streams in flight (senders retry it).
pub const BUSY: &str = "too many frames in flight";

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 64 << 10;

/// The state shared by the tasks that read tensor streams.
pub(crate) struct Receiver {
    pub(crate) client: Client,
    pub(crate) budget: InboundBudget,
    pub(crate) seen: Mutex<Recent<(PeerId, [u8; 32])>>,
    pub(crate) admission: watch::Receiver<AdmissionView>,
    pub(crate) gate: watch::Receiver<Option<Arc<dyn FrameGate>>>,
    pub(crate) frames: mpsc::Sender<IncomingFrame>,
}

impl Receiver {
    /// Accepts tensor streams, each in its own task.
    pub(crate) async fn run(self: Arc<Self>, mut incoming: libp2p_stream::IncomingStreams) {
        while let Some((peer, stream)) = incoming.next().await {
            let this = self.clone();
            tokio::spawn(async move { this.serve(peer, stream).await });
        }
    }

    async fn serve(&self, peer: PeerId, mut stream: libp2p::Stream) {
        let metrics = &self.client.metrics;
        if !self.admission.borrow().admits(&peer) {
            metrics.streams_refused.inc();
            reply(&mut stream, Reply::Refused("not admitted: register on chain first".into()))
                .await;
            return;
        }
        // Busy is not misbehaviour: refused, but no strike.
        let Ok(slot) = self.budget.stream(peer) else {
            metrics.streams_refused.inc();
            tracing::debug!(%peer, "refused a tensor frame: too many in flight");
            reply(&mut stream, Reply::Refused(BUSY.into())).await;
            return;
        };
        let timeout = self.client.config.frame_timeout;
        // Time spent waiting on this node's own budgets or queue is not the sender's fault.
        let waiting_here = AtomicBool::new(false);
        let received = self.receive(peer, &mut stream, &waiting_here);
        let outcome = match tokio::time::timeout(timeout, received).await {
            Ok(r) => r,
            Err(_) if waiting_here.load(Relaxed) => Err(Refusal::benign(BUSY)),
            Err(_) => Err(Refusal::strike(format!("frame not complete within {timeout:?}"))),
        };
        drop(slot);
        let answer = match outcome {
            Ok(hash) => {
                metrics.frames_accepted.inc();
                Reply::Accepted(Receipt::sign(&self.client.key, peer, hash))
            }
            Err(r) => {
                metrics.frames_refused.inc();
                tracing::debug!(%peer, reason = %r.reason, strike = r.strike, "refused a tensor frame");
                if r.strike {
                    let strike = Command::Strike { peer, reason: r.reason.clone() };
                    let _ = self.client.commands.send(strike).await;
                }
                Reply::Refused(r.reason)
            }
        };
        metrics.inbound_bytes.set(self.budget.held_bytes() as i64);
        reply(&mut stream, answer).await;
        self.budget.prune(&peer);
    }

    /// Reads and checks one frame; delivers it and returns its header hash.
    async fn receive(
        &self,
        peer: PeerId,
        stream: &mut libp2p::Stream,
        waiting_here: &AtomicBool,
    ) -> Result<[u8; 32], Refusal> {
        let cfg = &self.client.config;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.map_err(|e| gone("header length", e))?;
        let len = u16::from_le_bytes(len) as usize;
        if len > MAX_HEADER_LEN {
            return Err(FrameError::HeaderLength(len).into());
        }
        let mut header = vec![0u8; len];
        stream.read_exact(&mut header).await.map_err(|e| gone("header", e))?;
        let header = FrameHeader::decode(&header)?;
        header.check_len(cfg.max_frame_bytes)?;
        // A sender retries a stream that was reset after delivery: the same frame is receipted
        // again but delivered once, and the gate (which took it the first time) is not asked.
        let hash = header.hash();
        let again = self.seen.lock().map(|s| s.contains(&(peer, hash))).unwrap_or(false);
        let gate = if again { None } else { self.gate.borrow().clone() };
        if let Some(g) = &gate {
            g.check(&peer, &header)?;
        }
        waiting_here.store(true, Relaxed);
        let mut permit = self.budget.reserve(peer, header.payload_len).await.ok_or_else(|| {
            Refusal::strike(format!(
                "a frame of {} bytes exceeds this node's per-peer budget",
                header.payload_len
            ))
        })?;
        waiting_here.store(false, Relaxed);
        let payload = self.read_payload(stream, header.payload_len as usize, &mut permit).await?;
        header.check_payload_within(&payload, cfg.max_abs_value)?;
        if again {
            tracing::debug!(%peer, "a frame delivered before arrived again");
            return Ok(hash);
        }
        if let Some(g) = &gate {
            g.accept(&peer, &header)?;
        }
        if let Ok(mut s) = self.seen.lock() {
            s.insert((peer, hash));
        }
        let frame = IncomingFrame { peer, header, payload, _permit: Some(permit) };
        self.client.metrics.inbound_bytes.set(self.budget.held_bytes() as i64);
        waiting_here.store(true, Relaxed);
        self.frames.send(frame).await.map_err(|_| Refusal::benign("receiver is shutting down"))?;
        Ok(hash)
    }

    /// Reads `len` bytes, growing the buffer as they arrive (a stalled stream holds only what
    /// it sent).
    async fn read_payload(
        &self,
        stream: &mut libp2p::Stream,
        len: usize,
        permit: &mut FramePermit,
    ) -> Result<Vec<u8>, Refusal> {
        let mut payload = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK.min(len.max(1))];
        while payload.len() < len {
            let want = (len - payload.len()).min(chunk.len());
            // All peers together hold what the global budget allows: a frame that cannot grow
            // is refused as busy (its sender retries) rather than waiting, so partly read frames
            // never wait on each other.
            if !self.budget.grow(&mut payload, want, len, permit) {
                return Err(Refusal::benign(BUSY));
            }
            self.client.metrics.inbound_bytes.set(self.budget.held_bytes() as i64);
            let n = stream.read(&mut chunk[..want]).await.map_err(|e| gone("payload", e))?;
            if n == 0 {
                return Err(Refusal::strike(format!(
                    "stream closed after {} of {len} payload bytes",
                    payload.len()
                )));
            }
            payload.extend_from_slice(&chunk[..n]);
        }
        Ok(payload)
    }
}

fn gone(what: &str, e: std::io::Error) -> Refusal {
    // A peer that disconnects mid-frame earns no strike (it may have crashed); a truncated
    // frame on an open stream does (above).
    Refusal::benign(format!("reading {what}: {e}"))
}

async fn reply(stream: &mut libp2p::Stream, reply: Reply) {
    let _ = stream.write_all(&reply.encode()).await;
    let _ = stream.close().await;
}

/// The last `cap` keys seen, for deduplication.
pub(crate) struct Recent<K> {
    cap: usize,
    order: VecDeque<K>,
    set: HashSet<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Recent<K> {
    pub(crate) fn new(cap: usize) -> Self {
        Recent { cap: cap.max(1), order: VecDeque::new(), set: HashSet::new() }
    }

    /// Whether `key` is among the last `cap` keys.
    pub(crate) fn contains(&self, key: &K) -> bool {
        self.set.contains(key)
    }

    /// True if `key` was not among the last `cap` keys.
    pub(crate) fn insert(&mut self, key: K) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}
