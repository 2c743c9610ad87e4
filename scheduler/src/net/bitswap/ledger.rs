//! The server side of Bitswap, without I/O: what each peer wants from us,
//! bounded, and how one answer is built from what the store gives.
//!
//! A want is answered once and then forgotten: a block we do not have is
//! a DONT_HAVE (when asked for one) and not a standing promise, so a peer's
//! ledger never grows with wants for blocks we will never get. Kubo keeps
//! such wants and serves them when the block arrives; a client that wants
//! them from us asks again, as Kubo's sessions do.

use std::collections::{HashMap, HashSet, VecDeque};

use libp2p::PeerId;
use shoal_storage::{Block, Cid};

use super::message::{Message, WantType, Wantlist, MAX_BLOCK_BYTES_PER_MESSAGE};

/// Limits of the server side, each with a documented default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Wants held per peer (default 4096); beyond it new wants are
    /// dropped and counted, so a peer sending a million-entry wantlist
    /// costs at most this much memory.
    pub max_wants_per_peer: usize,
    /// Peers with wants held at once (default 1024); the wants of a peer
    /// beyond it are dropped.
    pub max_peers: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config { max_wants_per_peer: 4096, max_peers: 1024 }
    }
}

/// One want to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub cid: Cid,
    pub kind: WantType,
    pub send_dont_have: bool,
}

#[derive(Default)]
struct Peer {
    order: VecDeque<Cid>,
    wants: HashMap<Cid, Want>,
}

/// What one wantlist did to a peer's ledger.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// New wants held.
    pub added: usize,
    /// Wants dropped: over a limit, or not a CID.
    pub dropped: usize,
}

/// Every peer's pending wants.
#[derive(Default)]
pub struct Ledger {
    config: Config,
    peers: HashMap<PeerId, Peer>,
}

impl Ledger {
    pub fn new(config: Config) -> Ledger {
        Ledger { config, peers: HashMap::new() }
    }

    /// Applies `peer`'s wantlist: a full list replaces what it wanted,
    /// cancels remove, the rest add (a repeated want updates its kind).
    pub fn apply(&mut self, peer: PeerId, wantlist: &Wantlist) -> Applied {
        let mut applied = Applied::default();
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.config.max_peers {
            applied.dropped = wantlist.entries.iter().filter(|e| !e.cancel).count();
            return applied;
        }
        let p = self.peers.entry(peer).or_default();
        if wantlist.full {
            p.order.clear();
            p.wants.clear();
        }
        for e in &wantlist.entries {
            let Ok(cid) = Cid::try_from(e.block.as_slice()) else {
                applied.dropped += 1;
                continue;
            };
            if e.cancel {
                p.wants.remove(&cid);
                continue;
            }
            let kind = WantType::try_from(e.want_type).unwrap_or(WantType::Block);
            let want = Want { cid, kind, send_dont_have: e.send_dont_have };
            if let Some(w) = p.wants.get_mut(&cid) {
                // want-block wins over want-have.
                if w.kind == WantType::Have {
                    *w = want;
                }
                continue;
            }
            if p.wants.len() >= self.config.max_wants_per_peer {
                applied.dropped += 1;
                continue;
            }
            p.wants.insert(cid, want);
            p.order.push_back(cid);
            applied.added += 1;
        }
        // Cancelled wants leave stale entries in `order`; drop them once
        // they outnumber the live ones, so `order` stays bounded too.
        if p.order.len() > 2 * p.wants.len() + 16 {
            let wants = &p.wants;
            p.order.retain(|c| wants.contains_key(c));
        }
        if p.wants.is_empty() {
            self.peers.remove(&peer);
        }
        applied
    }

    /// Takes up to `max` of `peer`'s wants, oldest first, to answer.
    pub fn take(&mut self, peer: &PeerId, max: usize) -> Vec<Want> {
        let Some(p) = self.peers.get_mut(peer) else { return Vec::new() };
        let mut out = Vec::new();
        while out.len() < max {
            let Some(cid) = p.order.pop_front() else { break };
            if let Some(w) = p.wants.remove(&cid) {
                out.push(w);
            }
        }
        if p.wants.is_empty() {
            self.peers.remove(peer);
        }
        out
    }

    /// Puts wants back at the front (they did not fit in a message).
    pub fn put_back(&mut self, peer: PeerId, wants: Vec<Want>) {
        let p = self.peers.entry(peer).or_default();
        for w in wants.into_iter().rev() {
            if p.wants.insert(w.cid, w).is_none() {
                p.order.push_front(w.cid);
            }
        }
    }

    /// Whether `peer` wants anything.
    pub fn wants_of(&self, peer: &PeerId) -> usize {
        self.peers.get(peer).map_or(0, |p| p.wants.len())
    }

    /// Peers with pending wants.
    pub fn peers(&self) -> HashSet<PeerId> {
        self.peers.keys().copied().collect()
    }

    /// Forgets `peer` (it disconnected).
    pub fn remove(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }
}

/// What the store says of a wanted block.
#[derive(Debug)]
pub enum Lookup {
    /// Held and servable; the block when it was wanted whole.
    Have(Option<Block>),
    /// Not held, or not served under the node's policy.
    DontHave,
}

/// Builds one message answering `wants` in order, with `lookup` telling
/// what the store holds (it is asked for the block only for want-block).
/// Returns the message and the wants that did not fit in it (blocks past
/// [`MAX_BLOCK_BYTES_PER_MESSAGE`]; the first block always fits).
pub fn answer(wants: Vec<Want>, mut lookup: impl FnMut(&Want) -> Lookup) -> (Message, Vec<Want>) {
    let mut m = Message::default();
    let mut bytes = 0usize;
    let mut rest = Vec::new();
    let mut wants = wants.into_iter();
    for w in wants.by_ref() {
        match lookup(&w) {
            Lookup::Have(Some(block)) => {
                if bytes > 0 && bytes + block.len() > MAX_BLOCK_BYTES_PER_MESSAGE {
                    rest.push(w);
                    break;
                }
                bytes += block.len();
                m.push_block(&block);
            }
            Lookup::Have(None) => m.push_presence(&w.cid, true),
            Lookup::DontHave if w.send_dont_have => m.push_presence(&w.cid, false),
            Lookup::DontHave => {}
        }
    }
    rest.extend(wants);
    (m, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_storage::block::RAW;
    use shoal_storage::CidVersion;

    fn block(i: u32, len: usize) -> Block {
        let mut data = i.to_le_bytes().to_vec();
        data.resize(len.max(4), 7);
        Block::new(CidVersion::V1, RAW, data)
    }

    fn wantlist(entries: &[(Cid, WantType, bool)], full: bool) -> Wantlist {
        let mut m = Message::default();
        for (cid, kind, cancel) in entries {
            if *cancel {
                m.push_cancel(cid)
            } else {
                m.push_want(cid, *kind, true, 1)
            }
        }
        let mut w = m.wantlist.unwrap_or_default();
        w.full = full;
        w
    }

    #[test]
    fn wants_are_taken_in_order_cancelled_and_replaced_by_a_full_list() {
        let peer = PeerId::random();
        let cids: Vec<Cid> = (0..5).map(|i| *block(i, 8).cid()).collect();
        let mut l = Ledger::new(Config::default());
        let entries: Vec<_> = cids.iter().map(|c| (*c, WantType::Have, false)).collect();
        assert_eq!(l.apply(peer, &wantlist(&entries, false)), Applied { added: 5, dropped: 0 });
        // Cancel the second; upgrade the third to want-block.
        l.apply(peer, &wantlist(&[(cids[1], WantType::Block, true), (cids[2], WantType::Block, false)], false));
        let got = l.take(&peer, 3);
        assert_eq!(got.iter().map(|w| w.cid).collect::<Vec<_>>(), vec![cids[0], cids[2], cids[3]]);
        assert_eq!(got[1].kind, WantType::Block);
        assert_eq!(l.wants_of(&peer), 1);
        l.apply(peer, &wantlist(&[(cids[0], WantType::Block, false)], true));
        assert_eq!(l.take(&peer, 10).iter().map(|w| w.cid).collect::<Vec<_>>(), vec![cids[0]]);
        assert!(l.peers().is_empty(), "a peer with no wants is forgotten");
    }

    #[test]
    fn a_flood_of_wants_is_bounded_per_peer_and_in_peers() {
        let cfg = Config { max_wants_per_peer: 100, max_peers: 2 };
        let mut l = Ledger::new(cfg);
        let a = PeerId::random();
        let entries: Vec<_> = (0..1000).map(|i| (*block(i, 8).cid(), WantType::Block, false)).collect();
        let applied = l.apply(a, &wantlist(&entries, false));
        assert_eq!(applied, Applied { added: 100, dropped: 900 });
        assert_eq!(l.wants_of(&a), 100);
        // Cancels and re-adds keep the order queue bounded too.
        for _ in 0..50 {
            let cancel: Vec<_> = entries[..100].iter().map(|(c, k, _)| (*c, *k, true)).collect();
            l.apply(a, &wantlist(&cancel, false));
            l.apply(a, &wantlist(&entries[..100], false));
        }
        assert!(l.peers.get(&a).unwrap().order.len() <= 2 * 100 + 16);
        l.apply(PeerId::random(), &wantlist(&entries[..1], false));
        let third = l.apply(PeerId::random(), &wantlist(&entries[..3], false));
        assert_eq!(third, Applied { added: 0, dropped: 3 });
        let garbage = Wantlist {
            entries: vec![super::super::message::Entry { block: vec![1, 2], ..Default::default() }],
            full: false,
        };
        assert_eq!(l.apply(a, &garbage).dropped, 1);
    }

    #[test]
    fn answers_carry_blocks_presences_and_what_did_not_fit() {
        let big: Vec<Block> = (0..4).map(|i| block(i, 900 << 10)).collect();
        let absent = *block(99, 8).cid();
        let mut wants: Vec<Want> =
            big.iter().map(|b| Want { cid: *b.cid(), kind: WantType::Block, send_dont_have: true }).collect();
        wants.insert(0, Want { cid: absent, kind: WantType::Have, send_dont_have: true });
        wants.insert(1, Want { cid: absent, kind: WantType::Have, send_dont_have: false });
        wants.insert(2, Want { cid: *big[3].cid(), kind: WantType::Have, send_dont_have: true });
        let (m, rest) = answer(wants, |w| {
            if w.cid == absent {
                return Lookup::DontHave;
            }
            let b = big.iter().find(|b| *b.cid() == w.cid).unwrap();
            Lookup::Have((w.kind == WantType::Block).then(|| b.clone()))
        });
        // 900 KiB blocks: two fit under 2 MiB, the third waits.
        assert_eq!(m.payload.len(), 2);
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].cid, *big[2].cid());
        assert_eq!(m.block_presences.len(), 2, "one DONT_HAVE (asked for) and one HAVE");
        assert!(m.block_bytes() <= MAX_BLOCK_BYTES_PER_MESSAGE);
        // A block larger than the budget still goes, alone.
        let huge = block(7, MAX_BLOCK_BYTES_PER_MESSAGE + 1);
        let (m, rest) = answer(vec![Want { cid: *huge.cid(), kind: WantType::Block, send_dont_have: false }], |_| {
            Lookup::Have(Some(huge.clone()))
        });
        assert_eq!((m.payload.len(), rest.len()), (1, 0));
    }
}
