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

/// The base URL of a node's API from what the user gave: `host:port`
/// means `http://host:port` (what `shoal node` prints); other schemes than
/// http and https are refused, saying what to give.
fn node_base(given: &str) -> anyhow::Result<String> {
    let given = given.trim().trim_end_matches('/');
    let url = match given.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => given.to_owned(),
        Some((scheme, _)) => {
            bail!("--node {given}: the scheme {scheme:?} is not supported; give http://HOST:PORT (as `shoal node` prints it)")
        }
        None if !given.is_empty() => format!("http://{given}"),
        None => bail!("--node is empty; give http://HOST:PORT (as `shoal node` prints it)"),
    };
    if url.contains(char::is_whitespace) {
        bail!("--node {given:?} is not a url; give http://HOST:PORT (as `shoal node` prints it)");
    }
    Ok(url)
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
        Ok(Api { base: node_base(base)?, agent, token: std::env::var("SHOAL_TOKEN").ok() })
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

    /// `req` with the API token, when there is one, and the header that
    /// tells the node a client (not a web page) sends it.
    fn authorized<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        let req = req.header(shoal_node::guard::CLIENT_HEADER, "1");
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
        self.post_signed(path, body, content_type, &[])
    }

    /// [`Api::post`] with extra headers (a submitter's signature).
    pub fn post_signed(
        &self,
        path: &str,
        body: &[u8],
        content_type: &str,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let mut req =
            self.authorized(self.agent.post(format!("{}{path}", self.base)).header("Content-Type", content_type));
        for (name, value) in headers {
            req = req.header(*name, value);
        }
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

    /// Whether the node holds the whole DAG under `cid`.
    pub fn holds(&self, cid: &Cid) -> anyhow::Result<bool> {
        let r = self.get(&format!("/v1/dags/{cid}"))?;
        Ok(r.get("held").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Uploads the DAG under `root` from `store` as a CAR (the node pins it).
    pub fn push(&self, store: &dyn shoal_storage::BlockStore, root: &Cid) -> anyhow::Result<()> {
        let mut car = Vec::new();
        shoal_storage::car::export(store, root, &mut car)?;
        self.post("/v1/car", &car, "application/vnd.ipld.car")?;
        Ok(())
    }
}

/// Submit a job to a node.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// A job spec (YAML or JSON; docs/job-spec.md). Flags given beside it
    /// replace its fields (`--input` adds a mount, `--env` and `--model`
    /// set one name); local paths in it, relative to its directory, are
    /// uploaded like the flags' own.
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
    #[arg(long, value_name = "DURATION", value_parser = crate::cmd_run::parse_timeout)]
    pub execution_timeout: Option<Duration>,
    /// Follow the job and print its result CID; exit with the guest's
    /// exit code (1 for a failure without one), as `shoal run` does.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (the job goes on).
    #[arg(long, value_name = "DURATION", value_parser = crate::cmd_run::parse_timeout)]
    pub wait_timeout: Option<Duration>,
    /// Run the job even if the node holds the receipt of an earlier run of
    /// the same job (by default such a job completes at once from it).
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The job spec `submit` sends: the file given with `-f` (YAML or JSON)
/// or an empty one, with the flags applied over it. Sources (module,
/// inputs, models) are still as the user wrote them: CIDs or local paths.
fn spec_value(a: &SubmitArgs) -> anyhow::Result<Value> {
    let mut spec = match &a.file {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("cannot read the job spec {}", f.display()))?;
            let v: Value = if text.trim_start().starts_with('{') {
                serde_json::from_str(&text)
                    .with_context(|| format!("the job spec {} is not valid json", f.display()))?
            } else {
                serde_norway::from_str(&text)
                    .with_context(|| format!("the job spec {} is not valid yaml", f.display()))?
            };
            if !v.is_object() {
                bail!(
                    "the job spec {} is not a mapping with a `task` (a job) or `steps` (a pipeline); see \
                     docs/job-spec.md",
                    f.display()
                );
            }
            v
        }
        None => json!({ "task": {} }),
    };
    // A pipeline's steps each have their own spec: the flags apply to none.
    if spec.get("steps").is_none() {
        apply_flags(&mut spec, a)?;
    }
    Ok(spec)
}

/// The mapping at `key` in `v`, made if absent; an error naming `field` if
/// something else is there.
fn object<'a>(v: &'a mut Value, key: &str, field: &str) -> anyhow::Result<&'a mut serde_json::Map<String, Value>> {
    let name = if field.is_empty() { key.to_owned() } else { format!("{field}.{key}") };
    let Some(map) = v.as_object_mut() else { bail!("{field} is not a mapping in the job spec") };
    map.entry(key)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .with_context(|| format!("{name} is not a mapping in the job spec"))
}

/// Applies the command-line flags over the spec: each flag given replaces
/// the spec's field (`--env` and `--model` per name; `--input` adds a
/// mount). Flags that are not given leave the spec's fields as they are.
fn apply_flags(spec: &mut Value, a: &SubmitArgs) -> anyhow::Result<()> {
    let r = &a.run;
    let task = object(spec, "task", "")?;
    if let Some(m) = &r.module {
        task.insert("module".into(), json!(m));
    }
    if let Some(e) = &r.entrypoint {
        task.insert("entrypoint".into(), json!(e));
    }
    if let Some(inv) = &r.invoke {
        task.insert("invoke".into(), json!(inv));
    }
    if !r.args.is_empty() {
        task.insert("args".into(), json!(r.args));
    }
    if r.nondeterministic {
        task.insert("nondeterministic".into(), json!(true));
    }
    if !r.inputs.is_empty() {
        let inputs = task.entry("inputs").or_insert_with(|| json!([]));
        let list = inputs.as_array_mut().context("task.inputs is not a list in the job spec")?;
        for i in &r.inputs {
            list.push(json!({ "cid": i.src, "mount": i.guest }));
        }
    }
    let task = spec.get_mut("task").context("the job spec has no task")?;
    if !r.env.is_empty() {
        let env = object(task, "env", "task")?;
        for (k, v) in &r.env {
            env.insert(k.clone(), json!(v));
        }
    }
    if !r.models.is_empty() {
        let models = object(task, "models", "task")?;
        for (name, src) in &r.models {
            models.insert(name.clone(), json!(src));
        }
    }
    if r.memory.is_some() || r.timeout.is_some() || r.fuel.is_some() || r.max_input.is_some() {
        let limits = object(task, "limits", "task")?;
        if let Some(m) = r.memory {
            limits.insert("memory".into(), json!(m.as_u64()));
        }
        if let Some(t) = r.timeout {
            limits.insert("timeout".into(), json!(humantime::format_duration(t).to_string()));
        }
        if let Some(f) = r.fuel {
            limits.insert("fuel".into(), json!(f));
        }
        if let Some(m) = r.max_input {
            limits.insert("max_input".into(), json!(m.as_u64()));
        }
    }
    if !a.constraints.is_empty() {
        spec["constraints"] = json!(a.constraints);
    }
    if r.gpu {
        // Placed only on nodes that announce a GPU.
        object(spec, "resources", "")?.insert("gpu".into(), json!(true));
    }
    if let Some(m) = r.nn_mode {
        object(spec, "nn", "")?.insert("mode".into(), json!(m.as_str()));
    }
    if let Some(t) = r.nn_target {
        object(spec, "nn", "")?.insert("target".into(), json!(t.as_str()));
    }
    let redundancy = [("count", a.redundancy), ("quorum", a.quorum), ("max_extra", a.max_extra)];
    if redundancy.iter().any(|(_, v)| v.is_some()) {
        let red = object(spec, "redundancy", "")?;
        for (k, v) in redundancy {
            if let Some(v) = v {
                red.insert(k.into(), json!(v));
            }
        }
    }
    if let Some(t) = a.execution_timeout {
        object(spec, "timeouts", "")?.insert("execution".into(), json!(humantime::format_duration(t).to_string()));
    }
    Ok(())
}

/// Data a job needs that the node may lack, found while resolving its
/// sources.
#[derive(Default)]
struct Sources {
    /// Local files and directories, imported here to learn their CIDs.
    imported: MemStore,
    /// Roots in `imported`, to upload.
    local: Vec<Cid>,
    /// Roots the spec names by CID: uploaded from this machine's store if
    /// the node lacks them and the store holds them.
    named: Vec<Cid>,
}

impl Sources {
    /// `src` as a CID (with a path inside it): a CID as given, or a local
    /// path (relative to `base`) imported to learn its CID.
    fn resolve(&mut self, src: &str, base: &std::path::Path, field: &str) -> anyhow::Result<(Cid, Vec<String>)> {
        if let Ok((cid, path)) = parse_cid_path(src) {
            self.named.push(cid);
            return Ok((cid, path));
        }
        let p = base.join(src);
        if !p.exists() {
            bail!(
                "{field}: {src} is neither a cid nor an existing path (paths in a job spec are relative to its \
                 directory)"
            );
        }
        let added = Importer::new(&self.imported, Options::default())
            .add_path(&p)
            .with_context(|| format!("{field}: cannot read {}", p.display()))?;
        self.local.push(added.root);
        Ok((added.root, Vec::new()))
    }
}

/// Replaces every source in `spec` (module, input cids, models) by a CID,
/// collecting what may need uploading. A path inside an input's CID goes
/// to its `path` field.
fn resolve_sources(spec: &mut Value, base: &std::path::Path) -> anyhow::Result<Sources> {
    let mut sources = Sources::default();
    let task = spec.get_mut("task").context("the job spec has no task")?;
    match task.get("module") {
        Some(Value::String(m)) => {
            let m = m.clone();
            let (cid, path) = sources.resolve(&m, base, "task.module")?;
            if !path.is_empty() {
                bail!("task.module: give the module as a cid or a file, not a path inside a cid ({m})");
            }
            task["module"] = json!(cid.to_string());
        }
        None => bail!("no module given: pass a .wasm path or a CID, or a job spec with -f FILE"),
        Some(_) => {} // not a string: the spec's own check says so
    }
    if let Some(inputs) = task.get_mut("inputs").and_then(Value::as_array_mut) {
        for (i, input) in inputs.iter_mut().enumerate() {
            let Some(src) = input.get("cid").and_then(Value::as_str).map(str::to_owned) else { continue };
            let (cid, path) = sources.resolve(&src, base, &format!("task.inputs[{i}].cid"))?;
            input["cid"] = json!(cid.to_string());
            if !path.is_empty() {
                if input.get("path").is_some() {
                    bail!("task.inputs[{i}]: give the path inside the cid either in `cid` or in `path`, not both");
                }
                input["path"] = json!(path.join("/"));
            }
        }
    }
    if let Some(models) = task.get_mut("models").and_then(Value::as_object_mut) {
        for (name, src) in models.iter_mut() {
            let Some(text) = src.as_str().map(str::to_owned) else { continue };
            let (cid, path) = sources.resolve(&text, base, &format!("task.models.{name}"))?;
            if !path.is_empty() {
                bail!("task.models.{name}: give the model as a cid or a file, not a path inside a cid");
            }
            *src = json!(cid.to_string());
        }
    }
    Ok(sources)
}

/// Uploads what the node lacks: every local path, and every named CID the
/// node does not hold but this machine's store does.
fn upload(ctx: &Ctx, api: &Api, sources: &Sources) -> anyhow::Result<()> {
    let mut sent = std::collections::HashSet::new();
    for root in &sources.local {
        if sent.insert(*root) && !api.holds(root)? {
            api.push(&sources.imported, root)?;
        }
    }
    let mut local: Option<crate::store::Store> = None;
    for root in &sources.named {
        if !sent.insert(*root) || api.holds(root)? {
            continue;
        }
        // Only a store that exists is looked at (a fresh machine has none).
        if local.is_none() && (ctx.ipfs_api.is_some() || ctx.home.exists()) {
            local = crate::store::Store::open(ctx).ok();
        }
        if let Some(store) = &local {
            if store.get().has(root).unwrap_or(false) {
                match api.push(store.get(), root) {
                    Ok(()) => {}
                    // Partly here: the node may find the rest elsewhere.
                    Err(e) => tracing::debug!("not uploading {root}: {e:#}"),
                }
            }
        }
    }
    Ok(())
}

pub fn submit(ctx: &Ctx, a: SubmitArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&ctx.node)?;
    if a.run.allow_software_gpu {
        bail!("--allow-software-gpu is a node setting (shoal node --allow-software-gpu); submit with --gpu");
    }
    if a.file.is_some() && a.run.module.is_some() {
        bail!("give the module either in the job spec (-f) or on the command line, not both");
    }
    if a.run.no_pin {
        bail!("--no-pin is for `shoal run`; a node keeps what its jobs need");
    }
    let base = match &a.file {
        Some(f) => f.parent().map(std::path::Path::to_path_buf).unwrap_or_default(),
        None => PathBuf::new(),
    };
    let mut spec = spec_value(&a)?;
    if spec.get("steps").is_some() {
        return submit_pipeline(ctx, &api, &a, spec, &base);
    }
    let sources = resolve_sources(&mut spec, &base)?;
    let body = serde_json::to_string(&spec)?;
    // Refused here, before anything is uploaded, as the node would.
    let parsed = shoal_scheduler::spec::Spec::from_yaml_or_json(&body)?;
    upload(ctx, &api, &sources)?;
    let path = if a.no_cache { "/v1/jobs?cache=false" } else { "/v1/jobs" };
    let headers = sign(ctx, &shoal_scheduler::receipt::job_cid(&parsed))?;
    let r = api.post_signed(path, body.as_bytes(), "application/json", &headers)?;
    let id = r.get("id").and_then(Value::as_str).context("the node returned no job id")?.to_owned();
    let warnings = r.get("warnings").cloned().unwrap_or_else(|| json!([]));
    let cached = r.get("cached").and_then(Value::as_str).map(str::to_owned);
    if !ctx.json {
        for w in warnings.as_array().into_iter().flatten().filter_map(Value::as_str) {
            eprintln!("warning: {w}");
        }
        if let Some(c) = &cached {
            if !a.run.quiet {
                eprintln!(
                    "job {id} completed from the cache: receipt {c} of an earlier run (--no-cache runs it again)"
                );
            }
        }
    }
    if !a.wait {
        if ctx.json {
            output::json(&json!({ "id": id, "warnings": warnings, "cached": cached }))?;
        } else {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !a.run.quiet && !ctx.json {
        eprintln!("job {id} submitted; waiting");
    }
    wait_and_print(ctx, &api, &id, a.run.quiet, a.wait_timeout)
}

/// `shoal submit -f pipeline.yaml`: a file with `steps` is a pipeline.
/// Each step's local paths are uploaded as a job's are; the pipeline is
/// checked here as the node would, signed over its CID, and submitted.
fn submit_pipeline(
    ctx: &Ctx,
    api: &Api,
    a: &SubmitArgs,
    mut doc: Value,
    base: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    // The flags change one job's spec; a pipeline's steps each have theirs.
    let mut probe = json!({ "task": {} });
    apply_flags(&mut probe, a)?;
    if probe != json!({ "task": {} }) {
        bail!("flags that change a job spec apply to one job: set them in each step of the pipeline instead");
    }
    let Some(steps) = doc.get_mut("steps").and_then(Value::as_object_mut) else {
        bail!("`steps` is not a mapping of step names to job specs; see docs/job-spec.md#pipelines");
    };
    let mut all = Vec::new();
    for (name, step) in steps.iter_mut() {
        // The spec's own `task` check names the problem otherwise.
        if step.get("task").and_then(|t| t.get("module")).is_some() {
            all.push(resolve_sources(step, base).with_context(|| format!("step {name:?}"))?);
        }
    }
    let body = serde_json::to_string(&doc)?;
    let pipeline = shoal_scheduler::pipeline::Pipeline::parse(&body)?;
    for sources in &all {
        upload(ctx, api, sources)?;
    }
    let headers = sign(ctx, &pipeline.cid())?;
    let path = if a.no_cache { "/v1/pipelines?cache=false" } else { "/v1/pipelines" };
    let r = api.post_signed(path, body.as_bytes(), "application/json", &headers)?;
    let id = r.get("id").and_then(Value::as_str).context("the node returned no pipeline id")?.to_owned();
    if !a.wait {
        if ctx.json {
            output::json(&r)?;
        } else {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !a.run.quiet && !ctx.json {
        eprintln!("pipeline {id} submitted; waiting");
    }
    wait_pipeline(ctx, api, &id, a.wait_timeout, a.run.quiet)
}

/// Waits for pipeline `id` to end (or `timeout`), prints its steps and
/// receipt, and exits 0 only if it completed.
fn wait_pipeline(ctx: &Ctx, api: &Api, id: &str, timeout: Option<Duration>, quiet: bool) -> anyhow::Result<ExitCode> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let run = loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let secs = left.map_or(60, |l| l.as_secs().clamp(1, 60));
        let run = api.get(&format!("/v1/pipelines/{id}/wait?timeout={secs}"))?;
        let state = run["state"].as_str().unwrap_or_default();
        if is_terminal(state) || left.is_some_and(|l| l.is_zero()) {
            break run;
        }
    };
    print_pipeline(ctx, &run, quiet)?;
    Ok(if run["state"] == "completed" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A pipeline run: one line per step (in an order they can run in), then
/// its receipt or why it failed.
fn print_pipeline(ctx: &Ctx, run: &Value, quiet: bool) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(run);
    }
    let id = run["id"].as_str().unwrap_or_default();
    let state = run["state"].as_str().unwrap_or_default();
    let order: Vec<String> = serde_json::from_value::<shoal_scheduler::pipeline::Pipeline>(run["pipeline"].clone())
        .map(|p| p.order().into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    for name in &order {
        let s = &run["steps"][name];
        let what = match s["state"].as_str().unwrap_or("?") {
            "completed" => s["result"].as_str().unwrap_or_default().to_owned(),
            other => format!("{other}{}", s["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default()),
        };
        let job = s["job"].as_str().map(|j| format!(" ({j})")).unwrap_or_default();
        println!("{name}{job}\t{what}");
    }
    match (state, run["receipt"].as_str()) {
        ("completed", Some(receipt)) => {
            println!("receipt\t{receipt}");
            if !quiet {
                eprintln!("pipeline {id} completed; check it: shoal receipt verify {receipt}");
            }
        }
        (s, _) if is_terminal(s) => eprintln!("pipeline {id} {s}: {}", run["error"].as_str().unwrap_or_default()),
        _ => eprintln!("pipeline {id} still {state}; follow it with `shoal pipeline wait {id}`"),
    }
    Ok(())
}

/// Follow, describe, list or cancel pipelines on a node.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PipelineCmd {
    /// A pipeline's steps, their jobs and results, and its receipt.
    Describe { id: String },
    /// Wait for a pipeline to end; exit 0 if it completed.
    Wait {
        id: String,
        /// Give up waiting after this long (the pipeline goes on).
        #[arg(long, value_name = "DURATION", value_parser = crate::cmd_run::parse_timeout)]
        timeout: Option<Duration>,
    },
    /// Cancel a pipeline: its running steps' jobs, and the steps not run.
    Cancel { id: String },
    /// Pipelines on the node, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

pub fn pipeline(ctx: &Ctx, c: PipelineCmd) -> anyhow::Result<ExitCode> {
    let api = Api::new(&ctx.node)?;
    let check = |id: &str| -> anyhow::Result<()> {
        id.parse::<shoal_scheduler::model::PipelineId>()
            .map(|_| ())
            .map_err(|_| anyhow::anyhow!("malformed pipeline id {id:?}; pipeline ids look like p-0190f…"))
    };
    match c {
        PipelineCmd::Describe { id } => {
            check(&id)?;
            print_pipeline(ctx, &api.get(&format!("/v1/pipelines/{id}"))?, true)?;
            Ok(ExitCode::SUCCESS)
        }
        PipelineCmd::Wait { id, timeout } => {
            check(&id)?;
            wait_pipeline(ctx, &api, &id, timeout, false)
        }
        PipelineCmd::Cancel { id } => {
            check(&id)?;
            let run = api.post(&format!("/v1/pipelines/{id}/cancel"), b"{}", "application/json")?;
            print_pipeline(ctx, &run, true)?;
            Ok(ExitCode::SUCCESS)
        }
        PipelineCmd::List { limit } => {
            let v = api.get(&format!("/v1/pipelines?limit={limit}"))?;
            if ctx.json {
                output::json(&v)?;
            } else {
                for p in v["pipelines"].as_array().into_iter().flatten() {
                    let done =
                        p["steps"].as_object().map_or(0, |m| m.values().filter(|s| s["state"] == "completed").count());
                    let all = p["steps"].as_object().map_or(0, |m| m.len());
                    println!(
                        "{}\t{}\t{done}/{all} steps",
                        p["id"].as_str().unwrap_or_default(),
                        p["state"].as_str().unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The headers of a submission signed with this client's key
/// (`<home>/client.key`, created on first use): the submit statement of
/// `cid` (a job's or a pipeline's) now.
pub fn sign(ctx: &Ctx, cid: &Cid) -> anyhow::Result<Vec<(&'static str, String)>> {
    let key = shoal_node::load_client_key(&ctx.home)?;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let signature = key
        .sign(&shoal_scheduler::receipt::submit_statement(cid, at))
        .context("cannot sign the submission with the client key")?;
    Ok(vec![
        (shoal_node::api::SUBMITTER_HEADER, key.public().to_peer_id().to_string()),
        (shoal_node::api::SUBMITTED_AT_HEADER, at.to_string()),
        (shoal_node::api::SIGNATURE_HEADER, hex::encode(signature)),
    ])
}

/// `shoal whoami`: this client's submitter key, what operators name in
/// `--allow-submitter` and what receipts and quotas know it by.
pub fn whoami(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let key = shoal_node::load_client_key(&ctx.home)?;
    let id = key.public().to_peer_id().to_string();
    if ctx.json {
        output::json(&json!({ "submitter": id, "key_file": ctx.home.join("client.key") }))?;
    } else {
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Put data on a node.
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// A CID held in this machine's store, or a local file or directory.
    pub source: String,
}

/// `shoal push`: places data on the node (`--node`) on purpose, pinned
/// there, so that jobs submitted to it from anywhere find it.
pub fn push(ctx: &Ctx, a: PushArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&ctx.node)?;
    let (root, already) = match parse_cid_path(&a.source) {
        Ok((cid, path)) => {
            if !path.is_empty() {
                bail!("give a cid without a path ({}): push the whole dag", a.source);
            }
            let already = api.holds(&cid)?;
            if !already {
                let store = crate::store::Store::open(ctx)?;
                api.push(store.get(), &cid).with_context(|| {
                    format!(
                        "cannot push {cid} from the store in {}: add the data there first (shoal add)",
                        ctx.home.display()
                    )
                })?;
            }
            (cid, already)
        }
        Err(_) => {
            let p = std::path::Path::new(&a.source);
            if !p.exists() {
                bail!("{} is neither a cid nor an existing path", a.source);
            }
            let mem = MemStore::new();
            let added = Importer::new(&mem, Options::default())
                .add_path(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let already = api.holds(&added.root)?;
            if !already {
                api.push(&mem, &added.root)?;
            }
            (added.root, already)
        }
    };
    if ctx.json {
        output::json(&json!({ "cid": root.to_string(), "node": api.base, "uploaded": !already }))?;
    } else if already {
        println!("{root} is already on {}", api.base);
    } else {
        println!("pushed {root} to {}", api.base);
    }
    Ok(ExitCode::SUCCESS)
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
    let j = &r["job"];
    let state = j["state"].as_str().unwrap_or("").to_owned();
    if ctx.json {
        output::json(&r)?;
    } else if state == "completed" {
        let result = j["result"].as_str().unwrap_or("");
        if quiet {
            println!("{result}");
        } else {
            println!("job {id} completed; outcome: {}", outcome_text(j));
            println!("result: {result}");
        }
        if j["outcome"] == "failed" {
            eprintln!(
                "the job's guest failed ({}); `shoal job logs {id}` shows its output",
                failure_text(j).unwrap_or_else(|| "no reason recorded".into())
            );
        }
    } else {
        let error = j["error"].as_str().unwrap_or("no reason given");
        eprintln!("job {id} {state}: {error}");
    }
    Ok(ExitCode::from(wait_status(j)))
}

/// The exit status of `submit --wait` and `job wait`, as `shoal run` has
/// it: the guest's exit code for a completed job (1 for a failure without
/// one), 1 for a job that did not complete.
fn wait_status(j: &Value) -> u8 {
    if j["state"] != "completed" || j["outcome"] == "succeeded" || j["outcome"].is_null() {
        return if j["state"] == "completed" { 0 } else { 1 };
    }
    match j["exit_code"].as_i64() {
        Some(c) if c & 0xff != 0 => (c & 0xff) as u8,
        _ => 1,
    }
}

/// `succeeded`, `failed (exit code 7)`, `failed (wasm trap: …)`.
fn outcome_text(j: &Value) -> String {
    match j["outcome"].as_str() {
        Some("failed") => format!("failed ({})", failure_text(j).unwrap_or_else(|| "no reason recorded".into())),
        Some(o) => o.to_owned(),
        None => "unknown (completed by an older node)".into(),
    }
}

/// Why a completed job's guest failed: its exit code when it exited (the
/// result's failure line then only repeats it), else its failure line.
fn failure_text(j: &Value) -> Option<String> {
    match (j["failure"].as_str(), j["exit_code"].as_i64()) {
        (Some(f), Some(c)) if c != 0 && f.ends_with(&format!("code {c}")) => Some(format!("exit code {c}")),
        (Some(f), _) => Some(f.to_owned()),
        (None, Some(c)) => Some(format!("exit code {c}")),
        (None, None) => None,
    }
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
        #[arg(long, value_name = "DURATION", value_parser = crate::cmd_run::parse_timeout)]
        timeout: Option<Duration>,
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
                    let outcome = match j["outcome"].as_str() {
                        Some("failed") => match failure_text(j) {
                            Some(t) if t.starts_with("exit code ") => format!("failed:{}", &t["exit code ".len()..]),
                            _ => "failed".into(),
                        },
                        Some(o) => o.to_owned(),
                        None => "-".into(),
                    };
                    println!("{}  {:<9}  {:<9}  {}", s("id"), s("state"), outcome, s("result"));
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
                    let exit = e["exit_code"].as_i64().map(|c| format!(", exit code {c}")).unwrap_or_default();
                    println!("== execution {} on {} ({}{exit})", s("execution"), s("node"), s("state"));
                    if !s("error").is_empty() {
                        // Only an execution that ended without a result
                        // failed; others carry a judgement (dissent, a
                        // late agreement that earned no credit).
                        let label = if matches!(s("state").as_str(), "failed" | "lost" | "rejected") {
                            "error"
                        } else {
                            "note"
                        };
                        println!("{label}: {}", s("error"));
                    }
                    print!("{}", s("stdout"));
                    eprint!("{}", s("stderr"));
                }
            }
        }
        JobCmd::Wait { quiet, timeout, id } => return wait_and_print(ctx, &Api::new(&ctx.node)?, &id, quiet, timeout),
        JobCmd::Cancel { id } => {
            let r = Api::new(&ctx.node)?.post(&format!("/v1/jobs/{id}/cancel"), b"{}", "application/json")?;
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
    if let Some(w) = j["waiting"].as_str() {
        println!("waiting: {w}");
    }
    if j["state"] == "completed" {
        println!("outcome: {}", outcome_text(j));
        if let Some(c) = j["exit_code"].as_i64() {
            println!("exit code: {c}");
        }
        if let Some(f) = j["failure"].as_str() {
            println!("failure: {f}");
        }
    }
    if !j["result"].is_null() {
        println!("result:  {}", s(j, "result"));
    }
    if !j["cached"].is_null() {
        println!("cached:  {} (completed from an earlier run's receipt, run nowhere)", s(j, "cached"));
    }
    if let Some(k) = j.pointer("/submitter/key").and_then(Value::as_str) {
        println!("submitter: {k}");
    }
    let spec = &j["spec"];
    let nn = &spec["nn"];
    let has_models = spec.pointer("/task/models").and_then(Value::as_object).is_some_and(|m| !m.is_empty());
    if !nn.is_null() || has_models || spec.pointer("/resources/gpu") == Some(&Value::Bool(true)) {
        let target = if nn["target"] == "auto" { ", target auto" } else { "" };
        println!("wasi-nn: mode {}{target}", nn["mode"].as_str().unwrap_or("exact"));
    }
    if !j["receipt"].is_null() {
        println!("receipt: {} (check it: shoal receipt verify {})", s(j, "receipt"), s(j, "receipt"));
    }
    if !j["error"].is_null() {
        println!("error:   {}", s(j, "error"));
    }
    println!("executions:");
    for e in r["executions"].as_array().into_iter().flatten() {
        let result = if e["result"].is_null() { String::new() } else { s(e, "result") };
        let error = if e["error"].is_null() { String::new() } else { format!("  ({})", s(e, "error")) };
        let exit = e["exit_code"].as_i64().map(|c| format!("  exit {c}")).unwrap_or_default();
        println!("  {}  {:<9}  node {}  {}{exit}{}", s(e, "id"), s(e, "state"), s(e, "node"), result, error);
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
        let gpu = match v["gpu"].get("name").and_then(Value::as_str) {
            None => "none".to_string(),
            Some(name) => {
                let driver = v["gpu"]["driver"].as_str().filter(|d| !d.is_empty()).unwrap_or("driver unknown");
                let exact = if v["gpu"]["exact"] == true { "exact" } else { "no exact" };
                format!("{name} [{driver}] ({exact})")
            }
        };
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
    let (b, d) = (&r["ipfs"]["bitswap"], &r["ipfs"]["dht"]);
    if !b.is_null() {
        println!(
            "ipfs (this node): bitswap sent {} blocks ({} bytes), received {} ({} bytes), {} wants in flight, junk {}, peers banned {}",
            b["blocks_sent"],
            b["bytes_sent"],
            b["blocks_received"],
            b["bytes_received"],
            b["wants_in_flight"],
            b["junk"],
            b["peers_banned"]
        );
        println!(
            "ipfs (this node): dht provider records published {}, received {}, served {} in {} lookups",
            d["provider_records_published"],
            d["provider_records_received"],
            d["provider_records_served"],
            d["provider_lookups_answered"]
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
    let mut started = Vec::new();
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
        if !ctx.json {
            println!("node {i} api={api} peer={peer}");
        }
        started.push(json!({ "index": i, "api": api, "peer": peer, "home": home }));
        first_peer.get_or_insert(peer);
    }
    if ctx.json {
        // One document, once every node is up.
        println!("{}", json!({ "ready": true, "nodes": started }));
    } else {
        println!("ready");
    }
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
    fn a_node_without_a_scheme_is_http_and_other_schemes_are_refused() {
        assert_eq!(node_base("127.0.0.1:36597").unwrap(), "http://127.0.0.1:36597");
        assert_eq!(node_base("http://[::1]:8080/").unwrap(), "http://[::1]:8080");
        assert_eq!(node_base("https://node.example").unwrap(), "https://node.example");
        let e = node_base("ftp://x:1").unwrap_err().to_string();
        assert!(e.contains("\"ftp\"") && e.contains("http://HOST:PORT"), "{e}");
        assert!(node_base("").is_err());
    }

    #[test]
    fn the_wait_status_is_the_guests_exit_code() {
        let job =
            |state: &str, outcome: Value, code: Value| json!({ "state": state, "outcome": outcome, "exit_code": code });
        assert_eq!(wait_status(&job("completed", json!("succeeded"), json!(0))), 0);
        assert_eq!(wait_status(&job("completed", json!("failed"), json!(7))), 7);
        assert_eq!(wait_status(&job("completed", json!("failed"), json!(256))), 1);
        assert_eq!(wait_status(&job("completed", json!("failed"), Value::Null)), 1);
        assert_eq!(wait_status(&job("completed", Value::Null, Value::Null)), 0, "an older node's job");
        assert_eq!(wait_status(&job("failed", Value::Null, Value::Null)), 1);
        assert_eq!(wait_status(&job("cancelled", Value::Null, Value::Null)), 1);
    }

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
