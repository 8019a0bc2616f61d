//! Causal multi-head self-attention straight from the fused `[batch, seq, 3 width]` projection
//! to the head-merged `[batch, seq, width]` output, and its backward pass.
//!
//! A decomposed attention splits the projection into heads (copies), materialises the full
//! `seq x seq` scores, masks them, runs a softmax in several passes and merges the heads (another
//! copy); its backward does all of that again. Here each `(batch, head)` pair is one loop nest
//! that reads the projection in place, computes only the causal half, and keeps the
//! probabilities for the backward pass.
//!
//! Every product is a combination of rows (`math::combine`) that keeps up to 64 lanes in
//! registers while it walks the reduction: scores are the query's combination of the transposed
//! keys, outputs and gradients combinations of value, key or query rows. Operands are first
//! copied into zero-padded scratch (keys and values transposed where the lanes run over
//! positions), which makes any head width and sequence length take the same path.
//!
//! Work is split across threads by batch row. Every sum runs in a fixed order (sequential along
//! its reduction, lane partials combined by a fixed tree), so results do not depend on the
//! thread count or on the instruction set the code was compiled for.

use crate::gemm::Kernel;
use crate::math::{combine, combine8, exp, vectorised, LANES};
use crate::pool::chunks_mut;
use crate::{as_out, write_all};
use std::mem::MaybeUninit;

type Out<'a> = &'a mut [MaybeUninit<f32>];

/// Dimensions of an attention call: `width = heads * head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Batch rows.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl AttnShape {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Elements of the `[batch, seq, 3 width]` projection.
    pub fn qkv_len(&self) -> usize {
        self.batch * self.seq * 3 * self.width()
    }

    /// Elements of the `[batch, seq, width]` output.
    pub fn out_len(&self) -> usize {
        self.batch * self.seq * self.width()
    }

    /// Elements of the `[batch, heads, seq, seq]` probabilities kept for the backward pass.
    pub fn probs_len(&self) -> usize {
        self.batch * self.heads * self.seq * self.seq
    }

    /// Batch row `b` of a batch-major array (the projection, probabilities or output).
    fn row<'a>(&self, data: &'a [f32], b: usize) -> &'a [f32] {
        let n = data.len() / self.batch;
        &data[b * n..(b + 1) * n]
    }
}

/// Forward pass: `probs` receives the attention probabilities (zero above the diagonal) and
/// `y` the output. Panics if a slice length disagrees with `s` (a caller bug).
pub fn causal_attention_forward(s: AttnShape, qkv: &[f32], probs: &mut [f32], y: &mut [f32]) {
    causal_attention_probs(s, qkv, as_out(probs));
    causal_attention_apply(s, qkv, probs, as_out(y));
}

/// First half of the forward pass: the probabilities `softmax(q kᵀ / √head_dim)` of every
/// head, causal (zero above the diagonal).
pub fn causal_attention_probs(s: AttnShape, qkv: &[f32], probs: &mut [MaybeUninit<f32>]) {
    assert_eq!(qkv.len(), s.qkv_len(), "attention: qkv length");
    assert_eq!(probs.len(), s.probs_len(), "attention: probs length");
    if probs.is_empty() {
        return;
    }
    chunks_mut(probs, s.heads * s.seq * s.seq, |b, p| dispatch_forward(s, s.row(qkv, b), p));
}

/// Second half of the forward pass: `y = probs v`, heads merged into `[batch, seq, width]`.
pub fn causal_attention_apply(
    s: AttnShape,
    qkv: &[f32],
    probs: &[f32],
    y: &mut [MaybeUninit<f32>],
) {
    assert_eq!(qkv.len(), s.qkv_len(), "attention: qkv length");
    assert_eq!(probs.len(), s.probs_len(), "attention: probs length");
    assert_eq!(y.len(), s.out_len(), "attention: output length");
    if y.is_empty() {
        return;
    }
    chunks_mut(y, s.seq * s.width(), |b, y| dispatch_apply(s, s.row(qkv, b), s.row(probs, b), y));
}

/// Backward pass: `dqkv` receives the gradient of the projection given the output gradient
/// `dy`, the projection and the probabilities of the forward pass.
pub fn causal_attention_backward(
    s: AttnShape,
    qkv: &[f32],
    probs: &[f32],
    dy: &[f32],
    dqkv: &mut [MaybeUninit<f32>],
) {
    assert_eq!(qkv.len(), s.qkv_len(), "attention: qkv length");
    assert_eq!(probs.len(), s.probs_len(), "attention: probs length");
    assert_eq!(dy.len(), s.out_len(), "attention: output gradient length");
    assert_eq!(dqkv.len(), s.qkv_len(), "attention: qkv gradient length");
    if s.out_len() == 0 {
        return;
    }
    chunks_mut(dqkv, s.seq * 3 * s.width(), |b, dqkv| {
        dispatch_backward(s, s.row(qkv, b), s.row(probs, b), s.row(dy, b), dqkv)
    });
}

vectorised!(fn dispatch_forward(s: AttnShape, qkv: &[f32], p: Out<'_>) => forward_row);
vectorised!(fn dispatch_apply(s: AttnShape, qkv: &[f32], p: &[f32], y: Out<'_>) => apply_row);
vectorised!(
    fn dispatch_backward(s: AttnShape, qkv: &[f32], p: &[f32], dy: &[f32], dqkv: Out<'_>)
        => backward_row
);

/// `n` rounded up to whole blocks of lanes.
fn padded(n: usize) -> usize {
    n.div_ceil(LANES) * LANES
}

/// Sum of `v` (a multiple of 8 long) as 8 running partial sums combined in a fixed order:
/// `sum_j a_j` when `b` is `None`, else `sum_j a_j b_j`.
#[inline(always)]
fn partial_sum(a: &[f32], b: Option<&[f32]>) -> f32 {
    let mut part = [0f32; 8];
    match b {
        None => {
            for ch in a.chunks_exact(8) {
                for l in 0..8 {
                    part[l] += ch[l];
                }
            }
        }
        Some(b) => {
            for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
                for l in 0..8 {
                    part[l] = ca[l].mul_add(cb[l], part[l]);
                }
            }
        }
    }
    combine8(part)
}

/// `dst[d * ld + j] = src[j * stride + d]` for `j < t`, `d < hd`: one head's keys or values
/// transposed (the padding of `dst` past `t` stays as it was: zero).
#[inline(always)]
fn transpose_head(src: &[f32], stride: usize, t: usize, hd: usize, dst: &mut [f32], ld: usize) {
    for j in 0..t {
        let row = &src[j * stride..j * stride + hd];
        for (d, &v) in row.iter().enumerate() {
            dst[d * ld + j] = v;
        }
    }
}

/// `dst[j * ld + d] = src[j * stride + d]`: one head's rows, padded to `ld` (zero past `hd`).
#[inline(always)]
fn copy_head(src: &[f32], stride: usize, t: usize, hd: usize, dst: &mut [f32], ld: usize) {
    for j in 0..t {
        dst[j * ld..j * ld + hd].copy_from_slice(&src[j * stride..j * stride + hd]);
    }
}

/// Probabilities of one batch row: `qkv` `[t, 3c]`, `p` `[heads, t, t]`.
#[inline(always)]
fn forward_row(s: AttnShape, qkv: &[f32], p: Out<'_>) {
    let kernel = Kernel::detect();
    let (t, hd, c) = (s.seq, s.head_dim, s.width());
    let (stride, tp) = (3 * c, padded(t));
    let scale = 1.0 / (hd as f32).sqrt();
    let mut kt = vec![0f32; hd * tp];
    let mut q = vec![0f32; hd];
    let mut row = vec![0f32; tp];
    for h in 0..s.heads {
        let (qo, ko) = (h * hd, c + h * hd);
        transpose_head(&qkv[ko..], stride, t, hd, &mut kt, tp);
        let ph = &mut p[h * t * t..(h + 1) * t * t];
        for i in 0..t {
            let (n, w) = (i + 1, padded(i + 1));
            for (a, &v) in q.iter_mut().zip(&qkv[i * stride + qo..i * stride + qo + hd]) {
                *a = v * scale;
            }
            // Scores of keys 0..w; those past the diagonal become exactly zero after `exp`.
            combine(kernel, &q, &kt, tp, w, &mut row);
            row[n..w].fill(f32::NEG_INFINITY);
            let mut part = [f32::NEG_INFINITY; 8];
            for ch in row[..w].chunks_exact(8) {
                for l in 0..8 {
                    part[l] = part[l].max(ch[l]);
                }
            }
            let max = part.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            for v in row[..n].iter_mut() {
                *v = exp(*v - max);
            }
            row[n..w].fill(0.0);
            let inv = 1.0 / partial_sum(&row[..w], None);
            let out = &mut ph[i * t..(i + 1) * t];
            for (o, &e) in out[..n].iter_mut().zip(&row[..n]) {
                o.write(e * inv);
            }
            for o in &mut out[n..] {
                o.write(0.0);
            }
        }
    }
}

/// `y_i = sum_j p_ij v_j` for one batch row.
#[inline(always)]
fn apply_row(s: AttnShape, qkv: &[f32], p: &[f32], y: Out<'_>) {
    let kernel = Kernel::detect();
    let (t, hd, c) = (s.seq, s.head_dim, s.width());
    let (stride, hdp) = (3 * c, padded(hd));
    let mut vp = vec![0f32; t * hdp];
    let mut out = vec![0f32; hdp];
    for h in 0..s.heads {
        copy_head(&qkv[2 * c + h * hd..], stride, t, hd, &mut vp, hdp);
        let ph = &p[h * t * t..(h + 1) * t * t];
        for i in 0..t {
            combine(kernel, &ph[i * t..i * t + i + 1], &vp, hdp, hdp, &mut out);
            write_all(&mut y[i * c + h * hd..i * c + (h + 1) * hd], &out[..hd]);
        }
    }
}

/// One batch row of the backward pass (shapes as in [`forward_row`], `dqkv` like `qkv`).
///
/// With `dP_ij = dy_i . v_j` and `dS_ij = scale p_ij (dP_ij - sum_j p_ij dP_ij)`:
/// `dq_i = sum_j dS_ij k_j` row by row, then `dv_j = sum_i p_ij dy_i` and
/// `dk_j = sum_i dS_ij q_i` from the transposed `P` and `dS`.
#[inline(always)]
fn backward_row(s: AttnShape, qkv: &[f32], p: &[f32], dy: &[f32], dqkv: Out<'_>) {
    let kernel = Kernel::detect();
    let (t, hd, c) = (s.seq, s.head_dim, s.width());
    let (stride, tp, hdp) = (3 * c, padded(t), padded(hd));
    let scale = 1.0 / (hd as f32).sqrt();
    let mut vt = vec![0f32; hd * tp];
    let mut qp = vec![0f32; t * hdp];
    let mut kp = vec![0f32; t * hdp];
    let mut dyp = vec![0f32; t * hdp];
    let mut pt = vec![0f32; t * t];
    let mut dst = vec![0f32; t * t];
    let mut prow = vec![0f32; tp];
    let mut dp = vec![0f32; tp];
    let mut out = vec![0f32; hdp];
    for h in 0..s.heads {
        let (qo, ko, vo) = (h * hd, c + h * hd, 2 * c + h * hd);
        transpose_head(&qkv[vo..], stride, t, hd, &mut vt, tp);
        copy_head(&qkv[qo..], stride, t, hd, &mut qp, hdp);
        copy_head(&qkv[ko..], stride, t, hd, &mut kp, hdp);
        copy_head(&dy[qo..], c, t, hd, &mut dyp, hdp);
        let ph = &p[h * t * t..(h + 1) * t * t];
        for i in 0..t {
            let (n, w) = (i + 1, padded(i + 1));
            prow[..n].copy_from_slice(&ph[i * t..i * t + n]);
            prow[n..w].fill(0.0);
            combine(kernel, &dyp[i * hdp..i * hdp + hd], &vt, tp, w, &mut dp);
            let dot = partial_sum(&prow[..w], Some(&dp[..w]));
            for (d, &pj) in dp[..n].iter_mut().zip(&prow[..n]) {
                *d = pj * (*d - dot) * scale;
            }
            for (j, (&d, &pj)) in dp[..n].iter().zip(&prow[..n]).enumerate() {
                dst[j * t + i] = d;
                pt[j * t + i] = pj;
            }
            combine(kernel, &dp[..n], &kp, hdp, hdp, &mut out);
            write_all(&mut dqkv[i * stride + qo..i * stride + qo + hd], &out[..hd]);
        }
        for j in 0..t {
            let rows = j * hdp..;
            combine(kernel, &pt[j * t + j..(j + 1) * t], &dyp[rows.clone()], hdp, hdp, &mut out);
            write_all(&mut dqkv[j * stride + vo..j * stride + vo + hd], &out[..hd]);
            combine(kernel, &dst[j * t + j..(j + 1) * t], &qp[rows], hdp, hdp, &mut out);
            write_all(&mut dqkv[j * stride + ko..j * stride + ko + hd], &out[..hd]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::testing::values(n, seed, 1.0)
    }

    /// Straightforward f64 attention over the same layout.
    fn reference(s: AttnShape, qkv: &[f32]) -> Vec<f64> {
        let (t, hd, c) = (s.seq, s.head_dim, s.width());
        let at = |b: usize, i: usize, off: usize| qkv[(b * t + i) * 3 * c + off] as f64;
        let mut y = vec![0f64; s.out_len()];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..t {
                    let sc: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..hd)
                                .map(|d| at(b, i, h * hd + d) * at(b, j, c + h * hd + d))
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|v| (v - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..hd {
                        y[(b * t + i) * c + h * hd + d] =
                            (0..=i).map(|j| e[j] / z * at(b, j, 2 * c + h * hd + d)).sum();
                    }
                }
            }
        }
        y
    }

    const S: AttnShape = AttnShape { batch: 3, seq: 9, heads: 2, head_dim: 5 };

    fn forward(s: AttnShape, qkv: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut p = vec![f32::NAN; s.probs_len()];
        let mut y = vec![f32::NAN; s.out_len()];
        causal_attention_forward(s, qkv, &mut p, &mut y);
        (p, y)
    }

    #[test]
    fn forward_matches_a_reference_and_is_causal() {
        let qkv: Vec<f32> = values(S.qkv_len(), 1).iter().map(|v| v * 3.0).collect();
        let (p, y) = forward(S, &qkv);
        for (a, b) in y.iter().zip(reference(S, &qkv)) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
        for row in p.chunks(S.seq).enumerate().map(|(r, row)| (r % S.seq, row)) {
            let (i, row) = row;
            assert!(row[i + 1..].iter().all(|&v| v == 0.0));
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn backward_matches_central_differences() {
        let qkv = values(S.qkv_len(), 2);
        let w = values(S.out_len(), 3); // loss = sum(w * y)
        let (p, _) = forward(S, &qkv);
        let mut grad = vec![f32::NAN; S.qkv_len()];
        causal_attention_backward(S, &qkv, &p, &w, crate::as_out(&mut grad));
        let loss =
            |x: &[f32]| -> f64 { reference(S, x).iter().zip(&w).map(|(y, w)| y * *w as f64).sum() };
        for idx in (0..S.qkv_len()).step_by(7) {
            let h = 1e-2f32;
            let mut plus = qkv.clone();
            plus[idx] += h;
            let mut minus = qkv.clone();
            minus[idx] -= h;
            let want = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
            assert!(
                (grad[idx] as f64 - want).abs() < 2e-4,
                "d/dqkv[{idx}]: {} vs {want}",
                grad[idx]
            );
        }
    }

    #[test]
    fn thread_count_does_not_change_the_bits() {
        let s = AttnShape { batch: 6, seq: 16, heads: 2, head_dim: 8 };
        let qkv = values(s.qkv_len(), 4);
        let dy = values(s.out_len(), 5);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let (p, y) = forward(s, &qkv);
                let mut g = vec![0f32; s.qkv_len()];
                causal_attention_backward(s, &qkv, &p, &dy, crate::as_out(&mut g));
                (y, g)
            })
        };
        let (y1, g1) = run(1);
        let (y3, g3) = run(3);
        assert!(y1.iter().zip(&y3).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(g1.iter().zip(&g3).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
