//! Where a job is pruned: finished jobs past their queue's retention are
//! deleted with their attempts ([`delete_attempts_of`]), freeing their
//! idempotency keys; so are the places cancelled attempts held under their
//! queue's limits, once lapsed. Used by the pruner (maintenance/pruner.rs).

use sqlx::Postgres;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use uuid::Uuid;

use super::pool::Transaction;
use super::{Store, StoreResult};
use crate::job::JobState;
use crate::queue::{KeepFor, Retention};

/// What one prune deleted, by the state the jobs were in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Succeeded jobs deleted.
    pub succeeded: u64,
    /// Dead jobs deleted.
    pub dead: u64,
    /// Cancelled jobs deleted.
    pub cancelled: u64,
}

impl Pruned {
    /// Jobs deleted in all.
    pub fn total(&self) -> u64 {
        self.succeeded + self.dead + self.cancelled
    }
}

/// The pruner's statement: `$1` the batch size, `$2`–`$4` the default
/// retention of succeeded, dead and cancelled jobs, in seconds. Checked at
/// run time, not by `query!`, because its plan is checked too
/// ([`Store::explain_prune_finished`]): a statement whose predicates do not
/// imply `jobs_retention_idx`'s `WHERE` cannot use it, and reads and sorts
/// every finished job of a queue on each pass.
const PRUNE_FINISHED: &str = r#"WITH RECURSIVE names AS (
         (SELECT queue FROM jobs
          WHERE state IN ('succeeded', 'dead', 'cancelled')
          ORDER BY queue LIMIT 1)
         UNION ALL
         SELECT (SELECT j.queue FROM jobs j
                 WHERE j.state IN ('succeeded', 'dead', 'cancelled')
                   AND j.queue > n.queue
                 ORDER BY j.queue LIMIT 1)
         FROM names n WHERE n.queue IS NOT NULL
     ),
     cutoffs AS (
         SELECT n.queue, s.state, now() - s.keep_s * interval '1 second' AS before
         FROM names n
         LEFT JOIN queues q ON q.name = n.queue
         CROSS JOIN LATERAL (VALUES
             ('succeeded'::job_state, COALESCE(q.retain_succeeded_s, $2)),
             ('dead'::job_state, COALESCE(q.retain_dead_s, $3)),
             ('cancelled'::job_state, COALESCE(q.retain_cancelled_s, $4))
         ) AS s(state, keep_s)
         WHERE n.queue IS NOT NULL AND s.keep_s > 0
     ),
     expired AS (
         SELECT e.id, c.state, c.before FROM cutoffs c CROSS JOIN LATERAL (
             SELECT j.id FROM jobs j
             WHERE j.queue = c.queue AND j.state = c.state
               AND j.state IN ('succeeded', 'dead', 'cancelled')
               AND j.finished_at < c.before
             ORDER BY j.finished_at
             LIMIT $1
         ) e
         LIMIT $1
     ),
     deleted AS (
         DELETE FROM jobs j USING expired e
         WHERE j.id = e.id AND j.state = e.state AND j.finished_at < e.before
         RETURNING j.id, j.queue, j.state
     ),
     logged AS (
         INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
         SELECT queue, state, NULL, count(*) FROM deleted GROUP BY queue, state
     )
     SELECT id, state FROM deleted"#;

impl Store {
    /// Deletes up to `limit` finished jobs that have been finished longer
    /// than their queue keeps jobs of their state (the defaults of
    /// queue/retention.rs where it does not say), oldest first within each
    /// queue and state.
    ///
    /// One statement, served by `jobs_retention_idx`: a loose index scan
    /// finds the queues that have finished jobs, then each queue's and
    /// state's expired entries are read from the oldest, so a pass reads
    /// only what it deletes (plus one entry per queue), however many jobs
    /// are kept. Guard: the job is still in the state, and finished as long
    /// ago, as when it was found expired; PostgreSQL checks that against the
    /// row's newest version, so a job retried meanwhile, even one that
    /// finished again at once, is kept. It locks only the rows it deletes,
    /// which no claim or submission touches, and then their attempts.
    pub async fn prune_finished(&self, limit: usize) -> StoreResult<Pruned> {
        super::statement("prune_finished");
        let mut tx = self.pool().begin().await?;
        let deleted: Vec<(Uuid, JobState)> = with_prune_arguments(PRUNE_FINISHED, limit)
            .fetch_all(tx.statements())
            .await?;
        let ids: Vec<Uuid> = deleted.iter().map(|(id, _)| *id).collect();
        delete_attempts_of(&mut tx, &ids).await?;
        tx.commit().await?;
        let mut pruned = Pruned::default();
        for (_, state) in deleted {
            match state {
                JobState::Succeeded => pruned.succeeded += 1,
                JobState::Dead => pruned.dead += 1,
                // The guard lets only the finished states it selected through.
                _ => pruned.cancelled += 1,
            }
        }
        Ok(pruned)
    }

    /// Deletes the places that attempts ended by a cancel held past their
    /// `held_until` ([`Store::cancel_if_unfinished`]): no count reads them
    /// any more, and the worker that would have deleted each on its report
    /// has died, or reported while the cancel committed. Returns how many.
    pub async fn forget_lapsed_places(&self) -> StoreResult<u64> {
        super::statement("forget_lapsed_places");
        let deleted = sqlx::query!("DELETE FROM stopping_attempts WHERE held_until <= now()")
            .execute(self.pool())
            .await?;
        Ok(deleted.rows_affected())
    }

    /// PostgreSQL's plan for [`Store::prune_finished`] with a batch of
    /// `limit`, one line per row of `EXPLAIN`: what the test of its index
    /// use reads.
    pub async fn explain_prune_finished(&self, limit: usize) -> StoreResult<String> {
        super::statement("explain_prune_finished");
        let explain = format!("EXPLAIN {PRUNE_FINISHED}");
        let lines = with_prune_arguments(&explain, limit)
            .fetch_all(self.pool())
            .await?;
        Ok(super::plan_text(lines))
    }
}

/// Deletes the attempt records of `jobs`, which the caller's transaction
/// has just deleted (there is no foreign key to cascade: migration
/// 20261211000001). It must be a statement of its own, after the jobs'
/// delete: that one's snapshot may predate an attempt recorded by the
/// transaction it waited for (a job requeued, run and finished again
/// meanwhile), and this one starts after that committed. No attempt can be
/// recorded after it either: recording one updates the job's row, which
/// the caller's delete holds until it commits.
pub(super) async fn delete_attempts_of(tx: &mut Transaction<'_>, jobs: &[Uuid]) -> StoreResult<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    super::statement("delete_attempts_of");
    sqlx::query!("DELETE FROM job_attempts WHERE job_id = ANY($1)", jobs)
        .execute(tx.statements())
        .await?;
    Ok(())
}

/// `sql` ([`PRUNE_FINISHED`], or a statement around it) with its
/// arguments: the batch size `limit` and the default retention of each
/// finished state, in seconds.
fn with_prune_arguments<O>(sql: &str, limit: usize) -> QueryAs<'_, Postgres, O, PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    let [succeeded, dead, cancelled] = Retention::default()
        .effective()
        .map(|(_, keep): (JobState, KeepFor)| keep.as_seconds());
    sqlx::query_as(sql)
        .bind(limit as i64)
        .bind(succeeded)
        .bind(dead)
        .bind(cancelled)
}
