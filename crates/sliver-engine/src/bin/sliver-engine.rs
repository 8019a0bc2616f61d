//! `sliver-engine`: train a model locally (whole or as in-process slivers), generate text from
//! checkpoints, and run the engine's benchmarks.
//!
//! ```text
//! sliver-engine train --data input.txt --slivers 2 --iters 2000 --out ckpt/
//! sliver-engine generate ckpt/sliver-0-of-2.safetensors ckpt/sliver-1-of-2.safetensors --prompt "ROMEO:"
//! sliver-engine bench all --data ../shared/data/tinyshakespeare.txt
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::{Parser, Subcommand};
use sliver_engine::checkpoint::{assemble, save_sliver, CheckpointInfo};
use sliver_engine::closeness::Closeness;
use sliver_engine::codec::WireCodec;
use sliver_engine::data::{BatchKey, ByteTokenizer, Dataset, Source, Split, Tokenizer};
use sliver_engine::generate::{generate, SampleConfig};
use sliver_engine::merge::{
    export_flat, import_flat, Aggregate, DeltaCodec, Flat, OuterOptimizer, ReplicaGroup,
};
use sliver_engine::optim::{AdamWConfig, LrSchedule};
use sliver_engine::{
    device_by_name, Boundary, EngineError, GptConfig, MicroBatch, Pipeline, SliverInput,
};

/// Keeps freed tensor buffers for reuse (see `sliver_engine::alloc`).
#[global_allocator]
static GLOBAL: sliver_engine::alloc::TrainingAllocator = sliver_engine::alloc::TrainingAllocator;

#[derive(Parser)]
#[command(version, about = "Sliver's training engine: local training, generation and benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone, Debug)]
struct RunArgs {
    /// Text file, directory of .txt files, or .jsonl (field "text").
    #[arg(long)]
    data: PathBuf,
    /// Device: flex (CPU), wgpu or cuda when compiled in.
    #[arg(long, default_value = "flex")]
    device: String,
    /// Rows per step.
    #[arg(long, default_value_t = 12)]
    batch: usize,
    /// Micro-batches the rows are split into.
    #[arg(long, default_value_t = 1)]
    micro_batches: usize,
    /// Optimiser steps (nanoGPT's max_iters).
    #[arg(long, default_value_t = 2000)]
    iters: u64,
    /// Validation batches for the final loss estimate.
    #[arg(long, default_value_t = 400)]
    eval_batches: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Training run id (seeds the data sampling).
    #[arg(long, default_value_t = 0)]
    run: u64,
    /// Model seed.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train the nanoGPT shakespeare-char configuration (4 layers, 4 heads, 128 wide, context 64).
    Train {
        #[command(flatten)]
        run: RunArgs,
        /// Slivers (pipeline stages) in this process.
        #[arg(long, default_value_t = 1)]
        slivers: usize,
        /// Boundary codec: f32, bf16 or int8.
        #[arg(long, default_value = "f32")]
        codec: WireCodec,
        /// Learned bottleneck width at sliver boundaries.
        #[arg(long)]
        bottleneck: Option<usize>,
        /// Directory for the slivers' checkpoints.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generate text from a whole model assembled from sliver checkpoints.
    Generate {
        /// Checkpoint files of every sliver.
        files: Vec<PathBuf>,
        #[arg(long, default_value = "\n")]
        prompt: String,
        #[arg(long, default_value_t = 300)]
        tokens: usize,
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Benchmarks: quality, speed, pipeline, codecs, merge, robust or all; or calibrate
    /// (`--device` against flex, `--budget` steps). Prints tables.
    Bench {
        which: String,
        #[command(flatten)]
        run: RunArgs,
        /// Python with torch for the PyTorch side (speed, quality).
        #[arg(long, env = "SLIVER_TORCH_PYTHON")]
        python: Option<PathBuf>,
        /// Threads for both sides (Burn's rayon pool, torch.set_num_threads).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Steps timed in the speed benchmark.
        #[arg(long, default_value_t = 30)]
        speed_steps: u64,
        /// Steps of the codec and merge benchmarks' fixed budget.
        #[arg(long, default_value_t = 300)]
        budget: u64,
    },
}

fn main() {
    sliver_engine::alloc::keep_freed_memory();
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), EngineError> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Train { run, slivers, codec, bottleneck, out } => {
            let data = load(&run.data)?;
            let boundary = Boundary { wire: codec, bottleneck };
            let r = train(&run, &data, slivers, boundary, true)?;
            println!(
                "val loss {:.4} ({} batches) after {} iters in {:.1} s, {:.0} tokens/s, {:.1} boundary bytes/token",
                r.val_loss, run.eval_batches, run.iters, r.train_s, r.tokens_per_s, r.bytes_per_token
            );
            if let Some(dir) = out {
                let mut p = r.pipeline;
                let cfg = nano_config(run.seed);
                for st in &mut p.stages {
                    let info =
                        CheckpointInfo { config: cfg.clone(), spec: st.spec.clone(), bottleneck };
                    let path = dir
                        .join(format!("sliver-{}-of-{}.safetensors", st.spec.index, st.spec.count));
                    save_sliver(&mut st.sliver, &info, &path)?;
                    println!("saved {}", path.display());
                }
            }
            Ok(())
        }
        Cmd::Generate { files, prompt, tokens, temperature, top_k, seed } => {
            let device = device_by_name("flex")?;
            let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
            let (cfg, model) = assemble(&paths, &device)?;
            let tok = ByteTokenizer;
            let ids = tok.encode(&prompt)?;
            let sc = SampleConfig { max_new_tokens: tokens, temperature, top_k, seed };
            let out = generate(&model, cfg.block_size, &ids, &sc, &device)?;
            println!("{prompt}{}", tok.decode(&out));
            Ok(())
        }
        Cmd::Bench { which, run, python, threads, speed_steps, budget } => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| EngineError::Config(format!("thread pool: {e}")))?;
            // The caller joins the pool as a worker, so Burn's parallel operations do not hand
            // their work to sleeping threads and wait (measured: 10% of the speed benchmark).
            pool.install(|| bench(which, run, python, threads, speed_steps, budget))
        }
    }
}

fn bench(
    which: String,
    run: RunArgs,
    python: Option<PathBuf>,
    threads: usize,
    speed_steps: u64,
    budget: u64,
) -> Result<(), EngineError> {
    {
        {
            let data = load(&run.data)?;
            let all = which == "all";
            let mut ran = false;
            if all || which == "speed" {
                bench_speed(&run, &data, python.as_deref(), threads, speed_steps)?;
                ran = true;
            }
            if all || which == "pipeline" {
                bench_pipeline(&run, &data, speed_steps)?;
                ran = true;
            }
            if all || which == "codecs" {
                bench_codecs(&run, &data, budget)?;
                ran = true;
            }
            if all || which == "merge" {
                bench_merge(&run, &data, budget)?;
                ran = true;
            }
            if all || which == "robust" {
                bench_robust(&run, &data, budget)?;
                ran = true;
            }
            if all || which == "quality" {
                bench_quality(&run, &data, python.as_deref(), threads)?;
                ran = true;
            }
            if which == "calibrate" {
                bench_calibrate(&run, &data, budget)?;
                ran = true;
            }
            if !ran {
                return Err(EngineError::Config(format!(
                    "unknown benchmark {which:?}: quality, speed, pipeline, codecs, merge, robust, all, or calibrate (with --device)"
                )));
            }
            Ok(())
        }
    }
}

/// The same model, weights and micro-batches on flex (the reference) and on `run.device`:
/// how close one micro-batch's outputs are, and how far the trained weights drift apart.
fn bench_calibrate(run: &RunArgs, data: &Dataset, steps: u64) -> Result<(), EngineError> {
    let (cpu, other) = (device_by_name("flex")?, device_by_name(&run.device)?);
    let cfg = nano_config(run.seed);
    let new = |d| Pipeline::new(&cfg, 2, Boundary::default(), AdamWConfig::default(), d);
    let (mut a, mut b) = (new(&cpu)?, new(&other)?);
    for (sa, sb) in a.stages.iter_mut().zip(b.stages.iter_mut()) {
        import_flat(&mut sb.sliver, &export_flat(&mut sa.sliver))?;
    }
    let values = |t: burn::tensor::Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap_or_default();
    let show = |c: Option<Closeness>| match c {
        Some(c) => format!("{:.3e} | {:.9}", c.rel_l2, c.cosine),
        None => "lengths differ or not finite | -".into(),
    };
    println!("\n## Calibration: {} against flex, 2 slivers, batch {}", run.device, run.batch);
    println!("| what | relative L2 | cosine |\n|---|---|---|");
    let mut previous: Option<Vec<f32>> = None;
    for (i, mb) in step_batches(run, data, 0, 0)?.iter().enumerate() {
        let id = u64::MAX - i as u64;
        let mut outs = Vec::new();
        // The last sliver of both takes the reference's activation, so its input gradient
        // differs only by its own arithmetic.
        let mut hidden: Option<Vec<f32>> = None;
        for p in [&mut a, &mut b] {
            let t = p.stages[0].tokens(&mb.inputs, mb.batch, mb.seq)?;
            let h = p.stages[0].forward(id, SliverInput::Tokens(t))?;
            let dims = h.dims();
            let h = values(h);
            let fed = hidden.get_or_insert_with(|| h.clone()).clone();
            let device = p.stages[1].device().clone();
            let x = burn::tensor::Tensor::<3>::from_data(
                burn::tensor::TensorData::new(fed, dims),
                &device,
            );
            let targets = p.stages[1].tokens(&mb.targets, mb.batch, mb.seq)?;
            let (loss, g) =
                p.stages[1].forward_backward_last(SliverInput::Hidden(x), targets, 1.0)?;
            let g = g.map(values).unwrap_or_default();
            p.stages[0].abandon(id);
            for s in &mut p.stages {
                s.discard_grads();
            }
            outs.push((h, g, loss));
        }
        let ((ha, ga, la), (hb, gb, lb)) = (&outs[0], &outs[1]);
        println!(
            "| micro-batch {i}: activation (sliver 0 output) | {} |",
            show(Closeness::of(ha, hb))
        );
        println!(
            "| micro-batch {i}: input gradient (sliver 1) | {} |",
            show(Closeness::of(ga, gb))
        );
        println!("| micro-batch {i}: loss | {:.3e} | - |", ((lb - la) / la).abs());
        if let Some(prev) = &previous {
            // What the `stale` cheat sends: the previous micro-batch's output for this one.
            println!(
                "| (a stale output: micro-batch {}'s activation for micro-batch {i}) | {} |",
                i - 1,
                show(Closeness::of(ha, prev))
            );
        }
        previous = Some(ha.clone());
    }
    let start: Vec<Flat> = a.stages.iter_mut().map(|s| export_flat(&mut s.sliver)).collect();
    println!("\n| steps | loss (flex) | loss ({}) | weights trained: relative L2 of the difference, worst sliver | cosine of the updates, worst sliver |", run.device);
    println!("|---|---|---|---|---|");
    let sched = schedule(run);
    for step in 0..steps {
        let mbs = step_batches(run, data, 0, step)?;
        let lr = sched.at(step);
        let (sa, sb) = (a.train_step(&mbs, lr, 1.0)?, b.train_step(&mbs, lr, 1.0)?);
        let n = step + 1;
        if !(n.is_power_of_two() || n == steps) {
            continue;
        }
        let mut worst: Option<Closeness> = None;
        for (i, s0) in start.iter().enumerate() {
            let (wa, wb) =
                (export_flat(&mut a.stages[i].sliver), export_flat(&mut b.stages[i].sliver));
            let (mut da, mut db) = (Vec::new(), Vec::new());
            for (name, w0) in s0 {
                da.extend(wa[name].iter().zip(w0).map(|(w, s)| w - s));
                db.extend(wb[name].iter().zip(w0).map(|(w, s)| w - s));
            }
            let c = Closeness::of(&da, &db);
            worst = match (worst, c) {
                (Some(w), Some(c)) => Some(w.worst(c)),
                (None, c) => c,
                (w, None) => w.map(|w| Closeness { rel_l2: f64::INFINITY, ..w }),
            };
        }
        println!("| {n} | {:.5} | {:.5} | {} |", sa.loss, sb.loss, show(worst));
    }
    Ok(())
}

fn load(path: &Path) -> Result<Dataset, EngineError> {
    Dataset::load(&Source::detect(path), &ByteTokenizer, 0.9)
}

/// nanoGPT's shakespeare-char model with the byte vocabulary.
fn nano_config(seed: u64) -> GptConfig {
    GptConfig::new().with_init_seed(seed)
}

/// The nanoGPT model split into `slivers`, with the default AdamW, on `run.device`.
fn nano_pipeline(
    run: &RunArgs,
    slivers: usize,
    boundary: Boundary,
) -> Result<Pipeline, EngineError> {
    let device = device_by_name(&run.device)?;
    Pipeline::new(&nano_config(run.seed), slivers, boundary, AdamWConfig::default(), &device)
}

fn schedule(run: &RunArgs) -> LrSchedule {
    LrSchedule { max_lr: run.lr, min_lr: run.lr / 10.0, warmup_steps: 100, decay_steps: run.iters }
}

fn step_batches(
    run: &RunArgs,
    data: &Dataset,
    replica: u64,
    step: u64,
) -> Result<Vec<MicroBatch>, EngineError> {
    let m = run.micro_batches.max(1);
    if run.batch % m != 0 {
        return Err(EngineError::Config(format!(
            "batch {} is not divisible into {m} micro-batches",
            run.batch
        )));
    }
    (0..m as u64)
        .map(|index| {
            let key = BatchKey { run: run.run, epoch: 0, replica, step, index };
            data.micro_batch(Split::Train, key, run.batch / m, 64)
        })
        .collect()
}

fn val_batches(run: &RunArgs, data: &Dataset) -> Result<Vec<MicroBatch>, EngineError> {
    (0..run.eval_batches)
        .map(|index| {
            let key = BatchKey { run: u64::MAX, epoch: 0, replica: 0, step: 0, index };
            data.micro_batch(Split::Val, key, run.batch, 64)
        })
        .collect()
}

struct TrainResult {
    val_loss: f32,
    train_s: f64,
    tokens_per_s: f64,
    bytes_per_token: f64,
    pipeline: Pipeline,
}

fn train(
    run: &RunArgs,
    data: &Dataset,
    slivers: usize,
    boundary: Boundary,
    progress: bool,
) -> Result<TrainResult, EngineError> {
    let mut p = nano_pipeline(run, slivers, boundary)?;
    let sched = schedule(run);
    let t0 = Instant::now();
    let (mut tokens, mut bytes) = (0u64, 0u64);
    for it in 0..run.iters {
        let stats = p.train_step(&step_batches(run, data, 0, it)?, sched.at(it), 1.0)?;
        tokens += stats.tokens;
        bytes += stats.boundary_bytes;
        if progress && (it % 100 == 0 || it + 1 == run.iters) {
            let el = t0.elapsed().as_secs_f64();
            eprintln!(
                "iter {it:>5}/{}: loss {:.4}, grad norm {:.3}, lr {:.2e}, {:.0} tokens/s, {:.0} s",
                run.iters,
                stats.loss,
                stats.grad_norm,
                sched.at(it),
                tokens as f64 / el,
                el
            );
        }
    }
    let train_s = t0.elapsed().as_secs_f64();
    let val_loss = p.eval_loss(&val_batches(run, data)?)?;
    Ok(TrainResult {
        val_loss,
        train_s,
        tokens_per_s: tokens as f64 / train_s,
        bytes_per_token: bytes as f64 / tokens.max(1) as f64,
        pipeline: p,
    })
}

fn torch(python: Option<&Path>, args: &[String]) -> Result<serde_json::Value, EngineError> {
    let Some(py) = python else {
        return Err(EngineError::Config(
            "no PyTorch: run scripts/bench-setup.sh or pass --python (SLIVER_TORCH_PYTHON)".into(),
        ));
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_ref.py");
    let out = Command::new(py)
        .arg(&script)
        .args(args)
        .output()
        .map_err(|e| EngineError::Config(format!("cannot run {}: {e}", py.display())))?;
    if !out.status.success() {
        return Err(EngineError::Config(format!(
            "torch_ref.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    serde_json::from_str(last)
        .map_err(|e| EngineError::Config(format!("torch_ref.py printed {last:?}: {e}")))
}

/// Rounds of the speed benchmark: Burn and PyTorch alternate, each timing `steps` steps per
/// round, and the medians are compared, so a slow spell of a shared machine hits both sides.
const SPEED_ROUNDS: usize = 3;

fn bench_speed(
    run: &RunArgs,
    data: &Dataset,
    python: Option<&Path>,
    threads: usize,
    steps: u64,
) -> Result<(), EngineError> {
    println!("\n## Speed: one training step of the nanoGPT configuration ({} x 64 tokens), {threads} threads", run.batch);
    println!(
        "({SPEED_ROUNDS} rounds of {steps} timed steps per side, Burn and PyTorch alternating; \
         medians)"
    );
    let mut p = nano_pipeline(run, 1, Boundary::default())?;
    for it in 0..5 {
        p.train_step(&step_batches(run, data, 0, it)?, 1e-3, 1.0)?;
    }
    let _ = sliver_engine::fast::kernel_times();
    let torch_args = [
        "speed".to_string(),
        "--data".into(),
        run.data.display().to_string(),
        "--threads".into(),
        threads.to_string(),
        "--steps".into(),
        steps.to_string(),
        "--batch".into(),
        run.batch.to_string(),
    ];
    let (mut burn, mut torch_ms, mut torch_err) = (Vec::new(), Vec::new(), None);
    for round in 0..SPEED_ROUNDS as u64 {
        let t0 = Instant::now();
        for it in 0..steps {
            p.train_step(&step_batches(run, data, 0, 5 + round * steps + it)?, 1e-3, 1.0)?;
        }
        burn.push(t0.elapsed().as_secs_f64() * 1000.0 / steps as f64);
        if torch_err.is_none() {
            match torch(python, &torch_args) {
                Ok(v) => torch_ms.push(v["ms_per_step"].as_f64().unwrap_or(f64::NAN)),
                Err(e) => torch_err = Some(e),
            }
        }
    }
    let kernels = sliver_engine::fast::kernel_times();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rounds = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ");
    let burn_rounds = rounds(&burn);
    let burn_ms = median(&mut burn);
    let tokens = (run.batch * 64) as f64;
    println!("| implementation | ms/step (median) | rounds | tokens/s | time ratio vs PyTorch |");
    println!("|---|---|---|---|---|");
    if torch_err.is_none() && !torch_ms.is_empty() {
        let torch_rounds = rounds(&torch_ms);
        let t = median(&mut torch_ms);
        println!(
            "| PyTorch {} (CPU) | {t:.1} | {torch_rounds} | {:.0} | 1.00 |",
            torch_version(python),
            tokens / t * 1000.0
        );
        println!(
            "| Burn flex (sliver-engine) | {burn_ms:.1} | {burn_rounds} | {:.0} | {:.2} |",
            tokens / burn_ms * 1000.0,
            burn_ms / t
        );
    } else {
        println!(
            "| Burn flex (sliver-engine) | {burn_ms:.1} | {burn_rounds} | {:.0} | n/a |",
            tokens / burn_ms * 1000.0
        );
        if let Some(e) = torch_err {
            println!("(PyTorch side skipped: {e})");
        }
    }
    let timed_steps = steps as f64 * SPEED_ROUNDS as f64;
    let per_step = |secs: f64| secs * 1000.0 / timed_steps;
    let in_kernels: f64 = kernels.iter().map(|(_, s)| per_step(*s)).sum();
    let total = burn.iter().sum::<f64>() / burn.len() as f64;
    let parts: Vec<String> =
        kernels.iter().map(|(k, s)| format!("{k} {:.1} ms", per_step(*s))).collect();
    println!(
        "\nBurn step breakdown (wall time per step, mean over all rounds): {}; everything else \
         (Burn's own ops, autodiff, optimiser) {:.1} ms.",
        parts.join(", "),
        total - in_kernels
    );
    Ok(())
}

fn torch_version(python: Option<&Path>) -> String {
    python
        .and_then(|py| {
            Command::new(py).args(["-c", "import torch; print(torch.__version__)"]).output().ok()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn bench_pipeline(run: &RunArgs, data: &Dataset, steps: u64) -> Result<(), EngineError> {
    println!("\n## Pipeline overhead: in-process slivers against the monolithic model ({steps} steps, f32 boundaries, 4 micro-batches)");
    println!("| slivers | tokens/s | vs monolithic | boundary bytes/token |");
    println!("|---|---|---|---|");
    let mut base = 0.0;
    let r = RunArgs { micro_batches: 4, ..run.clone() };
    for s in [1usize, 2, 4] {
        let mut p = nano_pipeline(run, s, Boundary::default())?;
        p.train_step(&step_batches(&r, data, 0, 0)?, 1e-3, 1.0)?;
        let t0 = Instant::now();
        let (mut tokens, mut bytes) = (0u64, 0u64);
        for it in 0..steps {
            let st = p.train_step(&step_batches(&r, data, 0, it)?, 1e-3, 1.0)?;
            tokens += st.tokens;
            bytes += st.boundary_bytes;
        }
        let tps = tokens as f64 / t0.elapsed().as_secs_f64();
        if s == 1 {
            base = tps;
        }
        println!("| {s} | {tps:.0} | {:.3} | {:.0} |", tps / base, bytes as f64 / tokens as f64);
    }
    Ok(())
}

fn bench_codecs(run: &RunArgs, data: &Dataset, budget: u64) -> Result<(), EngineError> {
    println!("\n## Boundary codecs: 2 slivers, {budget} steps (schedule compressed to that budget), validation loss on {} batches", run.eval_batches);
    println!("| codec | bytes/token (both directions) | vs f32 | val loss |");
    println!("|---|---|---|---|");
    let r = RunArgs { iters: budget, ..run.clone() };
    let mut base = 0.0;
    let cases = [
        ("f32", Boundary { wire: WireCodec::F32, bottleneck: None }),
        ("bf16", Boundary { wire: WireCodec::Bf16, bottleneck: None }),
        ("int8 per row", Boundary { wire: WireCodec::Int8, bottleneck: None }),
        ("bottleneck 32 + bf16", Boundary { wire: WireCodec::Bf16, bottleneck: Some(32) }),
        ("bottleneck 8 + bf16", Boundary { wire: WireCodec::Bf16, bottleneck: Some(8) }),
        ("bottleneck 8 + int8", Boundary { wire: WireCodec::Int8, bottleneck: Some(8) }),
    ];
    for (name, b) in cases {
        let res = train(&r, data, 2, b, false)?;
        if base == 0.0 {
            base = res.bytes_per_token;
        }
        println!(
            "| {name} | {:.1} | {:.1}x smaller | {:.5} |",
            res.bytes_per_token,
            base / res.bytes_per_token,
            res.val_loss
        );
    }
    let mono = train(&r, data, 1, Boundary::default(), false)?;
    println!("| (monolithic, no boundary) | 0 | - | {:.5} |", mono.val_loss);
    Ok(())
}

fn bench_merge(run: &RunArgs, data: &Dataset, budget: u64) -> Result<(), EngineError> {
    println!("\n## Merging replicas (DiLoCo outer Nesterov, lr 0.7, momentum 0.9): {budget} inner steps each, whole model per replica");
    println!(
        "| replicas | H | codec | bytes per merge per replica | vs dense f32 | merges | val loss |"
    );
    println!("|---|---|---|---|---|---|---|");
    let r = RunArgs { iters: budget, ..run.clone() };
    let sched = schedule(&r);
    let sync = train(&r, data, 1, Boundary::default(), false)?;
    println!("| 1 (synchronous baseline) | - | - | 0 | - | 0 | {:.4} |", sync.val_loss);
    for replicas in [2usize, 4] {
        for h in [1u64, 10, 50] {
            for (cname, codec) in [
                ("f32", DeltaCodec::Dense),
                ("int8", DeltaCodec::Int8),
                ("top-3% + EF", DeltaCodec::TopK { fraction: 0.03 }),
            ] {
                if h == 1 && cname != "f32" {
                    continue;
                }
                let mut reps: Vec<Pipeline> = (0..replicas)
                    .map(|_| nano_pipeline(run, 1, Boundary::default()))
                    .collect::<Result<_, _>>()?;
                let outer = if h == 1 {
                    OuterOptimizer::new(1.0, 0.0) // plain averaging every step
                } else {
                    OuterOptimizer::new(0.7, 0.9)
                };
                let mut group =
                    ReplicaGroup::new(&mut reps[0].stages[0].sliver, replicas, outer, codec);
                let (mut merges, mut bytes, mut dense) = (0u64, 0u64, 0u64);
                for it in 0..budget {
                    for (k, rep) in reps.iter_mut().enumerate() {
                        rep.train_step(&step_batches(&r, data, k as u64, it)?, sched.at(it), 1.0)?;
                    }
                    if (it + 1) % h == 0 || it + 1 == budget {
                        let mut slivers: Vec<_> =
                            reps.iter_mut().map(|p| &mut p.stages[0].sliver).collect();
                        let st = group.merge(&mut slivers)?;
                        bytes += st.bytes;
                        dense += st.dense_bytes;
                        merges += 1;
                    }
                }
                let val = reps[0].eval_loss(&val_batches(&r, data)?)?;
                let per = bytes as f64 / (merges * replicas as u64) as f64;
                println!("| {replicas} | {h} | {cname} | {per:.0} | {:.1}x smaller | {merges} | {val:.4} |", dense as f64 / bytes as f64);
            }
        }
    }
    Ok(())
}

/// What a lying replica sends instead of its pseudo-gradient.
#[derive(Clone, Copy)]
enum Lie {
    /// Every value 1e30.
    Huge,
    /// Its honest pseudo-gradient, sign-flipped and 100 times too large.
    Flipped,
}

fn lie(delta: &Flat, how: Lie) -> Flat {
    delta
        .iter()
        .map(|(k, v)| {
            let v = match how {
                Lie::Huge => vec![1e30; v.len()],
                Lie::Flipped => v.iter().map(|x| -100.0 * x).collect(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// The robust aggregate's cost in loss on honest replicas, and what one liar of four does to
/// the plain mean and to it.
fn bench_robust(run: &RunArgs, data: &Dataset, budget: u64) -> Result<(), EngineError> {
    let h = 25u64;
    println!("\n## Robust merging: H = {h}, {budget} inner steps, outer Nesterov (0.7, 0.9), dense f32, val loss on {} batches", run.eval_batches);
    println!(
        "| replicas | aggregate | val loss | merges | deltas clipped (mean per merge) | time s |"
    );
    println!("|---|---|---|---|---|---|");
    let r = RunArgs { iters: budget, ..run.clone() };
    let sched = schedule(&r);
    let cases: [(usize, &str, Aggregate, Option<Lie>); 8] = [
        (4, "4 honest", Aggregate::Mean, None),
        (4, "4 honest", Aggregate::ClippedMean, None),
        (4, "3 honest + 1 sending 1e30", Aggregate::Mean, Some(Lie::Huge)),
        (4, "3 honest + 1 sending 1e30", Aggregate::ClippedMean, Some(Lie::Huge)),
        (4, "3 honest + 1 sending -100x its delta", Aggregate::Mean, Some(Lie::Flipped)),
        (4, "3 honest + 1 sending -100x its delta", Aggregate::ClippedMean, Some(Lie::Flipped)),
        (2, "2 honest", Aggregate::Mean, None),
        (2, "2 honest", Aggregate::ClippedMean, None),
    ];
    for (replicas, name, how, liar) in cases {
        let started = Instant::now();
        let mut reps: Vec<Pipeline> = (0..replicas)
            .map(|_| nano_pipeline(run, 1, Boundary::default()))
            .collect::<Result<_, _>>()?;
        let outer = OuterOptimizer::new(0.7, 0.9);
        let mut group =
            ReplicaGroup::new(&mut reps[0].stages[0].sliver, replicas, outer, DeltaCodec::Dense)
                .with_aggregate(how);
        let (mut merges, mut clipped) = (0u64, 0usize);
        let mut failed = None;
        'rounds: for it in 0..budget {
            for (k, rep) in reps.iter_mut().enumerate() {
                let batches = step_batches(&r, data, k as u64, it)?;
                if let Err(e) = rep.train_step(&batches, sched.at(it), 1.0) {
                    failed = Some(format!("training failed at step {it}: {e}"));
                    break 'rounds;
                }
            }
            if (it + 1) % h == 0 || it + 1 == budget {
                let mut slivers: Vec<_> =
                    reps.iter_mut().map(|p| &mut p.stages[0].sliver).collect();
                let (mut deltas, _) = group.deltas(&mut slivers)?;
                if let Some(l) = liar {
                    deltas[replicas - 1] = lie(&deltas[replicas - 1], l);
                }
                match group.apply(&deltas, &mut slivers) {
                    Ok(a) => clipped += a.clipped,
                    Err(e) => {
                        failed = Some(format!("merge failed at step {it}: {e}"));
                        break 'rounds;
                    }
                }
                merges += 1;
            }
        }
        // A wrecked model's loss is reported as what it is, not as an error.
        let val = match &failed {
            Some(_) => f32::NAN,
            None => reps[0].eval_loss(&val_batches(&r, data)?).unwrap_or(f32::NAN),
        };
        let label = match how {
            Aggregate::Mean => "plain mean",
            Aggregate::ClippedMean => "norms clipped to the median",
        };
        println!(
            "| {name} | {label} | {val:.4}{} | {merges} | {:.2} | {:.0} |",
            failed.map(|f| format!(" ({f})")).unwrap_or_default(),
            clipped as f64 / merges.max(1) as f64,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn bench_quality(
    run: &RunArgs,
    data: &Dataset,
    python: Option<&Path>,
    threads: usize,
) -> Result<(), EngineError> {
    println!("\n## Quality: nanoGPT shakespeare-char CPU configuration, {} iterations, val loss over {} batches", run.iters, run.eval_batches);
    println!("| run | val loss | train wall time s | tokens/s |");
    println!("|---|---|---|---|");
    for s in [1usize, 2] {
        let r = train(run, data, s, Boundary::default(), true)?;
        let name = if s == 1 {
            "Burn, monolithic".to_string()
        } else {
            format!("Burn, {s} slivers (f32 boundary)")
        };
        println!("| {name} | {:.4} | {:.1} | {:.0} |", r.val_loss, r.train_s, r.tokens_per_s);
    }
    match torch(
        python,
        &[
            "quality".into(),
            "--data".into(),
            run.data.display().to_string(),
            "--threads".into(),
            threads.to_string(),
            "--iters".into(),
            run.iters.to_string(),
            "--eval-batches".into(),
            run.eval_batches.to_string(),
        ],
    ) {
        Ok(v) => println!(
            "| PyTorch {} | {:.4} | {:.1} | {:.0} |",
            torch_version(python),
            v["val_loss"].as_f64().unwrap_or(f64::NAN),
            v["train_s"].as_f64().unwrap_or(f64::NAN),
            v["tokens_per_s"].as_f64().unwrap_or(f64::NAN)
        ),
        Err(e) => println!("(PyTorch side skipped: {e})"),
    }
    Ok(())
}
