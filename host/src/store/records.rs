//! The rows the store returns about jobs and attempts.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::job::{JobState, RecordedEnd, TraceContext};

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
            "concurrency_key, ",
            $prefix,
            "last_error, ",
            $prefix,
            "created_at, ",
            $prefix,
            "updated_at, ",
            $prefix,
            "attempted_at, ",
            $prefix,
            "finished_at, ",
            $prefix,
            "traceparent"
        )
    };
}
pub(super) use job_columns;

/// A job's metadata: everything but its input and output.
#[derive(Debug, Clone, sqlx::FromRow)]
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
    /// Its key for the queue's `max_running_per_key`.
    pub concurrency_key: Option<String>,
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
    /// The span its spans are children of (job::trace_context).
    pub traceparent: Option<TraceContext>,
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

/// One finished attempt of a job, as recorded (`job_attempts`).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// Number over the job's life, from 1.
    pub attempt: i32,
    /// Fencing token it held.
    pub lease_token: i64,
    /// Worker that ran it.
    pub worker_id: String,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub finished_at: DateTime<Utc>,
    /// How it ended.
    pub end: RecordedEnd,
    /// Fuel burned.
    pub fuel_consumed: Option<i64>,
    /// Peak linear memory of the guest, in bytes (none for attempts
    /// recorded before TaskFlow measured it, and for rescued or cancelled
    /// ones).
    pub memory_bytes: Option<i64>,
    /// Wall time, in microseconds.
    pub duration_us: Option<i64>,
    /// Captured guest log: `[{"source", "level"?, "message"}]`.
    pub logs: serde_json::Value,
    /// Log lines dropped past the per-attempt bound.
    pub logs_dropped: i64,
    /// Outbound HTTP requests: `[{method, url, status?, error?, reason?,
    /// denied, bytes_out, bytes_in, duration_ms}]`; the URL has no query
    /// string, and no header or body is ever recorded.
    pub requests: serde_json::Value,
    /// Requests made past the per-attempt bound on records.
    pub requests_dropped: i64,
}
