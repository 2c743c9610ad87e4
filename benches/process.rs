//! `shoal run` as a whole process, for a trivial job with a warm module
//! cache, against `shoal-bare-run` (load a precompiled module, instantiate,
//! run): medians of interleaved runs and their ratio (goal: within 2x).
//!
//! `make bench` runs it (`cargo bench --features bench-tools --bench process`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(cmd: &mut Command) -> Duration {
    let s = Instant::now();
    let out = cmd.output().expect("spawn");
    let d = s.elapsed();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    d
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new("make").arg("-C").arg(root.join("samples")).status().unwrap();
    assert!(st.success(), "building samples failed: run scripts/setup.sh --samples");
    let hello = root.join("samples/build/hello.wasm");
    let shoal = env!("CARGO_BIN_EXE_shoal");
    let bare = env!("CARGO_BIN_EXE_shoal-bare-run");
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(shoal).env("SHOAL_HOME", home.path()).args(["add", "-q"]).arg(&hello).output().unwrap();
    let cid = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let cwasm = home.path().join("hello.cwasm");
    run(Command::new(bare).arg("--precompile").arg(&hello).arg(&cwasm));
    let mut shoal_run = Command::new(shoal);
    shoal_run.env("SHOAL_HOME", home.path()).args(["run", "-q", &cid]);
    let mut bare_run = Command::new(bare);
    bare_run.arg(&cwasm);
    // Warm: the first `shoal run` compiles into the module cache.
    run(&mut shoal_run);
    run(&mut bare_run);
    let n = 30;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..n {
        a.push(run(&mut shoal_run));
        b.push(run(&mut bare_run));
    }
    let (a, b) = (median(a), median(b));
    println!("== `shoal run` as a process (trivial job, warm module cache), median of {n} interleaved runs");
    println!("shoal run -q CID          {a:>10.2?}  (store, spec, sandbox, result stored and pinned)");
    println!("shoal-bare-run (wasmtime) {b:>10.2?}  (load precompiled module, instantiate, run)");
    println!("ratio                     x{:.2}  (goal <= x2)", a.as_secs_f64() / b.as_secs_f64());
}
