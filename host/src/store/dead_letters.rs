//! Dead jobs grouped by what killed them, and requeueing a whole group: the
//! console's dead-letter page (host/src/console/dead_letters.rs).

use chrono::{DateTime, Utc};
use uuid::Uuid;

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

/// One requeue pass over a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequeuePass {
    /// How many jobs of each queue it requeued (to wake their workers).
    pub requeued: Vec<(String, i64)>,
    /// The newest job of the group it took, where the next pass starts;
    /// `None` once no job of the group is left past where it started.
    pub last_taken: Option<Uuid>,
}

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
    /// attempts, as [`Store::requeue_if_finished`] does one job: the oldest
    /// such jobs after job `after` (from the oldest when `None`). Call
    /// again from the pass's [`RequeuePass::last_taken`] until it is
    /// `None`: each pass starts where the last ended, so no pass reads
    /// again the dead jobs the passes before went past, where a search
    /// from the oldest every time read the older dead jobs of other groups
    /// once per pass. (Whether a pass stops at `limit` jobs is the
    /// planner's choice: on a small table it sorts every dead job past the
    /// cursor instead of walking an index in order.) A job
    /// requeued here that dies again is not taken twice: it lies behind
    /// the cursor, and died after `died_by`. Nor is a job whose death
    /// commits while the passes are already past it; it stays dead, like
    /// the job rows another transaction holds, which a pass skips so that
    /// it never waits behind a worker or a user. Requeues none once the
    /// module is deleted (its row is share-locked, as by
    /// `requeue_if_finished`, so it waits for a module delete under way).
    pub async fn requeue_dead_group(
        &self,
        module_hash: &str,
        error_kind: Option<&str>,
        died_by: DateTime<Utc>,
        after: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<RequeuePass> {
        super::statement("requeue_dead_group");
        let pass = sqlx::query!(
            r#"WITH module AS (
                   SELECT hash FROM modules WHERE hash = $1 FOR KEY SHARE
               ),
               target AS (
                   SELECT id FROM jobs
                   WHERE state = 'dead' AND id > $4 AND module_hash = $1
                     AND (last_error->>'kind') IS NOT DISTINCT FROM $2
                     AND finished_at <= $3
                     AND EXISTS (SELECT 1 FROM module)
                   ORDER BY id
                   LIMIT $5
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
               SELECT (SELECT id FROM target ORDER BY id DESC LIMIT 1) AS last_taken,
                      (SELECT array_agg(queue ORDER BY queue) FROM by_queue) AS queues,
                      (SELECT array_agg(jobs ORDER BY queue) FROM by_queue) AS jobs"#,
            module_hash,
            error_kind,
            died_by,
            // Nil sorts before every id; `$4 IS NULL OR id > $4` would lose
            // the index condition that lets a pass start at the cursor.
            after.unwrap_or(Uuid::nil()),
            limit
        )
        .fetch_one(self.pool())
        .await?;
        let requeued = pass
            .queues
            .unwrap_or_default()
            .into_iter()
            .zip(pass.jobs.unwrap_or_default())
            .collect();
        Ok(RequeuePass {
            requeued,
            last_taken: pass.last_taken,
        })
    }
}
