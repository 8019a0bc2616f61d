//! Setting a validator up: account and registration, the chain task, the run and its data,
//! the transport (a relay for miners behind NAT with `--relay`), the replay task and metrics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use sliver_audit::{Replayer, RunShape, Secret};
use sliver_chain::Role;
use sliver_operator::chain::ChainHandle;
use sliver_operator::keys;
use sliver_p2p::{FrameGate, FrameHeader, NetworkConfig, NodeStatus, PeerId, Refusal};
use tokio::sync::{watch, Semaphore};

use crate::audit::{Auditor, ReplayHandle};
use crate::config::ValidatorConfig;
use crate::metrics::Metrics;
use crate::reveal::Reveals;
use crate::validator::{Context, RunOptions, Validator};

/// The program's name in messages.
pub const PROGRAM: &str = "sliver-validator";
/// The sampling secret's file in the data directory.
pub const SECRET_FILE: &str = "audit.secret";

/// A validator trains nothing: every tensor frame is refused, without a strike.
struct NoFrames;

impl FrameGate for NoFrames {
    fn check(&self, _: &PeerId, _: &FrameHeader) -> Result<(), Refusal> {
        Err(Refusal::benign("a validator takes no tensor frames"))
    }
}

/// The validator's sampling secret, created (32 random bytes, mode 0600) on first use.
pub fn load_or_create_secret(dir: &std::path::Path) -> anyhow::Result<Secret> {
    let path = dir.join(SECRET_FILE);
    match std::fs::read(&path) {
        Ok(b) => {
            let bytes: [u8; 32] = b.try_into().map_err(|_| {
                anyhow!("{} is not a 32-byte secret: remove it to draw a new one", path.display())
            })?;
            Ok(Secret(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| anyhow!("no randomness: {e}"))?;
            sliver_p2p::keys::write_private(&path, &bytes)?;
            Ok(Secret(bytes))
        }
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Runs the validator until stopped.
pub async fn run(cfg: ValidatorConfig, opts: RunOptions) -> anyhow::Result<()> {
    cfg.check()?;
    let account = keys::load_account(cfg.account.as_deref(), &cfg.data_dir, PROGRAM)?;
    let who = sliver_chain::account_of(&account);
    let chain = ChainHandle::spawn(&cfg.rpc_url);
    let view = chain.ready(Duration::from_secs(20)).await.with_context(|| {
        format!("the node at {} is unreachable; start it or pass --rpc-url", cfg.rpc_url)
    })?;
    let w = who.clone();
    let uid = chain
        .call(move |c| async move { c.uid_of(&w).await })
        .await?
        .ok_or_else(|| anyhow!("{who} is not registered: run `{PROGRAM} register` first"))?;
    match view.participants.get(&uid).map(|p| &p.role) {
        Some(Role::Validator) => {}
        Some(_) => bail!(
            "{who} is registered as a miner (uid {uid}); register another account as a validator"
        ),
        None => bail!("uid {uid} has no usable registration (its peer key is invalid)"),
    }
    let w = who.clone();
    let stake = chain.call(move |c| async move { c.stake_of(&w).await }).await?;
    if stake == 0 {
        bail!("{who} has no stake bonded: a validator's weights count only with stake; run `{PROGRAM} register --stake 100` or bond more");
    }
    let run = chain
        .call(|c| async move { c.training_run().await })
        .await?
        .ok_or_else(|| anyhow!("no training run on chain yet: a validator has nothing to audit"))?;
    let shape = RunShape::of(&run)?;
    if shape.slivers() < 2 {
        bail!("the run has one sliver: its work passes no frames between miners, so there is nothing to audit");
    }
    let data_path = cfg.data.as_ref().ok_or_else(|| {
        anyhow!("dataset missing: the run trains on {:?}; pass --data PATH holding it (first-sliver inputs are rebuilt from it)", run.dataset_id)
    })?;
    let data = Arc::new(sliver_audit::shape::load_dataset(data_path, &run)?);
    let node = keys::node_key(&cfg.data_dir)?;
    let me = node.public().to_peer_id();
    if view.participants.get(&uid).is_some_and(|p| p.peer != me) {
        bail!("the node key in {} is not the one uid {uid} registered; use the data directory you registered with", cfg.data_dir.display());
    }
    let secret = load_or_create_secret(&cfg.data_dir)?;
    let reveals = Reveals::open(&cfg.data_dir)?;

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let hidden = shape.hidden();
    let max_payload = (4 * hidden.iter().product::<usize>() + 2 + 4 * 3) as u64;
    let net = NetworkConfig { relay_server: cfg.relay, mdns: false, ..NetworkConfig::default() }
        .with_max_frame(max_payload);
    let (_status_tx, status) = watch::channel(NodeStatus {
        run: run.id as u64,
        epoch: view.epoch,
        ..NodeStatus::default()
    });
    let (client, _inbound) = sliver_p2p::start_with_metrics(node, net, status, &mut registry)?;
    client.set_peers(Some(view.roles())).await?;
    client.set_frame_gate(Some(Arc::new(NoFrames)));
    let listen =
        cfg.listen.parse().with_context(|| format!("bad listen address {}", cfg.listen))?;
    let bound = client.listen(listen).await?;
    if cfg.relay {
        let _ = client.add_external_address(bound.clone()).await;
    }
    tracing::info!(uid, peer = %me, %bound, relay = cfg.relay, "listening");
    if cfg.metrics_port != 0 {
        match sliver_operator::metrics::serve(([127, 0, 0, 1], cfg.metrics_port).into(), registry)
            .await
        {
            Ok(addr) => tracing::info!(%addr, "metrics"),
            Err(e) => {
                tracing::warn!(error = %e, port = cfg.metrics_port, "metrics endpoint not started")
            }
        }
    }
    let replay = ReplayHandle::spawn(Replayer::new(shape.clone(), data)).map_err(|e| anyhow!(e))?;
    let auditor = Auditor {
        client: client.clone(),
        replay,
        secret,
        rate: cfg.sample_rate,
        run: run.id as u64,
        shape: Arc::new(shape),
        max_payload,
        slots: Arc::new(Semaphore::new(cfg.concurrency)),
        metrics: metrics.clone(),
    };
    let ctx = Context {
        uid,
        account,
        run: run.id as u64,
        chain,
        client,
        auditor,
        reveals,
        metrics,
        stop: sliver_operator::signals::stop_requested(),
        opts,
    };
    Validator::new(ctx).run().await
}
