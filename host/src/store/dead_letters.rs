//! Dead jobs grouped by what killed them, and requeueing a whole group: the
//! console's dead-letter page (host/src/console/dead_letters.rs).

use chrono::{DateTime, Utc};

use super::{Store, StoreResult};

/// The dead jobs of one module that ended with one error kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterGroup {
    /// The module they ran.
    pub module_hash: String,
    /// The `kind` of their last error (`None` for a job killed without one).
    pub error_kind: Option<String>,
    /// How many of the jobs read are in the group.
    pub jobs: i64,
    /// When the newest of them died.
    pub newest: Option<DateTime<Utc>>,
    /// The message of the newest of them, as an example.
    pub example_message: Option<String>,
}

/// One requeue pass over a group: how many jobs of each queue it requeued.
pub type RequeuedByQueue = Vec<(String, i64)>;

impl Store {
    /// Groups the newest `scan_limit` dead jobs by module and error kind,
    /// largest group first. Bounded, so the page costs the same on a table
    /// of a billion dead jobs; the caller says when the bound was reached.
    pub async fn dead_letter_groups(&self, scan_limit: i64) -> StoreResult<Vec<DeadLetterGroup>> {
        super::statement("dead_letter_groups");
        Ok(sqlx::query_as!(
            DeadLetterGroup,
            r#"SELECT module_hash AS "module_hash!", last_error->>'kind' AS error_kind,
                      count(*) AS "jobs!", max(finished_at) AS newest,
                      (array_agg(last_error->>'message' ORDER BY id DESC))[1] AS example_message
               FROM (SELECT id, module_hash, last_error, finished_at FROM jobs
                     WHERE state = 'dead' ORDER BY id DESC LIMIT $1) newest_dead
               GROUP BY 1, 2
               ORDER BY 3 DESC, 1, 2"#,
            scan_limit
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Requeues up to `limit` dead jobs of `module_hash` whose last error
    /// is of `error_kind` and that died by `died_by`, with a fresh set of
    /// attempts, as [`Store::requeue_if_finished`] does one job. Returns
    /// how many it requeued per queue (to wake their workers); call again
    /// until it requeues none: a job that dies again after `died_by` is not
    /// taken twice, so that loop ends. Requeues none once the module is
    /// deleted (its row is share-locked, as by `requeue_if_finished`, so
    /// it waits for a module delete under way). Skips job rows another
    /// transaction holds, so it never waits behind a worker or a user.
    pub async fn requeue_dead_group(
        &self,
        module_hash: &str,
        error_kind: Option<&str>,
        died_by: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<RequeuedByQueue> {
        super::statement("requeue_dead_group");
        let rows = sqlx::query!(
            r#"WITH module AS (
                   SELECT hash FROM modules WHERE hash = $1 FOR KEY SHARE
               ),
               target AS (
                   SELECT id FROM jobs
                   WHERE state = 'dead' AND module_hash = $1
                     AND (last_error->>'kind') IS NOT DISTINCT FROM $2
                     AND finished_at <= $3
                     AND EXISTS (SELECT 1 FROM module)
                   LIMIT $4
                   FOR UPDATE SKIP LOCKED
               ),
               requeued AS (
                   UPDATE jobs j
                   SET state = 'available', attempt_base = j.attempt, run_at = now(),
                       finished_at = NULL, updated_at = now()
                   FROM target t
                   WHERE j.id = t.id AND j.state = 'dead'
                   RETURNING j.queue
               ),
               by_queue AS (
                   SELECT queue, count(*) AS jobs FROM requeued GROUP BY queue
               ),
               logged AS (
                   INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
                   SELECT queue, 'dead', 'available', jobs FROM by_queue
               )
               SELECT queue AS "queue!", jobs AS "jobs!" FROM by_queue"#,
            module_hash,
            error_kind,
            died_by,
            limit
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|row| (row.queue, row.jobs)).collect())
    }
}
