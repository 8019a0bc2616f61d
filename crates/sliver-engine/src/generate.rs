//! Text generation from a whole model: temperature and top-k sampling, seeded.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::model::{Sliver, SliverInput};
use crate::rng::SplitMix64;
use crate::EngineError;

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleConfig {
    /// Tokens to generate.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig { max_new_tokens: 200, temperature: 0.8, top_k: 40, seed: 0 }
    }
}

/// Continues `prompt` (token ids) with a whole model (first and last sliver); returns only the
/// new tokens. The context is cropped to the model's `block_size`.
pub fn generate(
    model: &Sliver,
    block_size: usize,
    prompt: &[u32],
    cfg: &SampleConfig,
    device: &Device,
) -> Result<Vec<u32>, EngineError> {
    if model.wte.is_none() || model.lm_head.is_none() {
        return Err(EngineError::Config("generation needs the whole model, not one sliver".into()));
    }
    let model = burn::module::Module::valid(model);
    let device = device.clone().without_autodiff();
    let mut ctx: Vec<u32> = if prompt.is_empty() { vec![b'\n' as u32] } else { prompt.to_vec() };
    let mut rng = SplitMix64::new(cfg.seed);
    let mut out = Vec::with_capacity(cfg.max_new_tokens);
    for _ in 0..cfg.max_new_tokens {
        let window = &ctx[ctx.len().saturating_sub(block_size)..];
        let ids: Vec<i64> = window.iter().map(|&t| i64::from(t)).collect();
        let t = ids.len();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, t]), &device);
        let logits = model.forward(SliverInput::Tokens(tokens))?;
        let v = logits.dims()[2];
        let last: Vec<f32> =
            logits.narrow(1, t - 1, 1).reshape([v]).try_to_vec_as::<f32>().unwrap_or_default();
        let next = sample(&last, cfg.temperature, cfg.top_k, &mut rng) as u32;
        ctx.push(next);
        out.push(next);
    }
    Ok(out)
}

/// Draws an index from `logits` with temperature and top-k.
pub fn sample(logits: &[f32], temperature: f32, top_k: usize, rng: &mut SplitMix64) -> usize {
    if logits.is_empty() {
        return 0;
    }
    let argmax =
        logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
    if temperature <= 0.0 {
        return argmax;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if top_k > 0 {
        idx.truncate(top_k);
    }
    let max = logits[idx[0]];
    let weights: Vec<f64> =
        idx.iter().map(|&i| f64::from((logits[i] - max) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.next_f64() * total;
    for (w, &i) in weights.iter().zip(&idx) {
        if u < *w {
            return i;
        }
        u -= w;
    }
    idx[idx.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_k() {
        let mut r = SplitMix64::new(1);
        let logits = [0.0, 5.0, 1.0, 4.9];
        assert_eq!(sample(&logits, 0.0, 0, &mut r), 1);
        for _ in 0..100 {
            let i = sample(&logits, 1.0, 2, &mut r);
            assert!(i == 1 || i == 3);
        }
    }
}
