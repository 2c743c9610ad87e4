//! Ids, states and the records the scheduler keeps: jobs, their
//! executions (one job run on one node), and what it knows of each node.
//!
//! Ids are made by the caller, which owns the clock and the randomness;
//! [`JobId::from_parts`] and [`ExecId::from_parts`] only format them, so
//! that ids sort by creation time as strings (and in SQLite).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use shoal_storage::Cid;

use crate::spec::Spec;

/// Longest id accepted ([`JobId`], [`ExecId`]): ids arrive from the network.
pub const MAX_ID_LEN: usize = 128;

/// A node: a libp2p `PeerId` in base58.
pub type NodeId = String;

/// Why an id or a state name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not a well-formed id.
    #[error("invalid {kind} id {id:?}: use 1 to {MAX_ID_LEN} characters from a-z, A-Z, 0-9, '-', '_' and '.'")]
    Id {
        /// "job" or "execution".
        kind: &'static str,
        /// What was given.
        id: String,
    },
    /// Not a known state name.
    #[error("unknown {kind} state {given:?}; expected one of: {expected}")]
    State {
        /// "job" or "execution".
        kind: &'static str,
        /// What was given.
        given: String,
        /// The names accepted.
        expected: &'static str,
    },
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

macro_rules! id_type {
    ($name:ident, $kind:literal, $prefix:literal) => {
        #[doc = concat!("A ", $kind, " id: 1 to [`MAX_ID_LEN`] characters of `[A-Za-z0-9._-]`.")]
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("A sortable id `", $prefix, "-<13 hex digits of now_ms><8 hex digits of rand>`: ")]
            /// ids made later sort later (to the millisecond); `rand`
            /// (its low 32 bits) separates ids made in the same millisecond.
            pub fn from_parts(now_ms: u64, rand: u64) -> $name {
                // 13 hex digits hold 52 bits of milliseconds: the year 144 000.
                $name(format!(concat!($prefix, "-{:013x}{:08x}"), now_ms & ((1 << 52) - 1), rand as u32))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                if valid_id(s) {
                    Ok($name(s.to_string()))
                } else {
                    Err(Error::Id { kind: $kind, id: s.chars().take(MAX_ID_LEN + 16).collect() })
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                if valid_id(&s) {
                    Ok($name(s))
                } else {
                    s.parse()
                }
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                id_schema(concat!("a ", $kind, " id, e.g. ", $prefix, "-001a24f0cffe7d3cce387"))
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

/// The OpenAPI schema of an id: its pattern and length.
fn id_schema(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(ID_PATTERN))
        .min_length(Some(1))
        .max_length(Some(MAX_ID_LEN))
        .description(Some(description))
        .into()
}

/// The form of every id ([`MAX_ID_LEN`] characters at most).
pub const ID_PATTERN: &str = "^[A-Za-z0-9._-]+$";

id_type!(JobId, "job", "j");
id_type!(ExecId, "execution", "e");
id_type!(PipelineId, "pipeline", "p");

macro_rules! state_names {
    ($name:ident, $kind:literal, $($variant:ident => $text:literal),+ $(,)?) => {
        impl $name {
            /// Every state, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The state's name (as displayed, parsed and stored).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(Error::State {
                        kind: $kind,
                        given: s.chars().take(64).collect(),
                        expected: concat!($($text, " "),+).trim_ascii_end(),
                    }),
                }
            }
        }
    };
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for nodes: no node has accepted it, or every execution
    /// ended without a result and replacements are being sought.
    Queued,
    /// Some node accepted it, or results are in and being agreed on.
    Running,
    /// Results agreed: [`Job::result`] is the answer.
    Completed,
    /// Gave up: [`Job::error`] says why.
    Failed,
    /// Cancelled by its submitter.
    Cancelled,
}

state_names!(JobState, "job",
    Queued => "queued", Running => "running", Completed => "completed", Failed => "failed", Cancelled => "cancelled");

impl JobState {
    /// Completed, Failed or Cancelled: nothing more happens to the job.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed | JobState::Cancelled)
    }
}

/// Where one execution (a job on one node) is in its life.
///
/// ```text
/// bid_asked -> accepted -> running -> committed -> revealed
///     \-> rejected                      (any live) -> failed | lost
/// ```
/// `completed` is a result taken without commit-reveal (the node sent the
/// result itself); agreement counts it like `revealed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecState {
    /// The node was asked to take the job.
    BidAsked,
    /// The node said yes.
    Accepted,
    /// The node started it.
    Running,
    /// The node finished and sent a commitment to its result.
    Committed,
    /// The node revealed its result and nonce, and they match the commitment.
    Revealed,
    /// The node sent its result directly.
    Completed,
    /// The node said no (or did not answer the bid in time).
    Rejected,
    /// The node could not run it (and said why).
    Failed,
    /// The node went away or ran past the execution timeout.
    Lost,
}

state_names!(ExecState, "execution",
    BidAsked => "bid_asked", Accepted => "accepted", Running => "running", Committed => "committed",
    Revealed => "revealed", Completed => "completed", Rejected => "rejected", Failed => "failed", Lost => "lost");

impl ExecState {
    /// Rejected, Completed, Failed or Lost: the execution is over.
    /// (Revealed is not: its result still waits for agreement.)
    pub fn is_terminal(self) -> bool {
        matches!(self, ExecState::Rejected | ExecState::Completed | ExecState::Failed | ExecState::Lost)
    }

    /// BidAsked, Accepted, Running or Committed: the execution may still
    /// produce a result.
    pub fn is_live(self) -> bool {
        matches!(self, ExecState::BidAsked | ExecState::Accepted | ExecState::Running | ExecState::Committed)
    }

    /// Revealed or Completed: the execution has a result for agreement.
    pub fn has_result(self) -> bool {
        matches!(self, ExecState::Revealed | ExecState::Completed)
    }
}

/// A job and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What to run and how.
    pub spec: Spec,
    /// Where it is.
    pub state: JobState,
    /// When it was submitted (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
    /// When it first became Running.
    pub started_ms: Option<u64>,
    /// The agreed result (Completed jobs).
    #[serde(with = "crate::serde_util::opt_cid")]
    #[schema(value_type = Option<String>)]
    pub result: Option<Cid>,
    /// Why it failed (Failed jobs).
    pub error: Option<String>,
    /// Extra executions granted beyond `redundancy.count` to settle a
    /// disagreement (at most `redundancy.max_extra`).
    pub extra_used: u32,
    /// The agreed result's exit code (Completed jobs), read from the
    /// result itself: the network did its job even when the guest failed,
    /// and this says how the guest did (see [`Job::outcome`]).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why the agreed result's guest failed without exiting (a trap, a
    /// limit), in one line, read from the result's `failure` file.
    #[serde(default)]
    pub failure: Option<String>,
    /// The CID of the completed job's signed receipt (see
    /// [`crate::receipt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    #[serde(with = "crate::serde_util::opt_cid")]
    pub receipt: Option<Cid>,
    /// Answered from the cache: the receipt of an earlier run of the same
    /// job (same job CID) it completed with, run nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    #[serde(with = "crate::serde_util::opt_cid")]
    pub cached: Option<Cid>,
    /// Who submitted it, when the submission was signed (see
    /// [`Submitter`]); absent: an anonymous submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<Submitter>,
}

/// The signed claim of a submission: the submitter's key (as a peer id,
/// which holds an ed25519 key inline) signed
/// [`crate::receipt::submit_statement`] of the job's CID at `at_ms`.
/// Requesters check it (and its age) when the job is submitted, compute
/// nodes that work only for some submitters check it with each bid, and
/// the job's receipt carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Submitter {
    /// The submitter's key, as a peer id (`12D3KooW…`).
    pub key: String,
    /// When it signed (ms since the Unix epoch, its own clock).
    pub at_ms: u64,
    /// Its signature (hex).
    pub signature: String,
    /// Set on the jobs of a pipeline's steps: the pipeline's CID, which
    /// the signature signs instead of the job's (a dependent step's spec
    /// does not exist when its submitter signs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
}

impl Submitter {
    /// Whether the signature is `key`'s over this job CID at `at_ms`. A
    /// pipeline step's claim signs its pipeline, not this job: false.
    pub fn verify(&self, job_cid: &Cid) -> bool {
        self.pipeline.is_none() && self.signs(job_cid)
    }

    /// Whether the signature is `key`'s over `cid` (a job's, or for a
    /// pipeline step's claim its pipeline's) at `at_ms`.
    pub fn signs(&self, cid: &Cid) -> bool {
        self.key.parse::<libp2p::PeerId>().is_ok_and(|peer| {
            crate::receipt::signed_by(&peer, &crate::receipt::submit_statement(cid, self.at_ms), &self.signature)
        })
    }
}

/// How the guest of a completed job did: its agreed result holds a zero
/// exit code and no failure, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Exit code 0, no failure.
    Succeeded,
    /// A non-zero exit code or a failure (trap, limit, bad module).
    Failed,
}

impl Outcome {
    /// The outcome's name (as displayed and in the API).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Job {
    /// A new Queued job.
    pub fn new(id: JobId, spec: Spec, now_ms: u64) -> Job {
        Job {
            id,
            spec,
            state: JobState::Queued,
            created_ms: now_ms,
            updated_ms: now_ms,
            started_ms: None,
            result: None,
            error: None,
            extra_used: 0,
            exit_code: None,
            failure: None,
            receipt: None,
            cached: None,
            submitter: None,
        }
    }

    /// How the guest did, for a Completed job whose outcome is known (jobs
    /// completed before outcomes were recorded have none).
    pub fn outcome(&self) -> Option<Outcome> {
        if self.state != JobState::Completed {
            return None;
        }
        match (self.exit_code, &self.failure) {
            (Some(0), None) => Some(Outcome::Succeeded),
            (Some(_), _) | (None, Some(_)) => Some(Outcome::Failed),
            (None, None) => None,
        }
    }

    /// The exit status a CLI waiting on this job exits with: the guest's
    /// exit code (its low byte, as a process would), 1 for a failure
    /// without one or a job that did not complete, 0 on success.
    pub fn exit_status(&self) -> u8 {
        match (self.state, self.outcome(), self.exit_code) {
            (JobState::Completed, Some(Outcome::Succeeded) | None, _) => 0,
            (JobState::Completed, Some(_), Some(c)) if c & 0xff != 0 => (c & 0xff) as u8,
            _ => 1,
        }
    }
}

/// One job run on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Execution {
    /// Its id.
    pub id: ExecId,
    /// The job it runs.
    pub job: JobId,
    /// The node it runs on.
    pub node: NodeId,
    /// Where it is.
    pub state: ExecState,
    /// When the bid was asked.
    pub created_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
    /// When the node started it.
    pub started_ms: Option<u64>,
    /// The node's commitment to its result (see [`commit`](crate::commit)).
    #[serde(with = "crate::serde_util::opt_hex32")]
    #[schema(value_type = Option<String>)]
    pub commitment: Option<[u8; 32]>,
    /// The result CID (Revealed or Completed).
    #[serde(with = "crate::serde_util::opt_cid")]
    #[schema(value_type = Option<String>)]
    pub result: Option<Cid>,
    /// Why it failed, was lost or rejected.
    pub error: Option<String>,
    /// The head of its standard output, for display (the result holds it all).
    pub stdout: Option<String>,
    /// The head of its standard error, for display.
    pub stderr: Option<String>,
    /// The guest's exit status.
    pub exit_code: Option<i32>,
    /// Placed beyond `redundancy.count` to settle a disagreement.
    pub extra: bool,
    /// The nonce revealed with the result.
    #[serde(with = "crate::serde_util::opt_hex32")]
    #[schema(value_type = Option<String>)]
    pub nonce: Option<[u8; 32]>,
    /// How the node says it ran it, revealed with the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ExecMeta>,
    /// The boot id the node announced when it was asked: a node that
    /// announces another one has restarted and forgotten the execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<u64>,
    /// The node's signature of its commitment (hex; see
    /// [`crate::receipt::commit_statement`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_signature: Option<String>,
    /// The node's signature of its reveal (hex; see
    /// [`crate::receipt::reveal_statement`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reveal_signature: Option<String>,
}

/// How a compute node ran an execution, as it reports it: metadata beside
/// the result, never inside it, so it takes no part in agreement (and a
/// node could lie about it: it is informative, not evidence).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecMeta {
    /// The wasi-nn devices the job used, in order of first use, e.g.
    /// `cpu: tract 0.23.9` or `gpu: llvmpipe (...) (software)`.
    #[serde(default)]
    pub nn_devices: Vec<String>,
    /// Wall time in the sandbox, milliseconds.
    #[serde(default)]
    pub wall_ms: u64,
    /// Fuel the guest consumed.
    #[serde(default)]
    pub fuel: u64,
}

impl ExecMeta {
    /// Most devices kept.
    pub const MAX_DEVICES: usize = 8;
    /// Longest device description kept, in bytes.
    pub const MAX_DEVICE_LEN: usize = 256;

    /// Within [`ExecMeta::MAX_DEVICES`] and [`ExecMeta::MAX_DEVICE_LEN`]:
    /// what a peer sent is stored and shown, so it is bounded first.
    pub fn bounded(mut self) -> ExecMeta {
        self.nn_devices.truncate(Self::MAX_DEVICES);
        for d in &mut self.nn_devices {
            if d.len() > Self::MAX_DEVICE_LEN {
                let mut end = Self::MAX_DEVICE_LEN;
                while !d.is_char_boundary(end) {
                    end -= 1;
                }
                d.truncate(end);
            }
        }
        self
    }
}

impl Execution {
    /// A new execution in BidAsked.
    pub fn new(id: ExecId, job: JobId, node: NodeId, extra: bool, now_ms: u64) -> Execution {
        Execution {
            id,
            job,
            node,
            state: ExecState::BidAsked,
            created_ms: now_ms,
            updated_ms: now_ms,
            started_ms: None,
            commitment: None,
            result: None,
            error: None,
            stdout: None,
            stderr: None,
            exit_code: None,
            extra,
            nonce: None,
            meta: None,
            boot: None,
            commit_signature: None,
            reveal_signature: None,
        }
    }

    /// What may be shown of this execution while its job has not ended:
    /// everything but the revealed result, nonce and output. Reveals start
    /// once the quorum has committed, while other executions of the job
    /// may still be running: were revealed answers shown before the job
    /// ends, a node could read them (through the requester's API) and
    /// commit to a copy.
    pub fn sealed(mut self, job: JobState) -> Execution {
        if !job.is_terminal() {
            self.result = None;
            self.nonce = None;
            self.stdout = None;
            self.stderr = None;
            self.meta = None;
            self.reveal_signature = None;
        }
        self
    }
}

/// A GPU a node offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Gpu {
    /// Adapter name.
    pub name: String,
    /// Its memory.
    pub memory_bytes: u64,
    /// A software (CPU) implementation rather than hardware.
    pub software: bool,
    /// The driver and its version (`llvmpipe: Mesa 22.3.6 (LLVM 15.0.6)`):
    /// with the name, what `fast` results are reproducible on. Empty from
    /// nodes that predate it.
    #[serde(default)]
    pub driver: String,
    /// It runs exact inference (`nn.mode: exact` with `resources.gpu`).
    /// False from nodes that predate it.
    #[serde(default)]
    pub exact: bool,
}

/// A node's track record, kept by the scheduler from agreement outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeStats {
    /// Executions whose result matched the agreed one.
    pub agreed: u64,
    /// Executions whose result differed from the agreed one.
    pub dissented: u64,
    /// Executions lost (node gone, execution timeout).
    pub lost: u64,
    /// Executions the node reported as failed.
    pub failed: u64,
}

/// What a node offers, as it announces it: the one definition the wire
/// ([`crate::net::proto::Announcement`]) and the scheduler
/// ([`NodeView`]) share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Capacity {
    /// Its Shoal version.
    pub version: String,
    /// Whether it runs jobs at all.
    pub compute: bool,
    /// Job slots it has.
    pub slots_total: u32,
    /// Job slots free now.
    pub slots_free: u32,
    /// Memory it offers to jobs.
    pub memory_bytes: u64,
    /// Labels matched by job constraints (`zone=eu`...).
    pub labels: BTreeMap<String, String>,
    /// Its GPU, if any.
    pub gpu: Option<Gpu>,
    /// The only submitters (keys, as peer ids) whose jobs it runs; empty:
    /// anyone's (`shoal node --allow-submitter`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub submitters: Vec<String>,
}

impl Capacity {
    /// Whether it runs jobs from `submitter` (`None`: anonymous ones). A
    /// pipeline step's claim signs the pipeline, which such a node cannot
    /// check against the step: it runs only jobs signed themselves.
    pub fn works_for(&self, submitter: Option<&Submitter>) -> bool {
        self.submitters.is_empty()
            || submitter.is_some_and(|s| s.pipeline.is_none() && self.submitters.contains(&s.key))
    }
}

/// What the scheduler knows of a node (from its announcements). Its
/// [`Capacity`] fields read through it (`view.slots_free`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    /// Its id.
    pub id: NodeId,
    /// What it announced.
    #[serde(flatten)]
    pub capacity: Capacity,
    /// When it was last heard from (ms since the Unix epoch).
    pub last_seen_ms: u64,
    /// Inputs it told us it holds (may be empty: unknown).
    #[serde(with = "crate::serde_util::cid_set")]
    #[schema(value_type = Vec<String>)]
    pub holds: BTreeSet<Cid>,
    /// Its track record.
    pub stats: NodeStats,
    /// The random id of the node's current process (a new one after a
    /// restart), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<u64>,
    /// Whether a connection to it is open. A node that disconnected is
    /// offered no work, and what it was running is lost at once; what it
    /// had committed waits for the node ttl, since a restarted node still
    /// reveals it from its journal.
    #[serde(default = "connected_default")]
    pub connected: bool,
    /// How long after `last_seen_ms` it still counts as alive, when it said
    /// (its announcements' period, see
    /// [`Announcement::every_ms`](crate::net::proto::Announcement::every_ms));
    /// `None`: the planner's node ttl. Never less than the node ttl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

impl NodeView {
    /// Whether it is alive at `now_ms` (heard from within its ttl).
    pub fn alive(&self, now_ms: u64, node_ttl_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) <= self.ttl_ms.unwrap_or(0).max(node_ttl_ms)
    }
}

fn connected_default() -> bool {
    true
}

impl std::ops::Deref for NodeView {
    type Target = Capacity;

    fn deref(&self) -> &Capacity {
        &self.capacity
    }
}

impl std::ops::DerefMut for NodeView {
    fn deref_mut(&mut self) -> &mut Capacity {
        &mut self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_job_of_a_failing_guest_has_a_failed_outcome_and_its_exit_code() {
        let cid = *shoal_storage::Block::new(shoal_storage::CidVersion::V1, shoal_storage::block::RAW, vec![1]).cid();
        let mut j = Job::new(JobId::from_parts(1, 1), Spec::new(cid), 1);
        assert_eq!((j.outcome(), j.exit_status()), (None, 1), "a queued job has no outcome yet");
        j.state = JobState::Completed;
        j.exit_code = Some(0);
        assert_eq!((j.outcome(), j.exit_status()), (Some(Outcome::Succeeded), 0));
        j.exit_code = Some(7);
        assert_eq!((j.outcome(), j.exit_status()), (Some(Outcome::Failed), 7));
        // A trap exits 1 (the runtime's status for a failure without an exit).
        j.exit_code = Some(1);
        j.failure = Some("wasm trap: unreachable".into());
        assert_eq!((j.outcome(), j.exit_status()), (Some(Outcome::Failed), 1));
        // 256 would read as success in a process's 8 bits: still a failure.
        j.failure = None;
        j.exit_code = Some(256);
        assert_eq!((j.outcome(), j.exit_status()), (Some(Outcome::Failed), 1));
        j.state = JobState::Failed;
        assert_eq!((j.outcome(), j.exit_status()), (None, 1));
    }

    #[test]
    fn answers_are_sealed_until_the_job_ends() {
        let mut e = Execution::new(ExecId::from_parts(1, 2), JobId::from_parts(1, 1), "n".into(), false, 1);
        e.state = ExecState::Revealed;
        e.result =
            Some(*shoal_storage::Block::new(shoal_storage::CidVersion::V1, shoal_storage::block::RAW, vec![1]).cid());
        e.nonce = Some([7; 32]);
        e.stdout = Some("answer".into());
        e.stderr = Some("log".into());
        e.exit_code = Some(0);
        e.meta = Some(ExecMeta { nn_devices: vec!["cpu: tract".into()], wall_ms: 3, fuel: 99 });
        for running in [JobState::Queued, JobState::Running] {
            let s = e.clone().sealed(running);
            assert_eq!((s.result, s.nonce, s.stdout, s.stderr, s.meta), (None, None, None, None, None));
            assert_eq!((s.state, s.exit_code), (ExecState::Revealed, Some(0)));
        }
        for ended in [JobState::Completed, JobState::Failed, JobState::Cancelled] {
            assert_eq!(e.clone().sealed(ended), e);
        }
    }

    #[test]
    fn reported_metadata_is_bounded() {
        let long = "é".repeat(ExecMeta::MAX_DEVICE_LEN); // two bytes each
        let m = ExecMeta { nn_devices: vec![long; 20], wall_ms: 1, fuel: 2 }.bounded();
        assert_eq!(m.nn_devices.len(), ExecMeta::MAX_DEVICES);
        assert!(m.nn_devices.iter().all(|d| d.len() == ExecMeta::MAX_DEVICE_LEN && d.chars().all(|c| c == 'é')));
        let short = ExecMeta { nn_devices: vec!["gpu: llvmpipe".into()], wall_ms: 1, fuel: 2 };
        assert_eq!(short.clone().bounded(), short);
    }

    #[test]
    fn ids_sort_by_time_and_round_trip() {
        let a = JobId::from_parts(1_700_000_000_000, 0xffff_ffff_1234_5678);
        let b = JobId::from_parts(1_700_000_000_001, 0);
        assert_eq!(a.as_str(), "j-0018bcfe5680012345678");
        assert!(a < b);
        assert_eq!(a.to_string().parse::<JobId>().unwrap(), a);
        let e = ExecId::from_parts(5, 6);
        assert_eq!(e.as_str(), "e-000000000000500000006");
        assert_eq!(serde_json::to_string(&e).unwrap(), "\"e-000000000000500000006\"");
        assert_eq!(serde_json::from_str::<ExecId>("\"e-1\"").unwrap().as_str(), "e-1");
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in ["", "a b", "x/y", &"a".repeat(MAX_ID_LEN + 1)] {
            let e = bad.parse::<JobId>().unwrap_err();
            assert!(e.to_string().starts_with("invalid job id"), "{e}");
        }
        assert!(serde_json::from_str::<ExecId>("\"../x\"").is_err());
    }

    #[test]
    fn states_round_trip_and_classify() {
        for s in JobState::ALL {
            assert_eq!(s.to_string().parse::<JobState>().unwrap(), *s);
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        for s in ExecState::ALL {
            assert_eq!(s.to_string().parse::<ExecState>().unwrap(), *s);
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
            assert!(!(s.is_live() && s.is_terminal()));
        }
        assert_eq!(ExecState::BidAsked.to_string(), "bid_asked");
        assert!(!ExecState::Revealed.is_live() && !ExecState::Revealed.is_terminal());
        assert!(JobState::Cancelled.is_terminal() && !JobState::Running.is_terminal());
        let e = "done".parse::<JobState>().unwrap_err().to_string();
        assert_eq!(e, "unknown job state \"done\"; expected one of: queued running completed failed cancelled");
    }
}
