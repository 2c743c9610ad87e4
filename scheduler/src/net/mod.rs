//! The node-to-node protocol over libp2p: one [`Behaviour`] (identify, ping,
//! Kademlia, gossipsub, and two request-response protocols from
//! [`proto`]), driven by an [`EventLoop`] that owns the swarm. Async callers
//! talk to it through a cloneable [`Client`] whose methods send a command
//! over a bounded channel and await a oneshot reply (the shape of
//! rust-libp2p's file-sharing example); what the network asks of the node
//! arrives as [`Event`]s on another bounded channel, with the reply handle
//! inside, so the node's logic never touches the swarm.
//!
//! Discovery is explicit: nodes dial the `--peer` addresses they are given,
//! learn each other's listen addresses through identify and keep them in
//! Kademlia, which then supplies addresses whenever a request must dial a
//! peer by id. mDNS only runs when [`Config::mdns`] is set.
//!
//! Beside Shoal's own Kademlia, the node takes part in the IPFS DHT (see
//! [`IPFS_KAD_PROTOCOL`]): it stores and answers provider records, publishes
//! its own ([`Client::provide`]) and looks up providers of a CID
//! ([`Client::find_providers`]), dialing those it finds.
//!
//! ## Layout
//! - `mod.rs`: the composed behaviour, the commands, the client and the
//!   event loop's dispatch.
//! - `proto.rs`: Shoal's own messages and limits.
//! - `rr.rs`: the request-response protocols (execution, blocks) through
//!   one generic path.
//! - `dht.rs`: the IPFS DHT (provides, provider lookups).
//! - `bitswap/`: IPFS's Bitswap.
//! - `wire.rs`: byte counters on the memory transport (scale runs).

pub mod bitswap;
mod dht;
pub mod proto;
mod rr;
pub mod signed;
pub mod wire;

use dht::{ipfs_kad, Dht, Finding, Op, Providing};
pub use dht::{
    IPFS_KAD_PROTOCOL, IPFS_LAN_KAD_PROTOCOL, IPFS_MAX_PROVIDER_KEYS, IPFS_MAX_RECORDS, IPFS_PROVIDER_RECORD_TTL,
    IPFS_QUERY_TIMEOUT, IPFS_REPROVIDE_INTERVAL, MAX_FIND_PROVIDERS,
};
use rr::{Blocks, Exec, Pending, RequestResponse};

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::identity::Keypair;
use libp2p::kad::store::MemoryStore;
use libp2p::kad::{self, QueryId};
use libp2p::request_response::{self, cbor, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::sync::{mpsc, oneshot};

use proto::{Announcement, BlockRequest, BlockResponse, Request, Response};

/// Settings of the network layer; each has a documented default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Run mDNS discovery on the local network (default off: nodes find
    /// each other only through explicit peers).
    pub mdns: bool,
    /// How long one request may take before it fails (default 30 s; a
    /// block response of 8 MiB on a slow link must fit).
    pub request_timeout: Duration,
    /// Capacity of the command and event channels (default 1024). When the
    /// node's logic falls this far behind, inbound requests are answered
    /// "busy" and announcements dropped rather than queued without bound.
    pub channel_capacity: usize,
    /// Close connections idle for this long (default 60 s).
    pub idle_timeout: Duration,
    /// Concurrent streams per connection per protocol (default 256).
    pub max_streams: usize,
    /// Counts the bytes of every connection of a [`memory_swarm`] (default
    /// none: the in-process scale runs set it).
    pub wire: Option<std::sync::Arc<wire::Wire>>,
    /// The connection manager (Kubo's, in shape): past `high` connected
    /// peers, the node closes the connections of peers it has exchanged
    /// nothing with for `grace` (oldest first) until `low` are left.
    /// Peers it was told to dial and gossip mesh peers are kept. Every
    /// open stream keeps a libp2p connection alive, and gossipsub keeps
    /// one open to every peer: without this, each peer a DHT query ever
    /// reached stayed connected, and a node of a 100-node network held
    /// 100 connections (~170 KiB each). Defaults: 16, 48, 20 s.
    pub connections: Connections,
    /// Take part in the IPFS DHTs (default true: every node is an IPFS
    /// peer). The in-process scale runs may leave them out (see
    /// `shoal-sim net --ipfs-dht`).
    pub ipfs_dht: bool,
}

/// See [`Config::connections`].
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    pub low: usize,
    pub high: usize,
    pub grace: Duration,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections { low: 16, high: 48, grace: Duration::from_secs(20) }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mdns: false,
            request_timeout: Duration::from_secs(30),
            channel_capacity: 1024,
            idle_timeout: Duration::from_secs(60),
            max_streams: 256,
            wire: None,
            connections: Connections::default(),
            ipfs_dht: true,
        }
    }
}

/// What can go wrong talking to the network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event loop has stopped (the node is shutting down).
    #[error("the network event loop has stopped; is the node shutting down?")]
    Stopped,
    /// A request to a peer failed (timed out, protocol error).
    #[error("request to peer {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    /// A request to a peer failed because no connection to it could be
    /// made (no address known, or none answered).
    #[error("cannot reach peer {peer}: {reason}")]
    Unreachable { peer: PeerId, reason: String },
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    /// Dialing an address failed.
    #[error("cannot dial {addr}: {reason}")]
    Dial { addr: Multiaddr, reason: String },
    /// The IPFS DHT refused or failed an operation.
    #[error("ipfs dht: {0}")]
    Dht(String),
    /// Building the transport or a behaviour failed.
    #[error("cannot set up the network: {0}")]
    Setup(String),
}

/// Everything a node speaks, composed.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    /// The public IPFS DHT ([`IPFS_KAD_PROTOCOL`]).
    ipfs_kad: Toggle<kad::Behaviour<MemoryStore>>,
    /// The IPFS DHT of local networks ([`IPFS_LAN_KAD_PROTOCOL`]).
    ipfs_lan_kad: Toggle<kad::Behaviour<MemoryStore>>,
    gossipsub: gossipsub::Behaviour,
    /// Signs this node's announcements ([`signed`]).
    announcer: signed::Announcer,
    exec: cbor::Behaviour<Request, Response>,
    blocks: cbor::Behaviour<BlockRequest, BlockResponse>,
    bitswap: bitswap::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    /// Peers banned for a while ([`Client::ban`]): their connections are
    /// closed and refused.
    banned: libp2p::allow_block_list::Behaviour<libp2p::allow_block_list::BlockedPeers>,
}

impl Behaviour {
    /// Builds the behaviour for `key` with `cfg`.
    pub fn new(key: &Keypair, cfg: &Config) -> Result<Behaviour, Error> {
        let peer = key.public().to_peer_id();
        let identify = identify::Behaviour::new(identify::Config::new("/shoal/1".into(), key.public()));
        let mut kad_cfg = kad::Config::new(StreamProtocol::new(proto::KAD_PROTOCOL));
        kad_cfg.set_query_timeout(Duration::from_secs(10));
        let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), kad_cfg);
        // Server mode from the start: on loopback or a LAN no external
        // address is ever confirmed, and in the automatic mode peers would
        // then never enter each other's routing tables.
        kad.set_mode(Some(kad::Mode::Server));
        let gossip_cfg = gossipsub::ConfigBuilder::default()
            // Room for the signer's key and signature (an RSA key's are
            // the longest, about 300 bytes each).
            .max_transmit_size(proto::MAX_ANNOUNCEMENT + 1024)
            // Signed inside the message and checked once per message, not
            // once per copy (see `signed`): messages are named by their
            // bytes and held back until the event loop has checked them.
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .message_id_fn(|m: &gossipsub::Message| signed::message_id(&m.data))
            .validate_messages()
            .heartbeat_interval(Duration::from_millis(500))
            // A smaller mesh than the default 6: each copy a node receives
            // costs it a decode (and cost a signature check, before
            // announcements were signed inside), and four still leaves
            // three other paths per hop.
            .mesh_n(4)
            .mesh_n_low(3)
            .mesh_n_high(6)
            .mesh_outbound_min(2)
            .gossip_lazy(4)
            .build()
            .map_err(|e| Error::Setup(format!("gossipsub config: {e}")))?;
        let mut gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gossip_cfg)
            .map_err(|e| Error::Setup(format!("gossipsub: {e}")))?;
        gossipsub
            .subscribe(&IdentTopic::new(proto::ANNOUNCE_TOPIC))
            .map_err(|e| Error::Setup(format!("gossipsub subscribe: {e}")))?;
        let rr_cfg = request_response::Config::default()
            .with_request_timeout(cfg.request_timeout)
            .with_max_concurrent_streams(cfg.max_streams);
        let exec = cbor::Behaviour::with_codec(
            cbor::codec::Codec::default()
                .set_request_size_maximum(proto::MAX_EXEC_MESSAGE)
                .set_response_size_maximum(proto::MAX_EXEC_MESSAGE),
            [(StreamProtocol::new(proto::EXEC_PROTOCOL), ProtocolSupport::Full)],
            rr_cfg.clone(),
        );
        let blocks = cbor::Behaviour::with_codec(
            cbor::codec::Codec::default()
                .set_request_size_maximum(proto::MAX_BLOCK_REQUEST)
                .set_response_size_maximum(proto::MAX_BLOCK_RESPONSE),
            [(StreamProtocol::new(proto::BLOCKS_PROTOCOL), ProtocolSupport::Full)],
            rr_cfg,
        );
        let mdns = if cfg.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer)
                    .map_err(|e| Error::Setup(format!("mdns: {e}")))?,
            )
        } else {
            None
        };
        Ok(Behaviour {
            identify,
            ping: ping::Behaviour::default(),
            kad,
            ipfs_kad: cfg.ipfs_dht.then(|| ipfs_kad(peer, IPFS_KAD_PROTOCOL)).into(),
            ipfs_lan_kad: cfg.ipfs_dht.then(|| ipfs_kad(peer, IPFS_LAN_KAD_PROTOCOL)).into(),
            gossipsub,
            announcer: signed::Announcer::new(key.clone()),
            exec,
            blocks,
            bitswap: bitswap::Behaviour::new(),
            mdns: mdns.into(),
            banned: Default::default(),
        })
    }
}

/// Builds a TCP + Noise + Yamux swarm for `key`.
pub fn tcp_swarm(key: Keypair, cfg: &Config) -> Result<Swarm<Behaviour>, Error> {
    let behaviour = Behaviour::new(&key, cfg)?;
    let idle = cfg.idle_timeout;
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| Error::Setup(format!("tcp transport: {e}")))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| Error::Setup(format!("behaviour: {e}")))?
        // Every request opens a substream; lazy negotiation sends the
        // protocol name together with the request instead of waiting a
        // round trip for the listener to confirm it (the dialer proposes a
        // single protocol, so it knows which one it is).
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(idle)
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build())
}

/// Something the network asks of the node. Requests carry the channel to
/// answer on through [`Client::respond`] / [`Client::respond_blocks`].
#[derive(Debug)]
pub enum Event {
    /// An execution-protocol request from `peer`.
    Request { peer: PeerId, request: Request, channel: ResponseChannel<Response> },
    /// A block request from `peer`.
    Blocks { peer: PeerId, request: BlockRequest, channel: ResponseChannel<BlockResponse> },
    /// A node's announcement (signed by `peer`).
    Announcement { peer: PeerId, announcement: Announcement },
    /// A Bitswap message from `peer`.
    Bitswap { peer: PeerId, message: bitswap::Message },
    /// `peer` sent a malformed Bitswap frame.
    BitswapInvalid { peer: PeerId, reason: String },
    /// The last connection to `peer` closed.
    Disconnected { peer: PeerId },
}

enum Command {
    Listen { addr: Multiaddr, reply: oneshot::Sender<Result<Multiaddr, Error>> },
    Dial { addr: Multiaddr, reply: oneshot::Sender<Result<(), Error>> },
    Request { peer: PeerId, request: Request, reply: oneshot::Sender<Result<Response, Error>> },
    Blocks { peer: PeerId, request: BlockRequest, reply: oneshot::Sender<Result<BlockResponse, Error>> },
    Respond { channel: ResponseChannel<Response>, response: Response },
    RespondBlocks { channel: ResponseChannel<BlockResponse>, response: BlockResponse },
    Publish { announcement: Announcement },
    Peers { reply: oneshot::Sender<Vec<PeerId>> },
    BitswapSend { peer: PeerId, message: bitswap::Message, reply: oneshot::Sender<Result<(), Error>> },
    BitswapPeers { reply: oneshot::Sender<Vec<PeerId>> },
    Provide { key: Vec<u8>, reply: oneshot::Sender<Result<u32, Error>> },
    StopProviding { key: Vec<u8> },
    FindProviders { key: Vec<u8>, limit: usize, deadline: Duration, reply: oneshot::Sender<Result<Vec<PeerId>, Error>> },
    Ban { peer: PeerId, duration: Duration },
    DhtStats { reply: oneshot::Sender<DhtStats> },
}

/// What this node's IPFS DHTs did for others, since it started (both
/// DHTs together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DhtStats {
    /// Provider records other peers stored here (ADD_PROVIDER).
    pub provider_records_received: u64,
    /// Provider lookups (GET_PROVIDERS) answered.
    pub provider_lookups_answered: u64,
    /// Provider records handed out in those answers: a peer that found a
    /// provider through this node's store, not its routing table.
    pub provider_records_served: u64,
}

/// Peers banned at once at most; a ban past it lifts the one that ends
/// soonest.
pub const MAX_BANNED: usize = 4096;

/// The handle async code uses to talk to the swarm. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    local: PeerId,
}

impl Client {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Listens on `addr` (port 0 picks one) and returns the address bound.
    pub async fn listen(&self, addr: Multiaddr) -> Result<Multiaddr, Error> {
        self.call(|reply| Command::Listen { addr, reply }).await?
    }

    /// Dials `addr` (which should end in `/p2p/<peer id>`) and waits for the
    /// connection.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), Error> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Sends an execution-protocol request and waits for the response.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, Error> {
        self.call(|reply| Command::Request { peer, request, reply }).await?
    }

    /// Asks `peer` for blocks.
    pub async fn blocks(&self, peer: PeerId, request: BlockRequest) -> Result<BlockResponse, Error> {
        self.call(|reply| Command::Blocks { peer, request, reply }).await?
    }

    /// Answers an inbound execution request.
    pub async fn respond(&self, channel: ResponseChannel<Response>, response: Response) -> Result<(), Error> {
        self.commands.send(Command::Respond { channel, response }).await.map_err(|_| Error::Stopped)
    }

    /// Answers an inbound block request.
    pub async fn respond_blocks(
        &self,
        channel: ResponseChannel<BlockResponse>,
        response: BlockResponse,
    ) -> Result<(), Error> {
        self.commands.send(Command::RespondBlocks { channel, response }).await.map_err(|_| Error::Stopped)
    }

    /// Publishes this node's announcement.
    pub async fn announce(&self, announcement: Announcement) -> Result<(), Error> {
        self.commands.send(Command::Publish { announcement }).await.map_err(|_| Error::Stopped)
    }

    /// The peers currently connected.
    pub async fn peers(&self) -> Result<Vec<PeerId>, Error> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// Sends a Bitswap message to `peer`; returns once it is written.
    pub async fn bitswap_send(&self, peer: PeerId, message: bitswap::Message) -> Result<(), Error> {
        self.call(|reply| Command::BitswapSend { peer, message, reply }).await?
    }

    /// The connected peers that may speak Bitswap: all but those whose
    /// identify says they do not (one not identified yet is worth asking;
    /// if it does not, the send fails at once).
    pub async fn bitswap_peers(&self) -> Result<Vec<PeerId>, Error> {
        self.call(|reply| Command::BitswapPeers { reply }).await
    }

    /// Publishes a provider record for `key` (a CID's multihash bytes, as
    /// IPFS keys them) on both IPFS DHTs, and keeps it (kad re-publishes it
    /// every [`IPFS_REPROVIDE_INTERVAL`]). Returns, once both queries end,
    /// how many peers took the record; an error when no DHT could start
    /// (the store is full) or every query failed.
    pub async fn provide(&self, key: Vec<u8>) -> Result<u32, Error> {
        self.call(|reply| Command::Provide { key, reply }).await?
    }

    /// Stops re-publishing this node's provider record for `key` (the
    /// records already on other peers expire on their own).
    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), Error> {
        self.commands.send(Command::StopProviding { key }).await.map_err(|_| Error::Stopped)
    }

    /// Closes every connection to `peer` and refuses it for `duration`
    /// (it sent junk: see [`bitswap::score`]).
    pub async fn ban(&self, peer: PeerId, duration: Duration) -> Result<(), Error> {
        self.commands.send(Command::Ban { peer, duration }).await.map_err(|_| Error::Stopped)
    }

    /// What the IPFS DHTs did for others so far.
    pub async fn dht_stats(&self) -> Result<DhtStats, Error> {
        self.call(|reply| Command::DhtStats { reply }).await
    }

    /// Looks up providers of `key` (a multihash) on both IPFS DHTs and
    /// dials them as they are found (their addresses are known only while
    /// the lookup runs). Returns the providers connected, at most `limit`
    /// of them, as soon as one is; or an empty list when the lookups end or
    /// `deadline` passes without one.
    pub async fn find_providers(&self, key: Vec<u8>, limit: usize, deadline: Duration) -> Result<Vec<PeerId>, Error> {
        self.call(|reply| Command::FindProviders { key, limit, deadline, reply }).await?
    }
}

/// Owns the swarm; run it on its own task with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    topic: IdentTopic,
    pending_listen: HashMap<ListenerId, (Multiaddr, oneshot::Sender<Result<Multiaddr, Error>>)>,
    pending_dial: HashMap<PeerId, Vec<oneshot::Sender<Result<(), Error>>>>,
    pending_exec: Pending<Response>,
    pending_blocks: Pending<BlockResponse>,
    pending_bitswap: HashMap<bitswap::SendId, oneshot::Sender<Result<(), Error>>>,
    connected: HashSet<PeerId>,
    /// Connected peers whose identify does not list Bitswap: the others
    /// (not identified yet included) are worth asking.
    no_bitswap: HashSet<PeerId>,
    /// Queries of the IPFS DHTs and what they belong to.
    dht_queries: HashMap<(Dht, QueryId), Op>,
    provides: HashMap<u64, Providing>,
    finds: HashMap<u64, Finding>,
    next_op: u64,
    /// Every listener opened, closed when the loop ends: the memory
    /// transport frees a port only when its listener is removed, not when
    /// it is dropped, so a node restarted in the same process could not
    /// listen on its address again.
    listeners: Vec<ListenerId>,
    /// Where peers said (in their announcements) they can be dialed:
    /// a requester that learned of a node through gossip has no other
    /// address for it. At most [`MAX_ADDRESS_BOOK`] peers, the oldest
    /// entry making room.
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    address_order: std::collections::VecDeque<PeerId>,
    /// When each connected peer last exchanged a request, an answer or a
    /// Bitswap message with this node (or connected), for the connection
    /// manager.
    activity: HashMap<PeerId, tokio::time::Instant>,
    /// Peers this node was told to dial: never trimmed.
    protected: HashSet<PeerId>,
    connections: Connections,
    /// Banned peers and when their ban ends (at most [`MAX_BANNED`]).
    bans: HashMap<PeerId, tokio::time::Instant>,
    dht_stats: DhtStats,
}

/// Peers whose announced addresses a node keeps.
pub const MAX_ADDRESS_BOOK: usize = 10_000;
/// How often the connection manager looks (when past its high mark).
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Wraps `swarm` into a client, its event loop and the stream of events.
pub fn new(swarm: Swarm<Behaviour>, cfg: &Config) -> (Client, EventLoop, mpsc::Receiver<Event>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(cfg.channel_capacity);
    let (ev_tx, ev_rx) = mpsc::channel(cfg.channel_capacity);
    let local = *swarm.local_peer_id();
    let client = Client { commands: cmd_tx, local };
    let event_loop = EventLoop {
        swarm,
        commands: cmd_rx,
        events: ev_tx,
        topic: IdentTopic::new(proto::ANNOUNCE_TOPIC),
        pending_listen: HashMap::new(),
        pending_dial: HashMap::new(),
        pending_exec: HashMap::new(),
        pending_blocks: HashMap::new(),
        pending_bitswap: HashMap::new(),
        connected: HashSet::new(),
        no_bitswap: HashSet::new(),
        dht_queries: HashMap::new(),
        provides: HashMap::new(),
        finds: HashMap::new(),
        next_op: 0,
        listeners: Vec::new(),
        addresses: HashMap::new(),
        address_order: Default::default(),
        activity: HashMap::new(),
        protected: HashSet::new(),
        connections: cfg.connections,
        bans: HashMap::new(),
        dht_stats: DhtStats::default(),
    };
    (client, event_loop, ev_rx)
}

impl EventLoop {
    /// Drives the swarm until every [`Client`] is dropped or `shutdown`
    /// resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Provider lookups past their deadline are answered on this tick.
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trim = tokio::time::interval(TRIM_EVERY);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut bans = tokio::time::interval(Duration::from_secs(1));
        bans.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm(event),
                _ = trim.tick(), if self.connected.len() > self.connections.high => self.trim(),
                _ = bans.tick(), if !self.bans.is_empty() => self.lift_bans(),
                _ = sweep.tick(), if !self.finds.is_empty() => {
                    let ids: Vec<u64> = self.finds.keys().copied().collect();
                    for id in ids {
                        self.settle_find(id);
                    }
                }
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                () = &mut shutdown => break,
            }
        }
        for id in std::mem::take(&mut self.listeners) {
            self.swarm.remove_listener(id);
        }
    }

    /// Keeps the addresses `peer` announced (those that parse, end in its
    /// own id if they name one, and at most [`proto::MAX_ANNOUNCED_ADDRS`]).
    fn remember_addresses(&mut self, peer: PeerId, addrs: &[String]) {
        let parsed: Vec<Multiaddr> = addrs
            .iter()
            .take(proto::MAX_ANNOUNCED_ADDRS)
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .filter(|a| {
                a.iter().all(|p| match p {
                    libp2p::multiaddr::Protocol::P2p(id) => id == peer,
                    _ => true,
                })
            })
            .collect();
        if parsed.is_empty() || self.addresses.get(&peer) == Some(&parsed) {
            return;
        }
        if self.addresses.insert(peer, parsed).is_none() {
            self.address_order.push_back(peer);
            while self.addresses.len() > MAX_ADDRESS_BOOK {
                match self.address_order.pop_front() {
                    Some(old) => {
                        self.addresses.remove(&old);
                    }
                    None => break,
                }
            }
        }
    }

    /// Closes the connections of the peers idle longest, past the grace
    /// period, until `low` are left (see [`Config::connections`]).
    fn trim(&mut self) {
        let now = tokio::time::Instant::now();
        let Connections { low, grace, .. } = self.connections;
        let mesh: HashSet<PeerId> = self.swarm.behaviour().gossipsub.all_mesh_peers().copied().collect();
        let mut idle: Vec<(tokio::time::Instant, PeerId)> = self
            .connected
            .iter()
            .filter(|p| !self.protected.contains(p) && !mesh.contains(p))
            .map(|p| (self.activity.get(p).copied().unwrap_or(now), *p))
            .filter(|(t, _)| now.saturating_duration_since(*t) >= grace)
            .collect();
        idle.sort();
        let excess = self.connected.len().saturating_sub(low);
        for (_, peer) in idle.into_iter().take(excess) {
            tracing::trace!(%peer, "connection trimmed");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Bans `peer` until `duration` from now (see [`Client::ban`]).
    fn ban(&mut self, peer: PeerId, duration: Duration) {
        if !self.bans.contains_key(&peer) && self.bans.len() >= MAX_BANNED {
            if let Some(soonest) = self.bans.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p) {
                self.bans.remove(&soonest);
                self.swarm.behaviour_mut().banned.unblock_peer(soonest);
            }
        }
        tracing::info!(%peer, "peer banned for {duration:?}");
        self.bans.insert(peer, tokio::time::Instant::now() + duration);
        self.protected.remove(&peer);
        self.swarm.behaviour_mut().banned.block_peer(peer);
    }

    /// Lifts the bans that are over.
    fn lift_bans(&mut self) {
        let now = tokio::time::Instant::now();
        let over: Vec<PeerId> = self.bans.iter().filter(|(_, t)| **t <= now).map(|(p, _)| *p).collect();
        for peer in over {
            self.bans.remove(&peer);
            self.swarm.behaviour_mut().banned.unblock_peer(peer);
        }
    }

    /// Something was exchanged with `peer`: its connection is in use.
    pub(super) fn active(&mut self, peer: PeerId) {
        if let Some(t) = self.activity.get_mut(&peer) {
            *t = tokio::time::Instant::now();
        }
    }

    fn on_command(&mut self, command: Command) {
        if let Command::Request { peer, .. } | Command::Blocks { peer, .. } | Command::BitswapSend { peer, .. } =
            &command
        {
            self.active(*peer);
        }
        let b = self.swarm.behaviour_mut();
        match command {
            Command::Listen { addr, reply } => match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    self.listeners.push(id);
                    self.pending_listen.insert(id, (addr, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(Error::Listen { addr, reason: e.to_string() }));
                }
            },
            Command::Dial { addr, reply } => {
                let peer = addr.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                    _ => None,
                });
                let Some(peer) = peer else {
                    let _ = reply.send(Err(Error::Dial { addr, reason: "the address has no /p2p/<peer id>".into() }));
                    return;
                };
                self.protected.insert(peer);
                if self.connected.contains(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let b = self.swarm.behaviour_mut();
                b.kad.add_address(&peer, addr.clone());
                match self.swarm.dial(addr.clone()) {
                    Ok(()) => self.pending_dial.entry(peer).or_default().push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(Error::Dial { addr, reason: e.to_string() }));
                    }
                }
            }
            Command::Request { peer, request, reply } => self.send_request::<Exec>(peer, request, reply),
            Command::Blocks { peer, request, reply } => self.send_request::<Blocks>(peer, request, reply),
            // The requester may have gone away; nothing to do then.
            Command::Respond { channel, response } => {
                let _ = Exec::rr(b).send_response(channel, response);
            }
            Command::RespondBlocks { channel, response } => {
                let _ = Blocks::rr(b).send_response(channel, response);
            }
            Command::Publish { announcement } => {
                let sealed = serde_json::to_vec(&announcement)
                    .map_err(|e| e.to_string())
                    .and_then(|json| b.announcer.seal(&json).map_err(|e| e.to_string()));
                match sealed {
                    // Fails harmlessly with InsufficientPeers while alone.
                    Ok(bytes) => {
                        if let Err(e) = b.gossipsub.publish(self.topic.clone(), bytes) {
                            tracing::debug!("announcement not published: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("announcement not published: {e}"),
                }
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.connected.iter().copied().collect());
            }
            Command::BitswapSend { peer, message, reply } => match b.bitswap.send(peer, message) {
                Some(id) => {
                    self.pending_bitswap.insert(id, reply);
                }
                None => {
                    let _ = reply.send(Err(Error::Request { peer, reason: "not connected".into() }));
                }
            },
            Command::BitswapPeers { reply } => {
                let _ = reply.send(self.connected.difference(&self.no_bitswap).copied().collect());
            }
            Command::Provide { key, reply } => self.start_provide(key, reply),
            Command::Ban { peer, duration } => self.ban(peer, duration),
            Command::DhtStats { reply } => {
                let _ = reply.send(self.dht_stats);
            }
            Command::StopProviding { key } => {
                let key = kad::RecordKey::new(&key);
                for k in [b.ipfs_kad.as_mut(), b.ipfs_lan_kad.as_mut()].into_iter().flatten() {
                    k.stop_providing(&key);
                }
            }
            Command::FindProviders { key, limit, deadline, reply } => self.start_find(key, limit, deadline, reply),
        }
    }

    fn emit(&mut self, event: Event) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                // The node is overloaded: refuse instead of queueing.
                tracing::warn!("node busy: dropping a network event");
                let b = self.swarm.behaviour_mut();
                match event {
                    Event::Request { channel, .. } => {
                        let _ = Exec::rr(b).send_response(channel, Exec::busy());
                    }
                    Event::Blocks { channel, .. } => {
                        let _ = Blocks::rr(b).send_response(channel, Blocks::busy());
                    }
                    _ => {}
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                if let Some((_, reply)) = self.pending_listen.remove(&listener_id) {
                    let _ = reply.send(Ok(address));
                }
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                if let Some((addr, reply)) = self.pending_listen.remove(&listener_id) {
                    let reason = match reason {
                        Ok(()) => "closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    let _ = reply.send(Err(Error::Listen { addr, reason }));
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                self.connected.insert(peer_id);
                self.activity.insert(peer_id, tokio::time::Instant::now());
                for reply in self.pending_dial.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
                if !self.finds.is_empty() {
                    self.on_provider_dialed(peer_id, true);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                for reply in self.pending_dial.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(Error::Dial { addr: Multiaddr::empty(), reason: error.to_string() }));
                }
                if !self.finds.is_empty() && !self.connected.contains(&peer) {
                    self.on_provider_dialed(peer, false);
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.connected.remove(&peer_id);
                self.activity.remove(&peer_id);
                self.no_bitswap.remove(&peer_id);
                self.emit(Event::Disconnected { peer: peer_id });
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour(event),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                tracing::debug!(%peer_id, agent = %info.agent_version, protocols = ?info.protocols, "identified");
                if info.protocols.iter().any(|p| bitswap::PROTOCOLS.contains(&p.as_ref())) {
                    self.no_bitswap.remove(&peer_id);
                } else {
                    self.no_bitswap.insert(peer_id);
                }
                // Only Shoal peers go into Shoal's routing table: an IPFS
                // peer (Kubo) there would be handed to every Shoal node
                // that asks, and dialled by all of them.
                // (A dialled IPFS peer was put there to be dialled; out.)
                if info.protocols.iter().any(|p| p.as_ref() == proto::KAD_PROTOCOL) {
                    for addr in &info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
                    }
                } else {
                    self.swarm.behaviour_mut().kad.remove_peer(&peer_id);
                }
                // The IPFS DHTs take any peer that speaks them, Shoal's
                // and IPFS's alike (`--ipfs-peer` addresses join them this
                // way once identify confirms the protocol); kad bootstraps
                // on its own when its routing table gains peers.
                for (which, name) in [(Dht::Wan, IPFS_KAD_PROTOCOL), (Dht::Lan, IPFS_LAN_KAD_PROTOCOL)] {
                    if info.protocols.iter().any(|p| p.as_ref() == name) {
                        for addr in &info.listen_addrs {
                            if let Some(k) = self.dht(which) {
                                k.add_address(&peer_id, addr.clone());
                            }
                        }
                    }
                }
            }
            BehaviourEvent::IpfsKad(event) => self.on_ipfs_kad(Dht::Wan, event),
            BehaviourEvent::IpfsLanKad(event) => self.on_ipfs_kad(Dht::Lan, event),
            BehaviourEvent::Identify(identify::Event::Error { peer_id, error, .. }) => {
                tracing::debug!(%peer_id, "identify failed: {error}");
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(addr);
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let opened = signed::open(&message.data).map_err(|e| e.to_string()).and_then(|o| {
                    serde_json::from_slice::<Announcement>(o.json).map(|a| (o.signer, a)).map_err(|e| e.to_string())
                });
                // Only what checks out travels on; a peer forwarding
                // forgeries or junk loses gossipsub's score for it.
                let acceptance = match &opened {
                    Ok(_) => gossipsub::MessageAcceptance::Accept,
                    Err(_) => gossipsub::MessageAcceptance::Reject,
                };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
                match opened {
                    Ok((peer, announcement)) => {
                        self.remember_addresses(peer, &announcement.addrs);
                        self.emit(Event::Announcement { peer, announcement })
                    }
                    Err(e) => tracing::debug!("refused an announcement forwarded by {propagation_source}: {e}"),
                }
            }
            BehaviourEvent::Exec(event) => self.on_request_response::<Exec>(event),
            BehaviourEvent::Blocks(event) => self.on_request_response::<Blocks>(event),
            BehaviourEvent::Bitswap(bitswap::Event::Received { peer, message }) => {
                self.active(peer);
                self.emit(Event::Bitswap { peer, message });
            }
            BehaviourEvent::Bitswap(bitswap::Event::Sent { id, peer, result }) => {
                if let Some(reply) = self.pending_bitswap.remove(&id) {
                    let _ = reply.send(result.map_err(|reason| Error::Request { peer, reason }));
                }
            }
            BehaviourEvent::Bitswap(bitswap::Event::Invalid { peer, reason }) => {
                self.emit(Event::BitswapInvalid { peer, reason });
            }
            _ => {}
        }
    }
}

/// How the connections of a [`memory_swarm`] are secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Security {
    /// Noise, as on the real network.
    #[default]
    Noise,
    /// Identities exchanged in the clear, nothing encrypted: only for
    /// networks of many nodes inside one process (`shoal-sim`), where
    /// nothing can listen in, and Noise's ciphers and per-connection
    /// buffers (about 128 KiB each) would be most of what a node costs.
    /// Gossip is still signed, so announcements are still checked.
    Plaintext,
}

/// A swarm over libp2p's in-memory transport: the same behaviour and event
/// loop, no sockets. Used by unit tests here and in the node.
pub fn memory_swarm(key: Keypair, cfg: &Config) -> Result<Swarm<Behaviour>, Error> {
    memory_swarm_with(key, cfg, Security::Noise)
}

/// [`memory_swarm`] with the connections secured as `security` says.
pub fn memory_swarm_with(key: Keypair, cfg: &Config, security: Security) -> Result<Swarm<Behaviour>, Error> {
    use libp2p::core::muxing::StreamMuxerBox;
    use libp2p::core::transport::{MemoryTransport, Transport};
    use libp2p::core::upgrade::Version;
    let behaviour = Behaviour::new(&key, cfg)?;
    let counters = cfg.wire.clone();
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let raw = MemoryTransport::default()
                .map(move |conn, _| wire::Counted::new(conn, counters.clone().unwrap_or_default()))
                .upgrade(Version::V1);
            Ok(match security {
                Security::Noise => raw
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                    .boxed(),
                Security::Plaintext => raw
                    .authenticate(libp2p::plaintext::Config::new(key))
                    .multiplex(yamux::Config::default())
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                    .boxed(),
            })
        })
        .map_err(|e| Error::Setup(format!("memory transport: {e}")))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| Error::Setup(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_timeout))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::multiaddr::Protocol;

    async fn node() -> (Client, mpsc::Receiver<Event>, Multiaddr, oneshot::Sender<()>) {
        node_with(Config::default()).await
    }

    async fn node_with(cfg: Config) -> (Client, mpsc::Receiver<Event>, Multiaddr, oneshot::Sender<()>) {
        let swarm = memory_swarm(Keypair::generate_ed25519(), &cfg).unwrap();
        let (client, event_loop, events) = new(swarm, &cfg);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(event_loop.run(async move {
            let _ = stopped.await;
        }));
        let addr = client.listen("/memory/0".parse().unwrap()).await.unwrap();
        let addr = addr.with(Protocol::P2p(client.local_peer_id()));
        (client, events, addr, stop)
    }

    /// Past its high mark, a node closes the connections of peers it has
    /// exchanged nothing with, down to its low mark, keeping its gossip
    /// mesh and the peers it dialed itself; a peer it works with stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_connection_manager_trims_idle_peers_and_keeps_busy_ones() {
        let cfg =
            Config { connections: Connections { low: 2, high: 4, grace: Duration::from_secs(2) }, ..Config::default() };
        let (a, mut a_events, a_addr, _sa) = node_with(cfg).await;
        // Answers every request, so that one peer keeps working with it.
        tokio::spawn({
            let a = a.clone();
            async move {
                while let Some(event) = a_events.recv().await {
                    if let Event::Request { channel, .. } = event {
                        let _ = a.respond(channel, Response::Ok).await;
                    }
                }
            }
        });
        let mut peers = Vec::new();
        for _ in 0..12 {
            let p = node().await;
            p.0.dial(a_addr.clone()).await.unwrap();
            peers.push(p);
        }
        let busy = peers[0].0.clone();
        let busy_id = busy.local_peer_id();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            // A request a second from the busy peer keeps it active.
            let answer = busy.request(a.local_peer_id(), Request::Cancel { exec: "x".into() }).await;
            assert!(answer.is_ok(), "{answer:?}");
            let connected = a.peers().await.unwrap();
            // The gossip mesh (at most 6) and the busy peer are kept.
            if connected.len() <= 7 {
                assert!(connected.contains(&busy_id), "the busy peer was trimmed");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} peers still connected", connected.len());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test]
    async fn exec_request_round_trip_and_block_exchange() {
        let (a, mut a_events, a_addr, _sa) = node().await;
        let (b, _b_events, _b_addr, _sb) = node().await;
        b.dial(a_addr).await.unwrap();
        // The event loop stops when its last client is dropped: keep one.
        let a_keep = a.clone();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                match a_events.recv().await.unwrap() {
                    Event::Request { request, channel, .. } => {
                        assert_eq!(request.exec(), "e-1");
                        a.respond(channel, Response::Bid { accepted: true, reason: None }).await.unwrap();
                    }
                    Event::Blocks { request, channel, .. } => {
                        let response = BlockResponse { blocks: vec![], missing: request.want };
                        a.respond_blocks(channel, response).await.unwrap();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        let peer_a = _sa_peer(&b).await;
        let response = b
            .request(peer_a, Request::Bid { job: "j-1".into(), exec: "e-1".into(), spec: "{}".into(), submitter: None })
            .await
            .unwrap();
        assert_eq!(response, Response::Bid { accepted: true, reason: None });
        let blocks = b.blocks(peer_a, BlockRequest { want: vec![vec![1, 2, 3]] }).await.unwrap();
        assert_eq!(blocks.missing, vec![vec![1, 2, 3]]);
        server.await.unwrap();
        drop(a_keep);
    }

    async fn _sa_peer(client: &Client) -> PeerId {
        client.peers().await.unwrap()[0]
    }

    #[tokio::test]
    async fn request_to_unknown_peer_fails_cleanly() {
        let (a, _events, _addr, _s) = node().await;
        let stranger = Keypair::generate_ed25519().public().to_peer_id();
        let err = a.request(stranger, Request::Cancel { exec: "e".into() }).await.unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "an unknown peer cannot be reached: {err}");
    }

    #[tokio::test]
    async fn announcements_reach_subscribed_peers() {
        let (a, mut a_events, a_addr, _sa) = node().await;
        let (b, _b_events, _b_addr, _sb) = node().await;
        b.dial(a_addr).await.unwrap();
        let ann = Announcement {
            boot: 7,
            capacity: crate::model::Capacity {
                version: "test".into(),
                compute: true,
                slots_total: 2,
                slots_free: 1,
                memory_bytes: 1 << 30,
                labels: [("zone".to_string(), "eu".to_string())].into(),
                gpu: None,
                submitters: Vec::new(),
            },
            api: None,
            allow: Vec::new(),
            receipts: None,
            // A full-size filter still fits the gossip size cap.
            holds: Some({
                let roots: Vec<shoal_storage::Cid> =
                    (0..2_500u32).map(|i| crate::receipt::raw_cid(&i.to_le_bytes())).collect();
                crate::holds::Holds::of(&roots).to_hex()
            }),
            every_ms: 1_000,
            addrs: vec!["/memory/1234".into()],
        };
        // Subscriptions are exchanged just after connecting: publish until
        // one arrives (bounded).
        for _ in 0..100 {
            b.announce(ann.clone()).await.unwrap();
            if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(50), a_events.recv()).await {
                match ev {
                    Event::Announcement { peer, announcement } => {
                        assert_eq!(peer, b.local_peer_id());
                        assert_eq!(announcement, ann);
                        let _ = a;
                        return;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        panic!("no announcement arrived in 100 tries");
    }

    /// A peer that gossips junk, or an announcement whose signature does
    /// not match the node it names, is not heard: only announcements
    /// signed by the node they come from are, whoever forwards them.
    #[tokio::test]
    async fn forged_and_malformed_gossip_is_refused_and_relayed_announcements_keep_their_signer() {
        use futures::StreamExt as _;
        let (a, mut a_events, a_addr, _sa) = node().await;
        let mut liar = memory_swarm(Keypair::generate_ed25519(), &Config::default()).unwrap();
        let liar_id = *liar.local_peer_id();
        liar.dial(a_addr).unwrap();
        let (victim, relayed) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let json = serde_json::to_vec(&Announcement { boot: 1, ..Default::default() }).unwrap();
        let mut forged = signed::seal(&victim, 1, &json).unwrap();
        let last = forged.len() - 2;
        forged[last] ^= 1;
        let topic = IdentTopic::new(proto::ANNOUNCE_TOPIC);
        let mut heard = Vec::new();
        // Subscriptions are exchanged just after connecting: publish until
        // the genuine one arrives (bounded).
        for seq in 0..100u64 {
            let g = &mut liar.behaviour_mut().gossipsub;
            let _ = g.publish(topic.clone(), b"not an announcement".to_vec());
            let _ = g.publish(topic.clone(), forged.clone());
            // Signed by the victim, but with the liar's name inside: the
            // signature covers the sequence.
            let mut renamed = signed::seal(&victim, seq, &json).unwrap();
            let at = renamed.len() - json.len() - 64 - 2 - 8;
            renamed[at..at + 8].copy_from_slice(&(seq + 1).to_be_bytes());
            let _ = g.publish(topic.clone(), renamed);
            let _ = g.publish(topic.clone(), signed::seal(&relayed, seq, &json).unwrap());
            let until = tokio::time::Instant::now() + Duration::from_millis(50);
            while let Ok(_event) = tokio::time::timeout_at(until, liar.select_next_some()).await {}
            while let Ok(ev) = a_events.try_recv() {
                if let Event::Announcement { peer, .. } = ev {
                    heard.push(peer);
                }
            }
            if !heard.is_empty() {
                break;
            }
        }
        assert!(!heard.is_empty(), "the relayed announcement never arrived");
        let relayed_id = relayed.public().to_peer_id();
        assert!(heard.iter().all(|p| *p == relayed_id), "heard {heard:?}; only {relayed_id} signed anything");
        assert!(!heard.contains(&liar_id) && !heard.contains(&victim.public().to_peer_id()));
        let _ = a;
    }

    #[tokio::test]
    async fn ipfs_dht_finds_a_provider_through_a_peer_and_dials_it() {
        // A - B - C in a line. C provides before A joins, so only B (and C)
        // hold the record: A learns it through the DHT, from B.
        let (a, _ae, _a_addr, _sa) = node().await;
        let (b, _be, b_addr, _sb) = node().await;
        let (c, _ce, _c_addr, _sc) = node().await;
        c.dial(b_addr.clone()).await.unwrap();
        let key = b"a multihash, as IPFS keys providers".to_vec();
        // C's tables fill once identify has run: provide until B takes it.
        let mut took = 0;
        for _ in 0..100 {
            took = c.provide(key.clone()).await.unwrap();
            if took > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(took > 0, "no peer took C's provider record");
        a.dial(b_addr).await.unwrap();
        // (In a network this small, kad's own queries may connect A to C
        // too: C is among the closest peers to everything. On a larger one
        // the provider's addresses come only with the lookup's answer, and
        // `find_providers` dials it.)
        // A's tables fill once identify has run (a lookup with empty tables
        // ends at once, empty): ask until the answer comes.
        let mut found = Vec::new();
        for _ in 0..100 {
            found = a.find_providers(key.clone(), 4, Duration::from_secs(10)).await.unwrap();
            if !found.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(found, vec![c.local_peer_id()], "A finds C and connects to it");
        assert!(a.peers().await.unwrap().contains(&c.local_peer_id()));
        // A key nobody provides: an empty answer, well before the deadline
        // (the lookups end).
        let t0 = std::time::Instant::now();
        let none = a.find_providers(b"nobody has this".to_vec(), 4, Duration::from_secs(30)).await.unwrap();
        assert!(none.is_empty(), "{none:?}");
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
        let _ = b;
    }

    #[tokio::test]
    async fn dial_without_peer_id_is_refused() {
        let (a, _e, _addr, _s) = node().await;
        let err = a.dial("/memory/1234".parse().unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("/p2p/"), "{err}");
    }
}
