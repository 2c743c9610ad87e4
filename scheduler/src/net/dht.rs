//! The node's part in the IPFS DHT: two Kademlia behaviours (Kubo's WAN
//! and LAN names), the provides and provider lookups in flight on them,
//! and the event loop's handling of their queries. Kept apart from the
//! rest of the event loop; its methods are `EventLoop`'s own.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::kad::{self, QueryId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::oneshot;

use super::{Error, EventLoop};

/// The IPFS DHT's protocol, as the public network (Kubo's "WAN" DHT) speaks it.
pub const IPFS_KAD_PROTOCOL: &str = "/ipfs/kad/1.0.0";
/// The IPFS DHT of a local network: Kubo runs a dual DHT, and its WAN DHT
/// ([`IPFS_KAD_PROTOCOL`]) keeps only peers with public addresses in its
/// routing table and asks only those, while its LAN DHT, on this name,
/// takes peers on private and loopback addresses. A Shoal node speaks both,
/// as two Kademlia behaviours: libp2p-kad 0.49 gives one behaviour a single
/// protocol name (`kad::Config::new`, no setter for more), and the two are
/// separate networks anyway (a peer in one table is not in the other).
pub const IPFS_LAN_KAD_PROTOCOL: &str = "/ipfs/lan/kad/1.0.0";
/// Keys (CIDs' multihashes) the IPFS DHT store holds provider records for,
/// ours and others' together (each key at most [`kad::K_VALUE`] = 20
/// providers): past it, new keys are refused, so a peer flooding us with
/// provider records costs a bounded amount of memory (at most about
/// 8192 x 20 records of a few hundred bytes each).
pub const IPFS_MAX_PROVIDER_KEYS: usize = 8192;
/// Value records (IPNS and the like, up to 64 KiB each) the IPFS DHT store
/// keeps for others: at most 16 MiB.
pub const IPFS_MAX_RECORDS: usize = 256;
/// How long one IPFS DHT query (a provide, a provider lookup) may run.
pub const IPFS_QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often kad re-publishes this node's provider records on its own
/// (kad's default, 12 h, under the 48 h the records live on other peers:
/// [`IPFS_PROVIDER_RECORD_TTL`]). Re-providing is kad's job; the node only
/// says once what to provide.
pub const IPFS_REPROVIDE_INTERVAL: Duration = Duration::from_secs(12 * 60 * 60);
/// How long a provider record lives (Kubo's and kad's default).
pub const IPFS_PROVIDER_RECORD_TTL: Duration = Duration::from_secs(48 * 60 * 60);
/// Provider lookups running at once; more are refused at once, so that
/// lookups cannot pile up in the event loop.
pub const MAX_FIND_PROVIDERS: usize = 64;

/// Which of the two IPFS DHTs (see [`IPFS_LAN_KAD_PROTOCOL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Dht {
    Wan,
    Lan,
}

/// A Kademlia behaviour for the IPFS DHT on `protocol`, in server mode
/// (answering queries and storing records) with its store bounded.
pub(super) fn ipfs_kad(peer: PeerId, protocol: &'static str) -> kad::Behaviour<MemoryStore> {
    let mut cfg = kad::Config::new(StreamProtocol::new(protocol));
    cfg.set_query_timeout(IPFS_QUERY_TIMEOUT)
        .set_provider_publication_interval(Some(IPFS_REPROVIDE_INTERVAL))
        .set_provider_record_ttl(Some(IPFS_PROVIDER_RECORD_TTL));
    let store = MemoryStore::with_config(
        peer,
        MemoryStoreConfig {
            max_records: IPFS_MAX_RECORDS,
            max_value_bytes: 64 * 1024,
            max_providers_per_key: kad::K_VALUE.get(),
            max_provided_keys: IPFS_MAX_PROVIDER_KEYS,
        },
    );
    let mut kad = kad::Behaviour::with_config(peer, store, cfg);
    // Server mode, as for Shoal's own Kademlia: on loopback or a LAN no
    // external address is ever confirmed, and a client-mode node would
    // never enter Kubo's routing table nor hold the records it is sent.
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

/// A provide in flight on both IPFS DHTs.
pub(super) struct Providing {
    /// Queries not finished yet.
    left: usize,
    /// Peers that took the record, over the finished queries.
    peers: u32,
    errors: Vec<String>,
    reply: oneshot::Sender<Result<u32, Error>>,
}

/// A provider lookup in flight on both IPFS DHTs.
pub(super) struct Finding {
    /// Its queries still running.
    queries: Vec<(Dht, QueryId)>,
    limit: usize,
    deadline: tokio::time::Instant,
    /// Providers found (at most `limit`), dialed or connected.
    found: HashSet<PeerId>,
    /// Providers being dialed.
    dialing: HashSet<PeerId>,
    /// Providers connected, in the order they connected.
    connected: Vec<PeerId>,
    reply: oneshot::Sender<Result<Vec<PeerId>, Error>>,
}

/// What a query of the IPFS DHTs belongs to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    Provide(u64),
    Find(u64),
}

impl EventLoop {
    /// One of the IPFS DHTs; `None` when the node is not in them
    /// ([`super::Config::ipfs_dht`] off).
    pub(super) fn dht(&mut self, which: Dht) -> Option<&mut kad::Behaviour<MemoryStore>> {
        match which {
            Dht::Wan => self.swarm.behaviour_mut().ipfs_kad.as_mut(),
            Dht::Lan => self.swarm.behaviour_mut().ipfs_lan_kad.as_mut(),
        }
    }

    pub(super) fn start_provide(&mut self, key: Vec<u8>, reply: oneshot::Sender<Result<u32, Error>>) {
        let id = self.next_op;
        self.next_op += 1;
        let key = kad::RecordKey::new(&key);
        let mut errors = Vec::new();
        let mut left = 0;
        for which in [Dht::Wan, Dht::Lan] {
            match self.dht(which).map(|k| k.start_providing(key.clone())) {
                Some(Ok(q)) => {
                    self.dht_queries.insert((which, q), Op::Provide(id));
                    left += 1;
                }
                Some(Err(e)) => errors.push(format!("{which:?}: {e}")),
                None => errors.push(format!("{which:?}: this node is not in the IPFS DHT")),
            }
        }
        if left == 0 {
            let _ = reply.send(Err(Error::Dht(format!("cannot provide: {}", errors.join("; ")))));
            return;
        }
        self.provides.insert(id, Providing { left, peers: 0, errors, reply });
    }

    pub(super) fn start_find(
        &mut self,
        key: Vec<u8>,
        limit: usize,
        deadline: Duration,
        reply: oneshot::Sender<Result<Vec<PeerId>, Error>>,
    ) {
        if self.finds.len() >= MAX_FIND_PROVIDERS {
            let _ = reply.send(Err(Error::Dht(format!(
                "{MAX_FIND_PROVIDERS} provider lookups are running already; retry later"
            ))));
            return;
        }
        let id = self.next_op;
        self.next_op += 1;
        let key = kad::RecordKey::new(&key);
        let mut queries = Vec::new();
        for which in [Dht::Wan, Dht::Lan] {
            let Some(q) = self.dht(which).map(|k| k.get_providers(key.clone())) else { continue };
            self.dht_queries.insert((which, q), Op::Find(id));
            queries.push((which, q));
        }
        if queries.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
            return;
        }
        self.finds.insert(
            id,
            Finding {
                queries,
                limit: limit.max(1),
                deadline: tokio::time::Instant::now() + deadline,
                found: HashSet::new(),
                dialing: HashSet::new(),
                connected: Vec::new(),
                reply,
            },
        );
    }

    /// Answers the lookup `id` if it is done: a provider is connected, or
    /// nothing is left to wait for, or its deadline passed. Its queries
    /// still running are then stopped.
    pub(super) fn settle_find(&mut self, id: u64) {
        let Some(f) = self.finds.get(&id) else { return };
        let idle = f.queries.is_empty() && f.dialing.is_empty();
        if f.connected.is_empty() && !idle && tokio::time::Instant::now() < f.deadline {
            return;
        }
        let Some(f) = self.finds.remove(&id) else { return };
        for (which, q) in &f.queries {
            if let Some(mut query) = self.dht(*which).and_then(|k| k.query_mut(q)) {
                query.finish();
            }
        }
        let _ = f.reply.send(Ok(f.connected));
    }

    /// Providers found by a lookup: dialed at once, while the query that
    /// found them runs, because kad knows their addresses only from that
    /// query's answers (it hands them to the swarm in
    /// `handle_pending_outbound_connection`, from the running queries'
    /// peer address maps).
    pub(super) fn on_providers_found(&mut self, id: u64, providers: HashSet<PeerId>) {
        let local = *self.swarm.local_peer_id();
        let Some(f) = self.finds.get_mut(&id) else { return };
        let mut dial = Vec::new();
        for p in providers {
            if p == local || f.found.len() >= f.limit || !f.found.insert(p) {
                continue;
            }
            if self.connected.contains(&p) {
                f.connected.push(p);
            } else {
                f.dialing.insert(p);
                dial.push(p);
            }
        }
        for p in dial {
            let opts = DialOpts::peer_id(p).condition(PeerCondition::Disconnected).build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(peer = %p, "cannot dial a provider: {e}");
                if let Some(f) = self.finds.get_mut(&id) {
                    f.dialing.remove(&p);
                }
            }
        }
        self.settle_find(id);
    }

    /// `peer` connected (`ok`) or could not be reached: the lookups that
    /// were dialing it learn it.
    pub(super) fn on_provider_dialed(&mut self, peer: PeerId, ok: bool) {
        let mut touched = Vec::new();
        for (id, f) in &mut self.finds {
            if f.dialing.remove(&peer) || (ok && f.found.contains(&peer) && !f.connected.contains(&peer)) {
                if ok && !f.connected.contains(&peer) {
                    f.connected.push(peer);
                }
                touched.push(*id);
            }
        }
        for id in touched {
            self.settle_find(id);
        }
    }

    pub(super) fn on_ipfs_kad(&mut self, which: Dht, event: kad::Event) {
        if let kad::Event::InboundRequest { request } = &event {
            let s = &mut self.dht_stats;
            match request {
                kad::InboundRequest::AddProvider { .. } => s.provider_records_received += 1,
                kad::InboundRequest::GetProvider { num_provider_peers, .. } => {
                    s.provider_lookups_answered += 1;
                    s.provider_records_served += *num_provider_peers as u64;
                }
                _ => {}
            }
            return;
        }
        let kad::Event::OutboundQueryProgressed { id: q, result, step, stats } = event else { return };
        let Some(op) = self.dht_queries.get(&(which, q)).copied() else { return };
        if step.last {
            self.dht_queries.remove(&(which, q));
        }
        match (op, result) {
            (Op::Provide(id), kad::QueryResult::StartProviding(result)) => {
                let Some(p) = self.provides.get_mut(&id) else { return };
                match result {
                    Ok(_) => p.peers += stats.num_successes(),
                    Err(e) => p.errors.push(format!("{which:?}: {e:?}")),
                }
                p.left = p.left.saturating_sub(1);
                if p.left == 0 {
                    if let Some(p) = self.provides.remove(&id) {
                        let answer = if p.peers == 0 && !p.errors.is_empty() {
                            Err(Error::Dht(format!("provide failed: {}", p.errors.join("; "))))
                        } else {
                            Ok(p.peers)
                        };
                        let _ = p.reply.send(answer);
                    }
                }
            }
            (Op::Find(id), kad::QueryResult::GetProviders(result)) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                    self.on_providers_found(id, providers);
                }
                if step.last {
                    if let Some(f) = self.finds.get_mut(&id) {
                        f.queries.retain(|x| *x != (which, q));
                    }
                    self.settle_find(id);
                }
            }
            _ => {}
        }
    }
}
