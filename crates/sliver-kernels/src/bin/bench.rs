//! `sliver-kernels-bench`: the packed GEMM against a naive triple loop on the matrix shapes of
//! the nanoGPT benchmark's training step (768 tokens, width 128), single-threaded and on the
//! rayon pool. Prints GFLOP/s per shape, then the time of the step's other kernels (attention,
//! GELU) per call.
use sliver_kernels::attention::{self, AttnShape};
use sliver_kernels::{gelu, gemm, layernorm, MatRef};
use std::mem::MaybeUninit;
use std::time::Instant;

fn main() {
    let shapes: &[(usize, usize, usize, &str)] = &[
        (768, 128, 384, "x W_qkv"),
        (768, 128, 512, "x W_fc"),
        (768, 512, 128, "h W_proj"),
        (768, 384, 128, "dY W_qkvᵀ"),
        (128, 768, 384, "xᵀ dY (qkv)"),
        (768, 128, 256, "x W_headᵀ"),
    ];
    println!("| shape (m x k x n) | product | threads | ms | GFLOP/s |");
    println!("|---|---|---|---|---|");
    for &(m, k, n, what) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.1).collect();
        let (am, bm) = (MatRef::row_major(&a, m, k).unwrap(), MatRef::row_major(&b, k, n).unwrap());
        let mut c = vec![0f32; m * n];
        for threads in [1usize, 2] {
            let ms = time_ms(threads, || gemm(am, bm, &mut c).unwrap());
            let flops = 2.0 * (m * k * n) as f64;
            println!("| {m}x{k}x{n} | {what} | {threads} | {ms:.3} | {:.1} |", flops / ms / 1e6);
        }
    }
    other_kernels();
}

/// Milliseconds per call of `f` on a pool of `threads`: the best of 20 rounds of 10 calls
/// after a warm-up (the minimum filters out other load on a shared machine).
fn time_ms(threads: usize, mut f: impl FnMut() + Send) -> f64 {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        for _ in 0..5 {
            f();
        }
        (0..20)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..10 {
                    f();
                }
                t.elapsed().as_secs_f64() * 1e3 / 10.0
            })
            .fold(f64::INFINITY, f64::min)
    })
}

fn other_kernels() {
    let s = AttnShape { batch: 12, seq: 64, heads: 4, head_dim: 32 };
    let qkv: Vec<f32> = (0..s.qkv_len()).map(|i| ((i * 7) % 13) as f32 * 0.05 - 0.3).collect();
    let dy: Vec<f32> = (0..s.out_len()).map(|i| ((i * 5) % 11) as f32 * 0.01 - 0.05).collect();
    let mut probs = vec![0f32; s.probs_len()];
    let mut y = vec![0f32; s.out_len()];
    let mut dqkv = vec![MaybeUninit::new(0f32); s.qkv_len()];
    let n = 768 * 512;
    let x: Vec<f32> = (0..n).map(|i| ((i * 7) % 101) as f32 * 0.06 - 3.0).collect();
    let g: Vec<f32> = (0..n).map(|i| ((i * 3) % 17) as f32 * 0.1 - 0.8).collect();
    let mut out = vec![MaybeUninit::new(0f32); n];
    let mut out2 = vec![MaybeUninit::new(0f32); n];
    println!();
    println!("| kernel (nanoGPT step shapes) | threads | ms per call |");
    println!("|---|---|---|");
    for threads in [1usize, 2] {
        let xs = &x[..768 * 128];
        let gs = &g[..768 * 128];
        let w: Vec<f32> = (0..128).map(|i| 1.0 + i as f32 * 0.001).collect();
        let mut ln = vec![MaybeUninit::new(0f32); 768 * 128];
        let mut dw = vec![MaybeUninit::new(0f32); 128];
        let rows: [(&str, f64); 7] = [
            (
                "attention forward 12x64, 4 heads of 32",
                time_ms(threads, || {
                    attention::causal_attention_forward(s, &qkv, &mut probs, &mut y)
                }),
            ),
            (
                "attention backward",
                time_ms(threads, || {
                    attention::causal_attention_backward(s, &qkv, &probs, &dy, &mut dqkv)
                }),
            ),
            ("gelu forward 768x512", time_ms(threads, || gelu::gelu_forward(&x, &mut out))),
            ("gelu backward 768x512", time_ms(threads, || gelu::gelu_backward(&x, &g, &mut out2))),
            (
                "layer norm forward 768x128",
                time_ms(threads, || layernorm::layer_norm_forward(xs, &w, 1e-5, &mut ln)),
            ),
            (
                "layer norm input gradient",
                time_ms(threads, || layernorm::layer_norm_grad_input(xs, &w, gs, 1e-5, &mut ln)),
            ),
            (
                "layer norm weight gradient",
                time_ms(threads, || layernorm::layer_norm_grad_weight(xs, gs, 1e-5, &mut dw)),
            ),
        ];
        for (what, ms) in rows {
            println!("| {what} | {threads} | {ms:.3} |");
        }
    }
}
