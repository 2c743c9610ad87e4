//! What the HTTP API answers, as types: each handler returns one of these,
//! and the OpenAPI document (`/openapi.json`) is derived from the same
//! types, so the document cannot drift from the answers.

use serde::Serialize;
use shoal_scheduler::model::{ExecId, ExecState, Execution, Job, JobId, NodeView, Outcome};
use utoipa::ToSchema;

/// Every error, from every route and extractor.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What failed, on what, and what to do (lowercase).
    pub error: String,
}

/// A job and how its guest did.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    /// For a completed job: whether its agreed result holds exit code 0
    /// and no failure; null while unknown.
    pub outcome: Option<Outcome>,
    /// For a queued or running job: what it waits for (executions placed,
    /// nodes busy or declining), when the node answering says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> JobView {
        JobView { outcome: job.outcome(), job: job.clone(), waiting: None }
    }
}

/// One state an execution entered, and when.
#[derive(Debug, Serialize, ToSchema)]
pub struct Step {
    pub state: ExecState,
    /// Milliseconds since the Unix epoch.
    pub ms: u64,
}

/// An execution (sealed until its job has ended) and its timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionView {
    #[serde(flatten)]
    pub execution: Execution,
    /// Every state it entered, in order.
    pub timeline: Vec<Step>,
}

/// A job with its executions.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    pub job: JobView,
    pub executions: Vec<ExecutionView>,
}

/// Jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

/// A job accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    pub id: JobId,
    /// Things the submitter should know (e.g. fewer capable nodes than
    /// `redundancy.count`).
    pub warnings: Vec<String>,
    /// Completed at once from the cache: the receipt of the earlier run it
    /// took its result from (`?cache=false` runs it again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached: Option<String>,
}

/// The output of one execution (null until the job has ended).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecLog {
    pub execution: ExecId,
    pub node: String,
    pub state: ExecState,
    pub exit_code: Option<i32>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub error: Option<String>,
}

/// The output of a job's executions.
#[derive(Debug, Serialize, ToSchema)]
pub struct Logs {
    pub job: JobId,
    pub executions: Vec<ExecLog>,
}

/// A node this node knows.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeEntry {
    pub node: NodeView,
    /// Its HTTP API, if it announces one.
    pub api: Option<String>,
    /// Whether it is the node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// The nodes this node knows, itself included.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeEntry>,
    /// This node's IPFS counters (the same as `/metrics`).
    pub ipfs: IpfsCounters,
}

/// What this node exchanged with IPFS peers since it started.
#[derive(Debug, Serialize, ToSchema)]
pub struct IpfsCounters {
    pub bitswap: BitswapCounters,
    pub dht: DhtCounters,
}

/// Bitswap, both ways.
#[derive(Debug, Serialize, ToSchema)]
pub struct BitswapCounters {
    pub blocks_sent: u64,
    pub bytes_sent: u64,
    /// Wanted blocks received.
    pub blocks_received: u64,
    pub bytes_received: u64,
    /// Unwanted blocks and invalid blocks or frames received.
    pub junk: u64,
    pub peers_banned: u64,
    /// Blocks the running fetches still wait on.
    pub wants_in_flight: i64,
}

/// The IPFS DHTs (public and LAN together).
#[derive(Debug, Serialize, ToSchema)]
pub struct DhtCounters {
    /// This node's pinned roots whose provider record reached a peer.
    pub provider_records_published: u64,
    /// Provider records other peers stored here.
    pub provider_records_received: u64,
    /// Provider lookups answered.
    pub provider_lookups_answered: u64,
    /// Provider records handed out in those answers.
    pub provider_records_served: u64,
}

/// Liveness and identity.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub ok: bool,
    /// This node's peer id.
    pub peer: String,
    pub version: String,
    pub connected_peers: u64,
}

/// The roots a CAR import pinned.
#[derive(Debug, Serialize, ToSchema)]
pub struct CarRoots {
    pub roots: Vec<String>,
}

/// Whether this node holds a whole DAG, and which nodes say they do.
#[derive(Debug, Serialize, ToSchema)]
pub struct DagStatus {
    pub cid: String,
    /// This node holds it whole (pinned).
    pub held: bool,
    /// Nodes (this one included) whose announced holds filter has it:
    /// placement prefers them for jobs over it. A filter can be wrong
    /// the other way (about 1%), never this way for an honest node.
    pub held_by: Vec<String>,
}

/// A file imported and pinned.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileAdded {
    pub cid: String,
    pub name: String,
    pub size: u64,
}

/// What a DAG node is.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    Other,
    /// Linked but not held here.
    Missing,
}

/// One entry of a directory.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListEntry {
    pub name: String,
    pub cid: String,
    pub kind: EntryKind,
    /// A file's size in bytes.
    pub size: Option<u64>,
}

/// What is at a CID and path.
#[derive(Debug, Serialize, ToSchema)]
pub struct Listing {
    pub root: String,
    pub path: String,
    pub cid: String,
    pub kind: EntryKind,
    pub size: Option<u64>,
    /// A directory's entries (empty for anything else).
    pub entries: Vec<ListEntry>,
    /// More entries than the API lists (`api::MAX_LS_ENTRIES`).
    pub truncated: bool,
}

/// Bytes as they are (a CAR, a file): the documents' binary payloads.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
// Only its schema is used: the bytes travel as they are.
#[allow(dead_code)]
pub struct Binary(pub Vec<u8>);

/// One server-sent event of `GET /v1/jobs/{id}/events`.
#[derive(Debug, ToSchema)]
// Only its schema is used: axum writes the events.
#[allow(dead_code)]
pub struct JobEvent {
    /// Always `job`.
    pub event: String,
    /// The job and its executions (a `JobDetail`) as JSON.
    pub data: String,
}
