//! wasi-nn benchmarks, printed side by side from one run.
//!
//! `cargo bench -p shoal-runtime --bench nn [-- --quick]`
//!
//! 1. CPU backend through Wasm against the same model natively with tract:
//!    per-batch latency of the digits MLP (batch 32). Through Wasm, a batch
//!    is the classifier guest's set_input + compute + get_output; it is
//!    measured as the difference between jobs that repeat every batch R1
//!    and R2 times, so job start-up and file reading cancel out.
//! 2. Exact against fast mode, side by side, on the digits MLP (batch 32),
//!    a 256x256x256 MatMul and a 75 MFLOP Conv: on the CPU (Shoal's exact
//!    kernels against tract) and on whatever Vulkan device runs (lavapipe
//!    without a GPU: the exact kernels against the fast ones). Each compute
//!    is timed whole (upload and read-back included), the two modes in
//!    alternating rounds; medians.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use shoal_runtime::nn::{Mode, Session, Target};
use shoal_runtime::{Config, Executor, Mount, Task};
use tract_onnx::prelude::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn digits() -> std::path::PathBuf {
    common::samples_dir().join("digits")
}

/// The first `n` held-out digits, pixels scaled to 0..1 (value / 16).
fn held_out_digits(n: usize) -> Vec<f32> {
    let dir = digits().join("data");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".pgm"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for f in names.iter().take(n) {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        out.extend(bytes[bytes.len() - 64..].iter().map(|b| *b as f32 / 16.0));
    }
    out
}

fn batch_input(n: usize) -> Vec<f32> {
    (0..n * 64).map(|i| ((i * 7919) % 17) as f32 / 16.0).collect()
}

fn time<F: FnMut()>(rounds: usize, mut f: F) -> Duration {
    f();
    median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 5 } else { 15 };
    let model_path = digits().join("digits_mlp.onnx");

    // 1. Native tract, batch 32.
    let plan = tract_onnx::onnx()
        .model_for_path(&model_path)
        .unwrap()
        .with_input_fact(0, f32::fact([32, 64]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = Tensor::from_shape(&[32, 64], &batch_input(32)).unwrap();
    let native = time(rounds * 20, || {
        for _ in 0..100 {
            plan.run(tvec![input.clone().into_tvalue()]).unwrap();
        }
    }) / 100;

    // ... and through Wasm: 360 images = 12 batches of up to 32.
    let exec = Executor::new(Config::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let job = |repeat: usize| {
        let mut t = Task::from_path(common::sample("classify"));
        t.outputs = Some(out.path().to_path_buf());
        t.args = ["-m", "/model/digits_mlp.onnx", "-b", "32", "-i", &repeat.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        t.mounts.push(Mount::new(digits().join("data"), "/inputs"));
        t.mounts.push(Mount::new(digits(), "/model"));
        // The cost of going through Wasm, against the same engine natively.
        t.nn.mode = Mode::Fast;
        t
    };
    let (r1, r2) = (1usize, 21usize);
    let (t1, t2) = (job(r1), job(r2));
    let run = |t: &Task| {
        let o = exec.run(t).unwrap();
        assert!(o.success(), "{:?} {}", o.failure, String::from_utf8_lossy(&o.stderr.bytes));
        o.wall_time
    };
    let mut d1 = Vec::new();
    let mut d2 = Vec::new();
    for _ in 0..rounds {
        d1.push(run(&t1));
        d2.push(run(&t2));
    }
    let batches = 12 * (r2 - r1) as u32;
    let wasm = median(d2).saturating_sub(median(d1)) / batches;
    println!("wasi-nn CPU backend, digits MLP, batch 32 (12 batches x {} extra repeats):", r2 - r1);
    println!("  native tract            {:>9.1} us/batch", native.as_secs_f64() * 1e6);
    println!("  through Wasm (wasi-nn)  {:>9.1} us/batch", wasm.as_secs_f64() * 1e6);
    println!(
        "  ratio Wasm/native       {:>9.2}  (target <= 1.2; a batch of 32 moves 8 KiB in and 1.3 KiB out)",
        wasm.as_secs_f64() / native.as_secs_f64()
    );

    // 2. Exact against fast mode.
    let session = Session::new(true);
    let mm_flops = 2.0 * 256.0 * 256.0 * 256.0;
    let conv_flops = 2.0 * 8.0 * 32.0 * 32.0 * 32.0 * 16.0 * 9.0;
    let cases: [(&str, &str, Vec<usize>, f64); 3] = [
        ("digits MLP, batch 32", "digits_mlp.onnx", vec![32, 64], 2.0 * 32.0 * (64.0 * 64.0 + 64.0 * 10.0)),
        ("MatMul 256x256x256", "bench_matmul.onnx", vec![256, 256], mm_flops),
        ("Conv 8x16x32x32 -> 32, 3x3", "bench_conv.onnx", vec![8, 16, 32, 32], conv_flops),
    ];
    let mut targets = vec![(Target::Cpu, "CPU: exact (Shoal) vs fast (tract 0.23.9)".to_string())];
    match session.gpu() {
        Ok(g) => targets.push((
            Target::Gpu,
            format!(
                "GPU {} ({}, {} MiB): exact vs fast kernels",
                g.name,
                if g.software { "software" } else { "hardware" },
                g.memory_bytes >> 20
            ),
        )),
        Err(e) => println!("wasi-nn GPU: skipped ({e})"),
    }
    for (target, title) in targets {
        println!("wasi-nn {title}:");
        for (what, file, shape, flops) in &cases {
            let bytes = std::fs::read(digits().join(file)).unwrap();
            let n: usize = shape.iter().product();
            // The digits model gets digits (its weights for always-blank
            // pixels are near 2^-126, harmless against blank pixels); the
            // one-op models synthetic values.
            let x: Vec<f32> = if *file == "digits_mlp.onnx" {
                held_out_digits(shape[0])
            } else {
                (0..n).map(|i| ((i * 31) % 13) as f32 / 13.0 - 0.5).collect()
            };
            let mut exact = session.load_mode(&bytes, target, Mode::Exact).unwrap();
            let mut fast = session.load_mode(&bytes, target, Mode::Fast).unwrap();
            let reps = if flops < &1e7 { 50 } else { 1 };
            let run = |m: &mut shoal_runtime::nn::Model| {
                let t = Instant::now();
                for _ in 0..reps {
                    m.run(&[(shape, &x)]).unwrap();
                }
                t.elapsed() / reps
            };
            run(&mut exact);
            run(&mut fast);
            let (mut te, mut tf) = (Vec::new(), Vec::new());
            for _ in 0..if quick { 3 } else { 9 } {
                te.push(run(&mut exact));
                tf.push(run(&mut fast));
            }
            let (te, tf) = (median(te), median(tf));
            let g = |t: Duration| flops / t.as_secs_f64() / 1e9;
            println!(
                "  {what:<28} exact {:>9.1} us ({:>6.2} GFLOP/s)   fast {:>9.1} us ({:>6.2} GFLOP/s)   exact/fast {:>5.2}",
                te.as_secs_f64() * 1e6,
                g(te),
                tf.as_secs_f64() * 1e6,
                g(tf),
                te.as_secs_f64() / tf.as_secs_f64()
            );
        }
    }
}
