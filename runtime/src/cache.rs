//! Caches of compiled modules: prepared `InstancePre`s in memory, and
//! serialized machine code on disk.
//!
//! A disk entry is `<key>.cwasm`: wasmtime's serialized module followed by
//! the SHA-256 of those bytes. The checksum is verified before the bytes
//! reach `Module::deserialize`, because wasmtime only checks the header
//! (version, engine settings), not the code: a flipped bit in a cached
//! entry would otherwise run as machine code. A bad entry is deleted and
//! the module recompiled.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// Identifies compiled code: module bytes plus everything about the engine
/// that shapes the code.
pub(crate) type Key = [u8; 32];

const CHECKSUM_LEN: usize = 32;

/// Version of the cache key/entry layout; bump when either changes.
const CACHE_FORMAT: &[u8] = b"shoal-runtime module cache v1";

pub(crate) fn key(engine: &Engine, module_bytes: &[u8]) -> Key {
    // `precompile_compatibility_hash` covers the wasmtime version, target
    // and every setting that changes generated code (NaN canonicalisation,
    // fuel, epochs, features).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let mut d = Sha256::new();
    d.update(CACHE_FORMAT);
    d.update(h.finish().to_le_bytes());
    d.update(module_bytes);
    d.finalize().into()
}

fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The on-disk cache.
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(DiskCache { dir: dir.to_path_buf() })
    }

    pub(crate) fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{}.cwasm", hex(key)))
    }

    /// The cached module, or `None` if absent or unusable (then removed).
    pub(crate) fn load(&self, engine: &Engine, key: &Key) -> Option<Module> {
        let path = self.path(key);
        let data = fs::read(&path).ok()?;
        let module = (|| {
            let split = data.len().checked_sub(CHECKSUM_LEN)?;
            let (body, sum) = data.split_at(split);
            if Sha256::digest(body).as_slice() != sum {
                return None;
            }
            // SAFETY: the bytes were produced by `Module::serialize` of an
            // engine with the same compatibility hash (it is part of the
            // key), written by us via rename, and are checksummed above;
            // wasmtime re-checks the header and engine settings.
            unsafe { Module::deserialize(engine, body) }.ok()
        })();
        if module.is_none() {
            tracing::warn!(path = %path.display(), "discarding corrupt module cache entry");
            // Best effort: a leftover entry is simply recompiled next time.
            let _ = fs::remove_file(&path);
        }
        module
    }

    /// Writes atomically: temp file in the same directory, then rename, so
    /// readers never see a partial entry.
    pub(crate) fn store(&self, key: &Key, module: &Module) -> std::io::Result<()> {
        let body = module.serialize().map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let sum = Sha256::digest(&body);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&body)?;
        tmp.write_all(&sum)?;
        tmp.as_file().sync_data()?;
        tmp.persist(self.path(key)).map_err(|e| e.error)?;
        Ok(())
    }
}

/// A bounded in-memory map with first-in-first-out eviction. FIFO rather
/// than LRU keeps lookups lock-cheap; a re-inserted module costs one disk
/// load.
#[derive(Debug)]
pub(crate) struct MemoryCache<V> {
    cap: usize,
    inner: Mutex<Entries<V>>,
}

/// The map and the insertion order used for eviction.
type Entries<V> = (HashMap<Key, Arc<V>>, VecDeque<Key>);

impl<V> MemoryCache<V> {
    pub(crate) fn new(cap: usize) -> Self {
        MemoryCache { cap, inner: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Arc<V>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0.get(key).cloned()
    }

    pub(crate) fn insert(&self, key: Key, value: Arc<V>) {
        if self.cap == 0 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *inner;
        if map.insert(key, value).is_none() {
            order.push_back(key);
        }
        while map.len() > self.cap {
            match order.pop_front() {
                Some(old) => {
                    map.remove(&old);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cache_evicts_oldest() {
        let c = MemoryCache::new(2);
        c.insert([1; 32], Arc::new(1));
        c.insert([2; 32], Arc::new(2));
        c.insert([3; 32], Arc::new(3));
        assert!(c.get(&[1; 32]).is_none());
        assert_eq!(*c.get(&[3; 32]).unwrap(), 3);
    }

    #[test]
    fn disk_round_trip_and_corruption() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path()).unwrap();
        let wasm = b"\0asm\x01\0\0\0";
        let module = Module::new(&engine, wasm).unwrap();
        let k = key(&engine, wasm);
        assert!(cache.load(&engine, &k).is_none());
        cache.store(&k, &module).unwrap();
        assert!(cache.load(&engine, &k).is_some());
        // Flip one byte in the middle: checksum must catch it and the entry
        // must be removed.
        let path = cache.path(&k);
        let mut data = fs::read(&path).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        fs::write(&path, data).unwrap();
        assert!(cache.load(&engine, &k).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn key_depends_on_engine_settings() {
        let a = Engine::default();
        let mut cfg = wasmtime::Config::new();
        cfg.consume_fuel(true);
        let b = Engine::new(&cfg).unwrap();
        assert_ne!(key(&a, b"x"), key(&b, b"x"));
    }
}
