//! The validator's Prometheus metrics (served by `sliver_operator::metrics` with the
//! transport's own).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Metric handles (cheap to clone; they share their values).
#[derive(Clone)]
pub struct Metrics {
    /// Replays that matched.
    pub passed: Counter,
    /// Audits that failed (replay mismatch, forged receipts, made-up inputs).
    pub failed: Counter,
    /// Audits not answered by the deadline.
    pub unanswered: Counter,
    /// Seconds per replay.
    pub replay_seconds: Histogram,
    /// The last audited epoch.
    pub audited_epoch: Gauge,
    /// Held-out loss of the merged model the last audited epoch started from.
    pub val_loss: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Weight commits and reveals on chain.
    pub commits: Counter,
    /// Reveals on chain.
    pub reveals: Counter,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            passed: Counter::default(),
            failed: Counter::default(),
            unanswered: Counter::default(),
            replay_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            audited_epoch: Gauge::default(),
            val_loss: Gauge::default(),
            commits: Counter::default(),
            reveals: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("sliver_validator");
        r.register(
            "audits_passed",
            "Audited micro-batches that replayed bit for bit",
            m.passed.clone(),
        );
        r.register("audits_failed", "Audits that failed", m.failed.clone());
        r.register(
            "audits_unanswered",
            "Audits not answered by the deadline",
            m.unanswered.clone(),
        );
        r.register("replay_seconds", "Seconds per replayed micro-batch", m.replay_seconds.clone());
        r.register("audited_epoch", "The last audited epoch", m.audited_epoch.clone());
        r.register(
            "val_loss",
            "Held-out loss of the merged model the last audited epoch started from",
            m.val_loss.clone(),
        );
        r.register("weight_commits", "Weight commitments submitted", m.commits.clone());
        r.register("weight_reveals", "Weight reveals submitted", m.reveals.clone());
        m
    }
}
