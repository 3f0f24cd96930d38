//! Read-only measurements of what the store holds, for `taskflow-bench`,
//! the tests and operators' checks. None of them is on a job's path; some
//! scan whole tables, so none belongs in a request handler.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreResult};
use crate::job::{JobState, NewJob, TraceContext};
use crate::queue::JobCounts;

/// When jobs were created, started and finished, for latency figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobTimes {
    /// Submitted.
    pub created_at: DateTime<Utc>,
    /// Its latest attempt started.
    pub attempted_at: Option<DateTime<Utc>>,
    /// Reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
}

/// When one recorded attempt held its job running, by PostgreSQL's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptSpan {
    /// Its job's concurrency key.
    pub concurrency_key: Option<String>,
    /// Claimed.
    pub started_at: DateTime<Utc>,
    /// Ended (by its worker, a rescue or a cancel).
    pub finished_at: DateTime<Utc>,
}

impl Store {
    /// The span of every recorded attempt of `queue`'s jobs: what the
    /// tests of its limits count.
    pub async fn attempt_spans(&self, queue: &str) -> StoreResult<Vec<AttemptSpan>> {
        super::statement("attempt_spans");
        Ok(sqlx::query_as!(
            AttemptSpan,
            "SELECT j.concurrency_key, a.started_at, a.finished_at
             FROM job_attempts a JOIN jobs j ON j.id = a.job_id
             WHERE j.queue = $1 ORDER BY a.started_at",
            queue
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// How many jobs there are, in any state.
    pub async fn count_jobs(&self) -> StoreResult<i64> {
        super::statement("count_jobs");
        Ok(
            sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM jobs"#)
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// Jobs per queue and state, counted row by row: what the counters of
    /// store/queue_stats.rs must equal. A scan of `jobs`.
    pub async fn count_jobs_by_queue(&self) -> StoreResult<BTreeMap<String, JobCounts>> {
        super::statement("count_jobs_by_queue");
        let rows = sqlx::query!(
            r#"SELECT queue, state AS "state: JobState", count(*) AS "jobs!"
               FROM jobs GROUP BY queue, state"#
        )
        .fetch_all(self.pool())
        .await?;
        let mut counts: BTreeMap<String, JobCounts> = BTreeMap::new();
        for row in rows {
            let jobs = row.jobs.unsigned_abs();
            counts.entry(row.queue).or_default().set(row.state, jobs);
        }
        Ok(counts)
    }

    /// How many jobs are in `state`.
    pub async fn count_jobs_in(&self, state: JobState) -> StoreResult<i64> {
        super::statement("count_jobs_in");
        Ok(sqlx::query_scalar!(
            r#"SELECT count(*) AS "count!" FROM jobs WHERE state = $1"#,
            state as JobState
        )
        .fetch_one(self.pool())
        .await?)
    }

    /// Every job's id, in id (submission) order.
    pub async fn job_ids(&self) -> StoreResult<Vec<Uuid>> {
        super::statement("job_ids");
        Ok(sqlx::query_scalar!("SELECT id FROM jobs ORDER BY id")
            .fetch_all(self.pool())
            .await?)
    }

    /// How many attempts have been recorded, over all jobs.
    pub async fn count_attempts(&self) -> StoreResult<i64> {
        super::statement("count_attempts");
        Ok(
            sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM job_attempts"#)
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// How many attempts each job has recorded (jobs without any are absent).
    pub async fn attempts_per_job(&self) -> StoreResult<HashMap<Uuid, i64>> {
        super::statement("attempts_per_job");
        let rows = sqlx::query!(
            r#"SELECT job_id, count(*) AS "count!" FROM job_attempts GROUP BY job_id"#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.job_id, row.count))
            .collect())
    }

    /// Mean wall time of the recorded attempts, in milliseconds.
    pub async fn mean_attempt_ms(&self) -> StoreResult<Option<f64>> {
        super::statement("mean_attempt_ms");
        Ok(
            sqlx::query_scalar!("SELECT avg(duration_us)::float8 / 1000 FROM job_attempts")
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// How many modules are stored.
    pub async fn count_modules(&self) -> StoreResult<i64> {
        super::statement("count_modules");
        Ok(
            sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM modules"#)
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// How many rows the planner believes `modules` holds: -1 until the
    /// table was first analyzed (see `Store::insert_module`).
    pub async fn planner_module_estimate(&self) -> StoreResult<f32> {
        super::statement("planner_module_estimate");
        Ok(
            sqlx::query_scalar!("SELECT reltuples FROM pg_class WHERE oid = 'modules'::regclass")
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// The times of the jobs `ids` that exist.
    pub async fn job_times(&self, ids: &[Uuid]) -> StoreResult<Vec<JobTimes>> {
        super::statement("job_times");
        Ok(sqlx::query_as!(
            JobTimes,
            "SELECT created_at, attempted_at, finished_at FROM jobs WHERE id = ANY($1)",
            ids
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// How long workers took for the jobs finished on their first attempt,
    /// leaving out the first job to finish (a warm-up): from the earliest
    /// start to the latest finish among them, by PostgreSQL's clock.
    pub async fn busy_seconds_after_warm_up(&self) -> StoreResult<Option<f64>> {
        super::statement("busy_seconds_after_warm_up");
        Ok(sqlx::query_scalar!(
            "SELECT EXTRACT(EPOCH FROM max(finished_at) - min(attempted_at))::float8
             FROM jobs WHERE attempt = 1 AND finished_at > (SELECT min(finished_at) FROM jobs)"
        )
        .fetch_one(self.pool())
        .await?)
    }

    /// From `run_at` to the last finish of the jobs due at `run_at`.
    pub async fn drained_seconds_after(&self, run_at: DateTime<Utc>) -> StoreResult<Option<f64>> {
        super::statement("drained_seconds_after");
        Ok(sqlx::query_scalar!(
            "SELECT EXTRACT(EPOCH FROM max(finished_at) - $1)::float8 FROM jobs WHERE run_at = $1",
            run_at
        )
        .fetch_one(self.pool())
        .await?)
    }

    /// Transactions committed in this store's database so far, as
    /// PostgreSQL's statistics report them.
    pub async fn commits(&self) -> StoreResult<i64> {
        super::statement("commits");
        Ok(sqlx::query_scalar!(
            r#"SELECT xact_commit AS "commits!" FROM pg_stat_database WHERE datname = current_database()"#
        )
        .fetch_one(self.pool())
        .await?)
    }

    /// How far the server's write-ahead log has grown, in bytes: the
    /// difference between two readings is what everything on the server
    /// wrote between them (every database's, not only this store's).
    pub async fn wal_bytes_written(&self) -> StoreResult<i64> {
        super::statement("wal_bytes_written");
        Ok(sqlx::query_scalar!(
            r#"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS "bytes!""#
        )
        .fetch_one(self.pool())
        .await?)
    }

    /// The bytes `jobs` takes on disk: its heap, free space map and
    /// visibility map, without its indexes (`pg_table_size`). Divided by
    /// the jobs it holds, it shows what the table's fillfactor costs in
    /// space (migration 20261218000001).
    pub async fn jobs_table_bytes(&self) -> StoreResult<i64> {
        super::statement("jobs_table_bytes");
        Ok(
            sqlx::query_scalar!(r#"SELECT pg_table_size('jobs') AS "bytes!""#)
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// Statements PostgreSQL has run in this store's database so far, by
    /// `pg_stat_statements`; `None` where the server does not load it (it
    /// must be listed in `shared_preload_libraries`, which a stock server
    /// does not do) or the extension may not be created.
    pub async fn statements_run(&self) -> Option<i64> {
        super::statement("statements_run");
        // Checked at run time, not by `query!`: the view exists only where
        // the extension is loaded. Created on the first call only: `IF NOT
        // EXISTS` would log a notice on every later one.
        let installed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')",
        )
        .fetch_one(self.pool())
        .await
        .ok()?;
        if !installed {
            sqlx::query("CREATE EXTENSION pg_stat_statements")
                .execute(self.pool())
                .await
                .ok()?;
        }
        sqlx::query_scalar(
            "SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(self.pool())
        .await
        .ok()
    }

    /// Connections PostgreSQL has open to this store's database (every
    /// client's, this store's own included), and its `max_connections`:
    /// what a deployment's connection budget is measured against.
    pub async fn connections_open(&self) -> StoreResult<(i64, i64)> {
        super::statement("connections_open");
        let row = sqlx::query!(
            r#"SELECT (SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database()) AS "open!",
                      current_setting('max_connections')::bigint AS "max!""#
        )
        .fetch_one(self.pool())
        .await?;
        Ok((row.open, row.max))
    }

    /// The physical reference the benchmark compares rates with
    /// (bench/src/reference.rs): one-row INSERTs into `reference_rows`, a
    /// table made for it, each its own transaction and commit, as pgbench
    /// `-M prepared` runs them, from `connections` of this store's
    /// connections at once for `duration`. Returns how many committed.
    /// Checked at run time: the table is not part of TaskFlow's schema.
    pub async fn reference_inserts(
        &self,
        connections: usize,
        duration: std::time::Duration,
    ) -> StoreResult<u64> {
        super::statement("reference_inserts");
        sqlx::query("CREATE TABLE IF NOT EXISTS reference_rows (id bigserial, payload text)")
            .execute(self.pool())
            .await?;
        // Every connection is open before the clock starts: the pool opens
        // them lazily, and 31 connection set-ups inside the window would
        // lower the 32-connection reference.
        let opened =
            futures::future::try_join_all((0..connections).map(|_| self.pool().acquire())).await?;
        let deadline = tokio::time::Instant::now() + duration;
        let loops = opened.into_iter().map(|mut connection| async move {
            let mut committed = 0_u64;
            while tokio::time::Instant::now() < deadline {
                sqlx::query("INSERT INTO reference_rows (payload) VALUES ($1)")
                    .bind("x")
                    .execute(connection.statements())
                    .await?;
                committed += 1;
            }
            StoreResult::Ok(committed)
        });
        Ok(futures::future::try_join_all(loops)
            .await?
            .into_iter()
            .sum())
    }

    /// The job's own row as a second reference (bench/src/reference.rs):
    /// `job`'s row written into `jobs` by the plainest statement, a new id
    /// each time, each its own transaction and commit, from one connection
    /// for `duration`; what a submission costs PostgreSQL before TaskFlow's
    /// statement adds anything ([`Store::insert_jobs_independently`] also
    /// checks the module, handles idempotency keys and logs the transition
    /// for the queue counters). Returns how many committed. For a scratch
    /// database only: the rows name a module that may not exist, and a job
    /// with an idempotency key fails its second insert. A column a
    /// submission comes to write belongs here too: the test
    /// `submitter::the_job_row_reference_writes_the_row_a_submission_writes`
    /// compares the rows.
    pub async fn reference_job_rows(
        &self,
        job: &NewJob,
        duration: std::time::Duration,
    ) -> StoreResult<u64> {
        super::statement("reference_job_rows");
        let deadline = tokio::time::Instant::now() + duration;
        let mut connection = self.pool().acquire().await?;
        let mut committed = 0_u64;
        while tokio::time::Instant::now() < deadline {
            sqlx::query!(
                "INSERT INTO jobs (id, module_hash, queue, priority, state, input, max_attempts,
                                   timeout_ms, fuel, memory_limit_bytes, run_at, idempotency_key,
                                   request_fingerprint, concurrency_key, traceparent)
                 VALUES ($1, $2, $3, $4, 'available', $5, $6, $7, $8, $9, now(), $10, $11, $12,
                         $13)",
                Uuid::now_v7(),
                job.module_hash,
                job.queue,
                job.priority,
                job.input,
                job.max_attempts,
                job.timeout_ms,
                job.fuel,
                job.memory_limit_bytes,
                job.idempotency_key,
                job.request_fingerprint,
                job.concurrency_key,
                job.trace as Option<TraceContext>
            )
            .execute(connection.statements())
            .await?;
            committed += 1;
        }
        Ok(committed)
    }
}
