//! The node's HTTP API (axum): jobs, nodes, data in and out as CAR files,
//! health, Prometheus metrics and the OpenAPI document at `/openapi.json`.
//!
//! On a loopback bind the API is open to local users; on any other bind
//! every request must carry `Authorization: Bearer <token>` with the token
//! from `<home>/api-token`.

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
use serde_json::json;
use shoal_scheduler::model::{Job, JobId, JobState};
use shoal_scheduler::spec::Spec;
use shoal_storage::Cid;
use utoipa::OpenApi;

use super::{fetch, guard, requester, Node};

/// Largest request body: a job spec, or a CAR file of a module and its
/// inputs uploaded by `shoal submit`.
pub const MAX_BODY: usize = 256 << 20;
/// Largest CAR the API returns for `GET /v1/car/{cid}`.
pub const MAX_CAR: usize = 1 << 30;
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
        };
        registry.register("jobs_submitted", "Jobs accepted on this node's API", m.jobs_submitted.clone());
        registry.register("jobs_completed", "Jobs completed with an agreed result", m.jobs_completed.clone());
        registry.register("jobs_failed", "Jobs that failed", m.jobs_failed.clone());
        registry.register("executions_run", "Executions this node ran", m.executions_run.clone());
        registry.register("executions_lost", "Executions marked lost", m.executions_lost.clone());
        registry.register("active_jobs", "Queued or running jobs", m.active_jobs.clone());
        registry.register("job_seconds", "Submit-to-result latency", m.job_seconds.clone());
        Metrics { registry, ..m }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

type Shared = Arc<Node>;

/// An error as the API returns it: a status and `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn not_found(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no job {id} on this node; `shoal job list` shows the jobs it knows"))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Shoal node API", description = "Submit and follow Wasm jobs on a Shoal peer network."),
    paths(
        submit, get_job, list_jobs, cancel_job, job_logs, wait_job, job_events, nodes, health, metrics, car_import,
        car_export, dag_status
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
        .route("/v1/nodes", get(nodes))
        .route("/v1/health", get(health))
        .route("/v1/car", post(car_import))
        .route("/v1/car/{cid}", get(car_export))
        .route("/v1/dags/{cid}", get(dag_status))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
        .layer(middleware::from_fn_with_state(Arc::new(policy), guard::check))
}

fn job_json(node: &Node, job: &Job) -> serde_json::Value {
    let execs: Vec<_> =
        node.db().executions(&job.id).unwrap_or_default().into_iter().map(|e| e.sealed(job.state)).collect();
    json!({ "job": job_value(job), "executions": execs })
}

/// A job as the API shows it: its record and, once completed, how its
/// guest did (`outcome`: succeeded or failed; null while unknown).
pub fn job_value(job: &Job) -> serde_json::Value {
    let mut v = serde_json::to_value(job).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("outcome".into(), json!(job.outcome()));
    }
    v
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
#[utoipa::path(post, path = "/v1/jobs", request_body(content = String, description = "job spec, YAML or JSON (docs/job-spec.md)"),
    responses((status = 201, description = "accepted: {\"id\": ..., \"warnings\": [...]}"), (status = 400, description = "bad spec"),
        (status = 415, description = "not a JSON or YAML content type"), (status = 422, description = "an input is on no node"),
        (status = 503, description = "too many unfinished jobs")))]
async fn submit(State(node): State<Shared>, body: String) -> Result<impl IntoResponse, ApiError> {
    let spec = Spec::from_yaml_or_json(&body).map_err(|e| bad(format!("bad job spec: {e}")))?;
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
    locate_data(&node, &spec).await?;
    let now = node.now();
    let job = Job::new(JobId::from_parts(now, rand::random()), spec, now);
    let mut warnings = Vec::new();
    let capable = shoal_scheduler::placement::capable_nodes(&job, &requester::views(&node), now, &node.placement);
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
    Ok((StatusCode::CREATED, Json(json!({ "id": job.id, "warnings": warnings }))))
}

/// How long a submission looks for data this node lacks: past it, the job
/// is accepted and its executions go on fetching (a large input that is
/// found but slow to move is not refused).
pub const LOCATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes sure every CID `spec` reads is on this node or reachable from a
/// peer now; refuses the job (422) naming the first that is nowhere. Once
/// the inputs are here, checks that they can be mounted as the spec says
/// (a file below a directory, not inside a mounted directory), which no
/// node could do otherwise.
async fn locate_data(node: &Shared, spec: &Spec) -> Result<(), ApiError> {
    let t = &spec.task;
    let mut wanted = vec![("task.module".to_owned(), t.module)];
    wanted.extend(t.inputs.iter().enumerate().map(|(i, input)| (format!("task.inputs[{i}].cid"), input.cid)));
    wanted.extend(t.models.iter().map(|(name, cid)| (format!("task.models.{name}"), *cid)));
    for (field, cid) in wanted {
        let store = node.store.clone();
        if tokio::task::spawn_blocking(move || fetch::held(&*store, &cid)).await.map_err(internal)? {
            continue;
        }
        let peers = node.client.peers().await.unwrap_or_default();
        let found =
            tokio::time::timeout(LOCATE_TIMEOUT, fetch::fetch_dag(&node.client, &node.store, cid, &peers)).await;
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
                        crate::output::message(&e)
                    ),
                ))
            }
        }
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
#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = String, Path)), responses((status = 200), (status = 404)))]
async fn get_job(State(node): State<Shared>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
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
#[utoipa::path(get, path = "/v1/jobs", params(("state" = Option<String>, Query), ("limit" = Option<usize>, Query)), responses((status = 200)))]
async fn list_jobs(
    State(node): State<Shared>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let state =
        match q.state.as_deref() {
            None | Some("") => None,
            Some(s) => Some(s.parse::<JobState>().map_err(|_| {
                bad(format!("unknown state {s:?}; use queued, running, completed, failed or cancelled"))
            })?),
        };
    let jobs = node.db().jobs(state, q.limit.unwrap_or(100).min(10_000)).map_err(internal)?;
    Ok(Json(json!({ "jobs": jobs.iter().map(job_value).collect::<Vec<_>>() })))
}

/// Cancel a job.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", params(("id" = String, Path)), responses((status = 200), (status = 404)))]
async fn cancel_job(State(node): State<Shared>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let jid = parse_id(&id)?;
    let job = requester::cancel(&node, &jid).map_err(internal)?.ok_or_else(|| not_found(&id))?;
    Ok(Json(job_json(&node, &job)))
}

/// The stdout and stderr of each execution (heads, as revealed; shown once
/// the job has ended).
#[utoipa::path(get, path = "/v1/jobs/{id}/logs", params(("id" = String, Path)), responses((status = 200), (status = 404)))]
async fn job_logs(State(node): State<Shared>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let jid = parse_id(&id)?;
    let job = node.db().job(&jid).map_err(internal)?.ok_or_else(|| not_found(&id))?;
    let execs = node.db().executions(&jid).map_err(internal)?;
    let logs: Vec<_> = execs
        .into_iter()
        .map(|e| e.sealed(job.state))
        .map(|e| {
            json!({ "execution": e.id, "node": e.node, "state": e.state, "exit_code": e.exit_code,
                    "stdout": e.stdout, "stderr": e.stderr, "error": e.error })
        })
        .collect();
    Ok(Json(json!({ "job": jid, "executions": logs })))
}

#[derive(Deserialize)]
struct WaitQuery {
    timeout: Option<u64>,
}

/// Long poll: returns when the job ends or after `timeout` seconds.
#[utoipa::path(get, path = "/v1/jobs/{id}/wait", params(("id" = String, Path), ("timeout" = Option<u64>, Query)), responses((status = 200), (status = 404)))]
async fn wait_job(
    State(node): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
#[utoipa::path(get, path = "/v1/jobs/{id}/events", params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream of `job` events"), (status = 404), (status = 503)))]
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
            let text = job_json(&f.node, &job).to_string();
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
#[utoipa::path(get, path = "/v1/nodes", responses((status = 200)))]
async fn nodes(State(node): State<Shared>) -> Json<serde_json::Value> {
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
            json!({ "node": v, "api": api, "self": v.id == node.peer.to_string() })
        })
        .collect();
    Json(json!({ "nodes": list }))
}

/// Liveness and identity.
#[utoipa::path(get, path = "/v1/health", responses((status = 200)))]
async fn health(State(node): State<Shared>) -> Json<serde_json::Value> {
    let peers = node.client.peers().await.map(|p| p.len()).unwrap_or(0);
    Json(
        json!({ "ok": true, "peer": node.peer.to_string(), "version": env!("CARGO_PKG_VERSION"), "connected_peers": peers }),
    )
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain")))]
async fn metrics(State(node): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    let active = {
        let db = node.db();
        db.count_jobs(JobState::Queued).unwrap_or(0) + db.count_jobs(JobState::Running).unwrap_or(0)
    };
    node.metrics.active_jobs.set(active as i64);
    let mut out = String::new();
    encode(&mut out, &node.metrics.registry).map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// Import a CAR file (a module, a dataset) and pin its roots.
#[utoipa::path(post, path = "/v1/car", request_body(content = Vec<u8>, content_type = "application/vnd.ipld.car"), responses((status = 200, description = "{\"roots\": [...]}"), (status = 400)))]
async fn car_import(State(node): State<Shared>, body: Bytes) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(json!({ "roots": stats.roots.iter().map(|c| c.to_string()).collect::<Vec<_>>() })))
}

/// A DAG as a CAR file, fetched from the network first when not local.
#[utoipa::path(get, path = "/v1/car/{cid}", params(("cid" = String, Path)), responses((status = 200, content_type = "application/vnd.ipld.car"), (status = 404)))]
async fn car_export(State(node): State<Shared>, Path(cid): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let root: Cid = cid.parse().map_err(|e| bad(format!("malformed cid {cid:?}: {e}")))?;
    let providers = node.client.peers().await.unwrap_or_default();
    fetch::fetch_dag(&node.client, &node.store, root, &providers)
        .await
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, crate::output::message(&e)))?;
    let store = node.store.clone();
    let car = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        shoal_storage::car::export(&*store, &root, &mut LimitedWriter(&mut out, MAX_CAR))?;
        Ok::<_, shoal_storage::Error>(out)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "application/vnd.ipld.car")], car))
}

/// Whether this node holds a whole DAG (pinned recursively), so that a
/// client knows whether to upload it before submitting a job over it.
#[utoipa::path(get, path = "/v1/dags/{cid}", params(("cid" = String, Path)),
    responses((status = 200, description = "{\"cid\": ..., \"held\": bool}"), (status = 400)))]
async fn dag_status(State(node): State<Shared>, Path(cid): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let root: Cid = cid.parse().map_err(|e| bad(format!("malformed cid {cid:?}: {e}")))?;
    let store = node.store.clone();
    let held = tokio::task::spawn_blocking(move || fetch::held(&*store, &root)).await.map_err(internal)?;
    Ok(Json(json!({ "cid": cid, "held": held })))
}

struct LimitedWriter<'a>(&'a mut Vec<u8>, usize);

impl std::io::Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > self.1 {
            return Err(std::io::Error::other(format!(
                "the dag is larger than {} bytes; fetch it with a node",
                self.1
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
