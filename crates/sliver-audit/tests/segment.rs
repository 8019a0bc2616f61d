//! Segments of optimiser steps, trained here as two honest miners (first and last sliver) train
//! them and replayed from their snapshot: honest steps pass bit for bit; a miner that does
//! not apply its steps, trains with other weights, takes another learning rate or hides a
//! summed micro-batch fails.

use std::collections::HashMap;
use std::sync::Arc;

use sliver_audit::segment::weights_hash;
use sliver_audit::{BatchAccount, Replayer, RunShape, SegmentEvidence, SegmentOutcome};
use sliver_engine::codec::{decode_tensor, encode_tensor, WireCodec};
use sliver_engine::data::{BatchKey, ByteTokenizer, Dataset, Split};
use sliver_engine::merge::export_flat;
use sliver_engine::optim::{clip_scale, LrSchedule};
use sliver_engine::tensor_set::encode_flat;
use sliver_engine::{GptConfig, SliverInput, SliverSpec, SliverTrainer};
use sliver_p2p::{AuditAnswer, AuditKey, AuditedFrame, Direction, FrameHeader, StepEntry};

const EPOCH: u64 = 3;

fn shape() -> RunShape {
    let model = GptConfig::new()
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(32)
        .with_block_size(16)
        .with_tie_embeddings(false);
    RunShape {
        run: 1,
        specs: SliverSpec::split(2, 2).unwrap(),
        model,
        micro_batches: 2,
        batch: 4,
        seq: 16,
        lr: LrSchedule { max_lr: 1e-3, min_lr: 1e-4, warmup_steps: 2, decay_steps: 50 },
        // Small enough that some steps are clipped.
        clip: 0.5,
        adamw: sliver_engine::optim::AdamWConfig { weight_decay: 0.1, ..Default::default() },
    }
}

fn data() -> Arc<Dataset> {
    let text = "To be, or not to be, that is the question. ".repeat(500);
    Arc::new(Dataset::from_text(&text, &ByteTokenizer, 0.9).unwrap())
}

fn trainer(s: &RunShape, i: usize) -> SliverTrainer {
    let dev = sliver_engine::default_device();
    SliverTrainer::new(&s.model, s.specs[i].clone(), None, s.adamw.clone(), &dev).unwrap()
}

fn header(key: AuditKey, sliver: u16, dir: Direction, payload: &[u8]) -> FrameHeader {
    FrameHeader::for_payload(1, EPOCH, key.step, key.micro_batch, key.route, sliver, dir, payload)
        .unwrap()
}

/// What one miner's log holds for a run of steps.
#[derive(Clone)]
struct Log {
    steps: Vec<StepEntry>,
    weights: Vec<u8>,
    optim: Vec<u8>,
    batches: HashMap<AuditKey, BatchAccount>,
}

impl Log {
    fn new(t: &mut SliverTrainer) -> Self {
        Log {
            steps: Vec::new(),
            weights: encode_flat(&export_flat(&mut t.sliver), WireCodec::F32),
            optim: t.optim.state_bytes(),
            batches: HashMap::new(),
        }
    }

    fn account(
        &mut self,
        key: AuditKey,
        weights: [u8; 32],
        got: FrameHeader,
        got_payload: &[u8],
        sent: FrameHeader,
    ) {
        let frames = vec![
            AuditedFrame { header: got.encode(), receipt: None, payload_published: true },
            AuditedFrame {
                header: sent.encode(),
                receipt: Some(b"receipt".to_vec()),
                payload_published: true,
            },
        ];
        let payloads = HashMap::from([(got.payload_hash, got_payload.to_vec())]);
        let answer = AuditAnswer { weights, frames };
        self.batches.insert(key, BatchAccount { answer, listed: vec![sent.encode()], payloads });
    }

    fn evidence(&self) -> SegmentEvidence {
        SegmentEvidence {
            steps: self.steps.clone(),
            weights: self.weights.clone(),
            optim: self.optim.clone(),
            older: HashMap::new(),
            batches: self.batches.clone(),
        }
    }
}

/// Steps a stage takes (as `offchain-miner/src/stage.rs` does): the norm of the summed
/// gradient, the clip factor, the scheduled learning rate.
fn step(
    t: &mut SliverTrainer,
    s: &RunShape,
    at: u64,
    batches: Vec<AuditKey>,
    apply: bool,
) -> StepEntry {
    let before = weights_hash(t);
    let norm = t.grad_squares().iter().sum::<f64>().sqrt();
    let factor = clip_scale(norm, s.clip);
    let lr = s.lr.at(at);
    if apply {
        t.step(lr, factor);
    } else {
        t.discard_grads();
    }
    StepEntry {
        before,
        after: weights_hash(t),
        optim: None,
        schedule_step: at,
        lr,
        factor,
        skipped: false,
        batches,
    }
}

/// Trains one step, then `steps` recorded steps of two micro-batches through both slivers
/// (the snapshot is taken after the first, so its optimiser state holds moments);
/// `lazy_last` makes the last sliver skip applying its recorded steps.
fn train(steps: u64, lazy_last: bool) -> (Log, Log) {
    let (s, data) = (shape(), data());
    let hidden = s.hidden();
    let (mut t0, mut t1) = (trainer(&s, 0), trainer(&s, 1));
    let (mut l0, mut l1) = (Log::new(&mut t0), Log::new(&mut t1));
    let (mut o0, mut o1) = ([0u8; 32], [0u8; 32]);
    for st in 0..=steps {
        if st == 1 {
            (l0, l1) = (Log::new(&mut t0), Log::new(&mut t1));
            (o0, o1) = (*blake3::hash(&l0.optim).as_bytes(), *blake3::hash(&l1.optim).as_bytes());
        }
        let (w0, w1) = (weights_hash(&mut t0), weights_hash(&mut t1));
        let mut keys = Vec::new();
        for mb in 0..s.micro_batches {
            let key = AuditKey { route: 0, step: st, micro_batch: mb };
            let bk = BatchKey { run: 1, epoch: EPOCH, replica: 0, step: st, index: mb };
            let m = data.micro_batch(Split::Train, bk, s.batch, s.seq).unwrap();
            let tokens = t0.tokens(&m.inputs, s.batch, s.seq).unwrap();
            let act = encode_tensor(
                WireCodec::Bf16,
                &t0.forward(mb, SliverInput::Tokens(tokens)).unwrap(),
            );
            let x = decode_tensor(&act, hidden, t1.device()).unwrap();
            let targets = t1.tokens(&m.targets, s.batch, s.seq).unwrap();
            let scale = 1.0 / s.micro_batches as f32;
            let (_, g) = t1.forward_backward_last(SliverInput::Hidden(x), targets, scale).unwrap();
            let grad = encode_tensor(WireCodec::Bf16, &g.unwrap());
            let g = decode_tensor(&grad, hidden, t0.device()).unwrap();
            t0.backward(mb, g).unwrap();
            let (ha, hg) = (
                header(key, 0, Direction::Activation, &act),
                header(key, 1, Direction::Gradient, &grad),
            );
            l0.account(key, w0, hg.clone(), &grad, ha.clone());
            l1.account(key, w1, ha, &act, hg);
            keys.push(key);
        }
        let lazy = lazy_last && st > 0;
        let mut e0 = step(&mut t0, &s, st, keys.clone(), true);
        let mut e1 = step(&mut t1, &s, st, keys, !lazy);
        if lazy {
            // It claims the weights an honest step would have given: here, made up.
            e1.after = [7u8; 32];
        }
        if st == 0 {
            continue;
        }
        if st == 1 {
            e0.optim = Some(o0);
            e1.optim = Some(o1);
        }
        l0.steps.push(e0);
        l1.steps.push(e1);
    }
    (l0, l1)
}

fn fails(v: &mut Replayer, sliver: u16, ev: &SegmentEvidence, what: &str) {
    match v.check_segment(EPOCH, sliver, ev) {
        SegmentOutcome::Fail(why) => assert!(why.contains(what), "expected {what:?}: {why}"),
        o => panic!("expected a failure with {what:?}: {o:?}"),
    }
}

#[test]
fn honest_steps_replay_bitwise_and_lies_about_them_fail() {
    let (s, data) = (shape(), data());
    let (l0, l1) = train(4, false);
    let mut v = Replayer::new(s.clone(), data.clone());
    for (sliver, log) in [(0u16, &l0), (1, &l1)] {
        match v.check_segment(EPOCH, sliver, &log.evidence()) {
            SegmentOutcome::Pass { checked, losses, received, .. } => {
                assert_eq!(checked, 8, "four steps of two micro-batches");
                assert_eq!(losses.len(), if sliver == 1 { 8 } else { 0 });
                assert_eq!(received.len(), 8, "every input is named for the tie to neighbours");
            }
            o => panic!("honest sliver {sliver}: {o:?}"),
        }
    }
    // Some steps were clipped, so the factor is checked for real.
    assert!(l0.steps.iter().chain(&l1.steps).any(|s| s.factor < 1.0), "no step was clipped");

    // Steps not applied: the weights it claims after them are not those its work gives.
    let (_, lazy) = train(2, true);
    fails(&mut v, 1, &lazy.evidence(), "the weights after it");
    // Another learning rate than the schedule's.
    let mut ev = l0.evidence();
    ev.steps[1].lr *= 2.0;
    fails(&mut v, 0, &ev, "learning rate");
    // A step that names another schedule step than the one after the previous step's.
    let mut ev = l0.evidence();
    ev.steps[2].schedule_step += 5;
    fails(&mut v, 0, &ev, "another schedule step");
    // A segment whose learning rate starts at another point of the schedule than its
    // optimiser's step count (a miner restarting its warm-up).
    let mut ev = l0.evidence();
    for st in &mut ev.steps {
        st.schedule_step -= 1;
    }
    fails(&mut v, 0, &ev, "its optimiser has taken");
    // A made-up clip factor.
    let mut ev = l1.evidence();
    ev.steps[0].factor = 1.0 - ev.steps[0].factor / 2.0;
    fails(&mut v, 1, &ev, "clip factor");
    // The snapshot is not the one its steps name, nor its optimiser state.
    let mut ev = l0.evidence();
    ev.weights[20] ^= 1;
    fails(&mut v, 0, &ev, "weights do not match");
    let mut ev = l0.evidence();
    let last = ev.optim.len() - 3;
    ev.optim[last] ^= 1;
    fails(&mut v, 0, &ev, "optimiser state does not match");
    // Weights copied from elsewhere mid-segment: a step does not start where the one before
    // ended.
    let mut ev = l0.evidence();
    ev.steps[2].before = [9u8; 32];
    fails(&mut v, 0, &ev, "does not start where");
    // A summed micro-batch whose account it does not give.
    let mut ev = l1.evidence();
    let k = ev.steps[1].batches[0];
    ev.batches.remove(&k);
    fails(&mut v, 1, &ev, "no account");
    // Ran with other weights than its step's (a first or last sliver never does).
    let mut ev = l0.evidence();
    let k = ev.steps[1].batches[1];
    ev.batches.get_mut(&k).unwrap().answer.weights = ev.steps[0].before;
    fails(&mut v, 0, &ev, "other weights");
    // A gradient it says it received that is not what it summed (a forged input).
    let mut ev = l0.evidence();
    let k = ev.steps[3].batches[0];
    let acc = ev.batches.get_mut(&k).unwrap();
    let h = FrameHeader::decode(&acc.answer.frames[0].header).unwrap();
    let noise: Vec<f32> =
        (0..s.hidden().iter().product::<usize>()).map(|i| (i % 5) as f32 * 1e-3).collect();
    let forged = sliver_wire::encode(WireCodec::Bf16, &s.hidden(), &noise);
    let fh = header(k, 1, Direction::Gradient, &forged);
    assert_eq!(fh.direction, h.direction);
    acc.answer.frames[0].header = fh.encode();
    acc.payloads = HashMap::from([(fh.payload_hash, forged)]);
    // Caught at that step: by its clip factor, or (unclipped) by the weights after it.
    fails(&mut v, 0, &ev, "step 3:");
}
