//! `shoal run` with wasi-nn: a model mapped by name, on the CPU and on the
//! GPU backend (lavapipe where there is no GPU), and a GPU job on a node
//! that has no usable GPU.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn classify() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let st = Command::new("make").arg("-C").arg(root().join("samples")).status().expect("make");
        assert!(st.success(), "building samples failed: run scripts/setup.sh --samples");
    });
    root().join("samples/build/classify.wasm")
}

fn shoal(home: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let model = format!("digits={}", root().join("samples/digits/digits_mlp.onnx").display());
    let data = format!("{}:/inputs", root().join("samples/digits/data").display());
    let mut args = vec!["run", "--model", &model, "--input", &data];
    args.extend(extra);
    let wasm = classify();
    args.push(wasm.to_str().unwrap());
    let mut c = Command::new(env!("CARGO_BIN_EXE_shoal"));
    c.env("SHOAL_HOME", home).args(&args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn shoal_run_classifies_the_digits_on_the_cpu_and_the_gpu() {
    let t = tempfile::tempdir().unwrap();
    let cpu = shoal(t.path(), &[], &[]);
    assert!(cpu.status.success(), "{}", text(&cpu.stderr));
    let out = text(&cpu.stdout);
    assert!(out.contains("accuracy: 0.9833 (354/360)"), "{out}");
    assert!(out.contains("wasi-nn device: cpu: exact"), "exact is the default: {out}");
    let fast = shoal(t.path(), &["--nn-mode", "fast"], &[]);
    assert!(fast.status.success(), "{}", text(&fast.stderr));
    let out = text(&fast.stdout);
    assert!(out.contains("accuracy: 0.9833 (354/360)"), "{out}");
    assert!(out.contains("wasi-nn device: cpu: tract 0.23.9 (fast)"), "{out}");

    let gpu = shoal(t.path(), &["--gpu", "--allow-software-gpu"], &[]);
    assert!(gpu.status.success(), "{}", text(&gpu.stderr));
    let out = text(&gpu.stdout);
    assert!(out.contains("accuracy: 0.9833 (354/360)"), "{out}");
    assert!(out.contains("wasi-nn device: gpu: ") && out.contains("(exact)"), "{out}");

    // Target auto: the GPU when one runs exact inference, else the CPU,
    // with the same result either way.
    let result = |o: &Output| text(&o.stdout).lines().last().unwrap_or_default().to_owned();
    let on_cpu = shoal(t.path(), &["--nn-target", "auto", "-q"], &[]);
    let on_gpu = shoal(t.path(), &["--nn-target", "auto", "--allow-software-gpu", "-q"], &[]);
    assert!(on_cpu.status.success() && on_gpu.status.success(), "{}{}", text(&on_cpu.stderr), text(&on_gpu.stderr));
    assert_eq!(result(&on_cpu), result(&on_gpu));
    let bad = shoal(t.path(), &["--nn-target", "auto", "--nn-mode", "fast"], &[]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("--nn-target auto needs --nn-mode exact"));
}

#[test]
fn a_gpu_job_without_any_vulkan_device_fails_clearly() {
    let t = tempfile::tempdir().unwrap();
    // No driver at all: the loader finds no device.
    let o = shoal(
        t.path(),
        &["--gpu", "--allow-software-gpu"],
        &[("VK_DRIVER_FILES", "/nonexistent/icd.json"), ("VK_ICD_FILENAMES", "/nonexistent/icd.json")],
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("the job asks for a GPU (gpu: true), but this node has no usable GPU"), "{err}");
    // Without --gpu the same node runs the job on the CPU.
    let o = shoal(t.path(), &[], &[("VK_DRIVER_FILES", "/nonexistent/icd.json")]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}
