//! Job submission, reads and deletion; cancel and retry are in
//! job_actions.rs.

use std::collections::HashSet;
use std::time::Duration;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::request::Parts;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::batch::{CappedBatch, CappedJobs};
use super::body::{BodyLimit, JsonBody, parse_json_seed};
use super::error::ErrorBody;
use super::types::{
    AttemptList, AttemptQuery, AttemptView, BatchEntry, JobPage, JobQuery, JobView, JobWaitQuery,
    SubmitBatch, SubmitJob, SubmittedBatch, SubmittedJob,
};
use super::{
    ApiError, ApiState, PAGE_DEFAULT, PAGE_MAX, PathParams, QueryParams, next_cursor, page_limit,
};
use crate::config::ApiLimits;
use crate::job::{FieldError, JobSpec, JobState, ModuleNames, TraceContext, check_queue_name};
use crate::store::{JobFilter, StoreError, Submitted};

/// Request-body overhead allowed beyond the input itself (field names,
/// options, JSON escaping of a JSON input).
const BODY_OVERHEAD_BYTES: usize = 64 << 10;

/// Routes under `/v1/jobs`.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(submit, list))
        .routes(routes!(submit_batch))
        .routes(routes!(get_one, delete))
        .routes(routes!(attempts))
}

impl BodyLimit for SubmitJob {
    fn max_body_bytes(limits: &ApiLimits) -> usize {
        // A JSON or base64 input may take up to 4/3 of its size plus
        // escaping; twice the input limit covers both.
        limits.submission.max_input_bytes.saturating_mul(2) + BODY_OVERHEAD_BYTES
    }
}

impl BodyLimit for SubmitBatch {
    fn max_body_bytes(limits: &ApiLimits) -> usize {
        SubmitJob::max_body_bytes(limits)
            .saturating_mul(limits.max_batch_jobs)
            .min(limits.max_batch_request_bytes)
    }

    /// Refused with 413 `batch_too_large` as soon as the list passes
    /// `--max-batch-jobs`, before the jobs past it are built (api/batch.rs).
    fn parse(bytes: &[u8], limits: &ApiLimits) -> Result<Self, ApiError> {
        let max_jobs = limits.max_batch_jobs;
        match parse_json_seed(bytes, CappedBatch { max_jobs })? {
            CappedJobs::Within(jobs) => Ok(SubmitBatch { jobs }),
            CappedJobs::Over(count) => Err(ApiError::too_large(
                "batch_too_large",
                format!("a batch may hold at most {max_jobs} jobs; this one has {count}"),
            )
            .for_field("jobs")),
        }
    }
}

/// `POST /v1/jobs`: 201 with the new job, or 200 with the original job when
/// its idempotency key was seen before.
#[utoipa::path(post, operation_id = "submit_job", path = "/v1/jobs", tag = "jobs", request_body = SubmitJob,
    responses(
        (status = 201, description = "Submitted", body = SubmittedJob),
        (status = 200, description = "Its `idempotency_key` was seen before: the original job (`created: false`)", body = SubmittedJob),
        (status = 404, description = "`module_not_found`: no module has this hash or name", body = ErrorBody),
        (status = 409, description = "`idempotency_conflict`: the key was used for a different job", body = ErrorBody),
        (status = 413, description = "`input_too_large`: the input exceeds the server's limit", body = ErrorBody),
    ))]
async fn submit(
    State(state): State<ApiState>,
    CallerTrace(caller): CallerTrace,
    JsonBody(request, _reserved): JsonBody<SubmitJob>,
) -> Result<(StatusCode, Json<SubmittedJob>), ApiError> {
    let submission = state.traces.start_submission(caller, 1);
    let submitted = submit_one(&state, request, submission.context()).await;
    submission.end(
        submitted
            .as_ref()
            .map(std::slice::from_ref)
            .map_err(|error| error.code),
    );
    let submitted = submitted?;
    announce(&state, std::slice::from_ref(&submitted));
    let submitted = SubmittedJob {
        job: submitted.job.into(),
        created: submitted.created,
    };
    let status = if submitted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(submitted)))
}

async fn submit_one(
    state: &ApiState,
    request: SubmitJob,
    trace: Option<TraceContext>,
) -> Result<Submitted, ApiError> {
    let spec = request.into_spec()?;
    let names = module_names(state, std::slice::from_ref(&spec)).await?;
    let mut job = spec.resolve(&state.limits.submission, &names)?;
    job.trace = trace;
    state.submitter.submit(job).await.map_err(|error| {
        let answer = ApiError::from(error);
        if answer.code == "module_not_found" {
            answer.for_field("module")
        } else {
            answer
        }
    })
}

/// The caller's span, from its `traceparent` header: none if it sent none,
/// an invalid one, or several (which the W3C asks to treat as invalid).
/// Read from the request's headers in place, never copying them.
struct CallerTrace(Option<TraceContext>);

impl<S: Send + Sync> FromRequestParts<S> for CallerTrace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all("traceparent").iter();
        let trace = match (values.next(), values.next()) {
            (Some(value), None) => value
                .to_str()
                .ok()
                .and_then(TraceContext::parse_traceparent),
            _ => None,
        };
        Ok(Self(trace))
    }
}

/// `POST /v1/jobs/batch`: all jobs or none, in one transaction. Errors name
/// the offending job by index (`jobs[3].fuel: …`).
#[utoipa::path(post, operation_id = "submit_jobs", path = "/v1/jobs/batch", tag = "jobs", request_body = SubmitBatch,
    responses(
        (status = 201, description = "All submitted (or found by idempotency key), in order", body = SubmittedBatch),
        (status = 400, description = "`empty_batch`, `duplicate_idempotency_key`, or a job's `invalid_field` named `jobs[i].field`", body = ErrorBody),
        (status = 404, description = "`module_not_found`", body = ErrorBody),
        (status = 413, description = "`batch_too_large`: more jobs than the server's limit", body = ErrorBody),
    ))]
async fn submit_batch(
    State(state): State<ApiState>,
    CallerTrace(caller): CallerTrace,
    JsonBody(request, _reserved): JsonBody<SubmitBatch>,
) -> Result<(StatusCode, Json<SubmittedBatch>), ApiError> {
    let submission = state.traces.start_submission(caller, request.jobs.len());
    let submitted = submit_all(&state, request, submission.context()).await;
    submission.end(submitted.as_deref().map_err(|error| error.code));
    let submitted = submitted?;
    announce(&state, &submitted);
    let jobs = submitted
        .into_iter()
        .map(|s| BatchEntry {
            id: s.job.id,
            state: s.job.state,
            created: s.created,
        })
        .collect();
    Ok((StatusCode::CREATED, Json(SubmittedBatch { jobs })))
}

/// Checks a batch, every job and their idempotency keys, and inserts them
/// in one transaction.
async fn submit_all(
    state: &ApiState,
    request: SubmitBatch,
    trace: Option<TraceContext>,
) -> Result<Vec<Submitted>, ApiError> {
    if request.jobs.is_empty() {
        return Err(
            ApiError::bad_request("empty_batch", "jobs must hold at least one job")
                .for_field("jobs"),
        );
    }
    let limits = &state.limits.submission;
    let specs = request
        .jobs
        .into_iter()
        .enumerate()
        .map(|(index, request)| {
            request
                .into_spec()
                .map_err(|error| error.within(&format!("jobs[{index}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let names = module_names(state, &specs).await?;
    let mut keys = HashSet::new();
    let mut jobs = Vec::with_capacity(specs.len());
    for (index, spec) in specs.into_iter().enumerate() {
        let mut job = spec
            .resolve(limits, &names)
            .map_err(|error| error.within(&format!("jobs[{index}]")))?;
        if let Some(key) = &job.idempotency_key
            && !keys.insert(key.clone())
        {
            return Err(ApiError::bad_request(
                "duplicate_idempotency_key",
                format!("jobs[{index}].idempotency_key: {key:?} appears twice in this batch"),
            )
            .for_field(format!("jobs[{index}].idempotency_key")));
        }
        job.trace = trace;
        jobs.push(job);
    }
    state
        .store
        .insert_jobs(&jobs)
        .await
        .map_err(|error| match &error {
            StoreError::UnknownModules(hashes) => {
                let index = jobs
                    .iter()
                    .position(|job| hashes.contains(&job.module_hash));
                let answer = ApiError::from(error);
                match index {
                    Some(index) => answer.for_field(format!("jobs[{index}].module")),
                    None => answer,
                }
            }
            _ => error.into(),
        })
}

/// Where the module names `specs` give point now: one lookup for all of
/// them, none when every job gives a hash.
async fn module_names(state: &ApiState, specs: &[JobSpec]) -> Result<ModuleNames, ApiError> {
    let names: Vec<&str> = specs.iter().filter_map(JobSpec::module_name).collect();
    Ok(state.store.module_names_for(&names).await?)
}

/// Counts newly created jobs and wakes the workers of those due now.
fn announce(state: &ApiState, submitted: &[Submitted]) {
    let created: Vec<&Submitted> = submitted.iter().filter(|s| s.created).collect();
    metrics::counter!("taskflow_jobs_submitted_total").increment(created.len() as u64);
    state.waker.wake(
        created
            .iter()
            .filter(|s| s.job.state == JobState::Available)
            .map(|s| s.job.queue.as_str()),
    );
}

/// `GET /v1/jobs/{id}[?wait=30s]`: the job with its input, output and
/// resource use; with `wait`, once it has ended or the wait is over
/// (lease/endings.rs says how the API hears of an ending).
#[utoipa::path(get, operation_id = "get_job", path = "/v1/jobs/{id}", tag = "jobs", params(("id" = Uuid, Path, description = "The job's id"), JobWaitQuery),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
    ))]
async fn get_one(
    State(state): State<ApiState>,
    PathParams(id): PathParams<Uuid>,
    QueryParams(query): QueryParams<JobWaitQuery>,
) -> Result<Json<JobView>, ApiError> {
    let Some(wait) = wait_of(&query)? else {
        return Ok(Json(read_job_lagging(&state, id).await?));
    };
    let deadline = tokio::time::Instant::now() + wait;
    let watch = state.endings.watch(id);
    loop {
        let wakeup = watch.next_wakeup();
        let job = read_job(&state, id).await?;
        if job.state.is_final() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(job));
        }
        tokio::select! {
            () = wakeup => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Longest `wait` of `GET /v1/jobs/{id}`: under common proxies' idle
/// timeouts; a client wanting longer asks again.
pub const MAX_JOB_WAIT: Duration = Duration::from_secs(60);

/// The `wait` asked for, if any.
fn wait_of(query: &JobWaitQuery) -> Result<Option<Duration>, ApiError> {
    let Some(text) = &query.wait else {
        return Ok(None);
    };
    let invalid = |message: String| ApiError::from(FieldError::invalid("wait", message));
    let wait = crate::duration::parse(text)
        .map_err(|error| invalid(format!("not a duration such as 30s: {error}")))?;
    if wait > MAX_JOB_WAIT {
        return Err(invalid(format!(
            "at most {}",
            crate::duration::format(MAX_JOB_WAIT)
        )));
    }
    Ok((!wait.is_zero()).then_some(wait))
}

/// The job as the read replica has it, if there is one
/// ([`ApiParts::read_found`](crate::api::ApiParts::read_found)).
async fn read_job_lagging(state: &ApiState, id: Uuid) -> Result<JobView, ApiError> {
    let job = state
        .read_found(|store| async move { store.get_job(id).await })
        .await?
        .ok_or_else(|| job_not_found(id))?;
    Ok(job.into())
}

/// The job as the primary has it.
async fn read_job(state: &ApiState, id: Uuid) -> Result<JobView, ApiError> {
    let job = state
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| job_not_found(id))?;
    Ok(job.into())
}

/// Default and largest page of `GET /v1/jobs/{id}/attempts`: an attempt
/// carries up to `--max-log-bytes` of log, so pages are smaller than job
/// lists.
const ATTEMPT_PAGE_DEFAULT: u32 = 20;
const ATTEMPT_PAGE_MAX: u32 = 100;

/// `GET /v1/jobs/{id}/attempts?limit=&cursor=`: finished attempts, oldest
/// first, keyset-paginated on the lease token.
#[utoipa::path(get, operation_id = "list_attempts", path = "/v1/jobs/{id}/attempts", tag = "jobs", params(("id" = Uuid, Path, description = "The job's id"), AttemptQuery),
    responses(
        (status = 200, description = "A page of finished attempts, oldest first", body = AttemptList),
        (status = 400, description = "`invalid_cursor`, `invalid_limit`", body = ErrorBody),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
    ))]
async fn attempts(
    State(state): State<ApiState>,
    PathParams(id): PathParams<Uuid>,
    QueryParams(query): QueryParams<AttemptQuery>,
) -> Result<Json<AttemptList>, ApiError> {
    let limit = page_limit(query.limit, ATTEMPT_PAGE_DEFAULT, ATTEMPT_PAGE_MAX)?;
    let after = query
        .cursor
        .as_deref()
        .map(|cursor| {
            cursor.parse::<i64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_cursor",
                    "cursor must be a next_cursor from a previous page",
                )
                .for_field("cursor")
            })
        })
        .transpose()?;
    // From the primary: a replica may have the job but not yet its latest
    // attempt, which a client that waited for the job's end looks for next.
    let attempts = state
        .store
        .list_attempts(id, after, limit)
        .await?
        .ok_or_else(|| job_not_found(id))?;
    let next_cursor = next_cursor(&attempts, limit, |a| a.lease_token.to_string());
    Ok(Json(AttemptList {
        job_id: id,
        attempts: attempts.into_iter().map(AttemptView::from).collect(),
        next_cursor,
    }))
}

/// `GET /v1/jobs?state=&queue=&limit=&cursor=`: newest first, keyset-paginated.
#[utoipa::path(get, operation_id = "list_jobs", path = "/v1/jobs", tag = "jobs", params(JobQuery),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = JobPage),
        (status = 400, description = "`invalid_cursor`, `invalid_limit`, `invalid_queue`, `invalid_query`", body = ErrorBody),
    ))]
async fn list(
    State(state): State<ApiState>,
    QueryParams(query): QueryParams<JobQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let limit = page_limit(query.limit, PAGE_DEFAULT, PAGE_MAX)?;
    let before = query
        .cursor
        .as_deref()
        .map(|cursor| {
            Uuid::parse_str(cursor).map_err(|_| {
                ApiError::bad_request(
                    "invalid_cursor",
                    "cursor must be a next_cursor from a previous page",
                )
                .for_field("cursor")
            })
        })
        .transpose()?;
    if let Some(queue) = &query.queue {
        check_queue_name("queue", queue).map_err(|error| ApiError {
            code: "invalid_queue",
            ..error.into()
        })?;
    }
    let filter = JobFilter {
        state: query.state,
        queue: query.queue,
        before,
        limit,
        ..JobFilter::default()
    };
    let filter = &filter;
    let jobs = state
        .read(|store| async move { store.list_jobs(filter).await })
        .await?;
    let next_cursor = next_cursor(&jobs, limit, |j| j.id.to_string());
    Ok(Json(JobPage {
        jobs: jobs.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// `DELETE /v1/jobs/{id}`: removes a finished job and its attempts, and
/// answers with the job as it was.
#[utoipa::path(delete, operation_id = "delete_job", path = "/v1/jobs/{id}", tag = "jobs", params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Deleted; the job as it was", body = JobView),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the job has not finished", body = ErrorBody),
    ))]
async fn delete(
    State(state): State<ApiState>,
    PathParams(id): PathParams<Uuid>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.store.delete_if_finished(id).await?;
    Ok(Json(job.into()))
}

fn job_not_found(id: Uuid) -> ApiError {
    ApiError::not_found("job_not_found", format!("job {id} does not exist"))
}
