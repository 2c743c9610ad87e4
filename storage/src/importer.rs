//! The UnixFS v1 importer: files and directories into blocks, with exactly
//! the CIDs Kubo computes.
//!
//! Kubo's defaults (`ipfs add`): fixed 262144-byte chunks, the balanced
//! layout with at most 174 links per node, dag-pb leaves and CIDv0.
//! `--cid-version 1` switches to CIDv1 and raw leaves. Kubo's balanced
//! builder grows a tree of depth *d* holding up to 174^*d* leaves and wraps
//! it when full; that is the same tree as grouping leaves 174 at a time,
//! bottom-up, keeping single-child nodes below the top — which is what
//! [`FileBuilder`] does, streaming, with a handful of pending links per level.
//!
//! Chunks are hashed in parallel (rayon) in batches of [`Options::batch`]
//! chunks while a reader thread fills the next batch and a writer thread
//! stores the previous one, so memory stays at a few batches whatever the
//! file size.
//!
//! Directories list their entries sorted by name bytes, as Kubo does, and
//! become HAMT shards (see [`crate::hamt`]) past Kubo's size threshold.
//! Symlinks inside an imported directory are stored as UnixFS symlink
//! nodes holding the link's target and are never followed; a symlink given
//! as the path to import is followed, as Kubo does with its argument.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cid::Cid;
use rayon::prelude::*;

use crate::block::{CidVersion, DAG_PB, RAW};
use crate::pb::{DataType, PbLink, PbNode, UnixFs};
use crate::store::BlockStore;
use crate::{Block, Error, Result};

/// Kubo's default chunk size.
pub const CHUNK_SIZE: usize = 262_144;
/// Kubo's maximum links per file node in the balanced layout.
pub const MAX_LINKS: usize = 174;
/// Kubo's HAMT sharding threshold (`Internal.UnixFSShardingSizeThreshold`).
pub const SHARDING_THRESHOLD: usize = 262_144;

/// Import settings. `Options::default()` is Kubo's `ipfs add` default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// CID version of new nodes.
    pub cid_version: CidVersion,
    /// Store file chunks as raw blocks (implied by CIDv1, as in Kubo).
    pub raw_leaves: bool,
    /// Bytes per chunk (default 262144).
    pub chunk_size: usize,
    /// Maximum links per file node (default 174).
    pub max_links: usize,
    /// Include entries whose name starts with `.` (default true: what
    /// Kubo's library and `ipfs add -r --hidden` do; Kubo's command line
    /// leaves them out unless `--hidden` is given).
    pub hidden: bool,
    /// Chunks hashed in parallel per batch (default 16). Bounds memory:
    /// about three batches are alive at once.
    pub batch: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options::with_version(CidVersion::V0)
    }
}

impl Options {
    /// Kubo's defaults for `--cid-version v`.
    pub fn with_version(v: CidVersion) -> Options {
        Options {
            cid_version: v,
            raw_leaves: v == CidVersion::V1,
            chunk_size: CHUNK_SIZE,
            max_links: MAX_LINKS,
            hidden: true,
            batch: 16,
        }
    }
}

/// What an import produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Added {
    /// Root CID.
    #[serde(serialize_with = "crate::ser_cid")]
    pub root: Cid,
    /// File bytes imported (sum over files).
    pub bytes: u64,
    /// Cumulative size of the DAG (what a parent link's Tsize holds).
    pub dag_size: u64,
    /// Entries left out because they are hidden (see [`Options::hidden`]).
    pub skipped_hidden: u64,
}

/// Called with the number of file bytes imported since the last call.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

fn no_progress(_: u64) {}

/// Imports files and directories into a store.
pub struct Importer<'a> {
    store: &'a dyn BlockStore,
    opts: Options,
    progress: Progress<'a>,
}

#[derive(Debug, Clone, Copy)]
struct Link {
    cid: Cid,
    filesize: u64,
    tsize: u64,
}

impl<'a> Importer<'a> {
    /// An importer writing into `store`.
    pub fn new(store: &'a dyn BlockStore, opts: Options) -> Importer<'a> {
        Importer { store, opts, progress: &no_progress }
    }

    /// Reports progress (file bytes) to `f`.
    pub fn with_progress(mut self, f: Progress<'a>) -> Importer<'a> {
        self.progress = f;
        self
    }

    /// Imports `path`: a file, a directory (recursively) or a symlink.
    pub fn add_path(&self, path: &Path) -> Result<Added> {
        let mut skipped = 0;
        let (link, bytes) = self.add_entry(path, &mut skipped, 0)?;
        Ok(Added { root: link.cid, bytes, dag_size: link.tsize, skipped_hidden: skipped })
    }

    /// Imports everything `reader` yields as one file.
    pub fn add_reader(&self, reader: impl Read + Send) -> Result<Added> {
        let (link, bytes) = self.add_file_reader(reader, Path::new("-"))?;
        Ok(Added { root: link.cid, bytes, dag_size: link.tsize, skipped_hidden: 0 })
    }

    /// Imports a byte slice as one file.
    pub fn add_bytes(&self, data: &[u8]) -> Result<Added> {
        if data.len() < self.opts.chunk_size {
            // One leaf: no pipeline threads.
            let (block, link) = self.leaf(data.to_vec());
            self.store.put(&block)?;
            (self.progress)(data.len() as u64);
            return Ok(Added { root: link.cid, bytes: link.filesize, dag_size: link.tsize, skipped_hidden: 0 });
        }
        self.add_reader(data)
    }

    fn add_entry(&self, path: &Path, skipped: &mut u64, depth: usize) -> Result<(Link, u64)> {
        if depth > crate::MAX_DIR_DEPTH {
            return Err(Error::Unsupported(format!(
                "{} is nested deeper than {} directories",
                path.display(),
                crate::MAX_DIR_DEPTH
            )));
        }
        // The argument itself is followed; nothing below it ever is.
        let meta = if depth == 0 { fs::metadata(path) } else { fs::symlink_metadata(path) };
        let meta = meta.map_err(|e| Error::io("cannot read", path, e))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|e| Error::io("cannot read symlink", path, e))?;
            let mut u = UnixFs::new(DataType::Symlink);
            u.data = Some(target.as_os_str().as_bytes().to_vec());
            let block = self.node(Vec::new(), &u);
            let link = Link { cid: *block.cid(), filesize: 0, tsize: block.len() as u64 };
            self.store.put(&block)?;
            Ok((link, 0))
        } else if ft.is_dir() {
            self.add_dir(path, skipped, depth)
        } else if ft.is_file() {
            let mut f = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
            if meta.len() < self.opts.chunk_size as u64 {
                // One chunk: no pipeline threads for what is one leaf (most
                // files of a dataset or a job's result). Reading until EOF
                // keeps a file that grew meanwhile correct.
                let mut data = Vec::with_capacity(meta.len() as usize + 1);
                (&mut f)
                    .take(self.opts.chunk_size as u64)
                    .read_to_end(&mut data)
                    .map_err(|e| Error::io("cannot read", path, e))?;
                if data.len() < self.opts.chunk_size {
                    let n = data.len() as u64;
                    let (block, link) = self.leaf(data);
                    self.store.put(&block)?;
                    (self.progress)(n);
                    return Ok((link, n));
                }
                // It grew to a full chunk or more: import it as a stream.
                return self.add_file_reader(io::Cursor::new(data).chain(f), path);
            }
            self.add_file_reader(f, path)
        } else {
            Err(Error::Unsupported(format!(
                "{} is not a regular file, directory or symlink; remove it or import its parent without it",
                path.display()
            )))
        }
    }

    fn add_dir(&self, path: &Path, skipped: &mut u64, depth: usize) -> Result<(Link, u64)> {
        let rd = fs::read_dir(path).map_err(|e| Error::io("cannot list directory", path, e))?;
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("cannot list directory", path, e))?;
            let name = entry.file_name();
            if !self.opts.hidden && name.as_bytes().starts_with(b".") {
                *skipped += 1;
                continue;
            }
            let Some(s) = name.to_str() else {
                return Err(Error::Unsupported(format!(
                    "file name {:?} in {} is not valid utf-8, which unixfs cannot store; rename it",
                    name,
                    path.display()
                )));
            };
            names.push(s.to_string());
        }
        let mut children = Vec::with_capacity(names.len());
        let mut bytes = 0;
        for name in names {
            let (child, b) = self.add_entry(&path.join(&name), skipped, depth + 1)?;
            bytes += b;
            children.push((name, child));
        }
        Ok((self.dir_node(children)?, bytes))
    }

    /// Builds a directory from entries already imported (e.g. files made
    /// in memory with [`Importer::add_bytes`] beside a tree imported from
    /// disk), exactly as if they had been imported from a directory.
    /// Names must be unique and valid UnixFS names.
    pub fn add_directory(&self, entries: Vec<(String, Added)>) -> Result<Added> {
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &entries {
            if name.is_empty() || name == "." || name == ".." || name.contains('/') || !seen.insert(name.clone()) {
                return Err(Error::Unsupported(format!("{name:?} is not a valid, unique directory entry name")));
            }
        }
        let bytes = entries.iter().map(|(_, a)| a.bytes).sum();
        let skipped_hidden = entries.iter().map(|(_, a)| a.skipped_hidden).sum();
        let children =
            entries.into_iter().map(|(n, a)| (n, Link { cid: a.root, filesize: 0, tsize: a.dag_size })).collect();
        let link = self.dir_node(children)?;
        Ok(Added { root: link.cid, bytes, dag_size: link.tsize, skipped_hidden })
    }

    fn dir_node(&self, mut children: Vec<(String, Link)>) -> Result<Link> {
        children.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut links = Vec::with_capacity(children.len());
        let mut estimated = 0usize;
        let mut tsize_sum = 0u64;
        for (name, child) in children {
            tsize_sum += child.tsize;
            estimated += name.len() + child.cid.to_bytes().len();
            links.push(PbLink { hash: child.cid, name: Some(name), tsize: Some(child.tsize) });
        }
        if estimated >= SHARDING_THRESHOLD {
            let entries = links
                .into_iter()
                .map(|l| crate::hamt::Entry {
                    name: l.name.unwrap_or_default(),
                    cid: l.hash,
                    tsize: l.tsize.unwrap_or(0),
                })
                .collect();
            let (blocks, cid, tsize) = crate::hamt::build(entries, self.opts.cid_version)?;
            self.store.put_many(&blocks)?;
            return Ok(Link { cid, filesize: 0, tsize });
        }
        let block = self.node(links, &UnixFs::new(DataType::Directory));
        self.store.put(&block)?;
        Ok(Link { cid: *block.cid(), filesize: 0, tsize: block.len() as u64 + tsize_sum })
    }

    fn node(&self, links: Vec<PbLink>, u: &UnixFs) -> Block {
        let node = PbNode { links, data: Some(u.encode()) };
        Block::new(self.opts.cid_version, DAG_PB, node.encode())
    }

    fn leaf(&self, chunk: Vec<u8>) -> (Block, Link) {
        let len = chunk.len() as u64;
        if self.opts.raw_leaves {
            let b = Block::new(CidVersion::V1, RAW, chunk);
            let l = Link { cid: *b.cid(), filesize: len, tsize: len };
            (b, l)
        } else {
            let b = Block::new(self.opts.cid_version, DAG_PB, crate::pb::encode_file_leaf(&chunk));
            let l = Link { cid: *b.cid(), filesize: len, tsize: b.len() as u64 };
            (b, l)
        }
    }

    fn add_file_reader(&self, mut reader: impl Read + Send, path: &Path) -> Result<(Link, u64)> {
        let chunk_size = self.opts.chunk_size.max(1);
        let batch = self.opts.batch.max(1);
        let mut builder = FileBuilder::new(self);
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<Vec<u8>>>>(1);
        std::thread::scope(|s| -> Result<(Link, u64)> {
            let reader_thread = s.spawn(move || loop {
                let mut chunks = Vec::with_capacity(batch);
                let mut eof = false;
                while chunks.len() < batch {
                    match read_chunk(&mut reader, chunk_size) {
                        Ok(c) if c.len() < chunk_size => {
                            if !c.is_empty() {
                                chunks.push(c);
                            }
                            eof = true;
                            break;
                        }
                        Ok(c) => chunks.push(c),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                if (!chunks.is_empty() && tx.send(Ok(chunks)).is_err()) || eof {
                    return;
                }
            });
            // Writing overlaps hashing: a writer thread stores one batch
            // while the next is hashed (one batch in flight, so memory stays
            // bounded).
            let (wtx, wrx) = std::sync::mpsc::sync_channel::<Vec<Block>>(1);
            let store = self.store;
            let writer = s.spawn(move || -> Result<()> {
                for blocks in wrx.iter() {
                    store.put_many(&blocks)?;
                }
                Ok(())
            });
            let mut result = Ok(());
            for batch in rx.iter() {
                let chunks = match batch {
                    Ok(c) => c,
                    Err(e) => {
                        result = Err(Error::io("cannot read", path, e));
                        break;
                    }
                };
                let n: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                let (blocks, links): (Vec<Block>, Vec<Link>) =
                    chunks.into_par_iter().map(|c| self.leaf(c)).collect::<Vec<_>>().into_iter().unzip();
                if wtx.send(blocks).is_err() {
                    break; // the writer failed; its error is reported below
                }
                if let Err(e) = builder.push_links(links) {
                    result = Err(e);
                    break;
                }
                (self.progress)(n);
            }
            drop(rx);
            drop(wtx);
            let _ = reader_thread.join();
            let written =
                writer.join().unwrap_or_else(|_| Err(Error::Unsupported("block writer thread panicked".into())));
            written?;
            result?;
            builder.finish()
        })
    }
}

fn read_chunk(r: &mut impl Read, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Streaming balanced-layout builder (see the module docs).
struct FileBuilder<'i, 'a> {
    imp: &'i Importer<'a>,
    /// `levels[0]` holds leaf links, `levels[k]` links to depth-k nodes.
    levels: Vec<Vec<Link>>,
    bytes: u64,
}

impl<'i, 'a> FileBuilder<'i, 'a> {
    fn new(imp: &'i Importer<'a>) -> Self {
        FileBuilder { imp, levels: vec![Vec::new()], bytes: 0 }
    }

    fn push_links(&mut self, links: Vec<Link>) -> Result<()> {
        for l in links {
            self.bytes += l.filesize;
            self.push(0, l)?;
        }
        Ok(())
    }

    fn push(&mut self, level: usize, link: Link) -> Result<()> {
        if self.levels.len() <= level {
            self.levels.push(Vec::new());
        }
        self.levels[level].push(link);
        if self.levels[level].len() == self.imp.opts.max_links.max(2) {
            let children = std::mem::take(&mut self.levels[level]);
            let parent = self.internal(children)?;
            self.push(level + 1, parent)?;
        }
        Ok(())
    }

    fn internal(&self, children: Vec<Link>) -> Result<Link> {
        let mut u = UnixFs::new(DataType::File);
        u.filesize = Some(children.iter().map(|c| c.filesize).sum());
        u.blocksizes = children.iter().map(|c| c.filesize).collect();
        let tsum: u64 = children.iter().map(|c| c.tsize).sum();
        let links =
            children.iter().map(|c| PbLink { hash: c.cid, name: Some(String::new()), tsize: Some(c.tsize) }).collect();
        let block = self.imp.node(links, &u);
        self.imp.store.put(&block)?;
        Ok(Link { cid: *block.cid(), filesize: u.filesize.unwrap_or(0), tsize: block.len() as u64 + tsum })
    }

    fn finish(mut self) -> Result<(Link, u64)> {
        if self.levels.iter().all(Vec::is_empty) {
            // The empty file: one empty leaf, as Kubo writes it.
            let (block, link) = self.imp.leaf(Vec::new());
            self.imp.store.put(&block)?;
            return Ok((link, 0));
        }
        let mut level = 0;
        loop {
            let above_empty = self.levels[level + 1..].iter().all(Vec::is_empty);
            let here = std::mem::take(&mut self.levels[level]);
            if above_empty && here.len() == 1 {
                return Ok((here[0], self.bytes));
            }
            if !here.is_empty() {
                let parent = self.internal(here)?;
                if self.levels.len() <= level + 1 {
                    self.levels.push(Vec::new());
                }
                self.levels[level + 1].push(parent);
            }
            level += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn cid_of(data: &[u8], opts: Options) -> String {
        let s = MemStore::new();
        Importer::new(&s, opts).add_bytes(data).unwrap().root.to_string()
    }

    #[test]
    fn public_vectors() {
        assert_eq!(cid_of(b"hello world\n", Options::default()), "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o");
        assert_eq!(
            cid_of(b"hello world", Options::with_version(CidVersion::V1)),
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
        );
        assert_eq!(cid_of(b"", Options::default()), "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH");
    }

    #[test]
    fn empty_directory_vector() {
        let dir = tempfile::tempdir().unwrap();
        let s = MemStore::new();
        let added = Importer::new(&s, Options::default()).add_path(dir.path()).unwrap();
        assert_eq!(added.root.to_string(), "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn");
    }

    #[test]
    fn a_directory_built_from_parts_equals_one_imported_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), b"inner").unwrap();
        std::fs::write(dir.path().join("b"), b"bee").unwrap();
        std::fs::write(dir.path().join("a"), b"").unwrap();
        let s = MemStore::new();
        for v in [CidVersion::V0, CidVersion::V1] {
            let imp = Importer::new(&s, Options::with_version(v));
            let whole = imp.add_path(dir.path()).unwrap();
            let parts = vec![
                ("sub".to_string(), imp.add_path(&dir.path().join("sub")).unwrap()),
                ("b".to_string(), imp.add_bytes(b"bee").unwrap()),
                ("a".to_string(), imp.add_bytes(b"").unwrap()),
            ];
            let built = imp.add_directory(parts).unwrap();
            assert_eq!(built.root, whole.root);
            assert_eq!(built.dag_size, whole.dag_size);
        }
        let imp = Importer::new(&s, Options::default());
        let x = imp.add_bytes(b"x").unwrap();
        assert!(imp.add_directory(vec![("a".into(), x.clone()), ("a".into(), x.clone())]).is_err());
        assert!(imp.add_directory(vec![("../x".into(), x)]).is_err());
    }

    #[test]
    fn tree_shape_small_fanout() {
        // With 3 links per node and 1-byte chunks, 10 bytes give leaves
        // grouped 3,3,3,1 -> 4 nodes -> 3,1 -> 2 nodes -> root.
        let s = MemStore::new();
        let opts = Options { chunk_size: 1, max_links: 3, ..Options::with_version(CidVersion::V1) };
        let added = Importer::new(&s, opts).add_bytes(b"0123456789").unwrap();
        let root = PbNode::decode(s.get(&added.root).unwrap().data()).unwrap();
        assert_eq!(root.links.len(), 2);
        let u = UnixFs::decode(root.data.as_ref().unwrap()).unwrap();
        assert_eq!(u.blocksizes, vec![9, 1]);
        let second = PbNode::decode(s.get(&root.links[1].hash).unwrap().data()).unwrap();
        assert_eq!(second.links.len(), 1, "single-child nodes are kept below the root");
    }
}
