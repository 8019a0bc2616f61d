//! Auditing one epoch of every miner's work, over the network.
//!
//! For each miner the chain assigned in the audited epoch, the auditor fetches its whole audit
//! index and checks every receipt in it (`sliver_audit::work`), samples keys from the verified
//! ones (`sliver_audit::sample`), asks for each sampled micro-batch's account, fetches the
//! weights snapshot and payloads by hash and has them replayed (`sliver_audit::replay`) by the
//! replay task, which owns the engine on its own thread. A replay that passes is tied to the
//! neighbours: every frame the miner says it received must be one its neighbour's index lists
//! as sent to it, byte for byte (so inputs cannot be made up to fit stale or copied outputs).
//!
//! Everything is bounded by the deadline (the Commit phase of the epoch after the audited
//! one, when the scores must be committed): an audit asked and not answered by then fails;
//! transient refusals (a miner busy with other validators) are retried until then.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use sliver_audit::work::SentFrame;
use sliver_audit::{check_index, sample, Evidence, Neighbourhood, Outcome, Replayer, Secret};
use sliver_chain::Uid;
use sliver_p2p::{
    AuditAnswer, AuditIndexRequest, AuditKey, AuditRequest, Client, Direction, FrameHeader,
    IndexEntry, Multiaddr, P2pError, PeerId,
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
/// Micro-batches replayed per miner and epoch at most.
const MAX_SAMPLES: usize = 64;
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
#[derive(Clone, Debug)]
pub struct Plan {
    /// The audited epoch.
    pub epoch: u64,
    /// The audit seed drawn when the epoch after it began.
    pub seed: [u8; 32],
    /// Every miner assigned in it.
    pub targets: Vec<Target>,
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

struct Job {
    epoch: u64,
    sliver: u16,
    key: AuditKey,
    listed: Vec<Vec<u8>>,
    evidence: Evidence,
    reply: oneshot::Sender<(Outcome, Duration)>,
}

/// The replay task: one thread owns the engine; audits send it jobs.
#[derive(Clone)]
pub struct ReplayHandle {
    jobs: mpsc::Sender<Job>,
    snapshot_len: Arc<Vec<u64>>,
}

impl ReplayHandle {
    /// Starts the task with `replayer`.
    pub fn spawn(mut replayer: Replayer) -> Result<Self, String> {
        let snapshot_len = (0..replayer.shape().slivers())
            .map(|s| replayer.snapshot_len(s))
            .collect::<Result<Vec<_>, _>>()?;
        let (jobs, mut rx) = mpsc::channel::<Job>(64);
        std::thread::Builder::new()
            .name("replay".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let started = Instant::now();
                    let run = std::panic::AssertUnwindSafe(|| {
                        sliver_engine::on_compute_thread(|| {
                            replayer.check(job.epoch, job.sliver, job.key, &job.listed, &job.evidence)
                        })
                    });
                    match std::panic::catch_unwind(run) {
                        Ok(outcome) => {
                            let _ = job.reply.send((outcome, started.elapsed()));
                        }
                        Err(_) => {
                            // A bug of ours, not the miner's fault: this audit is not counted.
                            tracing::error!(key = ?job.key, "the replay panicked; audit not counted");
                            replayer.unload();
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the replay thread: {e}"))?;
        Ok(ReplayHandle { jobs, snapshot_len: Arc::new(snapshot_len) })
    }

    async fn check(
        &self,
        epoch: u64,
        sliver: u16,
        key: AuditKey,
        listed: Vec<Vec<u8>>,
        evidence: Evidence,
    ) -> Option<(Outcome, Duration)> {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job { epoch, sliver, key, listed, evidence, reply }).await.ok()?;
        rx.await.ok()
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
}

impl Auditor {
    /// Audits `plan`, returning one account per target.
    pub async fn audit(&self, plan: &Plan, deadline: &Deadline) -> Vec<MinerAudit> {
        let indexes = join_all(plan.targets.iter().map(|t| async move {
            match tokio::time::timeout(INDEX_WINDOW, self.index(plan, t, deadline)).await {
                Ok(r) => r,
                Err(_) => Err(Missing::Late),
            }
        }))
        .await;
        let mut sent: SentMap = HashMap::new();
        let mut indexed: HashSet<PeerId> = HashSet::new();
        for (t, ix) in plan.targets.iter().zip(&indexes) {
            if let Ok(ix) = ix {
                indexed.insert(t.hood.miner);
                for SentFrame { key, header, bytes, receiver } in &ix.report.sent {
                    let at = (*key, header.direction, *receiver);
                    sent.entry(at).or_default().push(bytes.clone());
                }
            }
        }
        let sent = Arc::new(sent);
        let indexed = Arc::new(indexed);
        let audits = plan.targets.iter().zip(indexes).map(|(t, ix)| {
            let (sent, indexed) = (sent.clone(), indexed.clone());
            async move {
                let mut a = MinerAudit { uid: t.uid, sliver: t.hood.sliver, ..Default::default() };
                match ix {
                    Err(Missing::Late) => a.unanswered += 1,
                    Err(Missing::Nothing) => {}
                    Err(Missing::Fault(why)) => a.fail(why),
                    Ok(ix) => {
                        self.replays(plan, t, &ix, &sent, &indexed, deadline, &mut a).await;
                    }
                }
                a
            }
        });
        join_all(audits).await
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
        // Up to a signature check per frame: off the async threads.
        let (hood, shape) = (t.hood.clone(), self.shape.clone());
        tokio::task::spawn_blocking(move || {
            let report = check_index(&hood, &shape, &entries);
            Indexed { entries, report }
        })
        .await
        .map_err(|_| Missing::Late)
    }

    /// Samples and replays the miner's verified micro-batches.
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
        a.work = ix.report.verified.len() as u64;
        if let Some(why) = &ix.report.fault {
            a.fail(format!("its index: {why}"));
            self.metrics.failed.inc();
            return;
        }
        let mut keys = sample(&self.secret, &plan.seed, t.uid, &ix.report.verified, self.rate);
        keys.truncate(MAX_SAMPLES);
        let listed_of = |key: &AuditKey| -> Vec<Vec<u8>> {
            ix.entries
                .iter()
                .find(|e| e.key == *key)
                .map(|e| e.sent.iter().map(|f| f.header.clone()).collect())
                .unwrap_or_default()
        };
        let mut snapshots: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
        for key in keys {
            // Keys not asked before the deadline count neither way.
            if deadline.passed() {
                break;
            }
            let Ok(_slot) = self.slots.acquire().await else { return };
            a.sampled += 1;
            let req = AuditRequest {
                run: self.run,
                epoch: plan.epoch,
                route: key.route,
                step: key.step,
                micro_batch: key.micro_batch,
            };
            let peer = t.hood.miner;
            let answer = match self.retry(deadline, || self.client.audit(peer, req)).await {
                Ok(Some(answer)) => answer,
                Ok(None) => {
                    a.fail(format!("{key:?}: listed in its index, then not kept"));
                    self.metrics.failed.inc();
                    continue;
                }
                Err(Missing::Late | Missing::Nothing) => {
                    a.unanswered += 1;
                    self.metrics.unanswered.inc();
                    continue;
                }
                Err(Missing::Fault(why)) => {
                    a.fail(why);
                    self.metrics.failed.inc();
                    continue;
                }
            };
            let listed = listed_of(&key);
            if let Err(why) = precheck(self.run, plan.epoch, &key, &listed, &answer) {
                a.fail(format!("{key:?}: {why}"));
                self.metrics.failed.inc();
                continue;
            }
            let evidence = match self.evidence(t, answer, &mut snapshots, deadline).await {
                Ok(e) => e,
                Err(Missing::Late | Missing::Nothing) => {
                    a.unanswered += 1;
                    self.metrics.unanswered.inc();
                    continue;
                }
                Err(Missing::Fault(why)) => {
                    a.fail(format!("{key:?}: {why}"));
                    self.metrics.failed.inc();
                    continue;
                }
            };
            let Some((outcome, took)) =
                self.replay.check(plan.epoch, t.hood.sliver, key, listed, evidence).await
            else {
                // The replay itself failed (logged): not the miner's fault, not counted.
                a.sampled -= 1;
                continue;
            };
            self.metrics.replay_seconds.observe(took.as_secs_f64());
            match outcome {
                Outcome::Pass { loss, received } => {
                    match tied_to_neighbours(t, &key, &received, sent, indexed) {
                        Ok(()) => {
                            a.passed += 1;
                            a.losses.extend(loss);
                            self.metrics.passed.inc();
                        }
                        Err(why) => {
                            a.fail(format!("{key:?}: {why}"));
                            self.metrics.failed.inc();
                        }
                    }
                }
                Outcome::Fail(why) => {
                    tracing::warn!(uid = t.uid, ?key, "audit failed: {why}");
                    a.fail(format!("{key:?}: {why}"));
                    self.metrics.failed.inc();
                }
            }
        }
    }

    /// Fetches the blobs an answer names (snapshots cached per miner).
    async fn evidence(
        &self,
        t: &Target,
        answer: AuditAnswer,
        snapshots: &mut HashMap<[u8; 32], Vec<u8>>,
        deadline: &Deadline,
    ) -> Result<Evidence, Missing> {
        let peer = t.hood.miner;
        let weights = match snapshots.get(&answer.weights) {
            Some(w) => w.clone(),
            None => {
                let len =
                    self.replay.snapshot_len.get(t.hood.sliver as usize).copied().unwrap_or(0);
                let w = self
                    .retry(deadline, || self.client.fetch_blob(peer, answer.weights, len))
                    .await?;
                snapshots.clear();
                snapshots.insert(answer.weights, w.clone());
                w
            }
        };
        let mut payloads = HashMap::new();
        for f in &answer.frames {
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
        Ok(Evidence { answer, weights, payloads })
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

/// Every input the replay used must be a frame its neighbour listed as sent to this miner.
fn tied_to_neighbours(
    t: &Target,
    key: &AuditKey,
    received: &[(Direction, Vec<u8>)],
    sent: &SentMap,
    indexed: &HashSet<PeerId>,
) -> Result<(), String> {
    for (dir, bytes) in received {
        // The first sliver's received gradient is not an input of its replay.
        if t.hood.sliver == 0 && *dir == Direction::Gradient {
            continue;
        }
        match sent.get(&(*key, *dir, t.hood.miner)) {
            Some(b) if b.contains(bytes) => {}
            Some(_) => {
                return Err(format!("the {dir:?} it received differs from what its neighbour sent"))
            }
            None => {
                let senders = match dir {
                    Direction::Activation => &t.hood.previous,
                    Direction::Gradient => &t.hood.next,
                };
                if !senders.is_empty() && senders.iter().all(|p| indexed.contains(p)) {
                    return Err(format!("an {dir:?} that no neighbour says it sent"));
                }
            }
        }
    }
    Ok(())
}
