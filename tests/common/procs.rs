//! Real `shoal node` processes on loopback for the integration tests:
//! starting them, their API, the CLI against them, waiting.
// Each test crate uses its own subset.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn sample(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let st = Command::new("make").arg("-C").arg(root().join("samples")).status().expect("make");
        assert!(st.success(), "building samples failed: run scripts/setup.sh --samples");
    });
    root().join("samples/build").join(format!("{name}.wasm"))
}

pub fn texts() -> PathBuf {
    root().join("samples/data/texts")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One running node process.
pub struct NodeProc {
    pub child: Child,
    pub home: PathBuf,
    pub api: String,
    pub peer: String,
}

impl NodeProc {
    /// Its peer id (the last part of its multiaddr).
    pub fn id(&self) -> String {
        self.peer.rsplit('/').next().unwrap().to_owned()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `shoal node` with `extra` flags and waits for its ready line.
pub fn start_node(home: &Path, extra: &[&str]) -> NodeProc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--home")
        .arg(home)
        .arg("node")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn shoal node");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).expect("node did not print its ready line in 60 s");
    let rest = line.trim().strip_prefix("ready ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let mut api = String::new();
    let mut peer = String::new();
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("api=") {
            api = v.to_owned();
        } else if let Some(v) = part.strip_prefix("peer=") {
            peer = v.to_owned();
        }
    }
    NodeProc { child, home: home.to_owned(), api, peer }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

pub fn get(url: &str) -> (u16, Value) {
    let mut r = agent().get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_json().unwrap_or(Value::Null))
}

pub fn cli(node: &NodeProc, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_HOME", home)
        .env("SHOAL_NODE", &node.api)
        .args(args)
        .output()
        .unwrap()
}

/// Polls `f` every 100 ms until it returns Some, for at most `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `node` sees `n` nodes (itself included).
pub fn wait_for_nodes(node: &NodeProc, n: usize) {
    eventually(30, "nodes to see each other", || {
        let (_, v) = get(&format!("{}/v1/nodes", node.api));
        (v["nodes"].as_array().map_or(0, Vec::len) >= n).then_some(())
    });
}

/// A requester plus compute nodes, each with its own home.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
}

impl Net {
    pub fn new() -> Net {
        Net { dir: tempfile::tempdir().unwrap(), nodes: Vec::new() }
    }

    pub fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Adds a node joined to the first one.
    pub fn add(&mut self, name: &str, extra: &[&str]) -> usize {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(first) = self.nodes.first() {
            args.push("--peer".into());
            args.push(first.peer.clone());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let n = start_node(&self.home(name), &argv);
        self.nodes.push(n);
        self.nodes.len() - 1
    }
}

/// The result CID of a local `shoal run` of the word count.
pub fn local_wordcount() -> String {
    let t = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_HOME", t.path())
        .args([
            "run",
            "-q",
            "--input",
            &format!("{}:/inputs", texts().display()),
            sample("wordcount").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout).lines().last().unwrap().to_owned()
}

/// `shoal submit --wait -q MODULE` on `node`, with an `--input` for each of
/// `inputs` (`CID_OR_PATH:/mount`) and `extra` flags.
pub fn submit_wait(node: &NodeProc, home: &Path, inputs: &[String], extra: &[&str], module: &Path) -> Output {
    let mut args = vec!["submit", "--wait", "--wait-timeout", "120s", "-q"];
    for i in inputs {
        args.extend(["--input", i.as_str()]);
    }
    args.extend_from_slice(extra);
    args.push(module.to_str().unwrap());
    cli(node, home, &args)
}
