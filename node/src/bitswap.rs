//! The node's Bitswap: it serves blocks to any IPFS peer under the node's
//! serve policy, and fetches blocks from IPFS peers when neither the
//! requester nor a Shoal peer has them.
//!
//! The wire and the pure rules are [`shoal_scheduler::net::bitswap`]; this
//! module gives them the store and the clock:
//! - serving: a wantlist goes into the [`Ledger`]; one task per peer with
//!   wants answers them a message at a time, reading the next from the
//!   store while the previous is written, so a peer has at most two
//!   answers (4 MiB of blocks) here at once, and at most [`MAX_SERVING`]
//!   peers are served at once;
//! - fetching: [`Bitswap::fetch`] runs a [`Session`] over the connected
//!   Bitswap peers until it has every block, every peer said it lacks
//!   one, or the deadline passes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use shoal_scheduler::net::bitswap::ledger::{self, Ledger, Lookup, Want};
use shoal_scheduler::net::bitswap::message::{Message, WantType};
use shoal_scheduler::net::bitswap::score::{self, Scores, Verdict, Wanted};
use shoal_scheduler::net::bitswap::session::{self, Session};
use shoal_scheduler::net::Client;
use shoal_storage::{Block, BlockStore, Cid};
use tokio::sync::mpsc;

use crate::serve::Servable;

/// Inbound messages being taken in at once (their blocks hashed, their
/// wants applied); past it a message is dropped and counted, as a peer
/// that floods deserves.
pub const MAX_INBOUND: usize = 256;
/// Peers served at once; the wants of others wait in the ledger.
pub const MAX_SERVING: usize = 64;
/// Wants looked at per answer.
pub const WANTS_PER_ANSWER: usize = 256;
/// Messages queued for one fetch; a fetch that falls this far behind
/// loses messages, and its timeouts ask again.
const SESSION_QUEUE: usize = 256;
/// Fetches running at once.
pub const MAX_SESSIONS: usize = 64;
/// How often a fetch looks at its timeouts.
const TICK: Duration = Duration::from_millis(100);

/// Counters shown on `/metrics` (as `shoal_bitswap_*`). Clones share
/// their values.
#[derive(Default, Clone)]
pub struct Stats {
    pub blocks_sent: Counter,
    pub bytes_sent: Counter,
    pub blocks_received: Counter,
    pub bytes_received: Counter,
    /// Blocks that did not hash to a wanted CID's digest, frames that did
    /// not parse, blocks with an unsupported hash.
    pub invalid: Counter,
    pub wants_dropped: Counter,
    /// Messages dropped because too many were being taken in.
    pub dropped: Counter,
    /// Junk received: blocks no fetch wanted, blocks and frames refused
    /// as invalid (scored against their peer, see [`score`]).
    pub junk: Counter,
    /// Peers banned for sending junk.
    pub peers_banned: Counter,
    /// Blocks the running fetches still wait on.
    pub wants_in_flight: Gauge,
}

impl Stats {
    pub(crate) fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register("blocks_sent", "Blocks sent to IPFS peers", self.blocks_sent.clone());
        r.register("bytes_sent", "Block bytes sent to IPFS peers", self.bytes_sent.clone());
        r.register("blocks_received", "Wanted blocks received from IPFS peers", self.blocks_received.clone());
        r.register("bytes_received", "Wanted block bytes received from IPFS peers", self.bytes_received.clone());
        r.register("invalid", "Malformed frames and blocks refused", self.invalid.clone());
        r.register("wants_dropped", "Wants over the per-peer limits", self.wants_dropped.clone());
        r.register("dropped", "Messages dropped under load", self.dropped.clone());
        r.register("junk", "Unwanted blocks and invalid blocks or frames received", self.junk.clone());
        r.register("peers_banned", "Peers banned for sending junk", self.peers_banned.clone());
        r.register("wants_in_flight", "Blocks the running bitswap fetches still wait on", self.wants_in_flight.clone());
    }
}

/// One message as a fetch sees it: the blocks already hashed.
struct Inbound {
    peer: PeerId,
    blocks: Vec<Block>,
    message: Message,
}

/// The node's Bitswap state.
pub struct Bitswap {
    client: Client,
    store: Arc<dyn BlockStore>,
    servable: Arc<Servable>,
    ledger: Mutex<Ledger>,
    serving: Mutex<HashSet<PeerId>>,
    serve_slots: Arc<tokio::sync::Semaphore>,
    inbound_slots: Arc<tokio::sync::Semaphore>,
    sessions: Mutex<HashMap<u64, mpsc::Sender<Arc<Inbound>>>>,
    session_slots: Arc<tokio::sync::Semaphore>,
    next_session: AtomicU64,
    session_config: session::Config,
    /// What the running fetches want (a block for anything else is junk).
    wanted: Mutex<Wanted>,
    scores: Mutex<Scores>,
    /// The origin of the scores' clock.
    epoch: tokio::time::Instant,
    pub stats: Stats,
}

impl Bitswap {
    pub fn new(client: Client, store: Arc<dyn BlockStore>, servable: Arc<Servable>, stats: Stats) -> Bitswap {
        Bitswap {
            client,
            store,
            servable,
            ledger: Mutex::new(Ledger::new(ledger::Config::default())),
            serving: Mutex::new(HashSet::new()),
            serve_slots: Arc::new(tokio::sync::Semaphore::new(MAX_SERVING)),
            inbound_slots: Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND)),
            sessions: Mutex::new(HashMap::new()),
            session_slots: Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS)),
            next_session: AtomicU64::new(0),
            session_config: session::Config::default(),
            wanted: Mutex::new(Wanted::default()),
            scores: Mutex::new(Scores::new(score::Config::default())),
            epoch: tokio::time::Instant::now(),
            stats,
        }
    }

    /// Takes in a message from `peer` on a task of its own (hashing blocks
    /// must not hold up the node's other network events), or drops it
    /// when [`MAX_INBOUND`] are being taken in already.
    pub fn accept(self: &Arc<Self>, peer: PeerId, message: Message) {
        let Ok(permit) = self.inbound_slots.clone().try_acquire_owned() else {
            self.stats.dropped.inc();
            tracing::debug!(%peer, "bitswap: too many messages being taken in; one dropped");
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            me.on_message(peer, message).await;
        });
    }

    /// Takes in a message from `peer`: wants go to the ledger (and a
    /// serving task), blocks and presences to the running fetches.
    pub async fn on_message(self: &Arc<Self>, peer: PeerId, mut message: Message) {
        if let Some(wantlist) = message.wantlist.take() {
            let applied = lock(&self.ledger).apply(peer, &wantlist);
            if applied.dropped > 0 {
                self.stats.wants_dropped.inc_by(applied.dropped as u64);
                tracing::debug!(%peer, dropped = applied.dropped, "bitswap: wants over the limits dropped");
            }
            if lock(&self.ledger).wants_of(&peer) > 0 {
                self.serve(peer);
            }
        }
        if message.payload.is_empty() && message.blocks.is_empty() && message.block_presences.is_empty() {
            return;
        }
        let senders: Vec<_> = lock(&self.sessions).values().cloned().collect();
        // Hashing up to 4 MiB: off the async threads.
        let hashed = tokio::task::spawn_blocking(move || {
            let mut blocks = Vec::new();
            let mut invalid = 0u64;
            for b in message.received_blocks() {
                match b {
                    Ok(b) => blocks.push(b),
                    Err(e) => {
                        tracing::debug!(%peer, "bitswap: block refused: {e}");
                        invalid += 1;
                    }
                }
            }
            (Inbound { peer, blocks, message }, invalid)
        })
        .await;
        let Ok((inbound, invalid)) = hashed else { return };
        self.stats.invalid.inc_by(invalid);
        // Received counts wanted blocks only, in blocks and in bytes alike;
        // the rest is junk.
        let (wanted_blocks, wanted_bytes) = {
            let wanted = lock(&self.wanted);
            inbound
                .blocks
                .iter()
                .filter(|b| wanted.contains(b.cid()))
                .fold((0u64, 0u64), |(n, s), b| (n + 1, s + b.len() as u64))
        };
        let unwanted = inbound.blocks.len() as u64 - wanted_blocks;
        self.stats.blocks_received.inc_by(wanted_blocks);
        self.stats.bytes_received.inc_by(wanted_bytes);
        self.score(peer, invalid + unwanted);
        if unwanted == inbound.blocks.len() as u64 && inbound.message.block_presences.is_empty() {
            return;
        }
        let inbound = Arc::new(inbound);
        for s in senders {
            let _ = s.try_send(inbound.clone());
        }
    }

    /// A malformed frame from `peer`.
    pub fn on_invalid(&self, peer: PeerId, reason: &str) {
        self.stats.invalid.inc();
        tracing::debug!(%peer, "bitswap: {reason}");
        self.score(peer, 1);
    }

    /// Counts `items` junk items against `peer`, and bans it when they
    /// are past its allowance. The ban is sent from a task of its own: the
    /// caller may be the task the network's event loop waits on.
    fn score(&self, peer: PeerId, items: u64) {
        if items == 0 {
            return;
        }
        self.stats.junk.inc_by(items);
        let now = self.epoch.elapsed().as_millis() as u64;
        let verdict = lock(&self.scores).junk(peer, u32::try_from(items).unwrap_or(u32::MAX), now);
        if let Verdict::Ban { for_ms } = verdict {
            self.stats.peers_banned.inc();
            lock(&self.ledger).remove(&peer);
            tracing::warn!(%peer, "bitswap: peer banned for {} s: it sent blocks nobody wanted or invalid data", for_ms / 1000);
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(e) = client.ban(peer, Duration::from_millis(for_ms)).await {
                    tracing::debug!(%peer, "bitswap: cannot ban: {e}");
                }
            });
        }
    }

    /// `peer` went away: its wants go with it.
    pub fn on_disconnected(&self, peer: &PeerId) {
        lock(&self.ledger).remove(peer);
        lock(&self.scores).remove(peer);
    }

    /// Starts `peer`'s serving task unless one runs or every slot is
    /// taken (its wants then wait in the ledger for the next message).
    fn serve(self: &Arc<Self>, peer: PeerId) {
        if !lock(&self.serving).insert(peer) {
            return;
        }
        let Ok(permit) = self.serve_slots.clone().try_acquire_owned() else {
            lock(&self.serving).remove(&peer);
            tracing::debug!(%peer, "bitswap: every serving slot is taken; the wants wait");
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            me.serve_peer(peer).await;
            lock(&me.serving).remove(&peer);
            // Wants that came in after the last look.
            if lock(&me.ledger).wants_of(&peer) > 0 {
                me.serve(peer);
            }
        });
    }

    async fn serve_peer(self: &Arc<Self>, peer: PeerId) {
        // The next answer is read from the store while the previous one is
        // written: at most two answers (4 MiB of blocks) per peer at once.
        let mut writing: Option<tokio::task::JoinHandle<bool>> = None;
        loop {
            let wants = lock(&self.ledger).take(&peer, WANTS_PER_ANSWER);
            if wants.is_empty() {
                break;
            }
            let (store, servable) = (self.store.clone(), self.servable.clone());
            let answered = tokio::task::spawn_blocking(move || {
                // One look at the pin list per answer, not per block.
                let fresh = servable.refresh(&*store).is_ok();
                ledger::answer(wants, |w: &Want| lookup(&*store, fresh.then_some(&*servable), w))
            })
            .await;
            let Ok((message, rest)) = answered else { break };
            if !rest.is_empty() {
                lock(&self.ledger).put_back(peer, rest);
            }
            if message.is_empty() {
                continue;
            }
            if let Some(w) = writing.take() {
                if !w.await.unwrap_or(false) {
                    return;
                }
            }
            let me = self.clone();
            writing = Some(tokio::spawn(async move { me.send_answer(peer, message).await }));
        }
        if let Some(w) = writing {
            let _ = w.await;
        }
    }

    /// Writes one answer; false (and the peer's wants forgotten) when it
    /// cannot be.
    async fn send_answer(&self, peer: PeerId, message: Message) -> bool {
        let (blocks, bytes) = (message.payload.len() as u64, message.block_bytes() as u64);
        match self.client.bitswap_send(peer, message).await {
            Ok(()) => {
                self.stats.blocks_sent.inc_by(blocks);
                self.stats.bytes_sent.inc_by(bytes);
                true
            }
            Err(e) => {
                tracing::debug!(%peer, "bitswap: answer not sent: {e}");
                lock(&self.ledger).remove(&peer);
                false
            }
        }
    }

    /// Gets `want` from the connected Bitswap peers but `skip` (asked
    /// already by other means), every block verified, within `deadline`.
    /// The error names the first missing CID and the peers asked.
    pub async fn fetch(&self, want: &[Cid], skip: &[PeerId], deadline: Duration) -> anyhow::Result<Vec<Block>> {
        let peers: Vec<PeerId> = self.client.bitswap_peers().await?.into_iter().filter(|p| !skip.contains(p)).collect();
        if peers.is_empty() {
            bail!("no ipfs (bitswap) peer is connected");
        }
        self.fetch_from(want, peers, deadline).await
    }

    /// [`Bitswap::fetch`] from `peers` only (connected ones: providers the
    /// DHT found, say).
    pub async fn fetch_from(&self, want: &[Cid], peers: Vec<PeerId>, deadline: Duration) -> anyhow::Result<Vec<Block>> {
        if peers.is_empty() {
            bail!("no ipfs (bitswap) peer to ask");
        }
        let Ok(_slot) = self.session_slots.clone().try_acquire_owned() else {
            bail!("{MAX_SESSIONS} bitswap fetches already run on this node; retry");
        };
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
        lock(&self.sessions).insert(id, tx);
        lock(&self.wanted).add(want);
        let _registered = Registered { bitswap: self, id, want };
        let n_peers = peers.len();
        let mut session = Session::new(self.session_config.clone(), peers);
        session.want(want.iter().copied());
        let start = tokio::time::Instant::now();
        let ms = || start.elapsed().as_millis() as u64;
        let mut out = Vec::with_capacity(want.len());
        let wanted = want.len() as i64;
        self.stats.wants_in_flight.inc_by(wanted);
        let result = loop {
            let (sends, failed) = session.poll(ms());
            if let Some(f) = failed.first() {
                break Err(anyhow::anyhow!("block {} is on none of the {} ipfs peers asked", f.cid, f.asked));
            }
            self.send_all(sends).await;
            if session.is_done() {
                break Ok(());
            }
            if start.elapsed() >= deadline {
                break Err(anyhow::anyhow!(
                    "{} block(s) still missing after {:?} of asking {n_peers} ipfs peer(s)",
                    session.pending(),
                    deadline
                ));
            }
            match tokio::time::timeout(TICK, rx.recv()).await {
                Ok(Some(inbound)) => {
                    let got = session.on_message(inbound.peer, inbound.blocks.clone(), &inbound.message);
                    self.stats.wants_in_flight.dec_by(got.blocks.len() as i64);
                    out.extend(got.blocks);
                    let mut cancels: HashMap<PeerId, Message> = HashMap::new();
                    for (peer, cid) in got.cancel {
                        cancels.entry(peer).or_default().push_cancel(&cid);
                    }
                    self.send_all(cancels.into_iter().collect()).await;
                }
                Ok(None) => break Err(anyhow::anyhow!("the node is shutting down")),
                Err(_) => {}
            }
        };
        self.stats.wants_in_flight.dec_by(wanted - out.len() as i64);
        let cancels = session.cancel_all();
        self.send_all(cancels).await;
        result.map(|()| out)
    }

    async fn send_all(&self, messages: Vec<(PeerId, Message)>) {
        let sends = messages.into_iter().map(|(peer, m)| async move {
            if let Err(e) = self.client.bitswap_send(peer, m).await {
                tracing::debug!(%peer, "bitswap: want not sent: {e}");
            }
        });
        futures::future::join_all(sends).await;
    }
}

/// Unregisters a fetch however it ends.
struct Registered<'a> {
    bitswap: &'a Bitswap,
    id: u64,
    want: &'a [Cid],
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.bitswap.sessions).remove(&self.id);
        lock(&self.bitswap.wanted).done(self.want);
    }
}

/// What `store` holds of `w` under the serve policy; nothing at all when
/// the policy could not be brought up to date (`servable` is `None`).
fn lookup(store: &dyn BlockStore, servable: Option<&Servable>, w: &Want) -> Lookup {
    match servable.map(|s| s.allows_indexed(store, &w.cid)) {
        Some(Ok(true)) => {}
        _ => return Lookup::DontHave,
    }
    match w.kind {
        WantType::Have => match store.has(&w.cid) {
            Ok(true) => Lookup::Have(None),
            _ => Lookup::DontHave,
        },
        // The peer hashes the block on arrival: no hashing here as well.
        WantType::Block => match store.get_for_peer(&w.cid) {
            Ok(b) => Lookup::Have(Some(b)),
            Err(_) => Lookup::DontHave,
        },
    }
}

/// A poisoned lock only means another task panicked while holding it; the
/// maps inside stay consistent (every update is a single call).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::Policy;
    use shoal_storage::importer::{Importer, Options};
    use shoal_storage::{MemStore, PinMode};

    fn want(cid: Cid, kind: WantType) -> Want {
        Want { cid, kind, send_dont_have: true }
    }

    #[test]
    fn lookups_follow_the_policy_and_refuse_what_cannot_be_named() {
        let store = MemStore::new();
        let pinned = Importer::new(&store, Options::default()).add_bytes(b"pinned").unwrap().root;
        shoal_storage::pin::add(&store, &pinned, PinMode::Recursive).unwrap();
        let cached = Importer::new(&store, Options::default()).add_bytes(b"only cached").unwrap().root;
        // A blake3 (0x1e) CID: valid, but not a hash any store here keeps.
        let blake3 = Cid::try_from([&[0x01, 0x55, 0x1e, 0x20][..], &[7; 32]].concat().as_slice()).unwrap();
        let on = Servable::new(Policy::Pinned);
        on.refresh(&store).unwrap();
        let have = |s: &Servable, w: Want| match lookup(&store, Some(s), &w) {
            Lookup::Have(b) => Some(b.map(|b| *b.cid())),
            Lookup::DontHave => None,
        };
        assert_eq!(have(&on, want(pinned, WantType::Block)), Some(Some(pinned)));
        assert_eq!(have(&on, want(pinned, WantType::Have)), Some(None));
        assert_eq!(have(&on, want(cached, WantType::Block)), None, "cached, not pinned");
        assert_eq!(have(&on, want(blake3, WantType::Have)), None);
        let all = Servable::new(Policy::All);
        assert_eq!(have(&all, want(cached, WantType::Block)), Some(Some(cached)));
        assert_eq!(have(&all, want(blake3, WantType::Block)), None);
        let off = Servable::new(Policy::Off);
        assert_eq!(have(&off, want(pinned, WantType::Block)), None);
        // A policy that could not be brought up to date serves nothing.
        assert!(matches!(lookup(&store, None, &want(pinned, WantType::Block)), Lookup::DontHave));
    }
}
