//! The API's request and response bodies, shared by the server and the
//! `taskflow` CLI client so both always agree on the wire format.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod attempts;
mod capped;
mod json_text;
pub mod modules;
pub mod queues;
mod schemas;

pub use attempts::{AttemptList, AttemptQuery, AttemptView};
pub use json_text::{JsonText, render_payload};

pub use modules::{
    ModuleNameList, ModuleNameView, ModulePage, ModuleView, NameMoveView, PageQuery,
};
pub use queues::{
    ActivityView, JobCountsView, PatchQueue, PutQueue, PutSecret, QueueList, QueueStatsView,
    QueueView, SecretView,
};

use crate::job::{FieldError, JobInput, JobSpec, JobState, attempts_used};
use crate::store::{JobDetail, JobRecord};

/// Microseconds as stored (`duration_us` columns) in the milliseconds views
/// show.
pub fn micros_as_millis(micros: i64) -> f64 {
    micros as f64 / 1000.0
}

/// `POST /v1/jobs`: a job to run. Only `module` and one of `input` /
/// `input_base64` are required; every other field has a server default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "module": "resize:stable",
    "input": {"url": "https://example.com/cat.png", "width": 320},
    "max_attempts": 5,
    "queue": "images",
    "idempotency_key": "order-1234-thumbnail"
}))]
pub struct SubmitJob {
    /// SHA-256 (hex) of an uploaded module, or a name pointing at one
    /// (`resize:stable`), resolved once, at submission.
    pub module: String,
    /// Input as JSON; the task receives its UTF-8 encoding, compacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<JsonText>,
    /// Input as raw bytes, base64-encoded; for binary payloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_base64: Option<String>,
    /// Attempts before the job is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Wall-clock limit of one attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// CPU budget of one attempt, in fuel units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Memory limit of one attempt, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Queue; defaults to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Higher runs first; defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i16>,
    /// Earliest start (RFC 3339); defaults to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Makes the submission idempotent: resubmitting with the same key
    /// returns the original job instead of creating another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Groups jobs (by tenant, say) for the queue's `max_running_per_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
}

impl SubmitJob {
    /// A submission of `module` with JSON `input` and every option left to
    /// the server's defaults; set options with struct update syntax.
    pub fn new(module: impl Into<String>, input: serde_json::Value) -> Self {
        Self {
            module: module.into(),
            input: Some(input.into()),
            ..Self::default()
        }
    }

    /// The submission in the job domain's terms, to be resolved against the
    /// server's limits ([`JobSpec::resolve`]).
    ///
    /// # Errors
    ///
    /// When the input is given both ways or neither.
    pub fn into_spec(self) -> Result<JobSpec, FieldError> {
        let input = match (self.input, self.input_base64) {
            // The raw text moves into the spec: no copy of a large input.
            (Some(json), None) => JobInput::Json(json.into_text()),
            (None, Some(encoded)) => JobInput::Base64(encoded),
            (Some(_), Some(_)) => {
                return Err(FieldError::invalid(
                    "input",
                    "give either input or input_base64, not both",
                ));
            }
            (None, None) => {
                return Err(FieldError::invalid(
                    "input",
                    "required: the task's input as JSON (input) or as base64 bytes \
                     (input_base64)",
                ));
            }
        };
        Ok(JobSpec {
            module: self.module,
            input,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            fuel: self.fuel,
            memory_limit_bytes: self.memory_limit_bytes,
            queue: self.queue,
            priority: self.priority,
            run_at: self.run_at,
            idempotency_key: self.idempotency_key,
            concurrency_key: self.concurrency_key,
        })
    }
}

/// `POST /v1/jobs/batch`: many jobs, inserted in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    /// The jobs.
    pub jobs: Vec<SubmitJob>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    /// Id.
    pub id: Uuid,
    /// Module hash.
    pub module: String,
    /// Queue.
    pub queue: String,
    /// Priority; higher runs first.
    pub priority: i16,
    /// Lifecycle state.
    pub state: JobState,
    /// Number of the latest attempt over the job's life (0 before the first).
    pub attempt: i32,
    /// Attempts allowed (per user retry).
    pub max_attempts: i32,
    /// Attempts left before the job is dead-lettered.
    pub attempts_left: i32,
    /// Wall-clock limit per attempt, ms.
    pub timeout_ms: i32,
    /// Fuel per attempt.
    pub fuel: i64,
    /// Memory limit per attempt, bytes.
    pub memory_limit_bytes: i64,
    /// When it is or was due.
    pub run_at: DateTime<Utc>,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Start of the latest attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached succeeded, dead or cancelled.
    pub finished_at: Option<DateTime<Utc>>,
    /// Idempotency key, if submitted with one.
    pub idempotency_key: Option<String>,
    /// Concurrency key, if submitted with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// Worker of the latest attempt.
    pub worker_id: Option<String>,
    /// Fencing token of the latest attempt.
    pub lease_token: Option<i64>,
    /// `{"kind", "message"}` of the latest failure.
    pub last_error: Option<serde_json::Value>,
    /// The W3C `traceparent` of the span the job's spans are children of:
    /// its submission's when the API exports traces, else the one the
    /// client sent. Its trace id finds the job's trace in a trace viewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    pub traceparent: Option<String>,
    /// Input as JSON, when it is JSON (single-job reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub input: Option<JsonText>,
    /// Input as base64, when it is not JSON (single-job reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_base64: Option<String>,
    /// Output as JSON, when it is JSON (single-job reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub output: Option<JsonText>,
    /// Output as base64, when it is not JSON (single-job reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_base64: Option<String>,
    /// Resources the latest finished attempt used (single-job reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_use: Option<ResourceUse>,
}

/// Resources an attempt used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourceUse {
    /// Fuel burned.
    pub fuel_consumed: Option<i64>,
    /// Wall time in milliseconds.
    pub duration_ms: Option<f64>,
}

impl From<JobRecord> for JobView {
    /// Takes the record apart field by field, so a column added to
    /// [`JobRecord`] does not compile until the view decides what to show.
    fn from(job: JobRecord) -> Self {
        let JobRecord {
            id,
            module_hash,
            queue,
            priority,
            state,
            attempt,
            attempt_base,
            max_attempts,
            timeout_ms,
            fuel,
            memory_limit_bytes,
            run_at,
            lease_token,
            worker_id,
            idempotency_key,
            concurrency_key,
            last_error,
            created_at,
            updated_at,
            attempted_at,
            finished_at,
            traceparent,
        } = job;
        let attempts_left =
            i64::from(max_attempts) - i64::from(attempts_used(attempt, attempt_base));
        Self {
            id,
            module: module_hash,
            queue,
            priority,
            state,
            attempt,
            max_attempts,
            attempts_left: attempts_left.max(0) as i32,
            timeout_ms,
            fuel,
            memory_limit_bytes,
            run_at,
            created_at,
            updated_at,
            started_at: attempted_at,
            finished_at,
            idempotency_key,
            concurrency_key,
            worker_id,
            lease_token,
            last_error: last_error.map(|error| error.0),
            traceparent: traceparent.map(|trace| trace.to_string()),
            input: None,
            input_base64: None,
            output: None,
            output_base64: None,
            resource_use: None,
        }
    }
}

impl From<JobDetail> for JobView {
    fn from(detail: JobDetail) -> Self {
        let mut view = JobView::from(detail.job);
        (view.input, view.input_base64) = render_payload(&detail.input);
        if let Some(output) = &detail.output {
            (view.output, view.output_base64) = render_payload(output);
        }
        if detail.last_fuel_consumed.is_some() || detail.last_duration_us.is_some() {
            view.resource_use = Some(ResourceUse {
                fuel_consumed: detail.last_fuel_consumed,
                duration_ms: detail.last_duration_us.map(micros_as_millis),
            });
        }
        view
    }
}

/// The response to a submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubmittedJob {
    /// The job.
    #[serde(flatten)]
    pub job: JobView,
    /// `false` when an earlier submission with the same idempotency key
    /// created the job.
    pub created: bool,
}

/// The response to a batch submission: one entry per job, in request order.
/// Deliberately small (a thousand full job views would dominate the cost of
/// the request); fetch a job for its details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubmittedBatch {
    /// The jobs.
    pub jobs: Vec<BatchEntry>,
}

/// One job of a batch submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchEntry {
    /// The job's id.
    pub id: Uuid,
    /// Its state (`available`, or `scheduled` with a future `run_at`).
    pub state: JobState,
    /// `false` when an earlier submission with the same idempotency key
    /// created the job.
    pub created: bool,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobPage {
    /// The jobs.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobWaitQuery {
    /// Answer once the job is `succeeded`, `dead` or `cancelled`, or after
    /// this long with its state then (`30s`, `2m`; at most 60 s). No
    /// database connection is held while waiting.
    #[param(example = "30s")]
    pub wait: Option<String>,
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs on this queue.
    pub queue: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}
