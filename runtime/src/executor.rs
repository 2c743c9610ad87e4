//! The executor: one engine, one linker, the caches, and `run`.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Engine, ExternType, Instance, InstancePre, Linker, Module, Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::cache::{self, DiskCache, MemoryCache};
use crate::capture::CappedPipe;
use crate::config::{FloatDeterminism, TickSource};
use crate::determinism::{FixedWallClock, SeededRng, SteppingClock};
use crate::limits::Limiter;
use crate::mounts::{self, OUTPUTS_GUEST_PATH};
use crate::outcome::{Failure, Outcome, OutputLimit, OutputsUsage, Stream};
use crate::{outputs, Config, Entry, Error, Limits, Mode, ModuleSource, Task, Ticker};

/// Why the epoch callback stopped the guest.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Timeout,
    Outputs(OutputLimit),
    Cancelled,
}

/// Time and output watching driven by epoch ticks.
struct Watch {
    ticks_left: u64,
    step: u64,
    check_every: u64,
    outputs: Option<PathBuf>,
    max_bytes: u64,
    max_files: u64,
    stopped: Option<Stop>,
    /// Real-time deadline, for host calls that block (sleeps).
    deadline: Option<Instant>,
    /// Stops the guest at the next check when cancelled.
    cancel: Option<crate::Cancel>,
}

impl Watch {
    /// Called once per `step` ticks. Returns the next step, or `None` to
    /// stop the guest.
    fn on_ticks(&mut self) -> Option<u64> {
        if self.cancel.as_ref().is_some_and(crate::Cancel::is_cancelled) {
            self.stopped = Some(Stop::Cancelled);
            return None;
        }
        self.ticks_left = self.ticks_left.saturating_sub(self.step);
        if self.ticks_left == 0 {
            self.stopped = Some(Stop::Timeout);
            return None;
        }
        if let Some(dir) = &self.outputs {
            // An unreadable outputs dir is caught by the final check.
            if let Ok(u) = outputs::measure(dir, self.max_bytes, self.max_files) {
                if let Some(limit) = exceeded(&u, self.max_bytes, self.max_files) {
                    self.stopped = Some(Stop::Outputs(limit));
                    return None;
                }
            }
        }
        self.step = self.check_every.min(self.ticks_left).max(1);
        Some(self.step)
    }
}

fn exceeded(u: &OutputsUsage, max_bytes: u64, max_files: u64) -> Option<OutputLimit> {
    if u.bytes > max_bytes {
        Some(OutputLimit::OutputsBytes(max_bytes))
    } else if u.files > max_files {
        Some(OutputLimit::OutputsFiles(max_files))
    } else {
        None
    }
}

/// Per-job store state.
pub(crate) struct StoreData {
    wasi: WasiP1Ctx,
    limiter: Limiter,
    watch: Watch,
    listing: crate::shims::ListingCache,
    nn: crate::nn::JobNn,
}

impl crate::nn::abi::NnHost for StoreData {
    fn nn(&mut self) -> &mut crate::nn::JobNn {
        &mut self.nn
    }

    fn deadline(&self) -> Option<Instant> {
        self.watch.deadline
    }
}

fn wasi_of(d: &mut StoreData) -> &mut WasiP1Ctx {
    &mut d.wasi
}

impl crate::shims::ShimHost for StoreData {
    fn wasi(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }

    fn time_left(&self) -> Duration {
        self.watch.deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()))
    }

    fn timed_out(&mut self) {
        self.watch.stopped = Some(Stop::Timeout);
    }

    fn cancel(&self) -> Option<crate::Cancel> {
        self.watch.cancel.clone()
    }

    fn cancelled(&mut self) {
        self.watch.stopped = Some(Stop::Cancelled);
    }

    fn listing_cache(&mut self) -> &mut crate::shims::ListingCache {
        &mut self.listing
    }
}

/// A compiled, linked module ready to instantiate.
struct Prepared {
    pre: InstancePre<StoreData>,
    module: Module,
}

/// Runs jobs. Create one per process and share it (`&Executor` is
/// `Sync`): it owns the engine, the instance pool, the caches and the epoch
/// ticker.
pub struct Executor {
    engine: Engine,
    linker: Linker<StoreData>,
    config: Config,
    provided: HashSet<(String, String)>,
    memory_cache: MemoryCache<Prepared>,
    disk_cache: Option<DiskCache>,
    ticker: Option<Ticker>,
    /// Cache keys of recently seen in-memory module buffers, matched by
    /// `Arc` identity. Holding the `Arc` keeps the buffer alive, so an
    /// address can never be reused for different bytes. Saves hashing the
    /// module on every run of the same buffer (~0.1 ms per 150 KB).
    recent_keys: std::sync::Mutex<Vec<(Arc<[u8]>, cache::Key)>>,
    /// wasi-nn backends and prepared graphs, shared by all jobs.
    nn: Arc<crate::nn::Shared>,
    /// What is done to a module before compiling it, as named in cache keys
    /// (empty: nothing).
    transform: String,
}

/// How many module buffers' keys are remembered by identity.
const RECENT_KEYS: usize = 8;

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Executor {
    /// Builds the engine, linker and caches and, with
    /// [`TickSource::Thread`], starts the epoch ticker.
    pub fn new(config: Config) -> Result<Self, Error> {
        let engine = Engine::new(&config.wasmtime_config()).map_err(Error::engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, wasi_of).map_err(Error::engine)?;
        crate::shims::add_to_linker(&mut linker).map_err(Error::engine)?;
        crate::nn::abi::add_to_linker(&mut linker).map_err(Error::engine)?;
        let nn = Arc::new(crate::nn::Shared::new(config.allow_software_gpu, config.nn_cache_entries));
        // Remember what the linker provides so a link failure can name every
        // missing import, not just the first one wasmtime reports.
        let provided = {
            let mut store = Store::new(&engine, placeholder_data(nn.clone()));
            linker.iter(&mut store).map(|(m, n, _)| (m.to_owned(), n.to_owned())).collect()
        };
        let disk_cache = match &config.cache_dir {
            Some(dir) => Some(DiskCache::open(dir).map_err(|source| Error::Cache { path: dir.clone(), source })?),
            None => None,
        };
        let ticker = match config.tick {
            TickSource::Thread { interval } => Some(
                Ticker::start(engine.clone(), interval)
                    .map_err(|e| Error::Engine(format!("cannot start epoch ticker: {e}")))?,
            ),
            TickSource::Manual { .. } => None,
        };
        let mut transform = match config.float_determinism {
            FloatDeterminism::Rewrite => format!("nan-rewrite v{};", crate::nan::REWRITE_VERSION),
            _ => String::new(),
        };
        if config.unroll_loops {
            transform.push_str(&format!("unroll v{};", crate::unroll::UNROLL_VERSION));
        }
        Ok(Executor {
            engine,
            linker,
            memory_cache: MemoryCache::new(config.memory_cache_entries),
            config,
            provided,
            disk_cache,
            ticker,
            recent_keys: std::sync::Mutex::new(Vec::new()),
            nn,
            transform,
        })
    }

    /// The engine, e.g. to build a baseline with the same settings.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The settings this executor was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The GPU wasi-nn's `gpu` target runs on, opening it on first use;
    /// the reason when there is none.
    pub fn gpu(&self) -> Result<crate::nn::GpuInfo, String> {
        self.nn.gpu()
    }

    /// Advances the epoch by one tick; for [`TickSource::Manual`].
    pub fn tick(&self) {
        self.engine.increment_epoch();
    }

    /// Stops the epoch ticker thread, if any. Running jobs then no longer
    /// time out; meant for orderly shutdown.
    pub fn stop_ticker(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.stop();
        }
    }

    /// Compiles `module` (or finds it in a cache) without running it. A
    /// module that cannot be used is reported as `Ok(Err(failure))`.
    pub fn precompile(&self, module: &ModuleSource) -> Result<Result<(), Failure>, Error> {
        let bytes = load_bytes(module)?;
        let key = self.key(module, &bytes);
        Ok(self.prepare(key, &bytes).map(|_| ()))
    }

    /// Runs one job to completion. Guest failures are in the outcome;
    /// `Err` means the job could not be run.
    pub fn run(&self, task: &Task) -> Result<Outcome, Error> {
        // The epoch advances only while some guest runs (see `ticker`).
        let _ticking = self.ticker.as_ref().map(Ticker::busy);
        // wasmtime and wasmtime-wasi may panic on internal bugs; a panic
        // must not take the node down with it.
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.run_inner(task))) {
            Ok(r) => r,
            Err(panic) => {
                Err(Error::Engine(format!("internal error (a bug) while running the job: {}", panic_message(&*panic))))
            }
        }
    }

    fn run_inner(&self, task: &Task) -> Result<Outcome, Error> {
        let deterministic = matches!(task.mode, Mode::Deterministic { .. });
        let bytes = load_bytes(&task.module)?;
        let env = checked_env(&task.env)?;
        for a in task.args.iter().chain([&task.program_name]) {
            if a.contains('\0') {
                return Err(Error::InvalidTask(format!("argument {a:?} contains NUL")));
            }
        }
        let key = self.key(&task.module, &bytes);
        let (prepared, cached) = match self.prepare(key, &bytes) {
            Ok(p) => p,
            Err(f) => return Ok(Outcome::failed(f, deterministic)),
        };
        if task.nn.gpu {
            // A GPU job on a node without one cannot run here; another node
            // may run it, so this is the host's error, not the job's.
            self.nn.gpu().map_err(Error::NoGpu)?;
        }
        let staged = mounts::stage(&task.mounts)?;
        if let Some(out) = &task.outputs {
            std::fs::create_dir_all(out).map_err(|source| Error::Outputs { path: out.clone(), source })?;
        }

        let limits = &task.limits;
        let stdout = CappedPipe::new(limits.stdout).with_tee(Stream::Stdout, task.tee.clone());
        let stderr = CappedPipe::new(limits.stderr).with_tee(Stream::Stderr, task.tee.clone());
        let mut b = WasiCtxBuilder::new();
        // Files are accessed on the job's own thread: no thread pool hop per
        // read, and nothing outlives the job.
        b.allow_blocking_current_thread(true)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .arg(&task.program_name)
            .args(&task.args)
            .envs(&env);
        for (host, guest) in &staged.dirs {
            b.preopened_dir(host, guest, FsPerms::ReadOnly).map_err(|e| Error::Mount {
                host: host.clone(),
                guest: guest.clone(),
                source: std::io::Error::other(format!("{e:#}")),
            })?;
        }
        if let Some(out) = &task.outputs {
            b.preopened_dir(out, OUTPUTS_GUEST_PATH, FsPerms::ReadWrite)
                .map_err(|e| Error::Outputs { path: out.clone(), source: std::io::Error::other(format!("{e:#}")) })?;
        }
        if let Mode::Deterministic { seed } = &task.mode {
            b.wall_clock(FixedWallClock)
                .monotonic_clock(SteppingClock::default())
                .secure_random(SeededRng::new(seed, 0))
                .insecure_random(SeededRng::new(seed, 1))
                .insecure_random_seed(u128::from_le_bytes(seed[..16].try_into().unwrap_or_default()));
        }

        let tick = self.config.tick.interval().max(Duration::from_nanos(1));
        let ticks = |d: Duration| (d.as_nanos().div_ceil(tick.as_nanos())).clamp(1, u64::MAX as u128) as u64;
        let timeout_ticks = ticks(limits.timeout);
        let check_every = ticks(limits.outputs_check_interval);
        let first_step = check_every.min(timeout_ticks);
        let data = StoreData {
            wasi: b.build_p1(),
            limiter: Limiter::new(limits, self.config.max_memory),
            watch: Watch {
                ticks_left: timeout_ticks,
                step: first_step,
                check_every,
                outputs: task.outputs.clone(),
                max_bytes: limits.outputs_bytes,
                max_files: limits.outputs_files,
                stopped: None,
                deadline: Instant::now().checked_add(limits.timeout),
                cancel: task.cancel.clone(),
            },
            listing: Default::default(),
            nn: crate::nn::JobNn::new(self.nn.clone(), Arc::new(task.nn.clone()), Some(stderr.clone())),
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|d| &mut d.limiter);
        store.set_fuel(limits.fuel).map_err(Error::engine)?;
        // Cancelled already: the first epoch check (at the entry) stops it.
        let cancelled = task.cancel.as_ref().is_some_and(crate::Cancel::is_cancelled);
        store.set_epoch_deadline(if cancelled { 0 } else { first_step });
        store.epoch_deadline_callback(|mut ctx| match ctx.data_mut().watch.on_ticks() {
            Some(next) => Ok(UpdateDeadline::Continue(next)),
            None => Ok(UpdateDeadline::Interrupt),
        });

        let started = Instant::now();
        let result = match prepared.pre.instantiate(&mut store) {
            Ok(instance) => call_entry(&mut store, instance, &prepared.module, &task.entry),
            Err(e) if e.downcast_ref::<Trap>().is_some() || store.data().limiter.memory_refused => {
                Err(CallError::Wasm(e))
            }
            // Pool exhaustion and similar: not the guest's fault.
            Err(e) => {
                return Err(Error::Engine(format!(
                    "cannot instantiate the job ({} jobs may run at once: retry later or raise \
                     Config::max_concurrent_jobs): {e:#}",
                    self.config.max_concurrent_jobs
                )))
            }
        };
        let wall_time = started.elapsed();
        let fuel_left = store.get_fuel().unwrap_or(0);
        let fuel_consumed = limits.fuel.saturating_sub(fuel_left);

        let (exit_code, mut failure) = classify(result, &store, limits, &stdout, &stderr);
        let nn_devices = store.data().nn.devices.iter().cloned().collect();
        drop(store);
        drop(staged);

        let mut usage = OutputsUsage::default();
        if let Some(out) = &task.outputs {
            usage = outputs::measure(out, limits.outputs_bytes, limits.outputs_files)
                .map_err(|source| Error::Outputs { path: out.clone(), source })?;
            if failure.is_none() {
                failure =
                    exceeded(&usage, limits.outputs_bytes, limits.outputs_files).map(Failure::OutputLimitExceeded);
            }
        }
        Ok(Outcome {
            exit_code,
            failure,
            stdout: stdout.take(),
            stderr: stderr.take(),
            fuel_consumed,
            wall_time,
            deterministic,
            outputs: usage,
            cached,
            nn_devices,
        })
    }

    fn key(&self, source: &ModuleSource, bytes: &Arc<[u8]>) -> cache::Key {
        if !matches!(source, ModuleSource::Bytes(_)) {
            // A file is read into a fresh buffer every time: nothing to
            // remember it by.
            return cache::key(&self.engine, &self.transform, bytes);
        }
        let mut recent = self.recent_keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, k)) = recent.iter().find(|(b, _)| Arc::ptr_eq(b, bytes)) {
            return *k;
        }
        let k = cache::key(&self.engine, &self.transform, bytes);
        recent.insert(0, (bytes.clone(), k));
        recent.truncate(RECENT_KEYS);
        k
    }

    /// The prepared module for `bytes` and whether it came from a cache.
    fn prepare(&self, key: cache::Key, bytes: &[u8]) -> Result<(Arc<Prepared>, bool), Failure> {
        if let Some(p) = self.memory_cache.get(&key) {
            return Ok((p, true));
        }
        check_magic(bytes)?;
        let mut cached = false;
        let module = match self.disk_cache.as_ref().and_then(|c| c.load(&self.engine, &key)) {
            Some(m) => {
                cached = true;
                m
            }
            None => {
                let m = self.compile(bytes)?;
                if let Some(c) = &self.disk_cache {
                    // A cache that cannot be written only costs speed.
                    if let Err(e) = c.store(&key, &m) {
                        tracing::warn!(error = %e, "cannot write module cache entry");
                    }
                }
                m
            }
        };
        let pre = self.linker.instantiate_pre(&module).map_err(|e| {
            let missing: Vec<String> = module
                .imports()
                .filter(|i| !self.provided.contains(&(i.module().to_owned(), i.name().to_owned())))
                .map(|i| format!("{}::{}", i.module(), i.name()))
                .collect();
            if missing.is_empty() {
                Failure::Link(format!("{e:#}"))
            } else {
                Failure::MissingImports { missing }
            }
        })?;
        let p = Arc::new(Prepared { pre, module });
        self.memory_cache.insert(key, p.clone());
        Ok((p, cached))
    }
}

impl Executor {
    /// Compiles `bytes`, after the NaN rewrite and the loop unrolling when
    /// the configuration asks for them. The code of the transformed module
    /// is what the caches keep.
    fn compile(&self, bytes: &[u8]) -> Result<Module, Failure> {
        let invalid = |e: wasmtime::Error| Failure::InvalidModule(format!("{e:#}"));
        let transformed = (|| {
            let mut b = std::borrow::Cow::Borrowed(bytes);
            if self.config.float_determinism == FloatDeterminism::Rewrite {
                b = std::borrow::Cow::Owned(crate::nan::canonicalize(&b)?);
            }
            if self.config.unroll_loops {
                b = std::borrow::Cow::Owned(crate::unroll::unroll_loops(&b)?);
            }
            Ok::<_, crate::nan::RewriteError>(b)
        })();
        match transformed {
            Ok(b) => Module::new(&self.engine, &b).map_err(invalid),
            // Let wasmtime explain what is wrong with a module it rejects
            // anyway; only a valid module that a transformation cannot
            // handle gets the transformation's message.
            Err(e) => match Module::validate(&self.engine, bytes) {
                Err(v) => Err(invalid(v)),
                Ok(()) => Err(Failure::InvalidModule(e.to_string())),
            },
        }
    }
}

fn placeholder_data(nn: Arc<crate::nn::Shared>) -> StoreData {
    StoreData {
        wasi: WasiCtxBuilder::new().build_p1(),
        limiter: Limiter::new(&Limits::default(), 0),
        watch: Watch {
            ticks_left: 1,
            step: 1,
            check_every: 1,
            outputs: None,
            max_bytes: 0,
            max_files: 0,
            stopped: None,
            deadline: None,
            cancel: None,
        },
        listing: Default::default(),
        nn: crate::nn::JobNn::new(nn, Arc::default(), None),
    }
}

fn load_bytes(module: &ModuleSource) -> Result<Arc<[u8]>, Error> {
    match module {
        ModuleSource::Bytes(b) => Ok(b.clone()),
        ModuleSource::Path(p) => {
            std::fs::read(p).map(Arc::from).map_err(|source| Error::ReadModule { path: p.clone(), source })
        }
    }
}

fn check_magic(bytes: &[u8]) -> Result<(), Failure> {
    if !bytes.starts_with(b"\0asm") {
        return Err(Failure::InvalidModule("not a wasm file (missing the \\0asm magic number)".to_owned()));
    }
    if bytes.get(4..8) == Some(&[0x0d, 0x00, 0x01, 0x00]) {
        return Err(Failure::InvalidModule(
            "this is a Wasm component; only core modules (WASI preview1) are supported".to_owned(),
        ));
    }
    Ok(())
}

/// Sorted, validated environment.
fn checked_env(env: &[(String, String)]) -> Result<Vec<(String, String)>, Error> {
    let mut env = env.to_vec();
    env.sort();
    for (i, (k, v)) in env.iter().enumerate() {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(Error::InvalidTask(format!(
                "environment variable {k:?} is invalid: names must be non-empty without = or NUL"
            )));
        }
        if i > 0 && env[i - 1].0 == *k {
            return Err(Error::InvalidTask(format!("environment variable {k:?} is set twice")));
        }
    }
    Ok(env)
}

enum CallError {
    Wasm(wasmtime::Error),
    Missing(Failure),
}

/// Calls the job's entry; `Ok(code)` when it returned normally.
fn call_entry(
    store: &mut Store<StoreData>,
    instance: Instance,
    module: &Module,
    entry: &Entry,
) -> Result<i32, CallError> {
    let missing = |name: &str, reason: &str| {
        CallError::Missing(Failure::MissingExport {
            name: name.to_owned(),
            reason: reason.to_owned(),
            available: module
                .exports()
                .filter(|e| matches!(e.ty(), ExternType::Func(_)))
                .map(|e| e.name().to_owned())
                .collect(),
        })
    };
    let get = |store: &mut Store<StoreData>, name: &str| {
        instance.get_func(&mut *store, name).ok_or_else(|| missing(name, "not exported as a function"))
    };
    match entry {
        Entry::Command { export } => {
            let f = get(store, export)?
                .typed::<(), ()>(&*store)
                .map_err(|_| missing(export, "must take no parameters and return nothing"))?;
            f.call(&mut *store, ()).map_err(CallError::Wasm)?;
            Ok(0)
        }
        Entry::Reactor { export } => {
            if let Some(init) = instance.get_func(&mut *store, "_initialize") {
                let init = init
                    .typed::<(), ()>(&*store)
                    .map_err(|_| missing("_initialize", "must take no parameters and return nothing"))?;
                init.call(&mut *store, ()).map_err(CallError::Wasm)?;
            }
            let f = get(store, export)?;
            if let Ok(t) = f.typed::<(), ()>(&*store) {
                t.call(&mut *store, ()).map_err(CallError::Wasm)?;
                Ok(0)
            } else if let Ok(t) = f.typed::<(), i32>(&*store) {
                t.call(&mut *store, ()).map_err(CallError::Wasm)
            } else {
                Err(missing(export, "must take no parameters and return nothing or one i32"))
            }
        }
    }
}

/// Turns the raw result into exit code and failure. The order matters: a
/// limit the host enforced explains a trap better than the trap does.
fn classify(
    result: Result<i32, CallError>,
    store: &Store<StoreData>,
    limits: &Limits,
    stdout: &CappedPipe,
    stderr: &CappedPipe,
) -> (Option<i32>, Option<Failure>) {
    let data = store.data();
    let memory_failure = || {
        (data.limiter.memory_refused || data.limiter.table_refused)
            .then_some(Failure::MemoryLimit { limit: limits.memory })
    };
    let err = match result {
        Ok(0) => return (Some(0), None),
        Ok(code) => return (Some(code), Some(memory_failure().unwrap_or(Failure::Exit(code)))),
        Err(CallError::Missing(f)) => return (None, Some(f)),
        Err(CallError::Wasm(e)) => e,
    };
    if let Some(stop) = data.watch.stopped {
        let f = match stop {
            Stop::Timeout => Failure::Timeout { limit: limits.timeout },
            Stop::Outputs(l) => Failure::OutputLimitExceeded(l),
            Stop::Cancelled => Failure::Cancelled,
        };
        return (None, Some(f));
    }
    if stdout.overflowed() {
        let l = OutputLimit::Stream(Stream::Stdout, limits.stdout);
        return (None, Some(Failure::OutputLimitExceeded(l)));
    }
    if stderr.overflowed() {
        let l = OutputLimit::Stream(Stream::Stderr, limits.stderr);
        return (None, Some(Failure::OutputLimitExceeded(l)));
    }
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        let code = exit.0;
        if code == 0 {
            return (Some(0), None);
        }
        return (Some(code), Some(memory_failure().unwrap_or(Failure::Exit(code))));
    }
    if let Some(Trap::OutOfFuel) = err.downcast_ref::<Trap>() {
        return (None, Some(Failure::OutOfFuel { limit: limits.fuel }));
    }
    if let Some(f) = memory_failure() {
        return (None, Some(f));
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        let backtrace = err.downcast_ref::<WasmBacktrace>().map(|bt| bt.to_string()).unwrap_or_default();
        return (None, Some(Failure::Trap { message: trap.to_string(), backtrace }));
    }
    (None, Some(Failure::Other(format!("{err:#}"))))
}

/// The message a caught panic carried (`panic!` with a literal or a
/// formatted string), for turning host bugs into errors.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
