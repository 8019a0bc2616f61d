//! Checkpoints: slivers saved as safetensors assemble into the whole model, bit for bit, and
//! hostile files are refused with a clear error.

use std::path::Path;

use sliver_engine::checkpoint::{assemble, load_sliver, parse, read, save_sliver, CheckpointInfo};
use sliver_engine::data::{BatchKey, ByteTokenizer, Dataset, Split};
use sliver_engine::generate::{generate, SampleConfig};
use sliver_engine::merge::export_flat;
use sliver_engine::optim::AdamWConfig;
use sliver_engine::{default_device, Boundary, GptConfig, Pipeline, SliverSpec};

fn cfg() -> GptConfig {
    GptConfig::new().with_n_layer(3).with_d_model(32).with_n_head(2).with_block_size(16)
}

fn corpus() -> Dataset {
    let text = "to be or not to be, that is the question\n".repeat(50);
    Dataset::from_text(&text, &ByteTokenizer, 0.9).unwrap()
}

fn trained(slivers: usize) -> Pipeline {
    let d = corpus();
    let mut p = Pipeline::new(
        &cfg(),
        slivers,
        Boundary::default(),
        AdamWConfig::default(),
        &default_device(),
    )
    .unwrap();
    for step in 0..150 {
        let key = BatchKey { run: 0, epoch: 0, replica: 0, step, index: 0 };
        p.train_step(&[d.micro_batch(Split::Train, key, 4, 16).unwrap()], 3e-3, 1.0).unwrap();
    }
    p
}

#[test]
fn slivers_assemble_into_the_whole_model() {
    let dir = tempdir("assemble");
    let mut pipe = trained(2);
    let mut paths = Vec::new();
    for st in pipe.stages.iter_mut().rev() {
        let info = CheckpointInfo { config: cfg(), spec: st.spec.clone(), bottleneck: None };
        let path = dir.join(format!("s{}.safetensors", st.spec.index));
        save_sliver(&mut st.sliver, &info, &path).unwrap();
        paths.push(path);
    }
    // Each file holds its own sliver with GPT-2 names and global block indices.
    let (info, flat) = read(&paths[0]).unwrap();
    assert_eq!(info.spec, SliverSpec { index: 1, count: 2, layers: 2..3 });
    assert!(flat.contains_key("h.2.attn.c_attn.weight") && flat.contains_key("ln_f.weight"));
    assert!(!flat.contains_key("h.0.attn.c_attn.weight") && !flat.contains_key("wte.weight"));

    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let (config, mut whole) = assemble(&refs, &default_device()).unwrap();
    assert_eq!(config, cfg());
    let assembled = export_flat(&mut whole);
    for st in &mut pipe.stages {
        for (name, v) in export_flat(&mut st.sliver) {
            assert_eq!(assembled[&name], v, "{name}");
        }
    }
    // A loaded sliver equals the saved one.
    let (_, mut s1) = load_sliver(&paths[0], &default_device()).unwrap();
    assert_eq!(export_flat(&mut s1), export_flat(&mut pipe.stages[1].sliver));

    // The assembled model scores the validation text exactly as the pipeline does.
    let d = corpus();
    let val: Vec<_> = (0..4)
        .map(|index| {
            d.micro_batch(
                Split::Val,
                BatchKey { run: 9, epoch: 0, replica: 0, step: 0, index },
                4,
                16,
            )
            .unwrap()
        })
        .collect();
    let mut mono =
        Pipeline::new(&cfg(), 1, Boundary::default(), AdamWConfig::default(), &default_device())
            .unwrap();
    sliver_engine::merge::import_flat(&mut mono.stages[0].sliver, &assembled).unwrap();
    assert_eq!(mono.eval_loss(&val).unwrap().to_bits(), pipe.eval_loss(&val).unwrap().to_bits());

    // It generates from what it learned: only characters of the corpus, the same for one seed.
    let sc = SampleConfig { max_new_tokens: 40, temperature: 0.8, top_k: 10, seed: 5 };
    let prompt: Vec<u32> = b"to be or not to ".iter().map(|&b| u32::from(b)).collect();
    let out = generate(&whole, 16, &prompt, &sc, &default_device()).unwrap();
    assert_eq!(out.len(), 40);
    assert_eq!(out, generate(&whole, 16, &prompt, &sc, &default_device()).unwrap());
    let alphabet = "to be or not to be, that is the question\n";
    assert!(
        out.iter().all(|&t| alphabet.as_bytes().contains(&(t as u8))),
        "{:?}",
        String::from_utf8_lossy(&out.iter().map(|&t| t as u8).collect::<Vec<_>>())
    );

    // Missing a sliver, or giving one twice, is refused.
    let err = assemble(&refs[..1], &default_device()).unwrap_err().to_string();
    assert!(err.contains("missing parameter"), "{err}");
    let err = assemble(&[refs[0], refs[0]], &default_device()).unwrap_err().to_string();
    assert!(err.contains("given twice"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hostile_checkpoints_are_refused() {
    assert!(parse(b"").unwrap_err().to_string().contains("not safetensors"));
    assert!(parse(&[255u8; 64]).unwrap_err().to_string().contains("not safetensors"));
    let dir = tempdir("hostile");
    let mut pipe = trained(1);
    let info =
        CheckpointInfo { config: cfg(), spec: pipe.stages[0].spec.clone(), bottleneck: None };
    let path = dir.join("whole.safetensors");
    save_sliver(&mut pipe.stages[0].sliver, &info, &path).unwrap();
    let good = std::fs::read(&path).unwrap();
    // Truncation anywhere is an error, never a panic.
    for cut in [8, good.len() / 2, good.len() - 1] {
        assert!(parse(&good[..cut]).is_err());
    }
    // A config that claims another shape makes the tensors mismatch.
    let needle = b"\\\"d_model\\\":32";
    let at = good
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the config is in the metadata");
    let mut forged = good.clone();
    forged[at + needle.len() - 2..at + needle.len()].copy_from_slice(b"16");
    let (info, flat) = parse(&forged).unwrap();
    assert_eq!(info.config.d_model, 16);
    let mut s =
        sliver_engine::Sliver::new(&info.config, &info.spec, None, &default_device()).unwrap();
    let err = sliver_engine::merge::import_flat(&mut s, &flat).unwrap_err().to_string();
    assert!(err.contains("expected"), "{err}");
    assert!(load_sliver(&dir.join("absent.safetensors"), &default_device()).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sliver-ckpt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
