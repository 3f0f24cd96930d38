//! Reads of jobs and their attempts, for the API and the CLI.

use sqlx::{FromRow, Row};
use uuid::Uuid;

use super::records::{AttemptRecord, JobDetail, JobRecord, job_columns};
use super::{Store, StoreResult};
use crate::job::{AttemptOutcome, IdPrefix, JobState, RecordedEnd};

/// Filters of [`Store::list_jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs on this queue.
    pub queue: Option<String>,
    /// Only jobs whose id begins so.
    pub id_prefix: Option<IdPrefix>,
    /// Only jobs older than this id (the previous page's last id).
    pub before: Option<Uuid>,
    /// Page size.
    pub limit: i64,
}

/// A page of [`Store::list_module_jobs`].
#[derive(Debug, Clone)]
pub struct ModuleJobs {
    /// The module's jobs found, newest first.
    pub jobs: Vec<JobRecord>,
    /// Set when the page is short because the search reached its bound
    /// with older jobs left: the `before` that searches on from there.
    pub resume_before: Option<Uuid>,
}

/// Appends `filter`'s predicates (all but its limit) to a statement that
/// ends in `WHERE true`.
fn push_predicates(query: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>, filter: &JobFilter) {
    if let Some(state) = filter.state {
        query.push(" AND state = ").push_bind(state);
    }
    if let Some(queue) = filter.queue.clone() {
        query.push(" AND queue = ").push_bind(queue);
    }
    if let Some(prefix) = filter.id_prefix {
        query
            .push(" AND id BETWEEN ")
            .push_bind(prefix.first)
            .push(" AND ")
            .push_bind(prefix.last);
    }
    if let Some(before) = filter.before {
        query.push(" AND id < ").push_bind(before);
    }
}

impl Store {
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
    /// plan); other listings walk the primary key newest first, an id
    /// prefix within its range.
    pub async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<JobRecord>> {
        super::statement("list_jobs");
        let mut query = sqlx::QueryBuilder::new(concat!(
            "SELECT ",
            job_columns!(""),
            " FROM jobs WHERE true"
        ));
        push_predicates(&mut query, filter);
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(filter.limit);
        Ok(query
            .build_query_as::<JobRecord>()
            .fetch_all(self.pool())
            .await?)
    }

    /// A page of the jobs of module `module_hash` among the newest `scan`
    /// jobs that `filter` matches: no index serves a module (one on `jobs`
    /// would take an entry at every state change of every job and cost the
    /// drain a tenth: docs/benchmarks.md), so the search is bounded and
    /// costs the same on any table. When the page is short because the
    /// bound was reached, the page also says where to resume: the oldest
    /// id read, to pass as `before`.
    ///
    /// One statement finds both, so the resume point is the oldest job of
    /// the very jobs searched. Found by a second statement, it moved with
    /// every job inserted, pruned or changing state in between, and the
    /// next page repeated or skipped that many.
    pub async fn list_module_jobs(
        &self,
        filter: &JobFilter,
        module_hash: &str,
        scan: i64,
    ) -> StoreResult<ModuleJobs> {
        super::statement("list_module_jobs");
        let mut query = sqlx::QueryBuilder::new(concat!(
            "SELECT * FROM (SELECT ",
            job_columns!(""),
            ", row_number() OVER (ORDER BY id DESC) AS scanned FROM jobs WHERE true"
        ));
        push_predicates(&mut query, filter);
        // The module's jobs, and the last job the search may read whatever
        // its module: it comes last, so it is cut off only behind a full
        // page. Rows stream from the index, so a page found early stops
        // the search there.
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(scan)
            .push(") newest WHERE module_hash = ")
            .push_bind(module_hash)
            .push(" OR scanned = ")
            .push_bind(scan)
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(filter.limit.saturating_add(1));
        let rows = query.build().fetch_all(self.pool()).await?;
        let mut jobs = Vec::with_capacity(rows.len());
        let mut oldest_scanned = None;
        for row in &rows {
            let job = JobRecord::from_row(row)?;
            if row.try_get::<i64, _>("scanned")? == scan {
                oldest_scanned = Some(job.id);
            }
            if job.module_hash == module_hash && (jobs.len() as i64) < filter.limit {
                jobs.push(job);
            }
        }
        let resume_before = if jobs.len() as i64 == filter.limit {
            None
        } else {
            oldest_scanned
        };
        Ok(ModuleJobs {
            jobs,
            resume_before,
        })
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
        let exists = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1) AS "exists!""#,
            id
        )
        .fetch_one(tx.statements())
        .await?;
        if !exists {
            return Ok(None);
        }
        let rows = sqlx::query!(
            r#"SELECT attempt, lease_token, worker_id, started_at, finished_at,
                    outcome AS "outcome: AttemptOutcome", error_kind, error_message,
                    fuel_consumed, memory_bytes, duration_us,
                    logs, logs_dropped, requests, requests_dropped
             FROM job_attempts
             WHERE job_id = $1 AND ($2::bigint IS NULL OR lease_token > $2)
             ORDER BY lease_token
             LIMIT $3"#,
            id,
            after_lease_token,
            limit
        )
        .fetch_all(tx.statements())
        .await?;
        let attempts = rows
            .into_iter()
            .map(|row| AttemptRecord {
                attempt: row.attempt,
                lease_token: row.lease_token,
                worker_id: row.worker_id,
                started_at: row.started_at,
                finished_at: row.finished_at,
                end: RecordedEnd::from_columns(row.outcome, row.error_kind, row.error_message),
                fuel_consumed: row.fuel_consumed,
                memory_bytes: row.memory_bytes,
                duration_us: row.duration_us,
                logs: row.logs,
                logs_dropped: row.logs_dropped,
                requests: row.requests,
                requests_dropped: row.requests_dropped,
            })
            .collect();
        tx.commit().await?;
        Ok(Some(attempts))
    }
}
