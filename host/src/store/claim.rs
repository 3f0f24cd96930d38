//! Where a job is claimed: the due jobs of one queue leased to a worker, in
//! priority order, each with a fresh fencing token (see execution.rs on
//! fencing).
//!
//! Two paths. A queue with no limits (most of them, and every queue never
//! configured) is claimed by one statement that never waits for another
//! worker ([`Store::claim`]'s plain path). A queue that is paused or has
//! limits (`queues.limited`, queue/limits.rs) is claimed in a transaction
//! that first locks the queue's row, then counts what its limits count with
//! a snapshot taken after the lock ([`claim_limited`]): limited claims of
//! one queue run one at a time, so two workers can never both see the last
//! free slot. A rate is counted in buckets ([`RATE_BUCKETS`]), so a
//! claim's cost does not grow with the rate. The plain statement skips a
//! limited queue, so a worker that
//! still thinks a queue unlimited cannot overrun a limit set since; it finds
//! out and takes the limited path.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::execution::LeaseRef;
use super::{Store, StoreResult, millis};

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
    /// Wall-clock limit.
    pub timeout_ms: i32,
    /// CPU budget.
    pub fuel: i64,
    /// Linear-memory limit.
    pub memory_limit_bytes: i64,
    /// The fencing token of this attempt.
    pub lease_token: i64,
    /// When the attempt started, by PostgreSQL's clock.
    pub attempted_at: DateTime<Utc>,
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

/// A limited queue's row, read under its lock.
struct LockedQueue {
    /// `queues.limited`: paused or any limit set (the one definition of it
    /// is the generated column).
    limited: bool,
    paused: bool,
    max_running: Option<i32>,
    max_running_per_key: Option<i32>,
    rate_limit: Option<i32>,
    rate_period_ms: Option<i64>,
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
    /// nothing of a paused or limited queue. The limited path claims nothing
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

    /// The plain path: one statement, skipping a limited queue.
    async fn claim_unlimited(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
    ) -> StoreResult<Vec<ClaimedJob>> {
        super::statement("claim_unlimited");
        Ok(sqlx::query_as!(
            ClaimedJob,
            r#"WITH due AS (
                 SELECT id FROM jobs
                 WHERE state = 'available' AND queue = $1
                   AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = $1 AND q.limited)
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
                           j.lease_token, j.attempted_at
             ),
             logged AS (
                 INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
                 SELECT $1, 'available', 'running', count(*) FROM claimed HAVING count(*) > 0
             )
             SELECT id AS "id!", module_hash AS "module_hash!", queue AS "queue!",
                    input AS "input!", attempt AS "attempt!", attempt_base AS "attempt_base!",
                    max_attempts AS "max_attempts!", timeout_ms AS "timeout_ms!",
                    fuel AS "fuel!", memory_limit_bytes AS "memory_limit_bytes!",
                    lease_token AS "lease_token!", attempted_at AS "attempted_at!"
             FROM claimed"#,
            queue,
            limit as i64,
            worker_id,
            millis(lease_ttl) as f64
        )
        .fetch_all(self.pool())
        .await?)
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

    /// The limited path: lock the queue's row, then claim what its limits
    /// leave, in one transaction. Four round trips (begin, lock, claim,
    /// commit); the lock serializes only the limited claims of this queue.
    async fn claim_limited(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
    ) -> StoreResult<Claimed> {
        super::statement("claim_limited");
        let mut tx = self.pool().begin().await?;
        let locked = sqlx::query_as!(
            LockedQueue,
            "SELECT limited, paused, max_running, max_running_per_key, rate_limit, rate_period_ms
             FROM queues WHERE name = $1 FOR UPDATE",
            queue
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(locked) = locked.filter(|q| q.limited) else {
            // The limits were lifted since this worker last looked.
            tx.commit().await?;
            let jobs = self
                .claim_unlimited(queue, worker_id, limit, lease_ttl)
                .await?;
            return Ok(Claimed {
                jobs,
                next_path: ClaimPath::Plain,
            });
        };
        if locked.paused {
            tx.commit().await?;
            return Ok(Claimed {
                jobs: Vec::new(),
                next_path: ClaimPath::Limited,
            });
        }
        // A new statement, so a new snapshot: it sees every limited claim of
        // this queue committed before the lock was granted.
        let jobs = sqlx::query_as!(
            ClaimedJob,
            r#"WITH now_bucket AS (
                 SELECT floor(extract(epoch FROM statement_timestamp()) * 1000
                              / ($8::bigint::float8 / $10::int))::bigint AS b
             ),
             in_window AS (
                 SELECT u.b, u.c FROM queues q, unnest(q.rate_buckets, q.rate_counts) AS u(b, c)
                 WHERE q.name = $1 AND $7::int IS NOT NULL
                   AND u.b >= (SELECT b FROM now_bucket) - $10
             ),
             running AS (
                 SELECT concurrency_key AS key, count(*) AS n FROM jobs
                 WHERE state = 'running' AND queue = $1
                   AND ($5::int IS NOT NULL OR $6::int IS NOT NULL)
                 GROUP BY concurrency_key
             ),
             budget AS (
                 SELECT GREATEST(0, LEAST(
                     $3::bigint,
                     $5::int - (SELECT COALESCE(sum(n), 0)::bigint FROM running),
                     $7::int - (SELECT COALESCE(sum(c), 0)::bigint FROM in_window))) AS n
             ),
             candidates AS (
                 SELECT j.id, j.priority, j.run_at, j.concurrency_key FROM jobs j
                 WHERE j.state = 'available' AND j.queue = $1
                   AND ($6::int IS NULL OR j.concurrency_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM running r
                        WHERE r.key = j.concurrency_key AND r.n >= $6::int))
                 ORDER BY j.priority DESC, j.run_at, j.id
                 LIMIT (SELECT n FROM budget) * CASE WHEN $6::int IS NULL THEN 1 ELSE $9 END
                 FOR UPDATE SKIP LOCKED
             ),
             chosen AS (
                 SELECT c.id FROM (
                     SELECT c.*, row_number() OVER (
                         PARTITION BY c.concurrency_key
                         ORDER BY c.priority DESC, c.run_at, c.id) AS key_rank
                     FROM candidates c
                 ) c
                 LEFT JOIN running r ON r.key = c.concurrency_key
                 WHERE $6::int IS NULL OR c.concurrency_key IS NULL
                    OR c.key_rank + COALESCE(r.n, 0) <= $6::int
                 ORDER BY c.priority DESC, c.run_at, c.id
                 LIMIT (SELECT n FROM budget)
             ),
             claimed AS (
                 UPDATE jobs j
                 SET state = 'running', attempt = j.attempt + 1,
                     lease_token = nextval('lease_tokens'), worker_id = $2,
                     lease_expires_at = statement_timestamp() + $4 * interval '1 millisecond',
                     attempted_at = statement_timestamp(), updated_at = statement_timestamp()
                 FROM chosen WHERE j.id = chosen.id
                 RETURNING j.id, j.module_hash, j.queue, j.input, j.attempt, j.attempt_base,
                           j.max_attempts, j.timeout_ms, j.fuel, j.memory_limit_bytes,
                           j.lease_token, j.attempted_at
             ),
             logged AS (
                 INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
                 SELECT $1, 'available', 'running', count(*) FROM claimed HAVING count(*) > 0
             ),
             counted AS (
                 SELECT b, sum(c)::int AS c FROM (
                     SELECT b, c FROM in_window
                     UNION ALL
                     SELECT (SELECT b FROM now_bucket), count(*)::int FROM claimed
                 ) AS starts GROUP BY b
             ),
             recorded AS (
                 UPDATE queues
                 SET rate_buckets = ARRAY(SELECT b FROM counted ORDER BY b),
                     rate_counts = ARRAY(SELECT c FROM counted ORDER BY b)
                 WHERE name = $1 AND $7::int IS NOT NULL
             )
             SELECT id AS "id!", module_hash AS "module_hash!", queue AS "queue!",
                    input AS "input!", attempt AS "attempt!", attempt_base AS "attempt_base!",
                    max_attempts AS "max_attempts!", timeout_ms AS "timeout_ms!",
                    fuel AS "fuel!", memory_limit_bytes AS "memory_limit_bytes!",
                    lease_token AS "lease_token!", attempted_at AS "attempted_at!"
             FROM claimed"#,
            queue,
            worker_id,
            limit as i64,
            millis(lease_ttl) as f64,
            locked.max_running,
            locked.max_running_per_key,
            locked.rate_limit,
            locked.rate_period_ms,
            PER_KEY_LOOKAHEAD,
            RATE_BUCKETS
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Claimed {
            jobs,
            next_path: ClaimPath::Limited,
        })
    }
}
