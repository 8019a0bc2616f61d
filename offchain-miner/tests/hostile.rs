//! Hostile neighbours against real stages: real libp2p on loopback, real Burn. Each hostile
//! peer is built here, in the test (a node sending what an honest miner never would); the
//! stages under attack are the ones the miner runs.
//!
//! - A miner of the previous sliver cannot take another route's micro-batch, nor send one
//!   micro-batch twice; a peer of no assigned sliver is refused before its payload is read.
//! - A gradient counts only from the miner the activation went to.
//! - Gradients near f32::MAX are refused by the transport with a strike (the sender is
//!   banned after five); with that bound lifted, the stage skips the step and the weights stay
//!   finite.
//! - Only frames the stage accepted enter the audit log.
//! - Three honest replicas and a liar merge over the network: the liar's pseudo-gradient is
//!   clipped, the merged weights stay finite and close to the honest merge, and the honest
//!   replicas compute bitwise the same state (and so commit the same hash).

use std::collections::HashMap;

mod common;
use common::{corpus, model, stage_config, trainer};
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use sliver_engine::merge::{export_flat, Flat};
use sliver_engine::optim::AdamWConfig;
use sliver_engine::SliverSpec;
use sliver_miner::gate::Neighbours;
use sliver_miner::stage::Stage;
use sliver_p2p::{
    start, Client, Direction, FrameHeader, Inbound, NetworkConfig, NodeStatus, P2pError, PeerId,
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

async fn link(a: &Node, b: &Node) {
    a.client.dial(b.client.peer_id(), b.addr.clone()).await.unwrap();
}

/// A frame of `values` from `sliver` (`[batch, seq, width]` of the test model).
fn frame(
    dir: Direction,
    sliver: u16,
    (route, step, mb): (u64, u64, u64),
    fill: f32,
) -> (FrameHeader, Vec<u8>) {
    let cfg = stage_config();
    let shape = [cfg.batch, cfg.seq, model().d_model];
    let n: usize = shape.iter().product();
    let payload = sliver_wire::encode(WireCodec::F32, &shape, &vec![fill; n]);
    let h = FrameHeader::for_payload(1, 3, step, mb, route, sliver, dir, &payload).unwrap();
    (h, payload)
}

async fn refused(from: &Client, to: PeerId, (h, p): (FrameHeader, Vec<u8>)) -> String {
    match from.send_frame(to, &h, &p).await {
        Err(P2pError::Refused { reason, .. }) => reason,
        other => panic!("not refused: {other:?}"),
    }
}

fn finite(flat: &Flat) -> bool {
    flat.values().flatten().all(|v| v.is_finite())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_cannot_take_another_routes_micro_batch_nor_send_one_twice() {
    let data = corpus();
    let (honest, bad, last_node) = (node().await, node().await, node().await);
    link(&honest, &last_node).await;
    link(&bad, &last_node).await;
    let mut last = Stage::new(trainer(1), last_node.client.clone(), data.clone(), stage_config());
    // The chain assigned both to sliver 0: the honest miner on route 0, the bad one on route 1.
    last.set_neighbours(Neighbours {
        previous: HashMap::from([
            (honest.client.peer_id(), Some(0)),
            (bad.client.peer_id(), Some(1)),
        ]),
        routes: 2,
    });
    let to = last_node.client.peer_id();
    // The honest miner's next micro-batch (route 0, step 0, micro-batch 0) is predictable.
    let reason = refused(&bad.client, to, frame(Direction::Activation, 0, (0, 0, 0), 0.5)).await;
    assert!(reason.contains("route 0 is not the sender's"), "{reason}");
    // Its own route is accepted once; the same micro-batch again is not.
    let own = frame(Direction::Activation, 0, (1, 0, 0), 0.5);
    bad.client.send_frame(to, &own.0, &own.1).await.unwrap();
    let mut dup = frame(Direction::Activation, 0, (1, 0, 0), 0.25);
    dup.1 = sliver_wire::encode(WireCodec::Bf16, &[4, 16, 32], &vec![0.25; 4 * 16 * 32]);
    dup.0 = FrameHeader::for_payload(1, 3, 0, 0, 1, 0, Direction::Activation, &dup.1).unwrap();
    let reason = refused(&bad.client, to, dup).await;
    assert!(reason.contains("already in flight"), "{reason}");
    // A peer the chain assigned to no neighbouring sliver is refused before its payload.
    let stranger = node().await;
    link(&stranger, &last_node).await;
    let reason =
        refused(&stranger.client, to, frame(Direction::Activation, 0, (0, 0, 1), 0.5)).await;
    assert!(reason.contains("not assigned"), "{reason}");

    // The honest miner's step on route 0 completes: nobody took its micro-batches.
    let mut frames = last_node.inbound.frames;
    let server = tokio::spawn(async move {
        // The bad miner's accepted micro-batch and the honest two.
        for _ in 0..3 {
            let f = frames.recv().await.unwrap();
            last.handle(f, None).await.unwrap();
        }
        last
    });
    let mut first = Stage::new(trainer(0), honest.client.clone(), data, stage_config());
    let (_e, mut epoch) = watch::channel(3u64);
    let mut honest_in = honest.inbound.frames;
    let r = first.first_step(to, &mut honest_in, &mut epoch).await.unwrap();
    assert_eq!((r.completed, r.dropped), (2, 0), "{r:?}");
    let last = tokio::time::timeout(Duration::from_secs(10), server).await;
    // The bad miner's one accepted micro-batch and the honest two made the last sliver's steps.
    assert!(last.is_ok_and(|l| l.unwrap().steps() == 1), "the last sliver stepped on 2 of 3");
    assert!(last_node.client.metrics().strikes.get() >= 2, "route and stranger struck");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gradient_counts_only_from_the_miner_the_activation_went_to() {
    let data = corpus();
    let (first_node, last_node, bad) = (node().await, node().await, node().await);
    link(&first_node, &last_node).await;
    link(&bad, &first_node).await;
    let mut last = Stage::new(trainer(1), last_node.client.clone(), data.clone(), stage_config());
    last.set_neighbours(Neighbours {
        previous: HashMap::from([(first_node.client.peer_id(), Some(0))]),
        routes: 1,
    });
    let mut frames = last_node.inbound.frames;
    tokio::spawn(async move {
        while let Some(f) = frames.recv().await {
            // A slow honest last sliver: the bad peer gets its chance to answer first.
            tokio::time::sleep(Duration::from_millis(150)).await;
            if last.handle(f, None).await.is_err() {
                break;
            }
        }
    });
    // The bad peer answers every key of the step with its own gradient, again and again.
    let (target, bad_client) = (first_node.client.peer_id(), bad.client.clone());
    let spam = tokio::spawn(async move {
        let mut refusals = Vec::new();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) {
            for mb in 0..2 {
                let (h, p) = frame(Direction::Gradient, 1, (0, 0, mb), 0.01);
                if let Err(e) = bad_client.send_frame(target, &h, &p).await {
                    refusals.push(e.to_string());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        refusals
    });
    let mut first = Stage::new(trainer(0), first_node.client.clone(), data, stage_config());
    let (_e, mut epoch) = watch::channel(3u64);
    let mut first_in = first_node.inbound.frames;
    let r = first.first_step(last_node.client.peer_id(), &mut first_in, &mut epoch).await.unwrap();
    assert_eq!((r.completed, r.dropped), (2, 0), "the honest gradients made the step: {r:?}");
    let refusals = spam.await.unwrap();
    assert!(!refusals.is_empty());
    assert!(
        refusals.iter().any(|r| r.contains("not sent to") || r.contains("no pending")),
        "{refusals:?}"
    );
    assert!(first_node.client.metrics().strikes.get() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradients_near_f32_max_never_make_the_weights_non_finite() {
    let data = corpus();
    // A next hop that answers each activation with a gradient of 3e38 in every element.
    let evil_next = |node: Node| {
        let mut frames = node.inbound.frames;
        let client = node.client.clone();
        tokio::spawn(async move {
            let _keep = node._status;
            while let Some(f) = frames.recv().await {
                let h = &f.header;
                let (g, p) = frame(Direction::Gradient, 1, (h.route, h.step, h.micro_batch), 3e38);
                let _ = client.send_frame(f.peer, &g, &p).await;
            }
        })
    };

    // Default bound: the transport refuses them, strikes the sender and bans it after five.
    let (first_node, bad) = (node().await, node().await);
    let bad_id = bad.client.peer_id();
    link(&first_node, &bad).await;
    evil_next(bad);
    let mut first = Stage::new(trainer(0), first_node.client.clone(), data.clone(), stage_config());
    let before = export_flat(&mut first.trainer.sliver);
    let (_e, mut epoch) = watch::channel(3u64);
    let mut first_in = first_node.inbound.frames;
    for _ in 0..3 {
        let r = first.first_step(bad_id, &mut first_in, &mut epoch).await.unwrap();
        assert_eq!(r.completed, 0, "{r:?}");
    }
    assert_eq!(export_flat(&mut first.trainer.sliver), before, "no step was taken");
    let m = first_node.client.metrics();
    println!(
        "strikes {}, bans {}, refused {}",
        m.strikes.get(),
        m.bans.get(),
        m.frames_refused.get()
    );
    assert!(first_node.client.admission().is_banned(&bad_id), "five strikes ban the sender");

    // With the bound lifted, the gradients reach the stage: the step is skipped, the weights
    // stay finite, and the single neighbour that fed the step is struck.
    let lifted = NetworkConfig { max_abs_value: f32::MAX, ..NetworkConfig::default() };
    let (first_node, bad) = (node_with(lifted).await, node().await);
    let bad_id = bad.client.peer_id();
    link(&first_node, &bad).await;
    evil_next(bad);
    let mut first = Stage::new(trainer(0), first_node.client.clone(), data, stage_config());
    let mut first_in = first_node.inbound.frames;
    let r = first.first_step(bad_id, &mut first_in, &mut epoch).await.unwrap();
    assert!(r.skipped, "{r:?}");
    assert_eq!((first.steps(), first.counters.steps_skipped), (0, 1));
    assert!(finite(&export_flat(&mut first.trainer.sliver)));
    let t = Instant::now();
    while first_node.client.metrics().strikes.get() == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "the neighbour that fed the step is struck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_accepted_frames_enter_the_audit_log() {
    use sliver_miner::audit::AuditLog;
    let data = corpus();
    let (honest, last_node, stranger) = (node().await, node().await, node().await);
    link(&honest, &last_node).await;
    link(&stranger, &last_node).await;
    let dir = std::env::temp_dir().join(format!("sliver-hostile-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = AuditLog::open(&dir, 1, 1 << 30).unwrap();
    let mut last = Stage::new(trainer(1), last_node.client.clone(), data.clone(), stage_config())
        .with_audit(log.clone());
    last.set_neighbours(Neighbours {
        previous: HashMap::from([(honest.client.peer_id(), Some(0))]),
        routes: 1,
    });
    let to = last_node.client.peer_id();
    // A stranger tries to fill the log with micro-batches of its own.
    for mb in 0..10 {
        let (h, p) = frame(Direction::Activation, 0, (0, mb, 0), 0.5);
        assert!(stranger.client.send_frame(to, &h, &p).await.is_err(), "refused or banned");
    }
    let mut frames = last_node.inbound.frames;
    let server = tokio::spawn(async move {
        loop {
            let f = frames.recv().await.unwrap();
            if last.handle(f, None).await.unwrap().is_some() {
                return last;
            }
        }
    });
    let mut first = Stage::new(trainer(0), honest.client.clone(), data, stage_config());
    let (_e, mut epoch) = watch::channel(3u64);
    let mut honest_in = honest.inbound.frames;
    first.first_step(to, &mut honest_in, &mut epoch).await.unwrap();
    server.await.unwrap();
    let stats = log.stats();
    assert_eq!(stats.micro_batches, 2, "the honest step's two micro-batches only: {stats:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_replicas_merge_alike_and_a_lying_replica_is_clipped() {
    use sliver_miner::audit::AuditLog;
    use sliver_miner::merge::{encode_flat, merge_name, merge_round, publish_named};
    use sliver_miner::presence::Presence;
    use sliver_miner::training::Setup;

    let data = corpus();
    let base = std::env::temp_dir().join(format!("sliver-hostile-merge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let last_node = node().await;
    let replicas = [node().await, node().await, node().await];
    let liar = node().await;
    for r in replicas.iter().chain([&liar]) {
        link(r, &last_node).await;
        for other in replicas.iter().chain([&liar]) {
            if other.client.peer_id() != r.client.peer_id() {
                link(r, other).await;
            }
        }
    }
    // One last-sliver miner serves the three replicas' routes.
    let mut last = Stage::new(trainer(1), last_node.client.clone(), data.clone(), stage_config());
    last.set_neighbours(Neighbours {
        previous: replicas
            .iter()
            .enumerate()
            .map(|(i, r)| (r.client.peer_id(), Some(i as u64)))
            .collect(),
        routes: 3,
    });
    let mut frames = last_node.inbound.frames;
    tokio::spawn(async move {
        while let Some(f) = frames.recv().await {
            if last.handle(f, None).await.is_err() {
                break;
            }
        }
    });
    let setup = |n: &Node, i: usize| {
        let dir = base.join(format!("r{i}"));
        Setup {
            model: model(),
            specs: SliverSpec::split(2, 2).unwrap(),
            stage_cfg: stage_config(),
            adamw: AdamWConfig::default(),
            device: sliver_engine::default_device(),
            data: data.clone(),
            client: n.client.clone(),
            data_dir: dir.clone(),
            run_id: 1,
            audit: AuditLog::open(&dir, 1, 1 << 30).unwrap(),
            outer: (0.7, 0.9),
        }
    };
    // Each honest replica trains three steps of its own data.
    let mut trainings = Vec::new();
    let mut inbounds = Vec::new();
    let replicas: Vec<Node> = replicas.into_iter().collect();
    let mut statuses = Vec::new();
    for (i, r) in replicas.into_iter().enumerate() {
        let (mut t, _) = setup(&r, i).train(0, None).unwrap();
        t.stage.set_route(i as u64);
        let (_e, mut epoch) = watch::channel(3u64);
        let mut inbound = r.inbound.frames;
        for _ in 0..3 {
            let s = t
                .stage
                .first_step(last_node.client.peer_id(), &mut inbound, &mut epoch)
                .await
                .unwrap();
            assert_eq!(s.completed, 2);
        }
        trainings.push((t, r.client.peer_id()));
        inbounds.push(inbound);
        statuses.push(r._status);
    }
    // The liar publishes a pseudo-gradient of 1e30 in every value under the merge name.
    let like = export_flat(&mut trainer(0).sliver);
    let poison: Flat = like.iter().map(|(k, v)| (k.clone(), vec![1e30; v.len()])).collect();
    let h = liar.client.publish_blob(encode_flat(&poison, WireCodec::Bf16)).unwrap();
    publish_named(&liar._status, &liar.client, merge_name(0, 3), h, 3);

    let peers: Vec<PeerId> =
        trainings.iter().map(|(_, p)| *p).chain([liar.client.peer_id()]).collect();
    let presence = Presence::default();
    let rounds = trainings.iter_mut().zip(&statuses).map(|((t, me), status)| {
        let others: Vec<PeerId> = peers.iter().copied().filter(|p| p != me).collect();
        let presence = presence.clone();
        async move { merge_round(t, status, &others, 3, &presence).await.unwrap() }
    });
    let merged = futures::future::join_all(rounds).await;
    for m in &merged {
        println!(
            "merged with {} replicas, {} clipped, applied {}, in {:?}",
            m.with, m.clipped, m.applied, m.took
        );
        assert!(m.applied && m.with == 3 && m.clipped >= 1, "{m:?}");
    }
    assert!(
        merged.iter().all(|m| m.hash == merged[0].hash),
        "honest replicas commit the same hash"
    );
    for (t, _) in &mut trainings {
        let w = export_flat(&mut t.stage.trainer.sliver);
        assert!(finite(&w));
        let largest = w.values().flatten().fold(0f32, |m, v| m.max(v.abs()));
        assert!(largest < 10.0, "the liar moved no weight far: {largest}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_that_never_answers_cannot_stall_the_stage() {
    let data = corpus();
    // The black hole takes one frame and then never reads again: every later stream to it
    // waits, unanswered, until the transport's 30 s timeout.
    let hole = node_with(NetworkConfig { delivery_queue: 1, ..NetworkConfig::default() }).await;
    let (honest, last_node) = (node().await, node().await);
    link(&honest, &last_node).await;
    link(&hole, &last_node).await;
    let mut last = Stage::new(trainer(1), last_node.client.clone(), data.clone(), stage_config());
    last.set_neighbours(Neighbours {
        previous: HashMap::from([
            (honest.client.peer_id(), Some(0)),
            (hole.client.peer_id(), Some(1)),
        ]),
        routes: 2,
    });
    let mut frames = last_node.inbound.frames;
    tokio::spawn(async move {
        while let Some(f) = frames.recv().await {
            if last.handle(f, None).await.is_err() {
                break;
            }
        }
    });
    // The black hole sends activations on its own route; the gradients the last sliver owes
    // it go out and hang.
    let to = last_node.client.peer_id();
    for step in 0..3 {
        for mb in 0..2 {
            let (h, p) = frame(Direction::Activation, 0, (1, step, mb), 0.1);
            hole.client.send_frame(to, &h, &p).await.unwrap();
        }
    }
    // Meanwhile the honest first sliver's steps complete at their usual pace.
    let mut first = Stage::new(trainer(0), honest.client.clone(), data, stage_config());
    let (_e, mut epoch) = watch::channel(3u64);
    let mut honest_in = honest.inbound.frames;
    let t = Instant::now();
    for _ in 0..3 {
        let r = first.first_step(to, &mut honest_in, &mut epoch).await.unwrap();
        assert_eq!((r.completed, r.dropped), (2, 0), "{r:?}");
    }
    println!("3 honest steps in {:?} while 5 gradients to a silent peer hang", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(10), "no stall: {:?}", t.elapsed());
    let _keep = (hole._status, hole.inbound);
}
