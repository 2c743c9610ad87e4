//! The peer network as users run it: real `shoal node` processes on
//! loopback (ports chosen by the OS), driven through the CLI and the HTTP
//! API. Includes misbehaving nodes (a liar, a crasher) and a requester
//! killed and restarted mid-job.

mod common;
use common::procs::*;
use common::random_bytes;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn submit_wordcount(net: &Net, node: usize, extra: &[&str]) -> Output {
    let input = format!("{}:/inputs", texts().display());
    submit_wait(&net.nodes[node], &net.home("cli"), &[input], extra, &sample("wordcount"))
}

/// Two honest nodes and a third started with `--misbehave how`, all
/// seeing each other; a redundancy-3 word count run on them; returns the
/// network and the misbehaving node's index.
fn honest_pair_and(how: &str, extra: &[&str]) -> (Net, usize) {
    let mut net = Net::new();
    net.add("n0", &[]);
    net.add("n1", &[]);
    let odd = net.add(how, &["--misbehave", how]);
    wait_for_nodes(&net.nodes[0], 3);
    let mut args = vec!["--redundancy", "3"];
    args.extend_from_slice(extra);
    let o = submit_wordcount(&net, 0, &args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().last().unwrap(), local_wordcount());
    (net, odd)
}

/// The id of the newest completed job on `node`.
fn last_completed(node: &NodeProc) -> String {
    let list = get(&format!("{}/v1/jobs?state=completed", node.api)).1;
    list["jobs"][0]["id"].as_str().unwrap().to_owned()
}

fn job(node: &NodeProc, id: &str) -> Value {
    get(&format!("{}/v1/jobs/{id}", node.api)).1
}

#[test]
fn redundancy_three_agrees_with_a_local_run() {
    let mut net = Net::new();
    for i in 0..3 {
        net.add(&format!("n{i}"), &[]);
    }
    wait_for_nodes(&net.nodes[0], 3);
    let o = submit_wordcount(&net, 0, &["--redundancy", "3"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let result = text(&o.stdout).lines().last().unwrap().to_owned();
    assert_eq!(result, local_wordcount(), "the agreed result is what a local run gives");

    // Three executions on three distinct nodes, all agreeing (the job
    // completes once two agree; the third is judged when it commits).
    let id = last_completed(&net.nodes[0]);
    let j = eventually(30, "every execution to be judged", || {
        let j = job(&net.nodes[0], &id);
        let execs = j["executions"].as_array().unwrap();
        execs.iter().all(|e| e["state"] == "completed").then_some(j.clone())
    });
    let execs = j["executions"].as_array().unwrap();
    let nodes: std::collections::BTreeSet<&str> = execs.iter().map(|e| e["node"].as_str().unwrap()).collect();
    assert_eq!(nodes.len(), 3, "{j}");
    assert!(execs.iter().all(|e| e["result"] == Value::String(result.clone())), "{j}");
    // Each node pins its own result, in the background.
    for i in 0..3 {
        eventually(30, "each node to pin its result", || {
            let pins = cli(&net.nodes[i], &net.home(&format!("n{i}")), &["pin", "ls"]);
            text(&pins.stdout).lines().any(|l| l.starts_with(&format!("{result} "))).then_some(())
        });
    }

    // The result is reachable: `shoal cat` from an empty home fetches it
    // through the node.
    let cat = cli(&net.nodes[1], &net.home("reader"), &["cat", &format!("{result}/exitCode")]);
    assert!(cat.status.success(), "{}", text(&cat.stderr));
    assert_eq!(text(&cat.stdout).trim(), "0");
    let d = cli(&net.nodes[0], &net.home("cli"), &["job", "describe", &id]);
    assert!(text(&d.stdout).contains("completed"), "{}", text(&d.stdout));
}

#[test]
fn a_lying_node_is_outvoted_and_recorded() {
    let (net, liar) = honest_pair_and("wrong-result", &[]);
    let liar_id = net.nodes[liar].id();
    // The liar is recorded even when the honest pair agreed before its
    // reveal arrived (its reveal is still asked for).
    let v = eventually(30, "the liar's dissent to be recorded", || {
        let n = cli(&net.nodes[0], &net.home("cli"), &["--json", "nodes"]);
        let v: Value = serde_json::from_slice(&n.stdout).unwrap();
        let rec =
            v["nodes"].as_array().unwrap().iter().find(|n| n["node"]["id"] == Value::String(liar_id.clone()))?.clone();
        (rec["node"]["stats"]["dissented"] == 1).then_some(v)
    });
    let honest = v["nodes"].as_array().unwrap().iter().filter(|n| n["node"]["stats"]["agreed"] == 1).count();
    assert_eq!(honest, 2, "{v}");
    let liar =
        v["nodes"].as_array().unwrap().iter().find(|n| n["node"]["id"] == Value::String(liar_id.clone())).unwrap();
    assert_eq!(liar["node"]["stats"]["agreed"], 0, "{v}");
}

#[test]
fn a_receipt_proves_the_agreed_result_offline_even_with_a_liar() {
    let (net, liar) = honest_pair_and("wrong-result", &[]);
    let liar_id = net.nodes[liar].id();
    let id = last_completed(&net.nodes[0]);
    let j = job(&net.nodes[0], &id);
    let receipt = j["job"]["receipt"].as_str().unwrap_or_else(|| panic!("no receipt: {j}")).to_owned();
    let described = cli(&net.nodes[0], &net.home("cli"), &["job", "describe", &id]);
    assert!(text(&described.stdout).contains(&format!("receipt: {receipt}")), "{}", text(&described.stdout));
    // A reader with nothing but the receipt's block (fetched once).
    let reader = net.home("reader");
    let o = cli(&net.nodes[0], &reader, &["--json", "receipt", "verify", &receipt]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["result"], j["job"]["result"], "{v}");
    let attested: Vec<String> =
        v["attested_by"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()).collect();
    assert!(attested.len() >= 2 && !attested.contains(&liar_id), "{v}");
    // Offline: the node is gone, the block is in the reader's store.
    let offline = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_HOME", &reader)
        .args(["receipt", "verify", &receipt])
        .output()
        .unwrap();
    assert!(offline.status.success(), "{}", text(&offline.stderr));
    // Trusting one honest key only: short of the quorum.
    let keys = net.home("keys");
    std::fs::write(&keys, format!("# one key\n{}\n", attested[0])).unwrap();
    let o = cli(&net.nodes[0], &reader, &["receipt", "verify", &receipt, "--trust-keys", keys.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("among the trusted keys"), "{}", text(&o.stderr));
    std::fs::write(&keys, attested.join("\n")).unwrap();
    let o = cli(&net.nodes[0], &reader, &["receipt", "verify", &receipt, "--trust-keys", keys.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Another CID is not a receipt.
    let o = cli(&net.nodes[0], &reader, &["receipt", "verify", j["job"]["result"].as_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("does not verify"), "{}", text(&o.stderr));
}

#[test]
fn a_straggler_that_never_commits_is_stopped_after_the_job_completed() {
    // Two of three agree: the job completes without waiting for the third,
    // which accepted its bid and then says nothing.
    let (net, silent) = honest_pair_and("silent", &["--execution-timeout", "3s"]);
    let silent_id = net.nodes[silent].id();
    let id = last_completed(&net.nodes[0]);
    // Left to finish, it is stopped once timeouts.execution has passed.
    let e = eventually(30, "the silent execution to be stopped", || {
        let j = job(&net.nodes[0], &id);
        let e = j["executions"].as_array().unwrap().iter().find(|e| e["node"] == Value::String(silent_id.clone()))?;
        (e["state"] == "failed").then(|| e.clone())
    });
    assert!(e["error"].as_str().unwrap().contains("timeouts.execution"), "{e}");
    assert_eq!(job(&net.nodes[0], &id)["job"]["state"], "completed");
}

#[test]
fn a_crashed_node_loses_its_execution_and_the_job_completes_elsewhere() {
    let mut net = Net::new();
    net.add("requester", &["--no-compute"]);
    let crasher = net.add("crasher", &["--misbehave", "crash"]);
    wait_for_nodes(&net.nodes[0], 2);
    let input = format!("{}:/inputs", texts().display());
    let wc = sample("wordcount");
    let o = cli(&net.nodes[0], &net.home("cli"), &["submit", "--input", &input, wc.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let id = text(&o.stdout).trim().to_owned();
    // The crasher takes the execution and dies.
    eventually(30, "the crashing node to exit", || net.nodes[crasher].child.try_wait().unwrap());
    eventually(30, "the execution to be marked lost", || {
        let j = job(&net.nodes[0], &id);
        j["executions"].as_array().unwrap().iter().any(|e| e["state"] == "lost").then_some(())
    });
    // An honest node joins; the job completes there.
    net.add("honest", &[]);
    let w = cli(&net.nodes[0], &net.home("cli"), &["job", "wait", "--timeout", "120s", "-q", &id]);
    assert!(w.status.success(), "{}", text(&w.stderr));
    assert_eq!(text(&w.stdout).trim(), local_wordcount());
}

#[test]
fn a_restarted_requester_resumes_its_jobs() {
    let mut net = Net::new();
    // A fixed port, so compute nodes find the requester again after it
    // restarts (its identity persists in its home).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    net.add("requester", &["--no-compute", "--listen", &listen]);
    net.add("a", &[]);
    net.add("b", &[]);
    wait_for_nodes(&net.nodes[0], 3);
    let o = cli(
        &net.nodes[0],
        &net.home("cli"),
        &["submit", "--redundancy", "2", sample("sleep").to_str().unwrap(), "--", "1500"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let id = text(&o.stdout).trim().to_owned();
    eventually(30, "both executions to run", || {
        let j = job(&net.nodes[0], &id);
        (j["executions"].as_array().unwrap().iter().filter(|e| e["state"] == "running").count() == 2).then_some(())
    });
    net.nodes[0].kill();
    let home = net.nodes[0].home.clone();
    let peer_a = net.nodes[1].peer.clone();
    net.nodes[0] = start_node(&home, &["--no-compute", "--listen", &listen, "--peer", &peer_a]);
    let w = cli(&net.nodes[0], &net.home("cli"), &["job", "wait", "--timeout", "120s", &id]);
    assert!(w.status.success(), "{}{}", text(&w.stdout), text(&w.stderr));
    // `job wait` follows the job's events (from the restarted requester)
    // and says where it is.
    assert!(text(&w.stderr).contains("  completed; executions: 2 completed"), "{}", text(&w.stderr));
    let j = job(&net.nodes[0], &id);
    assert_eq!(j["job"]["state"], "completed", "{j}");
    let cat =
        cli(&net.nodes[0], &net.home("cli"), &["cat", &format!("{}/stdout", j["job"]["result"].as_str().unwrap())]);
    assert_eq!(text(&cat.stdout), "slept 1500 ms\n");
}

#[test]
fn an_unsatisfiable_job_is_queued_until_a_matching_node_joins() {
    let mut net = Net::new();
    net.add("requester", &["--no-compute"]);
    net.add("eu", &["--label", "zone=eu"]);
    wait_for_nodes(&net.nodes[0], 2);
    let o =
        cli(&net.nodes[0], &net.home("cli"), &["submit", "--constraint", "zone=us", sample("hello").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let id = text(&o.stdout).trim().to_owned();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(job(&net.nodes[0], &id)["job"]["state"], "queued");
    net.add("us", &["--label", "zone=us"]);
    let w = cli(&net.nodes[0], &net.home("cli"), &["job", "wait", "--timeout", "120s", "-q", &id]);
    assert!(w.status.success(), "{}", text(&w.stderr));
    let j = job(&net.nodes[0], &id);
    let us = net.nodes[2].id();
    assert_eq!(j["executions"][0]["node"], Value::String(us), "{j}");
}

#[test]
fn an_input_pinned_only_on_the_submitters_node_reaches_the_executor() {
    let mut net = Net::new();
    net.add("requester", &["--no-compute"]);
    net.add("worker", &[]);
    wait_for_nodes(&net.nodes[0], 2);
    // Pinned in the requester's own store (the store is safe to share
    // between processes).
    let add = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["--home", net.nodes[0].home.to_str().unwrap(), "add", "-q", texts().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", text(&add.stderr));
    let cid = text(&add.stdout).trim().to_owned();
    let worker_home = net.nodes[1].home.clone();
    let has = |c: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["--home", worker_home.to_str().unwrap(), "pin", "ls"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout).lines().any(|l| l.starts_with(c))
    };
    assert!(!has(&cid), "the worker must not have the input beforehand");
    let o = submit_wait(&net.nodes[0], &net.home("cli"), &[format!("{cid}:/inputs")], &[], &sample("wordcount"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().last().unwrap(), local_wordcount());
    assert!(has(&cid), "the worker fetched and pinned the input");
}

#[test]
fn bad_specs_and_unknown_jobs_get_clear_errors() {
    let mut net = Net::new();
    net.add("n0", &[]);
    let spec = net.home("bad.yaml");
    std::fs::write(&spec, "task:\n  module: QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o\n  colour: blue\n").unwrap();
    let o = cli(&net.nodes[0], &net.home("cli"), &["submit", "-f", spec.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("colour"), "the unknown field is named: {err}");
    std::fs::write(&spec, "task:\n  module: not-a-cid\n").unwrap();
    let o = cli(&net.nodes[0], &net.home("cli"), &["submit", "-f", spec.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("not-a-cid"), "{}", text(&o.stderr));
    let o = cli(&net.nodes[0], &net.home("cli"), &["job", "describe", "j-0000000000000000000000"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no job j-0000000000000000000000"), "{}", text(&o.stderr));
    let o = cli(&net.nodes[0], &net.home("cli"), &["job", "describe", "no such job"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("malformed job id"), "{}", text(&o.stderr));
    // A job nobody can run waits queued; cancelling it ends it.
    let o = cli(
        &net.nodes[0],
        &net.home("cli"),
        &["submit", "--constraint", "zone=nowhere", sample("hello").to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let id = text(&o.stdout).trim().to_owned();
    assert_eq!(job(&net.nodes[0], &id)["job"]["state"], "queued");
    let d = text(&cli(&net.nodes[0], &net.home("cli"), &["job", "describe", &id]).stdout);
    assert!(d.contains("waiting: 0 of 1 executions placed; 0 capable node(s) known for redundancy 1"), "{d}");
    let c = cli(&net.nodes[0], &net.home("cli"), &["job", "cancel", &id]);
    assert!(c.status.success(), "{}", text(&c.stderr));
    assert_eq!(job(&net.nodes[0], &id)["job"]["state"], "cancelled");
    let w = cli(&net.nodes[0], &net.home("cli"), &["job", "wait", "--timeout", "10s", &id]);
    assert!(!w.status.success(), "waiting on a cancelled job fails");
    assert!(text(&w.stderr).contains("cancelled"), "{}", text(&w.stderr));
    // Its event stream gives its one last state and ends; an unknown job
    // has none.
    let mut r = agent().get(format!("{}/v1/jobs/{id}/events", net.nodes[0].api)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let events = r.body_mut().read_to_string().unwrap();
    assert_eq!(events.matches("event: job").count(), 1, "{events}");
    assert!(events.contains("\"state\":\"cancelled\""), "{events}");
    let (status, v) = get(&format!("{}/v1/jobs/j-0000000000000000000000/events", net.nodes[0].api));
    assert_eq!(status, 404, "{v}");
    // No node at all: says how to give one.
    let o = Command::new(env!("CARGO_BIN_EXE_shoal")).env_remove("SHOAL_NODE").args(["job", "list"]).output().unwrap();
    assert!(text(&o.stderr).contains("--node"), "{}", text(&o.stderr));
}

#[test]
fn the_api_requires_the_token_on_a_non_loopback_bind() {
    let t = tempfile::tempdir().unwrap();
    let n = start_node(&t.path().join("n"), &["--api", "0.0.0.0:0", "--no-compute"]);
    let port = n.api.rsplit(':').next().unwrap().to_owned();
    let url = format!("http://127.0.0.1:{port}/v1/health");
    let (status, body) = get(&url);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("api-token"), "{body}");
    let token = std::fs::read_to_string(n.home.join("api-token")).unwrap();
    let mut r = agent().get(&url).header("Authorization", format!("Bearer {}", token.trim())).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.body_mut().read_json().unwrap();
    assert_eq!(v["ok"], true);
    // A loopback node needs none, and serves its OpenAPI document.
    let l = start_node(&t.path().join("l"), &["--no-compute"]);
    let (status, doc) = get(&format!("{}/openapi.json", l.api));
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/jobs"].is_object(), "{doc}");
    let m = agent().get(&format!("{}/metrics", l.api)).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(m.contains("shoal_jobs_submitted"), "{m}");
}

#[test]
fn devstack_starts_a_network_and_ctrl_c_stops_it() {
    let t = tempfile::tempdir().unwrap();
    let mut ds = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["--home", t.path().to_str().unwrap(), "devstack", "--nodes", "3"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(ds.stdout.take().unwrap());
    let mut apis = Vec::new();
    for _ in 0..4 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if line.trim() == "ready" {
            break;
        }
        let api = line.split_whitespace().find_map(|p| p.strip_prefix("api=")).expect(&line).to_owned();
        assert!(line.starts_with(&format!("node {} ", apis.len())), "{line}");
        assert!(line.contains("peer=/ip4/127.0.0.1/tcp/"), "{line}");
        apis.push(api);
    }
    assert_eq!(apis.len(), 3);
    eventually(30, "devstack nodes to see each other", || {
        let (_, v) = get(&format!("{}/v1/nodes", apis[2]));
        (v["nodes"].as_array().map_or(0, Vec::len) == 3).then_some(())
    });
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_HOME", t.path().join("cli"))
        .args([
            "--node",
            &apis[1],
            "submit",
            "--wait",
            "--wait-timeout",
            "120s",
            "-q",
            "--redundancy",
            "3",
            sample("hello").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Ctrl-C: every node stops.
    unsafe {
        libc::kill(ds.id() as i32, libc::SIGINT);
    }
    let status = eventually(30, "devstack to exit", || ds.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    for api in &apis {
        assert!(agent().get(&format!("{api}/v1/health")).call().is_err(), "{api} still answers");
    }
}

/// A requester and two compute nodes, one without a GPU and one with
/// lavapipe standing in for one (the test command installs it): the
/// network, the two nodes' ids and `shoal nodes --json` once all are seen.
fn cpu_and_gpu_net() -> (Net, String, String, Value) {
    let mut net = Net::new();
    net.add("requester", &["--no-compute"]);
    let cpu = net.add("cpu", &["--gpu", "off"]);
    let gpu = net.add("gpu", &["--allow-software-gpu"]);
    wait_for_nodes(&net.nodes[0], 3);
    let (cpu_id, gpu_id) = (net.nodes[cpu].id(), net.nodes[gpu].id());
    let n = cli(&net.nodes[0], &net.home("cli"), &["--json", "nodes"]);
    let v: Value = serde_json::from_slice(&n.stdout).unwrap();
    (net, cpu_id, gpu_id, v)
}

#[test]
fn a_gpu_job_runs_only_on_a_node_that_announces_a_gpu() {
    let (net, cpu_id, gpu_id, v) = cpu_and_gpu_net();
    let view =
        |id: &str| v["nodes"].as_array().unwrap().iter().find(|n| n["node"]["id"] == id).unwrap()["node"].clone();
    assert!(view(&cpu_id)["gpu"].is_null(), "{v}");
    assert_eq!(view(&gpu_id)["gpu"]["software"], true, "{v}");

    let model = format!("digits={}", root().join("samples/digits/digits_mlp.onnx").display());
    let data = format!("{}:/inputs", root().join("samples/digits/data").display());
    let classify = sample("classify");
    let o = cli(
        &net.nodes[0],
        &net.home("cli"),
        &["submit", "--gpu", "--model", &model, "--input", &data, classify.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let id = text(&o.stdout).trim().to_owned();
    let w = cli(&net.nodes[0], &net.home("cli"), &["job", "wait", "--timeout", "120s", &id]);
    assert!(w.status.success(), "{}{}", text(&w.stdout), text(&w.stderr));
    assert!(text(&w.stderr).contains("  completed; executions: 1 completed"), "{}", text(&w.stderr));
    let j = job(&net.nodes[0], &id);
    let execs = j["executions"].as_array().unwrap();
    assert!(execs.iter().all(|e| e["node"] == Value::String(gpu_id.clone())), "only the gpu node runs it: {j}");
    let logs = cli(&net.nodes[0], &net.home("cli"), &["job", "logs", &id]);
    assert!(text(&logs.stdout).contains("accuracy: 0.9833 (354/360)"), "{}", text(&logs.stdout));
    // What ran it travels with the reveal, beside the result.
    let meta = &execs[0]["meta"];
    let device = meta["nn_devices"][0].as_str().unwrap_or_default();
    assert!(device.starts_with("gpu: ") && device.contains("llvmpipe"), "{j}");
    assert!(meta["fuel"].as_u64().unwrap() > 0, "{j}");
    let d = cli(&net.nodes[0], &net.home("cli"), &["job", "describe", &id]);
    assert!(text(&d.stdout).contains(&format!("wasi-nn device: {device}")), "{}", text(&d.stdout));

    // The same job without --gpu runs on the CPU backend, same accuracy.
    let o = cli(
        &net.nodes[0],
        &net.home("cli"),
        &[
            "submit",
            "--wait",
            "--wait-timeout",
            "120s",
            "-q",
            "--model",
            &model,
            "--input",
            &data,
            classify.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let result = text(&o.stdout).lines().last().unwrap().to_owned();
    let cat = cli(&net.nodes[0], &net.home("cli"), &["cat", &format!("{result}/stdout")]);
    assert!(text(&cat.stdout).contains("accuracy: 0.9833 (354/360)"), "{}", text(&cat.stdout));
    let j = job(&net.nodes[0], &last_completed(&net.nodes[0]));
    let device = j["executions"][0]["meta"]["nn_devices"][0].as_str().unwrap_or_default().to_owned();
    assert_eq!(device, "cpu: exact", "{j}");
}

#[test]
fn an_exact_inference_job_agrees_across_a_cpu_node_and_a_gpu_node() {
    let (net, cpu_id, gpu_id, v) = cpu_and_gpu_net();
    let gpu_view = v["nodes"].as_array().unwrap().iter().find(|n| n["node"]["id"] == gpu_id.as_str()).unwrap();
    assert_eq!(gpu_view["node"]["gpu"]["exact"], true, "lavapipe runs exact inference: {v}");
    assert!(gpu_view["node"]["gpu"]["driver"].as_str().unwrap().contains("Mesa"), "{v}");
    let listed = cli(&net.nodes[0], &net.home("cli"), &["nodes"]);
    assert!(text(&listed.stdout).contains("(exact)"), "{}", text(&listed.stdout));

    // Without --gpu: one execution lands on each node (two compute nodes,
    // never two executions of a job on one), and target auto puts the
    // guest's graphs on the GPU where a node has one that runs exact
    // inference.
    let model = format!("digits={}", root().join("samples/digits/digits_mlp.onnx").display());
    let data = format!("{}:/inputs", root().join("samples/digits/data").display());
    let classify = sample("classify");
    let o = cli(
        &net.nodes[0],
        &net.home("cli"),
        &[
            "submit",
            "--redundancy",
            "2",
            "--nn-mode",
            "exact",
            "--nn-target",
            "auto",
            "--model",
            &model,
            "--input",
            &data,
            classify.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let id = text(&o.stdout).trim().to_owned();
    let w = cli(&net.nodes[0], &net.home("cli"), &["job", "wait", "--timeout", "180s", &id]);
    assert!(w.status.success(), "{}{}", text(&w.stdout), text(&w.stderr));
    let j = job(&net.nodes[0], &id);
    assert_eq!(j["job"]["state"], "completed", "{j}");
    let execs = j["executions"].as_array().unwrap();
    assert_eq!(execs.len(), 2, "{j}");
    let on = |node: &str| execs.iter().find(|e| e["node"] == node).unwrap_or_else(|| panic!("none on {node}: {j}"));
    let (c, g) = (on(&cpu_id), on(&gpu_id));
    assert_eq!(c["result"], g["result"], "the cpu and the gpu agree bit for bit: {j}");
    assert_eq!(j["job"]["result"], c["result"], "{j}");
    assert_eq!(c["meta"]["nn_devices"], serde_json::json!(["cpu: exact"]), "{j}");
    let gd = g["meta"]["nn_devices"][0].as_str().unwrap_or_default().to_owned();
    assert!(gd.starts_with("gpu: ") && gd.contains("llvmpipe") && gd.ends_with("(exact)"), "{j}");
    let logs = cli(&net.nodes[0], &net.home("cli"), &["job", "logs", &id]);
    assert!(text(&logs.stdout).contains("accuracy: 0.9833 (354/360)"), "{}", text(&logs.stdout));
    let d = cli(&net.nodes[0], &net.home("cli"), &["job", "describe", &id]);
    let d = text(&d.stdout);
    assert!(d.contains("wasi-nn: mode exact, target auto"), "{d}");
    assert!(d.contains("wasi-nn device: cpu: exact") && d.contains(&format!("wasi-nn device: {gd}")), "{d}");
}

/// Sends `request` (a whole HTTP/1.1 request) to the node's API as a
/// browser would put it on the wire, and returns the status and body.
fn raw_http(node: &NodeProc, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = node.api.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, answer)
}

#[test]
fn web_pages_cannot_drive_the_api() {
    let mut net = Net::new();
    net.add("n0", &[]);
    let n = &net.nodes[0];
    let host = n.api.strip_prefix("http://").unwrap().to_owned();
    let spec = r#"{"task":{"module":"QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"}}"#;
    // 1. A form on another site posting to the api.
    let form = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{spec}",
        spec.len()
    );
    let (status, answer) = raw_http(n, &form);
    assert_eq!(status, 403, "{answer}");
    // 2. A `fetch` with a simple content type (no preflight), from a page
    //    whose browser sends no Origin.
    let fetch = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: \
         {}\r\nConnection: close\r\n\r\n{spec}",
        spec.len()
    );
    let (status, answer) = raw_http(n, &fetch);
    assert_eq!(status, 415, "{answer}");
    assert!(answer.contains("application/json"), "says what to send: {answer}");
    // 3. DNS rebinding: a page on evil.example, its name now resolving to
    //    127.0.0.1, reading the api.
    let port = host.rsplit(':').next().unwrap();
    let rebind = format!("GET /v1/jobs HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n");
    let (status, answer) = raw_http(n, &rebind);
    assert_eq!(status, 403, "{answer}");
    assert!(!answer.contains("\"jobs\""), "{answer}");
    // CORS stays closed: a preflight gets no permission.
    let preflight = format!(
        "OPTIONS /v1/jobs HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nAccess-Control-Request-Method: \
         POST\r\nConnection: close\r\n\r\n"
    );
    let (_, answer) = raw_http(n, &preflight);
    assert!(!answer.to_ascii_lowercase().contains("access-control-allow"), "{answer}");
    // None of it made a job; the CLI (which says what it sends) still can.
    assert_eq!(get(&format!("{}/v1/jobs", n.api)).1["jobs"], serde_json::json!([]));
    let o = cli(n, &net.home("cli"), &["submit", sample("hello").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // --require-token: loopback needs the token too.
    let t = tempfile::tempdir().unwrap();
    let locked = start_node(&t.path().join("locked"), &["--require-token", "--no-compute"]);
    let (status, body) = get(&format!("{}/v1/jobs", locked.api));
    assert_eq!(status, 401, "{body}");
    let token = std::fs::read_to_string(locked.home.join("api-token")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_NODE", &locked.api)
        .env("SHOAL_TOKEN", token.trim())
        .args(["job", "list"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn a_failing_guest_completes_with_a_failed_outcome_everywhere() {
    let mut net = Net::new();
    net.add("n0", &[]);
    net.add("n1", &[]);
    wait_for_nodes(&net.nodes[0], 2);
    let n = &net.nodes[0];
    // Exit 7, agreed by two nodes: completed (the network did its job),
    // outcome failed (the guest did not), and the CLI exits 7 as
    // `shoal run` would.
    let code = sample("exitcode");
    let o = cli(n, &net.home("cli"), &["submit", "--wait", "--redundancy", "2", code.to_str().unwrap(), "--", "7"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("outcome: failed (exit code 7)"), "{}", text(&o.stdout));
    let id = last_completed(n);
    let j = job(n, &id);
    assert_eq!((j["job"]["state"].as_str(), j["job"]["outcome"].as_str()), (Some("completed"), Some("failed")), "{j}");
    assert_eq!(j["job"]["exit_code"], 7, "{j}");
    let d = text(&cli(n, &net.home("cli"), &["job", "describe", &id]).stdout);
    assert!(d.contains("outcome: failed") && d.contains("exit code: 7"), "{d}");
    let list = text(&cli(n, &net.home("cli"), &["job", "list"]).stdout);
    assert!(list.lines().any(|l| l.contains(&id) && l.contains("failed:7")), "{list}");
    let w = cli(n, &net.home("cli"), &["job", "wait", "-q", &id]);
    assert_eq!(w.status.code(), Some(7));

    // A trap: exit status 1, the failure named everywhere, and the trap
    // message with its backtrace in the logs and the api.
    let trap = sample("trap");
    let o = cli(n, &net.home("cli"), &["submit", "--wait", trap.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("the job's guest failed"), "{}", text(&o.stderr));
    let id = last_completed(n);
    let j = job(n, &id);
    assert_eq!(j["job"]["outcome"], "failed", "{j}");
    let failure = j["job"]["failure"].as_str().unwrap_or_else(|| panic!("no failure: {j}"));
    assert!(failure.contains("trap"), "{failure}");
    let d = text(&cli(n, &net.home("cli"), &["job", "describe", &id]).stdout);
    assert!(d.contains(&format!("failure: {failure}")), "{d}");
    let logs = get(&format!("{}/v1/jobs/{id}/logs", n.api)).1;
    let stderr = logs["executions"][0]["stderr"].as_str().unwrap();
    assert!(stderr.contains("shoal: ") && stderr.contains("wasm backtrace"), "{logs}");
    let l = cli(n, &net.home("cli"), &["job", "logs", &id]);
    assert!(text(&l.stderr).contains("wasm backtrace"), "{}", text(&l.stderr));
    // A success is a success.
    let o = cli(n, &net.home("cli"), &["submit", "--wait", sample("hello").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("outcome: succeeded"), "{}", text(&o.stdout));
}

#[test]
fn local_data_travels_with_a_spec_and_missing_data_fails_fast() {
    let mut net = Net::new();
    net.add("n0", &[]);
    let n = &net.nodes[0];
    let cli_home = net.home("cli");
    // Data only in the submitter's own store, named by CID in a spec whose
    // module is a path relative to the spec.
    let add = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["--home", cli_home.to_str().unwrap(), "add", "-q", texts().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", text(&add.stderr));
    let cid = text(&add.stdout).trim().to_owned();
    let dir = net.home("specs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(sample("wordcount"), dir.join("wc.wasm")).unwrap();
    let spec = dir.join("job.yaml");
    std::fs::write(
        &spec,
        format!("task:\n  module: wc.wasm\n  inputs: [{{cid: {cid}, mount: /inputs}}]\nredundancy: {{count: 1}}\n"),
    )
    .unwrap();
    let o = cli(n, &cli_home, &["submit", "--wait", "-q", "-f", spec.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().last().unwrap(), local_wordcount());
    assert_eq!(get(&format!("{}/v1/dags/{cid}", n.api)).1["held"], true);

    // Flags beside -f replace the spec's fields.
    let o = cli(
        n,
        &cli_home,
        &[
            "--json",
            "submit",
            "-f",
            spec.to_str().unwrap(),
            "--redundancy",
            "2",
            "--env",
            "MODE=fast",
            "--timeout",
            "10",
            "--memory",
            "64MiB",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one json document");
    let warning = doc["warnings"][0].as_str().unwrap_or_else(|| panic!("redundancy 2 on one node is warned: {doc}"));
    assert!(warning.contains("only 1 node"), "{warning}");
    let j = job(n, doc["id"].as_str().unwrap());
    let s = &j["job"]["spec"];
    assert_eq!(s["redundancy"]["count"], 2, "{s}");
    assert_eq!(s["task"]["env"]["MODE"], "fast", "{s}");
    assert_eq!(s["task"]["limits"]["timeout"], "10s", "{s}");
    assert_eq!(s["task"]["limits"]["memory"], 64 << 20, "{s}");
    assert_eq!(s["task"]["inputs"][0]["cid"], Value::String(cid.clone()), "{s}");
    let _ = cli(n, &cli_home, &["job", "cancel", doc["id"].as_str().unwrap()]);

    // Data nobody has: refused at once, naming it, and no node blamed.
    let other = tempfile::tempdir().unwrap();
    let data = other.path().join("data.txt");
    std::fs::write(&data, format!("only here: {:?}\n", std::time::SystemTime::now())).unwrap();
    let nowhere = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["--home", other.path().to_str().unwrap(), "add", "-q", data.to_str().unwrap()])
        .output()
        .unwrap();
    let nowhere = text(&nowhere.stdout).trim().to_owned();
    let jobs_before = get(&format!("{}/v1/jobs", n.api)).1["jobs"].as_array().unwrap().len();
    let hello = sample("hello");
    let submit = |mount: &str| {
        let input = format!("{nowhere}:{mount}");
        cli(n, &cli_home, &["submit", "--wait", "--wait-timeout", "60", "--input", &input, hello.to_str().unwrap()])
    };
    let o = submit("/inputs/x");
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains(&nowhere) && err.contains("shoal push"), "{err}");
    assert_eq!(get(&format!("{}/v1/jobs", n.api)).1["jobs"].as_array().unwrap().len(), jobs_before);
    let nodes = get(&format!("{}/v1/nodes", n.api)).1;
    assert_eq!(nodes["nodes"][0]["node"]["stats"]["failed"], 0, "{nodes}");

    // `shoal push` places it on purpose; then the same job runs.
    let p = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_NODE", &n.api)
        .args(["--home", other.path().to_str().unwrap(), "--json", "push", &nowhere])
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", text(&p.stderr));
    let doc: Value = serde_json::from_slice(&p.stdout).expect("one json document");
    assert_eq!((doc["cid"].as_str(), doc["uploaded"].as_bool()), (Some(nowhere.as_str()), Some(true)), "{doc}");
    // A file mounted at the root can never run: refused at submit too.
    let o = submit("/x");
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("below a directory"), "{}", text(&o.stderr));
    let o = submit("/inputs/x");
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn every_verb_that_reads_a_cid_honours_node_and_json_is_typed() {
    let mut net = Net::new();
    net.add("n0", &[]);
    let n = &net.nodes[0];
    let o = cli(n, &net.home("cli"), &["--json", "submit", "--wait", sample("exitcode").to_str().unwrap(), "--", "3"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one json document");
    assert_eq!(doc["job"]["exit_code"], 3, "{doc}");
    let result = doc["job"]["result"].as_str().unwrap().to_owned();
    let id = doc["job"]["id"].as_str().unwrap().to_owned();
    // From an empty home, through the node, `--node` without a scheme.
    let addr = n.api.strip_prefix("http://").unwrap();
    let reader = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .env_remove("SHOAL_NODE")
            .args(["--home", net.home("reader").to_str().unwrap(), "--node", addr])
            .args(args)
            .output()
            .unwrap()
    };
    let i = reader(&["--json", "inspect", &result]);
    assert!(i.status.success(), "{}", text(&i.stderr));
    let doc: Value = serde_json::from_slice(&i.stdout).expect("one json document");
    assert_eq!(doc["exit_code"], 3, "{doc}");
    let ls = reader(&["ls", &result]);
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    assert!(text(&ls.stdout).contains("exitCode"), "{}", text(&ls.stdout));
    let typed = |args: &[&str]| -> Value {
        let o = reader(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?} printed no single json document: {e}"))
    };
    let list = typed(&["--json", "job", "list"]);
    assert_eq!(list["jobs"][0]["exit_code"], 3, "{list}");
    assert_eq!(list["jobs"][0]["outcome"], "failed", "{list}");
    let nodes = typed(&["--json", "nodes"]);
    assert!(nodes["nodes"][0]["node"]["slots_total"].is_u64(), "{nodes}");
    let d = typed(&["--json", "job", "describe", &id]);
    assert!(d["executions"][0]["exit_code"].is_i64(), "{d}");
    let bad = Command::new(env!("CARGO_BIN_EXE_shoal")).args(["--node", "ftp://x:1", "job", "list"]).output().unwrap();
    assert!(text(&bad.stderr).contains("http://HOST:PORT"), "{}", text(&bad.stderr));
}

#[test]
fn the_dashboard_and_the_data_it_browses_are_served() {
    let mut net = Net::new();
    net.add("n0", &[]);
    let n = &net.nodes[0];
    // The dashboard, with a policy that runs only its own files.
    let mut r = agent().get(format!("{}/", n.api)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let csp = r.headers().get("content-security-policy").unwrap().to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(r.body_mut().read_to_string().unwrap().contains("app.js"));
    for f in ["app.js", "app.css"] {
        assert_eq!(agent().get(format!("{}/ui/{f}", n.api)).call().unwrap().status().as_u16(), 200, "{f}");
    }
    // A file uploaded as it is, then a job over it.
    let post = |path: &str, body: &[u8]| -> Value {
        let mut r = agent().post(format!("{}{path}", n.api)).header("X-Shoal-Request", "1").send(body).unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.body_mut().read_to_string().unwrap());
        r.body_mut().read_json().unwrap()
    };
    let text = b"the quick brown fox jumps over the lazy dog the end\n";
    let file = post("/v1/files?name=fox.txt", text);
    assert_eq!(file["size"], text.len());
    let wc = post("/v1/files?name=wordcount.wasm", &std::fs::read(sample("wordcount")).unwrap());
    let spec = serde_json::json!({ "task": { "module": wc["cid"], "inputs": [{ "cid": file["cid"], "mount": "/inputs/fox.txt" }] } });
    let id = post("/v1/jobs", spec.to_string().as_bytes())["id"].as_str().unwrap().to_owned();
    let j = eventually(60, "the job to complete", || {
        let j = get(&format!("{}/v1/jobs/{id}", n.api)).1;
        (j["job"]["state"] == "completed").then_some(j)
    });
    let result = j["job"]["result"].as_str().unwrap().to_owned();
    // Each execution's timeline, in order.
    let steps: Vec<&str> =
        j["executions"][0]["timeline"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(steps.first(), Some(&"bid_asked"), "{steps:?}");
    assert_eq!(steps.last(), Some(&"completed"), "{steps:?}");
    assert!(steps.contains(&"committed"), "{steps:?}");
    // Browsing the result: the listing, then a file's bytes, typed.
    let (status, ls) = get(&format!("{}/v1/ls/{result}", n.api));
    assert_eq!(status, 200, "{ls}");
    let names: Vec<&str> = ls["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"outputs") && names.contains(&"stdout"), "{ls}");
    let (_, out) = get(&format!("{}/v1/ls/{result}/outputs", n.api));
    assert_eq!(out["kind"], "directory", "{out}");
    let mut r = agent().get(format!("{}/v1/cat/{result}/outputs/counts.tsv?download=1", n.api)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers().get("content-security-policy").unwrap(), "sandbox");
    assert!(r.headers().get("content-disposition").unwrap().to_str().unwrap().contains("counts.tsv"));
    let counts = r.body_mut().read_to_string().unwrap();
    assert!(counts.lines().any(|l| l == format!("total\t1\t11\t{}", text.len())), "{counts}");
    // Errors are the API's JSON object, whatever produced them.
    let (status, e) = get(&format!("{}/v1/jobs?limit=lots", n.api));
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("limit"), "{e}");
    let (status, e) = get(&format!("{}/v1/nowhere", n.api));
    assert_eq!(status, 404, "{e}");
    assert!(e["error"].as_str().unwrap().contains("openapi.json"), "{e}");
    let (status, e) = get(&format!("{}/v1/cat/{result}/outputs", n.api));
    assert_eq!(status, 400, "a directory is listed, not read: {e}");
}

#[test]
fn a_cancelled_execution_frees_its_slot_once_its_guest_has_stopped() {
    let mut net = Net::new();
    net.add("n0", &["--slots", "1"]);
    let n = &net.nodes[0];
    let self_slots = || get(&format!("{}/v1/nodes", n.api)).1["nodes"][0]["node"]["slots_free"].as_u64().unwrap();
    // A guest that never ends by itself (its timeout is a minute away).
    let o = cli(n, &net.home("cli"), &["submit", "--timeout", "60", sample("spin").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let id = text(&o.stdout).trim().to_owned();
    eventually(30, "the guest to run", || (job(n, &id)["executions"][0]["state"] == "running").then_some(()));
    assert_eq!(self_slots(), 0);
    // A job behind it waits, and says for what.
    let o = cli(n, &net.home("cli"), &["submit", sample("hello").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let queued = text(&o.stdout).trim().to_owned();
    let d = text(&cli(n, &net.home("cli"), &["job", "describe", &queued]).stdout);
    let me: String = n.id().chars().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(d.contains(&format!("waiting: 0 of 1 executions placed; nodes busy: {me}")), "{d}");
    let c = cli(n, &net.home("cli"), &["job", "cancel", &id]);
    assert!(c.status.success(), "{}", text(&c.stderr));
    // The slot comes back once the guest has stopped, well before its
    // timeout, and the next job runs on it (a slot counted free while its
    // guest still held the engine's only instance failed it).
    let w = cli(n, &net.home("cli"), &["job", "wait", "--timeout", "60", &queued]);
    assert!(w.status.success(), "{}", text(&w.stderr));
    assert!(text(&w.stdout).contains("outcome: succeeded"), "{}", text(&w.stdout));
    eventually(30, "the slot to be free again", || (self_slots() == 1).then_some(()));
    let o = cli(n, &net.home("cli"), &["submit", "--wait", "--wait-timeout", "60", sample("hello").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("outcome: succeeded"), "{}", text(&o.stdout));
}

#[test]
fn bodies_and_car_exports_are_bounded_per_route() {
    use std::io::{Read, Write};
    let mut net = Net::new();
    net.add("n0", &["--no-compute"]);
    let n = &net.nodes[0];
    let post = |path: &str, ctype: &str, body: &[u8]| -> (u16, Value) {
        let mut r = agent()
            .post(format!("{}{path}", n.api))
            .header("X-Shoal-Request", "1")
            .header("Content-Type", ctype)
            .send(body)
            .unwrap();
        (r.status().as_u16(), r.body_mut().with_config().limit(1 << 20).read_json().unwrap_or(Value::Null))
    };
    // A spec is at most 1 MiB; an upload may be far larger.
    // Random bytes (xorshift): no two chunks alike, so the dag is as big
    // as the file.
    let big = random_bytes(64 << 20, 0x9e37_79b9_7f4a_7c15);
    // Refused once the limit is read past: the server answers and closes
    // while the client may still be sending, so the body goes from its own
    // thread, whose write may fail, and the answer is read here.
    let addr = n.api.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        2 << 20
    )
    .unwrap();
    let mut w = s.try_clone().unwrap();
    let body = big[..2 << 20].to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&body);
    });
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let _ = writer.join();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
    let (status, file) = post("/v1/files?name=big.bin", "application/octet-stream", &big);
    assert_eq!(status, 200, "{file}");
    let cid = file["cid"].as_str().unwrap().to_owned();
    // Exports are streamed: clients that do not read hold at most their
    // bound, and past MAX_CAR_EXPORTS (8) a new one is refused at once.
    let stalled: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(s, "GET /v1/car/{cid} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
            let mut first = [0u8; 12];
            s.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"HTTP/1.1 200");
            s
        })
        .collect();
    let (status, e) = get(&format!("{}/v1/car/{cid}", n.api));
    assert_eq!(status, 503, "{e}");
    drop(stalled);
    // Once they are gone, an export streams the whole DAG again.
    let car = eventually(30, "an export slot to come back", || {
        let mut r = agent().get(format!("{}/v1/car/{cid}", n.api)).call().unwrap();
        (r.status().as_u16() == 200).then(|| r.body_mut().with_config().limit(128 << 20).read_to_vec().unwrap())
    });
    let f = net.home("x.car");
    std::fs::write(&f, &car).unwrap();
    let imported = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["--home", net.home("reader").to_str().unwrap(), "car", "import", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    assert!(text(&imported.stdout).contains(&cid), "{}", text(&imported.stdout));
}

/// The result CID of a local `shoal run` of `module` with `args`.
fn local_result(module: &Path, args: &[&str]) -> String {
    let t = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_HOME", t.path())
        .args(["run", "-q", module.to_str().unwrap(), "--"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout).lines().last().unwrap().to_owned()
}

#[test]
fn a_burst_larger_than_the_free_slots_completes_through_kills() {
    let mut net = Net::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    net.add("requester", &["--no-compute", "--listen", &listen]);
    for name in ["a", "b", "c"] {
        net.add(name, &["--slots", "2"]);
    }
    wait_for_nodes(&net.nodes[0], 4);
    // 40 redundancy-2 jobs at once on 6 slots: 80 executions, more than
    // thirteen times the free slots, so most bids meet busy nodes.
    let mandel = sample("mandelbrot");
    let iters = ["300", "350", "400", "450"];
    let expected: Vec<String> = iters.iter().map(|i| local_result(&mandel, &["400", i])).collect();
    let mut up =
        agent().post(format!("{}/v1/files?name=mandelbrot.wasm", net.nodes[0].api)).header("X-Shoal-Request", "1");
    up = up.header("Content-Type", "application/octet-stream");
    let module: Value = up.send(&std::fs::read(&mandel).unwrap()[..]).unwrap().body_mut().read_json().unwrap();
    let module = module["cid"].as_str().unwrap().to_owned();
    let jobs: Vec<(String, usize)> = (0..40)
        .map(|k| {
            let spec = serde_json::json!({
                "task": { "module": module, "args": ["400", iters[k % 4]] },
                "redundancy": { "count": 2 },
            });
            let mut r = agent().post(format!("{}/v1/jobs", net.nodes[0].api)).send_json(&spec).unwrap();
            assert_eq!(r.status().as_u16(), 201);
            (r.body_mut().read_json::<Value>().unwrap()["id"].as_str().unwrap().to_owned(), k % 4)
        })
        .collect();
    let completed = |n: &NodeProc| {
        get(&format!("{}/v1/jobs?state=completed&limit=100", n.api)).1["jobs"].as_array().map_or(0, Vec::len)
    };
    // A compute node killed (kill -9) and restarted mid-burst ...
    eventually(120, "the first jobs to complete", || (completed(&net.nodes[0]) >= 3).then_some(()));
    assert!(completed(&net.nodes[0]) < 40, "the burst ended before the kills: make it longer");
    net.nodes[2].kill();
    let (home, first) = (net.nodes[2].home.clone(), net.nodes[0].peer.clone());
    net.nodes[2] = start_node(&home, &["--slots", "2", "--peer", &first]);
    // ... then the requester itself.
    eventually(120, "more jobs to complete", || (completed(&net.nodes[0]) >= 8).then_some(()));
    assert!(completed(&net.nodes[0]) < 40, "the burst ended before the requester was killed: make it longer");
    net.nodes[0].kill();
    let (home, a) = (net.nodes[0].home.clone(), net.nodes[1].peer.clone());
    net.nodes[0] = start_node(&home, &["--no-compute", "--listen", &listen, "--peer", &a]);
    // Every job ends, completed, with the result a local run gives.
    let r = &net.nodes[0];
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let open: Vec<Value> = jobs
            .iter()
            .map(|(id, _)| job(r, id))
            .filter(|j| matches!(j["job"]["state"].as_str(), Some("queued" | "running")))
            .collect();
        if open.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let summary: Vec<String> = open
                .iter()
                .map(|j| {
                    let execs: Vec<String> = j["executions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| format!("{}@{}:{}", e["state"], &e["node"].as_str().unwrap()[46..], e["error"]))
                        .collect();
                    format!("{} {}: {}", j["job"]["id"], j["job"]["state"], execs.join(", "))
                })
                .collect();
            panic!("{} jobs did not end in 240 s:\n{}", open.len(), summary.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (id, size) in &jobs {
        let j = job(r, id);
        assert_eq!(j["job"]["state"], "completed", "{j}");
        assert_eq!(j["job"]["result"], Value::String(expected[*size].clone()), "{j}");
    }
    // No slot is left held once the burst is over.
    for n in &net.nodes[1..] {
        eventually(30, "every slot to be free", || {
            let v = get(&format!("{}/v1/nodes", n.api)).1;
            let me = v["nodes"].as_array().unwrap().iter().find(|e| e["self"] == true).cloned().unwrap();
            (me["node"]["slots_free"] == 2).then_some(())
        });
    }
}

#[test]
fn a_job_runs_where_its_input_already_is() {
    let mut net = Net::new();
    net.add("requester", &["--no-compute"]);
    net.add("b", &[]);
    net.add("c", &[]);
    wait_for_nodes(&net.nodes[0], 3);
    // Equal nodes are taken in the order of their ids: the data goes to
    // the one that order would pass over, so that only locality can pick it.
    let (b, c) = if net.nodes[1].id() > net.nodes[2].id() { (1, 2) } else { (2, 1) };
    // Data placed on b alone.
    let data = net.home("data.txt");
    std::fs::write(&data, "held by one node only\n").unwrap();
    let push = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_NODE", &net.nodes[b].api)
        .args(["--home", net.home("cli").to_str().unwrap(), "--json", "push", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", text(&push.stderr));
    let cid = serde_json::from_slice::<Value>(&push.stdout).unwrap()["cid"].as_str().unwrap().to_owned();
    // b announces it holds it (a filter of its pins, rebuilt every 5 s).
    let (bid, cid_node) = (net.nodes[b].id(), net.nodes[c].id());
    eventually(30, "the requester to learn that b holds the data", || {
        let v = get(&format!("{}/v1/dags/{cid}", net.nodes[0].api)).1;
        v["held_by"].as_array().unwrap().iter().any(|n| n == bid.as_str()).then_some(())
    });
    let v = get(&format!("{}/v1/dags/{cid}", net.nodes[0].api)).1;
    assert!(!v["held_by"].as_array().unwrap().iter().any(|n| n == cid_node.as_str()), "{v}");
    // Every job over it runs on b, though c is just as free.
    for _ in 0..4 {
        let o = cli(
            &net.nodes[0],
            &net.home("cli"),
            &[
                "submit",
                "--wait",
                "-q",
                "--no-cache",
                "--input",
                &format!("{cid}:/inputs/data.txt"),
                sample("hello").to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        let id = last_completed(&net.nodes[0]);
        let j = job(&net.nodes[0], &id);
        assert_eq!(j["executions"][0]["node"], Value::String(bid.clone()), "{j}");
    }
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

/// A peer that floods a node with execution requests, block requests and
/// announcements from many identities, while a client floods it with CAR
/// exports: every request gets an answer (or a "busy"), the API keeps
/// answering throughout, the node's memory stays bounded, and a job
/// submitted afterwards runs.
#[test]
fn a_flooding_peer_leaves_the_node_bounded_and_answering() {
    use shoal_scheduler::net::{self, proto};
    let mut net = Net::new();
    net.add("target", &["--slots", "1"]);
    let n = &net.nodes[0];
    let pid = n.child.id();
    // Data worth exporting: 16 MiB that does not deduplicate.
    let data = random_bytes(16 << 20, 0x2545_f491_4f6c_dd1d);
    let mut r = agent()
        .post(format!("{}/v1/files?name=data.bin", n.api))
        .header("X-Shoal-Request", "1")
        .header("Content-Type", "application/octet-stream")
        .send(&data[..])
        .unwrap();
    let file: Value = r.body_mut().read_json().unwrap();
    let cid = file["cid"].as_str().unwrap().to_owned();
    let before = rss_mib(pid);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The API answers while the flood goes on.
    let health = {
        let (api, stop) = (n.api.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && answered < 10_000 {
                let t = Instant::now();
                let (status, _) = get(&format!("{api}/v1/health"));
                assert_eq!(status, 200);
                slowest = slowest.max(t.elapsed());
                answered += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (answered, slowest)
        })
    };
    // CAR exports: 24 clients at once, each reading everything.
    let exports: Vec<_> = (0..24)
        .map(|_| {
            let url = format!("{}/v1/car/{cid}", n.api);
            std::thread::spawn(move || {
                let mut r = agent().get(url).call().unwrap();
                let status = r.status().as_u16();
                let len = r.body_mut().with_config().limit(64 << 20).read_to_vec().map_or(0, |b| b.len());
                (status, len)
            })
        })
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (answered, busy, failed) = rt.block_on(async {
        let target: libp2p::Multiaddr = n.peer.parse().unwrap();
        let target_id: libp2p::PeerId = n.id().parse().unwrap();
        let cfg = net::Config::default();
        // Announcements from many identities (each its own gossip source).
        let mut flooders = Vec::new();
        for _ in 0..16 {
            let swarm = net::tcp_swarm(libp2p::identity::Keypair::generate_ed25519(), &cfg).unwrap();
            let (client, event_loop, mut events) = net::new(swarm, &cfg);
            tokio::spawn(event_loop.run(std::future::pending()));
            // Requests sent to the flooders are dropped unanswered.
            tokio::spawn(async move { while events.recv().await.is_some() {} });
            client.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
            client.dial(target.clone()).await.unwrap();
            flooders.push(client);
        }
        let announcement = proto::Announcement {
            boot: 1,
            capacity: shoal_scheduler::model::Capacity {
                version: "flood".into(),
                compute: true,
                slots_total: 1000,
                slots_free: 1000,
                memory_bytes: 1 << 40,
                labels: Default::default(),
                gpu: None,
                submitters: Vec::new(),
            },
            api: None,
            allow: Vec::new(),
            holds: None,
            receipts: None,
            every_ms: 0,
            addrs: Vec::new(),
        };
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in flooders.iter().enumerate() {
            let c = c.clone();
            let a = announcement.clone();
            set.spawn(async move {
                for boot in 0..50u64 {
                    let _ = c.announce(proto::Announcement { boot: boot * 100 + i as u64, ..a.clone() }).await;
                }
                (0usize, 0usize, None::<String>)
            });
        }
        // Requests: 4,000 of the execution protocol and 1,000 block
        // requests, 64 senders at once.
        for s in 0..64usize {
            let c = flooders[s % flooders.len()].clone();
            let cid = cid.clone();
            set.spawn(async move {
                let (mut answered, mut busy, mut failed) = (0, 0, None);
                for i in 0..80usize {
                    let exec = format!("e-flood-{s}-{i}");
                    let request = match i % 3 {
                        0 => proto::Request::Commit { exec, commitment: [7; 32], exit_code: 0, signature: "00".into() },
                        1 => proto::Request::Reveal { exec },
                        _ => proto::Request::Bid {
                            job: "j-flood".into(),
                            exec,
                            spec: "{not a spec".into(),
                            submitter: None,
                        },
                    };
                    match c.request(target_id, request).await {
                        Ok(proto::Response::Error { message }) if message.starts_with("node busy") => busy += 1,
                        Ok(_) => answered += 1,
                        Err(e) => {
                            failed.get_or_insert(format!("exec request {i}: {e}"));
                        }
                    }
                    if i % 4 == 0 {
                        let root = cid.parse::<shoal_storage::Cid>().unwrap().to_bytes();
                        let mut want = vec![root];
                        want.extend((0..63u8).map(|k| {
                            shoal_storage::Block::new(
                                shoal_storage::CidVersion::V1,
                                shoal_storage::block::RAW,
                                vec![k, i as u8],
                            )
                            .cid()
                            .to_bytes()
                        }));
                        match c.blocks(target_id, proto::BlockRequest { want }).await {
                            Ok(_) => answered += 1,
                            Err(e) => {
                                failed.get_or_insert(format!("block request {i}: {e}"));
                            }
                        }
                    }
                }
                (answered, busy, failed)
            });
        }
        let (mut answered, mut busy, mut failed) = (0, 0, None);
        while let Some(r) = set.join_next().await {
            let (a, b, f) = r.unwrap();
            answered += a;
            busy += b;
            failed = failed.or(f);
        }
        (answered, busy, failed)
    });
    let exports: Vec<(u16, usize)> = exports.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (checks, slowest) = health.join().unwrap();
    let after = rss_mib(pid);
    eprintln!(
        "flood: {answered} answered, {busy} busy; exports {:?}; health answered {checks} times, slowest {slowest:?}; rss {before} -> {after} MiB",
        exports.iter().map(|e| e.0).collect::<Vec<_>>()
    );
    assert_eq!(
        answered + busy,
        64 * 80 + 64 * 20,
        "requests went unanswered: {answered} answered, {busy} busy; first failure: {failed:?}"
    );
    for (status, len) in &exports {
        assert!(*status == 200 || *status == 503, "export answered {status}");
        if *status == 200 {
            assert!(*len > 16 << 20, "a whole export is the data and more: {len}");
        }
    }
    assert!(exports.iter().any(|e| e.0 == 200), "no export got through");
    assert!(checks > 0 && slowest < Duration::from_secs(5), "the api stalled: {checks} checks, slowest {slowest:?}");
    // Bounded: 256 request handlers, 32 block answers of at most 8 MiB, 8
    // exports of at most 4 MiB in flight (the cap on views, 10,000, is
    // tested in shoal-node itself).
    assert!(after < before + 400, "rss grew from {before} MiB to {after} MiB");
    drop(rt);
    let o = cli(n, &net.home("cli"), &["submit", "--wait", "--wait-timeout", "60", sample("hello").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// A DAG of random bytes larger than one block answer (12 MiB, where 4.5
/// MiB used to be the most a peer could send: bytes went on the wire as
/// CBOR integers) reaches the node that runs the job, and the guest reads
/// every byte of it.
#[test]
fn a_large_random_input_moves_between_nodes_whole() {
    let mut net = Net::new();
    net.add("requester", &["--no-compute"]);
    net.add("worker", &[]);
    wait_for_nodes(&net.nodes[0], 2);
    let n = &net.nodes[0];
    let data = random_bytes(12 << 20, 0x0123_4567_89ab_cdef);
    let file = net.home("data.bin");
    std::fs::write(&file, &data).unwrap();
    let upload = |bytes: &[u8], name: &str| -> String {
        let mut r = agent()
            .post(format!("{}/v1/files?name={name}", n.api))
            .header("X-Shoal-Request", "1")
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .unwrap();
        let v: Value = r.body_mut().read_json().unwrap();
        v["cid"].as_str().unwrap_or_else(|| panic!("{v}")).to_owned()
    };
    let input = upload(&data, "data.bin");
    let module = upload(&std::fs::read(sample("sha256sum")).unwrap(), "sha256sum.wasm");
    let spec = serde_json::json!({
        "task": { "module": module, "inputs": [{ "cid": input, "mount": "/inputs/data.bin" }] },
    });
    let mut r = agent()
        .post(format!("{}/v1/jobs", n.api))
        .header("Content-Type", "application/json")
        .send(spec.to_string())
        .unwrap();
    let v: Value = r.body_mut().read_json().unwrap();
    let id = v["id"].as_str().unwrap_or_else(|| panic!("{v}")).to_owned();
    let j = eventually(120, "the job to end", || {
        let j = job(n, &id);
        matches!(j["job"]["state"].as_str(), Some("completed" | "failed")).then_some(j)
    });
    assert_eq!(j["job"]["state"], "completed", "{j}");
    let worker = net.nodes[1].id();
    let e = j["executions"].as_array().unwrap().iter().find(|e| e["state"] == "completed").unwrap().clone();
    assert_eq!(e["node"], Value::String(worker), "ran on the worker, which had to fetch the input");
    let out = Command::new("sha256sum").arg(&file).output().unwrap();
    let digest = text(&out.stdout).split_whitespace().next().unwrap().to_owned();
    assert!(e["stdout"].as_str().unwrap().starts_with(&format!("{digest}  data.bin")), "{e}");
}

/// A job submitted again completes at once from the receipt of its first
/// run (same job CID), across a requester restart, with nothing run;
/// `--no-cache` and nondeterministic jobs run; a receipt that does not
/// verify is ignored and the job runs.
#[test]
fn an_identical_job_completes_from_the_cache_of_receipts() {
    let mut net = Net::new();
    net.add("n0", &[]);
    let n = &net.nodes[0];
    let hello = sample("hello");
    let cli_home = net.home("cli");
    let submit = |n: &NodeProc, extra: &[&str]| -> Value {
        let mut args = vec!["--json", "submit", "--wait", "-q"];
        args.extend_from_slice(extra);
        args.push(hello.to_str().unwrap());
        args.extend_from_slice(&["--", "cached?"]);
        let o = cli(n, &cli_home, &args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let id = last_completed(n);
        job(n, &id)
    };
    let first = submit(n, &[]);
    assert!(first["job"]["cached"].is_null(), "{first}");
    assert_eq!(first["executions"].as_array().unwrap().len(), 1, "{first}");
    let receipt = first["job"]["receipt"].as_str().unwrap().to_owned();
    let again = submit(n, &[]);
    assert_ne!(again["job"]["id"], first["job"]["id"]);
    assert_eq!(again["job"]["cached"].as_str(), Some(receipt.as_str()), "{again}");
    assert_eq!(again["job"]["result"], first["job"]["result"]);
    assert_eq!(again["job"]["outcome"], "succeeded");
    assert!(again["executions"].as_array().unwrap().is_empty(), "run nowhere: {again}");
    let described = cli(n, &cli_home, &["job", "describe", again["job"]["id"].as_str().unwrap()]);
    assert!(text(&described.stdout).contains(&format!("cached:  {receipt}")), "{}", text(&described.stdout));
    let forced = submit(n, &["--no-cache"]);
    assert!(forced["job"]["cached"].is_null() && forced["executions"].as_array().unwrap().len() == 1, "{forced}");
    let nondet = submit(n, &["--nondeterministic"]);
    let nondet2 = submit(n, &["--nondeterministic"]);
    assert!(nondet2["job"]["cached"].is_null(), "a nondeterministic job is never cached: {nondet2}");
    assert!(!nondet["executions"].as_array().unwrap().is_empty());

    // Across a restart: the receipts are the node's.
    let home = net.nodes[0].home.clone();
    net.nodes[0].kill();
    net.nodes[0] = start_node(&home, &[]);
    let n = &net.nodes[0];
    let after = submit(n, &[]);
    assert!(after["job"]["cached"].is_string(), "{after}");

    // A forged receipt in the node's records is ignored: the job runs.
    net.nodes[0].kill();
    {
        let db = shoal_scheduler::db::Db::open(home.join("scheduler.sqlite")).unwrap();
        let store = shoal_storage::FsStore::open(&home).unwrap();
        let genuine = {
            use shoal_storage::BlockStore as _;
            store.get(&receipt.parse().unwrap()).unwrap().data().to_vec()
        };
        let mut forged: Value = serde_json::from_slice(&genuine).unwrap();
        forged["completed_ms"] = serde_json::json!(forged["completed_ms"].as_u64().unwrap() + 1);
        let bytes = serde_json::to_vec(&forged).unwrap();
        let block = shoal_storage::Block::new(shoal_storage::CidVersion::V1, shoal_storage::block::RAW, bytes.clone());
        {
            use shoal_storage::BlockStore as _;
            store.put(&block).unwrap();
            store.pin_add(block.cid(), shoal_storage::PinMode::Recursive).unwrap();
            store.flush().unwrap();
        }
        for j in db.jobs(None, 10_000).unwrap() {
            if j.receipt.is_some() {
                let mut j = j;
                j.receipt = Some(*block.cid());
                db.update_job(&j).unwrap();
            }
        }
    }
    net.nodes[0] = start_node(&home, &[]);
    let n = &net.nodes[0];
    let ran = submit(n, &[]);
    assert!(ran["job"]["cached"].is_null(), "a forged receipt was trusted: {ran}");
    assert_eq!(ran["executions"].as_array().unwrap().len(), 1, "{ran}");
    assert_eq!(ran["job"]["result"], first["job"]["result"]);
}

/// A compute node started with `--allow-requester` works only for the
/// requesters it names: it announces so, others never place work on it
/// (their submissions say how many nodes could run the job), and it would
/// decline their bids anyway.
#[test]
fn a_node_that_allows_other_requesters_only_is_never_asked() {
    let mut net = Net::new();
    net.add("requester", &["--no-compute", "--label", "name=requester"]);
    let stranger = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    net.add("closed", &["--allow-requester", stranger, "--label", "name=closed"]);
    net.add("open", &["--label", "name=open"]);
    wait_for_nodes(&net.nodes[0], 3);
    let (closed, open) = (net.nodes[1].id(), net.nodes[2].id());
    // Give the requester an announcement from each.
    eventually(30, "the closed node's announcement", || {
        let v = get(&format!("{}/v1/nodes", net.nodes[0].api)).1;
        let n = v["nodes"].as_array()?.iter().find(|n| n["node"]["id"] == Value::String(closed.clone()))?.clone();
        (n["node"]["compute"] == Value::Bool(false)).then_some(())
    });
    for i in 0..4 {
        let o = cli(
            &net.nodes[0],
            &net.home("cli"),
            &["submit", "--wait", "-q", sample("hello").to_str().unwrap(), "--", &format!("allow-{i}")],
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        let j = job(&net.nodes[0], &last_completed(&net.nodes[0]));
        assert!(j["executions"].as_array().unwrap().iter().all(|e| e["node"] == Value::String(open.clone())), "{j}");
    }
    // A job only the closed node could run: the submission says no node can.
    let o = cli(
        &net.nodes[0],
        &net.home("cli"),
        &["submit", "--constraint", "name=closed", sample("hello").to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("only 0 node(s)"), "{}", text(&o.stderr));
}

/// The CLI end to end for submitters and pipelines, with real processes:
/// `shoal whoami`; a signed submission recorded with its submitter; a
/// pipeline file with local paths (uploaded) run with `submit -f --wait`,
/// under a requester quota of one unfinished job per submitter (its
/// fan-out steps take turns); its receipt verified offline by `shoal
/// receipt verify`; and the quota's refusal as the CLI prints it.
#[test]
fn the_cli_signs_submissions_runs_pipelines_and_verifies_their_receipts() {
    let mut net = Net::new();
    net.add("requester", &["--quota-jobs", "1"]);
    net.add("c1", &[]);
    wait_for_nodes(&net.nodes[0], 2);
    let n = &net.nodes[0];
    let home = net.home("cli");
    let o = cli(n, &home, &["whoami"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let me = text(&o.stdout).trim().to_owned();
    assert!(me.starts_with("12D3KooW"), "{me}");
    assert_eq!(text(&cli(n, &home, &["whoami"]).stdout).trim(), me, "the client key is kept");

    let o = cli(n, &home, &["submit", "--wait", "-q", sample("hello").to_str().unwrap(), "--", "signed"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let j = job(n, &last_completed(n));
    assert_eq!(j["job"]["submitter"]["key"], Value::String(me.clone()), "{j}");

    // A diamond over local files: a counts the texts, b and c count a's
    // table, d counts b's and c's.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(sample("wordcount"), dir.path().join("wc.wasm")).unwrap();
    let pipeline = format!(
        "steps:
  a:
    task: {{module: wc.wasm, inputs: [{{cid: {texts}, mount: /inputs}}]}}
  b:
    task: {{module: wc.wasm, inputs: [{{from: a, mount: /inputs}}]}}
    redundancy: {{count: 2}}
  c:
    task:
      module: wc.wasm
      env: {{STEP: c}}
      inputs: [{{from: a, path: counts.tsv, mount: /inputs/a.tsv}}]
  d:
    task:
      module: wc.wasm
      inputs:
        - {{from: b, path: counts.tsv, mount: /inputs/b.tsv}}
        - {{from: c, path: counts.tsv, mount: /inputs/c.tsv}}
",
        texts = texts().display()
    );
    std::fs::write(dir.path().join("pipeline.yaml"), pipeline).unwrap();
    let file = dir.path().join("pipeline.yaml");
    let o = cli(n, &home, &["submit", "-f", file.to_str().unwrap(), "--wait", "--wait-timeout", "120s"]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with("a ") && lines[3].starts_with("d "), "steps in order: {out}");
    let receipt = lines[4].strip_prefix("receipt\t").expect("a receipt line").to_owned();

    // Verified offline in a fresh home, the blocks fetched from the node.
    let o = cli(n, &net.home("verifier"), &["--json", "receipt", "verify", &receipt]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pipeline"], Value::Bool(true), "{v}");
    assert_eq!(v["steps"].as_array().unwrap().len(), 4, "{v}");
    let d = v["steps"].as_array().unwrap().iter().find(|s| s["step"] == "d").unwrap().clone();
    assert!(lines[3].ends_with(d["result"].as_str().unwrap()), "{out} / {v}");

    // The quota: one job that cannot run holds the submitter's only place.
    let hello = sample("hello");
    let o = cli(n, &home, &["submit", "--constraint", "name=nowhere", hello.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = cli(n, &home, &["submit", hello.to_str().unwrap(), "--", "second"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("its quota is 1"), "{}", text(&o.stderr));
    // Another submitter still has room.
    let o = cli(n, &net.home("other"), &["submit", "--wait", "-q", hello.to_str().unwrap(), "--", "other"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}
