//! An in-memory store for tests and hash-only imports.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use cid::Cid;

use super::{BlockStore, PinMode};
use crate::{Block, Error, Result};

/// Blocks and pins in memory. Cheap to create; everything is lost on drop.
#[derive(Debug, Default)]
pub struct MemStore {
    blocks: RwLock<HashMap<Vec<u8>, Vec<u8>>>,
    pins: RwLock<BTreeMap<Vec<u8>, (Cid, PinMode)>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Overwrites a stored block's bytes without rehashing (tests use it to
    /// simulate corruption).
    pub fn corrupt_for_test(&self, cid: &Cid, data: Vec<u8>) {
        let mut map = self.blocks.write().unwrap_or_else(|p| p.into_inner());
        map.insert(cid.hash().to_bytes(), data);
    }
}

impl BlockStore for MemStore {
    fn put(&self, block: &Block) -> Result<()> {
        let mut map = self.blocks.write().unwrap_or_else(|p| p.into_inner());
        map.entry(block.cid().hash().to_bytes()).or_insert_with(|| block.data().to_vec());
        Ok(())
    }

    fn get(&self, cid: &Cid) -> Result<Block> {
        let map = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        let data = map.get(&cid.hash().to_bytes()).ok_or(Error::NotFound { cid: *cid })?;
        Block::verified(*cid, data.clone())
    }

    fn has(&self, cid: &Cid) -> Result<bool> {
        let map = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        Ok(map.contains_key(&cid.hash().to_bytes()))
    }

    fn size(&self, cid: &Cid) -> Result<Option<u64>> {
        let map = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        Ok(map.get(&cid.hash().to_bytes()).map(|d| d.len() as u64))
    }

    fn delete(&self, cid: &Cid) -> Result<()> {
        let mut map = self.blocks.write().unwrap_or_else(|p| p.into_inner());
        map.remove(&cid.hash().to_bytes());
        Ok(())
    }

    fn list(&self) -> Result<Vec<Cid>> {
        let map = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        map.keys()
            .map(|k| {
                let mh = multihash::Multihash::<64>::from_bytes(k)
                    .map_err(|e| Error::Unsupported(format!("bad multihash in memory store: {e}")))?;
                Ok(Cid::new_v1(crate::block::RAW, mh))
            })
            .collect()
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn pin_add(&self, cid: &Cid, mode: PinMode) -> Result<()> {
        let mut pins = self.pins.write().unwrap_or_else(|p| p.into_inner());
        pins.insert(cid.to_bytes(), (*cid, mode));
        Ok(())
    }

    fn pin_rm(&self, cid: &Cid) -> Result<()> {
        let mut pins = self.pins.write().unwrap_or_else(|p| p.into_inner());
        pins.remove(&cid.to_bytes()).map(drop).ok_or(Error::NotPinned { cid: *cid })
    }

    fn pin_ls(&self) -> Result<Vec<(Cid, PinMode)>> {
        let pins = self.pins.read().unwrap_or_else(|p| p.into_inner());
        Ok(pins.values().copied().collect())
    }

    fn describe(&self) -> String {
        "in-memory store".into()
    }
}

/// A store that keeps nothing: imports into it only compute CIDs
/// (`shoal add --only-hash`). Reads always miss.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullStore;

impl BlockStore for NullStore {
    fn put(&self, _: &Block) -> Result<()> {
        Ok(())
    }
    fn put_many(&self, _: &[Block]) -> Result<()> {
        Ok(())
    }
    fn get(&self, cid: &Cid) -> Result<Block> {
        Err(Error::NotFound { cid: *cid })
    }
    fn has(&self, _: &Cid) -> Result<bool> {
        Ok(false)
    }
    fn size(&self, _: &Cid) -> Result<Option<u64>> {
        Ok(None)
    }
    fn delete(&self, _: &Cid) -> Result<()> {
        Ok(())
    }
    fn list(&self) -> Result<Vec<Cid>> {
        Ok(Vec::new())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn pin_add(&self, _: &Cid, _: PinMode) -> Result<()> {
        Ok(())
    }
    fn pin_rm(&self, cid: &Cid) -> Result<()> {
        Err(Error::NotPinned { cid: *cid })
    }
    fn pin_ls(&self) -> Result<Vec<(Cid, PinMode)>> {
        Ok(Vec::new())
    }
    fn describe(&self) -> String {
        "hash-only (nothing stored)".into()
    }
}
