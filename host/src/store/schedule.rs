//! The scheduler's statements: making due jobs available, and how long
//! until the next falls due.

use std::time::Duration;

use super::{Store, StoreResult};

impl Store {
    /// Makes up to `limit` scheduled and retrying jobs whose `run_at` has
    /// come `available`, and returns the queues they are on (one entry per
    /// job) so their workers can be woken.
    ///
    /// Guard: `state IN ('scheduled', 'retrying') AND run_at <= now()`, rows
    /// locked `SKIP LOCKED` so concurrent schedulers split the work. Served
    /// by `jobs_due_idx`.
    pub async fn promote_due(&self, limit: usize) -> StoreResult<Vec<String>> {
        super::statement("promote_due");
        Ok(sqlx::query_scalar!(
            r#"WITH due AS (
                 SELECT id, state FROM jobs
                 WHERE state IN ('scheduled', 'retrying') AND run_at <= now()
                 ORDER BY run_at
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED
             ),
             promoted AS (
                 UPDATE jobs j SET state = 'available', updated_at = now()
                 FROM due WHERE j.id = due.id
                 RETURNING j.queue, due.state
             ),
             logged AS (
                 INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
                 SELECT queue, state, 'available', count(*) FROM promoted GROUP BY queue, state
             )
             SELECT queue AS "queue!" FROM promoted"#,
            limit as i64
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// How long until the next scheduled or retrying job falls due, if any
    /// is waiting. Zero when one is already due.
    pub async fn next_due_in(&self) -> StoreResult<Option<Duration>> {
        super::statement("next_due_in");
        let millis: Option<f64> = sqlx::query_scalar!(
            "SELECT GREATEST(0, EXTRACT(EPOCH FROM (min(run_at) - now())) * 1000)::float8
             FROM jobs WHERE state IN ('scheduled', 'retrying')",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(millis.map(|ms| Duration::from_millis(ms as u64)))
    }
}
