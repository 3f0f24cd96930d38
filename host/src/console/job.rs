//! `GET /ui/jobs/{id}`: one job, its payloads and its attempts; and its
//! retry and cancel buttons (`POST /ui/jobs/{id}/retry|cancel`), which do
//! what the API's routes do (api/job_actions.rs, `retry_job`, `cancel_job`).

use askama::Template;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use uuid::Uuid;

use super::jobs::error_kind;
use super::session::Session;
use super::view::{
    Chrome, ConsoleError, Done, PayloadView, bytes, redirect_with, render, timestamp,
};
use super::{ConsolePath, ConsoleQuery};
use crate::api::ApiState;
use crate::api::job_actions::{cancel_job, retry_job};
use crate::api::types::micros_as_millis;
use crate::job::{JobState, attempts_used};
use crate::store::AttemptRecord;

/// Most attempts the page shows (the oldest; the API pages through all).
const PAGE_ATTEMPTS: i64 = 100;

/// One line of a guest's log.
struct LogLine {
    source: String,
    level: String,
    message: String,
}

/// One outbound request an attempt made.
struct RequestLine {
    method: String,
    url: String,
    result: String,
    denied: bool,
    bytes: String,
    duration: String,
}

/// One attempt, as the timeline shows it.
struct AttemptLine {
    attempt: AttemptRecord,
    started: String,
    duration: String,
    fuel: String,
    memory: String,
    log: Vec<LogLine>,
    requests: Vec<RequestLine>,
}

impl AttemptLine {
    fn of(attempt: AttemptRecord) -> Self {
        let text = |value: &serde_json::Value, key: &str| {
            value
                .get(key)
                .map_or_else(String::new, |field| match field {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
        };
        let entries = |value: &serde_json::Value| value.as_array().cloned().unwrap_or_default();
        let log = entries(&attempt.logs)
            .iter()
            .map(|line| LogLine {
                source: text(line, "source"),
                level: text(line, "level"),
                message: text(line, "message"),
            })
            .collect();
        let requests = entries(&attempt.requests)
            .iter()
            .map(|request| {
                let status = text(request, "status");
                RequestLine {
                    method: text(request, "method"),
                    url: text(request, "url"),
                    result: if status.is_empty() {
                        [text(request, "error"), text(request, "reason")].join(" ")
                    } else {
                        status
                    },
                    denied: request.get("denied").and_then(|d| d.as_bool()) == Some(true),
                    bytes: format!(
                        "{} out, {} in",
                        text(request, "bytes_out"),
                        text(request, "bytes_in")
                    ),
                    duration: format!("{} ms", text(request, "duration_ms")),
                }
            })
            .collect();
        Self {
            started: timestamp(attempt.started_at),
            duration: attempt.duration_us.map_or_else(
                || "—".to_owned(),
                |us| format!("{:.1} ms", micros_as_millis(us)),
            ),
            fuel: attempt
                .fuel_consumed
                .map_or_else(|| "—".to_owned(), |fuel| fuel.to_string()),
            memory: attempt
                .memory_bytes
                .map_or_else(|| "—".to_owned(), |memory| bytes(memory.unsigned_abs())),
            log,
            requests,
            attempt,
        }
    }
}

#[derive(Template)]
#[template(path = "console/job.html")]
struct JobPage {
    chrome: Chrome,
    id: Uuid,
    state: JobState,
    facts: Vec<(&'static str, String)>,
    module_hash: String,
    module_names: Vec<String>,
    error: Option<(String, String)>,
    input: PayloadView,
    output: Option<PayloadView>,
    attempts: Vec<AttemptLine>,
    more_attempts: bool,
}

impl JobPage {
    fn can_retry(&self) -> bool {
        matches!(self.state, JobState::Dead | JobState::Cancelled)
    }

    fn can_cancel(&self) -> bool {
        !self.state.is_final()
    }
}

/// `GET /ui/jobs/{id}`.
pub async fn page(
    State(state): State<ApiState>,
    Extension(session): Extension<Session>,
    ConsolePath(id): ConsolePath<Uuid>,
    ConsoleQuery(done): ConsoleQuery<Done>,
) -> Result<Response, ConsoleError> {
    let Some(detail) = state.store.get_job(id).await? else {
        return Err(ConsoleError::new(
            StatusCode::NOT_FOUND,
            format!("Job {id} does not exist (or was pruned)."),
        ));
    };
    let attempts = state
        .store
        .list_attempts(id, None, PAGE_ATTEMPTS + 1)
        .await?
        .unwrap_or_default();
    let module_names = state.store.names_of_module(&detail.job.module_hash).await?;
    let job = &detail.job;
    let optional =
        |time: Option<chrono::DateTime<Utc>>| time.map_or_else(|| "—".to_owned(), timestamp);
    let facts = vec![
        ("Queue", job.queue.clone()),
        ("Priority", job.priority.to_string()),
        (
            "Attempts",
            format!(
                "{} of {} used (attempt {} over its life)",
                attempts_used(job.attempt, job.attempt_base),
                job.max_attempts,
                job.attempt
            ),
        ),
        ("Timeout", format!("{} ms", job.timeout_ms)),
        ("Fuel", job.fuel.to_string()),
        ("Memory limit", bytes(job.memory_limit_bytes.unsigned_abs())),
        (
            "Concurrency key",
            job.concurrency_key
                .clone()
                .unwrap_or_else(|| "—".to_owned()),
        ),
        (
            "Idempotency key",
            job.idempotency_key
                .clone()
                .unwrap_or_else(|| "—".to_owned()),
        ),
        (
            "Trace id",
            job.traceparent
                .map_or_else(|| "—".to_owned(), |trace| trace.trace_id_hex()),
        ),
        ("Created", timestamp(job.created_at)),
        ("Due", timestamp(job.run_at)),
        ("Last attempt started", optional(job.attempted_at)),
        ("Finished", optional(job.finished_at)),
        ("Updated", timestamp(job.updated_at)),
        (
            "Worker",
            job.worker_id.clone().unwrap_or_else(|| "—".to_owned()),
        ),
        (
            "Lease token",
            job.lease_token
                .map_or_else(|| "—".to_owned(), |token| token.to_string()),
        ),
    ];
    let error = error_kind(job).map(|kind| {
        let message = job
            .last_error
            .as_ref()
            .and_then(|error| error.0.get("message"))
            .and_then(|message| message.as_str())
            .unwrap_or_default()
            .to_owned();
        (kind, message)
    });
    let more_attempts = attempts.len() as i64 > PAGE_ATTEMPTS;
    let page = JobPage {
        chrome: session
            .chrome(state.tokens.is_open(), "jobs")
            .with_notice(&done),
        id,
        state: job.state,
        facts,
        module_hash: job.module_hash.clone(),
        module_names,
        error,
        input: PayloadView::of(&detail.input),
        output: detail.output.as_deref().map(PayloadView::of),
        attempts: attempts
            .into_iter()
            .take(PAGE_ATTEMPTS as usize)
            .map(AttemptLine::of)
            .collect(),
        more_attempts,
    };
    Ok(render(StatusCode::OK, &page))
}

/// `POST /ui/jobs/{id}/retry`.
pub async fn retry(
    State(state): State<ApiState>,
    ConsolePath(id): ConsolePath<Uuid>,
) -> Result<Response, ConsoleError> {
    retry_job(&state, id).await?;
    Ok(redirect_with(
        &format!("/ui/jobs/{id}"),
        &Done::query("retried", 1, 0),
    ))
}

/// `POST /ui/jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<ApiState>,
    ConsolePath(id): ConsolePath<Uuid>,
) -> Result<Response, ConsoleError> {
    cancel_job(&state, id).await?;
    Ok(redirect_with(
        &format!("/ui/jobs/{id}"),
        &Done::query("cancelled", 1, 0),
    ))
}
