//! `GET /ui/queues`: each queue's settings and limits, with pause and
//! resume buttons (`POST /ui/queues/{name}/pause|resume`, as the API's
//! routes: api/queues.rs, `pause_or_resume`). Settings are written with
//! `taskflow queue set` or `PUT /v1/queues/{name}`.

use askama::Template;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::session::Session;
use super::view::{Chrome, ConsoleError, Done, duration, redirect_with, render};
use super::{ConsolePath, ConsoleQuery};
use crate::api::ApiState;
use crate::api::queues::pause_or_resume;
use crate::job::JobState;
use crate::queue::{KeepFor, QueueStats};
use crate::store::QueueRecord;

/// One queue, as the page shows it.
struct QueueLine {
    name: String,
    paused: bool,
    configured: bool,
    running: u64,
    /// Places still held by jobs cancelled while running (`QueueStats::stopping`).
    stopping: u64,
    max_running: String,
    max_running_per_key: String,
    rate: String,
    retention: String,
    grants: String,
}

impl QueueLine {
    fn of(record: &QueueRecord, stats: &QueueStats) -> Self {
        let limits = &record.settings.limits;
        let or_none = |limit: Option<std::num::NonZeroU32>| {
            limit.map_or_else(|| "none".to_owned(), |limit| limit.to_string())
        };
        let retention = record
            .settings
            .retention
            .effective()
            .iter()
            .map(|(state, keep)| match keep {
                KeepFor::Forever => format!("{state} forever"),
                KeepFor::Duration(keep) => format!("{state} {}", duration(*keep)),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let settings = &record.settings;
        Self {
            name: record.name.clone(),
            paused: record.paused,
            configured: record.created_at.is_some(),
            running: stats.jobs.get(JobState::Running),
            stopping: stats.stopping,
            max_running: or_none(limits.max_running),
            max_running_per_key: or_none(limits.max_running_per_key),
            rate: limits.rate.map_or_else(
                || "none".to_owned(),
                |rate| format!("{} per {}", rate.limit, duration(rate.period)),
            ),
            retention,
            grants: format!(
                "{} host{}, {} config entr{}, secrets: {}",
                settings.allowed_hosts.len(),
                super::view::plural(settings.allowed_hosts.len() as u64),
                settings.config.len(),
                if settings.config.len() == 1 {
                    "y"
                } else {
                    "ies"
                },
                if settings.secrets.is_empty() {
                    "none".to_owned()
                } else {
                    settings
                        .secrets
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        }
    }
}

#[derive(Template)]
#[template(path = "console/queues.html")]
struct Queues {
    chrome: Chrome,
    queues: Vec<QueueLine>,
}

/// `GET /ui/queues`: configured queues and those with jobs.
pub async fn page(
    State(state): State<ApiState>,
    Extension(session): Extension<Session>,
    ConsoleQuery(done): ConsoleQuery<Done>,
) -> Result<Response, ConsoleError> {
    let queues = state
        .read(|store| async move { store.queues_with_stats().await })
        .await?
        .iter()
        .map(|(record, stats)| QueueLine::of(record, stats))
        .collect();
    let page = Queues {
        chrome: session
            .chrome(state.tokens.is_open(), "queues")
            .with_notice(&done),
        queues,
    };
    Ok(render(StatusCode::OK, &page))
}

/// `POST /ui/queues/{name}/pause`.
pub async fn pause(
    State(state): State<ApiState>,
    ConsolePath(name): ConsolePath<String>,
) -> Result<Response, ConsoleError> {
    pause_or_resume(&state, &name, true).await?;
    Ok(redirect_with("/ui/queues", &Done::query("paused", 0, 0)))
}

/// `POST /ui/queues/{name}/resume`.
pub async fn resume(
    State(state): State<ApiState>,
    ConsolePath(name): ConsolePath<String>,
) -> Result<Response, ConsoleError> {
    pause_or_resume(&state, &name, false).await?;
    Ok(redirect_with("/ui/queues", &Done::query("resumed", 0, 0)))
}
