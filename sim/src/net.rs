//! An in-process network of real nodes (`shoal-sim net`): `shoal-node`
//! instances in one process over libp2p's memory transport, each with its
//! real behaviours, planner, agreement, database and a memory block store.
//! Requesters (which compute nothing) take the jobs; compute nodes dial a
//! few random peers each, so the network is a sparse mesh as on the
//! internet, not a star.
//!
//! What it measures (see [`Report`]): completion, submit-to-result
//! latency, the bytes on the wire per node per second idle and busy (every
//! protocol: idle, that is all discovery and upkeep), the requesters' CPU
//! per job (they run on a runtime of their own, whose threads are
//! counted), and the resident memory per node.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use shoal_node::{Config as NodeConfig, Deps, Node, Running, Transport};
use shoal_scheduler::model::{JobId, JobState};
use shoal_scheduler::net::wire::Wire;
pub use shoal_scheduler::net::Security;
use shoal_storage::importer::{Importer, Options};
use shoal_storage::{MemStore, PinMode};
use tower::ServiceExt;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Compute nodes.
    pub nodes: usize,
    /// Requester nodes (they compute nothing); jobs go to them in turn.
    pub requesters: usize,
    /// Jobs submitted.
    pub jobs: usize,
    /// Executions per job (quorum: a majority).
    pub redundancy: u32,
    /// Slots per compute node.
    pub slots: u32,
    /// Peers each node dials when it starts (random among those started
    /// before it; requesters dial each other).
    pub degree: usize,
    /// Jobs submitted per second (0: all at once).
    pub rate: f64,
    /// How long the idle network is left to settle after the last node
    /// started (its newest nodes gossip often at first) before it is
    /// watched.
    pub settle: Duration,
    /// How long the idle network is watched before the jobs.
    pub idle: Duration,
    /// Share of compute nodes stopped during the jobs and started again
    /// (same identity, store and database) shortly after.
    pub churn: f64,
    /// Compute nodes started together (see `Net::start_many`).
    pub start_batch: usize,
    /// Random seed (topology, churn).
    pub seed: u64,
    /// The nodes' own settings (announcement period, ttl...).
    pub node: NodeConfig,
    /// Longest wait for the jobs to end.
    pub deadline: Duration,
    /// How connections are secured: in the clear by default, as nothing
    /// outside the process can see them (Noise's ciphers and buffers
    /// would otherwise be most of what a node costs here).
    pub security: Security,
}

impl Config {
    pub fn new(nodes: usize, jobs: usize, redundancy: u32) -> Config {
        Config {
            nodes,
            requesters: 1,
            jobs,
            redundancy,
            slots: 4,
            degree: 4,
            rate: 200.0,
            settle: Duration::from_secs(0),
            idle: Duration::from_secs(10),
            churn: 0.0,
            start_batch: 10,
            seed: 1,
            // Shoal's network only: the IPFS DHTs, which every node also
            // joins by default, are a network of their own (`--ipfs-dht`
            // adds them).
            node: NodeConfig {
                gpu: false,
                network: shoal_scheduler::net::Config { ipfs_dht: false, ..Default::default() },
                ..NodeConfig::default()
            },
            deadline: Duration::from_secs(600),
            security: Security::Plaintext,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub nodes: usize,
    pub requesters: usize,
    pub jobs: usize,
    pub completed: usize,
    pub failed: usize,
    /// Jobs not ended by the deadline.
    pub unfinished: usize,
    /// Jobs whose result differs from the first completed one's.
    pub disagreeing: usize,
    /// Submit-to-result latency of completed jobs, ms: p50, p99.
    pub latency_ms: (u64, u64),
    /// Bytes on the wire per node per second (in plus out, halved: every
    /// byte is sent by one node and received by another), idle.
    pub idle_bytes_per_node_s: f64,
    /// The same while the jobs ran.
    pub busy_bytes_per_node_s: f64,
    /// CPU time of the requesters' runtime per job, ms.
    pub requester_cpu_ms_per_job: f64,
    /// Resident memory per node: the process's growth from before the
    /// first node to the idle network, divided by the nodes.
    pub memory_per_node_bytes: u64,
    /// Compute nodes each requester had a view of when the jobs began
    /// (the smallest).
    pub known_at_start: usize,
    /// Wall time to start every node, s.
    pub start_s: f64,
    /// Wall time from the first submission to the last job's end, s.
    pub busy_s: f64,
    /// Compute nodes stopped and started again.
    pub restarted: usize,
    /// Connections per node on the idle network (mean).
    pub connections_per_node: f64,
    /// CPU time the idle network costs per node, ms per second (the whole
    /// process's, divided by the nodes).
    pub idle_cpu_ms_per_node_s: f64,
}

impl Report {
    pub fn completion_rate(&self) -> f64 {
        self.completed as f64 / self.jobs.max(1) as f64
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "in-process network: {} compute nodes, {} requester(s), {} jobs",
            self.nodes, self.requesters, self.jobs
        )?;
        writeln!(
            f,
            "completion: {:.2}% ({} completed, {} failed, {} unfinished, {} disagreeing; {} nodes restarted)",
            self.completion_rate() * 100.0,
            self.completed,
            self.failed,
            self.unfinished,
            self.disagreeing,
            self.restarted
        )?;
        writeln!(f, "submit-to-result latency: p50 {} ms, p99 {} ms", self.latency_ms.0, self.latency_ms.1)?;
        writeln!(
            f,
            "wire bytes per node per second: idle {:.0}, busy {:.0}",
            self.idle_bytes_per_node_s, self.busy_bytes_per_node_s
        )?;
        writeln!(f, "requester cpu per job: {:.2} ms", self.requester_cpu_ms_per_job)?;
        writeln!(f, "idle cpu per node: {:.2} ms per second", self.idle_cpu_ms_per_node_s)?;
        writeln!(
            f,
            "memory per node: {:.2} MiB; connections per node: {:.1}",
            self.memory_per_node_bytes as f64 / (1 << 20) as f64,
            self.connections_per_node
        )?;
        write!(
            f,
            "compute nodes known to each requester at the start: {}; start {:.1} s, jobs {:.1} s",
            self.known_at_start, self.start_s, self.busy_s
        )
    }
}

/// A WASI command that writes a line to stdout: every job's result is the
/// same directory, so agreement is checked across all of them.
const MODULE: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from shoal\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 17))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// One node's identity and state, kept across its restarts.
struct Member {
    home: PathBuf,
    store: Arc<MemStore>,
    key: Keypair,
    addr: Multiaddr,
    config: NodeConfig,
    wire: Arc<Wire>,
    running: Option<Running>,
}

/// Which runtime a node lives on: requesters on their own, whose threads'
/// CPU time is the requesters' cost.
const REQUESTER_THREADS: &str = "shoal-requester";

struct Net {
    members: Vec<Member>,
    requesters: usize,
    compute_rt: tokio::runtime::Handle,
    requester_rt: tokio::runtime::Handle,
    security: Security,
}

impl Net {
    fn rt(&self, i: usize) -> &tokio::runtime::Handle {
        if i < self.requesters {
            &self.requester_rt
        } else {
            &self.compute_rt
        }
    }

    async fn start(&mut self, i: usize, peers: Vec<Multiaddr>) -> anyhow::Result<()> {
        self.start_many(vec![(i, peers)]).await
    }

    /// Starts nodes together: on a busy runtime each step of a node's
    /// start waits its turn behind every other task, so starting them one
    /// after the other is slow for reasons that have nothing to do with
    /// what a start costs.
    async fn start_many(&mut self, nodes: Vec<(usize, Vec<Multiaddr>)>) -> anyhow::Result<()> {
        let mut starting = Vec::with_capacity(nodes.len());
        for (i, peers) in nodes {
            let m = &self.members[i];
            let mut config = m.config.clone();
            config.peers = peers;
            let deps = Deps {
                home: m.home.clone(),
                store: m.store.clone(),
                key: m.key.clone(),
                clock: shoal_node::system_clock(),
                transport: match self.security {
                    Security::Noise => Transport::Memory,
                    Security::Plaintext => Transport::MemoryPlaintext,
                },
                api: None,
            };
            starting.push((i, self.rt(i).spawn(async move { shoal_node::start(config, deps).await })));
        }
        for (i, task) in starting {
            let running = task.await.context("node start panicked")?.with_context(|| format!("starting node {i}"))?;
            self.members[i].running = Some(running);
        }
        Ok(())
    }

    async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(r) = self.members[i].running.take() {
            self.rt(i).spawn(async move { r.stop().await }).await.context("node stop panicked")??;
        }
        Ok(())
    }

    fn node(&self, i: usize) -> Option<&Arc<Node>> {
        self.members[i].running.as_ref().map(|r| &r.node)
    }

    fn wire_bytes(&self) -> u64 {
        // Every byte is written by one member and read by another.
        self.members.iter().map(|m| m.wire.read() + m.wire.written()).sum::<u64>() / 2
    }

    /// Compute nodes each requester has a view of (the smallest count).
    fn known(&self) -> usize {
        (0..self.requesters)
            .filter_map(|i| self.node(i))
            .map(|n| n.views.lock().map(|v| v.values().filter(|v| v.announcement.compute).count()).unwrap_or(0))
            .min()
            .unwrap_or(0)
    }
}

/// Resident memory of this process, bytes (0 where /proc is missing).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// CPU time (ms) of this process's threads whose name starts with
/// `prefix` (all of them for ""; 0 where /proc is missing).
pub fn threads_cpu_ms(prefix: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return 0 };
    // Linux reports in clock ticks of 100 Hz on every architecture Shoal
    // builds for.
    let mut ticks = 0u64;
    for task in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // "pid (comm) state ..."; comm may hold spaces, so split at the
        // last parenthesis.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with(&prefix[..prefix.len().min(15)]) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after
        // the state.
        let t = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        ticks += t(11) + t(12);
    }
    ticks * 10
}

/// Submits `spec` through `node`'s API (in-process, no socket).
async fn submit(node: Arc<Node>, spec: serde_json::Value) -> anyhow::Result<JobId> {
    let app = shoal_node::api::router(node, Default::default());
    let req = Request::post("/v1/jobs")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Body::from(spec.to_string()))?;
    let resp = app.oneshot(req).await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    anyhow::ensure!(status == StatusCode::CREATED, "submission refused ({status}): {v}");
    v["id"].as_str().context("no job id in the answer")?.parse().map_err(|e| anyhow::anyhow!("job id: {e}"))
}

/// Runs the network on the current (compute) runtime and a requester
/// runtime of its own, and reports.
pub async fn run(cfg: &Config) -> anyhow::Result<Report> {
    anyhow::ensure!(cfg.requesters >= 1, "at least one requester");
    anyhow::ensure!(cfg.nodes as u32 >= cfg.redundancy, "fewer compute nodes than the redundancy");
    let requester_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(REQUESTER_THREADS)
        .enable_all()
        .build()
        .context("requester runtime")?;
    let result = run_on(cfg, requester_rt.handle().clone()).await;
    // Dropped off the async threads: a runtime cannot be dropped inside
    // another.
    std::thread::spawn(move || drop(requester_rt)).join().ok();
    result
}

async fn run_on(cfg: &Config, requester_rt: tokio::runtime::Handle) -> anyhow::Result<Report> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let homes = tempfile::tempdir().context("temporary directory")?;
    let base: u64 = rng.gen_range(1u64 << 20..1u64 << 40);
    let total = cfg.requesters + cfg.nodes;
    let rss_before = rss_bytes();
    let mut net = Net {
        members: Vec::with_capacity(total),
        requesters: cfg.requesters,
        compute_rt: tokio::runtime::Handle::current(),
        requester_rt,
        security: cfg.security,
    };
    for i in 0..total {
        let key = Keypair::generate_ed25519();
        let port = base + i as u64;
        let addr: Multiaddr = format!("/memory/{port}/p2p/{}", key.public().to_peer_id()).parse()?;
        let wire = Arc::new(Wire::default());
        let mut config = cfg.node.clone();
        config.compute = i >= cfg.requesters;
        config.slots = cfg.slots;
        config.listen = format!("/memory/{port}").parse()?;
        config.network.wire = Some(wire.clone());
        net.members.push(Member {
            home: homes.path().join(i.to_string()),
            store: Arc::new(MemStore::new()),
            key,
            addr,
            config,
            wire,
            running: None,
        });
    }
    let started = Instant::now();
    // The requesters first, one by one, then the compute nodes in groups of
    // `start_batch`, each dialing `degree` random nodes started before its
    // group.
    let mut i = 0;
    while i < total {
        let end = if i < cfg.requesters { i + 1 } else { (i + cfg.start_batch.max(1)).min(total) };
        let group: Vec<(usize, Vec<Multiaddr>)> = (i..end)
            .map(|k| {
                let peers = if k == 0 {
                    Vec::new()
                } else if k < cfg.requesters {
                    vec![net.members[0].addr.clone()]
                } else {
                    let earlier: Vec<usize> = (0..i).collect();
                    earlier.choose_multiple(&mut rng, cfg.degree.min(i)).map(|&j| net.members[j].addr.clone()).collect()
                };
                (k, peers)
            })
            .collect();
        let t = Instant::now();
        net.start_many(group).await?;
        if std::env::var_os("SHOAL_SIM_PROGRESS").is_some() {
            eprintln!("nodes {i}..{end} started in {:?}, {:?} in all", t.elapsed(), started.elapsed());
        }
        i = end;
    }
    let start_s = started.elapsed().as_secs_f64();
    // Warm: every requester knows the compute nodes (or the wait ends).
    let warm_by = Instant::now() + Duration::from_secs(60).max(cfg.idle);
    while net.known() < cfg.nodes && Instant::now() < warm_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(cfg.settle).await;
    let (b0, t0, c0) = (net.wire_bytes(), Instant::now(), threads_cpu_ms(""));
    tokio::time::sleep(cfg.idle).await;
    let idle_s = t0.elapsed().as_secs_f64();
    let idle_bytes_per_node_s = (net.wire_bytes() - b0) as f64 / idle_s / total as f64;
    let idle_cpu_ms_per_node_s = (threads_cpu_ms("") - c0) as f64 / idle_s / total as f64;
    let memory_per_node_bytes = rss_bytes().saturating_sub(rss_before) / total as u64;
    // Asked of every node at once: one by one, each answer waits its turn
    // on a busy runtime (at 1,000 nodes, minutes).
    let asking: Vec<_> = (0..total)
        .filter_map(|i| net.node(i).map(|n| (i, n.client.clone())))
        .map(|(i, client)| net.rt(i).spawn(async move { client.peers().await.map(|p| p.len()).unwrap_or(0) }))
        .collect();
    let mut connections = 0usize;
    for a in asking {
        connections += a.await.unwrap_or(0);
    }
    let connections_per_node = connections as f64 / total as f64;
    let known_at_start = net.known();

    // The module, in every requester's store.
    let wasm = wat::parse_str(MODULE).context("the job's module")?;
    let mut module = None;
    for i in 0..cfg.requesters {
        let store = &net.members[i].store;
        let added = Importer::new(&**store, Options::default()).add_bytes(&wasm)?;
        shoal_storage::pin::add(&**store, &added.root, PinMode::Recursive)?;
        module = Some(added.root);
    }
    let module = module.context("no requester")?;

    // Churn: which compute nodes stop, after which submission, and when
    // they come back.
    let churned = (cfg.nodes as f64 * cfg.churn).round() as usize;
    let mut victims: Vec<usize> = (cfg.requesters..total).collect();
    victims.shuffle(&mut rng);
    victims.truncate(churned);
    let mut stops: HashMap<usize, Vec<usize>> = HashMap::new();
    for &v in &victims {
        stops.entry(rng.gen_range(0..cfg.jobs.max(1))).or_default().push(v);
    }
    let mut down: Vec<(usize, usize)> = Vec::new();

    let cpu0 = threads_cpu_ms(REQUESTER_THREADS);
    let (b1, t1) = (net.wire_bytes(), Instant::now());
    let mut ids: Vec<(usize, JobId)> = Vec::with_capacity(cfg.jobs);
    let mut submitting = Vec::new();
    for j in 0..cfg.jobs {
        if cfg.rate > 0.0 {
            let due = t1 + Duration::from_secs_f64(j as f64 / cfg.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        for v in stops.remove(&j).unwrap_or_default() {
            net.stop(v).await?;
            // Back after a tenth of the jobs more.
            down.push((j + (cfg.jobs / 10).max(1), v));
        }
        let back: Vec<usize> = down.iter().filter(|(at, _)| *at <= j).map(|(_, v)| *v).collect();
        down.retain(|(at, _)| *at > j);
        for v in back {
            let peers = vec![net.members[v % cfg.requesters].addr.clone()];
            net.start(v, peers).await?;
        }
        let r = j % cfg.requesters;
        let Some(node) = net.node(r).cloned() else { continue };
        let spec = serde_json::json!({
            "task": { "module": module.to_string(), "args": [format!("job-{j}")] },
            "redundancy": { "count": cfg.redundancy },
            "timeouts": { "queue": "5m", "execution": "1m", "total": "10m" },
        });
        submitting.push((r, net.requester_rt.spawn(submit(node, spec))));
        // Bounded: at most 256 submissions in flight.
        if submitting.len() >= 256 {
            for (r, s) in submitting.drain(..) {
                ids.push((r, s.await.context("submission panicked")??));
            }
        }
    }
    for (r, s) in submitting.drain(..) {
        ids.push((r, s.await.context("submission panicked")??));
    }
    for (_, v) in std::mem::take(&mut down) {
        let peers = vec![net.members[v % cfg.requesters].addr.clone()];
        net.start(v, peers).await?;
    }
    // Until every requester has nothing left active.
    let deadline = t1 + cfg.deadline;
    loop {
        let mut active = false;
        for i in 0..cfg.requesters {
            if let Some(n) = net.node(i) {
                active |= !n.db().active_jobs_oldest(1, 0)?.is_empty();
            }
        }
        if !active || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy_s = t1.elapsed().as_secs_f64();
    let busy_bytes_per_node_s = (net.wire_bytes() - b1) as f64 / busy_s / total as f64;
    let requester_cpu_ms_per_job = (threads_cpu_ms(REQUESTER_THREADS) - cpu0) as f64 / cfg.jobs.max(1) as f64;

    let mut report = Report {
        nodes: cfg.nodes,
        requesters: cfg.requesters,
        jobs: cfg.jobs,
        idle_bytes_per_node_s,
        busy_bytes_per_node_s,
        requester_cpu_ms_per_job,
        memory_per_node_bytes,
        known_at_start,
        start_s,
        busy_s,
        restarted: churned,
        connections_per_node,
        idle_cpu_ms_per_node_s,
        ..Report::default()
    };
    let mut latencies = Vec::new();
    let mut agreed = None;
    for (r, id) in &ids {
        let Some(node) = net.node(*r) else { continue };
        let Some(job) = node.db().job(id)? else { continue };
        match job.state {
            JobState::Completed => {
                report.completed += 1;
                latencies.push(job.updated_ms.saturating_sub(job.created_ms));
                if *agreed.get_or_insert(job.result) != job.result {
                    report.disagreeing += 1;
                }
            }
            s if s.is_terminal() => report.failed += 1,
            _ => report.unfinished += 1,
        }
    }
    latencies.sort_unstable();
    report.latency_ms = (crate::report::percentile(&latencies, 0.5), crate::report::percentile(&latencies, 0.99));
    if std::env::var_os("SHOAL_SIM_PROGRESS").is_some() {
        eprintln!("{report}\nstopping the nodes");
    }
    // All at once: one after the other, each stop waits its turn on a busy
    // runtime, and 1,000 nodes took longer to stop than to run.
    let mut stopping = Vec::with_capacity(total);
    for i in 0..total {
        if let Some(r) = net.members[i].running.take() {
            stopping.push(net.rt(i).spawn(async move { r.stop().await }));
        }
    }
    let mut unclean = 0;
    for s in stopping {
        if !matches!(s.await, Ok(Ok(()))) {
            unclean += 1;
        }
    }
    if unclean > 0 {
        tracing::warn!("{unclean} nodes did not stop cleanly");
    }
    Ok(report)
}
