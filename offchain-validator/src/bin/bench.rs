//! `sliver-validator-bench`: what an audit costs the validator against what the audited work
//! cost the miner, what the audit log costs the miner's disk, and how likely a cheater is
//! caught at each sampling rate.
//!
//! - **Cost and disk**: on the dev chain's run (4 layers, 4 heads, 128 wide, context 64, byte
//!   vocabulary, 3 micro-batches of 4 rows per step, 2 slivers), two honest miners train a
//!   segment of `K` optimiser steps exactly as their stages do (forwards, backwards, the clip
//!   factor, the AdamW step, the weights' hash after each step), timed per sliver; the
//!   validator then replays each sliver's segment from its snapshot
//!   (`sliver_audit::Replayer::check_segment`). For `K` = 1, 4, 8, 16, five rounds, medians.
//!   The log's bytes per step are the frames, the step records and one snapshot (weights and
//!   optimiser state) per segment, next to a weights snapshot at every step.
//! - **Detection**: validators sample segments (8 steps of 3 micro-batches). For a miner with
//!   `n` micro-batches in an epoch of which a fraction `f` are cheated, packed into as few
//!   segments as possible (`c`), the share of 20,000 epochs (fresh seeds) in which the
//!   validator's sample holds a cheated segment, next to `1 - (1 - r)^c`. A sampled cheat is
//!   always caught (the replay is exact), so this is the detection probability per epoch.
//!
//! Run with `cargo run -p sliver-validator --bin sliver-validator-bench [corpus]` (the dev profile
//! builds the engine, Burn and the hashes at `opt-level = 3`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sliver_audit::segment::weights_hash;
use sliver_audit::{
    sample, BatchAccount, Replayer, RunShape, Secret, SegmentEvidence, SegmentOutcome,
};
use sliver_engine::codec::{decode_tensor, encode_tensor, WireCodec};
use sliver_engine::data::{BatchKey, ByteTokenizer, Dataset, Split};
use sliver_engine::merge::export_flat;
use sliver_engine::optim::clip_scale;
use sliver_engine::tensor_set::encode_flat;
use sliver_engine::{GptConfig, SliverInput, SliverSpec, SliverTrainer};
use sliver_p2p::{AuditAnswer, AuditKey, AuditedFrame, Direction, FrameHeader, StepEntry};

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

/// One K-step segment trained by two honest miners, as their stages do, with what their
/// audit logs hold and what the work cost them.
struct Trained {
    evidence: [SegmentEvidence; 2],
    miner_secs: [f64; 2],
    /// Bytes the segment adds to each miner's log: frames, step records, one snapshot.
    log_bytes: [u64; 2],
    /// The same with a weights snapshot at every step (the log before segments).
    log_bytes_every_step: [u64; 2],
}

fn train_segment(s: &RunShape, data: &Dataset, k: u64, round: u64) -> Trained {
    let dev = sliver_engine::default_device();
    let trainer = |i: usize| {
        SliverTrainer::new(&s.model, s.specs[i].clone(), None, s.adamw.clone(), &dev).unwrap()
    };
    let mut t = [trainer(0), trainer(1)];
    let hidden = s.hidden();
    let mut ev: Vec<SegmentEvidence> = Vec::new();
    let mut secs = [0f64; 2];
    let mut frames = [0u64; 2];
    let mut weights_len = 0u64;
    // One step first (not timed, not kept), so the snapshot's optimiser state holds moments.
    for st in 0..=k {
        if st == 1 {
            secs = [0.0; 2];
            frames = [0; 2];
            ev = t
                .iter_mut()
                .map(|t| SegmentEvidence {
                    steps: Vec::new(),
                    weights: encode_flat(&export_flat(&mut t.sliver), WireCodec::F32),
                    optim: t.optim.state_bytes(),
                    older: HashMap::new(),
                    batches: HashMap::new(),
                })
                .collect();
            weights_len = ev[0].weights.len() as u64;
        }
        let before = [weights_hash(&mut t[0]), weights_hash(&mut t[1])];
        let mut keys = Vec::new();
        for mb in 0..s.micro_batches {
            let key = AuditKey { route: round, step: st, micro_batch: mb };
            let bk = BatchKey { run: 1, epoch: 3, replica: round, step: st, index: mb };
            let m = data.micro_batch(Split::Train, bk, s.batch, s.seq).unwrap();
            let clock = Instant::now();
            let tokens = t[0].tokens(&m.inputs, s.batch, s.seq).unwrap();
            let out = sliver_engine::on_compute_thread(|| {
                t[0].forward(mb, SliverInput::Tokens(tokens)).unwrap()
            });
            let act = encode_tensor(WireCodec::Bf16, &out);
            secs[0] += clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            let x = decode_tensor(&act, hidden, t[1].device()).unwrap();
            let targets = t[1].tokens(&m.targets, s.batch, s.seq).unwrap();
            let scale = 1.0 / s.micro_batches as f32;
            let (_, g) = sliver_engine::on_compute_thread(|| {
                t[1].forward_backward_last(SliverInput::Hidden(x), targets, scale).unwrap()
            });
            let grad = encode_tensor(WireCodec::Bf16, &g.unwrap());
            secs[1] += clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            let gt = decode_tensor(&grad, hidden, t[0].device()).unwrap();
            sliver_engine::on_compute_thread(|| t[0].backward(mb, gt).unwrap());
            secs[0] += clock.elapsed().as_secs_f64();
            let (fa, ha) = frame(key, 0, Direction::Activation, &act, true);
            let (fg, hg) = frame(key, 1, Direction::Gradient, &grad, true);
            let got = |f: &AuditedFrame| AuditedFrame { receipt: None, ..f.clone() };
            if st > 0 {
                let accounts = [
                    (vec![fa.clone(), got(&fg)], fa.header.clone(), hg.payload_hash, &grad),
                    (vec![got(&fa), fg.clone()], fg.header.clone(), ha.payload_hash, &act),
                ];
                for (i, (fr, listed, hash, payload)) in accounts.into_iter().enumerate() {
                    // Each miner's log holds both frames of the micro-batch (headers, receipt,
                    // payloads).
                    frames[i] += (act.len() + grad.len() + 2 * 200) as u64;
                    ev[i].batches.insert(
                        key,
                        BatchAccount {
                            answer: AuditAnswer { weights: before[i], frames: fr },
                            listed: vec![listed],
                            payloads: HashMap::from([(hash, payload.clone())]),
                        },
                    );
                }
            }
            keys.push(key);
        }
        for i in 0..2 {
            // The stage's step: norm, clip factor, scheduled rate, the weights' new hash.
            let clock = Instant::now();
            let norm = t[i].grad_squares().iter().sum::<f64>().sqrt();
            let factor = clip_scale(norm, s.clip);
            let lr = s.lr.at(st);
            sliver_engine::on_compute_thread(|| t[i].step(lr, factor));
            let after = weights_hash(&mut t[i]);
            secs[i] += clock.elapsed().as_secs_f64();
            if st > 0 {
                let optim = (st == 1).then(|| *blake3::hash(&ev[i].optim).as_bytes());
                ev[i].steps.push(StepEntry {
                    before: before[i],
                    after,
                    optim,
                    schedule_step: st,
                    lr,
                    factor,
                    skipped: false,
                    batches: keys.clone(),
                });
            }
        }
    }
    let records = k * (130 + 24 * s.micro_batches);
    let log_bytes =
        [0, 1].map(|i| frames[i] + records + ev[i].weights.len() as u64 + ev[i].optim.len() as u64);
    let log_bytes_every_step = [0, 1].map(|i| frames[i] + k * weights_len);
    let [e0, e1]: [SegmentEvidence; 2] = ev.try_into().unwrap();
    Trained { evidence: [e0, e1], miner_secs: secs, log_bytes, log_bytes_every_step }
}

fn main() {
    let s = shape();
    let text = std::fs::read_to_string(
        std::env::args().nth(1).unwrap_or_else(|| "../shared/data/tinyshakespeare.txt".into()),
    )
    .unwrap_or_else(|_| "To be, or not to be, that is the question. ".repeat(5000));
    let data = Arc::new(Dataset::from_text(&text, &ByteTokenizer, 0.9).unwrap());
    let mut replayer = Replayer::new(s.clone(), data.clone());
    println!(
        "segment audits, dev run (micro-batch 4 x 64 x 128, 3 per step): the miners' steps \
         against the validator's replay of them, medians of 5 rounds"
    );
    println!(
        "| K | sliver | miner per step (ms) | replay per step (ms) | ratio | replay per audit (s) \
         | log per step (MB) | log per step, snapshot every step (MB) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for k in [1u64, 4, 8, 16] {
        let mut rows: [(Vec<f64>, Vec<f64>); 2] = Default::default();
        let mut disk = [0f64; 2];
        let mut every = [0f64; 2];
        for round in 0..5u64 {
            let seg = train_segment(&s, &data, k, round);
            for sliver in 0..2usize {
                let t = Instant::now();
                let o = sliver_engine::on_compute_thread(|| {
                    replayer.check_segment(3, sliver as u16, &seg.evidence[sliver])
                });
                assert!(matches!(o, SegmentOutcome::Pass { .. }), "{o:?}");
                rows[sliver].0.push(seg.miner_secs[sliver] / k as f64);
                rows[sliver].1.push(t.elapsed().as_secs_f64() / k as f64);
                disk[sliver] = seg.log_bytes[sliver] as f64 / k as f64 / 1e6;
                every[sliver] = seg.log_bytes_every_step[sliver] as f64 / k as f64 / 1e6;
            }
        }
        for (sliver, (m, r)) in rows.into_iter().enumerate() {
            let (m, r) = (median(m), median(r));
            println!(
                "| {k} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
                ["first", "last"][sliver],
                m * 1e3,
                r * 1e3,
                r / m,
                r * k as f64,
                disk[sliver],
                every[sliver]
            );
        }
    }

    // Segments of 8 steps of 3 micro-batches: the audit unit. A cheater that spreads its
    // cheating over its micro-batches cheats in (nearly) every segment; the hardest to catch
    // packs it into as few segments as it can, `c = ceil(f n / 24)`.
    println!(
        "\ndetection per epoch (n micro-batches in segments of 24, a fraction f cheated in as \
         few segments as possible), 20,000 epochs each:"
    );
    println!("| n | segments | f | cheated segments | rate | measured | 1 - (1 - r)^c |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let secret = Secret([5; 32]);
    for &(n, f) in &[(300u64, 1.0f64), (300, 0.1), (300, 0.02), (2400, 0.1), (2400, 0.02)] {
        let segments = n.div_ceil(24);
        let keys: Vec<AuditKey> =
            (0..segments).map(|i| AuditKey { route: 0, step: i * 8, micro_batch: 0 }).collect();
        let cheated = ((f * n as f64) / 24.0).ceil() as u64;
        for &r in &[0.01, 0.02, 0.05, 0.1] {
            let mut caught = 0u32;
            for e in 0..20_000u64 {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&e.to_le_bytes());
                let chosen = sample(&secret, &seed, 7, &keys, r);
                // The cheated segments are the first `cheated` (the draw is independent of
                // order).
                caught += u32::from(chosen.iter().any(|k| k.step / 8 < cheated));
            }
            let formula = 1.0 - (1.0 - r).powf(cheated as f64);
            println!(
                "| {n} | {segments} | {f} | {cheated} | {r} | {:.3} | {:.3} |",
                caught as f64 / 20_000.0,
                formula
            );
        }
    }
}
