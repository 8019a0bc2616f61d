//! DiLoCo merging of replicas: replicas trained on different data and merged every H steps end
//! with identical weights and learn; compression reduces what they exchange.

use sliver_engine::data::{BatchKey, ByteTokenizer, Dataset, Split};
use sliver_engine::merge::{
    export_flat, import_flat, DeltaCodec, Flat, OuterOptimizer, ReplicaGroup,
};
use sliver_engine::optim::AdamWConfig;
use sliver_engine::{default_device, Boundary, GptConfig, Pipeline};

fn run(codec: DeltaCodec, h: u64) -> (f32, f32, u64, Vec<Flat>) {
    let cfg = GptConfig::new().with_n_layer(2).with_d_model(32).with_n_head(2).with_block_size(16);
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(60);
    let d = Dataset::from_text(&text, &ByteTokenizer, 0.9).unwrap();
    let mut reps: Vec<Pipeline> = (0..2)
        .map(|_| {
            Pipeline::new(&cfg, 1, Boundary::default(), AdamWConfig::default(), &default_device())
                .unwrap()
        })
        .collect();
    let mut group =
        ReplicaGroup::new(&mut reps[0].stages[0].sliver, 2, OuterOptimizer::new(0.7, 0.9), codec);
    let (mut first, mut last, mut bytes) = (0.0, 0.0, 0);
    for step in 0..30 {
        for (k, r) in reps.iter_mut().enumerate() {
            let key = BatchKey { run: 0, epoch: 0, replica: k as u64, step, index: 0 };
            let s = r
                .train_step(&[d.micro_batch(Split::Train, key, 4, 16).unwrap()], 1e-2, 1.0)
                .unwrap();
            if step == 0 && k == 0 {
                first = s.loss;
            }
            last = s.loss;
        }
        if (step + 1) % h == 0 {
            let mut slivers: Vec<_> = reps.iter_mut().map(|r| &mut r.stages[0].sliver).collect();
            bytes += group.merge(&mut slivers).unwrap().bytes;
        }
    }
    let finals = reps.iter_mut().map(|r| export_flat(&mut r.stages[0].sliver)).collect();
    (first, last, bytes, finals)
}

#[test]
fn replicas_merge_and_learn_with_each_codec() {
    let (f, l, dense, finals) = run(DeltaCodec::Dense, 10);
    assert!(l < f - 0.5, "dense: {f} -> {l}");
    assert_eq!(finals[0], finals[1], "after a merge every replica holds the same weights");
    let (f8, l8, b8, _) = run(DeltaCodec::Int8, 10);
    assert!(l8 < f8 - 0.5, "int8: {f8} -> {l8}");
    assert!(b8 * 3 < dense, "int8 {b8} vs dense {dense}");
    let (ft, lt, bt, _) = run(DeltaCodec::TopK { fraction: 0.05 }, 10);
    assert!(lt < ft - 0.3, "top-k: {ft} -> {lt}");
    assert!(bt * 8 < dense, "top-k {bt} vs dense {dense}");
}

#[test]
fn import_refuses_wrong_shapes_and_nan() {
    let cfg = GptConfig::new().with_n_layer(1).with_d_model(16).with_n_head(2).with_block_size(8);
    let mut p =
        Pipeline::new(&cfg, 1, Boundary::default(), AdamWConfig::default(), &default_device())
            .unwrap();
    let good = export_flat(&mut p.stages[0].sliver);
    let mut short = good.clone();
    short.get_mut("wte.weight").unwrap().pop();
    assert!(import_flat(&mut p.stages[0].sliver, &short)
        .unwrap_err()
        .to_string()
        .contains("expected"));
    let mut nan = good.clone();
    nan.get_mut("ln_f.weight").unwrap()[0] = f32::NAN;
    assert!(import_flat(&mut p.stages[0].sliver, &nan)
        .unwrap_err()
        .to_string()
        .contains("non-finite"));
    let mut missing = good.clone();
    missing.remove("h.0.mlp.c_fc.weight");
    assert!(import_flat(&mut p.stages[0].sliver, &missing)
        .unwrap_err()
        .to_string()
        .contains("missing"));
    assert_eq!(export_flat(&mut p.stages[0].sliver), good, "a refused import changes nothing");
}
