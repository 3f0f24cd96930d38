//! `GET /v1/jobs/{id}/attempts`: a job's finished attempts, a page at a
//! time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::micros_as_millis;
use crate::job::AttemptOutcome;
use crate::store::AttemptRecord;

/// `GET /v1/jobs/{id}/attempts`: a page of attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptList {
    /// The job.
    pub job_id: Uuid,
    /// Its finished attempts, oldest first. A running attempt appears once
    /// it ends; the job itself shows it meanwhile.
    pub attempts: Vec<AttemptView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/jobs/{id}/attempts`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AttemptQuery {
    /// Page size (default 20, at most 100: an attempt carries up to
    /// `--max-log-bytes` of log).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One finished attempt of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Attempt)]
pub struct AttemptView {
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
    pub outcome: AttemptOutcome,
    /// Machine-readable failure reason (`timeout`, `fuel_exhausted`, …).
    pub error_kind: Option<String>,
    /// Failure message.
    pub error_message: Option<String>,
    /// Fuel burned.
    pub fuel_consumed: Option<i64>,
    /// Peak linear memory of the guest, in bytes (absent for attempts
    /// recorded before TaskFlow measured it, and for rescued or cancelled
    /// ones).
    #[serde(default)]
    pub memory_bytes: Option<i64>,
    /// Wall time in milliseconds.
    pub duration_ms: Option<f64>,
    /// Captured guest log: `[{"source", "level"?, "message"}]`.
    pub logs: serde_json::Value,
    /// Log lines dropped past the per-attempt bound.
    pub logs_dropped: i64,
    /// Outbound HTTP requests: `[{method, url, status?, error?, reason?,
    /// denied, bytes_out, bytes_in, duration_ms}]`; the URL has no query
    /// string, and no header or body is ever recorded.
    #[serde(default)]
    pub requests: serde_json::Value,
    /// Requests made past the per-attempt bound on records.
    #[serde(default)]
    pub requests_dropped: i64,
}

impl From<AttemptRecord> for AttemptView {
    /// Field by field, so a column added to [`AttemptRecord`] does not
    /// compile until the view decides what to show.
    fn from(record: AttemptRecord) -> Self {
        let AttemptRecord {
            attempt,
            lease_token,
            worker_id,
            started_at,
            finished_at,
            end,
            fuel_consumed,
            memory_bytes,
            duration_us,
            logs,
            logs_dropped,
            requests,
            requests_dropped,
        } = record;
        let outcome = end.outcome();
        let error = end.error();
        let error_kind = error.map(|error| error.kind.clone());
        let error_message = error.map(|error| error.message.clone());
        Self {
            attempt,
            lease_token,
            worker_id,
            started_at,
            finished_at,
            outcome,
            error_kind,
            error_message,
            fuel_consumed,
            memory_bytes,
            duration_ms: duration_us.map(micros_as_millis),
            logs,
            logs_dropped,
            requests,
            requests_dropped,
        }
    }
}
