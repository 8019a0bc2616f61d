//! # sliver-miner
//!
//! The miner's library: what the `sliver-miner` binary runs, kept testable without the binary.
//!
//! - [`stage`]: one sliver's trainer wired to the P2P transport, the networked counterpart of
//!   the engine's in-process pipeline (activations forward, gradients back, optimiser steps,
//!   neighbours that vanish counted and routed around rather than waited for).
//!
//! Status against the miner issue: `docs/miner.md`.

pub mod stage;
