//! The client side of Bitswap, without I/O: one [`Session`] gets a set of
//! blocks from a set of peers, the way boxo's sessions do in spirit.
//!
//! - A CID nobody in the session is known to hold is asked of every peer
//!   with want-have (and send-dont-have), so that the block itself comes
//!   from one peer only.
//! - A peer that answers HAVE (or sends a block) joins the session's
//!   holders, and want-blocks go to holders, the least busy first, at most
//!   [`Config::max_in_flight_per_peer`] each.
//! - A DONT_HAVE, or no block within [`Config::block_timeout`], moves the
//!   want to another holder, or back to asking everyone. A CID every peer
//!   said DONT_HAVE to has failed, named with the peers asked.
//!
//! Time is passed in (milliseconds since any origin), so the tests drive
//! it.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use shoal_storage::{Block, Cid};

use super::message::{Message, PresenceType, WantType};

/// Limits of one session, each with a documented default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Want-blocks outstanding at one peer (default 32: 8 MiB of 256 KiB
    /// chunks in flight per peer).
    pub max_in_flight_per_peer: usize,
    /// Want-blocks outstanding in all (default 256).
    pub max_in_flight: usize,
    /// How long a want-block may wait for its block before another holder
    /// is asked (default 5 s).
    pub block_timeout_ms: u64,
    /// How long a want-have broadcast may wait for any answer before it is
    /// sent again (default 2 s): a peer on 1.0.0/1.1.0 never answers one.
    pub have_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config { max_in_flight_per_peer: 32, max_in_flight: 256, block_timeout_ms: 5_000, have_timeout_ms: 2_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not asked of anyone yet (or asked again after a failure).
    New,
    /// want-have sent to every peer at `at`.
    Probing { at: u64 },
    /// want-block sent to `peer` at `at`.
    Asked { peer: PeerId, at: u64 },
}

/// One fetch of a set of blocks.
pub struct Session {
    config: Config,
    peers: Vec<PeerId>,
    wanted: HashMap<Cid, State>,
    holders: HashSet<PeerId>,
    dont_have: HashMap<Cid, HashSet<PeerId>>,
    in_flight: HashMap<PeerId, usize>,
}

/// A CID no peer of the session had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFound {
    pub cid: Cid,
    pub asked: usize,
}

impl Session {
    /// A session over `peers` (the connected Bitswap peers).
    pub fn new(config: Config, peers: Vec<PeerId>) -> Session {
        Session {
            config,
            peers,
            wanted: HashMap::new(),
            holders: HashSet::new(),
            dont_have: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }

    /// Adds CIDs to get.
    pub fn want(&mut self, cids: impl IntoIterator<Item = Cid>) {
        for c in cids {
            self.wanted.entry(c).or_insert(State::New);
        }
    }

    /// Adds a peer (newly connected).
    pub fn add_peer(&mut self, peer: PeerId) {
        if !self.peers.contains(&peer) {
            self.peers.push(peer);
        }
    }

    /// Whether nothing is wanted any more.
    pub fn is_done(&self) -> bool {
        self.wanted.is_empty()
    }

    /// CIDs still wanted.
    pub fn pending(&self) -> usize {
        self.wanted.len()
    }

    /// Peers known to hold blocks of this session.
    pub fn holders(&self) -> &HashSet<PeerId> {
        &self.holders
    }

    fn release(&mut self, cid: &Cid) {
        if let Some(State::Asked { peer, .. }) = self.wanted.get(cid) {
            if let Some(n) = self.in_flight.get_mut(peer) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Takes in what `peer` sent: its blocks (already hashed and named by
    /// their own bytes) and presences. Returns the wanted blocks among
    /// them, each once, and the cancels to send to the peers still asked.
    pub fn on_message(&mut self, peer: PeerId, blocks: Vec<Block>, message: &Message) -> Received {
        let mut out = Received::default();
        for b in blocks {
            let cid = *b.cid();
            if !self.wanted.contains_key(&cid) {
                continue;
            }
            self.holders.insert(peer);
            if let Some(State::Asked { peer: other, .. }) = self.wanted.get(&cid) {
                if *other != peer {
                    out.cancel.push((*other, cid));
                }
            }
            self.release(&cid);
            self.wanted.remove(&cid);
            self.dont_have.remove(&cid);
            out.blocks.push(b);
        }
        for p in &message.block_presences {
            let Ok(cid) = Cid::try_from(p.cid.as_slice()) else { continue };
            let Some(state) = self.wanted.get(&cid).cloned() else { continue };
            if p.r#type == PresenceType::Have as i32 {
                self.holders.insert(peer);
                if matches!(state, State::Probing { .. }) {
                    self.wanted.insert(cid, State::New);
                }
            } else {
                self.dont_have.entry(cid).or_default().insert(peer);
                if matches!(state, State::Asked { peer: asked, .. } if asked == peer) {
                    self.release(&cid);
                    self.wanted.insert(cid, State::New);
                }
            }
        }
        out
    }

    /// What to send now: want-blocks to holders for CIDs they may have,
    /// want-have broadcasts for the rest, retries after timeouts. Returns
    /// the messages, and the CIDs that every peer said it lacks.
    pub fn poll(&mut self, now: u64) -> (Vec<(PeerId, Message)>, Vec<NotFound>) {
        let mut out: HashMap<PeerId, Message> = HashMap::new();
        let mut failed = Vec::new();
        let mut in_flight_total: usize = self.in_flight.values().sum();
        let cids: Vec<Cid> = self.wanted.keys().copied().collect();
        for cid in cids {
            match self.wanted[&cid].clone() {
                State::Asked { peer, at } if now.saturating_sub(at) >= self.config.block_timeout_ms => {
                    // Too slow: tell this holder to stop (it counts as not
                    // having the block) and ask another one below.
                    out.entry(peer).or_default().push_cancel(&cid);
                    self.release(&cid);
                    in_flight_total = in_flight_total.saturating_sub(1);
                    self.dont_have.entry(cid).or_default().insert(peer);
                    self.wanted.insert(cid, State::New);
                }
                State::Probing { at } if now.saturating_sub(at) < self.config.have_timeout_ms => continue,
                State::Asked { .. } => continue,
                State::New | State::Probing { .. } => {}
            }
            let refused = self.dont_have.get(&cid);
            let candidates: Vec<PeerId> =
                self.peers.iter().filter(|p| refused.is_none_or(|r| !r.contains(*p))).copied().collect();
            if candidates.is_empty() {
                failed.push(NotFound { cid, asked: self.peers.len() });
                continue;
            }
            let holder = candidates
                .iter()
                .filter(|p| self.holders.contains(*p))
                .filter(|p| self.in_flight.get(*p).copied().unwrap_or(0) < self.config.max_in_flight_per_peer)
                .min_by_key(|p| self.in_flight.get(*p).copied().unwrap_or(0))
                .copied();
            match holder {
                Some(peer) if in_flight_total < self.config.max_in_flight => {
                    out.entry(peer).or_default().push_want(&cid, WantType::Block, true, 1);
                    *self.in_flight.entry(peer).or_default() += 1;
                    in_flight_total += 1;
                    self.wanted.insert(cid, State::Asked { peer, at: now });
                }
                // Holders are busy: wait for their blocks.
                _ if candidates.iter().any(|p| self.holders.contains(p)) => {}
                _ => {
                    for p in &candidates {
                        out.entry(*p).or_default().push_want(&cid, WantType::Have, true, 1);
                    }
                    self.wanted.insert(cid, State::Probing { at: now });
                }
            }
        }
        for f in &failed {
            self.wanted.remove(&f.cid);
        }
        (out.into_iter().filter(|(_, m)| !m.is_empty()).collect(), failed)
    }

    /// Cancels for everything still asked (the fetch gave up or ended).
    pub fn cancel_all(&mut self) -> Vec<(PeerId, Message)> {
        let mut out: HashMap<PeerId, Message> = HashMap::new();
        for (cid, state) in self.wanted.drain() {
            match state {
                State::Asked { peer, .. } => out.entry(peer).or_default().push_cancel(&cid),
                State::Probing { .. } => {
                    for p in &self.peers {
                        out.entry(*p).or_default().push_cancel(&cid);
                    }
                }
                State::New => {}
            }
        }
        self.in_flight.clear();
        out.into_iter().collect()
    }
}

/// What one message brought a session.
#[derive(Debug, Default)]
pub struct Received {
    /// Wanted blocks, verified.
    pub blocks: Vec<Block>,
    /// Cancels owed to peers that were asked for blocks that came from
    /// elsewhere.
    pub cancel: Vec<(PeerId, Cid)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_storage::block::RAW;
    use shoal_storage::CidVersion;

    fn block(i: u32) -> Block {
        Block::new(CidVersion::V1, RAW, i.to_le_bytes().to_vec())
    }

    fn entries(m: &Message) -> Vec<(Cid, WantType, bool)> {
        m.wantlist
            .as_ref()
            .map(|w| {
                w.entries
                    .iter()
                    .map(|e| {
                        (Cid::try_from(e.block.as_slice()).unwrap(), WantType::try_from(e.want_type).unwrap(), e.cancel)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn presence(cid: &Cid, have: bool) -> Message {
        let mut m = Message::default();
        m.push_presence(cid, have);
        m
    }

    #[test]
    fn unknown_cids_are_probed_then_fetched_from_the_holder_only() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let root = block(1);
        let mut s = Session::new(Config::default(), vec![a, b]);
        s.want([*root.cid()]);
        let (sent, failed) = s.poll(0);
        assert!(failed.is_empty());
        assert_eq!(sent.len(), 2);
        for (_, m) in &sent {
            assert_eq!(entries(m), vec![(*root.cid(), WantType::Have, false)]);
        }
        // Nothing new to send before an answer.
        assert!(s.poll(10).0.is_empty());
        s.on_message(a, vec![], &presence(root.cid(), false));
        s.on_message(b, vec![], &presence(root.cid(), true));
        let (sent, _) = s.poll(20);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, b);
        assert_eq!(entries(&sent[0].1), vec![(*root.cid(), WantType::Block, false)]);
        let got = s.on_message(b, vec![root.clone()], &Message::default());
        assert_eq!(got.blocks, vec![root]);
        assert!(s.is_done());
        // Later wants go straight to the holder.
        let child = block(2);
        s.want([*child.cid()]);
        let (sent, _) = s.poll(30);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].0, entries(&sent[0].1)), (b, vec![(*child.cid(), WantType::Block, false)]));
    }

    #[test]
    fn dont_have_and_timeouts_move_the_want_and_everyone_refusing_fails_it() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let x = block(3);
        let mut s = Session::new(Config::default(), vec![a, b]);
        s.want([*x.cid()]);
        s.poll(0);
        s.on_message(a, vec![], &presence(x.cid(), true));
        s.on_message(b, vec![], &presence(x.cid(), true));
        let (sent, _) = s.poll(1);
        assert_eq!(sent.len(), 1, "one holder asked for the block");
        let first = sent[0].0;
        let other = if first == a { b } else { a };
        // The first holder is too slow: it is cancelled and the other asked.
        let (sent, _) = s.poll(1 + Config::default().block_timeout_ms);
        let by: HashMap<PeerId, Vec<_>> = sent.into_iter().map(|(p, m)| (p, entries(&m))).collect();
        assert_eq!(by[&first], vec![(*x.cid(), WantType::Block, true)]);
        assert_eq!(by[&other], vec![(*x.cid(), WantType::Block, false)]);
        // And it says it does not have it after all: nobody is left.
        s.on_message(other, vec![], &presence(x.cid(), false));
        let (sent, failed) = s.poll(20_000);
        assert!(sent.is_empty());
        assert_eq!(failed, vec![NotFound { cid: *x.cid(), asked: 2 }]);
        assert!(s.is_done());
    }

    #[test]
    fn want_blocks_per_peer_are_bounded_and_blocks_from_elsewhere_cancel() {
        let cfg = Config { max_in_flight_per_peer: 4, max_in_flight: 6, ..Config::default() };
        let (a, b) = (PeerId::random(), PeerId::random());
        let blocks: Vec<Block> = (10..30).map(block).collect();
        let mut s = Session::new(cfg, vec![a, b]);
        s.want(blocks.iter().map(|b| *b.cid()));
        s.poll(0);
        let mut have = Message::default();
        for bl in &blocks {
            have.push_presence(bl.cid(), true);
        }
        s.on_message(a, vec![], &have);
        s.on_message(b, vec![], &have);
        let (sent, _) = s.poll(1);
        let asked: usize = sent.iter().map(|(_, m)| entries(m).len()).sum();
        assert_eq!(asked, 6, "the total cap");
        assert!(sent.iter().all(|(_, m)| entries(m).len() <= 4), "the per-peer cap");
        // One block asked of `a` arrives from `b`: `a` gets a cancel.
        let (peer, m) = sent.iter().find(|(p, _)| *p == a).unwrap();
        let cid = entries(m)[0].0;
        let bl = blocks.iter().find(|b| *b.cid() == cid).unwrap().clone();
        let got = s.on_message(b, vec![bl], &Message::default());
        assert_eq!(got.cancel, vec![(*peer, cid)]);
        // Unwanted blocks are ignored.
        assert!(s.on_message(a, vec![block(99)], &Message::default()).blocks.is_empty());
        assert_eq!(s.pending(), 19);
        let cancels = s.cancel_all();
        assert!(!cancels.is_empty());
        assert!(s.is_done());
    }

    #[test]
    fn a_session_without_peers_fails_at_once() {
        let mut s = Session::new(Config::default(), vec![]);
        s.want([*block(5).cid()]);
        let (sent, failed) = s.poll(0);
        assert!(sent.is_empty());
        assert_eq!(failed.len(), 1);
    }
}
