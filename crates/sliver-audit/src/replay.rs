//! The expensive check: recomputing one audited micro-batch.
//!
//! From the miner's audit answer the validator has the weights snapshot the micro-batch ran
//! with, the frames it received (the previous sliver's activation, the next sliver's
//! gradient) and the frames it sent. The replay loads the snapshot into the engine's sliver,
//! rebuilds the input (the first sliver's tokens come from the run's data by the key, as every
//! miner draws them), runs the forward pass (and for gradients the backward pass, or on the
//! last sliver the loss and its gradient) and encodes the outputs with the codec the miner
//! used. Their BLAKE3 must equal the payload hashes in the headers the neighbours signed for.
//! The engine's CPU backend is bitwise deterministic across thread counts and instruction
//! sets, so an honest miner on the CPU always matches exactly and anything else is a fault.
//!
//! What this check alone cannot see: the first sliver's backward (it sends nothing back), and
//! whether the snapshot follows from the previous one by an optimiser step. Validators
//! therefore replay whole segments of steps ([`crate::segment`]), which see both; this check
//! of one micro-batch against a known snapshot stays for tools and tests. The inputs a miner
//! recorded are tied to its neighbours' signed outputs by the caller, who holds their indexes.

use std::collections::HashMap;
use std::sync::Arc;

use sliver_engine::codec::{decode_tensor, encode_tensor};
use sliver_engine::data::{BatchKey, Dataset, Split};
use sliver_engine::merge::{export_flat, import_flat, Flat};
use sliver_engine::tensor_set::decode_flat;
use sliver_engine::{SliverInput, SliverTrainer};
use sliver_p2p::{AuditAnswer, AuditKey, Direction, FrameHeader};

use crate::shape::RunShape;

/// What a miner handed over for one micro-batch, its blobs fetched by hash.
#[derive(Clone, Debug)]
pub struct Evidence {
    /// The answer.
    pub answer: AuditAnswer,
    /// The weights snapshot (`SLVF1`, f32) the answer names.
    pub weights: Vec<u8>,
    /// The payloads of the answer's frames, by hash.
    pub payloads: HashMap<[u8; 32], Vec<u8>>,
}

/// A replay's verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The outputs match bit for bit; on the last sliver, the loss recomputed.
    Pass {
        /// The micro-batch's loss (last sliver only).
        loss: Option<f32>,
        /// The headers of the frames the miner says it received, for the caller to find among
        /// its neighbours' signed frames.
        received: Vec<(Direction, Vec<u8>)>,
    },
    /// The miner's account does not hold up, and why.
    Fail(String),
}

pub(crate) struct Loaded {
    pub(crate) trainer: SliverTrainer,
    pub(crate) like: Flat,
    weights: Option<[u8; 32]>,
}

/// Replays audited micro-batches of one run on the CPU backend.
pub struct Replayer {
    shape: RunShape,
    data: Arc<Dataset>,
    slivers: HashMap<u16, Loaded>,
}

/// Stash id of the micro-batch being replayed.
const ID: u64 = 0;

impl Replayer {
    /// A replayer for the run of `shape`, drawing first-sliver tokens from `data`.
    pub fn new(shape: RunShape, data: Arc<Dataset>) -> Self {
        Replayer { shape, data, slivers: HashMap::new() }
    }

    /// Forgets which snapshots are loaded (the next check of each sliver loads its own).
    pub fn unload(&mut self) {
        for l in self.slivers.values_mut() {
            l.weights = None;
        }
    }

    /// The run's shapes.
    pub fn shape(&self) -> &RunShape {
        &self.shape
    }

    /// The run's data.
    pub(crate) fn data(&self) -> Arc<Dataset> {
        self.data.clone()
    }

    /// The weights of `sliver` as named flat tensors (values of the initialisation): the shape
    /// a peer's weights of that sliver must have.
    pub fn like(&mut self, sliver: u16) -> Result<Flat, String> {
        Ok(self.loaded(sliver)?.like.clone())
    }

    /// The byte length of a snapshot of `sliver` (what a fetch of it may be at most).
    pub fn snapshot_len(&mut self, sliver: u16) -> Result<u64, String> {
        let like = &self.loaded(sliver)?.like;
        Ok(sliver_engine::tensor_set::encoded_len(like, sliver_engine::codec::WireCodec::F32))
    }

    /// Checks miner's account of `key` in `epoch` on `sliver`. `index_sent` are the headers of
    /// the frames its index listed as sent for the key (the answer must name the same ones).
    /// CPU-bound: call it off the async threads.
    pub fn check(
        &mut self,
        epoch: u64,
        sliver: u16,
        key: AuditKey,
        index_sent: &[Vec<u8>],
        ev: &Evidence,
    ) -> Outcome {
        match self.try_check(epoch, sliver, key, index_sent, ev) {
            Ok(o) => o,
            Err(why) => Outcome::Fail(why),
        }
    }

    fn try_check(
        &mut self,
        epoch: u64,
        sliver: u16,
        key: AuditKey,
        index_sent: &[Vec<u8>],
        ev: &Evidence,
    ) -> Result<Outcome, String> {
        let (run, last) = (self.shape.run, self.shape.slivers().saturating_sub(1));
        let mut sent_bytes = Vec::new();
        let (mut sa, mut sg, mut ra, mut rg) = (None, None, None, None);
        for f in &ev.answer.frames {
            let h = FrameHeader::decode(&f.header).map_err(|e| format!("bad header: {e}"))?;
            if h.run != run
                || h.epoch != epoch
                || (h.route, h.step, h.micro_batch) != (key.route, key.step, key.micro_batch)
            {
                return Err("the answer holds a frame of another micro-batch".into());
            }
            let sent = f.receipt.is_some();
            let slot = match (sent, h.direction) {
                (true, Direction::Activation) => &mut sa,
                (true, Direction::Gradient) => &mut sg,
                (false, Direction::Activation) => &mut ra,
                (false, Direction::Gradient) => &mut rg,
            };
            // A retried or relayed copy can add a second frame of a kind: the first is the one
            // the miner's forward and the neighbours' receipts go with.
            if slot.is_none() {
                *slot = Some(h);
            }
            if sent {
                sent_bytes.push(f.header.clone());
            }
        }
        let mut listed = index_sent.to_vec();
        listed.sort();
        sent_bytes.sort();
        if listed != sent_bytes {
            return Err("the answer's sent frames differ from those its index listed".into());
        }
        if *blake3::hash(&ev.weights).as_bytes() != ev.answer.weights {
            return Err("the weights snapshot does not match its hash".into());
        }
        let (first, is_last) = (sliver == 0, sliver == last);
        let payload = |h: &FrameHeader| -> Result<&Vec<u8>, String> {
            let p = ev.payloads.get(&h.payload_hash).ok_or("a payload was not served")?;
            h.check_payload(p).map_err(|e| format!("a received payload: {e}"))?;
            Ok(p)
        };
        let hidden = self.shape.hidden();
        let (batch, seq, micro_batches) =
            (self.shape.batch, self.shape.seq, self.shape.micro_batches);
        let data_key =
            BatchKey { run, epoch, replica: key.route, step: key.step, index: key.micro_batch };
        let mb = self
            .data
            .micro_batch(Split::Train, data_key, batch, seq)
            .map_err(|e| format!("the run's data: {e}"))?;
        let loaded = self.loaded(sliver)?;
        if loaded.weights != Some(ev.answer.weights) {
            loaded.weights = None;
            let flat =
                decode_flat(&ev.weights, &loaded.like).map_err(|e| format!("weights: {e}"))?;
            import_flat(&mut loaded.trainer.sliver, &flat).map_err(|e| format!("weights: {e}"))?;
            loaded.weights = Some(ev.answer.weights);
        }
        let t = &mut loaded.trainer;
        let input = if first {
            SliverInput::Tokens(t.tokens(&mb.inputs, batch, seq).map_err(|e| e.to_string())?)
        } else {
            let ra = ra.as_ref().ok_or("no activation received: nothing to replay")?;
            let x = decode_tensor(payload(ra)?, hidden, t.device()).map_err(|e| e.to_string())?;
            SliverInput::Hidden(x)
        };
        let same =
            |h: &FrameHeader, bytes: &[u8]| *blake3::hash(bytes).as_bytes() == h.payload_hash;
        let mut loss = None;
        let result = (|| -> Result<(), String> {
            if is_last {
                let sg =
                    sg.as_ref().ok_or("the last sliver sent no gradient: nothing to replay")?;
                let targets = t.tokens(&mb.targets, batch, seq).map_err(|e| e.to_string())?;
                let scale = 1.0 / micro_batches as f32;
                let (l, g) = t
                    .forward_backward_last(input, targets, scale)
                    .map_err(|e| format!("replay: {e}"))?;
                let g = g.ok_or("the last sliver has no input gradient")?;
                if !same(sg, &encode_tensor(sg.codec, &g)) {
                    return Err(
                        "the gradient it sent is not the loss gradient of its weights and inputs"
                            .into(),
                    );
                }
                loss = Some(l);
                return Ok(());
            }
            let sa = sa.as_ref().ok_or("no activation sent: nothing to replay")?;
            let out = t.forward(ID, input).map_err(|e| format!("replay: {e}"))?;
            if !same(sa, &encode_tensor(sa.codec, &out)) {
                return Err(
                    "the activation it sent is not the forward pass of its weights and inputs"
                        .into(),
                );
            }
            match (first, &rg, &sg) {
                (false, Some(rg), Some(sg)) => {
                    let g = decode_tensor(payload(rg)?, hidden, t.device())
                        .map_err(|e| e.to_string())?;
                    let gin = t
                        .backward(ID, g)
                        .map_err(|e| format!("replay: {e}"))?
                        .ok_or("no input gradient on a middle sliver")?;
                    if !same(sg, &encode_tensor(sg.codec, &gin)) {
                        return Err("the gradient it sent is not the backward pass of the gradient it received".into());
                    }
                }
                (false, None, Some(_)) => {
                    return Err("a gradient sent back without one received".into())
                }
                _ => {}
            }
            Ok(())
        })();
        t.abandon(ID);
        t.zero_grad();
        result?;
        let received = [(Direction::Activation, ra), (Direction::Gradient, rg)]
            .into_iter()
            .filter_map(|(d, h)| h.map(|h| (d, h.encode())))
            .collect();
        Ok(Outcome::Pass { loss, received })
    }

    pub(crate) fn loaded(&mut self, sliver: u16) -> Result<&mut Loaded, String> {
        let spec = self
            .shape
            .specs
            .get(sliver as usize)
            .cloned()
            .ok_or_else(|| format!("the run has no sliver {sliver}"))?;
        if !self.slivers.contains_key(&sliver) {
            let device = sliver_engine::default_device();
            let mut trainer = SliverTrainer::new(
                &self.shape.model,
                spec,
                None,
                self.shape.adamw.clone(),
                &device,
            )
            .map_err(|e| e.to_string())?;
            let like = export_flat(&mut trainer.sliver);
            self.slivers.insert(sliver, Loaded { trainer, like, weights: None });
        }
        self.slivers.get_mut(&sliver).ok_or_else(|| "unreachable".to_string())
    }
}
