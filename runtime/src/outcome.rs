//! What came out of a job.

use std::time::Duration;

/// Output captured from stdout or stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The bytes kept, at most the limit.
    pub bytes: Vec<u8>,
    /// The guest tried to write more than the limit.
    pub truncated: bool,
}

/// What was found under `/outputs` after the job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputsUsage {
    /// Total apparent size of regular files.
    pub bytes: u64,
    /// Entries: files, directories and symlinks.
    pub files: u64,
    /// Symlinks among them. Never followed by the runtime; whoever collects
    /// the outputs must not follow them either.
    pub symlinks: u64,
}

/// One of the standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stream {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
}

/// Which output bound was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputLimit {
    /// [`Limits::stdout`](crate::Limits::stdout) or `stderr`.
    Stream(Stream, usize),
    /// [`Limits::outputs_bytes`](crate::Limits::outputs_bytes).
    OutputsBytes(u64),
    /// [`Limits::outputs_files`](crate::Limits::outputs_files).
    OutputsFiles(u64),
}

impl std::fmt::Display for OutputLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputLimit::Stream(Stream::Stdout, n) => write!(f, "stdout limit of {n} bytes"),
            OutputLimit::Stream(Stream::Stderr, n) => write!(f, "stderr limit of {n} bytes"),
            OutputLimit::OutputsBytes(n) => write!(f, "/outputs limit of {n} bytes"),
            OutputLimit::OutputsFiles(n) => write!(f, "/outputs limit of {n} files"),
        }
    }
}

/// Why a job failed. A job whose `Outcome::failure` is `None` succeeded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The guest exited with a non-zero code.
    #[error("job exited with code {0}")]
    Exit(i32),
    /// The fuel budget ran out.
    #[error("job ran out of fuel after {limit} units: raise --fuel or make the job cheaper")]
    OutOfFuel {
        /// The budget.
        limit: u64,
    },
    /// The wall-clock budget ran out.
    #[error("job timed out after {limit:?}: raise --timeout or make the job faster")]
    Timeout {
        /// The budget.
        limit: Duration,
    },
    /// The job failed after a memory or table growth was refused.
    #[error("job hit its memory limit of {limit} bytes: raise --memory or use less memory")]
    MemoryLimit {
        /// The limit in bytes.
        limit: u64,
    },
    /// The job wrote more than allowed.
    #[error("job exceeded its {0}")]
    OutputLimitExceeded(OutputLimit),
    /// A Wasm trap (unreachable, division by zero, out-of-bounds access,
    /// stack overflow, ...).
    #[error("job trapped: {message}\n{backtrace}")]
    Trap {
        /// The trap's description.
        message: String,
        /// The Wasm backtrace, one frame per line (may be empty).
        backtrace: String,
    },
    /// The entry export does not exist or has the wrong type.
    #[error("module has no usable export `{name}` ({reason}); exported functions: {available:?}")]
    MissingExport {
        /// The export that was asked for.
        name: String,
        /// Why it cannot be used.
        reason: String,
        /// Function exports the module does have.
        available: Vec<String>,
    },
    /// The module imports things the sandbox does not provide.
    #[error(
        "module imports what the sandbox does not provide (only wasi_snapshot_preview1 is available): {missing:?}"
    )]
    MissingImports {
        /// `module::name` of each missing import.
        missing: Vec<String>,
    },
    /// The module links but the imports have the wrong types.
    #[error("module cannot be linked: {0}")]
    Link(String),
    /// The bytes are not a core Wasm module wasmtime accepts.
    #[error("not a usable wasm module: {0}")]
    InvalidModule(String),
    /// The job was cancelled ([`Cancel`](crate::Cancel)) and stopped.
    #[error("job was cancelled")]
    Cancelled,
    /// The guest made the host fail in a way not covered above (e.g. a
    /// WASI call returned a host error). Reported as a failure, never as
    /// success.
    #[error("job failed: {0}")]
    Other(String),
}

/// The result of running a job that the host was able to run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The exit code, when the guest exited or returned (0 on a plain
    /// return from `_start`); `None` when it was stopped.
    pub exit_code: Option<i32>,
    /// `None` if and only if the job succeeded.
    pub failure: Option<Failure>,
    /// Captured stdout.
    pub stdout: Captured,
    /// Captured stderr.
    pub stderr: Captured,
    /// Fuel units consumed.
    pub fuel_consumed: u64,
    /// Host wall time from start of instantiation to the end of the job
    /// (excludes compilation).
    pub wall_time: Duration,
    /// Whether the job ran in deterministic mode.
    pub deterministic: bool,
    /// What the job left in `/outputs`.
    pub outputs: OutputsUsage,
    /// The module came from the in-memory or on-disk cache rather than being
    /// compiled.
    pub cached: bool,
    /// The wasi-nn devices the job's graphs ran on ("cpu: exact",
    /// "gpu: <name> (software) [<driver>] (fast)"); empty when it used no wasi-nn. Execution
    /// metadata, never part of the result.
    pub nn_devices: Vec<String>,
}

impl Outcome {
    /// The job exited with code 0 and broke no limit.
    pub fn success(&self) -> bool {
        self.failure.is_none()
    }

    pub(crate) fn failed(failure: Failure, deterministic: bool) -> Self {
        Outcome {
            exit_code: None,
            failure: Some(failure),
            stdout: Captured::default(),
            stderr: Captured::default(),
            fuel_consumed: 0,
            wall_time: Duration::ZERO,
            deterministic,
            outputs: OutputsUsage::default(),
            cached: false,
            nn_devices: Vec::new(),
        }
    }
}
