//! # shoal-sim
//!
//! Two ways to see a Shoal network at scale. [`net`] runs real nodes
//! (`shoal-node` instances, their behaviours, planner, agreement and
//! databases) in one process over libp2p's memory transport and measures
//! them (`shoal-sim net`, the default command). The rest of this crate,
//! described below, is the discrete-event simulation (`shoal-sim des`).
//!
//! A discrete-event simulation of a Shoal network in virtual time (issue
//! 17, items 3 and 4): up to 100,000 nodes and 1,000,000 jobs, run through
//! the real planner ([`shoal_scheduler::placement::plan_within`], which
//! calls [`shoal_scheduler::agreement::decide`]) against modelled links,
//! churn and adversaries. Everything random draws from one seeded
//! `StdRng` and time is virtual, so a configuration and a seed give one
//! [`Report`], always.
//!
//! ## What is modelled
//!
//! - **Time and events.** Virtual microseconds; a binary heap of
//!   (time, sequence, event). Events: a job submitted, a bid arriving at a
//!   node, its answer, an execution finishing on its node (it commits), the
//!   commitment arriving, a reveal asked and answered, a scheduler pass for
//!   a job (on every report, coalesced, and on timers at the planner's next
//!   deadline: bid timeout, `timeouts.execution`, a gone node's ttl,
//!   `timeouts.queue`/`total`), a node leaving or coming back. A job left
//!   short of nodes (with executions left in its budget) joins a backlog: each slot that frees plans the oldest
//!   waiting jobs with that node in their view (the requester's capacity
//!   pass), and a timer backing off from 1 s to 16 s plans it too (the
//!   requester plans every job each second; the back-off bounds the cost
//!   of a flood of jobs no view has room for).
//! - **Links.** Each message takes a latency drawn log-uniformly from
//!   0.2–50 ms. A `Cancel` is taken as instant.
//! - **Nodes.** 2 slots each, 1 GiB. An honest node runs an execution for
//!   an exponential service time (mean 5 s), plus 1 s to fetch the input
//!   when it does not hold it, then commits; it reveals when asked (from
//!   its journal, also after a restart, while it is up). Each job reads one
//!   of `nodes / 5` data sets, each held by 3 random nodes
//!   ([`NodeView::holds`](shoal_scheduler::model::NodeView)).
//! - **Load.** Honest jobs arrive as a Poisson process at the rate that
//!   keeps half of all slots busy (`load = 0.5`), spread over 1,000
//!   submitters. Spec: redundancy 3, quorum 2, `max_extra` 0, retries 2,
//!   `timeouts.execution` 60 s (service is 5 s), queue 5 min, total 30 min.
//! - **The requester.** One logical requester keeps every node's track
//!   record ([`NodeStats`](shoal_scheduler::model::NodeStats)) from
//!   [`Plan::stats`](shoal_scheduler::placement::Plan::stats) and from late
//!   judgements, and carries out each plan as `node/src/requester.rs`'s
//!   `carry_out` does: lost, expired and cancelled executions ended (and
//!   stopped on their node), the job updated, a bid sent to each node named
//!   (its slot counted taken until the bid arrives), reveals asked. After
//!   a job completes, executions it did not need run on: one committed
//!   before the completion is revealed and judged with credit, one
//!   committing after is judged without credit for agreeing but with
//!   dissent counted, one that never commits is stopped at
//!   `timeouts.execution` without a mark against its node (`leftovers`).
//!   Its view of the nodes is exact (slots, liveness) but partial: see
//!   below.
//! - **A partial view.** Passing 100,000 nodes to `plan` for every pass
//!   would cost O(N) per call, and no requester knows that many (it keeps
//!   10,000 announcements). Each pass that may place gets the job's own
//!   nodes, the 3 holders of its input and 32 nodes drawn at random (and,
//!   in a capacity pass, the node whose slot freed); passes that only wait
//!   for answers get the job's own nodes. The
//!   planner ranks that view by reputation, inputs held, free slots and
//!   id. (A global "k best by reputation" list was not used: nearly every
//!   node ties at a clean record, and the planner's id tie-break would send
//!   every job to the same k nodes.)
//! - **Churn.** Departures are a Poisson process at `churn_per_min` of the
//!   nodes per minute; the node drops its connection (its running
//!   executions are lost at once, its committed ones after the 10 s node
//!   ttl unless it is back to reveal) and returns after an exponential
//!   downtime (mean 60 s) with a new boot id, same peer id and record.
//! - **Adversaries** (item 4):
//!   - *liars* return a wrong result, always or with probability
//!     `sometimes`; *colluding* liars (a Sybil group: many identities, one
//!     party) all return the same wrong CID for a job, independent ones
//!     each their own;
//!   - *silent* nodes announce free slots whatever they hold, accept every
//!     bid and never answer;
//!   - *flooding requesters* submit jobs at `flood_rate_per_s` each for as
//!     long as honest jobs arrive, optionally held to a per-submitter quota
//!     of busy executions (`--quota-executions`, `plan_within`'s
//!     `max_new`).
//!
//! ## Invariants checked at every scheduler pass
//!
//! A broken one stops the run with [`Error::Invariant`]: never two
//! executions of one job on one node (declined bids aside); a completed
//! job has at least `quorum` executions on distinct nodes reporting its
//! result, and ends once; nothing is placed on a node that is not up; a job never has more
//! than `count + max_extra + retries` executions (declined bids aside);
//! every job has completed or failed when the event queue runs dry.
//!
//! ## What it measures
//!
//! See [`Report`]: completion rate and latency (virtual), load spread over
//! honest nodes (Gini, max/mean of executions), the share of executions
//! placed on a holder of their input, wrong results accepted against
//! [`analytic`]'s prediction, in the first and last tenth of the jobs (what
//! reputation does over time), and what each adversary costs honest nodes.
//!
//! ## Figures (release build, 2-core development VM shared with builds)
//!
//! `shoal-sim des --nodes 100000 --jobs 1000000 --seed 1` (no adversaries):
//! all 1,000,000 jobs completed; latency p50 4.0 s, p99 14.8 s (virtual;
//! service is 5 s on average, and a job waits for the second of its three
//! executions to commit); 3.000 executions per job; 48.9% of executions on
//! a node holding the job's input (each data set is held by 3 nodes and
//! read by ~50 jobs a minute: the holders' 6 slots fill, and the rest
//! fetch); load over nodes Gini 0.219, busiest node 2.43× the mean; 8.0 M
//! planner calls and 28 M events in 98 s of wall time (63 s of CPU), 373 MB
//! of memory.
//!
//! The same with 10% colluding liars, 2% silent nodes and 5%/min churn
//! (`--liars 0.1 --collude --silent 0.02 --churn-per-min 0.05`): 99.981%
//! completed (193 jobs out of retries), p50 4.5 s, p99 63.1 s; 0.198% of
//! results wrong against 2.8% predicted without reputation: 1.741% in the
//! first tenth of the jobs, 0 in the last; 55,759 executions lost (42,492
//! on silent nodes), 18,571 departures; 3.054 executions per job; 34.7% on
//! a holder of the input; 9.2 M planner calls, 107 s of CPU, 832 MB.
//!
//! `--sweep --nodes 10000 --jobs 50000` (wrong results accepted, share of
//! completed jobs; "blind": planner without track records, what the
//! prediction assumes; "ranked": with them):
//!
//! | liars | kind | predicted | blind (±99.9%) | ranked | ranked, first / last tenth | no majority: predicted / simulated |
//! |---|---|---|---|---|---|---|
//! | 1% | colluding | 0.030% | 0.014% (±0.025) | 0.002% | 0.020% / 0% | |
//! | 5% | colluding | 0.725% | 0.802% (±0.125) | 0.104% | 0.760% / 0% | |
//! | 10% | colluding | 2.800% | 2.826% (±0.243) | 0.364% | 2.360% / 0% | |
//! | 20% | colluding | 10.40% | 10.73% (±0.45) | 1.772% | 9.860% / 0% | |
//! | 30% | colluding | 21.60% | 21.70% (±0.61) | 6.008% | 21.80% / 1.960% | |
//! | 1–30% | independent | 0 | 0 | 0 | 0 / 0 | 0.030 / 0.020% … 21.60 / 21.48% |
//!
//! Adversaries at 10,000 nodes, 50,000 jobs (ranked; the sweep's second
//! table; 455 s of wall time for the whole sweep):
//!
//! | scenario | completed | p50 / p99 | executions per job | wrong | lost | what it costs honest nodes |
//! |---|---|---|---|---|---|---|
//! | none | 100% | 4.0 / 14.9 s | 3.000 | 0 | 0 | nothing |
//! | churn 5%/min | 100% | 4.0 / 15.0 s | 3.011 | 0 | 561 | 0.51% of their executions wasted |
//! | Sybil group, 10% | 100% | 4.2 / 16.0 s | 3.000 | 0.364% | 0 | 110 honest executions outvoted and counted as dissent |
//! | liars 10%, half the time | 99.89% | 4.2 / 15.9 s | 3.000 | 0 | 0 | 0.04% wasted; 0.11% of jobs fail with no majority |
//! | silent 2% | 100% | 4.5 / 62.7 s | 3.049 | 0 | 2,519 | the p99 is `timeouts.execution` (60 s) |
//! | silent 2%, no reputation | 99.982% | 4.5 / 63.1 s | 3.054 | 0 | 2,792 | 0.01% wasted |
//! | 4 flooders at 2× the honest rate, no quota | 100% | 25.5 / 42.0 s | 2.341 | 0 | 0 | 40% of their executions go to flood jobs |
//! | the same, quota 64 busy executions each | 100% | 4.0 / 14.9 s | 3.000 | 0 | 0 | 13.9% of their executions go to flood jobs; honest latency as without flooders |
//!
//! What the design does about each: colluding identities win exactly as
//! often as the binomial predicts while they are unknown, and reputation
//! (dissent found by judging every execution, also those not needed for
//! the vote) ranks them last once one of them is outvoted: 21.8% wrong in
//! the first tenth of the jobs at 30% colluders, 2.0% in the last; but a
//! colluder that wins a vote earns agreement and its honest opponent is
//! marked dissenting. Independent liars never get a wrong result accepted;
//! they cost liveness (jobs without a majority fail unless `max_extra`
//! allows more executions). Silent nodes cost latency, not correctness:
//! the execution they hold is lost only at `timeouts.execution`, and only
//! when the job still needed it (a straggler of a completed job is stopped
//! without a mark against its node), so reputation learns little about
//! them. Flooders take slots first come, first served; the per-submitter
//! quota of busy executions (`plan_within`'s `max_new`) bounds what they
//! hold.
//!
//! Not modelled: several requesters with their own records (one shared
//! record learns fastest), liars that return to shed a bad record under a
//! new identity, message loss, bandwidth, and the 1-second staleness of
//! announcements (the view's slots are exact).
//!
//! ## Layout
//! - `lib.rs`: this overview.
//! - `des.rs`: the engine: [`Config`], nodes, jobs, events, the
//!   requester's side around the real planner, the invariants.
//! - `report.rs`: [`Report`], its figures and how it prints.
//! - `analytic.rs`: the predicted wrong-acceptance and no-majority rates.
//! - `net.rs`: the in-process network of real nodes (`shoal-sim net`,
//!   the default command): `shoal-node` instances over libp2p's memory
//!   transport, measured.
//! - `main.rs`: the `shoal-sim` binary (`net`, `des`, `--sweep`).

pub mod analytic;
mod des;
pub mod net;
mod report;

pub use des::{run, Config, Error};
pub use report::Report;
