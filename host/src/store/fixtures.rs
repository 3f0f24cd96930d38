//! Bulk rows for `taskflow-bench`: many waiting or finished jobs made by
//! one statement, to measure what the tables of a long-lived installation
//! cost the listing and the pruner. Not on any job's path.

use std::time::Duration;

use super::{Store, StoreResult};
use crate::job::JobState;

/// Jobs to make in bulk with [`Store::insert_filler_jobs`].
#[derive(Debug, Clone, Copy)]
pub struct FillerJobs<'a> {
    /// The module they name (never run unless a worker claims them).
    pub module_hash: &'a str,
    /// Their queue.
    pub queue: &'a str,
    /// Their state; not `running`, which needs a lease.
    pub state: JobState,
    /// How many.
    pub count: u64,
    /// How long ago they were created and fell due, and finished if their
    /// state is final.
    pub age: Duration,
    /// Their priorities cycle through `0..priorities`.
    pub priorities: u16,
}

impl Store {
    /// Inserts `jobs` in one statement, with a `{}` input and one attempt
    /// allowed.
    pub async fn insert_filler_jobs(&self, jobs: &FillerJobs<'_>) -> StoreResult<()> {
        super::statement("insert_filler_jobs");
        sqlx::query!(
            "WITH inserted AS (
               INSERT INTO jobs (id, module_hash, queue, priority, state, input, max_attempts,
                               timeout_ms, fuel, memory_limit_bytes, run_at, created_at,
                               updated_at, finished_at)
             SELECT gen_random_uuid(), $1, $2, (i % $4)::smallint, $3::job_state, '{}', 1, 1000, 1000000,
                    1048576, t.at, t.at, t.at,
                    CASE WHEN $3::job_state IN ('succeeded', 'dead', 'cancelled') THEN t.at END
             FROM generate_series(1, $5::bigint) i,
                  (SELECT now() - $6 * interval '1 second' AS at) t
               RETURNING queue, state
             )
             INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
             SELECT queue, NULL, state, count(*) FROM inserted GROUP BY queue, state",
            jobs.module_hash,
            jobs.queue,
            jobs.state as JobState,
            i64::from(jobs.priorities.max(1)),
            i64::try_from(jobs.count).unwrap_or(i64::MAX),
            jobs.age.as_secs_f64()
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// `VACUUM (ANALYZE) jobs`: what autovacuum would do after a bulk
    /// insert, done now so it does not run during a measurement.
    pub async fn vacuum_jobs(&self) -> StoreResult<()> {
        super::statement("vacuum_jobs");
        sqlx::query!("VACUUM (ANALYZE) jobs")
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
