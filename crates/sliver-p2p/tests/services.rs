//! The services beyond tensor frames, between real nodes on loopback: blobs fetched in chunks
//! (weights for merging and checkpoints), audit requests answered by the application, presence
//! notices, a frame
//! sent twice delivered once, AutoNAT reachability, and a node reached only through a relay.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use sliver_p2p::network::TENSOR_PROTOCOL;
use sliver_p2p::{
    start, AuditAnswer, AuditAsk, AuditBlobsRequest, AuditIndexPage, AuditIndexRequest,
    AuditRequest, AuditStepsPage, AuditStepsRequest, AuditedFrame, Client, Direction, FrameHeader,
    Inbound, NetworkConfig, NodeStatus, P2pError, PresenceNotice, Reachability, Reply, StepEntry,
};
use sliver_wire::WireCodec;
use tokio::sync::watch;

struct Node {
    client: Client,
    inbound: Inbound,
    addr: Multiaddr,
    _status: watch::Sender<NodeStatus>,
}

async fn node_with(config: NetworkConfig, listen: Option<&str>) -> Node {
    let (status, rx) = watch::channel(NodeStatus::default());
    let (client, inbound) = start(Keypair::generate_ed25519(), config, rx).unwrap();
    let addr = match listen {
        Some(l) => client.listen(l.parse().unwrap()).await.unwrap(),
        None => Multiaddr::empty(),
    };
    Node { client, inbound, addr, _status: status }
}

async fn node() -> Node {
    node_with(NetworkConfig::default(), Some("/ip4/127.0.0.1/tcp/0")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_fetched_in_chunks_and_checked() {
    let a = node().await;
    let b = node().await;
    b.client.dial(a.client.peer_id(), a.addr.clone()).await.unwrap();

    // 2.5 MB: five 512 KiB chunks and a tail.
    let weights: Vec<u8> = (0..2_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let hash = a.client.publish_blob(weights.clone()).unwrap();
    assert_eq!(hash, *blake3::hash(&weights).as_bytes());
    let got = b.client.fetch_blob(a.client.peer_id(), hash, 10 << 20).await.unwrap();
    assert_eq!(got, weights);

    // An empty blob is a blob too.
    let empty = a.client.publish_blob(Vec::new()).unwrap();
    assert!(b.client.fetch_blob(a.client.peer_id(), empty, 0).await.unwrap().is_empty());

    // Too large for the caller's limit: refused before it is downloaded.
    let err = b.client.fetch_blob(a.client.peer_id(), hash, 1 << 20).await.unwrap_err();
    assert!(err.to_string().contains("more than the 1048576 allowed"), "{err}");

    // Unknown and withdrawn blobs.
    let err = b.client.fetch_blob(a.client.peer_id(), [9; 32], 1 << 20).await.unwrap_err();
    assert!(err.to_string().contains("does not serve that blob"), "{err}");
    a.client.unpublish_blob(&hash);
    assert!(b.client.fetch_blob(a.client.peer_id(), hash, 10 << 20).await.is_err());

    // A blob larger than the whole store is refused at publication.
    let small = node_with(
        NetworkConfig { max_blob_bytes: 1000, ..NetworkConfig::default() },
        Some("/ip4/127.0.0.1/tcp/0"),
    )
    .await;
    assert!(small.client.publish_blob(vec![0; 1001]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_are_answered_by_the_application() {
    let mut miner = node().await;
    let validator = node().await;
    validator.client.dial(miner.client.peer_id(), miner.addr.clone()).await.unwrap();

    let known = AuditRequest { run: 1, epoch: 4, route: 0, step: 2, micro_batch: 3 };
    let entry = |step| sliver_p2p::IndexEntry {
        key: sliver_p2p::AuditKey { route: 0, step, micro_batch: 0 },
        sent: Vec::new(),
    };
    tokio::spawn(async move {
        while let Some(q) = miner.inbound.audits.recv().await {
            match q.request.clone() {
                AuditAsk::MicroBatch(r) => {
                    let answer = (r == known).then(|| AuditAnswer {
                        weights: [7; 32],
                        frames: vec![AuditedFrame {
                            header: vec![1, 2, 3],
                            receipt: Some(vec![4, 5]),
                            payload_published: true,
                        }],
                    });
                    q.respond(answer).await;
                }
                // A first page in key order; a second one out of order (a hostile miner).
                AuditAsk::Index(r) => {
                    let entries = match r.after {
                        None => vec![entry(1), entry(2)],
                        Some(_) => vec![entry(9), entry(5)],
                    };
                    q.respond_index(
                        (r.epoch == 4).then_some(AuditIndexPage { entries, more: true }),
                    )
                    .await;
                }
                // More step records than a page holds: the transport cuts the page.
                AuditAsk::Steps(r) => {
                    let steps = (0..70).map(|i| step(i as u8)).collect();
                    q.respond_steps(
                        (r.epoch == 4).then_some(AuditStepsPage { steps, more: false }),
                    )
                    .await;
                }
                // Publishes the first hash asked for; a hostile answer names one not asked.
                AuditAsk::Blobs(r) => {
                    let answer = if r.hashes.contains(&[9; 32]) {
                        vec![[8; 32]]
                    } else {
                        r.hashes.into_iter().take(1).collect()
                    };
                    q.respond_blobs(answer).await;
                }
            }
        }
    });
    let peer = miner.client.peer_id();
    let a = validator.client.audit(peer, known).await.unwrap().unwrap();
    assert_eq!(a.weights, [7; 32]);
    assert_eq!(a.frames[0].receipt.as_deref(), Some(&[4u8, 5][..]));
    let unknown = AuditRequest { micro_batch: 99, ..known };
    assert_eq!(validator.client.audit(peer, unknown).await.unwrap(), None);

    // The index, page by page; a page out of key order is refused.
    let ask = |after| AuditIndexRequest { run: 1, epoch: 4, after };
    let page = validator.client.audit_index(peer, ask(None)).await.unwrap().unwrap();
    assert_eq!(page.entries.len(), 2);
    assert!(page.more);
    let after = Some(page.entries[1].key);
    assert!(validator.client.audit_index(peer, ask(after)).await.is_err(), "out of order");
    let none = AuditIndexRequest { epoch: 5, ..ask(None) };
    assert_eq!(validator.client.audit_index(peer, none).await.unwrap(), None);

    // Step records: at most a page, the rest announced.
    let ask = |epoch| AuditStepsRequest { run: 1, epoch, from: 0 };
    let page = validator.client.audit_steps(peer, ask(4)).await.unwrap().unwrap();
    assert_eq!(page.steps.len(), sliver_p2p::control::MAX_STEP_ENTRIES);
    assert!(page.more);
    assert_eq!(page.steps[3], step(3));
    assert_eq!(validator.client.audit_steps(peer, ask(5)).await.unwrap(), None);
    // Blobs: those published of those asked; too many asked, or an answer naming a blob not
    // asked for, is an error.
    let blobs = |hashes| AuditBlobsRequest { run: 1, epoch: 4, hashes };
    let got = validator.client.audit_blobs(peer, blobs(vec![[1; 32], [2; 32]])).await.unwrap();
    assert_eq!(got, vec![[1; 32]]);
    assert!(validator.client.audit_blobs(peer, blobs(vec![[1; 32]; 5])).await.is_err());
    assert!(validator.client.audit_blobs(peer, blobs(vec![[9; 32]])).await.is_err());
}

fn step(i: u8) -> StepEntry {
    StepEntry {
        before: [i; 32],
        after: [i + 1; 32],
        optim: None,
        schedule_step: i as u64,
        lr: 1e-3,
        factor: 1.0,
        skipped: false,
        batches: vec![sliver_p2p::AuditKey { route: 0, step: i as u64, micro_batch: 0 }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_that_does_not_listen_for_audits_gives_a_clear_error() {
    let miner = node().await;
    let validator = node().await;
    validator.client.dial(miner.client.peer_id(), miner.addr.clone()).await.unwrap();
    drop(miner.inbound.audits);
    let req = AuditRequest { run: 1, epoch: 1, route: 0, step: 1, micro_batch: 1 };
    let err = validator.client.audit(miner.client.peer_id(), req).await.unwrap_err();
    assert!(err.to_string().contains("has no answer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_notices_reach_the_application_or_say_why_not() {
    let mut miner = node().await;
    let leaver = node().await;
    leaver.client.dial(miner.client.peer_id(), miner.addr.clone()).await.unwrap();
    let notice =
        PresenceNotice { run: 1, epoch: 4, sliver: 1, available: false, merge: Some([7; 32]) };
    leaver.client.announce(miner.client.peer_id(), notice).await.unwrap();
    let (from, got) = miner.inbound.notices.recv().await.unwrap();
    assert_eq!((from, got), (leaver.client.peer_id(), notice));
    drop(miner.inbound.notices);
    let err = leaver.client.announce(miner.client.peer_id(), notice).await.unwrap_err();
    assert!(err.to_string().contains("notice not taken"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_twice_is_delivered_once_and_receipted_twice() {
    let mut a = node().await;
    let b = node().await;
    b.client.dial(a.client.peer_id(), a.addr.clone()).await.unwrap();
    let payload = sliver_wire::encode(WireCodec::F32, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let header =
        FrameHeader::for_payload(1, 1, 1, 5, 0, 0, Direction::Activation, &payload).unwrap();
    // What a retry after a lost receipt does: the same frame on a second stream.
    for _ in 0..2 {
        let mut stream = b
            .client
            .stream_control()
            .open_stream(a.client.peer_id(), TENSOR_PROTOCOL)
            .await
            .unwrap();
        let h = header.encode();
        stream.write_all(&(h.len() as u16).to_le_bytes()).await.unwrap();
        stream.write_all(&h).await.unwrap();
        stream.write_all(&payload).await.unwrap();
        stream.flush().await.unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        assert!(
            matches!(Reply::decode(&reply), Some(Reply::Accepted(r)) if r.header_hash == header.hash())
        );
    }
    assert_eq!(a.inbound.frames.recv().await.unwrap().header, header);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.inbound.frames.try_recv().is_err(), "the duplicate must not be delivered");
    // Another micro-batch is not a duplicate.
    let other =
        FrameHeader::for_payload(1, 1, 1, 6, 0, 0, Direction::Activation, &payload).unwrap();
    b.client.send_frame(a.client.peer_id(), &other, &payload).await.unwrap();
    assert_eq!(a.inbound.frames.recv().await.unwrap().header, other);
}

fn loopback_autonat() -> NetworkConfig {
    NetworkConfig {
        autonat_only_global: false,
        autonat_boot_delay: Duration::from_millis(500),
        ..NetworkConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autonat_finds_a_listening_node_reachable() {
    let server = node_with(loopback_autonat(), Some("/ip4/127.0.0.1/tcp/0")).await;
    let probed = node_with(loopback_autonat(), Some("/ip4/127.0.0.1/tcp/0")).await;
    assert_eq!(probed.client.reachability(), Reachability::Unknown);
    probed.client.dial(server.client.peer_id(), server.addr.clone()).await.unwrap();
    let r = probed.client.wait_reachability(Duration::from_secs(60)).await;
    match &r {
        Reachability::Public(addr) => {
            assert!(addr.to_string().starts_with("/ip4/127.0.0.1/tcp/"), "{addr}")
        }
        other => panic!("expected Public, got {other:?}"),
    }
    println!("reachability: {}", r.advice(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_listen_is_reached_through_a_relay() {
    let relay = node_with(
        NetworkConfig { relay_server: true, ..NetworkConfig::default() },
        Some("/ip4/127.0.0.1/tcp/0"),
    )
    .await;
    // A relay serves reservations only at an address it knows others can dial (an operator
    // declares it; AutoNAT confirms it).
    relay.client.add_external_address(relay.addr.clone()).await.unwrap();
    // `hidden` accepts no direct connection: it listens only through the relay.
    let mut hidden = node_with(NetworkConfig::default(), None).await;
    let circuit =
        hidden.client.listen_via_relay(relay.client.peer_id(), relay.addr.clone()).await.unwrap();
    assert!(
        circuit.to_string().contains(&format!("/p2p/{}/p2p-circuit", relay.client.peer_id())),
        "{circuit}"
    );
    assert!(matches!(hidden.client.reachability(), Reachability::Relayed(_)));
    println!("hidden node: {}", hidden.client.reachability().advice(Some(30333)));

    // A sender that knows only the circuit address reaches it and gets its signed receipt.
    let sender = node().await;
    let hidden_id = hidden.client.peer_id();
    sender.client.dial(hidden_id, circuit.clone()).await.unwrap();
    let payload = sliver_wire::encode(WireCodec::Bf16, &[4, 8], &[0.5; 32]);
    let header =
        FrameHeader::for_payload(1, 1, 1, 1, 0, 1, Direction::Activation, &payload).unwrap();
    let receipt = sender.client.send_frame(hidden_id, &header, &payload).await.unwrap();
    assert!(receipt.verify(&sender.client.peer_id(), &hidden_id));
    let got = hidden.inbound.frames.recv().await.unwrap();
    assert_eq!((got.peer, got.header), (sender.client.peer_id(), header));

    // A relay that does not serve as one refuses the reservation with a clear error.
    let plain = node().await;
    let err = hidden.client.listen_via_relay(plain.client.peer_id(), plain.addr.clone()).await;
    assert!(matches!(err, Err(P2pError::Transport(_))), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdns_finds_peers_on_the_lan() {
    let lan = NetworkConfig { mdns: true, ..NetworkConfig::default() };
    let a = node_with(lan.clone(), Some("/ip4/0.0.0.0/tcp/0")).await;
    let b = node_with(lan, Some("/ip4/0.0.0.0/tcp/0")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if a.client.connected_peers().await.unwrap().contains(&b.client.peer_id()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "mDNS found no peer in 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
