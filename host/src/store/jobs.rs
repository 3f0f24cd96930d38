//! Submission, reads and user actions on jobs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use uuid::Uuid;

use super::{Store, StoreError, StoreResult};
use crate::job::{AttemptOutcome, JobState, NewJob};

/// Columns of [`JobRecord`], shared by every statement that returns one.
macro_rules! job_columns {
    ($prefix:literal) => {
        concat!(
            $prefix,
            "id, ",
            $prefix,
            "module_hash, ",
            $prefix,
            "queue, ",
            $prefix,
            "priority, ",
            $prefix,
            "state, ",
            $prefix,
            "attempt, ",
            $prefix,
            "attempt_base, ",
            $prefix,
            "max_attempts, ",
            $prefix,
            "timeout_ms, ",
            $prefix,
            "fuel, ",
            $prefix,
            "memory_limit_bytes, ",
            $prefix,
            "run_at, ",
            $prefix,
            "lease_token, ",
            $prefix,
            "worker_id, ",
            $prefix,
            "idempotency_key, ",
            $prefix,
            "last_error, ",
            $prefix,
            "created_at, ",
            $prefix,
            "updated_at, ",
            $prefix,
            "attempted_at, ",
            $prefix,
            "finished_at"
        )
    };
}

/// A job's metadata: everything but its input and output.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRecord {
    /// The job's id.
    pub id: Uuid,
    /// The module it runs.
    pub module_hash: String,
    /// Its queue.
    pub queue: String,
    /// Higher runs first.
    pub priority: i16,
    /// Where it is in its lifecycle.
    pub state: JobState,
    /// Attempts started over the job's life (numbers attempt records).
    pub attempt: i32,
    /// `attempt` at the last user retry.
    pub attempt_base: i32,
    /// Attempts allowed between user retries.
    pub max_attempts: i32,
    /// Wall-clock limit of one attempt.
    pub timeout_ms: i32,
    /// CPU budget of one attempt.
    pub fuel: i64,
    /// Memory limit of one attempt.
    pub memory_limit_bytes: i64,
    /// When it is (or was) due.
    pub run_at: DateTime<Utc>,
    /// Fencing token of the latest claim.
    pub lease_token: Option<i64>,
    /// Worker of the latest claim.
    pub worker_id: Option<String>,
    /// The submission's idempotency key.
    pub idempotency_key: Option<String>,
    /// `{"kind", "message"}` of the latest failed attempt.
    pub last_error: Option<Json<serde_json::Value>>,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub attempted_at: Option<DateTime<Utc>>,
    /// When it reached `succeeded`, `dead` or `cancelled`.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job with its payloads and the resource use of its latest attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobDetail {
    /// Metadata.
    #[sqlx(flatten)]
    pub job: JobRecord,
    /// Input bytes.
    pub input: Vec<u8>,
    /// Output bytes, once succeeded.
    pub output: Option<Vec<u8>>,
    /// Fuel the latest finished attempt consumed.
    pub last_fuel_consumed: Option<i64>,
    /// Wall time of the latest finished attempt, in microseconds.
    pub last_duration_us: Option<i64>,
}

/// What PostgreSQL decided about an inserted job; the rest of its record is
/// what was submitted, so only this travels back.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Inserted {
    id: Uuid,
    state: JobState,
    run_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

impl NewJob {
    /// Roughly the bytes this job sends to PostgreSQL.
    pub fn size_bytes(&self) -> usize {
        /// Its fixed-size columns.
        const ROW_OVERHEAD_BYTES: usize = 128;
        ROW_OVERHEAD_BYTES
            + self.input.len()
            + self.module_hash.len()
            + self.queue.len()
            + self.idempotency_key.as_ref().map_or(0, String::len)
    }

    /// The record of this job as it was just inserted.
    fn record(&self, inserted: Inserted) -> JobRecord {
        JobRecord {
            id: inserted.id,
            module_hash: self.module_hash.clone(),
            queue: self.queue.clone(),
            priority: self.priority,
            state: inserted.state,
            attempt: 0,
            attempt_base: 0,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            fuel: self.fuel,
            memory_limit_bytes: self.memory_limit_bytes,
            run_at: inserted.run_at,
            lease_token: None,
            worker_id: None,
            idempotency_key: self.idempotency_key.clone(),
            last_error: None,
            created_at: inserted.created_at,
            updated_at: inserted.created_at,
            attempted_at: None,
            finished_at: None,
        }
    }
}

/// The result of a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The job, new or existing.
    pub job: JobRecord,
    /// `false` when an earlier submission with the same idempotency key
    /// created it.
    pub created: bool,
}

/// One finished attempt of a job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AttemptRecord {
    /// Attempt number over the job's life, from 1.
    pub attempt: i32,
    /// Fencing token the attempt held.
    pub lease_token: i64,
    /// Worker that ran it.
    pub worker_id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Machine-readable failure reason (see `job::FailureKind`).
    pub error_kind: Option<String>,
    /// Human-readable failure message.
    pub error_message: Option<String>,
    /// Fuel the guest consumed.
    pub fuel_consumed: Option<i64>,
    /// Wall time, in microseconds.
    pub duration_us: Option<i64>,
    /// Captured guest log lines.
    pub logs: Json<serde_json::Value>,
    /// Log lines dropped past the per-attempt bound.
    pub logs_dropped: i64,
}

/// Filters of [`Store::list_jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs on this queue.
    pub queue: Option<String>,
    /// Only jobs older than this id (the previous page's last id).
    pub before: Option<Uuid>,
    /// Page size.
    pub limit: i64,
}

/// What a cancel did.
#[derive(Debug, Clone)]
pub struct CancelOutcome {
    /// The job after cancelling.
    pub job: JobRecord,
    /// Its state before; `Running` means a worker may still be executing it
    /// and should be told to stop.
    pub previous: JobState,
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

impl Store {
    /// Inserts jobs, all or none.
    ///
    /// A job whose idempotency key already exists is not inserted; the
    /// existing job is returned instead (`created: false`) if it was
    /// submitted with the same fingerprint, and
    /// [`StoreError::IdempotencyConflict`] is returned otherwise. The unique
    /// index makes this safe against concurrent submissions. A job naming a
    /// module that was never uploaded fails the whole call with
    /// [`StoreError::UnknownModules`].
    ///
    /// A single job is one statement, one round trip and one commit; several
    /// are inserted in a transaction, so that one failure undoes the rest.
    pub async fn insert_jobs(&self, jobs: &[NewJob]) -> StoreResult<Vec<Submitted>> {
        let mut connection = self
            .connection_for(jobs.iter().map(NewJob::size_bytes).sum())
            .await?;
        if jobs.len() == 1 {
            return all_or_error(
                self.insert_jobs_independently(&mut connection, jobs)
                    .await?,
            );
        }
        let mut tx = sqlx::Connection::begin(&mut *connection).await?;
        let submitted = all_or_error(self.insert_jobs_independently(&mut tx, jobs).await?)?;
        tx.commit().await?;
        Ok(submitted)
    }

    /// Inserts jobs that do not belong together (concurrent requests grouped
    /// into one commit): each gets its own result, so one request's
    /// idempotency conflict or unknown module does not fail the others. The
    /// caller brings the connection, so a writer that submits group after
    /// group can keep one; [`Store::insert_jobs`] brings a transaction.
    ///
    /// One `INSERT … ON CONFLICT DO NOTHING` for all `jobs` (its `WHERE
    /// EXISTS` skips a job naming an unknown module), then, only if some were
    /// not inserted, two lookups: the jobs owning their keys, and which of
    /// their modules are unknown. Per job: the inserted job, the existing
    /// one, an idempotency conflict, or an unknown module.
    pub async fn insert_jobs_independently(
        &self,
        connection: &mut sqlx::PgConnection,
        jobs: &[NewJob],
    ) -> StoreResult<Vec<StoreResult<Submitted>>> {
        super::statement("insert_jobs");
        let inserted = sqlx::query_as::<_, Inserted>(
            "INSERT INTO jobs (id, module_hash, queue, priority, state, input, max_attempts,
                               timeout_ms, fuel, memory_limit_bytes, run_at, idempotency_key,
                               request_fingerprint)
             SELECT id, module_hash, queue, priority,
                    CASE WHEN run_at IS NULL OR run_at <= now() THEN 'available'::job_state
                         ELSE 'scheduled'::job_state END,
                    input, max_attempts, timeout_ms, fuel, memory_limit_bytes,
                    COALESCE(run_at, now()), idempotency_key, request_fingerprint
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::bytea[],
                         $6::int[], $7::int[], $8::bigint[], $9::bigint[], $10::timestamptz[],
                         $11::text[], $12::bytea[])
                  AS t(id, module_hash, queue, priority, input, max_attempts, timeout_ms, fuel,
                       memory_limit_bytes, run_at, idempotency_key, request_fingerprint)
             WHERE EXISTS (SELECT 1 FROM modules m WHERE m.hash = t.module_hash)
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id, state, run_at, created_at",
        )
        .bind(jobs.iter().map(|j| j.id).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.module_hash.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.priority).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.input.as_slice()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.timeout_ms).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.fuel).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.memory_limit_bytes)
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|j| j.run_at).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.idempotency_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.request_fingerprint.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *connection)
        .await;
        let inserted = inserted?;

        let mut inserted: std::collections::HashMap<Uuid, Inserted> =
            inserted.into_iter().map(|row| (row.id, row)).collect();
        let duplicates: Vec<&NewJob> = jobs
            .iter()
            .filter(|j| !inserted.contains_key(&j.id))
            .collect();
        // Several jobs of one group may carry the same key (a client retrying
        // concurrently): they all resolve to the one job that owns it.
        let lookups = async {
            let existing = existing_for_duplicates(connection, &duplicates).await?;
            let unknown = unknown_modules(connection, &duplicates).await?;
            StoreResult::Ok((existing, unknown))
        };
        let (existing, unknown) = match lookups.await {
            Ok(found) => found,
            // Outside a transaction the inserted jobs are committed whatever
            // happens next: report them as created, and the failure only for
            // the others. In a batch's transaction the failure rolls them
            // back with the rest.
            Err(error) => {
                let message = error.to_string();
                return Ok(jobs
                    .iter()
                    .map(|job| match inserted.remove(&job.id) {
                        Some(row) => Ok(Submitted {
                            job: job.record(row),
                            created: true,
                        }),
                        None => Err(StoreError::Unavailable(message.clone())),
                    })
                    .collect());
            }
        };
        Ok(jobs
            .iter()
            .map(|job| {
                if let Some(row) = inserted.remove(&job.id) {
                    return Ok(Submitted {
                        job: job.record(row),
                        created: true,
                    });
                }
                let key = job.idempotency_key.clone().unwrap_or_default();
                if unknown.contains(&job.module_hash) {
                    return Err(StoreError::UnknownModules(vec![job.module_hash.clone()]));
                }
                match existing.get(&key).cloned() {
                    Some((record, fingerprint)) if fingerprint == job.request_fingerprint => {
                        Ok(Submitted {
                            job: record,
                            created: false,
                        })
                    }
                    Some((record, _)) => Err(StoreError::IdempotencyConflict {
                        key,
                        job_id: record.id,
                    }),
                    // Not inserted, yet neither a known key nor an unknown
                    // module explains why: the module was uploaded between
                    // the two statements. Nothing was written.
                    None => Err(StoreError::Raced),
                }
            })
            .collect())
    }

    /// One job with its payloads, or `None` if no job has this id.
    pub async fn get_job(&self, id: Uuid) -> StoreResult<Option<JobDetail>> {
        super::statement("get_job");
        Ok(sqlx::query_as::<_, JobDetail>(concat!(
            "SELECT ",
            job_columns!("j."),
            ", j.input, j.output,
               a.fuel_consumed AS last_fuel_consumed, a.duration_us AS last_duration_us
             FROM jobs j
             LEFT JOIN LATERAL (
                 SELECT fuel_consumed, duration_us FROM job_attempts
                 WHERE job_id = j.id ORDER BY lease_token DESC LIMIT 1
             ) a ON true
             WHERE j.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Jobs newest first, filtered, one page at a time.
    ///
    /// The statement names only the filters given, so PostgreSQL can serve
    /// a listing of dead or cancelled jobs from `jobs_finished_list_idx` (a
    /// catch-all `$1 IS NULL OR state = $1` would defeat it in a generic
    /// plan); other listings walk the primary key newest first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<JobRecord>> {
        super::statement("list_jobs");
        let mut query = sqlx::QueryBuilder::new(concat!(
            "SELECT ",
            job_columns!(""),
            " FROM jobs WHERE true"
        ));
        if let Some(state) = filter.state {
            query.push(" AND state = ").push_bind(state);
        }
        if let Some(queue) = &filter.queue {
            query.push(" AND queue = ").push_bind(queue);
        }
        if let Some(before) = filter.before {
            query.push(" AND id < ").push_bind(before);
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(filter.limit);
        Ok(query
            .build_query_as::<JobRecord>()
            .fetch_all(self.pool())
            .await?)
    }

    /// A page of a job's finished attempts, oldest first: up to `limit`
    /// after the attempt holding `after_lease_token` (from the first when
    /// `None`). `None` if no job has this id.
    pub async fn list_attempts(
        &self,
        id: Uuid,
        after_lease_token: Option<i64>,
        limit: i64,
    ) -> StoreResult<Option<Vec<AttemptRecord>>> {
        super::statement("list_attempts");
        let mut tx = self.pool().begin().await?;
        let exists =
            sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1)")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            return Ok(None);
        }
        let attempts = sqlx::query_as::<_, AttemptRecord>(
            "SELECT attempt, lease_token, worker_id, started_at, finished_at, outcome,
                    error_kind, error_message, fuel_consumed, duration_us, logs, logs_dropped
             FROM job_attempts
             WHERE job_id = $1 AND ($2::bigint IS NULL OR lease_token > $2)
             ORDER BY lease_token
             LIMIT $3",
        )
        .bind(id)
        .bind(after_lease_token)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(attempts))
    }

    /// Cancels a job that has not finished.
    ///
    /// Guard: `state IN (scheduled, available, running, retrying)`. A running
    /// attempt is ended in the same statement (recorded as `cancelled`), so
    /// the worker's later write finds the job no longer running and is
    /// discarded; the caller should also revoke the attempt's lease so the
    /// worker stops early. `error_kind` is recorded on that attempt.
    pub async fn cancel_if_unfinished(
        &self,
        id: Uuid,
        error_kind: &str,
    ) -> StoreResult<CancelOutcome> {
        super::statement("cancel_if_unfinished");
        let row = sqlx::query_as::<_, GuardedUpdate>(concat!(
            "WITH target AS (
                 SELECT id, state, lease_token, attempt, worker_id, attempted_at
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
             )
             SELECT ",
            job_columns!("c."),
            ", true AS applied, t.state AS previous
             FROM target t JOIN cancelled c ON c.id = t.id
             UNION ALL
             SELECT ",
            job_columns!("j."),
            ", false AS applied, j.state AS previous
             FROM jobs j
             WHERE j.id = $1 AND NOT EXISTS (SELECT 1 FROM cancelled)"
        ))
        .bind(id)
        .bind(error_kind)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::JobNotFound(id))?;
        if !row.applied {
            return Err(StoreError::InvalidTransition {
                id,
                state: row.job.state,
                action: "cancel",
                allowed: "scheduled, available, running or retrying",
            });
        }
        Ok(CancelOutcome {
            previous: row.previous.unwrap_or(row.job.state),
            job: row.job,
        })
    }

    /// Requeues a dead or cancelled job with a fresh set of attempts.
    ///
    /// Guard: `state IN (dead, cancelled)`. Earlier attempts are kept.
    pub async fn requeue_if_finished(&self, id: Uuid) -> StoreResult<JobRecord> {
        super::statement("requeue_if_finished");
        let row = sqlx::query_as::<_, GuardedUpdate>(concat!(
            "WITH requeued AS (
                 UPDATE jobs
                 SET state = 'available', attempt_base = attempt, run_at = now(),
                     finished_at = NULL, updated_at = now()
                 WHERE id = $1 AND state IN ('dead', 'cancelled')
                 RETURNING *
             )
             SELECT ",
            job_columns!(""),
            ", true AS applied, NULL::job_state AS previous FROM requeued
             UNION ALL
             SELECT ",
            job_columns!(""),
            ", false AS applied, NULL::job_state AS previous FROM jobs
             WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM requeued)"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::JobNotFound(id))?;
        if !row.applied {
            return Err(StoreError::InvalidTransition {
                id,
                state: row.job.state,
                action: "retry",
                allowed: "dead or cancelled",
            });
        }
        Ok(row.job)
    }
}

/// Every job's submission, or the first error, except that all unknown
/// modules are named together.
fn all_or_error(results: Vec<StoreResult<Submitted>>) -> StoreResult<Vec<Submitted>> {
    let unknown: std::collections::BTreeSet<String> = results
        .iter()
        .filter_map(|result| match result {
            Err(StoreError::UnknownModules(hashes)) => Some(hashes.iter().cloned()),
            _ => None,
        })
        .flatten()
        .collect();
    if !unknown.is_empty() {
        return Err(StoreError::UnknownModules(unknown.into_iter().collect()));
    }
    results.into_iter().collect()
}

/// Which of the modules `jobs` name were never uploaded.
async fn unknown_modules(
    connection: &mut sqlx::PgConnection,
    jobs: &[&NewJob],
) -> StoreResult<std::collections::HashSet<String>> {
    if jobs.is_empty() {
        return Ok(Default::default());
    }
    let hashes: Vec<&str> = jobs.iter().map(|job| job.module_hash.as_str()).collect();
    Ok(sqlx::query_scalar::<_, String>(
        "SELECT DISTINCT h FROM unnest($1::text[]) AS h
         WHERE NOT EXISTS (SELECT 1 FROM modules WHERE hash = h)",
    )
    .bind(hashes)
    .fetch_all(connection)
    .await?
    .into_iter()
    .collect())
}

/// The committed jobs owning the idempotency keys of `duplicates`, with
/// their fingerprints, by key.
async fn existing_for_duplicates(
    connection: &mut sqlx::PgConnection,
    duplicates: &[&NewJob],
) -> StoreResult<std::collections::HashMap<String, (JobRecord, Option<Vec<u8>>)>> {
    #[derive(sqlx::FromRow)]
    struct Existing {
        #[sqlx(flatten)]
        job: JobRecord,
        request_fingerprint: Option<Vec<u8>>,
    }
    if duplicates.is_empty() {
        return Ok(Default::default());
    }
    let keys: Vec<&str> = duplicates
        .iter()
        .filter_map(|job| job.idempotency_key.as_deref())
        .collect();
    let rows = sqlx::query_as::<_, Existing>(concat!(
        "SELECT ",
        job_columns!(""),
        ", request_fingerprint FROM jobs WHERE idempotency_key = ANY($1)"
    ))
    .bind(keys)
    .fetch_all(connection)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let key = row.job.idempotency_key.clone()?;
            Some((key, (row.job, row.request_fingerprint)))
        })
        .collect())
}
