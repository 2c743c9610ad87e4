//! Jobs, executions and node stats in SQLite.
//!
//! One file, given by the caller, in WAL mode, held exclusively by the one
//! node that owns it (another process opening it is refused). The schema is
//! versioned with `PRAGMA user_version`: a newer file is refused rather
//! than misread. Specs are stored as JSON; CIDs as their string form;
//! times as milliseconds since the Unix epoch. [`Db::apply`] writes a job
//! and its changed executions in one transaction, so a crash never leaves
//! a job's state out of step with its executions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};
use shoal_storage::Cid;

use crate::flow::PipelineRun;
use crate::model::{ExecId, ExecState, Execution, Job, JobId, JobState, NodeId, NodeStats, PipelineId};
use crate::spec::Spec;

/// The schema this code reads and writes.
pub const SCHEMA_VERSION: i64 = 1;
/// Most jobs [`Db::jobs`] returns, whatever the limit asked.
pub const MAX_LIST: usize = 10_000;

/// A database failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite failed.
    #[error("scheduler database {path}: {action}: {message}")]
    Sqlite {
        /// The file (":memory:" for in-memory databases).
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// SQLite's message.
        message: String,
    },
    /// The database was closed: its node is stopping.
    #[error("scheduler database {path} is closed: the node is stopping")]
    Closed {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a newer Shoal.
    #[error("scheduler database {path} has schema version {found}; this shoal reads version {SCHEMA_VERSION}: upgrade shoal")]
    Schema {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// A stored row does not decode.
    #[error(
        "scheduler database {path}: {what} is unreadable ({message}); restore the file from a backup or remove it"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which row and column.
        what: String,
        /// Why.
        message: String,
    },
}

/// The scheduler's database.
#[derive(Debug)]
pub struct Db {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Set by [`Db::close`]: the file is let go, and every later call
    /// fails with [`Error::Closed`].
    closed: std::sync::atomic::AtomicBool,
    /// Decoded specs by job id, with the text they were decoded from: a
    /// job's spec never changes, and a requester reads each active job on
    /// every scheduling pass that touches it.
    specs: Mutex<HashMap<String, (String, Spec)>>,
    /// Node track records as last read, dropped by every write to them:
    /// placement reads them on every scheduling pass. Filled and dropped
    /// only under the connection's lock, so a reader never keeps a copy
    /// older than a committed write.
    stats: Mutex<Option<Arc<BTreeMap<NodeId, NodeStats>>>>,
}

/// Most decoded specs [`Db`] keeps (it forgets them all past this).
pub const SPEC_CACHE: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    started_ms INTEGER,
    result TEXT,
    error TEXT,
    extra_used INTEGER NOT NULL,
    exit_code INTEGER,
    failure TEXT
);
CREATE INDEX jobs_state ON jobs (state, created_ms);
CREATE INDEX jobs_created ON jobs (created_ms);
CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    job TEXT NOT NULL REFERENCES jobs (id),
    node TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    started_ms INTEGER,
    commitment BLOB,
    result TEXT,
    error TEXT,
    stdout TEXT,
    stderr TEXT,
    exit_code INTEGER,
    extra INTEGER NOT NULL,
    nonce BLOB,
    meta TEXT,
    boot INTEGER
);
CREATE INDEX executions_job ON executions (job);
CREATE TABLE node_stats (
    node TEXT PRIMARY KEY,
    agreed INTEGER NOT NULL,
    dissented INTEGER NOT NULL,
    lost INTEGER NOT NULL,
    failed INTEGER NOT NULL
) WITHOUT ROWID;
";

const INDEXES: &str = "CREATE INDEX IF NOT EXISTS executions_state ON executions (state);
CREATE TABLE IF NOT EXISTS exec_events (exec TEXT NOT NULL, state TEXT NOT NULL, ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS exec_events_exec ON exec_events (exec);
CREATE TRIGGER IF NOT EXISTS exec_timeline_insert AFTER INSERT ON executions BEGIN
    INSERT INTO exec_events (exec, state, ms) VALUES (new.id, new.state, new.updated_ms);
END;
CREATE TRIGGER IF NOT EXISTS exec_timeline_update AFTER UPDATE OF state ON executions
    WHEN old.state IS NOT new.state BEGIN
    INSERT INTO exec_events (exec, state, ms) VALUES (new.id, new.state, new.updated_ms);
END;
CREATE TABLE IF NOT EXISTS journal (exec TEXT PRIMARY KEY, requester TEXT NOT NULL, job TEXT NOT NULL, seq INTEGER NOT NULL,
    result TEXT, nonce BLOB, exit_code INTEGER, stdout TEXT, stderr TEXT, meta TEXT, revealed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS pipelines (id TEXT PRIMARY KEY, state TEXT NOT NULL, created_ms INTEGER NOT NULL,
    record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS pipelines_state ON pipelines (state);";

/// Most pipelines [`Db::pipelines`] lists at once.
pub const MAX_PIPELINE_LIST: usize = 1000;

/// Most executions a compute node's journal keeps: past it the oldest
/// finished ones are forgotten (as the compute side forgets them).
pub const MAX_JOURNAL: usize = 4096;

/// One scheduling step's writes, applied by [`Db::apply_step`] in one
/// transaction.
#[derive(Debug, Default, Clone)]
pub struct Step {
    /// Executions the plan ended, each with the state it was read in.
    pub ended: Vec<(Execution, ExecState)>,
    /// Track-record changes (see [`Plan::stats`](crate::placement::Plan::stats)).
    pub stats: BTreeMap<NodeId, NodeStats>,
    /// The job, when the step changes it.
    pub job: Option<Job>,
    /// New executions (the bids about to be sent).
    pub placed: Vec<Execution>,
}

impl Step {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ended.is_empty() && self.stats.is_empty() && self.job.is_none() && self.placed.is_empty()
    }
}

/// A compute node's record of one execution it took, so that a restarted
/// node still reveals what it had committed to.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// The execution id (the requester's).
    pub exec: String,
    /// The requester's peer id.
    pub requester: String,
    /// The job's CID (see [`crate::receipt::job_cid`]).
    pub job: String,
    /// Order of acceptance (older first).
    pub seq: u64,
    /// Its reveal was asked for (and answered) at least once.
    pub revealed: bool,
    /// What it committed to: `None` while it runs.
    pub done: Option<Committed>,
}

/// One row of the journal as read: the entry, or the id of a row that does
/// not decode and why.
pub type JournalRow = Result<JournalEntry, (String, Error)>;

/// A finished execution's commitment and outputs, as revealed.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub result: Cid,
    pub nonce: [u8; 32],
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub meta: crate::model::ExecMeta,
}

/// Most rows [`Db::live_executions_of_ended_jobs`] returns at once.
pub const MAX_LEFTOVERS: usize = 1000;

const JOB_COLS: &str =
    "id, state, spec, created_ms, updated_ms, started_ms, result, error, extra_used, exit_code, failure, \
                        receipt, cached, job_cid, submitter, submitter_proof";
const EXEC_COLS: &str = "id, job, node, state, created_ms, updated_ms, started_ms, commitment, result, error, stdout, \
                         stderr, exit_code, extra, nonce, meta, boot, commit_signature, reveal_signature";

/// Per-row decoding failures, turned into [`Error::Corrupt`] with the path.
struct Bad {
    what: String,
    message: String,
}

impl Db {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Db, Error> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path).map_err(sqlite(&path, "cannot open"))?;
        // One node owns the file: in EXCLUSIVE locking mode a second
        // process (another node started on the same home) is refused at
        // once instead of interleaving its writes, and WAL keeps its index
        // in heap memory, so a transaction takes no file locks (the fcntl
        // calls were ~6% of a busy requester's CPU). Set before anything
        // reads the file, as SQLite requires for the heap WAL index.
        // No other connection can ever hold the file for a moment: waiting
        // (rusqlite waits 5 s by default) would only delay the refusal.
        conn.busy_timeout(std::time::Duration::ZERO).map_err(sqlite(&path, "cannot set the busy timeout"))?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(sqlite(&path, "cannot set the locking mode"))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| in_use(&path, e, "cannot enable WAL"))?;
        // NORMAL in WAL mode: a commit survives the process being killed at
        // any point (what a requester restart needs) without an fsync per
        // state change; a power loss may lose the last moments of changes,
        // never corrupt the database.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sqlite(&path, "cannot set synchronous"))?;
        Db::init(path, conn)
    }

    /// A private in-memory database (tests, throwaway nodes).
    pub fn open_in_memory() -> Result<Db, Error> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(sqlite(&path, "cannot open"))?;
        Db::init(path, conn)
    }

    fn init(path: PathBuf, mut conn: Connection) -> Result<Db, Error> {
        conn.pragma_update(None, "foreign_keys", "ON").map_err(sqlite(&path, "cannot enable foreign keys"))?;
        // Taking the write lock now makes the exclusive lock ours for the
        // connection's life (a no-op in memory).
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .map_err(|e| in_use(&path, e, "cannot begin"))?;
        let version: i64 =
            tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sqlite(&path, "cannot read the schema"))?;
        match version {
            0 => {
                tx.execute_batch(SCHEMA).map_err(sqlite(&path, "cannot create the schema"))?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(sqlite(&path, "cannot set the schema version"))?;
            }
            SCHEMA_VERSION => {}
            found => return Err(Error::Schema { path, found }),
        }
        // Indexes and columns added within version 1: older code names the
        // columns it reads and writes, so it reads the file as before (and
        // leaves the new columns empty).
        tx.execute_batch(INDEXES).map_err(sqlite(&path, "cannot create the indexes"))?;
        // Each column is added once, when the file lacks it.
        let added = [
            ("executions", "meta", "ALTER TABLE executions ADD COLUMN meta TEXT", "the execution metadata column"),
            ("executions", "boot", "ALTER TABLE executions ADD COLUMN boot INTEGER", "the execution boot column"),
            (
                "executions",
                "commit_signature",
                "ALTER TABLE executions ADD COLUMN commit_signature TEXT; \
                 ALTER TABLE executions ADD COLUMN reveal_signature TEXT",
                "the execution signature columns",
            ),
            ("jobs", "receipt", "ALTER TABLE jobs ADD COLUMN receipt TEXT", "the job receipt column"),
            (
                "jobs",
                "job_cid",
                "ALTER TABLE jobs ADD COLUMN job_cid TEXT; ALTER TABLE jobs ADD COLUMN cached TEXT; \
                 CREATE INDEX IF NOT EXISTS jobs_job_cid ON jobs (job_cid)",
                "the job cid and cache columns",
            ),
            (
                "jobs",
                "submitter",
                "ALTER TABLE jobs ADD COLUMN submitter TEXT; ALTER TABLE jobs ADD COLUMN submitter_proof TEXT; \
                 CREATE INDEX IF NOT EXISTS jobs_submitter ON jobs (submitter, state)",
                "the job submitter columns",
            ),
            // A completed job's outcome: the agreed result's exit code and failure.
            (
                "jobs",
                "exit_code",
                "ALTER TABLE jobs ADD COLUMN exit_code INTEGER; ALTER TABLE jobs ADD COLUMN failure TEXT",
                "the job outcome columns",
            ),
        ];
        for (table, column, sql, what) in added {
            let has: bool = tx
                .query_row("SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2", [table, column], |r| r.get(0))
                .map_err(sqlite(&path, "cannot read the schema"))?;
            if !has {
                tx.execute_batch(sql).map_err(|e| Error::Sqlite {
                    path: path.clone(),
                    action: "cannot add a column",
                    message: format!("{what}: {}", e.to_string().to_lowercase()),
                })?;
            }
        }
        tx.commit().map_err(sqlite(&path, "cannot create the schema"))?;
        Ok(Db {
            path,
            conn: Mutex::new(conn),
            closed: Default::default(),
            specs: Mutex::new(HashMap::new()),
            stats: Mutex::new(None),
        })
    }

    /// The file this database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic elsewhere while holding the lock leaves SQLite consistent
        // (an open transaction rolls back when dropped).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, action: &'static str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        move |e| {
            if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                Error::Closed { path: self.path.clone() }
            } else {
                sqlite(&self.path, action)(e)
            }
        }
    }

    /// Lets go of the file now (a node stopping, so that another can open
    /// it at once), though tasks still hold this `Db`: their later calls
    /// fail with [`Error::Closed`].
    pub fn close(&self) {
        let mut conn = self.conn();
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        // Nothing is read from or written to this stand-in: it has no
        // tables, so every statement fails and names the closed file.
        if let Ok(stand_in) = Connection::open_in_memory() {
            let old = std::mem::replace(&mut *conn, stand_in);
            if let Err((_, e)) = old.close() {
                tracing::warn!("closing the scheduler database {}: {e}", self.path.display());
            }
        }
    }

    fn corrupt(&self, bad: Bad) -> Error {
        Error::Corrupt { path: self.path.clone(), what: bad.what, message: bad.message }
    }

    /// Stores a new job.
    pub fn insert_job(&self, job: &Job) -> Result<(), Error> {
        write_job(&self.conn(), job, true).map_err(self.err("cannot insert job"))
    }

    /// Overwrites a stored job.
    pub fn update_job(&self, job: &Job) -> Result<(), Error> {
        write_job(&self.conn(), job, false).map_err(self.err("cannot update job"))
    }

    /// A job by id.
    pub fn job(&self, id: &JobId) -> Result<Option<Job>, Error> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"))
            .and_then(|mut st| st.query_row([id.as_str()], raw_job))
            .optional()
            .map_err(self.err("cannot read job"))?;
        drop(conn);
        row.map(|r| self.decode_job(r)).transpose()
    }

    /// Up to `limit` jobs (at most [`MAX_LIST`]), newest first, in `state`
    /// if given.
    pub fn jobs(&self, state: Option<JobState>, limit: usize) -> Result<Vec<Job>, Error> {
        let limit = i64::try_from(limit.min(MAX_LIST)).unwrap_or(0);
        let conn = self.conn();
        let rows = match state {
            Some(s) => query(
                &conn,
                &format!("SELECT {JOB_COLS} FROM jobs WHERE state = ?1 ORDER BY created_ms DESC, id DESC LIMIT ?2"),
                params![s.as_str(), limit],
                raw_job,
            ),
            None => query(
                &conn,
                &format!("SELECT {JOB_COLS} FROM jobs ORDER BY created_ms DESC, id DESC LIMIT ?1"),
                params![limit],
                raw_job,
            ),
        }
        .map_err(self.err("cannot list jobs"))?;
        rows.into_iter().map(|r| r.decode().map_err(|b| self.corrupt(b))).collect()
    }

    /// Queued and Running jobs, oldest first (the order to plan them in).
    pub fn active_jobs(&self) -> Result<Vec<Job>, Error> {
        let conn = self.conn();
        let rows = query(
            &conn,
            &format!("SELECT {JOB_COLS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_ms, id"),
            [],
            raw_job,
        )
        .map_err(self.err("cannot list active jobs"))?;
        rows.into_iter().map(|r| r.decode().map_err(|b| self.corrupt(b))).collect()
    }

    /// Active jobs, oldest first: `limit` of them after the first `skip`
    /// (a capacity pass places them in order, a page at a time).
    pub fn active_jobs_oldest(&self, limit: usize, skip: usize) -> Result<Vec<Job>, Error> {
        let conn = self.conn();
        let rows = query(
            &conn,
            &format!(
                "SELECT {JOB_COLS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_ms, id LIMIT ?1 \
                 OFFSET ?2"
            ),
            [limit as i64, skip as i64],
            raw_job,
        )
        .map_err(self.err("cannot list active jobs"))?;
        rows.into_iter().map(|r| r.decode().map_err(|b| self.corrupt(b))).collect()
    }

    /// Receipts of completed jobs with this job CID, newest first (at most
    /// `limit`): a new submission of the same job can be answered from one.
    pub fn receipts_for(&self, job_cid: &Cid, limit: usize) -> Result<Vec<Cid>, Error> {
        let conn = self.conn();
        let rows = query(
            &conn,
            // Jobs answered from the cache name the receipt they reused:
            // each receipt once.
            "SELECT receipt FROM jobs WHERE job_cid = ?1 AND state = 'completed' AND receipt IS NOT NULL \
             GROUP BY receipt ORDER BY max(updated_ms) DESC LIMIT ?2",
            rusqlite::params![job_cid.to_string(), limit as i64],
            |r| r.get::<_, String>(0),
        )
        .map_err(self.err("cannot look up cached receipts"))?;
        rows.into_iter()
            .map(|r| {
                crate::serde_util::parse_cid(&r)
                    .map_err(|m| self.corrupt(Bad { what: format!("a receipt of job cid {job_cid}"), message: m }))
            })
            .collect()
    }

    /// Records the receipt of a job already ended (a failed job's, signed
    /// after its failure was written).
    pub fn set_receipt(&self, id: &JobId, receipt: &Cid) -> Result<(), Error> {
        self.conn()
            .prepare_cached("UPDATE jobs SET receipt = ?2 WHERE id = ?1")
            .and_then(|mut st| st.execute([id.as_str(), &receipt.to_string()]))
            .map(|_| ())
            .map_err(self.err("cannot record a receipt"))
    }

    /// The job CIDs of the most recent `limit` completed jobs with a
    /// receipt (repeats removed): what this node announces it can answer
    /// from its cache.
    pub fn recent_receipt_jobs(&self, limit: usize) -> Result<Vec<Cid>, Error> {
        let conn = self.conn();
        let rows = query(
            &conn,
            "SELECT job_cid FROM jobs WHERE state = 'completed' AND receipt IS NOT NULL AND job_cid IS NOT NULL \
             ORDER BY created_ms DESC LIMIT ?1",
            [limit as i64],
            |r| r.get::<_, String>(0),
        )
        .map_err(self.err("cannot list the receipts"))?;
        drop(conn);
        let mut seen = std::collections::HashSet::new();
        Ok(rows.iter().filter_map(|r| crate::serde_util::parse_cid(r).ok()).filter(|c| seen.insert(*c)).collect())
    }

    /// Stores a new pipeline run.
    pub fn insert_pipeline(&self, run: &PipelineRun) -> Result<(), Error> {
        let record = serde_json::to_string(run)
            .map_err(|e| self.corrupt(Bad { what: format!("pipeline {}", run.id), message: e.to_string() }))?;
        self.conn()
            .prepare_cached("INSERT INTO pipelines (id, state, created_ms, record) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut st| st.execute(params![run.id.as_str(), run.state.as_str(), run.created_ms, record]))
            .map(|_| ())
            .map_err(self.err("cannot insert pipeline"))
    }

    /// Overwrites a stored pipeline run that is still running (returns
    /// false, writing nothing, once it has ended: a cancel is not undone
    /// by a pass that read the run before it).
    pub fn update_pipeline(&self, run: &PipelineRun) -> Result<bool, Error> {
        let record = serde_json::to_string(run)
            .map_err(|e| self.corrupt(Bad { what: format!("pipeline {}", run.id), message: e.to_string() }))?;
        self.conn()
            .prepare_cached("UPDATE pipelines SET state = ?2, record = ?3 WHERE id = ?1 AND state = 'running'")
            .and_then(|mut st| st.execute(params![run.id.as_str(), run.state.as_str(), record]))
            .map(|n| n == 1)
            .map_err(self.err("cannot update pipeline"))
    }

    /// A pipeline run by id.
    pub fn pipeline(&self, id: &PipelineId) -> Result<Option<PipelineRun>, Error> {
        let record: Option<String> = self
            .conn()
            .prepare_cached("SELECT record FROM pipelines WHERE id = ?1")
            .and_then(|mut st| st.query_row([id.as_str()], |r| r.get(0)))
            .optional()
            .map_err(self.err("cannot read pipeline"))?;
        record.map(|r| self.decode_pipeline(id.as_str(), &r)).transpose()
    }

    /// Pipelines still running, oldest first.
    pub fn active_pipelines(&self) -> Result<Vec<PipelineRun>, Error> {
        let conn = self.conn();
        let rows =
            query(&conn, "SELECT id, record FROM pipelines WHERE state = 'running' ORDER BY created_ms, id", [], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(self.err("cannot list pipelines"))?;
        drop(conn);
        rows.iter().map(|(id, r)| self.decode_pipeline(id, r)).collect()
    }

    /// Up to `limit` pipelines (at most [`MAX_PIPELINE_LIST`]), newest
    /// first.
    pub fn pipelines(&self, limit: usize) -> Result<Vec<PipelineRun>, Error> {
        let limit = i64::try_from(limit.min(MAX_PIPELINE_LIST)).unwrap_or(0);
        let conn = self.conn();
        let rows =
            query(&conn, "SELECT id, record FROM pipelines ORDER BY created_ms DESC, id DESC LIMIT ?1", [limit], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(self.err("cannot list pipelines"))?;
        drop(conn);
        rows.iter().map(|(id, r)| self.decode_pipeline(id, r)).collect()
    }

    fn decode_pipeline(&self, id: &str, record: &str) -> Result<PipelineRun, Error> {
        serde_json::from_str(record)
            .map_err(|e| self.corrupt(Bad { what: format!("pipeline {id}"), message: e.to_string() }))
    }

    /// A job's state alone (what a waiter checks on every change).
    pub fn job_state(&self, id: &JobId) -> Result<Option<JobState>, Error> {
        let state: Option<String> = self
            .conn()
            .prepare_cached("SELECT state FROM jobs WHERE id = ?1")
            .and_then(|mut st| st.query_row([id.as_str()], |r| r.get(0)))
            .optional()
            .map_err(self.err("cannot read job"))?;
        state
            .map(|s| {
                s.parse().map_err(|e: crate::model::Error| {
                    self.corrupt(Bad { what: format!("job {id} state"), message: e.to_string() })
                })
            })
            .transpose()
    }

    /// Decodes a job row, taking its spec from the cache when the text
    /// is the one decoded before.
    fn decode_job(&self, mut raw: RawJob) -> Result<Job, Error> {
        let cached = {
            let specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
            specs.get(&raw.id).filter(|(text, _)| *text == raw.spec).map(|(_, spec)| spec.clone())
        };
        if let Some(spec) = cached {
            raw.spec = String::new();
            return raw.decode_with(Some(spec)).map_err(|b| self.corrupt(b));
        }
        let (id, text) = (raw.id.clone(), raw.spec.clone());
        let job = raw.decode_with(None).map_err(|b| self.corrupt(b))?;
        let mut specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
        if specs.len() >= SPEC_CACHE {
            specs.clear();
        }
        specs.insert(id, (text, job.spec.clone()));
        Ok(job)
    }

    /// How many unfinished (queued or running) jobs `submitter` has; `None`
    /// counts the anonymous ones.
    pub fn unfinished_jobs_of(&self, submitter: Option<&str>) -> Result<u64, Error> {
        self.conn()
            .prepare_cached("SELECT COUNT(*) FROM jobs WHERE submitter IS ?1 AND state IN ('queued', 'running')")
            .and_then(|mut st| st.query_row([submitter], |r| r.get(0)))
            .map_err(self.err("cannot count a submitter's jobs"))
    }

    /// How many executions of `submitter`'s jobs hold (or are asking for)
    /// a slot: bids asked, accepted and running ones.
    pub fn busy_executions_of(&self, submitter: Option<&str>) -> Result<u64, Error> {
        self.conn()
            .prepare_cached(
                "SELECT COUNT(*) FROM executions e JOIN jobs j ON j.id = e.job WHERE j.submitter IS ?1 \
                 AND j.state IN ('queued', 'running') AND e.state IN ('bid_asked', 'accepted', 'running')",
            )
            .and_then(|mut st| st.query_row([submitter], |r| r.get(0)))
            .map_err(self.err("cannot count a submitter's executions"))
    }

    /// How many jobs are in `state`.
    pub fn count_jobs(&self, state: JobState) -> Result<u64, Error> {
        self.conn()
            .prepare_cached("SELECT COUNT(*) FROM jobs WHERE state = ?1")
            .and_then(|mut st| st.query_row([state.as_str()], |r| r.get(0)))
            .map_err(self.err("cannot count jobs"))
    }

    /// Stores a new execution (its job must be stored).
    pub fn insert_execution(&self, e: &Execution) -> Result<(), Error> {
        self.insert_executions(std::slice::from_ref(e))
    }

    /// Stores new executions (of stored jobs) in one transaction: a plan
    /// placing several at once costs one commit, and a crash stores all or
    /// none of them.
    pub fn insert_executions(&self, executions: &[Execution]) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("cannot begin"))?;
        for e in executions {
            write_exec(&tx, e, true).map_err(self.err("cannot insert execution"))?;
        }
        tx.commit().map_err(self.err("cannot commit"))
    }

    /// Overwrites a stored execution.
    pub fn update_execution(&self, e: &Execution) -> Result<(), Error> {
        write_exec(&self.conn(), e, false).map_err(self.err("cannot update execution"))
    }

    /// Updates an execution only if its stored state is still `from`, and
    /// says whether it did. Executions are changed by concurrent tasks (a
    /// bid's answer and the node's commitment can race): a read-then-write
    /// would let the older news overwrite the newer.
    pub fn update_execution_from(&self, e: &Execution, from: ExecState) -> Result<bool, Error> {
        self.update_execution_judged(e, from, NodeStats::default())
    }

    /// [`Db::update_execution_from`], adding `delta` to the execution's
    /// node's track record in the same transaction: a judgement is
    /// counted once, with the state it judges, or not at all.
    pub fn update_execution_judged(&self, e: &Execution, from: ExecState, delta: NodeStats) -> Result<bool, Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("cannot begin"))?;
        let n = update_exec_from(&tx, e, from).map_err(self.err("cannot update execution"))?;
        if n == 1 && delta != NodeStats::default() {
            *self.stats_cache() = None;
            bump(&tx, &e.node, delta).map_err(self.err("cannot update node stats"))?;
        }
        tx.commit().map_err(self.err("cannot commit"))?;
        Ok(n == 1)
    }

    /// A job's executions, oldest first.
    pub fn executions(&self, job: &JobId) -> Result<Vec<Execution>, Error> {
        let conn = self.conn();
        let rows = query(
            &conn,
            &format!("SELECT {EXEC_COLS} FROM executions WHERE job = ?1 ORDER BY created_ms, id"),
            [job.as_str()],
            raw_exec,
        )
        .map_err(self.err("cannot list executions"))?;
        rows.into_iter().map(|r| r.decode().map_err(|b| self.corrupt(b))).collect()
    }

    /// Every state each execution of `job` entered, with when (its
    /// `updated_ms` then), in order: recorded by triggers on the
    /// executions table, so no code path that changes a state can forget
    /// it. Executions written before the history existed have none.
    pub fn timeline(&self, job: &JobId) -> Result<BTreeMap<ExecId, Vec<(ExecState, u64)>>, Error> {
        let conn = self.conn();
        let rows = query(
            &conn,
            "SELECT v.exec, v.state, v.ms FROM exec_events v JOIN executions x ON x.id = v.exec \
             WHERE x.job = ?1 ORDER BY v.rowid",
            [job.as_str()],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, u64>(2)?)),
        )
        .map_err(self.err("cannot read execution timelines"))?;
        drop(conn);
        let mut out: BTreeMap<ExecId, Vec<(ExecState, u64)>> = BTreeMap::new();
        for (exec, state, ms) in rows {
            let bad = |m: String| self.corrupt(Bad { what: format!("execution {exec} timeline"), message: m });
            let id: ExecId = exec.parse().map_err(|e: crate::model::Error| bad(e.to_string()))?;
            let state: ExecState = state.parse().map_err(|e: crate::model::Error| bad(e.to_string()))?;
            out.entry(id).or_default().push((state, ms));
        }
        Ok(out)
    }

    /// Executions still live (bid asked … committed) whose job has ended,
    /// and revealed ones not yet judged whose job completed, oldest first,
    /// at most [`MAX_LEFTOVERS`]: those left to finish after their job
    /// completed, for the requester to judge or end.
    /// Executions of active jobs whose bid was sent and never answered
    /// (a restarted requester sends them again), oldest first: one query
    /// on the executions' state index, not a walk over every job.
    pub fn bids_outstanding(&self) -> Result<Vec<Execution>, Error> {
        let conn = self.conn();
        let rows = query(
            &conn,
            &format!(
                "SELECT {EXEC_COLS} FROM executions WHERE state = 'bid_asked' \
                 AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = executions.job AND jobs.state IN ('queued', 'running')) \
                 ORDER BY created_ms, id"
            ),
            [],
            raw_exec,
        )
        .map_err(self.err("cannot list outstanding bids"))?;
        rows.into_iter().map(|r| r.decode().map_err(|b| self.corrupt(b))).collect()
    }

    pub fn live_executions_of_ended_jobs(&self) -> Result<Vec<Execution>, Error> {
        let conn = self.conn();
        let rows = query(
            &conn,
            &format!(
                "SELECT {EXEC_COLS} FROM executions \
                 WHERE (state IN ('bid_asked', 'accepted', 'running', 'committed') \
                        AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = executions.job \
                                    AND jobs.state IN ('completed', 'failed', 'cancelled'))) \
                    OR (state = 'revealed' \
                        AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = executions.job AND jobs.state = 'completed')) \
                 ORDER BY created_ms, id LIMIT {MAX_LEFTOVERS}"
            ),
            [],
            raw_exec,
        )
        .map_err(self.err("cannot list executions of ended jobs"))?;
        rows.into_iter().map(|r| r.decode().map_err(|b| self.corrupt(b))).collect()
    }

    /// An execution by id.
    pub fn execution(&self, id: &ExecId) -> Result<Option<Execution>, Error> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(&format!("SELECT {EXEC_COLS} FROM executions WHERE id = ?1"))
            .and_then(|mut st| st.query_row([id.as_str()], raw_exec))
            .optional()
            .map_err(self.err("cannot read execution"))?;
        row.map(|r| r.decode().map_err(|b| self.corrupt(b))).transpose()
    }

    /// Records executions a compute node took or finished, in one
    /// transaction (a finished one replaces its running row).
    pub fn journal_put(&self, entries: &[JournalEntry]) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("cannot begin a journal write"))?;
        for e in entries {
            let meta = match &e.done {
                Some(d) => Some(serde_json::to_string(&d.meta).map_err(|err| Error::Corrupt {
                    path: self.path.clone(),
                    what: format!("journal entry {}", e.exec),
                    message: err.to_string(),
                })?),
                None => None,
            };
            tx.execute(
                "INSERT INTO journal (exec, requester, seq, result, nonce, exit_code, stdout, stderr, meta, job) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (exec) DO UPDATE SET requester = ?2, seq = ?3, \
                 result = ?4, nonce = ?5, exit_code = ?6, stdout = ?7, stderr = ?8, meta = ?9, job = ?10",
                rusqlite::params![
                    e.exec,
                    e.requester,
                    e.seq as i64,
                    e.done.as_ref().map(|d| d.result.to_string()),
                    e.done.as_ref().map(|d| d.nonce.to_vec()),
                    e.done.as_ref().map(|d| d.exit_code),
                    e.done.as_ref().map(|d| d.stdout.as_str()),
                    e.done.as_ref().map(|d| d.stderr.as_str()),
                    meta,
                    e.job,
                ],
            )
            .map_err(self.err("cannot write the journal"))?;
        }
        // Bounded: the oldest finished entries go first.
        tx.execute(
            "DELETE FROM journal WHERE exec IN (SELECT exec FROM journal WHERE result IS NOT NULL ORDER BY seq DESC \
             LIMIT -1 OFFSET ?1)",
            [MAX_JOURNAL as i64],
        )
        .map_err(self.err("cannot trim the journal"))?;
        tx.commit().map_err(self.err("cannot commit a journal write"))
    }

    /// Marks executions revealed: after a restart they are answered for
    /// (reveals asked again) but not reported again.
    pub fn journal_revealed(&self, execs: &[String]) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("cannot begin a journal write"))?;
        for e in execs {
            tx.execute("UPDATE journal SET revealed = 1 WHERE exec = ?1", [e])
                .map_err(self.err("cannot write the journal"))?;
        }
        tx.commit().map_err(self.err("cannot commit a journal write"))
    }

    /// Forgets executions (cancelled, evicted, or cleaned up after a
    /// restart).
    pub fn journal_remove(&self, execs: &[String]) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("cannot begin a journal write"))?;
        for e in execs {
            tx.execute("DELETE FROM journal WHERE exec = ?1", [e]).map_err(self.err("cannot write the journal"))?;
        }
        tx.commit().map_err(self.err("cannot commit a journal write"))
    }

    /// Every journalled execution, oldest first. An unreadable row is
    /// reported as such (and can be removed by its id).
    pub fn journal(&self) -> Result<Vec<JournalRow>, Error> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT exec, requester, seq, result, nonce, exit_code, stdout, stderr, meta, job, revealed FROM \
                 journal ORDER BY seq",
            )
            .map_err(self.err("cannot read the journal"))?;
        type JRow = (
            String,
            String,
            i64,
            Option<String>,
            Option<Vec<u8>>,
            Option<i32>,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
            bool,
        );
        let rows: Vec<JRow> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.err("cannot read the journal"))?;
        let corrupt = |exec: &str, message: String| Error::Corrupt {
            path: self.path.clone(),
            what: format!("journal entry {exec}"),
            message,
        };
        Ok(rows
            .into_iter()
            .map(|(exec, requester, seq, result, nonce, exit_code, stdout, stderr, meta, job, revealed)| {
                let done = match result {
                    None => None,
                    Some(result) => {
                        let decoded = (|| {
                            let result: Cid = result.parse().map_err(|e| format!("result: {e}"))?;
                            let nonce: [u8; 32] = nonce
                                .and_then(|n| n.try_into().ok())
                                .ok_or_else(|| "nonce: not 32 bytes".to_string())?;
                            let meta = serde_json::from_str(meta.as_deref().unwrap_or("{}"))
                                .map_err(|e| format!("meta: {e}"))?;
                            Ok::<_, String>(Committed {
                                result,
                                nonce,
                                exit_code: exit_code.unwrap_or(0),
                                stdout: stdout.unwrap_or_default(),
                                stderr: stderr.unwrap_or_default(),
                                meta,
                            })
                        })();
                        match decoded {
                            Ok(d) => Some(d),
                            Err(m) => return Err((exec.clone(), corrupt(&exec, m))),
                        }
                    }
                };
                Ok(JournalEntry { exec, requester, job, seq: seq as u64, done, revealed })
            })
            .collect())
    }

    /// Every node's track record.
    pub fn node_stats(&self) -> Result<Arc<BTreeMap<NodeId, NodeStats>>, Error> {
        let conn = self.conn();
        if let Some(s) = &*self.stats_cache() {
            return Ok(s.clone());
        }
        let rows = query(&conn, "SELECT node, agreed, dissented, lost, failed FROM node_stats", [], |r| {
            Ok((r.get(0)?, NodeStats { agreed: r.get(1)?, dissented: r.get(2)?, lost: r.get(3)?, failed: r.get(4)? }))
        })
        .map_err(self.err("cannot read node stats"))?;
        let stats = Arc::new(rows.into_iter().collect());
        *self.stats_cache() = Some(Arc::clone(&stats));
        Ok(stats)
    }

    fn stats_cache(&self) -> MutexGuard<'_, Option<Arc<BTreeMap<NodeId, NodeStats>>>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `delta` to `node`'s track record.
    pub fn bump_stats(&self, node: &NodeId, delta: NodeStats) -> Result<(), Error> {
        let conn = self.conn();
        *self.stats_cache() = None;
        bump(&conn, node, delta).map_err(self.err("cannot update node stats"))
    }

    /// Applies one scheduling step in one transaction, or nothing: the
    /// ended executions (each only if its stored state is still the one
    /// given), the track-record changes, the job and the new executions.
    /// Returns false, having written nothing, when an execution changed
    /// since the plan was made (a report landed): the caller plans again.
    pub fn apply_step(&self, step: &Step) -> Result<bool, Error> {
        if step.is_empty() {
            return Ok(true);
        }
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("cannot begin"))?;
        for (e, from) in &step.ended {
            let n = update_exec_from(&tx, e, *from).map_err(self.err("cannot update execution"))?;
            if n != 1 {
                // Dropping the transaction rolls back what it wrote.
                return Ok(false);
            }
        }
        if let Some(job) = &step.job {
            write_job(&tx, job, false).map_err(self.err("cannot update job"))?;
        }
        for e in &step.placed {
            write_exec(&tx, e, true).map_err(self.err("cannot insert execution"))?;
        }
        for (node, delta) in &step.stats {
            bump(&tx, node, *delta).map_err(self.err("cannot update node stats"))?;
        }
        tx.commit().map_err(self.err("cannot commit"))?;
        if !step.stats.is_empty() {
            *self.stats_cache() = None;
        }
        Ok(true)
    }

    /// Writes `job` (inserted or updated) and `executions` (inserted or
    /// updated) in one transaction.
    pub fn apply(&self, job: &Job, executions: &[Execution]) -> Result<(), Error> {
        self.apply_with_stats(job, executions, &BTreeMap::new())
    }

    /// [`Db::apply`], adding `stats` to node track records in the same
    /// transaction (see [`Plan::stats`](crate::placement::Plan::stats)),
    /// so that a job's outcome is counted exactly once.
    pub fn apply_with_stats(
        &self,
        job: &Job,
        executions: &[Execution],
        stats: &BTreeMap<NodeId, NodeStats>,
    ) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("cannot begin"))?;
        upsert_job(&tx, job).map_err(self.err("cannot write job"))?;
        for e in executions {
            upsert_exec(&tx, e).map_err(self.err("cannot write execution"))?;
        }
        if !stats.is_empty() {
            *self.stats_cache() = None;
        }
        for (node, delta) in stats {
            bump(&tx, node, *delta).map_err(self.err("cannot update node stats"))?;
        }
        tx.commit().map_err(self.err("cannot commit"))
    }
}

fn sqlite<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(rusqlite::Error) -> Error + 'a {
    move |e| Error::Sqlite { path: path.to_path_buf(), action, message: e.to_string().to_lowercase() }
}

/// A locked file means another process holds it: say which and what to do.
fn in_use(path: &Path, e: rusqlite::Error, action: &'static str) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => Error::Sqlite {
            path: path.to_path_buf(),
            action,
            message: "the file is in use by another process; is another shoal node running on this home? \
                      stop it or pick another --home"
                .into(),
        },
        _ => sqlite(path, action)(e),
    }
}

fn query<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, f)?;
    rows.collect()
}

fn job_params(job: &Job) -> [Box<dyn rusqlite::ToSql + '_>; 16] {
    // The job CID hashes the stored spec text: one serialisation for both.
    let spec = job.spec.to_json();
    let job_cid = crate::receipt::raw_cid(spec.as_bytes()).to_string();
    [
        Box::new(job.id.as_str()),
        Box::new(job.state.as_str()),
        Box::new(spec),
        Box::new(job.created_ms),
        Box::new(job.updated_ms),
        Box::new(job.started_ms),
        Box::new(job.result.map(|c| c.to_string())),
        Box::new(job.error.as_deref()),
        Box::new(job.extra_used),
        Box::new(job.exit_code),
        Box::new(job.failure.as_deref()),
        Box::new(job.receipt.map(|c| c.to_string())),
        Box::new(job.cached.map(|c| c.to_string())),
        // The job's content identity, for the result cache.
        Box::new(job_cid),
        // The key alone in its column, indexed, for per-submitter quotas.
        Box::new(job.submitter.as_ref().map(|s| s.key.clone())),
        Box::new(job.submitter.as_ref().map(|s| match &s.pipeline {
            None => format!("{}:{}", s.at_ms, s.signature),
            Some(p) => format!("{}:{}:{p}", s.at_ms, s.signature),
        })),
    ]
}

fn write_job(conn: &Connection, job: &Job, insert: bool) -> rusqlite::Result<()> {
    let sql = if insert {
        format!("INSERT INTO jobs ({JOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)")
    } else {
        "UPDATE jobs SET state = ?2, spec = ?3, created_ms = ?4, updated_ms = ?5, started_ms = ?6, result = ?7, \
         error = ?8, extra_used = ?9, exit_code = ?10, failure = ?11, receipt = ?12, cached = ?13, job_cid = ?14, \
         submitter = ?15, submitter_proof = ?16 WHERE id = ?1"
            .to_string()
    };
    let p = job_params(job);
    let n = conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(p.iter()))?;
    if n == 0 {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    Ok(())
}

fn upsert_job(conn: &Connection, job: &Job) -> rusqlite::Result<()> {
    let sql = format!(
        "INSERT INTO jobs ({JOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
         ON CONFLICT (id) DO UPDATE SET state = ?2, spec = ?3, created_ms = ?4, updated_ms = ?5, started_ms = ?6, \
         result = ?7, error = ?8, extra_used = ?9, exit_code = ?10, failure = ?11, receipt = ?12, cached = ?13, \
         job_cid = ?14, submitter = ?15, submitter_proof = ?16"
    );
    let p = job_params(job);
    conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(p.iter()))?;
    Ok(())
}

fn exec_params(e: &Execution) -> [Box<dyn rusqlite::ToSql + '_>; 19] {
    [
        Box::new(e.id.as_str()),
        Box::new(e.job.as_str()),
        Box::new(e.node.as_str()),
        Box::new(e.state.as_str()),
        Box::new(e.created_ms),
        Box::new(e.updated_ms),
        Box::new(e.started_ms),
        Box::new(e.commitment.map(|c| c.to_vec())),
        Box::new(e.result.map(|c| c.to_string())),
        Box::new(e.error.as_deref()),
        Box::new(e.stdout.as_deref()),
        Box::new(e.stderr.as_deref()),
        Box::new(e.exit_code),
        Box::new(e.extra),
        Box::new(e.nonce.map(|c| c.to_vec())),
        // Plain data: serializing it cannot fail.
        Box::new(e.meta.as_ref().and_then(|m| serde_json::to_string(m).ok())),
        // SQLite integers are signed: the bits of the u64, as they are.
        Box::new(e.boot.map(|b| b as i64)),
        Box::new(e.commit_signature.as_deref()),
        Box::new(e.reveal_signature.as_deref()),
    ]
}

const EXEC_VALUES: &str = "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)";
const EXEC_SET: &str = "job = ?2, node = ?3, state = ?4, created_ms = ?5, updated_ms = ?6, started_ms = ?7, \
                        commitment = ?8, result = ?9, error = ?10, stdout = ?11, stderr = ?12, exit_code = ?13, \
                        extra = ?14, nonce = ?15, meta = ?16, boot = ?17, commit_signature = ?18, \
                        reveal_signature = ?19";

/// Overwrites `e` only if its stored state is still `from`; the rows
/// written (0 or 1).
fn update_exec_from(conn: &Connection, e: &Execution, from: ExecState) -> rusqlite::Result<usize> {
    let sql = format!("UPDATE executions SET {EXEC_SET} WHERE id = ?1 AND state = ?20");
    let p = exec_params(e);
    let mut params: Vec<&dyn rusqlite::ToSql> = p.iter().map(|b| b.as_ref() as &dyn rusqlite::ToSql).collect();
    let from = from.as_str();
    params.push(&from);
    conn.prepare_cached(&sql).and_then(|mut st| st.execute(params.as_slice()))
}

fn write_exec(conn: &Connection, e: &Execution, insert: bool) -> rusqlite::Result<()> {
    let sql = if insert {
        format!("INSERT INTO executions ({EXEC_COLS}) VALUES {EXEC_VALUES}")
    } else {
        format!("UPDATE executions SET {EXEC_SET} WHERE id = ?1")
    };
    let p = exec_params(e);
    let n = conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(p.iter()))?;
    if n == 0 {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    Ok(())
}

fn upsert_exec(conn: &Connection, e: &Execution) -> rusqlite::Result<()> {
    let sql =
        format!("INSERT INTO executions ({EXEC_COLS}) VALUES {EXEC_VALUES} ON CONFLICT (id) DO UPDATE SET {EXEC_SET}");
    let p = exec_params(e);
    conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(p.iter()))?;
    Ok(())
}

fn bump(conn: &Connection, node: &str, d: NodeStats) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO node_stats (node, agreed, dissented, lost, failed) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (node) DO UPDATE SET agreed = agreed + ?2, dissented = dissented + ?3, lost = lost + ?4,
         failed = failed + ?5",
    )?
    .execute(params![node, d.agreed, d.dissented, d.lost, d.failed])?;
    Ok(())
}

/// A job row as stored, decoded outside SQLite's callback so that a bad
/// value becomes a [`Error::Corrupt`] naming it.
struct RawJob {
    id: String,
    state: String,
    spec: String,
    created_ms: u64,
    updated_ms: u64,
    started_ms: Option<u64>,
    result: Option<String>,
    error: Option<String>,
    extra_used: u32,
    exit_code: Option<i32>,
    failure: Option<String>,
    receipt: Option<String>,
    cached: Option<String>,
    submitter: Option<String>,
    submitter_proof: Option<String>,
}

fn raw_job(r: &Row<'_>) -> rusqlite::Result<RawJob> {
    Ok(RawJob {
        id: r.get(0)?,
        state: r.get(1)?,
        spec: r.get(2)?,
        created_ms: r.get(3)?,
        updated_ms: r.get(4)?,
        started_ms: r.get(5)?,
        result: r.get(6)?,
        error: r.get(7)?,
        extra_used: r.get(8)?,
        exit_code: r.get(9)?,
        failure: r.get(10)?,
        receipt: r.get(11)?,
        cached: r.get(12)?,
        submitter: r.get(14)?,
        submitter_proof: r.get(15)?,
    })
}

fn bad(what: String) -> impl FnOnce(String) -> Bad {
    move |message| Bad { what, message }
}

fn cid(what: String, s: Option<String>) -> Result<Option<Cid>, Bad> {
    s.map(|s| crate::serde_util::parse_cid(&s).map_err(bad(what))).transpose()
}

impl RawJob {
    fn decode(self) -> Result<Job, Bad> {
        self.decode_with(None)
    }

    /// Decodes the row, with `spec` already decoded if given.
    fn decode_with(self, spec: Option<Spec>) -> Result<Job, Bad> {
        let id: JobId = self.id.parse().map_err(|e: crate::model::Error| bad("a job id".into())(e.to_string()))?;
        let what = |col: &str| format!("job {id} {col}");
        let spec: Spec = match spec {
            Some(s) => s,
            None => serde_json::from_str(&self.spec).map_err(|e| bad(what("spec"))(e.to_string()))?,
        };
        Ok(Job {
            state: self.state.parse().map_err(|e: crate::model::Error| bad(what("state"))(e.to_string()))?,
            spec,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            started_ms: self.started_ms,
            result: cid(what("result"), self.result)?,
            error: self.error,
            extra_used: self.extra_used,
            exit_code: self.exit_code,
            failure: self.failure,
            receipt: cid(what("receipt"), self.receipt)?,
            cached: cid(what("cached"), self.cached)?,
            submitter: match (self.submitter, self.submitter_proof) {
                (Some(key), Some(proof)) => {
                    let mut parts = proof.splitn(3, ':');
                    let (at, signature, pipeline) = (parts.next(), parts.next(), parts.next());
                    let at = at
                        .and_then(|a| a.parse().ok())
                        .zip(signature)
                        .ok_or_else(|| bad(what("submitter"))(format!("malformed proof {proof:?}")))?;
                    Some(crate::model::Submitter {
                        key,
                        at_ms: at.0,
                        signature: at.1.to_owned(),
                        pipeline: pipeline.map(str::to_owned),
                    })
                }
                _ => None,
            },
            id,
        })
    }
}

struct RawExec {
    id: String,
    job: String,
    node: String,
    state: String,
    created_ms: u64,
    updated_ms: u64,
    started_ms: Option<u64>,
    commitment: Option<Vec<u8>>,
    result: Option<String>,
    error: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    exit_code: Option<i32>,
    extra: bool,
    nonce: Option<Vec<u8>>,
    meta: Option<String>,
    boot: Option<i64>,
    commit_signature: Option<String>,
    reveal_signature: Option<String>,
}

fn raw_exec(r: &Row<'_>) -> rusqlite::Result<RawExec> {
    Ok(RawExec {
        id: r.get(0)?,
        job: r.get(1)?,
        node: r.get(2)?,
        state: r.get(3)?,
        created_ms: r.get(4)?,
        updated_ms: r.get(5)?,
        started_ms: r.get(6)?,
        commitment: r.get(7)?,
        result: r.get(8)?,
        error: r.get(9)?,
        stdout: r.get(10)?,
        stderr: r.get(11)?,
        exit_code: r.get(12)?,
        extra: r.get(13)?,
        nonce: r.get(14)?,
        meta: r.get(15)?,
        boot: r.get(16)?,
        commit_signature: r.get(17)?,
        reveal_signature: r.get(18)?,
    })
}

fn bytes32(what: String, v: Option<Vec<u8>>) -> Result<Option<[u8; 32]>, Bad> {
    v.map(|v| <[u8; 32]>::try_from(v.as_slice()).map_err(|_| bad(what)(format!("{} bytes, expected 32", v.len()))))
        .transpose()
}

impl RawExec {
    fn decode(self) -> Result<Execution, Bad> {
        let id: ExecId =
            self.id.parse().map_err(|e: crate::model::Error| bad("an execution id".into())(e.to_string()))?;
        let what = |col: &str| format!("execution {id} {col}");
        Ok(Execution {
            job: self.job.parse().map_err(|e: crate::model::Error| bad(what("job"))(e.to_string()))?,
            node: self.node,
            state: self.state.parse().map_err(|e: crate::model::Error| bad(what("state"))(e.to_string()))?,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            started_ms: self.started_ms,
            commitment: bytes32(what("commitment"), self.commitment)?,
            result: cid(what("result"), self.result)?,
            error: self.error,
            stdout: self.stdout,
            stderr: self.stderr,
            exit_code: self.exit_code,
            extra: self.extra,
            nonce: bytes32(what("nonce"), self.nonce)?,
            meta: self
                .meta
                .map(|m| serde_json::from_str(&m).map_err(|e| bad(what("meta"))(e.to_string())))
                .transpose()?,
            boot: self.boot.map(|b| b as u64),
            commit_signature: self.commit_signature,
            reveal_signature: self.reveal_signature,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(n: u8) -> Cid {
        *shoal_storage::Block::new(shoal_storage::CidVersion::V1, shoal_storage::block::RAW, vec![n]).cid()
    }

    fn job(n: u64) -> Job {
        let mut spec = Spec::new(cid(0));
        spec.redundancy.count = 3;
        spec.constraints.push("zone=eu".parse().unwrap());
        Job::new(JobId::from_parts(1000 + n, n), spec, 1000 + n)
    }

    fn exec(job: &Job, n: u64) -> Execution {
        let mut e = Execution::new(
            ExecId::from_parts(2000 + n, n),
            job.id.clone(),
            format!("node{n}"),
            n.is_multiple_of(2),
            2000,
        );
        e.state = ExecState::Revealed;
        e.started_ms = Some(2001);
        e.commitment = Some([n as u8; 32]);
        e.nonce = Some([7; 32]);
        e.meta = Some(crate::model::ExecMeta { nn_devices: vec![format!("cpu: {n}")], wall_ms: n, fuel: 10 * n });
        // Above i64::MAX: stored as the same 64 bits.
        e.boot = Some(u64::MAX - n);
        e.result = Some(cid(n as u8));
        e.stdout = Some("out".into());
        e.exit_code = Some(-3);
        e
    }

    #[test]
    fn a_conditional_update_does_not_overwrite_newer_news() {
        let db = Db::open_in_memory().unwrap();
        let j = job(1);
        db.insert_job(&j).unwrap();
        let mut e = exec(&j, 1);
        e.state = ExecState::BidAsked;
        db.insert_execution(&e).unwrap();
        // The commitment lands first...
        let mut committed = e.clone();
        committed.state = ExecState::Committed;
        assert!(db.update_execution_from(&committed, ExecState::BidAsked).unwrap());
        // ...then the bid's answer, read before it, must not undo it.
        let mut running = e.clone();
        running.state = ExecState::Running;
        assert!(!db.update_execution_from(&running, ExecState::BidAsked).unwrap());
        assert_eq!(db.execution(&e.id).unwrap().unwrap().state, ExecState::Committed);
        assert!(!db.update_execution_from(&exec(&j, 2), ExecState::BidAsked).unwrap(), "absent");
    }

    #[test]
    fn cached_specs_follow_the_stored_text() {
        let db = Db::open_in_memory().unwrap();
        let mut j = job(1);
        db.insert_job(&j).unwrap();
        assert_eq!(db.job(&j.id).unwrap().as_ref(), Some(&j));
        assert_eq!(db.job(&j.id).unwrap().as_ref(), Some(&j), "from the cache");
        assert_eq!(db.job_state(&j.id).unwrap(), Some(JobState::Queued));
        // Were a spec ever rewritten, the new text is decoded afresh.
        j.spec.retries = 7;
        j.state = JobState::Running;
        db.update_job(&j).unwrap();
        assert_eq!(db.job(&j.id).unwrap().unwrap().spec.retries, 7);
        assert_eq!(db.job_state(&j.id).unwrap(), Some(JobState::Running));
        assert_eq!(db.job_state(&job(2).id).unwrap(), None);
    }

    #[test]
    fn leftovers_are_the_live_executions_of_ended_jobs() {
        let db = Db::open_in_memory().unwrap();
        let (mut done, open) = (job(1), job(2));
        db.insert_job(&done).unwrap();
        db.insert_job(&open).unwrap();
        let states =
            [ExecState::Running, ExecState::Committed, ExecState::Completed, ExecState::Failed, ExecState::Revealed];
        for (i, st) in states.into_iter().enumerate() {
            for j in [&done, &open] {
                let mut e = exec(j, i as u64 + if j.id == done.id { 0 } else { 10 });
                e.state = st;
                db.insert_execution(&e).unwrap();
            }
        }
        assert!(db.live_executions_of_ended_jobs().unwrap().is_empty(), "no job has ended");
        let left = |db: &Db| -> Vec<(JobId, ExecState)> {
            db.live_executions_of_ended_jobs().unwrap().into_iter().map(|e| (e.job, e.state)).collect()
        };
        // A failed job's revealed results are its record, not leftovers.
        done.state = JobState::Failed;
        db.update_job(&done).unwrap();
        assert_eq!(left(&db), vec![(done.id.clone(), ExecState::Running), (done.id.clone(), ExecState::Committed)]);
        // A completed job's are still to be judged.
        done.state = JobState::Completed;
        db.update_job(&done).unwrap();
        assert_eq!(
            left(&db),
            vec![
                (done.id.clone(), ExecState::Running),
                (done.id.clone(), ExecState::Committed),
                (done.id.clone(), ExecState::Revealed)
            ]
        );
    }

    #[test]
    fn jobs_and_executions_round_trip() {
        let db = Db::open_in_memory().unwrap();
        let mut j = job(1);
        db.insert_job(&j).unwrap();
        assert_eq!(db.job(&j.id).unwrap().as_ref(), Some(&j));
        j.state = JobState::Completed;
        j.result = Some(cid(9));
        j.error = Some("x".into());
        j.started_ms = Some(5);
        j.extra_used = 2;
        db.update_job(&j).unwrap();
        assert_eq!(db.job(&j.id).unwrap().as_ref(), Some(&j));
        assert!(db.job(&"j-none".parse().unwrap()).unwrap().is_none());

        let mut e = exec(&j, 1);
        db.insert_execution(&e).unwrap();
        assert_eq!(db.execution(&e.id).unwrap().as_ref(), Some(&e));
        e.state = ExecState::Lost;
        e.error = Some("gone".into());
        db.update_execution(&e).unwrap();
        assert_eq!(db.executions(&j.id).unwrap(), vec![e.clone()]);
        // Inserting twice, or updating what is not there, is an error.
        assert!(db.insert_execution(&e).is_err());
        let missing = exec(&j, 2);
        let err = db.update_execution(&missing).unwrap_err().to_string();
        assert!(err.contains("cannot update execution"), "{err}");
        // An execution of an unknown job is refused.
        let mut orphan = exec(&j, 3);
        orphan.job = "j-nope".parse().unwrap();
        assert!(db.insert_execution(&orphan).is_err());
        // Several at once: all or none.
        let (four, five) = (exec(&j, 4), exec(&j, 5));
        assert!(db.insert_executions(&[four.clone(), orphan]).is_err());
        assert!(db.execution(&four.id).unwrap().is_none());
        db.insert_executions(&[four.clone(), five.clone()]).unwrap();
        assert_eq!(db.executions(&j.id).unwrap().len(), 3);
        assert_eq!(db.execution(&five.id).unwrap(), Some(five));
    }

    #[test]
    fn lists_filter_and_order() {
        let db = Db::open_in_memory().unwrap();
        let jobs: Vec<Job> = (0..5).map(job).collect();
        for j in &jobs {
            db.insert_job(j).unwrap();
        }
        let mut done = jobs[1].clone();
        done.state = JobState::Failed;
        db.update_job(&done).unwrap();
        let mut running = jobs[3].clone();
        running.state = JobState::Running;
        db.update_job(&running).unwrap();

        let all: Vec<JobId> = db.jobs(None, 100).unwrap().into_iter().map(|j| j.id).collect();
        let newest_first: Vec<JobId> = jobs.iter().rev().map(|j| j.id.clone()).collect();
        assert_eq!(all, newest_first);
        assert_eq!(db.jobs(None, 2).unwrap().len(), 2);
        assert_eq!(db.jobs(Some(JobState::Failed), 10).unwrap(), vec![done]);
        let active: Vec<JobId> = db.active_jobs().unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(active, [&jobs[0], &jobs[2], &jobs[3], &jobs[4]].map(|j| j.id.clone()));
        assert_eq!(db.count_jobs(JobState::Queued).unwrap(), 3);
        assert_eq!(db.count_jobs(JobState::Completed).unwrap(), 0);
    }

    #[test]
    fn apply_writes_everything_or_nothing() {
        let db = Db::open_in_memory().unwrap();
        let mut j = job(1);
        let a = exec(&j, 1);
        let mut b = exec(&j, 2);
        db.apply(&j, &[a.clone(), b.clone()]).unwrap();
        j.state = JobState::Running;
        b.state = ExecState::Failed;
        db.apply(&j, std::slice::from_ref(&b)).unwrap();
        assert_eq!(db.job(&j.id).unwrap().unwrap().state, JobState::Running);
        assert_eq!(db.executions(&j.id).unwrap(), vec![a.clone(), b.clone()]);

        // A bad execution (unknown job) rolls the job back too.
        j.state = JobState::Completed;
        let mut orphan = exec(&j, 3);
        orphan.job = "j-nope".parse().unwrap();
        assert!(db.apply(&j, &[orphan]).is_err());
        assert_eq!(db.job(&j.id).unwrap().unwrap().state, JobState::Running);
    }

    #[test]
    fn apply_with_stats_counts_once_with_the_job() {
        let db = Db::open_in_memory().unwrap();
        let j = job(1);
        let stats: BTreeMap<NodeId, NodeStats> =
            [("a".to_string(), NodeStats { agreed: 1, ..Default::default() })].into();
        db.apply_with_stats(&j, &[], &stats).unwrap();
        assert_eq!(db.node_stats().unwrap()["a"].agreed, 1);
        db.apply_with_stats(&j, &[], &stats).unwrap();
        assert_eq!(db.node_stats().unwrap()["a"].agreed, 2, "a kept copy is dropped by the write");
        let mut orphan = exec(&j, 3);
        orphan.job = "j-nope".parse().unwrap();
        assert!(db.apply_with_stats(&j, &[orphan], &stats).is_err());
        assert_eq!(db.node_stats().unwrap()["a"].agreed, 2);
    }

    #[test]
    fn stats_accumulate() {
        let db = Db::open_in_memory().unwrap();
        db.bump_stats(&"a".into(), NodeStats { agreed: 2, ..Default::default() }).unwrap();
        // Read (and kept) between writes: every write is seen.
        assert_eq!(db.node_stats().unwrap()["a"].agreed, 2);
        db.bump_stats(&"a".into(), NodeStats { agreed: 1, dissented: 1, lost: 3, failed: 4 }).unwrap();
        db.bump_stats(&"b".into(), NodeStats { lost: 1, ..Default::default() }).unwrap();
        let s = db.node_stats().unwrap();
        assert_eq!(s["a"], NodeStats { agreed: 3, dissented: 1, lost: 3, failed: 4 });
        assert_eq!(s["b"], NodeStats { lost: 1, ..Default::default() });
    }

    #[test]
    fn a_reopened_file_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler.sqlite");
        let j = job(1);
        let e = exec(&j, 1);
        {
            let db = Db::open(&path).unwrap();
            db.apply(&j, std::slice::from_ref(&e)).unwrap();
            db.bump_stats(&"n".into(), NodeStats { agreed: 1, ..Default::default() }).unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.path(), path);
        assert_eq!(db.job(&j.id).unwrap(), Some(j.clone()));
        assert_eq!(db.executions(&j.id).unwrap(), vec![e]);
        assert_eq!(db.node_stats().unwrap()["n"].agreed, 1);
    }

    #[test]
    fn a_file_from_before_execution_metadata_gains_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler.sqlite");
        let j = job(1);
        let mut e = exec(&j, 1);
        {
            let db = Db::open(&path).unwrap();
            db.insert_job(&j).unwrap();
            let conn = db.conn();
            conn.execute_batch("ALTER TABLE executions DROP COLUMN meta").unwrap();
            // A row as the older code wrote it.
            conn.execute(
                "INSERT INTO executions (id, job, node, state, created_ms, updated_ms, extra) \
                 VALUES (?1, ?2, 'n', 'running', 1, 1, 0)",
                params![e.id.as_str(), j.id.as_str()],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let old = db.execution(&e.id).unwrap().unwrap();
        assert_eq!((old.state, old.meta), (ExecState::Running, None));
        e.node = "n".into();
        assert!(db.update_execution_from(&e, ExecState::Running).unwrap());
        assert_eq!(db.execution(&e.id).unwrap(), Some(e));
    }

    #[test]
    fn a_file_from_before_job_outcomes_gains_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler.sqlite");
        let mut j = job(1);
        {
            let db = Db::open(&path).unwrap();
            let conn = db.conn();
            conn.execute_batch("ALTER TABLE jobs DROP COLUMN exit_code; ALTER TABLE jobs DROP COLUMN failure").unwrap();
            // A completed job as the older code wrote it.
            conn.execute(
                "INSERT INTO jobs (id, state, spec, created_ms, updated_ms, result, extra_used) \
                 VALUES (?1, 'completed', ?2, 1, 1, ?3, 0)",
                params![j.id.as_str(), j.spec.to_json(), cid(9).to_string()],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let old = db.job(&j.id).unwrap().unwrap();
        assert_eq!((old.state, old.exit_code, old.failure.as_deref()), (JobState::Completed, None, None));
        assert_eq!(old.outcome(), None, "an outcome nobody recorded is unknown, not success");
        j.state = JobState::Completed;
        j.result = Some(cid(9));
        j.exit_code = Some(1);
        j.failure = Some("wasm trap: unreachable".into());
        db.update_job(&j).unwrap();
        let new = db.job(&j.id).unwrap().unwrap();
        assert_eq!(new.outcome(), Some(crate::model::Outcome::Failed));
        assert_eq!(new, j);
    }

    #[test]
    fn every_state_an_execution_enters_is_in_its_timeline() {
        let db = Db::open_in_memory().unwrap();
        let j = job(1);
        let mut e = exec(&j, 1);
        e.state = ExecState::BidAsked;
        e.updated_ms = 10;
        db.apply(&j, std::slice::from_ref(&e)).unwrap();
        for (state, ms) in [(ExecState::Running, 20), (ExecState::Running, 25), (ExecState::Committed, 30)] {
            let read = e.state;
            e.state = state;
            e.updated_ms = ms;
            assert!(db.update_execution_from(&e, read).unwrap());
        }
        let other = exec(&job(2), 2);
        db.apply(&job(2), std::slice::from_ref(&other)).unwrap();
        let t = db.timeline(&j.id).unwrap();
        assert_eq!(t.len(), 1, "only this job's executions");
        // A write that keeps the state adds nothing.
        assert_eq!(t[&e.id], [(ExecState::BidAsked, 10), (ExecState::Running, 20), (ExecState::Committed, 30)]);
    }

    #[test]
    fn a_judgement_is_counted_with_its_state_change_or_not_at_all() {
        let db = Db::open_in_memory().unwrap();
        let j = job(1);
        let mut e = exec(&j, 1);
        e.state = ExecState::Committed;
        db.apply(&j, std::slice::from_ref(&e)).unwrap();
        e.state = ExecState::Failed;
        let dissent = NodeStats { dissented: 1, ..Default::default() };
        assert!(db.update_execution_judged(&e, ExecState::Committed, dissent).unwrap());
        // The same answer again finds the state moved on: not counted twice.
        assert!(!db.update_execution_judged(&e, ExecState::Committed, dissent).unwrap());
        assert_eq!(db.node_stats().unwrap()[&e.node].dissented, 1);
    }

    #[test]
    fn a_file_in_use_is_refused_at_once_and_opens_once_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler.sqlite");
        let j = job(1);
        let db = Db::open(&path).unwrap();
        db.insert_job(&j).unwrap();
        let t = std::time::Instant::now();
        let e = Db::open(&path).unwrap_err().to_string();
        assert!(e.contains("in use by another process") && e.contains("--home"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "refused only after {:?}", t.elapsed());
        // The owner goes on writing.
        db.insert_job(&job(2)).unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.job(&j.id).unwrap(), Some(j));
        assert!(db.job(&job(2).id).unwrap().is_some());
    }

    #[test]
    fn newer_schemas_and_corrupt_rows_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let j = job(1);
        {
            let db = Db::open(&path).unwrap();
            db.insert_job(&j).unwrap();
            db.conn().execute("UPDATE jobs SET spec = '{\"task\": 1}'", []).unwrap();
        }
        let db = Db::open(&path).unwrap();
        let e = db.job(&j.id).unwrap_err().to_string();
        assert!(e.contains(&format!("job {} spec is unreadable", j.id)), "{e}");
        db.conn().pragma_update(None, "user_version", 9).unwrap();
        drop(db);
        let e = Db::open(&path).unwrap_err().to_string();
        assert!(e.contains("schema version 9") && e.contains("upgrade shoal"), "{e}");
    }

    #[test]
    fn a_closed_database_lets_go_of_its_file_and_refuses_calls_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler.sqlite");
        let db = Db::open(&path).unwrap();
        db.insert_job(&job(1)).unwrap();
        db.close();
        // Another owner opens it at once, while the old handle lives.
        let again = Db::open(&path).unwrap();
        assert!(again.job(&job(1).id).unwrap().is_some());
        let e = db.insert_job(&job(2)).unwrap_err();
        assert!(matches!(e, Error::Closed { .. }), "{e}");
        assert!(e.to_string().contains("is closed: the node is stopping"), "{e}");
    }

    #[test]
    fn the_journal_survives_a_reopen_replaces_running_rows_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler.sqlite");
        let running = |n: u64| JournalEntry {
            exec: format!("e-{n}"),
            requester: "peer".into(),
            job: "bafkjob".into(),
            seq: n,
            done: None,
            revealed: false,
        };
        let done = |n: u64| JournalEntry {
            done: Some(Committed {
                result: cid(n as u8),
                nonce: [n as u8; 32],
                exit_code: 3,
                stdout: "out".into(),
                stderr: "err".into(),
                meta: crate::model::ExecMeta { wall_ms: 7, ..Default::default() },
            }),
            ..running(n)
        };
        {
            let db = Db::open(&path).unwrap();
            db.journal_put(&[running(1), running(2)]).unwrap();
            db.journal_put(&[done(1)]).unwrap();
        }
        let db = Db::open(&path).unwrap();
        let all: Vec<JournalEntry> = db.journal().unwrap().into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(all, vec![done(1), running(2)]);
        // Revealed (even before its commitment was journalled) stays so.
        db.journal_revealed(&["e-2".into()]).unwrap();
        db.journal_put(&[done(2)]).unwrap();
        let two = db.journal().unwrap().into_iter().map(|r| r.unwrap()).find(|e| e.exec == "e-2").unwrap();
        assert!(two.revealed && two.done.is_some(), "{two:?}");
        db.journal_remove(&["e-2".into()]).unwrap();
        assert_eq!(db.journal().unwrap().len(), 1);
        // Past the bound the oldest finished entries go.
        let many: Vec<JournalEntry> = (10..10 + MAX_JOURNAL as u64 + 5).map(done).collect();
        db.journal_put(&many).unwrap();
        let all: Vec<JournalEntry> = db.journal().unwrap().into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(all.len(), MAX_JOURNAL);
        // 4,102 finished: done(1) and done(10..=14) went.
        assert_eq!(all[0].seq, 15);
        // A row that does not decode is named, not fatal.
        db.conn().execute("UPDATE journal SET nonce = x'00' WHERE exec = 'e-20'", []).unwrap();
        let bad = db.journal().unwrap().into_iter().find_map(|r| r.err()).unwrap();
        assert_eq!(bad.0, "e-20");
        assert!(bad.1.to_string().contains("journal entry e-20") && bad.1.to_string().contains("nonce"), "{}", bad.1);
    }

    #[test]
    fn a_step_is_written_whole_or_not_at_all() {
        let db = Db::open_in_memory().unwrap();
        let mut j = job(1);
        db.insert_job(&j).unwrap();
        let mut a = exec(&j, 1);
        a.state = ExecState::Running;
        let mut b = exec(&j, 2);
        b.state = ExecState::Running;
        db.insert_executions(&[a.clone(), b.clone()]).unwrap();
        let lost = |e: &Execution| Execution { state: ExecState::Lost, ..e.clone() };
        let stats: BTreeMap<NodeId, NodeStats> =
            [(a.node.clone(), NodeStats { lost: 1, ..Default::default() })].into_iter().collect();
        j.state = JobState::Running;
        let placed = exec(&j, 3);
        // b was read as Committed, but is Running: the whole step is refused.
        let stale = Step {
            ended: vec![(lost(&a), ExecState::Running), (lost(&b), ExecState::Committed)],
            stats: stats.clone(),
            job: Some(j.clone()),
            placed: vec![placed.clone()],
        };
        assert!(!db.apply_step(&stale).unwrap());
        assert_eq!(db.execution(&a.id).unwrap().unwrap().state, ExecState::Running, "rolled back");
        assert_eq!(db.executions(&j.id).unwrap().len(), 2, "nothing placed");
        assert!(db.node_stats().unwrap().get(&a.node).is_none(), "nothing counted");
        assert_eq!(db.job(&j.id).unwrap().unwrap().state, JobState::Queued);
        let fresh = Step { ended: vec![(lost(&a), ExecState::Running)], ..stale };
        assert!(db.apply_step(&fresh).unwrap());
        assert_eq!(db.execution(&a.id).unwrap().unwrap().state, ExecState::Lost);
        assert_eq!(db.executions(&j.id).unwrap().len(), 3);
        assert_eq!(db.node_stats().unwrap()[&a.node].lost, 1);
        assert_eq!(db.job(&j.id).unwrap().unwrap().state, JobState::Running);
    }
}
