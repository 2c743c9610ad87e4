//! A Shoal peer. Every node is a requester (it accepts jobs on its HTTP
//! API and schedules them) and, unless [`Config::compute`] is off, a
//! compute node (it bids for executions and runs them).
//!
//! This crate is the node as a library: [`start`] takes a plain
//! [`Config`] and the things a test wants to control ([`Deps`]: the block
//! store, the identity, the clock, the transport and the API listener),
//! and returns a [`Running`] node that stops when asked. `shoal node` only
//! parses flags into them; `tests/inprocess.rs` runs whole networks of
//! nodes in one process over libp2p's memory transport.
//!
//! # Layout
//! - `requester.rs`: the scheduling loop. It persists jobs and executions
//!   in the node's SQLite database, asks the pure
//!   [`shoal_scheduler::placement::plan`] what to do, and carries the plan
//!   out (bids, runs, reveals, completion) through the network client.
//! - `compute.rs`: the compute side: slots, bids, running executions with
//!   the runtime, commit-reveal.
//! - `pipelines.rs`: pipelines: their API, and the driver that submits
//!   each step once the steps it reads have results (the pure rules are
//!   [`shoal_scheduler::flow`]).
//! - `fetch.rs`: block exchange (fetch a DAG from Shoal peers, then IPFS
//!   peers over Bitswap, then DHT providers, then trustless gateways;
//!   serve ours to Shoal peers).
//! - `bitswap.rs`: IPFS's Bitswap as the node runs it (the wire and the
//!   pure rules are [`shoal_scheduler::net::bitswap`]).
//! - `provide.rs`: provider records on the IPFS DHT for pinned roots.
//! - `serve.rs`: which blocks IPFS peers may get (`--ipfs-serve`).
//! - `gateway.rs`: the IPFS trustless gateway (`/ipfs/…`) and its client.
//! - `api.rs`: the HTTP API (axum), OpenAPI document and metrics.
//! - `views.rs`: the API's answers as types, from which the OpenAPI
//!   document is derived.
//! - `guard.rs`: what every API request must pass first (host names, the
//!   token, no state change a web page could send).
//! - test misbehaviours (a liar, a crasher, a silent node) live in
//!   `compute.rs`, in debug builds only.
//!
//! The network itself is [`shoal_scheduler::net`]: this crate only sees
//! its client and its events.

pub mod api;
pub mod bitswap;
pub mod compute;
pub mod fetch;
pub mod gateway;
pub mod guard;
pub mod pipelines;
pub mod provide;
pub mod requester;
pub mod serve;
pub mod views;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use shoal_scheduler::db::Db;
use shoal_scheduler::net::proto::{self, Announcement, Request, Response};
use shoal_scheduler::net::{self, Client, Event};
use shoal_storage::BlockStore;
use tokio::sync::{watch, Notify};

/// What a node is asked to be: plain values, with a default for each
/// (see [`Config::default`]). What a test wants to control at run time
/// (store, identity, clock, transport, listener) is in [`Deps`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The libp2p address to listen on: `/ip4/127.0.0.1/tcp/0` by default
    /// (the OS picks the port); `/memory/0` with [`Transport::Memory`].
    pub listen: Multiaddr,
    /// Peers dialed at start (each ending in `/p2p/<peer id>`).
    pub peers: Vec<Multiaddr>,
    /// IPFS peers (Kubo, another IPFS implementation) dialed at start and
    /// asked over Bitswap for blocks no Shoal peer has (`--ipfs-peer`).
    pub ipfs_peers: Vec<Multiaddr>,
    /// Which blocks this node gives to IPFS peers over Bitswap and its
    /// gateway (`--ipfs-serve`, default [`serve::Policy::Pinned`]).
    pub ipfs_serve: serve::Policy,
    /// How long one round of a fetch (up to 256 blocks) may ask the IPFS
    /// peers over Bitswap before it fails (default 60 s).
    pub ipfs_fetch_timeout: Duration,
    /// How long a fetch waits for the IPFS DHT to name and connect a
    /// provider of a block that neither Shoal peers nor the connected IPFS
    /// peers have, before it goes on to the gateways (default 20 s: a
    /// lookup on the public DHT takes a few seconds; zero skips the DHT).
    pub ipfs_dht_timeout: Duration,
    /// How often the node looks for newly pinned roots to provide on the
    /// IPFS DHT (default 10 s; see [`provide`]).
    pub ipfs_provide_every: Duration,
    /// Trustless gateways (`http(s)://host[:port]`) asked, last, for blocks
    /// neither Shoal nor IPFS peers gave (`--gateway`); every block is
    /// verified against its CID.
    pub gateways: Vec<String>,
    /// Labels that jobs' constraints select on.
    pub labels: BTreeMap<String, String>,
    /// Run executions (default true); false only schedules.
    pub compute: bool,
    /// Executions run at once (default 4).
    pub slots: u32,
    /// Look for a GPU and announce it if found (default true).
    pub gpu: bool,
    /// Count a software Vulkan device (lavapipe) as a GPU (default false).
    pub allow_software_gpu: bool,
    /// The requesters this node runs executions for (at most
    /// [`MAX_ALLOWED_REQUESTERS`]); empty (the default): any. Announced,
    /// so that other requesters do not ask.
    pub allow_requesters: Vec<PeerId>,
    /// The submitters (keys, as peer ids) whose jobs this node runs (at
    /// most [`MAX_ALLOWED_SUBMITTERS`]); empty (the default): anyone's,
    /// anonymous jobs included. Announced, like `allow_requesters`.
    pub allow_submitters: Vec<PeerId>,
    /// Per-submitter limits of this node as a requester.
    pub quotas: Quotas,
    /// How often the node announces itself directly to the requesters it
    /// works with (default 1 s); they count it gone after the placement's
    /// node ttl without one. Everyone else hears from it by gossip, less
    /// often as the network grows (see `gossip_rate`).
    pub announce_every: Duration,
    /// Announcements per second the whole network spends on gossip
    /// (default [`GOSSIP_RATE`]): each node gossips once per `nodes it
    /// knows / gossip_rate` seconds, never more often than
    /// `announce_every`.
    pub gossip_rate: u64,
    /// How often a compute node rebuilds the filter of the roots it holds
    /// (default [`HOLDS_REFRESH`]).
    pub holds_refresh: Duration,
    /// The API's bearer token; `None` asks for none (loopback only).
    pub api_token: Option<String>,
    /// Host names the API answers to besides IP addresses and `localhost`.
    pub api_hosts: Vec<String>,
    /// The network layer's limits and timeouts.
    pub network: net::Config,
    /// The scheduler's timeouts and backoffs.
    pub placement: shoal_scheduler::placement::Config,
    /// A deliberate misbehaviour, for tests of the network's defences
    /// (debug builds only).
    #[cfg(debug_assertions)]
    pub misbehave: Option<compute::Misbehave>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: Multiaddr::from(std::net::Ipv4Addr::LOCALHOST).with(libp2p::multiaddr::Protocol::Tcp(0)),
            peers: Vec::new(),
            ipfs_peers: Vec::new(),
            ipfs_serve: serve::Policy::default(),
            ipfs_fetch_timeout: Duration::from_secs(60),
            ipfs_dht_timeout: Duration::from_secs(20),
            ipfs_provide_every: Duration::from_secs(10),
            gateways: Vec::new(),
            labels: BTreeMap::new(),
            compute: true,
            slots: 4,
            gpu: true,
            allow_software_gpu: false,
            allow_requesters: Vec::new(),
            allow_submitters: Vec::new(),
            quotas: Quotas::default(),
            announce_every: Duration::from_secs(1),
            gossip_rate: GOSSIP_RATE,
            holds_refresh: HOLDS_REFRESH,
            api_token: None,
            api_hosts: Vec::new(),
            network: net::Config::default(),
            placement: Default::default(),
            #[cfg(debug_assertions)]
            misbehave: None,
        }
    }
}

impl Config {
    #[cfg(debug_assertions)]
    fn misbehave(&self) -> Option<compute::Misbehave> {
        self.misbehave
    }

    #[cfg(not(debug_assertions))]
    fn misbehave(&self) -> Option<compute::Misbehave> {
        None
    }
}

/// Which libp2p transport a node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// TCP with noise and yamux: the real network.
    #[default]
    Tcp,
    /// libp2p's in-process memory transport: nodes of one process only
    /// (tests).
    Memory,
    /// The memory transport without encryption (see
    /// [`net::Security::Plaintext`]): many nodes in one process
    /// (`shoal-sim`).
    MemoryPlaintext,
}

/// What a node runs with, injected: tests give a memory store, a fixed
/// identity, a clock they move and the memory transport.
pub struct Deps {
    /// The node's own directory: its job database (`scheduler.sqlite`),
    /// the compiled-module cache and the executions' scratch space.
    pub home: PathBuf,
    pub store: Arc<dyn BlockStore>,
    pub key: Keypair,
    pub clock: Clock,
    pub transport: Transport,
    /// Where the HTTP API listens; `None` runs no API.
    pub api: Option<tokio::net::TcpListener>,
}

/// Why a node could not start or stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot create the node home {}: {source}; check the path and its permissions", path.display())]
    Home { path: PathBuf, source: std::io::Error },
    #[error("cannot open the job database: {0}")]
    Database(#[from] shoal_scheduler::db::Error),
    #[error(transparent)]
    Network(#[from] net::Error),
    #[error("cannot start the compute side: {0}")]
    Compute(String),
    #[error("{0}")]
    Identity(String),
    #[error("the api listener has no address: {0}")]
    Api(std::io::Error),
    #[error("the api server failed: {0}")]
    Serve(std::io::Error),
}

/// What this node last heard from a peer.
#[derive(Debug, Clone)]
pub struct View {
    /// The peer id's text, encoded once: placement names nodes by it.
    pub id: String,
    pub announcement: Announcement,
    pub last_seen_ms: u64,
    /// Its holds filter, decoded once when it arrives (none if absent or
    /// malformed).
    pub holds: Option<Arc<shoal_scheduler::holds::Holds>>,
    /// Its filter of the job CIDs it holds receipts of, decoded likewise.
    pub receipts: Option<Arc<shoal_scheduler::holds::Holds>>,
    /// False from its disconnection until it is heard from again.
    pub connected: bool,
    /// How long after `last_seen_ms` it counts as alive (three of its
    /// announcement periods, see [`proto::Announcement::every_ms`]);
    /// `None`: the node ttl.
    pub ttl_ms: Option<u64>,
    /// It announces itself to this node directly, often (it runs work for
    /// it): a disconnection means that work is lost.
    pub watched: bool,
}

/// How long an unanswered bid keeps its slots counted as taken (bids are
/// answered in milliseconds; one whose answer is lost would otherwise make
/// its node look full until the request times out, 30 s).
pub const BID_ROOM_HOLD: Duration = Duration::from_secs(2);

/// What one submitter (a key; anonymous submissions count as one) may
/// hold on this node as a requester. Open by default: an operator who
/// opens the API to others sets them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Unfinished (queued or running) jobs; past it a submission is
    /// refused with 429 naming the limit.
    pub jobs: Option<u32>,
    /// Executions asking for or holding a slot (bids, accepted, running)
    /// across its jobs; past it its other jobs wait.
    pub executions: Option<u32>,
}

/// Most submitters a node's allow-list names (each is announced).
pub const MAX_ALLOWED_SUBMITTERS: usize = 64;

/// Most requesters a node's allow-list names (each is announced).
pub const MAX_ALLOWED_REQUESTERS: usize = 64;

/// How a "busy" answer begins (the asker tries again later).
pub const BUSY: &str = "node busy";

/// Execution-protocol requests handled at once; more are answered busy.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 256;
/// Block requests answered at once (each answer holds up to 8 MiB: 256 MiB
/// at most); more are answered with nothing, as busy.
pub const MAX_BLOCK_REQUESTS_IN_FLIGHT: usize = 32;
/// Peers whose announcements a node keeps; past it the one heard from
/// longest ago is forgotten.
pub const MAX_VIEWS: usize = 10_000;
/// A peer silent this long is forgotten (placement ignores it after the
/// node ttl, 10 s).
pub const VIEW_TTL: Duration = Duration::from_secs(60);

/// How often a compute node rebuilds the filter of the roots it holds
/// (a listing of its pins).
pub const HOLDS_REFRESH: Duration = Duration::from_secs(5);

/// Announcements per second the whole network spends on gossip: each node
/// gossips once per `nodes it knows / GOSSIP_RATE` seconds (never more
/// often than [`Config::announce_every`]), so what one node receives stays
/// the same however large the network grows. The requesters a node works
/// with hear from it directly instead (see [`Node::watchers`]).
pub const GOSSIP_RATE: u64 = 4;
/// The longest gossip period (a network of 14,400 nodes reaches it).
pub const MAX_GOSSIP_EVERY: Duration = Duration::from_secs(60 * 60);
/// How long after its last exchange with a requester (a bid, a reveal, a
/// cancel) a compute node keeps announcing itself to it directly; also
/// while it runs executions for it.
pub const WATCH_TTL: Duration = Duration::from_secs(30);
/// Most requesters a compute node announces itself to directly.
pub const MAX_WATCHERS: usize = 1024;
/// Direct announcements sent at once.
const ANNOUNCE_CONCURRENCY: usize = 64;

/// Fewest gossiped periods [`heard_period`] takes a median of: with fewer,
/// one liar would choose a new node's period.
pub const HEARD_PERIODS_MIN: usize = 5;

/// The median of the gossip periods `views` announced (those that
/// announce themselves to this node directly, every second, do not
/// count), if at least [`HEARD_PERIODS_MIN`] did: fewer than half of them
/// lying cannot move it outside the honest ones' range.
pub fn heard_period<'a>(views: impl Iterator<Item = &'a View>) -> Option<Duration> {
    let mut periods: Vec<u64> =
        views.filter(|v| !v.watched && v.announcement.every_ms > 0).map(|v| v.announcement.every_ms).collect();
    if periods.len() < HEARD_PERIODS_MIN {
        return None;
    }
    let mid = periods.len() / 2;
    let (_, median, _) = periods.select_nth_unstable(mid);
    Some(Duration::from_millis((*median).min(MAX_GOSSIP_EVERY.as_millis() as u64)))
}

/// The time source (injected so tests can drive it).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Milliseconds since the Unix epoch.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    })
}

/// A running node's shared state.
pub struct Node {
    pub peer: PeerId,
    /// The node's identity: it signs executions' statements and receipts.
    pub key: Keypair,
    pub client: Client,
    pub store: Arc<dyn BlockStore>,
    /// Which blocks this node gives to IPFS peers.
    pub servable: Arc<serve::Servable>,
    /// Bitswap: serving IPFS peers and fetching from them.
    pub bitswap: Arc<bitswap::Bitswap>,
    /// The deadline of one Bitswap fetch round, and of one gateway request.
    pub ipfs_fetch_timeout: Duration,
    /// The deadline of one IPFS DHT provider lookup (see
    /// [`Config::ipfs_dht_timeout`]).
    pub ipfs_dht_timeout: Duration,
    /// Trustless gateways asked last (see [`Config::gateways`]).
    pub gateways: Vec<String>,
    /// Internally locked per call: no guard escapes, so holding one across
    /// another database call cannot deadlock.
    pub db: Db,
    pub views: Mutex<HashMap<PeerId, View>>,
    pub compute: Option<Arc<compute::Compute>>,
    /// Wakes the scheduling loop early.
    pub kick: Notify,
    /// Jobs that changed since the scheduling loop last ran.
    pub dirty: Mutex<HashSet<shoal_scheduler::model::JobId>>,
    /// The next kick should plan every active job.
    pub full_pass: std::sync::atomic::AtomicBool,
    /// The next kick should place waiting jobs, oldest first, while slots
    /// are free (a slot freed or a node with room: see
    /// [`Node::room_changed`]).
    pub capacity_pass: std::sync::atomic::AtomicBool,
    /// Some job was left with fewer live executions than it wants (no
    /// node had room): a freed slot is worth a capacity pass.
    pub backlog: std::sync::atomic::AtomicBool,
    /// Slots this requester's executions took (negative: bids accepted)
    /// or freed (positive: reports) on each peer since its last
    /// announcement, reset by each: with [`Node::bids`], placement sees
    /// the slots a node has now, not as it announced them up to a second
    /// ago, so that a backlog drains as fast as slots free instead of one
    /// wave per announcement.
    pub slot_delta: Mutex<HashMap<PeerId, i64>>,
    /// Bids sent and not yet answered: execution id to (peer, slots, when
    /// sent). Each holds its slots for at most [`BID_ROOM_HOLD`]: a bid
    /// whose answer is lost must not keep a node looking full until the
    /// request times out.
    pub bids: Mutex<HashMap<String, (PeerId, i64, u64)>>,
    /// Bumped whenever a job changes (long polls watch it).
    pub changed: watch::Sender<u64>,
    pub metrics: api::Metrics,
    pub labels: BTreeMap<String, String>,
    pub boot: u64,
    pub clock: Clock,
    /// When this process started (ms), for the restart grace period.
    pub started_ms: u64,
    pub api_url: OnceLock<String>,
    /// Reveals, completions and bids in flight, so a tick does not start
    /// the same work twice.
    pub inflight: Mutex<HashSet<String>>,
    pub placement: shoal_scheduler::placement::Config,
    /// Per-submitter limits (see [`Quotas`]).
    pub quotas: Quotas,
    /// Open job event streams (see [`api::MAX_EVENT_STREAMS`]).
    pub event_streams: Arc<tokio::sync::Semaphore>,
    /// Car exports being streamed (see [`api::MAX_CAR_EXPORTS`]).
    pub car_exports: Arc<tokio::sync::Semaphore>,
    /// The filter of roots this node holds, as announced (hex) and
    /// decoded, rebuilt every [`HOLDS_REFRESH`].
    pub holds: Mutex<Option<(String, Arc<shoal_scheduler::holds::Holds>)>>,
    /// The filter of job CIDs this node holds receipts of, as announced
    /// (hex), rebuilt when [`Node::receipt_added`] says so.
    pub receipts: Mutex<Option<String>>,
    pub receipts_dirty: std::sync::atomic::AtomicBool,
    /// Some pipeline may be running: set by a submission, kept by a pass
    /// that finds one, so that the pipeline driver's pass after every job
    /// change reads nothing when there are none.
    pub pipelines_active: std::sync::atomic::AtomicBool,
    /// The requesters this compute node announces itself to directly,
    /// every [`Config::announce_every`], with when it last exchanged with
    /// each (at most [`MAX_WATCHERS`]): those it ran work for within
    /// [`WATCH_TTL`] or runs work for now. Everyone else hears of it by
    /// gossip, once per [`Node::gossip_every`].
    pub watchers: Mutex<HashMap<PeerId, u64>>,
    /// The addresses it announces (its listen address unless unspecified).
    pub addrs: Vec<String>,
}

impl Node {
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The scheduler's database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Has the scheduling loop plan `job` again soon.
    pub fn mark(&self, job: &shoal_scheduler::model::JobId) {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(job.clone());
        self.kick.notify_one();
    }

    /// Records what this requester did to `peer`'s slots: `taken`
    /// (negative) or freed (positive) since its announcement, and bids
    /// sent (positive) or answered (negative). Room freed asks for a
    /// capacity pass.
    pub fn room_changed(&self, peer: PeerId, taken_or_freed: i64) {
        if peer != self.peer {
            // Our own announcement is computed live.
            *self.slot_delta.lock().unwrap_or_else(|p| p.into_inner()).entry(peer).or_default() += taken_or_freed;
        }
        if taken_or_freed > 0 {
            self.plan_waiting();
        }
    }

    /// A bid sent to `peer` for `slots`: they count as taken until it is
    /// answered ([`Node::bid_answered`]), for [`BID_ROOM_HOLD`] at most.
    pub fn bid_sent(&self, exec: &str, peer: PeerId, slots: i64) {
        if peer != self.peer {
            let now = self.now();
            self.bids.lock().unwrap_or_else(|p| p.into_inner()).insert(exec.to_owned(), (peer, slots, now));
        }
    }

    /// A bid answered (or given up): its slots no longer count; taken if
    /// `accepted`. Either way waiting jobs may fit now.
    pub fn bid_answered(&self, exec: &str, accepted: bool) {
        let sent = self.bids.lock().unwrap_or_else(|p| p.into_inner()).remove(exec);
        if let (Some((peer, slots, _)), true) = (sent, accepted) {
            *self.slot_delta.lock().unwrap_or_else(|p| p.into_inner()).entry(peer).or_default() -= slots;
            // It works for us from now: a disconnection loses that work
            // at once, also before its first direct announcement arrives.
            if let Some(v) = self.views.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&peer) {
                v.watched = true;
            }
        }
        self.plan_waiting();
    }

    /// A bid could not reach `peer`: a node this requester knows only by
    /// gossip (whose view may be many minutes old at scale) is forgotten
    /// until it announces itself again, instead of drawing more bids while
    /// its view lives. One that works for us is left to the disconnection
    /// and ttl rules.
    pub fn unreachable(&self, peer: PeerId) {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        if views.get(&peer).is_some_and(|v| !v.watched) {
            tracing::debug!(%peer, "unreachable: forgotten until it announces itself again");
            views.remove(&peer);
        }
    }

    /// Slots per peer held by bids sent within [`BID_ROOM_HOLD`].
    pub fn bids_in_flight(&self) -> HashMap<PeerId, i64> {
        let now = self.now();
        let hold = BID_ROOM_HOLD.as_millis() as u64;
        let mut out = HashMap::new();
        for (peer, slots, at) in self.bids.lock().unwrap_or_else(|p| p.into_inner()).values() {
            if now.saturating_sub(*at) < hold {
                *out.entry(*peer).or_default() += slots;
            }
        }
        out
    }

    /// Has the scheduling loop place waiting jobs soon, oldest first,
    /// while any node has room.
    pub fn plan_waiting(&self) {
        // Only when a job is waiting for room: otherwise every report
        // would cost a pass that finds nothing to do.
        if self.backlog.load(std::sync::atomic::Ordering::Relaxed) {
            self.capacity_pass.store(true, std::sync::atomic::Ordering::Relaxed);
            self.kick.notify_one();
        }
    }

    /// Has the scheduling loop plan every active job soon.
    pub fn plan_everything(&self) {
        self.full_pass.store(true, std::sync::atomic::Ordering::Relaxed);
        self.kick.notify_one();
    }

    pub fn notify_changed(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Sends `request` to `peer`; to ourselves it is a direct call.
    pub async fn send(self: &Arc<Self>, peer: PeerId, request: Request) -> Result<Response, net::Error> {
        if peer == self.peer {
            let node = self.clone();
            return Ok(Box::pin(async move { node.handle(peer, request).await }).await);
        }
        self.client.request(peer, request).await
    }

    /// Answers an execution-protocol request from `peer`.
    pub async fn handle(self: &Arc<Self>, peer: PeerId, request: Request) -> Response {
        if matches!(request, Request::Bid { .. } | Request::Reveal { .. } | Request::Cancel { .. }) {
            self.watched_by(peer);
        }
        match request {
            Request::Announce { announcement, watching } => {
                if peer != self.peer {
                    self.on_announcement(peer, announcement, Some(watching));
                }
                Response::Ok
            }
            Request::Commit { .. } | Request::Failed { .. } => requester::handle(self, peer, request).await,
            Request::Receipts { job_cid } => {
                let Ok(cid) = job_cid.parse::<shoal_storage::Cid>() else {
                    return Response::Error { message: format!("malformed job cid {job_cid:?}") };
                };
                let n = self.clone();
                let found = tokio::task::spawn_blocking(move || {
                    n.db().receipts_for(&cid, shoal_scheduler::net::proto::MAX_RECEIPTS_ANSWER)
                })
                .await;
                match found {
                    Ok(Ok(receipts)) => {
                        Response::Receipts { receipts: receipts.iter().map(|c| c.to_string()).collect() }
                    }
                    Ok(Err(e)) => Response::Error { message: format!("cannot look up receipts: {e}") },
                    Err(e) => Response::Error { message: format!("cannot look up receipts: {e}") },
                }
            }
            _ => match &self.compute {
                Some(c) => c.handle(self, peer, request).await,
                None => Response::Error { message: "this node does not compute (--no-compute)".into() },
            },
        }
    }

    /// This node's own announcement.
    pub fn announcement(&self) -> Announcement {
        let (compute, slots_total, slots_free, gpu) = match &self.compute {
            Some(c) => (true, c.slots, c.free_slots(), c.gpu.clone()),
            None => (false, 0, 0, None),
        };
        Announcement {
            boot: self.boot,
            capacity: shoal_scheduler::model::Capacity {
                version: env!("CARGO_PKG_VERSION").into(),
                compute,
                slots_total,
                slots_free,
                memory_bytes: compute::memory_bytes(),
                labels: self.labels.clone(),
                gpu,
                submitters: self.compute.as_ref().map(|c| c.submitters.clone()).unwrap_or_default(),
            },
            api: self.api_url.get().cloned(),
            allow: self.compute.as_ref().map(|c| c.allow.iter().map(PeerId::to_string).collect()).unwrap_or_default(),
            holds: self.holds.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(hex, _)| hex.clone()),
            receipts: self.receipts.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            every_ms: 0,
            addrs: self.addrs.clone(),
        }
    }

    /// The gossip period for a node that knows `known` others: the
    /// network's gossip budget ([`GOSSIP_RATE`]) shared among them. A node
    /// that just joined knows few others yet, and would gossip far more
    /// often than the nodes already there (starting 200 nodes, those
    /// first minutes of gossip were most of the start's cost): it takes
    /// `heard`, the median of the periods the others gossip at, when that
    /// is longer (see [`heard_period`]).
    pub fn gossip_every(announce_every: Duration, rate: u64, known: usize, heard: Option<Duration>) -> Duration {
        Duration::from_millis(known as u64 * 1000 / rate.max(1))
            .max(heard.unwrap_or_default())
            .clamp(announce_every, MAX_GOSSIP_EVERY)
    }

    /// Records an exchange with requester `peer`: this node announces
    /// itself to it directly for [`WATCH_TTL`] more.
    pub fn watched_by(&self, peer: PeerId) {
        if self.compute.is_none() {
            return;
        }
        let now = self.now();
        self.watch(&mut self.watchers.lock().unwrap_or_else(|p| p.into_inner()), peer, now);
    }

    /// Puts `peer` in `watchers` as of `now`, the one heard from longest
    /// ago making room past [`MAX_WATCHERS`].
    fn watch(&self, watchers: &mut HashMap<PeerId, u64>, peer: PeerId, now: u64) {
        if peer == self.peer {
            return;
        }
        if watchers.len() >= MAX_WATCHERS && !watchers.contains_key(&peer) {
            if let Some(oldest) = watchers.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p) {
                watchers.remove(&oldest);
            }
        }
        watchers.insert(peer, now);
    }

    /// The watchers to announce to now (`true`) and those whose watch
    /// just ended (`false`, told once, then forgotten).
    fn due_watchers(&self) -> Vec<(PeerId, bool)> {
        let now = self.now();
        let ttl = WATCH_TTL.as_millis() as u64;
        let busy = self.compute.as_ref().map(|c| c.requesters()).unwrap_or_default();
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        for p in busy {
            self.watch(&mut w, p, now);
        }
        let out: Vec<(PeerId, bool)> = w.iter().map(|(p, t)| (*p, now.saturating_sub(*t) <= ttl)).collect();
        w.retain(|_, t| now.saturating_sub(*t) <= ttl);
        out
    }

    /// Rebuilds the filter of the jobs this node holds receipts of, when a
    /// job completed since the last: at most once per announcement.
    async fn refresh_receipts(self: &Arc<Self>) {
        if !self.receipts_dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let n = self.clone();
        let built = tokio::task::spawn_blocking(move || {
            n.db()
                .recent_receipt_jobs(shoal_scheduler::holds::SIZED_FOR)
                .map(|jobs| (!jobs.is_empty()).then(|| shoal_scheduler::holds::Holds::of(&jobs).to_hex()))
        })
        .await;
        match built {
            Ok(Ok(hex)) => *self.receipts.lock().unwrap_or_else(|p| p.into_inner()) = hex,
            Ok(Err(e)) => tracing::warn!("cannot list the receipts to announce: {e}"),
            Err(e) => tracing::warn!("the receipt listing failed: {e}"),
        }
    }

    /// A job completed with a receipt: announce it with the next
    /// announcement.
    pub fn receipt_added(&self) {
        self.receipts_dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Rebuilds the filter of the roots this node holds whole (its
    /// recursive pins), announced so that placement prefers it for jobs
    /// over them. A node that does not compute announces none.
    async fn refresh_holds(self: &Arc<Self>) {
        if self.compute.is_none() {
            return;
        }
        let store = self.store.clone();
        let built = tokio::task::spawn_blocking(move || {
            let pins = store.pin_ls()?;
            let roots: Vec<shoal_storage::Cid> =
                pins.into_iter().filter(|(_, m)| *m == shoal_storage::PinMode::Recursive).map(|(c, _)| c).collect();
            let holds = shoal_scheduler::holds::Holds::of(&roots);
            Ok::<_, shoal_storage::Error>((holds.to_hex(), Arc::new(holds)))
        })
        .await;
        match built {
            Ok(Ok(built)) => *self.holds.lock().unwrap_or_else(|p| p.into_inner()) = Some(built),
            Ok(Err(e)) => tracing::warn!("cannot list the pins to announce what this node holds: {e}"),
            Err(e) => tracing::warn!("the pin listing failed: {e}"),
        }
    }

    /// Forgets the views of peers not heard from for [`VIEW_TTL`] past
    /// their ttl (placement already ignores them after it).
    fn forget_silent_views(&self) {
        let now = self.now();
        let keep = VIEW_TTL.as_millis() as u64;
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, v| now.saturating_sub(v.last_seen_ms) <= v.ttl_ms.unwrap_or(0) + keep);
    }

    /// Records what a peer announced, by gossip (`watching: None`) or
    /// directly (`Some(still watched)`); a new boot id means the peer
    /// restarted and lost its executions.
    fn on_announcement(self: &Arc<Self>, peer: PeerId, announcement: Announcement, watching: Option<bool>) {
        let now = self.now();
        let node_ttl = self.placement.node_ttl_ms;
        self.slot_delta.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer);
        let restarted = {
            let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            // The filter changes every few seconds at most, and comes every
            // second: decoded only when it is new.
            let decode = |hex: Option<&str>| {
                hex.and_then(|hex| match shoal_scheduler::holds::Holds::from_hex(hex) {
                    Ok(h) => Some(Arc::new(h)),
                    Err(e) => {
                        tracing::debug!("peer {peer}: {e}");
                        None
                    }
                })
            };
            let (holds, receipts) = match views.get(&peer) {
                Some(v) => (
                    if v.announcement.holds == announcement.holds {
                        v.holds.clone()
                    } else {
                        decode(announcement.holds.as_deref())
                    },
                    if v.announcement.receipts == announcement.receipts {
                        v.receipts.clone()
                    } else {
                        decode(announcement.receipts.as_deref())
                    },
                ),
                None => (decode(announcement.holds.as_deref()), decode(announcement.receipts.as_deref())),
            };
            if views.len() >= MAX_VIEWS && !views.contains_key(&peer) {
                // Full: the view heard from longest ago makes room.
                if let Some(oldest) = views.iter().min_by_key(|(_, v)| v.last_seen_ms).map(|(p, _)| *p) {
                    views.remove(&oldest);
                }
            }
            // Three periods missed and it is gone. A node that works for
            // us announces itself to us every second: its gossip, which
            // says minutes at scale, must not stretch that.
            // A period past the longest any node uses is a lie: capped.
            let every = announcement.every_ms.min(MAX_GOSSIP_EVERY.as_millis() as u64);
            let said = (every > 0).then(|| every.saturating_mul(3).max(node_ttl));
            let (ttl_ms, watched) = match (watching, views.get(&peer)) {
                (Some(w), _) => (said, w),
                (None, Some(v)) if v.watched && now.saturating_sub(v.last_seen_ms) <= v.ttl_ms.unwrap_or(node_ttl) => {
                    (v.ttl_ms, true)
                }
                (None, _) => (said, false),
            };
            let old = views.insert(
                peer,
                View {
                    id: peer.to_string(),
                    announcement: announcement.clone(),
                    last_seen_ms: now,
                    holds,
                    receipts,
                    connected: true,
                    ttl_ms,
                    watched,
                },
            );
            if announcement.compute
                && announcement.slots_free > 0
                && old.as_ref().is_some_and(|v| announcement.slots_free > v.announcement.slots_free)
                && self.backlog.load(std::sync::atomic::Ordering::Relaxed)
            {
                // Room freed by work that was not ours (ours is counted as
                // its reports arrive): waiting jobs may fit now.
                self.capacity_pass.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            match old {
                // Back after a disconnection: it may take work again.
                Some(v) if !v.connected => None,
                Some(v) => Some(v.announcement.boot != announcement.boot),
                None => None,
            }
        };
        match restarted {
            // A node we did not know: queued jobs may fit it now. A node
            // that restarted: the planner finds the executions its old
            // process held (their boot id is not its own any more), marks
            // them lost and places them again.
            None | Some(true) => self.plan_everything(),
            Some(false) => {
                if self.capacity_pass.load(std::sync::atomic::Ordering::Relaxed) {
                    self.kick.notify_one();
                }
            }
        }
    }
}

/// The addresses a node announces: where it listens, unless that is an
/// unspecified address (`0.0.0.0`), which no peer can dial.
fn announced_addrs(listen: &Multiaddr, peer: PeerId) -> Vec<String> {
    use libp2p::multiaddr::Protocol;
    let unspecified = listen.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    });
    if unspecified {
        return Vec::new();
    }
    vec![listen.clone().with(Protocol::P2p(peer)).to_string()]
}

impl Node {
    /// Announces this node directly to its watchers (`a` with its period
    /// set: `every` while watched, `gossip_every` in the last one), at
    /// most [`ANNOUNCE_CONCURRENCY`] at once.
    async fn announce_to_watchers(self: &Arc<Self>, a: Announcement, every: Duration, gossip_every: Duration) {
        let due = self.due_watchers();
        if due.is_empty() {
            return;
        }
        use futures::StreamExt as _;
        futures::stream::iter(due)
            .for_each_concurrent(ANNOUNCE_CONCURRENCY, |(peer, watching)| {
                let mut a = a.clone();
                a.every_ms = if watching { every } else { gossip_every }.as_millis() as u64;
                let n = self.clone();
                async move {
                    // One period at most: an unreachable watcher must not
                    // hold up the next round (or the gossip).
                    let sent = n.client.request(peer, Request::Announce { announcement: a, watching });
                    match tokio::time::timeout(every, sent).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::debug!(%peer, "direct announcement failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "direct announcement unanswered"),
                    }
                }
            })
            .await;
    }
}

/// Loads the node's ed25519 identity from `<home>/node.key`, creating it on
/// first start (mode 0600).
pub fn load_key(home: &Path) -> Result<Keypair, Error> {
    load_key_file(&home.join("node.key"), "node key")
}

/// Loads the client's ed25519 key from `<home>/client.key`, creating it on
/// first use (mode 0600): `shoal submit` signs submissions with it, and
/// its peer id is the submitter's identity (quotas, `--allow-submitter`,
/// receipts). Separate from the node key, so that a user who submits
/// never needs a node's identity, and a node's key never signs for a user.
pub fn load_client_key(home: &Path) -> Result<Keypair, Error> {
    load_key_file(&home.join("client.key"), "client key")
}

fn load_key_file(path: &Path, what: &str) -> Result<Keypair, Error> {
    let key = match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).with_context(|| {
            format!("{} is not a valid {what}; move it away to create a new identity", path.display())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            // A first use may come before anything else made the home.
            if let Some(dir) = path.parent() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("cannot create {} for the new {what}", dir.display()))
                    .map_err(|e| Error::Identity(message(&e)))?;
            }
            key.to_protobuf_encoding()
                .with_context(|| format!("cannot encode the new {what}"))
                .and_then(|bytes| write_private(path, &bytes))
                .map(|()| key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the {what} {}", path.display())),
    };
    key.map_err(|e| Error::Identity(message(&e)))
}

/// The error and its causes in one line, `outer: inner: …`, leaving out a
/// cause whose text the line already holds (library errors name their
/// cause in their own message and also return it as their source).
pub fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.to_lowercase().contains(&c.to_lowercase()) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The API bearer token from `<home>/api-token`, created on first use.
pub fn load_token(home: &Path) -> Result<String, Error> {
    let path = home.join("api-token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(anyhow::anyhow!("{} is empty; delete it to create a new token", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token: [u8; 32] = rand::random();
            let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&path, token.as_bytes()).map(|()| token)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    token.map_err(|e| Error::Identity(message(&e)))
}

/// A started node. [`Running::stop`] ends it; dropping it without
/// stopping leaves its tasks running until the runtime ends.
pub struct Running {
    pub node: Arc<Node>,
    /// Where it listens for peers, ending in `/p2p/<peer id>`.
    pub addr: Multiaddr,
    /// Where its HTTP API listens, if it runs one.
    pub api: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    api_task: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>)>,
    stop_net: tokio::sync::oneshot::Sender<()>,
    net_task: tokio::task::JoinHandle<()>,
}

/// How long [`Running::stop`] waits for executions and requests in
/// flight to let go of the node (its database stays locked until they do).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

impl Running {
    /// Waits until the API server ends (it only ends on failure while the
    /// node runs); pending forever when the node runs no API.
    pub async fn api_failed(&mut self) -> Error {
        match &mut self.api_task {
            Some((_, task)) => match task.await {
                Ok(Ok(())) => Error::Serve(std::io::Error::other("the api server stopped")),
                Ok(Err(e)) => Error::Serve(e),
                Err(e) => Error::Serve(std::io::Error::other(e.to_string())),
            },
            None => std::future::pending().await,
        }
    }

    /// Stops the node: the API drains, every loop and running execution
    /// is stopped, the network closes, and the node's database is closed
    /// once nothing holds the node any more (at most [`STOP_GRACE`]), so
    /// that a node on the same home can start at once.
    pub async fn stop(self) -> Result<(), Error> {
        let Running { node, tasks, api_task, stop_net, net_task, .. } = self;
        let served = match api_task {
            Some((stop, task)) => {
                let _ = stop.send(());
                match task.await {
                    Ok(r) => r.map_err(Error::Serve),
                    Err(e) => Err(Error::Serve(std::io::Error::other(e.to_string()))),
                }
            }
            None => Ok(()),
        };
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Some(c) = &node.compute {
            c.cancel_all();
        }
        let _ = stop_net.send(());
        let _ = net_task.await;
        // The file is let go now, whatever still holds the node: a node on
        // the same home can start at once.
        node.db.close();
        // Requests and executions in flight hold the node; they end soon
        // once cancelled and the network is gone.
        let weak = Arc::downgrade(&node);
        drop(node);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while weak.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if weak.strong_count() > 0 {
            tracing::warn!("the node was still in use {STOP_GRACE:?} after it was stopped");
        }
        served
    }
}

/// Starts a node: opens its database, joins the network, starts its
/// loops and its API, and returns at once.
pub async fn start(config: Config, deps: Deps) -> Result<Running, Error> {
    let Deps { home, store, key, clock, transport, api } = deps;
    let restricted = !config.allow_requesters.is_empty() || !config.allow_submitters.is_empty();
    if !config.compute && restricted {
        return Err(Error::Compute(
            "--allow-requester and --allow-submitter choose whom this node computes for, and it does not compute \
             (--no-compute): drop them, or let the node compute"
                .into(),
        ));
    }
    std::fs::create_dir_all(&home).map_err(|source| Error::Home { path: home.clone(), source })?;
    let db = Db::open(home.join("scheduler.sqlite"))?;
    let net_cfg = net::Config { ..config.network.clone() };
    let swarm = match transport {
        Transport::Tcp => net::tcp_swarm(key.clone(), &net_cfg)?,
        Transport::Memory => net::memory_swarm(key.clone(), &net_cfg)?,
        Transport::MemoryPlaintext => net::memory_swarm_with(key.clone(), &net_cfg, net::Security::Plaintext)?,
    };
    let (client, event_loop, mut events) = net::new(swarm, &net_cfg);
    let (stop_net, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let net_task = tokio::spawn(event_loop.run(async move {
        let _ = stop_rx.await;
    }));
    let listen = client.listen(config.listen.clone()).await?;
    let peer = client.local_peer_id();
    let (compute, recovery) = if config.compute {
        if config.allow_requesters.len() > MAX_ALLOWED_REQUESTERS {
            return Err(Error::Compute(format!(
                "{} requesters allowed: at most {MAX_ALLOWED_REQUESTERS}",
                config.allow_requesters.len()
            )));
        }
        let mut c =
            compute::Compute::new(&home, config.slots, config.misbehave(), config.gpu, config.allow_software_gpu)
                .map_err(|e| Error::Compute(message(&e)))?;
        if config.allow_submitters.len() > MAX_ALLOWED_SUBMITTERS {
            return Err(Error::Compute(format!(
                "{} submitters allowed: at most {MAX_ALLOWED_SUBMITTERS}",
                config.allow_submitters.len()
            )));
        }
        c.allow = config.allow_requesters.clone();
        c.submitters = config.allow_submitters.iter().map(PeerId::to_string).collect();
        // What an earlier process on this home had taken on (read once,
        // at start, before the node serves anything).
        let journal = db.journal()?;
        let recovery = c.recover(journal, &*store);
        (Some(Arc::new(c)), Some(recovery))
    } else {
        (None, None)
    };
    let api_addr = match &api {
        Some(l) => Some(l.local_addr().map_err(Error::Api)?),
        None => None,
    };
    let servable = Arc::new(serve::Servable::new(config.ipfs_serve));
    let metrics = api::Metrics::new();
    let node = Arc::new(Node {
        peer,
        key,
        client: client.clone(),
        bitswap: Arc::new(bitswap::Bitswap::new(
            client.clone(),
            store.clone(),
            servable.clone(),
            metrics.bitswap.clone(),
        )),
        servable,
        ipfs_fetch_timeout: config.ipfs_fetch_timeout,
        ipfs_dht_timeout: config.ipfs_dht_timeout,
        gateways: config.gateways.clone(),
        store,
        db,
        views: Mutex::new(HashMap::new()),
        compute,
        kick: Notify::new(),
        dirty: Mutex::new(HashSet::new()),
        full_pass: Default::default(),
        capacity_pass: Default::default(),
        backlog: Default::default(),
        slot_delta: Mutex::new(HashMap::new()),
        bids: Mutex::new(HashMap::new()),
        changed: watch::channel(0).0,
        metrics,
        labels: config.labels.clone(),
        boot: rand::random(),
        started_ms: clock(),
        clock,
        api_url: OnceLock::new(),
        inflight: Mutex::new(HashSet::new()),
        placement: config.placement.clone(),
        quotas: config.quotas,
        event_streams: Arc::new(tokio::sync::Semaphore::new(api::MAX_EVENT_STREAMS)),
        car_exports: Arc::new(tokio::sync::Semaphore::new(api::MAX_CAR_EXPORTS)),
        holds: Mutex::new(None),
        receipts: Mutex::new(None),
        // Built from the database at the first announcement.
        receipts_dirty: std::sync::atomic::AtomicBool::new(true),
        // A restarted requester looks once.
        pipelines_active: std::sync::atomic::AtomicBool::new(true),
        watchers: Mutex::new(HashMap::new()),
        addrs: announced_addrs(&listen, peer),
    });
    if let Some(a) = api_addr {
        let _ = node.api_url.set(format!("http://{a}"));
    }

    for p in &config.peers {
        if let Err(e) = client.dial(p.clone()).await {
            tracing::warn!("cannot reach peer {p}: {e}");
        }
    }
    for p in &config.ipfs_peers {
        if let Err(e) = client.dial(p.clone()).await {
            tracing::warn!("cannot reach ipfs peer {p}: {e}");
        }
    }

    let mut tasks = Vec::new();
    // Network events. Requests are handled concurrently up to a bound each
    // (a block answer holds up to 8 MiB): past it they are answered "busy"
    // at once, so a peer that floods cannot grow the node's memory or its
    // task count without bound.
    let n = node.clone();
    tasks.push(tokio::spawn(async move {
        let requests = Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
        let block_requests = Arc::new(tokio::sync::Semaphore::new(MAX_BLOCK_REQUESTS_IN_FLIGHT));
        while let Some(event) = events.recv().await {
            n.on_event(event, &requests, &block_requests).await;
        }
    }));
    // Execution results, pinned in the background.
    if let Some(c) = &node.compute {
        if let Some(results) = c.take_kept() {
            tasks.push(tokio::spawn(compute::keeper(node.clone(), c.clone(), results)));
        }
    }
    if let Some(recovery) = recovery {
        tokio::spawn(compute::recovered(node.clone(), recovery));
    }
    // Announcements: by gossip at once and then once per gossip period
    // (which grows with the network), directly to watchers every
    // `announce_every`; views of peers silent past their ttl are forgotten.
    let n = node.clone();
    let (every, holds_every, rate) = (config.announce_every, config.holds_refresh, config.gossip_rate);
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        // A round slowed by unanswered watchers is not made up in a burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut holds_due = tokio::time::Instant::now();
        // None: gossip at once.
        let mut gossiped: Option<tokio::time::Instant> = None;
        let mut jitter = 0.0;
        loop {
            tick.tick().await;
            if tokio::time::Instant::now() >= holds_due {
                holds_due = tokio::time::Instant::now() + holds_every;
                n.refresh_holds().await;
            }
            n.refresh_receipts().await;
            let (known, heard) = {
                let views = n.views.lock().unwrap_or_else(|p| p.into_inner());
                (views.len(), heard_period(views.values()))
            };
            let gossip_every = Node::gossip_every(every, rate, known, heard);
            let mut a = n.announcement();
            // Due one period after the last gossip, as the period is now
            // (it shrinks as well as grows while a new node learns the
            // network), up to a tenth early at random: nodes that started
            // together do not gossip together for ever.
            let due = gossiped.map(|t| t + gossip_every - gossip_every.mul_f64(jitter));
            if due.is_none_or(|d| tokio::time::Instant::now() >= d) {
                gossiped = Some(tokio::time::Instant::now());
                jitter = rand::random::<f64>() / 10.0;
                a.every_ms = gossip_every.as_millis() as u64;
                let _ = n.client.announce(a.clone()).await;
            }
            n.announce_to_watchers(a, every, gossip_every).await;
            n.forget_silent_views();
        }
    }));
    tasks.push(tokio::spawn(requester::run(node.clone())));
    tasks.push(tokio::spawn(pipelines::run(node.clone())));
    tasks.push(tokio::spawn(provide::run(node.clone(), config.ipfs_provide_every)));
    let api_task = match api {
        Some(listener) => {
            let policy = guard::Policy {
                token: config.api_token.clone(),
                hosts: config.api_hosts.iter().map(|h| h.trim_end_matches('.').to_ascii_lowercase()).collect(),
            };
            let app = api::router(node.clone(), policy);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
            });
            Some((stop, task))
        }
        None => None,
    };
    Ok(Running {
        addr: listen.with(libp2p::multiaddr::Protocol::P2p(peer)),
        node,
        api: api_addr,
        tasks,
        api_task,
        stop_net,
        net_task,
    })
}

impl Node {
    /// Handles one network event. Requests are answered concurrently, up
    /// to the bounds the semaphores hold; past them at once with "busy".
    async fn on_event(
        self: &Arc<Self>,
        event: Event,
        requests: &Arc<tokio::sync::Semaphore>,
        block_requests: &Arc<tokio::sync::Semaphore>,
    ) {
        match event {
            Event::Request { peer, request, channel } => {
                let Ok(permit) = requests.clone().try_acquire_owned() else {
                    let busy = Response::Error { message: format!("{BUSY}: too many requests in flight; retry") };
                    let _ = self.client.respond(channel, busy).await;
                    return;
                };
                let n = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let response = n.handle(peer, request).await;
                    let _ = n.client.respond(channel, response).await;
                });
            }
            Event::Blocks { request, channel, .. } => {
                let Ok(permit) = block_requests.clone().try_acquire_owned() else {
                    // Busy: nothing now (the asker tries its other
                    // providers, and this one again later).
                    let busy = proto::BlockResponse {
                        blocks: Vec::new(),
                        missing: request.want.iter().take(proto::MAX_WANT).cloned().collect(),
                    };
                    let _ = self.client.respond_blocks(channel, busy).await;
                    return;
                };
                let n = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let st = n.store.clone();
                    let response =
                        tokio::task::spawn_blocking(move || fetch::serve(&*st, &request)).await.unwrap_or_default();
                    let _ = n.client.respond_blocks(channel, response).await;
                });
            }
            Event::Bitswap { peer, message } => self.bitswap.accept(peer, message),
            Event::BitswapInvalid { peer, reason } => self.bitswap.on_invalid(peer, &reason),
            Event::Announcement { peer, announcement } => {
                tracing::trace!(%peer, free = announcement.slots_free, "announcement");
                self.on_announcement(peer, announcement, None)
            }
            Event::Disconnected { peer } => {
                tracing::debug!(%peer, "disconnected");
                self.bitswap.on_disconnected(&peer);
                // A node that works for us (it watches us) is offered
                // nothing until it announces itself again: placement marks
                // what it was running as lost at once and places it
                // elsewhere; what it committed to waits for the node ttl
                // (a restarted node reveals it from its journal). Any other
                // peer's connection closing (idle, or a gossip link) says
                // nothing about work: its next bid dials it again.
                let ours = match self.views.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&peer) {
                    Some(v) if v.watched => {
                        v.connected = false;
                        true
                    }
                    _ => false,
                };
                if ours {
                    self.plan_everything();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn announcements_from_ever_new_sources_keep_the_views_capped_oldest_first() {
        let home = tempfile::tempdir().unwrap();
        let now = Arc::new(std::sync::atomic::AtomicU64::new(1_000));
        let t = now.clone();
        let deps = Deps {
            home: home.path().to_owned(),
            store: Arc::new(shoal_storage::MemStore::new()),
            key: Keypair::generate_ed25519(),
            clock: Arc::new(move || t.load(std::sync::atomic::Ordering::SeqCst)),
            transport: Transport::Memory,
            api: None,
        };
        let config = Config { compute: false, listen: "/memory/0".parse().unwrap(), ..Config::default() };
        let running = start(config, deps).await.unwrap();
        let node = running.node.clone();
        let a = node.announcement();
        let peers: Vec<PeerId> = (0..MAX_VIEWS + 50).map(|_| PeerId::random()).collect();
        for p in &peers {
            now.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            node.on_announcement(*p, a.clone(), None);
        }
        {
            let views = node.views.lock().unwrap();
            assert_eq!(views.len(), MAX_VIEWS);
            assert!(peers[..50].iter().all(|p| !views.contains_key(p)), "the oldest made room");
            assert!(peers[50..].iter().all(|p| views.contains_key(p)));
        }
        // Silent past the ttl: all forgotten.
        now.fetch_add(VIEW_TTL.as_millis() as u64 + 1, std::sync::atomic::Ordering::SeqCst);
        node.forget_silent_views();
        assert!(node.views.lock().unwrap().is_empty());
        drop(node);
        running.stop().await.unwrap();
    }

    /// A node heard of only by gossip that a bid cannot reach is forgotten
    /// (its view may be minutes old at scale), and the job waits for
    /// another instead of bidding there again.
    #[tokio::test]
    async fn a_gossiped_node_a_bid_cannot_reach_is_forgotten() {
        use tower::ServiceExt as _;
        let home = tempfile::tempdir().unwrap();
        let store = Arc::new(shoal_storage::MemStore::new());
        let module = shoal_storage::importer::Importer::new(&*store, Default::default())
            .add_bytes(b"not run: the bid never arrives")
            .unwrap()
            .root;
        shoal_storage::pin::add(&*store, &module, shoal_storage::PinMode::Recursive).unwrap();
        let deps = Deps {
            home: home.path().to_owned(),
            store,
            key: Keypair::generate_ed25519(),
            clock: system_clock(),
            transport: Transport::Memory,
            api: None,
        };
        let config = Config { compute: false, listen: "/memory/0".parse().unwrap(), ..Config::default() };
        let running = start(config, deps).await.unwrap();
        let node = running.node.clone();
        // A compute node that gossiped once and is gone (no address of it
        // is known: no dial can succeed).
        let gone = PeerId::random();
        let mut a = node.announcement();
        a.capacity.compute = true;
        a.capacity.slots_total = 4;
        a.capacity.slots_free = 4;
        a.capacity.labels.insert("only".into(), "here".into());
        a.every_ms = 600_000;
        node.on_announcement(gone, a, None);
        let spec = serde_json::json!({ "task": { "module": module.to_string() }, "constraints": ["only=here"] });
        let app = api::router(node.clone(), Default::default());
        let req = axum::http::Request::post("/v1/jobs")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(spec.to_string()))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        assert_eq!(status, axum::http::StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while node.views.lock().unwrap().contains_key(&gone) {
            assert!(tokio::time::Instant::now() < deadline, "the unreachable node is still in the views");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(node);
        running.stop().await.unwrap();
    }

    /// The network's gossip budget is shared among the nodes a node knows:
    /// the period grows with the network, between its floor and cap.
    #[test]
    fn the_gossip_period_grows_with_the_network_within_its_bounds() {
        let every = Duration::from_secs(1);
        assert_eq!(Node::gossip_every(every, 4, 0, None), every);
        assert_eq!(Node::gossip_every(every, 4, 3, None), every);
        assert_eq!(Node::gossip_every(every, 4, 100, None), Duration::from_secs(25));
        assert_eq!(Node::gossip_every(every, 4, 10_000, None), Duration::from_secs(2_500));
        assert_eq!(Node::gossip_every(every, 4, 100_000, None), MAX_GOSSIP_EVERY);
        // A rate of zero is taken as one, not a division by zero.
        assert_eq!(Node::gossip_every(every, 0, 100, None), Duration::from_secs(100));
        // A new node that knows 8 others of a network that gossips every
        // 250 s takes their period, not 2 s; the longer of the two wins.
        let heard = Some(Duration::from_secs(250));
        assert_eq!(Node::gossip_every(every, 4, 8, heard), Duration::from_secs(250));
        assert_eq!(Node::gossip_every(every, 4, 10_000, heard), Duration::from_secs(2_500));
        assert_eq!(Node::gossip_every(every, 4, 8, Some(Duration::from_secs(1 << 30))), MAX_GOSSIP_EVERY);
    }

    /// The period a new node hears is the median of what at least five
    /// others gossiped: liars short of half cannot move it, nodes that
    /// announce themselves directly (every second) do not count, and with
    /// fewer than five there is none.
    #[test]
    fn the_heard_period_is_a_median_that_a_minority_of_liars_cannot_move() {
        let view = |every_ms: u64, watched: bool| View {
            id: String::new(),
            announcement: Announcement { every_ms, ..Default::default() },
            last_seen_ms: 0,
            holds: None,
            receipts: None,
            connected: true,
            ttl_ms: None,
            watched,
        };
        let honest: Vec<View> = (0..6).map(|i| view(240_000 + i * 1000, false)).collect();
        let liars: Vec<View> = (0..5).map(|_| view(u64::MAX, false)).collect();
        let watchers: Vec<View> = (0..20).map(|_| view(1000, true)).collect();
        let all = honest.iter().chain(&liars).chain(&watchers);
        let p = heard_period(all).unwrap();
        assert!((240..=245).contains(&p.as_secs()), "{p:?}");
        assert_eq!(heard_period(honest[..4].iter().chain(&watchers)), None);
        // Unannounced periods (nodes that predate them) do not count.
        let old: Vec<View> = (0..10).map(|_| view(0, false)).collect();
        assert_eq!(heard_period(old.iter()), None);
        // Liars alone get at most the cap.
        assert_eq!(heard_period(liars.iter()), Some(MAX_GOSSIP_EVERY));
    }

    /// A view lives three of the periods its node announced (never less
    /// than the node ttl, a lie capped); a watched node's gossip does not
    /// stretch the short ttl its direct announcements keep; the last
    /// direct announcement of a watch hands it back to gossip's.
    #[tokio::test]
    async fn a_views_ttl_follows_how_its_node_announces_itself() {
        let home = tempfile::tempdir().unwrap();
        let deps = Deps {
            home: home.path().to_owned(),
            store: Arc::new(shoal_storage::MemStore::new()),
            key: Keypair::generate_ed25519(),
            clock: Arc::new(|| 1_000_000),
            transport: Transport::Memory,
            api: None,
        };
        let config = Config { compute: false, listen: "/memory/0".parse().unwrap(), ..Config::default() };
        let running = start(config, deps).await.unwrap();
        let node = running.node.clone();
        let ttl = node.placement.node_ttl_ms;
        let peer = PeerId::random();
        let view = |node: &Node| {
            let v = node.views.lock().unwrap();
            let v = v.get(&peer).unwrap();
            (v.ttl_ms, v.watched)
        };
        let mut a = node.announcement();
        a.every_ms = 100_000;
        node.on_announcement(peer, a.clone(), None);
        assert_eq!(view(&node), (Some(300_000), false));
        a.every_ms = 1_000;
        node.on_announcement(peer, a.clone(), Some(true));
        assert_eq!(view(&node), (Some(ttl), true), "direct: the node ttl");
        a.every_ms = 100_000;
        node.on_announcement(peer, a.clone(), None);
        assert_eq!(view(&node), (Some(ttl), true), "gossip does not stretch a watched view");
        node.on_announcement(peer, a.clone(), Some(false));
        assert_eq!(view(&node), (Some(300_000), false), "the watch ended");
        a.every_ms = u64::MAX;
        node.on_announcement(peer, a.clone(), None);
        assert_eq!(view(&node), (Some(3 * MAX_GOSSIP_EVERY.as_millis() as u64), false), "a lie is capped");
        a.every_ms = 0;
        node.on_announcement(peer, a, None);
        assert_eq!(view(&node), (None, false), "a node that predates it: the node ttl");
        drop(node);
        running.stop().await.unwrap();
    }
}
