//! Caches of compiled modules: prepared `InstancePre`s in memory, and
//! serialized machine code on disk.
//!
//! A disk entry is `<key>.cwasm` (wasmtime's serialized module) and
//! `<key>.xxh3` (its xxh3-128). The checksum is verified before the file
//! reaches `Module::deserialize_file`, because wasmtime only checks the
//! header (version, engine settings), not the code: a flipped bit in a
//! cached entry would otherwise run as machine code. A bad entry is deleted
//! and the module recompiled.

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

/// Version of the cache key/entry layout; bump when either changes.
const CACHE_FORMAT: &[u8] = b"shoal-runtime module cache v3";

/// `transform` names what was done to the module before compiling it (the
/// NaN rewrite and its version), so that code compiled from differently
/// rewritten bytes never shares an entry.
pub(crate) fn key(engine: &Engine, transform: &str, module_bytes: &[u8]) -> Key {
    // `precompile_compatibility_hash` covers the wasmtime version, target
    // and every setting that changes generated code (NaN canonicalisation,
    // fuel, epochs, features).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let mut d = Sha256::new();
    d.update(CACHE_FORMAT);
    d.update(h.finish().to_le_bytes());
    d.update((transform.len() as u64).to_le_bytes());
    d.update(transform.as_bytes());
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
    fn sum_path(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{}.xxh3", hex(key)))
    }

    /// Loads an entry: the file is memory-mapped, checked against its
    /// xxh3-128 sidecar (an entry's integrity, not its authenticity: the
    /// cache directory is the node's own), then handed to wasmtime, which
    /// maps it again lazily instead of copying it. A 287 MB entry loads in
    /// tens of milliseconds this way; reading and SHA-256-ing it took 0.5 s.
    pub(crate) fn load(&self, engine: &Engine, key: &Key) -> Option<Module> {
        let path = self.path(key);
        let file = fs::File::open(&path).ok()?;
        let module = (|| {
            let want = fs::read(self.sum_path(key)).ok()?;
            // SAFETY: cache files are only ever replaced by rename, never
            // modified in place, so the mapping cannot change under us.
            let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
            if xxhash_rust::xxh3::xxh3_128(&map).to_le_bytes().as_slice() != want.as_slice() {
                return None;
            }
            drop(map);
            // SAFETY: the file was written by `store` from
            // `Module::serialize` of an engine with the same compatibility
            // hash (it is part of the key), and its checksum matches.
            unsafe { Module::deserialize_file(engine, &path) }.ok()
        })();
        if module.is_none() {
            tracing::warn!(path = %path.display(), "discarding corrupt module cache entry");
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(self.sum_path(key));
        }
        module
    }

    pub(crate) fn store(&self, key: &Key, module: &Module) -> std::io::Result<()> {
        let body = module.serialize().map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let sum = xxhash_rust::xxh3::xxh3_128(&body).to_le_bytes();
        // The sidecar first: an entry without a matching sidecar is
        // discarded, so a crash between the two renames is harmless.
        let mut s = tempfile::NamedTempFile::new_in(&self.dir)?;
        s.write_all(&sum)?;
        s.as_file().sync_data()?;
        s.persist(self.sum_path(key)).map_err(|e| e.error)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&body)?;
        tmp.as_file().sync_data()?;
        tmp.persist(self.path(key)).map_err(|e| e.error)?;
        Ok(())
    }
}

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
        let k = key(&engine, "", wasm);
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
        assert_ne!(key(&a, "", b"x"), key(&b, "", b"x"));
    }

    #[test]
    fn key_depends_on_the_transform() {
        let e = Engine::default();
        assert_ne!(key(&e, "", b"x"), key(&e, "nan-rewrite v1", b"x"));
        assert_ne!(key(&e, "nan-rewrite v1", b"x"), key(&e, "nan-rewrite v2", b"x"));
        assert_eq!(key(&e, "nan-rewrite v1", b"x"), key(&e, "nan-rewrite v1", b"x"));
    }
}
