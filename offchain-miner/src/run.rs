//! `sliver-miner run`: joins the chain's training run, trains the assigned sliver with its
//! neighbours, merges with its replicas at every epoch boundary and publishes the weight
//! commitment on chain.
//!
//! Tasks: a chain follower (epoch, phase, assignment, registered peers; reconnects when the
//! node goes away), the P2P node, a status line and a Prometheus endpoint, and the training
//! loop, which owns the stage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use sliver_chain::{ChainClient, ChainError, Phase, RunInfo};
use sliver_engine::checkpoint::{self, CheckpointInfo};
use sliver_engine::data::{ByteTokenizer, Dataset, Source};
use sliver_engine::merge::{self as engine_merge, Flat, OuterOptimizer};
use sliver_engine::optim::{AdamWConfig, LrSchedule};
use sliver_engine::{GptConfig, SliverSpec, SliverTrainer};
use sliver_p2p::{
    Client, ControlRequest, ControlResponse, Multiaddr, NetworkConfig, NodeStatus, PeerId,
    PresenceNotice,
};
use sliver_wire::WireCodec;
use tokio::sync::watch;

use crate::audit::{AuditCounters, AuditLog};
use crate::availability::{load_average, Schedule};
use crate::config::MinerConfig;
use crate::ledger::{slv, Ledger};
use crate::merge::{decode_flat, encode_flat, fetch_named};
use crate::presence::{announce, Presence};
use crate::stage::{Stage, StageConfig, StageError};

/// Options of one `run` beyond the configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop after this many epoch boundaries (tests, scripted runs); `None`: run until killed.
    pub epochs: Option<u64>,
    /// Stop at the boundary into this chain epoch (after merging the epoch before it).
    pub until_epoch: Option<u64>,
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
    /// Its phase.
    pub phase: Option<Phase>,
    /// Whether the miner trains now (inside its window, not paused, assigned).
    pub training: bool,
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
    pub trained_secs: f64,
    /// Earned as a miner, in plancks, over this account's ledger.
    pub earned: u128,
    /// Validators' audits: answered, not kept, pending.
    pub audits: Arc<AuditCounters>,
    /// Mean loss of the first five optimiser steps (last sliver).
    pub first_loss: Option<f32>,
    /// Losses of recent steps (last sliver), at most 100.
    pub recent_losses: std::collections::VecDeque<f32>,
    losses_seen: u32,
    first_sum: f32,
}

impl Metrics {
    fn record_loss(&mut self, loss: f32) {
        self.loss = Some(loss);
        if self.losses_seen < 5 {
            self.first_sum += loss;
            self.losses_seen += 1;
            self.first_loss = Some(self.first_sum / self.losses_seen as f32);
        }
        self.recent_losses.push_back(loss);
        if self.recent_losses.len() > 100 {
            self.recent_losses.pop_front();
        }
    }

    /// Mean loss of the last five optimiser steps (last sliver).
    pub fn last_loss(&self) -> Option<f32> {
        let n = self.recent_losses.len().min(5);
        (n > 0).then(|| self.recent_losses.iter().rev().take(n).sum::<f32>() / n as f32)
    }

    /// One line a script or test can parse.
    pub fn summary(&self, uid: u16) -> String {
        let f = |v: Option<f32>| v.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into());
        format!(
            "SUMMARY uid={uid} sliver={} steps={} tokens={} bytes_sent={} dropped={} merges={} commitments={} first_loss={} last_loss={} trained_secs={:.0}",
            self.sliver.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            self.steps,
            self.tokens,
            self.bytes_sent,
            self.dropped,
            self.merges,
            self.commitments,
            f(self.first_loss),
            f(self.last_loss()),
            self.trained_secs,
        )
    }
}

/// Runs the miner until it fails, `opts.epochs` boundaries have passed, or the chain reaches
/// `opts.until_epoch`.
pub async fn run(cfg: MinerConfig, opts: RunOptions) -> anyhow::Result<()> {
    let schedule = Schedule::parse(&cfg.availability).map_err(|e| anyhow!("availability: {e}"))?;
    let account =
        crate::keys::load_account(cfg.account.as_deref(), &cfg.data_dir).map_err(|e| anyhow!(e))?;
    let who = sliver_chain::account_of(&account);
    let mut chain = ChainClient::connect_with_retry(&cfg.rpc_url, Duration::from_secs(20)).await?;
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
    let metrics = Arc::new(Mutex::new(Metrics::default()));
    let audit = AuditLog::open(
        &cfg.data_dir.join("audit"),
        run.id as u64,
        cfg.audit_disk_mib.saturating_mul(1 << 20),
    )
    .with_context(|| format!("cannot open the audit log under {}", cfg.data_dir.display()))?;
    let ledger_path = Ledger::path(&cfg.data_dir);
    let mut book = Ledger::load(&ledger_path).map_err(|e| anyhow!(e))?;
    book.for_account(&who.to_string());
    book.run(run.id).windows += 1;
    book.save(&ledger_path).map_err(|e| anyhow!(e))?;
    if let Ok(mut m) = metrics.lock() {
        m.earned = book.earned();
    }
    let ledger =
        Arc::new(Mutex::new(LedgerKeeper { book, path: ledger_path, seen: Seen::default() }));
    tokio::spawn(keep_ledger(
        ledger.clone(),
        metrics.clone(),
        cfg.rpc_url.clone(),
        who.clone(),
        run.id,
    ));
    let audits = metrics.lock().map(|m| m.audits.clone()).unwrap_or_default();
    tokio::spawn(crate::audit::serve(
        audit.clone(),
        client.clone(),
        inbound.audits,
        audits.clone(),
    ));
    let (view_tx, mut view_rx) = watch::channel(View::default());
    let (epoch_tx, mut epoch_rx) = watch::channel(0u64);
    tokio::spawn(follow_chain(cfg.rpc_url.clone(), uid, view_tx, epoch_tx));
    let presence = Presence::default();
    let views = view_rx.clone();
    let run_id = run.id as u64;
    let accept = move |peer: &PeerId, n: &PresenceNotice| {
        n.run == run_id && views.borrow().slivers.values().flatten().any(|(_, p, _)| p == peer)
    };
    tokio::spawn(crate::presence::serve(
        presence.clone(),
        client.clone(),
        inbound.notices,
        accept,
        MAX_HANDOFF_BYTES,
    ));
    let pause_file =
        cfg.availability.pause_file.clone().unwrap_or_else(|| cfg.data_dir.join("pause"));
    if cfg.metrics_port != 0 {
        tokio::spawn(serve_metrics(cfg.metrics_port, metrics.clone(), uid));
    }
    tokio::spawn(status_line(metrics.clone(), client.clone(), uid, cfg.status_interval_secs, port));

    // Wait for the first view with an assignment.
    loop {
        if view_rx.borrow().sliver.is_some() {
            break;
        }
        tracing::info!(
            uid,
            "waiting for a sliver assignment (assignments change at epoch boundaries)"
        );
        if tokio::time::timeout(Duration::from_secs(30), view_rx.changed()).await.is_err() {
            tracing::warn!("no assignment yet after 30 s; still waiting");
        }
    }
    let mut view = view_rx.borrow().clone();
    let specs = SliverSpec::split(model.n_layer, run.num_slivers as usize)?;
    let setup = Setup {
        model,
        specs,
        stage_cfg: stage_config(&run, &cfg, codec, view.epoch),
        adamw: AdamWConfig {
            weight_decay: run.hyper.weight_decay_micro as f64 / 1e6,
            ..AdamWConfig::default()
        },
        device,
        data,
        client: client.clone(),
        data_dir: cfg.data_dir.clone(),
        run_id: run.id,
        audit,
        outer: (run.hyper.outer_lr_micro as f32 / 1e6, run.hyper.outer_momentum_micro as f32 / 1e6),
    };
    // Join (or rejoin after a restart) from the weights the sliver's miners merged at the last
    // boundary; without any, from the local checkpoint or the deterministic initialisation.
    let first_sliver = view.sliver.unwrap_or(0);
    connect_neighbours(&client, &view, first_sliver).await;
    let everyone: Vec<PeerId> = view
        .slivers
        .values()
        .flatten()
        .map(|(_, p, _)| *p)
        .filter(|p| *p != client.peer_id())
        .collect();
    let (mut training, _) = setup
        .switch(first_sliver, &everyone, view.epoch.saturating_sub(1), Duration::from_secs(3))
        .await?;
    let mut carried = Carried::default();
    let mut last_dial: Option<Instant> = None;
    // Commitments carry a step count that must not go back: continue from this uid's last one
    // (a restarted miner starts its own count from zero).
    let commit_base = chain.weight_commitment(uid).await?.map(|c| c.step).unwrap_or(0);
    let mut boundaries = 0u64;
    let mut next: Option<(PeerId, Duration)> = None;
    let mut picked: Option<Instant> = None;
    let mut speeds = Speeds::default();
    let mut excluded: Vec<PeerId> = Vec::new();
    let mut was_training = false;
    let mut windows_started = 0u64;
    tracing::info!(
        uid,
        sliver = training.sliver,
        of = run.num_slivers,
        epoch = view.epoch,
        "training"
    );

    loop {
        let now_view = view_rx.borrow().clone();
        if now_view.epoch != view.epoch {
            // Epoch boundary: merge with this epoch's replicas, commit the weights, then follow
            // the new assignment (the chain reshuffles slivers every epoch).
            let ended = view.epoch;
            let replicas = Peers::of(&view, training.sliver, client.peer_id()).replicas;
            let total_steps = commit_base + carried.steps + training.stage.steps();
            match merge_round(&mut training, &status_tx, &replicas, ended, &presence).await {
                Ok(m) if m.trained => {
                    tracing::info!(
                        epoch = ended,
                        sliver = training.sliver,
                        replicas = m.with,
                        of = replicas.len(),
                        size = m.size,
                        "merged"
                    );
                    if let Ok(mut x) = metrics.lock() {
                        x.merges += 1;
                    }
                    let sent =
                        commit_weights(&mut chain, &cfg.rpc_url, &account, uid, &m, total_steps)
                            .await;
                    match sent {
                        Ok(_) => {
                            if let Ok(mut x) = metrics.lock() {
                                x.commitments += 1;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "weight commitment not published"),
                    }
                }
                Ok(m) => tracing::info!(
                    epoch = ended,
                    replicas = m.with,
                    "did not train this epoch; took the replicas' merge"
                ),
                Err(e) => tracing::warn!(error = %e, "merge failed; continuing from local weights"),
            }
            match now_view.sliver {
                Some(s) if s != training.sliver => {
                    // Start from the merged weights of a miner that trained `s` in the epoch
                    // that ended.
                    let holders: Vec<PeerId> =
                        view.slivers.get(&s).into_iter().flatten().map(|(_, p, _)| *p).collect();
                    carried.add(&training.stage);
                    connect_neighbours(&client, &view, s).await;
                    let synced;
                    (training, synced) =
                        setup.switch(s, &holders, ended, Duration::from_secs(15)).await?;
                    if synced {
                        // Serve them too: a replica that restarts may ask any miner of `s`.
                        let bytes = encode_flat(&training.start, WireCodec::F32);
                        if let Ok(h) = client.publish_blob(bytes) {
                            publish_named(&status_tx, &client, weights_name(s, ended), h, ended);
                        }
                    }
                    tracing::info!(from = ?view.sliver, to = s, "assigned another sliver");
                    if let Ok(mut x) = metrics.lock() {
                        x.sliver = Some(s);
                    }
                }
                Some(_) => {}
                None => tracing::info!("not assigned this epoch"),
            }
            view = now_view;
            training.stage.set_epoch(view.epoch);
            next = None;
            excluded.clear();
            boundaries += 1;
            if opts.epochs.is_some_and(|n| boundaries >= n)
                || opts.until_epoch.is_some_and(|e| view.epoch >= e)
            {
                tracing::info!(boundaries, "done");
                if let Ok(m) = metrics.lock() {
                    println!("{}", m.summary(uid));
                }
                if let Ok(mut l) = ledger.lock() {
                    l.update(&metrics, run.id);
                }
                client.shutdown().await;
                return Ok(());
            }
            continue;
        }
        view = now_view;
        // Dial the neighbours in the background, every 10 s at most: an unreachable one must
        // not hold up training.
        if last_dial.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            last_dial = Some(Instant::now());
            let (c, v, s) = (client.clone(), view.clone(), training.sliver);
            tokio::spawn(async move { connect_neighbours(&c, &v, s).await });
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let training_now = view.sliver.is_some()
            && !pause_file.exists()
            && schedule.allows(now.as_secs(), load_average());
        // What status and "who serves" answer: the epoch, and this sliver while training.
        let serving: Vec<u16> = training_now.then_some(training.sliver).into_iter().collect();
        status_tx.send_if_modified(|st| {
            let changed = st.slivers != serving || st.epoch != view.epoch;
            st.slivers.clone_from(&serving);
            st.epoch = view.epoch;
            changed
        });
        if let Ok(mut m) = metrics.lock() {
            m.epoch = view.epoch;
            m.phase.clone_from(&view.phase);
            m.training = training_now;
        }
        if training_now != was_training {
            let peers = Peers::of(&view, training.sliver, client.peer_id());
            let mut notice = PresenceNotice {
                run: run.id as u64,
                epoch: view.epoch,
                sliver: training.sliver,
                available: training_now,
                merge: None,
            };
            if training_now {
                let told = announce(&client, &peers.all(), notice).await;
                if windows_started > 0 {
                    tracing::info!(told, "rejoined the pipeline");
                    if let Ok(mut l) = ledger.lock() {
                        l.book.run(run.id).windows += 1;
                    }
                }
                windows_started += 1;
            } else if view.sliver.is_some() {
                // Leaving: neighbours stop sending work, what is in flight is finished, the
                // replicas get this epoch's pseudo-gradient.
                let told = announce(&client, &peers.all(), notice).await;
                let following = next.map(|(p, _)| p);
                let quiet = Duration::from_millis(500);
                let limit = Duration::from_secs(cfg.grad_timeout_secs.clamp(1, 30));
                let before = training.stage.counters.tokens;
                match training.stage.drain(&mut inbound.frames, following, quiet, limit).await {
                    Ok(reports) => {
                        for r in reports.iter().filter_map(|r| r.loss) {
                            if let Ok(mut m) = metrics.lock() {
                                m.record_loss(r);
                            }
                        }
                    }
                    Err(StageError::Stopped) => bail!("the P2P node stopped"),
                    Err(e) => tracing::warn!(error = %e, "in-flight micro-batches not finished"),
                }
                let finished = training.stage.counters.tokens - before;
                let handed = match publish_delta(&mut training, &status_tx, view.epoch) {
                    Ok((_, Some((hash, _)))) => {
                        notice.merge = Some(hash);
                        announce(&client, &peers.replicas, notice).await
                    }
                    Ok((_, None)) => 0,
                    Err(e) => {
                        tracing::warn!(error = %e, "pseudo-gradient not handed over");
                        0
                    }
                };
                tracing::info!(
                    told,
                    of = peers.all().len(),
                    finished_tokens = finished,
                    handed_to = handed,
                    replicas = peers.replicas.len(),
                    "left the pipeline (outside the availability window or paused)"
                );
                next = None;
            }
            was_training = training_now;
        }
        if !training_now {
            tracing::debug!(
                "not training now (outside the availability windows, paused, or not assigned)"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            // Frames sent by peers that had not heard yet are not queued for later.
            let mut discarded = 0;
            while inbound.frames.try_recv().is_ok() {
                discarded += 1;
            }
            if discarded > 0 {
                tracing::debug!(discarded, "frames received while away discarded");
            }
            continue;
        }
        // Choose the next hop again when it left, and every 10 s: a miner that started serving
        // the next sliver late (still syncing weights at the boundary) gets its share of routes.
        if next.is_some_and(|(p, _)| presence.is_away(&p))
            || picked.is_some_and(|t| t.elapsed() > REPICK_EVERY)
        {
            next = None;
        }
        let sliver = training.sliver;
        let began = Instant::now();
        let stage = &mut training.stage;
        let route = position(&view, sliver, uid);
        if next.is_none() && !stage.trainer.spec.is_last() {
            next =
                pick_next(&client, &view, sliver + 1, route, &excluded, &presence, &speeds).await;
            picked = Some(Instant::now());
        }
        let report = if stage.trainer.spec.is_first() {
            stage.set_route(route);
            let Some((peer, _)) = next else {
                tracing::warn!(sliver = sliver + 1, "no live miner of the next sliver; waiting");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            };
            let stepped = Instant::now();
            let r = match stage.first_step(peer, &mut inbound.frames, &mut epoch_rx).await {
                Ok(r) => {
                    if !r.interrupted {
                        speeds.record(peer, r.completed, stepped.elapsed());
                    }
                    r
                }
                Err(StageError::Stopped) => bail!("the P2P node stopped"),
                Err(e) => {
                    tracing::warn!(error = %e, "step failed");
                    continue;
                }
            };
            if r.dropped > 0 && !r.interrupted {
                tracing::warn!(%peer, dropped = r.dropped, "micro-batches dropped; re-routing");
                excluded.push(peer);
                next = None;
            }
            Some(r)
        } else {
            let following = next.map(|(p, _)| p);
            let r = match tokio::time::timeout(Duration::from_secs(1), inbound.frames.recv()).await
            {
                Ok(Some(frame)) => match stage.handle(frame, following).await {
                    Ok(r) => r,
                    Err(StageError::Stopped) => bail!("the P2P node stopped"),
                    Err(e) => {
                        tracing::warn!(error = %e, "frame not handled");
                        None
                    }
                },
                Ok(None) => bail!("the P2P node stopped"),
                Err(_) => None,
            };
            if let Some(peer) = stage.take_unreachable() {
                // The next sliver's miner is gone: later micro-batches go to another one.
                tracing::warn!(%peer, "next sliver's miner unreachable; re-routing");
                excluded.push(peer);
                next = None;
            }
            r
        };
        if let Ok(mut m) = metrics.lock() {
            m.sliver = Some(sliver);
            m.steps = carried.steps + stage.steps();
            m.tokens = carried.tokens + stage.counters.tokens;
            m.bytes_sent = carried.bytes_sent + stage.counters.bytes_sent;
            m.dropped = carried.dropped + stage.counters.dropped;
            m.next = next;
            m.trained_secs += began.elapsed().as_secs_f64();
            if let Some(l) = report.as_ref().and_then(|r| r.loss) {
                m.record_loss(l);
            }
        }
    }
}

/// The ledger and what of this process's work it already counts.
struct LedgerKeeper {
    book: Ledger,
    path: PathBuf,
    seen: Seen,
}

/// This process's figures the ledger already holds.
#[derive(Default)]
struct Seen {
    trained_secs: f64,
    tokens: u64,
    steps: u64,
}

impl LedgerKeeper {
    /// Adds the work done since the last update and saves.
    fn update(&mut self, metrics: &Mutex<Metrics>, run: u32) {
        let Ok(m) = metrics.lock() else { return };
        let entry = self.book.run(run);
        entry.trained_secs += (m.trained_secs - self.seen.trained_secs).max(0.0);
        entry.tokens += m.tokens.saturating_sub(self.seen.tokens);
        entry.steps += m.steps.saturating_sub(self.seen.steps);
        self.seen = Seen { trained_secs: m.trained_secs, tokens: m.tokens, steps: m.steps };
        drop(m);
        if let Err(e) = self.book.save(&self.path) {
            tracing::warn!("{e}");
        }
    }
}

/// Every 10 s: scans the finalized blocks since the last scan for payouts to `who`, adds the
/// work done, saves the ledger.
async fn keep_ledger(
    ledger: Arc<Mutex<LedgerKeeper>>,
    metrics: Arc<Mutex<Metrics>>,
    url: String,
    who: sliver_chain::AccountId,
    run: u32,
) {
    let mut chain: Option<ChainClient> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if chain.is_none() {
            chain = ChainClient::connect(&url).await.ok();
        }
        if let Some(c) = &chain {
            if let Err(e) = scan_payouts(c, &ledger, &metrics, &who).await {
                tracing::debug!(error = %e, "payout scan interrupted; retried in 10 s");
                chain = None;
            }
        }
        if let Ok(mut l) = ledger.lock() {
            l.update(&metrics, run);
        }
    }
}

/// Blocks a pruning node still holds the state of, behind its finalized head.
const SCAN_BACK: u32 = 250;

async fn scan_payouts(
    chain: &ChainClient,
    ledger: &Mutex<LedgerKeeper>,
    metrics: &Mutex<Metrics>,
    who: &sliver_chain::AccountId,
) -> anyhow::Result<()> {
    let head = chain.head().await?.finalized as u32;
    let from = {
        let l = ledger.lock().map_err(|_| anyhow!("ledger lock"))?;
        l.book.scanned_to.saturating_add(1).max(head.saturating_sub(SCAN_BACK))
    };
    for block in from..=head {
        let (amount, count) = chain.miner_payouts_at(block, who).await?;
        let mut l = ledger.lock().map_err(|_| anyhow!("ledger lock"))?;
        if count > 0 {
            l.book.add_earnings(amount, count);
            tracing::info!(block, amount = %slv(amount), total = %slv(l.book.earned()), "paid");
        }
        l.book.scanned_to = block;
        if let Ok(mut m) = metrics.lock() {
            m.earned = l.book.earned();
        }
    }
    Ok(())
}

/// How long a next hop is kept before it is chosen again.
const REPICK_EVERY: Duration = Duration::from_secs(10);

/// Largest pseudo-gradient a leaving replica may hand over.
const MAX_HANDOFF_BYTES: u64 = 1 << 30;

/// Counters of the stages this run trained before its current one.
#[derive(Default)]
struct Carried {
    steps: u64,
    tokens: u64,
    bytes_sent: u64,
    dropped: u64,
}

impl Carried {
    fn add(&mut self, stage: &Stage) {
        self.steps += stage.steps();
        self.tokens += stage.counters.tokens;
        self.bytes_sent += stage.counters.bytes_sent;
        self.dropped += stage.counters.dropped;
    }
}

/// What does not change while the miner runs.
struct Setup {
    model: GptConfig,
    specs: Vec<SliverSpec>,
    stage_cfg: StageConfig,
    adamw: AdamWConfig,
    device: sliver_engine::Device,
    data: Arc<Dataset>,
    client: Client,
    data_dir: PathBuf,
    run_id: u32,
    audit: AuditLog,
    outer: (f32, f32),
}

/// The sliver being trained, with its merge state.
struct Training {
    sliver: u16,
    stage: Stage,
    /// Weights at the last merge (the replicas' shared start).
    start: Flat,
    outer: OuterOptimizer,
    merged_steps: u64,
    info: CheckpointInfo,
    ckpt: PathBuf,
}

impl Setup {
    /// A trainer for `sliver`, from `weights` if given, else from the local checkpoint of this
    /// run and sliver if there is one, else from the deterministic initialisation.
    fn train(&self, sliver: u16, weights: Option<Flat>) -> anyhow::Result<Training> {
        self.build(sliver, weights, true)
    }

    fn build(
        &self,
        sliver: u16,
        weights: Option<Flat>,
        checkpoint: bool,
    ) -> anyhow::Result<Training> {
        let spec = self.specs.get(sliver as usize).cloned().ok_or_else(|| {
            anyhow!("sliver {sliver} is outside the run's {} slivers", self.specs.len())
        })?;
        let mut trainer =
            SliverTrainer::new(&self.model, spec.clone(), None, self.adamw.clone(), &self.device)?;
        let ckpt = checkpoint_path(&self.data_dir, self.run_id, sliver);
        let info =
            CheckpointInfo { config: self.model.clone(), spec: spec.clone(), bottleneck: None };
        if let Some(w) = weights {
            engine_merge::import_flat(&mut trainer.sliver, &w)?;
        } else if checkpoint && ckpt.is_file() {
            match checkpoint::read(&ckpt) {
                Ok((i, flat)) if i.spec == spec && i.config == self.model => {
                    engine_merge::import_flat(&mut trainer.sliver, &flat)?;
                    tracing::info!(path = %ckpt.display(), "resumed from the local checkpoint");
                }
                Ok(_) => {
                    tracing::warn!(path = %ckpt.display(), "checkpoint is for another model or sliver; starting fresh")
                }
                Err(e) => tracing::warn!(error = %e, "checkpoint unreadable; starting fresh"),
            }
        }
        let mut stage =
            Stage::new(trainer, self.client.clone(), self.data.clone(), self.stage_cfg.clone())
                .with_audit(self.audit.clone());
        let start = engine_merge::export_flat(&mut stage.trainer.sliver);
        Ok(Training {
            sliver,
            stage,
            start,
            outer: OuterOptimizer::new(self.outer.0, self.outer.1),
            merged_steps: 0,
            info,
            ckpt,
        })
    }

    /// Moves to `sliver`, fetching its merged weights of epoch `ended` from whichever of
    /// `holders` serves them first (all asked at once, within `wait`); true if synced.
    async fn switch(
        &self,
        sliver: u16,
        holders: &[PeerId],
        ended: u64,
        wait: Duration,
    ) -> anyhow::Result<(Training, bool)> {
        if holders.is_empty() {
            return Ok((self.train(sliver, None)?, false));
        }
        // The parameter names and sizes, to check what replicas send.
        let like = self.build(sliver, None, false)?.start;
        let name = weights_name(sliver, ended);
        let asks: Vec<_> = holders
            .iter()
            .map(|h| {
                let (name, like) = (&name, &like);
                Box::pin(async move {
                    fetch_named(&self.client, *h, name, like, wait).await.map(|w| (*h, w))
                })
            })
            .collect();
        let outcome = futures::future::select_ok(asks).await.map(|(found, _)| found);
        match outcome {
            Ok((peer, w)) => {
                tracing::info!(%peer, sliver, "weights synced from a replica");
                Ok((self.train(sliver, Some(w))?, true))
            }
            Err(e) => {
                tracing::info!(sliver, error = %e, "no replica served its weights; starting from local weights");
                Ok((self.train(sliver, None)?, false))
            }
        }
    }
}

/// Where `uid` stands among the miners of `sliver` (its route, on the first sliver).
fn position(view: &View, sliver: u16, uid: u16) -> u64 {
    view.slivers.get(&sliver).and_then(|v| v.iter().position(|(u, _, _)| *u == uid)).unwrap_or(0)
        as u64
}

fn weights_name(sliver: u16, epoch: u64) -> String {
    format!("weights/{sliver}/{epoch}")
}

fn stage_config(run: &RunInfo, cfg: &MinerConfig, codec: WireCodec, epoch: u64) -> StageConfig {
    let hyper = &run.hyper;
    let micro_batches = hyper.micro_batches.max(1) as u64;
    StageConfig {
        run: run.id as u64,
        epoch,
        route: 0,
        micro_batches,
        batch: (hyper.batch_size as usize / micro_batches as usize).max(1),
        seq: run.model.context_len as usize,
        codec,
        lr: LrSchedule {
            max_lr: hyper.learning_rate_micro as f64 / 1e6,
            min_lr: hyper.min_learning_rate_micro as f64 / 1e6,
            warmup_steps: hyper.warmup_steps as u64,
            decay_steps: 5000,
        },
        clip: hyper.grad_clip_micro as f64 / 1e6,
        grad_timeout: Duration::from_secs(cfg.grad_timeout_secs.max(1)),
    }
}

/// Publishes this epoch's pseudo-gradient (bf16) as `merge/<sliver>/<epoch>` if the sliver
/// trained since the last merge; returns it as the replicas will decode it, with its hash.
fn publish_delta(
    t: &mut Training,
    status: &watch::Sender<NodeStatus>,
    epoch: u64,
) -> anyhow::Result<(engine_merge::Flat, Option<([u8; 32], engine_merge::Flat)>)> {
    let client = t.stage.client().clone();
    let current = engine_merge::export_flat(&mut t.stage.trainer.sliver);
    let delta = engine_merge::pseudo_gradient(&t.start, &current);
    if t.stage.steps() <= t.merged_steps {
        // A replica that did no work this epoch adds no (zero) delta to the average.
        return Ok((delta, None));
    }
    let bytes = encode_flat(&delta, WireCodec::Bf16);
    let decoded = decode_flat(&bytes, &delta).map_err(|e| anyhow!(e))?;
    let hash = client.publish_blob(bytes)?;
    publish_named(status, &client, format!("merge/{}/{epoch}", t.sliver), hash, epoch);
    Ok((delta, Some((hash, decoded))))
}

async fn merge_round(
    t: &mut Training,
    status: &watch::Sender<NodeStatus>,
    replicas: &[PeerId],
    epoch: u64,
    presence: &Presence,
) -> anyhow::Result<Merged> {
    let client = t.stage.client().clone();
    let name = format!("merge/{}/{epoch}", t.sliver);
    let (delta, own) = publish_delta(t, status, epoch)?;
    let trained = own.is_some();
    let mut deltas: Vec<Flat> = own.into_iter().map(|(_, d)| d).collect();
    // All replicas at once, under one deadline.
    let fetched = futures::future::join_all(
        replicas.iter().map(|r| fetch_named(&client, *r, &name, &delta, Duration::from_secs(8))),
    )
    .await;
    for (r, f) in replicas.iter().zip(fetched) {
        match f {
            Ok(d) => deltas.push(d),
            Err(e) => match presence.take_handoff(r, t.sliver, epoch) {
                // A replica that left its window handed its pseudo-gradient over.
                Some(bytes) => match decode_flat(&bytes, &delta) {
                    Ok(d) => {
                        tracing::info!(peer = %r, "merging the pseudo-gradient a leaving replica handed over");
                        deltas.push(d);
                    }
                    Err(e) => {
                        tracing::warn!(peer = %r, error = %e, "handed-over pseudo-gradient refused")
                    }
                },
                None => tracing::debug!(peer = %r, error = %e, "replica left out of this merge"),
            },
        }
    }
    let with = deltas.len().saturating_sub(usize::from(trained));
    if !deltas.is_empty() {
        let avg = engine_merge::average(&deltas);
        let before = t.start.clone();
        t.outer.step(&mut t.start, &avg);
        // Finite deltas can still overflow when averaged or stepped: keep the old start then.
        if t.start.values().flatten().any(|v| !v.is_finite()) {
            tracing::warn!("the merged weights are not finite; this round is skipped");
            t.start = before;
        }
    }
    engine_merge::import_flat(&mut t.stage.trainer.sliver, &t.start)?;
    t.merged_steps = t.stage.steps();
    if let Err(e) = checkpoint::save_sliver(&mut t.stage.trainer.sliver, &t.info, &t.ckpt) {
        tracing::warn!(error = %e, "could not save the local checkpoint");
    }
    let weights = encode_flat(&t.start, WireCodec::F32);
    let size = weights.len() as u64;
    let hash = client.publish_blob(weights)?;
    publish_named(status, &client, weights_name(t.sliver, epoch), hash, epoch);
    Ok(Merged { hash, size, with, trained })
}

/// Publishes the commitment to merged weights `m` at `step`. If the node went away (the
/// transaction's fate unknown), reconnects (waiting up to 30 s for the node to come back),
/// reads the uid's commitment on chain, and sends again only if this one is not there: a
/// transaction that did land is not sent twice. (Each send takes its nonce from the node.)
async fn commit_weights(
    chain: &mut ChainClient,
    url: &str,
    account: &sliver_chain::Keypair,
    uid: u16,
    m: &Merged,
    step: u64,
) -> Result<(), ChainError> {
    let first = chain.publish_weight_commitment(account, m.hash, m.size, step).await;
    let Err(e) = first else { return Ok(()) };
    if !matches!(
        e,
        ChainError::Rpc(_) | ChainError::Unreachable { .. } | ChainError::Transaction { .. }
    ) {
        return Err(e);
    }
    tracing::warn!(error = %e, "weight commitment not confirmed; checking the chain");
    *chain = ChainClient::connect_with_retry(url, Duration::from_secs(30)).await?;
    if let Some(c) = chain.weight_commitment(uid).await? {
        if c.hash.0 == m.hash && c.step == step {
            tracing::info!(step, "the commitment had landed; not sent again");
            return Ok(());
        }
    }
    chain.publish_weight_commitment(account, m.hash, m.size, step).await.map(|_| ())
}

/// What a merge round did.
struct Merged {
    /// BLAKE3 of the merged weights (published as a blob).
    hash: [u8; 32],
    /// Their size in bytes.
    size: u64,
    /// Replicas whose pseudo-gradients were averaged in.
    with: usize,
    /// Whether this miner contributed its own.
    trained: bool,
}

/// Names `hash` in the node status and drops names (and blobs) older than the previous epoch.
fn publish_named(
    status: &watch::Sender<NodeStatus>,
    client: &Client,
    name: String,
    hash: [u8; 32],
    epoch: u64,
) {
    status.send_modify(|s| {
        s.published.insert(name, hash);
        let stale: Vec<String> = s
            .published
            .keys()
            .filter(|k| {
                k.rsplit('/')
                    .next()
                    .and_then(|e| e.parse::<u64>().ok())
                    .is_some_and(|e| e + 1 < epoch)
            })
            .cloned()
            .collect();
        for k in stale {
            if let Some(h) = s.published.remove(&k) {
                // The same bytes can stand under several names (weights that did not change).
                if !s.published.values().any(|v| *v == h) {
                    client.unpublish_blob(&h);
                }
            }
        }
    });
}

/// Dials the registered miners of the neighbouring slivers and of this sliver, all at once.
async fn connect_neighbours(client: &Client, view: &View, sliver: u16) {
    let me = client.peer_id();
    let peers: Vec<(PeerId, Vec<Multiaddr>)> =
        [sliver.checked_sub(1), Some(sliver), sliver.checked_add(1)]
            .into_iter()
            .flatten()
            .flat_map(|s| view.slivers.get(&s).into_iter().flatten())
            .filter(|(_, p, _)| *p != me)
            .map(|(_, p, a)| (*p, a.clone()))
            .collect();
    futures::future::join_all(peers.into_iter().map(|(peer, addrs)| async move {
        for a in addrs {
            if client.dial(peer, a).await.is_ok() {
                break;
            }
        }
    }))
    .await;
}

/// A live miner of `sliver` for the micro-batches of `route`, skipping `excluded` and miners
/// that left the pipeline: the candidates whose status says they serve `sliver`, measured by
/// their status round trip and, where known, by the throughput this miner saw through them
/// (see [`choose_next`]).
async fn pick_next(
    client: &Client,
    view: &View,
    sliver: u16,
    route: u64,
    excluded: &[PeerId],
    presence: &Presence,
    speeds: &Speeds,
) -> Option<(PeerId, Duration)> {
    let candidates: Vec<PeerId> = view
        .slivers
        .get(&sliver)
        .into_iter()
        .flatten()
        .map(|(_, p, _)| *p)
        .filter(|p| !excluded.contains(p) && !presence.is_away(p))
        .collect();
    let asks = futures::future::join_all(candidates.iter().map(|p| async move {
        let t = Instant::now();
        let ask = client.request(*p, ControlRequest::Status);
        match tokio::time::timeout(Duration::from_secs(3), ask).await {
            Ok(Ok(ControlResponse::Status(st))) if st.slivers.contains(&sliver) => {
                Some((*p, t.elapsed()))
            }
            _ => None,
        }
    }))
    .await;
    choose_next(asks.into_iter().flatten().collect(), speeds, route)
}

/// Seconds per completed micro-batch through each next-sliver miner, as this miner measured
/// them (an exponential moving average over its steps).
#[derive(Default)]
struct Speeds(std::collections::HashMap<PeerId, f64>);

impl Speeds {
    /// Records a step of `completed` micro-batches through `peer` that took `took`.
    fn record(&mut self, peer: PeerId, completed: u64, took: Duration) {
        if completed == 0 {
            return;
        }
        let sample = took.as_secs_f64() / completed as f64;
        let v = self.0.entry(peer).or_insert(sample);
        *v = 0.7 * *v + 0.3 * sample;
    }
}

/// SWARM-style choice among `live` miners (with their round trips): those answering within
/// three times the best round trip (plus 20 ms) are near-equals by latency; of those, the ones
/// measured at most 1.5 times slower per micro-batch than the fastest measured, and the ones
/// not measured yet (so that new miners are tried), share the routes: route modulo their
/// count, so the miners of one sliver spread over the next sliver's instead of all picking
/// the fastest.
fn choose_next(
    live: Vec<(PeerId, Duration)>,
    speeds: &Speeds,
    route: u64,
) -> Option<(PeerId, Duration)> {
    let best = live.iter().map(|(_, d)| *d).min()?;
    let near: Vec<(PeerId, Duration)> =
        live.into_iter().filter(|(_, d)| *d <= best * 3 + Duration::from_millis(20)).collect();
    let fastest =
        near.iter().filter_map(|(p, _)| speeds.0.get(p)).copied().fold(f64::MAX, f64::min);
    let fast: Vec<(PeerId, Duration)> = near
        .into_iter()
        .filter(|(p, _)| speeds.0.get(p).is_none_or(|s| *s <= fastest * 1.5))
        .collect();
    fast.get(route as usize % fast.len()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_hop_is_chosen_by_latency_then_measured_throughput() {
        let p: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let ms = Duration::from_millis;
        let mut speeds = Speeds::default();
        // By latency: the 400 ms one is out; routes spread over the other three.
        let live = vec![(p[0], ms(2)), (p[1], ms(3)), (p[2], ms(10)), (p[3], ms(400))];
        let picks: Vec<PeerId> =
            (0..3).map(|r| choose_next(live.clone(), &speeds, r).unwrap().0).collect();
        assert_eq!(picks, vec![p[0], p[1], p[2]]);
        // p1 measured three times slower than p0: routes go to p0 and the unmeasured p2.
        speeds.record(p[0], 3, ms(300));
        speeds.record(p[1], 3, ms(900));
        let picks: Vec<PeerId> =
            (0..4).map(|r| choose_next(live.clone(), &speeds, r).unwrap().0).collect();
        assert_eq!(picks, vec![p[0], p[2], p[0], p[2]]);
        // p2 measured as fast as p0 (within 1.5x): both share.
        speeds.record(p[2], 2, ms(260));
        assert_eq!(choose_next(live.clone(), &speeds, 1).unwrap().0, p[2]);
        // The average moves towards new samples: p1 got fast.
        for _ in 0..20 {
            speeds.record(p[1], 3, ms(300));
        }
        let picks: Vec<PeerId> =
            (0..3).map(|r| choose_next(live.clone(), &speeds, r).unwrap().0).collect();
        assert_eq!(picks, vec![p[0], p[1], p[2]]);
        assert_eq!(choose_next(Vec::new(), &speeds, 0), None);
    }
}

/// The miners a leaving or rejoining miner tells: its replicas, and the miners of the
/// slivers before and after its own.
struct Peers {
    replicas: Vec<PeerId>,
    neighbours: Vec<PeerId>,
}

impl Peers {
    fn of(view: &View, sliver: u16, me: PeerId) -> Self {
        let of = |s: Option<u16>| -> Vec<PeerId> {
            s.and_then(|s| view.slivers.get(&s))
                .into_iter()
                .flatten()
                .map(|(_, p, _)| *p)
                .filter(|p| *p != me)
                .collect()
        };
        let mut neighbours = of(sliver.checked_sub(1));
        neighbours.extend(of(sliver.checked_add(1)));
        Peers { replicas: of(Some(sliver)), neighbours }
    }

    fn all(&self) -> Vec<PeerId> {
        self.replicas.iter().chain(&self.neighbours).copied().collect()
    }
}

/// Follows the chain: epoch and phase every second, assignments and registrations at each
/// epoch change (and every 10 s). Reconnects when the node goes away.
async fn follow_chain(url: String, uid: u16, view: watch::Sender<View>, epoch: watch::Sender<u64>) {
    let mut chain: Option<ChainClient> = None;
    let mut last_full: Option<Instant> = None;
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
            Ok(()) => {
                let e = view.borrow().epoch;
                epoch.send_if_modified(|old| std::mem::replace(old, e) != e);
            }
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
    last_full: &mut Option<Instant>,
) -> anyhow::Result<()> {
    let (info, assignments) = client.epoch_and_assignments().await?;
    let epoch = info.epoch as u64;
    let changed = view.borrow().epoch != epoch || view.borrow().phase.is_none();
    if changed || last_full.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
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
        *last_full = Some(Instant::now());
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
            "[miner uid {uid}] epoch {} {} | {} sliver {} | step {} | {rate:.0} tok/s | loss {loss} | next {next} | peers {peers} | sent {:.1} MB | dropped {} | merges {} | commitments {} | audits {} pending, {} answered, {} not kept | earned {}",
            m.epoch,
            m.phase.as_ref().map(|p| format!("{p:?}")).unwrap_or_else(|| "-".into()),
            if m.training { "training" } else { "away from" },
            m.sliver.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            m.steps,
            m.bytes_sent as f64 / 1e6,
            m.dropped,
            m.merges,
            m.commitments,
            m.audits.pending.load(Relaxed),
            m.audits.answered.load(Relaxed),
            m.audits.missed.load(Relaxed),
            slv(m.earned),
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
                ("sliver_miner_earned_plancks", "earned as a miner (ledger)", m.earned as f64),
                (
                    "sliver_miner_audits_answered_total",
                    "audits answered",
                    m.audits.answered.load(Relaxed) as f64,
                ),
                (
                    "sliver_miner_audits_missed_total",
                    "audits of micro-batches not kept",
                    m.audits.missed.load(Relaxed) as f64,
                ),
                (
                    "sliver_miner_audits_pending",
                    "audits being answered",
                    m.audits.pending.load(Relaxed) as f64,
                ),
                ("sliver_miner_trained_seconds_total", "seconds spent training", m.trained_secs),
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
