//! Per-job bounds and the `ResourceLimiter` enforcing the structural ones.

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Bounds on one job. Every field has a documented default; see also
/// `docs/runtime.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Linear memory, in bytes. Growth beyond it fails (`memory.grow`
    /// returns -1, so `malloc` returns NULL); if the job then fails, the
    /// failure is reported as [`Failure::MemoryLimit`](crate::Failure).
    /// Capped by [`Config::max_memory`](crate::Config::max_memory).
    /// Default: 512 MiB.
    pub memory: u64,
    /// Elements per table. Default: 100 000.
    pub table_elements: usize,
    /// Instances per job. Default: 4.
    pub instances: usize,
    /// Tables per job. Default: 4.
    pub tables: usize,
    /// Memories per job. Default: 1.
    pub memories: usize,
    /// CPU budget in fuel units (roughly one per Wasm instruction).
    /// Deterministic: the same job runs out at the same point everywhere.
    /// Default: 500 000 000 000 (several minutes of CPU).
    pub fuel: u64,
    /// Wall-clock budget, enforced by epoch interruption with the
    /// precision of one tick (10 ms by default). Not deterministic.
    /// Default: 60 s.
    pub timeout: Duration,
    /// Bytes of stdout kept. Writing more ends the job with
    /// [`Failure::OutputLimitExceeded`](crate::Failure); what was kept is
    /// returned and marked truncated. Default: 1 MiB.
    pub stdout: usize,
    /// Bytes of stderr kept; as for `stdout`. Default: 1 MiB.
    pub stderr: usize,
    /// Total apparent size of the files under `/outputs`. Checked every
    /// `outputs_check_interval` while the job runs and once after it, so a
    /// job can overshoot by what it writes within one interval (plus one
    /// host call) before it is stopped. Default: 1 GiB.
    pub outputs_bytes: u64,
    /// Entries (files, directories, symlinks) under `/outputs`; checked like
    /// `outputs_bytes`. Default: 10 000.
    pub outputs_files: u64,
    /// How often `/outputs` is measured while the job runs. Default: 100 ms.
    pub outputs_check_interval: Duration,
    /// Total bytes of file content across a job's inputs, checked from the
    /// DAGs' declared sizes before anything is materialised (used by
    /// [`job::run`](crate::job::run)). Default: 8 GiB.
    pub inputs_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 512 << 20,
            table_elements: 100_000,
            instances: 4,
            tables: 4,
            memories: 1,
            fuel: 500_000_000_000,
            inputs_bytes: 8 << 30,
            timeout: Duration::from_secs(60),
            stdout: 1 << 20,
            stderr: 1 << 20,
            outputs_bytes: 1 << 30,
            outputs_files: 10_000,
            outputs_check_interval: Duration::from_millis(100),
        }
    }
}

/// Enforces [`Limits`] on memories and tables and remembers whether it
/// refused anything, because a refused `memory.grow` does not trap: the
/// guest sees an allocation failure and typically exits or aborts, and we
/// want to name the real cause.
#[derive(Debug)]
pub(crate) struct Limiter {
    memory: usize,
    table_elements: usize,
    instances: usize,
    tables: usize,
    memories: usize,
    pub(crate) memory_refused: bool,
    pub(crate) table_refused: bool,
}

impl Limiter {
    pub(crate) fn new(limits: &Limits, max_memory: u64) -> Self {
        Limiter {
            memory: usize::try_from(limits.memory.min(max_memory)).unwrap_or(usize::MAX),
            table_elements: limits.table_elements,
            instances: limits.instances,
            tables: limits.tables,
            memories: limits.memories,
            memory_refused: false,
            table_refused: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory;
        if !ok {
            self.memory_refused = true;
        }
        Ok(ok)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = desired <= self.table_elements;
        if !ok {
            self.table_refused = true;
        }
        Ok(ok)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        self.memories
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_remembered() {
        let limits = Limits { memory: 1 << 20, ..Limits::default() };
        let mut l = Limiter::new(&limits, 4 << 30);
        assert!(l.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!l.memory_refused);
        assert!(!l.memory_growing(0, 2 << 20, None).unwrap());
        assert!(l.memory_refused);
    }

    #[test]
    fn engine_ceiling_caps_job_limit() {
        let limits = Limits { memory: 8 << 30, ..Limits::default() };
        let mut l = Limiter::new(&limits, 1 << 30);
        assert!(!l.memory_growing(0, (1 << 30) + 65536, None).unwrap());
    }
}
