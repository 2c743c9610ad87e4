//! Repository maintenance: verify, garbage-collect, stat.
//!
//! [`verify`] names damage the way the user knows the data: by the pin as
//! it was given (a CIDv0 `Qm…` pin stays `Qm…`), the path inside the DAG
//! (`Qm…/dir/file.bin`), the block as its parent links to it, and for a
//! block inside a file which chunk and bytes of the file it holds.

use std::collections::{HashMap, HashSet};
use std::fmt;

use cid::Cid;

use crate::block::{DAG_PB, RAW};
use crate::exporter::walk;
use crate::pb::{file_leaf_len, DataType, PbNode, UnixFs};
use crate::store::{BlockStore, DiskUsage, PinMode};
use crate::{Block, Error, Result};

/// What [`verify`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Blocks read and hash-checked.
    pub checked: u64,
    /// Stored blocks whose bytes are damaged or unreadable, each with the
    /// pinned paths that reach it (none: no pin reaches it).
    pub corrupt: Vec<CorruptBlock>,
    /// The damaged or missing blocks of every pin, in pin order then DAG
    /// order: each block once per pin, at the first path found. A pin with
    /// several damaged blocks has several entries.
    pub damaged_pins: Vec<DamagedPin>,
}

impl VerifyReport {
    /// Whether everything is sound.
    pub fn ok(&self) -> bool {
        self.corrupt.is_empty() && self.damaged_pins.is_empty()
    }
}

/// What is wrong with a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The block is not in the store.
    Missing,
    /// The block is indexed but its bytes on disk do not hash to its name,
    /// or its pack is cut short or gone. It is never served.
    CorruptOnDisk,
    /// The store handed back bytes that do not hash to the block's name
    /// (stores that keep no files of their own: memory, an ipfs daemon).
    HashMismatch,
    /// Reading the block failed (an I/O error; `detail` says which).
    Unreadable,
    /// The block is intact but is not what the DAG says it is: it cannot
    /// be decoded, or a file links to something that is not file data
    /// (`detail` says why). Storing it again does not help.
    Malformed,
}

impl Problem {
    /// Lowercase words for messages: "is missing", "is corrupt on disk"…
    pub fn describe(self) -> &'static str {
        match self {
            Problem::Missing => "is missing",
            Problem::CorruptOnDisk => "is corrupt on disk",
            Problem::HashMismatch => "does not match its hash",
            Problem::Unreadable => "cannot be read",
            Problem::Malformed => "is malformed",
        }
    }

    fn of(e: &Error) -> Option<Problem> {
        Some(match e {
            Error::NotFound { .. } => Problem::Missing,
            Error::Corrupt { .. } => Problem::CorruptOnDisk,
            Error::HashMismatch { .. } => Problem::HashMismatch,
            Error::Io { .. } => Problem::Unreadable,
            Error::Malformed { .. } | Error::WrongKind { .. } | Error::UnsupportedHash { .. } => Problem::Malformed,
            _ => return None,
        })
    }

    /// The error's own words, for the problems that need them.
    fn detail(self, e: &Error) -> Option<String> {
        matches!(self, Problem::Unreadable | Problem::Malformed).then(|| e.to_string())
    }
}

/// Where a damaged block lies in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Chunk {
    /// Index (from 0) of the first chunk (leaf block) of the file that the
    /// block holds or, for a node above the leaves, leads to. `None` when a
    /// damaged node before it, of unknown size, leaves the count unknown.
    pub index: Option<u64>,
    /// Whether the block is known to be a single chunk: it was read, or it
    /// is a raw block, or its parent's link records exactly the size of a
    /// dag-pb leaf holding its bytes. Otherwise it may be a node above
    /// several chunks, from `index` on.
    pub leaf: bool,
    /// Offset in the file of the first byte the block holds, from the sizes
    /// its parents record (`None` where they are inconsistent).
    pub offset: Option<u64>,
    /// File bytes the block holds, as its parent records them.
    pub len: Option<u64>,
}

/// One damaged or missing block of a pinned DAG.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DamagedPin {
    /// The pinned root as the pin holds it: the CID that was pinned, in the
    /// form it was given (a CIDv0 `Qm…` pin stays `Qm…`).
    #[serde(serialize_with = "crate::ser_cid")]
    pub pin: Cid,
    /// How it is pinned.
    pub mode: PinMode,
    /// Where the block is: the pin, then the directory entry names leading
    /// to it, `/`-separated (`Qm…/dir/file.bin`). For a block inside a
    /// file this is the file's path, and `chunk` says where in the file.
    pub path: String,
    /// The damaged block, in the form its parent links to it (the pin for
    /// the root).
    #[serde(serialize_with = "crate::ser_cid")]
    pub block: Cid,
    /// For a block below a file's root node: where in the file it lies.
    pub chunk: Option<Chunk>,
    /// What is wrong.
    pub problem: Problem,
    /// The underlying error, for [`Problem::Unreadable`] and
    /// [`Problem::Malformed`].
    pub detail: Option<String>,
}

impl fmt::Display for DamagedPin {
    /// One line: where, what, and what to do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path)?;
        match self.chunk {
            Some(c) => {
                write!(f, "block {} (", self.block)?;
                match (c.leaf, c.index) {
                    (true, Some(i)) => write!(f, "chunk {i} of the file")?,
                    (true, None) => write!(f, "a chunk of the file")?,
                    (false, Some(i)) => write!(f, "the file's chunks from {i}")?,
                    (false, None) => write!(f, "part of the file")?,
                }
                if let (Some(o), Some(l)) = (c.offset, c.len) {
                    write!(f, ", bytes {o}..{}", o.saturating_add(l))?;
                }
                write!(f, ")")?;
            }
            None if self.block == self.pin => write!(f, "the pinned root")?,
            None => write!(f, "block {}", self.block)?,
        }
        write!(f, " {}", self.problem.describe())?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        let pin = self.pin;
        match self.problem {
            Problem::Missing => write!(
                f,
                "; add the original data again with the options it was added with (`shoal add`) or import a car file holding it (`shoal car import`), or unpin it (`shoal pin rm {pin}`)"
            ),
            Problem::CorruptOnDisk | Problem::HashMismatch | Problem::Unreadable => write!(
                f,
                "; it is never served. add the original data again with the options it was added with (`shoal add`: a good copy replaces the damaged one) or import a car file holding it (`shoal car import`), or unpin it (`shoal pin rm {pin}`)"
            ),
            Problem::Malformed => {
                write!(f, "; the dag itself is invalid and storing it again does not help: unpin it (`shoal pin rm {pin}`)")
            }
        }
    }
}

/// A stored block whose bytes are damaged or unreadable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CorruptBlock {
    /// The block: as a pinned DAG links to it when one does, else as the
    /// store lists it (CIDv1 raw over its multihash, as the codec is not
    /// stored).
    #[serde(serialize_with = "crate::ser_cid")]
    pub block: Cid,
    /// What is wrong ([`Problem::CorruptOnDisk`], [`Problem::HashMismatch`]
    /// or [`Problem::Unreadable`]).
    pub problem: Problem,
    /// The underlying error, for [`Problem::Unreadable`].
    pub detail: Option<String>,
    /// The paths through which pins reach it (see [`DamagedPin::path`];
    /// the first found in each pin). Empty: no pin reaches it.
    pub pinned_at: Vec<String>,
}

impl CorruptBlock {
    /// Whether no pin reaches the block.
    pub fn unpinned(&self) -> bool {
        self.pinned_at.is_empty()
    }
}

impl fmt::Display for CorruptBlock {
    /// One line: which block, what, and where it is pinned.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block {} {}", self.block, self.problem.describe())?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if self.pinned_at.is_empty() {
            write!(f, "; no pin reaches it, so `shoal repo gc` removes it")
        } else {
            write!(f, "; pinned at {} (see the damaged pins)", self.pinned_at.join(", "))
        }
    }
}

/// Reads and hash-checks every block, then walks every pin's DAG and
/// reports each damaged or missing block with the path that reaches it.
/// Blocks the first pass found sound are not read again unless their
/// links are needed (raw leaves are read once).
pub fn verify(store: &dyn BlockStore) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    // Multihash -> damage found by the first pass (None: sound).
    let mut scanned: HashMap<Vec<u8>, Option<Damage>> = HashMap::new();
    let mut corrupt: Vec<(Vec<u8>, Cid)> = Vec::new();
    for cid in store.list()? {
        report.checked += 1;
        let mh = cid.hash().to_bytes();
        match store.get(&cid) {
            Ok(_) => {
                scanned.insert(mh, None);
            }
            Err(Error::NotFound { .. }) => {} // removed meanwhile
            Err(e) => {
                let problem = match Problem::of(&e) {
                    Some(p @ (Problem::CorruptOnDisk | Problem::HashMismatch | Problem::Unreadable)) => p,
                    _ => return Err(e),
                };
                corrupt.push((mh.clone(), cid));
                scanned.insert(mh, Some((problem, problem.detail(&e))));
            }
        }
    }
    for (pin, mode) in store.pin_ls()? {
        let mut w = PinWalk::new(store, &scanned, pin, mode);
        match mode {
            PinMode::Recursive => w.walk()?,
            PinMode::Direct => {
                if let Err(d) = w.read(&pin)? {
                    w.damaged(0, pin, None, d);
                }
            }
        }
        report.damaged_pins.extend(w.found);
    }
    // Where pins reach each corrupt block.
    let mut reached: HashMap<Vec<u8>, (Cid, Vec<String>)> = HashMap::new();
    for d in &report.damaged_pins {
        let e = reached.entry(d.block.hash().to_bytes()).or_insert_with(|| (d.block, Vec::new()));
        if !e.1.contains(&d.path) {
            e.1.push(d.path.clone());
        }
    }
    for (mh, listed) in corrupt {
        let Some(Some((problem, detail))) = scanned.remove(&mh) else { continue };
        let (block, pinned_at) = reached.remove(&mh).unwrap_or((listed, Vec::new()));
        report.corrupt.push(CorruptBlock { block, problem, detail, pinned_at });
    }
    Ok(report)
}

/// A damaged block found by a walk: problem and detail.
type Damage = (Problem, Option<String>);

/// What reading a block gave.
enum Read {
    /// A raw block the first pass found sound: its bytes are not needed.
    SoundLeaf,
    /// The block, hash-checked.
    Block(Block),
}

/// One pin's walk.
struct PinWalk<'a> {
    store: &'a dyn BlockStore,
    scanned: &'a HashMap<Vec<u8>, Option<Damage>>,
    pin: Cid,
    mode: PinMode,
    /// Path components: (parent, name); 0 is the pin itself.
    names: Vec<(usize, String)>,
    /// Blocks met at directory level (directories, file roots).
    seen: HashSet<Vec<u8>>,
    /// Blocks met inside files, with the leaves below each (`None`: some
    /// were unreadable).
    leaves: HashMap<Vec<u8>, Option<u64>>,
    found: Vec<DamagedPin>,
}

impl<'a> PinWalk<'a> {
    fn new(
        store: &'a dyn BlockStore,
        scanned: &'a HashMap<Vec<u8>, Option<Damage>>,
        pin: Cid,
        mode: PinMode,
    ) -> PinWalk<'a> {
        PinWalk {
            store,
            scanned,
            pin,
            mode,
            names: vec![(0, pin.to_string())],
            seen: HashSet::new(),
            leaves: HashMap::new(),
            found: Vec::new(),
        }
    }

    /// Reads a block; the inner `Err` is damage to report, the outer one
    /// a failure of the store as a whole (database, daemon).
    fn read(&self, cid: &Cid) -> Result<Result<Read, Damage>> {
        match self.scanned.get(&cid.hash().to_bytes()) {
            Some(Some(d)) => return Ok(Err(d.clone())),
            Some(None) if cid.codec() == RAW => return Ok(Ok(Read::SoundLeaf)),
            _ => {}
        }
        match self.store.get(cid) {
            Ok(b) => Ok(Ok(Read::Block(b))),
            Err(e) => match Problem::of(&e) {
                Some(p) => Ok(Err((p, p.detail(&e)))),
                None => Err(e),
            },
        }
    }

    fn path(&self, mut at: usize) -> String {
        let mut parts = Vec::new();
        loop {
            let (parent, name) = &self.names[at];
            parts.push(name.as_str());
            if at == 0 {
                break;
            }
            at = *parent;
        }
        parts.reverse();
        parts.join("/")
    }

    fn damaged(&mut self, at: usize, block: Cid, chunk: Option<Chunk>, (problem, detail): Damage) {
        let path = self.path(at);
        self.found.push(DamagedPin { pin: self.pin, mode: self.mode, path, block, chunk, problem, detail });
    }

    fn malformed(reason: impl fmt::Display) -> Damage {
        (Problem::Malformed, Some(reason.to_string()))
    }

    /// Walks the DAG through directories (plain and sharded); files are
    /// walked by [`PinWalk::file`].
    fn walk(&mut self) -> Result<()> {
        let mut stack = vec![(self.pin, 0usize)];
        while let Some((cid, at)) = stack.pop() {
            if !self.seen.insert(cid.hash().to_bytes()) {
                continue;
            }
            let block = match self.read(&cid)? {
                Err(d) => {
                    self.damaged(at, cid, None, d);
                    continue;
                }
                Ok(Read::SoundLeaf) => continue,
                Ok(Read::Block(b)) => b,
            };
            if cid.codec() != DAG_PB {
                continue; // raw: a file of one chunk; other codecs: not followed
            }
            let pb = match PbNode::decode(block.data()) {
                Ok(pb) => pb,
                Err(e) => {
                    self.damaged(at, cid, None, Self::malformed(e));
                    continue;
                }
            };
            let unixfs = pb.data.as_deref().and_then(|d| UnixFs::decode(d).ok());
            match unixfs.as_ref().map(|u| u.kind) {
                Some(DataType::File | DataType::Raw) => {
                    if let Some(u) = unixfs {
                        self.file(at, &pb, &u, 0, Some(0), Some(0))?;
                    }
                }
                Some(DataType::HamtShard) => {
                    // Links are `XX` (a child shard: the same directory) or
                    // `XX` + entry name.
                    for l in pb.links.iter().rev() {
                        let name = l.name.as_deref().unwrap_or_default();
                        match name.get(2..) {
                            Some(entry) if !entry.is_empty() => {
                                let child = self.name(at, entry);
                                stack.push((l.hash, child));
                            }
                            _ => stack.push((l.hash, at)),
                        }
                    }
                }
                // Directories, and dag-pb that is not UnixFS: by link name
                // (or index, for a link without one).
                _ => {
                    for (i, l) in pb.links.iter().enumerate().rev() {
                        let name = match l.name.as_deref() {
                            Some(n) if !n.is_empty() => n.to_string(),
                            _ => i.to_string(),
                        };
                        let child = self.name(at, &name);
                        stack.push((l.hash, child));
                    }
                }
            }
        }
        Ok(())
    }

    fn name(&mut self, parent: usize, name: &str) -> usize {
        self.names.push((parent, name.to_string()));
        self.names.len() - 1
    }

    /// Walks the children of a decoded file node at path `at`, whose first
    /// chunk is `first` and first byte `offset` (`None`: unknown). Returns
    /// the leaves below it (`None`: unknown, some were unreadable).
    fn file(
        &mut self,
        at: usize,
        pb: &PbNode,
        u: &UnixFs,
        depth: usize,
        first: Option<u64>,
        offset: Option<u64>,
    ) -> Result<Option<u64>> {
        if pb.links.is_empty() {
            return Ok(Some(1));
        }
        let sizes = (u.blocksizes.len() == pb.links.len()).then_some(&u.blocksizes);
        let inline = u.data.as_ref().map_or(0, |d| d.len() as u64);
        let mut offset = offset.and_then(|o| o.checked_add(inline));
        let mut count = Some(0u64);
        for (i, l) in pb.links.iter().enumerate() {
            let len = sizes.map(|s| s[i]);
            let index = first.zip(count).and_then(|(f, c)| f.checked_add(c));
            let here = Chunk { index, leaf: false, offset, len };
            offset = offset.zip(len).and_then(|(o, n)| o.checked_add(n));
            let n = self.file_child(at, &l.hash, l.tsize, depth + 1, here)?;
            count = count.zip(n).and_then(|(c, n)| c.checked_add(n));
        }
        Ok(count)
    }

    /// One block below a file's root; returns the leaves below it.
    fn file_child(
        &mut self,
        at: usize,
        cid: &Cid,
        tsize: Option<u64>,
        depth: usize,
        here: Chunk,
    ) -> Result<Option<u64>> {
        let mh = cid.hash().to_bytes();
        if let Some(n) = self.leaves.get(&mh) {
            return Ok(*n); // a repeated chunk or subtree, checked already
        }
        let n = match self.read(cid)? {
            Err(d) => {
                // Unread, a block is one leaf if it is raw, or if its link
                // records the size of a dag-pb leaf of its bytes (a node
                // above leaves is larger by its own links); else unknown.
                let leaf = cid.codec() == RAW || here.len.zip(tsize).is_some_and(|(n, t)| file_leaf_len(n) == t);
                self.damaged(at, *cid, Some(Chunk { leaf, ..here }), d);
                leaf.then_some(1)
            }
            Ok(Read::SoundLeaf) => Some(1),
            Ok(Read::Block(b)) => match self.file_node(at, &b, depth, here)? {
                Ok(n) => n,
                Err(d) => {
                    let leaf = PbNode::decode(b.data()).is_ok_and(|pb| pb.links.is_empty());
                    self.damaged(at, *cid, Some(Chunk { leaf, ..here }), d);
                    leaf.then_some(1)
                }
            },
        };
        self.leaves.insert(mh, n);
        Ok(n)
    }

    /// A file block read and hash-checked: a leaf, or a node to descend.
    fn file_node(&mut self, at: usize, b: &Block, depth: usize, here: Chunk) -> Result<Result<Option<u64>, Damage>> {
        let cid = b.cid();
        match cid.codec() {
            RAW => return Ok(Ok(Some(1))),
            DAG_PB => {}
            c => return Ok(Err(Self::malformed(format!("a file links to a block of codec {c:#x}")))),
        }
        if depth > crate::MAX_FILE_DEPTH {
            return Ok(Err(Self::malformed(format!("file dag deeper than {} levels", crate::MAX_FILE_DEPTH))));
        }
        let pb = match PbNode::decode(b.data()) {
            Ok(pb) => pb,
            Err(e) => return Ok(Err(Self::malformed(e))),
        };
        let u = match pb.data.as_deref().map(UnixFs::decode) {
            Some(Ok(u)) => u,
            Some(Err(e)) => return Ok(Err(Self::malformed(e))),
            None => return Ok(Err(Self::malformed("dag-pb node has no unixfs data"))),
        };
        if !matches!(u.kind, DataType::File | DataType::Raw) {
            return Ok(Err(Self::malformed(format!(
                "a file links to a unixfs {} node",
                format!("{:?}", u.kind).to_lowercase()
            ))));
        }
        Ok(Ok(self.file(at, &pb, &u, depth, here.index, here.offset)?))
    }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::block::CidVersion;
    use crate::exporter::resolve;
    use crate::importer::{Importer, Options};
    use crate::store::{FsStore, MemStore};
    use crate::{hamt, pin};

    /// Small chunks and fanout: a 10-chunk file is two levels deep.
    fn opts() -> Options {
        Options { chunk_size: 1000, max_links: 4, ..Options::default() }
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + seed as usize) % 251) as u8).collect()
    }

    /// A file's leaves, in order.
    fn leaves(store: &dyn BlockStore, cid: &Cid) -> Vec<Cid> {
        let pb = PbNode::decode(store.get(cid).unwrap().data()).unwrap();
        if pb.links.is_empty() {
            return vec![*cid];
        }
        pb.links.iter().flat_map(|l| leaves(store, &l.hash)).collect()
    }

    /// `root/dir/file.bin` (10 chunks) and `root/other.txt`, imported as
    /// CIDv0 and pinned.
    fn pinned_tree(store: &dyn BlockStore) -> (Cid, tempfile::TempDir) {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("dir")).unwrap();
        std::fs::write(src.path().join("dir/file.bin"), bytes(10_000, 1)).unwrap();
        std::fs::write(src.path().join("other.txt"), b"other").unwrap();
        let root = Importer::new(store, opts()).add_path(src.path()).unwrap().root;
        store.flush().unwrap();
        pin::add(store, &root, PinMode::Recursive).unwrap();
        assert!(root.to_string().starts_with("Qm"));
        (root, src)
    }

    #[test]
    fn a_missing_and_a_corrupt_chunk_are_named_by_pin_path_and_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let (root, _src) = pinned_tree(&s);
        let file = resolve(&s, &root, &["dir".into(), "file.bin".into()]).unwrap();
        let chunks = leaves(&s, &file);
        assert_eq!(chunks.len(), 10);
        assert!(chunks.iter().all(|c| c.to_string().starts_with("Qm")));
        s.delete(&chunks[5]).unwrap();
        let (pack, offset, len) = s.locate(&chunks[8]).unwrap().unwrap();
        std::fs::File::options().write(true).open(pack).unwrap().write_all_at(&vec![0; len as usize], offset).unwrap();
        // A corrupt block no pin reaches.
        let loose = Block::new(CidVersion::V1, RAW, bytes(3000, 9));
        s.put(&loose).unwrap();
        s.flush().unwrap();
        let (pack, offset, _) = s.locate(loose.cid()).unwrap().unwrap();
        std::fs::File::options().write(true).open(pack).unwrap().write_all_at(b"xx", offset).unwrap();

        let r = verify(&s).unwrap();
        assert!(!r.ok());
        let path = format!("{root}/dir/file.bin");
        let d = &r.damaged_pins;
        assert_eq!(d.len(), 2, "{d:#?}");
        assert_eq!((d[0].pin, d[0].mode, d[0].path.as_str()), (root, PinMode::Recursive, path.as_str()));
        assert_eq!((d[0].block, d[0].problem), (chunks[5], Problem::Missing));
        assert_eq!(d[0].chunk, Some(Chunk { index: Some(5), leaf: true, offset: Some(5000), len: Some(1000) }));
        assert_eq!((d[1].pin, d[1].path.as_str()), (root, path.as_str()));
        assert_eq!((d[1].block, d[1].problem), (chunks[8], Problem::CorruptOnDisk));
        assert_eq!(d[1].chunk, Some(Chunk { index: Some(8), leaf: true, offset: Some(8000), len: Some(1000) }));

        let m = d[0].to_string();
        let want = format!("{path}: block {} (chunk 5 of the file, bytes 5000..6000) is missing;", chunks[5]);
        assert!(m.starts_with(&want), "{m}");
        assert!(m.contains(&format!("`shoal pin rm {root}`")) && !m.contains("repo verify"), "{m}");
        let m = d[1].to_string();
        assert!(m.contains("(chunk 8 of the file, bytes 8000..9000) is corrupt on disk"), "{m}");
        assert!(m.contains("shoal add") && !m.contains("repo verify"), "{m}");

        assert_eq!(r.corrupt.len(), 2, "{:#?}", r.corrupt);
        let pinned = r.corrupt.iter().find(|c| !c.unpinned()).unwrap();
        // Named as the dag links it (Qm…), not as the store lists it.
        assert_eq!((pinned.block, pinned.problem), (chunks[8], Problem::CorruptOnDisk));
        assert_eq!(pinned.pinned_at, vec![path.clone()]);
        assert!(pinned.to_string().contains(&format!("pinned at {path}")), "{pinned}");
        let loose_r = r.corrupt.iter().find(|c| c.unpinned()).unwrap();
        assert_eq!(loose_r.block, *loose.cid());
        assert!(loose_r.to_string().contains("no pin reaches it"), "{loose_r}");
        assert!(!r.corrupt.iter().any(|c| c.to_string().contains("repo verify")));
    }

    #[test]
    fn a_missing_directory_or_file_root_is_named_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let (root, _src) = pinned_tree(&s);
        let sub = resolve(&s, &root, &["dir".into()]).unwrap();
        let other = resolve(&s, &root, &["other.txt".into()]).unwrap();
        s.delete_many(&[sub, other]).unwrap();
        let r = verify(&s).unwrap();
        let found: Vec<_> = r.damaged_pins.iter().map(|d| (d.path.clone(), d.block, d.chunk, d.problem)).collect();
        assert_eq!(
            found,
            vec![
                (format!("{root}/dir"), sub, None, Problem::Missing),
                (format!("{root}/other.txt"), other, None, Problem::Missing),
            ]
        );
        assert!(r.corrupt.is_empty());
        let m = r.damaged_pins[0].to_string();
        assert!(m.starts_with(&format!("{root}/dir: block {sub} is missing;")), "{m}");
        // The root itself.
        s.delete(&root).unwrap();
        let r = verify(&s).unwrap();
        assert_eq!(r.damaged_pins.len(), 1);
        assert_eq!((r.damaged_pins[0].path.clone(), r.damaged_pins[0].block), (root.to_string(), root));
        assert!(r.damaged_pins[0].to_string().contains("the pinned root is missing"));
    }

    #[test]
    fn a_missing_node_above_chunks_names_the_chunks_it_leads_to() {
        let s = MemStore::new();
        let file = Importer::new(&s, opts()).add_bytes(&bytes(10_000, 5)).unwrap().root;
        pin::add(&s, &file, PinMode::Recursive).unwrap();
        let chunks = leaves(&s, &file);
        let middle = PbNode::decode(s.get(&file).unwrap().data()).unwrap().links[1].hash;
        s.delete(&middle).unwrap();
        s.delete(&chunks[9]).unwrap();
        let r = verify(&s).unwrap();
        let d = &r.damaged_pins;
        assert_eq!(d.len(), 2, "{d:#?}");
        assert_eq!(d[0].block, middle);
        assert_eq!(d[0].chunk, Some(Chunk { index: Some(4), leaf: false, offset: Some(4000), len: Some(4000) }));
        assert!(d[0].to_string().contains("(the file's chunks from 4, bytes 4000..8000) is missing"), "{}", d[0]);
        // How many chunks the missing node held is unknown: the index too.
        assert_eq!(d[1].block, chunks[9]);
        assert_eq!(d[1].chunk, Some(Chunk { index: None, leaf: true, offset: Some(9000), len: Some(1000) }));
        assert!(d[1].to_string().contains("(a chunk of the file, bytes 9000..10000) is missing"), "{}", d[1]);
    }

    #[test]
    fn chunk_indexes_count_repeated_chunks_once_read() {
        // Zeros repeat one chunk (and one subtree); the chunk after them is
        // still counted right.
        let s = MemStore::new();
        let mut data = vec![0u8; 9000];
        data.extend(bytes(2000, 3));
        let file = Importer::new(&s, opts()).add_bytes(&data).unwrap().root;
        pin::add(&s, &file, PinMode::Recursive).unwrap();
        let chunks = leaves(&s, &file);
        assert_eq!(chunks.len(), 11);
        s.corrupt_for_test(&chunks[10], b"not it".to_vec());
        let r = verify(&s).unwrap();
        let d = &r.damaged_pins;
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!((d[0].path.clone(), d[0].problem), (file.to_string(), Problem::HashMismatch));
        assert_eq!(d[0].chunk, Some(Chunk { index: Some(10), leaf: true, offset: Some(10_000), len: Some(1000) }));
        assert_eq!(r.corrupt.len(), 1);
        assert_eq!(r.corrupt[0].pinned_at, vec![file.to_string()]);
    }

    #[test]
    fn paths_go_through_sharded_directories_and_direct_pins_are_checked() {
        let s = MemStore::new();
        let imp = Importer::new(&s, opts());
        let entries: Vec<hamt::Entry> = (0..300)
            .map(|i| {
                let a = imp.add_bytes(format!("file {i}").as_bytes()).unwrap();
                hamt::Entry { name: format!("f{i}"), cid: a.root, tsize: a.dag_size }
            })
            .collect();
        let target = entries[117].cid;
        let (blocks, root, _) = hamt::build(entries, CidVersion::V0).unwrap();
        s.put_many(&blocks).unwrap();
        // 300 names in 256 slots: some sit in child shards.
        assert!(blocks.len() > 1);
        pin::add(&s, &root, PinMode::Recursive).unwrap();
        let direct = imp.add_bytes(b"direct").unwrap().root;
        pin::add(&s, &direct, PinMode::Direct).unwrap();
        assert!(verify(&s).unwrap().ok());
        s.delete(&target).unwrap();
        s.delete(&direct).unwrap();
        let r = verify(&s).unwrap();
        let found: Vec<_> = r.damaged_pins.iter().map(|d| (d.pin, d.mode, d.path.clone(), d.block)).collect();
        let mut want = vec![
            (root, PinMode::Recursive, format!("{root}/f117"), target),
            (direct, PinMode::Direct, direct.to_string(), direct),
        ];
        want.sort_by_key(|w| w.0.to_bytes());
        assert_eq!(found, want);
    }
}
