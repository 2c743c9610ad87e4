//! Host-side errors: the job could not be run at all.

use std::path::PathBuf;

/// Why the executor could not run a job. Guest misbehaviour is never an
/// `Error`; it is a [`Failure`](crate::Failure) in the outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The module file could not be read.
    #[error("cannot read module {path}: {source}")]
    ReadModule {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The task description is invalid (bad guest path, duplicate env var,
    /// ...).
    #[error("invalid task: {0}")]
    InvalidTask(String),
    /// A mount's host path is missing or unusable.
    #[error("cannot mount {host} at {guest}: {source}")]
    Mount {
        /// Host path.
        host: PathBuf,
        /// Guest path.
        guest: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The outputs directory could not be created or opened.
    #[error("cannot prepare outputs directory {path}: {source}")]
    Outputs {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The compiled-module cache directory is unusable.
    #[error("cannot use module cache {path}: {source}")]
    Cache {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// wasmtime refused the configuration or could not set up the job
    /// (e.g. the instance pool is full: lower concurrency or raise
    /// `Config::max_concurrent_jobs`).
    #[error("wasmtime: {0}")]
    Engine(String),
    /// The job asks for a GPU and this node has none it may use.
    #[error("the job asks for a GPU (gpu: true), but {0}")]
    NoGpu(String),
}

impl Error {
    pub(crate) fn engine(e: impl std::fmt::Display) -> Self {
        Error::Engine(format!("{e:#}"))
    }
}
