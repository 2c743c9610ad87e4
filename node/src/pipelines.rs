//! Pipelines on a requester: the API that takes them, and the driver that
//! moves them on.
//!
//! A submission (`POST /v1/pipelines`) is parsed and validated whole
//! ([`shoal_scheduler::pipeline::Pipeline::parse`]: cycles, missing steps
//! and oversized graphs are refused before anything runs), the data its
//! steps name by CID is located as a job's would be, and the run is stored
//! ([`shoal_scheduler::flow::PipelineRun`]). The driver then wakes on
//! every job change (and once a second): for each running pipeline it
//! reads how its submitted steps' jobs ended, asks the pure
//! [`shoal_scheduler::flow::advance`] what follows, and submits the steps
//! it names as ordinary jobs, each with its own redundancy and quorum,
//! through the same path as `POST /v1/jobs` (the result cache included).
//! A step refused for a while (the submitter's quota, a full node) is
//! tried again at the next pass. When every step has completed, the
//! pipeline's receipt, linking the steps' receipts and the pipeline as
//! submitted, is signed, stored and pinned.

use shoal_scheduler::receipt::Signed as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use shoal_scheduler::flow::{self, JobEnd, PipelineRun, StepState};
use shoal_scheduler::model::{Job, JobState, Outcome, PipelineId};
use shoal_scheduler::pipeline::{Pipeline, PipelineReceipt, StepReceipt};
use shoal_storage::Cid;
use utoipa::ToSchema;

use crate::api::{self, ApiError, Shared};
use crate::views::ErrorBody;
use crate::Node;

/// Pipelines a requester runs at once; more are refused (503).
pub const MAX_ACTIVE_PIPELINES: usize = 1000;
/// The driver's pass when no job changes (a step held back by a quota is
/// tried again at least this often).
pub const PASS_EVERY: Duration = Duration::from_secs(1);

/// Runs the driver until the node stops.
pub async fn run(node: Arc<Node>) {
    let mut changes = node.changed.subscribe();
    loop {
        if let Err(e) = pass(&node).await {
            // Looked at again at the next pass.
            node.pipelines_active.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::warn!("cannot move the pipelines on: {}", crate::message(&e));
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(PASS_EVERY) => {}
        }
    }
}

/// How a step's job ended, for [`flow::advance`].
fn job_end(job: &Job) -> JobEnd {
    let why = match (job.state, job.outcome()) {
        (JobState::Completed, Some(Outcome::Succeeded)) => String::new(),
        (JobState::Completed, _) => match (&job.failure, job.exit_code) {
            (Some(f), _) => format!("job {}: its guest failed: {f}", job.id),
            (None, Some(c)) => format!("job {}: its guest exited with code {c}", job.id),
            (None, None) => format!("job {}: its result records no exit code", job.id),
        },
        (JobState::Cancelled, _) => format!("job {} was cancelled", job.id),
        _ => format!("job {}: {}", job.id, job.error.as_deref().unwrap_or("failed")),
    };
    JobEnd {
        state: job.state,
        result: job.result,
        succeeded: job.state == JobState::Completed && job.outcome() == Some(Outcome::Succeeded),
        why,
    }
}

/// One look at every running pipeline.
async fn pass(node: &Arc<Node>) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    // Cleared before the look: a submission after it sets it again.
    if !node.pipelines_active.swap(false, SeqCst) {
        return Ok(());
    }
    let runs = node.db().active_pipelines()?;
    if !runs.is_empty() {
        node.pipelines_active.store(true, SeqCst);
    }
    for mut run in runs {
        let mut ended = BTreeMap::new();
        for s in run.steps.values().filter(|s| s.state == StepState::Submitted) {
            let Some(id) = &s.job else { continue };
            match node.db().job(id)? {
                Some(j) if j.state.is_terminal() => {
                    ended.insert(id.clone(), job_end(&j));
                }
                Some(_) => {}
                None => {
                    let why = format!("job {id} is gone from this node's records");
                    ended.insert(id.clone(), JobEnd { state: JobState::Failed, result: None, succeeded: false, why });
                }
            }
        }
        let now = node.now();
        let (ready, mut changed) = flow::advance(&mut run, &ended, now);
        let mut submitted_now = Vec::new();
        let results: BTreeMap<String, Cid> =
            run.steps.iter().filter_map(|(n, s)| s.result.map(|r| (n.clone(), r))).collect();
        // The steps' jobs carry the pipeline's claim: it signs the
        // pipeline, which their specs were resolved from.
        let submitter = run
            .submitter
            .clone()
            .map(|s| shoal_scheduler::model::Submitter { pipeline: Some(run.document.to_string()), ..s });
        for name in ready {
            let Some(step) = run.pipeline.steps.get(&name) else { continue };
            let submitted = match step.resolve(&results) {
                Ok(spec) => {
                    let cid = shoal_scheduler::receipt::job_cid(&spec);
                    api::enqueue(node, spec, cid, run.cache, submitter.clone()).await
                }
                Err(e) => Err(ApiError(StatusCode::BAD_REQUEST, e.to_string())),
            };
            let Some(s) = run.steps.get_mut(&name) else { continue };
            match submitted {
                Ok(sub) => {
                    tracing::debug!(pipeline = %run.id, step = %name, job = %sub.id, "step submitted");
                    s.state = StepState::Submitted;
                    submitted_now.push(sub.id.clone());
                    s.job = Some(sub.id);
                    changed = true;
                }
                // For a while (a quota, a full node): tried again at the
                // next pass, up to the step's queue timeout.
                Err(ApiError(StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE, why)) => {
                    let since = *s.ready_ms.get_or_insert(now);
                    changed |= since == now;
                    let queue = u64::try_from(step.spec.timeouts.queue.as_millis()).unwrap_or(u64::MAX);
                    if now.saturating_sub(since) > queue {
                        s.state = StepState::Failed;
                        s.error = Some(format!(
                            "its job was refused for longer than its timeouts.queue ({} s): {why}",
                            step.spec.timeouts.queue.as_secs()
                        ));
                        changed = true;
                    } else {
                        tracing::debug!(pipeline = %run.id, step = %name, "step waits: {why}");
                    }
                }
                Err(ApiError(_, why)) => {
                    s.state = StepState::Failed;
                    s.error = Some(format!("its job was refused: {why}"));
                    changed = true;
                }
            }
        }
        if run.state == JobState::Completed && run.receipt.is_none() {
            let (n, r) = (node.clone(), run.clone());
            match tokio::task::spawn_blocking(move || put_receipt(&n, &r)).await? {
                Ok(cid) => run.receipt = Some(cid),
                Err(e) => tracing::warn!("pipeline {} completes without a receipt: {}", run.id, crate::message(&e)),
            }
        }
        if changed {
            if !node.db().update_pipeline(&run)? {
                // Cancelled while this pass ran: what it submitted must
                // not run on.
                for job in &submitted_now {
                    crate::requester::cancel(node, job)?;
                }
            }
            node.notify_changed();
        }
    }
    Ok(())
}

/// Signs, stores and pins a completed pipeline's receipt (and the
/// pipeline as submitted, which it names); returns its CID.
fn put_receipt(node: &Node, run: &PipelineRun) -> anyhow::Result<Cid> {
    use anyhow::Context as _;
    let mut steps = Vec::new();
    for (name, s) in &run.steps {
        let job_id = s.job.as_ref().with_context(|| format!("step {name} has no job"))?;
        let job = node.db().job(job_id)?.with_context(|| format!("step {name}: job {job_id} is gone"))?;
        let receipt = job.receipt.with_context(|| format!("step {name}: job {job_id} has no receipt"))?;
        let result = job.result.with_context(|| format!("step {name}: job {job_id} has no result"))?;
        steps.push(StepReceipt {
            name: name.clone(),
            job_cid: shoal_scheduler::receipt::job_cid(&job.spec).to_string(),
            receipt: receipt.to_string(),
            result: result.to_string(),
            from: run.pipeline.steps.get(name).map(|s| s.from.clone()).unwrap_or_default(),
        });
    }
    let unsigned = PipelineReceipt {
        kind: shoal_scheduler::pipeline::RECEIPT_KIND.into(),
        version: shoal_scheduler::pipeline::RECEIPT_VERSION,
        pipeline: run.id.to_string(),
        document: run.document.to_string(),
        submitter: run.submitter.clone(),
        steps,
        requester: String::new(),
        requester_key: String::new(),
        created_ms: run.created_ms,
        completed_ms: run.updated_ms,
        signature: String::new(),
    };
    let (_, bytes) = unsigned.sign(&node.key)?;
    let raw = |b: Vec<u8>| shoal_storage::Block::new(shoal_storage::CidVersion::V1, shoal_storage::block::RAW, b);
    let (receipt, document) = (raw(bytes), raw(run.pipeline.to_json().into_bytes()));
    anyhow::ensure!(*document.cid() == run.document, "the stored pipeline no longer hashes to {}", run.document);
    node.store.put_many(&[document.clone(), receipt.clone()]).context("cannot store the pipeline receipt")?;
    for b in [&document, &receipt] {
        node.store.pin_add(b.cid(), shoal_storage::PinMode::Recursive).context("cannot pin the pipeline receipt")?;
    }
    Ok(*receipt.cid())
}

/// The answer to a pipeline submission.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineSubmitted {
    #[schema(value_type = String)]
    pub id: PipelineId,
    /// The pipeline's CID, as its submitter signs it.
    pub document: String,
    /// Its steps, in an order they can run in.
    pub steps: Vec<String>,
}

#[derive(Deserialize)]
pub(crate) struct SubmitQuery {
    cache: Option<bool>,
}

fn parse_id(id: &str) -> Result<PipelineId, ApiError> {
    id.parse().map_err(|_| api::bad(format!("malformed pipeline id {id:?}; pipeline ids look like p-0190f…")))
}

fn not_found(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no pipeline {id} on this node"))
}

/// Submit a pipeline: steps of job specs, where an input may read another
/// step's result (`from`).
///
/// Everything is checked before anything runs: the pipeline's shape
/// (cycles, missing steps, at most 64 steps), each step's spec, and the
/// data steps name by CID (422 when it is nowhere). Signed like a job,
/// over the pipeline's CID.
#[utoipa::path(post, path = "/v1/pipelines", operation_id = "submit_pipeline", params(("cache" = Option<bool>, Query, description = "steps may complete from earlier runs' receipts (default true)"), ("x-shoal-submitter" = Option<String>, Header, description = "the submitter's key (peer id)"), ("x-shoal-submitted-at" = Option<u64>, Header, description = "when it signed, ms since the Unix epoch"), ("x-shoal-signature" = Option<String>, Header, description = "hex ed25519 signature of \"shoal-submit/1\\n<pipeline cid>\\n<submitted-at>\"")), request_body(content = String, description = "a pipeline (docs/job-spec.md#pipelines), as YAML or JSON"), responses((status = 201, body = PipelineSubmitted), (status = 400, description = "malformed pipeline: a cycle, a missing step, a bad spec", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused, or a bad submitter signature", body = ErrorBody), (status = 413, description = "body too large (4 MiB at most)", body = ErrorBody), (status = 415, description = "not a json/yaml content type and no X-Shoal-Request header", body = ErrorBody), (status = 422, description = "data found nowhere", body = ErrorBody), (status = 503, description = "too many running pipelines", body = ErrorBody)))]
pub(crate) async fn submit(
    State(node): State<Shared>,
    Query(q): Query<SubmitQuery>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let pipeline = Pipeline::parse(&body).map_err(|e| api::bad(format!("bad pipeline: {e}")))?;
    let document = pipeline.cid();
    let submitter = api::submitter_of(&node, &headers, &document)?;
    let running = node.db().active_pipelines().map_err(api::internal)?.len();
    if running >= MAX_ACTIVE_PIPELINES {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node already runs {running} pipelines; retry later"),
        ));
    }
    // The data named by CID, step by step (inputs read from other steps
    // do not exist yet).
    for (name, step) in &pipeline.steps {
        let mut spec = step.spec.clone();
        let mut from: Vec<usize> = step.from.iter().map(|f| f.input).collect();
        from.sort_unstable_by(|a, b| b.cmp(a));
        for i in from {
            if i < spec.task.inputs.len() {
                spec.task.inputs.remove(i);
            }
        }
        api::locate_data(&node, &spec).await.map_err(|ApiError(s, m)| ApiError(s, format!("step {name:?}: {m}")))?;
    }
    let now = node.now();
    let run = PipelineRun::new(
        PipelineId::from_parts(now, rand::random()),
        pipeline,
        now,
        submitter,
        q.cache.unwrap_or(true),
    );
    node.db().insert_pipeline(&run).map_err(api::internal)?;
    node.pipelines_active.store(true, std::sync::atomic::Ordering::SeqCst);
    node.notify_changed();
    let steps = run.pipeline.order().into_iter().map(str::to_owned).collect();
    Ok((StatusCode::CREATED, Json(PipelineSubmitted { id: run.id, document: document.to_string(), steps })))
}

/// A pipeline and its steps.
#[utoipa::path(get, path = "/v1/pipelines/{id}", operation_id = "get_pipeline", params(("id" = String, Path, description = "a pipeline id")), responses((status = 200, body = PipelineRun), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody)))]
pub(crate) async fn get(State(node): State<Shared>, Path(id): Path<String>) -> Result<Json<PipelineRun>, ApiError> {
    let pid = parse_id(&id)?;
    node.db().pipeline(&pid).map_err(api::internal)?.map(Json).ok_or_else(|| not_found(&id))
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
}

/// Pipelines, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineList {
    pub pipelines: Vec<PipelineRun>,
}

/// Pipelines, newest first (`limit`, default 50, at most 1000).
#[utoipa::path(get, path = "/v1/pipelines", operation_id = "list_pipelines", params(("limit" = Option<usize>, Query, description = "at most 1000")), responses((status = 200, body = PipelineList), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody)))]
pub(crate) async fn list(
    State(node): State<Shared>,
    Query(q): Query<ListQuery>,
) -> Result<Json<PipelineList>, ApiError> {
    let pipelines = node.db().pipelines(q.limit.unwrap_or(50)).map_err(api::internal)?;
    Ok(Json(PipelineList { pipelines }))
}

#[derive(Deserialize)]
pub(crate) struct WaitQuery {
    timeout: Option<u64>,
}

/// Long poll: returns when the pipeline ends or after `timeout` seconds.
#[utoipa::path(get, path = "/v1/pipelines/{id}/wait", operation_id = "wait_pipeline", params(("id" = String, Path, description = "a pipeline id"), ("timeout" = Option<u64>, Query, description = "seconds, at most 300")), responses((status = 200, body = PipelineRun), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody)))]
pub(crate) async fn wait(
    State(node): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<PipelineRun>, ApiError> {
    let pid = parse_id(&id)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.timeout.unwrap_or(30)).min(api::MAX_WAIT);
    let mut changes = node.changed.subscribe();
    loop {
        let run = node.db().pipeline(&pid).map_err(api::internal)?.ok_or_else(|| not_found(&id))?;
        // A completed run is stored with its receipt, made in the same pass.
        if run.state.is_terminal() {
            return Ok(Json(run));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(Json(run)),
        }
    }
}

/// Cancels a pipeline: its running steps' jobs are cancelled, and steps
/// not yet run never will be.
#[utoipa::path(post, path = "/v1/pipelines/{id}/cancel", operation_id = "cancel_pipeline", params(("id" = String, Path, description = "a pipeline id")), responses((status = 200, body = PipelineRun), (status = 400, description = "malformed request", body = ErrorBody), (status = 401, description = "token required", body = ErrorBody), (status = 403, description = "host or origin refused", body = ErrorBody), (status = 404, description = "not found", body = ErrorBody)))]
pub(crate) async fn cancel(
    State(node): State<Shared>,
    Path(id): Path<String>,
    _body: Bytes,
) -> Result<Json<PipelineRun>, ApiError> {
    let pid = parse_id(&id)?;
    let mut run = node.db().pipeline(&pid).map_err(api::internal)?.ok_or_else(|| not_found(&id))?;
    if run.state.is_terminal() {
        return Ok(Json(run));
    }
    for s in run.steps.values_mut().filter(|s| !s.state.is_terminal()) {
        if let Some(job) = &s.job {
            crate::requester::cancel(&node, job).map_err(api::internal)?;
        }
        s.state = StepState::Cancelled;
        s.error = Some("the pipeline was cancelled".into());
    }
    run.state = JobState::Cancelled;
    run.error = Some("cancelled by the user".into());
    run.updated_ms = node.now();
    node.db().update_pipeline(&run).map_err(api::internal)?;
    node.notify_changed();
    Ok(Json(run))
}
