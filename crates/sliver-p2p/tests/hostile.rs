//! Hostile peers against real nodes on loopback: who may connect, what strikes and bans do,
//! per-IP limits, audits only for validators, the serving budget, the application's gate
//! refusing before the payload and before any receipt, absurd magnitudes, and buffers that
//! grow only as bytes arrive. Each hostile behaviour is built here, in the test, with the raw
//! stream control a well-behaved client never uses this way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::identity::Keypair;
use sliver_p2p::network::TENSOR_PROTOCOL;
use sliver_p2p::{
    start, AuditRequest, Client, Direction, FrameGate, FrameHeader, Inbound, NetworkConfig,
    NodeStatus, P2pError, PeerId, PeerRole, Refusal, Reply,
};
use sliver_wire::WireCodec;
use tokio::sync::watch;

struct Node {
    client: Client,
    inbound: Inbound,
    addr: libp2p::Multiaddr,
    _status: watch::Sender<NodeStatus>,
}

async fn node_with(config: NetworkConfig) -> Node {
    let (status, rx) = watch::channel(NodeStatus::default());
    let (client, inbound) = start(Keypair::generate_ed25519(), config, rx).unwrap();
    let addr = client.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    Node { client, inbound, addr, _status: status }
}

async fn node() -> Node {
    node_with(NetworkConfig::default()).await
}

fn frame(values: &[f32], mb: u64) -> (FrameHeader, Vec<u8>) {
    let payload = sliver_wire::encode(WireCodec::F32, &[1, values.len()], values);
    let h = FrameHeader::for_payload(1, 1, 0, mb, 0, 0, Direction::Activation, &payload).unwrap();
    (h, payload)
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_peers_connect_and_repeat_offenders_are_banned_for_the_epoch() {
    let b = node_with(NetworkConfig { max_abs_value: 100.0, ..NetworkConfig::default() }).await;
    let a = node().await;
    let stranger = node().await;
    b.client.set_peers(Some(HashMap::from([(a.client.peer_id(), PeerRole::Miner)]))).await.unwrap();
    a.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();
    let (good, payload) = frame(&[1.0; 8], 0);
    a.client.send_frame(b.client.peer_id(), &good, &payload).await.unwrap();

    // Not registered: the connection is denied once the handshake names the peer.
    let _ = stranger.client.dial(b.client.peer_id(), b.addr.clone()).await;
    let err = stranger.client.send_frame(b.client.peer_id(), &good, &payload).await.unwrap_err();
    println!("stranger: {err}");
    let peers = b.client.connected_peers().await.unwrap();
    assert!(!peers.contains(&stranger.client.peer_id()), "{peers:?}");

    // Five frames with absurd values: five strikes, and the peer is banned and disconnected.
    for mb in 1..=5 {
        let (bad, p) = frame(&[3e38; 8], mb);
        match a.client.send_frame(b.client.peer_id(), &bad, &p).await {
            Err(P2pError::Refused { reason, .. }) => assert!(reason.contains("bound"), "{reason}"),
            other => assert!(mb == 5 && other.is_err(), "frame {mb}: {other:?}"),
        }
    }
    eventually("the offender is disconnected", async || {
        !b.client.connected_peers().await.unwrap().contains(&a.client.peer_id())
    })
    .await;
    assert!(b.client.admission().is_banned(&a.client.peer_id()));
    assert!(b.client.metrics().bans.get() >= 1 && b.client.metrics().strikes.get() >= 5);
    let _ = a.client.dial(b.client.peer_id(), b.addr.clone()).await;
    assert!(
        a.client.send_frame(b.client.peer_id(), &good, &payload).await.is_err(),
        "still banned"
    );

    // The next epoch lifts the ban.
    b.client.clear_bans().await;
    eventually("the ban is lifted", async || !b.client.admission().is_banned(&a.client.peer_id()))
        .await;
    a.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();
    let (fresh, p) = frame(&[2.0; 8], 9);
    a.client.send_frame(b.client.peer_id(), &fresh, &p).await.unwrap();

    // A peer whose registration ends is disconnected at once.
    b.client.set_peers(Some(HashMap::new())).await.unwrap();
    eventually("a peer that left the registry is disconnected", async || {
        b.client.connected_peers().await.unwrap().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_limited_per_ip_address() {
    let b =
        node_with(NetworkConfig { max_connections_per_ip: 3, ..NetworkConfig::default() }).await;
    let mut others = Vec::new();
    for _ in 0..6 {
        let n = node().await;
        let _ = n.client.dial(b.client.peer_id(), b.addr.clone()).await;
        others.push(n);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let connected = b.client.connected_peers().await.unwrap().len();
    println!("{connected} of 6 peers from 127.0.0.1 connected (limit 3)");
    assert!((1..=3).contains(&connected), "{connected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_are_answered_for_registered_validators_only() {
    let mut b = node().await;
    let (m, v) = (node().await, node().await);
    b.client
        .set_peers(Some(HashMap::from([
            (m.client.peer_id(), PeerRole::Miner),
            (v.client.peer_id(), PeerRole::Validator),
        ])))
        .await
        .unwrap();
    for n in [&m, &v] {
        n.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();
    }
    let req = AuditRequest { run: 1, epoch: 1, route: 0, step: 0, micro_batch: 0 };
    let err = m.client.audit(b.client.peer_id(), req).await.unwrap_err();
    assert!(err.to_string().contains("validators only"), "{err}");
    assert_eq!(b.client.metrics().requests_refused.get(), 1);
    assert!(
        b.inbound.audits.try_recv().is_err(),
        "the miner's request never reached the application"
    );
    let asked = tokio::spawn({
        let (v, peer) = (v.client.clone(), b.client.peer_id());
        async move { v.audit(peer, req).await }
    });
    let q = tokio::time::timeout(Duration::from_secs(5), b.inbound.audits.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q.peer, v.client.peer_id());
    q.respond(None).await;
    assert!(asked.await.unwrap().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_peer_has_a_serving_budget_and_audit_blobs_cannot_evict_shared_ones() {
    let b = node_with(NetworkConfig {
        serve_bytes_per_sec: 10_000,
        serve_burst_bytes: 3 << 20,
        max_blob_bytes: 4 << 20,
        max_audit_blob_bytes: 1 << 20,
        ..NetworkConfig::default()
    })
    .await;
    let (x, y) = (node().await, node().await);
    for n in [&x, &y] {
        n.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();
    }
    let weights: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let hash = b.client.publish_blob(weights.clone()).unwrap();
    // An audit asker filling the audit store many times over evicts nothing the replicas need.
    for i in 0..20u8 {
        b.client.publish_audit_blob(vec![i; 300_000]).unwrap();
    }
    assert_eq!(x.client.fetch_blob(b.client.peer_id(), hash, 4 << 20).await.unwrap(), weights);
    let err = x.client.fetch_blob(b.client.peer_id(), hash, 4 << 20).await.unwrap_err();
    assert!(err.to_string().contains("serving budget"), "{err}");
    assert!(b.client.metrics().serve_refused.get() >= 1);
    // Another peer has a budget of its own.
    assert_eq!(y.client.fetch_blob(b.client.peer_id(), hash, 4 << 20).await.unwrap(), weights);
}

/// A gate that refuses every frame of one peer, with or without a strike.
struct Refuse(PeerId, bool);

impl FrameGate for Refuse {
    fn check(&self, peer: &PeerId, _: &FrameHeader) -> Result<(), Refusal> {
        if *peer == self.0 {
            Err(Refusal { reason: "not in this epoch's schedule".into(), strike: self.1 })
        } else {
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_refuses_before_the_payload_is_read_and_nothing_is_receipted() {
    let mut b = node().await;
    let a = node().await;
    a.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();
    b.client.set_frame_gate(Some(Arc::new(Refuse(a.client.peer_id(), false))));

    // A header announcing 1 MiB, and not one payload byte: the refusal comes back at once.
    let values = vec![0.5f32; 1 << 18];
    let (h, _) = frame(&values, 0);
    let mut s =
        a.client.stream_control().open_stream(b.client.peer_id(), TENSOR_PROTOCOL).await.unwrap();
    let head = h.encode();
    s.write_all(&(head.len() as u16).to_le_bytes()).await.unwrap();
    s.write_all(&head).await.unwrap();
    s.flush().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), (&mut s).take(4096).read_to_end(&mut reply))
        .await
        .expect("refused before the payload")
        .unwrap();
    match Reply::decode(&reply) {
        Some(Reply::Refused(reason)) => assert!(reason.contains("schedule"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(b.client.metrics().strikes.get(), 0, "a benign refusal strikes nobody");
    // Through the client too: no receipt, nothing delivered.
    let (h, p) = frame(&[1.0; 4], 1);
    let err = a.client.send_frame(b.client.peer_id(), &h, &p).await.unwrap_err();
    assert!(matches!(err, P2pError::Refused { .. }), "{err}");
    assert!(b.inbound.frames.try_recv().is_err());
    // A gate's strike counts.
    b.client.set_frame_gate(Some(Arc::new(Refuse(a.client.peer_id(), true))));
    let _ = a.client.send_frame(b.client.peer_id(), &h, &p).await;
    eventually("the strike is counted", async || b.client.metrics().strikes.get() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_large_frame_holds_only_the_bytes_it_sent() {
    let b = node().await;
    let a = node().await;
    a.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();
    // Announce 64 MiB (the default limit) and send 100 KB of it, then stall.
    let n = (64 << 20) / 4 - 8;
    let payload_len = sliver_wire::WireCodec::F32.payload_len(&[1, n]).unwrap() + 2 + 8;
    let h = FrameHeader {
        run: 1,
        epoch: 1,
        step: 0,
        micro_batch: 0,
        route: 0,
        sliver: 0,
        direction: Direction::Activation,
        codec: WireCodec::F32,
        shape: vec![1, n as u32],
        payload_len: payload_len as u64,
        payload_hash: [0; 32],
    };
    h.check_len(64 << 20).unwrap();
    let mut s =
        a.client.stream_control().open_stream(b.client.peer_id(), TENSOR_PROTOCOL).await.unwrap();
    let head = h.encode();
    s.write_all(&(head.len() as u16).to_le_bytes()).await.unwrap();
    s.write_all(&head).await.unwrap();
    s.write_all(&vec![0u8; 100_000]).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = b.client.metrics().inbound_bytes.get();
    println!("a stalled 64 MiB frame holds {held} bytes after 100 KB arrived");
    assert!(held > 0 && held < 1 << 20, "{held}");
    drop(s);
}

/// A holder that answers every blob request with other bytes of the right length (a raw libp2p
/// swarm speaking the control protocol, built here): the fetcher finds out at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_serves_other_bytes_under_a_hash_is_caught() {
    use futures::StreamExt;
    use libp2p::request_response::{self, Message, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;
    use sliver_p2p::network::CONTROL_PROTOCOL;
    use sliver_p2p::{ControlRequest, ControlResponse};

    let total = 1_500_000u64;
    let mut liar = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::cbor::Behaviour::<ControlRequest, ControlResponse>::new(
                [(CONTROL_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default(),
            )
        })
        .unwrap()
        .build();
    liar.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = liar.select_next_some().await {
            break address;
        }
    };
    let liar_id = *liar.local_peer_id();
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    Message::Request {
                        request: ControlRequest::Blob { offset, max_len, .. },
                        channel,
                        ..
                    },
                ..
            }) = liar.select_next_some().await
            {
                let n = (max_len as u64).min(total.saturating_sub(offset)) as usize;
                let chunk = ControlResponse::BlobChunk { total, offset, data: vec![0x55; n] };
                let _ = liar.behaviour_mut().send_response(channel, chunk);
            }
        }
    });
    let a = node().await;
    a.client.dial(liar_id, addr).await.unwrap();
    let honest = blake3::hash(b"the committed weights");
    let err = a.client.fetch_blob(liar_id, *honest.as_bytes(), 2 << 20).await.unwrap_err();
    assert!(err.to_string().contains("do not match their hash"), "{err}");
}
