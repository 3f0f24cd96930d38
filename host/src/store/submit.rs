//! Where a job is submitted: inserting jobs, with idempotency keys and
//! unknown modules answered per job.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::pool::Statements;
use super::records::{JobRecord, job_columns};
use super::{Store, StoreError, StoreResult};
use crate::job::{JobState, NewJob, TraceContext};

/// What PostgreSQL decided about an inserted job; the rest of its record is
/// what was submitted, so only this travels back.
#[derive(Debug, Clone)]
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
            + self.concurrency_key.as_ref().map_or(0, String::len)
            + self.trace.map_or(0, |_| TraceContext::TRACEPARENT_BYTES)
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
            concurrency_key: self.concurrency_key.clone(),
            last_error: None,
            created_at: inserted.created_at,
            updated_at: inserted.created_at,
            attempted_at: None,
            finished_at: None,
            traceparent: self.trace,
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
                self.insert_jobs_independently(connection.statements(), jobs)
                    .await?,
            );
        }
        let mut tx = connection.begin().await?;
        let submitted = all_or_error(
            self.insert_jobs_independently(tx.statements(), jobs)
                .await?,
        )?;
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
    pub(crate) async fn insert_jobs_independently(
        &self,
        mut connection: Statements<'_>,
        jobs: &[NewJob],
    ) -> StoreResult<Vec<StoreResult<Submitted>>> {
        let inserted = match jobs {
            [job] => insert_one(connection.reborrow(), job).await?,
            _ => insert_many(connection.reborrow(), jobs).await?,
        };

        let mut inserted: std::collections::HashMap<Uuid, Inserted> =
            inserted.into_iter().map(|row| (row.id, row)).collect();
        let duplicates: Vec<&NewJob> = jobs
            .iter()
            .filter(|j| !inserted.contains_key(&j.id))
            .collect();
        // Several jobs of one group may carry the same key (a client retrying
        // concurrently): they all resolve to the one job that owns it.
        let lookups = async {
            let existing = existing_for_duplicates(connection.reborrow(), &duplicates).await?;
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
}

/// The insert of [`Store::insert_jobs_independently`] for any number of
/// jobs: one array per column, unnested into rows. What it writes for a job,
/// [`insert_one`] writes for a lone one: a change to either belongs in both.
/// It inserts in idempotency key order (`in_lock_order`).
async fn insert_many(connection: Statements<'_>, jobs: &[NewJob]) -> StoreResult<Vec<Inserted>> {
    super::statement("insert_jobs");
    let jobs = super::in_lock_order(jobs, |job| job.idempotency_key.as_deref());
    let column = |f: fn(&NewJob) -> i64| jobs.iter().map(|j| f(j)).collect::<Vec<_>>();
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let modules: Vec<&str> = jobs.iter().map(|j| j.module_hash.as_str()).collect();
    let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    let priorities: Vec<i16> = jobs.iter().map(|j| j.priority).collect();
    let inputs: Vec<&[u8]> = jobs.iter().map(|j| j.input.as_slice()).collect();
    let max_attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts).collect();
    let timeouts: Vec<i32> = jobs.iter().map(|j| j.timeout_ms).collect();
    let fuel = column(|j| j.fuel);
    let memory = column(|j| j.memory_limit_bytes);
    let run_ats: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.run_at).collect();
    let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.idempotency_key.as_deref()).collect();
    let fingerprints: Vec<Option<&[u8]>> = jobs
        .iter()
        .map(|j| j.request_fingerprint.as_deref())
        .collect();
    let concurrency_keys: Vec<Option<&str>> =
        jobs.iter().map(|j| j.concurrency_key.as_deref()).collect();
    let traces: Vec<Option<TraceContext>> = jobs.iter().map(|j| j.trace).collect();
    Ok(sqlx::query_as!(
        Inserted,
        r#"WITH inserted AS (
               INSERT INTO jobs (id, module_hash, queue, priority, state, input, max_attempts,
                               timeout_ms, fuel, memory_limit_bytes, run_at, idempotency_key,
                               request_fingerprint, concurrency_key, traceparent)
             SELECT id, module_hash, queue, priority,
                    CASE WHEN run_at IS NULL OR run_at <= now() THEN 'available'::job_state
                         ELSE 'scheduled'::job_state END,
                    input, max_attempts, timeout_ms, fuel, memory_limit_bytes,
                    COALESCE(run_at, now()), idempotency_key, request_fingerprint, concurrency_key,
                    traceparent
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::bytea[],
                         $6::int[], $7::int[], $8::bigint[], $9::bigint[], $10::timestamptz[],
                         $11::text[], $12::bytea[], $13::text[], $14::text[])
                  AS t(id, module_hash, queue, priority, input, max_attempts, timeout_ms, fuel,
                       memory_limit_bytes, run_at, idempotency_key, request_fingerprint,
                       concurrency_key, traceparent)
             WHERE EXISTS (SELECT 1 FROM modules m WHERE m.hash = t.module_hash)
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id, queue, state, run_at, created_at
             ),
             logged AS (
                 INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
                 SELECT queue, NULL, state, count(*) FROM inserted GROUP BY queue, state
             )
             SELECT id AS "id!", state AS "state!: JobState", run_at AS "run_at!",
                    created_at AS "created_at!"
             FROM inserted"#,
        &ids,
        &modules as &[&str],
        &queues as &[&str],
        &priorities,
        &inputs as &[&[u8]],
        &max_attempts,
        &timeouts,
        &fuel,
        &memory,
        &run_ats as &[Option<DateTime<Utc>>],
        &keys as &[Option<&str>],
        &fingerprints as &[Option<&[u8]>],
        &concurrency_keys as &[Option<&str>],
        &traces as &[Option<TraceContext>]
    )
    .fetch_all(connection)
    .await?)
}

/// The insert of [`Store::insert_jobs_independently`] for one job: the same
/// row [`insert_many`] writes, from the job's values as parameters instead
/// of arrays. A lone submission is what a sequential client makes, and this
/// form costs PostgreSQL about a sixth less CPU than unnesting fourteen
/// one-element arrays (docs/benchmarks.md, "What a submission costs
/// PostgreSQL, part by part"). The two statements must write the same row:
/// the integration test
/// `submitter::a_lone_job_is_stored_as_the_same_job_in_a_group_is` holds
/// them to it, column by column.
async fn insert_one(connection: Statements<'_>, job: &NewJob) -> StoreResult<Vec<Inserted>> {
    super::statement("insert_jobs");
    Ok(sqlx::query_as!(
        Inserted,
        r#"WITH inserted AS (
               INSERT INTO jobs (id, module_hash, queue, priority, state, input, max_attempts,
                               timeout_ms, fuel, memory_limit_bytes, run_at, idempotency_key,
                               request_fingerprint, concurrency_key, traceparent)
             SELECT $1, $2, $3, $4,
                    CASE WHEN $10::timestamptz IS NULL OR $10 <= now() THEN 'available'::job_state
                         ELSE 'scheduled'::job_state END,
                    $5, $6, $7, $8, $9, COALESCE($10, now()), $11, $12, $13, $14
             WHERE EXISTS (SELECT 1 FROM modules m WHERE m.hash = $2)
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id, queue, state, run_at, created_at
             ),
             logged AS (
                 INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
                 SELECT queue, NULL, state, 1 FROM inserted
             )
             SELECT id AS "id!", state AS "state!: JobState", run_at AS "run_at!",
                    created_at AS "created_at!"
             FROM inserted"#,
        job.id,
        job.module_hash,
        job.queue,
        job.priority,
        job.input,
        job.max_attempts,
        job.timeout_ms,
        job.fuel,
        job.memory_limit_bytes,
        job.run_at,
        job.idempotency_key,
        job.request_fingerprint,
        job.concurrency_key,
        job.trace as Option<TraceContext>
    )
    .fetch_all(connection)
    .await?)
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
    connection: Statements<'_>,
    jobs: &[&NewJob],
) -> StoreResult<std::collections::HashSet<String>> {
    if jobs.is_empty() {
        return Ok(Default::default());
    }
    let hashes: Vec<&str> = jobs.iter().map(|job| job.module_hash.as_str()).collect();
    Ok(sqlx::query_scalar!(
        r#"SELECT DISTINCT h AS "hash!" FROM unnest($1::text[]) AS h
         WHERE NOT EXISTS (SELECT 1 FROM modules WHERE hash = h)"#,
        &hashes as &[&str]
    )
    .fetch_all(connection)
    .await?
    .into_iter()
    .collect())
}

/// The committed jobs owning the idempotency keys of `duplicates`, with
/// their fingerprints, by key.
async fn existing_for_duplicates(
    connection: Statements<'_>,
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
