//! Every SQL statement TaskFlow runs, and the only place that touches
//! PostgreSQL.
//!
//! PostgreSQL is the single source of truth: a job exists once its `INSERT`
//! commits, and every state change is one guarded statement that commits on
//! its own. Functions that move a job name their guard
//! (`finish_if_lease_matches`, `requeue_if_finished`) and report
//! [`Transition::Stale`] when the guard did not match, so a late or
//! duplicate writer can tell it lost and discard its result.
//!
//! - [`modules`]: content-addressed task components.
//! - [`module_names`]: names pointing at modules, and their history.
//! - [`jobs`]: submission, reads and user actions (cancel, retry).
//! - [`claim`]: where a job is claimed, with or without its queue's limits.
//! - [`execution`]: the worker's and the maintenance services' statements:
//!   finish, lease checks, promotion of due jobs.
//! - [`dead_letters`]: dead jobs grouped by module and error, requeued
//!   a group at a time.
//! - [`console_sessions`]: who is logged in to the web console.
//! - [`prune`]: where finished jobs past their retention are deleted.
//! - [`queue_stats`]: what each queue is doing, from counters the
//!   statements that move jobs keep.
//! - [`leadership`]: the maintenance leader's term.
//! - `migrate`: where the schema is migrated, and the rules migrations
//!   follow.
//! - [`state`]: the job state machine.

pub mod actions;
pub mod claim;
mod codec;
pub mod console_sessions;
pub mod dead_letters;
pub mod execution;
pub mod fixtures;
pub mod jobs;
pub mod leadership;
mod migrate;
pub mod module_names;
pub mod modules;
mod pool;
pub mod prune;
pub mod queue_stats;
pub mod queues;
pub mod records;
pub mod rescue;
pub mod schedule;
pub mod stats;
pub mod submit;
mod submitter;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Postgres;
use uuid::Uuid;

use crate::job::JobState;

pub use actions::CancelOutcome;
pub use claim::{
    CLAIMS_PER_RESERVATION, ClaimPath, Claimed, ClaimedJob, OpenReservation, RESERVATION_EXPIRY,
    Reservation,
};
pub use console_sessions::ConsoleSession;
pub use dead_letters::{DeadLetterGroup, RequeuePass};
pub use execution::{FinishedAttempt, LeaseRef};
pub use fixtures::FillerJobs;
pub use jobs::{JobFilter, ModuleJobs};
pub use migrate::MIGRATOR;
pub use module_names::{ModuleDeletion, ModuleInUse, NameMove, NameRollback};
pub use modules::ModuleRecord;
pub use pool::{DatabasePooler, UnknownPooler};
pub use prune::Pruned;
pub use queues::{QueueGrants, QueueRecord};
pub use records::{AttemptRecord, JobDetail, JobRecord};
pub use rescue::RunningLease;
pub use stats::{AttemptSpan, JobTimes};
pub use submit::Submitted;
pub use submitter::Submitter;

/// Whether a guarded statement found the row in the state it required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The guard matched and the change is committed.
    Applied,
    /// The guard did not match (another writer got there first, or the
    /// fencing token is old): nothing changed.
    Stale,
}

/// Errors from the store, phrased for whoever has to act on them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A submission named modules that were never uploaded.
    #[error("unknown module {}: upload it with PUT /v1/modules first", .0.join(", "))]
    UnknownModules(Vec<String>),
    /// An idempotency key was reused for a different submission.
    #[error(
        "idempotency key {key:?} already belongs to job {job_id}, submitted with different \
         parameters; reuse a key only to retry the same request"
    )]
    IdempotencyConflict {
        /// The reused key.
        key: String,
        /// The job that owns it.
        job_id: Uuid,
    },
    /// The request raced with a change of its module (a submission with
    /// its upload, an upload with deletes); nothing was written and a retry
    /// succeeds.
    #[error("the request raced with a concurrent change of its module; nothing was written, retry")]
    Raced,
    /// A follow-up read after a write failed; the jobs the error is
    /// reported for were not written.
    #[error("database error: {0}")]
    Unavailable(String),
    /// No job has this id.
    #[error("job {0} does not exist")]
    JobNotFound(Uuid),
    /// The job is in a state the requested action does not apply to.
    #[error("job {id} is {state}; {action} applies only to {allowed} jobs")]
    InvalidTransition {
        /// The job.
        id: Uuid,
        /// Its current state.
        state: JobState,
        /// What was asked (`cancel`, `retry`).
        action: &'static str,
        /// The states the action applies to, for the message.
        allowed: &'static str,
    },
    /// The job's module was deleted (`DELETE /v1/modules/{hash}`), so it
    /// cannot run again.
    #[error(
        "job {id} runs module {module_hash}, which was deleted; submit it again with a module that exists"
    )]
    ModuleDeleted {
        /// The job.
        id: Uuid,
        /// The module it names.
        module_hash: String,
    },
    /// PostgreSQL failed or is unreachable; callers may retry.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The group write a submission was part of failed
    /// ([`Submitter`]); every submission of the group gets this error.
    #[error("{0}")]
    Group(Arc<StoreError>),
    /// A secret kept without a new value has no stored value to keep.
    #[error("secrets.{0}.value: a new secret needs a value")]
    MissingSecretValue(String),
    /// A conditional write found the queue changed since it was read.
    #[error("queue {0} changed while this change was made")]
    QueueChanged(String),
    /// The store is behind a transaction-mode pooler and the operation
    /// needs a session (a direct or session-pooled connection).
    #[error("this needs a direct database connection, not a transaction-mode pooler: {0}")]
    SessionRequired(&'static str),
    /// The group-commit writer stopped (the runtime is shutting down).
    #[error("the submission writer stopped")]
    WriterStopped,
    /// A move would point more than `limit` names at module `hash`
    /// ([`crate::job::MAX_NAMES_PER_MODULE`]); nothing was written.
    #[error(
        "module {hash} has {limit} names already, the most a module may have; \
         point one of them elsewhere first"
    )]
    TooManyNames {
        /// The module.
        hash: String,
        /// The most names a module may have.
        limit: usize,
    },
}

impl StoreError {
    /// Whether PostgreSQL refused the values sent, rather than failing to
    /// run the statement: a data exception (SQLSTATE class 22: a NUL in
    /// text, a date out of range), a violated constraint (23), a size limit
    /// (54), or a value the driver could not encode. Sending the same values
    /// again fails again, so a caller that retries on errors must not retry
    /// these.
    pub fn is_refusal(&self) -> bool {
        match self {
            StoreError::Group(error) => error.is_refusal(),
            StoreError::Database(sqlx::Error::Database(error)) => {
                error.code().is_some_and(|code| {
                    ["22", "23", "54"]
                        .iter()
                        .any(|class| code.starts_with(class))
                })
            }
            StoreError::Database(sqlx::Error::Encode(_)) => true,
            _ => false,
        }
    }

    /// The SQLSTATE PostgreSQL answered with, if it answered with an error.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            StoreError::Group(error) => error.sqlstate(),
            StoreError::Database(sqlx::Error::Database(error)) => {
                error.code().map(|code| code.into_owned())
            }
            _ => None,
        }
    }
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Bytes of one statement's parameters above which the connection that
/// carried it is closed after use instead of returning to the pool.
///
/// A connection keeps its buffers at the size of the largest message it has
/// sent or received, so a pool whose connections each once carried a big
/// batch (a 64 MiB job batch, a worker's batch of large outputs) would hold
/// that much memory per connection for good. Reconnecting costs a few
/// milliseconds, next to the seconds such a statement takes.
pub const LARGE_STATEMENT_BYTES: usize = 4 << 20;

/// Handle to PostgreSQL. Cheap to clone; clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: pool::Pool,
}

impl Store {
    /// Connects a pool of at most `max_connections`, through `pooler`. Does
    /// not wait for PostgreSQL to be up: connections are made on first use,
    /// so a process can start while the database restarts.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        pooler: DatabasePooler,
    ) -> StoreResult<Self> {
        Ok(Self {
            pool: pool::Pool::connect_lazy(
                url.parse()?,
                max_connections,
                pooler,
                Cow::Borrowed("BEGIN"),
            ),
        })
    }

    /// A store over the PostgreSQL at `url` (a read replica of this one),
    /// with as many connections, for statements that only read. PostgreSQL
    /// ends any statement of it after `statement_timeout`, so a read its
    /// caller gave up on does not go on running there. Directly, the timeout
    /// is a startup option of each connection; through a transaction-mode
    /// pooler, which refuses startup options, a `SET LOCAL` in the
    /// transaction each statement runs in anyway.
    pub fn replica(&self, url: &str, statement_timeout: Duration) -> StoreResult<Self> {
        let options = url.parse::<sqlx::postgres::PgConnectOptions>()?;
        let timeout = millis(statement_timeout);
        let pooler = self.pool.pooler();
        let (options, begin) = match pooler {
            DatabasePooler::None => (
                options.options([("statement_timeout", timeout.to_string())]),
                Cow::Borrowed("BEGIN"),
            ),
            DatabasePooler::Transaction => (
                options,
                Cow::Owned(format!("BEGIN; SET LOCAL statement_timeout = {timeout}")),
            ),
        };
        Ok(Self {
            pool: pool::Pool::connect_lazy(options, self.pool.max_connections(), pooler, begin),
        })
    }

    /// A store over one connection of its own to the same database, for a
    /// caller that sends one statement at a time, the same few again and
    /// again: a worker's claims ([`Worker`](crate::worker::Worker)).
    /// PostgreSQL then plans those statements, and compiles the PL/pgSQL
    /// functions they call, once on that connection, rather than once on
    /// each connection of the pool, which lends its idle connections in
    /// turn; and they never wait for a connection behind other statements.
    /// Made lazily, like the pool it comes from.
    pub fn single_connection(&self) -> Self {
        Self {
            pool: self.pool.single_connection(),
        }
    }

    /// The pool every statement of the store runs on; nothing outside the
    /// store sees it.
    fn pool(&self) -> &pool::Pool {
        &self.pool
    }

    /// Closes every connection, waiting for those in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A pooled connection for a statement whose parameters take `bytes`;
    /// closed after use rather than pooled if that is more than
    /// [`LARGE_STATEMENT_BYTES`].
    async fn connection_for(&self, bytes: usize) -> StoreResult<pool::Connection> {
        let mut connection = self.pool.acquire().await?;
        if bytes > LARGE_STATEMENT_BYTES {
            connection.close_on_drop();
        }
        Ok(connection)
    }

    /// Creates the database `url` names if it does not exist; returns
    /// whether it did.
    pub async fn create_database_if_missing(url: &str) -> StoreResult<bool> {
        use sqlx::migrate::MigrateDatabase as _;
        if Postgres::database_exists(url).await? {
            return Ok(false);
        }
        Postgres::create_database(url).await?;
        Ok(true)
    }

    /// Whether PostgreSQL answers a trivial query.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query!("SELECT 1 AS one")
            .fetch_one(self.pool())
            .await?;
        Ok(())
    }
}

/// Counts one store call, by name: operators see the database load per
/// operation on `/metrics`, and `taskflow-bench` derives database calls per
/// job from it. A call is one round trip, or a few for the calls that look
/// something up after writing.
fn statement(name: &'static str) {
    metrics::counter!("taskflow_db_calls_total", "statement" => name).increment(1);
}

/// Converts a duration to whole milliseconds for SQL interval arithmetic.
fn millis(duration: Duration) -> i64 {
    saturating_i64(duration.as_millis())
}

/// A duration stored as whole milliseconds (`lease_ttl_ms`), the inverse of
/// [`millis`].
fn from_millis(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0).unsigned_abs())
}

/// A count as PostgreSQL's `bigint`, capped at its largest value.
fn saturating_i64(count: impl TryInto<i64>) -> i64 {
    count.try_into().unwrap_or(i64::MAX)
}

/// `items` in the order of `key`: the order in which a batch statement
/// should take its rows' locks. A statement that updates jobs `FROM
/// unnest(...)` locks their rows in the order of its input arrays when
/// PostgreSQL probes the primary key for each element (its plan for a small
/// batch among many running jobs), and an insert waits at each idempotency
/// key another transaction wrote and has not committed, in the order it
/// inserts. So two batches holding the same jobs or keys in opposite orders
/// (a worker's outcomes, the rescuer's extensions, a heartbeat's
/// confirmations; two groups of submissions) would deadlock, and one of
/// them fail after `deadlock_timeout`. Updates order by job id, inserts by
/// idempotency key. This orders those plans only: a batch joined by hash or
/// merge locks in the order it reads `jobs`, and two batches planned
/// differently may still meet in opposite orders (then one fails and its
/// caller retries it).
fn in_lock_order<'a, T, K: Ord>(items: &'a [T], key: impl Fn(&'a T) -> K) -> Vec<&'a T> {
    let mut ordered: Vec<&T> = items.iter().collect();
    ordered.sort_by_key(|item| key(item));
    ordered
}

/// The rows of an `EXPLAIN`, one line each: what the tests of a
/// statement's index use read.
fn plan_text(lines: Vec<(String,)>) -> String {
    lines
        .into_iter()
        .map(|(line,)| line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` as PostgreSQL's `text` can hold it: NUL characters (which it
/// refuses) replaced by U+FFFD. A guest's error message may contain them.
fn storable_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}
