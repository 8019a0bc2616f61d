//! Frames a stage sends without waiting for their receipt: the gradients the last and middle
//! slivers return, and the activations a middle sliver relays. Each goes out in a task of its
//! own, so a neighbour that accepts a stream and never answers (a black hole) costs that task,
//! not the stage: the stage goes on with the next frame. At most [`MAX_OUTSTANDING`] are in
//! flight; past that a frame is dropped (counted). The stage collects the outcomes
//! ([`Outbox::collect`]) before it handles the next frame: a relayed activation that was not
//! delivered drops its micro-batch and names the unreachable miner.
//!
//! A delivered frame is recorded in the audit log with its receipt, as the stage's own sends
//! are.

use std::sync::Arc;

use sliver_p2p::{Client, FrameHeader, P2pError, PeerId, Reply};
use tokio::sync::{mpsc, Semaphore};

use crate::audit::AuditLog;
use crate::gate::Key;

/// Sends in flight at most, per stage.
pub const MAX_OUTSTANDING: usize = 16;

/// What became of one frame.
#[derive(Debug)]
pub enum Outcome {
    /// Delivered and receipted.
    Delivered {
        /// Payload bytes.
        bytes: u64,
    },
    /// Not delivered.
    Failed {
        /// Its micro-batch.
        key: Key,
        /// To whom.
        peer: PeerId,
        /// A relayed activation (its micro-batch waits for a gradient here).
        forward: bool,
        /// Whether the peer is to blame (gone, refused, silent) rather than this node.
        peer_fault: bool,
        /// Why.
        error: String,
    },
}

/// One frame to send.
pub struct Outgoing {
    /// To whom.
    pub peer: PeerId,
    /// Its micro-batch.
    pub key: Key,
    /// A relayed activation (its micro-batch waits for a gradient here).
    pub forward: bool,
    /// Its header.
    pub header: FrameHeader,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// The stage's outgoing frames in flight.
pub struct Outbox {
    slots: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Outcome>,
    rx: mpsc::UnboundedReceiver<Outcome>,
}

impl Default for Outbox {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Outbox { slots: Arc::new(Semaphore::new(MAX_OUTSTANDING)), tx, rx }
    }
}

impl Outbox {
    /// Sends `payload` with `header` to `peer` in the background; recorded in `audit` with its
    /// receipt once delivered. Returns false (nothing sent) when too many are in flight.
    pub fn send(&self, client: &Client, frame: Outgoing, audit: Option<AuditLog>) -> bool {
        let Outgoing { peer, key, forward, header, payload } = frame;
        let Ok(slot) = self.slots.clone().try_acquire_owned() else { return false };
        let (client, tx) = (client.clone(), self.tx.clone());
        tokio::spawn(async move {
            let outcome = match client.send_frame(peer, &header, &payload).await {
                Ok(receipt) => {
                    if let Some(log) = &audit {
                        log.record(
                            None,
                            &header,
                            Some(Reply::Accepted(receipt).encode()),
                            &payload,
                        );
                    }
                    Outcome::Delivered { bytes: payload.len() as u64 }
                }
                Err(e) => Outcome::Failed {
                    key,
                    peer,
                    forward,
                    peer_fault: !matches!(e, P2pError::Frame(_) | P2pError::Stopped),
                    error: e.to_string(),
                },
            };
            let _ = tx.send(outcome);
            drop(slot);
        });
        true
    }

    /// The outcomes that came in since the last call.
    pub fn collect(&mut self) -> Vec<Outcome> {
        let mut out = Vec::new();
        while let Ok(o) = self.rx.try_recv() {
            out.push(o);
        }
        out
    }

    /// Sends still in flight.
    pub fn outstanding(&self) -> usize {
        MAX_OUTSTANDING - self.slots.available_permits()
    }
}
