//! The miner's figures: one task owns them (the shape of the chain task), the other parts send
//! it [`Event`]s. It keeps the Prometheus metrics (`sliver_miner_*`, prometheus-client
//! counters, gauges and histograms, registered in the registry the endpoint serves beside the
//! transport's and libp2p's), prints the status line every few seconds, and answers
//! [`Telemetry::figures`] for the summary line and the ledger.

use std::collections::VecDeque;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sliver_chain::Phase;
use sliver_p2p::{Client, PeerId, Reachability};
use std::sync::atomic::AtomicU64;
use tokio::sync::{mpsc, oneshot};

use crate::ledger::slv;

/// What happened, as the telemetry task learns it.
#[derive(Clone, Debug)]
pub enum Event {
    /// The chain's epoch and phase.
    Chain {
        /// Epoch.
        epoch: u64,
        /// Phase.
        phase: Option<Phase>,
    },
    /// Whether the miner trains now, and its sliver.
    Mode {
        /// Inside its window, assigned, not paused.
        training: bool,
        /// The sliver it is assigned.
        sliver: Option<u16>,
    },
    /// Work done since the last event of this kind.
    Work {
        /// Optimiser steps.
        steps: u64,
        /// Steps skipped (non-finite gradient).
        skipped: u64,
        /// Tokens trained.
        tokens: u64,
        /// Payload bytes sent.
        bytes_sent: u64,
        /// Micro-batches dropped.
        dropped: u64,
        /// Frames refused by the stage.
        refused: u64,
        /// Seconds spent.
        secs: f64,
        /// The step's loss (last sliver).
        loss: Option<f32>,
    },
    /// The next sliver's miner in use, with its round trip.
    Next(Option<(PeerId, Duration)>),
    /// A merge with the replicas.
    Merged {
        /// Replicas whose pseudo-gradients were combined, besides this one.
        with: usize,
        /// Pseudo-gradients clipped to the median norm.
        clipped: usize,
        /// Whether the round was applied (false: discarded, non-finite).
        applied: bool,
        /// Seconds it took.
        secs: f64,
    },
    /// A weight commitment landed on chain.
    Committed,
    /// Weights taken from a replica, checked against the chain's commitments.
    Synced,
    /// Earnings so far (the ledger's total).
    Earned(u128),
    /// An audit request arrived, or was answered (`kept`: from the log; else "not kept").
    Audit {
        /// None: arrived; Some(kept): answered.
        answered: Option<bool>,
    },
}

/// A snapshot of the figures.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Chain epoch.
    pub epoch: u64,
    /// Its phase.
    pub phase: Option<Phase>,
    /// Training now.
    pub training: bool,
    /// Assigned sliver.
    pub sliver: Option<u16>,
    /// Optimiser steps.
    pub steps: u64,
    /// Steps skipped.
    pub skipped: u64,
    /// Tokens trained.
    pub tokens: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Micro-batches dropped.
    pub dropped: u64,
    /// Frames refused by the stage.
    pub refused: u64,
    /// Merges done.
    pub merges: u64,
    /// Merges discarded (non-finite result).
    pub merges_discarded: u64,
    /// Pseudo-gradients clipped in merges.
    pub clipped: u64,
    /// Weight commitments published.
    pub commitments: u64,
    /// Weight syncs from replicas.
    pub syncs: u64,
    /// Latest loss.
    pub loss: Option<f32>,
    /// Next hop and its round trip.
    pub next: Option<(PeerId, Duration)>,
    /// Connected peers (at the last status line).
    pub peers: usize,
    /// Seconds spent training.
    pub trained_secs: f64,
    /// Earned (plancks).
    pub earned: u128,
    /// Audits answered, not kept, pending.
    pub audits_answered: u64,
    /// Audits of micro-batches not kept.
    pub audits_missed: u64,
    /// Audits being answered.
    pub audits_pending: u64,
    /// Mean loss of the first five optimiser steps (last sliver).
    pub first_loss: Option<f32>,
    /// Losses of recent steps (last sliver), at most 100.
    pub recent_losses: VecDeque<f32>,
    losses_seen: u32,
    first_sum: f32,
}

impl Figures {
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
            "SUMMARY uid={uid} sliver={} steps={} tokens={} bytes_sent={} dropped={} merges={} commitments={} first_loss={} last_loss={} trained_secs={:.0} refused={} skipped={} clipped={}",
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
            self.refused,
            self.skipped,
            self.clipped,
        )
    }
}

/// The miner's Prometheus metrics.
struct Families {
    epoch: Gauge,
    training: Gauge,
    sliver: Gauge,
    steps: Counter,
    skipped: Counter,
    tokens: Counter,
    bytes_sent: Counter,
    dropped: Counter,
    refused: Counter,
    merges: Counter,
    merges_discarded: Counter,
    clipped: Counter,
    commitments: Counter,
    syncs: Counter,
    peers: Gauge,
    earned: Gauge<f64, AtomicU64>,
    loss: Gauge<f64, AtomicU64>,
    trained: Counter<f64, AtomicU64>,
    audits_answered: Counter,
    audits_missed: Counter,
    audits_pending: Gauge,
    step_seconds: Histogram,
    merge_seconds: Histogram,
}

impl Families {
    fn register(r: &mut Registry) -> Self {
        let f = Families {
            epoch: Gauge::default(),
            training: Gauge::default(),
            sliver: Gauge::default(),
            steps: Counter::default(),
            skipped: Counter::default(),
            tokens: Counter::default(),
            bytes_sent: Counter::default(),
            dropped: Counter::default(),
            refused: Counter::default(),
            merges: Counter::default(),
            merges_discarded: Counter::default(),
            clipped: Counter::default(),
            commitments: Counter::default(),
            syncs: Counter::default(),
            peers: Gauge::default(),
            earned: Gauge::default(),
            loss: Gauge::default(),
            trained: Counter::default(),
            audits_answered: Counter::default(),
            audits_missed: Counter::default(),
            audits_pending: Gauge::default(),
            step_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            merge_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 10)),
        };
        let r = r.sub_registry_with_prefix("sliver_miner");
        r.register("epoch", "Chain epoch", f.epoch.clone());
        r.register("training", "1 while training (window open, assigned)", f.training.clone());
        r.register("sliver", "Assigned sliver (-1: none)", f.sliver.clone());
        r.register("steps", "Optimiser steps", f.steps.clone());
        r.register("steps_skipped", "Steps skipped: non-finite gradient", f.skipped.clone());
        r.register("tokens", "Tokens trained", f.tokens.clone());
        r.register("bytes_sent", "Payload bytes sent", f.bytes_sent.clone());
        r.register("dropped", "Micro-batches dropped", f.dropped.clone());
        r.register("frames_refused", "Frames refused by the stage", f.refused.clone());
        r.register("merges", "Merges with replicas", f.merges.clone());
        r.register("merges_discarded", "Merges discarded (non-finite)", f.merges_discarded.clone());
        r.register(
            "deltas_clipped",
            "Pseudo-gradients clipped to the median norm",
            f.clipped.clone(),
        );
        r.register("commitments", "Weight commitments on chain", f.commitments.clone());
        r.register(
            "weight_syncs",
            "Weights taken from replicas (checked on chain)",
            f.syncs.clone(),
        );
        r.register("peers", "Connected peers", f.peers.clone());
        r.register("earned_plancks", "Earned as a miner (ledger)", f.earned.clone());
        r.register("loss", "Latest loss (last sliver)", f.loss.clone());
        r.register("trained_seconds", "Seconds spent training", f.trained.clone());
        r.register("audits_answered", "Audits answered from the log", f.audits_answered.clone());
        r.register("audits_missed", "Audits of micro-batches not kept", f.audits_missed.clone());
        r.register("audits_pending", "Audits being answered", f.audits_pending.clone());
        r.register(
            "step_seconds",
            "Time per optimiser step or handled frame",
            f.step_seconds.clone(),
        );
        r.register("merge_seconds", "Time per merge round", f.merge_seconds.clone());
        f.sliver.set(-1);
        f
    }
}

enum Msg {
    Event(Event),
    Figures(oneshot::Sender<Figures>),
}

/// Handle to the telemetry task; cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    tx: mpsc::UnboundedSender<Msg>,
}

/// How the status line is printed.
pub struct StatusLine {
    /// The miner's uid.
    pub uid: u16,
    /// Seconds between lines (0: none).
    pub every: u64,
    /// The P2P node (peers, reachability).
    pub client: Client,
    /// The listen port, for the reachability advice.
    pub port: Option<u16>,
}

impl Telemetry {
    /// Registers the miner's metrics in `registry` and starts the task.
    pub fn spawn(registry: &mut Registry, status: StatusLine) -> Self {
        let families = Families::register(registry);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, families, status));
        Telemetry { tx }
    }

    /// A handle whose events go nowhere (tests, benchmarks).
    pub fn disabled() -> Self {
        let (tx, _) = mpsc::unbounded_channel();
        Telemetry { tx }
    }

    /// Sends `event` to the task.
    pub fn send(&self, event: Event) {
        let _ = self.tx.send(Msg::Event(event));
    }

    /// The figures now.
    pub async fn figures(&self) -> Figures {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Figures(tx)).is_err() {
            return Figures::default();
        }
        rx.await.unwrap_or_default()
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Msg>, m: Families, status: StatusLine) {
    let mut f = Figures::default();
    let every = Duration::from_secs(status.every.max(1));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut last_tokens = 0u64;
    let mut said_reachability = false;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Event(e)) => apply(&mut f, &m, e),
                Some(Msg::Figures(reply)) => { let _ = reply.send(f.clone()); }
                None => return,
            },
            _ = tick.tick(), if status.every > 0 => {
                let peers = status.client.connected_peers().await.map(|v| v.len()).unwrap_or(0);
                f.peers = peers;
                m.peers.set(peers as i64);
                if !said_reachability && peers > 0 {
                    let r = status.client.reachability();
                    if r != Reachability::Unknown {
                        tracing::info!("reachability: {}", r.advice(status.port));
                        said_reachability = true;
                    }
                }
                let rate = f.tokens.saturating_sub(last_tokens) as f64 / every.as_secs_f64();
                last_tokens = f.tokens;
                eprintln!("{}", line(&f, status.uid, rate));
            }
        }
    }
}

fn apply(f: &mut Figures, m: &Families, e: Event) {
    match e {
        Event::Chain { epoch, phase } => {
            f.epoch = epoch;
            f.phase = phase;
            m.epoch.set(epoch as i64);
        }
        Event::Mode { training, sliver } => {
            f.training = training;
            f.sliver = sliver;
            m.training.set(i64::from(training));
            m.sliver.set(sliver.map(i64::from).unwrap_or(-1));
        }
        Event::Work { steps, skipped, tokens, bytes_sent, dropped, refused, secs, loss } => {
            f.steps += steps;
            f.skipped += skipped;
            f.tokens += tokens;
            f.bytes_sent += bytes_sent;
            f.dropped += dropped;
            f.refused += refused;
            f.trained_secs += secs;
            m.steps.inc_by(steps);
            m.skipped.inc_by(skipped);
            m.tokens.inc_by(tokens);
            m.bytes_sent.inc_by(bytes_sent);
            m.dropped.inc_by(dropped);
            m.refused.inc_by(refused);
            m.trained.inc_by(secs);
            if steps > 0 || loss.is_some() {
                m.step_seconds.observe(secs);
            }
            if let Some(l) = loss {
                f.record_loss(l);
                m.loss.set(f64::from(l));
            }
        }
        Event::Next(next) => f.next = next,
        Event::Merged { with: _, clipped, applied, secs } => {
            f.merges += 1;
            f.clipped += clipped as u64;
            m.merges.inc();
            m.clipped.inc_by(clipped as u64);
            m.merge_seconds.observe(secs);
            if !applied {
                f.merges_discarded += 1;
                m.merges_discarded.inc();
            }
        }
        Event::Committed => {
            f.commitments += 1;
            m.commitments.inc();
        }
        Event::Synced => {
            f.syncs += 1;
            m.syncs.inc();
        }
        Event::Earned(total) => {
            f.earned = total;
            m.earned.set(total as f64);
        }
        Event::Audit { answered: None } => {
            f.audits_pending += 1;
            m.audits_pending.inc();
        }
        Event::Audit { answered: Some(kept) } => {
            f.audits_pending = f.audits_pending.saturating_sub(1);
            m.audits_pending.dec();
            if kept {
                f.audits_answered += 1;
                m.audits_answered.inc();
            } else {
                f.audits_missed += 1;
                m.audits_missed.inc();
            }
        }
    }
}

fn line(f: &Figures, uid: u16, rate: f64) -> String {
    let next = f
        .next
        .map(|(p, rtt)| format!("{} ({} ms)", short(&p), rtt.as_millis()))
        .unwrap_or_else(|| "-".into());
    let loss = f.loss.map(|l| format!("{l:.3}")).unwrap_or_else(|| "-".into());
    format!(
        "[miner uid {uid}] epoch {} {} | {} sliver {} | step {} | {rate:.0} tok/s | loss {loss} | next {next} | peers {} | sent {:.1} MB | dropped {} | refused {} | merges {} | commitments {} | audits {} pending, {} answered, {} not kept | earned {}",
        f.epoch,
        f.phase.as_ref().map(|p| format!("{p:?}")).unwrap_or_else(|| "-".into()),
        if f.training { "training" } else { "away from" },
        f.sliver.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        f.steps,
        f.peers,
        f.bytes_sent as f64 / 1e6,
        f.dropped,
        f.refused,
        f.merges,
        f.commitments,
        f.audits_pending,
        f.audits_answered,
        f.audits_missed,
        slv(f.earned),
    )
}

/// A PeerId's last characters, for status lines.
pub fn short(p: &PeerId) -> String {
    let s = p.to_string();
    format!("..{}", &s[s.len().saturating_sub(6)..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_events_and_summarise() {
        let m = Families::register(&mut Registry::default());
        let mut f = Figures::default();
        for loss in [5.5, 5.0, 4.5, 4.0, 3.5, 3.0] {
            apply(
                &mut f,
                &m,
                Event::Work {
                    steps: 1,
                    skipped: 0,
                    tokens: 100,
                    bytes_sent: 10,
                    dropped: 0,
                    refused: 1,
                    secs: 0.5,
                    loss: Some(loss),
                },
            );
        }
        apply(&mut f, &m, Event::Merged { with: 2, clipped: 1, applied: true, secs: 1.0 });
        apply(&mut f, &m, Event::Audit { answered: None });
        apply(&mut f, &m, Event::Audit { answered: Some(true) });
        assert_eq!((f.steps, f.tokens, f.refused, f.merges, f.clipped), (6, 600, 6, 1, 1));
        assert_eq!(f.first_loss, Some(4.5));
        assert_eq!(f.last_loss(), Some(4.0));
        assert_eq!((f.audits_pending, f.audits_answered), (0, 1));
        assert_eq!(m.steps.get(), 6);
        let s = f.summary(3);
        assert!(s.starts_with("SUMMARY uid=3 sliver=- steps=6 tokens=600"), "{s}");
        assert!(s.contains("refused=6") && s.contains("clipped=1"), "{s}");
    }
}
