//! Job submission, reads, cancel and retry.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::body::{BodyLimit, JsonBody};
use super::modules::check_hash;
use super::types::{
    AttemptList, AttemptQuery, BatchEntry, JobPage, JobQuery, JobView, SubmitBatch, SubmitJob,
    SubmittedBatch, SubmittedJob,
};
use super::{ApiError, ApiState, PAGE_DEFAULT, PAGE_MAX, PathParams, QueryParams, page_limit};
use crate::config::JobLimits;
use crate::sandbox::FailureKind;
use crate::store::{JobFilter, JobState, LeaseRef, NewJob, Submitted, is_valid_queue_name};

/// Queue of jobs that do not name one.
pub const DEFAULT_QUEUE: &str = "default";

/// Longest idempotency key.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Request-body overhead allowed beyond the input itself (field names,
/// options, JSON escaping of a JSON input).
const BODY_OVERHEAD_BYTES: usize = 64 << 10;

/// Routes under `/v1/jobs`.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/batch", post(submit_batch))
        .route("/v1/jobs/{id}", get(get_one))
        .route("/v1/jobs/{id}/attempts", get(attempts))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/retry", post(retry))
}

impl BodyLimit for SubmitJob {
    fn max_body_bytes(limits: &JobLimits) -> usize {
        // A JSON or base64 input may take up to 4/3 of its size plus
        // escaping; twice the input limit covers both.
        limits.max_input_bytes.saturating_mul(2) + BODY_OVERHEAD_BYTES
    }
}

impl BodyLimit for SubmitBatch {
    fn max_body_bytes(limits: &JobLimits) -> usize {
        SubmitJob::max_body_bytes(limits)
            .saturating_mul(limits.max_batch_jobs)
            .min(limits.max_batch_request_bytes)
    }
}

/// `POST /v1/jobs`: 201 with the new job, or 200 with the original job when
/// its idempotency key was seen before.
async fn submit(
    State(state): State<ApiState>,
    JsonBody(request, _reserved): JsonBody<SubmitJob>,
) -> Result<(StatusCode, Json<SubmittedJob>), ApiError> {
    let job = resolve(request, &state.limits, "")?;
    let submitted = state.submitter.submit(job).await?;
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

/// `POST /v1/jobs/batch`: all jobs or none, in one transaction. Errors name
/// the offending job by index (`jobs[3].fuel: …`).
async fn submit_batch(
    State(state): State<ApiState>,
    JsonBody(request, _reserved): JsonBody<SubmitBatch>,
) -> Result<(StatusCode, Json<SubmittedBatch>), ApiError> {
    let limit = state.limits.max_batch_jobs;
    if request.jobs.is_empty() {
        return Err(ApiError::bad_request(
            "empty_batch",
            "jobs must hold at least one job",
        ));
    }
    if request.jobs.len() > limit {
        return Err(ApiError::too_large(
            "batch_too_large",
            format!(
                "a batch may hold at most {limit} jobs; this one has {}",
                request.jobs.len()
            ),
        ));
    }
    let mut keys = HashSet::new();
    let mut jobs = Vec::with_capacity(request.jobs.len());
    for (index, request) in request.jobs.into_iter().enumerate() {
        let job = resolve(request, &state.limits, &format!("jobs[{index}]."))?;
        if let Some(key) = &job.idempotency_key
            && !keys.insert(key.clone())
        {
            return Err(ApiError::bad_request(
                "duplicate_idempotency_key",
                format!("jobs[{index}].idempotency_key: {key:?} appears twice in this batch"),
            ));
        }
        jobs.push(job);
    }
    let submitted = state.store.insert_jobs(&jobs).await?;
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

/// Checks a submission against the server's limits and fills in defaults.
/// `field` prefixes field names in errors (`jobs[3].`).
pub fn resolve(request: SubmitJob, limits: &JobLimits, field: &str) -> Result<NewJob, ApiError> {
    let invalid = |name: &str, message: String| {
        ApiError::bad_request("invalid_field", format!("{field}{name}: {message}"))
    };
    check_hash(&format!("{field}module"), &request.module)?;
    let input_too_large = || {
        ApiError::too_large(
            "input_too_large",
            format!(
                "{field}input: over the limit of {} bytes; store large data elsewhere and pass a \
                 reference",
                limits.max_input_bytes
            ),
        )
    };
    let input = match (request.input, request.input_base64) {
        (Some(json), None) => match compact_json(json.text(), limits.max_input_bytes) {
            Ok(input) => input,
            Err(CompactError::TooLarge) => return Err(input_too_large()),
            Err(CompactError::Invalid(error)) => return Err(invalid("input", error.to_string())),
        },
        (None, Some(encoded)) => {
            // Four base64 characters hold three bytes: refuse before decoding.
            if encoded.len() / 4 * 3 > limits.max_input_bytes + 2 {
                return Err(input_too_large());
            }
            BASE64
                .decode(encoded.as_bytes())
                .map_err(|error| invalid("input_base64", format!("not valid base64 ({error})")))?
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "input",
                "give either input or input_base64, not both".into(),
            ));
        }
        (None, None) => {
            return Err(invalid(
                "input",
                "required: the task's input as JSON (input) or as base64 bytes (input_base64)"
                    .into(),
            ));
        }
    };
    if input.len() > limits.max_input_bytes {
        return Err(input_too_large());
    }
    let max_attempts = request.max_attempts.unwrap_or(limits.default_max_attempts);
    if !(1..=limits.max_attempts_limit).contains(&max_attempts) {
        return Err(invalid(
            "max_attempts",
            format!("must be between 1 and {}", limits.max_attempts_limit),
        ));
    }
    let max_timeout_ms = limits.max_timeout.as_millis() as u64;
    let timeout_ms = request
        .timeout_ms
        .unwrap_or(limits.default_timeout.as_millis() as u64);
    if !(1..=max_timeout_ms).contains(&timeout_ms) {
        return Err(invalid(
            "timeout_ms",
            format!("must be between 1 and {max_timeout_ms}"),
        ));
    }
    let fuel = request.fuel.unwrap_or(limits.default_fuel);
    if !(1..=limits.max_fuel).contains(&fuel) {
        return Err(invalid(
            "fuel",
            format!("must be between 1 and {}", limits.max_fuel),
        ));
    }
    let memory = request
        .memory_limit_bytes
        .unwrap_or(limits.default_memory_limit_bytes);
    if !(MIN_MEMORY_LIMIT_BYTES..=limits.max_memory_limit_bytes).contains(&memory) {
        return Err(invalid(
            "memory_limit_bytes",
            format!(
                "must be between {MIN_MEMORY_LIMIT_BYTES} (one WebAssembly page) and {}",
                limits.max_memory_limit_bytes
            ),
        ));
    }
    let queue = request.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
    if !is_valid_queue_name(&queue) {
        return Err(invalid(
            "queue",
            "must be 1-64 characters of a-z, 0-9, _ and -".into(),
        ));
    }
    if let Some(key) = &request.idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || key.contains('\0'))
    {
        return Err(invalid(
            "idempotency_key",
            format!("must be 1-{MAX_IDEMPOTENCY_KEY_LEN} bytes without NUL characters"),
        ));
    }
    if let Some(run_at) = request.run_at
        && !(earliest_run_at()..=latest_run_at()).contains(&run_at)
    {
        return Err(invalid(
            "run_at",
            "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z".into(),
        ));
    }
    let mut job = NewJob {
        id: Uuid::now_v7(),
        module_hash: request.module,
        queue,
        priority: request.priority.unwrap_or(0),
        input,
        max_attempts: max_attempts as i32,
        timeout_ms: timeout_ms as i32,
        fuel: fuel as i64,
        memory_limit_bytes: memory as i64,
        run_at: request.run_at,
        idempotency_key: request.idempotency_key,
        request_fingerprint: None,
    };
    if job.idempotency_key.is_some() {
        job.request_fingerprint = Some(fingerprint(&job));
    }
    Ok(job)
}

/// The earliest `run_at` accepted: PostgreSQL stores earlier times, but not
/// all of them (none before 4713 BC), and a four-digit year is what RFC 3339
/// promises.
fn earliest_run_at() -> DateTime<Utc> {
    DateTime::from_timestamp(-62_135_596_800, 0).expect("0001-01-01T00:00:00Z is a valid time")
}

/// The latest `run_at` accepted (see [`earliest_run_at`]).
fn latest_run_at() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).expect("9999-12-31T23:59:59Z is a valid time")
}

/// Why a JSON input could not be compacted.
enum CompactError {
    /// It is over the limit.
    TooLarge,
    /// It is not a JSON value serde can read (a number out of range, nesting
    /// past serde's recursion limit).
    Invalid(serde_json::Error),
}

/// `text` (one JSON value) without insignificant whitespace, in one
/// streaming pass that builds no tree and stops once the result would pass
/// `limit` bytes.
fn compact_json(text: &str, limit: usize) -> Result<Vec<u8>, CompactError> {
    let mut output = CappedWriter {
        bytes: Vec::with_capacity(text.len().min(limit)),
        limit,
        overflowed: false,
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let transcoded = serde_transcode::transcode(
        &mut deserializer,
        &mut serde_json::Serializer::new(&mut output),
    );
    match transcoded {
        Ok(()) => Ok(output.bytes),
        Err(_) if output.overflowed => Err(CompactError::TooLarge),
        Err(error) => Err(CompactError::Invalid(error)),
    }
}

/// A `Vec<u8>` writer that refuses to grow past `limit`.
struct CappedWriter {
    bytes: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("over the limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Smallest memory limit: one 64 KiB WebAssembly page.
const MIN_MEMORY_LIMIT_BYTES: u64 = 64 << 10;

/// A digest of everything a submission asks for, so a retried request (same
/// key, same fingerprint) is told apart from a conflicting one.
fn fingerprint(job: &NewJob) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(job.module_hash.as_bytes());
    hasher.update((job.input.len() as u64).to_be_bytes());
    hasher.update(&job.input);
    hasher.update(job.queue.as_bytes());
    hasher.update([0]);
    hasher.update(job.priority.to_be_bytes());
    hasher.update(job.max_attempts.to_be_bytes());
    hasher.update(job.timeout_ms.to_be_bytes());
    hasher.update(job.fuel.to_be_bytes());
    hasher.update(job.memory_limit_bytes.to_be_bytes());
    if let Some(run_at) = job.run_at {
        hasher.update(run_at.timestamp_micros().to_be_bytes());
    }
    hasher.finalize().to_vec()
}

/// `GET /v1/jobs/{id}`: the job with its input, output and resource use.
async fn get_one(
    State(state): State<ApiState>,
    PathParams(id): PathParams<Uuid>,
) -> Result<Json<JobView>, ApiError> {
    let job = state
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| job_not_found(id))?;
    Ok(Json(job.into()))
}

/// Default and largest page of `GET /v1/jobs/{id}/attempts`: an attempt
/// carries up to `--max-log-bytes` of log, so pages are smaller than job
/// lists.
const ATTEMPT_PAGE_DEFAULT: u32 = 20;
const ATTEMPT_PAGE_MAX: u32 = 100;

/// `GET /v1/jobs/{id}/attempts?limit=&cursor=`: finished attempts, oldest
/// first, keyset-paginated on the lease token.
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
            })
        })
        .transpose()?;
    let attempts = state
        .store
        .list_attempts(id, after, limit)
        .await?
        .ok_or_else(|| job_not_found(id))?;
    let next_cursor = (attempts.len() as i64 == limit)
        .then(|| attempts.last().map(|a| a.lease_token.to_string()))
        .flatten();
    Ok(Json(AttemptList {
        job_id: id,
        attempts: attempts.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// `GET /v1/jobs?state=&queue=&limit=&cursor=`: newest first, keyset-paginated.
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
            })
        })
        .transpose()?;
    if let Some(queue) = &query.queue
        && !is_valid_queue_name(queue)
    {
        return Err(ApiError::bad_request(
            "invalid_queue",
            "queue must be 1-64 characters of a-z, 0-9, _ and -",
        ));
    }
    let jobs = state
        .store
        .list_jobs(&JobFilter {
            state: query.state,
            queue: query.queue,
            before,
            limit,
        })
        .await?;
    let next_cursor = (jobs.len() as i64 == limit)
        .then(|| jobs.last().map(|j| j.id.to_string()))
        .flatten();
    Ok(Json(JobPage {
        jobs: jobs.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// `POST /v1/jobs/{id}/cancel`: stops a job that has not finished. A running
/// attempt is told to stop through its lease.
async fn cancel(
    State(state): State<ApiState>,
    PathParams(id): PathParams<Uuid>,
) -> Result<Json<JobView>, ApiError> {
    let cancelled = state
        .store
        .cancel_if_unfinished(id, FailureKind::Cancelled.code())
        .await?;
    let running = cancelled
        .job
        .lease_token
        .filter(|_| cancelled.previous == JobState::Running);
    if let Some(lease_token) = running
        && let Err(error) = state
            .leases
            .revoke(&[LeaseRef {
                job_id: id,
                lease_token,
            }])
            .await
    {
        // The cancel is committed; the worker's result will be discarded.
        // It just keeps running until its attempt ends on its own.
        tracing::warn!(%error, job_id = %id, "could not revoke the lease of a cancelled running job");
    }
    Ok(Json(cancelled.job.into()))
}

/// `POST /v1/jobs/{id}/retry`: requeues a dead or cancelled job with a fresh
/// set of attempts.
async fn retry(
    State(state): State<ApiState>,
    PathParams(id): PathParams<Uuid>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.store.requeue_if_finished(id).await?;
    state.waker.wake([job.queue.as_str()]);
    Ok(Json(job.into()))
}

fn job_not_found(id: Uuid) -> ApiError {
    ApiError::not_found("job_not_found", format!("job {id} does not exist"))
}
