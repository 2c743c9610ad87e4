//! Which Bitswap peers to cut off, without I/O: a peer that keeps sending
//! what nobody asked for (blocks no fetch wanted, blocks that are not what
//! their prefix names, frames that do not parse) is banned for a while.
//!
//! Each such item costs the node a hash or a parse and is then dropped;
//! the wanted blocks the peer owes time out and go to the next holder
//! (the session's job). Scoring only decides when to stop listening.
//! Honest peers send a few unwanted blocks too: a block that crossed our
//! cancel, a duplicate after a timeout moved the want elsewhere. The node
//! treats blocks wanted recently as wanted, and the allowance below
//! absorbs the rest.
//!
//! Time is passed in (milliseconds since any origin), so tests drive it.

use std::collections::{HashMap, HashSet, VecDeque};

use libp2p::PeerId;
use shoal_storage::Cid;

/// Limits of the scoring, each with a documented default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Junk items a peer may send within one [`Config::window_ms`]
    /// (default 32); one more bans it.
    pub max_junk: u32,
    /// The window the allowance is counted over (default 60 s).
    pub window_ms: u64,
    /// How long a banned peer stays banned (default 10 min).
    pub ban_ms: u64,
    /// Peers scored at once (default 1024); a new peer past it replaces
    /// the one whose window started longest ago.
    pub max_peers: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config { max_junk: 32, window_ms: 60_000, ban_ms: 600_000, max_peers: 1024 }
    }
}

/// What to do with a peer after its latest junk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still within its allowance.
    Keep,
    /// Over it: disconnect and refuse the peer for `for_ms`.
    Ban { for_ms: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    junk: u32,
}

/// Every peer's junk in its current window.
#[derive(Debug, Default)]
pub struct Scores {
    config: Config,
    peers: HashMap<PeerId, Window>,
}

impl Scores {
    pub fn new(config: Config) -> Scores {
        Scores { config, peers: HashMap::new() }
    }

    /// `peer` sent `items` junk items at `now`.
    pub fn junk(&mut self, peer: PeerId, items: u32, now: u64) -> Verdict {
        if items == 0 {
            return Verdict::Keep;
        }
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.config.max_peers {
            if let Some(oldest) = self.peers.iter().min_by_key(|(_, w)| w.start).map(|(p, _)| *p) {
                self.peers.remove(&oldest);
            }
        }
        let w = self.peers.entry(peer).or_insert(Window { start: now, junk: 0 });
        if now.saturating_sub(w.start) >= self.config.window_ms {
            *w = Window { start: now, junk: 0 };
        }
        w.junk = w.junk.saturating_add(items);
        if w.junk > self.config.max_junk {
            self.peers.remove(&peer);
            return Verdict::Ban { for_ms: self.config.ban_ms };
        }
        Verdict::Keep
    }

    /// Peers scored now.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Forgets `peer` (it disconnected; a reconnecting peer starts afresh,
    /// which costs it a new connection each time).
    pub fn remove(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }
}

/// CIDs the node's fetches want now, and the last [`Wanted::new`]'s
/// `recent` they wanted: a block for any of them is not junk.
#[derive(Debug)]
pub struct Wanted {
    live: HashMap<Cid, u32>,
    recent: VecDeque<Cid>,
    recent_set: HashSet<Cid>,
    max_recent: usize,
}

/// CIDs remembered after their fetch ended (for blocks that crossed a
/// cancel): 4,096, about 1 GiB of 256 KiB chunks.
pub const RECENT_WANTS: usize = 4096;

impl Default for Wanted {
    fn default() -> Wanted {
        Wanted::new(RECENT_WANTS)
    }
}

impl Wanted {
    pub fn new(recent: usize) -> Wanted {
        Wanted { live: HashMap::new(), recent: VecDeque::new(), recent_set: HashSet::new(), max_recent: recent }
    }

    /// A fetch starts wanting `cids`.
    pub fn add<'a>(&mut self, cids: impl IntoIterator<Item = &'a Cid>) {
        for c in cids {
            *self.live.entry(*c).or_default() += 1;
        }
    }

    /// A fetch that wanted `cids` ended: they are remembered a while.
    pub fn done<'a>(&mut self, cids: impl IntoIterator<Item = &'a Cid>) {
        for c in cids {
            let Some(n) = self.live.get_mut(c) else { continue };
            *n -= 1;
            if *n > 0 {
                continue;
            }
            self.live.remove(c);
            if self.max_recent > 0 && self.recent_set.insert(*c) {
                self.recent.push_back(*c);
                while self.recent.len() > self.max_recent {
                    if let Some(old) = self.recent.pop_front() {
                        self.recent_set.remove(&old);
                    }
                }
            }
        }
    }

    /// Whether a block named `cid` is welcome.
    pub fn contains(&self, cid: &Cid) -> bool {
        self.live.contains_key(cid) || self.recent_set.contains(cid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_storage::block::RAW;
    use shoal_storage::{Block, CidVersion};

    fn cid(i: u32) -> Cid {
        *Block::new(CidVersion::V1, RAW, i.to_le_bytes().to_vec()).cid()
    }

    #[test]
    fn wants_are_welcome_while_fetched_and_for_a_bounded_while_after() {
        let mut w = Wanted::new(2);
        let (a, b, c, d) = (cid(1), cid(2), cid(3), cid(4));
        assert!(!w.contains(&a));
        w.add([&a, &b]);
        w.add([&a]);
        assert!(w.contains(&a) && w.contains(&b) && !w.contains(&c));
        w.done([&a]);
        assert!(w.contains(&a), "another fetch still wants it");
        w.done([&a, &b]);
        assert!(w.contains(&a) && w.contains(&b), "recently wanted");
        w.add([&c, &d]);
        w.done([&c, &d]);
        assert!(!w.contains(&a) && !w.contains(&b), "only the last two are remembered");
        assert!(w.contains(&c) && w.contains(&d));
        // Ending a fetch twice, or one never started, changes nothing.
        w.done([&a]);
        assert!(!w.contains(&a));
    }

    #[test]
    fn a_peer_is_banned_past_its_allowance_within_a_window_and_not_before() {
        let cfg = Config { max_junk: 4, window_ms: 1_000, ban_ms: 5_000, max_peers: 8 };
        let mut s = Scores::new(cfg);
        let p = PeerId::random();
        assert_eq!(s.junk(p, 0, 0), Verdict::Keep);
        assert_eq!(s.junk(p, 3, 0), Verdict::Keep);
        assert_eq!(s.junk(p, 1, 500), Verdict::Keep, "4 is the allowance");
        // A new window: the count starts again.
        assert_eq!(s.junk(p, 4, 1_000), Verdict::Keep);
        assert_eq!(s.junk(p, 1, 1_999), Verdict::Ban { for_ms: 5_000 });
        // A banned peer's score is gone: it is the ban that holds it off.
        assert!(s.is_empty());
        // One message with more junk than the allowance bans at once.
        assert_eq!(s.junk(p, 5, 10_000), Verdict::Ban { for_ms: 5_000 });
    }

    #[test]
    fn the_scored_peers_stay_bounded_and_others_are_unaffected() {
        let cfg = Config { max_junk: 2, window_ms: 1_000, ban_ms: 5_000, max_peers: 3 };
        let mut s = Scores::new(cfg);
        let honest = PeerId::random();
        assert_eq!(s.junk(honest, 1, 0), Verdict::Keep);
        for t in 1..100u64 {
            assert_eq!(s.junk(PeerId::random(), 1, t), Verdict::Keep);
            assert!(s.len() <= 3);
        }
        let liar = PeerId::random();
        assert_eq!(s.junk(liar, 2, 200), Verdict::Keep);
        assert_eq!(s.junk(liar, 1, 201), Verdict::Ban { for_ms: 5_000 });
        s.remove(&honest);
        assert!(s.len() <= 3);
    }
}
