//! Which blocks this node gives to other IPFS peers: the policy shared by
//! the Bitswap server and the trustless gateway ([`crate::gateway`]).
//!
//! By default a node serves only what it pinned: blocks it merely holds
//! (fetched for a job, cached, left over before a gc) stay private, so a
//! peer cannot probe what this node has been reading. Under [`Policy::Pinned`]
//! the set of servable blocks is kept in memory and rebuilt only when the
//! pin list changes; each new recursive pin is walked once, not every pin
//! on every change.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use shoal_storage::block::{DAG_PB, SHA2_256};
use shoal_storage::pb::PbNode;
use shoal_storage::{BlockStore, Cid, PinMode};

/// Which blocks a node gives to other IPFS peers (Bitswap, the gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Only blocks of pinned DAGs (the whole DAG of a recursive pin, the
    /// block itself for a direct one).
    #[default]
    Pinned,
    /// Any block the store holds.
    All,
    /// Nothing.
    Off,
}

/// A policy name that is not one of [`Policy`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown serve policy {0:?}: choose pinned (only pinned data), all (every block held) or off")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Policy, UnknownPolicy> {
        match s {
            "pinned" => Ok(Policy::Pinned),
            "all" => Ok(Policy::All),
            "off" => Ok(Policy::Off),
            other => Err(UnknownPolicy(other.to_owned())),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Pinned => "pinned",
            Policy::All => "all",
            Policy::Off => "off",
        })
    }
}

/// Most blocks the servable set holds in memory, over all recursive pins
/// (each costs about 72 bytes: its digest in the set and in its pin's
/// list, so about 36 MiB at the bound; 128 GiB of data in 256 KiB
/// chunks). A pinned DAG that would take the set past it is not indexed:
/// a look-up that misses the set walks each such DAG in the store, which
/// costs reads on every request for a block outside the set, but never
/// memory past this bound.
pub const MAX_INDEXED_BLOCKS: usize = 512 << 10;

/// Most blocks one walk of an unindexed pinned DAG visits (a DAG that
/// large is served only as far as the walk reaches).
pub const MAX_WALK_BLOCKS: usize = crate::fetch::MAX_FETCH_BLOCKS;

/// A block's key: the SHA2-256 digest of its multihash. Stores key blocks
/// by multihash, so a block pinned as `Qm…` is the same block as its
/// CIDv1; a block under any other hash cannot be stored at all.
type Key = [u8; 32];

fn key(cid: &Cid) -> Option<Key> {
    let mh = cid.hash();
    if mh.code() != SHA2_256 {
        return None;
    }
    mh.digest().try_into().ok()
}

/// Decides which blocks may be given out; see [`Policy`]. Shared by every
/// server of one node, so that the servable set is built once.
pub struct Servable {
    policy: Policy,
    index: Mutex<Index>,
}

/// The servable set under one pin list.
#[derive(Default)]
struct Index {
    /// The pin list it was built from, sorted.
    pins: Vec<(Cid, PinMode)>,
    /// Each indexed recursive pin's blocks.
    dags: HashMap<Cid, Vec<Key>>,
    /// Blocks of indexed recursive DAGs, with the number of such DAGs
    /// holding each (a block shared by two pins stays after one goes).
    blocks: HashMap<Key, u32>,
    /// Directly pinned blocks.
    direct: HashSet<Key>,
    /// Recursive pins whose DAGs did not fit under [`MAX_INDEXED_BLOCKS`].
    unindexed: Vec<Cid>,
}

impl Index {
    fn indexed(&self) -> usize {
        self.dags.values().map(Vec::len).sum()
    }

    fn drop_dag(&mut self, root: &Cid) {
        for k in self.dags.remove(root).unwrap_or_default() {
            if let Some(n) = self.blocks.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.blocks.remove(&k);
                }
            }
        }
    }
}

impl Servable {
    pub fn new(policy: Policy) -> Servable {
        Servable { policy, index: Mutex::new(Index::default()) }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Whether `cid` may be given out from `store` under the policy.
    /// Blocking (may walk pinned DAGs): call from a blocking thread.
    ///
    /// Under [`Policy::Pinned`] each call reads the pin list to see
    /// whether it changed: `pin_ls` took 2.6 ms with 5,000 pins in the
    /// embedded store (debug build, measured here), a whole call 4.5 ms
    /// before sorting stopped allocating. A server checking many blocks
    /// at once should call [`Servable::refresh`] once, then
    /// [`Servable::allows_indexed`] for each.
    pub fn allows(&self, store: &dyn BlockStore, cid: &shoal_storage::Cid) -> shoal_storage::Result<bool> {
        self.refresh(store)?;
        self.allows_indexed(store, cid)
    }

    /// Brings the servable set up to date with the store's pins (a no-op
    /// unless the pin list changed, besides reading it).
    pub fn refresh(&self, store: &dyn BlockStore) -> shoal_storage::Result<()> {
        if self.policy != Policy::Pinned {
            return Ok(());
        }
        let mut pins = store.pin_ls()?;
        pins.sort_unstable_by_key(|(c, m)| (*c, *m as u8));
        // New pins are walked under the lock: a concurrent caller needs
        // the same answer and would walk the same DAGs.
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if index.pins == pins {
            return Ok(());
        }
        let recursive: HashSet<Cid> = pins.iter().filter(|(_, m)| *m == PinMode::Recursive).map(|(c, _)| *c).collect();
        let gone: Vec<Cid> = index.dags.keys().filter(|c| !recursive.contains(c)).copied().collect();
        for root in &gone {
            index.drop_dag(root);
        }
        index.direct = pins.iter().filter(|(_, m)| *m == PinMode::Direct).filter_map(|(c, _)| key(c)).collect();
        index.unindexed.clear();
        for root in &recursive {
            if index.dags.contains_key(root) {
                continue;
            }
            let budget = MAX_INDEXED_BLOCKS.saturating_sub(index.indexed());
            match dag_keys(store, root, budget)? {
                Some(keys) => {
                    for k in &keys {
                        *index.blocks.entry(*k).or_default() += 1;
                    }
                    index.dags.insert(*root, keys);
                }
                None => index.unindexed.push(*root),
            }
        }
        if !index.unindexed.is_empty() {
            tracing::info!(
                "{} pinned dag(s) are too large to index as servable ({MAX_INDEXED_BLOCKS} blocks at most); \
                 requests for their blocks walk them",
                index.unindexed.len()
            );
        }
        index.pins = pins;
        Ok(())
    }

    /// As [`Servable::allows`], with the servable set as the last
    /// [`Servable::refresh`] left it: for many checks in a row.
    pub fn allows_indexed(&self, store: &dyn BlockStore, cid: &Cid) -> shoal_storage::Result<bool> {
        match self.policy {
            Policy::Off => Ok(false),
            Policy::All => store.has(cid),
            Policy::Pinned => self.pinned(store, cid, true),
        }
    }

    /// Whether every block of the DAG under `cid` that the store holds may
    /// be given out: `cid` lies inside a recursively pinned DAG (or the
    /// policy is `All`). Lets a server check a whole DAG once.
    pub(crate) fn allows_dag_indexed(&self, store: &dyn BlockStore, cid: &Cid) -> shoal_storage::Result<bool> {
        match self.policy {
            Policy::Off => Ok(false),
            Policy::All => Ok(true),
            Policy::Pinned => self.pinned(store, cid, false),
        }
    }

    /// Whether `cid` is in a recursively pinned DAG, or (`direct`) pinned
    /// directly: the servable set first, then a walk of each DAG too
    /// large for it.
    fn pinned(&self, store: &dyn BlockStore, cid: &Cid, direct: bool) -> shoal_storage::Result<bool> {
        let Some(k) = key(cid) else { return Ok(false) };
        let unindexed = {
            let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            if (direct && index.direct.contains(&k)) || index.blocks.contains_key(&k) {
                return Ok(true);
            }
            index.unindexed.clone()
        };
        for root in &unindexed {
            if dag_contains(store, root, &k)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The links of a block, or none for a leaf: raw blocks are never read
/// (they cannot link), so indexing a DAG of raw leaves reads only its
/// inner nodes. A block of another codec is a leaf, as for pinning.
fn links(store: &dyn BlockStore, cid: &Cid) -> shoal_storage::Result<Vec<Cid>> {
    if cid.codec() != DAG_PB {
        return Ok(Vec::new());
    }
    let block = match store.get(cid) {
        Ok(b) => b,
        // A pinned DAG is whole unless the store was damaged outside
        // shoal; what is missing cannot be served anyway.
        Err(shoal_storage::Error::NotFound { .. }) => {
            tracing::warn!("block {cid} of a pinned dag is missing; run `shoal repo verify`");
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let node = PbNode::decode(block.data())
        .map_err(|e| shoal_storage::Error::Malformed { cid: *cid, reason: e.to_string() })?;
    Ok(node.links.into_iter().map(|l| l.hash).collect())
}

/// The keys of every block under `root`, or `None` past `budget`.
fn dag_keys(store: &dyn BlockStore, root: &Cid, budget: usize) -> shoal_storage::Result<Option<Vec<Key>>> {
    let mut seen = HashSet::new();
    let mut stack = vec![*root];
    while let Some(cid) = stack.pop() {
        let Some(k) = key(&cid) else { continue };
        if !seen.insert(k) {
            continue;
        }
        if seen.len() > budget {
            return Ok(None);
        }
        stack.extend(links(store, &cid)?);
    }
    Ok(Some(seen.into_iter().collect()))
}

/// Whether the block keyed `want` lies in the DAG under `root`.
fn dag_contains(store: &dyn BlockStore, root: &Cid, want: &Key) -> shoal_storage::Result<bool> {
    let mut seen = HashSet::new();
    let mut stack = vec![*root];
    while let Some(cid) = stack.pop() {
        let Some(k) = key(&cid) else { continue };
        if &k == want {
            return Ok(true);
        }
        if !seen.insert(k) || seen.len() > MAX_WALK_BLOCKS {
            continue;
        }
        stack.extend(links(store, &cid)?);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_storage::importer::{Importer, Options};
    use shoal_storage::{Block, CidVersion, MemStore};

    /// A two-file directory, imported unpinned; returns (dir, file a, a leaf of a).
    fn tree(store: &MemStore) -> (Cid, Cid, Cid) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 700_000]).unwrap();
        std::fs::write(dir.path().join("b"), b"bee").unwrap();
        let root = Importer::new(store, Options::default()).add_path(dir.path()).unwrap().root;
        let entries = shoal_storage::exporter::ls(store, &root).unwrap();
        let a = entries.iter().find(|e| e.name == "a").unwrap().cid;
        let leaf = links(store, &a).unwrap()[0];
        (root, a, leaf)
    }

    #[test]
    fn policies_parse_and_print() {
        for p in [Policy::Pinned, Policy::All, Policy::Off] {
            assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        }
        assert_eq!(Policy::default(), Policy::Pinned);
        let err = "everything".parse::<Policy>().unwrap_err().to_string();
        assert!(err.contains("\"everything\"") && err.contains("pinned") && err.contains("off"), "{err}");
    }

    #[test]
    fn pinned_serves_only_pinned_dags_and_follows_pin_changes() {
        let store = MemStore::new();
        let (root, a, leaf) = tree(&store);
        let cached = Block::new(CidVersion::V1, shoal_storage::block::RAW, b"just cached".to_vec());
        store.put(&cached).unwrap();
        let s = Servable::new(Policy::Pinned);
        for c in [&root, &a, &leaf, cached.cid()] {
            assert!(!s.allows(&store, c).unwrap(), "{c} is held but not pinned");
        }
        shoal_storage::pin::add(&store, &root, PinMode::Recursive).unwrap();
        for c in [&root, &a, &leaf] {
            assert!(s.allows(&store, c).unwrap(), "{c} is in a pinned dag");
        }
        assert!(!s.allows(&store, cached.cid()).unwrap(), "a cached block stays private");
        // The same block under its CIDv1 name is the same block.
        let v1 = Cid::new_v1(DAG_PB, *a.hash());
        assert!(s.allows(&store, &v1).unwrap());
        store.pin_rm(&root).unwrap();
        for c in [&root, &a, &leaf] {
            assert!(!s.allows(&store, c).unwrap(), "{c} was unpinned");
        }
    }

    #[test]
    fn a_direct_pin_serves_the_block_alone() {
        let store = MemStore::new();
        let (_, a, leaf) = tree(&store);
        let s = Servable::new(Policy::Pinned);
        shoal_storage::pin::add(&store, &a, PinMode::Direct).unwrap();
        assert!(s.allows(&store, &a).unwrap());
        assert!(!s.allows(&store, &leaf).unwrap(), "a direct pin keeps only its block");
        assert!(!s.allows_dag_indexed(&store, &a).unwrap());
        // Pinned recursively instead, its whole dag is servable.
        shoal_storage::pin::add(&store, &a, PinMode::Recursive).unwrap();
        assert!(s.allows(&store, &leaf).unwrap());
        assert!(s.allows_dag_indexed(&store, &a).unwrap());
    }

    #[test]
    fn a_block_shared_by_two_pins_stays_after_one_goes() {
        let store = MemStore::new();
        let (root, a, leaf) = tree(&store);
        let s = Servable::new(Policy::Pinned);
        shoal_storage::pin::add(&store, &root, PinMode::Recursive).unwrap();
        shoal_storage::pin::add(&store, &a, PinMode::Recursive).unwrap();
        assert!(s.allows(&store, &leaf).unwrap());
        store.pin_rm(&root).unwrap();
        assert!(s.allows(&store, &leaf).unwrap(), "still under the pin of a");
        assert!(!s.allows(&store, &root).unwrap());
    }

    #[test]
    fn all_serves_what_is_held_and_off_nothing() {
        let store = MemStore::new();
        let (root, _, leaf) = tree(&store);
        let absent = Block::new(CidVersion::V1, shoal_storage::block::RAW, b"elsewhere".to_vec());
        let all = Servable::new(Policy::All);
        assert!(all.allows(&store, &root).unwrap() && all.allows(&store, &leaf).unwrap());
        assert!(!all.allows(&store, absent.cid()).unwrap());
        let off = Servable::new(Policy::Off);
        shoal_storage::pin::add(&store, &root, PinMode::Recursive).unwrap();
        assert!(!off.allows(&store, &root).unwrap() && !off.allows(&store, &leaf).unwrap());
    }

    #[test]
    fn an_unindexed_dag_is_walked_on_a_miss() {
        let store = MemStore::new();
        let (root, a, leaf) = tree(&store);
        shoal_storage::pin::add(&store, &root, PinMode::Recursive).unwrap();
        // What refresh does with a DAG past the bound.
        assert_eq!(dag_keys(&store, &root, 2).unwrap(), None);
        let s = Servable::new(Policy::Pinned);
        s.refresh(&store).unwrap();
        {
            let mut index = s.index.lock().unwrap();
            index.drop_dag(&root);
            index.unindexed = vec![root];
            assert!(index.blocks.is_empty());
        }
        assert!(s.allows_indexed(&store, &leaf).unwrap() && s.allows_dag_indexed(&store, &a).unwrap());
        let other = Block::new(CidVersion::V1, shoal_storage::block::RAW, b"cached".to_vec());
        store.put(&other).unwrap();
        assert!(!s.allows_indexed(&store, other.cid()).unwrap());
    }
}
