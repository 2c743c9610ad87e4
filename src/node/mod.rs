//! `shoal node`: one peer of the network. Every node is a requester (it
//! accepts jobs on its HTTP API and schedules them) and, unless
//! `--no-compute`, a compute node (it bids for executions and runs them).
//!
//! The pieces, each in its own file:
//! - `requester.rs`: the scheduling loop. It persists jobs and executions
//!   in the node's SQLite database, asks the pure
//!   [`shoal_scheduler::placement::plan`] what to do, and carries the plan
//!   out (bids, runs, reveals, completion) through the network client.
//! - `compute.rs`: the compute side: slots, bids, running executions with
//!   the runtime, commit-reveal.
//! - `fetch.rs`: block exchange (fetch a DAG from peers, serve ours).
//! - `api.rs`: the HTTP API (axum), OpenAPI document and metrics.
//! - `views.rs`: the API's answers as types, from which the OpenAPI
//!   document is derived.
//! - `guard.rs`: what every API request must pass first (host names, the
//!   token, no state change a web page could send).
//! - test misbehaviours (`--misbehave`: a liar, a crasher, a silent
//!   node) live in `compute.rs`, in debug builds only.
//!
//! The network itself is [`shoal_scheduler::net`]: this module only sees
//! its client and its events.

pub mod api;
pub mod compute;
pub mod fetch;
pub mod guard;
pub mod requester;
pub mod views;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context as _};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use shoal_scheduler::db::Db;
use shoal_scheduler::net::proto::{self, Announcement, Request, Response};
use shoal_scheduler::net::{self, Client, Event};
use shoal_storage::BlockStore;
use tokio::sync::{watch, Notify};

use crate::Ctx;

/// Run a peer node: requester and (unless --no-compute) compute node.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// libp2p listen address; port 0 lets the OS choose.
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0", value_name = "MULTIADDR")]
    pub listen: Multiaddr,
    /// A peer to connect to at start (ending in /p2p/<peer id>). Repeatable.
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub peers: Vec<Multiaddr>,
    /// Address of the HTTP API. A non-loopback address requires the bearer
    /// token in <home>/api-token on every request.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub api: SocketAddr,
    /// Require the api token on a loopback bind too (other users of this
    /// machine, and its browsers, can reach loopback).
    #[arg(long)]
    pub require_token: bool,
    /// A host name the api answers to besides its ip addresses and
    /// `localhost` (requests naming any other host are refused, against
    /// dns rebinding). Repeatable.
    #[arg(long = "api-host", value_name = "NAME")]
    pub api_hosts: Vec<String>,
    /// A label other nodes can select on (constraints). Repeatable.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Executions this node runs at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub slots: u32,
    /// Only schedule jobs; run none.
    #[arg(long)]
    pub no_compute: bool,
    /// GPU use: `auto` advertises a GPU if one is found, `off` never.
    #[arg(long, value_enum, default_value_t = GpuUse::Auto)]
    pub gpu: GpuUse,
    /// Count a software Vulkan device (lavapipe) as this node's GPU:
    /// correct but slow; off by default.
    #[arg(long)]
    pub allow_software_gpu: bool,
    /// Discover peers on the local network with mDNS (off by default).
    #[arg(long)]
    pub mdns: bool,
    /// Misbehave, for tests: wrong-result, crash, or silent.
    #[cfg(debug_assertions)]
    #[arg(long, hide = true, value_name = "MODE")]
    pub misbehave: Option<compute::Misbehave>,
}

impl NodeArgs {
    /// The test misbehaviour asked for (debug builds only).
    #[cfg(debug_assertions)]
    fn misbehave(&self) -> Option<compute::Misbehave> {
        self.misbehave
    }

    #[cfg(not(debug_assertions))]
    fn misbehave(&self) -> Option<compute::Misbehave> {
        None
    }
}

/// Whether a node uses a GPU (`--gpu`): a typo is refused, not taken for
/// `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuUse {
    /// Advertise and use a GPU if one is found.
    Auto,
    /// Never use one.
    Off,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
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
}

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
    pub client: Client,
    pub store: Arc<dyn BlockStore>,
    /// Internally locked per call: no guard escapes, so holding one across
    /// another database call cannot deadlock.
    pub db: Db,
    pub views: Mutex<HashMap<PeerId, View>>,
    pub compute: Option<compute::Compute>,
    /// Wakes the scheduling loop early.
    pub kick: Notify,
    /// Jobs that changed since the scheduling loop last ran.
    pub dirty: Mutex<HashSet<shoal_scheduler::model::JobId>>,
    /// The next kick should plan every active job.
    pub full_pass: std::sync::atomic::AtomicBool,
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
    /// Open job event streams (see [`api::MAX_EVENT_STREAMS`]).
    pub event_streams: Arc<tokio::sync::Semaphore>,
    /// Car exports being streamed (see [`api::MAX_CAR_EXPORTS`]).
    pub car_exports: Arc<tokio::sync::Semaphore>,
    /// The filter of roots this node holds, as announced (hex) and
    /// decoded, rebuilt every [`HOLDS_REFRESH`].
    pub holds: Mutex<Option<(String, Arc<shoal_scheduler::holds::Holds>)>>,
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
        match request {
            Request::Commit { .. } | Request::Failed { .. } => requester::handle(self, peer, request).await,
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
            version: env!("CARGO_PKG_VERSION").into(),
            compute,
            slots_total,
            slots_free,
            memory_bytes: compute::memory_bytes(),
            labels: self.labels.clone(),
            gpu,
            api: self.api_url.get().cloned(),
            holds: self.holds.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(hex, _)| hex.clone()),
        }
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

    /// Forgets the views of peers not heard from for [`VIEW_TTL`]
    /// (placement already ignores them after the node ttl).
    fn forget_silent_views(&self) {
        let now = self.now();
        let ttl = VIEW_TTL.as_millis() as u64;
        self.views.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, v| now.saturating_sub(v.last_seen_ms) <= ttl);
    }

    /// Records what a peer announced; a new boot id means the peer
    /// restarted and lost its executions.
    fn on_announcement(self: &Arc<Self>, peer: PeerId, announcement: Announcement) {
        let now = self.now();
        let restarted = {
            let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            // The filter changes every few seconds at most, and comes every
            // second: decoded only when it is new.
            let holds = match views.get(&peer) {
                Some(v) if v.announcement.holds == announcement.holds => v.holds.clone(),
                _ => announcement.holds.as_deref().and_then(|hex| match shoal_scheduler::holds::Holds::from_hex(hex) {
                    Ok(h) => Some(Arc::new(h)),
                    Err(e) => {
                        tracing::debug!("peer {peer}: {e}");
                        None
                    }
                }),
            };
            if views.len() >= MAX_VIEWS && !views.contains_key(&peer) {
                // Full: the view heard from longest ago makes room.
                if let Some(oldest) = views.iter().min_by_key(|(_, v)| v.last_seen_ms).map(|(p, _)| *p) {
                    views.remove(&oldest);
                }
            }
            let old = views.insert(
                peer,
                View { id: peer.to_string(), announcement: announcement.clone(), last_seen_ms: now, holds },
            );
            match old {
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
            Some(false) => {}
        }
    }
}

/// Loads the node's ed25519 identity from `<home>/node.key`, creating it on
/// first start (mode 0600).
pub fn load_key(home: &Path) -> anyhow::Result<Keypair> {
    let path = home.join("node.key");
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).with_context(|| {
            format!("{} is not a valid node key; move it away to create a new identity", path.display())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().context("cannot encode the new node key")?;
            write_private(&path, &bytes)?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the node key {}", path.display())),
    }
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
pub fn load_token(home: &Path) -> anyhow::Result<String> {
    let path = home.join("api-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => bail!("{} is empty; delete it to create a new token", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token: [u8; 32] = rand::random();
            let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&path, token.as_bytes())?;
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Runs `shoal node` until SIGINT/SIGTERM.
pub fn run(ctx: &Ctx, args: NodeArgs) -> anyhow::Result<std::process::ExitCode> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        let listener = tokio::net::TcpListener::bind(args.api)
            .await
            .with_context(|| format!("cannot bind the api on {}; is the port in use?", args.api))?;
        serve(ctx.home.clone(), ctx.ipfs_api.clone(), args, listener, system_clock(), shutdown).await
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Starts a node on `listener` (API) and runs it until `shutdown`.
pub async fn serve(
    home: PathBuf,
    ipfs_api: Option<String>,
    args: NodeArgs,
    listener: tokio::net::TcpListener,
    clock: Clock,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create the node home {}", home.display()))?;
    let store_ctx = Ctx { home: home.clone(), ipfs_api, json: false, node: Default::default(), interactive: false };
    let store = crate::store::Store::open(&store_ctx)?.dyn_store;
    let key = load_key(&home)?;
    let db_path = home.join("scheduler.sqlite");
    let db = Db::open(&db_path).with_context(|| format!("cannot open the job database {}", db_path.display()))?;
    let cfg = net::Config { mdns: args.mdns, ..net::Config::default() };
    let swarm = net::tcp_swarm(key, &cfg)?;
    let (client, event_loop, mut events) = net::new(swarm, &cfg);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let net_task = tokio::spawn(event_loop.run(async move {
        let _ = stop_rx.await;
    }));
    let listen = client.listen(args.listen.clone()).await?;
    let peer = client.local_peer_id();
    let compute = if args.no_compute {
        None
    } else {
        Some(compute::Compute::new(
            &home,
            args.slots,
            args.misbehave(),
            args.gpu == GpuUse::Auto,
            args.allow_software_gpu,
        )?)
    };
    let api_addr = listener.local_addr().context("api listener has no address")?;
    let node = Arc::new(Node {
        peer,
        client: client.clone(),
        store,
        db,
        views: Mutex::new(HashMap::new()),
        compute,
        kick: Notify::new(),
        dirty: Mutex::new(HashSet::new()),
        full_pass: Default::default(),
        changed: watch::channel(0).0,
        metrics: api::Metrics::new(),
        labels: args.labels.iter().cloned().collect(),
        boot: rand::random(),
        started_ms: clock(),
        clock,
        api_url: OnceLock::new(),
        inflight: Mutex::new(HashSet::new()),
        placement: Default::default(),
        event_streams: Arc::new(tokio::sync::Semaphore::new(api::MAX_EVENT_STREAMS)),
        car_exports: Arc::new(tokio::sync::Semaphore::new(api::MAX_CAR_EXPORTS)),
        holds: Mutex::new(None),
    });
    let _ = node.api_url.set(format!("http://{api_addr}"));
    let token = if api_addr.ip().is_loopback() && !args.require_token { None } else { Some(load_token(&home)?) };
    let policy = guard::Policy {
        token,
        hosts: args.api_hosts.iter().map(|h| h.trim_end_matches('.').to_ascii_lowercase()).collect(),
    };

    for p in &args.peers {
        if let Err(e) = client.dial(p.clone()).await {
            tracing::warn!("cannot reach peer {p}: {e}");
        }
    }

    // Network events. Requests are handled concurrently up to a bound each
    // (a block answer holds up to 8 MiB): past it they are answered "busy"
    // at once, so a peer that floods cannot grow the node's memory or its
    // task count without bound.
    let n = node.clone();
    let requests = Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
    let block_requests = Arc::new(tokio::sync::Semaphore::new(MAX_BLOCK_REQUESTS_IN_FLIGHT));
    let events_task = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                Event::Request { peer, request, channel } => {
                    let n = n.clone();
                    let Ok(permit) = requests.clone().try_acquire_owned() else {
                        let busy = Response::Error { message: "node busy: too many requests in flight; retry".into() };
                        let _ = n.client.respond(channel, busy).await;
                        continue;
                    };
                    tokio::spawn(async move {
                        let _permit = permit;
                        let response = n.handle(peer, request).await;
                        let _ = n.client.respond(channel, response).await;
                    });
                }
                Event::Blocks { request, channel, .. } => {
                    let n = n.clone();
                    let Ok(permit) = block_requests.clone().try_acquire_owned() else {
                        // Busy: nothing now (the asker tries its other
                        // providers, and this one again later).
                        let busy = proto::BlockResponse {
                            blocks: Vec::new(),
                            missing: request.want.iter().take(proto::MAX_WANT).cloned().collect(),
                        };
                        let _ = n.client.respond_blocks(channel, busy).await;
                        continue;
                    };
                    tokio::spawn(async move {
                        let _permit = permit;
                        let st = n.store.clone();
                        let response =
                            tokio::task::spawn_blocking(move || fetch::serve(&*st, &request)).await.unwrap_or_default();
                        let _ = n.client.respond_blocks(channel, response).await;
                    });
                }
                Event::Announcement { peer, announcement } => n.on_announcement(peer, announcement),
                Event::Disconnected { peer } => {
                    // Gone until it announces itself again: placement then
                    // marks what it was running as lost and places it
                    // elsewhere, without waiting for the node ttl.
                    n.views.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer);
                    n.plan_everything();
                }
            }
        }
    });
    // Execution results, pinned in the background.
    let keep_task = node
        .compute
        .as_ref()
        .and_then(|c| c.take_kept())
        .map(|results| tokio::spawn(compute::keeper(node.store.clone(), results)));
    // Announcements, once a second and whenever the scheduler asks; views
    // of peers silent for VIEW_TTL are forgotten.
    let n = node.clone();
    let announce_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000));
        let mut since_holds = HOLDS_REFRESH;
        loop {
            tick.tick().await;
            since_holds += Duration::from_millis(1000);
            if since_holds >= HOLDS_REFRESH {
                since_holds = Duration::ZERO;
                n.refresh_holds().await;
            }
            let _ = n.client.announce(n.announcement()).await;
            n.forget_silent_views();
        }
    });
    let sched_task = tokio::spawn(requester::run(node.clone()));
    let app = api::router(node.clone(), policy);

    println!("ready api=http://{api_addr} peer={}", listen.with(libp2p::multiaddr::Protocol::P2p(peer)));
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    announce_task.abort();
    sched_task.abort();
    if let Some(t) = keep_task {
        t.abort();
    }
    events_task.abort();
    let _ = stop_tx.send(());
    let _ = net_task.await;
    served.context("the api server failed")
}
