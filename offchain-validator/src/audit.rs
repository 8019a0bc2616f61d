//! Auditing one epoch of every miner's work, over the network.
//!
//! For each miner the chain assigned in the audited epoch, the auditor fetches its whole audit
//! index and checks every receipt in it (`sliver_audit::work`), and fetches its step records.
//! The steps split into segments at the snapshots the miner kept; work counts only for
//! receipted micro-batches that went into a step. The auditor samples segments
//! (`sliver_audit::sample`, by the segment's first micro-batch), asks for the snapshot and
//! for every summed micro-batch's account, fetches the blobs by hash and has the whole segment
//! replayed (`sliver_audit::segment`) by the replay task, which owns the engine on its own
//! thread. A replay that passes is tied to the neighbours: every frame the miner says it
//! received must be one its neighbour's index lists as sent to it, byte for byte (so inputs
//! cannot be made up to fit stale or copied outputs, nor gradients to steer its weights).
//!
//! Everything is bounded by the deadline (the Commit phase of the epoch after the audited
//! one, when the scores must be committed): an audit asked and not answered by then fails;
//! transient refusals (a miner busy with other validators) are retried until then.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use sliver_audit::work::SentFrame;
use sliver_audit::{
    check_index, sample, BatchAccount, Neighbourhood, Replayer, Secret, SegmentEvidence,
    SegmentOutcome,
};
use sliver_chain::Uid;
use sliver_engine::merge::Flat;
use sliver_p2p::{
    AuditAnswer, AuditBlobsRequest, AuditIndexRequest, AuditKey, AuditRequest, AuditStepsRequest,
    Client, Direction, FrameHeader, IndexEntry, Multiaddr, P2pError, PeerId, StepEntry,
};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::metrics::Metrics;
use crate::score::MinerAudit;

/// Index pages read per miner at most (256 entries each: 16,384 micro-batches, far more than
/// an epoch holds at the dev run's step rates).
const MAX_INDEX_PAGES: usize = 64;
/// Time for every miner's index; a miner whose index is not in by then is unanswered (and
/// the others' replays start without waiting for it).
const INDEX_WINDOW: Duration = Duration::from_secs(4);
/// Time for one attempt of one request.
const ATTEMPT_WINDOW: Duration = Duration::from_secs(4);
/// Step-record pages read per miner at most (64 records each).
const MAX_STEP_PAGES: u32 = 64;
/// Micro-batches replayed per miner and epoch at most, and the most a segment may hold for its
/// work to count (a miner's `audit_snapshot_steps` times the micro-batches per step).
pub const MAX_SAMPLES: u64 = 256;
/// Frames one micro-batch's account may hold (received and sent, activation and gradient).
const MAX_ANSWER_FRAMES: usize = 4;

/// A miner to audit.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its uid.
    pub uid: Uid,
    /// Its addresses from the registry.
    pub addrs: Vec<Multiaddr>,
    /// Who it worked with (and its sliver, route, PeerId) in the audited epoch.
    pub hood: Neighbourhood,
}

/// One epoch's audit.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The audited epoch.
    pub epoch: u64,
    /// The audit seed drawn when the epoch after it began.
    pub seed: [u8; 32],
    /// Every miner assigned in it.
    pub targets: Vec<Target>,
    /// By sliver: the commitments its miners of the epoch before published in the audited
    /// epoch (their merged states, which the audited epoch's training started from).
    pub committed: BTreeMap<u16, CommittedSliver>,
    /// By uid: the weights a miner's audited steps of the epoch before began and ended with
    /// (from this validator's audit of it), which it may keep when it merged nothing.
    pub remembered: HashMap<Uid, Vec<[u8; 32]>>,
    /// By uid: the optimiser state a miner's epoch before ended in, as its end marker named it
    /// (the audited epoch's first snapshot must carry it on, or start fresh).
    pub optim_before: HashMap<Uid, [u8; 32]>,
}

/// The merged states a sliver's miners of an epoch committed.
#[derive(Clone, Debug, Default)]
pub struct CommittedSliver {
    /// Miners the chain assigned to the sliver in that epoch.
    pub replicas: usize,
    /// What they committed.
    pub states: Vec<Committed>,
}

/// A merged state a miner committed on chain.
#[derive(Clone, Debug)]
pub struct Committed {
    /// The miner.
    pub uid: Uid,
    /// Its PeerId (it serves the state).
    pub peer: PeerId,
    /// BLAKE3 of the state (`SLVF1`, f32: weights and outer momentum).
    pub hash: [u8; 32],
    /// Its committed size.
    pub size: u64,
}

/// Set once the scores must go on chain; audits still open then fail.
#[derive(Clone)]
pub struct Deadline(pub watch::Receiver<bool>);

impl Deadline {
    /// A deadline that passes when `flag` turns true.
    pub fn new(flag: watch::Receiver<bool>) -> Self {
        Deadline(flag)
    }

    /// True once passed.
    pub fn passed(&self) -> bool {
        *self.0.borrow()
    }

    /// `f`, or `None` if the deadline passes first.
    pub async fn run<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        let mut flag = self.0.clone();
        tokio::select! {
            out = f => Some(out),
            _ = flag.wait_for(|p| *p) => None,
        }
    }
}

enum Job {
    Segment {
        epoch: u64,
        sliver: u16,
        evidence: SegmentEvidence,
        reply: oneshot::Sender<(SegmentOutcome, Duration)>,
    },
    Eval {
        weights: Vec<Arc<Flat>>,
        reply: oneshot::Sender<Result<f32, String>>,
    },
}

/// Validation micro-batches the merged model is evaluated on each epoch.
const EVAL_BATCHES: u64 = 8;

/// The replay task: one thread owns the engine; audits send it jobs.
#[derive(Clone)]
pub struct ReplayHandle {
    jobs: mpsc::Sender<Job>,
    snapshot_len: Arc<Vec<u64>>,
    likes: Arc<Vec<Flat>>,
}

impl ReplayHandle {
    /// Starts the task with `replayer`.
    pub fn spawn(mut replayer: Replayer) -> Result<Self, String> {
        let snapshot_len = (0..replayer.shape().slivers())
            .map(|s| replayer.snapshot_len(s))
            .collect::<Result<Vec<_>, _>>()?;
        let likes =
            (0..replayer.shape().slivers()).map(|s| replayer.like(s)).collect::<Result<_, _>>()?;
        let (jobs, mut rx) = mpsc::channel::<Job>(64);
        std::thread::Builder::new()
            .name("replay".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let started = Instant::now();
                    match job {
                        Job::Segment { epoch, sliver, evidence, reply } => {
                            let run = std::panic::AssertUnwindSafe(|| {
                                sliver_engine::on_compute_thread(|| {
                                    replayer.check_segment(epoch, sliver, &evidence)
                                })
                            });
                            match std::panic::catch_unwind(run) {
                                Ok(outcome) => {
                                    let _ = reply.send((outcome, started.elapsed()));
                                }
                                Err(_) => {
                                    // A bug of ours, not the miner's fault: not counted.
                                    tracing::error!(
                                        sliver,
                                        "the replay panicked; audit not counted"
                                    );
                                    replayer.unload();
                                }
                            }
                        }
                        Job::Eval { weights, reply } => {
                            let sets: Vec<Flat> = weights.iter().map(|w| (**w).clone()).collect();
                            let run = std::panic::AssertUnwindSafe(|| {
                                sliver_engine::on_compute_thread(|| {
                                    replayer.eval_loss(
                                        &sets,
                                        EVAL_BATCHES,
                                        sliver_wire::WireCodec::Bf16,
                                    )
                                })
                            });
                            let out = std::panic::catch_unwind(run)
                                .unwrap_or_else(|_| Err("the evaluation panicked".into()));
                            let _ = reply.send(out);
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the replay thread: {e}"))?;
        Ok(ReplayHandle { jobs, snapshot_len: Arc::new(snapshot_len), likes: Arc::new(likes) })
    }

    async fn check(
        &self,
        epoch: u64,
        sliver: u16,
        evidence: SegmentEvidence,
    ) -> Option<(SegmentOutcome, Duration)> {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job::Segment { epoch, sliver, evidence, reply }).await.ok()?;
        rx.await.ok()
    }

    /// The held-out loss of the model whose slivers hold `weights`.
    async fn eval(&self, weights: Vec<Arc<Flat>>) -> Result<f32, String> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Eval { weights, reply })
            .await
            .map_err(|_| "the replay task stopped".to_string())?;
        rx.await.map_err(|_| "the evaluation did not finish".to_string())?
    }
}

/// Audits epochs; cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    /// The validator's transport.
    pub client: Client,
    /// The replay task.
    pub replay: ReplayHandle,
    /// The sampling secret.
    pub secret: Secret,
    /// The sampling rate.
    pub rate: f64,
    /// The run.
    pub run: u64,
    /// The run's shapes.
    pub shape: Arc<sliver_audit::RunShape>,
    /// Largest payload of a frame (the run's f32 activation with its wire header).
    pub max_payload: u64,
    /// Micro-batches audited at once.
    pub slots: Arc<Semaphore>,
    /// Metrics.
    pub metrics: Metrics,
}

/// What one miner's index gave.
struct Indexed {
    entries: Vec<IndexEntry>,
    report: sliver_audit::WorkReport,
    steps: Vec<StepEntry>,
}

impl Auditor {
    /// Audits `plan`, returning one account per target and the held-out loss of the merged
    /// model the audited epoch started from (when every sliver's state was served).
    pub async fn audit(&self, plan: &Plan, deadline: &Deadline) -> (Vec<MinerAudit>, Option<f32>) {
        let indexes = join_all(plan.targets.iter().map(|t| async move {
            match tokio::time::timeout(INDEX_WINDOW, self.index(plan, t, deadline)).await {
                Ok(r) => r,
                Err(_) => Err(Missing::Late),
            }
        }));
        let (indexes, states) = futures::join!(indexes, self.committed_weights(plan));
        let starts: HashMap<[u8; 32], [u8; 32]> =
            states.iter().map(|(h, (w, _))| (*h, *w)).collect();
        let starts = Arc::new(starts);
        let (sent, indexed) = sent_by(&plan.targets, &indexes);
        let sent = Arc::new(sent);
        let indexed = Arc::new(indexed);
        let audits = plan.targets.iter().zip(indexes).map(|(t, ix)| {
            let (sent, indexed, starts) = (sent.clone(), indexed.clone(), starts.clone());
            async move {
                let mut a = MinerAudit { uid: t.uid, sliver: t.hood.sliver, ..Default::default() };
                match ix {
                    Err(Missing::Late) => a.unanswered += 1,
                    Err(Missing::Nothing) => {}
                    Err(Missing::Fault(why)) => a.fail(why),
                    Ok(ix) => {
                        a.first_weights =
                            ix.steps.iter().find(|s| s.optim.is_some()).map(|s| s.before);
                        a.last_weights = ix.steps.last().map(|s| s.after);
                        a.end_optim = ix
                            .steps
                            .last()
                            .filter(|s| s.skipped && s.batches.is_empty())
                            .and_then(|s| s.optim);
                        match start_check(plan, t, &ix.steps, &starts) {
                            Err(why) => {
                                a.work = ix.report.verified.len() as u64;
                                a.fail(why);
                                self.metrics.failed.inc();
                            }
                            Ok(checked) => {
                                a.start_checked = checked;
                                self.replays(plan, t, &ix, &sent, &indexed, deadline, &mut a).await
                            }
                        }
                    }
                }
                a
            }
        });
        let audits = join_all(audits).await;
        // After the replays, which the deadline bounds: the evaluation only reports.
        (audits, self.evaluate(plan, &states).await)
    }

    /// The held-out loss of the merged model: the state a strict majority of each sliver's
    /// miners committed (what a joining miner syncs to), else the one most of them committed
    /// (the lowest committing uid on a tie: a report that decides no pay), evaluated on the
    /// replay thread. `None` if a sliver has no commitment or its state was not served.
    async fn evaluate(
        &self,
        plan: &Plan,
        states: &HashMap<[u8; 32], ([u8; 32], Arc<Flat>)>,
    ) -> Option<f32> {
        let mut weights = Vec::new();
        for s in 0..self.shape.slivers() {
            let committed = plan.committed.get(&s)?;
            let hash = majority(committed).or_else(|| plurality(committed))?;
            weights.push(states.get(&hash)?.1.clone());
        }
        match self.replay.eval(weights).await {
            Ok(loss) => Some(loss),
            Err(e) => {
                tracing::warn!(error = %e, "the merged model was not evaluated");
                None
            }
        }
    }

    /// The weights of every state committed in `plan`, by the state's hash (their hash and
    /// values): fetched from its committers (4 s per state, all at once), checked against the
    /// hash and the model's shapes. A state no committer serves in time is left out (its
    /// miners' start is not checked this epoch).
    async fn committed_weights(&self, plan: &Plan) -> HashMap<[u8; 32], ([u8; 32], Arc<Flat>)> {
        let mut wanted: BTreeMap<[u8; 32], (u16, u64, Vec<PeerId>)> = BTreeMap::new();
        for (sliver, list) in &plan.committed {
            for c in &list.states {
                let e = wanted.entry(c.hash).or_insert((*sliver, c.size, Vec::new()));
                e.2.push(c.peer);
            }
        }
        let fetched =
            join_all(wanted.into_iter().map(|(hash, (sliver, size, holders))| async move {
                let like = self.replay.likes.get(sliver as usize)?;
                let like = sliver_engine::merge::State::like(like);
                if size
                    != sliver_engine::tensor_set::encoded_len(&like, sliver_wire::WireCodec::F32)
                {
                    return None;
                }
                let fetch = async {
                    for peer in holders {
                        match self.client.fetch_blob(peer, hash, size).await {
                            Ok(bytes) => return Some(bytes),
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "committed state not served")
                            }
                        }
                    }
                    None
                };
                let bytes = tokio::time::timeout(INDEX_WINDOW, fetch).await.ok()??;
                let weights = tokio::task::spawn_blocking(move || {
                    let flat = sliver_engine::tensor_set::decode_flat(&bytes, &like).ok()?;
                    let state = sliver_engine::merge::State::from_flat(flat);
                    let w = sliver_engine::tensor_set::encode_flat(
                        &state.weights,
                        sliver_wire::WireCodec::F32,
                    );
                    Some((*blake3::hash(&w).as_bytes(), Arc::new(state.weights)))
                })
                .await
                .ok()??;
                Some((hash, weights))
            }))
            .await;
        fetched.into_iter().flatten().collect()
    }

    /// The miner's whole index of the audited epoch, checked.
    async fn index(
        &self,
        plan: &Plan,
        t: &Target,
        deadline: &Deadline,
    ) -> Result<Indexed, Missing> {
        let peer = t.hood.miner;
        self.connect(peer, &t.addrs).await;
        let mut entries: Vec<IndexEntry> = Vec::new();
        let mut after = None;
        for _ in 0..MAX_INDEX_PAGES {
            let req = AuditIndexRequest { run: self.run, epoch: plan.epoch, after };
            let page = self.retry(deadline, || self.client.audit_index(peer, req)).await?;
            let Some(page) = page else {
                // It keeps nothing of that epoch: no work to pay.
                return if entries.is_empty() {
                    Err(Missing::Nothing)
                } else {
                    Err(Missing::Fault("its index vanished between pages".into()))
                };
            };
            after = page.entries.last().map(|e| e.key);
            entries.extend(page.entries);
            if !page.more || after.is_none() {
                break;
            }
        }
        let mut steps: Vec<StepEntry> = Vec::new();
        for _ in 0..MAX_STEP_PAGES {
            let from = steps.len() as u32;
            let req = AuditStepsRequest { run: self.run, epoch: plan.epoch, from };
            let Some(page) = self.retry(deadline, || self.client.audit_steps(peer, req)).await?
            else {
                return Err(Missing::Fault("it keeps an index but no step records".into()));
            };
            let more = page.more && !page.steps.is_empty();
            steps.extend(page.steps);
            if !more {
                break;
            }
        }
        // Up to a signature check per frame: off the async threads.
        let (hood, shape) = (t.hood.clone(), self.shape.clone());
        tokio::task::spawn_blocking(move || {
            let report = check_index(&hood, &shape, &entries);
            Indexed { entries, report, steps }
        })
        .await
        .map_err(|_| Missing::Late)
    }

    /// Counts the miner's work, samples segments of its steps and replays them.
    #[allow(clippy::too_many_arguments)]
    async fn replays(
        &self,
        plan: &Plan,
        t: &Target,
        ix: &Indexed,
        sent: &SentMap,
        indexed: &HashSet<PeerId>,
        deadline: &Deadline,
        a: &mut MinerAudit,
    ) {
        if let Some(why) = &ix.report.fault {
            a.work = ix.report.verified.len() as u64;
            a.fail(format!("its index: {why}"));
            self.metrics.failed.inc();
            return;
        }
        let segments = match segments_of(&ix.steps) {
            Ok(s) => s,
            Err(why) => {
                a.fail(format!("its step records: {why}"));
                self.metrics.failed.inc();
                return;
            }
        };
        let indexed_key = |k: &AuditKey| ix.entries.binary_search_by(|e| e.key.cmp(k)).is_ok();
        // Only segments a validator can replay whole hold work: at most MAX_SAMPLES
        // micro-batches, each in the index (so no miner can exempt steps from replay by
        // making them too long or leaving a key out).
        let size_of = |seg: &[StepEntry]| seg.iter().map(|s| s.batches.len() as u64).sum::<u64>();
        let eligible: Vec<usize> = (0..segments.len())
            .filter(|&i| {
                let seg = &segments[i];
                size_of(seg) <= MAX_SAMPLES && seg.iter().flat_map(|s| &s.batches).all(indexed_key)
            })
            .collect();
        // Work: receipted micro-batches that went into a step of such a segment.
        let stepped: HashSet<AuditKey> = eligible
            .iter()
            .flat_map(|&i| segments[i].iter().flat_map(|s| s.batches.iter().copied()))
            .collect();
        let verified: HashSet<AuditKey> =
            ix.report.verified.iter().copied().filter(|k| stepped.contains(k)).collect();
        a.work = verified.len() as u64;
        if verified.is_empty() {
            return;
        }
        // Segments are sampled by their first micro-batch; only those holding work count.
        let first_of =
            |i: usize| segments[i].iter().flat_map(|s| s.batches.first()).next().copied();
        let ids: Vec<AuditKey> = eligible
            .iter()
            .filter(|&&i| segments[i].iter().flat_map(|s| &s.batches).any(|k| verified.contains(k)))
            .filter_map(|&i| first_of(i))
            .collect();
        let mut chosen = sample(&self.secret, &plan.seed, t.uid, &ids, self.rate);
        // Replayed in the order of their draws, which the miner cannot know, so that the
        // segments the per-miner budget leaves out are not the ones it would choose.
        chosen.sort_by(|x, y| {
            let d = |k| sliver_audit::sample::draw(&self.secret, &plan.seed, t.uid, k);
            d(x).total_cmp(&d(y))
        });
        let listed_of = |key: &AuditKey| -> Vec<Vec<u8>> {
            ix.entries
                .binary_search_by(|e| e.key.cmp(key))
                .ok()
                .map(|i| ix.entries[i].sent.iter().map(|f| f.header.clone()).collect())
                .unwrap_or_default()
        };
        // Weights a middle sliver's micro-batch may have run with: a recorded step's start.
        let befores: HashSet<[u8; 32]> = ix.steps.iter().map(|s| s.before).collect();
        let mut replayed = 0u64;
        for id in chosen {
            let Some(i) = eligible.iter().copied().find(|&i| first_of(i) == Some(id)) else {
                continue;
            };
            let seg = &segments[i];
            let size = size_of(seg);
            if replayed > 0 && replayed + size > MAX_SAMPLES {
                continue;
            }
            // Segments not asked before the deadline count neither way.
            if deadline.passed() {
                break;
            }
            let Ok(_slot) = self.slots.acquire().await else { return };
            replayed += size;
            let evidence = match self.segment(plan, t, seg, &listed_of, &befores, deadline).await {
                Ok(e) => e,
                Err(Missing::Late | Missing::Nothing) => {
                    a.unanswered += 1;
                    self.metrics.unanswered.inc();
                    continue;
                }
                Err(Missing::Fault(why)) => {
                    tracing::warn!(uid = t.uid, "audit failed: {why}");
                    a.fail(why);
                    self.metrics.failed.inc();
                    continue;
                }
            };
            let check = self.replay.check(plan.epoch, t.hood.sliver, evidence);
            let Some(Some((outcome, took))) = deadline.run(check).await else {
                // The replay itself failed (logged), or the deadline came first: not counted
                // either way, and neither is the work in it.
                let left_out = seg.iter().flat_map(|s| &s.batches).filter(|k| verified.contains(k));
                a.work = a.work.saturating_sub(left_out.count() as u64);
                continue;
            };
            self.metrics.replay_seconds.observe(took.as_secs_f64());
            match outcome {
                SegmentOutcome::Pass { checked, losses, received, end_optim } => {
                    a.sampled += checked as u32;
                    // The optimiser state the next snapshot names must be the one these steps
                    // end in.
                    let next_state = continued(&segments, i).and_then(|n| n.optim);
                    let tied = match next_state {
                        Some(h) if h != end_optim => Err("its next snapshot names another \
                            optimiser state than its steps end in"
                            .to_string()),
                        _ => tied_to_neighbours(t, &received, sent, indexed),
                    };
                    match tied {
                        Ok(()) => {
                            a.passed += checked as u32;
                            a.losses.extend(losses);
                            self.metrics.passed.inc_by(checked);
                        }
                        Err(why) => {
                            a.fail(why);
                            self.metrics.failed.inc();
                        }
                    }
                }
                SegmentOutcome::Fail(why) => {
                    tracing::warn!(uid = t.uid, "audit failed: {why}");
                    a.sampled += size as u32;
                    a.fail(why);
                    self.metrics.failed.inc();
                }
            }
        }
    }

    /// Everything a replay of segment `seg` needs, fetched from the miner: the snapshot, every
    /// summed micro-batch's account and its received payloads, older weights it names.
    async fn segment(
        &self,
        plan: &Plan,
        t: &Target,
        seg: &[StepEntry],
        listed_of: &impl Fn(&AuditKey) -> Vec<Vec<u8>>,
        befores: &HashSet<[u8; 32]>,
        deadline: &Deadline,
    ) -> Result<SegmentEvidence, Missing> {
        let middle = t.hood.sliver > 0 && t.hood.sliver + 1 < self.shape.slivers();
        let peer = t.hood.miner;
        let first = seg.first().ok_or(Missing::Nothing)?;
        let optim_hash = first.optim.ok_or(Missing::Nothing)?;
        let len = self.replay.snapshot_len.get(t.hood.sliver as usize).copied().unwrap_or(0);
        let blobs = |hashes: Vec<[u8; 32]>| {
            let req = AuditBlobsRequest { run: self.run, epoch: plan.epoch, hashes };
            let client = self.client.clone();
            move || {
                let (client, req) = (client.clone(), req.clone());
                async move { client.audit_blobs(peer, req).await }
            }
        };
        let published = self.retry(deadline, blobs(vec![first.before, optim_hash])).await?;
        if !published.contains(&first.before) || !published.contains(&optim_hash) {
            return Err(Missing::Fault("the snapshot its steps name is not kept".into()));
        }
        // Each attempt asks for the blob to be published again (another validator's requests
        // may have evicted it from the miner's audit store).
        let fetch = |hash: [u8; 32], max: u64| {
            let (client, ask) = (self.client.clone(), blobs(vec![hash]));
            move || {
                let (client, ask) = (client.clone(), ask.clone());
                async move {
                    ask().await?;
                    client.fetch_blob(peer, hash, max).await
                }
            }
        };
        let weights = self.retry(deadline, fetch(first.before, len)).await?;
        // Two moments per weight, and their names.
        let optim = self.retry(deadline, fetch(optim_hash, 2 * len + (16 << 10))).await?;
        let mut batches = HashMap::new();
        let mut older: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
        for step in seg {
            for key in &step.batches {
                let req = AuditRequest {
                    run: self.run,
                    epoch: plan.epoch,
                    route: key.route,
                    step: key.step,
                    micro_batch: key.micro_batch,
                };
                let answer = match self.retry(deadline, || self.client.audit(peer, req)).await? {
                    Some(a) => a,
                    None => {
                        return Err(Missing::Fault(format!(
                            "{key:?}: summed into a step, then not kept"
                        )))
                    }
                };
                let listed = listed_of(key);
                precheck(self.run, plan.epoch, key, &listed, &answer)
                    .map_err(|why| Missing::Fault(format!("{key:?}: {why}")))?;
                // Only a middle sliver runs micro-batches with older weights, and only with
                // weights a recorded step started from (anything else fails the replay).
                let w = answer.weights;
                if middle && w != step.before && befores.contains(&w) && !older.contains_key(&w) {
                    let published = self.retry(deadline, blobs(vec![w])).await?;
                    if published.contains(&w) {
                        let b = self.retry(deadline, fetch(w, len)).await?;
                        older.insert(w, b);
                    }
                }
                let payloads = self.received_payloads(peer, &answer, deadline).await?;
                batches.insert(*key, BatchAccount { answer, listed, payloads });
            }
        }
        Ok(SegmentEvidence { steps: seg.to_vec(), weights, optim, older, batches })
    }

    /// Fetches the payloads of the frames an answer says the miner received (what it sent is
    /// compared by hash only).
    async fn received_payloads(
        &self,
        peer: PeerId,
        answer: &AuditAnswer,
        deadline: &Deadline,
    ) -> Result<HashMap<[u8; 32], Vec<u8>>, Missing> {
        let mut payloads = HashMap::new();
        for f in answer.frames.iter().filter(|f| f.receipt.is_none()) {
            let h = FrameHeader::decode(&f.header)
                .map_err(|e| Missing::Fault(format!("a header that does not decode: {e}")))?;
            if payloads.contains_key(&h.payload_hash) {
                continue;
            }
            let len = h.payload_len.min(self.max_payload);
            let p =
                self.retry(deadline, || self.client.fetch_blob(peer, h.payload_hash, len)).await?;
            payloads.insert(h.payload_hash, p);
        }
        Ok(payloads)
    }

    async fn connect(&self, peer: PeerId, addrs: &[Multiaddr]) {
        if self.client.connected_peers().await.is_ok_and(|c| c.contains(&peer)) {
            return;
        }
        for addr in addrs.iter().take(4) {
            let dial =
                tokio::time::timeout(Duration::from_secs(2), self.client.dial(peer, addr.clone()));
            if matches!(dial.await, Ok(Ok(()))) {
                return;
            }
        }
    }

    /// `call`, retried while the miner is busy or the request fails in transit, until the
    /// deadline. A blob that does not match its hash or exceeds its bound is a fault at once.
    async fn retry<T, F, Fut>(&self, deadline: &Deadline, call: F) -> Result<T, Missing>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, P2pError>>,
    {
        for attempt in 0u32.. {
            match deadline.run(tokio::time::timeout(ATTEMPT_WINDOW, call())).await {
                None => return Err(Missing::Late),
                Some(Ok(Ok(v))) => return Ok(v),
                Some(Ok(Err(e))) if is_fault(&e) => return Err(Missing::Fault(e.to_string())),
                Some(r) => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(attempt, error = %e, "audit request failed; retrying");
                    }
                    let pause = Duration::from_millis(300);
                    if deadline.run(tokio::time::sleep(pause)).await.is_none() {
                        return Err(Missing::Late);
                    }
                }
            }
        }
        Err(Missing::Late)
    }
}

/// Every frame the miners' neighbours signed for, by micro-batch, direction and receiver.
type SentMap = HashMap<(AuditKey, Direction, PeerId), Vec<Vec<u8>>>;

/// Errors that no retry mends: the miner served bytes that are not what it named.
fn is_fault(e: &P2pError) -> bool {
    let s = e.to_string();
    s.contains("do not match their hash") || s.contains("longer than")
}

/// The cheap checks of an answer, before anything it names is fetched: a few frames, all of
/// this micro-batch, and the same sent frames its index listed.
fn precheck(
    run: u64,
    epoch: u64,
    key: &AuditKey,
    listed: &[Vec<u8>],
    answer: &AuditAnswer,
) -> Result<(), String> {
    if answer.frames.len() > MAX_ANSWER_FRAMES {
        return Err(format!("an account of {} frames for one micro-batch", answer.frames.len()));
    }
    let mut sent = Vec::new();
    for f in &answer.frames {
        let h = FrameHeader::decode(&f.header)
            .map_err(|e| format!("a header that does not decode: {e}"))?;
        if h.run != run
            || h.epoch != epoch
            || (h.route, h.step, h.micro_batch) != (key.route, key.step, key.micro_batch)
        {
            return Err("the answer holds a frame of another micro-batch".into());
        }
        if f.receipt.is_some() {
            sent.push(f.header.clone());
        }
    }
    let mut listed = listed.to_vec();
    listed.sort();
    sent.sort();
    if listed != sent {
        return Err("the answer's sent frames differ from those its index listed".into());
    }
    Ok(())
}

/// Why a miner's account is missing.
#[derive(Debug)]
enum Missing {
    /// Not answered by the deadline (or never, after retries).
    Late,
    /// The miner keeps nothing for the epoch.
    Nothing,
    /// The answer is itself a fault.
    Fault(String),
}

/// The steps split at the snapshots: each segment starts at a step that names the optimiser
/// state. Steps before the first snapshot cannot be replayed and are left out (their work does
/// not count). A micro-batch summed twice is a fault, and so is a snapshot whose weights come
/// from nowhere: each must continue the step before it, or be a restart, which starts again
/// from the epoch's first weights with a fresh optimiser (what a restarted miner loads).
/// BLAKE3 of a fresh optimiser's state (no moments, no steps).
fn fresh_optimiser() -> [u8; 32] {
    *blake3::hash(&sliver_engine::optim::AdamW::new(Default::default()).state_bytes()).as_bytes()
}

fn segments_of(steps: &[StepEntry]) -> Result<Vec<Vec<StepEntry>>, String> {
    let fresh = fresh_optimiser();
    let mut seen = HashSet::new();
    let mut out: Vec<Vec<StepEntry>> = Vec::new();
    let start = steps.iter().find(|s| s.optim.is_some()).map(|s| s.before);
    for (i, s) in steps.iter().enumerate() {
        for k in &s.batches {
            if !seen.insert(*k) {
                return Err(format!("{k:?} summed into two steps"));
            }
        }
        match (s.optim, out.last_mut()) {
            (Some(optim), last) => {
                let continues = i > 0 && steps[i - 1].after == s.before;
                let restarts = Some(s.before) == start && (last.is_none() || optim == fresh);
                if last.is_some() && !continues && !restarts {
                    return Err(format!(
                        "step record {i} starts from weights that no step gave and that are \
                         not the epoch's first"
                    ));
                }
                out.push(vec![s.clone()]);
            }
            // A gap (a step not recorded) ends the segment: the steps up to the next snapshot
            // cannot be replayed, and their work does not count.
            (None, Some(seg)) if seg.last().is_some_and(|p| p.after == s.before) => {
                seg.push(s.clone())
            }
            (None, _) => {
                if out.last().is_some_and(|seg| !seg.is_empty()) {
                    out.push(Vec::new());
                }
            }
        }
    }
    Ok(out)
}

/// Whether the miner's epoch started from the weights it may start from: the state it
/// committed for the epoch before (if it merged in the same sliver); else, when a strict
/// majority of its sliver's replicas committed one state (which a miner that did not merge
/// takes), a state they committed or the weights its own steps of the epoch before began or
/// ended with. `Ok(true)` when it holds, `Ok(false)` when there is nothing to check against:
/// no majority (a miner without one keeps its weights), or a state not served.
fn start_check(
    plan: &Plan,
    t: &Target,
    steps: &[StepEntry],
    starts: &HashMap<[u8; 32], [u8; 32]>,
) -> Result<bool, String> {
    let Some(first) = steps.iter().find(|s| s.optim.is_some()) else { return Ok(false) };
    // Its optimiser state goes on from where the epoch before ended, or starts afresh.
    if let (Some(before), Some(optim)) = (plan.optim_before.get(&t.uid), first.optim) {
        if optim != *before && optim != fresh_optimiser() {
            return Err(
                "its epoch starts from another optimiser state than its last epoch ended in".into(),
            );
        }
    }
    let Some(committed) = plan.committed.get(&t.hood.sliver) else { return Ok(false) };
    let own: Vec<&Committed> = committed.states.iter().filter(|c| c.uid == t.uid).collect();
    if own.is_empty() {
        // Without a majority a miner that did not merge keeps its weights; one that trained
        // in this sliver last epoch (in this validator's audit of it) and did not commit may
        // have merged a set its replicas did not, or its commitment failed to land. Neither
        // is checked.
        if majority(committed).is_none()
            || plan.remembered.get(&t.uid).is_some_and(|r| !r.is_empty())
        {
            return Ok(false);
        }
    }
    let rule: Vec<&Committed> =
        if own.is_empty() { committed.states.iter().collect() } else { own };
    let allowed: Vec<[u8; 32]> = rule.iter().filter_map(|c| starts.get(&c.hash)).copied().collect();
    if rule.is_empty() {
        return Ok(false);
    }
    if allowed.contains(&first.before) {
        return Ok(true);
    }
    let merged_itself = rule.iter().any(|c| c.uid == t.uid);
    if !merged_itself && plan.remembered.get(&t.uid).is_some_and(|r| r.contains(&first.before)) {
        return Ok(true);
    }
    if allowed.len() < rule.len() {
        // A state that could not be fetched may be the one it started from.
        return Ok(false);
    }
    Err(if merged_itself {
        "its epoch starts from other weights than the state it committed on chain".into()
    } else {
        "its epoch starts from weights no replica of its sliver committed".into()
    })
}

#[cfg(test)]
fn start_fault(
    plan: &Plan,
    t: &Target,
    steps: &[StepEntry],
    starts: &HashMap<[u8; 32], [u8; 32]>,
) -> Option<String> {
    start_check(plan, t, steps, starts).err()
}

/// The state a strict majority of the sliver's miners committed, if one did.
fn majority(committed: &CommittedSliver) -> Option<[u8; 32]> {
    let mut counts: BTreeMap<[u8; 32], usize> = BTreeMap::new();
    for c in &committed.states {
        *counts.entry(c.hash).or_default() += 1;
    }
    counts.into_iter().find(|(_, n)| 2 * n > committed.replicas).map(|(h, _)| h)
}

/// The state most of the sliver's miners committed, the lowest committing uid on a tie.
fn plurality(committed: &CommittedSliver) -> Option<[u8; 32]> {
    let mut counts: BTreeMap<[u8; 32], (usize, Uid)> = BTreeMap::new();
    for c in &committed.states {
        let e = counts.entry(c.hash).or_insert((0, c.uid));
        e.0 += 1;
        e.1 = e.1.min(c.uid);
    }
    counts.into_iter().max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1))).map(|(h, _)| h)
}

/// Whether the segment after `i` continues it (its snapshot names the state `i` ends in).
fn continued(segments: &[Vec<StepEntry>], i: usize) -> Option<&StepEntry> {
    let (end, next) = (segments.get(i)?.last()?, segments.get(i + 1)?.first()?);
    (next.before == end.after).then_some(next)
}

/// What the fetched indexes say was sent (by micro-batch, direction and receiver), and whose
/// sent lists are complete. A faulty index was checked only up to its fault, so its sent list
/// is partial: it cannot deny having sent what a neighbour received.
fn sent_by(targets: &[Target], indexes: &[Result<Indexed, Missing>]) -> (SentMap, HashSet<PeerId>) {
    let mut sent: SentMap = HashMap::new();
    let mut indexed: HashSet<PeerId> = HashSet::new();
    for (t, ix) in targets.iter().zip(indexes) {
        let Ok(ix) = ix else { continue };
        if ix.report.fault.is_none() {
            indexed.insert(t.hood.miner);
        }
        for SentFrame { key, header, bytes, receiver } in &ix.report.sent {
            sent.entry((*key, header.direction, *receiver)).or_default().push(bytes.clone());
        }
    }
    (sent, indexed)
}

/// Every input the replay used must be a frame its neighbour listed as sent to this miner.
fn tied_to_neighbours(
    t: &Target,
    received: &[(AuditKey, Direction, Vec<u8>)],
    sent: &SentMap,
    indexed: &HashSet<PeerId>,
) -> Result<(), String> {
    for (key, dir, bytes) in received {
        match sent.get(&(*key, *dir, t.hood.miner)) {
            Some(b) if b.contains(bytes) => {}
            Some(_) => {
                return Err(format!(
                    "{key:?}: the {dir:?} it received differs from what its neighbour sent"
                ))
            }
            None => {
                let senders = match dir {
                    Direction::Activation => &t.hood.previous,
                    Direction::Gradient => &t.hood.next,
                };
                if !senders.is_empty() && senders.iter().all(|p| indexed.contains(p)) {
                    return Err(format!("{key:?}: an {dir:?} that no neighbour says it sent"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(before: u8, after: u8, optim: Option<[u8; 32]>, mb: u64) -> StepEntry {
        StepEntry {
            before: [before; 32],
            after: [after; 32],
            optim,
            schedule_step: 0,
            lr: 1e-3,
            factor: 1.0,
            skipped: false,
            batches: vec![AuditKey { route: 0, step: mb, micro_batch: 0 }],
        }
    }

    fn target(uid: Uid, sliver: u16) -> Target {
        let miner = PeerId::random();
        let hood = Neighbourhood {
            run: 1,
            epoch: 5,
            miner,
            sliver,
            previous: Vec::new(),
            next: Vec::new(),
            route: None,
        };
        Target { uid, addrs: Vec::new(), hood }
    }

    #[test]
    fn only_a_complete_sent_list_denies_a_received_frame() {
        let (sender, mut receiver) = (target(1, 1), target(2, 0));
        receiver.hood.next = vec![sender.hood.miner];
        let key = AuditKey { route: 0, step: 3, micro_batch: 0 };
        let header = |step: u64| FrameHeader {
            run: 1,
            epoch: 5,
            step,
            micro_batch: 0,
            route: 0,
            sliver: 1,
            direction: Direction::Gradient,
            codec: sliver_wire::WireCodec::F32,
            shape: vec![1, 2, 4],
            payload_len: 40,
            payload_hash: [step as u8; 32],
        };
        let listed = header(3);
        let frame = SentFrame {
            key,
            header: listed.clone(),
            bytes: listed.encode(),
            receiver: receiver.hood.miner,
        };
        let index = |fault: Option<&str>| Indexed {
            entries: Vec::new(),
            report: sliver_audit::WorkReport {
                sent: vec![frame.clone()],
                fault: fault.map(str::to_string),
                ..Default::default()
            },
            steps: Vec::new(),
        };
        let targets = [sender.clone(), receiver.clone()];
        let got = |what: &FrameHeader| vec![(key, Direction::Gradient, what.encode())];

        let (sent, indexed) = sent_by(&targets, &[Ok(index(None)), Err(Missing::Nothing)]);
        assert!(indexed.contains(&sender.hood.miner));
        assert_eq!(tied_to_neighbours(&receiver, &got(&listed), &sent, &indexed), Ok(()));
        let other = header(4);
        let why = tied_to_neighbours(&receiver, &got(&other), &sent, &indexed).unwrap_err();
        assert!(why.contains("differs from what its neighbour sent"), "{why}");
        let elsewhere = [(AuditKey { step: 9, ..key }, Direction::Gradient, other.encode())];
        let why = tied_to_neighbours(&receiver, &elsewhere, &sent, &indexed).unwrap_err();
        assert!(why.contains("no neighbour says it sent"), "{why}");

        // The sender's index failed part-way (a cheater's): the receiver is not blamed for a
        // frame the partial list lacks.
        let (sent, indexed) = sent_by(
            &targets,
            &[Ok(index(Some("a receipt that does not verify"))), Err(Missing::Late)],
        );
        assert!(!indexed.contains(&sender.hood.miner));
        assert_eq!(tied_to_neighbours(&receiver, &elsewhere, &sent, &indexed), Ok(()));
    }

    #[test]
    fn an_epoch_starts_from_a_committed_state() {
        let committed =
            |uid, hash: u8| Committed { uid, peer: PeerId::random(), hash: [hash; 32], size: 1 };
        // States 10 and 11 (by replicas of sliver 0) hold weights 1 and 2.
        let states = vec![committed(3, 10), committed(4, 11), committed(5, 11)];
        let plan = Plan {
            epoch: 5,
            committed: BTreeMap::from([(0, CommittedSliver { replicas: 3, states })]),
            remembered: HashMap::from([(7, vec![[6; 32]])]),
            ..Plan::default()
        };
        let starts = HashMap::from([([10; 32], [1; 32]), ([11; 32], [2; 32])]);
        let epoch_from = |w: u8| vec![step(w, 9, Some([0; 32]), 0)];
        // A replica that committed must start from its own state.
        assert_eq!(start_fault(&plan, &target(3, 0), &epoch_from(1), &starts), None);
        let own = start_fault(&plan, &target(3, 0), &epoch_from(2), &starts).unwrap();
        assert!(own.contains("than the state it committed"), "{own}");
        // Another (it did not merge) may start from any replica's state.
        assert_eq!(start_fault(&plan, &target(8, 0), &epoch_from(2), &starts), None);
        let made_up = start_fault(&plan, &target(8, 0), &epoch_from(0), &starts).unwrap();
        assert!(made_up.contains("no replica of its sliver committed"), "{made_up}");
        // One that trained here last epoch and did not commit is not checked (its merge set,
        // or its commitment, may have differed from its replicas').
        assert_eq!(start_fault(&plan, &target(7, 0), &epoch_from(0), &starts), None);
        // Nothing committed for its sliver, or a state not served: not checked.
        assert_eq!(start_fault(&plan, &target(7, 1), &epoch_from(0), &starts), None);
        let partly = HashMap::from([([10; 32], [1; 32])]);
        assert_eq!(start_fault(&plan, &target(8, 0), &epoch_from(0), &partly), None);
        // The optimiser state goes on from the end marker of the epoch before, or is fresh.
        let mut chained = plan.clone();
        chained.optim_before.insert(3, [0; 32]);
        assert_eq!(start_fault(&chained, &target(3, 0), &epoch_from(1), &starts), None);
        let mut other = epoch_from(1);
        other[0].optim = Some([5; 32]);
        let why = start_fault(&chained, &target(3, 0), &other, &starts).unwrap();
        assert!(why.contains("another optimiser state"), "{why}");
        other[0].optim = Some(fresh_optimiser());
        assert_eq!(start_fault(&chained, &target(3, 0), &other, &starts), None);
        // Without a majority a miner that did not merge keeps its weights: not checked.
        let mut split = plan.clone();
        split.committed.get_mut(&0).unwrap().replicas = 5;
        assert_eq!(start_fault(&split, &target(8, 0), &epoch_from(0), &starts), None);
        assert!(start_fault(&split, &target(4, 0), &epoch_from(0), &starts).is_some());
    }

    #[test]
    fn segments_split_at_snapshots_that_continue_or_restart() {
        let fresh =
            *blake3::hash(&sliver_engine::optim::AdamW::new(Default::default()).state_bytes())
                .as_bytes();
        let s = [7u8; 32];
        // 1 -> 2 -> 3 | 3 -> 4 (continues) | 1 -> 5 (a restart from the epoch's start).
        let steps = vec![
            step(1, 2, Some(s), 0),
            step(2, 3, None, 1),
            step(3, 4, Some(s), 2),
            step(1, 5, Some(fresh), 3),
            step(5, 6, None, 4),
        ];
        let segs = segments_of(&steps).unwrap();
        assert_eq!(segs.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1, 2]);
        assert!(continued(&segs, 0).is_some_and(|n| n.optim == Some(s)));
        assert!(continued(&segs, 1).is_none(), "a restart continues nothing");
        assert!(continued(&segs, 2).is_none());
        // Steps before any snapshot are left out.
        assert_eq!(segments_of(&steps[1..3]).unwrap().len(), 1);

        // Weights from nowhere at a snapshot.
        let mut bad = steps.clone();
        bad[2].before = [9; 32];
        assert!(segments_of(&bad).unwrap_err().contains("no step gave"));
        // A "restart" that keeps an optimiser state it could not have loaded.
        let mut bad = steps.clone();
        bad[3].optim = Some(s);
        assert!(segments_of(&bad).unwrap_err().contains("no step gave"));
        // A step that does not continue the one before (a gap in the records) ends its
        // segment: the steps after it up to the next snapshot are left out.
        let mut gap = steps.clone();
        gap[1].before = [8; 32];
        let segs = segments_of(&gap).unwrap();
        assert_eq!(segs.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 0, 1, 2]);
        // The same micro-batch summed twice.
        let mut bad = steps;
        bad[4].batches = bad[0].batches.clone();
        assert!(segments_of(&bad).unwrap_err().contains("two steps"));
    }
}
