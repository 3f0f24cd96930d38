//! Where a job is claimed: the due jobs of one queue leased to a worker, in
//! priority order, each with a fresh fencing token (see execution.rs on
//! fencing).
//!
//! Two paths. A queue with no limits (most of them, and every queue never
//! configured) is claimed by one statement that never waits for another
//! worker ([`Store::claim`]'s plain path). A queue that is paused or has
//! limits (`queues.limited`, queue/limits.rs) is claimed by one call of a
//! PL/pgSQL function that first locks the queue's row, then works out what
//! its limits leave from statements whose snapshots are taken after the
//! lock ([`claim_limited`]), so the lock is held for the claim and its
//! commit only: limited claims of one queue run one at a time, so two
//! workers can never both see the last free slot. A rate is counted in
//! buckets ([`RATE_BUCKETS`]), and `max_running` against an upper bound of
//! the running jobs kept in the queue's row (`running_bound`: the last
//! count plus every job claimed since; every write of the queue's settings
//! clears it, and the next limited claim counts), so a claim's cost grows
//! neither with the rate nor with the jobs running.
//!
//! The plain statement skips a limited queue, so a worker that still
//! thinks a queue unlimited cannot overrun a limit set since; it finds out
//! and takes the limited path. Its snapshot predates anything it waits
//! for, so it asks the function `plain_claim_may_take`
//! (migrations/20261212000001_plain_claim_gate.sql), which takes the
//! queue's settings lock shared and reads `queues` only then, with a
//! snapshot of its own. Every write of the queue's settings takes that lock
//! exclusively (`lock_queue_settings` in queues.rs): a limit or a pause
//! waits for the plain claims past the gate to commit, and the plain claims
//! behind it see it. So the first limited claim after a limit counts every
//! job a plain claim started.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::execution::LeaseRef;
use super::{Store, StoreResult, millis};
use crate::job::{AttemptLimits, TraceContext};

/// A job a worker has claimed, with everything needed to run it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job.
    pub id: Uuid,
    /// Module to run.
    pub module_hash: String,
    /// Queue it came from.
    pub queue: String,
    /// Input bytes.
    pub input: Vec<u8>,
    /// This attempt's number over the job's life, from 1.
    pub attempt: i32,
    /// `attempt` at the last user retry; `attempt - attempt_base` attempts
    /// of `max_attempts` are used, this one included.
    pub attempt_base: i32,
    /// Attempts allowed between user retries.
    pub max_attempts: i32,
    /// What the attempt may use.
    pub limits: AttemptLimits,
    /// The fencing token of this attempt.
    pub lease_token: i64,
    /// When the attempt started, by PostgreSQL's clock.
    pub attempted_at: DateTime<Utc>,
    /// When the job fell due (its submission, unless it was scheduled or is
    /// a retry).
    pub run_at: DateTime<Utc>,
}

impl ClaimedJob {
    /// This attempt's lease.
    pub fn lease(&self) -> LeaseRef {
        LeaseRef {
            job_id: self.id,
            lease_token: self.lease_token,
        }
    }
}

/// A row of either claim statement. Every column is optional because the
/// limited claim's function declares none `NOT NULL`, and it answers an
/// unlimited queue with one row of `NULL`s.
struct ClaimRow {
    id: Option<Uuid>,
    module_hash: Option<String>,
    queue: Option<String>,
    input: Option<Vec<u8>>,
    attempt: Option<i32>,
    attempt_base: Option<i32>,
    max_attempts: Option<i32>,
    timeout_ms: Option<i32>,
    fuel: Option<i64>,
    memory_limit_bytes: Option<i64>,
    lease_token: Option<i64>,
    attempted_at: Option<DateTime<Utc>>,
    run_at: Option<DateTime<Utc>>,
}

impl ClaimRow {
    /// The claimed job, or `None` for the row of `NULL`s.
    fn job(self) -> Option<ClaimedJob> {
        Some(ClaimedJob {
            id: self.id?,
            module_hash: self.module_hash?,
            queue: self.queue?,
            input: self.input?,
            attempt: self.attempt?,
            attempt_base: self.attempt_base?,
            max_attempts: self.max_attempts?,
            limits: AttemptLimits::from_columns(
                self.timeout_ms?,
                self.fuel?,
                self.memory_limit_bytes?,
            ),
            lease_token: self.lease_token?,
            attempted_at: self.attempted_at?,
            run_at: self.run_at?,
        })
    }
}

/// Which path a claim of a queue takes. A worker keeps the one its last
/// claim of the queue reported ([`Claimed::next_path`]), so a limited queue
/// does not cost a plain attempt first each time; a wrong guess costs a
/// round trip, never a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClaimPath {
    /// One statement, no lock (the queue is unlimited, as far as known).
    #[default]
    Plain,
    /// Under the queue's row lock, counting its limits.
    Limited,
}

/// What a claim got.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The claimed jobs, leased to the worker.
    pub jobs: Vec<ClaimedJob>,
    /// The path to take next time.
    pub next_path: ClaimPath,
}

/// How many buckets a rate period is counted in. A start at time `t` counts
/// in bucket `floor(t / (period / RATE_BUCKETS))`; a claim at `t` counts
/// every start in the buckets from the one holding `t - period` to its own,
/// which holds every start of the window `(t - period, t]` and perhaps a
/// few older ones. So it never admits more than the rate, and admits at
/// least `RATE_BUCKETS / (RATE_BUCKETS + 1)` of it over a full window.
const RATE_BUCKETS: i32 = 20;

/// How far past its free slots a per-key claim looks for jobs of keys
/// still under their limit: a batch may come back short when one key
/// crowds this window, and the next claim (with that key now at its limit,
/// and so skipped) takes the rest.
const PER_KEY_LOOKAHEAD: i32 = 16;

impl Store {
    /// Claims up to `limit` due jobs of `queue` for `worker_id`, in priority
    /// order, and leases each for `lease_ttl`, taking `path` first (see the
    /// [module docs](self)).
    ///
    /// Guard: `state = 'available'`, rows locked with `FOR UPDATE SKIP
    /// LOCKED` so concurrent workers never claim the same job. Each claimed
    /// job gets a fresh fencing token. The plain path is one statement served
    /// by `jobs_claim_idx` (no table scan however many jobs wait); it claims
    /// nothing of a paused or limited queue, and shares the queue's settings
    /// lock until it commits. The limited path claims nothing
    /// of a paused queue and no more than its limits leave.
    pub async fn claim(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
        path: ClaimPath,
    ) -> StoreResult<Claimed> {
        if path == ClaimPath::Plain {
            let jobs = self
                .claim_unlimited(queue, worker_id, limit, lease_ttl)
                .await?;
            if jobs.len() == limit || !self.queue_is_limited(queue).await? {
                return Ok(Claimed {
                    jobs,
                    next_path: ClaimPath::Plain,
                });
            }
            if !jobs.is_empty() {
                // Claimed just before a limit was set, which applies to the
                // claims after it.
                return Ok(Claimed {
                    jobs,
                    next_path: ClaimPath::Limited,
                });
            }
        }
        self.claim_limited(queue, worker_id, limit, lease_ttl).await
    }

    /// The plain path: one statement, skipping a limited queue. The gate is
    /// an uncorrelated subquery, so PostgreSQL asks it once, before the
    /// scan (`One-Time Filter`), and claims nothing when it says no.
    async fn claim_unlimited(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
    ) -> StoreResult<Vec<ClaimedJob>> {
        super::statement("claim_unlimited");
        let rows = sqlx::query_as!(
            ClaimRow,
            r#"WITH due AS (
                 SELECT id FROM jobs
                 WHERE state = 'available' AND queue = $1
                   AND (SELECT plain_claim_may_take($1))
                 ORDER BY priority DESC, run_at, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ),
             claimed AS (
                 UPDATE jobs j
                 SET state = 'running', attempt = j.attempt + 1,
                     lease_token = nextval('lease_tokens'), worker_id = $3,
                     lease_expires_at = now() + $4 * interval '1 millisecond',
                     attempted_at = now(), updated_at = now()
                 FROM due WHERE j.id = due.id
                 RETURNING j.id, j.module_hash, j.queue, j.input, j.attempt, j.attempt_base,
                           j.max_attempts, j.timeout_ms, j.fuel, j.memory_limit_bytes,
                           j.lease_token, j.attempted_at, j.run_at
             ),
             logged AS (
                 INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
                 SELECT $1, 'available', 'running', count(*) FROM claimed HAVING count(*) > 0
             )
             SELECT id AS "id?", module_hash AS "module_hash?", queue AS "queue?",
                    input AS "input?", attempt AS "attempt?", attempt_base AS "attempt_base?",
                    max_attempts AS "max_attempts?", timeout_ms AS "timeout_ms?",
                    fuel AS "fuel?", memory_limit_bytes AS "memory_limit_bytes?",
                    lease_token AS "lease_token?", attempted_at AS "attempted_at?",
                    run_at AS "run_at?"
             FROM claimed"#,
            queue,
            limit as i64,
            worker_id,
            millis(lease_ttl) as f64
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().filter_map(ClaimRow::job).collect())
    }

    /// Whether `queue` is paused or limited, read without a lock: asked only
    /// when a plain claim came back short, to tell an empty queue from a
    /// limited one.
    async fn queue_is_limited(&self, queue: &str) -> StoreResult<bool> {
        super::statement("queue_is_limited");
        Ok(
            sqlx::query_scalar!("SELECT limited FROM queues WHERE name = $1", queue)
                .fetch_optional(self.pool())
                .await?
                .unwrap_or(false),
        )
    }

    /// The limited path: one call of `claim_limited_jobs` (its latest
    /// version in migrations/20261212000001_plain_claim_gate.sql),
    /// which locks the queue's row, then, with snapshots taken after the
    /// lock, claims what its limits leave, in one round trip and one
    /// transaction; the lock serializes only the limited claims of this
    /// queue.
    async fn claim_limited(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
    ) -> StoreResult<Claimed> {
        super::statement("claim_limited");
        let rows = sqlx::query_as!(
            ClaimRow,
            "SELECT id, module_hash, queue, input, attempt, attempt_base, max_attempts,
                    timeout_ms, fuel, memory_limit_bytes, lease_token, attempted_at, run_at
             FROM claim_limited_jobs($1, $2, $3, $4, $5, $6)",
            queue,
            worker_id,
            limit as i64,
            millis(lease_ttl) as f64,
            PER_KEY_LOOKAHEAD,
            RATE_BUCKETS
        )
        .fetch_all(self.pool())
        .await?;
        // The function answers a queue that is no longer limited with one row
        // of `NULL`s (its `unlimited` column set), and a claimed job's row
        // always has an id.
        if rows.first().is_some_and(|row| row.id.is_none()) {
            // The limits were lifted since this worker last looked.
            let jobs = self
                .claim_unlimited(queue, worker_id, limit, lease_ttl)
                .await?;
            return Ok(Claimed {
                jobs,
                next_path: ClaimPath::Plain,
            });
        }
        let jobs = rows.into_iter().filter_map(ClaimRow::job).collect();
        Ok(Claimed {
            jobs,
            next_path: ClaimPath::Limited,
        })
    }

    /// The trace contexts of `jobs` that have one, by job. Read apart from
    /// the claim, and only by a worker that exports traces
    /// (telemetry/traces.rs), so that a worker that does not pays nothing
    /// for them and the claim statements stay as they are.
    pub async fn trace_contexts(&self, jobs: &[Uuid]) -> StoreResult<HashMap<Uuid, TraceContext>> {
        super::statement("trace_contexts");
        let rows = sqlx::query!(
            r#"SELECT id, traceparent AS "traceparent!: TraceContext" FROM jobs
             WHERE id = ANY($1) AND traceparent IS NOT NULL"#,
            jobs
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.id, row.traceparent))
            .collect())
    }
}
