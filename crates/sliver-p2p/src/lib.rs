//! # sliver-p2p
//!
//! How Sliver's off-chain programs find each other and move tensors: libp2p 0.57 over TCP and
//! QUIC with noise and yamux.
//!
//! Every peer may be hostile. The crate checks what peers send before it is used or allocated
//! for, and bounds what they can make a node spend:
//!
//! - [`network`]: one task owns the `Swarm` ([`swarm`]); a cloneable [`Client`] sends it
//!   commands. Tensor frames travel on `libp2p-stream` streams (`/sliver/tensor/1`), control
//!   messages (ping, status) on request-response with explicit size limits
//!   (`/sliver/control/1`).
//! - [`admission`]: only the chain's registered peers connect (once the application says who
//!   they are), banned peers stay out for the rest of the epoch, connections are limited per IP.
//! - [`inbound`]: the receiver's checks, in order, with the application's [`FrameGate`];
//!   [`budget`]: the byte budgets of inbound frames and of blob serving.
//! - [`frame`]: the frame header (run, epoch, step, micro-batch, route, sliver, direction, codec,
//!   shape, payload length and BLAKE3 hash) and every check a receiver applies.
//! - [`control`]: control messages, including blob chunks (weights for merging, checkpoints)
//!   and validators' audit requests; [`blobs`]: the bounded stores of published blobs.
//! - [`receipt`]: the receiver's signature that it accepted a frame from its sender.
//! - [`keys`]: the persisted ed25519 node key and the registry ownership signature.
//! - [`metrics`]: the transport's Prometheus metrics, beside libp2p's own.
//!
//! Design and measured figures: `docs/p2p.md`; the threat model: `docs/security.md`.

pub mod admission;
pub mod blobs;
pub mod budget;
pub mod control;
pub mod frame;
pub mod inbound;
pub mod keys;
pub mod metrics;
pub mod network;
pub mod receipt;
mod swarm;

pub use admission::{AdmissionView, PeerRole};
pub use control::{
    AuditAnswer, AuditBlobsRequest, AuditIndexPage, AuditIndexRequest, AuditKey, AuditRequest,
    AuditStepsPage, AuditStepsRequest, AuditedFrame, ControlRequest, ControlResponse, IndexEntry,
    NodeStatus, PeerRecord, PresenceNotice, StepEntry,
};
pub use frame::{Direction, FrameError, FrameHeader};
pub use inbound::{FrameGate, Refusal};
pub use libp2p::{identity, Multiaddr, PeerId};
pub use metrics::P2pMetrics;
pub use network::{
    start, start_with_metrics, AuditAsk, AuditQuery, Client, Inbound, IncomingFrame, NetworkConfig,
    Reachability,
};
pub use prometheus_client;
pub use receipt::{Receipt, Reply};

/// Errors of the transport; each names the peer where one is involved, so callers can re-route.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// Building or binding the transport failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The node key could not be loaded or saved.
    #[error("node key: {0}")]
    Key(String),
    /// Dialing failed.
    #[error("cannot reach {peer}: {reason}")]
    Dial {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer disappeared (connection or stream closed) during a transfer.
    #[error("peer {peer} went away mid-transfer: {reason}")]
    PeerGone {
        /// The peer.
        peer: PeerId,
        /// What failed.
        reason: String,
    },
    /// No receipt within the frame timeout.
    #[error("peer {peer} did not answer in time")]
    Timeout {
        /// The peer.
        peer: PeerId,
    },
    /// The peer refused the frame.
    #[error("peer {peer} refused the frame: {reason}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// Its reason.
        reason: String,
    },
    /// The receipt was malformed, for another header, or not signed by the peer.
    #[error("peer {peer} returned an invalid receipt")]
    BadReceipt {
        /// The peer.
        peer: PeerId,
    },
    /// A control request failed.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// Our own frame is invalid.
    #[error("invalid frame: {0}")]
    Frame(FrameError),
    /// The network task has stopped.
    #[error("the network task has stopped")]
    Stopped,
}
