//! The storage crate's error type.

use std::path::PathBuf;

use cid::Cid;

/// Everything that can go wrong in `shoal-storage`. Messages are lowercase,
/// name the CID or path involved, and say what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The block is not in this store.
    #[error("block {cid} is not in the store; fetch it first (e.g. `shoal car import`, or from the node or ipfs daemon that has it)")]
    NotFound {
        /// The missing block.
        cid: Cid,
    },
    /// A path inside a DAG does not exist.
    #[error("no entry {name:?} under {cid}; list it with `shoal ls {cid}`")]
    NoSuchEntry {
        /// The directory searched.
        cid: Cid,
        /// The missing name.
        name: String,
    },
    /// A block on disk does not hash to its name.
    #[error("block {cid} is corrupt on disk ({path}); it was not served. run `shoal repo verify`, then re-add or re-fetch the data")]
    Corrupt {
        /// The corrupt block.
        cid: Cid,
        /// Where it lies.
        path: PathBuf,
    },
    /// Bytes do not match the CID they came with.
    #[error("data for {cid} does not match its hash; the source is corrupt or lying")]
    HashMismatch {
        /// The CID the bytes claimed.
        cid: Cid,
    },
    /// A CID uses a hash function Shoal does not verify.
    #[error("{cid} uses multihash code {code:#x}; only sha2-256 is supported")]
    UnsupportedHash {
        /// The CID.
        cid: Cid,
        /// Its multihash code.
        code: u64,
    },
    /// A string is not a CID.
    #[error("{input:?} is not a valid cid: {reason}")]
    BadCid {
        /// The text given.
        input: String,
        /// Why it failed to parse.
        reason: String,
    },
    /// A block could not be decoded as the format its CID claims.
    #[error("block {cid} is malformed: {reason}")]
    Malformed {
        /// The block.
        cid: Cid,
        /// What is wrong with it.
        reason: String,
    },
    /// An operation does not apply to this kind of node.
    #[error("{cid} is {actual}, not {expected}")]
    WrongKind {
        /// The node.
        cid: Cid,
        /// What it is.
        actual: &'static str,
        /// What the operation needs.
        expected: &'static str,
    },
    /// A feature of the format that Shoal does not implement.
    #[error("{0}")]
    Unsupported(String),
    /// I/O on a local path failed.
    #[error("{action} {path}: {}", describe_io(source))]
    Io {
        /// What was being done ("cannot read", "cannot write"…).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The pin and metadata database failed.
    #[error("repository database {path}: {message}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A CAR file is malformed or truncated.
    #[error("car file {path}: {reason}")]
    Car {
        /// The file (or `-`).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The Kubo RPC API failed or could not be reached.
    #[error("ipfs api {url}: {message}")]
    Kubo {
        /// The API address.
        url: String,
        /// What went wrong, and what to do.
        message: String,
    },
    /// A recursive pin was asked for a DAG that is not complete locally.
    #[error("cannot pin {root}: block {missing} of its dag is not in the store; import the whole dag first")]
    Incomplete {
        /// The root asked for.
        root: Cid,
        /// The first missing block found.
        missing: Cid,
    },
    /// A store path open to other users could not be made private (see
    /// [`crate::store::Tightened`]).
    #[error(
        "{path} is open to other users (mode {mode:04o}) and cannot be made private: {}; {}",
        describe_io(source),
        private_advice(path, *want, *owner)
    )]
    NotPrivate {
        /// The directory or file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The bits it should have.
        want: u32,
        /// The user id owning it, when that is not the current user.
        owner: Option<u32>,
        /// Why `chmod` failed.
        #[source]
        source: std::io::Error,
    },
    /// An unpin asked for a CID that has no pin.
    #[error("{cid} is not pinned")]
    NotPinned {
        /// The CID.
        cid: Cid,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { action, path: path.into(), source }
    }

    /// Whether the error is "this block is not here" (as opposed to a fault).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

fn private_advice(path: &std::path::Path, want: u32, owner: Option<u32>) -> String {
    let chmod = format!("chmod {want:o} {}", path.display());
    match owner {
        Some(uid) => format!(
            "it belongs to user id {uid}: have them (or root) run `{chmod}`, or use a shoal home of your own (--home or SHOAL_HOME)"
        ),
        None => format!(
            "run `{chmod}`, or move the shoal home to a file system with unix permissions (--home or SHOAL_HOME)"
        ),
    }
}

/// An OS error as a lowercase phrase, without the wrappers some crates add
/// (tempfile appends the path, which the message already names).
pub fn describe_io(e: &std::io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
