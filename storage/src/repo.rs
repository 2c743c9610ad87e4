//! Repository maintenance: verify, garbage-collect, stat.

use std::collections::HashSet;

use cid::Cid;

use crate::exporter::walk;
use crate::store::{BlockStore, DiskUsage, PinMode};
use crate::{Error, Result};

/// What [`verify`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Blocks read and hash-checked.
    pub checked: u64,
    /// Blocks whose bytes do not match their name.
    #[serde(serialize_with = "crate::ser_cids")]
    pub corrupt: Vec<Cid>,
    /// Pins whose DAG is missing blocks or has damaged ones: (pin, problem).
    pub damaged_pins: Vec<(String, String)>,
}

impl VerifyReport {
    /// Whether everything is sound.
    pub fn ok(&self) -> bool {
        self.corrupt.is_empty() && self.damaged_pins.is_empty()
    }
}

/// Reads and hash-checks every block, then checks every pin's DAG.
pub fn verify(store: &dyn BlockStore) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    for cid in store.list()? {
        report.checked += 1;
        match store.get(&cid) {
            Ok(_) => {}
            Err(Error::Corrupt { .. } | Error::HashMismatch { .. }) => report.corrupt.push(cid),
            Err(Error::NotFound { .. }) => {} // removed meanwhile
            Err(e) => return Err(e),
        }
    }
    for (pin, mode) in store.pin_ls()? {
        let res = match mode {
            PinMode::Recursive => walk(store, &pin, &mut |_, _| Ok(())),
            PinMode::Direct => store.get(&pin).map(drop),
        };
        if let Err(e) = res {
            report.damaged_pins.push((pin.to_string(), e.to_string()));
        }
    }
    Ok(report)
}

/// What [`gc`] removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Blocks kept because a pin reaches them.
    pub kept: u64,
    /// Blocks removed.
    pub removed: u64,
    /// Bytes in the blocks removed.
    pub bytes_freed: u64,
    /// Disk space given back by compaction (the embedded store's packs):
    /// removed blocks, and blocks of killed imports, which no count above
    /// includes since they were never indexed.
    pub reclaimed: u64,
}

/// Removes every block no pin reaches, then gives their disk space back
/// ([`BlockStore::compact`]). If any pinned DAG cannot be walked completely
/// (a block missing or damaged), nothing is removed: the blocks below the
/// damage could not be told apart from garbage.
pub fn gc(store: &dyn BlockStore) -> Result<GcReport> {
    let mut live: HashSet<Vec<u8>> = HashSet::new();
    for (pin, mode) in store.pin_ls()? {
        match mode {
            PinMode::Direct => {
                live.insert(pin.hash().to_bytes());
            }
            PinMode::Recursive => {
                walk(store, &pin, &mut |c, _| {
                    live.insert(c.hash().to_bytes());
                    Ok(())
                })
                .map_err(|e| {
                    Error::Unsupported(format!(
                        "gc removed nothing: pinned dag {pin} cannot be walked ({e}); run `shoal repo verify` and re-import it"
                    ))
                })?;
            }
        }
    }
    let mut report = GcReport::default();
    let mut dead = Vec::new();
    for cid in store.list()? {
        if live.contains(&cid.hash().to_bytes()) {
            report.kept += 1;
            continue;
        }
        report.bytes_freed += store.size(&cid)?.unwrap_or(0);
        dead.push(cid);
    }
    store.delete_many(&dead)?;
    report.removed = dead.len() as u64;
    store.flush()?;
    report.reclaimed = store.compact()?;
    Ok(report)
}

/// Size of a repository.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stat {
    /// Blocks held.
    pub blocks: u64,
    /// Bytes in blocks.
    pub bytes: u64,
    /// Pins.
    pub pins: u64,
    /// The store's files on disk, for stores that manage their own.
    pub disk: Option<DiskUsage>,
}

/// Counts blocks, bytes and pins.
pub fn stat(store: &dyn BlockStore) -> Result<Stat> {
    let mut s = Stat::default();
    for cid in store.list()? {
        s.blocks += 1;
        s.bytes += store.size(&cid)?.unwrap_or(0);
    }
    s.pins = store.pin_ls()?.len() as u64;
    s.disk = store.disk_usage()?;
    Ok(s)
}
