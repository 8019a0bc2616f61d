//! # sliver-validator
//!
//! The program a validator operator runs, and the parts it is made of. A validator keeps the
//! network honest by checking miners' work on its own machine: each epoch it reads every
//! miner's audit index (the micro-batches it kept, with the receipts its neighbours signed),
//! counts the receipted work, replays a secret sample of it bit for bit with the engine
//! (`sliver-audit`), and turns the result into weights it commits and reveals on chain, where
//! the rewards pallet's consensus over all validators' weights sets the payouts. Nothing is
//! relayed from a central party, and no miner's code or claim is taken on trust.
//!
//! - [`config`]: the TOML configuration, flags and `SLIVER_*` variables.
//! - [`run`]: setting up (account, chain task, data, transport, replay task, metrics).
//! - [`validator`]: the loop as a state machine (epoch, Commit, Reveal handlers).
//! - [`audit`]: one epoch's audits over the network, within the deadline.
//! - [`score`]: scores and weights. [`reveal`]: commit-reveal persisted across restarts.
//! - [`metrics`]: Prometheus metrics.

pub mod audit;
pub mod config;
pub mod metrics;
pub mod reveal;
pub mod run;
pub mod score;
pub mod validator;
