//! Two miners, one per sliver, train a small GPT over real libp2p connections on loopback with
//! real Burn: the loss the last sliver computes falls, and a neighbour that disappears costs
//! dropped micro-batches, not a hang.

use std::sync::Arc;

mod common;
use common::{corpus, model, stage_config, trainer};
use std::time::Duration;

use libp2p::identity::Keypair;
use sliver_engine::optim::AdamWConfig;
use sliver_engine::{SliverSpec, SliverTrainer};
use sliver_miner::gate::Neighbours;
use sliver_miner::stage::Stage;
use sliver_p2p::{start, Client, Inbound, NetworkConfig, NodeStatus, PeerId};
use sliver_wire::WireCodec;
use tokio::sync::watch;

async fn node() -> (Client, Inbound, libp2p::Multiaddr, watch::Sender<NodeStatus>) {
    let (status, rx) = watch::channel(NodeStatus::default());
    let (client, inbound) =
        start(Keypair::generate_ed25519(), NetworkConfig::default(), rx).unwrap();
    let addr = client.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    (client, inbound, addr, status)
}

type Node = (Client, Inbound, watch::Sender<NodeStatus>);

/// What the chain would tell a stage: `peer` is the previous sliver's miner (on `route` when
/// that sliver is the first), and there is one route.
fn from(peer: PeerId, route: Option<u64>) -> Neighbours {
    Neighbours { previous: std::collections::HashMap::from([(peer, route)]), routes: 1 }
}

/// Two nodes on loopback, the first connected to the second.
async fn connected_pair() -> (Node, Node) {
    let (c0, in0, _, s0) = node().await;
    let (c1, in1, a1, s1) = node().await;
    c0.dial(c1.peer_id(), a1).await.unwrap();
    ((c0, in0, s0), (c1, in1, s1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_miners_train_across_the_network_and_the_loss_falls() {
    let data = corpus();
    let ((c0, mut in0, _s0), (c1, mut in1, _s1)) = connected_pair().await;

    let mut last = Stage::new(trainer(1), c1.clone(), data.clone(), stage_config());
    last.set_neighbours(from(c0.peer_id(), Some(0)));
    let server = tokio::spawn(async move {
        let mut losses = Vec::new();
        while let Some(frame) = in1.frames.recv().await {
            if let Some(report) = last.handle(frame, None).await.unwrap() {
                losses.push(report.loss.unwrap());
            }
            if losses.len() == 40 {
                break;
            }
        }
        last.flush(Duration::from_secs(5)).await;
        (losses, last.counters.clone())
    });

    let (_epoch_tx, mut epoch) = watch::channel(3u64);
    let mut first = Stage::new(trainer(0), c0.clone(), data, stage_config());
    for _ in 0..40 {
        let r = first.first_step(c1.peer_id(), &mut in0.frames, &mut epoch).await.unwrap();
        assert_eq!((r.completed, r.dropped), (2, 0), "{r:?}");
    }
    let (losses, counters) = server.await.unwrap();
    let head: f32 = losses[..5].iter().sum::<f32>() / 5.0;
    let tail: f32 = losses[35..].iter().sum::<f32>() / 5.0;
    println!("last sliver's loss: first 5 steps {head:.3}, last 5 steps {tail:.3}");
    assert!(head > 5.0, "an untrained byte model starts near ln 256 = 5.55: {head}");
    assert!(tail < head - 1.0, "the loss falls: {head} -> {tail}");
    // bf16 activations and gradients: 4 x 16 x 32 x 2 bytes plus the frame's own header each.
    assert_eq!(counters.frames_sent, 80);
    assert_eq!(first.counters.frames_sent, 80);
    assert_eq!(first.counters.tokens, 40 * 2 * 4 * 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_that_vanishes_costs_micro_batches_not_a_hang() {
    let data = corpus();
    let ((c0, mut in0, _s0), (c1, mut in1, _s1)) = connected_pair().await;

    // The next sliver takes the activations but never answers (a process hung or killed after
    // the receipt): every micro-batch of the step is dropped after the timeout.
    let swallow = tokio::spawn(async move { while in1.frames.recv().await.is_some() {} });
    let (epoch_tx, mut epoch) = watch::channel(3u64);
    let mut first = Stage::new(trainer(0), c0.clone(), data.clone(), stage_config());
    let t = std::time::Instant::now();
    let r = first.first_step(c1.peer_id(), &mut in0.frames, &mut epoch).await.unwrap();
    assert_eq!((r.completed, r.dropped), (0, 2), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(first.trainer.in_flight(), 0, "abandoned micro-batches free their memory");

    // The chain's epoch ends while gradients are awaited: the step gives up at once.
    let bump = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        epoch_tx.send_replace(4);
        epoch_tx
    });
    let t = std::time::Instant::now();
    let r = first.first_step(c1.peer_id(), &mut in0.frames, &mut epoch).await.unwrap();
    assert_eq!((r.completed, r.dropped), (0, 2), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "no wait for the timeout: {:?}", t.elapsed());
    let _epoch_tx = bump.await.unwrap();
    first.set_epoch(4);

    // Then it is gone altogether: sending fails at once and the step is dropped, no hang.
    c1.shutdown().await;
    swallow.abort();
    let r = first.first_step(c1.peer_id(), &mut in0.frames, &mut epoch).await.unwrap();
    assert_eq!((r.completed, r.dropped), (0, 2), "{r:?}");
    assert_eq!(first.steps(), 0, "no optimiser step without a completed micro-batch");
}

/// A validator's replay of one audited micro-batch on both miners: it fetches the weights
/// snapshot and payloads the audit names, checks the receipts, recomputes each sliver's output
/// and finds the payload hashes the neighbours signed for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_let_a_validator_replay_the_steps() {
    use sliver_miner::audit::{self, AuditLog};
    use sliver_miner::telemetry::{StatusLine, Telemetry};
    use sliver_p2p::{AuditRequest, Direction, FrameHeader, Reply};

    let data = corpus();
    let ((c0, in0, _s0), (c1, in1, _s1)) = connected_pair().await;
    let (mut frames0, mut frames1) = (in0.frames, in1.frames);
    let dir = std::env::temp_dir().join(format!("sliver-stage-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let logs = [
        AuditLog::open(&dir.join("first"), 1, 1 << 30).unwrap(),
        AuditLog::open(&dir.join("last"), 1, 1 << 30).unwrap(),
    ];
    let figures = |c: &Client| {
        let status = StatusLine { uid: 0, every: 0, client: c.clone(), port: None };
        Telemetry::spawn(&mut prometheus_client::registry::Registry::default(), status)
    };
    let tele = [figures(&c0), figures(&c1)];
    tokio::spawn(audit::serve(logs[0].clone(), c0.clone(), in0.audits, tele[0].clone()));
    tokio::spawn(audit::serve(logs[1].clone(), c1.clone(), in1.audits, tele[1].clone()));

    let last = Stage::new(trainer(1), c1.clone(), data.clone(), stage_config())
        .with_audit(logs[1].clone());
    last.set_neighbours(from(c0.peer_id(), Some(0)));
    let mut last = last;
    let server = tokio::spawn(async move {
        let mut steps = 0;
        while let Some(frame) = frames1.recv().await {
            steps += usize::from(last.handle(frame, None).await.unwrap().is_some());
            if steps == 3 {
                break;
            }
        }
    });
    let (_epoch_tx, mut epoch) = watch::channel(3u64);
    let mut first = Stage::new(trainer(0), c0.clone(), data.clone(), stage_config())
        .with_audit(logs[0].clone());
    for _ in 0..3 {
        let r = first.first_step(c1.peer_id(), &mut frames0, &mut epoch).await.unwrap();
        assert_eq!(r.completed, 2);
    }
    server.await.unwrap();

    // The validator.
    let (v, _vin, _, _vs) = node().await;
    for c in [&c0, &c1] {
        let addr = c.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
        v.dial(c.peer_id(), addr).await.unwrap();
    }
    // Step 2, micro-batch 1: the weights have moved twice since the start.
    let req = AuditRequest { run: 1, epoch: 3, route: 0, step: 2, micro_batch: 1 };
    let asked = std::time::Instant::now();
    let ans0 = v.audit(c0.peer_id(), req).await.unwrap().expect("the first sliver kept it");
    println!("audit answered in {:?}", asked.elapsed());
    let ans1 = v.audit(c1.peer_id(), req).await.unwrap().expect("the last sliver kept it");
    let headers = |a: &sliver_p2p::AuditAnswer| -> Vec<FrameHeader> {
        a.frames.iter().map(|f| FrameHeader::decode(&f.header).unwrap()).collect()
    };
    let (h0, h1) = (headers(&ans0), headers(&ans1));
    // First sliver: the activation it sent (receipted by the last) and the gradient it got.
    assert_eq!(
        h0.iter().map(|h| h.direction).collect::<Vec<_>>(),
        [Direction::Activation, Direction::Gradient]
    );
    // Last sliver: the same activation received, and the gradient it sent (receipted).
    assert_eq!(h1, h0, "both miners account for the same two frames");
    // Each receipt says: this receiver accepted this frame from this sender.
    let signed_by =
        |receipt: &Option<Vec<u8>>, header: &FrameHeader, sender, receiver| match Reply::decode(
            receipt.as_deref().expect("a sent frame carries its receipt"),
        ) {
            Some(Reply::Accepted(r)) => {
                r.verify(&sender, &receiver) && r.header_hash == header.hash()
            }
            _ => false,
        };
    assert!(signed_by(&ans0.frames[0].receipt, &h0[0], c0.peer_id(), c1.peer_id()));
    assert!(signed_by(&ans1.frames[1].receipt, &h1[1], c1.peer_id(), c0.peer_id()));
    assert!(
        !signed_by(&ans0.frames[0].receipt, &h0[0], v.peer_id(), c1.peer_id()),
        "not about another sender"
    );
    assert!(ans0.frames[1].receipt.is_none() && ans1.frames[0].receipt.is_none());

    // Each sliver's three steps form one segment (a snapshot every 8 steps): a validator
    // fetches its step records, the snapshot, every summed micro-batch's account and received
    // payloads over the network, and replays the steps bit for bit.
    let cfg = stage_config();
    let model = model();
    let shape = sliver_audit::RunShape {
        run: 1,
        specs: SliverSpec::split(model.n_layer, 2).unwrap(),
        model,
        micro_batches: cfg.micro_batches,
        batch: cfg.batch,
        seq: cfg.seq,
        lr: cfg.lr.clone(),
        clip: cfg.clip,
        adamw: AdamWConfig::default(),
    };
    let mut replayer = sliver_audit::Replayer::new(shape, data.clone());
    for (sliver, c) in [(0u16, &c0), (1, &c1)] {
        let ask = sliver_p2p::AuditStepsRequest { run: 1, epoch: 3, from: 0 };
        let page = v.audit_steps(c.peer_id(), ask).await.unwrap().expect("steps kept");
        assert_eq!(page.steps.len(), 3, "three steps recorded");
        assert!(page.steps[0].optim.is_some() && page.steps[1].optim.is_none());
        let first = &page.steps[0];
        let hashes = vec![first.before, first.optim.unwrap()];
        let blobs = sliver_p2p::AuditBlobsRequest { run: 1, epoch: 3, hashes: hashes.clone() };
        assert_eq!(v.audit_blobs(c.peer_id(), blobs).await.unwrap(), hashes);
        let weights = v.fetch_blob(c.peer_id(), first.before, 1 << 24).await.unwrap();
        let optim = v.fetch_blob(c.peer_id(), first.optim.unwrap(), 1 << 25).await.unwrap();
        let mut batches = std::collections::HashMap::new();
        for key in page.steps.iter().flat_map(|s| &s.batches) {
            let req = AuditRequest {
                run: 1,
                epoch: 3,
                route: key.route,
                step: key.step,
                micro_batch: key.micro_batch,
            };
            let answer = v.audit(c.peer_id(), req).await.unwrap().expect("kept");
            let mut payloads = std::collections::HashMap::new();
            let mut listed = Vec::new();
            for f in &answer.frames {
                let h = FrameHeader::decode(&f.header).unwrap();
                if f.receipt.is_some() {
                    listed.push(f.header.clone());
                } else {
                    let p = v.fetch_blob(c.peer_id(), h.payload_hash, 1 << 24).await.unwrap();
                    payloads.insert(h.payload_hash, p);
                }
            }
            batches.insert(*key, sliver_audit::BatchAccount { answer, listed, payloads });
        }
        let ev = sliver_audit::SegmentEvidence {
            steps: page.steps.clone(),
            weights,
            optim,
            older: Default::default(),
            batches,
        };
        match replayer.check_segment(3, sliver, &ev) {
            sliver_audit::SegmentOutcome::Pass { checked, .. } => assert_eq!(checked, 6),
            o => panic!("sliver {sliver}'s honest steps: {o:?}"),
        }
        // Another step's weights do not reproduce its outputs.
        let mut bad = ev.clone();
        bad.steps[1].after = bad.steps[2].after;
        assert!(matches!(
            replayer.check_segment(3, sliver, &bad),
            sliver_audit::SegmentOutcome::Fail(_)
        ));
    }

    // What was never trained is not kept, and says so.
    let none = AuditRequest { step: 40, ..req };
    assert!(v.audit(c0.peer_id(), none).await.unwrap().is_none());
    let f = tele[0].figures().await;
    // The first sliver answered one account above and six for its segment.
    assert_eq!((f.audits_answered, f.audits_missed, f.audits_pending), (7, 1, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Leaving at the end of a window: the last sliver finishes the micro-batches already sent
/// to it (the first sliver's step completes), tells its replica it is leaving and hands over
/// its pseudo-gradient, which the replica fetches at once; rejoining clears "away".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_miner_finishes_its_work_and_hands_over_its_pseudo_gradient() {
    use sliver_miner::presence::{self, Presence, Verdict};
    use sliver_p2p::PresenceNotice;

    let data = corpus();
    let ((c0, mut in0, _s0), (c1, in1, _s1)) = connected_pair().await;
    let mut frames1 = in1.frames;
    let mut last = Stage::new(trainer(1), c1.clone(), data.clone(), stage_config());
    last.set_neighbours(from(c0.peer_id(), Some(0)));
    let (_epoch_tx, mut epoch) = watch::channel(3u64);
    let mut first = Stage::new(trainer(0), c0.clone(), data.clone(), stage_config());
    // The window ends while the first sliver's step is in flight: the last sliver drains.
    let leaver = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reports = last
            .drain(&mut frames1, None, Duration::from_millis(500), Duration::from_secs(5))
            .await
            .unwrap();
        (reports, last)
    });
    let r = first.first_step(c1.peer_id(), &mut in0.frames, &mut epoch).await.unwrap();
    assert_eq!((r.completed, r.dropped), (2, 0), "in-flight work is finished: {r:?}");
    let (reports, last) = leaver.await.unwrap();
    assert_eq!(reports.len(), 1, "one step on what was accumulated: {reports:?}");
    assert_eq!((reports[0].completed, last.steps()), (2, 1));

    // The replica (c0 here) takes the notice and the handed-over blob.
    let seen = Presence::default();
    let judge = |_: &PeerId, n: &PresenceNotice| match n.run {
        1 => Verdict::Count { epoch: 3, handoff: Some(1 << 20) },
        _ => Verdict::Ignore,
    };
    tokio::spawn(presence::serve(seen.clone(), c0.clone(), in0.notices, Box::new(judge)));
    let delta = vec![7u8; 3000];
    let hash = c1.publish_blob(delta.clone()).unwrap();
    let notice =
        PresenceNotice { run: 1, epoch: 3, sliver: 1, available: false, merge: Some(hash) };
    assert_eq!(presence::announce(&c1, &[c0.peer_id()], notice).await, 1);
    let got = loop {
        if let Some(b) = seen.take_handoff(&c1.peer_id(), 1, 3) {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(got, delta);
    assert!(seen.is_away(&c1.peer_id()));
    assert!(seen.take_handoff(&c1.peer_id(), 1, 3).is_none(), "taken once");
    // A notice for another run is ignored; "back" clears "away".
    let other = PresenceNotice { run: 2, available: true, merge: None, ..notice };
    assert_eq!(presence::announce(&c1, &[c0.peer_id()], other).await, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.is_away(&c1.peer_id()));
    let back = PresenceNotice { available: true, merge: None, ..notice };
    assert_eq!(presence::announce(&c1, &[c0.peer_id()], back).await, 1);
    let t = std::time::Instant::now();
    while seen.is_away(&c1.peer_id()) {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bad peer: frames of another epoch, of the wrong shape, a gradient to the last sliver, a
/// frame claiming the wrong sliver, or from a peer the chain did not assign, are refused by the
/// stage's gate before the payload is read, with no receipt; the stage goes on training.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_from_a_bad_peer_are_refused_before_a_receipt() {
    use sliver_p2p::{Direction, FrameHeader, P2pError};

    let data = corpus();
    let ((c0, mut in0, _s0), (c1, in1, _s1)) = connected_pair().await;
    let mut frames1 = in1.frames;
    let last = Stage::new(trainer(1), c1.clone(), data.clone(), stage_config());
    last.set_neighbours(from(c0.peer_id(), Some(0)));
    let mut last = last;
    let cfg = stage_config();
    let send = |from: Client, epoch: u64, sliver: u16, direction: Direction, shape: [usize; 3]| {
        let peer = c1.peer_id();
        async move {
            let n: usize = shape.iter().product();
            let payload = sliver_wire::encode(WireCodec::Bf16, &shape, &vec![0.5f32; n]);
            let h =
                FrameHeader::for_payload(1, epoch, 0, 0, 0, sliver, direction, &payload).unwrap();
            match from.send_frame(peer, &h, &payload).await {
                Err(P2pError::Refused { reason, .. }) => reason,
                other => panic!("accepted: {other:?}"),
            }
        }
    };
    let good = [cfg.batch, cfg.seq, model().d_model];
    assert!(send(c0.clone(), 2, 0, Direction::Activation, good).await.contains("epoch"));
    let wide = [cfg.batch, cfg.seq, 7];
    assert!(send(c0.clone(), 3, 0, Direction::Activation, wide).await.contains("shape"));
    assert!(send(c0.clone(), 3, 0, Direction::Gradient, good).await.contains("gradient"));
    assert!(send(c0.clone(), 3, 5, Direction::Activation, good).await.contains("sliver"));
    // A peer the chain did not assign to the sliver before.
    let (stranger, _sin, _, _ss) = node().await;
    let addr = c1.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    stranger.dial(c1.peer_id(), addr).await.unwrap();
    assert!(send(stranger.clone(), 3, 0, Direction::Activation, good)
        .await
        .contains("not assigned"));
    assert!(frames1.try_recv().is_err(), "nothing reached the stage");
    assert_eq!((last.steps(), last.counters.frames_sent), (0, 0), "nothing trained or sent");

    // The honest first sliver still trains with it.
    let server = tokio::spawn(async move {
        while let Some(frame) = frames1.recv().await {
            if last.handle(frame, None).await.unwrap().is_some() {
                return last;
            }
        }
        panic!("the network stopped");
    });
    let (_epoch_tx, mut epoch) = watch::channel(3u64);
    let mut first = Stage::new(trainer(0), c0.clone(), data, stage_config());
    let r = first.first_step(c1.peer_id(), &mut in0.frames, &mut epoch).await.unwrap();
    assert_eq!((r.completed, r.dropped), (2, 0));
    assert_eq!(server.await.unwrap().steps(), 1);
}

/// Three slivers: a middle sliver relays activations forward and gradients back; when the
/// last-sliver miner it sends to is gone, the micro-batch is dropped and counted, the stage
/// names the unreachable miner, and with another one training goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middle_sliver_relays_both_ways_and_routes_around_a_dead_next_miner() {
    let data = corpus();
    let cfg = model().with_n_layer(3);
    let trainer3 = |index: usize| {
        let spec = SliverSpec::split(cfg.n_layer, 3).unwrap().remove(index);
        SliverTrainer::new(
            &cfg,
            spec,
            None,
            AdamWConfig::default(),
            &sliver_engine::default_device(),
        )
        .unwrap()
    };
    let (c0, mut in0, _, _s0) = node().await;
    let (c1, in1, a1, _s1) = node().await;
    let (c2, in2, a2, _s2) = node().await;
    let (c3, in3, a3, _s3) = node().await;
    c0.dial(c1.peer_id(), a1).await.unwrap();
    c1.dial(c2.peer_id(), a2).await.unwrap();
    c1.dial(c3.peer_id(), a3).await.unwrap();
    // Each last-sliver miner serves until the test ends; its optimiser steps are counted.
    let serve_last = |stage: Stage, mut frames: tokio::sync::mpsc::Receiver<_>| {
        let steps = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = steps.clone();
        tokio::spawn(async move {
            let mut stage = stage;
            while let Some(frame) = frames.recv().await {
                if stage.handle(frame, None).await.is_err() {
                    break;
                }
                counted.store(stage.steps(), std::sync::atomic::Ordering::Relaxed);
            }
        });
        steps
    };
    let last_stage = |c: &Client| {
        let s = Stage::new(trainer3(2), c.clone(), data.clone(), stage_config());
        s.set_neighbours(from(c1.peer_id(), None));
        s
    };
    let _last_a = serve_last(last_stage(&c2), in2.frames);
    let last_b = serve_last(last_stage(&c3), in3.frames);
    let (c2_id, c3_id) = (c2.peer_id(), c3.peer_id());
    let mut middle = Stage::new(trainer3(1), c1.clone(), data.clone(), stage_config());
    middle.set_neighbours(from(c0.peer_id(), Some(0)));
    let mut frames1 = in1.frames;
    let (stop_tx, mut stop) = watch::channel(false);
    let relay = tokio::spawn(async move {
        let mut next = c2_id;
        let mut rerouted = None;
        loop {
            let frame = tokio::select! {
                f = frames1.recv() => f.unwrap(),
                _ = stop.changed() => break,
            };
            middle.handle(frame, Some(next)).await.unwrap();
            if let Some(gone) = middle.take_unreachable() {
                rerouted = Some(gone);
                next = c3_id;
            }
        }
        (middle.steps(), rerouted)
    });

    let (_epoch_tx, mut epoch) = watch::channel(3u64);
    let mut first = Stage::new(trainer3(0), c0.clone(), data, stage_config());
    for _ in 0..4 {
        let r = first.first_step(c1.peer_id(), &mut in0.frames, &mut epoch).await.unwrap();
        assert_eq!((r.completed, r.dropped), (2, 0), "through the middle and back: {r:?}");
    }
    // Last-sliver miner A goes away: the step in flight loses its micro-batches (counted), the
    // middle sliver moves to B, and the following steps complete again.
    c2.shutdown().await;
    let r = first.first_step(c1.peer_id(), &mut in0.frames, &mut epoch).await.unwrap();
    assert!(r.dropped >= 1, "{r:?}");
    let mut full = 0;
    for _ in 0..6 {
        let r = first.first_step(c1.peer_id(), &mut in0.frames, &mut epoch).await.unwrap();
        full += u64::from(r.completed == 2);
    }
    assert!(full >= 5, "training goes on through B: {full} full steps of 6");
    stop_tx.send_replace(true);
    let (steps, rerouted) = relay.await.unwrap();
    assert_eq!(rerouted, Some(c2_id), "the middle named the miner it could not reach");
    assert!(steps >= 8);
    assert!(last_b.load(std::sync::atomic::Ordering::Relaxed) >= 5, "B trained the last sliver");
}
