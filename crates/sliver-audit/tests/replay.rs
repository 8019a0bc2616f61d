//! Replays of micro-batches computed here as an honest miner computes them, and as cheaters
//! would: honest work passes bit for bit; random outputs, outputs of another micro-batch and
//! outputs of other weights fail.

use std::collections::HashMap;
use std::sync::Arc;

use sliver_audit::{Evidence, Outcome, Replayer, RunShape};
use sliver_engine::codec::{decode_tensor, encode_tensor, WireCodec};
use sliver_engine::data::{BatchKey, ByteTokenizer, Dataset, Split};
use sliver_engine::merge::export_flat;
use sliver_engine::optim::AdamWConfig;
use sliver_engine::tensor_set::encode_flat;
use sliver_engine::{GptConfig, SliverInput, SliverSpec, SliverTrainer};
use sliver_p2p::{AuditAnswer, AuditKey, AuditedFrame, Direction, FrameHeader};

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
        lr: sliver_engine::optim::LrSchedule {
            max_lr: 6e-4,
            min_lr: 6e-5,
            warmup_steps: 10,
            decay_steps: 5000,
        },
        clip: 1.0,
        adamw: sliver_engine::optim::AdamWConfig::default(),
    }
}

fn data() -> Arc<Dataset> {
    let text = "To be, or not to be, that is the question. ".repeat(500);
    Arc::new(Dataset::from_text(&text, &ByteTokenizer, 0.9).unwrap())
}

fn trainer(s: &RunShape, i: usize) -> SliverTrainer {
    let dev = sliver_engine::default_device();
    SliverTrainer::new(&s.model, s.specs[i].clone(), None, AdamWConfig::default(), &dev).unwrap()
}

struct Frame {
    header: FrameHeader,
    payload: Vec<u8>,
}

fn frame(key: AuditKey, sliver: u16, dir: Direction, payload: Vec<u8>) -> Frame {
    let header =
        FrameHeader::for_payload(1, 3, key.step, key.micro_batch, key.route, sliver, dir, &payload)
            .unwrap();
    Frame { header, payload }
}

/// The evidence a miner would hand over: `sent` frames carry a (placeholder) receipt.
fn evidence(weights: Vec<u8>, received: &[&Frame], sent: &[&Frame]) -> (Evidence, Vec<Vec<u8>>) {
    let mut frames = Vec::new();
    let mut payloads = HashMap::new();
    for (f, is_sent) in received.iter().map(|f| (f, false)).chain(sent.iter().map(|f| (f, true))) {
        frames.push(AuditedFrame {
            header: f.header.encode(),
            receipt: is_sent.then(|| b"receipt".to_vec()),
            payload_published: true,
        });
        payloads.insert(f.header.payload_hash, f.payload.clone());
    }
    let listed = sent.iter().map(|f| f.header.encode()).collect();
    let answer = AuditAnswer { weights: *blake3::hash(&weights).as_bytes(), frames };
    (Evidence { answer, weights, payloads }, listed)
}

#[test]
fn honest_work_replays_bitwise_and_cheats_fail() {
    let (s, data) = (shape(), data());
    let hidden = s.hidden();
    let (mut t0, mut t1) = (trainer(&s, 0), trainer(&s, 1));
    let w0 = encode_flat(&export_flat(&mut t0.sliver), WireCodec::F32);
    let w1 = encode_flat(&export_flat(&mut t1.sliver), WireCodec::F32);
    let key = AuditKey { route: 0, step: 4, micro_batch: 1 };
    let other = AuditKey { step: 3, ..key };
    let mb_of = |k: AuditKey| {
        let bk =
            BatchKey { run: 1, epoch: 3, replica: k.route, step: k.step, index: k.micro_batch };
        data.micro_batch(Split::Train, bk, s.batch, s.seq).unwrap()
    };
    // The honest miners: the first sliver's forward, the last sliver's loss gradient.
    let mb = mb_of(key);
    let tokens = t0.tokens(&mb.inputs, s.batch, s.seq).unwrap();
    let act = encode_tensor(WireCodec::Bf16, &t0.forward(7, SliverInput::Tokens(tokens)).unwrap());
    let x = decode_tensor(&act, hidden, t1.device()).unwrap();
    let targets = t1.tokens(&mb.targets, s.batch, s.seq).unwrap();
    let (loss, g) = t1.forward_backward_last(SliverInput::Hidden(x), targets, 0.5).unwrap();
    let grad = encode_tensor(WireCodec::Bf16, &g.unwrap());
    let sent_act = frame(key, 0, Direction::Activation, act.clone());
    let sent_grad = frame(key, 1, Direction::Gradient, grad.clone());

    let mut v = Replayer::new(s.clone(), data.clone());
    let (ev, listed) = evidence(w0.clone(), &[&sent_grad], &[&sent_act]);
    match v.check(3, 0, key, &listed, &ev) {
        Outcome::Pass { loss: None, received } => {
            assert_eq!(received, vec![(Direction::Gradient, sent_grad.header.encode())])
        }
        o => panic!("honest first sliver: {o:?}"),
    }
    let (ev, listed) = evidence(w1.clone(), &[&sent_act], &[&sent_grad]);
    match v.check(3, 1, key, &listed, &ev) {
        Outcome::Pass { loss: Some(l), .. } => assert_eq!(l, loss, "the same loss, bit for bit"),
        o => panic!("honest last sliver: {o:?}"),
    }

    let fails = |v: &mut Replayer, sliver, ev: &Evidence, listed: &[Vec<u8>], what: &str| match v
        .check(3, sliver, key, listed, ev)
    {
        Outcome::Fail(why) => assert!(why.contains(what), "{why}"),
        o => panic!("expected a failure with {what:?}: {o:?}"),
    };
    // 1. Random activations in place of the forward pass.
    let noise: Vec<f32> =
        (0..hidden.iter().product::<usize>()).map(|i| (i % 7) as f32 * 0.1).collect();
    let random =
        frame(key, 0, Direction::Activation, sliver_wire::encode(WireCodec::Bf16, &hidden, &noise));
    let (ev, listed) = evidence(w0.clone(), &[], &[&random]);
    fails(&mut v, 0, &ev, &listed, "not the forward pass");
    // 2. Random (here: zero) gradients in place of the backward pass.
    let zeros = frame(
        key,
        1,
        Direction::Gradient,
        sliver_wire::encode(WireCodec::Bf16, &hidden, &vec![0.0; noise.len()]),
    );
    let (ev, listed) = evidence(w1.clone(), &[&sent_act], &[&zeros]);
    fails(&mut v, 1, &ev, &listed, "not the loss gradient");
    // 3. A stale activation: another step's output sent under this key.
    let t_other = t0.tokens(&mb_of(other).inputs, s.batch, s.seq).unwrap();
    let stale_act =
        encode_tensor(WireCodec::Bf16, &t0.forward(8, SliverInput::Tokens(t_other)).unwrap());
    t0.abandon(8);
    let stale = frame(key, 0, Direction::Activation, stale_act);
    let (ev, listed) = evidence(w0.clone(), &[], &[&stale]);
    fails(&mut v, 0, &ev, &listed, "not the forward pass");
    // 5. Copied weights: honest outputs, but the snapshot named is another sliver's state.
    let mut t_moved = trainer(&s, 0);
    let mut flat = export_flat(&mut t_moved.sliver);
    for v in flat.values_mut() {
        v.iter_mut().for_each(|x| *x *= 0.5);
    }
    let (ev, listed) = evidence(encode_flat(&flat, WireCodec::F32), &[], &[&sent_act]);
    fails(&mut v, 0, &ev, &listed, "not the forward pass");
    // An answer that names other sent frames than its index, or a snapshot under a wrong hash.
    let (ev, _) = evidence(w0.clone(), &[], &[&sent_act]);
    fails(&mut v, 0, &ev, &[random.header.encode()], "differ from those its index listed");
    let (mut ev, listed) = evidence(w0, &[], &[&sent_act]);
    ev.weights[10] ^= 1;
    fails(&mut v, 0, &ev, &listed, "does not match its hash");
}
