//! The requester: a loop that asks the pure planner what each active job
//! needs and carries the plan out. Every state change is written to the
//! node's database before the message that depends on it is sent, so a
//! requester killed at any point resumes from what it wrote: executions it
//! had asked for are found again through their commitments, lost ones time
//! out and are placed elsewhere.

use shoal_scheduler::receipt::Signed as _;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use shoal_scheduler::db::Step;
use shoal_scheduler::model::{ExecId, ExecState, Execution, Job, JobId, JobState, NodeStats, NodeView};
use shoal_scheduler::net::proto::{Request, Response};
use shoal_scheduler::placement::{self, Plan};
use shoal_scheduler::{commit, model, receipt};
use shoal_storage::Cid;

use super::{fetch, Node, BUSY};

/// How often every active job is planned even if nothing happened to it
/// (timeouts, nodes gone quiet). Events plan the jobs they touch at once.
pub const TICK: Duration = Duration::from_secs(1);

/// Runs the scheduling loop forever: on every kick it plans the jobs that
/// changed (so a busy requester does not rescan every job per event), and
/// every [`TICK`] all active jobs (timeouts, nodes that went away).
pub async fn run(node: Arc<Node>) {
    let n = node.clone();
    match tokio::task::spawn_blocking(move || resume_bids(&n)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot resume the bids an earlier process sent: {e:#}"),
        Err(e) => tracing::warn!("resuming bids failed: {e}"),
    }
    let mut full = tokio::time::interval(TICK);
    loop {
        let everything = tokio::select! {
            _ = node.kick.notified() => node.full_pass.swap(false, std::sync::atomic::Ordering::Relaxed),
            _ = full.tick() => true,
        };
        // A full pass places what fits too.
        let waiting = node.capacity_pass.swap(false, std::sync::atomic::Ordering::Relaxed) && !everything;
        // A full pass reads and writes every active job (up to 100,000):
        // on a blocking thread, so that it never holds an async worker the
        // API and the network need meanwhile. A pass over the few jobs an
        // event touched stays here: a thread hand-off would cost each job
        // more than the pass itself.
        let ran = if everything || waiting {
            let n = node.clone();
            tokio::task::spawn_blocking(move || if everything { tick(&n, true) } else { place_waiting(&n) })
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("the scheduling pass panicked: {e}")))
        } else {
            Ok(())
        };
        let ran = ran.and_then(|()| tick(&node, false));
        if let Err(e) = ran {
            tracing::warn!("scheduling pass failed: {e:#}");
        }
    }
}

/// The views placement sees: every peer heard from, plus ourselves.
pub fn views(node: &Node) -> Vec<NodeView> {
    let now = node.now();
    // Without the records, every node looks new: say so rather than
    // silently ranking by nothing.
    let stats = node.db().node_stats().unwrap_or_else(|e| {
        tracing::warn!("cannot read the nodes' records, ranking without them: {e}");
        Default::default()
    });
    let mut out = Vec::new();
    let me = node.peer.to_string();
    let mut push = |id: String,
                    a: &shoal_scheduler::net::proto::Announcement,
                    seen: u64,
                    ttl_ms: Option<u64>,
                    connected: bool,
                    delta: i64| {
        let mut capacity = a.capacity.clone();
        // A node that works only for other requesters computes
        // nothing for this one.
        if !a.allow.is_empty() && !a.allow.contains(&me) {
            capacity.compute = false;
        }
        // The slots it has now, as far as this requester knows.
        capacity.slots_free = (i64::from(a.slots_free) + delta).clamp(0, i64::from(a.slots_total)) as u32;
        out.push(NodeView {
            stats: stats.get(&id).cloned().unwrap_or_default(),
            id,
            capacity,
            last_seen_ms: seen,
            holds: Default::default(),
            boot: Some(a.boot),
            connected,
            ttl_ms,
        });
    };
    push(node.peer.to_string(), &node.announcement(), now, None, true, 0);
    let delta = node.slot_delta.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let bids = node.bids_in_flight();
    for (peer, v) in node.views.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let room = delta.get(peer).copied().unwrap_or(0) - bids.get(peer).copied().unwrap_or(0);
        push(v.id.clone(), &v.announcement, v.last_seen_ms, v.ttl_ms, v.connected, room);
    }
    out
}

/// Sends again the bids an earlier process of this requester sent and
/// never heard answered: their answers went to a process that is gone, and
/// the execution would otherwise wait out the bid timeout. A node answers
/// a repeated bid as it did the first (an execution under way stays
/// accepted), so nothing runs twice.
fn resume_bids(node: &Arc<Node>) -> anyhow::Result<()> {
    type Sent = (String, u32, Option<shoal_scheduler::model::Submitter>);
    let mut specs: std::collections::HashMap<JobId, Sent> = Default::default();
    for e in node.db().bids_outstanding()? {
        let Some(peer) = peer_of(&e) else { continue };
        if !specs.contains_key(&e.job) {
            let Some(job) = node.db().job(&e.job)? else { continue };
            specs.insert(e.job.clone(), (serde_json::to_string(&job.spec)?, job.spec.resources.slots, job.submitter));
        }
        let Some((spec, slots, submitter)) = specs.get(&e.job).cloned() else { continue };
        tracing::debug!(job = %e.job, exec = %e.id, node = %e.node, "bid sent again after a restart");
        node.bid_sent(e.id.as_str(), peer, i64::from(slots));
        let (n, job_id) = (node.clone(), e.job.to_string());
        tokio::runtime::Handle::current().spawn(async move { bid_and_run(n, peer, e, job_id, spec, submitter).await });
    }
    Ok(())
}

/// Most active jobs one capacity pass looks at.
pub const MAX_WAITING_PASS: usize = 4096;
/// Active jobs read at once by a capacity pass.
const WAITING_PAGE: usize = 32;

/// Places waiting jobs, oldest first, while any node has room: after a
/// slot frees, the backlog moves at once rather than at the next full
/// pass. Jobs ahead that need nothing cost one look each; the pass stops
/// when no live node has a free slot left.
fn place_waiting(node: &Arc<Node>) -> anyhow::Result<()> {
    let mut views = views(node);
    let now = node.now();
    let room = |views: &[NodeView]| {
        views
            .iter()
            .filter(|v| v.compute && v.connected && v.alive(now, node.placement.node_ttl_ms))
            .map(|v| u64::from(v.slots_free))
            .sum::<u64>()
    };
    if room(&views) == 0 {
        return Ok(());
    }
    // Set again by any job this pass leaves wanting (and kept if it stops
    // before the end of the queue).
    node.backlog.store(false, std::sync::atomic::Ordering::Relaxed);
    let filters = holds_filters(node);
    // A page at a time: the pass usually stops within the first.
    let mut seen = 0;
    while seen < MAX_WAITING_PASS {
        let page = node.db().active_jobs_oldest(WAITING_PAGE, seen)?;
        let n = page.len();
        for job in page {
            plan_one(node, job, &mut views, &filters, now)?;
            if room(&views) == 0 {
                node.backlog.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
        }
        if n < WAITING_PAGE {
            return Ok(());
        }
        seen += n;
    }
    node.backlog.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

fn tick(node: &Arc<Node>, everything: bool) -> anyhow::Result<()> {
    if everything {
        leftovers(node)?;
    }
    let dirty: Vec<JobId> = node.dirty.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
    let jobs = if everything {
        node.db().active_jobs()?
    } else {
        let mut jobs = Vec::with_capacity(dirty.len());
        for id in &dirty {
            if let Some(j) = node.db().job(id)? {
                if !j.state.is_terminal() {
                    jobs.push(j);
                }
            }
        }
        jobs
    };
    if jobs.is_empty() {
        return Ok(());
    }
    let mut views = views(node);
    let filters = holds_filters(node);
    let now = node.now();
    for job in jobs {
        plan_one(node, job, &mut views, &filters, now)?;
    }
    Ok(())
}

/// Plans one job against `views` and carries the plan out (`views` are
/// updated with the slots it takes).
fn plan_one(
    node: &Arc<Node>,
    job: Job,
    views: &mut Vec<NodeView>,
    filters: &std::collections::HashMap<String, Arc<shoal_scheduler::holds::Holds>>,
    now: u64,
) -> anyhow::Result<()> {
    let execs = node.db().executions(&job.id)?;
    // Which of its inputs each node holds, as the nodes announce it.
    for v in views.iter_mut() {
        v.holds = match filters.get(&v.id) {
            Some(h) => job.spec.task.inputs.iter().map(|i| i.cid).filter(|c| h.contains(c)).collect(),
            None => Default::default(),
        };
    }
    // Just after a restart we have heard from nobody yet: give the
    // nodes running our executions one node ttl to announce themselves
    // before placement counts them gone.
    if now < node.started_ms + node.placement.node_ttl_ms {
        for e in execs.iter().filter(|e| e.state.is_live()) {
            if !views.iter().any(|v| v.id == e.node) {
                views.push(placeholder(&e.node, node.started_ms));
            }
        }
    }
    // What the submitter's quota of busy executions leaves this job.
    let max_new = match node.quotas.executions {
        None => usize::MAX,
        Some(q) => {
            let busy = node.db().busy_executions_of(job.submitter.as_ref().map(|s| s.key.as_str()))?;
            usize::try_from(u64::from(q).saturating_sub(busy)).unwrap_or(usize::MAX)
        }
    };
    let plan = placement::plan_within(&job, views, &execs, now, &node.placement, max_new);
    // Left wanting: a freed slot should plan it again at once.
    let live = execs.iter().filter(|e| e.state.is_live() || e.state.has_result()).count();
    if plan.job.as_ref().is_none_or(|u| !u.state.is_terminal())
        && live + plan.place.len() < job.spec.redundancy.count as usize
    {
        node.backlog.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    carry_out(node, job, execs, plan, views)
}

/// Executions still live after their job ended (left to finish when the
/// job completed at its quorum; or left over by a requester that stopped
/// half-way): a committed or revealed one of a completed job is judged,
/// one that has not committed within `timeouts.execution` (or whose job
/// failed) is stopped.
fn leftovers(node: &Arc<Node>) -> anyhow::Result<()> {
    let now = node.now();
    for mut e in node.db().live_executions_of_ended_jobs()? {
        let Some(job) = node.db().job(&e.job)? else { continue };
        match (job.state, job.result, e.state) {
            (JobState::Completed, Some(agreed), ExecState::Committed | ExecState::Revealed) => {
                // Committed (or revealed) before the job completed: the
                // requester stopped before judging it. After: it may have
                // seen the result.
                let credit = e.updated_ms <= job.updated_ms;
                spawn_late_reveal(node, e, agreed, credit);
            }
            (_, _, ExecState::Revealed) => {}
            (JobState::Completed, _, _)
                if now.saturating_sub(e.started_ms.unwrap_or(e.created_ms))
                    <= u64::try_from(job.spec.timeouts.execution.as_millis()).unwrap_or(u64::MAX) => {}
            (state, _, _) => {
                let read = e.state;
                cancel_live(node, std::slice::from_ref(&e));
                e.state = ExecState::Failed;
                e.error = Some(if state == JobState::Completed {
                    "not needed: the job completed, and it had not committed within timeouts.execution".into()
                } else {
                    format!("not needed: the job {state}")
                });
                e.updated_ms = now;
                node.db().update_execution_from(&e, read)?;
            }
        }
    }
    Ok(())
}

/// The holds filters nodes announced (this one's included), as decoded
/// when they arrived.
pub fn holds_filters(node: &Node) -> std::collections::HashMap<String, Arc<shoal_scheduler::holds::Holds>> {
    let mut out = std::collections::HashMap::new();
    if let Some((_, own)) = &*node.holds.lock().unwrap_or_else(|p| p.into_inner()) {
        out.insert(node.peer.to_string(), own.clone());
    }
    for v in node.views.lock().unwrap_or_else(|p| p.into_inner()).values() {
        if let Some(h) = &v.holds {
            out.insert(v.id.clone(), h.clone());
        }
    }
    out
}

/// A node we have not heard from since we started: alive until the ttl,
/// offered no new work.
fn placeholder(id: &str, since_ms: u64) -> NodeView {
    NodeView {
        id: id.to_owned(),
        capacity: Default::default(),
        last_seen_ms: since_ms,
        holds: Default::default(),
        stats: Default::default(),
        boot: None,
        connected: true,
        ttl_ms: None,
    }
}

/// The CID of a stored job's spec (see [`receipt::job_cid`]).
fn job_cid(node: &Node, job: &JobId) -> Option<Cid> {
    node.db().job(job).ok().flatten().map(|j| receipt::job_cid(&j.spec))
}

fn claim(node: &Node, key: String) -> bool {
    node.inflight.lock().unwrap_or_else(|p| p.into_inner()).insert(key)
}

fn release(node: &Node, key: &str) {
    node.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
}

fn peer_of(e: &Execution) -> Option<PeerId> {
    e.node.parse().ok()
}

/// Carries out `plan` for `job`: every write it implies (ended executions,
/// track records, the job, new executions) in one transaction, then the
/// messages that depend on them (cancels, bids, reveals, the completion).
/// If an execution changed since the plan was made, nothing is written and
/// the job is planned again.
fn carry_out(
    node: &Arc<Node>,
    mut job: Job,
    execs: Vec<Execution>,
    plan: Plan,
    views: &mut [NodeView],
) -> anyhow::Result<()> {
    let now = node.now();
    let mut step = Step::default();
    // Ended executions (a job that reached agreement keeps its other
    // executions running: `complete` and `handle` judge each when it
    // commits, so that a node whose answer differs is still recorded).
    let mut ended = Vec::new();
    for (ids, state) in
        [(&plan.lost, ExecState::Lost), (&plan.expired, ExecState::Rejected), (&plan.cancel, ExecState::Failed)]
    {
        for id in ids {
            let Some(live) = execs.iter().find(|e| &e.id == id && e.state.is_live()) else { continue };
            let mut e = live.clone();
            e.state = state;
            e.updated_ms = now;
            e.error = Some(plan.reasons.get(id).cloned().unwrap_or_else(|| format!("marked {state} by the scheduler")));
            step.ended.push((e, live.state));
            ended.push(live.clone());
        }
    }
    let completing = match &plan.job {
        Some(u) if u.state == JobState::Completed => u.result.map(|r| (r, u.agreeing.clone(), u.dissenting.clone())),
        _ => None,
    };
    // The agreement is counted by `complete`, with the job's completion.
    step.stats = if completing.is_some() { plan.loss_stats(&execs) } else { plan.stats(&execs) };
    let mut job_failed = false;
    if let (Some(update), None) = (&plan.job, &completing) {
        update.apply_to(&mut job, now);
        job_failed = update.state == JobState::Failed;
        step.job = Some(job.clone());
    }
    let mut bids = Vec::new();
    if !job.state.is_terminal() {
        // Bids to other nodes go out before this node starts its own
        // execution, which would otherwise hold a core while they wait.
        let mut placements: Vec<(&model::NodeId, bool)> = plan.placements().collect();
        let me = node.peer.to_string();
        placements.sort_by_key(|(target, _)| **target == me);
        for (target, extra) in placements {
            let Ok(peer) = target.parse::<PeerId>() else { continue };
            let mut boot = None;
            if let Some(v) = views.iter_mut().find(|v| &v.id == target) {
                v.slots_free = v.slots_free.saturating_sub(job.spec.resources.slots);
                boot = v.boot;
            }
            let mut e =
                Execution::new(ExecId::from_parts(now, rand::random()), job.id.clone(), target.clone(), extra, now);
            // Which process of the node is asked: another one answering
            // later means it restarted and forgot this (see placement).
            e.boot = boot;
            step.placed.push(e.clone());
            bids.push((peer, e));
        }
    }
    if !node.db().apply_step(&step)? {
        // A report landed since the plan was made: plan again with it.
        node.mark(&job.id);
        node.notify_changed();
        return Ok(());
    }
    for (peer, e) in &bids {
        node.bid_sent(e.id.as_str(), *peer, i64::from(job.spec.resources.slots));
    }

    // Written: now the messages and metrics that depend on it.
    let lost = step.ended.iter().filter(|(e, _)| e.state == ExecState::Lost).count();
    node.metrics.executions_lost.inc_by(lost as u64);
    cancel_live(node, &ended);
    if job_failed {
        node.metrics.jobs_failed.inc();
        cancel_live(node, &execs);
        failure_receipt(node, &job, execs.iter().filter(|e| e.commit_signature.is_some()).cloned().collect());
    }
    if let Some((result, agreeing, dissenting)) = completing {
        complete(node, &job, result, agreeing, dissenting);
    }
    if !job.state.is_terminal() {
        if !bids.is_empty() {
            let spec = serde_json::to_string(&job.spec)?;
            for (peer, e) in bids {
                let n = node.clone();
                let (spec, job_id, submitter) = (spec.clone(), job.id.to_string(), job.submitter.clone());
                tracing::debug!(job = %job.id, exec = %e.id, node = %e.node, "placing");
                tokio::spawn(async move { bid_and_run(n, peer, e, job_id, spec, submitter).await });
            }
        }
        for id in &plan.reveal {
            let Some(e) = execs.iter().find(|e| &e.id == id) else { continue };
            let Some(peer) = peer_of(e) else { continue };
            if !claim(node, format!("reveal:{id}")) {
                continue;
            }
            let n = node.clone();
            let e = e.clone();
            tokio::spawn(async move {
                let key = format!("reveal:{}", e.id);
                let job = e.job.clone();
                reveal(&n, peer, e).await;
                release(&n, &key);
                n.mark(&job);
            });
        }
    }
    if !step.is_empty() {
        node.notify_changed();
    }
    Ok(())
}

async fn bid_and_run(
    node: Arc<Node>,
    peer: PeerId,
    e: Execution,
    job: String,
    spec: String,
    submitter: Option<shoal_scheduler::model::Submitter>,
) {
    let exec = e.id.to_string();
    // An accepted bid is already running (see `Request::Bid`).
    let outcome = match node.send(peer, Request::Bid { job, exec: exec.clone(), spec, submitter }).await {
        Ok(Response::Bid { accepted: true, .. }) => Ok(()),
        Ok(Response::Bid { accepted: false, reason }) => {
            Err((ExecState::Rejected, reason.unwrap_or_else(|| "bid rejected".into())))
        }
        Ok(Response::Error { message }) => Err((ExecState::Rejected, message)),
        Ok(other) => Err((ExecState::Rejected, format!("unexpected answer to bid: {other:?}"))),
        // Unreachable, or no answer in time. The bid may still have reached
        // the node and started it: tell it to stop (best effort; a later
        // commitment for a rejected execution is refused anyway).
        Err(err) => {
            if matches!(err, shoal_scheduler::net::Error::Unreachable { .. }) {
                node.unreachable(peer);
            }
            let n = node.clone();
            let exec = exec.clone();
            tokio::spawn(async move {
                let _ = n.send(peer, Request::Cancel { exec }).await;
            });
            Err((ExecState::Rejected, err.to_string()))
        }
    };
    // Only from `bid_asked`: a fast node may already have committed (its
    // report can overtake the bid's answer), and the scheduler may have
    // ended the execution meanwhile.
    let mut e = e;
    match outcome {
        Ok(()) => {
            e.state = ExecState::Running;
            e.started_ms.get_or_insert(node.now());
        }
        Err((state, error)) => {
            e.state = state;
            e.error = Some(error);
        }
    }
    e.updated_ms = node.now();
    let _ = node.db().update_execution_from(&e, ExecState::BidAsked);
    // Answered: its slot is taken (accepted) or was never (declined).
    node.bid_answered(e.id.as_str(), e.state == ExecState::Running);
    tracing::debug!(job = %e.job, exec = %e.id, state = %e.state, "bid answered");
    node.notify_changed();
    // An accepted bid changes the plan only by making a queued job
    // running; a rejected one may call for another node.
    if e.state != ExecState::Running || !matches!(node.db().job_state(&e.job), Ok(Some(JobState::Running))) {
        node.mark(&e.job);
    }
}

async fn reveal(node: &Arc<Node>, peer: PeerId, mut e: Execution) {
    let now = node.now();
    // What the answer costs the node's record, counted with it.
    let mut judged = NodeStats::default();
    tracing::debug!(job = %e.job, exec = %e.id, "asking for the reveal");
    match node.send(peer, Request::Reveal { exec: e.id.to_string() }).await {
        Ok(Response::Revealed { result, nonce, exit_code, stdout, stderr, meta, signature }) => {
            let parsed: Option<Cid> = result.parse().ok();
            let opens = match (&parsed, &e.commitment) {
                (Some(cid), Some(c)) => commit::verify(c, cid, &nonce),
                _ => false,
            };
            let signed = match (&parsed, job_cid(node, &e.job)) {
                (Some(cid), Some(job)) => {
                    receipt::signed_by(&peer, &receipt::reveal_statement(&job, e.id.as_str(), cid, &nonce), &signature)
                }
                _ => false,
            };
            if opens && !signed {
                e.state = ExecState::Failed;
                e.error = Some(format!("the reveal of {result} is not signed by the node's key"));
                judged = NodeStats { dissented: 1, ..Default::default() };
            } else if opens {
                e.reveal_signature = Some(signature);
                e.state = ExecState::Revealed;
                e.result = parsed;
                e.nonce = Some(nonce);
                e.exit_code = Some(exit_code);
                e.stdout = Some(stdout);
                e.stderr = Some(stderr);
                e.meta = Some(meta.bounded());
            } else {
                e.state = ExecState::Failed;
                e.error = Some(format!("revealed result {result} does not match the commitment"));
                judged = NodeStats { dissented: 1, ..Default::default() };
            }
        }
        Ok(Response::Error { message }) if message.starts_with(BUSY) => {
            // Asked again on a later pass.
            tracing::debug!("reveal of {} deferred: {message}", e.id);
            return;
        }
        Ok(Response::Error { message }) => {
            // A node that restarted without the execution in its journal
            // (or never had it): it will never reveal.
            e.state = ExecState::Lost;
            e.error = Some(format!("reveal refused: {message}"));
        }
        Ok(other) => {
            e.state = ExecState::Failed;
            e.error = Some(format!("unexpected answer to reveal: {other:?}"));
        }
        Err(err) => {
            // Unreachable for now: leave it committed; placement marks it
            // lost if the node stays away.
            tracing::debug!("reveal of {} failed: {err}", e.id);
            return;
        }
    }
    e.updated_ms = now;
    // Another reveal of the same execution may have landed meanwhile (a
    // late reveal after completion): the first answer stands, and only its
    // judgement counts.
    match node.db().update_execution_judged(&e, ExecState::Committed, judged) {
        Ok(true) => {}
        Ok(false) => return,
        Err(err) => {
            tracing::warn!("cannot record the reveal of {}: {err}", e.id);
            return;
        }
    }
    tracing::debug!(job = %e.job, exec = %e.id, state = %e.state, "reveal recorded");
    node.notify_changed();
}

/// Completes `job` with `result` once its blocks are here: fetched from the
/// agreeing nodes and pinned, so the result stays reachable.
fn complete(node: &Arc<Node>, job: &Job, result: Cid, agreeing: Vec<ExecId>, dissenting: Vec<ExecId>) {
    let extra_used = job.extra_used;
    let key = format!("complete:{}", job.id);
    if !claim(node, key.clone()) {
        return;
    }
    let node = node.clone();
    let job_id = job.id.clone();
    let planned = job.clone();
    tokio::spawn(async move {
        tracing::debug!(job = %job_id, %result, "agreed; fetching the result");
        let outcome = async {
            let execs = node.db().executions(&job_id)?;
            let providers: Vec<PeerId> = execs
                .iter()
                .filter(|e| agreeing.contains(&e.id))
                .filter_map(peer_of)
                .filter(|p| *p != node.peer)
                .collect();
            // The receipt, from the executions that voted, is stored before
            // the result is pinned: one flush makes both durable.
            let voted: Vec<Execution> =
                execs.iter().filter(|e| agreeing.contains(&e.id) || dissenting.contains(&e.id)).cloned().collect();
            let n = node.clone();
            let at = node.now();
            let receipt =
                tokio::task::spawn_blocking(move || put_receipt(&n, &planned, Some(result), &voted, at)).await?;
            fetch::fetch_dag(&node, result, &providers).await?;
            // How the guest did, from the agreed result itself (what the
            // nodes said beside it is not bound by their commitments).
            let st = node.store.clone();
            let (exit_code, failure) = tokio::task::spawn_blocking(move || result_outcome(&*st, &result)).await?;
            // Reports kept landing during the fetch: judge what is there now.
            let execs = node.db().executions(&job_id)?;
            let Some(mut job) = node.db().job(&job_id)? else { return anyhow::Ok(()) };
            if job.state.is_terminal() {
                return Ok(());
            }
            let now = node.now();
            job.state = JobState::Completed;
            job.result = Some(result);
            job.exit_code = exit_code;
            job.failure = failure;
            job.updated_ms = now;
            let mut changed = Vec::new();
            let mut late = Vec::new();
            // Counted in the same transaction as the job: a requester that
            // dies half-way and completes the job again counts it once.
            let mut stats: std::collections::BTreeMap<String, NodeStats> = Default::default();
            job.extra_used = job.extra_used.max(extra_used);
            for mut e in execs {
                if agreeing.contains(&e.id) {
                    e.state = ExecState::Completed;
                    e.updated_ms = now;
                    stats.entry(e.node.clone()).or_default().agreed += 1;
                    changed.push(e);
                } else if dissenting.contains(&e.id) {
                    e.state = ExecState::Completed;
                    e.error = Some(format!(
                        "dissented: result {} differs from the agreed {result}",
                        e.result.map(|c| c.to_string()).unwrap_or_default()
                    ));
                    e.updated_ms = now;
                    stats.entry(e.node.clone()).or_default().dissented += 1;
                    changed.push(e);
                } else if matches!(e.state, ExecState::Committed | ExecState::Revealed) {
                    // Not counted by the plan (it revealed after the vote,
                    // or has yet to): judge it on its own.
                    late.push(e);
                }
                // Executions yet to commit are left to finish: `handle`
                // judges each when it commits (see `leftovers` for those
                // that never do).
            }
            // The receipt, pinned before the job that names it.
            match receipt {
                Ok(cid) => {
                    let st = node.store.clone();
                    match tokio::task::spawn_blocking(move || st.pin_add(&cid, shoal_storage::PinMode::Recursive))
                        .await?
                    {
                        Ok(()) => job.receipt = Some(cid),
                        Err(e) => tracing::warn!("job {job_id} completes without a receipt: cannot pin {cid}: {e}"),
                    }
                }
                Err(e) => tracing::warn!("job {job_id} completes without a receipt: {}", crate::message(&e)),
            }
            node.db().apply_with_stats(&job, &changed, &stats)?;
            if job.receipt.is_some() {
                node.receipt_added();
            }
            for e in late {
                spawn_late_reveal(&node, e, result, true);
            }
            tracing::debug!(job = %job_id, %result, "completed");
            node.metrics.jobs_completed.inc();
            let latency = now.saturating_sub(job.created_ms) as f64 / 1e3;
            node.metrics.job_seconds.observe(latency);
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = outcome {
            tracing::warn!("cannot complete job {job_id} with {result}: {e:#}");
        }
        release(&node, &key);
        node.notify_changed();
        node.mark(&job_id);
    });
}

/// Signs, stores and pins the receipt of a failed job: its failure, with
/// the signed statements of every execution that committed (those that
/// never did signed nothing), so that anyone can see what the nodes said.
fn failure_receipt(node: &Arc<Node>, job: &Job, execs: Vec<Execution>) {
    let (n, job) = (node.clone(), job.clone());
    tokio::task::spawn_blocking(move || {
        let signed: Vec<Execution> =
            execs.into_iter().filter(|e| e.commitment.is_some() && e.commit_signature.is_some()).collect();
        let made = put_receipt(&n, &job, None, &signed, n.now()).and_then(|cid| {
            n.store.pin_add(&cid, shoal_storage::PinMode::Recursive)?;
            n.db().set_receipt(&job.id, &cid)?;
            Ok(cid)
        });
        match made {
            Ok(cid) => {
                tracing::debug!(job = %job.id, receipt = %cid, "failure receipt");
                n.notify_changed();
            }
            Err(e) => tracing::warn!("job {} failed without a receipt: {}", job.id, crate::message(&e)),
        }
    });
}

/// Builds the receipt of `job`, completed with `result` by the executions
/// that voted (agreed or dissented), signs it with this node's key and
/// stores it as one raw block, not yet pinned; returns its CID.
fn put_receipt(node: &Node, job: &Job, result: Option<Cid>, voted: &[Execution], now: u64) -> anyhow::Result<Cid> {
    use anyhow::Context as _;
    let job_cid = receipt::job_cid(&job.spec);
    let mut executions = Vec::new();
    for e in voted {
        let peer: PeerId = e.node.parse().with_context(|| format!("execution {}: bad node id {}", e.id, e.node))?;
        let key = receipt::peer_key(&peer).with_context(|| format!("node {} has no inline public key", e.node))?;
        let (Some(commitment), Some(commit_signature)) = (e.commitment, e.commit_signature.clone()) else {
            anyhow::bail!("execution {} has no signed commitment", e.id)
        };
        executions.push(receipt::Attestation {
            exec: e.id.to_string(),
            node: e.node.clone(),
            public_key: hex::encode(key.encode_protobuf()),
            commitment: hex::encode(commitment),
            exit_code: e.exit_code.unwrap_or_default(),
            commit_signature,
            result: e.result.map(|c| c.to_string()),
            nonce: e.nonce.map(hex::encode),
            reveal_signature: e.reveal_signature.clone(),
            verdict: match result {
                Some(_) if e.result == result => "agreed",
                Some(_) => "dissented",
                None => "failed",
            }
            .into(),
        });
    }
    let unsigned = receipt::Receipt {
        version: receipt::VERSION,
        job: job.id.to_string(),
        job_cid: job_cid.to_string(),
        spec: job.spec.clone(),
        result: result.map(|c| c.to_string()),
        failure: match result {
            Some(_) => None,
            None => Some(job.error.clone().unwrap_or_else(|| "failed".into())),
        },
        submitter: job.submitter.clone(),
        quorum: job.spec.quorum(),
        count: job.spec.redundancy.count,
        executions,
        requester: String::new(),
        requester_key: String::new(),
        created_ms: job.created_ms,
        completed_ms: now,
        signature: String::new(),
    };
    let (_, bytes) = unsigned.sign(&node.key)?;
    let block = shoal_storage::Block::new(shoal_storage::CidVersion::V1, shoal_storage::block::RAW, bytes);
    let cid = *block.cid();
    node.store.put(&block).context("cannot store the receipt")?;
    Ok(cid)
}

/// Longest `failure` line read from a result (the runtime writes one line).
const MAX_FAILURE_LINE: usize = 4096;

/// The exit code and failure line a result holds (`exitCode`, `failure`):
/// none when the result is not a job result (a file, a foreign DAG), or
/// its exit code is not a number.
pub fn result_outcome(store: &dyn shoal_storage::BlockStore, result: &Cid) -> (Option<i32>, Option<String>) {
    use shoal_storage::exporter;
    let read = |name: &str| -> Option<String> {
        let cid = exporter::resolve(store, result, &[name.to_string()]).ok()?;
        let mut head = Head(Vec::new());
        // A result longer than the head is cut there, which is all we keep.
        let _ = exporter::cat(store, &cid, &mut head);
        let text = String::from_utf8_lossy(&head.0).into_owned();
        Some(text.lines().next().unwrap_or_default().trim().to_owned())
    };
    let exit_code = read("exitCode").and_then(|s| s.parse().ok());
    let failure = if exit_code.is_some() { read("failure") } else { None };
    (exit_code, failure)
}

/// The first [`MAX_FAILURE_LINE`] bytes written to it; refuses the rest.
struct Head(Vec<u8>);

impl std::io::Write for Head {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = MAX_FAILURE_LINE.saturating_sub(self.0.len());
        if room == 0 {
            return Err(std::io::Error::other("enough read"));
        }
        let n = room.min(buf.len());
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Judges, once, an execution that was not needed for its job's result
/// (see [`late_reveal`]).
fn spawn_late_reveal(node: &Arc<Node>, e: Execution, agreed: Cid, credit: bool) {
    let key = format!("late:{}", e.id);
    if !claim(node, key.clone()) {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        late_reveal(&node, e, agreed, credit).await;
        release(&node, &key);
    });
}

/// Asks an execution that committed but was not needed for its result,
/// and records whether its node agreed with `agreed`. Agreeing earns
/// credit only if it committed before the result was published (`credit`):
/// after, it could have copied it. A different result is dissent either
/// way.
async fn late_reveal(node: &Arc<Node>, e: Execution, agreed: Cid, credit: bool) {
    let Some(peer) = peer_of(&e) else { return };
    let id = e.id.clone();
    if e.state == ExecState::Committed {
        reveal(node, peer, e).await;
    }
    let Ok(Some(mut e)) = node.db().execution(&id) else { return };
    let read = e.state;
    let now = node.now();
    match (e.state, e.result) {
        (ExecState::Revealed, Some(r)) => {
            let stats = if r == agreed && credit {
                NodeStats { agreed: 1, ..Default::default() }
            } else if r == agreed {
                e.error = Some("agreed, but committed after the result was published: not counted".into());
                NodeStats::default()
            } else {
                e.error = Some(format!("dissented: result {r} differs from the agreed {agreed}"));
                NodeStats { dissented: 1, ..Default::default() }
            };
            e.state = ExecState::Completed;
            e.updated_ms = now;
            if let Err(err) = node.db().update_execution_judged(&e, read, stats) {
                tracing::warn!("cannot record the judgement of {}: {err}", e.id);
            }
        }
        // Unreachable or refused: it was not needed; stop it.
        (state, _) if state.is_live() => {
            cancel_live(node, std::slice::from_ref(&e));
            e.state = ExecState::Failed;
            e.error = Some("not needed: the job completed".into());
            e.updated_ms = now;
            let _ = node.db().update_execution_from(&e, read);
        }
        _ => {}
    }
    node.notify_changed();
}

fn cancel_live(node: &Arc<Node>, execs: &[Execution]) {
    for e in execs.iter().filter(|e| e.state.is_live()) {
        if let Some(peer) = peer_of(e) {
            let n = node.clone();
            let exec = e.id.to_string();
            tokio::spawn(async move {
                let _ = n.send(peer, Request::Cancel { exec }).await;
            });
        }
    }
}

/// How many times a report is applied to an execution that changed
/// between reading and writing it.
const REPORT_ATTEMPTS: usize = 4;

/// Handles a compute node's report (Commit or Failed).
pub async fn handle(node: &Arc<Node>, peer: PeerId, request: Request) -> Response {
    let id: ExecId = match request.exec().parse() {
        Ok(id) => id,
        Err(_) => return Response::Error { message: format!("malformed execution id {}", request.exec()) },
    };
    // The execution may change under us (the bid's answer, a scheduling
    // pass): write only over the state we read, re-reading a few times.
    for _ in 0..REPORT_ATTEMPTS {
        let Ok(Some(mut e)) = node.db().execution(&id) else {
            return Response::Error { message: format!("unknown execution {id}") };
        };
        if e.node != peer.to_string() {
            return Response::Error { message: format!("execution {id} was not placed on you") };
        }
        let read = e.state;
        let mut failed = false;
        match &request {
            Request::Commit { commitment, exit_code, signature, .. } => {
                if matches!(e.state, ExecState::BidAsked | ExecState::Accepted | ExecState::Running) {
                    // Signed, for the job's receipt: a commitment its node
                    // will not stand behind is refused.
                    let statement = job_cid(node, &e.job)
                        .map(|job| receipt::commit_statement(&job, id.as_str(), commitment, *exit_code));
                    if !statement.is_some_and(|s| receipt::signed_by(&peer, &s, signature)) {
                        return Response::Error {
                            message: format!(
                                "the commitment of {id} is not signed by your key; sign it and report again"
                            ),
                        };
                    }
                    e.state = ExecState::Committed;
                    e.commitment = Some(*commitment);
                    e.exit_code = Some(*exit_code);
                    e.commit_signature = Some(signature.clone());
                } else if e.commitment == Some(*commitment) {
                    return Response::Ok; // a repeated report
                } else {
                    return Response::Error { message: format!("execution {id} is {}; commitment refused", e.state) };
                }
            }
            Request::Failed { error, missing, .. } => {
                if !e.state.is_live() {
                    return Response::Ok;
                }
                e.state = ExecState::Failed;
                e.error = Some(error.clone());
                // An input nobody could give is the submitter's failure,
                // not the node's: its record is left alone.
                failed = missing.is_none();
            }
            _ => return Response::Error { message: "not a report".into() },
        }
        e.updated_ms = node.now();
        let judged = if failed { NodeStats { failed: 1, ..Default::default() } } else { NodeStats::default() };
        match node.db().update_execution_judged(&e, read, judged) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => return Response::Error { message: format!("cannot record execution {id}: {err}") },
        }
        tracing::debug!(job = %e.job, exec = %id, state = %e.state, "report recorded");
        let job = node.db().job(&e.job).ok().flatten();
        // Its slot on the node is free again.
        node.room_changed(peer, i64::from(job.as_ref().map_or(1, |j| j.spec.resources.slots)));
        if let (ExecState::Committed, Some(Job { state: JobState::Completed, result: Some(agreed), .. })) =
            (e.state, &job)
        {
            // Left running when its job completed: judge it now.
            spawn_late_reveal(node, e.clone(), *agreed, false);
        }
        node.notify_changed();
        node.mark(&e.job);
        return Response::Ok;
    }
    Response::Error { message: format!("execution {id} keeps changing; report again") }
}

/// Cancels a job: marks it and its live executions, tells the nodes.
pub fn cancel(node: &Arc<Node>, job: &model::JobId) -> anyhow::Result<Option<Job>> {
    let Some(mut job) = node.db().job(job)? else { return Ok(None) };
    if job.state.is_terminal() {
        return Ok(Some(job));
    }
    let now = node.now();
    let execs = node.db().executions(&job.id)?;
    cancel_live(node, &execs);
    let changed: Vec<Execution> = execs
        .into_iter()
        .filter(|e| e.state.is_live())
        .map(|mut e| {
            e.state = ExecState::Failed;
            e.error = Some("cancelled".into());
            e.updated_ms = now;
            e
        })
        .collect();
    job.state = JobState::Cancelled;
    job.error = Some("cancelled by the user".into());
    job.updated_ms = now;
    node.db().apply(&job, &changed)?;
    node.notify_changed();
    Ok(Some(job))
}
