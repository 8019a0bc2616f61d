//! AdamW, the learning-rate schedule and global-norm gradient clipping.
//!
//! The optimiser is the engine's own (about 40 lines on Burn tensors) rather than `burn-optim`'s,
//! for three reasons: weight decay must apply to matrices only (nanoGPT's grouping); clipping
//! must use the norm over the *whole* model while each miner holds one sliver, which needs the
//! per-parameter squared norms to cross the network in a fixed order; and the update must follow
//! PyTorch's `AdamW` step exactly so runs can be compared with it.

use std::collections::BTreeMap;

use burn::tensor::Tensor;

use crate::fast::AdamWStep;
use crate::merge::Flat;
use crate::model::Sliver;
use crate::EngineError;

const OPTIM_MAGIC: &[u8; 5] = b"SLVO1";

/// AdamW hyper-parameters (PyTorch semantics; decoupled weight decay).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices (linear weights, embeddings) only.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// Per-parameter AdamW state, keyed by the parameter's GPT-2 name.
#[derive(Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Optimiser steps taken.
    pub steps: u64,
    moments: BTreeMap<String, (Tensor<1>, Tensor<1>)>,
}

impl AdamW {
    /// A fresh optimiser.
    pub fn new(config: AdamWConfig) -> Self {
        AdamW { config, steps: 0, moments: BTreeMap::new() }
    }

    /// Applies one update to every parameter of `sliver` that has an entry in `grads`
    /// (flattened gradients by name), at learning rate `lr`, the gradients first scaled by
    /// `grad_scale` when it is below one (clipping).
    pub fn step(
        &mut self,
        sliver: &mut Sliver,
        grads: &BTreeMap<String, Tensor<1>>,
        lr: f64,
        grad_scale: f64,
    ) {
        self.steps += 1;
        let c = &self.config;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bc1;
        for (name, mut param) in sliver.params_mut() {
            let Some(g) = grads.get(&name) else { continue };
            let p = param.flat();
            let (m, v) = match self.moments.remove(&name) {
                Some(mv) => mv,
                None => (p.zeros_like(), p.zeros_like()),
            };
            let decay = if param.is_matrix() { 1.0 - lr * c.weight_decay } else { 1.0 };
            let (p, m, v) = if crate::fast::fused_supported(&p.device()) {
                let step = AdamWStep {
                    grad_scale: grad_scale as f32,
                    beta1: c.beta1 as f32,
                    one_minus_beta1: (1.0 - c.beta1) as f32,
                    beta2: c.beta2 as f32,
                    one_minus_beta2: (1.0 - c.beta2) as f32,
                    decay: decay as f32,
                    bias_correction2_sqrt: bc2_sqrt as f32,
                    eps: c.eps as f32,
                    step_size: step_size as f32,
                };
                crate::fast::adamw(p, g.clone(), m, v, step)
            } else {
                // The same expressions as the kernel, as tensor operations.
                let g = if grad_scale < 1.0 { g.clone().mul_scalar(grad_scale) } else { g.clone() };
                let m = m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
                let v = v.mul_scalar(c.beta2) + g.clone().square().mul_scalar(1.0 - c.beta2);
                let p = if decay != 1.0 { p.mul_scalar(decay) } else { p };
                let denom = v.clone().sqrt().div_scalar(bc2_sqrt).add_scalar(c.eps);
                (p - m.clone().div(denom).mul_scalar(step_size), m, v)
            };
            param.set_flat(p);
            self.moments.insert(name, (m, v));
        }
    }

    /// The state as bytes: `b"SLVO1"`, the step count (`u64`, little-endian), then the moments
    /// as a tensor set (`m/<name>`, `v/<name>`, f32; empty before the first step). A miner's
    /// audit log keeps it every few steps so that a validator can replay the steps after it.
    pub fn state_bytes(&self) -> Vec<u8> {
        let mut flat = crate::merge::Flat::new();
        for (name, m, v) in self.export() {
            flat.insert(format!("m/{name}"), m);
            flat.insert(format!("v/{name}"), v);
        }
        let mut out = OPTIM_MAGIC.to_vec();
        out.extend_from_slice(&self.steps.to_le_bytes());
        out.extend_from_slice(&crate::tensor_set::encode_flat(&flat, sliver_wire::WireCodec::F32));
        out
    }

    /// Replaces the state with `bytes` from [`AdamW::state_bytes`] (perhaps a stranger's) for
    /// `sliver`: the moments must be absent or name every parameter with its length, and be
    /// finite.
    pub fn load_state(&mut self, sliver: &mut Sliver, bytes: &[u8]) -> Result<(), EngineError> {
        let bad = EngineError::Checkpoint;
        if bytes.len() < OPTIM_MAGIC.len() + 8 || &bytes[..OPTIM_MAGIC.len()] != OPTIM_MAGIC {
            return Err(bad("not an optimiser state".into()));
        }
        let (head, rest) = bytes.split_at(OPTIM_MAGIC.len() + 8);
        let mut steps = [0u8; 8];
        steps.copy_from_slice(&head[OPTIM_MAGIC.len()..]);
        let steps = u64::from_le_bytes(steps);
        if steps > i32::MAX as u64 {
            return Err(bad(format!("{steps} optimiser steps")));
        }
        let params = sliver.params_mut();
        let empty = crate::tensor_set::encode_flat(&Flat::new(), sliver_wire::WireCodec::F32);
        let mut moments = BTreeMap::new();
        if rest != empty.as_slice() {
            let mut like = Flat::new();
            for (name, p) in &params {
                let n: usize = p.shape().iter().product();
                like.insert(format!("m/{name}"), vec![0.0; n]);
                like.insert(format!("v/{name}"), vec![0.0; n]);
            }
            let mut flat = crate::tensor_set::decode_flat(rest, &like)?;
            for (name, p) in &params {
                let device = p.flat().device();
                let (Some(m), Some(v)) =
                    (flat.remove(&format!("m/{name}")), flat.remove(&format!("v/{name}")))
                else {
                    return Err(bad(format!("no moments for {name}")));
                };
                if v.iter().any(|x| *x < 0.0) {
                    return Err(bad(format!("a negative second moment for {name}")));
                }
                let t = |x: Vec<f32>| {
                    let n = x.len();
                    Tensor::<1>::from_data(burn::tensor::TensorData::new(x, [n]), &device)
                };
                moments.insert(name.clone(), (t(m), t(v)));
            }
        }
        self.steps = steps;
        self.moments = moments;
        Ok(())
    }

    /// The state as flat vectors `(name, m, v)`, for checkpoints.
    pub fn export(&self) -> Vec<(String, Vec<f32>, Vec<f32>)> {
        self.moments
            .iter()
            .map(|(k, (m, v))| {
                (
                    k.clone(),
                    m.try_to_vec_as::<f32>().unwrap_or_default(),
                    v.try_to_vec_as::<f32>().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Learning rate of a linear warm-up followed by a cosine decay (nanoGPT's `get_lr`).
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub max_lr: f64,
    /// Floor reached at `decay_steps`.
    pub min_lr: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: u64,
    /// Step at which the cosine reaches `min_lr`.
    pub decay_steps: u64,
}

impl LrSchedule {
    /// The learning rate at 0-based step `it`.
    pub fn at(&self, it: u64) -> f64 {
        if it < self.warmup_steps {
            return self.max_lr * (it + 1) as f64 / (self.warmup_steps + 1) as f64;
        }
        if it > self.decay_steps {
            return self.min_lr;
        }
        let span = self.decay_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let ratio = (it - self.warmup_steps) as f64 / span;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}

/// The factor a miner's stage scales its sliver's gradient by before a step: `clip / norm` when
/// the norm exceeds `clip` (> 0), else one. Validators replaying its steps use the same.
pub fn clip_scale(norm: f64, clip: f64) -> f64 {
    if clip > 0.0 && norm > clip {
        clip / norm
    } else {
        1.0
    }
}

/// The factor that scales gradients so their global norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: `max_norm / (norm + 1e-6)`, capped at 1). `squares` are the per-parameter
/// squared norms, summed in the given order; returns `(norm, factor)`.
pub fn clip_factor(squares: &[f64], max_norm: f64) -> (f64, f64) {
    let norm = squares.iter().sum::<f64>().sqrt();
    let factor = if max_norm > 0.0 { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
    (norm, factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_nanogpt() {
        let s = LrSchedule { max_lr: 1e-3, min_lr: 1e-4, warmup_steps: 100, decay_steps: 2000 };
        assert!((s.at(0) - 1e-3 / 101.0).abs() < 1e-12);
        assert!((s.at(99) - 1e-3 * 100.0 / 101.0).abs() < 1e-12);
        assert!((s.at(100) - 1e-3).abs() < 1e-12);
        assert!((s.at(1050) - 5.5e-4).abs() < 1e-9);
        assert!((s.at(2000) - 1e-4).abs() < 1e-12);
        assert_eq!(s.at(5000), 1e-4);
    }

    #[test]
    fn clipping_caps_the_global_norm() {
        let (n, f) = clip_factor(&[9.0, 16.0], 1.0);
        assert_eq!(n, 5.0);
        assert!((f - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
        assert_eq!(clip_factor(&[0.01], 1.0).1, 1.0);
    }
}
