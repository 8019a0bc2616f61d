//! Layer normalisation over the last dimension without a bias, `y = (x - mean) / sqrt(var +
//! eps) * w` (biased variance, as PyTorch and Burn compute it), and its two gradients.
//!
//! A decomposed layer norm costs about eight element-wise passes forward and twice that
//! backward, most of them on one thread. Here each direction is one pass per row: row
//! statistics are recomputed in the backward pass (two short sums per row) instead of stored.
//! Rows are split across threads in fixed blocks; sums within a row run as eight lane partials
//! combined in a fixed order, and the weight gradient adds the blocks' partial sums in block
//! order, so no result depends on the thread count.

use crate::math::{lane_sum, vectorised};
use crate::pool::chunks_mut;
use std::mem::MaybeUninit;

/// Rows per parallel task (also the blocks of the weight gradient's partial sums).
const ROWS: usize = 32;

/// Mean and reciprocal standard deviation of one row.
#[inline(always)]
fn stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = lane_sum(x.len(), |i| x[i]) / d;
    let var = lane_sum(x.len(), |i| (x[i] - mean) * (x[i] - mean)) / d;
    (mean, 1.0 / (var + eps).sqrt())
}

fn check(x: &[f32], d: usize, other: usize) {
    assert!(d > 0 && x.len().is_multiple_of(d), "layer norm: x is not rows of {d}");
    assert_eq!(x.len(), other, "layer norm: lengths");
}

#[inline(always)]
fn forward_rows(x: &[f32], w: &[f32], eps: f32, y: &mut [MaybeUninit<f32>]) {
    let d = w.len();
    for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let (mean, rstd) = stats(x, eps);
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            y.write((x - mean) * rstd * w);
        }
    }
}

#[inline(always)]
fn grad_input_rows(x: &[f32], w: &[f32], dy: &[f32], eps: f32, dx: &mut [MaybeUninit<f32>]) {
    let d = w.len();
    for ((dx, x), dy) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(dy.chunks_exact(d)) {
        let (mean, rstd) = stats(x, eps);
        let g_mean = lane_sum(d, |i| dy[i] * w[i]) / d as f32;
        let gx_mean = lane_sum(d, |i| dy[i] * w[i] * ((x[i] - mean) * rstd)) / d as f32;
        for i in 0..d {
            let xhat = (x[i] - mean) * rstd;
            dx[i].write(rstd * (dy[i] * w[i] - g_mean - xhat * gx_mean));
        }
    }
}

#[inline(always)]
fn grad_weight_rows(x: &[f32], dy: &[f32], eps: f32, acc: &mut [f32]) {
    let d = acc.len();
    for (x, dy) in x.chunks_exact(d).zip(dy.chunks_exact(d)) {
        let (mean, rstd) = stats(x, eps);
        for ((a, &x), &g) in acc.iter_mut().zip(x).zip(dy) {
            *a += g * ((x - mean) * rstd);
        }
    }
}

vectorised!(
    fn forward_dispatch(x: &[f32], w: &[f32], eps: f32, y: &mut [MaybeUninit<f32>]) => forward_rows
);
vectorised!(
    fn grad_input_dispatch(x: &[f32], w: &[f32], dy: &[f32], eps: f32, dx: &mut [MaybeUninit<f32>])
        => grad_input_rows
);
vectorised!(
    fn grad_weight_dispatch(x: &[f32], dy: &[f32], eps: f32, acc: &mut [f32]) => grad_weight_rows
);

/// `y = (x - mean) rstd w` row by row, rows of `w.len()` values.
pub fn layer_norm_forward(x: &[f32], w: &[f32], eps: f32, y: &mut [MaybeUninit<f32>]) {
    check(x, w.len(), y.len());
    let d = w.len();
    chunks_mut(y, ROWS * d, |i, y| {
        forward_dispatch(&x[i * ROWS * d..i * ROWS * d + y.len()], w, eps, y)
    });
}

/// The input gradient given the output gradient `dy`:
/// `dx = rstd (g - mean(g) - x̂ mean(g x̂))` with `g = dy w` and `x̂ = (x - mean) rstd`.
pub fn layer_norm_grad_input(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    eps: f32,
    dx: &mut [MaybeUninit<f32>],
) {
    check(x, w.len(), dy.len());
    check(x, w.len(), dx.len());
    let d = w.len();
    chunks_mut(dx, ROWS * d, |i, dx| {
        let r = i * ROWS * d..i * ROWS * d + dx.len();
        grad_input_dispatch(&x[r.clone()], w, &dy[r], eps, dx)
    });
}

/// The weight gradient `dw = sum over rows of dy x̂`, rows of `dw.len()` values.
pub fn layer_norm_grad_weight(x: &[f32], dy: &[f32], eps: f32, dw: &mut [MaybeUninit<f32>]) {
    let d = dw.len();
    check(x, d, dy.len());
    let rows = x.len() / d;
    let mut partials = vec![0f32; rows.div_ceil(ROWS) * d];
    chunks_mut(&mut partials, d, |i, acc| {
        let r = i * ROWS * d..((i + 1) * ROWS * d).min(x.len());
        grad_weight_dispatch(&x[r.clone()], &dy[r], eps, acc)
    });
    for (j, out) in dw.iter_mut().enumerate() {
        out.write(partials.chunks_exact(d).fold(0.0, |a, p| a + p[j]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::testing::values(n, seed, 2.0)
    }

    /// f64 layer norm of one row.
    fn reference(x: &[f32], w: &[f32], eps: f64) -> Vec<f64> {
        let d = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / d;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d;
        x.iter().zip(w).map(|(&v, &w)| (v as f64 - mean) / (var + eps).sqrt() * w as f64).collect()
    }

    #[test]
    fn forward_matches_f64_and_gradients_match_central_differences() {
        let (rows, d, eps) = (5, 13, 1e-5);
        let x = values(rows * d, 1);
        let w = values(d, 2);
        let g = values(rows * d, 3); // loss = sum(g * y)
        let mut y = vec![f32::NAN; rows * d];
        layer_norm_forward(&x, &w, eps, crate::as_out(&mut y));
        for r in 0..rows {
            let want = reference(&x[r * d..(r + 1) * d], &w, eps as f64);
            for (a, b) in y[r * d..(r + 1) * d].iter().zip(want) {
                assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            (0..rows)
                .flat_map(|r| reference(&x[r * d..(r + 1) * d], w, eps as f64))
                .zip(&g)
                .map(|(y, &g)| y * g as f64)
                .sum()
        };
        let mut dx = vec![f32::NAN; rows * d];
        layer_norm_grad_input(&x, &w, &g, eps, crate::as_out(&mut dx));
        let mut dw = vec![f32::NAN; d];
        layer_norm_grad_weight(&x, &g, eps, crate::as_out(&mut dw));
        let h = 1e-3f32;
        for i in 0..rows * d {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += h;
            m[i] -= h;
            let want = (loss(&p, &w) - loss(&m, &w)) / (2.0 * h as f64);
            assert!((dx[i] as f64 - want).abs() < 2e-3, "dx[{i}] {} vs {want}", dx[i]);
        }
        for j in 0..d {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[j] += h;
            m[j] -= h;
            let want = (loss(&x, &p) - loss(&x, &m)) / (2.0 * h as f64);
            assert!((dw[j] as f64 - want).abs() < 2e-3, "dw[{j}] {} vs {want}", dw[j]);
        }
    }

    #[test]
    fn thread_count_does_not_change_the_bits() {
        let (rows, d) = (200, 40);
        let x = values(rows * d, 4);
        let w = values(d, 5);
        let g = values(rows * d, 6);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut y = vec![0f32; rows * d];
                let mut dx = vec![0f32; rows * d];
                let mut dw = vec![0f32; d];
                layer_norm_forward(&x, &w, 1e-5, crate::as_out(&mut y));
                layer_norm_grad_input(&x, &w, &g, 1e-5, crate::as_out(&mut dx));
                layer_norm_grad_weight(&x, &g, 1e-5, crate::as_out(&mut dw));
                [y, dx, dw].concat()
            })
        };
        let (a, b) = (run(1), run(3));
        assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
