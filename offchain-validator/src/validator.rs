//! The validator's loop, as an explicit state machine: one [`Validator`] value, one handler per
//! event.
//!
//! - [`Validator::on_epoch`]: a new chain epoch `e` began. The miners' work of `e - 1` is done
//!   and the audit seed of `e` is drawn, so the validator audits `e - 1` now, until the
//!   deadline (one second into the Commit phase of `e`).
//! - [`Validator::on_commit`]: the Commit phase. The scores become weights; their commitment
//!   (with a fresh salt, persisted first) goes on chain.
//! - [`Validator::on_reveal`]: the Reveal phase. The weights committed this epoch, read back
//!   from disk (so a restart in between still reveals), are revealed; the chain settles the
//!   epoch at the next boundary.
//! - [`Validator::on_stop`]: SIGTERM, Ctrl-C or the run's last epoch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sliver_audit::Neighbourhood;
use sliver_chain::{Keypair, Phase, Uid};
use sliver_operator::chain::{ChainHandle, ChainView};
use sliver_p2p::{Client, PeerId};
use tokio::sync::watch;

use crate::audit::{Auditor, Committed, CommittedSliver, Deadline, Plan, Target};
use crate::metrics::Metrics;
use crate::reveal::Reveals;
use crate::score::{self, MinerAudit};

/// When to stop.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// After this many epoch boundaries.
    pub epochs: Option<u64>,
    /// At the boundary into this epoch.
    pub until_epoch: Option<u64>,
}

/// What the validator needs from the setup.
pub struct Context {
    /// Its uid.
    pub uid: Uid,
    /// Its account (signs commits and reveals).
    pub account: Keypair,
    /// The run.
    pub run: u64,
    /// The chain task.
    pub chain: ChainHandle,
    /// The transport.
    pub client: Client,
    /// The auditor.
    pub auditor: Auditor,
    /// Pending reveals.
    pub reveals: Reveals,
    /// Metrics.
    pub metrics: Metrics,
    /// Stop requests.
    pub stop: watch::Receiver<bool>,
    /// When to stop.
    pub opts: RunOptions,
}

enum Event {
    Epoch(Arc<ChainView>),
    Commit(Arc<ChainView>),
    Reveal(Arc<ChainView>),
    Stop,
}

enum Flow {
    Continue,
    Done,
}

/// Totals for the summary line.
#[derive(Debug, Default)]
struct Totals {
    epochs: u64,
    replayed: u64,
    passed: u64,
    failed: u64,
    unanswered: u64,
    commits: u64,
    reveals: u64,
    flagged: BTreeMap<Uid, u64>,
}

/// The validator.
pub struct Validator {
    ctx: Context,
    views: watch::Receiver<Arc<ChainView>>,
    /// The chain epoch last handled.
    epoch: Option<u64>,
    /// Phase handlers already run in this epoch.
    committed: bool,
    revealed: bool,
    /// The audits done in this chain epoch (of the epoch before it).
    audits: Option<(u64, Vec<MinerAudit>)>,
    boundaries: u64,
    totals: Totals,
}

impl Validator {
    /// A validator over `ctx`.
    pub fn new(ctx: Context) -> Self {
        let views = ctx.chain.subscribe();
        Validator {
            ctx,
            views,
            epoch: None,
            committed: false,
            revealed: false,
            audits: None,
            boundaries: 0,
            totals: Totals::default(),
        }
    }

    /// Runs until stopped; prints the summary line.
    pub async fn run(mut self) -> anyhow::Result<()> {
        tracing::info!(uid = self.ctx.uid, "validating (audits of each epoch run in the next)");
        loop {
            let flow = match self.next_event().await {
                Event::Epoch(v) => self.on_epoch(v).await,
                Event::Commit(v) => self.on_commit(v).await,
                Event::Reveal(v) => self.on_reveal(v).await,
                Event::Stop => self.on_stop().await,
            };
            if let Flow::Done = flow {
                break;
            }
        }
        let t = &self.totals;
        let flagged: Vec<String> = t.flagged.iter().map(|(u, n)| format!("{u}:{n}")).collect();
        println!(
            "SUMMARY uid={} epochs={} replayed={} passed={} failed={} unanswered={} commits={} reveals={} flagged={}",
            self.ctx.uid,
            t.epochs,
            t.replayed,
            t.passed,
            t.failed,
            t.unanswered,
            t.commits,
            t.reveals,
            flagged.join(",")
        );
        Ok(())
    }

    async fn next_event(&mut self) -> Event {
        loop {
            if *self.ctx.stop.borrow() {
                return Event::Stop;
            }
            let view = self.views.borrow_and_update().clone();
            if view.connected && view.phase.is_some() {
                if self.epoch != Some(view.epoch) {
                    return Event::Epoch(view);
                }
                match view.phase {
                    Some(Phase::Commit) if !self.committed => return Event::Commit(view),
                    Some(Phase::Reveal) if !self.revealed => return Event::Reveal(view),
                    _ => {}
                }
            }
            let mut stop = self.ctx.stop.clone();
            // The view changes only when the chain does; a commit or reveal that failed is
            // tried again on the tick.
            tokio::select! {
                r = self.views.changed() => if r.is_err() { return Event::Stop },
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    // ---- handlers ----

    async fn on_epoch(&mut self, view: Arc<ChainView>) -> Flow {
        if self.epoch.is_some() {
            self.boundaries += 1;
        }
        self.epoch = Some(view.epoch);
        self.committed = false;
        self.revealed = false;
        self.audits = None;
        let opts = self.ctx.opts;
        if opts.epochs.is_some_and(|n| self.boundaries >= n)
            || opts.until_epoch.is_some_and(|e| view.epoch >= e)
        {
            tracing::info!(boundaries = self.boundaries, "done");
            return Flow::Done;
        }
        let _ = self.ctx.client.set_peers(Some(view.roles())).await;
        self.ctx.client.clear_bans().await;
        if view.phase != Some(Phase::Train) {
            tracing::info!(
                epoch = view.epoch,
                "started after the Train phase; auditing from the next epoch"
            );
            return Flow::Continue;
        }
        let Some(plan) = self.plan(&view).await else { return Flow::Continue };
        let deadline = self.deadline(view.epoch);
        let started = std::time::Instant::now();
        let (audits, val_loss) = self.ctx.auditor.audit(&plan, &deadline).await;
        self.ctx.metrics.audited_epoch.set(plan.epoch as i64);
        if let Some(l) = val_loss {
            self.ctx.metrics.val_loss.set(f64::from(l));
        }
        self.report(&plan, &audits, val_loss, started.elapsed());
        self.audits = Some((view.epoch, audits));
        Flow::Continue
    }

    /// Commits this epoch's weights; a failed submission is tried again at the next block
    /// of the phase.
    async fn on_commit(&mut self, view: Arc<ChainView>) -> Flow {
        let Some((epoch, audits)) = self.audits.as_ref().filter(|(e, _)| *e == view.epoch) else {
            self.committed = true;
            return Flow::Continue;
        };
        let epoch = *epoch as u32;
        let kept = self.ctx.reveals.load(epoch);
        if kept.as_ref().is_some_and(|p| p.committed) {
            self.committed = true;
            return Flow::Continue;
        }
        let weights = score::weights(audits);
        if weights.is_empty() {
            self.committed = true;
            tracing::info!(epoch, "no miner earned a score this epoch; nothing to commit");
            return Flow::Continue;
        }
        // An attempt of this epoch already on disk keeps its salt: its commit may have landed.
        let prepared = match kept {
            Some(p) => Ok(p),
            None => Reveals::prepare(epoch, epoch.saturating_sub(1), &weights),
        };
        let mut pending = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.committed = true;
                tracing::error!(error = %e, "weights not committed");
                return Flow::Continue;
            }
        };
        if let Err(e) = self.ctx.reveals.save(&pending) {
            // Without the salt on disk a restart could not reveal: do not commit.
            tracing::error!(error = %e, "weights not committed");
            return Flow::Continue;
        }
        let who = sliver_chain::account_of(&self.ctx.account);
        let hash =
            sliver_chain::commit_hash(&who, epoch, &pending.uids, &pending.weights, &pending.salt);
        let account = self.ctx.account.clone();
        let sent = self
            .ctx
            .chain
            .call(move |c| async move { c.commit_weights(&account, hash).await })
            .await;
        match sent {
            Ok(_) => {}
            Err(e) if e.to_string().contains("AlreadyCommitted") => {}
            Err(e) => {
                tracing::warn!(epoch, error = %e, "weight commit failed; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Flow::Continue;
            }
        }
        self.committed = true;
        pending.committed = true;
        let _ = self.ctx.reveals.save(&pending);
        self.ctx.metrics.commits.inc();
        self.totals.commits += 1;
        tracing::info!(epoch, miners = weights.len(), ?weights, "weights committed");
        Flow::Continue
    }

    /// Reveals the weights committed this epoch (read back from disk); a failed submission is
    /// tried again at the next block of the phase.
    async fn on_reveal(&mut self, view: Arc<ChainView>) -> Flow {
        let epoch = view.epoch as u32;
        let Some(mut pending) = self.ctx.reveals.load(epoch).filter(|p| !p.revealed) else {
            self.revealed = true;
            return Flow::Continue;
        };
        let account = self.ctx.account.clone();
        let (uids, weights, salt) = (pending.uids.clone(), pending.weights.clone(), pending.salt);
        let sent = self
            .ctx
            .chain
            .call(move |c| async move { c.reveal_weights(&account, uids, weights, salt).await })
            .await;
        match sent {
            Ok(_) => {}
            Err(e) if e.to_string().contains("AlreadyRevealed") => {}
            Err(e) if e.to_string().contains("NoCommit") => {
                self.revealed = true;
                tracing::warn!(
                    epoch,
                    "nothing of ours was committed this epoch; nothing to reveal"
                );
                return Flow::Continue;
            }
            Err(e) => {
                tracing::warn!(epoch, error = %e, "weight reveal failed; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Flow::Continue;
            }
        }
        self.revealed = true;
        pending.revealed = true;
        let _ = self.ctx.reveals.save(&pending);
        self.ctx.metrics.reveals.inc();
        self.totals.reveals += 1;
        tracing::info!(epoch, audited = pending.audited, "weights revealed");
        Flow::Continue
    }

    /// SIGTERM or Ctrl-C: weights committed this epoch are revealed first (waiting for the
    /// Reveal phase, 20 s at most), so the stop does not make this validator silent.
    async fn on_stop(&mut self) -> Flow {
        let Some(epoch) = self.epoch else { return Flow::Done };
        let pending = self.ctx.reveals.load(epoch as u32).filter(|p| p.committed && !p.revealed);
        if pending.is_none() {
            return Flow::Done;
        }
        tracing::info!(
            epoch,
            "stopping after the Reveal phase: this epoch's weights are committed"
        );
        let mut views = self.views.clone();
        let reveal = |v: &Arc<ChainView>| v.epoch != epoch || v.phase == Some(Phase::Reveal);
        let _ = tokio::time::timeout(Duration::from_secs(20), views.wait_for(reveal)).await;
        let view = self.views.borrow().clone();
        if view.epoch == epoch && view.phase == Some(Phase::Reveal) {
            self.revealed = false;
            let _ = self.on_reveal(view).await;
        }
        Flow::Done
    }

    // ---- helpers ----

    /// What to audit: the previous epoch's assignment, with the audit seed of this one.
    async fn plan(&self, view: &ChainView) -> Option<Plan> {
        let (prev, slivers) = view.previous.clone()?;
        if prev + 1 != view.epoch || slivers.is_empty() {
            return None;
        }
        // The seed is read at the finalized block, a block or two behind the view.
        let mut seed = None;
        for _ in 0..20 {
            match self.ctx.chain.call(|c| async move { c.audit_seed().await }).await {
                Ok((e, s)) if e as u64 == view.epoch => {
                    seed = Some(s);
                    break;
                }
                Ok((e, _)) if (e as u64) > view.epoch => return None,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "no audit seed yet"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let Some(seed) = seed else {
            tracing::warn!(
                epoch = view.epoch,
                "the audit seed was not finalized in 5 s; epoch not audited"
            );
            return None;
        };
        let peers_of = |s: Option<u16>| -> Vec<PeerId> {
            s.and_then(|s| slivers.get(&s))
                .map(|uids| {
                    uids.iter().filter_map(|u| view.participants.get(u)).map(|p| p.peer).collect()
                })
                .unwrap_or_default()
        };
        let firsts = peers_of(Some(0));
        let mut targets = Vec::new();
        for (&sliver, uids) in &slivers {
            for uid in uids {
                let Some(p) = view.participants.get(uid) else { continue };
                let hood = Neighbourhood {
                    run: self.ctx.run,
                    epoch: prev,
                    miner: p.peer,
                    sliver,
                    previous: peers_of(sliver.checked_sub(1)),
                    next: peers_of(sliver.checked_add(1)),
                    route: (sliver == 0)
                        .then(|| firsts.iter().position(|f| *f == p.peer).map(|i| i as u64))
                        .flatten(),
                };
                targets.push(Target { uid: *uid, addrs: p.addrs.clone(), hood });
            }
        }
        // What the audited epoch started from, and what this validator saw of the one before.
        let committed = self.committed(view, prev).await;
        let before: &[MinerAudit] = match &self.audits {
            Some((e, audits)) if *e == prev => audits,
            _ => &[],
        };
        let remembered = before
            .iter()
            .map(|a| (a.uid, a.first_weights.into_iter().chain(a.last_weights).collect()))
            .collect();
        let optim_before = before.iter().filter_map(|a| Some((a.uid, a.end_optim?))).collect();
        Some(Plan { epoch: prev, seed, targets, committed, remembered, optim_before })
    }

    /// By sliver, the merged states its miners of epoch `audited - 1` committed during
    /// `audited` (read at the audited epoch's last block: by now they may have committed
    /// again). Empty where the chain cannot say (a pruned block, the run's first epoch).
    async fn committed(&self, view: &ChainView, audited: u64) -> BTreeMap<u16, CommittedSliver> {
        let mut out: BTreeMap<u16, CommittedSliver> = BTreeMap::new();
        let Some(last) = view.epoch_start.checked_sub(1) else { return out };
        let chain = &self.ctx.chain;
        let read = async {
            let (info, _) =
                chain.call(move |c| async move { c.epoch_and_assignments_at(last).await }).await?;
            let Some(before) = info.epoch_start.checked_sub(1) else { return Ok(Vec::new()) };
            let (_, assigned) = chain
                .call(move |c| async move { c.epoch_and_assignments_at(before).await })
                .await?;
            let uids: Vec<Uid> = assigned.iter().map(|(u, _)| *u).collect();
            let commits = chain
                .call(move |c| async move { c.weight_commitments_at(&uids, last).await })
                .await?;
            Ok::<_, sliver_operator::chain::ChainTaskError>(
                assigned.into_iter().zip(commits).map(|((u, s), (_, c))| (u, s, c)).collect(),
            )
        };
        match read.await {
            Ok(list) => {
                for (uid, sliver, c) in list {
                    let entry = out.entry(sliver).or_default();
                    entry.replicas += 1;
                    let (Some(c), Some(p)) = (c, view.participants.get(&uid)) else { continue };
                    if c.epoch as u64 == audited {
                        entry.states.push(Committed {
                            uid,
                            peer: p.peer,
                            hash: c.hash.0,
                            size: c.size,
                        });
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "commitments of the epoch before not read"),
        }
        out
    }

    /// A deadline one second into the Commit phase of `epoch` (or when the epoch ends).
    fn deadline(&self, epoch: u64) -> Deadline {
        let (tx, rx) = watch::channel(false);
        let mut views = self.views.clone();
        tokio::spawn(async move {
            let _ = views.wait_for(|v| v.epoch != epoch || v.phase != Some(Phase::Train)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = tx.send(true);
        });
        Deadline::new(rx)
    }

    fn report(&mut self, plan: &Plan, audits: &[MinerAudit], val: Option<f32>, took: Duration) {
        let t = &mut self.totals;
        t.epochs += 1;
        for a in audits {
            t.replayed += a.sampled as u64;
            t.passed += a.passed as u64;
            t.failed += a.failures.len() as u64;
            t.unanswered += a.unanswered as u64;
            if !a.clean() {
                *t.flagged.entry(a.uid).or_default() += 1;
                tracing::warn!(uid = a.uid, sliver = a.sliver, unanswered = a.unanswered, failures = ?a.failures, "miner flagged: scores zero this epoch");
            }
        }
        let line: Vec<String> = audits
            .iter()
            .map(|a| {
                format!(
                    "uid {} s{}: work {} checked {}/{}{}",
                    a.uid,
                    a.sliver,
                    a.work,
                    a.passed,
                    a.sampled,
                    if a.clean() { "" } else { " FLAGGED" }
                )
            })
            .collect();
        let loss: Vec<f32> = audits.iter().flat_map(|a| a.losses.iter().copied()).collect();
        let mean = (!loss.is_empty()).then(|| loss.iter().sum::<f32>() / loss.len() as f32);
        println!(
            "[validator uid {}] audited epoch {} in {:.1} s | {} | first weights tied to the chain {}/{} | train loss of replayed micro-batches {} | held-out loss of the merged model it started from {}",
            self.ctx.uid,
            plan.epoch,
            took.as_secs_f64(),
            line.join(" | "),
            audits.iter().filter(|a| a.start_checked).count(),
            audits.len(),
            mean.map(|l| format!("{l:.3}")).unwrap_or_else(|| "-".into()),
            val.map(|l| format!("{l:.3}")).unwrap_or_else(|| "-".into())
        );
    }
}
