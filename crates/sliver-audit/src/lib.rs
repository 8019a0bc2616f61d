//! # sliver-audit
//!
//! What a validator needs to check a miner's work itself, with no trust in the miner or in a
//! central party, kept apart from the networking so that each rule is testable on its own:
//!
//! - [`shape`]: how a training run on chain becomes the engine's model, slivers and
//!   micro-batch shapes. Miners and validators both build from it, so they cannot disagree.
//! - [`work`]: the cheap check of a miner's whole audit index: every frame it claims to have
//!   sent must carry a receipt signed by the neighbour the chain assigned, about exactly that
//!   frame. What passes is the work the miner is paid for; a forged or misdirected receipt is
//!   a failure.
//! - [`sample`]: which micro-batches are replayed, from the epoch's on-chain audit seed mixed
//!   with the validator's own secret (a miner cannot predict it, another validator's sample
//!   tells it nothing about this one's).
//! - [`replay`]: the expensive check of a sampled micro-batch: the weights snapshot and inputs
//!   the miner kept, recomputed with the engine's code; the outputs' hashes must equal the ones
//!   its neighbours signed for. On the CPU backend the engine is bitwise deterministic, so the
//!   comparison is exact.
//! - [`eval`]: the held-out loss of the merged model (the slivers' committed weights).
//! - [`segment`]: the check that a miner's weights follow from its work: a run of its optimiser
//!   steps replayed from a snapshot of weights and optimiser state, every step's result
//!   compared with the hash it recorded.

pub mod eval;
pub mod replay;
pub mod sample;
pub mod segment;
pub mod shape;
pub mod work;

pub use replay::{Evidence, Outcome, Replayer};
pub use sample::{sample, Secret};
pub use segment::{BatchAccount, SegmentEvidence, SegmentOutcome};
pub use shape::RunShape;
pub use work::{check_index, Neighbourhood, WorkReport};
