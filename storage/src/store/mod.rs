//! Block stores: where blocks and pins live.
//!
//! [`BlockStore`] is the one interface every other part uses. Three
//! implementations stand behind it, layered like iroh-blobs' stores:
//! [`MemStore`] (tests and hash-only imports), [`FsStore`] (the embedded
//! default under `$SHOAL_HOME`) and, with the `kubo` feature, [`KuboStore`]
//! (a Kubo node's HTTP RPC API). The same contract tests run against each.
//!
//! The interface is synchronous: blocks are local files or short RPCs, and a
//! synchronous store lets the importer hash on all cores with rayon. Async
//! callers go through `spawn_blocking`.

use cid::Cid;

use crate::{Block, Result};

mod fs;
#[cfg(feature = "kubo")]
mod kubo;
mod mem;
mod private;

pub use fs::{FsLimits, FsStore, WriteGuard};
#[cfg(feature = "kubo")]
pub use kubo::KuboStore;
pub use mem::{MemStore, NullStore};
pub use private::Tightened;

/// How a CID is pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinMode {
    /// The block and every block reachable from it are kept.
    Recursive,
    /// Only the block itself is kept.
    Direct,
}

impl PinMode {
    /// Lowercase name, as printed by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            PinMode::Recursive => "recursive",
            PinMode::Direct => "direct",
        }
    }
}

/// What a store's files take on disk (see [`BlockStore::disk_usage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskUsage {
    /// Files holding blocks (the embedded store's packs).
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Bytes in them that no indexed block uses: deleted blocks, and blocks
    /// of imports killed or still running. `repo gc` gives them back.
    pub unreferenced: u64,
    /// Files holding no indexed block at all (an import killed or still
    /// running).
    pub files_without_blocks: u64,
}

/// A content-addressed block store with pins.
///
/// Contract (checked by `tests/contract.rs` for every implementation):
/// - `get` returns only blocks whose bytes hash to the CID asked for; a
///   corrupt block is an error, never data.
/// - Blocks are keyed by multihash: a block put under a CIDv0 can be read
///   under the CIDv1 dag-pb of the same hash.
/// - `put` of a block already present is a cheap no-op.
/// - After `flush` returns, every block put before it survives a crash;
///   blocks put but never flushed may be lost (on a crash, and with the
///   embedded store also when it is dropped).
/// - `pin_add` flushes first, so a pin never outlives the blocks this store
///   was given before it.
/// - Pins name CIDs; `pin_add` does not check DAG completeness (see
///   [`crate::pin::add`], which does).
pub trait BlockStore: Send + Sync {
    /// Stores a block.
    fn put(&self, block: &Block) -> Result<()>;

    /// Stores many blocks; implementations may do it in parallel.
    fn put_many(&self, blocks: &[Block]) -> Result<()> {
        blocks.iter().try_for_each(|b| self.put(b))
    }

    /// Reads and verifies a block. Missing: [`crate::Error::NotFound`].
    fn get(&self, cid: &Cid) -> Result<Block>;

    /// Reads a block for a peer that verifies it on arrival (a Bitswap
    /// peer): a store that hashes every read may skip it here, as Kubo
    /// does for every read by default (`Datastore.HashOnRead` false). A
    /// corrupt block then fails at the peer, which asks another holder.
    /// Defaults to [`BlockStore::get`].
    fn get_for_peer(&self, cid: &Cid) -> Result<Block> {
        self.get(cid)
    }

    /// Whether the block is present (not verified).
    fn has(&self, cid: &Cid) -> Result<bool>;

    /// Size of the block in bytes, if present.
    fn size(&self, cid: &Cid) -> Result<Option<u64>>;

    /// Removes a block (pinned or not: pin checks are the caller's, see
    /// [`crate::repo::gc`]). Removing an absent block is not an error.
    fn delete(&self, cid: &Cid) -> Result<()>;

    /// Removes many blocks; stores with transactions do it in one.
    fn delete_many(&self, cids: &[Cid]) -> Result<()> {
        cids.iter().try_for_each(|c| self.delete(c))
    }

    /// Gives back the disk space of blocks removed so far, for stores whose
    /// `delete` only forgets a block (the embedded store's packs). Returns
    /// the bytes given back. Called by [`crate::repo::gc`].
    fn compact(&self) -> Result<u64> {
        Ok(0)
    }

    /// The files the store keeps on disk, for stores that manage their own.
    fn disk_usage(&self) -> Result<Option<DiskUsage>> {
        Ok(None)
    }

    /// Every block held, as CIDv1 raw over each stored multihash (the
    /// codec is not stored, as in Kubo's blockstore).
    fn list(&self) -> Result<Vec<Cid>>;

    /// Makes every block put so far durable.
    fn flush(&self) -> Result<()>;

    /// Records a pin (replacing the mode of an existing one).
    fn pin_add(&self, cid: &Cid, mode: PinMode) -> Result<()>;

    /// Removes a pin; [`crate::Error::NotPinned`] if there is none.
    fn pin_rm(&self, cid: &Cid) -> Result<()>;

    /// All pins.
    fn pin_ls(&self) -> Result<Vec<(Cid, PinMode)>>;

    /// How `cid` is pinned, if it is. A recursive pin promises the whole
    /// DAG is here, so callers can skip walking it.
    fn pin_mode(&self, cid: &Cid) -> Result<Option<PinMode>> {
        Ok(self.pin_ls()?.into_iter().find(|(c, _)| c == cid).map(|(_, m)| m))
    }

    /// A short description for messages ("embedded store at …").
    fn describe(&self) -> String;
}

impl<T: BlockStore + ?Sized> BlockStore for std::sync::Arc<T> {
    fn put(&self, block: &Block) -> Result<()> {
        (**self).put(block)
    }
    fn put_many(&self, blocks: &[Block]) -> Result<()> {
        (**self).put_many(blocks)
    }
    fn get(&self, cid: &Cid) -> Result<Block> {
        (**self).get(cid)
    }
    fn get_for_peer(&self, cid: &Cid) -> Result<Block> {
        (**self).get_for_peer(cid)
    }
    fn has(&self, cid: &Cid) -> Result<bool> {
        (**self).has(cid)
    }
    fn size(&self, cid: &Cid) -> Result<Option<u64>> {
        (**self).size(cid)
    }
    fn delete(&self, cid: &Cid) -> Result<()> {
        (**self).delete(cid)
    }
    fn delete_many(&self, cids: &[Cid]) -> Result<()> {
        (**self).delete_many(cids)
    }
    fn compact(&self) -> Result<u64> {
        (**self).compact()
    }
    fn disk_usage(&self) -> Result<Option<DiskUsage>> {
        (**self).disk_usage()
    }
    fn list(&self) -> Result<Vec<Cid>> {
        (**self).list()
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn pin_add(&self, cid: &Cid, mode: PinMode) -> Result<()> {
        (**self).pin_add(cid, mode)
    }
    fn pin_rm(&self, cid: &Cid) -> Result<()> {
        (**self).pin_rm(cid)
    }
    fn pin_ls(&self) -> Result<Vec<(Cid, PinMode)>> {
        (**self).pin_ls()
    }
    fn pin_mode(&self, cid: &Cid) -> Result<Option<PinMode>> {
        (**self).pin_mode(cid)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

#[cfg(feature = "kubo")]
/// The CIDv1 raw form under which stores list a multihash.
pub(crate) fn raw_cid(cid: &Cid) -> Cid {
    Cid::new_v1(crate::block::RAW, *cid.hash())
}

/// Pins keyed by multihash-independent CID: pins keep the exact CID given.
pub(crate) fn pin_key(cid: &Cid) -> Vec<u8> {
    cid.to_bytes()
}
