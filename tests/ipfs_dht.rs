//! The IPFS DHT, against real Kubo (v0.22, as a library, through
//! `scripts/kubo-peer.py`), all on loopback in this test's network
//! namespace: a Shoal node is a DHT server that Kubo nodes use to find
//! each other's data, and a Shoal node finds a Kubo provider through the
//! DHT and fetches the data over Bitswap.
//!
//! On loopback Kubo's DHT traffic runs on its LAN DHT
//! (`/ipfs/lan/kad/1.0.0`): its WAN DHT keeps only peers with public
//! addresses.

mod common;
use common::kubo::Kubo;
use common::procs::*;
use common::random_bytes;

/// A counter on `node`'s `/metrics` (0 when absent).
fn counter(node: &NodeProc, name: &str) -> u64 {
    let body = agent().get(&format!("{}/metrics", node.api)).call().unwrap().body_mut().read_to_string().unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// The peer ids a Kubo node is connected to.
fn kubo_peers(kubo: &mut Kubo, name: &str) -> Vec<String> {
    let v = kubo.call(serde_json::json!({"op": "peers", "name": name}));
    v["peers"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect()
}

#[test]
fn kubo_and_shoal_find_providers_through_a_shoal_dht_node() {
    let mut kubo = Kubo::start();
    let k1 = kubo.node("k1", "dhtserver");
    let mut net = Net::new();
    // S: a Shoal node connected to K1 only (K1 is its DHT bootstrap peer).
    let s = net.add("s", &["--ipfs-peer", &k1.addr]);
    let s_id = net.nodes[s].id();
    eventually(30, "k1 to see s", || kubo_peers(&mut kubo, "k1").contains(&s_id).then_some(()));
    // Identify and K1's routing table need a moment after the connection:
    // K1 provides only to the DHT servers in its table when it adds.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.bin");
    let data = random_bytes(700_000, 21);
    std::fs::write(&file, &data).unwrap();
    let cid = kubo.add(&k1, &file);

    // (a) K2, connected to S only, reaches K1 through S's DHT and fetches
    // (through its routing-table answers, not the provider record: Kubo
    // asks S for no providers here; see docs/ipfs.md, "What a node provides").
    let k2 = kubo.node("k2", "dhtserver");
    // K2 is told of S alone. (It may meet K1 within milliseconds, through
    // S's answers to its DHT bootstrap: asserting that it is connected to
    // S alone here was a race.)
    kubo.connect(&k2, &net.nodes[s].peer);
    let out = dir.path().join("k2.bin");
    let v = kubo.download(&k2, &cid, &out, 60);
    assert_eq!(v["ok"], true, "k2 could not fetch {cid} through shoal's dht: {v}");
    eprintln!("k2 found and fetched {cid} in {:.2} s", v["seconds"].as_f64().unwrap_or(-1.0));
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(kubo_peers(&mut kubo, "k2").contains(&k1.id), "k2 reached k1");
    // S never had the data: K2 got it from K1, which it knew through S.
    assert_eq!(counter(&net.nodes[s], "shoal_bitswap_blocks_sent_total"), 0);
    let o = cli(&net.nodes[s], &net.nodes[s].home, &["pin", "ls"]);
    assert!(!text(&o.stdout).contains(&cid), "s holds {cid}");

    // (b) S2, a Shoal node connected to S only (not to any Kubo), finds
    // K1 through the DHT and fetches the file over Bitswap.
    let s2 = net.add("s2", &[]);
    let s2_id = net.nodes[s2].id();
    let got = dir.path().join("s2.bin");
    let o = cli(&net.nodes[s2], &net.home("cli"), &["get", &cid, "-o", got.to_str().unwrap()]);
    assert!(o.status.success(), "s2 could not fetch {cid}: {}", text(&o.stderr));
    assert_eq!(std::fs::read(&got).unwrap(), data);
    assert!(counter(&net.nodes[s2], "shoal_bitswap_bytes_received_total") >= data.len() as u64);
    assert!(kubo_peers(&mut kubo, "k1").contains(&s2_id), "s2 fetched from k1");
    assert_eq!(counter(&net.nodes[s], "shoal_bitswap_blocks_sent_total"), 0, "s still had nothing to give");
    // S2 pinned what it fetched, and provides it: its record reaches the
    // DHT (S, K1), and /metrics counts it.
    eventually(60, "s2 to publish a provider record", || {
        (counter(&net.nodes[s2], "shoal_ipfs_provider_records_published_total") >= 1).then_some(())
    });
    // S holds the records others left with it (S2's, and K2's for what it
    // fetched), and `shoal nodes` shows each node's IPFS counters.
    eventually(30, "s to hold provider records", || {
        (counter(&net.nodes[s], "shoal_ipfs_provider_records_received_total") >= 1).then_some(())
    });
    // Whether S2 looked the provider up on S (S then hands out a record:
    // `…_provider_records_served_total`) or met K1 first through S's
    // answers to its DHT bootstrap depends on timing; the counters say
    // which (see docs/ipfs.md).
    eprintln!(
        "s answered {} provider lookups, handing out {} records",
        counter(&net.nodes[s], "shoal_ipfs_provider_lookups_answered_total"),
        counter(&net.nodes[s], "shoal_ipfs_provider_records_served_total")
    );
    let o = cli(&net.nodes[s2], &net.nodes[s2].home, &["nodes"]);
    let shown = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let bitswap =
        shown.lines().find(|l| l.starts_with("ipfs (this node): bitswap")).unwrap_or_else(|| panic!("{shown}"));
    assert!(bitswap.contains(&format!("received {} (", counter(&net.nodes[s2], "shoal_bitswap_blocks_received_total"))));
    assert!(!bitswap.contains("received 0 ("), "{bitswap}");
    let dht = shown.lines().find(|l| l.starts_with("ipfs (this node): dht")).unwrap_or_else(|| panic!("{shown}"));
    assert!(!dht.contains("published 0,"), "{dht}");
}

#[test]
fn a_fetch_names_the_cid_and_the_dht_when_nobody_has_it() {
    let mut net = Net::new();
    let a = net.add("a", &["--ipfs-dht-timeout", "3s"]);
    let _b = net.add("b", &[]);
    // A CID nobody holds (a raw block of these bytes).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.txt");
    std::fs::write(&file, b"held by nobody in this test").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_HOME", net.home("scratch"))
        .args(["add", "-q"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let cid = text(&o.stdout).trim().to_owned();
    let got = dir.path().join("out");
    let t0 = std::time::Instant::now();
    let o = cli(&net.nodes[a], &net.home("cli"), &["get", &cid, "-o", got.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains(&cid) && err.contains("ipfs dht"), "{err}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(30), "{:?}", t0.elapsed());
}
