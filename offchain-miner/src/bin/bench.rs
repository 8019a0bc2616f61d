//! `sliver-miner-bench`: the networked pipeline against monolithic training of the same model,
//! in one process on this machine, each for the same wall time, with a table of tokens per
//! second, the ratio to the monolithic baseline and the bytes sent per token.
//!
//! - **monolithic**: the engine's in-process model, one sliver (the baseline).
//! - **1 pipeline**: a sliver-0 stage and a sliver-1 stage, each with its own libp2p node on
//!   loopback, activations and gradients as bf16 frames with signed receipts.
//! - **2 pipelines (4 miners)**: two such pipelines at once, as the 4-miner dev network trains
//!   (two first-sliver miners, two last-sliver miners).
//!
//! The model and batch are the dev chain's run: 4 layers, 4 heads, 128 wide, context 64,
//! byte vocabulary, 12 rows per step in 3 micro-batches. Merges and the chain are not part of
//! it (they happen once per epoch). Run with `./scripts/bench-miner.sh`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use libp2p::identity::Keypair;
use sliver_engine::data::{BatchKey, ByteTokenizer, Dataset, Source, Split};
use sliver_engine::optim::{AdamWConfig, LrSchedule};
use sliver_engine::pipeline::{Boundary, Pipeline};
use sliver_engine::{GptConfig, SliverSpec, SliverTrainer};
use sliver_miner::audit::AuditLog;
use sliver_miner::gate::Neighbours;
use sliver_miner::stage::{Stage, StageConfig};
use sliver_p2p::{start, NetworkConfig, NodeStatus};
use sliver_wire::WireCodec;
use tokio::sync::watch;

const MICRO_BATCHES: u64 = 3;
const ROWS: usize = 4;
const SEQ: usize = 64;

fn model() -> GptConfig {
    GptConfig::new()
        .with_n_layer(4)
        .with_n_head(4)
        .with_d_model(128)
        .with_block_size(SEQ)
        .with_tie_embeddings(false)
}

fn adamw() -> AdamWConfig {
    AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() }
}

fn schedule() -> LrSchedule {
    LrSchedule { max_lr: 1e-3, min_lr: 1e-4, warmup_steps: 100, decay_steps: 2000 }
}

/// Keeps freed tensor buffers for reuse across training steps (see `sliver_engine::alloc`).
#[global_allocator]
static GLOBAL: sliver_engine::alloc::TrainingAllocator = sliver_engine::alloc::TrainingAllocator;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    sliver_engine::alloc::keep_freed_memory();
    let mut args = std::env::args().skip(1);
    let (mut data, mut secs) = (None, 20u64);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data" => data = args.next().map(PathBuf::from),
            "--secs" => secs = args.next().and_then(|s| s.parse().ok()).context("--secs N")?,
            other => anyhow::bail!("unknown argument {other}: use --data PATH --secs N"),
        }
    }
    let data = data.context("--data PATH (a text file) is required")?;
    let data = Arc::new(Dataset::load(&Source::detect(&data), &ByteTokenizer, 0.9)?);
    let budget = Duration::from_secs(secs);
    println!("## The network against the monolithic model ({secs} s each, dev run's model, 12 rows x 64 tokens per step in 3 micro-batches, bf16 frames)");
    println!("| setup | steps | tokens/s | vs monolithic | bytes sent per token |");
    println!("|---|---|---|---|---|");

    let (steps, tokens, elapsed) = monolithic(&data, budget)?;
    let base = tokens as f64 / elapsed;
    println!("| monolithic (1 sliver, in process) | {steps} | {base:.0} | 1.000 | 0 |");
    let cases = [
        ("1 pipeline (2 miners)", 1, false),
        ("2 pipelines (4 miners)", 2, false),
        ("2 pipelines (4 miners), audit logs on", 2, true),
    ];
    let mut audited = None;
    for (name, pipelines, audit) in cases {
        let r = network(&data, pipelines, budget, audit).await?;
        let tps = r.tokens as f64 / r.elapsed;
        println!(
            "| {name} | {} | {tps:.0} | {:.3} | {:.1} |",
            r.steps,
            tps / base,
            r.bytes as f64 / r.tokens.max(1) as f64
        );
        if audit {
            audited = Some(r);
        }
    }
    if let Some(r) = audited {
        println!(
            "\naudit logs: {:.1} MB written in {:.0} s, {:.2} MB per optimiser step of a pipeline (both slivers: weights snapshots and frames)",
            r.audit_bytes as f64 / 1e6,
            r.elapsed,
            r.audit_bytes as f64 / 1e6 / r.steps.max(1) as f64
        );
    }
    Ok(())
}

fn batches(
    data: &Dataset,
    route: u64,
    step: u64,
) -> anyhow::Result<Vec<sliver_engine::pipeline::MicroBatch>> {
    (0..MICRO_BATCHES)
        .map(|index| {
            let key = BatchKey { run: 0, epoch: 0, replica: route, step, index };
            Ok(data.micro_batch(Split::Train, key, ROWS, SEQ)?)
        })
        .collect()
}

fn monolithic(data: &Dataset, budget: Duration) -> anyhow::Result<(u64, u64, f64)> {
    let device = sliver_engine::default_device();
    let mut p = Pipeline::new(&model(), 1, Boundary::default(), adamw(), &device)?;
    p.train_step(&batches(data, 0, 0)?, 1e-3, 1.0)?;
    let t0 = Instant::now();
    let (mut steps, mut tokens) = (0u64, 0u64);
    while t0.elapsed() < budget {
        let st = p.train_step(&batches(data, 0, steps + 1)?, schedule().at(steps), 1.0)?;
        tokens += st.tokens;
        steps += 1;
    }
    Ok((steps, tokens, t0.elapsed().as_secs_f64()))
}

struct NetResult {
    steps: u64,
    audit_bytes: u64,
    tokens: u64,
    bytes: u64,
    elapsed: f64,
}

fn stage_config(route: u64) -> StageConfig {
    StageConfig {
        run: 0,
        epoch: 0,
        route,
        micro_batches: MICRO_BATCHES,
        batch: ROWS,
        seq: SEQ,
        codec: WireCodec::Bf16,
        lr: schedule(),
        clip: 1.0,
        grad_timeout: Duration::from_secs(30),
        audit_every: 8,
    }
}

fn trainer(index: usize) -> anyhow::Result<SliverTrainer> {
    let cfg = model();
    let spec = SliverSpec::split(cfg.n_layer, 2)?.remove(index);
    Ok(SliverTrainer::new(&cfg, spec, None, adamw(), &sliver_engine::default_device())?)
}

async fn network(
    data: &Arc<Dataset>,
    pipelines: u64,
    budget: Duration,
    audit: bool,
) -> anyhow::Result<NetResult> {
    let dir = std::env::temp_dir().join(format!("sliver-miner-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut logs = Vec::new();
    let mut log = |name: String| -> anyhow::Result<Option<AuditLog>> {
        if !audit {
            return Ok(None);
        }
        let l = AuditLog::open(&dir.join(name), 0, u64::MAX)?;
        logs.push(l.clone());
        Ok(Some(l))
    };
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    let mut keep = Vec::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    for route in 0..pipelines {
        let (s0, r0) = watch::channel(NodeStatus::default());
        let (s1, r1) = watch::channel(NodeStatus::default());
        let (c0, in0) = start(Keypair::generate_ed25519(), NetworkConfig::default(), r0)?;
        let (c1, in1) = start(Keypair::generate_ed25519(), NetworkConfig::default(), r1)?;
        c0.listen("/ip4/127.0.0.1/tcp/0".parse()?).await?;
        let a1 = c1.listen("/ip4/127.0.0.1/tcp/0".parse()?).await?;
        c0.dial(c1.peer_id(), a1).await?;
        keep.push((s0, s1));
        let mut last = Stage::new(trainer(1)?, c1.clone(), data.clone(), stage_config(route));
        // The chain would assign c0 to the first sliver, on this route.
        last.set_neighbours(Neighbours {
            previous: std::collections::HashMap::from([(c0.peer_id(), Some(route))]),
            routes: pipelines,
        });
        if let Some(l) = log(format!("last-{route}"))? {
            last = last.with_audit(l);
        }
        let mut frames1 = in1.frames;
        let mut stop = stop_rx.clone();
        lasts.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    f = frames1.recv() => {
                        let Some(frame) = f else { break };
                        if last.handle(frame, None).await.is_err() {
                            break;
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
            last.flush(Duration::from_secs(5)).await;
            last.counters
        }));
        let mut first = Stage::new(trainer(0)?, c0.clone(), data.clone(), stage_config(route));
        if let Some(l) = log(format!("first-{route}"))? {
            first = first.with_audit(l);
        }
        firsts.push((first, in0.frames, c1.peer_id(), c0, c1));
    }
    let t0 = Instant::now();
    let drivers: Vec<_> = firsts
        .into_iter()
        .map(|(mut first, mut frames, next, c0, c1)| {
            tokio::spawn(async move {
                let (_tx, mut epoch) = watch::channel(0u64);
                while t0.elapsed() < budget {
                    if first.first_step(next, &mut frames, &mut epoch).await.is_err() {
                        break;
                    }
                }
                (first.steps(), first.counters, c0, c1)
            })
        })
        .collect();
    let mut r = NetResult { steps: 0, audit_bytes: 0, tokens: 0, bytes: 0, elapsed: 0.0 };
    let mut nodes = Vec::new();
    for d in drivers {
        let (steps, c, c0, c1) = d.await?;
        r.steps += steps;
        r.tokens += c.tokens;
        r.bytes += c.bytes_sent;
        nodes.extend([c0, c1]);
    }
    r.elapsed = t0.elapsed().as_secs_f64();
    stop_tx.send_replace(true);
    for l in lasts {
        r.bytes += l.await?.bytes_sent;
    }
    for n in nodes {
        n.shutdown().await;
    }
    r.audit_bytes = logs.iter().map(|l| l.stats().bytes).sum();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(r)
}
