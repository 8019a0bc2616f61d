//! One miner's pipeline stage over the network: the networked counterpart of the engine's
//! in-process `Pipeline`.
//!
//! - The **first** sliver drives: for each optimiser step it builds `micro_batches` micro-batches
//!   by the engine's deterministic sampling (key: run, epoch, route, step, index), sends each
//!   activation to a miner of the next sliver, then waits for the gradients to come back and
//!   steps. A gradient that does not come back within `grad_timeout` (neighbour gone) drops that
//!   micro-batch and is counted; it never hangs the stage.
//! - A **middle** sliver forwards activations to the next sliver and gradients back to the
//!   miner the activation came from.
//! - The **last** sliver rebuilds the targets from the same key (every miner holds the dataset,
//!   so no tokens cross the network), computes the loss and sends the gradient back at once.
//!
//! With an [`AuditLog`] attached, every frame received and sent (with its receipt), a record
//! of every optimiser step and, every `audit_every` steps, a snapshot of the weights and the
//! optimiser state are recorded, so validators can replay any segment of steps.
//!
//! Frames name the sender's sliver, the route (the data replica of the first sliver's miner),
//! the step and the micro-batch. The stage's [`StageGate`] is the transport's frame gate: a
//! frame is read, delivered and receipted only if the chain assigned its sender to the
//! neighbouring sliver this epoch and it fits the schedule (see [`crate::gate`]); what still
//! does not fit when the stage handles it is refused and counted, never a panic. A gradient or
//! activation that makes the loss or the gradient norm non-finite strikes its sender and is
//! dropped; a step whose accumulated gradient is not finite is skipped, so the weights never
//! become non-finite.
//!
//! Differences from the in-process pipeline, which is bitwise equal to the monolithic model:
//! each sliver clips its own gradient norm, and embeddings are untied across machines (the
//! tied-gradient exchange between the first and last sliver is not on the wire yet).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sliver_engine::codec::{decode_tensor, encode_tensor};
use sliver_engine::data::{BatchKey, Dataset, Split};
use sliver_engine::optim::LrSchedule;
use sliver_engine::{EngineError, SliverInput, SliverTrainer};
use sliver_p2p::{
    AuditKey, Client, Direction, FrameHeader, IncomingFrame, P2pError, PeerId, Reply, StepEntry,
};
use sliver_wire::WireCodec;
use tokio::sync::{mpsc, watch};

use crate::audit::AuditLog;
use crate::gate::{GateConfig, Neighbours, StageGate};
use crate::outbox::{Outbox, Outcome, Outgoing};

/// What a stage needs to know about the run it trains in.
#[derive(Clone, Debug)]
pub struct StageConfig {
    /// Training run (from the chain).
    pub run: u64,
    /// Epoch (from the chain).
    pub epoch: u64,
    /// Data replica of the first sliver's miner; the route of every frame it starts.
    pub route: u64,
    /// Micro-batches per optimiser step (per route for slivers after the first).
    pub micro_batches: u64,
    /// Rows per micro-batch.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Codec of the activations and gradients this stage sends.
    pub codec: WireCodec,
    /// Learning-rate schedule over optimiser steps.
    pub lr: LrSchedule,
    /// Largest gradient norm of this sliver (0: no clipping).
    pub clip: f64,
    /// How long the first sliver waits for the gradients of one step.
    pub grad_timeout: Duration,
    /// The audit log keeps the weights and the optimiser state every this many steps (and at
    /// the first step after a start); a validator replays up to this many steps to check one.
    pub audit_every: u64,
}

/// What one optimiser step did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepReport {
    /// Optimiser steps taken so far, this one included.
    pub steps: u64,
    /// Micro-batches that completed forward and backward.
    pub completed: u64,
    /// Micro-batches dropped (neighbour gone or too slow).
    pub dropped: u64,
    /// Mean loss of the step (last sliver only).
    pub loss: Option<f32>,
    /// Tokens trained in this step.
    pub tokens: u64,
    /// The chain's epoch ended while gradients were awaited (the drops are not the
    /// neighbour's fault).
    pub interrupted: bool,
    /// The accumulated gradient was not finite: no optimiser step was taken.
    pub skipped: bool,
}

/// Errors of a stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The engine refused (bad shape, diverged, schedule).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The network failed in a way the stage cannot route around.
    #[error(transparent)]
    P2p(#[from] P2pError),
    /// A stage was asked to do what its sliver does not do.
    #[error("{0}")]
    Role(String),
    /// The frame queue closed: the network task stopped.
    #[error("the network stopped")]
    Stopped,
}

/// Counters a stage keeps for the status line and metrics.
#[derive(Clone, Debug, Default)]
pub struct StageCounters {
    /// Frames sent (activations and gradients).
    pub frames_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Frames refused as not fitting the schedule (stale, wrong sliver, nothing pending).
    pub frames_refused: u64,
    /// Micro-batches dropped.
    pub dropped: u64,
    /// Tokens trained.
    pub tokens: u64,
    /// Optimiser steps skipped because the gradient was not finite.
    pub steps_skipped: u64,
}

type Key = crate::gate::Key;

/// One sliver's trainer wired to the network.
pub struct Stage {
    /// The engine's trainer of this sliver.
    pub trainer: SliverTrainer,
    client: Client,
    data: Arc<Dataset>,
    cfg: StageConfig,
    steps: u64,
    /// The step number the first sliver's next attempt names in its frames (it advances on
    /// every attempt, completed or not, so no key is ever sent twice in an epoch).
    next_step: u64,
    done: u64,
    dropped: u64,
    losses: Vec<f32>,
    ids: HashMap<Key, u64>,
    next_id: u64,
    origin: HashMap<Key, PeerId>,
    audit: Option<AuditLog>,
    /// BLAKE3 of the current weights (`SLVF1`, f32), computed at the first forward or step
    /// after each optimiser step; the bytes enter the audit log at a snapshot.
    snapshot: Option<[u8; 32]>,
    /// Optimiser steps taken in this epoch since the stage began it (a snapshot every
    /// `audit_every`).
    epoch_steps: u64,
    /// The micro-batches whose gradients the step being accumulated holds, in the order added.
    accumulated: Vec<Key>,
    /// Whether the audit log holds the last step taken (the end marker follows only then).
    last_recorded: bool,
    /// Every micro-batch summed into a step this epoch (none is summed twice: two miners of the
    /// previous sliver could send the same key).
    summed: HashSet<Key>,
    /// The next-sliver miner a forward could not be delivered to (middle slivers).
    unreachable: Option<PeerId>,
    /// What the transport lets through to this stage.
    gate: Arc<StageGate>,
    /// Neighbours whose frames went into the step being accumulated.
    step_peers: HashSet<PeerId>,
    /// Frames sent without waiting for their receipt.
    outbox: Outbox,
    /// Relayed micro-batches waiting for their gradient: to whom, since when.
    forwarded: HashMap<Key, (PeerId, tokio::time::Instant)>,
    /// Strikes to send after a step.
    pending_strikes: Vec<(PeerId, String)>,
    /// Counters since start.
    pub counters: StageCounters,
}

impl Stage {
    /// A stage training `trainer`'s sliver with `client`, reading tokens from `data`. It
    /// installs its gate on `client`: until [`Stage::set_neighbours`] names the previous
    /// sliver's miners, no activation is accepted.
    pub fn new(
        trainer: SliverTrainer,
        client: Client,
        data: Arc<Dataset>,
        cfg: StageConfig,
    ) -> Self {
        let width = trainer.model_config().d_model;
        let input = trainer.sliver.input_width().unwrap_or(width);
        let gate = Arc::new(StageGate::new(GateConfig {
            run: cfg.run,
            epoch: cfg.epoch,
            sliver: trainer.spec.index as u16,
            last: trainer.spec.is_last(),
            micro_batches: cfg.micro_batches,
            input: [cfg.batch, cfg.seq, input],
            output: [cfg.batch, cfg.seq, width],
        }));
        client.set_frame_gate(Some(gate.clone()));
        Stage {
            trainer,
            client,
            data,
            cfg,
            steps: 0,
            next_step: 0,
            done: 0,
            dropped: 0,
            losses: Vec::new(),
            ids: HashMap::new(),
            next_id: 0,
            origin: HashMap::new(),
            audit: None,
            snapshot: None,
            epoch_steps: 0,
            accumulated: Vec::new(),
            summed: HashSet::new(),
            last_recorded: false,
            unreachable: None,
            gate,
            step_peers: HashSet::new(),
            outbox: Outbox::default(),
            forwarded: HashMap::new(),
            pending_strikes: Vec::new(),
            counters: StageCounters::default(),
        }
    }

    /// This epoch's miners of the previous sliver (who may send activations), from the chain.
    pub fn set_neighbours(&self, neighbours: Neighbours) {
        self.gate.set_neighbours(neighbours);
    }

    /// The gate the transport consults for this stage.
    pub fn gate(&self) -> &Arc<StageGate> {
        &self.gate
    }

    /// Records this stage's frames and weights in `log` (see [`crate::audit`]).
    pub fn with_audit(mut self, log: AuditLog) -> Self {
        self.audit = Some(log);
        self.begin_audit_epoch();
        self
    }

    /// Starts the audit log's record of this stage's epoch, withdrawing the blobs served for
    /// the epochs it drops.
    fn begin_audit_epoch(&self) {
        if let Some(log) = &self.audit {
            for h in log.begin_epoch(self.cfg.epoch) {
                self.client.unpublish_blob(&h);
            }
        }
    }

    /// The P2P client the stage sends with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Numbers the first sliver's steps from `first` on (a miner that restarts within an epoch
    /// starts from the time, so that it never repeats a key its neighbours saw before).
    pub fn start_steps_at(&mut self, first: u64) {
        self.next_step = first;
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The run settings.
    pub fn config(&self) -> &StageConfig {
        &self.cfg
    }

    /// The next-sliver miner that a forward of a middle sliver could not be delivered to since
    /// the last call, for the caller to route around.
    pub fn take_unreachable(&mut self) -> Option<PeerId> {
        self.collect_sent();
        self.unreachable.take()
    }

    /// Waits (at most `frame_timeout`... here `limit`) until the frames sent in the background
    /// have their outcome, and counts them.
    pub async fn flush(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.outbox.outstanding() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.collect_sent();
    }

    /// Sets the route (data replica) of the micro-batches this first sliver starts.
    pub fn set_route(&mut self, route: u64) {
        self.cfg.route = route;
    }

    /// Moves to `epoch`: frames of other epochs are refused from now on.
    /// Also forgets what the ended epoch left pending: micro-batches whose gradients will not
    /// come, and gradients accumulated on weights the merge has since replaced.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.enter_epoch(epoch, None);
    }

    /// [`Stage::set_epoch`], with this epoch's neighbours set in the same moment (never the new
    /// epoch with the old epoch's neighbours).
    pub fn enter_epoch(&mut self, epoch: u64, neighbours: Option<Neighbours>) {
        self.collect_sent();
        self.cfg.epoch = epoch;
        self.gate.enter_epoch(epoch, neighbours);
        self.forwarded.clear();
        self.step_peers.clear();
        self.next_step = 0;
        self.trainer.zero_grad();
        self.ids.clear();
        self.origin.clear();
        self.done = 0;
        self.losses.clear();
        self.snapshot = None;
        self.epoch_steps = 0;
        self.accumulated.clear();
        self.summed.clear();
        self.last_recorded = false;
        self.begin_audit_epoch();
    }

    /// The hash of the weights the next forward runs with, computed the first time after a
    /// step; `None` without a log or when it does not record. At a snapshot step the weights
    /// enter the log. A middle sliver keeps every step's weights: its forwards and backwards
    /// interleave, so a micro-batch forwarded before a step may be summed into the next one,
    /// and its replay needs the weights it ran with.
    fn weights_hash(&mut self) -> Option<[u8; 32]> {
        if self.snapshot.is_none() {
            let log = self.audit.clone()?;
            if !log.recording(self.cfg.epoch) {
                return None;
            }
            let flat = sliver_engine::merge::export_flat(&mut self.trainer.sliver);
            let bytes = crate::merge::encode_flat(&flat, WireCodec::F32);
            let middle = !self.trainer.spec.is_first() && !self.trainer.spec.is_last();
            self.snapshot = if self.at_snapshot() || middle {
                log.snapshot(self.cfg.epoch, &bytes)
            } else {
                Some(*blake3::hash(&bytes).as_bytes())
            };
        }
        self.snapshot
    }

    /// Closes the epoch's audit record with an end marker: an empty, skipped step at a snapshot
    /// of the optimiser state the epoch's last step left (its weights are the last step's
    /// `after`). The next epoch's first snapshot must carry the same state on, so no miner can
    /// start an epoch from an optimiser state of its choosing. Nothing if it took no step, or
    /// the log does not hold its last one.
    pub fn close_audit_epoch(&mut self) {
        if self.epoch_steps == 0 || !self.last_recorded {
            return;
        }
        let Some(log) = self.audit.clone() else { return };
        let Some(before) = self.weights_hash() else { return };
        let Some(optim) = log.snapshot(self.cfg.epoch, &self.trainer.optim.state_bytes()) else {
            return;
        };
        log.step(
            self.cfg.epoch,
            StepEntry {
                before,
                after: before,
                optim: Some(optim),
                schedule_step: self.steps,
                lr: 0.0,
                factor: 1.0,
                skipped: true,
                batches: Vec::new(),
            },
        );
    }

    /// Whether the next step starts from a snapshot.
    fn at_snapshot(&self) -> bool {
        self.epoch_steps % self.cfg.audit_every.max(1) == 0
    }

    /// Records a frame received (and accepted for the schedule) in the audit log.
    fn record_received(&self, weights: Option<[u8; 32]>, frame: &IncomingFrame) {
        if let Some(log) = &self.audit {
            log.record(weights, &frame.header, None, &frame.payload);
        }
    }

    fn index(&self) -> u16 {
        self.trainer.spec.index as u16
    }

    fn key_of(&self, step: u64, index: u64) -> BatchKey {
        BatchKey { run: self.cfg.run, epoch: self.cfg.epoch, replica: self.cfg.route, step, index }
    }

    fn width(&self) -> usize {
        self.trainer.model_config().d_model
    }

    fn id_for(&mut self, key: Key) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.ids.insert(key, id);
        id
    }

    /// Sends one frame; a delivered frame is recorded in the audit log with its receipt (and
    /// `weights`, the snapshot of a forward that starts here).
    fn header(
        &self,
        key: Key,
        direction: Direction,
        payload: &[u8],
    ) -> Result<FrameHeader, P2pError> {
        let (route, step, mb) = key;
        let h = FrameHeader::for_payload(
            self.cfg.run,
            self.cfg.epoch,
            step,
            mb,
            route,
            self.index(),
            direction,
            payload,
        )
        .map_err(P2pError::Frame)?;
        // What a neighbour would refuse (and strike this miner for) is not sent at all.
        h.check_payload_within(payload, self.client.max_abs_value()).map_err(P2pError::Frame)?;
        Ok(h)
    }

    /// Sends a gradient back, or relays an activation, in the background (see
    /// [`crate::outbox`]); a relayed activation's gradient is awaited from `peer`.
    fn send_later(
        &mut self,
        peer: PeerId,
        key: Key,
        direction: Direction,
        payload: Vec<u8>,
    ) -> bool {
        let forward = direction == Direction::Activation;
        let header = match self.header(key, direction, &payload) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "frame not sent: outside the bounds neighbours accept");
                return false;
            }
        };
        if forward {
            self.gate.expect(key, peer);
            self.forwarded.insert(key, (peer, tokio::time::Instant::now()));
        }
        let sent = self.outbox.send(
            &self.client,
            Outgoing { peer, key, forward, header, payload },
            self.audit.clone(),
        );
        if !sent {
            tracing::warn!(%peer, "too many frames in flight to slow neighbours; frame dropped");
            if forward {
                self.gate.forget(&key);
                self.forwarded.remove(&key);
            }
        }
        sent
    }

    /// Takes the outcomes of background sends: counts what was delivered; a relayed activation
    /// that was not drops its micro-batch; a micro-batch forwarded longer than `grad_timeout`
    /// ago without its gradient is dropped, and its next hop named unreachable.
    fn collect_sent(&mut self) {
        for o in self.outbox.collect() {
            match o {
                Outcome::Delivered { bytes } => {
                    self.counters.frames_sent += 1;
                    self.counters.bytes_sent += bytes;
                }
                Outcome::Failed { key, peer, forward, peer_fault, error } => {
                    tracing::warn!(%peer, %error, forward, "frame not delivered");
                    if forward && self.forwarded.remove(&key).is_some() {
                        self.drop_forwarded(key);
                        if peer_fault {
                            self.unreachable = Some(peer);
                        }
                    }
                }
            }
        }
        let now = tokio::time::Instant::now();
        let late: Vec<(Key, PeerId)> = self
            .forwarded
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) > self.cfg.grad_timeout)
            .map(|(k, (p, _))| (*k, *p))
            .collect();
        for (key, peer) in late {
            tracing::warn!(%peer, "no gradient within {:?}; micro-batch dropped", self.cfg.grad_timeout);
            self.forwarded.remove(&key);
            self.drop_forwarded(key);
            self.unreachable = Some(peer);
        }
    }

    fn drop_forwarded(&mut self, key: Key) {
        self.gate.forget(&key);
        self.origin.remove(&key);
        if let Some(id) = self.ids.remove(&key) {
            self.trainer.abandon(id);
        }
        self.dropped += 1;
    }

    async fn send(
        &mut self,
        peer: PeerId,
        key: Key,
        direction: Direction,
        payload: Vec<u8>,
        weights: Option<[u8; 32]>,
    ) -> Result<(), P2pError> {
        let header = self.header(key, direction, &payload)?;
        let receipt = self.client.send_frame(peer, &header, &payload).await?;
        self.counters.frames_sent += 1;
        self.counters.bytes_sent += payload.len() as u64;
        if let Some(log) = &self.audit {
            log.record(weights, &header, Some(Reply::Accepted(receipt).encode()), &payload);
        }
        Ok(())
    }

    /// One optimiser step of the first sliver: `micro_batches` forwards sent to `next`, their
    /// gradients awaited (at most `grad_timeout` in all, and no longer than the chain's epoch, as
    /// `chain_epoch` follows it, stays this stage's epoch), the backward passes, the step.
    pub async fn first_step(
        &mut self,
        next: PeerId,
        frames: &mut mpsc::Receiver<IncomingFrame>,
        chain_epoch: &mut watch::Receiver<u64>,
    ) -> Result<StepReport, StageError> {
        if !self.trainer.spec.is_first() || self.trainer.spec.is_last() {
            return Err(StageError::Role("first_step is for the first of several slivers".into()));
        }
        let step = self.next_step;
        self.next_step += 1;
        let (batch, seq) = (self.cfg.batch, self.cfg.seq);
        let mut pending = HashSet::new();
        let mut dropped = 0;
        for mb in 0..self.cfg.micro_batches {
            if dropped > 0 {
                // The next hop failed a send already (gone, refusing, or silent until the
                // timeout): the rest of the step is not sent to it.
                dropped += 1;
                continue;
            }
            let tokens = self.data.micro_batch(Split::Train, self.key_of(step, mb), batch, seq)?;
            let key = (self.cfg.route, step, mb);
            let id = self.id_for(key);
            let input = SliverInput::Tokens(self.trainer.tokens(&tokens.inputs, batch, seq)?);
            let weights = self.weights_hash();
            let out = compute(|| self.trainer.forward(id, input))?;
            let payload =
                crate::cheat::outgoing(Direction::Activation, encode_tensor(self.cfg.codec, &out));
            // Expected before it is sent: the gradient may come back before the receipt.
            self.gate.expect(key, next);
            match self.send(next, key, Direction::Activation, payload, weights).await {
                Ok(()) => {
                    pending.insert(key);
                }
                Err(e) => {
                    tracing::warn!(peer = %next, error = %e, "activation not delivered; micro-batch dropped");
                    self.gate.forget(&key);
                    self.trainer.abandon(id);
                    self.ids.remove(&key);
                    dropped += 1;
                }
            }
        }
        let mut completed = 0;
        let mut interrupted = false;
        let epoch = self.cfg.epoch;
        // One deadline for the step: frames that are ignored do not extend it.
        let deadline = tokio::time::Instant::now() + self.cfg.grad_timeout;
        while !pending.is_empty() {
            let received = tokio::select! {
                r = tokio::time::timeout_at(deadline, frames.recv()) => r,
                Ok(_) = chain_epoch.wait_for(|e| *e != epoch) => {
                    tracing::info!(missing = pending.len(), "the epoch ended; in-flight micro-batches dropped");
                    interrupted = true;
                    break;
                }
            };
            let frame = match received {
                Ok(Some(f)) => f,
                Ok(None) => return Err(StageError::Stopped),
                Err(_) => {
                    tracing::warn!(
                        missing = pending.len(),
                        "gradients did not come back in {:?}; micro-batches dropped",
                        self.cfg.grad_timeout
                    );
                    break;
                }
            };
            let h = &frame.header;
            let key = (h.route, h.step, h.micro_batch);
            if frame.peer != next
                || h.direction != Direction::Gradient
                || !self.current(h)
                || !pending.remove(&key)
            {
                self.refuse(&frame, "not a gradient this step waits for");
                continue;
            }
            let id = self.ids.remove(&key).unwrap_or(u64::MAX);
            let shape = [batch, seq, self.width()];
            match decode_tensor(&frame.payload, shape, self.trainer.device()) {
                Ok(g) => {
                    self.record_received(None, &frame);
                    compute(|| self.trainer.backward(id, g))?;
                    self.accumulated.push(key);
                    self.step_peers.insert(frame.peer);
                    completed += 1;
                }
                Err(e) => {
                    tracing::warn!(peer = %frame.peer, error = %e, "bad gradient; micro-batch dropped");
                    self.trainer.abandon(id);
                    dropped += 1;
                }
            }
        }
        for key in pending {
            self.gate.forget(&key);
            if let Some(id) = self.ids.remove(&key) {
                self.trainer.abandon(id);
            }
            dropped += 1;
        }
        self.dropped += dropped;
        self.done = completed;
        let report = StepReport { interrupted, ..self.optimiser_step() };
        self.send_strikes().await;
        Ok(report)
    }

    /// Handles one frame on a sliver after the first (`next`: a miner of the following
    /// sliver, `None` on the last). Returns a report when an optimiser step was taken.
    pub async fn handle(
        &mut self,
        frame: IncomingFrame,
        next: Option<PeerId>,
    ) -> Result<Option<StepReport>, StageError> {
        if self.trainer.spec.is_first() {
            return Err(StageError::Role("the first sliver drives with first_step".into()));
        }
        self.collect_sent();
        let h = frame.header.clone();
        let key = (h.route, h.step, h.micro_batch);
        let (batch, seq, width) = (self.cfg.batch, self.cfg.seq, self.width());
        if !self.current(&h) {
            self.refuse(&frame, "another run or epoch");
            return Ok(None);
        }
        match h.direction {
            Direction::Activation if h.sliver.checked_add(1) == Some(self.index()) => {
                let in_width = self.trainer.sliver.input_width().unwrap_or(width);
                let x = match decode_tensor(
                    &frame.payload,
                    [batch, seq, in_width],
                    self.trainer.device(),
                ) {
                    Ok(x) => x,
                    Err(e) => {
                        self.refuse(&frame, &e.to_string());
                        return Ok(None);
                    }
                };
                if self.trainer.spec.is_last() {
                    if !self.summed.insert(key) {
                        self.refuse(&frame, "a micro-batch already summed this epoch");
                        return Ok(None);
                    }
                    let data_key =
                        BatchKey { replica: h.route, ..self.key_of(h.step, h.micro_batch) };
                    let mb = self.data.micro_batch(Split::Train, data_key, batch, seq)?;
                    let targets = self.trainer.tokens(&mb.targets, batch, seq)?;
                    let scale = 1.0 / self.cfg.micro_batches.max(1) as f32;
                    let weights = self.weights_hash();
                    let computed = compute(|| {
                        self.trainer.forward_backward_last(SliverInput::Hidden(x), targets, scale)
                    });
                    // Activations that make the loss diverge are dropped (no strike: a relay
                    // passes on what it was given; the validator's replay finds the origin).
                    let (loss, grad) = match computed {
                        Ok(v) => v,
                        Err(e) => {
                            self.refuse(&frame, &e.to_string());
                            self.dropped += 1;
                            return Ok(None);
                        }
                    };
                    self.record_received(weights, &frame);
                    self.accumulated.push(key);
                    self.step_peers.insert(frame.peer);
                    self.losses.push(loss);
                    if let Some(g) = grad {
                        let payload = crate::cheat::outgoing(
                            Direction::Gradient,
                            encode_tensor(self.cfg.codec, &g),
                        );
                        self.send_later(frame.peer, key, Direction::Gradient, payload);
                    }
                    self.done += 1;
                } else {
                    let Some(next) = next else {
                        self.refuse(&frame, "no live miner of the next sliver");
                        self.dropped += 1;
                        return Ok(None);
                    };
                    if self.ids.contains_key(&key) {
                        // The gate refuses keys in flight; this is a second copy after all.
                        self.refuse(&frame, "a micro-batch already in flight");
                        return Ok(None);
                    }
                    let id = self.id_for(key);
                    let weights = self.weights_hash();
                    let computed = compute(|| self.trainer.forward(id, SliverInput::Hidden(x)));
                    // Too many micro-batches waiting for gradients, or a bad input: dropped.
                    let out = match computed {
                        Ok(out) => out,
                        Err(e) => {
                            self.ids.remove(&key);
                            self.refuse(&frame, &e.to_string());
                            self.dropped += 1;
                            return Ok(None);
                        }
                    };
                    self.record_received(weights, &frame);
                    let payload = crate::cheat::outgoing(
                        Direction::Activation,
                        encode_tensor(self.cfg.codec, &out),
                    );
                    self.origin.insert(key, frame.peer);
                    if !self.send_later(next, key, Direction::Activation, payload) {
                        self.origin.remove(&key);
                        self.trainer.abandon(id);
                        self.ids.remove(&key);
                        self.dropped += 1;
                    }
                    return Ok(None);
                }
            }
            Direction::Gradient if h.sliver == self.index() + 1 && !self.trainer.spec.is_last() => {
                let (Some(id), Some(origin)) = (self.ids.remove(&key), self.origin.remove(&key))
                else {
                    self.refuse(&frame, "a gradient for no pending micro-batch");
                    return Ok(None);
                };
                self.forwarded.remove(&key);
                let g =
                    match decode_tensor(&frame.payload, [batch, seq, width], self.trainer.device())
                    {
                        Ok(g) => g,
                        Err(e) => {
                            self.trainer.abandon(id);
                            self.refuse(&frame, &e.to_string());
                            return Ok(None);
                        }
                    };
                self.record_received(None, &frame);
                self.step_peers.insert(frame.peer);
                let grad_in = compute(|| self.trainer.backward(id, g))?;
                self.accumulated.push(key);
                if let Some(grad_in) = grad_in {
                    let payload = crate::cheat::outgoing(
                        Direction::Gradient,
                        encode_tensor(self.cfg.codec, &grad_in),
                    );
                    self.send_later(origin, key, Direction::Gradient, payload);
                }
                self.done += 1;
            }
            _ => {
                self.refuse(&frame, "a frame for another sliver");
                return Ok(None);
            }
        }
        if self.done >= self.cfg.micro_batches {
            let report = self.optimiser_step();
            self.send_strikes().await;
            return Ok(Some(report));
        }
        Ok(None)
    }

    /// Finishes the micro-batches in flight before leaving the pipeline: handles frames (those
    /// already queued, and the gradients of micro-batches forwarded here) until none waits for
    /// a gradient and no frame came for `quiet`, or `limit` has passed (what is still in flight
    /// then is dropped and counted). Then steps on what was accumulated, a partial step
    /// included. Returns the steps taken.
    pub async fn drain(
        &mut self,
        frames: &mut mpsc::Receiver<IncomingFrame>,
        next: Option<PeerId>,
        quiet: Duration,
        limit: Duration,
    ) -> Result<Vec<StepReport>, StageError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut reports = Vec::new();
        loop {
            let wait = quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, frames.recv()).await {
                Ok(Some(frame)) if !self.trainer.spec.is_first() => {
                    reports.extend(self.handle(frame, next).await?);
                }
                Ok(Some(frame)) => self.refuse(&frame, "the first sliver is leaving"),
                Ok(None) => return Err(StageError::Stopped),
                Err(_) if self.trainer.in_flight() == 0 => break,
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let stale: Vec<u64> = self.ids.drain().map(|(_, id)| id).collect();
                self.dropped += stale.len() as u64;
                for id in stale {
                    self.trainer.abandon(id);
                }
                self.origin.clear();
                break;
            }
        }
        if self.done > 0 || self.dropped > 0 {
            reports.push(self.optimiser_step());
            self.send_strikes().await;
        }
        Ok(reports)
    }

    fn current(&self, h: &FrameHeader) -> bool {
        h.run == self.cfg.run && h.epoch == self.cfg.epoch
    }

    fn refuse(&mut self, frame: &IncomingFrame, why: &str) {
        self.counters.frames_refused += 1;
        tracing::debug!(peer = %frame.peer, step = frame.header.step, mb = frame.header.micro_batch, "frame ignored: {why}");
    }

    fn optimiser_step(&mut self) -> StepReport {
        let completed = self.done;
        let dropped = std::mem::take(&mut self.dropped);
        let mut skipped = false;
        if completed > 0 {
            // What the audit log needs to replay this step: the weights and, at a snapshot,
            // the optimiser state it starts from.
            let at_snapshot = self.at_snapshot();
            let before = self.weights_hash();
            let optim = match (&self.audit, before) {
                (Some(log), Some(_)) if at_snapshot => {
                    log.snapshot(self.cfg.epoch, &self.trainer.optim.state_bytes())
                }
                _ => None,
            };
            let norm = self.trainer.grad_squares().iter().sum::<f64>().sqrt();
            let schedule_step = self.steps;
            let lr = self.cfg.lr.at(schedule_step);
            let mut factor = 1.0;
            if norm.is_finite() {
                factor = sliver_engine::optim::clip_scale(norm, self.cfg.clip);
                if crate::cheat::skips_steps() {
                    self.trainer.discard_grads();
                } else {
                    compute(|| self.trainer.step(lr, factor));
                }
                self.steps += 1;
                self.epoch_steps += 1;
                self.snapshot = None;
            } else {
                // Clipping an infinite norm scales by zero, and inf * 0 is NaN in every weight:
                // the step is skipped instead and the gradient thrown away.
                skipped = true;
                self.trainer.discard_grads();
                self.counters.steps_skipped += 1;
                let senders: Vec<PeerId> = self.step_peers.iter().copied().collect();
                tracing::warn!(
                    norm,
                    ?senders,
                    "the accumulated gradient is not finite; step skipped"
                );
                // Only a step fed by one neighbour names its culprit; a strike for a step mixed
                // from several would let one liar get honest miners banned.
                if let [only] = senders[..] {
                    self.pending_strikes
                        .push((only, "its frames made the gradient non-finite".into()));
                }
            }
            let batches = std::mem::take(&mut self.accumulated);
            self.last_recorded = false;
            if let (Some(log), Some(before)) = (self.audit.clone(), before) {
                match self.weights_hash() {
                    // At a snapshot the optimiser state must be in the log too, or the steps
                    // that follow cannot be replayed: then nothing is recorded.
                    Some(after) if !at_snapshot || optim.is_some() => {
                        let batches = batches
                            .iter()
                            .map(|&(route, step, micro_batch)| AuditKey {
                                route,
                                step,
                                micro_batch,
                            })
                            .collect();
                        let entry = StepEntry {
                            before,
                            after,
                            optim,
                            schedule_step,
                            lr,
                            factor,
                            skipped,
                            batches,
                        };
                        self.last_recorded = log.step(self.cfg.epoch, entry);
                    }
                    _ => {}
                }
            }
        }
        self.step_peers.clear();
        self.accumulated.clear();
        self.done = 0;
        let loss = (!self.losses.is_empty())
            .then(|| self.losses.iter().sum::<f32>() / self.losses.len() as f32);
        self.losses.clear();
        let completed = if skipped { 0 } else { completed };
        let tokens = completed * (self.cfg.batch * self.cfg.seq) as u64;
        self.counters.tokens += tokens;
        self.counters.dropped += dropped;
        StepReport {
            steps: self.steps,
            completed,
            dropped,
            loss,
            tokens,
            interrupted: false,
            skipped,
        }
    }

    /// Sends the strikes the last step earned its senders.
    async fn send_strikes(&mut self) {
        for (peer, why) in std::mem::take(&mut self.pending_strikes) {
            self.client.strike(peer, why).await;
        }
    }
}

/// Runs a training call from async code: off the tokio worker (`block_in_place`) and on
/// rayon's pool (`sliver_engine::on_compute_thread`), where Burn's parallel operations run.
fn compute<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    tokio::task::block_in_place(|| sliver_engine::on_compute_thread(f))
}
