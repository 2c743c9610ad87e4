//! Shoal as an IPFS peer, proven against real Kubo (v0.22, run in this
//! test's network namespace through `scripts/kubo-peer.py`): data added to
//! Kubo becomes a job's input by CID alone, fetched over Bitswap, and Kubo
//! fetches a job's result from a Shoal node the same way.

mod common;
use common::kubo::Kubo;
use common::procs::*;
use common::random_bytes;
use std::process::Command;

/// The sum of a counter over the nodes' `/metrics`.
fn counter(net: &Net, name: &str) -> u64 {
    net.nodes
        .iter()
        .map(|n| {
            let body = agent().get(&format!("{}/metrics", n.api)).call().unwrap().body_mut().read_to_string().unwrap();
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
        })
        .sum()
}

/// Every file under `dir`: relative path and bytes, sorted.
fn tree(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn kubo_data_is_a_redundant_jobs_input_and_kubo_fetches_the_result() {
    let mut kubo = Kubo::start();
    let k = kubo.node("k", "none");
    let dir = tempfile::tempdir().unwrap();
    // A file of several chunks (256 KiB each) and a directory.
    let blob = dir.path().join("blob.bin");
    std::fs::write(&blob, random_bytes(1_500_000, 12)).unwrap();
    let blob_cid = kubo.add(&k, &blob);
    let texts_cid = kubo.add(&k, &texts());

    let mut net = Net::new();
    for i in 0..3 {
        net.add(&format!("n{i}"), &["--ipfs-peer", &k.addr]);
    }
    wait_for_nodes(&net.nodes[0], 3);
    let wc = sample("wordcount");
    let inputs = [format!("{texts_cid}:/inputs"), format!("{blob_cid}:/data/blob.bin")];
    let o = submit_wait(&net.nodes[0], &net.home("cli"), &inputs, &["--redundancy", "3"], &wc);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let result = text(&o.stdout).lines().last().unwrap().to_owned();
    // The same job run locally over the same files.
    let local = {
        let t = tempfile::tempdir().unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .env("SHOAL_HOME", t.path())
            .args(["run", "-q", "--input", &format!("{}:/inputs", texts().display())])
            .args(["--input", &format!("{}:/data/blob.bin", blob.display()), wc.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout).lines().last().unwrap().to_owned()
    };
    assert_eq!(result, local, "the agreed result is what a local run gives");
    // The inputs came from Kubo over Bitswap: three executors each needed
    // every block of the 1.5 MB file at least once, from Kubo or from a
    // Shoal node that got them from it.
    let received = counter(&net, "shoal_bitswap_bytes_received_total");
    assert!(received >= 1_500_000, "bitswap brought {received} bytes");
    eventually(30, "every bitswap fetch to end", || {
        (counter(&net, "shoal_bitswap_wants_in_flight") == 0).then_some(())
    });

    // Kubo, connected to one Shoal node only, downloads the result.
    let list = get(&format!("{}/v1/jobs?state=completed", net.nodes[0].api)).1;
    let id = list["jobs"][0]["id"].as_str().unwrap().to_owned();
    let j = get(&format!("{}/v1/jobs/{id}", net.nodes[0].api)).1;
    let executor = j["executions"].as_array().unwrap()[0]["node"].as_str().unwrap().to_owned();
    let node = net.nodes.iter().find(|n| n.id() == executor).unwrap();
    eventually(30, "the executor to pin its result", || {
        let pins = cli(node, &node.home, &["pin", "ls"]);
        text(&pins.stdout).lines().any(|l| l.starts_with(&format!("{result} "))).then_some(())
    });
    let reader = kubo.node("reader", "none");
    kubo.connect(&reader, &node.peer);
    let sent_before = counter(&net, "shoal_bitswap_blocks_sent_total");
    let out = dir.path().join("result");
    let v = kubo.download(&reader, &result, &out, 60);
    assert_eq!(v["ok"], true, "kubo could not download {result} from shoal: {v}");
    // What Kubo wrote is the result, file for file.
    let got = dir.path().join("shoal-get");
    let o = cli(node, &net.home("cli"), &["get", &result, "-o", got.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(tree(&out), tree(&got));
    assert!(tree(&out).iter().any(|(p, _)| p == "exitCode"), "{:?}", tree(&out));
    assert!(counter(&net, "shoal_bitswap_blocks_sent_total") > sent_before);
}

#[test]
fn unpinned_blocks_are_not_served_unless_the_policy_says_all() {
    let mut kubo = Kubo::start();
    let reader = kubo.node("reader", "none");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cached.bin");
    std::fs::write(&file, random_bytes(300_000, 5)).unwrap();
    let mut net = Net::new();
    let pinned = net.add("pinned", &[]);
    // Not joined to the first: over the IPFS DHT (Kubo speaks its LAN DHT
    // even with routing "none") it would learn of the reader through
    // `pinned`, connect to it, and answer the reader's wants itself.
    net.nodes.push(start_node(&net.home("all"), &["--ipfs-serve", "all"]));
    let all = net.nodes.len() - 1;
    // The same blocks in both stores, pinned in neither: added then
    // unpinned, they stay until a gc, as a cache would.
    let mut cid = String::new();
    for i in [pinned, all] {
        let home = net.nodes[i].home.to_str().unwrap().to_owned();
        let o =
            Command::new(env!("CARGO_BIN_EXE_shoal")).args(["--home", &home, "add", "-q"]).arg(&file).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        cid = text(&o.stdout).trim().to_owned();
        let o = Command::new(env!("CARGO_BIN_EXE_shoal")).args(["--home", &home, "pin", "rm", &cid]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    kubo.connect(&reader, &net.nodes[pinned].peer);
    let v = kubo.download(&reader, &cid, &dir.path().join("a"), 5);
    assert_eq!(v["ok"], false, "a node serving pinned data gave away a cached block: {v}");
    kubo.connect(&reader, &net.nodes[all].peer);
    let v = kubo.download(&reader, &cid, &dir.path().join("b"), 30);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), std::fs::read(&file).unwrap());
}
