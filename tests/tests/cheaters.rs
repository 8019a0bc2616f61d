//! Cheating miners against validators, end to end: a real `sliver-node --dev`, four miners of
//! which some are built with the test-only `cheat` feature and told to cheat, and real
//! `sliver-validator`s. One miner sends random values in place of its forward and backward
//! passes, another computes them honestly but never applies its optimiser steps (it keeps
//! weights it did not train), and two validators audit. Both cheaters are flagged in every
//! epoch they are audited and paid nothing, the honest miners are paid and never flagged, and
//! a validator killed between its commit and the Reveal phase reveals after its restart.

mod cheaters_common;

use cheaters_common::network;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheating_miner_is_caught_and_a_restarted_validator_still_reveals() {
    network(&[(3, "random"), (1, "lazy")], 2, true).await;
}
