//! A user's actions on a job: cancel, retry (requeue) and delete.

use std::time::Duration;

use uuid::Uuid;

use super::pool::Transaction;
use super::prune::delete_attempts_of;
use super::records::{JobRecord, job_columns};
use super::{Store, StoreError, StoreResult};
use crate::job::JobState;

/// What a cancel did.
#[derive(Debug, Clone)]
pub struct CancelOutcome {
    /// The job after cancelling.
    pub job: JobRecord,
    /// Its state before; `Running` means a worker may still be executing it
    /// and should be told to stop.
    pub previous: JobState,
    /// The lease TTL the job's latest claim granted (`lease_ttl_ms`), if
    /// recorded: how long a revocation of that attempt must last.
    pub lease_ttl: Option<Duration>,
}

/// The row a guarded single-job update returns: the job, whether the guard
/// matched, and the state it was in before.
#[derive(sqlx::FromRow)]
struct GuardedUpdate {
    #[sqlx(flatten)]
    job: JobRecord,
    applied: bool,
    previous: Option<JobState>,
}

/// A cancel's row: the guarded update, and the TTL of the job's latest
/// claim.
#[derive(sqlx::FromRow)]
struct GuardedCancel {
    #[sqlx(flatten)]
    guarded: GuardedUpdate,
    lease_ttl_ms: Option<i64>,
}

/// A requeue's row: the guarded update, and whether the job's module still
/// exists.
#[derive(sqlx::FromRow)]
struct GuardedRequeue {
    #[sqlx(flatten)]
    guarded: GuardedUpdate,
    module_kept: bool,
}

impl Store {
    /// Cancels a job that has not finished.
    ///
    /// Guard: `state IN (scheduled, available, running, retrying)`. A running
    /// attempt is ended in the same statement (recorded as `cancelled`), so
    /// the worker's later write finds the job no longer running and is
    /// discarded; the caller should also revoke the attempt's lease so the
    /// worker stops early. `error_kind` is recorded on that attempt.
    ///
    /// The attempt keeps its place under the queue's limits
    /// (`stopping_attempts`, migration `20261221000001`) until its worker
    /// reports it ([`Store::finish_if_lease_matches`]) or, failing that,
    /// until its guest has surely stopped: one lease TTL after the cancel,
    /// the one its claim granted or `own_ttl` (the caller's) if longer, as
    /// [`Store::requeue_if_finished`] waits. The pruner deletes it after
    /// that ([`Store::forget_lapsed_places`]).
    pub async fn cancel_if_unfinished(
        &self,
        id: Uuid,
        error_kind: &str,
        own_ttl: Duration,
    ) -> StoreResult<CancelOutcome> {
        super::statement("cancel_if_unfinished");
        let row = sqlx::query_as::<_, GuardedCancel>(concat!(
            "WITH target AS (
                 SELECT id, state, lease_token, attempt, worker_id, attempted_at, lease_ttl_ms
                 FROM jobs WHERE id = $1 FOR UPDATE
             ),
             cancelled AS (
                 UPDATE jobs j
                 SET state = 'cancelled', finished_at = now(), updated_at = now(),
                     lease_expires_at = NULL
                 FROM target t
                 WHERE j.id = t.id AND t.state IN ('scheduled', 'available', 'running', 'retrying')
                 RETURNING j.*
             ),
             ended_attempt AS (
                 INSERT INTO job_attempts (job_id, lease_token, attempt, worker_id, started_at,
                                           outcome, error_kind, error_message)
                 SELECT t.id, t.lease_token, t.attempt, t.worker_id, t.attempted_at,
                        'cancelled', $2, 'cancelled by a user while running'
                 FROM target t JOIN cancelled c ON c.id = t.id
                 WHERE t.state = 'running'
             ),
             held AS (
                 INSERT INTO stopping_attempts (job_id, lease_token, queue, concurrency_key,
                                                held_until)
                 SELECT t.id, t.lease_token, c.queue, c.concurrency_key,
                        now() + GREATEST(t.lease_ttl_ms, $3) * interval '1 millisecond'
                 FROM target t JOIN cancelled c ON c.id = t.id
                 WHERE t.state = 'running'
             ),
             logged AS (
                 INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
                 SELECT c.queue, t.state, 'cancelled', 1 FROM target t JOIN cancelled c ON c.id = t.id
             )
             SELECT ",
            job_columns!("c."),
            ", true AS applied, t.state AS previous, t.lease_ttl_ms
             FROM target t JOIN cancelled c ON c.id = t.id
             UNION ALL
             SELECT ",
            job_columns!("j."),
            ", false AS applied, j.state AS previous, j.lease_ttl_ms
             FROM jobs j
             WHERE j.id = $1 AND NOT EXISTS (SELECT 1 FROM cancelled)"
        ))
        .bind(id)
        .bind(error_kind)
        .bind(super::millis(own_ttl))
        .fetch_optional(self.pool())
        .await?;
        let lease_ttl = row
            .as_ref()
            .and_then(|row| row.lease_ttl_ms)
            .map(super::from_millis);
        let row = applied(
            row.map(|row| row.guarded),
            id,
            "cancel",
            "scheduled, available, running or retrying",
        )?;
        Ok(CancelOutcome {
            previous: row.previous.unwrap_or(row.job.state),
            job: row.job,
            lease_ttl,
        })
    }

    /// Requeues a dead or cancelled job with a fresh set of attempts.
    ///
    /// Guard: `state IN (dead, cancelled)`, and its module still exists.
    /// The module's row is share-locked for the statement, so a module
    /// delete (`delete_module_if_unused`, which locks that row before it
    /// looks for unfinished jobs) either sees the requeued job or deletes
    /// the module first and this finds it gone ([`StoreError::ModuleDeleted`]).
    /// Earlier attempts are kept.
    ///
    /// A job whose latest attempt was ended by a cancel less than that
    /// attempt's lease TTL ago (as its worker was granted it, `lease_ttl_ms`)
    /// is requeued as `scheduled`, to run then: its guest runs until its
    /// worker's next heartbeat round reads the revocation, up to a third of
    /// that TTL (two thirds, if the revocation missed Redis and PostgreSQL
    /// takes the round it is given to say so), and the next attempt must
    /// not start before
    /// (docs/failure-semantics.md, "Cancel, then retry"). It waits at least
    /// `own_ttl` (the caller's lease TTL), which stands in for a TTL not
    /// recorded: the plain claim of a binary older than the column writes
    /// none, and so leaves an earlier claim's.
    pub async fn requeue_if_finished(&self, id: Uuid, own_ttl: Duration) -> StoreResult<JobRecord> {
        super::statement("requeue_if_finished");
        let row = sqlx::query_as::<_, GuardedRequeue>(concat!(
            "WITH target AS (
                 SELECT id, state, module_hash, lease_token, lease_ttl_ms
                 FROM jobs WHERE id = $1 FOR UPDATE
             ),
             module AS (
                 SELECT m.hash FROM modules m, target t WHERE m.hash = t.module_hash
                 FOR KEY SHARE OF m
             ),
             -- One row: now, or, if a cancel ended the job's latest attempt
             -- (the job's lease token is that attempt's), when its guest
             -- has surely stopped. A later cancel, of the job waiting for
             -- that moment, ends no attempt and so changes nothing.
             settled AS (
                 SELECT GREATEST(now(), max(a.finished_at)
                        + GREATEST(t.lease_ttl_ms, $2) * interval '1 millisecond') AS at
                 FROM target t
                 LEFT JOIN job_attempts a
                   ON a.job_id = t.id AND a.lease_token = t.lease_token
                  AND a.outcome = 'cancelled'
                 GROUP BY t.lease_ttl_ms
             ),
             requeued AS (
                 UPDATE jobs j
                 SET state = CASE WHEN s.at > now() THEN 'scheduled'::job_state
                                  ELSE 'available'::job_state END,
                     attempt_base = j.attempt, run_at = s.at,
                     finished_at = NULL, updated_at = now()
                 FROM target t, settled s
                 WHERE j.id = t.id AND t.state IN ('dead', 'cancelled')
                   AND EXISTS (SELECT 1 FROM module)
                 RETURNING j.*
             ),
             logged AS (
                 INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
                 SELECT r.queue, t.state, r.state, 1 FROM target t JOIN requeued r ON r.id = t.id
             )
             SELECT ",
            job_columns!(""),
            ", true AS applied, NULL::job_state AS previous, true AS module_kept
             FROM requeued
             UNION ALL
             SELECT ",
            job_columns!(""),
            ", false AS applied, NULL::job_state AS previous,
               EXISTS (SELECT 1 FROM module) AS module_kept
             FROM jobs WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM requeued)"
        ))
        .bind(id)
        .bind(super::millis(own_ttl))
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(row)
                if !row.guarded.applied
                    && matches!(row.guarded.job.state, JobState::Dead | JobState::Cancelled)
                    && !row.module_kept =>
            {
                Err(StoreError::ModuleDeleted {
                    id,
                    module_hash: row.guarded.job.module_hash,
                })
            }
            row => Ok(applied(row.map(|row| row.guarded), id, "retry", "dead or cancelled")?.job),
        }
    }

    /// Deletes a finished job and its attempts, returning it as it was.
    ///
    /// Guard: `state IN (succeeded, dead, cancelled)`: no worker writes to
    /// a finished job (its outcome write requires `running`), so nothing
    /// can race the delete but a retry or another delete (the pruner's),
    /// which the row lock orders. Its idempotency key is free again once it
    /// is gone.
    ///
    /// The statement reports the job as its snapshot saw it, from before
    /// any write it waited for: a finished job whose delete did not apply
    /// was changed or deleted by that write, so the statement runs again,
    /// with a snapshot that shows what it did (the job gone, or retried).
    /// Its attempts are deleted by the next statement of the same
    /// transaction ([`delete_attempts_of`]).
    pub async fn delete_if_finished(&self, id: Uuid) -> StoreResult<JobRecord> {
        let mut tx = self.pool().begin().await?;
        let mut row = try_delete_if_finished(&mut tx, id).await?;
        if row
            .as_ref()
            .is_some_and(|row| !row.applied && row.job.state.is_final())
        {
            row = try_delete_if_finished(&mut tx, id).await?;
        }
        let job = applied(row, id, "delete", "succeeded, dead or cancelled")?.job;
        delete_attempts_of(&mut tx, &[id]).await?;
        tx.commit().await?;
        Ok(job)
    }
}

/// One run of [`Store::delete_if_finished`]'s statement.
async fn try_delete_if_finished(
    tx: &mut Transaction<'_>,
    id: Uuid,
) -> StoreResult<Option<GuardedUpdate>> {
    super::statement("delete_if_finished");
    // The outer SELECT reads the statement's snapshot, from before the
    // delete: the job as it was, and whether the guard matched.
    let row = sqlx::query_as::<_, GuardedUpdate>(concat!(
        "WITH deleted AS (
             DELETE FROM jobs
             WHERE id = $1 AND state IN ('succeeded', 'dead', 'cancelled')
             RETURNING id, queue, state
         ),
         logged AS (
             INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
             SELECT queue, state, NULL, 1 FROM deleted
         )
         SELECT ",
        job_columns!(""),
        ", EXISTS (SELECT 1 FROM deleted) AS applied, NULL::job_state AS previous
         FROM jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(tx.statements())
    .await?;
    Ok(row)
}

/// The row of a guarded update of job `id`, or why it did not apply: no such
/// job, or it is in a state `action` does not apply to (only `allowed`).
fn applied(
    row: Option<GuardedUpdate>,
    id: Uuid,
    action: &'static str,
    allowed: &'static str,
) -> StoreResult<GuardedUpdate> {
    let row = row.ok_or(StoreError::JobNotFound(id))?;
    if !row.applied {
        return Err(StoreError::InvalidTransition {
            id,
            state: row.job.state,
            action,
            allowed,
        });
    }
    Ok(row)
}
