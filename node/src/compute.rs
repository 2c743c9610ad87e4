//! The compute side of a node: it accepts bids while it has free slots,
//! runs accepted executions with the runtime over inputs fetched by CID,
//! commits to the result (a hash of the result CID and a secret nonce) and
//! reveals it only when the requester asks, after it has collected the
//! commitments it needs.
//!
//! Every execution it takes is journalled in the node's database (see
//! [`shoal_scheduler::db::JournalEntry`]): when it starts, and once its
//! result is durable and pinned, with what it committed to. A restarted
//! node reads the journal back: it reports again, and reveals, what it had
//! committed to, and tells the requesters of the executions it was running
//! that they will not finish.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use libp2p::PeerId;
use shoal_runtime::job;
use shoal_runtime::{Config, Executor};
use shoal_scheduler::commit;
use shoal_scheduler::db::{Committed, JournalEntry};
use shoal_scheduler::model::ExecMeta;
use shoal_scheduler::net::proto::{self, Gpu, Request, Response};
use shoal_scheduler::receipt;
use shoal_scheduler::spec::{NnMode, NnTarget, Spec};
use shoal_storage::Cid;

use super::{fetch, Node};

/// How many times a commitment or failure report is retried (the requester
/// may be restarting), with doubling delays from 200 ms.
pub const REPORT_RETRIES: u32 = 8;
/// The first delay before retrying a report or a fetch; each next one is
/// twice as long, up to [`LAST_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_millis(200);
/// The longest delay between retries.
pub const LAST_RETRY: Duration = Duration::from_secs(5);

fn next_retry(delay: Duration) -> Duration {
    (delay * 2).min(LAST_RETRY)
}

/// How many times fetching an execution's module and inputs is retried
/// (from a requester that may be restarting), with doubling delays from
/// 200 ms up to 5 s: about 20 s in all.
pub const FETCH_RETRIES: u32 = 6;
/// Most executions remembered at once (finished ones are forgotten after
/// their reveal, or the oldest first beyond this).
pub const MAX_TRACKED: usize = 4096;
/// Results waiting to be made durable and pinned by the keeper (see
/// [`keeper`]); past this an execution pins its own result.
pub const KEEP_QUEUE: usize = 1024;
/// How long the keeper gathers results before one flush for all of them.
pub const KEEP_BATCH: Duration = Duration::from_millis(100);

/// Deliberately wrong behaviours, for tests of the network's defences
/// (`shoal node --misbehave`, in debug builds only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehave {
    /// Runs the job, then commits to (and reveals) a different result.
    WrongResult,
    /// Exits the whole process once an execution has started.
    Crash,
    /// Accepts executions and never reports on them.
    Silent,
}

impl std::str::FromStr for Misbehave {
    type Err = String;

    fn from_str(s: &str) -> Result<Misbehave, String> {
        match s {
            "wrong-result" => Ok(Misbehave::WrongResult),
            "crash" => Ok(Misbehave::Crash),
            "silent" => Ok(Misbehave::Silent),
            _ => Err(format!("unknown misbehaviour {s:?}: expected wrong-result, crash or silent")),
        }
    }
}

enum State {
    /// Fetching inputs or running; the token stops it.
    Running(shoal_runtime::Cancel),
    /// Cancelled, and still holding its slot until the guest has stopped.
    Stopping,
    Done {
        result: Cid,
        nonce: [u8; 32],
        exit_code: i32,
        stdout: String,
        stderr: String,
        meta: Box<ExecMeta>,
    },
}

struct Slot {
    requester: PeerId,
    /// The job's CID, which the node's signatures name.
    job: Cid,
    state: State,
    order: u64,
}

/// The compute half of a node.
pub struct Compute {
    pub slots: u32,
    keep: tokio::sync::mpsc::Sender<Keep>,
    kept: Mutex<Option<tokio::sync::mpsc::Receiver<Keep>>>,
    pub gpu: Option<Gpu>,
    execs: Mutex<HashMap<String, Slot>>,
    runner: Arc<job::Runner<Arc<Executor>>>,
    scratch: PathBuf,
    // Read only by the debug builds' test misbehaviours.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    misbehave: Option<Misbehave>,
    counter: std::sync::atomic::AtomicU64,
    /// The requesters it works for; empty: any.
    pub allow: Vec<PeerId>,
    /// The submitters (keys, as peer ids) whose jobs it runs; empty: any.
    pub submitters: Vec<String>,
}

/// Total memory of this machine in bytes (0 if unknown). Read once: it is
/// asked on every bid and every scheduling pass.
pub fn memory_bytes() -> u64 {
    static TOTAL: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(read_memory_bytes)
}

fn read_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn head(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(proto::MAX_LOG_BYTES)]);
    s.into_owned()
}

/// The runtime's job spec for a scheduler spec. The program name is the
/// same as `shoal run` gives a module named by CID, so a network run and a
/// local run of the same job agree.
pub fn to_runtime(spec: &Spec) -> job::Spec {
    let t = &spec.task;
    let mut r = job::Spec::new(t.module);
    r.entry = match &t.invoke {
        Some(export) => shoal_runtime::Entry::Reactor { export: export.clone() },
        None => shoal_runtime::Entry::Command { export: t.entrypoint.clone() },
    };
    r.program_name = t.module.to_string();
    r.args = t.args.clone();
    r.env = t.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    r.inputs = t.inputs.iter().map(|i| job::Input { cid: i.cid, path: i.segments(), guest: i.mount.clone() }).collect();
    let mut l = shoal_runtime::Limits::default();
    l.memory = t.limits.memory.0;
    l.timeout = t.limits.timeout;
    if let Some(f) = t.limits.fuel {
        l.fuel = f;
    }
    l.inputs_bytes = t.limits.max_input.0;
    l.stdout = t.limits.stdout.0 as usize;
    l.stderr = t.limits.stderr.0 as usize;
    r.limits = l;
    r.deterministic = !t.nondeterministic;
    r.models = t.models.iter().map(|(name, cid)| (name.clone(), *cid)).collect();
    r.gpu = spec.resources.gpu;
    r.nn_mode = runtime_mode(spec.nn.mode);
    r.nn_auto = spec.nn.target == NnTarget::Auto;
    r
}

/// A spec's wasi-nn mode as the runtime names it.
pub fn runtime_mode(mode: NnMode) -> shoal_runtime::nn::Mode {
    match mode {
        NnMode::Exact => shoal_runtime::nn::Mode::Exact,
        NnMode::Fast => shoal_runtime::nn::Mode::Fast,
    }
}

impl Compute {
    /// A compute side with `slots`; with `gpu`, the GPU found (a software
    /// one only with `allow_software_gpu`) is announced and used. The
    /// caller owns `home` (holds its job database): leftovers in the
    /// scratch directory are removed.
    pub fn new(
        home: &Path,
        slots: u32,
        misbehave: Option<Misbehave>,
        gpu: bool,
        allow_software_gpu: bool,
    ) -> anyhow::Result<Compute> {
        let mut config = Config::default();
        config.cache_dir = Some(home.join("cache").join("modules"));
        config.max_concurrent_jobs = slots.max(1);
        config.allow_software_gpu = allow_software_gpu;
        // No Vulkan loader or device is not an error: the node computes on
        // the CPU and announces no GPU.
        let gpu = if gpu { shoal_runtime::nn::probe_gpu(allow_software_gpu) } else { None };
        let gpu = gpu.map(|g| Gpu {
            exact: g.exact_refused.is_none(),
            name: g.name,
            memory_bytes: g.memory_bytes,
            software: g.software,
            driver: g.driver,
        });
        let exec = Executor::new(config).context("cannot start the wasm engine")?;
        // Work directories an earlier process left (it crashed mid-run, or
        // kept spares): nothing in them is needed. The caller holds the
        // home's job database exclusively, so no other node uses them.
        let scratch = home.join("tmp").join("exec");
        match std::fs::remove_dir_all(&scratch) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                anyhow::bail!("cannot clear the scratch directory {}: {e}; remove it by hand", scratch.display())
            }
            _ => {}
        }
        let (keep, kept) = tokio::sync::mpsc::channel(KEEP_QUEUE);
        Ok(Compute {
            slots: slots.max(1),
            keep,
            kept: Mutex::new(Some(kept)),
            gpu,
            execs: Mutex::new(HashMap::new()),
            runner: Arc::new(job::Runner::new(Arc::new(exec))),
            scratch,
            misbehave,
            counter: Default::default(),
            allow: Vec::new(),
            submitters: Vec::new(),
        })
    }

    /// The requesters it runs executions for now: they watch it (see
    /// [`crate::Node::watchers`]).
    pub fn requesters(&self) -> std::collections::HashSet<PeerId> {
        let execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        execs.values().filter(|s| !matches!(s.state, State::Done { .. })).map(|s| s.requester).collect()
    }

    /// The keeper's end of the results queue (taken once, by [`keeper`]).
    pub fn take_kept(&self) -> Option<tokio::sync::mpsc::Receiver<Keep>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Takes back what an earlier process journalled: finished executions
    /// whose result is still pinned here are answered for again (reveals,
    /// and a repeated commitment report, see [`recovered`]); the rest (it
    /// was running them, or their result never became durable) are
    /// returned, to be reported failed and forgotten.
    pub fn recover(
        &self,
        journal: Vec<shoal_scheduler::db::JournalRow>,
        store: &dyn shoal_storage::BlockStore,
    ) -> Recovery {
        let mut out = Recovery::default();
        let mut execs = self.lock();
        for entry in journal {
            let entry = match entry {
                Ok(e) => e,
                Err((exec, e)) => {
                    tracing::warn!("forgetting journalled execution {exec}: {e}");
                    out.forget.push(exec);
                    continue;
                }
            };
            let (Ok(requester), Ok(job)) = (entry.requester.parse::<PeerId>(), entry.job.parse::<Cid>()) else {
                out.forget.push(entry.exec);
                continue;
            };
            match entry.done {
                Some(d) if fetch::held(store, &d.result) => {
                    let order = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let commitment = commit::commitment(&d.result, &d.nonce);
                    // Revealed ones were heard: answered for, not reported.
                    if !entry.revealed {
                        out.committed.push((requester, entry.exec.clone(), job, commitment, d.exit_code));
                    }
                    execs.insert(
                        entry.exec,
                        Slot {
                            requester,
                            job,
                            order,
                            state: State::Done {
                                result: d.result,
                                nonce: d.nonce,
                                exit_code: d.exit_code,
                                stdout: d.stdout,
                                stderr: d.stderr,
                                meta: Box::new(d.meta),
                            },
                        },
                    );
                }
                _ => out.unfinished.push((requester, entry.exec)),
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Slots not running an execution: one being stopped still holds its
    /// slot (and its instance in the engine's pool) until its guest has
    /// stopped.
    pub fn free_slots(&self) -> u32 {
        self.slots.saturating_sub(busy(&self.lock()))
    }

    /// Stops every running execution (the node is stopping); their slots
    /// free as their guests stop.
    pub fn cancel_all(&self) {
        let mut execs = self.lock();
        for s in execs.values_mut() {
            if let State::Running(cancel) = &s.state {
                cancel.cancel();
                s.state = State::Stopping;
            }
        }
    }

    /// Answers a request from a requester.
    pub async fn handle(self: &Arc<Self>, node: &Arc<Node>, peer: PeerId, request: Request) -> Response {
        match request {
            Request::Bid { exec, spec, submitter, .. } => self.bid(node, peer, exec, &spec, submitter.as_ref()),
            Request::Reveal { exec } => {
                let answer = self.reveal(node, peer, &exec);
                if matches!(answer, Response::Revealed { .. }) {
                    let n = node.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = n.db().journal_revealed(&[exec]) {
                            tracing::warn!("cannot update the execution journal: {e}");
                        }
                    });
                }
                answer
            }
            Request::Cancel { exec } => {
                let mut execs = self.lock();
                match execs.get_mut(&exec) {
                    Some(s) if s.requester == peer => match &s.state {
                        // Stopped first; the slot is freed once it has.
                        State::Running(cancel) => {
                            cancel.cancel();
                            s.state = State::Stopping;
                        }
                        State::Stopping => {}
                        State::Done { .. } => {
                            execs.remove(&exec);
                            forget(node, vec![exec]);
                        }
                    },
                    _ => {}
                }
                Response::Ok
            }
            // Answered by the node itself (see `Node::handle`).
            Request::Commit { .. } | Request::Failed { .. } | Request::Receipts { .. } | Request::Announce { .. } => {
                Response::Error { message: "the compute side does not answer this request".into() }
            }
        }
    }

    /// Accepts and starts an execution, or says why not.
    fn bid(
        self: &Arc<Self>,
        node: &Arc<Node>,
        peer: PeerId,
        exec: String,
        spec: &str,
        submitter: Option<&shoal_scheduler::model::Submitter>,
    ) -> Response {
        tracing::debug!(%exec, "bid received");
        let spec = match Spec::from_yaml_or_json(spec) {
            Ok(s) => s,
            Err(e) => return Response::Bid { accepted: false, reason: Some(format!("bad spec: {e}")) },
        };
        let reject = |reason: String| Response::Bid { accepted: false, reason: Some(reason) };
        if !self.allow.is_empty() && !self.allow.contains(&peer) {
            return reject(format!(
                "this node runs executions only for the requesters its operator allows (--allow-requester), and {peer} \
                 is not one of them"
            ));
        }
        let job = shoal_scheduler::receipt::job_cid(&spec);
        if !self.submitters.is_empty() {
            match submitter {
                None => {
                    return reject(
                        "this node runs only jobs of the submitters its operator allows (--allow-submitter), and this \
                         job was submitted without a signature"
                            .into(),
                    )
                }
                Some(s) if !self.submitters.contains(&s.key) => {
                    return reject(format!(
                        "this node runs only jobs of the submitters its operator allows (--allow-submitter), and {} \
                         is not one of them",
                        s.key
                    ))
                }
                Some(s) if s.pipeline.is_some() => {
                    return reject(format!(
                        "this job is a step of pipeline {}: its submitter {} signed the pipeline, not this step's \
                         spec, which this node (--allow-submitter) needs to check",
                        s.pipeline.as_deref().unwrap_or_default(),
                        s.key
                    ))
                }
                Some(s) if !s.verify(&job) => {
                    return reject(format!("the submitter's signature ({}) does not sign job {job}: refused", s.key))
                }
                // A job is not bid for after its timeouts.total: a claim
                // older than that (and the clocks' skew) was copied, from a
                // receipt say, to run the job again.
                Some(s)
                    if node.now().saturating_sub(s.at_ms)
                        > u64::try_from((spec.timeouts.total + crate::api::MAX_SUBMIT_SKEW).as_millis())
                            .unwrap_or(u64::MAX) =>
                {
                    return reject(format!(
                        "the submitter {} signed job {job} at {} ms, longer ago than its timeouts.total ({} s) \
                         allows: a claim copied from an earlier submission is refused; submit the job again",
                        s.key,
                        s.at_ms,
                        spec.timeouts.total.as_secs()
                    ));
                }
                Some(_) => {}
            }
        }
        if spec.resources.gpu && self.gpu.is_none() {
            return reject("this node has no gpu".into());
        }
        if spec.resources.gpu && spec.nn.mode == NnMode::Exact && !self.gpu.as_ref().is_some_and(|g| g.exact) {
            return reject("this node's gpu cannot run exact inference (nn.mode: exact)".into());
        }
        if spec.resources.memory.0 > memory_bytes() {
            return reject(format!(
                "job needs {} bytes of memory, this node has {}",
                spec.resources.memory,
                memory_bytes()
            ));
        }
        let mut execs = self.lock();
        if let Some(s) = execs.get(&exec) {
            // A repeated bid (a requester retrying after a restart): the
            // execution is already under way.
            return if s.requester == peer {
                Response::Bid { accepted: true, reason: None }
            } else {
                reject(format!("execution {exec} belongs to another requester"))
            };
        }
        if self.slots.saturating_sub(busy(&execs)) < spec.resources.slots {
            return reject("no free slot".into());
        }
        if execs.len() >= MAX_TRACKED {
            // Forget the oldest finished execution.
            if let Some(k) = execs
                .iter()
                .filter(|(_, s)| matches!(s.state, State::Done { .. }))
                .min_by_key(|(_, s)| s.order)
                .map(|(k, _)| k.clone())
            {
                execs.remove(&k);
                forget(node, vec![k]);
            } else {
                return reject("too many executions tracked".into());
            }
        }
        let order = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cancel = shoal_runtime::Cancel::new();
        execs.insert(exec.clone(), Slot { requester: peer, job, state: State::Running(cancel.clone()), order });
        drop(execs);
        self.start(node, peer, exec, spec, cancel);
        Response::Bid { accepted: true, reason: None }
    }

    /// Misbehaves at the start of an execution, for tests; true if the
    /// execution is then not run. Debug builds only: release builds carry
    /// no test misbehaviour.
    #[cfg(debug_assertions)]
    fn misbehave_at_start(self: &Arc<Self>, exec: &str, cancel: &shoal_runtime::Cancel) -> bool {
        match self.misbehave {
            Some(Misbehave::Silent) => {
                // Never reports; gives its slot back once cancelled.
                let (c, exec, cancel) = (self.clone(), exec.to_owned(), cancel.clone());
                tokio::spawn(async move {
                    while !cancel.is_cancelled() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    c.lock().remove(&exec);
                });
                true
            }
            Some(Misbehave::Crash) => {
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    eprintln!("misbehaving node: crashing mid-job on purpose");
                    std::process::exit(101);
                });
                true
            }
            _ => false,
        }
    }

    #[cfg(not(debug_assertions))]
    fn misbehave_at_start(self: &Arc<Self>, _: &str, _: &shoal_runtime::Cancel) -> bool {
        false
    }

    fn start(
        self: &Arc<Self>,
        node: &Arc<Node>,
        peer: PeerId,
        exec: String,
        spec: Spec,
        cancel: shoal_runtime::Cancel,
    ) {
        if self.misbehave_at_start(&exec, &cancel) {
            return;
        }
        let (node, c) = (node.clone(), self.clone());
        tokio::spawn(async move {
            let ran = run_execution(&node, &c, peer, &exec, &spec, &cancel).await;
            if cancel.is_cancelled() {
                // Stopped: its slot is free now, and nobody waits for it.
                c.lock().remove(&exec);
                forget(&node, vec![exec.clone()]);
                tracing::debug!(%exec, "cancelled execution stopped");
                return;
            }
            let finished = match ran {
                Ok(done) => done,
                Err(e) => {
                    let error = crate::message(&e);
                    let missing = e.downcast_ref::<MissingInput>().map(|m| m.0.to_string());
                    tracing::warn!("execution {exec} failed: {error}");
                    c.lock().remove(&exec);
                    forget(&node, vec![exec.clone()]);
                    report(&node, peer, Request::Failed { exec, error, missing }).await;
                    return;
                }
            };
            let Report { result, exit_code, stdout, stderr, meta } = finished;
            #[cfg(debug_assertions)]
            let result = if c.misbehave == Some(Misbehave::WrongResult) {
                wrong_result(&node, &result).await.unwrap_or(result)
            } else {
                result
            };
            let nonce: [u8; 32] = rand::random();
            let commitment = commit::commitment(&result, &nonce);
            let entry = JournalEntry {
                exec: exec.clone(),
                requester: peer.to_string(),
                job: String::new(),
                seq: 0,
                revealed: false,
                done: Some(Committed {
                    result,
                    nonce,
                    exit_code,
                    stdout: stdout.clone(),
                    stderr: stderr.clone(),
                    meta: ExecMeta::clone(&meta),
                }),
            };
            let (seq, job) = {
                let mut execs = c.lock();
                match execs.get_mut(&exec) {
                    Some(s) if matches!(s.state, State::Running(_)) => {
                        s.state = State::Done { result, nonce, exit_code, stdout, stderr, meta };
                        (s.order, s.job)
                    }
                    // Cancelled meanwhile (its guest had already finished).
                    _ => {
                        execs.remove(&exec);
                        drop(execs);
                        forget(&node, vec![exec]);
                        return;
                    }
                }
            };
            // Durable and journalled in the background: the commitment does
            // not wait for the disk (a node that dies first cannot reveal;
            // the requester then counts the execution lost).
            let entry = JournalEntry { seq, job: job.to_string(), ..entry };
            if let Err(e) = keep(&node, &c, Keep { result, entry: Some(entry) }).await {
                tracing::warn!("{}", crate::message(&e));
            }
            let signature = sign(&node, &receipt::commit_statement(&job, &exec, &commitment, exit_code));
            report(&node, peer, Request::Commit { exec, commitment, exit_code, signature }).await;
        });
    }

    fn reveal(&self, node: &Node, peer: PeerId, exec: &str) -> Response {
        let execs = self.lock();
        match execs.get(exec) {
            Some(s) if s.requester == peer => match &s.state {
                // Kept after the reveal (answers are idempotent: a
                // requester may ask again after a restart or a retry);
                // finished executions are evicted oldest first past
                // MAX_TRACKED, or on Cancel.
                State::Done { result, nonce, exit_code, stdout, stderr, meta } => Response::Revealed {
                    result: result.to_string(),
                    nonce: *nonce,
                    exit_code: *exit_code,
                    stdout: stdout.clone(),
                    stderr: stderr.clone(),
                    meta: ExecMeta::clone(meta),
                    signature: sign(node, &receipt::reveal_statement(&s.job, exec, result, nonce)),
                },
                _ => Response::Error { message: format!("execution {exec} has not finished") },
            },
            _ => Response::Error { message: format!("unknown execution {exec}") },
        }
    }
}

/// Signs `statement` with the node's key (hex), for receipts. Ed25519
/// signing cannot fail; an empty signature would only make the statement
/// unusable in a receipt.
fn sign(node: &Node, statement: &[u8]) -> String {
    node.key.sign(statement).map(hex::encode).unwrap_or_default()
}

/// What an execution produced.
struct Report {
    result: Cid,
    exit_code: i32,
    /// The heads of the output streams.
    stdout: String,
    stderr: String,
    meta: Box<ExecMeta>,
}

/// Executions holding a slot: running, or cancelled and not yet stopped.
fn busy(execs: &HashMap<String, Slot>) -> u32 {
    execs.values().filter(|s| matches!(s.state, State::Running(_) | State::Stopping)).count() as u32
}

/// Fetches what the job needs, runs it, and returns its result.
async fn run_execution(
    node: &Arc<Node>,
    c: &Compute,
    requester: PeerId,
    exec: &str,
    spec: &Spec,
    cancel: &shoal_runtime::Cancel,
) -> anyhow::Result<Report> {
    let mut rt = to_runtime(spec);
    // Target auto: this node's GPU if it runs exact inference.
    rt.nn_auto_gpu = c.gpu.as_ref().is_some_and(|g| g.exact);
    rt.cancel = Some(cancel.clone());
    // Pinned in the background (see `keeper`): the requester reads the
    // result from this process, which sees it at once.
    rt.pin_result = false;
    let mut roots = vec![rt.module];
    roots.extend(rt.inputs.iter().map(|i| i.cid));
    roots.extend(rt.models.iter().map(|(_, c)| *c));
    let (runner, store, scratch) = (c.runner.clone(), node.store.clone(), c.scratch.clone());
    // Usually all here already (pinned by an earlier run): one look at the
    // pins and, when nothing is missing, the run itself, in one trip to a
    // blocking thread, and no question to the network.
    let (st, sc, run) = (store.clone(), scratch.clone(), runner.clone());
    let (seq, job) = c.lock().get(exec).map_or((0, String::new()), |s| (s.order, s.job.to_string()));
    let running =
        JournalEntry { exec: exec.to_owned(), requester: requester.to_string(), job, seq, done: None, revealed: false };
    let n = node.clone();
    let first = tokio::task::spawn_blocking(move || {
        // Journalled before anything runs, so that a restarted node tells
        // the requester this execution will not finish.
        if let Err(e) = n.db().journal_put(&[running]) {
            tracing::warn!("cannot journal an execution: {e}");
        }
        let missing: Vec<Cid> = roots.into_iter().filter(|r| !fetch::held(&*st, r)).collect();
        if missing.is_empty() {
            tracing::debug!(module = %rt.module, "inputs here; running");
            Ok(run.run(&*st, &rt, &sc))
        } else {
            Err((missing, rt))
        }
    })
    .await
    .context("the execution thread panicked")?;
    let finished = match first {
        Ok(ran) => ran?,
        Err((missing, rt)) => {
            // The requester is usually the only provider: should it restart
            // meanwhile, wait for it (as reports do) rather than fail the job.
            let mut delay = FIRST_RETRY;
            for attempt in 0..=FETCH_RETRIES {
                match fetch_all(node, requester, &missing).await {
                    Ok(()) => break,
                    Err(e) if attempt < FETCH_RETRIES && !cancel.is_cancelled() => {
                        tracing::debug!("fetching the inputs of {exec} failed (attempt {attempt}): {e:#}");
                        tokio::time::sleep(delay).await;
                        delay = next_retry(delay);
                    }
                    Err(e) => return Err(e),
                }
            }
            tracing::debug!(module = %rt.module, "inputs fetched; running");
            tokio::task::spawn_blocking(move || runner.run(&*store, &rt, &scratch))
                .await
                .context("the execution thread panicked")??
        }
    };
    tracing::debug!(result = %finished.result, "ran");
    node.metrics.executions_run.inc();
    let o = &finished.outcome;
    let meta = Box::new(ExecMeta {
        nn_devices: o.nn_devices.clone(),
        wall_ms: o.wall_time.as_millis().try_into().unwrap_or(u64::MAX),
        fuel: o.fuel_consumed,
    });
    Ok(Report {
        result: finished.result,
        exit_code: finished.exit_status,
        stdout: head(&o.stdout.bytes),
        // The result's stderr: with the failure and a trap's backtrace.
        stderr: head(&finished.stderr),
        meta,
    })
}

/// An input no provider could give: the submitter's problem, reported as
/// such (see `Request::Failed::missing`).
#[derive(Debug)]
struct MissingInput(Cid);

impl std::fmt::Display for MissingInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot fetch the input {}", self.0)
    }
}

/// Fetches the DAGs under `roots` from the requester and the other peers.
async fn fetch_all(node: &Arc<Node>, requester: PeerId, roots: &[Cid]) -> anyhow::Result<()> {
    if roots.is_empty() {
        return Ok(());
    }
    let mut providers = vec![requester];
    if let Ok(peers) = node.client.peers().await {
        providers.extend(peers.into_iter().filter(|p| *p != requester));
    }
    providers.retain(|p| *p != node.peer);
    for root in roots {
        fetch::fetch_dag(node, *root, &providers).await.context(MissingInput(*root))?;
    }
    Ok(())
}

/// A result to make durable and pin, with the journal entry that may be
/// written once it is.
#[derive(Debug)]
pub struct Keep {
    result: Cid,
    entry: Option<JournalEntry>,
}

/// Hands a result to the keeper, or keeps it here when the keeper is
/// behind.
async fn keep(node: &Arc<Node>, c: &Arc<Compute>, k: Keep) -> anyhow::Result<()> {
    match c.keep.try_send(k) {
        Ok(()) => Ok(()),
        Err(tokio::sync::mpsc::error::TrySendError::Full(k) | tokio::sync::mpsc::error::TrySendError::Closed(k)) => {
            let (n, c) = (node.clone(), c.clone());
            tokio::task::spawn_blocking(move || keep_now(&n, &c, vec![k]))
                .await
                .context("the pinning thread panicked")?
        }
    }
}

/// Makes results durable and pins them (one flush for all of them), then
/// journals them as committed: a journalled result is always here.
fn keep_now(node: &Node, c: &Compute, batch: Vec<Keep>) -> anyhow::Result<()> {
    node.store.flush().context("cannot store execution results")?;
    let mut entries = Vec::new();
    for k in batch {
        let r = k.result;
        node.store
            .pin_add(&r, shoal_storage::PinMode::Recursive)
            .with_context(|| format!("cannot pin the result {r}"))?;
        entries.extend(k.entry);
    }
    // Only those still tracked: one cancelled or evicted meanwhile stays
    // forgotten.
    {
        let execs = c.lock();
        entries.retain(|e| execs.contains_key(&e.exec));
    }
    node.db().journal_put(&entries).context("cannot journal execution results")
}

/// Forgets executions in the journal (in the background).
fn forget(node: &Arc<Node>, execs: Vec<String>) {
    let n = node.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = n.db().journal_remove(&execs) {
            tracing::warn!("cannot update the execution journal: {e}");
        }
    });
}

/// What [`Compute::recover`] found in the journal.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Finished executions answered for again: (requester, execution,
    /// commitment, exit code).
    pub committed: Vec<(PeerId, String, Cid, [u8; 32], i32)>,
    /// Executions the earlier process was running, or whose result did not
    /// survive: reported failed, then forgotten.
    pub unfinished: Vec<(PeerId, String)>,
    /// Unreadable entries, forgotten.
    pub forget: Vec<String>,
}

/// After a restart: reports again what the journal says was committed (a
/// report the crash may have cut short; a repeated one is harmless), and
/// tells requesters which executions will not finish.
pub async fn recovered(node: Arc<Node>, recovery: Recovery) {
    let Recovery { committed, unfinished, forget: mut forget_ids } = recovery;
    forget_ids.extend(unfinished.iter().map(|(_, e)| e.clone()));
    forget(&node, forget_ids);
    if !committed.is_empty() || !unfinished.is_empty() {
        tracing::info!(
            "restarted: {} committed execution(s) taken back from the journal, {} unfinished one(s) given up",
            committed.len(),
            unfinished.len()
        );
    }
    let reports = committed
        .into_iter()
        .map(|(peer, exec, job, commitment, exit_code)| {
            let signature = sign(&node, &receipt::commit_statement(&job, &exec, &commitment, exit_code));
            (peer, Request::Commit { exec, commitment, exit_code, signature })
        })
        .chain(unfinished.into_iter().map(|(peer, exec)| {
            let error = "the compute node restarted during the execution; it will not finish".to_owned();
            (peer, Request::Failed { exec, error, missing: None })
        }));
    for (peer, request) in reports {
        let n = node.clone();
        tokio::spawn(async move { report(&n, peer, request).await });
    }
}

/// Pins execution results in the background, gathering them for
/// [`KEEP_BATCH`] so that one sync serves many: a result is a candidate
/// until the requester has fetched and pinned the agreed one, and a node
/// that dies before pinning loses its executions anyway (its restart marks
/// them lost), so nothing waits for the disk on the way to the commitment.
pub async fn keeper(node: Arc<Node>, c: Arc<Compute>, mut results: tokio::sync::mpsc::Receiver<Keep>) {
    while let Some(first) = results.recv().await {
        tokio::time::sleep(KEEP_BATCH).await;
        let mut batch = vec![first];
        while batch.len() < KEEP_QUEUE {
            match results.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (n, c) = (node.clone(), c.clone());
        match tokio::task::spawn_blocking(move || keep_now(&n, &c, batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{e:#}"),
            Err(e) => tracing::warn!("the pinning thread failed: {e}"),
        }
    }
}

/// A plausible but wrong result for a lying node: a real, stored result
/// directory whose stdout differs.
#[cfg(debug_assertions)]
async fn wrong_result(node: &Arc<Node>, honest: &Cid) -> Option<Cid> {
    let store = node.store.clone();
    let honest = *honest;
    tokio::task::spawn_blocking(move || {
        use shoal_storage::importer::{Importer, Options};
        let data = format!("forged by a lying node instead of {honest}\n");
        let opts = Options { cid_version: shoal_storage::CidVersion::V1, ..Options::default() };
        let added = Importer::new(&*store, opts).add_bytes(data.as_bytes()).ok()?;
        shoal_storage::pin::add(&*store, &added.root, shoal_storage::PinMode::Recursive).ok()?;
        Some(added.root)
    })
    .await
    .ok()
    .flatten()
}

/// Sends a report to the requester, retrying while it is unreachable.
async fn report(node: &Arc<Node>, requester: PeerId, request: Request) {
    let mut delay = FIRST_RETRY;
    for attempt in 0..=REPORT_RETRIES {
        match node.send(requester, request.clone()).await {
            Ok(_) => return,
            // This node is stopping: nobody is left to report for.
            Err(shoal_scheduler::net::Error::Stopped) => return,
            Err(e) => {
                tracing::debug!("report to {requester} failed (attempt {attempt}): {e}");
                tokio::time::sleep(delay).await;
                delay = next_retry(delay);
            }
        }
    }
    tracing::warn!("gave up reporting execution {} to {requester}", request.exec());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Spec {
        let text = format!("task:\n  module: bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku\n{extra}");
        Spec::from_yaml_or_json(&text).unwrap()
    }

    #[test]
    fn the_runtime_spec_carries_the_nn_mode_and_target() {
        let plain = to_runtime(&spec(""));
        assert_eq!(plain.nn_mode, shoal_runtime::nn::Mode::Exact);
        assert!(!plain.nn_auto);
        // Exact written out is the same job as before modes existed.
        assert_eq!(to_runtime(&spec("nn: {mode: exact}\n")).id(), plain.id());

        let fast = to_runtime(&spec("nn: {mode: fast}\nresources: {gpu: true}\n"));
        assert_eq!(fast.nn_mode, shoal_runtime::nn::Mode::Fast);
        assert!(fast.gpu);
        assert_eq!(fast.canonical()["nn"]["mode"], "fast");

        let auto = to_runtime(&spec("nn: {target: auto}\n"));
        assert!(auto.nn_auto && !auto.gpu);
        assert_eq!(auto.canonical()["nn"]["target"], "auto");
        assert_ne!(auto.id(), plain.id());
    }
}
