//! # sliver-p2p
//!
//! How Sliver's off-chain programs find each other and move tensors: libp2p 0.57 over TCP and
//! QUIC with noise and yamux.
//!
//! - [`network`]: one task owns the `Swarm`; a cloneable [`Client`] sends it commands. Tensor
//!   frames travel on `libp2p-stream` streams (`/sliver/tensor/1`), control messages (ping,
//!   status) on request-response with explicit size limits (`/sliver/control/1`).
//! - [`frame`]: the frame header (run, epoch, step, micro-batch, route, sliver, direction, codec,
//!   shape, payload length and BLAKE3 hash) and every check a receiver applies.
//! - [`control`]: control messages, including blob chunks (weights for merging, checkpoints)
//!   and validators' audit requests; [`blobs`]: the bounded store of published blobs.
//! - [`receipt`]: the receiver's signature over the header hash, returned for each accepted frame.
//! - [`keys`]: the persisted ed25519 node key and the registry ownership signature.
//!
//! Status against the P2P issue and what is not built yet: `docs/p2p.md`.

pub mod blobs;
pub mod control;
pub mod frame;
pub mod keys;
pub mod network;
pub mod receipt;

pub use control::{
    AuditAnswer, AuditRequest, AuditedFrame, ControlRequest, ControlResponse, NodeStatus,
    PeerRecord, PresenceNotice,
};
pub use frame::{Direction, FrameError, FrameHeader};
pub use libp2p::{Multiaddr, PeerId};
pub use network::{start, AuditQuery, Client, Inbound, IncomingFrame, NetworkConfig, Reachability};
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
