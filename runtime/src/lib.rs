//! # shoal-runtime
//!
//! Executes one sandboxed WASI preview1 job on one node. A job ([`Task`]) is a
//! core Wasm module plus its arguments, environment, read-only input mounts,
//! a writable `/outputs` directory and [`Limits`]. The [`Executor`] compiles
//! (or loads from its caches) the module, runs it under those limits and
//! returns an [`Outcome`]: exit code, captured stdout/stderr, the failure if
//! there was one, fuel consumed and wall time.
//!
//! Two kinds of problems are kept apart on purpose. Anything the *guest*
//! does wrong (trap, exhausted fuel, timeout, memory limit, bad module,
//! missing export, too much output) is a [`Failure`] inside an `Ok(Outcome)`:
//! the job ran and its result is "failed". An [`Error`] means the *host*
//! could not run the job at all (unreadable module file, missing mount, bad
//! cache directory, invalid task description), so a scheduler may retry it
//! elsewhere.
//!
//! By default a job is deterministic: fixed wall clock, stepping monotonic
//! clock, seeded randomness, canonical NaNs, sorted environment and sorted
//! directory listings (see `docs/runtime.md` for what this does and does not
//! guarantee).
//!
//! ```no_run
//! use shoal_runtime::{Config, Executor, Mount, Task};
//!
//! let exec = Executor::new(Config::default())?;
//! let mut task = Task::from_path("samples/build/wordcount.wasm");
//! task.mounts.push(Mount::new("/data/books", "/inputs"));
//! task.outputs = Some("/tmp/wordcount-out".into());
//! let outcome = exec.run(&task)?;
//! match &outcome.failure {
//!     None => print!("{}", String::from_utf8_lossy(&outcome.stdout.bytes)),
//!     Some(f) => eprintln!("job failed: {f}"),
//! }
//! # Ok::<(), shoal_runtime::Error>(())
//! ```
//!
//! ## Layout
//! - `config.rs`: [`Config`], the engine-wide settings (pool sizes, cache
//!   directory, epoch tick, float determinism) and the wasmtime `Config`
//!   built from them.
//! - `limits.rs`: [`Limits`], the per-job bounds and their defaults, and the
//!   `ResourceLimiter` that enforces the memory/table/instance ones.
//! - `task.rs`: [`Task`] and its parts ([`ModuleSource`], [`Entry`],
//!   [`Mount`], [`Mode`]).
//! - `outcome.rs`: [`Outcome`], [`Failure`], [`Captured`], [`OutputsUsage`].
//! - `error.rs`: [`Error`], host-side errors.
//! - `executor.rs`: [`Executor`], the engine, linker, caches and `run`.
//! - `cache.rs`: the in-memory `InstancePre` cache and the on-disk compiled
//!   module cache.
//! - `determinism.rs`: fixed/stepping clocks and the seeded PRNG.
//! - `nan.rs`: [`nan::canonicalize`], the load-time rewrite that makes
//!   arithmetic NaNs canonical only where their bits can be observed.
//! - `unroll.rs`: [`unroll::unroll_loops`], load-time unrolling of small
//!   float loops, so that they run fewer fuel and epoch checks.
//! - `capture.rs`: capped stdout/stderr pipes that record truncation.
//! - `shims.rs`: WASI calls replaced by our own versions (sorted
//!   `fd_readdir`, disabled `path_link`, deadline-aware `poll_oneoff`).
//! - `mounts.rs`: [`mounts::check_layout`], validation of guest paths and of a
//!   job's mount layout (public, so callers can check before importing
//!   data), and staging of single-file mounts.
//! - `outputs.rs`: measuring `/outputs` (bytes, files) without following links.
//! - `ticker.rs`: [`Ticker`], the epoch thread that drives timeouts
//!   (it ticks only while a guest runs).
//! - `nn/`: [`nn`], wasi-nn inference (CPU: tract, GPU: Vulkan); see
//!   `docs/wasi-nn.md`.
//! - `job.rs`: [`job::run`], jobs over content-addressed data: inputs
//!   fetched by CID, the result stored as one UnixFS directory and CID.

mod cache;
mod capture;
mod config;
mod determinism;
mod error;
mod executor;
pub mod job;
mod limits;
pub mod mounts;
pub mod nan;
pub mod nn;
mod outcome;
mod outputs;
mod shims;
mod task;
mod ticker;
pub mod unroll;

pub use config::{Config, FloatDeterminism, TickSource};
pub use error::Error;
pub use executor::Executor;
pub use limits::Limits;
pub use outcome::{Captured, Failure, Outcome, OutputLimit, OutputsUsage, Stream};
pub use task::{Cancel, Entry, Mode, ModuleSource, Mount, Task, Tee};
pub use ticker::Ticker;

/// Re-exported so that callers (and the benchmarks) can build a baseline
/// engine with exactly the settings the executor uses.
pub use wasmtime;
