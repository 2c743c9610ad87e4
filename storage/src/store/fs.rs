//! The embedded on-disk store: Shoal's default.
//!
//! Blocks are appended to a few large pack files and found through an
//! index in SQLite. Storing a block costs one write into a file that is
//! already open; a flush costs one `fdatasync` and one transaction. (The
//! earlier layout, one file per block, spent about half of every import
//! allocating inodes.)
//!
//! Layout under the home directory (see `docs/storage.md`):
//! - `blocks/packs/<ID>.pack`: append-only pack files. `ID` (8 or more
//!   decimal digits) comes from a counter in the database and is never
//!   reused, so a cached read handle can never name another pack's bytes.
//!   A pack is the 8 bytes `shoalpk1`, then one record per block:
//!   `blk1 | data length (u32 LE) | multihash length (u8) | multihash |
//!   data`. The index alone is enough to read a block; the record headers
//!   make a pack self-describing, so a lost index could be rebuilt and a
//!   damaged pack examined by hand (43 bytes per 256 KiB chunk).
//! - `repo.sqlite`: the index `blocks (mh → pack, offset, len)`, pins and
//!   metadata, in SQLite (WAL mode), so several `shoal` processes can share
//!   one home safely.
//! - `gc.lock`: writers hold it shared while they import and pin; garbage
//!   collection holds it exclusively, so it never removes blocks of an
//!   import whose pin is not committed yet.
//!
//! Privacy: the store's directories (the home itself included) are 0700
//! and its files 0600, whatever the umask. A store made by an earlier
//! Shoal (0755 directories, 0644 files) is tightened when it is opened:
//! the root, `blocks/`, `blocks/packs/`, the packs, the database files and
//! `gc.lock` lose their group and other bits; nothing else in the home is
//! touched. [`FsStore::tightened`] lists what was found open.
//!
//! Writing: each store instance appends to a pack of its own, created on
//! its first write (`O_EXCL`) and locked (`flock`, exclusive) for as long
//! as it holds bytes not yet indexed. New index rows wait in memory
//! (*pending*: visible to this instance only) until `flush`, which syncs
//! the pack, then commits the rows in one transaction, then unlocks the
//! pack; the next write takes it up again unless gc removed it meanwhile.
//! A writer rolls to a new pack beyond [`FsLimits::pack_size`], and
//! flushes by itself beyond [`FsLimits::pending_blocks`].
//!
//! Crash safety: an index row is committed only after the bytes it points
//! at are durable, so a committed row never names bytes a crash lost. A
//! crash loses the pending rows, leaving unindexed bytes that compaction
//! reclaims. `pin_add` flushes first, so a pin is never committed before
//! the blocks this instance was given. `put` trusts an indexed copy only
//! once its bytes match the block being stored, and writes a fresh copy
//! otherwise, so no new pin is built on damaged data. A block damaged
//! anyway (bad disk, manual edit) is caught by hash checks on every read
//! and reported by `repo verify`; it is never served.
//!
//! Compaction ([`FsStore::compact`], run by `repo gc`): `delete` only drops
//! index rows. Compaction removes packs without rows, and rewrites packs
//! mostly dead (or small) into new ones: copy the live blocks, sync, move
//! their rows in one transaction, then remove the old packs. A pack locked
//! by a writer is never touched.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, TryLockError};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cid::Cid;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::private::{self, Tightened, FILE_MODE};
use super::{pin_key, BlockStore, DiskUsage, PinMode};
use crate::{Block, Error, Result};

/// 1: one file per block. 2: packs and the `blocks` index.
const SCHEMA_VERSION: i64 = 2;
/// How long a writer waits for another process's database transaction.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The first bytes of every pack.
const PACK_MAGIC: &[u8; 8] = b"shoalpk1";
const PACK_HEADER: u64 = PACK_MAGIC.len() as u64;
/// The first bytes of every record.
const RECORD_MAGIC: &[u8; 4] = b"blk1";
/// A record header's bytes besides the multihash: magic, length, mh length.
const RECORD_FIXED: u64 = 9;
/// Read handles kept open (least recently used ones are closed first).
const READ_HANDLES: usize = 64;
/// Writeback of a pack is started every this many bytes, so that `flush`
/// waits for the last few megabytes rather than the whole import.
const WRITEBACK_STEP: u64 = 8 << 20;
/// Compaction rewrites a pack once this fraction (1/N) of it is dead.
const DEAD_FRACTION: u64 = 4;
/// Packs smaller than `pack_size / SMALL_FRACTION` are merged by compaction
/// (every process that writes starts a pack, so small imports leave many).
const SMALL_FRACTION: u64 = 16;
/// Packs rewritten by one compaction step: bounds open files.
const COMPACT_GROUP: usize = 256;

/// Sizes that bound an [`FsStore`]; the defaults suit everything but tests.
#[derive(Debug, Clone, Copy)]
pub struct FsLimits {
    /// A writer starts a new pack when the next block would take its pack
    /// beyond this size (a larger block gets a pack of its own). Default
    /// 1 GiB.
    pub pack_size: u64,
    /// Blocks written but not yet indexed after which `put` flushes by
    /// itself (each costs about 100 bytes of memory until then). Pending
    /// bytes are bounded by `pack_size`: rolling to a new pack flushes
    /// too. Default 65536.
    pub pending_blocks: usize,
}

impl Default for FsLimits {
    fn default() -> FsLimits {
        FsLimits { pack_size: 1 << 30, pending_blocks: 65_536 }
    }
}

/// Where a block's bytes are: pack, offset of the data, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    pack: u64,
    offset: u64,
    len: u64,
}

/// A pack this instance appends to, locked exclusively.
#[derive(Debug)]
struct Pack {
    id: u64,
    file: File,
    /// Where the next record goes.
    end: u64,
    /// Writeback was started up to here.
    kicked: u64,
}

#[derive(Debug, Default)]
struct Writer {
    /// The pack being appended to; `None` after a flush, which unlocks it.
    pack: Option<Pack>,
    /// The pack last written, taken up again by the next write if it is
    /// still there and has room.
    parked: Option<u64>,
    /// `pack` has bytes not synced yet.
    dirty: bool,
    /// A pack was created since the packs directory was last synced.
    dir_dirty: bool,
}

#[derive(Debug, Default)]
struct ReadHandles {
    files: HashMap<u64, (Arc<File>, u64)>,
    tick: u64,
}

/// The embedded on-disk block store.
#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
    packs: PathBuf,
    db_path: PathBuf,
    db: Mutex<Connection>,
    limits: FsLimits,
    /// Lock order: `writer`, then `pending`, then `db`, then `readers`.
    writer: Mutex<Writer>,
    /// Rows written by this instance, not committed yet (keyed by multihash).
    pending: RwLock<HashMap<Vec<u8>, Loc>>,
    readers: Mutex<ReadHandles>,
    /// Paths found open to other users at open.
    tightened: Vec<Tightened>,
}

/// Held while importing and pinning; keeps `repo gc` out (see module docs).
#[derive(Debug)]
pub struct WriteGuard {
    _file: File,
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::Db { path: path.to_path_buf(), message: e.to_string().to_lowercase() }
}

/// Whether the file still has a name: gc may have removed a pack between
/// our opening and our locking it.
fn linked(file: &File, path: &Path) -> Result<bool> {
    Ok(file.metadata().map_err(|e| Error::io("cannot stat", path, e))?.nlink() > 0)
}

fn record_header(mh: &[u8], len: usize) -> Result<Vec<u8>> {
    let too_big = || Error::Unsupported(format!("a block of {len} bytes is too large for the store (at most 4 GiB)"));
    let len = u32::try_from(len).map_err(|_| too_big())?;
    let mh_len = u8::try_from(mh.len()).map_err(|_| Error::Unsupported("a multihash over 255 bytes".into()))?;
    let mut h = Vec::with_capacity(RECORD_FIXED as usize + mh.len());
    h.extend_from_slice(RECORD_MAGIC);
    h.extend_from_slice(&len.to_le_bytes());
    h.push(mh_len);
    h.extend_from_slice(mh);
    Ok(h)
}

/// Writes one record (`head` from [`record_header`]) at `at`; returns the
/// offset of its data.
fn write_record(file: &File, at: u64, head: &[u8], data: &[u8]) -> std::io::Result<u64> {
    let data_at = at + head.len() as u64;
    file.write_all_at(head, at)?;
    file.write_all_at(data, data_at)?;
    Ok(data_at)
}

fn mh_to_cid(mh: &[u8]) -> Option<Cid> {
    multihash::Multihash::<64>::from_bytes(mh).ok().map(|mh| Cid::new_v1(crate::block::RAW, mh))
}

impl FsStore {
    /// A block's bytes as stored, not verified, and the pack they are in.
    fn read_block(&self, cid: &Cid) -> Result<(Vec<u8>, u64)> {
        let mh = cid.hash().to_bytes();
        let Some(mut loc) = self.lookup(&mh)? else { return Err(Error::NotFound { cid: *cid }) };
        let mut data = self.read(loc)?;
        if data.is_none() {
            // gc in another process may have moved the block and removed
            // its pack since we looked it up: look again, once.
            match self.lookup(&mh)? {
                None => return Err(Error::NotFound { cid: *cid }),
                Some(again) if again != loc => {
                    loc = again;
                    data = self.read(loc)?;
                }
                Some(_) => {}
            }
        }
        // A pack missing or cut short: its blocks are lost, which is
        // corruption on disk as much as flipped bits are.
        match data {
            Some(d) => Ok((d, loc.pack)),
            None => Err(Error::Corrupt { cid: *cid, path: self.pack_path(loc.pack) }),
        }
    }

    /// Opens (creating if needed) the store under `root`, moving blocks of
    /// the old one-file-per-block layout into a pack if there are any.
    ///
    /// Everything the store creates is private to the current user (0700
    /// directories, 0600 files), and the paths of an older store that other
    /// users could read are tightened: see [`FsStore::tightened`]. A path
    /// that cannot be tightened does not make `open` fail.
    pub fn open(root: impl AsRef<Path>) -> Result<FsStore> {
        FsStore::open_with(root, FsLimits::default())
    }

    /// [`FsStore::open`] with other limits (tests use small ones).
    pub fn open_with(root: impl AsRef<Path>, limits: FsLimits) -> Result<FsStore> {
        let root = root.as_ref().to_path_buf();
        let packs = root.join("blocks").join("packs");
        private::create_dirs(&packs)?;
        let db_path = root.join("repo.sqlite");
        let tightened = tighten_store(&root, &packs, &db_path);
        // SQLite gives its -wal, -shm and -journal files the mode of the
        // database file: create that one private first.
        match File::options().write(true).create_new(true).mode(FILE_MODE).open(&db_path) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("cannot create", &db_path, e)),
        }
        // Processes opening a new store at once race to switch it to WAL and
        // create its tables; SQLite answers some of those races "busy" at
        // once, without waiting: try again, for as long as a busy wait.
        let started = std::time::Instant::now();
        let db = loop {
            match open_db(&db_path) {
                Err(SchemaError::Db(e)) if is_busy(&e) && started.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        }
        .map_err(|e| match e {
            SchemaError::Db(e) => db_err(&db_path, e),
            SchemaError::Newer(v) => Error::Db {
                path: db_path.clone(),
                message: format!(
                    "schema version {v} is not supported by this shoal (expects {SCHEMA_VERSION}); upgrade shoal"
                ),
            },
        })?;
        let store = FsStore {
            root,
            packs,
            db_path,
            db: Mutex::new(db),
            limits: FsLimits {
                pack_size: limits.pack_size.max(PACK_HEADER + 1),
                pending_blocks: limits.pending_blocks.max(1),
            },
            writer: Mutex::new(Writer::default()),
            pending: RwLock::new(HashMap::new()),
            readers: Mutex::new(ReadHandles::default()),
            tightened,
        };
        store.migrate_flat_layout()?;
        Ok(store)
    }

    /// The home directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store's paths that other users could read, write or enter when
    /// it was opened (earlier Shoals made directories 0755 and files 0644),
    /// in the order they were checked: the root first. Each was made
    /// private, or could not be and carries the error saying what to do.
    /// Empty for a store that was private already; callers print a note for
    /// each entry.
    pub fn tightened(&self) -> &[Tightened] {
        &self.tightened
    }

    /// Takes the shared writer lock (see module docs).
    pub fn write_guard(&self) -> Result<WriteGuard> {
        let file = self.lock_file()?;
        file.lock_shared().map_err(|e| Error::io("cannot lock", self.root.join("gc.lock"), e))?;
        Ok(WriteGuard { _file: file })
    }

    /// Takes the exclusive garbage-collection lock, waiting for writers.
    pub fn gc_guard(&self) -> Result<WriteGuard> {
        let file = self.lock_file()?;
        file.lock().map_err(|e| Error::io("cannot lock", self.root.join("gc.lock"), e))?;
        Ok(WriteGuard { _file: file })
    }

    fn lock_file(&self) -> Result<File> {
        let p = self.root.join("gc.lock");
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(&p)
            .map_err(|e| Error::io("cannot open", p, e))
    }

    /// Where the block with this CID's multihash lies: pack file, offset
    /// and length of its bytes. For tests that damage blocks on purpose.
    #[doc(hidden)]
    pub fn locate(&self, cid: &Cid) -> Result<Option<(PathBuf, u64, u64)>> {
        Ok(self.lookup(&cid.hash().to_bytes())?.map(|l| (self.pack_path(l.pack), l.offset, l.len)))
    }

    fn pack_path(&self, id: u64) -> PathBuf {
        self.packs.join(format!("{id:08}.pack"))
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> RwLockReadGuard<'_, HashMap<Vec<u8>, Loc>> {
        self.pending.read().unwrap_or_else(|p| p.into_inner())
    }

    fn pending_mut(&self) -> RwLockWriteGuard<'_, HashMap<Vec<u8>, Loc>> {
        self.pending.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(&self, mh: &[u8]) -> Result<Option<Loc>> {
        if let Some(l) = self.pending().get(mh) {
            return Ok(Some(*l));
        }
        self.lookup_committed(mh)
    }

    fn lookup_committed(&self, mh: &[u8]) -> Result<Option<Loc>> {
        let db = self.db();
        let mut stmt = db
            .prepare_cached("SELECT pack, offset, len FROM blocks WHERE mh = ?1")
            .map_err(|e| db_err(&self.db_path, e))?;
        stmt.query_row(params![mh], |r| Ok(Loc { pack: r.get(0)?, offset: r.get(1)?, len: r.get(2)? }))
            .optional()
            .map_err(|e| db_err(&self.db_path, e))
    }

    /// A read handle on a pack; `None` if the pack is gone.
    fn reader(&self, id: u64) -> Result<Option<Arc<File>>> {
        let mut r = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        r.tick += 1;
        let tick = r.tick;
        if let Some((f, used)) = r.files.get_mut(&id) {
            *used = tick;
            return Ok(Some(f.clone()));
        }
        let path = self.pack_path(id);
        let file = match File::open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot open pack", path, e)),
        };
        // Handles on packs gc removed would keep their space in use.
        r.files.retain(|_, (f, _)| f.metadata().is_ok_and(|m| m.nlink() > 0));
        if r.files.len() >= READ_HANDLES {
            if let Some(oldest) = r.files.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| *id) {
                r.files.remove(&oldest);
            }
        }
        r.files.insert(id, (file.clone(), tick));
        Ok(Some(file))
    }

    /// The bytes at `loc`; `None` if the pack is gone or too short.
    fn read(&self, loc: Loc) -> Result<Option<Vec<u8>>> {
        let Some(file) = self.reader(loc.pack)? else { return Ok(None) };
        let mut buf = vec![0u8; loc.len as usize];
        match file.read_exact_at(&mut buf, loc.offset) {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(Error::io("cannot read block from", self.pack_path(loc.pack), e)),
        }
    }

    /// Allocates a pack id that was never used in this home.
    fn next_pack_id(&self) -> Result<u64> {
        self.db()
            .query_row("UPDATE meta SET value = value + 1 WHERE key = 'next_pack' RETURNING value - 1", [], |r| {
                r.get(0)
            })
            .map_err(|e| db_err(&self.db_path, e))
    }

    /// Creates a new pack, locked.
    fn create_pack(&self) -> Result<Pack> {
        for _ in 0..16 {
            let id = self.next_pack_id()?;
            let path = self.pack_path(id);
            let file = match File::options().read(true).write(true).create_new(true).mode(FILE_MODE).open(&path) {
                Ok(f) => f,
                // Left by a home whose database was replaced: skip the id.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("cannot create pack", path, e)),
            };
            // gc removes unlocked packs without rows: one could take this
            // pack between its creation and our lock. Then take another.
            if file.try_lock().is_err() || !linked(&file, &path)? {
                continue;
            }
            if let Err(e) = file.write_all_at(PACK_MAGIC, 0) {
                let _ = fs::remove_file(&path);
                return Err(Error::io("cannot write pack", path, e));
            }
            return Ok(Pack { id, file, end: PACK_HEADER, kicked: PACK_HEADER });
        }
        Err(Error::Unsupported(format!(
            "cannot create a new pack in {}: every name tried was taken; run `shoal repo gc` and retry",
            self.packs.display()
        )))
    }

    /// Takes up pack `id` again if it is still there, nobody holds it and
    /// `need` more bytes fit.
    fn adopt(&self, id: u64, need: u64) -> Result<Option<Pack>> {
        let path = self.pack_path(id);
        let file = match File::options().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot open pack", path, e)),
        };
        if file.try_lock().is_err() {
            return Ok(None);
        }
        let m = file.metadata().map_err(|e| Error::io("cannot stat", &path, e))?;
        if m.nlink() == 0 || m.len() < PACK_HEADER || m.len() + need > self.limits.pack_size {
            return Ok(None);
        }
        Ok(Some(Pack { id, file, end: m.len(), kicked: m.len() }))
    }

    /// The pack to append `need` bytes to, rolling or creating one.
    fn ensure_pack<'w>(&self, w: &'w mut Writer, need: u64) -> Result<&'w mut Pack> {
        if let Some(p) = w.pack.take() {
            if p.end + need <= self.limits.pack_size || p.end <= PACK_HEADER {
                return Ok(w.pack.insert(p));
            }
            w.pack = Some(p);
            // Full: index what it holds (rows then only ever point into
            // one pack), and never take it up again.
            self.flush_locked(w)?;
            w.parked = None;
        }
        if let Some(id) = w.parked.take() {
            if let Some(p) = self.adopt(id, need)? {
                return Ok(w.pack.insert(p));
            }
        }
        let p = self.create_pack()?;
        w.dir_dirty = true;
        Ok(w.pack.insert(p))
    }

    fn append(&self, w: &mut Writer, mh: Vec<u8>, data: &[u8]) -> Result<()> {
        let head = record_header(&mh, data.len())?;
        let need = head.len() as u64 + data.len() as u64;
        let pack = self.ensure_pack(w, need)?;
        let start = pack.end;
        let offset = match write_record(&pack.file, start, &head, data) {
            Ok(o) => o,
            Err(e) => {
                // Give back the space of the torn record (a full disk), and
                // write the next one in its place.
                let _ = pack.file.set_len(start);
                return Err(Error::io("cannot write block to", self.pack_path(pack.id), e));
            }
        };
        pack.end = start + need;
        if pack.end - pack.kicked >= WRITEBACK_STEP {
            // Start writing back what this import wrote so far, so the disk
            // works while we hash; `flush` then waits for the rest only. A
            // hint: its failure shows up in `fdatasync`.
            // SAFETY: a valid open descriptor and a byte range; no memory.
            unsafe {
                libc::sync_file_range(
                    std::os::fd::AsRawFd::as_raw_fd(&pack.file),
                    pack.kicked as libc::off64_t,
                    (pack.end - pack.kicked) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            pack.kicked = pack.end;
        }
        let loc = Loc { pack: pack.id, offset, len: data.len() as u64 };
        w.dirty = true;
        self.pending_mut().insert(mh, loc);
        Ok(())
    }

    /// Syncs the pack, commits the pending rows, unlocks the pack.
    fn flush_locked(&self, w: &mut Writer) -> Result<()> {
        if w.pack.is_none() && !w.dir_dirty && self.pending().is_empty() {
            return Ok(());
        }
        if let Some(p) = &w.pack {
            if w.dirty {
                if let Err(e) = p.file.sync_data() {
                    // After a failed sync the kernel may have dropped the
                    // pages, and a later sync may succeed anyway: the rows
                    // written since the last flush can never be trusted.
                    let id = p.id;
                    let path = self.pack_path(id);
                    w.pack = None;
                    w.parked = None;
                    w.dirty = false;
                    self.pending_mut().retain(|_, l| l.pack != id);
                    return Err(Error::io("dropped the blocks written since the last flush: cannot sync", path, e));
                }
                w.dirty = false;
            }
        }
        if w.dir_dirty {
            // The new packs' names must be durable before rows point at them.
            File::open(&self.packs)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io("cannot sync directory", &self.packs, e))?;
            w.dir_dirty = false;
        }
        let rows: Vec<(Vec<u8>, Loc)> = self.pending().iter().map(|(k, l)| (k.clone(), *l)).collect();
        if !rows.is_empty() {
            let mut db = self.db();
            let tx =
                db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| db_err(&self.db_path, e))?;
            {
                // A row replaced is an older copy (maybe a damaged one): the
                // new one was hashed and synced just now.
                let mut stmt = tx
                    .prepare_cached("INSERT OR REPLACE INTO blocks (mh, pack, offset, len) VALUES (?1, ?2, ?3, ?4)")
                    .map_err(|e| db_err(&self.db_path, e))?;
                for (mh, l) in &rows {
                    stmt.execute(params![mh, l.pack, l.offset, l.len]).map_err(|e| db_err(&self.db_path, e))?;
                }
            }
            tx.commit().map_err(|e| db_err(&self.db_path, e))?;
            drop(db);
            // `writer` is held: nothing was added or removed meanwhile.
            self.pending_mut().clear();
        }
        // Every byte of the pack is indexed or dead now: let gc at it.
        if let Some(p) = w.pack.take() {
            w.parked = Some(p.id);
        }
        Ok(())
    }

    /// Gives back the space of deleted blocks (see module docs); returns
    /// the bytes given back. Safe beside writers and readers in any
    /// process; `repo gc` runs it under the exclusive gc lock.
    pub fn compact(&self) -> Result<u64> {
        let mut freed = 0u64;
        let mut group: Vec<Candidate> = Vec::new();
        let mut group_live = 0u64;
        for (id, path) in self.pack_files()? {
            let file = match File::options().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("cannot open pack", path, e)),
            };
            match file.try_lock() {
                Ok(()) => {}
                // A writer's: it holds blocks not indexed yet.
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => return Err(Error::io("cannot lock", path, e)),
            }
            if !linked(&file, &path)? {
                continue;
            }
            let size = file.metadata().map_err(|e| Error::io("cannot stat", &path, e))?.len();
            // Counted after taking the lock: no row can point into this
            // pack but those committed by its last writer, before it
            // unlocked it.
            let (rows, live) = self.pack_usage(id)?;
            if rows == 0 {
                match fs::remove_file(&path) {
                    Ok(()) => freed += size,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("cannot remove pack", path, e)),
                }
                continue;
            }
            let dead = size.saturating_sub(live + PACK_HEADER);
            let mostly_dead = dead >= size / DEAD_FRACTION;
            let small = size < self.limits.pack_size / SMALL_FRACTION;
            if !(mostly_dead || small) {
                continue;
            }
            group_live += live;
            group.push(Candidate { id, path, file, size, mostly_dead });
            if group.len() >= COMPACT_GROUP || group_live >= self.limits.pack_size {
                freed += self.rewrite(std::mem::take(&mut group))?;
                group_live = 0;
            }
        }
        // A small pack alone has nothing to merge with.
        let lone_small = matches!(group.as_slice(), [c] if !c.mostly_dead);
        if !group.is_empty() && !lone_small {
            freed += self.rewrite(group)?;
        }
        self.sweep_readers();
        Ok(freed)
    }

    /// Copies the live blocks of locked packs into new ones, moves their
    /// rows, removes the old packs. Returns the bytes given back.
    fn rewrite(&self, group: Vec<Candidate>) -> Result<u64> {
        let mut new_packs: Vec<Pack> = Vec::new();
        let mut moves: Vec<(Vec<u8>, Loc, Loc)> = Vec::new();
        let mut emptied: Vec<&Candidate> = Vec::new();
        for c in &group {
            let rows = self.pack_rows(c.id)?;
            let mut copied = Vec::with_capacity(rows.len());
            let mut readable = true;
            for (mh, old) in rows {
                let mut buf = vec![0u8; old.len as usize];
                if c.file.read_exact_at(&mut buf, old.offset).is_err() {
                    // Truncated or unreadable: `repo verify` reports its
                    // blocks; keep the pack as it is for examination.
                    tracing::warn!(pack = %c.path.display(), "not compacting a pack with unreadable blocks; run `shoal repo verify`");
                    readable = false;
                    break;
                }
                let head = record_header(&mh, buf.len())?;
                let need = head.len() as u64 + old.len;
                let roll = new_packs.last().is_none_or(|p| p.end + need > self.limits.pack_size && p.end > PACK_HEADER);
                if roll {
                    new_packs.push(self.create_pack()?);
                }
                let Some(p) = new_packs.last_mut() else { continue };
                let offset = write_record(&p.file, p.end, &head, &buf)
                    .map_err(|e| Error::io("cannot write block to", self.pack_path(p.id), e))?;
                p.end += need;
                copied.push((mh, old, Loc { pack: p.id, offset, len: old.len }));
            }
            if readable {
                moves.extend(copied);
                emptied.push(c);
            }
        }
        for p in &new_packs {
            p.file.sync_data().map_err(|e| Error::io("cannot sync", self.pack_path(p.id), e))?;
        }
        if !new_packs.is_empty() {
            File::open(&self.packs)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io("cannot sync directory", &self.packs, e))?;
        }
        {
            let mut db = self.db();
            let tx =
                db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| db_err(&self.db_path, e))?;
            {
                // Only rows still where we copied them from: one deleted or
                // replaced by a writer meanwhile stays as the writer left it.
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE blocks SET pack = ?4, offset = ?5 WHERE mh = ?1 AND pack = ?2 AND offset = ?3",
                    )
                    .map_err(|e| db_err(&self.db_path, e))?;
                for (mh, old, new) in &moves {
                    stmt.execute(params![mh, old.pack, old.offset, new.pack, new.offset])
                        .map_err(|e| db_err(&self.db_path, e))?;
                }
            }
            tx.commit().map_err(|e| db_err(&self.db_path, e))?;
        }
        let mut freed = 0u64;
        for c in emptied {
            match fs::remove_file(&c.path) {
                Ok(()) => freed += c.size,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot remove pack", &c.path, e)),
            }
        }
        let written: u64 = new_packs.iter().map(|p| p.end).sum();
        Ok(freed.saturating_sub(written))
    }

    /// Every pack file: (id, path).
    fn pack_files(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.packs).map_err(|e| Error::io("cannot list", &self.packs, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("cannot list", &self.packs, e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".pack")).and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            out.push((id, entry.path()));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Rows pointing into a pack, and the bytes their records take.
    fn pack_usage(&self, id: u64) -> Result<(u64, u64)> {
        self.db()
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(len + length(mh) + ?2), 0) FROM blocks WHERE pack = ?1",
                params![id, RECORD_FIXED],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| db_err(&self.db_path, e))
    }

    fn pack_rows(&self, id: u64) -> Result<Vec<(Vec<u8>, Loc)>> {
        let db = self.db();
        let mut stmt = db
            .prepare_cached("SELECT mh, offset, len FROM blocks WHERE pack = ?1 ORDER BY offset")
            .map_err(|e| db_err(&self.db_path, e))?;
        let rows = stmt
            .query_map(params![id], |r| Ok((r.get(0)?, Loc { pack: id, offset: r.get(1)?, len: r.get(2)? })))
            .map_err(|e| db_err(&self.db_path, e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| db_err(&self.db_path, e))
    }

    /// Closes read handles on packs that gc removed, so their space is
    /// given back.
    fn sweep_readers(&self) {
        let mut r = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        r.files.retain(|_, (f, _)| f.metadata().is_ok_and(|m| m.nlink() > 0));
    }

    /// Moves blocks of the one-file-per-block layout (schema 1:
    /// `blocks/XY/<BASE32 multihash>.data`) into a pack, checking each
    /// one's hash, then removes the old files. A corrupt one is left out
    /// with a warning (its pins then show as damaged in `repo verify`).
    fn migrate_flat_layout(&self) -> Result<()> {
        let blocks = self.root.join("blocks");
        let old_dirs = || -> Result<Vec<PathBuf>> {
            let mut out = Vec::new();
            for entry in fs::read_dir(&blocks).map_err(|e| Error::io("cannot list", &blocks, e))? {
                let entry = entry.map_err(|e| Error::io("cannot list", &blocks, e))?;
                if entry.file_name() != "packs" && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(entry.path());
                }
            }
            Ok(out)
        };
        if old_dirs()?.is_empty() {
            return Ok(());
        }
        // Two processes opening an old home at once would both move it.
        let _gc = self.gc_guard()?;
        let dirs = old_dirs()?;
        let (mut moved, mut left_out) = (0u64, 0u64);
        let mut batch = Vec::new();
        for dir in &dirs {
            if dir.file_name().is_some_and(|n| n == ".tmp") {
                continue;
            }
            for entry in fs::read_dir(dir).map_err(|e| Error::io("cannot list", dir, e))? {
                let path = entry.map_err(|e| Error::io("cannot list", dir, e))?.path();
                let Some(key) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".data")) else {
                    continue;
                };
                let Some(cid) = multibase::Base::Base32Upper.decode(key).ok().and_then(|mh| mh_to_cid(&mh)) else {
                    tracing::warn!(path = %path.display(), "leaving out a file that is not a block");
                    continue;
                };
                let data = fs::read(&path).map_err(|e| Error::io("cannot read block", &path, e))?;
                match Block::verified(cid, data) {
                    Ok(b) => batch.push(b),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "leaving out a corrupt block while moving blocks into packs: {e}");
                        left_out += 1;
                        continue;
                    }
                }
                moved += 1;
                if batch.len() >= 64 {
                    self.put_many(&batch)?;
                    batch.clear();
                }
            }
        }
        self.put_many(&batch)?;
        self.flush()?;
        for dir in &dirs {
            fs::remove_dir_all(dir).map_err(|e| Error::io("cannot remove old block directory", dir, e))?;
        }
        tracing::info!(moved, left_out, "moved the blocks of the one-file-per-block layout into a pack");
        Ok(())
    }
}

impl Drop for FsStore {
    fn drop(&mut self) {
        // Not flushed on purpose: a store dropped on an error path (a
        // failed import) leaves what a crash leaves, for gc to reclaim.
        let n = self.pending().len();
        if n > 0 {
            tracing::debug!(blocks = n, root = %self.root.display(), "store closed without a flush; its last blocks were not indexed");
        }
    }
}

/// Tightens the root, the store's directories and its files (see the
/// module docs); the packs directory is listed, nothing else is.
fn tighten_store(root: &Path, packs: &Path, db_path: &Path) -> Vec<Tightened> {
    let mut out = Vec::new();
    for dir in [root, &root.join("blocks"), packs] {
        private::tighten(dir, &mut out);
    }
    let mut files = vec![root.join("gc.lock"), db_path.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = db_path.as_os_str().to_owned();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    match fs::read_dir(packs) {
        Ok(entries) => {
            let mut in_packs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            in_packs.sort();
            files.extend(in_packs);
        }
        // The store's own operations report it if it matters.
        Err(e) => tracing::debug!(dir = %packs.display(), "cannot list the packs to check their modes: {e}"),
    }
    for f in &files {
        private::tighten(f, &mut out);
    }
    out
}

struct Candidate {
    id: u64,
    path: PathBuf,
    /// Held open and locked until the pack is removed.
    file: File,
    size: u64,
    mostly_dead: bool,
}

enum SchemaError {
    Db(rusqlite::Error),
    Newer(i64),
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> SchemaError {
        SchemaError::Db(e)
    }
}

/// Creates the tables, or moves a schema-1 database to schema 2 (the
/// blocks themselves move in `migrate_flat_layout`).
/// Opens the index database in WAL mode with its schema.
fn open_db(path: &Path) -> Result<Connection, SchemaError> {
    let mut db = Connection::open(path)?;
    db.busy_timeout(BUSY_TIMEOUT)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    init_schema(&mut db)?;
    Ok(db)
}

/// SQLite's "busy" and "locked" answers.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

fn init_schema(db: &mut Connection) -> Result<(), SchemaError> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS pins (cid BLOB PRIMARY KEY, mode TEXT NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;",
    )?;
    let version = |db: &Connection| -> rusqlite::Result<Option<i64>> {
        db.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| r.get(0)).optional()
    };
    if version(db)? == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match version(&tx)? {
        None | Some(1) => {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS blocks (
                     mh BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL, len INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS blocks_by_pack ON blocks (pack);
                 INSERT OR IGNORE INTO meta (key, value) VALUES ('next_pack', 1);",
            )?;
            tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?1)", params![SCHEMA_VERSION])?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(v) => return Err(SchemaError::Newer(v)),
    }
    tx.commit()?;
    Ok(())
}

impl BlockStore for FsStore {
    fn put(&self, block: &Block) -> Result<()> {
        self.put_many(std::slice::from_ref(block))
    }

    fn put_many(&self, blocks: &[Block]) -> Result<()> {
        let mut w = self.writer();
        for b in blocks {
            let mh = b.cid().hash().to_bytes();
            // Written by this instance since the last flush, from bytes
            // hashed on the way in: trusted.
            if self.pending().contains_key(&mh) {
                continue;
            }
            if let Some(loc) = self.lookup_committed(&mh)? {
                // An indexed copy is trusted only once its bytes match: a
                // new pin must not be built on a damaged one.
                match self.read(loc) {
                    Ok(Some(d)) if d == b.data() => continue,
                    Ok(_) => tracing::warn!(cid = %b.cid(), "storing a new copy of a damaged block"),
                    Err(e) => tracing::warn!(cid = %b.cid(), "storing a new copy of an unreadable block: {e}"),
                }
            }
            self.append(&mut w, mh, b.data())?;
            if self.pending().len() >= self.limits.pending_blocks {
                self.flush_locked(&mut w)?;
            }
        }
        Ok(())
    }

    fn get(&self, cid: &Cid) -> Result<Block> {
        let (data, pack) = self.read_block(cid)?;
        match Block::verified(*cid, data) {
            Ok(b) => Ok(b),
            Err(Error::HashMismatch { .. }) => Err(Error::Corrupt { cid: *cid, path: self.pack_path(pack) }),
            Err(e) => Err(e),
        }
    }

    fn get_for_peer(&self, cid: &Cid) -> Result<Block> {
        Ok(Block::unverified(*cid, self.read_block(cid)?.0))
    }

    fn has(&self, cid: &Cid) -> Result<bool> {
        Ok(self.lookup(&cid.hash().to_bytes())?.is_some())
    }

    fn size(&self, cid: &Cid) -> Result<Option<u64>> {
        Ok(self.lookup(&cid.hash().to_bytes())?.map(|l| l.len))
    }

    fn delete(&self, cid: &Cid) -> Result<()> {
        self.delete_many(std::slice::from_ref(cid))
    }

    fn delete_many(&self, cids: &[Cid]) -> Result<()> {
        // Held so that a flush cannot commit a pending row being removed.
        let _w = self.writer();
        let keys: Vec<Vec<u8>> = cids.iter().map(|c| c.hash().to_bytes()).collect();
        {
            let mut pending = self.pending_mut();
            for k in &keys {
                pending.remove(k);
            }
        }
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| db_err(&self.db_path, e))?;
        {
            let mut stmt =
                tx.prepare_cached("DELETE FROM blocks WHERE mh = ?1").map_err(|e| db_err(&self.db_path, e))?;
            for k in &keys {
                stmt.execute(params![k]).map_err(|e| db_err(&self.db_path, e))?;
            }
        }
        tx.commit().map_err(|e| db_err(&self.db_path, e))
    }

    fn list(&self) -> Result<Vec<Cid>> {
        let pending: Vec<Vec<u8>> = self.pending().keys().cloned().collect();
        let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(pending.len());
        let mut keys = Vec::new();
        for k in pending {
            if seen.insert(k.clone()) {
                keys.push(k);
            }
        }
        {
            let db = self.db();
            let mut stmt = db.prepare_cached("SELECT mh FROM blocks").map_err(|e| db_err(&self.db_path, e))?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(|e| db_err(&self.db_path, e))?;
            for row in rows {
                let k = row.map_err(|e| db_err(&self.db_path, e))?;
                if !seen.contains(&k) {
                    keys.push(k);
                }
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            match mh_to_cid(&k) {
                Some(c) => out.push(c),
                None => tracing::warn!(db = %self.db_path.display(), "ignoring an index row that is not a multihash"),
            }
        }
        Ok(out)
    }

    fn flush(&self) -> Result<()> {
        let mut w = self.writer();
        self.flush_locked(&mut w)
    }

    fn compact(&self) -> Result<u64> {
        FsStore::compact(self)
    }

    fn disk_usage(&self) -> Result<Option<DiskUsage>> {
        let mut live: HashMap<u64, u64> = HashMap::new();
        {
            let db = self.db();
            let mut stmt = db
                .prepare_cached("SELECT pack, SUM(len + length(mh) + ?1) FROM blocks GROUP BY pack")
                .map_err(|e| db_err(&self.db_path, e))?;
            let rows = stmt
                .query_map(params![RECORD_FIXED], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, u64>(1)?)))
                .map_err(|e| db_err(&self.db_path, e))?;
            for row in rows {
                let (pack, bytes) = row.map_err(|e| db_err(&self.db_path, e))?;
                live.insert(pack, bytes);
            }
        }
        for (mh, l) in self.pending().iter() {
            *live.entry(l.pack).or_default() += RECORD_FIXED + mh.len() as u64 + l.len;
        }
        let mut u = DiskUsage::default();
        for (id, path) in self.pack_files()? {
            let size = match fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("cannot stat", path, e)),
            };
            u.files += 1;
            u.bytes += size;
            match live.get(&id) {
                Some(l) => u.unreferenced += size.saturating_sub(l + PACK_HEADER),
                None => {
                    u.unreferenced += size;
                    u.files_without_blocks += 1;
                }
            }
        }
        Ok(Some(u))
    }

    fn pin_add(&self, cid: &Cid, mode: PinMode) -> Result<()> {
        // The pin must never be durable before the blocks it keeps.
        self.flush()?;
        self.db()
            .prepare_cached("INSERT INTO pins (cid, mode) VALUES (?1, ?2) ON CONFLICT(cid) DO UPDATE SET mode = ?2")
            .and_then(|mut st| st.execute(params![pin_key(cid), mode.as_str()]))
            .map_err(|e| db_err(&self.db_path, e))?;
        Ok(())
    }

    fn pin_mode(&self, cid: &Cid) -> Result<Option<PinMode>> {
        let mode: Option<String> = self
            .db()
            .prepare_cached("SELECT mode FROM pins WHERE cid = ?1")
            .and_then(|mut st| st.query_row(params![pin_key(cid)], |r| r.get(0)))
            .optional()
            .map_err(|e| db_err(&self.db_path, e))?;
        Ok(mode.map(|m| if m == "direct" { PinMode::Direct } else { PinMode::Recursive }))
    }

    fn pin_rm(&self, cid: &Cid) -> Result<()> {
        let n = self
            .db()
            .execute("DELETE FROM pins WHERE cid = ?1", params![pin_key(cid)])
            .map_err(|e| db_err(&self.db_path, e))?;
        if n == 0 {
            return Err(Error::NotPinned { cid: *cid });
        }
        Ok(())
    }

    fn pin_ls(&self) -> Result<Vec<(Cid, PinMode)>> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT cid, mode FROM pins ORDER BY cid").map_err(|e| db_err(&self.db_path, e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| db_err(&self.db_path, e))?;
        let mut out = Vec::new();
        for row in rows {
            let (bytes, mode) = row.map_err(|e| db_err(&self.db_path, e))?;
            let cid = Cid::try_from(bytes.as_slice()).map_err(|e| {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                Error::Db {
                    path: self.db_path.clone(),
                    message: format!(
                        "the pin table holds an entry that is not a cid ({}); remove it with `sqlite3 {} \"DELETE FROM pins WHERE cid = x'{hex}'\"`",
                        e.to_string().to_lowercase(),
                        self.db_path.display()
                    ),
                }
            })?;
            let mode = match mode.as_str() {
                "direct" => PinMode::Direct,
                _ => PinMode::Recursive,
            };
            out.push((cid, mode));
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("embedded store at {}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{CidVersion, RAW};

    fn block(seed: u8, len: usize) -> Block {
        Block::new(CidVersion::V1, RAW, (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect())
    }

    fn packs(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir.join("blocks/packs")).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }

    fn damage(s: &FsStore, cid: &Cid, f: impl FnOnce(&File, u64, u64)) {
        let (path, offset, len) = s.locate(cid).unwrap().unwrap();
        f(&File::options().write(true).open(path).unwrap(), offset, len);
    }

    #[test]
    fn a_pack_is_self_describing() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let b = Block::new(CidVersion::V1, RAW, b"hello world\n".to_vec());
        s.put(&b).unwrap();
        s.flush().unwrap();
        let (path, offset, len) = s.locate(b.cid()).unwrap().unwrap();
        assert_eq!(path.file_name().unwrap(), "00000001.pack");
        let bytes = fs::read(&path).unwrap();
        let mh = b.cid().hash().to_bytes();
        let mut expected = PACK_MAGIC.to_vec();
        expected.extend_from_slice(b"blk1");
        expected.extend_from_slice(&12u32.to_le_bytes());
        expected.push(mh.len() as u8);
        expected.extend_from_slice(&mh);
        assert_eq!(offset, expected.len() as u64);
        expected.extend_from_slice(b"hello world\n");
        assert_eq!(bytes, expected);
        assert_eq!(len, 12);
    }

    #[test]
    fn pending_blocks_are_seen_here_at_once_and_elsewhere_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let a = FsStore::open(dir.path()).unwrap();
        let b = FsStore::open(dir.path()).unwrap();
        let x = block(1, 5000);
        a.put(&x).unwrap();
        assert_eq!(a.get(x.cid()).unwrap(), x);
        assert_eq!(a.size(x.cid()).unwrap(), Some(5000));
        assert!(a.list().unwrap().iter().any(|c| c.hash() == x.cid().hash()));
        assert!(!b.has(x.cid()).unwrap());
        assert!(b.list().unwrap().is_empty());
        a.flush().unwrap();
        assert_eq!(b.get(x.cid()).unwrap(), x);
        // Flushing with nothing pending does nothing, cheaply.
        a.flush().unwrap();
        a.flush().unwrap();
    }

    #[test]
    fn pin_add_flushes_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = FsStore::open(dir.path()).unwrap();
        let x = block(2, 100);
        a.put(&x).unwrap();
        a.pin_add(x.cid(), PinMode::Direct).unwrap();
        drop(a);
        let b = FsStore::open(dir.path()).unwrap();
        assert_eq!(b.get(x.cid()).unwrap(), x);
    }

    #[test]
    fn a_crash_before_flush_leaves_an_orphan_pack_that_compaction_removes() {
        let dir = tempfile::tempdir().unwrap();
        let kept = block(3, 1000);
        {
            let s = FsStore::open(dir.path()).unwrap();
            s.put(&kept).unwrap();
            s.flush().unwrap();
        }
        let lost = block(4, 300_000);
        {
            let s = FsStore::open(dir.path()).unwrap();
            s.put(&lost).unwrap();
            // Dropped without a flush: what a killed process leaves.
        }
        assert_eq!(packs(dir.path()).len(), 2);
        let s = FsStore::open(dir.path()).unwrap();
        assert!(!s.has(lost.cid()).unwrap());
        let u = s.disk_usage().unwrap().unwrap();
        assert_eq!((u.files, u.files_without_blocks), (2, 1));
        assert!(u.unreferenced > 300_000, "{u:?}");
        assert!(s.compact().unwrap() > 300_000);
        // The orphan is gone; the other one is small but alone: kept as is.
        assert_eq!(packs(dir.path()).len(), 1);
        assert_eq!(s.get(kept.cid()).unwrap(), kept);
        assert_eq!(s.disk_usage().unwrap().unwrap().unreferenced, 0);
    }

    #[test]
    fn compaction_never_touches_a_pack_a_writer_holds() {
        let dir = tempfile::tempdir().unwrap();
        let writer = FsStore::open(dir.path()).unwrap();
        let x = block(5, 10_000);
        writer.put(&x).unwrap();
        let gc = FsStore::open(dir.path()).unwrap();
        assert_eq!(gc.compact().unwrap(), 0);
        writer.flush().unwrap();
        assert_eq!(gc.get(x.cid()).unwrap(), x);
    }

    #[test]
    fn a_right_sized_copy_of_zeros_is_not_trusted() {
        // What a disk that lied about a sync can leave behind.
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let b = block(7, 4096);
        s.put(&b).unwrap();
        s.flush().unwrap();
        damage(&s, b.cid(), |f, offset, len| f.write_all_at(&vec![0u8; len as usize], offset).unwrap());
        assert!(matches!(s.get(b.cid()), Err(Error::Corrupt { .. })));
        // A read for a peer that verifies on arrival skips the hash: it
        // gets the stored bytes, and the peer refuses them.
        let sent = s.get_for_peer(b.cid()).unwrap();
        assert_eq!(sent.data(), &vec![0u8; 4096][..]);
        assert!(Block::verified(*b.cid(), sent.into_data()).is_err());
        s.put(&b).unwrap();
        assert_eq!(s.get_for_peer(b.cid()).unwrap(), b);
        assert_eq!(s.get(b.cid()).unwrap(), b);
        s.flush().unwrap();
        assert_eq!(FsStore::open(dir.path()).unwrap().get(b.cid()).unwrap(), b);
    }

    #[test]
    fn a_truncated_pack_is_corrupt_and_a_new_put_rewrites_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let b = block(8, 1000);
        s.put(&b).unwrap();
        s.flush().unwrap();
        damage(&s, b.cid(), |f, offset, _| f.set_len(offset + 10).unwrap());
        let err = s.get(b.cid()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("is corrupt on disk") && err.to_string().contains(".pack"), "{err}");
        assert_eq!(crate::repo::verify(&s).unwrap().corrupt.len(), 1);
        s.put(&b).unwrap();
        assert_eq!(s.get(b.cid()).unwrap(), b);
        s.flush().unwrap();
        assert!(crate::repo::verify(&s).unwrap().ok());
    }

    #[test]
    fn a_missing_pack_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let b = block(9, 1000);
        s.put(&b).unwrap();
        s.flush().unwrap();
        let (path, _, _) = s.locate(b.cid()).unwrap().unwrap();
        fs::remove_file(path).unwrap();
        let other = FsStore::open(dir.path()).unwrap();
        assert!(matches!(other.get(b.cid()), Err(Error::Corrupt { .. })));
        let r = crate::repo::verify(&other).unwrap();
        assert_eq!(r.corrupt.len(), 1);
    }

    #[test]
    fn compaction_keeps_live_blocks_and_gives_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let limits = FsLimits { pack_size: 1 << 20, ..FsLimits::default() };
        let s = FsStore::open_with(dir.path(), limits).unwrap();
        let blocks: Vec<Block> = (0..12).map(|i| block(i, 200_000)).collect();
        s.put_many(&blocks).unwrap();
        s.flush().unwrap();
        // Rolled at 1 MiB: 5 blocks fit a pack.
        assert_eq!(packs(dir.path()).len(), 3);
        let before: u64 = packs(dir.path()).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
        // A reader that has every pack open before compaction.
        let reader = FsStore::open(dir.path()).unwrap();
        for b in &blocks {
            assert_eq!(reader.get(b.cid()).unwrap(), *b);
        }
        // Delete most of the first pack, all of the second, none of the third.
        let gone: Vec<Cid> = [0, 1, 2, 5, 6, 7, 8, 9].iter().map(|&i| *blocks[i].cid()).collect();
        s.delete_many(&gone).unwrap();
        let freed = s.compact().unwrap();
        let after: u64 = packs(dir.path()).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
        assert_eq!(before - after, freed);
        assert!(freed >= 8 * 200_000, "{freed}");
        assert_eq!(s.disk_usage().unwrap().unwrap().unreferenced, 0);
        for (i, b) in blocks.iter().enumerate() {
            let live = ![0, 1, 2, 5, 6, 7, 8, 9].contains(&i);
            assert_eq!(s.has(b.cid()).unwrap(), live);
            // The reader finds moved blocks in their new packs.
            if live {
                assert_eq!(reader.get(b.cid()).unwrap(), *b);
                assert_eq!(s.get(b.cid()).unwrap(), *b);
            } else {
                assert!(matches!(reader.get(b.cid()), Err(Error::NotFound { .. })));
            }
        }
        // The writer takes up a new pack after compaction took its last.
        let more = block(50, 1000);
        s.put(&more).unwrap();
        s.flush().unwrap();
        assert_eq!(reader.get(more.cid()).unwrap(), more);
        assert!(crate::repo::verify(&reader).unwrap().ok());
    }

    #[test]
    fn a_reader_whose_pack_was_compacted_away_looks_again() {
        let dir = tempfile::tempdir().unwrap();
        let limits = FsLimits { pack_size: 1 << 20, ..FsLimits::default() };
        let s = FsStore::open_with(dir.path(), limits).unwrap();
        let a = block(1, 100_000);
        let b = block(2, 100_000);
        s.put_many(&[a.clone(), b.clone()]).unwrap();
        s.flush().unwrap();
        let reader = FsStore::open(dir.path()).unwrap();
        let stale = reader.lookup(&b.cid().hash().to_bytes()).unwrap().unwrap();
        s.delete(a.cid()).unwrap();
        assert!(s.compact().unwrap() > 0);
        // The row the reader looked up names a pack that is gone now.
        assert!(reader.read(stale).unwrap().is_none());
        assert_eq!(reader.get(b.cid()).unwrap(), b);
    }

    #[test]
    fn two_stores_on_one_home_write_at_once_into_their_own_packs() {
        let dir = tempfile::tempdir().unwrap();
        let a = FsStore::open(dir.path()).unwrap();
        let b = FsStore::open(dir.path()).unwrap();
        let (xs, ys): (Vec<Block>, Vec<Block>) =
            ((0..40).map(|i| block(i, 50_000)).collect(), (40..80).map(|i| block(i, 50_000)).collect());
        // One block both write.
        let shared = block(200, 70_000);
        std::thread::scope(|t| {
            t.spawn(|| {
                for x in &xs {
                    a.put_many(&[x.clone(), shared.clone()]).unwrap();
                }
                a.flush().unwrap();
            });
            t.spawn(|| {
                for y in &ys {
                    b.put_many(&[y.clone(), shared.clone()]).unwrap();
                }
                b.flush().unwrap();
            });
        });
        assert_eq!(packs(dir.path()).len(), 2);
        for x in xs.iter().chain(&ys).chain([&shared]) {
            assert_eq!(a.get(x.cid()).unwrap(), *x);
            assert_eq!(b.get(x.cid()).unwrap(), *x);
        }
        assert_eq!(a.list().unwrap().len(), 81);
        // One copy of the shared block is dead; gc's compaction merges the
        // two small packs into one.
        let c = FsStore::open(dir.path()).unwrap();
        c.compact().unwrap();
        assert_eq!(packs(dir.path()).len(), 1);
        assert_eq!(c.disk_usage().unwrap().unwrap().unreferenced, 0);
        assert!(crate::repo::verify(&a).unwrap().ok());
    }

    #[test]
    fn many_pending_blocks_are_flushed_by_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let limits = FsLimits { pending_blocks: 10, ..FsLimits::default() };
        let a = FsStore::open_with(dir.path(), limits).unwrap();
        let blocks: Vec<Block> = (0..25).map(|i| block(i, 100)).collect();
        a.put_many(&blocks).unwrap();
        let b = FsStore::open(dir.path()).unwrap();
        assert_eq!(b.list().unwrap().len(), 20);
        assert_eq!(a.list().unwrap().len(), 25);
        // Still one pack: taken up again after each flush.
        assert_eq!(packs(dir.path()).len(), 1);
    }

    #[test]
    fn a_deleted_pending_block_is_not_committed_by_the_next_flush() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let x = block(1, 100);
        s.put(&x).unwrap();
        s.delete(x.cid()).unwrap();
        s.flush().unwrap();
        assert!(!FsStore::open(dir.path()).unwrap().has(x.cid()).unwrap());
    }

    #[test]
    fn the_one_file_per_block_layout_is_moved_into_a_pack() {
        let dir = tempfile::tempdir().unwrap();
        // A schema-1 home: blocks as files, a pin in the database.
        let good = block(1, 5000);
        let corrupt = block(2, 5000);
        let path_of = |b: &Block| {
            let key = multibase::Base::Base32Upper.encode(b.cid().hash().to_bytes());
            let n = key.len();
            dir.path().join("blocks").join(&key[n - 3..n - 1]).join(format!("{key}.data"))
        };
        for (b, data) in [(&good, good.data().to_vec()), (&corrupt, vec![0u8; 5000])] {
            fs::create_dir_all(path_of(b).parent().unwrap()).unwrap();
            fs::write(path_of(b), data).unwrap();
        }
        fs::create_dir_all(dir.path().join("blocks/.tmp")).unwrap();
        {
            let db = Connection::open(dir.path().join("repo.sqlite")).unwrap();
            db.execute_batch(
                "CREATE TABLE pins (cid BLOB PRIMARY KEY, mode TEXT NOT NULL) WITHOUT ROWID;
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
                 INSERT INTO meta VALUES ('schema', 1);",
            )
            .unwrap();
            db.execute("INSERT INTO pins VALUES (?1, 'direct')", params![good.cid().to_bytes()]).unwrap();
        }
        let s = FsStore::open(dir.path()).unwrap();
        assert_eq!(s.get(good.cid()).unwrap(), good);
        assert!(!s.has(corrupt.cid()).unwrap());
        assert_eq!(s.pin_ls().unwrap(), vec![(*good.cid(), PinMode::Direct)]);
        let left: Vec<_> = fs::read_dir(dir.path().join("blocks")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec!["packs"]);
        drop(s);
        let s = FsStore::open(dir.path()).unwrap();
        assert_eq!(s.get(good.cid()).unwrap(), good);
        assert_eq!(packs(dir.path()).len(), 1);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(FsStore::open(dir.path()).unwrap());
        Connection::open(dir.path().join("repo.sqlite"))
            .unwrap()
            .execute("UPDATE meta SET value = 99 WHERE key = 'schema'", [])
            .unwrap();
        let err = FsStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("schema version 99 is not supported") && err.contains("upgrade shoal"), "{err}");
    }
}
