//! Jobs over content-addressed data: the part of the runtime that talks to
//! a block store.
//!
//! A [`Spec`] names everything by CID: the module, each input (a CID and an
//! optional path inside it, mounted read-only at a guest path), plus
//! arguments, environment, entry point and limits. [`run`] materialises the
//! module and inputs from the store into a scratch directory, runs the task
//! in the [`Executor`], and stores the result as one UnixFS directory
//! (CIDv1):
//!
//! ```text
//! exitCode    decimal exit status (0 success; the guest's code for exit(n);
//!             1 when it failed without exiting, see `failure`)
//! stdout      captured standard output (capped by Limits::stdout)
//! stderr      captured standard error (capped by Limits::stderr)
//! failure     present only when the job failed: why, in one line (a trap
//!             also has its Wasm backtrace in `stderr`)
//! truncated   present only when a stream hit its cap: the streams' names
//! nondeterministic  present only when the job ran with real clocks and
//!             randomness (`--nondeterministic`)
//! outputs/    the guest's /outputs tree
//! ```
//!
//! Its CID is *the* result CID: two honest nodes running the same spec in
//! deterministic mode produce the same one. Timings, fuel and node identity
//! are execution metadata returned beside it ([`Finished::outcome`]), never
//! inside it, so they cannot break agreement. The deterministic seed is the
//! spec's own hash, so a job's random numbers are a function of the job.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_storage::importer::{Importer, Options};
use shoal_storage::{exporter, BlockStore, Cid, CidVersion, PinMode};

use crate::{Entry, Executor, Failure, Limits, Mode, ModuleSource, Mount, Outcome, Task};

/// One input: data by CID (and path inside it), mounted read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Root CID of the data.
    pub cid: Cid,
    /// Path segments inside `cid` (empty: the root itself).
    pub path: Vec<String>,
    /// Absolute guest path to mount it at.
    pub guest: String,
}

/// A job described entirely by content addresses.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The module's CID.
    pub module: Cid,
    /// How the module is entered.
    pub entry: Entry,
    /// argv[0] as the guest sees it.
    pub program_name: String,
    /// argv[1..].
    pub args: Vec<String>,
    /// Environment (sorted before use; nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Read-only inputs.
    pub inputs: Vec<Input>,
    /// Limits for the execution.
    pub limits: Limits,
    /// Deterministic mode (the default) or real clocks and randomness.
    pub deterministic: bool,
    /// A live copy of the guest's output (not part of the spec's identity).
    pub tee: Option<crate::Tee>,
    /// Models for wasi-nn's `load_by_name`: (name, CID of the ONNX file).
    pub models: Vec<(String, Cid)>,
    /// The job asks for a GPU (wasi-nn `gpu` target; see `nn::NnTask::gpu`).
    pub gpu: bool,
    /// wasi-nn bounds.
    pub nn_limits: crate::nn::NnLimits,
    /// Exact (the default) or fast inference (see [`crate::nn::Mode`]).
    pub nn_mode: crate::nn::Mode,
    /// wasi-nn target `auto` (exact mode only): every graph runs on the
    /// device [`Spec::nn_auto_gpu`] picks, whatever target the guest names,
    /// so that one job runs on CPU and GPU nodes alike (exact results are
    /// the same on both). Part of the spec's identity.
    pub nn_auto: bool,
    /// With [`Spec::nn_auto`]: the node's GPU rather than its CPU (the node
    /// sets it when its GPU runs exact inference). Not part of the spec's
    /// identity: the executions of one job on CPU and GPU nodes are one job.
    pub nn_auto_gpu: bool,
    /// Make the result durable and pin it before returning (the default).
    /// Off, its blocks are written (and readable through this store) but
    /// flushing and pinning are left to the caller: a compute node does
    /// that in the background for many results at once, so that syncs do
    /// not sit on every job's latency; its result is only a candidate
    /// until the requester fetches and pins the agreed one. Not part of
    /// the spec's identity.
    pub pin_result: bool,
    /// Stops the run from another thread (see [`crate::Cancel`]). Not part
    /// of the spec's identity.
    pub cancel: Option<crate::Cancel>,
}

impl Spec {
    /// A deterministic spec running `module`'s `_start` with default limits.
    pub fn new(module: Cid) -> Spec {
        Spec {
            module,
            entry: Entry::Command { export: "_start".into() },
            program_name: "main".into(),
            args: Vec::new(),
            env: Vec::new(),
            inputs: Vec::new(),
            limits: Limits::default(),
            deterministic: true,
            tee: None,
            models: Vec::new(),
            gpu: false,
            nn_limits: crate::nn::NnLimits::default(),
            nn_mode: crate::nn::Mode::Exact,
            nn_auto: false,
            nn_auto_gpu: false,
            pin_result: true,
            cancel: None,
        }
    }

    /// The canonical JSON form (sorted keys): what the spec's id hashes.
    pub fn canonical(&self) -> serde_json::Value {
        let mut env = self.env.clone();
        env.sort();
        let (entry_kind, export) = match &self.entry {
            Entry::Command { export } => ("command", export.clone()),
            Entry::Reactor { export } => ("reactor", export.clone()),
        };
        let l = &self.limits;
        let mut v = serde_json::json!({
            "module": self.module.to_string(),
            "entry": { "kind": entry_kind, "export": export },
            "program_name": self.program_name,
            "args": self.args,
            "env": env,
            "inputs": self.inputs.iter().map(|i| serde_json::json!({
                "cid": i.cid.to_string(), "path": i.path, "guest": i.guest,
            })).collect::<Vec<_>>(),
            "limits": {
                "memory": l.memory, "table_elements": l.table_elements, "instances": l.instances,
                "tables": l.tables, "memories": l.memories, "fuel": l.fuel,
                "timeout_ms": l.timeout.as_millis() as u64, "stdout": l.stdout, "stderr": l.stderr,
                "outputs_bytes": l.outputs_bytes, "outputs_files": l.outputs_files,
                "inputs_bytes": l.inputs_bytes,
            },
            "deterministic": self.deterministic,
        });
        // Added only for jobs that use wasi-nn, so that every other spec
        // (and its id) is what it was before wasi-nn existed.
        if !self.models.is_empty()
            || self.gpu
            || self.nn_limits != crate::nn::NnLimits::default()
            || self.nn_mode != crate::nn::Mode::Exact
            || self.nn_auto
        {
            let n = &self.nn_limits;
            v["nn"] = serde_json::json!({
                "models": self.models.iter().map(|(name, cid)| serde_json::json!({
                    "name": name, "cid": cid.to_string(),
                })).collect::<Vec<_>>(),
                "gpu": self.gpu,
                "limits": {
                    "model_bytes": n.model_bytes, "tensor_bytes": n.tensor_bytes, "tensor_rank": n.tensor_rank,
                    "graphs": n.graphs, "contexts": n.contexts, "gpu_memory": n.gpu_memory,
                    "gpu_work": n.gpu_work, "cpu_memory": n.cpu_memory,
                },
            });
            // Exact, the default, is left out: specs from before modes
            // existed keep their ids.
            if self.nn_mode != crate::nn::Mode::Exact {
                v["nn"]["mode"] = serde_json::json!(self.nn_mode.as_str());
            }
            if self.nn_auto {
                v["nn"]["target"] = serde_json::json!("auto");
            }
        }
        v
    }

    /// The spec's id: a CIDv1 (raw, sha2-256) of its canonical JSON.
    pub fn id(&self) -> Cid {
        let bytes = serde_json::to_vec(&self.canonical()).unwrap_or_default();
        *shoal_storage::Block::new(CidVersion::V1, shoal_storage::block::RAW, bytes).cid()
    }
}

/// The deterministic seed of a spec: its id's SHA-256 digest.
fn seed_of(id: &Cid) -> [u8; 32] {
    let mut seed = [0u8; 32];
    let digest = id.hash().digest();
    let n = digest.len().min(32);
    seed[..n].copy_from_slice(&digest[..n]);
    seed
}

/// Why a job could not be run at all (as opposed to running and failing,
/// which is a result like any other).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The module or an input could not be read from the store.
    #[error("{what}: {source}")]
    Storage {
        /// Which part of the job ("module Qm…", "input Qm…/x -> /inputs").
        what: String,
        /// The storage error.
        #[source]
        source: shoal_storage::Error,
    },
    /// The executor could not run the task.
    #[error(transparent)]
    Runtime(#[from] crate::Error),
    /// The inputs hold more bytes than the job's limit allows.
    #[error("the inputs hold more than {limit} bytes (the job's input limit; {at} is where it was crossed); raise the limit (--max-input) or pass less data")]
    InputsTooLarge {
        /// `Limits::inputs_bytes`.
        limit: u64,
        /// The input being measured when the limit was crossed.
        at: String,
    },
    /// A model is larger than the job's model limit.
    #[error("model {name} ({cid}) is {size} bytes, more than the job's limit of {limit}; raise the limit or use a smaller model")]
    ModelTooLarge {
        /// Its name.
        name: String,
        /// Its CID.
        cid: Cid,
        /// Its size.
        size: u64,
        /// `NnLimits::model_bytes`.
        limit: u64,
    },
    /// Scratch space could not be prepared or read.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JobError + 'a {
    move |source| JobError::Io { action, path: path.to_path_buf(), source }
}

/// A finished job: its result CID and the execution metadata.
#[derive(Debug)]
pub struct Finished {
    /// The spec's id.
    pub spec: Cid,
    /// The result directory's CID (pinned).
    pub result: Cid,
    /// The CID of `outputs/` inside it.
    pub outputs: Cid,
    /// Exit status recorded in `exitCode`.
    pub exit_status: i32,
    /// The result's `stderr` as stored: the guest's standard error, then
    /// why it failed and a trap's Wasm backtrace (what a person debugging
    /// the job reads; `outcome.stderr` is the guest's part alone).
    pub stderr: Vec<u8>,
    /// The result's `failure` line, when the guest failed without exiting.
    pub failure: Option<String>,
    /// Everything the executor reported (timings, fuel, failure…).
    pub outcome: Outcome,
}

/// Exit status for an outcome: the guest's code when it exited, 1 for a
/// failure without an exit (limit, trap, bad module), 0 on success.
pub fn exit_status(o: &Outcome) -> i32 {
    match (o.success(), o.exit_code) {
        (true, _) => 0,
        (false, Some(c)) if c != 0 => c,
        _ => 1,
    }
}

/// Runs `spec` with data from `store`, using `scratch` (created if needed,
/// emptied afterwards) for the materialised inputs and the result tree;
/// stores and pins the result (unless [`Spec::pin_result`] is off).
pub fn run(exec: &Executor, store: &dyn BlockStore, spec: &Spec, scratch: &Path) -> Result<Finished, JobError> {
    Runner::new(exec).run(store, spec, scratch)
}

/// Module bytes kept in memory by a [`Runner`], by CID.
pub const MODULE_CACHE_ENTRIES: usize = 32;

/// Runs jobs with an executor, keeping recently used modules' bytes in
/// memory by CID: a CID names its bytes forever, so a warm process neither
/// re-reads nor re-hashes a module it has run (and the executor, which
/// remembers buffers it has seen, skips its own hashing too). `E` is how
/// the executor is held: `&Executor` for a runner that lives in a scope,
/// `Arc<Executor>` for one a long-lived service keeps.
pub struct Runner<E: std::ops::Deref<Target = Executor>> {
    exec: E,
    modules: std::sync::Mutex<Vec<(Cid, Arc<[u8]>)>>,
    /// Work directories left empty by earlier runs, with the scratch
    /// directory each lives in.
    spare: std::sync::Mutex<Vec<(PathBuf, tempfile::TempDir)>>,
}

/// Empty work directories a [`Runner`] keeps for its next runs. Creating
/// and removing a run's three directories was a sixth of a compute node's
/// CPU per trivial job (on ext4 mounted with `discard`, each removal also
/// waits for the device); most jobs leave them empty.
pub const SPARE_WORK_DIRS: usize = 16;

impl<E: std::ops::Deref<Target = Executor>> Runner<E> {
    /// A runner over `exec`.
    pub fn new(exec: E) -> Runner<E> {
        Runner { exec, modules: std::sync::Mutex::new(Vec::new()), spare: std::sync::Mutex::new(Vec::new()) }
    }

    /// A work directory under `scratch` holding empty `inputs/` and
    /// `outputs/`: a spare one, or a new one.
    fn work_dir(&self, scratch: &Path) -> Result<tempfile::TempDir, JobError> {
        {
            let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = spare.iter().position(|(s, _)| s == scratch) {
                return Ok(spare.swap_remove(i).1);
            }
        }
        fs::create_dir_all(scratch).map_err(io("cannot create scratch directory", scratch))?;
        let work = tempfile::Builder::new()
            .prefix("job-")
            .tempdir_in(scratch)
            .map_err(io("cannot create scratch directory in", scratch))?;
        for sub in ["inputs", "outputs"] {
            let dir = work.path().join(sub);
            fs::create_dir(&dir).map_err(io("cannot create", &dir))?;
        }
        Ok(work)
    }

    /// Keeps `work` for a later run if the run left it as it was given
    /// (nothing but empty `inputs/` and `outputs/`); otherwise it is
    /// removed, whatever the guest wrote with it.
    fn recycle(&self, scratch: &Path, work: tempfile::TempDir) {
        let empty = |p: &Path| fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(false);
        let as_given = fs::read_dir(work.path()).map(|d| d.count() == 2).unwrap_or(false)
            && empty(&work.path().join("inputs"))
            && empty(&work.path().join("outputs"));
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if as_given && spare.len() < SPARE_WORK_DIRS {
            spare.push((scratch.to_path_buf(), work));
        }
    }

    fn module(&self, store: &dyn BlockStore, cid: &Cid) -> Result<Arc<[u8]>, shoal_storage::Error> {
        {
            let cache = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, m)) = cache.iter().find(|(c, _)| c == cid) {
                return Ok(m.clone());
            }
        }
        let mut bytes = Vec::new();
        exporter::cat(store, cid, &mut bytes)?;
        let m: Arc<[u8]> = Arc::from(bytes);
        let mut cache = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MODULE_CACHE_ENTRIES {
            cache.remove(0);
        }
        cache.push((*cid, m.clone()));
        Ok(m)
    }

    /// Runs `spec` (see [`run`]); a work directory the run left empty is
    /// kept for the next run ([`SPARE_WORK_DIRS`]) until the runner drops.
    pub fn run(&self, store: &dyn BlockStore, spec: &Spec, scratch: &Path) -> Result<Finished, JobError> {
        run_with(self, store, spec, scratch)
    }
}

fn run_with<E: std::ops::Deref<Target = Executor>>(
    runner: &Runner<E>,
    store: &dyn BlockStore,
    spec: &Spec,
    scratch: &Path,
) -> Result<Finished, JobError> {
    let exec: &Executor = &runner.exec;
    let work = runner.work_dir(scratch)?;
    let storage = |what: String| move |source| JobError::Storage { what, source };

    let module = runner.module(store, &spec.module).map_err(storage(format!("module {}", spec.module)))?;

    let mut task = Task::new(ModuleSource::Bytes(module));
    task.entry = spec.entry.clone();
    task.program_name = spec.program_name.clone();
    task.args = spec.args.clone();
    task.env = spec.env.clone();
    task.env.sort();
    task.limits = spec.limits.clone();
    task.tee = spec.tee.clone();
    task.cancel = spec.cancel.clone();
    let spec_id = spec.id();
    task.mode =
        if spec.deterministic { Mode::Deterministic { seed: seed_of(&spec_id) } } else { Mode::Nondeterministic };

    task.nn.gpu = spec.gpu;
    task.nn.limits = spec.nn_limits.clone();
    task.nn.mode = spec.nn_mode;
    task.nn.auto_gpu = spec.nn_auto.then_some(spec.nn_auto_gpu && spec.nn_mode == crate::nn::Mode::Exact && !spec.gpu);
    for (name, cid) in &spec.models {
        let what = || format!("model {name} ({cid})");
        let size = match exporter::stat_and_list(store, cid).map_err(storage(what()))?.0 {
            exporter::Kind::File { size } => size,
            _ => {
                return Err(JobError::Storage {
                    what: what(),
                    source: shoal_storage::Error::Unsupported(format!("{cid} is a directory, not an ONNX file")),
                })
            }
        };
        if size > spec.nn_limits.model_bytes {
            let limit = spec.nn_limits.model_bytes;
            return Err(JobError::ModelTooLarge { name: name.clone(), cid: *cid, size, limit });
        }
        let bytes = runner.module(store, cid).map_err(storage(what()))?;
        task.nn.models.push(crate::nn::NamedModel { name: name.clone(), cid: *cid, bytes });
    }

    let inputs = work.path().join("inputs");
    let what = |input: &Input| {
        format!(
            "input {}{} -> {}",
            input.cid,
            input.path.iter().map(|p| format!("/{p}")).collect::<String>(),
            input.guest
        )
    };
    // Measure everything first: nothing is fetched for a job that cannot run.
    let mut resolved = Vec::with_capacity(spec.inputs.len());
    let mut total = 0u64;
    for input in &spec.inputs {
        let cid = exporter::resolve(store, &input.cid, &input.path).map_err(storage(what(input)))?;
        content_bytes(store, &cid, &mut total, spec.limits.inputs_bytes, 0).map_err(|e| match e {
            Measure::Over => JobError::InputsTooLarge { limit: spec.limits.inputs_bytes, at: what(input) },
            Measure::Storage(source) => JobError::Storage { what: what(input), source },
        })?;
        resolved.push(cid);
    }
    for (i, (input, cid)) in spec.inputs.iter().zip(resolved).enumerate() {
        let host = inputs.join(i.to_string());
        exporter::get(store, &cid, &host).map_err(storage(what(input)))?;
        task.mounts.push(Mount::new(host, input.guest.clone()));
    }

    let outputs = work.path().join("outputs");
    task.outputs = Some(outputs.clone());

    let outcome = exec.run(&task)?;

    let status = exit_status(&outcome);
    // The small files are imported straight from memory; only the guest's
    // /outputs tree comes from disk.
    let opts = Options { hidden: true, ..Options::with_version(CidVersion::V1) };
    let importer = Importer::new(store, opts);
    let stored = || storage("storing the result".to_string());
    let mut entries = Vec::new();
    let mut write = |name: &str, bytes: &[u8]| -> Result<(), JobError> {
        entries.push((name.to_string(), importer.add_bytes(bytes).map_err(stored())?));
        Ok(())
    };
    write("exitCode", status.to_string().as_bytes())?;
    write("stdout", &outcome.stdout.bytes)?;
    // The guest's stderr, then why it failed (with the Wasm backtrace of a
    // trap): what someone debugging the job from its result CID needs.
    let mut stderr = outcome.stderr.bytes.clone();
    if let Some(f) = &outcome.failure {
        if !stderr.is_empty() && !stderr.ends_with(b"\n") {
            stderr.push(b'\n');
        }
        stderr.extend_from_slice(format!("shoal: {}\n", failure_line(f)).as_bytes());
        if let Failure::Trap { backtrace, .. } = f {
            if !backtrace.is_empty() {
                stderr.extend_from_slice(format!("wasm backtrace:\n{backtrace}\n").as_bytes());
            }
        }
    }
    write("stderr", &stderr)?;
    let failure = outcome.failure.as_ref().map(failure_line);
    if let Some(f) = &failure {
        write("failure", format!("{f}\n").as_bytes())?;
    }
    if !outcome.deterministic {
        write("nondeterministic", b"real clocks and randomness: other runs may differ\n")?;
    }
    let truncated: Vec<&str> = [("stdout", outcome.stdout.truncated), ("stderr", outcome.stderr.truncated)]
        .into_iter()
        .filter_map(|(n, t)| t.then_some(n))
        .collect();
    if !truncated.is_empty() {
        write("truncated", format!("{}\n", truncated.join("\n")).as_bytes())?;
    }

    entries.push(("outputs".to_string(), importer.add_path(&outputs).map_err(stored())?));
    let outputs_cid = entries.last().map(|(_, a)| a.root);
    let added = importer.add_directory(entries).map_err(stored())?;
    if spec.pin_result {
        store.flush().map_err(storage("storing the result".to_string()))?;
        store.pin_add(&added.root, PinMode::Recursive).map_err(storage("pinning the result".to_string()))?;
    }
    let outputs = outputs_cid.unwrap_or(added.root);
    runner.recycle(scratch, work);
    Ok(Finished { spec: spec_id, result: added.root, outputs, exit_status: status, stderr, failure, outcome })
}

enum Measure {
    Over,
    Storage(shoal_storage::Error),
}

/// Adds the file bytes under `cid` to `total`, stopping as soon as it
/// passes `limit`. Reads only directory nodes and file roots.
fn content_bytes(store: &dyn BlockStore, cid: &Cid, total: &mut u64, limit: u64, depth: usize) -> Result<(), Measure> {
    use shoal_storage::exporter::Kind;
    if depth > shoal_storage::MAX_DIR_DEPTH {
        return Err(Measure::Storage(shoal_storage::Error::Unsupported(format!(
            "{cid} nests directories deeper than {}",
            shoal_storage::MAX_DIR_DEPTH
        ))));
    }
    match exporter::stat_and_list(store, cid).map_err(Measure::Storage)? {
        (Kind::File { size }, _) => {
            *total = total.saturating_add(size);
            if *total > limit {
                return Err(Measure::Over);
            }
        }
        (_, entries) => {
            for e in entries {
                content_bytes(store, &e.cid, total, limit, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// A failure as one line, without the backtrace (which goes to stderr).
fn failure_line(f: &Failure) -> String {
    let s = f.to_string();
    s.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_auto_is_in_the_id_and_the_device_it_picks_is_not() {
        let module = *shoal_storage::Block::new(CidVersion::V1, shoal_storage::block::RAW, b"m".to_vec()).cid();
        let plain = Spec::new(module);
        let mut auto = Spec::new(module);
        auto.nn_auto = true;
        assert_eq!(auto.canonical()["nn"]["target"], "auto");
        assert_ne!(auto.id(), plain.id());
        let mut on_gpu = auto.clone();
        on_gpu.nn_auto_gpu = true;
        assert_eq!(on_gpu.id(), auto.id(), "cpu and gpu nodes run one job");
        assert!(plain.canonical().get("nn").is_none());
    }
}
