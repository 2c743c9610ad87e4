//! A pipeline's progress: which steps run next, which can no longer run,
//! and when the pipeline is over. [`advance`] is a pure function of the
//! run's record and how its steps' jobs ended; the node keeps the record
//! ([`crate::db::Db::update_pipeline`]), submits the steps it names and
//! tells it when their jobs end.
//!
//! Rules, in order, each pass:
//! 1. A submitted step whose job ended takes its outcome: completed when
//!    the job completed and its guest succeeded (exit code 0, no failure);
//!    failed otherwise, saying why (the job's error, or the guest's exit
//!    code or failure: a dependent must not read the outputs of a guest
//!    that failed).
//! 2. A waiting step that reads a failed or cancelled step fails, naming
//!    it; this repeats down the graph, so a failure reaches every step
//!    that depends on it, directly or not.
//! 3. A waiting step whose every dependency completed is ready: returned,
//!    for the caller to resolve ([`crate::pipeline::Step::resolve`]) and
//!    submit.
//! 4. Once every step has ended, the pipeline ends: completed when every
//!    step completed, failed otherwise, naming the failed steps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_storage::Cid;

use crate::model::{JobId, JobState, PipelineId, Submitter};
use crate::pipeline::Pipeline;

/// Where one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for the steps it reads.
    Waiting,
    /// Its job was submitted ([`StepRun::job`]).
    Submitted,
    /// Its job completed and its guest succeeded ([`StepRun::result`]).
    Completed,
    /// It failed, or cannot run because a step it reads failed.
    Failed,
    /// The pipeline was cancelled before it ended.
    Cancelled,
}

impl StepState {
    /// Completed, Failed or Cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(self, StepState::Completed | StepState::Failed | StepState::Cancelled)
    }
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepRun {
    pub state: StepState,
    /// Its job, once submitted.
    #[schema(value_type = Option<String>)]
    pub job: Option<JobId>,
    /// Its job's agreed result (completed steps).
    #[serde(default, with = "crate::serde_util::opt_cid")]
    #[schema(value_type = Option<String>)]
    pub result: Option<Cid>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When its job was first refused for a while (a quota, a full node):
    /// it is tried again until its spec's queue timeout has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<u64>,
}

/// A submitted pipeline and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineRun {
    #[schema(value_type = String)]
    pub id: PipelineId,
    /// The pipeline, as parsed (its steps' specs, with placeholders in
    /// the inputs that read other steps).
    #[schema(value_type = Object)]
    pub pipeline: Pipeline,
    /// [`Pipeline::cid`]: what the submitter signed and the receipt names.
    #[serde(with = "crate::serde_util::cid")]
    #[schema(value_type = String)]
    pub document: Cid,
    /// Running until every step has ended; then completed, failed or
    /// cancelled.
    pub state: JobState,
    pub steps: BTreeMap<String, StepRun>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Who submitted it (its claim signs [`PipelineRun::document`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<Submitter>,
    /// Whether its steps may complete from the result cache.
    pub cache: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its signed receipt (completed pipelines; see
    /// [`crate::pipeline::PipelineReceipt`]).
    #[serde(default, with = "crate::serde_util::opt_cid", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub receipt: Option<Cid>,
}

impl PipelineRun {
    /// A new run of `pipeline`: every step waiting.
    pub fn new(id: PipelineId, pipeline: Pipeline, now_ms: u64, submitter: Option<Submitter>, cache: bool) -> Self {
        let steps = pipeline
            .steps
            .keys()
            .map(|k| {
                (k.clone(), StepRun { state: StepState::Waiting, job: None, result: None, error: None, ready_ms: None })
            })
            .collect();
        PipelineRun {
            id,
            document: pipeline.cid(),
            pipeline,
            state: JobState::Running,
            steps,
            created_ms: now_ms,
            updated_ms: now_ms,
            submitter,
            cache,
            error: None,
            receipt: None,
        }
    }
}

/// How a step's job ended, as [`advance`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    pub state: JobState,
    pub result: Option<Cid>,
    /// Its guest succeeded (completed jobs).
    pub succeeded: bool,
    /// Why not, in one line (the job's error, or its guest's exit code or
    /// failure).
    pub why: String,
}

/// One pass of the rules (see the module documentation) at `now_ms`:
/// `ended` holds how the jobs of submitted steps ended (a job still going
/// is absent). Returns the steps ready to submit, in the pipeline's order,
/// and whether the record changed.
pub fn advance(run: &mut PipelineRun, ended: &BTreeMap<JobId, JobEnd>, now_ms: u64) -> (Vec<String>, bool) {
    if run.state.is_terminal() {
        return (Vec::new(), false);
    }
    let mut changed = false;
    for step in run.steps.values_mut() {
        if step.state != StepState::Submitted {
            continue;
        }
        let Some(end) = step.job.as_ref().and_then(|j| ended.get(j)) else { continue };
        if end.state == JobState::Completed && end.succeeded && end.result.is_some() {
            step.state = StepState::Completed;
            step.result = end.result;
        } else {
            step.state = StepState::Failed;
            step.error = Some(end.why.clone());
        }
        changed = true;
    }
    let order: Vec<String> = run.pipeline.order().into_iter().map(str::to_owned).collect();
    // In order, so that a failure reaches every step below it in one pass.
    let mut ready = Vec::new();
    for name in &order {
        if run.steps.get(name).is_none_or(|s| s.state != StepState::Waiting) {
            continue;
        }
        let deps = run.pipeline.deps(name);
        let failed = deps
            .iter()
            .find(|d| run.steps.get(**d).is_some_and(|s| matches!(s.state, StepState::Failed | StepState::Cancelled)));
        if let Some(dep) = failed {
            let why = run.steps.get(*dep).and_then(|s| s.error.clone()).unwrap_or_else(|| "cancelled".into());
            let error = format!("not run: step {dep:?}, which it reads, failed: {why}");
            if let Some(s) = run.steps.get_mut(name) {
                s.state = StepState::Failed;
                s.error = Some(error);
            }
            changed = true;
        } else if deps.iter().all(|d| run.steps.get(*d).is_some_and(|s| s.state == StepState::Completed)) {
            ready.push(name.clone());
        }
    }
    if ready.is_empty() && run.steps.values().all(|s| s.state.is_terminal()) {
        let failed: Vec<&String> = order.iter().filter(|n| run.steps[*n].state != StepState::Completed).collect();
        if failed.is_empty() {
            run.state = JobState::Completed;
        } else {
            // The first step that failed on its own (not for a dependency).
            let own = failed
                .iter()
                .find(|n| run.steps[**n].error.as_deref().is_some_and(|e| !e.starts_with("not run:")))
                .or(failed.first());
            run.state = JobState::Failed;
            run.error = Some(format!(
                "{} of {} step(s) failed ({}); first: step {:?}: {}",
                failed.len(),
                order.len(),
                failed.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
                own.map(|n| n.as_str()).unwrap_or_default(),
                own.and_then(|n| run.steps[*n].error.clone()).unwrap_or_default()
            ));
        }
        changed = true;
    }
    if changed {
        run.updated_ms = now_ms;
    }
    (ready, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diamond() -> PipelineRun {
        let m = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        let text = format!(
            "steps:
  a: {{task: {{module: {m}}}}}
  b: {{task: {{module: {m}, inputs: [{{from: a, mount: /a}}]}}}}
  c: {{task: {{module: {m}, inputs: [{{from: a, mount: /a}}]}}}}
  d: {{task: {{module: {m}, inputs: [{{from: b, mount: /b}}, {{from: c, mount: /c}}]}}}}
"
        );
        PipelineRun::new(PipelineId::from_parts(1, 1), Pipeline::parse(&text).unwrap(), 1, None, true)
    }

    fn submit(run: &mut PipelineRun, names: &[String]) {
        for n in names {
            let s = run.steps.get_mut(n).unwrap();
            s.state = StepState::Submitted;
            s.job = Some(JobId::from_parts(2, n.as_bytes()[0] as u64));
        }
    }

    fn end(run: &PipelineRun, name: &str, ok: bool) -> (JobId, JobEnd) {
        let job = run.steps[name].job.clone().unwrap();
        let end = JobEnd {
            state: JobState::Completed,
            result: Some(crate::receipt::raw_cid(name.as_bytes())),
            succeeded: ok,
            why: if ok { String::new() } else { "its guest exited with code 3".into() },
        };
        (job, end)
    }

    #[test]
    fn a_diamond_runs_each_step_once_its_inputs_exist() {
        let mut run = diamond();
        let (ready, _) = advance(&mut run, &BTreeMap::new(), 2);
        assert_eq!(ready, ["a"]);
        submit(&mut run, &ready);
        // a still running: nothing new.
        assert_eq!(advance(&mut run, &BTreeMap::new(), 3), (vec![], false));
        let ended: BTreeMap<_, _> = [end(&run, "a", true)].into_iter().collect();
        let (ready, changed) = advance(&mut run, &ended, 4);
        assert!(changed);
        assert_eq!(ready, ["b", "c"], "fan-out");
        submit(&mut run, &ready);
        let ended: BTreeMap<_, _> = [end(&run, "b", true)].into_iter().collect();
        assert!(advance(&mut run, &ended, 5).0.is_empty(), "d waits for c too");
        let ended: BTreeMap<_, _> = [end(&run, "c", true)].into_iter().collect();
        let (ready, _) = advance(&mut run, &ended, 6);
        assert_eq!(ready, ["d"], "fan-in");
        submit(&mut run, &ready);
        let ended: BTreeMap<_, _> = [end(&run, "d", true)].into_iter().collect();
        advance(&mut run, &ended, 7);
        assert_eq!(run.state, JobState::Completed);
        assert_eq!(run.updated_ms, 7);
    }

    #[test]
    fn a_failed_step_fails_every_step_below_it_and_then_the_pipeline() {
        let mut run = diamond();
        let (ready, _) = advance(&mut run, &BTreeMap::new(), 2);
        submit(&mut run, &ready);
        let ended: BTreeMap<_, _> = [end(&run, "a", true)].into_iter().collect();
        let (ready, _) = advance(&mut run, &ended, 3);
        submit(&mut run, &ready);
        // b's guest fails: d cannot run; c still runs to its end.
        let ended: BTreeMap<_, _> = [end(&run, "b", false)].into_iter().collect();
        let (ready, _) = advance(&mut run, &ended, 4);
        assert!(ready.is_empty());
        assert_eq!(run.steps["b"].state, StepState::Failed);
        assert_eq!(run.steps["d"].state, StepState::Failed);
        let why = run.steps["d"].error.clone().unwrap();
        assert!(why.contains("step \"b\"") && why.contains("code 3"), "{why}");
        assert_eq!(run.state, JobState::Running, "c is still going");
        let ended: BTreeMap<_, _> = [end(&run, "c", true)].into_iter().collect();
        advance(&mut run, &ended, 5);
        assert_eq!(run.state, JobState::Failed);
        let error = run.error.clone().unwrap();
        assert!(error.contains("2 of 4") && error.contains("first: step \"b\""), "{error}");
        // Over: nothing more happens.
        assert_eq!(advance(&mut run, &ended, 6), (vec![], false));
    }

    #[test]
    fn a_step_whose_job_failed_or_was_cancelled_fails_with_its_reason() {
        let mut run = diamond();
        let (ready, _) = advance(&mut run, &BTreeMap::new(), 2);
        submit(&mut run, &ready);
        let job = run.steps["a"].job.clone().unwrap();
        let ended: BTreeMap<_, _> =
            [(job, JobEnd { state: JobState::Failed, result: None, succeeded: false, why: "no consensus".into() })]
                .into_iter()
                .collect();
        advance(&mut run, &ended, 3);
        assert_eq!(run.state, JobState::Failed, "every other step depends on a");
        assert!(run.steps.values().all(|s| s.state == StepState::Failed));
        assert_eq!(run.steps["a"].error.as_deref(), Some("no consensus"));
    }
}
