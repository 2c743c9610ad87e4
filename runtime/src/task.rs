//! What to run: the description of one job.

use std::path::PathBuf;
use std::sync::Arc;

use crate::Limits;

/// Where the module comes from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ModuleSource {
    /// Module bytes already in memory (e.g. fetched by CID).
    Bytes(Arc<[u8]>),
    /// A file on the host; read when the job starts.
    Path(PathBuf),
}

/// How the module is entered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Entry {
    /// A WASI command: call one export (normally `_start`) that takes and
    /// returns nothing; `proc_exit` supplies the exit code.
    Command {
        /// Export to call. Default: `_start`.
        export: String,
    },
    /// A WASI reactor: call `_initialize` if it is exported, then `export`,
    /// which must take no parameters and return nothing or one `i32` (used
    /// as the exit code).
    Reactor {
        /// Export called after `_initialize`, e.g. `invoke`.
        export: String,
    },
}

impl Default for Entry {
    fn default() -> Self {
        Entry::Command { export: "_start".to_owned() }
    }
}

impl Entry {
    /// The export that does the job's work.
    pub fn export(&self) -> &str {
        match self {
            Entry::Command { export } | Entry::Reactor { export } => export,
        }
    }
}

/// A host directory or file made visible, read-only, at `guest` inside the
/// sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Host directory or regular file.
    pub host: PathBuf,
    /// Absolute guest path such as `/inputs` or `/inputs/data.csv`; must not
    /// contain `..`, `.` or empty components, nor be or lie under `/outputs`.
    pub guest: String,
}

impl Mount {
    /// Mounts `host` at `guest`.
    pub fn new(host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        Mount { host: host.into(), guest: guest.into() }
    }
}

/// Whether the job sees a reproducible world.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Fixed wall clock, stepping monotonic clock, randomness from a PRNG
    /// seeded with `seed` (normally the hash of the job spec).
    Deterministic {
        /// Seed of the guest's random numbers.
        seed: [u8; 32],
    },
    /// Real clocks and OS randomness. Recorded in the outcome.
    Nondeterministic,
}

impl Default for Mode {
    fn default() -> Self {
        Mode::Deterministic { seed: [0; 32] }
    }
}

/// One job.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Task {
    /// The module to run.
    pub module: ModuleSource,
    /// How to enter it. Default: command, `_start`.
    pub entry: Entry,
    /// `argv[1..]`; `argv[0]` is `program_name`.
    pub args: Vec<String>,
    /// `argv[0]`. Default: `main.wasm`.
    pub program_name: String,
    /// Environment variables. Nothing is inherited from the host; they are
    /// sorted by name before the guest sees them, and duplicate names are
    /// refused.
    pub env: Vec<(String, String)>,
    /// Read-only inputs.
    pub mounts: Vec<Mount>,
    /// Host directory mounted read-write at `/outputs`; created if missing.
    /// `None`: the job has no `/outputs`.
    pub outputs: Option<PathBuf>,
    /// Bounds.
    pub limits: Limits,
    /// Determinism. Default: deterministic with an all-zero seed.
    pub mode: Mode,
    /// Receives what the guest writes to stdout and stderr as it writes it
    /// (within the caps), e.g. to stream it to a terminal. Captured output
    /// is unaffected. Default: none.
    pub tee: Option<Tee>,
    /// wasi-nn: named models, whether the job asks for a GPU, and bounds.
    pub nn: crate::nn::NnTask,
    /// Stops the job from another thread (see [`Cancel`]). Default: none.
    pub cancel: Option<Cancel>,
}

/// Stops a running job from another thread: the guest is interrupted at
/// its next epoch check (at most [`Limits::outputs_check_interval`] later,
/// 100 ms by default) or woken from a host sleep, and the job ends with
/// [`Failure::Cancelled`](crate::Failure::Cancelled). A job cancelled
/// before it starts does not start.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// A token nobody has cancelled yet.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks the job to stop (idempotent).
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Called with each accepted write to a job's stdout or stderr.
pub type TeeFn = dyn Fn(crate::Stream, &[u8]) + Send + Sync;

/// A live copy of a job's output streams.
#[derive(Clone)]
pub struct Tee(pub std::sync::Arc<TeeFn>);

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tee(..)")
    }
}

impl Task {
    /// A task running `module` as a command with default everything else.
    pub fn new(module: ModuleSource) -> Self {
        Task {
            module,
            entry: Entry::default(),
            args: Vec::new(),
            program_name: "main.wasm".to_owned(),
            env: Vec::new(),
            tee: None,
            mounts: Vec::new(),
            outputs: None,
            limits: Limits::default(),
            mode: Mode::default(),
            nn: crate::nn::NnTask::default(),
            cancel: None,
        }
    }

    /// A task for the module file at `path`.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        Task::new(ModuleSource::Path(path.into()))
    }

    /// A task for module bytes held in memory.
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Self {
        Task::new(ModuleSource::Bytes(bytes.into()))
    }
}
