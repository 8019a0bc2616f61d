//! Pipeline training: one [`SliverTrainer`] per sliver, and an in-process [`Pipeline`] that drives
//! several of them through the wire codec, exactly as miners on different machines would.
//!
//! Backward across a boundary follows the recipe that works in Burn 0.22: the received
//! activation becomes a fresh leaf (`require_grad`), the forward runs, and when dL/d(output)
//! arrives the trainer backpropagates `(y * g).sum()` with `g` a constant and reads the input's
//! gradient. A graph can be backpropagated once, so each micro-batch's `(x, y)` is stashed until
//! its gradient arrives.
//!
//! Tied embeddings across slivers follow Megatron: the first sliver holds `wte`, the last holds
//! a copy as `lm_head`; before each optimiser step the two accumulated gradients are summed and
//! both copies get the sum, so they take identical AdamW steps and stay bitwise equal. A whole
//! model (one sliver) does the same with both copies locally, which is why a pipelined run can
//! match a monolithic one bit for bit.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::codec::{decode_tensor, encode_tensor, WireCodec};
use crate::config::{GptConfig, SliverSpec};
use crate::model::{cross_entropy, Sliver, SliverInput};
use crate::optim::{clip_factor, AdamW, AdamWConfig};
use crate::EngineError;

/// Most micro-batches a trainer keeps waiting for their gradient before refusing new forwards.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

struct Stash {
    input: Option<Tensor<3>>,
    output: Tensor<3>,
}

/// Trains one sliver: forward and backward per micro-batch, gradient accumulation, AdamW.
pub struct SliverTrainer {
    /// Which sliver.
    pub spec: SliverSpec,
    /// The model part.
    pub sliver: Sliver,
    /// Its optimiser.
    pub optim: AdamW,
    /// Whether `wte` and `lm_head` are tied.
    pub tied: bool,
    /// Forwards waiting for a gradient at most.
    pub max_in_flight: usize,
    grads: BTreeMap<String, Tensor<1>>,
    stash: HashMap<u64, Stash>,
    device: Device,
    model: GptConfig,
}

impl SliverTrainer {
    /// A trainer for sliver `spec` of `cfg`, on `device` (autodiff is enabled on it).
    pub fn new(
        cfg: &GptConfig,
        spec: SliverSpec,
        bottleneck: Option<usize>,
        adamw: AdamWConfig,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let device = device.clone().autodiff();
        let sliver = Sliver::new(cfg, &spec, bottleneck, &device)?;
        Ok(SliverTrainer {
            spec,
            sliver,
            optim: AdamW::new(adamw),
            tied: cfg.tie_embeddings,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            grads: BTreeMap::new(),
            stash: HashMap::new(),
            device,
            model: cfg.clone(),
        })
    }

    /// The model configuration.
    pub fn model_config(&self) -> &GptConfig {
        &self.model
    }

    /// The (autodiff) device the trainer runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Micro-batches forwarded and not yet backpropagated.
    pub fn in_flight(&self) -> usize {
        self.stash.len()
    }

    /// Token ids `[batch, seq]` as a tensor, checking range and shape.
    pub fn tokens(
        &self,
        ids: &[i64],
        batch: usize,
        seq: usize,
    ) -> Result<Tensor<2, Int>, EngineError> {
        tokens_tensor(ids, batch, seq, self.model.vocab_size, &self.device)
    }

    /// Forward of micro-batch `mb` through a sliver that is not the last; returns the output
    /// activations (outside autodiff) to send on.
    pub fn forward(&mut self, mb: u64, input: SliverInput) -> Result<Tensor<3>, EngineError> {
        if self.spec.is_last() {
            return Err(EngineError::Schedule("the last sliver uses forward_backward_last".into()));
        }
        self.check_new(mb)?;
        let (input_leaf, input) = self.leaf(input);
        let output = self.sliver.forward(input)?;
        let send = output.clone().inner();
        self.stash.insert(mb, Stash { input: input_leaf, output });
        Ok(send)
    }

    /// Forward and backward of micro-batch `mb` on the last sliver: returns the unscaled loss and
    /// dL/d(input) (none when this is also the first sliver). The gradient is of
    /// `loss * loss_scale` (use `1 / micro-batches` to average over a step).
    pub fn forward_backward_last(
        &mut self,
        input: SliverInput,
        targets: Tensor<2, Int>,
        loss_scale: f32,
    ) -> Result<(f32, Option<Tensor<3>>), EngineError> {
        if !self.spec.is_last() {
            return Err(EngineError::Schedule("only the last sliver computes the loss".into()));
        }
        let (input_leaf, input) = self.leaf(input);
        let logits = self.sliver.forward(input)?;
        let [b, t, _] = logits.dims();
        if targets.dims() != [b, t] {
            return Err(EngineError::Shape(format!(
                "targets {:?} for logits {b}x{t}",
                targets.dims()
            )));
        }
        let loss = cross_entropy(logits, targets);
        let value: f32 = loss.clone().inner().into_scalar();
        if !value.is_finite() {
            return Err(EngineError::Diverged(value));
        }
        let grads = loss.mul_scalar(loss_scale).backward();
        let grad_in = input_leaf.and_then(|x| x.grad(&grads));
        self.accumulate(&grads);
        Ok((value, grad_in))
    }

    /// Backward of micro-batch `mb` given dL/d(output); returns dL/d(input) for the previous
    /// sliver (none on the first sliver).
    pub fn backward(
        &mut self,
        mb: u64,
        grad_output: Tensor<3>,
    ) -> Result<Option<Tensor<3>>, EngineError> {
        let Some(stash) = self.stash.remove(&mb) else {
            return Err(EngineError::Schedule(format!("no forward pending for micro-batch {mb}")));
        };
        if grad_output.dims() != stash.output.dims() {
            let want = stash.output.dims();
            self.stash.insert(mb, stash);
            return Err(EngineError::Shape(format!(
                "gradient {:?} for an output of {want:?}",
                grad_output.dims()
            )));
        }
        let g = grad_output.inner();
        let grads = (stash.output * g).sum().backward();
        let grad_in = stash.input.and_then(|x| x.grad(&grads));
        self.accumulate(&grads);
        Ok(grad_in)
    }

    /// Drops a pending micro-batch (its gradient will never come: neighbour gone).
    pub fn abandon(&mut self, mb: u64) -> bool {
        self.stash.remove(&mb).is_some()
    }

    fn check_new(&self, mb: u64) -> Result<(), EngineError> {
        if self.stash.contains_key(&mb) {
            return Err(EngineError::Schedule(format!("micro-batch {mb} is already in flight")));
        }
        if self.stash.len() >= self.max_in_flight {
            return Err(EngineError::Schedule(format!(
                "{} micro-batches already wait for gradients (limit {})",
                self.stash.len(),
                self.max_in_flight
            )));
        }
        Ok(())
    }

    fn leaf(&self, input: SliverInput) -> (Option<Tensor<3>>, SliverInput) {
        match input {
            SliverInput::Hidden(x) => {
                let x = Tensor::<3>::from_inner(x.inner()).require_grad();
                (Some(x.clone()), SliverInput::Hidden(x))
            }
            tokens => (None, tokens),
        }
    }

    fn accumulate(&mut self, grads: &burn::tensor::Gradients) {
        let mut new = Vec::new();
        for (name, p) in self.sliver.params_mut() {
            if let Some(g) = p.grad(grads) {
                new.push((name, g));
            }
        }
        for (name, g) in new {
            let sum = match self.grads.remove(&name) {
                Some(acc) => acc + g,
                None => g,
            };
            self.grads.insert(name, sum);
        }
    }

    /// The accumulated gradient of this sliver's copy of the tied embedding (`wte` on the first
    /// sliver, `lm_head` on the last), to be summed with the other copy's.
    pub fn tied_grads(&self) -> Vec<Tensor<1>> {
        if !self.tied {
            return Vec::new();
        }
        ["wte.weight", "lm_head.weight"]
            .iter()
            .filter_map(|n| self.grads.get(*n).cloned())
            .collect()
    }

    /// Sets both local copies of the tied embedding's gradient to `sum`.
    pub fn set_tied_grad(&mut self, sum: Tensor<1>) {
        for name in ["wte.weight", "lm_head.weight"] {
            if self.grads.contains_key(name) {
                self.grads.insert(name.to_string(), sum.clone());
            }
        }
    }

    /// Squared norm of each accumulated gradient, in parameter order, counting a tied embedding
    /// once (at `wte`); the whole model's norm is the sum over slivers in sliver order.
    pub fn grad_squares(&mut self) -> Vec<f64> {
        let names: Vec<String> = self.sliver.params_mut().into_iter().map(|(n, _)| n).collect();
        names
            .iter()
            .filter(|n| !(self.tied && n.as_str() == "lm_head.weight"))
            .filter_map(|n| self.grads.get(n))
            .map(|g| f64::from(g.clone().square().sum().into_scalar::<f32>()))
            .collect()
    }

    /// Scales the gradients by `factor` (clipping), takes an AdamW step at `lr` and clears them.
    pub fn step(&mut self, lr: f64, factor: f64) {
        let grads = std::mem::take(&mut self.grads);
        self.optim.step(&mut self.sliver, &grads, lr, factor);
    }

    /// Takes the accumulated gradients out, leaving none (a validator replays a micro-batch that
    /// ran with older weights on a second trainer and moves its gradient over with
    /// [`SliverTrainer::add_grads`]).
    pub fn take_grads(&mut self) -> BTreeMap<String, Tensor<1>> {
        std::mem::take(&mut self.grads)
    }

    /// Adds `grads` to the accumulated gradients exactly as a backward pass adds its own.
    pub fn add_grads(&mut self, grads: BTreeMap<String, Tensor<1>>) {
        for (name, g) in grads {
            let sum = match self.grads.remove(&name) {
                Some(acc) => acc + g,
                None => g,
            };
            self.grads.insert(name, sum);
        }
    }

    /// Forgets the accumulated gradients, keeping the micro-batches that wait for theirs (a
    /// step that is skipped).
    pub fn discard_grads(&mut self) {
        self.grads.clear();
    }

    /// Forgets accumulated gradients and pending micro-batches.
    pub fn zero_grad(&mut self) {
        self.grads.clear();
        self.stash.clear();
    }
}

/// Token ids as a `[batch, seq]` tensor after checking their count and range.
pub fn tokens_tensor(
    ids: &[i64],
    batch: usize,
    seq: usize,
    vocab: usize,
    device: &Device,
) -> Result<Tensor<2, Int>, EngineError> {
    if ids.len() != batch * seq {
        return Err(EngineError::Shape(format!(
            "{} token ids for a {batch}x{seq} batch",
            ids.len()
        )));
    }
    if let Some(bad) = ids.iter().find(|&&t| t < 0 || t as usize >= vocab) {
        return Err(EngineError::Shape(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [batch, seq]), device))
}

/// Order in which an in-process pipeline runs micro-batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// All forwards, then all backwards: every micro-batch is stashed at once.
    GPipe,
    /// One forward then one backward per micro-batch: one stashed at a time in-process.
    OneFOneB,
}

/// What crosses each sliver boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Boundary {
    /// Wire encoding of activations and gradients.
    pub wire: WireCodec,
    /// Width of a learned bottleneck, if any.
    pub bottleneck: Option<usize>,
}

impl Default for Boundary {
    fn default() -> Self {
        Boundary { wire: WireCodec::F32, bottleneck: None }
    }
}

/// One micro-batch: inputs and next-token targets, `batch * seq` ids each, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MicroBatch {
    /// Rows.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Input ids.
    pub inputs: Vec<i64>,
    /// Target ids (inputs shifted by one).
    pub targets: Vec<i64>,
}

/// What one optimiser step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// Mean loss over the micro-batches.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Bytes that crossed sliver boundaries (both directions, all boundaries).
    pub boundary_bytes: u64,
    /// Tokens trained on.
    pub tokens: u64,
}

/// S slivers in one process, every boundary tensor encoded and decoded with the wire codec.
pub struct Pipeline {
    /// One trainer per sliver, in order.
    pub stages: Vec<SliverTrainer>,
    /// Boundary settings.
    pub boundary: Boundary,
    /// Micro-batch order.
    pub schedule: Schedule,
    next_mb: u64,
}

impl Pipeline {
    /// A model of `cfg` split into `slivers` stages.
    pub fn new(
        cfg: &GptConfig,
        slivers: usize,
        boundary: Boundary,
        adamw: AdamWConfig,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let specs = SliverSpec::split(cfg.n_layer, slivers)?;
        let stages = specs
            .into_iter()
            .map(|s| SliverTrainer::new(cfg, s, boundary.bottleneck, adamw.clone(), device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pipeline { stages, boundary, schedule: Schedule::OneFOneB, next_mb: 0 })
    }

    /// One optimiser step over `micro_batches` at learning rate `lr`, clipping the global
    /// gradient norm to `clip` (0 disables).
    pub fn train_step(
        &mut self,
        micro_batches: &[MicroBatch],
        lr: f64,
        clip: f64,
    ) -> Result<StepStats, EngineError> {
        if micro_batches.is_empty() {
            return Err(EngineError::Schedule("a step needs at least one micro-batch".into()));
        }
        let scale = 1.0 / micro_batches.len() as f32;
        let mut bytes = 0u64;
        let mut loss_sum = 0f32;
        let mut tokens = 0u64;
        let ids: Vec<u64> = micro_batches.iter().map(|_| self.next_id()).collect();
        match self.schedule {
            Schedule::OneFOneB => {
                for (mb, id) in micro_batches.iter().zip(&ids) {
                    let (x, b) = self.forward_to_last(*id, mb)?;
                    bytes += b;
                    let (loss, b) = self.backward_from_last(*id, mb, x, scale)?;
                    bytes += b;
                    loss_sum += loss;
                    tokens += (mb.batch * mb.seq) as u64;
                }
            }
            Schedule::GPipe => {
                let mut hidden = Vec::new();
                for (mb, id) in micro_batches.iter().zip(&ids) {
                    let (x, b) = self.forward_to_last(*id, mb)?;
                    bytes += b;
                    hidden.push(x);
                }
                for ((mb, id), x) in micro_batches.iter().zip(&ids).zip(hidden) {
                    let (loss, b) = self.backward_from_last(*id, mb, x, scale)?;
                    bytes += b;
                    loss_sum += loss;
                    tokens += (mb.batch * mb.seq) as u64;
                }
            }
        }
        let grad_norm = self.apply_step(lr, clip);
        Ok(StepStats { loss: loss_sum * scale, grad_norm, boundary_bytes: bytes, tokens })
    }

    fn next_id(&mut self) -> u64 {
        self.next_mb += 1;
        self.next_mb
    }

    /// Forward through every stage but the last; returns the last stage's input.
    fn forward_to_last(
        &mut self,
        id: u64,
        mb: &MicroBatch,
    ) -> Result<(Option<Tensor<3>>, u64), EngineError> {
        let n = self.stages.len();
        if n == 1 {
            return Ok((None, 0));
        }
        let wire = self.boundary.wire;
        let tokens = self.stages[0].tokens(&mb.inputs, mb.batch, mb.seq)?;
        let mut x = self.stages[0].forward(id, SliverInput::Tokens(tokens))?;
        let mut bytes = 0u64;
        for k in 1..n {
            let frame = encode_tensor(wire, &x);
            bytes += frame.len() as u64;
            let shape = x.dims();
            let recv = decode_tensor(&frame, shape, self.stages[k].device())?;
            if k == n - 1 {
                return Ok((Some(recv), bytes));
            }
            x = self.stages[k].forward(id, SliverInput::Hidden(recv))?;
        }
        unreachable!("the loop returns at the last stage")
    }

    fn backward_from_last(
        &mut self,
        id: u64,
        mb: &MicroBatch,
        x: Option<Tensor<3>>,
        scale: f32,
    ) -> Result<(f32, u64), EngineError> {
        let n = self.stages.len();
        let wire = self.boundary.wire;
        let last = &mut self.stages[n - 1];
        let input = match x {
            Some(x) => SliverInput::Hidden(x),
            None => SliverInput::Tokens(last.tokens(&mb.inputs, mb.batch, mb.seq)?),
        };
        let targets = last.tokens(&mb.targets, mb.batch, mb.seq)?;
        let (loss, mut g) = last.forward_backward_last(input, targets, scale)?;
        let mut bytes = 0u64;
        for k in (0..n - 1).rev() {
            let Some(grad) = g else {
                return Err(EngineError::Schedule(format!(
                    "sliver {} returned no input gradient",
                    k + 1
                )));
            };
            let frame = encode_tensor(wire, &grad);
            bytes += frame.len() as u64;
            let recv = decode_tensor(&frame, grad.dims(), self.stages[k].device())?;
            g = self.stages[k].backward(id, recv)?;
        }
        Ok((loss, bytes))
    }

    /// Sums the tied-embedding gradient across the first and last stage, clips by the global
    /// norm and steps every stage. Returns the global norm before clipping.
    fn apply_step(&mut self, lr: f64, clip: f64) -> f64 {
        let n = self.stages.len();
        if self.stages[0].tied {
            let mut parts = self.stages[0].tied_grads();
            if n > 1 {
                parts.extend(self.stages[n - 1].tied_grads());
            }
            if let Some(sum) = parts.into_iter().reduce(|a, b| a + b) {
                self.stages[0].set_tied_grad(sum.clone());
                self.stages[n - 1].set_tied_grad(sum);
            }
        }
        let squares: Vec<f64> = self.stages.iter_mut().flat_map(|s| s.grad_squares()).collect();
        let (norm, factor) = clip_factor(&squares, clip);
        for s in &mut self.stages {
            s.step(lr, factor);
        }
        norm
    }

    /// Mean loss over `batches` without gradients (the evaluation path, codec included).
    pub fn eval_loss(&self, batches: &[MicroBatch]) -> Result<f32, EngineError> {
        let models: Vec<Sliver> =
            self.stages.iter().map(|s| burn::module::Module::valid(&s.sliver)).collect();
        let device = self.stages[0].device().clone().without_autodiff();
        let vocab = self.stages[0].model.vocab_size;
        let mut sum = 0f64;
        for mb in batches {
            let tokens = tokens_tensor(&mb.inputs, mb.batch, mb.seq, vocab, &device)?;
            let mut x = models[0].forward(SliverInput::Tokens(tokens))?;
            for m in &models[1..] {
                let frame = encode_tensor(self.boundary.wire, &x);
                let recv = decode_tensor(&frame, x.dims(), &device)?;
                x = m.forward(SliverInput::Hidden(recv))?;
            }
            let targets = tokens_tensor(&mb.targets, mb.batch, mb.seq, vocab, &device)?;
            sum += f64::from(cross_entropy(x, targets).into_scalar::<f32>());
        }
        Ok((sum / batches.len().max(1) as f64) as f32)
    }
}
