//! The GPT model, built as slivers: a [`Sliver`] owns a run of consecutive transformer blocks,
//! plus the embeddings when it is the first and the final norm and LM head when it is the last.
//! The whole model is simply the one sliver that is both first and last.
//!
//! Parameter names follow GPT-2 (`wte.weight`, `h.3.attn.c_attn.weight`, `ln_f.weight`, ...) with
//! global block indices, and linear weights are stored `[in, out]` like GPT-2's `Conv1D`, so a
//! sliver's file and a whole model's file share one namespace.

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::log_softmax;
use burn::tensor::module::{attention, embedding, layer_norm};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::{GptConfig, SliverSpec};
use crate::rng::SplitMix64;
use crate::EngineError;

/// Standard deviation of the weight initialisation (nanoGPT, GPT-2).
const INIT_STD: f64 = 0.02;

/// A parameter seen through a rank-erased handle: what optimisers, merging and checkpoints use.
pub enum ParamRef<'a> {
    /// A vector (norm weight, bias).
    Vector(&'a mut Param<Tensor<1>>),
    /// A matrix (linear weight, embedding table).
    Matrix(&'a mut Param<Tensor<2>>),
}

impl ParamRef<'_> {
    /// The parameter's shape.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            ParamRef::Vector(p) => p.val().dims().to_vec(),
            ParamRef::Matrix(p) => p.val().dims().to_vec(),
        }
    }

    /// Its id, which keys gradients.
    pub fn id(&self) -> ParamId {
        match self {
            ParamRef::Vector(p) => p.id,
            ParamRef::Matrix(p) => p.id,
        }
    }

    /// True for matrices (weight decay applies to these only, as in nanoGPT).
    pub fn is_matrix(&self) -> bool {
        matches!(self, ParamRef::Matrix(_))
    }

    /// The value flattened to one dimension, outside autodiff.
    pub fn flat(&self) -> Tensor<1> {
        match self {
            ParamRef::Vector(p) => p.val().inner(),
            ParamRef::Matrix(p) => {
                let t = p.val().inner();
                let n = t.shape().num_elements();
                t.reshape([n])
            }
        }
    }

    /// This parameter's gradient in `grads`, flattened, if it took part in the backward pass.
    pub fn grad(&self, grads: &burn::tensor::Gradients) -> Option<Tensor<1>> {
        match self {
            ParamRef::Vector(p) => p.val().grad(grads),
            ParamRef::Matrix(p) => p.val().grad(grads).map(|g| {
                let n = g.shape().num_elements();
                g.reshape([n])
            }),
        }
    }

    /// Replaces the value with `flat` (same number of elements), keeping the id and making it a
    /// fresh leaf that requires gradients again when the device has autodiff.
    pub fn set_flat(&mut self, flat: Tensor<1>) {
        match self {
            ParamRef::Vector(p) => {
                let autodiff = p.val().is_autodiff();
                let t = flat.inner();
                let t = if autodiff { t.autodiff().require_grad() } else { t };
                **p = Param::initialized(p.id, t);
            }
            ParamRef::Matrix(p) => {
                let autodiff = p.val().is_autodiff();
                let [r, c] = p.val().dims();
                let t = flat.inner().reshape([r, c]);
                let t = if autodiff { t.autodiff().require_grad() } else { t };
                **p = Param::initialized(p.id, t);
            }
        }
    }
}

fn normal_param<const D: usize>(
    shape: [usize; D],
    std: f64,
    seed: u64,
    name: &str,
    device: &Device,
) -> Param<Tensor<D>> {
    let n: usize = shape.iter().product();
    let mut rng = SplitMix64::for_name(seed, name);
    let values: Vec<f32> = (0..n).map(|_| (rng.next_normal() * std) as f32).collect();
    let t = Tensor::<D>::from_data(TensorData::new(values, shape), device);
    Param::initialized(ParamId::new(), leaf(t))
}

fn const_param(n: usize, value: f32, device: &Device) -> Param<Tensor<1>> {
    let t = Tensor::<1>::from_data(TensorData::new(vec![value; n], [n]), device);
    Param::initialized(ParamId::new(), leaf(t))
}

fn leaf<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.device().is_autodiff() {
        t.require_grad()
    } else {
        t
    }
}

/// A linear layer `y = x W (+ b)` with `W` stored `[in, out]`.
#[derive(Module, Debug)]
pub struct Dense {
    /// `[in, out]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`, when the model has biases.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Dense {
    fn new(
        d_in: usize,
        d_out: usize,
        std: f64,
        cfg: &GptConfig,
        name: &str,
        device: &Device,
    ) -> Self {
        Dense {
            weight: normal_param(
                [d_in, d_out],
                std,
                cfg.init_seed,
                &format!("{name}.weight"),
                device,
            ),
            bias: cfg.bias.then(|| const_param(d_out, 0.0, device)),
        }
    }

    /// Applies the layer to `[batch, seq, in]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let w = self.weight.val();
        let out = w.dims()[1];
        let y = crate::fast::matmul(x.reshape([b * t, d]), w);
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze::<2>(),
            None => y,
        };
        y.reshape([b, t, out])
    }

    fn params<'a>(&'a mut self, name: &str, out: &mut Vec<(String, ParamRef<'a>)>) {
        out.push((format!("{name}.weight"), ParamRef::Matrix(&mut self.weight)));
        if let Some(b) = &mut self.bias {
            out.push((format!("{name}.bias"), ParamRef::Vector(b)));
        }
    }
}

/// Epsilon of every layer norm (GPT-2's).
const EPS: f32 = 1e-5;

/// Layer normalisation over the last dimension (weight, optional bias; epsilon 1e-5).
#[derive(Module, Debug)]
pub struct Norm {
    /// Scale, initialised to one.
    pub weight: Param<Tensor<1>>,
    /// Shift, when the model has biases.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Norm {
    fn new(d: usize, cfg: &GptConfig, device: &Device) -> Self {
        Norm {
            weight: const_param(d, 1.0, device),
            bias: cfg.bias.then(|| const_param(d, 0.0, device)),
        }
    }

    /// Normalises `[batch, seq, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if crate::fast::fused_supported(&x.device()) {
            let y = crate::fast::layer_norm(x, self.weight.val(), EPS);
            return match &self.bias {
                Some(b) => y + b.val().unsqueeze::<3>(),
                None => y,
            };
        }
        layer_norm(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()), EPS as f64)
    }

    fn params<'a>(&'a mut self, name: &str, out: &mut Vec<(String, ParamRef<'a>)>) {
        out.push((format!("{name}.weight"), ParamRef::Vector(&mut self.weight)));
        if let Some(b) = &mut self.bias {
            out.push((format!("{name}.bias"), ParamRef::Vector(b)));
        }
    }
}

/// Causal multi-head self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query, key and value projections in one `[d, 3d]` matrix.
    pub c_attn: Dense,
    /// Output projection.
    pub c_proj: Dense,
    /// Number of heads.
    pub n_head: usize,
}

impl Attention {
    /// `[batch, seq, d]` to `[batch, seq, d]`, each position attending to itself and earlier ones.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let h = self.n_head;
        let hd = d / h;
        let qkv = self.c_attn.forward(x);
        if crate::fast::fused_supported(&qkv.device()) {
            return self.c_proj.forward(crate::fast::causal_attention(qkv, h));
        }
        let heads =
            |i: usize| qkv.clone().narrow(2, i * d, d).reshape([b, t, h, hd]).swap_dims(1, 2);
        let (q, k, v) = (heads(0), heads(1), heads(2));
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
        let y = attention(q, k, v, None, None, options);
        let y = y.swap_dims(1, 2).reshape([b, t, d]);
        self.c_proj.forward(y)
    }
}

/// The two-layer perceptron of a block (GELU, 4x width).
#[derive(Module, Debug)]
pub struct Mlp {
    /// Up-projection `[d, 4d]`.
    pub c_fc: Dense,
    /// Down-projection `[4d, d]`.
    pub c_proj: Dense,
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub ln_1: Norm,
    /// Attention.
    pub attn: Attention,
    /// Norm before the MLP.
    pub ln_2: Norm,
    /// MLP.
    pub mlp: Mlp,
}

impl Block {
    fn new(cfg: &GptConfig, layer: usize, device: &Device) -> Self {
        let d = cfg.d_model;
        let proj_std = INIT_STD / ((2 * cfg.n_layer) as f64).sqrt();
        let p = format!("h.{layer}");
        Block {
            ln_1: Norm::new(d, cfg, device),
            attn: Attention {
                c_attn: Dense::new(d, 3 * d, INIT_STD, cfg, &format!("{p}.attn.c_attn"), device),
                c_proj: Dense::new(d, d, proj_std, cfg, &format!("{p}.attn.c_proj"), device),
                n_head: cfg.n_head,
            },
            ln_2: Norm::new(d, cfg, device),
            mlp: Mlp {
                c_fc: Dense::new(d, 4 * d, INIT_STD, cfg, &format!("{p}.mlp.c_fc"), device),
                c_proj: Dense::new(4 * d, d, proj_std, cfg, &format!("{p}.mlp.c_proj"), device),
            },
        }
    }

    /// `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x));
        let h = crate::fast::gelu(self.mlp.c_fc.forward(self.ln_2.forward(x.clone())));
        x + self.mlp.c_proj.forward(h)
    }

    fn params<'a>(&'a mut self, p: &str, out: &mut Vec<(String, ParamRef<'a>)>) {
        self.ln_1.params(&format!("{p}.ln_1"), out);
        self.attn.c_attn.params(&format!("{p}.attn.c_attn"), out);
        self.attn.c_proj.params(&format!("{p}.attn.c_proj"), out);
        self.ln_2.params(&format!("{p}.ln_2"), out);
        self.mlp.c_fc.params(&format!("{p}.mlp.c_fc"), out);
        self.mlp.c_proj.params(&format!("{p}.mlp.c_proj"), out);
    }
}

/// What enters a sliver: token ids (first sliver) or the previous sliver's activations.
pub enum SliverInput {
    /// `[batch, seq]` token ids.
    Tokens(Tensor<2, Int>),
    /// `[batch, seq, width]` activations (width is `d_model`, or the bottleneck width).
    Hidden(Tensor<3>),
}

/// Optional learned bottleneck across a sliver boundary: the sending sliver projects its output
/// from `d_model` down to `dim`, the receiving sliver projects it back up.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// `[d_model, dim]` on the sending side, `[dim, d_model]` on the receiving side.
    pub proj: Dense,
}

/// One pipeline stage: consecutive blocks plus the embeddings (first) or head (last).
#[derive(Module, Debug)]
pub struct Sliver {
    /// Token embedding `[vocab, d]` (first sliver).
    pub wte: Option<Param<Tensor<2>>>,
    /// Position embedding `[block_size, d]` (first sliver).
    pub wpe: Option<Param<Tensor<2>>>,
    /// Up-projection of a bottlenecked input (not on the first sliver).
    pub bottleneck_in: Option<Bottleneck>,
    /// The blocks.
    pub h: Vec<Block>,
    /// Down-projection of the output to the bottleneck (not on the last sliver).
    pub bottleneck_out: Option<Bottleneck>,
    /// Final norm (last sliver).
    pub ln_f: Option<Norm>,
    /// LM head `[vocab, d]` (last sliver): logits are `x lm_headᵀ`. With tied embeddings it is a
    /// copy of `wte` that receives the same summed gradient and so stays equal to it.
    pub lm_head: Option<Param<Tensor<2>>>,
    /// Index of the first block (global numbering).
    pub first_layer: usize,
}

impl Sliver {
    /// Builds the sliver `spec` of the model `cfg`. Weights come from a deterministic generator
    /// keyed by `cfg.init_seed` and the parameter's name, so a sliver built alone equals the same
    /// part of the whole model. `bottleneck` is the boundary width when a learned bottleneck is used.
    pub fn new(
        cfg: &GptConfig,
        spec: &SliverSpec,
        bottleneck: Option<usize>,
        device: &Device,
    ) -> Result<Self, EngineError> {
        cfg.validate()?;
        if spec.count == 0 || spec.index >= spec.count || spec.layers.end > cfg.n_layer {
            return Err(EngineError::Config(format!(
                "sliver {spec:?} does not fit {} blocks",
                cfg.n_layer
            )));
        }
        if let Some(k) = bottleneck {
            if k == 0 || k > cfg.d_model {
                return Err(EngineError::Config(format!(
                    "bottleneck width {k} must be in 1..={}",
                    cfg.d_model
                )));
            }
        }
        let d = cfg.d_model;
        let seed = cfg.init_seed;
        let first = spec.is_first();
        let last = spec.is_last();
        let bn = |d_in, d_out, name: String| Bottleneck {
            proj: Dense::new(d_in, d_out, (1.0 / d_in as f64).sqrt(), cfg, &name, device),
        };
        Ok(Sliver {
            wte: first
                .then(|| normal_param([cfg.vocab_size, d], INIT_STD, seed, "wte.weight", device)),
            wpe: first
                .then(|| normal_param([cfg.block_size, d], INIT_STD, seed, "wpe.weight", device)),
            bottleneck_in: match (first, bottleneck) {
                (false, Some(k)) => Some(bn(k, d, format!("bottleneck.{}.up", spec.index))),
                _ => None,
            },
            h: spec.layers.clone().map(|l| Block::new(cfg, l, device)).collect(),
            bottleneck_out: match (last, bottleneck) {
                (false, Some(k)) => Some(bn(d, k, format!("bottleneck.{}.down", spec.index + 1))),
                _ => None,
            },
            ln_f: last.then(|| Norm::new(d, cfg, device)),
            lm_head: last.then(|| {
                // Tied: the same generator stream as `wte`, hence the same initial values.
                let name = if cfg.tie_embeddings { "wte.weight" } else { "lm_head.weight" };
                normal_param([cfg.vocab_size, d], INIT_STD, seed, name, device)
            }),
            first_layer: spec.layers.start,
        })
    }

    /// Runs the sliver. The first sliver takes tokens, the others activations; the last returns
    /// logits `[batch, seq, vocab]`, the others their output activations.
    pub fn forward(&self, input: SliverInput) -> Result<Tensor<3>, EngineError> {
        let mut x = match (input, &self.wte, &self.wpe) {
            (SliverInput::Tokens(tokens), Some(wte), Some(wpe)) => {
                let [_, t] = tokens.dims();
                let max = wpe.val().dims()[0];
                if t == 0 || t > max {
                    return Err(EngineError::Shape(format!(
                        "sequence length {t} is outside 1..={max}"
                    )));
                }
                let tok = embedding(wte.val(), tokens);
                let pos = wpe.val().narrow(0, 0, t).unsqueeze::<3>();
                tok + pos
            }
            (SliverInput::Hidden(x), None, _) => {
                let [b, t, w] = x.dims();
                let want = self.input_width().unwrap_or(0);
                if b == 0 || t == 0 || w != want {
                    return Err(EngineError::Shape(format!(
                        "activations {b}x{t}x{w}, expected width {want} and a non-empty batch"
                    )));
                }
                let x = match &self.bottleneck_in {
                    Some(b) => b.proj.forward(x),
                    None => x,
                };
                x
            }
            (SliverInput::Tokens(_), None, _) => {
                return Err(EngineError::Shape("only the first sliver takes token ids".into()))
            }
            (SliverInput::Hidden(_), Some(_), _) => {
                return Err(EngineError::Shape(
                    "the first sliver takes token ids, not activations".into(),
                ))
            }
            (_, Some(_), None) => {
                return Err(EngineError::Shape("first sliver without wpe".into()))
            }
        };
        for block in &self.h {
            x = block.forward(x);
        }
        if let (Some(ln_f), Some(head)) = (&self.ln_f, &self.lm_head) {
            let x = ln_f.forward(x);
            let [b, t, d] = x.dims();
            let w = head.val();
            let v = w.dims()[0];
            let logits = crate::fast::matmul(x.reshape([b * t, d]), w.transpose());
            return Ok(logits.reshape([b, t, v]));
        }
        Ok(match &self.bottleneck_out {
            Some(b) => b.proj.forward(x),
            None => x,
        })
    }

    /// Width of the activations this sliver expects (`None` for the first sliver).
    pub fn input_width(&self) -> Option<usize> {
        if self.wte.is_some() {
            return None;
        }
        Some(match &self.bottleneck_in {
            Some(b) => b.proj.weight.val().dims()[0],
            None => self.h.first().map(|b| b.ln_1.weight.val().dims()[0]).unwrap_or(0),
        })
    }

    /// Every parameter with its GPT-2 name, in a fixed order (embeddings, blocks, head).
    pub fn params_mut(&mut self) -> Vec<(String, ParamRef<'_>)> {
        let mut out = Vec::new();
        if let Some(w) = &mut self.wte {
            out.push(("wte.weight".to_string(), ParamRef::Matrix(w)));
        }
        if let Some(w) = &mut self.wpe {
            out.push(("wpe.weight".to_string(), ParamRef::Matrix(w)));
        }
        let first = self.first_layer;
        let next = first + self.h.len();
        if let Some(b) = &mut self.bottleneck_in {
            b.proj.params(&format!("bottleneck.{first}.up"), &mut out);
        }
        for (i, block) in self.h.iter_mut().enumerate() {
            block.params(&format!("h.{}", first + i), &mut out);
        }
        if let Some(b) = &mut self.bottleneck_out {
            b.proj.params(&format!("bottleneck.{next}.down"), &mut out);
        }
        if let Some(n) = &mut self.ln_f {
            n.params("ln_f", &mut out);
        }
        if let Some(w) = &mut self.lm_head {
            out.push(("lm_head.weight".to_string(), ParamRef::Matrix(w)));
        }
        out
    }

    /// Number of scalar parameters held by this sliver (both copies of a tied embedding count).
    pub fn num_params(&mut self) -> usize {
        self.params_mut().iter().map(|(_, p)| p.shape().iter().product::<usize>()).sum()
    }
}

/// Mean cross-entropy of `logits` `[batch, seq, vocab]` against `targets` `[batch, seq]`.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    if b * t > 0 && crate::fast::fused_supported(&logits.device()) {
        let ids =
            targets.clone().into_data().convert::<i64>().try_to_vec::<i64>().unwrap_or_default();
        let classes: Vec<u32> =
            ids.iter().filter(|&&i| i >= 0 && (i as usize) < v).map(|&i| i as u32).collect();
        // Ids outside the vocabulary (never produced by the engine's own data path) take
        // Burn's operations below, whatever those make of them.
        if classes.len() == b * t {
            return crate::fast::cross_entropy(logits.reshape([b * t, v]), classes.into());
        }
    }
    let logp = log_softmax(logits.reshape([b * t, v]), 1);
    let picked = logp.gather(1, targets.reshape([b * t, 1]));
    picked.mean().neg()
}
