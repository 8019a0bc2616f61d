//! `sliver-miner run`: checks the configuration, connects, and starts the tasks the miner is
//! made of, then hands over to the training loop ([`crate::miner::Miner`]).
//!
//! Tasks, each owning what it serves and taking requests from the others: the chain task
//! (`sliver_operator::chain`: epoch, assignment, registry, transactions; reconnects with
//! jittered backoff), the P2P node (`sliver_p2p`: admits only the chain's registered peers),
//! the telemetry task (figures, status line, Prometheus metrics on `metrics_port`), the ledger
//! task, the audit server, the presence listener, and the training loop itself.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use prometheus_client::registry::Registry;
use sliver_chain::RunInfo;
use sliver_engine::data::Dataset;

use sliver_engine::SliverSpec;
use sliver_operator::chain::{ChainHandle, ChainView};
use sliver_p2p::{Multiaddr, NetworkConfig, NodeStatus, PeerId, PresenceNotice};
use sliver_wire::WireCodec;
use tokio::sync::watch;

use crate::audit::AuditLog;
use crate::availability::Schedule;
use crate::config::MinerConfig;
use crate::ledger::{Ledger, LedgerKeeper};
use crate::merge::encoded_len;
use crate::miner::{Context, Miner, RunOptions};
use crate::presence::{Presence, Verdict};
use crate::stage::StageConfig;
use crate::telemetry::{StatusLine, Telemetry};
use crate::training::Setup;

/// The program's name, for advice in errors.
const PROGRAM: &str = "sliver-miner";

/// Runs the miner until it fails, `opts.epochs` boundaries have passed, the chain reaches
/// `opts.until_epoch`, or SIGTERM / Ctrl-C asks it to leave.
pub async fn run(cfg: MinerConfig, opts: RunOptions) -> anyhow::Result<()> {
    crate::cheat::check().map_err(|e| anyhow!(e))?;
    cfg.check_rpc()?;
    let schedule = Schedule::parse(&cfg.availability)?;
    let account =
        sliver_operator::keys::load_account(cfg.account.as_deref(), &cfg.data_dir, PROGRAM)?;
    let who = sliver_chain::account_of(&account);
    let chain = ChainHandle::spawn(&cfg.rpc_url);
    let view = chain.ready(Duration::from_secs(20)).await?;
    let w = who;
    let uid = chain.call(move |c| async move { c.uid_of(&w).await }).await?.ok_or_else(|| {
        anyhow!(
            "account {who} is not registered on {}: run `sliver-miner register` first \
             (it needs a funded account for the deposit)",
            cfg.rpc_url
        )
    })?;
    let run = chain.call(|c| async move { c.training_run().await }).await?.ok_or_else(|| {
        anyhow!("the chain at {} has no active training run; nothing to train", cfg.rpc_url)
    })?;
    let model = model_of(&run)?;
    let data = Arc::new(load_data(&cfg, &run)?);
    let codec = cfg.wire_codec()?;
    let device = sliver_engine::device_by_name(&cfg.device)?;

    // The P2P node, with the key the registry knows, admitting only registered peers.
    let key = sliver_operator::keys::node_key(&cfg.data_dir)?;
    if view.participants.get(&uid).is_some_and(|p| p.peer != key.public().to_peer_id()) {
        bail!(
            "uid {uid} is registered with another node key than {}/node.key; deregister and \
             register again from this data directory",
            cfg.data_dir.display()
        );
    }
    let stage_cfg = stage_config(&run, &cfg, codec, view.epoch);
    let (status_tx, status_rx) =
        watch::channel(NodeStatus { run: run.id as u64, ..Default::default() });
    // The audit store holds snapshots (weights and optimiser state: three times a sliver in
    // f32) for two audits at once: at least 8 times the whole model, bounding any sliver.
    let (l, d) = (model.n_layer as u64, model.d_model as u64);
    let model_bytes =
        4 * (12 * l * d * d + (2 * model.vocab_size as u64 + model.block_size as u64) * d);
    let net = NetworkConfig {
        mdns: cfg.mdns,
        max_connections_per_ip: cfg.max_connections_per_ip,
        max_audit_blob_bytes: (256u64 << 20).max(8 * model_bytes),
        ..NetworkConfig::default()
    }
    .with_max_frame(max_frame_bytes(&stage_cfg, model.d_model));
    let mut registry = Registry::default();
    let (client, inbound) =
        sliver_p2p::start_with_metrics(key.clone(), net, status_rx, &mut registry)?;
    client.set_peers(Some(view.roles())).await?;
    // Nothing is accepted until a stage trains.
    client.set_frame_gate(Some(Arc::new(crate::gate::Closed)));
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

    let telemetry = Telemetry::spawn(
        &mut registry,
        StatusLine { uid, every: cfg.status_interval_secs, client: client.clone(), port },
    );
    if cfg.metrics_port != 0 {
        let addr = ([127, 0, 0, 1], cfg.metrics_port).into();
        match sliver_operator::metrics::serve(addr, registry).await {
            Ok(bound) => tracing::info!(%bound, "Prometheus metrics"),
            Err(e) => {
                tracing::warn!(port = cfg.metrics_port, error = %e, "metrics endpoint off: cannot bind")
            }
        }
    }
    let audit = AuditLog::open(
        &cfg.data_dir.join("audit"),
        run.id as u64,
        cfg.audit_disk_mib.saturating_mul(1 << 20),
    )
    .with_context(|| format!("cannot open the audit log under {}", cfg.data_dir.display()))?;
    let ledger_path = Ledger::path(&cfg.data_dir);
    let mut book = Ledger::load(&ledger_path)?;
    book.for_account(&who.to_string());
    book.run(run.id).windows += 1;
    book.save(&ledger_path)?;
    let ledger =
        LedgerKeeper::spawn(book, ledger_path, chain.clone(), telemetry.clone(), who, run.id);
    tokio::spawn(crate::audit::serve(
        audit.clone(),
        client.clone(),
        inbound.audits,
        telemetry.clone(),
    ));

    let specs = SliverSpec::split(model.n_layer, run.num_slivers as usize)?;
    let setup = Setup {
        model,
        specs,
        stage_cfg,
        adamw: sliver_audit::shape::adamw_of(&run),
        device,
        data,
        client: client.clone(),
        data_dir: cfg.data_dir.clone(),
        run_id: run.id,
        audit,
        outer: (run.hyper.outer_lr_micro as f32 / 1e6, run.hyper.outer_momentum_micro as f32 / 1e6),
    };
    // The largest pseudo-gradient a leaving replica of each sliver may hand over.
    let handoff: Vec<u64> = (0..setup.specs.len() as u16)
        .map(|s| setup.like(s).map(|l| encoded_len(&l, WireCodec::Bf16)))
        .collect::<Result<_, _>>()?;
    let presence = Presence::default();
    let (assigned, mine) = watch::channel(None);
    let views = chain.subscribe();
    let run_id = run.id as u64;
    let judge = move |peer: &PeerId, n: &PresenceNotice| {
        judge(&views.borrow(), *mine.borrow(), run_id, &handoff, peer, n)
    };
    tokio::spawn(crate::presence::serve(
        presence.clone(),
        client.clone(),
        inbound.notices,
        Box::new(judge),
    ));
    // The first sliver's step is interrupted when the chain's epoch changes.
    let (epoch_tx, epoch_rx) = watch::channel(view.epoch);
    let mut views = chain.subscribe();
    tokio::spawn(async move {
        while views.changed().await.is_ok() {
            let e = views.borrow().epoch;
            epoch_tx.send_if_modified(|old| std::mem::replace(old, e) != e);
        }
    });
    let w = uid;
    let commit_base = chain
        .call(move |c| async move { c.weight_commitment(w).await })
        .await?
        .map(|c| c.step)
        .unwrap_or(0);
    let ctx = Context {
        setup,
        chain,
        client,
        status: status_tx,
        telemetry,
        ledger,
        presence,
        assigned,
        uid,
        account,
        commit_base,
        opts,
        schedule,
        pause_file: cfg
            .availability
            .pause_file
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("pause")),
        grad_timeout: Duration::from_secs(cfg.grad_timeout_secs.max(1)),
        stop: sliver_operator::signals::stop_requested(),
    };
    Miner::new(ctx, inbound.frames, epoch_rx).run().await
}

/// Whether a presence notice counts: from a miner the chain assigned this epoch to the sliver
/// it names, for this run and epoch; a handed-over pseudo-gradient is taken only from a replica
/// of this miner's own sliver, at most that sliver's size.
fn judge(
    view: &ChainView,
    mine: Option<u16>,
    run: u64,
    handoff: &[u64],
    peer: &PeerId,
    n: &PresenceNotice,
) -> Verdict {
    if n.run != run
        || n.epoch != view.epoch
        || !view.miners(n.sliver).iter().any(|p| p.peer == *peer)
    {
        return Verdict::Ignore;
    }
    let handoff =
        (mine == Some(n.sliver)).then(|| handoff.get(n.sliver as usize).copied()).flatten();
    Verdict::Count { epoch: view.epoch, handoff }
}

/// The largest frame a peer may send this miner: an f32 activation or gradient of the run's
/// micro-batch (`[batch, seq, width]`), with its wire header.
pub fn max_frame_bytes(cfg: &StageConfig, width: usize) -> u64 {
    let values = (cfg.batch * cfg.seq * width) as u64;
    4 * values + 2 + 4 * 3
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
        lr: sliver_audit::shape::schedule_of(run),
        clip: hyper.grad_clip_micro as f64 / 1e6,
        grad_timeout: Duration::from_secs(cfg.grad_timeout_secs.max(1)),
        // A segment of steps must fit what a validator replays whole (its work counts only
        // then): at most 256 micro-batches.
        audit_every: cfg
            .audit_snapshot_steps
            .clamp(1, (sliver_p2p::control::MAX_STEP_BATCHES as u64 / micro_batches).max(1)),
    }
}

/// The run's model as the engine builds it (embeddings untied across machines); validators
/// build the same from the same function.
pub use sliver_audit::shape::model_of;

fn load_data(cfg: &MinerConfig, run: &RunInfo) -> anyhow::Result<Dataset> {
    let path = cfg.data.as_ref().ok_or_else(|| {
        anyhow!(
            "dataset missing: the run trains on {:?}; pass --data PATH (a text file, a directory \
             of .txt files, or JSON Lines) holding it",
            run.dataset_id
        )
    })?;
    Ok(sliver_audit::shape::load_dataset(path, run)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sliver_operator::chain::{Peer, Slivers};

    #[test]
    fn notices_count_only_from_miners_of_the_named_sliver_this_epoch() {
        let (a, b, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut v = ChainView { epoch: 5, ..ChainView::default() };
        for (uid, peer) in [(0u16, a), (1, b)] {
            v.participants.insert(
                uid,
                Peer {
                    uid,
                    account: sliver_chain::AccountId::from([uid as u8; 32]),
                    role: sliver_chain::Role::Miner,
                    peer,
                    addrs: Vec::new(),
                },
            );
        }
        v.assignment = Slivers::from([(0, vec![0]), (1, vec![1])]);
        let notice = |sliver, epoch| PresenceNotice {
            run: 7,
            epoch,
            sliver,
            available: false,
            merge: Some([1; 32]),
        };
        let sizes = [100, 200];
        assert_eq!(
            judge(&v, Some(0), 7, &sizes, &a, &notice(0, 5)),
            Verdict::Count { epoch: 5, handoff: Some(100) }
        );
        assert_eq!(
            judge(&v, Some(1), 7, &sizes, &a, &notice(0, 5)),
            Verdict::Count { epoch: 5, handoff: None },
            "a neighbour hands nothing over"
        );
        assert_eq!(
            judge(&v, Some(0), 7, &sizes, &a, &notice(1, 5)),
            Verdict::Ignore,
            "names another sliver"
        );
        assert_eq!(
            judge(&v, Some(0), 7, &sizes, &a, &notice(0, 99)),
            Verdict::Ignore,
            "a far-future epoch"
        );
        assert_eq!(
            judge(&v, Some(0), 8, &sizes, &a, &notice(0, 5)),
            Verdict::Ignore,
            "another run"
        );
        assert_eq!(judge(&v, Some(0), 7, &sizes, &stranger, &notice(0, 5)), Verdict::Ignore);
    }
}
