//! # sliver-miner
//!
//! The miner's library: what the `sliver-miner` binary runs, kept testable without the binary.
//! Every peer may be hostile: what the miner takes from the network is checked against the
//! chain first (docs/security.md).
//!
//! - [`miner`]: the training loop as an explicit state machine (waiting, training, away) with
//!   one handler per event (an assignment, an epoch boundary, a window edge, a step); [`run`]
//!   starts the tasks it talks to and hands over to it.
//! - [`stage`]: one sliver's trainer wired to the P2P transport (activations forward,
//!   gradients back, optimiser steps, neighbours that vanish routed around); [`gate`]: what the
//!   transport lets through to it, checked against the chain's assignment, before a receipt is
//!   signed; [`outbox`]: what it sends without waiting, so a silent neighbour cannot stall it.
//! - [`merge`]: pseudo-gradients and merged states over the network, combined robustly;
//!   [`sync`]: taking a sliver's merged state only by the hash its replicas committed on chain.
//! - [`routing`]: neighbours, the next hop, who to tell when leaving; [`presence`]: leaving and
//!   rejoining at the edges of a window; [`training`]: the sliver being trained and how it is
//!   built.
//! - [`audit`]: the on-disk log of every accepted micro-batch's frames, receipts and weights
//!   snapshots for the current and previous epoch, from which validators' audits are answered.
//! - [`telemetry`]: the figures task (status line, Prometheus metrics); [`ledger`]: hours and
//!   earnings; [`config`], [`availability`]: the operator's side. Keys, the RPC policy and the
//!   chain task are shared with the validator (`sliver-operator`).
//!
//! Status against the miner issue: `docs/miner.md`.

pub mod audit;
pub mod availability;
pub mod cheat;
pub mod config;
pub mod gate;
pub mod ledger;
pub mod merge;
pub mod miner;
pub mod outbox;
pub mod presence;
pub mod routing;
pub mod run;
pub mod stage;
pub mod sync;
pub mod telemetry;
pub mod training;

pub use sliver_operator::keys;
