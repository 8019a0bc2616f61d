//! Two `sliver-node` processes of the local chain (`--chain local`, authorities Alice and Bob)
//! connect over loopback, produce blocks in turn and finalize them: GRANDPA with two
//! authorities needs both votes, so finality proves the network works.

use sliver_chain::ChainClient;
use sliver_e2e::{free_port, DevNode};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorities_produce_and_finalize_blocks_together() {
    let alice_port = free_port().to_string();
    // Authorities of a non-development chain must be given a network key.
    let (alice_key, bob_key) = (format!("{:064x}", 1), format!("{:064x}", 2));
    let alice = DevNode::spawn(&[
        "--chain",
        "local",
        "--alice",
        "--port",
        &alice_port,
        "--node-key",
        &alice_key,
    ])
    .expect("start Alice");
    let peer = alice.peer_id().expect("Alice logs its PeerId");
    let bootnode = format!("/ip4/127.0.0.1/tcp/{alice_port}/p2p/{peer}");
    let bob = DevNode::spawn(&[
        "--chain",
        "local",
        "--bob",
        "--port",
        "0",
        "--node-key",
        &bob_key,
        "--bootnodes",
        &bootnode,
    ])
    .expect("start Bob");

    let a = ChainClient::connect_with_retry(&alice.rpc_url, Duration::from_secs(30)).await.unwrap();
    let b = ChainClient::connect_with_retry(&bob.rpc_url, Duration::from_secs(30)).await.unwrap();
    let head = b.wait_for_finalized(4, Duration::from_secs(90)).await.unwrap_or_else(|e| {
        panic!("finality: {e}\nAlice:\n{}\nBob:\n{}", alice.log_tail(20), bob.log_tail(20))
    });
    // Both nodes agree on the finalized chain.
    let a_head = a.wait_for_finalized(head.finalized, Duration::from_secs(30)).await.unwrap();
    assert!(a_head.finalized >= head.finalized);
    let at_a = a.api().at_block(head.finalized).await.unwrap().block_hash();
    assert_eq!(at_a, head.finalized_hash, "same block #{} on both nodes", head.finalized);
}
