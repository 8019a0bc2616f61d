//! Pipelined training against the monolithic model, on the flex CPU backend.

use sliver_engine::codec::WireCodec;
use sliver_engine::data::{BatchKey, ByteTokenizer, Dataset, Split};
use sliver_engine::merge::export_flat;
use sliver_engine::optim::AdamWConfig;
use sliver_engine::{default_device, Boundary, GptConfig, MicroBatch, Pipeline, Schedule};

fn tiny(tied: bool) -> GptConfig {
    GptConfig::new()
        .with_n_layer(4)
        .with_d_model(32)
        .with_n_head(2)
        .with_block_size(16)
        .with_tie_embeddings(tied)
}

fn corpus() -> Dataset {
    let text =
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
            .repeat(40);
    Dataset::from_text(&text, &ByteTokenizer, 0.9).unwrap()
}

fn batches(d: &Dataset, step: u64, n: u64) -> Vec<MicroBatch> {
    (0..n)
        .map(|index| {
            let key = BatchKey { run: 1, epoch: 0, replica: 0, step, index };
            d.micro_batch(Split::Train, key, 3, 16).unwrap()
        })
        .collect()
}

/// Trains `steps` steps and returns the losses and the final parameters of the whole model.
fn run(
    cfg: &GptConfig,
    slivers: usize,
    boundary: Boundary,
    schedule: Schedule,
    steps: u64,
) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let d = corpus();
    let mut p =
        Pipeline::new(cfg, slivers, boundary, AdamWConfig::default(), &default_device()).unwrap();
    p.schedule = schedule;
    let losses =
        (0..steps).map(|s| p.train_step(&batches(&d, s, 2), 3e-3, 1.0).unwrap().loss).collect();
    let mut params = Vec::new();
    for st in &mut p.stages {
        params.extend(export_flat(&mut st.sliver));
    }
    (losses, params)
}

#[test]
fn pipelined_training_is_bitwise_equal_to_monolithic_with_the_lossless_codec() {
    for tied in [true, false] {
        let cfg = tiny(tied);
        let (mono_loss, mono_params) = run(&cfg, 1, Boundary::default(), Schedule::OneFOneB, 6);
        assert!(mono_loss[5] < mono_loss[0], "the model learns: {mono_loss:?}");
        for (slivers, schedule) in
            [(2, Schedule::OneFOneB), (4, Schedule::GPipe), (3, Schedule::OneFOneB)]
        {
            let (loss, params) = run(&cfg, slivers, Boundary::default(), schedule, 6);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&loss),
                bits(&mono_loss),
                "tied={tied} slivers={slivers}: {loss:?} vs {mono_loss:?}"
            );
            // Every parameter of the pipeline equals the monolithic one bit for bit.
            let mono: std::collections::BTreeMap<_, _> = mono_params.iter().cloned().collect();
            for (name, v) in &params {
                assert_eq!(bits(v), bits(&mono[name]), "tied={tied} slivers={slivers}: {name}");
            }
        }
    }
}

#[test]
fn lossy_codecs_stay_close_to_lossless() {
    let cfg = tiny(true);
    let (base, _) = run(&cfg, 1, Boundary::default(), Schedule::OneFOneB, 6);
    for (wire, tol) in [(WireCodec::Bf16, 0.02), (WireCodec::Int8, 0.05)] {
        let (loss, _) = run(&cfg, 2, Boundary { wire, bottleneck: None }, Schedule::OneFOneB, 6);
        for (a, b) in loss.iter().zip(&base) {
            assert!((a - b).abs() <= tol, "{wire}: {loss:?} vs {base:?}");
        }
        assert_ne!(loss, base, "{wire} is lossy, so the losses differ a little");
    }
}

#[test]
fn learned_bottleneck_trains_and_shrinks_the_boundary() {
    let cfg = tiny(true);
    let d = corpus();
    let wide = Boundary::default();
    let narrow = Boundary { wire: WireCodec::F32, bottleneck: Some(4) };
    let mut bytes = Vec::new();
    for b in [wide, narrow] {
        let mut p = Pipeline::new(&cfg, 2, b, AdamWConfig::default(), &default_device()).unwrap();
        let first = p.train_step(&batches(&d, 0, 2), 3e-3, 1.0).unwrap();
        let mut last = first.clone();
        for s in 1..15 {
            last = p.train_step(&batches(&d, s, 2), 3e-3, 1.0).unwrap();
        }
        assert!(last.loss < first.loss - 0.3, "{b:?}: {} -> {}", first.loss, last.loss);
        bytes.push(first.boundary_bytes);
    }
    // 32 wide vs 4 wide, activations and gradients, header aside.
    assert!(bytes[1] * 7 < bytes[0], "{bytes:?}");
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let cfg = tiny(true);
    let mut p =
        Pipeline::new(&cfg, 2, Boundary::default(), AdamWConfig::default(), &default_device())
            .unwrap();
    assert!(p.train_step(&[], 1e-3, 1.0).is_err());
    let bad = MicroBatch { batch: 1, seq: 2, inputs: vec![0, 300], targets: vec![0, 1] };
    assert!(p
        .train_step(&[bad], 1e-3, 1.0)
        .unwrap_err()
        .to_string()
        .contains("outside the vocabulary"));
    let long = MicroBatch { batch: 1, seq: 17, inputs: vec![1; 17], targets: vec![1; 17] };
    assert!(p.train_step(&[long], 1e-3, 1.0).unwrap_err().to_string().contains("sequence length"));
    let stage = &mut p.stages[0];
    let g = sliver_engine::codec::decode_tensor(
        &sliver_engine::codec::encode(WireCodec::F32, &[1, 2, 32], &[0.0; 64]),
        [1, 2, 32],
        &default_device(),
    )
    .unwrap();
    assert!(stage.backward(99, g.clone()).unwrap_err().to_string().contains("no forward pending"));
    // Activations of the wrong width from a peer are refused by the receiving sliver.
    let last = &mut p.stages[1];
    let narrow = sliver_engine::codec::decode_tensor(
        &sliver_engine::codec::encode(WireCodec::F32, &[1, 2, 16], &[0.0; 32]),
        [1, 2, 16],
        &default_device(),
    )
    .unwrap();
    let targets = last.tokens(&[1, 2], 1, 2).unwrap();
    let err = last
        .forward_backward_last(sliver_engine::SliverInput::Hidden(narrow), targets, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected width 32"), "{err}");
    let first = &mut p.stages[0];
    assert!(first.forward(1, sliver_engine::SliverInput::Hidden(g)).is_err());
    assert!(Pipeline::new(&cfg, 5, Boundary::default(), AdamWConfig::default(), &default_device())
        .is_err());
    assert!(GptConfig::new().with_n_head(3).validate().is_err());
}

#[test]
fn parameter_counts_agree_with_the_configuration() {
    for tied in [true, false] {
        for bias in [false, true] {
            let cfg = tiny(tied).with_bias(bias);
            let mut p = Pipeline::new(
                &cfg,
                1,
                Boundary::default(),
                AdamWConfig::default(),
                &default_device(),
            )
            .unwrap();
            let copy = if tied { cfg.vocab_size * cfg.d_model } else { 0 };
            assert_eq!(
                p.stages[0].sliver.num_params() - copy,
                cfg.num_params(),
                "tied={tied} bias={bias}"
            );
            let mut split = Pipeline::new(
                &cfg,
                2,
                Boundary::default(),
                AdamWConfig::default(),
                &default_device(),
            )
            .unwrap();
            let total: usize = split.stages.iter_mut().map(|s| s.sliver.num_params()).sum();
            assert_eq!(total - copy, cfg.num_params());
        }
    }
    // nanoGPT's shakespeare-char model with the byte vocabulary.
    assert_eq!(GptConfig::new().num_params(), 828_544);
}
