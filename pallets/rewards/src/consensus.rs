//! Yuma-style stake-weighted consensus: pure maths, no storage.
//!
//! Every quantity that is a fraction is a `u128` scaled by [`ONE`] (10^18, the accuracy of
//! [`Perquintill`]); every product and quotient goes through [`mul_div`], which rounds down and
//! never overflows in its intermediate step. There are no floats, and every result depends only
//! on the *set* of validator inputs, never on their order: inputs are sorted by uid first, sums
//! are exact integer sums and the median groups equal weights together.
//!
//! For the validators `i` that revealed weights and hold stake, and the miners `j` they weighted:
//!
//! 1. `W_ij`: validator `i`'s weights normalised to sum 1; `S_i`: its stake normalised to sum 1.
//! 2. Consensus `C_j`: the stake-weighted median of `W_ij` over `i` with `kappa = 1/2`, i.e. the
//!    largest `w` such that the validators with `W_ij >= w` hold at least half of the stake.
//! 3. Clipped weights `W'_ij = min(W_ij, C_j)`: weight above consensus earns nothing.
//! 4. Ranks `R_j = sum_i S_i * W'_ij`; miner incentive `I_j = R_j / sum_k R_k`.
//! 5. Bond deltas `dB_ij = S_i * W'_ij / R_j` (each miner column sums to 1); bonds are an
//!    exponential moving average `B_ij = alpha * dB_ij + (1 - alpha) * B_ij(old)` over epochs.
//!    Validators that stayed silent this epoch get `dB = 0`, so their bonds decay.
//! 6. Dividends `D_i = sum_j B_ij * I_j`, normalised to sum 1 (computed here as the unnormalised
//!    `sum_j B_ij * R_j`, which has the same proportions).
//!
//! [`apportion`] then splits an amount of currency in proportion to ranks or dividends, rounding
//! each share down, so that the payouts never exceed the amount and the dust left over is smaller
//! than the number of recipients.

use alloc::{
    collections::{BTreeMap, BTreeSet},
    vec::Vec,
};
use sliver_primitives::{Stake, Uid};
use sp_arithmetic::{
    helpers_128bit::multiply_by_rational_with_rounding, PerThing, Perbill, Perquintill, Rounding,
};

/// The fixed-point one: fractions are `u128` parts per 10^18.
pub const ONE: u128 = 1_000_000_000_000_000_000;

/// `a * b / c`, rounded down, computed without intermediate overflow.
///
/// Returns 0 when `c` is 0, and saturates at `u128::MAX` when the result does not fit.
pub fn mul_div(a: u128, b: u128, c: u128) -> u128 {
    if c == 0 {
        return 0;
    }
    multiply_by_rational_with_rounding(a, b, c, Rounding::Down).unwrap_or(u128::MAX)
}

/// One validator's input to an epoch's consensus.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ValidatorWeights {
    /// The validator's uid.
    pub uid: Uid,
    /// The validator's stake.
    pub stake: Stake,
    /// The weights it revealed, as `(miner uid, raw weight)`; empty if it did not reveal.
    pub weights: Vec<(Uid, u16)>,
}

/// The result of an epoch's consensus. Every list is sorted by uid (bonds by
/// `(validator, miner)`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Consensus weight `C_j` of every miner some active validator weighted (scaled by [`ONE`]).
    pub consensus: Vec<(Uid, u128)>,
    /// Rank `R_j` of the same miners (scaled by [`ONE`]); incentive is `R_j / rank_total`.
    pub ranks: Vec<(Uid, u128)>,
    /// `sum_j R_j`; 0 when there was no consensus at all.
    pub rank_total: u128,
    /// Unnormalised dividend `sum_j B_ij * R_j` of every active validator.
    pub dividends: Vec<(Uid, u128)>,
    /// `sum_i D_i`.
    pub dividend_total: u128,
    /// New bond of every input validator (active or silent) towards every miner in `ranks`.
    pub bonds: Vec<(Uid, Uid, Perquintill)>,
}

impl Outcome {
    /// Incentive share of miner `uid` (`R_j / sum_k R_k`); zero for unknown uids.
    pub fn incentive(&self, uid: Uid) -> Perbill {
        self.ranks
            .iter()
            .find(|(m, _)| *m == uid)
            .map_or(Perbill::zero(), |(_, r)| Perbill::from_rational(*r, self.rank_total))
    }
}

/// Normalises raw weights to fractions of their sum (scaled by [`ONE`]), merging repeated uids.
///
/// Returns an empty map when the weights sum to zero (a validator that said nothing).
pub fn normalise(weights: &[(Uid, u16)]) -> BTreeMap<Uid, u128> {
    let mut merged: BTreeMap<Uid, u128> = BTreeMap::new();
    for (uid, weight) in weights {
        let entry = merged.entry(*uid).or_insert(0);
        *entry = entry.saturating_add(u128::from(*weight));
    }
    let sum = merged.values().fold(0u128, |acc, w| acc.saturating_add(*w));
    if sum == 0 {
        return BTreeMap::new();
    }
    merged.into_iter().map(|(uid, w)| (uid, mul_div(w, ONE, sum))).collect()
}

/// Stake-weighted median with `kappa = 1/2`: the largest `w` among `entries` such that the
/// entries with weight `>= w` hold at least half of `total` stake. Returns 0 if there is none.
///
/// `entries` are `(weight, stake)`; `total` is the sum of their stakes.
pub fn weighted_median(mut entries: Vec<(u128, Stake)>, total: Stake) -> u128 {
    entries.sort_unstable_by_key(|(weight, _)| core::cmp::Reverse(*weight));
    let mut cumulative: Stake = 0;
    let mut iter = entries.iter().peekable();
    while let Some((weight, stake)) = iter.next() {
        cumulative = cumulative.saturating_add(*stake);
        // Validators with equal weight count together.
        if iter.peek().is_some_and(|(next, _)| next == weight) {
            continue;
        }
        // 2 * cumulative >= total, without overflow (cumulative <= total).
        if cumulative >= total.saturating_sub(cumulative) {
            return *weight;
        }
    }
    0
}

/// The miners that at least one active validator (stake > 0, non-zero weights) weighted.
pub fn miner_set(validators: &[ValidatorWeights]) -> Vec<Uid> {
    let mut miners = BTreeSet::new();
    for v in validators.iter().filter(|v| v.stake > 0) {
        let weights = normalise(&v.weights);
        miners.extend(weights.keys().copied());
    }
    miners.into_iter().collect()
}

/// One validator after normalisation.
struct Normalised {
    uid: Uid,
    stake: Stake,
    /// `W_ij`, empty for a silent validator.
    weights: BTreeMap<Uid, u128>,
}

impl Normalised {
    fn is_active(&self) -> bool {
        self.stake > 0 && !self.weights.is_empty()
    }
}

/// Runs one epoch of consensus.
///
/// - `validators`: every registered validator; those without (non-zero) weights or without stake
///   are silent: they do not take part in consensus and earn no dividends, but their bonds decay.
///   Validator uids should be distinct; if one repeats, only its smallest entry is used.
/// - `old_bonds`: the bonds `B_ij` before this epoch; missing entries are 0.
/// - `alpha`: the weight of this epoch's bond delta in the moving average.
pub fn compute(
    validators: &[ValidatorWeights],
    old_bonds: &BTreeMap<(Uid, Uid), Perquintill>,
    alpha: Perbill,
) -> Outcome {
    // Canonical order, independent of the caller's.
    let mut sorted = validators.to_vec();
    sorted.sort();
    sorted.dedup_by_key(|v| v.uid);
    let normalised: Vec<Normalised> = sorted
        .iter()
        .map(|v| Normalised { uid: v.uid, stake: v.stake, weights: normalise(&v.weights) })
        .collect();

    let total_stake = normalised
        .iter()
        .filter(|v| v.is_active())
        .fold(0u128, |acc, v| acc.saturating_add(v.stake));
    if total_stake == 0 {
        return Outcome::default();
    }
    let miners = miner_set(&sorted);

    // S_i for active validators.
    let stake_share: BTreeMap<Uid, u128> = normalised
        .iter()
        .filter(|v| v.is_active())
        .map(|v| (v.uid, mul_div(v.stake, ONE, total_stake)))
        .collect();
    let weight_of = |v: &Normalised, miner: Uid| v.weights.get(&miner).copied().unwrap_or(0);

    // C_j, then the terms S_i * W'_ij and their column sums R_j.
    let mut consensus = Vec::with_capacity(miners.len());
    let mut ranks = Vec::with_capacity(miners.len());
    let mut terms: BTreeMap<(Uid, Uid), u128> = BTreeMap::new();
    let mut rank_total: u128 = 0;
    for &miner in &miners {
        let entries = normalised
            .iter()
            .filter(|v| v.is_active())
            .map(|v| (weight_of(v, miner), v.stake))
            .collect();
        let c = weighted_median(entries, total_stake);
        let mut rank: u128 = 0;
        for v in normalised.iter().filter(|v| v.is_active()) {
            let share = stake_share.get(&v.uid).copied().unwrap_or(0);
            let term = mul_div(share, weight_of(v, miner).min(c), ONE);
            rank = rank.saturating_add(term);
            terms.insert((v.uid, miner), term);
        }
        consensus.push((miner, c));
        ranks.push((miner, rank));
        rank_total = rank_total.saturating_add(rank);
    }

    // Bonds: exponential moving average of the per-miner normalised terms.
    let alpha_parts = u128::from(alpha.deconstruct());
    let alpha_accuracy = u128::from(Perbill::ACCURACY);
    let keep_parts = alpha_accuracy.saturating_sub(alpha_parts);
    let mut bonds = Vec::with_capacity(normalised.len().saturating_mul(miners.len()));
    let mut dividends = Vec::new();
    let mut dividend_total: u128 = 0;
    for v in &normalised {
        let mut dividend: u128 = 0;
        for &(miner, rank) in &ranks {
            let term = terms.get(&(v.uid, miner)).copied().unwrap_or(0);
            let delta = mul_div(term, ONE, rank).min(ONE);
            let old = old_bonds.get(&(v.uid, miner)).map_or(0, |b| u128::from(b.deconstruct()));
            let new = mul_div(alpha_parts, delta, alpha_accuracy)
                .saturating_add(mul_div(keep_parts, old.min(ONE), alpha_accuracy))
                .min(ONE);
            bonds.push((v.uid, miner, Perquintill::from_parts(u64::try_from(new).unwrap_or(0))));
            dividend = dividend.saturating_add(mul_div(new, rank, ONE));
        }
        if v.is_active() {
            dividends.push((v.uid, dividend));
            dividend_total = dividend_total.saturating_add(dividend);
        }
    }

    Outcome { consensus, ranks, rank_total, dividends, dividend_total, bonds }
}

/// Splits `amount` in proportion to `shares`, rounding each payout down.
///
/// Returns the payouts (in the order of `shares`) and the dust `amount - sum(payouts)`. The
/// payouts never exceed `amount`; when some share is positive, the dust is smaller than the
/// number of positive shares. When every share is zero, nothing is paid and the dust is `amount`.
pub fn apportion(amount: u128, shares: &[(Uid, u128)]) -> (Vec<(Uid, u128)>, u128) {
    let total = shares.iter().fold(0u128, |acc, (_, s)| acc.saturating_add(*s));
    let mut remaining = amount;
    let payouts = shares
        .iter()
        .map(|(uid, share)| {
            let payout = mul_div(amount, *share, total).min(remaining);
            remaining = remaining.saturating_sub(payout);
            (*uid, payout)
        })
        .collect();
    (payouts, remaining)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(uid: Uid, stake: Stake, weights: &[(Uid, u16)]) -> ValidatorWeights {
        ValidatorWeights { uid, stake, weights: weights.to_vec() }
    }

    fn frac(parts_per_thousand: u128) -> u128 {
        ONE / 1000 * parts_per_thousand
    }

    #[test]
    fn mul_div_rounds_down_and_never_panics() {
        assert_eq!(mul_div(10, 1, 3), 3);
        assert_eq!(mul_div(u128::MAX, u128::MAX, u128::MAX), u128::MAX);
        assert_eq!(mul_div(u128::MAX, 2, 1), u128::MAX);
        assert_eq!(mul_div(5, 5, 0), 0);
    }

    #[test]
    fn normalise_merges_and_handles_zero() {
        let w = normalise(&[(1, 1), (2, 2), (1, 1)]);
        assert_eq!(w.get(&1), Some(&(ONE / 2)));
        assert_eq!(w.get(&2), Some(&(ONE / 2)));
        assert!(normalise(&[(1, 0), (2, 0)]).is_empty());
        assert!(normalise(&[]).is_empty());
    }

    #[test]
    fn weighted_median_is_stake_weighted() {
        // 60% says 0.5, 40% says 0.2: the majority's value wins.
        assert_eq!(weighted_median(vec![(frac(500), 60), (frac(200), 40)], 100), frac(500));
        // 40% says 0.5, 60% says 0.2.
        assert_eq!(weighted_median(vec![(frac(500), 40), (frac(200), 60)], 100), frac(200));
        // Exactly half is enough (kappa = 1/2, ">=").
        assert_eq!(weighted_median(vec![(frac(500), 50), (frac(200), 50)], 100), frac(500));
        // Ties are grouped.
        assert_eq!(
            weighted_median(vec![(frac(300), 30), (frac(100), 40), (frac(300), 30)], 100),
            frac(300)
        );
        assert_eq!(weighted_median(vec![], 0), 0);
    }

    #[test]
    fn hand_computed_epoch() {
        // Stakes 60/40; V1 weights A,B equally, V2 weights A 1/2, B 1/4, C 1/4.
        let input =
            vec![v(1, 60, &[(10, 1), (11, 1), (12, 0)]), v(2, 40, &[(10, 2), (11, 1), (12, 1)])];
        let out = compute(&input, &BTreeMap::new(), Perbill::from_percent(10));
        assert_eq!(out.consensus, vec![(10, frac(500)), (11, frac(500)), (12, 0)]);
        assert_eq!(out.ranks, vec![(10, frac(500)), (11, frac(400)), (12, 0)]);
        assert_eq!(out.rank_total, frac(900));
        let bond = |parts: u64| Perquintill::from_parts(parts * 1_000_000_000_000_000);
        assert_eq!(
            out.bonds,
            vec![
                (1, 10, Perquintill::from_parts(60_000_000_000_000_000)),
                (1, 11, Perquintill::from_parts(75_000_000_000_000_000)),
                (1, 12, bond(0)),
                (2, 10, Perquintill::from_parts(40_000_000_000_000_000)),
                (2, 11, Perquintill::from_parts(25_000_000_000_000_000)),
                (2, 12, bond(0)),
            ]
        );
        assert_eq!(out.dividends, vec![(1, frac(60)), (2, frac(30))]);
        assert_eq!(out.incentive(10), Perbill::from_rational(5u32, 9u32));
        assert_eq!(out.incentive(99), Perbill::zero());
    }

    #[test]
    fn silent_and_stakeless_validators_do_not_vote_but_bonds_decay() {
        let mut old = BTreeMap::new();
        old.insert((3, 10), Perquintill::from_percent(50));
        let input = vec![
            v(1, 100, &[(10, 1)]),
            // Silent: bonds decay by (1 - alpha).
            v(3, 1000, &[]),
            // Stakeless: no voice, and its miner is not in the set.
            v(4, 0, &[(20, 5)]),
        ];
        let out = compute(&input, &old, Perbill::from_percent(10));
        assert_eq!(out.consensus, vec![(10, ONE)]);
        assert_eq!(out.dividends.len(), 1);
        assert!(out.bonds.contains(&(3, 10, Perquintill::from_percent(45))));
        assert!(out.bonds.contains(&(1, 10, Perquintill::from_percent(10))));
        assert!(out.bonds.contains(&(4, 10, Perquintill::zero())));
    }

    #[test]
    fn nobody_active_means_no_outcome() {
        let out =
            compute(&[v(1, 0, &[(10, 1)]), v(2, 10, &[(10, 0)])], &BTreeMap::new(), Perbill::one());
        assert_eq!(out, Outcome::default());
    }

    #[test]
    fn apportion_examples() {
        let (p, dust) = apportion(45_001, &[(1, frac(60)), (2, frac(30))]);
        assert_eq!(p, vec![(1, 30_000), (2, 15_000)]);
        assert_eq!(dust, 1);
        let (p, dust) = apportion(7, &[(1, 0), (2, 0)]);
        assert_eq!(p, vec![(1, 0), (2, 0)]);
        assert_eq!(dust, 7);
        // Saturated totals still never pay out more than the amount.
        let (p, dust) = apportion(10, &[(1, u128::MAX), (2, u128::MAX)]);
        assert_eq!(p.iter().map(|(_, x)| x).sum::<u128>() + dust, 10);
    }

    /// Validators with distinct uids 0.., stakes and weights over miners 100..100+m.
    fn validators_strategy(
        max_validators: usize,
        miners: u16,
    ) -> impl Strategy<Value = Vec<ValidatorWeights>> {
        prop::collection::vec(
            (1u128..1_000_000_000_000u128, prop::collection::vec(0u16..=1000, miners as usize)),
            1..=max_validators,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (stake, ws))| ValidatorWeights {
                    uid: i as Uid,
                    stake,
                    weights: ws.into_iter().enumerate().map(|(j, w)| (100 + j as Uid, w)).collect(),
                })
                .collect()
        })
    }

    fn bonds_strategy() -> impl Strategy<Value = BTreeMap<(Uid, Uid), Perquintill>> {
        prop::collection::btree_map(
            (0u16..12, 100u16..108),
            (0u64..=1_000_000_000_000_000_000).prop_map(Perquintill::from_parts),
            0..40,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A coalition with less than half of the stake cannot push any miner's consensus weight
        /// above the highest weight an honest validator gives it, whatever it reports.
        #[test]
        fn minority_coalition_cannot_raise_consensus(
            honest in validators_strategy(6, 6),
            coalition in validators_strategy(6, 6),
            alpha in 0u32..=1_000_000_000,
        ) {
            // Only honest validators that actually weighted someone count towards the majority.
            let honest_stake: u128 = honest
                .iter()
                .filter(|v| v.weights.iter().any(|(_, w)| *w > 0))
                .map(|v| v.stake)
                .sum();
            // Give the coalition strictly less than half of the total stake.
            let coalition: Vec<ValidatorWeights> = coalition
                .into_iter()
                .enumerate()
                .map(|(k, mut v)| {
                    v.uid = 1000 + k as Uid;
                    v.stake %= (honest_stake / 8).max(1);
                    v
                })
                .collect();
            let coalition_stake: u128 = coalition.iter().map(|v| v.stake).sum();
            prop_assume!(coalition_stake < honest_stake);

            let mut all = honest.clone();
            all.extend(coalition);
            let out = compute(&all, &BTreeMap::new(), Perbill::from_parts(alpha));
            for (miner, c) in &out.consensus {
                let honest_max = honest
                    .iter()
                    .map(|v| normalise(&v.weights).get(miner).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0);
                prop_assert!(*c <= honest_max, "miner {} consensus {} > honest {}", miner, c, honest_max);
            }
            // Clipping bounds every miner's rank by its consensus weight.
            for ((_, rank), (_, c)) in out.ranks.iter().zip(out.consensus.iter()) {
                prop_assert!(*rank <= *c);
            }
        }

        /// Payouts sum to the amount minus the dust, and the dust is smaller than the number of
        /// recipients, for miner and validator pots alike.
        #[test]
        fn payouts_conserve_emission(
            validators in validators_strategy(8, 8),
            bonds in bonds_strategy(),
            alpha in 1u32..=1_000_000_000,
            amount in 0u128..=u128::MAX / 2,
        ) {
            let out = compute(&validators, &bonds, Perbill::from_parts(alpha));
            for shares in [&out.ranks, &out.dividends] {
                let (payouts, dust) = apportion(amount, shares);
                let paid: u128 = payouts.iter().map(|(_, p)| *p).sum();
                prop_assert_eq!(paid + dust, amount);
                let recipients = shares.iter().filter(|(_, s)| *s > 0).count() as u128;
                if recipients > 0 {
                    prop_assert!(dust < recipients, "dust {} recipients {}", dust, recipients);
                }
            }
            for (_, _, b) in &out.bonds {
                prop_assert!(b.deconstruct() <= Perquintill::ACCURACY);
            }
        }

        /// The outcome does not depend on the order of validators in the input.
        #[test]
        fn order_independent(
            (validators, shuffled) in validators_strategy(8, 6)
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
            bonds in bonds_strategy(),
            alpha in 0u32..=1_000_000_000,
        ) {
            let alpha = Perbill::from_parts(alpha);
            prop_assert_eq!(compute(&validators, &bonds, alpha), compute(&shuffled, &bonds, alpha));
        }
    }
}
