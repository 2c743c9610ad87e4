//! Network benchmark (`make bench`): loopback networks of real `shoal
//! node` processes.
//!
//! Prints, measured side by side in one run:
//! - `latency`: on 3 nodes of 16 slots running a trivial job, the median
//!   submit-to-result latency with redundancy 1 and 3, and their ratio
//!   (goal: r3 under 50 ms, ratio at most 1.5). Redundancy 1 is measured
//!   twice, on another node and on the requester itself (no network at
//!   all): which one an unconstrained job gets depends on node ids, so each
//!   is pinned with a label constraint; then sustained throughput with many
//!   jobs in flight (goal: 200 jobs/s) and the resident memory of a
//!   requester holding 10,000 queued jobs;
//! - `burst`: on 3 nodes of 2 slots, the throughput of distinct
//!   redundancy-3 jobs submitted all at once (1,000 to one node) against
//!   the same number fed steadily (a few in flight at a time), and their
//!   ratio (goal: burst at least 0.80 of steady);
//! - `locality`: a job reading a 256 MiB input pushed to one of two
//!   compute nodes, against the same job when the input is only on the
//!   (`--no-compute`) requester, so that the compute node must fetch it:
//!   wall times, their ratio and the node that ran each.
//!
//! - `pipeline`: on 3 nodes, a 10-step chain pipeline (each step counts
//!   the words of the previous step's outputs): its submit-to-receipt time
//!   against the sum of its steps' own times (each job's submission to
//!   completion, as its requester records it), and against the same chain
//!   driven by a client that submits each job once the previous one ended.
//!
//! `SHOAL_BENCH=burst,locality` runs only the scenarios named (default:
//! all); `--quick` runs smaller samples. Every loop is bounded; nodes listen
//! on loopback only.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct NodeProc {
    child: Child,
    api: String,
    peer: String,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(home: &Path, extra: &[&str]) -> NodeProc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--home")
        .arg(home)
        .arg("node")
        .args(extra)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn shoal node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let field = |k: &str| line.split_whitespace().find_map(|p| p.strip_prefix(k)).unwrap_or_default().to_owned();
    NodeProc { api: field("api="), peer: field("peer="), child }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// Submits `spec` to run (never answered from the result cache: the
/// benchmarks measure runs; `submit_cached` measures the cache).
fn submit(a: &ureq::Agent, api: &str, spec: &Value) -> String {
    let mut r = a.post(format!("{api}/v1/jobs?cache=false")).send_json(spec).unwrap();
    let v: Value = r.body_mut().read_json().unwrap();
    v["id"].as_str().unwrap_or_else(|| panic!("submit failed: {v}")).to_owned()
}

/// Submits `spec`, which the node may answer from its result cache.
fn submit_cached(a: &ureq::Agent, api: &str, spec: &Value) -> String {
    let mut r = a.post(format!("{api}/v1/jobs")).send_json(spec).unwrap();
    let v: Value = r.body_mut().read_json().unwrap();
    v["id"].as_str().unwrap_or_else(|| panic!("submit failed: {v}")).to_owned()
}

fn wait(a: &ureq::Agent, api: &str, id: &str) -> Value {
    for _ in 0..10 {
        let mut r = a.get(format!("{api}/v1/jobs/{id}/wait?timeout=60")).call().unwrap();
        let v: Value = r.body_mut().read_json().unwrap();
        let state = v["job"]["state"].as_str().unwrap_or("").to_owned();
        if matches!(state.as_str(), "completed" | "failed" | "cancelled") {
            assert_eq!(state, "completed", "{v}");
            return v;
        }
    }
    panic!("job {id} did not finish in 10 minutes");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The scenarios `SHOAL_BENCH` can name.
const SCENARIOS: [&str; 4] = ["latency", "burst", "locality", "pipeline"];

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let picked = std::env::var("SHOAL_BENCH").unwrap_or_default();
    let picked: Vec<&str> = picked.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    for p in &picked {
        assert!(SCENARIOS.contains(p), "SHOAL_BENCH: unknown scenario {p:?} (known: {})", SCENARIOS.join(", "));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new("make").arg("-C").arg(root.join("samples")).stdout(Stdio::null()).status().unwrap();
    assert!(st.success(), "building samples failed");
    for s in SCENARIOS {
        if picked.is_empty() || picked.contains(&s) {
            match s {
                "latency" => latency(&root, quick),
                "burst" => burst(&root, quick),
                "pipeline" => pipeline(&root, quick),
                _ => locality(&root, quick),
            }
        }
    }
}

/// Waits (at most 30 s) until the node at `api` sees `n` nodes, itself
/// included.
fn wait_nodes(a: &ureq::Agent, api: &str, n: usize) {
    for _ in 0..300 {
        let mut r = a.get(format!("{api}/v1/nodes")).call().unwrap();
        let v: Value = r.body_mut().read_json().unwrap();
        if v["nodes"].as_array().map_or(0, Vec::len) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the node at {api} did not see {n} nodes in 30 s");
}

/// Latency with redundancy 1 and 3, throughput with 1000 jobs in flight,
/// and a requester's memory with 10,000 queued jobs.
fn latency(root: &Path, quick: bool) {
    let hello = root.join("samples/build/hello.wasm");
    let dir = tempfile::tempdir().unwrap();
    let n0 = start(&dir.path().join("n0"), &["--slots", "16", "--label", "bench=n0"]);
    let n1 = start(&dir.path().join("n1"), &["--slots", "16", "--label", "bench=n1", "--peer", &n0.peer]);
    let n2 = start(&dir.path().join("n2"), &["--slots", "16", "--label", "bench=n2", "--peer", &n0.peer]);
    let a = agent();
    wait_nodes(&a, &n0.api, 3);
    // Upload the module once through the CLI; later jobs name it by CID.
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_HOME", dir.path().join("cli"))
        .args(["--node", &n0.api, "submit", "--wait", "--wait-timeout", "120s", "--redundancy", "3", "-q"])
        .arg(&hello)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut r = a.get(format!("{}/v1/jobs?limit=1", n0.api)).call().unwrap();
    let v: Value = r.body_mut().read_json().unwrap();
    let module = v["jobs"][0]["spec"]["task"]["module"].as_str().unwrap().to_owned();
    let spec = |count: u32| json!({ "task": { "module": module }, "redundancy": { "count": count } });
    let on = |node: &str| json!({ "task": { "module": module }, "redundancy": { "count": 1 }, "constraints": [format!("bench={node}")] });

    println!("network: 3 nodes on loopback, trivial job (hello.wasm)");
    // 200 rounds (~1 s): medians of 40 moved the ratio by ±0.05 between runs.
    let rounds = if quick { 10 } else { 200 };
    let specs = [on("n1"), on("n0"), spec(3)];
    let mut lat = [Vec::new(), Vec::new(), Vec::new()];
    // Interleaved so that all see the same machine noise.
    for _ in 0..rounds {
        for (i, spec) in specs.iter().enumerate() {
            let t = Instant::now();
            let id = submit(&a, &n0.api, spec);
            wait(&a, &n0.api, &id);
            lat[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let [remote, local, r3] = lat.map(median);
    println!(
        "  submit-to-result latency, median of {rounds}: redundancy 1 on another node {remote:.1} ms, \
         on the requester itself {local:.1} ms; redundancy 3 {r3:.1} ms"
    );
    println!(
        "  redundancy 3 / redundancy 1 on another node: {:.2}x (goal <= 1.5x; r3 goal < 50 ms; Bacalhau no-op ~630 ms)",
        r3 / remote
    );
    println!("  redundancy 3 / redundancy 1 on the requester itself (no network): {:.2}x", r3 / local);

    // The result cache: the same redundancy-3 job again, answered from the
    // verified receipt of its first run (interleaved with runs of it).
    let first = submit(&a, &n0.api, &spec(3));
    wait(&a, &n0.api, &first);
    let (mut hit, mut run) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let id = submit_cached(&a, &n0.api, &spec(3));
        let v = wait(&a, &n0.api, &id);
        hit.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(v["job"]["cached"].is_string(), "not answered from the cache: {v}");
        let t = Instant::now();
        let id = submit(&a, &n0.api, &spec(3));
        wait(&a, &n0.api, &id);
        run.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Verifying a redundancy-3 receipt offline (per execution that voted:
    // two node signatures and a commitment opened; and the requester's
    // signature): a job whose quorum is all three, so that the three
    // executions vote.
    let all_three = json!({ "task": { "module": module }, "redundancy": { "count": 3, "quorum": 3 } });
    let id = submit(&a, &n0.api, &all_three);
    let v = wait(&a, &n0.api, &id);
    let receipt = v["job"]["receipt"].as_str().unwrap().to_owned();
    let mut r = a.get(format!("{}/v1/cat/{receipt}", n0.api)).call().unwrap();
    let bytes = r.body_mut().read_to_vec().unwrap();
    let cid: shoal_storage::Cid = receipt.parse().unwrap();
    let n = if quick { 100 } else { 2000 };
    let t = Instant::now();
    for _ in 0..n {
        shoal_scheduler::receipt::verify(&bytes, Some(&cid), None).unwrap();
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let execs = serde_json::from_slice::<Value>(&bytes).unwrap()["executions"].as_array().map_or(0, Vec::len);
    println!("  receipt verification ({execs} executions, {} bytes): {per:.0} us each", bytes.len());
    let (hit, run) = (median(hit), median(run));
    println!(
        "  result cache, median of {rounds}: a cache hit (receipt verified) {hit:.2} ms, the same redundancy-3 job run \
         {run:.1} ms: {:.1}x faster (goal < 5 ms)",
        run / hit
    );

    // Throughput: many jobs in flight, submitted from 8 clients.
    let jobs = if quick { 200 } else { 1000 };
    let t = Instant::now();
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let a = agent();
                let api = n0.api.clone();
                let sp = spec(1);
                s.spawn(move || (0..jobs / 8).map(|_| submit(&a, &api, &sp)).collect::<Vec<_>>())
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    for id in &ids {
        wait(&a, &n0.api, id);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "  throughput, {} jobs in flight (redundancy 1): {:.0} jobs/s (goal >= 200; Bacalhau < 1)",
        ids.len(),
        ids.len() as f64 / secs
    );
    for (i, n) in [&n0, &n1, &n2].iter().enumerate() {
        println!("  node {i} rss after the runs: {} MiB", rss_kib(n.child.id()) / 1024);
    }
    drop((n1, n2));

    // A requester alone with 10,000 jobs nobody can run.
    let q = start(&dir.path().join("queue"), &["--no-compute"]);
    // It must hold the module: a node refuses jobs over data it cannot find.
    let mut r = a
        .post(format!("{}/v1/files?name=hello.wasm", q.api))
        .header("X-Shoal-Request", "1")
        .send(&std::fs::read(&hello).unwrap()[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.body_mut().read_to_string().unwrap_or_default());
    let before = rss_kib(q.child.id());
    let queued = if quick { 2_000 } else { 10_000 };
    let sp = json!({ "task": { "module": module }, "constraints": ["zone=nowhere"], "timeouts": { "queue": "1h", "total": "2h" } });
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let api = q.api.clone();
            let sp = sp.clone();
            s.spawn(move || {
                let a = agent();
                for _ in 0..queued / 8 {
                    submit(&a, &api, &sp);
                }
            });
        }
    });
    let submit_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(q.child.id());
    println!(
        "  requester with {queued} queued jobs: rss {} MiB (idle {} MiB); submitted at {:.0} jobs/s",
        after / 1024,
        before / 1024,
        queued as f64 / submit_secs
    );
    drop(n0);
}

/// Uploads the file at `path` to the node (`POST /v1/files`, which pins
/// it there) and returns its CID.
fn upload(a: &ureq::Agent, api: &str, path: &Path, name: &str) -> String {
    let file = std::fs::File::open(path).unwrap();
    let mut r = a.post(format!("{api}/v1/files?name={name}")).header("X-Shoal-Request", "1").send(file).unwrap();
    let status = r.status().as_u16();
    let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "uploading {} to {api}: {v}", path.display());
    v["cid"].as_str().unwrap_or_else(|| panic!("uploading {}: {v}", path.display())).to_owned()
}

/// Waits until job `id` has ended, at most until `deadline`; panics with
/// its id and state unless it completed and its guest succeeded.
fn wait_completed(a: &ureq::Agent, api: &str, id: &str, deadline: Instant) -> Value {
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).as_secs().clamp(1, 60);
        let mut r = a.get(format!("{api}/v1/jobs/{id}/wait?timeout={left}")).call().unwrap();
        let v: Value = r.body_mut().read_json().unwrap();
        let state = v["job"]["state"].as_str().unwrap_or("?");
        if matches!(state, "completed" | "failed" | "cancelled") {
            assert_eq!(state, "completed", "job {id} ended in state {state}, not completed: {v}");
            let outcome = &v["job"]["outcome"];
            assert_eq!(outcome, "succeeded", "job {id} completed but its guest did not succeed ({outcome}): {v}");
            return v;
        }
        if Instant::now() >= deadline {
            let waiting = v["job"]["waiting"].as_str().unwrap_or("");
            panic!("job {id} still in state {state} at the deadline ({waiting}): {v}");
        }
    }
}

/// Executions and declined bids over many completed jobs.
#[derive(Default, Clone, Copy)]
struct ExecCount {
    jobs: usize,
    executions: usize,
    rejected: usize,
    lost: usize,
}

impl ExecCount {
    fn add(&mut self, v: &Value) {
        let execs = v["executions"].as_array().map(Vec::as_slice).unwrap_or_default();
        let count = |s: &str| execs.iter().filter(|e| e["state"] == s).count();
        self.jobs += 1;
        self.executions += execs.len();
        self.rejected += count("rejected");
        self.lost += count("lost");
    }

    fn merge(self, o: ExecCount) -> ExecCount {
        ExecCount {
            jobs: self.jobs + o.jobs,
            executions: self.executions + o.executions,
            rejected: self.rejected + o.rejected,
            lost: self.lost + o.lost,
        }
    }
}

impl std::fmt::Display for ExecCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per = |n: usize| n as f64 / self.jobs.max(1) as f64;
        write!(
            f,
            "{:.2} executions per job, {:.2} bids declined per job, {} lost",
            per(self.executions),
            per(self.rejected),
            self.lost
        )
    }
}

/// How many jobs the steady feed keeps in flight: the jobs the 6 slots
/// hold at once (2 of redundancy 3) times 3, so that a node finishing an
/// execution always finds another queued.
const STEADY_IN_FLIGHT: usize = 6;
/// Clients submitting the burst at once.
const BURST_CLIENTS: usize = 8;

/// Burst against steady submission: 3 nodes of 2 slots each, distinct
/// redundancy-3 jobs (every job takes a slot on each node). One round of
/// each: the burst drains slowly enough that more would not fit the
/// deadline.
fn burst(root: &Path, quick: bool) {
    let hello = root.join("samples/build/hello.wasm");
    let dir = tempfile::tempdir().unwrap();
    let n0 = start(&dir.path().join("n0"), &["--slots", "2"]);
    let n1 = start(&dir.path().join("n1"), &["--slots", "2", "--peer", &n0.peer]);
    let n2 = start(&dir.path().join("n2"), &["--slots", "2", "--peer", &n0.peer]);
    let a = agent();
    wait_nodes(&a, &n0.api, 3);
    let module = upload(&a, &n0.api, &hello, "hello.wasm");
    // Distinct jobs (their arguments differ), so no two share a result.
    // The burst's last jobs wait in the queue longer than the default
    // `timeouts.queue` (5 min), which would fail them.
    let spec = |kind: &str, i: usize| {
        let args = [kind.to_owned(), i.to_string()];
        json!({
            "task": { "module": module, "args": args },
            "redundancy": { "count": 3 },
            "timeouts": { "queue": "20m", "total": "30m" },
        })
    };
    let jobs = if quick { 200 } else { 1000 };
    let limit = Duration::from_secs(600);
    let deadline = Instant::now() + limit;
    // Every node fetches and compiles the module before anything is timed.
    for i in 0..4 {
        let id = submit(&a, &n0.api, &spec("warm-up", i));
        wait_completed(&a, &n0.api, &id, deadline);
    }
    println!(
        "burst vs steady: 3 nodes of 2 slots on loopback, {jobs} distinct redundancy-3 jobs (hello.wasm) each way, \
         all submitted to one node; at most {} s in all",
        limit.as_secs()
    );

    // Steady: STEADY_IN_FLIGHT clients, each submitting its next job once
    // its last one completed.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    let steady_execs = std::thread::scope(|s| {
        let hs: Vec<_> = (0..STEADY_IN_FLIGHT)
            .map(|_| {
                s.spawn(|| {
                    let a = agent();
                    let mut c = ExecCount::default();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= jobs {
                            return c;
                        }
                        let id = submit(&a, &n0.api, &spec("steady", i));
                        c.add(&wait_completed(&a, &n0.api, &id, deadline));
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).fold(ExecCount::default(), ExecCount::merge)
    });
    let steady_secs = t.elapsed().as_secs_f64();
    assert_eq!(steady_execs.jobs, jobs);
    let steady = jobs as f64 / steady_secs;
    println!(
        "  steady, at most {STEADY_IN_FLIGHT} jobs in flight: {steady:.0} jobs/s ({jobs} in {steady_secs:.2} s); \
         {steady_execs}"
    );

    // Burst: every job submitted as fast as the node takes them, from
    // BURST_CLIENTS clients.
    let epoch_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let t0_ms = epoch_ms();
    let t = Instant::now();
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..BURST_CLIENTS)
            .map(|k| {
                let spec = &spec;
                let api = &n0.api;
                s.spawn(move || {
                    let a = agent();
                    (k..jobs).step_by(BURST_CLIENTS).map(|i| submit(&a, api, &spec("burst", i))).collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let submit_secs = t.elapsed().as_secs_f64();
    assert_eq!(ids.len(), jobs);
    let mut burst_execs = ExecCount::default();
    // When each job completed, as its requester recorded it (same clock).
    let mut done = Vec::new();
    for id in &ids {
        let v = wait_completed(&a, &n0.api, id, deadline);
        burst_execs.add(&v);
        done.push(v["job"]["updated_ms"].as_u64().unwrap_or(t0_ms).saturating_sub(t0_ms) as f64 / 1e3);
    }
    let burst_secs = t.elapsed().as_secs_f64();
    done.sort_by(f64::total_cmp);
    let quarters: Vec<String> = (1..=4).map(|q| format!("{:.1} s", done[jobs * q / 4 - 1])).collect();
    let burst = jobs as f64 / burst_secs;
    println!(
        "  burst, {jobs} submitted at once: {burst:.0} jobs/s ({burst_secs:.2} s; all accepted after \
         {submit_secs:.2} s; a quarter, half, three quarters, all completed after {}); {burst_execs}",
        quarters.join(", ")
    );
    let ratio = burst / steady;
    println!("  burst / steady: {ratio:.2} (goal >= 0.80: {})", if ratio >= 0.8 { "met" } else { "NOT met" });
    for (i, n) in [&n0, &n1, &n2].iter().enumerate() {
        println!("  node {i} rss after the runs: {} MiB", rss_kib(n.child.id()) / 1024);
    }
}

/// Writes `bytes` pseudo-random bytes (xorshift64 from `seed`) to `path`:
/// nothing in them deduplicates or compresses.
fn write_random(path: &Path, bytes: usize, seed: u64) {
    use std::io::Write;
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut f = std::fs::File::create(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..bytes.div_ceil(buf.len()) {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.set_len(bytes as u64).unwrap();
}

/// The peer id of a node (the last part of its multiaddr).
fn peer_id(n: &NodeProc) -> &str {
    n.peer.rsplit('/').next().unwrap()
}

/// The size of the locality scenario's input.
const LOCALITY_INPUT: usize = 256 << 20;

/// One timed job over a large input: where it ran and how long it took.
struct Placed {
    node: String,
    /// Submit call (the requester makes sure the data exists first).
    submit: f64,
    /// Submit to completed, as the client sees it.
    total: f64,
    /// The execution on its node: started to committed (fetch and run).
    exec: f64,
    /// The guest alone, as its node reports it.
    guest: f64,
}

/// Data locality: a job over a 256 MiB input held by one of two compute
/// nodes, against the same job over an input that only the `--no-compute`
/// requester holds.
fn locality(root: &Path, quick: bool) {
    let module_path = root.join("samples/build/sha256sum.wasm");
    let rounds = if quick { 1 } else { 3 };
    let a = agent();
    println!(
        "locality: a requester (--no-compute) and 2 compute nodes on loopback; sha256sum.wasm over a {} MiB \
         input (pseudo-random bytes) held by one compute node (local) or only by the requester \
         (remote); {rounds} round(s), a fresh network and fresh inputs each",
        LOCALITY_INPUT >> 20
    );
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let req = start(&dir.path().join("requester"), &["--no-compute"]);
        let c1 = start(&dir.path().join("c1"), &["--peer", &req.peer]);
        let c2 = start(&dir.path().join("c2"), &["--peer", &req.peer]);
        wait_nodes(&a, &req.api, 3);
        let deadline = Instant::now() + Duration::from_secs(600);
        let module = upload(&a, &req.api, &module_path, "sha256sum.wasm");
        // Both compute nodes fetch and compile the module first.
        let tiny = dir.path().join("tiny");
        std::fs::write(&tiny, "warm-up\n").unwrap();
        let tiny = upload(&a, &req.api, &tiny, "tiny");
        let job = |cid: &str, count: u32| {
            json!({
                "task": { "module": module, "inputs": [{ "cid": cid, "mount": "/inputs/data.bin" }], "limits": { "timeout": "5m" } },
                "redundancy": { "count": count },
            })
        };
        let id = submit(&a, &req.api, &job(&tiny, 2));
        wait_completed(&a, &req.api, &id, deadline);
        // The data goes to the compute node that the order of node ids
        // would pass over, so that only locality can pick it.
        let (holder, other) = if peer_id(&c1) > peer_id(&c2) { (&c1, &c2) } else { (&c2, &c1) };
        let name = |id: &str| {
            if id == peer_id(&c1) {
                "c1"
            } else if id == peer_id(&c2) {
                "c2"
            } else if id == peer_id(&req) {
                "the requester"
            } else {
                "an unknown node"
            }
        };
        let holder_name = name(peer_id(holder));
        // Alternate the order, so that neither case always runs first.
        let cases = if round % 2 == 0 { [true, false] } else { [false, true] };
        for is_local in cases {
            let data = dir.path().join("data.bin");
            write_random(&data, LOCALITY_INPUT, ((round as u64) << 1) | u64::from(is_local));
            let on = if is_local { holder } else { &req };
            let t = Instant::now();
            let cid = upload(&a, &on.api, &data, "data.bin");
            let push_secs = t.elapsed().as_secs_f64();
            if is_local {
                // Its holds filter is rebuilt every 5 s and announced.
                let t = Instant::now();
                let v = loop {
                    let mut r = a.get(format!("{}/v1/dags/{cid}", req.api)).call().unwrap();
                    let v: Value = r.body_mut().read_json().unwrap();
                    if v["held_by"].as_array().unwrap().iter().any(|n| n == peer_id(holder)) {
                        break v;
                    }
                    assert!(t.elapsed() < Duration::from_secs(60), "the requester never learnt where {cid} is: {v}");
                    std::thread::sleep(Duration::from_millis(100));
                };
                assert!(!v["held_by"].as_array().unwrap().iter().any(|n| n == peer_id(other)), "{v}");
            }
            let t = Instant::now();
            let id = submit(&a, &req.api, &job(&cid, 1));
            let submit = t.elapsed().as_secs_f64();
            let v = wait_completed(&a, &req.api, &id, deadline);
            let total = t.elapsed().as_secs_f64();
            // The execution that gave the result.
            let execs = v["executions"].as_array().unwrap();
            let e = execs
                .iter()
                .find(|e| matches!(e["state"].as_str(), Some("completed" | "revealed")))
                .unwrap_or_else(|| panic!("job {id} completed with no completed execution: {v}"));
            let at = |state: &str| {
                e["timeline"].as_array().unwrap().iter().find(|s| s["state"] == state).and_then(|s| s["ms"].as_u64())
            };
            let started = at("running").unwrap_or_else(|| e["created_ms"].as_u64().unwrap());
            let ended =
                at("committed").or_else(|| at("completed")).unwrap_or_else(|| e["updated_ms"].as_u64().unwrap());
            // The guest's digest is the input's.
            let out = Command::new("sha256sum").arg(&data).output().unwrap();
            let digest = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned();
            let stdout = e["stdout"].as_str().unwrap_or_default();
            assert!(stdout.starts_with(&format!("{digest}  data.bin")), "job {id}: {stdout:?}, expected {digest}");
            let p = Placed {
                node: name(e["node"].as_str().unwrap_or_default()).to_owned(),
                submit,
                total,
                exec: ended.saturating_sub(started) as f64 / 1e3,
                guest: e["meta"]["wall_ms"].as_f64().unwrap_or(f64::NAN) / 1e3,
            };
            println!(
                "  round {}, {}: input uploaded to {} in {push_secs:.1} s; ran on {}{}; submit {:.2} s, \
                 submit to completed {:.2} s, execution {:.2} s (guest {:.2} s), {} execution(s)",
                round + 1,
                if is_local { "local" } else { "remote" },
                if is_local { holder_name } else { "the requester" },
                p.node,
                if is_local && p.node != holder_name { " (NOT where the data is)" } else { "" },
                p.submit,
                p.total,
                p.exec,
                p.guest,
                execs.len()
            );
            (if is_local { &mut local } else { &mut remote }).push(p);
            std::fs::remove_file(&data).unwrap();
        }
        drop((c1, c2, req));
    }
    let med = |v: &[Placed], f: fn(&Placed) -> f64| median(v.iter().map(f).collect());
    let nodes = |v: &[Placed]| v.iter().map(|p| p.node.as_str()).collect::<Vec<_>>().join(", ");
    for (what, v) in [("local (input on the compute node)", &local), ("remote (input on the requester only)", &remote)]
    {
        println!(
            "  {what}, median of {rounds}: submit to completed {:.2} s (submit {:.2} s, execution {:.2} s, guest \
             {:.2} s); ran on: {}",
            med(v, |p| p.total),
            med(v, |p| p.submit),
            med(v, |p| p.exec),
            med(v, |p| p.guest),
            nodes(v)
        );
    }
    println!(
        "  remote / local: submit to completed {:.2}x, execution on the node {:.2}x",
        med(&remote, |p| p.total) / med(&local, |p| p.total),
        med(&remote, |p| p.exec) / med(&local, |p| p.exec)
    );
}

/// Steps of the chain pipeline.
const CHAIN: usize = 10;

/// A 10-step chain: its time, the sum of its steps' own times, and the
/// same chain driven step by step by a client.
fn pipeline(root: &Path, quick: bool) {
    let dir = tempfile::tempdir().unwrap();
    let n0 = start(&dir.path().join("n0"), &["--slots", "4"]);
    let n1 = start(&dir.path().join("n1"), &["--slots", "4", "--peer", &n0.peer]);
    let n2 = start(&dir.path().join("n2"), &["--slots", "4", "--peer", &n0.peer]);
    let a = agent();
    wait_nodes(&a, &n0.api, 3);
    let module = upload(&a, &n0.api, &root.join("samples/build/wordcount.wasm"), "wc.wasm");
    let data = upload(&a, &n0.api, &root.join("samples/data/texts/tides.txt"), "tides.txt");
    let step = |i: usize| {
        let input = if i == 0 {
            json!({ "cid": data, "mount": "/inputs/tides.txt" })
        } else {
            json!({ "from": format!("s{}", i - 1), "path": "counts.tsv", "mount": "/inputs/counts.tsv" })
        };
        json!({ "task": { "module": module, "inputs": [input] } })
    };
    let steps: serde_json::Map<String, Value> = (0..CHAIN).map(|i| (format!("s{i}"), step(i))).collect();
    let doc = json!({ "steps": steps });
    let rounds = if quick { 3 } else { 15 };
    let (mut total, mut own, mut client, mut gaps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!("pipeline: {CHAIN}-step chain of word counts on 3 nodes (each step reads the previous step's outputs)");
    for _ in 0..rounds {
        // The pipeline, with no step answered from the cache.
        let t = Instant::now();
        let mut r = a.post(format!("{}/v1/pipelines?cache=false", n0.api)).send_json(&doc).unwrap();
        let v: Value = r.body_mut().read_json().unwrap();
        let id = v["id"].as_str().unwrap_or_else(|| panic!("pipeline refused: {v}")).to_owned();
        let run = (0..10)
            .find_map(|_| {
                let mut r = a.get(format!("{}/v1/pipelines/{id}/wait?timeout=60", n0.api)).call().unwrap();
                let run: Value = r.body_mut().read_json().unwrap();
                (run["state"] != "running").then_some(run)
            })
            .expect("the pipeline did not end in 10 minutes");
        total.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(run["state"], "completed", "{run}");
        let mut sum = 0.0;
        let mut ended_at: Option<f64> = None;
        for i in 0..CHAIN {
            let job = wait(&a, &n0.api, run["steps"][format!("s{i}")]["job"].as_str().unwrap());
            let (c, u) = (job["job"]["created_ms"].as_f64().unwrap(), job["job"]["updated_ms"].as_f64().unwrap());
            sum += u - c;
            if let Some(prev) = ended_at {
                gaps.push(c - prev);
            }
            ended_at = Some(u);
        }
        own.push(sum);
        // The same chain, driven by a client: each job submitted once the
        // previous one completed, with its result as input.
        let t = Instant::now();
        let mut prev: Option<String> = None;
        for _ in 0..CHAIN {
            let input = match &prev {
                None => json!({ "cid": data, "mount": "/inputs/tides.txt" }),
                Some(r) => json!({ "cid": r, "path": "outputs/counts.tsv", "mount": "/inputs/counts.tsv" }),
            };
            let id = submit(&a, &n0.api, &json!({ "task": { "module": module, "inputs": [input] } }));
            let v = wait(&a, &n0.api, &id);
            prev = Some(v["job"]["result"].as_str().unwrap().to_owned());
        }
        client.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (total, own, client, gap) = (median(total), median(own), median(client), median(gaps));
    println!(
        "  median of {rounds}: pipeline {total:.1} ms (submit to signed receipt); sum of its steps' own times \
         {own:.1} ms; overhead {:.1} ms ({:.2} ms per step, {:.2}x the sum)",
        total - own,
        (total - own) / CHAIN as f64,
        total / own
    );
    println!("  from a step's completion to the submission of the step that reads it: median {gap:.1} ms");
    println!(
        "  the same chain driven by a client, job after job: {client:.1} ms ({:.2}x the pipeline)",
        client / total
    );
    drop((n0, n1, n2));
}
