//! Stale outputs and made-up claims against a validator, end to end (see `cheaters.rs`): one
//! miner sends the previous micro-batch's output again for each one, another claims work under
//! made-up keys with receipts no neighbour signed. Both are flagged in every epoch in which they
//! claim work and paid nothing; the two honest miners are paid.

mod cheaters_common;

use cheaters_common::network;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_outputs_and_unsigned_claims_are_caught() {
    network(&[(2, "stale"), (3, "unsigned")], 1, false).await;
}
