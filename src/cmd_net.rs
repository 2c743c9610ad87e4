//! The verbs that talk to a node's HTTP API: `submit`, `job …`, `nodes`,
//! and `devstack`, which starts a small network of real node processes on
//! loopback. The node is given by `--node URL` or `SHOAL_NODE`; a token for
//! a non-loopback node by `SHOAL_TOKEN`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use shoal_storage::block::parse_cid_path;
use shoal_storage::importer::{Importer, Options};
use shoal_storage::{Cid, MemStore};

use crate::cmd_run::RunArgs;
use crate::{output, Ctx};

/// Where a node's API is (the global `--node URL` / `SHOAL_NODE`).
#[derive(Debug, Clone, Default)]
pub struct NodeUrl {
    pub node: Option<String>,
}

/// A thin client for a node's API.
pub struct Api {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Api {
    pub fn new(url: &NodeUrl) -> anyhow::Result<Api> {
        let Some(base) = &url.node else {
            bail!("no node given: pass --node URL or set SHOAL_NODE (shoal devstack prints each node's api url)");
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(330)))
            .build()
            .into();
        Ok(Api { base: base.trim_end_matches('/').to_owned(), agent, token: std::env::var("SHOAL_TOKEN").ok() })
    }

    fn check(&self, what: &str, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> anyhow::Result<Value> {
        let mut r = r.with_context(|| format!("cannot reach the node at {} ({what}); is it running?", self.base))?;
        let status = r.status();
        let body: Value =
            r.body_mut().with_config().limit(64 << 20).read_json().with_context(|| {
                format!("the node at {} answered {what} with something that is not json", self.base)
            })?;
        if !status.is_success() {
            let msg = body.get("error").and_then(Value::as_str).unwrap_or("no message").to_owned();
            bail!("{what}: {msg}");
        }
        Ok(body)
    }

    /// `req` with the API token, when there is one.
    fn authorized<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let req = self.authorized(self.agent.get(format!("{}{path}", self.base)));
        self.check(&format!("GET {path}"), req.call())
    }

    pub fn post(&self, path: &str, body: &[u8], content_type: &str) -> anyhow::Result<Value> {
        let req = self.authorized(self.agent.post(format!("{}{path}", self.base)).header("Content-Type", content_type));
        self.check(&format!("POST {path}"), req.send(body))
    }

    /// Follows `GET {path}` as server-sent events until `deadline`,
    /// calling `each` with every event's JSON data until it returns
    /// `Some`.
    fn follow<T>(
        &self,
        path: &str,
        deadline: Option<Instant>,
        mut each: impl FnMut(Value) -> Option<T>,
    ) -> anyhow::Result<T> {
        use std::io::{BufRead, Read};
        let req = self.authorized(self.agent.get(format!("{}{path}", self.base)).header("Accept", "text/event-stream"));
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let r = req.config().timeout_global(left.or(Some(MAX_FOLLOW))).build().call();
        let r = r.with_context(|| format!("cannot reach the node at {} (GET {path})", self.base))?;
        if !r.status().is_success() {
            bail!("GET {path}: {}", r.status());
        }
        let mut lines = std::io::BufReader::new(r.into_body().into_reader());
        let mut line = String::new();
        loop {
            line.clear();
            // One event is one job as JSON: bounded like any other answer.
            let n = lines.by_ref().take(MAX_EVENT_LINE).read_line(&mut line)?;
            if n == 0 {
                bail!("the node closed the event stream of GET {path}");
            }
            if !line.ends_with('\n') {
                bail!("an event of GET {path} is longer than {MAX_EVENT_LINE} bytes");
            }
            if let Some(data) = line.strip_prefix("data:") {
                let v: Value = serde_json::from_str(data.trim())
                    .with_context(|| format!("the node sent an event that is not json on GET {path}"))?;
                if let Some(done) = each(v) {
                    return Ok(done);
                }
            }
        }
    }

    /// The DAG under `cid` as a CAR file, fetched by the node.
    pub fn car(&self, cid: &Cid) -> anyhow::Result<Vec<u8>> {
        let req = self.authorized(self.agent.get(format!("{}/v1/car/{cid}", self.base)));
        let mut r = req.call().with_context(|| format!("cannot reach the node at {}", self.base))?;
        if !r.status().is_success() {
            let body: Value = r.body_mut().read_json().unwrap_or(Value::Null);
            let msg = body.get("error").and_then(Value::as_str).unwrap_or("no message").to_owned();
            bail!("the node cannot provide {cid}: {msg}");
        }
        Ok(r.body_mut().with_config().limit(1 << 30).read_to_vec()?)
    }

    /// Uploads a local file or directory (as a CAR) and returns its CID.
    pub fn upload(&self, path: &std::path::Path) -> anyhow::Result<Cid> {
        let store = MemStore::new();
        let added = Importer::new(&store, Options::default())
            .add_path(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut car = Vec::new();
        shoal_storage::car::export(&store, &added.root, &mut car)?;
        self.post("/v1/car", &car, "application/vnd.ipld.car")?;
        Ok(added.root)
    }
}

/// Submit a job to a node.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// A job spec (YAML or JSON; docs/job-spec.md) instead of the flags.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Run the job on N distinct nodes.
    #[arg(long, value_name = "N")]
    pub redundancy: Option<u32>,
    /// Results that must agree (default: a majority of N).
    #[arg(long, value_name = "K")]
    pub quorum: Option<u32>,
    /// Extra executions allowed when results disagree.
    #[arg(long, value_name = "N")]
    pub max_extra: Option<u32>,
    /// Only nodes whose labels match (k=v, k!=v, "k in (a,b)", k). Repeatable.
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// How long one execution may take before it is placed elsewhere.
    #[arg(long, value_name = "DURATION")]
    pub execution_timeout: Option<humantime::Duration>,
    /// Follow the job and print its result CID.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (the job goes on).
    #[arg(long, value_name = "DURATION")]
    pub wait_timeout: Option<humantime::Duration>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Builds the spec for `submit` from its flags, uploading local files.
fn spec_from_flags(api: &Api, a: &SubmitArgs) -> anyhow::Result<Value> {
    let source = |s: &str| -> anyhow::Result<String> {
        if parse_cid_path(s).is_ok() {
            return Ok(s.to_owned());
        }
        let p = std::path::Path::new(s);
        if !p.exists() {
            bail!("{s} is neither a cid nor an existing path");
        }
        Ok(api.upload(p)?.to_string())
    };
    let Some(module) = &a.run.module else {
        bail!("no module given: pass a .wasm path or a CID, or a job spec with -f FILE");
    };
    let module = source(module)?;
    let mut inputs = Vec::new();
    for i in &a.run.inputs {
        let src = source(&i.src)?;
        let (cid, path) = parse_cid_path(&src)?;
        let mut input = json!({ "cid": cid.to_string(), "mount": i.guest });
        if !path.is_empty() {
            input["path"] = json!(path.join("/"));
        }
        inputs.push(input);
    }
    let (module_cid, module_path) = parse_cid_path(&module)?;
    if !module_path.is_empty() {
        bail!("give the module as a cid or a file, not a path inside a cid ({module})");
    }
    let mut limits = serde_json::Map::new();
    if let Some(m) = a.run.memory {
        limits.insert("memory".into(), json!(m.as_u64()));
    }
    if let Some(t) = a.run.timeout {
        limits.insert("timeout".into(), json!(t.to_string()));
    }
    if let Some(f) = a.run.fuel {
        limits.insert("fuel".into(), json!(f));
    }
    if let Some(m) = a.run.max_input {
        limits.insert("max_input".into(), json!(m.as_u64()));
    }
    let mut task = json!({
        "module": module_cid.to_string(),
        "entrypoint": a.run.entrypoint,
        "args": a.run.args,
        "env": a.run.env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "inputs": inputs,
        "limits": limits,
        "nondeterministic": a.run.nondeterministic,
    });
    if let Some(inv) = &a.run.invoke {
        task["invoke"] = json!(inv);
    }
    if !a.run.models.is_empty() {
        let mut models = serde_json::Map::new();
        for (name, src) in &a.run.models {
            let (cid, path) = parse_cid_path(&source(src)?)?;
            if !path.is_empty() {
                bail!("give model {name} as a cid or a file, not a path inside a cid");
            }
            models.insert(name.clone(), json!(cid.to_string()));
        }
        task["models"] = Value::Object(models);
    }
    let mut spec = json!({ "task": task, "constraints": a.constraints });
    let mut redundancy = serde_json::Map::new();
    if let Some(n) = a.redundancy {
        redundancy.insert("count".into(), json!(n));
    }
    if let Some(k) = a.quorum {
        redundancy.insert("quorum".into(), json!(k));
    }
    if let Some(x) = a.max_extra {
        redundancy.insert("max_extra".into(), json!(x));
    }
    if !redundancy.is_empty() {
        spec["redundancy"] = Value::Object(redundancy);
    }
    if a.run.gpu {
        // Placed only on nodes that announce a GPU.
        spec["resources"] = json!({ "gpu": true });
    }
    if let Some(t) = a.execution_timeout {
        spec["timeouts"] = json!({ "execution": t.to_string() });
    }
    Ok(spec)
}

pub fn submit(ctx: &Ctx, a: SubmitArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&ctx.node)?;
    if a.run.allow_software_gpu {
        bail!("--allow-software-gpu is a node setting (shoal node --allow-software-gpu); submit with --gpu");
    }
    let body = match &a.file {
        Some(_) if a.run.module.is_some() => {
            bail!("give the module either in the job spec (-f) or on the command line, not both")
        }
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("cannot read the job spec {}", f.display()))?,
        None => serde_json::to_string(&spec_from_flags(&api, &a)?)?,
    };
    let r = api.post("/v1/jobs", body.as_bytes(), "application/yaml")?;
    let id = r.get("id").and_then(Value::as_str).context("the node returned no job id")?.to_owned();
    if !a.wait {
        if ctx.json {
            output::json(&json!({ "id": id }))?;
        } else {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !a.run.quiet && !ctx.json {
        eprintln!("job {id} submitted; waiting");
    }
    wait_and_print(ctx, &api, &id, a.run.quiet, a.wait_timeout.map(Into::into))
}

/// Longest line of a job event stream (one job with its executions).
const MAX_EVENT_LINE: u64 = 64 << 20;
/// How long one event stream is followed when no timeout was asked for
/// (the long poll takes over if the job is still going).
const MAX_FOLLOW: Duration = Duration::from_secs(3600);

fn is_terminal(state: &str) -> bool {
    matches!(state, "completed" | "failed" | "cancelled")
}

/// One line saying where a job is: its state and its executions by state.
fn progress_line(v: &Value) -> String {
    let state = v.pointer("/job/state").and_then(Value::as_str).unwrap_or("?");
    let mut counts: Vec<(String, usize)> = Vec::new();
    for e in v["executions"].as_array().into_iter().flatten() {
        let s = e["state"].as_str().unwrap_or("?").to_owned();
        match counts.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    if counts.is_empty() {
        return state.to_owned();
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!("{state}; executions: {}", parts.join(", "))
}

/// Waits for job `id` to end. With `progress`, follows its event stream
/// and prints a line on stderr whenever it moves; the long poll takes
/// over if the stream cannot be followed (an older node, a proxy that
/// buffers).
fn wait_for(api: &Api, id: &str, timeout: Option<Duration>, progress: bool) -> anyhow::Result<Value> {
    let deadline = timeout.map(|t| Instant::now() + t);
    if progress {
        let mut last = String::new();
        let followed = api.follow(&format!("/v1/jobs/{id}/events"), deadline, |v| {
            let line = progress_line(&v);
            if line != last {
                eprintln!("  {line}");
                last = line;
            }
            is_terminal(v.pointer("/job/state").and_then(Value::as_str).unwrap_or("")).then_some(v)
        });
        match followed {
            Ok(v) => return Ok(v),
            Err(e) => tracing::debug!("following job {id}: {e:#}; polling instead"),
        }
    }
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let poll = left.map_or(60, |l| l.as_secs().clamp(1, 60));
        let r = api.get(&format!("/v1/jobs/{id}/wait?timeout={poll}"))?;
        let state = r.pointer("/job/state").and_then(Value::as_str).unwrap_or("");
        if is_terminal(state) {
            return Ok(r);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!(
                "job {id} is still {state} after {}; it goes on (shoal job wait {id})",
                humantime::format_duration(timeout.unwrap_or_default())
            );
        }
    }
}

fn wait_and_print(ctx: &Ctx, api: &Api, id: &str, quiet: bool, timeout: Option<Duration>) -> anyhow::Result<ExitCode> {
    let r = wait_for(api, id, timeout, !quiet && !ctx.json)?;
    let state = r.pointer("/job/state").and_then(Value::as_str).unwrap_or("").to_owned();
    if ctx.json {
        output::json(&r)?;
    } else if state == "completed" {
        let result = r.pointer("/job/result").and_then(Value::as_str).unwrap_or("");
        if quiet {
            println!("{result}");
        } else {
            println!("job {id} completed");
            println!("result: {result}");
        }
    } else {
        let error = r.pointer("/job/error").and_then(Value::as_str).unwrap_or("no reason given");
        eprintln!("job {id} {state}: {error}");
    }
    Ok(if state == "completed" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Look at and control jobs on a node.
#[derive(Debug, clap::Subcommand)]
pub enum JobCmd {
    /// A job, its state and every execution.
    Describe { id: String },
    /// Jobs, newest first.
    List {
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Stdout and stderr of each execution.
    Logs { id: String },
    /// Wait for a job to end; print its result CID.
    Wait {
        #[arg(short, long)]
        quiet: bool,
        /// Give up after this long (the job goes on).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<humantime::Duration>,
        id: String,
    },
    /// Cancel a job.
    Cancel { id: String },
}

fn check_id(id: &str) -> anyhow::Result<()> {
    id.parse::<shoal_scheduler::model::JobId>()
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("malformed job id {id:?} ({e}); `shoal job list` shows the ids"))
}

pub fn job(ctx: &Ctx, c: JobCmd) -> anyhow::Result<ExitCode> {
    match &c {
        JobCmd::Describe { id } | JobCmd::Logs { id } | JobCmd::Cancel { id } | JobCmd::Wait { id, .. } => {
            check_id(id)?
        }
        JobCmd::List { .. } => {}
    }
    match c {
        JobCmd::Describe { id } => {
            let r = Api::new(&ctx.node)?.get(&format!("/v1/jobs/{id}"))?;
            if ctx.json {
                output::json(&r)?;
            } else {
                print_job(&r);
            }
        }
        JobCmd::List { state, limit } => {
            let q = match &state {
                Some(s) => format!("/v1/jobs?state={s}&limit={limit}"),
                None => format!("/v1/jobs?limit={limit}"),
            };
            let r = Api::new(&ctx.node)?.get(&q)?;
            if ctx.json {
                output::json(&r)?;
            } else {
                for j in r.get("jobs").and_then(Value::as_array).into_iter().flatten() {
                    let s = |k: &str| j.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
                    println!("{}  {:<9}  {}", s("id"), s("state"), s("result"));
                }
            }
        }
        JobCmd::Logs { id } => {
            let r = Api::new(&ctx.node)?.get(&format!("/v1/jobs/{id}/logs"))?;
            if ctx.json {
                output::json(&r)?;
            } else {
                for e in r.get("executions").and_then(Value::as_array).into_iter().flatten() {
                    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                    println!("== execution {} on {} ({})", s("execution"), s("node"), s("state"));
                    if !s("error").is_empty() {
                        println!("error: {}", s("error"));
                    }
                    print!("{}", s("stdout"));
                    eprint!("{}", s("stderr"));
                }
            }
        }
        JobCmd::Wait { quiet, timeout, id } => {
            return wait_and_print(ctx, &Api::new(&ctx.node)?, &id, quiet, timeout.map(Into::into))
        }
        JobCmd::Cancel { id } => {
            let r = Api::new(&ctx.node)?.post(&format!("/v1/jobs/{id}/cancel"), b"", "text/plain")?;
            if ctx.json {
                output::json(&r)?;
            } else {
                println!("job {id} {}", r.pointer("/job/state").and_then(Value::as_str).unwrap_or("?"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_job(r: &Value) {
    let j = &r["job"];
    let s = |v: &Value, k: &str| {
        v.get(k).map(|x| x.as_str().map(str::to_owned).unwrap_or_else(|| x.to_string())).unwrap_or_default()
    };
    println!("job:     {}", s(j, "id"));
    println!("state:   {}", s(j, "state"));
    if !j["result"].is_null() {
        println!("result:  {}", s(j, "result"));
    }
    if !j["error"].is_null() {
        println!("error:   {}", s(j, "error"));
    }
    println!("executions:");
    for e in r["executions"].as_array().into_iter().flatten() {
        let result = if e["result"].is_null() { String::new() } else { s(e, "result") };
        let error = if e["error"].is_null() { String::new() } else { format!("  ({})", s(e, "error")) };
        println!("  {}  {:<9}  node {}  {}{}", s(e, "id"), s(e, "state"), s(e, "node"), result, error);
        let devices: Vec<&str> =
            e["meta"]["nn_devices"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !devices.is_empty() {
            println!("      wasi-nn device: {}", devices.join(", "));
        }
    }
}

pub fn nodes(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let r = Api::new(&ctx.node)?.get("/v1/nodes")?;
    if ctx.json {
        output::json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    for n in r.get("nodes").and_then(Value::as_array).into_iter().flatten() {
        let v = &n["node"];
        let stats = &v["stats"];
        let gpu = v["gpu"].get("name").and_then(Value::as_str).unwrap_or("none");
        println!(
            "{}{}  slots {}/{}  gpu {}  agreed {} dissented {} lost {} failed {}  labels {}",
            v["id"].as_str().unwrap_or("?"),
            if n["self"].as_bool() == Some(true) { " (self)" } else { "" },
            v["slots_free"],
            v["slots_total"],
            gpu,
            stats["agreed"],
            stats["dissented"],
            stats["lost"],
            stats["failed"],
            v["labels"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Fetches `target`'s root from the node into the local store when it is
/// not local (for `shoal cat` / `shoal get`).
pub fn fetch_if_missing(ctx: &Ctx, store: &dyn shoal_storage::BlockStore, target: &str) -> anyhow::Result<()> {
    let Ok((root, _)) = parse_cid_path(target) else { return Ok(()) };
    if store.has(&root).unwrap_or(false) || ctx.node.node.is_none() {
        return Ok(());
    }
    let car = Api::new(&ctx.node)?.car(&root)?;
    shoal_storage::car::import(store, std::io::Cursor::new(car), "the node's answer")?;
    Ok(())
}

/// Start N nodes on loopback and keep them running.
#[derive(Debug, Clone, clap::Args)]
pub struct DevstackArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Slots per node.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
}

/// Kills the children on drop, so an error or a panic leaves no orphans.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM first: nodes shut down cleanly.
            terminate(c.id());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a positive pid of our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

pub fn devstack(ctx: &Ctx, a: DevstackArgs) -> anyhow::Result<ExitCode> {
    if a.nodes == 0 || a.nodes > 64 {
        bail!("--nodes must be between 1 and 64");
    }
    let exe = std::env::current_exe().context("cannot find the shoal executable")?;
    let mut children = Children(Vec::new());
    let mut first_peer: Option<String> = None;
    for i in 0..a.nodes {
        let home = ctx.home.join(format!("node-{i}"));
        let mut cmd = Command::new(&exe);
        cmd.arg("--home").arg(&home).arg("node").arg("--slots").arg(a.slots.to_string());
        cmd.arg("--label").arg(format!("devstack-index={i}"));
        if let Some(p) = &first_peer {
            cmd.arg("--peer").arg(p);
        }
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().context("cannot start a node process")?;
        let stdout = child.stdout.take().context("node stdout")?;
        children.0.push(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).context("cannot read the node's ready line")?;
        let (api, peer) =
            parse_ready(&line).with_context(|| format!("node {i} did not start (see its stderr above)"))?;
        println!("node {i} api={api} peer={peer}");
        first_peer.get_or_insert(peer);
    }
    println!("ready");
    std::io::stdout().flush()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    });
    drop(children);
    Ok(ExitCode::SUCCESS)
}

/// Parses a node's `ready api=URL peer=MULTIADDR` line.
pub fn parse_ready(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix("ready ")?;
    let mut api = None;
    let mut peer = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("api=") {
            api = Some(v.to_owned());
        } else if let Some(v) = part.strip_prefix("peer=") {
            peer = Some(v.to_owned());
        }
    }
    Some((api?, peer?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_executions_by_state_in_order_of_appearance() {
        let v = json!({
            "job": { "state": "running" },
            "executions": [
                { "state": "committed" }, { "state": "running" }, { "state": "committed" }
            ]
        });
        assert_eq!(progress_line(&v), "running; executions: 2 committed, 1 running");
        assert_eq!(progress_line(&json!({ "job": { "state": "queued" }, "executions": [] })), "queued");
        assert!(is_terminal("cancelled") && !is_terminal("running"));
    }
}
