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
            // The example is looked up once per group, by id: gathering the
            // messages (8 KiB each, at most) to keep one copied and sorted
            // megabytes per page view.
            r#"WITH newest_dead AS (
                   SELECT id, module_hash, last_error->>'kind' AS error_kind, finished_at
                   FROM jobs WHERE state = 'dead' ORDER BY id DESC LIMIT $1
               ),
               groups AS (
                   SELECT module_hash, error_kind, count(*) AS jobs, max(finished_at) AS newest,
                          (array_agg(id ORDER BY id DESC))[1] AS example_id
                   FROM newest_dead GROUP BY 1, 2
               )
               SELECT g.module_hash AS "module_hash!", g.error_kind, g.jobs AS "jobs!",
                      g.newest, j.last_error->>'message' AS example_message
               FROM groups g JOIN jobs j ON j.id = g.example_id
               ORDER BY g.jobs DESC, g.module_hash, g.error_kind"#,
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
