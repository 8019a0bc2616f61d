//! `sliver-validator-bench`: what an audit costs the validator against what the audited work
//! cost the miner, and how likely a cheater is caught at each sampling rate.
//!
//! - **Cost**: on the dev chain's run (4 layers, 4 heads, 128 wide, context 64, byte vocabulary,
//!   micro-batches of 4 rows, 2 slivers), the miner's work for one micro-batch on each sliver
//!   (the first sliver's forward and backward, the last sliver's forward, loss and backward) is
//!   timed against the validator's replay of it (`sliver_audit::Replayer::check`: decoding and
//!   loading the weights snapshot, rebuilding the input, the forward and, on the last sliver,
//!   the backward, hashing the outputs). The two sides alternate, 30 rounds, medians.
//! - **Detection**: for a miner with `n` micro-batches in an epoch of which a fraction `f` are
//!   cheated, the share of 20,000 epochs (fresh seeds) in which the validator's sample holds at
//!   least one cheated micro-batch, next to `1 - (1 - r)^(f n)`. A sampled cheat is always
//!   caught (the replay is exact), so this is the detection probability per epoch.
//!
//! Run with `cargo run -p sliver-validator --bin sliver-validator-bench [corpus]` (the dev profile
//! builds the engine, Burn and the hashes at `opt-level = 3`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sliver_audit::{sample, Evidence, Outcome, Replayer, RunShape, Secret};
use sliver_engine::codec::{decode_tensor, encode_tensor, WireCodec};
use sliver_engine::data::{BatchKey, ByteTokenizer, Dataset, Split};
use sliver_engine::merge::export_flat;
use sliver_engine::optim::AdamWConfig;
use sliver_engine::tensor_set::encode_flat;
use sliver_engine::{GptConfig, SliverInput, SliverSpec, SliverTrainer};
use sliver_p2p::{AuditAnswer, AuditKey, AuditedFrame, Direction, FrameHeader};

fn shape() -> RunShape {
    let model = GptConfig::new()
        .with_n_layer(4)
        .with_n_head(4)
        .with_d_model(128)
        .with_block_size(64)
        .with_tie_embeddings(false);
    RunShape {
        run: 1,
        specs: SliverSpec::split(4, 2).unwrap(),
        model,
        micro_batches: 3,
        batch: 4,
        seq: 64,
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn frame(
    key: AuditKey,
    sliver: u16,
    dir: Direction,
    payload: &[u8],
    sent: bool,
) -> (AuditedFrame, FrameHeader) {
    let h =
        FrameHeader::for_payload(1, 3, key.step, key.micro_batch, key.route, sliver, dir, payload)
            .unwrap();
    let f = AuditedFrame {
        header: h.encode(),
        receipt: sent.then(|| b"r".to_vec()),
        payload_published: true,
    };
    (f, h)
}

fn main() {
    let s = shape();
    let text = std::fs::read_to_string(
        std::env::args().nth(1).unwrap_or_else(|| "../shared/data/tinyshakespeare.txt".into()),
    )
    .unwrap_or_else(|_| "To be, or not to be, that is the question. ".repeat(5000));
    let data = Arc::new(Dataset::from_text(&text, &ByteTokenizer, 0.9).unwrap());
    let dev = sliver_engine::default_device();
    let trainer = |i: usize| {
        SliverTrainer::new(&s.model, s.specs[i].clone(), None, AdamWConfig::default(), &dev)
            .unwrap()
    };
    let (mut t0, mut t1) = (trainer(0), trainer(1));
    let w0 = encode_flat(&export_flat(&mut t0.sliver), WireCodec::F32);
    let w1 = encode_flat(&export_flat(&mut t1.sliver), WireCodec::F32);
    let hidden = s.hidden();
    let mut replayer = Replayer::new(s.clone(), data.clone());
    let (mut miner0, mut miner1, mut replay0, mut replay1, mut cached1) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..30u64 {
        let key = AuditKey { route: 0, step: round, micro_batch: 0 };
        let bk = BatchKey { run: 1, epoch: 3, replica: 0, step: round, index: 0 };
        let mb = data.micro_batch(Split::Train, bk, s.batch, s.seq).unwrap();
        // The miners' work.
        let t = Instant::now();
        let tokens = t0.tokens(&mb.inputs, s.batch, s.seq).unwrap();
        let out = sliver_engine::on_compute_thread(|| {
            t0.forward(1, SliverInput::Tokens(tokens)).unwrap()
        });
        let act = encode_tensor(WireCodec::Bf16, &out);
        let x_first = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let x = decode_tensor(&act, hidden, t1.device()).unwrap();
        let targets = t1.tokens(&mb.targets, s.batch, s.seq).unwrap();
        let (_, g) = sliver_engine::on_compute_thread(|| {
            t1.forward_backward_last(SliverInput::Hidden(x), targets, 1.0 / 3.0).unwrap()
        });
        let grad = encode_tensor(WireCodec::Bf16, &g.unwrap());
        miner1.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let gt = decode_tensor(&grad, hidden, t0.device()).unwrap();
        sliver_engine::on_compute_thread(|| t0.backward(1, gt).unwrap());
        miner0.push(x_first + t.elapsed().as_secs_f64());
        t0.zero_grad();
        t1.zero_grad();
        // The validator's replays (a fresh snapshot each time: every step has its own).
        let (sa, ha) = frame(key, 0, Direction::Activation, &act, true);
        let (rg, hg) = frame(key, 1, Direction::Gradient, &grad, false);
        let payloads =
            HashMap::from([(ha.payload_hash, act.clone()), (hg.payload_hash, grad.clone())]);
        let ev0 = Evidence {
            answer: AuditAnswer {
                weights: *blake3::hash(&w0).as_bytes(),
                frames: vec![sa.clone(), rg.clone()],
            },
            weights: w0.clone(),
            payloads: payloads.clone(),
        };
        let (ra, _) = frame(key, 0, Direction::Activation, &act, false);
        let (sg, _) = frame(key, 1, Direction::Gradient, &grad, true);
        let ev1 = Evidence {
            answer: AuditAnswer {
                weights: *blake3::hash(&w1).as_bytes(),
                frames: vec![ra, sg.clone()],
            },
            weights: w1.clone(),
            payloads,
        };
        // Alternate which side goes first in the round (the machine's speed drifts).
        let mut check = |sliver: u16, ev: &Evidence, listed: Vec<Vec<u8>>, fresh: bool| -> f64 {
            if fresh {
                // Every step has its own snapshot: decode and load it again.
                replayer.unload();
            }
            let t = Instant::now();
            let o =
                sliver_engine::on_compute_thread(|| replayer.check(3, sliver, key, &listed, ev));
            assert!(matches!(o, Outcome::Pass { .. }), "{o:?}");
            t.elapsed().as_secs_f64()
        };
        replay0.push(check(0, &ev0, vec![sa.header.clone()], true));
        replay1.push(check(1, &ev1, vec![sg.header.clone()], true));
        cached1.push(check(1, &ev1, vec![sg.header.clone()], false));
    }
    let (m0, m1, r0, r1, c1) =
        (median(miner0), median(miner1), median(replay0), median(replay1), median(cached1));
    println!("audit cost, dev run (micro-batch 4 x 64 x 128), medians of 30 rounds:");
    println!("| sliver | miner's work (ms) | validator's replay (ms) | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| first (forward + backward; replay: forward) | {:.2} | {:.2} | {:.2} |",
        m0 * 1e3,
        r0 * 1e3,
        r0 / m0
    );
    println!(
        "| last (forward, loss, backward) | {:.2} | {:.2} | {:.2} |",
        m1 * 1e3,
        r1 * 1e3,
        r1 / m1
    );
    println!(
        "| last, snapshot already loaded | {:.2} | {:.2} | {:.2} |",
        m1 * 1e3,
        c1 * 1e3,
        c1 / m1
    );

    println!("\ndetection per epoch (n micro-batches, a fraction f cheated), 20,000 epochs each:");
    println!("| n | f | rate | measured | 1 - (1 - r)^(f n) |");
    println!("| --- | --- | --- | --- | --- |");
    let secret = Secret([5; 32]);
    for &(n, f) in &[(300u64, 1.0f64), (300, 0.1), (300, 0.02), (60, 0.1)] {
        let keys: Vec<AuditKey> =
            (0..n).map(|i| AuditKey { route: 0, step: i / 3, micro_batch: i % 3 }).collect();
        let cheated = (f * n as f64).round() as u64;
        for &r in &[0.01, 0.02, 0.05, 0.1] {
            let mut caught = 0u32;
            for e in 0..20_000u64 {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&e.to_le_bytes());
                let chosen = sample(&secret, &seed, 7, &keys, r);
                // The cheated keys are the first `cheated` (the draw is independent of order).
                caught += u32::from(chosen.iter().any(|k| k.step * 3 + k.micro_batch < cheated));
            }
            let formula = 1.0 - (1.0 - r).powf(cheated as f64);
            println!("| {n} | {f} | {r} | {:.3} | {:.3} |", caught as f64 / 20_000.0, formula);
        }
    }
}
