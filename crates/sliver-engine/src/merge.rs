//! Merging replicas of a sliver, DiLoCo-style, and compressing what they exchange.
//!
//! Every H inner steps each replica computes its pseudo-gradient `start - current` (per
//! parameter), the replicas average them, and an outer Nesterov-momentum SGD step moves the shared
//! start weights; every replica then continues from the new start. Pseudo-gradients can travel
//! dense (f32), as int8 with a scale per chunk, or as top-k with error feedback (what was not
//! sent is remembered and added to the next pseudo-gradient).
//!
//! Replicas may lie. [`clipped_mean`] is the robust aggregate the network uses: every
//! pseudo-gradient's L2 norm is clipped to the lower median of the norms, then they are
//! averaged. While fewer than half of the replicas lie, the median is an honest replica's
//! norm, so each liar moves the mean by at most `median / n` whatever it sends (a delta of
//! 1e30, or an honest one flipped and scaled by 100), and honest replicas, whose norms are
//! close, are barely touched. Summing in the caller's order (the network sorts by blob hash)
//! makes the result bitwise equal on every replica that merged the same set.
//!
//! This module is pure maths on flat `Vec<f32>`s; moving the bytes is the P2P crate's job.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};

use crate::model::Sliver;
use crate::EngineError;

/// Parameters as flat vectors by name.
pub type Flat = BTreeMap<String, Vec<f32>>;

/// Copies every parameter of a sliver out as flat f32 vectors.
pub fn export_flat(sliver: &mut Sliver) -> Flat {
    sliver
        .params_mut()
        .into_iter()
        .map(|(name, p)| (name, p.flat().try_to_vec_as::<f32>().unwrap_or_default()))
        .collect()
}

/// Overwrites the parameters of `sliver` from `flat`; every parameter must be present with the
/// right length, or nothing is changed.
pub fn import_flat(sliver: &mut Sliver, flat: &Flat) -> Result<(), EngineError> {
    let mut params = sliver.params_mut();
    for (name, p) in &params {
        let want: usize = p.shape().iter().product();
        match flat.get(name) {
            None => return Err(EngineError::Checkpoint(format!("missing parameter {name}"))),
            Some(v) if v.len() != want => {
                return Err(EngineError::Checkpoint(format!(
                    "{name} has {} values, expected {want}",
                    v.len()
                )))
            }
            Some(v) if v.iter().any(|x| !x.is_finite()) => {
                return Err(EngineError::Checkpoint(format!("{name} holds a non-finite value")))
            }
            Some(_) => {}
        }
    }
    for (name, p) in &mut params {
        let v = &flat[name.as_str()];
        let device = p.flat().device();
        p.set_flat(Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &device));
    }
    Ok(())
}

/// Names of the outer optimiser's momentum in a published state.
pub const VELOCITY: &str = "outer.velocity/";

/// The merged state of a sliver: weights and the outer optimiser's momentum.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// The replicas' shared start weights.
    pub weights: Flat,
    /// The outer optimiser's momentum.
    pub velocity: Flat,
}

impl State {
    /// As one tensor set (momentum under `outer.velocity/<name>`).
    pub fn to_flat(&self) -> Flat {
        let mut out = self.weights.clone();
        for (k, v) in &self.velocity {
            out.insert(format!("{VELOCITY}{k}"), v.clone());
        }
        out
    }

    /// Back from [`State::to_flat`]'s set.
    pub fn from_flat(mut flat: Flat) -> Self {
        let names: Vec<String> = flat.keys().filter(|k| k.starts_with(VELOCITY)).cloned().collect();
        let mut velocity = Flat::new();
        for n in names {
            if let Some(v) = flat.remove(&n) {
                velocity.insert(n[VELOCITY.len()..].to_string(), v);
            }
        }
        State { weights: flat, velocity }
    }

    /// The encoding whose hash is committed on chain (f32: bitwise what the replicas hold).
    pub fn encode(&self) -> Vec<u8> {
        crate::tensor_set::encode_flat(&self.to_flat(), sliver_wire::WireCodec::F32)
    }

    /// A set shaped like the state of weights `like` (for decoding a peer's).
    pub fn like(weights: &Flat) -> Flat {
        State { weights: weights.clone(), velocity: weights.clone() }.to_flat()
    }
}

/// How pseudo-gradients are encoded for the exchange.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DeltaCodec {
    /// 4 bytes a value.
    Dense,
    /// 1 byte a value plus an f32 scale per chunk of [`INT8_CHUNK`] values.
    Int8,
    /// The `fraction` of largest-magnitude values (of delta plus carried error) as (u32 index,
    /// f32 value) pairs; the rest is carried to the next merge.
    TopK {
        /// Fraction kept, in (0, 1].
        fraction: f64,
    },
}

/// Values sharing one int8 scale.
pub const INT8_CHUNK: usize = 1024;

/// One replica's encoded pseudo-gradient: what it would send, and its size in bytes.
#[derive(Clone, Debug)]
pub struct EncodedDelta {
    /// The decoded values the receivers will use (per parameter).
    pub values: Flat,
    /// Bytes on the wire.
    pub bytes: u64,
}

/// Per-replica state of the compression (error feedback for top-k).
#[derive(Clone, Debug, Default)]
pub struct DeltaEncoder {
    residual: Flat,
}

impl DeltaEncoder {
    /// Encodes `delta` with `codec`, returning what the receivers reconstruct. Top-k adds the
    /// carried residual first and keeps what it drops for next time.
    pub fn encode(&mut self, delta: &Flat, codec: DeltaCodec) -> EncodedDelta {
        let mut values = Flat::new();
        let mut bytes = 0u64;
        for (name, d) in delta {
            let (v, b) = match codec {
                DeltaCodec::Dense => (d.clone(), 4 * d.len() as u64),
                DeltaCodec::Int8 => int8_roundtrip(d),
                DeltaCodec::TopK { fraction } => {
                    let r = self.residual.entry(name.clone()).or_insert_with(|| vec![0.0; d.len()]);
                    for (ri, di) in r.iter_mut().zip(d) {
                        *ri += di;
                    }
                    let k = ((d.len() as f64 * fraction.clamp(0.0, 1.0)).ceil() as usize)
                        .clamp(1, d.len().max(1));
                    let mut idx: Vec<usize> = (0..r.len()).collect();
                    if k < idx.len() {
                        idx.select_nth_unstable_by(k, |&a, &b| r[b].abs().total_cmp(&r[a].abs()));
                        idx.truncate(k);
                    }
                    let mut sent = vec![0.0; d.len()];
                    for &i in &idx {
                        sent[i] = r[i];
                        r[i] = 0.0;
                    }
                    (sent, 8 * idx.len() as u64)
                }
            };
            bytes += b;
            values.insert(name.clone(), v);
        }
        EncodedDelta { values, bytes }
    }
}

fn int8_roundtrip(d: &[f32]) -> (Vec<f32>, u64) {
    let mut out = Vec::with_capacity(d.len());
    let mut bytes = 0u64;
    for chunk in d.chunks(INT8_CHUNK) {
        let max = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 0.0 };
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        out.extend(chunk.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) * scale));
        bytes += 4 + chunk.len() as u64;
    }
    (out, bytes)
}

/// How replicas' pseudo-gradients are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    /// The plain mean (DiLoCo): one liar decides the result.
    Mean,
    /// Norms clipped to the lower median norm, then the mean ([`clipped_mean`]).
    ClippedMean,
}

/// What an aggregation did.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregated {
    /// The combined pseudo-gradient.
    pub delta: Flat,
    /// Each input's L2 norm, in input order.
    pub norms: Vec<f64>,
    /// The norm every input was clipped to (infinite for the plain mean).
    pub bound: f64,
    /// Inputs whose norm was above the bound.
    pub clipped: usize,
}

/// The L2 norm of a set of tensors, summed in f64 in name order (the same on every machine).
pub fn norm(delta: &Flat) -> f64 {
    delta.values().flatten().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
}

/// Combines `deltas` with `how`. Inputs are summed in the order given.
pub fn aggregate(deltas: &[Flat], how: Aggregate) -> Aggregated {
    let norms: Vec<f64> = deltas.iter().map(norm).collect();
    let bound = match how {
        Aggregate::Mean => f64::INFINITY,
        Aggregate::ClippedMean => {
            let mut sorted: Vec<f64> = norms.iter().copied().filter(|n| n.is_finite()).collect();
            sorted.sort_by(f64::total_cmp);
            // The lower median: with n = 2 the smaller norm, so one liar of two cannot inflate it.
            sorted.get(sorted.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
        }
    };
    let scales: Vec<f32> = norms
        .iter()
        .map(|&n| {
            if n > bound {
                (bound / n) as f32
            } else if n.is_finite() {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let clipped = norms.iter().filter(|&&n| n > bound).count();
    let mut out = Flat::new();
    let count = deltas.len().max(1) as f32;
    for (d, &scale) in deltas.iter().zip(&scales) {
        for (k, v) in d {
            let acc = out.entry(k.clone()).or_insert_with(|| vec![0.0; v.len()]);
            for (a, x) in acc.iter_mut().zip(v) {
                *a += x * scale;
            }
        }
    }
    for v in out.values_mut() {
        v.iter_mut().for_each(|x| *x /= count);
    }
    Aggregated { delta: out, norms, bound, clipped }
}

/// [`aggregate`] with [`Aggregate::ClippedMean`].
pub fn clipped_mean(deltas: &[Flat]) -> Aggregated {
    aggregate(deltas, Aggregate::ClippedMean)
}

/// The outer optimiser: SGD with Nesterov momentum on the averaged pseudo-gradient.
#[derive(Clone, Debug)]
pub struct OuterOptimizer {
    /// Outer learning rate (DiLoCo uses 0.7).
    pub lr: f32,
    /// Momentum (DiLoCo uses 0.9).
    pub momentum: f32,
    velocity: Flat,
}

impl OuterOptimizer {
    /// A fresh outer optimiser.
    pub fn new(lr: f32, momentum: f32) -> Self {
        OuterOptimizer { lr, momentum, velocity: Flat::new() }
    }

    /// The momentum buffer, shaped like `like` (zeros where no step has been taken yet), so
    /// replicas can share it with the weights.
    pub fn velocity(&self, like: &Flat) -> Flat {
        like.iter()
            .map(|(k, w)| (k.clone(), self.velocity.get(k).cloned().unwrap_or(vec![0.0; w.len()])))
            .collect()
    }

    /// Replaces the momentum buffer (from a replica's published state).
    pub fn set_velocity(&mut self, velocity: Flat) {
        self.velocity = velocity;
    }

    /// [`OuterOptimizer::step`], all or nothing: if the new weights or momentum would hold a
    /// non-finite value, both stay as they were and `false` is returned.
    pub fn step_checked(&mut self, start: &mut Flat, avg: &Flat) -> bool {
        let (before, velocity) = (start.clone(), self.velocity.clone());
        self.step(start, avg);
        let finite = start.values().chain(self.velocity.values()).flatten().all(|v| v.is_finite());
        if !finite {
            *start = before;
            self.velocity = velocity;
        }
        finite
    }

    /// Applies the averaged pseudo-gradient `avg` to `start` in place (PyTorch SGD, nesterov).
    pub fn step(&mut self, start: &mut Flat, avg: &Flat) {
        for (name, w) in start.iter_mut() {
            let Some(g) = avg.get(name) else { continue };
            let v = self.velocity.entry(name.clone()).or_insert_with(|| vec![0.0; w.len()]);
            for ((wi, gi), vi) in w.iter_mut().zip(g).zip(v.iter_mut()) {
                *vi = self.momentum * *vi + gi;
                *wi -= self.lr * (gi + self.momentum * *vi);
            }
        }
    }
}

/// Replicas of one sliver merged in one process: the reference for the networked merge, and
/// what tests and benchmarks use. Holds the shared start weights, the outer optimiser and one
/// encoder per replica.
pub struct ReplicaGroup {
    /// Weights every replica started the current round from.
    pub start: Flat,
    /// Outer optimiser.
    pub outer: OuterOptimizer,
    /// Pseudo-gradient encoding.
    pub codec: DeltaCodec,
    /// How the pseudo-gradients are combined.
    pub aggregate: Aggregate,
    encoders: Vec<DeltaEncoder>,
}

/// What one merge round moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeStats {
    /// Bytes all replicas sent, encoded.
    pub bytes: u64,
    /// What the same would have cost as dense f32.
    pub dense_bytes: u64,
}

impl ReplicaGroup {
    /// A group of `replicas` starting from the weights of `first`.
    pub fn new(
        first: &mut Sliver,
        replicas: usize,
        outer: OuterOptimizer,
        codec: DeltaCodec,
    ) -> Self {
        ReplicaGroup {
            start: export_flat(first),
            outer,
            codec,
            aggregate: Aggregate::Mean,
            encoders: vec![DeltaEncoder::default(); replicas],
        }
    }

    /// The same group combining pseudo-gradients with `how`.
    pub fn with_aggregate(mut self, how: Aggregate) -> Self {
        self.aggregate = how;
        self
    }

    /// One merge: every replica's pseudo-gradient is encoded, the decoded ones are combined, the
    /// outer step moves `start`, and every replica is reset to it.
    pub fn merge(&mut self, replicas: &mut [&mut Sliver]) -> Result<MergeStats, EngineError> {
        let (deltas, stats) = self.deltas(replicas)?;
        self.apply(&deltas, replicas)?;
        Ok(stats)
    }

    /// Every replica's encoded and decoded pseudo-gradient (what it would send), with the
    /// bytes they cost.
    pub fn deltas(
        &mut self,
        replicas: &mut [&mut Sliver],
    ) -> Result<(Vec<Flat>, MergeStats), EngineError> {
        if replicas.len() != self.encoders.len() {
            return Err(EngineError::Config(format!(
                "{} replicas given to a group of {}",
                replicas.len(),
                self.encoders.len()
            )));
        }
        let mut deltas = Vec::with_capacity(replicas.len());
        let mut stats = MergeStats { bytes: 0, dense_bytes: 0 };
        for (rep, enc) in replicas.iter_mut().zip(&mut self.encoders) {
            let delta = pseudo_gradient(&self.start, &export_flat(rep));
            let e = enc.encode(&delta, self.codec);
            stats.bytes += e.bytes;
            stats.dense_bytes += delta.values().map(|v| 4 * v.len() as u64).sum::<u64>();
            deltas.push(e.values);
        }
        Ok((deltas, stats))
    }

    /// Combines `deltas` (one per replica, possibly a liar's), takes the outer step (skipped,
    /// with the momentum kept, if it would make anything non-finite) and resets every replica
    /// to the new start. Returns what the aggregation did.
    pub fn apply(
        &mut self,
        deltas: &[Flat],
        replicas: &mut [&mut Sliver],
    ) -> Result<Aggregated, EngineError> {
        let agg = aggregate(deltas, self.aggregate);
        self.outer.step_checked(&mut self.start, &agg.delta);
        for rep in replicas.iter_mut() {
            import_flat(rep, &self.start)?;
        }
        Ok(agg)
    }
}

/// `start - current` per parameter.
pub fn pseudo_gradient(start: &Flat, current: &Flat) -> Flat {
    start
        .iter()
        .filter_map(|(k, s)| {
            let c = current.get(k)?;
            Some((k.clone(), s.iter().zip(c).map(|(a, b)| a - b).collect()))
        })
        .collect()
}

/// The element-wise mean of several replicas' decoded pseudo-gradients.
pub fn average(deltas: &[Flat]) -> Flat {
    let mut out = Flat::new();
    let n = deltas.len().max(1) as f32;
    for d in deltas {
        for (k, v) in d {
            let acc = out.entry(k.clone()).or_insert_with(|| vec![0.0; v.len()]);
            for (a, x) in acc.iter_mut().zip(v) {
                *a += x;
            }
        }
    }
    for v in out.values_mut() {
        v.iter_mut().for_each(|x| *x /= n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(v: &[f32]) -> Flat {
        [("w".to_string(), v.to_vec())].into_iter().collect()
    }

    #[test]
    fn outer_step_with_lr_one_and_no_momentum_is_plain_averaging() {
        let start = flat(&[1.0, 2.0]);
        let a = flat(&[0.0, 2.0]);
        let b = flat(&[1.0, 4.0]);
        let avg = average(&[pseudo_gradient(&start, &a), pseudo_gradient(&start, &b)]);
        let mut s = start.clone();
        OuterOptimizer::new(1.0, 0.0).step(&mut s, &avg);
        assert_eq!(s["w"], vec![0.5, 3.0]);
    }

    #[test]
    fn nesterov_matches_pytorch() {
        // torch.optim.SGD([w], lr=0.5, momentum=0.9, nesterov=True), grad 1.0 twice:
        // step 1: buf=1, w -= 0.5*(1+0.9) -> -0.95; step 2: buf=1.9, w -= 0.5*(1+1.71) -> -2.305
        let mut w = flat(&[0.0]);
        let mut o = OuterOptimizer::new(0.5, 0.9);
        o.step(&mut w, &flat(&[1.0]));
        assert!((w["w"][0] + 0.95).abs() < 1e-6);
        o.step(&mut w, &flat(&[1.0]));
        assert!((w["w"][0] + 2.305).abs() < 1e-6);
    }

    #[test]
    fn clipped_mean_bounds_liars_and_leaves_honest_replicas_alone() {
        let honest = [flat(&[1.0, 2.0]), flat(&[1.2, 1.8]), flat(&[0.9, 2.1])];
        let mean = aggregate(&honest, Aggregate::Mean);
        let clipped = clipped_mean(&honest);
        // Honest norms are close: only the largest is scaled, a little.
        assert_eq!(clipped.clipped, 1);
        for (a, b) in mean.delta["w"].iter().zip(&clipped.delta["w"]) {
            assert!((a - b).abs() < 0.02, "{a} vs {b}");
        }
        // One of three sends 1e30, another time a sign-flipped delta 100 times too large: the
        // result stays within an honest norm of the honest mean.
        for liar in [flat(&[1e30, 1e30]), flat(&[-100.0, -200.0])] {
            let set = [honest[0].clone(), honest[1].clone(), liar];
            let plain = aggregate(&set, Aggregate::Mean);
            let robust = clipped_mean(&set);
            let off = |d: &Flat| {
                let h = &mean.delta["w"];
                d["w"].iter().zip(h).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
            };
            assert!(off(&plain.delta) > 50.0, "the plain mean follows the liar");
            assert!(off(&robust.delta) <= (2.0 * robust.bound) as f32, "{:?}", robust);
            assert!(robust.delta["w"].iter().all(|v| v.is_finite()));
        }
        // Two replicas, one liar: the lower median is the honest norm.
        let two = clipped_mean(&[flat(&[3.0, 4.0]), flat(&[3e20, 4e20])]);
        assert_eq!(two.bound, 5.0);
        assert!((two.delta["w"][0] - 3.0).abs() < 1e-5, "{:?}", two.delta);
        // The same set in the same order gives the same bits.
        assert_eq!(clipped_mean(&honest).delta, clipped.delta);
    }

    #[test]
    fn a_step_that_would_not_be_finite_keeps_weights_and_momentum() {
        let mut o = OuterOptimizer::new(0.7, 0.9);
        let mut w = flat(&[1.0, 2.0]);
        assert!(o.step_checked(&mut w, &flat(&[0.5, 0.5])));
        let (w1, v1) = (w.clone(), o.velocity(&w));
        assert_ne!(v1["w"], vec![0.0, 0.0]);
        assert!(!o.step_checked(&mut w, &flat(&[f32::MAX, 1.0])));
        assert_eq!(w, w1);
        assert_eq!(o.velocity(&w), v1, "the momentum is restored too");
        let mut fresh = OuterOptimizer::new(0.7, 0.9);
        fresh.set_velocity(v1.clone());
        assert_eq!(fresh.velocity(&w), v1);
    }

    #[test]
    fn topk_error_feedback_sends_everything_eventually() {
        let mut enc = DeltaEncoder::default();
        let d = flat(&[4.0, -3.0, 2.0, 1.0]);
        let e1 = enc.encode(&d, DeltaCodec::TopK { fraction: 0.25 });
        assert_eq!(e1.values["w"], vec![4.0, 0.0, 0.0, 0.0]);
        assert_eq!(e1.bytes, 8);
        let zero = flat(&[0.0; 4]);
        let mut total = e1.values["w"].clone();
        for _ in 0..3 {
            let e = enc.encode(&zero, DeltaCodec::TopK { fraction: 0.25 });
            total.iter_mut().zip(&e.values["w"]).for_each(|(t, x)| *t += x);
        }
        assert_eq!(total, vec![4.0, -3.0, 2.0, 1.0]);
    }

    #[test]
    fn int8_is_close_and_small() {
        let v: Vec<f32> = (0..3000).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
        let e = DeltaEncoder::default().encode(&flat(&v), DeltaCodec::Int8);
        assert_eq!(e.bytes, 3000 + 3 * 4);
        for (a, b) in v.iter().zip(&e.values["w"]) {
            assert!((a - b).abs() <= 0.08 / 127.0 * 0.51 + 1e-7);
        }
    }
}
