//! `shoal run` and `shoal inspect`: run one WASI job locally over
//! content-addressed data, and look at results.
//!
//! `MODULE` and each `--input SRC` are CIDs (`CID` or `CID/path`) or local
//! paths, which are imported and pinned first; the job then runs through
//! [`shoal_runtime::job`], entirely from the block store, and its result is
//! stored and pinned as one CID.

use std::time::Duration;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use shoal_runtime::job::{self, Input, Spec};
use shoal_runtime::{Config, Entry, Executor, Limits, Outcome};
use shoal_scheduler::spec::{Nn, NnMode, NnTarget};
use shoal_storage::block::parse_cid_path;
use shoal_storage::importer::{Importer, Options};
use shoal_storage::PinMode;

use crate::output;
use crate::store::Store;
use crate::Ctx;

/// Run a WebAssembly (WASI preview1) module in the sandbox.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Mount SRC read-only at GUEST_PATH (absolute, e.g. /inputs); SRC is a
    /// directory or file. Repeatable.
    #[arg(long = "input", value_name = "SRC:GUEST_PATH", value_parser = parse_input)]
    pub inputs: Vec<InputSpec>,
    /// Set an environment variable for the job. Repeatable; nothing is
    /// inherited from this process.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Linear memory limit, e.g. 512MiB (at most 4GiB; default 512MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<bytesize::ByteSize>,
    /// Wall-clock limit: seconds, or with a unit (60s, 2m); default 60s.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Limit on the total bytes of the inputs, e.g. 8GiB.
    #[arg(long, value_name = "SIZE")]
    pub max_input: Option<bytesize::ByteSize>,
    /// CPU limit in fuel units (about one per Wasm instruction).
    #[arg(long, value_name = "N", value_parser = parse_fuel)]
    pub fuel: Option<u64>,
    /// Export to call for a command module (default `_start`).
    #[arg(long, value_name = "NAME", conflicts_with = "invoke")]
    pub entrypoint: Option<String>,
    /// Pin nothing: the module, inputs and result stay in the store only
    /// until the next `shoal repo gc` (by default `run` pins what it
    /// imported and the result).
    #[arg(long)]
    pub no_pin: bool,
    /// Treat the module as a reactor: call `_initialize`, then EXPORT.
    #[arg(long, value_name = "EXPORT")]
    pub invoke: Option<String>,
    /// Use real clocks and OS randomness (the result is marked as such).
    #[arg(long)]
    pub nondeterministic: bool,
    /// Map an ONNX model for wasi-nn's `load_by_name`: NAME=SRC, SRC a
    /// file or a CID. Repeatable.
    #[arg(long = "model", value_name = "NAME=SRC", value_parser = parse_env)]
    pub models: Vec<(String, String)>,
    /// The job asks for a GPU: wasi-nn may use the `gpu` target, and named
    /// models run on it. Fails when this node has no usable GPU.
    #[arg(long)]
    pub gpu: bool,
    /// wasi-nn inference: exact (bit-identical on the CPU and every GPU
    /// that runs it; the default) or fast (the backends' own arithmetic,
    /// reproducible only on the same device model and driver).
    #[arg(long, value_name = "exact|fast")]
    pub nn_mode: Option<NnMode>,
    /// Which device wasi-nn graphs run on: job (the default: the GPU with
    /// `--gpu`, else the CPU) or auto (a node's GPU if it runs exact
    /// inference, else its CPU, whatever target the guest names; exact
    /// mode only, without `--gpu`).
    #[arg(long, value_name = "job|auto")]
    pub nn_target: Option<NnTarget>,
    /// Let `--gpu` use a software Vulkan device (lavapipe) when there is no
    /// hardware GPU: correct, but slow.
    #[arg(long)]
    pub allow_software_gpu: bool,
    /// Print only the result CID (as the last line) after the job's output.
    #[arg(short, long)]
    pub quiet: bool,
    /// The module: a .wasm path or a CID (`shoal submit -f` takes it from
    /// the spec instead).
    #[arg(value_name = "MODULE")]
    pub module: Option<String>,
    /// Arguments passed to the job (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// One `--input SRC:GUEST_PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Where the data comes from: a host path, or a CID once storage is
    /// wired in.
    pub src: String,
    /// Absolute guest path.
    pub guest: String,
}

fn parse_input(s: &str) -> Result<InputSpec, String> {
    // The guest path is absolute, so split at the last ":/": SRC itself may
    // contain colons.
    let at = s.rfind(":/").ok_or_else(|| format!("expected SRC:GUEST_PATH with an absolute guest path, got {s:?}"))?;
    let (src, guest) = (&s[..at], &s[at + 1..]);
    if src.is_empty() {
        return Err(format!("empty SRC in {s:?}"));
    }
    Ok(InputSpec { src: src.to_owned(), guest: guest.to_owned() })
}

/// A duration as the job spec takes it: a number of seconds or a string
/// with a unit; more than 0 and at most the spec's longest timeout.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(t.parse().map_err(|_| format!("{s:?} is too large"))?)
    } else {
        humantime::parse_duration(t)
            .map_err(|e| format!("invalid duration {s:?} ({e}); use seconds or a unit like 60s or 2m"))?
    };
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    let max = shoal_scheduler::spec::MAX_TIMEOUT;
    if d > max {
        return Err(format!("must be at most {}", humantime::format_duration(max)));
    }
    Ok(d)
}

/// A memory limit as the job spec takes it: more than 0, at most 4 GiB.
fn parse_memory(s: &str) -> Result<bytesize::ByteSize, String> {
    let b: bytesize::ByteSize = s.trim().parse().map_err(|e| format!("invalid size {s:?} ({e}); use e.g. 512MiB"))?;
    let max = shoal_scheduler::spec::MAX_MEMORY;
    if b.as_u64() == 0 {
        return Err("must be more than 0".into());
    }
    if b.as_u64() > max {
        return Err(format!(
            "{} is more than a wasm32 memory can hold; the most is {}",
            shoal_scheduler::spec::Bytes(b.as_u64()),
            shoal_scheduler::spec::Bytes(max)
        ));
    }
    Ok(b)
}

/// Fuel: more than 0 (leave it out for the default).
fn parse_fuel(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be more than 0 (leave --fuel out for the default)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("invalid number {s:?} ({e})")),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

impl RunArgs {
    /// The limits: defaults overridden by the flags given.
    pub fn limits(&self) -> Limits {
        let mut l = Limits::default();
        if let Some(m) = self.memory {
            l.memory = m.as_u64();
        }
        if let Some(t) = self.timeout {
            l.timeout = t;
        }
        if let Some(f) = self.fuel {
            l.fuel = f;
        }
        if let Some(m) = self.max_input {
            l.inputs_bytes = m.as_u64();
        }
        l
    }

    /// How the module is entered.
    pub fn entry(&self) -> Entry {
        match &self.invoke {
            Some(export) => Entry::Reactor { export: export.clone() },
            None => Entry::Command { export: self.entrypoint.clone().unwrap_or_else(|| "_start".into()) },
        }
    }
}

/// The outcome as JSON for `--json`. Captured output is included as UTF-8
/// (lossy).
pub fn outcome_json(o: &Outcome) -> serde_json::Value {
    serde_json::json!({
        "success": o.success(),
        "exit_code": o.exit_code,
        "failure": o.failure.as_ref().map(|f| f.to_string()),
        "stdout": String::from_utf8_lossy(&o.stdout.bytes),
        "stdout_truncated": o.stdout.truncated,
        "stderr": String::from_utf8_lossy(&o.stderr.bytes),
        "stderr_truncated": o.stderr.truncated,
        "fuel_consumed": o.fuel_consumed,
        "wall_time_ms": o.wall_time.as_secs_f64() * 1e3,
        "deterministic": o.deterministic,
        "outputs": {"bytes": o.outputs.bytes, "files": o.outputs.files, "symlinks": o.outputs.symlinks},
        "cached": o.cached,
        "nn_devices": o.nn_devices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn parses_all_flags() {
        let cli = Cli::try_parse_from([
            "shoal",
            "--input",
            "data/a:b.csv:/inputs/a.csv",
            "--input",
            "dir:/in",
            "--env",
            "B=2",
            "--env",
            "A=x=y",
            "--memory",
            "64MiB",
            "--timeout",
            "1m 30s",
            "--fuel",
            "1000",
            "--nondeterministic",
            "-q",
            "job.wasm",
            "--",
            "-v",
            "x",
        ])
        .unwrap();
        let r = cli.run;
        assert_eq!(r.inputs[0], InputSpec { src: "data/a:b.csv".into(), guest: "/inputs/a.csv".into() });
        assert_eq!(r.env[1], ("A".into(), "x=y".into()));
        let l = r.limits();
        assert_eq!(l.memory, 64 << 20);
        assert_eq!(l.timeout, Duration::from_secs(90));
        assert_eq!(l.fuel, 1000);
        assert_eq!(r.args, vec!["-v", "x"]);
        assert!(r.nondeterministic && r.quiet);
        assert_eq!(r.inputs.len(), 2);
        assert_eq!(r.module.as_deref(), Some("job.wasm"));
    }

    #[test]
    fn reactor_and_bad_values() {
        let r = Cli::try_parse_from(["shoal", "--invoke", "run", "m.wasm"]).unwrap().run;
        assert_eq!(r.entry(), Entry::Reactor { export: "run".into() });
        assert!(Cli::try_parse_from(["shoal", "--invoke", "a", "--entrypoint", "b", "m"]).is_err());
        assert!(Cli::try_parse_from(["shoal", "--input", "relative", "m"]).is_err());
        assert!(Cli::try_parse_from(["shoal", "--env", "=v", "m"]).is_err());
        assert!(Cli::try_parse_from(["shoal", "--memory", "lots", "m"]).is_err());
    }
}

/// `shoal inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A result CID, or any CID[/path].
    pub target: String,
}

/// Where a `MODULE`, `--input` or `--model` source comes from.
enum Source {
    /// A local file or directory, imported when the job is sure to run.
    Local(std::path::PathBuf),
    /// Content already named: a CID and a path inside it.
    Cid(shoal_storage::Cid, Vec<String>),
}

/// Classifies `src` without touching the store: an existing local path, or
/// a `CID[/path]`.
fn classify(src: &str) -> anyhow::Result<Source> {
    let local = std::path::Path::new(src);
    if local.exists() {
        return Ok(Source::Local(local.to_path_buf()));
    }
    let (cid, path) =
        parse_cid_path(src).with_context(|| format!("{src} is neither an existing local path nor a cid"))?;
    Ok(Source::Cid(cid, path))
}

/// Most entries looked at when sizing a local input before importing it.
const MAX_SIZED_ENTRIES: usize = 1 << 20;

/// The bytes of the files under `path` (not following symlinks), stopping
/// once past `limit`.
fn local_bytes(path: &std::path::Path, limit: u64) -> anyhow::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    let mut seen = 0usize;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > MAX_SIZED_ENTRIES || total > limit {
            break;
        }
        let meta = std::fs::symlink_metadata(&p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).with_context(|| format!("cannot read the directory {}", p.display()))? {
                stack.push(e.with_context(|| format!("cannot read the directory {}", p.display()))?.path());
            }
        } else if meta.is_file() {
            total = total.saturating_add(meta.len());
        }
    }
    Ok(total)
}

/// Everything a run imports and pins, undone if the run fails (and, with
/// `--no-pin`, after it): a failed run leaves no new pin.
struct NewPins<'a> {
    store: &'a Store,
    roots: Vec<shoal_storage::Cid>,
}

impl<'a> NewPins<'a> {
    /// Imports `path` and pins it, remembering the pin if it is new.
    fn import(&mut self, path: &std::path::Path) -> anyhow::Result<shoal_storage::Cid> {
        let _guard = self.store.write_guard()?;
        let added = Importer::new(self.store.get(), Options::default())
            .add_path(path)
            .with_context(|| format!("cannot import {}", path.display()))?;
        self.store.get().flush()?;
        self.keep(added.root)?;
        Ok(added.root)
    }

    /// Pins `root` (already stored), remembering the pin if it is new.
    fn keep(&mut self, root: shoal_storage::Cid) -> anyhow::Result<()> {
        let store = self.store.get();
        let before = store.pin_mode(&root)?;
        if before != Some(PinMode::Recursive) {
            store.pin_add(&root, PinMode::Recursive).with_context(|| format!("cannot pin {root}"))?;
        }
        // A pin the user had (even a direct one) is theirs to keep.
        if before.is_none() {
            self.roots.push(root);
        }
        Ok(())
    }

    /// Removes the pins this run added.
    fn undo(&mut self) {
        for root in self.roots.drain(..) {
            if let Err(e) = self.store.get().pin_rm(&root) {
                tracing::warn!("cannot unpin {root}: {e}");
            }
        }
    }
}

/// Runs the job (see the module docs); the process exits with the guest's
/// exit status.
///
/// Every check that needs no data (the sources exist, the module and
/// models are files, the mounts are valid, the local inputs fit
/// `--max-input`, no variable is given twice) runs before anything is
/// imported, and a run that fails after importing unpins what it pinned:
/// a refused or failed run leaves no new pin behind.
pub fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<ExitCode> {
    let Some(module_arg) = a.module.clone() else {
        bail!("no module given: pass a .wasm path or a CID, e.g. shoal run job.wasm");
    };
    let module_src = classify(&module_arg).with_context(|| format!("module {module_arg}"))?;
    if let Source::Local(p) = &module_src {
        if !p.is_file() {
            bail!("module {} is not a file: give the .wasm file itself", p.display());
        }
    }
    let mut names: Vec<&str> = a.env.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("--env {} given twice; give each variable once", w[0]);
    }
    let limits = a.limits();
    let mut inputs = Vec::new();
    let mut layout = Vec::new();
    let mut local_total = 0u64;
    for input in &a.inputs {
        let src = classify(&input.src).with_context(|| format!("input {}", input.src))?;
        // A CID's kind is known once it is read: the runtime checks it then,
        // before anything is imported.
        let is_dir = match &src {
            Source::Local(p) => {
                local_total = local_total.saturating_add(local_bytes(p, limits.inputs_bytes)?);
                p.is_dir()
            }
            Source::Cid(..) => true,
        };
        layout.push((input.guest.clone(), is_dir));
        inputs.push((src, input));
    }
    let kinds: Vec<(&str, bool)> = layout.iter().map(|(g, d)| (g.as_str(), *d)).collect();
    shoal_runtime::mounts::check_layout(&kinds).context("the inputs cannot be mounted")?;
    if local_total > limits.inputs_bytes {
        bail!(
            "the local inputs hold more than {} (the input limit); raise it with --max-input or give less data",
            bytesize::ByteSize(limits.inputs_bytes).display().iec()
        );
    }
    let mut models = Vec::new();
    for (name, src) in &a.models {
        let src = classify(src).with_context(|| format!("model {name}"))?;
        if let Source::Local(p) = &src {
            if !p.is_file() {
                bail!("model {name}: {} is not a file: give the .onnx file itself", p.display());
            }
        }
        models.push((name, src));
    }

    let store = Store::open(ctx)?;
    let mut pins = NewPins { store: &store, roots: Vec::new() };
    let ran = run_checked(ctx, &a, &store, &mut pins, &module_arg, module_src, inputs, models);
    if ran.is_err() || a.no_pin {
        pins.undo();
    }
    ran
}

type Inputs<'a> = Vec<(Source, &'a InputSpec)>;

#[allow(clippy::too_many_arguments)]
fn run_checked(
    ctx: &Ctx,
    a: &RunArgs,
    store: &Store,
    pins: &mut NewPins<'_>,
    module_arg: &str,
    module_src: Source,
    inputs: Inputs<'_>,
    models: Vec<(&String, Source)>,
) -> anyhow::Result<ExitCode> {
    let mut resolve = |src: Source| -> anyhow::Result<(shoal_storage::Cid, Vec<String>)> {
        match src {
            Source::Local(p) => Ok((pins.import(&p)?, Vec::new())),
            Source::Cid(c, path) => Ok((c, path)),
        }
    };
    let (module_root, module_path) = resolve(module_src)?;
    let module = shoal_storage::exporter::resolve(store.get(), &module_root, &module_path)
        .with_context(|| format!("module {module_arg}"))?;
    let mut spec = Spec::new(module);
    spec.entry = a.entry();
    spec.program_name = module_arg.rsplit('/').next().unwrap_or(module_arg).to_owned();
    spec.args = a.args.clone();
    spec.env = a.env.clone();
    for (src, input) in inputs {
        let (cid, path) = resolve(src).with_context(|| format!("input {}", input.src))?;
        spec.inputs.push(Input { cid, path, guest: input.guest.clone() });
    }
    for (name, src) in models {
        let (root, path) = resolve(src).with_context(|| format!("model {name}"))?;
        let cid =
            shoal_storage::exporter::resolve(store.get(), &root, &path).with_context(|| format!("model {name}"))?;
        spec.models.push((name.clone(), cid));
    }
    spec.gpu = a.gpu;
    let nn = Nn { mode: a.nn_mode.unwrap_or_default(), target: a.nn_target.unwrap_or_default() };
    spec.nn_mode = shoal_node::compute::runtime_mode(nn.mode);
    if nn.target == NnTarget::Auto {
        if nn.check(a.gpu).is_err() {
            anyhow::bail!(
                "--nn-target auto needs --nn-mode exact and no --gpu (it picks the gpu itself when one runs exact \
                 inference); drop one"
            );
        }
        spec.nn_auto = true;
        spec.nn_auto_gpu =
            shoal_runtime::nn::probe_gpu(a.allow_software_gpu).is_some_and(|g| g.exact_refused.is_none());
    }
    spec.limits = a.limits();
    spec.deterministic = !a.nondeterministic;
    if !ctx.json {
        // Stream the guest's output to the terminal as it is written.
        spec.tee = Some(shoal_runtime::Tee(std::sync::Arc::new(|stream, bytes: &[u8]| {
            let _ = match stream {
                shoal_runtime::Stream::Stderr => std::io::stderr().lock().write_all(bytes),
                _ => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(bytes).and_then(|_| o.flush())
                }
            };
        })));
    }

    let mut config = Config::default();
    config.cache_dir = Some(ctx.home.join("cache").join("modules"));
    // One job per process: a pool of one instance sized to this job's
    // memory limit reserves (and later unmaps) far less address space.
    config.max_concurrent_jobs = 1;
    config.max_memory = config.max_memory.min(spec.limits.memory.max(1 << 20));
    config.allow_software_gpu = a.allow_software_gpu;
    let exec = Executor::new(config).context("cannot start the wasm engine")?;
    spec.pin_result = false;
    let finished = job::run(&exec, store.get(), &spec, &ctx.home.join("tmp"))?;
    store.get().flush().context("cannot store the result")?;
    pins.keep(finished.result)?;
    let o = &finished.outcome;
    if ctx.json {
        output::json(&serde_json::json!({
            "result": finished.result.to_string(),
            "outputs": finished.outputs.to_string(),
            "spec": finished.spec.to_string(),
            "exit_status": finished.exit_status,
            "outcome": outcome_json(o),
        }))?;
    } else {
        let mut out = std::io::stdout().lock();
        // The guest's output was streamed as it ran; end on a line break.
        if o.stdout.bytes.last().is_some_and(|&b| b != b'\n') {
            writeln!(out)?;
        }
        if let Some(f) = &o.failure {
            eprintln!("job failed: {}", f.to_string().lines().next().unwrap_or_default());
        }
        if a.quiet {
            writeln!(out, "{}", finished.result)?;
        } else {
            writeln!(out, "result: {}", finished.result)?;
            writeln!(out, "exit code: {}", finished.exit_status)?;
            writeln!(out, "outputs: {}", finished.outputs)?;
            for d in &o.nn_devices {
                writeln!(out, "wasi-nn device: {d}")?;
            }
        }
    }
    Ok(ExitCode::from(u8::try_from(finished.exit_status & 0xff).unwrap_or(1)))
}

/// Shows a result (exit code, failure, sizes, outputs tree) or any other
/// CID's kind and size.
pub fn inspect(ctx: &Ctx, a: InspectArgs) -> anyhow::Result<ExitCode> {
    use shoal_storage::exporter::{self, Kind};
    let store = Store::open(ctx)?;
    crate::cmd_net::fetch_if_missing(ctx, store.get(), &a.target)?;
    let (root, path) = parse_cid_path(&a.target)?;
    let cid = exporter::resolve(store.get(), &root, &path)?;
    let (kind, entries) = exporter::stat_and_list(store.get(), &cid)?;
    let has = |n: &str| entries.iter().any(|e| e.name == n);
    let is_result = has("exitCode") && has("stdout") && has("stderr") && has("outputs");
    if !is_result {
        if ctx.json {
            output::json(&serde_json::json!({ "cid": cid.to_string(), "kind": kind }))?;
        } else {
            match kind {
                Kind::File { size } => println!("{cid}: file, {size} bytes"),
                Kind::Directory { entries } => println!("{cid}: directory, {entries} entries"),
                Kind::Sharded => println!("{cid}: hamt-sharded directory, {} entries", entries.len()),
                Kind::Symlink { target } => println!("{cid}: symlink to {target}"),
                Kind::Other { codec } => println!("{cid}: block of codec {codec:#x}"),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let read = |name: &str| -> anyhow::Result<Vec<u8>> {
        let c = exporter::resolve(store.get(), &cid, &[name.to_string()])?;
        let mut v = Vec::new();
        exporter::cat(store.get(), &c, &mut v)?;
        Ok(v)
    };
    let size = |name: &str| -> anyhow::Result<u64> {
        let c = exporter::resolve(store.get(), &cid, &[name.to_string()])?;
        Ok(match exporter::stat(store.get(), &c)? {
            Kind::File { size } => size,
            _ => 0,
        })
    };
    let exit_text = String::from_utf8_lossy(&read("exitCode")?).trim().to_string();
    // A number in every result shoal writes; shown as found otherwise.
    let exit: serde_json::Value = match exit_text.parse::<i64>() {
        Ok(n) => n.into(),
        Err(_) => exit_text.clone().into(),
    };
    let failure =
        if has("failure") { Some(String::from_utf8_lossy(&read("failure")?).trim().to_string()) } else { None };
    let truncated =
        if has("truncated") { String::from_utf8_lossy(&read("truncated")?).trim().to_string() } else { String::new() };
    let outputs = exporter::resolve(store.get(), &cid, &["outputs".to_string()])?;
    let mut tree = Vec::new();
    list_tree(store.get(), exporter::ls(store.get(), &outputs)?, "", &mut tree, 0)?;
    if ctx.json {
        output::json(&serde_json::json!({
            "cid": cid.to_string(), "kind": "result", "exit_code": exit, "failure": failure,
            "stdout_bytes": size("stdout")?, "stderr_bytes": size("stderr")?, "truncated": truncated,
            "outputs": outputs.to_string(),
            "files": tree.iter().map(|(p, s)| serde_json::json!({"path": p, "size": s})).collect::<Vec<_>>(),
        }))?;
    } else {
        println!("result {cid}");
        println!("exit code: {exit_text}");
        if let Some(f) = failure {
            println!("failure: {f}");
        }
        println!("stdout: {} bytes{}", size("stdout")?, if truncated.contains("stdout") { " (truncated)" } else { "" });
        println!("stderr: {} bytes{}", size("stderr")?, if truncated.contains("stderr") { " (truncated)" } else { "" });
        println!("outputs: {outputs}");
        for (p, s) in tree {
            match s {
                Some(s) => println!("  {p} ({s} bytes)"),
                None => println!("  {p}/"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Bounded listing of a tree: at most this many entries are shown.
const INSPECT_MAX_ENTRIES: usize = 1000;

fn list_tree(
    store: &dyn shoal_storage::BlockStore,
    entries: Vec<shoal_storage::exporter::DirEntry>,
    prefix: &str,
    out: &mut Vec<(String, Option<u64>)>,
    depth: usize,
) -> anyhow::Result<()> {
    use shoal_storage::exporter::{self, Kind};
    for e in entries {
        if out.len() >= INSPECT_MAX_ENTRIES || depth > 64 {
            out.push((format!("{prefix}… (listing cut at {INSPECT_MAX_ENTRIES} entries)"), None));
            return Ok(());
        }
        let p = format!("{prefix}{}", e.name);
        match exporter::stat_and_list(store, &e.cid)? {
            (Kind::Directory { .. } | Kind::Sharded, children) => {
                out.push((p.clone(), None));
                list_tree(store, children, &format!("{p}/"), out, depth + 1)?;
            }
            (Kind::File { size }, _) => out.push((p, Some(size))),
            (Kind::Symlink { target }, _) => out.push((format!("{p} -> {target}"), Some(0))),
            (Kind::Other { .. }, _) => out.push((p, Some(0))),
        }
    }
    Ok(())
}
