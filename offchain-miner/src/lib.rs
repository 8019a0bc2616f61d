//! # sliver-miner
//!
//! The miner's library: what the `sliver-miner` binary runs, kept testable without the binary.
//!
//! - [`stage`]: one sliver's trainer wired to the P2P transport, the networked counterpart of
//!   the engine's in-process pipeline (activations forward, gradients back, optimiser steps,
//!   neighbours that vanish counted and routed around rather than waited for).
//! - [`audit`]: the on-disk log of every micro-batch's frames, receipts and weights snapshots
//!   for the current and previous epoch, from which validators' audits are answered.
//! - [`run`]: `sliver-miner run`: the chain follower, the P2P node, the training loop, merges
//!   with replicas at epoch boundaries and weight commitments on chain.
//! - [`merge`]: pseudo-gradients and weights over the network; [`config`], [`keys`],
//!   [`availability`] and [`ledger`]: the operator's side (TOML configuration, accounts and
//!   node keys, idle windows, hours contributed and earnings); [`presence`]: leaving and
//!   rejoining the pipeline at the edges of a window.
//!
//! Status against the miner issue: `docs/miner.md`.

pub mod audit;
pub mod availability;
pub mod config;
pub mod keys;
pub mod ledger;
pub mod merge;
pub mod presence;
pub mod run;
pub mod stage;
