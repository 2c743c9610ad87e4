//! # shoal-scheduler
//!
//! The job model, placement, result agreement and the
//! node-to-node protocol of Shoal's peer network.
//!
//! A job is a [`spec::Spec`] (a Wasm module and inputs by CID, where it
//! may run, how many nodes run it and how many must agree). The scheduler
//! asks nodes to run it; each run on one node is an
//! [`model::Execution`]. Nodes commit to their result before anyone's
//! result is revealed ([`commit`]), results are agreed by
//! [`agreement::decide`], and [`placement::plan`] turns the whole state of
//! one job (the job, the nodes seen, its executions, the time) into what to
//! do next. Both are pure functions: the network layer feeds them and
//! carries out their answers, and [`db::Db`] keeps jobs and executions in
//! SQLite across restarts.
//!
//! ## Layout
//! - `lib.rs`: this overview.
//! - `model.rs`: ids, job and execution states, and the records (`Job`,
//!   `Execution`, `NodeView`, `NodeStats`).
//! - `spec.rs`: the job spec: parsing (YAML or JSON), defaults, validation
//!   (reference: `docs/job-spec.md`).
//! - `constraint.rs`: node label constraints (`zone=eu`, `tier in (a,b)`).
//! - `commit.rs`: commit-reveal of result CIDs.
//! - `agreement.rs`: deciding a job's result from its executions' results.
//! - `placement.rs`: the scheduler's step function, `plan`.
//! - `db.rs`: jobs, executions and node stats in SQLite.
//! - `receipt.rs`: signed receipts of completed jobs, the job CID, and
//!   their offline verification.
//! - `pipeline.rs`: pipelines, a few jobs submitted together as a DAG
//!   where a step may read another's result: parsing, ordering, resolving
//!   a step's spec, and the pipeline's signed receipt and its
//!   verification.
//! - `flow.rs`: a pipeline's progress: which steps run next, which can
//!   no longer run, and when it is over (a pure function).
//! - `holds.rs`: which roots a node holds, as a bounded Bloom filter it
//!   announces (placement prefers nodes that hold a job's inputs).
//! - `serde_util.rs`: CIDs and hashes as strings in JSON and YAML.
//! - `net/`: the node-to-node protocol over libp2p: `mod.rs` (the
//!   composed behaviour, the swarm's event loop and its client),
//!   `proto.rs` (messages, protocol names, size caps).

pub mod agreement;
pub mod commit;
pub mod constraint;
pub mod db;
pub mod flow;
pub mod holds;
pub mod model;
pub mod net;
pub mod pipeline;
pub mod placement;
pub mod receipt;
mod serde_util;
pub mod spec;
