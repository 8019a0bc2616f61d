//! Which micro-batches a validator replays.
//!
//! A key is sampled when `BLAKE3-keyed(secret, audit seed || uid || route || step || index)`,
//! read as a number in `[0, 1)`, is below the sampling rate. The audit seed is drawn on chain
//! when the epoch after the audited one starts, so while a miner trains it cannot know what
//! will be checked; the validator's secret makes each validator's sample its own, so a miner
//! that learns one validator's choices (it answers them) learns nothing about the others'.
//! Every miner with work gets at least one audit per epoch (the key with the lowest draw), so
//! a low rate never leaves a cheater unchecked for an epoch.

use sliver_p2p::AuditKey;

/// A validator's sampling secret: 32 random bytes it keeps to itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret(pub [u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The draw of `key` in `[0, 1)`.
pub fn draw(secret: &Secret, seed: &[u8; 32], uid: u16, key: &AuditKey) -> f64 {
    let mut h = blake3::Hasher::new_keyed(&secret.0);
    h.update(seed);
    h.update(&uid.to_le_bytes());
    for v in [key.route, key.step, key.micro_batch] {
        h.update(&v.to_le_bytes());
    }
    let bytes = h.finalize();
    let n = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or_default());
    (n >> 11) as f64 / (1u64 << 53) as f64
}

/// The keys of miner `uid` to replay at sampling `rate` (0 to 1): those whose draw is below
/// the rate, or, if none is, the one with the lowest draw. Empty only if `keys` is.
pub fn sample(
    secret: &Secret,
    seed: &[u8; 32],
    uid: u16,
    keys: &[AuditKey],
    rate: f64,
) -> Vec<AuditKey> {
    let draws: Vec<(f64, AuditKey)> =
        keys.iter().map(|k| (draw(secret, seed, uid, k), *k)).collect();
    let mut chosen: Vec<AuditKey> =
        draws.iter().filter(|(d, _)| *d < rate).map(|(_, k)| *k).collect();
    if chosen.is_empty() {
        if let Some((_, k)) = draws.iter().min_by(|a, b| a.0.total_cmp(&b.0)) {
            chosen.push(*k);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u64) -> Vec<AuditKey> {
        (0..n).map(|i| AuditKey { route: i % 2, step: i / 6, micro_batch: i % 3 }).collect()
    }

    #[test]
    fn the_rate_sets_the_fraction_and_every_miner_gets_one() {
        let (s, seed) = (Secret([7; 32]), [1; 32]);
        let all = keys(10_000);
        let n = sample(&s, &seed, 3, &all, 0.05).len();
        assert!((400..600).contains(&n), "{n} of 10000 at 5%");
        assert_eq!(sample(&s, &seed, 3, &all[..5], 0.0).len(), 1, "at least one");
        assert!(sample(&s, &seed, 3, &[], 0.5).is_empty());
        assert_eq!(sample(&s, &seed, 3, &all[..50], 1.0).len(), 50);
    }

    #[test]
    fn another_seed_secret_or_miner_draws_another_sample() {
        let all = keys(2_000);
        let base = sample(&Secret([7; 32]), &[1; 32], 3, &all, 0.05);
        assert_eq!(base, sample(&Secret([7; 32]), &[1; 32], 3, &all, 0.05), "deterministic");
        for other in [
            sample(&Secret([8; 32]), &[1; 32], 3, &all, 0.05),
            sample(&Secret([7; 32]), &[2; 32], 3, &all, 0.05),
            sample(&Secret([7; 32]), &[1; 32], 4, &all, 0.05),
        ] {
            let shared = other.iter().filter(|k| base.contains(k)).count();
            assert!(shared * 4 < base.len(), "{shared} of {} shared", base.len());
        }
    }
}
