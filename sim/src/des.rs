//! The discrete-event engine: nodes, jobs, the event queue, and the
//! requester's side that calls the real planner and carries out its plans
//! (after `node/src/requester.rs`'s `carry_out`, `complete` and
//! `late_reveal`). See the crate documentation for the model.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_scheduler::model::{Capacity, ExecId, ExecState, Execution, Job, JobId, JobState, NodeStats, NodeView};
use shoal_scheduler::placement::{self, Plan};
use shoal_scheduler::spec::{Input, Spec};
use shoal_storage::{block, Block, Cid, CidVersion};

use crate::report::{Counts, Report};

/// What a run simulates. [`Config::new`] gives the defaults the crate
/// documentation describes.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Compute nodes.
    pub nodes: usize,
    /// Jobs submitted by ordinary (honest) submitters.
    pub jobs: usize,
    /// Seed of the one random generator everything draws from.
    pub seed: u64,
    /// Job slots per node.
    pub slots: u32,
    /// Target utilisation: the arrival rate is set so that the honest
    /// workload alone keeps this share of all slots busy.
    pub load: f64,
    /// Mean of an execution's service time (exponential), ms.
    pub service_mean_ms: f64,
    /// Added to the service time on a node that does not hold the job's
    /// input (it fetches it first), ms.
    pub fetch_ms: f64,
    /// Shortest and longest one-way message latency (log-uniform), ms.
    pub latency_ms: (f64, f64),
    /// Random nodes in the requester's candidate view of each placement
    /// (plus the nodes holding the input and those already running it).
    pub sample: usize,
    /// Distinct input data sets jobs read (each job one, uniformly).
    pub datasets: usize,
    /// Nodes holding each data set.
    pub holders: usize,
    /// `redundancy.count`.
    pub count: u32,
    /// `redundancy.quorum`.
    pub quorum: u32,
    /// `redundancy.max_extra`.
    pub max_extra: u32,
    /// `retries`.
    pub retries: u32,
    /// `timeouts.execution`, ms.
    pub exec_timeout_ms: u64,
    /// `timeouts.queue`, ms.
    pub queue_timeout_ms: u64,
    /// `timeouts.total`, ms.
    pub total_timeout_ms: u64,
    /// Share of nodes that lie.
    pub liars: f64,
    /// Liars are one Sybil group: every liar returns the same wrong CID
    /// for a job. Otherwise each wrong answer is its own CID.
    pub collude: bool,
    /// How often a liar lies (1: always).
    pub sometimes: f64,
    /// Share of nodes that accept bids, announce free slots and never
    /// answer.
    pub silent: f64,
    /// Share of the nodes that leave per minute (each comes back after
    /// [`Config::downtime_mean_ms`] with a new boot id).
    pub churn_per_min: f64,
    /// Mean time a node that left stays away, ms.
    pub downtime_mean_ms: f64,
    /// Flooding submitters.
    pub flood_requesters: usize,
    /// Jobs per second each flooding submitter sends while honest jobs
    /// arrive.
    pub flood_rate_per_s: f64,
    /// Busy executions per submitter (`--quota-executions`); 0: none.
    pub quota: usize,
    /// Honest submitters the honest jobs are spread over (round robin).
    pub submitters: usize,
    /// Give the planner the nodes' track records. Off, it ranks every
    /// node alike (what the analytic prediction assumes).
    pub reputation: bool,
}

impl Config {
    /// The defaults for `nodes` and `jobs` (see the crate documentation).
    pub fn new(nodes: usize, jobs: usize, seed: u64) -> Config {
        Config {
            nodes,
            jobs,
            seed,
            slots: 2,
            load: 0.5,
            service_mean_ms: 5_000.0,
            fetch_ms: 1_000.0,
            latency_ms: (0.2, 50.0),
            sample: 32,
            datasets: (nodes / 5).max(1),
            holders: 3,
            count: 3,
            quorum: 2,
            max_extra: 0,
            retries: 2,
            exec_timeout_ms: 60_000,
            queue_timeout_ms: 300_000,
            total_timeout_ms: 1_800_000,
            liars: 0.0,
            collude: false,
            sometimes: 1.0,
            silent: 0.0,
            churn_per_min: 0.0,
            downtime_mean_ms: 60_000.0,
            flood_requesters: 0,
            flood_rate_per_s: 1_000.0,
            quota: 0,
            submitters: 1_000,
            reputation: true,
        }
    }

    /// Honest jobs submitted per virtual second: the rate that keeps
    /// [`Config::load`] of all slots busy.
    pub fn honest_rate_per_s(&self) -> f64 {
        let slot_ms_per_job = f64::from(self.count) * self.service_mean_ms;
        1000.0 * self.load * (self.nodes as f64 * f64::from(self.slots)) / slot_ms_per_job
    }

    fn check(&self) -> Result<(), Error> {
        let share = |x: f64| (0.0..=1.0).contains(&x);
        let bad = if self.nodes < 2 || self.nodes > 10_000_000 {
            "nodes must be between 2 and 10,000,000"
        } else if self.jobs == 0 || self.jobs > 100_000_000 {
            "jobs must be between 1 and 100,000,000"
        } else if self.slots == 0 {
            "slots must be at least 1"
        } else if !(self.load > 0.0 && self.load <= 10.0) {
            "load must be in (0, 10]"
        } else if !share(self.liars) || !share(self.silent) || self.liars + self.silent > 1.0 {
            "liars and silent are shares of the nodes, together at most 1"
        } else if !share(self.sometimes) || !share(self.churn_per_min) {
            "sometimes and churn-per-min are between 0 and 1"
        } else if self.count == 0 || self.quorum == 0 || self.quorum > self.count || self.count > 16 {
            "need 1 <= quorum <= count <= 16"
        } else if !(self.latency_ms.0 > 0.0 && self.latency_ms.0 <= self.latency_ms.1) {
            "latencies must be positive, shortest first"
        } else if self.service_mean_ms <= 0.0 || self.fetch_ms < 0.0 || self.downtime_mean_ms <= 0.0 {
            "service, fetch and downtime times must be positive"
        } else if self.datasets == 0 || self.holders == 0 || self.holders > self.nodes || self.submitters == 0 {
            "datasets, holders and submitters must be at least 1 (holders at most nodes)"
        } else if self.flood_rate_per_s < 0.0 || self.flood_rate_per_s > 1e7 || self.flood_requesters > 1_000 {
            "flood rate must be in [0, 1e7] per second, at most 1000 flooding requesters"
        } else {
            return Ok(());
        };
        Err(Error::Config(bad.into()))
    }
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// One of the planner's invariants failed (see the crate docs).
    #[error("invariant broken at {at_ms} ms (virtual), job {job}: {what}")]
    Invariant {
        /// Virtual time.
        at_ms: u64,
        /// The job.
        job: String,
        /// Which invariant, and how.
        what: String,
    },
    /// More events than any run of this size should take.
    #[error("the simulation did not end within {0} events")]
    Runaway(u64),
}

/// How a node behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Honest,
    Liar,
    Silent,
}

struct Node {
    id: String,
    kind: Kind,
    alive: bool,
    boot: u64,
    left_ms: u64,
    /// Slots running executions (the node's truth).
    busy: u32,
    /// Bids placed on it and not yet arrived: what a requester counts as
    /// taken between its plan and the node's answer.
    reserved: u32,
    /// Its track record as the requester keeps it.
    stats: NodeStats,
    holds: BTreeSet<Cid>,
    /// Executions placed on it (not counting declined bids).
    placed: u64,
    /// Executions placed on it that may still be live: whose jobs to plan
    /// again when it leaves.
    active: Vec<(u32, u16)>,
}

/// The simulation's side of one execution.
#[derive(Debug, Clone)]
struct ExecSim {
    node: u32,
    boot: u64,
    /// Running on its node (holding a slot).
    running: bool,
    /// What the node answers once finished.
    answer: Option<Cid>,
    reveal_inflight: bool,
    /// Committed before its job completed (a late agreement earns credit).
    credit: bool,
    /// Counted in its submitter's busy executions.
    busy: bool,
    /// Its fate has been counted.
    judged: bool,
}

struct SimJob {
    job: Job,
    execs: Vec<Execution>,
    sim: Vec<ExecSim>,
    /// The honest job's number (`None`: a flood job).
    honest: Option<u32>,
    submitter: u32,
    truth: Cid,
    dataset: u32,
    plan_pending: bool,
    timer_at: u64,
    /// The outcome has been counted.
    ended: bool,
    /// Passes in a row that left it short of nodes (its retry backs off).
    waits: u32,
    /// In [`Sim::backlog`].
    queued: bool,
    /// A node that just freed a slot, for its next candidate view.
    hint: Option<u32>,
}

impl SimJob {
    /// A job just submitted: no executions, nothing pending.
    fn new(job: Job, honest: Option<u32>, submitter: u32, truth: Cid, dataset: u32) -> SimJob {
        SimJob {
            job,
            execs: Vec::new(),
            sim: Vec::new(),
            honest,
            submitter,
            truth,
            dataset,
            plan_pending: false,
            timer_at: 0,
            ended: false,
            waits: 0,
            queued: false,
            hint: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Submit,
    FloodSubmit(u32),
    Plan(u32),
    Timer(u32),
    BidArrive(u32, u16),
    BidAnswer(u32, u16, bool),
    Finish(u32, u16),
    CommitArrive(u32, u16),
    RevealArrive(u32, u16),
    RevealAnswer(u32, u16, bool),
    Churn,
    Join(u32),
}

/// Whether a job wants nodes it did not get: fewer executions live or
/// with a result than it asks for (or none live), with executions left in
/// its budget. Without budget no node can help it: it waits for its live
/// ones or ends, and planning it on every freed slot would only cost.
fn short(sj: &SimJob) -> bool {
    let r = &sj.job.spec.redundancy;
    let (mut live, mut results, mut used) = (0, 0, 0);
    for e in &sj.execs {
        live += usize::from(e.state.is_live());
        results += usize::from(e.state.has_result());
        used += usize::from(e.state != ExecState::Rejected);
    }
    (live + results < (r.count + sj.job.extra_used) as usize || live == 0)
        && used < (r.count + r.max_extra + sj.job.spec.retries) as usize
}

/// Runs one simulation to its end: every job completed or failed.
pub fn run(cfg: &Config) -> Result<Report, Error> {
    cfg.check()?;
    let mut sim = Sim::new(cfg.clone());
    sim.run()?;
    Ok(sim.report())
}

struct Sim {
    cfg: Config,
    pcfg: placement::Config,
    rng: StdRng,
    /// Virtual time, µs.
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    nodes: Vec<Node>,
    jobs: Vec<Option<Box<SimJob>>>,
    datasets: Vec<(Cid, Vec<u32>)>,
    template: Spec,
    submitted: usize,
    flood_submitted: u64,
    live_jobs: usize,
    exec_seq: u64,
    busy: Vec<u32>,
    /// Jobs short of nodes, oldest first: a freed slot plans them (the
    /// requester's capacity pass).
    backlog: VecDeque<u32>,
    /// Nodes that freed a slot during the current event.
    freed: Vec<u32>,
    /// Mean gap between honest arrivals, µs.
    gap_us: f64,
    c: Counts,
}

fn cid_of(tag: &[u8], a: u64, b: u64) -> Cid {
    let mut data = tag.to_vec();
    data.extend_from_slice(&a.to_le_bytes());
    data.extend_from_slice(&b.to_le_bytes());
    *Block::new(CidVersion::V1, block::RAW, data).cid()
}

impl Sim {
    fn new(cfg: Config) -> Sim {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let n = cfg.nodes;
        let liars = (cfg.liars * n as f64).round() as usize;
        let silent = ((cfg.silent * n as f64).round() as usize).min(n - liars.min(n));
        // Exactly `liars` and `silent` nodes, at random places: ids carry
        // no hint of a node's kind (the planner breaks ties by id).
        let bad = rand::seq::index::sample(&mut rng, n, liars.min(n) + silent);
        let mut kinds = vec![Kind::Honest; n];
        for (i, idx) in bad.iter().enumerate() {
            kinds[idx] = if i < liars { Kind::Liar } else { Kind::Silent };
        }
        let mut nodes: Vec<Node> = kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Node {
                id: format!("n{i:07}"),
                kind,
                alive: true,
                boot: rng.gen(),
                left_ms: 0,
                busy: 0,
                reserved: 0,
                stats: NodeStats::default(),
                holds: BTreeSet::new(),
                placed: 0,
                active: Vec::new(),
            })
            .collect();
        let mut datasets = Vec::with_capacity(cfg.datasets);
        for d in 0..cfg.datasets {
            let cid = cid_of(b"data", d as u64, 0);
            let holders: Vec<u32> =
                rand::seq::index::sample(&mut rng, n, cfg.holders).iter().map(|i| i as u32).collect();
            for &h in &holders {
                nodes[h as usize].holds.insert(cid);
            }
            datasets.push((cid, holders));
        }
        let mut template = Spec::new(cid_of(b"module", 0, 0));
        template.redundancy.count = cfg.count;
        template.redundancy.quorum = Some(cfg.quorum);
        template.redundancy.max_extra = cfg.max_extra;
        template.retries = cfg.retries;
        template.timeouts.execution = Duration::from_millis(cfg.exec_timeout_ms);
        template.timeouts.queue = Duration::from_millis(cfg.queue_timeout_ms);
        template.timeouts.total = Duration::from_millis(cfg.total_timeout_ms);
        // The honest workload keeps `load` of the slots busy.
        let gap_us = 1e6 / cfg.honest_rate_per_s();
        let submitters = cfg.submitters + cfg.flood_requesters;
        Sim {
            pcfg: placement::Config::default(),
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            jobs: Vec::with_capacity(cfg.jobs),
            datasets,
            template,
            submitted: 0,
            flood_submitted: 0,
            live_jobs: 0,
            exec_seq: 0,
            busy: vec![0; submitters],
            backlog: VecDeque::new(),
            freed: Vec::new(),
            gap_us,
            c: Counts::new(cfg.jobs),
            cfg,
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn exp_us(&mut self, mean_us: f64) -> u64 {
        let u: f64 = self.rng.gen();
        (-mean_us * (1.0 - u).ln()) as u64
    }

    /// One message's latency, µs.
    fn lat(&mut self) -> u64 {
        let (a, b) = self.cfg.latency_ms;
        let u: f64 = self.rng.gen();
        ((a.ln() + u * (b.ln() - a.ln())).exp() * 1000.0) as u64
    }

    fn now_ms(&self) -> u64 {
        self.now / 1000
    }

    fn run(&mut self) -> Result<(), Error> {
        self.at(0, Ev::Submit);
        for r in 0..self.cfg.flood_requesters {
            self.at(0, Ev::FloodSubmit(r as u32));
        }
        if self.cfg.churn_per_min > 0.0 {
            let t = self.churn_gap();
            self.at(t, Ev::Churn);
        }
        // Each job takes a bounded number of events (its executions are
        // bounded, and so is how often a waiting job is planned again);
        // flood jobs and churn add theirs.
        let limit = 2_000u64 * (self.cfg.jobs as u64 + 1) + 10_000_000;
        let mut events = 0u64;
        while let Some(Reverse((t, _, ev))) = self.queue.pop() {
            events += 1;
            if events > limit + 2_000 * self.flood_submitted {
                return Err(Error::Runaway(events));
            }
            self.now = t;
            self.c.now_ms = t / 1000;
            self.handle(ev)?;
            while let Some(n) = self.freed.pop() {
                self.capacity_pass(n)?;
            }
        }
        self.c.events = events;
        // Every job ended, bounded by its timeouts.
        if let Some(j) = self.jobs.iter().flatten().next() {
            return Err(self.broken(j, format!("still {} at the end of the run", j.job.state)));
        }
        let ended = self.c.completed + self.c.failed;
        if ended != self.cfg.jobs as u64 {
            return Err(Error::Invariant {
                at_ms: self.now_ms(),
                job: "-".into(),
                what: format!("{ended} of {} jobs ended", self.cfg.jobs),
            });
        }
        Ok(())
    }

    /// A slot freed on node `n`: plan the oldest jobs waiting for nodes,
    /// with `n` in their view, until it is taken (a few jobs at most: the
    /// requester's capacity pass, bounded).
    fn capacity_pass(&mut self, n: u32) -> Result<(), Error> {
        let mut planned = 0;
        for _ in 0..64 {
            let node = &self.nodes[n as usize];
            if planned == 8 || !node.alive || node.busy + node.reserved >= self.cfg.slots || node.kind == Kind::Silent {
                break;
            }
            let Some(j) = self.backlog.pop_front() else { break };
            let Some(sj) = self.jobs.get_mut(j as usize).and_then(|s| s.as_deref_mut()) else { continue };
            if sj.job.state.is_terminal() {
                sj.queued = false;
                continue;
            }
            if self.cfg.quota > 0 && self.busy[sj.submitter as usize] as usize >= self.cfg.quota {
                // Its submitter's quota is used up: the planner would place
                // nothing (`max_new` 0). It keeps its place in line behind
                // the others; its own timer still plans it (timeouts).
                self.backlog.push_back(j);
                continue;
            }
            sj.queued = false;
            sj.hint = Some(n);
            planned += 1;
            self.c.capacity_plans += 1;
            self.plan_job(j)?;
        }
        Ok(())
    }

    fn churn_gap(&mut self) -> u64 {
        // Departures of the whole network: a Poisson process.
        let per_ms = self.cfg.churn_per_min * self.cfg.nodes as f64 / 60_000.0;
        self.exp_us(1000.0 / per_ms).max(1)
    }

    fn handle(&mut self, ev: Ev) -> Result<(), Error> {
        match ev {
            Ev::Submit => {
                if self.submitted < self.cfg.jobs {
                    let no = self.submitted as u32;
                    self.submitted += 1;
                    let sub = no % self.cfg.submitters as u32;
                    self.submit(Some(no), sub);
                    if self.submitted < self.cfg.jobs {
                        let gap = self.exp_us(self.gap_us);
                        self.at(self.now + gap, Ev::Submit);
                    }
                }
            }
            Ev::FloodSubmit(r) => {
                // Flooding lasts as long as the honest workload arrives.
                if self.submitted < self.cfg.jobs && self.cfg.flood_rate_per_s > 0.0 {
                    self.flood_submitted += 1;
                    self.submit(None, self.cfg.submitters as u32 + r);
                    let gap = self.exp_us(1e6 / self.cfg.flood_rate_per_s);
                    self.at(self.now + gap.max(1), Ev::FloodSubmit(r));
                }
            }
            Ev::Plan(j) => {
                if let Some(sj) = self.jobs.get_mut(j as usize).and_then(|s| s.as_deref_mut()) {
                    sj.plan_pending = false;
                }
                self.plan_job(j)?;
            }
            Ev::Timer(j) => {
                let due =
                    self.jobs.get(j as usize).and_then(|s| s.as_deref()).is_some_and(|sj| sj.timer_at == self.now);
                if due {
                    if let Some(sj) = self.jobs.get_mut(j as usize).and_then(|s| s.as_deref_mut()) {
                        sj.timer_at = 0;
                    }
                    self.c.timer_plans += 1;
                    self.plan_job(j)?;
                }
            }
            Ev::BidArrive(j, k) => self.bid_arrive(j, k),
            Ev::BidAnswer(j, k, yes) => self.bid_answer(j, k, yes),
            Ev::Finish(j, k) => self.finish(j, k),
            Ev::CommitArrive(j, k) => self.commit_arrive(j, k),
            Ev::RevealArrive(j, k) => self.reveal_arrive(j, k),
            Ev::RevealAnswer(j, k, ok) => self.reveal_answer(j, k, ok),
            Ev::Churn => self.churn(),
            Ev::Join(n) => {
                let boot = self.rng.gen();
                let node = &mut self.nodes[n as usize];
                node.alive = true;
                // The same peer id (its key persists), a new process.
                node.boot = boot;
                self.freed.push(n);
            }
        }
        Ok(())
    }

    fn submit(&mut self, honest: Option<u32>, submitter: u32) {
        let j = self.jobs.len() as u32;
        let dataset = self.rng.gen_range(0..self.datasets.len()) as u32;
        let mut spec = self.template.clone();
        spec.task.inputs = vec![Input { cid: self.datasets[dataset as usize].0, path: None, mount: "/inputs".into() }];
        let now_ms = self.now_ms();
        let job = Job::new(JobId::from_parts(now_ms, u64::from(j)), spec, now_ms);
        let truth = cid_of(b"result", u64::from(j), 0);
        self.jobs.push(Some(Box::new(SimJob::new(job, honest, submitter, truth, dataset))));
        self.live_jobs += 1;
        self.mark(j);
    }

    /// Plan `j` again now (once, however many reports arrive at once).
    fn mark(&mut self, j: u32) {
        let Some(sj) = self.jobs.get_mut(j as usize).and_then(|s| s.as_deref_mut()) else { return };
        if !sj.plan_pending && !sj.job.state.is_terminal() {
            sj.plan_pending = true;
            self.at(self.now, Ev::Plan(j));
        }
    }

    fn timer(&mut self, j: u32, at_ms: u64) {
        let Some(mut sj) = self.jobs.get_mut(j as usize).and_then(Option::take) else { return };
        self.timer_taken(j, &mut sj, at_ms);
        self.put_back(j, sj);
    }

    /// Plans `sj` (job `j`, taken out of its slot) again at `at_ms`, unless
    /// an earlier pass is already due.
    fn timer_taken(&mut self, j: u32, sj: &mut SimJob, at_ms: u64) {
        let t = at_ms.saturating_mul(1000).max(self.now + 1);
        if sj.timer_at <= self.now || t < sj.timer_at {
            sj.timer_at = t;
            self.at(t, Ev::Timer(j));
        }
    }

    fn view(&self, i: u32, now_ms: u64) -> NodeView {
        let n = &self.nodes[i as usize];
        let slots_free = match n.kind {
            // It claims room whatever it holds, to draw bids.
            Kind::Silent => self.cfg.slots,
            _ => self.cfg.slots.saturating_sub(n.busy + n.reserved),
        };
        NodeView {
            id: n.id.clone(),
            capacity: Capacity {
                compute: true,
                slots_total: self.cfg.slots,
                slots_free,
                memory_bytes: 1 << 30,
                ..Capacity::default()
            },
            last_seen_ms: if n.alive { now_ms } else { n.left_ms },
            holds: n.holds.clone(),
            stats: if self.cfg.reputation { n.stats } else { NodeStats::default() },
            boot: Some(n.boot),
            connected: n.alive,
            ttl_ms: None,
        }
    }

    fn node_index(id: &str) -> Option<u32> {
        id.strip_prefix('n').and_then(|s| s.parse().ok())
    }

    fn broken(&self, sj: &SimJob, what: String) -> Error {
        Error::Invariant { at_ms: self.now_ms(), job: sj.job.id.to_string(), what }
    }

    /// The scheduler pass for one job: the real planner over the
    /// requester's view, its plan carried out.
    fn plan_job(&mut self, j: u32) -> Result<(), Error> {
        let Some(mut sj) = self.jobs.get_mut(j as usize).and_then(Option::take) else { return Ok(()) };
        let r = self.plan_taken(j, &mut sj);
        let retire = sj.job.state.is_terminal() && self.settled(&sj);
        if retire {
            self.live_jobs -= 1;
        } else {
            self.jobs[j as usize] = Some(sj);
        }
        r
    }

    /// Nothing more can happen to a terminal job's executions.
    fn settled(&self, sj: &SimJob) -> bool {
        sj.execs.iter().zip(&sj.sim).all(|(e, s)| !e.state.is_live() && !s.reveal_inflight)
    }

    fn plan_taken(&mut self, j: u32, sj: &mut SimJob) -> Result<(), Error> {
        let now_ms = self.now_ms();
        if sj.job.state.is_terminal() {
            self.leftovers(j, sj, now_ms);
            return Ok(());
        }
        let target = (sj.job.spec.redundancy.count + sj.job.extra_used) as usize;
        let live = sj.execs.iter().filter(|e| e.state.is_live()).count();
        let results = sj.execs.iter().filter(|e| e.state.has_result()).count();
        let any_gone =
            sj.sim.iter().zip(&sj.execs).any(|(s, e)| e.state.is_live() && !self.nodes[s.node as usize].alive);
        // The candidate view: the nodes already running it always (or the
        // planner would count them gone); the input's holders and a random
        // sample when it may place.
        let mut ids: Vec<u32> = sj.sim.iter().map(|s| s.node).collect();
        ids.extend(sj.hint.take());
        if live + results < target || live == 0 || any_gone {
            ids.extend_from_slice(&self.datasets[sj.dataset as usize].1);
            for _ in 0..self.cfg.sample {
                ids.push(self.rng.gen_range(0..self.nodes.len() as u32));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let views: Vec<NodeView> = ids.iter().map(|&i| self.view(i, now_ms)).collect();
        let max_new = match self.cfg.quota {
            0 => usize::MAX,
            q => q.saturating_sub(self.busy[sj.submitter as usize] as usize),
        };
        let plan = placement::plan_within(&sj.job, &views, &sj.execs, now_ms, &self.pcfg, max_new);
        self.c.plans += 1;
        self.apply(j, sj, &plan, now_ms)?;
        self.check(sj)?;
        if sj.job.state.is_terminal() {
            self.leftovers(j, sj, now_ms);
        } else {
            if short(sj) {
                // Short of nodes: a freed slot plans it again, and so does
                // a timer backing off from 1 s to 16 s (the requester plans
                // every job each second; the back-off bounds the cost of
                // jobs no view has room for).
                sj.waits = sj.waits.saturating_add(1);
                if !sj.queued {
                    sj.queued = true;
                    self.backlog.push_back(j);
                }
            } else {
                sj.waits = 0;
            }
            let d = self.deadline(sj, now_ms);
            self.timer_taken(j, sj, d);
        }
        Ok(())
    }

    /// What `carry_out` does with a plan.
    fn apply(&mut self, j: u32, sj: &mut SimJob, plan: &Plan, now_ms: u64) -> Result<(), Error> {
        for (id, s) in plan.stats(&sj.execs) {
            if let Some(i) = Sim::node_index(&id) {
                let st = &mut self.nodes[i as usize].stats;
                st.agreed += s.agreed;
                st.dissented += s.dissented;
                st.lost += s.lost;
            }
        }
        for (ids, state) in
            [(&plan.lost, ExecState::Lost), (&plan.expired, ExecState::Rejected), (&plan.cancel, ExecState::Failed)]
        {
            for id in ids {
                if let Some(k) = sj.execs.iter().position(|e| &e.id == id && e.state.is_live()) {
                    self.end_exec(sj, k, state, now_ms);
                }
            }
        }
        if let Some(u) = &plan.job {
            u.apply_to(&mut sj.job, now_ms);
            match u.state {
                JobState::Completed => self.completed(j, sj, &u.agreeing, &u.dissenting)?,
                JobState::Failed | JobState::Cancelled => self.failed(sj)?,
                _ => {}
            }
        }
        if !sj.job.state.is_terminal() {
            for (node_id, extra) in plan.placements() {
                let Some(i) = Sim::node_index(node_id) else {
                    return Err(self.broken(sj, format!("placed on unknown node {node_id}")));
                };
                let (alive, boot) = (self.nodes[i as usize].alive, self.nodes[i as usize].boot);
                if !alive {
                    return Err(self.broken(sj, format!("placed on {node_id}, which is not alive")));
                }
                let holds = self.nodes[i as usize].holds.contains(&self.datasets[sj.dataset as usize].0);
                let k = sj.execs.len();
                self.exec_seq += 1;
                let id = ExecId::from_parts(now_ms, self.exec_seq);
                let mut e = Execution::new(id, sj.job.id.clone(), node_id.clone(), extra, now_ms);
                e.boot = Some(boot);
                sj.execs.push(e);
                sj.sim.push(ExecSim {
                    node: i,
                    boot,
                    running: false,
                    answer: None,
                    reveal_inflight: false,
                    credit: false,
                    busy: true,
                    judged: false,
                });
                self.busy[sj.submitter as usize] += 1;
                let node = &mut self.nodes[i as usize];
                node.reserved += 1;
                node.placed += 1;
                if node.active.len() >= 16 {
                    let jobs = &self.jobs;
                    node.active.retain(|&(jj, kk)| {
                        jobs.get(jj as usize)
                            .and_then(|s| s.as_deref())
                            .and_then(|s| s.execs.get(kk as usize))
                            .is_some_and(|e| e.state.is_live())
                    });
                }
                node.active.push((j, k as u16));
                self.c.placed += 1;
                if holds {
                    self.c.placed_on_holder += 1;
                }
                if sj.honest.is_none() && node.kind == Kind::Honest {
                    self.c.honest_execs_for_flood += 1;
                }
                let t = self.now + self.lat();
                self.at(t, Ev::BidArrive(j, k as u16));
            }
        }
        for id in &plan.reveal {
            if let Some(k) = sj.execs.iter().position(|e| &e.id == id) {
                self.ask_reveal(j, sj, k);
            }
        }
        Ok(())
    }

    fn ask_reveal(&mut self, j: u32, sj: &mut SimJob, k: usize) {
        if sj.execs[k].state == ExecState::Committed && !sj.sim[k].reveal_inflight {
            sj.sim[k].reveal_inflight = true;
            let t = self.now + self.lat();
            self.at(t, Ev::RevealArrive(j, k as u16));
        }
    }

    /// Ends an execution at the requester, and stops it on its node (the
    /// `Cancel` message, taken as instant).
    fn end_exec(&mut self, sj: &mut SimJob, k: usize, state: ExecState, now_ms: u64) {
        let e = &mut sj.execs[k];
        e.state = state;
        e.updated_ms = now_ms;
        let s = &mut sj.sim[k];
        if s.busy {
            s.busy = false;
            let b = &mut self.busy[sj.submitter as usize];
            *b = b.saturating_sub(1);
        }
        let node = &mut self.nodes[s.node as usize];
        if s.running && node.alive && node.boot == s.boot {
            node.busy = node.busy.saturating_sub(1);
            self.freed.push(s.node);
        }
        s.running = false;
        if state == ExecState::Lost {
            self.c.lost += 1;
            match node.kind {
                Kind::Silent => self.c.lost_to_silent += 1,
                Kind::Honest => self.c.honest_wasted += 1,
                Kind::Liar => {}
            }
        } else if state == ExecState::Failed && node.kind == Kind::Honest {
            self.c.honest_wasted += 1;
        }
    }

    fn completed(&mut self, j: u32, sj: &mut SimJob, agreeing: &[ExecId], dissenting: &[ExecId]) -> Result<(), Error> {
        let Some(result) = sj.job.result else {
            return Err(self.broken(sj, "completed without a result".into()));
        };
        if sj.ended {
            return Err(self.broken(sj, "completed after it had ended".into()));
        }
        // At least `quorum` executions on distinct nodes report it.
        let voters: BTreeSet<&str> = sj
            .execs
            .iter()
            .filter(|e| agreeing.contains(&e.id) && e.result == Some(result))
            .map(|e| e.node.as_str())
            .collect();
        if voters.len() < sj.job.spec.quorum() as usize {
            return Err(self.broken(sj, format!("completed with {} agreeing node(s)", voters.len())));
        }
        for k in 0..sj.execs.len() {
            let id = sj.execs[k].id.clone();
            let kind = self.nodes[sj.sim[k].node as usize].kind;
            if agreeing.contains(&id) || dissenting.contains(&id) {
                sj.execs[k].state = ExecState::Completed;
                sj.sim[k].judged = true;
                if kind == Kind::Honest {
                    if agreeing.contains(&id) {
                        self.c.honest_voted += 1;
                    } else {
                        self.c.honest_outvoted += 1;
                        self.c.honest_wasted += 1;
                    }
                }
            } else if sj.execs[k].state == ExecState::Committed {
                // Committed before the result was known: judged, with
                // credit, once revealed (`complete`'s late ones).
                sj.sim[k].credit = true;
                self.ask_reveal(j, sj, k);
            }
            // The submitter's quota counts only unfinished jobs.
            if sj.sim[k].busy {
                sj.sim[k].busy = false;
                let b = &mut self.busy[sj.submitter as usize];
                *b = b.saturating_sub(1);
            }
        }
        let latency = self.now_ms().saturating_sub(sj.job.created_ms);
        let wrong = result != sj.truth;
        self.c.job_ended(
            sj.honest,
            true,
            wrong,
            latency,
            sj.execs.iter().filter(|e| e.state != ExecState::Rejected).count(),
            None,
        );
        sj.ended = true;
        Ok(())
    }

    fn failed(&mut self, sj: &mut SimJob) -> Result<(), Error> {
        if sj.ended {
            return Err(self.broken(sj, "failed after it had ended".into()));
        }
        for k in 0..sj.execs.len() {
            if sj.sim[k].busy {
                sj.sim[k].busy = false;
                let b = &mut self.busy[sj.submitter as usize];
                *b = b.saturating_sub(1);
            }
            let kind = self.nodes[sj.sim[k].node as usize].kind;
            if sj.execs[k].state.has_result() && kind == Kind::Honest {
                self.c.honest_wasted += 1;
            }
        }
        let latency = self.now_ms().saturating_sub(sj.job.created_ms);
        let used = sj.execs.iter().filter(|e| e.state != ExecState::Rejected).count();
        self.c.job_ended(sj.honest, false, false, latency, used, sj.job.error.as_deref());
        sj.ended = true;
        Ok(())
    }

    /// After a job ended: executions it no longer needs that never commit
    /// are stopped once past `timeouts.execution` (the requester's
    /// `leftovers`, which counts nothing against their node).
    fn leftovers(&mut self, j: u32, sj: &mut SimJob, now_ms: u64) {
        let limit = sj.job.spec.timeouts.execution.as_millis() as u64;
        let mut next = None::<u64>;
        for k in 0..sj.execs.len() {
            let e = &sj.execs[k];
            if matches!(e.state, ExecState::BidAsked | ExecState::Accepted | ExecState::Running) {
                let since = e.started_ms.unwrap_or(e.created_ms);
                if now_ms.saturating_sub(since) > limit {
                    self.end_exec(sj, k, ExecState::Failed, now_ms);
                } else {
                    next = Some(next.map_or(since + limit + 1, |n: u64| n.min(since + limit + 1)));
                }
            }
        }
        if let Some(d) = next {
            self.timer_taken(j, sj, d);
        }
    }

    /// When something may next change for a job without any report: the
    /// planner's timeouts, a gone node's ttl, and for a job [`short`] of
    /// nodes a retry backing off from 1 s to 16 s.
    fn deadline(&self, sj: &SimJob, now_ms: u64) -> u64 {
        let t = &sj.job.spec.timeouts;
        let ms = |d: Duration| d.as_millis() as u64;
        let mut d = sj.job.created_ms + ms(t.total) + 1;
        if sj.job.started_ms.is_none() {
            d = d.min(sj.job.created_ms + ms(t.queue) + 1);
        }
        for (e, s) in sj.execs.iter().zip(&sj.sim) {
            match e.state {
                ExecState::BidAsked => d = d.min(e.created_ms + self.pcfg.bid_timeout_ms + 1),
                ExecState::Accepted | ExecState::Running => {
                    d = d.min(e.started_ms.unwrap_or(e.created_ms) + ms(t.execution) + 1)
                }
                _ => {}
            }
            let n = &self.nodes[s.node as usize];
            if e.state.is_live() && !n.alive {
                d = d.min(n.left_ms + self.pcfg.node_ttl_ms + 1);
            }
        }
        if short(sj) {
            d = d.min(now_ms + (1000u64 << sj.waits.saturating_sub(1).min(4)));
        }
        d
    }

    fn check(&self, sj: &SimJob) -> Result<(), Error> {
        let mut nodes = BTreeSet::new();
        let mut used = 0usize;
        for e in &sj.execs {
            if e.state != ExecState::Rejected {
                used += 1;
                if !nodes.insert(e.node.as_str()) {
                    return Err(self.broken(sj, format!("two executions on node {}", e.node)));
                }
            }
        }
        let r = &sj.job.spec.redundancy;
        let most = (r.count + r.max_extra + sj.job.spec.retries) as usize;
        if used > most {
            return Err(self.broken(sj, format!("{used} executions, more than count + max_extra + retries = {most}")));
        }
        Ok(())
    }

    /// Takes job `j` out (put it back with [`Sim::put_back`]) if it has an
    /// execution `k`.
    fn exec_mut(&mut self, j: u32, k: u16) -> Option<(Box<SimJob>, usize)> {
        let sj = self.jobs.get_mut(j as usize)?.take()?;
        let k = k as usize;
        if k < sj.execs.len() {
            Some((sj, k))
        } else {
            self.jobs[j as usize] = Some(sj);
            None
        }
    }

    fn put_back(&mut self, j: u32, sj: Box<SimJob>) {
        self.jobs[j as usize] = Some(sj);
    }

    fn bid_arrive(&mut self, j: u32, k: u16) {
        let lat = self.lat();
        let fetch = self.cfg.fetch_ms * 1000.0;
        let service = self.exp_us(self.cfg.service_mean_ms * 1000.0);
        let now = self.now;
        let Some(sj) = self.jobs.get_mut(j as usize).and_then(|s| s.as_deref_mut()) else { return };
        let Some(s) = sj.sim.get_mut(k as usize) else { return };
        let node = &mut self.nodes[s.node as usize];
        if !node.alive || node.boot != s.boot {
            // Gone, or another process: no answer (the planner ends it).
            return;
        }
        node.reserved = node.reserved.saturating_sub(1);
        let accepted = match node.kind {
            Kind::Silent => true,
            _ if node.busy < self.cfg.slots => {
                node.busy += 1;
                s.running = true;
                let holds = node.holds.contains(&self.datasets[sj.dataset as usize].0);
                let t = now + service + if holds { 0 } else { fetch as u64 };
                self.seq += 1;
                self.queue.push(Reverse((t, self.seq, Ev::Finish(j, k))));
                true
            }
            _ => false,
        };
        self.at(now + lat, Ev::BidAnswer(j, k, accepted));
    }

    fn bid_answer(&mut self, j: u32, k: u16, accepted: bool) {
        let now_ms = self.now_ms();
        let Some((mut sj, k)) = self.exec_mut(j, k) else { return };
        let e = &mut sj.execs[k];
        if e.state != ExecState::BidAsked {
            self.put_back(j, sj);
            return;
        }
        e.updated_ms = now_ms;
        if accepted {
            e.state = ExecState::Running;
            e.started_ms = Some(now_ms);
        } else {
            e.state = ExecState::Rejected;
            let s = &mut sj.sim[k];
            if s.busy {
                s.busy = false;
                let b = &mut self.busy[sj.submitter as usize];
                *b = b.saturating_sub(1);
            }
            self.c.rejected += 1;
        }
        self.put_back(j, sj);
        self.mark(j);
    }

    fn finish(&mut self, j: u32, k: u16) {
        let lie: f64 = self.rng.gen();
        let lat = self.lat();
        let now = self.now;
        let (collude, sometimes) = (self.cfg.collude, self.cfg.sometimes);
        let Some(sj) = self.jobs.get_mut(j as usize).and_then(|s| s.as_deref_mut()) else { return };
        let Some(s) = sj.sim.get_mut(k as usize) else { return };
        let node = &mut self.nodes[s.node as usize];
        if !s.running || !node.alive || node.boot != s.boot {
            return;
        }
        s.running = false;
        node.busy = node.busy.saturating_sub(1);
        self.freed.push(s.node);
        let answer = match node.kind {
            Kind::Liar if lie < sometimes => {
                if collude {
                    // One Sybil group: every liar gives the same answer.
                    cid_of(b"wrong", u64::from(j), 0)
                } else {
                    cid_of(b"wrong", u64::from(j), u64::from(s.node) + 1)
                }
            }
            _ => sj.truth,
        };
        s.answer = Some(answer);
        self.seq += 1;
        self.queue.push(Reverse((now + lat, self.seq, Ev::CommitArrive(j, k))));
    }

    fn commit_arrive(&mut self, j: u32, k: u16) {
        let now_ms = self.now_ms();
        let Some((mut sj, k)) = self.exec_mut(j, k) else { return };
        let e = &mut sj.execs[k];
        if !matches!(e.state, ExecState::BidAsked | ExecState::Accepted | ExecState::Running) {
            // Ended meanwhile: a commitment for it is refused.
            self.put_back(j, sj);
            return;
        }
        e.state = ExecState::Committed;
        e.updated_ms = now_ms;
        e.commitment = Some([1; 32]);
        e.started_ms.get_or_insert(now_ms);
        let s = &mut sj.sim[k];
        if s.busy {
            s.busy = false;
            let b = &mut self.busy[sj.submitter as usize];
            *b = b.saturating_sub(1);
        }
        let completed = sj.job.state == JobState::Completed;
        if completed {
            // Committed after the result was known: revealed and judged,
            // without credit for agreeing (`handle`'s late judgement).
            self.ask_reveal(j, &mut sj, k);
        }
        self.put_back(j, sj);
        if !completed {
            self.mark(j);
        }
    }

    fn reveal_arrive(&mut self, j: u32, k: u16) {
        let lat = self.lat();
        let Some((sj, k)) = self.exec_mut(j, k) else { return };
        let node = &self.nodes[sj.sim[k].node as usize];
        // A committed answer survives a restart (the node's journal); a
        // node that is away does not answer.
        let ok = node.alive && sj.sim[k].answer.is_some();
        self.put_back(j, sj);
        let t = self.now + lat;
        self.at(t, Ev::RevealAnswer(j, k as u16, ok));
    }

    fn reveal_answer(&mut self, j: u32, k: u16, ok: bool) {
        let now_ms = self.now_ms();
        let Some(mut sj) = self.jobs.get_mut(j as usize).and_then(Option::take) else { return };
        let k = k as usize;
        if k < sj.execs.len() {
            sj.sim[k].reveal_inflight = false;
            if ok && sj.execs[k].state == ExecState::Committed {
                let e = &mut sj.execs[k];
                e.state = ExecState::Revealed;
                e.result = sj.sim[k].answer;
                e.nonce = Some([2; 32]);
                e.updated_ms = now_ms;
                if sj.job.state == JobState::Completed {
                    self.late_judge(&mut sj, k);
                }
            } else if sj.job.state.is_terminal() && sj.execs[k].state == ExecState::Committed {
                // A late reveal that cannot be had: not needed; stop it.
                self.end_exec(&mut sj, k, ExecState::Failed, now_ms);
            }
        }
        let terminal = sj.job.state.is_terminal();
        if terminal && self.settled(&sj) {
            self.live_jobs -= 1;
        } else {
            self.put_back(j, sj);
            if !terminal {
                self.mark(j);
            }
        }
    }

    /// `late_reveal`: a different result is dissent; the same one is
    /// credit only if committed before the result was known.
    fn late_judge(&mut self, sj: &mut SimJob, k: usize) {
        let s = &mut sj.sim[k];
        if s.judged {
            return;
        }
        s.judged = true;
        let node = &mut self.nodes[s.node as usize];
        if sj.execs[k].result == sj.job.result {
            if s.credit {
                node.stats.agreed += 1;
            }
        } else {
            node.stats.dissented += 1;
            self.c.late_dissent += 1;
        }
        sj.execs[k].state = ExecState::Completed;
        if node.kind == Kind::Honest {
            self.c.honest_late += 1;
        }
    }

    fn churn(&mut self) {
        if self.submitted < self.cfg.jobs || self.live_jobs > 0 {
            let gap = self.churn_gap();
            self.at(self.now + gap, Ev::Churn);
        }
        // A random node that is up leaves (a few tries: most are up).
        let n = self.nodes.len() as u32;
        for _ in 0..8 {
            let i = self.rng.gen_range(0..n);
            if self.nodes[i as usize].alive {
                self.leave(i);
                break;
            }
        }
    }

    fn leave(&mut self, i: u32) {
        let now_ms = self.now_ms();
        let down = self.exp_us(self.cfg.downtime_mean_ms * 1000.0).max(1);
        self.at(self.now + down, Ev::Join(i));
        self.c.departures += 1;
        let node = &mut self.nodes[i as usize];
        node.alive = false;
        node.left_ms = now_ms;
        // What it was running is gone with the process.
        node.busy = 0;
        node.reserved = 0;
        let active = std::mem::take(&mut node.active);
        let ttl = self.pcfg.node_ttl_ms;
        for (j, _) in active {
            // Its requester sees the connection close at once, and its
            // committed executions wait for the node ttl.
            self.mark(j);
            self.timer(j, now_ms + ttl + 1);
        }
    }

    fn report(&self) -> Report {
        let placed: Vec<u64> = self.nodes.iter().filter(|n| n.kind == Kind::Honest).map(|n| n.placed).collect();
        Report::new(&self.cfg, &self.c, &placed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job of `sim` with executions on `nodes` (in that state).
    fn job_on(sim: &Sim, nodes: &[u32], state: ExecState) -> SimJob {
        let job = Job::new(JobId::from_parts(1, 1), sim.template.clone(), 1);
        let execs = nodes
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let mut e = Execution::new(
                    ExecId::from_parts(1, k as u64),
                    job.id.clone(),
                    sim.nodes[n as usize].id.clone(),
                    false,
                    1,
                );
                e.state = state;
                e
            })
            .collect();
        let sim_execs = nodes
            .iter()
            .map(|&n| ExecSim {
                node: n,
                boot: 0,
                running: false,
                answer: None,
                reveal_inflight: false,
                credit: false,
                busy: false,
                judged: false,
            })
            .collect();
        SimJob { execs, sim: sim_execs, ..SimJob::new(job, Some(0), 0, cid_of(b"result", 0, 0), 0) }
    }

    #[test]
    fn the_invariant_checks_catch_what_they_guard() {
        let sim = Sim::new(Config::new(10, 1, 1));
        assert_eq!(sim.check(&job_on(&sim, &[1, 2, 3], ExecState::Running)), Ok(()));
        let e = sim.check(&job_on(&sim, &[1, 2, 1], ExecState::Running)).unwrap_err().to_string();
        assert!(e.contains("two executions on node n0000001"), "{e}");
        // Declined bids do not count: a node that said no may be asked again.
        assert_eq!(sim.check(&job_on(&sim, &[1, 1, 1, 2, 3], ExecState::Rejected)), Ok(()));
        // count 3 + max_extra 0 + retries 2 = 5 executions at most.
        let e = sim.check(&job_on(&sim, &[1, 2, 3, 4, 5, 6], ExecState::Lost)).unwrap_err().to_string();
        assert!(e.contains("6 executions, more than count + max_extra + retries = 5"), "{e}");
    }

    #[test]
    fn a_job_cannot_complete_without_a_quorum_of_distinct_nodes() {
        let mut sim = Sim::new(Config::new(10, 1, 1));
        let mut sj = job_on(&sim, &[1, 2], ExecState::Revealed);
        let truth = sj.truth;
        for e in &mut sj.execs {
            e.result = Some(truth);
        }
        sj.job.result = Some(truth);
        let ids: Vec<ExecId> = sj.execs.iter().map(|e| e.id.clone()).collect();
        // One agreeing execution is short of the quorum of 2.
        let e = sim.completed(0, &mut sj, &ids[..1], &ids[1..]).unwrap_err().to_string();
        assert!(e.contains("completed with 1 agreeing node(s)"), "{e}");
        assert_eq!(sim.completed(0, &mut sj, &ids, &[]), Ok(()));
        assert_eq!(sim.c.completed, 1);
        // And it ends once.
        let e = sim.completed(0, &mut sj, &ids, &[]).unwrap_err().to_string();
        assert!(e.contains("after it had ended"), "{e}");
    }
}
