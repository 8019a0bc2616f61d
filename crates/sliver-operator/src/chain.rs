//! The chain task: one task owns the connection to the node (the shape of rust-libp2p's
//! file-sharing example: one owner, others send it requests).
//!
//! - It **follows** the chain: epoch and phase every second, the sliver assignment with them
//!   (read at the same best block), the registry (uids, roles, PeerIds, addresses) at each
//!   epoch change and every 10 s, and the previous epoch's assignment (remembered at the
//!   boundary, or read at the last block of that epoch after a restart). Each change is
//!   published as an [`Arc<ChainView>`] on a `watch` channel.
//! - It **runs requests** ([`ChainHandle::call`]): a request is a closure given the current
//!   connection; requests sent while the node is away wait (up to [`MAX_QUEUED`]) until the
//!   task has reconnected.
//! - It **reconnects**, in one place: after a failure it waits 1, 2, 4 ... up to 30 s, each
//!   wait drawn between half and all of that (jitter), so a thousand miners that lost the same
//!   node do not all come back in the same second.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sliver_chain::{AccountId, ChainClient, ChainError, Phase, Role, Uid};
use sliver_p2p::{Multiaddr, PeerId, PeerRole};
use tokio::sync::{mpsc, oneshot, watch};

/// Requests waiting for a connection at most; more are refused at once.
pub const MAX_QUEUED: usize = 256;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the registry is read again within an epoch.
const REGISTRY_EVERY: Duration = Duration::from_secs(10);
/// Longest a follow-up read may take before the connection counts as lost.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// A registered participant, as the other parts of a program use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its uid.
    pub uid: Uid,
    /// Its account.
    pub account: AccountId,
    /// Miner or validator.
    pub role: Role,
    /// Its PeerId (from the registered ed25519 key).
    pub peer: PeerId,
    /// Its declared addresses that parse (at most 8).
    pub addrs: Vec<Multiaddr>,
}

/// A sliver assignment: the uids of each sliver, in uid order.
pub type Slivers = BTreeMap<u16, Vec<Uid>>;

/// What the chain says, as the task last read it.
#[derive(Clone, Debug, Default)]
pub struct ChainView {
    /// Whether the task holds a working connection now.
    pub connected: bool,
    /// The current epoch (at the best block).
    pub epoch: u64,
    /// Its phase; `None` before the first read.
    pub phase: Option<Phase>,
    /// First block of the current epoch.
    pub epoch_start: u32,
    /// Every registered participant, by uid.
    pub participants: BTreeMap<Uid, Peer>,
    /// The current epoch's assignment.
    pub assignment: Slivers,
    /// The previous epoch's assignment, with its epoch, if known.
    pub previous: Option<(u64, Slivers)>,
}

impl ChainView {
    /// The sliver `uid` is assigned this epoch.
    pub fn sliver_of(&self, uid: Uid) -> Option<u16> {
        self.assignment.iter().find(|(_, uids)| uids.contains(&uid)).map(|(s, _)| *s)
    }

    /// The registered miners assigned to `sliver` this epoch, in uid order.
    pub fn miners(&self, sliver: u16) -> Vec<&Peer> {
        Self::peers_of(&self.participants, self.assignment.get(&sliver))
    }

    /// The registered miners that were assigned to `sliver` in the previous epoch (those still
    /// registered), in uid order; empty if that assignment is not known.
    pub fn previous_miners(&self, sliver: u16) -> Vec<&Peer> {
        let uids = self.previous.as_ref().and_then(|(_, s)| s.get(&sliver));
        Self::peers_of(&self.participants, uids)
    }

    fn peers_of<'a>(all: &'a BTreeMap<Uid, Peer>, uids: Option<&Vec<Uid>>) -> Vec<&'a Peer> {
        uids.into_iter().flatten().filter_map(|u| all.get(u)).collect()
    }

    /// The participant with PeerId `peer`.
    pub fn peer(&self, peer: &PeerId) -> Option<&Peer> {
        self.participants.values().find(|p| p.peer == *peer)
    }

    /// Every registered PeerId with its role: what the P2P node admits.
    pub fn roles(&self) -> HashMap<PeerId, PeerRole> {
        self.participants
            .values()
            .map(|p| {
                let role = match p.role {
                    Role::Miner => PeerRole::Miner,
                    Role::Validator => PeerRole::Validator,
                };
                (p.peer, role)
            })
            .collect()
    }
}

/// Why a request did not run.
#[derive(Debug, thiserror::Error)]
pub enum ChainTaskError {
    /// The chain answered with an error (or the connection broke during the request).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// Too many requests are waiting for the node to come back.
    #[error("{MAX_QUEUED} chain requests already wait for the node at {0}; try again later")]
    Busy(String),
    /// The chain task has stopped.
    #[error("the chain task has stopped")]
    Stopped,
}

type Job = Box<dyn FnOnce(ChainClient) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send>;

/// Handle to the chain task; cheap to clone.
#[derive(Clone)]
pub struct ChainHandle {
    requests: mpsc::Sender<Job>,
    view: watch::Receiver<Arc<ChainView>>,
    url: String,
}

impl ChainHandle {
    /// Starts the task for the node at `url`. It connects in the background; [`ChainView`]'s
    /// `connected` says when it has.
    pub fn spawn(url: &str) -> Self {
        let (requests, rx) = mpsc::channel(MAX_QUEUED);
        let (view_tx, view) = watch::channel(Arc::new(ChainView::default()));
        let task = ChainTask {
            url: url.to_string(),
            conn: None,
            failures: 0,
            next_attempt: Instant::now(),
            rng: seed(),
            view: view_tx,
            requests: rx,
            queued: VecDeque::new(),
            last_registry: None,
            warned_previous: false,
        };
        tokio::spawn(task.run());
        ChainHandle { requests, view, url: url.to_string() }
    }

    /// The node's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What the chain says now.
    pub fn view(&self) -> Arc<ChainView> {
        self.view.borrow().clone()
    }

    /// A receiver of every new view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ChainView>> {
        self.view.clone()
    }

    /// Waits until the task has read the chain once (connected and followed), at most `wait`.
    pub async fn ready(&self, wait: Duration) -> Result<Arc<ChainView>, ChainTaskError> {
        let mut rx = self.view.clone();
        let ok = tokio::time::timeout(wait, rx.wait_for(|v| v.connected && v.phase.is_some()))
            .await
            .map(|r| r.map(|v| v.clone()));
        match ok {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(ChainTaskError::Stopped),
            Err(_) => Err(ChainError::Unreachable {
                url: self.url.clone(),
                reason: format!("no answer within {wait:?}"),
            }
            .into()),
        }
    }

    /// Runs `f` with the task's connection (waiting while the node is away) and returns its
    /// result. A connection error tells the task to reconnect; the caller decides whether to
    /// call again.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, ChainTaskError>
    where
        T: Send + 'static,
        F: FnOnce(ChainClient) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, ChainError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |client| {
            Box::pin(async move {
                let r = f(client).await;
                let lost = r.as_ref().err().is_some_and(connection_lost);
                let _ = tx.send(r);
                lost
            })
        });
        self.requests.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ChainTaskError::Busy(self.url.clone()),
            mpsc::error::TrySendError::Closed(_) => ChainTaskError::Stopped,
        })?;
        Ok(rx.await.map_err(|_| ChainTaskError::Stopped)??)
    }
}

/// Whether `e` means the connection (not the request) failed.
pub fn connection_lost(e: &ChainError) -> bool {
    matches!(e, ChainError::Unreachable { .. } | ChainError::Rpc(_) | ChainError::Timeout(_))
}

struct ChainTask {
    url: String,
    conn: Option<ChainClient>,
    failures: u32,
    next_attempt: Instant,
    rng: u64,
    view: watch::Sender<Arc<ChainView>>,
    requests: mpsc::Receiver<Job>,
    queued: VecDeque<Job>,
    last_registry: Option<Instant>,
    warned_previous: bool,
}

impl ChainTask {
    async fn run(mut self) {
        // Requests report a lost connection here.
        let (lost_tx, mut lost_rx) = mpsc::unbounded_channel();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if self.conn.is_none() {
                        self.connect().await;
                    }
                    if self.conn.is_some() {
                        self.follow().await;
                    }
                    self.dispatch_queued(&lost_tx);
                }
                job = self.requests.recv() => match job {
                    Some(job) => self.dispatch(job, &lost_tx),
                    None => return, // every handle is gone
                },
                Some(()) = lost_rx.recv() => {
                    if self.conn.is_some() {
                        self.disconnected("a request lost the connection");
                    }
                }
            }
        }
    }

    fn dispatch(&mut self, job: Job, lost: &mpsc::UnboundedSender<()>) {
        match &self.conn {
            Some(client) => {
                let (client, lost) = (client.clone(), lost.clone());
                tokio::spawn(async move {
                    if job(client).await {
                        let _ = lost.send(());
                    }
                });
            }
            None if self.queued.len() < MAX_QUEUED => self.queued.push_back(job),
            // Dropping the job drops its reply: the caller sees the task refuse it.
            None => {
                tracing::warn!(url = %self.url, "chain request dropped: too many wait for the node")
            }
        }
    }

    fn dispatch_queued(&mut self, lost: &mpsc::UnboundedSender<()>) {
        while self.conn.is_some() {
            let Some(job) = self.queued.pop_front() else { break };
            self.dispatch(job, lost);
        }
    }

    async fn connect(&mut self) {
        if Instant::now() < self.next_attempt {
            return;
        }
        match tokio::time::timeout(READ_TIMEOUT, ChainClient::connect(&self.url)).await {
            Ok(Ok(c)) => {
                if self.failures > 0 {
                    tracing::info!(url = %self.url, "reconnected to the chain");
                } else {
                    tracing::info!(url = %self.url, "connected to the chain");
                }
                self.conn = Some(c);
                self.failures = 0;
                self.last_registry = None;
            }
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("no answer within 15 s"),
        }
    }

    fn failed(&mut self, why: &str) {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures, &mut self.rng);
        self.next_attempt = Instant::now() + wait;
        tracing::warn!(url = %self.url, error = %why, retry_in = ?wait, "chain connection failed");
    }

    fn disconnected(&mut self, why: &str) {
        self.conn = None;
        self.failed(why);
        self.view.send_modify(|v| Arc::make_mut(v).connected = false);
    }

    /// Reads epoch, phase and assignment; the registry and the previous assignment when due.
    async fn follow(&mut self) {
        let Some(client) = self.conn.clone() else { return };
        let read = tokio::time::timeout(READ_TIMEOUT, self.read(&client)).await;
        match read {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.disconnected(&format!("chain read failed: {e}")),
            Err(_) => self.disconnected("chain read took longer than 15 s"),
        }
    }

    async fn read(&mut self, client: &ChainClient) -> Result<(), ChainError> {
        let (info, assignments) = client.epoch_and_assignments().await?;
        let epoch = info.epoch as u64;
        let old = self.view.borrow().clone();
        let changed = old.epoch != epoch || old.phase.is_none();
        let mut slivers = Slivers::new();
        for (uid, sliver) in assignments {
            slivers.entry(sliver).or_default().push(uid);
        }
        for uids in slivers.values_mut() {
            uids.sort_unstable();
        }
        let registry_due =
            changed || self.last_registry.is_none_or(|t| t.elapsed() > REGISTRY_EVERY);
        let participants = if registry_due {
            self.last_registry = Some(Instant::now());
            Some(read_participants(client).await?)
        } else {
            None
        };
        let mut previous = old.previous.clone();
        if changed {
            previous = if old.phase.is_some() && old.epoch + 1 == epoch {
                Some((old.epoch, old.assignment.clone()))
            } else {
                None
            };
        }
        if previous.as_ref().is_none_or(|(e, _)| e + 1 != epoch) && epoch > 0 {
            previous = self.read_previous(client, info.epoch_start, epoch).await;
        }
        self.view.send_if_modified(|v| {
            let next = ChainView {
                connected: true,
                epoch,
                phase: Some(info.phase),
                epoch_start: info.epoch_start,
                participants: participants.clone().unwrap_or_else(|| v.participants.clone()),
                assignment: slivers.clone(),
                previous: previous.clone(),
            };
            let modified = v.connected != next.connected
                || v.epoch != next.epoch
                || v.phase != next.phase
                || v.participants != next.participants
                || v.assignment != next.assignment
                || v.previous != next.previous;
            if modified {
                *v = Arc::new(next);
            }
            modified
        });
        Ok(())
    }

    /// The assignment of `epoch - 1`, read at the last block before `epoch_start`; `None` if the
    /// node no longer holds that block's state.
    async fn read_previous(
        &mut self,
        client: &ChainClient,
        epoch_start: u32,
        epoch: u64,
    ) -> Option<(u64, Slivers)> {
        let block = epoch_start.checked_sub(1)?;
        match client.epoch_and_assignments_at(block).await {
            Ok((info, assignments)) if info.epoch as u64 + 1 == epoch => {
                let mut slivers = Slivers::new();
                for (uid, sliver) in assignments {
                    slivers.entry(sliver).or_default().push(uid);
                }
                for uids in slivers.values_mut() {
                    uids.sort_unstable();
                }
                Some((epoch - 1, slivers))
            }
            Ok(_) => None,
            Err(e) => {
                if !self.warned_previous {
                    self.warned_previous = true;
                    tracing::warn!(block, error = %e, "the previous epoch's assignment is not readable (the node pruned it?); weights of that epoch cannot be checked against its commitments");
                }
                None
            }
        }
    }
}

async fn read_participants(client: &ChainClient) -> Result<BTreeMap<Uid, Peer>, ChainError> {
    let mut out = BTreeMap::new();
    for p in client.participants().await? {
        // A key that is not a valid ed25519 point names no peer: such a registration is
        // unreachable and ignored.
        let Some(peer) = sliver_p2p::keys::peer_id_of(&p.peer_key) else { continue };
        let addrs = p.addresses.iter().filter_map(|a| a.parse().ok()).take(8).collect();
        out.insert(p.uid, Peer { uid: p.uid, account: p.account, role: p.role, peer, addrs });
    }
    Ok(out)
}

/// The wait before reconnection attempt `failures`: 2^(failures-1) s capped at 30 s, drawn
/// between half and all of that.
fn backoff(failures: u32, rng: &mut u64) -> Duration {
    let cap = Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(MAX_BACKOFF);
    let half = cap / 2;
    let frac = (next(rng) >> 11) as f64 / (1u64 << 53) as f64;
    half + half.mul_f64(frac)
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        return t ^ u64::from(std::process::id()).rotate_left(32) | 1;
    }
    u64::from_le_bytes(b) | 1
}

/// xorshift64*.
fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut rng = 42;
        for (failures, cap) in [(1, 1), (2, 2), (3, 4), (6, 30), (50, 30)] {
            let cap = Duration::from_secs(cap);
            let waits: Vec<Duration> = (0..200).map(|_| backoff(failures, &mut rng)).collect();
            assert!(waits.iter().all(|w| *w >= cap / 2 && *w <= cap), "{failures}: {waits:?}");
            let spread = waits.iter().max().unwrap().as_secs_f64()
                - waits.iter().min().unwrap().as_secs_f64();
            assert!(spread > cap.as_secs_f64() * 0.3, "retries are spread out: {spread}");
        }
    }

    #[test]
    fn views_name_the_miners_of_each_sliver() {
        let peer = |uid: Uid, role| Peer {
            uid,
            account: AccountId::from([uid as u8; 32]),
            role,
            peer: PeerId::random(),
            addrs: Vec::new(),
        };
        let mut v = ChainView::default();
        for (uid, role) in
            [(0, Role::Miner), (1, Role::Miner), (2, Role::Validator), (3, Role::Miner)]
        {
            v.participants.insert(uid, peer(uid, role));
        }
        v.assignment = Slivers::from([(0, vec![0, 3]), (1, vec![1, 9])]);
        v.previous = Some((4, Slivers::from([(0, vec![1]), (1, vec![0, 3])])));
        assert_eq!(v.sliver_of(3), Some(0));
        assert_eq!(v.sliver_of(2), None);
        let uids = |p: Vec<&Peer>| p.iter().map(|p| p.uid).collect::<Vec<_>>();
        assert_eq!(uids(v.miners(1)), vec![1], "uid 9 is not registered");
        assert_eq!(uids(v.previous_miners(1)), vec![0, 3]);
        let roles = v.roles();
        assert_eq!(roles[&v.participants[&2].peer], PeerRole::Validator);
        assert_eq!(roles.len(), 4);
    }
}
