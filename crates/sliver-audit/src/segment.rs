//! Replaying a miner's optimiser steps from a snapshot: the check that its weights follow from
//! its work.
//!
//! A miner's audit log keeps, for every optimiser step, the micro-batches whose gradients it
//! summed (in order), the learning rate and clip factor, and the hashes of the weights before
//! and after; every `K` steps (and at the first step after a start) it also keeps the weights
//! and the optimiser state. A *segment* is the steps from one snapshot to the next. Replaying
//! one starts from its snapshot and redoes each step as the miner did: every summed
//! micro-batch's forward and backward (each output compared with the hash its neighbour
//! signed for), the norm and clip factor, the AdamW update. After each step the weights'
//! hash must equal the one recorded, so the weights the miner trained with, and the ones its
//! next step started from, are proved by the work itself. Skipping steps, training with
//! someone else's weights, naming degenerate weights or summing other gradients all break
//! the chain.
//!
//! Cost: one segment is `K x micro-batches per step` replays, each about one forward and
//! backward; the snapshot costs three times the sliver's weights on the miner's disk (weights
//! and two moments) once per `K` steps instead of the weights at every step.

use std::collections::HashMap;

use sliver_engine::codec::{decode_tensor, encode_tensor};
use sliver_engine::data::{BatchKey, Split};
use sliver_engine::merge::{export_flat, import_flat};
use sliver_engine::optim::clip_scale;
use sliver_engine::tensor_set::{decode_flat, encode_flat};
use sliver_engine::{SliverInput, SliverTrainer};
use sliver_p2p::{AuditAnswer, AuditKey, Direction, FrameHeader, StepEntry};
use sliver_wire::WireCodec;

use crate::replay::Replayer;

/// One micro-batch's account, its received payloads fetched by hash.
#[derive(Clone, Debug)]
pub struct BatchAccount {
    /// The answer (the weights it ran with, its frames).
    pub answer: AuditAnswer,
    /// The headers its index listed as sent for it (the answer must name the same).
    pub listed: Vec<Vec<u8>>,
    /// Payloads of the frames it received, by hash.
    pub payloads: HashMap<[u8; 32], Vec<u8>>,
}

/// What a replay of one segment needs.
#[derive(Clone, Debug)]
pub struct SegmentEvidence {
    /// The steps, from the snapshot on (the first names the optimiser state).
    pub steps: Vec<StepEntry>,
    /// The weights the first step started from (`SLVF1`, f32).
    pub weights: Vec<u8>,
    /// The optimiser state it started from (`SLVO1`).
    pub optim: Vec<u8>,
    /// Older weights some summed micro-batch ran with (a middle sliver), by hash.
    pub older: HashMap<[u8; 32], Vec<u8>>,
    /// The account of every summed micro-batch.
    pub batches: HashMap<AuditKey, BatchAccount>,
}

/// A segment replay's verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum SegmentOutcome {
    /// Every step and micro-batch matched.
    Pass {
        /// Micro-batches replayed.
        checked: u64,
        /// Their losses (last sliver).
        losses: Vec<f32>,
        /// The headers of every frame the miner says it received and used, by micro-batch,
        /// for the caller to find among its neighbours' signed frames.
        received: Vec<(AuditKey, Direction, Vec<u8>)>,
        /// BLAKE3 of the optimiser state after the last step (`SLVO1`).
        end_optim: [u8; 32],
    },
    /// The account does not hold up, and why.
    Fail(String),
}

/// The frames of one micro-batch's account, by role.
#[derive(Default)]
struct Frames {
    sent_activation: Option<FrameHeader>,
    sent_gradient: Option<FrameHeader>,
    got_activation: Option<FrameHeader>,
    got_gradient: Option<FrameHeader>,
}

/// Hash of weights as the miner's log names them.
pub fn weights_hash(trainer: &mut SliverTrainer) -> [u8; 32] {
    let flat = export_flat(&mut trainer.sliver);
    *blake3::hash(&encode_flat(&flat, WireCodec::F32)).as_bytes()
}

impl Replayer {
    /// Replays segment `ev` of miner's sliver `sliver` in `epoch`. CPU-bound: call it off the
    /// async threads.
    pub fn check_segment(
        &mut self,
        epoch: u64,
        sliver: u16,
        ev: &SegmentEvidence,
    ) -> SegmentOutcome {
        let outcome = self.try_segment(epoch, sliver, ev);
        // The loaded weights changed: the next check loads its own.
        self.unload();
        match outcome {
            Ok(o) => o,
            Err(why) => SegmentOutcome::Fail(why),
        }
    }

    fn try_segment(
        &mut self,
        epoch: u64,
        sliver: u16,
        ev: &SegmentEvidence,
    ) -> Result<SegmentOutcome, String> {
        let first = ev.steps.first().ok_or("an empty segment")?;
        let optim_hash = first.optim.ok_or("a segment that does not start at a snapshot")?;
        if *blake3::hash(&ev.weights).as_bytes() != first.before {
            return Err("the snapshot's weights do not match their hash".into());
        }
        if *blake3::hash(&ev.optim).as_bytes() != optim_hash {
            return Err("the snapshot's optimiser state does not match its hash".into());
        }
        let shape = self.shape().clone();
        let data = self.data();
        let last = shape.slivers().saturating_sub(1);
        let (is_first, is_last) = (sliver == 0, sliver == last);
        let loaded = self.loaded(sliver)?;
        let like = loaded.like.clone();
        let t = &mut loaded.trainer;
        t.zero_grad();
        let flat = decode_flat(&ev.weights, &like).map_err(|e| format!("snapshot weights: {e}"))?;
        import_flat(&mut t.sliver, &flat).map_err(|e| format!("snapshot weights: {e}"))?;
        t.optim = sliver_engine::optim::AdamW::new(shape.adamw.clone());
        t.optim
            .load_state(&mut t.sliver, &ev.optim)
            .map_err(|e| format!("snapshot optimiser state: {e}"))?;
        let mut current = first.before;
        let mut schedule_step = first.schedule_step;
        let (mut checked, mut losses, mut received) = (0u64, Vec::new(), Vec::new());
        let mut seen = std::collections::HashSet::new();
        for (i, step) in ev.steps.iter().enumerate() {
            if step.before != current {
                return Err(format!("step {i} does not start where the one before ended"));
            }
            if i > 0 && step.schedule_step != schedule_step {
                return Err(format!("step {i} takes its learning rate at another schedule step"));
            }
            // A miner's stage and its optimiser count the same steps from the same start.
            if !step.skipped && step.schedule_step != t.optim.steps {
                return Err(format!(
                    "step {i} takes its learning rate at schedule step {}, its optimiser has \
                     taken {} steps",
                    step.schedule_step, t.optim.steps
                ));
            }
            for key in &step.batches {
                if !seen.insert(*key) {
                    return Err(format!("{key:?} summed twice"));
                }
                let acc = ev.batches.get(key).ok_or_else(|| format!("{key:?}: no account"))?;
                let frames = frames_of(shape.run, epoch, key, acc)?;
                let ctx = Batch { shape: &shape, data: &data, epoch, key, acc, frames: &frames };
                let loss = if acc.answer.weights == current {
                    ctx.replay(t, is_first, is_last)?
                } else {
                    // Forwarded with the weights before a step and backpropagated after it (a
                    // middle sliver): its outputs are replayed on a second trainer with the
                    // weights it ran with, which must be a step's starting weights the caller
                    // found in the miner's records. Its weight gradient is not summed: the
                    // miner's trainer replaced its parameters at the step, so the backward
                    // finds none of them (an engine limit, docs/validator.md).
                    if is_first || is_last {
                        return Err(format!("{key:?} ran with other weights than its step's"));
                    }
                    let older = ev
                        .older
                        .get(&acc.answer.weights)
                        .ok_or_else(|| format!("{key:?}: the weights it ran with are not kept"))?;
                    if *blake3::hash(older).as_bytes() != acc.answer.weights {
                        return Err("older weights do not match their hash".into());
                    }
                    let spec = shape.specs[sliver as usize].clone();
                    let mut aux = SliverTrainer::new(
                        &shape.model,
                        spec,
                        None,
                        shape.adamw.clone(),
                        &sliver_engine::default_device(),
                    )
                    .map_err(|e| e.to_string())?;
                    let flat = decode_flat(older, &like).map_err(|e| format!("weights: {e}"))?;
                    import_flat(&mut aux.sliver, &flat).map_err(|e| format!("weights: {e}"))?;
                    ctx.replay(&mut aux, is_first, is_last)?
                };
                losses.extend(loss);
                checked += 1;
                for (dir, h) in [
                    (Direction::Activation, &frames.got_activation),
                    (Direction::Gradient, &frames.got_gradient),
                ] {
                    if let Some(h) = h {
                        received.push((*key, dir, h.encode()));
                    }
                }
            }
            let norm = t.grad_squares().iter().sum::<f64>().sqrt();
            if step.skipped {
                if norm.is_finite() {
                    return Err(format!("step {i} was skipped, but its gradient is finite"));
                }
                t.discard_grads();
            } else {
                if !norm.is_finite() {
                    return Err(format!("step {i}: the summed gradient is not finite"));
                }
                let factor = clip_scale(norm, shape.clip);
                if factor.to_bits() != step.factor.to_bits() {
                    return Err(format!(
                        "step {i}: clip factor {} recorded, the gradient's is {factor}",
                        step.factor
                    ));
                }
                let lr = shape.lr.at(step.schedule_step);
                if lr.to_bits() != step.lr.to_bits() {
                    return Err(format!(
                        "step {i}: learning rate {} recorded, the schedule's is {lr}",
                        step.lr
                    ));
                }
                t.step(lr, factor);
                schedule_step = step.schedule_step + 1;
            }
            current = weights_hash(t);
            if current != step.after {
                return Err(format!(
                    "step {i}: the weights after it are not those its micro-batches give"
                ));
            }
        }
        let end_optim = *blake3::hash(&t.optim.state_bytes()).as_bytes();
        t.zero_grad();
        Ok(SegmentOutcome::Pass { checked, losses, received, end_optim })
    }
}

/// The frames of `acc`, checked to be of `key` and to send what its index listed.
fn frames_of(run: u64, epoch: u64, key: &AuditKey, acc: &BatchAccount) -> Result<Frames, String> {
    let mut f = Frames::default();
    let mut sent = Vec::new();
    for a in &acc.answer.frames {
        let h = FrameHeader::decode(&a.header).map_err(|e| format!("{key:?}: bad header: {e}"))?;
        if h.run != run
            || h.epoch != epoch
            || (h.route, h.step, h.micro_batch) != (key.route, key.step, key.micro_batch)
        {
            return Err(format!("{key:?}: the answer holds a frame of another micro-batch"));
        }
        let is_sent = a.receipt.is_some();
        let slot = match (is_sent, h.direction) {
            (true, Direction::Activation) => &mut f.sent_activation,
            (true, Direction::Gradient) => &mut f.sent_gradient,
            (false, Direction::Activation) => &mut f.got_activation,
            (false, Direction::Gradient) => &mut f.got_gradient,
        };
        // A retried or relayed copy can add a second frame of a kind: the first is the one
        // the miner's computation and the neighbours' receipts go with.
        if slot.is_none() {
            *slot = Some(h);
        }
        if is_sent {
            sent.push(a.header.clone());
        }
    }
    let mut listed = acc.listed.clone();
    listed.sort();
    sent.sort();
    if listed != sent {
        return Err(format!("{key:?}: the answer's sent frames differ from its index"));
    }
    Ok(f)
}

/// One summed micro-batch to replay.
struct Batch<'a> {
    shape: &'a crate::RunShape,
    data: &'a sliver_engine::data::Dataset,
    epoch: u64,
    key: &'a AuditKey,
    acc: &'a BatchAccount,
    frames: &'a Frames,
}

impl Batch<'_> {
    /// Forward and backward on `t` as the miner ran them, each output compared with the hash
    /// its neighbour signed for; the gradient is summed into `t`. The loss on the last sliver.
    fn replay(
        &self,
        t: &mut SliverTrainer,
        first: bool,
        last: bool,
    ) -> Result<Option<f32>, String> {
        const ID: u64 = u64::MAX;
        let (key, f, shape) = (self.key, self.frames, self.shape);
        let (batch, seq) = (shape.batch, shape.seq);
        let hidden = shape.hidden();
        let payload = |h: &FrameHeader| -> Result<&Vec<u8>, String> {
            let p = self.acc.payloads.get(&h.payload_hash).ok_or("a payload was not served")?;
            h.check_payload(p).map_err(|e| format!("{key:?}: a received payload: {e}"))?;
            Ok(p)
        };
        let same =
            |h: &FrameHeader, bytes: &[u8]| *blake3::hash(bytes).as_bytes() == h.payload_hash;
        let data_key = BatchKey {
            run: shape.run,
            epoch: self.epoch,
            replica: key.route,
            step: key.step,
            index: key.micro_batch,
        };
        let mb = self
            .data
            .micro_batch(Split::Train, data_key, batch, seq)
            .map_err(|e| format!("the run's data: {e}"))?;
        let input = if first {
            SliverInput::Tokens(t.tokens(&mb.inputs, batch, seq).map_err(|e| e.to_string())?)
        } else {
            let h = f
                .got_activation
                .as_ref()
                .ok_or_else(|| format!("{key:?}: no activation received"))?;
            SliverInput::Hidden(
                decode_tensor(payload(h)?, hidden, t.device()).map_err(|e| e.to_string())?,
            )
        };
        // An output whose send failed is not in the account: its part of the step is still
        // replayed (the miner summed it), with nothing to compare.
        if last {
            let targets = t.tokens(&mb.targets, batch, seq).map_err(|e| e.to_string())?;
            let scale = 1.0 / shape.micro_batches.max(1) as f32;
            let (loss, g) = t
                .forward_backward_last(input, targets, scale)
                .map_err(|e| format!("{key:?}: replay: {e}"))?;
            let g = g.ok_or("the last sliver has no input gradient")?;
            if let Some(sg) = &f.sent_gradient {
                if !same(sg, &encode_tensor(sg.codec, &g)) {
                    return Err(format!(
                    "{key:?}: the gradient it sent is not the loss gradient of its weights and inputs"
                ));
                }
            }
            return Ok(Some(loss));
        }
        let out = t.forward(ID, input).map_err(|e| format!("{key:?}: replay: {e}"))?;
        if f.sent_activation.as_ref().is_some_and(|sa| !same(sa, &encode_tensor(sa.codec, &out))) {
            t.abandon(ID);
            return Err(format!(
                "{key:?}: the activation it sent is not the forward pass of its weights and inputs"
            ));
        }
        let Some(rg) = f.got_gradient.as_ref() else {
            t.abandon(ID);
            return Err(format!("{key:?}: summed into a step without a gradient received"));
        };
        let g = match payload(rg)
            .and_then(|p| decode_tensor(p, hidden, t.device()).map_err(|e| e.to_string()))
        {
            Ok(g) => g,
            Err(e) => {
                t.abandon(ID);
                return Err(e);
            }
        };
        let gin = t.backward(ID, g).map_err(|e| format!("{key:?}: replay: {e}"))?;
        if let (false, Some(sg)) = (first, &f.sent_gradient) {
            let gin = gin.ok_or("no input gradient on a middle sliver")?;
            if !same(sg, &encode_tensor(sg.codec, &gin)) {
                return Err(format!(
                    "{key:?}: the gradient it sent is not the backward pass of the gradient it received"
                ));
            }
        }
        Ok(None)
    }
}
