//! One AdamW update (PyTorch's `AdamW` with decoupled weight decay) of a parameter, its two
//! moment estimates and its gradient, as a single pass over memory.
//!
//! The expressions and their order are those of the engine's tensor-op AdamW (`optim.rs`), so
//! both give the same bits; the decomposed version costs about a dozen passes per parameter.

use crate::math::vectorised;
use crate::pool::{chunks_mut, Disjoint};
use std::mem::MaybeUninit;

type Out<'a> = &'a mut [MaybeUninit<f32>];

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// The scalars of one update, already in f32 as the tensor version rounds them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Gradient scale (clipping factor), applied only when below one.
    pub grad_scale: f32,
    /// `beta1`.
    pub beta1: f32,
    /// `1 - beta1`.
    pub one_minus_beta1: f32,
    /// `beta2`.
    pub beta2: f32,
    /// `1 - beta2`.
    pub one_minus_beta2: f32,
    /// `1 - lr * weight_decay` (1 when the parameter is not decayed).
    pub decay: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bias_correction2_sqrt: f32,
    /// `eps`.
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
}

/// The parameter, gradient and moments an update reads.
#[derive(Clone, Copy, Debug)]
pub struct AdamWInputs<'a> {
    /// Parameter.
    pub p: &'a [f32],
    /// Gradient (before the scale).
    pub g: &'a [f32],
    /// First moment.
    pub m: &'a [f32],
    /// Second moment.
    pub v: &'a [f32],
}

impl<'a> AdamWInputs<'a> {
    fn range(&self, r: std::ops::Range<usize>) -> AdamWInputs<'a> {
        AdamWInputs {
            p: &self.p[r.clone()],
            g: &self.g[r.clone()],
            m: &self.m[r.clone()],
            v: &self.v[r],
        }
    }
}

#[inline(always)]
fn update(s: AdamWStep, x: AdamWInputs<'_>, po: Out<'_>, mo: Out<'_>, vo: Out<'_>) {
    for i in 0..po.len() {
        let g = if s.grad_scale < 1.0 { x.g[i] * s.grad_scale } else { x.g[i] };
        let m = x.m[i] * s.beta1 + g * s.one_minus_beta1;
        let v = x.v[i] * s.beta2 + g * g * s.one_minus_beta2;
        let p = if s.decay != 1.0 { x.p[i] * s.decay } else { x.p[i] };
        let denom = v.sqrt() / s.bias_correction2_sqrt + s.eps;
        po[i].write(p - m / denom * s.step_size);
        mo[i].write(m);
        vo[i].write(v);
    }
}

vectorised!(
    fn dispatch(s: AdamWStep, x: AdamWInputs<'_>, po: Out<'_>, mo: Out<'_>, vo: Out<'_>)
        => update
);

/// Writes the updated parameter, first and second moments to `out` (`3 n` values: `p'`, then
/// `m'`, then `v'`). Panics when the lengths disagree (a caller bug).
pub fn adamw_step(s: AdamWStep, x: AdamWInputs<'_>, out: Out<'_>) {
    let n = x.p.len();
    assert!(x.g.len() == n && x.m.len() == n && x.v.len() == n, "adamw: lengths");
    assert_eq!(out.len(), 3 * n, "adamw: output length");
    let (po, rest) = out.split_at_mut(n);
    let (mo, vo) = rest.split_at_mut(n);
    let (mo, vo) = (Disjoint::new(mo), Disjoint::new(vo));
    chunks_mut(po, CHUNK, |c, po| {
        let r = c * CHUNK..c * CHUNK + po.len();
        // SAFETY: chunk c alone gets range r of each output.
        let (mo, vo) = unsafe { (mo.range(r.clone()), vo.range(r.clone())) };
        dispatch(s, x.range(r), po, mo, vo)
    });
}
