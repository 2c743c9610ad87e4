//! The node's HTTP API (axum): jobs, nodes, data in and out as CAR files,
//! the IPFS trustless gateway under `/ipfs/` ([`crate::gateway`]), health,
//! Prometheus metrics and the OpenAPI document at `/openapi.json`.
//!
//! On a loopback bind the API is open to local users; on any other bind
//! every request must carry `Authorization: Bearer <token>` with the token
//! from `<home>/api-token`, but for the dashboard's files and the
//! gateway's reads (see [`guard`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use shoal_scheduler::model::{Job, JobId, JobState};
use shoal_scheduler::spec::Spec;
use shoal_storage::Cid;
use utoipa::OpenApi;

use super::views::*;
use super::{fetch, guard, requester, Node};

/// Largest upload (`POST /v1/car`, `POST /v1/files`): a module and its
/// inputs, uploaded by `shoal submit`.
pub const MAX_BODY: usize = 256 << 20;
/// Largest body of any other request: a job spec is at most
/// [`shoal_scheduler::spec::MAX_SPEC_BYTES`] (1 MiB).
pub const MAX_SMALL_BODY: usize = shoal_scheduler::spec::MAX_SPEC_BYTES;
/// Jobs a requester holds unfinished before it refuses new ones.
pub const MAX_ACTIVE_JOBS: usize = 100_000;
/// Longest `wait` long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Job event streams (`/v1/jobs/{id}/events`) open at once; more are
/// answered 503.
pub const MAX_EVENT_STREAMS: usize = 256;
/// Least time between two looks at a job by one event stream: every change
/// on the node wakes every stream, and a burst is sent as one event.
pub const EVENT_INTERVAL: Duration = Duration::from_millis(50);

/// The node's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    pub jobs_submitted: Counter,
    pub jobs_completed: Counter,
    pub jobs_failed: Counter,
    pub executions_run: Counter,
    pub executions_lost: Counter,
    pub active_jobs: Gauge,
    pub job_seconds: Histogram,
    /// Bitswap's counters (shared with [`crate::bitswap::Bitswap`]).
    pub bitswap: crate::bitswap::Stats,
    /// Roots whose provider record reached at least one IPFS DHT peer
    /// (`shoal_ipfs_provider_records_published_total`; kad's own
    /// re-publications are not counted).
    pub ipfs_provider_records_published: Counter,
    /// The IPFS DHTs' work for others, brought up to date from the
    /// network's [`shoal_scheduler::net::DhtStats`] when read.
    pub ipfs_provider_records_received: Counter,
    pub ipfs_provider_lookups_answered: Counter,
    pub ipfs_provider_records_served: Counter,
    /// Held while the DHT counters are brought up to date, so two readers
    /// do not both add the same difference.
    dht_sync: std::sync::Mutex<()>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("shoal");
        let m = Metrics {
            registry: Registry::default(),
            jobs_submitted: Counter::default(),
            jobs_completed: Counter::default(),
            jobs_failed: Counter::default(),
            executions_run: Counter::default(),
            executions_lost: Counter::default(),
            active_jobs: Gauge::default(),
            job_seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0]),
            bitswap: Default::default(),
            ipfs_provider_records_published: Counter::default(),
            ipfs_provider_records_received: Counter::default(),
            ipfs_provider_lookups_answered: Counter::default(),
            ipfs_provider_records_served: Counter::default(),
            dht_sync: Default::default(),
        };
        registry.register("jobs_submitted", "Jobs accepted on this node's API", m.jobs_submitted.clone());
        registry.register("jobs_completed", "Jobs completed with an agreed result", m.jobs_completed.clone());
        registry.register("jobs_failed", "Jobs that failed", m.jobs_failed.clone());
        registry.register("executions_run", "Executions this node ran", m.executions_run.clone());
        registry.register("executions_lost", "Executions marked lost", m.executions_lost.clone());
        registry.register("active_jobs", "Queued or running jobs", m.active_jobs.clone());
        registry.register("job_seconds", "Submit-to-result latency", m.job_seconds.clone());
        m.bitswap.register(registry.sub_registry_with_prefix("bitswap"));
        registry.register(
            "ipfs_provider_records_published",
            "Pinned roots whose provider record reached an IPFS DHT peer",
            m.ipfs_provider_records_published.clone(),
        );
        registry.register(
            "ipfs_provider_records_received",
            "Provider records other peers stored on this node's IPFS DHTs",
            m.ipfs_provider_records_received.clone(),
        );
        registry.register(
            "ipfs_provider_lookups_answered",
            "Provider lookups this node's IPFS DHTs answered",
            m.ipfs_provider_lookups_answered.clone(),
        );
        registry.register(
            "ipfs_provider_records_served",
            "Provider records this node's IPFS DHTs handed out",
            m.ipfs_provider_records_served.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Brings the DHT counters up to `s` (they only grow).
    fn sync_dht(&self, s: shoal_scheduler::net::DhtStats) {
        let _one = self.dht_sync.lock().unwrap_or_else(|p| p.into_inner());
        for (c, v) in [
            (&self.ipfs_provider_records_received, s.provider_records_received),
            (&self.ipfs_provider_lookups_answered, s.provider_lookups_answered),
            (&self.ipfs_provider_records_served, s.provider_records_served),
        ] {
            c.inc_by(v.saturating_sub(c.get()));
        }
    }

    /// The IPFS counters as `/v1/nodes` shows them.
    fn ipfs(&self) -> IpfsCounters {
        let b = &self.bitswap;
        IpfsCounters {
            bitswap: BitswapCounters {
                blocks_sent: b.blocks_sent.get(),
                bytes_sent: b.bytes_sent.get(),
                blocks_received: b.blocks_received.get(),
                bytes_received: b.bytes_received.get(),
                junk: b.junk.get(),
                peers_banned: b.peers_banned.get(),
                wants_in_flight: b.wants_in_flight.get(),
            },
            dht: DhtCounters {
                provider_records_published: self.ipfs_provider_records_published.get(),
                provider_records_received: self.ipfs_provider_records_received.get(),
                provider_lookups_answered: self.ipfs_provider_lookups_answered.get(),
                provider_records_served: self.ipfs_provider_records_served.get(),
            },
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

pub(crate) type Shared = Arc<Node>;

/// An error as the API returns it: a status and `{"error": "..."}`.
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn not_found(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no job {id} on this node; `shoal job list` shows the jobs it knows"))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Shoal node API", description = "Submit and follow Wasm jobs on a Shoal peer network."),
    paths(
        submit,
        get_job,
        list_jobs,
        cancel_job,
        job_logs,
        wait_job,
        job_events,
        nodes,
        health,
        metrics,
        car_import,
        car_export,
        dag_status,
        file_import,
        ls_root,
        ls_path,
        cat_root,
        cat_path,
        crate::pipelines::submit,
        crate::pipelines::get,
        crate::pipelines::list,
        crate::pipelines::wait,
        crate::pipelines::cancel,
        crate::gateway::get_root,
        crate::gateway::get_path
    )
)]
struct ApiDoc;

/// The API's routes for `node`, behind `policy` (see [`guard`]).
pub fn router(node: Shared, policy: guard::Policy) -> Router {
    Router::new()
        .route("/v1/jobs", post(submit).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/logs", get(job_logs))
        .route("/v1/jobs/{id}/wait", get(wait_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route(
            "/v1/pipelines",
            post(crate::pipelines::submit)
                .layer(DefaultBodyLimit::max(shoal_scheduler::pipeline::MAX_PIPELINE_BYTES))
                .get(crate::pipelines::list),
        )
        .route("/v1/pipelines/{id}", get(crate::pipelines::get))
        .route("/v1/pipelines/{id}/wait", get(crate::pipelines::wait))
        .route("/v1/pipelines/{id}/cancel", post(crate::pipelines::cancel))
        .route("/v1/nodes", get(nodes))
        .route("/v1/health", get(health))
        .route("/v1/car", post(car_import).layer(DefaultBodyLimit::max(MAX_BODY)))
        .route("/v1/car/{cid}", get(car_export))
        .route("/v1/dags/{cid}", get(dag_status))
        .route("/v1/files", post(file_import).layer(DefaultBodyLimit::max(MAX_BODY)))
        .route("/v1/ls/{cid}", get(ls_root))
        .route("/v1/ls/{cid}/{*path}", get(ls_path))
        .route("/v1/cat/{cid}", get(cat_root))
        .route("/v1/cat/{cid}/{*path}", get(cat_path))
        .route("/", get(ui_index))
        .route("/ui/", get(ui_index))
        .route("/ui/{file}", get(ui_file))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .layer(DefaultBodyLimit::max(MAX_SMALL_BODY))
        .with_state(node.clone())
        .merge(crate::gateway::router(crate::gateway::Gateway {
            store: node.store.clone(),
            servable: node.servable.clone(),
            streams: node.car_exports.clone(),
        }))
        .layer(middleware::from_fn_with_state(Arc::new(policy), guard::check))
        .layer(middleware::from_fn(json_errors))
}

/// Longest error text kept from a response that was not already JSON.
const MAX_ERROR_TEXT: usize = 16 << 10;

/// Makes every error the API's JSON error object, whatever produced it:
/// axum's extractors (a bad query string, a body over its limit), an
/// unknown route, a method a route does not take.
async fn json_errors(req: axum::extract::Request, next: middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let r = next.run(req).await;
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    let text = match axum::body::to_bytes(body, MAX_ERROR_TEXT).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let msg = match (status, text.is_empty()) {
        (StatusCode::NOT_FOUND, true) => format!("no route {method} {path}; GET /openapi.json lists the api"),
        (StatusCode::METHOD_NOT_ALLOWED, true) => {
            format!("{path} does not take {method}; GET /openapi.json lists the methods of each route")
        }
        (_, true) => status.canonical_reason().unwrap_or("error").to_lowercase(),
        (_, false) => {
            // axum's messages start with a capital ("Failed to ...").
            let mut c = text.chars();
            c.next().map(|f| f.to_lowercase().chain(c).collect()).unwrap_or_default()
        }
    };
    // Headers such as `Allow` are kept; the body and its type change.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    let body = serde_json::to_vec(&ErrorBody { error: msg }).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// A job with its executions (sealed until it ends) and their timelines.
fn job_json(node: &Node, job: &Job) -> JobDetail {
    let mut timeline = node.db().timeline(&job.id).unwrap_or_default();
    let executions: Vec<ExecutionView> = node
        .db()
        .executions(&job.id)
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let steps = timeline.remove(&e.id).unwrap_or_default();
            ExecutionView {
                execution: e.sealed(job.state),
                timeline: steps.into_iter().map(|(state, ms)| Step { state, ms }).collect(),
            }
        })
        .collect();
    let mut view = JobView::from(job);
    if !job.state.is_terminal() {
        view.waiting = Some(waiting(node, job, &executions));
    }
    JobDetail { job: view, executions }
}

/// Why an unfinished job is not done yet, in one line: how many of its
/// executions are placed and where they stand, and the capable nodes that
/// are busy or declined it.
fn waiting(node: &Node, job: &Job, executions: &[ExecutionView]) -> String {
    use shoal_scheduler::model::ExecState;
    let want = job.spec.redundancy.count as usize + job.extra_used as usize;
    let live: Vec<&ExecutionView> = executions.iter().filter(|e| e.execution.state.is_live()).collect();
    let results = executions.iter().filter(|e| e.execution.state.has_result()).count();
    let committed = live.iter().filter(|e| e.execution.state == ExecState::Committed).count();
    let mut parts = vec![format!("{} of {want} executions placed", live.len() + results)];
    if committed + results > 0 {
        parts.push(format!("{} committed or answered", committed + results));
    }
    let short = |id: &str| id.chars().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect::<String>();
    let now = node.now();
    let views = requester::views(node);
    let capable: Vec<_> =
        views.iter().filter(|n| shoal_scheduler::placement::capable(job, n, now, &node.placement)).collect();
    let declined: std::collections::BTreeSet<&str> = executions
        .iter()
        .filter(|e| e.execution.state == ExecState::Rejected)
        .map(|e| e.execution.node.as_str())
        .collect();
    let busy: Vec<String> = capable
        .iter()
        .filter(|n| n.slots_free < job.spec.resources.slots && !live.iter().any(|e| e.execution.node == n.id))
        .map(|n| short(&n.id))
        .collect();
    if !busy.is_empty() {
        parts.push(format!("nodes busy: {}", busy.join(", ")));
    }
    if !declined.is_empty() {
        parts.push(format!("declined by: {}", declined.iter().map(|n| short(n)).collect::<Vec<_>>().join(", ")));
    }
    if capable.len() < job.spec.redundancy.count as usize {
        parts.push(format!("{} capable node(s) known for redundancy {}", capable.len(), job.spec.redundancy.count));
    }
    parts.join("; ")
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| bad(format!("malformed job id {id:?}; job ids look like j-0190f…")))
}

/// Submit a job (YAML or JSON spec).
///
/// Every CID the job reads (module, inputs, models) must be somewhere: on
/// this node, or on a peer it can fetch it from now. A CID found nowhere
/// refuses the job at once (422), naming it, instead of failing its
/// executions one node after another. The answer warns when fewer nodes
/// than `redundancy.count` could run the job.
#[utoipa::path(post, path = "/v1/jobs", params(("cache" = Option<bool>, Query, description = "answer from the receipt of an earlier run of the same job, if this node has one (default true; deterministic jobs only)"), ("x-shoal-submitter" = Option<String>, Header, description = "the submitter's key (peer id); with the next two, a signed submission"), ("x-shoal-submitted-at" = Option<u64>, Header, description = "when it signed, ms since the Unix epoch (within 10 minutes of the node's clock)"), ("x-shoal-signature" = Option<String>, Header, description = "hex ed25519 signature of \"shoal-submit/1\\n<job cid>\\n<submitted-at>\"")), request_body(content((Spec = "application/json"), (Spec = "application/yaml")), description = "a job spec (docs/job-spec.md), as JSON or YAML"), responses((status = 201, body = Submitted), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused, or a submitter signature that does not verify or is too old", body = ErrorBody), (status = 413, description = "body too large", body = ErrorBody), (status = 415, description = "not a json/yaml/car content type and no X-Shoal-Request header", body = ErrorBody), (status = 422, description = "data found nowhere, or inputs that cannot be mounted", body = ErrorBody), (status = 429, description = "the submitter's quota of unfinished jobs is used up", body = ErrorBody), (status = 503, description = "too many unfinished jobs", body = ErrorBody)))]
async fn submit(
    State(node): State<Shared>,
    Query(q): Query<SubmitQuery>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let spec = Spec::from_yaml_or_json(&body).map_err(|e| bad(format!("bad job spec: {e}")))?;
    let job_cid = shoal_scheduler::receipt::job_cid(&spec);
    let submitter = submitter_of(&node, &headers, &job_cid)?;
    let submitted = enqueue(&node, spec, job_cid, q.cache.unwrap_or(true), submitter).await?;
    Ok((StatusCode::CREATED, Json(submitted)))
}

/// The header naming the submitter's key (a peer id).
pub const SUBMITTER_HEADER: &str = "x-shoal-submitter";
/// The header with the time the submitter signed (ms since the Unix epoch).
pub const SUBMITTED_AT_HEADER: &str = "x-shoal-submitted-at";
/// The header with the submitter's signature (hex) of
/// [`shoal_scheduler::receipt::submit_statement`].
pub const SIGNATURE_HEADER: &str = "x-shoal-signature";
/// How far a signed submission's time may be from this node's clock: a
/// signature captured (from a receipt, say) cannot be replayed later.
pub const MAX_SUBMIT_SKEW: Duration = Duration::from_secs(10 * 60);

/// The submission's signed submitter, if it carries one: the three headers
/// together, the signature checked over `cid` (a job's or a pipeline's;
/// [`shoal_scheduler::receipt::submit_statement`]), the time
/// within [`MAX_SUBMIT_SKEW`]. A submission without them is anonymous.
pub(crate) fn submitter_of(
    node: &Node,
    headers: &axum::http::HeaderMap,
    cid: &Cid,
) -> Result<Option<shoal_scheduler::model::Submitter>, ApiError> {
    let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or_default().trim().to_owned());
    let (key, at, signature) = match (get(SUBMITTER_HEADER), get(SUBMITTED_AT_HEADER), get(SIGNATURE_HEADER)) {
        (None, None, None) => return Ok(None),
        (Some(k), Some(a), Some(s)) => (k, a, s),
        _ => {
            return Err(bad(format!(
                "a signed submission needs all three headers {SUBMITTER_HEADER}, {SUBMITTED_AT_HEADER} and \
                 {SIGNATURE_HEADER}; send all or none"
            )))
        }
    };
    let forbidden = |m: String| ApiError(StatusCode::FORBIDDEN, m);
    key.parse::<libp2p::PeerId>()
        .map_err(|_| bad(format!("{SUBMITTER_HEADER}: {key:?} is not a key id (12D3KooW…)")))?;
    let at_ms: u64 =
        at.parse().map_err(|_| bad(format!("{SUBMITTED_AT_HEADER}: {at:?} is not a time in ms since the epoch")))?;
    let now = node.now();
    let skew = u64::try_from(MAX_SUBMIT_SKEW.as_millis()).unwrap_or(u64::MAX);
    if now.abs_diff(at_ms) > skew {
        return Err(forbidden(format!(
            "the submission was signed at {at_ms} ms, {} s from this node's clock (at most {} s): check the clocks, \
             and sign each submission when sending it",
            now.abs_diff(at_ms) / 1000,
            MAX_SUBMIT_SKEW.as_secs()
        )));
    }
    let claim = shoal_scheduler::model::Submitter { key, at_ms, signature, pipeline: None };
    if !claim.signs(cid) {
        return Err(forbidden(format!(
            "the signature in {SIGNATURE_HEADER} is not {}'s signature of {cid} at {at_ms}: refused",
            claim.key
        )));
    }
    Ok(Some(claim))
}

/// Queues a job (or completes it from the cache): what a submission does
/// once its spec and submitter are known. Pipelines queue their steps
/// through it too.
pub(crate) async fn enqueue(
    node: &Shared,
    spec: Spec,
    job_cid: Cid,
    cache: bool,
    submitter: Option<shoal_scheduler::model::Submitter>,
) -> Result<Submitted, ApiError> {
    // One indexed look; the receipts found (rarely any) are verified off
    // the async threads.
    let candidates =
        match (cache && !spec.task.nondeterministic).then(|| node.db().receipts_for(&job_cid, CACHE_CANDIDATES)) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::warn!("cannot look up the result cache: {e}");
                Vec::new()
            }
            None => Vec::new(),
        };
    let mut hit = None;
    if !candidates.is_empty() {
        let n = node.clone();
        let (s, who) = (spec.clone(), submitter.clone());
        hit =
            tokio::task::spawn_blocking(move || from_cache(&n, s, job_cid, candidates, who)).await.map_err(internal)?;
    }
    if hit.is_none() && cache && !spec.task.nondeterministic {
        hit = from_peers_cache(node, &spec, job_cid, &submitter).await;
    }
    if let Some(job) = hit {
        node.db().insert_job(&job).map_err(internal)?;
        node.metrics.jobs_submitted.inc();
        node.metrics.jobs_completed.inc();
        // A receipt fetched from a peer is this node's to offer now.
        node.receipt_added();
        node.notify_changed();
        let receipt = job.receipt.map(|c| c.to_string());
        return Ok(Submitted { id: job.id, warnings: Vec::new(), cached: receipt });
    }
    // A cache hit costs nothing to hold: the quota counts jobs that run.
    if let Some(quota) = node.quotas.jobs {
        let key = submitter.as_ref().map(|s| s.key.as_str());
        let held = node.db().unfinished_jobs_of(key).map_err(internal)?;
        if held >= u64::from(quota) {
            return Err(ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} already has {held} unfinished job(s) on this node, and its quota is {quota} (--quota-jobs): \
                     wait for some to finish, or cancel some",
                    key.map_or_else(|| "the anonymous submitter".to_owned(), |k| format!("submitter {k}"))
                ),
            ));
        }
    }
    let active = {
        let db = node.db();
        db.count_jobs(JobState::Queued).map_err(internal)? + db.count_jobs(JobState::Running).map_err(internal)?
    } as usize;
    if active >= MAX_ACTIVE_JOBS {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node already holds {active} unfinished jobs; retry later"),
        ));
    }
    locate_data(node, &spec).await?;
    let now = node.now();
    let mut job = Job::new(JobId::from_parts(now, rand::random()), spec, now);
    job.submitter = submitter;
    let mut warnings = Vec::new();
    let capable = shoal_scheduler::placement::capable_nodes(&job, &requester::views(node), now, &node.placement);
    let count = job.spec.redundancy.count as usize;
    if capable < count {
        warnings.push(format!(
            "redundancy.count is {count} but only {capable} node(s) known to this node can run the job: it waits \
             (up to timeouts.queue, then fails) until {count} distinct nodes have run it, or completes once a quorum \
             of {} agrees",
            job.spec.quorum()
        ));
    }
    node.db().insert_job(&job).map_err(internal)?;
    node.metrics.jobs_submitted.inc();
    node.mark(&job.id);
    node.notify_changed();
    Ok(Submitted { id: job.id, warnings, cached: None })
}

#[derive(Deserialize)]
struct SubmitQuery {
    cache: Option<bool>,
}

/// Receipts of earlier runs of a job looked at before it runs again.
const CACHE_CANDIDATES: usize = 4;

/// A new job completed at once from one of `candidates`, receipts of
/// earlier runs of the same job (same job CID, hence the same spec, quorum
/// included): the first that verifies and whose result is still here. A receipt
/// that does not verify is skipped (and said so in the log): the job runs.
fn from_cache(
    node: &Node,
    spec: Spec,
    job_cid: Cid,
    candidates: Vec<Cid>,
    submitter: Option<shoal_scheduler::model::Submitter>,
) -> Option<Job> {
    for receipt in candidates {
        let verified =
            node.store.get(&receipt).map_err(|e| e.to_string()).and_then(|b| {
                shoal_scheduler::receipt::verify(b.data(), Some(&receipt), None).map_err(|e| e.to_string())
            });
        let v = match verified {
            Ok(v) if v.job_cid != job_cid => {
                tracing::warn!("cached receipt {receipt} is for job cid {}, not {job_cid}; ignored", v.job_cid);
                continue;
            }
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("cached receipt {receipt} does not verify, ignored: {e}");
                continue;
            }
        };
        // A failed job's receipt is no answer: the job runs again.
        let Some(result) = v.result else { continue };
        if !fetch::held(&*node.store, &result) {
            continue;
        }
        let (exit_code, failure) = requester::result_outcome(&*node.store, &result);
        let now = node.now();
        let mut job = Job::new(JobId::from_parts(now, rand::random()), spec, now);
        job.state = JobState::Completed;
        job.started_ms = Some(now);
        job.result = Some(result);
        job.exit_code = exit_code;
        job.failure = failure;
        job.receipt = Some(receipt);
        job.cached = Some(receipt);
        job.submitter = submitter;
        return Some(job);
    }
    None
}

/// Peers asked for a receipt of a job at one submission: those whose
/// announced receipts filter names its job CID, the first few.
const CACHE_PEERS: usize = 4;
/// How long a submission waits for peers' receipts in all (asking,
/// fetching and verifying a receipt, fetching its result) before it runs
/// the job after all.
const PEER_CACHE_TIMEOUT: Duration = Duration::from_secs(3);

/// A cache hit from another requester: a peer whose announced filter names
/// `job_cid` is asked for its receipts; the first that verifies (and whose
/// result is a result, not a failure) is fetched with its result, both
/// pinned here, and the job completes from it. Whatever goes wrong (no
/// answer in time, a receipt that does not verify, a result the peer no
/// longer serves) only means the job runs.
async fn from_peers_cache(
    node: &Shared,
    spec: &Spec,
    job_cid: Cid,
    submitter: &Option<shoal_scheduler::model::Submitter>,
) -> Option<Job> {
    use shoal_scheduler::net::proto::{Request, Response};
    let peers: Vec<libp2p::PeerId> = {
        let views = node.views.lock().unwrap_or_else(|p| p.into_inner());
        views
            .iter()
            .filter(|(_, v)| v.connected && v.receipts.as_ref().is_some_and(|r| r.contains(&job_cid)))
            .map(|(p, _)| *p)
            .take(CACHE_PEERS)
            .collect()
    };
    let deadline = tokio::time::Instant::now() + PEER_CACHE_TIMEOUT;
    for peer in peers {
        let attempt = async {
            let answer = node.send(peer, Request::Receipts { job_cid: job_cid.to_string() }).await.ok()?;
            let Response::Receipts { receipts } = answer else { return None };
            for r in receipts.iter().take(shoal_scheduler::net::proto::MAX_RECEIPTS_ANSWER) {
                let Ok(receipt) = r.parse::<Cid>() else { continue };
                if fetch::locate_on_peers(node, receipt, &[peer]).await.is_err() {
                    continue;
                }
                let st = node.store.clone();
                let verified = tokio::task::spawn_blocking(move || {
                    let block = st.get(&receipt).map_err(|e| e.to_string())?;
                    shoal_scheduler::receipt::verify(block.data(), Some(&receipt), None).map_err(|e| e.to_string())
                })
                .await
                .ok()?;
                let result = match verified {
                    Ok(v) if v.job_cid == job_cid => v.result,
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!("receipt {receipt} from {peer} does not verify, ignored: {e}");
                        None
                    }
                };
                let Some(result) = result else { continue };
                if fetch::fetch_dag_from_peers(node, result, &[peer]).await.is_err() {
                    continue;
                }
                let st = node.store.clone();
                let pinned =
                    tokio::task::spawn_blocking(move || st.pin_add(&receipt, shoal_storage::PinMode::Recursive)).await;
                if !matches!(pinned, Ok(Ok(()))) {
                    continue;
                }
                let (n, s, who) = (node.clone(), spec.clone(), submitter.clone());
                let job =
                    tokio::task::spawn_blocking(move || from_cache(&n, s, job_cid, vec![receipt], who)).await.ok()?;
                if job.is_some() {
                    tracing::debug!(%job_cid, %receipt, %peer, "cache hit from a peer");
                    return job;
                }
            }
            None
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Some(job)) => return Some(job),
            Ok(None) => {}
            Err(_) => return None,
        }
    }
    None
}

/// How long a submission looks for data this node lacks (the root block
/// of each CID, on its peers): past it, the job is accepted and its
/// executions go on looking.
pub const LOCATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes sure every CID `spec` reads is on this node or reachable from a
/// peer now; refuses the job (422) naming the first that is nowhere. Once
/// the inputs are here, checks that they can be mounted as the spec says
/// (a file below a directory, not inside a mounted directory), which no
/// node could do otherwise.
pub(crate) async fn locate_data(node: &Shared, spec: &Spec) -> Result<(), ApiError> {
    let t = &spec.task;
    let mut wanted = vec![("task.module".to_owned(), t.module)];
    wanted.extend(t.inputs.iter().enumerate().map(|(i, input)| (format!("task.inputs[{i}].cid"), input.cid)));
    wanted.extend(t.models.iter().map(|(name, cid)| (format!("task.models.{name}"), *cid)));
    for (field, cid) in wanted {
        // One indexed look at the pins: cheaper than a thread hand-off, and
        // every submission of data already here takes only this.
        if fetch::held(&*node.store, &cid) {
            continue;
        }
        // Peers that say they hold it are asked first; only its root block
        // is fetched: the executions fetch the rest from where it is, so
        // a job over a large input placed where the input is moves
        // nothing.
        let mut peers = node.client.peers().await.unwrap_or_default();
        let filters = requester::holds_filters(node);
        peers.sort_by_key(|p| !filters.get(&p.to_string()).is_some_and(|h| h.contains(&cid)));
        let found = tokio::time::timeout(LOCATE_TIMEOUT, fetch::locate(node, cid, &peers)).await;
        match found {
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => {
                return Err(ApiError(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "{field}: {cid} is on no node: neither this node nor its {} connected peer(s) hold it ({}). \
                         upload it first: `shoal push {cid}` from a machine that has it, or give the data as a local \
                         path to `shoal submit`",
                        peers.len(),
                        crate::message(&e)
                    ),
                ))
            }
        }
    }
    if spec.task.inputs.is_empty() {
        return Ok(());
    }
    let store = node.store.clone();
    let inputs = spec.task.inputs.clone();
    let layout = tokio::task::spawn_blocking(move || -> Option<Vec<(String, bool)>> {
        use shoal_storage::exporter::{self, Kind};
        let mut kinds = Vec::new();
        for i in &inputs {
            let cid = exporter::resolve(&*store, &i.cid, &i.segments()).ok()?;
            let kind = exporter::stat(&*store, &cid).ok()?;
            kinds.push((i.mount.clone(), matches!(kind, Kind::Directory { .. } | Kind::Sharded)));
        }
        Some(kinds)
    })
    .await
    .map_err(internal)?;
    // Not all here (still arriving): the executions check it.
    if let Some(layout) = layout {
        let kinds: Vec<(&str, bool)> = layout.iter().map(|(g, d)| (g.as_str(), *d)).collect();
        shoal_runtime::mounts::check_layout(&kinds)
            .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("task.inputs cannot be mounted: {e}")))?;
    }
    Ok(())
}

/// A job and its executions.
#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = JobId, Path, description = "a job id")), responses((status = 200, body = JobDetail), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody)))]
async fn get_job(State(node): State<Shared>, Path(id): Path<String>) -> Result<Json<JobDetail>, ApiError> {
    let jid = parse_id(&id)?;
    let job = node.db().job(&jid).map_err(internal)?.ok_or_else(|| not_found(&id))?;
    Ok(Json(job_json(&node, &job)))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

/// Jobs, newest first, optionally filtered by state.
#[utoipa::path(get, path = "/v1/jobs", params(("state" = Option<JobState>, Query), ("limit" = Option<usize>, Query, minimum = 0, maximum = 10000)), responses((status = 200, body = JobList), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody)))]
async fn list_jobs(State(node): State<Shared>, Query(q): Query<ListQuery>) -> Result<Json<JobList>, ApiError> {
    let state =
        match q.state.as_deref() {
            None | Some("") => None,
            Some(s) => Some(s.parse::<JobState>().map_err(|_| {
                bad(format!("unknown state {s:?}; use queued, running, completed, failed or cancelled"))
            })?),
        };
    let jobs = node.db().jobs(state, q.limit.unwrap_or(100).min(10_000)).map_err(internal)?;
    Ok(Json(JobList { jobs: jobs.iter().map(JobView::from).collect() }))
}

/// Cancel a job.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", params(("id" = JobId, Path, description = "a job id")), responses((status = 200, body = JobDetail), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody), (status = 415, description = "not a json/yaml/car content type and no X-Shoal-Request header", body = ErrorBody)))]
async fn cancel_job(
    State(node): State<Shared>,
    Path(id): Path<String>,
    // Read (and ignored) so that a client's `{}` body is consumed and the
    // connection stays usable for its next request.
    _body: Bytes,
) -> Result<Json<JobDetail>, ApiError> {
    let jid = parse_id(&id)?;
    let job = requester::cancel(&node, &jid).map_err(internal)?.ok_or_else(|| not_found(&id))?;
    Ok(Json(job_json(&node, &job)))
}

/// The stdout and stderr of each execution (heads, as revealed; shown once
/// the job has ended).
#[utoipa::path(get, path = "/v1/jobs/{id}/logs", params(("id" = JobId, Path, description = "a job id")), responses((status = 200, body = Logs), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody)))]
async fn job_logs(State(node): State<Shared>, Path(id): Path<String>) -> Result<Json<Logs>, ApiError> {
    let jid = parse_id(&id)?;
    let job = node.db().job(&jid).map_err(internal)?.ok_or_else(|| not_found(&id))?;
    let execs = node.db().executions(&jid).map_err(internal)?;
    let logs: Vec<_> = execs
        .into_iter()
        .map(|e| e.sealed(job.state))
        .map(|e| ExecLog {
            execution: e.id,
            node: e.node,
            state: e.state,
            exit_code: e.exit_code,
            stdout: e.stdout,
            stderr: e.stderr,
            error: e.error,
        })
        .collect();
    Ok(Json(Logs { job: jid, executions: logs }))
}

#[derive(Deserialize)]
struct WaitQuery {
    timeout: Option<u64>,
}

/// Long poll: returns when the job ends or after `timeout` seconds.
#[utoipa::path(get, path = "/v1/jobs/{id}/wait", params(("id" = JobId, Path, description = "a job id"), ("timeout" = Option<u64>, Query, description = "seconds, at most 300", minimum = 0)), responses((status = 200, body = JobDetail), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody)))]
async fn wait_job(
    State(node): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<JobDetail>, ApiError> {
    let jid = parse_id(&id)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.timeout.unwrap_or(30)).min(MAX_WAIT);
    let mut changes = node.changed.subscribe();
    loop {
        // Every change anywhere wakes every waiter: look at the state
        // alone, and read the whole job only to answer.
        let state = node.db().job_state(&jid).map_err(internal)?.ok_or_else(|| not_found(&id))?;
        if state.is_terminal() {
            break;
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => break,
        }
    }
    let job = node.db().job(&jid).map_err(internal)?.ok_or_else(|| not_found(&id))?;
    Ok(Json(job_json(&node, &job)))
}

/// Follows a job as server-sent events: a `job` event (the job and its
/// executions, as `GET /v1/jobs/{id}` has them) at once and after each
/// change, the last one once the job has ended; then the stream closes.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", params(("id" = JobId, Path, description = "a job id")), responses((status = 200, description = "server-sent `job` events, each the JobDetail as JSON; closed once the job has ended", content_type = "text/event-stream", body = JobEvent), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody), (status = 503, description = "too many event streams", body = ErrorBody)))]
async fn job_events(
    State(node): State<Shared>,
    Path(id): Path<String>,
) -> Result<
    axum::response::sse::Sse<impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>>,
    ApiError,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let jid = parse_id(&id)?;
    node.db().job_state(&jid).map_err(internal)?.ok_or_else(|| not_found(&id))?;
    let permit = node.event_streams.clone().try_acquire_owned().map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node already serves {MAX_EVENT_STREAMS} event streams; retry later or use /wait"),
        )
    })?;
    struct Follow {
        node: Shared,
        jid: JobId,
        changes: tokio::sync::watch::Receiver<u64>,
        last: Option<String>,
        ended: bool,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let start = Follow { changes: node.changed.subscribe(), node, jid, last: None, ended: false, _permit: permit };
    let events = futures::stream::unfold(start, |mut f| async move {
        loop {
            if f.ended {
                return None;
            }
            let job = match f.node.db().job(&f.jid) {
                Ok(Some(job)) => job,
                _ => return None,
            };
            f.ended = job.state.is_terminal();
            let text = serde_json::to_string(&job_json(&f.node, &job)).unwrap_or_default();
            if f.last.as_deref() != Some(text.as_str()) {
                f.last = Some(text.clone());
                return Some((Ok(Event::default().event("job").data(text)), f));
            }
            if f.ended || f.changes.changed().await.is_err() {
                return None;
            }
            tokio::time::sleep(EVENT_INTERVAL).await;
            f.changes.mark_unchanged();
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The nodes this node knows, with their announcements and record.
#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = NodeList), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody)))]
async fn nodes(State(node): State<Shared>) -> Json<NodeList> {
    let views = requester::views(&node);
    let apis: std::collections::HashMap<String, Option<String>> = {
        let v = node.views.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().map(|(p, v)| (p.to_string(), v.announcement.api.clone())).collect()
    };
    let list: Vec<_> = views
        .iter()
        .map(|v| {
            let api = if v.id == node.peer.to_string() {
                node.api_url.get().cloned()
            } else {
                apis.get(&v.id).cloned().flatten()
            };
            NodeEntry { is_self: v.id == node.peer.to_string(), node: v.clone(), api }
        })
        .collect();
    if let Ok(s) = node.client.dht_stats().await {
        node.metrics.sync_dht(s);
    }
    Json(NodeList { nodes: list, ipfs: node.metrics.ipfs() })
}

/// Liveness and identity.
#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody)))]
async fn health(State(node): State<Shared>) -> Json<Health> {
    let peers = node.client.peers().await.map(|p| p.len()).unwrap_or(0);
    Json(Health {
        ok: true,
        peer: node.peer.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        connected_peers: peers as u64,
    })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody)))]
async fn metrics(State(node): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    let active = {
        let db = node.db();
        db.count_jobs(JobState::Queued).unwrap_or(0) + db.count_jobs(JobState::Running).unwrap_or(0)
    };
    node.metrics.active_jobs.set(active as i64);
    if let Ok(s) = node.client.dht_stats().await {
        node.metrics.sync_dht(s);
    }
    let mut out = String::new();
    encode(&mut out, &node.metrics.registry).map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// Import a CAR file (a module, a dataset) and pin its roots.
#[utoipa::path(post, path = "/v1/car", request_body(content((Binary = "application/vnd.ipld.car"), (Binary = "application/octet-stream")), description = "a CARv1; any client can send it as application/octet-stream with X-Shoal-Request: 1"), responses((status = 200, body = CarRoots), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 413, description = "body too large", body = ErrorBody), (status = 415, description = "not a json/yaml/car content type and no X-Shoal-Request header", body = ErrorBody)))]
async fn car_import(State(node): State<Shared>, body: Bytes) -> Result<Json<CarRoots>, ApiError> {
    let store = node.store.clone();
    let stats = tokio::task::spawn_blocking(move || {
        let stats = shoal_storage::car::import(&*store, std::io::Cursor::new(body), "the uploaded car")?;
        for root in &stats.roots {
            shoal_storage::pin::add(&*store, root, shoal_storage::PinMode::Recursive)?;
        }
        Ok::<_, shoal_storage::Error>(stats)
    })
    .await
    .map_err(internal)?
    .map_err(|e| bad(e.to_string()))?;
    Ok(Json(CarRoots { roots: stats.roots.iter().map(|c| c.to_string()).collect() }))
}

/// A DAG as a CAR file, fetched from the network first when not local.
#[utoipa::path(get, path = "/v1/car/{cid}", params(("cid" = String, Path, description = "a cid", pattern = "^[A-Za-z0-9]+$", min_length = 1, max_length = 256)), responses((status = 200, content_type = "application/vnd.ipld.car", body = Binary), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody), (status = 503, description = "too many car exports at once", body = ErrorBody)))]
async fn car_export(State(node): State<Shared>, Path(cid): Path<String>) -> Result<Response, ApiError> {
    let root: Cid = cid.parse().map_err(|e| bad(format!("malformed cid {cid:?}: {e}")))?;
    let permit = node.car_exports.clone().try_acquire_owned().map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node already streams {MAX_CAR_EXPORTS} car exports; retry later"),
        )
    })?;
    let providers = node.client.peers().await.unwrap_or_default();
    fetch::fetch_dag(&node, root, &providers).await.map_err(|e| ApiError(StatusCode::NOT_FOUND, crate::message(&e)))?;
    // Streamed from a blocking thread through a bounded channel: an
    // export holds at most CAR_CHUNKS chunks in memory, whatever its size,
    // and stops when the client goes away.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(CAR_CHUNKS);
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut w = ChannelWriter::new(tx);
        let done = shoal_storage::car::export(&*store, &root, &mut w).map(drop).and_then(|()| {
            std::io::Write::flush(&mut w).map_err(|e| shoal_storage::Error::io("cannot send", "the car stream", e))
        });
        if let Err(e) = done {
            tracing::debug!("car export of {root} ended early: {e}");
            w.fail(e.to_string());
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/vnd.ipld.car")
        .body(axum::body::Body::from_stream(body))
        .map_err(internal)
}

/// Car exports streamed at once; more are answered 503.
pub const MAX_CAR_EXPORTS: usize = 8;
/// Bytes of one chunk of a streamed CAR.
const CAR_CHUNK: usize = 256 << 10;
/// Chunks of one CAR in flight to its client (4 MiB).
pub(crate) const CAR_CHUNKS: usize = 16;

/// Sends what is written, in chunks, to an async body.
pub(crate) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    pub(crate) fn new(tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) -> ChannelWriter {
        ChannelWriter { tx, buf: Vec::with_capacity(CAR_CHUNK) }
    }

    /// Breaks the stream: the client sees it fail, not a short body that
    /// looks whole.
    pub(crate) fn fail(&self, reason: String) {
        let _ = self.tx.blocking_send(Err(std::io::Error::other(reason)));
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CAR_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CAR_CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

/// Whether this node holds a whole DAG (pinned recursively), so that a
/// client knows whether to upload it before submitting a job over it.
#[utoipa::path(get, path = "/v1/dags/{cid}", params(("cid" = String, Path, description = "a cid", pattern = "^[A-Za-z0-9]+$", min_length = 1, max_length = 256)), responses((status = 200, body = DagStatus), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody)))]
async fn dag_status(State(node): State<Shared>, Path(cid): Path<String>) -> Result<Json<DagStatus>, ApiError> {
    let root: Cid = cid.parse().map_err(|e| bad(format!("malformed cid {cid:?}: {e}")))?;
    let store = node.store.clone();
    let held = tokio::task::spawn_blocking(move || fetch::held(&*store, &root)).await.map_err(internal)?;
    let mut held_by: Vec<String> =
        requester::holds_filters(&node).into_iter().filter(|(_, h)| h.contains(&root)).map(|(id, _)| id).collect();
    held_by.sort();
    Ok(Json(DagStatus { cid, held, held_by }))
}

/// Most entries `GET /v1/ls` lists (then `truncated`).
pub const MAX_LS_ENTRIES: usize = 10_000;
/// Largest file `GET /v1/cat` returns; larger ones are read with
/// `GET /v1/car` or a node of one's own.
pub const MAX_CAT: u64 = 256 << 20;

#[derive(Deserialize)]
struct FileQuery {
    name: Option<String>,
}

/// Import one file from the request body (raw bytes, as `shoal add` would)
/// and pin it: what a browser can upload without building a CAR.
#[utoipa::path(post, path = "/v1/files", params(("name" = Option<String>, Query, description = "the file's name (1-255 bytes, no /)")), request_body(content = Binary, content_type = "application/octet-stream", description = "the file's bytes; send X-Shoal-Request: 1"), responses((status = 200, body = FileAdded), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 413, description = "body too large", body = ErrorBody), (status = 415, description = "not a json/yaml/car content type and no X-Shoal-Request header", body = ErrorBody)))]
async fn file_import(
    State(node): State<Shared>,
    Query(q): Query<FileQuery>,
    body: Bytes,
) -> Result<Json<FileAdded>, ApiError> {
    let name = q.name.unwrap_or_else(|| "file".into());
    if name.is_empty() || name.len() > 255 || name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(bad(format!("invalid file name {name:?}: 1 to 255 bytes, without '/' or NUL")));
    }
    let store = node.store.clone();
    let size = body.len();
    let cid = tokio::task::spawn_blocking(move || {
        let added = shoal_storage::importer::Importer::new(&*store, shoal_storage::importer::Options::default())
            .add_bytes(&body)?;
        store.flush()?;
        shoal_storage::pin::add(&*store, &added.root, shoal_storage::PinMode::Recursive)?;
        Ok::<_, shoal_storage::Error>(added.root)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(FileAdded { cid: cid.to_string(), name, size: size as u64 }))
}

/// `cid[/path]` made local (fetched from peers when missing) and resolved.
async fn local_path(node: &Shared, cid: &str, path: &str) -> Result<(Cid, Vec<String>, Cid), ApiError> {
    let root: Cid = cid.parse().map_err(|e| bad(format!("malformed cid {cid:?}: {e}")))?;
    let segments: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if segments.iter().any(|s| s == "." || s == "..") {
        return Err(bad(format!("path {path:?} must not hold '.' or '..' segments")));
    }
    let providers = node.client.peers().await.unwrap_or_default();
    fetch::fetch_dag(node, root, &providers).await.map_err(|e| ApiError(StatusCode::NOT_FOUND, crate::message(&e)))?;
    let store = node.store.clone();
    let segs = segments.clone();
    let at = tokio::task::spawn_blocking(move || shoal_storage::exporter::resolve(&*store, &root, &segs))
        .await
        .map_err(internal)?
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, format!("{cid}/{path}: {e}")))?;
    Ok((root, segments, at))
}

fn kind_json(kind: &shoal_storage::exporter::Kind) -> (EntryKind, Option<u64>) {
    use shoal_storage::exporter::Kind;
    match kind {
        Kind::File { size } => (EntryKind::File, Some(*size)),
        Kind::Directory { .. } | Kind::Sharded => (EntryKind::Directory, None),
        Kind::Symlink { .. } => (EntryKind::Symlink, None),
        Kind::Other { .. } => (EntryKind::Other, None),
    }
}

/// What is at `cid/path`: a directory's entries (each with its kind and
/// size), or a file's size.
#[utoipa::path(get, path = "/v1/ls/{cid}", params(("cid" = String, Path, description = "a cid", pattern = "^[A-Za-z0-9]+$", min_length = 1, max_length = 256)), responses((status = 200, body = Listing), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody)))]
async fn ls_root(State(node): State<Shared>, Path(cid): Path<String>) -> Result<Json<Listing>, ApiError> {
    ls(node, cid, String::new()).await
}

/// As `GET /v1/ls/{cid}`, at a path inside it.
#[utoipa::path(get, path = "/v1/ls/{cid}/{path}", params(("cid" = String, Path, description = "a cid", pattern = "^[A-Za-z0-9]+$", min_length = 1, max_length = 256), ("path" = String, Path, description = "a path inside the cid, a/b")), responses((status = 200, body = Listing), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody)))]
async fn ls_path(
    State(node): State<Shared>,
    Path((cid, path)): Path<(String, String)>,
) -> Result<Json<Listing>, ApiError> {
    ls(node, cid, path).await
}

async fn ls(node: Shared, cid: String, path: String) -> Result<Json<Listing>, ApiError> {
    let (root, segments, at) = local_path(&node, &cid, &path).await?;
    let store = node.store.clone();
    let listed = tokio::task::spawn_blocking(move || -> Result<Listing, shoal_storage::Error> {
        use shoal_storage::exporter;
        let (kind, entries) = exporter::stat_and_list(&*store, &at)?;
        let (k, size) = kind_json(&kind);
        let truncated = entries.len() > MAX_LS_ENTRIES;
        let mut list = Vec::new();
        for e in entries.into_iter().take(MAX_LS_ENTRIES) {
            let (kind, size) = match exporter::stat(&*store, &e.cid) {
                Ok(kind) => kind_json(&kind),
                Err(_) => (EntryKind::Missing, None),
            };
            list.push(ListEntry { name: e.name, cid: e.cid.to_string(), kind, size });
        }
        Ok(Listing {
            root: root.to_string(),
            path: segments.join("/"),
            cid: at.to_string(),
            kind: k,
            size,
            entries: list,
            truncated,
        })
    })
    .await
    .map_err(internal)?
    .map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(Json(listed))
}

#[derive(Deserialize)]
struct CatQuery {
    download: Option<u8>,
}

/// A file's bytes.
#[utoipa::path(get, path = "/v1/cat/{cid}", params(("cid" = String, Path, description = "a cid", pattern = "^[A-Za-z0-9]+$", min_length = 1, max_length = 256), ("download" = Option<u8>, Query, description = "1: as an attachment", minimum = 0, maximum = 1)), responses((status = 200, description = "the file, typed by its name (text/plain for text without a known extension)", content_type = "*/*", body = Binary), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody), (status = 413, description = "body too large", body = ErrorBody)))]
async fn cat_root(
    State(node): State<Shared>,
    Path(cid): Path<String>,
    Query(q): Query<CatQuery>,
) -> Result<Response, ApiError> {
    cat(node, cid, String::new(), q).await
}

/// As `GET /v1/cat/{cid}`, at a path inside it.
#[utoipa::path(get, path = "/v1/cat/{cid}/{path}", params(("cid" = String, Path, description = "a cid", pattern = "^[A-Za-z0-9]+$", min_length = 1, max_length = 256), ("path" = String, Path, description = "a path inside the cid, a/b"), ("download" = Option<u8>, Query, minimum = 0, maximum = 1)), responses((status = 200, description = "the file, typed by its name (text/plain for text without a known extension)", content_type = "*/*", body = Binary), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody), (status = 413, description = "body too large", body = ErrorBody)))]
async fn cat_path(
    State(node): State<Shared>,
    Path((cid, path)): Path<(String, String)>,
    Query(q): Query<CatQuery>,
) -> Result<Response, ApiError> {
    cat(node, cid, path, q).await
}

async fn cat(node: Shared, cid: String, path: String, q: CatQuery) -> Result<Response, ApiError> {
    let (root, segments, at) = local_path(&node, &cid, &path).await?;
    let store = node.store.clone();
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        use shoal_storage::exporter::{self, Kind};
        match exporter::stat(&*store, &at).map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))? {
            Kind::File { size } if size > MAX_CAT => Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{at} is {size} bytes, more than {MAX_CAT}: fetch it with GET /v1/car/{at}"),
            )),
            Kind::File { size } => {
                let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                exporter::cat(&*store, &at, &mut out).map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
                Ok(out)
            }
            _ => Err(bad(format!("{at} is not a file: list it with GET /v1/ls/{root}"))),
        }
    })
    .await
    .map_err(internal)??;
    let name = segments.last().cloned().unwrap_or_else(|| root.to_string());
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, content_type(&name, &bytes))
        // Job outputs are strangers' bytes served from the api's origin:
        // never run them (a sandboxed document has no origin and no
        // scripts) and never let a browser guess another type.
        .header(header::CONTENT_SECURITY_POLICY, "sandbox")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if q.download == Some(1) {
        let safe: String = name.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\').collect();
        builder = builder.header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{safe}\""));
    }
    builder.body(axum::body::Body::from(bytes)).map_err(internal)
}

/// The type a file is served as: guessed from its name, text for UTF-8
/// without a known extension (a result's `stdout`, `exitCode`), HTML and
/// SVG as plain text (they could carry scripts).
fn content_type(name: &str, bytes: &[u8]) -> String {
    let guess = mime_guess::from_path(name).first();
    match guess {
        Some(m) if m.type_() == mime_guess::mime::TEXT || m.subtype() == "json" => {
            if m.subtype() == "html" || m.subtype() == "xml" {
                "text/plain; charset=utf-8".into()
            } else {
                format!("{}/{}; charset=utf-8", m.type_(), m.subtype())
            }
        }
        Some(m) if m.subtype() == "svg" || m.subtype().as_str().contains("xml") => "text/plain; charset=utf-8".into(),
        Some(m) => m.essence_str().to_owned(),
        None if std::str::from_utf8(&bytes[..bytes.len().min(8192)]).is_ok() => "text/plain; charset=utf-8".into(),
        None => "application/octet-stream".into(),
    }
}

/// The dashboard's files, embedded; `SHOAL_UI_DIR` serves them from a
/// directory instead (read on each request), to develop the dashboard
/// without rebuilding.
const UI_FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("ui/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("ui/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("ui/app.css")),
];

fn ui_response(name: &str) -> Response {
    let Some((file, ctype, embedded)) = UI_FILES.iter().find(|(f, _, _)| *f == name) else {
        return ApiError(StatusCode::NOT_FOUND, format!("no dashboard file {name:?}")).into_response();
    };
    let body = match std::env::var_os("SHOAL_UI_DIR") {
        Some(dir) => match std::fs::read_to_string(std::path::Path::new(&dir).join(file)) {
            Ok(text) => text,
            Err(e) => return internal(format!("cannot read {file} from SHOAL_UI_DIR: {e}")).into_response(),
        },
        None => (*embedded).to_owned(),
    };
    (
        [
            (header::CONTENT_TYPE, *ctype),
            // Only its own files: no inline script, nothing from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn ui_index() -> Response {
    ui_response("index.html")
}

async fn ui_file(Path(file): Path<String>) -> Response {
    ui_response(&file)
}
