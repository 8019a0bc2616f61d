//! `sliver-kernels-bench`: the packed GEMM against a naive triple loop on the matrix shapes of
//! the nanoGPT benchmark's training step (768 tokens, width 128), single-threaded and on the
//! rayon pool. Prints GFLOP/s per shape.
use sliver_kernels::{gemm, MatRef};
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
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                for _ in 0..5 {
                    gemm(am, bm, &mut c).unwrap();
                }
                let iters = 200;
                let t = Instant::now();
                for _ in 0..iters {
                    gemm(am, bm, &mut c).unwrap();
                }
                let s = t.elapsed().as_secs_f64() / iters as f64;
                let flops = 2.0 * (m * k * n) as f64;
                println!(
                    "| {m}x{k}x{n} | {what} | {threads} | {:.3} | {:.1} |",
                    s * 1e3,
                    flops / s / 1e9
                );
            });
        }
    }
}
