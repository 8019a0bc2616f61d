//! From audits to weights: the score of a miner for an epoch, and the weights revealed on chain.
//!
//! `score = verified work x pass rate`, where verified work is the number of micro-batches whose
//! part on the miner's sliver its neighbours signed for (see `sliver_audit::work`) and the pass
//! rate is the fraction of its sampled micro-batches that replayed bit for bit. Any failure (a
//! replay that does not match, a forged receipt, an audit not answered by the deadline, an
//! input no neighbour sent) zeroes the miner for the epoch: a cheater that is caught on one
//! sampled micro-batch in twenty loses the whole epoch, so cheating on a fraction `f` of its
//! work pays only if it escapes every audit, which at sampling rate `r` happens with
//! probability about `(1 - r)^(f n)` for `n` micro-batches (see docs/validator.md).

use sliver_chain::Uid;

/// One miner's audits in one epoch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MinerAudit {
    /// The miner.
    pub uid: Uid,
    /// Its sliver in the audited epoch.
    pub sliver: u16,
    /// Micro-batches its neighbours signed for.
    pub work: u64,
    /// Micro-batches replayed.
    pub sampled: u32,
    /// Of those, matched bit for bit.
    pub passed: u32,
    /// Audits not answered by the deadline.
    pub unanswered: u32,
    /// Why it failed (the first few reasons).
    pub failures: Vec<String>,
    /// Losses recomputed on the last sliver.
    pub losses: Vec<f32>,
    /// The weights its steps began (at the first snapshot) and ended with.
    pub first_weights: Option<[u8; 32]>,
    /// See `first_weights`.
    pub last_weights: Option<[u8; 32]>,
    /// The optimiser state its epoch ended in (its end marker), if it named one.
    pub end_optim: Option<[u8; 32]>,
    /// Its epoch's first weights were found among those it may start from (see
    /// `audit::start_check`); false also when there was nothing to check against.
    pub start_checked: bool,
}

impl MinerAudit {
    /// True if nothing counted against it.
    pub fn clean(&self) -> bool {
        self.failures.is_empty() && self.unanswered == 0
    }

    /// Records a failure (keeping the first few reasons).
    pub fn fail(&mut self, why: impl Into<String>) {
        if self.failures.len() < 8 {
            self.failures.push(why.into());
        } else if let Some(last) = self.failures.last_mut() {
            *last = "and more".into();
        }
    }

    /// The score: verified work times the pass rate, zero after any failure.
    pub fn score(&self) -> f64 {
        if !self.clean() || self.sampled == 0 {
            return 0.0;
        }
        self.work as f64 * self.passed as f64 / self.sampled as f64
    }
}

/// The weights to reveal: every miner with a non-zero score, scaled so the best gets 65,535
/// (only ratios matter on chain). Empty when no miner scored.
pub fn weights(audits: &[MinerAudit]) -> Vec<(Uid, u16)> {
    let best = audits.iter().map(MinerAudit::score).fold(0.0, f64::max);
    if best <= 0.0 {
        return Vec::new();
    }
    let mut out: Vec<(Uid, u16)> = audits
        .iter()
        .filter_map(|a| {
            let w = (a.score() / best * 65_535.0).round() as u16;
            (w > 0).then_some((a.uid, w))
        })
        .collect();
    out.sort_unstable();
    out.dedup_by_key(|(u, _)| *u);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(uid: Uid, work: u64, sampled: u32, passed: u32) -> MinerAudit {
        MinerAudit { uid, work, sampled, passed, ..Default::default() }
    }

    #[test]
    fn work_times_pass_rate_and_a_failure_zeroes() {
        assert_eq!(audit(0, 100, 5, 5).score(), 100.0);
        let mut caught = audit(1, 400, 5, 4);
        caught.fail("the activation it sent is not the forward pass");
        assert_eq!(caught.score(), 0.0);
        let late = MinerAudit { unanswered: 1, ..audit(2, 100, 5, 4) };
        assert_eq!(late.score(), 0.0);
        assert_eq!(audit(3, 100, 0, 0).score(), 0.0, "never checked earns nothing");
        let w = weights(&[audit(0, 100, 5, 5), caught, audit(4, 50, 2, 2), late]);
        assert_eq!(w, vec![(0, 65_535), (4, 32_768)]);
        assert!(weights(&[audit(0, 0, 1, 1)]).is_empty(), "no work, no weights");
    }
}
