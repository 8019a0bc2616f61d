//! Control messages (`/sliver/control/1`, request-response with CBOR): ping, status, "who
//! serves sliver k", chunks of published blobs (weights for merging, checkpoints) and
//! validators' audit requests. Every message is bounded by the node's `max_control_bytes` on
//! both sides; every field read from a peer is checked again by the receiver.

use serde::{Deserialize, Serialize};

/// Control requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Liveness and round-trip time.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// What the peer serves now.
    Status,
    /// The peers the node knows to serve `sliver` in the current run.
    WhoServes {
        /// Sliver index.
        sliver: u16,
    },
    /// A chunk of a blob the peer published (content-addressed by BLAKE3).
    Blob {
        /// BLAKE3 of the whole blob.
        hash: [u8; 32],
        /// First byte wanted.
        offset: u64,
        /// Most bytes wanted (the server sends at most [`MAX_BLOB_CHUNK`]).
        max_len: u32,
    },
    /// A validator asks what a miner did for one micro-batch.
    Audit(AuditRequest),
    /// A validator asks which micro-batches of an epoch a miner kept, with the frames it sent
    /// for each and their receipts (one page, in key order).
    AuditIndex(AuditIndexRequest),
    /// A validator asks for a page of a miner's optimiser steps of an epoch.
    AuditSteps(AuditStepsRequest),
    /// A validator asks a miner to publish blobs of its audit log (weights and optimiser-state
    /// snapshots) by hash, to fetch them with `Blob`.
    AuditBlobs(AuditBlobsRequest),
    /// A miner tells its neighbours and replicas that it leaves or rejoins the pipeline.
    Presence(PresenceNotice),
}

/// Control responses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// Answer to `Ping`.
    Pong {
        /// The request's nonce.
        nonce: u64,
    },
    /// Answer to `Status`.
    Status(NodeStatus),
    /// Answer to `WhoServes`.
    Servers {
        /// The sliver asked about.
        sliver: u16,
        /// Its servers as the answering node knows them.
        peers: Vec<PeerRecord>,
    },
    /// Answer to `Blob`.
    BlobChunk {
        /// Length of the whole blob.
        total: u64,
        /// Offset of `data` in the blob.
        offset: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Answer to `Audit`.
    Audit(AuditAnswer),
    /// Answer to `AuditIndex`.
    AuditIndex(AuditIndexPage),
    /// Answer to `AuditSteps`.
    AuditSteps(AuditStepsPage),
    /// Answer to `AuditBlobs`: the hashes asked for that are now published.
    AuditBlobs(Vec<[u8; 32]>),
    /// The peer does not have what was asked for (an unknown blob, a micro-batch it no longer
    /// keeps).
    NotFound,
    /// The peer could not answer (busy, shutting down), with its reason.
    Error(String),
    /// A notice was taken.
    Ack,
}

/// A miner leaving the pipeline at the end of its availability window, or rejoining it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PresenceNotice {
    /// Training run.
    pub run: u64,
    /// The chain epoch the sender is in.
    pub epoch: u64,
    /// The sliver the sender trains.
    pub sliver: u16,
    /// False: leaving (send it no more work); true: back.
    pub available: bool,
    /// When leaving: BLAKE3 of its pseudo-gradient for this epoch (the blob
    /// `merge/<sliver>/<epoch>`), for replicas to fetch now and merge at the boundary even if
    /// the sender is gone by then.
    pub merge: Option<[u8; 32]>,
}

/// A peer and its addresses, as strings on the wire (parsed and checked by the receiver).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Base58 PeerId.
    pub peer_id: String,
    /// Multiaddrs.
    pub addrs: Vec<String>,
}

/// Most servers accepted in one `Servers` answer, and addresses per server.
pub const MAX_SERVERS: usize = 64;
/// Most addresses accepted per server.
pub const MAX_ADDRS: usize = 8;
/// Largest blob chunk a node sends in one response.
pub const MAX_BLOB_CHUNK: u32 = 512 << 10;
/// Most frames one audit answer may list.
pub const MAX_AUDIT_FRAMES: usize = 64;
/// Most micro-batches one audit index page lists.
pub const MAX_INDEX_ENTRIES: usize = 256;
/// Most sent frames one index entry lists (a middle sliver sends two per micro-batch).
pub const MAX_INDEX_SENT: usize = 4;

/// Most step records one `AuditSteps` page lists.
pub const MAX_STEP_ENTRIES: usize = 64;
/// Most micro-batches one step record lists.
pub const MAX_STEP_BATCHES: usize = 256;
/// Most blobs one `AuditBlobs` request names.
pub const MAX_AUDIT_BLOBS: usize = 4;

/// What a node says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Training run.
    pub run: u64,
    /// Epoch.
    pub epoch: u64,
    /// Slivers this node serves.
    pub slivers: Vec<u16>,
    /// Servers of each sliver this node knows of (from the chain registry and its peers).
    pub directory: std::collections::BTreeMap<u16, Vec<PeerRecord>>,
    /// Blobs the node publishes under a name (`merge/<epoch>`, `weights`), by BLAKE3 hash.
    pub published: std::collections::BTreeMap<String, [u8; 32]>,
}

/// Which micro-batch a validator audits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuditRequest {
    /// Training run.
    pub run: u64,
    /// Epoch.
    pub epoch: u64,
    /// Route: the data replica (the first sliver's miner) that started the micro-batch.
    pub route: u64,
    /// Step of that route within the epoch, as its frames name it (the first sliver numbers
    /// every attempt, so a step that completed no micro-batch still used up its number).
    pub step: u64,
    /// Micro-batch within the step.
    pub micro_batch: u64,
}

/// A micro-batch of an epoch: the route (data replica) that started it, the step of that route
/// and the index within the step, as the frames name them. Ordered route first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AuditKey {
    /// Route.
    pub route: u64,
    /// Step.
    pub step: u64,
    /// Micro-batch within the step.
    pub micro_batch: u64,
}

impl AuditRequest {
    /// The micro-batch asked for.
    pub fn key(&self) -> AuditKey {
        AuditKey { route: self.route, step: self.step, micro_batch: self.micro_batch }
    }
}

/// Which page of a miner's audit index a validator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuditIndexRequest {
    /// Training run.
    pub run: u64,
    /// Epoch.
    pub epoch: u64,
    /// The page starts after this key (`None`: from the first).
    pub after: Option<AuditKey>,
}

/// One page of a miner's audit index: the micro-batches it kept, in key order, with the frames
/// it sent for each (headers and the receipts its neighbours signed). A validator counts the
/// work the receipts vouch for and samples from these keys what to audit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditIndexPage {
    /// At most [`MAX_INDEX_ENTRIES`] micro-batches, keys ascending.
    pub entries: Vec<IndexEntry>,
    /// True if more follow (ask again after the last key).
    pub more: bool,
}

/// A kept micro-batch in an audit index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Which micro-batch.
    pub key: AuditKey,
    /// The frames the miner sent for it (at most [`MAX_INDEX_SENT`]), receipts included.
    pub sent: Vec<AuditedFrame>,
}

/// A miner's account of one micro-batch: enough for a validator to fetch the inputs and the
/// weights, recompute the sliver's work and compare it with what the neighbours accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnswer {
    /// BLAKE3 of the weights snapshot the micro-batch was computed with; the miner serves it
    /// as a blob (named tensors, `SLVF1` format, f32).
    pub weights: [u8; 32],
    /// The frames of this micro-batch the miner received and sent.
    pub frames: Vec<AuditedFrame>,
}

/// One frame in an audit answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditedFrame {
    /// The encoded frame header (its BLAKE3 is what receipts sign; it names the payload's hash).
    #[serde(with = "serde_bytes")]
    pub header: Vec<u8>,
    /// For a frame the miner sent: the receipt bytes (`Reply::Accepted` encoding) its neighbour
    /// signed. `None` for a frame it received.
    #[serde(with = "serde_bytes")]
    pub receipt: Option<Vec<u8>>,
    /// True if the payload is published as a blob under the hash named in the header.
    pub payload_published: bool,
}

/// Which page of a miner's optimiser steps a validator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuditStepsRequest {
    /// Training run.
    pub run: u64,
    /// Epoch.
    pub epoch: u64,
    /// Position of the first step record wanted, in the order the miner took them.
    pub from: u32,
}

/// One page of a miner's step records, in the order it took the steps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditStepsPage {
    /// At most [`MAX_STEP_ENTRIES`] records, starting at the request's `from`.
    pub steps: Vec<StepEntry>,
    /// True if more follow.
    pub more: bool,
}

/// One optimiser step a miner took: which micro-batches' gradients it summed, in order, how it
/// scaled them, and the weights before and after. Every few steps (and at the first step after
/// a start) it also names the optimiser state it stepped from, so that a validator can replay
/// the steps that follow from that snapshot and compare each result with `after`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepEntry {
    /// BLAKE3 of the weights (`SLVF1`, f32) the step started from.
    pub before: [u8; 32],
    /// BLAKE3 of the weights after it (equal to `before` for a skipped step).
    pub after: [u8; 32],
    /// BLAKE3 of the optimiser state (`SLVO1`) it started from, at a snapshot; the miner
    /// publishes it and the `before` weights on request (`AuditBlobs`).
    pub optim: Option<[u8; 32]>,
    /// The learning-rate schedule's step the learning rate was taken at.
    pub schedule_step: u64,
    /// The learning rate.
    pub lr: f64,
    /// The factor the summed gradient was scaled by (clipping).
    pub factor: f64,
    /// The summed gradient was not finite: no update was made.
    pub skipped: bool,
    /// The micro-batches whose gradients were summed, in the order they were added.
    pub batches: Vec<AuditKey>,
}

/// Blobs a validator wants published from a miner's audit log of an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuditBlobsRequest {
    /// Training run.
    pub run: u64,
    /// Epoch.
    pub epoch: u64,
    /// At most [`MAX_AUDIT_BLOBS`] hashes.
    pub hashes: Vec<[u8; 32]>,
}
