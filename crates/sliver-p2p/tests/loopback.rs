//! Three nodes on loopback: frames and receipts both ways, control requests, hostile frames
//! refused, a peer killed mid-transfer reported.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::identity::Keypair;
use sliver_p2p::network::TENSOR_PROTOCOL;
use sliver_p2p::{
    start, Client, ControlRequest, ControlResponse, Direction, FrameHeader, IncomingFrame,
    NetworkConfig, NodeStatus, P2pError, Reply,
};
use sliver_wire::WireCodec;
use tokio::sync::{mpsc, watch};

struct Node {
    client: Client,
    frames: mpsc::Receiver<IncomingFrame>,
    addr: libp2p::Multiaddr,
    _status: watch::Sender<NodeStatus>,
}

async fn node(config: NetworkConfig, slivers: Vec<u16>, quic: bool) -> Node {
    let (status, rx) =
        watch::channel(NodeStatus { run: 1, epoch: 2, slivers, ..NodeStatus::default() });
    let (client, inbound) = start(Keypair::generate_ed25519(), config, rx).unwrap();
    let frames = inbound.frames;
    let listen = if quic { "/ip4/127.0.0.1/udp/0/quic-v1" } else { "/ip4/127.0.0.1/tcp/0" };
    let addr = client.listen(listen.parse().unwrap()).await.unwrap();
    Node { client, frames, addr, _status: status }
}

fn activation(shape: [usize; 3], micro_batch: u64) -> (FrameHeader, Vec<u8>) {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
    let payload = sliver_wire::encode(WireCodec::Bf16, &shape, &values);
    let header =
        FrameHeader::for_payload(1, 2, 3, micro_batch, 0, 0, Direction::Activation, &payload)
            .unwrap();
    (header, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_and_receipts_flow_both_ways_across_three_nodes() {
    let a = node(NetworkConfig::default(), vec![0], false).await;
    let mut b = node(NetworkConfig::default(), vec![1], true).await;
    let mut c = node(NetworkConfig::default(), vec![2], false).await;
    a.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();
    b.client.dial(c.client.peer_id(), c.addr.clone()).await.unwrap();

    // Forward: a -> b (QUIC) -> c (TCP); backward: c -> b -> a.
    let (h1, p1) = activation([2, 8, 16], 7);
    let r1 = a.client.send_frame(b.client.peer_id(), &h1, &p1).await.unwrap();
    assert!(r1.verify(&a.client.peer_id(), &b.client.peer_id()));
    assert_eq!(r1.header_hash, h1.hash());
    let got = b.frames.recv().await.unwrap();
    assert_eq!((got.peer, &got.header, &got.payload), (a.client.peer_id(), &h1, &p1));

    let (h2, p2) = activation([2, 8, 16], 7);
    b.client.send_frame(c.client.peer_id(), &h2, &p2).await.unwrap();
    assert_eq!(c.frames.recv().await.unwrap().header, h2);

    let grad = sliver_wire::encode(WireCodec::F32, &[2, 8, 16], &vec![-0.5; 256]);
    let hg = FrameHeader::for_payload(1, 2, 3, 7, 0, 2, Direction::Gradient, &grad).unwrap();
    let rg = c.client.send_frame(b.client.peer_id(), &hg, &grad).await.unwrap();
    assert!(rg.verify(&c.client.peer_id(), &b.client.peer_id()));
    assert_eq!(b.frames.recv().await.unwrap().header.direction, Direction::Gradient);
    b.client.send_frame(a.client.peer_id(), &hg, &grad).await.unwrap();

    // Many frames at once are bounded per peer and all arrive.
    let sends = (0..20u64).map(|mb| {
        let client = a.client.clone();
        let peer = b.client.peer_id();
        tokio::spawn(async move {
            let (h, p) = activation([1, 4, 8], mb);
            client.send_frame(peer, &h, &p).await
        })
    });
    for s in sends.collect::<Vec<_>>() {
        s.await.unwrap().unwrap();
    }
    let mut ids: Vec<u64> = Vec::new();
    for _ in 0..20 {
        ids.push(b.frames.recv().await.unwrap().header.micro_batch);
    }
    ids.sort();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());

    // Control: ping and status.
    let pong =
        a.client.request(b.client.peer_id(), ControlRequest::Ping { nonce: 99 }).await.unwrap();
    assert_eq!(pong, ControlResponse::Pong { nonce: 99 });
    let status = a.client.request(b.client.peer_id(), ControlRequest::Status).await.unwrap();
    assert_eq!(
        status,
        ControlResponse::Status(NodeStatus {
            run: 1,
            epoch: 2,
            slivers: vec![1],
            ..NodeStatus::default()
        })
    );

    // Who serves sliver 2? b knows c (and one entry that does not parse, which is dropped).
    let c_record = sliver_p2p::PeerRecord {
        peer_id: c.client.peer_id().to_string(),
        addrs: vec![c.addr.to_string()],
    };
    let junk = sliver_p2p::PeerRecord { peer_id: "not a peer id".into(), addrs: vec![] };
    b._status.send_modify(|s| {
        s.directory.insert(2, vec![c_record, junk]);
    });
    let servers = a.client.who_serves(b.client.peer_id(), 2).await.unwrap();
    assert_eq!(servers, vec![(c.client.peer_id(), vec![c.addr.clone()])]);
    assert!(a.client.who_serves(b.client.peer_id(), 9).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_frames_are_refused() {
    let small =
        NetworkConfig { max_frame_bytes: 1024, max_strikes: 100, ..NetworkConfig::default() };
    let a = node(NetworkConfig::default(), vec![0], false).await;
    let mut b = node(small, vec![1], false).await;
    a.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();

    // Over the receiver's limit: refused with the reason, nothing delivered.
    let (big, payload) = activation([4, 16, 32], 1);
    match a.client.send_frame(b.client.peer_id(), &big, &payload).await {
        Err(P2pError::Refused { reason, .. }) => {
            assert!(reason.contains("exceeds the limit"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A header that lies about the payload is caught by the sender before anything is sent.
    let (mut lying, p) = activation([1, 2, 2], 2);
    lying.shape = vec![2, 2, 1];
    assert!(matches!(
        a.client.send_frame(b.client.peer_id(), &lying, &p).await,
        Err(P2pError::Frame(_))
    ));

    // Raw hostile bytes on the tensor protocol: each is refused, the receiver keeps working.
    let (good, good_payload) = activation([1, 2, 2], 3);
    let mut tampered = good_payload.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x40;
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xff, 0xff],                  // header length over the maximum
        [&[4u8, 0][..], b"JUNK"].concat(), // bad magic
        frame_bytes(&good, &tampered),     // payload hash mismatch
        frame_bytes(&good, &good_payload[..good_payload.len() - 1]), // truncated, then closed
    ];
    let mut control = stream_control(&a);
    for bytes in garbage {
        let mut s = control.open_stream(b.client.peer_id(), TENSOR_PROTOCOL).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        s.close().await.unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply).await;
        match Reply::decode(&reply) {
            Some(Reply::Refused(_)) | None => {}
            Some(Reply::Accepted(_)) => panic!("hostile bytes were accepted: {bytes:?}"),
        }
    }
    let r = a.client.send_frame(b.client.peer_id(), &good, &good_payload).await.unwrap();
    assert!(r.verify(&a.client.peer_id(), &b.client.peer_id()));
    let delivered = b.frames.recv().await.unwrap();
    assert_eq!(delivered.header, good, "only the good frame was delivered");
    assert!(b.frames.try_recv().is_err());
}

fn frame_bytes(h: &FrameHeader, payload: &[u8]) -> Vec<u8> {
    let hb = h.encode();
    [&(hb.len() as u16).to_le_bytes()[..], &hb, payload].concat()
}

fn stream_control(n: &Node) -> libp2p_stream::Control {
    n.client.stream_control()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_transfer_is_reported() {
    let a = node(
        NetworkConfig { frame_timeout: Duration::from_secs(20), ..NetworkConfig::default() },
        vec![0],
        false,
    )
    .await;
    let b = node(NetworkConfig::default(), vec![1], false).await;
    a.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();
    let peer = b.client.peer_id();
    // b never reads its queue: after the queue fills, its receivers stop reading mid-frame.
    // Then b disappears entirely.
    let (h, p) = activation([64, 64, 256], 1); // 2 MiB in bf16
    let sender = a.client.clone();
    let transfer = tokio::spawn(async move {
        let mut errors = Vec::new();
        for _ in 0..200 {
            if let Err(e) = sender.send_frame(peer, &h, &p).await {
                errors.push(e);
                break;
            }
        }
        errors
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.client.shutdown().await;
    drop(b);
    let errors =
        tokio::time::timeout(Duration::from_secs(30), transfer).await.expect("no hang").unwrap();
    match errors.first() {
        Some(P2pError::PeerGone { peer: p, .. }) | Some(P2pError::Refused { peer: p, .. }) => {
            assert_eq!(*p, peer)
        }
        other => panic!("expected the peer to be reported gone, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_known_only_to_a_neighbour_is_found_through_the_dht() {
    let a = node(NetworkConfig::default(), vec![0], false).await;
    let b = node(NetworkConfig::default(), vec![1], false).await;
    let mut c = node(NetworkConfig::default(), vec![1], false).await;
    // a and c each know only b.
    a.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();
    c.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();
    let target = c.client.peer_id();
    // identify runs on connection; give b a moment to learn c's listen address.
    let mut found = Err(P2pError::Stopped);
    for _ in 0..50 {
        found = a.client.find_peer(target).await;
        if found.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let addrs = found.expect("c is found through b");
    assert!(
        addrs.iter().any(|a| a.to_string().starts_with(&c.addr.to_string())),
        "{addrs:?} should contain {}",
        c.addr
    );
    a.client.dial(target, addrs[0].clone()).await.unwrap();
    let (h, p) = activation([1, 2, 4], 5);
    a.client.send_frame(target, &h, &p).await.unwrap();
    assert_eq!(c.frames.recv().await.unwrap().peer, a.client.peer_id());
    // An unknown peer is a clear error, not a hang.
    let nobody = Keypair::generate_ed25519().public().to_peer_id();
    let err = tokio::time::timeout(Duration::from_secs(60), a.client.find_peer(nobody))
        .await
        .expect("no hang");
    assert!(err.unwrap_err().to_string().contains("not found"));
}
