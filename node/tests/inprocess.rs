//! Whole networks of nodes in one process: libp2p's memory transport,
//! memory block stores and a clock the test moves. Bursts, losses and
//! restarts run in seconds, and every wait is for a condition (a job's
//! state, announced as it changes), never a sleep.
//!
//! The invariant every test here checks, the planner's (see
//! `shoal_scheduler::placement`): every job ends (completed, failed,
//! cancelled) within its timeouts, whatever the bursts, rejections,
//! losses and restarts; a completed job has the result a local run of its
//! spec gives; and no compute slot is leaked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use rand::{Rng, SeedableRng};
use shoal_node::{Config, Deps, Node, Running, Transport};
use shoal_scheduler::model::{ExecState, Job, JobId, JobState};
use shoal_storage::importer::{Importer, Options};
use shoal_storage::{Cid, MemStore, PinMode};
use tower::ServiceExt;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let st = Command::new("make").arg("-C").arg(root().join("samples")).status().expect("make");
        assert!(st.success(), "building samples failed: run scripts/setup.sh --samples");
    });
    std::fs::read(root().join("samples/build").join(format!("{name}.wasm"))).expect("sample module")
}

/// Wall time plus an offset the test moves forward.
#[derive(Clone, Default)]
struct TestClock(Arc<AtomicU64>);

impl TestClock {
    fn clock(&self) -> shoal_node::Clock {
        let offset = self.0.clone();
        let wall = shoal_node::system_clock();
        Arc::new(move || wall() + offset.load(Ordering::SeqCst))
    }

    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

/// One node's identity and state, kept across its restarts.
struct Member {
    home: tempfile::TempDir,
    store: Arc<MemStore>,
    key: Keypair,
    addr: Multiaddr,
    config: Config,
    running: Option<Running>,
}

/// Node 0 is the requester (it computes nothing); the others compute and
/// peer with it.
struct Net {
    members: Vec<Member>,
    clock: TestClock,
}

fn config(slots: Option<u32>) -> Config {
    Config {
        compute: slots.is_some(),
        slots: slots.unwrap_or(0),
        gpu: false,
        announce_every: Duration::from_millis(200),
        // Nodes announce five times as often as by default: they are
        // counted gone five times sooner.
        placement: shoal_scheduler::placement::Config { node_ttl_ms: 2_000, ..Default::default() },
        ..Config::default()
    }
}

impl Net {
    async fn new(slots: &[u32]) -> Net {
        Net::with(slots, |_, _| {}).await
    }

    /// [`Net::new`], with member `i`'s config changed by `tweak(i, ..)`.
    async fn with(slots: &[u32], tweak: impl Fn(usize, &mut Config)) -> Net {
        let mut net = Net { members: Vec::new(), clock: TestClock::default() };
        let base: u64 = rand::random::<u32>() as u64 * 64 + 1;
        let wanted: Vec<Option<u32>> = std::iter::once(None).chain(slots.iter().map(|s| Some(*s))).collect();
        for (i, s) in wanted.into_iter().enumerate() {
            let key = Keypair::generate_ed25519();
            let addr: Multiaddr =
                format!("/memory/{}/p2p/{}", base + i as u64, key.public().to_peer_id()).parse().unwrap();
            let mut config = config(s);
            config.labels.insert("index".into(), i.to_string());
            config.listen = format!("/memory/{}", base + i as u64).parse().unwrap();
            tweak(i, &mut config);
            net.members.push(Member {
                home: tempfile::tempdir().unwrap(),
                store: Arc::new(MemStore::new()),
                key,
                addr,
                config,
                running: None,
            });
        }
        for i in 0..net.members.len() {
            net.start(i).await;
        }
        net.until_known().await;
        net
    }

    /// Starts (or restarts) member `i`, peered with the requester (or, for
    /// the requester, with every other member).
    async fn start(&mut self, i: usize) {
        let peers: Vec<Multiaddr> = if i == 0 {
            self.members[1..].iter().filter(|m| m.running.is_some()).map(|m| m.addr.clone()).collect()
        } else {
            vec![self.members[0].addr.clone()]
        };
        let m = &mut self.members[i];
        let mut config = m.config.clone();
        config.peers = peers;
        let deps = Deps {
            home: m.home.path().to_owned(),
            store: m.store.clone(),
            key: m.key.clone(),
            clock: self.clock.clock(),
            transport: Transport::Memory,
            api: None,
        };
        m.running = Some(shoal_node::start(config, deps).await.expect("start node"));
    }

    async fn stop(&mut self, i: usize) {
        if let Some(r) = self.members[i].running.take() {
            r.stop().await.expect("stop node");
        }
    }

    fn node(&self, i: usize) -> &Arc<Node> {
        &self.members[i].running.as_ref().expect("node running").node
    }

    /// Waits until the requester has heard from every running compute
    /// node.
    async fn until_known(&self) {
        let want: Vec<_> = self.members[1..].iter().filter_map(|m| m.running.as_ref().map(|r| r.node.peer)).collect();
        let req = self.node(0).clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // Announcements change no job: checked on a short tick.
        while !want.iter().all(|p| req.views.lock().unwrap().contains_key(p)) {
            assert!(tokio::time::Instant::now() < deadline, "nodes never met");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Puts a module into the requester's store, pinned.
    fn add(&self, bytes: &[u8]) -> Cid {
        let store = &self.members[0].store;
        let added = Importer::new(&**store, Options::default()).add_bytes(bytes).unwrap();
        shoal_storage::pin::add(&**store, &added.root, PinMode::Recursive).unwrap();
        added.root
    }
}

/// Submits `spec` through node `node`'s API (in-process, no socket).
async fn submit(node: &Arc<Node>, spec: &serde_json::Value) -> JobId {
    let (status, v) = post(node, "/v1/jobs", spec, &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().parse().unwrap()
}

/// POSTs `body` (JSON) to `path` on `node`'s API with extra `headers`.
async fn post(
    node: &Arc<Node>,
    path: &str,
    body: &serde_json::Value,
    headers: &[(&str, String)],
) -> (StatusCode, serde_json::Value) {
    let app = shoal_node::api::router(node.clone(), Default::default());
    let mut req = Request::post(path).header("host", "127.0.0.1").header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = app.oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// The headers of `spec` signed by `key` at `at_ms`, as `shoal submit`
/// sends them.
fn signed_by(key: &Keypair, spec: &serde_json::Value, at_ms: u64) -> Vec<(&'static str, String)> {
    let spec = shoal_scheduler::spec::Spec::from_yaml_or_json(&spec.to_string()).unwrap();
    let cid = shoal_scheduler::receipt::job_cid(&spec);
    let sig = key.sign(&shoal_scheduler::receipt::submit_statement(&cid, at_ms)).unwrap();
    vec![
        (shoal_node::api::SUBMITTER_HEADER, key.public().to_peer_id().to_string()),
        (shoal_node::api::SUBMITTED_AT_HEADER, at_ms.to_string()),
        (shoal_node::api::SIGNATURE_HEADER, hex::encode(sig)),
    ]
}

/// Waits until every job in `ids` has ended, woken by each change.
async fn until_ended(node: &Arc<Node>, ids: &[JobId], within: Duration) -> Vec<Job> {
    let mut changed = node.changed.subscribe();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let jobs: Vec<Job> = ids.iter().map(|id| node.db().job(id).unwrap().expect("job")).collect();
        if jobs.iter().all(|j| j.state.is_terminal()) {
            return jobs;
        }
        if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
            let open: Vec<String> = jobs
                .iter()
                .filter(|j| !j.state.is_terminal())
                .map(|j| format!("{} {:?} ({} executions)", j.id, j.state, node.db().executions(&j.id).unwrap().len()))
                .collect();
            panic!("{} of {} jobs never ended: {open:?}", open.len(), ids.len());
        }
    }
}

/// The result a local run of `spec` gives (a fresh store with its module).
fn local_result(module: &[u8], spec: &serde_json::Value) -> Cid {
    let spec = shoal_scheduler::spec::Spec::from_yaml_or_json(&spec.to_string()).unwrap();
    let store = MemStore::new();
    let added = Importer::new(&store, Options::default()).add_bytes(module).unwrap();
    assert_eq!(added.root, spec.task.module);
    let exec = shoal_runtime::Executor::new(shoal_runtime::Config::default()).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let rt = shoal_node::compute::to_runtime(&spec);
    // The runtime blocks: off the test's async threads.
    std::thread::scope(|s| s.spawn(|| shoal_runtime::job::run(&exec, &store, &rt, scratch.path())).join())
        .unwrap()
        .unwrap()
        .result
}

/// Waits until `cond` holds on `node`, woken by each job change.
async fn until(node: &Arc<Node>, within: Duration, what: &str, cond: impl Fn(&Node) -> bool) {
    let mut changed = node.changed.subscribe();
    let deadline = tokio::time::Instant::now() + within;
    while !cond(node) {
        if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
            panic!("{what}: not within {within:?}");
        }
    }
}

/// Every compute node has all its slots free again (stragglers of
/// completed jobs finish or are cancelled shortly after).
async fn no_slot_leaked(net: &Net) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for m in &net.members[1..] {
        let Some(r) = &m.running else { continue };
        let c = r.node.compute.as_ref().unwrap();
        while c.free_slots() != c.slots {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} keeps {} of {} slots busy",
                r.node.peer,
                c.slots - c.free_slots(),
                c.slots
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn hello_spec(module: Cid, i: usize, redundancy: u32) -> serde_json::Value {
    serde_json::json!({
        "task": { "module": module.to_string(), "args": [format!("job-{i}")] },
        "redundancy": { "count": redundancy },
        "timeouts": { "queue": "2m", "execution": "1m", "total": "5m" },
    })
}

/// Checks each completed job against a local run of its spec.
fn check_results(module: &[u8], specs: &[serde_json::Value], jobs: &[Job], cache: &mut HashMap<String, Cid>) {
    for (spec, job) in specs.iter().zip(jobs) {
        assert_eq!(job.state, JobState::Completed, "job {} failed: {:?}", job.id, job.error);
        let want = *cache.entry(spec.to_string()).or_insert_with(|| local_result(module, spec));
        assert_eq!(job.result, Some(want), "job {} disagrees with a local run", job.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_ten_times_the_slots_completes_with_redundancy_two_and_three() {
    let hello = sample("hello");
    // 3 compute nodes, 2 slots each: 6 slots; 60 jobs in one burst.
    let net = Net::new(&[2, 2, 2]).await;
    let module = net.add(&hello);
    let mut specs = Vec::new();
    let mut ids = Vec::new();
    for i in 0..60 {
        let spec = hello_spec(module, i % 20, if i % 2 == 0 { 2 } else { 3 });
        ids.push(submit(net.node(0), &spec).await);
        specs.push(spec);
    }
    let jobs = until_ended(net.node(0), &ids, Duration::from_secs(120)).await;
    check_results(&hello, &specs, &jobs, &mut HashMap::new());
    for job in &jobs {
        let execs = net.node(0).db().executions(&job.id).unwrap();
        // A quorum of distinct nodes agreed, and no node ran the job twice.
        let ran: Vec<_> = execs.iter().filter(|e| e.state != ExecState::Rejected).map(|e| e.node.clone()).collect();
        let mut distinct = ran.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ran.len(), "job {} ran twice on one node: {ran:?}", job.id);
        let agreeing = execs.iter().filter(|e| e.result == job.result).count();
        assert!(agreeing >= job.spec.quorum() as usize, "job {}: {agreeing} results agree", job.id);
    }
    no_slot_leaked(&net).await;
}

/// Seeded bursts with node losses and requester restarts: the planner's
/// invariant over many schedules. `SHOAL_INPROCESS_SEEDS=n` runs more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bursts_with_losses_and_restarts_end_every_job_with_the_local_result() {
    let hello = sample("hello");
    // SHOAL_LOG=shoal_node=debug shows what the nodes did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    let seeds: u64 = std::env::var("SHOAL_INPROCESS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let mut cache = HashMap::new();
    for seed in 0..seeds {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let slots: Vec<u32> = (0..4).map(|_| rng.gen_range(1..=2)).collect();
        let total: u32 = slots.iter().sum();
        let mut net = Net::new(&slots).await;
        let module = net.add(&hello);
        let n_jobs = (total * 10) as usize;
        let mut specs = Vec::new();
        let mut ids = Vec::new();
        // The fault strikes partway through the burst.
        let strike = rng.gen_range(n_jobs / 4..n_jobs * 3 / 4);
        let lose = rng.gen_range(1..net.members.len());
        let restart_requester = rng.gen_bool(0.5);
        for i in 0..n_jobs {
            if i == strike {
                net.stop(lose).await;
                if restart_requester {
                    net.stop(0).await;
                    net.start(0).await;
                }
            }
            let spec = hello_spec(module, i % 10, rng.gen_range(1..=3));
            ids.push(submit(net.node(0), &spec).await);
            specs.push(spec);
        }
        let t = std::time::Instant::now();
        let jobs = until_ended(net.node(0), &ids, Duration::from_secs(180)).await;
        let took = t.elapsed();
        check_results(&hello, &specs, &jobs, &mut cache);
        no_slot_leaked(&net).await;
        for i in 0..net.members.len() {
            net.stop(i).await;
        }
        eprintln!(
            "seed {seed}: {n_jobs} jobs on slots {slots:?}, lost node {lose}, requester restarted: \
             {restart_requester}; all ended {took:?} after the last submission"
        );
    }
}

/// The requester's clock decides its timeouts: a job that nothing can run
/// fails when the clock passes its queue timeout, with no wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_node_can_run_fails_when_the_clock_passes_its_queue_timeout() {
    let hello = sample("hello");
    let net = Net::new(&[1]).await;
    let module = net.add(&hello);
    let spec = serde_json::json!({
        "task": { "module": module.to_string() },
        "resources": { "gpu": true },
        "timeouts": { "queue": "10m", "total": "1h" },
    });
    let id = submit(net.node(0), &spec).await;
    let job = net.node(0).db().job(&id).unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    net.clock.advance(Duration::from_secs(11 * 60));
    net.node(0).plan_everything();
    let jobs = until_ended(net.node(0), &[id], Duration::from_secs(20)).await;
    assert_eq!(jobs[0].state, JobState::Failed);
    let error = jobs[0].error.clone().unwrap_or_default();
    assert!(error.contains("queue") || error.contains("timed out"), "{error}");
}

/// A compute node restarted after it committed to a result (and before
/// the requester asked for it) reveals it from its journal: the job
/// completes with that execution, and nothing is run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_compute_node_reveals_what_it_had_committed() {
    let (hello, sleep) = (sample("hello"), sample("sleep"));
    let mut net = Net::new(&[1, 1]).await;
    let (hello_c, sleep_c) = (net.add(&hello), net.add(&sleep));
    // Node 2 is kept busy, so the redundancy-2 job waits for it after
    // node 1 has committed.
    let busy = serde_json::json!({
        "task": { "module": sleep_c.to_string(), "args": ["3000"] },
        "constraints": ["index=2"],
    });
    let busy = submit(net.node(0), &busy).await;
    let running = |n: &Node, job: &JobId| {
        n.db().executions(job).unwrap().iter().any(|e| matches!(e.state, ExecState::Running | ExecState::Committed))
    };
    until(net.node(0), Duration::from_secs(30), "the sleep runs", |n| running(n, &busy)).await;
    let spec = hello_spec(hello_c, 0, 2);
    let id = submit(net.node(0), &spec).await;
    let one = net.node(1).peer.to_string();
    let committed = |n: &Node| {
        n.db().executions(&id).unwrap().into_iter().find(|e| e.node == one && e.state == ExecState::Committed)
    };
    until(net.node(0), Duration::from_secs(30), "node 1 commits", |n| committed(n).is_some()).await;
    let exec = committed(net.node(0)).unwrap().id.to_string();
    // Journalled once its result is durable (the keeper's next batch).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !net.node(1).db().journal().unwrap().iter().any(|e| matches!(e, Ok(e) if e.exec == exec && e.done.is_some()))
    {
        assert!(tokio::time::Instant::now() < deadline, "never journalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = net.node(0).db().job(&id).unwrap().unwrap();
    assert!(!job.state.is_terminal(), "the job waited for node 2: {:?}", job.state);
    net.stop(1).await;
    net.start(1).await;
    let jobs = until_ended(net.node(0), &[id.clone(), busy], Duration::from_secs(60)).await;
    check_results(&hello, std::slice::from_ref(&spec), &jobs[..1], &mut HashMap::new());
    let execs = net.node(0).db().executions(&id).unwrap();
    let mine = execs.iter().find(|e| e.id.to_string() == exec).unwrap();
    assert!(
        matches!(mine.state, ExecState::Revealed | ExecState::Completed),
        "the restarted node's execution ended {:?}: {:?}",
        mine.state,
        mine.error
    );
    assert_eq!(mine.result, jobs[0].result);
    let ran: Vec<_> = execs.iter().filter(|e| e.state != ExecState::Rejected).collect();
    assert_eq!(ran.len(), 2, "nothing ran again: {ran:?}");
}

/// Submitter keys end to end: signatures checked at submission, a quota
/// of unfinished jobs (429) and one of busy executions (its jobs wait
/// their turn), a compute node that works only for one submitter (placement
/// never asks it for others' jobs, and it refuses their bids itself), and
/// the submitter in the receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submitters_are_signed_held_to_their_quotas_and_allowed_or_refused_by_nodes() {
    let hello = sample("hello");
    let alice = Keypair::generate_ed25519();
    let bob = Keypair::generate_ed25519();
    let alice_id = alice.public().to_peer_id();
    let stranger = Keypair::generate_ed25519().public().to_peer_id();
    let net = Net::with(&[4, 4, 1], |i, c| match i {
        0 => c.quotas = shoal_node::Quotas { jobs: Some(2), executions: Some(1) },
        1 => c.allow_submitters = vec![alice_id],
        3 => c.allow_requesters = vec![stranger],
        _ => {}
    })
    .await;
    let req = net.node(0).clone();
    let module = net.add(&hello);
    let spec = |i: usize, on: &str| {
        let mut s = hello_spec(module, i, 1);
        s["constraints"] = serde_json::json!([format!("index={on}")]);
        s
    };
    let now = req.now();

    // Signatures: a bad one, an old one, and half the headers are refused.
    let mut forged = signed_by(&bob, &spec(0, "1"), now);
    forged[0].1 = alice_id.to_string();
    let (status, v) = post(&req, "/v1/jobs", &spec(0, "1"), &forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"].as_str().unwrap().contains("signature"), "{v}");
    let old = now - 11 * 60 * 1000;
    let (status, v) = post(&req, "/v1/jobs", &spec(0, "1"), &signed_by(&alice, &spec(0, "1"), old)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"].as_str().unwrap().contains("clock"), "{v}");
    let (status, v) = post(&req, "/v1/jobs", &spec(0, "1"), &signed_by(&alice, &spec(0, "1"), now)[..2]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // Alice's two jobs on her node (4 slots): her quota of one busy
    // execution runs them one after the other.
    let mut ids = Vec::new();
    for i in 0..2 {
        let (status, v) = post(&req, "/v1/jobs", &spec(i, "1"), &signed_by(&alice, &spec(i, "1"), now)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");
        ids.push(v["id"].as_str().unwrap().parse::<JobId>().unwrap());
    }
    let jobs = until_ended(&req, &ids, Duration::from_secs(60)).await;
    let mut spans = Vec::new();
    for job in &jobs {
        assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
        assert_eq!(job.submitter.as_ref().map(|s| s.key.clone()), Some(alice_id.to_string()));
        let execs = req.db().executions(&job.id).unwrap();
        assert!(execs.iter().all(|e| e.node == net.node(1).peer.to_string()), "alice's node ran it");
        for (_, events) in req.db().timeline(&job.id).unwrap() {
            let start = events.first().unwrap().1;
            let end = events.iter().find(|(s, _)| *s == ExecState::Committed).unwrap().1;
            spans.push((start, end));
        }
        // The receipt names her, and her signature verifies offline.
        let cid = job.receipt.unwrap();
        let bytes = shoal_storage::BlockStore::get(&*net.members[0].store, &cid).unwrap();
        let v = shoal_scheduler::receipt::verify(bytes.data(), Some(&cid), None).unwrap();
        assert_eq!(v.submitter, Some(alice_id.to_string()));
    }
    spans.sort();
    assert!(spans[0].1 <= spans[1].0, "two of alice's executions were busy at once: {spans:?}");

    // Anonymous jobs: none can go to alice's node; two wait (no node has
    // index 9), and a third is refused by the quota of unfinished jobs.
    let (status, v) = post(&req, "/v1/jobs", &spec(5, "1"), &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(v["warnings"][0].as_str().unwrap().contains("only 0 node(s)"), "{v}");
    let (status, _) = post(&req, "/v1/jobs", &spec(6, "9"), &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, v) = post(&req, "/v1/jobs", &spec(7, "9"), &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(v["error"].as_str().unwrap().contains("quota is 2"), "{v}");
    // Bob has his own quota.
    let (status, v) = post(&req, "/v1/jobs", &spec(7, "2"), &signed_by(&bob, &spec(7, "2"), now)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    // Alice's node refuses bids for anyone else's jobs itself.
    use shoal_scheduler::net::proto::{Request as Rq, Response as Rs};
    let text =
        |s: &serde_json::Value| shoal_scheduler::spec::Spec::from_yaml_or_json(&s.to_string()).unwrap().to_json();
    let bid =
        |exec: &str, submitter| Rq::Bid { job: "j-x".into(), exec: exec.into(), spec: text(&spec(8, "1")), submitter };
    let claim = |key: &Keypair, claimed: &libp2p::PeerId| {
        let h = signed_by(key, &spec(8, "1"), now);
        shoal_scheduler::model::Submitter {
            key: claimed.to_string(),
            at_ms: now,
            signature: h[2].1.clone(),
            pipeline: None,
        }
    };
    let target = net.node(1).peer;
    // A genuine claim, but signed longer ago than the job's total timeout
    // (5 min) allows: copied from an earlier submission.
    let stale = {
        let at = now - 20 * 60 * 1000;
        let h = signed_by(&alice, &spec(8, "1"), at);
        shoal_scheduler::model::Submitter {
            key: alice_id.to_string(),
            at_ms: at,
            signature: h[2].1.clone(),
            pipeline: None,
        }
    };
    for (exec, submitter, why) in [
        ("e-stale", Some(stale), "longer ago than its timeouts.total"),
        ("e-anon", None, "without a signature"),
        ("e-bob", Some(claim(&bob, &bob.public().to_peer_id())), "is not one of them"),
        ("e-forged", Some(claim(&bob, &alice_id)), "does not sign"),
    ] {
        match req.send(target, bid(exec, submitter)).await.unwrap() {
            Rs::Bid { accepted: false, reason: Some(r) } => assert!(r.contains(why), "{exec}: {r}"),
            other => panic!("{exec}: {other:?}"),
        }
    }
    match req.send(target, bid("e-alice", Some(claim(&alice, &alice_id)))).await.unwrap() {
        Rs::Bid { accepted: true, .. } => {}
        other => panic!("alice's bid: {other:?}"),
    }
    // A node that works for another requester refuses this one's bids
    // (placement never sends them: it announces so).
    match req.send(net.node(3).peer, bid("e-other", None)).await.unwrap() {
        Rs::Bid { accepted: false, reason: Some(r) } => assert!(r.contains("--allow-requester"), "{r}"),
        other => panic!("a bid to a node for another requester: {other:?}"),
    }
    assert!(
        spans.len() == 2
            && req.db().jobs(None, 100).unwrap().iter().all(|j| {
                req.db().executions(&j.id).unwrap().iter().all(|e| e.node != net.node(3).peer.to_string())
            }),
        "nothing was placed on the node for another requester"
    );
}

/// A job that fails has a receipt too: its failure, signed by the
/// requester, with what every node that committed signed. Here two nodes
/// disagree (one lies) on a job that needs both: no consensus.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_job_has_a_signed_receipt_with_every_nodes_statements() {
    let hello = sample("hello");
    let net = Net::with(&[1, 1], |i, c| {
        if i == 2 {
            c.misbehave = Some(shoal_node::compute::Misbehave::WrongResult);
        }
    })
    .await;
    let module = net.add(&hello);
    let mut spec = hello_spec(module, 0, 2);
    spec["redundancy"]["quorum"] = serde_json::json!(2);
    spec["retries"] = serde_json::json!(0);
    let id = submit(net.node(0), &spec).await;
    let jobs = until_ended(net.node(0), std::slice::from_ref(&id), Duration::from_secs(60)).await;
    assert_eq!(jobs[0].state, JobState::Failed);
    let req = net.node(0);
    until(req, Duration::from_secs(20), "the failure receipt", |n| n.db().job(&id).unwrap().unwrap().receipt.is_some())
        .await;
    let cid = req.db().job(&id).unwrap().unwrap().receipt.unwrap();
    let bytes = shoal_storage::BlockStore::get(&*net.members[0].store, &cid).unwrap();
    let v = shoal_scheduler::receipt::verify(bytes.data(), Some(&cid), None).unwrap();
    assert_eq!(v.result, None);
    assert!(v.failure.as_deref().unwrap_or_default().contains("no consensus"), "{:?}", v.failure);
    let r: shoal_scheduler::receipt::Receipt = serde_json::from_slice(bytes.data()).unwrap();
    assert_eq!(r.executions.len(), 2, "both nodes' signed statements");
    let results: std::collections::BTreeSet<_> = r.executions.iter().map(|a| a.result.clone()).collect();
    assert_eq!(results.len(), 2, "the two differing results, each signed by its node");
    // A failed job's receipt is never a cache answer: the job runs again.
    let again = submit(req, &spec).await;
    assert!(req.db().job(&again).unwrap().unwrap().cached.is_none());
}

/// A cache hit from another requester: node 1 runs a job as its requester;
/// its announcement names the job's CID in its receipts filter; the same
/// job submitted to node 0 then completes from node 1's receipt (fetched,
/// verified and pinned with the result), with no execution anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_hit_can_come_from_another_requester() {
    let hello = sample("hello");
    let net = Net::new(&[1]).await;
    let module = net.add(&hello);
    let (other, req) = (net.node(1).clone(), net.node(0).clone());
    // Node 1 needs the module to run the job as requester.
    {
        let added = Importer::new(&*net.members[1].store, Options::default()).add_bytes(&hello).unwrap();
        shoal_storage::pin::add(&*net.members[1].store, &added.root, PinMode::Recursive).unwrap();
    }
    let spec = hello_spec(module, 42, 1);
    let first = submit(&other, &spec).await;
    let done = until_ended(&other, &[first], Duration::from_secs(30)).await.remove(0);
    assert_eq!(done.state, JobState::Completed);
    let receipt = done.receipt.unwrap();
    let job_cid = shoal_scheduler::receipt::job_cid(&done.spec);
    // Its next announcements name the job.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let named = req.views.lock().unwrap().get(&other.peer).and_then(|v| v.receipts.clone());
        if named.is_some_and(|r| r.contains(&job_cid)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node 1 never announced its receipt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, v) = post(&req, "/v1/jobs", &spec, &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["cached"], serde_json::json!(receipt.to_string()), "{v}");
    let id: JobId = v["id"].as_str().unwrap().parse().unwrap();
    let job = req.db().job(&id).unwrap().unwrap();
    assert_eq!((job.state, job.result, job.cached), (JobState::Completed, done.result, Some(receipt)));
    assert!(req.db().executions(&id).unwrap().is_empty(), "nothing ran");
    // Both are kept here now: the result can be read and the receipt
    // served without node 1.
    assert!(shoal_node::fetch::held(&*net.members[0].store, &done.result.unwrap()));
    assert!(shoal_node::fetch::held(&*net.members[0].store, &receipt));
    // --no-cache runs it.
    let (_, v) = post(&req, "/v1/jobs?cache=false", &spec, &[]).await;
    assert!(v["cached"].is_null(), "{v}");
}

/// Submits a pipeline (JSON) through `node`'s API; returns its id.
async fn submit_pipeline(node: &Arc<Node>, pipeline: &serde_json::Value) -> shoal_scheduler::model::PipelineId {
    let (status, v) = post(node, "/v1/pipelines", pipeline, &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().parse().unwrap()
}

/// Waits until pipeline `id` has ended (with its receipt, if completed).
async fn until_pipeline_ends(
    node: &Arc<Node>,
    id: &shoal_scheduler::model::PipelineId,
) -> shoal_scheduler::flow::PipelineRun {
    until(node, Duration::from_secs(60), "the pipeline's end", |n| {
        n.db().pipeline(id).unwrap().unwrap().state.is_terminal()
    })
    .await;
    node.db().pipeline(id).unwrap().unwrap()
}

/// A 4-step diamond of wordcount jobs (a counts the data; b and c count
/// a's outputs; d counts b's and c's): each step runs once the results it
/// reads exist, with its own redundancy, and the final result is the one
/// the same chain of local runs gives. The pipeline's receipt verifies
/// offline from the requester's store and links every step's receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_diamond_pipeline_completes_with_the_result_of_local_runs_and_one_receipt() {
    let wc = sample("wordcount");
    let net = Net::new(&[2, 2, 2]).await;
    let module = net.add(&wc);
    let data = {
        let store = &net.members[0].store;
        let added = Importer::new(&**store, Options::default()).add_bytes(b"one two three\nfour five\n").unwrap();
        shoal_storage::pin::add(&**store, &added.root, PinMode::Recursive).unwrap();
        added.root
    };
    let m = module.to_string();
    let pipeline = serde_json::json!({ "steps": {
        "a": { "task": { "module": m, "inputs": [{ "cid": data.to_string(), "mount": "/inputs/data.txt" }] } },
        "b": { "task": { "module": m, "inputs": [{ "from": "a", "mount": "/inputs" }] }, "redundancy": { "count": 2 } },
        "c": { "task": { "module": m, "env": { "STEP": "c" }, "inputs": [{ "from": "a", "path": "counts.tsv", "mount": "/inputs/c.tsv" }] }, "redundancy": { "count": 3 } },
        "d": { "task": { "module": m, "inputs": [
            { "from": "b", "path": "counts.tsv", "mount": "/inputs/b.tsv" },
            { "from": "c", "path": "counts.tsv", "mount": "/inputs/c.tsv" } ] } },
    }});
    let req = net.node(0).clone();
    let id = submit_pipeline(&req, &pipeline).await;
    let run = until_pipeline_ends(&req, &id).await;
    let logs: Vec<_> = run
        .steps
        .values()
        .filter_map(|s| s.job.as_ref())
        .flat_map(|j| req.db().executions(j).unwrap())
        .map(|e| (e.stdout, e.stderr))
        .collect();
    assert_eq!(run.state, JobState::Completed, "{:?} {:?} {logs:?}", run.error, run.steps);

    // The same chain, run locally step by step.
    let parsed = shoal_scheduler::pipeline::Pipeline::parse(&pipeline.to_string()).unwrap();
    let store = MemStore::new();
    for root in [module, data] {
        let car = {
            let mut out = Vec::new();
            shoal_storage::car::export(&*net.members[0].store, &root, &mut out).unwrap();
            out
        };
        shoal_storage::car::import(&store, std::io::Cursor::new(car), "test").unwrap();
    }
    let exec = shoal_runtime::Executor::new(shoal_runtime::Config::default()).unwrap();
    let mut local = std::collections::BTreeMap::new();
    for name in parsed.order() {
        let spec = parsed.steps[name].resolve(&local).unwrap();
        let rt = shoal_node::compute::to_runtime(&spec);
        let scratch = tempfile::tempdir().unwrap();
        let result = std::thread::scope(|s| {
            s.spawn(|| shoal_runtime::job::run(&exec, &store, &rt, scratch.path()).unwrap().result).join().unwrap()
        });
        local.insert(name.to_string(), result);
    }
    for (name, step) in &run.steps {
        assert_eq!(step.result, Some(local[name]), "step {name} differs from its local run");
        let job = req.db().job(step.job.as_ref().unwrap()).unwrap().unwrap();
        let execs = req.db().executions(&job.id).unwrap();
        // Each step ran with its own redundancy and quorum.
        assert_eq!(job.spec.redundancy, parsed.steps[name].spec.redundancy);
        let agreeing: std::collections::BTreeSet<_> =
            execs.iter().filter(|e| e.result == job.result).map(|e| e.node.clone()).collect();
        assert!(agreeing.len() >= job.spec.quorum() as usize, "step {name}: {} nodes agreed", agreeing.len());
        // Dependents were submitted only after what they read completed.
        for dep in parsed.deps(name) {
            let dep_job = req.db().job(run.steps[dep].job.as_ref().unwrap()).unwrap().unwrap();
            assert!(job.created_ms >= dep_job.updated_ms, "{name} was submitted before {dep} ended");
        }
    }
    // One CID verifies the whole pipeline, from the requester's store alone.
    let store0 = net.members[0].store.clone();
    let get = |c: &Cid| shoal_storage::BlockStore::get(&*store0, c).ok().map(|b| b.data().to_vec());
    let cid = run.receipt.unwrap();
    let bytes = get(&cid).unwrap();
    let v = shoal_scheduler::pipeline::verify_pipeline(&bytes, Some(&cid), None, &get).unwrap();
    assert_eq!(v.steps.len(), 4);
    assert_eq!(v.steps.iter().find(|(n, _)| n == "d").unwrap().1.result, Some(local["d"]));
}

/// A step whose guest fails fails its dependents, each saying why, while
/// independent steps still run; a cycle, a missing step and a bad spec are
/// refused before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_step_fails_its_dependents_and_bad_pipelines_are_refused() {
    let (hello, exit) = (sample("hello"), sample("exitcode"));
    let net = Net::new(&[2, 2]).await;
    let (h, x) = (net.add(&hello).to_string(), net.add(&exit).to_string());
    let req = net.node(0).clone();
    let pipeline = serde_json::json!({ "steps": {
        "bad": { "task": { "module": x, "args": ["3"] } },
        "after": { "task": { "module": h, "inputs": [{ "from": "bad", "mount": "/in" }] } },
        "last": { "task": { "module": h, "args": ["x"], "inputs": [{ "from": "after", "mount": "/in" }] } },
        "alone": { "task": { "module": h, "args": ["alone"] } },
    }});
    let id = submit_pipeline(&req, &pipeline).await;
    let run = until_pipeline_ends(&req, &id).await;
    assert_eq!(run.state, JobState::Failed);
    assert!(run.receipt.is_none());
    let why = |n: &str| run.steps[n].error.clone().unwrap_or_default();
    assert!(why("bad").contains("exited with code 3"), "{}", why("bad"));
    assert!(why("after").contains("step \"bad\""), "{}", why("after"));
    assert!(why("last").contains("step \"after\""), "{}", why("last"));
    assert!(run.steps["after"].job.is_none() && run.steps["last"].job.is_none(), "dependents never ran");
    assert_eq!(run.steps["alone"].state, shoal_scheduler::flow::StepState::Completed);
    assert!(run.error.as_deref().unwrap_or_default().contains("first: step \"bad\""), "{:?}", run.error);

    let before = req.db().jobs(None, 1000).unwrap().len();
    for (p, expect) in [
        (
            serde_json::json!({ "steps": {
                "a": { "task": { "module": h, "inputs": [{ "from": "b", "mount": "/b" }] } },
                "b": { "task": { "module": h, "inputs": [{ "from": "a", "mount": "/a" }] } } } }),
            "cycle",
        ),
        (
            serde_json::json!({ "steps": { "a": { "task": { "module": h, "inputs": [{ "from": "z", "mount": "/z" }] } } } }),
            "\"z\"",
        ),
        (
            serde_json::json!({ "steps": { "a": { "task": { "module": h }, "redundancy": { "count": 99 } } } }),
            "step \"a\"",
        ),
    ] {
        let (status, v) = post(&req, "/v1/pipelines", &p, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["error"].as_str().unwrap().contains(expect), "{expect}: {v}");
    }
    assert_eq!(req.db().jobs(None, 1000).unwrap().len(), before, "nothing ran");
}

/// A bare libp2p peer (Shoal's network layer alone, no node behind it):
/// a Bitswap peer as a test wants it to behave.
async fn raw_peer(
    dial: &Multiaddr,
) -> (shoal_scheduler::net::Client, tokio::sync::mpsc::Receiver<shoal_scheduler::net::Event>) {
    let cfg = shoal_scheduler::net::Config::default();
    let swarm = shoal_scheduler::net::memory_swarm(Keypair::generate_ed25519(), &cfg).unwrap();
    let (client, event_loop, events) = shoal_scheduler::net::new(swarm, &cfg);
    tokio::spawn(event_loop.run(std::future::pending()));
    client.dial(dial.clone()).await.unwrap();
    (client, events)
}

/// Waits for a Bitswap message carrying a block, for at most `within`.
async fn block_from(
    events: &mut tokio::sync::mpsc::Receiver<shoal_scheduler::net::Event>,
    within: Duration,
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv()).await.expect("no block came").expect("events");
        if let shoal_scheduler::net::Event::Bitswap { message, .. } = ev {
            if let Some(b) = message.payload.into_iter().next() {
                return b.data;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bitswap_peer_flooding_wants_is_bounded_and_others_are_still_served() {
    use shoal_scheduler::net::bitswap::message::{Message, WantType};
    let net = Net::new(&[]).await;
    let node = net.node(0).clone();
    let root = net.add(b"pinned and served");
    let (flooder, mut flooder_events) = raw_peer(&net.members[0].addr).await;
    let (honest, mut honest_events) = raw_peer(&net.members[0].addr).await;
    let peer = node.peer;
    // 40 wantlists of 50,000 wants each (2 MB frames, under the 4 MiB
    // cap) for blocks nobody has: two million wants.
    const MESSAGES: usize = 40;
    const WANTS: usize = 50_000;
    for m in 0..MESSAGES {
        let mut msg = Message::default();
        for i in 0..WANTS {
            let junk = shoal_storage::Block::new(
                shoal_storage::CidVersion::V1,
                shoal_storage::block::RAW,
                ((m * WANTS + i) as u64).to_le_bytes().to_vec(),
            );
            msg.push_want(junk.cid(), WantType::Have, false, 1);
        }
        flooder.bitswap_send(peer, msg).await.unwrap();
    }
    // Another peer's want is answered at once, whatever the flood.
    let mut want = Message::default();
    want.push_want(&root, WantType::Block, true, 1);
    let started = tokio::time::Instant::now();
    honest.bitswap_send(peer, want.clone()).await.unwrap();
    let data = block_from(&mut honest_events, Duration::from_secs(10)).await;
    let block = shoal_storage::Block::verified(root, data).expect("the block named by its cid");
    assert_eq!(block.cid(), &root);
    let honest_wait = started.elapsed();
    // The flooder's own ledger held at most its bound: every message past
    // it was dropped, counted.
    // Messages are taken in concurrently: wait (bounded) for the last.
    // One dropped whole under load counts as a dropped message instead.
    let bound = shoal_scheduler::net::bitswap::ledger::Config::default().max_wants_per_peer;
    let stats = &node.metrics.bitswap;
    let least = || (MESSAGES as u64 - stats.dropped.get()) * (WANTS - bound) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stats.wants_dropped.get() < least() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dropped = stats.wants_dropped.get();
    assert!(dropped >= least(), "{dropped} wants dropped, expected at least {}", least());
    // And the flooder itself is still served once its junk is answered.
    flooder.bitswap_send(peer, want).await.unwrap();
    let data = block_from(&mut flooder_events, Duration::from_secs(20)).await;
    assert_eq!(shoal_storage::Block::verified(root, data).unwrap().cid(), &root);
    eprintln!("honest want answered in {honest_wait:?} during a flood of {} wants", MESSAGES * WANTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bitswap_peer_sending_blocks_nobody_wanted_is_banned_and_an_honest_one_is_not() {
    use shoal_scheduler::net::bitswap::message::Message;
    use shoal_scheduler::net::bitswap::score;
    use shoal_storage::{block::RAW, Block, CidVersion};
    let net = Net::new(&[]).await;
    let node = net.node(0).clone();
    let addr = net.members[0].addr.clone();
    let (honest, mut honest_events) = raw_peer(&addr).await;
    let (liar, _liar_events) = raw_peer(&addr).await;
    let wanted = Block::new(CidVersion::V1, RAW, b"the block the node fetches".to_vec());
    // The node fetches `wanted` from the honest peer, which answers the
    // first want it sees with the block, twice: the second copy crosses
    // the node's cancel and is not held against it.
    let fetch = {
        let (node, cid, peers) = (node.clone(), *wanted.cid(), vec![honest.local_peer_id()]);
        tokio::spawn(async move { node.bitswap.fetch_from(&[cid], peers, Duration::from_secs(20)).await })
    };
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), honest_events.recv()).await.unwrap().unwrap();
        if let shoal_scheduler::net::Event::Bitswap { message, .. } = ev {
            if message.wantlist.is_some() {
                break;
            }
        }
    }
    let mut answer = Message::default();
    answer.push_block(&wanted);
    honest.bitswap_send(node.peer, answer.clone()).await.unwrap();
    let got = fetch.await.unwrap().expect("the honest peer's block is taken");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].cid(), wanted.cid());
    honest.bitswap_send(node.peer, answer).await.unwrap();
    // The liar sends blocks nobody asked for, one per message, past its
    // allowance.
    let allowance = score::Config::default().max_junk as usize;
    for i in 0..allowance + 8 {
        let mut m = Message::default();
        m.push_block(&Block::new(CidVersion::V1, RAW, format!("junk {i}").into_bytes()));
        if liar.bitswap_send(node.peer, m).await.is_err() {
            break; // cut off already
        }
    }
    let stats = &node.metrics.bitswap;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stats.peers_banned.get() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.peers_banned.get(), 1, "the liar is banned, the honest peer is not");
    assert!(stats.junk.get() > allowance as u64, "{} junk items counted", stats.junk.get());
    assert_eq!(stats.blocks_received.get(), 2, "the wanted block and its late copy count as received, no junk");
    assert!(stats.junk.get() <= (allowance + 8) as u64, "only the liar's blocks are junk");
    // Its connection is closed, and it cannot come back for the ban.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.client.peers().await.unwrap().contains(&liar.local_peer_id()) {
        assert!(tokio::time::Instant::now() < deadline, "the liar is still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (The dial may look established from the liar's side before the node
    // closes it.)
    let _ = liar.dial(addr.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!node.client.peers().await.unwrap().contains(&liar.local_peer_id()), "a banned peer is refused");
    // The honest peer is still connected and served.
    assert!(node.client.peers().await.unwrap().contains(&honest.local_peer_id()));
    let root = net.add(b"pinned, served to the honest peer");
    let mut want = Message::default();
    want.push_want(&root, shoal_scheduler::net::bitswap::message::WantType::Block, true, 1);
    honest.bitswap_send(node.peer, want).await.unwrap();
    let data = block_from(&mut honest_events, Duration::from_secs(10)).await;
    assert_eq!(Block::verified(root, data).unwrap().cid(), &root);
}
