//! Two miners, one per sliver, train a small GPT over real libp2p connections on loopback with
//! real Burn: the loss the last sliver computes falls, and a neighbour that disappears costs
//! dropped micro-batches, not a hang.

use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use sliver_engine::data::{ByteTokenizer, Dataset};
use sliver_engine::optim::{AdamWConfig, LrSchedule};
use sliver_engine::{GptConfig, SliverSpec, SliverTrainer};
use sliver_miner::stage::{Stage, StageConfig};
use sliver_p2p::{start, Client, Inbound, NetworkConfig, NodeStatus};
use sliver_wire::WireCodec;
use tokio::sync::watch;

fn corpus() -> Arc<Dataset> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/tinyshakespeare.txt");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|_| "To be, or not to be, that is the question. ".repeat(2000));
    Arc::new(Dataset::from_text(&text[..text.len().min(200_000)], &ByteTokenizer, 0.9).unwrap())
}

fn model() -> GptConfig {
    GptConfig::new()
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(32)
        .with_block_size(16)
        .with_tie_embeddings(false)
}

fn stage_config() -> StageConfig {
    StageConfig {
        run: 1,
        epoch: 3,
        route: 0,
        micro_batches: 2,
        batch: 4,
        seq: 16,
        codec: WireCodec::Bf16,
        lr: LrSchedule { max_lr: 3e-3, min_lr: 3e-4, warmup_steps: 5, decay_steps: 200 },
        clip: 1.0,
        grad_timeout: Duration::from_secs(3),
    }
}

async fn node() -> (Client, Inbound, libp2p::Multiaddr, watch::Sender<NodeStatus>) {
    let (status, rx) = watch::channel(NodeStatus::default());
    let (client, inbound) =
        start(Keypair::generate_ed25519(), NetworkConfig::default(), rx).unwrap();
    let addr = client.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    (client, inbound, addr, status)
}

type Node = (Client, Inbound, watch::Sender<NodeStatus>);

/// Two nodes on loopback, the first connected to the second.
async fn connected_pair() -> (Node, Node) {
    let (c0, in0, _, s0) = node().await;
    let (c1, in1, a1, s1) = node().await;
    c0.dial(c1.peer_id(), a1).await.unwrap();
    ((c0, in0, s0), (c1, in1, s1))
}

fn trainer(index: usize) -> SliverTrainer {
    let cfg = model();
    let spec = SliverSpec::split(cfg.n_layer, 2).unwrap().remove(index);
    SliverTrainer::new(&cfg, spec, None, AdamWConfig::default(), &sliver_engine::default_device())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_miners_train_across_the_network_and_the_loss_falls() {
    let data = corpus();
    let ((c0, mut in0, _s0), (c1, mut in1, _s1)) = connected_pair().await;

    let mut last = Stage::new(trainer(1), c1.clone(), data.clone(), stage_config());
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
