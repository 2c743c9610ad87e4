//! Engine-wide settings. These are fixed for the lifetime of an
//! [`Executor`](crate::Executor) because they shape compiled code and the
//! instance pool; per-job bounds live in [`Limits`](crate::Limits).

use std::path::PathBuf;
use std::time::Duration;

use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

/// Who advances the engine's epoch, which is what timeouts and the periodic
/// `/outputs` check are measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TickSource {
    /// A background [`Ticker`](crate::Ticker) thread ticks every `interval`
    /// while a guest runs (an idle executor costs no wakeups).
    Thread {
        /// Time between ticks. Default: 10 ms, which bounds how late a
        /// timeout fires.
        interval: Duration,
    },
    /// Nobody ticks automatically: the caller calls
    /// [`Executor::tick`](crate::Executor::tick). `nominal_interval` is used
    /// to turn [`Limits::timeout`](crate::Limits::timeout) into ticks. Meant
    /// for tests that need a deterministic notion of time.
    Manual {
        /// The duration one manual tick stands for.
        nominal_interval: Duration,
    },
}

impl TickSource {
    pub(crate) fn interval(self) -> Duration {
        match self {
            TickSource::Thread { interval } => interval,
            TickSource::Manual { nominal_interval } => nominal_interval,
        }
    }
}

impl Default for TickSource {
    fn default() -> Self {
        TickSource::Thread { interval: Duration::from_millis(10) }
    }
}

/// How NaN bit patterns are kept deterministic (see `docs/runtime.md`,
/// "Determinism").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FloatDeterminism {
    /// Rewrite each module at load time ([`crate::nan::canonicalize`]) so
    /// that an arithmetic NaN is made canonical only where its bits could be
    /// observed (stores, reinterpretations, sign operations, the host
    /// boundary); arithmetic runs natively. Relaxed SIMD in its
    /// deterministic mode. The default.
    #[default]
    Rewrite,
    /// Cranelift's `nan_canonicalization`: a check after every float
    /// arithmetic instruction (the previous default, 1.8x slower on
    /// float-heavy loops). Relaxed SIMD in its deterministic mode.
    Cranelift,
    /// Native NaN bits: float-heavy jobs are then not reproducible across
    /// CPUs (every other float result still is).
    Off,
}

/// Settings of one [`Executor`](crate::Executor).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Directory for compiled modules (`<key>.cwasm`). `None` disables the
    /// on-disk cache. Default: `None`.
    pub cache_dir: Option<PathBuf>,
    /// How many prepared modules (`InstancePre`) are kept in memory so that a
    /// warm process skips hashing-to-disk and linking. Default: 64.
    pub memory_cache_entries: usize,
    /// Jobs that may run at the same time: the size of the instance pool
    /// (instances, memories, tables, stacks). A job beyond this waits for
    /// nothing: it fails to instantiate, reported as an [`Error`](crate::Error).
    /// Default: 16.
    pub max_concurrent_jobs: u32,
    /// Largest linear memory any job may be given; per-job
    /// [`Limits::memory`](crate::Limits::memory) is capped by it. Each pool
    /// slot reserves this much address space (not RAM). Default: 4 GiB.
    pub max_memory: u64,
    /// Largest table any job may have, in elements. Default: 1 000 000.
    pub max_table_elements: usize,
    /// Wasm stack size available to guests. Default: 1 MiB.
    pub max_wasm_stack: usize,
    /// How NaNs are made deterministic (and relaxed SIMD, unless `Off`).
    /// This shapes compiled code, so it is engine-wide; it applies to
    /// nondeterministic jobs too unless turned off here. Default:
    /// [`FloatDeterminism::Rewrite`].
    pub float_determinism: FloatDeterminism,
    /// Unroll small innermost loops that do float arithmetic at load time
    /// ([`crate::unroll::unroll_loops`]), which divides the fuel and epoch
    /// checks they execute by two or four (see `docs/runtime.md`,
    /// "Performance"). Default: `true`.
    pub unroll_loops: bool,
    /// Epoch source. Default: a thread ticking every 10 ms while a guest
    /// runs.
    pub tick: TickSource,
    /// Let wasi-nn's `gpu` target use a software Vulkan device (lavapipe)
    /// when the node has no hardware GPU: correct but slow, so a node must
    /// opt in. Default: `false`.
    pub allow_software_gpu: bool,
    /// Prepared wasi-nn graphs kept in memory, by model CID and target.
    /// Default: 16.
    pub nn_cache_entries: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cache_dir: None,
            memory_cache_entries: 64,
            max_concurrent_jobs: 16,
            max_memory: 4 << 30,
            max_table_elements: 1_000_000,
            max_wasm_stack: 1 << 20,
            float_determinism: FloatDeterminism::default(),
            unroll_loops: true,
            tick: TickSource::default(),
            allow_software_gpu: false,
            nn_cache_entries: 16,
        }
    }
}

impl Config {
    /// The wasmtime configuration the executor's engine is built from,
    /// exposed so that benchmarks can run a baseline with identical
    /// settings. Fuel and epoch interruption are always on: they are how
    /// the CPU and time limits are enforced.
    pub fn wasmtime_config(&self) -> wasmtime::Config {
        let mut cfg = self.wasmtime_config_without_pooling();
        let mut pool = PoolingAllocationConfig::new();
        let jobs = self.max_concurrent_jobs.max(1);
        pool.total_core_instances(jobs)
            .total_memories(jobs)
            // Reference-types modules may declare several tables.
            .total_tables(jobs.saturating_mul(4))
            .max_tables_per_module(4)
            .max_memories_per_module(1)
            .total_stacks(jobs)
            .total_gc_heaps(jobs)
            .table_elements(self.max_table_elements)
            .max_memory_size(usize::try_from(self.max_memory).unwrap_or(usize::MAX))
            // Large real-world modules (CPython, compilers) have big vmctx
            // areas; the 1 MiB default refuses them.
            .max_core_instance_size(16 << 20)
            .max_component_instance_size(16 << 20)
            .total_component_instances(0);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        cfg
    }

    /// Same as [`Config::wasmtime_config`] but with the on-demand instance
    /// allocator, for baselines that want to isolate the pool's effect.
    pub fn wasmtime_config_without_pooling(&self) -> wasmtime::Config {
        let mut cfg = wasmtime::Config::new();
        // Threads (shared memories, atomics waits) are off by construction:
        // wasmtime is built without its `threads` feature.
        cfg.strategy(Strategy::Cranelift)
            .wasm_bulk_memory(true)
            .wasm_simd(true)
            .wasm_relaxed_simd(true)
            .wasm_multi_value(true)
            .wasm_reference_types(true)
            .wasm_exceptions(true)
            .wasm_multi_memory(false)
            .wasm_memory64(false)
            .max_wasm_stack(self.max_wasm_stack)
            .cranelift_nan_canonicalization(self.float_determinism == FloatDeterminism::Cranelift)
            .relaxed_simd_deterministic(self.float_determinism != FloatDeterminism::Off)
            .consume_fuel(true)
            .epoch_interruption(true)
            .parallel_compilation(true);
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"\0asm\x01\0\0\0";

    fn validates(sections: &[u8]) -> bool {
        let engine = wasmtime::Engine::new(&Config::default().wasmtime_config()).unwrap();
        let bytes = [HEADER, sections].concat();
        wasmtime::Module::validate(&engine, &bytes).is_ok()
    }

    #[test]
    fn exceptions_and_simd_on_threads_off() {
        // type section: one func type [] -> []; tag section: one tag of it.
        assert!(validates(&[1, 4, 1, 0x60, 0, 0, 13, 3, 1, 0, 0]));
        // type section: [] -> [v128].
        assert!(validates(&[1, 5, 1, 0x60, 0, 1, 0x7b]));
        // multi-value: [] -> [i32 i32].
        assert!(validates(&[1, 6, 1, 0x60, 0, 2, 0x7f, 0x7f]));
        // memory section: one shared memory (min 1, max 1) needs threads.
        assert!(!validates(&[5, 4, 1, 3, 1, 1]));
        // Sanity: the same memory unshared is fine.
        assert!(validates(&[5, 4, 1, 1, 1, 1]));
    }
}
