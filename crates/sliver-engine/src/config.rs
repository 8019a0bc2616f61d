//! Model configuration and the split of a model into slivers.

use burn::config::Config;
use std::ops::Range;

use crate::EngineError;

/// A decoder-only transformer in the GPT-2 family (pre-norm blocks, learned positions).
#[derive(Config, Debug, PartialEq)]
pub struct GptConfig {
    /// Vocabulary size (256 for the built-in byte tokenizer).
    #[config(default = 256)]
    pub vocab_size: usize,
    /// Number of transformer blocks.
    #[config(default = 4)]
    pub n_layer: usize,
    /// Attention heads per block; must divide `d_model`.
    #[config(default = 4)]
    pub n_head: usize,
    /// Width of the residual stream.
    #[config(default = 128)]
    pub d_model: usize,
    /// Context length (maximum sequence length).
    #[config(default = 64)]
    pub block_size: usize,
    /// Biases in linear layers and layer norms (nanoGPT's `bias`).
    #[config(default = false)]
    pub bias: bool,
    /// Tie the LM head to the token embedding (the two copies stay equal; see `pipeline`).
    #[config(default = true)]
    pub tie_embeddings: bool,
    /// Seed of the deterministic weight initialisation.
    #[config(default = 1337)]
    pub init_seed: u64,
}

/// Largest model dimension accepted from an untrusted configuration (checkpoint or chain).
pub const MAX_DIM: usize = 1 << 16;

impl GptConfig {
    /// Checks that the configuration describes a model this engine can build.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |why: String| Err(EngineError::Config(why));
        if self.vocab_size == 0 || self.vocab_size > 1 << 20 {
            return bad(format!("vocab_size {} is outside 1..=2^20", self.vocab_size));
        }
        if self.n_layer == 0 || self.n_layer > 1024 {
            return bad(format!("n_layer {} is outside 1..=1024", self.n_layer));
        }
        if self.d_model == 0
            || self.d_model > MAX_DIM
            || self.block_size == 0
            || self.block_size > MAX_DIM
        {
            return bad(format!(
                "d_model {} and block_size {} must be in 1..={MAX_DIM}",
                self.d_model, self.block_size
            ));
        }
        if self.n_head == 0 || self.d_model % self.n_head != 0 {
            return bad(format!("n_head {} must divide d_model {}", self.n_head, self.d_model));
        }
        Ok(())
    }

    /// Parameters of the whole model, counting a tied embedding once.
    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let b = usize::from(self.bias);
        let block = 2 * d * (1 + b)
            + d * 3 * d
            + 3 * d * b
            + d * d
            + d * b
            + d * 4 * d
            + 4 * d * b
            + 4 * d * d
            + d * b;
        let head = if self.tie_embeddings { 0 } else { self.vocab_size * d };
        self.vocab_size * d + self.block_size * d + self.n_layer * block + d * (1 + b) + head
    }
}

/// Where one sliver sits in the model: its index, how many slivers there are and its blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliverSpec {
    /// Index of this sliver, 0-based.
    pub index: usize,
    /// Number of slivers the model is split into.
    pub count: usize,
    /// The global indices of the transformer blocks this sliver owns.
    pub layers: Range<usize>,
}

impl SliverSpec {
    /// Splits `n_layer` blocks into `count` slivers of consecutive blocks, as even as possible
    /// (earlier slivers take the remainder, because the last one also carries the head).
    pub fn split(n_layer: usize, count: usize) -> Result<Vec<SliverSpec>, EngineError> {
        if count == 0 || count > n_layer {
            return Err(EngineError::Config(format!(
                "cannot split {n_layer} blocks into {count} slivers (need 1..={n_layer})"
            )));
        }
        let base = n_layer / count;
        let extra = n_layer % count;
        let mut start = 0;
        Ok((0..count)
            .map(|index| {
                let len = base + usize::from(index < extra);
                let spec = SliverSpec { index, count, layers: start..start + len };
                start += len;
                spec
            })
            .collect())
    }

    /// The whole model as one sliver.
    pub fn whole(n_layer: usize) -> SliverSpec {
        SliverSpec { index: 0, count: 1, layers: 0..n_layer }
    }

    /// Owns the token and position embeddings.
    pub fn is_first(&self) -> bool {
        self.index == 0
    }

    /// Owns the final norm, the LM head and the loss.
    pub fn is_last(&self) -> bool {
        self.index + 1 == self.count
    }
}
