//! wasi-nn: the trained digits model on the CPU (tract) and GPU (Vulkan;
//! lavapipe in CI) backends against onnxruntime's committed reference
//! outputs, the C classifier guest end to end, a hostile guest, the op set
//! and the limits.

mod common;

use std::path::{Path, PathBuf};

use shoal_runtime::job::{self, Input, Spec};
use shoal_runtime::nn::{Mode, NnError, Session, Target};
use shoal_runtime::{Config, Executor, Mount, TickSource};
use shoal_storage::importer::{Importer, Options};
use shoal_storage::{exporter, BlockStore, Cid, MemStore};

fn digits() -> PathBuf {
    common::samples_dir().join("digits")
}

fn model(name: &str) -> Vec<u8> {
    std::fs::read(digits().join(name)).unwrap()
}

/// The held-out images in file order, as the guest feeds them (value/16).
fn images() -> Vec<(String, Vec<f32>)> {
    let mut names: Vec<String> = std::fs::read_dir(digits().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pgm"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let bytes = std::fs::read(digits().join("data").join(&n)).unwrap();
            let px = &bytes[bytes.len() - 64..];
            (n, px.iter().map(|v| *v as f32 / 16.0).collect())
        })
        .collect()
}

/// A committed reference table: file, then `skip` columns, then floats.
fn reference(file: &str, skip: usize) -> Vec<(String, Vec<String>, Vec<f32>)> {
    std::fs::read_to_string(digits().join(file))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            let extra = cols[1..=skip].iter().map(|s| s.to_string()).collect();
            (cols[0].to_string(), extra, cols[1 + skip..].iter().map(|v| v.parse().unwrap()).collect())
        })
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Runs the digits MLP over every held-out image in one batch.
fn digits_probabilities(session: &Session, target: Target, mode: Mode) -> Vec<f32> {
    let imgs = images();
    let flat: Vec<f32> = imgs.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let mut m = session.load_mode(&model("digits_mlp.onnx"), target, mode).unwrap();
    let out = m.run(&[(&[imgs.len(), 64], &flat)]).unwrap();
    assert_eq!(out[0].0, vec![imgs.len(), 10]);
    out[0].1.clone()
}

#[test]
fn cpu_backends_match_onnxruntime_on_the_digits_model() {
    let session = Session::new(false);
    for mode in [Mode::Fast, Mode::Exact] {
        digits_against_onnxruntime(&digits_probabilities(&session, Target::Cpu, mode), &format!("CPU ({mode})"));
    }
}

fn digits_against_onnxruntime(probs: &[f32], what: &str) {
    let refs = reference("reference.tsv", 1);
    assert_eq!(refs.len() * 10, probs.len());
    let mut correct = 0;
    let mut worst = 0f32;
    for (i, (_, label, p)) in refs.iter().enumerate() {
        let ours = &probs[i * 10..i * 10 + 10];
        worst = worst.max(max_diff(ours, p));
        assert_eq!(argmax(ours), argmax(p), "image {i}: same class as onnxruntime");
        correct += (argmax(ours).to_string() == label[0]) as usize;
    }
    // Shoal's kernels, tract and onnxruntime sum in different orders: a
    // few ULP apart.
    eprintln!("digits_mlp: {what} vs onnxruntime, largest difference {worst:e}");
    assert!(worst < 1e-5, "largest difference from onnxruntime: {worst}");
    let accuracy = correct as f64 / refs.len() as f64;
    assert!(accuracy > 0.97, "accuracy {accuracy}");
}

fn add(store: &dyn BlockStore, path: &Path) -> Cid {
    Importer::new(store, Options::default()).add_path(path).unwrap().root
}

fn cat(store: &dyn BlockStore, root: &Cid, path: &str) -> String {
    let segs: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(String::from).collect();
    let cid = exporter::resolve(store, root, &segs).unwrap();
    let mut out = Vec::new();
    exporter::cat(store, &cid, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn gpu_executor() -> &'static Executor {
    static EXEC: std::sync::OnceLock<Executor> = std::sync::OnceLock::new();
    EXEC.get_or_init(|| {
        let mut cfg = Config::default();
        cfg.tick = TickSource::Thread { interval: std::time::Duration::from_millis(5) };
        cfg.max_concurrent_jobs = 4;
        // CI has no GPU: lavapipe runs the same shaders.
        cfg.allow_software_gpu = true;
        Executor::new(cfg).unwrap()
    })
}

/// Runs the classifier over the held-out digits by CID, the model mapped by
/// name; returns (stdout, predictions.tsv, devices).
fn classify_job(exec: &Executor, gpu: bool) -> (String, String, Vec<String>) {
    let store = MemStore::new();
    let mut spec = Spec::new(add(&store, &common::sample("classify")));
    spec.inputs.push(Input { cid: add(&store, &digits().join("data")), path: vec![], guest: "/inputs".into() });
    spec.models.push(("digits".into(), add(&store, &digits().join("digits_mlp.onnx"))));
    spec.gpu = gpu;
    let scratch = tempfile::tempdir().unwrap();
    let f = job::run(exec, &store, &spec, scratch.path()).unwrap();
    let stderr = cat(&store, &f.result, "stderr");
    assert_eq!(f.exit_status, 0, "{:?}\n{stderr}", f.outcome.failure);
    (cat(&store, &f.result, "stdout"), cat(&store, &f.outputs, "predictions.tsv"), f.outcome.nn_devices.clone())
}

/// Every prediction line against onnxruntime: same class, close score.
fn check_predictions(tsv: &str, tolerance: f32) {
    let refs = reference("reference.tsv", 1);
    let lines: Vec<&str> = tsv.lines().collect();
    assert_eq!(lines.len(), refs.len(), "one line per image");
    for (line, (file, _, p)) in lines.iter().zip(&refs) {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols[0], file);
        assert_eq!(cols[1], argmax(p).to_string(), "{file}: class");
        let score: f32 = cols[2].parse().unwrap();
        assert!((score - p[argmax(p)]).abs() < tolerance, "{file}: score {score} vs {}", p[argmax(p)]);
    }
}

#[test]
fn classifier_guest_runs_the_named_model_on_the_cpu_with_the_reference_accuracy() {
    let (stdout, tsv, devices) = classify_job(common::executor(), false);
    assert!(stdout.contains("classified 360 images in 12 batches"), "{stdout}");
    // onnxruntime's accuracy on the same held-out set is 0.9833 (354/360).
    assert!(stdout.contains("accuracy: 0.9833 (354/360)"), "{stdout}");
    check_predictions(&tsv, 1e-5);
    assert_eq!(devices, vec!["cpu: exact".to_string()]);
}

#[test]
fn classifier_guest_loads_a_model_it_read_from_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = common::task("classify", &["-m", "/model/digits_mlp.onnx", "-b", "100"]);
    t.mounts.push(Mount::new(digits().join("data"), "/inputs"));
    t.mounts.push(Mount::new(digits(), "/model"));
    t.outputs = Some(dir.path().to_path_buf());
    let o = common::executor().run(&t).unwrap();
    assert!(o.success(), "{:?} {}", o.failure, String::from_utf8_lossy(&o.stderr.bytes));
    assert!(common::stdout(&o).contains("accuracy: 0.9833"), "{}", common::stdout(&o));
    check_predictions(&std::fs::read_to_string(dir.path().join("predictions.tsv")).unwrap(), 1e-5);
}

#[test]
fn a_hostile_guest_gets_wasi_nn_errors_and_the_host_survives() {
    let mut t = common::task("nn_hostile", &["/model/digits_mlp.onnx"]);
    t.mounts.push(Mount::new(digits(), "/model"));
    let o = common::executor().run(&t).unwrap();
    let out = common::stdout(&o);
    let err = String::from_utf8_lossy(&o.stderr.bytes).into_owned();
    assert!(o.success(), "{:?}\n{out}\n{err}", o.failure);
    assert!(out.contains("every hostile call got an error"), "{out}");
    assert!(out.contains("set_input: huge dimensions: 7 (too large)"), "{out}");
    assert!(out.contains("load: model bytes out of memory: 1 (invalid argument)"), "{out}");
    assert!(out.contains("load_by_name: unknown name: 8 (not found)"), "{out}");
    // Each refusal is explained on the job's stderr.
    assert!(err.contains("shoal: wasi-nn load: model bytes: 4096 bytes at 0xfffffff0 lie outside"), "{err}");
    assert!(err.contains("shoal: wasi-nn set_input: a tensor of shape [4294967295"), "{err}");
    // The executor still runs jobs afterwards.
    let again = common::executor().run(&common::task("hello", &[])).unwrap();
    assert!(again.success());
}

#[test]
fn named_models_are_bounded_by_the_model_size_limit() {
    let store = MemStore::new();
    let mut spec = Spec::new(add(&store, &common::sample("classify")));
    spec.models.push(("digits".into(), add(&store, &digits().join("digits_mlp.onnx"))));
    spec.nn_limits.model_bytes = 1000;
    let scratch = tempfile::tempdir().unwrap();
    let e = job::run(common::executor(), &store, &spec, scratch.path()).unwrap_err();
    assert!(e.to_string().contains("more than the job's limit of 1000"), "{e}");
}

#[test]
fn cpu_intermediate_tensors_are_bounded_before_tract_allocates_them() {
    // The digits MLP's hidden layer for a batch of 128 is [128, 64] floats
    // (32 KiB); the input, [128, 64] too, would pass a 32 KiB limit alone.
    let mut t = common::task("classify", &["-m", "/model/digits_mlp.onnx", "-b", "128"]);
    t.mounts.push(Mount::new(digits().join("data"), "/inputs"));
    t.mounts.push(Mount::new(digits(), "/model"));
    t.nn.limits.tensor_bytes = 32 << 10;
    t.nn.limits.cpu_memory = 64 << 10;
    // Both CPU backends: tract (fast) and Shoal's kernels (exact).
    for mode in [Mode::Fast, Mode::Exact] {
        t.nn.mode = mode;
        let dir = tempfile::tempdir().unwrap();
        t.outputs = Some(dir.path().to_path_buf());
        let o = common::executor().run(&t).unwrap();
        assert!(!o.success());
        let err = String::from_utf8_lossy(&o.stderr.bytes).into_owned();
        assert!(
            err.contains("shoal: wasi-nn compute:")
                && err.contains("more than the job's CPU inference memory limit of 65536"),
            "{mode}: {err}"
        );
    }
}

#[test]
fn a_gpu_job_on_a_node_without_a_usable_gpu_fails_with_a_clear_message() {
    // Software devices are not allowed by default, and CI has no GPU.
    let exec = Executor::new(Config::default()).unwrap();
    if exec.gpu().map(|g| !g.software).unwrap_or(false) {
        return; // A real GPU: nothing to refuse here.
    }
    let mut t = common::task("hello", &[]);
    t.nn.gpu = true;
    let e = exec.run(&t).unwrap_err().to_string();
    assert!(e.starts_with("the job asks for a GPU (gpu: true), but this node has no usable GPU"), "{e}");
}

// --- GPU backend (Vulkan; lavapipe where there is no GPU) ---

fn gpu_session() -> Session {
    let s = Session::new(true);
    if let Err(e) = s.gpu() {
        panic!("no Vulkan device: {e} (scripts/setup.sh --vulkan installs lavapipe)");
    }
    s
}

#[test]
fn gpu_backend_runs_every_op_of_its_set_like_onnxruntime() {
    let s = gpu_session();
    let imgs = images();
    let flat: Vec<f32> = imgs[..32].iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let mut m = s.load(&model("ops_cnn.onnx"), Target::Gpu).unwrap();
    let out = m.run(&[(&[32, 1, 8, 8], &flat)]).unwrap();
    assert_eq!(out[0].0, vec![32, 10]);
    let refs = reference("ops_reference.tsv", 0);
    let expected: Vec<f32> = refs.iter().flat_map(|(_, _, v)| v.iter().copied()).collect();
    let d = max_diff(&out[0].1, &expected);
    assert!(d < 1e-5, "largest difference from onnxruntime: {d}");
    // And the CPU backend agrees with both.
    let mut cpu = s.load(&model("ops_cnn.onnx"), Target::Cpu).unwrap();
    let c = cpu.run(&[(&[32, 1, 8, 8], &flat)]).unwrap();
    let dc = max_diff(&c[0].1, &expected);
    let dcg = max_diff(&c[0].1, &out[0].1);
    eprintln!("ops_cnn: GPU vs onnxruntime {d:e}, CPU vs onnxruntime {dc:e}, CPU vs GPU {dcg:e}");
    assert!(dc < 1e-5 && dcg < 1e-5);
}

#[test]
fn fast_gpu_kernels_match_tract_on_the_digits_model_and_are_bit_reproducible() {
    let s = gpu_session();
    let gpu = digits_probabilities(&s, Target::Gpu, Mode::Fast);
    let cpu = digits_probabilities(&s, Target::Cpu, Mode::Fast);
    let d = max_diff(&gpu, &cpu);
    let refs: Vec<f32> = reference("reference.tsv", 1).iter().flat_map(|(_, _, v)| v.iter().copied()).collect();
    eprintln!("digits_mlp: CPU vs GPU {d:e}, GPU vs onnxruntime {:e}", max_diff(&gpu, &refs));
    assert!(d < 1e-5, "CPU vs GPU: {d}");
    for i in 0..gpu.len() / 10 {
        assert_eq!(argmax(&gpu[i * 10..i * 10 + 10]), argmax(&cpu[i * 10..i * 10 + 10]));
    }
    // Fixed-order reductions: the same device gives the same bits.
    let again = digits_probabilities(&Session::new(true), Target::Gpu, Mode::Fast);
    assert!(gpu.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn exact_mode_and_the_gpu_refuse_unsupported_ops_at_load_naming_them() {
    let s = gpu_session();
    for (target, mode) in [(Target::Gpu, Mode::Exact), (Target::Gpu, Mode::Fast), (Target::Cpu, Mode::Exact)] {
        let e = s.load_mode(&model("unsupported.onnx"), target, mode).unwrap_err();
        assert!(matches!(e, NnError::Unsupported(_)), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("do not support the op(s) Erf, LeakyRelu"), "{msg}");
        assert!(msg.contains("run this model with nn mode fast on the cpu target"), "{msg}");
    }
    // No silent fallback, but tract (fast mode on the CPU) runs it.
    let mut m = s.load_mode(&model("unsupported.onnx"), Target::Cpu, Mode::Fast).unwrap();
    let out = m.run(&[(&[1, 4], &[-1.0, 0.0, 0.5, 2.0])]);
    assert!(out.is_ok(), "{out:?}");
}

#[test]
fn gpu_memory_per_job_is_bounded() {
    let store = MemStore::new();
    let mut spec = Spec::new(add(&store, &common::sample("classify")));
    spec.inputs.push(Input { cid: add(&store, &digits().join("data")), path: vec![], guest: "/inputs".into() });
    spec.models.push(("digits".into(), add(&store, &digits().join("digits_mlp.onnx"))));
    spec.gpu = true;
    // The weights alone are ~17 KiB.
    spec.nn_limits.gpu_memory = 8 << 10;
    let scratch = tempfile::tempdir().unwrap();
    let f = job::run(gpu_executor(), &store, &spec, scratch.path()).unwrap();
    assert_ne!(f.exit_status, 0);
    let stderr = cat(&store, &f.result, "stderr");
    assert!(stderr.contains("shoal: wasi-nn compute:") && stderr.contains("GPU memory"), "{stderr}");
}

#[test]
fn gpu_work_per_inference_is_bounded_before_anything_is_submitted() {
    let store = MemStore::new();
    let mut spec = Spec::new(add(&store, &common::sample("classify")));
    spec.inputs.push(Input { cid: add(&store, &digits().join("data")), path: vec![], guest: "/inputs".into() });
    spec.models.push(("digits".into(), add(&store, &digits().join("digits_mlp.onnx"))));
    spec.gpu = true;
    // A batch of 32 is about 35 000 multiply-adds.
    spec.nn_limits.gpu_work = 10_000;
    let scratch = tempfile::tempdir().unwrap();
    let f = job::run(gpu_executor(), &store, &spec, scratch.path()).unwrap();
    assert_ne!(f.exit_status, 0);
    let stderr = cat(&store, &f.result, "stderr");
    assert!(stderr.contains("more than 10000 operations"), "{stderr}");
}

#[test]
fn classifier_guest_runs_on_the_gpu_backend() {
    let (stdout, tsv, devices) = classify_job(gpu_executor(), true);
    assert!(stdout.contains("accuracy: 0.9833 (354/360)"), "{stdout}");
    check_predictions(&tsv, 1e-5);
    assert_eq!(devices.len(), 1);
    assert!(devices[0].starts_with("gpu: "), "{devices:?}");
}

#[test]
fn probe_gpu_reports_what_a_node_would_announce() {
    // CI has lavapipe and no GPU: a software device, only when allowed.
    let any = shoal_runtime::nn::probe_gpu(true).expect("a Vulkan device (scripts/setup.sh --vulkan)");
    assert!(!any.name.is_empty());
    match shoal_runtime::nn::probe_gpu(false) {
        None => assert!(any.software, "{any:?}"),
        Some(hw) => assert!(!hw.software, "{hw:?}"),
    }
}

#[test]
fn gpu_matmul_tiles_cover_ragged_shapes() {
    // 37 rows: the last row of tiles is partial.
    let s = gpu_session();
    let bytes = std::fs::read(digits().join("bench_matmul.onnx")).unwrap();
    let x: Vec<f32> = (0..37 * 256).map(|i| ((i * 13) % 7) as f32 - 3.0).collect();
    let mut g = s.load(&bytes, Target::Gpu).unwrap();
    let mut c = s.load(&bytes, Target::Cpu).unwrap();
    let og = g.run(&[(&[37, 256], &x)]).unwrap();
    let oc = c.run(&[(&[37, 256], &x)]).unwrap();
    assert_eq!(og[0].0, vec![37, 256]);
    let scale = oc[0].1.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max_diff(&og[0].1, &oc[0].1) <= scale * 1e-5, "{}", max_diff(&og[0].1, &oc[0].1));
}

#[test]
fn gpu_conv_and_pool_variants_match_onnxruntime() {
    // SAME_UPPER with stride 2, a grouped dilated Conv whose groups hold 2
    // output channels (the one-channel-per-invocation path), padded pools.
    let s = gpu_session();
    let text = std::fs::read_to_string(digits().join("conv_reference.tsv")).unwrap();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let shape: Vec<usize> = lines.next().unwrap().split('\t').map(|v| v.parse().unwrap()).collect();
    let expected: Vec<f32> = lines.next().unwrap().split('\t').map(|v| v.parse().unwrap()).collect();
    let x: Vec<f32> = (0..2 * 64).map(|i| ((i * 7919) % 17) as f32 / 16.0 - 0.5).collect();
    let mut outs = Vec::new();
    for target in [Target::Gpu, Target::Cpu] {
        let mut m = s.load(&model("conv_variants.onnx"), target).unwrap();
        let out = m.run(&[(&[2, 1, 8, 8], &x)]).unwrap();
        assert_eq!(out[0].0, shape, "{target}");
        let d = max_diff(&out[0].1, &expected);
        eprintln!("conv_variants: {target} vs onnxruntime {d:e}");
        assert!(d < 1e-5, "{target}: largest difference from onnxruntime {d}");
        outs.push(out[0].1.clone());
    }
    eprintln!("conv_variants: CPU vs GPU {:e}", max_diff(&outs[0], &outs[1]));
}

#[test]
fn native_callers_get_errors_for_inconsistent_tensors_on_both_backends() {
    let s = gpu_session();
    for target in [Target::Cpu, Target::Gpu] {
        let mut m = s.load(&model("digits_mlp.onnx"), target).unwrap();
        let e = m.run(&[(&[4, 64], &[0.0; 10])]).unwrap_err();
        assert!(matches!(e, NnError::InvalidArgument(_)), "{target}: {e:?}");
        let e = m.run(&[(&[usize::MAX, 2], &[0.0; 10])]).unwrap_err();
        assert!(matches!(e, NnError::TooLarge(_) | NnError::InvalidArgument(_)), "{target}: {e:?}");
    }
}
