//! # shoal-storage
//!
//! Everything in Shoal is addressed by content: datasets, modules and job
//! results are UnixFS DAGs named by CIDs identical to the ones Kubo
//! (`ipfs add`) computes, so data moves between Shoal and any IPFS node
//! without re-encoding. This crate holds:
//!
//! - the UnixFS v1 [`importer`] (Kubo's default CIDv0 layout and
//!   `--cid-version 1`) and [`exporter`] (cat, get, ls, path resolution),
//!   each verifying every block it reads;
//! - the [`BlockStore`] trait with an in-memory store for tests, the
//!   embedded on-disk store (the default, pins in SQLite, private to its
//!   owner: 0700 directories, 0600 files) and, with the `kubo` feature (on
//!   by default), a Kubo HTTP RPC store;
//! - [`pin`]ning with DAG completeness checks, [`repo`] verify (naming
//!   damage by pin, path and chunk)/gc/stat, and [`car`] (CARv1) import and
//!   export.
//!
//! ## Layout
//! - `block.rs`: [`Block`], CIDs, hashing, codec constants.
//! - `pb.rs`: the dag-pb and UnixFS protobuf codecs.
//! - `hamt.rs`: HAMT-sharded directories (Kubo's large-directory form).
//! - `importer.rs`, `exporter.rs`: files and directories in and out.
//! - `store/`: the trait and its `mem`, `fs` and `kubo` implementations;
//!   `private.rs` keeps the embedded store's files to their owner.
//! - `pin.rs`, `repo.rs`, `car.rs`: pins, maintenance, CAR files.
//! - `error.rs`: the crate's [`Error`].

pub mod block;
pub mod car;
mod error;
pub mod exporter;
pub mod hamt;
pub mod importer;
pub mod pb;
pub mod pin;
pub mod repo;
pub mod store;

pub use block::{Block, CidVersion};
pub use cid::Cid;
pub use error::{Error, Result};
#[cfg(feature = "kubo")]
pub use store::KuboStore;
pub use store::{BlockStore, FsStore, MemStore, NullStore, PinMode};

/// Deepest file DAG the exporter follows (174^64 chunks is far beyond any
/// real file; the bound stops hostile DAGs from exhausting the stack).
pub const MAX_FILE_DEPTH: usize = 64;
/// Deepest directory nesting imported or exported.
pub const MAX_DIR_DEPTH: usize = 1024;

pub(crate) fn ser_cid<S: serde::Serializer>(c: &Cid, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&c.to_string())
}

pub(crate) fn ser_cids<S: serde::Serializer>(c: &[Cid], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(c.iter().map(|c| c.to_string()))
}
