//! What a run measured, and how it prints.

use std::collections::BTreeMap;
use std::fmt;

use crate::analytic;
use crate::des::Config;

/// Raw counts gathered during a run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts {
    pub jobs: u64,
    pub events: u64,
    pub end_ms: u64,
    pub plans: u64,
    pub placed: u64,
    pub placed_on_holder: u64,
    pub rejected: u64,
    pub lost: u64,
    pub lost_to_silent: u64,
    pub departures: u64,
    pub honest_wasted: u64,
    pub honest_voted: u64,
    pub honest_outvoted: u64,
    pub honest_late: u64,
    pub honest_execs_for_flood: u64,
    pub late_dissent: u64,
    pub completed: u64,
    pub failed: u64,
    pub wrong: u64,
    pub used: u64,
    pub latencies: Vec<u32>,
    /// Per tenth of the honest jobs (by submission order): completed, wrong.
    pub tenths: [(u64, u64); 10],
    pub failures: BTreeMap<&'static str, u64>,
    pub flood_completed: u64,
    pub flood_failed: u64,
    /// Virtual now, ms (set by the engine before counting).
    pub now_ms: u64,
    pub capacity_plans: u64,
    pub timer_plans: u64,
}

impl Counts {
    pub fn new(jobs: usize) -> Counts {
        Counts { jobs: jobs as u64, latencies: Vec::with_capacity(jobs), ..Counts::default() }
    }

    pub fn job_ended(
        &mut self,
        honest: Option<u32>,
        completed: bool,
        wrong: bool,
        latency_ms: u64,
        used: usize,
        error: Option<&str>,
    ) {
        self.end_ms = self.end_ms.max(self.now_ms);
        let Some(no) = honest else {
            if completed {
                self.flood_completed += 1;
            } else {
                self.flood_failed += 1;
            }
            return;
        };
        self.used += used as u64;
        let tenth = (u64::from(no) * 10 / self.jobs.max(1)).min(9) as usize;
        if completed {
            self.completed += 1;
            self.latencies.push(u32::try_from(latency_ms).unwrap_or(u32::MAX));
            self.tenths[tenth].0 += 1;
            if wrong {
                self.wrong += 1;
                self.tenths[tenth].1 += 1;
            }
        } else {
            self.failed += 1;
            let e = error.unwrap_or("");
            let why = if e.starts_with("timed out") {
                "timed out"
            } else if e.starts_with("no consensus") {
                "no consensus"
            } else if e.starts_with("gave up") {
                "out of retries"
            } else if e.starts_with("no node") {
                "no node (queue timeout)"
            } else if e.contains("quota") {
                "quota (queue timeout)"
            } else {
                "other"
            };
            *self.failures.entry(why).or_default() += 1;
        }
    }
}

/// The figures of one run. Everything in it follows from the
/// configuration and the seed: two runs of one configuration give equal
/// reports (wall time is the binary's to print).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Nodes, honest jobs, seed.
    pub nodes: usize,
    /// Honest jobs submitted.
    pub jobs: u64,
    /// Flood jobs submitted (completed + failed).
    pub flood_jobs: u64,
    /// Flood jobs completed.
    pub flood_completed: u64,
    /// Honest jobs completed.
    pub completed: u64,
    /// Honest jobs failed, by reason.
    pub failures: BTreeMap<&'static str, u64>,
    /// Completed honest jobs whose accepted result is wrong.
    pub wrong: u64,
    /// Honest job latency (submission to completion), virtual ms: p50, p99.
    pub latency_ms: (u32, u32),
    /// Virtual time when the last job ended, ms.
    pub end_ms: u64,
    /// Executions placed (declined bids not counted).
    pub placed: u64,
    /// Share of executions placed on a node holding the job's input.
    pub on_holder: f64,
    /// Executions per honest node: Gini coefficient and max/mean.
    pub load_gini: f64,
    /// Busiest honest node's executions over the mean.
    pub load_max_over_mean: f64,
    /// Executions (not declined) per honest job.
    pub execs_per_job: f64,
    /// Bids declined (node busy).
    pub rejected: u64,
    /// Executions lost (churn, silence), and those on silent nodes.
    pub lost: u64,
    /// Executions lost on silent nodes.
    pub lost_to_silent: u64,
    /// Node departures.
    pub departures: u64,
    /// Honest-node executions: that voted with the accepted result, that
    /// were outvoted (marked dissenting), that ran after the result was
    /// known (judged late), that were wasted (lost, cancelled, outvoted,
    /// or in failed jobs).
    pub honest_voted: u64,
    /// Honest executions outvoted by colluders (counted against them).
    pub honest_outvoted: u64,
    /// Honest executions judged after their job completed.
    pub honest_late: u64,
    /// Honest executions wasted.
    pub honest_wasted: u64,
    /// Honest-node executions spent on flood jobs.
    pub honest_for_flood: u64,
    /// Dissent found by judging executions after their job completed.
    pub late_dissent: u64,
    /// Completed honest jobs and wrong ones in the first and last tenth.
    pub first_tenth: (u64, u64),
    /// The last tenth.
    pub last_tenth: (u64, u64),
    /// The analytic prediction of the wrong share (see [`analytic`]).
    pub predicted_wrong: f64,
    /// The analytic prediction of jobs left without a majority.
    pub predicted_no_majority: f64,
    /// Planner calls: all, those of capacity passes, those on timers.
    pub plans: u64,
    /// Planner calls of capacity passes (a slot freed).
    pub capacity_plans: u64,
    /// Planner calls on timers (timeouts, retries).
    pub timer_plans: u64,
    /// Events handled.
    pub events: u64,
    /// The configuration, for the printout.
    pub liars: f64,
    /// Whether the liars collude.
    pub collude: bool,
    /// Candidate sample size.
    pub sample: usize,
}

fn gini(xs: &[u64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_unstable();
    let n = v.len() as f64;
    let sum: f64 = v.iter().map(|&x| x as f64).sum();
    if sum == 0.0 {
        return 0.0;
    }
    // G = (2 Σ i·x_i) / (n Σ x) − (n + 1) / n, with i from 1, x sorted.
    let weighted: f64 = v.iter().enumerate().map(|(i, &x)| (i as f64 + 1.0) * x as f64).sum();
    2.0 * weighted / (n * sum) - (n + 1.0) / n
}

/// The value at rank `p` (0 to 1) of `sorted`; the default when empty.
pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Report {
    pub(crate) fn new(cfg: &Config, c: &Counts, placed_per_honest_node: &[u64]) -> Report {
        let mut lat = c.latencies.clone();
        lat.sort_unstable();
        let mean = if placed_per_honest_node.is_empty() {
            0.0
        } else {
            placed_per_honest_node.iter().sum::<u64>() as f64 / placed_per_honest_node.len() as f64
        };
        let max = placed_per_honest_node.iter().copied().max().unwrap_or(0) as f64;
        Report {
            nodes: cfg.nodes,
            jobs: c.jobs,
            flood_jobs: c.flood_completed + c.flood_failed,
            flood_completed: c.flood_completed,
            completed: c.completed,
            failures: c.failures.clone(),
            wrong: c.wrong,
            latency_ms: (percentile(&lat, 0.5), percentile(&lat, 0.99)),
            end_ms: c.end_ms,
            placed: c.placed,
            on_holder: c.placed_on_holder as f64 / c.placed.max(1) as f64,
            load_gini: gini(placed_per_honest_node),
            load_max_over_mean: if mean > 0.0 { max / mean } else { 0.0 },
            execs_per_job: c.used as f64 / c.jobs.max(1) as f64,
            rejected: c.rejected,
            lost: c.lost,
            lost_to_silent: c.lost_to_silent,
            departures: c.departures,
            honest_voted: c.honest_voted,
            honest_outvoted: c.honest_outvoted,
            honest_late: c.honest_late,
            honest_wasted: c.honest_wasted,
            honest_for_flood: c.honest_execs_for_flood,
            late_dissent: c.late_dissent,
            first_tenth: c.tenths[0],
            last_tenth: c.tenths[9],
            predicted_wrong: analytic::wrong_accepted(cfg.liars, cfg.sometimes, cfg.collude),
            predicted_no_majority: analytic::no_majority(cfg.liars, cfg.sometimes, cfg.collude),
            plans: c.plans,
            capacity_plans: c.capacity_plans,
            timer_plans: c.timer_plans,
            events: c.events,
            liars: cfg.liars,
            collude: cfg.collude,
            sample: cfg.sample,
        }
    }

    /// Share of honest jobs completed.
    pub fn completion_rate(&self) -> f64 {
        self.completed as f64 / self.jobs.max(1) as f64
    }

    /// Share of completed honest jobs whose result is wrong.
    pub fn wrong_rate(&self) -> f64 {
        self.wrong as f64 / self.completed.max(1) as f64
    }

    /// Jobs failed for want of a majority.
    pub fn no_consensus(&self) -> u64 {
        self.failures.get("no consensus").copied().unwrap_or(0)
    }
}

fn share(part: (u64, u64)) -> f64 {
    part.1 as f64 / part.0.max(1) as f64
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |x: f64| format!("{:.3}%", x * 100.0);
        writeln!(f, "nodes {}  honest jobs {}  flood jobs {}", self.nodes, self.jobs, self.flood_jobs)?;
        writeln!(
            f,
            "completed {} ({})  failed [{}]  latency p50 {} ms  p99 {} ms  (last job ended at {:.1} s virtual)",
            self.completed,
            pct(self.completion_rate()),
            self.failures.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "),
            self.latency_ms.0,
            self.latency_ms.1,
            self.end_ms as f64 / 1000.0
        )?;
        writeln!(
            f,
            "placement: {} executions, {:.3} per job; on a holder of the input {}; load over honest nodes: gini {:.3}, max/mean {:.2}; bids declined {}",
            self.placed,
            self.execs_per_job,
            pct(self.on_holder),
            self.load_gini,
            self.load_max_over_mean,
            self.rejected
        )?;
        writeln!(
            f,
            "wrong accepted: {} of {} ({}), predicted {} ({} liars{}); no majority predicted {}",
            self.wrong,
            self.completed,
            pct(self.wrong_rate()),
            pct(self.predicted_wrong),
            pct(self.liars),
            if self.collude { ", colluding" } else { ", independent" },
            pct(self.predicted_no_majority)
        )?;
        writeln!(
            f,
            "reputation: wrong in the first tenth {} ({} of {}), last tenth {} ({} of {}); dissent found late {}",
            pct(share(self.first_tenth)),
            self.first_tenth.1,
            self.first_tenth.0,
            pct(share(self.last_tenth)),
            self.last_tenth.1,
            self.last_tenth.0,
            self.late_dissent
        )?;
        writeln!(
            f,
            "honest nodes: {} executions voted with the result, {} outvoted by colluders, {} judged after completion, {} wasted (lost, cancelled, outvoted or in failed jobs), {} spent on flood jobs",
            self.honest_voted, self.honest_outvoted, self.honest_late, self.honest_wasted, self.honest_for_flood
        )?;
        writeln!(
            f,
            "losses: {} executions lost ({} on silent nodes), {} node departures; flood jobs completed {} of {}",
            self.lost, self.lost_to_silent, self.departures, self.flood_completed, self.flood_jobs
        )?;
        write!(
            f,
            "work: {} planner calls ({} in capacity passes, {} on timers), {} events; candidate view per placement: {} random nodes + the input's holders + the job's own nodes",
            self.plans, self.capacity_plans, self.timer_plans, self.events, self.sample
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gini_of_equal_loads_is_zero_and_of_one_node_nearly_one() {
        assert!(gini(&[5, 5, 5, 5]).abs() < 1e-12);
        let mut v = vec![0; 99];
        v.push(100);
        assert!((gini(&v) - 0.99).abs() < 1e-9);
    }

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile::<u32>(&[], 0.5), 0);
    }
}
