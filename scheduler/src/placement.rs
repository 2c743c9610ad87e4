//! The scheduler's step function: [`plan`] looks at one job, the nodes
//! seen, the job's executions and the time, and says what to do next. It
//! is pure and idempotent: the caller applies the [`Plan`] (asks bids,
//! marks executions, requests reveals, updates the job) and calls it again
//! whenever anything changes or on a timer. Asking the same reveal twice is
//! harmless; the network layer dedupes requests in flight.
//!
//! # Rules
//!
//! **Terminal jobs** (completed, failed, cancelled) get an empty plan.
//!
//! **Ending executions.** Each live execution is checked, in this order:
//! - on a node that is gone (absent from `nodes`, or not seen for
//!   [`Config::node_ttl_ms`]) it is `lost`;
//! - on a node that disconnected ([`NodeView::connected`] false), it is
//!   `lost` unless it is Committed;
//! - on a node that now announces another boot id than the one it had when
//!   it was asked ([`Execution::boot`](crate::model::Execution::boot)), it
//!   is `lost` unless it is Committed: the node restarted and forgot it,
//!   whoever noticed first, and even if the requester itself restarted
//!   meanwhile. A Committed execution outlives its node's restart and a
//!   dropped connection (for the node ttl): the compute node journals what
//!   it committed to and reveals it from the journal when asked; if it
//!   cannot, its answer to the reveal ends the execution as lost;
//! - a bid unanswered for [`Config::bid_timeout_ms`] is `expired` (the
//!   caller marks it Rejected: a silent node is treated as a node that
//!   said no);
//! - an Accepted or Running execution past `timeouts.execution` since
//!   `started_ms` (or `created_ms` if it never reported a start) is `lost`.
//!   Committed executions are not timed: they have done their work and
//!   wait only for the others; `timeouts.total` bounds them.
//!
//! [`Plan::reasons`] says why for each, for `Execution::error`. The rest of
//! the plan already counts them as ended.
//!
//! **Total timeout.** Past `timeouts.total` since `created_ms` the job
//! fails ("timed out after …", with what it was waiting for) and its live
//! executions are cancelled.
//!
//! **How many executions.** The job wants `count + extra_used` executions
//! that are live or have a result. Executions that fail or are lost are
//! replaced from a budget of `count + extra_used + retries` executions in
//! all: every execution that was not a rejected bid spends one. So
//! `retries` is the number of failed or lost executions that are replaced;
//! rejected bids (including expired ones) cost nothing, since a node
//! declining is not the job failing, and they are bounded by the backoff
//! before a node that declined is asked again (see Placing) and by the
//! job's timeouts.
//!
//! **Agreement.** [`agreement::decide`] runs over the Revealed and
//! Completed results, with `pending` = live executions plus the
//! replacements wanted, and `extra_left = max_extra - extra_used`. It is
//! first asked with only the replacements that eligible nodes could take
//! now: a quorum that nothing live or placeable could tie is final, even
//! if the job wanted more executions than there are nodes for.
//! - Agreed: the job completes with that result; `agreeing` and
//!   `dissenting` go into the [`JobUpdate`] (for node reputation). Live
//!   executions are not cancelled: the caller lets them finish and judges
//!   each when it commits, so that a node that would have dissented is
//!   still found out (a failed job does cancel them).
//! - Wait: replacements (if any) are placed.
//! - NeedMore(n): up to n extra executions are placed, and `extra_used`
//!   grows by as many as were placed (with no node for them, the job waits
//!   and asks again).
//! - NoConsensus: the job fails. If the retry budget ran out, the message
//!   says so and lists each failure ("gave up after 3 failed or lost
//!   executions (retries: 2): e-1 on node A: …"); otherwise it lists every
//!   result (`no consensus: <cid> (e-1 on A), …`).
//!
//! **Placing.** A node is eligible if it is alive, computes, satisfies
//! every constraint, has `slots_free >= resources.slots`, `memory_bytes >=
//! resources.memory` and a GPU (hardware or software) if `resources.gpu`,
//! (one that announces it runs exact inference if the job's `nn.mode` is
//! exact), and has no execution of this job other than declined bids: never two
//! executions of one job on one node, not even after a failure, so that
//! one node cannot outvote others. A node that only declined the job (it
//! was busy, or its bid expired) is eligible again once
//! [`Config::decline_backoff`] has passed since its last refusal (1 s,
//! doubling per refusal, at most 30 s) and it announces room: a busy node
//! is never lost to a job for good, so that a burst larger than the free
//! slots drains instead of leaving jobs waiting on nodes that said no once.
//! A node that disconnected is not eligible until it is heard from again.
//! Eligible nodes are ranked by, in order:
//! 1. reputation: the smaller share of executions that dissented or were
//!    lost, `(dissented + lost) / (agreed + dissented + lost + failed + 1)`;
//! 2. more of the job's input CIDs held (`holds`);
//! 3. a larger share of free slots;
//! 4. node id, so that equal nodes are always taken in the same order.
//!
//! A `resources.gpu` job in `nn.mode: fast` with `redundancy.count` above
//! 1 runs all its executions on one GPU model and driver (the name and
//! driver its nodes announce): fast results are reproducible only there,
//! and executions that cannot agree would waste the job. The group is
//! the one of its executions that are live or have a result (the first
//! by id whose node is still known); before any, the (name, driver) with
//! the most eligible nodes, ties going to the group of the best ranked
//! node. Exact jobs, and jobs without `resources.gpu`, run on any mix of
//! nodes: exact results are the same on the CPU and every GPU that runs
//! them.
//!
//! Should `nodes` hold two views of one node, the most recently seen is
//! used. `plan` places at most one execution per node per job; the caller
//! should take the slots it asked for off its node views before planning
//! the next job. New executions fill `redundancy.count` first; the rest are
//! extra (the last [`Plan::extra`] of [`Plan::place`]).
//!
//! **Queueing.** When executions are wanted but no node is eligible and
//! nothing is live, the job waits as Queued. If it never started, it fails
//! once `timeouts.queue` has passed since submission (asking again nodes
//! that declined does not extend it), with a message naming the
//! constraints and resources and why each node was passed over. A job
//! that did start waits for nodes until `timeouts.total`.
//!
//! **Reveals.** Committed executions are asked to reveal once the
//! commitments the job needs are in: committed plus results reach the
//! quorum, or nothing live is still before its commitment (bid asked,
//! accepted, running), nothing is being placed and no more executions are
//! coming. In the first case only as many as could decide the job are
//! asked (the leading result's missing votes, earliest commitments
//! first); the others when these do not decide it, or once it is decided. The quorum that decides the job has then committed before any
//! answer is known, and executions still running learn nothing from the
//! reveals: the requester shows no execution's result or output until the
//! job has ended ([`Execution::sealed`](crate::model::Execution::sealed)).
//! The caller checks each reveal with
//! [`commit::verify`](crate::commit::verify) before marking the execution
//! Revealed (a reveal that does not open its commitment is a failure). A
//! node that commits and never reveals is bounded by `timeouts.total`.
//! Results already in stand even if their node goes away.
//!
//! **Job state.** Otherwise the job is Running while any execution is
//! accepted, running, committed or has a result, and Queued when none is
//! (it goes back to Queued if every execution ended without a result).
//! [`Plan::job`] is set whenever the state, result, error or `extra_used`
//! changes.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_storage::Cid;

use crate::agreement::{self, Verdict};
use crate::model::{ExecId, ExecState, Execution, Job, JobState, NodeId, NodeStats, NodeView};
use crate::spec::NnMode;

/// Tuning of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// A node not seen for this long is gone, and its live executions are
    /// lost. Default 10 s.
    pub node_ttl_ms: u64,
    /// A bid not answered for this long expires. Default 30 s.
    pub bid_timeout_ms: u64,
    /// A node that declined a job (busy, or silent past the bid timeout)
    /// may be asked again this long after its last refusal, doubling with
    /// each refusal up to [`Config::max_decline_backoff_ms`]. Default 1 s.
    pub decline_backoff_ms: u64,
    /// The longest wait before asking a node that declined again.
    /// Default 30 s.
    pub max_decline_backoff_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_ttl_ms: 10_000,
            bid_timeout_ms: 30_000,
            decline_backoff_ms: 1_000,
            max_decline_backoff_ms: 30_000,
        }
    }
}

impl Config {
    /// How long after its `refusals`-th refusal a node may be asked again.
    pub fn decline_backoff(&self, refusals: u32) -> u64 {
        let doubled = self.decline_backoff_ms.saturating_mul(1u64 << refusals.saturating_sub(1).min(32));
        doubled.min(self.max_decline_backoff_ms)
    }
}

/// What the job itself becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUpdate {
    /// New state.
    pub state: JobState,
    /// The agreed result (Completed).
    pub result: Option<Cid>,
    /// Why it failed (Failed).
    pub error: Option<String>,
    /// New `Job::extra_used`.
    pub extra_used: u32,
    /// Executions whose result was agreed (Completed), for reputation.
    pub agreeing: Vec<ExecId>,
    /// Executions whose result differed (Completed), for reputation.
    pub dissenting: Vec<ExecId>,
}

impl JobUpdate {
    /// Writes the update into `job` at `now_ms` (setting `started_ms` when
    /// it first runs).
    pub fn apply_to(&self, job: &mut Job, now_ms: u64) {
        job.state = self.state;
        job.result = self.result;
        job.error = self.error.clone();
        job.extra_used = self.extra_used;
        job.updated_ms = now_ms;
        if self.state == JobState::Running && job.started_ms.is_none() {
            job.started_ms = Some(now_ms);
        }
    }
}

/// What to do next for one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes to ask for a bid, in order (one new execution each).
    pub place: Vec<NodeId>,
    /// How many of the last entries of `place` are extra executions
    /// (`Execution::extra`).
    pub extra: usize,
    /// Live executions to mark Lost.
    pub lost: Vec<ExecId>,
    /// Bids that were not answered in time: mark them Rejected.
    pub expired: Vec<ExecId>,
    /// Committed executions to ask for their reveal now.
    pub reveal: Vec<ExecId>,
    /// Live executions no longer needed because the job ended: tell their
    /// nodes to stop and mark them Failed (not counted against the node).
    pub cancel: Vec<ExecId>,
    /// Why each execution in `lost`, `expired` and `cancel` was ended.
    pub reasons: BTreeMap<ExecId, String>,
    /// The job's new state, if it changes.
    pub job: Option<JobUpdate>,
}

impl Plan {
    /// What the plan means for node track records: agreed and dissented
    /// (when the job completes) and lost executions, by node. Failures the
    /// nodes report themselves are the caller's to count.
    pub fn stats(&self, executions: &[Execution]) -> BTreeMap<NodeId, NodeStats> {
        self.counted(executions, true)
    }

    /// [`Plan::stats`] without the agreement: only lost executions. For a
    /// caller that counts the agreement when it completes the job (after
    /// fetching the result), in that transaction.
    pub fn loss_stats(&self, executions: &[Execution]) -> BTreeMap<NodeId, NodeStats> {
        self.counted(executions, false)
    }

    fn counted(&self, executions: &[Execution], agreement: bool) -> BTreeMap<NodeId, NodeStats> {
        let node_of: BTreeMap<&ExecId, &NodeId> = executions.iter().map(|e| (&e.id, &e.node)).collect();
        let mut out: BTreeMap<NodeId, NodeStats> = BTreeMap::new();
        let mut add = |ids: &[ExecId], f: fn(&mut NodeStats)| {
            for id in ids {
                if let Some(n) = node_of.get(id) {
                    f(out.entry((*n).clone()).or_default());
                }
            }
        };
        if let (Some(u), true) = (&self.job, agreement) {
            add(&u.agreeing, |s| s.agreed += 1);
            add(&u.dissenting, |s| s.dissented += 1);
        }
        add(&self.lost, |s| s.lost += 1);
        out
    }

    /// Each node to ask, with whether its execution is extra.
    pub fn placements(&self) -> impl Iterator<Item = (&NodeId, bool)> {
        let base = self.place.len().saturating_sub(self.extra);
        self.place.iter().enumerate().map(move |(i, n)| (n, i >= base))
    }
}

fn human(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

fn dur_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Plans the next step for `job` (see the module documentation).
/// `executions` are the job's executions (others are ignored).
pub fn plan(job: &Job, nodes: &[NodeView], executions: &[Execution], now_ms: u64, cfg: &Config) -> Plan {
    plan_within(job, nodes, executions, now_ms, cfg, usize::MAX)
}

/// [`plan`], asking at most `max_new` nodes: what the submitter's quota of
/// busy executions leaves it (a requester's `--quota-executions`). A job
/// held back by the quota waits as for a free node, and fails at its
/// queue timeout saying so.
pub fn plan_within(
    job: &Job,
    nodes: &[NodeView],
    executions: &[Execution],
    now_ms: u64,
    cfg: &Config,
    max_new: usize,
) -> Plan {
    let mut plan = Plan::default();
    if job.state.is_terminal() {
        return plan;
    }
    let spec = &job.spec;
    // One view per node: the most recently seen, should a caller pass two.
    let mut node_map: BTreeMap<&str, &NodeView> = BTreeMap::new();
    for n in nodes {
        let e = node_map.entry(n.id.as_str()).or_insert(n);
        if n.last_seen_ms > e.last_seen_ms {
            *e = n;
        }
    }
    let alive = |id: &str| node_map.get(id).is_some_and(|n| n.alive(now_ms, cfg.node_ttl_ms));
    let mut execs: Vec<&Execution> = executions.iter().filter(|e| e.job == job.id).collect();
    execs.sort_by(|a, b| a.id.cmp(&b.id));

    // Effective states, after ending what must end.
    let mut state: BTreeMap<&ExecId, ExecState> = BTreeMap::new();
    let exec_timeout = dur_ms(spec.timeouts.execution);
    for e in &execs {
        let mut s = e.state;
        if s.is_live() {
            let restarted = match (e.boot, node_map.get(e.node.as_str()).and_then(|n| n.boot)) {
                (Some(then), Some(now)) => then != now,
                _ => false,
            };
            // A committed execution survives its node's restart and a
            // dropped connection (the node journals it and reveals it
            // when asked); one still running does not.
            let committed = s == ExecState::Committed;
            let connected = node_map.get(e.node.as_str()).is_some_and(|n| n.connected);
            if !alive(&e.node) {
                plan.lost.push(e.id.clone());
                plan.reasons
                    .insert(e.id.clone(), format!("node {} gone (not seen for {})", e.node, human(cfg.node_ttl_ms)));
                s = ExecState::Lost;
            } else if !connected && !committed {
                plan.lost.push(e.id.clone());
                plan.reasons.insert(e.id.clone(), format!("node {} disconnected during the execution", e.node));
                s = ExecState::Lost;
            } else if restarted && !committed {
                plan.lost.push(e.id.clone());
                plan.reasons.insert(e.id.clone(), format!("node {} restarted during the execution", e.node));
                s = ExecState::Lost;
            } else if s == ExecState::BidAsked && now_ms.saturating_sub(e.created_ms) > cfg.bid_timeout_ms {
                plan.expired.push(e.id.clone());
                plan.reasons.insert(e.id.clone(), format!("bid not answered within {}", human(cfg.bid_timeout_ms)));
                s = ExecState::Rejected;
            } else if matches!(s, ExecState::Accepted | ExecState::Running)
                && now_ms.saturating_sub(e.started_ms.unwrap_or(e.created_ms)) > exec_timeout
            {
                plan.lost.push(e.id.clone());
                plan.reasons.insert(
                    e.id.clone(),
                    format!("ran past the {} execution timeout (timeouts.execution)", human(exec_timeout)),
                );
                s = ExecState::Lost;
            }
        }
        state.insert(&e.id, s);
    }
    let st = |e: &Execution| state.get(&e.id).copied().unwrap_or(e.state);

    let live: Vec<&Execution> = execs.iter().copied().filter(|e| st(e).is_live()).collect();
    let results: Vec<(ExecId, NodeId, Cid)> = execs
        .iter()
        .filter(|e| st(e).has_result())
        .filter_map(|e| e.result.map(|c| (e.id.clone(), e.node.clone(), c)))
        .collect();
    // A result state without a result is a broken report: a failure.
    let failures: Vec<&Execution> = execs
        .iter()
        .copied()
        .filter(|e| matches!(st(e), ExecState::Failed | ExecState::Lost) || (st(e).has_result() && e.result.is_none()))
        .collect();
    let used = execs.iter().filter(|e| st(e) != ExecState::Rejected).count();

    let count = spec.redundancy.count as usize;
    let quorum = spec.quorum() as usize;
    let mut extra_used = job.extra_used;
    let extra_left = spec.redundancy.max_extra.saturating_sub(extra_used) as usize;
    let target = count + extra_used as usize;
    let deficit = target.saturating_sub(live.len() + results.len());
    let budget = target + spec.retries as usize;
    let replace = deficit.min(budget.saturating_sub(used));
    let out_of_retries = replace < deficit;

    let finish = |plan: &mut Plan, update: JobUpdate| {
        let why = match update.state {
            JobState::Completed => "job completed".to_string(),
            _ => "job failed".to_string(),
        };
        if update.state != JobState::Completed {
            for e in &live {
                plan.cancel.push(e.id.clone());
                plan.reasons.insert(e.id.clone(), why.clone());
            }
        }
        plan.job = Some(update);
    };
    let failed = |error: String, extra_used: u32| JobUpdate {
        state: JobState::Failed,
        result: None,
        error: Some(error),
        extra_used,
        agreeing: Vec::new(),
        dissenting: Vec::new(),
    };

    // A node with an execution of this job that did anything but decline
    // is never asked again. One that only declined (it was busy, or did not
    // answer) is asked again once its backoff has passed and it announces
    // room: a busy node must not be lost to a job for good, or a burst
    // larger than the free slots would leave jobs waiting forever.
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut declined: BTreeMap<&str, (u32, u64)> = BTreeMap::new();
    for e in &execs {
        if st(e) == ExecState::Rejected {
            // Expired in this plan: refused now.
            let at = if plan.expired.contains(&e.id) { now_ms } else { e.updated_ms };
            let d = declined.entry(e.node.as_str()).or_insert((0, 0));
            *d = (d.0.saturating_add(1), d.1.max(at));
        } else {
            taken.insert(e.node.as_str());
        }
    }
    let asked_again_ok = |id: &str| match declined.get(id) {
        None => true,
        Some(&(n, last)) => now_ms.saturating_sub(last) >= cfg.decline_backoff(n),
    };
    let mut eligible: Vec<Rank<'_>> = node_map
        .values()
        .filter(|n| {
            alive(&n.id) && n.connected && !taken.contains(n.id.as_str()) && asked_again_ok(&n.id) && fits(job, n)
        })
        .map(|n| Rank::of(job, n))
        .collect();
    eligible.sort();
    let group = gpu_group(job, &node_map, &execs, &st, &eligible);
    if let Some(g) = &group {
        eligible.retain(|r| node_map.get(r.id).is_some_and(|n| in_group(n, g)));
    }

    let total = dur_ms(spec.timeouts.total);
    if now_ms.saturating_sub(job.created_ms) > total {
        // Everything the job was still waiting for.
        let mut waiting = Vec::new();
        if !results.is_empty() {
            waiting.push(format!("results so far: {}", list_results(&results)));
        }
        let committed = live.iter().filter(|e| st(e) == ExecState::Committed).count();
        if committed > 0 {
            waiting.push(format!("{committed} execution(s) committed, waiting for more results before revealing"));
        }
        if live.len() > committed {
            waiting.push(format!("{} execution(s) not finished", live.len() - committed));
        }
        if replace > eligible.len() {
            let (needs, census) = unfit(job, nodes, &execs, group.as_ref(), now_ms, cfg);
            waiting.push(format!("{needs} for {} more execution(s) ({census})", replace - eligible.len()));
        }
        if waiting.is_empty() {
            waiting.push("no result".into());
        }
        let detail = waiting.join("; ");
        finish(&mut plan, failed(format!("timed out after {} (timeouts.total): {detail}", human(total)), extra_used));
        return plan;
    }

    // A quorum that nothing live or placeable now could tie is final, even
    // if the job wanted more executions than there are nodes for.
    let now_possible = live.len() + replace.min(eligible.len());
    let verdict = match agreement::decide(quorum, &results, now_possible, extra_left) {
        agreed @ Verdict::Agreed { .. } => agreed,
        _ => agreement::decide(quorum, &results, live.len() + replace, extra_left),
    };
    let want = match verdict {
        Verdict::Agreed { result, agreeing, dissenting } => {
            finish(
                &mut plan,
                JobUpdate {
                    state: JobState::Completed,
                    result: Some(result),
                    error: None,
                    extra_used,
                    agreeing,
                    dissenting,
                },
            );
            return plan;
        }
        Verdict::NoConsensus { results } => {
            let error = if out_of_retries && !failures.is_empty() {
                let mut m = format!(
                    "gave up after {} failed or lost executions (retries: {}): {}",
                    failures.len(),
                    spec.retries,
                    list_failures(&failures, &plan.reasons)
                );
                if !results.is_empty() {
                    m.push_str(&format!("; results: {}", list_results(&results)));
                }
                m
            } else {
                format!("no consensus: {}", list_results(&results))
            };
            finish(&mut plan, failed(error, extra_used));
            return plan;
        }
        Verdict::Wait => replace,
        Verdict::NeedMore(n) => n,
    };

    if want > 0 {
        plan.place = eligible.iter().take(want.min(max_new)).map(|r| r.id.to_string()).collect();
        if matches!(verdict, Verdict::NeedMore(_)) {
            // Only what is placed is granted: with no node for it, the
            // extra budget stays for when one comes.
            extra_used = extra_used.saturating_add(u32::try_from(plan.place.len()).unwrap_or(u32::MAX));
        }
        let base_have = live.iter().filter(|e| !e.extra).count()
            + execs.iter().filter(|e| st(e).has_result() && e.result.is_some() && !e.extra).count();
        let base_new = if matches!(verdict, Verdict::NeedMore(_)) { 0 } else { count.saturating_sub(base_have) };
        plan.extra = plan.place.len().saturating_sub(base_new);

        // Asking again nodes that declined does not keep a job that no
        // node took waiting past its queue timeout.
        let queue = dur_ms(spec.timeouts.queue);
        if plan.place.iter().all(|n| declined.contains_key(n.as_str()))
            && live.is_empty()
            && job.started_ms.is_none()
            && now_ms.saturating_sub(job.created_ms) > queue
        {
            let error = if max_new == 0 && !eligible.is_empty() {
                format!(
                    "its submitter's quota of busy executions was used up by its other jobs for {} (timeouts.queue)",
                    human(queue)
                )
            } else {
                let (needs, census) = unfit(job, nodes, &execs, group.as_ref(), now_ms, cfg);
                format!("{needs} after waiting {} (timeouts.queue) ({census})", human(queue))
            };
            finish(&mut plan, failed(error, extra_used));
            return plan;
        }
    }

    let pre_commit =
        live.iter().any(|e| matches!(st(e), ExecState::BidAsked | ExecState::Accepted | ExecState::Running));
    let committed: Vec<&Execution> = live.iter().copied().filter(|e| st(e) == ExecState::Committed).collect();
    let more_coming = want > 0;
    if committed.len() + results.len() >= quorum {
        // Only as many as could decide the job, earliest commitments
        // first: the leading result needs `quorum - lead` more votes (all,
        // when it has them and only pending ones could still tie it). The
        // others' commitments are in, so they are asked once the job is
        // decided (and judged, with credit) or, if these do not decide
        // it, by the next plan: a redundant job does not wait on answers
        // it does not need.
        let lead = agreement::lead(&results);
        let need = if lead >= quorum { committed.len() } else { quorum - lead };
        let mut first = committed.clone();
        first.sort_by(|a, b| (a.updated_ms, &a.id).cmp(&(b.updated_ms, &b.id)));
        plan.reveal = first.iter().take(need).map(|e| e.id.clone()).collect();
    } else if !pre_commit && plan.place.is_empty() && !more_coming {
        // Short of the quorum and nothing else can commit: every answer
        // is needed to settle it.
        plan.reveal = committed.iter().map(|e| e.id.clone()).collect();
    }

    let working = execs.iter().any(|e| {
        matches!(st(e), ExecState::Accepted | ExecState::Running | ExecState::Committed)
            || (st(e).has_result() && e.result.is_some())
    });
    let new_state = if working { JobState::Running } else { JobState::Queued };
    if new_state != job.state || extra_used != job.extra_used {
        plan.job = Some(JobUpdate {
            state: new_state,
            result: None,
            error: None,
            extra_used,
            agreeing: Vec::new(),
            dissenting: Vec::new(),
        });
    }
    plan
}

/// How many live nodes could ever run `job`, busy or not: compute nodes
/// that meet its constraints and have the slots, memory and GPU it asks
/// for. A job whose `redundancy.count` is above this waits for more nodes
/// (or completes on fewer, once a quorum agrees): submitters are told.
pub fn capable_nodes(job: &Job, nodes: &[NodeView], now_ms: u64, cfg: &Config) -> usize {
    nodes.iter().filter(|n| capable(job, n, now_ms, cfg)).count()
}

/// Whether `node` is alive and could run `job` when it has a free slot.
pub fn capable(job: &Job, node: &NodeView, now_ms: u64, cfg: &Config) -> bool {
    let r = &job.spec.resources;
    node.alive(now_ms, cfg.node_ttl_ms)
        && node.connected
        && node.compute
        && node.works_for(job.submitter.as_ref())
        && job.spec.constraints.iter().all(|c| c.matches(&node.labels))
        && node.slots_total.max(node.slots_free) >= r.slots
        && node.memory_bytes >= r.memory.0
        && gpu_fits(job, node)
}

/// Whether `node` has what the job needs (liveness and exclusion aside).
fn fits(job: &Job, node: &NodeView) -> bool {
    let r = &job.spec.resources;
    node.compute
        && node.works_for(job.submitter.as_ref())
        && job.spec.constraints.iter().all(|c| c.matches(&node.labels))
        && node.slots_free >= r.slots
        && node.memory_bytes >= r.memory.0
        && gpu_fits(job, node)
}

/// Whether `node` has the GPU the job asks for, if any: one that runs
/// exact inference for an exact job.
fn gpu_fits(job: &Job, node: &NodeView) -> bool {
    let spec = &job.spec;
    if !spec.resources.gpu {
        return true;
    }
    match &node.gpu {
        None => false,
        Some(g) => spec.nn.mode != NnMode::Exact || g.exact,
    }
}

/// A GPU model and driver: where `fast` GPU results are reproducible.
type GpuGroup = (String, String);

fn in_group(node: &NodeView, g: &GpuGroup) -> bool {
    node.gpu.as_ref().is_some_and(|x| x.name == g.0 && x.driver == g.1)
}

/// The one GPU model and driver that a fast, redundant GPU job's
/// executions must share (see the module documentation), or `None` when
/// any eligible node will do.
fn gpu_group(
    job: &Job,
    node_map: &BTreeMap<&str, &NodeView>,
    execs: &[&Execution],
    st: &dyn Fn(&Execution) -> ExecState,
    eligible: &[Rank<'_>],
) -> Option<GpuGroup> {
    let spec = &job.spec;
    if !spec.resources.gpu || spec.nn.mode == NnMode::Exact || spec.redundancy.count <= 1 {
        return None;
    }
    let group_of = |id: &str| node_map.get(id).and_then(|n| n.gpu.as_ref()).map(|g| (g.name.clone(), g.driver.clone()));
    // `execs` is sorted by id: the first placed execution fixes it.
    let fixed = execs
        .iter()
        .filter(|e| st(e).is_live() || (st(e).has_result() && e.result.is_some()))
        .find_map(|e| group_of(&e.node));
    if fixed.is_some() {
        return fixed;
    }
    // The largest group; `eligible` is in rank order, so on a tie the
    // group seen first has the best ranked node.
    let mut groups: Vec<(GpuGroup, usize)> = Vec::new();
    for g in eligible.iter().filter_map(|r| group_of(r.id)) {
        match groups.iter_mut().find(|(x, _)| *x == g) {
            Some((_, n)) => *n += 1,
            None => groups.push((g, 1)),
        }
    }
    let most = groups.iter().map(|(_, n)| *n).max()?;
    groups.into_iter().find(|(_, n)| *n == most).map(|(g, _)| g)
}

/// A node's place in the ranking (see the module documentation):
/// computed once per node, compared as fractions without rounding.
#[derive(Debug, PartialEq, Eq)]
struct Rank<'a> {
    /// Executions that dissented or were lost.
    bad: u128,
    /// All its executions, plus one (so that a new node has a share of 0).
    all: u128,
    /// How many of the job's input CIDs it holds.
    held: usize,
    slots_free: u128,
    slots_total: u128,
    id: &'a str,
}

impl<'a> Rank<'a> {
    fn of(job: &Job, n: &'a NodeView) -> Rank<'a> {
        let s = &n.stats;
        let inputs: BTreeSet<&Cid> = job.spec.task.inputs.iter().map(|i| &i.cid).collect();
        Rank {
            bad: u128::from(s.dissented) + u128::from(s.lost),
            all: u128::from(s.agreed) + u128::from(s.dissented) + u128::from(s.lost) + u128::from(s.failed) + 1,
            held: inputs.iter().filter(|c| n.holds.contains(**c)).count(),
            slots_free: u128::from(n.slots_free),
            slots_total: u128::from(n.slots_total.max(n.slots_free).max(1)),
            id: &n.id,
        }
    }
}

impl Ord for Rank<'_> {
    /// Best first.
    fn cmp(&self, o: &Self) -> Ordering {
        (self.bad * o.all)
            .cmp(&(o.bad * self.all))
            .then_with(|| o.held.cmp(&self.held))
            .then_with(|| (o.slots_free * self.slots_total).cmp(&(self.slots_free * o.slots_total)))
            .then_with(|| self.id.cmp(o.id))
    }
}

impl PartialOrd for Rank<'_> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Why no node fits: the requirements, then how many nodes fell at each.
fn unfit(
    job: &Job,
    nodes: &[NodeView],
    execs: &[&Execution],
    group: Option<&GpuGroup>,
    now_ms: u64,
    cfg: &Config,
) -> (String, String) {
    let spec = &job.spec;
    let r = &spec.resources;
    let mut needs = Vec::new();
    if !spec.constraints.is_empty() {
        let cs: Vec<String> = spec.constraints.iter().map(|c| c.to_string()).collect();
        needs.push(format!("constraints [{}]", cs.join(", ")));
    }
    needs.push(format!("memory >= {}", r.memory));
    needs.push(format!("{} free slot(s)", r.slots));
    match (r.gpu, spec.nn.mode, group) {
        (false, ..) => {}
        (true, NnMode::Exact, _) => needs.push("a gpu that runs exact inference (nn.mode: exact)".into()),
        (true, _, Some((name, driver))) => {
            needs.push(format!("the gpu {name:?} with driver {driver:?} of the job's other executions (nn.mode: fast)"))
        }
        (true, _, None) => needs.push("a gpu".into()),
    }
    let taken: BTreeSet<&str> = execs.iter().map(|e| e.node.as_str()).collect();
    let (mut gone, mut no_compute, mut constrained, mut small, mut ran) = (0, 0, 0, 0, 0);
    for n in nodes {
        if !n.alive(now_ms, cfg.node_ttl_ms) {
            gone += 1;
        } else if !n.compute {
            no_compute += 1;
        } else if !spec.constraints.iter().all(|c| c.matches(&n.labels)) {
            constrained += 1;
        } else if taken.contains(n.id.as_str()) {
            ran += 1;
        } else if !fits(job, n) || group.is_some_and(|g| !in_group(n, g)) {
            small += 1;
        }
    }
    (
        format!("no node satisfies {}", needs.join(", ")),
        format!(
            "of {} known node(s): {gone} gone, {no_compute} not computing, {constrained} failing constraints, \
             {small} short of resources, {ran} already tried this job; add nodes or relax the spec",
            nodes.len()
        ),
    )
}

fn list_results(results: &[(ExecId, NodeId, Cid)]) -> String {
    if results.is_empty() {
        return "no results".into();
    }
    results.iter().map(|(e, n, c)| format!("{c} ({e} on {n})")).collect::<Vec<_>>().join(", ")
}

fn list_failures(failures: &[&Execution], reasons: &BTreeMap<ExecId, String>) -> String {
    failures
        .iter()
        .map(|e| {
            let why = reasons.get(&e.id).or(e.error.as_ref()).map(String::as_str).unwrap_or(match e.state {
                ExecState::Lost => "lost",
                ExecState::Failed => "failed",
                _ => "reported no result",
            });
            format!("{} on {}: {why}", e.id, e.node)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gpu, Submitter};
    use crate::spec::{Bytes, Spec};
    use proptest::prelude::*;

    const NOW: u64 = 1_000_000;

    fn cid(n: u8) -> Cid {
        *shoal_storage::Block::new(shoal_storage::CidVersion::V1, shoal_storage::block::RAW, vec![n]).cid()
    }

    fn node(id: &str) -> NodeView {
        NodeView {
            id: id.into(),
            capacity: crate::model::Capacity {
                labels: BTreeMap::new(),
                compute: true,
                slots_total: 4,
                slots_free: 4,
                memory_bytes: 8 << 30,
                gpu: None,
                submitters: Vec::new(),
                version: "0.1.0".into(),
            },
            last_seen_ms: NOW,
            holds: BTreeSet::new(),
            stats: NodeStats::default(),
            boot: None,
            connected: true,
            ttl_ms: None,
        }
    }

    fn nodes(ids: &[&str]) -> Vec<NodeView> {
        ids.iter().map(|i| node(i)).collect()
    }

    fn job(count: u32, f: impl FnOnce(&mut Spec)) -> Job {
        let mut spec = Spec::new(cid(0));
        spec.redundancy.count = count;
        f(&mut spec);
        spec.validate().unwrap();
        Job::new("j-1".parse().unwrap(), spec, NOW - 1000)
    }

    fn ex(id: &str, node: &str, state: ExecState) -> Execution {
        let mut e = Execution::new(id.parse().unwrap(), "j-1".parse().unwrap(), node.into(), false, NOW - 500);
        e.state = state;
        if state.has_result() {
            e.result = Some(cid(1));
        }
        e
    }

    fn with_result(mut e: Execution, c: u8) -> Execution {
        e.result = Some(cid(c));
        e
    }

    fn cfg() -> Config {
        Config::default()
    }

    fn ids(v: &[&str]) -> Vec<ExecId> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn capable_nodes_counts_busy_nodes_but_not_unfit_or_gone_ones() {
        let j = job(5, |s| s.constraints.push("zone=eu".parse().unwrap()));
        let mut ns = nodes(&["a", "b", "c", "d", "e"]);
        for n in &mut ns {
            n.labels.insert("zone".into(), "eu".into());
        }
        ns[0].slots_free = 0; // busy: still capable
        ns[1].labels.insert("zone".into(), "us".into());
        ns[2].compute = false;
        ns[3].last_seen_ms = NOW - cfg().node_ttl_ms - 1;
        assert_eq!(capable_nodes(&j, &ns, NOW, &cfg()), 2);
        let gpu = job(1, |s| s.resources.gpu = true);
        assert_eq!(capable_nodes(&gpu, &nodes(&["a"]), NOW, &cfg()), 0);
    }

    #[test]
    fn a_node_that_declined_is_asked_again_after_its_backoff_once_it_has_room() {
        let j = job(2, |_| {});
        let mut declined = ex("e1", "a", ExecState::Rejected);
        declined.updated_ms = NOW;
        let mut failed = ex("e2", "b", ExecState::Failed);
        failed.updated_ms = NOW;
        let execs = [declined, failed];
        // Within its backoff: only the third node.
        let p = plan(&j, &nodes(&["a", "b", "c"]), &execs, NOW + 500, &cfg());
        assert_eq!(p.place, ["c"]);
        // Past it, with room: asked again; the node that failed never is.
        let mut ns = nodes(&["a", "b", "c"]);
        for n in &mut ns {
            n.last_seen_ms = NOW + 1000;
        }
        let p = plan(&j, &ns, &execs, NOW + 1000, &cfg());
        assert_eq!(p.place, ["a", "c"]);
        // Still busy (no free slot announced): not asked.
        ns[0].slots_free = 0;
        assert_eq!(plan(&j, &ns, &execs, NOW + 1000, &cfg()).place, ["c"]);
        // Each refusal doubles the wait, up to the cap.
        let c = cfg();
        assert_eq!((c.decline_backoff(1), c.decline_backoff(2), c.decline_backoff(3)), (1000, 2000, 4000));
        assert_eq!(c.decline_backoff(40), c.max_decline_backoff_ms);
    }

    #[test]
    fn a_quota_caps_new_executions_and_a_job_it_holds_back_fails_at_its_queue_timeout_saying_so() {
        let j = job(3, |_| {});
        let ns = nodes(&["a", "b", "c"]);
        assert_eq!(plan_within(&j, &ns, &[], NOW, &cfg(), 1).place, ["a"]);
        assert_eq!(plan_within(&j, &ns, &[], NOW, &cfg(), usize::MAX).place.len(), 3);
        // Held back entirely: it waits, then fails naming the quota.
        assert!(plan_within(&j, &ns, &[], NOW + 1, &cfg(), 0).job.is_none());
        let late = NOW + 1 + j.spec.timeouts.queue.as_millis() as u64;
        let mut ns = ns;
        for n in &mut ns {
            n.last_seen_ms = late;
        }
        let p = plan_within(&j, &ns, &[], late, &cfg(), 0);
        let err = p.job.and_then(|u| u.error).unwrap_or_default();
        assert!(err.contains("quota"), "{err}");
    }

    #[test]
    fn nodes_that_work_only_for_other_submitters_are_not_asked() {
        let mut ns = nodes(&["a", "b"]);
        ns[0].capacity.submitters = vec!["alice".into()];
        let mut j = job(2, |_| {});
        assert_eq!(plan(&j, &ns, &[], NOW, &cfg()).place, ["b"], "anonymous jobs go to open nodes only");
        assert_eq!(capable_nodes(&j, &ns, NOW, &cfg()), 1);
        j.submitter = Some(Submitter { key: "alice".into(), at_ms: 0, signature: String::new(), pipeline: None });
        assert_eq!(plan(&j, &ns, &[], NOW, &cfg()).place.len(), 2);
        j.submitter = Some(Submitter { key: "bob".into(), at_ms: 0, signature: String::new(), pipeline: None });
        assert_eq!(plan(&j, &ns, &[], NOW, &cfg()).place, ["b"]);
    }

    #[test]
    fn a_job_only_busy_nodes_declined_still_fails_at_its_queue_timeout() {
        let j = job(1, |_| {});
        let queue = dur_ms(j.spec.timeouts.queue);
        let mut declined = ex("e1", "a", ExecState::Rejected);
        declined.updated_ms = NOW;
        let later = j.created_ms + queue + 1;
        let mut ns = nodes(&["a"]);
        ns[0].last_seen_ms = later;
        let p = plan(&j, &ns, &[declined], later, &cfg());
        let u = p.job.expect("the job ends");
        assert_eq!(u.state, JobState::Failed);
        assert!(u.error.unwrap().contains("timeouts.queue"));
    }

    #[test]
    fn an_execution_on_a_node_that_restarted_is_lost() {
        let j = job(1, |_| {});
        let mut e = ex("e1", "a", ExecState::Running);
        e.boot = Some(1);
        let mut ns = nodes(&["a", "b"]);
        ns[0].boot = Some(1);
        assert!(plan(&j, &ns, std::slice::from_ref(&e), NOW, &cfg()).lost.is_empty(), "same process");
        ns[0].boot = Some(2);
        let p = plan(&j, &ns, &[e], NOW, &cfg());
        assert_eq!(p.lost, ids(&["e1"]));
        assert!(p.reasons[&ids(&["e1"])[0]].contains("restarted"));
        assert_eq!(p.place, ["b"], "replaced on another node");
    }

    #[test]
    fn a_committed_execution_outlives_its_nodes_restart_and_disconnection_until_the_ttl() {
        let j = job(1, |s| s.redundancy.count = 2);
        let mut e = ex("e1", "a", ExecState::Committed);
        e.commitment = Some([1; 32]);
        e.boot = Some(1);
        let mut ns = nodes(&["a", "b"]);
        ns[0].boot = Some(2);
        let p = plan(&j, &ns, std::slice::from_ref(&e), NOW, &cfg());
        assert!(p.lost.is_empty(), "restarted: {:?}", p.reasons);
        ns[0].connected = false;
        let p = plan(&j, &ns, std::slice::from_ref(&e), NOW, &cfg());
        assert!(p.lost.is_empty(), "disconnected: {:?}", p.reasons);
        assert_eq!(p.place, ["b"], "a disconnected node is offered nothing");
        let later = NOW + cfg().node_ttl_ms + 1;
        let p = plan(&j, &ns, std::slice::from_ref(&e), later, &cfg());
        assert_eq!(p.lost, ids(&["e1"]), "gone for the ttl");
        // One still running is lost at once.
        let mut r = ex("e2", "a", ExecState::Running);
        r.boot = Some(1);
        let p = plan(&j, &ns, &[r], NOW, &cfg());
        assert_eq!(p.lost, ids(&["e2"]));
        assert!(p.reasons[&ids(&["e2"])[0]].contains("disconnected"), "{:?}", p.reasons);
    }

    fn gpu_node(id: &str, name: &str, driver: &str, exact: bool) -> NodeView {
        let mut n = node(id);
        n.gpu = Some(Gpu { name: name.into(), memory_bytes: 1 << 30, software: false, driver: driver.into(), exact });
        n
    }

    #[test]
    fn exact_gpu_jobs_go_only_to_gpus_that_run_exact_inference() {
        let ns = vec![node("a-cpu"), gpu_node("b-old", "X", "1", false), gpu_node("c-new", "X", "2", true)];
        let exact = job(3, |s| s.resources.gpu = true);
        let p = plan(&exact, &ns, &[], NOW, &cfg());
        assert_eq!(p.place, ["c-new"]);
        assert_eq!(capable_nodes(&exact, &ns, NOW, &cfg()), 1);
        // Fast mode takes any GPU (one execution: no group to keep).
        let fast = job(1, |s| {
            s.resources.gpu = true;
            s.nn.mode = NnMode::Fast;
        });
        assert_eq!(plan(&fast, &ns, &[], NOW, &cfg()).place, ["b-old"]);
        // Without a GPU requirement, exact or not, any node will do.
        let any = job(3, |_| {});
        assert_eq!(plan(&any, &ns, &[], NOW, &cfg()).place, ["a-cpu", "b-old", "c-new"]);
        // Unplaceable: said so, like any other requirement.
        let mut j = job(1, |s| s.resources.gpu = true);
        j.created_ms = NOW - 10 * 60 * 1000;
        let p = plan(&j, &[node("a-cpu"), gpu_node("b-old", "X", "1", false)], &[], NOW, &cfg());
        let err = p.job.and_then(|u| u.error).unwrap_or_default();
        assert!(err.contains("a gpu that runs exact inference (nn.mode: exact)"), "{err}");
        assert!(err.contains("2 short of resources"), "{err}");
    }

    #[test]
    fn fast_redundant_gpu_jobs_keep_to_one_gpu_model_and_driver() {
        let fast = job(2, |s| {
            s.resources.gpu = true;
            s.nn.mode = NnMode::Fast;
        });
        let ns = vec![
            gpu_node("a", "X", "1", true),
            gpu_node("b", "Y", "1", true),
            gpu_node("c", "Y", "1", false),
            gpu_node("d", "X", "2", true),
            node("e-cpu"),
        ];
        // The largest group: Y with driver 1.
        assert_eq!(plan(&fast, &ns, &[], NOW, &cfg()).place, ["b", "c"]);
        // A tie goes to the best ranked node's group: a (X, 1).
        let tie = vec![gpu_node("a", "X", "1", true), gpu_node("b", "Y", "1", true)];
        assert_eq!(plan(&fast, &tie, &[], NOW, &cfg()).place, ["a"]);
        // A placed execution fixes the group, even if another is larger.
        let running = ex("e1", "d", ExecState::Running);
        assert!(plan(&fast, &ns, std::slice::from_ref(&running), NOW, &cfg()).place.is_empty());
        let mut more = ns.clone();
        more.push(gpu_node("f", "X", "2", false));
        assert_eq!(plan(&fast, &more, std::slice::from_ref(&running), NOW, &cfg()).place, ["f"]);
        // So does a result whose execution ended; a failure does not.
        let done = with_result(ex("e1", "a", ExecState::Completed), 1);
        assert_eq!(plan(&fast, &more, std::slice::from_ref(&done), NOW, &cfg()).place, Vec::<String>::new());
        let failed = ex("e1", "a", ExecState::Failed);
        assert_eq!(plan(&fast, &ns, std::slice::from_ref(&failed), NOW, &cfg()).place, ["b", "c"]);
        // Exact jobs mix GPUs (and only exact ones).
        let exact = job(3, |s| s.resources.gpu = true);
        assert_eq!(plan(&exact, &ns, &[], NOW, &cfg()).place, ["a", "b", "d"]);
        // A job that started in a group with no room left says which.
        let mut j = fast.clone();
        j.spec.timeouts.total = Duration::from_secs(1);
        j.created_ms = NOW - 2000;
        let p = plan(&j, &ns, std::slice::from_ref(&running), NOW, &cfg());
        let err = p.job.and_then(|u| u.error).unwrap_or_default();
        assert!(err.contains(r#"the gpu "X" with driver "2" of the job's other executions"#), "{err}");
    }

    #[test]
    fn terminal_jobs_get_an_empty_plan() {
        for state in [JobState::Completed, JobState::Failed, JobState::Cancelled] {
            let mut j = job(1, |_| {});
            j.state = state;
            let p = plan(&j, &nodes(&["a"]), &[ex("e1", "a", ExecState::Running)], NOW + 10_000_000, &cfg());
            assert_eq!(p, Plan::default());
        }
    }

    #[test]
    fn a_new_job_asks_count_nodes_in_rank_order() {
        let j = job(3, |_| {});
        let p = plan(&j, &nodes(&["d", "b", "a", "c"]), &[], NOW, &cfg());
        assert_eq!(p.place, ["a", "b", "c"]);
        assert_eq!(p.extra, 0);
        assert!(p.job.is_none(), "stays queued until a node accepts");
        assert!(p.placements().all(|(_, extra)| !extra));
    }

    #[test]
    fn nodes_that_do_not_fit_are_skipped() {
        let j = job(1, |s| {
            s.constraints = vec!["zone=eu".parse().unwrap(), "!spot".parse().unwrap()];
            s.resources.slots = 2;
            s.resources.memory = Bytes(1 << 30);
            s.resources.gpu = true;
        });
        let good = || {
            let mut n = node("z-good");
            n.labels.insert("zone".into(), "eu".into());
            n.gpu = Some(Gpu { name: "sw".into(), memory_bytes: 0, software: true, driver: "d".into(), exact: true });
            n
        };
        let mut bad = Vec::new();
        for f in [
            (|n: &mut NodeView| n.compute = false) as fn(&mut NodeView),
            |n| n.labels.clear(),
            |n| {
                n.labels.insert("spot".into(), "1".into());
            },
            |n| n.slots_free = 1,
            |n| n.memory_bytes = (1 << 30) - 1,
            |n| n.gpu = None,
            |n| n.last_seen_ms = NOW - 10_001,
        ] {
            let mut n = good();
            n.id = format!("a-bad{}", bad.len());
            f(&mut n);
            bad.push(n);
        }
        let p = plan(&j, &bad, &[], NOW, &cfg());
        assert!(p.place.is_empty());
        bad.push(good());
        let p = plan(&j, &bad, &[], NOW, &cfg());
        assert_eq!(p.place, ["z-good"]);
    }

    #[test]
    fn never_two_executions_on_one_node() {
        let j = job(2, |_| {});
        let execs = [ex("e1", "a", ExecState::Failed), ex("e2", "b", ExecState::Running)];
        let p = plan(&j, &nodes(&["a", "b", "c"]), &execs, NOW, &cfg());
        assert_eq!(p.place, ["c"]);
        let p = plan(&j, &nodes(&["a", "b"]), &execs, NOW, &cfg());
        assert!(p.place.is_empty());
    }

    #[test]
    fn ranking_prefers_reputation_then_inputs_then_free_slots_then_id() {
        let j = job(1, |s| {
            s.task.inputs = vec![crate::spec::Input { cid: cid(7), path: None, mount: "/inputs".into() }];
        });
        let best = |ns: &[NodeView]| plan(&j, ns, &[], NOW, &cfg()).place;
        let mut a = node("a");
        let mut b = node("b");
        assert_eq!(best(&[b.clone(), a.clone()]), ["a"]);
        b.slots_free = 4;
        a.slots_free = 2;
        assert_eq!(best(&[a.clone(), b.clone()]), ["b"], "more free slots");
        a.holds.insert(cid(7));
        assert_eq!(best(&[a.clone(), b.clone()]), ["a"], "holds the input");
        a.stats = NodeStats { agreed: 100, dissented: 1, ..Default::default() };
        assert_eq!(best(&[a.clone(), b.clone()]), ["b"], "b has a clean record");
        b.stats = NodeStats { agreed: 1, lost: 1, ..Default::default() };
        assert_eq!(best(&[a.clone(), b.clone()]), ["a"], "1% dissent beats 33% lost");
    }

    #[test]
    fn gone_nodes_lose_their_executions_and_are_replaced() {
        let j = job(2, |_| {});
        let execs = [ex("e1", "a", ExecState::Running), ex("e2", "b", ExecState::Running)];
        let mut ns = nodes(&["a", "c"]);
        ns[0].last_seen_ms = NOW - 20_000;
        let p = plan(&j, &ns, &execs, NOW, &cfg());
        assert_eq!(p.lost, ids(&["e1", "e2"]));
        assert!(p.reasons[&ids(&["e1"])[0]].contains("node a gone"));
        assert_eq!(p.place, ["c"]);
        // Nothing is accepted any more: back to queued.
        let mut running = j.clone();
        running.state = JobState::Running;
        let p = plan(&running, &ns, &execs, NOW, &cfg());
        assert_eq!(p.job.map(|u| u.state), Some(JobState::Queued));
    }

    #[test]
    fn executions_past_the_timeout_are_lost_but_committed_ones_wait() {
        let j = job(2, |s| s.timeouts.execution = Duration::from_secs(60));
        let mut slow = ex("e1", "a", ExecState::Running);
        slow.started_ms = Some(NOW - 60_001);
        let mut done = ex("e2", "b", ExecState::Committed);
        done.started_ms = Some(NOW - 600_000);
        let p = plan(&j, &nodes(&["a", "b", "c"]), &[slow, done], NOW, &cfg());
        assert_eq!(p.lost, ids(&["e1"]));
        assert!(p.reasons[&ids(&["e1"])[0]].contains("execution timeout"));
        assert_eq!(p.place, ["c"]);
    }

    #[test]
    fn unanswered_bids_expire_without_spending_retries() {
        let j = job(1, |s| s.retries = 0);
        let mut bid = ex("e1", "a", ExecState::BidAsked);
        bid.created_ms = NOW - 30_001;
        let rejected = ex("e0", "z", ExecState::Rejected);
        let p = plan(&j, &nodes(&["a", "b", "z"]), &[bid, rejected], NOW, &cfg());
        assert_eq!(p.expired, ids(&["e1"]));
        assert_eq!(p.place, ["b"]);
        assert!(p.job.is_none());
    }

    #[test]
    fn failures_are_replaced_until_retries_run_out() {
        let j = job(1, |s| s.retries = 2);
        let mut execs = vec![ex("e1", "a", ExecState::Failed)];
        execs[0].error = Some("cannot fetch module".into());
        let p = plan(&j, &nodes(&["a", "b", "c", "d"]), &execs, NOW, &cfg());
        assert_eq!(p.place, ["b"]);
        execs.push(ex("e2", "b", ExecState::Lost));
        let p = plan(&j, &nodes(&["a", "b", "c", "d"]), &execs, NOW, &cfg());
        assert_eq!(p.place, ["c"]);
        execs.push(ex("e3", "c", ExecState::Failed));
        let p = plan(&j, &nodes(&["a", "b", "c", "d"]), &execs, NOW, &cfg());
        assert!(p.place.is_empty());
        let u = p.job.unwrap();
        assert_eq!(u.state, JobState::Failed);
        let e = u.error.unwrap();
        assert!(
            e.starts_with(
                "gave up after 3 failed or lost executions (retries: 2): e1 on a: cannot fetch module; e2 on b: lost"
            ),
            "{e}"
        );
    }

    #[test]
    fn the_total_timeout_fails_the_job_and_cancels_the_rest() {
        let j = job(2, |s| s.timeouts.total = Duration::from_secs(60));
        let execs = [ex("e1", "a", ExecState::Running), with_result(ex("e2", "b", ExecState::Revealed), 3)];
        let late = j.created_ms + 60_001;
        let mut ns = nodes(&["a", "b"]);
        ns.iter_mut().for_each(|n| n.last_seen_ms = late);
        let p = plan(&j, &ns, &execs, late, &cfg());
        let u = p.job.unwrap();
        assert_eq!(u.state, JobState::Failed);
        let e = u.error.unwrap();
        assert!(e.starts_with("timed out after 1m (timeouts.total): results so far: "), "{e}");
        assert_eq!(p.cancel, ids(&["e1"]));
    }

    #[test]
    fn with_no_node_a_job_queues_then_fails_naming_its_needs() {
        let j = job(1, |s| s.constraints = vec!["zone=mars".parse().unwrap()]);
        let late = j.created_ms + 5 * 60_000 + 1;
        let mut ns = nodes(&["a"]);
        ns[0].last_seen_ms = late;
        let p = plan(&j, &ns, &[], NOW, &cfg());
        assert_eq!(p, Plan::default());
        let p = plan(&j, &ns, &[], late, &cfg());
        let e = p.job.unwrap().error.unwrap();
        assert!(
            e.starts_with(
                "no node satisfies constraints [zone=mars], memory >= 256 MiB, 1 free slot(s) after waiting 5m \
                 (timeouts.queue) (of 1 known node(s): 0 gone, 0 not computing, 1 failing constraints"
            ),
            "{e}"
        );
        assert!(e.ends_with("add nodes or relax the spec)"), "{e}");
        // A job that already ran waits for nodes until the total timeout.
        let mut started = j.clone();
        started.started_ms = Some(NOW);
        let p = plan(&started, &ns, &[ex("e1", "a", ExecState::Lost)], late, &cfg());
        assert!(p.job.is_none());
    }

    #[test]
    fn reveals_wait_until_the_quorum_has_committed() {
        let j = job(3, |_| {});
        let ns = nodes(&["a", "b", "c"]);
        // Quorum 2 of 3: one commitment is not enough.
        let execs =
            [ex("e1", "a", ExecState::Committed), ex("e2", "b", ExecState::Running), ex("e3", "c", ExecState::Running)];
        let p = plan(&j, &ns, &execs, NOW, &cfg());
        assert!(p.reveal.is_empty());
        assert_eq!(p.job.map(|u| u.state), Some(JobState::Running));
        // Two are: the third may still be running.
        let execs = [execs[0].clone(), ex("e2", "b", ExecState::Committed), execs[2].clone()];
        let p = plan(&j, &ns, &execs, NOW, &cfg());
        assert_eq!(p.reveal, ids(&["e1", "e2"]));
        // All three in: only the two that can decide it, earliest
        // commitments first; the third is asked once the job is decided.
        let at = |mut e: Execution, ms: u64| {
            e.updated_ms = ms;
            e
        };
        let execs = [
            at(ex("e1", "a", ExecState::Committed), NOW - 10),
            at(ex("e2", "b", ExecState::Committed), NOW - 30),
            at(ex("e3", "c", ExecState::Committed), NOW - 20),
        ];
        assert_eq!(plan(&j, &ns, &execs, NOW, &cfg()).reveal, ids(&["e2", "e3"]));
        // One result in: one more can decide it.
        let execs = [with_result(ex("e1", "a", ExecState::Revealed), 1), execs[1].clone(), execs[2].clone()];
        assert_eq!(plan(&j, &ns, &execs, NOW, &cfg()).reveal, ids(&["e2"]));
        // Results so far count towards it: a tie reveals the next one at once.
        let execs = [
            with_result(ex("e1", "a", ExecState::Revealed), 1),
            with_result(ex("e2", "b", ExecState::Revealed), 2),
            ex("e3", "c", ExecState::Committed),
        ];
        let p = plan(&j, &ns, &execs, NOW, &cfg());
        assert_eq!(p.reveal, ids(&["e3"]));
        // A quorum of 3 waits for all three.
        let all = job(3, |s| s.redundancy.quorum = Some(3));
        let execs = [
            ex("e1", "a", ExecState::Committed),
            ex("e2", "b", ExecState::Committed),
            ex("e3", "c", ExecState::Running),
        ];
        assert!(plan(&all, &ns, &execs, NOW, &cfg()).reveal.is_empty());
    }

    #[test]
    fn agreement_completes_the_job() {
        let mut j = job(3, |_| {});
        j.state = JobState::Running;
        let execs = [
            with_result(ex("e1", "a", ExecState::Revealed), 1),
            with_result(ex("e2", "b", ExecState::Revealed), 2),
            with_result(ex("e3", "c", ExecState::Revealed), 1),
        ];
        let p = plan(&j, &nodes(&["a", "b", "c"]), &execs, NOW, &cfg());
        let u = p.job.unwrap();
        assert_eq!(u.state, JobState::Completed);
        assert_eq!(u.result, Some(cid(1)));
        assert_eq!(u.agreeing, ids(&["e1", "e3"]));
        assert_eq!(u.dissenting, ids(&["e2"]));
        let mut done = j.clone();
        u.apply_to(&mut done, NOW);
        assert_eq!((done.state, done.result, done.updated_ms), (JobState::Completed, Some(cid(1)), NOW));
    }

    #[test]
    fn plans_tell_node_stats() {
        let j = job(3, |_| {});
        let execs = [
            with_result(ex("e1", "a", ExecState::Revealed), 1),
            with_result(ex("e2", "b", ExecState::Revealed), 2),
            with_result(ex("e3", "c", ExecState::Revealed), 1),
            ex("e4", "d", ExecState::Running),
        ];
        let p = plan(&j, &nodes(&["a", "b", "c"]), &execs, NOW, &cfg());
        let s = p.stats(&execs);
        assert_eq!(s["a"], NodeStats { agreed: 1, ..Default::default() });
        assert_eq!(s["b"], NodeStats { dissented: 1, ..Default::default() });
        assert_eq!(s["d"], NodeStats { lost: 1, ..Default::default() });
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn an_unassailable_majority_completes_without_the_stragglers() {
        let j = job(3, |_| {});
        let execs = [
            with_result(ex("e1", "a", ExecState::Revealed), 1),
            with_result(ex("e2", "b", ExecState::Completed), 1),
            ex("e3", "c", ExecState::Running),
        ];
        let p = plan(&j, &nodes(&["a", "b", "c"]), &execs, NOW, &cfg());
        assert_eq!(p.job.unwrap().state, JobState::Completed);
        // Left to finish: the caller judges it when it commits.
        assert!(p.cancel.is_empty());
    }

    #[test]
    fn a_tie_asks_for_an_extra_execution() {
        let mut j = job(2, |s| s.redundancy.max_extra = 1);
        j.state = JobState::Running;
        let mut execs = vec![
            with_result(ex("e1", "a", ExecState::Revealed), 1),
            with_result(ex("e2", "b", ExecState::Revealed), 2),
        ];
        let ns = nodes(&["a", "b", "c", "d"]);
        let p = plan(&j, &ns, &execs, NOW, &cfg());
        assert_eq!(p.place, ["c"]);
        assert_eq!(p.extra, 1);
        assert_eq!(p.placements().collect::<Vec<_>>(), [(&"c".to_string(), true)]);
        let u = p.job.unwrap();
        assert_eq!((u.state, u.extra_used), (JobState::Running, 1));
        u.apply_to(&mut j, NOW);

        // Planning again before the bid is stored would ask again: the
        // caller stores it. With it stored, nothing more is placed.
        let mut c = ex("e3", "c", ExecState::Running);
        c.extra = true;
        execs.push(c);
        let p = plan(&j, &ns, &execs, NOW, &cfg());
        assert!(p.place.is_empty() && p.job.is_none() && p.reveal.is_empty());
        execs[2] = with_result(ex("e3", "c", ExecState::Revealed), 2);
        let u = plan(&j, &ns, &execs, NOW, &cfg()).job.unwrap();
        assert_eq!((u.state, u.result), (JobState::Completed, Some(cid(2))));
        assert_eq!(u.dissenting, ids(&["e1"]));
    }

    #[test]
    fn a_quorum_is_final_when_no_node_could_add_to_it() {
        let mut j = job(4, |s| s.redundancy.quorum = Some(2));
        j.state = JobState::Running;
        let execs =
            [with_result(ex("e1", "a", ExecState::Revealed), 1), with_result(ex("e2", "b", ExecState::Revealed), 1)];
        let p = plan(&j, &nodes(&["a", "b"]), &execs, NOW, &cfg());
        assert_eq!(p.job.unwrap().state, JobState::Completed);
        // Two more nodes could make it 2-2: run them first.
        let p = plan(&j, &nodes(&["a", "b", "c", "d"]), &execs, NOW, &cfg());
        assert_eq!(p.place, ["c", "d"]);
        assert!(p.job.is_none());
    }

    #[test]
    fn extras_without_nodes_keep_the_extra_budget() {
        let mut j = job(2, |s| s.redundancy.max_extra = 1);
        j.state = JobState::Running;
        let execs =
            [with_result(ex("e1", "a", ExecState::Revealed), 1), with_result(ex("e2", "b", ExecState::Revealed), 2)];
        let p = plan(&j, &nodes(&["a", "b"]), &execs, NOW, &cfg());
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn the_timeout_says_what_the_job_waited_for() {
        let j = job(3, |s| s.timeouts.total = Duration::from_secs(60));
        let late = j.created_ms + 60_001;
        let mut ns = nodes(&["a"]);
        ns[0].last_seen_ms = late;
        let p = plan(&j, &ns, &[ex("e1", "a", ExecState::Committed)], late, &cfg());
        let e = p.job.unwrap().error.unwrap();
        assert!(
            e.starts_with(
                "timed out after 1m (timeouts.total): 1 execution(s) committed, waiting for more results before \
                 revealing; no node satisfies memory >= 256 MiB, 1 free slot(s) for 2 more execution(s) (of 1 known \
                 node(s): 0 gone, 0 not computing, 0 failing constraints, 0 short of resources, 1 already tried"
            ),
            "{e}"
        );
    }

    #[test]
    fn no_consensus_fails_listing_every_result() {
        let j = job(2, |_| {});
        let execs =
            [with_result(ex("e1", "a", ExecState::Revealed), 1), with_result(ex("e2", "b", ExecState::Revealed), 2)];
        let p = plan(&j, &nodes(&["a", "b", "c"]), &execs, NOW, &cfg());
        let e = p.job.unwrap().error.unwrap();
        assert!(e.starts_with("no consensus: "), "{e}");
        assert!(e.contains(&format!("{} (e1 on a)", cid(1))) && e.contains(&format!("{} (e2 on b)", cid(2))), "{e}");
    }

    #[test]
    fn accepted_work_makes_the_job_running() {
        let j = job(1, |_| {});
        let p = plan(&j, &nodes(&["a"]), &[ex("e1", "a", ExecState::Accepted)], NOW, &cfg());
        let mut j2 = j.clone();
        p.job.unwrap().apply_to(&mut j2, NOW);
        assert_eq!((j2.state, j2.started_ms), (JobState::Running, Some(NOW)));
    }

    fn arb_state() -> impl Strategy<Value = ExecState> {
        proptest::sample::select(ExecState::ALL.to_vec())
    }

    prop_compose! {
        fn arb_case()(
            count in 1u32..5,
            max_extra in 0u32..3,
            retries in 0u32..3,
            node_count in 0usize..8,
            execs in proptest::collection::vec((0usize..8, arb_state(), 0u8..3, any::<bool>()), 0..8),
            seen in proptest::collection::vec(0u64..30_000, 8),
            age in 0u64..2_000_000,
        ) -> (Job, Vec<NodeView>, Vec<Execution>, u64) {
            let j = job(count, |s| { s.redundancy.max_extra = max_extra; s.retries = retries; });
            let ns: Vec<NodeView> = (0..node_count).map(|i| {
                let mut n = node(&format!("n{i}"));
                n.last_seen_ms = NOW - seen[i];
                n
            }).collect();
            let execs = execs.into_iter().enumerate().map(|(i, (n, state, c, extra))| {
                let mut e = ex(&format!("e{i}"), &format!("n{n}"), state);
                if state.has_result() { e.result = Some(cid(c)); }
                e.extra = extra;
                e
            }).collect();
            (j, ns, execs, j_created(age))
        }
    }

    fn j_created(age: u64) -> u64 {
        NOW - 1000 + age
    }

    /// How a simulated node behaves.
    #[derive(Debug, Clone, Copy)]
    enum Behaviour {
        Honest,
        /// Answers with its own wrong result.
        Liar,
        Rejects,
        Fails,
        /// Vanishes once it has accepted.
        Vanishes,
        /// Never answers a bid.
        Silent,
    }

    fn arb_behaviour() -> impl Strategy<Value = Behaviour> {
        use Behaviour::*;
        prop_oneof![4 => Just(Honest), 1 => Just(Liar), 1 => Just(Rejects), 1 => Just(Fails), 1 => Just(Vanishes), 1 => Just(Silent)]
    }

    proptest! {
        /// Runs jobs to the end against nodes that misbehave in every way:
        /// every job ends before its total timeout, never uses a node twice,
        /// and a completed job's result has a quorum of distinct nodes.
        #[test]
        fn simulated_jobs_always_end(
            count in 1u32..5,
            max_extra in 0u32..3,
            retries in 0u32..3,
            quorum_less in 0u32..2,
            behaviours in proptest::collection::vec(arb_behaviour(), 0..9),
        ) {
            let mut j = job(count, |s| {
                s.redundancy.max_extra = max_extra;
                s.retries = retries;
                s.redundancy.quorum = Some((s.redundancy.count / 2 + 1).saturating_sub(quorum_less).max(1));
            });
            let mut ns: Vec<NodeView> = (0..behaviours.len()).map(|i| node(&format!("n{i}"))).collect();
            let mut execs: Vec<Execution> = Vec::new();
            let mut now = j.created_ms;
            let step = 5_000;
            let mut steps = 0;
            while !j.state.is_terminal() {
                steps += 1;
                prop_assert!(now <= j.created_ms + 31 * 60_000, "job still {} after its total timeout", j.state);
                for (i, n) in ns.iter_mut().enumerate() {
                    let gone = matches!(behaviours[i], Behaviour::Vanishes)
                        && execs.iter().any(|e| e.node == n.id && e.state != ExecState::BidAsked);
                    if !gone { n.last_seen_ms = now; }
                }
                let p = plan(&j, &ns, &execs, now, &cfg());
                for e in execs.iter_mut() {
                    if p.lost.contains(&e.id) { e.state = ExecState::Lost; }
                    if p.expired.contains(&e.id) { e.state = ExecState::Rejected; }
                    if p.cancel.contains(&e.id) { e.state = ExecState::Failed; }
                    if p.reveal.contains(&e.id) { e.state = ExecState::Revealed; }
                }
                if let Some(u) = &p.job { u.apply_to(&mut j, now); }
                for (k, (n, extra)) in p.placements().enumerate() {
                    let id = format!("e{:04}{k}", steps);
                    execs.push(Execution::new(id.parse().unwrap(), j.id.clone(), n.clone(), extra, now));
                }
                // Never two executions of the job on one node, but for bids
                // the node declined before it was asked again.
                let mut per_node: BTreeMap<&str, Vec<&Execution>> = BTreeMap::new();
                for e in &execs { per_node.entry(e.node.as_str()).or_default().push(e); }
                for (n, es) in &per_node {
                    let before_last = &es[..es.len() - 1];
                    prop_assert!(before_last.iter().all(|e| e.state == ExecState::Rejected),
                        "node {} has two executions that it did not decline", n);
                }
                // Nodes move their executions on.
                for e in execs.iter_mut() {
                    let i: usize = e.node[1..].parse().unwrap();
                    e.state = match (behaviours[i], e.state) {
                        (Behaviour::Rejects, ExecState::BidAsked) => ExecState::Rejected,
                        (Behaviour::Silent, ExecState::BidAsked) => ExecState::BidAsked,
                        (_, ExecState::BidAsked) => ExecState::Accepted,
                        (_, ExecState::Accepted) => { e.started_ms = Some(now); ExecState::Running }
                        (Behaviour::Fails, ExecState::Running) => ExecState::Failed,
                        (Behaviour::Vanishes, ExecState::Running) => ExecState::Running,
                        (b, ExecState::Running) => {
                            e.result = Some(cid(if matches!(b, Behaviour::Liar) { 100 + i as u8 } else { 1 }));
                            ExecState::Committed
                        }
                        (_, s) => s,
                    };
                }
                now += step;
            }
            if j.state == JobState::Completed {
                // Each liar has its own answer: one can only win alone.
                prop_assert!(j.result == Some(cid(1)) || j.spec.quorum() == 1);
                let agreeing: BTreeSet<&str> = execs.iter()
                    .filter(|e| e.state == ExecState::Revealed && e.result == j.result)
                    .map(|e| e.node.as_str()).collect();
                prop_assert!(agreeing.len() >= j.spec.quorum() as usize);
            } else {
                prop_assert!(j.error.is_some());
            }
        }

        #[test]
        fn never_places_twice_on_a_node((j, ns, execs, now) in arb_case()) {
            let p = plan(&j, &ns, &execs, now, &cfg());
            let used: BTreeSet<&str> =
                execs.iter().filter(|e| e.state != ExecState::Rejected).map(|e| e.node.as_str()).collect();
            let placed: BTreeSet<&str> = p.place.iter().map(String::as_str).collect();
            prop_assert_eq!(placed.len(), p.place.len());
            prop_assert!(placed.is_disjoint(&used));
            // A node that declined is asked again only after its backoff.
            for n in &placed {
                let refusals: Vec<&Execution> = execs.iter().filter(|e| e.node == *n).collect();
                if let Some(last) = refusals.iter().map(|e| e.updated_ms).max() {
                    let wait = cfg().decline_backoff(u32::try_from(refusals.len()).unwrap());
                    prop_assert!(now.saturating_sub(last) >= wait, "{} asked again too soon", n);
                }
            }
            prop_assert!(p.extra <= p.place.len());
            let s = &j.spec.redundancy;
            prop_assert!(p.place.len() <= (s.count + s.max_extra) as usize);
        }

        #[test]
        fn plans_do_not_depend_on_input_order((j, ns, execs, now) in arb_case()) {
            let p = plan(&j, &ns, &execs, now, &cfg());
            let mut rns = ns.clone();
            rns.reverse();
            let mut rex = execs.clone();
            rex.reverse();
            prop_assert_eq!(plan(&j, &rns, &rex, now, &cfg()), p);
        }

        #[test]
        fn plans_only_touch_live_executions((j, ns, execs, now) in arb_case()) {
            let p = plan(&j, &ns, &execs, now, &cfg());
            let live: BTreeSet<&ExecId> = execs.iter().filter(|e| e.state.is_live()).map(|e| &e.id).collect();
            for id in p.lost.iter().chain(&p.expired).chain(&p.cancel).chain(&p.reveal) {
                prop_assert!(live.contains(id), "{} is not live", id);
            }
            for id in p.lost.iter().chain(&p.expired).chain(&p.cancel) {
                prop_assert!(p.reasons.contains_key(id));
            }
            // No answer is asked for before the quorum has committed,
            // unless nothing else can commit any more.
            if !p.reveal.is_empty() {
                let ended: BTreeSet<&ExecId> = p.lost.iter().chain(&p.expired).chain(&p.cancel).collect();
                let counted = execs.iter()
                    .filter(|e| !ended.contains(&e.id))
                    .filter(|e| e.state == ExecState::Committed || (e.state.has_result() && e.result.is_some()))
                    .count();
                let pre_commit = execs.iter().filter(|e| !ended.contains(&e.id)).any(|e| {
                    matches!(e.state, ExecState::BidAsked | ExecState::Accepted | ExecState::Running)
                });
                prop_assert!(counted >= j.spec.quorum() as usize || (!pre_commit && p.place.is_empty()));
                // And no more than could decide it, unless the leader has
                // its votes (then only pending answers could tie it).
                let results: Vec<(ExecId, NodeId, Cid)> = execs.iter()
                    .filter(|e| !ended.contains(&e.id) && e.state.has_result())
                    .filter_map(|e| e.result.map(|c| (e.id.clone(), e.node.clone(), c)))
                    .collect();
                let lead = agreement::lead(&results);
                let quorum = j.spec.quorum() as usize;
                if counted >= quorum && lead < quorum {
                    prop_assert!(p.reveal.len() <= quorum - lead);
                }
            }
            if let Some(u) = &p.job {
                prop_assert_eq!(u.state == JobState::Completed, u.result.is_some());
                prop_assert_eq!(u.state == JobState::Failed, u.error.is_some());
                if u.state.is_terminal() { prop_assert!(p.place.is_empty() && p.reveal.is_empty()); }
                prop_assert!(u.extra_used <= j.spec.redundancy.max_extra);
            }
        }
    }
}
