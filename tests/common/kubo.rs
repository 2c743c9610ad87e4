//! Real Kubo peers (v0.22, as a library) for the IPFS interoperability
//! tests, driven through `scripts/kubo-peer.py`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

/// One `kubo-peer.py` process, holding any number of Kubo nodes.
pub struct Kubo {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// A started Kubo node: its name in the process, peer id and addresses.
#[derive(Debug, Clone)]
pub struct KuboNode {
    pub name: String,
    pub id: String,
    pub addr: String,
}

impl Kubo {
    pub fn start() -> Kubo {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let lib = root.join(".deps/kubo");
        assert!(lib.is_dir(), "{} is missing: run `make deps-test` to install Kubo's library", lib.display());
        let mut child = Command::new("python3")
            .arg(root.join("scripts/kubo-peer.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn scripts/kubo-peer.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Kubo { child, stdin, stdout }
    }

    /// Sends one command and returns its answer, which must be ok.
    pub fn call(&mut self, cmd: Value) -> Value {
        let v = self.try_call(cmd.clone());
        assert_eq!(v["ok"], true, "kubo-peer: {cmd} -> {v}");
        v
    }

    /// Sends one command and returns its answer.
    pub fn try_call(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("kubo-peer answered {line:?}: {e}"))
    }

    /// Starts a Kubo node named `name` with `routing` ("none", "dht" or
    /// "dhtserver": the DHT tests use the last).
    pub fn node(&mut self, name: &str, routing: &str) -> KuboNode {
        let v = self.call(json!({"op": "start", "name": name, "routing": routing}));
        KuboNode {
            name: name.into(),
            id: v["id"].as_str().unwrap().into(),
            addr: v["addrs"][0].as_str().unwrap().into(),
        }
    }

    /// Adds (and pins) a file or directory on `node`; returns its CID.
    pub fn add(&mut self, node: &KuboNode, path: &Path) -> String {
        let v = self.call(json!({"op": "add", "name": node.name, "path": path}));
        v["cid"].as_str().unwrap().into()
    }

    pub fn connect(&mut self, node: &KuboNode, addr: &str) {
        self.call(json!({"op": "connect", "name": node.name, "addr": addr}));
    }

    /// Downloads `cid` through `node` (Bitswap, or the DHT) into `dest`.
    pub fn download(&mut self, node: &KuboNode, cid: &str, dest: &Path, timeout_s: u64) -> Value {
        self.try_call(json!({"op": "download", "name": node.name, "cid": cid, "dest": dest, "timeout": timeout_s}))
    }
}

impl Drop for Kubo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
