//! A real `sliver-node --dev` running the wasm runtime: a signed balance transfer from a dev
//! account is finalized and both balances change by exactly the expected amounts.

use sliver_chain::{account_of, dev_keypair, ChainClient};
use sliver_e2e::DevNode;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_transfer_is_finalized_and_moves_balance() {
    let node = DevNode::start().expect("start sliver-node");
    let client = ChainClient::connect_with_retry(&node.rpc_url, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", node.log_tail(30)));

    // Blocks are produced and finalized (one-second slots, GRANDPA with one authority).
    let head = client
        .wait_for_finalized(2, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("finality: {e}\n{}", node.log_tail(30)));
    assert!(head.finalized >= 2);
    assert_eq!(head.spec_version, 100);

    let alice = dev_keypair("alice").unwrap();
    let bob = dev_keypair("bob").unwrap();
    let (alice_id, bob_id) = (account_of(&alice), account_of(&bob));
    let alice_before = client.free_balance(&alice_id).await.unwrap();
    let bob_before = client.free_balance(&bob_id).await.unwrap();
    assert!(alice_before > 0, "Alice is endowed at genesis");

    let amount: u128 = 1_234_567_890_000;
    let block =
        tokio::time::timeout(Duration::from_secs(90), client.transfer(&alice, &bob_id, amount))
            .await
            .expect("transfer finalized within 90 s")
            .unwrap_or_else(|e| panic!("transfer: {e}\n{}", node.log_tail(30)));
    assert_ne!(block, Default::default());

    let alice_after = client.free_balance(&alice_id).await.unwrap();
    let bob_after = client.free_balance(&bob_id).await.unwrap();
    assert_eq!(bob_after, bob_before + amount, "Bob receives exactly the amount");
    // Alice pays the amount plus a non-zero fee.
    assert!(alice_after < alice_before - amount, "Alice pays amount and fee");
    let fee = alice_before - amount - alice_after;
    assert!(fee < amount, "fee {fee} is small against the transfer");
}

#[tokio::test]
async fn unreachable_node_is_a_clear_error() {
    // Port 9 (discard) on loopback: nothing listens there.
    let err = match ChainClient::connect("ws://127.0.0.1:9").await {
        Ok(_) => panic!("nothing listens on port 9"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("cannot reach a Sliver node at ws://127.0.0.1:9"), "{err}");
    assert!(err.contains("sliver-node --dev"), "the error says how to start a node: {err}");
}
