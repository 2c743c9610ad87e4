//! The exporter: streams files and directory trees back out of a store,
//! verifying the hash of every block it reads (the store's `get` does).
//!
//! DAGs from the network are untrusted: the exporter bounds recursion
//! depth, checks that the bytes written match each node's declared size,
//! and refuses directory entry names that could escape the destination
//! (`/`, `.`, `..`, empty, NUL) or that repeat.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use cid::Cid;
use rayon::prelude::*;

use crate::block::{DAG_PB, RAW};
use crate::pb::{DataType, PbLink, PbNode, UnixFs};
use crate::store::BlockStore;
use crate::{Block, Error, Result};

/// Children fetched (and hash-checked) in parallel while streaming a file.
/// Bounds memory to this many chunks per tree level.
pub const READ_AHEAD: usize = 8;

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Kind {
    /// A UnixFS file (or a raw block): `size` bytes of content.
    File {
        /// Content bytes.
        size: u64,
    },
    /// A UnixFS directory.
    Directory {
        /// Number of entries.
        entries: usize,
    },
    /// A UnixFS symlink.
    Symlink {
        /// The link target.
        target: String,
    },
    /// A HAMT-sharded directory.
    Sharded,
    /// A block of another codec (e.g. dag-cbor).
    Other {
        /// Its multicodec code.
        codec: u64,
    },
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirEntry {
    /// Entry name.
    pub name: String,
    /// Child CID.
    #[serde(serialize_with = "crate::ser_cid")]
    pub cid: Cid,
    /// Cumulative DAG size from the link (Tsize), if recorded.
    pub tsize: Option<u64>,
}

/// A decoded node.
pub(crate) enum Node {
    Raw(Vec<u8>),
    Pb(PbNode, UnixFs),
}

pub(crate) fn decode(block: Block) -> Result<Node> {
    let cid = *block.cid();
    match cid.codec() {
        RAW => Ok(Node::Raw(block.into_data())),
        DAG_PB => {
            let pb = PbNode::decode(block.data()).map_err(|e| Error::Malformed { cid, reason: e.to_string() })?;
            let data = pb
                .data
                .as_deref()
                .ok_or_else(|| Error::Malformed { cid, reason: "dag-pb node has no unixfs data".into() })?;
            let u = UnixFs::decode(data).map_err(|e| Error::Malformed { cid, reason: e.to_string() })?;
            Ok(Node::Pb(pb, u))
        }
        codec => Err(Error::WrongKind { cid, actual: codec_name(codec), expected: "a unixfs node" }),
    }
}

fn codec_name(c: u64) -> &'static str {
    match c {
        crate::block::DAG_CBOR => "a dag-cbor block",
        0x0129 => "a dag-json block",
        _ => "a block of an unknown codec",
    }
}

/// Follows `path` (entry names) from `root` through directories.
pub fn resolve(store: &dyn BlockStore, root: &Cid, path: &[String]) -> Result<Cid> {
    let mut cur = *root;
    for name in path {
        let entries = ls(store, &cur)?;
        cur = entries
            .into_iter()
            .find(|e| &e.name == name)
            .map(|e| e.cid)
            .ok_or_else(|| Error::NoSuchEntry { cid: cur, name: name.clone() })?;
    }
    Ok(cur)
}

/// What the node at `cid` is.
pub fn stat(store: &dyn BlockStore, cid: &Cid) -> Result<Kind> {
    Ok(stat_and_list(store, cid)?.0)
}

/// What the node at `cid` is and, for a directory, its entries: one read
/// where `stat` then `ls` would take two.
pub fn stat_and_list(store: &dyn BlockStore, cid: &Cid) -> Result<(Kind, Vec<DirEntry>)> {
    let block = store.get(cid)?;
    if ![RAW, DAG_PB].contains(&cid.codec()) {
        return Ok((Kind::Other { codec: cid.codec() }, Vec::new()));
    }
    let node = decode(block)?;
    let kind = match &node {
        Node::Raw(d) => Kind::File { size: d.len() as u64 },
        Node::Pb(pb, u) => match u.kind {
            DataType::Directory => Kind::Directory { entries: pb.links.len() },
            DataType::HamtShard => Kind::Sharded,
            DataType::Symlink => {
                Kind::Symlink { target: String::from_utf8_lossy(u.data.as_deref().unwrap_or_default()).into_owned() }
            }
            DataType::File | DataType::Raw => {
                Kind::File { size: u.filesize.unwrap_or_else(|| u.data.as_ref().map_or(0, |d| d.len() as u64)) }
            }
            DataType::Metadata => Kind::Other { codec: DAG_PB },
        },
    };
    let list = match kind {
        Kind::Directory { .. } | Kind::Sharded => entries(store, cid, node)?,
        _ => Vec::new(),
    };
    Ok((kind, list))
}

/// Lists a directory's entries, in stored order.
pub fn ls(store: &dyn BlockStore, cid: &Cid) -> Result<Vec<DirEntry>> {
    entries(store, cid, decode(store.get(cid)?)?)
}

/// The entries of an already decoded directory node.
fn entries(store: &dyn BlockStore, cid: &Cid, node: Node) -> Result<Vec<DirEntry>> {
    match node {
        Node::Pb(pb, u) if u.kind == DataType::Directory => {
            let mut seen = HashSet::new();
            pb.links
                .into_iter()
                .map(|PbLink { hash, name, tsize }| {
                    let name = name.unwrap_or_default();
                    check_name(cid, &name, &mut seen)?;
                    Ok(DirEntry { name, cid: hash, tsize })
                })
                .collect()
        }
        Node::Pb(_, u) if u.kind == DataType::HamtShard => {
            let mut seen = HashSet::new();
            let entries = crate::hamt::list(store, cid)?;
            for e in &entries {
                check_name(cid, &e.name, &mut seen)?;
            }
            Ok(entries)
        }
        Node::Pb(_, u) if u.kind == DataType::Symlink => {
            Err(Error::WrongKind { cid: *cid, actual: "a symlink", expected: "a directory" })
        }
        _ => Err(Error::WrongKind { cid: *cid, actual: "a file", expected: "a directory" }),
    }
}

fn check_name(dir: &Cid, name: &str, seen: &mut HashSet<String>) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::Malformed { cid: *dir, reason: format!("directory entry name {name:?} is not allowed") });
    }
    if !seen.insert(name.to_string()) {
        return Err(Error::Malformed { cid: *dir, reason: format!("directory has two entries named {name:?}") });
    }
    Ok(())
}

/// Writes the content of the file at `cid` to `w`; returns the bytes written.
pub fn cat(store: &dyn BlockStore, cid: &Cid, w: &mut dyn Write) -> Result<u64> {
    let block = store.get(cid)?;
    write_file(store, block, w, 0)
}

fn write_file(store: &dyn BlockStore, block: Block, w: &mut dyn Write, depth: usize) -> Result<u64> {
    let cid = *block.cid();
    if depth > crate::MAX_FILE_DEPTH {
        return Err(Error::Malformed { cid, reason: format!("file dag deeper than {} levels", crate::MAX_FILE_DEPTH) });
    }
    write_node(store, &cid, decode(block)?, w, depth)
}

fn write_node(store: &dyn BlockStore, cid: &Cid, node: Node, w: &mut dyn Write, depth: usize) -> Result<u64> {
    let cid = *cid;
    let (pb, u) = match node {
        Node::Raw(d) => {
            w.write_all(&d).map_err(|e| Error::io("cannot write", "output", e))?;
            return Ok(d.len() as u64);
        }
        Node::Pb(pb, u) => (pb, u),
    };
    match u.kind {
        DataType::File | DataType::Raw => {}
        DataType::Directory | DataType::HamtShard => {
            return Err(Error::WrongKind { cid, actual: "a directory", expected: "a file" })
        }
        DataType::Symlink => return Err(Error::WrongKind { cid, actual: "a symlink", expected: "a file" }),
        DataType::Metadata => return Err(Error::WrongKind { cid, actual: "a metadata node", expected: "a file" }),
    }
    let mut written = 0u64;
    if let Some(d) = &u.data {
        w.write_all(d).map_err(|e| Error::io("cannot write", "output", e))?;
        written += d.len() as u64;
    }
    for window in pb.links.chunks(READ_AHEAD) {
        let blocks: Vec<Block> = window.par_iter().map(|l| store.get(&l.hash)).collect::<Result<_>>()?;
        for child in blocks {
            written += write_file(store, child, w, depth + 1)?;
        }
    }
    if let Some(size) = u.filesize {
        if size != written {
            return Err(Error::Malformed {
                cid,
                reason: format!("file node declares {size} bytes but its dag holds {written}"),
            });
        }
    }
    Ok(written)
}

/// What [`get`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GetStats {
    /// Files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created (never followed).
    pub symlinks: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Writes the file, directory tree or symlink at `cid` to `dest`, which
/// must not exist yet (nothing already on disk is overwritten).
pub fn get(store: &dyn BlockStore, cid: &Cid, dest: &Path) -> Result<GetStats> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(Error::io(
            "refusing to overwrite",
            dest,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "it already exists; choose another output path or remove it",
            ),
        ));
    }
    let mut stats = GetStats::default();
    get_into(store, cid, dest, &mut stats, 0)?;
    Ok(stats)
}

fn get_into(store: &dyn BlockStore, cid: &Cid, dest: &Path, stats: &mut GetStats, depth: usize) -> Result<()> {
    if depth > crate::MAX_DIR_DEPTH {
        return Err(Error::Malformed {
            cid: *cid,
            reason: format!("directories nested deeper than {}", crate::MAX_DIR_DEPTH),
        });
    }
    // Each node is read and decoded once: `get` materialises every job's
    // inputs, so a second read per file or directory would double its cost.
    let node = decode(store.get(cid)?)?;
    let kind = match &node {
        Node::Raw(_) => DataType::File,
        Node::Pb(_, u) => u.kind,
    };
    match kind {
        DataType::File | DataType::Raw => {
            // create_new: never write through something already there.
            let f = File::options()
                .write(true)
                .create_new(true)
                .open(dest)
                .map_err(|e| Error::io("cannot create", dest, e))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            stats.bytes += write_node(store, cid, node, &mut w, 0)?;
            w.flush().map_err(|e| Error::io("cannot write", dest, e))?;
            stats.files += 1;
        }
        DataType::Directory | DataType::HamtShard => {
            let entries = entries(store, cid, node)?;
            fs::create_dir(dest).map_err(|e| Error::io("cannot create directory", dest, e))?;
            stats.dirs += 1;
            for e in entries {
                get_into(store, &e.cid, &dest.join(&e.name), stats, depth + 1)?;
            }
        }
        DataType::Symlink => {
            let target = match &node {
                Node::Pb(_, u) => String::from_utf8_lossy(u.data.as_deref().unwrap_or_default()).into_owned(),
                Node::Raw(_) => String::new(),
            };
            std::os::unix::fs::symlink(&target, dest).map_err(|e| Error::io("cannot create symlink", dest, e))?;
            stats.symlinks += 1;
        }
        DataType::Metadata => {
            return Err(Error::WrongKind { cid: *cid, actual: "not a unixfs node", expected: "a file or directory" })
        }
    }
    Ok(())
}

/// Calls `f` for every block reachable from `root` (root first, depth
/// first, each once). Stops at the first missing or malformed block.
pub fn walk(store: &dyn BlockStore, root: &Cid, f: &mut dyn FnMut(&Cid, &Block) -> Result<()>) -> Result<()> {
    let mut seen = HashSet::new();
    let mut stack = vec![*root];
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid.hash().to_bytes()) {
            continue;
        }
        let block = store.get(&cid)?;
        f(&cid, &block)?;
        if cid.codec() == DAG_PB {
            let pb = PbNode::decode(block.data()).map_err(|e| Error::Malformed { cid, reason: e.to_string() })?;
            stack.extend(pb.links.iter().rev().map(|l| l.hash));
        }
    }
    Ok(())
}
