//! Mean cross-entropy of logits against target classes, with the softmax kept for the
//! backward pass, which is then one pass: `dlogits = (softmax - onehot(target)) * scale`.
//!
//! A decomposed `log_softmax` plus `gather` plus `mean` costs about six passes forward and as
//! many backward. Rows are split across threads; each row's sums, and the mean over the per-row
//! losses, are eight lane partials combined in a fixed order, so no result depends on the
//! thread count. The gradient is also the same bits on every CPU; the loss value goes through
//! the platform's `ln` (`logf`), which need not be correctly rounded, so it may differ in the
//! last place between machines (it is reported, never trained on).

use crate::math::{combine8, exp, lane_sum, vectorised};
use crate::pool::{chunks_mut, Disjoint};
use std::mem::MaybeUninit;

/// Rows per parallel part.
const ROWS: usize = 32;

/// Softmax of each row into `probs` and its loss `ln(sum e^x) - x[target]` into `losses`.
#[inline(always)]
fn forward_rows(
    logits: &[f32],
    targets: &[u32],
    v: usize,
    probs: &mut [MaybeUninit<f32>],
    losses: &mut [f32],
) {
    for (((x, p), &t), loss) in
        logits.chunks_exact(v).zip(probs.chunks_exact_mut(v)).zip(targets).zip(losses)
    {
        let mut lanes = [f32::NEG_INFINITY; 8];
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            for l in 0..8 {
                lanes[l] = lanes[l].max(c[l]);
            }
        }
        let max = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &a| m.max(a));
        let mut e = [0f32; 8];
        let mut sum_parts = [0f32; 8];
        // exp(x - max) written to `p` as it is summed, eight lanes at a time.
        let mut i = 0;
        while i + 8 <= v {
            for l in 0..8 {
                e[l] = exp(x[i + l] - max);
                sum_parts[l] += e[l];
                p[i + l].write(e[l]);
            }
            i += 8;
        }
        for l in 0..v - i {
            let el = exp(x[i + l] - max);
            sum_parts[l] += el;
            p[i + l].write(el);
        }
        let sum = combine8(sum_parts);
        let inv = 1.0 / sum;
        for q in p.iter_mut() {
            // SAFETY: every element of this row was written above.
            let val = unsafe { q.assume_init() };
            q.write(val * inv);
        }
        *loss = sum.ln() + max - x[t as usize];
    }
}

#[inline(always)]
fn backward_rows(
    probs: &[f32],
    targets: &[u32],
    v: usize,
    scale: f32,
    out: &mut [MaybeUninit<f32>],
) {
    for ((p, o), &t) in probs.chunks_exact(v).zip(out.chunks_exact_mut(v)).zip(targets) {
        for (j, (o, &p)) in o.iter_mut().zip(p).enumerate() {
            let onehot = if j == t as usize { 1.0 } else { 0.0 };
            o.write((p - onehot) * scale);
        }
    }
}

vectorised!(
    fn forward_dispatch(
        logits: &[f32],
        targets: &[u32],
        v: usize,
        probs: &mut [MaybeUninit<f32>],
        losses: &mut [f32],
    ) => forward_rows
);
vectorised!(
    fn backward_dispatch(
        probs: &[f32],
        targets: &[u32],
        v: usize,
        scale: f32,
        out: &mut [MaybeUninit<f32>],
    ) => backward_rows
);

fn check(logits: usize, targets: &[u32], v: usize) {
    assert!(v > 0 && logits == targets.len() * v, "cross-entropy: logits are not rows of {v}");
    assert!(
        targets.iter().all(|&t| (t as usize) < v),
        "cross-entropy: a target is outside the {v} classes"
    );
}

/// Mean over rows of `-ln softmax(logits)[target]`, for `logits` `[targets.len(), v]`; writes
/// the softmax to `probs` for [`cross_entropy_backward`]. Panics if a target is not below `v`
/// or the lengths disagree (the engine checks token ids before they get here).
pub fn cross_entropy_forward(
    logits: &[f32],
    targets: &[u32],
    v: usize,
    probs: &mut [MaybeUninit<f32>],
) -> f32 {
    check(logits.len(), targets, v);
    assert_eq!(probs.len(), logits.len(), "cross-entropy: probs length");
    let rows = targets.len();
    if rows == 0 {
        return f32::NAN;
    }
    let mut losses = vec![0f32; rows];
    let losses_parts = Disjoint::new(&mut losses);
    chunks_mut(probs, ROWS * v, |i, p| {
        let r = i * ROWS..i * ROWS + p.len() / v;
        // SAFETY: part i alone gets rows r of the losses.
        let l = unsafe { losses_parts.range(r.clone()) };
        forward_dispatch(&logits[r.start * v..r.end * v], &targets[r], v, p, l)
    });
    lane_sum(rows, |i| losses[i]) / rows as f32
}

/// `dlogits = (probs - onehot(targets)) * scale`; `scale` is the loss gradient over the row
/// count for the mean.
pub fn cross_entropy_backward(
    probs: &[f32],
    targets: &[u32],
    v: usize,
    scale: f32,
    dlogits: &mut [MaybeUninit<f32>],
) {
    check(probs.len(), targets, v);
    assert_eq!(dlogits.len(), probs.len(), "cross-entropy: gradient length");
    chunks_mut(dlogits, ROWS * v, |i, o| {
        let r = i * ROWS..i * ROWS + o.len() / v;
        backward_dispatch(&probs[r.start * v..r.end * v], &targets[r], v, scale, o)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::as_out;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::testing::values(n, seed, 4.0)
    }

    fn loss64(x: &[f32], targets: &[u32], v: usize) -> f64 {
        let rows = targets.len();
        (0..rows)
            .map(|r| {
                let row = &x[r * v..(r + 1) * v];
                let m = row.iter().fold(f64::NEG_INFINITY, |m, &a| m.max(a as f64));
                let lse = row.iter().map(|&a| (a as f64 - m).exp()).sum::<f64>().ln() + m;
                lse - row[targets[r] as usize] as f64
            })
            .sum::<f64>()
            / rows as f64
    }

    #[test]
    fn loss_and_gradient_match_f64_and_central_differences() {
        let (rows, v) = (37, 13); // v not a multiple of 8, rows over two parts
        let x = values(rows * v, 1);
        let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 7) % v as u32).collect();
        let mut probs = vec![f32::NAN; rows * v];
        let loss = cross_entropy_forward(&x, &targets, v, as_out(&mut probs));
        assert!((loss as f64 - loss64(&x, &targets, v)).abs() < 1e-5, "{loss}");
        let mut grad = vec![f32::NAN; rows * v];
        cross_entropy_backward(&probs, &targets, v, 1.0 / rows as f32, as_out(&mut grad));
        let h = 1e-3f32;
        for i in (0..rows * v).step_by(5) {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += h;
            m[i] -= h;
            let want = (loss64(&p, &targets, v) - loss64(&m, &targets, v)) / (2.0 * h as f64);
            assert!((grad[i] as f64 - want).abs() < 1e-4, "d[{i}] {} vs {want}", grad[i]);
        }
    }

    #[test]
    fn thread_count_does_not_change_the_bits() {
        let (rows, v) = (300, 65);
        let x = values(rows * v, 2);
        let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 11) % v as u32).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut probs = vec![0f32; rows * v];
                let loss = cross_entropy_forward(&x, &targets, v, as_out(&mut probs));
                let mut grad = vec![0f32; rows * v];
                cross_entropy_backward(&probs, &targets, v, 0.5, as_out(&mut grad));
                (loss, grad)
            })
        };
        let (l1, g1) = run(1);
        let (l3, g3) = run(3);
        assert_eq!(l1.to_bits(), l3.to_bits());
        assert!(g1.iter().zip(&g3).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
