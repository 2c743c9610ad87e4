//! Network benchmark (`make bench`): a 3-node loopback network of real
//! `shoal node` processes running a trivial job.
//!
//! Prints, measured side by side in one run:
//! - median submit-to-result latency with redundancy 1 and 3, and their
//!   ratio (goal: r3 under 50 ms, ratio at most 1.5). Redundancy 1 is
//!   measured twice, on another node and on the requester itself (no
//!   network at all): which one an unconstrained job gets depends on node
//!   ids, so each is pinned with a label constraint;
//! - sustained throughput with many jobs in flight (goal: 200 jobs/s);
//! - the resident memory of a requester holding 10,000 queued jobs.
//!
//! Every loop is bounded; nodes listen on loopback only.

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

fn submit(a: &ureq::Agent, api: &str, spec: &Value) -> String {
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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new("make").arg("-C").arg(root.join("samples")).stdout(Stdio::null()).status().unwrap();
    assert!(st.success(), "building samples failed");
    let hello = root.join("samples/build/hello.wasm");
    let dir = tempfile::tempdir().unwrap();
    let n0 = start(&dir.path().join("n0"), &["--slots", "16", "--label", "bench=n0"]);
    let n1 = start(&dir.path().join("n1"), &["--slots", "16", "--label", "bench=n1", "--peer", &n0.peer]);
    let n2 = start(&dir.path().join("n2"), &["--slots", "16", "--label", "bench=n2", "--peer", &n0.peer]);
    let a = agent();
    for _ in 0..300 {
        let mut r = a.get(format!("{}/v1/nodes", n0.api)).call().unwrap();
        let v: Value = r.body_mut().read_json().unwrap();
        if v["nodes"].as_array().map_or(0, Vec::len) == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
