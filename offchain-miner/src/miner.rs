//! The training loop as an explicit state machine: one [`Miner`] value whose [`Mode`] —
//! waiting for an assignment, training, or away — changes only in named handlers:
//!
//! - [`Miner::on_assigned`]: the chain assigned a sliver for the first time (or again after
//!   an epoch without one); the miner takes that sliver's merged state as the chain's
//!   commitments name it and starts.
//! - [`Miner::on_boundary`]: the chain's epoch changed. Merge with this epoch's replicas
//!   (robustly), commit the merged state on chain (in the background), follow a new
//!   assignment, clear the epoch's bans, and stop if the run asked for it.
//! - [`Miner::on_window_edge`]: the availability window opened or closed (schedule, load, the
//!   pause file, SIGTERM). Leaving tells the neighbours and replicas, finishes what is in
//!   flight and hands the pseudo-gradient over; rejoining tells them it is back.
//! - [`Miner::on_step`]: one optimiser step (first sliver) or one frame (the others).
//!
//! [`Miner::next_event`] looks at the chain view, the window and the stop flag and says which
//! handler runs next; nothing else changes the mode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use sliver_chain::Keypair;
use sliver_engine::merge::Flat;
use sliver_operator::chain::{connection_lost, ChainHandle, ChainTaskError, ChainView};
use sliver_p2p::{Client, FrameGate, IncomingFrame, NodeStatus, PresenceNotice};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::availability::{load_average, Schedule};
use crate::gate::Closed;
use crate::ledger::LedgerKeeper;
use crate::merge::{merge_round, publish_delta, publish_named, weights_name, Merged};
use crate::presence::{announce, Presence};
use crate::routing::{connect_neighbours, neighbours_of, position, Peers, Routing};
use crate::stage::{StageCounters, StageError, StepReport};
use crate::sync::committed_state;
use crate::telemetry::{Event as Tm, Telemetry};
use crate::training::{Origin, Setup, Training};

/// Options of one `run` beyond the configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop after this many epoch boundaries (tests, scripted runs); `None`: run until stopped.
    pub epochs: Option<u64>,
    /// Stop at the boundary into this chain epoch (after merging the epoch before it).
    pub until_epoch: Option<u64>,
}

/// What the miner is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Not assigned a sliver yet: following the chain.
    Waiting,
    /// Inside its window and assigned: training.
    Training,
    /// Outside its window (or not assigned this epoch): following the chain, merging at
    /// boundaries, not training.
    Away,
}

/// What happens next.
#[derive(Debug)]
enum Event {
    /// A sliver is assigned while waiting.
    Assigned(Arc<ChainView>),
    /// The chain's epoch changed.
    Boundary(Arc<ChainView>),
    /// The chain's view changed within the epoch (registrations, a reconnect).
    Refresh(Arc<ChainView>),
    /// The window opened (true) or closed (false).
    WindowEdge(bool),
    /// Train one step.
    Step,
    /// Nothing to do for a moment.
    Idle,
    /// SIGTERM or Ctrl-C: leave cleanly and stop.
    Stop,
}

/// Whether the loop goes on.
enum Flow {
    Continue,
    Done,
}

/// What the miner was given and does not change.
pub struct Context {
    /// Model, run settings, device, data, P2P client, audit log.
    pub setup: Setup,
    /// The chain task.
    pub chain: ChainHandle,
    /// The P2P node.
    pub client: Client,
    /// What the node answers to `Status`.
    pub status: watch::Sender<NodeStatus>,
    /// The figures task.
    pub telemetry: Telemetry,
    /// The ledger task.
    pub ledger: LedgerKeeper,
    /// Who is away, handed-over pseudo-gradients.
    pub presence: Presence,
    /// The sliver this miner is on, for the presence judge.
    pub assigned: watch::Sender<Option<u16>>,
    /// This miner's uid.
    pub uid: u16,
    /// Its account (signs commitments).
    pub account: Keypair,
    /// Steps of this uid's last commitment before this process (commitments never go back).
    pub commit_base: u64,
    /// Run options.
    pub opts: RunOptions,
    /// Availability schedule.
    pub schedule: Schedule,
    /// The pause file.
    pub pause_file: std::path::PathBuf,
    /// Seconds the first sliver waits for gradients.
    pub grad_timeout: Duration,
    /// SIGTERM or Ctrl-C.
    pub stop: watch::Receiver<bool>,
}

/// The miner.
pub struct Miner {
    ctx: Context,
    views: watch::Receiver<Arc<ChainView>>,
    /// The view of the epoch the miner is in (its assignment as the epoch began).
    view: Arc<ChainView>,
    /// The chain task's latest view, as last handled.
    refreshed: Arc<ChainView>,
    frames: mpsc::Receiver<IncomingFrame>,
    epoch: watch::Receiver<u64>,
    mode: Mode,
    training: Option<Training>,
    routing: Routing,
    /// The current stage's counters and steps already reported.
    reported: StageCounters,
    reported_steps: u64,
    /// Steps of the stages before the current one.
    carried_steps: u64,
    boundaries: u64,
    windows: u64,
    commits: Vec<JoinHandle<()>>,
}

impl Miner {
    /// A miner in [`Mode::Waiting`], reading frames from `frames` and the chain's epoch from
    /// `epoch` (which follows the chain task's view).
    pub fn new(
        ctx: Context,
        frames: mpsc::Receiver<IncomingFrame>,
        epoch: watch::Receiver<u64>,
    ) -> Self {
        let views = ctx.chain.subscribe();
        let view = views.borrow().clone();
        Miner {
            ctx,
            views,
            refreshed: view.clone(),
            view,
            frames,
            epoch,
            mode: Mode::Waiting,
            training: None,
            routing: Routing::default(),
            reported: StageCounters::default(),
            reported_steps: 0,
            carried_steps: 0,
            boundaries: 0,
            windows: 0,
            commits: Vec::new(),
        }
    }

    /// Runs until the run's options or a stop signal end it; prints the summary line.
    pub async fn run(mut self) -> anyhow::Result<()> {
        tracing::info!(
            uid = self.ctx.uid,
            "waiting for a sliver assignment (assignments change at epoch boundaries)"
        );
        loop {
            let flow = match self.next_event() {
                Event::Assigned(view) => self.on_assigned(view).await?,
                Event::Boundary(view) => self.on_boundary(view).await?,
                Event::Refresh(view) => self.on_refresh(view).await,
                Event::WindowEdge(open) => self.on_window_edge(open).await?,
                Event::Step => self.on_step().await?,
                Event::Idle => self.idle().await,
                Event::Stop => self.on_stop().await?,
            };
            if let Flow::Done = flow {
                break;
            }
        }
        self.finish().await;
        Ok(())
    }

    /// Which handler runs next.
    fn next_event(&mut self) -> Event {
        let latest = self.views.borrow().clone();
        if *self.ctx.stop.borrow() {
            return Event::Stop;
        }
        if latest.phase.is_none() {
            return Event::Idle;
        }
        if self.training.is_none() {
            if latest.sliver_of(self.ctx.uid).is_some() {
                return Event::Assigned(latest);
            }
            self.view = latest.clone();
            self.refreshed = latest;
            return Event::Idle;
        }
        if latest.epoch != self.view.epoch {
            return Event::Boundary(latest);
        }
        if !Arc::ptr_eq(&latest, &self.refreshed) {
            return Event::Refresh(latest);
        }
        let open = self.window_open();
        match (self.mode, open) {
            (Mode::Training, false) => Event::WindowEdge(false),
            (Mode::Away, true) | (Mode::Waiting, true) => Event::WindowEdge(true),
            (Mode::Training, true) => Event::Step,
            _ => Event::Idle,
        }
    }

    /// Assigned, inside its schedule, not paused.
    fn window_open(&self) -> bool {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.view.sliver_of(self.ctx.uid).is_some()
            && !self.ctx.pause_file.exists()
            && self.ctx.schedule.allows(now.as_secs(), load_average())
    }

    fn sliver(&self) -> Option<u16> {
        self.training.as_ref().map(|t| t.sliver)
    }

    // ---- handlers ----

    /// The first assignment: join the sliver from the replicas' committed state of the epoch
    /// before, or from local weights.
    async fn on_assigned(&mut self, view: Arc<ChainView>) -> anyhow::Result<Flow> {
        let sliver = view.sliver_of(self.ctx.uid).ok_or_else(|| anyhow!("not assigned"))?;
        self.view = view.clone();
        self.refreshed = view.clone();
        self.set_admission().await;
        connect_neighbours(&self.ctx.client, &view, sliver).await;
        let ended = view.epoch.saturating_sub(1);
        let training = self.sync_into(sliver, ended, Duration::from_secs(5)).await?;
        self.enter(training);
        self.mode = Mode::Away; // the window edge decides
        tracing::info!(
            uid = self.ctx.uid,
            sliver,
            of = self.ctx.setup.specs.len(),
            epoch = view.epoch,
            "training"
        );
        Ok(Flow::Continue)
    }

    /// The epoch changed: merge, commit, follow the new assignment.
    async fn on_boundary(&mut self, new: Arc<ChainView>) -> anyhow::Result<Flow> {
        let ended = self.view.epoch;
        // Nothing is receipted while merging: the stage would not process it.
        self.ctx.client.set_frame_gate(Some(Arc::new(Closed)));
        self.report_work(0.0, None);
        let mut untrained = false;
        if let Some(t) = self.training.as_mut() {
            let replicas = Peers::of(&self.view, t.sliver, self.ctx.client.peer_id()).replicas;
            // Commitments carry a step count that never goes back.
            let steps = self.ctx.commit_base + self.carried_steps + t.stage.steps();
            let sliver = t.sliver;
            t.stage.close_audit_epoch();
            match merge_round(t, &self.ctx.status, &replicas, ended, &self.ctx.presence).await {
                Ok(m) if m.trained => self.merged(ended, sliver, replicas.len(), m, steps),
                Ok(_) => untrained = true,
                Err(e) => tracing::warn!(error = %e, "merge failed; continuing from local weights"),
            }
        }
        let previous = self.sliver();
        self.view = new.clone();
        self.refreshed = new.clone();
        match new.sliver_of(self.ctx.uid) {
            Some(s) if Some(s) != previous => {
                connect_neighbours(&self.ctx.client, &new, s).await;
                let training = self.sync_into(s, ended, Duration::from_secs(15)).await?;
                self.enter(training);
                tracing::info!(from = ?previous, to = s, "assigned another sliver");
            }
            Some(s) if untrained => {
                // No pseudo-gradient of its own to judge the others' by: take the state a
                // majority of the replicas committed, or keep its weights.
                match self.committed(s, ended, Duration::from_secs(15)).await? {
                    Some(training) => {
                        self.enter(training);
                        tracing::info!(
                            epoch = ended,
                            "did not train this epoch; took the replicas' committed state"
                        );
                    }
                    None => {
                        tracing::info!(epoch = ended, "did not train this epoch; kept its weights")
                    }
                }
            }
            Some(_) => {}
            None => tracing::info!("not assigned this epoch"),
        }
        if let Some(t) = self.training.as_mut() {
            t.stage.enter_epoch(new.epoch, Some(neighbours_of(&new, t.sliver)));
        }
        self.routing.reset();
        self.ctx.presence.new_epoch();
        self.ctx.client.clear_bans().await;
        self.set_admission().await;
        // Neighbours route to this miner once its status names the new epoch: now.
        self.serve(self.mode == Mode::Training && new.sliver_of(self.ctx.uid).is_some());
        self.ctx.telemetry.send(Tm::Chain { epoch: new.epoch, phase: new.phase.clone() });
        self.boundaries += 1;
        let opts = &self.ctx.opts;
        if opts.epochs.is_some_and(|n| self.boundaries >= n)
            || opts.until_epoch.is_some_and(|e| new.epoch >= e)
        {
            tracing::info!(boundaries = self.boundaries, "done");
            return Ok(Flow::Done);
        }
        Ok(Flow::Continue)
    }

    /// New registrations or a reconnect within the epoch. The assignment stays the one the
    /// epoch began with: a uid freed mid-epoch would otherwise renumber every later route,
    /// and neighbours that refreshed at different moments would disagree about whose route is
    /// whose.
    async fn on_refresh(&mut self, view: Arc<ChainView>) -> Flow {
        let registry_changed = view.participants != self.view.participants;
        let mut frozen = (*view).clone();
        frozen.assignment = self.view.assignment.clone();
        self.view = Arc::new(frozen);
        self.refreshed = view;
        if registry_changed {
            self.set_admission().await;
        }
        if let Some(t) = &self.training {
            t.stage.set_neighbours(neighbours_of(&self.view, t.sliver));
        }
        self.ctx
            .telemetry
            .send(Tm::Chain { epoch: self.view.epoch, phase: self.view.phase.clone() });
        Flow::Continue
    }

    /// The window opened or closed.
    async fn on_window_edge(&mut self, open: bool) -> anyhow::Result<Flow> {
        let Some(sliver) = self.sliver() else { return Ok(Flow::Continue) };
        let peers = Peers::of(&self.view, sliver, self.ctx.client.peer_id());
        let mut notice = PresenceNotice {
            run: self.ctx.setup.run_id as u64,
            epoch: self.view.epoch,
            sliver,
            available: open,
            merge: None,
        };
        self.mode = if open { Mode::Training } else { Mode::Away };
        // Leaving: neighbours stop routing here now, but the gate stays open until what is in
        // flight is finished.
        self.announce_serving(open);
        if open {
            self.open_gate(true);
        }
        let told = announce(&self.ctx.client, &peers.all(), notice).await;
        if open {
            if self.windows > 0 {
                tracing::info!(told, "rejoined the pipeline");
                self.ctx.ledger.window_joined();
            }
            self.windows += 1;
            return Ok(Flow::Continue);
        }
        // Leaving: neighbours stop sending work, what is in flight is finished, the replicas
        // get this epoch's pseudo-gradient.
        let following = self.routing.next.map(|(p, _)| p);
        let quiet = Duration::from_millis(500);
        let limit = self.ctx.grad_timeout.clamp(Duration::from_secs(1), Duration::from_secs(30));
        let began = Instant::now();
        let Some(t) = self.training.as_mut() else { return Ok(Flow::Continue) };
        let before = t.stage.counters.tokens;
        let reports = match t.stage.drain(&mut self.frames, following, quiet, limit).await {
            Ok(r) => r,
            Err(StageError::Stopped) => bail!("the P2P node stopped"),
            Err(e) => {
                tracing::warn!(error = %e, "in-flight micro-batches not finished");
                Vec::new()
            }
        };
        let finished = t.stage.counters.tokens - before;
        self.ctx.client.set_frame_gate(Some(Arc::new(Closed)));
        let handed = match publish_delta(t, &self.ctx.status, self.view.epoch) {
            Ok((_, Some((hash, _)))) => {
                notice.merge = Some(hash);
                announce(&self.ctx.client, &peers.replicas, notice).await
            }
            Ok((_, None)) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "pseudo-gradient not handed over");
                0
            }
        };
        // The drained work counts as trained time (the mode already says away).
        self.mode = Mode::Training;
        for r in &reports {
            self.report_work(0.0, r.loss);
        }
        self.report_work(began.elapsed().as_secs_f64(), None);
        self.mode = Mode::Away;
        tracing::info!(
            told,
            of = peers.all().len(),
            finished_tokens = finished,
            handed_to = handed,
            replicas = peers.replicas.len(),
            "left the pipeline (outside the availability window, paused or stopping)"
        );
        self.routing.drop_next();
        Ok(Flow::Continue)
    }

    /// One optimiser step (first sliver) or one frame (the others).
    async fn on_step(&mut self) -> anyhow::Result<Flow> {
        let Some(t) = self.training.as_mut() else { return Ok(Flow::Continue) };
        let sliver = t.sliver;
        let began = Instant::now();
        let route = position(&self.view, sliver, self.ctx.uid);
        self.routing.dial_if_due(&self.ctx.client, &self.view, sliver);
        let next = if t.stage.trainer.spec.is_last() {
            None
        } else {
            self.routing
                .next_hop(&self.ctx.client, &self.view, sliver + 1, route, &self.ctx.presence)
                .await
        };
        let report: Option<StepReport> = if t.stage.trainer.spec.is_first() {
            t.stage.set_route(route);
            let Some((peer, _)) = next else {
                tracing::warn!(sliver = sliver + 1, "no live miner of the next sliver; waiting");
                tokio::time::sleep(Duration::from_secs(2)).await;
                return Ok(Flow::Continue);
            };
            match t.stage.first_step(peer, &mut self.frames, &mut self.epoch).await {
                Ok(r) => {
                    if !r.interrupted {
                        self.routing.record(peer, r.completed, began.elapsed());
                    }
                    if r.dropped > 0 && !r.interrupted {
                        tracing::warn!(%peer, dropped = r.dropped, "micro-batches dropped; re-routing");
                        self.routing.exclude(peer);
                    }
                    Some(r)
                }
                Err(StageError::Stopped) => bail!("the P2P node stopped"),
                Err(e) => {
                    tracing::warn!(error = %e, "step failed");
                    None
                }
            }
        } else {
            let following = next.map(|(p, _)| p);
            let r = match tokio::time::timeout(Duration::from_secs(1), self.frames.recv()).await {
                Ok(Some(frame)) => match t.stage.handle(frame, following).await {
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
            if let Some(peer) = t.stage.take_unreachable() {
                // The next sliver's miner is gone: later micro-batches go to another one.
                tracing::warn!(%peer, "next sliver's miner unreachable; re-routing");
                self.routing.exclude(peer);
            }
            r
        };
        self.ctx.telemetry.send(Tm::Next(self.routing.next));
        self.report_work(began.elapsed().as_secs_f64(), report.and_then(|r| r.loss));
        Ok(Flow::Continue)
    }

    /// SIGTERM or Ctrl-C: leave the pipeline as the pause file would, then stop.
    async fn on_stop(&mut self) -> anyhow::Result<Flow> {
        if self.mode == Mode::Training {
            self.on_window_edge(false).await?;
        }
        tracing::info!("stopping on request");
        Ok(Flow::Done)
    }

    /// Waits a moment (or until the chain or the stop flag changes), dropping frames sent by
    /// peers that had not heard this miner left.
    async fn idle(&mut self) -> Flow {
        self.serve(false);
        let mut views = self.views.clone();
        let mut stop = self.ctx.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = views.changed() => {}
            _ = stop.changed() => {}
        }
        let mut discarded = 0;
        while self.frames.try_recv().is_ok() {
            discarded += 1;
        }
        if discarded > 0 {
            tracing::debug!(discarded, "frames received while away discarded");
        }
        Flow::Continue
    }

    // ---- helpers ----

    /// Commits the merged state of `sliver` at the end of `ended` (in the background: the
    /// next epoch's training does not wait for finality) and counts the merge.
    fn merged(&mut self, ended: u64, sliver: u16, replicas: usize, m: Merged, steps: u64) {
        // Merges this miner contributed to (each is followed by a commitment).
        self.ctx.telemetry.send(Tm::Merged {
            with: m.with,
            clipped: m.clipped,
            applied: m.applied,
            secs: m.took.as_secs_f64(),
        });
        tracing::info!(
            epoch = ended,
            sliver,
            replicas = m.with,
            of = replicas,
            size = m.size,
            clipped = m.clipped,
            "merged"
        );
        let (chain, account, uid) =
            (self.ctx.chain.clone(), self.ctx.account.clone(), self.ctx.uid);
        let telemetry = self.ctx.telemetry.clone();
        self.commits.retain(|h| !h.is_finished());
        self.commits.push(tokio::spawn(async move {
            // A commitment is read as the merge of the epoch before the one it lands in: one
            // that could only land later would be read as another epoch's, so it is not sent.
            if chain.view().epoch > ended + 1 {
                tracing::warn!(epoch = ended, "too late to commit this merge; skipped");
                return;
            }
            match commit(&chain, account, uid, m.hash, m.size, steps).await {
                Ok(()) => telemetry.send(Tm::Committed),
                Err(e) => tracing::warn!(error = %e, "weight commitment not published"),
            }
        }));
    }

    /// A trainer for `sliver` from the state its replicas merged at the end of `ended`, as the
    /// chain's commitments name it (waiting at most `wait` for them), else from local weights.
    async fn sync_into(
        &mut self,
        sliver: u16,
        ended: u64,
        wait: Duration,
    ) -> anyhow::Result<Training> {
        match self.committed(sliver, ended, wait).await? {
            Some(training) => Ok(training),
            None => Ok(self.ctx.setup.train(sliver, None)?.0),
        }
    }

    /// A trainer for `sliver` from the state a majority of its replicas committed at the end
    /// of `ended` (waiting at most `wait`), or `None` if there is no such state to be had.
    async fn committed(
        &mut self,
        sliver: u16,
        ended: u64,
        wait: Duration,
    ) -> anyhow::Result<Option<Training>> {
        let like: Flat = self.ctx.setup.like(sliver)?;
        let synced = committed_state(
            &self.ctx.chain,
            &self.ctx.client,
            &self.view,
            sliver,
            ended,
            &like,
            wait,
        )
        .await;
        let state = match synced {
            Ok((state, _)) => state,
            Err(e) => {
                tracing::info!(sliver, error = %e, "no verified weights from the replicas");
                return Ok(None);
            }
        };
        let (training, origin) = self.ctx.setup.train(sliver, Some(state))?;
        if origin == Origin::Synced {
            self.ctx.telemetry.send(Tm::Synced);
            // Serve them too: a replica that restarts may ask any miner of the sliver.
            if let Ok(h) = self.ctx.client.publish_blob(training.state().encode()) {
                publish_named(
                    &self.ctx.status,
                    &self.ctx.client,
                    weights_name(sliver, ended),
                    h,
                    ended,
                );
            }
        }
        Ok(Some(training))
    }

    /// Makes `training` the current sliver.
    fn enter(&mut self, mut training: Training) {
        if let Some(old) = &self.training {
            self.carried_steps += old.stage.steps();
        }
        training
            .stage
            .enter_epoch(self.view.epoch, Some(neighbours_of(&self.view, training.sliver)));
        // Mid-epoch (a restart, a first assignment) step numbers must not repeat what this
        // miner sent before in this epoch: number them from the time in milliseconds.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        training.stage.start_steps_at(now.map(|d| d.as_millis() as u64).unwrap_or(0));
        self.reported = StageCounters::default();
        self.reported_steps = 0;
        let _ = self.ctx.assigned.send_replace(Some(training.sliver));
        self.ctx.telemetry.send(Tm::Mode {
            training: self.mode == Mode::Training,
            sliver: Some(training.sliver),
        });
        self.training = Some(training);
        // The new stage took over the transport's gate; it stays closed unless training.
        self.open_gate(self.mode == Mode::Training);
    }

    /// Sends the work the current stage did since the last report.
    fn report_work(&mut self, secs: f64, loss: Option<f32>) {
        let Some(t) = &self.training else { return };
        let c = &t.stage.counters;
        self.ctx.telemetry.send(Tm::Work {
            steps: t.stage.steps() - self.reported_steps,
            skipped: c.steps_skipped - self.reported.steps_skipped,
            tokens: c.tokens - self.reported.tokens,
            bytes_sent: c.bytes_sent - self.reported.bytes_sent,
            dropped: c.dropped - self.reported.dropped,
            refused: c.frames_refused - self.reported.frames_refused,
            secs: if self.mode == Mode::Training { secs } else { 0.0 },
            loss,
        });
        self.reported = c.clone();
        self.reported_steps = t.stage.steps();
    }

    /// What the node's status says it serves: this sliver while training.
    fn serve(&self, training: bool) {
        self.announce_serving(training);
        self.open_gate(training);
    }

    /// The node's status: this sliver while training, nothing otherwise.
    fn announce_serving(&self, training: bool) {
        let serving: Vec<u16> =
            if training { self.sliver().into_iter().collect() } else { Vec::new() };
        let epoch = self.view.epoch;
        self.ctx.status.send_if_modified(|st| {
            let changed = st.slivers != serving || st.epoch != epoch;
            st.slivers.clone_from(&serving);
            st.epoch = epoch;
            changed
        });
        self.ctx.telemetry.send(Tm::Mode { training, sliver: self.sliver() });
    }

    /// Lets frames through to the stage while training; refuses them otherwise (no receipt
    /// for work this miner would not do).
    fn open_gate(&self, training: bool) {
        let gate: Arc<dyn FrameGate> = match (&self.training, training) {
            (Some(t), true) => t.stage.gate().clone(),
            _ => Arc::new(Closed),
        };
        self.ctx.client.set_frame_gate(Some(gate));
    }

    /// Admits the chain's registered peers only.
    async fn set_admission(&self) {
        if let Err(e) = self.ctx.client.set_peers(Some(self.view.roles())).await {
            tracing::warn!(error = %e, "could not update the admitted peers");
        }
    }

    /// Waits for commitments in flight, prints the summary, saves the ledger, stops the node.
    async fn finish(&mut self) {
        self.report_work(0.0, None);
        for h in self.commits.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(60), h).await;
        }
        let figures = self.ctx.telemetry.figures().await;
        println!("{}", figures.summary(self.ctx.uid));
        self.ctx.ledger.flush().await;
        self.ctx.client.shutdown().await;
    }
}

/// Publishes the commitment to merged state `hash` at `step`. If the node went away (the
/// transaction's fate unknown), waits for the chain task to reconnect (at most 60 s in all),
/// reads the uid's commitment, and sends again only if this one is not there: a transaction
/// that did land is not sent twice. (Each send takes its nonce from the node.)
async fn commit(
    chain: &ChainHandle,
    account: Keypair,
    uid: u16,
    hash: [u8; 32],
    size: u64,
    step: u64,
) -> Result<(), ChainTaskError> {
    let send = |account: Keypair| {
        chain.call(move |c| async move {
            c.publish_weight_commitment(&account, hash, size, step).await.map(|_| ())
        })
    };
    let again = async {
        match send(account.clone()).await {
            Ok(()) => return Ok(()),
            Err(ChainTaskError::Chain(e))
                if connection_lost(&e)
                    || matches!(e, sliver_chain::ChainError::Transaction { .. }) =>
            {
                tracing::warn!(error = %e, "weight commitment not confirmed; checking the chain");
            }
            Err(e) => return Err(e),
        }
        let landed = chain.call(move |c| async move { c.weight_commitment(uid).await }).await?;
        if landed.is_some_and(|c| c.hash.0 == hash && c.step == step) {
            tracing::info!(step, "the commitment had landed; not sent again");
            return Ok(());
        }
        send(account).await
    };
    match tokio::time::timeout(Duration::from_secs(60), again).await {
        Ok(r) => r,
        Err(_) => {
            Err(ChainTaskError::Chain(sliver_chain::ChainError::Timeout(Duration::from_secs(60))))
        }
    }
}
