//! `sliver-miner run`: joins the chain's training run, trains the assigned sliver with its
//! neighbours, merges with its replicas at every epoch boundary and publishes the weight
//! commitment on chain.
//!
//! Tasks: a chain follower (epoch, phase, assignment, registered peers; reconnects when the
//! node goes away), the P2P node, a status line and a Prometheus endpoint, and the training
//! loop, which owns the stage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use sliver_chain::{ChainClient, Phase, RunInfo};
use sliver_engine::checkpoint::{self, CheckpointInfo};
use sliver_engine::data::{ByteTokenizer, Dataset, Source};
use sliver_engine::merge::{self as engine_merge, Flat, OuterOptimizer};
use sliver_engine::optim::{AdamWConfig, LrSchedule};
use sliver_engine::{GptConfig, SliverSpec, SliverTrainer};
use sliver_p2p::{Client, ControlRequest, Multiaddr, NetworkConfig, NodeStatus, PeerId};
use sliver_wire::WireCodec;
use tokio::sync::watch;

use crate::availability::{load_average, Schedule};
use crate::config::MinerConfig;
use crate::merge::{decode_flat, encode_flat, fetch_named};
use crate::stage::{Stage, StageConfig};

/// Options of one `run` beyond the configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop after this many epoch boundaries (tests, scripted runs); `None`: run until killed.
    pub epochs: Option<u64>,
}

/// What the chain says, as the training loop needs it.
#[derive(Clone, Debug, Default)]
struct View {
    epoch: u64,
    phase: Option<Phase>,
    /// This miner's sliver in the current epoch.
    sliver: Option<u16>,
    /// Registered miners of every sliver, by uid order.
    slivers: BTreeMap<u16, Vec<(u16, PeerId, Vec<Multiaddr>)>>,
}

/// Live figures for the status line and the metrics endpoint.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Chain epoch.
    pub epoch: u64,
    /// Assigned sliver.
    pub sliver: Option<u16>,
    /// Optimiser steps.
    pub steps: u64,
    /// Tokens trained.
    pub tokens: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Micro-batches dropped.
    pub dropped: u64,
    /// Latest loss (last sliver).
    pub loss: Option<f32>,
    /// Merges done.
    pub merges: u64,
    /// Weight commitments published on chain.
    pub commitments: u64,
    /// The next sliver's miner in use and its round trip.
    pub next: Option<(PeerId, Duration)>,
    /// Connected peers.
    pub peers: usize,
    /// Seconds spent training.
    pub trained_secs: u64,
}

/// Runs the miner until it fails or `opts.epochs` boundaries have passed.
pub async fn run(cfg: MinerConfig, opts: RunOptions) -> anyhow::Result<()> {
    let schedule = Schedule::parse(&cfg.availability).map_err(|e| anyhow!("availability: {e}"))?;
    let account =
        crate::keys::load_account(cfg.account.as_deref(), &cfg.data_dir).map_err(|e| anyhow!(e))?;
    let who = sliver_chain::account_of(&account);
    let chain = ChainClient::connect_with_retry(&cfg.rpc_url, Duration::from_secs(20)).await?;
    let uid = chain.uid_of(&who).await?.ok_or_else(|| {
        anyhow!(
            "account {who} is not registered on {}: run `sliver-miner register` first \
             (it needs a funded account for the deposit)",
            cfg.rpc_url
        )
    })?;
    let run = chain.training_run().await?.ok_or_else(|| {
        anyhow!("the chain at {} has no active training run; nothing to train", cfg.rpc_url)
    })?;
    let model = model_of(&run)?;
    let data = Arc::new(load_data(&cfg, &run)?);
    let codec = cfg.wire_codec().map_err(|e| anyhow!(e))?;
    let device = sliver_engine::device_by_name(&cfg.device)?;

    // The P2P node, with the key the registry knows.
    let key = crate::keys::node_key(&cfg.data_dir).map_err(|e| anyhow!(e))?;
    let me = chain.participants().await?.into_iter().find(|p| p.uid == uid);
    let ours = sliver_p2p::keys::ed25519_public(&key)?;
    if me.as_ref().is_some_and(|p| p.peer_key != ours) {
        bail!(
            "uid {uid} is registered with another node key than {}/node.key; deregister and \
             register again from this data directory",
            cfg.data_dir.display()
        );
    }
    let (status_tx, status_rx) =
        watch::channel(NodeStatus { run: run.id as u64, ..Default::default() });
    let net = NetworkConfig { mdns: cfg.mdns, ..NetworkConfig::default() };
    let (client, mut inbound) = sliver_p2p::start(key.clone(), net, status_rx)?;
    let listen: Multiaddr =
        cfg.listen.parse().with_context(|| format!("bad listen address {}", cfg.listen))?;
    let bound = client.listen(listen).await?;
    let port = bound.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Tcp(p) => Some(p),
        _ => None,
    });
    tracing::info!(peer = %client.peer_id(), %bound, "P2P node listening");
    if let Some(relay) = &cfg.relay {
        let addr: Multiaddr =
            relay.parse().with_context(|| format!("bad relay address {relay}"))?;
        let Some(libp2p::multiaddr::Protocol::P2p(relay_id)) = addr.iter().last() else {
            bail!("the relay address {relay} must end in /p2p/<peer id>");
        };
        let base: Multiaddr =
            addr.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect();
        let circuit = client.listen_via_relay(relay_id, base).await?;
        tracing::info!(%circuit, "listening through the relay");
    }
    // Audits: no record store yet; every audit is answered "not kept" (see docs/miner.md).
    tokio::spawn(async move {
        while let Some(q) = inbound.audits.recv().await {
            q.respond(None).await;
        }
    });

    let metrics = Arc::new(Mutex::new(Metrics::default()));
    let (view_tx, mut view_rx) = watch::channel(View::default());
    tokio::spawn(follow_chain(cfg.rpc_url.clone(), uid, view_tx));
    if cfg.metrics_port != 0 {
        tokio::spawn(serve_metrics(cfg.metrics_port, metrics.clone(), uid));
    }
    tokio::spawn(status_line(metrics.clone(), client.clone(), uid, cfg.status_interval_secs, port));

    // Wait for the first view with an assignment.
    let sliver = loop {
        if let Some(s) = view_rx.borrow().sliver {
            break s;
        }
        tracing::info!(
            uid,
            "waiting for a sliver assignment (assignments change at epoch boundaries)"
        );
        if tokio::time::timeout(Duration::from_secs(30), view_rx.changed()).await.is_err() {
            tracing::warn!("no assignment yet after 30 s; still waiting");
        }
    };
    let view = view_rx.borrow().clone();
    let specs = SliverSpec::split(model.n_layer, run.num_slivers as usize)?;
    let spec = specs
        .get(sliver as usize)
        .cloned()
        .ok_or_else(|| anyhow!("sliver {sliver} out of range"))?;
    let hyper = &run.hyper;
    let adamw = AdamWConfig {
        weight_decay: hyper.weight_decay_micro as f64 / 1e6,
        ..AdamWConfig::default()
    };
    let mut trainer = SliverTrainer::new(&model, spec.clone(), None, adamw, &device)?;
    let ckpt_path = checkpoint_path(&cfg.data_dir, run.id, sliver);
    if ckpt_path.is_file() {
        match checkpoint::read(&ckpt_path) {
            Ok((info, flat)) if info.spec == spec && info.config == model => {
                engine_merge::import_flat(&mut trainer.sliver, &flat)?;
                tracing::info!(path = %ckpt_path.display(), "resumed from the local checkpoint");
            }
            Ok(_) => {
                tracing::warn!(path = %ckpt_path.display(), "checkpoint is for another model or sliver; starting fresh")
            }
            Err(e) => tracing::warn!(error = %e, "checkpoint unreadable; starting fresh"),
        }
    }
    let micro_batches = hyper.micro_batches.max(1) as u64;
    let stage_cfg = StageConfig {
        run: run.id as u64,
        epoch: view.epoch,
        route: 0,
        micro_batches,
        batch: (hyper.batch_size as usize / micro_batches as usize).max(1),
        seq: model.block_size,
        codec,
        lr: LrSchedule {
            max_lr: hyper.learning_rate_micro as f64 / 1e6,
            min_lr: hyper.min_learning_rate_micro as f64 / 1e6,
            warmup_steps: hyper.warmup_steps as u64,
            decay_steps: 5000,
        },
        clip: hyper.grad_clip_micro as f64 / 1e6,
        grad_timeout: Duration::from_secs(cfg.grad_timeout_secs.max(1)),
    };
    let mut stage = Stage::new(trainer, client.clone(), data, stage_cfg);
    let mut start = engine_merge::export_flat(&mut stage.trainer.sliver);
    let mut outer = OuterOptimizer::new(
        hyper.outer_lr_micro as f32 / 1e6,
        hyper.outer_momentum_micro as f32 / 1e6,
    );
    let info = CheckpointInfo { config: model.clone(), spec: spec.clone(), bottleneck: None };
    let mut epoch = view.epoch;
    let mut boundaries = 0u64;
    let mut merged_steps = stage.steps();
    let mut next: Option<(PeerId, Duration)> = None;
    let mut excluded: Vec<PeerId> = Vec::new();
    tracing::info!(uid, sliver, of = run.num_slivers, epoch, "training");

    loop {
        let view = view_rx.borrow().clone();
        status_tx.send_modify(|s| {
            s.epoch = view.epoch;
            s.slivers = vec![sliver];
        });
        connect_neighbours(&client, &view, sliver).await;
        if view.epoch != epoch {
            // Epoch boundary: merge with the replicas, commit the weights, move on.
            let replicas: Vec<PeerId> = view
                .slivers
                .get(&sliver)
                .into_iter()
                .flatten()
                .filter(|(u, _, _)| *u != uid)
                .map(|(_, p, _)| *p)
                .collect();
            if stage.steps() > merged_steps {
                match merge_round(
                    &mut stage, &client, &status_tx, &replicas, epoch, &mut start, &mut outer,
                )
                .await
                {
                    Ok((hash, size, with)) => {
                        merged_steps = stage.steps();
                        tracing::info!(epoch, replicas = with, size, "merged");
                        if let Err(e) =
                            checkpoint::save_sliver(&mut stage.trainer.sliver, &info, &ckpt_path)
                        {
                            tracing::warn!(error = %e, "could not save the local checkpoint");
                        }
                        match chain
                            .publish_weight_commitment(&account, hash, size, stage.steps())
                            .await
                        {
                            Ok(_) => metrics.lock().map(|mut m| m.commitments += 1).unwrap_or(()),
                            Err(e) => tracing::warn!(error = %e, "weight commitment not published"),
                        }
                        if let Ok(mut m) = metrics.lock() {
                            m.merges += 1;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "merge failed; continuing from local weights")
                    }
                }
            }
            epoch = view.epoch;
            stage.set_epoch(epoch);
            next = None;
            excluded.clear();
            boundaries += 1;
            if opts.epochs.is_some_and(|n| boundaries >= n) {
                tracing::info!(boundaries, "done");
                client.shutdown().await;
                return Ok(());
            }
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if !schedule.allows(now.as_secs(), load_average()) {
            status_tx.send_modify(|s| s.slivers.clear());
            tracing::info!("outside the availability windows: not training");
            tokio::time::sleep(Duration::from_secs(10)).await;
            continue;
        }
        let began = Instant::now();
        let report = if spec.is_first() {
            let route = view
                .slivers
                .get(&sliver)
                .and_then(|v| v.iter().position(|(u, _, _)| *u == uid))
                .unwrap_or(0) as u64;
            stage.set_route(route);
            if next.is_none() {
                next = pick_next(&client, &view, sliver + 1, &excluded).await;
            }
            let Some((peer, _)) = next else {
                tracing::warn!(sliver = sliver + 1, "no live miner of the next sliver; waiting");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            };
            let r = stage.first_step(peer, &mut inbound.frames).await?;
            if r.dropped > 0 {
                tracing::warn!(%peer, dropped = r.dropped, "micro-batches dropped; re-routing");
                excluded.push(peer);
                next = None;
            }
            Some(r)
        } else {
            let following = if spec.is_last() {
                None
            } else {
                if next.is_none() {
                    next = pick_next(&client, &view, sliver + 1, &excluded).await;
                }
                next.map(|(p, _)| p)
            };
            match tokio::time::timeout(Duration::from_secs(1), inbound.frames.recv()).await {
                Ok(Some(frame)) => stage.handle(frame, following).await?,
                Ok(None) => bail!("the P2P node stopped"),
                Err(_) => None,
            }
        };
        if let Ok(mut m) = metrics.lock() {
            m.epoch = epoch;
            m.sliver = Some(sliver);
            m.steps = stage.steps();
            m.tokens = stage.counters.tokens;
            m.bytes_sent = stage.counters.bytes_sent;
            m.dropped = stage.counters.dropped;
            m.next = next;
            m.trained_secs += began.elapsed().as_secs();
            if let Some(l) = report.as_ref().and_then(|r| r.loss) {
                m.loss = Some(l);
            }
        }
    }
}

async fn merge_round(
    stage: &mut Stage,
    client: &Client,
    status: &watch::Sender<NodeStatus>,
    replicas: &[PeerId],
    epoch: u64,
    start: &mut Flat,
    outer: &mut OuterOptimizer,
) -> anyhow::Result<([u8; 32], u64, usize)> {
    let current = engine_merge::export_flat(&mut stage.trainer.sliver);
    let delta = engine_merge::pseudo_gradient(start, &current);
    let bytes = encode_flat(&delta, WireCodec::Bf16);
    let own = decode_flat(&bytes, &delta).map_err(|e| anyhow!(e))?;
    let name = format!("merge/{epoch}");
    let hash = client.publish_blob(bytes)?;
    status.send_modify(|s| {
        s.published.insert(name.clone(), hash);
        // Keep the last two rounds published for slow replicas.
        let old: Vec<String> = s
            .published
            .keys()
            .filter(|k| {
                k.starts_with("merge/") && **k < format!("merge/{}", epoch.saturating_sub(1))
            })
            .cloned()
            .collect();
        for k in old {
            if let Some(h) = s.published.remove(&k) {
                client.unpublish_blob(&h);
            }
        }
    });
    let mut deltas = vec![own];
    for r in replicas {
        match fetch_named(client, *r, &name, &delta, Duration::from_secs(8)).await {
            Ok(d) => deltas.push(d),
            Err(e) => tracing::warn!(peer = %r, error = %e, "replica left out of this merge"),
        }
    }
    let with = deltas.len() - 1;
    let avg = engine_merge::average(&deltas);
    outer.step(start, &avg);
    engine_merge::import_flat(&mut stage.trainer.sliver, start)?;
    let weights = encode_flat(start, WireCodec::F32);
    let size = weights.len() as u64;
    let whash = client.publish_blob(weights)?;
    status.send_modify(|s| {
        if let Some(old) = s.published.insert("weights".into(), whash) {
            if old != whash {
                client.unpublish_blob(&old);
            }
        }
    });
    Ok((whash, size, with))
}

/// Dials the registered miners of the neighbouring slivers and of this sliver.
async fn connect_neighbours(client: &Client, view: &View, sliver: u16) {
    let me = client.peer_id();
    for s in [sliver.checked_sub(1), Some(sliver), Some(sliver + 1)].into_iter().flatten() {
        for (_, peer, addrs) in view.slivers.get(&s).into_iter().flatten() {
            if *peer == me {
                continue;
            }
            for a in addrs {
                if client.dial(*peer, a.clone()).await.is_ok() {
                    break;
                }
            }
        }
    }
}

/// The miner of `sliver` with the lowest measured round trip, skipping `excluded`.
async fn pick_next(
    client: &Client,
    view: &View,
    sliver: u16,
    excluded: &[PeerId],
) -> Option<(PeerId, Duration)> {
    let mut best: Option<(PeerId, Duration)> = None;
    for (_, peer, _) in view.slivers.get(&sliver).into_iter().flatten() {
        if excluded.contains(peer) {
            continue;
        }
        let t = Instant::now();
        let ping = client.request(*peer, ControlRequest::Ping { nonce: 1 });
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), ping).await {
            let rtt = t.elapsed();
            if best.is_none_or(|(_, b)| rtt < b) {
                best = Some((*peer, rtt));
            }
        }
    }
    best
}

/// Follows the chain: epoch and phase every second, assignments and registrations at each
/// epoch change (and every 10 s). Reconnects when the node goes away.
async fn follow_chain(url: String, uid: u16, view: watch::Sender<View>) {
    let mut chain: Option<ChainClient> = None;
    let mut last_full = Instant::now() - Duration::from_secs(60);
    loop {
        let client = match &chain {
            Some(c) => c.clone(),
            None => match ChainClient::connect(&url).await {
                Ok(c) => {
                    tracing::info!(%url, "connected to the chain");
                    chain = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::warn!(error = %e, "chain connection lost; retrying in 2 s");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            },
        };
        match read_view(&client, uid, &view, &mut last_full).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "chain read failed; reconnecting");
                chain = None;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn read_view(
    client: &ChainClient,
    uid: u16,
    view: &watch::Sender<View>,
    last_full: &mut Instant,
) -> anyhow::Result<()> {
    let (info, _) = client.epoch_info().await?;
    let epoch = info.epoch as u64;
    let changed = view.borrow().epoch != epoch || view.borrow().phase.is_none();
    if changed || last_full.elapsed() > Duration::from_secs(10) {
        let assignments = client.assignments().await?;
        let participants = client.participants().await?;
        let mut slivers: BTreeMap<u16, Vec<(u16, PeerId, Vec<Multiaddr>)>> = BTreeMap::new();
        for (u, s) in &assignments {
            let Some(p) = participants.iter().find(|p| p.uid == *u) else { continue };
            let Ok(pk) = libp2p::identity::ed25519::PublicKey::try_from_bytes(&p.peer_key) else {
                continue;
            };
            let peer = libp2p::identity::PublicKey::from(pk).to_peer_id();
            let addrs = p.addresses.iter().filter_map(|a| a.parse().ok()).collect();
            slivers.entry(*s).or_default().push((*u, peer, addrs));
        }
        let sliver = assignments.iter().find(|(u, _)| *u == uid).map(|(_, s)| *s);
        view.send_replace(View { epoch, phase: Some(info.phase), sliver, slivers });
        *last_full = Instant::now();
    } else {
        view.send_modify(|v| v.phase = Some(info.phase));
    }
    Ok(())
}

fn model_of(run: &RunInfo) -> anyhow::Result<GptConfig> {
    let m = &run.model;
    let cfg = GptConfig::new()
        .with_vocab_size(m.vocab_size as usize)
        .with_n_layer(m.n_layers as usize)
        .with_n_head(m.n_heads as usize)
        .with_d_model(m.d_model as usize)
        .with_block_size(m.context_len as usize)
        // Embeddings are untied across machines (see stage.rs).
        .with_tie_embeddings(false);
    cfg.validate()?;
    Ok(cfg)
}

fn load_data(cfg: &MinerConfig, run: &RunInfo) -> anyhow::Result<Dataset> {
    let path = cfg.data.as_ref().ok_or_else(|| {
        anyhow!(
            "dataset missing: the run trains on {:?}; pass --data PATH (a text file, a directory \
             of .txt files, or JSON Lines) holding it",
            run.dataset_id
        )
    })?;
    if !path.exists() {
        bail!(
            "dataset missing: {} does not exist (the run trains on {:?})",
            path.display(),
            run.dataset_id
        );
    }
    if run.model.vocab_size != 256 {
        bail!(
            "the run's vocabulary has {} tokens; this miner tokenizes bytes (256)",
            run.model.vocab_size
        );
    }
    Ok(Dataset::load(&Source::detect(path), &ByteTokenizer, 0.9)?)
}

/// Where the sliver's local checkpoint lives.
pub fn checkpoint_path(data_dir: &std::path::Path, run: u32, sliver: u16) -> PathBuf {
    data_dir.join(format!("run-{run}")).join(format!("sliver-{sliver}.safetensors"))
}

async fn status_line(
    metrics: Arc<Mutex<Metrics>>,
    client: Client,
    uid: u16,
    every: u64,
    port: Option<u16>,
) {
    let mut last_tokens = 0u64;
    let every = Duration::from_secs(every.max(1));
    let mut said_reachability = false;
    loop {
        tokio::time::sleep(every).await;
        let peers = client.connected_peers().await.map(|v| v.len()).unwrap_or(0);
        if !said_reachability && peers > 0 {
            let r = client.wait_reachability(Duration::from_secs(1)).await;
            if r != sliver_p2p::Reachability::Unknown {
                tracing::info!("reachability: {}", r.advice(port));
                said_reachability = true;
            }
        }
        let Ok(mut m) = metrics.lock() else { return };
        m.peers = peers;
        let rate = (m.tokens - last_tokens.min(m.tokens)) as f64 / every.as_secs_f64();
        last_tokens = m.tokens;
        let next = m
            .next
            .map(|(p, rtt)| format!("{} ({} ms)", short(&p), rtt.as_millis()))
            .unwrap_or_else(|| "-".into());
        let loss = m.loss.map(|l| format!("{l:.3}")).unwrap_or_else(|| "-".into());
        eprintln!(
            "[miner uid {uid}] epoch {} | sliver {} | step {} | {rate:.0} tok/s | loss {loss} | next {next} | peers {peers} | sent {:.1} MB | dropped {} | merges {} | commitments {}",
            m.epoch,
            m.sliver.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            m.steps,
            m.bytes_sent as f64 / 1e6,
            m.dropped,
            m.merges,
            m.commitments,
        );
    }
}

fn short(p: &PeerId) -> String {
    let s = p.to_string();
    format!("..{}", &s[s.len().saturating_sub(6)..])
}

/// Serves the metrics in Prometheus' text format on 127.0.0.1:`port`.
async fn serve_metrics(port: u16, metrics: Arc<Mutex<Metrics>>, uid: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(port, error = %e, "metrics endpoint off: cannot bind");
            return;
        }
    };
    loop {
        let Ok((mut s, _)) = listener.accept().await else { continue };
        let body = {
            let Ok(m) = metrics.lock() else { return };
            let mut b = String::new();
            for (name, help, v) in [
                ("sliver_miner_epoch", "chain epoch", m.epoch as f64),
                ("sliver_miner_steps_total", "optimiser steps", m.steps as f64),
                ("sliver_miner_tokens_total", "tokens trained", m.tokens as f64),
                ("sliver_miner_bytes_sent_total", "payload bytes sent", m.bytes_sent as f64),
                ("sliver_miner_dropped_total", "micro-batches dropped", m.dropped as f64),
                ("sliver_miner_merges_total", "merges with replicas", m.merges as f64),
                (
                    "sliver_miner_commitments_total",
                    "weight commitments on chain",
                    m.commitments as f64,
                ),
                ("sliver_miner_peers", "connected peers", m.peers as f64),
                (
                    "sliver_miner_loss",
                    "latest loss (last sliver)",
                    m.loss.map(f64::from).unwrap_or(f64::NAN),
                ),
            ] {
                b.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{uid=\"{uid}\"}} {v}\n"
                ));
            }
            b
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}
