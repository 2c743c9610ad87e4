//! HAMT-sharded UnixFS directories, as Kubo builds them.
//!
//! Kubo switches a directory to a HAMT shard once the sum of
//! `len(name) + len(cid bytes)` over its entries reaches 256 KiB
//! ([`crate::importer::SHARDING_THRESHOLD`]). The shard is a hash trie:
//! fanout 256, keys hashed with the first 64 bits of murmur3-x64-128
//! (big-endian), one byte of the hash per level. A slot holds one entry, or
//! a child shard when several names share the prefix. Nodes are dag-pb with
//! UnixFS `HAMTShard` data (the 256-bit occupancy bitfield as a big-endian
//! integer without leading zero bytes, hash
//! type 0x22, fanout 256); links are named `XX` (two upper-case hex digits
//! of the slot) for child shards and `XX` + name for entries, in slot order.

use std::io::Cursor;

use cid::Cid;

use crate::block::{CidVersion, DAG_PB};
use crate::exporter::{decode, DirEntry, Node};
use crate::pb::{DataType, PbLink, PbNode, UnixFs};
use crate::store::BlockStore;
use crate::{Block, Error, Result};

/// Slots per shard node.
pub const FANOUT: usize = 256;
/// Multicodec of murmur3-x64-64, as recorded in shard nodes.
pub const HASH_MURMUR3: u64 = 0x22;
/// Levels a 64-bit hash can address at 8 bits a level.
const MAX_LEVELS: usize = 8;

/// An entry to place in a shard.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Entry name.
    pub name: String,
    /// Child CID.
    pub cid: Cid,
    /// Cumulative size of the child DAG.
    pub tsize: u64,
}

fn hash(name: &str) -> [u8; 8] {
    // murmur3 over an in-memory slice cannot fail.
    let x = murmur3::murmur3_x64_128(&mut Cursor::new(name.as_bytes()), 0).unwrap_or(0);
    (x as u64).to_be_bytes()
}

enum Slot {
    Value(Entry, [u8; 8]),
    Shard(Box<Shard>),
}

#[derive(Default)]
struct Shard {
    slots: Vec<Option<Slot>>,
}

impl Shard {
    fn new() -> Shard {
        Shard { slots: (0..FANOUT).map(|_| None).collect() }
    }

    fn insert(&mut self, e: Entry, h: [u8; 8], level: usize) -> Result<()> {
        if level >= MAX_LEVELS {
            return Err(Error::Unsupported(format!("hamt hash collision on {:?}", e.name)));
        }
        let idx = h[level] as usize;
        match self.slots[idx].take() {
            None => self.slots[idx] = Some(Slot::Value(e, h)),
            Some(Slot::Value(old, oh)) if old.name == e.name => {
                let _ = (old, oh);
                self.slots[idx] = Some(Slot::Value(e, h));
            }
            Some(Slot::Value(old, oh)) => {
                let mut child = Shard::new();
                child.insert(old, oh, level + 1)?;
                child.insert(e, h, level + 1)?;
                self.slots[idx] = Some(Slot::Shard(Box::new(child)));
            }
            Some(Slot::Shard(mut child)) => {
                child.insert(e, h, level + 1)?;
                self.slots[idx] = Some(Slot::Shard(child));
            }
        }
        Ok(())
    }

    /// Encodes this node (children first); returns (cid, cumulative size).
    fn flush(self, version: CidVersion, out: &mut Vec<Block>) -> (Cid, u64) {
        let mut bitfield = [0u8; FANOUT / 8];
        let mut links = Vec::new();
        let mut tsum = 0;
        for (idx, slot) in self.slots.into_iter().enumerate() {
            let Some(slot) = slot else { continue };
            bitfield[FANOUT / 8 - 1 - idx / 8] |= 1 << (idx % 8);
            let (name, cid, tsize) = match slot {
                Slot::Value(e, _) => (format!("{idx:02X}{}", e.name), e.cid, e.tsize),
                Slot::Shard(child) => {
                    let (cid, tsize) = child.flush(version, out);
                    (format!("{idx:02X}"), cid, tsize)
                }
            };
            tsum += tsize;
            links.push(PbLink { hash: cid, name: Some(name), tsize: Some(tsize) });
        }
        let mut u = UnixFs::new(DataType::HamtShard);
        // Kubo writes the bitfield as a big integer: leading zero bytes
        // are dropped (the root of a full shard keeps all 32).
        let first = bitfield.iter().position(|&b| b != 0).unwrap_or(bitfield.len());
        u.data = Some(bitfield[first..].to_vec());
        u.hash_type = Some(HASH_MURMUR3);
        u.fanout = Some(FANOUT as u64);
        let block = Block::new(version, DAG_PB, PbNode { links, data: Some(u.encode()) }.encode());
        let r = (*block.cid(), block.len() as u64 + tsum);
        out.push(block);
        r
    }
}

/// Builds the shard for `entries`; returns its blocks (root last), the
/// root CID and the cumulative size.
pub fn build(entries: Vec<Entry>, version: CidVersion) -> Result<(Vec<Block>, Cid, u64)> {
    let mut root = Shard::new();
    for e in entries {
        let h = hash(&e.name);
        root.insert(e, h, 0)?;
    }
    let mut blocks = Vec::new();
    let (cid, tsize) = root.flush(version, &mut blocks);
    Ok((blocks, cid, tsize))
}

/// Lists every entry of the sharded directory at `cid`, in trie order.
pub fn list(store: &dyn BlockStore, cid: &Cid) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    list_into(store, cid, 0, &mut out)?;
    Ok(out)
}

fn list_into(store: &dyn BlockStore, cid: &Cid, level: usize, out: &mut Vec<DirEntry>) -> Result<()> {
    if level >= MAX_LEVELS {
        return Err(Error::Malformed { cid: *cid, reason: "hamt shard deeper than a 64-bit hash allows".into() });
    }
    let (pb, u) = match decode(store.get(cid)?)? {
        Node::Pb(pb, u) if u.kind == DataType::HamtShard => (pb, u),
        _ => return Err(Error::Malformed { cid: *cid, reason: "hamt link to a node that is not a shard".into() }),
    };
    if u.fanout != Some(FANOUT as u64) || u.hash_type != Some(HASH_MURMUR3) {
        return Err(Error::Unsupported(format!(
            "{cid} is a hamt shard with fanout {:?} and hash {:?}; only fanout 256 with murmur3 is supported",
            u.fanout, u.hash_type
        )));
    }
    for l in pb.links {
        let name = l.name.unwrap_or_default();
        if name.len() < 2 || !name.is_char_boundary(2) {
            return Err(Error::Malformed { cid: *cid, reason: format!("bad hamt link name {name:?}") });
        }
        if name.len() == 2 {
            list_into(store, &l.hash, level + 1, out)?;
        } else {
            out.push(DirEntry { name: name[2..].to_string(), cid: l.hash, tsize: l.tsize });
        }
    }
    Ok(())
}
